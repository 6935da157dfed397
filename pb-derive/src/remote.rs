//! `#[remote]`: a trait of async methods becomes a remote interface.

mod expand;
mod model;

use proc_macro2::TokenStream;

/// Entry point: parse, validate into the model, expand. On error, emit the errors and a
/// best-effort trait so the user sees one set of errors, not a cascade.
pub(crate) fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let krate = match crate_path(attr) {
        Ok(path) => path,
        Err(err) => return combine(err, item),
    };
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
        Ok(model) => expand::expand(&model, &krate),
        Err(err) => combine(err, quote::quote!(#item)),
    }
}

/// The path generated code names pb through: `::pb` unless `#[pb::remote(crate = path)]` says
/// otherwise (pb's own crates, or a crate that renamed its dependency).
fn crate_path(attr: TokenStream) -> syn::Result<syn::Path> {
    if attr.is_empty() {
        return Ok(syn::parse_quote!(::pb));
    }
    let mut path = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") && path.is_none() {
            path = Some(meta.value()?.parse::<syn::Path>()?);
            Ok(())
        } else {
            Err(meta.error("#[pb::remote] takes only `crate = path`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(path.unwrap_or_else(|| syn::parse_quote!(::pb)))
}

fn combine(err: syn::Error, item: TokenStream) -> TokenStream {
    let err = err.to_compile_error();
    quote::quote! { #err #item }
}
