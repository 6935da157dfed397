//! Every change of a replica's state, in order ([`super::Replica::updates`]).

use super::*;

/// How many changes a [`Replica::updates`] receiver may fall behind before it gets the whole
/// state instead.
const CHANGES_BUFFER: usize = 256;

/// One change of a replica's state (see [`Replica::updates`]).
#[non_exhaustive]
pub enum ReplicaChange<T: CacheState> {
    /// A whole state: the first one a receiver sees, one the owner sent, or the current one
    /// after the receiver fell behind.
    State(Versioned<T>),
    /// One update, applied to the state of the version before.
    Update {
        /// The version it made.
        version: u64,
        /// The update.
        update: Arc<T::Update>,
    },
}

impl<T: CacheState> Clone for ReplicaChange<T> {
    fn clone(&self) -> Self {
        match self {
            ReplicaChange::State(s) => ReplicaChange::State(s.clone()),
            ReplicaChange::Update { version, update } => ReplicaChange::Update {
                version: *version,
                update: update.clone(),
            },
        }
    }
}

impl<T: CacheState> ReplicaChange<T> {
    /// The version the change made.
    pub fn version(&self) -> u64 {
        match self {
            ReplicaChange::State(s) => s.version,
            ReplicaChange::Update { version, .. } => *version,
        }
    }
}

impl<T: CacheState> fmt::Debug for ReplicaChange<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaChange::State(s) => write!(f, "State(version {})", s.version),
            ReplicaChange::Update { version, .. } => write!(f, "Update(version {version})"),
        }
    }
}

/// The changes of a replica's state, in order (see [`Replica::updates`]).
pub struct ReplicaUpdates<T: CacheState> {
    pub(super) rx: tokio::sync::broadcast::Receiver<ReplicaChange<T>>,
    pub(super) state: watch::Receiver<Versioned<T>>,
    pub(super) first: Option<Versioned<T>>,
    pub(super) last: Option<u64>,
}

impl<T: CacheState> fmt::Debug for ReplicaUpdates<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaUpdates")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl<T: CacheState> ReplicaUpdates<T> {
    /// The next change, or `None` once the replica's state is gone.
    pub async fn next(&mut self) -> Option<ReplicaChange<T>> {
        use tokio::sync::broadcast::error::RecvError;
        if let Some(first) = self.first.take() {
            self.last = Some(first.version);
            return Some(ReplicaChange::State(first));
        }
        loop {
            let change = match self.rx.recv().await {
                Ok(change) => change,
                // Fell behind: the whole state stands for what was missed.
                Err(RecvError::Lagged(_)) => ReplicaChange::State(self.state.borrow().clone()),
                Err(RecvError::Closed) => return None,
            };
            if self.last.is_some_and(|last| change.version() <= last) {
                continue;
            }
            self.last = Some(change.version());
            return Some(change);
        }
    }
}

/// Where a state's changes go, made on first use (a replica nobody asks for changes costs
/// nothing more).
pub(super) struct Changes<T: CacheState>(
    std::sync::OnceLock<tokio::sync::broadcast::Sender<ReplicaChange<T>>>,
);

impl<T: CacheState> Default for Changes<T> {
    fn default() -> Self {
        Changes(std::sync::OnceLock::new())
    }
}

impl<T: CacheState> Changes<T> {
    pub(super) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ReplicaChange<T>> {
        self.0
            .get_or_init(|| tokio::sync::broadcast::channel(CHANGES_BUFFER).0)
            .subscribe()
    }

    /// Send the change `make` makes, if anyone may be listening.
    pub(super) fn send(&self, make: impl FnOnce() -> ReplicaChange<T>) {
        if let Some(tx) = self.0.get()
            && tx.receiver_count() > 0
        {
            let _ = tx.send(make());
        }
    }
}
