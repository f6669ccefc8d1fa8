//! What the bench reads about the server and the machine: memory and CPU from /proc,
//! latency histograms, and the machine's description for the results file.

use hdrhistogram::Histogram;

/// Server memory and CPU, and the kernel's slab, at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub cpu_ns: u64,
    pub slab_bytes: u64,
    /// MemTotal − MemAvailable: the box's memory in use.
    pub used_bytes: u64,
    /// This load generator's own CPU time (user + system), and when it was read.
    pub client_cpu_ns: u64,
    pub at: Option<std::time::Instant>,
}

impl ProcSample {
    /// The fraction of one CPU the load generator used from `self` to `later`. Near 1 the
    /// client, not the server, set the pace: the run's throughput is a lower bound.
    pub fn client_busy(&self, later: &ProcSample) -> f64 {
        let wall = match (self.at, later.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_nanos() as f64,
            _ => return 0.0,
        };
        later.client_cpu_ns.saturating_sub(self.client_cpu_ns) as f64 / wall.max(1.0)
    }
}

fn own_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

pub fn sample(pid: Option<u32>) -> ProcSample {
    let mut s = ProcSample {
        client_cpu_ns: own_cpu_ns(),
        at: Some(std::time::Instant::now()),
        ..ProcSample::default()
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.slab_bytes = field_kib(&meminfo, "Slab:") * 1024;
    s.used_bytes = (field_kib(&meminfo, "MemTotal:") - field_kib(&meminfo, "MemAvailable:")) * 1024;
    let Some(pid) = pid else { return s };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.rss_bytes = field_kib(&status, "VmRSS:") * 1024;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            s.cpu_ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    s
}

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// The quantiles a CDF plot is drawn from.
const CDF: [f64; 17] = [
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
];

/// `[[quantile, microseconds], …]` for the report's CDF plots.
pub fn cdf_us(h: &Histogram<u64>) -> serde_json::Value {
    let points: Vec<[f64; 2]> = CDF
        .iter()
        .map(|&q| [q, h.value_at_quantile(q) as f64 / 1000.0])
        .collect();
    serde_json::json!(points)
}

/// p50/p99/p999 in microseconds.
pub fn quantiles_us(h: &Histogram<u64>) -> (f64, f64, f64) {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    (q(0.5), q(0.99), q(0.999))
}

pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        // The machine's CPUs, not this process's affinity (the bench runs pinned).
        "cores": cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        "kernel": kernel.trim(),
        "mem_total_bytes": field_kib(&meminfo, "MemTotal:") * 1024,
    })
}
