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
//! registers one responder per command in a `Locator`. Server and client run in one process
//! over TCP on 127.0.0.1 (`examples/amp_calculator_server.rs` and `amp_calculator_client.rs` are
//! the same commands as two programs, which Twisted's own client and server can talk to). It
//! exits 0 only if every answer is right, the division by zero included.

use std::error::Error;

use pb::amp::{AmpCallError, AmpConfig, AmpConnection, Locator};

/// Twisted: `class Sum(amp.Command)`, arguments `a` and `b` (`amp.Integer()`).
#[derive(pb::AmpCommand)]
#[amp(response = SumResult)]
pub struct Sum {
    pub a: i64,
    pub b: i64,
}

/// Twisted: `response = [(b"total", amp.Integer())]`.
#[derive(pb::AmpFields)]
pub struct SumResult {
    /// Wide enough for the sum of any two `i64`s (Twisted's integers have no bound).
    pub total: i128,
}

/// Twisted: `class Divide(amp.Command)`.
#[derive(pb::AmpCommand)]
#[amp(response = DivideResult, errors = DivideError)]
pub struct Divide {
    pub numerator: i64,
    pub denominator: i64,
}

/// Twisted: `response = [(b"result", amp.Float())]`.
#[derive(pb::AmpFields)]
pub struct DivideResult {
    pub result: f64,
}

/// Twisted: `errors = {ZeroDivisionError: b"ZERO_DIVISION"}`.
#[derive(pb::AmpError, Debug)]
pub enum DivideError {
    #[amp(code = "ZERO_DIVISION")]
    ZeroDivision(String),
}

/// Twisted: `class Math(amp.AMP)` with `Sum.responder(sum)` and `Divide.responder(divide)`.
fn math() -> Locator {
    Locator::new()
        .respond(|Sum { a, b }| async move {
            let total = i128::from(a) + i128::from(b);
            println!("Did a sum: {a} + {b} = {total}");
            Ok(SumResult { total })
        })
        .respond(
            |Divide {
                 numerator,
                 denominator,
             }| async move {
                if denominator == 0 {
                    return Err(DivideError::ZeroDivision("float division by zero".into()));
                }
                let result = numerator as f64 / denominator as f64;
                println!("Divided: {numerator} / {denominator} = {result}");
                Ok(DivideResult { result })
            },
        )
}

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
