//! The incremental decoder: [`BananaCodec::decode`].

use bytes::{Buf, BytesMut};

use super::{
    BananaCodec, BananaCodecError, BigInt, Dialect, Element, FLOAT, INT, LIST, LONGINT, LONGNEG,
    NEG, STRING, VOCAB, vocab_word,
};

/// The most elements reserved for a list when its header arrives.
const INITIAL_LIST_CAPACITY: usize = 8;

/// What decoding one element header (prefix and type byte) did.
enum Step {
    /// Not enough bytes yet; nothing was consumed.
    Incomplete,
    /// An element was consumed (or a list opened).
    Done,
}

impl BananaCodec {
    /// Takes the next complete top-level expression out of `src`.
    ///
    /// Returns `Ok(None)` while the expression is incomplete. Elements inside an unfinished
    /// list are consumed from `src` and kept in the codec, so a long expression trickling in
    /// costs linear time; an element whose body has not fully arrived (a string, a float) is
    /// left in `src` until it has. Bytes after the returned expression stay in `src`.
    ///
    /// Every limit is checked on the prefix, before any allocation: a length over
    /// [`BananaConfig::size_limit`](super::BananaConfig::size_limit) fails at once, whatever
    /// follows, and a list's storage grows with the elements that actually arrive, never by
    /// its announced length. After an error the codec refuses to decode further
    /// ([`BananaCodecError::Failed`]).
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Element>, BananaCodecError> {
        if self.failed {
            return Err(BananaCodecError::Failed);
        }
        match self.decode_inner(src) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failed = true;
                self.stack = Vec::new();
                self.charged = 0;
                tracing::debug!(error = %e, "banana decode failed");
                Err(e)
            }
        }
    }

    fn decode_inner(&mut self, src: &mut BytesMut) -> Result<Option<Element>, BananaCodecError> {
        loop {
            let mut done = None;
            match self.step(src, &mut done)? {
                Step::Incomplete => return Ok(None),
                Step::Done => {}
            }
            if let Some(e) = done {
                self.charged = 0;
                return Ok(Some(e));
            }
        }
    }

    /// Checks a list of `len` elements opened `depth` lists deep against the limits.
    fn check_list(&self, len: usize, depth: usize) -> Result<(), BananaCodecError> {
        if len > self.config.size_limit {
            return Err(BananaCodecError::ListTooLong {
                len,
                limit: self.config.size_limit,
            });
        }
        if depth >= self.config.max_depth {
            return Err(BananaCodecError::TooDeep {
                limit: self.config.max_depth,
            });
        }
        Ok(())
    }

    /// Decodes one element header at the front of `src`; a completed top-level expression goes
    /// to `done`.
    fn step(
        &mut self,
        src: &mut BytesMut,
        done: &mut Option<Element>,
    ) -> Result<Step, BananaCodecError> {
        let Some((prefix, type_byte, header)) = split_header(src, self.config.prefix_limit)? else {
            return Ok(Step::Incomplete);
        };
        let item = match type_byte {
            LIST => {
                let len = prefix_usize(prefix);
                self.check_list(len, self.stack.len())?;
                self.charge(0)?;
                src.advance(header);
                if len > 0 {
                    // Never reserve by the announced length: the storage grows with the
                    // elements that arrive (each charged to the budget), at most doubling.
                    self.stack
                        .push((len, Vec::with_capacity(len.min(INITIAL_LIST_CAPACITY))));
                    return Ok(Step::Done);
                }
                Element::List(Vec::new())
            }
            STRING => {
                let len = prefix_usize(prefix);
                if len > self.config.size_limit {
                    return Err(BananaCodecError::StringTooLong {
                        len,
                        limit: self.config.size_limit,
                    });
                }
                if src.len() - header < len {
                    return Ok(Step::Incomplete);
                }
                self.charge(len)?;
                src.advance(header);
                Element::Bytes(src.split_to(len).freeze())
            }
            INT | LONGINT | NEG | LONGNEG => {
                let negative = matches!(type_byte, NEG | LONGNEG);
                let item = int_element(negative, prefix);
                self.charge(0)?;
                src.advance(header);
                item
            }
            FLOAT => {
                // Twisted ignores a prefix before FLOAT; so do we (it is within the limit).
                let Some(body) = src.get(header..header + 8) else {
                    return Ok(Step::Incomplete);
                };
                let mut raw = [0u8; 8];
                raw.copy_from_slice(body);
                self.charge(0)?;
                src.advance(header + 8);
                Element::Float(f64::from_be_bytes(raw))
            }
            VOCAB => {
                let index = prefix_u64(prefix);
                if self.dialect != Dialect::Pb {
                    return Err(BananaCodecError::VocabOutsidePb { index });
                }
                let word = vocab_word(index).ok_or(BananaCodecError::UnknownVocab { index })?;
                self.charge(0)?;
                src.advance(header);
                Element::Bytes(bytes::Bytes::from_static(word))
            }
            other => return Err(BananaCodecError::InvalidTypeByte(other)),
        };
        *done = self.complete(item);
        Ok(Step::Done)
    }

    /// Adds a finished element to the innermost open list, closing every list it completes;
    /// returns the expression when the outermost one closes (or the element, if none is open).
    fn complete(&mut self, mut item: Element) -> Option<Element> {
        loop {
            let Some((expected, items)) = self.stack.last_mut() else {
                return Some(item);
            };
            items.push(item);
            if items.len() < *expected {
                return None;
            }
            let (_, items) = self.stack.pop()?;
            item = Element::List(items);
        }
    }

    /// Charges one element and `body` bytes to the expression's memory budget.
    fn charge(&mut self, body: usize) -> Result<(), BananaCodecError> {
        let mut charged = self.charged;
        let r = self.charge_to(&mut charged, body);
        self.charged = charged;
        r
    }

    /// Checks `src`, the wire form of whole expressions one after another (a message built
    /// from pieces encoded apart), against what a decoder with this codec's limits accepts:
    /// sizes, depth and each expression's budget, charged as [`BananaCodec::decode`] charges
    /// them. A sender calls it on what it is about to send, so that what the peer would refuse
    /// (and close the connection over) is refused here instead. It reads the headers only,
    /// skipping string bodies, and allocates one slot per open list.
    pub fn check_expressions(&self, mut src: &[u8]) -> Result<(), BananaCodecError> {
        // Elements still to come in each open list, innermost last.
        let mut open: Vec<usize> = Vec::new();
        let mut charged = 0;
        while !src.is_empty() {
            let (prefix, type_byte, mut next) =
                split_header(src, self.config.prefix_limit)?.ok_or(BananaCodecError::Truncated)?;
            let mut body = 0;
            let mut opens = 0;
            match type_byte {
                LIST => {
                    let len = prefix_usize(prefix);
                    self.check_list(len, open.len())?;
                    opens = len;
                }
                STRING => {
                    body = prefix_usize(prefix);
                    if body > self.config.size_limit {
                        return Err(BananaCodecError::StringTooLong {
                            len: body,
                            limit: self.config.size_limit,
                        });
                    }
                    next = next.saturating_add(body);
                }
                INT | LONGINT | NEG | LONGNEG => {}
                FLOAT => next += 8,
                VOCAB => {
                    let index = prefix_u64(prefix);
                    if self.dialect != Dialect::Pb {
                        return Err(BananaCodecError::VocabOutsidePb { index });
                    }
                    vocab_word(index).ok_or(BananaCodecError::UnknownVocab { index })?;
                }
                other => return Err(BananaCodecError::InvalidTypeByte(other)),
            }
            self.charge_to(&mut charged, body)?;
            src = src.get(next..).ok_or(BananaCodecError::Truncated)?;
            if opens > 0 {
                open.push(opens);
                continue;
            }
            // The element is complete, and with it every list it completes.
            loop {
                let Some(left) = open.last_mut() else {
                    charged = 0;
                    break;
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                open.pop();
            }
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err(BananaCodecError::Truncated)
        }
    }
}

