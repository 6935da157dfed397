//! `#[pb::remote]` takes the names users write: parameters named like the generated code's own
//! locals (`signature`, `call`), methods named like those of the prelude's traits that take
//! `&self` (`to_owned`, `as_ref`), raw identifiers (called on the wire by their names), and methods under `#[cfg]`
//! or `#[deprecated]`.
#![deny(deprecated)]

mod common;

#[pb::remote]
pub trait Names {
    async fn verify(&self, message: Vec<u8>, signature: Vec<u8>) -> bool;
    async fn log(&self, call: String, caller: String) -> String;
    #[allow(non_snake_case)]
    async fn shout(&self, SIGNATURE: u8) -> u8;
    async fn to_owned(&self) -> String;
    async fn as_ref(&self, id: u32) -> u32;
    async fn clone_into(&self) -> u8;
    async fn r#type(&self) -> String;
    async fn r#match(&self, r#in: u32) -> u32;
    #[cfg(any())]
    async fn never_built(&self) -> u8;
    #[deprecated(note = "use verify")]
    async fn check(&self, message: Vec<u8>) -> bool;
}

struct TheNames;

impl Names for TheNames {
    async fn verify(&self, message: Vec<u8>, signature: Vec<u8>) -> bool {
        message == signature
    }
    async fn log(&self, call: String, caller: String) -> String {
        format!("{caller}: {call}")
    }
    #[allow(non_snake_case)]
    async fn shout(&self, SIGNATURE: u8) -> u8 {
        SIGNATURE * 2
    }
    async fn to_owned(&self) -> String {
        "owned".into()
    }
    async fn as_ref(&self, id: u32) -> u32 {
        id + 1
    }
    async fn clone_into(&self) -> u8 {
        3
    }
    async fn r#type(&self) -> String {
        "leaf".into()
    }
    async fn r#match(&self, r#in: u32) -> u32 {
        r#in * 2
    }
    #[allow(deprecated)]
    async fn check(&self, message: Vec<u8>) -> bool {
        message.is_empty()
    }
}

#[tokio::test]
async fn the_names_users_write_compile_and_are_called_by_them() {
    let (_server, client) = common::memory_pair(NamesRef::new(TheNames)).await;
    let names: NamesRef = client.root();
    assert_eq!(names.verify(vec![1], vec![1]).await, Ok(true));
    assert_eq!(
        names.log("dial".into(), "ann".into()).await,
        Ok("ann: dial".into())
    );
    assert_eq!(names.shout(21).await, Ok(42));
    assert_eq!(names.to_owned().await, Ok("owned".into()));
    assert_eq!(names.as_ref(1).await, Ok(2));
    assert_eq!(names.clone_into().await, Ok(3));
    assert_eq!(names.r#type().await, Ok("leaf".into()));
    assert_eq!(names.r#match(21).await, Ok(42));
    #[allow(deprecated)]
    let checked = names.check(Vec::new()).await;
    assert_eq!(checked, Ok(true));
    // Raw identifiers go by their names: in the interface, and to a call by name (as a
    // Twisted peer's `callRemote("type")`).
    let methods = <NamesRef as pb::Remote>::INTERFACE.methods;
    assert!(
        methods.contains(&"type") && methods.contains(&"match"),
        "{methods:?}"
    );
    assert!(!methods.iter().any(|m| m.starts_with("r#")), "{methods:?}");
    // A method left out by `#[cfg]` is left out of the interface too.
    assert!(!methods.contains(&"never_built"), "{methods:?}");
    let by_name: Result<String, pb::CallError<pb::Never>> =
        names.object_ref().call("type", &()).await;
    assert_eq!(by_name, Ok("leaf".into()));
}

/// A field skipped both ways (`skip_serializing` with `skip_deserializing`, which is `skip`) is
/// allowed; a copyable with a Twisted tag may use the attributes only a self-describing format
/// carries.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub kept: u32,
    #[serde(skip_serializing, skip_deserializing)]
    pub local: u32,
}

#[pb::copyable(twisted = "pbtest.Sparse")]
#[derive(Debug, Clone, PartialEq)]
pub struct Sparse {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nickname: Option<String>,
}

#[pb::remote]
pub trait Echoes {
    async fn skipped(&self, s: Skipped) -> Skipped;
}

struct TheEchoes;

impl Echoes for TheEchoes {
    async fn skipped(&self, s: Skipped) -> Skipped {
        s
    }
}

#[tokio::test]
async fn a_field_skipped_both_ways_round_trips_as_skip() {
    let (_server, client) = common::memory_pair(EchoesRef::new(TheEchoes)).await;
    let echoes: EchoesRef = client.root();
    let sent = Skipped { kept: 7, local: 9 };
    assert_eq!(
        echoes.skipped(sent).await,
        Ok(Skipped { kept: 7, local: 0 })
    );
    let _twisted_only = Sparse {
        name: "ada".into(),
        nickname: None,
    };
}

/// A type of the application's named `Caller` (a telephony app's caller id).
mod phone {
    #[pb::copyable]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Caller {
        pub number: String,
    }
}

#[pb::remote]
pub trait Switchboard {
    /// The application's `Caller`, written with its path: an ordinary parameter.
    async fn ring(&self, who: self::phone::Caller) -> String;
    /// pb's, written alone (as `use pb::Caller` brings it) or from `pb`: who is calling.
    async fn whoami(&self, caller: pb::Caller) -> bool;
}

struct TheSwitchboard;

impl Switchboard for TheSwitchboard {
    async fn ring(&self, who: self::phone::Caller) -> String {
        who.number
    }
    async fn whoami(&self, caller: pb::Caller) -> bool {
        caller.connection().is_some()
    }
}

#[tokio::test]
async fn a_type_of_the_applications_named_caller_is_an_ordinary_parameter() {
    let (_server, client) = common::memory_pair(SwitchboardRef::new(TheSwitchboard)).await;
    let board: SwitchboardRef = client.root();
    let who = phone::Caller {
        number: "555-0100".into(),
    };
    assert_eq!(board.ring(who).await.unwrap(), "555-0100");
    assert!(board.whoami().await.unwrap());
}
