//! Property tests: every argument type survives encode → arbitrary chunking of the byte stream →
//! incremental decode, through the bare codec and through two dispatchers.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

use pb::amp::{
    AmpBox, AmpConfig, AmpFields, AmpList, AmpValue, BigInt, BoxCodec, Bytes, BytesMut, DateTime,
    Decimal, Dispatcher, Event,
};
use proptest::prelude::*;

#[derive(pb::AmpFields, Debug, Clone, PartialEq)]
struct Row {
    x: i64,
    y: String,
    z: Option<bool>,
}

#[derive(pb::AmpCommand, Debug, Clone)]
struct Everything {
    i8_: i8,
    i64_: i64,
    u64_: u64,
    i128_: i128,
    big: BigInt,
    s: Bytes,
    u: String,
    b: bool,
    fl: f64,
    f32_: f32,
    d: Decimal,
    dt: DateTime,
    li: Vec<i64>,
    lu: Vec<String>,
    ls: Vec<Bytes>,
    lf: Vec<f64>,
    ld: Vec<Decimal>,
    ldt: Vec<DateTime>,
    rows: AmpList<Row>,
    opt: Option<i64>,
    opt_rows: Option<AmpList<Row>>,
    #[amp(name = "dash-name")]
    dash: Option<String>,
}

/// Floats are equal for AMP when they are the same number, or both NaN (Python's `repr` writes
/// every NaN as `nan`, so payloads do not survive, on either side).
fn same_f64(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn same(a: &Everything, b: &Everything) -> bool {
    a.i8_ == b.i8_
        && a.i64_ == b.i64_
        && a.u64_ == b.u64_
        && a.i128_ == b.i128_
        && a.big == b.big
        && a.s == b.s
        && a.u == b.u
        && a.b == b.b
        && same_f64(a.fl, b.fl)
        && same_f64(f64::from(a.f32_), f64::from(b.f32_))
        && a.d == b.d
        && a.dt == b.dt
        && a.li == b.li
        && a.lu == b.lu
        && a.ls == b.ls
        && a.lf.len() == b.lf.len()
        && a.lf.iter().zip(&b.lf).all(|(x, y)| same_f64(*x, *y))
        && a.ld == b.ld
        && a.ldt == b.ldt
        && a.rows == b.rows
        && a.opt == b.opt
        && a.opt_rows == b.opt_rows
        && a.dash == b.dash
}

fn big() -> impl Strategy<Value = BigInt> {
    "-?[1-9][0-9]{0,150}|0".prop_map(|s| s.parse().unwrap())
}

fn decimal() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        8 => ("-?", "[0-9]{1,30}", "(\\.[0-9]{0,10})?", -40i64..40)
            .prop_map(|(sign, int, frac, exp)| format!("{sign}{int}{frac}E{exp}").parse().unwrap()),
        1 => prop::sample::select(vec!["Infinity", "-Infinity", "NaN", "-NaN", "sNaN", "-sNaN", "NaN123"])
            .prop_map(|s| s.parse().unwrap()),
    ]
}

