//! pb-server: listening for pb connections.
//!
//! A [`Server`] binds a TCP listener and serves a root object, one shared by every connection
//! or one made per connection. It caps the number of live connections and shuts down
//! gracefully: it stops accepting, lets the calls in flight finish and their answers go out, then
//! closes every connection.
//!
//! # Layout
//! - this file: [`Server`], [`ServerBuilder`], [`ServerHandle`] and the accept loop.
//!
//! # Example
//! ```
//! # use pb_core::ObjectRef;
//! # async fn example(root: ObjectRef) -> std::io::Result<()> {
//! let server = pb_server::Server::builder()
//!     .max_connections(100)
//!     .bind("127.0.0.1:0")
//!     .await?
//!     .serve(root);
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb_core::{Config, Connection, ObjectRef, Side};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Builds a [`Server`] with non-default settings.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    config: Config,
    max_connections: usize,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: Config::default(),
            max_connections: 1024,
        }
    }
}

impl ServerBuilder {
    /// The settings of each connection (limits, timeouts).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The most connections served at once (default 1 024). Connections beyond it are closed
    /// as soon as they are accepted.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// How long a graceful shutdown waits for calls in flight (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Bind a TCP listener.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            builder: self,
        })
    }
}

/// A bound server, ready to serve a root object.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    builder: ServerBuilder,
}

type RootFactory = Arc<dyn Fn(SocketAddr) -> ObjectRef + Send + Sync>;

impl Server {
    /// Bind with default settings.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Server> {
        ServerBuilder::default().bind(addr).await
    }

    /// Start building a server with custom settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serve one root object shared by every connection.
    pub fn serve(self, root: impl Into<ObjectRef>) -> ServerHandle {
        let root = root.into();
        self.serve_with(move |_| root.clone())
    }

    /// Serve a root object made for each connection from the peer's address.
    pub fn serve_with<F, R>(self, make_root: F) -> ServerHandle
    where
        F: Fn(SocketAddr) -> R + Send + Sync + 'static,
        R: Into<ObjectRef>,
    {
        let local_addr = self.local_addr();
        let factory: RootFactory = Arc::new(move |addr| make_root(addr).into());
        let (stop_tx, stop_rx) = watch::channel(false);
        let live = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(accept_loop(
            self.listener,
            self.builder,
            factory,
            stop_rx,
            live.clone(),
        ));
        ServerHandle {
            local_addr,
            stop: stop_tx,
            live,
            task,
        }
    }
}

type Live = Arc<Mutex<HashMap<u64, Connection>>>;

async fn accept_loop(
    listener: TcpListener,
    builder: ServerBuilder,
    factory: RootFactory,
    mut stop: watch::Receiver<bool>,
    live: Live,
) {
    let permits = Arc::new(Semaphore::new(builder.max_connections));
    let config = Arc::new(builder.config);
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%addr, max = builder.max_connections, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = pb_core::transport::prepare_tcp(&stream);
        let root = factory(addr);
        let config = config.clone();
        let live = live.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if *stop.borrow() {
                return;
            }
            let conn =
                match Connection::establish(stream, &config, Side::Server, Some(root), Some(addr))
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::info!(%addr, error = %e, "handshake failed");
                        return;
                    }
                };
            live.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(conn.id(), conn.clone());
            conn.closed().await;
            live.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&conn.id());
        });
    }
    drop(listener);
    // Connections are closed by `ServerHandle::shutdown`; wait for their tasks to end.
    while tasks.join_next().await.is_some() {}
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    live: Live,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections being served right now.
    pub fn connections(&self) -> Vec<Connection> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Stop accepting, let the calls in flight finish (up to the drain timeout) and their answers
    /// go out, then close every connection. Calls that arrive meanwhile are refused with a
    /// shutting-down error, never dropped silently.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut closing = JoinSet::new();
        for conn in self.connections() {
            closing.spawn(async move { conn.close().await });
        }
        while closing.join_next().await.is_some() {}
        let _ = self.task.await;
    }
}
