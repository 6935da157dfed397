//! The doc examples of every crate are written as users write them: through the facade
//! (`pb::Portal`, `pb::amp`, `pb::proto::frame`), never through a sub-crate's path
//! (`pb_server::Portal`, `pb_core::amp`). The examples compile as doc-tests; this test reads
//! the sources so that a sub-crate path in an example fails here even where it would compile.
//! It also keeps the macros' pages documenting themselves instead of pointing elsewhere.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("a readable source directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crates' library sources: the facade's and each member's.
fn library_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src",
        "pb-proto/src",
        "pb-core/src",
        "pb-derive/src",
        "pb-server/src",
        "pb-client/src",
    ] {
        sources(&root.join(dir), &mut files);
    }
    files
}

/// The lines of the doc comments' code blocks of `text`, with their line numbers.
fn doc_example_lines(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let Some(doc) = trimmed
            .strip_prefix("///")
            .or_else(|| trimmed.strip_prefix("//!"))
        else {
            in_code = false;
            continue;
        };
        if doc.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code {
            lines.push((n + 1, doc));
        }
    }
    lines
}

#[test]
fn doc_examples_use_the_facades_paths() {
    let mut wrong = Vec::new();
    for path in library_sources() {
        let text = std::fs::read_to_string(&path).expect("a readable source");
        for (n, line) in doc_example_lines(&text) {
            // pb-proto's examples name the facade's `pb::proto` through a hidden stand-in,
            // as pb-proto does not depend on the facade even for its tests.
            if line.contains("pub use pb_proto as proto") {
                continue;
            }
            for krate in [
                "pb_proto::",
                "pb_core::",
                "pb_server::",
                "pb_client::",
                "pb_derive::",
            ] {
                if line.contains(krate) {
                    wrong.push(format!("{}:{n}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "doc examples that name a sub-crate instead of `pb::`:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_macros_pages_document_themselves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pb-derive/src/lib.rs")).expect("pb-derive");
    for pointer in [
        "See `pb::remote`",
        "See `pb::copyable`",
        "See the `pb` crate",
    ] {
        assert!(!text.contains(pointer), "a macro's page says {pointer:?}");
    }
    // Each page has its examples and the sections the attribute needs.
    for must in [
        "# Why an attribute on a trait",
        "# Serde attributes pass through",
        "# A state per peer: `state_for`",
        "#[serde(skip)]",
        "#[serde(rename = ",
        "#[serde(with = ",
        "#[pb::copyable(state_for = ",
        "pb::Copyable)]",
    ] {
        assert!(text.contains(must), "pb-derive's docs lack {must:?}");
    }
}
