//! A pb client of a Twisted PB server: it calls every method of the root that
//! `twisted_pb_server` serves (a Twisted server serving the same root, say
//! `tests/interop/pb_root_server.py`), checks every answer, prints one line per check and
//! exits 0 only if all pass.
//!
//! ```text
//! cargo run --example twisted_pb_client -- --port 8789
//! cargo run --example twisted_pb_client -- --port 8789 --login alice:secret
//! ```
//!
//! It calls the root through the same interface the example server serves
//! (`examples/shared/twisted_root.rs`): Twisted's Cacheable arrives as a live
//! `pb::Replica<CounterState>`.
//!
//! With `--login USER:PASSWORD` it logs in to the server's portal instead (Twisted's MD5
//! challenge-response), offering a mind whose `ping(x)` returns `x`, and checks the avatar's
//! `whoami()` and `call_mind(7)`; a refused login prints the error and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use pb::twisted::{Decimal, Dynamic, Failure, Graph, PbConfig, Value};
use pb::{CallError, ObjectRef, Remote};

#[path = "shared/twisted_root.rs"]
mod twisted_root;

use twisted_root::*;

/// The mind, and the object `call_back` pings.
struct Echo;

impl Pinger for Echo {
    async fn ping(&self, x: Dynamic) -> Dynamic {
        x
    }
}

/// Counts the checks and prints one line for each.
#[derive(Default)]
struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => println!("ok {name}"),
            Err(why) => {
                self.failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
}

fn expect<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    got: Result<T, E>,
    want: T,
) -> Result<(), String> {
    match got {
        Ok(v) if v == want => Ok(()),
        other => Err(format!("got {other:?}, want {want:?}")),
    }
}

fn tree(v: Value) -> Graph {
    Graph::new(v)
}

/// The values `echo` must return unchanged, each with the Python type it stands for.
fn echo_cases() -> Vec<(&'static str, Graph)> {
    let big = |s: &str| Value::BigInt(s.parse().expect("a literal integer"));
    let mut shared = Graph::default();
    let l = shared.add_node(Value::List(vec![Value::Int(1), Value::Int(2)]));
    shared.set_root(Value::List(vec![Value::Shared(l), Value::Shared(l)]));
    let mut cyclic = Graph::default();
    let c = cyclic.add_node(Value::List(vec![Value::Int(0)]));
    if let Some(Value::List(items)) = cyclic.node_mut(c) {
        items.push(Value::Shared(c));
    }
    cyclic.set_root(Value::Shared(c));
    let decimal: Decimal = "1.10".parse().expect("a literal decimal");
    vec![
        ("int", tree(Value::Int(42))),
        ("int above 2**64", tree(big("18446744073709551617"))),
        ("negative int", tree(Value::Int(-7))),
        (
            "huge negative int",
            tree(big("-1267650600228229401496703205376")),
        ),
        ("float", tree(Value::Float(1.5))),
        ("float -0.0", tree(Value::Float(-0.0))),
        ("float inf", tree(Value::Float(f64::INFINITY))),
        ("float nan", tree(Value::Float(f64::NAN))),
        (
            "bytes",
            tree(Value::Bytes(bytes::Bytes::from_static(b"\x00raw\xff"))),
        ),
        ("str", tree(Value::from("héllo"))),
        ("None", tree(Value::None)),
        ("bool", tree(Value::Bool(true))),
        (
            "list",
            tree(Value::List(vec![Value::Int(1), Value::from("two")])),
        ),
        (
            "tuple",
            tree(Value::Tuple(vec![Value::Int(1), Value::None])),
        ),
        (
            "dict",
            tree(Value::Dict(vec![
                (Value::from("a"), Value::Int(1)),
                (Value::Int(2), Value::Tuple(vec![Value::Bool(false)])),
            ])),
        ),
        ("set", tree(Value::Set(vec![Value::Int(3)]))),
        ("frozenset", tree(Value::FrozenSet(vec![Value::from("f")]))),
        ("Decimal", tree(Value::Decimal(decimal.0))),
        (
            "nested",
            tree(Value::List(vec![Value::Dict(vec![(
                Value::from("k"),
                Value::Tuple(vec![Value::List(vec![Value::Int(1)])]),
            )])])),
        ),
        ("shared list", shared),
        ("cyclic list", cyclic),
    ]
}

