//! AMP boxes and their byte codec: no I/O, incremental, limits checked before allocating.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// The longest key AMP allows (`MAX_KEY_LENGTH` in Twisted).
pub const MAX_KEY_LENGTH: usize = 0xff;
/// The longest value AMP allows (`MAX_VALUE_LENGTH` in Twisted).
pub const MAX_VALUE_LENGTH: usize = 0xffff;

/// One AMP box: a map from byte-string keys to byte-string values.
///
/// Keys are kept sorted bytewise, so encoding a box gives exactly the bytes Twisted's
/// `AmpBox.serialize` gives for the same pairs. A key that appears twice in a received box keeps
/// its last value, as a Python `dict` does.
///
/// ```
/// # mod pb { pub use pb_proto as proto; }
/// use pb::proto::amp::codec::AmpBox;
///
/// let mut b = AmpBox::new();
/// b.insert("_command", "Sum");
/// b.insert("a", "13");
/// assert_eq!(b.get("a"), Some(&b"13"[..]));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct AmpBox {
    /// Sorted by key, each key once. A box has a handful of keys: a sorted vector is one
    /// allocation where a `BTreeMap` took a node of eleven pairs and its bookkeeping.
    pairs: Vec<(Bytes, Bytes)>,
}

impl AmpBox {
    /// An empty box.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, returning the value it replaces.
    #[inline]
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Option<Bytes> {
        let (key, value) = (key.into(), value.into());
        if self.pairs.capacity() == 0 {
            self.pairs = spare_pairs(1);
        }
        match self.find(&key) {
            Ok(i) => self
                .pairs
                .get_mut(i)
                .map(|(_, old)| std::mem::replace(old, value)),
            Err(i) => {
                self.pairs.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`, if present.
    #[inline]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        self.get_bytes(key).map(|v| v.as_ref())
    }

    /// The value of `key` as shared bytes, if present.
    #[inline]
    pub fn get_bytes(&self, key: impl AsRef<[u8]>) -> Option<&Bytes> {
        let i = self.position(key.as_ref())?;
        self.pairs.get(i).map(|(_, v)| v)
    }

    /// Removes `key`, returning its value.
    #[inline]
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> Option<Bytes> {
        let i = self.position(key.as_ref())?;
        Some(self.pairs.remove(i).1)
    }

    /// Whether `key` is present.
    #[inline]
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.position(key.as_ref()).is_some()
    }

    /// Where `key` is, or where it would go.
    #[inline]
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        self.pairs.binary_search_by(|(k, _)| k.as_ref().cmp(key))
    }

    /// Where `key` is. Small boxes (nearly all) are scanned: an equality test compares lengths
    /// first, where the binary search's ordering compares bytes every time.
    #[inline]
    fn position(&self, key: &[u8]) -> Option<usize> {
        if self.pairs.len() <= 8 {
            self.pairs.iter().position(|(k, _)| k.as_ref() == key)
        } else {
            self.find(key).ok()
        }
    }

    /// A box of `pairs` in any order; of a key given twice the last value stays, as in a Python
    /// `dict`.
    #[inline]
    fn from_pairs(mut pairs: Vec<(Bytes, Bytes)>) -> Self {
        if !pairs.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)) {
            // Stable, so equal keys stay in arrival order and the last one can win.
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs.dedup_by(|later, kept| {
                if later.0 == kept.0 {
                    std::mem::swap(&mut later.1, &mut kept.1);
                    true
                } else {
                    false
                }
            });
        }
        Self { pairs }
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
        AmpBoxIter(self.pairs.iter())
    }

    /// The number of bytes [`AmpBox::encode`] writes for this box.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        self.pairs
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>()
            + 2
    }

    /// Checks every key and value against AMP's limits, as Twisted does before sending.
    #[inline]
    pub fn validate(&self) -> Result<(), BoxCodecError> {
        if self.pairs.is_empty() {
            return Err(BoxCodecError::EmptyBox);
        }
        for (k, v) in &self.pairs {
            check_pair(k, v)?;
        }
        Ok(())
    }

    /// Appends the wire form of this box to `dst`; nothing is written if a limit is broken.
    #[inline]
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), BoxCodecError> {
        self.encode_with(&[], dst)
    }

    /// Appends the wire form of this box with the pairs of `extra` added (replacing the box's
    /// own value of a key they share), as if they had been inserted first; nothing is written
    /// if a limit is broken. `extra` must be sorted by key, each key once.
    ///
    /// The dispatcher's special keys (`_ask`, `_answer`, ...) go in this way: merged into the
    /// sorted pairs as they are written, with no insertion into the box and no copy of it.
    #[inline]
    pub(crate) fn encode_with(
        &self,
        extra: &[(&[u8], &[u8])],
        dst: &mut BytesMut,
    ) -> Result<(), BoxCodecError> {
        debug_assert!(extra.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)));
        // The pairs in key order, gathered on the stack as they are checked (a box has a
        // handful), so that writing them needs no second merge.
        let mut merged: [(&[u8], &[u8]); MERGED_ON_STACK] = [(&[], &[]); MERGED_ON_STACK];
        let mut n = 0;
        let mut len = 2;
        merge_pairs(&self.pairs, extra, |k, v| {
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
            None => merge_pairs(&self.pairs, extra, put)?,
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

/// Hands `f` the pairs of a box's sorted `pairs` with those of the sorted `extra` merged in, in
/// key order; a key in both is handed over once, with `extra`'s value.
#[inline]
fn merge_pairs<'a, E>(
    pairs: &'a [(Bytes, Bytes)],
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
    static SPARE: std::cell::RefCell<Vec<Vec<(Bytes, Bytes)>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The most pair vectors kept per thread.
const SPARE_VECS: usize = 32;
/// Vectors with room for more pairs than this are not kept (so at most 16 KiB a thread).
const SPARE_PAIRS: usize = 8;

/// An empty pair vector with room for `pairs` pairs: a spare one if there is one.
#[inline]
fn spare_pairs(pairs: usize) -> Vec<(Bytes, Bytes)> {
    if pairs <= SPARE_PAIRS
        && let Ok(Some(spare)) = SPARE.try_with(|s| s.try_borrow_mut().ok()?.pop())
    {
        let mut spare = spare;
        spare.reserve(pairs);
        return spare;
    }
    Vec::with_capacity(pairs.max(4))
}

impl Drop for AmpBox {
    #[inline]
    fn drop(&mut self) {
        let capacity = self.pairs.capacity();
        if capacity == 0 || capacity > SPARE_PAIRS {
            return;
        }
        let mut pairs = std::mem::take(&mut self.pairs);
        pairs.clear();
        // After the thread's spares are gone (at its exit), the vector is simply freed.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && s.len() < SPARE_VECS
            {
                s.push(pairs);
            }
        });
    }
}

impl fmt::Debug for AmpBox {
    #[inline]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.pairs {
            m.entry(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v));
        }
        m.finish()
    }
}

impl<K: Into<Bytes>, V: Into<Bytes>> FromIterator<(K, V)> for AmpBox {
    #[inline]
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_pairs(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<'a> IntoIterator for &'a AmpBox {
    type Item = (&'a Bytes, &'a Bytes);
    type IntoIter = AmpBoxIter<'a>;

    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The pairs of an [`AmpBox`] in bytewise key order, from [`AmpBox::iter`].
#[derive(Clone, Debug)]
pub struct AmpBoxIter<'a>(std::slice::Iter<'a, (Bytes, Bytes)>);

impl<'a> Iterator for AmpBoxIter<'a> {
    type Item = (&'a Bytes, &'a Bytes);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for AmpBoxIter<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl ExactSizeIterator for AmpBoxIter<'_> {}

impl std::iter::FusedIterator for AmpBoxIter<'_> {}

/// Limits on received boxes. Twisted has none beyond the key and value lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BoxCodecConfig {
    /// The most keys one received box may hold (default 1024).
    pub max_keys_per_box: usize,
    /// The most bytes one received box may take on the wire, terminator included (default 1 MiB).
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
    /// A received box with more keys than [`BoxCodecConfig::max_keys_per_box`].
    #[error("box has more than {max} keys")]
    TooManyKeys {
        /// The configured maximum.
        max: usize,
    },
    /// A received box longer than [`BoxCodecConfig::max_box_bytes`].
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
        self.decode_taking(src, |_, value| Some(value))
    }

    /// [`BoxCodec::decode`], handing each pair's key and value to `take` first as the box is
    /// parsed: a value it keeps (returns `None` for) is left out of the box. The dispatcher takes its special
    /// keys this way, in the one pass that splits the box, rather than looking each one up and
    /// removing it afterwards.
    #[inline]
    pub(crate) fn decode_taking(
        &mut self,
        src: &mut BytesMut,
        take: impl FnMut(&[u8], Bytes) -> Option<Bytes>,
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
        if at_least > self.config.max_box_bytes {
            Err(BoxCodecError::BoxTooLarge {
                max: self.config.max_box_bytes,
            })
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

/// Splits a frame already scanned by [`BoxCodec::decode`] into pairs, sharing its storage;
/// the values `take` keeps (returns `None` for) are left out.
#[inline]
fn parse_complete(
    frame: Bytes,
    keys: usize,
    mut take: impl FnMut(&[u8], Bytes) -> Option<Bytes>,
) -> AmpBox {
    let mut pairs = spare_pairs(keys);
    // By offsets into the frame: a key is made shared bytes only if the box keeps it.
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
        let key_bytes = frame.get(key.clone()).unwrap_or_default();
        if let Some(value) = take(key_bytes, frame.slice(value)) {
            pairs.push((frame.slice(key), value));
        }
    }
    AmpBox::from_pairs(pairs)
}

/// Decodes a buffer holding whole boxes and nothing else, as AmpList values do.
#[inline]
pub fn decode_all(bytes: &[u8], config: BoxCodecConfig) -> Result<Vec<AmpBox>, String> {
    let mut codec = BoxCodec::new(config);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
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
        let keys: Vec<_> = b.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, ["a", "b"]);
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
        b.encode_with(&[(b"_ask", b"7"), (b"_command", b"Sum")], &mut merged)
            .unwrap();
        let expected =
            AmpBox::from_iter([("b", "1"), ("_ask", "7"), ("A", "2"), ("_command", "Sum")]);
        assert_eq!(merged, expected.to_bytes().unwrap());
        // Extra pairs after every key of the box, and into an empty box.
        let mut tail = BytesMut::from(&b"before"[..]);
        AmpBox::from_iter([("A", "2")])
            .encode_with(&[(b"z", b"")], &mut tail)
            .unwrap();
        assert_eq!(
            &tail[..],
            b"before\x00\x01A\x00\x012\x00\x01z\x00\x00\x00\x00"
        );
        let mut only = BytesMut::new();
        AmpBox::new()
            .encode_with(&[(b"_answer", b"1")], &mut only)
            .unwrap();
        assert_eq!(&only[..], b"\x00\x07_answer\x00\x011\x00\x00");
        // More pairs than are gathered on the stack.
        let many = AmpBox::from_iter((0..MERGED_ON_STACK + 3).map(|i| (format!("k{i:02}"), "v")));
        let mut merged = BytesMut::new();
        many.encode_with(&[(b"_ask", b"1"), (b"k03", b"new")], &mut merged)
            .unwrap();
        let mut expected = many.clone();
        expected.insert("_ask", "1");
        expected.insert("k03", "new");
        assert_eq!(merged, expected.to_bytes().unwrap());
        // Limits hold for the extra pairs too, and nothing is written then.
        let mut none = BytesMut::new();
        let long = vec![b'k'; 256];
        assert_eq!(
            AmpBox::from_iter([("a", "1")]).encode_with(&[(&long, b"v")], &mut none),
            Err(BoxCodecError::KeyTooLong { len: 256 })
        );
        assert_eq!(
            AmpBox::new().encode_with(&[], &mut none),
            Err(BoxCodecError::EmptyBox)
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
            .decode_taking(&mut buf, |key, value| {
                if key.starts_with(b"_") {
                    taken.push((Bytes::copy_from_slice(key), value));
                    None
                } else {
                    Some(value)
                }
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
