//! The encoder: [`BananaCodec::encode`], byte for byte as Twisted's `Banana._encode`.

use bytes::{BufMut, BytesMut};

use super::{
    BananaCodec, BananaCodecError, BigInt, Dialect, Element, FLOAT, INT, LIST, LONGINT, LONGNEG,
    NEG, STRING, VOCAB, vocab_index,
};

/// The largest magnitude sent as INT or NEG: 2³¹ − 1, and 2³¹ for NEG.
const INT_MAX: u64 = (1 << 31) - 1;

impl BananaCodec {
    /// Appends the wire form of `element` to `dst`, as Twisted encodes the same value.
    ///
    /// Integers go as INT / NEG within ±2³¹ (−2³¹ is NEG) and as LONGINT / LONGNEG beyond. In
    /// the `pb` dialect a byte string equal to a [`VOCABULARY`](super::VOCABULARY) word goes as
    /// that word's VOCAB element. The limits hold on this side too: a string or list over the
    /// size limit, an integer over `7 * prefix_limit` bits, lists nested deeper than the
    /// depth limit or an expression over the expression budget (charged as the decoder
    /// charges it) are errors, and then nothing is appended.
    pub fn encode(&self, element: &Element, dst: &mut BytesMut) -> Result<(), BananaCodecError> {
        self.encode_nested(element, dst, 0)
    }

    /// As [`BananaCodec::encode`], for an element that goes `depth` lists deep inside a larger
    /// expression (a value placed in a message): its lists count from there toward
    /// [`max_depth`](super::BananaConfig::max_depth), as the peer's decoder counts them. Its
    /// own charge alone is held to the expression budget; the whole expression's is checked
    /// by [`BananaCodec::check_expressions`].
    pub fn encode_nested(
        &self,
        element: &Element,
        dst: &mut BytesMut,
        depth: usize,
    ) -> Result<(), BananaCodecError> {
        let start = dst.len();
        let mut charged = 0;
        let result = self.encode_at(element, dst, depth, &mut charged);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    /// Appends the header of a list of `len` elements, whose elements the caller appends
    /// after it (already encoded pieces may be joined this way: Banana is concatenative).
    /// A list over the size limit is an error, and then nothing is appended.
    pub fn encode_list_header(
        &self,
        len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), BananaCodecError> {
        if len > self.config.size_limit {
            return Err(BananaCodecError::ListTooLong {
                len,
                limit: self.config.size_limit,
            });
        }
        put_prefix_u64(dst, len as u64);
        dst.put_u8(LIST);
        Ok(())
    }

    fn encode_at(
        &self,
        element: &Element,
        dst: &mut BytesMut,
        depth: usize,
        charged: &mut usize,
    ) -> Result<(), BananaCodecError> {
        let body = match element {
            Element::Bytes(b) if !(self.dialect == Dialect::Pb && vocab_index(b).is_some()) => {
                b.len()
            }
            _ => 0,
        };
        self.charge_to(charged, body)?;
        match element {
            Element::List(items) => {
                if depth >= self.config.max_depth {
                    return Err(BananaCodecError::TooDeep {
                        limit: self.config.max_depth,
                    });
                }
                if items.len() > self.config.size_limit {
                    return Err(BananaCodecError::ListTooLong {
                        len: items.len(),
                        limit: self.config.size_limit,
                    });
                }
                put_prefix_u64(dst, items.len() as u64);
                dst.put_u8(LIST);
                for item in items {
                    self.encode_at(item, dst, depth + 1, charged)?;
                }
            }
            Element::Int(v) => self.encode_int(*v, dst)?,
            Element::BigInt(b) => self.encode_bigint(b, dst)?,
            Element::Float(f) => {
                dst.put_u8(FLOAT);
                dst.put_f64(*f);
            }
            Element::Bytes(b) => {
                if self.dialect == Dialect::Pb
                    && let Some(index) = vocab_index(b)
                {
                    put_prefix_u64(dst, u64::from(index));
                    dst.put_u8(VOCAB);
                    return Ok(());
                }
                if b.len() > self.config.size_limit {
                    return Err(BananaCodecError::StringTooLong {
                        len: b.len(),
                        limit: self.config.size_limit,
                    });
                }
                put_prefix_u64(dst, b.len() as u64);
                dst.put_u8(STRING);
                dst.put_slice(b);
            }
        }
        Ok(())
    }

    fn encode_int(&self, v: i64, dst: &mut BytesMut) -> Result<(), BananaCodecError> {
        let m = v.unsigned_abs();
        let type_byte = match (v < 0, m) {
            (false, m) if m <= INT_MAX => INT,
            (false, _) => LONGINT,
            (true, m) if m <= INT_MAX + 1 => NEG,
            (true, _) => LONGNEG,
        };
        self.check_digits(base128_len(m))?;
        put_prefix_u64(dst, m);
        dst.put_u8(type_byte);
        Ok(())
    }

    fn encode_bigint(&self, b: &BigInt, dst: &mut BytesMut) -> Result<(), BananaCodecError> {
        // A BigInt built by hand may hold a small value: encode it as Twisted would.
        if let Some(v) = b.to_i64() {
            return self.encode_int(v, dst);
        }
        let digits = b.base128_digits();
        self.check_digits(digits.len())?;
        dst.put_slice(&digits);
        dst.put_u8(if b.is_negative() { LONGNEG } else { LONGINT });
        Ok(())
    }

    /// Charges one element and `body` bytes of it to an expression's budget, as the decoder
    /// does: what the peer's decoder would refuse is refused here.
    pub(super) fn charge_to(
        &self,
        charged: &mut usize,
        body: usize,
    ) -> Result<(), BananaCodecError> {
        let cost = std::mem::size_of::<Element>().saturating_add(body);
        *charged = charged.saturating_add(cost);
        if *charged > self.config.max_expression_size {
            return Err(BananaCodecError::ExpressionTooLarge {
                limit: self.config.max_expression_size,
            });
        }
        Ok(())
    }

    fn check_digits(&self, digits: usize) -> Result<(), BananaCodecError> {
        if digits > self.config.prefix_limit {
            return Err(BananaCodecError::IntTooLarge {
                digits,
                limit: self.config.prefix_limit,
            });
        }
        Ok(())
    }
}

/// How many base-128 digits `v` takes (1 for zero).
fn base128_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Appends `v` as a base-128 prefix (Twisted's `int2b128`): `00` for zero.
pub(super) fn put_prefix_u64(dst: &mut BytesMut, mut v: u64) {
    loop {
        dst.put_u8((v & 0x7f) as u8);
        v >>= 7;
        if v == 0 {
            break;
        }
    }
}
