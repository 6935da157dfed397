//! Symmetry: a client passes a reference to its own object; the server keeps it and calls it
//! back later on the same connection.

mod common;

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

#[pb::remote]
pub trait Listener {
    async fn notify(&self, event: String) -> Result<(), ()>;
}

#[pb::remote]
pub trait Hub {
    async fn subscribe(&self, listener: ListenerRef) -> Result<usize, ()>;
    async fn publish(&self, event: String) -> Result<usize, ()>;
}

#[derive(Default)]
struct HubImpl {
    listeners: Mutex<Vec<ListenerRef>>,
}

impl Hub for HubImpl {
    async fn subscribe(&self, listener: ListenerRef) -> Result<usize, ()> {
        let mut l = self.listeners.lock().unwrap();
        l.push(listener);
        Ok(l.len())
    }
    async fn publish(&self, event: String) -> Result<usize, ()> {
        let listeners = self.listeners.lock().unwrap().clone();
        let mut delivered = 0;
        for l in listeners {
            if l.notify(event.clone()).await.is_ok() {
                delivered += 1;
            }
        }
        Ok(delivered)
    }
}

struct Collect(mpsc::UnboundedSender<String>);

impl Listener for Collect {
    async fn notify(&self, event: String) -> Result<(), ()> {
        self.0.send(event).map_err(|_| ())
    }
}

#[tokio::test]
async fn server_calls_the_clients_listener_back_over_tcp() {
    let hub = Arc::new(HubImpl::default());
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(HubRef::from_arc(hub.clone()));
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let c1 = pb::Client::connect(server.local_addr()).await.unwrap();
    let c2 = pb::Client::connect(server.local_addr()).await.unwrap();
    let h1: HubRef = c1.root();
    let h2: HubRef = c2.root();
    assert_eq!(h1.subscribe(ListenerRef::new(Collect(tx1))).await, Ok(1));
    assert_eq!(h2.subscribe(ListenerRef::new(Collect(tx2))).await, Ok(2));
    // The server holds one reference from each client.
    assert_eq!(c1.stats().tables.exported, 1);
    // Later, a publish from one client reaches both listeners through the server.
    assert_eq!(h2.publish("hello".into()).await, Ok(2));
    assert_eq!(rx1.recv().await.as_deref(), Some("hello"));
    assert_eq!(rx2.recv().await.as_deref(), Some("hello"));
    // And the server can call back on its own initiative.
    let kept = hub.listeners.lock().unwrap().clone();
    kept[0].notify("direct".into()).await.unwrap();
    assert_eq!(rx1.recv().await.as_deref(), Some("direct"));
    drop(kept);
    c1.close().await;
    c2.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_reference_does_not_leak_while_the_connection_lives() {
    let hub = Arc::new(HubImpl::default());
    let (server, client) = common::memory_pair(HubRef::from_arc(hub.clone())).await;
    let h: HubRef = client.root();
    for _ in 0..50 {
        let (tx, _rx) = mpsc::unbounded_channel();
        h.subscribe(ListenerRef::new(Collect(tx))).await.unwrap();
    }
    assert_eq!(client.stats().tables.exported, 50);
    assert_eq!(server.stats().tables.imported, 50);
    // The server forgets them: releases go back and the client's table empties.
    hub.listeners.lock().unwrap().clear();
    let exported = common::settle(|| client.stats().tables.exported == 0).await;
    assert!(
        exported,
        "client still exports {}",
        client.stats().tables.exported
    );
    assert_eq!(server.stats().tables.imported, 0);
}

/// The server's calls run at most one at a time (`max_in_flight_calls = 1`), and each calls the
/// client back before it answers. Six arrive together, within the client's call window (the
/// client cannot know the cap): the others wait for the running one to end, which waits for the
/// client's answer. That answer must still be read, and all six end.
#[tokio::test(start_paused = true)]
async fn calls_held_at_the_cap_do_not_stop_the_answers_to_the_running_one_s_callbacks() {
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 1;
    config.limits.max_violations = 0;
    let hub = Arc::new(HubImpl::default());
    let (server, client) = common::memory_pair_with(HubRef::from_arc(hub.clone()), config).await;
    let h: HubRef = client.root();
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert_eq!(h.subscribe(ListenerRef::new(Collect(tx))).await, Ok(1));
    let publishes: Vec<_> = (0..6)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { h.publish(format!("event {i}")).await })
        })
        .collect();
    let minute = std::time::Duration::from_secs(60);
    let mut delivered = Vec::new();
    for p in publishes {
        delivered.push(tokio::time::timeout(minute, p).await.map(|r| r.unwrap()));
    }
    let mut events = 0;
    while rx.try_recv().is_ok() {
        events += 1;
    }
    assert!(
        delivered.iter().all(|d| matches!(d, Ok(Ok(1)))),
        "{delivered:?} ({events} callbacks reached the client, {} calls running on the server)",
        server.stats().tables.in_flight_calls
    );
    assert!(!client.is_closed() && !server.is_closed());
}
