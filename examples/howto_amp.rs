//! Twisted's `ampserver.py` and `ampclient.py` in pb: the `Sum` and `Divide` commands of
//! Twisted's AMP howto, served and called over AMP, byte for byte as Twisted speaks it.
//!
//! ```text
//! cargo run --example howto_amp
//! ```
//!
//! A command is a struct deriving `pb::AmpCommand` (its fields are the arguments), its answer a
//! struct deriving `pb::AmpFields`, its declared errors an enum deriving `pb::AmpError` with the
//! wire code of each (Twisted's `errors = {ZeroDivisionError: b"ZERO_DIVISION"}`). A server
//! registers one responder per command in a `Locator`. The commands and the responders are in
//! `examples/shared/calculator.rs`, shared with `amp_calculator_server.rs` and
//! `amp_calculator_client.rs` (the same commands as two programs, which Twisted's own client and
//! server can talk to). Server and client run here in one process over TCP on 127.0.0.1. It
//! exits 0 only if every answer is right, the division by zero included.

use std::error::Error;

use pb::amp::{AmpCallError, AmpConfig, AmpConnection, Locator};

/// The commands (`Sum`, `Divide`), their answers, the declared `ZERO_DIVISION` error and the
/// server's responders (`math()`), shared with the two calculator programs.
#[path = "shared/calculator.rs"]
mod calculator;

use calculator::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // `serve` accepts until its task is dropped; each connection gets its own locator.
    let server = tokio::spawn(pb::amp::serve(listener, AmpConfig::default(), |_conn| {
        math()
    }));
    println!("started");

    // The client answers no commands itself: an empty locator.
    let conn = AmpConnection::connect(addr, AmpConfig::default(), Locator::new()).await?;
    let total = conn.call(&Sum { a: 13, b: 81 }).await?.total;
    let quarter = conn
        .call(&Divide {
            numerator: 1234,
            denominator: 4,
        })
        .await?
        .result;
    // Twisted's `trapZero`: the declared error arrives typed, and only it is turned into INF.
    let divided = match conn
        .call(&Divide {
            numerator: 1234,
            denominator: 0,
        })
        .await
    {
        Ok(r) => r.result,
        Err(AmpCallError::Declared(DivideError::ZeroDivision(why))) => {
            println!("Divided by zero ({why}): returning INF");
            f64::INFINITY
        }
        Err(e) => return Err(e.into()),
    };
    println!("Done with math: [{total}, {quarter}, {divided}]");

    conn.close();
    server.abort();
    if total != 94 || quarter != 308.5 || divided != f64::INFINITY {
        return Err(
            format!("expected [94, 308.5, inf], got [{total}, {quarter}, {divided}]").into(),
        );
    }
    Ok(())
}
