//! Arguments at the box level: named values, optional ones, whole structs and `AmpList`.

use std::ops::{Deref, DerefMut};

use bytes::{Bytes, BytesMut};

use super::codec::{self, AmpBox, BoxCodecConfig, MAX_VALUE_LENGTH};
use super::value::AmpValue;

/// Why an argument could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgumentError {
    /// A required key is missing from the box.
    #[error("missing argument {name:?}")]
    Missing {
        /// The argument's wire name.
        name: String,
    },
    /// A value is not a valid encoding of its AMP type.
    #[error("invalid {amp_type} value: {reason}")]
    Invalid {
        /// The AMP type, e.g. `Integer`.
        amp_type: &'static str,
        /// What was wrong, with the offending bytes.
        reason: String,
    },
    /// An `Integer` that is valid but does not fit the Rust type.
    #[error("integer {value} does not fit in {rust_type}")]
    OutOfRange {
        /// The integer's decimal text.
        value: String,
        /// The Rust type it was meant for.
        rust_type: &'static str,
    },
    /// An encoded value (or `ListOf` element) over 65 535 bytes.
    #[error("value too long: {len} bytes (at most 65535)")]
    ValueTooLong {
        /// The encoded length.
        len: usize,
    },
    /// An argument could not be encoded or decoded.
    #[error("argument {name:?}")]
    Field {
        /// The argument's wire name.
        name: String,
        /// What went wrong with it.
        #[source]
        source: Box<ArgumentError>,
    },
}

impl ArgumentError {
    /// An [`ArgumentError::Invalid`] showing the bytes as Python would (`b'...'`).
    pub fn invalid(amp_type: &'static str, bytes: &[u8]) -> Self {
        const SHOWN: usize = 64;
        let shown = bytes.get(..SHOWN).unwrap_or(bytes);
        let mut reason = String::from("b'");
        for &c in shown {
            reason.extend(std::ascii::escape_default(c).map(char::from));
        }
        reason.push('\'');
        if bytes.len() > SHOWN {
            reason.push_str("...");
        }
        ArgumentError::Invalid { amp_type, reason }
    }

    fn in_field(self, name: &str) -> Self {
        ArgumentError::Field {
            name: name.to_string(),
            source: Box::new(self),
        }
    }
}

/// A Rust type that can be one named argument of a box: any [`AmpValue`] (required) or an
/// `Option` of one (omitted from the box when `None`, `None` when absent).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an AMP argument type",
    label = "not an AMP argument type",
    note = "AMP arguments are integers, `Bytes`, `String`, `bool`, floats, `BigInt`, `Decimal`, `DateTime`, `PathBuf`, `Vec` of those, `AmpList` of `AmpFields` structs, or `Option` of any of them"
)]
pub trait AmpArgument: Sized {
    /// Puts this argument into `out` under `name`.
    fn put(&self, name: &str, out: &mut AmpBox) -> Result<(), ArgumentError>;
    /// Takes the argument called `name` out of `from`.
    fn take(name: &str, from: &AmpBox) -> Result<Self, ArgumentError>;
}

