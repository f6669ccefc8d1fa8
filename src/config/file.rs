//! `--config FILE`: every `serve` flag as a TOML key, with the same name. Precedence is
//! flag > environment > file > default: a key in the file is used only where neither a
//! flag nor a `ROOMCAST_*` variable set that setting.
//!
//! Keys may sit at the top level or in the table of their group ([`GROUPS`]), so a file can
//! be laid out as `--print-config` prints it. A file's values go through the same parsers
//! and range checks as the flags (they become `--key=value` arguments), so a value the flag
//! would refuse is refused the same way, with the key and the file's line named.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The tables keys are grouped in, for reading and for `--print-config`. A key not listed
/// here is in `[server]`.
pub const GROUPS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "admin-listen",
            "backend",
            "shards",
            "backlog",
            "recv-buffers",
            "recv-buffer-size",
        ],
    ),
    (
        "limits",
        &[
            "max-message",
            "max-header-bytes",
            "out-ring",
            "write-delay",
            "max-queued-bytes",
            "max-rooms-per-conn",
            "rate",
            "burst",
            "max-conns",
            "max-conns-per-ip",
            "max-conns-per-user",
            "slow-policy",
        ],
    ),
    (
        "timeouts",
        &[
            "handshake-timeout",
            "ping-interval",
            "pong-timeout",
            "idle-timeout",
            "close-timeout",
            "drain-window",
        ],
    ),
    (
        "auth",
        &[
            "allow-origin",
            "jwt-secret",
            "jwt-public-key",
            "auth-cookie",
            "api-key",
            "api-max-body",
        ],
    ),
    (
        "history",
        &[
            "history-size",
            "history-bytes",
            "history-ttl",
            "history-idle-bytes",
        ],
    ),
    ("cluster", &["redis", "node-id", "presence-events"]),
    (
        "hooks",
        &[
            "hook-connect",
            "hook-join",
            "hook-publish",
            "hook-rpc",
            "hook-forward-headers",
            "hook-timeout",
            "hook-max-inflight",
            "hook-fail-open",
            "webhook",
            "webhook-secret",
            "webhook-events",
            "webhook-batch",
        ],
    ),
    ("compression", &["deflate", "deflate-min-size"]),
    ("tls", &["tls-cert", "tls-key", "tls-listen"]),
    ("capacity", &["memory-budget", "figures", "capacity-margin"]),
    ("logs", &["log-format", "log-level"]),
    ("browsers", &["demo"]),
];

/// Keys that are not settings: they never come from a file.
const NOT_IN_FILES: &[&str] = &["config", "print-config", "help"];

/// Settings whose value is a secret: `--print-config` does not print it.
pub const SECRETS: &[&str] = &["jwt-secret", "api-key", "redis", "webhook-secret"];

/// The group of `key`.
pub fn group_of(key: &str) -> &'static str {
    GROUPS
        .iter()
        .find(|(_, keys)| keys.contains(&key))
        .map_or("server", |(g, _)| g)
}

/// Where a setting's value came from.
pub fn source_name(source: Option<ValueSource>, from_file: bool) -> &'static str {
    match source {
        Some(ValueSource::CommandLine) if from_file => "file",
        Some(ValueSource::CommandLine) => "flag",
        Some(ValueSource::EnvVariable) => "environment",
        Some(ValueSource::DefaultValue) => "default",
        _ => "unset",
    }
}

/// A key read from the file: its value(s) as flag arguments, and its line.
#[derive(Debug)]
pub struct FileKey {
    pub values: Vec<String>,
    pub line: usize,
}

/// Reads `path` and returns the arguments it adds to `serve` (only for the settings no
/// flag or environment variable set, per `matches`), or an error naming the file, line
/// and key. `serve` is the `serve` subcommand, for the flags' names and parsers.
pub fn arguments(
    path: &Path,
    serve: &Command,
    matches: &ArgMatches,
) -> Result<(Vec<OsString>, BTreeMap<String, FileKey>), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    arguments_in(&text, &path.display().to_string(), serve, matches)
}

