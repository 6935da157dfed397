//! Procedural macros for pb. Users reach them through the `pb` crate (`#[pb::remote]`,
//! `#[pb::copyable]`, `#[derive(pb::AmpCommand)]`); generated code names everything through
//! `::pb::__private`, so users need no direct dependency on serde or bytes.
//!
//! # Layout
//! Each macro goes parse → model (validated) → expand:
//! - `remote`: the `#[remote]` attribute on a trait of async methods;
//! - `copyable`: the `#[copyable]` attribute for by-value types;
//! - `amp`: AMP commands.

use proc_macro::TokenStream;

mod copyable;
mod remote;

/// Turns a trait of async methods into a remote interface: objects that implement it can be
/// called from the other side of a connection through a typed stub.
///
/// ```
/// #[pb::remote]
/// pub trait Greeter {
///     /// Methods are `async fn(&self, ...)`; the error type is a copyable value.
///     async fn greet(&self, name: String) -> Result<String, GreetError>;
///     /// A method that cannot fail returns its value itself.
///     async fn count(&self) -> u64;
///     /// A `pb::Caller` parameter is who is calling: filled in on the callee's side, and not
///     /// an argument of the stub (known by its name: `Caller` alone, or a path from `pb`).
///     async fn whoami(&self, caller: pb::Caller) -> Option<String>;
/// }
///
/// #[pb::copyable]
/// #[derive(Debug, PartialEq)]
/// pub enum GreetError { Empty }
///
/// struct Polite;
/// impl Greeter for Polite {
///     async fn greet(&self, name: String) -> Result<String, GreetError> {
///         if name.is_empty() { return Err(GreetError::Empty) }
///         Ok(format!("hello, {name}"))
///     }
///     async fn count(&self) -> u64 { 1 }
///     async fn whoami(&self, caller: pb::Caller) -> Option<String> {
///         caller.identity::<pb::Identity>()?.name().map(str::to_owned)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = pb::Server::bind("127.0.0.1:0").await?.serve(GreeterRef::new(Polite));
/// let conn = pb::Client::connect(server.local_addr()).await?;
/// let greeter: GreeterRef = conn.root();
/// assert_eq!(greeter.greet("ada".into()).await?, "hello, ada");
/// assert_eq!(greeter.greet("".into()).await, Err(pb::CallError::Remote(GreetError::Empty)));
/// assert_eq!(greeter.count().await?, 1);
/// assert_eq!(greeter.whoami().await?, None); // no login on this connection
/// # conn.close().await; server.shutdown().await; Ok(()) }
/// ```
///
/// # What it generates
/// For `trait Foo` (the names are fixed, so code can rely on them):
/// - the trait itself, `Send + Sync + 'static`, whose methods' futures are `Send`;
///   implementations write plain `async fn`s;
/// - `FooRef`, the typed stub: a reference to a `Foo`, local or remote, cheap to clone and
///   usable from many tasks, with one async method per trait method returning
///   `Result<T, pb::CallError<E>>` (`pb::CallError<pb::Never>` for a method that returns `T`
///   itself). `FooRef::new(obj)` wraps a local object so that it can be passed to peers;
///   `FooRef` implements `pb::Remote` (`from_object_ref`, `object_ref`) and serde's traits, so
///   it can be a parameter, a result or a field of a copyable value: the peer receives a
///   reference to the same object;
/// - `ServeFoo<T>`, the dispatcher that serves any `T: Foo` (what `FooRef::new` builds).
///
/// The method's error `E` arrives as `pb::CallError::Remote(e)`; the other variants of
/// `pb::CallError` are the system's failures (lost connection, no such object or method,
/// decoding, limits, deadline). Parameters and results are any serde types (copyable values,
/// references, streams, `Vec<u8>` and `bytes::Bytes` as byte strings), passed by value.
/// Parameters may also borrow bytes or text, `&[u8]` and `&str` (with the lifetime left out):
/// the caller passes a borrow, and the handler gets one into what was received (a large
/// `&[u8]` is lent from the received frame, uncopied); see `pb::zero_copy`.
///
/// ```
/// #[pb::remote]
/// pub trait Store {
///     async fn put(&self, key: &str, value: &[u8]) -> Result<u64, String>;
/// }
///
/// struct Memory;
///
/// impl Store for Memory {
///     async fn put(&self, key: &str, value: &[u8]) -> Result<u64, String> {
///         Ok((key.len() + value.len()) as u64)
///     }
/// }
///
/// # async fn call(store: StoreRef) -> Result<(), pb::CallError<String>> {
/// let written = store.put("greeting", b"hello").await?;
/// # let _ = written;
/// # Ok(())
/// # }
/// ```
///
/// # Why an attribute on a trait
/// An interface is its methods, and only an attribute on the trait sees them: a derive is
/// given a type's fields, never a trait's methods, so `#[derive]` could not generate the stub's
/// methods or the dispatcher's `match`. The attribute also writes the trait back with the
/// `Send` bounds that let its methods be served from any task.
///
/// # Names
/// A method may not be called `new`, `from_arc`, `object_ref`, `from_object_ref`,
/// `disconnected`, `is_connected`, nor `clone`, `eq`, `ne`, `hash`, `fmt`, `serialize`,
/// `deserialize`, `from`, `into`, `try_from` or `try_into`: the stub has inherent methods or
/// implements traits with those names, which would shadow the trait method (`stub.clone()`
/// would make a remote call). The error points at the name. Any other name works, those of the
/// prelude's other traits' methods included (`to_owned`, `as_ref`), and so does any parameter
/// name (the generated code's own names start with `__pb_`).
///
/// A method's name on the wire is its Rust name; a raw identifier (`r#type`) goes by its name
/// (`type`). Attributes on a method go onto the trait's method and the stub's; a `#[cfg]`
/// leaves the method out of the dispatcher and the interface as well, and a `#[deprecated]`
/// method warns its callers (the stub) but not the dispatcher that serves it.
///
/// A method's result is `T` (it cannot fail) or `Result<T, E>` written in full: a
/// `Result<T>` alias hides the error type from the macro, and is refused.
///
/// # Options
/// `#[pb::remote(crate = path)]` makes generated code name pb through `path` instead of `::pb`
/// (for a crate that renamed its dependency on pb). `#[pb::copyable]` and the AMP derives name
/// `::pb` always: a crate that renamed its dependency (`rpc = { package = "pb", ... }`) puts
/// `extern crate rpc as pb;` in its root for them.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    remote::remote(attr.into(), item.into()).into()
}

