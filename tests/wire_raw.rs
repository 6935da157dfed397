//! Raw bytes to a real server over TCP: the exact bytes of a call and its answer, and hostile
//! input that must close only the offending connection while the server keeps serving.

mod common;

use common::{HELLO, SERVER_HELLO};

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server(max_frame_len: usize) -> pb::ServerHandle {
    let mut config = pb::Config::default();
    config.limits.max_frame_len = max_frame_len;
    pb::Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::new(KitchenImpl::default()))
}

/// Connect and complete the handshake by hand; returns the socket.
async fn raw(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&HELLO).await.unwrap();
    let mut got = [0u8; 20];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, SERVER_HELLO, "the server's hello");
    s
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

/// The server closed the connection: a read sees EOF (or a reset), within a bounded wait.
async fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    match r {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

/// `add(40, 2)` on the root, request id 1, in pb's wire format.
fn add_call(id: u8) -> Vec<u8> {
    // tag, flags(answer), id, target(root), method len, method, refs count, payload (bincode
    // varint zigzag: 40 -> 0x50, 2 -> 0x04)
    let mut b = vec![1, 1, id, 0, 3];
    b.extend_from_slice(b"add");
    b.extend_from_slice(&[0, 0x50, 0x04]);
    b
}

async fn still_serving(addr: SocketAddr) {
    let conn = pb::Client::connect(addr).await.unwrap();
    let k: KitchenRef = conn.root();
    assert_eq!(k.add(1, 2).await, Ok(3));
    conn.close().await;
}

#[tokio::test]
async fn a_call_and_its_answer_byte_for_byte() {
    let server = server(1 << 20).await;
    let mut s = raw(server.local_addr()).await;
    s.write_all(&frame(&add_call(1))).await.unwrap();
    // tag answer, id 1, outcome ok, no refs, payload zigzag(42) = 0x54
    assert_eq!(read_frame(&mut s).await, vec![2, 1, 0, 0, 0x54]);
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_object_gets_a_fault_and_the_connection_keeps_working() {
    let server = server(1 << 20).await;
    let mut s = raw(server.local_addr()).await;
    let mut call = add_call(5);
    call[3] = 99; // target object 99, never exported
    s.write_all(&frame(&call)).await.unwrap();
    let fault = read_frame(&mut s).await;
    assert_eq!(&fault[..3], &[3, 5, 1], "fault, id 5, kind no-such-object");
    assert!(String::from_utf8_lossy(&fault[4..]).contains("no object 99"));
    s.write_all(&frame(&add_call(6))).await.unwrap();
    assert_eq!(read_frame(&mut s).await, vec![2, 6, 0, 0, 0x54]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_length_prefix_over_the_limit_closes_only_that_connection() {
    let server = server(1 << 20).await;
    let addr = server.local_addr();
    for claim in [(1u32 << 20) + 1, u32::MAX] {
        let mut s = raw(addr).await;
        // Only the header arrives: the server must refuse at once, before any body, and
        // without reserving the claimed size (the decoder grows its buffer only with bytes
        // that actually arrive; see pb_core::frame's tests).
        s.write_all(&claim.to_be_bytes()).await.unwrap();
        expect_closed(&mut s).await;
        still_serving(addr).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_frames_close_cleanly_and_the_server_keeps_serving() {
    let server = server(1 << 20).await;
    let addr = server.local_addr();
    let garbage: [&[u8]; 5] = [
        &[0xee, 1, 2, 3],          // unknown message tag
        &[1, 1],                   // truncated call
        &[1, 1, 1, 0, 0x80, 0x02], // method name longer than allowed
        &[
            5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ], // varint overflow
        &[1, 1, 1, 0, 2, 0xc3, 0x28, 0], // method name not UTF-8
    ];
    for body in garbage {
        let mut s = raw(addr).await;
        s.write_all(&frame(body)).await.unwrap();
        expect_closed(&mut s).await;
    }
    // Undecodable arguments are the call's problem, not the connection's: an error answer.
    let mut s = raw(addr).await;
    let mut call = add_call(7);
    call.truncate(call.len() - 2);
    call.push(0xff); // not a valid bincode i64 pair
    s.write_all(&frame(&call)).await.unwrap();
    let fault = read_frame(&mut s).await;
    assert_eq!(&fault[..3], &[3, 7, 3], "fault, id 7, kind bad-arguments");
    s.write_all(&frame(&add_call(8))).await.unwrap();
    assert_eq!(read_frame(&mut s).await, vec![2, 8, 0, 0, 0x54]);
    still_serving(addr).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_is_not_pb_is_dropped() {
    let server = server(1 << 20).await;
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut hello = [0u8; 20];
    s.read_exact(&mut hello).await.unwrap();
    assert_eq!(hello, SERVER_HELLO);
    expect_closed(&mut s).await;
    still_serving(addr).await;
    server.shutdown().await;
}
