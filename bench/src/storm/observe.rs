//! What a storm reads of the server: its `/metrics` hook families, its pid (given, or the
//! process holding the listening socket), and the CPU of its hooks thread.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape of `/metrics`: every sample by its name and labels as written
/// (`roomcast_hook_calls_total{kind="connect",outcome="allowed"}`).
#[derive(Clone, Debug, Default)]
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    /// The Prometheus text exposition `text`, comments skipped.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics(samples)
    }

    /// `GET /metrics` from the server; empty if it does not answer.
    pub async fn scrape(server: SocketAddr) -> Metrics {
        let text = async {
            let mut s = TcpStream::connect(server).await.ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).await.ok()?;
            let text = String::from_utf8(body).ok()?;
            Some(text.split_once("\r\n\r\n")?.1.to_owned())
        };
        text.await.map(|t| Metrics::parse(&t)).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the server has hooks at all (a roomcast that knows them).
    pub fn has_hooks(&self) -> bool {
        self.0
            .keys()
            .any(|k| k.starts_with("roomcast_hook_calls_total"))
    }

    /// A sample (0 if absent).
    pub fn get(&self, sample: &str) -> f64 {
        self.0.get(sample).copied().unwrap_or(0.0)
    }

    /// The connect hook's calls answered with `outcome`.
    pub fn connect_calls(&self, outcome: &str) -> f64 {
        self.get(&format!(
            "roomcast_hook_calls_total{{kind=\"connect\",outcome=\"{outcome}\"}}"
        ))
    }

    /// A per-kind family's connect sample (`roomcast_hook_coalesced_total`, …).
    pub fn connect(&self, family: &str) -> f64 {
        self.get(&format!("{family}{{kind=\"connect\"}}"))
    }
}

/// The hook figures that moved between two scrapes, and the gauges at the second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HookMoves {
    pub allowed: f64,
    pub refused: f64,
    pub unavailable: f64,
    pub coalesced: f64,
    pub cached: f64,
    /// Calls the server made (its latency histogram's count) and their mean, in ms.
    pub calls: f64,
    pub call_mean_ms: f64,
    /// Calls answered unavailable after waiting past --hook-timeout for a place.
    pub queue_timeouts: f64,
    /// `roomcast_hook_inflight_peak`: the most in flight since the server started.
    pub inflight_peak: f64,
}

impl HookMoves {
    pub fn between(a: &Metrics, b: &Metrics) -> HookMoves {
        let d = |f: &dyn Fn(&Metrics) -> f64| (f(b) - f(a)).max(0.0);
        let calls = d(&|m| m.get("roomcast_hook_call_seconds_count{kind=\"connect\"}"));
        let secs = d(&|m| m.get("roomcast_hook_call_seconds_sum{kind=\"connect\"}"));
        HookMoves {
            allowed: d(&|m| m.connect_calls("allowed")),
            refused: d(&|m| m.connect_calls("refused")),
            unavailable: d(&|m| m.connect_calls("unavailable")),
            coalesced: d(&|m| m.connect("roomcast_hook_coalesced_total")),
            cached: d(&|m| m.connect("roomcast_hook_cached_total")),
            calls,
            call_mean_ms: if calls > 0.0 { secs / calls * 1e3 } else { 0.0 },
            queue_timeouts: d(&|m| m.get("roomcast_hook_queue_timeouts_total")),
            inflight_peak: b.get("roomcast_hook_inflight_peak"),
        }
    }
}

/// The pid of the process listening on `addr`'s port (its socket's inode in
/// /proc/net/tcp{,6}, found among /proc/*/fd): the server, when `--server-pid` is not
/// given. Only processes of this user can be searched.
pub fn listener_pid(addr: SocketAddr) -> Option<u32> {
    let port = format!("{:04X}", addr.port());
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st … inode (the 10th field); 0A: LISTEN.
            if f.len() > 9 && f[3] == "0A" && f[1].rsplit(':').next() == Some(port.as_str()) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    let mine = std::process::id();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == mine {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The thread of `pid` named `name` (its /proc/PID/task/TID/comm).
pub fn thread(pid: u32, name: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        (comm.trim_end() == name)
            .then(|| t.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// A thread's CPU so far: utime + stime from its stat (in USER_HZ ticks, as ns) and the
/// scheduler's own count from its schedstat (ns, exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    pub stat_ns: u64,
    pub sched_ns: u64,
}

impl ThreadCpu {
    pub fn read(pid: u32, tid: u32) -> ThreadCpu {
        let dir = format!("/proc/{pid}/task/{tid}");
        let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
        let hz = crate::sample::user_hz();
        let ticks = stat_ticks(&stat).unwrap_or(0);
        let sched = std::fs::read_to_string(format!("{dir}/schedstat")).unwrap_or_default();
        ThreadCpu {
            stat_ns: ticks * 1_000_000_000 / hz,
            sched_ns: sched
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }

    /// From `self` to `later`.
    pub fn since(&self, later: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            stat_ns: later.stat_ns.saturating_sub(self.stat_ns),
            sched_ns: later.sched_ns.saturating_sub(self.sched_ns),
        }
    }
}

/// The CPU all of `pid`'s threads have had so far, ns (the sum of their schedstat: a
/// thread that already ended is not counted; the server's threads live as long as it).
pub fn process_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let sched = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            sched.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// utime + stime (fields 14 and 15) of a /proc stat line; the name in parentheses may
/// hold spaces, so fields are counted after its closing parenthesis.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_and_move() {
        let a = Metrics::parse(
            "# HELP x\nroomcast_hook_calls_total{kind=\"connect\",outcome=\"allowed\"} 5\n\
             roomcast_hook_coalesced_total{kind=\"connect\"} 1\n\
             roomcast_hook_call_seconds_count{kind=\"connect\"} 5\n\
             roomcast_hook_call_seconds_sum{kind=\"connect\"} 0.1\n\
             roomcast_hook_inflight_peak 3\n",
        );
        let b = Metrics::parse(
            "roomcast_hook_calls_total{kind=\"connect\",outcome=\"allowed\"} 25\n\
             roomcast_hook_coalesced_total{kind=\"connect\"} 4\n\
             roomcast_hook_call_seconds_count{kind=\"connect\"} 15\n\
             roomcast_hook_call_seconds_sum{kind=\"connect\"} 0.3\n\
             roomcast_hook_inflight_peak 9\n",
        );
        let m = HookMoves::between(&a, &b);
        assert_eq!((m.allowed, m.coalesced, m.calls), (20.0, 3.0, 10.0));
        assert!((m.call_mean_ms - 20.0).abs() < 1e-9);
        assert_eq!(m.inflight_peak, 9.0);
    }

    #[test]
    fn stat_lines_give_utime_and_stime() {
        let stat = "4242 (roomcast hooks) S 1 2 3 0 -1 4194368 10 0 0 0 17 5 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(22));
    }

    #[test]
    fn this_process_is_found_by_its_threads_and_listener() {
        let me = std::process::id();
        let cpu = ThreadCpu::read(me, me);
        assert!(cpu.sched_ns > 0);
        assert!(process_ns(me) >= cpu.sched_ns);
        assert!(thread(me, "no-such-thread-name").is_none());
        // The search skips its own process, so a listener here is not found.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(listener_pid(l.local_addr().unwrap()), None);
    }
}
