//! tarpc 0.38 measured the way pb's `benches/rpc.rs` measures pb and the floor, so that the two
//! benches' figures can be set side by side (docs/PERFORMANCE.md, "Against tarpc").
//!
//! `cargo run --release -- [--json] [--runs N] [--pin same|split] [latency pipelined bulk_vec]`
//!
//! As in pb's bench:
//! - **Separate processes.** This binary is client and server: it re-executes itself with
//!   `--server`, reads the port the server bound on 127.0.0.1 from its stdout, and stops it by
//!   closing its stdin. Every run of every workload gets a fresh server process.
//! - **One thread each.** Both processes run a current-thread tokio runtime; the client's
//!   workload runs in a spawned task.
//! - **Same options.** `TCP_NODELAY` on both ends.
//! - `--pin same` runs both processes on core 0, `--pin split` the client on core 0 and the
//!   server on core 1 (`taskset`).
//! - Each workload runs `--runs N` times (default 3) and the median is reported.
//!
//! The service is written the plain way a tarpc user writes it: `#[tarpc::service]`, a
//! `Vec<u8>` for the bytes, the serde transport over TCP with tarpc's bincode codec, the
//! server spawning each request's response future (as tarpc's README does).
//!
//! Workloads (the same counts as pb's bench):
//! - `latency`: 20 000 sequential `echo(u64)` calls after 2 000 warm-up calls, p50 (`latency`)
//!   and p99 (`latency_p99`) in µs;
//! - `pipelined`: 200 000 `echo(u64)` calls by 64 tasks sharing one client (64 in flight),
//!   after one warm-up call, calls/s;
//! - `bulk_vec`: 200 sequential `bytes(Vec<u8>)` echoes of 1 MiB after 5 warm-up, MB/s =
//!   10^6 payload bytes one way per second of the measured calls.
//!
//! `--json` prints one line per workload: `{"workload": "...", "unit": "...", "tarpc": X}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::prelude::*;
use tarpc::serde_transport::Transport;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};
use tokio::net::{TcpListener, TcpStream};

// ---- the tarpc service ------------------------------------------------------------------------

