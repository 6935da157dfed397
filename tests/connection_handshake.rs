//! The handshake: a version mismatch is a clear error on both sides, never a hang.

use bytes::BytesMut;
use pb::pb_core::handshake::{HandshakeError, Hello};
use pb::{ConnectError, Connection, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn version_mismatch_is_an_error_on_both_sides() {
    let (ours, mut theirs) = pb::transport::memory_pair();
    // The peer speaks a future version 9.
    let peer = tokio::spawn(async move {
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&16u32.to_be_bytes());
        Hello {
            version: 9,
            ..Hello::ours(Default::default())
        }
        .encode(&mut frame);
        theirs.write_all(&frame).await.unwrap();
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
