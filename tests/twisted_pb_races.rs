//! The PB dialect when messages race: a Cacheable's updates held for a state not sent yet, a
//! Cacheable held in another's state, two logins at once on one connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use pb::twisted::PbConfig;
use pb::{Connection, ObjectRef, Remote};

async fn pair_with(
    root: ObjectRef,
    server: PbConfig,
    client: PbConfig,
) -> (Connection, Connection) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = pb::twisted::accept_io(a, None, Some(root), server);
    let client = pb::twisted::connect_io(b, None, client).await.unwrap();
    (server, client)
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

// ---------------------------------------------------------------------------------------------
// An update held for a Cacheable whose state has not left yet goes once the state is queued;
// one that cannot be sent cuts the connection (`CacheBehind`), held or not.

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    text: String,
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum TextUpdate {
    #[serde(rename = "set")]
    Set(String),
}

impl pb::CacheState for Text {
    type Update = TextUpdate;
    fn apply(&mut self, update: &TextUpdate) {
        let TextUpdate::Set(s) = update;
        self.text = s.clone();
    }
    fn twisted_tag() -> &'static str {
        "pbtest.Text"
    }
}

/// The server's expression budget: an update's arguments alone fit in it, its whole
/// `cachemessage` does not.
const BUDGET: usize = 4096;
/// The update's string: its arguments' charge (a few elements of 40 bytes and the string) is
/// under BUDGET, the whole message's (about 8 more elements and the method name) over it.
const BIG: usize = BUDGET - 400;

fn server_config() -> PbConfig {
    let mut c = PbConfig::default();
    c.banana.max_expression_size = BUDGET;
    c
}

#[pb::remote]
pub trait TextUpdating {
    /// Answers the replica; with `held`, a task started first updates the cache once the
    /// answer is jellied and before it is queued.
    async fn replica(&self, held: bool) -> pb::Replica<Text>;
}

#[pb::remote]
pub trait TextUpdatingView {
    async fn replica(&self, held: bool) -> pb::twisted::RemoteCache;
}

struct TheTextUpdating(pb::Cache<Text>);

impl TextUpdating for TheTextUpdating {
    async fn replica(&self, held: bool) -> pb::Replica<Text> {
        tokio::task::yield_now().await;
        if held {
            let cache = self.0.clone();
            tokio::spawn(async move { cache.update(TextUpdate::Set("x".repeat(BIG))).unwrap() });
        }
        self.0.replica()
    }
}

/// The update sent directly, after the state left, cuts the connection.
#[tokio::test(start_paused = true)]
async fn control_an_update_over_the_budget_sent_directly_cuts_the_connection() {
    let cache = pb::Cache::new(Text { text: "a".into() });
    let (server, client) = pair_with(
        TextUpdatingRef::new(TheTextUpdating(cache.clone())).into(),
        server_config(),
        PbConfig::default(),
    )
    .await;
    let root = TextUpdatingViewRef::from_object_ref(client.root_ref());
    let copy = root.replica(false).await.unwrap();
    cache.update(TextUpdate::Set("x".repeat(BIG))).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.closed())
        .await
        .expect("closed");
    assert!(
        matches!(server.close_reason(), Some(pb::CloseReason::CacheBehind(_))),
        "{:?}",
        server.close_reason()
    );
    drop(copy);
}

/// The same update, made while the state was jellied and not yet queued, is held and goes
/// once the state is queued: it cannot be sent either, so the connection is cut
/// (`CacheBehind`, the call failing with it) rather than leaving a copy that never sees it.
#[tokio::test(start_paused = true)]
async fn a_held_cache_update_that_cannot_be_sent_cuts_the_connection() {
    let cache = pb::Cache::new(Text { text: "a".into() });
    let (server, client) = pair_with(
        TextUpdatingRef::new(TheTextUpdating(cache.clone())).into(),
        server_config(),
        PbConfig::default(),
    )
    .await;
    let root = TextUpdatingViewRef::from_object_ref(client.root_ref());
    let copy = root.replica(true).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server.closed()).await;
    assert_eq!(cache.get().text.len(), BIG, "the cache was updated");
    let saw_update = copy.as_ref().is_ok_and(|c| !c.observed().is_empty());
    let cut = matches!(server.close_reason(), Some(pb::CloseReason::CacheBehind(_)));
    assert!(
        saw_update || cut,
        "the update was neither sent nor did it cut the connection: {:?}, the server's close \
         reason {:?}",
        copy.as_ref()
            .map(|c| (c.state().0.root().clone(), c.observed().len())),
        server.close_reason()
    );
}

