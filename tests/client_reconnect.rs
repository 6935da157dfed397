//! A client reconnects after the server restarts: its state is visible as events, new calls
//! succeed, and references from the old connection fail clearly instead of hanging. Sessions
//! lost at once count as failed attempts, so their server is backed off from.

mod common;

use std::time::Duration;

use common::*;
use pb::{Backoff, CallError, ClientState, Reconnecting};

#[tokio::test]
async fn reconnects_after_a_server_restart() {
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::new(KitchenImpl::default()));
    let addr = server.local_addr();
    // Real sockets, so real time: keep the waits tiny (the test never sleeps itself; it waits
    // on state changes).
    let backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        ..Backoff::default()
    };
    // The hook runs after every connect: here it fetches the typed root (a login would go here).
    let client = Reconnecting::start(
        pb::Client::builder(),
        addr.to_string(),
        backoff,
        |session| async move {
            let k: KitchenRef = session.connection().root();
            k.add(0, 0).await.map_err(|e| e.to_string())?;
            Ok(k)
        },
    );
    let mut states = client.watch();
    let (first_conn, k1) = client.session().await.unwrap();
    assert_eq!(k1.add(1, 2).await, Ok(3));
    assert!(matches!(
        client.state(),
        ClientState::Connected { generation: 1, .. }
    ));

    // The server goes away: the client backs off and keeps trying.
    server.shutdown().await;
    first_conn.closed().await;
    states
        .wait_for(|s| matches!(s, ClientState::BackingOff { .. }))
        .await
        .unwrap();
    // Old references fail at once with a clear error.
    assert_eq!(k1.add(1, 2).await, Err(CallError::Disconnected));
    // While nothing listens, attempts fail and the wait grows.
    states
        .wait_for(|s| matches!(s, ClientState::BackingOff { attempt, .. } if *attempt >= 2))
        .await
        .unwrap();

    // The server comes back on the same address.
    let server = pb::Server::bind(addr)
        .await
        .unwrap()
        .serve(KitchenRef::new(KitchenImpl::default()));
    states
        .wait_for(|s| matches!(s, ClientState::Connected { generation: 2, .. }))
        .await
        .unwrap();
    let (second_conn, k2) = client.session().await.unwrap();
    assert_ne!(second_conn.id(), first_conn.id());
    assert_eq!(k2.add(2, 2).await, Ok(4));
    // The old reference still fails: it belongs to the old connection.
    assert_eq!(k1.add(1, 2).await, Err(CallError::Disconnected));

    client.stop().await;
    second_conn.closed().await;
    server.shutdown().await;
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    let b = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        ..Backoff::default()
    };
    for attempt in 1..=10u32 {
        let full = (Duration::from_millis(100) * 2u32.pow(attempt - 1)).min(Duration::from_secs(2));
        let d = b.delay(attempt);
        assert!(
            d >= full / 2 && d <= full,
            "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
            full / 2
        );
    }
    // Jitter: not every draw is the same.
    let draws: std::collections::HashSet<Duration> = (0..20).map(|_| b.delay(5)).collect();
    assert!(draws.len() > 1);
}

#[tokio::test]
async fn logs_in_again_after_reconnecting() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let logins = Arc::new(AtomicUsize::new(0));
    let portal = {
        let logins = logins.clone();
        pb::Portal::new(move |_login: pb::LoginRequest| {
            let logins = logins.clone();
            async move {
                logins.fetch_add(1, Ordering::SeqCst);
                Ok(pb::Avatar::new(KitchenRef::new(KitchenImpl::default())))
            }
        })
        .allow_anonymous(true)
    };
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve_portal(portal.clone());
    let addr = server.local_addr();
    let backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        ..Backoff::default()
    };
    // The hook logs in on every new connection.
    let client = Reconnecting::start(
        pb::Client::builder(),
        addr.to_string(),
        backoff,
        |session| async move {
            session
                .login_anonymous::<KitchenRef>()
                .await
                .map_err(|e| e.to_string())
        },
    );
    let (_, avatar) = client.session().await.unwrap();
    assert_eq!(avatar.add(1, 1).await, Ok(2));
    server.shutdown().await;
    let server = pb::Server::bind(addr).await.unwrap().serve_portal(portal);
    let mut states = client.watch();
    states
        .wait_for(|s| matches!(s, ClientState::Connected { generation: 2, .. }))
        .await
        .unwrap();
    let (_, again) = client.session().await.unwrap();
    assert_eq!(again.add(2, 2).await, Ok(4));
    assert_eq!(
        avatar.add(1, 1).await,
        Err(CallError::Disconnected),
        "the old avatar fails clearly"
    );
    assert_eq!(logins.load(Ordering::SeqCst), 2, "one login per connection");
    client.stop().await;
    server.shutdown().await;
}

