//! What the hooks thread counts, for `/metrics` and `/stats`: calls by kind and outcome
//! with their latency, coalesced and cached answers, calls in flight and queued, and the
//! webhooks' events. Written by the hooks thread only (relaxed atomics), read by ops.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::Kind;

/// How a call ended, as the shard was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Refused,
    Unavailable,
    /// Unavailable, let through by `--hook-fail-open`.
    FailOpen,
}

const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Allowed, "allowed"),
    (Outcome::Refused, "refused"),
    (Outcome::Unavailable, "unavailable"),
    (Outcome::FailOpen, "fail_open"),
];

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const KINDS: usize = Kind::ALL.len();

fn index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0)
}

#[derive(Debug, Default)]
struct PerKind {
    outcomes: [AtomicU64; 4],
    /// Cumulative counts per bucket, then +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    coalesced: AtomicU64,
    cached: AtomicU64,
}

/// The hooks' and webhooks' figures.
#[derive(Debug, Default)]
pub struct Status {
    kinds: [PerKind; KINDS],
    inflight: AtomicU64,
    inflight_peak: AtomicU64,
    queued: AtomicU64,
    timed_out_queued: AtomicU64,
    /// Webhook events: accepted into the queue, delivered (2xx), sent again after a
    /// failure, dropped (the queue was full), and batches that failed.
    pub webhook_queued: AtomicU64,
    pub webhook_sent: AtomicU64,
    pub webhook_retried: AtomicU64,
    pub webhook_dropped: AtomicU64,
    pub webhook_failures: AtomicU64,
    /// Events waiting in the queue now.
    pub webhook_backlog: AtomicU64,
}

impl Status {
    pub(super) fn outcome(&self, kind: Kind, outcome: Outcome) {
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.kinds[index(kind)].outcomes[i].fetch_add(1, Relaxed);
    }

