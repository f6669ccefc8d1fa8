//! DESIGN.md's layering, checked on the source: every top-level module of `src/` (and the
//! `roomcast-bench` crate) uses only what its row of [`LAYERS`] allows; no import circle
//! between top-level modules; `unsafe` and syscalls live only under `src/sys/` and
//! `src/reactor/`; no source file of `src/` grows past 800 lines.
//!
//! `cargo test --test layering -- --nocapture` prints the import graph, one `a -> b` a line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// "May use any top-level module" (the composition root and `main`).
const ANY: &[&str] = &["*"];

/// Each layer and what it may use: an allow-list. A layer may always use itself; any other
/// module of the crate that is not on its row is forbidden. A top-level module of `src/`
/// that has no row here fails the test ("add it to the table"): a new module gets a row,
/// and the rows that may use it name it. A row whose module does not exist (yet) is fine.
///
/// `src/x/…` and `src/x.rs` are layer `x`; `src/main.rs` is `main`, `src/lib.rs` is `lib`;
/// the `roomcast-bench` crate (`bench/src`, `bench/benches`, `bench/tests`) is `bench`,
/// whose uses are its `roomcast::…` paths.
#[rustfmt::skip]
const LAYERS: &[(&str, &[&str])] = &[
    // layer        may use
    ("sys",         &[]),                                   // the bottom: syscalls, unsafe
    ("protocol",    &[]),                                   // sans-IO: no I/O, no clocks
    ("config",      &[]),                                   // data only
    ("rooms",       &["protocol"]),                         // pure data
    ("gather",      &["rooms"]),                            // the API's asks and answers
    ("mesh",        &["sys"]),
    ("reactor",     &["sys", "protocol", "mesh"]),          // no rooms, app, ops, config
    ("backplane",   &["sys", "mesh", "rooms", "protocol", "gather"]), // its own types
    ("hooks",       &["sys", "mesh", "rooms", "protocol", "gather"]), // a peer of backplane
    ("ops",         &["sys", "protocol", "reactor"]),       // figures it defines and renders
    ("app",         &["sys", "protocol", "rooms", "gather", "mesh", "reactor", "backplane",
                      "hooks", "ops"]),                     // glues; no config, no server
    ("server",      ANY),                                   // the composition root
    ("main",        ANY),
    ("lib",         &[]),                                   // declares the modules, no more
    ("bench",       &["protocol", "ops"]),                  // roomcast::… from outside
];

/// Rows of [`LAYERS`] that are not top-level modules of `src/` (nothing can name them).
const NOT_MODULES: &[&str] = &["main", "lib", "bench"];

/// Where `unsafe` and `syscall!` may appear.
const UNSAFE_UNDER: &[&str] = &["src/sys/", "src/reactor/"];

const MAX_LINES: usize = 800;

/// The code of a Rust file without its comments and string literals (good enough for
/// looking up paths and keywords: char literals with quotes are rare here and only ever
/// hide text, never invent it). Raw strings (`r"…"`, `br#"…"#`) are strings too.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_str = false,
                '\n' => out.push('\n'),
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    if c == '\n' {
                        out.push('\n');
                    }
                    prev = c;
                }
            }
            ('"', _) => match raw_hashes(&out) {
                // A raw string ends at `"` and as many `#` as it opened with; no escapes.
                Some(hashes) => {
                    let close: String = std::iter::once('"')
                        .chain(std::iter::repeat_n('#', hashes))
                        .collect();
                    while let Some(c) = chars.next() {
                        if c == '\n' {
                            out.push('\n');
                        }
                        if c == '"' && chars.clone().take(hashes).eq(close.chars().skip(1)) {
                            if hashes > 0 {
                                chars.nth(hashes - 1);
                            }
                            break;
                        }
                    }
                }
                None => in_str = true,
            },
            ('\'', _) => {
                // A char literal like '"' must not open a string; a lifetime is left as is.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\"'") || rest.starts_with("\\\"") {
                    chars.nth(rest.find('\'').unwrap_or(1));
                }
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// If the code so far ends with a raw string's opening (`r`, `br` or `cr`, then `#`s), how
/// many `#`s.
fn raw_hashes(code_so_far: &str) -> Option<usize> {
    let before = code_so_far.trim_end_matches('#');
    let hashes = code_so_far.len() - before.len();
    let before = before.strip_suffix('r')?;
    let before = before
        .strip_suffix('b')
        .or_else(|| before.strip_suffix('c'))
        .unwrap_or(before);
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    (!before.chars().next_back().is_some_and(ident)).then_some(hashes)
}

