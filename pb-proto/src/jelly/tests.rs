//! Jelly's tests: Twisted's vectors (`test_jelly.py`, the reference's live captures), sharing
//! and cycles, hostile input, and round trips under arbitrary chunking.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::banana::{BananaConfig, BigInt, Dialect, encode_to_bytes};

fn b(s: &'static str) -> Element {
    Element::from(s)
}

fn i(v: i64) -> Element {
    Element::Int(v)
}

fn l(items: Vec<Element>) -> Element {
    Element::List(items)
}

fn u(s: &'static str) -> Element {
    l(vec![b("unicode"), b(s)])
}

fn sexp(g: &Graph) -> Element {
    to_sexp(g, &JellyConfig::default()).unwrap()
}

fn unjelly(e: &Element) -> Result<Graph, JellyError> {
    from_sexp(e, &JellyConfig::default())
}

fn wire(g: &Graph) -> Bytes {
    let mut codec = BananaCodec::default();
    codec.set_dialect(Dialect::Pb);
    let mut dst = BytesMut::new();
    encode(g, &JellyConfig::default(), &codec, &mut dst).unwrap();
    dst.freeze()
}

fn unwire(bytes: &[u8]) -> Result<Graph, JellyError> {
    decode(
        bytes,
        &JellyConfig::default(),
        BananaConfig::default(),
        Dialect::Pb,
    )
}

/// Checks `g` jellies to `expected`, that `expected` unjellies to `g`, and that the bytes
/// round-trip.
fn golden(g: &Graph, expected: &Element) {
    assert_eq!(&sexp(g), expected);
    assert_eq!(&unjelly(expected).unwrap(), g);
    let bytes = wire(g);
    assert_eq!(bytes, encode_to_bytes(expected, Dialect::Pb).unwrap());
    assert_eq!(&unwire(&bytes).unwrap(), g);
}

fn tree(v: Value) -> Graph {
    Graph::new(v)
}

fn bytes_value(s: &'static str) -> Value {
    Value::Bytes(Bytes::from_static(s.as_bytes()))
}

#[test]
fn plain_types_as_twisted_jellies_them() {
    golden(&tree(Value::from("blah")), &u("blah"));
    golden(&tree(Value::None), &l(vec![b("None")]));
    golden(&tree(Value::Bool(true)), &l(vec![b("boolean"), b("true")]));
    golden(
        &tree(Value::Bool(false)),
        &l(vec![b("boolean"), b("false")]),
    );
    golden(&tree(bytes_value("raw")), &b("raw"));
    golden(&tree(Value::Int(-7)), &i(-7));
    golden(&tree(Value::Float(2.5)), &Element::Float(2.5));
    let big: BigInt = "340282366920938463463374607431768211457".parse().unwrap();
    golden(&tree(Value::from(big.clone())), &Element::BigInt(big));
    golden(
        &tree(Value::List(vec![Value::Int(1), Value::Int(2)])),
        &l(vec![b("list"), i(1), i(2)]),
    );
    golden(&tree(Value::Tuple(vec![])), &l(vec![b("tuple")]));
    golden(
        &tree(Value::Set(vec![Value::Int(1)])),
        &l(vec![b("set"), i(1)]),
    );
    golden(
        &tree(Value::FrozenSet(vec![Value::from("x")])),
        &l(vec![b("frozenset"), u("x")]),
    );
    golden(
        &tree(Value::Dict(vec![
            (Value::from("a"), Value::Int(1)),
            (Value::Tuple(vec![Value::Int(1)]), Value::None),
        ])),
        &l(vec![
            b("dictionary"),
            l(vec![u("a"), i(1)]),
            l(vec![l(vec![b("tuple"), i(1)]), l(vec![b("None")])]),
        ]),
    );
    golden(&tree(Value::Dict(vec![])), &l(vec![b("dictionary")]));
}

#[test]
fn decimals_as_test_jelly_decimal_data() {
    // test_jelly.py's decimalData: 9.95, 0, 123456, -78.901.
    let d = |c: i64, e: i64| {
        Value::Decimal(Decimal {
            coefficient: BigInt::from(c),
            exponent: e,
        })
    };
    golden(
        &tree(Value::List(vec![
            d(995, -2),
            d(0, 0),
            d(123_456, 0),
            d(-78_901, -3),
        ])),
        &l(vec![
            b("list"),
            l(vec![b("decimal"), i(995), i(-2)]),
            l(vec![b("decimal"), i(0), i(0)]),
            l(vec![b("decimal"), i(123_456), i(0)]),
            l(vec![b("decimal"), i(-78_901), i(-3)]),
        ]),
    );
}

