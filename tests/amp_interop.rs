//! Interop with real Twisted (`twisted[tls]==26.10.0` from PyPI): the pb client against a Twisted
//! server, a Twisted client against the pb server, and the calculator examples against Twisted.
//!
//! The test binary builds its own virtualenv under `target/pb-interop-venv` the first time (once
//! per process, reused when complete) from `python3` (or `$PB_INTEROP_PYTHON`) and runs the Python
//! peers in `tests/interop/`. If python3, the virtualenv or the install is missing, these tests
//! fail; they never skip.
//!
//! About a thousand lines, on purpose: this is one suite against one peer (Twisted's AMP), in
//! both directions and through the examples, and its tests share the helpers that run and read
//! the Python peers.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pb::amp::{
    AmpBox, AmpCallError, AmpConfig, AmpConnection, AmpFields, AmpList, BigInt, Bytes, DateTime,
    Decimal, DisconnectReason, Locator, rustls,
};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// The Python environment and child processes.

#[path = "interop/venv.rs"]
mod venv;

#[path = "interop/peer.rs"]
mod peer;

use peer::{Peer, closed_after, example_binary, run_to_end, spawn_peer, wait_for_line};
use venv::python;

async fn start_twisted_server(extra: &[&str]) -> (Peer, u16) {
    let py = python();
    let mut args = vec!["amp_server.py"];
    args.extend_from_slice(extra);
    let mut peer = spawn_peer(&py, &args, "twisted amp_server.py");
    let port = wait_for_line(&mut peer, "PORT ").await.parse().unwrap();
    (peer, port)
}

// ---------------------------------------------------------------------------------------------
// TLS material for StartTLS.

