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
//!
//! Every decode also runs under a nesting-depth limit ([`DEFAULT_MAX_DEPTH`], or the connection's
//! `Limits::max_depth`), counted by a `Deserializer` wrapper, so that a deeply nested value is an
//! error whatever the user's types, never a stack overflow.

mod depth;
pub(crate) mod jelly;
pub(crate) mod twisted;

use std::cell::{Cell, RefCell};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed};

use crate::frame::MAX_FRAME_LEN_CEILING;
use crate::link::Connection;
use crate::object::ObjectRef;
use pb_proto::outbox::{Outbox, ZERO_COPY_MIN};

/// bincode counts the in-memory size of every primitive it decodes against its limit, not the
/// bytes it reads: a one-byte varint claims up to 16 bytes (a `u128`). A payload of `n` bytes
/// therefore claims at most `CLAIM_FACTOR * n`, and decodes under the smallest limit tier that
/// covers that, so that small payloads cannot even claim large sizes.
const CLAIM_FACTOR: usize = 16;

/// The default nesting-depth limit of decoded values (as serde_json's recursion limit).
///
/// Each sequence, tuple, struct, map, enum variant, `Some` and newtype counts one level; the
/// arguments tuple of a call is the first.
pub const DEFAULT_MAX_DEPTH: usize = pb_proto::limits::DEFAULT_MAX_DEPTH;

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
    /// The value is nested deeper than the depth limit.
    #[error("value nested deeper than the limit max_depth = {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// What one encode or decode in progress on this thread knows.
#[derive(Default)]
struct Context {
    refs: Vec<ObjectRef>,
    /// The connection the value is bound for (encoding) or came from (decoding).
    peer: Option<Connection>,
    /// Decoding: the buffer the payload is a slice of, when it is one, so that byte strings
    /// in it can be handed out as slices of it ([`zero_copy`](crate::zero_copy)).
    frame: Option<Bytes>,
    /// Decoding a split frame's payload: its tail, for the byte string whose place the
    /// payload's last bytes (the tail marker) hold, and where the payload ends (where that
    /// string is read, as an empty one).
    tail: Option<(Bytes, usize)>,
    /// A decode made only to see whether the bytes decode (see [`decodes_as_marked`]): values
    /// whose decoding does something (a replica attaching its state) must not do it.
    probe: bool,
}

type Stack = RefCell<Vec<Context>>;

/// Whether the decode under way is a probe, whose value is thrown away (see
/// [`decodes_as_marked`]): a value whose decoding has effects leaves them out.
pub(crate) fn probing() -> bool {
    DECODING.with(|s| s.borrow().last().is_some_and(|cx| cx.probe))
}

thread_local! {
    static ENCODING: Stack = const { RefCell::new(Vec::new()) };
    static DECODING: Stack = const { RefCell::new(Vec::new()) };
    /// The chunk small values are encoded into and handed out from (see [`encode`]).
    static CHUNK: Cell<Option<BytesMut>> = const { Cell::new(None) };
    /// A reused encode buffer for values copied on at once (see [`encode_scratch`]).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A byte string offered to the encoder as shared while it is being serialized (see
    /// [`offer_shared`]).
    static OFFER: Cell<Option<Bytes>> = const { Cell::new(None) };
}

/// Serialize `bytes` with `serialize` (which writes it as one byte string) offering it to an
/// encode in progress as shared: an encode into a [`Payload`] keeps a reference to it instead
/// of copying it when it is at least [`SHARE_MIN`] bytes; any other serializer copies it as
/// usual.
pub(crate) fn offer_shared<R>(bytes: &Bytes, serialize: impl FnOnce() -> R) -> R {
    if bytes.len() < SHARE_MIN {
        return serialize();
    }
    OFFER.with(|o| o.set(Some(bytes.clone())));
    let result = serialize();
    // Not taken: the serializer was not pb's payload encoder.
    OFFER.with(Cell::take);
    result
}

/// Values encoded to at most this many bytes by [`encode_scratch`] are copied out of the
/// scratch buffer; larger ones take the buffer itself (no copy).
const SCRATCH_COPY_MAX: usize = 4096;

/// A bincode writer appending to a `Vec` (bincode's `std::io::Write` adapter costs a call
/// chain and an error check per byte), except byte strings offered as shared
/// ([`offer_shared`]): those are noted, with where they go, and not copied.
struct VecWriter<'a> {
    buf: &'a mut Vec<u8>,
    shared: &'a mut Shared,
}

/// The byte strings an encoded value shares instead of holding copies, each with where it goes
/// in the value's bytes. Boxed: most values share none, and stay as small as a buffer.
#[derive(Default)]
// One pointer instead of a `Vec`'s three words: every call's arguments carry this.
#[allow(clippy::box_collection)]
struct Shared(Option<Box<Vec<(usize, Bytes)>>>);

impl Shared {
    fn push(&mut self, at: usize, bytes: Bytes) {
        self.0.get_or_insert_with(Box::default).push((at, bytes));
    }

    #[inline]
    fn as_slice(&self) -> &[(usize, Bytes)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn pop(&mut self) -> Option<(usize, Bytes)> {
        self.0.as_mut()?.pop()
    }

    fn take(&mut self) -> Vec<(usize, Bytes)> {
        self.0.take().map(|v| *v).unwrap_or_default()
    }
}

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if bytes.len() >= SHARE_MIN
            && let Some(offered) = OFFER.with(Cell::take)
        {
            // bincode writes a byte string's bytes in one write, right after its length.
            if offered.as_ptr() == bytes.as_ptr() && offered.len() == bytes.len() {
                self.shared.push(self.buf.len(), offered);
                return Ok(());
            }
            OFFER.with(|o| o.set(Some(offered)));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// The size of the chunk small encoded values are handed out from. A value that encodes to
/// more than this takes the chunk itself, and the next encode starts a new one.
const SCRATCH_CHUNK: usize = 4096;

/// Below this much room left in the chunk, an encode first makes room: the chunk is reused
/// from its start once every value handed out from it has been dropped, or a new one is made.
const SCRATCH_LOW: usize = 256;

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
        self.finish().refs
    }

