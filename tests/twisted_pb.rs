//! The PB dialect between two pb ends over an in-memory pipe: `#[pb::remote]` traits served
//! and called over Twisted PB, references counted and sent home, copyables with Twisted type
//! tags, failures, login through a portal. (Against real Twisted: tests/twisted_pb_interop.rs.)

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use pb::twisted::{BigInt, Dynamic, Failure, PbConfig, Value};
use pb::{CallError, Caller, Connection, ObjectRef, Remote};

#[pb::copyable(twisted = "pbtest.Point")]
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    x: i64,
    y: i64,
}

#[pb::remote]
pub trait Pinger {
    async fn ping(&self, x: i64) -> i64;
}

#[pb::remote]
pub trait Counter {
    async fn increment(&self) -> i64;
    async fn value(&self) -> i64;
}

#[pb::remote]
pub trait Root {
    async fn echo(&self, x: Dynamic) -> Dynamic;
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn big(&self, a: BigInt) -> BigInt;
    async fn fail(&self, message: String) -> Result<(), Failure>;
    async fn oops(&self) -> Result<(), String>;
    async fn call_back(&self, r: PingerRef, x: i64) -> Result<i64, Failure>;
    async fn give_back(&self, r: ObjectRef) -> ObjectRef;
    async fn counter(&self, start: i64) -> CounterRef;
    async fn point(&self, x: i64, y: i64) -> Point;
    async fn sum_point(&self, p: Point) -> i64;
    async fn exported(&self, caller: Caller) -> usize;
    async fn two(&self, a: PingerRef, b: PingerRef) -> i64;
}

struct TheCounter(AtomicI64);

