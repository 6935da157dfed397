//! Tests of the Jelly format: every mapping both ways, with exact values.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use pb_proto::banana::{self, BananaCodec, Dialect};
use pb_proto::jelly::{self, Graph, ObjectId, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::*;
use crate::object::codec::{self, CodecError, DEFAULT_MAX_DEPTH};

/// The default depth and copy limits.
const DEFAULT_LIMITS: (usize, usize) = (DEFAULT_MAX_DEPTH, jelly::DEFAULT_MAX_COPIED_SIZE);

/// The graph's Banana bytes (dialect `pb`), which must encode.
fn wire(g: &Graph) -> BytesMut {
    let mut codec = BananaCodec::default();
    codec.set_dialect(Dialect::Pb);
    let mut out = BytesMut::new();
    jelly::encode(g, &Default::default(), &codec, &mut out).expect("the graph must encode");
    out
}

/// The graph after a trip over the wire.
fn over_wire(g: &Graph) -> Graph {
    let back = jelly::decode(
        &wire(g),
        &Default::default(),
        Default::default(),
        Dialect::Pb,
    )
    .expect("the graph must decode");
    assert!(back.equivalent(g), "{back:?} differs from {g:?}");
    back
}

fn to<T: Serialize + ?Sized>(v: &T) -> Graph {
    to_graph(v, None).expect("to_graph")
}

fn from<T: DeserializeOwned>(g: &Graph) -> Result<T, CodecError> {
    from_graph(g, None, DEFAULT_LIMITS)
}

fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, CodecError> {
    from(&Graph::new(v))
}

/// Serializes `v`, checks its root is `expected`, that it crosses the wire, and that it
/// deserializes back to `v` (before and after the wire).
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T, expected: Value) {
    let g = to(v);
    assert_eq!(g.root(), &expected, "serializing {v:?}");
    assert_eq!(g.node_count(), 0, "a plain value is a tree");
    assert_eq!(&from::<T>(&g).expect("from_graph"), v);
    assert_eq!(
        &from::<T>(&over_wire(&g)).expect("from_graph after the wire"),
        v
    );
}

fn s(text: &str) -> Value {
    Value::from(text)
}

fn b(bytes: &[u8]) -> Value {
    Value::from(bytes)
}

fn big(text: &str) -> banana::BigInt {
    text.parse().expect("integer text")
}