thread_local! {
    /// A buffer to encode values into, kept between calls: the value is then copied into one
    /// allocation of its exact size (a growing `Vec`, and `Bytes::from` a `Vec` with spare room,
    /// each cost one more).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Keep at most this much of the scratch buffer between calls.
const SCRATCH_KEEP: usize = 4096;

/// Pairs up to this long (key and value) are copied into the box's own buffer; longer ones get
/// bytes of their own.
const COPY_PAIR_MAX: usize = 256;

fn put_value<T: AmpValue>(value: &T, name: &str, out: &mut AmpBox) -> Result<(), ArgumentError> {
    // Taken, not borrowed: a value holding boxes (`AmpList`) puts values while it encodes, and
    // those get an empty buffer of their own.
    let mut buf = SCRATCH.take();
    buf.clear();
    let encoded = value.encode_value(&mut buf).map_err(|e| e.in_field(name));
    let result = encoded.and_then(|()| {
        if buf.len() > MAX_VALUE_LENGTH {
            return Err(ArgumentError::ValueTooLong { len: buf.len() }.in_field(name));
        }
        let key = name.as_bytes();
        if key.len() + buf.len() <= COPY_PAIR_MAX {
            // Small (nearly all): no allocation and no reference count of its own.
            out.insert_copy(key, &buf);
        } else if buf.len() > SCRATCH_KEEP {
            // Big: hand the buffer over rather than copy it.
            let value = Bytes::from(std::mem::take(&mut buf));
            out.insert(Bytes::copy_from_slice(key), value);
        } else {
            out.insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(&buf));
        }
        Ok(())
    });
    if buf.capacity() <= SCRATCH_KEEP {
        SCRATCH.set(buf);
    }
    result
}

impl<T: AmpValue> AmpArgument for T {
    fn put(&self, name: &str, out: &mut AmpBox) -> Result<(), ArgumentError> {
        put_value(self, name, out)
    }

    fn take(name: &str, from: &AmpBox) -> Result<Self, ArgumentError> {
        let raw = from.get(name).ok_or_else(|| ArgumentError::Missing {
            name: name.to_string(),
        })?;
        T::decode_value(raw).map_err(|e| e.in_field(name))
    }
}

impl<T: AmpValue> AmpArgument for Option<T> {
    fn put(&self, name: &str, out: &mut AmpBox) -> Result<(), ArgumentError> {
        match self {
            Some(v) => put_value(v, name, out),
            None => Ok(()),
        }
    }

    fn take(name: &str, from: &AmpBox) -> Result<Self, ArgumentError> {
        match from.get(name) {
            Some(raw) => T::decode_value(raw).map(Some).map_err(|e| e.in_field(name)),
            None => Ok(None),
        }
    }
}

/// A struct whose fields are the keys of a box: command arguments, responses and `AmpList` rows.
///
/// Derive it with `#[derive(pb::AmpFields)]`; `#[derive(pb::AmpCommand)]` derives it too.
pub trait AmpFields: Sized {
    /// Puts every field into `out`.
    fn to_box(&self, out: &mut AmpBox) -> Result<(), ArgumentError>;
    /// Reads every field from `from`; keys it does not know are ignored, as Twisted does.
    fn from_box(from: &AmpBox) -> Result<Self, ArgumentError>;
}

/// No fields: an empty response.
impl AmpFields for () {
    fn to_box(&self, _out: &mut AmpBox) -> Result<(), ArgumentError> {
        Ok(())
    }

    fn from_box(_from: &AmpBox) -> Result<Self, ArgumentError> {
        Ok(())
    }
}

/// The raw box itself, for commands handled at the box level.
impl AmpFields for AmpBox {
    fn to_box(&self, out: &mut AmpBox) -> Result<(), ArgumentError> {
        for (k, v) in self {
            if k.len() + v.len() <= COPY_PAIR_MAX {
                out.insert_copy(k, v);
            } else {
                // Shared, not copied (a slice of a received frame).
                out.insert(
                    Bytes::copy_from_slice(k),
                    self.get_bytes(k).unwrap_or_default(),
                );
            }
        }
        Ok(())
    }

    fn from_box(from: &AmpBox) -> Result<Self, ArgumentError> {
        Ok(from.clone())
    }
}

/// `AmpList`: a list of rows, each encoded as a whole box, the boxes concatenated.
///
/// ```
/// use pb::amp::{AmpList, AmpValue};
///
/// #[derive(pb::AmpFields, Debug, PartialEq)]
/// struct Point { x: i64, y: pb::amp::Bytes }
///
/// let list = AmpList(vec![Point { x: 1, y: "a".into() }, Point { x: 2, y: "b".into() }]);
/// let mut wire = Vec::new();
/// list.encode_value(&mut wire).unwrap();
/// assert_eq!(wire, b"\x00\x01x\x00\x011\x00\x01y\x00\x01a\x00\x00\x00\x01x\x00\x012\x00\x01y\x00\x01b\x00\x00");
/// assert_eq!(AmpList::<Point>::decode_value(&wire).unwrap(), list);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AmpList<T>(pub Vec<T>);

