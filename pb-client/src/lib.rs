//! pb-client: connecting to a pb server.
//!
//! [`Client::connect`] dials, runs the handshake and returns the [`Connection`], whose
//! [`Connection::root`] is the server's root object. A client may serve a root of its own, which
//! the server reaches the same way: connections are symmetric.
//!
//! # Layout
//! - this file: [`Client`] and [`ClientBuilder`];
//! - `reconnect`: [`Reconnecting`], a client that reconnects with backoff and publishes its state.
//!
//! # Example
//! ```no_run
//! # async fn example() -> Result<(), pb_core::ConnectError> {
//! let conn = pb_client::Client::connect("127.0.0.1:8789").await?;
//! let root = conn.root_ref();
//! let answer: String = root.call::<_, _, ()>("greet", &("ada",)).await.expect("call failed");
//! conn.close().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use pb_core::{Config, ConnectError, Connection, ObjectRef, Side};

mod reconnect;
pub use reconnect::{Backoff, ClientState, Reconnecting, root_session};
use tokio::net::ToSocketAddrs;

/// Connects to pb servers.
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Connect with default settings, serving nothing of our own.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Connection, ConnectError> {
        ClientBuilder::default().connect(addr).await
    }

    /// Start building a client with custom settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

/// Builds a client connection with custom settings.
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    config: Config,
    root: Option<ObjectRef>,
}

impl ClientBuilder {
    /// The connection's settings (limits, timeouts).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// An object of ours that the server reaches as our root.
    pub fn root(mut self, root: impl Into<ObjectRef>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Dial `addr` over TCP and run the handshake.
    pub async fn connect(self, addr: impl ToSocketAddrs) -> Result<Connection, ConnectError> {
        let (stream, peer) = pb_core::transport::tcp_connect(addr).await?;
        Connection::establish(stream, &self.config, Side::Client, self.root, Some(peer)).await
    }

    /// Run the handshake over an already connected transport (for example an in-memory pipe).
    pub async fn connect_over<T>(self, io: T) -> Result<Connection, ConnectError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        Connection::establish(io, &self.config, Side::Client, self.root, None).await
    }
}
