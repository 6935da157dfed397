//! Golden bytes: pb encodes the boxes captured from Twisted 26.10 byte for byte, and decodes them;
//! the `ListOf` vectors are those of Twisted's `test_amp.py`.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

use pb::amp::{
    AmpBox, AmpConfig, AmpFields, AmpList, AmpValue, BigInt, BoxCodec, Bytes, BytesMut, DateTime,
    Decimal, Dispatcher, Event,
};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn decode(bytes: &[u8]) -> AmpBox {
    let mut buf = BytesMut::from(bytes);
    let b = BoxCodec::default().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    b
}

fn boxed(pairs: &[(&str, &[u8])]) -> AmpBox {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                Bytes::copy_from_slice(k.as_bytes()),
                Bytes::copy_from_slice(v),
            )
        })
        .collect()
}

#[derive(pb::AmpCommand, Debug, PartialEq)]
#[amp(response = SumResponse)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct SumResponse {
    total: i64,
}

#[derive(pb::AmpCommand, Debug, PartialEq)]
#[amp(requires_answer = false)]
struct Notify {
    msg: String,
}

const SUM_ASK: &str = "00 04 5f 61 73 6b 00 01 31 00 08 5f 63 6f 6d 6d 61 6e 64 00 03 53 75 6d \
                       00 01 61 00 02 31 33 00 01 62 00 02 38 31 00 00";
const SUM_ANSWER: &str =
    "00 07 5f 61 6e 73 77 65 72 00 01 31 00 05 74 6f 74 61 6c 00 02 39 34 00 00";
const DIVIDE_ERROR: &str = "00 06 5f 65 72 72 6f 72 00 01 32 \
    00 0b 5f 65 72 72 6f 72 5f 63 6f 64 65 00 0d 5a 45 52 4f 5f 44 49 56 49 53 49 4f 4e \
    00 12 5f 65 72 72 6f 72 5f 64 65 73 63 72 69 70 74 69 6f 6e 00 10 64 69 76 69 73 69 6f 6e 20 62 79 20 7a 65 72 6f \
    00 00";
const NOTIFY: &str = "00 08 5f 63 6f 6d 6d 61 6e 64 00 06 4e 6f 74 69 66 79 00 03 6d 73 67 00 06 68 69 20 e2 98 83 00 00";

#[test]
fn sum_ask_is_byte_identical_and_decodes() {
    let mut d = Dispatcher::new(AmpConfig::default());
    let mut args = AmpBox::new();
    Sum { a: 13, b: 81 }.to_box(&mut args).unwrap();
    assert_eq!(d.ask("Sum", args).unwrap(), "1");
    let wire = d.poll_transmit().unwrap();
    assert_eq!(wire.len(), 40);
    assert_eq!(wire.as_ref(), hex(SUM_ASK));

    let mut server = Dispatcher::new(AmpConfig::default());
    server.handle_input(&hex(SUM_ASK));
    let Some(Event::Command { name, tag, args }) = server.poll_event() else {
        panic!("expected a command");
    };
    assert_eq!(
        (name.as_ref(), tag.as_deref()),
        (&b"Sum"[..], Some(&b"1"[..]))
    );
    assert_eq!(Sum::from_box(&args).unwrap(), Sum { a: 13, b: 81 });
}

#[test]
fn sum_answer_is_byte_identical_and_decodes() {
    let mut d = Dispatcher::new(AmpConfig::default());
    let mut answer = AmpBox::new();
    SumResponse { total: 94 }.to_box(&mut answer).unwrap();
    d.answer(Bytes::from_static(b"1"), answer).unwrap();
    let wire = d.poll_transmit().unwrap();
    assert_eq!(wire.len(), 25);
    assert_eq!(wire.as_ref(), hex(SUM_ANSWER));
    let b = decode(&hex(SUM_ANSWER));
    assert_eq!(b.get("_answer"), Some(&b"1"[..]));
    assert_eq!(
        SumResponse::from_box(&b).unwrap(),
        SumResponse { total: 94 }
    );
}

#[test]
fn declared_error_is_byte_identical_and_decodes() {
    let mut d = Dispatcher::new(AmpConfig::default());
    d.error(
        Bytes::from_static(b"2"),
        "ZERO_DIVISION",
        "division by zero",
        false,
    )
    .unwrap();
    let wire = d.poll_transmit().unwrap();
    assert_eq!(wire.len(), 79);
    assert_eq!(wire.as_ref(), hex(DIVIDE_ERROR));
    assert_eq!(
        decode(&hex(DIVIDE_ERROR)),
        boxed(&[
            ("_error", b"2"),
            ("_error_code", b"ZERO_DIVISION"),
            ("_error_description", b"division by zero"),
        ])
    );
}

