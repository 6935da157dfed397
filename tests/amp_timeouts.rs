//! AMP's timeouts, in virtual time: a connection on which no complete box arrives for
//! `idle_timeout` is closed (a box trickled in byte by byte does not count), an active one never
//! is, `None` turns it off, and a StartTLS handshake that does not finish is cut at
//! `tls_handshake_timeout`.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

mod common;

use common::tls_configs;

use std::time::Duration;

use pb::amp::{AmpCallError, AmpConfig, AmpConnection, DisconnectReason, Locator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(pb::AmpCommand)]
#[amp(response = SumResult)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(pb::AmpFields)]
struct SumResult {
    total: i64,
}

/// A bound so that a regression fails instead of hanging (virtual time: it costs nothing).
const PATIENCE: Duration = Duration::from_secs(3600);
const IDLE: Duration = Duration::from_secs(60);

const SUM_ASK: &[u8] = b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x03Sum\x00\x01a\x00\x0213\x00\x01b\x00\x0281\x00\x00";
const SUM_ANSWER: &[u8] = b"\x00\x07_answer\x00\x011\x00\x05total\x00\x0294\x00\x00";

fn math() -> Locator {
    Locator::new().respond(|Sum { a, b }| async move { Ok(SumResult { total: a + b }) })
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_by_the_server_which_serves_the_others() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(pb::amp::serve(listener, AmpConfig::default(), |_| math()));
    let start = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut active = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let silent_closed = async {
        let mut out = Vec::new();
        tokio::time::timeout(PATIENCE, silent.read_to_end(&mut out))
            .await
            .expect("the server closes the silent connection")
            .unwrap();
        assert!(out.is_empty(), "nothing was asked, nothing is answered");
        start.elapsed()
    };
    // One box every 20 s, for longer than the timeout several times over.
    let keep_asking = async {
        for _ in 0..10 {
            ask_sum(&mut active).await;
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    };
    let (after, ()) = tokio::join!(silent_closed, keep_asking);
    assert!(
        after >= IDLE && after < IDLE + Duration::from_secs(1),
        "closed after {after:?}, not at the default idle timeout of 60 s"
    );
    // Still served, and so is a new connection.
    ask_sum(&mut active).await;
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    ask_sum(&mut fresh).await;
}

#[tokio::test(start_paused = true)]
async fn a_box_trickled_in_byte_by_byte_does_not_keep_a_connection_alive() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn(a, AmpConfig::default(), math());
    let start = Instant::now();
    // One byte every 5 s: the box would be complete after more than five minutes.
    let trickle = async {
        for byte in SUM_ASK {
            if b.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    let closed = async {
        let reason = tokio::time::timeout(PATIENCE, server.closed())
            .await
            .expect("the trickling connection is closed");
        (reason, start.elapsed())
    };
    let ((reason, after), ()) = tokio::join!(closed, trickle);
    assert_eq!(reason, DisconnectReason::IdleTimeout(IDLE));
    assert!(
        after >= IDLE && after < IDLE + Duration::from_secs(1),
        "closed after {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_active_connection_is_never_cut() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn(a, AmpConfig::default(), math());
    let client = AmpConnection::spawn(b, AmpConfig::default(), Locator::new());
    // Ten minutes, a call every 50 s: each side gets a box (ask or answer) within the timeout.
    for i in 0..12 {
        assert_eq!(client.call(&Sum { a: i, b: 1 }).await.unwrap().total, i + 1);
        tokio::time::sleep(Duration::from_secs(50)).await;
    }
    assert!(!server.is_closed() && !client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_tls_handshake_that_never_finishes_is_cut() {
    let (server_tls, _) = tls_configs();
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn(a, AmpConfig::default().tls_server(server_tls), math());
    let start = Instant::now();
    b.write_all(b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x08StartTLS\x00\x00")
        .await
        .unwrap();
    let answer = b"\x00\x07_answer\x00\x011\x00\x00";
    let mut got = vec![0; answer.len()];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(got, answer);
    // No ClientHello follows: the server waits for it only so long.
    let reason = tokio::time::timeout(PATIENCE, server.closed())
        .await
        .expect("the stalled handshake is cut");
    let after = start.elapsed();
    assert_eq!(
        reason,
        DisconnectReason::TlsHandshakeTimeout(Duration::from_secs(10))
    );
    assert!(
        after >= Duration::from_secs(10) && after < Duration::from_secs(11),
        "closed after {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_whose_server_never_shakes_hands_gives_up() {
    let (_, client_tls) = tls_configs();
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let client = AmpConnection::spawn(a, AmpConfig::default(), Locator::new());
    let start = Instant::now();
    let name = pb::amp::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // The raw peer agrees to StartTLS, then never answers the ClientHello.
    let peer = async {
        let ask = b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x08StartTLS\x00\x00";
        let mut got = vec![0; ask.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ask);
        b.write_all(b"\x00\x07_answer\x00\x011\x00\x00")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = b.read_to_end(&mut rest).await;
    };
    let (tls, ()) = tokio::join!(client.start_tls(client_tls, name), peer);
    let limit = Duration::from_secs(10);
    assert_eq!(
        tls,
        Err(AmpCallError::Disconnected(
            DisconnectReason::TlsHandshakeTimeout(limit)
        ))
    );
    assert!(start.elapsed() >= limit && start.elapsed() < limit + Duration::from_secs(1));
}

#[derive(pb::AmpCommand)]
#[amp(response = ())]
struct Wait {}

#[tokio::test(start_paused = true)]
async fn calls_awaiting_answers_fail_when_the_peer_says_nothing_for_the_idle_timeout() {
    // The peer takes the ask in and never answers (as a peer gone without a FIN would).
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let client = AmpConnection::spawn(a, AmpConfig::default(), Locator::new());
    let start = Instant::now();
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.call(&Wait {}).await }
    });
    let mut sink = Vec::new();
    let swallow = tokio::time::timeout(PATIENCE, b.read_to_end(&mut sink));
    let (swallowed, called) = tokio::join!(swallow, call);
    let err = called.unwrap().unwrap_err();
    assert_eq!(
        err,
        AmpCallError::Disconnected(DisconnectReason::IdleTimeout(IDLE))
    );
    assert_eq!(
        err.to_string(),
        "disconnected",
        "the reason is the source, not repeated"
    );
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "no complete box from the peer within idle_timeout = 60s"
    );
    assert!(start.elapsed() >= IDLE && start.elapsed() < IDLE + Duration::from_secs(1));
    swallowed.expect("the connection was closed").unwrap();
    assert!(client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_responder_still_running_for_the_peer_keeps_the_connection() {
    // A responder that takes five minutes: the peer waits for us, which is not its idleness.
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn(
        a,
        AmpConfig::default(),
        Locator::new().respond(|Wait {}| async {
            tokio::time::sleep(Duration::from_secs(300)).await;
            Ok(())
        }),
    );
    // The caller waits longer than its own idle timeout on purpose.
    let client = AmpConnection::spawn(
        b,
        AmpConfig::default().idle_timeout(Some(Duration::from_secs(600))),
        Locator::new(),
    );
    let start = Instant::now();
    client.call(&Wait {}).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(300));
    // Idle from the answer on: closed a full timeout later, not at once.
    let reason = tokio::time::timeout(PATIENCE, server.closed())
        .await
        .unwrap();
    assert_eq!(reason, DisconnectReason::IdleTimeout(IDLE));
    let after = start.elapsed();
    assert!(
        after >= Duration::from_secs(360) && after < Duration::from_secs(361),
        "closed after {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn none_turns_the_idle_timeout_off() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let off = AmpConfig::default().idle_timeout(None);
    let server = AmpConnection::spawn(a, off.clone(), math());
    let client = AmpConnection::spawn(b, off, Locator::new());
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    assert!(!server.is_closed() && !client.is_closed());
    assert_eq!(client.call(&Sum { a: 1, b: 2 }).await.unwrap().total, 3);
}

#[tokio::test(start_paused = true)]
async fn a_custom_idle_timeout_is_kept() {
    let (a, _b) = tokio::io::duplex(64 * 1024);
    let after = Duration::from_secs(5);
    let server = AmpConnection::spawn(a, AmpConfig::default().idle_timeout(Some(after)), math());
    let start = Instant::now();
    let reason = tokio::time::timeout(PATIENCE, server.closed())
        .await
        .unwrap();
    assert_eq!(reason, DisconnectReason::IdleTimeout(after));
    assert!(start.elapsed() >= after && start.elapsed() < after + Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn start_tls_keeps_the_idle_timeout_afterwards() {
    let (server_tls, client_tls) = tls_configs();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn(a, AmpConfig::default().tls_server(server_tls), math());
    // The client waits longer, so that the server is the one to close.
    let patient = AmpConfig::default().idle_timeout(Some(Duration::from_secs(600)));
    let client = AmpConnection::spawn(b, patient, Locator::new());
    let name = pb::amp::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    client.start_tls(client_tls, name).await.unwrap();
    let start = Instant::now();
    assert_eq!(client.call(&Sum { a: 1, b: 2 }).await.unwrap().total, 3);
    // Quiet from here on, over TLS.
    let reason = tokio::time::timeout(PATIENCE, server.closed())
        .await
        .unwrap();
    assert_eq!(reason, DisconnectReason::IdleTimeout(IDLE));
    assert!(start.elapsed() >= IDLE && start.elapsed() < IDLE + Duration::from_secs(1));
    // A peer that can still read is told cleanly (a close_notify, then the end of the stream).
    assert_eq!(client.closed().await, DisconnectReason::PeerClosed);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_asks_and_never_reads_is_closed_when_output_stalls() {
    let (server_end, mut peer) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn(server_end, AmpConfig::default(), math());
    let start = Instant::now();
    // Asks without end, never reading an answer.
    tokio::spawn(async move {
        while peer.write_all(SUM_ASK).await.is_ok() {}
        // Keep the peer's end open (unread) until the server gives up.
        std::future::pending::<()>().await;
    });
    let reason = tokio::time::timeout(PATIENCE, server.closed())
        .await
        .expect("the server closes the connection");
    let stall = pb_proto_stall();
    assert_eq!(reason, DisconnectReason::WriteStalled(stall));
    let after = start.elapsed();
    assert!(
        after >= stall && after <= 2 * stall + Duration::from_secs(1),
        "closed after {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_not_a_stalled_one_and_none_turns_it_off() {
    for config in [
        AmpConfig::default(),
        AmpConfig::default().write_stall_timeout(None),
    ] {
        let slow = config.write_stall_timeout.is_some();
        let (server_end, peer) = tokio::io::duplex(64 * 1024);
        let server = AmpConnection::spawn(server_end, config, math());
        let (mut rd, mut wr) = tokio::io::split(peer);
        tokio::spawn(async move { while wr.write_all(SUM_ASK).await.is_ok() {} });
        if slow {
            // Reads a little every 50 s: progress within every period.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                let mut buf = [0u8; 1024];
                rd.read_exact(&mut buf).await.unwrap();
            }
        } else {
            // Never reads, and the connection stays all the same.
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        assert!(!server.is_closed());
    }
}

/// A slow reader behind a transport that buffers (as TLS does): every write goes into the
/// transport's buffer at once and only its flush waits. Flushes make progress a kilobyte at a
/// time, which is no stall.
#[tokio::test(start_paused = true)]
async fn a_slow_reader_behind_a_buffering_transport_is_not_a_stalled_one() {
    let (server_end, peer) = tokio::io::duplex(1024);
    let server = AmpConnection::spawn(
        tokio::io::BufWriter::with_capacity(64 * 1024, server_end),
        AmpConfig::default().idle_timeout(None),
        math(),
    );
    let (mut rd, mut wr) = tokio::io::split(peer);
    // One batch of asks (about 40 KiB of answers), then a kilobyte read every 50 s.
    wr.write_all(&SUM_ASK.repeat(1000)).await.unwrap();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(50)).await;
        let mut buf = [0u8; 1024];
        rd.read_exact(&mut buf).await.unwrap();
        assert!(!server.is_closed());
    }
}

/// After a long spell with nothing to write (the write-stall timer not polled, its deadline
/// long past) and an idle timer that will not fire for an hour, a peer that floods asks and
/// never reads is still cut within one to two periods.
#[tokio::test(start_paused = true)]
async fn a_stall_after_a_quiet_spell_is_found_within_two_periods() {
    for quiet in [1, 59, 61, 600].map(Duration::from_secs) {
        let (server_end, mut peer) = tokio::io::duplex(64 * 1024);
        let server = AmpConnection::spawn(
            server_end,
            AmpConfig::default().idle_timeout(Some(PATIENCE)),
            math(),
        );
        ask_sum(&mut peer).await;
        tokio::time::sleep(quiet).await;
        let start = Instant::now();
        let flood = tokio::spawn(async move {
            while peer.write_all(SUM_ASK).await.is_ok() {}
            std::future::pending::<()>().await;
        });
        let reason = tokio::time::timeout(PATIENCE, server.closed())
            .await
            .expect("the server closes the connection");
        let (stall, after) = (pb_proto_stall(), start.elapsed());
        assert_eq!(
            reason,
            DisconnectReason::WriteStalled(stall),
            "quiet {quiet:?}"
        );
        assert!(
            after >= stall && after <= 2 * stall + Duration::from_secs(1),
            "quiet {quiet:?}: closed after {after:?}"
        );
        flood.abort();
    }
}

/// Asks `Sum` in raw bytes on `s` and checks the answer.
async fn ask_sum<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S) {
    s.write_all(SUM_ASK).await.unwrap();
    let mut answer = vec![0; SUM_ANSWER.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut answer))
        .await
        .expect("the server answers")
        .unwrap();
    assert_eq!(answer, SUM_ANSWER);
}

fn pb_proto_stall() -> Duration {
    AmpConfig::default()
        .write_stall_timeout
        .expect("a default write-stall timeout")
}

#[derive(pb::AmpCommand)]
#[amp(response = SumResult)]
struct Hold {
    data: String,
}

/// A box asking `Hold` with `len` bytes of data, as a raw peer writes it.
fn hold_ask(tag: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let tag = tag.to_string();
    let data = "x".repeat(len);
    for (k, v) in [
        ("_ask", tag.as_str()),
        ("_command", "Hold"),
        ("data", &data),
    ] {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&[0, 0]);
    out
}

#[tokio::test(start_paused = true)]
async fn large_commands_stop_reading_at_max_responder_bytes_and_all_run_in_the_end() {
    // Responders that wait for the test's word: 20 commands of 60 000 bytes, against a cap
    // of 256 KiB of boxes of running responders.
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let go = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let locator = {
        let (started, go) = (started.clone(), go.clone());
        Locator::new().respond(move |Hold { data }| {
            let (started, go) = (started.clone(), go.clone());
            async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                go.acquire().await.unwrap().forget();
                Ok(SumResult {
                    total: data.len() as i64,
                })
            }
        })
    };
    let (a, mut b) = tokio::io::duplex(4 << 20);
    let config = AmpConfig::default()
        .max_responder_bytes(256 * 1024)
        .idle_timeout(None);
    let _server = AmpConnection::spawn(a, config, locator);
    let flood: Vec<u8> = (1..=20).flat_map(|tag| hold_ask(tag, 60_000)).collect();
    b.write_all(&flood).await.unwrap();
    let running = || started.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Four boxes hold 240 000 bytes, under the cap: a fifth starts, then reading stops.
    assert_eq!(running(), 5, "reading stopped at the byte cap");
    go.add_permits(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running(), 6, "one ended, one more started");
    go.add_permits(100);
    // Every command is answered, in the end.
    let mut answers = Vec::new();
    let mut buf = vec![0; 1 << 16];
    while answers.windows(7).filter(|w| w == b"_answer").count() < 20 {
        let n = tokio::time::timeout(PATIENCE, b.read(&mut buf))
            .await
            .expect("the answers come")
            .unwrap();
        assert!(n > 0, "the server closed");
        answers.extend_from_slice(&buf[..n]);
    }
    assert_eq!(running(), 20);
}
