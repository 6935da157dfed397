//! AMP boxes and their byte codec: no I/O, incremental, limits checked before allocating.

use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// The longest key AMP allows (`MAX_KEY_LENGTH` in Twisted).
pub const MAX_KEY_LENGTH: usize = 0xff;
/// The longest value AMP allows (`MAX_VALUE_LENGTH` in Twisted).
pub const MAX_VALUE_LENGTH: usize = 0xffff;

/// A byte string kept inline when it is short (up to 22 bytes), else as shared bytes: the
/// `_command`, `_ask`, `_answer` and `_error` values of a received box, which are nearly always
/// a few bytes, so that taking one out of the box costs no allocation and no reference count.
///
/// It reads as a `[u8]` (it derefs to one) and compares with byte strings, `str`s and [`Bytes`].
///
/// ```
/// # mod pb { pub use pb_proto as proto; }
/// use pb::proto::amp::codec::SmallBytes;
///
/// let tag = SmallBytes::copy_from_slice(b"1f");
/// assert_eq!(tag, "1f");
/// assert_eq!(&tag[..], b"1f");
/// assert_eq!(tag.to_bytes(), bytes::Bytes::from("1f"));
/// ```
#[derive(Clone)]
pub struct SmallBytes(Small);

#[derive(Clone)]
enum Small {
    Inline { len: u8, bytes: [u8; SMALL_INLINE] },
    Shared(Bytes),
}

/// The longest [`SmallBytes`] kept inline.
const SMALL_INLINE: usize = 22;

impl SmallBytes {
    /// A copy of `b`: inline if it is short, else shared bytes of its own.
    #[inline]
    pub fn copy_from_slice(b: &[u8]) -> Self {
        match Self::inline(b) {
            Some(s) => s,
            None => SmallBytes(Small::Shared(Bytes::copy_from_slice(b))),
        }
    }

    /// Bytes `range` of `frame`: copied inline if they are short, else a slice of it.
    #[inline]
    pub(crate) fn from_frame(frame: &Bytes, range: Range<usize>) -> Self {
        match frame.get(range.clone()).and_then(Self::inline) {
            Some(s) => s,
            None => SmallBytes(Small::Shared(frame.slice(range))),
        }
    }

    #[inline]
    fn inline(b: &[u8]) -> Option<Self> {
        let mut bytes = [0; SMALL_INLINE];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(SmallBytes(Small::Inline {
            // At most `SMALL_INLINE`, so it fits.
            len: b.len() as u8,
            bytes,
        }))
    }

    /// The bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Small::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Small::Shared(b) => b,
        }
    }

    /// The bytes as [`Bytes`] (a copy if they are inline).
    #[inline]
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Small::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            Small::Shared(b) => b.clone(),
        }
    }
}

