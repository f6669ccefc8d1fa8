//! Fuzz entry point for `--config FILE`. The cargo-fuzz target `config` in `fuzz/` calls
//! it, and a unit test runs it over the seed corpus in `fuzz/seeds/config`. The property
//! it checks: no text panics on its way from TOML to a validated [`ServeConfig`], an
//! error names a line, and every value `--print-config` prints reads back as itself.

use std::ffi::OsString;
use std::sync::OnceLock;

use clap::{ArgMatches, Args, Command, FromArgMatches};

use super::{file, ServeConfig};

/// The `serve` command and its matches with no flags given (so every key of a file
/// applies), built once.
fn serve() -> &'static (Command, ArgMatches) {
    static SERVE: OnceLock<(Command, ArgMatches)> = OnceLock::new();
    SERVE.get_or_init(|| {
        let serve = ServeConfig::augment_args(Command::new("serve"));
        let matches = serve
            .clone()
            .try_get_matches_from(["serve"])
            .expect("serve takes no required flags");
        (serve, matches)
    })
}

/// Files with more keys than this are read (TOML to keys) but not taken through clap:
/// each key costs a parse of the `serve` command (~0.1 ms), which would hold the fuzzer
/// to a few hundred inputs a second. The unit test takes every seed all the way.
const FULL_MAX_KEYS: usize = 2;

/// One config file's text, through everything `serve --config` does with it.
pub fn file(data: &[u8]) {
    check(data, FULL_MAX_KEYS);
}

/// [`file`], taking files of up to `full_max_keys` keys on through the flags' parsers
/// and [`ServeConfig::validate`].
fn check(data: &[u8], full_max_keys: usize) {
    // `--config` reads the file with read_to_string: not UTF-8 is an error before TOML.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = match file::read_keys(text) {
        Ok(keys) => keys,
        Err(e) => return assert!(e.starts_with("line "), "{e}"),
    };
    let lines = text.matches('\n').count() + 1;
    for fk in keys.values() {
        assert!(
            (1..=lines).contains(&fk.line),
            "line {} of {lines}",
            fk.line
        );
        for v in &fk.values {
            let printed = format!("x = {}\n", file::toml_value(v));
            let back = file::read_keys(&printed).expect("a printed value reads back");
            assert_eq!(back["x"].values, std::slice::from_ref(v), "{printed}");
        }
    }
    if keys.len() > full_max_keys {
        return;
    }
    let (serve, matches) = serve();
    let Ok((args, _)) = file::arguments_in(text, "fuzz.toml", serve, matches) else {
        return;
    };
    // What main does next: every argument parsed together, then checked together.
    let mut argv: Vec<OsString> = vec!["serve".into()];
    argv.extend(args);
    let Ok(all) = serve.clone().try_get_matches_from(argv) else {
        return;
    };
    let cfg = ServeConfig::from_arg_matches(&all).expect("matches of the serve command");
    let _ = cfg.validate();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn config_target_over_seed_corpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/config");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 4, "seed corpus for config is too small");
        for seed in seeds {
            super::check(&seed, usize::MAX);
            for cut in (0..seed.len()).step_by(7) {
                super::check(&seed[..cut], usize::MAX);
            }
        }
    }
}
