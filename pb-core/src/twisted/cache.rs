//! Copies of a Twisted peer's Cacheables: `[tag, luid, state]`, then `["cached", luid]`, kept
//! up to date by the owner's `observe_*` calls (`cachemessage`).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cache::CacheCopy;
use crate::codec::jelly::Dynamic;
use crate::link::{ReplicaSlot, lock};
use crate::object::{ObjectRef, RefInner};

/// A copy of a Twisted peer's Cacheable (Twisted's `RemoteCache`): the state it was sent with
/// and, in order, the `observe_*` calls its owner has made on it since. Clones and later
/// sends of the same Cacheable share one copy. Dropping the last one sends `decache`, and the
/// owner stops observing.
#[derive(Clone)]
pub struct RemoteCache {
    handle: ObjectRef,
    copy: Arc<CacheCopy>,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("tag", &String::from_utf8_lossy(self.copy.tag()))
            .field("observed", &self.copy.observed().len())
            .finish()
    }
}

impl RemoteCache {
    /// The Cacheable's type tag.
    pub fn tag(&self) -> &[u8] {
        self.copy.tag()
    }

    /// The state it was sent with.
    pub fn state(&self) -> Dynamic {
        Dynamic(self.copy.state().clone())
    }

    /// The owner's `observe_*` calls so far: each method's name (without `observe_`) and its
    /// arguments (a tuple).
    pub fn observed(&self) -> Vec<(String, Dynamic)> {
        self.copy.observed()
    }

    /// Waits until at least `n` `observe_*` calls have arrived (or the connection ends).
    pub async fn wait_observed(&self, n: usize) {
        let mut rx = self.copy.count();
        let closed = self.handle.disconnected();
        tokio::select! {
            _ = rx.wait_for(|c| *c >= n) => {}
            _ = closed => {}
        }
    }
}

/// Sent back to its owner, a copy goes as the owner's own Cacheable (`["lcache", luid]`).
impl Serialize for RemoteCache {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.handle.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RemoteCache {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let handle = ObjectRef::deserialize(d)?;
        let copy = match &handle.0 {
            RefInner::Remote(imp) => match &*lock(&imp.replica) {
                ReplicaSlot::Attached(sink) => sink.clone().as_any().downcast::<CacheCopy>().ok(),
                _ => None,
            },
            RefInner::Local(_) => None,
        };
        let copy =
            copy.ok_or_else(|| serde::de::Error::custom("not a Cacheable of a Twisted PB peer"))?;
        Ok(RemoteCache { handle, copy })
    }
}
