//! Twisted's `copy2_classes.py`, `copy2_sender.py` and `copy2_receiver.py` in pb: the sender
//! chooses the state that is copied.
//!
//! ```text
//! cargo run --example howto_copy2
//! ```
//!
//! Twisted's `SenderPond.getStateToCopy` sends `frogsAndToads` instead of its two counts, and
//! `ReceiverPond.setCopyableState` takes that state. In pb the interface names the type that
//! crosses (`ReceiverPond`, the receiver's view), and the sender's own type turns itself into
//! it with a `From` impl: the compiler checks that both sides agree. For a state that depends
//! on which peer receives it (Twisted's `getStateToCopyFor(perspective)`), one type can pick its
//! state per connection with `#[pb::copyable(state_for = ...)]` (see the guide). Both run in
//! one process; it exits 0 only if the receiver counts 7.

use std::error::Error;

use tokio::sync::mpsc;

/// Twisted: `class FrogPond` / `SenderPond(FrogPond, pb.Copyable)`. It never crosses itself.
pub struct SenderPond {
    pub num_frogs: u32,
    pub num_toads: u32,
}

impl SenderPond {
    fn count(&self) -> u32 {
        self.num_frogs + self.num_toads
    }
}

/// Twisted: `class ReceiverPond(pb.RemoteCopy)`: what the receiver gets.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverPond {
    pub frogs_and_toads: u32,
}

impl ReceiverPond {
    fn count(&self) -> u32 {
        self.frogs_and_toads
    }
}

/// Twisted: `SenderPond.getStateToCopy`.
impl From<&SenderPond> for ReceiverPond {
    fn from(pond: &SenderPond) -> ReceiverPond {
        ReceiverPond {
            frogs_and_toads: pond.num_frogs + pond.num_toads,
        }
    }
}

#[pb::remote]
pub trait Receiver {
    async fn take_pond(&self, pond: ReceiverPond) -> String;
}

struct TheReceiver {
    counted: mpsc::UnboundedSender<u32>,
}

impl Receiver for TheReceiver {
    async fn take_pond(&self, pond: ReceiverPond) -> String {
        println!(" got pond: {pond:?}");
        println!(" count {}", pond.count());
        let _ = self.counted.send(pond.count());
        "safe and sound".into()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (tx, mut counted) = mpsc::unbounded_channel();
    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(ReceiverRef::new(TheReceiver { counted: tx }));

    let pond = SenderPond {
        num_frogs: 3,
        num_toads: 4,
    };
    println!("count {}", pond.count());

    let conn = pb::Client::connect(server.local_addr()).await?;
    let remote: ReceiverRef = conn.root();
    let response = remote.take_pond(ReceiverPond::from(&pond)).await?;
    println!("pond arrived {response}");

    let count = counted.recv().await;
    conn.close().await;
    server.shutdown().await;
    if count != Some(7) || response != "safe and sound" {
        return Err(format!("expected the receiver to count 7, got {count:?}").into());
    }
    Ok(())
}
