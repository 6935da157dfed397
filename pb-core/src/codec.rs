//! The payload codec: the one place that knows payloads are bincode.
//!
//! Every decode runs under an explicit byte limit (bincode's `with_limit`): without one a
//! 26-byte message claiming a huge string makes bincode allocate the claimed size. Two limit
//! tiers keep small messages from even reserving address space for large claims.
//!
//! Object references inside a payload are not encoded in it: while a value is encoded, every
//! [`ObjectRef`] it contains is collected into a side list and only its index is written; the
//! broker turns that list into wire descriptors. Decoding does the reverse with a list the broker
//! resolved first. The lists live in a thread-local stack that is set only for the duration of one
//! synchronous encode or decode, so nothing leaks between calls.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use crate::connection::Connection;
use crate::frame::MAX_FRAME_LEN_CEILING;
use crate::object::ObjectRef;

/// Payloads up to this size decode under the small limit.
const SMALL_LIMIT: usize = 64 * 1024;

/// An encode or decode of a payload failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// The bytes do not decode as the expected type.
    #[error("cannot decode value: {0}")]
    Decode(String),
    /// The payload is larger than the decode limit.
    #[error("payload of {len} bytes exceeds the decode limit of {max} bytes")]
    TooLarge {
        /// The payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes were left over after the value.
    #[error("{0} trailing bytes after value")]
    Trailing(usize),
}

/// What one encode or decode in progress on this thread knows.
#[derive(Default)]
struct Context {
    refs: Vec<ObjectRef>,
    /// The connection the value is bound for (encoding) or came from (decoding).
    peer: Option<Connection>,
}

type Stack = RefCell<Vec<Context>>;

thread_local! {
    static ENCODING: Stack = const { RefCell::new(Vec::new()) };
    static DECODING: Stack = const { RefCell::new(Vec::new()) };
    /// A reused encode buffer, so that encoding a small value allocates only its exact size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Values encoded to at most this many bytes are copied out of the scratch buffer into an
/// allocation of their exact size; larger ones take the buffer itself (no copy).
const SCRATCH_COPY_MAX: usize = 4096;

/// A bincode writer appending to a `Vec` (bincode's `std::io::Write` adapter costs a call
/// chain and an error check per byte).
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A bincode writer appending to a `BytesMut`.
struct BytesMutWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BytesMutWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Pops the context it pushed, even if a user's `Serialize` panics.
struct Scope(&'static std::thread::LocalKey<Stack>);

impl Scope {
    fn enter(key: &'static std::thread::LocalKey<Stack>, cx: Context) -> Scope {
        key.with(|s| s.borrow_mut().push(cx));
        Scope(key)
    }

    fn take(self) -> Vec<ObjectRef> {
        let cx = self.0.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        std::mem::forget(self);
        cx.refs
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.0.with(|s| s.borrow_mut().pop());
    }
}

/// Called by `ObjectRef`'s `Serialize`: records the reference, returns its index.
pub(crate) fn collect_ref(r: &ObjectRef) -> Option<u32> {
    ENCODING.with(|s| {
        let mut s = s.borrow_mut();
        let top = s.last_mut()?;
        let index = u32::try_from(top.refs.len()).ok()?;
        top.refs.push(r.clone());
        Some(index)
    })
}

/// Called by `ObjectRef`'s `Deserialize`: the reference at `index` of the current payload.
pub(crate) fn resolve_ref(index: u32) -> Option<ObjectRef> {
    DECODING.with(|s| {
        let s = s.borrow();
        s.last()?.refs.get(index as usize).cloned()
    })
}

fn config_small() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<SMALL_LIMIT>()
}

fn config_large() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN_CEILING>()
}

/// The connection the value being encoded right now is bound for, if it is bound for one:
/// what a per-peer `Serialize` (such as a copyable's state hook) asks to tailor its state.
pub fn current_peer() -> Option<Connection> {
    ENCODING.with(|s| s.borrow().last().and_then(|cx| cx.peer.clone()))
}

/// Encode `value` after whatever `out` holds; returns the references it contains. `peer` is the
/// connection the value is bound for (`None` for an in-process call).
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    peer: Option<&Connection>,
    out: &mut BytesMut,
) -> Result<Vec<ObjectRef>, CodecError> {
    let scope = Scope::enter(
        &ENCODING,
        Context {
            refs: Vec::new(),
            peer: peer.cloned(),
        },
    );
    bincode::serde::encode_into_writer(value, BytesMutWriter(out), bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(scope.take())
}

/// Encode `value` into a new buffer; returns the bytes and the references it contains.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    peer: Option<&Connection>,
) -> Result<(Bytes, Vec<ObjectRef>), CodecError> {
    // Taken out of the thread-local for the duration, so a nested encode (a `Serialize` impl
    // that encodes) finds an empty buffer instead of a borrowed one.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    buf.clear();
    let scope = Scope::enter(
        &ENCODING,
        Context {
            refs: Vec::new(),
            peer: peer.cloned(),
        },
    );
    let encoded =
        bincode::serde::encode_into_writer(value, VecWriter(&mut buf), bincode::config::standard());
    let refs = scope.take();
    if let Err(e) = encoded {
        SCRATCH.with(|s| *s.borrow_mut() = buf);
        return Err(CodecError::Encode(e.to_string()));
    }
    let bytes = if buf.len() <= SCRATCH_COPY_MAX {
        let bytes = Bytes::copy_from_slice(&buf);
        SCRATCH.with(|s| *s.borrow_mut() = buf);
        bytes
    } else {
        Bytes::from(buf)
    };
    Ok((bytes, refs))
}

/// Decode a `T` that must fill `bytes` exactly, with `refs` as its object references.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], refs: Vec<ObjectRef>) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_LEN_CEILING {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN_CEILING,
        });
    }
    let _scope = Scope::enter(&DECODING, Context { refs, peer: None });
    let result = if bytes.len() <= SMALL_LIMIT {
        bincode::serde::decode_from_slice::<T, _>(bytes, config_small())
    } else {
        bincode::serde::decode_from_slice::<T, _>(bytes, config_large())
    };
    let (value, used) = result.map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_claimed_string_is_an_error_not_an_abort() {
        // A varint length prefix claiming u64::MAX-ish bytes, followed by 16 real bytes.
        let mut msg = vec![0xfd];
        msg.extend_from_slice(&u64::MAX.to_le_bytes());
        msg.extend_from_slice(&[b'a'; 16]);
        assert!(matches!(
            decode::<String>(&msg, vec![]),
            Err(CodecError::Decode(_))
        ));
        let mut msg = vec![0xfc];
        msg.extend_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(matches!(
            decode::<Vec<u8>>(&msg, vec![]),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn round_trip_and_trailing() {
        let (b, refs) = encode(&("hi".to_string(), 5u64, vec![1u8, 2]), None).unwrap();
        assert!(refs.is_empty());
        let v: (String, u64, Vec<u8>) = decode(&b, vec![]).unwrap();
        assert_eq!(v, ("hi".to_string(), 5, vec![1, 2]));
        let mut longer = b.to_vec();
        longer.push(0);
        assert_eq!(
            decode::<(String, u64, Vec<u8>)>(&longer, vec![]),
            Err(CodecError::Trailing(1))
        );
    }
}
