//! The top-level modules of `src/` import each other one way only (issue 11): no two-way edge
//! and no cycle. An edge `a -> b` is any `crate::b` path (code or doc link) in a file under
//! module `a`, test modules (`#[cfg(test)] mod tests`) excluded: the same reading as
//! `scripts/modgraph.py`, which also prints the whole graph.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The text before the first `#[cfg(test)] mod tests`.
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

/// Modules named by `crate::` paths in `text`.
fn targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim_start());
                if !name.is_empty() {
                    out.push(name.to_string());
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push(name.to_string());
            }
        }
    }
    out
}

fn collect(dir: &Path, root: &Path, edges: &mut BTreeSet<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, root, edges);
            continue;
        }
        if p.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for t in targets(without_tests(&text)) {
            if t != module {
                edges.insert((module.clone(), t));
            }
        }
    }
}

/// A cycle through `start`, if any (depth-first search over `graph`).
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == start) {
        let mut c = path[i..].to_vec();
        c.push(start.to_string());
        return Some(c);
    }
    if done.contains(start) {
        return None;
    }
    path.push(start.to_string());
    for next in graph.get(start).into_iter().flatten() {
        if let Some(c) = cycle_from(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(start.to_string());
    None
}

#[test]
fn top_level_modules_import_one_way_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges = BTreeSet::new();
    collect(&root, &root, &mut edges);
    // The reader works: the known one-way edges are seen.
    for (a, b) in [("node", "files"), ("noise", "transport"), ("cli", "node")] {
        assert!(
            edges.contains(&(a.to_string(), b.to_string())),
            "expected edge {a} -> {b} not found; the reader is broken"
        );
    }
    let two_way: Vec<_> = edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .map(|(a, b)| format!("{a} <-> {b}"))
        .collect();
    assert!(two_way.is_empty(), "two-way module edges: {two_way:?}");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in &edges {
        graph.entry(a.clone()).or_default().insert(b.clone());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let cycle = cycle_from(&graph, m, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "module cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
}

#[test]
fn reader_sees_paths_groups_and_skips_tests() {
    let text = "use crate::wire::X;\nuse crate::{identity, sig::Y};\n/// [`crate::time`]\n\
                #[cfg(test)]\nmod tests { use crate::node; }";
    assert_eq!(
        targets(without_tests(text)),
        ["wire", "identity", "sig", "time"]
    );
}