fn words(code: &str) -> Vec<&str> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// The tokens of code (from [`code_only`]) with their line numbers: identifiers (`$crate`
/// is `crate`, `r#x` is `x`), `::` and single punctuation; char literals, lifetimes and
/// numbers are skipped (a `'{'` must not open a block).
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or(' ');
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == ':' && at(i + 1) == ':' {
            out.push((Tok::Sep, line));
            i += 2;
        } else if c.is_ascii_digit() {
            while ident(at(i)) {
                i += 1;
            }
            out.push((Tok::Punct('0'), line));
        } else if ident(c) || (c == '$' && ident(at(i + 1))) {
            let mut start = if c == '$' { i + 1 } else { i };
            if at(start) == 'r' && at(start + 1) == '#' && ident(at(start + 2)) {
                start += 2;
            }
            i = start;
            while ident(at(i)) {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), line));
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // '\n', '\'', '\u{..}'
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// How deep in `mod … { }` blocks each token is.
fn inline_depths(toks: &[(Tok, usize)]) -> Vec<usize> {
    let (mut depth, mut open) = (0usize, Vec::new());
    let mut out = Vec::with_capacity(toks.len());
    for (i, (t, _)) in toks.iter().enumerate() {
        match t {
            Tok::Punct('{') => {
                let is_mod = i >= 2
                    && toks[i - 2].0 == Tok::Ident("mod".into())
                    && matches!(toks[i - 1].0, Tok::Ident(_));
                if is_mod {
                    open.push(depth);
                }
                depth += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if open.last() == Some(&depth) {
                    open.pop();
                }
            }
            _ => {}
        }
        out.push(open.len());
    }
    out
}

/// A path at `toks[i]` and, for a use tree (`a::{b, c::{d, e as f}}`), every path in it:
/// its segments, its line, and whether it names a macro (`a::b!`). Returns where it ends.
fn use_tree(toks: &[(Tok, usize)], mut i: usize, prefix: &[String]) -> (Vec<UsePath>, usize) {
    let mut segs = prefix.to_vec();
    let line = toks[i].1;
    let mut out = Vec::new();
    while let Some((Tok::Ident(w), _)) = toks.get(i) {
        segs.push(w.clone());
        i += 1;
        if toks.get(i).map(|t| &t.0) != Some(&Tok::Sep) {
            break;
        }
        i += 1;
        if toks.get(i).map(|t| &t.0) == Some(&Tok::Punct('{')) {
            i += 1;
            loop {
                match toks.get(i).map(|t| &t.0) {
                    None => return (out, i),
                    Some(Tok::Punct('}')) => return (out, i + 1),
                    Some(Tok::Ident(w)) if w == "as" => i += 2,
                    Some(Tok::Ident(_)) => {
                        let (inner, next) = use_tree(toks, i, &segs);
                        out.extend(inner);
                        i = next;
                    }
                    Some(_) => i += 1,
                }
            }
        }
    }
    let mac = toks.get(i).map(|t| &t.0) == Some(&Tok::Punct('!'));
    out.push(UsePath { segs, line, mac });
    (out, i)
}

struct UsePath {
    segs: Vec<String>,
    line: usize,
    mac: bool,
}

/// The layer a file (relative to the workspace root) belongs to.
fn layer_of(path: &str) -> Option<&str> {
    if path.starts_with("bench/") {
        return Some("bench");
    }
    let rest = path.strip_prefix("src/")?;
    Some(match rest.split_once('/') {
        Some((dir, _)) => dir,
        None => rest.strip_suffix(".rs")?,
    })
}

