//! The AMP derives: generated code needs nothing from the user's scope (it compiles under
//! `#![no_implicit_prelude]`), and misuse is reported at the offending token (trybuild).

// Tests fail by panicking; unwrapping is how they say so.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod hygiene {
    #![no_implicit_prelude]

    #[derive(::pb::AmpCommand)]
    #[amp(name = "Hygienic", response = AmpReply, errors = Failure, requires_answer = true)]
    pub(crate) struct Hygienic {
        pub(crate) a: i64,
        pub(crate) b: ::std::option::Option<::std::string::String>,
        #[amp(name = "dash-name")]
        pub(crate) c: ::std::vec::Vec<bool>,
    }

    #[derive(::pb::AmpFields)]
    pub(crate) struct AmpReply {
        pub(crate) rows: ::pb::amp::AmpList<Row>,
    }

    #[derive(::pb::AmpFields)]
    pub(crate) struct Row {
        pub(crate) x: f64,
    }

    #[derive(::pb::AmpFields)]
    pub(crate) struct Nothing;

    #[derive(::pb::AmpError, Debug)]
    pub(crate) enum Failure {
        #[amp(code = "BAD")]
        Bad(::std::string::String),
        #[amp(code = "WORSE", fatal, description = "much worse")]
        Worse,
    }

    #[derive(::pb::AmpError, Debug)]
    pub(crate) enum NoVariants {}
}

#[test]
fn generated_impls_work_without_the_prelude() {
    use pb::amp::{AmpBox, AmpCommand, AmpError, AmpFields};

    let cmd = hygiene::Hygienic {
        a: 1,
        b: None,
        c: vec![true],
    };
    let mut b = AmpBox::new();
    cmd.to_box(&mut b).unwrap();
    assert_eq!(b.get("a"), Some(&b"1"[..]));
    assert!(!b.contains_key("b"));
    assert_eq!(b.get("dash-name"), Some(&b"\x00\x04True"[..]));
    assert_eq!(<hygiene::Hygienic as AmpCommand>::NAME, "Hygienic");
    const { assert!(<hygiene::Hygienic as AmpCommand>::REQUIRES_ANSWER) };

    let worse = hygiene::Failure::Worse;
    assert_eq!(worse.code(), b"WORSE");
    assert!(worse.is_fatal());
    assert_eq!(worse.to_string(), "much worse");
    assert!(matches!(
        hygiene::Failure::from_code(b"BAD", "why"),
        Some(hygiene::Failure::Bad(d)) if d == "why"
    ));
    assert!(hygiene::Failure::from_code(b"OTHER", "").is_none());
    assert!(hygiene::NoVariants::from_code(b"BAD", "").is_none());
    assert!(hygiene::Nothing::from_box(&AmpBox::new()).is_ok());
}

#[test]
fn misuse_is_reported_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/amp_ui/*.rs");
}
