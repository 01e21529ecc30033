//! The module edges of `src/`, read from the code (`use` lines, grouped `use crate::{…}` and
//! inline `crate::` paths alike, unit tests excepted): a new edge must be added to the table on
//! purpose, and the edges the architecture forbids (one gate importing another, policy
//! importing anything, error.rs or the store importing a gate) fail here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module and the modules it may import. `lib` is the crate root (`AppState`, the routers).
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "admin",
        &[
            "audit", "config", "conn", "error", "fetch", "lib", "loader", "policy", "store",
        ],
    ),
    ("admission", &["conn", "error", "lib", "oci", "policy"]),
    ("audit", &["config", "metrics", "policy", "store"]),
    (
        "cli",
        &[
            "admin", "audit", "config", "conn", "fetch", "lib", "loader", "metrics", "oci",
            "policy", "pypi", "store", "verify", "vulns",
        ],
    ),
    ("config", &["policy"]),
    ("conn", &["config", "metrics"]),
    ("error", &["store"]),
    (
        "fetch",
        &[
            "audit", "config", "error", "metrics", "policy", "store", "sync",
        ],
    ),
    (
        "lib",
        &[
            "admin",
            "admission",
            "audit",
            "config",
            "conn",
            "error",
            "fetch",
            "loader",
            "metrics",
            "oci",
            "policy",
            "pypi",
            "replicas",
            "server",
            "store",
            "sync",
            "verify",
        ],
    ),
    ("loader", &["config", "policy", "store", "verify", "vulns"]),
    ("logs", &[]),
    ("main", &["cli", "config", "lib", "logs", "server"]),
    ("metrics", &[]),
    (
        "oci",
        &[
            "audit", "config", "conn", "error", "fetch", "lib", "loader", "metrics", "policy",
            "store", "sync", "verify",
        ],
    ),
    ("policy", &[]),
    (
        "pypi",
        &[
            "audit", "config", "conn", "error", "fetch", "lib", "loader", "metrics", "policy",
            "store", "sync", "verify",
        ],
    ),
    ("replicas", &["lib", "loader", "store"]),
    ("server", &["config", "conn", "fetch", "lib"]),
    ("store", &["config", "metrics", "policy"]),
    ("sync", &[]),
    ("verify", &["policy"]),
    ("vulns", &["policy", "sync"]),
];

/// What no table change may allow (../shared/ARCHITECTURE.md).
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("pypi", &["oci", "admin", "admission"]),
    ("oci", &["pypi", "admin"]),
    (
        "policy",
        &[
            "verify", "pypi", "oci", "admin", "store", "fetch", "loader", "audit", "config",
        ],
    ),
    (
        "verify",
        &["pypi", "oci", "admin", "store", "fetch", "loader", "audit"],
    ),
    (
        "store",
        &["pypi", "oci", "admin", "admission", "audit", "loader"],
    ),
    ("error", &["pypi", "oci", "admin", "admission"]),
];

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a source text names through `crate::`.
fn references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a::X, b, c::{…}}`: the first name of each top-level item.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(first_name(&item, modules));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            if !item.trim().is_empty() {
                out.insert(first_name(&item, modules));
            }
        } else {
            out.insert(first_name(after, modules));
        }
        rest = after;
    }
    out.remove("");
    out
}

/// `admin::rules::X` → `admin`; an item of the crate root (`AppState`) → `lib`.
fn first_name(path: &str, modules: &BTreeSet<String>) -> String {
    let name: String = path
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() || name == "self" {
        String::new()
    } else if modules.contains(&name) {
        name
    } else {
        "lib".into()
    }
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may reach across.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut refs = references(&code, &modules);
        refs.remove(&m);
        edges.entry(m).or_default().extend(refs);
    }
    edges
}

#[test]
fn every_module_edge_is_in_the_table() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, to)| (*m, to.iter().copied().collect()))
        .collect();
    let mut unexpected = Vec::new();
    for (m, to) in edges() {
        let Some(ok) = allowed.get(m.as_str()) else {
            unexpected.push(format!("module {m} is not in the table"));
            continue;
        };
        for t in to {
            if !ok.contains(t.as_str()) {
                unexpected.push(format!("{m} -> {t}"));
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "edges not in the table: {unexpected:?}"
    );
}

#[test]
fn the_table_allows_no_forbidden_edge() {
    for (m, banned) in FORBIDDEN {
        let allowed = ALLOWED
            .iter()
            .find(|(n, _)| n == m)
            .map(|(_, to)| *to)
            .unwrap_or(&[]);
        for b in *banned {
            assert!(!allowed.contains(b), "{m} may not import {b}");
        }
    }
}

#[test]
fn the_reader_sees_grouped_and_inline_paths() {
    let modules: BTreeSet<String> = ["oci", "pypi", "store", "policy"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use crate::{oci::X, store::{A, B}, AppState};\nfn f() { crate::pypi::g(); }";
    let got = references(text, &modules);
    let want: BTreeSet<String> = ["oci", "store", "lib", "pypi"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}