/// A prefix's value as a length, saturated at `usize::MAX`.
fn prefix_usize(prefix: &[u8]) -> usize {
    usize::try_from(prefix_u64(prefix)).unwrap_or(usize::MAX)
}

/// A prefix's value, saturated at `u64::MAX`.
fn prefix_u64(prefix: &[u8]) -> u64 {
    let mut v: u64 = 0;
    for &d in prefix.iter().rev() {
        v = match v.checked_mul(128) {
            Some(x) => x | u64::from(d & 0x7f),
            None => return u64::MAX,
        };
    }
    v
}

/// The integer element of a prefix, negated when `negative`.
fn int_element(negative: bool, prefix: &[u8]) -> Element {
    // Up to nine digits (63 bits) fit a u64 whose negation also fits an i64.
    if prefix.len() <= 9 {
        let m = prefix_u64(prefix);
        if let Ok(v) = i64::try_from(m) {
            return Element::Int(if negative { -v } else { v });
        }
    }
    Element::from(BigInt::from_base128(negative, prefix))
}

/// An element header: its prefix bytes, its type byte and its length.
type Header<'a> = (&'a [u8], u8, usize);

/// The element header at the front of `src`; `None` if `src` ends first. A prefix longer than
/// `limit` bytes is an error.
fn split_header(src: &[u8], limit: usize) -> Result<Option<Header<'_>>, BananaCodecError> {
    let window = src
        .get(..src.len().min(limit.saturating_add(1)))
        .unwrap_or(&[]);
    let Some(pos) = window.iter().position(|b| b & 0x80 != 0) else {
        if src.len() > limit {
            return Err(BananaCodecError::PrefixTooLong { limit });
        }
        return Ok(None);
    };
    let (prefix, rest) = window.split_at(pos);
    Ok(rest.first().map(|&type_byte| (prefix, type_byte, pos + 1)))
}
