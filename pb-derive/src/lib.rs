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

/// Turn a trait of async methods into a remote interface. See `pb::remote` for the full
/// description of what is generated.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    remote::remote(attr.into(), item.into()).into()
}

/// Mark a struct or enum as passed by value. See `pb::copyable`.
#[proc_macro_attribute]
pub fn copyable(attr: TokenStream, item: TokenStream) -> TokenStream {
    copyable::copyable(attr.into(), item.into()).into()
}

// --- AMP section (owned by the AMP work) ---
mod amp;
// --- end AMP section ---
