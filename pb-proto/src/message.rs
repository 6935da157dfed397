//! The messages carried in frame bodies after the handshake.
//!
//! The envelope is encoded by hand (a tag byte, LEB128 integers, length-prefixed strings) so
//! that a call's payload stays a zero-copy slice of the received frame; only payloads are serde
//! values, encoded by pb-core's payload codec.
//!
//! ```text
//! Call     01 flags id target [deadline-ms] [signature] [trace] method-len method refs payload...
//! Answer   02 id outcome refs payload...          outcome: 0 = Ok, 1 = the callee's typed Err
//! Fault    03 id kind message-len message
//! Release  04 count (object delta)*count
//! Cancel   05 id
//! Goodbye  06                                     the sender accepts no new calls
//! Update   07 object payload...                   a new version of a cache the sender owns
//! Revoked  08 object                              the sender's object is gone (it forwarded to
//!                                                 a peer that is no longer reachable)
//! Ping     09 nonce                               keep-alive: the receiver answers a Pong
//! Pong     0a nonce                               the answer to the Ping with that nonce
//! Limits   0b max-frame-len max-refs max-release  the sender's receive limits changed (sent
//!                                                 only to a peer whose hello carried limits)
//! refs  := count (kind id)*count                  kind: 0 = sender's object, 1 = receiver's own
//! signature := params-fingerprint:u32 result-fingerprint:u32 (big-endian; flag 4)
//! trace := trace-id:16 parent-id:8 trace-flags:1   (W3C traceparent, version 00; flag 8)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::HEADER_LEN;
use crate::handshake::ReceiveLimits;

mod extras;
pub use extras::{CallExtras, Signature, TraceParent};
use extras::{SIGNATURE_LEN, TRACE_LEN};

/// Call flag: the caller wants an answer.
const FLAG_ANSWER: u8 = 1;

/// Call flag: a deadline (milliseconds from receipt) follows the target.
const FLAG_DEADLINE: u8 = 2;

/// Call flag: the caller's signature of the method follows (after the deadline).
const FLAG_SIGNATURE: u8 = 4;

/// Call flag: the caller's trace context follows (after the signature).
const FLAG_TRACE: u8 = 8;

/// The longest method name accepted.
pub const MAX_METHOD_LEN: usize = 255;

/// The longest fault message kept; longer ones are truncated by the sender.
pub const MAX_FAULT_MESSAGE_LEN: usize = 1024;

/// A reference to an object as it crosses the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefDesc {
    /// An object that the sender exports under this id.
    Sender(u64),
    /// An object of the receiver's own, that the receiver exported under this id (or its root, 0).
    Receiver(u64),
}

/// Why a call failed, when the failure is the system's and not the callee's typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// No object with the target id is exported to the caller.
    NoSuchObject,
    /// The object has no method of that name.
    NoSuchMethod,
    /// The callee could not decode the arguments.
    BadArguments,
    /// The callee could not encode its answer.
    BadAnswer,
    /// A limit was exceeded on the callee's side.
    LimitExceeded,
    /// The callee's handler panicked or failed internally.
    Internal,
    /// The callee is shutting down and takes no new calls.
    ShuttingDown,
    /// The callee refused the call (for example before login).
    Refused,
    /// The call's deadline passed before it was answered.
    DeadlineExceeded,
    /// The connection was lost before the answer came (reported locally; a peer never needs
    /// to send it).
    Disconnected,
    /// The connection ended because the peer's hello was refused (a version mismatch, or a
    /// peer that does not speak pb): reported locally, on a dialed connection that sent its
    /// calls before the peer's hello arrived.
    Handshake,
    /// The caller cancelled the call: the callee's last word on it, which closes the call's
    /// place in the caller's call window (sent only to a peer whose hello carried a window;
    /// the caller no longer waits, so no user ever sees it).
    Cancelled,
    /// A kind this build does not know.
    Unknown(u8),
}

impl FaultKind {
    #[inline]
    fn to_u8(self) -> u8 {
        match self {
            FaultKind::NoSuchObject => 1,
            FaultKind::NoSuchMethod => 2,
            FaultKind::BadArguments => 3,
            FaultKind::BadAnswer => 4,
            FaultKind::LimitExceeded => 5,
            FaultKind::Internal => 6,
            FaultKind::ShuttingDown => 7,
            FaultKind::Refused => 8,
            FaultKind::Disconnected => 9,
            FaultKind::DeadlineExceeded => 10,
            FaultKind::Handshake => 11,
            FaultKind::Cancelled => 12,
            FaultKind::Unknown(k) => k,
        }
    }

