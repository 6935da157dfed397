//! SCRAM-SHA-256 (RFC 5802 with the SHA-256 of RFC 7677), with `tls-exporter` channel binding
//! (RFC 9266), as plain state machines that do no I/O.
//!
//! The server keeps a [`ScramVerifier`] per user: a salt, an iteration count, `StoredKey` and
//! `ServerKey`. Neither key lets anyone log in; the password itself is never stored and never
//! sent. Four messages cross, as strings:
//!
//! ```text
//! client                                         server
//! ScramClient::new ── client-first ─────────────▶ parse_client_first → (look up verifier)
//!                                                  ClientFirst::challenge
//!      handle_server_first ◀──── server-first ──
//!      ── client-final (proof) ─────────────────▶ ScramServer::handle_client_final
//!      ScramClientFinal::handle_server_final ◀── server-final (server signature) ──
//! ```
//!
//! The server signature proves to the client that the server holds the verifier, so a login is
//! mutual. On TLS both sides mix the channel's exporter value (RFC 9266) into the proof, so a man
//! in the middle that terminates TLS (even with a valid certificate) cannot relay a login: its
//! two TLS sessions have different exporter values.
//!
//! This module lives in pb-core because pb-client and pb-server both need it. Usernames and
//! passwords are used as their UTF-8 bytes: no SASLprep normalisation is applied.
//!
//! # Example
//! ```
//! # mod pb { pub use pb_proto as proto; }
//! use pb::proto::scram::{ChannelBinding, ScramClient, ScramVerifier, parse_client_first};
//!
//! let verifier = ScramVerifier::with_iterations("pencil", 4096).unwrap();
//! let binding = ChannelBinding::None;
//! let (client, client_first) = ScramClient::new("user", "pencil", binding.clone()).unwrap();
//! let first = parse_client_first(&client_first, &binding).unwrap();
//! assert_eq!(first.username(), "user");
//! let (server, server_first) = first.challenge(&verifier).unwrap();
//! let (client, client_final) = client.handle_server_first(&server_first, 100_000).unwrap();
//! let server_final = server.handle_client_final(&client_final).unwrap();
//! client.handle_server_final(&server_final).unwrap();
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The fewest PBKDF2 iterations accepted anywhere (RFC 7677 asks for at least 4 096).
pub const MIN_ITERATIONS: u32 = 4096;

/// Iterations of a verifier made with [`ScramVerifier::new`]. A client pays them once per login;
/// an attacker pays them per guess.
pub const DEFAULT_ITERATIONS: u32 = 100_000;

/// The most iterations a client computes by default, so that a hostile server cannot make it
/// spin.
pub const DEFAULT_MAX_ITERATIONS: u32 = 1_000_000;

/// The exporter label of `tls-exporter` channel binding (RFC 9266).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Length of the exporter value used for channel binding (RFC 9266).
pub const EXPORTER_LEN: usize = 32;

/// The longest SCRAM message accepted, from either side.
pub const MAX_MESSAGE_LEN: usize = 2048;

/// The longest username accepted, in bytes.
pub const MAX_USERNAME_LEN: usize = 256;

const NONCE_BYTES: usize = 24;
const SALT_BYTES: usize = 16;

/// The longest salt a fake verifier takes from a store's shape.
pub const MAX_FAKE_SALT: usize = 256;

/// What a SCRAM challenge shows of a verifier: its salt's length and its iteration count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerifierShape {
    /// The salt's length in bytes.
    pub salt_len: usize,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
}
const KEY_LEN: usize = 32;
const CB_NAME: &str = "tls-exporter";

/// What the channel under the login offers for binding.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// No binding: plaintext TCP or an in-memory transport.
    None,
    /// The TLS session's exporter value (label [`EXPORTER_LABEL`], no context, 32 bytes).
    TlsExporter([u8; EXPORTER_LEN]),
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The exporter value is a secret of the session: never print it.
        match self {
            ChannelBinding::None => f.write_str("ChannelBinding::None"),
            ChannelBinding::TlsExporter(_) => f.write_str("ChannelBinding::TlsExporter(..)"),
        }
    }
}

impl ChannelBinding {
    fn gs2_header(&self) -> String {
        match self {
            ChannelBinding::None => "n,,".to_owned(),
            ChannelBinding::TlsExporter(_) => format!("p={CB_NAME},,"),
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            ChannelBinding::None => &[],
            ChannelBinding::TlsExporter(v) => v,
        }
    }
}

