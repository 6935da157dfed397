//! An interface exercising the argument and return types the tests need, and helpers to
//! connect a client and a server over the in-memory transport or TCP.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use pb::{Caller, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub name: String,
    pub points: Vec<Point>,
    pub tags: BTreeMap<String, u8>,
    pub kind: Kind,
    pub note: Option<String>,
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Open,
    Closed { filled: bool },
    Weighted(f64),
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum TestError {
    Negative(i64),
    Refused { reason: String },
}

#[pb::remote]
pub trait Kitchen {
    async fn add(&self, a: i64, b: i64) -> Result<i64, TestError>;
    async fn neg(&self, a: i8) -> Result<i128, TestError>;
    async fn shout(&self, s: String) -> Result<String, TestError>;
    async fn reverse(&self, b: Vec<u8>) -> Result<Vec<u8>, TestError>;
    async fn sum(&self, v: Vec<u32>) -> Result<u64, TestError>;
    async fn centroid(&self, shape: Shape) -> Result<Option<Point>, TestError>;
    async fn flip(&self, k: Kind) -> Result<Kind, TestError>;
    async fn maybe(&self, v: Option<u16>) -> Result<Option<u16>, TestError>;
    async fn sqrt(&self, v: i64) -> Result<f64, TestError>;
    async fn unit(&self) -> Result<(), TestError>;
    /// Answers `v` after `delay_ms` milliseconds (virtual time in tests).
    async fn echo_after(&self, v: u64, delay_ms: u64) -> Result<u64, TestError>;
    /// Never answers.
    async fn hang(&self) -> Result<(), TestError>;
    async fn whoami(&self, caller: Caller) -> Result<String, TestError>;
    /// Answers `v` once the test opens the gate (`KitchenImpl::gate`).
    async fn gated(&self, v: u64) -> Result<u64, TestError>;
}

