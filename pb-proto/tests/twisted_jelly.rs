//! Banana and Jelly against real Twisted (`twisted[tls]==26.10.0` from PyPI), both ways.
//!
//! `tests/twisted/jelly_vectors.py` jellies a set of Python values with Twisted and prints
//! their bytes in the `pb` dialect; for each, pb builds the same value, encodes it and must get
//! the same bytes, and decodes Twisted's bytes and must encode them back unchanged. Then pb's
//! bytes go to the script, which unjellies them with Twisted and checks the value (and, by
//! jellying it again, its sharing).
//!
//! Another speaks to a live Twisted PB server (`tests/twisted/pb_echo_server.py`) over TCP with
//! the dialect handshake, `version` and `message` / `answer`, and checks that every value it
//! sends to the root's `echo` comes back equivalent, sharing and cycles included.
//!
//! A third feeds edge-case and hostile Banana bytes to Twisted's decoder and to pb's, and
//! checks that they accept and refuse the same ones and decode the same values, except where
//! pb's own limits (nesting depth) deliberately refuse what Twisted takes.
//!
//! The virtualenv is the one the AMP interop tests use (`target/pb-interop-venv`, the same
//! pinned Twisted), built here on first use from `python3` (or `$PB_INTEROP_PYTHON`). If
//! python3, the virtualenv or the install is missing, this test fails; it never skips.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pb_proto::banana::{BananaCodec, BananaConfig, BigInt, Dialect, Element};
use pb_proto::jelly::{self, Date, DateTime, Decimal, Graph, JellyConfig, Time, TimeDelta, Value};

#[path = "../../tests/interop/venv.rs"]
mod venv;

use venv::python;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/twisted/jelly_vectors.py")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn s(text: &str) -> Value {
    Value::from(text)
}

fn by(text: &'static str) -> Value {
    Value::Bytes(Bytes::from_static(text.as_bytes()))
}

fn int(text: &str) -> Value {
    Value::from(text.parse::<BigInt>().unwrap())
}

fn dec(coefficient: &str, exponent: i64) -> Value {
    Value::Decimal(Decimal {
        coefficient: coefficient.parse().unwrap(),
        exponent,
    })
}

