//! Interop with real Twisted Perspective Broker (`twisted[tls]==26.10.0` from PyPI): the
//! examples `twisted_pb_server` and `twisted_pb_client` against the Twisted peers in
//! `tests/interop/`, both ways, with plain roots and with cred portals.
//!
//! - The Twisted client `pb_root_client.py` checks every row of the root that the example
//!   server serves (the contract is the docstring of `tests/interop/pb_root_server.py`), then,
//!   against the server started with `--portal`, logins, refusals and the mind.
//! - The example client checks `pb_root_server.py`, the same root written with Twisted, and
//!   logs in to its portal; the Twisted server logs each call, so the test sees that every
//!   method was called and that `exported()` fell back to 0.
//! - Raw bytes over TCP: each of Banana's limits (a string or list over 640 KiB, more than 64
//!   prefix bytes, an unknown type byte) closes the offending connection of the example server
//!   and no other, and a bystander gets the exact bytes Twisted answers.
//!
//! The Python peers print `ok <check>` or `FAIL <check>: <why>`; the tests assert every check
//! by name. The virtualenv is built by `tests/interop/venv.rs`; if python3, the virtualenv or
//! Twisted is missing, these tests fail, never skip. The examples are built by `cargo test`
//! (or `cargo build --examples`). Each test is bounded by [`TEST_LIMIT`], so a broken peer
//! fails it instead of hanging it.

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

#[path = "interop/venv.rs"]
mod venv;

#[path = "interop/peer.rs"]
mod peer;

use peer::{
    PATIENCE, Peer, closed_after, example_binary, run_to_end, run_to_finish, spawn_peer,
    wait_for_line_keeping,
};
use venv::python;

/// The bound on one whole test, child processes included. Not a timing assertion: a healthy
/// run takes a few seconds.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// How often and how many times a test tries to connect to a child that is starting up.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const POLLS: u32 = 1200;

/// The checks of `pb_root_client.py` against a root, one or more per row of the contract.
const ROOT_CHECKS: &[&str] = &[
    "echo_int",
    "echo_int_zero",
    "echo_int_2_31_minus_1",
    "echo_int_2_31",
    "echo_int_minus_2_31",
    "echo_int_minus_2_31_minus_1",
    "echo_int_2_63",
    "echo_int_2_64_plus_1",
    "echo_int_negative",
    "echo_int_minus_2_100",
    "echo_int_2_447",
    "echo_int_largest",
    "echo_int_smallest",
    "echo_float",
    "echo_float_tenth",
    "echo_float_minus_zero",
    "echo_float_inf",
    "echo_float_minus_inf",
    "echo_float_nan",
    "echo_float_subnormal",
    "echo_bytes",
    "echo_bytes_empty",
    "echo_bytes_vocabulary_word",
    "echo_bytes_640_kib",
    "echo_str",
    "echo_str_empty",
    "echo_none",
    "echo_true",
    "echo_false",
    "echo_list",
    "echo_list_empty",
    "echo_tuple",
    "echo_tuple_empty",
    "echo_dict",
    "echo_dict_empty",
    "echo_set",
    "echo_frozenset",
    "echo_decimal",
    "echo_decimal_negative",
    "echo_decimal_exponent",
    "echo_nested",
    "echo_shared_list",
    "echo_shared_in_dict",
    "echo_shared_tuple",
    "echo_cyclic_list",
    "echo_cyclic_dict",
    "add",
    "add_negative_and_large",
    "fail_traps_pb_error",
    "fail_message",
    "fail_no_traceback",
    "call_back",
    "give_back_is_same_object",
    "counter_increment",
    "counter_value",
    "no_answer_call_runs",
    "point_copy",
    "sum_point",
    "cache_state",
    "cache_second_is_shared_proxy",
    "bump_observed_before_answer",
    "unknown_method_is_error",
    "unknown_method_text_is_twisteds",
    "unknown_method_failure_is_complete",
    "bad_arguments_is_error",
    "bad_arguments_failure_is_complete",
    "connection_stays_after_unknown_method",
    "no_answer_call",
    "exported_starts_at_zero",
    "exported_counts_held",
    "exported_falls_to_zero",
    "handshake_bytes",
    "limit_string_over_640_kib_closes",
    "limit_list_over_640_kib_closes",
    "limit_65_prefix_bytes_closes",
    "limit_type_byte_0x88_closes",
    "limit_type_byte_0xff_closes",
    "limits_spare_an_open_connection",
    "limits_spare_a_new_connection",
    "limits_spare_the_twisted_connection",
];