    #[inline]
    fn from_u8(k: u8) -> FaultKind {
        match k {
            1 => FaultKind::NoSuchObject,
            2 => FaultKind::NoSuchMethod,
            3 => FaultKind::BadArguments,
            4 => FaultKind::BadAnswer,
            5 => FaultKind::LimitExceeded,
            6 => FaultKind::Internal,
            7 => FaultKind::ShuttingDown,
            8 => FaultKind::Refused,
            9 => FaultKind::Disconnected,
            10 => FaultKind::DeadlineExceeded,
            11 => FaultKind::Handshake,
            12 => FaultKind::Cancelled,
            k => FaultKind::Unknown(k),
        }
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Invoke `method` on the receiver's object `target`.
    Call {
        /// The caller's request id (unique among the caller's pending calls).
        id: u64,
        /// The receiver's object id; 0 is its root.
        target: u64,
        /// The method name (UTF-8, at most [`MAX_METHOD_LEN`] bytes).
        method: Bytes,
        /// Whether an answer is wanted.
        answer: bool,
        /// How long the caller will wait, in milliseconds from when the call is received.
        deadline_ms: Option<u64>,
        /// The caller's signature of the method and its trace context, if it sent them.
        extras: CallExtras,
        /// Object references the payload points into, by index.
        refs: Vec<RefDesc>,
        /// The encoded arguments.
        payload: Bytes,
    },
    /// The result of a call: the callee's `Ok` or its typed `Err`.
    Answer {
        /// The request id of the call.
        id: u64,
        /// `true` for `Ok`, `false` for the callee's own typed error.
        ok: bool,
        /// Object references the payload points into.
        refs: Vec<RefDesc>,
        /// The encoded value.
        payload: Bytes,
    },
    /// The call failed in the system rather than in the callee.
    Fault {
        /// The request id of the call.
        id: u64,
        /// What went wrong.
        kind: FaultKind,
        /// A human-readable reason (no tracebacks).
        message: String,
    },
    /// The sender dropped references it had received: decrement each object's count.
    Release(Vec<(u64, u64)>),
    /// The caller no longer wants the answer to call `id`.
    Cancel {
        /// The request id of the call.
        id: u64,
    },
    /// The sender is closing gracefully and accepts no new calls.
    Goodbye,
    /// The sender withdrew the object it exported under `object`: it was a forward to a peer
    /// that can no longer be reached. The receiver's references to it are dead, and it sends
    /// no release for them.
    Revoked {
        /// The sender's export id.
        object: u64,
    },
    /// An update to a cache the sender exported to the receiver under `object`.
    Update {
        /// The sender's export id of the cache.
        object: u64,
        /// The encoded update.
        payload: Bytes,
    },
    /// A keep-alive probe: the receiver answers with a [`Message::Pong`] of the same nonce.
    Ping {
        /// Chosen by the sender.
        nonce: u64,
    },
    /// The answer to a [`Message::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The sender's receive limits changed (for example after login): from now on the receiver
    /// holds what it sends to these. Sent only to a peer whose hello carried limits
    /// ([`crate::handshake::Features::LIMITS`]), which is how the receiver learnt them first;
    /// the call window rides at the end, to a peer whose hello carried one.
    Limits(ReceiveLimits),
    /// Calls of the receiver's that got no answer (they wanted none, or were refused as such)
    /// have ended at the sender: their bytes leave the sender's call window
    /// ([`crate::handshake::Features::WINDOW`]). Sent only to a peer whose hello carried a
    /// window.
    Credit {
        /// The frame bodies' bytes.
        bytes: u64,
    },
}

/// A message body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The body ended in the middle of a field.
    #[error("message truncated")]
    Truncated,
    /// The first byte is not a known message tag.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// An integer did not fit in 64 bits.
    #[error("integer overflow in message")]
    IntegerOverflow,
    /// A string field was not UTF-8.
    #[error("invalid UTF-8 in a message field")]
    InvalidUtf8,
    /// A field exceeds its limit.
    #[error("{field} of {len} exceeds the limit {limit} = {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The name of the limit's setting.
        limit: &'static str,
        /// Its announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A reference descriptor kind is unknown.
    #[error("unknown reference kind {0}")]
    UnknownRefKind(u8),
    /// Bytes were left after a message that has no payload.
    #[error("trailing bytes after message")]
    Trailing,
}

