//! `bytes::Bytes` values that cross the wire without being copied.
//!
//! A byte string being sent goes to the socket from the memory it is in: the encoder keeps a
//! reference to it instead of a copy, and the connection writes the value around it and the
//! string itself with one vectored write. A received payload is a slice of the frame it came
//! in, and a byte string inside it can be handed out as a slice of that frame too. `Bytes`'s
//! own `Serialize` and `Deserialize` cannot do either (serde lends a serializer a `&[u8]`, and
//! hands a deserializer a borrowed `&[u8]` or a fresh `Vec<u8>`, never the buffer), so pb
//! encodes and decodes `Bytes` itself where it can:
//!
//! - **Parameters and results of `#[pb::remote]` methods** typed `Bytes` (`bytes::Bytes`,
//!   also reachable as `pb::amp::Bytes`) need nothing: the generated code sends them
//!   uncopied and decodes them as slices of the received frame.
//! - **`Bytes` fields of your own types**: mark them `#[serde(with = "pb::zero_copy")]`
//!   (this module, re-exported by the `pb` facade); those of `#[pb::copyable]` types need
//!   nothing.
//! - **`Vec<u8>` and `Box<[u8]>` parameters and results** need nothing either: they cross as
//!   one byte string (serde alone would take them an element at a time), sent from their own
//!   allocation (the generated code owns them, and holds them as `Bytes` meanwhile, which
//!   costs no copy) and copied once on arrival. **`Vec<u8>` and `Box<[u8]>` fields** of
//!   `#[pb::copyable]` types are one byte string by themselves, and those of other types with
//!   `#[serde(with = "pb::zero_copy::vec")]` ([`vec`](mod@vec)) or
//!   `#[serde(with = "pb::zero_copy::boxed")]` ([`boxed`]); serde lends a field to its
//!   serializer, so these are copied once each way (a `Bytes` field is not). The bytes on
//!   the wire are the same either way.
//! - **`&[u8]` and `&str` parameters** are borrowed: the caller's stub encodes them from its
//!   borrow (one copy, into the call's frame), and the handler borrows them from what was
//!   received: a `&[u8]` of 4 KiB or more is lent from the frame (or from a split frame's tail)
//!   with no copy at all; a `&str` is decoded into a `String` first, as a `String` parameter
//!   is. On the wire they are a `Vec<u8>` and a `String`: a caller that sends those calls the
//!   same method.
//! - **`String` parameters and results** take the `Vec<u8>` path too (still encoded as a
//!   string, which Twisted's Jelly tells apart from bytes): sent from their own allocation, and
//!   checked as UTF-8 (once when encoded, and when a split frame's tail becomes one).
//!
//! A large string that ends the arguments or the answer (64 KiB or more) goes to a peer that
//! reads split frames as the frame's tail (see [`pb::proto::frame`](pb_proto::frame)): it is
//! read from the socket into an allocation of its own, which becomes the `Vec<u8>`,
//! `Box<[u8]>`, `String` or `Bytes` itself, so it crosses with no copy outside the kernel's.
//!
//! The wire form is the one `Bytes` has anyway (a length and the bytes), so both ends need not
//! agree on using it. Decoded outside a pb payload (another serde format, or bytes that are not
//! in a frame), the value is copied, as `Bytes` would be.
//!
//! Byte strings under 4 KiB are copied all the same: that is cheap, and a small value kept for
//! long should not keep a receive buffer alive. A slice does keep the buffer it came in alive
//! (the frame, and what was read with it): to keep a small part of a large value for long, copy
//! it (`Bytes::copy_from_slice`).
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Chunk {
//!     offset: u64,
//!     #[serde(with = "pb::zero_copy")]
//!     data: bytes::Bytes,
//! }
//! ```

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// `Vec<u8>` fields as one byte string (for `#[serde(with = "pb::zero_copy::vec")]`): one
/// copy each way instead of an element at a time, and the same bytes on the wire as serde's
/// own encoding of a `Vec<u8>` in pb's codec.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Upload {
///     name: String,
///     #[serde(with = "pb::zero_copy::vec")]
///     data: Vec<u8>,
/// }
/// ```
pub mod vec {
    use serde::de::DeserializeSeed;
    use serde::{Deserializer, Serializer};

    /// Serialize `bytes` as one byte string.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Deserialize a `Vec<u8>` from a byte string (or, from a format without one, a
    /// sequence).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        super::VecBytes.deserialize(deserializer)
    }
}