/// How many modules deep a file of `src/` is (`src/app/wire.rs` is 2, `src/app/mod.rs` 1).
fn file_depth(path: &str) -> usize {
    let parts: Vec<&str> = path.trim_start_matches("src/").split('/').collect();
    let last = parts[parts.len() - 1];
    let root_file = parts.len() == 1 && (last == "lib.rs" || last == "main.rs");
    parts.len() - usize::from(last == "mod.rs" || root_file)
}

fn rules(layer: &str) -> Option<&'static [&'static str]> {
    LAYERS
        .iter()
        .find(|(l, _)| *l == layer)
        .map(|(_, may)| *may)
}

fn is_module(name: &str) -> bool {
    rules(name).is_some() && !NOT_MODULES.contains(&name)
}

/// One use of a top-level module by another layer.
#[derive(Clone, Debug)]
struct Edge {
    from: String,
    to: String,
    /// `file:line`
    at: String,
}

/// What `path`'s code names of the crate's top-level modules, other than its own: from
/// `crate::x` paths (also `$crate::`, and grouped: `use crate::{a, b::c}`, over several
/// lines too), `super::` chains that climb out of the top-level module, and `roomcast::x`
/// in `src/main.rs` and in the bench.
fn edges(path: &str, text: &str) -> Vec<Edge> {
    let Some(from) = layer_of(path) else {
        return Vec::new();
    };
    let in_src = path.starts_with("src/");
    let own_crate_root = if in_src && from != "main" {
        "crate"
    } else {
        "roomcast"
    };
    let toks = tokens(&code_only(text));
    let depths = inline_depths(&toks);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let starts = matches!(toks[i].0, Tok::Ident(_)) && (i == 0 || toks[i - 1].0 != Tok::Sep);
        if !starts {
            i += 1;
            continue;
        }
        let (paths, next) = use_tree(&toks, i, &[]);
        let depth = file_depth(path) + depths[i];
        for p in paths {
            let supers = p.segs.iter().take_while(|s| *s == "super").count();
            let rest = if p.segs[0] == own_crate_root {
                &p.segs[1..]
            } else if in_src && from != "main" && supers > 0 && supers >= depth {
                &p.segs[supers..]
            } else {
                continue;
            };
            // An exported macro sits at the crate root whichever module defines it.
            let root_macro = p.mac && rest.len() == 1;
            match rest.first() {
                Some(to) if to != from && to != "self" && !root_macro => {
                    let at = format!("{path}:{}", p.line);
                    // `use crate::app::{Msg, Reply}` is one use of app.
                    if !out.iter().any(|e: &Edge| e.to == *to && e.at == at) {
                        out.push(Edge {
                            from: from.to_string(),
                            to: to.clone(),
                            at,
                        });
                    }
                }
                _ => {}
            }
        }
        i = next.max(i + 1);
    }
    out
}

