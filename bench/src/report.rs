//! `roomcast-bench report RESULTS.jsonl`: a Markdown summary (medians over repeated runs,
//! and roomcast's ratio to each peer) and SVG plots: latency CDFs per server, bytes per
//! connection against connections, deliveries per second against members.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// Every column: with roomcast's ratio to the peer.
const RATIO: u8 = 1;
/// Shown only when some run of the table carries the field (`--server-cpu` runs).
const OPTIONAL: u8 = 2;

/// The figures that sum up each scenario: (scenario, field, column heading, flags). Every
/// table also ends with the load generator's CPU (see [`client_cell`]).
const HEADLINE: &[(&str, &str, &str, u8)] = &[
    (
        "idle",
        "user_bytes_per_conn_marginal",
        "user-space B/conn",
        RATIO,
    ),
    ("idle", "kernel_slab_bytes_per_conn", "kernel B/conn", RATIO),
    ("ramp", "server_cpu_us_per_conn", "server µs/conn", RATIO),
    (
        "ramp",
        "server_cpu_total_us_per_conn",
        "server CPU total µs/conn",
        RATIO | OPTIONAL,
    ),
    ("ramp", "server_softirq_share", "softirq share", OPTIONAL),
    ("ramp", "handshakes_per_sec", "handshakes/s", RATIO),
    ("echo", "server_cpu_ns_per_msg", "server ns/msg", RATIO),
    (
        "echo",
        "server_cpu_total_ns_per_msg",
        "server CPU total ns/msg",
        RATIO | OPTIONAL,
    ),
    ("echo", "server_softirq_share", "softirq share", OPTIONAL),
    ("echo", "msgs_per_sec", "msgs/s", RATIO),
    ("echo", "rtt_p99_us", "RTT p99 µs", RATIO),
    ("fanout", "deliveries_per_sec", "deliveries/s", RATIO),
    ("fanout", "latency_p50_us", "p50 µs", RATIO),
    ("fanout", "latency_p99_us", "p99 µs", RATIO),
    // What the members read per delivery, frame headers included (plain or `--deflate`).
    (
        "fanout",
        "wire_bytes_per_delivery",
        "wire B/delivery",
        RATIO | OPTIONAL,
    ),
    (
        "fanout",
        "server_cpu_ns_per_delivery",
        "server ns/delivery",
        RATIO,
    ),
    (
        "fanout",
        "server_cpu_total_ns_per_delivery",
        "server CPU total ns/delivery",
        RATIO | OPTIONAL,
    ),
    ("fanout", "server_softirq_share", "softirq share", OPTIONAL),
    // A cluster (`--also`): all its nodes' CPU and Redis's, and what the order check saw.
    (
        "fanout",
        "nodes_cpu_ns_per_delivery",
        "all nodes ns/delivery",
        OPTIONAL,
    ),
    ("fanout", "redis_cpu_us_per_msg", "Redis µs/msg", OPTIONAL),
    ("fanout", "redis_cpu_share", "Redis CPU share", OPTIONAL),
    ("fanout", "order_reordered", "out of order", OPTIONAL),
    ("fanout", "order_skipped", "skipped", OPTIONAL),
    ("fanout", "completeness", "complete", RATIO),
    ("admission", "joined", "members admitted", RATIO),
    (
        "admission",
        "server_cpu0_busy",
        "server CPU busy at the limit",
        RATIO,
    ),
    ("admission", "model_cpus", "model's CPUs", RATIO),
    ("admission", "deliveries_per_sec", "deliveries/s", RATIO),
    ("admission", "latency_p50_us", "p50 µs", RATIO),
    ("admission", "latency_p99_us", "p99 µs", RATIO),
    ("churn", "success_rate", "success", RATIO),
    ("churn", "rss_drift_bytes", "RSS drift B", RATIO),
    ("churn", "server_softirq_share", "softirq share", OPTIONAL),
    ("slow", "p99_ratio", "healthy p99 with/without", RATIO),
    ("resume", "lost", "lost", 0),
    ("resume", "duplicates", "duplicates", 0),
    (
        "resume",
        "members_not_recovered",
        "members recovered:false",
        0,
    ),
    ("resume", "gap_notices", "gap notices", 0),
    ("resume", "resume_p50_ms", "resumed p50 ms", RATIO),
    ("resume", "resume_max_ms", "all resumed ms", RATIO),
    ("resume", "catchup_p99_ms", "catch-up p99 ms", RATIO),
    (
        "resume",
        "server_cpu_total_us_per_resume",
        "server CPU total µs/resume",
        RATIO | OPTIONAL,
    ),
];

