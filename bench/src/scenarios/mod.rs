//! The scenarios. Each is bounded in connections and time, exits by itself, prints a
//! human summary and returns its figures for the results file.
//!
//! With `--workers N` (N > 1) a scenario's connections are spread over N child processes
//! of this binary (hidden `worker-*` subcommands): the parent coordinates them over their
//! stdin and stdout (orders in, one report line per phase out), samples the server
//! around the measured window, and merges what they report. Every scenario reports the
//! load generator's own CPU over its window (its workers included) as `client_busy`.
//!
//! One file per scenario, its worker side (`worker-*`) included:
//!
//! - `idle.rs`: connections held open, answering pings: memory per connection, idle CPU;
//! - `ramp.rs`: handshakes as fast as they go: rate, latency, CPU per connection;
//! - `echo.rs`: messages kept in flight to `/echo`: rate, round trip, CPU per message;
//! - `fanout.rs`: rooms of members and a publisher each (`slow` is two of them): deliveries,
//!   latency, completeness and CPU per delivery, over a cluster's nodes with `--also`;
//! - `churn.rs`: connect, join, leave, close at a steady rate: success, memory drift;
//! - `admission.rs`: members join a busy room until `--max-conns auto` refuses: CPU and
//!   latency at the limit;
//! - `calibrate.rs`: the runs above, turned into the costs `roomcast plan` predicts from.
//!
//! What they share:
//!
//! - `target.rs`: [`Target`], where the load goes and how it spreads;
//! - `connect.rs`: opening many connections at once, and the `--deflate` check;
//! - `measure.rs`: the processes sampled around the window, the CPU figures, `/stats`;
//! - `workers.rs`: the worker processes, the parent's side and the worker's.
//!
//! `resume`, with its accounting, is [`crate::resume`]; `storm`, with the backend it runs,
//! is [`crate::storm`].

mod admission;
mod calibrate;
mod churn;
mod connect;
mod echo;
mod fanout;
mod idle;
pub(crate) mod measure;
mod ramp;
mod target;
pub(crate) mod workers;

use indicatif::{ProgressBar, ProgressStyle};

pub use admission::{admission, Admission};
pub use calibrate::calibrate;
pub use churn::{churn, churn_worker};
pub use echo::{echo, echo_worker};
pub use fanout::{fanout, fanout_worker, Fanout};
pub use idle::{idle, idle_worker};
pub use ramp::{ramp, ramp_worker};
pub use target::{Target, MAX_ALSO};

/// A progress bar of `len` steps (connections opened, members joined, cycles run).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}