/// What is wrong with `path` (relative to the workspace root), whose text is `text`.
fn violations(path: &str, text: &str) -> Vec<String> {
    let code = code_only(text);
    let mut found = Vec::new();
    let add_it = "add it to the table in tests/layering.rs (layer → what it may use)";
    let Some(layer) = layer_of(path) else {
        return found;
    };
    let Some(may) = rules(layer) else {
        found.push(format!(
            "{path}: the top-level module `{layer}` is not in the layer table: {add_it}"
        ));
        return found;
    };
    if path == "src/lib.rs" {
        let toks = tokens(&code);
        for w in toks.windows(2) {
            if let (Tok::Ident(m), (Tok::Ident(name), line)) = (&w[0].0, &w[1]) {
                if m == "mod" && !is_module(name) {
                    found.push(format!(
                        "{path}:{line}: the top-level module `{name}` is not in the layer \
                         table: {add_it}"
                    ));
                }
            }
        }
    }
    let root = if layer == "bench" || layer == "main" {
        "roomcast"
    } else {
        "crate"
    };
    for e in edges(path, text) {
        if !is_module(&e.to) {
            found.push(format!(
                "{}: {layer} uses {root}::{}, which is not a top-level module in the layer \
                 table: {add_it}",
                e.at, e.to
            ));
        } else if may != ANY && !may.contains(&e.to.as_str()) {
            let allowed = if may.is_empty() {
                "nothing from the crate".to_string()
            } else {
                may.join(", ")
            };
            found.push(format!(
                "{}: {layer} uses {root}::{} ({layer} may use: {allowed})",
                e.at, e.to
            ));
        }
    }
    if path.starts_with("src/") && !UNSAFE_UNDER.iter().any(|u| path.starts_with(u)) {
        for (n, line) in code.lines().enumerate() {
            let w = words(line);
            if w.contains(&"unsafe") {
                found.push(format!(
                    "{path}:{}: unsafe outside src/sys/, src/reactor/",
                    n + 1
                ));
            }
            if line.contains("syscall!") {
                found.push(format!(
                    "{path}:{}: a syscall outside src/sys/, src/reactor/",
                    n + 1
                ));
            }
        }
    }
    let lines = text.lines().count();
    if path.starts_with("src/") && lines > MAX_LINES {
        found.push(format!("{path}: {lines} lines (at most {MAX_LINES})"));
    }
    found
}

/// The import circles in a graph: for each strongly connected component of more than one
/// module, one circle through it and every edge inside it with the `file:line`s of its uses.
fn cycles(edges: &[Edge]) -> Vec<String> {
    let mut graph: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.to).or_default();
        let sites = graph.entry(&e.from).or_default().entry(&e.to).or_default();
        sites.push(&e.at);
    }
    let mut found = Vec::new();
    for scc in components(&graph) {
        if scc.len() < 2 {
            continue;
        }
        let inside = |m: &str| scc.contains(&m);
        // The shortest circle through the component's first module (a breadth-first walk).
        let start = scc[0];
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'walk: while let Some(m) = queue.pop_front() {
            for &next in graph[m].keys().filter(|n| inside(n)) {
                if next == start {
                    came_from.insert(start, m);
                    break 'walk;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next, m);
                    queue.push_back(next);
                }
            }
        }
        let mut circle = vec![start];
        let mut m = came_from[start];
        while m != start {
            circle.push(m);
            m = came_from[m];
        }
        circle.push(start);
        circle.reverse();
        let mut text = format!("import circle: {}", circle.join(" -> "));
        if scc.len() > circle.len() - 1 {
            text += &format!(" (in a circle of {})", scc.join(", "));
        }
        for &from in &scc {
            for (to, sites) in graph[from].iter().filter(|(to, _)| inside(to)) {
                text += &format!("\n  {from} -> {to}: {}", sites.join(", "));
            }
        }
        found.push(text);
    }
    found
}

/// Tarjan's strongly connected components, each sorted.
fn components<'a>(graph: &BTreeMap<&'a str, BTreeMap<&'a str, Vec<&'a str>>>) -> Vec<Vec<&'a str>> {
    struct Walk<'a, 'g> {
        graph: &'g BTreeMap<&'a str, BTreeMap<&'a str, Vec<&'a str>>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a, '_> {
        fn visit(&mut self, m: &'a str) {
            let n = self.index.len();
            self.index.insert(m, n);
            self.low.insert(m, n);
            self.stack.push(m);
            self.on_stack.insert(m);
            let graph = self.graph;
            for &next in graph[m].keys() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    self.low.insert(m, self.low[m].min(self.low[next]));
                } else if self.on_stack.contains(next) {
                    self.low.insert(m, self.low[m].min(self.index[next]));
                }
            }
            if self.low[m] == self.index[m] {
                let mut scc = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    scc.push(top);
                    if top == m {
                        break;
                    }
                }
                scc.sort();
                self.out.push(scc);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &m in graph.keys() {
        if !walk.index.contains_key(m) {
            walk.visit(m);
        }
    }
    walk.out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_source_keeps_its_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "found the sources: {}", files.len());
    // The roomcast-bench crate (bench/peers is a crate of its own, without roomcast).
    for dir in ["bench/src", "bench/benches", "bench/tests"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    let mut found = Vec::new();
    let mut graph = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        // A file of a top-level module not in the table says so (and src/lib.rs of its `mod`).
        found.extend(violations(&rel, &text));
        graph.extend(edges(&rel, &text));
    }
    let arrows: BTreeSet<(&str, &str)> = graph
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    println!("import graph of the top-level modules (layer -> what it uses):");
    for (from, to) in &arrows {
        println!("{from} -> {to}");
    }
    assert!(arrows.len() >= 5, "found the imports: {arrows:?}");
    found.extend(cycles(&graph));
    found.dedup();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Code the checker must flag: file, code, what its one finding says.