/// `stop` while the session hook runs (a login the server is slow to answer) closes the
/// connection the hook was given: it used to stay open, answering keep-alives and holding its
/// server slot, with the client `Stopped`.
#[tokio::test]
async fn stop_while_the_hook_runs_closes_its_connection() {
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::new(KitchenImpl::default()));
    let in_hook = std::sync::Arc::new(tokio::sync::Notify::new());
    let client = Reconnecting::start(
        pb::Client::builder(),
        server.local_addr().to_string(),
        Backoff::default(),
        {
            let in_hook = in_hook.clone();
            move |session| {
                let in_hook = in_hook.clone();
                async move {
                    let k: KitchenRef = session.connection().root();
                    in_hook.notify_one();
                    k.hang().await.map_err(|e| e.to_string())?;
                    Ok(k)
                }
            }
        },
    );
    in_hook.notified().await;
    assert!(settle(|| server.connections().len() == 1).await);
    let served = server.connections().pop().unwrap();
    let states = client.watch();
    client.stop().await;
    assert!(matches!(*states.borrow(), ClientState::Stopped));
    // Closed by the client, seen by the server: no sleep, a bound only against a hang.
    tokio::time::timeout(Duration::from_secs(20), served.closed())
        .await
        .expect("the hook's connection closed");
    assert!(settle(|| server.connections().is_empty()).await);
}

/// A server that takes each session and drops it at once (one in a crash loop, a proxy that
/// cuts each session, a kick after login) is backed off from: each such session counts as a
/// failed attempt, and the waits double. A session that lasts `healthy_after` starts them
/// again from `initial`.
#[tokio::test(start_paused = true)]
async fn sessions_lost_at_once_are_backed_off_from_and_a_healthy_one_resets_the_waits() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    // How long the server keeps each session it takes, in seconds (virtual time).
    let keep = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn({
        let (accepted, keep) = (accepted.clone(), keep.clone());
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let keep = Duration::from_secs(keep.load(Ordering::SeqCst));
                let root = KitchenRef::new(KitchenImpl::default());
                tokio::spawn(async move {
                    let conn = pb::Connection::establish(
                        stream,
                        &pb::Config::default(),
                        pb::Side::Server,
                        Some(root.into()),
                        None,
                    )
                    .await;
                    if let Ok(conn) = conn {
                        tokio::time::sleep(keep).await;
                        conn.close().await;
                    }
                });
            }
        }
    });
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
        ..Backoff::default()
    };
    let client = Reconnecting::start(
        pb::Client::builder(),
        addr.to_string(),
        backoff,
        |session| async move { Ok::<_, String>(session.connection().root_ref()) },
    );
    let mut states = client.watch();
    // Virtual time: a bound that fails a regression rather than hanging, never a measure.
    let patience = Duration::from_secs(600);
    // (A watch shows the latest state only: the server's count says which session ended.)
    let lost_after = |n: usize| {
        let accepted = accepted.clone();
        move |s: &ClientState<pb::ObjectRef>| {
            matches!(s, ClientState::BackingOff { .. }) && accepted.load(Ordering::SeqCst) >= n
        }
    };
    let started = tokio::time::Instant::now();
    let state = tokio::time::timeout(patience, states.wait_for(lost_after(8)))
        .await
        .expect("8 sessions taken and lost")
        .unwrap()
        .clone();
    let ClientState::BackingOff { attempt, delay, .. } = state else {
        unreachable!()
    };
    assert!(
        attempt >= 8,
        "after 8 sessions lost at once, attempt {attempt} (a wait of {delay:?})"
    );
    // At least half the longest wait: 0.1 s doubled 7 times is past `max`.
    assert!(delay >= backoff.max / 2, "{delay:?}");
    // The waits before sessions 2 to 8 were at least half of 0.1, 0.2, ... 6.4 s.
    assert!(started.elapsed() >= Duration::from_millis(6_350));

    // The server now keeps its sessions for a minute: the next one lost is healthy.
    keep.store(60, Ordering::SeqCst);
    let state = tokio::time::timeout(patience, states.wait_for(lost_after(9)))
        .await
        .expect("a ninth session taken, kept and lost")
        .unwrap()
        .clone();
    assert!(
        matches!(state, ClientState::BackingOff { attempt: 1, .. }),
        "{state:?}"
    );
    client.stop().await;
    server.abort();
}
