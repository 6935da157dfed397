//! Twisted's `copy_sender.py` and `copy_receiver.tac` in pb: passing an object by value.
//!
//! ```text
//! cargo run --example howto_copy
//! ```
//!
//! Twisted needs two classes (`CopyPond(pb.Copyable)` to send, `ReceiverPond(pb.RemoteCopy)`
//! to receive) and `setUnjellyableForClass` to pair them. In pb one type does both:
//! `#[pb::copyable]` makes it serialisable (through pb's own serde), and a parameter of that type
//! receives a copy. Its methods are ordinary Rust methods, on each side. The sender is the
//! client here, as in Twisted. Both run in one process; it exits 0 only if the receiver got
//! the same pond.

use std::error::Error;

use tokio::sync::mpsc;

/// Twisted: `class LilyPond` with `CopyPond(LilyPond, pb.Copyable)`.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct LilyPond {
    pub color: String,
    pub num_frogs: u32,
}

impl LilyPond {
    fn count_frogs(&self) {
        println!("{} frogs", self.num_frogs);
    }
}

#[pb::remote]
pub trait Receiver {
    async fn take_pond(&self, pond: LilyPond) -> String;
}

struct TheReceiver {
    got: mpsc::UnboundedSender<LilyPond>,
}

impl Receiver for TheReceiver {
    async fn take_pond(&self, pond: LilyPond) -> String {
        println!(" got pond: {pond:?}");
        pond.count_frogs();
        let _ = self.got.send(pond);
        "safe and sound".into()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (tx, mut got) = mpsc::unbounded_channel();
    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(ReceiverRef::new(TheReceiver { got: tx }));

    let pond = LilyPond {
        color: "green".into(),
        num_frogs: 7,
    };
    pond.count_frogs();
    // Twisted prints the class's module and name: the type is the contract here.
    println!("{}", std::any::type_name::<LilyPond>());

    let conn = pb::Client::connect(server.local_addr()).await?;
    let remote: ReceiverRef = conn.root();
    let response = remote.take_pond(pond.clone()).await?;
    println!("pond arrived {response}");

    let received = got.recv().await;
    conn.close().await;
    server.shutdown().await;
    if received.as_ref() != Some(&pond) || response != "safe and sound" {
        return Err(format!("sent {pond:?}, the receiver got {received:?} ({response:?})").into());
    }
    Ok(())
}
