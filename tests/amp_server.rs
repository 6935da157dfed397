//! The pb AMP server over real TCP, spoken to in raw bytes: exact answer bytes, and malformed
//! input that must close that one connection cleanly while the server keeps serving others.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pb::amp::{AmpBox, AmpConfig, AmpConnection, BoxCodec, BytesMut, Locator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

#[derive(pb::AmpCommand)]
#[amp(requires_answer = false)]
struct Notify {
    msg: String,
}

/// A bound so that a regression fails instead of hanging; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

async fn server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(pb::amp::serve(listener, AmpConfig::default(), |_| {
        Locator::new()
            .respond(|Sum { a, b }| async move { Ok(SumResult { total: a + b }) })
            .respond(|Notify { msg: _ }| async { Ok(()) })
    }));
    port
}

/// Reads until the peer closes; returns everything it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .expect("the connection closed cleanly, without a reset");
    out
}

fn decode_all(bytes: &[u8]) -> Vec<AmpBox> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = BoxCodec::default();
    let mut boxes = Vec::new();
    while let Some(b) = codec.decode(&mut buf).unwrap() {
        boxes.push(b);
    }
    assert!(buf.is_empty(), "trailing bytes: {buf:?}");
    boxes
}

const SUM_ASK: &[u8] = b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x03Sum\x00\x01a\x00\x0213\x00\x01b\x00\x0281\x00\x00";
const SUM_ANSWER: &[u8] = b"\x00\x07_answer\x00\x011\x00\x05total\x00\x0294\x00\x00";

async fn ask_sum_raw(port: u16) -> Vec<u8> {
    ask_sum_on(port).await.1
}

/// As [`ask_sum_raw`], keeping the connection open.
async fn ask_sum_on(port: u16) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(SUM_ASK).await.unwrap();
    let mut answer = vec![0; SUM_ANSWER.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    (s, answer)
}

#[tokio::test]
async fn answers_the_captured_ask_with_the_captured_bytes() {
    let port = server().await;
    assert_eq!(ask_sum_raw(port).await, SUM_ANSWER);
}

#[tokio::test]
async fn answers_any_tag_and_ignores_extra_keys() {
    let port = server().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut ask = AmpBox::new();
    for (k, v) in [
        ("_ask", "ab"),
        ("_command", "Sum"),
        ("a", "2"),
        ("b", "3"),
        ("extra", "x"),
    ] {
        ask.insert(k, v);
    }
    s.write_all(&ask.to_bytes().unwrap()).await.unwrap();
    s.shutdown().await.unwrap();
    let boxes = decode_all(&read_to_close(&mut s).await);
    let want: AmpBox = [("_answer", "ab"), ("total", "5")].into_iter().collect();
    assert_eq!(boxes, vec![want]);
}

#[tokio::test]
async fn unknown_command_is_unhandled_and_the_connection_stays() {
    let port = server().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"\x00\x04_ask\x00\x014\x00\x08_command\x00\x09NoSuchCmd\x00\x00")
        .await
        .unwrap();
    s.write_all(SUM_ASK).await.unwrap();
    s.shutdown().await.unwrap();
    let boxes = decode_all(&read_to_close(&mut s).await);
    let unhandled: AmpBox = [
        ("_error", "4"),
        ("_error_code", "UNHANDLED"),
        ("_error_description", "Unhandled Command: b'NoSuchCmd'"),
    ]
    .into_iter()
    .collect();
    assert_eq!(boxes.len(), 2, "{boxes:?}");
    assert!(boxes.contains(&unhandled), "{boxes:?}");
    assert!(boxes.contains(&decode_all(SUM_ANSWER)[0]), "{boxes:?}");
}

/// Each malformed input, and what the server sends before closing (nothing, or UNKNOWN).
const MALFORMED: &[(&str, &[u8], Option<&str>)] = &[
    ("key length prefix 256", b"\x01\x00", None),
    ("key length prefix 256 after a pair", b"\x00\x01a\x00\x011\x01\x00", None),
    ("key length prefix 65535", b"\xff\xff", None),
    ("empty box", b"\x00\x00", None),
    ("box with no special key", b"\x00\x01a\x00\x011\x00\x00", None),
    ("answer for an unknown tag", b"\x00\x07_answer\x00\x03999\x00\x00", None),
    ("error for an unknown tag", b"\x00\x06_error\x00\x03999\x00\x0b_error_code\x00\x01X\x00\x00", None),
    ("unknown command without _ask", b"\x00\x08_command\x00\x09NoSuchCmd\x00\x00", None),
    (
        "missing argument",
        b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x03Sum\x00\x01a\x00\x011\x00\x00",
        Some("1"),
    ),
    (
        "bad integer",
        b"\x00\x04_ask\x00\x012\x00\x08_command\x00\x03Sum\x00\x01a\x00\x01x\x00\x01b\x00\x011\x00\x00",
        Some("2"),
    ),
    (
        "integer too wide for i64",
        b"\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x1499999999999999999999\x00\x01b\x00\x011\x00\x00",
        Some("3"),
    ),
    (
        "bad utf-8 in a no-answer command",
        b"\x00\x08_command\x00\x06Notify\x00\x03msg\x00\x02\xff\xfe\x00\x00",
        None,
    ),
];