struct Tls {
    dir: PathBuf,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls() -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_der = certified.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("amp-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_pem = certified.cert.pem();
    std::fs::write(dir.join("ca.pem"), &cert_pem).unwrap();
    std::fs::write(
        dir.join("server.pem"),
        format!("{}{}", certified.key_pair.serialize_pem(), cert_pem),
    )
    .unwrap();
    Tls {
        dir,
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

// ---------------------------------------------------------------------------------------------
// The commands of tests/interop/amp_commands.py.

#[derive(pb::AmpCommand)]
#[amp(response = SumResult)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(pb::AmpFields)]
struct SumResult {
    total: i128,
}

#[derive(pb::AmpCommand)]
#[amp(response = DivideResult, errors = DivideError)]
struct Divide {
    numerator: i64,
    denominator: i64,
}

#[derive(pb::AmpFields)]
struct DivideResult {
    result: f64,
}

#[derive(pb::AmpError, Debug, PartialEq)]
enum DivideError {
    #[amp(code = "ZERO_DIVISION")]
    ZeroDivision(String),
}

#[derive(pb::AmpFields, Debug, Clone, PartialEq)]
struct Row {
    x: i64,
    y: String,
}

#[derive(pb::AmpCommand, Debug, Clone)]
#[amp(response = AmpBox)]
struct AllTypes {
    i: i64,
    big: BigInt,
    s: Bytes,
    u: String,
    yes: bool,
    no: bool,
    /// Not `f`: an argument named `f` breaks every Twisted responder (maybeDeferred's own `f`).
    flt: f64,
    fs: Vec<f64>,
    d: Decimal,
    ds: Vec<Decimal>,
    dt: DateTime,
    dts: Vec<DateTime>,
    li: Vec<i64>,
    lu: Vec<String>,
    ls: Vec<Bytes>,
    rows: AmpList<Row>,
    opt_absent: Option<i64>,
    opt_present: Option<String>,
    #[amp(name = "dash-name")]
    dash_name: i64,
}

fn canonical() -> AllTypes {
    let dec = |s: &str| s.parse::<Decimal>().unwrap();
    AllTypes {
        i: -1234567890123,
        big: "1606938044258990275541962092341162602522202993782792835301377"
            .parse()
            .unwrap(),
        s: Bytes::from((0..=255u8).collect::<Vec<u8>>()),
        u: "h\u{e9}llo \u{2603} \u{1f600}".into(),
        yes: true,
        no: false,
        flt: 0.1,
        fs: vec![
            1e16,
            1e-7,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1.5,
            123456789012345678.0,
        ],
        d: dec("1.10"),
        ds: [
            "1E+2",
            "-0",
            "0.00003141",
            "NaN",
            "-sNaN",
            "Infinity",
            "-1.50E+3",
        ]
        .iter()
        .map(|s| dec(s))
        .collect(),
        dt: DateTime::from_parts((2012, 1, 23), (12, 34, 56, 54321), 0).unwrap(),
        dts: vec![
            DateTime::from_parts((2010, 12, 25), (0, 0, 0, 0), 330).unwrap(),
            DateTime::from_parts((1999, 12, 31), (23, 59, 59, 999999), -300).unwrap(),
        ],
        li: vec![1, -2, 300, i64::MAX],
        lu: vec!["".into(), "a".into(), "\u{2603}".into()],
        ls: vec![
            Bytes::new(),
            Bytes::from_static(b"\0"),
            Bytes::from_static(b"bytes"),
        ],
        rows: AmpList(vec![
            Row {
                x: 1,
                y: "a".into(),
            },
            Row {
                x: 2,
                y: "\u{2603}".into(),
            },
        ]),
        opt_absent: None,
        opt_present: Some("here".into()),
        dash_name: 7,
    }
}

/// The names of the fields of `got` that differ from [`canonical`] (floats compared bit for bit).
fn mismatches(got: &AllTypes) -> Vec<&'static str> {
    let want = canonical();
    let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    let mut wrong = Vec::new();
    let checks = [
        ("i", got.i == want.i),
        ("big", got.big == want.big),
        ("s", got.s == want.s),
        ("u", got.u == want.u),
        ("yes", got.yes == want.yes),
        ("no", got.no == want.no),
        ("flt", got.flt.to_bits() == want.flt.to_bits()),
        ("fs", bits(&got.fs) == bits(&want.fs)),
        ("d", got.d == want.d),
        ("ds", got.ds == want.ds),
        ("dt", got.dt == want.dt),
        ("dts", got.dts == want.dts),
        ("li", got.li == want.li),
        ("lu", got.lu == want.lu),
        ("ls", got.ls == want.ls),
        ("rows", got.rows == want.rows),
        ("opt_absent", got.opt_absent == want.opt_absent),
        ("opt_present", got.opt_present == want.opt_present),
        ("dash_name", got.dash_name == want.dash_name),
    ];
    for (name, ok) in checks {
        if !ok {
            wrong.push(name);
        }
    }
    wrong
}

#[derive(pb::AmpCommand)]
#[amp(requires_answer = false)]
struct Notify {
    msg: String,
}

#[derive(pb::AmpCommand)]
#[amp(response = Notified)]
struct GetNotified {}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct Notified {
    msgs: Vec<String>,
}

#[derive(pb::AmpCommand)]
#[amp(response = Held)]
struct Hold {
    n: i64,
    total: i64,
}

#[derive(pb::AmpFields, Debug)]
struct Held {
    n: i64,
    order: i64,
}

#[derive(pb::AmpCommand)]
#[amp(response = Echoed)]
struct Echo {
    s: Bytes,
}

#[derive(pb::AmpFields)]
struct Echoed {
    s: Bytes,
}

#[derive(pb::AmpCommand)]
#[amp(errors = FatalError)]
struct Fatal {}

#[derive(pb::AmpError, Debug, PartialEq)]
enum FatalError {
    #[amp(code = "FATAL_THING", fatal)]
    FatalThing(String),
}

#[derive(pb::AmpCommand)]
struct Broken {}

#[derive(pb::AmpCommand)]
#[amp(response = SumResult)]
struct CallMeBack {
    a: i64,
    b: i64,
}

#[derive(pb::AmpCommand)]
#[amp(response = Reprs)]
struct FloatReprs {
    fs: Vec<f64>,
}

#[derive(pb::AmpFields)]
struct Reprs {
    reprs: Vec<String>,
}

#[derive(pb::AmpCommand)]
#[amp(response = Strs)]
struct DecimalStrs {
    texts: Vec<String>,
}

#[derive(pb::AmpCommand)]
#[amp(response = EchoedDecimal)]
struct EchoDecimal {
    d: Decimal,
}

#[derive(pb::AmpFields)]
struct EchoedDecimal {
    d: Decimal,
}

#[derive(pb::AmpCommand)]
#[amp(response = Accepted)]
struct DecimalsAccepted {
    texts: Vec<String>,
}

#[derive(pb::AmpFields)]
struct Accepted {
    accepted: Vec<bool>,
}

#[derive(pb::AmpFields)]
struct Strs {
    strs: Vec<String>,
}

/// A deterministic spread of doubles: every exponent range, subnormals, integers, specials.
fn many_floats() -> Vec<f64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = vec![
        0.0,
        -0.0,
        1.0,
        0.1,
        1e15,
        1e16,
        1e-4,
        1e-5,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
    ];
    while out.len() < 1500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = f64::from_bits(x);
        if f.is_finite() {
            out.push(f);
            // Also short decimals, where positional and exponent forms meet.
            out.push((x % 100_000) as f64 / 10f64.powi((x % 23) as i32 - 3));
        }
    }
    out
}