impl<T> Deref for AmpList<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T> DerefMut for AmpList<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

impl<T> From<Vec<T>> for AmpList<T> {
    fn from(v: Vec<T>) -> Self {
        AmpList(v)
    }
}

impl<T: AmpFields> AmpValue for AmpList<T> {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        let mut buf = BytesMut::new();
        for row in &self.0 {
            let mut b = AmpBox::new();
            row.to_box(&mut b)?;
            if b.is_empty() {
                // A row with every (optional) field absent is an empty box: its terminator
                // alone, as Twisted writes it.
                buf.extend_from_slice(&[0, 0]);
                continue;
            }
            b.encode(&mut buf).map_err(|e| ArgumentError::Invalid {
                amp_type: "AmpList",
                reason: e.to_string(),
            })?;
        }
        out.extend_from_slice(&buf);
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        let boxes = codec::decode_all(bytes, BoxCodecConfig::default()).map_err(|reason| {
            ArgumentError::Invalid {
                amp_type: "AmpList",
                reason,
            }
        })?;
        boxes
            .iter()
            .map(T::from_box)
            .collect::<Result<Vec<_>, _>>()
            .map(AmpList)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_row_with_every_field_absent_is_an_empty_box_both_ways() {
        // Twisted's bytes for `AmpList([(b'x', Integer(optional=True))])` of `[{}, {'x': 1}]`.
        let twisted = b"\x00\x00\x00\x01x\x00\x011\x00\x00";
        let mut one = AmpBox::new();
        one.insert("x", "1");
        let list = AmpList(vec![AmpBox::new(), one]);
        let mut wire = Vec::new();
        list.encode_value(&mut wire).unwrap();
        assert_eq!(&wire[..], &twisted[..]);
        assert_eq!(AmpList::<AmpBox>::decode_value(twisted).unwrap(), list);
        // Only whole rows: a truncated one is refused.
        assert!(AmpList::<AmpBox>::decode_value(&twisted[..5]).is_err());
    }

    #[test]
    fn small_pairs_are_copied_into_the_box_and_read_back() {
        let mut b = AmpBox::new();
        for i in 0..200u64 {
            i.put(&format!("key{i}"), &mut b).unwrap();
        }
        assert_eq!(b.len(), 200);
        for i in 0..200u64 {
            let name = format!("key{i}");
            assert_eq!(b.get(&name), Some(i.to_string().as_bytes()));
            assert_eq!(u64::take(&name, &b).unwrap(), i);
        }
        // A value put again replaces the first.
        7u8.put("key3", &mut b).unwrap();
        assert_eq!(b.get("key3"), Some(&b"7"[..]));
        assert_eq!(b.len(), 200);
    }

    #[test]
    fn larger_pairs_get_their_own_bytes() {
        let name = "k".repeat(200);
        let value = Bytes::from(vec![b'v'; COPY_PAIR_MAX]);
        let mut b = AmpBox::new();
        value.put(&name, &mut b).unwrap();
        assert_eq!(b.get(&name), Some(&value[..]));
        let big = Bytes::from(vec![b'w'; SCRATCH_KEEP + 1]);
        big.put("big", &mut b).unwrap();
        assert_eq!(b.get_bytes("big"), Some(big));
        assert_eq!(b.len(), 2);
        // A box put into another as a whole: small pairs copied, large ones shared.
        7u8.put("small", &mut b).unwrap();
        let mut copy = AmpBox::new();
        b.to_box(&mut copy).unwrap();
        assert_eq!(copy, b);
        assert_eq!(AmpBox::from_box(&copy).unwrap(), b);
    }
}
