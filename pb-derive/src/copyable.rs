//! `#[copyable]`: a type passed by value, serialisable without a direct serde dependency, with
//! an optional per-peer state hook (`#[copyable(state_for = path)]`).

use proc_macro2::TokenStream;
use quote::quote;

/// The attribute's arguments.
struct Args {
    state_for: Option<syn::ExprPath>,
    /// The Twisted PB type tag (`twisted = "pbtest.Point"`).
    twisted: Option<syn::LitStr>,
}

fn parse_args(attr: TokenStream) -> syn::Result<Args> {
    let mut args = Args {
        state_for: None,
        twisted: None,
    };
    if attr.is_empty() {
        return Ok(args);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("state_for") {
            args.state_for = Some(meta.value()?.parse()?);
            Ok(())
        } else if meta.path.is_ident("twisted") {
            let tag: syn::LitStr = meta.value()?.parse()?;
            if tag.value().is_empty() || tag.value().bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(syn::Error::new_spanned(
                    &tag,
                    "a Twisted type tag is a non-empty name without spaces, such as \"pbtest.Point\"",
                ));
            }
            args.twisted = Some(tag);
            Ok(())
        } else {
            Err(meta.error(
                "unknown #[pb::copyable] argument; expected `state_for = path` or `twisted = \"tag\"`",
            ))
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
    let mut input = input;
    bytes_fields_as_byte_strings(&mut input.data);
    if let Some(tag) = &args.twisted {
        if !matches!(
            &input.data,
            syn::Data::Struct(syn::DataStruct {
                fields: syn::Fields::Named(_),
                ..
            })
        ) {
            let err = syn::Error::new_spanned(
                tag,
                "#[pb::copyable(twisted = ...)] applies to a struct with named fields (its state is a dict)",
            );
            return fail(err, &item);
        }
        // The serde name carries the tag to the PB dialect's serializer; bincode ignores it.
        let name = format!("$pb::copyable={}", tag.value());
        input
            .attrs
            .push(syn::parse_quote!(#[serde(rename = #name)]));
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

/// Give every field typed `Vec<u8>` that names no serde `with` of its own the byte-string
/// encoding (`pb::zero_copy::vec`): one copy instead of an element at a time, with the same
/// bytes on the wire.
fn bytes_fields_as_byte_strings(data: &mut syn::Data) {
    let fields: Vec<&mut syn::Field> = match data {
        syn::Data::Struct(s) => s.fields.iter_mut().collect(),
        syn::Data::Enum(e) => e
            .variants
            .iter_mut()
            .flat_map(|v| v.fields.iter_mut())
            .collect(),
        syn::Data::Union(_) => Vec::new(),
    };
    for field in fields {
        if is_vec_u8(&field.ty) && !names_serde_with(&field.attrs) {
            field
                .attrs
                .push(syn::parse_quote!(#[serde(with = "::pb::zero_copy::vec")]));
        }
    }
}

/// `Vec<u8>`, however its path is written (`Vec<u8>`, `std::vec::Vec<u8>`, ...).
fn is_vec_u8(ty: &syn::Type) -> bool {
    let syn::Type::Path(p) = ty else {
        return false;
    };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    last.ident == "Vec"
        && p.qself.is_none()
        && args.args.len() == 1
        && matches!(args.args.first(), Some(syn::GenericArgument::Type(syn::Type::Path(t)))
            if t.qself.is_none() && t.path.is_ident("u8"))
}

/// Whether a field's serde attributes choose how it is encoded already (`with`,
/// `serialize_with`, `deserialize_with`) or leave it out (`skip...`): then it is left as it is.
fn names_serde_with(attrs: &[syn::Attribute]) -> bool {
    const CHOSEN: &[&str] = &[
        "with",
        "serialize_with",
        "deserialize_with",
        "skip",
        "skip_serializing",
        "skip_deserializing",
    ];
    attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .any(|a| {
            let mut found = false;
            let parsed = a.parse_nested_meta(|meta| {
                found |= CHOSEN.iter().any(|c| meta.path.is_ident(c));
                // Step over the argument's value, whatever it is.
                if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _nested;
                    syn::parenthesized!(_nested in meta.input);
                }
                Ok(())
            });
            // An attribute this cannot read is serde's to judge: leave the field alone.
            found || parsed.is_err()
        })
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