/// Marks a struct or an enum as passed by value (Twisted's `Copyable`): a peer receives a copy.
/// It derives serde's `Serialize` and `Deserialize` (through pb's own serde, so no direct serde
/// dependency is needed) and implements the `pb::Copyable` marker.
///
/// ```
/// #[pb::copyable]
/// #[derive(Debug, Clone, PartialEq)]
/// pub struct Point {
///     pub x: i32,
///     pub y: i32,
/// }
///
/// fn passed_by_value<T: pb::Copyable>(_: &T) {}
/// passed_by_value(&Point { x: 1, y: 2 });
/// ```
///
/// # Serde attributes pass through
/// The attribute adds the serde derives to the item as written, so serde's container, variant
/// and field attributes apply as they do on any serde type: `rename` and `rename_all`,
/// `skip` (a field left out of the copy and made with `Default` on the receiving side),
/// `default`, `with`, and the rest, except those whose output pb's native codec cannot read
/// back, which are refused at compile time: `tag`, `content`, `untagged` and `flatten` (they
/// need a format that describes its data, which the native codec, like bincode, does not),
/// and `skip_serializing_if`, `skip_serializing` and `skip_deserializing` (a field left out
/// on one side only; the reader would take the next field's bytes for it; the last two
/// together are `skip`, and allowed). A copyable with a Twisted tag
/// (`#[pb::copyable(twisted = ...)]`) may use them all: it crosses Twisted PB as a dict, which
/// describes itself (sent over pb's native wire, such a value fails at the peer).
///
/// Byte-string fields take pb's encodings by themselves (the bytes on the wire are the same
/// as serde's): a `Vec<u8>` or `Box<[u8]>` field is sent as one byte string, copied once,
/// instead of an element at a time (`pb::zero_copy::vec`, `pb::zero_copy::boxed`), and a
/// `bytes::Bytes` field is sent from where it is and received as a slice of the frame when it
/// is large (`pb::zero_copy`; another type that happens to be named `Bytes` keeps serde's
/// encoding). A field whose own serde attributes choose its encoding (`with`,
/// `serialize_with`, `deserialize_with`) or leave it out (`skip...`) is left as it is.
/// `#[derive(pb::Copyable)]` cannot change the fields; there, write
/// `#[serde(with = "pb::zero_copy::vec")]` (or `::boxed`, or `pb::zero_copy`) on them.
///
/// ```
/// #[pb::copyable]
/// #[derive(Debug, PartialEq)]
/// #[serde(rename_all = "camelCase")]
/// pub struct Upload {
///     #[serde(rename = "name")]
///     pub file_name: String,
///     /// One byte string, without an attribute.
///     pub contents: Vec<u8>,
///     /// Local bookkeeping: never sent; the receiver gets `0`.
///     #[serde(skip)]
///     pub retries: u32,
/// }
///
/// let sent = Upload { file_name: "a.txt".into(), contents: vec![1, 2, 3], retries: 7 };
/// let (bytes, refs) = pb::codec::encode(&sent, None).unwrap();
/// let received: Upload = pb::codec::decode(&bytes, refs).unwrap();
/// assert_eq!(received, Upload { retries: 0, ..sent });
/// ```
///
/// # Generic types
/// A generic type is copyable for the parameters that make it a serde type (as serde's derives
/// bound each parameter), so `Tagged<u32>` crosses by value and a parameter without serde's
/// traits is refused where the type is used, not where it is declared:
///
/// ```
/// #[pb::copyable]
/// #[derive(Debug, PartialEq)]
/// pub struct Tagged<T> {
///     pub tag: T,
///     pub data: Vec<u8>,
/// }
///
/// fn passed_by_value<T: pb::Copyable>(_: &T) {}
/// passed_by_value(&Tagged { tag: 7u32, data: vec![1, 2] });
/// ```
///
/// # A state per peer: `state_for`
/// `#[pb::copyable(state_for = path)]` names a `fn(&Self, Option<&pb::Connection>) -> Self`
/// that picks the state each peer receives (Twisted's `getStateToCopyFor`): pb calls it each
/// time the value is sent, with the connection it is sent on (`None` for a call to a local
/// object, in-process). The connection tells who the peer is: its `identity` (recorded at
/// login, or by the application with `Connection::set_identity`), its address, its avatar.
/// The hook needs a type without generic parameters, and `Clone` is the usual way to write it.
///
/// Here an account's balance is sent in full only to its owner; other peers get it hidden:
///
/// ```
/// #[pb::copyable(state_for = Account::for_peer)]
/// #[derive(Debug, Clone, PartialEq)]
/// pub struct Account {
///     pub owner: String,
///     pub balance: Option<i64>,
/// }
///
/// impl Account {
///     fn for_peer(&self, peer: Option<&pb::Connection>) -> Account {
///         let Some(peer) = peer else { return self.clone() }; // in-process: everything
///         let viewer = peer.identity::<pb::Identity>();
///         if viewer.as_deref().and_then(pb::Identity::name) == Some(self.owner.as_str()) {
///             self.clone()
///         } else {
///             Account { balance: None, ..self.clone() }
///         }
///     }
/// }
///
/// #[pb::remote]
/// pub trait Bank {
///     async fn account(&self, owner: String) -> Account;
/// }
///
/// struct Vault;
/// impl Bank for Vault {
///     async fn account(&self, owner: String) -> Account {
///         Account { owner, balance: Some(100) }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A server and a client joined by an in-memory pipe; the server's end of the connection
/// // is told that its peer is ada (a portal records this at login).
/// let (a, b) = pb::transport::memory_pair();
/// let config = pb::Config::default();
/// let root = Some(BankRef::new(Vault).into());
/// let (server, client) = tokio::try_join!(
///     pb::Connection::establish(a, &config, pb::Side::Server, root, None),
///     pb::Connection::establish(b, &config, pb::Side::Client, None, None),
/// )?;
/// server.set_identity(pb::Identity::User("ada".into()));
///
/// let bank: BankRef = client.root();
/// assert_eq!(bank.account("ada".into()).await?.balance, Some(100));
/// assert_eq!(bank.account("bob".into()).await?.balance, None);
/// // In-process, the hook sees no connection: the whole state.
/// assert_eq!(BankRef::new(Vault).account("bob".into()).await?.balance, Some(100));
/// # Ok(()) }
/// ```
///
/// # Attribute or derive
/// A type that derives serde's traits itself takes the marker alone with
/// `#[derive(Serialize, Deserialize, pb::Copyable)]` (see [`macro@Copyable`]); `state_for`
/// needs the attribute, which writes the serde implementations around the hook. Interfaces
/// have no derive: see [`macro@remote`] for why they are an attribute on a trait.
#[proc_macro_attribute]
pub fn copyable(attr: TokenStream, item: TokenStream) -> TokenStream {
    copyable::copyable(attr.into(), item.into()).into()
}

