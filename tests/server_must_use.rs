//! Dropping a server's handle unused is a warning that says what it does (trybuild, with the
//! warning denied).

#[test]
fn an_unused_server_handle_is_a_warning() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/server_ui/*.rs");
}