/// Limits applied while decoding message envelopes.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// The most object references one message may carry.
    pub max_refs_per_message: usize,
    /// The most entries one release message may carry.
    pub max_release_entries: usize,
}

impl Default for MessageLimits {
    #[inline]
    fn default() -> Self {
        MessageLimits {
            max_refs_per_message: 1024,
            max_release_entries: 4096,
        }
    }
}

const TAG_CALL: u8 = 1;
const TAG_ANSWER: u8 = 2;
const TAG_FAULT: u8 = 3;
const TAG_RELEASE: u8 = 4;
const TAG_CANCEL: u8 = 5;
const TAG_GOODBYE: u8 = 6;
const TAG_UPDATE: u8 = 7;
const TAG_REVOKED: u8 = 8;
const TAG_PING: u8 = 9;
const TAG_PONG: u8 = 10;
const TAG_LIMITS: u8 = 11;
const TAG_CREDIT: u8 = 12;

/// Whether the frame body `body` may be handled ahead of frames received before it that are
/// held back while output to the peer is congested: answers, faults, cache updates,
/// revocations, pongs, limits and credits queue nothing for the peer (but calls of ours that
/// waited for room in its call window). (Limits must not fall behind the answers that follow
/// them: the answer to a login may be what the raised limits are for.) A revocation or update
/// does depend on the held calls that send its object, and waits behind those
/// (`Broker::must_follow_held`). Everything else (calls, releases, cancels, goodbyes, pings and
/// anything unknown) keeps its place in line.
#[inline]
pub fn may_overtake(body: &[u8]) -> bool {
    matches!(
        body.first(),
        Some(
            &(TAG_ANSWER
                | TAG_FAULT
                | TAG_UPDATE
                | TAG_REVOKED
                | TAG_PONG
                | TAG_LIMITS
                | TAG_CREDIT)
        )
    )
}

/// The object of the peer's that frame body `body` revokes or updates, if it is a revocation or
/// a cache update.
#[inline]
pub fn object_of(body: &[u8]) -> Option<u64> {
    match body.split_first() {
        Some((&(TAG_REVOKED | TAG_UPDATE), mut rest)) => get_varint(&mut rest).ok(),
        _ => None,
    }
}

/// Whether the frame body `body` answers one of our calls (an answer or a fault): handling it
/// queues nothing for the peer and starts no call.
#[inline]
pub fn is_answer(body: &[u8]) -> bool {
    matches!(body.first(), Some(&(TAG_ANSWER | TAG_FAULT)))
}

/// Whether the frame body `body` is a call.
#[inline]
pub fn is_call(body: &[u8]) -> bool {
    body.first() == Some(&TAG_CALL)
}

/// The request id of the call that frame body `body` is, if it is a call.
#[inline]
pub fn call_id(body: &[u8]) -> Option<u64> {
    match body {
        [TAG_CALL, _flags, rest @ ..] => get_varint(&mut &rest[..]).ok(),
        _ => None,
    }
}

/// Whether the frame body `body` is a ping (its pong depends on nothing before it).
#[inline]
pub fn is_ping(body: &[u8]) -> bool {
    body.first() == Some(&TAG_PING)
}

/// The request id of the call that frame body `body` cancels, if it is a cancel.
#[inline]
pub fn cancelled_id(body: &[u8]) -> Option<u64> {
    match body.split_first() {
        Some((&TAG_CANCEL, mut rest)) => get_varint(&mut rest).ok(),
        _ => None,
    }
}

/// Append `v` as an unsigned LEB128 integer (1 to 10 bytes).
#[inline]
pub fn put_varint(out: &mut BytesMut, mut v: u64) {
    // Gathered on the stack and appended with one copy: a `put_u8` per byte costs a capacity
    // check and a call each.
    let mut buf = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    out.put_slice(&buf[..=n]);
}

#[inline]
fn get_varint<B: Buf>(b: &mut B) -> Result<u64, MessageError> {
    // Most integers in an envelope (ids, lengths, counts) fit one byte.
    if let Some(&byte) = b.chunk().first()
        && byte < 0x80
    {
        b.advance(1);
        return Ok(u64::from(byte));
    }
    get_varint_long(b)
}

