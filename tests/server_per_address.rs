//! One source address cannot take every connection slot: a server counts connections per
//! address (an IPv4 address, an IPv6 /64) and closes those over its limit, while other
//! addresses still get in. Uses two loopback addresses, 127.0.0.1 and 127.0.0.2.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{KitchenImpl, KitchenRef};
use pb::{Config, Connection, Side};
use tokio::net::TcpSocket;

/// A bound so that a regression fails instead of hanging; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// A client connection to `server` from the local address `from`.
async fn connect_from(from: &str, server: SocketAddr) -> Result<Connection, pb::ConnectError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    let stream = socket.connect(server).await?;
    Connection::establish(stream, &Config::default(), Side::Client, None, None).await
}

async fn works(conn: &Connection) -> bool {
    let kitchen: KitchenRef = conn.root();
    matches!(
        tokio::time::timeout(PATIENCE, kitchen.add(1, 2)).await,
        Ok(Ok(3))
    )
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let server = pb::Server::builder()
        .max_connections(10)
        .max_connections_per_address(2)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::new(KitchenImpl::default()));
    let addr = server.local_addr();
    let first = connect_from("127.0.0.1", addr).await.unwrap();
    let second = connect_from("127.0.0.1", addr).await.unwrap();
    assert!(works(&first).await && works(&second).await);
    // A third from the same address is closed at once.
    let third = tokio::time::timeout(PATIENCE, connect_from("127.0.0.1", addr))
        .await
        .expect("the server answers or closes");
    assert!(
        third.is_err() || !works(third.as_ref().unwrap()).await,
        "a third connection from one address was served"
    );
    // Another address still gets in.
    let other = connect_from("127.0.0.2", addr).await.unwrap();
    assert!(works(&other).await);
    // Once one of the first address's connections ends, that address gets a slot again
    // (retried until the server has noticed the close).
    first.abort();
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(c) = connect_from("127.0.0.1", addr).await
                && works(&c).await
            {
                return c;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a slot is free again once a connection ends");
    assert!(works(&again).await);
    drop(second);
}

#[tokio::test]
async fn by_default_one_address_leaves_room_for_others() {
    // 65 slots in all; one address fills what the default per-address limit (64) allows,
    // and another still gets the last slot.
    let server = pb::Server::builder()
        .max_connections(65)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::new(KitchenImpl::default()));
    let addr = server.local_addr();
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(connect_from("127.0.0.1", addr).await.unwrap());
    }
    let over = tokio::time::timeout(PATIENCE, connect_from("127.0.0.1", addr))
        .await
        .expect("the server answers or closes");
    assert!(
        over.is_err() || !works(over.as_ref().unwrap()).await,
        "a 65th connection from one address was served"
    );
    let other = connect_from("127.0.0.2", addr).await.unwrap();
    assert!(works(&other).await, "another address found no slot");
    assert!(works(&held[0]).await);
}
