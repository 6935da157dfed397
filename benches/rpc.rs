//! pb against the physical floor: `cargo bench --bench rpc [-- --json] [-- --quick]`.
//!
//! Every workload runs a server and a client as **separate processes**, each on a current-thread
//! tokio runtime (one thread does all of its work), talking over 127.0.0.1. The bench binary is
//! both: the client re-executes itself with the hidden argument `--serve <kind>` to start a server,
//! reads the port it bound from the server's stdout, and stops it by closing the server's stdin.
//!
//! The **floor** is a framed TCP echo with no RPC at all: a 4-byte big-endian length, an 8-byte id
//! (and, for `bulk`, the payload) echoed back as is. It runs on the same runtime, with the same
//! socket options (`TCP_NODELAY`) and the same process layout as pb, so the ratio is what pb's
//! messages, tables, codec and tasks cost.
//!
//! Workloads (`-- --quick` shrinks every count by 10 for a smoke run of a few seconds):
//! - `latency`: sequential `echo(u64)` calls after a warm-up, p50 (`latency`) and p99
//!   (`latency_p99`), in microseconds;
//! - `pipelined`: `echo(u64)` calls with 64 in flight on one connection, calls/s;
//! - `bulk`: sequential echoes of a 1 MiB byte vector, MB/s of payload (10^6 bytes, one way);
//! - `bulk_vec`: the same with `Vec<u8>` in the method's signature, as users write it;
//! - `connect`: connect + handshake + one call + close, connections/s;
//! - `cores`: `pipelined` on two connections at once, with the client and the server each on
//!   two worker threads (`cores`, against the floor served the same way), and pb served by two
//!   threads against pb served by one (`cores_scaling`), and as `cores` with the client on one
//!   thread (`cores_client_1_thread`);
//! - `cores_server` (also run by `cores`): the servers alone, served by two worker threads,
//!   pb against the floor, with two connections of 64 calls in flight each driven by a load
//!   generator of raw frames on one thread (pb's wire spoken directly, or the floor's client),
//!   which costs little next to the server; `cores_server_scaling` is pb served by two threads
//!   against pb served by one, `cores_server_floor_scaling` the same for the floor, and
//!   `amp_cores_server_scaling` the same for pb's AMP (`Echo` boxes written directly). These
//!   servers may run on every core, whatever `--pin` says;
//! - `refs`: pass a new object reference to the peer, which calls it once and drops it (so a
//!   release comes back), 64 cycles in flight, cycles/s (pb only);
//! - `idle`: server memory per idle connection with 10 000 connections open, from the RSS of
//!   the server process, KiB.
//!
//! `--pin same` runs the client and the servers on one core (core 0), `--pin split` on one core
//! each (0 and 1), with `taskset`; without it the scheduler places them.
//!
//! Each workload is repeated (`--runs N`, default 3; 1 with `--quick`) and the median of the
//! runs is reported. `-- --json` prints one JSON line per workload:
//! `{"workload": "...", "unit": "...", "pb": X, "floor": Y, "ratio": X/Y}`; the ratio is always
//! pb / floor, so it is better when higher for rates and better when lower for times and memory
//! (the unit says which). Rows without a floor print `null` for `floor` and `ratio`.
//! Positional arguments select workloads by name (`cargo bench --bench rpc -- latency bulk`).
//!
//! Over a thousand lines, on purpose: the binary is both client and server (it re-executes
//! itself), and each workload is kept beside its floor and its server, to be read together.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

// ---- the pb service -------------------------------------------------------------------------

/// The benchmark's root interface.
#[pb::remote]
pub trait Bench {
    /// Answers `v`.
    async fn echo(&self, v: u64) -> Result<u64, ()>;
    /// Answers `data`.
    async fn bulk(&self, data: Bytes) -> Result<Bytes, ()>;
    /// Answers `data`, typed as users write it.
    async fn bulk_vec(&self, data: Vec<u8>) -> Result<Vec<u8>, ()>;
    /// Calls `p.ping()` once and drops `p`.
    async fn visit(&self, p: PingRef) -> Result<u64, ()>;
}

/// The object passed by reference in the `refs` workload.
#[pb::remote]
pub trait Ping {
    /// Answers 1.
    async fn ping(&self) -> Result<u64, ()>;
}

struct BenchImpl;

impl Bench for BenchImpl {
    async fn echo(&self, v: u64) -> Result<u64, ()> {
        Ok(v)
    }
    async fn bulk(&self, data: Bytes) -> Result<Bytes, ()> {
        Ok(data)
    }
    async fn bulk_vec(&self, data: Vec<u8>) -> Result<Vec<u8>, ()> {
        Ok(data)
    }
    async fn visit(&self, p: PingRef) -> Result<u64, ()> {
        p.ping().await.map_err(|_| ())
    }
}

/// The AMP command of the AMP rows: `Echo(v: Integer) -> v: Integer`.
#[derive(pb::AmpCommand)]
#[amp(response = EchoBack)]
struct Echo {
    v: i64,
}

/// The answer to [`Echo`].
#[derive(pb::AmpFields)]
struct EchoBack {
    v: i64,
}

fn amp_locator() -> pb::amp::Locator {
    pb::amp::Locator::new().respond(|Echo { v }| async move { Ok(EchoBack { v }) })
}

struct Pinger;

impl Ping for Pinger {
    async fn ping(&self) -> Result<u64, ()> {
        Ok(1)
    }
}

// ---- settings -------------------------------------------------------------------------------

/// How many calls in flight for the pipelined workloads.
const IN_FLIGHT: usize = 64;
/// Size of a bulk payload.
const BULK_LEN: usize = 1 << 20;

#[derive(Clone, Copy)]
struct Counts {
    warmup: usize,
    latency: usize,
    pipelined: usize,
    bulk: usize,
    connect: usize,
    refs: usize,
    idle: usize,
}

impl Counts {
    fn full() -> Counts {
        Counts {
            warmup: 2_000,
            latency: 20_000,
            pipelined: 200_000,
            bulk: 200,
            connect: 2_000,
            refs: 50_000,
            idle: 10_000,
        }
    }

    fn quick() -> Counts {
        let f = Counts::full();
        Counts {
            warmup: f.warmup / 10,
            latency: f.latency / 10,
            pipelined: f.pipelined / 10,
            bulk: f.bulk / 10,
            connect: f.connect / 10,
            refs: f.refs / 10,
            idle: f.idle / 10,
        }
    }
}

// ---- server processes -----------------------------------------------------------------------

/// A server started as a child process.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
}