/// The checks of `pb_root_client.py --portal`.
const PORTAL_CHECKS: &[&str] = &[
    "login_alice",
    "whoami_alice",
    "call_mind_alice",
    "login_bob",
    "whoami_bob",
    "call_mind_bob",
    "wrong_password_refused",
    "unknown_user_refused",
    "login_anonymous",
    "whoami_anonymous",
    "call_mind_anonymous",
];

/// The root's methods, every one of which the example client must call.
const ROOT_METHODS: &[&str] = &[
    "echo",
    "add",
    "fail",
    "call_back",
    "give_back",
    "counter",
    "point",
    "sum_point",
    "cache",
    "bump",
    "exported",
];

// ---------------------------------------------------------------------------------------------
// Running the peers.

/// Runs one test's body within [`TEST_LIMIT`].
async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .unwrap_or_else(|_| panic!("the test took over {TEST_LIMIT:?}"))
}

/// A port that was free a moment ago: the child may lose it to another process before it binds,
/// so callers retry with another.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until the child accepts connections on `port` (true) or exits (false).
async fn wait_until_listening(peer: &mut Peer, port: u16) -> bool {
    for _ in 0..POLLS {
        if let Some(status) = peer.child.try_wait().unwrap() {
            eprintln!(
                "{} exited with {status} before listening on {port}; stderr:\n{}",
                peer.name,
                std::fs::read_to_string(&peer.stderr).unwrap_or_default()
            );
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("{} did not listen on port {port}", peer.name)
}

/// Starts the example `twisted_pb_server` on a free port and waits until it listens.
async fn start_example_server(extra: &[&str]) -> (Peer, u16) {
    let program = example_binary("twisted_pb_server");
    for _ in 0..5 {
        let port = free_port();
        let port_arg = port.to_string();
        let mut args = vec!["--port", port_arg.as_str()];
        args.extend_from_slice(extra);
        let mut peer = spawn_peer(&program, &args, "twisted_pb_server");
        // Drain its stdout so that it never blocks on a full pipe.
        let stdout = peer.child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut stdout = stdout;
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut stdout, &mut sink).await;
        });
        if wait_until_listening(&mut peer, port).await {
            return (peer, port);
        }
    }
    panic!("twisted_pb_server did not start on any of five ports")
}

/// Starts `pb_root_server.py` on a port of its choosing; returns it, the port and the task
/// that collects the lines it logs (`called <method>`, `exported <n>`) until it ends.
async fn start_twisted_server(py: &Path, extra: &[&str]) -> (Peer, u16, JoinHandle<Vec<String>>) {
    let mut args = vec!["pb_root_server.py", "--port", "0"];
    args.extend_from_slice(extra);
    let mut peer = spawn_peer(py, &args, "twisted pb_root_server.py");
    let (port, log) = wait_for_line_keeping(&mut peer, "").await;
    (peer, port.parse().unwrap(), log)
}

/// Ends the Twisted server and returns everything it logged after its port.
async fn stop_twisted_server(mut server: Peer, log: JoinHandle<Vec<String>>) -> Vec<String> {
    let _ = server.child.start_kill();
    tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, log).await.unwrap().unwrap()
}