impl std::ops::Deref for SmallBytes {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for SmallBytes {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::borrow::Borrow<[u8]> for SmallBytes {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for SmallBytes {
    /// As [`Bytes`] prints itself: `b"..."` with escapes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("b\"")?;
        for &b in self.as_bytes() {
            match b {
                b'\n' => f.write_str("\\n")?,
                b'\r' => f.write_str("\\r")?,
                b'\t' => f.write_str("\\t")?,
                b'\\' | b'"' => write!(f, "\\{}", char::from(b))?,
                b'\0' => f.write_str("\\0")?,
                0x20..=0x7e => write!(f, "{}", char::from(b))?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

impl PartialEq for SmallBytes {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SmallBytes {}

impl std::hash::Hash for SmallBytes {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for SmallBytes {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SmallBytes {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialEq<[u8]> for SmallBytes {
    #[inline]
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialEq<&[u8]> for SmallBytes {
    #[inline]
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_bytes() == *other
    }
}

impl PartialEq<str> for SmallBytes {
    #[inline]
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for SmallBytes {
    #[inline]
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Bytes> for SmallBytes {
    #[inline]
    fn eq(&self, other: &Bytes) -> bool {
        self.as_bytes() == &other[..]
    }
}

impl PartialEq<SmallBytes> for Bytes {
    #[inline]
    fn eq(&self, other: &SmallBytes) -> bool {
        &self[..] == other.as_bytes()
    }
}

impl From<&[u8]> for SmallBytes {
    #[inline]
    fn from(b: &[u8]) -> Self {
        Self::copy_from_slice(b)
    }
}

impl From<&str> for SmallBytes {
    #[inline]
    fn from(s: &str) -> Self {
        Self::copy_from_slice(s.as_bytes())
    }
}

impl From<Bytes> for SmallBytes {
    /// Inline if it is short (a copy), else the same bytes.
    #[inline]
    fn from(b: Bytes) -> Self {
        match Self::inline(&b) {
            Some(s) => s,
            None => SmallBytes(Small::Shared(b)),
        }
    }
}

impl From<SmallBytes> for Bytes {
    #[inline]
    fn from(s: SmallBytes) -> Self {
        match s.0 {
            Small::Inline { .. } => Bytes::copy_from_slice(s.as_bytes()),
            Small::Shared(b) => b,
        }
    }
}

/// One AMP box: a map from byte-string keys to byte-string values.
///
/// Keys are kept sorted bytewise, so encoding a box gives exactly the bytes Twisted's
/// `AmpBox.serialize` gives for the same pairs. A key that appears twice in a received box keeps
/// its last value, as a Python `dict` does.
///
/// A received box keeps the frame it came in and its pairs as ranges of it: reading a key or
/// value costs no reference count and no copy ([`AmpBox::get_bytes`] makes shared bytes of one
/// when asked). A box built here holds small pairs copied into one buffer of its own
/// ([`AmpBox::insert_copy`]) and others as the bytes they were given ([`AmpBox::insert`]).
///
/// ```
/// # mod pb { pub use pb_proto as proto; }
/// use pb::proto::amp::codec::AmpBox;
///
/// let mut b = AmpBox::new();
/// b.insert("_command", "Sum");
/// b.insert_copy(b"a", b"13");
/// assert_eq!(b.get("a"), Some(&b"13"[..]));
/// ```
#[derive(Clone, Default)]
pub struct AmpBox {
    /// The received frame that [`Part::Range`]s with `own == false` point into (empty for a
    /// box built here).
    frame: Bytes,
    /// Keys and values copied in by [`AmpBox::insert_copy`], which the other ranges point into.
    own: Vec<u8>,
    /// Sorted by key, each key once. A box has a handful of keys: a sorted vector is one
    /// allocation where a `BTreeMap` took a node of eleven pairs and its bookkeeping.
    pairs: Vec<(Part, Part)>,
}

/// A key or value of an [`AmpBox`].
#[derive(Clone, Debug)]
enum Part {
    /// Bytes `start..end` of the box's frame, or of its own buffer.
    Range { own: bool, start: u32, end: u32 },
    /// Bytes of their own (given to [`AmpBox::insert`]).
    Shared(Bytes),
}

impl AmpBox {
    /// An empty box.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes of `part`.
    #[inline]
    fn bytes_of<'a>(&'a self, part: &'a Part) -> &'a [u8] {
        resolve(&self.frame, &self.own, part)
    }

    /// `part` as shared bytes (a reference count, or a copy for the box's own bytes).
    #[inline]
    fn shared(&self, part: Part) -> Bytes {
        match part {
            Part::Shared(b) => b,
            Part::Range {
                own: false,
                start,
                end,
            } => self.frame.slice(start as usize..end as usize),
            own => Bytes::copy_from_slice(self.bytes_of(&own)),
        }
    }

    /// Sets `key` to `value`, keeping them as given (no copy), and returns the value it replaces.
    #[inline]
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Option<Bytes> {
        self.set(Part::Shared(key.into()), Part::Shared(value.into()))
            .map(|old| self.shared(old))
    }

    /// Sets `key` to `value`, copying both into the box's own buffer: for small values the
    /// cheap way, with no allocation and no reference count of their own. The bytes of a value
    /// it replaces stay in that buffer until the box is dropped.
    #[inline]
    pub fn insert_copy(&mut self, key: &[u8], value: &[u8]) {
        if self.own.capacity() == 0 {
            self.own = spare_own();
        }
        let start = self.own.len();
        let (Ok(start32), Ok(mid), Ok(end)) = (
            u32::try_from(start),
            u32::try_from(start + key.len()),
            u32::try_from(start + key.len() + value.len()),
        ) else {
            // A buffer of 4 GiB: the pair gets bytes of its own instead.
            self.insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
            return;
        };
        self.own.extend_from_slice(key);
        self.own.extend_from_slice(value);
        let k = Part::Range {
            own: true,
            start: start32,
            end: mid,
        };
        let v = Part::Range {
            own: true,
            start: mid,
            end,
        };
        self.set(k, v);
    }

    /// Puts the pair of key `k` and value `v` in its place, returning the value it replaces.
    #[inline]
    fn set(&mut self, k: Part, v: Part) -> Option<Part> {
        if self.pairs.capacity() == 0 {
            self.pairs = spare_pairs(1);
        }
        let key = self.bytes_of(&k);
        // A box's first key, or a key after its last (fields put in order), goes at the end.
        let at = match self.pairs.last() {
            None => Err(0),
            Some((last, _)) if self.bytes_of(last) < key => Err(self.pairs.len()),
            Some(_) => self.find(key),
        };
        match at {
            Ok(i) => self
                .pairs
                .get_mut(i)
                .map(|(_, old)| std::mem::replace(old, v)),
            Err(i) => {
                self.pairs.insert(i, (k, v));
                None
            }
        }
    }

    /// The value of `key`, if present.
    #[inline]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let i = self.position(key.as_ref())?;
        self.pairs.get(i).map(|(_, v)| self.bytes_of(v))
    }

    /// The value of `key` as shared bytes, if present: a slice of the received frame (a
    /// reference count, no copy), the bytes it was inserted as, or a copy of a value inserted
    /// with [`AmpBox::insert_copy`].
    #[inline]
    pub fn get_bytes(&self, key: impl AsRef<[u8]>) -> Option<Bytes> {
        let i = self.position(key.as_ref())?;
        let (_, v) = self.pairs.get(i)?;
        Some(self.shared(v.clone()))
    }

    /// Removes `key`, returning its value (as [`AmpBox::get_bytes`] would).
    #[inline]
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> Option<Bytes> {
        let i = self.position(key.as_ref())?;
        let (_, v) = self.pairs.remove(i);
        Some(self.shared(v))
    }

    /// Whether `key` is present.
    #[inline]
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.position(key.as_ref()).is_some()
    }

    /// Where `key` is, or where it would go.
    #[inline]
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        self.pairs
            .binary_search_by(|(k, _)| self.bytes_of(k).cmp(key))
    }

    /// Where `key` is. Small boxes (nearly all) are scanned: an equality test compares lengths
    /// first, where the binary search's ordering compares bytes every time.
    #[inline]
    fn position(&self, key: &[u8]) -> Option<usize> {
        if self.pairs.len() <= 8 {
            self.pairs.iter().position(|(k, _)| self.bytes_of(k) == key)
        } else {
            self.find(key).ok()
        }
    }

    /// Sorts the pairs by key; of a key given twice the last value stays, as in a Python
    /// `dict`.
    #[inline]
    fn sort_pairs(&mut self) {
        let (frame, own) = (&self.frame[..], &self.own[..]);
        if self
            .pairs
            .windows(2)
            .all(|w| matches!(w, [a, b] if resolve(frame, own, &a.0) < resolve(frame, own, &b.0)))
        {
            return;
        }
        // Stable, so equal keys stay in arrival order and the last one can win.
        self.pairs
            .sort_by(|a, b| resolve(frame, own, &a.0).cmp(resolve(frame, own, &b.0)));
        self.pairs.dedup_by(|later, kept| {
            if resolve(frame, own, &later.0) == resolve(frame, own, &kept.0) {
                std::mem::swap(&mut later.1, &mut kept.1);
                true
            } else {
                false
            }
        });
    }

    /// The number of keys.
    #[inline]
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the box has no keys (such a box is illegal on the wire).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs in bytewise key order, the order in which they are encoded.
    #[inline]
    pub fn iter(&self) -> AmpBoxIter<'_> {
        AmpBoxIter {
            pairs: self.pairs.iter(),
            frame: &self.frame,
            own: &self.own,
        }
    }

    /// The number of bytes [`AmpBox::encode`] writes for this box.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        self.iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>()
            + 2
    }

    /// About how much memory this box holds, in bytes: its table of pairs (a few dozen bytes
    /// a pair, whatever its length), its own buffer, and the bytes it keeps elsewhere (its
    /// share of the received frame, bytes of their own). Many times [`AmpBox::encoded_len`]
    /// for a box of many short pairs: what a box held back or handed to a responder is
    /// counted by (`AmpConfig::max_held_bytes`, `max_responder_bytes`). Costs a pass over the
    /// pairs, as [`AmpBox::encoded_len`] does.
    #[inline]
    pub fn memory_len(&self) -> usize {
        let shared: usize = self
            .pairs
            .iter()
            .flat_map(|(k, v)| [k, v])
            .map(|part| match part {
                Part::Shared(b) => b.len(),
                Part::Range { .. } => 0,
            })
            .sum();
        std::mem::size_of::<AmpBox>()
            + self.pairs.capacity() * std::mem::size_of::<(Part, Part)>()
            + self.own.capacity()
            + self.frame.len()
            + shared
    }

    /// A copy of this box in two allocations of its own, each of just the size it needs (its
    /// pairs' bytes, its table of pairs), sharing nothing with the box or the frame it came
    /// in: for a box kept a while, so that it holds no more than its
    /// [`AmpBox::memory_len`] says.
    pub fn to_compact(&self) -> AmpBox {
        let bytes: usize = self.iter().map(|(k, v)| k.len() + v.len()).sum();
        if u32::try_from(bytes).is_err() {
            // Over 4 GiB: pairs of their own (never a received box, which is within 1 MiB).
            let mut own = AmpBox::default();
            for (key, value) in self {
                own.insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
            }
            return own;
        }
        let mut own = Vec::with_capacity(bytes);
        let mut pairs = Vec::with_capacity(self.pairs.len());
        // Within `u32`: checked above.
        let range = |b: &[u8], own: &mut Vec<u8>| {
            let start = own.len() as u32;
            own.extend_from_slice(b);
            Part::Range {
                own: true,
                start,
                end: own.len() as u32,
            }
        };
        // In key order already, each key once.
        for (k, v) in self {
            let k = range(k, &mut own);
            let v = range(v, &mut own);
            pairs.push((k, v));
        }
        AmpBox {
            frame: Bytes::new(),
            own,
            pairs,
        }
    }

    /// Checks every key and value against AMP's limits, as Twisted does before sending.
    #[inline]
    pub fn validate(&self) -> Result<(), BoxCodecError> {
        if self.pairs.is_empty() {
            return Err(BoxCodecError::EmptyBox);
        }
        for (k, v) in self {
            check_pair(k, v)?;
        }
        Ok(())
    }

    /// Appends the wire form of this box to `dst`; nothing is written if a limit is broken.
    #[inline]
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), BoxCodecError> {
        self.encode_with(&[], dst, None)
    }

    /// Appends the wire form of this box with the pairs of `extra` added, an extra pair
    /// replacing the box's own value of its key; nothing is written if a limit is broken:
    /// AMP's own, and `limits`' if given. `extra` must be sorted by key, each key once.
    ///
    /// The dispatcher's special keys (`_ask`, `_answer`, ...) go in this way: merged into the
    /// sorted pairs as they are written, with no insertion into the box and no copy of it.
    #[inline]
    pub(crate) fn encode_with(
        &self,
        extra: &[(&[u8], &[u8])],
        dst: &mut BytesMut,
        limits: Option<&BoxCodecConfig>,
    ) -> Result<(), BoxCodecError> {
        debug_assert!(extra.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)));
        // The pairs in key order, gathered on the stack as they are checked (a box has a
        // handful), so that writing them needs no second merge.
        let mut merged: [(&[u8], &[u8]); MERGED_ON_STACK] = [(&[], &[]); MERGED_ON_STACK];
        let mut n = 0;
        let mut len = 2;
        merge_pairs(self.iter(), extra, |k, v| {
            len += check_pair(k, v)?;
            if let Some(slot) = merged.get_mut(n) {
                *slot = (k, v);
            }
            n += 1;
            Ok(())
        })?;
        if n == 0 {
            return Err(BoxCodecError::EmptyBox);
        }
        if let Some(limits) = limits {
            if n > limits.max_keys_per_box {
                return Err(BoxCodecError::TooManyKeys {
                    max: limits.max_keys_per_box,
                });
            }
            if len > limits.max_box_bytes {
                return Err(BoxCodecError::BoxTooLarge {
                    max: limits.max_box_bytes,
                });
            }
        }
        // The whole box's room at once, then each pair copied into it: a few copies of its
        // own per pair rather than a checked append per key, value and length.
        let start = dst.len();
        dst.resize(start + len, 0);
        let mut out = dst.get_mut(start..).unwrap_or_default();
        let mut put = |k: &[u8], v: &[u8]| {
            // `check_pair` checked both lengths, so the casts cannot truncate.
            let (head, rest) = std::mem::take(&mut out)
                .split_at_mut_checked(2)
                .unwrap_or_default();
            head.copy_from_slice(&(k.len() as u16).to_be_bytes());
            let (key, rest) = rest.split_at_mut_checked(k.len()).unwrap_or_default();
            key.copy_from_slice(k);
            let (head, rest) = rest.split_at_mut_checked(2).unwrap_or_default();
            head.copy_from_slice(&(v.len() as u16).to_be_bytes());
            let (value, rest) = rest.split_at_mut_checked(v.len()).unwrap_or_default();
            value.copy_from_slice(v);
            out = rest;
            Ok::<(), BoxCodecError>(())
        };
        match merged.get(..n) {
            Some(merged) => {
                for &(k, v) in merged {
                    put(k, v)?;
                }
            }
            None => merge_pairs(self.iter(), extra, put)?,
        }
        // The terminator is the two zeros left at the end.
        Ok(())
    }

    /// The wire form of this box.
    #[inline]
    pub fn to_bytes(&self) -> Result<Bytes, BoxCodecError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }
}

/// The bytes of `part`, a part of a box with this `frame` and `own` buffer.
#[inline]
fn resolve<'a>(frame: &'a [u8], own: &'a [u8], part: &'a Part) -> &'a [u8] {
    match part {
        Part::Range { own: o, start, end } => {
            let from = if *o { own } else { frame };
            from.get(*start as usize..*end as usize).unwrap_or_default()
        }
        Part::Shared(b) => b,
    }
}

/// The encoded length of one pair, if it is within AMP's limits.
#[inline]
fn check_pair(k: &[u8], v: &[u8]) -> Result<usize, BoxCodecError> {
    if k.is_empty() {
        return Err(BoxCodecError::EmptyKey);
    }
    if k.len() > MAX_KEY_LENGTH {
        return Err(BoxCodecError::KeyTooLong { len: k.len() });
    }
    if v.len() > MAX_VALUE_LENGTH {
        return Err(BoxCodecError::ValueTooLong {
            key: Bytes::copy_from_slice(k),
            len: v.len(),
        });
    }
    Ok(4 + k.len() + v.len())
}

/// How many pairs [`AmpBox::encode_with`] gathers on the stack.
const MERGED_ON_STACK: usize = 8;

/// Hands `f` the sorted `pairs` of a box with those of the sorted `extra` merged in, in key
/// order; a key in both is handed over once, with `extra`'s value.
#[inline]
fn merge_pairs<'a, E>(
    pairs: AmpBoxIter<'a>,
    extra: &'a [(&'a [u8], &'a [u8])],
    mut f: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut extra = extra.iter();
    let mut next = extra.next();
    'pairs: for (k, v) in pairs {
        while let Some(&(ek, ev)) = next {
            match key_order(ek, k) {
                std::cmp::Ordering::Greater => break,
                order => {
                    f(ek, ev)?;
                    next = extra.next();
                    if order == std::cmp::Ordering::Equal {
                        // The extra pair replaces the box's own.
                        continue 'pairs;
                    }
                }
            }
        }
        f(k, v)?;
    }
    while let Some(&(ek, ev)) = next {
        f(ek, ev)?;
        next = extra.next();
    }
    Ok(())
}