/// A SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// A message did not parse.
    #[error("malformed scram message: {0}")]
    Malformed(&'static str),
    /// The client's channel binding does not match this side's channel (a man in the middle, or
    /// a client that asked for no binding on a TLS connection).
    #[error("channel binding does not match")]
    ChannelBinding,
    /// The client's proof is wrong: wrong password or unknown user (deliberately one error).
    #[error("authentication failed")]
    Denied,
    /// The server's signature is wrong: the server does not hold this user's verifier.
    #[error("the server could not prove that it knows the password verifier")]
    ServerSignature,
    /// The server asked for an iteration count outside what the client accepts.
    #[error("iteration count {got} outside the accepted range {min}..={max}")]
    Iterations {
        /// What the server asked for.
        got: u32,
        /// The fewest accepted.
        min: u32,
        /// The most accepted.
        max: u32,
    },
    /// A stored verifier did not parse.
    #[error("bad verifier: {0}")]
    BadVerifier(&'static str),
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ScramError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|_| ScramError::Random)?;
    Ok(b)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC takes keys of any length, so this never fails; the fallback key is unreachable.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

fn decode_key(s: &str) -> Option<[u8; KEY_LEN]> {
    B64.decode(s).ok()?.try_into().ok()
}

/// What the server stores for one user: it verifies a login without knowing the password, and
/// cannot itself be used to log in.
///
/// Its text form (`Display` / `FromStr`) is the one PostgreSQL uses:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, in base64.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl ScramVerifier {
    /// A verifier for `password` with a fresh random salt and [`DEFAULT_ITERATIONS`].
    pub fn new(password: &str) -> Result<ScramVerifier, ScramError> {
        ScramVerifier::with_iterations(password, DEFAULT_ITERATIONS)
    }

    /// A verifier with a fresh random salt and `iterations` (at least [`MIN_ITERATIONS`]).
    pub fn with_iterations(password: &str, iterations: u32) -> Result<ScramVerifier, ScramError> {
        if iterations < MIN_ITERATIONS {
            return Err(ScramError::Iterations {
                got: iterations,
                min: MIN_ITERATIONS,
                max: u32::MAX,
            });
        }
        let salt = random_bytes::<SALT_BYTES>()?;
        Ok(ScramVerifier::from_salt(password, &salt, iterations))
    }

    /// A verifier from a given salt (for reproducible tests; use [`ScramVerifier::new`] otherwise).
    pub fn from_salt(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramVerifier {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// A stand-in verifier for a user that does not exist, derived from a server secret: the
    /// same user always gets the same salt, so probing cannot tell it from a real one, and no
    /// password matches it. Its salt has the length pb's own verifiers have; see
    /// [`ScramVerifier::fake_like`] to copy a store's.
    pub fn fake(secret: &[u8], username: &str, iterations: u32) -> ScramVerifier {
        ScramVerifier::fake_like(
            secret,
            username,
            VerifierShape {
                salt_len: SALT_BYTES,
                iterations,
            },
        )
    }

    /// As [`ScramVerifier::fake`], in the shape `shape` (salt length and iteration count):
    /// the shape of the store's real verifiers, so that an unknown user's challenge looks like
    /// a known user's. Salts are capped at [`MAX_FAKE_SALT`] bytes.
    pub fn fake_like(secret: &[u8], username: &str, shape: VerifierShape) -> ScramVerifier {
        let len = shape.salt_len.min(MAX_FAKE_SALT);
        let mut salt = Vec::with_capacity(len);
        let mut block = 0u8;
        while salt.len() < len {
            let more = hmac(secret, &[b"pb fake salt\0", username.as_bytes(), &[block]]);
            salt.extend_from_slice(more.get(..len - salt.len()).unwrap_or(&more));
            block = block.wrapping_add(1);
        }
        ScramVerifier {
            salt,
            iterations: shape.iterations,
            stored_key: hmac(secret, &[b"pb fake stored key\0", username.as_bytes()]),
            server_key: hmac(secret, &[b"pb fake server key\0", username.as_bytes()]),
        }
    }

    /// Its salt length and iteration count: what a challenge shows of it.
    pub fn shape(&self) -> VerifierShape {
        VerifierShape {
            salt_len: self.salt.len(),
            iterations: self.iterations,
        }
    }

    /// The PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl FromStr for ScramVerifier {
    type Err = ScramError;

    fn from_str(s: &str) -> Result<ScramVerifier, ScramError> {
        let bad = ScramError::BadVerifier;
        let rest = s
            .trim()
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(bad("expected the prefix SCRAM-SHA-256$"))?;
        let (params, keys) = rest.split_once('$').ok_or(bad("expected two parts"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(bad("expected <iterations>:<salt>"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(bad("expected <stored key>:<server key>"))?;
        let iterations: u32 = iterations.parse().map_err(|_| bad("bad iteration count"))?;
        if iterations < MIN_ITERATIONS {
            return Err(bad("fewer iterations than the minimum"));
        }
        Ok(ScramVerifier {
            salt: B64.decode(salt).map_err(|_| bad("bad salt"))?,
            iterations,
            stored_key: decode_key(stored).ok_or(bad("bad stored key"))?,
            server_key: decode_key(server).ok_or(bad("bad server key"))?,
        })
    }
}

fn escape_username(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_username(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(rest.get(..i).unwrap_or(""));
        let code = rest.get(i..i + 3);
        match code {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in username")),
        }
        rest = rest.get(i + 3..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

/// Split `a=value` attributes, checking their names in order.
fn attributes<const N: usize>(msg: &str, names: [char; N]) -> Result<[&str; N], ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    let mut out = [""; N];
    let mut parts = msg.split(',');
    for (slot, name) in out.iter_mut().zip(names) {
        let part = parts
            .next()
            .ok_or(ScramError::Malformed("missing attribute"))?;
        let mut chars = part.chars();
        if chars.next() != Some(name) || chars.next() != Some('=') {
            return Err(ScramError::Malformed("unexpected attribute"));
        }
        *slot = part.get(2..).unwrap_or("");
    }
    // Extensions are not defined; a mandatory one ("m=") must fail, others are ignored.
    if parts.any(|p| p.starts_with("m=")) {
        return Err(ScramError::Malformed("unsupported mandatory extension"));
    }
    Ok(out)
}

fn new_nonce() -> Result<String, ScramError> {
    Ok(B64.encode(random_bytes::<NONCE_BYTES>()?))
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Fails for a username a server refuses: empty, or longer than [`MAX_USERNAME_LEN`] bytes.
/// A client checks before it sends one, a verifier store before it keeps one.
pub fn check_username(username: &str) -> Result<(), ScramError> {
    match username.len() {
        0 => Err(ScramError::Malformed("empty username")),
        n if n > MAX_USERNAME_LEN => Err(ScramError::Malformed(
            "username longer than MAX_USERNAME_LEN (256 bytes)",
        )),
        _ => Ok(()),
    }
}

/// The client's side of a login, before the server's first message.
pub struct ScramClient {
    password: String,
    binding: ChannelBinding,
    client_first_bare: String,
    nonce: String,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Start a login; returns the state and the client-first message to send.
    pub fn new(
        username: &str,
        password: &str,
        binding: ChannelBinding,
    ) -> Result<(ScramClient, String), ScramError> {
        check_username(username)?;
        Ok(ScramClient::with_nonce(
            username,
            password,
            binding,
            new_nonce()?,
        ))
    }

    /// As [`ScramClient::new`] with a chosen nonce, for test vectors only: a nonce must never
    /// repeat.
    #[doc(hidden)]
    pub fn with_nonce(
        username: &str,
        password: &str,
        binding: ChannelBinding,
        nonce: String,
    ) -> (ScramClient, String) {
        let client_first_bare = format!("n={},r={nonce}", escape_username(username));
        let first = format!("{}{client_first_bare}", binding.gs2_header());
        (
            ScramClient {
                password: password.to_owned(),
                binding,
                client_first_bare,
                nonce,
            },
            first,
        )
    }

    /// Handle the server-first message; returns the state and the client-final message. The
    /// iteration count must lie between [`MIN_ITERATIONS`] and `max_iterations`.
    pub fn handle_server_first(
        self,
        server_first: &str,
        max_iterations: u32,
    ) -> Result<(ScramClientFinal, String), ScramError> {
        let [nonce, salt, iterations] = attributes(server_first, ['r', 's', 'i'])?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() || !valid_nonce(nonce)
        {
            return Err(ScramError::Malformed(
                "the server's nonce does not extend ours",
            ));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("bad salt"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if !(MIN_ITERATIONS..=max_iterations).contains(&iterations) {
            return Err(ScramError::Iterations {
                got: iterations,
                min: MIN_ITERATIONS,
                max: max_iterations,
            });
        }
        let mut cbind = self.binding.gs2_header().into_bytes();
        cbind.extend_from_slice(self.binding.data());
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);

        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key = sha256(&client_key);
        let client_signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof = xor(&client_key, &client_signature);
        let server_key = hmac(&salted, &[b"Server Key"]);
        let server_signature = hmac(&server_key, &[auth_message.as_bytes()]);
        Ok((
            ScramClientFinal { server_signature },
            format!("{without_proof},p={}", B64.encode(proof)),
        ))
    }
}

/// The client's side of a login, waiting for the server's signature.
pub struct ScramClientFinal {
    server_signature: [u8; KEY_LEN],
}

impl fmt::Debug for ScramClientFinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClientFinal").finish_non_exhaustive()
    }
}

impl ScramClientFinal {
    /// Check the server-final message: success proves the server holds our verifier.
    pub fn handle_server_final(self, server_final: &str) -> Result<(), ScramError> {
        let [v] = attributes(server_final, ['v'])?;
        let v = decode_key(v).ok_or(ScramError::Malformed("bad server signature"))?;
        if bool::from(v.ct_eq(&self.server_signature)) {
            Ok(())
        } else {
            Err(ScramError::ServerSignature)
        }
    }
}

/// A parsed client-first message: the server now looks up [`ClientFirst::username`]'s verifier
/// (or makes a fake one) and calls [`ClientFirst::challenge`].
#[derive(Debug)]
pub struct ClientFirst {
    username: String,
    gs2_header: String,
    client_first_bare: String,
    client_nonce: String,
    binding: ChannelBinding,
}

/// Parse the client-first message on the server, given the binding this side's channel offers.
///
/// On TLS the client must bind (`p=tls-exporter`); without TLS it must not. Anything else is a
/// downgrade or a relay and fails with [`ScramError::ChannelBinding`].
pub fn parse_client_first(msg: &str, binding: &ChannelBinding) -> Result<ClientFirst, ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::Malformed(
            "authorization identities are not supported",
        ));
    }
    match (flag, binding) {
        ("n" | "y", ChannelBinding::None) => {}
        (f, ChannelBinding::TlsExporter(_)) if f == format!("p={CB_NAME}") => {}
        _ => return Err(ScramError::ChannelBinding),
    }
    let [name, nonce] = attributes(bare, ['n', 'r'])?;
    let username = unescape_username(name)?;
    check_username(&username)?;
    if !valid_nonce(nonce) {
        return Err(ScramError::Malformed("bad nonce"));
    }
    Ok(ClientFirst {
        username,
        gs2_header: format!("{flag},,"),
        client_first_bare: bare.to_owned(),
        client_nonce: nonce.to_owned(),
        binding: binding.clone(),
    })
}

impl ClientFirst {
    /// The user who is logging in.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Answer with `verifier`'s salt and iterations; returns the state and the server-first
    /// message to send.
    pub fn challenge(self, verifier: &ScramVerifier) -> Result<(ScramServer, String), ScramError> {
        Ok(self.challenge_with_nonce(verifier, &new_nonce()?))
    }

    /// As [`ClientFirst::challenge`] with a chosen server nonce, for test vectors only.
    #[doc(hidden)]
    pub fn challenge_with_nonce(
        self,
        verifier: &ScramVerifier,
        server_nonce: &str,
    ) -> (ScramServer, String) {
        let nonce = format!("{}{server_nonce}", self.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let mut cbind = self.gs2_header.into_bytes();
        cbind.extend_from_slice(self.binding.data());
        (
            ScramServer {
                verifier: verifier.clone(),
                nonce,
                expected_cbind: B64.encode(cbind),
                auth_prefix: format!("{},{server_first}", self.client_first_bare),
            },
            server_first,
        )
    }
}

/// The server's side of a login, waiting for the client's proof.
pub struct ScramServer {
    verifier: ScramVerifier,
    nonce: String,
    expected_cbind: String,
    auth_prefix: String,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer").finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Check the client-final message. On success returns the server-final message to send.
    ///
    /// The proof is always computed and compared in constant time, whatever else is wrong, so
    /// that a fake verifier and a real one cost the same.
    pub fn handle_client_final(self, client_final: &str) -> Result<String, ScramError> {
        let [cbind, nonce, proof] = attributes(client_final, ['c', 'r', 'p'])?;
        let proof = decode_key(proof).ok_or(ScramError::Malformed("bad proof"))?;
        let without_proof_len = client_final
            .len()
            .saturating_sub(proof_suffix_len(client_final));
        let without_proof = client_final
            .get(..without_proof_len)
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &client_signature);
        let proof_ok = sha256(&client_key).ct_eq(&self.verifier.stored_key);
        let cbind_ok = cbind.as_bytes().ct_eq(self.expected_cbind.as_bytes());
        let nonce_ok = nonce.as_bytes().ct_eq(self.nonce.as_bytes());
        if !bool::from(cbind_ok) {
            return Err(ScramError::ChannelBinding);
        }
        if !bool::from(proof_ok & nonce_ok) {
            return Err(ScramError::Denied);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Length of the trailing `,p=...` of a client-final message.
fn proof_suffix_len(client_final: &str) -> usize {
    client_final
        .rfind(",p=")
        .map_or(0, |i| client_final.len() - i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