#[test]
fn time_types_as_test_banana_time_types() {
    // date(2020, 7, 11), time(1, 16, 5, 344), their combination, and the delta to 2020-07-03.
    let date = Date {
        year: 2020,
        month: 7,
        day: 11,
    };
    let time = Time {
        hour: 1,
        minute: 16,
        second: 5,
        microsecond: 344,
    };
    golden(
        &tree(Value::Date(date)),
        &l(vec![b("date"), b("2020 7 11")]),
    );
    golden(
        &tree(Value::Time(time)),
        &l(vec![b("time"), b("1 16 5 344")]),
    );
    golden(
        &tree(Value::DateTime(DateTime { date, time })),
        &l(vec![b("datetime"), b("2020 7 11 1 16 5 344")]),
    );
    golden(
        &tree(Value::TimeDelta(TimeDelta {
            days: 8,
            seconds: 4565,
            microseconds: 344,
        })),
        &l(vec![b("timedelta"), b("8 4565 344")]),
    );
    // Python's datetime(*map(int, s.split())) takes the time fields as optional.
    assert_eq!(
        unjelly(&l(vec![b("datetime"), b("2020  7\t11")])).unwrap(),
        tree(Value::DateTime(DateTime {
            date,
            time: Time::default()
        }))
    );
}

#[test]
fn shared_and_cyclic_containers_as_the_live_capture() {
    // (d, c) with d = {"a": l, "b": l}, l = [1, 2], c = [0, c].
    let mut g = Graph::default();
    let list = g.add_node(Value::List(vec![Value::Int(1), Value::Int(2)]));
    let c = g.add_node(Value::None);
    *g.node_mut(c).unwrap() = Value::List(vec![Value::Int(0), Value::Shared(c)]);
    g.set_root(Value::Tuple(vec![
        Value::Dict(vec![
            (Value::from("a"), Value::Shared(list)),
            (Value::from("b"), Value::Shared(list)),
        ]),
        Value::Shared(c),
    ]));
    let expected = l(vec![
        b("tuple"),
        l(vec![
            b("dictionary"),
            l(vec![
                u("a"),
                l(vec![b("reference"), i(1), l(vec![b("list"), i(1), i(2)])]),
            ]),
            l(vec![u("b"), l(vec![b("dereference"), i(1)])]),
        ]),
        l(vec![
            b("reference"),
            i(2),
            l(vec![b("list"), i(0), l(vec![b("dereference"), i(2)])]),
        ]),
    ]);
    golden(&g, &expected);
}

#[test]
fn test_jelly_identity_stress_and_more_references() {
    // test_identity: x = []; x.append(x); x.append(x).
    let mut g = Graph::default();
    let x = g.add_node(Value::None);
    *g.node_mut(x).unwrap() = Value::List(vec![Value::Shared(x), Value::Shared(x)]);
    g.set_root(Value::Shared(x));
    let deref = |n| l(vec![b("dereference"), i(n)]);
    golden(
        &g,
        &l(vec![
            b("reference"),
            i(1),
            l(vec![b("list"), deref(1), deref(1)]),
        ]),
    );

    // test_stressReferences: reref = []; t = ({"list": reref}, reref); reref.append(t).
    // t is numbered first: its second visit comes before reref's.
    let mut g = Graph::default();
    let t = g.add_node(Value::None);
    let reref = g.add_node(Value::List(vec![Value::Shared(t)]));
    *g.node_mut(t).unwrap() = Value::Tuple(vec![
        Value::Dict(vec![(Value::from("list"), Value::Shared(reref))]),
        Value::Shared(reref),
    ]);
    g.set_root(Value::Shared(t));
    golden(
        &g,
        &l(vec![
            b("reference"),
            i(1),
            l(vec![
                b("tuple"),
                l(vec![
                    b("dictionary"),
                    l(vec![
                        u("list"),
                        l(vec![b("reference"), i(2), l(vec![b("list"), deref(1)])]),
                    ]),
                ]),
                deref(2),
            ]),
        ]),
    );

    // test_moreReferences: a = []; t = (a,); a.append((t,)).
    let mut g = Graph::default();
    let t = g.add_node(Value::None);
    *g.node_mut(t).unwrap() =
        Value::Tuple(vec![Value::List(vec![Value::Tuple(vec![Value::Shared(
            t,
        )])])]);
    g.set_root(Value::Shared(t));
    golden(
        &g,
        &l(vec![
            b("reference"),
            i(1),
            l(vec![
                b("tuple"),
                l(vec![b("list"), l(vec![b("tuple"), deref(1)])]),
            ]),
        ]),
    );
}

