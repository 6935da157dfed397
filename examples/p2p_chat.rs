//! Peer-to-peer chat: nodes that both listen and dial, and a room that one node hosts and the
//! others join, some of them through a third node that forwards the references.
//!
//! All in one process (three nodes on 127.0.0.1, prints the exchange, exits 0):
//!
//! ```text
//! cargo run --example p2p_chat
//! ```
//!
//! One node per process (each listens on its own address and dials the next; stop with Ctrl-C):
//!
//! ```text
//! cargo run --example p2p_chat -- --name ana --listen 127.0.0.1:7001 --host
//! cargo run --example p2p_chat -- --name ben --listen 127.0.0.1:7002 --dial 127.0.0.1:7001
//! cargo run --example p2p_chat -- --name cai --listen 127.0.0.1:7003 --dial 127.0.0.1:7002
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb::{Caller, Node};
use tokio::sync::mpsc;

/// How long the room waits for one member to take a message: members are told at once, each
/// under this deadline, so one that never answers stalls nobody.
const PATIENCE: Duration = Duration::from_secs(5);

/// What a member gives the room so that it can be told what is said.
#[pb::remote]
pub trait Listener {
    async fn heard(&self, from: String, text: String) -> Result<(), ()>;
}

/// A member's seat in the room.
#[pb::remote]
pub trait Member {
    async fn say(&self, text: String) -> Result<usize, ()>;
}

#[pb::remote]
pub trait Room {
    /// Join; everything said before is replayed to the new member.
    async fn join(&self, name: String, listener: ListenerRef) -> Result<MemberRef, String>;
}

/// Every node's root.
#[pb::remote]
pub trait Peer {
    async fn name(&self, caller: Caller) -> Result<String, ()>;
    /// The room this node hosts or has joined through its upstream, if any.
    async fn room(&self) -> Result<Option<RoomRef>, ()>;
}

#[derive(Default)]
struct RoomState {
    members: Vec<(String, ListenerRef)>,
    history: Vec<(String, String)>,
}

#[derive(Default, Clone)]
struct RoomImpl(Arc<Mutex<RoomState>>);

impl Room for RoomImpl {
    async fn join(&self, name: String, listener: ListenerRef) -> Result<MemberRef, String> {
        let backlog = {
            let mut st = self.0.lock().unwrap();
            if st.members.iter().any(|(n, _)| *n == name) {
                return Err(format!("{name} is already here"));
            }
            st.members.push((name.clone(), listener.clone()));
            st.history.clone()
        };
        for (from, text) in backlog {
            let heard = pb::deadline::with_timeout(PATIENCE, listener.heard(from, text));
            if heard.await.is_err() {
                // A mute newcomer misses the rest of the backlog; it stalls only its own join.
                break;
            }
        }
        Ok(MemberRef::new(MemberImpl {
            name,
            room: self.clone(),
        }))
    }
}

struct MemberImpl {
    name: String,
    room: RoomImpl,
}

impl Member for MemberImpl {
    async fn say(&self, text: String) -> Result<usize, ()> {
        let members = {
            let mut st = self.room.0.lock().unwrap();
            st.history.push((self.name.clone(), text.clone()));
            st.members.clone()
        };
        let mut told = tokio::task::JoinSet::new();
        for (name, listener) in members {
            if name != self.name {
                let (from, text) = (self.name.clone(), text.clone());
                told.spawn(pb::deadline::with_timeout(PATIENCE, async move {
                    listener.heard(from, text).await
                }));
            }
        }
        Ok(told
            .join_all()
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count())
    }
}

struct PeerImpl {
    name: String,
    room: Mutex<Option<RoomRef>>,
}

impl Peer for PeerImpl {
    async fn name(&self, caller: Caller) -> Result<String, ()> {
        if let Some(addr) = caller.peer_addr() {
            println!("  [{}] {} asks for my name", self.name, addr);
        }
        Ok(self.name.clone())
    }
    async fn room(&self) -> Result<Option<RoomRef>, ()> {
        Ok(self.room.lock().unwrap().clone())
    }
}

struct Ear {
    me: String,
    tx: mpsc::UnboundedSender<String>,
}

impl Listener for Ear {
    async fn heard(&self, from: String, text: String) -> Result<(), ()> {
        let line = format!("  [{} hears] {from}: {text}", self.me);
        println!("{line}");
        self.tx.send(line).map_err(|_| ())
    }
}

struct ChatNode {
    name: String,
    node: Node,
    peer: Arc<PeerImpl>,
}