impl Counter for TheCounter {
    async fn increment(&self) -> i64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    async fn value(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct TheRoot;

impl Root for TheRoot {
    async fn echo(&self, x: Dynamic) -> Dynamic {
        x
    }
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn big(&self, a: BigInt) -> BigInt {
        a
    }
    async fn fail(&self, message: String) -> Result<(), Failure> {
        Err(Failure::pb_error(message))
    }
    async fn oops(&self) -> Result<(), String> {
        Err("it broke".to_owned())
    }
    async fn call_back(&self, r: PingerRef, x: i64) -> Result<i64, Failure> {
        r.ping(x)
            .await
            .map_err(|e| Failure::pb_error(format!("the callback failed: {e}")))
    }
    async fn give_back(&self, r: ObjectRef) -> ObjectRef {
        r
    }
    async fn counter(&self, start: i64) -> CounterRef {
        CounterRef::new(TheCounter(AtomicI64::new(start)))
    }
    async fn point(&self, x: i64, y: i64) -> Point {
        Point { x, y }
    }
    async fn sum_point(&self, p: Point) -> i64 {
        p.x + p.y
    }
    async fn exported(&self, caller: Caller) -> usize {
        caller.connection().map_or(0, |c| c.stats().tables.exported)
    }
    async fn two(&self, a: PingerRef, b: PingerRef) -> i64 {
        a.ping(1).await.unwrap_or(0) + b.ping(2).await.unwrap_or(0)
    }
}

struct ThePinger;

impl Pinger for ThePinger {
    async fn ping(&self, x: i64) -> i64 {
        x
    }
}

async fn pair(root: ObjectRef) -> (Connection, Connection) {
    pair_with(root, PbConfig::default(), PbConfig::default()).await
}

/// A pair whose two ends have configs of their own.
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

/// Lets the connection's tasks run until `f` holds (a bounded number of scheduler turns).
async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn a_remote_trait_is_served_and_called_over_the_pb_dialect() {
    let (server, client) = pair(RootRef::new(TheRoot).into()).await;
    assert!(server.is_twisted() && client.is_twisted());
    let root: RootRef = client.root();
    assert_eq!(root.add(2, 40).await.unwrap(), 42);
    let huge: BigInt = "-123456789012345678901234567890".parse().unwrap();
    assert_eq!(root.big(huge.clone()).await.unwrap(), huge);

    // A failure arrives typed, with its type and parents.
    let Err(CallError::Remote(f)) = root.fail("no".to_owned()).await else {
        panic!()
    };
    assert_eq!(f.value, "no");
    assert!(f.check("twisted.spread.pb.Error"));
    // Another error type crosses as a failure carrying its message.
    let Err(CallError::Remote(e)) = root.oops().await else {
        panic!()
    };
    assert_eq!(e, "it broke");

    // Copyables with their tag, both ways.
    assert_eq!(root.point(3, 4).await.unwrap(), Point { x: 3, y: 4 });
    assert_eq!(root.sum_point(Point { x: 5, y: 6 }).await.unwrap(), 11);

    // An unknown method is an error, and the connection goes on.
    let unknown = client.root_ref().call::<_, i64, Failure>("nope", &()).await;
    assert!(
        matches!(unknown, Err(CallError::Remote(ref f)) if f.check("twisted.spread.flavors.NoSuchMethod")),
        "{unknown:?}"
    );
    assert_eq!(root.add(1, 1).await.unwrap(), 2);
}

#[tokio::test]
async fn references_are_counted_sent_home_and_released() {
    let (server, client) = pair(RootRef::new(TheRoot).into()).await;
    let root: RootRef = client.root();
    let c = root.counter(10).await.unwrap();
    assert_eq!(c.increment().await.unwrap(), 11);
    assert_eq!(c.value().await.unwrap(), 11);
    let c2 = root.counter(0).await.unwrap();
    assert_eq!(root.exported().await.unwrap(), 2);

    // Our object goes out and comes back as itself.
    let mine: ObjectRef = PingerRef::new(ThePinger).into();
    let back = root.give_back(mine.clone()).await.unwrap();
    assert_eq!(back, mine);
    assert!(back.is_local());
    assert_eq!(
        root.call_back(PingerRef::new(ThePinger), 7).await.unwrap(),
        7
    );

    drop((c, c2));
    until(|| server.stats().tables.exported == 0).await;
    assert_eq!(root.exported().await.unwrap(), 0);
    // What we exported is released by the server once it is done with it.
    until(|| client.stats().tables.exported == 0).await;
}

#[tokio::test]
async fn dynamic_values_keep_their_types_and_sharing() {
    let (_server, client) = pair(RootRef::new(TheRoot).into()).await;
    let root: RootRef = client.root();
    let mut g = pb::twisted::Graph::default();
    let shared = g.add_node(Value::List(vec![Value::Int(1), Value::Float(-0.0)]));
    let cyclic = g.add_node(Value::List(vec![Value::Int(0)]));
    if let Some(Value::List(items)) = g.node_mut(cyclic) {
        items.push(Value::Shared(cyclic));
    }
    g.set_root(Value::Tuple(vec![
        Value::Shared(shared),
        Value::Shared(shared),
        Value::Shared(cyclic),
        Value::Set(vec![Value::from("s")]),
        Value::Bytes(bytes::Bytes::from_static(b"raw")),
        Value::None,
        Value::Bool(true),
        Value::BigInt("36893488147419103233".parse().unwrap()),
    ]));
    let back = root.echo(Dynamic(g.clone())).await.unwrap();
    assert!(back.0.equivalent(&g), "{back:?}");
}

#[tokio::test(start_paused = true)]
async fn a_portal_logs_in_with_twisteds_challenge_response() {
    let creds = pb::twisted::Credentials::new().user("alice", "secret");
    let portal = pb::twisted::Portal::new(creds, |user, mind| {
        let _ = mind;
        PingerRef::new(Named(user.unwrap_or("anonymous").len() as i64)).into()
    })
    .allow_anonymous(true);
    let (_server, client) = pair(portal.root()).await;
    let root = client.root_ref();
    let avatar = pb::twisted::login(&root, b"alice", b"secret", None)
        .await
        .unwrap();
    assert_eq!(PingerRef::from_object_ref(avatar).ping(0).await.unwrap(), 5);
    for (user, password) in [(&b"alice"[..], &b"wrong"[..]), (b"mallory", b"secret")] {
        let Err(CallError::Remote(f)) = pb::twisted::login(&root, user, password, None).await
        else {
            panic!()
        };
        assert!(f.check("twisted.cred.error.UnauthorizedLogin"), "{f:?}");
    }
    let anon = pb::twisted::login_anonymous(&root, None).await.unwrap();
    assert_eq!(PingerRef::from_object_ref(anon).ping(0).await.unwrap(), 9);
}

fn alices_portal() -> pb::twisted::Portal {
    let creds = pb::twisted::Credentials::new().user("alice", "secret");
    pb::twisted::Portal::new(creds, |user, _| {
        PingerRef::new(Named(user.unwrap_or("anonymous").len() as i64)).into()
    })
}

/// `login` with a username, to keep its challenge unanswered.
async fn challenge(root: &ObjectRef, user: &bytes::Bytes) -> Result<ObjectRef, CallError<Failure>> {
    let (_challenge, challenger): (bytes::Bytes, ObjectRef) = root.call("login", &(user,)).await?;
    Ok(challenger)
}

#[tokio::test(start_paused = true)]
async fn a_connection_holds_one_challenger_and_a_few_challenges_whatever_it_asks() {
    let (server, client) = pair(alices_portal().root()).await;
    let root = client.root_ref();
    // 64 logins naming 600 KiB "users", never answered: one challenger, the same each time,
    // and the names not kept.
    let user = bytes::Bytes::from(vec![b'u'; 600 * 1024]);
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(challenge(&root, &user).await.unwrap());
    }
    assert!(held.iter().all(|c| *c == held[0]));
    assert_eq!(server.stats().tables.exported, 1);
    // Several logins at once on one connection (Twisted's test_concurrentLogin): each of the
    // latest challenges can be answered.
    let alice = bytes::Bytes::from_static(b"alice");
    let (c1, ch1): (bytes::Bytes, ObjectRef) = root
        .call::<_, _, Failure>("login", &(&alice,))
        .await
        .unwrap();
    let (c2, ch2): (bytes::Bytes, ObjectRef) = root
        .call::<_, _, Failure>("login", &(&alice,))
        .await
        .unwrap();
    for c in [c2, c1] {
        let response = bytes::Bytes::copy_from_slice(&pb::twisted::cred::respond(&c, b"secret"));
        let avatar: ObjectRef = ch1
            .call::<_, _, Failure>("respond", &(response, None::<ObjectRef>))
            .await
            .unwrap();
        assert_eq!(PingerRef::from_object_ref(avatar).ping(0).await.unwrap(), 5);
    }
    drop(ch2);
    // Past MAX_PENDING_CHALLENGES, the oldest can no longer be answered.
    let (old, _): (bytes::Bytes, ObjectRef) = root
        .call::<_, _, Failure>("login", &(&alice,))
        .await
        .unwrap();
    for _ in 0..pb::twisted::MAX_PENDING_CHALLENGES {
        challenge(&root, &alice).await.unwrap();
    }
    let response = bytes::Bytes::copy_from_slice(&pb::twisted::cred::respond(&old, b"secret"));
    let refused: Result<ObjectRef, _> = held[0]
        .call::<_, _, Failure>("respond", &(response, None::<ObjectRef>))
        .await;
    assert!(matches!(refused, Err(CallError::Remote(_))), "{refused:?}");
}

#[tokio::test(start_paused = true)]
async fn failed_logins_on_a_connection_are_slowed_and_limited() {
    let (server, client) = pair(alices_portal().root()).await;
    let root = client.root_ref();
    let start = tokio::time::Instant::now();
    let mut refused = 0;
    for _ in 0..50 {
        match pb::twisted::login(&root, b"alice", b"guess", None).await {
            Err(CallError::Remote(f)) => {
                assert!(f.check("twisted.cred.error.UnauthorizedLogin"), "{f:?}");
                refused += 1;
            }
            Err(CallError::Disconnected) => break,
            other => panic!("{other:?}"),
        }
    }
    // Three refusals, then the connection closes at the next try.
    assert_eq!(refused, 3);
    // 500 ms, then 1 s, then 2 s.
    assert!(
        start.elapsed() >= Duration::from_millis(3500),
        "{:?}",
        start.elapsed()
    );
    until(|| server.is_closed()).await;
    // The limit and the delay are the portal's to set.
    let portal = alices_portal()
        .max_failures(10)
        .failure_delay(Duration::ZERO);
    let (server, client) = pair(portal.root()).await;
    let root = client.root_ref();
    for _ in 0..9 {
        assert!(
            pb::twisted::login(&root, b"alice", b"guess", None)
                .await
                .is_err()
        );
    }
    assert!(
        pb::twisted::login(&root, b"alice", b"secret", None)
            .await
            .is_ok()
    );
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_logs_in_is_closed_at_the_login_timeout() {
    let (server, _client) = pair(alices_portal().root()).await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(!server.is_closed());
    tokio::time::timeout(Duration::from_secs(2), server.closed())
        .await
        .expect("closed at 30 s");
    // Logged in in time, it stays open past the deadline.
    let (server, client) = pair(alices_portal().login_timeout(Duration::from_secs(5)).root()).await;
    pb::twisted::login(&client.root_ref(), b"alice", b"secret", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!server.is_closed());
}

struct Named(i64);

impl Pinger for Named {
    async fn ping(&self, x: i64) -> i64 {
        x + self.0
    }
}

#[tokio::test]
async fn the_connection_ends_and_calls_fail() {
    let (server, client) = pair(RootRef::new(TheRoot).into()).await;
    let root: RootRef = client.root();
    assert_eq!(root.add(1, 2).await.unwrap(), 3);
    server.close().await;
    client.closed().await;
    assert!(matches!(root.add(1, 2).await, Err(CallError::Disconnected)));
}

#[tokio::test]
async fn one_object_is_served_to_pb_and_twisted_peers_at_once() {
    let root = RootRef::new(TheRoot);
    let native = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(root.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let twisted_addr = listener.local_addr().unwrap();
    let served: ObjectRef = root.into();
    tokio::spawn(pb::twisted::serve(listener, served, PbConfig::default()));

    let pb_client = pb::Client::connect(native.local_addr()).await.unwrap();
    let twisted_client = pb::twisted::connect(twisted_addr, PbConfig::default())
        .await
        .unwrap();
    assert!(!pb_client.is_twisted());
    let over_pb: RootRef = pb_client.root();
    let over_twisted: RootRef = twisted_client.root();
    assert_eq!(over_pb.add(1, 2).await.unwrap(), 3);
    assert_eq!(over_twisted.add(1, 2).await.unwrap(), 3);
    assert_eq!(
        over_pb.point(1, 2).await.unwrap(),
        over_twisted.point(1, 2).await.unwrap()
    );
}

/// A cache and its copy over the PB dialect, both ends pb.
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

#[pb::remote]
pub trait Caches {
    async fn cache(&self) -> pb::Replica<Count>;
    async fn bump(&self) -> i64;
    async fn exported(&self, caller: Caller) -> usize;
}

#[pb::remote]
pub trait CachesView {
    async fn cache(&self) -> pb::twisted::RemoteCache;
    async fn bump(&self) -> i64;
    async fn exported(&self) -> usize;
}

struct TheCaches(pb::Cache<Count>);

impl Caches for TheCaches {
    async fn cache(&self) -> pb::Replica<Count> {
        self.0.replica()
    }
    async fn bump(&self) -> i64 {
        let n = self.0.get().count + 1;
        self.0.update(CountUpdate::Set(n)).unwrap();
        n
    }
    async fn exported(&self, caller: Caller) -> usize {
        caller.connection().map_or(0, |c| c.stats().tables.exported)
    }
}

#[tokio::test]
async fn a_cache_goes_as_a_cacheable_and_its_updates_as_observe_calls() {
    let cache = pb::Cache::new(Count { count: 4 });
    let (server, client) = pair(CachesRef::new(TheCaches(cache.clone())).into()).await;
    let root = CachesViewRef::from_object_ref(client.root_ref());
    let copy = root.cache().await.unwrap();
    assert_eq!(copy.tag(), b"pbtest.Counter");
    assert_eq!(
        copy.state().0.root(),
        &Value::Dict(vec![(Value::from("count"), Value::Int(4))])
    );
    let again = root.cache().await.unwrap();
    assert_eq!(cache.observers(), 1);
    assert_eq!(root.bump().await.unwrap(), 5);
    // The update was queued before the answer, and the reader handles messages in order.
    assert_eq!(
        copy.observed(),
        vec![(
            "set".to_owned(),
            Dynamic(pb::twisted::Graph::new(Value::Tuple(vec![Value::Int(5)])))
        )]
    );
    assert_eq!(again.observed().len(), 1, "both sends share one copy");
    assert_eq!(root.exported().await.unwrap(), 1);
    drop((copy, again));
    until(|| server.stats().tables.exported == 0).await;
    cache.wait_for_observers(|n| n == 0).await;
}

#[pb::remote]
pub trait TwoAnswers {
    /// Answers the replica once `go1` is notified.
    async fn first(&self) -> pb::Replica<Count>;
    /// Answers the replica once `go2` is notified.
    async fn second(&self) -> pb::Replica<Count>;
    async fn exported(&self, caller: pb::Caller) -> usize;
}

struct TheTwoAnswers {
    cache: pb::Cache<Count>,
    go1: Arc<tokio::sync::Notify>,
    go2: Arc<tokio::sync::Notify>,
    entered: Arc<std::sync::atomic::AtomicUsize>,
}

impl TwoAnswers for TheTwoAnswers {
    async fn first(&self) -> pb::Replica<Count> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.go1.notified().await;
        self.cache.replica()
    }
    async fn second(&self) -> pb::Replica<Count> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.go2.notified().await;
        self.cache.replica()
    }
    async fn exported(&self, caller: pb::Caller) -> usize {
        caller.connection().map_or(0, |c| c.stats().tables.exported)
    }
}

/// A Twisted PB peer calls `first` without wanting an answer (`pbanswer=False`), then
/// `second`, which wants one; both answer the same cache's replica and wait before they do.
/// `first`'s answer is jellied first, with the Cacheable's state; `second`'s next, also with
/// it (no message carrying it has been queued yet). `second`'s answer is queued; `first`'s,
/// unwanted, is dropped and takes its send back. The state reached the peer with the message
/// that was sent, and the one send that stands is released when the copy goes.
#[tokio::test(start_paused = true)]
async fn a_cacheables_state_goes_with_the_message_queued_not_the_one_jellied_first() {
    let cache = pb::Cache::new(Count { count: 4 });
    let go1 = std::sync::Arc::new(tokio::sync::Notify::new());
    let go2 = std::sync::Arc::new(tokio::sync::Notify::new());
    let entered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let root_obj: pb::ObjectRef = TwoAnswersRef::new(TheTwoAnswers {
        cache: cache.clone(),
        go1: go1.clone(),
        go2: go2.clone(),
        entered: entered.clone(),
    })
    .into();
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = pb::twisted::accept_io(a, None, Some(root_obj), PbConfig::default());
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    let root: TwoAnswersRef = client.root();
    root.object_ref().send("first", &()).unwrap();
    let second = tokio::spawn({
        let root = root.clone();
        async move { root.second().await }
    });
    let mut turns = 0;
    while entered.load(std::sync::atomic::Ordering::SeqCst) < 2 && turns < 1000 {
        tokio::task::yield_now().await;
        turns += 1;
    }
    assert_eq!(entered.load(std::sync::atomic::Ordering::SeqCst), 2);
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    go1.notify_one();
    go2.notify_one();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), second)
        .await
        .expect("second answered")
        .unwrap();
    let replica = got.expect("a replica of the cache sent in an answer that was sent");
    assert_eq!(replica.get(), Count { count: 4 });
    // One send stands, the one that reached the peer; it goes once the replica does.
    assert_eq!(root.exported().await.unwrap(), 1);
    drop(replica);
    until(|| server.stats().tables.exported == 0).await;
    cache.wait_for_observers(|n| n == 0).await;
}