#[test]
fn a_node_reached_once_is_inline_and_unreachable_nodes_are_not_sent() {
    let mut g = Graph::default();
    let once = g.add_node(Value::List(vec![Value::Int(1)]));
    g.add_node(Value::from("never sent"));
    g.set_root(Value::Tuple(vec![Value::Shared(once)]));
    assert_eq!(sexp(&g), l(vec![b("tuple"), l(vec![b("list"), i(1)])]));
}

#[test]
fn pb_flavors_and_instances() {
    golden(
        &tree(Value::Remote(ObjectId::Num(1))),
        &l(vec![b("remote"), i(1)]),
    );
    golden(
        &tree(Value::Local(ObjectId::Name(Bytes::from_static(b"root")))),
        &l(vec![b("local"), b("root")]),
    );
    golden(
        &tree(Value::Cached(ObjectId::Num(5))),
        &l(vec![b("cached"), i(5)]),
    );
    golden(
        &tree(Value::LCache(ObjectId::Num(5))),
        &l(vec![b("lcache"), i(5)]),
    );
    // The reference's live capture of a Cacheable's first send.
    golden(
        &tree(Value::Cache {
            tag: Bytes::from_static(b"__main__.Counter"),
            luid: 5,
            state: Box::new(Value::Dict(vec![(Value::from("value"), Value::Int(0))])),
        }),
        &l(vec![
            b("__main__.Counter"),
            i(5),
            l(vec![b("dictionary"), l(vec![u("value"), i(0)])]),
        ]),
    );
    let point = Value::Instance {
        tag: Bytes::from_static(b"pbtest.Point"),
        state: Box::new(Value::Dict(vec![
            (Value::from("x"), Value::Int(1)),
            (Value::from("y"), Value::Int(2)),
        ])),
    };
    golden(
        &tree(point.clone()),
        &l(vec![
            b("pbtest.Point"),
            l(vec![
                b("dictionary"),
                l(vec![u("x"), i(1)]),
                l(vec![u("y"), i(2)]),
            ]),
        ]),
    );
    let Value::Instance { state, .. } = &point else {
        panic!()
    };
    assert_eq!(state.get("y"), Some(&Value::Int(2)));
    golden(
        &tree(Value::Unpersistable(Bytes::from_static(
            b"instance of class X deemed insecure",
        ))),
        &l(vec![
            b("unpersistable"),
            b("instance of class X deemed insecure"),
        ]),
    );
    // A minimal CopyableFailure, as a Python client accepts it (reference 1.7).
    let failure = unjelly(&l(vec![
        b("twisted.spread.pb.CopyableFailure"),
        l(vec![
            b("dictionary"),
            l(vec![u("type"), b("twisted.spread.pb.Error")]),
            l(vec![u("value"), u("boom")]),
            l(vec![u("traceback"), u("Traceback unavailable\n")]),
            l(vec![
                u("parents"),
                l(vec![b("list"), u("twisted.spread.pb.Error")]),
            ]),
        ]),
    ]))
    .unwrap();
    let Value::Instance { tag, state } = failure.root() else {
        panic!()
    };
    assert_eq!(&tag[..], b"twisted.spread.pb.CopyableFailure");
    assert_eq!(state.get("value"), Some(&Value::from("boom")));
}

#[test]
fn dereference_before_its_reference_is_accepted() {
    // ["list", ["dereference", 7], ["reference", 7, ["list"]]]
    let g = unjelly(&l(vec![
        b("list"),
        l(vec![b("dereference"), i(7)]),
        l(vec![b("reference"), i(7), l(vec![b("list")])]),
    ]))
    .unwrap();
    assert_eq!(
        g.root(),
        &Value::List(vec![Value::Shared(NodeId(0)), Value::Shared(NodeId(0))])
    );
    assert_eq!(g.node(NodeId(0)), Some(&Value::List(vec![])));
    // Re-encoded the Twisted way: reference where first met.
    assert_eq!(
        sexp(&g),
        l(vec![
            b("list"),
            l(vec![b("reference"), i(1), l(vec![b("list")])]),
            l(vec![b("dereference"), i(1)]),
        ])
    );
}