/// Bytewise order of two keys, deciding on the first bytes without a call when they differ
/// (special keys begin with `_`, most others with a letter).
#[inline]
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match (a.first(), b.first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}

thread_local! {
    /// The emptied pair vectors of boxes dropped on this thread, for the next boxes made on it:
    /// boxes come and go with every call, and many at once are alive with calls in flight,
    /// which the allocator serves slowly.
    static SPARE: std::cell::RefCell<Vec<Vec<(Part, Part)>>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// The same for the buffers of boxes' own bytes.
    static SPARE_OWN: std::cell::RefCell<Vec<Vec<u8>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The most pair vectors (and own buffers) kept per thread: as many boxes as a connection with
/// 64 calls in flight has alive at once.
const SPARE_VECS: usize = 64;
/// Vectors with room for more pairs than this are not kept (so at most 32 KiB a thread).
const SPARE_PAIRS: usize = 8;
/// Own buffers with room for more bytes than this are not kept (so at most 32 KiB a thread).
const SPARE_OWN_BYTES: usize = 512;
/// The room a new own buffer starts with (most boxes' pairs take a few dozen bytes).
const NEW_OWN_BYTES: usize = 64;

/// An empty pair vector with room for `pairs` pairs: a spare one if there is one.
#[inline]
fn spare_pairs(pairs: usize) -> Vec<(Part, Part)> {
    if pairs <= SPARE_PAIRS
        && let Ok(Some(spare)) = SPARE.try_with(|s| s.try_borrow_mut().ok()?.pop())
    {
        let mut spare = spare;
        spare.reserve(pairs);
        return spare;
    }
    Vec::with_capacity(pairs.max(4))
}

/// An empty own buffer: a spare one if there is one.
#[inline]
fn spare_own() -> Vec<u8> {
    match SPARE_OWN.try_with(|s| s.try_borrow_mut().ok()?.pop()) {
        Ok(Some(spare)) => spare,
        _ => Vec::with_capacity(NEW_OWN_BYTES),
    }
}

/// Keeps `v` (emptied) in `spares` for the next box, if it is small and there is room.
#[inline]
fn keep_spare<T: 'static>(
    spares: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Vec<T>>>>,
    mut v: Vec<T>,
    max_capacity: usize,
) {
    let capacity = v.capacity();
    if capacity == 0 || capacity > max_capacity {
        return;
    }
    v.clear();
    // After the thread's spares are gone (at its exit), the vector is simply freed.
    let _ = spares.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut()
            && s.len() < SPARE_VECS
        {
            s.push(v);
        }
    });
}

