//! Hostile values over the PB dialect: a few bytes that name a shared part of a value many
//! times (Jelly's `dereference`), which Python shares and a Rust value must copy, and an error
//! answer whose value would be written out as text once per name of its shared parts.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use pb::proto::banana::{BananaCodec, BananaConfig, Dialect, Element};
use pb::proto::jelly::{JellyConfig, to_sexp};
use pb::twisted::{Dynamic, Failure, Graph, PbConfig, Value};
use pb::{CallError, Connection, ObjectRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

#[pb::remote]
pub trait Sink {
    /// The total length of `xs`.
    async fn take(&self, xs: Vec<String>) -> u64;
    /// The total length of the `xs` given.
    async fn take_some(&self, xs: Vec<Option<String>>) -> u64;
}

/// Counts the bytes its handler received.
struct TheSink(Arc<AtomicU64>);

impl Sink for TheSink {
    async fn take(&self, xs: Vec<String>) -> u64 {
        let total: u64 = xs.iter().map(|s| s.len() as u64).sum();
        self.0.fetch_add(total, Ordering::SeqCst);
        total
    }
    async fn take_some(&self, xs: Vec<Option<String>>) -> u64 {
        xs.iter().flatten().map(|s| s.len() as u64).sum()
    }
}

/// A PB server of `root` with `config` and a client, over an in-memory pipe.
async fn pair(root: ObjectRef, config: PbConfig) -> (Connection, Connection) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = pb::twisted::accept_io(a, None, Some(root), config);
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    (server, client)
}

/// A list that names one string of `len` bytes `times` times: one copy of the string on the
/// wire, `times` in the decoded value.
fn named_many_times(len: usize, times: usize) -> Dynamic {
    let mut g = Graph::default();
    let s = g.add_node(Value::Str("x".repeat(len)));
    g.set_root(Value::List(vec![Value::Shared(s); times]));
    Dynamic(g)
}

