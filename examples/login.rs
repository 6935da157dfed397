//! A chat over TLS with PB-style login: each user logs in with a password (SCRAM-SHA-256, bound
//! to the TLS channel), receives an avatar, and speaks through it; the server knows who is
//! speaking from the connection's login identity (a `pb::Caller` parameter), not from anything
//! the client claims. Each client hands the server a "mind" (a listener object of its own) that
//! the server calls to deliver messages. Server and clients run in one process; the program
//! prints the exchange and exits 0.
//!
//! ```text
//! cargo run --example login
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pb::dev::DevCa;
use pb::scram::ScramVerifier;
use pb::{
    Avatar, Caller, ClientTls, Identity, LoginRequest, Portal, Refusal, Server, ServerTls,
    Verifiers,
};
use tokio::sync::mpsc;

/// What a logged-in user can do: the avatar's interface.
#[pb::remote]
pub trait Chat {
    /// Say something to everyone in the room.
    async fn say(&self, caller: Caller, text: String) -> Result<(), ChatError>;
    /// Who is in the room.
    async fn who(&self) -> Result<Vec<String>, ChatError>;
}

/// What the server calls on each client: the client's mind.
#[pb::remote]
pub trait Listener {
    /// Someone said something.
    async fn heard(&self, from: String, text: String) -> Result<(), ()>;
}

/// Why a chat call failed.
#[pb::copyable]
#[derive(Debug)]
pub enum ChatError {
    /// The caller has no name (an anonymous login, say).
    Nameless,
}

/// The room: who is in it, and how to reach them.
#[derive(Default)]
struct Room {
    members: Mutex<BTreeMap<String, ListenerRef>>,
}

impl Room {
    async fn broadcast(&self, from: &str, text: &str) {
        let listeners: Vec<ListenerRef> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for l in listeners {
            // A listener that is gone is simply skipped.
            let _ = l.heard(from.to_owned(), text.to_owned()).await;
        }
    }
}

/// The avatar: one per login, sharing the room.
struct Member {
    room: Arc<Room>,
}

impl Chat for Member {
    async fn say(&self, caller: Caller, text: String) -> Result<(), ChatError> {
        // The speaker is whoever logged in on the calling connection.
        let identity = caller.identity::<Identity>().ok_or(ChatError::Nameless)?;
        let name = identity.name().ok_or(ChatError::Nameless)?.to_owned();
        self.room.broadcast(&name, &text).await;
        Ok(())
    }

    async fn who(&self) -> Result<Vec<String>, ChatError> {
        let members = self.room.members.lock().unwrap_or_else(|p| p.into_inner());
        Ok(members.keys().cloned().collect())
    }
}

/// A client's mind: prints what it hears and passes it on to the client's main task.
struct Screen {
    owner: &'static str,
    heard: mpsc::UnboundedSender<String>,
}

impl Listener for Screen {
    async fn heard(&self, from: String, text: String) -> Result<(), ()> {
        println!("  [{}'s screen] {from}: {text}", self.owner);
        let _ = self.heard.send(text);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Development certificates, made now and never written to disk.
    let ca = DevCa::new("pb example ca")?;
    let server_cert = ca.issue(&["localhost", "127.0.0.1"])?;

    // What the server stores: verifiers, not passwords (see examples/make_verifier.rs). Made
    // here at 4 096 iterations to keep the example quick; `users.add_user(name, password)` makes
    // one at the default cost.
    let mut users = Verifiers::new();
    for (name, password) in [("alice", "wonderland"), ("bob", "builder")] {
        let stored = ScramVerifier::with_iterations(password, 4096)?.to_string();
        users.insert(name, stored.parse()?);
    }

    let room = Arc::new(Room::default());
    let realm_room = room.clone();
    let portal = Portal::new(move |login: LoginRequest| {
        let room = realm_room.clone();
        async move {
            let name = login.identity.name().ok_or(Refusal::NotOffered)?.to_owned();
            let mind = login.mind_as::<ListenerRef>();
            if let Some(mind) = mind {
                room.members
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), mind);
            }
            println!("server: {name} logged in");
            let gone = room.clone();
            let avatar = ChatRef::new(Member { room: room.clone() });
            Ok(Avatar::new(avatar).on_logout(move || {
                println!("server: {name} logged out");
                gone.members
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
                tokio::spawn(
                    async move { gone.broadcast("server", &format!("{name} left")).await },
                );
            }))
        }
    })
    .verifiers(users);

    let tls = ServerTls::from_pem(
        server_cert.cert_pem.as_bytes(),
        server_cert.key_pem.as_bytes(),
    )?;
    let server = Server::builder()
        .tls(tls)
        .bind("127.0.0.1:0")
        .await?
        .serve_portal(portal);
    println!("server: listening on {} (tls)", server.local_addr());

    let trust = ClientTls::from_roots_pem(ca.cert_pem().as_bytes())?.server_name("localhost")?;
    let connect = |owner: &'static str| {
        let trust = trust.clone();
        let addr = server.local_addr();
        async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let mind = ListenerRef::new(Screen { owner, heard: tx });
            let session = pb::Client::builder().tls(trust).open(addr).await?;
            Ok::<_, pb::ClientError>((session.with_mind(mind), rx))
        }
    };

    // A wrong password is refused, with the same answer an unknown user gets. (Without a mind,
    // the builder dials and logs in in one call.)
    let guessed = pb::Client::builder()
        .tls(trust.clone())
        .login::<ChatRef>(server.local_addr(), "alice", "guess")
        .await;
    match guessed {
        Err(e) => println!("mallory: login as alice with a guessed password: {e}"),
        Ok(_) => return Err("a guessed password was accepted".into()),
    }

    let (alice_session, mut alice_heard) = connect("alice").await?;
    let alice: ChatRef = alice_session.login("alice", "wonderland").await?;
    println!("alice: logged in over tls");
    // One login per connection: this one is alice's for good.
    match alice_session.login::<ChatRef>("bob", "builder").await {
        Err(e) => println!("alice: a second login on her connection: {e}"),
        Ok(_) => return Err("a second login on one connection was accepted".into()),
    }
    let (bob_session, mut bob_heard) = connect("bob").await?;
    let bob: ChatRef = bob_session.login("bob", "builder").await?;
    println!("bob: logged in over tls");
    println!("alice: who is here? {:?}", alice.who().await?);

    alice.say("hello, bob".into()).await?;
    bob.say("hi alice!".into()).await?;
    // Each message reached both screens before `say` returned.
    for rx in [&mut alice_heard, &mut bob_heard] {
        rx.recv().await;
        rx.recv().await;
    }

    println!("bob: leaving");
    drop(bob);
    // The logout hook tells the room; wait until alice's screen shows it.
    while let Some(text) = alice_heard.recv().await {
        if text == "bob left" {
            break;
        }
    }
    println!("alice: who is here? {:?}", alice.who().await?);

    drop(alice);
    bob_session.close().await;
    alice_session.close().await;
    server.shutdown().await;
    println!("done");
    Ok(())
}
