//! Twisted's `pbsimple.py` and `pbsimpleclient.py` in pb: a root object with one remote
//! method, `echo`, and a client that calls it.
//!
//! ```text
//! cargo run --example howto_pbsimple
//! ```
//!
//! Server and client run in one process over TCP on 127.0.0.1. It prints what Twisted's pair
//! prints and exits 0 only if the server echoed what it was sent.

use std::error::Error;

/// Twisted: `class Echoer(pb.Root)` with `remote_echo`. A method that cannot fail returns its
/// value itself; its stub returns `Result<String, pb::CallError<pb::Never>>`, whose errors are
/// the system's (a lost connection, a limit, ...).
#[pb::remote]
pub trait Echoer {
    async fn echo(&self, st: String) -> String;
}

struct Echo;

impl Echoer for Echo {
    async fn echo(&self, st: String) -> String {
        println!("echoing: {st}");
        st
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Twisted: `reactor.listenTCP(8789, pb.PBServerFactory(Echoer()))`.
    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(EchoerRef::new(Echo));

    // Twisted: `factory.getRootObject()` then `object.callRemote("echo", "hello network")`.
    let conn = pb::Client::connect(server.local_addr()).await?;
    let echoer: EchoerRef = conn.root();
    let echo = match echoer.echo("hello network".into()).await {
        Ok(echo) => echo,
        Err(e) => {
            println!("error: {e}");
            return Err(e.into());
        }
    };
    println!("server echoed: {echo}");

    conn.close().await;
    server.shutdown().await;
    if echo != "hello network" {
        return Err(format!("expected the echo of \"hello network\", got {echo:?}").into());
    }
    Ok(())
}
