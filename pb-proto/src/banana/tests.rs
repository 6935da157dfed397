//! Banana's tests: Twisted's own vectors (`test_banana.py`, the spec, live captures), chunking
//! at every split point, hostile input, and round trips.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn enc(e: &Element) -> Vec<u8> {
    encode_to_bytes(e, Dialect::None).unwrap().to_vec()
}

fn enc_pb(e: &Element) -> Vec<u8> {
    encode_to_bytes(e, Dialect::Pb).unwrap().to_vec()
}

fn dec(bytes: &[u8]) -> Result<Element, BananaCodecError> {
    decode_complete(bytes, BananaConfig::default(), Dialect::None)
}

fn dec_pb(bytes: &[u8]) -> Result<Element, BananaCodecError> {
    decode_complete(bytes, BananaConfig::default(), Dialect::Pb)
}

fn list(items: Vec<Element>) -> Element {
    Element::List(items)
}

fn b(s: &'static str) -> Element {
    Element::from(s)
}

fn big(text: &str) -> Element {
    Element::from(text.parse::<BigInt>().unwrap())
}

/// Feeds `wire` split at the given points and returns every expression decoded.
fn decode_split(
    codec: &mut BananaCodec,
    wire: &[u8],
    splits: &[usize],
) -> Result<Vec<Element>, BananaCodecError> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let mut last = 0;
    for &at in splits.iter().chain(std::iter::once(&wire.len())) {
        buf.extend_from_slice(&wire[last..at]);
        last = at;
        while let Some(e) = codec.decode(&mut buf)? {
            out.push(e);
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(out)
}

#[test]
fn twisted_sized_integer_types() {
    // test_banana.py::test_sizedIntegerTypes, byte for byte.
    let int_out = b"\x7f\x7f\x7f\x07\x81";
    let max = 2_147_483_647i64;
    for (v, first) in [(max - 2, 0x7d), (max - 1, 0x7e), (max, 0x7f)] {
        let mut want = vec![first];
        want.extend_from_slice(int_out);
        assert_eq!(enc(&Element::Int(v)), want);
    }
    let long_out = b"\x00\x00\x00\x08\x85";
    for (v, first) in [(max + 1, 0), (max + 2, 1), (max + 3, 2)] {
        let mut want = vec![first];
        want.extend_from_slice(long_out);
        assert_eq!(enc(&Element::Int(v)), want);
    }
    let min = -2_147_483_648i64;
    let neg_out = b"\x7f\x7f\x7f\x07\x83";
    for (v, first) in [(min + 2, 0x7e), (min + 1, 0x7f)] {
        let mut want = vec![first];
        want.extend_from_slice(neg_out);
        assert_eq!(enc(&Element::Int(v)), want);
    }
    assert_eq!(enc(&Element::Int(min)), b"\x00\x00\x00\x00\x08\x83");
    let long_neg_out = b"\x00\x00\x00\x08\x86";
    for (v, first) in [(min - 1, 1), (min - 2, 2), (min - 3, 3)] {
        let mut want = vec![first];
        want.extend_from_slice(long_neg_out);
        assert_eq!(enc(&Element::Int(v)), want);
    }
    // And every one of them decodes back (test_crashNegativeLong among them).
    for v in [
        max - 2,
        max,
        max + 1,
        max + 3,
        min + 1,
        min,
        min - 1,
        min - 3,
    ] {
        assert_eq!(dec(&enc(&Element::Int(v))).unwrap(), Element::Int(v));
    }
}

#[test]
fn vectors_from_the_spec_and_live_captures() {
    assert_eq!(enc(&Element::Int(300)), b"\x2c\x02\x81");
    assert_eq!(enc(&Element::Int(4674)), b"\x42\x24\x81");
    assert_eq!(enc(&Element::Int(0)), b"\x00\x81");
    assert_eq!(enc(&Element::Float(1.5)), b"\x84\x3f\xf8\0\0\0\0\0\0");
    let nested = list(vec![Element::Int(1), list(vec![b("hello")])]);
    assert_eq!(enc(&nested), b"\x02\x80\x01\x81\x01\x80\x05\x82hello");
    assert_eq!(
        enc(&Element::Int(123_456_789_123_456_789)),
        b"\x15\x3e\x41\x66\x3a\x69\x26\x5b\x01\x85"
    );
    assert_eq!(enc(&list(vec![])), b"\x00\x80");
    assert_eq!(enc(&b("")), b"\x00\x82");
    // The handshake: the server's offer in the `none` dialect, the client's choice.
    let offer = list(vec![b("pb"), b("none")]);
    assert_eq!(Dialect::offer(), offer);
    assert_eq!(enc(&offer), b"\x02\x80\x02\x82pb\x04\x82none");
    assert_eq!(Dialect::choose(&offer), Some(Dialect::Pb));
    assert_eq!(enc(&b("pb")), b"\x02\x82pb");
    assert_eq!(
        Dialect::chosen(&dec(b"\x02\x82pb").unwrap()),
        Some(Dialect::Pb)
    );
    // Twisted's client takes the first it knows, skipping the others.
    let other = list(vec![b("xml"), Element::Int(1), b("none"), b("pb")]);
    assert_eq!(Dialect::choose(&other), Some(Dialect::None));
    assert_eq!(Dialect::choose(&list(vec![b("xml")])), None);
    assert_eq!(Dialect::choose(&b("pb")), None);
    assert_eq!(Dialect::chosen(&b("xml")), None);
    assert_eq!(Dialect::chosen(&offer), None);
    // ["version", 6] in the pb dialect; `version` is word 19.
    let version = list(vec![b("version"), Element::Int(6)]);
    assert_eq!(enc_pb(&version), b"\x02\x80\x13\x87\x06\x81");
    assert_eq!(dec_pb(b"\x02\x80\x13\x87\x06\x81").unwrap(), version);
    // Outside the pb dialect the word is spelled out.
    assert_eq!(enc(&version), b"\x02\x80\x07\x82version\x06\x81");
    // test_sendPb / test_receivePb: `remote` is word 16.
    assert_eq!(enc_pb(&b("remote")), b"\x10\x87");
    assert_eq!(dec_pb(b"\x10\x87").unwrap(), b("remote"));
}

#[test]
fn live_capture_of_a_pb_call_and_its_answer() {
    // shared reference 1.10: avatar.callRemote("hello", "world"), objectID 2, requestID 3.
    let wire: &[u8] = b"\x07\x80\x1a\x87\x03\x81\x02\x81\x05\x82hello\x01\x81\x02\x80\x0b\x87\
        \x02\x80\x07\x82unicode\x05\x82world\x01\x80\x05\x87";
    let call = list(vec![
        b("message"),
        Element::Int(3),
        Element::Int(2),
        b("hello"),
        Element::Int(1),
        list(vec![b("tuple"), list(vec![b("unicode"), b("world")])]),
        list(vec![b("dictionary")]),
    ]);
    assert_eq!(dec_pb(wire).unwrap(), call);
    assert_eq!(enc_pb(&call), wire);
    let answer: &[u8] =
        b"\x03\x80\x1b\x87\x03\x81\x02\x80\x07\x82unicode\x16\x82hello world from alice";
    let expected = list(vec![
        b("answer"),
        Element::Int(3),
        list(vec![b("unicode"), b("hello world from alice")]),
    ]);
    assert_eq!(dec_pb(answer).unwrap(), expected);
    assert_eq!(enc_pb(&expected), answer);
    // ["decref", 3]
    assert_eq!(
        enc_pb(&list(vec![b("decref"), Element::Int(3)])),
        b"\x02\x80\x1d\x87\x03\x81"
    );
}

#[test]
fn vocabulary_ids_are_twisteds() {
    let expected: [(&[u8], u8); 10] = [
        (b"None", 1),
        (b"dereference", 3),
        (b"reference", 4),
        (b"dictionary", 5),
        (b"tuple", 11),
        (b"remote", 16),
        (b"version", 19),
        (b"message", 26),
        (b"answer", 27),
        (b"uncache", 31),
    ];
    for (word, id) in expected {
        assert_eq!(vocab_index(word), Some(id));
        assert_eq!(vocab_word(u64::from(id)), Some(word));
    }
    assert_eq!(vocab_word(0), None);
    assert_eq!(vocab_word(32), None);
    assert_eq!(vocab_index(b"unicode"), None);
    for (i, w) in VOCABULARY.iter().enumerate() {
        assert_eq!(vocab_index(w), Some(i as u8 + 1));
    }
}

#[test]
fn big_integers_round_trip_to_the_prefix_limit() {
    // test_partial's values: sys.maxsize * 3, * 2, * -2.
    let cases = [
        "27670116110564327421",
        "18446744073709551614",
        "-18446744073709551614",
        "340282366920938463463374607431768211456",
    ];
    for text in cases {
        let e = big(text);
        assert!(matches!(e, Element::BigInt(_)));
        assert_eq!(dec(&enc(&e)).unwrap(), e);
    }
    // 2**448 - 1 is the largest that fits 64 prefix bytes: 64 digits of 0x7f.
    let largest: BigInt = BigInt::from_base128(false, &[0x7f; 64]);
    let mut wire = vec![0x7f; 64];
    wire.push(LONGINT);
    assert_eq!(enc(&Element::from(largest.clone())), wire);
    assert_eq!(dec(&wire).unwrap(), Element::from(largest));
    wire.pop();
    wire.push(LONGNEG);
    assert_eq!(
        dec(&wire).unwrap(),
        Element::from(BigInt::from_base128(true, &[0x7f; 64]))
    );
    // test_encodeTooLargeLong / test_encodeTooSmallLong: 2**448 and -(2**448).
    let mut digits = vec![0u8; 64];
    digits.push(1);
    for negative in [false, true] {
        let too_big = Element::from(BigInt::from_base128(negative, &digits));
        assert_eq!(
            encode_to_bytes(&too_big, Dialect::None),
            Err(BananaCodecError::IntTooLarge {
                digits: 65,
                limit: 64
            })
        );
    }
    // test_decodeTooLargeLong: encoded under a doubled limit, refused under the normal one.
    let codec = BananaCodec::new(BananaConfig::default().prefix_limit(128));
    let mut wire = BytesMut::new();
    codec
        .encode(
            &Element::from(BigInt::from_base128(false, &digits)),
            &mut wire,
        )
        .unwrap();
    assert_eq!(
        dec(&wire),
        Err(BananaCodecError::PrefixTooLong { limit: 64 })
    );
}

#[test]
fn lenient_forms_twisted_accepts_decode_to_canonical_elements() {
    assert_eq!(dec(b"\x81").unwrap(), Element::Int(0));
    assert_eq!(dec(b"\x80").unwrap(), list(vec![]));
    assert_eq!(dec(b"\x82").unwrap(), b(""));
    assert_eq!(dec(b"\x00\x83").unwrap(), Element::Int(0));
    assert_eq!(dec(b"\x05\x85").unwrap(), Element::Int(5));
    assert_eq!(dec(b"\x05\x86").unwrap(), Element::Int(-5));
    // An INT whose prefix is beyond 2**31 is still that integer, as in Twisted.
    let e = dec(b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x81").unwrap();
    assert_eq!(e, Element::from(BigInt::from_base128(false, &[0x7f; 10])));
    assert_eq!(
        dec(b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x81").unwrap(),
        Element::Int(i64::MAX)
    );
    // -(2**63) is the smallest Int.
    let min = enc(&Element::Int(i64::MIN));
    assert_eq!(dec(&min).unwrap(), Element::Int(i64::MIN));
    // A prefix before FLOAT is ignored, as Twisted does.
    assert_eq!(
        dec(b"\x05\x84\x3f\xf8\0\0\0\0\0\0").unwrap(),
        Element::Float(1.5)
    );
    // A string that spells a vocabulary word decodes to the same bytes as the VOCAB element.
    assert_eq!(
        dec_pb(b"\x07\x82version").unwrap(),
        dec_pb(b"\x13\x87").unwrap()
    );
}

#[test]
fn floats_keep_their_bits() {
    for f in [
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        1e308,
    ] {
        let Element::Float(g) = dec(&enc(&Element::Float(f))).unwrap() else {
            panic!("not a float");
        };
        assert_eq!(g.to_bits(), f.to_bits());
    }
    let Element::Float(nan) = dec(&enc(&Element::Float(f64::NAN))).unwrap() else {
        panic!("not a float");
    };
    assert_eq!(nan.to_bits(), f64::NAN.to_bits());
}

fn sample_stream() -> (Vec<u8>, Vec<Element>) {
    let exprs = vec![
        list(vec![b("version"), Element::Int(6)]),
        list(vec![
            Element::Int(1),
            Element::Int(2),
            list(vec![Element::Int(3), Element::Int(4)]),
            list(vec![Element::Float(30.5), Element::Float(40.2)]),
            Element::Int(5),
            list(vec![
                b("six"),
                b("seven"),
                list(vec![b("eight"), Element::Int(9)]),
            ]),
            list(vec![Element::Int(10)]),
            list(vec![]),
            big("27670116110564327421"),
            big("-18446744073709551614"),
            Element::Int(-1015),
        ]),
        b("hello"),
        Element::Int(10151),
        list(vec![list(vec![list(vec![])]), b("answer")]),
    ];
    let mut wire = Vec::new();
    for e in &exprs {
        wire.extend_from_slice(&enc_pb(e));
    }
    (wire, exprs)
}

#[test]
fn every_split_point_and_every_pair_of_split_points() {
    let (wire, exprs) = sample_stream();
    for i in 0..=wire.len() {
        let mut codec = BananaCodec::default();
        codec.set_dialect(Dialect::Pb);
        assert_eq!(
            decode_split(&mut codec, &wire, &[i]).unwrap(),
            exprs,
            "split {i}"
        );
        assert!(codec.is_idle());
        for j in i..=wire.len() {
            let mut codec = BananaCodec::default();
            codec.set_dialect(Dialect::Pb);
            let got = decode_split(&mut codec, &wire, &[i, j]).unwrap();
            assert_eq!(got, exprs, "splits {i}, {j}");
        }
    }
    // test_partial: one byte at a time.
    let mut codec = BananaCodec::default();
    codec.set_dialect(Dialect::Pb);
    let every: Vec<usize> = (0..wire.len()).collect();
    assert_eq!(decode_split(&mut codec, &wire, &every).unwrap(), exprs);
}

#[test]
fn oversized_headers_fail_before_their_body_arrives() {
    // test_oversizedList, test_oversizedString (fed byte by byte), test_crashString.
    for wire in [
        &b"\x02\x01\x01\x01\x01\x80"[..],
        b"\x02\x01\x01\x01\x01\x82",
        b"\x00\x00\x00\x00\x04\x80",
    ] {
        let mut codec = BananaCodec::default();
        let every: Vec<usize> = (0..wire.len()).collect();
        let err = decode_split(&mut codec, wire, &every).unwrap_err();
        assert!(matches!(
            err,
            BananaCodecError::ListTooLong { .. } | BananaCodecError::StringTooLong { .. }
        ));
        // The stream is dead from then on.
        assert_eq!(
            codec.decode(&mut BytesMut::from(&b"\x01\x81"[..])),
            Err(BananaCodecError::Failed)
        );
    }
    // One past the limit fails; the limit itself waits for its body.
    let mut at_limit = BytesMut::new();
    super::encode::put_prefix_u64(&mut at_limit, SIZE_LIMIT as u64);
    at_limit.extend_from_slice(&[STRING]);
    let mut codec = BananaCodec::default();
    assert_eq!(codec.decode(&mut at_limit.clone()), Ok(None));
    let mut over = BytesMut::new();
    super::encode::put_prefix_u64(&mut over, SIZE_LIMIT as u64 + 1);
    over.extend_from_slice(&[LIST]);
    assert_eq!(
        BananaCodec::default().decode(&mut over),
        Err(BananaCodecError::ListTooLong {
            len: SIZE_LIMIT + 1,
            limit: SIZE_LIMIT
        })
    );
    // A prefix of 2**448 as a list length saturates instead of overflowing.
    let mut huge = BytesMut::from(&[0x7f; 64][..]);
    huge.extend_from_slice(&[LIST]);
    assert!(matches!(
        BananaCodec::default().decode(&mut huge),
        Err(BananaCodecError::ListTooLong {
            len: usize::MAX,
            ..
        })
    ));
}

#[test]
fn a_list_header_reserves_only_for_bytes_that_arrived() {
    // A list announcing SIZE_LIMIT elements, followed by two of them.
    let mut wire = BytesMut::new();
    super::encode::put_prefix_u64(&mut wire, SIZE_LIMIT as u64);
    wire.extend_from_slice(&[LIST, 0x01, INT, 0x02, INT]);
    let mut codec = BananaCodec::default();
    assert_eq!(codec.decode(&mut wire), Ok(None));
    assert!(wire.is_empty());
    let (expected, items) = &codec.stack[0];
    assert_eq!(*expected, SIZE_LIMIT);
    assert_eq!(items.len(), 2);
    assert!(items.capacity() <= 8, "capacity {}", items.capacity());
    // Nested lists each claiming the maximum, with plenty of bytes already buffered behind
    // them, reserve a few elements each.
    let mut codec = BananaCodec::default();
    let mut wire = BytesMut::new();
    for _ in 0..DEFAULT_MAX_DEPTH {
        super::encode::put_prefix_u64(&mut wire, SIZE_LIMIT as u64);
        wire.extend_from_slice(&[LIST]);
    }
    super::encode::put_prefix_u64(&mut wire, 100_000);
    wire.extend_from_slice(&[STRING]);
    wire.extend_from_slice(&[b'x'; 99_999]);
    assert_eq!(codec.decode(&mut wire), Ok(None));
    let reserved: usize = codec.stack.iter().map(|(_, v)| v.capacity()).sum();
    assert!(reserved <= DEFAULT_MAX_DEPTH * 8, "reserved {reserved}");
}

#[test]
fn too_many_prefix_bytes() {
    // test_statelessDecode: 2**449 in 65 prefix bytes.
    let mut wire = vec![0x7f; 65];
    wire.push(LONGINT);
    assert_eq!(
        dec(&wire),
        Err(BananaCodecError::PrefixTooLong { limit: 64 })
    );
    // 65 prefix bytes fail as soon as the 65th arrives, without a type byte.
    let mut codec = BananaCodec::default();
    let mut buf = BytesMut::from(&[0x01; 64][..]);
    assert_eq!(codec.decode(&mut buf), Ok(None));
    buf.extend_from_slice(&[0x01]);
    assert_eq!(
        codec.decode(&mut buf),
        Err(BananaCodecError::PrefixTooLong { limit: 64 })
    );
    // 64 bytes of prefix before a list length is allowed (and then too long a list).
    let mut wire = vec![0x00; 63];
    wire.push(0x01);
    wire.push(STRING);
    assert!(matches!(
        dec(&wire),
        Err(BananaCodecError::StringTooLong { .. })
    ));
    // A configured limit is honoured.
    let config = BananaConfig::default().prefix_limit(2);
    assert_eq!(
        decode_complete(b"\x01\x01\x01\x81", config, Dialect::None),
        Err(BananaCodecError::PrefixTooLong { limit: 2 })
    );
    assert_eq!(
        decode_complete(b"\x01\x01\x81", config, Dialect::None),
        Ok(Element::Int(129))
    );
}

#[test]
fn nesting_deeper_than_the_limit() {
    let mut wire = Vec::new();
    for _ in 0..=DEFAULT_MAX_DEPTH {
        wire.extend_from_slice(&[0x01, LIST]);
    }
    wire.extend_from_slice(&[0x00, LIST]);
    assert_eq!(dec(&wire), Err(BananaCodecError::TooDeep { limit: 64 }));
    // Exactly the limit decodes.
    let mut wire = Vec::new();
    for _ in 0..DEFAULT_MAX_DEPTH - 1 {
        wire.extend_from_slice(&[0x01, LIST]);
    }
    wire.extend_from_slice(&[0x00, LIST]);
    let mut e = dec(&wire).unwrap();
    let mut depth = 1;
    while let Element::List(mut items) = e {
        match items.pop() {
            Some(inner) => {
                e = inner;
                depth += 1;
            }
            None => break,
        }
    }
    assert_eq!(depth, DEFAULT_MAX_DEPTH);
    // The encoder holds the same limit.
    let mut deep = list(vec![]);
    for _ in 0..DEFAULT_MAX_DEPTH {
        deep = list(vec![deep]);
    }
    assert_eq!(
        encode_to_bytes(&deep, Dialect::None),
        Err(BananaCodecError::TooDeep { limit: 64 })
    );
}

#[test]
fn garbage_truncation_and_bad_vocabulary() {
    assert_eq!(
        dec(b"\x01\x88"),
        Err(BananaCodecError::InvalidTypeByte(0x88))
    );
    assert_eq!(dec(b"\xff"), Err(BananaCodecError::InvalidTypeByte(0xff)));
    assert_eq!(dec(b"\x05\x82hel"), Err(BananaCodecError::Truncated));
    assert_eq!(dec(b"\x02\x80\x01\x81"), Err(BananaCodecError::Truncated));
    assert_eq!(dec(b"\x84\x3f\xf8"), Err(BananaCodecError::Truncated));
    assert_eq!(dec(b""), Err(BananaCodecError::Truncated));
    assert_eq!(
        dec(b"\x01\x81\x02"),
        Err(BananaCodecError::TrailingBytes { len: 1 })
    );
    // test_dialectNotSet and test_receiveIllegalPb.
    assert_eq!(
        dec(b"\x10\x87"),
        Err(BananaCodecError::VocabOutsidePb { index: 16 })
    );
    assert_eq!(
        dec_pb(b"\x7a\x87"),
        Err(BananaCodecError::UnknownVocab { index: 122 })
    );
    assert_eq!(
        dec_pb(b"\x87"),
        Err(BananaCodecError::UnknownVocab { index: 0 })
    );
}

#[test]
fn the_expression_budget_counts_elements_and_string_bytes() {
    let config = BananaConfig::default().max_expression_size(10 * std::mem::size_of::<Element>());
    // A list of 20 empty lists, one byte each on the wire.
    let mut wire = vec![20, LIST];
    wire.extend_from_slice(&[LIST; 20]);
    assert_eq!(
        decode_complete(&wire, config, Dialect::None),
        Err(BananaCodecError::ExpressionTooLarge {
            limit: 10 * std::mem::size_of::<Element>()
        })
    );
    // The budget is per expression: many small ones in a row are fine.
    let mut codec = BananaCodec::new(config);
    let mut buf = BytesMut::new();
    for _ in 0..100 {
        buf.extend_from_slice(b"\x02\x80\x01\x81\x02\x81");
    }
    for _ in 0..100 {
        assert!(codec.decode(&mut buf).unwrap().is_some());
    }
}

#[test]
fn the_encoder_charges_the_budget_as_the_decoder_does() {
    let element = std::mem::size_of::<Element>();
    // Four elements (the list, an int, two strings) and five bytes of strings ("dictionary"
    // is a VOCAB word in the pb dialect and costs no bytes there, as when received).
    let e = list(vec![Element::Int(1), b("hello"), b("dictionary")]);
    for (dialect, cost) in [
        (Dialect::None, 4 * element + 15),
        (Dialect::Pb, 4 * element + 5),
    ] {
        let at = |budget| {
            let mut codec = BananaCodec::new(BananaConfig::default().max_expression_size(budget));
            codec.set_dialect(dialect);
            codec
        };
        let mut dst = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            at(cost - 1).encode(&e, &mut dst),
            Err(BananaCodecError::ExpressionTooLarge { limit: cost - 1 })
        );
        assert_eq!(&dst[..], b"keep");
        at(cost).encode(&e, &mut dst).unwrap();
        let wire = dst.split_off(4);
        // The decoder draws the line at the same place.
        assert!(decode_complete(&wire, at(cost).config, dialect).is_ok());
        assert_eq!(
            decode_complete(&wire, at(cost - 1).config, dialect),
            Err(BananaCodecError::ExpressionTooLarge { limit: cost - 1 })
        );
        // And so does the check of encoded bytes.
        assert_eq!(at(cost).check_expressions(&wire), Ok(()));
        assert_eq!(
            at(cost - 1).check_expressions(&wire),
            Err(BananaCodecError::ExpressionTooLarge { limit: cost - 1 })
        );
    }
}

#[test]
fn a_nested_encoding_counts_its_depth_from_where_it_goes() {
    let codec = BananaCodec::new(BananaConfig::default().max_depth(3));
    let three = list(vec![list(vec![list(vec![])])]);
    let mut dst = BytesMut::new();
    codec.encode(&three, &mut dst).unwrap();
    assert_eq!(
        codec.encode_nested(&three, &mut dst, 1),
        Err(BananaCodecError::TooDeep { limit: 3 })
    );
    codec
        .encode_nested(&list(vec![list(vec![])]), &mut dst, 1)
        .unwrap();
    // Placed inside a list, the three lists are four deep: refused by a decoder, and by the
    // check of the bytes.
    let mut message = BytesMut::new();
    codec.encode_list_header(1, &mut message).unwrap();
    codec.encode(&three, &mut message).unwrap();
    let config = BananaConfig::default().max_depth(3);
    assert_eq!(
        decode_complete(&message, config, Dialect::None),
        Err(BananaCodecError::TooDeep { limit: 3 })
    );
    assert_eq!(
        codec.check_expressions(&message),
        Err(BananaCodecError::TooDeep { limit: 3 })
    );
}

#[test]
fn checking_encoded_bytes_refuses_what_decoding_refuses() {
    let mut pb = BananaCodec::new(BananaConfig::default());
    pb.set_dialect(Dialect::Pb);
    let (wire, _) = sample_stream();
    // Expressions one after another, each charged on its own.
    assert_eq!(pb.check_expressions(&wire), Ok(()));
    let codec = BananaCodec::new(BananaConfig::default());
    assert_eq!(codec.check_expressions(b""), Ok(()));
    for bad in [
        &b"\x01\x88"[..],
        b"\x05\x82hel",
        b"\x02\x80\x01\x81",
        b"\x84\x3f\xf8",
        b"\x10\x87",
        &[0x01; 65],
    ] {
        assert_eq!(
            codec.check_expressions(bad).err(),
            dec(bad).err(),
            "{bad:?}"
        );
    }
    // A header over the size limit, before its body.
    let mut header = Vec::new();
    let mut n = SIZE_LIMIT + 1;
    while n > 0 {
        header.push((n % 128) as u8);
        n /= 128;
    }
    header.push(STRING);
    assert!(matches!(
        codec.check_expressions(&header),
        Err(BananaCodecError::StringTooLong { .. })
    ));
}

#[test]
fn encoding_over_a_limit_writes_nothing() {
    let codec = BananaCodec::new(BananaConfig::default().size_limit(4));
    let mut dst = BytesMut::from(&b"keep"[..]);
    let e = list(vec![Element::Int(1), b("hello")]);
    assert_eq!(
        codec.encode(&e, &mut dst),
        Err(BananaCodecError::StringTooLong { len: 5, limit: 4 })
    );
    assert_eq!(&dst[..], b"keep");
    let long = list((0..5).map(Element::Int).collect());
    assert!(matches!(
        codec.encode(&long, &mut dst),
        Err(BananaCodecError::ListTooLong { len: 5, limit: 4 })
    ));
    // A vocabulary word is not a string on the wire and is not held to the size limit.
    let mut pb = BananaCodec::new(BananaConfig::default().size_limit(4));
    pb.set_dialect(Dialect::Pb);
    pb.encode(&b("dictionary"), &mut dst).unwrap();
    assert_eq!(&dst[..], b"keep\x05\x87");
    // A hand-built small BigInt goes as Twisted would send the integer.
    assert_eq!(enc(&Element::BigInt(BigInt::from(-5i64))), b"\x05\x83");
    assert_eq!(
        Bytes::from(enc(&Element::BigInt(BigInt::from(7i64)))),
        &b"\x07\x81"[..]
    );
}

fn arb_element() -> impl Strategy<Value = Element> {
    let vocab = proptest::sample::select(VOCABULARY.to_vec()).prop_map(Element::from);
    let leaf = prop_oneof![
        any::<i64>().prop_map(Element::Int),
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..57))
            .prop_map(|(n, m)| Element::from(BigInt::from_parts(n, m))),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Element::Float),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Element::from(&v[..])),
        vocab,
    ];
    leaf.prop_recursive(6, 200, 10, |inner| {
        proptest::collection::vec(inner, 0..10).prop_map(Element::List)
    })
}

