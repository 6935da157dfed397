//! Soak: minutes of calls, reference churn and reconnections over 127.0.0.1, with the process's
//! memory sampled as it goes. Ignored by default; run it on its own in release mode:
//! `PB_SOAK_SECS=300 cargo test --release --test load_soak -- --ignored --nocapture`
//! (`PB_SOAK_SECS` defaults to 300).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[pb::remote]
pub trait Cell {
    async fn get(&self) -> Result<u64, ()>;
}

struct Value(u64);

impl Cell for Value {
    async fn get(&self) -> Result<u64, ()> {
        Ok(self.0)
    }
}

#[pb::remote]
pub trait Factory {
    async fn add(&self, a: u64, b: u64) -> Result<u64, ()>;
    async fn make(&self, v: u64) -> Result<CellRef, ()>;
    async fn read(&self, cell: CellRef) -> Result<u64, ()>;
    async fn blob(&self, n: u32) -> Result<Vec<u8>, ()>;
}

struct FactoryImpl;

impl Factory for FactoryImpl {
    async fn add(&self, a: u64, b: u64) -> Result<u64, ()> {
        Ok(a.wrapping_add(b))
    }
    async fn make(&self, v: u64) -> Result<CellRef, ()> {
        Ok(CellRef::new(Value(v)))
    }
    async fn read(&self, cell: CellRef) -> Result<u64, ()> {
        cell.get().await.map_err(|_| ())
    }
    async fn blob(&self, n: u32) -> Result<Vec<u8>, ()> {
        Ok(vec![7; n as usize])
    }
}

/// Resident set size in KiB, from /proc.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss field");
    pages * 4
}

const WORKERS: u64 = 16;
/// Each worker reconnects after this many rounds.
const ROUNDS_PER_CONNECTION: u64 = 2_000;

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    refs: AtomicU64,
    reconnects: AtomicU64,
}

async fn worker(
    w: u64,
    addr: std::net::SocketAddr,
    deadline: Instant,
    counters: Arc<Counters>,
    samples: Arc<std::sync::Mutex<Vec<(u64, u64, u64)>>>,
    started: Instant,
) {
    let mut round = 0u64;
    'outer: while Instant::now() < deadline {
        let conn = pb::Client::connect(addr).await.expect("connect");
        let f: FactoryRef = conn.root();
        let mut held: Vec<(u64, CellRef)> = Vec::new();
        for _ in 0..ROUNDS_PER_CONNECTION {
            if Instant::now() >= deadline {
                conn.close().await;
                break 'outer;
            }
            round += 1;
            let v = (w << 40) | round;
            assert_eq!(f.add(v, 1).await, Ok(v + 1));
            // Reference churn: keep a window of up to 32 imported objects, drop the oldest.
            let cell = f.make(v).await.expect("make");
            held.push((v, cell));
            if held.len() > 32 {
                let (old, cell) = held.remove(0);
                assert_eq!(cell.get().await, Ok(old));
            }
            // Our objects to the server, and back.
            assert_eq!(f.read(CellRef::new(Value(v))).await, Ok(v));
            if round.is_multiple_of(50) {
                assert_eq!(f.blob(64 * 1024).await.map(|b| b.len()), Ok(64 * 1024));
            }
            counters.calls.fetch_add(4, Ordering::Relaxed);
            counters.refs.fetch_add(2, Ordering::Relaxed);
            if w == 0 && round.is_multiple_of(2_000) {
                samples.lock().unwrap().push((
                    started.elapsed().as_secs(),
                    rss_kib(),
                    counters.calls.load(Ordering::Relaxed),
                ));
            }
        }
        drop(held);
        conn.close().await;
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes long, run on its own in release mode"]
async fn calls_and_reference_churn_keep_memory_flat() {
    let secs: u64 = std::env::var("PB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(FactoryRef::new(FactoryImpl));
    let addr = server.local_addr();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let counters = Arc::new(Counters::default());
    let samples = Arc::new(std::sync::Mutex::new(vec![(0, rss_kib(), 0)]));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        workers.push(tokio::spawn(worker(
            w,
            addr,
            deadline,
            counters.clone(),
            samples.clone(),
            started,
        )));
    }
    for w in workers {
        w.await.unwrap();
    }
    let idle = tokio::time::timeout(Duration::from_secs(30), async {
        while !server.connections().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(idle.is_ok(), "every connection closed");
    let end_rss = rss_kib();
    let samples = samples.lock().unwrap().clone();
    println!("soak: {secs} s, {WORKERS} connections at a time");
    println!(
        "soak: {} calls, {} reference round trips, {} reconnections",
        counters.calls.load(Ordering::Relaxed),
        counters.refs.load(Ordering::Relaxed),
        counters.reconnects.load(Ordering::Relaxed)
    );
    println!("soak: t(s)  rss(KiB)  calls");
    for (t, rss, calls) in &samples {
        println!("soak: {t:>5} {rss:>9} {calls:>10}");
    }
    println!("soak: after all connections closed: {end_rss} KiB");
    server.shutdown().await;

    // Flat: past the first fifth of the run (warm-up: allocator pools, table capacities), the
    // largest sample exceeds the warm-up's largest by less than 8 MiB.
    let warm = secs / 5;
    let warm_max = samples
        .iter()
        .filter(|s| s.0 <= warm)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let late_max = samples
        .iter()
        .filter(|s| s.0 > warm)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    println!("soak: warm-up max {warm_max} KiB, later max {late_max} KiB");
    assert!(
        late_max < warm_max + 8 * 1024,
        "rss grew from {warm_max} KiB to {late_max} KiB"
    );
}
