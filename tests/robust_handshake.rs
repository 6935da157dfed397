//! Hostile handshakes over an in-memory pipe: each is a clean error, never a panic or a hang.

mod common;

use common::{HELLO, SERVER_HELLO};

use std::time::Duration;

use pb::proto::handshake::{HandshakeError, PROTOCOL_VERSION};
use pb::{Config, ConnectError, Connection, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Run the server side of a handshake against `bytes` written by a raw peer, which then waits.
async fn server_sees(bytes: &[u8]) -> Result<Connection, ConnectError> {
    let (a, mut b) = pb::transport::memory_pair();
    let bytes = bytes.to_vec();
    let peer = tokio::spawn(async move {
        b.write_all(&bytes).await.unwrap();
        b.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let _ = b.read_to_end(&mut sink).await;
        sink
    });
    let r = Connection::establish(a, &Config::default(), Side::Server, None, None).await;
    if let Ok(c) = &r {
        c.abort();
    }
    let sent = peer.await.unwrap();
    assert_eq!(
        &sent[..20],
        &SERVER_HELLO,
        "the server sends its hello first, whatever comes"
    );
    r
}

/// Regression (found by the `connection` fuzz target): a hello header followed by a wrong magic
/// used to slice past the end of the received bytes and panic.
#[tokio::test(start_paused = true)]
async fn a_hello_header_with_a_wrong_magic_is_an_error_not_a_panic() {
    let r = server_sees(&[0, 0, 0, 16, 0, 0, 0, 0, 0x0b]).await;
    assert!(
        matches!(
            r,
            Err(ConnectError::Handshake(HandshakeError::BadMagic {
                magic: [0, 0, 0, 0]
            }))
        ),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_hellos_are_clean_errors() {
    // A header length no hello has, right magic: longer than the longest, shorter than the
    // shortest.
    for len in [65u8, 15] {
        let mut wrong = HELLO.to_vec();
        wrong[3] = len;
        wrong.resize(4 + usize::from(len), 0);
        assert!(matches!(
            server_sees(&wrong).await,
            Err(ConnectError::Handshake(HandshakeError::BadMagic { .. }))
        ));
    }
    // The limits flag, without the limits it announces.
    let mut short = HELLO;
    short[19] = 1;
    assert!(matches!(
        server_sees(&short).await,
        Err(ConnectError::Handshake(HandshakeError::Malformed {
            len: 16
        }))
    ));
    // Bytes past what the flags announce are for later extensions: ignored.
    let mut long = HELLO.to_vec();
    long[3] = 17;
    long.push(0);
    assert!(server_sees(&long).await.is_ok());
    // Another protocol version: the one before ours, and the one after.
    for theirs in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
        let mut other = HELLO;
        other[8..10].copy_from_slice(&theirs.to_be_bytes());
        let seen = server_sees(&other).await;
        assert!(
            matches!(
                seen,
                Err(ConnectError::Handshake(HandshakeError::VersionMismatch { ours, theirs: t }))
                    if ours == PROTOCOL_VERSION && t == theirs
            ),
            "{seen:?}"
        );
    }
    // Truncated, then closed.
    assert!(matches!(
        server_sees(&HELLO[..11]).await,
        Err(ConnectError::Closed)
    ));
    // Nothing at all.
    assert!(matches!(server_sees(&[]).await, Err(ConnectError::Closed)));
    // A real hello works.
    assert!(server_sees(&HELLO).await.is_ok());
}

/// Write all but the last byte of a hello, one byte a second, then hold the pipe open saying
/// nothing more.
async fn trickle_hello<S: AsyncRead + AsyncWrite + Unpin>(mut b: S) {
    for byte in HELLO.iter().take(19) {
        if b.write_all(&[*byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut sink = Vec::new();
    let _ = b.read_to_end(&mut sink).await;
}

/// Slowloris during the handshake: one byte a second. The handshake deadline is a total
/// deadline, not one per read, so the trickle is cut at `handshake_timeout`.
#[tokio::test(start_paused = true)]
async fn one_byte_a_second_is_cut_by_the_handshake_deadline() {
    let (a, b) = pb::transport::memory_pair();
    let trickle = tokio::spawn(trickle_hello(b));
    let config = Config {
        handshake_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let started = tokio::time::Instant::now();
    let r = Connection::establish(a, &config, Side::Server, None, None).await;
    assert!(
        matches!(r, Err(ConnectError::Timeout(d)) if d == Duration::from_secs(5)),
        "{r:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5), "virtual time");
    trickle.abort();
}

/// The accepting side speaks second: its hello answers the dialer's (so that it can go out with
/// the first answer), and nothing comes before.
#[tokio::test(start_paused = true)]
async fn the_accepting_side_answers_the_dialers_hello() {
    let (a, mut b) = pb::transport::memory_pair();
    let server = tokio::spawn(async move {
        Connection::establish(a, &Config::default(), Side::Server, None, None).await
    });
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(1), b.read(&mut first)).await;
    assert!(
        early.is_err(),
        "nothing before the dialer's hello: {early:?}"
    );
    b.write_all(&HELLO).await.unwrap();
    let mut hello = [0u8; 20];
    b.read_exact(&mut hello).await.unwrap();
    assert_eq!(hello, SERVER_HELLO);
    server.await.unwrap().unwrap().abort();
}

/// A dialed connection checks the peer's hello in its reader, after `dial` returned: a trickled
/// hello is cut at `handshake_timeout` all the same, with pings and idle timers configured
/// shorter or longer than it.
#[tokio::test(start_paused = true)]
async fn a_dialed_connection_cuts_a_trickled_hello_at_the_handshake_deadline() {
    for (keepalive, idle) in [
        (None, None),
        (Some(Duration::from_secs(1)), None),
        (Some(Duration::from_secs(2)), Some(Duration::from_secs(60))),
    ] {
        let (a, b) = pb::transport::memory_pair();
        let trickle = tokio::spawn(trickle_hello(b));
        let config = Config {
            handshake_timeout: Duration::from_secs(5),
            keepalive_interval: keepalive,
            idle_timeout: idle,
            ..Config::default()
        };
        let started = tokio::time::Instant::now();
        let conn = Connection::dial(a, &config, None, None).await.unwrap();
        conn.closed().await;
        assert_eq!(
            conn.close_reason(),
            Some(pb::CloseReason::IdleTimeout(Duration::from_secs(5))),
            "keepalive {keepalive:?}, idle {idle:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5), "virtual time");
        trickle.abort();
    }
}

/// A dialed connection to a peer that answers with something else than a pb hello, or a hello
/// with a body pb cannot take, fails at once with the handshake error.
#[tokio::test(start_paused = true)]
async fn a_dialed_connection_refuses_a_bad_hello_at_once() {
    let mut bad_version = HELLO;
    bad_version[9] = 9;
    for bytes in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        &HELLO[..4],
        &bad_version[..],
    ] {
        let (a, mut b) = pb::transport::memory_pair();
        let sent = bytes.to_vec();
        let peer = tokio::spawn(async move {
            b.write_all(&sent).await.unwrap();
            let mut sink = Vec::new();
            let _ = b.read_to_end(&mut sink).await;
        });
        let started = tokio::time::Instant::now();
        let conn = Connection::dial(a, &Config::default(), None, None)
            .await
            .unwrap();
        conn.closed().await;
        let reason = conn.close_reason();
        if bytes.len() == 4 {
            // Too short to tell: the handshake deadline ends it.
            assert_eq!(
                reason,
                Some(pb::CloseReason::IdleTimeout(
                    Config::default().handshake_timeout
                ))
            );
        } else {
            assert!(
                matches!(reason, Some(pb::CloseReason::Handshake(_))),
                "{reason:?}"
            );
            assert_eq!(started.elapsed(), Duration::ZERO, "at once");
        }
        peer.abort();
    }
}