impl ServerProc {
    fn start(sys: System) -> ServerProc {
        let kind = sys.server_kind();
        let exe = std::env::current_exe().expect("the bench's own path");
        // Profiling aid: `RPC_BENCH_SERVER_WRAP="valgrind --tool=callgrind"` runs the server
        // under that command.
        let mut wrap = std::env::var("RPC_BENCH_SERVER_WRAP").unwrap_or_default();
        // `--pin`: the server's core (the client pinned itself already, see `pin_self`).
        if let Some(cpus) = sys.server_cpus() {
            wrap = format!("taskset -c {cpus} {wrap}");
        }
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        let keys = tls_keys();
        let mut child = cmd
            .env(TLS_ENV, format!("{}:{}", hex(&keys.cert), hex(&keys.key)))
            .arg("--serve")
            .arg(kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server process");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("server stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server {kind} printed {line:?}, not a port"));
        ServerProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Resident memory of the server process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc status")
            * 1024
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The hidden `--serve <kind>` mode: bind 127.0.0.1:0, print the port, serve until stdin closes.
/// A kind ending in `-mt` is served by a runtime of two worker threads instead of one thread.
fn serve(kind: &str) {
    std::thread::spawn(|| {
        let mut b = [0u8; 1];
        let _ = std::io::stdin().read(&mut b);
        std::process::exit(0);
    });
    let rt = match kind.strip_suffix("-mt") {
        Some(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    let kind = kind.strip_suffix("-mt").unwrap_or(kind);
    rt.block_on(async {
        match kind {
            "floor" => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                announce(listener.local_addr().expect("bound").port());
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    tokio::spawn(floor_serve_conn(s));
                }
            }
            "floor-tls" => {
                let acceptor = server_tls();
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                announce(listener.local_addr().expect("bound").port());
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(s).await {
                            floor_serve_conn(tls).await;
                        }
                    });
                }
            }
            "pb-tls" => {
                // pb over any byte stream: here a rustls server stream, one connection each.
                let acceptor = server_tls();
                let root = pb::ObjectRef::from(BenchRef::new(BenchImpl));
                let config = pb::Config::default();
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                announce(listener.local_addr().expect("bound").port());
                loop {
                    let Ok((s, addr)) = listener.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let (acceptor, root, config) = (acceptor.clone(), root.clone(), config.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(s).await else {
                            return;
                        };
                        let side = pb::Side::Server;
                        if let Ok(conn) =
                            pb::Connection::establish(tls, &config, side, Some(root), Some(addr))
                                .await
                        {
                            conn.closed().await;
                        }
                    });
                }
            }
            "amp" => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                announce(listener.local_addr().expect("bound").port());
                let config = pb::amp::AmpConfig::default();
                pb::amp::serve(listener, config, |_| amp_locator())
                    .await
                    .expect("amp serve");
            }
            "pb" => {
                let server = pb::Server::builder()
                    .max_connections(100_000)
                    .max_connections_per_address(100_000)
                    .bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let server = server.serve(BenchRef::new(BenchImpl));
                announce(server.local_addr().port());
                // Serves until the parent kills this process.
                server.wait().await;
            }
            other => panic!("unknown server kind {other}"),
        }
    });
}

fn announce(port: u16) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{port}").expect("write the port");
    out.flush().expect("flush the port");
}

// ---- the floor --------------------------------------------------------------------------------

/// Echo every complete frame back as is, in one write per read.
async fn floor_serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        match s.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut end = 0;
        while let Some(h) = rbuf.get(end..end + 4) {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            if rbuf.len() < end + 4 + len {
                // The floor trusts the length: room for the rest of the frame at once.
                rbuf.reserve(end + 4 + len - rbuf.len());
                break;
            }
            end += 4 + len;
        }
        if end > 0 {
            let out = rbuf.split_to(end);
            // (Flushing a TCP stream is free; a TLS stream needs it.)
            if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                return;
            }
        }
    }
}

/// One floor client connection.
struct FloorConn<S = TcpStream> {
    s: S,
    rbuf: BytesMut,
}

impl FloorConn {
    async fn connect(addr: SocketAddr) -> FloorConn {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        FloorConn {
            s,
            rbuf: BytesMut::with_capacity(4096),
        }
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

impl FloorConn<TlsStream> {
    async fn connect_tls(addr: SocketAddr) -> FloorConn<TlsStream> {
        FloorConn {
            s: tls_connect(addr).await,
            rbuf: BytesMut::with_capacity(4096),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FloorConn<S> {
    /// Read one whole frame; returns its body.
    async fn read_frame(&mut self) -> Bytes {
        loop {
            if let Some(h) = self.rbuf.get(..4) {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                if self.rbuf.len() >= 4 + len {
                    self.rbuf.advance(4);
                    return self.rbuf.split_to(len).freeze();
                }
                self.rbuf.reserve(4 + len - self.rbuf.len());
            }
            let n = self.s.read_buf(&mut self.rbuf).await.expect("read");
            assert!(n > 0, "floor server closed");
        }
    }

    async fn echo(&mut self, id: u64) -> u64 {
        let mut frame = [0u8; 12];
        frame[..4].copy_from_slice(&8u32.to_be_bytes());
        frame[4..].copy_from_slice(&id.to_be_bytes());
        self.s.write_all(&frame).await.expect("write");
        self.s.flush().await.expect("flush");
        let mut body = self.read_frame().await;
        body.get_u64()
    }

    async fn bulk(&mut self, id: u64, data: &Bytes) -> Bytes {
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&((8 + data.len()) as u32).to_be_bytes());
        head[4..].copy_from_slice(&id.to_be_bytes());
        let mut out = Buf::chain(&head[..], &data[..]);
        self.s.write_all_buf(&mut out).await.expect("write");
        let mut body = self.read_frame().await;
        assert_eq!(body.get_u64(), id);
        body
    }
}

// ---- the workloads ----------------------------------------------------------------------------

/// Which system a measurement runs against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Pb,
    Floor,
    /// pb over TLS 1.3 (rustls, ring).
    PbTls,
    /// The floor over TLS 1.3.
    FloorTls,
    /// pb's AMP (Twisted-compatible boxes).
    Amp,
    /// pb served by two worker threads.
    PbCores,
    /// The floor served by two worker threads.
    FloorCores,
    /// pb, the floor or pb's AMP served by one thread or two worker threads, free to run on
    /// every core, and called by a load generator of raw frames (`cores_server`).
    Served(Proto, Threads),
}

/// What a [`System::Served`] speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Pb,
    Floor,
    Amp,
}

/// How many threads serve a [`System::Served`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Threads {
    One,
    Two,
}

impl System {
    fn server_kind(self) -> &'static str {
        match self {
            System::Pb => "pb",
            System::Floor => "floor",
            System::PbTls => "pb-tls",
            System::FloorTls => "floor-tls",
            System::Amp => "amp",
            System::PbCores => "pb-mt",
            System::FloorCores => "floor-mt",
            System::Served(Proto::Pb, Threads::One) => "pb",
            System::Served(Proto::Pb, Threads::Two) => "pb-mt",
            System::Served(Proto::Floor, Threads::One) => "floor",
            System::Served(Proto::Floor, Threads::Two) => "floor-mt",
            System::Served(Proto::Amp, Threads::One) => "amp",
            System::Served(Proto::Amp, Threads::Two) => "amp-mt",
        }
    }

