//! The fault lab's machinery (included by `tests/fault_lab.rs` with `#[path]`): network
//! namespaces joined by veth pairs, removed on every exit; faults applied with nftables and
//! `tc`; and child processes (this test binary run again inside a namespace) that are killed
//! when the test ends and talk to the test in lines.
//!
//! **Nothing leaves the lab.** Each namespace has only its loopback and its veth ends, with
//! /30 addresses in 10.213.0.0/16 and no default route: a send to any other address fails
//! with "network unreachable" inside the namespace. The children are given only the lab's
//! addresses, and the proxy connects only to the address it is given.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// Every name this lab makes starts with this, then the creating process's id.
pub const PREFIX: &str = "pbfl-";

/// The environment variable that puts this test binary in child mode, and says which role.
pub const ROLE_ENV: &str = "PB_FAULT_LAB_ROLE";

/// A bound on every wait for a child, so that a broken run fails instead of hanging. Not a
/// timing assertion: healthy runs take a small fraction of it.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Runs a command to its end and panics, with its output, if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails loudly (never skips) when the lab cannot run here: it needs root, `ip`, `nft` and
/// `tc`. `.ci/run` installs them.
pub fn require_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        uid, "0",
        "the fault lab makes network namespaces and needs root (effective uid {uid}); \
         run it as .ci/run does: cargo test --test fault_lab -- --ignored"
    );
    for tool in ["ip", "nft", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "the fault lab needs `{tool}`: apt-get install -y nftables iproute2"
        );
    }
}

