//! Faults: peers that vanish mid-frame, mid-call or mid-answer, a server shut down with calls in
//! flight, and a client whose process is killed. Every pending call ends (an answer or a clean
//! error, never a hang), and the tables of the side that stays are emptied.

mod common;

use common::HELLO;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pb::{CallError, CloseReason, Config, Connection, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Yield until `f` holds, for at most `secs` seconds of (real) time; for TCP tests, where the
/// other side's progress is real I/O.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), async {
        while !f() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .is_ok()
}

async fn kitchen_server() -> (pb::ServerHandle, Arc<tokio::sync::Semaphore>) {
    let kitchen = KitchenImpl::default();
    let gate = kitchen.gate.clone();
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::new(kitchen));
    (server, gate)
}

async fn still_serving(addr: std::net::SocketAddr) {
    let conn = pb::Client::connect(addr).await.unwrap();
    let k: KitchenRef = conn.root();
    assert_eq!(k.add(1, 2).await, Ok(3));
    conn.close().await;
}

#[tokio::test]
async fn a_peer_that_disconnects_mid_frame_is_cleaned_up() {
    let (server, _gate) = kitchen_server().await;
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&HELLO).await.unwrap();
    let mut hello = [0u8; 20];
    s.read_exact(&mut hello).await.unwrap();
    assert!(eventually(10, || server.connections().len() == 1).await);
    let conn = server.connections().remove(0);
    // A header announcing 50 bytes, 10 of them, then the peer is gone.
    s.write_all(&[0, 0, 0, 50, 1, 1, 1, 0, 3, b'a', b'd', b'd', 0, 0])
        .await
        .unwrap();
    drop(s);
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the server notices");
    assert!(matches!(
        conn.close_reason(),
        Some(CloseReason::PeerClosed | CloseReason::Io(_))
    ));
    assert_eq!(conn.stats().tables, pb::TableStats::default());
    assert!(eventually(10, || server.connections().is_empty()).await);
    still_serving(addr).await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_vanishes_mid_call_cancels_the_handler() {
    let kitchen = KitchenImpl::default();
    let gate = kitchen.gate.clone();
    let (server, client) = memory_pair(KitchenRef::new(kitchen)).await;
    let k: KitchenRef = client.root();
    let call = tokio::spawn({
        let k = k.clone();
        async move { k.gated(1).await }
    });
    assert!(settle(|| server.stats().tables.in_flight_calls == 1).await);
    client.abort();
    assert_eq!(call.await.unwrap(), Err(CallError::Disconnected));
    server.closed().await;
    assert!(settle(|| server.stats().tables.in_flight_calls == 0).await);
    // The handler was dropped, not left waiting: a permit added now stays unused.
    gate.add_permits(1);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(gate.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_vanishes_mid_call_fails_the_call_at_once() {
    let (server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = client.root();
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let k = k.clone();
            tokio::spawn(async move { k.gated(i).await })
        })
        .collect();
    assert!(settle(|| client.stats().tables.pending_calls == 10).await);
    server.abort();
    for c in calls {
        assert_eq!(c.await.unwrap(), Err(CallError::Disconnected));
    }
    client.closed().await;
    assert_eq!(client.close_reason(), Some(CloseReason::PeerClosed));
    assert_eq!(client.stats().tables, pb::TableStats::default());
}

#[tokio::test(start_paused = true)]
async fn a_server_that_vanishes_mid_answer_fails_the_call() {
    let (a, mut raw) = pb::transport::memory_pair();
    raw.write_all(&HELLO).await.unwrap();
    let client = Connection::establish(a, &Config::default(), Side::Client, None, None)
        .await
        .unwrap();
    read_hello_frame(&mut raw).await;
    let k: KitchenRef = client.root();
    let call = tokio::spawn(async move { k.add(40, 2).await });
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut body).await.unwrap();
    // Half an answer frame, then gone.
    raw.write_all(&[0, 0, 0, 5, 2, 1]).await.unwrap();
    drop(raw);
    assert_eq!(call.await.unwrap(), Err(CallError::Disconnected));
    assert_eq!(client.close_reason(), Some(CloseReason::PeerClosed));
}

