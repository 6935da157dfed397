//! The wire contract of the login object that a server with a portal serves as each
//! connection's root until login: its interface, methods and answer types. pb-server implements
//! it, pb-client calls it; both need the same types, so they live here.
//!
//! ```text
//! scram_start(client_first: String)                -> Result<String /*server-first*/, Refusal>
//! scram_finish(client_final: String, mind: Option<ObjectRef>)
//!                                                  -> Result<ScramFinished, Refusal>
//! anonymous(mind: Option<ObjectRef>)               -> Result<ObjectRef /*avatar*/, Refusal>
//! certificate(mind: Option<ObjectRef>)             -> Result<ObjectRef /*avatar*/, Refusal>
//! ```
//!
//! `mind` is an object of the client's that the server's realm may call back (Twisted's mind).

use serde::{Deserialize, Serialize};

use crate::object::{Interface, ObjectRef};

/// The login object's interface.
pub static LOGIN_INTERFACE: Interface = Interface {
    name: "Login",
    methods: &[
        METHOD_SCRAM_START,
        METHOD_SCRAM_FINISH,
        METHOD_ANONYMOUS,
        METHOD_CERTIFICATE,
    ],
};

/// First step of a SCRAM-SHA-256 login: sends the client-first message.
pub const METHOD_SCRAM_START: &str = "scram_start";
/// Second step of a SCRAM-SHA-256 login: sends the client proof and the mind.
pub const METHOD_SCRAM_FINISH: &str = "scram_finish";
/// Anonymous login.
pub const METHOD_ANONYMOUS: &str = "anonymous";
/// Login as the identity of the verified TLS client certificate.
pub const METHOD_CERTIFICATE: &str = "certificate";

/// Why the server refused a login step. One value covers every credential failure: an unknown
/// user and a wrong password are not told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The credentials were not accepted.
    #[error("login refused")]
    Denied,
    /// The server does not offer this way of logging in here (anonymous login switched off, no
    /// client certificate, no password checker).
    #[error("this way of logging in is not offered")]
    NotOffered,
    /// Too many failed attempts on this connection; the server closes it.
    #[error("too many failed login attempts")]
    TooManyAttempts,
    /// This connection has already logged in.
    #[error("already logged in")]
    AlreadyLoggedIn,
    /// A login step came out of order or did not parse.
    #[error("malformed login step")]
    Malformed,
    /// The realm could not make an avatar for an authenticated identity.
    #[error("the server could not set up the session")]
    Unavailable,
}

/// A successful SCRAM login: the server's signature and the avatar.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScramFinished {
    /// The server-final message, which proves the server holds the user's verifier.
    pub server_final: String,
    /// The avatar: the object through which the user acts.
    pub avatar: ObjectRef,
}