    /// Leave the context, handing back what is left in it.
    fn finish(self) -> Context {
        let cx = self.0.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        std::mem::forget(self);
        cx
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

/// Byte strings shorter than this are copied even when they could be slices of the frame:
/// copying them is cheap, and a small value kept for long should not keep a whole receive
/// buffer alive.
pub(crate) const SHARE_MIN: usize = 4096;

/// The split frame's tail, if the empty byte string `b` borrowed from the payload being
/// decoded stands for it (it is read where the payload ends, in place of the tail marker).
/// Taken: a value has it once.
pub(crate) fn take_tail(b: &[u8]) -> Option<Bytes> {
    if !b.is_empty() {
        return None;
    }
    DECODING.with(|s| {
        let mut s = s.borrow_mut();
        let cx = s.last_mut()?;
        match &cx.tail {
            Some((_, end)) if *end == b.as_ptr() as usize => cx.tail.take().map(|(t, _)| t),
            _ => None,
        }
    })
}

/// The bytes `b` borrowed from the payload being decoded, as a slice of the buffer that holds
/// it (no copy) when the decode knows that buffer and `b` is at least [`SHARE_MIN`] bytes, or
/// as a copy; a split frame's tail when `b` stands for it.
pub(crate) fn share_borrowed(b: &[u8]) -> Bytes {
    if b.len() < SHARE_MIN {
        if let Some(tail) = take_tail(b) {
            return tail;
        }
        return Bytes::copy_from_slice(b);
    }
    DECODING.with(|s| {
        let s = s.borrow();
        let Some(frame) = s.last().and_then(|cx| cx.frame.as_ref()) else {
            return Bytes::copy_from_slice(b);
        };
        let (start, end) = (
            frame.as_ptr() as usize,
            frame.as_ptr() as usize + frame.len(),
        );
        let at = b.as_ptr() as usize;
        if at < start || at + b.len() > end {
            return Bytes::copy_from_slice(b);
        }
        frame.slice_ref(b)
    })
}

/// Called by `ObjectRef`'s `Deserialize`: the reference at `index` of the current payload.
pub(crate) fn resolve_ref(index: u32) -> Option<ObjectRef> {
    DECODING.with(|s| {
        let s = s.borrow();
        s.last()?.refs.get(index as usize).cloned()
    })
}

macro_rules! limited {
    ($limit:expr) => {
        bincode::config::standard().with_limit::<{ $limit }>()
    };
}

/// The connection the value being encoded right now is bound for, if it is bound for one:
/// what a per-peer `Serialize` (such as a copyable's state hook) asks to tailor its state.
pub fn current_peer() -> Option<Connection> {
    ENCODING.with(|s| s.borrow().last().and_then(|cx| cx.peer.clone()))
}

/// The encode context for a value bound for `peer`: collects the references it contains.
fn encoding_scope(peer: Option<&Connection>) -> Scope {
    Scope::enter(
        &ENCODING,
        Context {
            refs: Vec::new(),
            peer: peer.cloned(),
            frame: None,
            tail: None,
            probe: false,
        },
    )
}

/// Encode `value` after whatever `out` holds; returns the references it contains. `peer` is the
/// connection the value is bound for (`None` for an in-process call).
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    peer: Option<&Connection>,
    out: &mut BytesMut,
) -> Result<Vec<ObjectRef>, CodecError> {
    let scope = encoding_scope(peer);
    bincode::serde::encode_into_writer(value, BytesMutWriter(out), bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(scope.take())
}

/// Types whose serde forms never ask pb's encode context anything: no object references, no
/// state chosen per peer. The standard library's plain types and containers of them; sealed.
/// Generated code encodes values of these types without entering the context (cheaper), and
/// picks that path per type at compile time (see [`crate::zero_copy::Wire`]).
#[doc(hidden)]
pub trait Plain: plain::Sealed {}

mod plain {
    /// Keeps [`super::Plain`] to the types listed here.
    pub trait Sealed {}

    macro_rules! plain {
        ($($t:ty),* $(,)?) => {
            $(
                impl Sealed for $t {}
                impl super::Plain for $t {}
            )*
        };
    }

    plain!(
        (),
        bool,
        char,
        u8,
        u16,
        u32,
        u64,
        u128,
        usize,
        i8,
        i16,
        i32,
        i64,
        i128,
        isize,
        f32,
        f64,
        str,
        String,
        bytes::Bytes,
        std::time::Duration,
    );

    macro_rules! plain_generic {
        ($(<$($p:ident),*> $t:ty),* $(,)?) => {
            $(
                impl<$($p: super::Plain),*> Sealed for $t {}
                impl<$($p: super::Plain),*> super::Plain for $t {}
            )*
        };
    }

    plain_generic!(
        <T> Option<T>,
        <T> Vec<T>,
        <T> std::collections::VecDeque<T>,
        <T> std::collections::BTreeSet<T>,
        <K, V> std::collections::BTreeMap<K, V>,
        <T, E> Result<T, E>,
        <T0> (T0,),
        <T0, T1> (T0, T1),
        <T0, T1, T2> (T0, T1, T2),
        <T0, T1, T2, T3> (T0, T1, T2, T3),
        <T0, T1, T2, T3, T4> (T0, T1, T2, T3, T4),
        <T0, T1, T2, T3, T4, T5> (T0, T1, T2, T3, T4, T5),
        <T0, T1, T2, T3, T4, T5, T6> (T0, T1, T2, T3, T4, T5, T6),
        <T0, T1, T2, T3, T4, T5, T6, T7> (T0, T1, T2, T3, T4, T5, T6, T7),
    );

    impl<T: super::Plain + ?Sized> Sealed for Box<T> {}
    impl<T: super::Plain + ?Sized> super::Plain for Box<T> {}
    impl<T: super::Plain + ?Sized> Sealed for &T {}
    impl<T: super::Plain + ?Sized> super::Plain for &T {}
    impl<T: super::Plain> Sealed for [T] {}
    impl<T: super::Plain> super::Plain for [T] {}
    impl<T: super::Plain, const N: usize> Sealed for [T; N] {}
    impl<T: super::Plain, const N: usize> super::Plain for [T; N] {}
    impl<K: super::Plain, V: super::Plain, S> Sealed for std::collections::HashMap<K, V, S> {}
    impl<K: super::Plain, V: super::Plain, S> super::Plain for std::collections::HashMap<K, V, S> {}
    impl<T: super::Plain, S> Sealed for std::collections::HashSet<T, S> {}
    impl<T: super::Plain, S> super::Plain for std::collections::HashSet<T, S> {}
}

/// Encode `value` into a new buffer; returns the bytes and the references it contains.
///
/// Small values are encoded into a chunk of a few KiB that this thread reuses, and handed out
/// as slices of it (no allocation of their own): a payload that is sent, or decoded, and
/// dropped costs no allocation. A small value kept for long keeps its chunk alive; copy it
/// (`Bytes::copy_from_slice`) to keep it apart.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    peer: Option<&Connection>,
) -> Result<(Bytes, Vec<ObjectRef>), CodecError> {
    encode_in(value, peer)
}

/// Encode `value`, in the context of a value bound for `peer`.
fn encode_in<T: Serialize + ?Sized>(
    value: &T,
    peer: Option<&Connection>,
) -> Result<(Bytes, Vec<ObjectRef>), CodecError> {
    // Taken out of the thread-local for the duration, so a nested encode (a `Serialize` impl
    // that encodes) finds no chunk instead of a borrowed one.
    let mut buf = CHUNK.with(Cell::take).unwrap_or_default();
    if buf.capacity() < SCRATCH_LOW {
        // Reclaims the chunk when nothing handed out from it is alive any more.
        buf.reserve(SCRATCH_CHUNK);
    }
    let scope = encoding_scope(peer);
    let encoded = bincode::serde::encode_into_writer(
        value,
        BytesMutWriter(&mut buf),
        bincode::config::standard(),
    );
    let refs = scope.take();
    if let Err(e) = encoded {
        // Kept only if the failed value did not make it grow, as on success.
        if buf.len() <= SCRATCH_CHUNK {
            buf.clear();
            CHUNK.with(|s| s.set(Some(buf)));
        }
        return Err(CodecError::Encode(e.to_string()));
    }
    let bytes = if buf.len() <= SCRATCH_CHUNK {
        let bytes = buf.split().freeze();
        CHUNK.with(|s| s.set(Some(buf)));
        bytes
    } else {
        // A large value takes the whole buffer, which it outgrew anyway.
        buf.freeze()
    };
    Ok((bytes, refs))
}

/// Encode `value` into the thread's scratch buffer, which the result holds until it is
/// dropped or turned into [`Bytes`]: a caller that copies the bytes on (into a connection's
/// output) allocates nothing for them. `context`: as in `encode_in` (`None` for a [`Plain`]
/// value).
pub(crate) fn encode_scratch<T: Serialize + ?Sized>(
    value: &T,
    context: Option<Option<&Connection>>,
) -> Result<(Encoded, Vec<ObjectRef>), CodecError> {
    // As in `encode`.
    let mut buf = Encoded {
        buf: SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut())),
        shared: Shared::default(),
    };
    buf.buf.clear();
    let scope = context.map(encoding_scope);
    let encoded = bincode::serde::encode_into_writer(
        value,
        VecWriter {
            buf: &mut buf.buf,
            shared: &mut buf.shared,
        },
        bincode::config::standard(),
    );
    let refs = scope.map(Scope::take).unwrap_or_default();
    match encoded {
        Ok(()) => Ok((buf, refs)),
        Err(e) => Err(CodecError::Encode(e.to_string())),
    }
}