/// `Box<[u8]>` fields as one byte string (for `#[serde(with = "pb::zero_copy::boxed")]`), as
/// [`vec`](mod@vec) does for `Vec<u8>`: one copy each way, the same bytes on the wire.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Sealed {
///     #[serde(with = "pb::zero_copy::boxed")]
///     data: Box<[u8]>,
/// }
/// ```
pub mod boxed {
    use serde::de::DeserializeSeed;
    use serde::{Deserializer, Serializer};

    /// Serialize `bytes` as one byte string.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Deserialize a `Box<[u8]>` from a byte string (or, from a format without one, a
    /// sequence).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Box<[u8]>, D::Error> {
        super::BoxedBytes.deserialize(deserializer)
    }
}

/// Serialize `bytes` as `Bytes` does (for `#[serde(with = "pb::zero_copy")]`); in a pb
/// payload, a large one is sent from where it is, not copied.
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    crate::codec::offer_shared(bytes, || serializer.serialize_bytes(bytes))
}

/// Deserialize a `Bytes` as a slice of the received frame when it is one, or a copy (for
/// `#[serde(with = "pb::zero_copy")]`).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(crate::codec::share_borrowed(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Bytes, A::Error> {
        // Formats without a byte-string form (JSON) write bytes as a sequence of numbers.
        VecVisitor.visit_seq(seq).map(Bytes::from)
    }
}

/// A seed that decodes a `Bytes` as [`deserialize`] does.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedBytes;

impl<'de> DeserializeSeed<'de> for SharedBytes {
    type Value = Bytes;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Bytes, D::Error> {
        deserialize(d)
    }
}

/// A `&Bytes` serialized as [`serialize`] does.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct BytesRef<'a>(pub &'a Bytes);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

// ---- how generated code picks the zero-copy path for `Bytes` ----------------------------------
//
// `#[pb::remote]` sees a parameter's type only as tokens, and a type named `Bytes` may be
// anyone's. It writes `(&Wire::<T>::new()).seed()` for every parameter: method lookup tries
// `&Wire<T>` before `&&Wire<T>`, so the `Wire<Bytes>` impl wins exactly when `T` is
// `bytes::Bytes`, and every other type takes the serde impl on `&Wire<T>`. In the same way,
// `(&Wire::<T>::new()).plain()` is `true` exactly when `T` is `Plain`.

/// Picks how generated code encodes and decodes a value of type `T`.
#[doc(hidden)]
pub struct Wire<T>(PhantomData<fn() -> T>);

impl<T> Wire<T> {
    /// The picker for `T`.
    pub const fn new() -> Self {
        Wire(PhantomData)
    }
}

impl<T> Default for Wire<T> {
    fn default() -> Self {
        Wire::new()
    }
}

/// The byte-string path: `bytes::Bytes` (a slice of the received frame), and `Vec<u8>` and
/// `Box<[u8]>` (one copy in, not an element at a time). All three are sent from where they
/// are: the value, which generated code owns, is held as `Bytes` (no copy) while it is
/// encoded and sent.
#[doc(hidden)]
pub trait WireBytes {
    /// The type picked.
    type Value;
    /// The decode seed.
    type Seed;
    /// What is encoded in the value's place.
    type Ref<'a>: Serialize;
    /// The decode seed.
    fn seed(&self) -> Self::Seed;
    /// The value as it is held while it is encoded and sent.
    fn hold(&self, value: Self::Value) -> Bytes;
    /// The value to encode.
    fn wire<'a>(&self, held: &'a Bytes) -> Self::Ref<'a>;
}

impl WireBytes for Wire<Bytes> {
    type Value = Bytes;
    type Seed = SharedBytes;
    type Ref<'a> = BytesRef<'a>;
    fn seed(&self) -> SharedBytes {
        SharedBytes
    }
    fn hold(&self, value: Bytes) -> Bytes {
        value
    }
    fn wire<'a>(&self, held: &'a Bytes) -> BytesRef<'a> {
        BytesRef(held)
    }
}

impl WireBytes for Wire<Vec<u8>> {
    type Value = Vec<u8>;
    type Seed = VecBytes;
    type Ref<'a> = BytesRef<'a>;
    fn seed(&self) -> VecBytes {
        VecBytes
    }
    fn hold(&self, value: Vec<u8>) -> Bytes {
        Bytes::from(value)
    }
    fn wire<'a>(&self, held: &'a Bytes) -> BytesRef<'a> {
        BytesRef(held)
    }
}

