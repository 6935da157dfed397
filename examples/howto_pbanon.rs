//! Twisted's `pbAnonServer.py` and `pbAnonClient.py` in pb: one portal that takes both
//! anonymous and password logins.
//!
//! ```text
//! cargo run --example howto_pbanon
//! ```
//!
//! Twisted registers two checkers on the portal (`InMemoryUsernamePasswordDatabaseDontUse` and
//! `AllowAnonymousAccess`) and its realm names anonymous avatars "Anonymous". In pb the portal
//! takes SCRAM-SHA-256 verifiers (`pb::Verifiers`: the server keeps a salted verifier, never
//! the password, and the password never crosses the wire) and `allow_anonymous(true)`; the
//! realm is a closure from the `pb::LoginRequest` to a `pb::Avatar`. Each login is on a
//! connection of its own (one login per connection). Server and clients run in one process;
//! it exits 0 only if each avatar is who it should be.

use std::error::Error;

use pb::{Avatar, Identity, LoginRequest, Portal, Verifiers};

/// Twisted: `class MyPerspective(pb.Avatar)` with `perspective_foo`. It answers with its name,
/// so that the client can check whom it reached.
#[pb::remote]
pub trait Perspective {
    async fn foo(&self, arg: i64) -> String;
}

struct MyPerspective {
    name: String,
}

impl Perspective for MyPerspective {
    async fn foo(&self, arg: i64) -> String {
        println!("I am {}.  perspective_foo({arg}) called.", self.name);
        self.name.clone()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Twisted: `InMemoryUsernamePasswordDatabaseDontUse(user1="pass1", user2="pass2")`. At the
    // least cost SCRAM accepts, to keep the example quick; `users.add_user(name, password)`
    // uses the default cost, which a server should.
    let mut users = Verifiers::new();
    for (name, password) in [("user1", "pass1"), ("user2", "pass2")] {
        users.insert_password(name, password, pb::scram::MIN_ITERATIONS)?;
    }
    // Twisted: `MyRealm.requestAvatar`. Anonymous logins are `Identity::Anonymous`.
    let realm = |login: LoginRequest| async move {
        let name = match &login.identity {
            Identity::Anonymous => "Anonymous".to_owned(),
            other => other.name().unwrap_or("nobody").to_owned(),
        };
        Ok(Avatar::new(PerspectiveRef::new(MyPerspective { name })))
    };
    let portal = Portal::new(realm).verifiers(users).allow_anonymous(true);
    let server = pb::Server::bind("127.0.0.1:0").await?.serve_portal(portal);
    let addr = server.local_addr();

    // Twisted: `factory.login(Anonymous())`. Other ways to log in than a password go through
    // a `Session`.
    let session = pb::Client::builder().open(addr).await?;
    let anonymous: PerspectiveRef = session.login_anonymous().await?;
    println!("got perspective1 ref: {anonymous:?}");
    println!("asking it to foo(13)");
    let first = anonymous.foo(13).await?;

    // Twisted: `factory.login(UsernamePassword("user1", "pass1"))`.
    let user1: PerspectiveRef = pb::Client::login(addr, "user1", "pass1").await?;
    println!("got perspective1 ref: {user1:?}");
    println!("asking it to foo(13)");
    let second = user1.foo(13).await?;

    // A wrong password gets the same refusal as an unknown user.
    let refused = match pb::Client::login::<PerspectiveRef>(addr, "user2", "guess").await {
        Ok(_) => None,
        Err(e) => {
            println!("user2 with a wrong password: {e}");
            e.refusal()
        }
    };

    session.close().await;
    if let Some(conn) = user1.object_ref().peer() {
        conn.close().await;
    }
    server.shutdown().await;
    if first != "Anonymous" || second != "user1" {
        return Err(format!("expected Anonymous and user1, reached {first} and {second}").into());
    }
    if refused != Some(pb::Refusal::Denied) {
        return Err(format!("expected a wrong password to be denied, got {refused:?}").into());
    }
    Ok(())
}
