//! The chat server on its own: `cargo run --example server -- --port 8789`.
//!
//! Connect clients with `cargo run --example client -- --port 8789 --name alice`.

#[path = "shared/chat.rs"]
mod chat;

use std::sync::Arc;

use chat::*;

fn port_arg() -> Result<u16, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--port") {
        Some(i) => args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| "--port takes a port number".to_string()),
        None => Ok(8789),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_arg()?;
    let server = pb::Server::bind(("127.0.0.1", port))
        .await?
        .serve(LobbyRef::new(LobbyImpl {
            room: Arc::new(Room::default()),
        }));
    println!(
        "chat server listening on {} (Ctrl-C to stop)",
        server.local_addr()
    );
    // Ctrl-C asks for a graceful shutdown; anything else holding a `ShutdownHandle` (a call
    // handler, say) could ask as well.
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            println!("shutting down");
            stop.shutdown();
        }
    });
    // Serve until the shutdown has closed every connection.
    server.wait().await;
    Ok(())
}
