//! A chat client: `cargo run --example client -- --port 8789 --name alice`.
//!
//! Each line typed is said to the room; what others say is printed. End with Ctrl-D.

#[path = "shared/chat.rs"]
mod chat;

use chat::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = arg("--port")
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(8789);
    let name = arg("--name").unwrap_or_else(|| format!("guest{}", std::process::id()));
    let conn = pb::Client::connect(("127.0.0.1", port)).await?;
    let lobby: LobbyRef = conn.root();
    let (tx, mut heard) = mpsc::unbounded_channel();
    let session = lobby.join(name.clone(), ListenerRef::new(Ear(tx))).await?;
    println!("joined as {name}; here: {:?}", session.who().await?);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(text) if text.trim().is_empty() => {}
                Some(text) => { session.say(text).await?; }
                None => break,
            },
            Some((from, text)) = heard.recv() => println!("{from}: {text}"),
            _ = conn.closed() => { println!("server went away"); break; }
        }
    }
    drop(session);
    conn.close().await;
    Ok(())
}
