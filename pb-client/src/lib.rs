//! pb-client: connecting to a pb server, with or without TLS, and logging in.
//!
//! [`Client::connect`] dials, sends pb's hello and returns the [`Connection`], whose
//! [`Connection::root`] is the server's root object. It does not wait for the server's hello:
//! the first call goes out with ours, and a server that refuses it makes the calls fail with
//! [`CallError::Handshake`](pb_core::CallError::Handshake) (see [`ClientBuilder::connect`]). A
//! client may serve a root of its own, which the server reaches the same way: connections are
//! symmetric.
//!
//! Over TLS, the server's certificate that the handshake verified is the connection's identity
//! ([`Identity::Certificate`]), as a verified client certificate is on the server's side: a
//! handler of ours that the server calls reads it with `caller.identity::<Identity>()`.
//!
//! To log in to a server that serves a portal, [`Client::login`] dials, logs in with a password
//! and returns the typed avatar. For more ([`ClientBuilder::tls`], a mind, other ways to log
//! in), [`ClientBuilder::open`] returns a [`Session`] whose [`Session::login`] (SCRAM-SHA-256),
//! [`Session::login_anonymous`] and [`Session::login_with_certificate`] return the typed avatar.
//! One login per connection: once logged in, a connection stays that user's, and the server
//! refuses another login on it
//! ([`Refusal::AlreadyLoggedIn`](pb_core::login::Refusal::AlreadyLoggedIn)).
//!
//! # Layout
//! - this file: [`Client`], [`ClientBuilder`], [`ClientError`] and dialing;
//! - `tls`: [`ClientTls`], the roots to trust and an optional client certificate;
//! - `session`: [`Session`] and [`LoginError`];
//! - `reconnect`: [`Reconnecting`], a client that reconnects with backoff and publishes its state.
//!
//! # Example
//! ```no_run
//! # async fn example() -> Result<(), pb::ConnectError> {
//! let conn = pb::Client::connect("127.0.0.1:8789").await?;
//! let root = conn.root_ref();
//! let answer: String = root.call::<_, _, ()>("greet", &("ada",)).await.expect("call failed");
//! conn.close().await;
//! # Ok(()) }
//! ```
//!
//! Over TLS, with login:
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use pb::{Client, ClientTls};
//! let tls = ClientTls::from_roots_pem_file("ca.crt")?.server_name("localhost")?;
//! let session = Client::builder().tls(tls).open("127.0.0.1:8789").await?;
//! let avatar: pb::ObjectRef = session.login("ada", "correct horse").await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod session;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use pb_core::handshake::HandshakeError;
use pb_core::scram::{self, ChannelBinding, EXPORTER_LABEL, EXPORTER_LEN};
use pb_core::{Config, ConnectError, Connection, ObjectRef, Remote, Side};
use tokio::io::{AsyncRead, AsyncWrite};

mod reconnect;
pub use reconnect::{Backoff, ClientState, Reconnecting, root_session};
use tokio::net::ToSocketAddrs;

pub use pb_core::pem::TlsError;
pub use pb_core::{Identity, PeerCertificate};
/// The rustls crate pb-client is built with, for custom TLS configurations.
pub use rustls;
pub use session::{LoginError, Session};
pub use tls::ClientTls;

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

    /// Dial `addr` with default settings (no TLS), log in with a password (SCRAM-SHA-256) and
    /// return the avatar, typed as `R` (for example a generated `FooRef`): the common case of
    /// [`ClientBuilder::open`] followed by [`Session::login`]. With TLS or other settings, use
    /// [`ClientBuilder::login`]; to hand the server a mind, or to log in otherwise, open a
    /// [`Session`].
    ///
    /// The connection stays open while the server keeps it; the avatar reaches it with
    /// `avatar.object_ref().peer()` (to close it, for example). One login per connection: this
    /// connection is logged in as `username` for good.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), pb::LoginError> {
    /// use pb::Remote;
    /// let avatar: pb::ObjectRef =
    ///     pb::Client::login("127.0.0.1:8789", "ada", "correct horse").await?;
    /// if let Some(conn) = avatar.object_ref().peer() {
    ///     conn.close().await;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn login<R: Remote>(
        addr: impl ToSocketAddrs,
        username: &str,
        password: &str,
    ) -> Result<R, LoginError> {
        ClientBuilder::default()
            .login(addr, username, password)
            .await
    }
}