/// pb's graph for each of the script's cases.
fn case(name: &str) -> Graph {
    let tree = |v: Value| Graph::new(v);
    let date = Date {
        year: 2020,
        month: 7,
        day: 11,
    };
    let time = Time {
        hour: 1,
        minute: 16,
        second: 5,
        microsecond: 344,
    };
    match name {
        "int_small" => tree(Value::Int(1)),
        "int_zero" => tree(Value::Int(0)),
        "int_neg" => tree(Value::Int(-1015)),
        "int_2_31" => tree(Value::Int(1 << 31)),
        "int_neg_2_31" => tree(Value::Int(-(1 << 31))),
        "int_neg_2_31_minus_1" => tree(Value::Int(-(1 << 31) - 1)),
        "int_2_63" => tree(int("9223372036854775808")),
        "int_2_64_plus_1" => tree(int("18446744073709551617")),
        "int_neg_2_100" => tree(int("-1267650600228229401496703205376")),
        // 2**448 - 1: 56 bytes of ones.
        "int_max_448" => tree(Value::from(BigInt::from_parts(false, vec![0xff; 56]))),
        "float" => tree(Value::Float(1.5)),
        "float_neg_zero" => tree(Value::Float(-0.0)),
        "float_inf" => tree(Value::Float(f64::INFINITY)),
        "float_nan" => tree(Value::Float(f64::NAN)),
        "bytes" => tree(by("hello")),
        "bytes_vocab_word" => tree(by("remote")),
        "bytes_empty" => tree(by("")),
        "str" => tree(s("h\u{e9}llo \u{2603}")),
        "str_empty" => tree(s("")),
        "none" => tree(Value::None),
        "true" => tree(Value::Bool(true)),
        "false" => tree(Value::Bool(false)),
        "list" => tree(Value::List(vec![
            Value::Int(1),
            Value::List(vec![Value::Int(2), s("x")]),
            Value::List(vec![]),
        ])),
        "tuple" => tree(Value::Tuple(vec![
            Value::Int(1),
            by("a"),
            Value::Tuple(vec![]),
        ])),
        "dict" => tree(Value::Dict(vec![
            (s("a"), Value::Int(1)),
            (Value::Int(2), Value::None),
            (Value::Tuple(vec![Value::Int(1), Value::Int(2)]), by("x")),
            (by("k"), Value::List(vec![Value::Float(1.5)])),
        ])),
        "set" => tree(Value::Set(vec![Value::Int(7)])),
        "frozenset" => tree(Value::FrozenSet(vec![by("a")])),
        "decimal_995" => tree(dec("995", -2)),
        "decimal_neg" => tree(dec("-78901", -3)),
        "decimal_trailing_zero" => tree(dec("150", -2)),
        "decimal_big" => tree(dec("1180591620717411303424", 0)),
        "decimal_exp" => tree(dec("1", 5)),
        "datetime" => tree(Value::DateTime(DateTime { date, time })),
        "date" => tree(Value::Date(date)),
        "time" => tree(Value::Time(time)),
        "timedelta" => tree(Value::TimeDelta(TimeDelta {
            days: -1,
            seconds: 5,
            microseconds: 0,
        })),
        "instance" => tree(Value::Instance {
            tag: Bytes::from_static(b"__main__.Point"),
            state: Box::new(Value::Dict(vec![
                (s("x"), Value::Int(1)),
                (s("y"), s("two")),
            ])),
        }),
        "unpersistable" => tree(Value::Unpersistable(Bytes::from_static(
            b"instance of class __main__.Hidden deemed insecure",
        ))),
        "shared_dict_and_cycle" => {
            let mut g = Graph::default();
            let l = g.add_node(Value::List(vec![Value::Int(1), Value::Int(2)]));
            let c = g.add_node(Value::None);
            *g.node_mut(c).unwrap() = Value::List(vec![Value::Int(0), Value::Shared(c)]);
            g.set_root(Value::Tuple(vec![
                Value::Dict(vec![(s("a"), Value::Shared(l)), (s("b"), Value::Shared(l))]),
                Value::Shared(c),
            ]));
            g
        }
        "identity" => {
            let mut g = Graph::default();
            let x = g.add_node(Value::None);
            *g.node_mut(x).unwrap() = Value::List(vec![Value::Shared(x), Value::Shared(x)]);
            g.set_root(Value::Shared(x));
            g
        }
        "stress_references" => {
            let mut g = Graph::default();
            let t = g.add_node(Value::None);
            let reref = g.add_node(Value::List(vec![Value::Shared(t)]));
            *g.node_mut(t).unwrap() = Value::Tuple(vec![
                Value::Dict(vec![(s("list"), Value::Shared(reref))]),
                Value::Shared(reref),
            ]);
            g.set_root(Value::Shared(t));
            g
        }
        "more_references" => {
            let mut g = Graph::default();
            let t = g.add_node(Value::None);
            *g.node_mut(t).unwrap() =
                Value::Tuple(vec![Value::List(vec![Value::Tuple(vec![Value::Shared(
                    t,
                )])])]);
            g.set_root(Value::Shared(t));
            g
        }
        "shared_tuple_as_key_and_value" => {
            let mut g = Graph::default();
            let t = g.add_node(Value::Tuple(vec![Value::Int(1), by("x")]));
            g.set_root(Value::List(vec![
                Value::Dict(vec![(Value::Shared(t), Value::Shared(t))]),
                Value::Shared(t),
            ]));
            g
        }
        "cycle_through_dict" => {
            let mut g = Graph::default();
            let d = g.add_node(Value::None);
            *g.node_mut(d).unwrap() = Value::Dict(vec![(s("self"), Value::Shared(d))]);
            g.set_root(Value::Tuple(vec![
                Value::Shared(d),
                s("x"),
                Value::Shared(d),
            ]));
            g
        }
        other => panic!("the script has a case pb does not know: {other}"),
    }
}

fn pb_codec() -> BananaCodec {
    let mut codec = BananaCodec::new(BananaConfig::default());
    codec.set_dialect(Dialect::Pb);
    codec
}

fn encode(g: &Graph) -> Vec<u8> {
    let mut dst = BytesMut::new();
    jelly::encode(g, &JellyConfig::default(), &pb_codec(), &mut dst).unwrap();
    dst.to_vec()
}

