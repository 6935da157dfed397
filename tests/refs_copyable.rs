//! Copyable state of nested types arrives intact (Twisted's `test_copy`), and a per-peer state
//! hook changes what each peer sees (`getStateToCopyFor`).

mod common;

use std::collections::BTreeMap;

use pb::Connection;

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Inner {
    pub id: u32,
    pub weights: Vec<f32>,
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Active { since: u64 },
    Retired(String),
    Unknown,
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub inner: Inner,
    pub history: Vec<Status>,
    pub index: BTreeMap<u16, Option<Inner>>,
    pub blob: Vec<u8>,
    pub pair: (i8, char),
}

/// A user record whose secret only its owner may see.
#[pb::copyable(state_for = Account::state_for)]
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub owner: String,
    pub balance: i64,
    pub secret: Option<String>,
}

/// Who the peer on a connection is, as the application recorded it.
pub struct User(pub String);

impl Account {
    fn state_for(&self, peer: Option<&Connection>) -> Account {
        let viewer = peer.and_then(|c| c.identity::<User>());
        match viewer {
            // In-process, or the owner: everything.
            None if peer.is_none() => self.clone(),
            Some(u) if u.0 == self.owner => self.clone(),
            // Anyone else sees no secret and no balance.
            _ => Account {
                owner: self.owner.clone(),
                balance: 0,
                secret: None,
            },
        }
    }
}

#[pb::remote]
pub trait Archive {
    async fn echo(&self, r: Record) -> Result<Record, ()>;
    async fn account(&self) -> Result<Account, ()>;
}

struct ArchiveImpl;

impl Archive for ArchiveImpl {
    async fn echo(&self, r: Record) -> Result<Record, ()> {
        Ok(r)
    }
    async fn account(&self) -> Result<Account, ()> {
        Ok(Account {
            owner: "alice".into(),
            balance: 100,
            secret: Some("hunter2".into()),
        })
    }
}

fn record() -> Record {
    Record {
        name: "ünïcode ✓".into(),
        inner: Inner {
            id: 7,
            weights: vec![0.5, -1.25, f32::MAX],
        },
        history: vec![
            Status::Active { since: 1 },
            Status::Retired("x".into()),
            Status::Unknown,
        ],
        index: BTreeMap::from([
            (
                1,
                Some(Inner {
                    id: 1,
                    weights: vec![],
                }),
            ),
            (2, None),
        ]),
        blob: (0..=255).collect(),
        pair: (-128, '🦀'),
    }
}

#[tokio::test]
async fn nested_copyable_state_arrives_intact() {
    let (_server, client) = common::memory_pair(ArchiveRef::new(ArchiveImpl)).await;
    let a: ArchiveRef = client.root();
    assert_eq!(a.echo(record()).await, Ok(record()));
}

#[tokio::test]
async fn the_state_hook_changes_what_each_peer_sees() {
    let (alice_server, alice) = common::memory_pair(ArchiveRef::new(ArchiveImpl)).await;
    let (bob_server, bob) = common::memory_pair(ArchiveRef::new(ArchiveImpl)).await;
    // The server side of each connection knows who is on the other end (as login would set).
    alice_server.set_identity(User("alice".into()));
    bob_server.set_identity(User("bob".into()));
    let full = Account {
        owner: "alice".into(),
        balance: 100,
        secret: Some("hunter2".into()),
    };
    let seen_by_alice = alice.root::<ArchiveRef>().account().await.unwrap();
    let seen_by_bob = bob.root::<ArchiveRef>().account().await.unwrap();
    assert_eq!(seen_by_alice, full);
    assert_eq!(
        seen_by_bob,
        Account {
            owner: "alice".into(),
            balance: 0,
            secret: None
        }
    );
    // In-process, no peer: the full state.
    assert_eq!(ArchiveRef::new(ArchiveImpl).account().await.unwrap(), full);
}

/// A type that derives serde's traits itself, marked with the derive.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, pb::Copyable)]
pub struct Derived {
    #[serde(rename = "n")]
    pub number: u32,
    pub label: String,
}

#[pb::remote]
trait Mirror {
    async fn mirror(&self, d: Derived) -> Derived;
}

struct MirrorImpl;

impl Mirror for MirrorImpl {
    async fn mirror(&self, d: Derived) -> Derived {
        Derived {
            number: d.number * 2,
            label: d.label,
        }
    }
}

#[tokio::test]
async fn a_type_with_the_copyable_derive_crosses_by_value() {
    fn copyable<T: pb::Copyable>() {}
    copyable::<Derived>();
    let (_server, client) = common::memory_pair(MirrorRef::new(MirrorImpl)).await;
    let mirror: MirrorRef = client.root();
    let back = mirror
        .mirror(Derived {
            number: 21,
            label: "x".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        back,
        Derived {
            number: 42,
            label: "x".into()
        }
    );
}

/// A generic copyable type, with zero-copy byte fields beside its parameter.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged<T> {
    pub tag: T,
    pub data: Vec<u8>,
    pub blob: bytes::Bytes,
}

/// The derive on a generic type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, pb::Copyable)]
pub struct Pair<A, B>(pub A, pub B);

#[pb::remote]
trait Labels {
    async fn label(&self, t: Tagged<u32>) -> Tagged<String>;
    async fn swap(&self, p: Pair<u8, String>) -> Pair<String, u8>;
}

struct LabelsImpl;

impl Labels for LabelsImpl {
    async fn label(&self, t: Tagged<u32>) -> Tagged<String> {
        Tagged {
            tag: format!("#{}", t.tag),
            data: t.data,
            blob: t.blob,
        }
    }
    async fn swap(&self, p: Pair<u8, String>) -> Pair<String, u8> {
        Pair(p.1, p.0)
    }
}

#[tokio::test]
async fn generic_copyable_types_cross_by_value_for_the_parameters_they_are_used_with() {
    fn copyable<T: pb::Copyable>() {}
    copyable::<Tagged<u32>>();
    copyable::<Tagged<Vec<String>>>();
    copyable::<Pair<u8, String>>();
    let (_server, client) = common::memory_pair(LabelsRef::new(LabelsImpl)).await;
    let labels: LabelsRef = client.root();
    let blob = bytes::Bytes::from(vec![7u8; 70_000]);
    let back = labels
        .label(Tagged {
            tag: 42,
            data: vec![1, 2, 3],
            blob: blob.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        back,
        Tagged {
            tag: "#42".to_string(),
            data: vec![1, 2, 3],
            blob
        }
    );
    assert_eq!(
        labels.swap(Pair(9, "nine".into())).await.unwrap(),
        Pair("nine".to_string(), 9)
    );
}
