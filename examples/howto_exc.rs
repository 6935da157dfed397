//! Twisted's `exc_server.py` and `exc_client.py` in pb: remote exceptions, expected and not.
//!
//! ```text
//! cargo run --example howto_exc
//! ```
//!
//! In Twisted, `remote_broken` raises `MyError`, a `pb.Error`: an expected error, sent to the
//! caller as a failure without a traceback in the server's log. `remote_broken2` raises an
//! ordinary exception: the caller gets a failure too, and the server logs a traceback.
//!
//! In pb, an expected error is the method's typed `Err`: the caller gets the value itself, as
//! `pb::CallError::Remote(MyError(...))`, and matches it. An unexpected one is a bug, a
//! panic: the caller gets `pb::CallError::Internal` with no detail (nothing of the server's
//! crosses unless it is declared), the server logs it, and the connection goes on working.
//! Server and client run in one process; it exits 0 only if both calls failed as described.

use std::error::Error;

/// Twisted: `class MyError(pb.Error)`. Declared in the interface, so it crosses as data.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct MyError(pub String);

#[pb::remote]
pub trait One {
    async fn broken(&self) -> Result<(), MyError>;
    async fn broken2(&self) -> Result<(), MyError>;
    async fn working(&self) -> String;
}

struct TheOne;

impl One for TheOne {
    async fn broken(&self) -> Result<(), MyError> {
        let msg = "fall down go boom";
        println!("raising a MyError exception with data '{msg}'");
        Err(MyError(msg.into()))
    }

    async fn broken2(&self) -> Result<(), MyError> {
        let msg = "hadda owie";
        println!("raising a MyError2 exception with data '{msg}'");
        // Twisted's `MyError2(Exception)`: nothing the interface declares, a bug.
        panic!("{msg}");
    }

    async fn working(&self) -> String {
        "still here".into()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The server's log of a panicking handler (Twisted logs the traceback): one line here
    // instead of the default report on stderr.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("?");
        println!("server log: a call handler panicked: {what}");
    }));

    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(OneRef::new(TheOne));
    let conn = pb::Client::connect(server.local_addr()).await?;
    let one: OneRef = conn.root();

    let expected = match one.broken().await {
        Ok(()) => {
            println!("erm, it wasn't *supposed* to work..");
            false
        }
        Err(e) => {
            println!("got remote Exception");
            println!(" error = {e:?}");
            println!(" message = {e}");
            e == pb::CallError::Remote(MyError("fall down go boom".into()))
        }
    };

    // Twisted's comment: change "broken" into "broken2" to see an unhandled exception.
    let unexpected = match one.broken2().await {
        Ok(()) => {
            println!("erm, it wasn't *supposed* to work..");
            false
        }
        Err(e) => {
            println!("got an unexpected failure");
            println!(" error = {e:?}");
            matches!(e, pb::CallError::Internal(_))
        }
    };

    // The panic cost one call, not the connection.
    let after = one.working().await?;
    println!("the connection still works: {after}");

    conn.close().await;
    server.shutdown().await;
    if !expected {
        return Err("broken() did not fail with MyError(\"fall down go boom\")".into());
    }
    if !unexpected {
        return Err("broken2() did not fail with CallError::Internal".into());
    }
    Ok(())
}
