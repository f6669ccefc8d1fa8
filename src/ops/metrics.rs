//! `/metrics`: every shard's figures in the Prometheus text format (version 0.0.4), plus
//! process-wide ones read at scrape time (descriptors, limits, drain state).

use std::fmt::Write;

use crate::reactor::stats::{Kind, SharedStats};

use super::capacity::{Capacity, Load};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the whole exposition.
pub fn render(stats: &SharedStats, draining: bool, capacity: &Capacity, load: &Load) -> String {
    let open = stats.total("connections");
    let snaps = stats.values();
    let mut out = String::with_capacity(16 * 1024);
    let mut family = "";
    for (i, meta) in stats.meta().enumerate() {
        if meta.family != family {
            family = meta.family;
            let kind = match meta.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {family} {}", meta.help);
            let _ = writeln!(out, "# TYPE {family} {kind}");
        }
        for (shard, values) in snaps.iter().enumerate() {
            let sep = if meta.label.is_empty() { "" } else { "," };
            let _ = writeln!(
                out,
                "{family}{{shard=\"{shard}\"{sep}{}}} {}",
                meta.label, values[i]
            );
        }
    }
    let process = [
        (
            "roomcast_open_fds",
            "Descriptors the process holds (io_uring sockets live in fixed-file tables instead).",
            open_fds() as f64,
        ),
        (
            "roomcast_fd_limit",
            "RLIMIT_NOFILE of the process.",
            fd_limit() as f64,
        ),
        (
            "roomcast_max_conns",
            "--max-conns in effect (0: no limit; with auto, as the capacity model last set it).",
            load.limit() as f64,
        ),
        (
            "roomcast_draining",
            "1 while the server drains after SIGTERM/SIGINT.",
            f64::from(u8::from(draining)),
        ),
        (
            "roomcast_capacity_connections",
            "Connections the capacity model says this box holds by memory budget and descriptor tables.",
            capacity.connections as f64,
        ),
        (
            "roomcast_capacity_connections_by_cpu",
            "Connections the shards' CPUs carry at the work per connection served now (0: too little load to tell).",
            load.by_cpu().unwrap_or(0) as f64,
        ),
        (
            "roomcast_capacity_predicted_cpus",
            "CPUs the capacity model says what this node serves costs (sends, deliveries, bytes, messages in, handshakes, pings over the last seconds).",
            load.predicted_cpus(),
        ),
        (
            "roomcast_capacity_connections_left",
            "Connections that still fit: the lesser of the capacity by memory and by CPU, less the sockets open.",
            load.left(capacity, open) as f64,
        ),
        (
            "roomcast_memory_budget_bytes",
            "Memory the capacity model plans with (--memory-budget, the cgroup's or the machine's).",
            capacity.memory_budget_bytes as f64,
        ),
    ];
    for (name, help, value) in process {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

fn fd_limit() -> u64 {
    crate::sys::nofile_limit().0
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::reactor::stats::figures!(
        /// A service's figures, as the app declares its own.
        Service {
            close_1000: Counter "roomcast_closed_total" "code=\"1000\"" "Closes, by code.",
            close_1008: Counter "roomcast_closed_total" "code=\"1008\"" "",
        }
    );

    #[test]
    fn every_sample_belongs_to_a_declared_family() {
        use crate::reactor::stats::Figures;
        let stats = SharedStats::new(2, Service::META);
        let info = crate::ops::admin::Info::empty();
        let text = render(&stats, false, &info.capacity, &info.load);
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(declared.insert(rest.split(' ').next().unwrap().to_owned()));
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{line}");
                assert!(line.rsplit(' ').next().unwrap().parse::<f64>().is_ok());
            }
        }
        assert!(text.contains("roomcast_closed_total{shard=\"1\",code=\"1008\"} 0"));
    }
}