// ---------------------------------------------------------------------------------------------
// A Cacheable whose state holds another, jellied for two messages before either is queued:
// the one queued second takes both states out again (the outer state is older than the updates
// sent meanwhile, and the peer would take it as a new copy, Twisted's `cacheLocally` and pb's
// driver alike, behind for good).

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    count: i64,
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum CountUpdate {
    #[serde(rename = "set")]
    Set(i64),
}

impl pb::CacheState for Count {
    type Update = CountUpdate;
    fn apply(&mut self, update: &CountUpdate) {
        let CountUpdate::Set(n) = update;
        self.count = *n;
    }
    fn twisted_tag() -> &'static str {
        "pbtest.Counter"
    }
}

#[pb::copyable]
#[derive(Debug, Clone)]
pub struct Outer {
    n: i64,
    inner: pb::Replica<Count>,
}

impl pb::CacheState for Outer {
    type Update = CountUpdate;
    fn apply(&mut self, update: &CountUpdate) {
        let CountUpdate::Set(n) = update;
        self.n = *n;
    }
    fn twisted_tag() -> &'static str {
        "pbtest.Outer"
    }
}

#[pb::remote]
pub trait TwoOuters {
    async fn first(&self) -> pb::Replica<Outer>;
    async fn second(&self) -> pb::Replica<Outer>;
}

#[pb::remote]
pub trait TwoOutersView {
    async fn first(&self) -> pb::twisted::RemoteCache;
    async fn second(&self) -> pb::twisted::RemoteCache;
}

struct TheTwoOuters {
    outer: pb::Cache<Outer>,
    go1: Arc<tokio::sync::Notify>,
    go2: Arc<tokio::sync::Notify>,
    entered: Arc<std::sync::atomic::AtomicUsize>,
    /// Scheduler turns the update waits, once started by `first`.
    turns: usize,
}

impl TwoOuters for TheTwoOuters {
    async fn first(&self) -> pb::Replica<Outer> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.go1.notified().await;
        // Runs some turns after both answers are jellied (with the outer state at n = 4):
        // some of them fall between the two answers being queued.
        let outer = self.outer.clone();
        let turns = self.turns;
        tokio::spawn(async move {
            for _ in 0..turns {
                tokio::task::yield_now().await;
            }
            outer.update(CountUpdate::Set(5)).unwrap()
        });
        self.outer.replica()
    }
    async fn second(&self) -> pb::Replica<Outer> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.go2.notified().await;
        self.outer.replica()
    }
}