/// [`arguments`] for the text of a file, named `name` in errors.
pub fn arguments_in(
    text: &str,
    name: &str,
    serve: &Command,
    matches: &ArgMatches,
) -> Result<(Vec<OsString>, BTreeMap<String, FileKey>), String> {
    let keys = read_keys(text).map_err(|e| format!("{name}: {e}"))?;
    let mut args = Vec::new();
    for (key, fk) in &keys {
        let at = |msg: String| format!("{name}:{}: {key}: {msg}", fk.line);
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| !NOT_IN_FILES.contains(&key.as_str()))
            .ok_or_else(|| at("unknown key (keys are the serve flags' names)".into()))?;
        let id = arg.get_id().as_str();
        let source = matches.value_source(id);
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let mut mine: Vec<OsString> = Vec::new();
        if arg.get_action().takes_values() {
            for v in &fk.values {
                mine.push(format!("--{key}={v}").into());
            }
        } else {
            match fk.values.as_slice() {
                [v] if v == "true" => mine.push(format!("--{key}").into()),
                [v] if v == "false" => {}
                _ => return Err(at("expected true or false".into())),
            }
        }
        // The flag's own parser and range check, on this key alone.
        let mut probe: Vec<OsString> = vec!["serve".into()];
        probe.extend(mine.iter().cloned());
        if let Err(e) = serve.clone().try_get_matches_from(probe) {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("invalid value");
            return Err(at(first.trim_start_matches("error: ").to_owned()));
        }
        args.extend(mine);
    }
    Ok((args, keys))
}

/// Every key of a config text, flattened out of its group table, with its line. Values
/// become strings as a flag would take them; arrays are repeated flags.
pub fn read_keys(text: &str) -> Result<BTreeMap<String, FileKey>, String> {
    let doc: toml::Spanned<BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>> =
        toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            format!("line {line}: {}", e.message())
        })?;
    let mut out = BTreeMap::new();
    for (key, value) in doc.into_inner() {
        let key_line = line_of(text, key.span().start);
        let key = key.into_inner();
        match value.get_ref() {
            toml::Value::Table(table) => {
                let Some((_, members)) = GROUPS.iter().find(|(g, _)| *g == key) else {
                    let groups: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
                    return Err(format!(
                        "line {key_line}: unknown table [{key}] (tables: {})",
                        groups.join(", ")
                    ));
                };
                for (inner, v) in table {
                    let line = find_line(text, inner, key_line);
                    if !members.contains(&inner.as_str())
                        && GROUPS.iter().any(|(_, m)| m.contains(&inner.as_str()))
                    {
                        return Err(format!(
                            "line {line}: {inner} belongs in [{}], not [{key}]",
                            group_of(inner)
                        ));
                    }
                    insert(&mut out, inner, v, line)?;
                }
            }
            v => insert(&mut out, &key, v, key_line)?,
        }
    }
    Ok(out)
}

