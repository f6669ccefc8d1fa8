//! What the bench reads about the server, the machine and itself: memory and CPU from
//! /proc (the server's threads, the server's CPU as a whole from /proc/stat, and the load
//! generator's own processes), latency histograms (and how workers hand them over), and
//! the machine's description for the results file.

use hdrhistogram::Histogram;

/// Server memory and CPU, the kernel's slab, and the load generator's CPU, at one moment.
#[derive(Clone, Debug, Default)]
pub struct ProcSample {
    pub rss_bytes: u64,
    /// The server's threads' CPU time (schedstat): what the scheduler charged to them,
    /// which leaves out softirq work the kernel did on their CPU.
    pub cpu_ns: u64,
    pub slab_bytes: u64,
    /// MemTotal − MemAvailable: the box's memory in use.
    pub used_bytes: u64,
    /// The load generator's CPU time: this process (user + system, all threads) and its
    /// worker processes, and when it was read.
    pub client_cpu_ns: u64,
    /// The same per process: (pid, ns); this process is pid 0.
    pub client_procs: Vec<(u32, u64)>,
    /// The server's CPU as a whole (`--server-cpu`): its line of /proc/stat.
    pub server_cpu: Option<CpuTimes>,
    /// The other nodes' threads' CPU time (`--also-pid`), summed, as `cpu_ns`.
    pub also_cpu_ns: u64,
    /// Redis's threads' CPU time (`--redis-pid`), as `cpu_ns`.
    pub redis_cpu_ns: Option<u64>,
    pub at: Option<std::time::Instant>,
}

impl ProcSample {
    /// The fraction of one CPU the load generator (all its processes together) used from
    /// `self` to `later`. Near 1 on one CPU the client, not the server, set the pace: the
    /// run's throughput is a lower bound.
    pub fn client_busy(&self, later: &ProcSample) -> f64 {
        later.client_cpu_ns.saturating_sub(self.client_cpu_ns) as f64 / self.wall_ns(later)
    }

    /// The busiest single load-generator process's fraction of one CPU over the window (a
    /// process not yet running at `self` counts from zero).
    pub fn client_busiest(&self, later: &ProcSample) -> f64 {
        let wall = self.wall_ns(later);
        later
            .client_procs
            .iter()
            .map(|&(pid, ns)| {
                let was = self
                    .client_procs
                    .iter()
                    .find(|p| p.0 == pid)
                    .map_or(0, |p| p.1);
                ns.saturating_sub(was) as f64 / wall
            })
            .fold(0.0, f64::max)
    }

    fn wall_ns(&self, later: &ProcSample) -> f64 {
        match (self.at, later.at) {
            (Some(a), Some(b)) => (b.duration_since(a).as_nanos() as f64).max(1.0),
            _ => f64::INFINITY,
        }
    }
}

/// One CPU's line of /proc/stat, in USER_HZ ticks (guest time is already inside user).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// CPU `cpu`'s line (`cpuN user nice system idle iowait irq softirq steal …`) of the
    /// text of /proc/stat.
    pub fn parse(stat: &str, cpu: usize) -> Option<CpuTimes> {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // Kernels before 2.6.11 had no steal; every kernel this runs on has it.
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        (v.len() >= 7).then(|| CpuTimes {
            user: at(0),
            nice: at(1),
            system: at(2),
            idle: at(3),
            iowait: at(4),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
        })
    }

    pub fn read(cpu: usize) -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?, cpu)
    }

    /// Ticks the CPU was doing anything: user + nice + system + irq + softirq + steal.
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    /// Every tick: busy + idle + iowait.
    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait
    }
}

/// One CPU over a window: its busy share, the softirq share, and its busy time in ns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuWindow {
    /// (user + nice + system + irq + softirq + steal) / total ticks.
    pub busy: f64,
    /// softirq / total ticks.
    pub softirq_share: f64,
    /// The busy ticks as nanoseconds.
    pub busy_ns: f64,
}

/// What CPU `a`..`b` did; `hz` ticks per second.
pub fn cpu_window(a: &CpuTimes, b: &CpuTimes, hz: u64) -> CpuWindow {
    let total = b.total().saturating_sub(a.total());
    let busy = b.busy().saturating_sub(a.busy());
    let softirq = b.softirq.saturating_sub(a.softirq);
    let share = |x: u64| {
        if total == 0 {
            0.0
        } else {
            x as f64 / total as f64
        }
    };
    CpuWindow {
        busy: share(busy),
        softirq_share: share(softirq),
        busy_ns: busy as f64 * 1e9 / hz.max(1) as f64,
    }
}

