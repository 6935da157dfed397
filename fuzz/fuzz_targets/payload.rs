//! The payload codec (bincode under its byte limits and the nesting-depth limit) decoding
//! arbitrary bytes as user types, recursive ones included: an error or a value, never a panic,
//! an abort on a huge claimed size, or a stack overflow.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use pb_core::codec;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Value {
    Leaf,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Node(Box<Value>),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    Maybe(Option<Box<Value>>),
    Pair(Box<Value>, Box<Value>),
    Record { a: u128, b: Box<Value> },
}

fn check<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = codec::decode::<T>(data, Vec::new()) {
        // Whatever decodes re-encodes to a value that decodes to the same thing.
        let (bytes, refs) = codec::encode(&v, None).expect("encode");
        assert!(refs.is_empty());
        assert_eq!(codec::decode::<T>(&bytes, Vec::new()).expect("decode"), v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => check::<Value>(rest),
        1 => check::<(String, Vec<u64>, Option<Value>)>(rest),
        2 => check::<Vec<Vec<BTreeMap<u8, String>>>>(rest),
        _ => check::<(i64, i64)>(rest),
    }
});