#[inline]
fn get_varint_long<B: Buf>(b: &mut B) -> Result<u64, MessageError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            return Err(MessageError::Truncated);
        }
        let byte = b.get_u8();
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(MessageError::IntegerOverflow);
        }
        v |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(MessageError::IntegerOverflow)
}

#[inline]
fn get_array<const N: usize, B: Buf>(b: &mut B) -> Result<[u8; N], MessageError> {
    if b.remaining() < N {
        return Err(MessageError::Truncated);
    }
    let mut a = [0; N];
    b.copy_to_slice(&mut a);
    Ok(a)
}

#[inline]
fn get_u8<B: Buf>(b: &mut B) -> Result<u8, MessageError> {
    if b.has_remaining() {
        Ok(b.get_u8())
    } else {
        Err(MessageError::Truncated)
    }
}

#[inline]
fn get_len<B: Buf>(
    b: &mut B,
    field: &'static str,
    limit: &'static str,
    max: usize,
) -> Result<usize, MessageError> {
    let len = get_varint(b)?;
    if len > max as u64 {
        return Err(MessageError::TooLong {
            field,
            limit,
            len,
            max: max as u64,
        });
    }
    Ok(len as usize)
}

#[inline]
fn get_bytes(b: &mut Bytes, len: usize) -> Result<Bytes, MessageError> {
    if b.remaining() < len {
        return Err(MessageError::Truncated);
    }
    Ok(b.split_to(len))
}

#[inline]
fn put_refs(out: &mut BytesMut, refs: &[RefDesc]) {
    put_varint(out, refs.len() as u64);
    for r in refs {
        match *r {
            RefDesc::Sender(id) => {
                out.put_u8(0);
                put_varint(out, id);
            }
            RefDesc::Receiver(id) => {
                out.put_u8(1);
                put_varint(out, id);
            }
        }
    }
}

#[inline]
fn get_refs<B: Buf>(b: &mut B, limits: &MessageLimits) -> Result<Vec<RefDesc>, MessageError> {
    // Most messages carry no references.
    if b.chunk().first() == Some(&0) {
        b.advance(1);
        return Ok(Vec::new());
    }
    let n = get_len(
        b,
        "reference count",
        "max_refs_per_message",
        limits.max_refs_per_message,
    )?;
    // Each descriptor takes at least two bytes, so `n` is also bounded by the input.
    if n > b.remaining() / 2 {
        return Err(MessageError::Truncated);
    }
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = get_u8(b)?;
        let id = get_varint(b)?;
        refs.push(match kind {
            0 => RefDesc::Sender(id),
            1 => RefDesc::Receiver(id),
            k => return Err(MessageError::UnknownRefKind(k)),
        });
    }
    Ok(refs)
}

/// Encode a release of `items` (object, count) as [`Message::Release`] does, from a slice.
#[inline]
pub fn encode_release(out: &mut BytesMut, items: &[(u64, u64)]) {
    out.put_u8(TAG_RELEASE);
    put_varint(out, items.len() as u64);
    for &(object, count) in items {
        put_varint(out, object);
        put_varint(out, count);
    }
}

