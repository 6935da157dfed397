//! Twisted's `pb1server.py` and `pb1client.py` in pb: the root hands out a reference to a
//! second object it makes on demand, and the client calls that one.
//!
//! ```text
//! cargo run --example howto_pb1
//! ```
//!
//! Server and client run in one process over TCP on 127.0.0.1. Beyond Twisted's listing, the
//! client then drops its reference and the server's `Two` is freed: references are counted
//! across the connection. It exits 0 only if `Two` was given 12 and was freed.

use std::error::Error;
use std::time::Duration;

use tokio::sync::mpsc;

/// Twisted: `class Two(pb.Referenceable)` with `remote_three`.
#[pb::remote]
pub trait Two {
    async fn three(&self, arg: i64);
}

/// Twisted: `class One(pb.Root)` with `remote_getTwo`. Returning a `TwoRef` passes the new
/// object by reference: it stays on the server, and the client gets a stub to it.
#[pb::remote]
pub trait One {
    async fn get_two(&self) -> TwoRef;
}

/// What the server's objects report to `main`, so that it can check them.
#[derive(Debug, PartialEq)]
enum Seen {
    Given(i64),
    Freed,
}

struct TheOne {
    seen: mpsc::UnboundedSender<Seen>,
}

impl One for TheOne {
    async fn get_two(&self) -> TwoRef {
        let two = TwoRef::new(TheTwo {
            seen: self.seen.clone(),
        });
        println!("returning a Two called {two:?}");
        two
    }
}

struct TheTwo {
    seen: mpsc::UnboundedSender<Seen>,
}

impl Two for TheTwo {
    async fn three(&self, arg: i64) {
        println!("Two.three was given {arg}");
        let _ = self.seen.send(Seen::Given(arg));
    }
}

impl Drop for TheTwo {
    // Runs when the last reference is gone: here, when the client's release arrives.
    fn drop(&mut self) {
        println!("the server's Two is freed");
        let _ = self.seen.send(Seen::Freed);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(OneRef::new(TheOne { seen: tx }));

    let conn = pb::Client::connect(server.local_addr()).await?;
    let one: OneRef = conn.root();
    println!("got first object: {one:?}");
    println!("asking it to getTwo");
    let two = one.get_two().await?;
    println!("got second object: {two:?}");
    println!("telling it to do three(12)");
    two.three(12).await?;

    // Dropping the last clone of the stub sends a release; the server's count reaches zero.
    drop(two);
    let mut got = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
            Ok(Some(s)) => got.push(s),
            _ => break,
        }
    }

    conn.close().await;
    server.shutdown().await;
    if got != [Seen::Given(12), Seen::Freed] {
        return Err(format!("expected Two to be given 12 then freed, saw {got:?}").into());
    }
    Ok(())
}
