//! Jelly's property tests: round trips under arbitrary chunking, fixed points after one trip,
//! and inputs that must never panic.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::tests::{sexp, tree, unjelly, unwire, wire};
use super::*;
use crate::banana::{BigInt, Dialect};

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 9..40))
            .prop_map(|(n, m)| Value::from(BigInt::from_parts(n, m))),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::Float),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(|v| Value::from(&v[..])),
        ".{0,8}".prop_map(Value::Str),
        (any::<i64>(), -30i64..30).prop_map(|(c, e)| Value::Decimal(Decimal {
            coefficient: BigInt::from(c),
            exponent: e
        })),
        (1u16..=9999, 1u8..=12, 1u8..=31, 0u8..24, 0u32..1_000_000).prop_map(
            |(year, month, day, hour, microsecond)| Value::DateTime(DateTime {
                date: Date { year, month, day },
                time: Time {
                    hour,
                    minute: 59,
                    second: 0,
                    microsecond
                }
            })
        ),
        (any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(days, seconds, microseconds)| {
            Value::TimeDelta(TimeDelta {
                days,
                seconds,
                microseconds,
            })
        }),
        any::<i64>().prop_map(|n| Value::Remote(ObjectId::Num(n))),
        "[a-z]{0,6}".prop_map(|s| Value::Local(ObjectId::Name(Bytes::from(s)))),
        any::<i64>().prop_map(|n| Value::Cached(ObjectId::Num(n))),
        any::<i64>().prop_map(|n| Value::LCache(ObjectId::Num(n))),
        "[a-z ]{0,10}".prop_map(|s| Value::Unpersistable(Bytes::from(s))),
    ]
}

fn arb_tree() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(5, 64, 6, |inner| {
        let items = proptest::collection::vec(inner.clone(), 0..6);
        prop_oneof![
            items.clone().prop_map(Value::List),
            items.clone().prop_map(Value::Tuple),
            items.clone().prop_map(Value::Set),
            items.prop_map(Value::FrozenSet),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Dict),
            ("[a-z]{1,5}\\.[A-Z][a-z]{0,5}", inner.clone()).prop_map(|(tag, state)| {
                Value::Instance {
                    tag: Bytes::from(tag),
                    state: Box::new(state),
                }
            }),
            ("[a-z]{1,5}\\.[A-Z][a-z]{0,5}", any::<i64>(), inner).prop_map(|(tag, luid, state)| {
                Value::Cache {
                    tag: Bytes::from(tag),
                    luid,
                    state: Box::new(state),
                }
            }),
        ]
    })
}

/// Up to five containers whose items are leaves or edges to any of them (cycles included),
/// and a root list of edges and leaves.
fn arb_graph() -> impl Strategy<Value = Graph> {
    (1usize..6).prop_flat_map(|n| {
        let item = prop_oneof![arb_leaf(), (0..n).prop_map(|i| Value::Shared(NodeId(i))),];
        let node =
            (0u8..4, proptest::collection::vec(item.clone(), 0..4)).prop_map(|(kind, items)| {
                match kind {
                    0 => Value::List(items),
                    1 => Value::Tuple(items),
                    2 => Value::Dict(
                        items
                            .chunks(2)
                            .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or(Value::None)))
                            .collect(),
                    ),
                    _ => Value::Set(items),
                }
            });
        (
            proptest::collection::vec(node, n),
            proptest::collection::vec(item, 0..5),
        )
            .prop_map(|(nodes, root)| Graph::from_parts(Value::List(root), nodes))
    })
}

proptest! {
    #[test]
    fn trees_round_trip_under_arbitrary_chunking(
        v in arb_tree(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let g = tree(v);
        let bytes = wire(&g);
        let mut splits: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        splits.sort_unstable();
        splits.push(bytes.len());
        let mut codec = BananaCodec::default();
        codec.set_dialect(Dialect::Pb);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut last = 0;
        for at in splits {
            buf.extend_from_slice(&bytes[last..at]);
            last = at;
            while let Some(m) = decode_buf(&mut buf, &JellyConfig::default(), &mut codec).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, vec![g]);
    }

    #[test]
    fn graphs_reach_a_fixed_point_after_one_trip(g in arb_graph()) {
        let first = wire(&g);
        let decoded = unwire(&first).unwrap();
        prop_assert!(decoded.equivalent(&g));
        let second = wire(&decoded);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(unwire(&second).unwrap(), decoded);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = unwire(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        g in arb_graph(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = wire(&g).to_vec();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        if let Ok(decoded) = unwire(&bytes) {
            // Whatever decodes encodes again, and that is a fixed point (a reference used
            // once is inlined, so the first trip may change the bytes).
            let again = wire(&decoded);
            prop_assert_eq!(wire(&unwire(&again).unwrap()), again);
        }
    }

    #[test]
    fn arbitrary_sexps_with_jelly_tags_never_panic(e in arb_sexp()) {
        if let Ok(g) = unjelly(&e) {
            let again = sexp(&g);
            prop_assert_eq!(sexp(&unjelly(&again).unwrap()), again);
        }
    }
}

/// S-expressions whose lists mostly start with one of Jelly's tags or an instance's.
fn arb_sexp() -> impl Strategy<Value = Element> {
    let mut tags: Vec<&'static [u8]> = BUILTIN_TAGS.to_vec();
    tags.extend([
        &b"pkg.Cls"[..],
        b"true",
        b"false",
        b"1 2 3",
        b"2020 1 2 3 4 5 6",
    ]);
    let leaf = prop_oneof![
        (-3i64..8).prop_map(Element::Int),
        any::<i64>().prop_map(Element::Int),
        Just(Element::Float(0.5)),
        proptest::sample::select(tags.clone()).prop_map(Element::from),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(|v| Element::from(&v[..])),
    ];
    leaf.prop_recursive(5, 80, 5, move |inner| {
        (
            proptest::sample::select(tags.clone()),
            proptest::collection::vec(inner, 0..4),
        )
            .prop_map(|(tag, mut rest)| {
                rest.insert(0, Element::from(tag));
                Element::List(rest)
            })
    })
}
