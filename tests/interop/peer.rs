//! Child processes for the interop tests, shared by `tests/amp_interop.rs` and
//! `tests/twisted_pb_interop.rs` (included with `#[path]`): a peer killed when the test ends
//! whose stderr is shown if the test failed, reading its stdout, running a program to its end,
//! and finding the examples that `cargo test` builds.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// A child process that is killed when the test ends, however it ends.
pub struct Peer {
    pub child: Child,
    pub name: String,
    pub stderr: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(&self.stderr) {
                eprintln!("--- stderr of {} ---\n{text}", self.name);
            }
        } else {
            let _ = std::fs::remove_file(&self.stderr);
        }
    }
}

pub fn stderr_file(name: &str) -> (PathBuf, std::fs::File) {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "interop-{}-{n}-{}.stderr",
        std::process::id(),
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

pub fn spawn_peer(program: &Path, args: &[&str], name: &str) -> Peer {
    let (stderr, file) = stderr_file(name);
    let child = Command::new(program)
        .args(args)
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Peer {
        child,
        name: name.to_string(),
        stderr,
    }
}

/// A bound on waiting for a child, so that a broken peer fails the test instead of hanging it.
/// Not a timing assertion: healthy runs take a small fraction of it.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads the child's stdout until a line starts with `prefix`; returns the rest of that line.
pub async fn wait_for_line(peer: &mut Peer, prefix: &str) -> String {
    wait_for_line_keeping(peer, prefix).await.0
}

/// Like [`wait_for_line`], and keeps reading: the task returns the lines that follow, once the
/// child closes its stdout (when it ends).
pub async fn wait_for_line_keeping(
    peer: &mut Peer,
    prefix: &str,
) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let stdout = peer.child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let next = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} printed no {prefix:?} line", peer.name));
        match next {
            Ok(Some(line)) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    // Keep draining so the child never blocks on a full pipe.
                    let rest_of_output = tokio::spawn(async move {
                        let mut kept = Vec::new();
                        while let Ok(Some(line)) = lines.next_line().await {
                            kept.push(line);
                        }
                        kept
                    });
                    return (rest.trim().to_string(), rest_of_output);
                }
            }
            Ok(None) | Err(_) => panic!(
                "{} ended before printing {prefix:?}; stderr:\n{}",
                peer.name,
                std::fs::read_to_string(&peer.stderr).unwrap_or_default()
            ),
        }
    }
}

/// How a program run to completion ended.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a program to completion; returns (success, stdout).
pub async fn run_to_end(program: &Path, args: &[&str], name: &str) -> (bool, String) {
    let finished = run_to_finish(program, args, name).await;
    (finished.status.success(), finished.stdout)
}

/// Runs a program to completion; returns its exit status, stdout and stderr.
pub async fn run_to_finish(program: &Path, args: &[&str], name: &str) -> Finished {
    let mut peer = spawn_peer(program, args, name);
    let stdout = peer.child.stdout.take().expect("stdout is piped");
    let mut out = String::new();
    let mut lines = BufReader::new(stdout).lines();
    let finished = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            out.push_str(&line);
            out.push('\n');
        }
        peer.child.wait().await
    })
    .await;
    let status = match finished {
        Ok(status) => status.unwrap(),
        Err(_) => panic!("{name} did not finish; output so far:\n{out}"),
    };
    let stderr = std::fs::read_to_string(&peer.stderr).unwrap_or_default();
    if !status.success() {
        eprintln!("{name} failed with {status}\nstdout:\n{out}\nstderr:\n{stderr}");
    }
    Finished {
        status,
        stdout: out,
        stderr,
    }
}

pub fn example_binary(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; `cargo test` builds examples beside them.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{path:?} is missing: run `cargo test` (which builds the examples) or `cargo build --examples`"
    );
    path
}

/// Sends `input` on `s` and reads until the peer closes (or resets) the connection; returns
/// what the peer sent meanwhile. The peer may close before it has read everything: the close
/// is what counts.
pub async fn closed_after(s: &mut tokio::net::TcpStream, input: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.write_all(input).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => panic!("no close after {input:?}; got {got:?}"),
            Ok(Ok(0)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            // A reset instead of a close; what was sent before still counts.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Ok(Err(e)) => panic!("reading after {input:?}: {e}"),
        }
    }
}
