//! `roomcast-bench report RESULTS.jsonl`: a Markdown summary (medians over repeated runs,
//! and roomcast's ratio to each peer) and SVG plots: latency CDFs per server, bytes per
//! connection against connections, deliveries per second against members.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// The figures that sum up each scenario: (scenario, field, column heading).
const HEADLINE: &[(&str, &str, &str)] = &[
    ("idle", "user_bytes_per_conn_marginal", "user-space B/conn"),
    ("idle", "kernel_slab_bytes_per_conn", "kernel B/conn"),
    ("ramp", "server_cpu_us_per_conn", "server µs/conn"),
    ("ramp", "handshakes_per_sec", "handshakes/s"),
    ("echo", "server_cpu_ns_per_msg", "server ns/msg"),
    ("echo", "msgs_per_sec", "msgs/s"),
    ("echo", "rtt_p99_us", "RTT p99 µs"),
    ("echo", "client_busy", "load gen busy"),
    ("fanout", "deliveries_per_sec", "deliveries/s"),
    ("fanout", "latency_p50_us", "p50 µs"),
    ("fanout", "latency_p99_us", "p99 µs"),
    ("fanout", "server_cpu_ns_per_delivery", "server ns/delivery"),
    ("fanout", "completeness", "complete"),
    ("fanout", "client_busy", "load gen busy"),
    ("churn", "success_rate", "success"),
    ("churn", "rss_drift_bytes", "RSS drift B"),
    ("slow", "p99_ratio", "healthy p99 with/without"),
];

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
        let cols: Vec<_> = HEADLINE.iter().filter(|h| h.0 == scenario).collect();
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
        let _ = writeln!(md, "{head}\n{rule}");
        let med = |runs: &Vec<Value>, field: &str| {
            median(
                runs.iter()
                    .filter_map(|r| r["figures"][field].as_f64())
                    .collect(),
            )
        };
        let ours = servers.get("roomcast");
        for (server, runs) in servers {
            let mut row = format!("| {server} | {} |", runs.len());
            for c in &cols {
                let v = med(runs, c.1);
                let ratio = match ours {
                    Some(o) if server != "roomcast" => format!(" ({:.2}x)", med(o, c.1) / v),
                    _ => String::new(),
                };
                let _ = write!(row, " {}{ratio} |", fmt(v));
            }
            let _ = writeln!(md, "{row}");
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
