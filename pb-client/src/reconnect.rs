//! A client that stays connected: it reconnects with exponential backoff and jitter (which only
//! a session that lasted resets, see [`Backoff`]), runs a hook after every connect (to log in
//! again, fetch the root, subscribe...), and publishes its state so that applications can show
//! it or wait for it.
//!
//! References obtained on an old connection do not move to the new one: they fail at once with
//! `CallError::Disconnected`, and the application gets fresh ones from the new session.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pb_core::{Connection, ObjectRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{ClientBuilder, Session};

/// Where a reconnecting client is.
#[derive(Clone)]
pub enum ClientState<S> {
    /// Dialing (the first time, or again after a back-off).
    Connecting {
        /// How many attempts failed since the last healthy session (see [`Backoff`]).
        attempt: u32,
    },
    /// Connected, and the hook succeeded: here is the session it made.
    Connected {
        /// The connection.
        connection: Connection,
        /// What the hook returned for this connection (a logged-in avatar, say).
        session: S,
        /// How many sessions there have been, this one included.
        generation: u64,
    },
    /// Waiting before the next attempt.
    BackingOff {
        /// How many attempts failed since the last healthy session (see [`Backoff`]): a
        /// session lost before `Backoff::healthy_after` counts as one.
        attempt: u32,
        /// How long it waits.
        delay: Duration,
        /// Why the last attempt failed.
        reason: String,
    },
    /// Stopped by [`Reconnecting::stop`].
    Stopped,
}

impl<S> std::fmt::Debug for ClientState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientState::Connecting { attempt } => write!(f, "Connecting(attempt {attempt})"),
            ClientState::Connected {
                connection,
                generation,
                ..
            } => {
                write!(
                    f,
                    "Connected(connection {}, session {generation})",
                    connection.id()
                )
            }
            ClientState::BackingOff {
                attempt,
                delay,
                reason,
            } => {
                write!(f, "BackingOff(attempt {attempt}, {delay:?}: {reason})")
            }
            ClientState::Stopped => f.write_str("Stopped"),
        }
    }
}

/// How long to wait between attempts: `initial`, doubling up to `max`, each wait drawn at random
/// between half and all of it (so that many clients do not come back in step).
///
/// A failed attempt is a dial, handshake or session hook that failed, or a session lost before
/// it lasted `healthy_after`: a server that takes every session and drops it at once (one
/// restarting in a crash loop, a proxy that cuts each session, a kick after login) is backed
/// off from as one that refuses connections is. Only losing a session that lasted
/// `healthy_after` starts the waits again from `initial`.
///
/// ```
/// # use std::time::Duration;
/// let backoff = pb::Backoff {
///     initial: Duration::from_millis(50),
///     max: Duration::from_secs(10),
///     ..pb::Backoff::default()
/// };
/// assert_eq!(backoff.healthy_after, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first wait (default 100 ms).
    pub initial: Duration,
    /// The longest wait (default 30 s).
    pub max: Duration,
    /// How long a session must last for its loss to start the waits again from `initial`
    /// (default 30 s); a session lost sooner counts as one more failed attempt.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after `attempt` failures (1-based), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let full = exp.min(self.max);
        // std's RandomState is seeded randomly per instance: enough for jitter.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        jittered(full, r)
    }
}

/// `full` scaled by a factor between 0.5 and 1 that `r` draws uniformly.
fn jittered(full: Duration, r: u64) -> Duration {
    // Half is certain; the other half is drawn. `mul_f64` of a whole `Duration::MAX` by a
    // factor that rounds to 1 would overflow, half of it cannot.
    let half = full / 2;
    let drawn = (full - half).mul_f64(r as f64 / u64::MAX as f64);
    half.saturating_add(drawn).min(full)
}

type Hook<S> =
    Arc<dyn Fn(Session) -> Pin<Box<dyn Future<Output = Result<S, String>> + Send>> + Send + Sync>;

/// A client connection that is re-established whenever it is lost.
pub struct Reconnecting<S> {
    state: watch::Receiver<ClientState<S>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl<S: Clone + Send + Sync + 'static> Reconnecting<S> {
    /// Start connecting to `addr` with `builder`'s settings (TLS, limits, our root); after each
    /// connect, `hook` turns the new [`Session`] into the application's session, typically by
    /// logging in (return an error to treat the attempt as failed and back off).
    pub fn start<F, Fut>(
        builder: ClientBuilder,
        addr: String,
        backoff: Backoff,
        hook: F,
    ) -> Reconnecting<S>
    where
        F: Fn(Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, String>> + Send + 'static,
    {
        let hook: Hook<S> = Arc::new(move |c| Box::pin(hook(c)));
        let (state_tx, state) = watch::channel(ClientState::Connecting { attempt: 0 });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(builder, addr, backoff, hook, state_tx, stop_rx));
        Reconnecting { state, stop, task }
    }