#[test]
fn hostile_and_malformed_expressions() {
    let err = |e: Element| unjelly(&e).unwrap_err();
    assert_eq!(
        err(l(vec![b("dereference"), i(1)])),
        JellyError::DanglingReference(1)
    );
    assert_eq!(
        err(l(vec![
            b("list"),
            l(vec![b("reference"), i(1), l(vec![b("list")])]),
            l(vec![b("reference"), i(1), l(vec![b("list")])]),
        ])),
        JellyError::DuplicateReference(1)
    );
    assert_eq!(
        err(l(vec![
            b("reference"),
            i(1),
            l(vec![
                b("list"),
                l(vec![b("reference"), i(1), l(vec![b("list")])])
            ]),
        ])),
        JellyError::DuplicateReference(1)
    );
    assert!(matches!(
        err(l(vec![
            b("reference"),
            i(1),
            l(vec![b("dereference"), i(1)])
        ])),
        JellyError::Malformed { .. }
    ));
    for tag in [
        "class",
        "module",
        "function",
        "method",
        "instance",
        "persistent",
    ] {
        assert_eq!(
            err(l(vec![b(tag), b("os.system")])),
            JellyError::Insecure(Bytes::from_static(tag.as_bytes()))
        );
    }
    assert_eq!(err(l(vec![])), JellyError::EmptyList);
    assert_eq!(err(l(vec![i(1), i(2)])), JellyError::TagNotBytes);
    assert!(matches!(
        err(l(vec![b("unicode"), Element::from(&b"\xff"[..])])),
        JellyError::BadUtf8(_)
    ));
    for bad in [
        l(vec![b("boolean"), b("yes")]),
        l(vec![b("None"), i(1)]),
        l(vec![b("unicode")]),
        l(vec![b("dictionary"), i(1)]),
        l(vec![b("dictionary"), l(vec![i(1)])]),
        l(vec![b("decimal"), Element::Float(1.5), i(0)]),
        l(vec![b("decimal"), i(1)]),
        l(vec![b("datetime"), b("2020 13 1")]),
        l(vec![b("datetime"), b("2020 1 1 0 0 0 0 0")]),
        l(vec![b("date"), b("2020 1")]),
        l(vec![b("time"), b("24")]),
        l(vec![b("timedelta"), b("1 x 2")]),
        l(vec![b("remote"), Element::Float(1.0)]),
        l(vec![b("remote")]),
        l(vec![b("reference"), b("1"), l(vec![b("list")])]),
        l(vec![b("foo.Bar")]),
        l(vec![b("foo.Bar"), b("x"), i(2)]),
        l(vec![b("foo.Bar"), i(1), i(2), i(3)]),
    ] {
        assert!(
            matches!(unjelly(&bad), Err(JellyError::Malformed { .. })),
            "{bad:?} gave {:?}",
            unjelly(&bad)
        );
    }
    // A reference's body may be any value that is not an edge itself.
    let g = unjelly(&l(vec![b("reference"), i(1), i(5)])).unwrap();
    assert_eq!(g.node(NodeId(0)), Some(&Value::Int(5)));
}

#[test]
fn limits_on_depth_and_references() {
    let mut deep = l(vec![b("list")]);
    for _ in 0..DEFAULT_MAX_DEPTH {
        deep = l(vec![b("list"), deep]);
    }
    assert_eq!(
        unjelly(&deep).unwrap_err(),
        JellyError::TooDeep {
            limit: DEFAULT_MAX_DEPTH
        }
    );
    let mut value = Value::List(vec![]);
    for _ in 0..DEFAULT_MAX_DEPTH {
        value = Value::List(vec![value]);
    }
    assert_eq!(
        to_sexp(&tree(value), &JellyConfig::default()).unwrap_err(),
        JellyError::TooDeep {
            limit: DEFAULT_MAX_DEPTH
        }
    );
    let refs = l(vec![
        b("list"),
        l(vec![b("dereference"), i(1)]),
        l(vec![b("dereference"), i(2)]),
        l(vec![b("dereference"), i(3)]),
    ]);
    assert_eq!(
        from_sexp(&refs, &JellyConfig::default().max_references(2)).unwrap_err(),
        JellyError::TooManyReferences { limit: 2 }
    );
    // Nesting within Banana's depth limit but over Jelly's is refused by Jelly; nesting over
    // Banana's is refused by Banana, before Jelly sees it.
    let mut wire = Vec::new();
    for _ in 0..70 {
        wire.extend_from_slice(b"\x02\x80\x08\x87");
    }
    wire.extend_from_slice(b"\x01\x80\x08\x87");
    assert!(matches!(
        unwire(&wire),
        Err(JellyError::Banana(BananaCodecError::TooDeep { .. }))
    ));
}

