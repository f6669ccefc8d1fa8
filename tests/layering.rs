//! DESIGN.md's layering, checked on the source: the reactor knows nothing of the app, the
//! rooms or ops; rooms and protocol do no I/O and know nothing above them; `unsafe` and
//! syscalls live only under `src/reactor/`; no source file grows past 800 lines.

use std::path::{Path, PathBuf};

/// Which modules a layer must not name.
const RULES: &[(&str, &[&str])] = &[
    ("src/reactor/", &["app", "rooms", "ops"]),
    ("src/rooms/", &["app", "reactor", "ops"]),
    ("src/protocol/", &["app", "reactor", "ops"]),
];

const MAX_LINES: usize = 800;

/// The code of a Rust file without its comments and string literals (good enough for
/// looking up paths and keywords: raw strings and char literals with quotes are rare here
/// and only ever hide text, never invent it).
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
            ('"', _) => in_str = true,
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

fn words(code: &str) -> Vec<&str> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// What is wrong with `path` (relative to the crate root), whose text is `text`.
fn violations(path: &str, text: &str) -> Vec<String> {
    let code = code_only(text);
    let mut found = Vec::new();
    for (layer, banned) in RULES {
        if !path.starts_with(layer) {
            continue;
        }
        for (n, line) in code.lines().enumerate() {
            for module in *banned {
                let direct = format!("crate::{module}");
                let names_it = words(line)
                    .iter()
                    .any(|w| *w == direct || w.starts_with(&format!("{direct}::")));
                // `use crate::{app, …}` and `use crate::{app::…}`.
                let grouped = line.contains("crate::{")
                    && line.split("crate::{").nth(1).is_some_and(|g| {
                        words(g)
                            .iter()
                            .any(|w| w.split("::").next() == Some(module))
                    });
                if names_it || grouped {
                    found.push(format!("{path}:{}: {layer} uses crate::{module}", n + 1));
                }
            }
        }
    }
    if !path.starts_with("src/reactor/") {
        for (n, line) in code.lines().enumerate() {
            let w = words(line);
            if w.contains(&"unsafe") {
                found.push(format!("{path}:{}: unsafe outside src/reactor/", n + 1));
            }
            if line.contains("syscall!") {
                found.push(format!("{path}:{}: a syscall outside src/reactor/", n + 1));
            }
        }
    }
    let lines = text.lines().count();
    if lines > MAX_LINES {
        found.push(format!("{path}: {lines} lines (at most {MAX_LINES})"));
    }
    found
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
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        found.extend(violations(&rel, &std::fs::read_to_string(&file).unwrap()));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_checker_catches_what_it_is_for() {
    let bad_import = "use crate::app::gate::Gate;\n";
    assert_eq!(violations("src/reactor/x.rs", bad_import).len(), 1);
    assert_eq!(
        violations("src/reactor/x.rs", "use crate::{app, mesh};\n").len(),
        1
    );
    assert_eq!(
        violations("src/rooms/x.rs", "let s = crate::reactor::stats::X;\n").len(),
        1
    );
    assert_eq!(
        violations("src/protocol/x.rs", "use crate::ops::plan;\n").len(),
        1
    );
    assert_eq!(
        violations("src/app/x.rs", bad_import).len(),
        0,
        "app glues: allowed"
    );
    assert_eq!(
        violations("src/reactor/x.rs", "use crate::mesh::Endpoint;\n").len(),
        0
    );
    let unsafe_block = "fn f() { unsafe { g() } }\n";
    assert_eq!(violations("src/mesh.rs", unsafe_block).len(), 1);
    assert_eq!(violations("src/reactor/sys/x.rs", unsafe_block).len(), 0);
    assert_eq!(
        violations("src/ops/x.rs", "let r = syscall!(close(fd));\n").len(),
        1
    );
    // Comments and strings do not count.
    let prose = "// unsafe and crate::app are words here\nlet s = \"crate::app unsafe\";\n";
    assert_eq!(violations("src/reactor/x.rs", prose).len(), 0);
    assert_eq!(violations("src/mesh.rs", prose).len(), 0);
    assert_eq!(violations("src/mesh.rs", &"x\n".repeat(801)).len(), 1);
}