impl Drop for AmpBox {
    #[inline]
    fn drop(&mut self) {
        keep_spare(&SPARE, std::mem::take(&mut self.pairs), SPARE_PAIRS);
        keep_spare(&SPARE_OWN, std::mem::take(&mut self.own), SPARE_OWN_BYTES);
    }
}

impl PartialEq for AmpBox {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for AmpBox {}

impl std::hash::Hash for AmpBox {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for pair in self {
            pair.hash(state);
        }
    }
}

impl fmt::Debug for AmpBox {
    #[inline]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self {
            m.entry(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v));
        }
        m.finish()
    }
}

impl<K: Into<Bytes>, V: Into<Bytes>> FromIterator<(K, V)> for AmpBox {
    #[inline]
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut b = AmpBox::new();
        b.pairs.extend(
            iter.into_iter()
                .map(|(k, v)| (Part::Shared(k.into()), Part::Shared(v.into()))),
        );
        b.sort_pairs();
        b
    }
}

impl<'a> IntoIterator for &'a AmpBox {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = AmpBoxIter<'a>;

    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The pairs of an [`AmpBox`] in bytewise key order, from [`AmpBox::iter`].
#[derive(Clone, Debug)]
pub struct AmpBoxIter<'a> {
    pairs: std::slice::Iter<'a, (Part, Part)>,
    frame: &'a [u8],
    own: &'a [u8],
}

impl<'a> Iterator for AmpBoxIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (frame, own) = (self.frame, self.own);
        self.pairs
            .next()
            .map(|(k, v)| (resolve(frame, own, k), resolve(frame, own, v)))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.pairs.size_hint()
    }
}

impl DoubleEndedIterator for AmpBoxIter<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let (frame, own) = (self.frame, self.own);
        self.pairs
            .next_back()
            .map(|(k, v)| (resolve(frame, own, k), resolve(frame, own, v)))
    }
}

impl ExactSizeIterator for AmpBoxIter<'_> {}

impl std::iter::FusedIterator for AmpBoxIter<'_> {}

