//! Twisted's cred chat (`chatserver.py` and `chatclient.py`) in pb: password login through a
//! portal and a realm, a mind the server calls back, and a group that knows who is speaking.
//!
//! ```text
//! cargo run --example howto_chat
//! ```
//!
//! Twisted's pieces map one to one. The realm (here a closure) turns a login into an avatar,
//! `User`, and keeps the client's mind, an object of the client's that the server calls to
//! print. `User.join_group` returns a reference to a `Group`, a Twisted `Viewable`: its
//! `view_send(from_user, message)` is told who calls. In pb a `pb::Caller` parameter does that
//! (the client does not pass it): the realm recorded the application's own `Member` on the
//! connection with `set_identity`, and the group reads it back with `caller.identity()`, so
//! nobody can speak under another's name. The avatar's logout hook is Twisted's `detached`.
//!
//! Alice and Bob join `#NeedAFourth` and hear Alice; Carol makes `#Polite`, which allows no
//! mattress, and is refused; Bob leaves, and only Alice hears her next message. Server and
//! clients run in one process; it exits 0 only if everyone heard exactly what they should.

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb::{Avatar, Caller, LoginRequest, Portal, Refusal, Verifiers};
use tokio::sync::mpsc;

/// Twisted: `class Client(pb.Referenceable)` with `remote_print`: the client's mind.
#[pb::remote]
pub trait Mind {
    async fn print(&self, message: String);
}

/// Twisted: `class User(pb.Avatar)` with `perspective_joinGroup`. Rust has no default
/// arguments: `allow_mattress` is always given.
#[pb::remote]
pub trait User {
    async fn join_group(&self, groupname: String, allow_mattress: bool) -> GroupRef;
}

/// Twisted: `class Group(pb.Viewable)` with `view_send`.
#[pb::remote]
pub trait Group {
    async fn send(&self, from: Caller, message: String) -> Result<(), ChatError>;
}

/// Why a group refused a message.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum ChatError {
    /// Twisted raises `ValueError("Don't say that word")`.
    DontSayThatWord,
    /// The calling connection is not a logged-in member.
    NotAMember,
}

/// Who a logged-in user is, as the application records it on the connection.
#[derive(Clone)]
struct Member {
    name: String,
    mind: MindRef,
}

struct GroupState {
    allow_mattress: bool,
    users: Mutex<Vec<Member>>,
}

/// Twisted: `class ChatServer`, the groups by name.
#[derive(Default)]
struct ChatServer {
    groups: Mutex<HashMap<String, (Arc<GroupState>, GroupRef)>>,
}

impl ChatServer {
    fn join_group(&self, groupname: String, user: Member, allow_mattress: bool) -> GroupRef {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let (state, group) = groups.entry(groupname).or_insert_with(|| {
            let state = Arc::new(GroupState {
                allow_mattress,
                users: Mutex::new(Vec::new()),
            });
            let group = GroupRef::new(ChatGroup(state.clone()));
            (state, group)
        });
        state
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(user);
        group.clone()
    }

    /// Twisted's `detached`: the user is gone from every group.
    fn leave(&self, name: &str) {
        for (state, _) in self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            state
                .users
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|u| u.name != name);
        }
    }
}

struct ChatUser {
    member: Member,
    server: Arc<ChatServer>,
}

impl User for ChatUser {
    async fn join_group(&self, groupname: String, allow_mattress: bool) -> GroupRef {
        self.server
            .join_group(groupname, self.member.clone(), allow_mattress)
    }
}

struct ChatGroup(Arc<GroupState>);

impl Group for ChatGroup {
    async fn send(&self, from: Caller, message: String) -> Result<(), ChatError> {
        let from = from.identity::<Member>().ok_or(ChatError::NotAMember)?;
        if !self.0.allow_mattress && message.contains("mattress") {
            return Err(ChatError::DontSayThatWord);
        }
        let users = self
            .0
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Every member at once, each within a deadline: one that never answers delays nobody.
        let mut told = tokio::task::JoinSet::new();
        for user in users {
            let line = format!("<{}> says: {message}", from.name);
            told.spawn(pb::deadline::with_timeout(
                Duration::from_secs(5),
                async move { user.mind.print(line).await },
            ));
        }
        told.join_all().await;
        Ok(())
    }
}

/// A client's mind: prints what it is told and hands it to `main` to check.
struct Screen {
    owner: &'static str,
    heard: mpsc::UnboundedSender<String>,
}

