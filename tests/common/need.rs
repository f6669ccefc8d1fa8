//! Outside programs the black-box tests drive (Python, Node, Chromium, HAProxy, Redis, and
//! the TLS tools openssl, testssl.sh and sslscan). A test names what it needs first,
//! `need!(Redis);`: when something is missing it skips with one line that says what and
//! how to install it, so a plain `cargo test` passes on any machine. `ROOMCAST_REQUIRE_ALL=1` (scripts/test.sh sets it) turns that skip into a
//! failure with the same words, so CI never skips silently.
//!
//! bench/tests compiles this file too (as its `common::need`), so it uses nothing else of
//! `tests/common`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An outside program, with what it needs beside it.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    /// The Python 3 of `.venv-py3` (or `ROOMCAST_PYTHON`) with `websockets` and
    /// `prometheus_client` (tests/clients/*.py, tests/ops.rs).
    Python,
    /// `node` with the `ws` package in `tests/clients/node_modules` (tests/clients/*.mjs).
    Node,
    /// `node` with the JavaScript client's dev dependencies in `clients/js/node_modules`.
    NodeJsClient,
    /// Debian's Chromium (or `ROOMCAST_CHROMIUM`), driven by tests/clients/cdp.mjs.
    Chromium,
    /// `redis-server` and `redis-cli`.
    Redis,
    /// `haproxy`.
    Haproxy,
    /// `openssl` (its `s_client`, a TLS client other than rustls).
    Openssl,
    /// `testssl` (Debian's `testssl.sh`), the TLS scanner.
    Testssl,
    /// `sslscan`, the other TLS scanner.
    Sslscan,
}

/// Returns from the test (which passes) unless every program named is there:
/// `need!(Redis);`, `need!(Python, Node, Chromium);`.
#[macro_export]
macro_rules! need {
    ($($program:ident),+ $(,)?) => {
        if !$crate::common::need::present(&[$($crate::common::need::Program::$program),+]) {
            return;
        }
    };
}

/// Whether every one of `programs` is there. If not: one line on stderr naming what is
/// missing and how to install it, and false; with `ROOMCAST_REQUIRE_ALL=1`, a panic.
pub fn present(programs: &[Program]) -> bool {
    let missing: Vec<String> = programs.iter().filter_map(|p| p.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let what = format!("needs {}, or run scripts/test.sh", missing.join("; "));
    if std::env::var_os("ROOMCAST_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("{what} (ROOMCAST_REQUIRE_ALL=1: a skip is a failure)");
    }
    // The harness names each test's thread after it.
    let test = std::thread::current().name().unwrap_or("test").to_owned();
    // Written to the handle, not with eprintln!, which the harness captures (and never
    // shows) for a test that passes; in one write, so that lines of tests running at once
    // do not interleave.
    let line = format!("{test}: skipped: {what}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

impl Program {
    /// What is missing, with the command that installs it; None when all is there.
    fn missing(self) -> Option<String> {
        match self {
            Program::Python => python_missing(),
            Program::Node => node_missing("tests/clients"),
            Program::NodeJsClient => node_missing("clients/js"),
            Program::Chromium => (!chromium().exists()).then(|| {
                format!(
                    "{} (apt-get install chromium, or set ROOMCAST_CHROMIUM)",
                    chromium().display()
                )
            }),
            Program::Redis => (!on_path("redis-server") || !on_path("redis-cli"))
                .then(|| "redis-server and redis-cli (apt-get install redis-server)".to_owned()),
            Program::Haproxy => {
                (!on_path("haproxy")).then(|| "haproxy (apt-get install haproxy)".to_owned())
            }
            Program::Openssl => {
                (!on_path("openssl")).then(|| "openssl (apt-get install openssl)".to_owned())
            }
            Program::Testssl => {
                (!on_path("testssl")).then(|| "testssl (apt-get install testssl.sh)".to_owned())
            }
            Program::Sslscan => {
                (!on_path("sslscan")).then(|| "sslscan (apt-get install sslscan)".to_owned())
            }
        }
    }
}

/// The repository's root (`CARGO_MANIFEST_DIR` is `bench/` when bench/tests builds this).
fn root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("scripts/test.sh").exists())
        .unwrap_or(manifest)
}

/// The Python 3 of the venv scripts/test.sh makes (or `ROOMCAST_PYTHON`).
pub fn python() -> PathBuf {
    std::env::var_os("ROOMCAST_PYTHON")
        .map_or_else(|| root().join(".venv-py3/bin/python"), Into::into)
}

/// Debian's Chromium (or `ROOMCAST_CHROMIUM`), which scripts/test.sh installs.
pub fn chromium() -> PathBuf {
    std::env::var_os("ROOMCAST_CHROMIUM").map_or("/usr/bin/chromium".into(), Into::into)
}

fn python_missing() -> Option<String> {
    const INSTALL: &str =
        "python3 -m venv .venv-py3 && .venv-py3/bin/pip install -r scripts/python-requirements.txt";
    let python = python();
    let shown = python.strip_prefix(root()).unwrap_or(&python).display();
    if !python.exists() {
        return Some(format!("{shown} ({INSTALL})"));
    }
    let imports = std::process::Command::new(&python)
        .args(["-c", "import websockets, prometheus_client"])
        .stderr(std::process::Stdio::null())
        .status();
    match imports {
        Ok(s) if s.success() => None,
        _ => Some(format!(
            "websockets and prometheus_client in {shown} ({INSTALL})"
        )),
    }
}

/// `node`, and the packages of the Node project in `dir` (`ws` among them).
fn node_missing(dir: &str) -> Option<String> {
    if !on_path("node") {
        return Some("node (apt-get install nodejs npm)".to_owned());
    }
    let modules = root().join(dir).join("node_modules/ws");
    (!modules.exists()).then(|| format!("{dir}/node_modules (cd {dir} && npm ci)"))
}

/// Whether an executable `program` is in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
