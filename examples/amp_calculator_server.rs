//! The AMP calculator server of Twisted's AMP howto, in pb.
//!
//! ```text
//! cargo run --example amp_calculator_server -- --port 1234
//! ```
//!
//! Serves `Sum(a: Integer, b: Integer) -> total: Integer` and
//! `Divide(numerator: Integer, denominator: Integer) -> result: Float` on 127.0.0.1, with division
//! by zero as the declared error `ZERO_DIVISION`, until killed. Any Twisted AMP client with the
//! howto's command classes can call it. With `--port 0` it picks a free port; it prints the
//! address it listens on either way.

use std::process::ExitCode;

use pb::amp::AmpConfig;

#[path = "shared/calculator.rs"]
mod calculator;

use calculator::*;

#[tokio::main]
async fn main() -> ExitCode {
    let port = match port_from_args("amp_calculator_server") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("amp calculator listening on {addr}"),
        Err(e) => eprintln!("cannot read the bound address: {e}"),
    }
    let served = pb::amp::serve(listener, AmpConfig::default(), |_conn| math()).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accept failed: {e}");
            ExitCode::FAILURE
        }
    }
}