/// Two calls answer the same Cacheable, both jellied before either answer is queued: each
/// carries the state as it is jellied, and the one queued second goes as `["cached", luid]`
/// after all, so the state crosses once and both copies are one.
#[tokio::test(start_paused = true)]
async fn a_cacheable_answered_twice_at_once_crosses_with_its_state_once() {
    let cache = pb::Cache::new(Count { count: 4 });
    let (go1, go2) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let root_obj: ObjectRef = TwoAnswersRef::new(TheTwoAnswers {
        cache: cache.clone(),
        go1: go1.clone(),
        go2: go2.clone(),
        entered: entered.clone(),
    })
    .into();
    let (a, b, written) = common::tapped();
    let server = pb::twisted::accept_io(a, None, Some(root_obj), PbConfig::default());
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    let root = client.root_ref();
    let call = |method: &'static str| {
        let root = root.clone();
        tokio::spawn(async move {
            root.call::<(), pb::twisted::RemoteCache, String>(method, &())
                .await
        })
    };
    let (first, second) = (call("first"), call("second"));
    until(|| entered.load(Ordering::SeqCst) == 2).await;
    go1.notify_one();
    go2.notify_one();
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(first.observed().len(), second.observed().len());
    let tag = b"pbtest.Counter";
    let states = common::occurrences(&written.lock().unwrap(), tag);
    assert_eq!(states, 1, "the Cacheable's state crossed {states} times");
    // Two receipts of one export, each released once.
    assert_eq!(server.stats().tables.exported, 1);
    drop((first, second));
    until(|| server.stats().tables.exported == 0).await;
    cache.wait_for_observers(|n| n == 0).await;
}

