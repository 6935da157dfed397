//! Held memory: what a peer can make a connection hold while it holds that peer's frames,
//! commands or messages back, against the byte limits that bound them.
//!
//! Stress: a peer that floods a server with large calls and never reads grows the server's
//! memory by at most `Limits::max_held_bytes` plus a fixed overhead, or, while the server
//! waits for an answer of the peer's (when reading must go on), by at most the call window
//! (`Limits::max_call_bytes`) plus that overhead; one that floods it with answers to calls
//! never made, each carrying 1 024 fresh references, grows it by nothing that counts. Ignored
//! by default (they move hundreds of MiB); CI runs them on their own in release mode, one test
//! per process (each measures the whole process's memory, which the allocator gives back to
//! the system lazily after the one before):
//! `cargo test --release --test stress_held_memory -- --ignored --exact NAME`.
//!
//! Held to what they cost: frames other than calls held behind a held call while the server
//! awaits the peer are bounded in bytes, not by their count alone, and held commands (AMP) and
//! held messages (Twisted PB) are counted by the memory they take, not by their bytes on the
//! wire, so that the limit they are counted against bounds the heap they hold. These run by
//! default and measure the heap with a counting allocator, one at a time.
//!
//! Virtual time: a sleep returns once every task is idle, so "after a sleep" means "once the
//! server has stopped reading".

mod common;

use std::time::Duration;

use common::{HELLO, KitchenImpl, KitchenRef, forged_answer, reverse_call};
use pb::{Config, Connection, Limits, Side};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The system allocator, counting (`stats_alloc`): the heap this process holds, in bytes.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The tests measure the process's memory: they take turns, each on a runtime of its own
/// that is gone (with everything it held) before the next starts.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Heap growth in bytes since `region` began. `stats_alloc` counts a reallocation's growth in
/// `bytes_allocated` (and a shrink in `bytes_deallocated`) already: adding
/// `bytes_reallocated` again would count every vector that grew and was freed meanwhile.
fn heap_growth(region: &Region<'_, std::alloc::System>) -> i64 {
    let change = region.change();
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

/// Runs `test` alone, on a runtime with a paused clock.
fn alone<F: std::future::Future<Output = ()>>(test: F) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(test);
}

/// Resident set size in MiB, from /proc.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss field");
    pages * 4.0 / 1024.0
}