#[test]
fn unhandled_error_box() {
    let want = boxed(&[
        ("_error", b"4"),
        ("_error_code", b"UNHANDLED"),
        ("_error_description", b"Unhandled Command: b'NoSuchCmd'"),
    ]);
    let mut d = Dispatcher::new(AmpConfig::default());
    d.error(
        Bytes::from_static(b"4"),
        "UNHANDLED",
        "Unhandled Command: b'NoSuchCmd'",
        false,
    )
    .unwrap();
    let wire = d.poll_transmit().unwrap();
    assert_eq!(wire, want.to_bytes().unwrap());
    assert_eq!(decode(&wire), want);
}

#[test]
fn no_answer_command_is_byte_identical_and_decodes() {
    let mut d = Dispatcher::new(AmpConfig::default());
    let mut args = AmpBox::new();
    Notify {
        msg: "hi ☃".into()
    }
    .to_box(&mut args)
    .unwrap();
    d.tell("Notify", args).unwrap();
    assert_eq!(d.poll_transmit().unwrap().as_ref(), hex(NOTIFY));
    let b = decode(&hex(NOTIFY));
    assert_eq!(b.get("_ask"), None);
    assert_eq!(Notify::from_box(&b).unwrap().msg, "hi ☃");
}

#[test]
fn tags_advance_past_no_answer_commands() {
    // Verified against Twisted: asks 1..4, a Notify consumes 5, the next ask is 6.
    let mut d = Dispatcher::new(AmpConfig::default());
    for _ in 0..4 {
        d.ask("Sum", AmpBox::new()).unwrap();
    }
    d.tell("Notify", AmpBox::new()).unwrap();
    assert_eq!(d.ask("Sum", AmpBox::new()).unwrap(), "6");
}

fn check<T: AmpValue + PartialEq + std::fmt::Debug>(wire: &[u8], value: T) {
    let mut out = Vec::new();
    value.encode_value(&mut out).unwrap();
    assert_eq!(out, wire, "encoding {value:?}");
    assert_eq!(T::decode_value(wire).unwrap(), value, "decoding {wire:?}");
}

#[test]
fn list_of_strings_vectors() {
    check::<Vec<Bytes>>(b"", vec![]);
    check(b"\x00\x03foo", vec![Bytes::from_static(b"foo")]);
    check(
        b"\x00\x03bar\x00\x03baz\x00\x04quux",
        vec![Bytes::from("bar"), Bytes::from("baz"), Bytes::from("quux")],
    );
}

#[test]
fn list_of_integers_vectors() {
    check::<Vec<i64>>(b"", vec![]);
    check(b"\x00\x0210", vec![10i64]);
    check(b"\x00\x011\x00\x0220\x00\x03500", vec![1i32, 20, 500]);
    check(b"\x00\x02-1", vec![-1i8]);
    let huge = "99999999999999999999999999999999999999999999999999999999980000000000000000000000000000000000000000000000000000000001";
    assert_eq!(huge.len(), 0x74);
    let mut wire = b"\x00\x74".to_vec();
    wire.extend_from_slice(huge.as_bytes());
    check(&wire, vec![huge.parse::<BigInt>().unwrap()]);
    // Too wide for i128: an error, never a wrong number.
    assert!(Vec::<i128>::decode_value(&wire).is_err());
}

#[test]
fn list_of_unicode_vectors() {
    check::<Vec<String>>(b"", vec![]);
    check(b"\x00\x03foo", vec!["foo".to_string()]);
    check(
        b"\x00\x03\xe2\x98\x83\x00\x05Hello\x00\x05world",
        vec!["☃".to_string(), "Hello".into(), "world".into()],
    );
}

