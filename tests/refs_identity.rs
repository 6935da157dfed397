//! References in both directions, nested anywhere, and their identity (Twisted's
//! `test_reference` and `test_result`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use pb::ObjectRef;

#[pb::remote]
pub trait Thing {
    async fn name(&self) -> Result<String, ()>;
}

pub struct Named(pub String);

impl Thing for Named {
    async fn name(&self) -> Result<String, ()> {
        Ok(self.0.clone())
    }
}

#[pb::copyable]
#[derive(Clone)]
pub struct Bundle {
    pub label: String,
    pub things: Vec<ThingRef>,
    pub maybe: Option<ThingRef>,
    pub by_name: BTreeMap<String, ThingRef>,
}

#[pb::remote]
pub trait Mirror {
    /// Gives the reference straight back.
    async fn bounce(&self, thing: ThingRef) -> Result<ThingRef, ()>;
    /// The server's own thing (the same object every time).
    async fn mine(&self) -> Result<ThingRef, ()>;
    /// Whether `thing` is the server's own thing, as an object.
    async fn is_mine(&self, thing: ThingRef) -> Result<bool, ()>;
    async fn same(&self, a: ThingRef, b: ThingRef) -> Result<bool, ()>;
    /// Calls every thing in the bundle and returns the bundle with a thing of its own added.
    async fn visit(&self, bundle: Bundle) -> Result<(Vec<String>, Bundle), ()>;
    /// Calls `thing` back while the caller waits.
    async fn call_back(&self, thing: ThingRef) -> Result<String, ()>;
}

struct MirrorImpl {
    mine: ThingRef,
    seen: Mutex<Vec<ThingRef>>,
}

impl Mirror for MirrorImpl {
    async fn bounce(&self, thing: ThingRef) -> Result<ThingRef, ()> {
        Ok(thing)
    }
    async fn mine(&self) -> Result<ThingRef, ()> {
        Ok(self.mine.clone())
    }
    async fn is_mine(&self, thing: ThingRef) -> Result<bool, ()> {
        Ok(thing.object_ref().is_local() && thing == self.mine)
    }
    async fn same(&self, a: ThingRef, b: ThingRef) -> Result<bool, ()> {
        Ok(a == b)
    }
    async fn visit(&self, mut bundle: Bundle) -> Result<(Vec<String>, Bundle), ()> {
        let mut names = Vec::new();
        for t in bundle
            .things
            .iter()
            .chain(bundle.maybe.iter())
            .chain(bundle.by_name.values())
        {
            names.push(t.name().await.map_err(|_| ())?);
        }
        self.seen
            .lock()
            .unwrap()
            .extend(bundle.things.iter().cloned());
        bundle.things.push(self.mine.clone());
        Ok((names, bundle))
    }
    async fn call_back(&self, thing: ThingRef) -> Result<String, ()> {
        thing.name().await.map_err(|_| ())
    }
}

fn mirror() -> MirrorRef {
    MirrorRef::new(MirrorImpl {
        mine: ThingRef::new(Named("server-thing".into())),
        seen: Mutex::new(Vec::new()),
    })
}

#[tokio::test]
async fn a_reference_sent_back_arrives_as_the_original_object() {
    let (_server, client) = common::memory_pair(mirror()).await;
    let m: MirrorRef = client.root();
    // The client's object goes to the server and comes back: it is the client's own object
    // again, local, not a proxy to a proxy.
    let local = ThingRef::new(Named("client-thing".into()));
    let back = m.bounce(local.clone()).await.unwrap();
    assert!(back.object_ref().is_local());
    assert_eq!(back, local);
    // The server's object comes to the client and goes back: the server sees its own object.
    let theirs = m.mine().await.unwrap();
    assert!(!theirs.object_ref().is_local());
    assert_eq!(m.is_mine(theirs.clone()).await, Ok(true));
    assert_eq!(m.is_mine(local).await, Ok(false));
}

#[tokio::test]
async fn two_references_to_one_remote_object_are_equal_and_hash_alike() {
    let (_server, client) = common::memory_pair(mirror()).await;
    let m: MirrorRef = client.root();
    let a = m.mine().await.unwrap();
    let b = m.mine().await.unwrap();
    assert_eq!(a, b);
    let set: HashSet<ThingRef> = [a.clone(), b.clone()].into_iter().collect();
    assert_eq!(set.len(), 1);
    // One import for both, received twice.
    assert_eq!(client.stats().tables.imported, 1);
    assert_eq!(m.same(a.clone(), b).await, Ok(true));
    let other = ThingRef::new(Named("x".into()));
    assert_eq!(m.same(a, other).await, Ok(false));
    // Untyped references obey the same rules.
    let ua: ObjectRef = m.mine().await.unwrap().into();
    let ub: ObjectRef = m.mine().await.unwrap().into();
    assert_eq!(ua, ub);
}

#[tokio::test]
async fn references_nested_in_fields_vectors_options_and_maps() {
    let (server, client) = common::memory_pair(mirror()).await;
    let m: MirrorRef = client.root();
    let a = ThingRef::new(Named("a".into()));
    let b = ThingRef::new(Named("b".into()));
    let c = ThingRef::new(Named("c".into()));
    let bundle = Bundle {
        label: "mixed".into(),
        things: vec![a.clone(), b.clone(), a.clone()],
        maybe: Some(c.clone()),
        by_name: BTreeMap::from([("b".to_string(), b.clone())]),
    };
    let (names, back) = m.visit(bundle).await.unwrap();
    assert_eq!(names, ["a", "b", "a", "c", "b"]);
    // Everything came home as the original objects, plus one of the server's.
    assert_eq!(back.things[..3], [a.clone(), b.clone(), a.clone()]);
    assert!(back.things[3] != a && !back.things[3].object_ref().is_local());
    assert_eq!(back.things[3].name().await, Ok("server-thing".into()));
    assert_eq!(back.maybe, Some(c));
    assert_eq!(back.by_name["b"], b);
    // The server keeps `a` and `b` (in `seen`) and dropped `c` after answering: its release
    // frees the client's export of `c`, and only two remain.
    let settled = common::settle(|| client.stats().tables.exported == 2).await;
    assert!(settled, "client exports {:?}", client.stats().tables);
    assert_eq!(server.stats().tables.imported, 2);
}

#[tokio::test]
async fn calls_in_both_directions_on_one_connection() {
    let (_server, client) = common::memory_pair(mirror()).await;
    let m: MirrorRef = client.root();
    // The server calls the client's object back while the client's call is in progress.
    let local = ThingRef::new(Named("called back".into()));
    assert_eq!(m.call_back(local).await, Ok("called back".into()));
    // The client calls the server's object.
    let theirs = m.mine().await.unwrap();
    assert_eq!(theirs.name().await, Ok("server-thing".into()));
    // And the server calls the client's object that it was given earlier, over TCP too.
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(mirror());
    let conn = pb::Client::connect(server.local_addr()).await.unwrap();
    let m: MirrorRef = conn.root();
    assert_eq!(
        m.call_back(ThingRef::new(Named("tcp".into()))).await,
        Ok("tcp".into())
    );
    conn.close().await;
    server.shutdown().await;
}
