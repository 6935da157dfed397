//! The handshake: a version mismatch is a clear error on both sides, never a hang.

use bytes::BytesMut;
use pb::proto::handshake::{
    Features, HELLO_LEN, HELLO_WINDOW_LEN, HandshakeError, Hello, PROTOCOL_VERSION, ReceiveLimits,
};
use pb::{CallError, CloseReason, ConnectError, Connection, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Read one hello frame, whatever its length; returns its body.
async fn read_hello_body(io: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    io.read_exact(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn version_mismatch_is_an_error_on_both_sides() {
    let (ours, mut theirs) = pb::transport::memory_pair();
    // The peer speaks a future version 9.
    let peer = tokio::spawn(async move {
        theirs.write_all(&version_9_hello()).await.unwrap();
        let our_hello = Hello::decode(&read_hello_body(&mut theirs).await).unwrap();
        Hello {
            version: 9,
            ..our_hello
        }
        .negotiate(&our_hello)
    });
    let r = Connection::establish(ours, &pb::Config::default(), Side::Client, None, None).await;
    match r {
        Err(ConnectError::Handshake(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 9,
        })) => {}
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    // The peer, reading our hello, sees the mismatch too.
    assert_eq!(
        peer.await.unwrap(),
        Err(HandshakeError::VersionMismatch {
            ours: 9,
            theirs: PROTOCOL_VERSION
        })
    );
    let e = ConnectError::Handshake(HandshakeError::VersionMismatch {
        ours: PROTOCOL_VERSION,
        theirs: 9,
    });
    let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        text.contains(&format!(
            "we speak version {PROTOCOL_VERSION}, the peer speaks version 9"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_peer_that_is_not_pb_is_told_apart() {
    let (ours, mut theirs) = pb::transport::memory_pair();
    tokio::spawn(async move {
        theirs
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = theirs.read_to_end(&mut sink).await;
    });
    let r = Connection::establish(ours, &pb::Config::default(), Side::Client, None, None).await;
    assert!(
        matches!(
            r,
            Err(ConnectError::Handshake(HandshakeError::BadMagic { .. }))
        ),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out() {
    let (ours, _theirs) = pb::transport::memory_pair();
    let r = Connection::establish(ours, &pb::Config::default(), Side::Client, None, None).await;
    assert!(matches!(r, Err(ConnectError::Timeout(_))), "{r:?}");
}

/// A framed hello of a future version 9.
fn version_9_hello() -> BytesMut {
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&16u32.to_be_bytes());
    Hello {
        version: 9,
        ..Hello::ours(Default::default())
    }
    .encode(&mut frame);
    frame
}

/// A peer that answers our hello with a hello of version 9, after reading ours.
async fn version_9_peer(mut theirs: tokio::io::DuplexStream) {
    read_hello_body(&mut theirs).await;
    theirs.write_all(&version_9_hello()).await.unwrap();
    let mut sink = Vec::new();
    let _ = theirs.read_to_end(&mut sink).await;
}

#[tokio::test]
async fn a_dialed_connection_fails_its_calls_with_the_handshake_error() {
    let (ours, theirs) = pb::transport::memory_pair();
    tokio::spawn(version_9_peer(theirs));
    // `dial` returns before the peer's hello: the mismatch is not its error.
    let conn = Connection::dial(ours, &pb::Config::default(), None, None)
        .await
        .expect("dial does not wait for the peer's hello");
    // A call made before the peer's hello arrives is pending when it does, and fails with it.
    let r = conn.root_ref().call::<_, u64, ()>("echo", &(1u64,)).await;
    match r {
        Err(CallError::Handshake(why)) => assert!(
            why.contains(&format!(
                "we speak version {PROTOCOL_VERSION}, the peer speaks version 9"
            )),
            "{why}"
        ),
        other => panic!(
            "expected a handshake error, got {other:?} ({:?})",
            conn.close_reason()
        ),
    }
    conn.closed().await;
    assert_eq!(
        conn.close_reason(),
        Some(CloseReason::Handshake(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 9
        }))
    );
    // A call made after fails at once with the same error.
    let r = conn.root_ref().call::<_, u64, ()>("echo", &(2u64,)).await;
    assert!(matches!(r, Err(CallError::Handshake(_))), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dialed_connection_to_a_silent_peer_times_out() {
    let (ours, _theirs) = pb::transport::memory_pair();
    let config = pb::Config::default();
    let conn = Connection::dial(ours, &config, None, None).await.unwrap();
    conn.closed().await;
    assert_eq!(
        conn.close_reason(),
        Some(CloseReason::IdleTimeout(config.handshake_timeout))
    );
}

#[tokio::test]
async fn a_dialed_connection_sends_its_hello_before_its_first_call() {
    let (ours, mut theirs) = pb::transport::memory_pair();
    let conn = Connection::dial(ours, &pb::Config::default(), None, None)
        .await
        .unwrap();
    let root = conn.root_ref();
    let call = tokio::spawn(async move { root.call::<_, u64, ()>("echo", &(7u64,)).await });
    // The hello comes first, then the call, without the peer having said anything yet.
    let hello = read_hello_body(&mut theirs).await;
    assert_eq!(hello.len(), HELLO_WINDOW_LEN);
    assert_eq!(
        Hello::decode(&hello).unwrap(),
        Hello::ours(pb::Config::default().features)
            .with_limits(pb::Config::default().limits.receive())
    );
    let mut header = [0u8; 4];
    theirs.read_exact(&mut header).await.unwrap();
    assert!(u32::from_be_bytes(header) > 0, "a call frame follows");
    drop(theirs);
    assert!(call.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_server_whose_reader_has_not_run_yet_still_sends_its_hello() {
    // The server's hello must not wait for the reader it hands back: a caller that finishes
    // both ends' handshakes before running the reader would otherwise wait for nothing.
    let (a, b) = pb::transport::memory_pair();
    let config = pb::Config::default();
    let server = Connection::establish_with_reader(a, &config, pb::Side::Server, None, None);
    let client = Connection::establish(b, &config, pb::Side::Client, None, None);
    let (server, client) = tokio::join!(server, client);
    let (_server, reader) = server.expect("the server's handshake");
    client.expect("the client gets the server's hello before the server's reader runs");
    drop(reader);
}

#[tokio::test]
async fn the_hello_carries_our_limits_raised_to_the_floor() {
    let (ours, mut theirs) = pb::transport::memory_pair();
    let mut config = pb::Config::default();
    config.limits.max_frame_len = 100;
    config.limits.message.max_refs_per_message = 2;
    config.limits.message.max_release_entries = 5000;
    let _conn = Connection::dial(ours, &config, None, None).await.unwrap();
    let hello = Hello::decode(&read_hello_body(&mut theirs).await).unwrap();
    assert!(hello.features.contains(Features::LIMITS));
    assert_eq!(
        hello.limits,
        Some(ReceiveLimits {
            max_frame_len: 64 * 1024,
            max_refs_per_message: 16,
            max_release_entries: 5000,
            max_call_bytes: Some(pb::proto::limits::DEFAULT_MAX_CALL_BYTES),
        })
    );
}

#[tokio::test]
async fn a_server_tells_its_limits_only_to_a_dialer_that_tells_its_own() {
    let mut config = pb::Config::default();
    config.limits.max_frame_len = 100 * 1024;
    for with_limits in [false, true] {
        let (a, mut dialer) = pb::transport::memory_pair();
        let mut hello = Hello::ours(Features::NONE);
        if with_limits {
            hello = hello.with_limits(pb::Config::default().limits.receive());
        }
        let mut out = BytesMut::new();
        out.extend_from_slice(&(hello.encoded_len() as u32).to_be_bytes());
        hello.encode(&mut out);
        dialer.write_all(&out).await.unwrap();
        let _server = Connection::establish(a, &config, Side::Server, None, None)
            .await
            .expect("a hello with or without limits is accepted");
        let answer = read_hello_body(&mut dialer).await;
        if with_limits {
            let limits = Hello::decode(&answer).unwrap().limits.unwrap();
            assert_eq!(limits.max_frame_len, 100 * 1024);
        } else {
            // Exactly the hello a build from before limits reads (which ignores flags it
            // does not know).
            assert_eq!(answer.len(), HELLO_LEN);
            assert_eq!(
                Hello::decode(&answer).unwrap(),
                Hello::ours(pb::Config::default().features)
            );
        }
    }
}

#[tokio::test]
async fn dialing_a_server_that_closes_without_a_hello_is_a_handshake_error() {
    // A server that is not pb (or refuses us): it accepts, then closes without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        drop(s);
    });
    let conn = pb::Client::connect(addr).await.unwrap();
    let r = conn.root_ref().call::<_, u64, ()>("echo", &(1u64,)).await;
    match r {
        Err(CallError::Handshake(m)) => {
            assert!(m.contains("before its pb hello"), "{m}")
        }
        other => panic!(
            "expected a handshake error, got {other:?} ({:?})",
            conn.close_reason()
        ),
    }
    assert_eq!(
        conn.close_reason(),
        Some(CloseReason::Handshake(HandshakeError::ClosedBeforeHello))
    );
}

#[test]
fn connect_errors_say_their_cause() {
    let e = ConnectError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ));
    assert_eq!(e.to_string(), "i/o error: connection refused");
    let e = ConnectError::Handshake(HandshakeError::ClosedBeforeHello);
    assert!(
        e.to_string()
            .starts_with("pb handshake failed: the peer closed"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_large_call_waiting_for_the_peers_hello_fails_when_the_connection_closes() {
    let (ours, _theirs) = pb::transport::memory_pair();
    let conn = Connection::dial(ours, &pb::Config::default(), None, None)
        .await
        .unwrap();
    // Over the limits every peer accepts: it waits for the peer's, which never come.
    let root = conn.root_ref();
    let call =
        tokio::spawn(async move { root.call::<_, u64, ()>("len", &(vec![0u8; 100_000],)).await });
    tokio::task::yield_now().await;
    conn.abort();
    // Well before the handshake timeout would close the connection anyway.
    let r = tokio::time::timeout(std::time::Duration::from_secs(1), call)
        .await
        .expect("the close wakes the call")
        .unwrap();
    assert!(r.is_err(), "{r:?}");
}
