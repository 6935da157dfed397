//! Dynamic calls are checked against the method's signature: a call whose arguments or result
//! are of other types than the method's is refused with `BadArguments` naming the method,
//! whichever side the object lives on, instead of decoding its bytes by luck.

mod common;

use common::*;
use pb::{CallError, ObjectRef};

/// The bytes of `Scary { teeth: [1, 2, 3] }` are the bytes of the string "\x01\x02\x03".
#[derive(serde::Serialize)]
struct Scary {
    teeth: Vec<u8>,
}

#[pb::remote]
pub trait Greeter {
    async fn greet(&self, name: String) -> Result<String, ()>;
    async fn count(&self, data: Vec<u8>) -> Result<u64, ()>;
}

struct Hello;

impl Greeter for Hello {
    async fn greet(&self, name: String) -> Result<String, ()> {
        Ok(format!("hello {name}"))
    }

    async fn count(&self, data: Vec<u8>) -> Result<u64, ()> {
        Ok(data.len() as u64)
    }
}

async fn check(root: &ObjectRef) {
    // The dynamic call of the issue: a struct where the method takes a String.
    let scary = Scary {
        teeth: vec![1, 2, 3],
    };
    let refused = root
        .call::<_, String, ()>("greet", &(scary,))
        .await
        .expect_err("other argument types are refused");
    let CallError::BadArguments(message) = refused else {
        panic!("BadArguments expected, got {refused:?}");
    };
    assert!(
        message.starts_with("greet takes (String,)"),
        "the message names the method and what it takes: {message}"
    );
    // The right types, written as a caller may: `&str` for `String`, a slice for `Vec<u8>`.
    let hi = root
        .call::<_, String, ()>("greet", &("ann",))
        .await
        .expect("the right types");
    assert_eq!(hi, "hello ann");
    let n = root
        .call::<_, u64, ()>("count", &(&[1u8, 2, 3][..],))
        .await
        .expect("a slice for a Vec<u8>");
    assert_eq!(n, 3);
    // A result of another type is refused too, before the method runs.
    let refused = root
        .call::<_, u32, ()>("count", &(vec![1u8],))
        .await
        .expect_err("another result type is refused");
    assert!(
        matches!(&refused, CallError::BadArguments(m) if m.starts_with("count answers u64")),
        "{refused:?}"
    );
    // The typed stub carries the same signature and passes.
    let stub = <GreeterRef as pb::Remote>::from_object_ref(root.clone());
    assert_eq!(stub.greet("bo".into()).await, Ok("hello bo".into()));
    // A raw call carries no signature and is not checked.
    let (args, refs) = pb::codec::encode(&("cy",), None).expect("encodable");
    let outcome = root
        .call_raw("greet", args, refs)
        .await
        .expect("unchecked raw call");
    assert!(outcome.ok);
}

#[tokio::test]
async fn a_dynamic_call_with_other_types_is_refused_by_a_remote_object() {
    let (_server, client) = memory_pair(GreeterRef::new(Hello)).await;
    check(&client.root_ref()).await;
}

#[tokio::test]
async fn a_dynamic_call_with_other_types_is_refused_by_a_local_object() {
    check(GreeterRef::new(Hello).object_ref()).await;
}

/// Counts the calls its `greet` runs.
struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Greeter for Counting {
    async fn greet(&self, name: String) -> Result<String, ()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(format!("hello {name}"))
    }

    async fn count(&self, data: Vec<u8>) -> Result<u64, ()> {
        Ok(data.len() as u64)
    }
}

#[tokio::test]
async fn a_one_way_send_with_other_types_never_runs_the_method() {
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (_server, client) = memory_pair(GreeterRef::new(Counting(ran.clone()))).await;
    let root = client.root_ref();
    let scary = Scary {
        teeth: vec![1, 2, 3],
    };
    root.send("greet", &(scary,)).expect("sent");
    root.send("greet", &("eve",)).expect("sent");
    // Calls on one connection run in order: once this answer is back, both sends were handled.
    let hi = root
        .call::<_, String, ()>("greet", &("dee",))
        .await
        .expect("the connection goes on");
    assert_eq!(hi, "hello dee");
    assert_eq!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the well-typed send and call ran; the other send did not"
    );
}
