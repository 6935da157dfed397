//! The fault lab: pb nodes and clients in Linux network namespaces joined by veth pairs, under
//! loss, partitions, a slow link, delay and reordering, each made for real (nftables, `tc tbf`,
//! a forwarding proxy of the lab's own; this machine's kernel has no `netem`).
//!
//! Each test makes its own namespaces (`pbfl-<pid>-<n>-<role>`, see `fault_lab/lab.rs`), runs
//! this test binary again inside them as servers, nodes, clients or a proxy (child mode, chosen
//! by `PB_FAULT_LAB_ROLE`), applies the faults from outside, and checks what the children
//! report: no answer lost or misrouted, every call answered or failed (none hangs), dependent
//! references revoked on a partition, reconnection after it heals, memory flat. The figures are
//! printed (run with `--nocapture` to see them).
//!
//! Real links run on real time, so these tests take about two minutes, need root, `ip`, `nft`
//! and `tc`, and are ignored by a plain `cargo test`: `.ci/run` installs the tools and runs
//! `cargo test --test fault_lab -- --ignored --nocapture --test-threads=1`. Run without root
//! or the tools, they fail (they never skip).

#[path = "fault_lab/lab.rs"]
mod lab;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lab::{Child, Lab, PATIENCE, ROLE_ENV, fields, num};
use pb::{Backoff, CallError, ClientState, Node, Reconnecting};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// What the children serve.

#[pb::remote]
pub trait Thing {
    async fn name(&self) -> Result<String, ()>;
}

struct Named(String);

impl Thing for Named {
    async fn name(&self) -> Result<String, ()> {
        Ok(self.0.clone())
    }
}

#[pb::remote]
pub trait Station {
    /// Its own id and payload back: the caller checks that the answer is its own.
    async fn echo(&self, id: u64, payload: Vec<u8>) -> Result<(u64, Vec<u8>), String>;
    /// `len` bytes, each `id as u8`.
    async fn blob(&self, id: u64, len: u32) -> Result<(u64, Vec<u8>), String>;
    /// This node's thing (`fresh`: a new object each time).
    async fn thing(&self, fresh: bool) -> Result<ThingRef, String>;
    /// The thing of the node this one follows, forwarded through this one.
    async fn upstream_thing(&self) -> Result<ThingRef, String>;
}

struct LabNode {
    name: String,
    thing: ThingRef,
    upstream: Option<Reconnecting<StationRef>>,
}

impl Station for LabNode {
    async fn echo(&self, id: u64, payload: Vec<u8>) -> Result<(u64, Vec<u8>), String> {
        Ok((id, payload))
    }
    async fn blob(&self, id: u64, len: u32) -> Result<(u64, Vec<u8>), String> {
        Ok((id, vec![id as u8; len as usize]))
    }
    async fn thing(&self, fresh: bool) -> Result<ThingRef, String> {
        if fresh {
            return Ok(ThingRef::new(Named(format!(
                "a new thing of {}",
                self.name
            ))));
        }
        Ok(self.thing.clone())
    }
    async fn upstream_thing(&self) -> Result<ThingRef, String> {
        let up = self.upstream.as_ref().ok_or("no upstream")?;
        let (_, lab) = tokio::time::timeout(Duration::from_secs(2), up.session())
            .await
            .map_err(|_| "upstream not connected".to_string())?
            .ok_or("upstream stopped")?;
        lab.thing(false).await.map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Child mode.

/// Not a test of its own: the entry of the lab's child processes (this binary run again inside
/// a namespace with `PB_FAULT_LAB_ROLE` set). Without it, it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child mode of the fault lab, started by its tests inside a namespace"]
async fn child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    match role.as_str() {
        "server" => roles::server().await,
        "proxy" => roles::proxy().await,
        "calls" => roles::calls().await,
        "chain" => roles::chain().await,
        "bandwidth" => roles::bandwidth().await,
        "cycles" => roles::cycles().await,
        "dial" => roles::dial().await,
        other => panic!("unknown role {other}"),
    }
}

mod roles {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    fn env(key: &str) -> String {
        std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"))
    }

    fn env_num(key: &str) -> u64 {
        env(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number"))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A line for the test.
    fn report(line: impl std::fmt::Display) {
        println!("PBFL {line}");
    }

    /// Ask the test to do something (a fault, a measurement) and wait for its answer.
    async fn ask(what: &str) -> String {
        report(format_args!("want {what}"));
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            line.trim().to_string()
        })
        .await
        .unwrap()
    }

    async fn rss() -> u64 {
        ask("rss server").await.parse().unwrap()
    }

