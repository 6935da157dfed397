//! `#[copyable]`: a type passed by value, serialisable without a direct serde dependency, with
//! an optional per-peer state hook (`#[copyable(state_for = path)]`).

use proc_macro2::TokenStream;
use quote::quote;

/// The attribute's arguments.
struct Args {
    state_for: Option<syn::ExprPath>,
}

fn parse_args(attr: TokenStream) -> syn::Result<Args> {
    let mut args = Args { state_for: None };
    if attr.is_empty() {
        return Ok(args);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("state_for") {
            args.state_for = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown #[pb::copyable] argument; expected `state_for = path`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(args)
}

pub(crate) fn copyable(attr: TokenStream, item: TokenStream) -> TokenStream {
    let fail = |err: syn::Error, item: &TokenStream| {
        let err = err.to_compile_error();
        quote!(#err #item)
    };
    let args = match parse_args(attr) {
        Ok(a) => a,
        Err(e) => return fail(e, &item),
    };
    let input: syn::DeriveInput = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[pb::copyable] applies to a struct or an enum",
            );
            return fail(err, &item);
        }
    };
    if let syn::Data::Union(u) = &input.data {
        let err = syn::Error::new_spanned(u.union_token, "#[pb::copyable] cannot apply to a union");
        return fail(err, &item);
    }
    let p = quote!(::pb::__private);
    let name = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    let Some(hook) = args.state_for else {
        return quote! {
            #[derive(#p::serde::Serialize, #p::serde::Deserialize)]
            #[serde(crate = "::pb::__private::serde")]
            #input

            impl #impl_g #p::Copyable for #name #ty_g #where_g {}
        };
    };
    if !input.generics.params.is_empty() {
        let err = syn::Error::new_spanned(
            &input.generics,
            "#[pb::copyable(state_for = ...)] does not support generic types",
        );
        return fail(err, &item);
    }
    // serde's `remote = "Self"` makes the derives inherent functions, which the trait impls
    // below wrap: the hook picks the state for the peer, the derived code encodes it.
    quote! {
        #[derive(#p::serde::Serialize, #p::serde::Deserialize)]
        #[serde(crate = "::pb::__private::serde", remote = "Self")]
        #input

        impl #p::serde::Serialize for #name {
            fn serialize<S: #p::serde::Serializer>(&self, s: S) -> ::core::result::Result<S::Ok, S::Error> {
                let peer = #p::current_peer();
                let state: #name = #hook(self, ::core::option::Option::as_ref(&peer));
                #name::serialize(&state, s)
            }
        }

        impl<'de> #p::serde::Deserialize<'de> for #name {
            fn deserialize<D: #p::serde::Deserializer<'de>>(d: D) -> ::core::result::Result<Self, D::Error> {
                #name::deserialize(d)
            }
        }

        impl #p::Copyable for #name {}
    }
}

/// `#[derive(Copyable)]`: the marker alone, for a type whose serde traits are derived already.
pub(crate) fn derive(item: TokenStream) -> TokenStream {
    let input: syn::DeriveInput = match syn::parse2(item) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    if let syn::Data::Union(u) = &input.data {
        return syn::Error::new_spanned(u.union_token, "pb::Copyable cannot apply to a union")
            .to_compile_error();
    }
    let p = quote!(::pb::__private);
    let name = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    quote! {
        impl #impl_g #p::Copyable for #name #ty_g #where_g {}
    }
}
