//! A client reconnects after the server restarts: its state is visible as events, new calls
//! succeed, and references from the old connection fail clearly instead of hanging.

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
