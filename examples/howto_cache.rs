//! Twisted's `cache_classes.py`, `cache_sender.py` and `cache_receiver.py` in pb: a cacheable
//! object, whose receiver holds a copy that the owner keeps up to date.
//!
//! ```text
//! cargo run --example howto_cache
//! ```
//!
//! Twisted pairs `MasterDuckPond(pb.Cacheable)` with `SlaveDuckPond(pb.RemoteCache)`, whose
//! `observe_*` methods apply the owner's changes. In pb the owner holds a `pb::Cache<DuckPond>`
//! and sends `cache.replica()`; the receiver gets a `pb::Replica<DuckPond>`, to which pb
//! applies each update (`CacheState::apply`, the same code on both sides) and whose
//! `updates()` lists every change in order, which is where the receiver's `observe_*` prints
//! come from. An update sent before a call is applied before that call runs, so `check_ducks`
//! always sees the ducks the sender had when it called. When the receiver drops the replica,
//! the owner stops sending it updates (Twisted's `stoppedObserving`). The sender is the client,
//! as in Twisted; both run in one process, and it exits 0 only if the receiver saw every change.

use std::error::Error;
use std::time::Duration;

use pb::{Cache, CacheState, Replica, ReplicaChange, ReplicaUpdates};

/// The cached state: Twisted's `self.ducks`.
#[pb::copyable]
#[derive(Debug, Clone, Default)]
pub struct DuckPond {
    pub ducks: Vec<String>,
}

/// One change, sent to every replica: Twisted's `observe_addDuck` and `observe_removeDuck`.
#[pb::copyable]
#[derive(Debug, Clone)]
pub enum DuckChange {
    Add(String),
    Remove(String),
}

impl CacheState for DuckPond {
    type Update = DuckChange;

    fn apply(&mut self, change: &DuckChange) {
        match change {
            DuckChange::Add(duck) => self.ducks.push(duck.clone()),
            DuckChange::Remove(duck) => self.ducks.retain(|d| d != duck),
        }
    }
}

#[pb::remote]
pub trait Receiver {
    async fn take_pond(&self, pond: Replica<DuckPond>) -> Vec<String>;
    async fn check_ducks(&self) -> Vec<String>;
    async fn ignore_pond(&self);
}

/// What the receiver keeps of the pond: the replica and the changes it has printed so far.
struct Watched {
    pond: Replica<DuckPond>,
    changes: ReplicaUpdates<DuckPond>,
    seen: u64,
}

impl Watched {
    /// Print the changes applied since the last call (Twisted's prints in `setCopyableState`
    /// and `observe_*`). They are all there: each was applied before this call ran.
    async fn catch_up(&mut self) {
        while self.seen < self.pond.version() {
            let Some(change) = self.changes.next().await else {
                return;
            };
            match &change {
                ReplicaChange::State(_) => println!(" cache - sitting, er, setting ducks"),
                ReplicaChange::Update {
                    update: change_made,
                    ..
                } => match **change_made {
                    DuckChange::Add(_) => println!(" cache - addDuck"),
                    DuckChange::Remove(_) => println!(" cache - removeDuck"),
                },
                _ => {}
            }
            self.seen = change.version();
        }
    }

    async fn check(&mut self) -> Vec<String> {
        self.catch_up().await;
        let ducks = self.pond.get().ducks;
        println!("[{}] ducks: {ducks:?}", ducks.len());
        ducks
    }
}

#[derive(Default)]
struct TheReceiver {
    pond: tokio::sync::Mutex<Option<Watched>>,
}

impl Receiver for TheReceiver {
    async fn take_pond(&self, pond: Replica<DuckPond>) -> Vec<String> {
        let mut changes = pond.updates();
        // The first change is the whole state as it arrived.
        if let Some(first) = changes.next().await {
            println!(" cache - sitting, er, setting ducks");
            let seen = first.version();
            println!("got pond: {pond:?}");
            let mut watched = Watched {
                pond,
                changes,
                seen,
            };
            let ducks = watched.check().await;
            *self.pond.lock().await = Some(watched);
            return ducks;
        }
        Vec::new()
    }

    async fn check_ducks(&self) -> Vec<String> {
        match self.pond.lock().await.as_mut() {
            Some(watched) => watched.check().await,
            None => Vec::new(),
        }
    }

    async fn ignore_pond(&self) {
        println!("dropping pond");
        // Dropping the replica releases it: the owner stops sending it updates.
        *self.pond.lock().await = None;
    }
}

fn count(master: &Cache<DuckPond>) -> usize {
    let n = master.get().ducks.len();
    println!("I have [{n}] ducks");
    n
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(ReceiverRef::new(TheReceiver::default()));

    // Twisted: `MasterDuckPond(["one duck", "two duck"])`.
    let master = Cache::new(DuckPond {
        ducks: vec!["one duck".into(), "two duck".into()],
    });
    count(&master);

    let conn = pb::Client::connect(server.local_addr()).await?;
    let remote: ReceiverRef = conn.root();
    let mut seen = Vec::new();
    seen.push(remote.take_pond(master.replica()).await?);
    println!("the owner now has {} observer", master.observers());

    master.update(DuckChange::Add("ugly duckling".into()))?;
    count(&master);
    seen.push(remote.check_ducks().await?);

    master.update(DuckChange::Remove("one duck".into()))?;
    count(&master);
    seen.push(remote.check_ducks().await?);
    remote.ignore_pond().await?;

    // Twisted's `stoppedObserving`: the receiver's release reaches the owner.
    let left = tokio::time::timeout(
        Duration::from_secs(5),
        master.wait_for_observers(|n| n == 0),
    )
    .await
    .map_err(|_| "the receiver's release never reached the owner")?;
    println!("the owner now has {left} observers");

    conn.close().await;
    server.shutdown().await;
    let expected = [
        vec!["one duck", "two duck"],
        vec!["one duck", "two duck", "ugly duckling"],
        vec!["two duck", "ugly duckling"],
    ];
    if seen != expected {
        return Err(format!("expected the receiver to see {expected:?}, it saw {seen:?}").into());
    }
    Ok(())
}