proptest! {
    #[test]
    fn round_trip_under_arbitrary_chunking(
        exprs in proptest::collection::vec(arb_element(), 1..4),
        pb in any::<bool>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let dialect = if pb { Dialect::Pb } else { Dialect::None };
        let mut wire = Vec::new();
        for e in &exprs {
            wire.extend_from_slice(&encode_to_bytes(e, dialect).unwrap());
        }
        let mut splits: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        splits.sort_unstable();
        let mut codec = BananaCodec::default();
        codec.set_dialect(dialect);
        prop_assert_eq!(decode_split(&mut codec, &wire, &splits).unwrap(), exprs);
        prop_assert!(codec.is_idle());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        wire in proptest::collection::vec(any::<u8>(), 0..200),
        cut in any::<prop::sample::Index>(),
    ) {
        let at = cut.index(wire.len() + 1);
        let mut codec = BananaCodec::new(BananaConfig::default().size_limit(64));
        codec.set_dialect(Dialect::Pb);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut result = Ok(None);
        for part in [&wire[at..], &[][..]] {
            while let Ok(Some(_)) = result {
                result = codec.decode(&mut buf);
            }
            if result.is_err() {
                break;
            }
            buf.extend_from_slice(part);
            result = codec.decode(&mut buf);
        }
    }
}
