//! Login through a portal: SCRAM-SHA-256, anonymous login, the avatar's logout hook and the
//! avatar freed once its connection ends, and what holds before login (only the login object, a
//! small frame limit, a deadline, a failure limit).
//! Mostly over the in-memory transport with virtual time; the wire-level checks use real TCP on
//! 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod auth_support;

use std::time::Duration;

use auth_support::{
    AccountRef, Dir, ITERATIONS, NO_HANG, PASSWORD, Recorder, Seen, bytes, frames, portal,
};
use bytes::{Bytes, BytesMut};
use pb::proto::handshake::{Features, HELLO_LEN, Hello};
use pb::proto::message::{FaultKind, Message, MessageLimits};
use pb::{
    CallError, Client, CloseReason, Config, Connection, Identity, LoginConfig, LoginError, Portal,
    Refusal, Session, VerifierStore, Verifiers,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A server connection served by `portal` and a client session, over an in-memory pipe.
async fn pair(portal: &Portal) -> (Connection, Session) {
    pair_from(portal, None).await.unwrap()
}

/// A connection to `portal` as if from `from`, and its client; the server's error if refused.
async fn pair_from(
    portal: &Portal,
    from: Option<std::net::SocketAddr>,
) -> Result<(Connection, Session), pb::ConnectError> {
    let (a, b) = pb::transport::memory_pair();
    let config = Config::default();
    let server = portal.serve_connection(a, &config, from, None);
    let client = Client::builder().open_over(b);
    let (s, c) = tokio::join!(server, client);
    let s = s?;
    Ok((s, c.unwrap()))
}

fn with(portal: Portal, f: impl FnOnce(&mut LoginConfig)) -> Portal {
    let mut config = LoginConfig::default();
    f(&mut config);
    portal.config(config)
}

#[tokio::test(start_paused = true)]
async fn login_success_gives_the_typed_avatar_and_the_identity() {
    let (portal, seen) = portal(false);
    let (server, session) = pair(&portal).await;
    let me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");
    assert_eq!(seen.identities(), vec![Identity::User("alice".into())]);
    assert_eq!(
        server.identity::<Identity>().as_deref(),
        Some(&Identity::User("alice".into()))
    );
    // One login per connection.
    let again = session.login::<AccountRef>("alice", PASSWORD).await;
    assert_eq!(again.unwrap_err().refusal(), Some(Refusal::AlreadyLoggedIn));
}

#[tokio::test(start_paused = true)]
async fn wrong_password_and_unknown_user_are_indistinguishable_on_the_wire() {
    let (portal, seen) = portal(false);
    let mut transcripts = Vec::new();
    let mut delays = Vec::new();
    for (user, password) in [("alice", "not the password"), ("mallory", PASSWORD)] {
        let (a, b) = pb::transport::memory_pair();
        let (b, log) = Recorder::new(b);
        let config = Config::default();
        let server = portal.serve_connection(a, &config, None, None);
        let (_server, session) = tokio::join!(server, Client::builder().open_over(b));
        let session = session.unwrap();
        let start = Instant::now();
        let err = session
            .login::<AccountRef>(user, password)
            .await
            .unwrap_err();
        delays.push(start.elapsed());
        assert!(
            matches!(err, LoginError::Refused(Refusal::Denied)),
            "{err:?}"
        );
        transcripts.push(frames(&bytes(&log, Dir::Read)));
    }
    let (wrong, unknown) = (&transcripts[0], &transcripts[1]);
    // Server-first (answer 1) and the refusal (answer 2), nothing else.
    assert_eq!(wrong.len(), 2);
    assert_eq!(unknown.len(), 2);
    // The challenges have the same shape (same nonce and salt sizes, same iteration count)...
    assert_eq!(wrong[0].len(), unknown[0].len());
    let tail = |f: &Vec<u8>| String::from_utf8_lossy(&f[f.len() - 7..]).into_owned();
    assert_eq!(tail(&wrong[0]), ",i=4096");
    assert_eq!(tail(&unknown[0]), ",i=4096");
    // ...and the refusals are byte for byte the same, after the same (virtual) delay.
    assert_eq!(wrong[1], unknown[1]);
    assert_eq!(delays[0], delays[1]);
    assert!(seen.identities().is_empty());
}

#[tokio::test(start_paused = true)]
async fn anonymous_login_is_allowed_or_refused_by_configuration() {
    let (allowing, seen) = portal(true);
    let (_server, session) = pair(&allowing).await;
    let guest: AccountRef = session.login_anonymous().await.unwrap();
    assert_eq!(guest.whoami().await.unwrap(), "anonymous");
    assert_eq!(seen.identities(), vec![Identity::Anonymous]);

    let (refusing, seen) = portal(false);
    let (_server, session) = pair(&refusing).await;
    let err = session.login_anonymous::<AccountRef>().await.unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::NotOffered));
    assert!(seen.identities().is_empty());
    // The refusal does not use up the connection: a password login still works.
    let me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");
}