impl Message {
    /// Append this message's body to `out` (without the frame header).
    #[inline]
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Message::Call {
                id,
                target,
                method,
                answer,
                deadline_ms,
                extras,
                refs,
                payload,
            } => {
                encode_call_head(
                    out,
                    *id,
                    *target,
                    method,
                    (*answer, *deadline_ms, extras),
                    refs,
                );
                out.put_slice(payload);
            }
            Message::Answer {
                id,
                ok,
                refs,
                payload,
            } => {
                encode_answer_head(out, *id, *ok, refs);
                out.put_slice(payload);
            }
            Message::Fault { id, kind, message } => {
                out.put_u8(TAG_FAULT);
                put_varint(out, *id);
                out.put_u8(kind.to_u8());
                let mut end = message.len().min(MAX_FAULT_MESSAGE_LEN);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                put_varint(out, end as u64);
                out.put_slice(&message.as_bytes()[..end]);
            }
            Message::Release(items) => encode_release(out, items),
            Message::Cancel { id } => {
                out.put_u8(TAG_CANCEL);
                put_varint(out, *id);
            }
            Message::Goodbye => out.put_u8(TAG_GOODBYE),
            Message::Update { object, payload } => {
                encode_update_head(out, *object);
                out.put_slice(payload);
            }
            Message::Revoked { object } => {
                out.put_u8(TAG_REVOKED);
                put_varint(out, *object);
            }
            Message::Ping { nonce } => {
                out.put_u8(TAG_PING);
                put_varint(out, *nonce);
            }
            Message::Pong { nonce } => {
                out.put_u8(TAG_PONG);
                put_varint(out, *nonce);
            }
            Message::Limits(limits) => {
                out.put_u8(TAG_LIMITS);
                put_varint(out, limits.max_frame_len as u64);
                put_varint(out, limits.max_refs_per_message as u64);
                put_varint(out, limits.max_release_entries as u64);
                if let Some(window) = limits.max_call_bytes {
                    put_varint(out, window as u64);
                }
            }
            Message::Credit { bytes } => {
                out.put_u8(TAG_CREDIT);
                put_varint(out, *bytes);
            }
        }
    }

    /// Decode a message body; the payload is a zero-copy slice of `body`.
    #[inline]
    pub fn decode(mut body: Bytes, limits: &MessageLimits) -> Result<Message, MessageError> {
        if is_call(&body) {
            let head = decode_call_head(&body, limits)?;
            return Ok(Message::Call {
                id: head.id,
                target: head.target,
                method: body.slice(head.method),
                answer: head.answer,
                deadline_ms: head.deadline_ms,
                extras: head.extras,
                refs: head.refs,
                payload: body.slice(head.payload_at..),
            });
        }
        let b = &mut body;
        // Calls were decoded above.
        let msg = match get_u8(b)? {
            TAG_ANSWER => {
                let id = get_varint(b)?;
                let ok = get_u8(b)? == 0;
                let refs = get_refs(b, limits)?;
                return Ok(Message::Answer {
                    id,
                    ok,
                    refs,
                    payload: body,
                });
            }
            TAG_FAULT => {
                let id = get_varint(b)?;
                let kind = FaultKind::from_u8(get_u8(b)?);
                let len = get_len(
                    b,
                    "fault message",
                    "MAX_FAULT_MESSAGE_LEN",
                    MAX_FAULT_MESSAGE_LEN,
                )?;
                let text = get_bytes(b, len)?;
                let message = String::from_utf8_lossy(&text).into_owned();
                Message::Fault { id, kind, message }
            }
            TAG_RELEASE => {
                let n = get_len(
                    b,
                    "release entries",
                    "max_release_entries",
                    limits.max_release_entries,
                )?;
                if n > b.remaining() / 2 {
                    return Err(MessageError::Truncated);
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push((get_varint(b)?, get_varint(b)?));
                }
                Message::Release(items)
            }
            TAG_CANCEL => Message::Cancel { id: get_varint(b)? },
            TAG_GOODBYE => Message::Goodbye,
            TAG_REVOKED => Message::Revoked {
                object: get_varint(b)?,
            },
            TAG_UPDATE => {
                let object = get_varint(b)?;
                return Ok(Message::Update {
                    object,
                    payload: body,
                });
            }
            TAG_PING => Message::Ping {
                nonce: get_varint(b)?,
            },
            TAG_PONG => Message::Pong {
                nonce: get_varint(b)?,
            },
            TAG_LIMITS => {
                // Saturated: a limit past what this machine can address is as good as none.
                let limit =
                    |b: &mut Bytes| get_varint(b).map(|v| usize::try_from(v).unwrap_or(usize::MAX));
                let (max_frame_len, max_refs_per_message, max_release_entries) =
                    (limit(b)?, limit(b)?, limit(b)?);
                // The window, from a peer that has one.
                let max_call_bytes = if b.has_remaining() {
                    Some(limit(b)?)
                } else {
                    None
                };
                Message::Limits(ReceiveLimits {
                    max_frame_len,
                    max_refs_per_message,
                    max_release_entries,
                    max_call_bytes,
                })
            }
            TAG_CREDIT => Message::Credit {
                bytes: get_varint(b)?,
            },
            tag => return Err(MessageError::UnknownTag(tag)),
        };
        if b.has_remaining() {
            return Err(MessageError::Trailing);
        }
        Ok(msg)
    }
}