#[test]
fn jelly_and_banana_bytes_match_real_twisted_both_ways() {
    let python = python();

    // Twisted -> pb.
    let out = Command::new(&python)
        .arg(script())
        .arg("encode")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut names = Vec::new();
    for line in text.lines() {
        let (name, hexdata) = line.split_once(' ').unwrap();
        let twisted = unhex(hexdata);
        let ours = case(name);
        assert_eq!(
            hex(&encode(&ours)),
            hexdata,
            "pb encodes {name} differently"
        );
        let decoded = jelly::decode(
            &twisted,
            &JellyConfig::default(),
            BananaConfig::default(),
            Dialect::Pb,
        )
        .unwrap_or_else(|e| panic!("pb cannot decode Twisted's {name}: {e}"));
        assert_eq!(encode(&decoded), twisted, "{name} does not survive a trip");
        // Tree cases decode to exactly pb's value; graphs are checked through their bytes.
        if ours.node_count() == 0 && name != "float_nan" {
            assert_eq!(decoded, ours, "{name}");
        }
        names.push(name.to_owned());
    }
    assert!(names.len() >= 40, "only {} cases", names.len());

    // pb -> Twisted.
    let mut child = Command::new(&python)
        .arg(script())
        .arg("check")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for name in &names {
            writeln!(stdin, "{name} {}", hex(&encode(&case(name)))).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts = String::from_utf8(out.stdout).unwrap();
    let failures: Vec<&str> = verdicts.lines().filter(|l| !l.starts_with("ok ")).collect();
    assert!(
        failures.is_empty(),
        "Twisted disagrees:\n{}",
        failures.join("\n")
    );
    assert_eq!(verdicts.lines().count(), names.len());
}

/// What a decoder made of some bytes, in the script's `banana` mode's words: `err`, or `ok`,
/// each expression re-encoded in the pb dialect (comma-separated, `-` for none), and whether
/// bytes of an unfinished expression are held.
fn pb_banana_verdict(wire: &[u8]) -> String {
    let mut codec = pb_codec();
    let mut buf = BytesMut::from(wire);
    let mut exprs = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(e)) => {
                let mut out = BytesMut::new();
                pb_codec().encode(&e, &mut out).unwrap();
                exprs.push(hex(&out));
            }
            Ok(None) => break,
            Err(_) => return "err".to_owned(),
        }
    }
    let exprs = if exprs.is_empty() {
        "-".to_owned()
    } else {
        exprs.join(",")
    };
    let partial = if codec.is_idle() && buf.is_empty() {
        "whole"
    } else {
        "partial"
    };
    format!("ok {exprs} {partial}")
}

