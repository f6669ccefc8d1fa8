//! `roomcast check --connections N`: what on this machine stands between it and N
//! connections, line by line, each with its fix. Reads limits, sysctls, memory and
//! io_uring support; changes nothing.

use std::fmt;

/// Kernel memory per idle socket with epoll, measured on Linux 6.18 (DESIGN.md). The
/// io_uring figure and roomcast's own bytes per connection come from `roomcast plan`'s
/// built-in figures, so the two commands agree.
pub const KERNEL_BYTES_EPOLL: u64 = 4_000;

/// One line of the verdict.
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok {
            write!(f, "ok     {}", self.what)
        } else {
            write!(f, "SHORT  {}\n       fix: {}", self.what, self.fix)
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn num(path: &str) -> Option<u64> {
    read(path)?.split_whitespace().next()?.parse().ok()
}

/// A /proc/meminfo field, in bytes (0 if absent).
pub fn meminfo(name: &str) -> u64 {
    read("/proc/meminfo")
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// RLIMIT_NOFILE: (soft, hard).
pub fn nofile() -> (u64, u64) {
    crate::sys::nofile_limit()
}

/// Everything `check` looks at, for `n` connections over `shards` shards.
pub fn findings(n: u64, shards: u64, uring: Result<(), String>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |ok: bool, what: String, fix: String| out.push(Finding { ok, what, fix });
    let kernel = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let uring_ok = uring.is_ok();
    push(
        uring_ok,
        match &uring {
            Ok(()) => format!("io_uring available (kernel {kernel}): sockets live in fixed-file tables, not in RLIMIT_NOFILE"),
            Err(why) => format!("io_uring unavailable ({why}); epoll needs one descriptor per connection"),
        },
        "kernel ≥ 6.1 with kernel.io_uring_disabled = 0 (sysctl/99-roomcast.conf)".into(),
    );
    // Descriptors: a ring's fixed-file table is capped by RLIMIT_NOFILE; with epoll the
    // whole process needs one per connection.
    let per_holder = if uring_ok {
        n.div_ceil(shards.max(1))
    } else {
        n
    } + 1024;
    let (soft, hard) = nofile();
    push(
        hard >= per_holder,
        format!(
            "RLIMIT_NOFILE soft {soft} / hard {hard}; {} needs {per_holder} ({})",
            n,
            if uring_ok { format!("{} per ring over {shards} shards", n.div_ceil(shards.max(1))) } else { "all in one process".into() }
        ),
        format!(
            "raise the hard limit to ≥ {per_holder}: sysctl/limits.conf or LimitNOFILE= (sysctl/roomcast.service){}",
            if uring_ok { format!(", or use --shards {}", n.div_ceil(hard.saturating_sub(1024).max(1))) } else { String::new() }
        ),
    );
    if let Some(nr_open) = num("/proc/sys/fs/nr_open") {
        push(
            nr_open >= per_holder,
            format!("fs.nr_open = {nr_open} (the ceiling for RLIMIT_NOFILE)"),
            format!("sysctl fs.nr_open={}", per_holder.max(1 << 20)),
        );
    }
    if let Some(max) = num("/proc/sys/fs/file-max") {
        let used = num("/proc/sys/fs/file-nr").unwrap_or(0);
        push(
            max >= used + n,
            format!(
                "fs.file-max = {max}, {used} in use: room for {} more",
                max.saturating_sub(used)
            ),
            format!("sysctl fs.file-max={}", (used + n) * 2),
        );
    }
    if let Some(c) = num("/proc/sys/net/core/somaxconn") {
        // Only bursts of many thousands of handshakes overflow the defaults.
        push(
            c >= 4096 || n < 10_000,
            format!("net.core.somaxconn = {c} (caps each shard's accept backlog)"),
            "sysctl net.core.somaxconn=65535".into(),
        );
    }
    if let Some(c) = num("/proc/sys/net/ipv4/tcp_max_syn_backlog") {
        push(
            c >= 4096 || n < 10_000,
            format!("net.ipv4.tcp_max_syn_backlog = {c} (half-open connections during a ramp)"),
            "sysctl net.ipv4.tcp_max_syn_backlog=65535".into(),
        );
    }
    if let Some(max) = num("/proc/sys/net/netfilter/nf_conntrack_max") {
        let used = num("/proc/sys/net/netfilter/nf_conntrack_count").unwrap_or(0);
        push(
            max >= used + n,
            format!("net.netfilter.nf_conntrack_max = {max}, {used} tracked (a full table drops new connections silently)"),
            format!("sysctl net.netfilter.nf_conntrack_max={}", (used + n) * 2),
        );
    }
    let figures = super::plan::Figures::builtin();
    let per_conn = if uring_ok {
        figures.kernel_bytes_per_socket as u64
    } else {
        KERNEL_BYTES_EPOLL
    } + figures.user_bytes_per_conn as u64;
    let need = n * per_conn;
    let avail = meminfo("MemAvailable:");
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    push(
        avail >= need,
        format!(
            "memory: {:.1} GiB available; {n} idle connections need ~{:.1} GiB ({per_conn} B each: kernel socket + roomcast); a load generator on this box needs as much again",
            gib(avail),
            gib(need)
        ),
        format!("add memory or hold fewer connections per box (≈ {} fit)", avail / per_conn),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modest_target_passes_and_an_absurd_one_does_not() {
        let small = findings(10, 1, Ok(()));
        assert!(
            small.iter().all(|f| f.ok),
            "{}",
            small
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        let huge = findings(1 << 40, 1, Ok(()));
        assert!(huge.iter().any(|f| !f.ok && f.what.starts_with("memory")));
        assert!(huge
            .iter()
            .any(|f| !f.ok && f.what.starts_with("RLIMIT_NOFILE")));
    }
}