/// An encoded value in a scratch buffer, which goes back to the thread's scratch when this is
/// dropped (unless the value is large: then the buffer becomes the value's own allocation),
/// and the byte strings it shares instead of holding copies, each with where it goes in the
/// buffer's bytes.
pub(crate) struct Encoded {
    buf: Vec<u8>,
    shared: Shared,
}

impl Encoded {
    /// The length of the encoded value.
    #[inline]
    fn len(&self) -> usize {
        self.buf.len()
            + self
                .shared
                .as_slice()
                .iter()
                .map(|(_, b)| b.len())
                .sum::<usize>()
    }

    /// The encoded bytes in one piece: borrowed when nothing is shared, or else copied.
    fn contiguous(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.shared.is_empty() {
            return std::borrow::Cow::Borrowed(&self.buf);
        }
        let mut all = Vec::with_capacity(self.len());
        let mut at = 0;
        for (to, piece) in self.shared.as_slice() {
            all.extend_from_slice(&self.buf[at..*to]);
            all.extend_from_slice(piece);
            at = *to;
        }
        all.extend_from_slice(&self.buf[at..]);
        std::borrow::Cow::Owned(all)
    }

    /// The bytes in an allocation of their own: small values are copied out of the scratch
    /// buffer into one of their exact size, large ones take the buffer itself (values in
    /// pieces are put together).
    fn into_bytes(mut self) -> Bytes {
        if !self.shared.is_empty() {
            return Bytes::from(self.contiguous().into_owned());
        }
        if self.buf.len() <= SCRATCH_COPY_MAX {
            Bytes::copy_from_slice(&self.buf)
        } else {
            Bytes::from(std::mem::take(&mut self.buf))
        }
    }

    /// Split off the last shared string for a split frame, if it ends the value and is at
    /// least [`MIN_TAIL`](pb_proto::frame::MIN_TAIL) bytes: the buffer then ends with the
    /// tail marker in place of its length prefix (see [`pb_proto::frame`]).
    fn take_tail(&mut self) -> Option<Bytes> {
        let (at, tail) = self.shared.as_slice().last()?;
        if *at != self.buf.len() || tail.len() < pb_proto::frame::MIN_TAIL {
            return None;
        }
        // bincode wrote the string's length prefix right before it.
        let mut prefix = Vec::with_capacity(9);
        pb_proto::frame::put_string_len(&mut prefix, tail.len());
        let start = at.checked_sub(prefix.len())?;
        if self.buf.get(start..*at) != Some(&prefix[..]) {
            return None;
        }
        self.buf.truncate(start);
        self.buf.extend_from_slice(&pb_proto::frame::TAIL_MARKER);
        self.shared.pop().map(|(_, tail)| tail)
    }