impl WireBytes for Wire<Box<[u8]>> {
    type Value = Box<[u8]>;
    type Seed = BoxedBytes;
    type Ref<'a> = BytesRef<'a>;
    fn seed(&self) -> BoxedBytes {
        BoxedBytes
    }
    fn hold(&self, value: Box<[u8]>) -> Bytes {
        Bytes::from(value)
    }
    fn wire<'a>(&self, held: &'a Bytes) -> BytesRef<'a> {
        BytesRef(held)
    }
}

/// `String` parameters and results: held as `Bytes` (no copy) and encoded as the text they
/// are (a string, not a byte string, for the codecs that tell them apart, such as Twisted's
/// Jelly); a large one that ends a split frame is received into an allocation of its own.
impl WireBytes for Wire<String> {
    type Value = String;
    type Seed = StringSeed;
    type Ref<'a> = StrRef<'a>;
    fn seed(&self) -> StringSeed {
        StringSeed
    }
    fn hold(&self, value: String) -> Bytes {
        Bytes::from(value)
    }
    fn wire<'a>(&self, held: &'a Bytes) -> StrRef<'a> {
        StrRef(held)
    }
}

/// A borrowed `&[u8]` parameter, serialized as one byte string (serde alone would write it
/// an element at a time), as `Vec<u8>` and `Bytes` are: the same bytes on the wire.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct SliceRef<'a>(pub &'a [u8]);

impl Serialize for SliceRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A `String` held as `Bytes` ([`WireBytes::hold`]), serialized as a string, offered as
/// shared (see [`serialize`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct StrRef<'a>(pub &'a Bytes);

impl Serialize for StrRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Held from a `String`: valid UTF-8, checked again here because only a string is
        // ever written as one.
        let text = std::str::from_utf8(self.0).map_err(serde::ser::Error::custom)?;
        crate::codec::offer_shared(self.0, || serializer.serialize_str(text))
    }
}

/// A seed that decodes a `String` as serde does, except that a split frame's tail becomes
/// the string without a copy (its bytes checked as UTF-8).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StringSeed;

impl<'de> DeserializeSeed<'de> for StringSeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        // Borrowed where the format can lend it (the tail is seen only then); the visitor
        // takes an owned or passing string as well.
        d.deserialize_str(StringVisitor)
    }
}

struct StringVisitor;

impl<'de> Visitor<'de> for StringVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<String, E> {
        match crate::codec::take_tail(v.as_bytes()) {
            Some(tail) => String::from_utf8(Vec::from(tail)).map_err(E::custom),
            None => Ok(v.to_owned()),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// A seed that decodes a `Vec<u8>` with one copy (from a byte string, or element by element
/// from a format that has none).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VecBytes;

impl<'de> DeserializeSeed<'de> for VecBytes {
    type Value = Vec<u8>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(VecVisitor)
    }
}

/// A seed that decodes a `Box<[u8]>` as [`VecBytes`] does.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxedBytes;

impl<'de> DeserializeSeed<'de> for BoxedBytes {
    type Value = Box<[u8]>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Box<[u8]>, D::Error> {
        d.deserialize_bytes(VecVisitor).map(Vec::into_boxed_slice)
    }
}

struct VecVisitor;

impl<'de> Visitor<'de> for VecVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Vec<u8>, E> {
        // A split frame's tail is an allocation of its own: it becomes the vector as it is.
        match crate::codec::take_tail(v) {
            Some(tail) => Ok(Vec::from(tail)),
            None => Ok(v.to_vec()),
        }
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The hint is the peer's claim: capped, never trusted for the allocation.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(v)
    }
}

/// How `#[pb::copyable]` encodes a field whose type is named `Bytes`: pb's zero-copy path
/// when it is `bytes::Bytes` ([`serialize`], [`deserialize`]); any other type named so takes
/// serde's own ([`WireFieldSerde`]), picked the way [`Wire`] picks.
#[doc(hidden)]
pub trait WireField {
    /// Serialize the field.
    fn serialize_field<S: Serializer>(&self, value: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        serialize(value, s)
    }
    /// Deserialize the field.
    fn deserialize_field<'de, D: Deserializer<'de>>(&self, d: D) -> Result<Bytes, D::Error> {
        deserialize(d)
    }
}

