//! The server side of the SCRAM-SHA-256 login state machine (what pb-server's portal runs for
//! `scram_start` and `scram_finish`) fed an arbitrary client-first and client-final message,
//! with and without `tls-exporter` channel binding: an error or a server-final, never a panic,
//! and never a success without the password.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pb_proto::scram::{ChannelBinding, MIN_ITERATIONS, ScramVerifier, parse_client_first};

fn verifier() -> &'static ScramVerifier {
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    V.get_or_init(|| ScramVerifier::from_salt("pencil", b"0123456789abcdef", MIN_ITERATIONS))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // The two messages are separated by the first 0xff byte (never valid UTF-8).
    let (first, last) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], rest.get(i + 1..).unwrap_or_default()),
        None => (rest, &[][..]),
    };
    let binding = if flags & 1 == 1 {
        ChannelBinding::TlsExporter([7; 32])
    } else {
        ChannelBinding::None
    };
    let first = String::from_utf8_lossy(first);
    let Ok(client_first) = parse_client_first(&first, &binding) else {
        return;
    };
    let _ = client_first.username();
    let (server, server_first) = client_first.challenge_with_nonce(verifier(), "SERVERNONCE");
    assert!(server_first.starts_with("r="));
    let last = String::from_utf8_lossy(last);
    // Without the password the proof cannot be right.
    assert!(server.handle_client_final(&last).is_err());
});
