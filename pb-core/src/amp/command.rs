//! Typed commands, their declared errors and the errors of a call.

use std::fmt;

use bytes::Bytes;

use super::argument::{AmpFields, ArgumentError};
use super::dispatch::DisconnectReason;
use pb_proto::amp::codec::BoxCodecError;

/// The error code for a failure the responder did not declare (`UNKNOWN_ERROR_CODE`).
pub const UNKNOWN_ERROR_CODE: &[u8] = b"UNKNOWN";
/// The error code for a command nobody responds to (`UNHANDLED_ERROR_CODE`).
pub const UNHANDLED_ERROR_CODE: &[u8] = b"UNHANDLED";

/// An AMP command: its wire name, its arguments (the fields of `Self`), its response and its
/// declared errors. Derive it with `#[derive(pb::AmpCommand)]`.
pub trait AmpCommand: AmpFields + Send + 'static {
    /// The command name on the wire (`commandName`).
    const NAME: &'static str;
    /// Whether callers should wait for an answer (`requiresAnswer`); a hint for callers only,
    /// as in Twisted: responders always produce a response, and a peer may ask anyway.
    const REQUIRES_ANSWER: bool = true;
    /// The response's fields.
    type Response: AmpFields + Send + 'static;
    /// The declared errors (`errors` and `fatalErrors`); [`NoErrors`] when there are none.
    type Error: AmpError + Send + 'static;
}

/// The declared errors of a command, each with its wire code. Derive it with
/// `#[derive(pb::AmpError)]` on an enum.
pub trait AmpError: Sized {
    /// The error code sent as `_error_code`.
    fn code(&self) -> &'static [u8];
    /// The text sent as `_error_description`.
    fn description(&self) -> String;
    /// Whether the responder closes the connection after sending this error (`fatalErrors`).
    fn is_fatal(&self) -> bool;
    /// The declared error for a received code, if it is one of ours.
    fn from_code(code: &[u8], description: &str) -> Option<Self>;
}

/// The declared errors of a command that declares none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoErrors {}

impl fmt::Display for NoErrors {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoErrors {}

impl AmpError for NoErrors {
    fn code(&self) -> &'static [u8] {
        match *self {}
    }

    fn description(&self) -> String {
        match *self {}
    }

    fn is_fatal(&self) -> bool {
        match *self {}
    }

    fn from_code(_code: &[u8], _description: &str) -> Option<Self> {
        None
    }
}

/// An error answer as it crosses the wire: a code, a description, and whether the responder
/// closes the connection after sending it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote error {}: {description}", String::from_utf8_lossy(code))]
pub struct RemoteError {
    /// `_error_code`.
    pub code: Bytes,
    /// `_error_description`.
    pub description: String,
    /// Close the connection after sending (a fatal error).
    pub fatal: bool,
}

impl RemoteError {
    /// A non-fatal error with the given code and description.
    pub fn new(code: impl Into<Bytes>, description: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            description: description.into(),
            fatal: false,
        }
    }

    /// The same error, sent as fatal: the connection closes after it.
    pub fn fatal(mut self) -> Self {
        self.fatal = true;
        self
    }

    /// The `UNKNOWN` error sent for undeclared failures; always fatal, as in Twisted.
    pub fn unknown() -> Self {
        Self {
            code: Bytes::from_static(UNKNOWN_ERROR_CODE),
            description: "Unknown Error".into(),
            fatal: true,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmpCallError<E> {
    /// The responder answered with one of the command's declared errors.
    #[error("declared error")]
    Declared(#[source] E),
    /// Nobody on the other side responds to this command (`UNHANDLED`).
    #[error("unhandled command: {description}")]
    Unhandled {
        /// The peer's description, e.g. `Unhandled Command: b'NoSuchCmd'`.
        description: String,
    },
    /// An error code the command does not declare, including `UNKNOWN`.
    #[error("remote error {}: {description}", String::from_utf8_lossy(code))]
    Remote {
        /// `_error_code`.
        code: Bytes,
        /// `_error_description`.
        description: String,
    },
    /// The arguments could not be encoded; nothing was sent.
    #[error("could not encode the arguments")]
    Arguments(#[source] ArgumentError),
    /// The box could not be encoded (e.g. a key over 255 bytes); nothing was sent.
    #[error("could not encode the box")]
    Encode(#[source] BoxCodecError),
    /// The answer does not match the command's response.
    #[error("bad answer")]
    BadAnswer(#[source] ArgumentError),
    /// Too many calls await an answer on this connection; nothing was sent.
    #[error("too many outstanding calls (at most {max})")]
    TooManyOutstanding {
        /// The configured maximum.
        max: usize,
    },
    /// StartTLS was asked for twice on one connection; nothing was sent.
    #[error("tls already started on this connection")]
    OnlyOneTls,
    /// The connection ended before the answer arrived (or before the call could be sent).
    #[error("disconnected")]
    Disconnected(#[source] DisconnectReason),
}

impl<E> AmpCallError<E> {
    /// Maps the declared error type, keeping every other variant.
    pub fn map_declared<F>(self, f: impl FnOnce(E) -> F) -> AmpCallError<F> {
        match self {
            AmpCallError::Declared(e) => AmpCallError::Declared(f(e)),
            AmpCallError::Unhandled { description } => AmpCallError::Unhandled { description },
            AmpCallError::Remote { code, description } => {
                AmpCallError::Remote { code, description }
            }
            AmpCallError::Arguments(e) => AmpCallError::Arguments(e),
            AmpCallError::Encode(e) => AmpCallError::Encode(e),
            AmpCallError::BadAnswer(e) => AmpCallError::BadAnswer(e),
            AmpCallError::TooManyOutstanding { max } => AmpCallError::TooManyOutstanding { max },
            AmpCallError::OnlyOneTls => AmpCallError::OnlyOneTls,
            AmpCallError::Disconnected(r) => AmpCallError::Disconnected(r),
        }
    }
}

impl AmpCallError<NoErrors> {
    /// Widens an error of a call with no declared errors to any declared error type.
    pub fn widen<E>(self) -> AmpCallError<E> {
        self.map_declared(|e| match e {})
    }
}

/// Turns an error answer into a typed call error, as Twisted's `_massageError` does.
pub(crate) fn classify<E: AmpError>(code: Bytes, description: String) -> AmpCallError<E> {
    if let Some(e) = E::from_code(&code, &description) {
        AmpCallError::Declared(e)
    } else if code.as_ref() == UNHANDLED_ERROR_CODE {
        AmpCallError::Unhandled { description }
    } else {
        AmpCallError::Remote { code, description }
    }
}

/// Python's `repr()` of a bytes value, as Twisted puts it in `UNHANDLED` descriptions.
pub(crate) fn python_bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut s = String::from("b");
    s.push(quote);
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            c if c == quote as u8 => {
                s.push('\\');
                s.push(quote);
            }
            0x20..=0x7e => s.push(char::from(c)),
            c => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push(quote);
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bytes_repr_like_python() {
        assert_eq!(python_bytes_repr(b"NoSuchCmd"), "b'NoSuchCmd'");
        assert_eq!(python_bytes_repr(b"a'b"), "b\"a'b\"");
        assert_eq!(python_bytes_repr(b"a'\"b"), "b'a\\'\"b'");
        assert_eq!(python_bytes_repr(b"\x00\xff\n"), "b'\\x00\\xff\\n'");
    }
}