    /// Returns once the test closes our stdin (or dies).
    async fn until_stdin_closes() {
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
                line.clear();
            }
        })
        .await
        .unwrap();
    }

    /// Keep-alive and idle timeout from the environment (`PB_FL_KEEPALIVE_MS`,
    /// `PB_FL_IDLE_MS`), pb's defaults otherwise.
    fn config() -> pb::Config {
        let mut config = pb::Config::default();
        if let Ok(v) = std::env::var("PB_FL_KEEPALIVE_MS") {
            config.keepalive_interval = Some(ms(v.parse().unwrap()));
        }
        if let Ok(v) = std::env::var("PB_FL_IDLE_MS") {
            config.idle_timeout = Some(ms(v.parse().unwrap()));
        }
        config
    }

    fn reconnecting(addr: String) -> Reconnecting<StationRef> {
        let backoff = Backoff {
            initial: ms(50),
            max: ms(500),
            // The sessions between two cuts last seconds: each counts as healthy, and the
            // client is back as soon as the link heals.
            healthy_after: ms(500),
        };
        Reconnecting::start(
            pb::Client::builder().config(config()),
            addr,
            backoff,
            |session| async move { Ok(session.connection().root::<StationRef>()) },
        )
    }

    fn payload(id: u64, size: usize) -> Vec<u8> {
        let mut p = id.to_le_bytes().to_vec();
        p.extend(
            (0..size.saturating_sub(8))
                .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8),
        );
        p
    }

    fn percentile(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    fn ms_since(t: Instant) -> u128 {
        t.elapsed().as_millis()
    }

    /// A pb node serving a `Lab` root on `PB_FL_LISTEN`, following `PB_FL_UPSTREAM` if set.
    pub async fn server() {
        let name = env("PB_FL_NAME");
        let upstream = std::env::var("PB_FL_UPSTREAM").ok().map(reconnecting);
        let root = StationRef::new(LabNode {
            thing: ThingRef::new(Named(format!("{name}'s thing"))),
            name,
            upstream,
        });
        let node = Node::builder()
            .root(root)
            .config(config())
            .bind(env("PB_FL_LISTEN"))
            .await
            .unwrap();
        report(format_args!(
            "listening pid={} addr={}",
            std::process::id(),
            node.local_addr()
        ));
        until_stdin_closes().await;
    }

    #[derive(Default)]
    struct Tally {
        answered: u64,
        failed: u64,
        misrouted: u64,
        hung: u64,
        latencies_ms: Vec<f64>,
        errors: HashMap<String, u64>,
    }

    impl Tally {
        fn merge(&mut self, other: Tally) {
            self.answered += other.answered;
            self.failed += other.failed;
            self.misrouted += other.misrouted;
            self.hung += other.hung;
            self.latencies_ms.extend(other.latencies_ms);
            for (k, v) in other.errors {
                *self.errors.entry(k).or_default() += v;
            }
        }

        fn fail<E: std::fmt::Debug>(&mut self, e: &CallError<E>) {
            self.failed += 1;
            let kind = format!("{e:?}");
            let kind = kind
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("?")
                .to_string();
            *self.errors.entry(kind).or_default() += 1;
        }

        fn summary(&mut self, prefix: &str) -> String {
            self.latencies_ms.sort_by(f64::total_cmp);
            let l = &self.latencies_ms;
            let mut errors: Vec<_> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            errors.sort();
            format!(
                "{prefix}answered={} {prefix}failed={} {prefix}misrouted={} {prefix}hung={} \
                 {prefix}p50_ms={:.1} {prefix}p99_ms={:.1} {prefix}max_ms={:.1} {prefix}errors={}",
                self.answered,
                self.failed,
                self.misrouted,
                self.hung,
                percentile(l, 0.5),
                percentile(l, 0.99),
                l.last().copied().unwrap_or(f64::NAN),
                if errors.is_empty() {
                    "none".into()
                } else {
                    errors.join(",")
                }
            )
        }
    }

    /// One echo call bound by `deadline`, and by a further bound on top that only a hang
    /// reaches; checked against its own id and payload.
    async fn checked_echo(
        lab: &StationRef,
        id: u64,
        size: usize,
        deadline: Duration,
        t: &mut Tally,
    ) {
        let expected = payload(id, size);
        let start = Instant::now();
        let call = pb::deadline::with_timeout(deadline, lab.echo(id, expected.clone()));
        match tokio::time::timeout(deadline + Duration::from_secs(10), call).await {
            Err(_) => t.hung += 1,
            Ok(Ok((rid, got))) if rid == id && got == expected => {
                t.answered += 1;
                t.latencies_ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
            Ok(Ok(_)) => t.misrouted += 1,
            Ok(Err(e)) => t.fail(&e),
        }
    }

    /// `PB_FL_CALLS` echo calls of `PB_FL_PAYLOAD` bytes over `PB_FL_CONNS` connections,
    /// `PB_FL_CONCURRENCY` at a time on each, each bound by `PB_FL_DEADLINE_MS`.
    pub async fn calls() {
        let addr = env("PB_FL_ADDR");
        let calls = env_num("PB_FL_CALLS");
        let size = env_num("PB_FL_PAYLOAD") as usize;
        let deadline = ms(env_num("PB_FL_DEADLINE_MS"));
        let connect_start = Instant::now();
        let mut conns = Vec::new();
        for _ in 0..env_num("PB_FL_CONNS") {
            let connect = pb::Client::builder()
                .config(config())
                .connect(addr.as_str());
            conns.push(
                tokio::time::timeout(PATIENCE, connect)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let connect_ms = ms_since(connect_start);
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for conn in &conns {
            for _ in 0..env_num("PB_FL_CONCURRENCY") {
                let lab: StationRef = conn.root();
                let next = next.clone();
                tasks.spawn(async move {
                    let mut t = Tally::default();
                    loop {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        if id >= calls {
                            return t;
                        }
                        checked_echo(&lab, id, size, deadline, &mut t).await;
                    }
                });
            }
        }
        let mut all = Tally::default();
        while let Some(t) = tasks.join_next().await {
            all.merge(t.unwrap());
        }
        let elapsed = ms_since(start);
        for conn in conns {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        }
        report(format_args!(
            "result calls={calls} {} connect_ms={connect_ms} elapsed_ms={elapsed}",
            all.summary("")
        ));
    }

    /// Calls `f` every 200 ms, each bound by a 1 s deadline, until `stop` completes; tallies.
    async fn probe<F, Fut, E>(stop: impl std::future::Future<Output = ()>, mut f: F) -> Tally
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<String, CallError<E>>>,
        E: std::fmt::Debug,
    {
        let mut t = Tally::default();
        let mut stop = std::pin::pin!(stop);
        loop {
            let started = Instant::now();
            let call = pb::deadline::with_timeout(ms(1000), f());
            tokio::select! {
                _ = &mut stop => return t,
                r = tokio::time::timeout(ms(6000), call) => match r {
                    Err(_) => t.hung += 1,
                    Ok(Ok(_)) => {
                        t.answered += 1;
                        t.latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(Err(e)) => t.fail(&e),
                },
            }
            tokio::select! {
                _ = &mut stop => return t,
                _ = tokio::time::sleep(ms(200)) => {}
            }
        }
    }

    /// C in A — B — C: holds B's thing and A's thing forwarded by B; A is cut off (its
    /// reference must be revoked, B's must not), healed; then C itself is cut off (every
    /// reference revoked, the connection closed) and healed (`Reconnecting` comes back).
    pub async fn chain() {
        let hold = ms(env_num("PB_FL_HOLD_MS"));
        let rec = reconnecting(env("PB_FL_ADDR"));
        let mut states = rec.watch();
        let (conn, b) = tokio::time::timeout(PATIENCE, rec.session())
            .await
            .unwrap()
            .unwrap();
        let from_b = b.thing(false).await.unwrap();
        let from_a = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(t) = b.upstream_thing().await {
                    return t;
                }
                tokio::time::sleep(ms(100)).await;
            }
        })
        .await
        .expect("B follows A");
        assert_eq!(from_a.name().await, Ok("a's thing".into()));
        assert_eq!(from_b.name().await, Ok("b's thing".into()));

        // 1. A is cut off: B's keep-alive notices, and A's thing, forwarded to us, is revoked.
        assert_eq!(ask("partition a").await, "ok");
        let cut = Instant::now();
        let a_probe = probe(from_a.disconnected(), || from_a.name()).await;
        let a_revoked_ms = ms_since(cut);
        let mut a_probe = a_probe;
        assert!(!from_a.is_connected());
        assert_eq!(from_a.name().await, Err(CallError::Disconnected));
        let b_kept = from_b.is_connected() && from_b.name().await == Ok("b's thing".into());
        tokio::time::sleep(hold).await;
        assert_eq!(ask("heal a").await, "ok");
        let healed = Instant::now();
        let from_a = tokio::time::timeout(PATIENCE, async {
            loop {
                let again = pb::deadline::with_timeout(ms(2000), b.upstream_thing()).await;
                if let Ok(t) = again
                    && t.name().await == Ok("a's thing".into())
                {
                    return t;
                }
                tokio::time::sleep(ms(100)).await;
            }
        })
        .await
        .expect("B reaches A again");
        let a_back_ms = ms_since(healed);

        // 2. C itself is cut off: our keep-alive closes the connection, every reference it
        // carried is revoked, and once healed the client reconnects.
        assert_eq!(ask("partition c").await, "ok");
        let cut = Instant::now();
        let mut c_probe = probe(conn.closed(), || async {
            b.echo(1, vec![1]).await.map(|_| String::new())
        })
        .await;
        let c_closed_ms = ms_since(cut);
        let revoked = tokio::time::timeout(Duration::from_secs(5), async {
            from_a.disconnected().await;
            from_b.disconnected().await;
        })
        .await
        .is_ok();
        let old_fails = from_b.name().await == Err(CallError::Disconnected)
            && b.echo(2, vec![2]).await == Err(CallError::Disconnected);
        tokio::time::sleep(hold).await;
        assert_eq!(ask("heal c").await, "ok");
        let healed = Instant::now();
        tokio::time::timeout(
            PATIENCE,
            states.wait_for(
                |s| matches!(s, ClientState::Connected { generation, .. } if *generation >= 2),
            ),
        )
        .await
        .expect("reconnected after the partition healed")
        .unwrap();
        let c_back_ms = ms_since(healed);
        let (_, b2) = rec.session().await.unwrap();
        let echo_ok = b2.echo(3, vec![3]).await == Ok((3, vec![3]));
        let a_ok = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(t) = b2.upstream_thing().await {
                    return t.name().await == Ok("a's thing".into());
                }
                tokio::time::sleep(ms(100)).await;
            }
        })
        .await
        .unwrap_or(false);
        report(format_args!(
            "result a_revoked_ms={a_revoked_ms} b_kept={b_kept} a_back_ms={a_back_ms} \
             c_closed_ms={c_closed_ms} c_revoked={revoked} c_old_fail={old_fails} \
             c_back_ms={c_back_ms} c_echo_ok={echo_ok} c_a_ok={a_ok} {} {}",
            a_probe.summary("a_"),
            c_probe.summary("c_")
        ));
        rec.stop().await;
    }

    /// Over a slow link: `PB_FL_LARGE` calls for `PB_FL_LARGE_LEN`-byte answers at once on one
    /// connection while small calls go on, on another connection and on the same one, for
    /// `PB_FL_SECS`; the server's memory sampled throughout; then the large calls' connection is
    /// cut and every large call must have ended.
    pub async fn bandwidth() {
        let addr = env("PB_FL_ADDR");
        let large = env_num("PB_FL_LARGE");
        let len = env_num("PB_FL_LARGE_LEN") as u32;
        let secs = env_num("PB_FL_SECS");
        let connect = || async {
            let c = pb::Client::builder()
                .config(config())
                .connect(addr.as_str());
            tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap()
        };
        let big_conn = connect().await;
        let small_conn = connect().await;
        let big: StationRef = big_conn.root();
        let small: StationRef = small_conn.root();
        let mut warm = Tally::default();
        checked_echo(&big, 0, 64, ms(10_000), &mut warm).await;
        checked_echo(&small, 0, 64, ms(10_000), &mut warm).await;
        assert_eq!(warm.answered, 2);
        let rss_before = rss().await;

        let start = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let mut larges = tokio::task::JoinSet::new();
        for id in 0..large {
            let big = big.clone();
            let done = done.clone();
            larges.spawn(async move {
                let call = big.blob(id, len);
                match tokio::time::timeout(PATIENCE, call).await {
                    Err(_) => "hung",
                    Ok(Ok((rid, bytes)))
                        if rid == id
                            && bytes.len() == len as usize
                            && bytes.iter().all(|b| *b == id as u8) =>
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                        "answered"
                    }
                    Ok(Ok(_)) => "misrouted",
                    Ok(Err(_)) => "failed",
                }
            });
        }
        let mut small_t = Tally::default();
        let mut same_t = Tally::default();
        let mut rss_peak = rss_before;
        let mut id = 1;
        let mut next_rss = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            checked_echo(&small, id, 64, ms(10_000), &mut small_t).await;
            if id % 5 == 0 {
                // On the congested connection: held back behind the large answers.
                checked_echo(&big, id, 64, ms(2_000), &mut same_t).await;
            }
            id += 1;
            if Instant::now() >= next_rss {
                rss_peak = rss_peak.max(rss().await);
                next_rss = Instant::now() + ms(1000);
            }
            tokio::time::sleep(ms(100)).await;
        }
        rss_peak = rss_peak.max(rss().await);
        let answered_before_cut = done.load(Ordering::Relaxed);
        big_conn.abort();
        let mut ends: HashMap<&str, u64> = HashMap::new();
        while let Some(end) = larges.join_next().await {
            *ends.entry(end.unwrap()).or_default() += 1;
        }
        tokio::time::sleep(ms(1000)).await;
        let rss_after = rss().await;
        report(format_args!(
            "result large_answered={} large_failed={} large_misrouted={} large_hung={} \
             large_done_before_cut={answered_before_cut} rss_before_kib={rss_before} \
             rss_peak_kib={rss_peak} rss_after_kib={rss_after} {} {}",
            ends.get("answered").unwrap_or(&0),
            ends.get("failed").unwrap_or(&0),
            ends.get("misrouted").unwrap_or(&0),
            ends.get("hung").unwrap_or(&0),
            small_t.summary("small_"),
            same_t.summary("same_")
        ));
        small_conn.close().await;
    }

    /// `PB_FL_CYCLES` partitions of the server, each healed once the client has noticed;
    /// calls and references in every session; the server's memory after each.
    pub async fn cycles() {
        let cycles = env_num("PB_FL_CYCLES");
        let hold = ms(env_num("PB_FL_HOLD_MS"));
        let rec = reconnecting(env("PB_FL_ADDR"));
        let mut states = rec.watch();
        let mut calls = Tally::default();
        let mut rss_kib = Vec::new();
        let (mut detect, mut back) = (Vec::new(), Vec::new());
        let mut revoked_all = true;
        for cycle in 0..cycles {
            states
                .wait_for(|s| matches!(s, ClientState::Connected { generation, .. } if *generation > cycle))
                .await
                .unwrap();
            let (conn, lab) = rec.session().await.unwrap();
            for id in 0..50 {
                checked_echo(&lab, cycle * 1000 + id, 1024, ms(10_000), &mut calls).await;
            }
            let mut held = Vec::new();
            for _ in 0..20 {
                let t = lab.thing(true).await.unwrap();
                assert!(t.name().await.unwrap().starts_with("a new thing"));
                held.push(t);
            }
            rss_kib.push(rss().await);
            assert_eq!(ask("partition server").await, "ok");
            let cut = Instant::now();
            tokio::time::timeout(PATIENCE, conn.closed())
                .await
                .expect("the partition is noticed");
            detect.push(ms_since(cut));
            let all_revoked = tokio::time::timeout(Duration::from_secs(5), async {
                for t in &held {
                    t.disconnected().await;
                }
            })
            .await;
            revoked_all &= all_revoked.is_ok();
            tokio::time::sleep(hold).await;
            assert_eq!(ask("heal server").await, "ok");
            let healed = Instant::now();
            tokio::time::timeout(PATIENCE, states.wait_for(|s| matches!(s, ClientState::Connected { generation, .. } if *generation > cycle + 1)))
                .await
                .expect("reconnected")
                .unwrap();
            back.push(ms_since(healed));
        }
        let (_, lab) = rec.session().await.unwrap();
        for id in 0..50 {
            checked_echo(&lab, 900_000 + id, 1024, ms(10_000), &mut calls).await;
        }
        // Let the server drop the last partition's connection (its idle timeout) first.
        tokio::time::sleep(ms(1000)).await;
        rss_kib.push(rss().await);
        let list = |v: &[u128]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        report(format_args!(
            "result rss_kib={} detect_ms={} back_ms={} revoked_all={revoked_all} {}",
            rss_kib
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(","),
            list(&detect),
            list(&back),
            calls.summary("")
        ));
        rec.stop().await;
    }

    /// Dials the server while it is cut off; reports how the dial ended and when.
    pub async fn dial() {
        let addr = env("PB_FL_ADDR");
        assert_eq!(ask("partition server").await, "ok");
        let bound = ms(env_num("PB_FL_BOUND_MS"));
        let start = Instant::now();
        let dial = pb::Client::builder()
            .config(config())
            .connect(addr.as_str());
        let outcome = match tokio::time::timeout(bound, dial).await {
            Err(_) => "still_dialing".to_string(),
            Ok(Ok(_)) => "connected".to_string(),
            Ok(Err(e)) => format!("{e}").replace(' ', "_"),
        };
        report(format_args!(
            "result dial_ms={} outcome={outcome}",
            ms_since(start)
        ));
    }

    #[derive(Default)]
    struct ProxyStats {
        connections: AtomicU64,
        chunks: AtomicU64,
        bytes: AtomicU64,
        /// Arrival order of chunks across every stream.
        arrived: AtomicU64,
        /// The latest arrival number written out so far.
        latest_out: AtomicU64,
        /// Chunks written after a chunk that arrived later (on another stream): the
        /// interleaving of connections changed.
        overtaken: AtomicU64,
    }

    /// A TCP forwarder from `PB_FL_LISTEN` to `PB_FL_TARGET` (both lab addresses) that holds
    /// each chunk `PB_FL_DELAY_MS` plus up to `PB_FL_JITTER_MS` at random. Within one stream
    /// the order is kept (TCP never reorders what it delivers: reordering the bytes of one
    /// stream would corrupt it, not test it); across streams the jitter lets a later chunk of
    /// one connection overtake an earlier chunk of another.
    pub async fn proxy() {
        let listener = TcpListener::bind(env("PB_FL_LISTEN")).await.unwrap();
        let target = env("PB_FL_TARGET");
        let delay = ms(env_num("PB_FL_DELAY_MS"));
        let jitter = env_num("PB_FL_JITTER_MS");
        let stats = Arc::new(ProxyStats::default());
        report(format_args!(
            "listening addr={}",
            listener.local_addr().unwrap()
        ));
        let st = stats.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::Relaxed);
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pump(ir, ow, st.clone(), delay, jitter));
                tokio::spawn(pump(or, iw, st.clone(), delay, jitter));
            }
        });
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
                let s = &stats;
                report(format_args!(
                    "stats connections={} chunks={} bytes={} overtaken={}",
                    s.connections.load(Ordering::Relaxed),
                    s.chunks.load(Ordering::Relaxed),
                    s.bytes.load(Ordering::Relaxed),
                    s.overtaken.load(Ordering::Relaxed)
                ));
                line.clear();
            }
        })
        .await
        .unwrap();
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        stats: Arc<ProxyStats>,
        delay: Duration,
        jitter_ms: u64,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, u64, Vec<u8>)>();
        let st = stats.clone();
        let writer = tokio::spawn(async move {
            while let Some((at, seq, chunk)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if chunk.is_empty() {
                    break;
                }
                if st.latest_out.fetch_max(seq, Ordering::Relaxed) > seq {
                    st.overtaken.fetch_add(1, Ordering::Relaxed);
                }
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        });
        // A small generator for the jitter (xorshift), seeded differently for every stream.
        let mut x = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                | 1
        };
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let seq = stats.arrived.fetch_add(1, Ordering::Relaxed) + 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let extra = if jitter_ms == 0 {
                0
            } else {
                x % (jitter_ms + 1)
            };
            // Never before this stream's previous chunk: the order within a stream is kept.
            let at = last.max(Instant::now() + delay + ms(extra));
            last = at;
            if n == 0 {
                let _ = tx.send((at, seq, Vec::new()));
                break;
            }
            stats.chunks.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if tx.send((at, seq, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        let _ = writer.await;
    }
}

