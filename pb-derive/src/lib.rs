//! Procedural macros for pb. Users reach them through the `pb` crate (`#[pb::remote]`,
//! `#[derive(pb::Copyable)]`, `#[derive(pb::AmpCommand)]`); generated code names everything
//! through `::pb::__private`, so users need no direct dependency on serde or bytes.
//!
//! # Layout
//! Each macro goes parse → model → validate → expand:
//! - `remote`: the `#[remote]` attribute on a trait of async methods;
//! - `copyable`: `#[derive(Copyable)]`;
//! - `amp`: `#[derive(AmpCommand)]` and friends, for AMP commands.

use proc_macro::TokenStream;

// --- AMP section (owned by the AMP work) ---
mod amp;
// --- end AMP section ---