    /// The cores the server may run on, as `taskset -c` takes them: the one `--pin` gives it,
    /// or, for the systems of `cores_server`, every core (a pinned bench's children inherit its
    /// one core unless told otherwise); `None` to leave it to the scheduler.
    fn server_cpus(self) -> Option<String> {
        let pinned = pinned_server_cpu()?;
        match self {
            System::Served(..) => Some(
                std::fs::read_to_string("/sys/devices/system/cpu/online")
                    .expect("the online cores (/sys/devices/system/cpu/online)")
                    .trim()
                    .to_string(),
            ),
            _ => Some(pinned.to_string()),
        }
    }

    /// The system whose client code a measurement of `self` runs (the server's threads aside).
    fn client(self) -> System {
        match self {
            System::PbCores => System::Pb,
            System::FloorCores => System::Floor,
            System::Served(Proto::Pb, _) => System::Pb,
            System::Served(Proto::Floor, _) => System::Floor,
            System::Served(Proto::Amp, _) => System::Amp,
            other => other,
        }
    }
}

async fn pb_connect(addr: SocketAddr) -> (pb::Connection, BenchRef) {
    let conn = pb::Client::connect(addr).await.expect("pb connect");
    let root: BenchRef = conn.root();
    (conn, root)
}

async fn amp_connect(addr: SocketAddr) -> pb::amp::AmpConnection {
    let config = pb::amp::AmpConfig::default();
    pb::amp::AmpConnection::connect(addr, config, pb::amp::Locator::new())
        .await
        .expect("amp connect")
}

/// pb over TLS: the same `Connection`, over a rustls client stream.
async fn pb_connect_tls(addr: SocketAddr) -> (pb::Connection, BenchRef) {
    let tls = tls_connect(addr).await;
    let config = pb::Config::default();
    let conn = pb::Connection::establish(tls, &config, pb::Side::Client, None, Some(addr))
        .await
        .expect("pb connect over tls");
    let root: BenchRef = conn.root();
    (conn, root)
}

// ---- TLS --------------------------------------------------------------------------------------

/// The environment variable that hands the client's throwaway certificate and key to a server
/// process (hex DER, `cert:key`).
const TLS_ENV: &str = "RPC_BENCH_TLS";

/// A self-signed certificate for `localhost` and its key (PKCS#8), DER.
struct TlsKeys {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Made by the client process (rcgen) and passed to servers through `TLS_ENV`.
fn tls_keys() -> &'static TlsKeys {
    static KEYS: std::sync::OnceLock<TlsKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| match std::env::var(TLS_ENV) {
        Ok(v) => {
            let (cert, key) = v.split_once(':').expect("cert:key");
            TlsKeys {
                cert: unhex(cert),
                key: unhex(key),
            }
        }
        Err(_) => {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("self-signed certificate");
            TlsKeys {
                cert: ck.cert.der().to_vec(),
                key: ck.key_pair.serialize_der(),
            }
        }
    })
}

/// ring's default provider, as pb's `ServerTls` and `ClientTls` use. Profiling aid (not part of
/// the contract): `RPC_BENCH_TLS_SUITE=TLS13_AES_128_GCM_SHA256` (or any suite's name) makes
/// both ends offer only that suite, pb and floor alike.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Ok(name) = std::env::var("RPC_BENCH_TLS_SUITE") {
        provider
            .cipher_suites
            .retain(|s| format!("{:?}", s.suite()) == name);
        assert!(!provider.cipher_suites.is_empty(), "no cipher suite {name}");
    }
    Arc::new(provider)
}

fn server_tls() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let k = tls_keys();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(k.cert.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.key.clone())),
        )
        .expect("server certificate");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn tls_connect(addr: SocketAddr) -> TlsStream {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    let connector = CONNECTOR.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                tls_keys().cert.clone(),
            ))
            .expect("trust the bench's certificate");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    });
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    connector.connect(name, s).await.expect("tls handshake")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

async fn floor_latency<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: FloorConn<S>,
    c: Counts,
    times: &mut Vec<Duration>,
) {
    for i in 0..(c.warmup + c.latency) as u64 {
        let t = Instant::now();
        assert_eq!(conn.echo(i).await, i);
        if i as usize >= c.warmup {
            times.push(t.elapsed());
        }
    }
}

/// Sequential calls: (p50, p99) in microseconds.
async fn latency(sys: System, addr: SocketAddr, c: Counts) -> (f64, f64) {
    let mut times = Vec::with_capacity(c.latency);
    match sys {
        // Only the cores workloads run them, as the systems they serve differently.
        System::PbCores | System::FloorCores | System::Served(..) => {
            unreachable!("a cores system outside the cores workloads")
        }
        System::Floor => floor_latency(FloorConn::connect(addr).await, c, &mut times).await,
        System::FloorTls => floor_latency(FloorConn::connect_tls(addr).await, c, &mut times).await,
        System::Amp => {
            let conn = amp_connect(addr).await;
            for i in 0..(c.warmup + c.latency) as i64 {
                let t = Instant::now();
                let back = conn.call(&Echo { v: i }).await.expect("amp call");
                assert_eq!(back.v, i);
                if i as usize >= c.warmup {
                    times.push(t.elapsed());
                }
            }
        }
        System::Pb | System::PbTls => {
            let (conn, root) = if sys == System::PbTls {
                pb_connect_tls(addr).await
            } else {
                pb_connect(addr).await
            };
            for i in 0..(c.warmup + c.latency) as u64 {
                let t = Instant::now();
                assert_eq!(root.echo(i).await, Ok(i));
                if i as usize >= c.warmup {
                    times.push(t.elapsed());
                }
            }
            conn.close().await;
        }
    }
    times.sort_unstable();
    (percentile(&times, 0.50), percentile(&times, 0.99))
}

