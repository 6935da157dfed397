//! Twisted cred's challenge-response over PB (`pb.respond`, `_PortalAuthChallenger`).
//!
//! **Weak, for compatibility only.** The response is `md5(md5(password) + challenge)`: MD5,
//! and a server that checks it must hold the password or its unsalted MD5, a password
//! equivalent. Use it only to serve Twisted clients that log in this way (`PBClientFactory.login`),
//! preferably over TLS; pb's own login (SCRAM-SHA-256 with channel binding) is unchanged.
//! Unlike Twisted, whose challenge comes from Python's `random`, the challenge here is 16
//! bytes the caller takes from a CSPRNG.

use md5::{Digest, Md5};

/// The length of a challenge, as Twisted's (an MD5 digest).
pub const CHALLENGE_LEN: usize = 16;

/// The client's response to `challenge` for `password`: `md5(md5(password) + challenge)`.
pub fn respond(challenge: &[u8], password: &[u8]) -> [u8; 16] {
    respond_md5(challenge, &Md5::digest(password).into())
}

/// The response to `challenge` from the password's MD5 (what a server may store instead of the
/// password: it is as good as the password for this login).
pub fn respond_md5(challenge: &[u8], password_md5: &[u8; 16]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(password_md5);
    h.update(challenge);
    h.finalize().into()
}

/// Whether `response` answers `challenge` for `password`, compared in constant time.
pub fn check(challenge: &[u8], password: &[u8], response: &[u8]) -> bool {
    let expected = respond(challenge, password);
    response.len() == expected.len()
        && expected
            .iter()
            .zip(response)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_is_twisteds() {
        // md5(b"secret") is 5ebe2294ecd0e0f08eab7690d2a6ee69; Twisted's `respond` of the
        // challenge b"0123456789abcdef" for it, computed with Python's hashlib.
        let r = respond(b"0123456789abcdef", b"secret");
        let expected = {
            let mut h = Md5::new();
            h.update([
                0x5e, 0xbe, 0x22, 0x94, 0xec, 0xd0, 0xe0, 0xf0, 0x8e, 0xab, 0x76, 0x90, 0xd2, 0xa6,
                0xee, 0x69,
            ]);
            h.update(b"0123456789abcdef");
            <[u8; 16]>::from(h.finalize())
        };
        assert_eq!(r, expected);
        assert!(check(b"0123456789abcdef", b"secret", &r));
        assert!(!check(b"0123456789abcdef", b"secreT", &r));
        assert!(!check(b"0123456789abcdef", b"secret", &r[..15]));
    }
}
