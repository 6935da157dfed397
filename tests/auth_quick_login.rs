//! Login's common case: `Client::login` (dial and log in in one call), `Verifiers::add_user`
//! (a password at the default cost), and `LoginRequest::mind_as` (the client's mind, typed).
//! The one-call login runs over real TCP on 127.0.0.1, driven by events (a timeout only guards
//! against a hang); the mind over the in-memory transport with virtual time.
#![allow(clippy::unwrap_used)]

mod auth_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth_support::{AccountRef, ITERATIONS, Me, NO_HANG, PASSWORD};
use pb::scram::DEFAULT_ITERATIONS;
use pb::{
    Avatar, Client, ClientError, Config, LoginConfig, LoginError, LoginRequest, Portal, Refusal,
    VerifierStore, Verifiers,
};
use tokio::sync::mpsc;

/// A portal with one user added by password at the default cost, answering failures at once.
fn default_cost_portal() -> Portal {
    let mut users = Verifiers::new();
    users.add_user("alice", PASSWORD).unwrap();
    Portal::new(|_: LoginRequest| async { Ok(Avatar::new(AccountRef::new(Me))) })
        .verifiers(users)
        .config(LoginConfig {
            failure_delay: Duration::ZERO,
            ..LoginConfig::default()
        })
}

#[tokio::test]
async fn add_user_stores_a_verifier_at_the_default_cost_and_never_the_password() {
    let mut users = Verifiers::new();
    users.add_user("alice", PASSWORD).unwrap();
    let stored = users.verifier("alice").await.unwrap().to_string();
    assert!(
        stored.starts_with(&format!("SCRAM-SHA-256${DEFAULT_ITERATIONS}:")),
        "{stored}"
    );
    assert!(!stored.contains(PASSWORD));
    assert!(users.verifier("bob").await.is_none());
    // Adding again replaces, with a fresh salt.
    users.add_user("alice", "another").unwrap();
    assert_ne!(users.verifier("alice").await.unwrap().to_string(), stored);
}

#[tokio::test]
async fn client_login_dials_logs_in_and_returns_the_typed_avatar() {
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(default_cost_portal());
    let me: AccountRef = tokio::time::timeout(
        NO_HANG,
        Client::login(server.local_addr(), "alice", PASSWORD),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");
    // The avatar reaches its connection, which stays open until closed.
    let conn = me
        .object_ref()
        .peer()
        .expect("a remote avatar has a connection");
    assert!(!conn.is_closed());
    conn.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn client_login_reports_a_refusal_and_a_connection_that_cannot_be_opened() {
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(default_cost_portal());
    let refused = tokio::time::timeout(
        NO_HANG,
        Client::login::<AccountRef>(server.local_addr(), "alice", "guess"),
    )
    .await
    .unwrap();
    assert!(
        matches!(refused, Err(LoginError::Refused(Refusal::Denied))),
        "{refused:?}"
    );
    // The client closes the connection it opened for the failed login.
    for conn in server.connections() {
        tokio::time::timeout(NO_HANG, conn.closed()).await.unwrap();
    }

    // Nothing listens there any more.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let r = Client::login::<AccountRef>(addr, "alice", PASSWORD).await;
    assert!(
        matches!(r, Err(LoginError::Connect(ClientError::Io(_)))),
        "{r:?}"
    );
    server.shutdown().await;
}

#[pb::remote]
pub trait Notes {
    async fn note(&self, text: String) -> Result<(), ()>;
}

struct Pad(mpsc::UnboundedSender<String>);

impl Notes for Pad {
    async fn note(&self, text: String) -> Result<(), ()> {
        self.0.send(text).map_err(|_| ())
    }
}

#[tokio::test(start_paused = true)]
async fn mind_as_gives_the_realm_the_clients_mind_typed() {
    let minds: Arc<Mutex<Vec<Option<NotesRef>>>> = Arc::default();
    let seen = minds.clone();
    let mut users = Verifiers::new();
    users
        .insert_password("alice", PASSWORD, ITERATIONS)
        .unwrap();
    let portal = Portal::new(move |login: LoginRequest| {
        seen.lock().unwrap().push(login.mind_as::<NotesRef>());
        async { Ok(Avatar::new(AccountRef::new(Me))) }
    })
    .verifiers(users);

    let open = || async {
        let (a, b) = pb::transport::memory_pair();
        let config = Config::default();
        let server = portal.serve_connection(a, &config, None, None);
        let (s, c) = tokio::join!(server, Client::builder().open_over(b));
        (s.unwrap(), c.unwrap())
    };

    // With a mind: the realm gets it typed, and calls reach the client's object.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_server, session) = open().await;
    let session = session.with_mind(NotesRef::new(Pad(tx)));
    let _me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    let mind = minds
        .lock()
        .unwrap()
        .pop()
        .unwrap()
        .expect("a mind was sent");
    mind.note("welcome".into()).await.unwrap();
    assert_eq!(rx.recv().await.as_deref(), Some("welcome"));

    // Without one: `None`.
    let (_server, session) = open().await;
    let _me: AccountRef = session.login("alice", PASSWORD).await.unwrap();
    assert!(minds.lock().unwrap().pop().unwrap().is_none());
}

/// A username the server refuses (longer than `scram::MAX_USERNAME_LEN`, or empty) is refused
/// where it starts: the store does not take it, and a client does not send it (a clear error,
/// and no failed login counted against the connection, which stays good for a login).
#[tokio::test(start_paused = true)]
async fn a_username_the_server_refuses_is_refused_by_the_store_and_the_client() {
    let long = "u".repeat(pb::proto::scram::MAX_USERNAME_LEN + 1);
    let mut users = Verifiers::new();
    for name in [long.as_str(), ""] {
        assert!(
            matches!(
                users.insert_password(name, PASSWORD, ITERATIONS),
                Err(pb::scram::ScramError::Malformed(m)) if m.contains("username")
            ),
            "{} bytes",
            name.len()
        );
        assert!(users.add_user(name, PASSWORD).is_err());
    }
    let at_limit = "u".repeat(pb::proto::scram::MAX_USERNAME_LEN);
    users
        .insert_password(at_limit.as_str(), PASSWORD, ITERATIONS)
        .unwrap();
    let portal = Portal::new(|_: LoginRequest| async { Ok(Avatar::new(AccountRef::new(Me))) })
        .verifiers(users)
        .config(LoginConfig {
            max_failures: 1,
            ..LoginConfig::default()
        });
    let (a, b) = pb::transport::memory_pair();
    let config = Config::default();
    let (server, session) = tokio::join!(
        portal.serve_connection(a, &config, None, None),
        Client::builder().open_over(b)
    );
    let (_server, session) = (server.unwrap(), session.unwrap());
    let refused = session.login::<AccountRef>(&long, PASSWORD).await;
    assert!(
        matches!(&refused, Err(LoginError::Scram(pb::scram::ScramError::Malformed(m))) if m.contains("username")),
        "{refused:?}"
    );
    // Nothing was sent: the one failure the connection is allowed is still to come.
    session
        .login::<AccountRef>(&at_limit, PASSWORD)
        .await
        .unwrap();
}
