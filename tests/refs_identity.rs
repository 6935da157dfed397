//! References in both directions, nested anywhere, and their identity (Twisted's
//! `test_reference` and `test_result`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};
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

/// Hash `v` with one fixed hasher state, so that equal values must hash alike.
fn hash_of(state: &RandomState, v: &impl Hash) -> u64 {
    state.hash_one(v)
}

/// Equality is identity of the route calls take, as `ObjectRef`'s docs say: a local object by
/// its allocation, a remote reference by (connection, id); and `Hash` agrees with `Eq`.
#[tokio::test]
async fn equality_is_identity_of_the_route() {
    let state = RandomState::new();
    let same = |a: &ThingRef, b: &ThingRef| {
        assert_eq!(a, b);
        assert_eq!(hash_of(&state, a), hash_of(&state, b), "{a:?} and {b:?}");
        let (ua, ub): (ObjectRef, ObjectRef) = (a.clone().into(), b.clone().into());
        assert_eq!(ua, ub);
        assert_eq!(hash_of(&state, &ua), hash_of(&state, &ub));
    };
    let differ = |a: &ThingRef, b: &ThingRef| {
        assert_ne!(a, b);
        let set: HashSet<ThingRef> = [a.clone(), b.clone()].into_iter().collect();
        assert_eq!(set.len(), 2, "{a:?} and {b:?}");
        assert_ne!(ObjectRef::from(a.clone()), ObjectRef::from(b.clone()));
    };

    // Local objects: by the reference's allocation. Clones are one object, and so are
    // untyped references made from one `Arc<dyn Dispatch>`; references made separately are
    // two, whatever their state, even when a typed `from_arc` wraps one `Arc` twice.
    let shared = std::sync::Arc::new(Named("shared".into()));
    let local = ThingRef::from_arc(shared.clone());
    same(&local, &local.clone());
    differ(&local, &ThingRef::new(Named("shared".into())));
    differ(&local, &ThingRef::from_arc(shared));
    let dispatch: std::sync::Arc<dyn pb::dispatch::Dispatch> =
        std::sync::Arc::new(ServeThing::new(Named("untyped".into())));
    assert_eq!(
        ObjectRef::from_arc(dispatch.clone()),
        ObjectRef::from_arc(dispatch)
    );

    // One server object, reached over two connections to the same server.
    let server_side = mirror();
    let (_s1, c1) = common::memory_pair(server_side.clone()).await;
    let (_s2, c2) = common::memory_pair(server_side).await;
    let (m1, m2) = (c1.root::<MirrorRef>(), c2.root::<MirrorRef>());

    // A local object that comes home, over whichever connection it went out on, is the local
    // object again.
    let home1 = m1.bounce(local.clone()).await.unwrap();
    let home2 = m2.bounce(local.clone()).await.unwrap();
    assert!(home1.object_ref().is_local() && home2.object_ref().is_local());
    same(&home1, &local);
    same(&home2, &local);

    // Remote references, by (connection, id): received twice over one connection, one
    // reference; received over two connections, two references that differ (no node identity
    // tells the receiver that both name one object).
    let a1 = m1.mine().await.unwrap();
    let a1_again = m1.mine().await.unwrap();
    let a2 = m2.mine().await.unwrap();
    same(&a1, &a1_again);
    differ(&a1, &a2);
    // Both reach the same object, though.
    assert_eq!(a1.name().await, a2.name().await);
    // A remote reference never equals a local object.
    differ(&a1, &local);

    // The server's object goes home over the connection it came on: the server's own object.
    assert_eq!(m1.is_mine(a1.clone()).await, Ok(true));
    // Over the other connection it goes by another route (the server reaches it through this
    // process's forward), so the server sees a remote reference, not its own object...
    assert_eq!(m2.is_mine(a1.clone()).await, Ok(false));
    assert_eq!(m2.same(a1.clone(), a2.clone()).await, Ok(false));
    // ...and that forward, sent back here, is this process's own reference again.
    let back = m2.bounce(a1.clone()).await.unwrap();
    same(&back, &a1);
    differ(&back, &a2);
}
