//! The layout's rules, checked from the sources: no import circles between files or between
//! top-level modules (folders), the writer and the store know nothing above them, and gRPC
//! appears only at the RPC edges. A use of `crate::`, `super::`, `self::` or a child module,
//! in a `use` or inline, is an import; test modules are not counted.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The crate's modules by path ("" for the root), each with its code: comments and test
/// modules cut off. `main.rs` is another crate; this file and `testing` are tests.
fn modules() -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
                continue;
            }
            let mut segments: Vec<String> = path
                .strip_prefix(root)
                .unwrap()
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            let module = segments.join("::");
            if ["main", "layout", "testing"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let code: Vec<&str> = code
                .lines()
                .map(|l| l.split("//").next().unwrap())
                .collect();
            out.insert(module, code.join("\n"));
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_') {
                word.push(n);
                chars.next();
            }
            out.push(word);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push("::".into());
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}

/// The paths a use tree names, from `tokens[*i]` on.
fn use_tree(tokens: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    loop {
        let token = tokens[*i].as_str();
        *i += 1;
        match token {
            "{" => {
                while tokens[*i] != "}" {
                    use_tree(tokens, i, &path, out);
                    if tokens[*i] == "," {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            "*" => break,
            "self" if !path.is_empty() => break,
            word => {
                path.push(word.to_owned());
                if tokens[*i] != "::" {
                    if tokens[*i] == "as" {
                        *i += 2;
                    }
                    break;
                }
                *i += 1;
            }
        }
    }
    out.push(path);
}

/// Every path `code` names: those of its `use` items, and `a::b` paths inline.
fn paths(code: &str) -> Vec<Vec<String>> {
    let tokens = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "use" {
            i += 1;
            use_tree(&tokens, &mut i, &[], &mut out);
            continue;
        }
        let mut path = vec![tokens[i].clone()];
        while tokens.get(i + 1).is_some_and(|t| t == "::") && i + 2 < tokens.len() {
            path.push(tokens[i + 2].clone());
            i += 2;
        }
        if path.len() > 1 {
            out.push(path);
        }
        i += 1;
    }
    out
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map_or("", |(p, _)| p).to_owned()
}

fn join(base: &str, rest: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    out.extend(rest.iter().cloned());
    out
}

/// Which module of this crate `path`, named in `module`, is in; `None` outside the crate.
fn resolve(modules: &BTreeMap<String, String>, module: &str, path: &[String]) -> Option<String> {
    let absolute = match path[0].as_str() {
        "crate" => join("", &path[1..]),
        "self" => join(module, &path[1..]),
        "super" => {
            let mut base = parent(module);
            let mut rest = &path[1..];
            while rest.first().is_some_and(|s| s == "super") {
                base = parent(&base);
                rest = &rest[1..];
            }
            join(&base, rest)
        }
        child if modules.contains_key(&join(module, &[child.to_owned()]).join("::")) => {
            join(module, path)
        }
        _ => return None,
    };
    (0..=absolute.len())
        .rev()
        .map(|n| absolute[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// Which modules each module imports from.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    modules
        .iter()
        .map(|(module, code)| {
            let targets = paths(code)
                .iter()
                .filter_map(|p| resolve(&modules, module, p))
                .filter(|t| t != module)
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

/// A circle through the graph, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|n| n == node) {
            let mut circle = stack[start..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(graph, next, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(node) = todo.pop() {
        if node == to || node.starts_with(&format!("{to}::")) {
            return true;
        }
        if seen.insert(node.clone()) {
            todo.extend(graph.get(&node).into_iter().flatten().cloned());
        }
    }
    false
}

fn top(module: &str) -> String {
    module.split("::").next().unwrap_or_default().to_owned()
}

#[test]
fn imports_are_found_as_written() {
    let imports = imports();
    for (from, to) in [
        ("", "writer"),
        ("ingest", "ingest::check"),
        ("ingest", "grants::views"),
        ("ingest::check", "writer"),
        ("grants::service", "grants::rules"),
        ("grants::service", "writer"),
        ("store::sqlite", "store"),
        ("store::sqlite", "store::sqlite::schema"),
        ("policy", "grants::rules"),
    ] {
        assert!(
            imports[from].contains(to),
            "{from} imports {to}: {imports:?}"
        );
    }
}

#[test]
fn no_module_imports_in_a_circle() {
    let files = imports();
    assert_eq!(circle(&files), None, "between files");
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in &files {
        let entry = folders.entry(top(from)).or_default();
        entry.extend(targets.iter().map(|t| top(t)).filter(|t| *t != top(from)));
    }
    assert_eq!(circle(&folders), None, "between folders: {folders:?}");
}

#[test]
fn data_flows_one_way() {
    let imports = imports();
    assert!(
        !reaches(&imports, "writer", "grants"),
        "the writer knows no grant rules"
    );
    assert!(!reaches(&imports, "writer", "ingest"));
    for (module, targets) in &imports {
        if top(module) == "store" {
            assert!(
                targets.iter().all(|t| top(t) == "store"),
                "{module} is storage only: {targets:?}"
            );
        }
    }
}

#[test]
fn grpc_appears_only_at_the_rpc_edges() {
    let edges = ["", "admin", "auth", "ingest", "grants::service", "query"];
    for (module, code) in modules() {
        if code.contains("tonic") || code.contains("Status") {
            assert!(edges.contains(&module.as_str()), "{module} speaks gRPC");
        }
    }
}
