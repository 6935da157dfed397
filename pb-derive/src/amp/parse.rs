//! syn → model, with validation; every problem found is reported, each at its token.

use std::collections::HashSet;

use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitBool, LitByteStr, LitStr, Member, Type};

use super::model::{Command, ErrorVariant, Errors, Field, FieldsStruct, VariantShape};

/// Keys the protocol itself uses; an argument named like one would be misread.
const RESERVED: &[&str] = &[
    "_ask",
    "_answer",
    "_command",
    "_error",
    "_error_code",
    "_error_description",
];

/// Collects several errors and reports them together.
#[derive(Default)]
struct Errs(Option<syn::Error>);

impl Errs {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

fn check_wire_name(lit: &LitStr, what: &str, errs: &mut Errs) {
    let len = lit.value().len();
    if len == 0 || len > 255 {
        errs.push(syn::Error::new_spanned(
            lit,
            format!("an AMP {what} must be 1 to 255 bytes long"),
        ));
    }
}

/// Parses the fields of a struct for `AmpFields` (and `AmpCommand`).
pub(crate) fn fields_struct(input: &DeriveInput) -> syn::Result<FieldsStruct> {
    let mut errs = Errs::default();
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "AMP arguments must be a struct with named fields",
        ));
    };
    let named = match &data.fields {
        Fields::Named(_) => true,
        Fields::Unit => false,
        Fields::Unnamed(f) => {
            return Err(syn::Error::new_spanned(
                f,
                "AMP arguments need names: use a struct with named fields",
            ));
        }
    };
    let mut fields = Vec::new();
    let mut seen = HashSet::new();
    for f in &data.fields {
        let Some(ident) = &f.ident else { continue };
        let mut wire = None;
        for attr in f.attrs.iter().filter(|a| a.path().is_ident("amp")) {
            let r = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    wire = Some(meta.value()?.parse::<LitStr>()?);
                    Ok(())
                } else {
                    Err(meta.error("unknown field attribute; expected `name = \"...\"`"))
                }
            });
            if let Err(e) = r {
                errs.push(e);
            }
        }
        let wire = wire.unwrap_or_else(|| {
            let s = ident.to_string();
            let s = s.strip_prefix("r#").unwrap_or(&s).to_string();
            LitStr::new(&s, ident.span())
        });
        check_wire_name(&wire, "argument name", &mut errs);
        if RESERVED.contains(&wire.value().as_str()) {
            errs.push(syn::Error::new_spanned(
                &wire,
                format!("`{}` is a key AMP itself uses", wire.value()),
            ));
        }
        if !seen.insert(wire.value()) {
            errs.push(syn::Error::new(
                f.span(),
                format!("two fields have the wire name `{}`", wire.value()),
            ));
        }
        fields.push(Field {
            member: Member::Named(ident.clone()),
            ty: f.ty.clone(),
            wire,
        });
    }
    errs.finish(FieldsStruct {
        ident: input.ident.clone(),
        generics: input.generics.clone(),
        fields,
        named,
    })
}

/// Parses a command: its fields and `#[amp(name, response, errors, requires_answer)]`.
pub(crate) fn command(input: &DeriveInput) -> syn::Result<Command> {
    let mut errs = Errs::default();
    let mut name = None;
    let mut response = None;
    let mut errors = None;
    let mut requires_answer = true;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("amp")) {
        let r = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                name = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("response") {
                response = Some(meta.value()?.parse::<Type>()?);
            } else if meta.path.is_ident("errors") || meta.path.is_ident("error") {
                errors = Some(meta.value()?.parse::<Type>()?);
            } else if meta.path.is_ident("requires_answer") {
                requires_answer = meta.value()?.parse::<LitBool>()?.value;
            } else {
                return Err(meta.error(
                    "unknown command attribute; expected `name`, `response`, `errors` or `requires_answer`",
                ));
            }
            Ok(())
        });
        if let Err(e) = r {
            errs.push(e);
        }
    }
    let name = name.unwrap_or_else(|| LitStr::new(&input.ident.to_string(), input.ident.span()));
    check_wire_name(&name, "command name", &mut errs);
    let fields = match fields_struct(input) {
        Ok(f) => Some(f),
        Err(e) => {
            errs.push(e);
            None
        }
    };
    match (errs.0, fields) {
        (None, Some(fields)) => Ok(Command {
            fields,
            name,
            response,
            errors,
            requires_answer,
        }),
        (Some(e), _) => Err(e),
        (None, None) => Err(syn::Error::new_spanned(&input.ident, "invalid command")),
    }
}

/// Parses an enum of declared errors: `#[amp(code = "...", fatal, description = "...")]`.
pub(crate) fn errors(input: &DeriveInput) -> syn::Result<Errors> {
    let mut errs = Errs::default();
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "AMP errors must be an enum, one variant per error code",
        ));
    };
    let mut variants = Vec::new();
    let mut codes = HashSet::new();
    for v in &data.variants {
        let mut code = None;
        let mut fatal = false;
        let mut description = None;
        for attr in v.attrs.iter().filter(|a| a.path().is_ident("amp")) {
            let r = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("code") {
                    code = Some(meta.value()?.parse::<LitStr>()?);
                } else if meta.path.is_ident("fatal") {
                    fatal = true;
                } else if meta.path.is_ident("description") {
                    description = Some(meta.value()?.parse::<LitStr>()?);
                } else {
                    return Err(meta.error(
                        "unknown error attribute; expected `code`, `fatal` or `description`",
                    ));
                }
                Ok(())
            });
            if let Err(e) = r {
                errs.push(e);
            }
        }
        let Some(code) = code else {
            errs.push(syn::Error::new_spanned(
                &v.ident,
                "each error needs its wire code: #[amp(code = \"...\")]",
            ));
            continue;
        };
        if code.value().is_empty() || code.value().len() > 65535 {
            errs.push(syn::Error::new_spanned(
                &code,
                "an error code must not be empty",
            ));
        }
        if !codes.insert(code.value()) {
            errs.push(syn::Error::new_spanned(
                &code,
                format!("the code `{}` is used twice", code.value()),
            ));
        }
        let shape = match &v.fields {
            Fields::Unit => {
                VariantShape::Unit(description.unwrap_or_else(|| LitStr::new("", v.ident.span())))
            }
            Fields::Unnamed(f) if f.unnamed.len() == 1 => {
                if let Some(d) = &description {
                    errs.push(syn::Error::new_spanned(
                        d,
                        "`description` is for unit variants; this one carries its description",
                    ));
                }
                match f.unnamed.first() {
                    Some(field) => VariantShape::Description(Box::new(field.ty.clone())),
                    None => continue,
                }
            }
            other => {
                errs.push(syn::Error::new_spanned(
                    other,
                    "an error variant is a unit or holds one description, e.g. `ZeroDivision(String)`",
                ));
                continue;
            }
        };
        variants.push(ErrorVariant {
            ident: v.ident.clone(),
            code: LitByteStr::new(code.value().as_bytes(), code.span()),
            fatal,
            shape,
        });
    }
    errs.finish(Errors {
        ident: input.ident.clone(),
        generics: input.generics.clone(),
        variants,
    })
}
