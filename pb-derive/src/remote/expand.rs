//! Generate the trait, its typed stub (`FooRef`) and its dispatcher (`ServeFoo`).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use super::model::{Borrowed, Interface};

pub(crate) fn expand(model: &Interface, krate: &syn::Path) -> TokenStream {
    let Interface {
        attrs,
        vis,
        name,
        methods,
    } = model;
    let stub = format_ident!("{}Ref", name);
    let serve = format_ident!("Serve{}", name);
    let p = quote!(#krate::__private);
    let name_str = name.to_string();

    let trait_methods = methods.iter().map(|m| {
        let attrs = &m.attrs;
        let mname = &m.name;
        let (ok, err) = (&m.ok, &m.err);
        let params = m.params.iter().map(|p| {
            let (n, t) = (&p.name, &p.ty);
            quote!(#n: #t)
        });
        let output = if m.infallible {
            quote!(#ok)
        } else {
            quote!(::core::result::Result<#ok, #err>)
        };
        quote! {
            #(#attrs)*
            fn #mname(&self, #(#params),*)
                -> impl ::core::future::Future<Output = #output>
                + ::core::marker::Send;
        }
    });

    let stub_methods = methods.iter().map(|m| {
        let attrs = &m.attrs;
        let mname = &m.name;
        // The wire name: a raw identifier (`r#type`) is called by its name (`type`).
        let mstr = mname.unraw().to_string();
        let ok = &m.ok;
        let err = err_type(m, &p);
        let sent: Vec<_> = m.params.iter().filter(|p| !p.is_caller).collect();
        let params = sent.iter().map(|p| {
            let (n, t) = (&p.name, &p.ty);
            quote!(#n: #t)
        });
        // `Wire` picks the zero-copy encoding for byte strings (see `pb::zero_copy`): an
        // owned `Vec<u8>` is held as `Bytes` while it is sent, uncopied.
        // A borrowed parameter is encoded from the caller's borrow (copied into the call's
        // frame): `&[u8]` as one byte string, `&str` as the string it is.
        let held = sent.iter().filter(|sp| sp.borrowed.is_none()).map(|sp| {
            let (n, t) = (&sp.name, &sp.ty);
            quote!(let #n = (&#p::Wire::<#t>::new()).hold(#n);)
        });
        let wired = sent.iter().map(|sp| {
            let (n, t) = (&sp.name, &sp.ty);
            match sp.borrowed {
                Some(Borrowed::Bytes) => quote!(#p::SliceRef(#n)),
                Some(Borrowed::Str) => quote!(#n),
                None => quote!((&#p::Wire::<#t>::new()).wire(&#n)),
            }
        });
        let sent_types = sent.iter().map(|sp| &sp.ty);
        // Plain arguments are encoded without the encode context.
        let plain = sent.iter().map(|sp| {
            let t = &sp.ty;
            quote!((&#p::Wire::<#t>::new()).plain())
        });
        quote! {
            #(#attrs)*
            pub async fn #mname(&self, #(#params),*)
                -> ::core::result::Result<#ok, #p::CallError<#err>>
            {
                use #p::{WireAny as _, WireBytes as _, WirePlain as _, WireSerde as _};
                static __PB_SIGNATURE: ::std::sync::OnceLock<#p::MethodSignature> =
                    ::std::sync::OnceLock::new();
                // Generated names start `__pb_`: a parameter may be called anything else.
                let __pb_signature =
                    #p::MethodSignature::cached::<(#(#sent_types,)*), #ok>(&__PB_SIGNATURE).wire();
                #(#held)*
                self.inner
                    .call_seed::<_, _, #ok, #err>(
                        #mstr,
                        &(#(#wired,)*),
                        true #(&& #plain)*,
                        (&#p::Wire::<#ok>::new()).seed(),
                        __pb_signature,
                    )
                    .await
            }
        }
    });

    let arms = methods.iter().map(|m| {
        let mname = &m.name;
        // Matched as bytes: the name was checked as UTF-8 when the call was decoded.
        let mbytes = syn::LitByteStr::new(mname.unraw().to_string().as_bytes(), mname.span());
        // A method left out by `#[cfg]` has no arm either.
        let cfgs = cfg_attrs(m);
        let sent: Vec<_> = m.params.iter().filter(|p| !p.is_caller).collect();
        let names = sent.iter().map(|p| &p.name);
        let types: Vec<_> = sent.iter().map(|p| &p.ty).collect();
        // What each parameter is decoded into: itself, or for a borrowed one the owned value
        // that the handler borrows (`Bytes` for `&[u8]`, `String` for `&str`).
        let decoded: Vec<_> = sent
            .iter()
            .map(|sp| match sp.borrowed {
                Some(Borrowed::Bytes) => quote!(#p::Bytes),
                Some(Borrowed::Str) => quote!(::std::string::String),
                None => {
                    let t = &sp.ty;
                    quote!(#t)
                }
            })
            .collect();
        let ok = &m.ok;
        let err = err_type(m, &p);
        let take_caller = m.params.iter().filter(|cp| cp.is_caller).map(|cp| {
            let n = &cp.name;
            let ty = &cp.ty;
            // Spanned at the parameter's type: a type of the user's own named `Caller` gets
            // an error there that says why.
            quote_spanned!(ty.span()=>
                let #n: #ty = <#ty as #p::CallerParam>::from_caller(__pb_call.caller());
            )
        });
        let args = m.params.iter().map(|p| {
            let n = &p.name;
            match p.borrowed {
                Some(_) => quote!(&#n),
                None => quote!(#n),
            }
        });
        // Called as the trait's method on `T`: method syntax on the `Arc` would find the
        // prelude's traits first for names such as `to_owned` or `as_ref`.
        let handler = quote!(<T as #name>::#mname(&*self.inner, #(#args),*).await);
        let call_inner = if m.infallible {
            quote!(::core::result::Result::<#ok, #p::Never>::Ok(#handler))
        } else {
            handler
        };
        quote! {
            #(#cfgs)*
            #mbytes => {
                static __PB_SIGNATURE: ::std::sync::OnceLock<#p::MethodSignature> =
                    ::std::sync::OnceLock::new();
                let __pb_signature =
                    #p::MethodSignature::cached::<(#(#types,)*), #ok>(&__PB_SIGNATURE);
                if let ::core::result::Result::Err(fault) = __pb_call.check_signature(__pb_signature) {
                    return ::std::boxed::Box::pin(#p::ready(::core::result::Result::Err(fault)));
                }
                let (#(#names,)*): (#(#decoded,)*) = match __pb_call.decode_args_seed(
                    #p::TupleSeed((#((&#p::Wire::<#decoded>::new()).seed(),)*))
                ) {
                    ::core::result::Result::Ok(args) => args,
                    ::core::result::Result::Err(fault) => {
                        return ::std::boxed::Box::pin(#p::ready(::core::result::Result::Err(fault)));
                    }
                };
                #(#take_caller)*
                let __pb_caller = #p::IncomingCall::into_caller(__pb_call);
                ::std::boxed::Box::pin(async move {
                    let result = #call_inner;
                    let result = result.map(|v| (&#p::Wire::<#ok>::new()).hold(v));
                    let result = match &result {
                        ::core::result::Result::Ok(v) => {
                            ::core::result::Result::Ok((&#p::Wire::<#ok>::new()).wire(v))
                        }
                        ::core::result::Result::Err(e) => ::core::result::Result::Err(e),
                    };
                    // Plain types are encoded without the encode context.
                    #p::encode_reply(
                        &__pb_caller,
                        result,
                        (
                            (&#p::Wire::<#ok>::new()).plain(),
                            (&#p::Wire::<#err>::new()).plain(),
                        ),
                    )
                })
            }
        }
    });
    let method_names = methods.iter().map(|m| {
        let (cfgs, wire) = (cfg_attrs(m), m.name.unraw().to_string());
        quote!(#(#cfgs)* #wire)
    });

    let stub_doc = format!(
        "A reference to a [`{name}`] object, local or remote: the typed stub generated by \
         `#[pb::remote]`.\n\nCheap to clone, `Send + Sync`. Equal and hashed as its `ObjectRef`: \
         by the route to the object (clones of one reference are equal; references received \
         over two connections are not, see `ObjectRef`'s docs). Create one for a local object \
         with [`{stub}::new`]; receive one from a peer in an argument, an answer, or as a \
         connection's root."
    );
    let serve_doc = format!(
        "The dispatcher generated by `#[pb::remote]` that serves any [`{name}`] implementation."
    );

    quote! {
        #(#attrs)*
        #vis trait #name: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #stub_doc]
        #[derive(::core::clone::Clone, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash, ::core::fmt::Debug)]
        #vis struct #stub {
            inner: #p::ObjectRef,
        }

        impl #stub {
            /// A reference to a local object, which can be called here and passed to peers.
            pub fn new<T: #name>(object: T) -> Self {
                Self::from_arc(::std::sync::Arc::new(object))
            }

            /// A reference to a shared local object. Each call makes a new reference, which
            /// is not equal to one made by another call and is exported to peers as an object
            /// of its own: clone the reference to pass one object around.
            pub fn from_arc<T: #name>(object: ::std::sync::Arc<T>) -> Self {
                Self { inner: #p::ObjectRef::local(#serve::from_arc(object)) }
            }

            /// The untyped reference.
            pub fn object_ref(&self) -> &#p::ObjectRef {
                &self.inner
            }

            /// Completes when the connection this reference depends on is lost.
            pub async fn disconnected(&self) {
                self.inner.disconnected().await
            }

            /// Whether calls can currently reach the object.
            pub fn is_connected(&self) -> bool {
                self.inner.is_connected()
            }

            #(#stub_methods)*
        }

        impl #p::Remote for #stub {
            const INTERFACE: &'static #p::Interface = &#p::Interface {
                name: #name_str,
                methods: &[#(#method_names),*],
            };

            fn from_object_ref(object: #p::ObjectRef) -> Self {
                Self { inner: object }
            }

            fn object_ref(&self) -> &#p::ObjectRef {
                &self.inner
            }
        }

        impl ::core::convert::From<#stub> for #p::ObjectRef {
            fn from(r: #stub) -> Self {
                r.inner
            }
        }

        impl #p::serde::Serialize for #stub {
            fn serialize<S: #p::serde::Serializer>(&self, s: S) -> ::core::result::Result<S::Ok, S::Error> {
                #p::serde::Serialize::serialize(&self.inner, s)
            }
        }

        impl<'de> #p::serde::Deserialize<'de> for #stub {
            fn deserialize<D: #p::serde::Deserializer<'de>>(d: D) -> ::core::result::Result<Self, D::Error> {
                ::core::result::Result::map(
                    <#p::ObjectRef as #p::serde::Deserialize<'de>>::deserialize(d),
                    |inner| Self { inner },
                )
            }
        }

        #[doc = #serve_doc]
        #vis struct #serve<T> {
            inner: ::std::sync::Arc<T>,
        }

        impl<T: #name> #serve<T> {
            /// Serve `object`.
            pub fn new(object: T) -> Self {
                Self { inner: ::std::sync::Arc::new(object) }
            }

            /// Serve a shared object.
            pub fn from_arc(object: ::std::sync::Arc<T>) -> Self {
                Self { inner: object }
            }
        }

        impl<T: #name> #p::Dispatch for #serve<T> {
            fn interface(&self) -> &'static #p::Interface {
                <#stub as #p::Remote>::INTERFACE
            }

            // Serving a deprecated method is no use of it: its callers are warned by the stub.
            // The parameters' names are linted where the user wrote them, on the trait.
            #[allow(deprecated, non_snake_case)]
            fn dispatch(
                self: ::std::sync::Arc<Self>,
                mut __pb_call: #p::IncomingCall,
            ) -> #p::BoxFuture<#p::Reply> {
                use #p::{WireAny as _, WireBytes as _, WirePlain as _, WireSerde as _};
                match __pb_call.method_bytes() {
                    #(#arms)*
                    _ => {
                        let reply = __pb_call.no_such_method(<#stub as #p::Remote>::INTERFACE);
                        ::std::boxed::Box::pin(#p::ready(reply))
                    }
                }
            }
        }
    }
}

/// The error type a method's callers see: its own, or `Never` for one that cannot fail.
fn err_type(m: &super::model::Method, p: &TokenStream) -> TokenStream {
    if m.infallible {
        quote!(#p::Never)
    } else {
        let e = &m.err;
        quote!(#e)
    }
}

/// The method's `#[cfg]` attributes, which the dispatcher's arm and the interface's list of
/// names must carry too.
fn cfg_attrs(m: &super::model::Method) -> Vec<&syn::Attribute> {
    m.attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect()
}
