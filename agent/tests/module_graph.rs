//! Data flows one way: the agent's top-level modules, linked by the `crate::` (and `super::`)
//! paths their files use, form a graph without a loop (issue 11). Read from the sources, so a new
//! module joins the check without being named here.
//!
//! A file belongs to the top-level module of its first path component under `src/` (`lib.rs`
//! and `main.rs` are the root and are left out). Comment lines and `#[cfg(test)] mod tests { .. }`
//! blocks are skipped: a unit test may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// One edge's evidence: the file and line that uses the other module.
type Uses = BTreeMap<(String, String), Vec<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's module path below the crate root: `admin/metrics.rs` is `[admin, metrics]`,
/// `admin/mod.rs` is `[admin]`; `None` for the root files and for test-only files.
fn module_path(file: &Path) -> Option<Vec<String>> {
    let relative = file.strip_prefix(src()).expect("under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem == "tests" || parts.iter().any(|p| p == "tests") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// The source without comment lines and without `#[cfg(test)] mod NAME { .. }` blocks.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut n = 0;
    while n < lines.len() {
        let line = lines[n].trim_start();
        let next = lines.get(n + 1).map_or("", |l| l.trim_start());
        if line.starts_with("#[cfg(test)]") && next.starts_with("mod ") && next.ends_with('{') {
            n = block_end(&lines, n + 1) + 1;
            continue;
        }
        if !line.starts_with("//") {
            out.push((n + 1, lines[n].to_string()));
        }
        n += 1;
    }
    out
}

/// The index of the line that closes the block opened on line `start` (braces counted, which is
/// enough for this codebase's test modules).
fn block_end(lines: &[&str], start: usize) -> usize {
    let mut depth = 0i64;
    for (n, line) in lines.iter().enumerate().skip(start) {
        depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
        if depth <= 0 {
            return n;
        }
    }
    lines.len()
}

/// The identifier at the start of `s` (after whitespace).
fn ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segments a path continues with after `crate::`: one name, or every item of a
/// `{ .. }` group.
fn first_segments(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest).to_string()];
    };
    let mut names = Vec::new();
    let mut depth = 1;
    let mut item_start = true;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 1 => {
                names.push(ident(&group[at..]).to_string());
                item_start = false;
            }
            _ => {}
        }
    }
    names
}

/// Whether `text` has a path boundary just before `at` (not the tail of a longer identifier, nor
/// the second `super::` of a chain).
fn starts_path(text: &str, at: usize) -> bool {
    let before = &text[..at];
    !before.ends_with("super::")
        && before
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
}

/// The top-level modules the path at the start of `one` (`crate::..` or `super::..`) names, seen
/// from a file whose module path is `path`.
fn resolve(one: &str, path: &[String]) -> Vec<String> {
    if let Some(after) = one.strip_prefix("crate::") {
        return first_segments(after);
    }
    let mut rest = one;
    let mut ups = 0;
    while let Some(after) = rest.strip_prefix("super::") {
        ups += 1;
        rest = after;
    }
    match path.get(..path.len().saturating_sub(ups)) {
        Some([top, ..]) => vec![top.clone()],
        _ => first_segments(rest),
    }
}

/// Every use of one top-level module by another, with the file and line of each.
fn module_uses() -> (BTreeSet<String>, Uses) {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let parsed: Vec<(PathBuf, Vec<String>)> = files
        .into_iter()
        .filter_map(|f| module_path(&f).map(|p| (f, p)))
        .collect();
    let modules: BTreeSet<String> = parsed.iter().map(|(_, p)| p[0].clone()).collect();
    let mut uses = Uses::new();
    for (file, path) in &parsed {
        let lines = code_lines(&fs::read_to_string(file).expect("read source"));
        // One text, so that a `use crate::{ .. }` group spanning lines is read whole.
        let mut code = String::new();
        let mut starts = Vec::new();
        for (number, line) in &lines {
            starts.push((code.len(), *number));
            code.push_str(line);
            code.push('\n');
        }
        let name = file.strip_prefix(src()).expect("under src/").display();
        for needle in ["crate::", "super::"] {
            for (at, _) in code.match_indices(needle) {
                if !starts_path(&code, at) {
                    continue;
                }
                let line = starts[starts.partition_point(|(start, _)| *start <= at) - 1].1;
                for target in resolve(&code[at..], path) {
                    if modules.contains(&target) && target != path[0] {
                        let edge = (path[0].clone(), target);
                        uses.entry(edge).or_default().push(format!("{name}:{line}"));
                    }
                }
            }
        }
    }
    (modules, uses)
}

/// A loop in `edges`, as the modules along it (first repeated at the end), if there is one.
fn find_cycle(
    modules: &BTreeSet<String>,
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_string(), Mark::Open);
        stack.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == next).expect("on the stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, edges, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in modules {
        if marks.get(m).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(m, edges, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn the_top_level_module_graph_has_no_loop() {
    let (modules, uses) = module_uses();
    assert!(
        ["admin", "audit", "config", "monitor", "reload"]
            .iter()
            .all(|m| modules.contains(*m)),
        "the module list is read from src/: {modules:?}"
    );
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in uses.keys() {
        edges.entry(from.clone()).or_default().insert(to.clone());
    }
    if let Some(cycle) = find_cycle(&modules, &edges) {
        let evidence: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                let at = &uses[&(pair[0].clone(), pair[1].clone())];
                format!("  {} -> {}: {}", pair[0], pair[1], at.join(", "))
            })
            .collect();
        panic!(
            "module loop: {}\n{}",
            cycle.join(" -> "),
            evidence.join("\n")
        );
    }
}

#[test]
fn telemetry_is_a_leaf_and_only_the_entry_points_read_admin() {
    let (_, uses) = module_uses();
    let from_telemetry: Vec<_> = uses
        .keys()
        .filter(|(from, _)| from == "telemetry")
        .collect();
    assert!(
        from_telemetry.is_empty(),
        "telemetry must import nothing from the crate: {from_telemetry:?}"
    );
    let into_admin: Vec<_> = uses
        .iter()
        .filter(|((from, to), _)| to == "admin" && from != "run" && from != "cli")
        .collect();
    assert!(
        into_admin.is_empty(),
        "only run (and the command dispatch) may use admin: {into_admin:?}"
    );
}
