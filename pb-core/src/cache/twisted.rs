//! A copy of a Twisted PB peer's Cacheable, which its owner keeps up to date with `observe_*`
//! calls: what the PB driver keeps for it, what `pb::twisted::RemoteCache` shows, and what a
//! [`Replica`](super::Replica) received over Twisted PB follows.

use std::any::Any;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::lock;
use crate::codec::jelly::Dynamic;
use crate::link::ReplicaSink;
use pb_proto::jelly::Graph;

/// Called with each `observe_*` call's method and arguments.
type Follower = Box<dyn Fn(&str, &Graph) + Send + Sync>;

/// The `observe_*` calls so far, in order, and who follows them.
struct Observed {
    calls: Vec<(String, Dynamic)>,
    follower: Option<Follower>,
}

/// The copy of one Cacheable on one connection, shared by everything received for it.
pub(crate) struct CacheCopy {
    tag: bytes::Bytes,
    state: Graph,
    max_copied: usize,
    observed: Mutex<Observed>,
    count: watch::Sender<usize>,
    /// The typed replica made of this copy, reused by later sends of the same Cacheable.
    replica: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
}

impl CacheCopy {
    /// A copy of a Cacheable tagged `tag`, sent with `state`; its state and updates are decoded
    /// with at most `max_copied` bytes of copies of their shared parts (the connection's
    /// `JellyConfig::max_copied_size`).
    pub(crate) fn new(tag: bytes::Bytes, state: Graph, max_copied: usize) -> Arc<CacheCopy> {
        Arc::new(CacheCopy {
            tag,
            state,
            max_copied,
            observed: Mutex::new(Observed {
                calls: Vec::new(),
                follower: None,
            }),
            count: watch::channel(0).0,
            replica: Mutex::new(None),
        })
    }

    pub(crate) fn tag(&self) -> &[u8] {
        &self.tag
    }

    /// The state the Cacheable was sent with.
    pub(crate) fn state(&self) -> &Graph {
        &self.state
    }

    /// The most bytes decoding the state, or an update, may copy of its shared parts.
    pub(crate) fn max_copied(&self) -> usize {
        self.max_copied
    }

    pub(crate) fn observed(&self) -> Vec<(String, Dynamic)> {
        lock(&self.observed).calls.clone()
    }

    pub(crate) fn count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The owner called `observe_<method>(*args)`.
    pub(crate) fn observe(&self, method: String, args: Graph) {
        let n = {
            let mut log = lock(&self.observed);
            if let Some(follow) = &log.follower {
                follow(&method, &args);
            }
            log.calls.push((method, Dynamic(args)));
            log.calls.len()
        };
        self.count.send_replace(n);
    }

    /// From now on `follow` sees every `observe_*` call, after those that came already.
    pub(crate) fn follow(&self, follow: Follower) {
        let mut log = lock(&self.observed);
        for (method, args) in &log.calls {
            follow(method, &args.0);
        }
        log.follower = Some(follow);
    }

    pub(crate) fn replica(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        lock(&self.replica).clone()
    }

    pub(crate) fn set_replica(&self, replica: Arc<dyn Any + Send + Sync>) {
        *lock(&self.replica) = Some(replica);
    }
}

impl ReplicaSink for CacheCopy {
    fn apply(&self, _payload: &[u8]) {}

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
