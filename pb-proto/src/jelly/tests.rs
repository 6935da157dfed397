//! Jelly's tests: Twisted's vectors (`test_jelly.py`, the reference's live captures), sharing
//! and cycles, hostile input, and chunking at every split point.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};

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

pub(super) fn sexp(g: &Graph) -> Element {
    to_sexp(g, &JellyConfig::default()).unwrap()
}

pub(super) fn unjelly(e: &Element) -> Result<Graph, JellyError> {
    from_sexp(e, &JellyConfig::default())
}

pub(super) fn wire(g: &Graph) -> Bytes {
    let mut codec = BananaCodec::default();
    codec.set_dialect(Dialect::Pb);
    let mut dst = BytesMut::new();
    encode(g, &JellyConfig::default(), &codec, &mut dst).unwrap();
    dst.freeze()
}

pub(super) fn unwire(bytes: &[u8]) -> Result<Graph, JellyError> {
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

pub(super) fn tree(v: Value) -> Graph {
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
fn equivalence_ignores_node_numbering_but_not_sharing() {
    // [a, a] with a = [NaN] built with a spare node first, against the same built plainly.
    let mut one = Graph::default();
    one.add_node(Value::from("spare"));
    let a = one.add_node(Value::List(vec![Value::Float(f64::NAN)]));
    one.set_root(Value::List(vec![Value::Shared(a), Value::Shared(a)]));
    let mut two = Graph::default();
    let a = two.add_node(Value::List(vec![Value::Float(f64::NAN)]));
    two.set_root(Value::List(vec![Value::Shared(a), Value::Shared(a)]));
    assert_ne!(one, two);
    assert!(one.equivalent(&two));
    assert!(one.equivalent(&unwire(&wire(&one)).unwrap()));
    // Two equal lists that are not shared are a different value.
    let unshared = tree(Value::List(vec![
        Value::List(vec![Value::Float(f64::NAN)]),
        Value::List(vec![Value::Float(f64::NAN)]),
    ]));
    assert!(!one.equivalent(&unshared));
    assert!(!tree(Value::Float(0.0)).equivalent(&tree(Value::Float(-0.0))));
    assert!(!tree(Value::Shared(NodeId(9))).equivalent(&tree(Value::Shared(NodeId(9)))));
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

#[test]
fn flavors_are_listed_root_first_then_by_node() {
    use super::ObjectId;
    let mut g = Graph::default();
    let shared = g.add_node(Value::List(vec![Value::Remote(ObjectId::Num(3))]));
    g.set_root(Value::Tuple(vec![
        Value::Local(ObjectId::Num(1)),
        Value::Shared(shared),
        Value::Dict(vec![(
            Value::Cached(ObjectId::Num(2)),
            Value::Shared(shared),
        )]),
        Value::Cache {
            tag: bytes::Bytes::from_static(b"t"),
            luid: 4,
            state: Box::new(Value::Remote(ObjectId::Num(5))),
        },
    ]));
    let found = g.flavors();
    assert_eq!(found.len(), 5);
    assert_eq!(found[0], &Value::Local(ObjectId::Num(1)));
    assert_eq!(found[1], &Value::Cached(ObjectId::Num(2)));
    assert!(matches!(found[2], Value::Cache { luid: 4, .. }));
    assert_eq!(found[3], &Value::Remote(ObjectId::Num(5)));
    assert_eq!(found[4], &Value::Remote(ObjectId::Num(3)));
}
