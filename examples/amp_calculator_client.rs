//! The AMP calculator client of Twisted's AMP howto, in pb.
//!
//! ```text
//! cargo run --example amp_calculator_client -- --port 1234
//! ```
//!
//! Calls `Sum` and `Divide` (including a division by zero, which must come back as the declared
//! error `ZERO_DIVISION`) on the server at 127.0.0.1:PORT, prints each result, and exits 0 only
//! when every answer was as expected.

use std::process::ExitCode;

use pb::amp::{AmpCallError, AmpConfig, AmpConnection, Locator};

#[path = "shared/calculator.rs"]
mod calculator;

use calculator::*;

/// Prints one check and says whether it passed.
fn report(what: &str, outcome: String, ok: bool) -> bool {
    println!(
        "{what} = {outcome} ({})",
        if ok { "ok" } else { "UNEXPECTED" }
    );
    ok
}

#[tokio::main]
async fn main() -> ExitCode {
    let port = match port_from_args("amp_calculator_client") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let conn =
        match AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), Locator::new())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot connect to 127.0.0.1:{port}: {e}");
                return ExitCode::FAILURE;
            }
        };
    let mut all_ok = true;

    all_ok &= match conn.call(&Sum { a: 13, b: 81 }).await {
        Ok(r) => report("Sum(a=13, b=81)", r.total.to_string(), r.total == 94),
        Err(e) => report("Sum(a=13, b=81)", format!("error: {e}"), false),
    };
    all_ok &= match conn
        .call(&Divide {
            numerator: 1234,
            denominator: 4,
        })
        .await
    {
        Ok(r) => report(
            "Divide(numerator=1234, denominator=4)",
            r.result.to_string(),
            r.result == 308.5,
        ),
        Err(e) => report(
            "Divide(numerator=1234, denominator=4)",
            format!("error: {e}"),
            false,
        ),
    };
    all_ok &= match conn
        .call(&Divide {
            numerator: 1,
            denominator: 0,
        })
        .await
    {
        Err(AmpCallError::Declared(DivideError::ZeroDivision(description))) => report(
            "Divide(numerator=1, denominator=0)",
            format!("ZERO_DIVISION error: {description}"),
            true,
        ),
        Ok(r) => report(
            "Divide(numerator=1, denominator=0)",
            r.result.to_string(),
            false,
        ),
        Err(e) => report(
            "Divide(numerator=1, denominator=0)",
            format!("error: {e}"),
            false,
        ),
    };
    conn.close();

    if all_ok {
        println!("all answers as expected");
        ExitCode::SUCCESS
    } else {
        println!("some answers were not as expected");
        ExitCode::FAILURE
    }
}