/// USER_HZ, the unit of /proc/stat: sysconf(_SC_CLK_TCK) (100 on every mainstream Linux
/// build; 100 if sysconf cannot say).
pub fn user_hz() -> u64 {
    // SAFETY: sysconf only reads its argument.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

fn own_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// A process's CPU time so far: the sum of its threads' schedstat (0 once it is gone).
pub(crate) fn proc_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            stat.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Samples the server `pid` (memory, its threads' CPU), its CPU `server_cpu` as a whole,
/// the box's memory, and the load generator: this process and its `workers`.
pub fn sample(pid: Option<u32>, server_cpu: Option<usize>, workers: &[u32]) -> ProcSample {
    let mut s = ProcSample {
        server_cpu: server_cpu.and_then(CpuTimes::read),
        ..ProcSample::default()
    };
    s.client_procs.push((0, own_cpu_ns()));
    for &w in workers {
        s.client_procs.push((w, proc_cpu_ns(w)));
    }
    s.client_cpu_ns = s.client_procs.iter().map(|p| p.1).sum();
    s.at = Some(std::time::Instant::now());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.slab_bytes = field_kib(&meminfo, "Slab:") * 1024;
    s.used_bytes = (field_kib(&meminfo, "MemTotal:") - field_kib(&meminfo, "MemAvailable:")) * 1024;
    let Some(pid) = pid else { return s };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.rss_bytes = field_kib(&status, "VmRSS:") * 1024;
    s.cpu_ns = proc_cpu_ns(pid);
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

/// A histogram as text for a worker's report line: `value count` pairs, one per recorded
/// bucket (each bucket's highest equivalent value), so the parent rebuilds it exactly.
pub fn hist_encode(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    for v in h.iter_recorded() {
        use std::fmt::Write as _;
        let _ = write!(out, "{} {} ", v.value_iterated_to(), v.count_at_value());
    }
    out.pop();
    out
}

/// Adds the `value count` pairs of [`hist_encode`] to `h`.
pub fn hist_add_encoded<'a>(h: &mut Histogram<u64>, mut tokens: impl Iterator<Item = &'a str>) {
    while let (Some(v), Some(n)) = (tokens.next(), tokens.next()) {
        if let (Ok(v), Ok(n)) = (v.parse::<u64>(), n.parse::<u64>()) {
            let _ = h.record_n(v, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two readings of a real /proc/stat (Linux 6.x, 2 CPUs), a second apart.
    const STAT_A: &str = "cpu  166242 15158 82734 213753 89744 0 43420 365 0 0\n\
        cpu0 76366 7699 47037 99408 52388 0 23003 174 0 0\n\
        cpu1 89875 7458 35696 114345 37355 0 20417 191 0 0\n\
        intr 51474738 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
        ctxt 117013522\nbtime 1764399251\nprocesses 115094\n";
    const STAT_B: &str = "cpu  166342 15158 82794 213773 89744 0 43440 365 0 0\n\
        cpu0 76436 7699 47067 99408 52388 1 23003 174 0 0\n\
        cpu1 89905 7458 35726 114365 37355 0 20437 191 0 0\n";

    #[test]
    fn proc_stat_cpu_lines_parse() {
        let c0 = CpuTimes::parse(STAT_A, 0).unwrap();
        assert_eq!(
            c0,
            CpuTimes {
                user: 76366,
                nice: 7699,
                system: 47037,
                idle: 99408,
                iowait: 52388,
                irq: 0,
                softirq: 23003,
                steal: 174,
            }
        );
        // `cpu1` is not `cpu` (the total) nor a prefix match of `cpu10`.
        assert_eq!(CpuTimes::parse(STAT_A, 1).unwrap().user, 89875);
        assert_eq!(CpuTimes::parse(STAT_A, 2), None);
        assert_eq!(c0.busy(), 76366 + 7699 + 47037 + 23003 + 174);
        assert_eq!(c0.total(), c0.busy() + 99408 + 52388);
    }

    #[test]
    fn a_cpu_window_is_shares_and_busy_time() {
        let (a, b) = (
            CpuTimes::parse(STAT_A, 1).unwrap(),
            CpuTimes::parse(STAT_B, 1).unwrap(),
        );
        // 30 user + 30 system + 20 softirq busy, 20 idle: 100 ticks.
        let w = cpu_window(&a, &b, 100);
        assert!((w.busy - 0.8).abs() < 1e-9, "{w:?}");
        assert!((w.softirq_share - 0.2).abs() < 1e-9, "{w:?}");
        assert!((w.busy_ns - 0.8e9).abs() < 1.0, "{w:?}");
        let c0 = cpu_window(
            &CpuTimes::parse(STAT_A, 0).unwrap(),
            &CpuTimes::parse(STAT_B, 0).unwrap(),
            100,
        );
        assert_eq!(c0.busy, 1.0);
        assert_eq!(c0.softirq_share, 0.0);
        // Nothing elapsed: no shares, no division by zero.
        assert_eq!(cpu_window(&a, &a, 100).busy, 0.0);
        assert!(user_hz() >= 1);
        assert!(CpuTimes::read(0).is_some(), "this box has a cpu0");
    }

    #[test]
    fn histograms_cross_processes_intact() {
        let mut h = histogram();
        for v in [1u64, 999, 1_000, 12_345, 12_345, 7_000_000, 59_000_000_000] {
            h.record(v).unwrap();
        }
        let mut back = histogram();
        hist_add_encoded(&mut back, hist_encode(&h).split_whitespace());
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
        assert_eq!(hist_encode(&histogram()), "");
    }
}