/// Repr of a float as pb writes it, read back from the encoding of a one-element list.
fn pb_repr(f: f64) -> String {
    use pb::amp::AmpValue;
    let mut out = Vec::new();
    f.encode_value(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn sum_locator() -> Locator {
    Locator::new().respond(|Sum { a, b }| async move {
        Ok(SumResult {
            total: i128::from(a) + i128::from(b),
        })
    })
}

/// Holds `total` asks, then answers them in reverse order of arrival.
#[derive(Default, Clone)]
struct HoldRoom(Arc<Mutex<Vec<oneshot::Sender<i64>>>>);

impl HoldRoom {
    fn enter(&self, total: i64) -> oneshot::Receiver<i64> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.0.lock().unwrap();
        waiting.push(tx);
        if waiting.len() as i64 >= total {
            for (order, tx) in waiting.drain(..).rev().enumerate() {
                let _ = tx.send(order as i64);
            }
        }
        rx
    }
}

/// The pb server's responders for the Twisted client (`amp_client.py`).
fn full_locator(conn: &AmpConnection, hold: HoldRoom) -> Locator {
    let notified = Arc::new(Mutex::new(Vec::<String>::new()));
    let store = Arc::clone(&notified);
    let peer = conn.clone();
    sum_locator()
        .respond(
            |Divide {
                 numerator,
                 denominator,
             }| async move {
                if denominator == 0 {
                    return Err(DivideError::ZeroDivision("division by zero".into()));
                }
                Ok(DivideResult {
                    result: numerator as f64 / denominator as f64,
                })
            },
        )
        .respond(|args: AllTypes| async move {
            let mut b = AmpBox::new();
            args.to_box(&mut b).unwrap();
            b.insert("mismatches", mismatches(&args).join(","));
            Ok(b)
        })
        .respond(move |Notify { msg }| {
            store.lock().unwrap().push(msg);
            async { Ok(()) }
        })
        .respond(move |GetNotified {}| {
            let msgs = notified.lock().unwrap().clone();
            async move { Ok(Notified { msgs }) }
        })
        .respond(move |Hold { n, total }| {
            let rx = hold.enter(total);
            async move {
                let order = rx.await.unwrap_or(-1);
                Ok(Held { n, order })
            }
        })
        .respond(|Echo { s }| async move { Ok(Echoed { s }) })
        .respond(
            |Fatal {}| async move { Err::<(), _>(FatalError::FatalThing("fatal thing".into())) },
        )
        .respond(move |CallMeBack { a, b }| {
            let peer = peer.clone();
            async move {
                let r = peer.call(&Sum { a, b }).await;
                Ok(r.expect("the twisted client answers Sum"))
            }
        })
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_client_calls_twisted_server() {
    let (_server, port) = start_twisted_server(&[]).await;
    let conn = AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), sum_locator())
        .await
        .unwrap();

    // The calculator, with the declared error.
    assert_eq!(conn.call(&Sum { a: 13, b: 81 }).await.unwrap().total, 94);
    assert_eq!(
        conn.call(&Divide {
            numerator: 1234,
            denominator: 4
        })
        .await
        .unwrap()
        .result,
        308.5
    );
    match conn
        .call(&Divide {
            numerator: 1,
            denominator: 0,
        })
        .await
    {
        Err(AmpCallError::Declared(DivideError::ZeroDivision(d))) => {
            assert!(d.contains("division by zero"), "{d}")
        }
        other => panic!(
            "expected ZERO_DIVISION, got {other:?}",
            other = other.map(|r| r.result)
        ),
    }

    // Every argument type, both ways: Twisted checks what it decoded, pb checks the echo.
    let answer = conn.call(&canonical()).await.unwrap();
    assert_eq!(
        answer.get("mismatches"),
        Some(&b""[..]),
        "twisted decoded differently"
    );
    let echoed = AllTypes::from_box(&answer).unwrap();
    assert_eq!(
        mismatches(&echoed),
        Vec::<&str>::new(),
        "pb decoded the echo differently"
    );
    assert!(!answer.contains_key("opt_absent"));

    // Unknown commands get UNHANDLED and the connection stays.
    match conn.call_raw("NoSuchCmd", AmpBox::new()).await {
        Err(AmpCallError::Unhandled { description }) => {
            assert_eq!(description, "Unhandled Command: b'NoSuchCmd'")
        }
        other => panic!("expected UNHANDLED, got {other:?}"),
    }
    assert_eq!(conn.call(&Sum { a: 1, b: 2 }).await.unwrap().total, 3);

    // Commands that require no answer.
    conn.send(&Notify {
        msg: "hi \u{2603}".into(),
    })
    .await
    .unwrap();
    conn.send(&Notify {
        msg: "again".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        conn.call(&GetNotified {}).await.unwrap(),
        Notified {
            msgs: vec!["hi \u{2603}".into(), "again".into()]
        }
    );

    // 500 concurrent asks, answered by Twisted in reverse order of arrival.
    let total = 500;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..total {
        let conn = conn.clone();
        calls.spawn(async move { (n, conn.call(&Hold { n, total }).await) });
    }
    let mut orders = vec![-1; total as usize];
    while let Some(done) = calls.join_next().await {
        let (n, held) = done.unwrap();
        let held = held.unwrap();
        assert_eq!(held.n, n, "an answer went to the wrong call");
        orders[n as usize] = held.order;
    }
    let mut sorted = orders.clone();
    sorted.sort();
    assert_eq!(sorted, (0..total).collect::<Vec<_>>());
    assert_ne!(orders, sorted, "twisted answered in ask order");

    // The 65 535-byte boundary.
    let big = Bytes::from(vec![b'x'; 65535]);
    assert_eq!(conn.call(&Echo { s: big.clone() }).await.unwrap().s, big);
    match conn
        .call(&Echo {
            s: Bytes::from(vec![b'x'; 65536]),
        })
        .await
    {
        Err(AmpCallError::Arguments(pb::amp::ArgumentError::Field { name, source })) => {
            assert_eq!(name, "s");
            assert_eq!(*source, pb::amp::ArgumentError::ValueTooLong { len: 65536 });
        }
        other => panic!("expected a local error, got {:?}", other.map(|e| e.s.len())),
    }

    // Twisted calls the pb client back on the same connection.
    assert_eq!(
        conn.call(&CallMeBack { a: 20, b: 22 }).await.unwrap().total,
        42
    );

    // A fatal declared error arrives, then the connection closes.
    let fatal = AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), Locator::new())
        .await
        .unwrap();
    assert_eq!(
        fatal.call(&Fatal {}).await.unwrap_err(),
        AmpCallError::Declared(FatalError::FatalThing("fatal thing".into()))
    );
    assert_eq!(fatal.closed().await, DisconnectReason::PeerClosed);

    // An undeclared failure is UNKNOWN, then the connection closes.
    let broken = AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), Locator::new())
        .await
        .unwrap();
    match broken.call(&Broken {}).await {
        Err(AmpCallError::Remote { code, description }) => {
            assert_eq!(
                (code.as_ref(), description.as_str()),
                (&b"UNKNOWN"[..], "Unknown Error")
            )
        }
        other => panic!("expected UNKNOWN, got {other:?}"),
    }
    assert_eq!(broken.closed().await, DisconnectReason::PeerClosed);
    assert!(matches!(
        broken.call(&Sum { a: 1, b: 1 }).await,
        Err(AmpCallError::Disconnected(_))
    ));

    // The first connection is unaffected by the others.
    assert_eq!(conn.call(&Sum { a: 2, b: 2 }).await.unwrap().total, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floats_and_decimals_are_written_as_python_writes_them() {
    let (_server, port) = start_twisted_server(&[]).await;
    let conn = AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), Locator::new())
        .await
        .unwrap();
    let floats = many_floats();
    for batch in floats.chunks(500) {
        let reprs = conn
            .call(&FloatReprs { fs: batch.to_vec() })
            .await
            .unwrap()
            .reprs;
        assert_eq!(reprs.len(), batch.len());
        for (f, python) in batch.iter().zip(&reprs) {
            assert_eq!(&pb_repr(*f), python, "bits {:#x}", f.to_bits());
        }
    }
    let texts: Vec<String> = [
        "0",
        "-0",
        "1.10",
        "100",
        "1e2",
        "1E+2",
        "1.5e3",
        "-1.50E+3",
        "0.000001",
        "0.0000001",
        "123456789.123456789",
        "1e-7",
        "1E-6",
        "0.00",
        "0E-10",
        "0e6",
        "5.",
        ".5",
        "007.50",
        "1_000.000_1",
        "3.141E5",
        "3.141e-5",
        "-3.141E-7",
        "12345678901234567890E-30",
        "9.99E+999",
        "-1E-999",
        "Infinity",
        "-inf",
        "nan",
        "-NaN",
        "sNaN",
        "-snan",
        "NaN0042",
        " 42 ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let strs = conn
        .call(&DecimalStrs {
            texts: texts.clone(),
        })
        .await
        .unwrap()
        .strs;
    for (text, python) in texts.iter().zip(&strs) {
        let ours = text.parse::<Decimal>().unwrap().to_string();
        assert_eq!(&ours, python, "Decimal({text:?})");
    }
}

