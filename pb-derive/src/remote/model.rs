//! Validate a trait and turn it into the model the expansion works from.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, Pat, PathArguments, ReturnType, TraitItem,
    Type, Visibility,
};

pub(crate) struct Interface {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) name: Ident,
    pub(crate) methods: Vec<Method>,
}

pub(crate) struct Method {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) name: Ident,
    pub(crate) params: Vec<Param>,
    pub(crate) ok: Type,
    pub(crate) err: Type,
    /// The method returns `T` (or nothing), not a `Result`: it cannot fail, and its stub's
    /// error is `CallError<pb::Never>`.
    pub(crate) infallible: bool,
}

pub(crate) struct Param {
    pub(crate) name: Ident,
    pub(crate) ty: Type,
    /// A `pb::Caller` parameter: filled on the callee's side, never sent.
    pub(crate) is_caller: bool,
    /// A borrowed parameter (`&[u8]` or `&str`): the stub encodes it from the caller's borrow,
    /// the dispatcher decodes it into an owned value that the handler borrows.
    pub(crate) borrowed: Option<Borrowed>,
}

/// The references a remote method may take as parameters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Borrowed {
    /// `&[u8]`: decoded as a `bytes::Bytes`, a slice of the received frame (no copy) when it is
    /// large.
    Bytes,
    /// `&str`: decoded as a `String`.
    Str,
}

impl Borrowed {
    /// `&[u8]` or `&str` with an elided (or `'_`) lifetime.
    fn of(r: &syn::TypeReference) -> syn::Result<Option<Borrowed>> {
        let kind = match &*r.elem {
            Type::Slice(s) if matches!(&*s.elem, Type::Path(p) if p.qself.is_none() && p.path.is_ident("u8")) => {
                Borrowed::Bytes
            }
            Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => Borrowed::Str,
            _ => return Ok(None),
        };
        if let Some(m) = &r.mutability {
            return Err(syn::Error::new_spanned(
                m,
                "a borrowed remote parameter is shared (`&[u8]` or `&str`), not `&mut`",
            ));
        }
        if let Some(l) = r.lifetime.as_ref().filter(|l| l.ident != "_") {
            return Err(syn::Error::new_spanned(
                l,
                "a borrowed remote parameter lives as long as the call: leave its lifetime out",
            ));
        }
        Ok(Some(kind))
    }
}

/// Collects every error instead of stopping at the first.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

impl Interface {
    pub(crate) fn from_trait(t: &ItemTrait) -> syn::Result<Interface> {
        let mut errors = Errors::default();
        if !t.generics.params.is_empty() || t.generics.where_clause.is_some() {
            errors.push(syn::Error::new_spanned(
                &t.generics,
                "a remote interface cannot be generic",
            ));
        }
        if let Some(unsafety) = &t.unsafety {
            errors.push(syn::Error::new_spanned(
                unsafety,
                "a remote interface cannot be unsafe",
            ));
        }
        if !t.supertraits.is_empty() {
            errors.push(syn::Error::new_spanned(
                &t.supertraits,
                "a remote interface cannot declare supertraits (it is Send + Sync + 'static already)",
            ));
        }
        let mut methods = Vec::new();
        for item in &t.items {
            match item {
                TraitItem::Fn(f) => match Method::from_fn(f) {
                    Ok(m) => methods.push(m),
                    Err(e) => errors.push(e),
                },
                other => errors.push(syn::Error::new_spanned(
                    other,
                    "a remote interface may only contain async methods",
                )),
            }
        }
        if let Some(e) = errors.0 {
            return Err(e);
        }
        Ok(Interface {
            attrs: t.attrs.clone(),
            vis: t.vis.clone(),
            name: t.ident.clone(),
            methods,
        })
    }
}

/// Names a remote method cannot take: the typed stub's own methods, and those of the traits
/// it implements that are called with method syntax (an inherent method of the same name would
/// shadow them, and `stub.clone()` would make a remote call), and of the prelude's traits that
/// take `self` by value (`try_into`: method syntax finds them before a stub method that takes
/// `&self`).
pub(crate) const RESERVED: &[&str] = &[
    "new",
    "from_arc",
    "object_ref",
    "from_object_ref",
    "disconnected",
    "is_connected",
    "clone",
    "eq",
    "ne",
    "hash",
    "fmt",
    "serialize",
    "deserialize",
    "from",
    "into",
    "try_from",
    "try_into",
];