/// The longest received box any configuration allows: a box's pairs are `u32` ranges of it.
const MAX_FRAME: usize = u32::MAX as usize;

/// Limits on boxes, received (`AmpConfig::codec`) or sent (`AmpConfig::send_limits`). Twisted
/// has none beyond the key and value lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BoxCodecConfig {
    /// The most keys one received box may hold (default 1024).
    pub max_keys_per_box: usize,
    /// The most bytes one received box may take on the wire, terminator included (default 1 MiB;
    /// never more than 4 GiB − 1 whatever this says).
    pub max_box_bytes: usize,
}

impl Default for BoxCodecConfig {
    #[inline]
    fn default() -> Self {
        Self {
            max_keys_per_box: 1024,
            max_box_bytes: 1024 * 1024,
        }
    }
}

impl BoxCodecConfig {
    /// Sets [`BoxCodecConfig::max_keys_per_box`].
    #[inline]
    pub fn max_keys_per_box(mut self, n: usize) -> Self {
        self.max_keys_per_box = n;
        self
    }

    /// Sets [`BoxCodecConfig::max_box_bytes`].
    #[inline]
    pub fn max_box_bytes(mut self, n: usize) -> Self {
        self.max_box_bytes = n;
        self
    }
}

/// Why a box could not be encoded or decoded. A decode error leaves the stream unusable: close it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BoxCodecError {
    /// A key over 255 bytes (received: a key length prefix over 255).
    #[error("key too long: {len} bytes (at most 255)")]
    KeyTooLong {
        /// The key's length, or the length prefix received.
        len: usize,
    },
    /// A value over 65 535 bytes; only a local box can have one.
    #[error("value of key {key:?} too long: {len} bytes (at most 65535)")]
    ValueTooLong {
        /// The key whose value is too long.
        key: Bytes,
        /// The value's length.
        len: usize,
    },
    /// A box with no keys: an empty key where a box should start.
    #[error("empty box")]
    EmptyBox,
    /// A local box with an empty key, which would end the box early on the wire.
    #[error("empty key in a box")]
    EmptyKey,
    /// A box with more keys than [`BoxCodecConfig::max_keys_per_box`]: received, or to be sent
    /// (see `AmpConfig::send_limits`).
    #[error("box has more than {max} keys")]
    TooManyKeys {
        /// The configured maximum.
        max: usize,
    },
    /// A box longer than [`BoxCodecConfig::max_box_bytes`]: received, or to be sent (see
    /// `AmpConfig::send_limits`).
    #[error("box longer than {max} bytes")]
    BoxTooLarge {
        /// The configured maximum.
        max: usize,
    },
}

/// The incremental decoder for a stream of boxes.
///
/// [`BoxCodec::decode`] is fed the bytes received so far; it consumes exactly one box when one is
/// complete and returns `Ok(None)` (consuming nothing) while one is not. It scans ahead without
/// copying and remembers how far it got, so a box trickling in byte by byte costs linear time; it
/// never reserves memory for a length the peer merely claims.
#[derive(Debug, Default, Clone)]
pub struct BoxCodec {
    config: BoxCodecConfig,
    /// Bytes of the current box already scanned and found to be complete pairs.
    scanned: usize,
    /// Pairs among the scanned bytes.
    keys: usize,
}

impl BoxCodec {
    /// A decoder with the given limits.
    #[inline]
    pub fn new(config: BoxCodecConfig) -> Self {
        Self {
            config,
            scanned: 0,
            keys: 0,
        }
    }

    /// The limits in force.
    #[inline]
    pub fn config(&self) -> &BoxCodecConfig {
        &self.config
    }

    /// Decodes the next box from the front of `src`, if it is complete.
    #[inline]
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<AmpBox>, BoxCodecError> {
        self.decode_taking(src, |_, _, _| false)
    }

    /// [`BoxCodec::decode`], handing each pair's key, the frame and its value's range in it to
    /// `take` first as the box is parsed: a pair it takes (returns `true` for) is left out of
    /// the box.
    /// The dispatcher takes its special keys this way, in the one pass that splits the box,
    /// rather than looking each one up and removing it afterwards.
    #[inline]
    pub(crate) fn decode_taking(
        &mut self,
        src: &mut BytesMut,
        take: impl FnMut(&[u8], &Bytes, Range<usize>) -> bool,
    ) -> Result<Option<AmpBox>, BoxCodecError> {
        Ok(self
            .decode_frame(src)?
            .map(|(frame, keys)| parse_complete(frame, keys, take)))
    }

