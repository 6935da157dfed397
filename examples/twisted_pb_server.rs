//! A pb server that Twisted PB clients use unchanged: it speaks Twisted's Perspective Broker
//! and serves the root below under the name `root` (or, with `--portal`, a portal).
//!
//! ```text
//! cargo run --example twisted_pb_server -- --port 8789
//! cargo run --example twisted_pb_server -- --port 8789 --portal
//! ```
//!
//! From Python (Twisted):
//!
//! ```python
//! factory = pb.PBClientFactory()
//! reactor.connectTCP("127.0.0.1", 8789, factory)
//! root = yield factory.getRootObject()
//! print((yield root.callRemote("add", 2, 3)))   # 5
//! ```
//!
//! The root (method names as Twisted calls them): `echo(x)` returns any Jelly value unchanged,
//! sharing and cycles kept; `add(a, b)`; `fail(message)` fails with `pb.Error(message)`;
//! `call_back(ref, x)` calls `ref.callRemote("ping", x)`; `give_back(ref)` returns the
//! caller's own object; `counter(start)` makes a Referenceable with `increment()` and
//! `value()`; `point(x, y)` is a Copyable tagged `pbtest.Point`; `sum_point(p)` takes one;
//! `cache()` is the server's one Cacheable (`pbtest.Counter`, state `{"count": n}`), which
//! `bump()` updates (`observe_set(n)` on every copy); `exported()` counts what the server
//! exports to the caller's connection. With `--portal`, users `alice`/`secret` and
//! `bob`/`hunter2` (and anonymous) log in to an avatar with `whoami()` and `call_mind(x)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use pb::twisted::{Credentials, Dynamic, Failure, PbConfig, Portal};
use pb::{Cache, Replica};
use pb::{Caller, ObjectRef};

#[path = "shared/twisted_root.rs"]
mod twisted_root;

use twisted_root::*;

struct TheCounter(AtomicI64);

impl Counter for TheCounter {
    async fn increment(&self) -> i64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn value(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Calls `ping(x)` on a reference the peer gave us.
async fn ping(r: &ObjectRef, x: Dynamic) -> Result<Dynamic, Failure> {
    r.call::<_, Dynamic, Failure>("ping", &(x,))
        .await
        .map_err(|e| match e.into_remote() {
            Some(f) => f,
            None => Failure::pb_error("the callback failed"),
        })
}

struct TheRoot {
    cache: Cache<CounterState>,
}

impl Root for TheRoot {
    async fn echo(&self, x: Dynamic) -> Dynamic {
        x
    }

    async fn add(&self, a: i128, b: i128) -> Result<i128, Failure> {
        a.checked_add(b)
            .ok_or_else(|| Failure::pb_error("the sum is too large"))
    }

    async fn fail(&self, message: String) -> Result<(), Failure> {
        Err(Failure::pb_error(message))
    }

    async fn call_back(&self, r: ObjectRef, x: Dynamic) -> Result<Dynamic, Failure> {
        ping(&r, x).await
    }

    async fn give_back(&self, r: ObjectRef) -> ObjectRef {
        r
    }

    async fn counter(&self, start: i64) -> CounterRef {
        CounterRef::new(TheCounter(AtomicI64::new(start)))
    }

    async fn point(&self, x: i128, y: i128) -> Point {
        Point { x, y }
    }

    async fn sum_point(&self, p: Point) -> Result<i128, Failure> {
        p.x.checked_add(p.y)
            .ok_or_else(|| Failure::pb_error("the sum is too large"))
    }

    async fn cache(&self) -> Replica<CounterState> {
        self.cache.replica()
    }

    async fn bump(&self) -> Result<i64, Failure> {
        let n = self.cache.get().count + 1;
        // Every copy's `observe_set` is queued before this answer, on each connection.
        self.cache
            .update(CounterUpdate::Set(n))
            .map_err(|e| Failure::pb_error(e.to_string()))?;
        Ok(n)
    }

    async fn exported(&self, caller: Caller) -> usize {
        caller.connection().map_or(0, |c| c.stats().tables.exported)
    }
}

struct TheAvatar {
    name: String,
    mind: Option<ObjectRef>,
}

impl Avatar for TheAvatar {
    async fn whoami(&self) -> String {
        self.name.clone()
    }

    async fn call_mind(&self, x: Dynamic) -> Result<Dynamic, Failure> {
        match &self.mind {
            Some(mind) => ping(mind, x).await,
            None => Err(Failure::pb_error("no mind was given at login")),
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: twisted_pb_server --port P [--portal]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut port = None;
    let mut portal = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse::<u16>().ok()),
            "--portal" => portal = true,
            _ => usage(),
        }
    }
    let Some(port) = port else { usage() };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let config = PbConfig::default();
    if portal {
        let credentials = Credentials::new()
            .user("alice", "secret")
            .user("bob", "hunter2");
        let portal = Portal::new(credentials, |user, mind| {
            AvatarRef::new(TheAvatar {
                name: user.unwrap_or("anonymous").to_owned(),
                mind,
            })
            .into()
        })
        .allow_anonymous(true);
        println!(
            "listening on {} (Twisted PB, portal)",
            listener.local_addr()?
        );
        pb::twisted::serve_with(listener, move |_| portal.root(), config).await
    } else {
        let root = Arc::new(RootRef::new(TheRoot {
            cache: Cache::new(CounterState { count: 0 }),
        }));
        println!("listening on {} (Twisted PB)", listener.local_addr()?);
        pb::twisted::serve_with(listener, move |_| (*root).clone().into(), config).await
    }
}
