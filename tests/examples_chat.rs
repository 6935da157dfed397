//! The examples' chat room (`examples/shared/chat.rs`, which `demo`, `server` and `client`
//! use): one member whose listener never answers must not stall everyone else.

#[path = "../examples/shared/chat.rs"]
mod chat;
mod common;

use std::sync::Arc;
use std::time::Duration;

use chat::{ChatError, Ear, Listener, ListenerRef, LobbyImpl, LobbyRef, Room};
use tokio::sync::mpsc;

/// A member whose listener takes every message and never returns.
struct Mute;

impl Listener for Mute {
    async fn heard(&self, _from: String, _text: String) -> Result<(), ChatError> {
        std::future::pending().await
    }
}

/// A bound so that a regression fails instead of hanging (virtual time).
const PATIENCE: Duration = Duration::from_secs(600);

#[tokio::test(start_paused = true)]
async fn a_mute_member_does_not_stall_the_others() {
    let room = Arc::new(Room::default());
    let lobby = || LobbyRef::new(LobbyImpl { room: room.clone() });
    let (_s1, mute_conn) = common::memory_pair(lobby()).await;
    let (_s2, ear_conn) = common::memory_pair(lobby()).await;
    let (_s3, speaker_conn) = common::memory_pair(lobby()).await;
    let _mute = mute_conn
        .root::<LobbyRef>()
        .join("mute".into(), ListenerRef::new(Mute))
        .await
        .unwrap();
    let (tx, mut heard) = mpsc::unbounded_channel();
    // Joining tells the others, the mute member included.
    let _ear = tokio::time::timeout(
        PATIENCE,
        ear_conn
            .root::<LobbyRef>()
            .join("ear".into(), ListenerRef::new(Ear(tx))),
    )
    .await
    .expect("join does not wait for ever on a mute member")
    .unwrap();
    let (tx2, _heard2) = mpsc::unbounded_channel();
    let speaker = tokio::time::timeout(
        PATIENCE,
        speaker_conn
            .root::<LobbyRef>()
            .join("speaker".into(), ListenerRef::new(Ear(tx2))),
    )
    .await
    .expect("join does not wait for ever on a mute member")
    .unwrap();
    let reached = tokio::time::timeout(PATIENCE, speaker.say("hello".into()))
        .await
        .expect("say does not wait for ever on a mute member")
        .unwrap();
    assert_eq!(
        reached, 1,
        "the ear heard it, the mute member did not answer"
    );
    let mut got = Vec::new();
    while let Ok(m) = heard.try_recv() {
        got.push(m);
    }
    assert!(
        got.contains(&("speaker".to_string(), "hello".to_string())),
        "{got:?}"
    );
}