fn twisted_banana_verdicts(python: &Path, cases: &[String]) -> Vec<String> {
    let mut child = Command::new(python)
        .arg(script())
        .arg("banana")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for case in cases {
            writeln!(stdin, "{case}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(verdicts.len(), cases.len());
    verdicts
}

#[test]
fn banana_decoders_agree_on_edge_cases_and_hostile_bytes() {
    let python = python();
    let word = hex(b"version");
    let cases: Vec<String> = [
        // Lenient forms: empty prefixes, small longs, a big INT, a prefix before FLOAT, a
        // vocabulary word spelled out.
        "81".to_owned(),
        "80".to_owned(),
        "82".to_owned(),
        "0083".to_owned(),
        "0585".to_owned(),
        "0586".to_owned(),
        "7f7f7f7f7f7f7f7f7f7f81".to_owned(),
        "7f7f7f7f7f7f7f7f7f81".to_owned(),
        "05843ff8000000000000".to_owned(),
        format!("0782{word}"),
        "1f87".to_owned(),
        // The prefix limit: 64 bytes pass, 65 fail, with or without a type byte.
        format!("{}85", "7f".repeat(64)),
        format!("{}86", "7f".repeat(64)),
        format!("{}85", "7f".repeat(65)),
        "01".repeat(64),
        "01".repeat(65),
        // The size limit, on lists and strings, at and over it; 4 GB claims.
        "00002880".to_owned(),
        "01002880".to_owned(),
        "00002882".to_owned(),
        "01002882".to_owned(),
        "020101010180".to_owned(),
        "020101010182".to_owned(),
        "000000000480".to_owned(),
        // Garbage and unknown vocabulary.
        "0188".to_owned(),
        "ff".to_owned(),
        "7a87".to_owned(),
        "0087".to_owned(),
        "2087".to_owned(),
        // Truncation and several expressions in one read.
        "02800181".to_owned(),
        "843ff8".to_owned(),
        "00".to_owned(),
        format!("0a82{}", hex(b"hello")),
        "01818101".to_owned(),
        "03800080008000800281".to_owned(),
        "0280028001810281".to_owned(),
    ]
    .into_iter()
    .collect();
    let twisted = twisted_banana_verdicts(&python, &cases);
    for (case, theirs) in cases.iter().zip(&twisted) {
        assert_eq!(&pb_banana_verdict(&unhex(case)), theirs, "bytes {case}");
    }
    // pb's nesting limit refuses what Twisted, which has none, accepts.
    let deep = vec![format!("{}0080", "0180".repeat(64))];
    let theirs = twisted_banana_verdicts(&python, &deep);
    assert!(theirs[0].starts_with("ok "), "Twisted: {}", theirs[0]);
    assert_eq!(pb_banana_verdict(&unhex(&deep[0])), "err");
    // One level less, both take it.
    let deep = format!("{}0080", "0180".repeat(63));
    assert_eq!(
        pb_banana_verdict(&unhex(&deep)),
        twisted_banana_verdicts(&python, std::slice::from_ref(&deep))[0]
    );
}

/// A child process killed when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One side of a raw PB connection: Banana over a blocking socket.
struct Wire {
    stream: TcpStream,
    codec: BananaCodec,
    buf: BytesMut,
}

impl Wire {
    fn read(&mut self) -> Element {
        loop {
            if let Some(e) = self.codec.decode(&mut self.buf).unwrap() {
                return e;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn send(&mut self, e: &Element) {
        let mut out = BytesMut::new();
        self.codec.encode(e, &mut out).unwrap();
        self.stream.write_all(&out).unwrap();
    }
}

fn atom(word: &'static str) -> Element {
    Element::from(word)
}

#[test]
fn a_live_twisted_pb_server_echoes_every_value_with_its_sharing() {
    let python = python();
    let mut child = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/twisted/pb_echo_server.py"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap();

    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut wire = Wire {
        stream,
        codec: BananaCodec::default(),
        buf: BytesMut::new(),
    };
    // The handshake: the server offers, we choose, then both say `version` 6.
    let offer = wire.read();
    assert_eq!(offer, Dialect::offer());
    assert_eq!(Dialect::choose(&offer), Some(Dialect::Pb));
    wire.send(&atom("pb"));
    wire.codec.set_dialect(Dialect::Pb);
    wire.send(&Element::List(vec![atom("version"), Element::Int(6)]));
    assert_eq!(
        wire.read(),
        Element::List(vec![atom("version"), Element::Int(6)])
    );

    // Every case the script knows except those Twisted's default security refuses (an
    // instance of __main__) or rewrites (an unpersistable), one call each.
    let names: Vec<&str> = [
        "int_small",
        "int_zero",
        "int_neg",
        "int_2_31",
        "int_neg_2_31_minus_1",
        "int_2_63",
        "int_2_64_plus_1",
        "int_neg_2_100",
        "int_max_448",
        "float",
        "float_neg_zero",
        "float_inf",
        "float_nan",
        "bytes",
        "bytes_vocab_word",
        "bytes_empty",
        "str",
        "str_empty",
        "none",
        "true",
        "false",
        "list",
        "tuple",
        "dict",
        "set",
        "frozenset",
        "decimal_995",
        "decimal_neg",
        "decimal_trailing_zero",
        "decimal_big",
        "decimal_exp",
        "datetime",
        "date",
        "time",
        "timedelta",
        "shared_dict_and_cycle",
        "identity",
        "stress_references",
        "more_references",
        "shared_tuple_as_key_and_value",
        "cycle_through_dict",
    ]
    .to_vec();
    let config = JellyConfig::default();
    let kwargs = jelly::to_sexp(&Graph::new(Value::Dict(vec![])), &config).unwrap();
    for (n, name) in names.iter().enumerate() {
        let request = n as i64 + 1;
        // The arguments are one tuple, jellied together: wrap the case's root in it.
        let (root, nodes) = case(name).into_parts();
        let args = Graph::from_parts(Value::Tuple(vec![root.clone()]), nodes.clone());
        wire.send(&Element::List(vec![
            atom("message"),
            Element::Int(request),
            atom("root"),
            atom("echo"),
            Element::Int(1),
            jelly::to_sexp(&args, &config).unwrap(),
            kwargs.clone(),
        ]));
        let answer = wire.read();
        let Element::List(parts) = &answer else {
            panic!("{name}: not a list: {answer:?}");
        };
        assert_eq!(parts.first(), Some(&atom("answer")), "{name}: {answer:?}");
        assert_eq!(parts.get(1), Some(&Element::Int(request)), "{name}");
        let echoed = jelly::from_sexp(parts.get(2).unwrap(), &config).unwrap();
        assert!(
            echoed.equivalent(&Graph::from_parts(root, nodes)),
            "{name}: sent {:?}, got {echoed:?}",
            case(name)
        );
    }
}