impl Mind for Screen {
    async fn print(&self, message: String) {
        println!("  [{}'s screen] {message}", self.owner);
        let _ = self.heard.send(message);
    }
}

type Heard = mpsc::UnboundedReceiver<String>;

/// Open a connection, hand the server a mind and log in: Twisted's
/// `factory.login(credentials.UsernamePassword(name, password), client=self)`.
async fn log_in(
    addr: std::net::SocketAddr,
    owner: &'static str,
    password: &str,
) -> Result<(pb::Session, UserRef, Heard), Box<dyn Error>> {
    let (heard, rx) = mpsc::unbounded_channel();
    let session = pb::Client::builder()
        .open(addr)
        .await?
        .with_mind(MindRef::new(Screen { owner, heard }));
    let user: UserRef = session.login(owner, password).await?;
    Ok((session, user, rx))
}

/// Everything a screen has printed so far. Each `send` returns once every member's mind has
/// printed, so nothing is still on its way.
fn printed(rx: &mut Heard) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Twisted: `checker.addUser("alice", "1234")` and so on. At the least cost SCRAM accepts,
    // to keep the example quick; a server should use `users.add_user(name, password)`.
    let mut users = Verifiers::new();
    for (name, password) in [("alice", "1234"), ("bob", "secret"), ("carol", "fido")] {
        users.insert_password(name, password, pb::scram::MIN_ITERATIONS)?;
    }

    // Twisted: `ChatRealm.requestAvatar(avatarID, mind, ...)`.
    let server = Arc::new(ChatServer::default());
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let realm = move |login: LoginRequest| {
        let server = server.clone();
        let gone = gone_tx.clone();
        async move {
            let name = login.identity.name().ok_or(Refusal::Denied)?.to_owned();
            // This chat needs a mind to print to.
            let mind = login.mind_as::<MindRef>().ok_or(Refusal::Unavailable)?;
            let member = Member {
                name: name.clone(),
                mind,
            };
            // What `Group::send` reads back through its `Caller`.
            login.connection.set_identity(member.clone());
            let left = server.clone();
            let avatar = UserRef::new(ChatUser { member, server });
            Ok(Avatar::new(avatar).on_logout(move || {
                left.leave(&name);
                let _ = gone.send(name);
            }))
        }
    };
    let portal = Portal::new(realm).verifiers(users);
    let listening = pb::Server::bind("127.0.0.1:0").await?.serve_portal(portal);
    let addr = listening.local_addr();

    let (alice_session, alice, mut alice_heard) = log_in(addr, "alice", "1234").await?;
    println!("alice: connected, joining group #NeedAFourth");
    let need_a_fourth = alice.join_group("#NeedAFourth".into(), true).await?;
    let (bob_session, bob, mut bob_heard) = log_in(addr, "bob", "secret").await?;
    println!("bob: connected, joining group #NeedAFourth");
    let bobs_group = bob.join_group("#NeedAFourth".into(), true).await?;

    println!("alice: joined group, now sending a message to all members");
    need_a_fourth.send("You can call me Al.".into()).await?;
    let al = vec!["<alice> says: You can call me Al.".to_owned()];
    let mut ok = printed(&mut alice_heard) == al && printed(&mut bob_heard) == al;

    let (carol_session, carol, mut carol_heard) = log_in(addr, "carol", "fido").await?;
    println!("carol: connected, making group #Polite, where mattresses are not allowed");
    let polite = carol.join_group("#Polite".into(), false).await?;
    match polite.send("I need a new mattress".into()).await {
        Err(pb::CallError::Remote(e)) => println!("carol: refused: {e:?}"),
        other => {
            println!("carol: expected a refusal, got {other:?}");
            ok = false;
        }
    }
    ok &= printed(&mut carol_heard).is_empty();

    // Bob lets go of his avatar: the logout hook (Twisted's `detached`) takes him out.
    println!("bob: logging out");
    drop((bob, bobs_group));
    let left = tokio::time::timeout(Duration::from_secs(5), gone.recv()).await;
    println!(
        "server: {} logged out",
        left.ok().flatten().unwrap_or_default()
    );
    need_a_fourth.send("Anyone?".into()).await?;
    ok &= printed(&mut alice_heard) == ["<alice> says: Anyone?"];
    ok &= printed(&mut bob_heard).is_empty();

    for session in [alice_session, bob_session, carol_session] {
        session.close().await;
    }
    listening.shutdown().await;
    if !ok {
        return Err("someone heard something they should not have, or missed something".into());
    }
    Ok(())
}