/// A call's envelope, with where its method name and payload are in the body.
pub struct CallHead {
    /// The request id, in the caller's direction.
    pub id: u64,
    /// The object called (0 is the root).
    pub target: u64,
    /// Whether the caller wants an answer.
    pub answer: bool,
    /// The time left for the call, in milliseconds, if it has a deadline.
    pub deadline_ms: Option<u64>,
    /// The caller's signature of the method and its trace context, if it sent them.
    pub extras: CallExtras,
    /// Where the method name is in the body (checked as UTF-8).
    pub method: std::ops::Range<usize>,
    /// The references the payload carries, in order.
    pub refs: Vec<RefDesc>,
    /// Where the payload starts in the body.
    pub payload_at: usize,
}

/// Decode the envelope of the call whose whole body (tag included) is `body`, without slicing
/// the body: the driver keeps the body and its ranges (see [`Message::decode`] for the checks).
#[inline]
pub fn decode_call_head(body: &[u8], limits: &MessageLimits) -> Result<CallHead, MessageError> {
    let mut b = body;
    if get_u8(&mut b)? != TAG_CALL {
        return Err(MessageError::UnknownTag(body.first().copied().unwrap_or(0)));
    }
    let flags = get_u8(&mut b)?;
    let id = get_varint(&mut b)?;
    let target = get_varint(&mut b)?;
    let deadline_ms = if flags & FLAG_DEADLINE != 0 {
        Some(get_varint(&mut b)?)
    } else {
        None
    };
    let mut extras = CallExtras::default();
    if flags & FLAG_SIGNATURE != 0 {
        extras.signature = Some(Signature::from_bytes(get_array(&mut b)?));
    }
    if flags & FLAG_TRACE != 0 {
        // An invalid context (an all-zero id) is dropped, as W3C says, not refused.
        extras.trace = TraceParent::from_bytes(get_array(&mut b)?);
    }
    let len = get_len(&mut b, "method name", "MAX_METHOD_LEN", MAX_METHOD_LEN)?;
    let Some(method) = b.get(..len) else {
        return Err(MessageError::Truncated);
    };
    // Method names are nearly always ASCII: a byte loop instead of the general check.
    if !method.iter().all(|&c| c < 0x80) && std::str::from_utf8(method).is_err() {
        return Err(MessageError::InvalidUtf8);
    }
    let method_at = body.len() - b.len();
    b.advance(len);
    let refs = get_refs(&mut b, limits)?;
    Ok(CallHead {
        id,
        target,
        answer: flags & FLAG_ANSWER != 0,
        deadline_ms,
        extras,
        method: method_at..method_at + len,
        refs,
        payload_at: body.len() - b.len(),
    })
}

/// Encode a call's envelope; the payload follows it directly.
#[inline]
pub fn encode_call_head(
    out: &mut BytesMut,
    id: u64,
    target: u64,
    method: &[u8],
    flags: (bool, Option<u64>, &CallExtras),
    refs: &[RefDesc],
) {
    // The fixed fields are gathered on the stack and appended with one copy.
    let mut head = Head::<{ 48 + SIGNATURE_LEN + TRACE_LEN }>::empty();
    call_fields(&mut head, id, target, flags, method.len());
    out.put_slice(head.as_slice());
    out.put_slice(method);
    put_refs(out, refs);
}

/// Where in a call's body (from its tag) the time left of its deadline is, and how many bytes
/// it takes: after the tag and flags, the id and the target, as the call encoders write them.
/// A driver that holds an encoded call back rewrites it there with [`put_varint_padded`].
#[inline]
pub fn deadline_field(id: u64, target: u64, deadline_ms: u64) -> std::ops::Range<usize> {
    let at = 2 + varint_len(id) + varint_len(target);
    at..at + varint_len(deadline_ms)
}