impl WireField for Wire<Bytes> {}

/// The serde path of [`WireField`].
#[doc(hidden)]
pub trait WireFieldSerde<T> {
    /// Serialize the field.
    fn serialize_field<S: Serializer>(&self, value: &T, s: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize,
    {
        value.serialize(s)
    }
    /// Deserialize the field.
    fn deserialize_field<'de, D: Deserializer<'de>>(&self, d: D) -> Result<T, D::Error>
    where
        T: serde::Deserialize<'de>,
    {
        T::deserialize(d)
    }
}

impl<T> WireFieldSerde<T> for &Wire<T> {}

/// The serde path, for every other type.
#[doc(hidden)]
pub trait WireSerde<T> {
    /// The decode seed.
    fn seed(&self) -> PhantomData<T>;
    /// The value as it is held while it is encoded: itself.
    fn hold(&self, value: T) -> T {
        value
    }
    /// The value to encode.
    fn wire<'a>(&self, value: &'a T) -> &'a T;
}

impl<T> WireSerde<T> for &Wire<T> {
    fn seed(&self) -> PhantomData<T> {
        PhantomData
    }
    fn wire<'a>(&self, value: &'a T) -> &'a T {
        value
    }
}

/// `plain()` is `true` for a [`crate::codec::Plain`] type (the context-free encode path).
#[doc(hidden)]
pub trait WirePlain {
    /// Whether the type is plain.
    fn plain(&self) -> bool {
        true
    }
}

impl<T: crate::codec::Plain> WirePlain for Wire<T> {}

/// `plain()` is `false` for every other type.
#[doc(hidden)]
pub trait WireAny {
    /// Whether the type is plain.
    fn plain(&self) -> bool {
        false
    }
}

impl<T> WireAny for &Wire<T> {}

/// Decodes a tuple element by element with a seed for each (the arguments of a call).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct TupleSeed<S>(pub S);

struct TupleVisitor<S>(S);

macro_rules! tuple_seed {
    ($len:expr => $($s:ident $i:tt),*) => {
        impl<'de, $($s: DeserializeSeed<'de>),*> DeserializeSeed<'de> for TupleSeed<($($s,)*)> {
            type Value = ($($s::Value,)*);

            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_tuple($len, TupleVisitor(self.0))
            }
        }

        impl<'de, $($s: DeserializeSeed<'de>),*> Visitor<'de> for TupleVisitor<($($s,)*)> {
            type Value = ($($s::Value,)*);

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a tuple of size {}", $len)
            }

            #[allow(unused_mut, unused_variables)]
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                Ok(($(
                    match seq.next_element_seed((self.0).$i)? {
                        Some(v) => v,
                        None => return Err(de::Error::invalid_length($i, &self_expecting($len))),
                    },
                )*))
            }
        }
    };
}

/// What a short tuple's error says it expected.
fn self_expecting(len: usize) -> impl de::Expected {
    struct TupleOf(usize);
    impl de::Expected for TupleOf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a tuple of size {}", self.0)
        }
    }
    TupleOf(len)
}

tuple_seed!(0 =>);
tuple_seed!(1 => S0 0);
tuple_seed!(2 => S0 0, S1 1);
tuple_seed!(3 => S0 0, S1 1, S2 2);
tuple_seed!(4 => S0 0, S1 1, S2 2, S3 3);
tuple_seed!(5 => S0 0, S1 1, S2 2, S3 3, S4 4);
tuple_seed!(6 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5);
tuple_seed!(7 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6);
tuple_seed!(8 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7);
tuple_seed!(9 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8);
tuple_seed!(10 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8, S9 9);
tuple_seed!(11 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8, S9 9, S10 10);
tuple_seed!(12 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8, S9 9, S10 10, S11 11);
tuple_seed!(13 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8, S9 9, S10 10, S11 11,
    S12 12);
tuple_seed!(14 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8, S9 9, S10 10, S11 11,
    S12 12, S13 13);
tuple_seed!(15 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8, S9 9, S10 10, S11 11,
    S12 12, S13 13, S14 14);
tuple_seed!(16 => S0 0, S1 1, S2 2, S3 3, S4 4, S5 5, S6 6, S7 7, S8 8, S9 9, S10 10, S11 11,
    S12 12, S13 13, S14 14, S15 15);
