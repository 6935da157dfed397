//! Calls that cannot be served get an error answer and the connection keeps working.

mod common;

use common::*;
use pb::CallError;

#[tokio::test]
async fn unknown_method_gets_an_error_and_the_connection_survives() {
    let (_server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let root = client.root_ref();
    let r = root.call::<_, (), ()>("no_such_method", &(1u8,)).await;
    match r {
        Err(CallError::NoSuchMethod(m)) => assert!(m.contains("no_such_method"), "{m}"),
        other => panic!("expected NoSuchMethod, got {other:?}"),
    }
    let k: KitchenRef = client.root();
    assert_eq!(k.add(1, 1).await, Ok(2));
}

#[tokio::test]
async fn undecodable_arguments_get_an_error_and_the_connection_survives() {
    let (_server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let root = client.root_ref();
    // `add` takes two i64s; a string is not that.
    let r = root.call::<_, i64, TestError>("add", &("forty-two",)).await;
    assert!(matches!(r, Err(CallError::BadArguments(_))), "{r:?}");
    // A caller that expects another result type is refused before the method runs: its
    // signature says which type it expects.
    let r = root
        .call::<_, String, TestError>("add", &(1i64, 2i64))
        .await;
    assert!(
        matches!(&r, Err(CallError::BadArguments(m)) if m.starts_with("add answers i64")),
        "{r:?}"
    );
    // An answer that does not decode as the type the caller expects (a raw call carries no
    // signature) is a caller-side error.
    let (args, refs) = pb::codec::encode(&(1i64, 2i64), None).unwrap();
    let outcome = root.call_raw("add", args, refs).await.unwrap();
    let r = pb::dispatch::decode_outcome::<String, TestError>(outcome);
    assert!(matches!(r, Err(CallError::BadAnswer(_))), "{r:?}");
    let k: KitchenRef = client.root();
    assert_eq!(k.add(2, 2).await, Ok(4));
}

#[tokio::test]
async fn no_root_served_is_no_such_object() {
    let (a, b) = pb::transport::memory_pair();
    let config = pb::Config::default();
    let (_s, client) = tokio::try_join!(
        pb::Connection::establish(a, &config, pb::Side::Server, None, None),
        pb::Connection::establish(b, &config, pb::Side::Client, None, None),
    )
    .unwrap();
    let k: KitchenRef = client.root();
    assert!(matches!(k.add(1, 2).await, Err(CallError::NoSuchObject(_))));
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_panicking_handler_is_an_internal_error_not_a_hang() {
    #[pb::remote]
    trait Fragile {
        async fn boom(&self) -> Result<(), String>;
        async fn fine(&self) -> Result<u8, String>;
    }
    struct F;
    impl Fragile for F {
        async fn boom(&self) -> Result<(), String> {
            panic!("handler bug")
        }
        async fn fine(&self) -> Result<u8, String> {
            Ok(7)
        }
    }
    let (server, client) = memory_pair(FragileRef::new(F)).await;
    let f: FragileRef = client.root();
    assert!(matches!(f.boom().await, Err(CallError::Internal(_))));
    assert_eq!(f.fine().await, Ok(7));
    assert_eq!(server.stats().tables.in_flight_calls, 0);
}

/// A value whose `Deserialize` is user code that panics on 13 (a `From` conversion with an
/// `assert!`, a validating constructor): the callee runs it on the caller's arguments, before
/// the handler's future exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Picky(pub u32);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        assert!(v != 13, "Picky refuses 13");
        Ok(Picky(v))
    }
}

#[pb::remote]
pub trait Decoding {
    /// Takes a `Picky`, whose decoding panics on 13.
    async fn take(&self, p: Picky) -> Result<u32, String>;
    /// Answers at once.
    async fn ping(&self) -> Result<u8, String>;
}

struct DecodingImpl;

impl Decoding for DecodingImpl {
    async fn take(&self, p: Picky) -> Result<u32, String> {
        Ok(p.0)
    }
    async fn ping(&self) -> Result<u8, String> {
        Ok(1)
    }
}

/// A panic in the user code that decodes a call's arguments (made before the handler's future,
/// in the generated dispatcher) is the handler's failure: that call fails with `Internal` at
/// once, and the connection goes on (docs/guide/errors.md, "One failure costs one call").
#[tokio::test(start_paused = true)]
async fn a_panic_while_decoding_arguments_fails_that_call_only_and_does_not_hang_it() {
    let (server, client) = memory_pair(DecodingRef::new(DecodingImpl)).await;
    let d: DecodingRef = client.root();
    assert_eq!(d.take(Picky(7)).await, Ok(7));
    let minute = std::time::Duration::from_secs(60);
    let r = tokio::time::timeout(minute, d.take(Picky(13))).await;
    assert!(
        matches!(r, Ok(Err(CallError::Internal(_)))),
        "{r:?} (Err(Elapsed): the call hung)"
    );
    assert_eq!(tokio::time::timeout(minute, d.ping()).await, Ok(Ok(1)));
    assert!(!server.is_closed() && !client.is_closed());
    assert_eq!(server.stats().tables.in_flight_calls, 0);
}

/// The same for an object in this process: the caller gets `Internal`, its task does not panic.
#[tokio::test]
async fn a_panic_while_decoding_arguments_of_a_local_call_is_internal_not_the_caller_s_panic() {
    let local = DecodingRef::new(DecodingImpl);
    let joined = tokio::spawn(async move { local.take(Picky(13)).await }).await;
    assert!(
        matches!(joined, Ok(Err(CallError::Internal(_)))),
        "the caller's task panicked: {:?}",
        joined.as_ref().map_err(|e| e.is_panic())
    );
}