/// Calls with `IN_FLIGHT` outstanding on one connection: calls/s.
async fn pipelined(sys: System, addr: SocketAddr, c: Counts) -> f64 {
    let total = c.pipelined as u64;
    match sys {
        // Only the cores workloads run them, as the systems they serve differently.
        System::PbCores | System::FloorCores | System::Served(..) => {
            unreachable!("a cores system outside the cores workloads")
        }
        System::Floor => floor_pipelined(FloorConn::connect(addr).await, total).await,
        System::FloorTls => floor_pipelined(FloorConn::connect_tls(addr).await, total).await,
        System::Amp => {
            let conn = amp_connect(addr).await;
            conn.call(&Echo { v: 0 }).await.expect("warm-up call");
            let next = Arc::new(AtomicU64::new(0));
            let t = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..IN_FLIGHT {
                let conn = conn.clone();
                let next = next.clone();
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let back = conn.call(&Echo { v: i as i64 }).await.expect("amp call");
                        assert_eq!(back.v, i as i64);
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("pipelined task");
            }
            total as f64 / t.elapsed().as_secs_f64()
        }
        System::Pb | System::PbTls => {
            let (conn, root) = if sys == System::PbTls {
                pb_connect_tls(addr).await
            } else {
                pb_connect(addr).await
            };
            root.echo(0).await.expect("warm-up call");
            let next = Arc::new(AtomicU64::new(0));
            let t = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..IN_FLIGHT {
                let root = root.clone();
                let next = next.clone();
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        assert_eq!(root.echo(i).await, Ok(i));
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("pipelined task");
            }
            let rate = total as f64 / t.elapsed().as_secs_f64();
            conn.close().await;
            rate
        }
    }
}

/// The floor with `IN_FLIGHT` requests outstanding: each read's answers are replaced by new
/// requests in one write.
async fn floor_pipelined<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: FloorConn<S>,
    total: u64,
) -> f64 {
    {
        {
            let mut out = BytesMut::new();
            let push = |out: &mut BytesMut, id: u64| {
                out.put_u32(8);
                out.put_u64(id);
            };
            // Warm up with one round trip.
            conn.echo(u64::MAX).await;
            let t = Instant::now();
            let mut sent = 0u64;
            while sent < IN_FLIGHT as u64 && sent < total {
                push(&mut out, sent);
                sent += 1;
            }
            conn.s.write_all(&out).await.expect("write");
            conn.s.flush().await.expect("flush");
            out.clear();
            let mut received = 0u64;
            while received < total {
                let n = conn.s.read_buf(&mut conn.rbuf).await.expect("read");
                assert!(n > 0, "floor server closed");
                while conn.rbuf.len() >= 12 {
                    conn.rbuf.advance(12);
                    received += 1;
                    if sent < total {
                        push(&mut out, sent);
                        sent += 1;
                    }
                }
                if !out.is_empty() {
                    conn.s.write_all(&out).await.expect("write");
                    conn.s.flush().await.expect("flush");
                    out.clear();
                }
            }
            total as f64 / t.elapsed().as_secs_f64()
        }
    }
}

/// Sequential 1 MiB echoes: MB/s of payload, one way. With `vec`, pb's method takes and
/// answers a `Vec<u8>` (the floor is the same either way).
async fn bulk(sys: System, addr: SocketAddr, c: Counts, vec: bool) -> f64 {
    let data = Bytes::from((0..BULK_LEN).map(|i| i as u8).collect::<Vec<u8>>());
    let data_vec = data.to_vec();
    let warmup = 5;
    let mut elapsed = Duration::ZERO;
    match sys {
        // Only the cores workloads run them, as the systems they serve differently.
        System::PbCores | System::FloorCores | System::Served(..) => {
            unreachable!("a cores system outside the cores workloads")
        }
        System::Amp => unreachable!("plain pb and floor only"),
        System::Floor | System::FloorTls => {
            let mut conn = FloorConn::connect(addr).await;
            for i in 0..(warmup + c.bulk) as u64 {
                let t = Instant::now();
                let back = conn.bulk(i, &data).await;
                if i >= warmup as u64 {
                    elapsed += t.elapsed();
                }
                assert_eq!(back.len(), BULK_LEN);
            }
        }
        System::Pb | System::PbTls => {
            let (conn, root) = pb_connect(addr).await;
            for i in 0..warmup + c.bulk {
                let t = Instant::now();
                let len = if vec {
                    // The clone is the caller's (a user passing a buffer it keeps).
                    root.bulk_vec(data_vec.clone())
                        .await
                        .expect("bulk call")
                        .len()
                } else {
                    root.bulk(data.clone()).await.expect("bulk call").len()
                };
                if i >= warmup {
                    elapsed += t.elapsed();
                }
                assert_eq!(len, BULK_LEN);
            }
            conn.close().await;
        }
    }
    (c.bulk * BULK_LEN) as f64 / 1e6 / elapsed.as_secs_f64()
}

/// Connect, handshake, one call, close: connections/s.
async fn connect(sys: System, addr: SocketAddr, c: Counts) -> f64 {
    let once = |i: u64| async move {
        match sys {
            // Only the cores workloads run them, as the systems they serve differently.
            System::PbCores | System::FloorCores | System::Served(..) => {
                unreachable!("a cores system outside the cores workloads")
            }
            System::Amp => unreachable!("plain pb and floor only"),
            System::Floor | System::FloorTls => {
                let mut conn = FloorConn::connect(addr).await;
                assert_eq!(conn.echo(i).await, i);
            }
            System::Pb | System::PbTls => {
                let (conn, root) = pb_connect(addr).await;
                assert_eq!(root.echo(i).await, Ok(i));
                conn.close().await;
            }
        }
    };
    for i in 0..20 {
        once(i).await;
    }
    let t = Instant::now();
    for i in 0..c.connect as u64 {
        once(i).await;
    }
    c.connect as f64 / t.elapsed().as_secs_f64()
}