/// Asserts that the Twisted client passed each of `checks` and failed none.
fn assert_checks_passed(out: &str, checks: &[&str]) {
    for check in checks {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "check {check} did not pass:\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// The Twisted client against the example server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twisted_client_checks_every_row_of_the_pb_example_root() {
    let py = python();
    bounded(async {
        let (_server, port) = start_example_server(&[]).await;
        let port = port.to_string();
        let (ok, out) = run_to_end(
            &py,
            &["pb_root_client.py", "--port", &port],
            "twisted pb_root_client.py",
        )
        .await;
        print!("{out}");
        assert_checks_passed(&out, ROOT_CHECKS);
        assert!(
            ok,
            "the twisted client failed against the pb example server:\n{out}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twisted_client_logs_in_to_the_pb_example_portal() {
    let py = python();
    bounded(async {
        let (_server, port) = start_example_server(&["--portal"]).await;
        let port = port.to_string();
        let (ok, out) = run_to_end(
            &py,
            &["pb_root_client.py", "--port", &port, "--portal"],
            "twisted pb_root_client.py --portal",
        )
        .await;
        print!("{out}");
        assert_checks_passed(&out, PORTAL_CHECKS);
        assert!(
            ok,
            "the twisted client failed against the pb example portal:\n{out}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twisted_client_refused_anonymous_login_is_unhandled_credentials() {
    let py = python();
    bounded(async {
        // A portal without anonymous access, as a Twisted portal without an anonymous checker.
        let portal = pb::twisted::Portal::new(
            pb::twisted::Credentials::new().user("alice", "secret"),
            |_, _| PingerRef::new(ThePinger).into(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        tokio::spawn(pb::twisted::serve_with(
            listener,
            move |_| portal.root(),
            pb::twisted::PbConfig::default(),
        ));
        let (ok, out) = run_to_end(
            &py,
            &["pb_root_client.py", "--port", &port, "--anonymous-refused"],
            "twisted pb_root_client.py --anonymous-refused",
        )
        .await;
        print!("{out}");
        assert_checks_passed(&out, &["anonymous_refused_as_unhandled_credentials"]);
        assert!(ok, "{out}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// pb's client, driven directly, against the Twisted server.

#[pb::remote]
pub trait Pinger {
    async fn ping(&self, x: i64) -> i64;
}

struct ThePinger;

impl Pinger for ThePinger {
    async fn ping(&self, x: i64) -> i64 {
        x
    }
}

/// How many of our objects the Twisted server's broker for this connection exports now. Our
/// releases go out before our next call, and Twisted reads in order: the count is settled.
async fn exported_by(root: &pb::ObjectRef) -> i64 {
    root.call::<_, i64, pb::twisted::Failure>("exported", &())
        .await
        .unwrap()
}

/// `pb_root_server.py`, and pb's client connected to it: the server, its log, the connection
/// and the server's root.
async fn pb_client_of_twisted_server(
    py: &Path,
) -> (Peer, JoinHandle<Vec<String>>, pb::Connection, pb::ObjectRef) {
    let (server, port, log) = start_twisted_server(py, &[]).await;
    let conn = pb::twisted::connect(("127.0.0.1", port), pb::twisted::PbConfig::default())
        .await
        .unwrap();
    let root = conn.root_ref();
    (server, log, conn, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_client_releases_every_reference_of_an_answer_it_cannot_resolve() {
    let py = python();
    bounded(async {
        let (server, log, conn, root) = pb_client_of_twisted_server(&py).await;
        // Twisted releases our pinger before it writes the answer that names it: the answer's
        // `["local", luid]` names nothing we export, and fails the call. The counter beside it
        // must be released all the same, as a Twisted client releases it.
        let pinger: pb::ObjectRef = PingerRef::new(ThePinger).into();
        let answer = root
            .call::<_, (Option<pb::ObjectRef>, pb::ObjectRef), pb::twisted::Failure>(
                "give_back_now_with_counter",
                &(pinger,),
            )
            .await;
        assert!(
            matches!(&answer, Err(pb::CallError::BadAnswer(m)) if m.contains("names nothing we export")),
            "{answer:?}"
        );
        assert_eq!(exported_by(&root).await, 0, "the counter was not released");
        conn.close().await;
        stop_twisted_server(server, log).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_client_releases_the_references_an_observed_update_carries() {
    let py = python();
    bounded(async {
        let (server, log, conn, root) = pb_client_of_twisted_server(&py).await;
        let cache: pb::twisted::RemoteCache = root
            .call::<_, _, pb::twisted::Failure>("cache", &())
            .await
            .unwrap();
        // Its owner tells the copy `add(<a new counter>)`, and answers once that is done.
        let told: i64 = root
            .call::<_, _, pb::twisted::Failure>("bump_with_ref", &())
            .await
            .unwrap();
        assert_eq!(told, 1);
        let observed = cache.observed();
        assert_eq!(
            observed.last().map(|(method, _)| method.as_str()),
            Some("add"),
            "{observed:?}"
        );
        assert_eq!(
            exported_by(&root).await,
            1,
            "only the cache is exported: the counter the update carried was released"
        );
        drop((cache, observed));
        assert_eq!(exported_by(&root).await, 0, "the cache was released");
        conn.close().await;
        stop_twisted_server(server, log).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The example client against the Twisted server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_example_client_checks_the_twisted_root() {
    let py = python();
    bounded(async {
        let client = example_binary("twisted_pb_client");
        let (server, port, log) = start_twisted_server(&py, &[]).await;
        let port = port.to_string();
        let (ok, out) = run_to_end(&client, &["--port", &port], "twisted_pb_client").await;
        print!("{out}");
        assert!(ok, "the pb example client failed against twisted:\n{out}");
        let lines = out.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(
            lines >= ROOT_METHODS.len(),
            "one line per check, at least one check per method:\n{out}"
        );
        let log = stop_twisted_server(server, log).await;
        for method in ROOT_METHODS {
            assert!(
                log.iter().any(|l| *l == format!("called {method}")),
                "the pb example client never called {method}; the server saw:\n{}",
                log.join("\n")
            );
        }
        let last_exported = log.iter().rev().find(|l| l.starts_with("exported "));
        assert_eq!(
            last_exported.map(String::as_str),
            Some("exported 0"),
            "the pb example client's references were not all released; the server saw:\n{}",
            log.join("\n")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_example_client_exits_non_zero_on_wrong_answers() {
    let py = python();
    bounded(async {
        let client = example_binary("twisted_pb_client");
        // This server's add(a, b) answers a + b + 1.
        let (_server, port, _log) = start_twisted_server(&py, &["--wrong"]).await;
        let port = port.to_string();
        let (ok, out) = run_to_end(&client, &["--port", &port], "twisted_pb_client").await;
        assert!(!ok, "the pb example client accepted a wrong sum:\n{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_example_client_logs_in_to_the_twisted_portal() {
    let py = python();
    bounded(async {
        let client = example_binary("twisted_pb_client");
        let (_server, port, _log) = start_twisted_server(&py, &["--portal"]).await;
        let port = port.to_string();
        for login in ["alice:secret", "bob:hunter2"] {
            let (ok, out) = run_to_end(
                &client,
                &["--port", &port, "--login", login],
                "twisted_pb_client --login",
            )
            .await;
            print!("{out}");
            assert!(ok, "login {login} failed against twisted:\n{out}");
        }
        for login in ["alice:wrong", "mallory:secret"] {
            let run = run_to_finish(
                &client,
                &["--port", &port, "--login", login],
                "twisted_pb_client --login (refused)",
            )
            .await;
            assert_eq!(
                run.status.code(),
                Some(1),
                "login {login} was not refused with exit code 1:\n{}{}",
                run.stdout,
                run.stderr
            );
            assert!(
                run.stdout.contains("UnauthorizedLogin")
                    || run.stderr.contains("UnauthorizedLogin"),
                "the refusal of {login} does not name UnauthorizedLogin:\n{}{}",
                run.stdout,
                run.stderr
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Banana's limits against the example server, in raw bytes.

/// The server's dialect list, `[b"pb", b"none"]`.
const DIALECTS: &[u8] = b"\x02\x80\x02\x82pb\x04\x82none";
/// The client's choice, `b"pb"`.
const CHOOSE_PB: &[u8] = b"\x02\x82pb";
/// `["version", 6]`, the same both ways.
const VERSION: &[u8] = b"\x02\x80\x13\x87\x06\x81";
/// `["message", 1, b"root", b"add", 1, ["tuple", 2, 3], ["dictionary"]]` in the pb dialect.
const ADD_2_3: &[u8] = b"\x07\x80\x1a\x87\x01\x81\x04\x82root\x03\x82add\x01\x81\
                         \x03\x80\x0b\x87\x02\x81\x03\x81\x01\x80\x05\x87";
/// `["answer", 1, 5]`, as Twisted writes it.
const ANSWER_5: &[u8] = b"\x03\x80\x1b\x87\x01\x81\x05\x81";

/// Banana's base-128 prefix of `n`, least significant group first.
fn b128(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        out.push((n & 0x7f) as u8);
        n >>= 7;
        if n == 0 {
            return out;
        }
    }
}

async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

/// A raw connection past the dialect handshake and the version exchange. Reading each step
/// before writing the next makes the server consume all it was sent before any close (a close
/// with unread input resets the connection).
async fn handshaken(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(read_exactly(&mut s, DIALECTS.len()).await, DIALECTS);
    s.write_all(CHOOSE_PB).await.unwrap();
    s.write_all(VERSION).await.unwrap();
    assert_eq!(read_exactly(&mut s, VERSION.len()).await, VERSION);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pb_example_server_closes_only_the_connection_that_breaks_a_limit() {
    bounded(async {
        let (_server, port) = start_example_server(&[]).await;
        let mut bystander = handshaken(port).await;
        let over = 640 * 1024 + 1;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "a string header over 640 KiB",
                [b128(over), vec![0x82]].concat(),
            ),
            (
                "a list header over 640 KiB",
                [b128(over), vec![0x80]].concat(),
            ),
            ("65 prefix bytes without a type byte", vec![0x01; 65]),
            ("type byte 0x88", vec![0x01, 0x88]),
            ("type byte 0xff", vec![0xff]),
        ];
        for (what, input) in &cases {
            let mut victim = handshaken(port).await;
            let got = closed_after(&mut victim, input).await;
            println!("{what}: closed after {got:?}");
        }
        // The connection that was open all along, and a new one, are answered as Twisted answers.
        bystander.write_all(ADD_2_3).await.unwrap();
        assert_eq!(read_exactly(&mut bystander, ANSWER_5.len()).await, ANSWER_5);
        let mut fresh = handshaken(port).await;
        fresh.write_all(ADD_2_3).await.unwrap();
        assert_eq!(read_exactly(&mut fresh, ANSWER_5.len()).await, ANSWER_5);
    })
    .await;
}
