//! Malformed and hostile input as raw bytes to a real TCP server: truncated, oversized, wrong
//! version, unknown message kinds, object ids never given, methods not in the interface, deep
//! nesting. The server answers with a fault or closes the offending connection cleanly, and a
//! healthy client connected all along keeps being served.

mod common;

use common::{HELLO, SERVER_HELLO};

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Leaf,
    Node(Box<Value>),
}

#[pb::remote]
pub trait Shop {
    async fn add(&self, a: i64, b: i64) -> Result<i64, String>;
    /// A new object, exported to the caller only.
    async fn open(&self) -> Result<ShopRef, String>;
    async fn depth(&self, v: Value) -> Result<u32, String>;
    async fn hang(&self) -> Result<(), String>;
}

struct ShopImpl;

impl Shop for ShopImpl {
    async fn add(&self, a: i64, b: i64) -> Result<i64, String> {
        Ok(a + b)
    }
    async fn open(&self) -> Result<ShopRef, String> {
        Ok(ShopRef::new(ShopImpl))
    }
    async fn depth(&self, v: Value) -> Result<u32, String> {
        let mut n = 0;
        let mut at = &v;
        while let Value::Node(inner) = at {
            n += 1;
            at = inner;
        }
        Ok(n)
    }
    async fn hang(&self) -> Result<(), String> {
        std::future::pending().await
    }
}

const NO_SUCH_OBJECT: u8 = 1;
const NO_SUCH_METHOD: u8 = 2;
const BAD_ARGUMENTS: u8 = 3;

struct Fixture {
    server: pb::ServerHandle,
    /// A well-behaved client, connected before any hostile input and checked after each.
    healthy: pb::Connection,
}

impl Fixture {
    async fn new() -> Fixture {
        // Each connection gets a root of its own, as each login gets an avatar.
        let server = pb::Server::bind("127.0.0.1:0")
            .await
            .unwrap()
            .serve_with(|_| ShopRef::new(ShopImpl));
        let healthy = pb::Client::connect(server.local_addr()).await.unwrap();
        Fixture { server, healthy }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    async fn check_healthy(&self) {
        let shop: ShopRef = self.healthy.root();
        assert_eq!(shop.add(20, 22).await, Ok(42));
        assert!(!self.healthy.is_closed());
    }

    async fn finish(self) {
        self.check_healthy().await;
        self.healthy.close().await;
        self.server.shutdown().await;
    }
}

async fn raw(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&HELLO).await.unwrap();
    let mut got = [0u8; 20];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, SERVER_HELLO);
    s
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A call body: id, target, method, reference descriptors (kind, id), payload.
fn call(id: u64, target: u64, method: &str, refs: &[(u8, u64)], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![1, 1];
    varint(id, &mut b);
    varint(target, &mut b);
    varint(method.len() as u64, &mut b);
    b.extend_from_slice(method.as_bytes());
    varint(refs.len() as u64, &mut b);
    for &(kind, rid) in refs {
        b.push(kind);
        varint(rid, &mut b);
    }
    b.extend_from_slice(payload);
    b
}

/// `add(1, 2)` (bincode zigzag varints).
fn add(id: u64, target: u64) -> Vec<u8> {
    call(id, target, "add", &[], &[2, 4])
}

async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len))
        .await
        .expect("an answer in time")
        .unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

/// The answer to `add(1, 2)` with request id `id` (< 128).
fn three(id: u8) -> Vec<u8> {
    vec![2, id, 0, 0, 6]
}

/// A fault for request `id` (< 128) of `kind`; returns its text.
async fn expect_fault(s: &mut TcpStream, id: u8, kind: u8) -> String {
    let f = read_frame(s).await;
    assert_eq!(f.get(..3), Some(&[3, id, kind][..]), "fault frame {f:?}");
    String::from_utf8_lossy(f.get(4..).unwrap_or_default()).into_owned()
}

async fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // answers to earlier frames may still come first
            Err(_) => panic!("the server did not close the connection"),
        }
    }
}

#[tokio::test]
async fn truncated_messages_close_cleanly() {
    let fx = Fixture::new().await;
    let whole = call(1, 0, "add", &[(0, 1)], &[2, 4]);
    // Every proper prefix of the envelope (up to the payload) is a truncated message.
    for cut in 1..whole.len() - 2 {
        let mut s = raw(fx.addr()).await;
        s.write_all(&frame(&whole[..cut])).await.unwrap();
        expect_closed(&mut s).await;
    }
    // A frame whose body never arrives, then EOF.
    let mut s = raw(fx.addr()).await;
    s.write_all(&[0, 0, 0, 40, 1, 1]).await.unwrap();
    s.shutdown().await.unwrap();
    expect_closed(&mut s).await;
    fx.finish().await;
}

#[tokio::test]
async fn oversized_frames_close_before_the_body() {
    let fx = Fixture::new().await;
    for claim in [16 * 1024 * 1024 + 1, u32::MAX] {
        let mut s = raw(fx.addr()).await;
        s.write_all(&u32::to_be_bytes(claim)).await.unwrap();
        expect_closed(&mut s).await;
        fx.check_healthy().await;
    }
    fx.finish().await;
}

#[tokio::test]
async fn a_wrong_version_or_magic_is_refused() {
    let fx = Fixture::new().await;
    for hello in [
        {
            let mut h = HELLO;
            h[9] += 1; // the version after ours
            h
        },
        {
            let mut h = HELLO;
            h[4] = b'X'; // magic
            h
        },
    ] {
        let mut s = TcpStream::connect(fx.addr()).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let mut theirs = [0u8; 20];
        s.read_exact(&mut theirs).await.unwrap();
        assert_eq!(
            theirs, SERVER_HELLO,
            "the server says who it is, then closes"
        );
        expect_closed(&mut s).await;
        fx.check_healthy().await;
    }
    fx.finish().await;
}

