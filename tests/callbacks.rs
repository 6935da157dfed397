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
