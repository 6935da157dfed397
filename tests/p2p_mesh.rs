//! Peer-to-peer: nodes that both listen and dial, and references that travel between peers.
//!
//! Each node's root can reach the node it dialed (its upstream), so references travel along
//! chains of nodes: `fetch(n)` brings back the thing of the node `n` hops upstream, forwarded
//! through every node in between, and `home(thing, n)` carries a reference `n` hops upstream and
//! asks the last node whether it is its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb::{CallError, Caller, Node};

#[pb::remote]
pub trait Thing {
    async fn name(&self) -> Result<String, ()>;
}

struct Named(String);

impl Thing for Named {
    async fn name(&self) -> Result<String, ()> {
        Ok(self.0.clone())
    }
}

#[pb::remote]
pub trait Peer {
    async fn whoami(&self) -> Result<String, ()>;
    /// How this node sees the caller: the side of the connection and the peer's address.
    async fn who_calls(&self, caller: Caller) -> Result<String, ()>;
    /// The thing of the node `hops` upstream (0: this node's own).
    async fn fetch(&self, hops: u32) -> Result<ThingRef, String>;
    /// Carry `thing` `hops` upstream; the last node says whether it is its own thing.
    async fn home(&self, thing: ThingRef, hops: u32) -> Result<bool, String>;
}

struct PeerImpl {
    name: String,
    thing: ThingRef,
    upstream: Mutex<Option<PeerRef>>,
}

impl PeerImpl {
    fn upstream(&self) -> Result<PeerRef, String> {
        self.upstream
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| format!("{} has no upstream", self.name))
    }
}

impl Peer for PeerImpl {
    async fn whoami(&self) -> Result<String, ()> {
        Ok(self.name.clone())
    }
    async fn who_calls(&self, caller: Caller) -> Result<String, ()> {
        let conn = caller.connection().ok_or(())?;
        let ip = caller
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        Ok(format!("{:?} from {ip}", conn.side()))
    }
    async fn fetch(&self, hops: u32) -> Result<ThingRef, String> {
        if hops == 0 {
            return Ok(self.thing.clone());
        }
        self.upstream()?
            .fetch(hops - 1)
            .await
            .map_err(|e| e.to_string())
    }
    async fn home(&self, thing: ThingRef, hops: u32) -> Result<bool, String> {
        if hops == 0 {
            return Ok(thing.object_ref().is_local() && thing == self.thing);
        }
        self.upstream()?
            .home(thing, hops - 1)
            .await
            .map_err(|e| e.to_string())
    }
}

struct TestNode {
    node: Node,
    root: Arc<PeerImpl>,
}

async fn node(name: &str) -> TestNode {
    let root = Arc::new(PeerImpl {
        name: name.into(),
        thing: ThingRef::new(Named(format!("{name}'s thing"))),
        upstream: Mutex::new(None),
    });
    let node = Node::builder()
        .root(PeerRef::from_arc(root.clone()))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    TestNode { node, root }
}

impl TestNode {
    /// Dial `other` and make it this node's upstream; returns the connection.
    async fn follow(&self, other: &TestNode) -> pb::Connection {
        let conn = self.node.dial(other.node.local_addr()).await.unwrap();
        *self.root.upstream.lock().unwrap() = Some(conn.root());
        conn
    }

    fn me(&self) -> PeerRef {
        PeerRef::from_arc(self.root.clone())
    }

    fn tables_empty(&self) -> bool {
        self.node.peers().iter().all(|c| {
            let t = c.stats().tables;
            t.exported == 0 && t.imported == 0
        })
    }
}

