//! `#[copyable]`: a type passed by value, serialisable without a direct serde dependency.

use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn copyable(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let err =
            syn::Error::new_spanned(attr, "#[pb::copyable] takes no arguments").to_compile_error();
        return quote!(#err #item);
    }
    let input: syn::DeriveInput = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[pb::copyable] applies to a struct or an enum",
            )
            .to_compile_error();
            return quote!(#err #item);
        }
    };
    if let syn::Data::Union(u) = &input.data {
        let err = syn::Error::new_spanned(u.union_token, "#[pb::copyable] cannot apply to a union")
            .to_compile_error();
        return quote!(#err #item);
    }
    let name = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    quote! {
        #[derive(::pb::__private::serde::Serialize, ::pb::__private::serde::Deserialize)]
        #[serde(crate = "::pb::__private::serde")]
        #input

        impl #impl_g ::pb::__private::Copyable for #name #ty_g #where_g {}
    }
}