    /// The current state.
    pub fn state(&self) -> ClientState<S> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<ClientState<S>> {
        self.state.clone()
    }

    /// The current session, waiting for one if there is none; `None` once stopped.
    pub async fn session(&self) -> Option<(Connection, S)> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| matches!(s, ClientState::Connected { .. } | ClientState::Stopped))
            .await
            .ok()?;
        match &*state {
            ClientState::Connected {
                connection,
                session,
                ..
            } => Some((connection.clone(), session.clone())),
            _ => None,
        }
    }

    /// Stop reconnecting and close the current connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run<S: Clone + Send + Sync + 'static>(
    builder: ClientBuilder,
    addr: String,
    backoff: Backoff,
    hook: Hook<S>,
    state: watch::Sender<ClientState<S>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    let mut generation = 0u64;
    loop {
        state.send_replace(ClientState::Connecting { attempt });
        let result = tokio::select! {
            r = connect_once(&builder, &addr, &hook) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match result {
            Ok((connection, session)) => {
                generation += 1;
                tracing::info!(%addr, connection = connection.id(), generation, "connected");
                state.send_replace(ClientState::Connected {
                    connection: connection.clone(),
                    session,
                    generation,
                });
                let began = tokio::time::Instant::now();
                let stopped = tokio::select! {
                    _ = connection.closed() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopped {
                    connection.close().await;
                    break;
                }
                // A session lost soon after it began is no sign that the server is back: it
                // counts as one more failed attempt, so that a server that drops every
                // session at once is not redialed (and its hook, a login, run again) every
                // `initial` for ever.
                let lasted = began.elapsed();
                attempt = if lasted >= backoff.healthy_after {
                    1
                } else {
                    attempt.saturating_add(1)
                };
                tracing::info!(%addr, reason = ?connection.close_reason(), ?lasted, attempt, "connection lost; reconnecting");
                let delay = backoff.delay(attempt);
                state.send_replace(ClientState::BackingOff {
                    attempt,
                    delay,
                    reason: "connection lost".into(),
                });
                if sleep_or_stop(delay, &mut stop).await {
                    break;
                }
            }
            Err(reason) => {
                attempt = attempt.saturating_add(1);
                let delay = backoff.delay(attempt);
                tracing::debug!(%addr, attempt, ?delay, %reason, "connect failed; backing off");
                state.send_replace(ClientState::BackingOff {
                    attempt,
                    delay,
                    reason,
                });
                if sleep_or_stop(delay, &mut stop).await {
                    break;
                }
            }
        }
    }
    state.send_replace(ClientState::Stopped);
}

async fn connect_once<S>(
    builder: &ClientBuilder,
    addr: &str,
    hook: &Hook<S>,
) -> Result<(Connection, S), String> {
    let session = builder.clone().open(addr).await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    })?;
    // Aborted unless the hook succeeds: when it fails, and when this future is dropped while
    // the hook runs (`stop`), for a connection stays open while the peer keeps it, whatever
    // becomes of its handles.
    let mut opened = AbortUnlessKept {
        connection: session.connection().clone(),
        kept: false,
    };
    let session = hook(session).await?;
    opened.kept = true;
    Ok((opened.connection.clone(), session))
}

/// A connection aborted when this is dropped, unless it was kept.
struct AbortUnlessKept {
    connection: Connection,
    kept: bool,
}

impl Drop for AbortUnlessKept {
    fn drop(&mut self) {
        if !self.kept {
            self.connection.abort();
        }
    }
}

/// Sleep for `delay`; true if stopped meanwhile.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// A hook for servers without login: the session is the server's root.
pub async fn root_session(session: Session) -> Result<ObjectRef, String> {
    Ok(session.connection().root_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spans_half_to_all_of_the_wait_and_never_overflows() {
        let full = Duration::from_secs(8);
        assert_eq!(jittered(full, 0), Duration::from_secs(4));
        assert_eq!(jittered(full, u64::MAX), full);
        // The longest wait a `Backoff` can be given, at both ends of the draw.
        assert_eq!(jittered(Duration::MAX, u64::MAX), Duration::MAX);
        assert!(jittered(Duration::MAX, 0) >= Duration::MAX / 2);
    }
}