    /// Queue the bytes in `out`: the buffer's bytes copied while they are small (or else
    /// queued as slices of it), the shared byte strings uncopied, in order.
    #[inline(always)]
    fn queue(self, out: &mut Outbox) {
        if self.shared.is_empty() && self.buf.len() < ZERO_COPY_MIN {
            // Copied straight from the scratch buffer, which stays the thread's.
            out.buf().extend_from_slice(&self.buf);
            return;
        }
        self.queue_pieces(out);
    }

    /// [`Encoded::queue`] for a large value, or one with shared strings.
    #[inline(never)]
    fn queue_pieces(mut self, out: &mut Outbox) {
        let shared = self.shared.take();
        if self.buf.len() <= SCRATCH_COPY_MAX {
            let mut at = 0;
            for (to, piece) in shared {
                out.buf().extend_from_slice(&self.buf[at..to]);
                out.append_payload(piece);
                at = to;
            }
            out.buf().extend_from_slice(&self.buf[at..]);
        } else {
            // Too large to copy: the buffer becomes the bytes' own allocation.
            let buf = Bytes::from(std::mem::take(&mut self.buf));
            let mut at = 0;
            for (to, piece) in shared {
                out.append_payload(buf.slice(at..to));
                out.append_payload(piece);
                at = to;
            }
            out.append_payload(buf.slice(at..));
        }
    }
}

impl Drop for Encoded {
    #[inline]
    fn drop(&mut self) {
        // A buffer that grew past the copy limit is not kept: one large value must not pin
        // its size for the thread's life.
        if self.buf.capacity() > 0 && self.buf.len() <= SCRATCH_COPY_MAX {
            let buf = std::mem::take(&mut self.buf);
            SCRATCH.with(|s| *s.borrow_mut() = buf);
        }
    }
}

/// Decode a `T` that must fill `bytes` exactly, with `refs` as its object references, under the
/// default depth limit [`DEFAULT_MAX_DEPTH`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8], refs: Vec<ObjectRef>) -> Result<T, CodecError> {
    decode_with_depth(bytes, refs, DEFAULT_MAX_DEPTH)
}

/// Decode a `T` that must fill `bytes` exactly, with `refs` as its object references, failing
/// with [`CodecError::TooDeep`] if the value nests more than `max_depth` levels.
pub fn decode_with_depth<T: DeserializeOwned>(
    bytes: &[u8],
    refs: Vec<ObjectRef>,
    max_depth: usize,
) -> Result<T, CodecError> {
    decode_seed(bytes, None, refs, max_depth, std::marker::PhantomData::<T>)
}

/// As [`decode_with_depth`], for a payload held in a `Bytes`: byte strings decoded through
/// [`zero_copy`](crate::zero_copy) are slices of `payload`, not copies.
pub fn decode_shared<T: DeserializeOwned>(
    payload: &Bytes,
    refs: Vec<ObjectRef>,
    max_depth: usize,
) -> Result<T, CodecError> {
    decode_seed(
        payload,
        Some(payload),
        refs,
        max_depth,
        std::marker::PhantomData::<T>,
    )
}

/// Decode a payload (an answer's) with a `seed`: byte strings are slices of its buffer when
/// it has one.
pub(crate) fn decode_payload_seed<S, V>(
    payload: &Payload,
    refs: Vec<ObjectRef>,
    max_depth: usize,
    seed: S,
) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    match payload.as_bytes() {
        Some(b) => decode_seed(b, Some(b), refs, max_depth, seed),
        None => decode_seed(&payload.contiguous(), None, refs, max_depth, seed),
    }
}

/// Decode a received payload with a `seed`: `bytes` (a slice of `frame`), and, if the frame
/// came split, its `tail`. The byte string the tail is goes to the value as it is (no copy)
/// when a pb byte-string path decodes it (`Bytes`, `Vec<u8>`, `Box<[u8]>`, `String`, and
/// fields marked with [`zero_copy`](crate::zero_copy)); any other decoder (serde's own for a
/// `serde_bytes::ByteBuf`, say) would read an empty string there, so the payload is then put
/// together and decoded again.
#[inline]
pub(crate) fn decode_arrived<S, V>(
    bytes: &[u8],
    frame: Option<&Bytes>,
    tail: Option<Box<Bytes>>,
    refs: Vec<ObjectRef>,
    max_depth: usize,
    seed: S,
) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V> + Clone,
{
    match tail {
        None => decode_seed(bytes, frame, refs, max_depth, seed),
        Some(tail) => decode_tailed(bytes, frame, *tail, refs, max_depth, seed),
    }
}

/// [`decode_arrived`] for a payload with a tail.
#[cold]
fn decode_tailed<S, V>(
    bytes: &[u8],
    frame: Option<&Bytes>,
    tail: Bytes,
    refs: Vec<ObjectRef>,
    max_depth: usize,
    seed: S,
) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V> + Clone,
{
    check_len(bytes)?;
    // The tail stands for the byte string whose length prefix is the marker the head ends
    // with, and for no other: a head whose other values read into the marker's bytes would
    // mean one thing split and another whole. Such a head does not decode with the marker
    // cut to a one-byte empty string (its values would need the bytes cut), while a true one
    // does, its last string empty: then, and only then, the tail goes in place. That probe
    // also says whether the last string is read by a decoder that takes tails: if not, the
    // frame is read whole at once, so that no decode whose value is thrown away (and whose
    // decoding may have done something: a replica attaching its state) comes first.
    if !decodes_as_marked(bytes, frame, &refs, max_depth, seed.clone()) {
        tracing::debug!("a split frame whose tail cannot go in place: read whole");
        let whole = pb_proto::frame::join_tail(bytes, &tail);
        return decode_seed(&whole, Some(&whole), refs, max_depth, seed);
    }
    let end = bytes.as_ptr() as usize + bytes.len();
    let scope = Scope::enter(
        &DECODING,
        Context {
            refs,
            peer: None,
            frame: frame.cloned(),
            tail: Some((tail, end)),
            probe: false,
        },
    );
    let value = decode_here(bytes, max_depth, seed.clone());
    let cx = scope.finish();
    match cx.tail {
        None => value,
        Some((tail, _)) => {
            let whole = pb_proto::frame::join_tail(bytes, &tail);
            drop(value);
            decode_seed(&whole, Some(&whole), cx.refs, max_depth, seed)
        }
    }
}