impl Method {
    fn from_fn(f: &syn::TraitItemFn) -> syn::Result<Method> {
        let sig = &f.sig;
        let mut errors = Errors::default();
        let name = sig.ident.to_string();
        if RESERVED.contains(&name.as_str()) {
            errors.push(syn::Error::new_spanned(
                &sig.ident,
                format!(
                    "`{name}` is a method of the generated stub, or of a trait every stub has; \
                     rename the remote method (reserved: {})",
                    RESERVED.join(", ")
                ),
            ));
        }
        if sig.asyncness.is_none() {
            errors.push(syn::Error::new_spanned(
                sig.fn_token,
                "remote methods must be `async fn`",
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.push(syn::Error::new_spanned(
                &sig.generics,
                "remote methods cannot be generic",
            ));
        }
        if let Some(block) = &f.default {
            errors.push(syn::Error::new_spanned(
                block,
                "remote methods cannot have a default body",
            ));
        }
        if let Some(v) = &sig.variadic {
            errors.push(syn::Error::new_spanned(
                v,
                "remote methods cannot be variadic",
            ));
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
            Some(other) => errors.push(syn::Error::new_spanned(
                other,
                "remote methods take `&self` (calls run concurrently)",
            )),
            None => errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "remote methods take `&self` as their first parameter",
            )),
        }
        let mut params = Vec::new();
        for arg in inputs {
            let FnArg::Typed(pt) = arg else { continue };
            let Pat::Ident(pi) = &*pt.pat else {
                errors.push(syn::Error::new_spanned(
                    &pt.pat,
                    "remote method parameters must be plain names",
                ));
                continue;
            };
            let borrowed = match &*pt.ty {
                Type::Reference(r) => match Borrowed::of(r) {
                    Ok(Some(b)) => Some(b),
                    Ok(None) => {
                        errors.push(syn::Error::new_spanned(
                            r,
                            "remote method parameters are passed by value (they cross the \
                             network); only `&[u8]` and `&str` may be borrowed",
                        ));
                        continue;
                    }
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
                ty => {
                    // A borrow inside a type (`Option<&str>`) cannot be decoded into either.
                    if let Some(r) = nested_reference(ty) {
                        errors.push(syn::Error::new_spanned(
                            r,
                            "remote method parameters are passed by value (they cross the \
                             network); only `&[u8]` and `&str` may be borrowed, and only as the \
                             whole parameter (`Option<&str>`: take `Option<String>`)",
                        ));
                        continue;
                    }
                    None
                }
            };
            params.push(Param {
                name: pi.ident.clone(),
                is_caller: is_caller_type(&pt.ty),
                ty: (*pt.ty).clone(),
                borrowed,
            });
        }
        if params.iter().filter(|p| p.is_caller).count() > 1 {
            errors.push(syn::Error::new_spanned(
                &sig.inputs,
                "a remote method takes at most one `pb::Caller` parameter",
            ));
        }
        let result = match &sig.output {
            ReturnType::Type(_, ty) => {
                if let Some(alias) = result_alias(ty) {
                    errors.push(syn::Error::new_spanned(
                        alias,
                        "write the method's `Result<T, E>` in full: the macro reads the error \
                         type from it, and a `Result<T>` alias would make the whole `Result` the \
                         method's value (a method that cannot fail, its errors arriving as `Ok`)",
                    ));
                }
                split_result(ty)
            }
            ReturnType::Default => None,
        };
        let (ok, err, infallible) = match (result, &sig.output) {
            (Some((_, err)), _) if is_infallible(&err) => {
                errors.push(syn::Error::new(
                    err.span(),
                    "`Infallible` cannot cross the wire: a method that cannot fail returns `T` itself (`-> T`, or nothing), and its caller's error is then `CallError<pb::Never>`",
                ));
                (unit(), unit(), false)
            }
            (Some((ok, err)), _) => (ok, err, false),
            // A method that cannot fail: `-> T`, or nothing.
            (None, ReturnType::Type(_, ty)) => ((**ty).clone(), unit(), true),
            (None, ReturnType::Default) => (unit(), unit(), true),
        };
        if let Some(e) = errors.0 {
            return Err(e);
        }
        Ok(Method {
            attrs: f.attrs.clone(),
            name: sig.ident.clone(),
            params,
            ok,
            err,
            infallible,
        })
    }
}

/// Whether `ty` names `Infallible` (under any path).
fn is_infallible(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Infallible"))
}

fn unit() -> Type {
    syn::parse_quote!(())
}

/// Whether `ty` is the caller's parameter: `Caller` written alone (as `use pb::Caller` brings
/// it), or a path from `pb` (`pb::Caller`, `::pb::prelude::Caller`). Another path ending in
/// `Caller` (`self::Caller`, `crate::phone::Caller`) is a type of the application's.
fn is_caller_type(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let segments = &p.path.segments;
    let Some(last) = segments.last() else {
        return false;
    };
    if p.qself.is_some() || last.ident != "Caller" || !last.arguments.is_empty() {
        return false;
    }
    match segments.first() {
        Some(first) if segments.len() > 1 => first.ident == "pb" || first.ident == "pb_core",
        _ => p.path.leading_colon.is_none(),
    }
}

/// A path ending in `Result` with one type argument (an alias such as `io::Result<T>`), whose
/// error type the macro cannot see.
fn result_alias(ty: &Type) -> Option<&syn::PathSegment> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    (last.ident == "Result" && args.args.len() == 1).then_some(last)
}

/// A reference anywhere inside `ty` (a parameter's type that is not itself a reference).
fn nested_reference(ty: &Type) -> Option<&syn::TypeReference> {
    match ty {
        Type::Reference(r) => Some(r),
        Type::Path(p) => p.path.segments.iter().find_map(|s| match &s.arguments {
            PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
                GenericArgument::Type(t) => nested_reference(t),
                _ => None,
            }),
            _ => None,
        }),
        Type::Tuple(t) => t.elems.iter().find_map(nested_reference),
        Type::Array(a) => nested_reference(&a.elem),
        Type::Slice(s) => nested_reference(&s.elem),
        Type::Paren(p) => nested_reference(&p.elem),
        Type::Group(g) => nested_reference(&g.elem),
        _ => None,
    }
}

/// `Result<T, E>` (under any path ending in `Result`) into `(T, E)`.
fn split_result(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let ok = types.next()?;
    let err = types.next()?;
    if types.next().is_some() || args.args.len() != 2 {
        return None;
    }
    Some((ok, err))
}

#[allow(dead_code)]
fn call_site() -> Span {
    Span::call_site()
}