async fn logged_in(portal: &Portal) -> (Connection, Session, AccountRef) {
    let (server, session) = pair(portal).await;
    let me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");
    (server, session, me)
}

async fn settle(seen: &Seen) -> u32 {
    // Virtual time: lets any late release or close run before counting again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    seen.logouts()
}

#[tokio::test(start_paused = true)]
async fn logout_runs_once_when_the_avatar_is_released() {
    let (portal, seen) = portal(false);
    let (server, session, me) = logged_in(&portal).await;
    let copy = me.clone();
    drop(me);
    assert_eq!(settle(&seen).await, 0, "a clone still holds the avatar");
    drop(copy);
    seen.wait_logouts(1).await;
    // The connection stays open; closing it later does not log out again.
    assert!(!server.is_closed());
    session.close().await;
    server.closed().await;
    assert_eq!(settle(&seen).await, 1);
}

#[tokio::test(start_paused = true)]
async fn logout_runs_once_when_the_connection_ends() {
    let (portal, seen) = portal(false);
    let (server, session, me) = logged_in(&portal).await;
    session.connection().abort();
    server.closed().await;
    seen.wait_logouts(1).await;
    drop(me);
    assert_eq!(settle(&seen).await, 1);
}

/// The client's side of a login: an object the avatar keeps to call the client back.
#[pb::remote]
pub trait Mind {
    async fn print(&self, line: String) -> Result<(), ()>;
}

struct Screen;

impl Mind for Screen {
    async fn print(&self, _line: String) -> Result<(), ()> {
        Ok(())
    }
}

/// The guide's avatar (docs/guide/login.md): it keeps the client's mind, and says when it is
/// freed.
struct MindfulAccount {
    _mind: Option<MindRef>,
    freed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl auth_support::Account for MindfulAccount {
    async fn whoami(&self, _caller: pb::Caller) -> Result<String, ()> {
        Ok("mindful".into())
    }

    async fn echo_len(&self, data: String) -> Result<usize, ()> {
        Ok(data.len())
    }
}

impl Drop for MindfulAccount {
    fn drop(&mut self) {
        if let Some(freed) = self.freed.take() {
            let _ = freed.send(());
        }
    }
}

/// An avatar that keeps the client's mind (a remote reference, which holds the connection) is
/// freed once the connection ends and nothing outside pb holds it: the connection lets go of
/// the avatar and identities it recorded when it closes, after the logout hook was started.
/// pb's own `Identity` stays readable.
#[tokio::test(start_paused = true)]
async fn an_avatar_keeping_its_mind_is_freed_once_the_connection_ends() {
    let (freed, mut avatar_freed) = tokio::sync::oneshot::channel();
    let freed = std::sync::Mutex::new(Some(freed));
    let (logouts, mut logged_out) = tokio::sync::watch::channel(0u32);
    let portal = Portal::new(move |login: pb::LoginRequest| {
        let freed = freed.lock().unwrap().take();
        let logouts = logouts.clone();
        async move {
            // The application's own record of the peer holds the mind too.
            login.connection.set_identity(login.mind_as::<MindRef>());
            let mind = login.mind_as::<MindRef>();
            Ok(
                pb::Avatar::new(AccountRef::new(MindfulAccount { _mind: mind, freed }))
                    .on_logout(move || logouts.send_modify(|n| *n += 1)),
            )
        }
    })
    .allow_anonymous(true);
    let (server, session) = pair(&portal).await;
    let session = session.with_mind(MindRef::new(Screen));
    let me: AccountRef = session.login_anonymous().await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "mindful");
    assert!(server.avatar::<AccountRef>().is_some());