/// Whether `head`, a split frame's payload head (ending with the tail marker), decodes whole
/// with the marker replaced by a one-byte empty string, its last string read by a decoder that
/// takes the tail: what its values read up to the marker is then what they read in the frame
/// joined, and the tail goes in place of that last string. Decoded as a probe (`probing`):
/// values whose decoding does something leave it out.
#[cold]
fn decodes_as_marked<S, V>(
    head: &[u8],
    frame: Option<&Bytes>,
    refs: &[ObjectRef],
    max_depth: usize,
    seed: S,
) -> bool
where
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    let Some(before) = head.strip_suffix(&pb_proto::frame::TAIL_MARKER[..]) else {
        return false;
    };
    let mut probe = Vec::with_capacity(before.len() + 1);
    probe.extend_from_slice(before);
    probe.push(0);
    // A stand-in tail where the probe ends: taken if the last string's decoder takes tails.
    let end = probe.as_ptr() as usize + probe.len();
    let scope = Scope::enter(
        &DECODING,
        Context {
            refs: refs.to_vec(),
            peer: None,
            frame: frame.cloned(),
            tail: Some((Bytes::new(), end)),
            probe: true,
        },
    );
    let decoded = decode_here(&probe, max_depth, seed).is_ok();
    let cx = scope.finish();
    decoded && cx.tail.is_none()
}

/// Decode with a `seed` instead of a type (generated code decodes `Bytes` arguments this way).
pub(crate) fn decode_seed<S, V>(
    bytes: &[u8],
    frame: Option<&Bytes>,
    refs: Vec<ObjectRef>,
    max_depth: usize,
    seed: S,
) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    check_len(bytes)?;
    // A context is needed only when the value can ask it something: a reference to resolve,
    // or a byte string to share (at least `SHARE_MIN` bytes). Without one, both answer as an
    // empty context would, unless this decode runs inside another, whose context it must hide.
    let needed = !refs.is_empty()
        || (frame.is_some() && bytes.len() >= SHARE_MIN)
        || DECODING.with(|s| !s.borrow().is_empty());
    let _scope = needed.then(|| {
        // A decode inside a probe is part of it.
        let probe = probing();
        Scope::enter(
            &DECODING,
            Context {
                refs,
                peer: None,
                frame: frame.cloned(),
                tail: None,
                probe,
            },
        )
    });
    decode_here(bytes, max_depth, seed)
}

/// Refuse a payload longer than any frame.
#[inline]
fn check_len(bytes: &[u8]) -> Result<(), CodecError> {
    if bytes.len() > MAX_FRAME_LEN_CEILING {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN_CEILING,
        });
    }
    Ok(())
}

/// Decode `bytes` with `seed` in whatever context is entered, under the depth limit and a byte
/// limit tiered by the payload's length.
#[inline(always)]
fn decode_here<S, V>(bytes: &[u8], max_depth: usize, seed: S) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    let depth = depth::Depth::new(max_depth);
    let seed = depth::Seed {
        seed,
        depth: &depth,
    };
    let claim = bytes.len().saturating_mul(CLAIM_FACTOR);
    let result = if claim <= 64 * 1024 {
        bincode::serde::seed_decode_from_slice(seed, bytes, limited!(64 * 1024))
    } else if claim <= 1024 * 1024 {
        bincode::serde::seed_decode_from_slice(seed, bytes, limited!(1024 * 1024))
    } else if claim <= 16 * 1024 * 1024 {
        bincode::serde::seed_decode_from_slice(seed, bytes, limited!(16 * 1024 * 1024))
    } else {
        bincode::serde::seed_decode_from_slice(
            seed,
            bytes,
            limited!(CLAIM_FACTOR * MAX_FRAME_LEN_CEILING),
        )
    };
    let (value, used) = match result {
        Ok(v) => v,
        Err(_) if depth.exceeded() => return Err(CodecError::TooDeep { max: max_depth }),
        Err(e) => return Err(CodecError::Decode(e.to_string())),
    };
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// An encoded value on its way out: the arguments of a call, or a method's answer
/// ([`Outcome::payload`](crate::Outcome)).
///
/// Either bytes of their own (`Payload::from(bytes)`), or a value pb encoded: in a buffer its
/// thread reuses, with the large byte strings it holds as `Bytes` (at least 4 KiB) kept as
/// references to those `Bytes` rather than copied (see [`zero_copy`](crate::zero_copy)). The
/// connection queues such a value in pieces, and the byte strings go to the socket from the
/// memory they were in.
pub struct Payload(Repr);

enum Repr {
    /// Bytes of their own (`ObjectRef::call_raw`, forwarded calls, received answers).
    Bytes(Bytes),
    /// In a scratch buffer, copied into the output (or, if large, queued as their own chunk),
    /// with its shared byte strings.
    Encoded(Encoded),
    /// Jelly for a Twisted PB peer, with the sends of our objects it counted, which stand
    /// only once it is sent.
    Jelly(Bytes, twisted::PendingSends),
}

impl Payload {
    /// A value pb encoded.
    pub(crate) fn encoded(e: Encoded) -> Payload {
        Payload(Repr::Encoded(e))
    }

    /// Jelly for a Twisted PB peer, with the sends it counted (see
    /// [`twisted::PendingSends`]).
    pub(crate) fn jelly(bytes: Bytes, sends: twisted::PendingSends) -> Payload {
        Payload(Repr::Jelly(bytes, sends))
    }