#[tokio::test]
async fn malformed_input_closes_that_connection_and_others_are_served() {
    let port = server().await;
    // A connection that stays open across all the bad ones.
    let good = AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), Locator::new())
        .await
        .unwrap();
    for (what, bytes, unknown_tag) in MALFORMED {
        let mut bad = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        bad.write_all(bytes).await.unwrap();
        let sent = read_to_close(&mut bad).await;
        match unknown_tag {
            None => assert!(sent.is_empty(), "{what}: the server answered {sent:?}"),
            Some(tag) => {
                let want: AmpBox = [
                    ("_error", *tag),
                    ("_error_code", "UNKNOWN"),
                    ("_error_description", "Unknown Error"),
                ]
                .into_iter()
                .collect();
                assert_eq!(decode_all(&sent), vec![want], "{what}");
            }
        }
        assert_eq!(
            good.call(&Sum { a: 1, b: 2 }).await.unwrap().total,
            3,
            "after {what}"
        );
        assert_eq!(
            ask_sum_raw(port).await,
            SUM_ANSWER,
            "a new connection after {what}"
        );
    }
}

#[tokio::test]
async fn oversized_box_is_refused_before_it_arrives() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = AmpConfig::default().codec(pb::amp::BoxCodecConfig::default().max_box_bytes(1000));
    tokio::spawn(pb::amp::serve(listener, config, |_| Locator::new()));
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Only the header of a 65 535-byte value: the claimed length alone is over the limit.
    s.write_all(b"\x00\x01a\xff\xff").await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_and_the_server_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = AmpConfig::default().max_connections(2);
    tokio::spawn(pb::amp::serve(listener, config, |_| {
        Locator::new().respond(|Sum { a, b }| async move { Ok(SumResult { total: a + b }) })
    }));
    let mut held = Vec::new();
    for _ in 0..2 {
        // Answered: the connection is open and served.
        let (s, answer) = ask_sum_on(port).await;
        assert_eq!(answer, SUM_ANSWER);
        held.push(s);
    }
    // The third is closed at once, unanswered.
    let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = third.write_all(SUM_ASK).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, third.read_to_end(&mut out))
        .await
        .expect("the server closes the connection over its limit");
    assert!(read.is_err() || out.is_empty(), "no answer over the limit");
    // Once one closes, a new connection is served again (retried until the server has seen
    // the close: the slot frees when the server notices it).
    drop(held.pop());
    let served = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            if s.write_all(SUM_ASK).await.is_err() {
                continue;
            }
            let mut answer = vec![0; SUM_ANSWER.len()];
            if s.read_exact(&mut answer).await.is_ok() {
                return answer;
            }
        }
    })
    .await
    .expect("a connection is served once a slot is free");
    assert_eq!(served, SUM_ANSWER);
}

const AMP_FD_CHILD: &str = "PB_AMP_FD_CHILD";

/// Not a test of its own: run as a child process, under a limit of 64 file descriptors, by
/// `the_server_outlives_running_out_of_file_descriptors`. It serves AMP, opens connections to
/// itself until it runs out of descriptors (so the server's accept fails for want of one),
/// frees some, and checks that the server is still serving.
#[tokio::test(flavor = "current_thread")]
#[ignore = "run as a child process by the_server_outlives_running_out_of_file_descriptors"]
async fn amp_child_under_a_low_descriptor_limit() {
    if std::env::var(AMP_FD_CHILD).is_err() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = tokio::spawn(pb::amp::serve(listener, AmpConfig::default(), |_| {
        Locator::new().respond(|Sum { a, b }| async move { Ok(SumResult { total: a + b }) })
    }));
    let mut held = Vec::new();
    let mut exhausted = false;
    for _ in 0..200 {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => held.push(s),
            Err(_) => {
                exhausted = true;
                break;
            }
        }
        // Let the server accept what is waiting.
        tokio::task::yield_now().await;
    }
    assert!(exhausted, "the descriptor limit was reached");
    // The server's accept meets the shortage too (connections wait in the backlog).
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !served.is_finished(),
        "the server gave up when descriptors ran out"
    );
    held.clear();
    assert_eq!(ask_sum_raw(port).await, SUM_ANSWER);
    assert!(!served.is_finished());
    println!("AMP-FD-OK");
}

#[tokio::test]
async fn the_server_outlives_running_out_of_file_descriptors() {
    let exe = std::env::current_exe().unwrap();
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" --exact amp_child_under_a_low_descriptor_limit --ignored --nocapture")
        .arg(exe)
        .env(AMP_FD_CHILD, "1")
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the child finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("AMP-FD-OK"),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_amp_slot() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = AmpConfig::default()
        .max_connections(3)
        .max_connections_per_address(1);
    tokio::spawn(pb::amp::serve(listener, config, |_| {
        Locator::new().respond(|Sum { a, b }| async move { Ok(SumResult { total: a + b }) })
    }));
    // One from 127.0.0.1 is served and held.
    let (_held, answer) = ask_sum_on(port).await;
    assert_eq!(answer, SUM_ANSWER);
    // A second from the same address is closed at once, unanswered.
    let mut second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = second.write_all(SUM_ASK).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, second.read_to_end(&mut out))
        .await
        .expect("the server closes the connection over its limit");
    assert!(read.is_err() || out.is_empty(), "no answer over the limit");
    // Another address still gets a slot.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    other.write_all(SUM_ASK).await.unwrap();
    let mut answer = vec![0; SUM_ANSWER.len()];
    tokio::time::timeout(PATIENCE, other.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, SUM_ANSWER);
}
