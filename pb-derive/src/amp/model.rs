//! What the AMP derives know about the user's type once parsed and validated.

use syn::{Generics, Ident, LitByteStr, LitStr, Member, Type};

/// One field of an argument, response or `AmpList` row struct.
pub(crate) struct Field {
    pub(crate) member: Member,
    pub(crate) ty: Type,
    /// The key on the wire.
    pub(crate) wire: LitStr,
}

/// A struct whose fields are box keys.
pub(crate) struct FieldsStruct {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    pub(crate) fields: Vec<Field>,
    /// Whether the struct has named fields (else it is a unit struct).
    pub(crate) named: bool,
}

/// A command: its fields plus the container attributes.
pub(crate) struct Command {
    pub(crate) fields: FieldsStruct,
    pub(crate) name: LitStr,
    pub(crate) response: Option<Type>,
    pub(crate) errors: Option<Type>,
    pub(crate) requires_answer: bool,
}

/// The shape of an error variant.
pub(crate) enum VariantShape {
    /// No fields: the description is fixed.
    Unit(LitStr),
    /// One unnamed field holding the description.
    Description(Box<Type>),
}

/// One declared error.
pub(crate) struct ErrorVariant {
    pub(crate) ident: Ident,
    pub(crate) code: LitByteStr,
    pub(crate) fatal: bool,
    pub(crate) shape: VariantShape,
}

/// An enum of declared errors.
pub(crate) struct Errors {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    pub(crate) variants: Vec<ErrorVariant>,
}
