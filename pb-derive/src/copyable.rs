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
    // Reported beside the derives, not instead of them: serde then reads its attributes, and
    // this is the only error.
    // A copyable with a Twisted tag crosses Twisted PB as a dict, where these attributes work.
    let unreadable = args
        .twisted
        .is_none()
        .then(|| unreadable_serde(&input))
        .flatten()
        .map(|e| e.to_compile_error());
    let mut input = input;
    let helpers = bytes_fields_as_byte_strings(&input.ident, &mut input.data);
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
    let Some(hook) = args.state_for else {
        let marker = marker_impl(&input);
        return quote! {
            #[derive(#p::serde::Serialize, #p::serde::Deserialize)]
            #[serde(crate = "::pb::__private::serde")]
            #input

            #marker

            #helpers

            #unreadable
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

        #helpers

        #unreadable
    }
}

/// Give the byte-string fields that name no serde `with` of their own pb's encodings, with
/// the same bytes on the wire: `Vec<u8>` and `Box<[u8]>` are one byte string copied once
/// (`pb::zero_copy::vec`, `pb::zero_copy::boxed`) instead of an element at a time, and a field
/// whose type is named `Bytes` is sent uncopied and received as a slice of the frame when it
/// is `bytes::Bytes` (through the returned helper functions, which pick `pb::zero_copy` for
/// that type and serde's own encoding for any other type of that name).
fn bytes_fields_as_byte_strings(name: &syn::Ident, data: &mut syn::Data) -> TokenStream {
    let fields: Vec<&mut syn::Field> = match data {
        syn::Data::Struct(s) => s.fields.iter_mut().collect(),
        syn::Data::Enum(e) => e
            .variants
            .iter_mut()
            .flat_map(|v| v.fields.iter_mut())
            .collect(),
        syn::Data::Union(_) => Vec::new(),
    };
    let p = quote!(::pb::__private);
    let mut helpers = TokenStream::new();
    for (i, field) in fields.into_iter().enumerate() {
        if names_serde_with(&field.attrs) {
            continue;
        }
        if is_vec_u8(&field.ty) {
            field
                .attrs
                .push(syn::parse_quote!(#[serde(with = "::pb::zero_copy::vec")]));
        } else if is_boxed_u8(&field.ty) {
            field
                .attrs
                .push(syn::parse_quote!(#[serde(with = "::pb::zero_copy::boxed")]));
        } else if is_named_bytes(&field.ty) {
            let ser = quote::format_ident!("__pb_{}_field{}_serialize", name, i);
            let de = quote::format_ident!("__pb_{}_field{}_deserialize", name, i);
            let (ser_path, de_path) = (ser.to_string(), de.to_string());
            field.attrs.push(syn::parse_quote!(
                #[serde(serialize_with = #ser_path, deserialize_with = #de_path)]
            ));
            let ty = &field.ty;
            helpers.extend(quote! {
                #[doc(hidden)]
                #[allow(non_snake_case)]
                fn #ser<S: #p::serde::Serializer>(
                    value: &#ty,
                    s: S,
                ) -> ::core::result::Result<S::Ok, S::Error> {
                    use #p::{WireField as _, WireFieldSerde as _};
                    (&#p::Wire::<#ty>::new()).serialize_field(value, s)
                }

                #[doc(hidden)]
                #[allow(non_snake_case)]
                fn #de<'de, D: #p::serde::Deserializer<'de>>(
                    d: D,
                ) -> ::core::result::Result<#ty, D::Error> {
                    use #p::{WireField as _, WireFieldSerde as _};
                    (&#p::Wire::<#ty>::new()).deserialize_field(d)
                }
            });
        }
    }
    helpers
}

/// `Box<[u8]>`, however `Box`'s path is written.
fn is_boxed_u8(ty: &syn::Type) -> bool {
    one_type_argument(ty, "Box").is_some_and(|arg| {
        matches!(arg, syn::Type::Slice(s)
            if matches!(&*s.elem, syn::Type::Path(t) if t.qself.is_none() && t.path.is_ident("u8")))
    })
}

/// A type named `Bytes` (`Bytes`, `bytes::Bytes`, `pb::amp::Bytes`, ...), without generic
/// arguments: whether it is `bytes::Bytes` is left to the generated helpers to find out.
fn is_named_bytes(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "Bytes" && s.arguments.is_empty()))
}

/// `Vec<u8>`, however its path is written (`Vec<u8>`, `std::vec::Vec<u8>`, ...).
fn is_vec_u8(ty: &syn::Type) -> bool {
    one_type_argument(ty, "Vec").is_some_and(
        |arg| matches!(arg, syn::Type::Path(t) if t.qself.is_none() && t.path.is_ident("u8")),
    )
}

/// The type argument of `ty` if it is a path ending in `name<T>` (one type argument).
fn one_type_argument<'a>(ty: &'a syn::Type, name: &str) -> Option<&'a syn::Type> {
    let syn::Type::Path(p) = ty else {
        return None;
    };
    let last = p.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first() {
        Some(syn::GenericArgument::Type(arg))
            if last.ident == name && p.qself.is_none() && args.args.len() == 1 =>
        {
            Some(arg)
        }
        _ => None,
    }
}

