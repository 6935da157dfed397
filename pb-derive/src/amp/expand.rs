//! model → tokens. Generated code names everything through `::pb::amp::__private`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned;

use super::model::{Command, Errors, FieldsStruct, VariantShape};

pub(crate) fn fields(s: &FieldsStruct) -> TokenStream {
    let ident = &s.ident;
    let (impl_g, ty_g, where_c) = s.generics.split_for_impl();
    let puts = s.fields.iter().map(|f| {
        let (member, ty, wire) = (&f.member, &f.ty, &f.wire);
        quote_spanned! {ty.span()=>
            <#ty as ::pb::amp::__private::AmpArgument>::put(&self.#member, #wire, out)?;
        }
    });
    let takes = s.fields.iter().map(|f| {
        let (member, ty, wire) = (&f.member, &f.ty, &f.wire);
        quote_spanned! {ty.span()=>
            #member: <#ty as ::pb::amp::__private::AmpArgument>::take(#wire, from)?,
        }
    });
    let build = if s.named {
        quote! { Self { #(#takes)* } }
    } else {
        quote! { Self }
    };
    quote! {
        #[automatically_derived]
        impl #impl_g ::pb::amp::__private::AmpFields for #ident #ty_g #where_c {
            fn to_box(
                &self,
                out: &mut ::pb::amp::__private::AmpBox,
            ) -> ::pb::amp::__private::Result<(), ::pb::amp::__private::ArgumentError> {
                let _ = &out;
                #(#puts)*
                ::pb::amp::__private::Result::Ok(())
            }

            fn from_box(
                from: &::pb::amp::__private::AmpBox,
            ) -> ::pb::amp::__private::Result<Self, ::pb::amp::__private::ArgumentError> {
                let _ = &from;
                ::pb::amp::__private::Result::Ok(#build)
            }
        }
    }
}

pub(crate) fn command(c: &Command) -> TokenStream {
    let mut out = fields(&c.fields);
    let ident = &c.fields.ident;
    let (impl_g, ty_g, where_c) = c.fields.generics.split_for_impl();
    let name = &c.name;
    let response = c
        .response
        .as_ref()
        .map(|t| quote!(#t))
        .unwrap_or_else(|| quote!(()));
    let errors = c
        .errors
        .as_ref()
        .map(|t| quote!(#t))
        .unwrap_or_else(|| quote!(::pb::amp::__private::NoErrors));
    let requires_answer = c.requires_answer;
    out.extend(quote! {
        #[automatically_derived]
        impl #impl_g ::pb::amp::__private::AmpCommand for #ident #ty_g #where_c {
            const NAME: &'static str = #name;
            const REQUIRES_ANSWER: bool = #requires_answer;
            type Response = #response;
            type Error = #errors;
        }
    });
    out
}

pub(crate) fn errors(e: &Errors) -> TokenStream {
    let ident = &e.ident;
    let (impl_g, ty_g, where_c) = e.generics.split_for_impl();
    let mut codes = Vec::new();
    let mut descriptions = Vec::new();
    let mut fatals = Vec::new();
    let mut from_codes = Vec::new();
    for v in &e.variants {
        let (vi, code, fatal) = (&v.ident, &v.code, v.fatal);
        match &v.shape {
            VariantShape::Unit(desc) => {
                codes.push(quote! { Self::#vi => #code });
                descriptions
                    .push(quote! { Self::#vi => <::pb::amp::__private::String as ::core::convert::From<&str>>::from(#desc) });
                fatals.push(quote! { Self::#vi => #fatal });
                from_codes.push(quote! {
                    if code == #code {
                        return ::pb::amp::__private::Option::Some(Self::#vi);
                    }
                });
            }
            VariantShape::Description(ty) => {
                codes.push(quote! { Self::#vi(_) => #code });
                descriptions.push(quote! { Self::#vi(d) => ::std::string::ToString::to_string(d) });
                fatals.push(quote! { Self::#vi(_) => #fatal });
                from_codes.push(quote! {
                    if code == #code {
                        return ::pb::amp::__private::Option::Some(Self::#vi(
                            <#ty as ::core::convert::From<&str>>::from(description),
                        ));
                    }
                });
            }
        }
    }
    let empty_match = if e.variants.is_empty() {
        quote! { match *self {} }
    } else {
        TokenStream::new()
    };
    let (code_body, desc_body, fatal_body) = if e.variants.is_empty() {
        (empty_match.clone(), empty_match.clone(), empty_match)
    } else {
        (
            quote! { match self { #(#codes,)* } },
            quote! { match self { #(#descriptions,)* } },
            quote! { match self { #(#fatals,)* } },
        )
    };
    quote! {
        #[automatically_derived]
        impl #impl_g ::pb::amp::__private::AmpError for #ident #ty_g #where_c {
            fn code(&self) -> &'static [u8] {
                #code_body
            }

            fn description(&self) -> ::pb::amp::__private::String {
                #desc_body
            }

            fn is_fatal(&self) -> bool {
                #fatal_body
            }

            fn from_code(
                code: &[u8],
                description: &str,
            ) -> ::pb::amp::__private::Option<Self> {
                let _ = (&code, &description);
                #(#from_codes)*
                ::pb::amp::__private::Option::None
            }
        }

        #[automatically_derived]
        impl #impl_g ::core::fmt::Display for #ident #ty_g #where_c {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                let description = ::pb::amp::__private::AmpError::description(self);
                if description.is_empty() {
                    f.write_str(&::pb::amp::__private::String::from_utf8_lossy(
                        ::pb::amp::__private::AmpError::code(self),
                    ))
                } else {
                    f.write_str(&description)
                }
            }
        }

        #[automatically_derived]
        impl #impl_g ::std::error::Error for #ident #ty_g #where_c {}
    }
}

fn unreachable_body() -> TokenStream {
    quote! { ::core::unreachable!("this impl stands in for one that failed to derive") }
}

pub(crate) fn fields_fallback(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    let body = unreachable_body();
    quote! {
        impl #impl_g ::pb::amp::__private::AmpFields for #ident #ty_g #where_c {
            fn to_box(
                &self,
                _: &mut ::pb::amp::__private::AmpBox,
            ) -> ::pb::amp::__private::Result<(), ::pb::amp::__private::ArgumentError> {
                #body
            }

            fn from_box(
                _: &::pb::amp::__private::AmpBox,
            ) -> ::pb::amp::__private::Result<Self, ::pb::amp::__private::ArgumentError> {
                #body
            }
        }
    }
}

pub(crate) fn command_fallback(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    let mut out = fields_fallback(input);
    out.extend(quote! {
        impl #impl_g ::pb::amp::__private::AmpCommand for #ident #ty_g #where_c {
            const NAME: &'static str = "";
            type Response = ();
            type Error = ::pb::amp::__private::NoErrors;
        }
    });
    out
}

pub(crate) fn errors_fallback(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    let body = unreachable_body();
    quote! {
        impl #impl_g ::pb::amp::__private::AmpError for #ident #ty_g #where_c {
            fn code(&self) -> &'static [u8] { #body }
            fn description(&self) -> ::pb::amp::__private::String { #body }
            fn is_fatal(&self) -> bool { #body }
            fn from_code(_: &[u8], _: &str) -> ::pb::amp::__private::Option<Self> { #body }
        }
    }
}