// ---------------------------------------------------------------------------------------------
// The tests: the lab's side.

const PORT: u16 = 7000;

/// Starts a `Lab` server as `role` on `listen`; waits until it listens.
async fn start_server(lab: &Lab, role: &str, listen: String, extra: &[(&str, String)]) -> Child {
    let mut env = vec![("PB_FL_NAME", role.to_string()), ("PB_FL_LISTEN", listen)];
    env.extend(extra.iter().cloned());
    let mut server = lab.spawn(role, "server", &env);
    let listening = fields(&server.expect("listening").await);
    assert_eq!(
        num(&listening, "pid") as u32,
        server.pid,
        "`ip netns exec` runs the child in its own process"
    );
    server
}

/// Runs a client child to its result, doing what it asks on the way: faults on the lab's
/// namespaces, and the resident memory of `server`.
async fn drive(lab: &Lab, client: &mut Child, server: &Child) -> HashMap<String, String> {
    loop {
        let line = client.next().await;
        if let Some(rest) = line.strip_prefix("result ") {
            eprintln!("{}: {rest}", client.name);
            return fields(rest);
        }
        let Some(want) = line.strip_prefix("want ") else {
            eprintln!("[{}] {line}", client.name);
            continue;
        };
        let (what, role) = want.split_once(' ').unwrap_or((want, ""));
        let role = if role == "server" { "a" } else { role };
        let answer = match what {
            "partition" => {
                lab.partition(role);
                "ok".to_string()
            }
            "heal" => {
                lab.heal(role);
                "ok".to_string()
            }
            "rss" => server.rss_kib().to_string(),
            other => panic!("the client wants {other:?}"),
        };
        client.send(&answer);
    }
}

