//! The handshake: a version mismatch is a clear error on both sides, never a hang.

use bytes::BytesMut;
use pb::proto::handshake::{HandshakeError, Hello};
use pb::{CallError, CloseReason, ConnectError, Connection, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn version_mismatch_is_an_error_on_both_sides() {
    let (ours, mut theirs) = pb::transport::memory_pair();
    // The peer speaks a future version 9.
    let peer = tokio::spawn(async move {
        theirs.write_all(&version_9_hello()).await.unwrap();
        let mut got = [0u8; 20];
        theirs.read_exact(&mut got).await.unwrap();
        let our_hello = Hello::decode(&got[4..]).unwrap();
        Hello {
            version: 9,
            ..our_hello
        }
        .negotiate(&our_hello)
    });
    let r = Connection::establish(ours, &pb::Config::default(), Side::Client, None, None).await;
    match r {
        Err(ConnectError::Handshake(HandshakeError::VersionMismatch { ours: 1, theirs: 9 })) => {}
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    // The peer, reading our hello, sees the mismatch too.
    assert_eq!(
        peer.await.unwrap(),
        Err(HandshakeError::VersionMismatch { ours: 9, theirs: 1 })
    );
    let e = ConnectError::Handshake(HandshakeError::VersionMismatch { ours: 1, theirs: 9 });
    let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        text.contains("we speak version 1, the peer speaks version 9"),
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
    let mut got = [0u8; 20];
    theirs.read_exact(&mut got).await.unwrap();
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
            why.contains("we speak version 1, the peer speaks version 9"),
            "{why}"
        ),
        other => panic!("expected a handshake error, got {other:?}"),
    }
    conn.closed().await;
    assert_eq!(
        conn.close_reason(),
        Some(CloseReason::Handshake(HandshakeError::VersionMismatch {
            ours: 1,
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
    let mut hello = [0u8; 20];
    theirs.read_exact(&mut hello).await.unwrap();
    assert_eq!(
        Hello::decode(&hello[4..]).unwrap(),
        Hello::ours(Default::default())
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
