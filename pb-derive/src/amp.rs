//! `#[derive(AmpCommand)]`, `#[derive(AmpFields)]` and `#[derive(AmpError)]`.
//!
//! Each goes parse (`parse`, syn to [`model`]) → validate (in `parse`, errors combined) → expand
//! (`expand`). On failure the errors are emitted with a placeholder impl, so the user sees the
//! real mistake and not a cascade of missing-impl errors.

mod expand;
mod model;
mod parse;

use proc_macro2::TokenStream;
use syn::DeriveInput;

/// Entry point of `#[derive(AmpFields)]`.
pub(crate) fn derive_fields(input: DeriveInput) -> TokenStream {
    match parse::fields_struct(&input) {
        Ok(s) => expand::fields(&s),
        Err(e) => with_fallback(e, expand::fields_fallback(&input)),
    }
}

/// Entry point of `#[derive(AmpCommand)]`.
pub(crate) fn derive_command(input: DeriveInput) -> TokenStream {
    match parse::command(&input) {
        Ok(c) => expand::command(&c),
        Err(e) => with_fallback(e, expand::command_fallback(&input)),
    }
}

/// Entry point of `#[derive(AmpError)]`.
pub(crate) fn derive_error(input: DeriveInput) -> TokenStream {
    match parse::errors(&input) {
        Ok(e) => expand::errors(&e),
        Err(e) => with_fallback(e, expand::errors_fallback(&input)),
    }
}

fn with_fallback(e: syn::Error, fallback: TokenStream) -> TokenStream {
    let mut out = e.to_compile_error();
    out.extend(fallback);
    out
}