#[tokio::test]
async fn a_server_shut_down_with_calls_in_flight_answers_them_all() {
    let (server, gate) = kitchen_server().await;
    let addr = server.local_addr();
    let mut clients = Vec::new();
    let mut calls = Vec::new();
    for c in 0..2u64 {
        let conn = pb::Client::connect(addr).await.unwrap();
        let k: KitchenRef = conn.root();
        for i in 0..5u64 {
            let k = k.clone();
            let v = c * 100 + i;
            calls.push((v, tokio::spawn(async move { k.gated(v).await })));
        }
        clients.push(conn);
    }
    let in_flight = |s: &pb::ServerHandle| {
        s.connections()
            .iter()
            .map(|c| c.stats().tables.in_flight_calls)
            .sum::<usize>()
    };
    assert!(eventually(10, || in_flight(&server) == 10).await);
    let shutdown = tokio::spawn(server.shutdown());
    // New calls are refused once the shutdown has begun: never dropped silently.
    let k: KitchenRef = clients[0].root();
    let mut refused = false;
    for _ in 0..10_000 {
        match k.add(1, 1).await {
            Ok(2) => tokio::task::yield_now().await,
            Err(CallError::ShuttingDown) => {
                refused = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused, "a call during the shutdown is refused as such");
    // The calls in flight finish, and every answer reaches its caller.
    gate.add_permits(10);
    for (v, call) in calls {
        assert_eq!(call.await.unwrap(), Ok(v));
    }
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
    for c in &clients {
        tokio::time::timeout(Duration::from_secs(10), c.closed())
            .await
            .expect("clients see the close");
    }
}

#[tokio::test(start_paused = true)]
async fn calls_still_running_at_the_drain_timeout_fail_cleanly() {
    let config = Config {
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let (server, client) = memory_pair_with(KitchenRef::new(KitchenImpl::default()), config).await;
    let k: KitchenRef = client.root();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let k = k.clone();
            tokio::spawn(async move { k.gated(i).await })
        })
        .collect();
    assert!(settle(|| server.stats().tables.in_flight_calls == 3).await);
    let started = tokio::time::Instant::now();
    server.close().await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    for c in calls {
        assert_eq!(c.await.unwrap(), Err(CallError::Disconnected));
    }
}

// ---- a client process killed ----------------------------------------------------------------

#[pb::remote]
pub trait Spawner {
    /// A new object exported to the caller.
    async fn spawn(&self) -> Result<SpawnerRef, String>;
}

struct SpawnerImpl(Arc<AtomicUsize>);

impl SpawnerImpl {
    fn new(live: &Arc<AtomicUsize>) -> SpawnerImpl {
        live.fetch_add(1, Ordering::SeqCst);
        SpawnerImpl(live.clone())
    }
}

impl Drop for SpawnerImpl {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Spawner for SpawnerImpl {
    async fn spawn(&self) -> Result<SpawnerRef, String> {
        Ok(SpawnerRef::new(SpawnerImpl::new(&self.0)))
    }
}

const CHILD_ENV: &str = "PB_FAULT_CHILD_ADDR";

/// Not a test of its own: the client process that `a_killed_client_process_*` starts (this
/// test binary run again with an address in the environment). It connects, takes three
/// objects, says READY and waits to be killed (or for its parent's pipe to close).
#[tokio::test]
#[ignore = "run as a child process by a_killed_client_process_is_noticed_and_its_objects_freed"]
async fn child_process_client() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return;
    };
    let conn = pb::Client::connect(addr.as_str()).await.unwrap();
    let root: SpawnerRef = conn.root();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(root.spawn().await.unwrap());
    }
    println!("READY");
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .unwrap();
    drop(held);
}

#[tokio::test]
async fn a_killed_client_process_is_noticed_and_its_objects_freed() {
    let live = Arc::new(AtomicUsize::new(0));
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(SpawnerRef::new(SpawnerImpl::new(&live)));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_client",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, server.local_addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // `ends_with`: run one test at a time (RUST_TEST_THREADS=1, as coverage tools
            // do), libtest prints the test's name on the same line before the body runs.
            .any(|l| l.trim_end().ends_with("READY"))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("the child connects")
            .unwrap(),
        "the child said READY"
    );
    assert_eq!(live.load(Ordering::SeqCst), 4, "the root and three objects");
    let conns = server.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].stats().tables.exported, 3);

    child.kill().unwrap();
    child.wait().unwrap();

    tokio::time::timeout(Duration::from_secs(10), conns[0].closed())
        .await
        .expect("the server notices the dead client");
    assert_eq!(conns[0].stats().tables, pb::TableStats::default());
    assert!(eventually(10, || server.connections().is_empty()).await);
    drop(conns);
    assert!(
        eventually(10, || live.load(Ordering::SeqCst) == 1).await,
        "the three objects were freed"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_completes_its_handshake_during_a_shutdown_is_closed_too() {
    let (server, _gate) = kitchen_server().await;
    let addr = server.local_addr();
    // A peer that connects but has not sent its hello yet...
    let mut slow = TcpStream::connect(addr).await.unwrap();
    // ...is accepted before this one, whose call proves it.
    let conn = pb::Client::connect(addr).await.unwrap();
    let k: KitchenRef = conn.root();
    assert_eq!(k.add(1, 1).await, Ok(2));
    let shutdown = tokio::spawn(server.shutdown());
    // The shutdown has swept the live connections once this one is closed.
    conn.closed().await;
    // Now the slow peer's handshake completes: the server must close that connection too,
    // or the shutdown waits for as long as the peer stays.
    slow.write_all(&HELLO).await.unwrap();
    let mut hello = [0u8; 20];
    slow.read_exact(&mut hello).await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "the server closes it: {ended:?}"
    );
    let done = tokio::time::timeout(Duration::from_secs(10), shutdown).await;
    assert!(
        matches!(done, Ok(Ok(()))),
        "the shutdown completes: {done:?}"
    );
}

/// A transport whose writes fail once `broken` is set.
struct BreaksOnWrite {
    io: tokio::io::DuplexStream,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for BreaksOnWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BreaksOnWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.broken.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(Err(std::io::Error::other("link cut")));
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
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

/// A call whose caller writes it itself, into a transport that fails, closes the connection
/// with the transport's error, and the call fails at once rather than waiting for an answer.
#[tokio::test(start_paused = true)]
async fn a_call_written_into_a_failing_transport_closes_the_connection_with_the_error() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transport = BreaksOnWrite {
        io: b,
        broken: broken.clone(),
    };
    let config = Config::default();
    let (server, client) = tokio::join!(
        Connection::establish(
            a,
            &config,
            Side::Server,
            Some(KitchenRef::new(KitchenImpl::default()).into()),
            None,
        ),
        Connection::establish(transport, &config, Side::Client, None, None),
    );
    let (server, client) = (server.unwrap(), client.unwrap());
    let k: KitchenRef = client.root();
    assert_eq!(k.add(1, 2).await, Ok(3));
    broken.store(true, Ordering::SeqCst);
    let hour = Duration::from_secs(3600);
    let r = tokio::time::timeout(hour, k.add(3, 4))
        .await
        .expect("failed at once");
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        client.close_reason(),
        Some(CloseReason::Io("link cut".into()))
    );
    drop(client);
    tokio::time::timeout(hour, server.closed())
        .await
        .expect("the server sees the client go");
}