#[pb::remote]
pub trait Updating {
    /// Waits, then answers the cache's replica, having started a task that updates it.
    async fn replica(&self) -> pb::Replica<Count>;
}

struct TheUpdating(pb::Cache<Count>);

impl Updating for TheUpdating {
    async fn replica(&self) -> pb::Replica<Count> {
        // In a task of its own: answered after its first poll.
        tokio::task::yield_now().await;
        let cache = self.0.clone();
        // Runs once this handler's answer is jellied, before it is queued.
        tokio::spawn(async move { cache.update(CountUpdate::Set(5)).unwrap() });
        self.0.replica()
    }
}

/// An update made after a Cacheable's state was jellied for an answer, but before that answer
/// is queued, reaches the copy: it is not sent ahead of the state (the peer would not know
/// the luid yet) nor lost.
#[tokio::test(start_paused = true)]
async fn an_update_between_a_cacheables_jelly_and_its_sending_reaches_the_copy() {
    let cache = pb::Cache::new(Count { count: 4 });
    let (_server, client) = pair(UpdatingRef::new(TheUpdating(cache.clone())).into()).await;
    let root: UpdatingRef = client.root();
    let replica = root.replica().await.unwrap();
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        replica.wait_for(|c| c.count == 5),
    )
    .await;
    assert!(
        matches!(got, Ok(Ok(_))),
        "the copy holds {:?} and never saw the update: {got:?}",
        replica.get()
    );
    assert_eq!(cache.get().count, 5);
}

#[pb::remote]
pub trait Flooding {
    /// Waits, then answers the cache's replica, having started a task that updates it more
    /// often than updates are held for a copy not made yet.
    async fn replica(&self) -> pb::Replica<Count>;
}

struct TheFlooding(pb::Cache<Count>);

impl Flooding for TheFlooding {
    async fn replica(&self) -> pb::Replica<Count> {
        tokio::task::yield_now().await;
        let cache = self.0.clone();
        tokio::spawn(async move {
            for n in 0..5000 {
                cache.update(CountUpdate::Set(n)).unwrap();
            }
        });
        self.0.replica()
    }
}

/// Updates held for a copy whose state has not left yet are bounded: past 4 096 the
/// connection is cut (`CacheBehind`), not left to grow or to a copy that stays behind
/// unknowing.
#[tokio::test(start_paused = true)]
async fn updates_held_for_a_copy_not_made_yet_are_bounded() {
    let cache = pb::Cache::new(Count { count: 4 });
    let (server, client) = pair(FloodingRef::new(TheFlooding(cache.clone())).into()).await;
    let root: FloodingRef = client.root();
    // The answer may leave before the cut (which runs in a task of its own); then its copy
    // learns that its owner is gone.
    if let Ok(replica) = root.replica().await {
        replica.disconnected().await;
    }
    server.closed().await;
    assert!(
        matches!(server.close_reason(), Some(pb::CloseReason::CacheBehind(why)) if why.contains("4096")),
        "{:?}",
        server.close_reason()
    );
}

/// The server's view of a client object that takes a replica.
#[pb::remote]
pub trait TakerOut {
    async fn take(&self, copy: pb::Replica<Count>);
}

/// The client's: it keeps the copy as Twisted would.
#[pb::remote]
pub trait TakerIn {
    async fn take(&self, copy: pb::twisted::RemoteCache);
}

struct TheTaker(Arc<std::sync::Mutex<Option<pb::twisted::RemoteCache>>>);

impl TakerIn for TheTaker {
    async fn take(&self, copy: pb::twisted::RemoteCache) {
        *self.0.lock().unwrap() = Some(copy);
    }
}

#[pb::remote]
pub trait Handing {
    /// Waits, then answers the cache's replica (jellied as it is), having started a task that
    /// updates the cache and then hands `taker` the replica.
    async fn replica(&self, taker: ObjectRef) -> pb::Replica<Count>;
}

#[pb::remote]
pub trait HandingView {
    async fn replica(&self, taker: ObjectRef) -> pb::twisted::RemoteCache;
}

struct TheHanding(pb::Cache<Count>);

impl Handing for TheHanding {
    async fn replica(&self, taker: ObjectRef) -> pb::Replica<Count> {
        tokio::task::yield_now().await;
        let cache = self.0.clone();
        let taker = TakerOutRef::from_object_ref(taker);
        tokio::spawn(async move {
            cache.update(CountUpdate::Set(5)).unwrap();
            taker.take(cache.replica()).await.unwrap();
        });
        self.0.replica()
    }
}