#[rustfmt::skip]
const CAUGHT: &[(&str, &str, &str)] = &[
    // A forbidden use for each layer that has any.
    ("src/sys/x.rs",        "use crate::reactor::Shard;",           "sys uses crate::reactor"),
    ("src/protocol/x.rs",   "use crate::ops::plan;",                "may use: nothing"),
    ("src/config/x.rs",     "crate::ops::parse_bytes(s);",          "config uses crate::ops"),
    ("src/rooms/x.rs",      "let s = crate::reactor::X;",           "rooms uses crate::reactor"),
    ("src/mesh.rs",         "use crate::reactor::sys::EventFd;",    "mesh uses crate::reactor"),
    ("src/reactor/x.rs",    "use crate::{app, mesh};",              "reactor uses crate::app"),
    ("src/backplane/x.rs",  "use crate::app::{Msg, Reply};",        "backplane uses crate::app"),
    ("src/hooks/x.rs",      "use crate::ops::metrics;",             "hooks uses crate::ops"),
    ("src/ops/x.rs",        "use crate::app::gate::Gate;",          "ops uses crate::app"),
    ("src/app/x.rs",        "use crate::config::ServeConfig;",      "app uses crate::config"),
    ("src/app/x.rs",        "crate::server::start(&cfg);",          "app uses crate::server"),
    ("src/lib.rs",          "pub use crate::rooms::Room;",          "lib uses crate::rooms"),
    ("bench/src/x.rs",      "use roomcast::app::App;",              "bench uses roomcast::app"),
    // A group over several lines is found on its own line; nested groups, `as`.
    ("src/reactor/x.rs",    "use crate::{\n    mesh::Endpoint,\n    rooms::Room,\n};",
                            "src/reactor/x.rs:3: reactor uses crate::rooms"),
    ("src/reactor/x.rs",    "use crate::{mesh::{self, E as F}, app};", "reactor uses crate::app"),
    // `super::` chains that climb out of the top-level module.
    ("src/rooms/mod.rs",    "use super::app::Msg;",                 "rooms uses crate::app"),
    ("src/rooms/history.rs", "use super::super::app::Msg;",         "rooms uses crate::app"),
    ("src/rooms/history.rs", "use super::{super::app, Ring};",      "rooms uses crate::app"),
    // A new top-level module that is not in the table, and a use of one.
    ("src/webhooks.rs",       "pub struct Ask;",                      "add it to the table"),
    ("src/backplane/x.rs",  "use crate::webhooks::Ask;",              "add it to the table"),
    ("src/lib.rs",          "pub mod app;\npub mod webhooks;",        "add it to the table"),
    // unsafe and syscalls.
    ("src/mesh.rs",         "fn f() { unsafe { g() } }",            "unsafe outside"),
    ("src/protocol/x.rs",   "fn f() { unsafe { g() } }",            "unsafe outside"),
    ("src/ops/x.rs",        "let r = syscall!(close(fd));",         "a syscall outside"),
    // Code after a raw string still counts; long files.
    ("src/mesh.rs",         "let s = r#\"\"\"#;\nuse crate::app::X;", "src/mesh.rs:2:"),
];