/// A server with `limits` (no timeouts) flooded by a peer that writes `frame(n)` for n in
/// `0..frames` and never reads: the server's memory growth in MiB once it has stopped reading,
/// and its stats then.
async fn flood_with(
    limits: Limits,
    frames: u64,
    frame: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> (f64, pb::ConnectionStats) {
    flood_calling(limits, frames, frame, false).await
}

/// As [`flood_with`]; with `calling`, the server first calls the peer, which never answers:
/// while the server waits for that answer, it must read on.
async fn flood_calling(
    limits: Limits,
    frames: u64,
    frame: impl Fn(u64) -> Vec<u8> + Send + 'static,
    calling: bool,
) -> (f64, pb::ConnectionStats) {
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let config = Config {
        limits,
        keepalive_interval: None,
        idle_timeout: None,
        write_stall_timeout: None,
        ..Config::default()
    };
    let before = rss_mib();
    let attacker = tokio::spawn(async move {
        theirs.write_all(&HELLO).await.unwrap();
        let mut hello = [0u8; 20];
        theirs.read_exact(&mut hello).await.unwrap();
        for n in 0..frames {
            if theirs.write_all(&frame(n)).await.is_err() {
                return;
            }
        }
        // Keeps its end open, never reading.
        std::future::pending::<()>().await;
    });
    let server = Connection::establish(
        ours,
        &config,
        Side::Server,
        Some(KitchenRef::new(KitchenImpl::default()).into()),
        None,
    )
    .await
    .unwrap();
    let waiting = calling.then(|| {
        let peer = server.root_ref();
        tokio::spawn(async move { peer.call::<(), (), ()>("never_answered", &()).await })
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    if calling {
        assert_eq!(server.stats().tables.pending_calls, 1, "the server waits");
    }
    let grown = rss_mib() - before;
    if let Some(waiting) = waiting {
        waiting.abort();
    }
    let stats = server.stats();
    server.abort();
    attacker.abort();
    let _ = attacker.await;
    (grown, stats)
}

/// Flood a server whose limits are `limits` with `calls` calls of 1 MiB without reading (with
/// `calling`, while the server waits for an answer of the peer's); the server's memory growth
/// in MiB once it has stopped reading, and its stats then.
async fn flood(limits: Limits, calls: u64, calling: bool) -> (f64, pb::ConnectionStats) {
    // One frame, written again and again under new ids: the attacker holds 1 MiB.
    let payload = vec![7u8; 1 << 20];
    flood_calling(
        limits,
        calls,
        move |n| reverse_call(n + 1, &payload),
        calling,
    )
    .await
}

#[test]
#[ignore = "stress test, run on its own in release mode"]
fn a_flood_of_large_calls_costs_at_most_the_held_bytes_cap() {
    alone(a_flood_of_large_calls());
}

async fn a_flood_of_large_calls() {
    const CALLS: u64 = 300;
    let capped = Limits::default();
    let cap_mib = capped.max_held_bytes as f64 / (1 << 20) as f64;
    let (grown, stats) = flood(capped, CALLS, false).await;
    let read = stats.bytes_in;
    println!(
        "with max_held_bytes = {cap_mib} MiB: read {} MiB, RSS +{grown:.1} MiB",
        read >> 20
    );
    // The cap, the unsent output (4 MiB and the answer that crossed it), the read buffer, a
    // frame being decoded, and the allocator's slack.
    assert!(
        grown < cap_mib + 24.0,
        "RSS grew by {grown:.1} MiB under a {cap_mib} MiB cap"
    );

    // The count alone (as before the cap and the call window) lets the same flood in to the
    // end: the measurement tells the two apart.
    let uncapped = Limits {
        max_held_bytes: usize::MAX,
        max_call_bytes: usize::MAX,
        ..Limits::default()
    };
    let (grown_uncapped, stats) = flood(uncapped, CALLS, false).await;
    let read_uncapped = stats.bytes_in;
    println!(
        "with the count alone: read {} MiB, RSS +{grown_uncapped:.1} MiB",
        read_uncapped >> 20
    );
    assert!(
        read_uncapped > read + (100 << 20),
        "without the cap the server reads on ({} MiB against {} MiB)",
        read_uncapped >> 20,
        read >> 20
    );
}

/// Attack 2 of the hardening issue: the same flood while the server waits for an answer from
/// the peer. Reading must go on then (the answer may be next), so the held-bytes cap does not
/// apply, and only the count of held calls (`max_in_flight_calls`, 1 024 of up to 16 MiB each)
/// bounded them: 356 MiB sent grew a server by 385 MiB. The call window bounds them in bytes:
/// a call beyond it is refused without being held. Violations are not counted here
/// (`max_violations` at its maximum), so that the flood goes on as long as the attacker likes.
#[test]
#[ignore = "stress test, run on its own in release mode"]
fn a_flood_of_large_calls_while_the_server_waits_costs_at_most_the_call_window() {
    alone(a_flood_while_waiting());
}

async fn a_flood_while_waiting() {
    const CALLS: u64 = 300;
    let limits = Limits {
        max_violations: u32::MAX,
        ..Limits::default()
    };
    let window = limits.max_call_bytes;
    let window_mib = window as f64 / (1 << 20) as f64;
    let (grown, stats) = flood(limits, CALLS, true).await;
    println!(
        "{CALLS} calls of 1 MiB while the server waits: read {} MiB, RSS +{grown:.1} MiB, {} MiB in the window",
        stats.bytes_in >> 20,
        stats.tables.call_bytes >> 20
    );
    assert!(
        stats.bytes_in > (CALLS - 10) << 20,
        "the flood got in: {} MiB",
        stats.bytes_in >> 20
    );
    assert!(stats.tables.call_bytes <= window);
    // The window, the unsent output, the read buffer, a frame being decoded, and the
    // allocator's slack.
    assert!(
        grown < window_mib + 24.0,
        "RSS grew by {grown:.1} MiB under a {window_mib} MiB call window"
    );
}

/// Attack 1 of the hardening issue: answers to calls the server never made, each with 1 024
/// fresh references, from a peer that never reads. Before answers were matched to a call
/// before their references were imported, 8.6 MiB of them grew a server by 257 MiB (about 30
/// times what was sent). Violations are not counted here (`max_violations` at its maximum),
/// so that the flood goes on as long as the attacker likes.
#[test]
#[ignore = "stress test, run on its own in release mode"]
fn answers_to_calls_never_made_cost_nothing_that_grows() {
    alone(forged_answers());
}

async fn forged_answers() {
    const ANSWERS: u64 = 4000;
    let limits = Limits {
        max_violations: u32::MAX,
        ..Limits::default()
    };
    let (grown, stats) = flood_with(limits, ANSWERS, |n| {
        forged_answer(1_000_000 + n, 1 + n * 1024)
    })
    .await;
    println!(
        "{ANSWERS} forged answers ({} MiB read): RSS +{grown:.1} MiB, {} imported",
        stats.bytes_in >> 20,
        stats.tables.imported
    );
    assert!(
        stats.bytes_in > 8 << 20,
        "the flood got in: {} bytes",
        stats.bytes_in
    );
    assert_eq!(
        stats.tables.imported, 0,
        "nothing is imported for an answer nobody asked for"
    );
    assert!(grown < 16.0, "RSS grew by {grown:.1} MiB");
}

// ---------------------------------------------------------------------------------------------
// Native pb: frames other than calls, held behind a held call while the server awaits answers
// from the peer, are bounded in bytes.
// ---------------------------------------------------------------------------------------------

#[pb::remote]
pub trait Callback {
    async fn wait(&self) -> Result<(), ()>;
}

/// A root whose method calls the caller back and waits for the answer (the callback pattern:
/// the server then awaits an answer from its peer, so it must read on).
#[pb::remote]
pub trait CallsBack {
    async fn call_me(&self, cb: CallbackRef) -> Result<(), ()>;
    /// Keeps the reference and never returns (no call of the server's awaits the peer).
    async fn hang(&self, cb: CallbackRef) -> Result<(), ()>;
}

struct CallsBackImpl;

impl CallsBack for CallsBackImpl {
    async fn call_me(&self, cb: CallbackRef) -> Result<(), ()> {
        let _ = cb.wait().await;
        Ok(())
    }

    async fn hang(&self, _cb: CallbackRef) -> Result<(), ()> {
        std::future::pending().await
    }
}

/// A call of `method` on the root, sending the caller's object 1.
fn call_sending_object_1(id: u64, method: &'static str) -> Vec<u8> {
    use pb::proto::message::{Message, RefDesc};
    common::framed(Message::Call {
        id,
        target: 0,
        method: bytes::Bytes::from_static(method.as_bytes()),
        answer: true,
        deadline_ms: None,
        extras: Default::default(),
        refs: vec![RefDesc::Sender(1)],
        payload: bytes::Bytes::from_static(&[0]),
    })
}

/// What a flood did to the server: its heap growth, the bytes of the flood it took in, and
/// why it closed, if it did.
struct Flooded {
    grew: i64,
    written: usize,
    closed: Option<pb::CloseReason>,
}

/// A server (4 calls running at most, a 256 KiB call window, 256 KiB of held frames, 128 KiB
/// frames, timeouts off) whose root runs `method`; a raw peer fills the running places with
/// it (with `call_me`, the server then awaits 4 answers from the peer), sends one more call
/// (held at the cap, within the window), then `releases` valid `Release` frames of 4 096
/// entries (~80 KB each), reading nothing.
async fn flood_releases_behind_a_held_call(releases: usize, method: &'static str) -> Flooded {
    use pb::proto::message::Message;
    let mut config = Config::default();
    config.limits.max_in_flight_calls = 4;
    config.limits.max_frame_len = 128 * 1024;
    config.limits.max_call_bytes = 256 * 1024;
    config.limits.max_held_bytes = 256 * 1024;
    config.keepalive_interval = None;
    config.idle_timeout = None;
    config.write_stall_timeout = None;
    let (a, mut raw) = pb::transport::memory_pair();
    raw.write_all(&HELLO).await.unwrap();
    let server = Connection::establish(
        a,
        &config,
        Side::Server,
        Some(CallsBackRef::new(CallsBackImpl).into()),
        None,
    )
    .await
    .unwrap();
    let mut hello = [0u8; 20];
    raw.read_exact(&mut hello).await.unwrap();
    let release = common::framed(Message::Release(
        (0..4096u64).map(|i| (u64::MAX - i, u64::MAX)).collect(),
    ));
    assert!(release.len() > 80_000 && release.len() < 128 * 1024);
    let mut flood = Vec::with_capacity(release.len() * releases);
    for _ in 0..releases {
        flood.extend_from_slice(&release);
    }
    let region = Region::new(GLOBAL);
    for id in 1..=4 {
        raw.write_all(&call_sending_object_1(id, method))
            .await
            .unwrap();
    }
    if method == "call_me" {
        for _ in 0..4 {
            let body = common::read_body(&mut raw).await.unwrap();
            assert_eq!(body[0], 1, "a callback call");
        }
    }
    // One more call: held at the cap on running calls (it fits the window).
    raw.write_all(&call_sending_object_1(5, method))
        .await
        .unwrap();
    // The server reads what it will; then the write waits on the pipe (virtual time), or
    // fails once the server has closed.
    let mut written = 0;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for chunk in flood.chunks(4096) {
            if raw.write_all(chunk).await.is_err() {
                break;
            }
            written += chunk.len();
        }
    })
    .await;
    let grew = heap_growth(&region);
    let closed = server.close_reason();
    drop(raw);
    drop(server);
    Flooded {
        grew,
        written,
        closed,
    }
}

/// While the server awaits answers from the peer it must read on (the answers may be what
/// its running calls wait for), and frames other than calls held behind a held call are not
/// in the call window: they are held to `max_held_bytes` (at least a frame) all the same, and
/// a peer that floods them past it then is cut, `max_held_bytes` named in the reason. Without
/// the bound, 4 calls running let 64 such frames of ~80 KB (5.4 MiB) be held under a 256 KiB
/// window and 256 KiB `max_held_bytes`. The control: with no call of the server's awaiting
/// the peer, reading pauses at `max_held_bytes`, and the connection stays up.
#[test]
fn frames_held_behind_a_held_call_while_the_server_awaits_the_peer_are_bounded_in_bytes() {
    alone(async {
        let control = flood_releases_behind_a_held_call(200, "hang").await;
        let flooded = flood_releases_behind_a_held_call(200, "call_me").await;
        println!(
            "awaiting the peer: heap +{} KiB, {} KiB of releases taken in, closed: {:?}; \
             control (no callback): +{} KiB, {} KiB taken in",
            flooded.grew / 1024,
            flooded.written / 1024,
            flooded.closed,
            control.grew / 1024,
            control.written / 1024
        );
        // Window (256 KiB) + held bytes (256 KiB) + pipe and slack (1.5 MiB).
        let budget = 256 * 1024 + 256 * 1024 + 1536 * 1024;
        for (run, what) in [(&control, "control"), (&flooded, "awaiting the peer")] {
            assert!(
                run.grew < budget as i64 && run.written < budget,
                "{what}: a peer made the server hold {} KiB (taken in: {} KiB), over \
                 max_call_bytes + max_held_bytes (512 KiB) + 1.5 MiB slack",
                run.grew / 1024,
                run.written / 1024
            );
        }
        assert!(control.closed.is_none(), "{:?}", control.closed);
        match &flooded.closed {
            Some(pb::CloseReason::Protocol(why)) if why.contains("max_held_bytes") => {}
            other => panic!("the flood is cut, naming max_held_bytes: {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// AMP: held commands are counted by what they hold in memory, a table entry per pair included.
// ---------------------------------------------------------------------------------------------

#[derive(pb::AmpCommand, Clone)]
#[amp(response = SumResult)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct SumResult {
    total: i64,
}

#[derive(pb::AmpCommand)]
struct Wait {}

fn wire_box(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// An AMP connection (1 responder at a time, `max_held_bytes` 1 MiB) with one call of its own
/// awaiting the peer's answer (so it reads on, holding the peer's commands back); the raw peer
/// starts one `Wait` (which runs for ever), then floods `boxes` commands that must wait, each
/// made by `one(i)`. Returns the heap growth and the bytes of the flood taken in.
async fn flood_held_amp_commands(boxes: usize, one: impl Fn(usize) -> Vec<u8>) -> (i64, usize) {
    use pb::amp::{AmpConfig, AmpConnection, Locator};
    let mut flood = Vec::new();
    for i in 0..boxes {
        flood.extend_from_slice(&one(i));
    }
    let (victim_io, mut peer) = tokio::io::duplex(64 * 1024);
    let region = Region::new(GLOBAL);
    let victim = AmpConnection::spawn(
        victim_io,
        AmpConfig::default()
            .max_in_flight_responders(1)
            .max_held_bytes(1024 * 1024),
        Locator::new().respond(|Wait {}| std::future::pending()),
    );
    let ours = tokio::spawn({
        let victim = victim.clone();
        async move { victim.call(&Sum { a: 1, b: 2 }).await }
    });
    let mut buf = [0u8; 256];
    let n = peer.read(&mut buf).await.unwrap();
    assert!(buf[..n].windows(3).any(|w| w == b"Sum"));
    peer.write_all(&wire_box(&[(b"_ask", b"1"), (b"_command", b"Wait")]))
        .await
        .unwrap();
    let mut written = 0;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for chunk in flood.chunks(4096) {
            peer.write_all(chunk).await.unwrap();
            written += chunk.len();
        }
    })
    .await;
    let grew = heap_growth(&region);
    ours.abort();
    drop(victim);
    drop(peer);
    (grew, written)
}

/// A command box with 1 022 arguments of 2-byte keys and empty values: 6 KB on the wire.
fn many_keys(i: usize) -> Vec<u8> {
    let ask = format!("{}", i + 2);
    let keys: Vec<[u8; 2]> = (0..1022u16)
        .map(|k| [b'0' + (k >> 8) as u8, k as u8])
        .collect();
    let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"_ask", ask.as_bytes()), (b"_command", b"Wait")];
    for k in &keys {
        pairs.push((k, b""));
    }
    wire_box(&pairs)
}

/// The control: a box of the same wire size with a single argument.
fn one_key(i: usize) -> Vec<u8> {
    let ask = format!("{}", i + 2);
    let value = vec![b'x'; many_keys(0).len() - 30];
    wire_box(&[
        (b"_ask", ask.as_bytes()),
        (b"_command", b"Wait"),
        (b"v", &value),
    ])
}

/// `AmpConfig::max_held_bytes` bounds what held commands keep in memory: each is copied out
/// of its frame into allocations of just its size and counted by what it holds, its table of
/// pairs (a few dozen bytes a pair) included. Counted by their encoded length instead, boxes
/// of 1 022 two-byte keys with empty values (6 KB on the wire, ~70 KB in memory) held about
/// 12 MiB under a 1 MiB limit. The control: the same bytes in one key a box.
#[test]
fn held_amp_commands_hold_about_what_max_held_bytes_counts() {
    alone(async {
        let (control, control_read) = flood_held_amp_commands(400, one_key).await;
        let (grew, read) = flood_held_amp_commands(400, many_keys).await;
        println!(
            "AMP: boxes of 1 022 keys: heap +{} KiB, {} KiB taken in; one key each \
             (control): +{} KiB, {} KiB taken in",
            grew / 1024,
            read / 1024,
            control / 1024,
            control_read / 1024
        );
        // max_held_bytes (1 MiB) + the pipe, read buffers and slack (2 MiB).
        for (grew, what) in [(control, "one key a box"), (grew, "1 022 keys a box")] {
            assert!(
                grew < 3 * 1024 * 1024,
                "{what}: held AMP commands counted against max_held_bytes = 1 MiB hold {} KiB",
                grew / 1024
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Twisted PB: messages held back at the cap are kept as Banana bytes and counted by them.
// ---------------------------------------------------------------------------------------------

#[pb::remote]
pub trait TwPinger {
    async fn ping(&self, x: i64) -> i64;
}

#[pb::remote]
pub trait TwCallsBack {
    /// Calls `r.ping(0)` and answers what it answered.
    async fn call_back(&self, r: TwPingerRef) -> Result<i64, pb::twisted::Failure>;
}

struct TheTwCallsBack;

impl TwCallsBack for TheTwCallsBack {
    async fn call_back(&self, r: TwPingerRef) -> Result<i64, pb::twisted::Failure> {
        r.ping(0)
            .await
            .map_err(|e| pb::twisted::Failure::pb_error(format!("the callback failed: {e}")))
    }
}

/// A Twisted PB server (1 call at a time, `max_call_bytes` 1 MiB) whose handler calls the raw
/// peer back (the peer never answers, so the server reads on at the cap, holding the rest
/// back); then `messages` messages made by `one(i)`. Returns the heap growth and the bytes
/// taken in.
async fn flood_held_twisted_messages(
    messages: usize,
    one: impl Fn(usize) -> pb::proto::banana::Element,
) -> (i64, usize) {
    use bytes::BytesMut;
    use pb::proto::banana::{BananaCodec, BananaConfig, Dialect, Element};
    use pb::twisted::PbConfig;
    let mut enc = BananaCodec::new(BananaConfig::default());
    enc.set_dialect(Dialect::Pb);
    let mut flood = BytesMut::new();
    for i in 0..messages {
        enc.encode(&one(i), &mut flood).unwrap();
    }
    let (a, mut io) = tokio::io::duplex(64 * 1024);
    let region = Region::new(GLOBAL);
    let config = PbConfig::default()
        .max_in_flight_calls(1)
        .max_call_bytes(1024 * 1024);
    let server = pb::twisted::accept_io(
        a,
        None,
        Some(TwCallsBackRef::new(TheTwCallsBack).into()),
        config,
    );
    // The dialect: the server's offer, our choice, our version.
    let mut dec = BananaCodec::new(BananaConfig::default());
    let mut buf = BytesMut::new();
    let offer = loop {
        if let Some(e) = dec.decode(&mut buf).unwrap() {
            break e;
        }
        io.read_buf(&mut buf).await.unwrap();
    };
    assert_eq!(Dialect::choose(&offer), Some(Dialect::Pb));
    let mut out = BytesMut::new();
    let plain = BananaCodec::new(BananaConfig::default());
    plain.encode(&Element::from("pb"), &mut out).unwrap();
    dec.set_dialect(Dialect::Pb);
    enc.encode(&Element::List(vec!["version".into(), 6.into()]), &mut out)
        .unwrap();
    // call_back(our object 1): the server calls us back and waits for our answer.
    enc.encode(
        &Element::List(vec![
            "message".into(),
            1.into(),
            "root".into(),
            "call_back".into(),
            1.into(),
            Element::List(vec![
                "tuple".into(),
                Element::List(vec!["remote".into(), 1.into()]),
            ]),
            Element::List(vec!["dictionary".into()]),
        ]),
        &mut out,
    )
    .unwrap();
    io.write_all(&out).await.unwrap();
    // Its callback to us: `["message", id, 1, "ping", ...]`.
    loop {
        if let Some(e) = dec.decode(&mut buf).unwrap() {
            let l = e.as_list().unwrap();
            if l[0].as_bytes().map(|b| &b[..]) == Some(b"message") {
                break;
            }
            continue;
        }
        io.read_buf(&mut buf).await.unwrap();
    }
    let mut written = 0;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for chunk in flood.chunks(4096) {
            io.write_all(chunk).await.unwrap();
            written += chunk.len();
        }
    })
    .await;
    let grew = heap_growth(&region);
    assert!(!server.is_closed(), "{:?}", server.close_reason());
    drop(io);
    drop(server);
    (grew, written)
}

/// A call to the root whose one argument is a list of 100 000 small integers: ~200 KB of
/// Banana, ~5 MB of decoded elements.
fn ints(i: usize) -> pb::proto::banana::Element {
    use pb::proto::banana::Element;
    let mut list = vec![Element::from("list")];
    list.extend((0..100_000).map(|_| Element::Int(1)));
    Element::List(vec![
        "message".into(),
        Element::Int(i as i64 + 2),
        "root".into(),
        "call_back".into(),
        1.into(),
        Element::List(vec!["tuple".into(), Element::List(list)]),
        Element::List(vec!["dictionary".into()]),
    ])
}

/// The control: the same wire size as one string.
fn one_string(i: usize) -> pb::proto::banana::Element {
    use pb::proto::banana::Element;
    Element::List(vec![
        "message".into(),
        Element::Int(i as i64 + 2),
        "root".into(),
        "call_back".into(),
        1.into(),
        Element::List(vec![
            "tuple".into(),
            Element::Bytes(bytes::Bytes::from(vec![b'x'; 200_000])),
        ]),
        Element::List(vec!["dictionary".into()]),
    ])
}

/// `PbConfig::max_call_bytes` bounds what the messages held back at the cap keep in memory
/// (while our calls await answers, the reader reads on and holds all but the answers): each
/// is kept as Banana bytes of its own and decoded again when it runs. Kept decoded, an
/// integer of 2 bytes on the wire took a 40-byte element, and lists of 100 000 small
/// integers held about 30 MiB under a 1 MiB limit. The control: the same bytes as strings.
#[test]
fn held_twisted_messages_hold_about_what_max_call_bytes_counts() {
    alone(async {
        let (control, control_read) = flood_held_twisted_messages(20, one_string).await;
        let (grew, read) = flood_held_twisted_messages(20, ints).await;
        println!(
            "Twisted PB: lists of 100 000 ints: heap +{} KiB, {} KiB taken in; one 200 KB \
             string each (control): +{} KiB, {} KiB taken in",
            grew / 1024,
            read / 1024,
            control / 1024,
            control_read / 1024
        );
        // max_call_bytes (1 MiB) + one message over it (200 KB) + the pipe, buffers, slack
        // (2 MiB).
        for (grew, what) in [(control, "strings"), (grew, "lists of ints")] {
            assert!(
                grew < 3 * 1024 * 1024 + 200_000,
                "{what}: messages held back at the cap, counted against max_call_bytes = \
                 1 MiB, hold {} KiB",
                grew / 1024
            );
        }
    });
}