/// Pass a new reference, the peer calls it once and drops it: cycles/s, `IN_FLIGHT` at once.
async fn refs(addr: SocketAddr, c: Counts) -> f64 {
    let (conn, root) = pb_connect(addr).await;
    root.visit(PingRef::new(Pinger)).await.expect("warm-up");
    let total = c.refs as u64;
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let root = root.clone();
        let next = next.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                assert_eq!(root.visit(PingRef::new(Pinger)).await, Ok(1));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("refs task");
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    // The releases must come back: nothing stays exported.
    for _ in 0..100 {
        if conn.stats().tables.exported == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(conn.stats().tables.exported, 0, "every reference released");
    conn.close().await;
    rate
}

/// Connections kept open by `idle`, dropped only after the server has stopped (so the server
/// closes first and the client's ports do not linger in TIME_WAIT).
type Held = (Vec<FloorConn>, Vec<(pb::Connection, BenchRef)>);

/// Open `c.idle` connections (one call each), then measure the server's RSS growth per
/// connection, in KiB.
async fn idle(sys: System, server: &ServerProc, c: Counts) -> (f64, Held) {
    let addr = server.addr;
    let n = c.idle;
    // One connection first, so the runtime and the allocator are warm.
    let mut floors = Vec::with_capacity(n + 1);
    let mut pbs = Vec::with_capacity(n + 1);
    match sys {
        // Only the cores workloads run them, as the systems they serve differently.
        System::PbCores | System::FloorCores | System::Served(..) => {
            unreachable!("a cores system outside the cores workloads")
        }
        System::Amp => unreachable!("plain pb and floor only"),
        System::Floor | System::FloorTls => {
            let mut conn = FloorConn::connect(addr).await;
            conn.echo(0).await;
            floors.push(conn);
        }
        System::Pb | System::PbTls => {
            let (conn, root) = pb_connect(addr).await;
            root.echo(0).await.expect("call");
            pbs.push((conn, root));
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = server.rss();
    for i in 0..n as u64 {
        match sys {
            // Only the cores workloads run them, as the systems they serve differently.
            System::PbCores | System::FloorCores | System::Served(..) => {
                unreachable!("a cores system outside the cores workloads")
            }
            System::Amp => unreachable!("plain pb and floor only"),
            System::Floor | System::FloorTls => {
                let mut conn = FloorConn::connect(addr).await;
                assert_eq!(conn.echo(i).await, i);
                floors.push(conn);
            }
            System::Pb | System::PbTls => {
                let (conn, root) = pb_connect(addr).await;
                assert_eq!(root.echo(i).await, Ok(i));
                pbs.push((conn, root));
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = server.rss();
    let kib = after.saturating_sub(before) as f64 / n as f64 / 1024.0;
    (kib, (floors, pbs))
}

// ---- the report -------------------------------------------------------------------------------

/// One reported row.
struct Row {
    workload: &'static str,
    unit: &'static str,
    pb: Option<f64>,
    floor: Option<f64>,
    /// What the target is, for the table.
    target: &'static str,
    /// Whether the target is met, when it can be judged from this row.
    met: Option<bool>,
}

impl Row {
    /// pb against its floor, with no target of its own.
    fn vs(workload: &'static str, unit: &'static str, pb: f64, floor: f64) -> Row {
        Row {
            workload,
            unit,
            pb: Some(pb),
            floor: Some(floor),
            target: "-",
            met: None,
        }
    }

    /// The target for this row, and whether this run met it.
    fn target(self, target: &'static str, met: bool) -> Row {
        Row {
            target,
            met: Some(met),
            ..self
        }
    }
}

/// A workload measured as one number per run, boxed so that the comparisons can take any.
type Workload = fn(System, SocketAddr, Counts) -> BenchFuture;
type BenchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<f64>> + Send>>;

fn pipelined_work(sys: System, addr: SocketAddr, c: Counts) -> BenchFuture {
    Box::pin(async move { vec![pipelined(sys, addr, c).await] })
}

/// `pipelined` on two connections at once, each in a task of its own (on a client runtime of
/// two worker threads): calls/s of both together.
fn cores_work(sys: System, addr: SocketAddr, c: Counts) -> BenchFuture {
    Box::pin(async move {
        let t = Instant::now();
        let conns: Vec<_> = (0..2)
            .map(|_| tokio::spawn(pipelined(sys.client(), addr, c)))
            .collect();
        for conn in conns {
            conn.await.expect("a connection's calls");
        }
        vec![2.0 * c.pipelined as f64 / t.elapsed().as_secs_f64()]
    })
}

/// `cores_server`: two connections with `IN_FLIGHT` calls in flight each, driven on this one
/// thread by a load generator of raw frames (pb's wire spoken directly, [`RawConn`], or the
/// floor's own client), so that nearly all the work measured is the server's: calls/s of both
/// together.
fn raw_cores_work(sys: System, addr: SocketAddr, c: Counts) -> BenchFuture {
    Box::pin(async move {
        let total = c.pipelined as u64;
        // Timed from when both connections are up and have made one call.
        let started = match sys.client() {
            System::Pb => {
                let (mut a, mut b) = (RawConn::connect(addr).await, RawConn::connect(addr).await);
                let t = Instant::now();
                tokio::join!(a.run(total), b.run(total));
                t
            }
            System::Amp => {
                let (mut a, mut b) = (
                    RawAmpConn::connect(addr).await,
                    RawAmpConn::connect(addr).await,
                );
                let t = Instant::now();
                tokio::join!(a.run(total), b.run(total));
                t
            }
            _ => {
                let (a, b) = (
                    FloorConn::connect(addr).await,
                    FloorConn::connect(addr).await,
                );
                // Each connection's warm-up call, one round trip, falls inside.
                let t = Instant::now();
                tokio::join!(floor_pipelined(a, total), floor_pipelined(b, total));
                t
            }
        };
        vec![2.0 * total as f64 / started.elapsed().as_secs_f64()]
    })
}

/// A connection of the raw AMP load generator: `Echo` boxes encoded once (tags 1 to
/// `IN_FLIGHT`), each sent again as soon as its answer is back; every answer is decoded and
/// checked.
struct RawAmpConn {
    s: TcpStream,
    rbuf: BytesMut,
    asks: Vec<Bytes>,
    codec: pb::proto::amp::codec::BoxCodec,
}

impl RawAmpConn {
    /// Connect and make one call.
    async fn connect(addr: SocketAddr) -> RawAmpConn {
        use pb::proto::amp::codec::{AmpBox, BoxCodec, BoxCodecConfig};
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let asks = (1..=IN_FLIGHT)
            .map(|tag| {
                let mut ask = AmpBox::new();
                ask.insert("_ask", tag.to_string());
                ask.insert("_command", "Echo");
                ask.insert("v", RAW_ECHOED.to_string());
                ask.to_bytes().expect("an Echo box")
            })
            .collect();
        let mut conn = RawAmpConn {
            s,
            rbuf: BytesMut::with_capacity(64 * 1024),
            asks,
            codec: BoxCodec::new(BoxCodecConfig::default()),
        };
        conn.s.write_all(&conn.asks[0]).await.expect("write");
        let answer = loop {
            if let Some(answer) = conn.codec.decode(&mut conn.rbuf).expect("an AMP box") {
                break answer;
            }
            let n = conn.s.read_buf(&mut conn.rbuf).await.expect("read");
            assert!(n > 0, "the server closed the connection");
        };
        assert_eq!(answer.get("_answer"), Some(&b"1"[..]), "{answer:?}");
        assert_eq!(answer.get("v"), Some(RAW_ECHOED.to_string().as_bytes()));
        conn
    }

    /// `total` calls, `IN_FLIGHT` at a time.
    async fn run(&mut self, total: u64) {
        let codec = &mut self.codec;
        pump_raw(&mut self.s, &mut self.rbuf, &self.asks, total, |rbuf| {
            let answer = codec.decode(rbuf).expect("an AMP box")?;
            let tag = answer
                .get("_answer")
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| t.parse::<usize>().ok())
                .filter(|t| (1..=IN_FLIGHT).contains(t))
                .unwrap_or_else(|| panic!("the server sent {answer:?}, not an answer"));
            Some(tag)
        })
        .await
    }
}

/// The value every raw `echo` call sends (the request id tells the answers apart).
const RAW_ECHOED: u64 = 7;

/// A connection of the raw load generator: pb's hello, then `echo` calls encoded once, each
/// sent again as soon as its answer is back. Every answer is checked to be a successful answer
/// to one of its calls; the first is decoded in full.
struct RawConn {
    s: TcpStream,
    rbuf: BytesMut,
    /// The call frames, for request ids 1 to `IN_FLIGHT` (one byte each on the wire).
    calls: Vec<Bytes>,
    /// The first byte of an answer's envelope (its tag), from the first answer.
    answer_tag: u8,
}

impl RawConn {
    /// Connect, exchange hellos and make one call.
    async fn connect(addr: SocketAddr) -> RawConn {
        use pb::proto::handshake::{Features, Hello};
        use pb::proto::message::{CallExtras, Message, MessageLimits, encode_call_frame_head};
        const { assert!(IN_FLIGHT < 128, "request ids of one byte") };
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let (args, refs) = pb::codec::encode(&(RAW_ECHOED,), None).expect("encode the arguments");
        assert!(refs.is_empty());
        let calls = (1..=IN_FLIGHT as u64)
            .map(|id| {
                let mut frame = BytesMut::new();
                let flags = (true, None, &CallExtras::default());
                encode_call_frame_head(&mut frame, args.len(), id, 0, b"echo", flags, &[]);
                frame.put_slice(&args);
                frame.freeze()
            })
            .collect();
        let mut conn = RawConn {
            s,
            rbuf: BytesMut::with_capacity(64 * 1024),
            calls,
            answer_tag: 0,
        };
        let hello = Hello::ours(Features::NONE);
        let mut out = BytesMut::new();
        out.put_u32(hello.encoded_len() as u32);
        hello.encode(&mut out);
        out.put_slice(&conn.calls[0]);
        conn.s.write_all(&out).await.expect("write");
        let theirs = conn.frame().await;
        Hello::decode(&theirs).expect("the server's hello");
        let first = conn.frame().await;
        conn.answer_tag = first.first().copied().unwrap_or_default();
        match Message::decode(first, &MessageLimits::default()) {
            Ok(Message::Answer {
                id: 1,
                ok: true,
                payload,
                ..
            }) => {
                let v: u64 = pb::codec::decode(&payload, Vec::new()).expect("an echoed u64");
                assert_eq!(v, RAW_ECHOED);
            }
            other => panic!("the raw call got {other:?}, not its answer"),
        }
        conn
    }

    /// The next whole frame's body.
    async fn frame(&mut self) -> Bytes {
        loop {
            if let Some(h) = self.rbuf.get(..4) {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                if self.rbuf.len() >= 4 + len {
                    self.rbuf.advance(4);
                    return self.rbuf.split_to(len).freeze();
                }
            }
            let n = self.s.read_buf(&mut self.rbuf).await.expect("read");
            assert!(n > 0, "the server closed the connection");
        }
    }

    /// `total` calls, `IN_FLIGHT` at a time.
    async fn run(&mut self, total: u64) {
        let answer_tag = self.answer_tag;
        pump_raw(&mut self.s, &mut self.rbuf, &self.calls, total, |rbuf| {
            let h = rbuf.get(..4)?;
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            if rbuf.len() < 4 + len {
                return None;
            }
            // An answer's envelope starts with its tag, the request id and 0 for `Ok`.
            let head = rbuf.get(4..(4 + len).min(7));
            assert!(
                matches!(head, Some(&[tag, id, 0]) if tag == answer_tag
                    && (1..=IN_FLIGHT).contains(&usize::from(id))),
                "the server sent {:?}, not a successful answer",
                &rbuf[..(4 + len).min(32)]
            );
            let id = usize::from(rbuf[5]);
            rbuf.advance(4 + len);
            Some(id)
        })
        .await
    }
}

/// Keeps `IN_FLIGHT` of `frames` in flight on `s` until `total` calls are answered, each
/// frame sent again as soon as its answer is back: `answer` takes a whole answer off the front
/// of `rbuf` and says which frame (from 1) it answers, or `None` while none is whole.
async fn pump_raw(
    s: &mut TcpStream,
    rbuf: &mut BytesMut,
    frames: &[Bytes],
    total: u64,
    mut answer: impl FnMut(&mut BytesMut) -> Option<usize>,
) {
    let mut out = BytesMut::new();
    let mut sent = 0u64;
    for frame in frames {
        if sent == total {
            break;
        }
        out.put_slice(frame);
        sent += 1;
    }
    let mut received = 0u64;
    while received < total {
        if !out.is_empty() {
            s.write_all(&out).await.expect("write");
            out.clear();
        }
        let n = s.read_buf(rbuf).await.expect("read");
        assert!(n > 0, "the server closed the connection");
        while let Some(i) = answer(rbuf) {
            received += 1;
            if sent < total {
                out.put_slice(&frames[i - 1]);
                sent += 1;
            }
        }
    }
}

fn bulk_work(sys: System, addr: SocketAddr, c: Counts) -> BenchFuture {
    Box::pin(async move { vec![bulk(sys, addr, c, false).await] })
}

fn bulk_vec_work(sys: System, addr: SocketAddr, c: Counts) -> BenchFuture {
    Box::pin(async move { vec![bulk(sys, addr, c, true).await] })
}

fn connect_work(sys: System, addr: SocketAddr, c: Counts) -> BenchFuture {
    Box::pin(async move { vec![connect(sys, addr, c).await] })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => {
            if x.abs() >= 100.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.3}")
            }
        }
        _ => "null".into(),
    }
}

fn print_json(rows: &[Row]) {
    for r in rows {
        let ratio = match (r.pb, r.floor) {
            (Some(p), Some(f)) if f != 0.0 => Some(p / f),
            _ => None,
        };
        let ratio = match ratio {
            Some(x) => format!("{x:.3}"),
            None => "null".into(),
        };
        println!(
            "{{\"workload\": \"{}\", \"unit\": \"{}\", \"pb\": {}, \"floor\": {}, \"ratio\": {}}}",
            r.workload,
            r.unit,
            json_num(r.pb),
            json_num(r.floor),
            ratio
        );
    }
}

fn print_table(rows: &[Row], runs: usize) {
    println!(
        "{:<18} {:>12} {:>12} {:>7}  {:<14} {:<5} unit",
        "workload", "pb", "floor", "ratio", "target", "met"
    );
    for r in rows {
        let ratio = match (r.pb, r.floor) {
            (Some(p), Some(f)) if f != 0.0 => format!("{:.3}", p / f),
            _ => "-".into(),
        };
        let num = |v: Option<f64>| match v {
            Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
            Some(x) => format!("{x:.2}"),
            None => "-".into(),
        };
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:<18} {:>12} {:>12} {:>7}  {:<14} {:<5} {}",
            r.workload,
            num(r.pb),
            num(r.floor),
            ratio,
            r.target,
            met,
            r.unit
        );
    }
    println!("(medians of {runs} run(s); ratio = pb / floor)");
}