/// Code the checker must let pass.
#[rustfmt::skip]
const PASSES: &[(&str, &str)] = &[
    ("src/rooms/x.rs",      "use crate::protocol::Close;"),
    ("src/mesh.rs",         "use crate::sys::{poll, EventFd};"),
    ("src/reactor/x.rs",    "use crate::mesh::Endpoint;"),
    ("src/backplane/x.rs",  "use crate::{mesh::Endpoint, rooms::Room, sys::EventFd};"),
    ("src/ops/x.rs",        "use crate::reactor::stats::Snapshot;"),
    ("src/app/x.rs",        "use crate::ops::admin; use crate::backplane::Request;"),
    ("src/server.rs",       "use crate::{app::App, config::ServeConfig, ops};"),
    ("src/main.rs",         "use roomcast::config::ServeConfig;"),
    ("src/lib.rs",          "pub mod app;\npub mod hooks;"),
    ("bench/src/x.rs",      "use roomcast::{ops::plan, protocol::frame::OpCode};"),
    ("bench/src/x.rs",      "use crate::client::Conn;"),
    ("src/app/x.rs",        "pub(crate) fn f() {}\npub(super) fn g() {}"),
    // `super::` that stays inside the top-level module (app::sse, from app::wire::tests;
    // a '{' char opens no block); one that climbs out to an allowed module.
    ("src/rooms/history.rs", "use super::Room;"),
    ("src/app/wire.rs",     "fn f() { '{'; }\nmod tests {\n    use super::super::sse::w;\n}"),
    ("src/app/mod.rs",      "use super::rooms::Room;"),
    ("src/sys/mod.rs",      "fn f() { unsafe { g() } }"),
    ("src/reactor/backend/x.rs", "fn f() { unsafe { g() } }"),
    ("src/sys/mod.rs",      "let r = syscall!(close(fd));"),
    // Comments and strings (raw ones too) do not count.
    ("src/reactor/x.rs",    "// unsafe and crate::app are words\nlet s = \"crate::app unsafe\";"),
    ("src/mesh.rs",         "// unsafe and crate::app are words\nlet s = \"crate::app unsafe\";"),
    ("src/mesh.rs",         "let s = br#\"{\"a\": \"b\"} crate::app unsafe\"#;\nlet t = r\"\\\";"),
];

#[test]
fn the_checker_catches_what_it_is_for() {
    for (path, code, what) in CAUGHT {
        let v = violations(path, code);
        assert!(v.len() == 1 && v[0].contains(what), "{path}: {code}: {v:?}");
    }
    for (path, code) in PASSES {
        assert_eq!(
            violations(path, code),
            Vec::<String>::new(),
            "{path}: {code}"
        );
    }
    let v = violations("src/mesh.rs", &"x\n".repeat(801));
    assert!(v.len() == 1 && v[0].contains("801 lines"), "{v:?}");
    // An import circle between two modules, with where each edge is.
    let mut graph = edges("src/app/x.rs", "use crate::backplane::Request;");
    assert!(cycles(&graph).is_empty());
    graph.extend(edges("src/backplane/run.rs", "\nuse crate::app::Msg;"));
    let circles = cycles(&graph);
    assert_eq!(circles.len(), 1, "{circles:?}");
    for what in [
        "app -> backplane -> app",
        "src/app/x.rs:1",
        "src/backplane/run.rs:2",
    ] {
        assert!(circles[0].contains(what), "{what}: {}", circles[0]);
    }
    // And one over three, beside a module outside it.
    let mut graph = edges("src/ops/x.rs", "use crate::{app::Gate, sys::poll};");
    graph.extend(edges("src/app/x.rs", "use crate::config::X;"));
    graph.extend(edges("src/config/x.rs", "use crate::ops::capacity;"));
    let circles = cycles(&graph);
    let three = "app -> config -> ops -> app";
    assert!(
        circles.len() == 1 && circles[0].contains(three),
        "{circles:?}"
    );
}