fn decimals(xs: &[&str]) -> Vec<Decimal> {
    xs.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn list_of_decimal_vectors() {
    check(b"", decimals(&[]));
    check(b"\x00\x031.1", decimals(&["1.1"]));
    check(
        b"\x00\x08Infinity\x00\x09-Infinity",
        decimals(&["Infinity", "-Infinity"]),
    );
    check(
        b"\x00\x083.141E+5\x00\x0a0.00003141\x00\x083.141E-7\
          \x00\x09-3.141E+5\x00\x0b-0.00003141\x00\x09-3.141E-7",
        decimals(&[
            "3.141E5",
            "3.141e-5",
            "3.141E-7",
            "-3.141e5",
            "-3.141E-5",
            "-3.141e-7",
        ]),
    );
    // Engineering strings (`to_eng_string`) decode to the same values.
    let eng = Vec::<Decimal>::decode_value(b"\x00\x040E+6\x00\x061.5E-9").unwrap();
    assert_eq!(eng, decimals(&["0e6", "1.5E-9"]));
    check(
        b"\x00\x03NaN\x00\x04-NaN\x00\x04sNaN\x00\x05-sNaN",
        decimals(&["NaN", "-NaN", "sNaN", "-sNaN"]),
    );
}

#[test]
fn list_of_datetime_vectors() {
    let at = |offset| DateTime::from_parts((2010, 12, 25), (0, 0, 0, 0), offset).unwrap();
    check(
        b"\x00\x202010-12-25T00:00:00.000000-00:00\x00\x202010-12-25T00:00:00.000000-00:00",
        vec![at(0), at(0)],
    );
    check(b"\x00\x202010-12-25T00:00:00.000000+01:00", vec![at(60)]);
    check(b"\x00\x202010-12-25T00:00:00.000000+03:30", vec![at(210)]);
    check(b"\x00\x202010-12-25T00:00:00.000000-05:00", vec![at(-300)]);
    check(
        b"\x00\x202010-12-25T00:00:00.000000+03:19\x00\x202010-12-25T00:00:00.000000-06:59",
        vec![at(199), at(-419)],
    );
    // Captured from Twisted: UTC is written with a minus sign.
    check(
        b"2012-01-23T12:34:56.123456-00:00",
        DateTime::from_parts((2012, 1, 23), (12, 34, 56, 123456), 0).unwrap(),
    );
}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct Row {
    x: i64,
    y: Bytes,
}

#[test]
fn amp_list_vector() {
    check(
        &hex("00 01 78 00 01 31 00 01 79 00 01 61 00 00 00 01 78 00 01 32 00 01 79 00 01 62 00 00"),
        AmpList(vec![
            Row {
                x: 1,
                y: Bytes::from("a"),
            },
            Row {
                x: 2,
                y: Bytes::from("b"),
            },
        ]),
    );
    check(b"", AmpList::<Row>(vec![]));
}

#[test]
fn list_of_integers_capture() {
    check(
        &hex("00 01 31 00 02 2d 32 00 03 33 30 30"),
        vec![1i64, -2, 300],
    );
}

#[test]
fn scalar_encodings() {
    check(
        b"-12345678901234567890",
        "-12345678901234567890".parse::<BigInt>().unwrap(),
    );
    check(b"True", true);
    check(b"False", false);
    for (wire, v) in [
        (&b"0.1"[..], 0.1f64),
        (b"1.0", 1.0),
        (b"100.0", 100.0),
        (b"1e+16", 1e16),
        (b"1e-07", 1e-7),
        (b"-0.0", -0.0),
        (b"inf", f64::INFINITY),
        (b"-inf", f64::NEG_INFINITY),
        (b"1.234", 1.234),
    ] {
        check(wire, v);
    }
    let mut out = Vec::new();
    f64::NAN.encode_value(&mut out).unwrap();
    assert_eq!(out, b"nan");
    for (wire, text) in [
        (&b"1.10"[..], "1.10"),
        (b"-0", "-0"),
        (b"1E+2", "1E+2"),
        (b"1E-7", "1E-7"),
        (b"-1.50E+3", "-1.50E+3"),
        (b"Infinity", "Infinity"),
        (b"-Infinity", "-Infinity"),
        (b"NaN", "NaN"),
        (b"-NaN", "-NaN"),
        (b"sNaN", "sNaN"),
        (b"-sNaN", "-sNaN"),
    ] {
        check(wire, text.parse::<Decimal>().unwrap());
    }
    check(b"\r\n: \n\nvalue", Bytes::from_static(b"\r\n: \n\nvalue"));
}

#[test]
fn optional_arguments_are_omitted_and_read_as_none() {
    #[derive(pb::AmpFields, Debug, PartialEq)]
    struct Opt {
        required: i64,
        maybe: Option<i64>,
        rows: Option<AmpList<Row>>,
    }
    let mut b = AmpBox::new();
    Opt {
        required: 1,
        maybe: None,
        rows: None,
    }
    .to_box(&mut b)
    .unwrap();
    assert_eq!(b, boxed(&[("required", b"1")]));
    assert_eq!(
        Opt::from_box(&b).unwrap(),
        Opt {
            required: 1,
            maybe: None,
            rows: None
        }
    );
    b.insert("maybe", "2");
    b.insert("unknown", "ignored");
    assert_eq!(Opt::from_box(&b).unwrap().maybe, Some(2));
    assert!(
        Opt::from_box(&AmpBox::new()).is_err(),
        "a required key is missing"
    );
}

#[test]
fn wire_names_can_differ_from_field_names() {
    #[derive(pb::AmpCommand)]
    #[amp(name = "dash-command")]
    struct Dashed {
        #[amp(name = "dash-name")]
        dash_name: i64,
        r#from: String,
    }
    let mut b = AmpBox::new();
    Dashed {
        dash_name: 1,
        r#from: "x".into(),
    }
    .to_box(&mut b)
    .unwrap();
    assert_eq!(b, boxed(&[("dash-name", b"1"), ("from", b"x")]));
    assert_eq!(<Dashed as pb::amp::AmpCommand>::NAME, "dash-command");
}