/// The state that leaves first is newer than the update held for the copy (both made before
/// it left): the update is in the state already and does not follow it; the answer jellied
/// earlier, with the older state, goes as `["cached", luid]`.
#[tokio::test(start_paused = true)]
async fn an_update_the_state_that_leaves_first_includes_does_not_follow_it() {
    let cache = pb::Cache::new(Count { count: 4 });
    let (server, client) = pair(HandingRef::new(TheHanding(cache.clone())).into()).await;
    let taken = Arc::new(std::sync::Mutex::new(None));
    let taker: ObjectRef = TakerInRef::new(TheTaker(taken.clone())).into();
    let root = HandingViewRef::from_object_ref(client.root_ref());
    let answered = root.replica(taker).await.unwrap();
    until(|| taken.lock().unwrap().is_some()).await;
    let handed = taken.lock().unwrap().take().unwrap();
    let five = Value::Dict(vec![(Value::from("count"), Value::Int(5))]);
    // One copy, at the newer state, with no update to apply.
    assert_eq!(handed.state().0.root(), &five);
    assert_eq!(answered.state().0.root(), &five);
    assert_eq!(answered.observed().len(), 0);
    drop((answered, handed));
    until(|| server.stats().tables.exported == 0).await;
}

/// A cache of text, whose updates can be any size.
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
        let TextUpdate::Set(t) = update;
        self.text = t.clone();
    }
    fn twisted_tag() -> &'static str {
        "pbtest.Text"
    }
}

#[pb::remote]
pub trait TextCaches {
    async fn cache(&self) -> pb::Replica<Text>;
}

#[pb::remote]
pub trait TextCachesView {
    async fn cache(&self) -> pb::twisted::RemoteCache;
}

struct TheTextCaches(pb::Cache<Text>);

impl TextCaches for TheTextCaches {
    async fn cache(&self) -> pb::Replica<Text> {
        self.0.replica()
    }
}

/// An update the peer would refuse (a string over Banana's 640 KiB `SIZE_LIMIT`) does not
/// vanish with the copy left behind for good: the connection is cut (`CacheBehind`), as over
/// pb's own dialect.
#[tokio::test(start_paused = true)]
async fn a_cache_update_the_observer_would_refuse_cuts_the_connection() {
    let cache = pb::Cache::new(Text { text: "a".into() });
    let (server, client) = pair(TextCachesRef::new(TheTextCaches(cache.clone())).into()).await;
    let root = TextCachesViewRef::from_object_ref(client.root_ref());
    let copy = root.cache().await.unwrap();
    let big = "x".repeat(pb::proto::banana::SIZE_LIMIT + 1);
    cache.update(TextUpdate::Set(big)).unwrap();
    server.closed().await;
    assert!(
        matches!(server.close_reason(), Some(pb::CloseReason::CacheBehind(_))),
        "{:?}",
        server.close_reason()
    );
    client.closed().await;
    assert!(copy.observed().is_empty());
}

#[pb::remote]
pub trait Twice {
    async fn twice(&self) -> (pb::Replica<Count>, pb::Replica<Count>);
}

#[pb::remote]
pub trait TwiceView {
    async fn twice(&self) -> (pb::twisted::RemoteCache, pb::twisted::RemoteCache);
}

struct TheTwice(pb::Cache<Count>);

impl Twice for TheTwice {
    async fn twice(&self) -> (pb::Replica<Count>, pb::Replica<Count>) {
        (self.0.replica(), self.0.replica())
    }
}

/// A Cacheable twice in one value goes with its state once, then as `["cached", luid]`: the
/// peer reads a message in order.
#[tokio::test]
async fn a_cacheable_twice_in_one_value_carries_its_state_once() {
    let cache = pb::Cache::new(Count { count: 4 });
    let (a, b, written) = common::tapped();
    let server = pb::twisted::accept_io(
        a,
        None,
        Some(TwiceRef::new(TheTwice(cache.clone())).into()),
        PbConfig::default(),
    );
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    let root = TwiceViewRef::from_object_ref(client.root_ref());
    let (one, two) = root.twice().await.unwrap();
    assert_eq!(one.state().0.root(), two.state().0.root());
    let tag = b"pbtest.Counter";
    let states = common::occurrences(&written.lock().unwrap(), tag);
    assert_eq!(states, 1);
    assert_eq!(server.stats().tables.exported, 1);
    drop((one, two));
    until(|| server.stats().tables.exported == 0).await;
    cache.wait_for_observers(|n| n == 0).await;
}

/// A cache whose state holds a reference.
#[pb::copyable]
#[derive(Debug, Clone)]
pub struct Holding {
    pinger: PingerRef,
}

impl pb::CacheState for Holding {
    type Update = ();
    fn apply(&mut self, _update: &()) {}
    fn twisted_tag() -> &'static str {
        "pbtest.Holding"
    }
}

#[pb::remote]
pub trait HoldingCaches {
    async fn cache(&self) -> pb::Replica<Holding>;
}

/// The peer's view: a copy as Twisted keeps it (pb's replicas take no references in a
/// state).
#[pb::remote]
pub trait HoldingCachesView {
    async fn cache(&self) -> pb::twisted::RemoteCache;
}

struct TheHoldingCaches(pb::Cache<Holding>);

impl HoldingCaches for TheHoldingCaches {
    async fn cache(&self) -> pb::Replica<Holding> {
        self.0.replica()
    }
}

/// A Cacheable sent again goes as `["cached", luid]`, without its state: the references in
/// that state are not sent again, so they are not counted again either (or they would stay
/// exported for good, the peer never having heard of them).
#[tokio::test]
async fn a_cacheable_sent_again_does_not_export_what_its_state_holds_again() {
    let cache = pb::Cache::new(Holding {
        pinger: PingerRef::new(ThePinger),
    });
    let (server, client) = pair(HoldingCachesRef::new(TheHoldingCaches(cache)).into()).await;
    let root = HoldingCachesViewRef::from_object_ref(client.root_ref());
    let first = root.cache().await.unwrap();
    let again = root.cache().await.unwrap();
    // The copy keeps its state as a graph: the pinger it named was released at once, and
    // only the cache stays exported.
    until(|| server.stats().tables.exported == 1).await;
    drop((first, again));
    until(|| server.stats().tables.exported == 0).await;
}

#[pb::remote]
pub trait Hostile {
    async fn boom(&self) -> i64;
    async fn take(&self, s: String) -> usize;
    async fn picky(&self, p: Picky) -> u32;
}

struct TheHostile;

impl Hostile for TheHostile {
    async fn boom(&self) -> i64 {
        panic!("the handler broke")
    }
    async fn take(&self, s: String) -> usize {
        s.len()
    }
    async fn picky(&self, p: Picky) -> u32 {
        p.0
    }
}

/// A number whose `Deserialize` is user code that panics on 13: the callee runs it as it
/// decodes the arguments, before the handler's future exists.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Picky(pub u32);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        assert!(v != 13, "Picky refuses 13");
        Ok(Picky(v))
    }
}