/// Implements the `pb::Copyable` marker for a type that derives serde's `Serialize` and
/// `Deserialize` itself, for codebases that already do:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, pb::Copyable)]
/// #[serde(rename_all = "camelCase")]
/// pub struct Point {
///     pub x_pos: i32,
///     pub y_pos: i32,
/// }
///
/// fn passed_by_value<T: pb::Copyable>(_: &T) {}
/// passed_by_value(&Point { x_pos: 1, y_pos: 2 });
/// ```
///
/// The type's serde attributes are its own. A state per peer (`state_for`) needs the attribute
/// form, [`#[pb::copyable(state_for = f)]`](macro@copyable), which writes the serde
/// implementations around the hook; a derive cannot change them.
#[proc_macro_derive(Copyable)]
pub fn derive_copyable(input: TokenStream) -> TokenStream {
    copyable::derive(input.into()).into()
}

// --- AMP section (owned by the AMP work) ---
mod amp;

/// Derives `pb::amp::AmpCommand` (and `AmpFields`) for a struct whose named fields are the
/// command's arguments.
///
/// Container attributes, all optional: `#[amp(name = "Sum")]` (the wire name, default the struct's
/// name), `response = Type` (an `AmpFields` type, default `()`), `errors = Type` (an `AmpError`
/// enum, default `NoErrors`), `requires_answer = false`. Field attribute: `#[amp(name = "wire-name")]`.
/// A field's type is any `AmpValue` (required) or `Option` of one (optional).
#[proc_macro_derive(AmpCommand, attributes(amp))]
pub fn derive_amp_command(input: TokenStream) -> TokenStream {
    amp::derive_command(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

/// Derives `pb::amp::AmpFields` for a struct whose named fields are box keys: a response or an
/// `AmpList` row. Field attribute: `#[amp(name = "wire-name")]`.
#[proc_macro_derive(AmpFields, attributes(amp))]
pub fn derive_amp_fields(input: TokenStream) -> TokenStream {
    amp::derive_fields(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

/// Derives `pb::amp::AmpError` (plus `Display` and `std::error::Error`) for an enum of declared
/// errors. Each variant has `#[amp(code = "CODE")]`, optionally `fatal` (the responder closes
/// the connection after sending it) and, for unit variants, `description = "..."`. A variant is
/// a unit or holds its description in one field (`From<&str>` + `Display`, e.g. `String`).
#[proc_macro_derive(AmpError, attributes(amp))]
pub fn derive_amp_error(input: TokenStream) -> TokenStream {
    amp::derive_error(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}
// --- end AMP section ---