/// Profiling aid: `RPC_BENCH_ONLY=pb` (or `floor`) measures one system only.
fn skipped(sys: System) -> bool {
    std::env::var("RPC_BENCH_ONLY").is_ok_and(|only| {
        let kind = sys.server_kind();
        kind != only && !kind.starts_with(&format!("{only}-"))
    })
}

/// Runs `f` once against a fresh server of `sys`; `None` if `sys` is skipped.
fn run_once<T, F, Fut>(rt: &tokio::runtime::Runtime, sys: System, f: &mut F) -> Option<Vec<f64>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Into<Vec<f64>> + Send + 'static,
{
    if skipped(sys) {
        return None;
    }
    let server = ServerProc::start(sys);
    // The client runs in a spawned task, as callers in an application do (tokio's
    // `block_on` future pays an extra poll of the I/O driver whenever another task wakes it).
    let run = f(server.addr);
    let out: Vec<f64> = rt
        .block_on(async move { tokio::spawn(run).await })
        .expect("client task")
        .into();
    server.stop();
    Some(out)
}

/// The median of each output over runs (`NaN`s when nothing ran).
fn medians(mut per_run: Vec<Vec<f64>>) -> Vec<f64> {
    if per_run.is_empty() {
        return vec![f64::NAN; 4];
    }
    (0..per_run[0].len())
        .map(|i| median(&mut per_run.iter_mut().map(|r| r[i]).collect::<Vec<_>>()))
        .collect()
}

