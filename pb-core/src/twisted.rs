//! Twisted's Perspective Broker: pb objects served to Twisted PB clients, and Twisted PB
//! servers called from pb.
//!
//! A connection here speaks the PB dialect (Banana framing, Jelly values, Twisted's broker
//! messages) and gives the same [`Connection`] and [`ObjectRef`]s as pb's own protocol: a
//! `#[pb::remote]` trait is served to Twisted clients as it is (its methods are what Twisted
//! calls with `callRemote("name", ...)`), and a `FooRef` stub calls a Twisted object's
//! `remote_foo`. Arguments and results convert through serde to and from Jelly. References
//! travel as PB's flavors: an object of ours as `["remote", luid]`, counted per send and
//! released by the peer's `decref`s; the peer's object sent back to it as `["local", luid]`,
//! so it gets its own object back. The root is the object named `root`.
//!
//! The types Python has and Rust's standard library lacks are here: [`BigInt`] (any integer
//! Banana carries), [`Decimal`], [`Set`], [`FrozenSet`], [`Dynamic`] (any Jelly value, sharing
//! and cycles kept) and [`Failure`] (Twisted's `CopyableFailure`). A method's error crosses as
//! a Failure: a [`Failure`] as it is, any other error type as a failure named by its Rust
//! path with its value as the message (no traceback is ever sent).
//!
//! ```no_run
//! # async fn demo(root: pb::ObjectRef) -> std::io::Result<()> {
//! // Serve `root` to Twisted PB clients on port 8789.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8789").await?;
//! pb::twisted::serve(listener, root, pb::twisted::PbConfig::default()).await
//! # }
//! ```
//!
//! See docs/guide/twisted-pb.md for the type mapping and what differs from Twisted.

mod cache;
mod driver;
mod portal;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use crate::link::{CloseReason, Connection};
use crate::object::ObjectRef;
use pb_proto::twisted::Role;

pub use crate::codec::jelly::{
    BigInt, BigIntRangeError, Decimal, Dynamic, Failure, FrozenSet, ParseError, Set,
};
pub use cache::RemoteCache;
pub use pb_proto::jelly::{Graph, ObjectId, Value};
pub use pb_proto::twisted::cred;
pub use pb_proto::twisted::{MAX_BROKER_REFS, PROTOCOL_VERSION, PbConfig};
pub use portal::{Credentials, MAX_PENDING_CHALLENGES, Portal, login, login_anonymous};

/// Serves `root` to Twisted PB clients on `listener`, each connection with its own broker. It
/// keeps at most [`PbConfig::max_connections`] open, and
/// [`PbConfig::max_connections_per_address`] from one address; one more is closed as soon as
/// it is accepted. An accept error (out of file descriptors, say) is logged and retried after a
/// pause that grows to a second: the server goes on, and never returns an error.
pub async fn serve(listener: TcpListener, root: ObjectRef, config: PbConfig) -> io::Result<()> {
    serve_with(listener, move |_| root.clone(), config).await
}

/// As [`serve`], with the root of each connection made by `root_for` (a [`Portal`] gives each
/// connection its own login object).
pub async fn serve_with<F>(listener: TcpListener, root_for: F, config: PbConfig) -> io::Result<()>
where
    F: Fn(&Connection) -> ObjectRef + Send + Sync + 'static,
{
    let permits = Arc::new(crate::transport::permits(config.max_connections.max(1)));
    let per_address = crate::transport::PerAddress::new(config.max_connections_per_address);
    let mut pause = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                pause = Duration::from_millis(5);
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %addr, max = config.max_connections, "twisted pb: connection refused: max_connections reached");
                    continue;
                };
                let Some(slot) = per_address.enter(addr.ip()) else {
                    tracing::warn!(peer = %addr, max = config.max_connections_per_address, "twisted pb: connection refused: max_connections_per_address reached");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // The root is in place before the first byte is read: a call that arrives at
                // once must find it.
                let shared = driver::PbShared::new(Role::Server, config, Some(addr), None);
                let conn = Connection::new(shared.clone());
                let root = root_for(&conn);
                portal::watch_login(&conn, Some(&root));
                conn.set_root(Some(root));
                driver::run(&shared, stream);
                tokio::spawn(async move {
                    conn.closed().await;
                    drop((permit, slot));
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Starts the server side of a Twisted PB connection on `io`, serving `root` as `root`.
pub fn accept_io<T>(
    io: T,
    peer_addr: Option<std::net::SocketAddr>,
    root: Option<ObjectRef>,
    config: PbConfig,
) -> Connection
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let watched = root.clone();
    let shared = driver::start(io, Role::Server, config, peer_addr, root);
    let conn = Connection::new(shared);
    portal::watch_login(&conn, watched.as_ref());
    conn
}

/// Connects to a Twisted PB server at `addr` and completes the dialect handshake; the server's
/// root is [`Connection::root_ref`].
pub async fn connect<A: ToSocketAddrs>(addr: A, config: PbConfig) -> io::Result<Connection> {
    // The handshake timeout bounds the TCP connect too.
    let stream = tokio::time::timeout(config.handshake_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no connection within PbConfig::handshake_timeout",
            )
        })??;
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    connect_io(stream, peer, config)
        .await
        .map_err(|r| io::Error::new(io::ErrorKind::ConnectionAborted, format!("{r:?}")))
}

/// As [`connect`], over a transport of the caller's (TLS, say).
pub async fn connect_io<T>(
    io: T,
    peer_addr: Option<std::net::SocketAddr>,
    config: PbConfig,
) -> Result<Connection, CloseReason>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let shared = driver::start(io, Role::Client, config, peer_addr, None);
    shared.wait_ready().await?;
    let conn: Arc<driver::PbShared> = shared;
    Ok(Connection::new(conn))
}