fn insert(
    out: &mut BTreeMap<String, FileKey>,
    key: &str,
    value: &toml::Value,
    line: usize,
) -> Result<(), String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "line {line}: {key}: expected a value, found a {}",
                other.type_str()
            )),
        }
    };
    let values = match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<_, _>>()?,
        v => vec![scalar(v)?],
    };
    if out
        .insert(key.to_owned(), FileKey { values, line })
        .is_some()
    {
        return Err(format!("line {line}: {key} is set twice"));
    }
    Ok(())
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of `key` inside the table that starts at `from` (TOML's spans stop at the
/// table; the key's own line is found by its name).
fn find_line(text: &str, key: &str, from: usize) -> usize {
    text.lines()
        .enumerate()
        .skip(from)
        .find(|(_, l)| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.strip_prefix(&format!("\"{key}\""))
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(from, |(i, _)| i + 1)
}

/// Every setting in effect: (flag name, its values as given, where from).
pub fn effective(
    serve: &Command,
    matches: &ArgMatches,
    file: &BTreeMap<String, FileKey>,
) -> Vec<(String, Vec<String>, &'static str)> {
    let mut out = Vec::new();
    for arg in serve.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if NOT_IN_FILES.contains(&key) || arg.is_hide_set() {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = matches.value_source(id);
        let from_file =
            source == Some(ValueSource::CommandLine) && file.contains_key(key) && !cli_named(key);
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.push((key.to_owned(), raw, source_name(source, from_file)));
    }
    out
}

/// The effective configuration as TOML, grouped, each value with where it came from.
/// Secrets are named but not printed. Fed back as `--config`, it gives the same
/// configuration (secrets aside).
pub fn render(serve: &Command, matches: &ArgMatches, file: &BTreeMap<String, FileKey>) -> String {
    let mut by_group: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (key, raw, origin) in effective(serve, matches, file) {
        let key = key.as_str();
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key))
            .expect("effective() lists the command's own flags");
        let line = if raw.is_empty() {
            format!("# {key} =  # {origin}")
        } else if SECRETS.contains(&key) {
            format!("# {key} = (set, not printed)  # {origin}")
        } else if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
            || matches!(arg.get_action(), clap::ArgAction::Append)
        {
            let items: Vec<String> = raw.iter().map(|v| toml_value(v)).collect();
            format!("{key} = [{}]  # {origin}", items.join(", "))
        } else {
            format!("{key} = {}  # {origin}", toml_value(&raw[0]))
        };
        let g = GROUPS
            .iter()
            .position(|(g, _)| *g == group_of(key))
            .unwrap_or(0);
        by_group.entry(g).or_default().push(line);
    }
    let mut out = String::from(
        "# roomcast serve: the effective configuration (flag > environment > file > default).\n",
    );
    for (g, lines) in by_group {
        out.push_str(&format!("\n[{}]\n", GROUPS[g].0));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// Whether `--key` appears on this process's own command line (file keys are appended
/// as command-line arguments too, so clap alone cannot tell them apart).
fn cli_named(key: &str) -> bool {
    std::env::args().any(|a| a == format!("--{key}") || a.starts_with(&format!("--{key}=")))
}

/// A flag's raw value as a TOML value that reads back as the same string: integers and
/// booleans bare, everything else a string.
pub(super) fn toml_value(raw: &str) -> String {
    let canonical_int = raw.parse::<i64>().is_ok_and(|i| i.to_string() == raw);
    if canonical_int || raw == "true" || raw == "false" {
        raw.to_owned()
    } else {
        toml::Value::String(raw.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_flat_or_grouped_with_their_lines() {
        let text = "listen = \"127.0.0.1:1\"\n\n[limits]\nrate = 50\nmax-conns = \"auto\"\n\n[auth]\nallow-origin = [\"https://a\", \"https://b\"]\n";
        let keys = read_keys(text).unwrap();
        assert_eq!(keys["listen"].line, 1);
        assert_eq!(
            (keys["rate"].values.clone(), keys["rate"].line),
            (vec!["50".to_owned()], 4)
        );
        assert_eq!(keys["max-conns"].line, 5);
        assert_eq!(keys["allow-origin"].values, ["https://a", "https://b"]);
    }

    #[test]
    fn misplaced_keys_unknown_tables_and_syntax_errors_name_the_line() {
        let e = read_keys("[limits]\nlisten = \"x\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("[server]"), "{e}");
        let e = read_keys("\n[nope]\nx = 1\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("[nope]"), "{e}");
        let e = read_keys("rate = = 3\n").unwrap_err();
        assert!(e.starts_with("line 1"), "{e}");
        let e = read_keys("rate = 1\nrate = 2\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = read_keys("rate = { a = 1 }\n").unwrap_err();
        assert!(e.contains("unknown table"), "{e}");
    }

    #[test]
    fn values_print_back_as_what_they_were() {
        assert_eq!(toml_value("50"), "50");
        assert_eq!(toml_value("007"), "\"007\"");
        assert_eq!(toml_value("127.0.0.1:9000"), "\"127.0.0.1:9000\"");
        assert_eq!(toml_value("true"), "true");
        let keys = read_keys(&format!("x = {}\n", toml_value("a \"quoted\" \\ value"))).unwrap();
        assert_eq!(keys["x"].values, ["a \"quoted\" \\ value"]);
    }
}
