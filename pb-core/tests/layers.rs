//! pb-core's modules form layers: no import cycle between them, and the driver (`connection`
//! and `broker`) is named by nobody below it. This test reads the sources, so that a change
//! that adds an arrow back fails here, not in a later review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Names that lead into another module's territory: the children of `object` and pb-proto's
/// modules re-exported at the crate root.
fn module_of(name: &str) -> Option<&str> {
    match name {
        "codec" | "link" => Some("object"),
        "frame" | "handshake" | "message" | "scram" => None,
        other => Some(other),
    }
}

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src is readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("a readable source");
            out.push((path.display().to_string(), text));
        }
    }
}

/// The top-level module of each source file, and the modules its non-test code names through
/// `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        let rel = path
            .strip_prefix(&src.display().to_string())
            .expect("under src")
            .trim_start_matches('/');
        let top = rel
            .split('/')
            .next()
            .expect("a path")
            .trim_end_matches(".rs");
        if top == "lib" || rel.ends_with("/tests.rs") {
            continue;
        }
        let top = module_of(top).expect("a module of pb-core").to_owned();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            if line == "#[cfg(test)]" && next.starts_with("mod tests") {
                break;
            }
            if line.starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    !name.starts_with(char::is_uppercase),
                    "{rel}: `crate::{name}` hides which module it comes from; name the module"
                );
                if let Some(module) = module_of(&name).filter(|m| *m != top) {
                    graph
                        .entry(top.clone())
                        .or_default()
                        .insert(module.to_owned());
                }
            }
        }
    }
    graph
}

#[test]
fn the_driver_is_named_only_by_itself() {
    let graph = graph();
    for (module, names) in &graph {
        for driver in ["connection", "broker"] {
            assert!(
                ["connection", "broker"].contains(&module.as_str()) || !names.contains(driver),
                "{module} names the driver's `{driver}`"
            );
        }
    }
    // The driver does name the object model: the test would pass on an empty graph otherwise.
    assert!(graph["connection"].contains("object"));
    assert!(graph["broker"].contains("object"));
}

#[test]
fn no_import_cycle_between_modules() {
    let graph = graph();
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
    assert!(done.len() >= 8, "the sources were read: {done:?}");
}