/// A panic while the arguments decode fails that call alone, as a handler's panic does.
#[tokio::test(start_paused = true)]
async fn a_panic_while_decoding_arguments_fails_that_call_only() {
    let (_server, client) = pair(HostileRef::new(TheHostile).into()).await;
    let root: HostileRef = client.root();
    let minute = std::time::Duration::from_secs(60);
    let panicked = tokio::time::timeout(minute, root.picky(Picky(13))).await;
    assert!(
        matches!(&panicked, Ok(Err(CallError::Internal(_)))),
        "{panicked:?}"
    );
    assert_eq!(root.picky(Picky(7)).await, Ok(7));
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_panic_or_an_oversized_argument_fails_that_call_only() {
    let (_server, client) = pair(HostileRef::new(TheHostile).into()).await;
    let root: HostileRef = client.root();
    let panicked = root.boom().await;
    assert!(
        matches!(&panicked, Err(CallError::Internal(m)) if m.contains("twisted.spread.pb.Error")),
        "{panicked:?}"
    );
    // Over Twisted's 640 KiB string limit: refused here, before anything is sent.
    let big = "x".repeat(pb::proto::banana::SIZE_LIMIT + 1);
    assert!(matches!(root.take(big).await, Err(CallError::Encode(_))));
    assert_eq!(root.take("ok".to_owned()).await.unwrap(), 2);
    assert!(!client.is_closed());
}

#[pb::remote]
pub trait Oversized {
    /// A pinger, and a string one byte over Banana's 640 KiB: an answer that cannot be sent.
    async fn pinger_and_too_much(&self) -> (PingerRef, bytes::Bytes);
    async fn pinger(&self) -> PingerRef;
    async fn take(&self, p: PingerRef, s: String) -> usize;
}

struct TheOversized;

impl Oversized for TheOversized {
    async fn pinger_and_too_much(&self) -> (PingerRef, bytes::Bytes) {
        let too_much = vec![b'x'; pb::proto::banana::SIZE_LIMIT + 1];
        (PingerRef::new(ThePinger), too_much.into())
    }
    async fn pinger(&self) -> PingerRef {
        PingerRef::new(ThePinger)
    }
    async fn take(&self, _: PingerRef, s: String) -> usize {
        s.len()
    }
}

#[tokio::test]
async fn a_value_that_cannot_be_sent_takes_back_the_references_it_exported() {
    // One export at a time: a leaked one would refuse every later reference.
    let config = PbConfig::default().max_exports(1);
    let (server, client) = pair_with(OversizedRef::new(TheOversized).into(), config, config).await;
    let root: OversizedRef = client.root();
    let answer = root.pinger_and_too_much().await;
    assert!(
        matches!(&answer, Err(CallError::Internal(m)) if m.contains("size limit")),
        "{answer:?}"
    );
    assert_eq!(server.stats().tables.exported, 0);
    let pinger = root.pinger().await.unwrap();
    assert_eq!(pinger.ping(5).await.unwrap(), 5);
    drop(pinger);
    until(|| server.stats().tables.exported == 0).await;
    // The same for a call's arguments, on the calling side.
    let big = "x".repeat(pb::proto::banana::SIZE_LIMIT + 1);
    let call = root.take(PingerRef::new(ThePinger), big).await;
    assert!(matches!(call, Err(CallError::Encode(_))), "{call:?}");
    assert_eq!(client.stats().tables.exported, 0);
    assert_eq!(
        root.take(PingerRef::new(ThePinger), "ok".into())
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn the_result_of_a_call_without_answer_is_not_exported() {
    // One export at a time: a leaked one would refuse every later reference.
    let one = PbConfig::default().max_exports(1);
    let (server, client) = pair_with(RootRef::new(TheRoot).into(), one, PbConfig::default()).await;
    let root: RootRef = client.root();
    // `counter` returns a new object to a caller that wants no answer (Twisted's
    // `pbanswer=False`): the peer never hears of it, so it must not stay exported.
    root.object_ref().send("counter", &(5i64,)).unwrap();
    // Calls run in order: once this answers, the one before has ended.
    assert_eq!(root.exported().await.unwrap(), 0);
    assert_eq!(server.stats().tables.exported, 0);
    assert_eq!(root.counter(1).await.unwrap().value().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_given_up_before_it_is_sent_takes_back_its_arguments_exports() {
    let one = PbConfig::default().max_exports(1);
    let (_server, client) = pair_with(RootRef::new(TheRoot).into(), PbConfig::default(), one).await;
    let root: RootRef = client.root();
    let pinger = || ObjectRef::from(PingerRef::new(ThePinger));
    // Its deadline has passed before it leaves, after its arguments were jellied.
    let expired =
        pb::deadline::with_timeout(std::time::Duration::ZERO, root.give_back(pinger())).await;
    assert!(
        matches!(expired, Err(CallError::DeadlineExceeded)),
        "{expired:?}"
    );
    assert_eq!(client.stats().tables.exported, 0);
    // Sent without an answer to a method name over Banana's limit: refused before it leaves.
    let long = "m".repeat(pb::proto::banana::SIZE_LIMIT + 1);
    assert!(root.object_ref().send(&long, &(pinger(),)).is_err());
    assert_eq!(client.stats().tables.exported, 0);
    assert!(root.give_back(pinger()).await.is_ok());
}

#[tokio::test]
async fn references_over_the_imports_limit_are_released_too() {
    let one = PbConfig::default().max_imports(1);
    let (_server, client) = pair_with(RootRef::new(TheRoot).into(), one, PbConfig::default()).await;
    let root: RootRef = client.root();
    let refused = root
        .two(PingerRef::new(ThePinger), PingerRef::new(ThePinger))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // Our next call leaves after the server's releases reached us.
    assert_eq!(root.add(1, 2).await.unwrap(), 3);
    assert_eq!(
        client.stats().tables.exported,
        0,
        "a reference was never released"
    );
}

#[pb::remote]
pub trait Forwarder {
    /// The root of the connection it dialed, fetched twice, handed on.
    async fn upstream_twice(&self) -> (RootRef, RootRef, bool);
}

struct TheForwarder(Connection);

impl Forwarder for TheForwarder {
    async fn upstream_twice(&self) -> (RootRef, RootRef, bool) {
        let a: RootRef = self.0.root();
        let b: RootRef = self.0.root();
        let equal = a.object_ref() == b.object_ref();
        (a, b, equal)
    }
}

/// B dials A over the PB dialect and serves C over pb's own protocol: A's root, forwarded by
/// B to C. Returns (A's side of A–B, B's side of A–B, B's side of B–C, C's side of B–C).
async fn forwarding() -> (Connection, Connection, Connection, Connection) {
    let (a_side, b_to_a) = pair(RootRef::new(TheRoot).into()).await;
    let forwarder = ForwarderRef::new(TheForwarder(b_to_a.clone()));
    let (b_side, c_to_b) = common::memory_pair(forwarder).await;
    (a_side, b_to_a, b_side, c_to_b)
}

#[tokio::test(start_paused = true)]
async fn the_peers_root_fetched_twice_and_forwarded_is_one_export() {
    let (_a_side, _b_to_a, b_side, c_to_b) = forwarding().await;
    let f: ForwarderRef = c_to_b.root();
    let (x, y, equal_at_b) = f.upstream_twice().await.unwrap();
    assert!(equal_at_b);
    assert!(x.object_ref() == y.object_ref(), "{x:?} and {y:?} at C");
    assert_eq!(b_side.stats().tables.exported, 1);
}

#[tokio::test(start_paused = true)]
async fn forwards_are_revoked_when_the_pb_dialect_link_goes() {
    let (a_side, b_to_a, _b_side, c_to_b) = forwarding().await;
    let f: ForwarderRef = c_to_b.root();
    let (x, _y, _) = f.upstream_twice().await.unwrap();
    a_side.close().await;
    b_to_a.closed().await;
    tokio::time::timeout(std::time::Duration::from_secs(30), x.disconnected())
        .await
        .expect("C's forward of A's root is revoked once B's link to A is gone");
}

#[tokio::test]
async fn a_peer_breaking_the_protocol_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let server = pb::twisted::accept_io(
        a,
        None,
        Some(RootRef::new(TheRoot).into()),
        PbConfig::default(),
    );
    let mut offer = [0u8; 12];
    b.read_exact(&mut offer).await.unwrap();
    assert_eq!(&offer, b"\x02\x80\x02\x82pb\x04\x82none");
    // The dialect, then a string header over 640 KiB.
    b.write_all(b"\x02\x82pb").await.unwrap();
    b.write_all(&[0x80, 0x80, 0x80, 0x01, 0x82]).await.unwrap();
    server.closed().await;
    assert!(matches!(
        server.close_reason(),
        Some(pb::CloseReason::Protocol(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_chooses_a_dialect_is_closed_at_the_deadline() {
    let (a, _b) = tokio::io::duplex(1 << 16);
    let config = PbConfig::default().handshake_timeout(std::time::Duration::from_secs(3));
    let server = pb::twisted::accept_io(a, None, Some(RootRef::new(TheRoot).into()), config);
    let started = tokio::time::Instant::now();
    server.closed().await;
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(3));
    assert!(matches!(
        server.close_reason(),
        Some(pb::CloseReason::IdleTimeout(_))
    ));
}

#[pb::remote]
pub trait Gate {
    async fn wait(&self) -> u32;
    async fn hold(&self, data: Vec<u8>) -> u32;
}

struct TheGate {
    running: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<tokio::sync::Semaphore>,
}

impl Gate for TheGate {
    async fn wait(&self) -> u32 {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let _permit = self.open.acquire().await.unwrap();
        self.running.fetch_sub(1, Ordering::SeqCst);
        1
    }

    async fn hold(&self, data: Vec<u8>) -> u32 {
        self.wait().await;
        data.len() as u32
    }
}

/// A gate served with `config` on one end of a pipe, and its client's stub on the other; the
/// handlers running now, the most that ran at once, and the semaphore that lets them end.
struct Gated {
    server: Connection,
    root: GateRef,
    running: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<tokio::sync::Semaphore>,
    _client: Connection,
}

async fn gated(config: PbConfig) -> Gated {
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = GateRef::new(TheGate {
        running: running.clone(),
        most: most.clone(),
        open: open.clone(),
    });
    let (a, b) = tokio::io::duplex(4 << 20);
    let server = pb::twisted::accept_io(a, None, Some(gate.into()), config);
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    Gated {
        server,
        root: client.root(),
        running,
        most,
        open,
        _client: client,
    }
}

impl Gated {
    /// Once `n` handlers run, checks that no more calls were read, lets them all end, and
    /// returns the calls' answers.
    async fn only_run<T, E: std::fmt::Debug>(
        &self,
        n: usize,
        calls: Vec<tokio::task::JoinHandle<Result<T, CallError<E>>>>,
    ) -> Vec<T> {
        until(|| self.running.load(Ordering::SeqCst) == n).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            self.server.stats().tables.in_flight_calls,
            n,
            "the rest are not read"
        );
        self.open.add_permits(calls.len());
        let mut answers = Vec::new();
        for c in calls {
            answers.push(c.await.unwrap().expect("every call is answered"));
        }
        assert_eq!(self.most.load(Ordering::SeqCst), n);
        answers
    }
}

#[tokio::test]
async fn calls_over_the_in_flight_cap_wait_unread_then_run() {
    let g = gated(PbConfig::default().max_in_flight_calls(2)).await;
    let calls = (0..6)
        .map(|_| {
            let root = g.root.clone();
            tokio::spawn(async move { root.wait().await })
        })
        .collect();
    assert_eq!(g.only_run(2, calls).await, [1; 6]);
}

#[tokio::test]
async fn calls_over_the_byte_cap_wait_unread_then_run() {
    let g = gated(PbConfig::default().max_call_bytes(256 * 1024)).await;
    // Calls of 60 000 bytes: four hold 240 000 bytes, under the cap, so a fifth is read, and
    // then no more until one ends.
    let calls = (0..12)
        .map(|_| {
            let root = g.root.clone();
            tokio::spawn(async move { root.hold(vec![7; 60_000]).await })
        })
        .collect();
    assert_eq!(g.only_run(5, calls).await, [60_000; 12]);
}

#[tokio::test]
async fn a_server_caps_connections_per_address_and_frees_the_slot_on_close() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = PbConfig::default().max_connections_per_address(2);
    let root: ObjectRef = RootRef::new(TheRoot).into();
    tokio::spawn(pb::twisted::serve(listener, root, config));
    let first = pb::twisted::connect(addr, PbConfig::default())
        .await
        .unwrap();
    let _second = pb::twisted::connect(addr, PbConfig::default())
        .await
        .unwrap();
    // The third from the same address is closed at once: no dialect offer ever comes.
    assert!(
        pb::twisted::connect(addr, PbConfig::default())
            .await
            .is_err()
    );
    first.close().await;
    // Its slot is free once the server has seen it close.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = pb::twisted::connect(addr, PbConfig::default()).await {
            again = Some(c);
            break;
        }
        tokio::task::yield_now().await;
    }
    let again: RootRef = again.expect("a slot frees up").root();
    assert_eq!(again.add(2, 2).await.unwrap(), 4);
}

#[tokio::test]
async fn a_twisted_cacheable_arrives_as_a_live_replica() {
    let cache = pb::Cache::new(Count { count: 4 });
    let (server, client) = pair(CachesRef::new(TheCaches(cache.clone())).into()).await;
    // The same interface on both ends: the client's `Replica<Count>` follows `observe_set`.
    let root = CachesRef::from_object_ref(client.root_ref());
    let replica = root.cache().await.unwrap();
    assert!(!replica.is_local());
    assert_eq!(replica.get(), Count { count: 4 });
    let again = root.cache().await.unwrap();
    assert_eq!(root.bump().await.unwrap(), 5);
    assert_eq!(root.bump().await.unwrap(), 6);
    // The updates came before the answers, in order.
    assert_eq!((replica.get(), replica.version()), (Count { count: 6 }, 2));
    assert_eq!(
        again.get(),
        Count { count: 6 },
        "both sends share one replica"
    );
    assert!(replica.error().is_none());
    drop((replica, again));
    until(|| server.stats().tables.exported == 0).await;
    cache.wait_for_observers(|n| n == 0).await;
}

#[tokio::test]
async fn cacheable_copies_count_against_the_imports_limit() {
    let cache = pb::Cache::new(Count { count: 1 });
    let other = pb::Cache::new(Count { count: 2 });
    let (a, b) = tokio::io::duplex(1 << 20);
    let _server = pb::twisted::accept_io(
        a,
        None,
        Some(TwoCachesRef::new(TheTwoCaches(cache, other)).into()),
        PbConfig::default(),
    );
    let client = pb::twisted::connect_io(b, None, PbConfig::default().max_imports(1))
        .await
        .unwrap();
    let root: TwoCachesRef = client.root();
    let first = root.first().await.unwrap();
    assert_eq!(first.get(), Count { count: 1 });
    // A second copy while the first is held is over the limit: that answer fails alone.
    assert!(
        matches!(root.second().await, Err(CallError::BadAnswer(m)) if m.contains("Cacheable copies"))
    );
    assert_eq!(root.first().await.unwrap().get(), Count { count: 1 });
}

#[pb::remote]
pub trait TwoCaches {
    async fn first(&self) -> pb::Replica<Count>;
    async fn second(&self) -> pb::Replica<Count>;
}

struct TheTwoCaches(pb::Cache<Count>, pb::Cache<Count>);

impl TwoCaches for TheTwoCaches {
    async fn first(&self) -> pb::Replica<Count> {
        self.0.replica()
    }
    async fn second(&self) -> pb::Replica<Count> {
        self.1.replica()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_in_the_order_they_were_sent() {
    let (_server, client) = pair(RootRef::new(TheRoot).into()).await;
    let root: RootRef = client.root();
    let c = root.counter(0).await.unwrap();
    // Calls without an answer, then one with: a handler that does not wait finishes before
    // the next message is read, as in Twisted.
    for round in 1..=20 {
        for _ in 0..100 {
            c.object_ref().send("increment", &()).unwrap();
        }
        assert_eq!(c.value().await.unwrap(), round * 100);
    }
}

/// The dialect choice, the version and `add(2, 3)` on `root`, in the pb dialect, as a Twisted
/// client writes them.
const CHOOSE_PB: &[u8] = b"\x02\x82pb\x02\x80\x13\x87\x06\x81";
const ADD_2_3: &[u8] = b"\x07\x80\x1a\x87\x01\x81\x04\x82root\x03\x82add\x01\x81\x03\x80\x0b\x87\x02\x81\x03\x81\x01\x80\x05\x87";
/// `["answer", 1, 5]`.
const ANSWER_5: &[u8] = b"\x03\x80\x1b\x87\x01\x81\x05\x81";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_connection_has_its_root_before_its_first_byte_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The root is made while the client's call is already on the wire, and made slowly:
    // nothing may be read before it is in place. (Before, the reader ran first, and a call
    // that arrived at once was refused with "Invalid Object ID".)
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (written, wait_written) = std::sync::mpsc::channel::<()>();
    let wait_written = std::sync::Mutex::new(wait_written);
    let read_early = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let early = read_early.clone();
    tokio::spawn(pb::twisted::serve_with(
        listener,
        move |conn: &Connection| {
            let _ = wait_written.lock().unwrap().recv();
            // Every chance for a reader, were one running, to read the call.
            for _ in 0..20_000 {
                if conn.stats().bytes_in > 0 {
                    early.store(true, Ordering::SeqCst);
                    break;
                }
                std::thread::yield_now();
            }
            RootRef::new(TheRoot).into()
        },
        PbConfig::default(),
    ));
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(&[CHOOSE_PB, ADD_2_3].concat())
        .await
        .unwrap();
    written.send(()).unwrap();
    // The dialect offer, the version, then the answer.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(ANSWER_5) && !got.windows(17).any(|w| w == b"Invalid Object ID") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        !read_early.load(Ordering::SeqCst),
        "read before the root was set"
    );
    assert!(got.ends_with(ANSWER_5), "{got:?}");
}

#[pb::remote]
pub trait Texts {
    /// A stream of `n` texts of `len` bytes, the `i`th made of the letter `a + i % 26`, all
    /// ready before it is returned.
    async fn texts(&self, n: u32, len: usize) -> Result<pb::stream::Stream<String>, ()>;
}

struct TheTexts;

impl Texts for TheTexts {
    async fn texts(&self, n: u32, len: usize) -> Result<pb::stream::Stream<String>, ()> {
        let (tx, rx) = pb::stream::channel(n as usize);
        for i in 0..n {
            let letter = char::from(b'a' + (i % 26) as u8);
            tx.send(letter.to_string().repeat(len))
                .await
                .map_err(|_| ())?;
        }
        Ok(rx)
    }
}

/// A stream pulled over the PB dialect, which has no frames: a batch is the ready items up to
/// the pull's count, whatever their size, none put back to fit a frame.
#[tokio::test]
async fn a_stream_is_pulled_over_the_pb_dialect_in_whole_batches() {
    let (_server, client) = pair(TextsRef::new(TheTexts).into()).await;
    let root: TextsRef = client.root();
    // 20 texts of 100 KiB: 800 KiB in a pull of 8.
    let mut texts = root.texts(20, 100 * 1024).await.unwrap();
    let mut i = 0u32;
    while let Some(text) = texts.next().await {
        let text = text.unwrap();
        let letter = char::from(b'a' + (i % 26) as u8);
        assert_eq!(text, letter.to_string().repeat(100 * 1024), "text {i}");
        if i.is_multiple_of(8) {
            // The rest of its batch: 8 per pull, 4 in the last.
            assert_eq!(texts.buffered(), (20 - i as usize).min(8) - 1, "text {i}");
        }
        i += 1;
    }
    assert_eq!(i, 20);
}