pub struct KitchenImpl {
    pub calls: Mutex<u64>,
    pub gate: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Default for KitchenImpl {
    fn default() -> Self {
        KitchenImpl {
            calls: Mutex::new(0),
            gate: std::sync::Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl Kitchen for KitchenImpl {
    async fn add(&self, a: i64, b: i64) -> Result<i64, TestError> {
        *self.calls.lock().unwrap() += 1;
        Ok(a + b)
    }
    async fn neg(&self, a: i8) -> Result<i128, TestError> {
        Ok(-(a as i128))
    }
    async fn shout(&self, s: String) -> Result<String, TestError> {
        Ok(s.to_uppercase())
    }
    async fn reverse(&self, mut b: Vec<u8>) -> Result<Vec<u8>, TestError> {
        b.reverse();
        Ok(b)
    }
    async fn sum(&self, v: Vec<u32>) -> Result<u64, TestError> {
        Ok(v.iter().map(|&x| x as u64).sum())
    }
    async fn centroid(&self, shape: Shape) -> Result<Option<Point>, TestError> {
        if shape.points.is_empty() {
            return Ok(None);
        }
        let n = shape.points.len() as i32;
        let (sx, sy) = shape
            .points
            .iter()
            .fold((0, 0), |(x, y), p| (x + p.x, y + p.y));
        Ok(Some(Point {
            x: sx / n,
            y: sy / n,
        }))
    }
    async fn flip(&self, k: Kind) -> Result<Kind, TestError> {
        Ok(match k {
            Kind::Open => Kind::Closed { filled: true },
            Kind::Closed { .. } => Kind::Open,
            Kind::Weighted(w) => Kind::Weighted(-w),
        })
    }
    async fn maybe(&self, v: Option<u16>) -> Result<Option<u16>, TestError> {
        Ok(v.map(|x| x.wrapping_mul(2)))
    }
    async fn sqrt(&self, v: i64) -> Result<f64, TestError> {
        if v < 0 {
            return Err(TestError::Negative(v));
        }
        Ok((v as f64).sqrt())
    }
    async fn unit(&self) -> Result<(), TestError> {
        Ok(())
    }
    async fn echo_after(&self, v: u64, delay_ms: u64) -> Result<u64, TestError> {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        Ok(v)
    }
    async fn hang(&self) -> Result<(), TestError> {
        std::future::pending().await
    }
    async fn whoami(&self, caller: Caller) -> Result<String, TestError> {
        Ok(match caller.connection() {
            Some(c) => format!("connection {}", c.id()),
            None => "local".into(),
        })
    }
    async fn gated(&self, v: u64) -> Result<u64, TestError> {
        let permit = self.gate.acquire().await.map_err(|_| TestError::Refused {
            reason: "gate closed".into(),
        })?;
        permit.forget();
        Ok(v)
    }
}

/// A server connection and a client connection joined by an in-memory pipe; the server serves
/// `root`.
pub async fn memory_pair(root: impl Into<pb::ObjectRef>) -> (Connection, Connection) {
    memory_pair_with(root, pb::Config::default()).await
}

pub async fn memory_pair_with(
    root: impl Into<pb::ObjectRef>,
    config: pb::Config,
) -> (Connection, Connection) {
    memory_pair_configs(root, &config, &config).await
}

/// As [`memory_pair_with`], each end with a config of its own.
pub async fn memory_pair_configs(
    root: impl Into<pb::ObjectRef>,
    server: &pb::Config,
    client: &pb::Config,
) -> (Connection, Connection) {
    let (a, b) = pb::transport::memory_pair();
    let server = Connection::establish(a, server, pb::Side::Server, Some(root.into()), None);
    let client = Connection::establish(b, client, pb::Side::Client, None, None);
    tokio::try_join!(server, client).expect("handshake over an in-memory pipe")
}

/// The default config, but for the frames it accepts: at most `max_frame_len` bytes.
pub fn frames_of(max_frame_len: usize) -> pb::Config {
    pb::Config {
        limits: pb::Limits {
            max_frame_len,
            ..pb::Limits::default()
        },
        ..pb::Config::default()
    }
}

/// Yield to the runtime until `f` holds, at most a bounded number of times; returns whether it
/// held. Used to let releases and other one-way messages be processed, without sleeping.
pub async fn settle(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if f() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    f()
}

/// A TCP server on 127.0.0.1 serving `root`, and a client connected to it.
pub async fn tcp_pair(root: impl Into<pb::ObjectRef>) -> (pb::ServerHandle, Connection) {
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .serve(root);
    let conn = pb::Client::connect(server.local_addr())
        .await
        .expect("connect");
    (server, conn)
}

/// Read a whole hello frame (header included) from a pb peer that dialed or established as
/// the client: its hello carries its limits, so its length is read from its header.
pub async fn read_hello_frame(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut frame = vec![0u8; 4];
    io.read_exact(&mut frame).await.unwrap();
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert!((16..=64).contains(&len), "a hello of {len} bytes");
    frame.resize(4 + len, 0);
    io.read_exact(&mut frame[4..]).await.unwrap();
    frame
}

/// Read one frame from a raw peer's end of a connection: its body.
pub async fn read_body(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    io.read_exact(&mut body).await?;
    Ok(body)
}

/// A hello frame without limits, as a raw peer (or a build from before limits were carried)
/// sends it, and as a server answers such a peer.
pub const HELLO: [u8; 20] = {
    let [v0, v1] = pb::proto::handshake::PROTOCOL_VERSION.to_be_bytes();
    [
        0, 0, 0, 16, b'P', b'B', b'R', b'S', v0, v1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]
};

/// The hello a pb server answers [`HELLO`] with: the same, with the features pb offers by
/// default (a raw peer offers none, so none are used).
pub const SERVER_HELLO: [u8; 20] = {
    let mut hello = HELLO;
    let flags = pb::proto::handshake::Features::TAILS.0.to_be_bytes();
    let mut i = 0;
    while i < 8 {
        hello[12 + i] = flags[i];
        i += 1;
    }
    hello
};

/// A server connection serving a `KitchenImpl` over an in-memory pipe, and the raw peer end,
/// handshake done.
pub async fn raw_peer(config: pb::Config) -> (Connection, DuplexStream) {
    let (a, mut b) = pb::transport::memory_pair();
    b.write_all(&HELLO).await.unwrap();
    let server = Connection::establish(
        a,
        &config,
        pb::Side::Server,
        Some(pb::ObjectRef::from(KitchenRef::new(KitchenImpl::default()))),
        None,
    )
    .await
    .unwrap();
    let mut hello = [0u8; 20];
    b.read_exact(&mut hello).await.unwrap();
    (server, b)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A framed `reverse(payload)` call to the root with request id `id`, as a raw peer writes it
/// (the payload is bincode's: the vector's length in its varint form, then its bytes).
pub fn reverse_call(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![1, 1];
    varint(id, &mut body);
    varint(0, &mut body);
    varint(7, &mut body);
    body.extend_from_slice(b"reverse");
    varint(0, &mut body);
    let len = payload.len();
    if len < 251 {
        body.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        body.push(251);
        body.extend_from_slice(&short.to_le_bytes());
    } else {
        body.push(252);
        body.extend_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
    }
    body.extend_from_slice(payload);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// A server and a client TLS configuration that trust one self-signed certificate for
/// `localhost`.
pub fn tls_configs() -> (
    std::sync::Arc<pb::amp::rustls::ServerConfig>,
    std::sync::Arc<pb::amp::rustls::ClientConfig>,
) {
    use pb::amp::rustls;
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// A message framed as the wire has it.
pub fn framed(message: pb::proto::message::Message) -> Vec<u8> {
    let mut body = bytes::BytesMut::new();
    message.encode(&mut body);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// A framed answer to call `id` (one we never made) that carries 1 024 fresh references,
/// numbered from `first`: what a peer sends to make us import what nobody asked for.
pub fn forged_answer(id: u64, first: u64) -> Vec<u8> {
    use pb::proto::message::{Message, RefDesc};
    framed(Message::Answer {
        id,
        ok: true,
        refs: (first..first + 1024).map(RefDesc::Sender).collect(),
        payload: bytes::Bytes::new(),
    })
}

/// Where a [`Recording`] transport's bytes went.
#[derive(Clone, Default)]
pub struct IoLog(std::sync::Arc<Mutex<Entries>>);

#[derive(Default)]
pub struct Entries {
    /// Where the bytes each write took were in memory, and how many (a vectored write: one
    /// entry per buffer it took bytes of).
    written: Vec<(usize, usize)>,
    /// Where each read's bytes went, and how many.
    read: Vec<(usize, usize)>,
    /// How many writes took bytes.
    writes: usize,
}

impl IoLog {
    /// How many writes took bytes.
    pub fn writes(&self) -> usize {
        self.0.lock().unwrap().writes
    }

    /// Whether a write of at least `len` bytes (or 4 KiB) started at `at`: the bytes went to
    /// the transport from where they were, not from a copy.
    pub fn written_from(&self, at: *const u8, len: usize) -> bool {
        self.0
            .lock()
            .unwrap()
            .written
            .iter()
            .any(|&(p, n)| p == at as usize && n >= len.min(4096))
    }

    /// Whether some read put bytes in `[at, at + len)`, wherever it started: the value is
    /// (part of) a buffer that was read into, not a copy made since.
    pub fn read_around(&self, at: usize, len: usize) -> bool {
        self.0
            .lock()
            .unwrap()
            .read
            .iter()
            .any(|&(p, n)| p < at + len && at < p + n)
    }

    /// Whether some read put bytes inside `[at, at + len)`: the value was read straight into
    /// the allocation it is in.
    pub fn read_into(&self, at: usize, len: usize) -> bool {
        self.0
            .lock()
            .unwrap()
            .read
            .iter()
            .any(|&(p, n)| p >= at && p + n <= at + len && n > 0)
    }
}

/// A transport that notes in its [`IoLog`] where each write's and each read's bytes were.
pub struct Recording<T> {
    io: T,
    log: IoLog,
}

impl<T> Recording<T> {
    /// `io`, recorded; and its log.
    pub fn new(io: T) -> (Recording<T>, IoLog) {
        let log = IoLog::default();
        (
            Recording {
                io,
                log: log.clone(),
            },
            log,
        )
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Recording<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            let at = buf.filled()[before..].as_ptr() as usize;
            self.log.0.lock().unwrap().read.push((at, read));
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Recording<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n @ 1..)) = polled {
            let mut log = self.log.0.lock().unwrap();
            log.writes += 1;
            log.written.push((buf.as_ptr() as usize, n));
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n @ 1..)) = polled {
            let mut log = self.log.0.lock().unwrap();
            log.writes += 1;
            let mut left = n;
            for b in bufs.iter().filter(|b| !b.is_empty()) {
                if left == 0 {
                    break;
                }
                let took = left.min(b.len());
                log.written.push((b.as_ptr() as usize, took));
                left -= took;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where a `tracing_subscriber::fmt` subscriber writes, kept for the test to read
/// ([`Capture::text`]).
#[derive(Clone, Default)]
pub struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A transport whose reads wait while the test holds its gate shut.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>);

impl Gate {
    /// Shut (reads wait) or open the gate.
    pub fn set(&self, shut: bool) {
        let mut g = self.0.lock().unwrap();
        g.0 = shut;
        if !shut && let Some(w) = g.1.take() {
            w.wake();
        }
    }
}

/// A duplex stream whose reads wait while its [`Gate`] is shut: the peer on it stops reading.
pub struct Gated(pub DuplexStream, pub Gate);

impl tokio::io::AsyncRead for Gated {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        {
            let mut g = self.1.0.lock().unwrap();
            if g.0 {
                g.1 = Some(cx.waker().clone());
                return std::task::Poll::Pending;
            }
        }
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Gated {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Two pipes joined by a relay that records what the first end (a server's transport) writes:
/// the server's transport, the client's, and the record.
pub fn tapped() -> (DuplexStream, DuplexStream, std::sync::Arc<Mutex<Vec<u8>>>) {
    let (server, mut server_side) = tokio::io::duplex(1 << 20);
    let (client, mut client_side) = tokio::io::duplex(1 << 20);
    let written = std::sync::Arc::new(Mutex::new(Vec::new()));
    let record = written.clone();
    tokio::spawn(async move {
        let (mut buf_in, mut buf_out) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        loop {
            tokio::select! {
                n = server_side.read(&mut buf_in) => match n {
                    Ok(n) if n > 0 => {
                        record.lock().unwrap().extend_from_slice(&buf_in[..n]);
                        if client_side.write_all(&buf_in[..n]).await.is_err() { break }
                    }
                    _ => break,
                },
                n = client_side.read(&mut buf_out) => match n {
                    Ok(n) if n > 0 => {
                        if server_side.write_all(&buf_out[..n]).await.is_err() { break }
                    }
                    _ => break,
                },
            }
        }
    });
    (server, client, written)
}

/// How often `needle` occurs in `hay`.
pub fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}
