//! Peer-to-peer nodes: one object that both listens and dials.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;

use pb_client::{ClientBuilder, ClientError, ClientTls, Session};
use pb_core::{Config, Connection, ObjectRef};
use pb_server::{Portal, ServerTls};
use tokio::net::ToSocketAddrs;

/// A node of a peer-to-peer service: it listens for peers and dials peers with the same API,
/// and offers the same root object to every peer, in both directions.
///
/// Every connection is symmetric: the node calls the peer's root and objects, and the peer
/// calls the node's. References received from one peer can be passed to another: calls are
/// forwarded through this node, and if the peer that owns the object becomes unreachable, the
/// forwarded references fail at once on every node that holds them.
///
/// ```
/// # #[pb::remote] pub trait Named { async fn name(&self) -> Result<String, ()>; }
/// # struct N(&'static str);
/// # impl Named for N { async fn name(&self) -> Result<String, ()> { Ok(self.0.into()) } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let a = pb::Node::builder().root(NamedRef::new(N("a"))).bind("127.0.0.1:0").await?;
/// let b = pb::Node::builder().root(NamedRef::new(N("b"))).bind("127.0.0.1:0").await?;
/// let to_a = b.dial(a.local_addr()).await.expect("dial");
/// assert_eq!(to_a.root::<NamedRef>().name().await, Ok("a".into()));
/// // And `a` reaches `b` over the same connection.
/// let to_b = a.peers().into_iter().next().expect("a peer");
/// assert_eq!(to_b.root::<NamedRef>().name().await, Ok("b".into()));
/// # a.shutdown().await; b.shutdown().await; Ok(()) }
/// ```
#[must_use = "dropping a Node stops it accepting peers: keep it, or call its `shutdown()`"]
pub struct Node {
    root: ObjectRef,
    config: Config,
    dial_tls: Option<ClientTls>,
    server: pb_server::ServerHandle,
    /// The connections this node dialed, by id: each inserts itself and a task of its own
    /// removes it when it closes.
    dialed: Arc<DashMap<u64, Connection>>,
}

/// Builds a [`Node`].
#[derive(Default)]
pub struct NodeBuilder {
    root: Option<ObjectRef>,
    config: Config,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    listen_tls: Option<ServerTls>,
    dial_tls: Option<ClientTls>,
    portal: Option<Portal>,
}

impl NodeBuilder {
    /// The object every peer reaches as this node's root.
    pub fn root(mut self, root: impl Into<ObjectRef>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// The settings of every connection (limits, timeouts).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Accept peers over TLS, with this certificate (and, if configured, client certificates,
    /// whose verified identity each call's `Caller` carries).
    pub fn listen_tls(mut self, tls: ServerTls) -> Self {
        self.listen_tls = Some(tls);
        self
    }

    /// Dial peers over TLS, trusting these roots (and presenting a client certificate, if
    /// configured). The peer's verified certificate is the identity each call it makes on the
    /// dialed connection carries, as on the connections this node accepts.
    pub fn dial_tls(mut self, tls: ClientTls) -> Self {
        self.dial_tls = Some(tls);
        self
    }

    /// Make peers that dial this node log in first: their root is the portal's login object,
    /// and they reach the node through the avatar the realm gives them. Peers this node dials
    /// still reach its root.
    pub fn portal(mut self, portal: Portal) -> Self {
        self.portal = Some(portal);
        self
    }

    /// The most peers accepted at once (default 1 024, as for a
    /// [`pb::ServerBuilder`](crate::ServerBuilder)).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// The most peers accepted at once from one source address, an IPv4 address or an IPv6
    /// /64 (default 64, as for a [`pb::ServerBuilder`](crate::ServerBuilder)), so that one
    /// address cannot take every place of [`NodeBuilder::max_connections`]: further peers
    /// from it are closed as soon as they are accepted. Raise it for many peers on one host
    /// (a test mesh on 127.0.0.1) or behind one NAT or proxy address:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// let node = pb::Node::builder()
    ///     .max_connections(1_000)
    ///     .max_connections_per_address(1_000)
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn max_connections_per_address(mut self, n: usize) -> Self {
        self.max_connections_per_address = Some(n);
        self
    }

    /// Start listening on `addr`.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<Node> {
        let root = self.root.unwrap_or_else(|| ObjectRef::local(NoRoot));
        let mut server = pb_server::Server::builder().config(self.config.clone());
        if let Some(n) = self.max_connections {
            server = server.max_connections(n);
        }
        if let Some(n) = self.max_connections_per_address {
            server = server.max_connections_per_address(n);
        }
        if let Some(tls) = self.listen_tls {
            server = server.tls(tls);
        }
        let server = server.bind(addr).await?;
        let server = match self.portal {
            Some(portal) => server.serve_portal(portal),
            None => server.serve(root.clone()),
        };
        Ok(Node {
            root,
            config: self.config,
            dial_tls: self.dial_tls,
            server,
            dialed: Arc::default(),
        })
    }
}

impl Node {
    /// Start building a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Dial a peer; the connection carries calls both ways (`conn.root()` is the peer's root,
    /// and the peer reaches this node's root).
    pub async fn dial(&self, addr: impl ToSocketAddrs) -> Result<Connection, ClientError> {
        Ok(self.open(addr).await?.into_connection())
    }

    /// Dial a peer and return the session, to log in to a peer that asks for it (see
    /// [`NodeBuilder::portal`]).
    pub async fn open(&self, addr: impl ToSocketAddrs) -> Result<Session, ClientError> {
        let mut client = ClientBuilder::default()
            .config(self.config.clone())
            .root(self.root.clone());
        if let Some(tls) = &self.dial_tls {
            client = client.tls(tls.clone());
        }
        let session = client.open(addr).await?;
        let conn = session.connection().clone();
        let dialed = self.dialed.clone();
        dialed.insert(conn.id(), conn.clone());
        tokio::spawn(async move {
            conn.closed().await;
            dialed.remove(&conn.id());
        });
        Ok(session)
    }

    /// Every live connection: peers that dialed us and peers we dialed.
    pub fn peers(&self) -> Vec<Connection> {
        let mut peers = self.server.connections();
        peers.extend(self.dialed.iter().map(|c| c.value().clone()));
        peers
    }

    /// Stop listening and close every connection gracefully, all at once: the listener first
    /// (no peer is accepted once this has begun), then the connections dialed and accepted
    /// together, each letting its calls in flight finish within its drain timeout.
    pub async fn shutdown(self) {
        self.server.shutdown_handle().shutdown();
        let mut closing = tokio::task::JoinSet::new();
        for conn in self.dialed.iter().map(|c| c.value().clone()) {
            closing.spawn(async move { conn.close().await });
        }
        tokio::join!(self.server.shutdown(), async {
            while closing.join_next().await.is_some() {}
        });
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("local_addr", &self.local_addr())
            .field("peers", &self.peers().len())
            .finish()
    }
}

/// The root of a node built without one: every call is "no such method".
struct NoRoot;

static NO_ROOT: pb_core::Interface = pb_core::Interface {
    name: "NoRoot",
    methods: &[],
};

impl pb_core::Dispatch for NoRoot {
    fn interface(&self) -> &'static pb_core::Interface {
        &NO_ROOT
    }

    fn dispatch(
        self: Arc<Self>,
        call: pb_core::IncomingCall,
    ) -> pb_core::BoxFuture<pb_core::Reply> {
        let reply = call.no_such_method(&NO_ROOT);
        Box::pin(std::future::ready(reply))
    }
}
