//! Shared pieces of the auth and tls tests: an avatar interface, a realm that records what it
//! saw, a recording transport, and development certificates.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use pb::{Avatar, Caller, Identity, LoginConfig, LoginRequest, Portal, Verifiers};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

pub const PASSWORD: &str = "correct horse battery staple";
pub const ITERATIONS: u32 = 4096;

#[pb::remote]
pub trait Account {
    /// Who the server thinks is calling.
    async fn whoami(&self, caller: Caller) -> Result<String, ()>;
    /// The length of what was sent (to test frame limits).
    async fn echo_len(&self, data: String) -> Result<usize, ()>;
}

pub struct Me;

impl Account for Me {
    async fn whoami(&self, caller: Caller) -> Result<String, ()> {
        Ok(match caller.identity::<Identity>().as_deref() {
            Some(Identity::User(u)) => format!("user {u}"),
            Some(Identity::Certificate(c)) => format!("certificate {}", c.name().unwrap_or("?")),
            Some(Identity::Anonymous) => "anonymous".to_owned(),
            Some(_) => "other".to_owned(),
            None => "nobody".to_owned(),
        })
    }

    async fn echo_len(&self, data: String) -> Result<usize, ()> {
        Ok(data.len())
    }
}

/// What the realm saw: the identities it was asked for, and how many logouts ran.
#[derive(Clone)]
pub struct Seen {
    pub logins: Arc<Mutex<Vec<LoginRequest>>>,
    pub logouts: watch::Sender<u32>,
}

impl Seen {
    pub fn logouts(&self) -> u32 {
        *self.logouts.borrow()
    }

    /// Wait until `n` logouts have run.
    pub async fn wait_logouts(&self, n: u32) {
        let mut rx = self.logouts.subscribe();
        rx.wait_for(|v| *v >= n).await.unwrap();
    }

    pub fn identities(&self) -> Vec<Identity> {
        self.logins
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.identity.clone())
            .collect()
    }
}

/// A portal with user `alice` and a realm that hands out `Me` avatars and counts logouts.
pub fn portal(anonymous: bool) -> (Portal, Seen) {
    let seen = Seen {
        logins: Arc::default(),
        logouts: watch::channel(0).0,
    };
    let mut users = Verifiers::new();
    users
        .insert_password("alice", PASSWORD, ITERATIONS)
        .unwrap();
    let s = seen.clone();
    let portal = Portal::new(move |login: LoginRequest| {
        let s = s.clone();
        async move {
            let conn = login.connection.clone();
            s.logins.lock().unwrap().push(login);
            let logouts = s.logouts.clone();
            Ok(Avatar::new(AccountRef::new(Me)).on_logout(move || {
                // Hooks may use the connection (here: read its counters) without deadlocking.
                let _ = conn.stats();
                logouts.send_modify(|n| *n += 1);
            }))
        }
    })
    .verifiers(users)
    .allow_anonymous(anonymous)
    .allow_certificates(true)
    // The default configuration: unknown users' fake verifiers follow the store's real ones,
    // with no setting to keep in step.
    .config(LoginConfig::default());
    (portal, seen)
}

/// Which way bytes went through a [`Recorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Written,
}

pub type Log = Arc<Mutex<Vec<(Dir, Vec<u8>)>>>;

/// A transport that records every byte read and written.
pub struct Recorder<T> {
    pub inner: T,
    pub log: Log,
}

impl<T> Recorder<T> {
    pub fn new(inner: T) -> (Recorder<T>, Log) {
        let log = Log::default();
        (
            Recorder {
                inner,
                log: log.clone(),
            },
            log,
        )
    }
}

/// All bytes that went one way, in order.
pub fn bytes(log: &Log, dir: Dir) -> Vec<u8> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(d, _)| *d == dir)
        .flat_map(|(_, b)| b.iter().copied())
        .collect()
}

/// Split a recorded direction into frame bodies, skipping the hello frame.
pub fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 4 + len {
            break;
        }
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    // The first frame is the hello.
    out.into_iter().skip(1).collect()
}

impl<T: AsyncRead + Unpin> AsyncRead for Recorder<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = buf.filled()[before..].to_vec();
            if !new.is_empty() {
                self.log.lock().unwrap().push((Dir::Read, new));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Recorder<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.log
                .lock()
                .unwrap()
                .push((Dir::Written, buf[..n].to_vec()));
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pb-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A bound on how long a step that must not hang may take (never a sleep: it only fails a
/// hung test instead of letting it run forever).
pub const NO_HANG: Duration = Duration::from_secs(20);
