//! A server's life: served on a listener bound first, until it is shut down (`wait`), by a call
//! handler holding a `ShutdownHandle`, and what dropping its handle does. Real TCP on 127.0.0.1,
//! driven by events (answers, closed connections); a timeout only guards against a hang.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use pb::{Client, Server, ShutdownHandle};
use tokio::net::{TcpListener, TcpStream};

/// Only against a hang: every wait below ends on an event long before.
const NO_HANG: Duration = Duration::from_secs(20);

#[pb::remote]
pub trait Admin {
    async fn ping(&self) -> Result<u32, ()>;
    /// Ask the server to shut down, and answer.
    async fn stop(&self) -> Result<String, ()>;
}

struct Control {
    stop: Option<ShutdownHandle>,
}

impl Admin for Control {
    async fn ping(&self) -> Result<u32, ()> {
        Ok(7)
    }

    async fn stop(&self) -> Result<String, ()> {
        let stop = self.stop.as_ref().ok_or(())?;
        stop.shutdown();
        assert!(stop.is_shutdown());
        Ok("stopping".into())
    }
}

/// Yield until connecting to `addr` is refused (the listener is closed); false if it never is.
async fn refused(addr: SocketAddr) -> bool {
    for _ in 0..1000 {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::task::yield_now().await,
        }
    }
    false
}

#[tokio::test]
async fn a_handler_shuts_the_server_down_and_wait_returns() {
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let stop = server.shutdown_handle();
    assert!(!stop.is_shutdown());
    let server = server.serve(AdminRef::new(Control { stop: Some(stop) }));
    let addr = server.local_addr();

    let conn = Client::connect(addr).await.unwrap();
    let admin: AdminRef = conn.root();
    assert_eq!(admin.ping().await, Ok(7));
    // The handler's call is in flight when the shutdown begins: it is answered all the same.
    let asked = tokio::spawn(async move { admin.stop().await });
    tokio::time::timeout(NO_HANG, server.wait())
        .await
        .expect("wait returns once the handler has shut the server down");
    assert_eq!(asked.await.unwrap(), Ok("stopping".to_owned()));
    assert!(server.shutdown_handle().is_shutdown());
    // Every connection was closed, and the listener with them.
    tokio::time::timeout(NO_HANG, conn.closed()).await.unwrap();
    assert!(server.connections().is_empty());
    assert!(refused(addr).await, "the listener is still open");
    // Waiting again, or shutting down again, returns at once.
    server.wait().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wait_serves_until_a_shutdown_handle_is_used_from_another_task() {
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(AdminRef::new(Control { stop: None }));
    let conn = Client::connect(server.local_addr()).await.unwrap();
    let admin: AdminRef = conn.root();
    assert_eq!(admin.ping().await, Ok(7));
    let stop = server.shutdown_handle();
    let waiting = async {
        server.wait().await;
        "done"
    };
    // Still serving while nobody has asked: the call is answered, and `wait` still waits.
    tokio::select! {
        _ = waiting => panic!("wait returned before any shutdown"),
        r = admin.ping() => assert_eq!(r, Ok(7)),
    }
    stop.shutdown();
    tokio::time::timeout(NO_HANG, server.wait()).await.unwrap();
    tokio::time::timeout(NO_HANG, conn.closed()).await.unwrap();
}

#[tokio::test]
async fn a_shutdown_asked_before_serving_stops_the_server_as_it_starts() {
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    server.shutdown_handle().shutdown();
    let server = server.serve(AdminRef::new(Control { stop: None }));
    tokio::time::timeout(NO_HANG, server.wait()).await.unwrap();
    assert!(refused(addr).await);
}

#[tokio::test]
async fn from_listener_serves_a_listener_bound_first() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::from_listener(listener).serve(AdminRef::new(Control { stop: None }));
    assert_eq!(server.local_addr(), addr);
    let conn = Client::connect(addr).await.unwrap();
    assert_eq!(conn.root::<AdminRef>().ping().await, Ok(7));
    conn.close().await;
    server.shutdown().await;

    // With settings, through the builder.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder()
        .max_connections(4)
        .listener(listener)
        .unwrap()
        .serve(AdminRef::new(Control { stop: None }));
    let conn = Client::connect(server.local_addr()).await.unwrap();
    assert_eq!(conn.root::<AdminRef>().ping().await, Ok(7));
    conn.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_handle_stops_accepting_and_leaves_open_connections_alone() {
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(AdminRef::new(Control { stop: None }));
    let addr = server.local_addr();
    let conn = Client::connect(addr).await.unwrap();
    let admin: AdminRef = conn.root();
    assert_eq!(admin.ping().await, Ok(7));
    drop(server);
    assert!(refused(addr).await, "the listener is still open");
    // The connection accepted before the drop is still served.
    assert_eq!(admin.ping().await, Ok(7));
    assert!(!conn.is_closed());
    conn.close().await;
}

#[pb::remote]
pub trait Adder {
    async fn add(&self, a: i64, b: i64) -> i64;
}

struct TheAdder;

impl Adder for TheAdder {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

#[derive(pb::AmpCommand)]
#[amp(response = Total)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(pb::AmpFields)]
struct Total {
    total: i64,
}

/// `usize::MAX` is a natural way to write "no limit": every server takes it so, where tokio's
/// semaphore panics above about 2⁶¹ permits (the native server's accept task died with it,
/// leaving a server that refused every connection and a `wait` that returned at once).
#[tokio::test]
async fn every_server_takes_usize_max_connections_as_no_limit() {
    let native = Server::builder()
        .max_connections(usize::MAX)
        .max_connections_per_address(usize::MAX)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(AdderRef::new(TheAdder));
    let conn = Client::connect(native.local_addr()).await.unwrap();
    let adder: AdderRef = conn.root();
    assert_eq!(adder.add(1, 2).await, Ok(3));
    // The shutdown waits for the connections' permits: only those taken, not 2⁶¹.
    tokio::time::timeout(NO_HANG, native.shutdown())
        .await
        .unwrap();
    // A portal whose logins waiting are not limited.
    let login = pb::LoginConfig {
        max_pending_logins: usize::MAX,
        ..pb::LoginConfig::default()
    };
    let _portal = pb::Portal::new(|_| async { Err(pb::Refusal::Unavailable) }).config(login);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let amp_addr = listener.local_addr().unwrap();
    let config = pb::amp::AmpConfig::default()
        .max_connections(usize::MAX)
        .max_connections_per_address(usize::MAX);
    tokio::spawn(pb::amp::serve(listener, config, |_| {
        pb::amp::Locator::new().respond(|Add { a, b }| async move { Ok(Total { total: a + b }) })
    }));
    let amp = pb::amp::AmpConnection::connect(
        amp_addr,
        pb::amp::AmpConfig::default(),
        pb::amp::Locator::new(),
    )
    .await
    .unwrap();
    assert_eq!(amp.call(&Add { a: 2, b: 3 }).await.unwrap().total, 5);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pb_addr = listener.local_addr().unwrap();
    let config = pb::twisted::PbConfig::default()
        .max_connections(usize::MAX)
        .max_connections_per_address(usize::MAX);
    tokio::spawn(pb::twisted::serve(
        listener,
        AdderRef::new(TheAdder).into(),
        config,
    ));
    let twisted = pb::twisted::connect(pb_addr, pb::twisted::PbConfig::default())
        .await
        .unwrap();
    let adder: AdderRef = twisted.root();
    assert_eq!(adder.add(3, 4).await, Ok(7));
}
