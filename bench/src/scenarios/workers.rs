//! The worker processes. With `--workers N` (N > 1) a scenario's connections are spread
//! over N child processes of this binary (hidden `worker-*` subcommands). The parent's side
//! is [`Workers`]: it starts them, sends orders down their stdin and gathers the one report
//! line per phase that each writes to its stdout (`ready`, `progress K`, `done …`: a word
//! and numbers, summed over the workers with [`sums`]). A worker's side is [`Orders`].

use std::time::Instant;

use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::measure::probe;
use super::Target;
use crate::sample::ProcSample;

/// Worker `w`'s share of `n` items over `workers`: (first, count).
pub(crate) fn share(n: usize, w: usize, workers: usize) -> (usize, usize) {
    let first = n * w / workers;
    (first, n * (w + 1) / workers - first)
}

/// Child processes of this binary driving a share of the load each (see the module doc).
pub(crate) struct Workers {
    children: Vec<tokio::process::Child>,
    pub(crate) pids: Vec<u32>,
    /// Every worker's report lines, tagged with its number, as they come.
    reports: tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
}

impl Workers {
    /// Starts `n` workers, worker `w` with the subcommand and arguments `args(w)`.
    pub(crate) fn spawn(t: Target, n: usize, args: impl Fn(usize) -> Vec<String>) -> Workers {
        let exe = std::env::current_exe().expect("own path");
        let (tx, reports) = tokio::sync::mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut pids = Vec::new();
        for w in 0..n {
            let mut child = tokio::process::Command::new(&exe)
                .args([
                    "--server",
                    &t.server.to_string(),
                    "--sources",
                    &t.sources.to_string(),
                ])
                .args(
                    t.also
                        .iter()
                        .flatten()
                        .flat_map(|a| ["--also".to_owned(), a.to_string()]),
                )
                .args(t.deflate.then_some("--deflate"))
                .args(crate::tls::enabled().then_some("--tls"))
                .args(args(w))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a worker");
            pids.extend(child.id());
            let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((w, line)).is_err() {
                        break;
                    }
                }
            });
            children.push(child);
        }
        Workers {
            children,
            pids,
            reports,
        }
    }

    /// The measured window every worker scenario shares, once the workers are ready: the
    /// processes sampled, `go`, every worker's `done` line, sampled again. Returns the
    /// samples before and after, the `done` lines and the seconds between `go` and the last.
    pub(super) async fn window(&mut self, t: Target) -> (ProcSample, Vec<String>, f64, ProcSample) {
        let before = probe(t, &self.pids);
        let started = Instant::now();
        self.tell(b"go\n").await;
        let done = self.gather("done", None).await;
        let secs = started.elapsed().as_secs_f64();
        let after = probe(t, &self.pids);
        (before, done, secs, after)
    }

    /// Sends `line` (with its newline) to every worker.
    pub(crate) async fn tell(&mut self, line: &[u8]) {
        tell(&mut self.children, line).await;
    }

    /// Waits for a `word …` line from every worker and returns what follows the word, in
    /// worker order; `progress K` lines advance `pb` meanwhile.
    pub(crate) async fn gather(&mut self, word: &str, pb: Option<&ProgressBar>) -> Vec<String> {
        let mut got: Vec<Option<String>> = vec![None; self.children.len()];
        while got.iter().any(Option::is_none) {
            let (w, line) = self.reports.recv().await.expect("a worker ended early");
            let (first, rest) = line.split_once(' ').unwrap_or((&line, ""));
            if first == "progress" {
                if let Some(pb) = pb {
                    pb.inc(rest.trim().parse().unwrap_or(0));
                }
            } else if first == word {
                got[w] = Some(rest.to_owned());
            }
        }
        got.into_iter().flatten().collect()
    }

    /// Closes the workers' stdin (their signal to end) and waits for them.
    pub(crate) async fn finish(self, what: &str) {
        for (w, mut c) in self.children.into_iter().enumerate() {
            drop(c.stdin.take());
            match c.wait().await {
                Ok(status) if !status.success() => {
                    eprintln!("{what} worker {w} ended with {status}")
                }
                _ => {}
            }
        }
    }
}

/// A command line from its words.
pub(crate) fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The first `N` numbers of each line, summed over the lines.
pub(crate) fn sums<const N: usize>(lines: &[String]) -> [usize; N] {
    let mut out = [0; N];
    for l in lines {
        let numbers = l
            .split_whitespace()
            .map(|v| v.parse::<usize>().unwrap_or(0));
        for (sum, v) in out.iter_mut().zip(numbers) {
            *sum += v;
        }
    }
    out
}

/// A worker's orders from its parent: one per line on its stdin.
pub(crate) struct Orders(tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>);

impl Orders {
    pub(crate) fn new() -> Orders {
        Orders(tokio::io::BufReader::new(tokio::io::stdin()).lines())
    }

    /// The next order; None once the parent closed stdin (or reading failed).
    pub(crate) async fn next(&mut self) -> Option<String> {
        self.0.next_line().await.ok().flatten()
    }

    /// Waits for the order `word`; false if stdin closed first.
    pub(super) async fn wait_for(&mut self, word: &str) -> bool {
        while let Some(line) = self.next().await {
            if line == word {
                return true;
            }
        }
        false
    }

    /// Waits until the parent closes stdin.
    pub(super) async fn wait_end(&mut self) {
        while self.next().await.is_some() {}
    }
}

/// Sends `line` to every worker.
async fn tell(children: &mut [tokio::process::Child], line: &[u8]) {
    for c in children {
        let stdin = c.stdin.as_mut().expect("stdin");
        stdin.write_all(line).await.expect("worker stdin");
    }
}