/// `pb::amp::Decimal` accepts exactly what CPython's C `_decimal` (Twisted's) accepts at the
/// ends of its exponent range (`MAX_EMAX`, `MIN_ETINY`), and each value it accepts crosses a
/// Twisted responder and back unchanged: pb never sends a decimal that makes a Twisted peer
/// fail (`UNKNOWN`) and drop the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decimal_pb_accepts_is_one_twisted_accepts() {
    let (_server, port) = start_twisted_server(&[]).await;
    let conn = AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), Locator::new())
        .await
        .unwrap();
    let texts: Vec<String> = [
        "1.5",
        "1E+999999999999999999",
        "10E+999999999999999999",
        "1E+1000000000000000000",
        "0.1E+1000000000000000000",
        "00010E+999999999999999998",
        "0E+999999999999999999",
        "0E+1000000000000000000",
        "-0E+1000000000000000000",
        "1E-999999999999999999",
        "1E-1999999999999999997",
        "-1E-1999999999999999997",
        "1E-1999999999999999998",
        "10E-1999999999999999998",
        "0E-1999999999999999997",
        "0E-1999999999999999998",
        "1.0E-1999999999999999997",
        "0.00001E+1000000000000000004",
        "0.00001E+1000000000000000005",
        "12E9223372036854775807",
        "1E-2000000000000000000",
        "1E+99999999999999999999999999",
        "1e-9223372036854775808",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let python = conn
        .call(&DecimalsAccepted {
            texts: texts.clone(),
        })
        .await
        .unwrap()
        .accepted;
    assert_eq!(python.len(), texts.len());
    for (text, python) in texts.iter().zip(python) {
        let ours = text.parse::<Decimal>();
        assert_eq!(ours.is_ok(), python, "Decimal({text:?}): pb {ours:?}");
        if let Ok(d) = ours {
            let back = conn.call(&EchoDecimal { d: d.clone() }).await.unwrap().d;
            assert_eq!(back, d, "Decimal({text:?}) through twisted");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_client_starts_tls_with_twisted_server() {
    let tls = tls();
    let pem = tls.dir.join("server.pem");
    let (_server, port) = start_twisted_server(&["--tls-pem", pem.to_str().unwrap()]).await;
    let conn = AmpConnection::connect(("127.0.0.1", port), AmpConfig::default(), Locator::new())
        .await
        .unwrap();
    assert_eq!(conn.call(&Sum { a: 1, b: 2 }).await.unwrap().total, 3);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    conn.start_tls(Arc::clone(&tls.client), name.clone())
        .await
        .unwrap();
    assert_eq!(conn.call(&Sum { a: 40, b: 2 }).await.unwrap().total, 42);
    assert_eq!(
        conn.call(&canonical()).await.unwrap().get("mismatches"),
        Some(&b""[..])
    );
    assert_eq!(
        conn.start_tls(Arc::clone(&tls.client), name).await,
        Err(AmpCallError::OnlyOneTls)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twisted_client_calls_pb_server() {
    let tls = tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = HoldRoom::default();
    let config = AmpConfig::default().tls_server(Arc::clone(&tls.server));
    let server = tokio::spawn(pb::amp::serve(listener, config, move |conn| {
        full_locator(conn, hold.clone())
    }));
    let ca = tls.dir.join("ca.pem");
    let port = port.to_string();
    let (ok, out) = run_to_end(
        &python(),
        &[
            "amp_client.py",
            "--port",
            &port,
            "--tls-ca",
            ca.to_str().unwrap(),
        ],
        "twisted amp_client.py",
    )
    .await;
    server.abort();
    print!("{out}");
    for check in [
        "sum",
        "divide",
        "divide_by_zero",
        "all_types_decoded_by_pb",
        "all_types_echoed_by_pb",
        "unknown_command",
        "connection_stays_after_unknown_command",
        "no_answer_command",
        "500_concurrent_asks_matched",
        "500_concurrent_asks_all_answered",
        "500_concurrent_asks_out_of_order",
        "value_of_65535_bytes",
        "value_of_65536_bytes_refused_locally",
        "pb_calls_back_the_twisted_client",
        "sum_after_starttls",
        "transport_is_tls",
        "fatal_error",
        "fatal_error_closes_the_connection",
        "bad_argument_gives_unknown",
        "unknown_error_closes_the_connection",
    ] {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "check {check} did not pass:\n{out}"
        );
    }
    assert!(out.contains(" passed, 0 failed"), "{out}");
    assert!(ok, "the twisted client failed:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_example_client_against_twisted_server() {
    let client = example_binary("amp_calculator_client");
    let (_server, port) = start_twisted_server(&[]).await;
    let port = port.to_string();
    let (ok, out) = run_to_end(&client, &["--port", &port], "amp_calculator_client").await;
    print!("{out}");
    assert!(
        ok,
        "the pb calculator client failed against twisted:\n{out}"
    );
    assert!(out.contains("Sum(a=13, b=81) = 94 (ok)"), "{out}");
    assert!(out.contains("ZERO_DIVISION"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twisted_client_against_pb_example_server() {
    let server_bin = example_binary("amp_calculator_server");
    let mut server = spawn_peer(&server_bin, &["--port", "0"], "amp_calculator_server");
    let addr = wait_for_line(&mut server, "amp calculator listening on ").await;
    let port = addr.rsplit(':').next().unwrap().to_string();
    let (ok, out) = run_to_end(
        &python(),
        &["amp_client.py", "--port", &port, "--only", "calculator"],
        "twisted amp_client.py --only calculator",
    )
    .await;
    print!("{out}");
    for check in ["sum", "divide", "divide_by_zero"] {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "{check}:\n{out}"
        );
    }
    assert!(
        ok,
        "the twisted client failed against the pb example server:\n{out}"
    );
}

/// Sends `input` on a fresh connection and returns what the server sent before closing.
async fn reaction(port: u16, input: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    closed_after(&mut s, input).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_the_same_reaction_from_pb_and_twisted() {
    let (_twisted, twisted_port) = start_twisted_server(&[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pb_port = listener.local_addr().unwrap().port();
    let hold = HoldRoom::default();
    let server = tokio::spawn(pb::amp::serve(
        listener,
        AmpConfig::default(),
        move |conn| full_locator(conn, hold.clone()),
    ));
    // Each input makes Twisted close the connection (table 2.10 of the reference); pb must send
    // the very same bytes before closing too.
    let cases: &[(&str, &[u8])] = &[
        ("key length prefix 256", b"\x01\x00"),
        ("key length prefix 256 after a pair", b"\x00\x01a\x00\x011\x01\x00"),
        ("empty box", b"\x00\x00"),
        ("box with no special key", b"\x00\x01a\x00\x011\x00\x00"),
        ("answer for an unknown tag", b"\x00\x07_answer\x00\x03999\x00\x00"),
        (
            "error for an unknown tag",
            b"\x00\x06_error\x00\x03999\x00\x0b_error_code\x00\x01X\x00\x12_error_description\x00\x00\x00\x00",
        ),
        (
            "unknown command without _ask",
            b"\x00\x08_command\x00\x09NoSuchCmd\x00\x00",
        ),
        (
            "missing argument",
            b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x03Sum\x00\x01a\x00\x011\x00\x00",
        ),
        (
            "bad integer",
            b"\x00\x04_ask\x00\x012\x00\x08_command\x00\x03Sum\x00\x01a\x00\x01x\x00\x01b\x00\x011\x00\x00",
        ),
        (
            "bad utf-8 in a no-answer command",
            b"\x00\x08_command\x00\x06Notify\x00\x03msg\x00\x02\xff\xfe\x00\x00",
        ),
        (
            "answers, then an empty box",
            b"\x00\x04_ask\x00\x02ab\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00\x00\x00",
        ),
        // A fatal error closes as `loseConnection` does: what was read with it is answered.
        (
            "bad integer, then a call in the same write",
            b"\x00\x04_ask\x00\x012\x00\x08_command\x00\x03Sum\x00\x01a\x00\x01x\x00\x01b\x00\x011\x00\x00\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00",
        ),
        (
            "answer for an unknown tag, then a call",
            b"\x00\x07_answer\x00\x03999\x00\x00\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00",
        ),
        (
            "missing argument, then a call",
            b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x03Sum\x00\x01a\x00\x011\x00\x00\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00",
        ),
        (
            "bad utf-8 in a no-answer command, then a call",
            b"\x00\x08_command\x00\x06Notify\x00\x03msg\x00\x02\xff\xfe\x00\x00\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00",
        ),
        (
            "box with no special key, then a call",
            b"\x00\x01a\x00\x011\x00\x00\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00",
        ),
        (
            "unknown command without _ask, then a call in the same write",
            b"\x00\x08_command\x00\x09NoSuchCmd\x00\x00\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00",
        ),
    ];
    for (what, input) in cases {
        let from_twisted = reaction(twisted_port, input).await;
        let from_pb = reaction(pb_port, input).await;
        println!("{what}: {from_twisted:?}");
        assert_eq!(from_pb, from_twisted, "{what}");
    }
    server.abort();
}

/// A key length over 255 makes Twisted call `transport.loseConnection()`
/// (`lengthLimitExceeded`), a graceful close: the answers to the boxes before it are still
/// written. (An empty box is an exception out of `dataReceived` instead, which drops them: see
/// "answers, then an empty box" above.) pb answers what came before the long key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_before_a_key_too_long_is_answered_as_twisted_answers_it() {
    let (_twisted, twisted_port) = start_twisted_server(&[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pb_port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(pb::amp::serve(listener, AmpConfig::default(), |_| {
        sum_locator()
    }));
    const SUM_ASK: &[u8] = b"\x00\x04_ask\x00\x013\x00\x08_command\x00\x03Sum\x00\x01a\x00\x012\x00\x01b\x00\x013\x00\x00";
    const SUM_ANSWER: &[u8] = b"\x00\x07_answer\x00\x013\x00\x05total\x00\x015\x00\x00";
    let cases: &[(&str, Vec<u8>)] = &[
        (
            "a call, then a key length prefix of 256",
            [SUM_ASK, b"\x01\x00"].concat(),
        ),
        (
            "a call, then a key length prefix of 256 after a pair",
            [SUM_ASK, b"\x00\x01a\x00\x011\x01\x00"].concat(),
        ),
    ];
    for (what, input) in cases {
        let from_twisted = reaction(twisted_port, input).await;
        // What Twisted does, checked here so that the comparison below means something.
        assert_eq!(from_twisted, SUM_ANSWER, "twisted: {what}");
        let from_pb = reaction(pb_port, input).await;
        assert_eq!(from_pb, from_twisted, "pb differs from twisted: {what}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_example_client_exits_non_zero_on_wrong_answers() {
    let client = example_binary("amp_calculator_client");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // A calculator that gets everything wrong: a bad sum, and no ZERO_DIVISION.
    let server = tokio::spawn(pb::amp::serve(listener, AmpConfig::default(), |_| {
        Locator::new()
            .respond(|Sum { .. }| async move { Ok(SumResult { total: 0 }) })
            .respond(|Divide { .. }| async move { Ok(DivideResult { result: 0.0 }) })
    }));
    let (ok, out) = run_to_end(&client, &["--port", &port], "amp_calculator_client").await;
    server.abort();
    assert!(!ok, "the client accepted wrong answers:\n{out}");
    assert!(out.contains("UNEXPECTED"), "{out}");
}