/// What marks a figure measured while the load generator was saturated.
const BOUND_MARK: &str = "†";

/// Whether a run's load generator was saturated: its `client_bound`, or for runs older
/// than that field a `client_busy` of 0.90 or more.
fn client_bound(run: &Value) -> bool {
    let f = &run["figures"];
    f["client_bound"]
        .as_bool()
        .unwrap_or_else(|| f["client_busy"].as_f64().is_some_and(|b| b >= 0.90))
}

/// The load generator's column: its median busy share, and how many runs were
/// client-bound.
fn client_cell(runs: &[Value]) -> String {
    let busy = median(
        runs.iter()
            .filter_map(|r| r["figures"]["client_busy"].as_f64())
            .collect(),
    );
    let bound = runs.iter().filter(|r| client_bound(r)).count();
    if bound == 0 {
        fmt(busy)
    } else {
        format!(
            "{} {BOUND_MARK} client-bound ({bound} of {} runs)",
            fmt(busy),
            runs.len()
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs grouped by (scenario, parameters) then by server.
type Groups = BTreeMap<(String, String), BTreeMap<String, Vec<Value>>>;

pub fn write(results: &Path, dir: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    let runs: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", results.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut groups = Groups::new();
    for r in &runs {
        let key = (
            r["scenario"].as_str().unwrap_or("?").to_owned(),
            r["params"].to_string(),
        );
        let server = r["server"]["name"].as_str().unwrap_or("?").to_owned();
        groups
            .entry(key)
            .or_default()
            .entry(server)
            .or_default()
            .push(r.clone());
    }
    let mut md = String::new();
    let machine = runs
        .first()
        .map(|r| r["machine"].clone())
        .unwrap_or(Value::Null);
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {} GiB), kernel {}. Medians over the runs of each server; ratio = roomcast / peer.\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["mem_total_bytes"].as_u64().unwrap_or(0) >> 30,
        machine["kernel"].as_str().unwrap_or("?"),
    );
    for ((scenario, params), servers) in &groups {
        let present = |field: &str| {
            servers
                .values()
                .flatten()
                .any(|r| !r["figures"][field].is_null())
        };
        let cols: Vec<_> = HEADLINE
            .iter()
            .filter(|h| h.0 == scenario && (h.3 & OPTIONAL == 0 || present(h.1)))
            .collect();
        if cols.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {scenario} `{params}`\n");
        let mut head = "| server | runs |".to_owned();
        let mut rule = "|---|---|".to_owned();
        for c in &cols {
            let _ = write!(head, " {} |", c.2);
            rule.push_str("---|");
        }
        head.push_str(" load gen busy |");
        rule.push_str("---|");
        let _ = writeln!(md, "{head}\n{rule}");
        let med = |runs: &Vec<Value>, field: &str| {
            median(
                runs.iter()
                    .filter_map(|r| r["figures"][field].as_f64())
                    .collect(),
            )
        };
        let ours = servers.get("roomcast");
        let mut any_bound = false;
        for (server, runs) in servers {
            let mut row = format!("| {server} | {} |", runs.len());
            let bound = runs.iter().any(client_bound);
            any_bound |= bound;
            let mark = if bound {
                format!(" {BOUND_MARK}")
            } else {
                String::new()
            };
            for c in &cols {
                let v = med(runs, c.1);
                let ratio = match ours {
                    Some(o) if server != "roomcast" && c.3 & RATIO != 0 && !v.is_nan() => {
                        format!(" ({:.2}x)", med(o, c.1) / v)
                    }
                    _ => String::new(),
                };
                let _ = write!(row, " {}{mark}{ratio} |", fmt(v));
            }
            let _ = write!(row, " {} |", client_cell(runs));
            let _ = writeln!(md, "{row}");
        }
        if any_bound {
            let _ = writeln!(
                md,
                "\n{BOUND_MARK} client-bound: measured while the load generator was at least 90% busy, so the figure is a lower bound for that server, not its limit."
            );
        }
        if cols.iter().any(|c| c.1 == "server_softirq_share") {
            let _ = writeln!(
                md,
                "\nserver CPU total: all the busy time of the server's CPU (`--server-cpu`, /proc/stat: user + nice + system + irq + softirq + steal) per unit. The per-thread figure beside it (schedstat of the server's threads) leaves out what ran on that CPU outside them: softirq in ksoftirqd or on interrupts, and with CONFIG_IRQ_TIME_ACCOUNTING the softirq that interrupted them. softirq share: softirq over all of that CPU's time. Without CONFIG_IRQ_TIME_ACCOUNTING the kernel charges whole ticks to what was running at each tick, so these read true on a busy CPU over seconds, and low (even below the per-thread figure) on a mostly idle one."
            );
        }
        let _ = writeln!(md);
    }
    let mut plots = Vec::new();
    for ((scenario, params), servers) in &groups {
        if matches!(scenario.as_str(), "echo" | "fanout" | "ramp") {
            let name = format!("cdf-{scenario}-{}.svg", short_hash(params));
            cdf_plot(
                &dir.join(&name),
                &format!("{scenario} latency CDF"),
                servers,
            )?;
            plots.push((format!("{scenario} latency CDF, `{params}`"), name));
        }
    }
    if let Some(p) = xy_plot(
        dir,
        &groups,
        "idle",
        "connections",
        "user_bytes_per_conn_marginal",
        "connections",
        "user-space bytes per connection",
    )? {
        plots.push(("idle: user-space bytes per connection".into(), p));
    }
    for (y, desc) in [
        ("rss_held", "server RSS, bytes"),
        (
            "kernel_slab_bytes_per_conn",
            "kernel bytes per connection (both ends)",
        ),
        ("box_used_held", "the box's memory in use, bytes"),
        ("ramp_secs", "seconds to open them all"),
    ] {
        if let Some(p) = xy_plot(dir, &groups, "idle", "connections", y, "connections", desc)? {
            plots.push((format!("idle: {desc}"), p));
        }
    }
    if let Some(p) = xy_plot(
        dir,
        &groups,
        "fanout",
        "members",
        "deliveries_per_sec",
        "members",
        "deliveries per second",
    )? {
        plots.push(("fanout: deliveries per second against members".into(), p));
    }
    for (title, file) in &plots {
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    let out = dir.join("REPORT.md");
    std::fs::write(&out, md).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("wrote {} and {} plots", out.display(), plots.len());
    Ok(())
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn short_hash(s: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

const COLORS: [RGBColor; 5] = [BLUE, RED, GREEN, MAGENTA, BLACK];

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Latency CDFs, one line per server (its median run by p50).
fn cdf_plot(
    path: &Path,
    title: &str,
    servers: &BTreeMap<String, Vec<Value>>,
) -> Result<(), String> {
    let mut lines = Vec::new();
    for (server, runs) in servers {
        let mut with_cdf: Vec<&Value> = runs
            .iter()
            .filter(|r| r["figures"]["latency_cdf_us"].is_array())
            .collect();
        with_cdf.sort_by(|a, b| {
            let p = |r: &Value| r["figures"]["latency_cdf_us"][6][1].as_f64().unwrap_or(0.0);
            p(a).total_cmp(&p(b))
        });
        if let Some(r) = with_cdf.get(with_cdf.len() / 2) {
            let pts: Vec<(f64, f64)> = r["figures"]["latency_cdf_us"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[1].as_f64()?.max(1.0), p[0].as_f64()?)))
                .collect();
            lines.push((server.clone(), pts));
        }
    }
    let max_x = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(10.0, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1.0..max_x).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log)")
        .y_desc("fraction ≤")
        .draw()
        .map_err(err)?;
    for (i, (server, pts)) in lines.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(server)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// `y` against `x` (a parameter) over every run of `scenario`, one line per server
/// (medians per x). None if there is nothing to draw.
fn xy_plot(
    dir: &Path,
    groups: &Groups,
    scenario: &str,
    x: &str,
    y: &str,
    x_desc: &str,
    y_desc: &str,
) -> Result<Option<String>, String> {
    let mut series: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for ((s, _), servers) in groups {
        if s != scenario {
            continue;
        }
        for (server, runs) in servers {
            for r in runs {
                let xv = r["params"][x].as_u64().or_else(|| r["figures"][x].as_u64());
                if let (Some(xv), Some(yv)) = (xv, r["figures"][y].as_f64()) {
                    series
                        .entry(server.clone())
                        .or_default()
                        .entry(xv)
                        .or_default()
                        .push(yv);
                }
            }
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .into_iter()
        .map(|(s, pts)| {
            (
                s,
                pts.into_iter()
                    .map(|(x, v)| (x as f64, median(v)))
                    .collect(),
            )
        })
        .collect();
    let max_x = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.5;
    let max_y = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.2;
    let name = format!("{scenario}-{y}.svg");
    let path = dir.join(&name);
    let root = SVGBackend::new(&path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: {y_desc}"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_x).log_scale(), 0.0..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("{x_desc} (log)"))
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (i, (server, pts)) in lines.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(server)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table shows the load generator's CPU, marks what was measured client-bound,
    /// and has the server-CPU columns only where runs carry them.
    #[test]
    fn tables_show_the_load_generator_and_mark_client_bound_figures() {
        let dir = std::env::temp_dir().join(format!("roomcast-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |scenario: &str, server: &str, figures: Value| {
            serde_json::json!({"scenario": scenario, "params": {"x": 1},
                "server": {"name": server}, "machine": {"cores": 2}, "figures": figures})
            .to_string()
        };
        let lines = [
            run(
                "echo",
                "roomcast",
                serde_json::json!({"server_cpu_ns_per_msg": 700.0,
                "msgs_per_sec": 1.2e6, "rtt_p99_us": 2500.0, "client_busy": 0.97, "client_bound": true,
                "server_cpu_total_ns_per_msg": 900.0, "server_softirq_share": 0.2, "server_cpu0_busy": 1.0}),
            ),
            run(
                "echo",
                "peer",
                serde_json::json!({"server_cpu_ns_per_msg": 8000.0,
                "msgs_per_sec": 1.1e5, "rtt_p99_us": 22000.0, "client_busy": 0.3, "client_bound": false,
                "server_cpu_total_ns_per_msg": 9000.0, "server_softirq_share": 0.1, "server_cpu0_busy": 1.0}),
            ),
            run(
                "churn",
                "roomcast",
                serde_json::json!({"success_rate": 1.0, "rss_drift_bytes": 0.0,
                "client_busy": 0.1, "client_bound": false}),
            ),
        ];
        let results = dir.join("R.jsonl");
        std::fs::write(&results, lines.join("\n")).unwrap();
        write(&results, &dir).unwrap();
        let md = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let table = |name: &str| {
            let at = md.find(&format!("### {name}")).unwrap();
            md[at..].split("\n### ").next().unwrap().to_owned()
        };
        let echo = table("echo");
        assert!(
            echo.contains("| server CPU total ns/msg | softirq share |"),
            "{echo}"
        );
        assert!(echo.contains("| 1200000 † |"), "{echo}");
        assert!(
            echo.contains("0.970 † client-bound (1 of 1 runs)"),
            "{echo}"
        );
        assert!(
            echo.contains("| 0.300 |") && echo.contains("9000 (0.10x)"),
            "{echo}"
        );
        assert!(echo.contains("† client-bound: measured while"), "{echo}");
        let churn = table("churn");
        assert!(
            churn.contains("load gen busy") && churn.contains("| 0.100 |"),
            "{churn}"
        );
        assert!(
            !churn.contains("softirq") && !churn.contains('†'),
            "{churn}"
        );
    }
}