/// One run: the update waits `turns` turns. Returns a line if the copy the peer holds last
/// is behind the cache.
async fn run_two_outers(turns: usize) -> Option<String> {
    let inner = pb::Cache::new(Count { count: 1 });
    let outer = pb::Cache::new(Outer {
        n: 4,
        inner: inner.replica(),
    });
    let go1 = Arc::new(tokio::sync::Notify::new());
    let go2 = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, b, written) = common::tapped();
    let root_obj: ObjectRef = TwoOutersRef::new(TheTwoOuters {
        outer: outer.clone(),
        go1: go1.clone(),
        go2: go2.clone(),
        entered: entered.clone(),
        turns,
    })
    .into();
    let server = pb::twisted::accept_io(a, None, Some(root_obj), PbConfig::default());
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    let root = TwoOutersViewRef::from_object_ref(client.root_ref());
    let first = tokio::spawn({
        let root = root.clone();
        async move { root.first().await }
    });
    let second = tokio::spawn({
        let root = root.clone();
        async move { root.second().await }
    });
    until(|| entered.load(std::sync::atomic::Ordering::SeqCst) == 2).await;
    go1.notify_one();
    go2.notify_one();
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Let everything queued arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outer.get().n, 5);
    let record = written.lock().unwrap().clone();
    // What the server wrote: each `[tag, luid, state]` of the outer Cacheable makes the
    // peer's copy anew (Twisted's `cacheLocally` replaces the copy, and so does pb's driver,
    // `st.cached.insert`); the update (`cachemessage ... "set" ...`) must come after the last
    // one, or the copy never sees it.
    let tag = b"pbtest.Outer";
    let crossed = common::occurrences(&record, tag);
    let last = record.windows(tag.len()).rposition(|w| w == tag).unwrap();
    let updates = common::occurrences(&record, b"set");
    let after_last = common::occurrences(&record[last..], b"set");
    let line = format!(
        "turns {turns}: the outer state crossed {crossed} times (all jellied at n = 4), the \
         update crossed {updates} times, {after_last} of them after the last state: {:?}",
        String::from_utf8_lossy(
            &record[record.windows(tag.len()).position(|w| w == tag).unwrap()..]
        )
    );
    drop((first, second, client));
    drop(server);
    (updates > 0 && after_last == 0).then_some(line)
}

#[tokio::test(start_paused = true)]
async fn a_cacheable_holding_another_is_not_sent_again_with_an_older_state() {
    let mut stale = Vec::new();
    for turns in 0..4 {
        if let Some(line) = run_two_outers(turns).await {
            stale.push(line);
        }
    }
    assert!(
        stale.is_empty(),
        "a copy of the outer Cacheable was made from an older state after the update was \
         sent (it never sees n = 5):\n{}",
        stale.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Two logins at once on one connection (the shape of Twisted's `test_concurrentLogin`), which
// share its one challenger: bob mistypes his password, and alice's right answer to her own
// challenge is still taken (in Twisted each login has a challenger of its own).

#[pb::remote]
pub trait Avatar {
    async fn name_len(&self) -> i64;
}

struct TheAvatar(i64);

impl Avatar for TheAvatar {
    async fn name_len(&self) -> i64 {
        self.0
    }
}

#[tokio::test(start_paused = true)]
async fn one_users_failed_login_does_not_spoil_another_concurrent_login() {
    let creds = pb::twisted::Credentials::new()
        .user("alice", "secret")
        .user("bob", "hunter2");
    let portal = pb::twisted::Portal::new(creds, |user, _| {
        AvatarRef::new(TheAvatar(user.map_or(0, |u| u.len() as i64))).into()
    });
    let (_server, client) =
        pair_with(portal.root(), PbConfig::default(), PbConfig::default()).await;
    let root = client.root_ref();
    let alice = bytes::Bytes::from_static(b"alice");
    let bob = bytes::Bytes::from_static(b"bob");
    let (ca, cha): (bytes::Bytes, ObjectRef) = root
        .call::<_, _, pb::twisted::Failure>("login", &(&alice,))
        .await
        .unwrap();
    let (cb, chb): (bytes::Bytes, ObjectRef) = root
        .call::<_, _, pb::twisted::Failure>("login", &(&bob,))
        .await
        .unwrap();
    // Bob mistypes: refused, as he should be.
    let wrong = bytes::Bytes::copy_from_slice(&pb::twisted::cred::respond(&cb, b"hunter3"));
    let bobs = chb
        .call::<_, ObjectRef, pb::twisted::Failure>("respond", &(wrong, None::<ObjectRef>))
        .await;
    assert!(bobs.is_err());
    // Alice answers her own challenge correctly.
    let right = bytes::Bytes::copy_from_slice(&pb::twisted::cred::respond(&ca, b"secret"));
    let alices = cha
        .call::<_, ObjectRef, pb::twisted::Failure>("respond", &(right, None::<ObjectRef>))
        .await;
    let avatar = alices.unwrap_or_else(|e| {
        panic!("alice answered her own challenge right and was refused (bob's failure took it out): {e:?}")
    });
    assert_eq!(
        AvatarRef::from_object_ref(avatar).name_len().await.unwrap(),
        5
    );
}