static LABS: AtomicUsize = AtomicUsize::new(0);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// Deletes namespaces left by earlier runs that crashed: `pbfl-<pid>-…` whose process is gone
/// (or is this process, which has made none yet when this runs). Namespaces of a process still
/// running belong to another run of the lab going on now, and are left alone.
fn sweep_stale() {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only the lab's own names: `pbfl-<digits>-…`.
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me || !std::path::Path::new("/proc").join(pid).exists() {
            eprintln!("fault lab: deleting stale namespace {name}");
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A set of namespaces, deleted (with their veths and nft tables) when dropped, however the
/// test ends; its children are killed first.
pub struct Lab {
    /// This lab's number in this process: its subnet is 10.213.<n>.0/24.
    pub n: usize,
    names: HashMap<String, String>,
    children: std::sync::Mutex<Vec<std::process::Child>>,
}

impl Lab {
    /// A lab with one namespace per role, in a chain: `roles[0]` — `roles[1]` — `roles[2]`…
    /// Link `i` joins `roles[i]` (address 10.213.n.(4i+1)) and `roles[i+1]` (10.213.n.(4i+2)),
    /// a /30 each; the veth end in a namespace is named `to-<other role>`.
    pub fn chain(roles: &[&str]) -> Lab {
        require_tools();
        SWEEP.call_once(sweep_stale);
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        assert!(n < 256, "one process makes at most 256 labs");
        let mut lab = Lab {
            n,
            names: HashMap::new(),
            children: Default::default(),
        };
        for role in roles {
            let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
            // Recorded before it exists, so that a failure halfway still deletes it.
            lab.names.insert(role.to_string(), name.clone());
            run("ip", &["netns", "add", &name]);
            run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        }
        for (i, pair) in roles.windows(2).enumerate() {
            let (left, right) = (pair[0], pair[1]);
            let (ln, rn) = (lab.ns(left).to_string(), lab.ns(right).to_string());
            let (lv, rv) = (format!("to-{right}"), format!("to-{left}"));
            // Both ends are made directly inside their namespaces: nothing appears in the
            // machine's own namespace, even for an instant.
            run(
                "ip",
                &[
                    "link", "add", &lv, "netns", &ln, "type", "veth", "peer", "name", &rv, "netns",
                    &rn,
                ],
            );
            for (ns, dev, host) in [(&ln, &lv, 4 * i + 1), (&rn, &rv, 4 * i + 2)] {
                let addr = format!("10.213.{n}.{host}/30");
                run("ip", &["-n", ns, "addr", "add", &addr, "dev", dev]);
                run("ip", &["-n", ns, "link", "set", dev, "up"]);
            }
        }
        // The table the faults go in, one per namespace.
        for role in roles {
            let ns = lab.ns(role).to_string();
            nft(&ns, &["add", "table", "inet", "pbfl"]);
            for hook in ["input", "output"] {
                let spec = format!("{{ type filter hook {hook} priority 0; policy accept; }}");
                nft(&ns, &["add", "chain", "inet", "pbfl", hook, &spec]);
            }
        }
        lab
    }

    /// The namespace of `role`.
    pub fn ns(&self, role: &str) -> &str {
        self.names
            .get(role)
            .unwrap_or_else(|| panic!("no role {role} in this lab"))
    }

    /// The address of `role`'s end of link `link` (see [`Lab::chain`]).
    pub fn addr(&self, link: usize, left: bool) -> String {
        let host = 4 * link + if left { 1 } else { 2 };
        format!("10.213.{}.{host}", self.n)
    }

    /// Drop `percent` % of the packets entering and leaving `role`'s namespace, at random.
    pub fn loss(&self, role: &str, percent: u32) {
        for hook in ["input", "output"] {
            let expr = format!("numgen random mod 100 < {percent} drop");
            let mut args = vec!["add", "rule", "inet", "pbfl", hook];
            args.extend(expr.split(' '));
            nft(self.ns(role), &args);
        }
    }

    /// Cut `role`'s namespace off: every packet in and out is dropped (silently: the peers
    /// see no reset, as when a cable is pulled).
    pub fn partition(&self, role: &str) {
        let ns = self.ns(role);
        nft(
            ns,
            &[
                "add", "rule", "inet", "pbfl", "input", "iifname", "!=", "lo", "drop",
            ],
        );
        nft(
            ns,
            &[
                "add", "rule", "inet", "pbfl", "output", "oifname", "!=", "lo", "drop",
            ],
        );
    }

    /// Remove every rule in `role`'s namespace (the partition and any loss).
    pub fn heal(&self, role: &str) {
        for hook in ["input", "output"] {
            nft(self.ns(role), &["flush", "chain", "inet", "pbfl", hook]);
        }
    }

    /// Limit what leaves `role` on its veth towards `to` to `rate` (a token bucket).
    pub fn limit_rate(&self, role: &str, to: &str, rate: &str) {
        let dev = format!("to-{to}");
        run(
            "ip",
            &[
                "netns",
                "exec",
                self.ns(role),
                "tc",
                "qdisc",
                "add",
                "dev",
                &dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ],
        );
    }

    /// Start this test binary in child mode as `role` inside `role`'s namespace, with `env`.
    pub fn spawn(&self, role: &str, child_role: &str, env: &[(&str, String)]) -> Child {
        let ns = self.ns(role).to_string();
        let stderr = std::env::temp_dir().join(format!("{ns}-{child_role}.stderr"));
        let file = std::fs::File::create(&stderr).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&exe)
            .args(["--exact", "child", "--ignored", "--nocapture"])
            .env(ROLE_ENV, child_role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {child_role} in {ns}: {e}"));
        let pid = child.id();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print the test's name on the same line before the body runs.
                if let Some(at) = line.find("PBFL ")
                    && tx.send(line[at + 5..].trim_end().to_string()).is_err()
                {
                    break;
                }
            }
        });
        self.children.lock().unwrap().push(child);
        Child {
            name: format!("{child_role} in {ns}"),
            pid,
            stdin: Some(stdin),
            lines,
            stderr,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            let _ = child.kill();
        }
        for child in children.iter_mut() {
            // `ip netns exec` runs the program in its own process (it execs), so this waits
            // for the child itself: once it is gone, nothing is left inside the namespaces.
            let _ = child.wait();
        }
        for name in self.names.values() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn nft(ns: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, "nft"];
    all.extend_from_slice(args);
    run("ip", &all);
}

/// A child process of a lab: lines in on its stdin, `PBFL …` lines out of its stdout.
pub struct Child {
    pub name: String,
    /// Its process id, in this process's pid namespace (`ip netns exec` execs the program).
    pub pid: u32,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: PathBuf,
}

impl Child {
    /// The next line the child reports, within [`PATIENCE`].
    pub async fn next(&mut self) -> String {
        match tokio::time::timeout(PATIENCE, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{} ended; its stderr:\n{}",
                self.name,
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            ),
            Err(_) => panic!("{} said nothing for {PATIENCE:?}", self.name),
        }
    }

    /// Waits for a line starting with `word`; returns the rest.
    pub async fn expect(&mut self, word: &str) -> String {
        loop {
            let line = self.next().await;
            if let Some(rest) = line.strip_prefix(word) {
                return rest.trim().to_string();
            }
            eprintln!("[{}] {line}", self.name);
        }
    }

    /// Sends one line to the child.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("{} gone: {e}", self.name));
    }

    /// Its resident memory, from /proc/<pid>/status (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("{} gone: {e}", self.name));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(text) = std::fs::read_to_string(&self.stderr)
        {
            eprintln!("--- stderr of {} ---\n{text}", self.name);
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// `key=value` pairs of a result line.
pub fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A numeric field of a result line.
pub fn num(f: &HashMap<String, String>, key: &str) -> f64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {f:?}"))
}
