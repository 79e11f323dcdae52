//! The house stays in order: every `crate::…` path in `src/` and in the
//! core crate (`crates/core/src/`) points down the layers ARCHITECTURE.md
//! draws, so there is no import circle and no upward import. Cargo already
//! keeps the core from importing the sidecar; this orders what Cargo cannot:
//! the modules inside each crate. Test code (`#[cfg(test)]` modules,
//! `tests.rs` files) and doc comments are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top to bottom; a module may import only modules of lower layers. The
/// sidecar sees the core's modules through re-exports, at the bottom.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["config"],
    &["server"],
    &["grpc", "uds", "http"],
    &["manage"],
    &["gate", "check", "proxy"],
    &["usage", "webhooks"],
    &["throttle", "readiness", "counters", "balances"],
    &["store"],
    &["telemetry"],
    &["traces"],
    &["authz"],
    &["route", "key"],
    &["ratelimit", "role"],
    &[
        "token",
        "scope",
        "stats",
        "credits",
        "request_id",
        "secret_file",
        "secret_scanning",
    ],
];

/// The crates whose modules are ordered here, as source roots.
const ROOTS: &[&str] = &["src", "crates/core/src"];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("src/{module}: add it to a layer here and in ARCHITECTURE.md"))
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `text` names through `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name = part.trim().split("::").next().unwrap_or("");
                if !name.is_empty() {
                    found.insert(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_import_in_src_points_down_the_layers() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (root, relative, text) in src_files() {
        let module = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "main" || module == "lib" {
            continue;
        }
        for dependency in imports(&code(&text)) {
            if dependency == module {
                continue;
            }
            if layer_of(&dependency) <= layer_of(&module) {
                upward.push(format!(
                    "{root}/{relative} imports crate::{dependency} (layer {} → {})",
                    layer_of(&module),
                    layer_of(&dependency)
                ));
            }
            graph.entry(module.clone()).or_default().insert(dependency);
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up or sideways:\n{}",
        upward.join("\n")
    );
    // The layers are a total order, so the graph has no circle; say so
    // anyway with a walk, in case LAYERS is ever edited into one.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            panic!("import circle: {}", path[at..].join(" → "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_scan_sees_imports_and_skips_comments_and_tests() {
    let text = "use crate::{store::Store, token};\n/// [`crate::server`]\nfn f() { crate::scope::x(); }\n#[cfg(test)]\nmod tests { use crate::cli; }";
    let found = imports(&code(text));
    let expected: BTreeSet<String> = ["store", "token", "scope"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}

/// Files of each root as (root, path within it, text), test files left out.
fn src_files() -> Vec<(&'static str, String, String)> {
    let mut found = Vec::new();
    for root in ROOTS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
        let mut files = Vec::new();
        walk(&dir, &mut files);
        for file in files {
            let relative = file
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !relative.ends_with("tests.rs") {
                found.push((*root, relative, std::fs::read_to_string(&file).unwrap()));
            }
        }
    }
    found.sort();
    found
}

/// ARCHITECTURE.md's map names every file: `src/x.rs` at the left margin,
/// or `f.rs` (`sub/f.rs`) indented under its `src/dir/` line (the same for
/// `crates/core/src/`).
#[test]
fn the_architecture_map_names_every_src_file() {
    let map =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let words_under = |root: &str, dir: &str| -> BTreeSet<String> {
        let mut words = BTreeSet::new();
        let mut inside = false;
        for line in map.lines() {
            if !line.starts_with(' ') {
                inside = line.starts_with(&format!("{root}/{dir}/"));
                continue;
            }
            if inside {
                let names = line.trim_start().split("  ").next().unwrap_or("");
                words.extend(names.split(", ").map(str::to_owned));
            }
        }
        words
    };
    let mut missing = Vec::new();
    for (root, relative, _) in src_files() {
        let named = match relative.split_once('/') {
            None => map
                .lines()
                .any(|line| line.starts_with(&format!("{root}/{relative} "))),
            Some((dir, rest)) => words_under(root, dir).contains(rest),
        };
        if !named {
            missing.push(format!("{root}/{relative}"));
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's map does not name: {}",
        missing.join(", ")
    );
}

/// Lines of each function in `text` (outside its test module) longer than
/// `limit`, as (name, lines).
fn long_functions(text: &str, limit: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .collect();
    let mut long = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let signature = [
            "pub fn ",
            "fn ",
            "pub(super) fn ",
            "pub(crate) fn ",
            "async fn ",
        ]
        .iter()
        .chain(&[
            "pub async fn ",
            "pub(super) async fn ",
            "pub(crate) async fn ",
        ])
        .find_map(|prefix| trimmed.strip_prefix(prefix));
        let Some(rest) = signature else { continue };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let mut depth = 0i64;
        let mut opened = false;
        for (end, body) in lines[start..].iter().enumerate() {
            let code = without_literals(body.split("//").next().unwrap_or(""));
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            opened |= code.contains('{');
            if !opened && code.trim_end().ends_with(';') {
                break;
            }
            if opened && depth <= 0 {
                if end + 1 > limit {
                    long.push((name.clone(), end + 1));
                }
                break;
            }
        }
    }
    long
}

/// A line with its string contents and `'{'` / `'}'` characters removed,
/// so braces in them are not counted as blocks.
fn without_literals(line: &str) -> String {
    let line = line.replace("'{'", "").replace("'}'", "");
    let mut out = String::with_capacity(line.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

/// Small enough to read whole: no `src/` file over 600 lines of code (its
/// test module aside) and no function over 80 lines.
#[test]
fn src_files_and_functions_stay_small() {
    let mut big = Vec::new();
    for (root, relative, text) in src_files() {
        let code_lines = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .count();
        if code_lines > 600 {
            big.push(format!("{root}/{relative}: {code_lines} lines"));
        }
        for (name, lines) in long_functions(&text, 80) {
            big.push(format!("{root}/{relative}: fn {name} is {lines} lines"));
        }
    }
    assert!(big.is_empty(), "split these:\n{}", big.join("\n"));
}

#[test]
fn the_size_check_measures_functions() {
    let body = "    let x = 1;\n".repeat(81);
    let text = format!("fn small() {{\n}}\npub async fn big(a: u8) {{\n{body}}}\nfn decl();\n");
    assert_eq!(long_functions(&text, 80), vec![("big".to_owned(), 83)]);
    assert!(long_functions(&text, 83).is_empty());
    // Braces in strings and char literals are not blocks.
    let tricky = "fn f() {\n    let a = format!(\"{{x}}/{{\");\n    let b = s.matches('{');\n}\nfn g() {\n}\n";
    assert!(
        long_functions(tricky, 4).is_empty(),
        "{:?}",
        long_functions(tricky, 4)
    );
    assert_eq!(long_functions(tricky, 3), vec![("f".to_owned(), 4)]);
}
