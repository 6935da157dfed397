//! The chat used by the `demo`, `server` and `client` examples.
//!
//! References travel both ways: a client passes the server a `ListenerRef` to one of its own
//! objects (the server calls it back with every message), and the server answers `join` with a
//! `SessionRef` to an object of its own, through which the client speaks. When the client drops
//! its session, the release reaches the server, the session object is dropped there and the
//! room hears that the member left.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the room waits for one member to take a message. Members are told at once, each
/// under this deadline: a member that never answers misses the message, and nobody waits for
/// it.
pub const PATIENCE: Duration = Duration::from_secs(5);

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum ChatError {
    NameTaken(String),
    EmptyMessage,
}

/// What a client gives the server so that it can be called back.
#[pb::remote]
pub trait Listener {
    async fn heard(&self, from: String, text: String) -> Result<(), ChatError>;
}

/// One member's seat in the room, held by the client.
#[pb::remote]
pub trait Session {
    async fn say(&self, text: String) -> Result<usize, ChatError>;
    async fn who(&self) -> Result<Vec<String>, ChatError>;
}

/// The server's root object.
#[pb::remote]
pub trait Lobby {
    async fn join(&self, name: String, listener: ListenerRef) -> Result<SessionRef, ChatError>;
}

#[derive(Default)]
pub struct Room {
    members: Mutex<Vec<(String, ListenerRef)>>,
}

impl Room {
    /// Tell everyone but `except`, all at once and each within [`PATIENCE`]; returns how many
    /// heard it.
    async fn broadcast(&self, from: &str, text: &str, except: &str) -> usize {
        let members: Vec<_> = self.members.lock().unwrap().clone();
        let mut told = tokio::task::JoinSet::new();
        for (name, listener) in members {
            if name != except {
                let (from, text) = (from.to_owned(), text.to_owned());
                told.spawn(pb::deadline::with_timeout(PATIENCE, async move {
                    listener.heard(from, text).await
                }));
            }
        }
        told.join_all()
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count()
    }
}

pub struct LobbyImpl {
    pub room: Arc<Room>,
}

impl Lobby for LobbyImpl {
    async fn join(&self, name: String, listener: ListenerRef) -> Result<SessionRef, ChatError> {
        {
            let mut members = self.room.members.lock().unwrap();
            if members.iter().any(|(n, _)| *n == name) {
                return Err(ChatError::NameTaken(name));
            }
            members.push((name.clone(), listener));
        }
        self.room
            .broadcast("server", &format!("{name} joined"), &name)
            .await;
        Ok(SessionRef::new(SessionImpl {
            name,
            room: self.room.clone(),
        }))
    }
}

struct SessionImpl {
    name: String,
    room: Arc<Room>,
}

impl Session for SessionImpl {
    async fn say(&self, text: String) -> Result<usize, ChatError> {
        if text.trim().is_empty() {
            return Err(ChatError::EmptyMessage);
        }
        Ok(self.room.broadcast(&self.name, &text, &self.name).await)
    }

    async fn who(&self) -> Result<Vec<String>, ChatError> {
        Ok(self
            .room
            .members
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect())
    }
}

impl Drop for SessionImpl {
    // The client released its session (or its connection ended): leave the room.
    fn drop(&mut self) {
        self.room
            .members
            .lock()
            .unwrap()
            .retain(|(n, _)| *n != self.name);
        let room = self.room.clone();
        let name = self.name.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                room.broadcast("server", &format!("{name} left"), &name)
                    .await;
            });
        }
    }
}

/// A listener that forwards what it hears to a channel.
pub struct Ear(pub tokio::sync::mpsc::UnboundedSender<(String, String)>);

impl Listener for Ear {
    async fn heard(&self, from: String, text: String) -> Result<(), ChatError> {
        let _ = self.0.send((from, text));
        Ok(())
    }
}