/// The benchmark's service.
#[tarpc::service]
pub trait Bench {
    /// Answers `x`.
    async fn echo(x: u64) -> u64;
    /// Answers `data`.
    async fn bytes(data: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct BenchServer;

impl Bench for BenchServer {
    async fn echo(self, _: context::Context, x: u64) -> u64 {
        x
    }
    async fn bytes(self, _: context::Context, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

// ---- settings (pb's bench's `Counts::full()`) ---------------------------------------------------

/// Calls in flight for `pipelined`.
const IN_FLIGHT: usize = 64;
/// Size of a bulk payload.
const BULK_LEN: usize = 1 << 20;
const WARMUP: usize = 2_000;
const LATENCY: usize = 20_000;
const PIPELINED: u64 = 200_000;
const BULK_WARMUP: usize = 5;
const BULK: usize = 200;

// ---- server process ---------------------------------------------------------------------------

/// Set, to `same` or `split`, in the process that `--pin` re-ran under `taskset`.
const PIN_ENV: &str = "TARPC_COMPARE_PINNED";

/// A server started as a child process.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
}

impl ServerProc {
    fn start() -> ServerProc {
        let exe = std::env::current_exe().expect("own path");
        let mut cmd = match pinned_server_cpu() {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(cpu.to_string()).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .arg("--server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("server stdout"))
            .read_line(&mut line)
            .expect("read the server's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server printed {line:?}, not a port"));
        ServerProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// `--server`: bind 127.0.0.1:0, print the port, serve until stdin closes.
fn serve() {
    std::thread::spawn(|| {
        let mut b = [0u8; 1];
        let _ = std::io::stdin().read(&mut b);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("bound").port();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{port}").expect("write the port");
        out.flush().expect("flush the port");
        drop(out);
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let transport = Transport::from((s, Bincode::default()));
            let channel = BaseChannel::with_defaults(transport);
            tokio::spawn(
                channel
                    .execute(BenchServer.serve())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    }),
            );
        }
    });
}

async fn connect(addr: SocketAddr) -> BenchClient {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let transport = Transport::from((s, Bincode::default()));
    BenchClient::new(client::Config::default(), transport).spawn()
}

// ---- workloads --------------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Sequential calls: (p50, p99) in microseconds.
async fn latency(addr: SocketAddr) -> Vec<f64> {
    let client = connect(addr).await;
    let mut times = Vec::with_capacity(LATENCY);
    for i in 0..(WARMUP + LATENCY) as u64 {
        let t = Instant::now();
        assert_eq!(client.echo(context::current(), i).await.expect("echo"), i);
        if i as usize >= WARMUP {
            times.push(t.elapsed());
        }
    }
    times.sort_unstable();
    vec![percentile(&times, 0.50), percentile(&times, 0.99)]
}

/// `IN_FLIGHT` tasks sharing one client: calls/s.
async fn pipelined(addr: SocketAddr) -> Vec<f64> {
    let client = connect(addr).await;
    client
        .echo(context::current(), 0)
        .await
        .expect("warm-up call");
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let client = client.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= PIPELINED {
                    break;
                }
                assert_eq!(client.echo(context::current(), i).await.expect("echo"), i);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("pipelined task");
    }
    vec![PIPELINED as f64 / t.elapsed().as_secs_f64()]
}

/// Sequential 1 MiB `Vec<u8>` echoes: MB/s of payload, one way.
async fn bulk_vec(addr: SocketAddr) -> Vec<f64> {
    let client = connect(addr).await;
    let data: Vec<u8> = (0..BULK_LEN).map(|i| i as u8).collect();
    let mut elapsed = Duration::ZERO;
    for i in 0..BULK_WARMUP + BULK {
        let t = Instant::now();
        // The clone is the caller's (a user passing a buffer it keeps), as in pb's bench.
        let back = client
            .bytes(context::current(), data.clone())
            .await
            .expect("bytes call");
        if i >= BULK_WARMUP {
            elapsed += t.elapsed();
        }
        assert_eq!(back.len(), BULK_LEN);
    }
    vec![(BULK * BULK_LEN) as f64 / 1e6 / elapsed.as_secs_f64()]
}

// ---- runs -------------------------------------------------------------------------------------

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `f` `runs` times, each against a fresh server process; the median of each output.
fn measure<F, Fut>(rt: &tokio::runtime::Runtime, runs: usize, f: F) -> Vec<f64>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Vec<f64>> + Send + 'static,
{
    let mut per_run: Vec<Vec<f64>> = Vec::new();
    for _ in 0..runs {
        let server = ServerProc::start();
        let run = f(server.addr);
        // The client runs in a spawned task, as in pb's bench.
        let out = rt
            .block_on(async move { tokio::spawn(run).await })
            .expect("client task");
        server.stop();
        per_run.push(out);
    }
    (0..per_run[0].len())
        .map(|i| median(&mut per_run.iter().map(|r| r[i]).collect::<Vec<_>>()))
        .collect()
}

/// The core the server runs on under `--pin`: the client's (0) with `same`, the next (1) with
/// `split`.
fn pinned_server_cpu() -> Option<u32> {
    match std::env::var(PIN_ENV).ok()?.as_str() {
        "same" => Some(0),
        "split" => Some(1),
        _ => None,
    }
}

/// `--pin same|split`: run this binary again on core 0 under `taskset` (its servers then go on
/// core 0 or core 1), and exit with its status. Returns when there is nothing to do.
fn pin_self(args: &[String]) {
    let Some(i) = args.iter().position(|a| a == "--pin") else {
        return;
    };
    if std::env::var_os(PIN_ENV).is_some() {
        return;
    }
    let placement = args.get(i + 1).map(String::as_str).unwrap_or("");
    if placement != "same" && placement != "split" {
        eprintln!("--pin takes `same` (one core for both processes) or `split` (one each)");
        std::process::exit(2);
    }
    let status = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe().expect("own path"))
        .args(args)
        .env(PIN_ENV, placement)
        .status()
        .unwrap_or_else(|e| {
            eprintln!("--pin needs `taskset` (util-linux): {e}");
            std::process::exit(2);
        });
    std::process::exit(status.code().unwrap_or(1));
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--server") {
        serve();
        return;
    }
    pin_self(&args);
    let json = args.iter().any(|a| a == "--json");
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut skip_next = false;
    let selected: Vec<&str> = args
        .iter()
        .filter(|a| {
            if std::mem::take(&mut skip_next) {
                return false;
            }
            if *a == "--runs" || *a == "--pin" {
                skip_next = true;
            }
            !a.starts_with("--")
        })
        .map(String::as_str)
        .collect();
    for s in &selected {
        if !["latency", "pipelined", "bulk_vec"].contains(s) {
            eprintln!("unknown workload {s}: latency, pipelined, bulk_vec");
            std::process::exit(2);
        }
    }
    let wants = |name: &str| selected.is_empty() || selected.contains(&name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut rows: Vec<(&str, &str, f64)> = Vec::new();
    if wants("latency") {
        let v = measure(&rt, runs, latency);
        rows.push(("latency", "us p50 per call, lower is better", v[0]));
        rows.push(("latency_p99", "us p99 per call, lower is better", v[1]));
    }
    if wants("pipelined") {
        let v = measure(&rt, runs, pipelined);
        rows.push((
            "pipelined",
            "calls/s with 64 in flight, higher is better",
            v[0],
        ));
    }
    if wants("bulk_vec") {
        let v = measure(&rt, runs, bulk_vec);
        rows.push((
            "bulk_vec",
            "MB/s of 1 MiB Vec<u8> echoes, higher is better",
            v[0],
        ));
    }
    for (workload, unit, tarpc) in rows {
        if json {
            println!(
                "{{\"workload\": \"{workload}\", \"unit\": \"{unit}\", \"tarpc\": {}}}",
                fmt_num(tarpc)
            );
        } else {
            println!("{workload:<12} {:>12}  {unit}", fmt_num(tarpc));
        }
    }
    if !json {
        println!("(tarpc 0.38, medians of {runs} run(s))");
    }
}
