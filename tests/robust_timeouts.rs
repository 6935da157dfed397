//! Keep-alive, idle timeout and half-open detection, in virtual time.

mod common;

use common::raw_peer;

use std::time::Duration;

use common::*;
use pb::{CloseReason, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

async fn read_frame(s: &mut DuplexStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

#[tokio::test(start_paused = true)]
async fn a_quiet_healthy_connection_is_kept_alive_by_pings() {
    let (server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let before = client.stats().bytes_in;
    // Ten idle minutes: many times the idle timeout, and no call at all.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!client.is_closed() && !server.is_closed());
    assert!(client.stats().bytes_in > before, "pings and pongs crossed");
    let k: KitchenRef = client.root();
    assert_eq!(k.add(2, 3).await, Ok(5));
}

#[tokio::test(start_paused = true)]
async fn a_long_call_on_a_healthy_connection_is_not_cut() {
    let (_server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = client.root();
    // Five virtual minutes of waiting for an answer: the peer answers pings meanwhile.
    assert_eq!(k.echo_after(7, 300_000).await, Ok(7));
    assert!(!client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_half_open_peer_is_pinged_then_closed() {
    let config = Config::default();
    let (server, mut peer) = raw_peer(config).await;
    let started = Instant::now();
    // The peer stays silent: after keepalive_interval the server pings it...
    assert_eq!(read_frame(&mut peer).await, vec![9, 1], "ping, nonce 1");
    assert!(started.elapsed() >= Duration::from_secs(20));
    // ... and, with no answer, closes at idle_timeout.
    server.closed().await;
    assert!(started.elapsed() >= Duration::from_secs(60));
    assert_eq!(
        server.close_reason(),
        Some(CloseReason::IdleTimeout(Duration::from_secs(60)))
    );
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "nothing after the ping but the close");
}

#[tokio::test(start_paused = true)]
async fn a_raw_peer_that_answers_pings_stays_connected() {
    let (server, mut peer) = raw_peer(Config::default()).await;
    let responder = tokio::spawn(async move {
        let mut pongs = 0u32;
        loop {
            let f = read_frame(&mut peer).await;
            assert_eq!(f.first(), Some(&9), "only pings arrive");
            let mut pong = f.clone();
            pong[0] = 10;
            let mut out = (pong.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&pong);
            peer.write_all(&out).await.unwrap();
            pongs += 1;
            if pongs == 15 {
                return (pongs, peer);
            }
        }
    });
    let (pongs, _peer) = responder.await.unwrap();
    assert_eq!(pongs, 15);
    assert!(
        !server.is_closed(),
        "15 pings at 20 s each: 5 minutes, kept"
    );
}

/// Slowloris after the handshake: a frame trickles in one byte a second. Bytes that never make
/// a complete frame are not a sign of life, so `idle_timeout` cuts the peer.
#[tokio::test(start_paused = true)]
async fn one_byte_a_second_after_the_handshake_is_cut_by_the_idle_timeout() {
    let (server, peer) = raw_peer(Config::default()).await;
    let (mut rd, mut wr) = tokio::io::split(peer);
    let drain = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
    });
    let trickle = tokio::spawn(async move {
        let mut sent = 0u32;
        // A header announcing 1000 bytes, then the body one byte at a time.
        for byte in [0u8, 0, 3, 0xe8].into_iter().chain(std::iter::repeat(1)) {
            if wr.write_all(&[byte]).await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sent
    });
    let started = Instant::now();
    server.closed().await;
    assert_eq!(
        server.close_reason(),
        Some(CloseReason::IdleTimeout(Duration::from_secs(60)))
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    let sent = trickle.await.unwrap();
    assert!(
        (50..200).contains(&sent),
        "{sent} bytes trickled before the cut"
    );
    drain.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timeouts_can_be_switched_off() {
    let config = Config {
        keepalive_interval: None,
        idle_timeout: None,
        ..Config::default()
    };
    let (server, mut peer) = raw_peer(config).await;
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(3600), peer.read(&mut buf)).await;
    assert!(r.is_err(), "no ping and no close in an hour");
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn keepalive_and_idle_timeout_are_configurable() {
    let config = Config {
        keepalive_interval: Some(Duration::from_secs(2)),
        idle_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let (server, mut peer) = raw_peer(config).await;
    let started = Instant::now();
    assert_eq!(read_frame(&mut peer).await, vec![9, 1]);
    server.closed().await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(60));
    assert_eq!(
        server.close_reason(),
        Some(CloseReason::IdleTimeout(Duration::from_secs(5)))
    );
}