#[test]
fn hostile_bytes_fail_in_banana_before_jelly_sees_them() {
    // Truncated: a list of three with two elements.
    assert_eq!(
        unwire(b"\x03\x80\x08\x87\x01\x81"),
        Err(JellyError::Banana(BananaCodecError::Truncated))
    );
    // A string claiming 4 GiB, with nothing behind it.
    assert!(matches!(
        unwire(b"\x00\x00\x00\x00\x10\x82"),
        Err(JellyError::Banana(BananaCodecError::StringTooLong { .. }))
    ));
    // 65 prefix bytes.
    assert_eq!(
        unwire(&[0x01; 65]),
        Err(JellyError::Banana(BananaCodecError::PrefixTooLong {
            limit: 64
        }))
    );
    // A decoder that failed stays failed.
    let mut codec = BananaCodec::default();
    let mut buf = BytesMut::from(&b"\x01\x88"[..]);
    assert!(decode_buf(&mut buf, &JellyConfig::default(), &mut codec).is_err());
    let mut buf = BytesMut::from(&b"\x01\x81"[..]);
    assert_eq!(
        decode_buf(&mut buf, &JellyConfig::default(), &mut codec),
        Err(JellyError::Banana(BananaCodecError::Failed))
    );
}

#[test]
fn encoding_errors() {
    let g = tree(Value::Shared(NodeId(3)));
    assert_eq!(
        to_sexp(&g, &JellyConfig::default()),
        Err(JellyError::NoSuchNode(NodeId(3)))
    );
    let mut g = Graph::default();
    let a = g.add_node(Value::Int(1));
    let alias = g.add_node(Value::Shared(a));
    g.set_root(Value::Shared(alias));
    assert_eq!(
        to_sexp(&g, &JellyConfig::default()),
        Err(JellyError::AliasNode(alias))
    );
    let g = tree(Value::Instance {
        tag: Bytes::from_static(b"list"),
        state: Box::new(Value::None),
    });
    assert_eq!(
        to_sexp(&g, &JellyConfig::default()),
        Err(JellyError::ReservedTag(Bytes::from_static(b"list")))
    );
    // A string over Banana's size limit is Banana's error, and nothing is written.
    let codec = BananaCodec::new(BananaConfig::default().size_limit(3));
    let mut dst = BytesMut::new();
    assert!(matches!(
        encode(
            &tree(Value::from("four")),
            &JellyConfig::default(),
            &codec,
            &mut dst
        ),
        Err(JellyError::Banana(BananaCodecError::StringTooLong { .. }))
    ));
    assert!(dst.is_empty());
}

#[test]
fn a_message_with_references_decodes_at_every_split_point() {
    let mut g = Graph::default();
    let c = g.add_node(Value::None);
    *g.node_mut(c).unwrap() = Value::Dict(vec![(Value::from("self"), Value::Shared(c))]);
    g.set_root(Value::Tuple(vec![
        Value::Shared(c),
        Value::from("x"),
        Value::Shared(c),
    ]));
    let one = wire(&g);
    let mut stream = one.to_vec();
    stream.extend_from_slice(&one);
    for at in 0..=stream.len() {
        let mut codec = BananaCodec::default();
        codec.set_dialect(Dialect::Pb);
        let mut buf = BytesMut::from(&stream[..at]);
        let mut got = Vec::new();
        while let Some(m) = decode_buf(&mut buf, &JellyConfig::default(), &mut codec).unwrap() {
            got.push(m);
        }
        buf.extend_from_slice(&stream[at..]);
        while let Some(m) = decode_buf(&mut buf, &JellyConfig::default(), &mut codec).unwrap() {
            got.push(m);
        }
        assert_eq!(got, vec![g.clone(), g.clone()], "split at {at}");
        assert!(buf.is_empty());
    }
}

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