/// The serde attributes whose output pb's native codec cannot read back: it does not describe
/// its data (no field names, no lengths of its own, no types), so it reads a value as its type
/// says, field after field, and serde's `deserialize_any` (which `tag`, `untagged` and `flatten`
/// need) is not there to ask. `skip_serializing_if` and the one-sided skips leave a field out
/// on one side only: the reader takes the next field's bytes for it.
const UNREADABLE: &[&str] = &[
    "tag",
    "content",
    "untagged",
    "flatten",
    "skip_serializing_if",
    "skip_serializing",
    "skip_deserializing",
];

/// The first serde attribute of `input` (on the type, a variant or a field) in [`UNREADABLE`].
fn unreadable_serde(input: &syn::DeriveInput) -> Option<syn::Error> {
    // The attributes of the type, of each variant and of each field, each holder's together:
    // `skip_serializing` with `skip_deserializing` on one field is `skip`.
    let mut holders: Vec<&[syn::Attribute]> = vec![&input.attrs];
    match &input.data {
        syn::Data::Struct(s) => holders.extend(s.fields.iter().map(|f| &f.attrs[..])),
        syn::Data::Enum(e) => {
            for v in &e.variants {
                holders.push(&v.attrs);
                holders.extend(v.fields.iter().map(|f| &f.attrs[..]));
            }
        }
        syn::Data::Union(_) => {}
    }
    holders.into_iter().find_map(|attrs| {
        let mut keys: Vec<syn::Path> = Vec::new();
        for a in attrs.iter().filter(|a| a.path().is_ident("serde")) {
            let _ = serde_keys(a, |path| keys.push(path.clone()));
        }
        let has = |name: &str| keys.iter().any(|k| k.is_ident(name));
        let both_skips = has("skip_serializing") && has("skip_deserializing");
        keys.iter()
            .find_map(|key| {
                let name = UNREADABLE.iter().find(|n| key.is_ident(n))?;
                let one_sided = matches!(*name, "skip_serializing" | "skip_deserializing");
                (!(one_sided && both_skips)).then_some((key, name))
            })
            .map(|(key, name)| {
                syn::Error::new_spanned(
                    key,
                    format!(
                        "`#[serde({name})]` cannot cross pb's native wire: its codec does not \
                         describe its data, so what this attribute writes cannot be read back \
                         (`tag`, `untagged` and `flatten` need a self-describing format; \
                         `skip_serializing_if` and one-sided skips leave a field out on one side \
                         only); use `skip` (both sides), `default`, or an `Option` field (a \
                         copyable with a Twisted tag, `#[pb::copyable(twisted = ...)]`, may use \
                         them for Twisted peers)"
                    ),
                )
            })
    })
}

/// Calls `each` with the key of every argument of the serde attribute `attr` (`rename` of
/// `#[serde(rename = "x", default)]`, then `default`), stepping over their values.
fn serde_keys(attr: &syn::Attribute, mut each: impl FnMut(&syn::Path)) -> syn::Result<()> {
    attr.parse_nested_meta(|meta| {
        each(&meta.path);
        if meta.input.peek(syn::Token![=]) {
            let _: syn::Expr = meta.value()?.parse()?;
        } else if meta.input.peek(syn::token::Paren) {
            let _nested;
            syn::parenthesized!(_nested in meta.input);
        }
        Ok(())
    })
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
            let parsed = serde_keys(a, |path| found |= CHOSEN.iter().any(|c| path.is_ident(c)));
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
    let unreadable = unreadable_serde(&input).map(|e| e.to_compile_error());
    let marker = marker_impl(&input);
    quote!(#marker #unreadable)
}

/// `impl Copyable for Type`. A generic type is copyable for the parameters that make it serde's
/// (serde's derives bound each parameter the same way), so the impl says so: `Self` serializes
/// and deserializes.
fn marker_impl(input: &syn::DeriveInput) -> TokenStream {
    let p = quote!(::pb::__private);
    let name = &input.ident;
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(
                Self: #p::serde::Serialize + #p::serde::de::DeserializeOwned
            ));
    }
    let (impl_g, ty_g, where_g) = generics.split_for_impl();
    quote! {
        impl #impl_g #p::Copyable for #name #ty_g #where_g {}
    }
}