impl ChatNode {
    async fn start(
        name: &str,
        listen: &str,
        host: bool,
    ) -> Result<ChatNode, Box<dyn std::error::Error>> {
        let peer = Arc::new(PeerImpl {
            name: name.into(),
            room: Mutex::new(host.then(|| RoomRef::new(RoomImpl::default()))),
        });
        let node = Node::builder()
            .root(PeerRef::from_arc(peer.clone()))
            .bind(listen)
            .await?;
        println!(
            "{name} listens on {}{}",
            node.local_addr(),
            if host { " and hosts the room" } else { "" }
        );
        Ok(ChatNode {
            name: name.into(),
            node,
            peer,
        })
    }

    /// Dial `addr`; if we know no room yet, take the peer's (forwarded through it if it is not
    /// the host).
    async fn dial(&self, addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
        let conn = self.node.dial(addr).await?;
        let peer: PeerRef = conn.root();
        let their_name = peer.name().await?;
        println!("{} dials {their_name} at {addr}", self.name);
        if self.peer.room.lock().unwrap().is_none()
            && let Some(room) = peer.room().await?
        {
            println!("{} gets the room from {their_name}", self.name);
            *self.peer.room.lock().unwrap() = Some(room);
        }
        Ok(())
    }

    async fn join(
        &self,
    ) -> Result<(MemberRef, mpsc::UnboundedReceiver<String>), Box<dyn std::error::Error>> {
        let room = self
            .peer
            .room
            .lock()
            .unwrap()
            .clone()
            .ok_or("no room known yet")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let member = room
            .join(
                self.name.clone(),
                ListenerRef::new(Ear {
                    me: self.name.clone(),
                    tx,
                }),
            )
            .await?;
        println!("{} joins the room", self.name);
        Ok((member, rx))
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

async fn hear(
    rx: &mut mpsc::UnboundedReceiver<String>,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..n {
        rx.recv().await.ok_or("listener closed")?;
    }
    Ok(())
}

async fn in_one_process() -> Result<(), Box<dyn std::error::Error>> {
    let ana = ChatNode::start("ana", "127.0.0.1:0", true).await?;
    let ben = ChatNode::start("ben", "127.0.0.1:0", false).await?;
    let cai = ChatNode::start("cai", "127.0.0.1:0", false).await?;
    // A ring: ben dials ana, cai dials ben, ana dials cai. Every node listens and dials.
    ben.dial(ana.node.local_addr()).await?;
    cai.dial(ben.node.local_addr()).await?;
    ana.dial(cai.node.local_addr()).await?;

    let (ana_m, mut ana_rx) = ana.join().await?;
    let (ben_m, mut ben_rx) = ben.join().await?;
    // cai's room is ana's, forwarded through ben; so are cai's listener and member references.
    let (cai_m, mut cai_rx) = cai.join().await?;

    println!("ana says hello");
    ana_m.say("hello, everyone".into()).await?;
    hear(&mut ben_rx, 1).await?;
    hear(&mut cai_rx, 1).await?;
    println!("cai says hi (through ben)");
    let reached = cai_m.say("hi from the far end".into()).await?;
    hear(&mut ana_rx, 1).await?;
    hear(&mut ben_rx, 1).await?;
    println!("cai's message reached {reached} members");
    ben_m.say("ben here".into()).await?;
    hear(&mut ana_rx, 1).await?;
    hear(&mut cai_rx, 1).await?;

    for n in [&ana, &ben, &cai] {
        let t: Vec<_> = n
            .node
            .peers()
            .iter()
            .map(|c| c.stats().tables)
            .map(|t| (t.exported, t.imported))
            .collect();
        println!(
            "{} has {} peers; (exported, imported) per link: {t:?}",
            n.name,
            t.len()
        );
    }
    drop((ana_m, ben_m, cai_m));
    for n in [ana, ben, cai] {
        n.node.shutdown().await;
    }
    println!("done");
    Ok(())
}

async fn one_node() -> Result<(), Box<dyn std::error::Error>> {
    let name = arg("--name").ok_or("--name NAME is required")?;
    let listen = arg("--listen").ok_or("--listen ADDR is required")?;
    let host = std::env::args().any(|a| a == "--host");
    let me = ChatNode::start(&name, &listen, host).await?;
    if let Some(addr) = arg("--dial") {
        me.dial(addr.parse()?).await?;
    }
    let (member, mut rx) = me.join().await?;
    member.say(format!("hello from {name}")).await?;
    println!("{name} said hello; listening (Ctrl-C to stop)");
    loop {
        tokio::select! {
            line = rx.recv() => if line.is_none() { break },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(member);
    me.node.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().len() > 1 {
        one_node().await
    } else {
        in_one_process().await
    }
}
