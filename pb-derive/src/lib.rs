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

/// Turn a trait of async methods into a remote interface. See the `pb` crate's docs for the
/// full description of what is generated (`FooRef`, the typed stub, and `ServeFoo<T>`, the
/// dispatcher).
///
/// A method may not take a name of the stub's own: `new`, `from_arc`, `object_ref`,
/// `from_object_ref`, `disconnected`, `is_connected`, nor `clone`, `eq`, `ne`, `hash`, `fmt`,
/// `serialize`, `deserialize`, `from` or `into` (an inherent method of that name would shadow
/// the trait method, and `stub.clone()` would make a remote call); the error points at the name.
///
/// `#[pb::remote(crate = path)]` makes generated code name pb through `path` instead of `::pb`
/// (for a crate that renamed its dependency, and for pb's own crates: `crate = ::pb_core`).
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    remote::remote(attr.into(), item.into()).into()
}

/// Mark a struct or enum as passed by value: derives serde's `Serialize` and `Deserialize`
/// (through pb, so no direct serde dependency is needed) and implements `pb::Copyable`. Serde
/// attributes on the type and its fields pass through.
///
/// `#[pb::copyable(state_for = f)]`, with `f(&self, Option<&pb::Connection>) -> Self`, picks
/// the state each peer receives (Twisted's `getStateToCopyFor`).
///
/// For types that derive serde's traits themselves, `#[derive(pb::Copyable)]` implements
/// `pb::Copyable` alone. (An interface is an attribute on a trait, `#[pb::remote]`, not a
/// derive: a derive sees a type's fields, never a trait's methods.)
#[proc_macro_attribute]
pub fn copyable(attr: TokenStream, item: TokenStream) -> TokenStream {
    copyable::copyable(attr.into(), item.into()).into()
}

/// Implements `pb::Copyable` for a type that derives serde's `Serialize` and `Deserialize`
/// itself: `#[derive(Serialize, Deserialize, pb::Copyable)]`. A per-peer state
/// (`state_for`) needs the attribute form, `#[pb::copyable(state_for = f)]`, which derives the
/// serde traits too. The `pb` crate's docs show both.
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