    pub(super) fn latency(&self, kind: Kind, took: Duration) {
        let k = &self.kinds[index(kind)];
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        k.buckets[b].fetch_add(1, Relaxed);
        k.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub(super) fn coalesced(&self, kind: Kind) {
        self.kinds[index(kind)].coalesced.fetch_add(1, Relaxed);
    }

    pub(super) fn cached(&self, kind: Kind) {
        self.kinds[index(kind)].cached.fetch_add(1, Relaxed);
    }

    pub(super) fn set_inflight(&self, n: usize) {
        self.inflight.store(n as u64, Relaxed);
        self.inflight_peak.fetch_max(n as u64, Relaxed);
    }

    pub(super) fn set_queued(&self, n: usize) {
        self.queued.store(n as u64, Relaxed);
    }

    pub(super) fn timed_out_queued(&self) {
        self.timed_out_queued.fetch_add(1, Relaxed);
    }

    /// Calls of `kind` answered with `outcome` so far.
    pub fn calls(&self, kind: Kind, outcome: Outcome) -> u64 {
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.kinds[index(kind)].outcomes[i].load(Relaxed)
    }

    /// The most calls in flight at once so far.
    pub fn inflight_peak(&self) -> u64 {
        self.inflight_peak.load(Relaxed)
    }

    /// The `/stats` object.
    pub fn json(&self) -> String {
        let mut kinds = serde_json::Map::new();
        for kind in Kind::ALL {
            let k = &self.kinds[index(kind)];
            let mut o = serde_json::Map::new();
            for (i, (_, name)) in OUTCOMES.iter().enumerate() {
                o.insert((*name).into(), k.outcomes[i].load(Relaxed).into());
            }
            o.insert("coalesced".into(), k.coalesced.load(Relaxed).into());
            o.insert("cached".into(), k.cached.load(Relaxed).into());
            kinds.insert(kind.name().into(), o.into());
        }
        serde_json::json!({
            "calls": kinds,
            "inflight": self.inflight.load(Relaxed),
            "inflight_peak": self.inflight_peak.load(Relaxed),
            "queued": self.queued.load(Relaxed),
            "webhook": {
                "queued": self.webhook_queued.load(Relaxed),
                "sent": self.webhook_sent.load(Relaxed),
                "retried": self.webhook_retried.load(Relaxed),
                "dropped": self.webhook_dropped.load(Relaxed),
                "failures": self.webhook_failures.load(Relaxed),
                "backlog": self.webhook_backlog.load(Relaxed),
            },
        })
        .to_string()
    }

    /// Appends the hooks' `/metrics` families.
    pub fn metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP roomcast_hook_calls_total Hook calls answered, by kind and outcome.\n\
             # TYPE roomcast_hook_calls_total counter"
        );
        for kind in Kind::ALL {
            let k = &self.kinds[index(kind)];
            for (i, (_, name)) in OUTCOMES.iter().enumerate() {
                let n = k.outcomes[i].load(Relaxed);
                let kind = kind.name();
                let _ = writeln!(
                    out,
                    "roomcast_hook_calls_total{{kind=\"{kind}\",outcome=\"{name}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP roomcast_hook_call_seconds Time from a hook call's start to its answer.\n\
             # TYPE roomcast_hook_call_seconds histogram"
        );
        for kind in Kind::ALL {
            let k = &self.kinds[index(kind)];
            let name = kind.name();
            let mut total = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                total += k.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "roomcast_hook_call_seconds_bucket{{kind=\"{name}\",le=\"{le}\"}} {total}"
                );
            }
            total += k.buckets[BUCKETS.len()].load(Relaxed);
            let sum = k.sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "roomcast_hook_call_seconds_bucket{{kind=\"{name}\",le=\"+Inf\"}} {total}\n\
                 roomcast_hook_call_seconds_sum{{kind=\"{name}\"}} {sum}\n\
                 roomcast_hook_call_seconds_count{{kind=\"{name}\"}} {total}"
            );
        }
        for (family, help, pick) in [
            (
                "roomcast_hook_coalesced_total",
                "Hook questions answered by a call already in flight.",
                0,
            ),
            (
                "roomcast_hook_cached_total",
                "Hook questions answered from the decision cache (cache_ttl).",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for kind in Kind::ALL {
                let k = &self.kinds[index(kind)];
                let n = [&k.coalesced, &k.cached][pick].load(Relaxed);
                let _ = writeln!(out, "{family}{{kind=\"{}\"}} {n}", kind.name());
            }
        }
        let gauges = [
            (
                "roomcast_hook_inflight",
                "Hook calls in flight now.",
                &self.inflight,
            ),
            (
                "roomcast_hook_inflight_peak",
                "The most hook calls in flight at once so far.",
                &self.inflight_peak,
            ),
            (
                "roomcast_hook_queued",
                "Hook calls waiting for a place under --hook-max-inflight.",
                &self.queued,
            ),
            (
                "roomcast_webhook_backlog",
                "Webhook events waiting to be sent.",
                &self.webhook_backlog,
            ),
        ];
        for (name, help, v) in gauges {
            let v = v.load(Relaxed);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "roomcast_hook_queue_timeouts_total",
                "Hook calls answered unavailable after waiting past --hook-timeout for a place.",
                &self.timed_out_queued,
            ),
            (
                "roomcast_webhook_events_queued_total",
                "Webhook events accepted into the queue.",
                &self.webhook_queued,
            ),
            (
                "roomcast_webhook_events_sent_total",
                "Webhook events delivered (the receiver answered 2xx).",
                &self.webhook_sent,
            ),
            (
                "roomcast_webhook_events_retried_total",
                "Webhook events sent again after a failed attempt.",
                &self.webhook_retried,
            ),
            (
                "roomcast_webhook_events_dropped_total",
                "Webhook events dropped because the queue was full.",
                &self.webhook_dropped,
            ),
            (
                "roomcast_webhook_failures_total",
                "Webhook POSTs that failed (error status, timeout, unreachable).",
                &self.webhook_failures,
            ),
        ];
        for (name, help, v) in counters {
            let v = v.load(Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
    }
}