    // The client goes away.
    session.connection().abort();
    server.closed().await;
    logged_out.wait_for(|n| *n == 1).await.unwrap();
    assert!(server.avatar::<AccountRef>().is_none());
    assert!(server.identity::<Option<MindRef>>().is_none());
    assert_eq!(
        server.identity::<Identity>().as_deref(),
        Some(&Identity::Anonymous)
    );
    drop((me, session, server, portal));
    // Virtual time: a bound that fails a regression rather than hanging, never a measure.
    let freed = tokio::time::timeout(Duration::from_secs(60), &mut avatar_freed).await;
    assert!(
        matches!(freed, Ok(Ok(()))),
        "the avatar, with the client's mind and its connection, outlived the connection"
    );
    assert_eq!(*logged_out.borrow(), 1);
}

#[tokio::test(start_paused = true)]
async fn before_login_only_the_login_object_answers() {
    let (portal, seen) = portal(false);
    let (_server, session) = pair(&portal).await;
    let root = session.connection().root_ref();
    // Avatar methods are not on the login object.
    let r = root.call::<_, String, ()>("whoami", &()).await;
    // The message says why, and what to do.
    assert!(
        matches!(&r, Err(CallError::NoSuchMethod(m)) if m.contains("has not logged in") && m.contains("log in first")),
        "{r:?}"
    );
    // The second login step without the first is refused.
    let r = root
        .call::<_, String, Refusal>(
            "scram_finish",
            &("c=biws,r=x,p=AAAA", None::<pb::ObjectRef>),
        )
        .await;
    assert_eq!(r.unwrap_err(), CallError::Remote(Refusal::Malformed));
    assert!(seen.identities().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_frame_limit_is_small_before_login_and_lifted_after() {
    let (portal, _) = portal(false);
    let big = "x".repeat(100 * 1024);
    let (server, session) = pair(&portal).await;
    // The server's hello says it takes 64 KiB before login: the client refuses the call
    // itself, and the connection stays up.
    let r = session
        .connection()
        .root_ref()
        .call::<_, String, Refusal>("scram_start", &(big.clone(),))
        .await;
    match r {
        Err(CallError::LimitExceeded(m)) => {
            assert!(m.contains("the peer's limit max_frame_len = 65536"), "{m}")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    assert!(!server.is_closed());
    // Login lifts the limit, and the server tells the client so before it answers the login.
    let me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me.echo_len(big).await.unwrap(), 100 * 1024);
    assert!(!server.is_closed());

    // A peer that sends a larger frame all the same is cut off before login.
    let (a, mut raw) = pb::transport::memory_pair();
    let mut out = BytesMut::new();
    out.extend_from_slice(&(HELLO_LEN as u32).to_be_bytes());
    Hello::ours(Features::NONE).encode(&mut out);
    out.extend_from_slice(&(64 * 1024 + 1u32).to_be_bytes());
    raw.write_all(&out).await.unwrap();
    let server = portal
        .serve_connection(a, &Config::default(), None, None)
        .await
        .unwrap();
    server.closed().await;
    match server.close_reason() {
        Some(CloseReason::Protocol(why)) => assert!(why.contains("max_frame_len = 65536"), "{why}"),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_login_deadline_closes_connections_that_do_not_log_in() {
    let (portal, _) = portal(false);
    let portal = with(portal, |c| c.login_timeout = Duration::from_secs(5));
    let (server, session) = pair(&portal).await;
    let start = Instant::now();
    server.closed().await;
    session.connection().closed().await;
    assert!(start.elapsed() >= Duration::from_secs(5));

    // A connection that logged in in time outlives the deadline.
    let (server, _session, me) = logged_in(&portal).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(me.whoami().await.unwrap(), "user alice");
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_are_slowed_down_then_cut_off() {
    let (portal, seen) = portal(false);
    let portal = with(portal, |c| {
        c.max_failures = 3;
        c.failure_delay = Duration::from_secs(1);
        c.login_timeout = Duration::from_secs(3600);
    });
    let (server, session) = pair(&portal).await;
    let mut waited = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let err = session
            .login::<AccountRef>("alice", "guess")
            .await
            .unwrap_err();
        waited.push(start.elapsed());
        answers.push(err.refusal());
    }
    assert_eq!(
        answers,
        vec![
            Some(Refusal::Denied),
            Some(Refusal::Denied),
            Some(Refusal::TooManyAttempts)
        ]
    );
    // 1 s, then 2 s, then 4 s (virtual time).
    assert!(waited[0] >= Duration::from_secs(1));
    assert!(waited[1] >= Duration::from_secs(2));
    assert!(waited[2] >= Duration::from_secs(4));
    server.closed().await;
    let r = session.login::<AccountRef>("alice", PASSWORD).await;
    assert!(matches!(r, Err(LoginError::Call(_))), "{r:?}");
    assert!(seen.identities().is_empty());
}

#[tokio::test]
async fn a_captured_login_does_not_contain_the_password() {
    let (portal, _) = portal(false);
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(portal);
    let (tcp, _) = pb::transport::tcp_connect(server.local_addr())
        .await
        .unwrap();
    let (tcp, log) = Recorder::new(tcp);
    let session = Client::builder().open_over(tcp).await.unwrap();
    let me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");
    let sent = bytes(&log, Dir::Written);
    let received = bytes(&log, Dir::Read);
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    // The capture is the login: the user name and the SCRAM messages are in it...
    assert!(contains(&sent, b"n=alice,r="));
    assert!(contains(&sent, b",p="));
    assert!(contains(&received, b",i=4096"));
    // ...but not the password, in any direction, nor any long piece of it.
    for piece in PASSWORD.as_bytes().windows(8) {
        assert!(!contains(&sent, piece), "password piece {piece:?} was sent");
        assert!(!contains(&received, piece));
    }
    drop(me);
    session.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn raw_bytes_calls_to_objects_other_than_the_login_object_are_refused() {
    let (portal, _) = portal(false);
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(portal);
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let mut out = BytesMut::new();
    out.extend_from_slice(&(HELLO_LEN as u32).to_be_bytes());
    Hello::ours(Features::NONE).encode(&mut out);
    for (id, target) in [(1u64, 1u64), (2, 7)] {
        let mut body = BytesMut::new();
        Message::Call {
            id,
            target,
            method: Bytes::from_static(b"whoami"),
            answer: true,
            deadline_ms: None,
            extras: Default::default(),
            refs: vec![],
            payload: Bytes::new(),
        }
        .encode(&mut body);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
    }
    tcp.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut faults = Vec::new();
    tokio::time::timeout(NO_HANG, async {
        while faults.len() < 2 {
            let mut buf = [0u8; 1024];
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed instead of answering");
            got.extend_from_slice(&buf[..n]);
            faults = frames(&got)
                .into_iter()
                .map(|f| Message::decode(Bytes::from(f), &MessageLimits::default()).unwrap())
                .collect();
        }
    })
    .await
    .unwrap();
    for (m, want) in faults.iter().zip([1u64, 2]) {
        match m {
            Message::Fault { id, kind, .. } => {
                assert_eq!(*id, want);
                assert_eq!(*kind, FaultKind::NoSuchObject);
            }
            other => panic!("expected a fault, got {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn connections_waiting_to_log_in_are_capped() {
    let (portal, _) = portal(false);
    let portal = with(portal, |c| c.max_pending_logins = 1);
    let (_first_server, first) = pair(&portal).await;
    // A second connection that has not logged in yet is refused at once.
    let (a, _b) = pb::transport::memory_pair();
    let config = Config::default();
    let refused = portal.serve_connection(a, &config, None, None).await;
    assert!(refused.is_err());
    // Once the first has logged in, there is room again.
    let me: AccountRef = first.login("alice", PASSWORD).await.unwrap();
    let (_server, second) = pair(&portal).await;
    let me2: AccountRef = second.login("alice", PASSWORD).await.unwrap();
    assert_eq!(me2.whoami().await.unwrap(), "user alice");
    drop(me);
}

#[tokio::test(start_paused = true)]
async fn one_address_cannot_hold_every_place_waiting_to_log_in() {
    let (portal, _) = portal(false);
    let portal = with(portal, |c| c.max_pending_logins_per_address = 2);
    let mallory = |port| Some(std::net::SocketAddr::from(([10, 0, 0, 1], port)));
    let (_s1, first) = pair_from(&portal, mallory(1)).await.unwrap();
    let (_s2, _second) = pair_from(&portal, mallory(2)).await.unwrap();
    // A third from that address is refused, whatever its port; another address is served.
    let refused = pair_from(&portal, mallory(3)).await;
    assert!(
        refused
            .err()
            .is_some_and(|e| e.to_string().contains("from this address")),
        "refused, naming why"
    );
    let alice = Some(std::net::SocketAddr::from(([10, 0, 0, 2], 1)));
    let (_s3, other) = pair_from(&portal, alice).await.unwrap();
    let _: AccountRef = other.login("alice", PASSWORD).await.unwrap();
    // Once one of the first address's has logged in, it has a place again.
    let _me: AccountRef = first.login("alice", PASSWORD).await.unwrap();
    let (_s4, again) = pair_from(&portal, mallory(4)).await.unwrap();
    let _: AccountRef = again.login("alice", PASSWORD).await.unwrap();
}

#[test]
fn the_in_memory_store_reports_its_most_common_verifier_shape() {
    use pb::scram::{ScramVerifier, VerifierShape};
    let mut users = Verifiers::new();
    assert_eq!(
        users.shape(),
        None,
        "no users, no shape: the configured fallback applies"
    );
    // A verifier made elsewhere, with a 10-byte salt and 8192 iterations.
    let odd: ScramVerifier = "SCRAM-SHA-256$8192:AAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        .parse()
        .unwrap();
    users.insert("old", odd.clone());
    users.insert("older", odd);
    assert_eq!(
        users.shape(),
        Some(VerifierShape {
            salt_len: 10,
            iterations: 8192
        })
    );
    for name in ["a", "b", "c"] {
        users.insert_password(name, PASSWORD, ITERATIONS).unwrap();
    }
    let ours = VerifierShape {
        salt_len: 16,
        iterations: ITERATIONS,
    };
    assert_eq!(users.shape(), Some(ours));
    // Replacing users moves the count.
    for name in ["a", "b"] {
        let v: ScramVerifier = "SCRAM-SHA-256$8192:AAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap();
        users.insert(name, v);
    }
    assert_eq!(users.shape().map(|s| s.iterations), Some(8192));
}

#[tokio::test(start_paused = true)]
async fn logging_in_to_a_server_without_a_portal_says_so() {
    let (a, b) = pb::transport::memory_pair();
    let config = Config::default();
    let root: pb::ObjectRef = AccountRef::new(auth_support::Me).into();
    let server = Connection::establish(a, &config, pb::Side::Server, Some(root), None);
    let (_server, session) = tokio::join!(server, Client::builder().open_over(b));
    let err = session
        .unwrap()
        .login::<AccountRef>("alice", PASSWORD)
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::NotAPortal(_)), "{err:?}");
    assert!(err.to_string().contains("serve a Portal"), "{err}");
}

/// An application's own identity, recorded by the realm beside pb's.
#[derive(Debug, PartialEq)]
struct AppUser(u32);

#[pb::remote]
trait Perspective {
    /// pb's identity, the application's, and whether the caller's avatar is this object.
    async fn check(&self, caller: pb::Caller) -> (Option<String>, Option<u32>, bool);
    async fn tag(&self) -> u32;
}

struct PerspectiveImpl(u32);

impl Perspective for PerspectiveImpl {
    async fn check(&self, caller: pb::Caller) -> (Option<String>, Option<u32>, bool) {
        let avatar = match caller.avatar::<PerspectiveRef>() {
            Some(a) => a.tag().await == Ok(self.0),
            None => false,
        };
        (
            caller
                .identity::<Identity>()
                .and_then(|i| i.name().map(str::to_owned)),
            caller.identity::<AppUser>().map(|a| a.0),
            avatar,
        )
    }
    async fn tag(&self) -> u32 {
        self.0
    }
}

#[tokio::test(start_paused = true)]
async fn handlers_see_the_avatar_and_identities_of_both_pb_and_the_application() {
    let mut users = pb::Verifiers::new();
    users
        .insert_password("alice", PASSWORD, ITERATIONS)
        .unwrap();
    let portal = Portal::new(|login: pb::LoginRequest| async move {
        // The realm records the application's own identity beside pb's.
        login.connection.set_identity(AppUser(7));
        Ok(pb::Avatar::new(PerspectiveRef::new(PerspectiveImpl(99))))
    })
    .verifiers(users);
    let (_server, session) = pair(&portal).await;
    let me: PerspectiveRef = session.login("alice", PASSWORD).await.unwrap();
    assert_eq!(
        me.check().await.unwrap(),
        (Some("alice".to_owned()), Some(7), true)
    );
}