    /// A Twisted payload about to be queued: a Cacheable's state that a message already
    /// queued carried (`queued(luid)`) is taken out again, the payload re-encoded with
    /// `encode` (see [`twisted::PendingSends::settle`]).
    pub(crate) fn settle(
        &mut self,
        queued: impl Fn(i64) -> bool,
        encode: impl FnOnce(&pb_proto::jelly::Graph) -> Result<Bytes, CodecError>,
    ) {
        if let Repr::Jelly(bytes, sends) = &mut self.0
            && let Some(settled) = sends.settle(queued, encode)
        {
            *bytes = settled;
        }
    }

    /// The payload is queued for the peer: the sends of our objects it counted stand;
    /// `state(luid, version)` is told of each Cacheable whose state it carries.
    pub(crate) fn sent(&mut self, state: impl FnMut(i64, u64)) {
        if let Repr::Jelly(_, sends) = &mut self.0 {
            sends.sent(state);
        }
    }

    /// The length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Bytes(b) | Repr::Jelly(b, _) => b.len(),
            Repr::Encoded(e) => e.len(),
        }
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in one buffer: the payload's own when it has one, or else a copy (of a small
    /// value, or of one in pieces).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Bytes(b) | Repr::Jelly(b, _) => b.clone(),
            Repr::Encoded(e) => Bytes::copy_from_slice(&e.contiguous()),
        }
    }

    /// The bytes in one buffer, taking the value's own buffer where it can (see
    /// [`Payload::to_bytes`]).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            // Sends not marked sent are taken back as the payload goes.
            Repr::Bytes(b) | Repr::Jelly(b, _) => b,
            Repr::Encoded(e) => e.into_bytes(),
        }
    }

    /// The bytes in one piece, borrowed when they are.
    pub(crate) fn contiguous(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.0 {
            Repr::Bytes(b) | Repr::Jelly(b, _) => std::borrow::Cow::Borrowed(b),
            Repr::Encoded(e) => e.contiguous(),
        }
    }

    /// The payload's own buffer, when it has one (a received answer's).
    pub(crate) fn as_bytes(&self) -> Option<&Bytes> {
        match &self.0 {
            Repr::Bytes(b) | Repr::Jelly(b, _) => Some(b),
            Repr::Encoded(_) => None,
        }
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Payload {
        Payload(Repr::Bytes(bytes))
    }
}

impl Clone for Payload {
    /// A payload in a scratch buffer is cloned into bytes of its own.
    fn clone(&self) -> Payload {
        Payload(Repr::Bytes(self.to_bytes()))
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Bytes(b) | Repr::Jelly(b, _) => f.debug_tuple("Payload").field(b).finish(),
            Repr::Encoded(e) => f
                .debug_struct("Payload")
                .field("len", &e.len())
                .field("shared", &e.shared.as_slice().len())
                .finish(),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.contiguous() == other.contiguous()
    }
}

impl Eq for Payload {}

impl pb_proto::broker::Payload for Payload {
    #[inline]
    fn len(&self) -> usize {
        Payload::len(self)
    }

    fn take_tail(&mut self) -> Option<Bytes> {
        match &mut self.0 {
            Repr::Bytes(_) | Repr::Jelly(..) => None,
            Repr::Encoded(e) => e.take_tail(),
        }
    }

