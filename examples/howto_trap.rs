//! Twisted's `trap_server.py` and `trap_client.py` in pb: telling failures apart.
//!
//! ```text
//! cargo run --example howto_trap
//! ```
//!
//! Twisted's client adds errbacks that `failure.trap(...)` one exception class each. In pb a
//! call's result is a `Result<T, pb::CallError<E>>`, and one `match` sorts it: the callee's
//! declared errors are `CallError::Remote(e)` with `e` typed, and each failure of the system has
//! a variant of its own. The four calls are Twisted's: a safe argument, an argument the callee
//! cannot take, one that makes the callee raise, and a call on a reference whose server is
//! gone. Server and client run in one process; it exits 0 only if each call ended as expected.

use std::error::Error;
use std::time::Duration;

/// Twisted: `MyException` and `MyOtherException`, both `pb.Error`s.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum FooError {
    MyException,
    MyOtherException,
}

#[pb::remote]
pub trait One {
    async fn foo_method(&self, arg: String) -> Result<String, FooError>;
    async fn shutdown(&self);
}

struct TheOne {
    stop: pb::ShutdownHandle,
}

impl One for TheOne {
    async fn foo_method(&self, arg: String) -> Result<String, FooError> {
        if arg == "panic!" {
            return Err(FooError::MyException);
        }
        Ok("response".into())
    }

    async fn shutdown(&self) {
        // Only asks: this call is answered before the server closes its connections.
        self.stop.shutdown();
    }
}

/// Twisted: `class ScaryObject`, "not safe for serialization". A Rust stub cannot be given one
/// (`foo_method` takes a `String`: it would not compile), so it is sent with a dynamic call by
/// name, and the callee refuses what it cannot decode as its parameters.
#[pb::copyable]
pub struct ScaryObject {
    pub teeth: Vec<u32>,
}

/// How a call ended, as the client's `match` sorted it.
#[derive(Debug, PartialEq)]
enum Ended {
    Worked(String),
    Refused,
    Raised(FooError),
    Stale,
    SomethingElse,
}

fn sort(result: Result<String, pb::CallError<FooError>>) -> Ended {
    match result {
        Ok(response) => {
            println!(" method successful, response: {response}");
            Ended::Worked(response)
        }
        // Twisted's `jelly.InsecureJelly`: the other side would not take what was sent.
        Err(pb::CallError::BadArguments(why)) => {
            println!(" BadArguments: the callee could not take what you sent ({why})");
            Ended::Refused
        }
        Err(pb::CallError::Remote(e)) => {
            match e {
                FooError::MyException => println!(" remote raised a MyException"),
                FooError::MyOtherException => println!(" remote raised a MyOtherException"),
            }
            Ended::Raised(e)
        }
        // Twisted's `pb.DeadReferenceError`.
        Err(pb::CallError::Disconnected) => {
            println!(" stale reference: the server disconnected or crashed");
            Ended::Stale
        }
        Err(other) => {
            println!(" something else happened: {other}");
            Ended::SomethingElse
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let server = pb::Server::bind("127.0.0.1:0").await?;
    let stop = server.shutdown_handle();
    let server = server.serve(OneRef::new(TheOne { stop }));
    let conn = pb::Client::connect(server.local_addr()).await?;
    let remote: OneRef = conn.root();
    let mut ended = Vec::new();

    println!("callOne: call with safe object");
    ended.push(sort(remote.foo_method("safe string".into()).await));

    println!("callTwo: call with dangerous object");
    let scary = ScaryObject {
        teeth: vec![1000, 2000, 3000],
    };
    let call = remote.object_ref().call("foo_method", &(scary,)).await;
    ended.push(sort(call));

    println!("callThree: call that raises remote exception");
    ended.push(sort(remote.foo_method("panic!".into()).await));

    println!("telling them to shut down");
    remote.shutdown().await?;
    // The server closes the connection once it has answered; the reference goes stale.
    tokio::time::timeout(Duration::from_secs(5), remote.disconnected())
        .await
        .map_err(|_| "the server did not close the connection")?;
    server.wait().await;

    println!("callFour: call on stale reference");
    ended.push(sort(remote.foo_method("dummy".into()).await));

    let expected = [
        Ended::Worked("response".into()),
        Ended::Refused,
        Ended::Raised(FooError::MyException),
        Ended::Stale,
    ];
    if ended != expected {
        return Err(format!("expected {expected:?}, got {ended:?}").into());
    }
    Ok(())
}
