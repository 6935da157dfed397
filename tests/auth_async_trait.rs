//! A realm and a verifier store written as users write them: structs whose methods are
//! `async fn` under `#[pb::async_trait]` (no hand-made boxed futures, no direct dependency on
//! the async-trait crate), used by a portal behind `dyn`. Over real TCP on 127.0.0.1, driven
//! by events (a timeout only guards against a hang).
#![allow(clippy::unwrap_used)]

mod auth_support;

use std::collections::HashMap;
use std::time::Duration;

use auth_support::{AccountRef, ITERATIONS, Me, NO_HANG, PASSWORD};
use pb::scram::ScramVerifier;
use pb::{
    Avatar, Client, LoginConfig, LoginError, LoginRequest, Portal, Realm, Refusal, VerifierStore,
};
use tokio::sync::Mutex;

/// Verifiers behind an async lock, as a store backed by a database client would hold them.
struct Store {
    users: Mutex<HashMap<String, ScramVerifier>>,
}

#[pb::async_trait]
impl VerifierStore for Store {
    async fn verifier(&self, username: &str) -> Option<ScramVerifier> {
        // An await inside the method: the point of `async fn` here.
        tokio::task::yield_now().await;
        self.users.lock().await.get(username).cloned()
    }
}

/// A realm that refuses banned users and counts the avatars it made.
struct Chat {
    banned: &'static str,
    made: Mutex<u32>,
}

#[pb::async_trait]
impl Realm for Chat {
    async fn request_avatar(&self, login: LoginRequest) -> Result<Avatar, Refusal> {
        if login.identity.name() == Some(self.banned) {
            return Err(Refusal::Denied);
        }
        *self.made.lock().await += 1;
        Ok(Avatar::new(AccountRef::new(Me)))
    }
}

fn portal() -> Portal {
    let mut users = HashMap::new();
    for name in ["alice", "mallory"] {
        users.insert(
            name.to_owned(),
            ScramVerifier::with_iterations(PASSWORD, ITERATIONS).unwrap(),
        );
    }
    Portal::new(Chat {
        banned: "mallory",
        made: Mutex::new(0),
    })
    .verifiers(Store {
        users: Mutex::new(users),
    })
    .config(LoginConfig {
        failure_delay: Duration::ZERO,
        ..LoginConfig::default()
    })
}

#[tokio::test]
async fn async_fn_realm_and_store_log_users_in_and_refuse_the_banned() {
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(portal());
    let addr = server.local_addr();

    let me: AccountRef = tokio::time::timeout(NO_HANG, Client::login(addr, "alice", PASSWORD))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(me.whoami().await.unwrap(), "user alice");

    // The store knows mallory (the password checks out); the realm refuses her.
    let banned = tokio::time::timeout(
        NO_HANG,
        Client::login::<AccountRef>(addr, "mallory", PASSWORD),
    )
    .await
    .unwrap();
    assert!(
        matches!(banned, Err(LoginError::Refused(Refusal::Denied))),
        "{banned:?}"
    );
    // An unknown user is refused the same way.
    let unknown = tokio::time::timeout(
        NO_HANG,
        Client::login::<AccountRef>(addr, "nobody", PASSWORD),
    )
    .await
    .unwrap();
    assert!(
        matches!(unknown, Err(LoginError::Refused(Refusal::Denied))),
        "{unknown:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_traits_are_usable_as_trait_objects() {
    let store: Box<dyn VerifierStore> = Box::new(Store {
        users: Mutex::new(HashMap::new()),
    });
    assert!(store.verifier("alice").await.is_none());
    let realm: Box<dyn Realm> = Box::new(Chat {
        banned: "mallory",
        made: Mutex::new(0),
    });
    // A closure is still a realm.
    let _also: Box<dyn Realm> = Box::new(|_: LoginRequest| async { Err(Refusal::Unavailable) });
    drop(realm);
}