    #[inline(always)]
    fn queue(self, out: &mut Outbox) {
        match self.0 {
            Repr::Bytes(b) | Repr::Jelly(b, _) => out.append_payload(b),
            Repr::Encoded(e) => e.queue(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value with byte strings offered as shared (`pb::zero_copy` fields) among others.
    #[derive(serde::Serialize)]
    struct Mixed {
        head: u32,
        #[serde(with = "crate::zero_copy")]
        a: Bytes,
        middle: Vec<u8>,
        #[serde(with = "crate::zero_copy")]
        b: Bytes,
        tail: String,
    }

    fn mixed(a: usize, middle: usize, b: usize) -> Mixed {
        Mixed {
            head: 7,
            a: Bytes::from(vec![1u8; a]),
            middle: vec![2u8; middle],
            b: Bytes::from(vec![3u8; b]),
            tail: "end".into(),
        }
    }

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn shared_byte_strings_are_queued_uncopied_with_the_same_bytes_as_a_copy() {
        // Small, large, and a buffer itself too large to copy between the shared strings.
        for (a, middle, b) in [
            (5000, 10, 8000),
            (100, 10, 100),
            (SHARE_MIN, 0, SHARE_MIN - 1),
            (9000, SCRATCH_COPY_MAX + 100, 5000),
        ] {
            let value = mixed(a, middle, b);
            let whole = encode(&value, None).unwrap().0;
            let (encoded, refs) = encode_scratch(&value, None).unwrap();
            assert!(refs.is_empty());
            let shared = usize::from(a >= SHARE_MIN) + usize::from(b >= SHARE_MIN);
            assert_eq!(encoded.shared.as_slice().len(), shared, "{a} {middle} {b}");
            let payload = Payload::encoded(encoded);
            assert_eq!(payload.len(), whole.len());
            assert_eq!(&payload.contiguous()[..], &whole[..]);
            assert_eq!(payload.to_bytes(), whole);
            assert_eq!(payload.clone().into_bytes(), whole);
            let mut out = Outbox::new();
            pb_proto::broker::Payload::queue(payload, &mut out);
            let parts = out.take_all();
            assert_eq!(concat(&parts), &whole[..], "{a} {middle} {b}");
            for (s, len) in [(&value.a, a), (&value.b, b)] {
                let uncopied = parts.iter().any(|p| p.as_ptr() == s.as_ptr());
                assert_eq!(uncopied, len >= SHARE_MIN, "{a} {middle} {b}");
            }
        }
    }

    #[test]
    fn a_call_read_by_decode_args_keeps_its_tail_and_one_decoded_by_seed_gives_it_up() {
        use crate::object::{Caller, IncomingCall};
        use crate::zero_copy::{TupleSeed, VecBytes};
        let head = [&[7u8][..], &pb_proto::frame::TAIL_MARKER].concat();
        let mut call = IncomingCall::new("f", Bytes::from(head), Vec::new(), Caller::local());
        call.tail = Some(Box::new(Bytes::from_static(&[1, 2, 3])));
        let read: (u8, Vec<u8>) = call.decode_args().unwrap();
        assert_eq!(read, (7, vec![1, 2, 3]));
        let seed = TupleSeed((std::marker::PhantomData::<u8>, VecBytes));
        assert_eq!(call.decode_args_seed(seed).unwrap(), read);
        // The tail went with that value: a decode after it fails, rather than reading the
        // marker as an empty string.
        let again = call.decode_args_seed(seed).unwrap_err();
        assert!(
            again.message.contains("taken by an earlier decode"),
            "{again:?}"
        );
        assert!(call.decode_args::<(u8, Vec<u8>)>().is_err());
    }

    #[test]
    fn a_tail_is_the_value_of_the_string_it_stands_for_and_checked() {
        use crate::zero_copy::{StringSeed, TupleSeed, VecBytes};
        let head = [&[7u8][..], &pb_proto::frame::TAIL_MARKER].concat();
        let frame = Bytes::from(head);
        let decode_vec = |tail: &Bytes| {
            decode_arrived(
                &frame,
                Some(&frame),
                Some(Box::new(tail.clone())),
                Vec::new(),
                DEFAULT_MAX_DEPTH,
                TupleSeed((std::marker::PhantomData::<u8>, VecBytes)),
            )
        };
        let tail = Bytes::from(vec![1u8, 2, 3]);
        assert_eq!(decode_vec(&tail).unwrap(), (7, vec![1, 2, 3]));
        let text = Bytes::from("añb".to_string());
        let decode_str = |tail: Bytes| {
            decode_arrived(
                &frame,
                Some(&frame),
                Some(Box::new(tail)),
                Vec::new(),
                DEFAULT_MAX_DEPTH,
                TupleSeed((std::marker::PhantomData::<u8>, StringSeed)),
            )
        };
        assert_eq!(decode_str(text).unwrap(), (7, "añb".to_string()));
        // A tail that is not UTF-8 where a string is due is an error, not a panic.
        assert!(decode_str(Bytes::from_static(&[0xff, 0xfe])).is_err());
        // Decoded by serde's own `String`, which sees an empty string: put together again.
        let whole: Result<(u8, String), _> = decode_arrived(
            &frame,
            Some(&frame),
            Some(Box::new(Bytes::from("xyz"))),
            Vec::new(),
            DEFAULT_MAX_DEPTH,
            std::marker::PhantomData,
        );
        assert_eq!(whole.unwrap(), (7, "xyz".to_string()));
    }

    #[test]
    fn a_payload_in_pieces_compares_prints_and_splits_as_its_bytes() {
        let value = mixed(70_000, 3, 80_000);
        let whole = encode(&value, None).unwrap().0;
        let pieces = Payload::encoded(encode_scratch(&value, None).unwrap().0);
        let own = Payload::from(whole.clone());
        assert_eq!(pieces, own);
        assert!(!pieces.is_empty() && Payload::from(Bytes::new()).is_empty());
        assert_eq!(pieces.to_bytes(), whole);
        assert!(format!("{pieces:?}").contains("shared: 2"));
        assert!(format!("{own:?}").starts_with("Payload("));
        // A value whose last shared string does not end it has no tail; bytes of their own
        // never do.
        let mut p = Payload::encoded(encode_scratch(&value, None).unwrap().0);
        assert!(pb_proto::broker::Payload::take_tail(&mut p).is_none());
        let mut own = own;
        assert!(pb_proto::broker::Payload::take_tail(&mut own).is_none());
        // One that does: its bytes end with the marker, and put back together they are the
        // whole value.
        let last = (7u32, Bytes::from(vec![5u8; 70_000]));
        #[derive(serde::Serialize)]
        struct Last(u32, #[serde(with = "crate::zero_copy")] Bytes);
        let l = Last(last.0, last.1.clone());
        let whole = encode(&l, None).unwrap().0;
        let mut p = Payload::encoded(encode_scratch(&l, None).unwrap().0);
        let tail = pb_proto::broker::Payload::take_tail(&mut p).unwrap();
        assert_eq!(tail.as_ptr(), last.1.as_ptr());
        let head = p.to_bytes();
        assert!(head.ends_with(&pb_proto::frame::TAIL_MARKER));
        assert_eq!(pb_proto::frame::join_tail(&head, &tail), whole);
    }

    #[test]
    fn an_offer_outside_a_payload_encode_is_copied_and_withdrawn() {
        let value = mixed(5000, 0, 5000);
        // Another encoder (bincode's own writer) copies, and leaves no offer behind.
        let copied = bincode::serde::encode_to_vec(&value, bincode::config::standard()).unwrap();
        assert_eq!(copied, &encode(&value, None).unwrap().0[..]);
        assert!(OFFER.with(Cell::take).is_none());
        // A large string written that is not the one offered is copied, and the offer stays
        // for the string it was made for.
        #[derive(serde::Serialize)]
        struct Plain(#[serde(with = "crate::zero_copy::vec")] Vec<u8>);
        let other = Bytes::from(vec![9u8; 5000]);
        let (encoded, _) = offer_shared(&other, || {
            let first = encode_scratch(&Plain(vec![8u8; 5000]), None);
            assert!(OFFER.with(|o| {
                let offer = o.take();
                let kept = offer.as_ref().is_some_and(|b| b.as_ptr() == other.as_ptr());
                o.set(offer);
                kept
            }));
            first
        })
        .unwrap();
        assert!(encoded.shared.is_empty());
        assert_eq!(encoded.buf.len(), 5003);
        assert!(OFFER.with(Cell::take).is_none());
    }

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

    /// Serializes 64 KiB, then fails.
    struct FailsLate;

    impl Serialize for FailsLate {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeTuple};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&vec![7u8; 64 * 1024])?;
            t.end()?;
            Err(S::Error::custom("fails after writing"))
        }
    }

    #[test]
    fn a_large_value_that_fails_to_encode_leaves_no_large_chunk_behind() {
        assert!(encode(&FailsLate, None).is_err());
        let kept = CHUNK.with(Cell::take).map_or(0, |b| b.capacity());
        assert!(kept <= 2 * SCRATCH_CHUNK, "the thread keeps {kept} bytes");
        // Encoding still works afterwards.
        let (b, _) = encode(&5u32, None).unwrap();
        assert_eq!(decode::<u32>(&b, vec![]).unwrap(), 5);
    }

    #[test]
    fn many_small_integers_fit_the_limit_tier() {
        // Regression: 10 000 one-byte varints claim 40 000-160 000 bytes in bincode's books,
        // more than the 64 KiB tier that a 10 KB payload used to get.
        let v: Vec<u32> = (0..10_000).map(|i| i % 100).collect();
        let (b, _) = encode(&v, None).unwrap();
        assert!(b.len() < 16 * 1024);
        assert_eq!(decode::<Vec<u32>>(&b, vec![]).unwrap(), v);
        let w: Vec<u128> = vec![1; 30_000];
        let (b, _) = encode(&w, None).unwrap();
        assert_eq!(decode::<Vec<u128>>(&b, vec![]).unwrap(), w);
    }

    struct Nothing;

    static NOTHING: crate::object::Interface = crate::object::Interface {
        name: "Nothing",
        methods: &[],
    };

    impl crate::object::Dispatch for Nothing {
        fn interface(&self) -> &'static crate::object::Interface {
            &NOTHING
        }
        fn dispatch(
            self: std::sync::Arc<Self>,
            call: crate::object::IncomingCall,
        ) -> crate::object::BoxFuture<crate::object::Reply> {
            Box::pin(std::future::ready(call.no_such_method(&NOTHING)))
        }
    }

    /// Decodes, while being decoded, a reference from bytes of its own that come with none.
    struct Nested(Result<ObjectRef, CodecError>);

    impl<'de> serde::Deserialize<'de> for Nested {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let inner = <Vec<u8> as serde::Deserialize>::deserialize(d)?;
            Ok(Nested(decode::<ObjectRef>(&inner, vec![])))
        }
    }