#[tokio::test]
async fn a_part_named_many_times_is_copied_only_up_to_max_copied_size() {
    let received = Arc::new(AtomicU64::new(0));
    // A server that allows 1 MiB of copies.
    let config = PbConfig::default().jelly(JellyConfig::default().max_copied_size(1 << 20));
    let (_server, client) = pair(SinkRef::new(TheSink(received.clone())).into(), config).await;
    let take = |value: Dynamic| {
        let root = client.root_ref();
        async move { root.call::<_, u64, Failure>("take", &(value,)).await }
    };
    // 64 KiB named 10 times: 9 copies, within the limit.
    assert_eq!(
        take(named_many_times(64 * 1024, 10)).await,
        Ok(10 * 64 * 1024)
    );
    // Named 20 times: 19 copies, over it. The call fails alone, its handler never runs.
    let before = received.load(Ordering::SeqCst);
    match take(named_many_times(64 * 1024, 20)).await {
        Err(CallError::Remote(f)) => assert!(f.value.contains("max_copied_size"), "{f:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(received.load(Ordering::SeqCst), before);
    assert_eq!(take(named_many_times(1, 3)).await, Ok(3));
    // Inside an `Option` each copy counts once too (it counted twice: 10 names were refused).
    let some = client
        .root_ref()
        .call::<_, u64, Failure>("take_some", &(named_many_times(64 * 1024, 10),))
        .await;
    assert_eq!(some, Ok(10 * 64 * 1024));
}

#[tokio::test]
async fn ninety_kilobytes_that_name_a_string_4096_times_are_refused_by_default() {
    let received = Arc::new(AtomicU64::new(0));
    let (_server, client) = pair(
        SinkRef::new(TheSink(received.clone())).into(),
        PbConfig::default(),
    )
    .await;
    // 64 KiB named 4 096 times: 256 MiB decoded from about 90 KB, over the default 64 MiB.
    let sent = client.stats().bytes_out;
    let r = client
        .root_ref()
        .call::<_, u64, Failure>("take", &(named_many_times(64 * 1024, 4096),))
        .await;
    assert!(client.stats().bytes_out - sent < 100_000);
    match r {
        Err(CallError::Remote(f)) => assert!(f.value.contains("max_copied_size"), "{f:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

/// The next element `codec` decodes from `io`.
async fn next(codec: &mut BananaCodec, io: &mut DuplexStream, buf: &mut BytesMut) -> Element {
    loop {
        if let Some(e) = codec.decode(buf).unwrap() {
            return e;
        }
        assert!(io.read_buf(buf).await.unwrap() > 0, "peer closed");
    }
}

/// A Twisted PB server written by hand: the dialect handshake, the version, then it answers
/// the first `message` with `[kind, id, value]` (`kind` "answer" or "error") and waits for
/// the client to go.
async fn answering_server(mut io: DuplexStream, kind: &'static str, value: Element) {
    let mut dec = BananaCodec::new(BananaConfig::default());
    let mut enc = BananaCodec::new(BananaConfig::default());
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    enc.encode(&Dialect::offer(), &mut out).unwrap();
    io.write_all(&out).await.unwrap();
    let choice = next(&mut dec, &mut io, &mut buf).await;
    assert_eq!(choice.as_bytes().map(|b| &b[..]), Some(&b"pb"[..]));
    dec.set_dialect(Dialect::Pb);
    enc.set_dialect(Dialect::Pb);
    out.clear();
    let version = Element::List(vec!["version".into(), 6.into()]);
    enc.encode(&version, &mut out).unwrap();
    io.write_all(&out).await.unwrap();
    loop {
        let m = next(&mut dec, &mut io, &mut buf).await;
        let items = m.as_list().unwrap().to_vec();
        if items[0].as_bytes().map(|b| &b[..]) == Some(&b"message"[..]) {
            let id = items[1].as_i64().unwrap();
            out.clear();
            let answer = Element::List(vec![kind.into(), id.into(), value]);
            enc.encode(&answer, &mut out).unwrap();
            io.write_all(&out).await.unwrap();
            // Until the client goes.
            let _ = io.read_buf(&mut buf).await;
            return;
        }
    }
}

/// Nine levels of lists, each naming the level below `fanout` times: `fanout`⁹ integers when
/// written out, a few hundred bytes on the wire.
fn wide_dag(fanout: usize) -> Element {
    let mut g = Graph::default();
    let mut below = g.add_node(Value::List(vec![Value::Int(1); fanout]));
    for _ in 0..8 {
        below = g.add_node(Value::List(vec![Value::Shared(below); fanout]));
    }
    g.set_root(Value::List(vec![Value::Shared(below); fanout]));
    to_sexp(&g, &JellyConfig::default()).unwrap()
}

#[tokio::test]
async fn an_error_answer_that_names_its_parts_many_times_is_cut_to_16_kib_of_text() {
    for fanout in [3usize, 10] {
        let (a, b) = tokio::io::duplex(1 << 20);
        let value = wide_dag(fanout);
        let mut wire = BytesMut::new();
        let mut enc = BananaCodec::new(BananaConfig::default());
        enc.set_dialect(Dialect::Pb);
        enc.encode(&value, &mut wire).unwrap();
        assert!(wire.len() < 1000, "a small answer: {} bytes", wire.len());
        let server = tokio::spawn(answering_server(a, "error", value));
        let client = pb::twisted::connect_io(b, None, PbConfig::default())
            .await
            .unwrap();
        // Neither a `Failure` nor the method's error type: the value becomes the error's text.
        let r = client
            .root_ref()
            .call::<_, u64, Failure>("anything", &())
            .await;
        match r {
            Err(CallError::Internal(text)) => {
                assert!(text.starts_with("[[[[[[[[[..., ..."), "{}", &text[..40]);
                assert!(text.ends_with("..."));
                assert!(text.len() <= 16 * 1024 + 3, "{} bytes", text.len());
            }
            other => panic!("{other:?}"),
        }
        client.close().await;
        server.await.unwrap();
    }
}

/// A Cacheable's state: names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Names {
    names: Vec<String>,
}

impl pb::CacheState for Names {
    type Update = ();
    fn apply(&mut self, _: &()) {}
    fn twisted_tag() -> &'static str {
        "pbtest.Names"
    }
}

/// A Cacheable whose state names one string of `len` bytes `times` times.
fn cacheable_naming_many_times(len: usize, times: usize) -> Element {
    let mut g = Graph::default();
    let s = g.add_node(Value::Str("x".repeat(len)));
    let names = Value::List(vec![Value::Shared(s); times]);
    g.set_root(Value::Cache {
        tag: "pbtest.Names".into(),
        luid: 1,
        state: Box::new(Value::Dict(vec![(Value::from("names"), names)])),
    });
    to_sexp(&g, &JellyConfig::default()).unwrap()
}

#[tokio::test]
async fn a_cacheables_state_is_held_to_the_connections_max_copied_size() {
    let config = PbConfig::default().jelly(JellyConfig::default().max_copied_size(1 << 20));
    for (times, fits) in [(10, true), (20, false)] {
        let (a, b) = tokio::io::duplex(1 << 20);
        let value = cacheable_naming_many_times(64 * 1024, times);
        let server = tokio::spawn(answering_server(a, "answer", value));
        let client = pb::twisted::connect_io(b, None, config).await.unwrap();
        let r = client
            .root_ref()
            .call::<_, pb::Replica<Names>, Failure>("cache", &())
            .await;
        match r {
            Ok(replica) if fits => assert_eq!(replica.get().names.len(), times),
            Err(CallError::BadAnswer(m)) if !fits => assert!(m.contains("max_copied_size"), "{m}"),
            other => panic!("{times} names: {other:?}"),
        }
        client.close().await;
        server.await.unwrap();
    }
}

/// A Cacheable whose state is not the replica's type fails the answer that sends it, naming
/// the type.
#[tokio::test]
async fn a_cacheables_state_of_another_type_is_a_bad_answer() {
    let mut g = Graph::default();
    g.set_root(Value::Cache {
        tag: "pbtest.Names".into(),
        luid: 1,
        state: Box::new(Value::Dict(vec![(Value::from("names"), Value::Int(5))])),
    });
    let value = to_sexp(&g, &JellyConfig::default()).unwrap();
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(answering_server(a, "answer", value));
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    let r = client
        .root_ref()
        .call::<_, pb::Replica<Names>, Failure>("cache", &())
        .await;
    match r {
        Err(CallError::BadAnswer(m)) => {
            assert!(m.contains("the Cacheable's state is not a"), "{m}");
            assert!(m.contains("Names"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    client.close().await;
    server.await.unwrap();
}

#[pb::remote]
pub trait Pinger {
    async fn ping(&self, x: i64) -> i64;
}

struct ThePinger;

impl Pinger for ThePinger {
    async fn ping(&self, x: i64) -> i64 {
        x
    }
}

#[pb::remote]
pub trait CallsBack {
    /// Calls `r.ping(data.len())` and answers what it answered.
    async fn call_back(&self, r: PingerRef, data: Vec<u8>) -> Result<i64, Failure>;
}

struct TheCallsBack;

impl CallsBack for TheCallsBack {
    async fn call_back(&self, r: PingerRef, data: Vec<u8>) -> Result<i64, Failure> {
        r.ping(data.len() as i64)
            .await
            .map_err(|e| Failure::pb_error(format!("the callback failed: {e}")))
    }
}

/// Handlers that call the peer back while the peer's calls are at the cap: the answers to those
/// calls still come through (they used to sit unread behind the cap, and every call waited
/// forever: a real Twisted client with 1 100 such calls in flight got none of them answered).
#[tokio::test(start_paused = true)]
async fn handlers_that_call_back_are_answered_at_the_cap_on_calls() {
    for (config, calls, size) in [
        // By count: two calls at a cap of two, both waiting for their callbacks.
        (PbConfig::default().max_in_flight_calls(2), 4, 1),
        // By bytes: one call larger than the cap.
        (PbConfig::default().max_call_bytes(256 * 1024), 1, 300_000),
    ] {
        let (server, client) = pair(CallsBackRef::new(TheCallsBack).into(), config).await;
        let root: CallsBackRef = client.root();
        let calls: Vec<_> = (0..calls)
            .map(|_| {
                let root = root.clone();
                tokio::spawn(async move {
                    root.call_back(PingerRef::new(ThePinger), vec![1; size])
                        .await
                })
            })
            .collect();
        let answered = async {
            for call in calls {
                assert_eq!(call.await.unwrap(), Ok(size as i64));
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(3600), answered)
            .await
            .expect("every call answered");
        assert_eq!(server.stats().tables.in_flight_calls, 0);
    }
}

/// A hand-written PB peer: the dialect handshake done, then messages sent and read raw.
struct RawPeer {
    io: DuplexStream,
    dec: BananaCodec,
    enc: BananaCodec,
    buf: BytesMut,
}

impl RawPeer {
    async fn connect(io: DuplexStream) -> RawPeer {
        let mut peer = RawPeer {
            io,
            dec: BananaCodec::new(BananaConfig::default()),
            enc: BananaCodec::new(BananaConfig::default()),
            buf: BytesMut::new(),
        };
        let offer = next(&mut peer.dec, &mut peer.io, &mut peer.buf).await;
        assert_eq!(Dialect::choose(&offer), Some(Dialect::Pb));
        peer.send(Element::from("pb")).await;
        peer.dec.set_dialect(Dialect::Pb);
        peer.enc.set_dialect(Dialect::Pb);
        peer.send(Element::List(vec!["version".into(), 6.into()]))
            .await;
        peer
    }

    async fn send(&mut self, e: Element) {
        let mut out = BytesMut::new();
        self.enc.encode(&e, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next message other than `version`.
    async fn next(&mut self) -> Element {
        loop {
            let e = next(&mut self.dec, &mut self.io, &mut self.buf).await;
            let head = e
                .as_list()
                .and_then(|l| l.first().and_then(|h| h.as_bytes().cloned()));
            if head.as_deref() != Some(&b"version"[..]) {
                return e;
            }
        }
    }
}

/// `["message", id, "root", method, 1, ("tuple", args...), ("dictionary", kwargs...)]`.
fn message(id: i64, method: &'static str, args: Vec<Element>, kwargs: Vec<Element>) -> Element {
    let mut a = vec![Element::from("tuple")];
    a.extend(args);
    let mut k = vec![Element::from("dictionary")];
    k.extend(kwargs);
    Element::List(vec![
        "message".into(),
        id.into(),
        "root".into(),
        method.into(),
        1.into(),
        Element::List(a),
        Element::List(k),
    ])
}

#[pb::remote]
pub trait Waits {
    /// Waits until the test lets it go.
    async fn wait(&self) -> u32;
}

struct TheWaits {
    running: Arc<AtomicU64>,
    most: Arc<AtomicU64>,
    open: Arc<tokio::sync::Semaphore>,
}

impl Waits for TheWaits {
    async fn wait(&self) -> u32 {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let _permit = self.open.acquire().await.unwrap();
        self.running.fetch_sub(1, Ordering::SeqCst);
        1
    }
}

/// A peer that reuses one request id for many calls is held to the cap on calls in flight: each
/// message counts (they used to count as one: 50 handlers ran under a cap of 2).
#[tokio::test(start_paused = true)]
async fn a_reused_request_id_is_held_to_the_cap_on_calls() {
    let (running, most) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let waits = TheWaits {
        running: running.clone(),
        most: most.clone(),
        open: open.clone(),
    };
    let (a, b) = tokio::io::duplex(1 << 20);
    let config = PbConfig::default().max_in_flight_calls(2);
    let _server = pb::twisted::accept_io(a, None, Some(WaitsRef::new(waits).into()), config);
    let mut peer = RawPeer::connect(b).await;
    for _ in 0..50 {
        peer.send(message(1, "wait", vec![], vec![])).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    assert_eq!(
        running.load(Ordering::SeqCst),
        2,
        "two run; the rest wait, unread"
    );
    open.add_permits(100);
    for _ in 0..50 {
        let answer = peer.next().await;
        let head = answer
            .as_list()
            .and_then(|l| l.first().and_then(|h| h.as_bytes().cloned()));
        assert_eq!(head.as_deref(), Some(&b"answer"[..]));
    }
    assert_eq!(most.load(Ordering::SeqCst), 2);
}

#[pb::remote]
pub trait GivesBack {
    async fn give_back(&self, r: pb::ObjectRef) -> pb::ObjectRef;
}

struct TheGivesBack;

impl GivesBack for TheGivesBack {
    async fn give_back(&self, r: pb::ObjectRef) -> pb::ObjectRef {
        r
    }
}

/// The references a refused call carries are released (`decref`), as Twisted releases them:
/// a call with keyword arguments, and one whose arguments do not unjelly (a `class`), used to
/// leave the peer exporting them for good; so are those of a call whose keyword arguments do
/// not unjelly, in its arguments and its keyword arguments.
#[tokio::test(start_paused = true)]
async fn the_references_of_a_refused_call_are_released() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = pb::twisted::accept_io(
        a,
        None,
        Some(GivesBackRef::new(TheGivesBack).into()),
        PbConfig::default(),
    );
    let mut peer = RawPeer::connect(b).await;
    let remote = |luid: i64| Element::List(vec!["remote".into(), luid.into()]);
    let kwarg = Element::List(vec![
        Element::List(vec!["unicode".into(), "flag".into()]),
        1.into(),
    ]);
    peer.send(message(1, "give_back", vec![remote(7)], vec![kwarg]))
        .await;
    let class = Element::List(vec!["class".into(), "os.system".into()]);
    peer.send(message(
        2,
        "give_back",
        vec![remote(8), class.clone()],
        vec![],
    ))
    .await;
    let kwargs = vec![
        Element::List(vec![
            Element::List(vec!["unicode".into(), "r".into()]),
            remote(10),
        ]),
        Element::List(vec![
            Element::List(vec!["unicode".into(), "c".into()]),
            class,
        ]),
    ];
    peer.send(message(4, "give_back", vec![remote(11)], kwargs))
        .await;
    // A call that is not refused, after them: its own release ends what this test reads.
    peer.send(message(3, "give_back", vec![remote(9)], vec![]))
        .await;
    let mut decrefs = Vec::new();
    while !decrefs.contains(&9) {
        let m = peer.next().await;
        let items = m.as_list().unwrap();
        if items[0].as_bytes().map(|b| &b[..]) == Some(&b"decref"[..]) {
            decrefs.push(items[1].as_i64().unwrap());
        }
    }
    for luid in [7, 8, 10, 11] {
        assert!(decrefs.contains(&luid), "{luid} in {decrefs:?}");
    }
    assert_eq!(server.stats().tables.imported, 0);
}

/// A value that does not unjelly releases exactly the peer's objects it carries: a Cacheable
/// (`[tag, luid, state]`) is decached as a Referenceable is decref'd, a dictionary entry whose
/// key merely looks like a flavor's head (`{b"remote": 5}`) is no reference, and a reference
/// refused (a negative luid) leaves no import counted.
#[tokio::test(start_paused = true)]
async fn a_refused_value_releases_exactly_the_objects_it_carries() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = pb::twisted::accept_io(
        a,
        None,
        Some(GivesBackRef::new(TheGivesBack).into()),
        PbConfig::default(),
    );
    let mut peer = RawPeer::connect(b).await;
    let remote = |luid: i64| Element::List(vec!["remote".into(), luid.into()]);
    let class = Element::List(vec!["class".into(), "os.system".into()]);
    let dict = Element::List(vec![
        "dictionary".into(),
        Element::List(vec!["remote".into(), 5.into()]),
    ]);
    peer.send(message(1, "give_back", vec![dict, class.clone()], vec![]))
        .await;
    let cacheable = Element::List(vec![
        "pbtest.Thing".into(),
        6.into(),
        Element::List(vec![Element::from("dictionary")]),
    ]);
    peer.send(message(
        2,
        "give_back",
        vec![cacheable, remote(7), class],
        vec![],
    ))
    .await;
    peer.send(message(3, "give_back", vec![remote(-3)], vec![]))
        .await;
    // A call that is not refused, after them: its own release ends what this test reads.
    peer.send(message(4, "give_back", vec![remote(9)], vec![]))
        .await;
    let (mut decrefs, mut decaches) = (Vec::new(), Vec::new());
    while !decrefs.contains(&9) {
        let m = peer.next().await;
        let items = m.as_list().unwrap();
        match items[0].as_bytes().map(|b| &b[..]) {
            Some(b"decref") => decrefs.push(items[1].as_i64().unwrap()),
            Some(b"decache") => decaches.push(items[1].as_i64().unwrap()),
            _ => {}
        }
    }
    assert_eq!(decaches, [6], "the Cacheable, once");
    assert!(decrefs.contains(&7), "{decrefs:?}");
    assert!(!decrefs.contains(&5), "5 was never sent: {decrefs:?}");
    assert_eq!(server.stats().tables.imported, 0);
}

#[pb::remote]
pub trait WaitsOrNot {
    /// Waits until the test lets it go.
    async fn wait(&self) -> u32;
    async fn quick(&self) -> u32;
}

struct TheWaitsOrNot(Arc<tokio::sync::Semaphore>);

impl WaitsOrNot for TheWaitsOrNot {
    async fn wait(&self) -> u32 {
        let _permit = self.0.acquire().await.unwrap();
        1
    }
    async fn quick(&self) -> u32 {
        2
    }
}

/// A call held back at the cap (read on because one of ours awaits an answer) runs as soon as
/// the running call ends, with no further byte from the peer: the reader used to wake only for
/// the peer's bytes, so a peer waiting for that answer waited for good.
#[tokio::test(start_paused = true)]
async fn a_call_held_at_the_cap_runs_when_the_running_one_ends() {
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let (a, b) = tokio::io::duplex(1 << 20);
    let config = PbConfig::default().max_in_flight_calls(1);
    let root = WaitsOrNotRef::new(TheWaitsOrNot(open.clone()));
    let server = pb::twisted::accept_io(a, None, Some(root.into()), config);
    let mut peer = RawPeer::connect(b).await;
    peer.send(message(1, "wait", vec![], vec![])).await;
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    // A call of the server's to the peer, which the peer never answers: the server reads on.
    let ours = server.root_ref();
    tokio::spawn(async move { ours.call::<_, u32, Failure>("anything", &()).await });
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    peer.send(message(2, "quick", vec![], vec![])).await;
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    open.add_permits(1);
    let mut answered = Vec::new();
    let hour = std::time::Duration::from_secs(3600);
    while answered.len() < 2 {
        let m = tokio::time::timeout(hour, peer.next())
            .await
            .expect("both calls answered, no byte from the peer needed");
        let items = m.as_list().unwrap().to_vec();
        if items[0].as_bytes().map(|b| &b[..]) == Some(&b"answer"[..]) {
            answered.push(items[1].as_i64().unwrap());
        }
    }
    assert_eq!(answered, vec![1, 2]);
}

/// What an error answer that is neither a `Failure` nor the method's error type reads as:
/// Python's `repr` of its value for the common cases, an enum variant as `Variant: fields`,
/// anything else its Rust form, and at most 16 KiB of it (cut on a character boundary).
#[tokio::test]
async fn an_error_answer_that_is_no_failure_reads_as_its_values_text() {
    use pb::proto::jelly::Date;
    let dict = |pairs: Vec<(Value, Value)>| Value::Dict(pairs);
    let long_dict = dict(
        (0..100)
            .map(|i| (Value::from(format!("k{i}")), Value::from("x".repeat(1000))))
            .collect(),
    );
    let cases: Vec<(Value, &str)> = vec![
        (
            dict(vec![
                ("a".into(), 1.into()),
                (
                    "b".into(),
                    Value::List(vec![true.into(), false.into(), Value::None]),
                ),
            ]),
            r#"{"a": 1, "b": [True, False, None]}"#,
        ),
        (
            dict(vec![(
                "Variant".into(),
                Value::Tuple(vec![1.into(), 2.5.into()]),
            )]),
            "Variant: (1, 2.5)",
        ),
        (
            dict(vec![(1.into(), Value::from(&b"xy"[..]))]),
            r#"{1: b"xy"}"#,
        ),
        (
            Value::Set(vec![Value::BigInt(
                "1180591620717411303424".parse().unwrap(),
            )]),
            "{1180591620717411303424}",
        ),
        (
            Value::Date(Date {
                year: 2026,
                month: 12,
                day: 7,
            }),
            "Date(Date { year: 2026, month: 12, day: 7 })",
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(error_text(Graph::new(value)).await, expected);
    }
    // Past 16 KiB: cut on a character boundary (the 16 384th byte is inside an `é`).
    let text = error_text(Graph::new(format!("a{}", "é".repeat(10_000)).into())).await;
    assert_eq!(text, format!("a{}...", "é".repeat(8191)));
    // A key past 16 KiB inside a list: cut, and its value not written.
    let key = Value::List(vec![Value::Dict(vec![(
        Value::from("k".repeat(20_000)),
        1.into(),
    )])]);
    let text = error_text(Graph::new(key)).await;
    assert_eq!(text, format!("[{{\"{}...", "k".repeat(16 * 1024 - 3)));
    // A quoted text inside a list, cut on a character boundary where the room left is odd.
    let list = Value::List(vec!["abc".into(), "é".repeat(10_000).into()]);
    let text = error_text(Graph::new(list)).await;
    assert_eq!(text.len(), 16 * 1024 - 1 + 3);
    assert!(text == format!("[\"abc\", \"{}...", "é".repeat(8187)));
    // A dict cut between its pairs.
    let text = error_text(Graph::new(long_dict)).await;
    assert!(text.starts_with(r#"{"k0": "xxx"#), "{}", &text[..20]);
    assert!(text.ends_with("..."));
    assert!(text.len() <= 16 * 1024 + 3, "{} bytes", text.len());
}

/// The text of the error a client reads when a server answers its call with `value` (neither
/// a `Failure` nor the method's error type).
async fn error_text(value: Graph) -> String {
    let (a, b) = tokio::io::duplex(1 << 20);
    let value = to_sexp(&value, &JellyConfig::default()).unwrap();
    let server = tokio::spawn(answering_server(a, "error", value));
    let client = pb::twisted::connect_io(b, None, PbConfig::default())
        .await
        .unwrap();
    let r = client
        .root_ref()
        .call::<_, u64, Failure>("anything", &())
        .await;
    client.close().await;
    server.await.unwrap();
    match r {
        Err(CallError::Internal(text)) => text,
        other => panic!("{other:?}"),
    }
}

/// A text cut where a character straddles the 16 KiB mark still ends with the `...` that says it
/// was cut. (It used to end at 16 384 bytes without it: the writer cut the string back to a
/// character boundary inside the limit, so the text looked whole.)
#[tokio::test]
async fn an_error_text_cut_on_a_character_boundary_at_16_kib_says_it_was_cut() {
    // 20 000 bytes of `é`: the 16 385th byte is inside one.
    let text = error_text(Graph::new("é".repeat(10_000).into())).await;
    assert!(text.starts_with("ééé"));
    assert!(
        text.ends_with("..."),
        "{} bytes, ending {:?}",
        text.len(),
        &text[text.len() - 6..]
    );
    assert_eq!(text.len(), 16 * 1024 + 3);
}

// ---------------------------------------------------------------------------------------------
// A sender refuses what its peer's decoder would refuse: the call fails alone, before anything
// is sent, and the connection serves on.

#[pb::remote]
pub trait Bulk {
    async fn take(&self, x: Dynamic) -> i64;
    async fn ints(&self, x: Vec<i64>) -> usize;
    async fn blobs(&self, x: Vec<bytes::Bytes>) -> usize;
    /// `n` ones: an answer as large as asked.
    async fn ones(&self, n: u32) -> Vec<i64>;
    async fn ping(&self) -> i64;
}

struct TheBulk;

impl Bulk for TheBulk {
    async fn take(&self, _x: Dynamic) -> i64 {
        1
    }
    async fn ints(&self, x: Vec<i64>) -> usize {
        x.len()
    }
    async fn blobs(&self, x: Vec<bytes::Bytes>) -> usize {
        x.len()
    }
    async fn ones(&self, n: u32) -> Vec<i64> {
        vec![1; n as usize]
    }
    async fn ping(&self) -> i64 {
        7
    }
}

/// A PB server of [`TheBulk`] and a client, both with `config`, and the server's root.
async fn bulk_pair(config: PbConfig) -> (Connection, Connection, BulkRef) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = pb::twisted::accept_io(a, None, Some(BulkRef::new(TheBulk).into()), config);
    let client = pb::twisted::connect_io(b, None, config).await.unwrap();
    let root = client.root();
    (server, client, root)
}

/// `dicts` one-entry dicts inside each other around `lists` lists inside each other.
fn nested(dicts: usize, lists: usize) -> Value {
    let mut v = Value::Int(1);
    for _ in 0..lists {
        v = Value::List(vec![v]);
    }
    for _ in 0..dicts {
        v = Value::Dict(vec![(Value::Int(0), v)]);
    }
    v
}

#[tokio::test(start_paused = true)]
async fn an_argument_nested_to_the_depth_limit_is_refused_by_the_sender_not_the_peer() {
    let (server, _client, root) = bulk_pair(PbConfig::default()).await;
    // The arguments lie one list deep in the message, and the peer counts that list. A dict
    // takes two Banana lists (["dictionary", [k, v]]): mixed with lists, every depth around
    // the limit is reached.
    let depths = (29..=33)
        .flat_map(|d| (0..=2).map(move |l| (d, l)))
        .chain((55..=70).map(|l| (0, l)));
    let (mut sent, mut refused) = (0, 0);
    for (dicts, lists) in depths {
        match root.take(Dynamic::from(nested(dicts, lists))).await {
            Ok(1) => sent += 1,
            Err(CallError::Encode(_)) => refused += 1,
            other => panic!(
                "({dicts}, {lists}): {other:?}, server closed: {:?}",
                server.close_reason()
            ),
        }
        assert_eq!(root.ping().await.unwrap(), 7);
    }
    assert!(sent > 0 && refused > 0, "{sent} sent, {refused} refused");
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn arguments_over_the_expression_budget_are_refused_by_the_sender() {
    // Both ends with a smaller budget: 10 000 small ints are 20 KB on the wire, but each is
    // charged an element's size in memory, as the decoder charges it.
    let banana = BananaConfig::default().max_expression_size(256 * 1024);
    let (server, _client, root) = bulk_pair(PbConfig::default().banana(banana)).await;
    assert_eq!(root.ints(vec![1; 1_000]).await.unwrap(), 1_000);
    match root.ints(vec![1; 10_000]).await {
        Err(CallError::Encode(e)) => assert!(e.contains("expression larger"), "{e}"),
        other => panic!("{other:?}, server closed: {:?}", server.close_reason()),
    }
    assert_eq!(root.ping().await.unwrap(), 7);
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn arguments_over_the_default_expression_budget_are_refused_by_the_sender() {
    // 110 strings of 600 KiB, each within Twisted's 640 KiB, 66 MB in one call: over the
    // default 64 MiB budget of the pb peer's decoder.
    let (server, _client, root) = bulk_pair(PbConfig::default()).await;
    let blob = bytes::Bytes::from(vec![b'x'; 600 * 1024]);
    assert_eq!(root.blobs(vec![blob.clone(); 100]).await.unwrap(), 100);
    assert!(matches!(
        root.blobs(vec![blob; 110]).await,
        Err(CallError::Encode(_))
    ));
    assert_eq!(root.ping().await.unwrap(), 7);
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_answer_over_the_expression_budget_fails_that_call_alone() {
    let banana = BananaConfig::default().max_expression_size(256 * 1024);
    let (server, _client, root) = bulk_pair(PbConfig::default().banana(banana)).await;
    assert_eq!(root.ones(1_000).await.unwrap().len(), 1_000);
    let r = root.ones(10_000).await;
    assert!(
        matches!(&r, Err(CallError::Internal(m)) if m.contains("expression larger")),
        "{r:?}"
    );
    assert_eq!(root.ping().await.unwrap(), 7);
    assert!(!server.is_closed());
}