    /// The next complete box's bytes and its number of pairs, split off the front of `src`.
    #[inline]
    fn decode_frame(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<(Bytes, usize)>, BoxCodecError> {
        loop {
            let Some(rest) = src.get(self.scanned..) else {
                // The caller changed the buffer under us; rescan from the start.
                self.scanned = 0;
                self.keys = 0;
                continue;
            };
            let Some(key_len) = read_u16(rest) else {
                return Ok(None);
            };
            if key_len == 0 {
                if self.scanned == 0 {
                    return Err(BoxCodecError::EmptyBox);
                }
                self.check_size(self.scanned + 2)?;
                let end = self.scanned + 2;
                let keys = self.keys;
                self.scanned = 0;
                self.keys = 0;
                let frame = src.split_to(end).freeze();
                return Ok(Some((frame, keys)));
            }
            if key_len > MAX_KEY_LENGTH {
                return Err(BoxCodecError::KeyTooLong { len: key_len });
            }
            if self.keys >= self.config.max_keys_per_box {
                return Err(BoxCodecError::TooManyKeys {
                    max: self.config.max_keys_per_box,
                });
            }
            // The smallest the box can still be: this key, a value length and a terminator.
            self.check_size(self.scanned + 2 + key_len + 2 + 2)?;
            let Some(after_key) = rest.get(2 + key_len..) else {
                return Ok(None);
            };
            let Some(value_len) = read_u16(after_key) else {
                return Ok(None);
            };
            let pair_len = 2 + key_len + 2 + value_len;
            self.check_size(self.scanned + pair_len + 2)?;
            if rest.len() < pair_len {
                return Ok(None);
            }
            self.scanned += pair_len;
            self.keys += 1;
        }
    }

    #[inline]
    fn check_size(&self, at_least: usize) -> Result<(), BoxCodecError> {
        let max = self.config.max_box_bytes.min(MAX_FRAME);
        if at_least > max {
            Err(BoxCodecError::BoxTooLarge { max })
        } else {
            Ok(())
        }
    }
}

#[inline]
fn read_u16(b: &[u8]) -> Option<usize> {
    match b {
        [hi, lo, ..] => Some(usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// Splits a frame already scanned by [`BoxCodec::decode`] into pairs, ranges of it; the pairs
/// `take` takes (returns `true` for) are left out.
#[inline]
fn parse_complete(
    frame: Bytes,
    keys: usize,
    mut take: impl FnMut(&[u8], &Bytes, Range<usize>) -> bool,
) -> AmpBox {
    let mut pairs = spare_pairs(keys);
    let mut at = 0;
    while let Some(key_len) = frame.get(at..).and_then(read_u16) {
        let key = at + 2..at + 2 + key_len;
        let Some(value_len) = frame.get(key.end..).and_then(read_u16) else {
            break;
        };
        let value = key.end + 2..key.end + 2 + value_len;
        if key_len == 0 || value.end > frame.len() {
            break;
        }
        at = value.end;
        if take(
            frame.get(key.clone()).unwrap_or_default(),
            &frame,
            value.clone(),
        ) {
            continue;
        }
        // `decode_frame` keeps frames within `u32` (`MAX_FRAME`), so these cannot truncate.
        let range = |r: Range<usize>| Part::Range {
            own: false,
            start: r.start as u32,
            end: r.end as u32,
        };
        pairs.push((range(key), range(value)));
    }
    let mut b = AmpBox {
        frame,
        own: Vec::new(),
        pairs,
    };
    b.sort_pairs();
    b
}

/// Decodes a buffer holding whole boxes and nothing else, as AmpList values do. Inside a value
/// a box may be empty (its terminator alone: a row whose fields are all absent), as Twisted
/// writes and reads it; only a whole message may not be.
#[inline]
pub fn decode_all(bytes: &[u8], config: BoxCodecConfig) -> Result<Vec<AmpBox>, String> {
    let mut codec = BoxCodec::new(config);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.starts_with(&[0, 0]) {
            bytes::Buf::advance(&mut buf, 2);
            out.push(AmpBox::new());
            continue;
        }
        match codec.decode(&mut buf) {
            Ok(Some(b)) => out.push(b),
            Ok(None) => return Err("truncated box".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decode_one(bytes: &[u8]) -> Result<Option<AmpBox>, BoxCodecError> {
        BoxCodec::default().decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_and_keys_stay_sorted() {
        // b=1, a=2, b=3 on the wire.
        let wire = [
            0, 1, b'b', 0, 1, b'1', 0, 1, b'a', 0, 1, b'2', 0, 1, b'b', 0, 1, b'3', 0, 0,
        ];
        let b = decode_one(&wire).unwrap().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.get("a"), Some(&b"2"[..]));
        assert_eq!(b.get("b"), Some(&b"3"[..]));
        let keys: Vec<_> = b.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b"a", b"b"]);
        assert_eq!(b, AmpBox::from_iter([("b", "3"), ("a", "2")]));

        let mut c = AmpBox::new();
        for k in ["m", "c", "x", "a"] {
            assert_eq!(c.insert(k, "1"), None);
        }
        assert_eq!(c.insert("c", "2"), Some(Bytes::from_static(b"1")));
        assert_eq!(c.remove("m"), Some(Bytes::from_static(b"1")));
        assert_eq!(c.remove("m"), None);
        assert_eq!(
            c.to_bytes().unwrap(),
            AmpBox::from_iter([("x", "1"), ("a", "1"), ("c", "2")])
                .to_bytes()
                .unwrap()
        );
    }

    #[test]
    fn incomplete_input_needs_more_and_consumes_nothing() {
        let full = [0, 1, b'a', 0, 1, b'1', 0, 0];
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            let mut codec = BoxCodec::default();
            assert_eq!(codec.decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
            buf.extend_from_slice(&full[cut..]);
            let b = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(b.get("a"), Some(&b"1"[..]));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn key_prefix_over_255_fails_before_the_key_arrives() {
        assert_eq!(
            decode_one(&[1, 0]),
            Err(BoxCodecError::KeyTooLong { len: 256 })
        );
        assert_eq!(
            decode_one(&[0, 1, b'a', 0, 0, 0xff, 0xff]),
            Err(BoxCodecError::KeyTooLong { len: 65535 })
        );
    }

    #[test]
    fn empty_box_is_an_error() {
        assert_eq!(decode_one(&[0, 0]), Err(BoxCodecError::EmptyBox));
    }

    #[test]
    fn claimed_value_beyond_max_box_bytes_fails_without_waiting() {
        let mut codec = BoxCodec::new(BoxCodecConfig::default().max_box_bytes(100));
        let mut buf = BytesMut::from(&[0, 1, b'a', 0xff, 0xff][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(BoxCodecError::BoxTooLarge { max: 100 })
        );
    }

    #[test]
    fn too_many_keys() {
        let mut codec = BoxCodec::new(BoxCodecConfig::default().max_keys_per_box(2));
        let mut buf = BytesMut::from(&[0, 1, b'a', 0, 0, 0, 1, b'b', 0, 0, 0, 1, b'c'][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(BoxCodecError::TooManyKeys { max: 2 })
        );
    }

    #[test]
    fn extra_pairs_are_merged_in_key_order_and_replace_the_boxs_own() {
        let b = AmpBox::from_iter([("b", "1"), ("_ask", "mine"), ("A", "2")]);
        let mut merged = BytesMut::new();
        b.encode_with(&[(b"_ask", b"7"), (b"_command", b"Sum")], &mut merged, None)
            .unwrap();
        let expected =
            AmpBox::from_iter([("b", "1"), ("_ask", "7"), ("A", "2"), ("_command", "Sum")]);
        assert_eq!(merged, expected.to_bytes().unwrap());
        // Extra pairs after every key of the box, and into an empty box.
        let mut tail = BytesMut::from(&b"before"[..]);
        AmpBox::from_iter([("A", "2")])
            .encode_with(&[(b"z", b"")], &mut tail, None)
            .unwrap();
        assert_eq!(
            &tail[..],
            b"before\x00\x01A\x00\x012\x00\x01z\x00\x00\x00\x00"
        );
        let mut only = BytesMut::new();
        AmpBox::new()
            .encode_with(&[(b"_answer", b"1")], &mut only, None)
            .unwrap();
        assert_eq!(&only[..], b"\x00\x07_answer\x00\x011\x00\x00");
        // More pairs than are gathered on the stack.
        let many = AmpBox::from_iter((0..MERGED_ON_STACK + 3).map(|i| (format!("k{i:02}"), "v")));
        let mut merged = BytesMut::new();
        many.encode_with(&[(b"_ask", b"1"), (b"k03", b"new")], &mut merged, None)
            .unwrap();
        let mut expected = many.clone();
        expected.insert("_ask", "1");
        expected.insert("k03", "new");
        assert_eq!(merged, expected.to_bytes().unwrap());
        // Limits hold for the extra pairs too, and nothing is written then.
        let mut none = BytesMut::new();
        let long = vec![b'k'; 256];
        assert_eq!(
            AmpBox::from_iter([("a", "1")]).encode_with(&[(&long, b"v")], &mut none, None),
            Err(BoxCodecError::KeyTooLong { len: 256 })
        );
        assert_eq!(
            AmpBox::new().encode_with(&[], &mut none, None),
            Err(BoxCodecError::EmptyBox)
        );
        assert!(none.is_empty());
    }

    #[test]
    fn a_box_over_the_given_limits_is_not_written() {
        // Three keys, one of them replaced by an extra pair: three keys on the wire.
        let b = AmpBox::from_iter([("a", "1"), ("_ask", "mine"), ("b", "2")]);
        let wire_len = b.to_bytes().unwrap().len();
        let extra: &[(&[u8], &[u8])] = &[(b"_ask", b"mine")];
        let fits = BoxCodecConfig::default()
            .max_keys_per_box(3)
            .max_box_bytes(wire_len);
        let mut out = BytesMut::new();
        b.encode_with(extra, &mut out, Some(&fits)).unwrap();
        assert_eq!(out, b.to_bytes().unwrap());
        let mut none = BytesMut::new();
        assert_eq!(
            b.encode_with(extra, &mut none, Some(&fits.max_keys_per_box(2))),
            Err(BoxCodecError::TooManyKeys { max: 2 })
        );
        assert_eq!(
            b.encode_with(extra, &mut none, Some(&fits.max_box_bytes(wire_len - 1))),
            Err(BoxCodecError::BoxTooLarge { max: wire_len - 1 })
        );
        assert!(none.is_empty());
    }

    #[test]
    fn taken_pairs_are_left_out_of_the_decoded_box() {
        let wire = AmpBox::from_iter([("_ask", "1"), ("a", "2"), ("_command", "X")])
            .to_bytes()
            .unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let mut taken = Vec::new();
        let b = BoxCodec::default()
            .decode_taking(&mut buf, |key, frame, value| {
                let special = key.starts_with(b"_");
                if special {
                    taken.push((Bytes::copy_from_slice(key), frame.slice(value)));
                }
                special
            })
            .unwrap()
            .unwrap();
        assert_eq!(b, AmpBox::from_iter([("a", "2")]));
        assert_eq!(
            taken,
            [
                (Bytes::from("_ask"), Bytes::from("1")),
                (Bytes::from("_command"), Bytes::from("X"))
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn dropped_boxes_leave_their_emptied_vectors_for_the_next_ones_up_to_a_bound() {
        let spares = || SPARE.with_borrow(Vec::len);
        let boxes: Vec<AmpBox> = (0..100)
            .map(|i| AmpBox::from_iter([("k", i.to_string())]))
            .collect();
        let big = AmpBox::from_iter((0..SPARE_PAIRS + 1).map(|i| (i.to_string(), "v")));
        drop(big);
        assert_eq!(spares(), 0, "a vector with room for many pairs is freed");
        drop(boxes);
        assert_eq!(spares(), SPARE_VECS);
        // Boxes made from spares hold only their own pairs.
        let mut b = AmpBox::new();
        b.insert("b", "2");
        b.insert("a", "1");
        assert_eq!(spares(), SPARE_VECS - 1);
        assert_eq!(b.iter().count(), 2);
        assert_eq!(
            b.to_bytes().unwrap(),
            &b"\x00\x01a\x00\x011\x00\x01b\x00\x012\x00\x00"[..]
        );
        let wire = AmpBox::from_iter([("x", "1"), ("y", "2"), ("z", "3")])
            .to_bytes()
            .unwrap();
        let decoded = decode_one(&wire).unwrap().unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded.get("y"), Some(&b"2"[..]));
        // Own buffers the same way: small ones are kept, up to the bound, big ones freed.
        let owns = || SPARE_OWN.with_borrow(Vec::len);
        let before = owns();
        let mut big = AmpBox::new();
        big.insert_copy(b"k", &[0; SPARE_OWN_BYTES + 1]);
        drop(big);
        assert_eq!(owns(), before.saturating_sub(1));
        let copied: Vec<AmpBox> = (0..SPARE_VECS + 5)
            .map(|i| {
                let mut b = AmpBox::new();
                b.insert_copy(b"k", i.to_string().as_bytes());
                b
            })
            .collect();
        assert_eq!(owns(), 0);
        drop(copied);
        assert_eq!(owns(), SPARE_VECS);
        let mut b = AmpBox::new();
        b.insert_copy(b"k", b"fresh");
        assert_eq!(b.iter().collect::<Vec<_>>(), [(&b"k"[..], &b"fresh"[..])]);
    }

    #[test]
    fn received_copied_and_given_pairs_read_alike() {
        let wire = AmpBox::from_iter([("a", "1"), ("c", "3")])
            .to_bytes()
            .unwrap();
        let mut b = decode_one(&wire).unwrap().unwrap();
        // Pairs of the frame, of the box's own buffer and of their own, in one box.
        b.insert_copy(b"b", b"2");
        assert_eq!(b.insert("d", "4"), None);
        b.insert_copy(b"e", b"5");
        let expected =
            AmpBox::from_iter([("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
        assert_eq!(b, expected);
        assert_eq!(b.to_bytes().unwrap(), expected.to_bytes().unwrap());
        let hash = |b: &AmpBox| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&b), hash(&expected));
        assert_ne!(b, AmpBox::from_iter([("a", "1")]));
        // Shared bytes of each kind of part.
        for (k, v) in [("a", "1"), ("b", "2"), ("d", "4")] {
            assert_eq!(b.get_bytes(k), Some(Bytes::from(v)));
        }
        assert_eq!(b.get_bytes("z"), None);
        // Replacing and removing each kind.
        assert_eq!(b.insert("a", "one"), Some(Bytes::from("1")));
        assert_eq!(b.insert("b", "two"), Some(Bytes::from("2")));
        b.insert_copy(b"d", b"four");
        assert_eq!(b.remove("c"), Some(Bytes::from("3")));
        assert_eq!(b.remove("e"), Some(Bytes::from("5")));
        assert_eq!(b.remove("d"), Some(Bytes::from("four")));
        assert_eq!(b.remove("d"), None);
        assert_eq!(b, AmpBox::from_iter([("a", "one"), ("b", "two")]));
        assert_eq!(format!("{b:?}"), r#"{"a": "one", "b": "two"}"#);
        let pairs: Vec<_> = b.iter().rev().collect();
        assert_eq!(pairs, [(&b"b"[..], &b"two"[..]), (&b"a"[..], &b"one"[..])]);
    }

    #[test]
    fn a_copied_pair_can_replace_a_received_one_and_many_pairs_are_searched() {
        let many = AmpBox::from_iter((0..20).map(|i| (format!("k{i:02}"), i.to_string())));
        let mut b = decode_one(&many.to_bytes().unwrap()).unwrap().unwrap();
        assert_eq!(b, many);
        b.insert_copy(b"k13", b"new");
        assert_eq!(b.get("k13"), Some(&b"new"[..]));
        assert_eq!(b.get("k12"), Some(&b"12"[..]));
        assert!(b.contains_key("k19"));
        assert!(!b.contains_key("k20"));
        assert_eq!(b.len(), 20);
        assert_eq!(b.encoded_len(), b.to_bytes().unwrap().len());
    }

    #[test]
    fn a_compact_copy_is_equal_and_holds_what_memory_len_counts() {
        let many = AmpBox::from_iter((0..1000).map(|i| (format!("{i:03}"), String::new())));
        let received = decode_one(&many.to_bytes().unwrap()).unwrap().unwrap();
        let compact = received.to_compact();
        assert_eq!(compact, many);
        assert_eq!(compact.encoded_len(), received.encoded_len());
        // Its bytes and its table of pairs, each of just its size, and nothing of the frame.
        let pair = std::mem::size_of::<(Part, Part)>();
        assert_eq!(compact.own.capacity(), 3000);
        assert_eq!(compact.pairs.capacity(), 1000);
        assert!(compact.frame.is_empty());
        assert_eq!(
            compact.memory_len(),
            std::mem::size_of::<AmpBox>() + 3000 + 1000 * pair
        );
        // Far more than its encoded length: each pair costs its table entry.
        assert!(compact.memory_len() > 5 * compact.encoded_len());
        // A received box counts its frame as well as its table.
        assert!(received.memory_len() > received.encoded_len() + 1000 * pair);
    }

    #[test]
    fn small_bytes_are_inline_when_short_and_shared_when_long() {
        let long = [b'x'; SMALL_INLINE + 1];
        let frame = Bytes::copy_from_slice(&[&b"ab"[..], &long].concat());
        let short = SmallBytes::from_frame(&frame, 0..2);
        let shared = SmallBytes::from_frame(&frame, 2..frame.len());
        assert!(matches!(short.0, Small::Inline { len: 2, .. }));
        assert!(matches!(&shared.0, Small::Shared(b) if b.as_ptr() == frame[2..].as_ptr()));
        let edge = SmallBytes::copy_from_slice(&long[..SMALL_INLINE]);
        assert!(matches!(edge.0, Small::Inline { .. }));
        assert_eq!(edge.len(), SMALL_INLINE);
        assert!(matches!(
            SmallBytes::copy_from_slice(&long).0,
            Small::Shared(_)
        ));
        assert!(matches!(
            SmallBytes::from(frame.clone()).0,
            Small::Shared(_)
        ));
        // Compared, ordered, hashed and converted by their bytes, whichever form they take.
        assert_eq!(short, "ab");
        assert_eq!(short, *"ab");
        assert_eq!(short, &b"ab"[..]);
        assert_eq!(short, b"ab"[..]);
        assert_eq!(short, Bytes::from("ab"));
        assert_eq!(Bytes::from("ab"), short);
        assert_eq!(shared, SmallBytes::from(&long[..]));
        assert!(short < shared);
        assert_eq!(
            short.cmp(&SmallBytes::from("ab")),
            std::cmp::Ordering::Equal
        );
        let set: std::collections::HashSet<SmallBytes> =
            [short.clone(), SmallBytes::from(Bytes::from("ab"))].into();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&b"ab"[..]));
        assert_eq!(Bytes::from(shared.clone()), Bytes::copy_from_slice(&long));
        assert_eq!(Bytes::from(short.clone()), Bytes::from("ab"));
        assert_eq!(shared.to_bytes(), Bytes::copy_from_slice(&long));
        assert_eq!(short.to_bytes(), "ab");
        assert_eq!(short.as_ref(), b"ab");
        // Printed as `Bytes` prints itself.
        let odd = SmallBytes::from(&b"a\"\\\n\r\t\0\x7f\xff z"[..]);
        assert_eq!(format!("{odd:?}"), format!("{:?}", odd.to_bytes()));
        assert_eq!(format!("{shared:?}"), format!("{:?}", shared.to_bytes()));
    }

    #[test]
    fn encode_rejects_oversized_parts() {
        let mut b = AmpBox::new();
        b.insert(vec![b'k'; 256], "v");
        assert_eq!(b.to_bytes(), Err(BoxCodecError::KeyTooLong { len: 256 }));
        let mut b = AmpBox::new();
        b.insert("k", vec![0u8; 65536]);
        assert!(matches!(
            b.to_bytes(),
            Err(BoxCodecError::ValueTooLong { len: 65536, .. })
        ));
        let mut b = AmpBox::new();
        b.insert("k", vec![0u8; 65535]);
        assert_eq!(b.to_bytes().map(|x| x.len()), Ok(65535 + 3 + 2 + 2));
    }
}