async fn check_root(conn: &pb::Connection) -> Checks {
    let mut checks = Checks::default();
    let root: RootRef = conn.root();

    for (name, value) in echo_cases() {
        let got = root.echo(Dynamic(value.clone())).await;
        checks.check(
            &format!("echo {name}"),
            match got {
                Ok(v) if v.0.equivalent(&value) => Ok(()),
                other => Err(format!("got {other:?}")),
            },
        );
    }
    checks.check("add", expect(root.add(2, 3).await, 5));
    checks.check(
        "add beyond 64 bits",
        expect(root.add(1 << 64, 1 << 64).await, 1 << 65),
    );
    checks.check(
        "fail",
        match root.fail("it failed".to_owned()).await {
            Err(CallError::Remote(f))
                if f.check("twisted.spread.pb.Error") && f.value == "it failed" =>
            {
                Ok(())
            }
            other => Err(format!("got {other:?}")),
        },
    );
    let x = Dynamic(tree(Value::Int(7)));
    checks.check(
        "call_back",
        match root.call_back(PingerRef::new(Echo).into(), x.clone()).await {
            Ok(v) if v.0.equivalent(&x.0) => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    let mine: ObjectRef = PingerRef::new(Echo).into();
    checks.check(
        "give_back",
        match root.give_back(mine.clone()).await {
            Ok(back) if back == mine && back.is_local() => Ok(()),
            other => Err(format!("got {other:?}, not our own object")),
        },
    );
    drop(mine);

    let counter = root.counter(10).await;
    checks.check(
        "counter",
        match &counter {
            Ok(c) => match (c.increment().await, c.increment().await, c.value().await) {
                (Ok(11), Ok(12), Ok(12)) => Ok(()),
                other => Err(format!("increment, increment, value gave {other:?}")),
            },
            Err(e) => Err(format!("{e:?}")),
        },
    );
    checks.check(
        "point",
        expect(root.point(3, 4).await, Point { x: 3, y: 4 }),
    );
    checks.check(
        "sum_point",
        expect(root.sum_point(Point { x: 5, y: 6 }).await, 11),
    );

    let cache = root.cache().await;
    let again = root.cache().await;
    checks.check(
        "cache",
        match (&cache, &again) {
            // Read as the `CounterState` the interface names; both sends, one replica.
            (Ok(c), Ok(a)) if !c.is_local() && c.get() == a.get() => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    let bumped = root.bump().await;
    checks.check(
        "bump",
        match (&bumped, &cache) {
            (Ok(n), Ok(c)) => {
                // The replica's `observe_set(n)` arrives before bump's answer.
                let seen = c.get();
                if seen.count == *n && c.error().is_none() {
                    Ok(())
                } else {
                    Err(format!("bump gave {n}, the replica has {seen:?}"))
                }
            }
            other => Err(format!("got {other:?}")),
        },
    );

    let held = root.exported().await;
    checks.check(
        "exported while held",
        match held {
            Ok(n) if n >= 2 => Ok(()),
            other => Err(format!("got {other:?}, want the counter and the cache")),
        },
    );
    drop((counter, cache, again));
    // The releases leave before the next call; the server handles them in order.
    let mut after = root.exported().await;
    for _ in 0..50 {
        if matches!(after, Ok(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = root.exported().await;
    }
    checks.check("exported falls to 0", expect(after, 0));

    let unknown = conn
        .root_ref()
        .call::<_, i64, Failure>("no_such_method", &())
        .await;
    checks.check(
        "unknown method",
        match unknown {
            Err(CallError::Remote(_)) | Err(CallError::NoSuchMethod(_)) => {
                expect(root.add(1, 1).await, 2)
            }
            other => Err(format!("got {other:?}")),
        },
    );
    checks.check(
        "call without answer",
        match conn.root_ref().send("add", &(1, 2)) {
            Ok(()) => expect(root.add(2, 2).await, 4),
            Err(e) => Err(format!("{e:?}")),
        },
    );
    checks
}

async fn check_login(conn: &pb::Connection, user: &str, password: &str) -> Result<Checks, String> {
    let mind: ObjectRef = PingerRef::new(Echo).into();
    let avatar = pb::twisted::login(
        &conn.root_ref(),
        user.as_bytes(),
        password.as_bytes(),
        Some(mind),
    )
    .await
    .map_err(|e| match e {
        CallError::Remote(f) => f.to_string(),
        other => other.to_string(),
    })?;
    let avatar = AvatarRef::from_object_ref(avatar);
    let mut checks = Checks::default();
    checks.check("whoami", expect(avatar.whoami().await, user.to_owned()));
    let seven = Dynamic(tree(Value::Int(7)));
    checks.check(
        "call_mind",
        match avatar.call_mind(seven.clone()).await {
            Ok(v) if v.0.equivalent(&seven.0) => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    Ok(checks)
}

fn usage() -> ExitCode {
    eprintln!("usage: twisted_pb_client --port P [--login USER:PASSWORD]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut port = None;
    let mut login = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse::<u16>().ok()),
            "--login" => login = args.next(),
            _ => return usage(),
        }
    }
    let Some(port) = port else { return usage() };
    let conn = match pb::twisted::connect(("127.0.0.1", port), PbConfig::default()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = match login {
        Some(login) => {
            let Some((user, password)) = login.split_once(':') else {
                return usage();
            };
            match check_login(&conn, user, password).await {
                Ok(c) => c,
                Err(e) => {
                    println!("login refused: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => check_root(&conn).await,
    };
    conn.close().await;
    if checks.failed == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{} checks failed", checks.failed);
        ExitCode::FAILURE
    }
}