fn datetime() -> impl Strategy<Value = DateTime> {
    (
        (1u16..=9999, 1u8..=12, 1u8..=28),
        (0u8..24, 0u8..60, 0u8..60, 0u32..1_000_000),
        -1439i16..=1439,
    )
        .prop_map(|(d, t, o)| DateTime::from_parts(d, t, o).unwrap())
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn row() -> impl Strategy<Value = Row> {
    (any::<i64>(), ".{0,10}", any::<Option<bool>>()).prop_map(|(x, y, z)| Row { x, y, z })
}

prop_compose! {
    fn everything()(
        ints in (any::<i8>(), any::<i64>(), any::<u64>(), any::<i128>()),
        big in big(),
        s in bytes(300),
        u in ".{0,40}",
        b in any::<bool>(),
        floats in (any::<f64>(), any::<f32>()),
        d in decimal(),
        dt in datetime(),
        li in prop::collection::vec(any::<i64>(), 0..20),
        lu in prop::collection::vec(".{0,10}", 0..10),
        ls in prop::collection::vec(bytes(20), 0..10),
        lf in prop::collection::vec(any::<f64>(), 0..10),
        ld in prop::collection::vec(decimal(), 0..10),
        ldt in prop::collection::vec(datetime(), 0..5),
        rows in prop::collection::vec(row(), 0..5),
        opt in any::<Option<i64>>(),
        opt_rows in prop::option::of(prop::collection::vec(row(), 0..3)),
        dash in prop::option::of(".{0,5}"),
    ) -> Everything {
        Everything {
            i8_: ints.0, i64_: ints.1, u64_: ints.2, i128_: ints.3,
            big, s, u, b, fl: floats.0, f32_: floats.1, d, dt,
            li, lu, ls, lf, ld, ldt,
            rows: AmpList(rows), opt, opt_rows: opt_rows.map(AmpList), dash,
        }
    }
}

/// Splits `bytes` at the given fractions of its length.
fn chunks(bytes: &[u8], cuts: &[f64]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| ((bytes.len() as f64) * c) as usize)
        .collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_type_round_trips_under_chunking(
        values in prop::collection::vec(everything(), 1..4),
        cuts in prop::collection::vec(0.0f64..1.0, 0..40),
    ) {
        let mut stream = BytesMut::new();
        for v in &values {
            let mut b = AmpBox::new();
            v.to_box(&mut b).unwrap();
            b.encode(&mut stream).unwrap();
        }
        let mut codec = BoxCodec::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in chunks(&stream, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(b) = codec.decode(&mut buf).unwrap() {
                decoded.push(Everything::from_box(&b).unwrap());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded.len(), values.len());
        for (got, want) in decoded.iter().zip(&values) {
            prop_assert!(same(got, want), "got {:?}\nwant {:?}", got, want);
        }
    }

    #[test]
    fn asks_round_trip_between_dispatchers_under_chunking(
        values in prop::collection::vec(everything(), 1..4),
        cuts in prop::collection::vec(0.0f64..1.0, 0..40),
    ) {
        let mut client = Dispatcher::new(AmpConfig::default());
        let mut server = Dispatcher::new(AmpConfig::default());
        let mut tags = Vec::new();
        for v in &values {
            let mut b = AmpBox::new();
            v.to_box(&mut b).unwrap();
            tags.push(client.ask("Everything", b).unwrap());
        }
        let wire = client.poll_transmit().unwrap();
        let mut got = Vec::new();
        for chunk in chunks(&wire, &cuts) {
            server.handle_input(&chunk);
            while let Some(event) = server.poll_event() {
                match event {
                    Event::Command { name, tag: Some(tag), args } => {
                        prop_assert_eq!(name.as_ref(), b"Everything");
                        got.push((tag, Everything::from_box(&args).unwrap()));
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
        prop_assert_eq!(got.len(), values.len());
        for ((tag, v), (want_tag, want)) in got.iter().zip(tags.iter().zip(&values)) {
            prop_assert_eq!(tag, want_tag);
            prop_assert!(same(v, want));
        }
    }

    #[test]
    fn values_re_encode_to_the_same_bytes(v in everything()) {
        // Decoding then encoding again gives the very same bytes: the encodings are canonical.
        let mut b = AmpBox::new();
        v.to_box(&mut b).unwrap();
        let again = Everything::from_box(&b).unwrap();
        let mut b2 = AmpBox::new();
        again.to_box(&mut b2).unwrap();
        prop_assert_eq!(b.to_bytes().unwrap(), b2.to_bytes().unwrap());
    }

    #[test]
    fn integers_never_decode_to_a_wrong_number(text in "-?[0-9]{1,45}") {
        let exact: Option<i128> = text.parse().ok();
        match (i64::decode_value(text.as_bytes()), exact) {
            (Ok(v), Some(e)) => prop_assert_eq!(i128::from(v), e),
            (Ok(v), None) => prop_assert!(false, "{} decoded to {}", text, v),
            (Err(_), Some(e)) => prop_assert!(i64::try_from(e).is_err()),
            (Err(_), None) => {}
        }
    }

    /// Closing after a fatal error dispatches exactly the commands whose bytes had arrived,
    /// answers them, and reads nothing handed in later.
    #[test]
    fn closing_dispatches_exactly_what_had_arrived(
        n in 1usize..12,
        fatal_at in 0usize..12,
        cuts in prop::collection::vec(0.0f64..1.0, 0..8),
    ) {
        let mut client = Dispatcher::new(AmpConfig::default());
        let mut server = Dispatcher::new(AmpConfig::default());
        for i in 0..n {
            let mut args = AmpBox::new();
            args.insert("i", i.to_string());
            client.ask("Work", args).unwrap();
        }
        let wire = client.poll_transmit().unwrap();
        let (mut seen, mut answered, mut closing_at) = (Vec::new(), 0usize, None);
        let mut arrived = 0usize;
        for chunk in chunks(&wire, &cuts) {
            let before = server.buffered_input();
            server.handle_input(&chunk);
            if closing_at.is_some() {
                prop_assert_eq!(server.buffered_input(), before);
                continue;
            }
            arrived += chunk.len();
            while let Some(event) = server.poll_event() {
                let Event::Command { tag: Some(tag), args, .. } = event else {
                    panic!("a command with _ask")
                };
                seen.push(args.get("i").unwrap().to_vec());
                if seen.len() == fatal_at.min(n - 1) + 1 && closing_at.is_none() {
                    server.error(tag, "UNKNOWN", "Unknown Error", true).unwrap();
                    closing_at = Some(arrived);
                } else {
                    server.answer(tag, AmpBox::new()).unwrap();
                    answered += 1;
                }
            }
        }
        let Some(arrived) = closing_at else {
            panic!("the fatal error was sent")
        };
        // Every command complete in the bytes that had arrived was dispatched, and only those.
        let complete = {
            let mut buf = BytesMut::from(&wire[..arrived]);
            let mut codec = BoxCodec::default();
            let mut count = 0;
            while codec.decode(&mut buf).unwrap().is_some() {
                count += 1;
            }
            count
        };
        prop_assert_eq!(seen.len(), complete);
        let want: Vec<Vec<u8>> = (0..complete).map(|i| i.to_string().into_bytes()).collect();
        prop_assert_eq!(seen, want);
        // The answers and the error went out, one box each.
        client.handle_input(&server.poll_transmit().unwrap());
        let mut replies = 0;
        while client.poll_event().is_some() {
            replies += 1;
        }
        prop_assert_eq!(replies, answered + 1);
        server.close();
        server.answer("1", AmpBox::new()).unwrap();
        prop_assert!(server.poll_transmit().is_none());
    }

    #[test]
    fn the_decoder_never_panics_on_garbage(
        garbage in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(0.0f64..1.0, 0..10),
    ) {
        let mut d = Dispatcher::new(AmpConfig::default());
        for chunk in chunks(&garbage, &cuts) {
            d.handle_input(&chunk);
            while let Some(event) = d.poll_event() {
                if let Event::Command { args, .. } = event {
                    let _ = Everything::from_box(&args);
                }
            }
        }
    }
}