async fn settle(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100_000 {
        if f() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    f()
}

#[tokio::test]
async fn a_mesh_of_four_where_every_pair_calls_each_other() {
    let names = ["a", "b", "c", "d"];
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(node(n).await);
    }
    // Each node dials the nodes after it: six links, every pair connected once.
    let mut links = Vec::new();
    for i in 0..nodes.len() {
        for j in i + 1..nodes.len() {
            let conn = nodes[i]
                .node
                .dial(nodes[j].node.local_addr())
                .await
                .unwrap();
            links.push((i, j, conn));
        }
    }
    for n in &nodes {
        assert!(
            settle(|| n.node.peers().len() == 3).await,
            "each node has three peers"
        );
    }
    // Every node reaches the three others, whichever side dialed.
    for (i, n) in nodes.iter().enumerate() {
        let mut seen = Vec::new();
        for conn in n.node.peers() {
            seen.push(conn.root::<PeerRef>().whoami().await.unwrap());
        }
        seen.sort();
        let mut others: Vec<String> = names
            .iter()
            .filter(|m| **m != names[i])
            .map(|m| m.to_string())
            .collect();
        others.sort();
        assert_eq!(seen, others);
    }
    // The dialed node sees the caller as a peer it accepted, with its address.
    for (_, _, conn) in &links {
        assert_eq!(
            conn.root::<PeerRef>().who_calls().await,
            Ok("Server from 127.0.0.1".into())
        );
    }
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[tokio::test]
async fn a_reference_forwarded_through_two_intermediaries() {
    // d -> c -> b -> a: each dials the next.
    let (a, b, c, d) = (
        node("a").await,
        node("b").await,
        node("c").await,
        node("d").await,
    );
    b.follow(&a).await;
    c.follow(&b).await;
    d.follow(&c).await;

    // d gets a's thing through c and b, and calls it: forwarded d -> c -> b -> a.
    let thing = d.me().fetch(3).await.unwrap();
    assert!(!thing.object_ref().is_local());
    assert_eq!(thing.name().await, Ok("a's thing".into()));
    // Counted on every hop: a exports it to b, b forwards it to c, c to d.
    assert!(settle(|| a.node.peers()[0].stats().tables.exported == 1).await);
    // Carried back up the chain, it arrives at a as a's own object (and is not b's or c's).
    assert_eq!(d.me().home(thing.clone(), 3).await, Ok(true));
    assert_eq!(d.me().home(thing.clone(), 2).await, Ok(false));
    // Dropping it everywhere empties every table on every node.
    drop(thing);
    let all = [&a, &b, &c, &d];
    let empty = settle(|| all.iter().all(|n| n.tables_empty())).await;
    assert!(
        empty,
        "{:?}",
        all.iter()
            .map(|n| n
                .node
                .peers()
                .iter()
                .map(|c| c.stats().tables)
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    for n in [a, b, c, d] {
        n.node.shutdown().await;
    }
}

#[tokio::test]
async fn cutting_one_link_fails_exactly_the_references_that_depended_on_it() {
    // d -> c -> b -> a.
    let (a, b, c, d) = (
        node("a").await,
        node("b").await,
        node("c").await,
        node("d").await,
    );
    let b_to_a = b.follow(&a).await;
    c.follow(&b).await;
    d.follow(&c).await;
    // d holds a's thing (through c and b) and b's thing (through c); c holds c's own view of
    // a's thing too.
    let from_a = d.me().fetch(3).await.unwrap();
    let from_b = d.me().fetch(2).await.unwrap();
    let at_c = c.me().fetch(2).await.unwrap();
    assert_eq!(from_a.name().await, Ok("a's thing".into()));
    assert_eq!(from_b.name().await, Ok("b's thing".into()));

    // Cut a-b. Every reference that depended on it dies, on every node, at once.
    b_to_a.abort();
    from_a.disconnected().await;
    at_c.disconnected().await;
    assert!(!from_a.is_connected() && !at_c.is_connected());
    assert_eq!(from_a.name().await, Err(CallError::Disconnected));
    assert_eq!(at_c.name().await, Err(CallError::Disconnected));
    // The others are untouched.
    assert!(from_b.is_connected());
    assert_eq!(from_b.name().await, Ok("b's thing".into()));
    assert_eq!(
        d.me().fetch(1).await.unwrap().name().await,
        Ok("c's thing".into())
    );
    // And nothing is left behind in the tables for the dead references once they are dropped.
    drop((from_a, at_c, from_b));
    let all = [&b, &c, &d];
    assert!(settle(|| all.iter().all(|n| n.tables_empty())).await);
    for n in [a, b, c, d] {
        n.node.shutdown().await;
    }
}

#[pb::remote]
pub trait Stall {
    /// Never answers.
    async fn stall(&self) -> Result<(), ()>;
    async fn ping(&self) -> Result<u8, ()>;
}

struct Stalling;

impl Stall for Stalling {
    async fn stall(&self) -> Result<(), ()> {
        std::future::pending().await
    }
    async fn ping(&self) -> Result<u8, ()> {
        Ok(1)
    }
}

/// A node's shutdown stops accepting at once and drains its dialed peers together: about one
/// `drain_timeout` in all (30 s by default; virtual time here), where it used to drain them one
/// at a time (three peers each running a call into the node: 90 s) while still accepting.
#[tokio::test(start_paused = true)]
async fn a_node_shuts_down_its_peers_at_once_and_accepts_no_more() {
    let a = Node::builder()
        .root(StallRef::new(Stalling))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let mut others = Vec::new();
    for _ in 0..3 {
        let peer = Node::builder().bind("127.0.0.1:0").await.unwrap();
        a.dial(peer.local_addr()).await.unwrap();
        assert!(settle(|| peer.peers().len() == 1).await);
        // The peer calls the node over the connection the node dialed: a call in flight.
        let to_a: StallRef = peer.peers().pop().unwrap().root();
        assert_eq!(to_a.ping().await, Ok(1));
        tokio::spawn(async move { to_a.stall().await });
        others.push(peer);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let addr = a.local_addr();
    let started = tokio::time::Instant::now();
    let shutdown = tokio::spawn(a.shutdown());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        pb::Client::connect(addr).await.is_err(),
        "a peer accepted during the shutdown"
    );
    shutdown.await.unwrap();
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(35), "shutdown took {took:?}");
}

/// A node serves as many peers from one address as its `max_connections_per_address` allows
/// (a mesh on one host, peers behind one NAT); left at its default, 64, as a server's, so that
/// one address cannot take every place of `max_connections`.
#[tokio::test]
async fn a_node_serves_as_many_peers_from_one_address_as_it_is_told() {
    /// A bound so that a regression fails instead of hanging; never a timing assertion.
    const PATIENCE: Duration = Duration::from_secs(60);
    async fn open(node: &Node) -> Result<pb::Session, pb::ClientError> {
        tokio::time::timeout(PATIENCE, pb::Client::builder().open(node.local_addr()))
            .await
            .expect("the node answers or closes")
    }
    let roomy = Node::builder()
        .root(ThingRef::new(Named("roomy".into())))
        .max_connections(100)
        .max_connections_per_address(100)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let default = Node::builder()
        .root(ThingRef::new(Named("default".into())))
        .max_connections(100)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let mut peers = Vec::new();
    for i in 0..65 {
        let session = match open(&roomy).await {
            Ok(s) => s,
            Err(e) => panic!("peer {} of 65 from 127.0.0.1 refused: {e}", i + 1),
        };
        let root: ThingRef = session.connection().root();
        assert_eq!(root.name().await, Ok("roomy".into()));
        peers.push(session);
    }
    for i in 0..64 {
        let session = match open(&default).await {
            Ok(s) => s,
            Err(e) => panic!("peer {} of 64 from 127.0.0.1 refused: {e}", i + 1),
        };
        let root: ThingRef = session.connection().root();
        assert_eq!(root.name().await, Ok("default".into()));
        peers.push(session);
    }
    assert!(
        open(&default).await.is_err(),
        "a 65th peer from one address, past the default per-address cap"
    );
    drop(peers);
    roomy.shutdown().await;
    default.shutdown().await;
}