/// Runs `f` once per run against a fresh server of `sys`; the median of each output.
fn measure<T, F, Fut>(rt: &tokio::runtime::Runtime, sys: System, runs: usize, mut f: F) -> Vec<f64>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Into<Vec<f64>> + Send + 'static,
{
    medians(
        (0..runs)
            .filter_map(|_| run_once(rt, sys, &mut f))
            .collect(),
    )
}

/// Runs `f` against each of `systems` in turn, `runs` times each, so that a machine whose speed
/// drifts during the bench weighs on all alike (which system goes first rotates from run to
/// run); the medians of each system's outputs, in the order of `systems`.
fn compare<T, F, Fut, const N: usize>(
    rt: &tokio::runtime::Runtime,
    systems: [System; N],
    runs: usize,
    mut f: F,
) -> [Vec<f64>; N]
where
    F: FnMut(System, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Into<Vec<f64>> + Send + 'static,
{
    let mut outs: [Vec<Vec<f64>>; N] = std::array::from_fn(|_| Vec::new());
    for i in 0..runs {
        for k in 0..N {
            let at = (i + k) % N;
            let sys = systems[at];
            if let Some(out) = run_once(rt, sys, &mut |addr| f(sys, addr)) {
                outs[at].push(out);
            }
        }
    }
    outs.map(medians)
}

/// `latency` (p50, p99) against each of `systems` in turn (see [`compare`]).
fn latency_runs<const N: usize>(
    rt: &tokio::runtime::Runtime,
    systems: [System; N],
    runs: usize,
    c: Counts,
) -> [Vec<f64>; N] {
    compare(rt, systems, runs, move |sys, a| async move {
        let (p50, p99) = latency(sys, a, c).await;
        vec![p50, p99]
    })
}

/// Set, to `same` or `split`, in the bench process that `--pin` re-ran under `taskset`.
const PIN_ENV: &str = "RPC_BENCH_PINNED";

/// The core the server runs on under `--pin`: the client's (0) with `same`, the next (1) with
/// `split`.
fn pinned_server_cpu() -> Option<u32> {
    match std::env::var(PIN_ENV).ok()?.as_str() {
        "same" => Some(0),
        "split" => Some(1),
        _ => None,
    }
}

/// `--pin same|split`: run this bench again on core 0 under `taskset` (its servers then go on
/// core 0 or core 1), and exit with its status. Returns when there is nothing to do.
fn pin_self(args: &[String]) {
    let Some(i) = args.iter().position(|a| a == "--pin") else {
        return;
    };
    if std::env::var_os(PIN_ENV).is_some() {
        return;
    }
    let placement = args.get(i + 1).map(String::as_str).unwrap_or("");
    if placement != "same" && placement != "split" {
        eprintln!("--pin takes `same` (one core for both processes) or `split` (one each)");
        std::process::exit(2);
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .args(args)
        .env(PIN_ENV, placement)
        .status()
        .unwrap_or_else(|e| {
            eprintln!("--pin needs `taskset` (util-linux): {e}");
            std::process::exit(2);
        });
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        serve(args.get(i + 1).map(String::as_str).unwrap_or(""));
        return;
    }
    pin_self(&args);
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 })
        .max(1);
    let mut skip_next = false;
    let selected: Vec<&str> = args
        .iter()
        .filter(|a| {
            if std::mem::take(&mut skip_next) {
                return false;
            }
            if *a == "--runs" || *a == "--pin" {
                skip_next = true;
            }
            !a.starts_with("--")
        })
        .map(String::as_str)
        .collect();
    let wants = |name: &str| selected.is_empty() || selected.contains(&name);
    let c = if quick {
        Counts::quick()
    } else {
        Counts::full()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // Every comparison runs the same client code against a floor server and a pb server.
    let rates = |floor: System, pb: System, work: Workload| {
        compare(&rt, [floor, pb], runs, move |sys, a| work(sys, a, c))
    };

    let mut rows = Vec::new();
    if wants("latency") {
        let [f, p] = latency_runs(&rt, [System::Floor, System::Pb], runs, c);
        rows.push(
            Row::vs("latency", "us p50 per call, lower is better", p[0], f[0])
                .target("<= 1.10x", p[0] <= 1.10 * f[0]),
        );
        rows.push(
            Row::vs(
                "latency_p99",
                "us p99 per call, lower is better",
                p[1],
                f[1],
            )
            .target("<= 1.2x", p[1] <= 1.2 * f[1]),
        );
    }
    if wants("pipelined") {
        let [f, p] = rates(System::Floor, System::Pb, pipelined_work);
        rows.push(
            Row::vs(
                "pipelined",
                "calls/s with 64 in flight, higher is better",
                p[0],
                f[0],
            )
            .target(">= 0.5x", p[0] >= 0.5 * f[0]),
        );
    }
    if wants("cores") {
        // Client and servers on two worker threads each, two connections: against the floor
        // served the same way, and against pb served by one thread.
        let mt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let [f, p, one] = compare(
            &mt,
            [System::FloorCores, System::PbCores, System::Pb],
            runs,
            move |sys, a| cores_work(sys, a, c),
        );
        rows.push(Row::vs(
            "cores",
            "calls/s, 2 connections with 64 in flight each, 2 worker threads a side, higher is better",
            p[0],
            f[0],
        ));
        // The same with the client on one thread: which side limits the figures above.
        let [f1, p1] = compare(
            &rt,
            [System::FloorCores, System::PbCores],
            runs,
            move |sys, a| cores_work(sys, a, c),
        );
        rows.push(Row::vs(
            "cores_client_1_thread",
            "calls/s, as cores with the client on one thread (servers on two), higher is better",
            p1[0],
            f1[0],
        ));
        rows.push(Row::vs(
            "cores_scaling",
            "calls/s: pb served by 2 worker threads (pb) against 1 (floor), 2 connections, higher is better",
            p[0],
            one[0],
        ));
    }
    if wants("cores") || wants("cores_server") {
        // The servers' own scaling, with load generators that cost little next to them, and
        // the servers free to use every core.
        use Threads::{One, Two};
        let [p1, p2, f1, f2, a1, a2] = compare(
            &rt,
            [
                System::Served(Proto::Pb, One),
                System::Served(Proto::Pb, Two),
                System::Served(Proto::Floor, One),
                System::Served(Proto::Floor, Two),
                System::Served(Proto::Amp, One),
                System::Served(Proto::Amp, Two),
            ],
            runs,
            move |sys, a| raw_cores_work(sys, a, c),
        );
        rows.push(Row::vs(
            "cores_server",
            "calls/s served by 2 worker threads, 2 connections with 64 calls in flight each from a load generator of raw frames on one thread, servers free to use every core, higher is better",
            p2[0],
            f2[0],
        ));
        rows.push(Row::vs(
            "cores_server_scaling",
            "calls/s as cores_server: pb served by 2 worker threads (pb) against 1 (floor), higher is better",
            p2[0],
            p1[0],
        ));
        rows.push(Row::vs(
            "cores_server_floor_scaling",
            "calls/s as cores_server: the floor served by 2 worker threads (pb column) against 1 (floor column), higher is better",
            f2[0],
            f1[0],
        ));
        rows.push(Row::vs(
            "amp_cores_server_scaling",
            "AMP calls/s as cores_server (Echo boxes written directly): pb's AMP served by 2 worker threads (pb) against 1 (floor), higher is better",
            a2[0],
            a1[0],
        ));
    }
    if wants("bulk") {
        let [f, p] = rates(System::Floor, System::Pb, bulk_work);
        rows.push(
            Row::vs("bulk", "MB/s of 1 MiB echoes, higher is better", p[0], f[0])
                .target(">= 0.7x", p[0] >= 0.7 * f[0]),
        );
    }
    if wants("bulk_vec") {
        let [f, p] = rates(System::Floor, System::Pb, bulk_vec_work);
        rows.push(
            Row::vs(
                "bulk_vec",
                "MB/s of 1 MiB Vec<u8> echoes, higher is better",
                p[0],
                f[0],
            )
            .target(">= 0.7x", p[0] >= 0.7 * f[0]),
        );
    }
    if wants("connect") {
        let [f, p] = rates(System::Floor, System::Pb, connect_work);
        rows.push(
            Row::vs("connect", "connections/s, higher is better", p[0], f[0])
                .target(">= 0.8x", p[0] >= 0.8 * f[0]),
        );
    }
    if wants("refs") {
        let p = measure(
            &rt,
            System::Pb,
            runs,
            |a| async move { vec![refs(a, c).await] },
        );
        rows.push(
            Row {
                floor: None,
                ..Row::vs(
                    "refs",
                    "cycles/s with 64 in flight, higher is better",
                    p[0],
                    f64::NAN,
                )
            }
            .target(">= 100000/s", p[0] >= 100_000.0),
        );
    }
    if wants("idle") {
        let per = |sys: System| {
            if skipped(sys) {
                return f64::NAN;
            }
            let mut v = Vec::new();
            for _ in 0..runs {
                let server = ServerProc::start(sys);
                let (kib, held) = rt.block_on(idle(sys, &server, c));
                server.stop();
                drop(held);
                // Let the client's connection tasks see the close and end.
                rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
                v.push(kib);
            }
            median(&mut v)
        };
        let f = per(System::Floor);
        let p = per(System::Pb);
        rows.push(
            Row::vs(
                "idle",
                "KiB of server RSS per idle connection, lower is better",
                p,
                f,
            )
            .target("<= 16 KiB", p <= 16.0),
        );
    }

    if wants("tls") {
        // pb over plain TCP runs in the same rotation, for `tls_overhead`.
        let [f, p, plain] =
            latency_runs(&rt, [System::FloorTls, System::PbTls, System::Pb], runs, c);
        rows.push(Row::vs(
            "tls_latency",
            "us p50 per call over TLS 1.3 (floor also over TLS), lower is better",
            p[0],
            f[0],
        ));
        rows.push(Row::vs(
            "tls_latency_p99",
            "us p99 per call over TLS 1.3 (floor also over TLS), lower is better",
            p[1],
            f[1],
        ));
        // The target: pb over TLS against pb over plain TCP, measured in turn.
        rows.push(
            Row::vs(
                "tls_overhead",
                "us p50: pb over TLS (pb) against pb over plain TCP (floor), lower is better",
                p[0],
                plain[0],
            )
            .target("<= 1.10x", p[0] <= 1.10 * plain[0]),
        );
        let [f, p] = rates(System::FloorTls, System::PbTls, pipelined_work);
        rows.push(Row::vs(
            "tls_pipelined",
            "calls/s with 64 in flight over TLS 1.3 (floor also over TLS), higher is better",
            p[0],
            f[0],
        ));
    }
    if wants("amp") {
        // The floor of the AMP rows is the plain framed echo, as for `latency` and `pipelined`.
        let [f, p] = latency_runs(&rt, [System::Floor, System::Amp], runs, c);
        rows.push(Row::vs(
            "amp_latency",
            "us p50 per AMP call (floor: plain framed echo), lower is better",
            p[0],
            f[0],
        ));
        rows.push(Row::vs(
            "amp_latency_p99",
            "us p99 per AMP call (floor: plain framed echo), lower is better",
            p[1],
            f[1],
        ));
        let [f, p] = rates(System::Floor, System::Amp, pipelined_work);
        rows.push(Row::vs(
            "amp_pipelined",
            "AMP calls/s with 64 in flight (floor: plain framed echo), higher is better",
            p[0],
            f[0],
        ));
    }

    if json {
        print_json(&rows);
    } else {
        print_table(&rows, runs);
    }
}
