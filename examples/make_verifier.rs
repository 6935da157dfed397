//! Turn a password into the SCRAM-SHA-256 verifier a pb server stores, so the server never
//! holds the password itself.
//!
//! ```text
//! $ echo 'correct horse battery staple' | cargo run --example make_verifier -- ada
//! ada:SCRAM-SHA-256$100000:<salt>$<StoredKey>:<ServerKey>
//! ```
//!
//! The password is read from standard input (first line), never from the command line, so it
//! stays out of shell history and process listings. `--iterations N` sets the PBKDF2 iteration
//! count (default 100 000, at least 4 096). Load the output into a `pb::Verifiers` with
//! `line.split_once(':')` and `str::parse::<pb::scram::ScramVerifier>()`.

use std::io::BufRead;
use std::process::ExitCode;

use pb::scram::{DEFAULT_ITERATIONS, ScramVerifier};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut user = None;
    let mut iterations = DEFAULT_ITERATIONS;
    while let Some(arg) = args.next() {
        if arg == "--iterations" {
            match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => iterations = n,
                None => return usage("--iterations needs a number"),
            }
        } else if user.is_none() {
            user = Some(arg);
        } else {
            return usage("too many arguments");
        }
    }
    let Some(user) = user else {
        return usage("missing the user name");
    };
    if user.contains(':') {
        return usage("a user name may not contain ':'");
    }
    let mut password = String::new();
    if std::io::stdin().lock().read_line(&mut password).is_err() {
        return usage("cannot read the password from standard input");
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return usage("empty password");
    }
    match ScramVerifier::with_iterations(password, iterations) {
        Ok(v) => {
            println!("{user}:{v}");
            ExitCode::SUCCESS
        }
        Err(e) => usage(&e.to_string()),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("make_verifier: {why}");
    eprintln!("usage: make_verifier [--iterations N] USER  (password on standard input)");
    ExitCode::from(2)
}