#[tokio::test]
async fn unknown_message_kinds_close_cleanly() {
    let fx = Fixture::new().await;
    for tag in [0u8, 12, 13, 127, 200, 255] {
        let mut s = raw(fx.addr()).await;
        s.write_all(&frame(&add(1, 0))).await.unwrap();
        assert_eq!(read_frame(&mut s).await, three(1));
        s.write_all(&frame(&[tag, 1, 2, 3])).await.unwrap();
        expect_closed(&mut s).await;
    }
    fx.finish().await;
}

#[tokio::test]
async fn object_ids_never_given_are_refused_and_connections_cannot_reach_each_other() {
    let fx = Fixture::new().await;
    // The healthy client holds an object: id 1 on its own connection.
    let shop: ShopRef = fx.healthy.root();
    let opened = shop.open().await.unwrap();
    assert_eq!(opened.add(1, 1).await, Ok(2));
    let mut s = raw(fx.addr()).await;
    for (i, target) in [1u64, 2, 3, 1000, u64::MAX].into_iter().enumerate() {
        let id = i as u8 + 1;
        s.write_all(&frame(&add(u64::from(id), target)))
            .await
            .unwrap();
        let text = expect_fault(&mut s, id, NO_SUCH_OBJECT).await;
        assert!(text.contains(&format!("no object {target}")), "{text}");
    }
    // Our own object 1 is a different object, and only ours.
    s.write_all(&frame(&call(10, 0, "open", &[], &[])))
        .await
        .unwrap();
    let answer = read_frame(&mut s).await;
    assert_eq!(
        answer,
        vec![2, 10, 0, 1, 0, 1, 0],
        "answer carrying sender object 1"
    );
    s.write_all(&frame(&add(11, 1))).await.unwrap();
    assert_eq!(read_frame(&mut s).await, three(11));
    // A reference that claims to be one of the server's objects it never exported.
    s.write_all(&frame(&call(12, 0, "add", &[(1, 77)], &[2, 4])))
        .await
        .unwrap();
    let text = expect_fault(&mut s, 12, NO_SUCH_OBJECT).await;
    assert!(text.contains("never exported"), "{text}");
    // The connection still serves.
    s.write_all(&frame(&add(13, 0))).await.unwrap();
    assert_eq!(read_frame(&mut s).await, three(13));
    assert_eq!(opened.add(2, 2).await, Ok(4));
    fx.finish().await;
}

#[tokio::test]
async fn methods_not_in_the_interface_cannot_be_called() {
    let fx = Fixture::new().await;
    let mut s = raw(fx.addr()).await;
    let long = "m".repeat(255);
    let names = [
        "drop_all",
        "",
        "new",
        "from_arc",
        "object_ref",
        "ADD",
        long.as_str(),
    ];
    for (i, name) in names.into_iter().enumerate() {
        let id = i as u8 + 1;
        s.write_all(&frame(&call(u64::from(id), 0, name, &[], &[])))
            .await
            .unwrap();
        let text = expect_fault(&mut s, id, NO_SUCH_METHOD).await;
        assert!(text.contains("has no method"), "{text}");
    }
    s.write_all(&frame(&add(20, 0))).await.unwrap();
    assert_eq!(read_frame(&mut s).await, three(20));
    fx.finish().await;
}

#[tokio::test]
async fn deep_nesting_gets_an_error_answer() {
    let fx = Fixture::new().await;
    let mut s = raw(fx.addr()).await;
    let mut payload = vec![1u8; 30_000];
    payload.push(0);
    s.write_all(&frame(&call(1, 0, "depth", &[], &payload)))
        .await
        .unwrap();
    let text = expect_fault(&mut s, 1, BAD_ARGUMENTS).await;
    assert!(text.contains("max_depth = 128"), "{text}");
    let mut shallow = vec![1u8; 50];
    shallow.push(0);
    s.write_all(&frame(&call(2, 0, "depth", &[], &shallow)))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await, vec![2, 2, 0, 0, 50]);
    fx.finish().await;
}

#[tokio::test]
async fn a_request_id_reused_while_in_flight_closes_the_connection() {
    let fx = Fixture::new().await;
    let mut s = raw(fx.addr()).await;
    s.write_all(&frame(&call(5, 0, "hang", &[], &[])))
        .await
        .unwrap();
    s.write_all(&frame(&call(5, 0, "hang", &[], &[])))
        .await
        .unwrap();
    expect_closed(&mut s).await;
    fx.finish().await;
}

#[tokio::test]
async fn garbage_arguments_get_an_error_answer() {
    let fx = Fixture::new().await;
    let mut s = raw(fx.addr()).await;
    let cases: [&[u8]; 4] = [&[], &[2], &[2, 4, 9], &[0xff; 12]];
    for (i, payload) in cases.into_iter().enumerate() {
        let id = i as u8 + 1;
        s.write_all(&frame(&call(u64::from(id), 0, "add", &[], payload)))
            .await
            .unwrap();
        expect_fault(&mut s, id, BAD_ARGUMENTS).await;
    }
    s.write_all(&frame(&add(9, 0))).await.unwrap();
    assert_eq!(read_frame(&mut s).await, three(9));
    fx.finish().await;
}