/// How many bytes `v` takes as a varint ([`put_varint`]).
#[inline]
pub fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Write `v` as a varint filling all of `field` (continuation bits on every byte but the
/// last): a reader reads the same value as from [`put_varint`]. `v` must fit (`varint_len(v)`
/// at most `field`'s length); what does not is cut.
pub fn put_varint_padded(field: &mut [u8], mut v: u64) {
    let len = field.len();
    for (i, byte) in field.iter_mut().enumerate() {
        let more = if i + 1 < len { 0x80 } else { 0 };
        *byte = (v & 0x7f) as u8 | more;
        v >>= 7;
    }
}

/// The fields of a call's envelope up to the method's length.
#[inline]
fn call_fields<const N: usize>(
    head: &mut Head<N>,
    id: u64,
    target: u64,
    (answer, deadline_ms, extras): (bool, Option<u64>, &CallExtras),
    method_len: usize,
) {
    let mut flags = if answer { FLAG_ANSWER } else { 0 };
    if deadline_ms.is_some() {
        flags |= FLAG_DEADLINE;
    }
    if extras.signature.is_some() {
        flags |= FLAG_SIGNATURE;
    }
    if extras.trace.is_some() {
        flags |= FLAG_TRACE;
    }
    head.put(&[TAG_CALL, flags]);
    head.varint(id);
    head.varint(target);
    if let Some(ms) = deadline_ms {
        head.varint(ms);
    }
    if let Some(sig) = extras.signature {
        head.put(&sig.to_bytes());
    }
    if let Some(trace) = extras.trace {
        head.put(&trace.to_bytes());
    }
    head.varint(method_len as u64);
}

/// Room for a call frame's length prefix and whole envelope without references.
const CALL_HEAD_MAX: usize =
    HEADER_LEN + 2 + 4 * 10 + SIGNATURE_LEN + TRACE_LEN + MAX_METHOD_LEN + 1;

/// Encode a call frame's length prefix (for a payload of `payload_len` bytes) and envelope;
/// the payload follows it directly. Gathered on the stack and appended with one copy when the
/// call carries no references (the common case).
#[inline]
pub fn encode_call_frame_head(
    out: &mut BytesMut,
    payload_len: usize,
    id: u64,
    target: u64,
    method: &[u8],
    flags: (bool, Option<u64>, &CallExtras),
    refs: &[RefDesc],
) {
    let mut head = Head::<CALL_HEAD_MAX>::empty();
    head.put(&[0; HEADER_LEN]);
    call_fields(&mut head, id, target, flags, method.len());
    head.put(method);
    if refs.is_empty() {
        head.put(&[0]);
        head.set_frame_len(payload_len);
        out.put_slice(head.as_slice());
    } else {
        // The references' length is known once they are written: the prefix is patched then.
        let start = out.len();
        out.put_slice(head.as_slice());
        put_refs(out, refs);
        let len = (out.len() - start - HEADER_LEN + payload_len) as u32;
        if let Some(prefix) = out.get_mut(start..start + HEADER_LEN) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// Up to four varints and two bytes of an envelope (or `N` bytes), gathered before one copy
/// into the output.
struct Head<const N: usize = 48> {
    buf: [u8; N],
    len: usize,
}

impl Head {
    #[inline]
    fn new() -> Head {
        Head::empty()
    }
}

impl<const N: usize> Head<N> {
    #[inline]
    fn empty() -> Head<N> {
        Head {
            buf: [0; N],
            len: 0,
        }
    }

    /// Write, in the first four bytes, the length of a frame whose body is what follows
    /// them here and `more` bytes after.
    #[inline]
    fn set_frame_len(&mut self, more: usize) {
        let len = (self.len - HEADER_LEN + more) as u32;
        if let Some(prefix) = self.buf.get_mut(..HEADER_LEN) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    #[inline]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.put(&[(v as u8) | 0x80]);
            v >>= 7;
        }
        self.put(&[v as u8]);
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// Encode an update's envelope; the payload follows it directly.
#[inline]
pub fn encode_update_head(out: &mut BytesMut, object: u64) {
    out.put_u8(TAG_UPDATE);
    put_varint(out, object);
}

/// Encode an answer's envelope; the payload follows it directly.
#[inline]
pub fn encode_answer_head(out: &mut BytesMut, id: u64, ok: bool, refs: &[RefDesc]) {
    let mut head = Head::new();
    head.put(&[TAG_ANSWER]);
    head.varint(id);
    head.put(&[if ok { 0 } else { 1 }]);
    if refs.is_empty() {
        head.put(&[0]);
        out.put_slice(head.as_slice());
    } else {
        out.put_slice(head.as_slice());
        put_refs(out, refs);
    }
}

/// Encode the frame header and envelope of an answer without references, for a payload of
/// `payload_len` bytes that follows directly: one copy for both.
#[inline]
pub fn encode_answer_frame_head(out: &mut BytesMut, id: u64, ok: bool, payload_len: usize) {
    let mut head = Head::new();
    head.put(&[0; HEADER_LEN]);
    head.put(&[TAG_ANSWER]);
    head.varint(id);
    // The outcome, and no references.
    head.put(&[if ok { 0 } else { 1 }, 0]);
    head.set_frame_len(payload_len);
    out.put_slice(head.as_slice());
}

#[cfg(test)]
mod tests;
