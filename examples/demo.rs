//! pb's main demo: a chat server and two clients in one process, over real TCP on 127.0.0.1.
//!
//! Run it with `cargo run --example demo`. It prints the exchange and exits 0.

#[path = "shared/chat.rs"]
mod chat;

use std::sync::Arc;

use chat::*;
use tokio::sync::mpsc;

type Heard = mpsc::UnboundedReceiver<(String, String)>;

async fn hear(who: &str, rx: &mut Heard) -> Result<(), Box<dyn std::error::Error>> {
    let (from, text) = rx.recv().await.ok_or("listener closed")?;
    println!("  [{who} hears] {from}: {text}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let room = Arc::new(Room::default());
    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(LobbyRef::new(LobbyImpl { room }));
    println!("server listening on {}", server.local_addr());

    // Each client connects, gets the server's root (the lobby) and joins, passing a reference
    // to its own listener object; the server answers with a reference to a session object.
    let alice_conn = pb::Client::connect(server.local_addr()).await?;
    let (alice_tx, mut alice_rx) = mpsc::unbounded_channel();
    let lobby: LobbyRef = alice_conn.root();
    let alice = lobby
        .join("alice".into(), ListenerRef::new(Ear(alice_tx)))
        .await?;
    println!("alice joined");

    let bob_conn = pb::Client::connect(server.local_addr()).await?;
    let (bob_tx, mut bob_rx) = mpsc::unbounded_channel();
    let lobby: LobbyRef = bob_conn.root();
    let bob = lobby
        .join("bob".into(), ListenerRef::new(Ear(bob_tx)))
        .await?;
    println!("bob joined");
    hear("alice", &mut alice_rx).await?;

    // A second "bob" is refused with the server's typed error.
    let (tx, _rx) = mpsc::unbounded_channel();
    match lobby.join("bob".into(), ListenerRef::new(Ear(tx))).await {
        Err(pb::CallError::Remote(ChatError::NameTaken(n))) => {
            println!("a second {n:?} is refused: name taken")
        }
        other => return Err(format!("expected NameTaken, got {other:?}").into()),
    }

    println!("alice says: hello bob");
    let reached = alice.say("hello bob".into()).await?;
    hear("bob", &mut bob_rx).await?;
    println!("bob says: hi alice, who is here?");
    bob.say("hi alice, who is here?".into()).await?;
    hear("alice", &mut alice_rx).await?;
    println!("  (alice's message reached {reached} listener)");
    println!("who: {:?}", bob.who().await?);
    match alice.say("   ".into()).await {
        Err(pb::CallError::Remote(ChatError::EmptyMessage)) => {
            println!("an empty message is refused")
        }
        other => return Err(format!("expected EmptyMessage, got {other:?}").into()),
    }

    // Bob drops his session: the release reaches the server, which drops the session object,
    // and the room hears that he left.
    drop(bob);
    hear("alice", &mut alice_rx).await?;
    println!("who: {:?}", alice.who().await?);
    let stats = bob_conn.stats().tables;
    println!(
        "bob's connection: {} imported, {} exported",
        stats.imported, stats.exported
    );

    bob_conn.close().await;
    alice_conn.close().await;
    server.shutdown().await;
    println!("done");
    Ok(())
}