    #[test]
    fn a_nested_decode_does_not_see_the_outer_references() {
        let (inner, _) = encode(&0u32, None).unwrap();
        let (outer, _) = encode(&(0u32, inner.to_vec()), None).unwrap();
        let (first, nested): (ObjectRef, Nested) =
            decode(&outer, vec![ObjectRef::local(Nothing)]).unwrap();
        assert!(first.is_local());
        assert!(matches!(nested.0, Err(CodecError::Decode(_))));
    }

    #[test]
    // Written as generated code writes it: the borrow is what picks the path.
    #[allow(clippy::needless_borrow)]
    fn generated_code_picks_the_plain_path_for_plain_types_only() {
        use crate::zero_copy::{Wire, WireAny as _, WirePlain as _};
        assert!((&Wire::<u64>::new()).plain());
        assert!((&Wire::<()>::new()).plain());
        assert!((&Wire::<Option<Vec<(String, Bytes)>>>::new()).plain());
        assert!(!(&Wire::<ObjectRef>::new()).plain());
        assert!(!(&Wire::<Vec<ObjectRef>>::new()).plain());
        assert!(!(&Wire::<(u8, Option<ObjectRef>)>::new()).plain());
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Value {
        Leaf,
        Node(Box<Value>),
        List(Vec<Value>),
        Maybe(Option<Box<Value>>),
    }

    fn nested(levels: usize) -> Vec<u8> {
        // bincode: variant index as a varint; Node = 1, Leaf = 0.
        let mut b = vec![1u8; levels];
        b.push(0);
        b
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // 30 000 levels would overflow any thread's stack without the limit.
        let hostile = nested(30_000);
        assert_eq!(
            decode::<Value>(&hostile, vec![]),
            Err(CodecError::TooDeep {
                max: DEFAULT_MAX_DEPTH
            })
        );
        assert!(
            CodecError::TooDeep { max: 7 }
                .to_string()
                .contains("max_depth = 7")
        );
    }

    #[test]
    fn depth_up_to_the_limit_decodes_and_siblings_do_not_add_up() {
        // `levels` Node tags and a Leaf: levels + 1 enum levels.
        let ok = nested(DEFAULT_MAX_DEPTH - 1);
        assert!(decode::<Value>(&ok, vec![]).is_ok());
        let over = nested(DEFAULT_MAX_DEPTH);
        assert_eq!(
            decode::<Value>(&over, vec![]),
            Err(CodecError::TooDeep {
                max: DEFAULT_MAX_DEPTH
            })
        );
        // A wide list of shallow values is shallow.
        let wide = Value::List(
            (0..10_000)
                .map(|_| Value::Node(Box::new(Value::Leaf)))
                .collect(),
        );
        let (b, _) = encode(&wide, None).unwrap();
        assert_eq!(decode::<Value>(&b, vec![]).unwrap(), wide);
        // Options, sequences and maps count too.
        let (b, _) = encode(&Value::Maybe(Some(Box::new(Value::Maybe(None)))), None).unwrap();
        assert!(decode_with_depth::<Value>(&b, vec![], 3).is_ok());
        assert_eq!(
            decode_with_depth::<Value>(&b, vec![], 2),
            Err(CodecError::TooDeep { max: 2 })
        );
        let (b, _) = encode(
            &vec![vec![std::collections::BTreeMap::from([(1u8, 2u8)])]],
            None,
        )
        .unwrap();
        assert!(
            decode_with_depth::<Vec<Vec<std::collections::BTreeMap<u8, u8>>>>(&b, vec![], 3)
                .is_ok()
        );
        assert_eq!(
            decode_with_depth::<Vec<Vec<std::collections::BTreeMap<u8, u8>>>>(&b, vec![], 2),
            Err(CodecError::TooDeep { max: 2 })
        );
    }

    #[test]
    fn the_limit_holds_on_a_small_stack() {
        // A 256 KiB thread decodes the hostile input without overflowing.
        let hostile = nested(30_000);
        let r = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || decode::<Value>(&hostile, vec![]))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            r,
            Err(CodecError::TooDeep {
                max: DEFAULT_MAX_DEPTH
            })
        );
    }
}
