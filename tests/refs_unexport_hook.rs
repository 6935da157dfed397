//! An object's `on_unexport` hook runs after the connection's lock is released, so a hook may
//! use the very connection whose export ended (here: read its statistics, which takes the
//! broker's lock; run under that lock, the hook would deadlock).

use std::sync::{Arc, Mutex, OnceLock};

use pb::dispatch::{BoxFuture, Dispatch, IncomingCall, Interface, Reply};
use pb::{Config, Connection, ObjectRef, Side};

#[pb::remote]
pub trait Giver {
    async fn give(&self) -> Result<ObjectRef, ()>;
}

static WATCHED: Interface = Interface {
    name: "Watched",
    methods: &[],
};

/// Records each end of its export, with the connection's export count seen from the hook.
#[derive(Clone, Default)]
struct Seen {
    conn: Arc<OnceLock<Connection>>,
    ends: Arc<Mutex<Vec<(u64, usize)>>>,
    notify: Arc<tokio::sync::Notify>,
}

struct Watched(Seen);

impl Dispatch for Watched {
    fn interface(&self) -> &'static Interface {
        &WATCHED
    }

    fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply> {
        let reply = call.no_such_method(&WATCHED);
        Box::pin(std::future::ready(reply))
    }

    fn on_unexport(&self, _connection: u64, object: u64) {
        let exported = self
            .0
            .conn
            .get()
            .map_or(usize::MAX, |c| c.stats().tables.exported);
        self.0.ends.lock().unwrap().push((object, exported));
        self.0.notify.notify_one();
    }
}

struct GiverImpl(ObjectRef);

impl Giver for GiverImpl {
    async fn give(&self) -> Result<ObjectRef, ()> {
        Ok(self.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn the_unexport_hook_runs_outside_the_lock_and_may_use_the_connection() {
    let seen = Seen::default();
    let watched = ObjectRef::local(Watched(seen.clone()));
    let (a, b) = pb::transport::memory_pair();
    let config = Config::default();
    let root = GiverRef::new(GiverImpl(watched));
    let server = Connection::establish(
        a,
        &config,
        Side::Server,
        Some(root.object_ref().clone()),
        None,
    );
    let client = Connection::establish(b, &config, Side::Client, None, None);
    let (server, client) = tokio::try_join!(server, client).unwrap();
    let _ = seen.conn.set(server.clone());

    let giver: GiverRef = client.root();
    let first = giver.give().await.unwrap();
    assert_eq!(server.stats().tables.exported, 1);
    drop(first);
    // The release travels with the next call (or the writer); the hook then runs on the server.
    let second = giver.give().await.unwrap();
    drop(second);
    let _ = giver.give().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while seen.ends.lock().unwrap().is_empty() {
            seen.notify.notified().await;
        }
    })
    .await
    .expect("the hook ran");
    let ends = seen.ends.lock().unwrap().clone();
    // The hook saw the table without the export it reports the end of.
    assert!(
        ends.iter()
            .all(|&(object, exported)| object >= 1 && exported <= 1),
        "{ends:?}"
    );
}