/// Opening a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection failed.
    #[error("cannot connect")]
    Io(#[source] io::Error),
    /// The TLS settings were refused.
    #[error("bad tls settings")]
    Config(#[from] TlsError),
    /// The server's certificate does not chain to a trusted root or is not valid for the name
    /// dialed.
    #[error("the server's certificate is not trusted")]
    UntrustedCertificate(#[source] rustls::Error),
    /// The server answered in TLS, but this client dialed without it.
    #[error("the server speaks tls: connect with tls")]
    ServerRequiresTls,
    /// The server did not answer in TLS, but this client dialed with it.
    #[error("the server does not speak tls: connect without tls")]
    ServerWithoutTls,
    /// The TLS handshake failed otherwise (for example the server wants a client certificate).
    #[error("tls handshake failed")]
    Tls(#[source] io::Error),
    /// The TLS handshake did not finish within the handshake timeout.
    #[error("the tls handshake timed out")]
    TlsTimeout,
    /// The pb handshake failed.
    #[error("pb handshake failed")]
    Handshake(#[source] ConnectError),
}

/// Whether a dial waits for the server's hello before it returns.
#[derive(Debug, Clone, Copy)]
enum Hello {
    /// Send ours and return: the connection's reader checks the server's.
    Send,
    /// Wait for the server's: a refused hello is the dial's error.
    Wait,
}

/// Builds a client connection with custom settings.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    config: Config,
    root: Option<ObjectRef>,
    tls: Option<TlsSetting>,
    max_iterations: u32,
}

#[derive(Clone)]
enum TlsSetting {
    Settings(Box<ClientTls>),
    Ready(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
}

impl std::fmt::Debug for TlsSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSetting::Settings(s) => s.fmt(f),
            TlsSetting::Ready(_, name) => write!(f, "rustls::ClientConfig for {name:?}"),
        }
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            config: Config::default(),
            root: None,
            tls: None,
            max_iterations: scram::DEFAULT_MAX_ITERATIONS,
        }
    }
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

    /// Dial with TLS 1.3, with these settings.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(TlsSetting::Settings(Box::new(tls)));
        self
    }

    /// Dial with TLS using a rustls configuration of your own, checking the server's
    /// certificate against `server_name`.
    pub fn rustls_config(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        self.tls = Some(TlsSetting::Ready(config, server_name));
        self
    }

    /// The most PBKDF2 iterations a password login computes (default
    /// [`scram::DEFAULT_MAX_ITERATIONS`]), so that a hostile server cannot make it spin.
    pub fn max_iterations(mut self, n: u32) -> Self {
        self.max_iterations = n;
        self
    }

    /// Dial `addr` (over TLS if configured) and start the connection.
    ///
    /// The connection is returned as soon as our pb hello is queued, without waiting for the
    /// server's ([`Connection::dial`]): the first call leaves with the hello, so connecting and
    /// one call cost one round trip. A server that refuses the hello (another protocol version,
    /// or a server that is not pb, or that wants TLS) is therefore not this function's error:
    /// the connection closes with [`CloseReason::Handshake`](pb_core::CloseReason::Handshake)
    /// and calls fail with [`CallError::Handshake`](pb_core::CallError::Handshake), which names
    /// the cause. [`ClientBuilder::open`] waits for the server's hello and reports such a server
    /// as its error.
    ///
    /// TLS failures are reported as [`ConnectError::Io`] wrapping a [`ClientError`];
    /// [`ClientBuilder::open`] reports them directly.
    pub async fn connect(self, addr: impl ToSocketAddrs) -> Result<Connection, ConnectError> {
        match self.open_with(addr, Hello::Send).await {
            Ok(s) => Ok(s.into_connection()),
            Err(ClientError::Handshake(e)) => Err(e),
            Err(ClientError::Io(e)) => Err(ConnectError::Io(e)),
            Err(e) => Err(ConnectError::Io(io::Error::other(e))),
        }
    }

    /// Dial `addr` (over TLS if configured), run the handshake, and return a [`Session`] ready
    /// to log in.
    ///
    /// Unlike [`ClientBuilder::connect`], this waits for the server's hello, so a server that
    /// speaks another version, or TLS when we do not, is reported here (for example as
    /// [`ClientError::ServerRequiresTls`]).
    pub async fn open(self, addr: impl ToSocketAddrs) -> Result<Session, ClientError> {
        self.open_with(addr, Hello::Wait).await
    }

    /// Dial `addr` with these settings, log in with a password and return the typed avatar:
    /// [`ClientBuilder::open`] followed by [`Session::login`], a failure to open the connection
    /// being [`LoginError::Connect`]. See [`Client::login`].
    pub async fn login<R: Remote>(
        self,
        addr: impl ToSocketAddrs,
        username: &str,
        password: &str,
    ) -> Result<R, LoginError> {
        let session = self.open(addr).await.map_err(LoginError::Connect)?;
        let logged_in = session.login(username, password).await;
        if logged_in.is_err() {
            // Nothing else will use this connection.
            session.close().await;
        }
        logged_in
    }

    async fn open_with(
        self,
        addr: impl ToSocketAddrs,
        hello: Hello,
    ) -> Result<Session, ClientError> {
        // The handshake timeout bounds the TCP connect too: a peer that drops SYNs would
        // otherwise hold the dial until the kernel gives up (minutes).
        let timeout = self.config.handshake_timeout;
        let (stream, peer) =
            match tokio::time::timeout(timeout, pb_core::transport::tcp_connect(addr)).await {
                Ok(connected) => connected.map_err(ClientError::Io)?,
                Err(_) => {
                    return Err(ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within handshake_timeout = {timeout:?}"),
                    )));
                }
            };
        let (config, name) = match &self.tls {
            None => {
                let conn = self.establish(stream, Some(peer), hello, None).await?;
                return Ok(Session::new(
                    conn,
                    ChannelBinding::None,
                    self.max_iterations,
                ));
            }
            Some(TlsSetting::Settings(s)) => (s.build()?, s.name_for(peer)),
            Some(TlsSetting::Ready(c, name)) => (c.clone(), name.clone()),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = tokio::time::timeout(
            self.config.handshake_timeout,
            connector.connect(name, stream),
        );
        let tls = match handshake.await {
            Err(_) => return Err(ClientError::TlsTimeout),
            Ok(Err(e)) => return Err(classify_tls_error(e)),
            Ok(Ok(tls)) => tls,
        };
        let session = tls.get_ref().1;
        let exporter = session
            .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
            .map_err(|e| ClientError::Tls(io::Error::other(e)))?;
        // The server's certificate, which the handshake verified: the connection's identity,
        // as a server records a verified client certificate.
        let server = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Identity::Certificate(PeerCertificate::from_der(c.clone().into_owned())));
        let conn = self.establish(tls, Some(peer), hello, server).await?;
        Ok(Session::new(
            conn,
            ChannelBinding::TlsExporter(exporter),
            self.max_iterations,
        ))
    }

    /// Start a connection over an already connected transport (for example an in-memory
    /// pipe). As [`ClientBuilder::connect`], it does not wait for the server's hello.
    pub async fn connect_over<T>(self, io: T) -> Result<Connection, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Connection::dial(io, &self.config, self.root, None).await
    }

    /// As [`ClientBuilder::connect_over`], returning a [`Session`] ready to log in. The
    /// transport offers no channel binding: TLS settings of this builder are not used.
    pub async fn open_over<T>(self, io: T) -> Result<Session, ClientError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let conn = self.establish(io, None, Hello::Wait, None).await?;
        Ok(Session::new(
            conn,
            ChannelBinding::None,
            self.max_iterations,
        ))
    }

    /// Start the connection; `identity` (the server's verified certificate) is recorded on it
    /// before any call of the server's is handled.
    async fn establish<T>(
        &self,
        io: T,
        peer: Option<SocketAddr>,
        hello: Hello,
        identity: Option<Identity>,
    ) -> Result<Connection, ClientError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let root = self.root.clone();
        let conn = match hello {
            Hello::Send => Connection::dial(io, &self.config, root, peer)
                .await
                .inspect(|conn| {
                    // Before the server can call us: it calls nothing before it has our hello,
                    // which `dial` only queued.
                    if let Some(identity) = identity {
                        conn.set_identity(identity);
                    }
                }),
            Hello::Wait => {
                Connection::establish_with_reader(io, &self.config, Side::Client, root, peer)
                    .await
                    .map(|(conn, reader)| {
                        // Recorded before the reader runs, so before any call of the server's
                        // is handled (as pb-server records a client's certificate).
                        if let Some(identity) = identity {
                            conn.set_identity(identity);
                        }
                        tokio::spawn(reader);
                        conn
                    })
            }
        };
        conn.map_err(|e| match e {
            // A TLS record (alert or handshake, version 3.x) where pb's magic should be.
            ConnectError::Handshake(HandshakeError::BadMagic {
                magic: [0x15 | 0x16, 0x03, ..],
            }) => ClientError::ServerRequiresTls,
            // The TLS server's alert (a certificate it refuses or wants) after our side of the
            // handshake was done: TLS 1.3 finishes the client's side first.
            ConnectError::Io(e)
                if e.get_ref()
                    .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some()) =>
            {
                ClientError::Tls(e)
            }
            e => ClientError::Handshake(e),
        })
    }
}

fn classify_tls_error(e: io::Error) -> ClientError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => {
            let inner = e
                .into_inner()
                .and_then(|i| i.downcast::<rustls::Error>().ok())
                .map_or(rustls::Error::General("invalid certificate".into()), |b| *b);
            ClientError::UntrustedCertificate(inner)
        }
        // Bytes that are not TLS records: the server speaks something else, most likely
        // plaintext pb, whose hello is no TLS record.
        Some(rustls::Error::InvalidMessage(_)) => ClientError::ServerWithoutTls,
        _ => ClientError::Tls(e),
    }
}