fn call_env(addr: String, calls: u64, conns: u64, concurrency: u64) -> Vec<(&'static str, String)> {
    vec![
        ("PB_FL_ADDR", addr),
        ("PB_FL_CALLS", calls.to_string()),
        ("PB_FL_CONNS", conns.to_string()),
        ("PB_FL_CONCURRENCY", concurrency.to_string()),
        ("PB_FL_DEADLINE_MS", "30000".into()),
        ("PB_FL_PAYLOAD", "256".into()),
    ]
}

/// Every call answered with its own answer, none failed, none hung.
fn assert_all_answered(r: &HashMap<String, String>, calls: u64) {
    assert_eq!(
        num(r, "misrouted"),
        0.0,
        "no answer went to another call: {r:?}"
    );
    assert_eq!(num(r, "hung"), 0.0, "no call outlived its deadline: {r:?}");
    assert_eq!(
        num(r, "answered") + num(r, "failed"),
        calls as f64,
        "every call answered or failed: {r:?}"
    );
    assert_eq!(
        num(r, "answered"),
        calls as f64,
        "TCP delivers every answer: {r:?}"
    );
}

async fn loss(percent: u32) {
    let lab = Lab::chain(&["a", "b"]);
    let server = start_server(&lab, "a", format!("{}:{PORT}", lab.addr(0, true)), &[]).await;
    lab.loss("a", percent);
    let calls = 500;
    let addr = format!("{}:{PORT}", lab.addr(0, true));
    let mut client = lab.spawn("b", "calls", &call_env(addr, calls, 4, 8));
    let r = drive(&lab, &mut client, &server).await;
    eprintln!(
        "loss {percent} % each way: {} calls over 4 connections, 8 at a time on each: \
         answered {}, failed {}, misrouted {}; latency p50 {} ms, p99 {} ms, max {} ms; \
         {} ms in all (connecting took {} ms)",
        calls,
        r["answered"],
        r["failed"],
        r["misrouted"],
        r["p50_ms"],
        r["p99_ms"],
        r["max_ms"],
        r["elapsed_ms"],
        r["connect_ms"]
    );
    assert_all_answered(&r, calls);
}

