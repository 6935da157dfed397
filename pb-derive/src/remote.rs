//! `#[remote]`: a trait of async methods becomes a remote interface.

mod expand;
mod model;

use proc_macro2::TokenStream;

/// Entry point: parse, validate into the model, expand. On error, emit the errors and a
/// best-effort trait so the user sees one set of errors, not a cascade.
pub(crate) fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let err = syn::Error::new_spanned(attr, "#[pb::remote] takes no arguments");
        return combine(err, item);
    }
    let item: syn::ItemTrait = match syn::parse2(item.clone()) {
        Ok(t) => t,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[pb::remote] applies to a trait of async methods",
            );
            return combine(err, item);
        }
    };
    match model::Interface::from_trait(&item) {
        Ok(model) => expand::expand(&model),
        Err(err) => combine(err, quote::quote!(#item)),
    }
}

fn combine(err: syn::Error, item: TokenStream) -> TokenStream {
    let err = err.to_compile_error();
    quote::quote! { #err #item }
}