fn decode_error<T: Debug>(r: Result<T, CodecError>) -> String {
    match r {
        Err(CodecError::Decode(m)) => m,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn scalars() {
    check(&true, Value::Bool(true));
    check(&-5i8, Value::Int(-5));
    check(&300i16, Value::Int(300));
    check(&-70_000i32, Value::Int(-70_000));
    check(&u8::MAX, Value::Int(255));
    check(&u32::MAX, Value::Int(u32::MAX.into()));
    check(&1.5f64, Value::Float(1.5));
    check(&0.25f32, Value::Float(0.25));
    check(&'é', s("é"));
    check(&"héllo".to_owned(), s("héllo"));
    check(&(), Value::None);
}

#[test]
fn integers_at_the_boundaries() {
    check(&i64::MAX, Value::Int(i64::MAX));
    check(&i64::MIN, Value::Int(i64::MIN));
    check(&(i64::MAX as u64), Value::Int(i64::MAX));
    check(
        &(i64::MAX as u64 + 1),
        Value::BigInt(big("9223372036854775808")),
    );
    check(&u64::MAX, Value::BigInt(big("18446744073709551615")));
    check(&5i128, Value::Int(5));
    check(&i128::MIN, Value::BigInt(big(&i128::MIN.to_string())));
    check(&u128::MAX, Value::BigInt(big(&u128::MAX.to_string())));
    check(
        &(i64::MIN as i128 - 1),
        Value::BigInt(big("-9223372036854775809")),
    );

    // A small integer sent as a big one is still in range.
    assert_eq!(from_value::<u8>(Value::BigInt(big("7"))), Ok(7));
    // Out of range is an error naming the value, never a wrap or a panic.
    let m = decode_error(from_value::<u8>(Value::Int(256)));
    assert!(m.contains("256") && m.contains("out of range"), "{m}");
    decode_error(from_value::<u32>(Value::Int(-1)));
    decode_error(from_value::<i8>(Value::Int(-129)));
    decode_error(from_value::<i64>(Value::BigInt(big("9223372036854775808"))));
    decode_error(from_value::<u64>(Value::BigInt(big(
        "18446744073709551616",
    ))));
    decode_error(from_value::<u128>(Value::BigInt(big("-1"))));
    decode_error(from_value::<u128>(Value::BigInt(big(
        "340282366920938463463374607431768211456",
    ))));
    decode_error(from_value::<i128>(Value::BigInt(big(
        "170141183460469231731687303715884105728",
    ))));
    assert_eq!(
        from_value::<u128>(Value::BigInt(big(&u128::MAX.to_string()))),
        Ok(u128::MAX)
    );
    // An integer never passes for a bool or a string.
    decode_error(from_value::<bool>(Value::Int(1)));
    decode_error(from_value::<String>(Value::Int(1)));
    decode_error(from_value::<u8>(Value::Float(1.0)));
}

#[test]
fn lenient_targets() {
    // A float target takes an int.
    assert_eq!(from_value::<f64>(Value::Int(3)), Ok(3.0));
    assert_eq!(from_value::<f32>(Value::Int(-2)), Ok(-2.0));
    // A str target takes UTF-8 bytes, as Python 2 peers send str.
    assert_eq!(from_value::<String>(b(b"abc")), Ok("abc".to_owned()));
    assert_eq!(from_value::<char>(b(b"x")), Ok('x'));
    decode_error(from_value::<String>(b(b"\xff")));
    decode_error(from_value::<char>(s("xy")));
    // A bytes target takes a str.
    assert_eq!(
        from_value::<serde_bytes_like::Buf>(s("hé")),
        Ok(serde_bytes_like::Buf("hé".as_bytes().to_vec()))
    );
    // A Vec<u8> without a bytes attribute takes bytes, a byte at a time.
    assert_eq!(from_value::<Vec<u8>>(b(b"\x01\x02")), Ok(vec![1, 2]));
}

/// A `Vec<u8>` through `zero_copy::vec`, as `serde_bytes` does.
mod serde_bytes_like {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Buf(#[serde(with = "crate::zero_copy::vec")] pub Vec<u8>);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Blob {
    #[serde(with = "crate::zero_copy::vec")]
    vec: Vec<u8>,
    #[serde(with = "crate::zero_copy")]
    shared: Bytes,
}

#[test]
fn byte_strings_are_bytes() {
    check(
        &serde_bytes_like::Buf(vec![0, 255]),
        Value::Bytes(Bytes::from_static(b"\x00\xff")),
    );
    check(
        &Blob {
            vec: b"ab".to_vec(),
            shared: Bytes::from_static(b"cd"),
        },
        Value::Dict(vec![(s("vec"), b(b"ab")), (s("shared"), b(b"cd"))]),
    );
    // A bytes target takes a str too.
    assert_eq!(
        from_value::<Blob>(Value::Dict(vec![
            (s("vec"), s("ab")),
            (s("shared"), s("cd"))
        ])),
        Ok(Blob {
            vec: b"ab".to_vec(),
            shared: Bytes::from_static(b"cd"),
        })
    );
    // A plain Vec<u8> is a list of ints, as serde gives it.
    check(
        &vec![1u8, 2],
        Value::List(vec![Value::Int(1), Value::Int(2)]),
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Unit;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Meters(u32);

#[test]
fn options_units_and_newtypes() {
    check(&None::<u32>, Value::None);
    check(&Some(5u32), Value::Int(5));
    check(&Some("x".to_owned()), s("x"));
    check(&Unit, Value::None);
    check(&Meters(3), Value::Int(3));
    decode_error(from_value::<()>(Value::Int(0)));
    assert_eq!(from_value::<Option<Unit>>(Value::None), Ok(None));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Empty,
    Circle(f64),
    Rect(u32, u32),
    Named { name: String, sides: u8 },
}

#[test]
fn enums_are_externally_tagged() {
    check(&Shape::Empty, s("Empty"));
    check(
        &Shape::Circle(1.5),
        Value::Dict(vec![(s("Circle"), Value::Float(1.5))]),
    );
    check(
        &Shape::Rect(2, 3),
        Value::Dict(vec![(
            s("Rect"),
            Value::Tuple(vec![Value::Int(2), Value::Int(3)]),
        )]),
    );
    check(
        &Shape::Named {
            name: "tri".into(),
            sides: 3,
        },
        Value::Dict(vec![(
            s("Named"),
            Value::Dict(vec![(s("name"), s("tri")), (s("sides"), Value::Int(3))]),
        )]),
    );
    // A unit variant named by bytes, or as a dict of None.
    assert_eq!(from_value::<Shape>(b(b"Empty")), Ok(Shape::Empty));
    assert_eq!(
        from_value::<Shape>(Value::Dict(vec![(s("Empty"), Value::None)])),
        Ok(Shape::Empty)
    );
    // Not one entry, an unknown variant, a missing content.
    decode_error(from_value::<Shape>(Value::Dict(vec![])));
    decode_error(from_value::<Shape>(Value::Dict(vec![
        (s("Circle"), Value::Float(1.0)),
        (s("Empty"), Value::None),
    ])));
    decode_error(from_value::<Shape>(s("Square")));
    decode_error(from_value::<Shape>(s("Circle")));
    decode_error(from_value::<Shape>(Value::Int(0)));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
    label: Option<String>,
}

fn point() -> Point {
    Point {
        x: 1,
        y: -2,
        label: None,
    }
}

#[test]
fn structs_are_dicts_of_str_keys_in_field_order() {
    check(
        &point(),
        Value::Dict(vec![
            (s("x"), Value::Int(1)),
            (s("y"), Value::Int(-2)),
            (s("label"), Value::None),
        ]),
    );
    // Bytes keys (Python 2), another order, extra keys: all accepted.
    let sent = Value::Dict(vec![
        (b(b"y"), Value::Int(-2)),
        (s("extra"), Value::List(vec![])),
        (b(b"x"), Value::Int(1)),
        (s("label"), Value::None),
    ]);
    assert_eq!(from_value::<Point>(sent.clone()), Ok(point()));
    // An instance's state, whatever its tag.
    assert_eq!(
        from_value::<Point>(Value::Instance {
            tag: Bytes::from_static(b"some.Class"),
            state: Box::new(sent),
        }),
        Ok(point())
    );
    let m = decode_error(from_value::<Point>(Value::Dict(vec![(
        s("x"),
        Value::Int(1),
    )])));
    assert!(m.contains("missing field"), "{m}");
    decode_error(from_value::<Point>(Value::List(vec![])));
}

#[test]
fn sequences_tuples_and_maps() {
    check(
        &vec!["a".to_owned(), "b".to_owned()],
        Value::List(vec![s("a"), s("b")]),
    );
    check(
        &(1u8, "x".to_owned()),
        Value::Tuple(vec![Value::Int(1), s("x")]),
    );
    let map = BTreeMap::from([(1i64, true), (2, false)]);
    check(
        &map,
        Value::Dict(vec![
            (Value::Int(1), Value::Bool(true)),
            (Value::Int(2), Value::Bool(false)),
        ]),
    );
    let names = BTreeMap::from([("k".to_owned(), vec![1u16])]);
    check(
        &names,
        Value::Dict(vec![(s("k"), Value::List(vec![Value::Int(1)]))]),
    );
    // A seq takes a tuple, set or frozenset; a tuple takes a list.
    let two = vec![Value::Int(1), Value::Int(2)];
    for v in [
        Value::Tuple(two.clone()),
        Value::Set(two.clone()),
        Value::FrozenSet(two.clone()),
    ] {
        assert_eq!(from_value::<Vec<u8>>(v), Ok(vec![1, 2]));
    }
    assert_eq!(from_value::<(u8, u8)>(Value::List(two.clone())), Ok((1, 2)));
    // A tuple of the wrong length.
    decode_error(from_value::<(u8, u8, u8)>(Value::Tuple(two.clone())));
    decode_error(from_value::<(u8,)>(Value::Tuple(two.clone())));
    decode_error(from_value::<Vec<u8>>(Value::Dict(vec![])));
    decode_error(from_value::<BTreeMap<u8, u8>>(Value::List(two)));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename = "$pb::copyable=pbtest.Point")]
struct Copied {
    x: i32,
    y: i32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename = "$pb::copyable=pbtest.Id")]
struct CopiedId(u32);

#[test]
fn copyables_are_instances_with_their_tag() {
    check(
        &Copied { x: 3, y: 4 },
        Value::Instance {
            tag: Bytes::from_static(b"pbtest.Point"),
            state: Box::new(Value::Dict(vec![
                (s("x"), Value::Int(3)),
                (s("y"), Value::Int(4)),
            ])),
        },
    );
    check(
        &CopiedId(9),
        Value::Instance {
            tag: Bytes::from_static(b"pbtest.Id"),
            state: Box::new(Value::Int(9)),
        },
    );
    let other = Value::Instance {
        tag: Bytes::from_static(b"pbtest.Other"),
        state: Box::new(Value::Dict(vec![
            (s("x"), Value::Int(3)),
            (s("y"), Value::Int(4)),
        ])),
    };
    let m = decode_error(from_value::<Copied>(other));
    assert!(
        m.contains("pbtest.Point") && m.contains("pbtest.Other"),
        "{m}"
    );
    // A bare dict is not the copyable.
    let m = decode_error(from_value::<Copied>(Value::Dict(vec![])));
    assert!(m.contains("pbtest.Point"), "{m}");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename = "$pb::copyable=list")]
struct Reserved {
    x: u8,
}

#[test]
fn a_copyable_may_not_take_one_of_jellys_own_tags() {
    assert!(matches!(
        to_graph(&Reserved { x: 1 }, None),
        Err(CodecError::Encode(_))
    ));
}

#[test]
fn the_format_is_human_readable() {
    check(&std::net::Ipv4Addr::LOCALHOST, s("127.0.0.1"));
}

#[test]
fn a_shared_node_deserializes_once_per_place() {
    // l = [1, 2]; [l, l]
    let mut g = Graph::default();
    let l = g.add_node(Value::List(vec![Value::Int(1), Value::Int(2)]));
    g.set_root(Value::List(vec![Value::Shared(l), Value::Shared(l)]));
    assert_eq!(from::<Vec<Vec<u8>>>(&g), Ok(vec![vec![1, 2], vec![1, 2]]));
    // Shared struct and string nodes too, and a shared root.
    let mut g = Graph::default();
    let p = g.add_node(Value::Dict(vec![
        (s("x"), Value::Int(1)),
        (s("y"), Value::Int(-2)),
        (s("label"), Value::None),
    ]));
    let root = g.add_node(Value::Tuple(vec![Value::Shared(p), Value::Shared(p)]));
    g.set_root(Value::Shared(root));
    assert_eq!(from::<(Point, Point)>(&g), Ok((point(), point())));
}

#[test]
fn the_copies_of_a_shared_byte_string_count_its_bytes() {
    // b = b"x" * 1000; [b, b, b]: two copies, each a value and its 1000 bytes.
    let mut g = Graph::default();
    let x = g.add_node(b(&[b'x'; 1000]));
    g.set_root(Value::List(vec![Value::Shared(x); 3]));
    let copies = 2 * (std::mem::size_of::<Value>() + 1000);
    let three: Vec<_> = (0..3)
        .map(|_| serde_bytes_like::Buf(vec![b'x'; 1000]))
        .collect();
    assert_eq!(
        from_graph::<Vec<serde_bytes_like::Buf>>(&g, None, (DEFAULT_MAX_DEPTH, copies)),
        Ok(three)
    );
    let over = from_graph::<Vec<serde_bytes_like::Buf>>(&g, None, (DEFAULT_MAX_DEPTH, copies - 1));
    assert!(decode_error(over).contains("max_copied_size"));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Tree(Vec<Tree>);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Any {
    Int(i64),
    List(Vec<Any>),
}

/// `l = []; l.append(l)`.
fn cycle() -> Graph {
    let mut g = Graph::default();
    let l = g.add_node(Value::List(vec![]));
    if let Some(Value::List(xs)) = g.node_mut(l) {
        xs.push(Value::Shared(l));
    }
    g.set_root(Value::Shared(l));
    g
}

#[test]
fn a_cycle_stops_at_the_depth_limit() {
    let g = cycle();
    assert_eq!(
        from::<Tree>(&g),
        Err(CodecError::TooDeep {
            max: DEFAULT_MAX_DEPTH
        })
    );
    assert_eq!(
        from_graph::<Vec<Vec<Vec<Tree>>>>(&g, None, (10, DEFAULT_LIMITS.1)),
        Err(CodecError::TooDeep { max: 10 })
    );
    // Through serde's buffering of untagged enums (deserialize_any) too.
    assert_eq!(
        from::<Any>(&g),
        Err(CodecError::TooDeep {
            max: DEFAULT_MAX_DEPTH
        })
    );
    // An ignored field holding the cycle is not looked into.
    let mut g = cycle();
    let root = std::mem::take(g.root_mut());
    g.set_root(Value::Dict(vec![
        (s("x"), Value::Int(1)),
        (s("y"), Value::Int(2)),
        (s("label"), Value::None),
        (s("junk"), root),
    ]));
    assert!(from::<Point>(&g).is_ok());
    // A cycle of instances.
    let mut g = Graph::default();
    let i = g.add_node(Value::None);
    if let Some(v) = g.node_mut(i) {
        *v = Value::Instance {
            tag: Bytes::from_static(b"a.B"),
            state: Box::new(Value::Shared(i)),
        };
    }
    g.set_root(Value::Shared(i));
    assert!(from::<Any>(&g).is_err());
    assert!(from::<Point>(&g).is_err());
}

#[test]
fn deep_values_are_an_error_on_a_small_stack() {
    let mut v = Value::List(vec![]);
    for _ in 0..10_000 {
        v = Value::List(vec![v]);
    }
    let g = Graph::new(v);
    // 10 000 levels would take megabytes of stack; the limit keeps it to 64 (in a debug build
    // a level of this format takes a few KiB, so the stack is not as small as it could be).
    let r = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || {
            let r = from::<Tree>(&g);
            // Dropping a deep value recurses: keep it from this small stack.
            std::mem::forget(g);
            r
        })
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(
        r,
        Err(CodecError::TooDeep {
            max: DEFAULT_MAX_DEPTH
        })
    );
    // Up to the limit decodes.
    let mut v = Value::List(vec![]);
    for _ in 0..9 {
        v = Value::List(vec![v]);
    }
    assert!(from_graph::<Tree>(&Graph::new(v.clone()), None, (20, DEFAULT_LIMITS.1)).is_ok());
    assert_eq!(
        from_graph::<Tree>(&Graph::new(v), None, (15, DEFAULT_LIMITS.1)),
        Err(CodecError::TooDeep { max: 15 })
    );
}

#[test]
fn broken_edges_are_errors() {
    let g = Graph::from_parts(Value::Shared(jelly::NodeId(3)), vec![]);
    decode_error(from::<u8>(&g));
    // A node that is only an edge.
    let g = Graph::from_parts(
        Value::Shared(jelly::NodeId(0)),
        vec![Value::Shared(jelly::NodeId(0))],
    );
    decode_error(from::<Vec<u8>>(&g));
}

struct Nothing;

static NOTHING: crate::object::Interface = crate::object::Interface {
    name: "Nothing",
    methods: &[],
};

impl crate::object::Dispatch for Nothing {
    fn interface(&self) -> &'static crate::object::Interface {
        &NOTHING
    }
    fn dispatch(
        self: std::sync::Arc<Self>,
        call: crate::object::IncomingCall,
    ) -> crate::object::BoxFuture<crate::object::Reply> {
        Box::pin(std::future::ready(call.no_such_method(&NOTHING)))
    }
}

/// Exports as `Remote(100 + n)`, the n-th export; imports `Remote(n)` and `Local(n)` as
/// `objects[n]`; records both.
#[derive(Default)]
struct FakeRefs {
    objects: Vec<ObjectRef>,
    exported: RefCell<Vec<ObjectRef>>,
    imported: RefCell<Vec<Value>>,
}

impl JellyRefs for FakeRefs {
    fn export(&self, r: &ObjectRef) -> Result<Value, String> {
        let mut e = self.exported.borrow_mut();
        e.push(r.clone());
        Ok(Value::Remote(ObjectId::Num(99 + e.len() as i64)))
    }

    fn import(&self, flavor: &Value) -> Result<ObjectRef, String> {
        self.imported.borrow_mut().push(flavor.clone());
        match flavor {
            Value::Remote(ObjectId::Num(n)) | Value::Local(ObjectId::Num(n)) => self
                .objects
                .get(*n as usize)
                .cloned()
                .ok_or_else(|| format!("no object {n}")),
            _ => Err("not a flavor this test knows".into()),
        }
    }
}

#[test]
fn object_refs_go_through_the_connections_refs() {
    let a = ObjectRef::local(Nothing);
    let b = ObjectRef::local(Nothing);
    let refs = FakeRefs::default();
    let g = to_graph(&(a.clone(), Some(b.clone()), vec![a.clone()]), Some(&refs)).unwrap();
    assert_eq!(
        g.root(),
        &Value::Tuple(vec![
            Value::Remote(ObjectId::Num(100)),
            Value::Remote(ObjectId::Num(101)),
            Value::List(vec![Value::Remote(ObjectId::Num(102))]),
        ])
    );
    assert_eq!(
        *refs.exported.borrow(),
        vec![a.clone(), b.clone(), a.clone()]
    );
    wire(&g);

    let refs = FakeRefs {
        objects: vec![a.clone(), b.clone()],
        ..FakeRefs::default()
    };
    let sent = Graph::new(Value::Tuple(vec![
        Value::Remote(ObjectId::Num(1)),
        Value::Local(ObjectId::Num(0)),
        Value::None,
    ]));
    let (x, y, z): (ObjectRef, ObjectRef, Option<ObjectRef>) =
        from_graph(&sent, Some(&refs), DEFAULT_LIMITS).unwrap();
    assert_eq!((x, y, z), (b.clone(), a.clone(), None));
    assert_eq!(
        *refs.imported.borrow(),
        vec![
            Value::Remote(ObjectId::Num(1)),
            Value::Local(ObjectId::Num(0))
        ]
    );
    // An import the connection refuses, and a value that is no flavor.
    let m = decode_error(from_graph::<ObjectRef>(
        &Graph::new(Value::Remote(ObjectId::Num(7))),
        Some(&refs),
        DEFAULT_LIMITS,
    ));
    assert!(m.contains("no object 7"), "{m}");
    decode_error(from_graph::<ObjectRef>(
        &Graph::new(Value::Int(0)),
        Some(&refs),
        DEFAULT_LIMITS,
    ));
}

#[test]
fn object_refs_without_a_connection_are_errors() {
    let a = ObjectRef::local(Nothing);
    assert!(matches!(to_graph(&a, None), Err(CodecError::Encode(_))));
    assert!(matches!(
        to_graph(&vec![a], None),
        Err(CodecError::Encode(_))
    ));
    decode_error(from::<ObjectRef>(&Graph::new(Value::Remote(
        ObjectId::Num(0),
    ))));
}

#[test]
fn the_native_wire_of_an_object_ref_is_its_index() {
    let a = ObjectRef::local(Nothing);
    let (bytes, refs) = codec::encode(&(a.clone(), 7u8, a.clone()), None).unwrap();
    let (plain, _) = codec::encode(&(0u32, 7u8, 1u32), None).unwrap();
    assert_eq!(bytes, plain);
    assert_eq!(refs, vec![a.clone(), a.clone()]);
    let (x, n, y): (ObjectRef, u8, ObjectRef) = codec::decode(&bytes, refs).unwrap();
    assert_eq!((x, n, y), (a.clone(), 7, a));
}

#[test]
fn big_integers() {
    let n = BigInt(big("-123456789012345678901234567890123456789012345"));
    check(&n, Value::BigInt(n.0.clone()));
    check(&BigInt::from(5i64), Value::Int(5));
    assert_eq!(
        from_value::<BigInt>(Value::Int(-3)),
        Ok(BigInt::from(-3i64))
    );
    decode_error(from_value::<BigInt>(s("12")));
    // Conversions and text.
    assert_eq!(i128::try_from(BigInt::from(i128::MIN)), Ok(i128::MIN));
    assert_eq!(i128::try_from(n.clone()), Err(BigIntRangeError));
    assert_eq!(i64::try_from(BigInt::from(u64::MAX)), Err(BigIntRangeError));
    assert_eq!(n.to_string().parse::<BigInt>(), Ok(n.clone()));
    assert!("1x".parse::<BigInt>().is_err());
    assert!("9".repeat(5000).parse::<BigInt>().is_err());
    // Through pb's own codec: its text.
    let (bytes, _) = codec::encode(&n, None).unwrap();
    let (text, _) = codec::encode(&n.to_string(), None).unwrap();
    assert_eq!(bytes, text);
    assert_eq!(codec::decode::<BigInt>(&bytes, vec![]), Ok(n));
}

fn dec(coefficient: &str, exponent: i64) -> Decimal {
    Decimal(jelly::Decimal {
        coefficient: big(coefficient),
        exponent,
    })
}

#[test]
fn decimals_read_and_write_pythons_text() {
    // Python's str(Decimal(...)) for each.
    for (d, text) in [
        (dec("125", -2), "1.25"),
        (dec("150", -2), "1.50"),
        (dec("-5", 0), "-5"),
        (dec("123", 0), "123"),
        (dec("0", 0), "0"),
        (dec("0", -8), "0E-8"),
        (dec("0", 2), "0E+2"),
        (dec("15", 6), "1.5E+7"),
        (dec("100", 2), "1.00E+4"),
        (dec("1", -6), "0.000001"),
        (dec("1", -7), "1E-7"),
        (dec("-123", -5), "-0.00123"),
        (dec("12345", -2), "123.45"),
    ] {
        assert_eq!(d.to_string(), text);
        assert_eq!(text.parse::<Decimal>(), Ok(d), "{text}");
    }
    assert_eq!(" -1.5e3 ".parse::<Decimal>(), Ok(dec("-15", 2)));
    assert_eq!("1.".parse::<Decimal>(), Ok(dec("1", 0)));
    assert_eq!(".5".parse::<Decimal>(), Ok(dec("5", -1)));
    assert_eq!("+2E-3".parse::<Decimal>(), Ok(dec("2", -3)));
    for bad in [
        "", ".", "NaN", "Infinity", "1e", "1e+", "1.2.3", "--1", "1x", "e5",
    ] {
        assert!(bad.parse::<Decimal>().is_err(), "{bad:?}");
    }
}

#[test]
fn decimals_cross_as_decimals() {
    let d = dec("-150", -2);
    check(&d, Value::Decimal(d.0.clone()));
    assert_eq!(from_value::<Decimal>(Value::Int(3)), Ok(dec("3", 0)));
    decode_error(from_value::<Decimal>(s("1.5")));
    let (bytes, _) = codec::encode(&d, None).unwrap();
    assert_eq!(codec::decode::<Decimal>(&bytes, vec![]), Ok(d));
}

#[test]
fn sets_and_frozensets() {
    check(
        &Set(vec![1u8, 2]),
        Value::Set(vec![Value::Int(1), Value::Int(2)]),
    );
    check(
        &FrozenSet(vec!["a".to_owned()]),
        Value::FrozenSet(vec![s("a")]),
    );
    assert_eq!(
        from_value::<Set<u8>>(Value::List(vec![Value::Int(1)])),
        Ok(Set(vec![1]))
    );
    // Through pb's own codec: a seq.
    let (bytes, _) = codec::encode(&Set(vec![1u8, 2]), None).unwrap();
    let (seq, _) = codec::encode(&vec![1u8, 2], None).unwrap();
    assert_eq!(bytes, seq);
    assert_eq!(
        codec::decode::<FrozenSet<u8>>(&bytes, vec![]),
        Ok(FrozenSet(vec![1, 2]))
    );
}

/// `l = [1]; d = {"a": l, "b": l, "self": d}` with a flavor and a datetime inside.
fn shared_and_cyclic() -> Graph {
    let mut g = Graph::default();
    let l = g.add_node(Value::List(vec![Value::Int(1)]));
    let d = g.add_node(Value::Dict(vec![]));
    if let Some(Value::Dict(pairs)) = g.node_mut(d) {
        pairs.push((s("a"), Value::Shared(l)));
        pairs.push((s("b"), Value::Shared(l)));
        pairs.push((s("self"), Value::Shared(d)));
        pairs.push((s("remote"), Value::Remote(ObjectId::Num(4))));
        pairs.push((
            s("when"),
            Value::Date(jelly::Date {
                year: 2024,
                month: 2,
                day: 29,
            }),
        ));
    }
    g.set_root(Value::Shared(d));
    g
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Holder {
    name: String,
    first: Dynamic,
    second: Dynamic,
}

#[test]
fn dynamic_keeps_sharing_and_cycles() {
    let original = shared_and_cyclic();
    let plain = Dynamic::from(Value::List(vec![Value::Int(1), s("two")]));
    let h = Holder {
        name: "h".into(),
        first: Dynamic(original.clone()),
        second: plain.clone(),
    };
    // No connection needed: the flavor inside is data.
    let g = to(&h);
    assert_eq!(g.node_count(), 2);
    let Value::Dict(fields) = g.root() else {
        panic!("{g:?}")
    };
    assert!(matches!(fields[1].1, Value::Shared(_)));
    assert_eq!(fields[2].1, Value::List(vec![Value::Int(1), s("two")]));
    let back: Holder = from(&over_wire(&g)).unwrap();
    assert!(back.first.0.equivalent(&original), "{:?}", back.first.0);
    assert!(back.second.0.equivalent(&plain.0));
    // Nodes after the first dynamic's are renumbered: a second one keeps its own.
    let pair = (Dynamic(original.clone()), Dynamic(original.clone()));
    let g = to(&pair);
    assert_eq!(g.node_count(), 4);
    let (x, y): (Dynamic, Dynamic) = from(&over_wire(&g)).unwrap();
    assert!(x.0.equivalent(&original) && y.0.equivalent(&original));
    // Through pb's own codec: its Banana bytes.
    let (bytes, _) = codec::encode(&h, None).unwrap();
    let back: Holder = codec::decode(&bytes, vec![]).unwrap();
    assert!(back.first.0.equivalent(&original));
    assert_eq!(back.name, "h");
}

#[test]
fn dynamic_takes_only_what_its_value_reaches() {
    // [l, d] where d's node is only reached from the second element.
    let mut g = shared_and_cyclic();
    let d = g.root().clone();
    let extra = g.add_node(Value::List(vec![s("unreached")]));
    g.set_root(Value::Tuple(vec![Value::Int(0), d]));
    let (n, dynamic): (u8, Dynamic) = from(&g).unwrap();
    assert_eq!(n, 0);
    assert!(dynamic.0.equivalent(&shared_and_cyclic()));
    assert!(dynamic.0.node_count() <= 2, "{extra:?} was taken");
    // A broken edge is an error, not a wrong node.
    let g = Graph::from_parts(Value::List(vec![Value::Shared(jelly::NodeId(5))]), vec![]);
    decode_error(from::<Dynamic>(&g));
    let bad = Dynamic(Graph::from_parts(
        Value::List(vec![Value::Shared(jelly::NodeId(5))]),
        vec![],
    ));
    assert!(to_graph(&bad, None).is_err());
}

/// The state Twisted 26.10 sends for `pb.Error("pb.Error message")` raised as `MyErr`, with an
/// extra key some Failures carry.
fn twisted_failure() -> Value {
    Value::Instance {
        tag: Bytes::from_static(b"twisted.spread.pb.CopyableFailure"),
        state: Box::new(Value::Dict(vec![
            (s("type"), b(b"__main__.MyErr")),
            (s("value"), s("pb.Error message")),
            (s("traceback"), s("Traceback unavailable\n")),
            (
                s("parents"),
                Value::List(vec![
                    s("__main__.MyErr"),
                    s("twisted.spread.pb.Error"),
                    s("builtins.Exception"),
                    s("builtins.BaseException"),
                    s("builtins.object"),
                ]),
            ),
            (s("frames"), Value::List(vec![])),
            (s("stack"), Value::List(vec![])),
            (s("tb"), Value::None),
            (s("count"), Value::Int(5)),
            (s("captureVars"), Value::Bool(false)),
            (s("unsafeTracebacks"), Value::Bool(false)),
            (s("pickled"), Value::Int(0)),
        ])),
    }
}

#[test]
fn failures_are_copyable_failures() {
    let f = Failure::new("__main__.MyErr", "pb.Error message");
    let g = to(&f);
    let mut expected = twisted_failure();
    if let Value::Instance { state, .. } = &mut expected
        && let Value::Dict(pairs) = state.as_mut()
    {
        pairs.pop(); // pickled
        pairs[7].1 = Value::Int(0); // count
    }
    assert_eq!(g.root(), &expected);
    assert_eq!(from::<Failure>(&over_wire(&g)), Ok(f.clone()));
    // As Twisted sends it, extra keys and all.
    assert_eq!(from_value::<Failure>(twisted_failure()), Ok(f.clone()));
    assert!(f.check("__main__.MyErr") && f.check("twisted.spread.pb.Error"));
    assert!(!f.check("builtins.ValueError"));
    assert_eq!(f.to_string(), "__main__.MyErr: pb.Error message");
    let e: &dyn std::error::Error = &f;
    assert!(e.source().is_none());
    // Through pb's own codec.
    let (bytes, _) = codec::encode(&f, None).unwrap();
    assert_eq!(codec::decode::<Failure>(&bytes, vec![]), Ok(f));
}

#[test]
fn a_received_failure_may_lack_its_traceback_and_use_bytes() {
    let sent = Value::Instance {
        tag: Bytes::from_static(b"twisted.spread.pb.CopyableFailure"),
        state: Box::new(Value::Dict(vec![
            (b(b"type"), s("builtins.KeyError")),
            (s("value"), b(b"'k'")),
            (s("parents"), Value::List(vec![b(b"builtins.KeyError")])),
        ])),
    };
    assert_eq!(
        from_value::<Failure>(sent),
        Ok(Failure {
            type_name: "builtins.KeyError".into(),
            value: "'k'".into(),
            traceback: "Traceback unavailable\n".into(),
            parents: vec!["builtins.KeyError".into()],
        })
    );
    // Another tag, or no instance at all.
    let m = decode_error(from_value::<Failure>(Value::Instance {
        tag: Bytes::from_static(b"__main__.MyErr"),
        state: Box::new(Value::Dict(vec![])),
    }));
    assert!(
        m.contains("twisted.spread.pb.CopyableFailure") && m.contains("__main__.MyErr"),
        "{m}"
    );
    decode_error(from_value::<Failure>(s("Invalid Object")));
}

#[test]
fn failure_constructors() {
    let e = Failure::pb_error("no");
    assert_eq!(e.type_name, "twisted.spread.pb.Error");
    assert_eq!(
        e.parents,
        [
            "twisted.spread.pb.Error",
            "builtins.Exception",
            "builtins.BaseException",
            "builtins.object"
        ]
    );
    assert_eq!(e.traceback, "Traceback unavailable\n");
    let f = Failure::new("app.Denied", "nope");
    assert_eq!(f.parents.len(), 5);
    assert_eq!(f.parents[0], "app.Denied");
    assert!(f.check("builtins.Exception"));
}

#[test]
fn every_produced_graph_encodes() {
    let a = ObjectRef::local(Nothing);
    let refs = FakeRefs::default();
    let g = to_graph(
        &(
            Shape::Named {
                name: "n".into(),
                sides: 0,
            },
            Copied { x: 0, y: 0 },
            Failure::pb_error("x"),
            Some(a),
            Set(vec![Decimal(jelly::Decimal {
                coefficient: big("1"),
                exponent: -1,
            })]),
            (u64::MAX, i128::MIN, f64::NAN, b'x' as char),
            Dynamic(shared_and_cyclic()),
        ),
        Some(&refs),
    )
    .unwrap();
    over_wire(&g);
}