#[tokio::test]
#[ignore = "needs root, ip, nft and tc: .ci/run runs it with -- --ignored"]
async fn five_percent_loss_loses_and_misroutes_no_answer() {
    loss(5).await;
}

#[tokio::test]
#[ignore = "needs root, ip, nft and tc: .ci/run runs it with -- --ignored"]
async fn twenty_percent_loss_loses_and_misroutes_no_answer() {
    loss(20).await;
}

/// Keep-alive after 1 s of silence, idle timeout at 3 s: a partition is noticed in seconds.
fn quick_liveness() -> [(&'static str, String); 2] {
    [
        ("PB_FL_KEEPALIVE_MS", "1000".into()),
        ("PB_FL_IDLE_MS", "3000".into()),
    ]
}

#[tokio::test]
#[ignore = "needs root, ip, nft and tc: .ci/run runs it with -- --ignored"]
async fn a_partition_revokes_dependent_references_and_the_client_reconnects_after_it_heals() {
    // A — B — C: B follows A; C holds B's thing and A's thing forwarded by B.
    let lab = Lab::chain(&["a", "b", "c"]);
    let live = quick_liveness();
    let _a = start_server(&lab, "a", format!("{}:{PORT}", lab.addr(0, true)), &live).await;
    let mut b_env = live.to_vec();
    b_env.push(("PB_FL_UPSTREAM", format!("{}:{PORT}", lab.addr(0, true))));
    let b = start_server(&lab, "b", format!("0.0.0.0:{PORT}"), &b_env).await;
    let mut c_env = live.to_vec();
    c_env.push(("PB_FL_ADDR", format!("{}:{PORT}", lab.addr(1, true))));
    c_env.push(("PB_FL_HOLD_MS", "2000".into()));
    let mut c = lab.spawn("c", "chain", &c_env);
    let r = drive(&lab, &mut c, &b).await;
    eprintln!(
        "A cut off: A's thing revoked at C after {} ms (B's thing kept: {}); calls to it meanwhile \
         answered {}, failed {} ({}), hung {}; after the heal (2 s later) B reached A again in {} ms",
        r["a_revoked_ms"],
        r["b_kept"],
        r["a_answered"],
        r["a_failed"],
        r["a_errors"],
        r["a_hung"],
        r["a_back_ms"]
    );
    eprintln!(
        "C cut off: its connection closed after {} ms, every reference revoked: {}; calls \
         meanwhile answered {}, failed {} ({}), hung {}; after the heal (2 s later) reconnected in {} ms",
        r["c_closed_ms"],
        r["c_revoked"],
        r["c_answered"],
        r["c_failed"],
        r["c_errors"],
        r["c_hung"],
        r["c_back_ms"]
    );
    for key in ["b_kept", "c_revoked", "c_old_fail", "c_echo_ok", "c_a_ok"] {
        assert_eq!(r[key], "true", "{key}: {r:?}");
    }
    for key in ["a_hung", "c_hung", "a_misrouted", "c_misrouted"] {
        assert_eq!(num(&r, key), 0.0, "{key}: {r:?}");
    }
    // Noticed by keep-alive (1 s) and the idle timeout (3 s), not by TCP's own timeouts
    // (minutes): a generous bound, not a timing measurement.
    assert!(num(&r, "a_revoked_ms") < 20_000.0, "{r:?}");
    assert!(num(&r, "c_closed_ms") < 20_000.0, "{r:?}");
}

#[tokio::test]
#[ignore = "needs root, ip, nft and tc: .ci/run runs it with -- --ignored"]
async fn a_slow_link_answers_small_calls_and_backpressure_bounds_the_servers_memory() {
    let lab = Lab::chain(&["a", "b"]);
    let server = start_server(&lab, "a", format!("{}:{PORT}", lab.addr(0, true)), &[]).await;
    lab.limit_rate("a", "b", "1mbit");
    let (large, len) = (256u64, 256 * 1024u64);
    let env = [
        ("PB_FL_ADDR", format!("{}:{PORT}", lab.addr(0, true))),
        ("PB_FL_LARGE", large.to_string()),
        ("PB_FL_LARGE_LEN", len.to_string()),
        ("PB_FL_SECS", "8".into()),
    ];
    let mut client = lab.spawn("b", "bandwidth", &env);
    let r = drive(&lab, &mut client, &server).await;
    let kib = |k: &str| num(&r, k);
    eprintln!(
        "1 Mbit/s from the server: {large} calls for 256 KiB answers (64 MiB) at once; {} \
         answered in 8 s, then their connection cut: {} answered, {} failed, {} hung in all",
        r["large_done_before_cut"], r["large_answered"], r["large_failed"], r["large_hung"]
    );
    eprintln!(
        "small calls meanwhile on another connection: {} answered, {} failed, p50 {} ms, p99 \
         {} ms, max {} ms; on the congested connection: {} answered, {} failed ({}), p50 {} ms",
        r["small_answered"],
        r["small_failed"],
        r["small_p50_ms"],
        r["small_p99_ms"],
        r["small_max_ms"],
        r["same_answered"],
        r["same_failed"],
        r["same_errors"],
        r["same_p50_ms"]
    );
    eprintln!(
        "server RSS: {} KiB before, {} KiB at most during, {} KiB after the cut",
        r["rss_before_kib"], r["rss_peak_kib"], r["rss_after_kib"]
    );
    for key in [
        "small_failed",
        "small_hung",
        "small_misrouted",
        "same_hung",
        "same_misrouted",
    ] {
        assert_eq!(num(&r, key), 0.0, "{key}: {r:?}");
    }
    assert!(num(&r, "small_answered") > 0.0, "{r:?}");
    assert_eq!(
        num(&r, "large_misrouted") + num(&r, "large_hung"),
        0.0,
        "{r:?}"
    );
    assert_eq!(
        num(&r, "large_answered") + num(&r, "large_failed"),
        large as f64,
        "{r:?}"
    );
    // Backpressure: the server makes answers only while its output is under max_unsent_bytes
    // (4 MiB), not all 64 MiB at once.
    let grew_mib = (kib("rss_peak_kib") - kib("rss_before_kib")) / 1024.0;
    assert!(
        grew_mib < 32.0,
        "the server grew by {grew_mib:.1} MiB: {r:?}"
    );
}

#[tokio::test]
#[ignore = "needs root, ip, nft and tc: .ci/run runs it with -- --ignored"]
async fn delay_and_reordering_across_connections_keep_every_answer_with_its_call() {
    // a (server) — m (the proxy) — c (the client).
    let lab = Lab::chain(&["a", "m", "c"]);
    let server = start_server(&lab, "a", format!("{}:{PORT}", lab.addr(0, true)), &[]).await;
    let proxy_addr = format!("{}:{}", lab.addr(1, true), PORT + 100);
    let mut proxy = lab.spawn(
        "m",
        "proxy",
        &[
            ("PB_FL_LISTEN", proxy_addr.clone()),
            ("PB_FL_TARGET", format!("{}:{PORT}", lab.addr(0, true))),
            ("PB_FL_DELAY_MS", "50".into()),
            ("PB_FL_JITTER_MS", "40".into()),
        ],
    );
    proxy.expect("listening").await;
    let calls = 2000;
    let mut client = lab.spawn("c", "calls", &call_env(proxy_addr, calls, 8, 16));
    let r = drive(&lab, &mut client, &server).await;
    proxy.send("stats");
    let stats = fields(&proxy.expect("stats").await);
    eprintln!(
        "proxy: 50 ms each way plus 0-40 ms jitter; {calls} calls over 8 connections, 16 at a \
         time on each: answered {}, failed {}, misrouted {}; latency p50 {} ms, p99 {} ms; \
         {} chunks forwarded, {} of them overtaken by a later chunk of another stream",
        r["answered"],
        r["failed"],
        r["misrouted"],
        r["p50_ms"],
        r["p99_ms"],
        stats["chunks"],
        stats["overtaken"]
    );
    assert_all_answered(&r, calls);
    assert!(num(&r, "p50_ms") >= 100.0, "the delay applies: {r:?}");
    assert!(
        num(&stats, "overtaken") > 0.0,
        "the proxy reordered: {stats:?}"
    );
}

#[tokio::test]
#[ignore = "needs root, ip, nft and tc: .ci/run runs it with -- --ignored"]
async fn partition_and_heal_cycles_keep_the_servers_memory_flat() {
    let lab = Lab::chain(&["a", "b"]);
    let live = quick_liveness();
    let server = start_server(&lab, "a", format!("{}:{PORT}", lab.addr(0, true)), &live).await;
    let cycles = 5;
    let mut env = live.to_vec();
    env.push(("PB_FL_ADDR", format!("{}:{PORT}", lab.addr(0, true))));
    env.push(("PB_FL_CYCLES", cycles.to_string()));
    env.push(("PB_FL_HOLD_MS", "0".into()));
    let mut client = lab.spawn("b", "cycles", &env);
    let r = drive(&lab, &mut client, &server).await;
    let rss: Vec<f64> = r["rss_kib"]
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    eprintln!(
        "{cycles} partition/heal cycles: server RSS (KiB) at each cycle and after the last: {}; \
         detected after {} ms, reconnected {} ms after each heal; calls answered {}, failed {}",
        r["rss_kib"], r["detect_ms"], r["back_ms"], r["answered"], r["failed"]
    );
    assert_eq!(r["revoked_all"], "true", "{r:?}");
    assert_eq!(
        num(&r, "misrouted") + num(&r, "hung") + num(&r, "failed"),
        0.0,
        "{r:?}"
    );
    assert_eq!(num(&r, "answered"), (cycles + 1) as f64 * 50.0, "{r:?}");
    let (first, last) = (rss[0], *rss.last().unwrap());
    assert!(
        last < first + 16.0 * 1024.0,
        "the server's RSS went from {first} KiB to {last} KiB"
    );
}

/// Found by the lab: pb's dial has no timeout of its own. `Config::handshake_timeout` starts
/// once TCP has connected, so a dial to a peer that is cut off (its SYNs dropped, no reset)
/// waits for the kernel to give up: 134 s here (`tcp_syn_retries` = 6). A `Reconnecting`
/// client redialling during a long partition waits as long, and after the heal until the
/// kernel's next SYN retransmission (1 s apart for the first four, then doubling).
#[tokio::test]
#[ignore = "fails today (pb's dial has no timeout), and needs root, ip, nft and tc"]
async fn a_dial_to_a_cut_off_peer_gives_up_within_the_handshake_timeout() {
    let lab = Lab::chain(&["a", "b"]);
    let server = start_server(&lab, "a", format!("{}:{PORT}", lab.addr(0, true)), &[]).await;
    let env = [
        ("PB_FL_ADDR", format!("{}:{PORT}", lab.addr(0, true))),
        ("PB_FL_BOUND_MS", "30000".into()),
    ];
    let mut client = lab.spawn("b", "dial", &env);
    let r = drive(&lab, &mut client, &server).await;
    eprintln!(
        "a dial to a cut-off peer (handshake_timeout 10 s): {} after {} ms",
        r["outcome"], r["dial_ms"]
    );
    assert_ne!(r["outcome"], "connected", "{r:?}");
    assert_ne!(
        r["outcome"], "still_dialing",
        "the dial outlived 30 s, three times the handshake timeout: {r:?}"
    );
    assert!(num(&r, "dial_ms") < 20_000.0, "{r:?}");
}
