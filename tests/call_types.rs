//! Typed calls with many argument and return types, and the callee's typed error arriving
//! typed, over the in-memory transport and over TCP.

mod common;

use std::collections::BTreeMap;

use common::*;
use pb::CallError;

async fn exercise(k: &KitchenRef) {
    assert_eq!(k.add(40, 2).await, Ok(42));
    assert_eq!(k.add(i64::MIN, 0).await, Ok(i64::MIN));
    assert_eq!(k.neg(-128).await, Ok(128));
    assert_eq!(k.shout("grüß dich".into()).await, Ok("GRÜSS DICH".into()));
    assert_eq!(k.reverse(vec![1, 2, 3, 255]).await, Ok(vec![255, 3, 2, 1]));
    assert_eq!(k.reverse(vec![]).await, Ok(vec![]));
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let mut rev = big.clone();
    rev.reverse();
    assert_eq!(k.reverse(big).await, Ok(rev));
    assert_eq!(
        k.sum(vec![u32::MAX, u32::MAX]).await,
        Ok(2 * u32::MAX as u64)
    );
    let shape = Shape {
        name: "tri".into(),
        points: vec![
            Point { x: 0, y: 0 },
            Point { x: 6, y: 0 },
            Point { x: 0, y: 9 },
        ],
        tags: BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2)]),
        kind: Kind::Weighted(0.5),
        note: Some("n".into()),
    };
    assert_eq!(
        k.centroid(shape.clone()).await,
        Ok(Some(Point { x: 2, y: 3 }))
    );
    let empty = Shape {
        points: vec![],
        note: None,
        ..shape
    };
    assert_eq!(k.centroid(empty).await, Ok(None));
    assert_eq!(k.flip(Kind::Open).await, Ok(Kind::Closed { filled: true }));
    assert_eq!(k.flip(Kind::Closed { filled: false }).await, Ok(Kind::Open));
    assert_eq!(k.flip(Kind::Weighted(1.5)).await, Ok(Kind::Weighted(-1.5)));
    assert_eq!(k.maybe(Some(21)).await, Ok(Some(42)));
    assert_eq!(k.maybe(None).await, Ok(None));
    assert_eq!(k.sqrt(16).await, Ok(4.0));
    assert_eq!(k.unit().await, Ok(()));
    // The callee's own error arrives typed.
    assert_eq!(
        k.sqrt(-4).await,
        Err(CallError::Remote(TestError::Negative(-4)))
    );
    match k.sqrt(-1).await {
        Err(CallError::Remote(TestError::Negative(v))) => assert_eq!(v, -1),
        other => panic!("expected the typed error, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_calls_in_memory() {
    let (_server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = client.root();
    exercise(&k).await;
}

#[tokio::test]
async fn typed_calls_over_tcp() {
    let (server, conn) = common::tcp_pair(KitchenRef::new(KitchenImpl::default())).await;
    exercise(&conn.root()).await;
    conn.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn local_references_are_called_directly() {
    // The same stub type works on a local object: calls go through the same dispatcher.
    let k = KitchenRef::new(KitchenImpl::default());
    exercise(&k).await;
    assert_eq!(k.whoami().await, Ok("local".into()));
}

#[tokio::test]
async fn dynamic_call_by_name() {
    let (_server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let root = client.root_ref();
    let v: i64 = root
        .call::<_, _, TestError>("add", &(1i64, 2i64))
        .await
        .unwrap();
    assert_eq!(v, 3);
    let e = root.call::<_, f64, TestError>("sqrt", &(-9i64,)).await;
    assert_eq!(e, Err(CallError::Remote(TestError::Negative(-9))));
}

#[tokio::test]
async fn caller_identity_is_filled_by_the_callee() {
    let (server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = client.root();
    assert_eq!(k.whoami().await, Ok(format!("connection {}", server.id())));
}

#[pb::remote]
pub trait Grüße {
    async fn grüß(&self, name: String) -> Result<String, TestError>;
}

struct GrüßeImpl;

impl Grüße for GrüßeImpl {
    async fn grüß(&self, name: String) -> Result<String, TestError> {
        Ok(format!("grüß {name}"))
    }
}

#[tokio::test]
async fn a_method_with_a_non_ascii_name_is_dispatched() {
    // Generated dispatchers match the name's bytes: a non-ASCII name must still match.
    let (_server, client) = memory_pair(GrüßeRef::new(GrüßeImpl)).await;
    let g: GrüßeRef = client.root();
    assert_eq!(g.grüß("dich".into()).await, Ok("grüß dich".to_string()));
}
