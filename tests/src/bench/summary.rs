//! The end of `cargo xtask bench`: the three parts' tables and the target ratios from
//! `target/bench/results.json`, and a chart of them (`results.svg`, hand-written SVG).
use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{conn_rate, flood, http, nat_churn, per_packet};

/// (name, value, target, met) for every target of issues 3 and 6.
pub fn targets(r: &Value) -> Vec<(String, Option<f64>, String, Option<bool>)> {
    let pp = |k: &str| r["per_packet_ns"][k].as_f64();
    let h = |k: &str, f: &str| r["http"][k][f].as_f64();
    let fl = |k: &str| r["flood"][k].as_f64();
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 100.0).round() / 100.0),
        _ => None,
    };
    let le = |name: &str, v: Option<f64>, t: f64| {
        (name.to_string(), v, format!("<= {t}"), v.map(|v| v <= t))
    };
    let ge = |name: &str, v: Option<f64>, t: f64| {
        (name.to_string(), v, format!(">= {t}"), v.map(|v| v >= t))
    };
    vec![
        le(
            "lb_established / xdp_filter",
            div(pp("lb_established"), pp("xdp_filter")),
            0.75,
        ),
        le(
            "fw_drop / xdp_filter",
            div(pp("fw_drop"), pp("xdp_filter")),
            0.5,
        ),
        le(
            "fw_pass_10k_prefixes / xdp_filter",
            div(pp("fw_pass_10k_prefixes"), pp("xdp_filter")),
            1.0,
        ),
        ge(
            "flood xdp_rps / nftables_rps",
            div(fl("xdp_rps"), fl("nftables_rps")),
            1.2,
        ),
        ge(
            "http xdp_dsr / haproxy",
            div(h("xdp_dsr", "rps"), h("haproxy", "rps")),
            2.0,
        ),
        ge(
            "http xdp_dsr / direct",
            div(h("xdp_dsr", "rps"), h("direct", "rps")),
            0.95,
        ),
        ge(
            "http xdp_nat / haproxy",
            div(h("xdp_nat", "rps"), h("haproxy", "rps")),
            1.5,
        ),
        // At the same offered load (`latency`): under wrk each target runs at its own
        // saturation point, where every p99 (web1's own too) is the scheduler's time slice.
        le(
            "http p99 xdp_dsr / haproxy, same rate",
            div(
                h("xdp_dsr", "p99_ms_fixed_rate"),
                h("haproxy", "p99_ms_fixed_rate"),
            ),
            1.0,
        ),
    ]
}

pub fn text(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== per-packet (ns, BPF_PROG_TEST_RUN) ==");
    for k in per_packet::KEYS {
        let v = r["per_packet_ns"][k].as_f64();
        let reason = r["per_packet_detail"][k]["reason"].as_str().unwrap_or("");
        let _ = writeln!(
            s,
            "{k:<22} {:>8}  {reason}",
            v.map_or("null".into(), |v| format!("{v:.1}"))
        );
    }
    let scale = &r["per_packet_detail"]["scale"];
    for k in ["lb_established_100k_prefixes", "lb_established_1m_flows"] {
        let _ = writeln!(
            s,
            "{k:<22} {:>8}  (scale)",
            scale[k]["ns"]
                .as_f64()
                .map_or("null".into(), |v| format!("{v:.1}"))
        );
    }
    let _ = writeln!(
        s,
        "== http (wrk, median of repetitions; @rate: latency at {} req/s, see http_detail.run.fixed_rate) ==",
        r["http_detail"]["run"]["fixed_rate"]["rate"]
            .as_u64()
            .map_or("a fixed".into(), |v| v.to_string())
    );
    if r["http"].is_object() {
        s += &http::table(&r["http"]);
    } else {
        let _ = writeln!(
            s,
            "null: {}",
            r["http_detail"]["reason"].as_str().unwrap_or("not run")
        );
    }
    let _ = writeln!(s, "== flood (legit req/s under a bounded flood) ==");
    if r["flood"].is_object() {
        s += &flood::table(&r["flood"]);
    } else {
        let _ = writeln!(
            s,
            "null: {}",
            r["flood_detail"]["reason"].as_str().unwrap_or("not run")
        );
    }
    let _ = writeln!(
        s,
        "== conn_rate (new TCP connections/s: wrk -c32 -H 'Connection: close', median of repetitions) =="
    );
    if r["conn_rate"].is_object() {
        s += &conn_rate::table(&r["conn_rate"]);
    } else {
        let _ = writeln!(
            s,
            "null: {}",
            r["conn_rate_detail"]["reason"]
                .as_str()
                .unwrap_or("not run")
        );
    }
    let _ = writeln!(
        s,
        "== nat_churn (distinct client tuples through the NAT VIP) =="
    );
    if r["nat_churn"].is_object() {
        s += &nat_churn::table(&r["nat_churn"], &r["nat_churn_detail"]);
    } else {
        let _ = writeln!(
            s,
            "null: {}",
            r["nat_churn_detail"]["reason"]
                .as_str()
                .unwrap_or("not run")
        );
    }
    let _ = writeln!(s, "== targets ==");
    let wrk_p99 = match (
        r["http"]["xdp_dsr"]["p99_ms"].as_f64(),
        r["http"]["haproxy"]["p99_ms"].as_f64(),
    ) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "null".into(),
    };
    let _ = writeln!(
        s,
        "(for information: http p99 xdp_dsr / haproxy under wrk, each at its own saturation: {wrk_p99})"
    );
    for (name, v, t, met) in targets(r) {
        let mark = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "no figure",
        };
        let _ = writeln!(
            s,
            "{name:<36} {:>6} {t:<8} {mark}",
            v.map_or("null".into(), |v| format!("{v:.2}"))
        );
    }
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One horizontal bar panel at `y0`; returns its height.
fn panel(
    svg: &mut String,
    y0: f64,
    title: &str,
    unit: &str,
    bars: &[(String, Option<f64>, &str)],
) -> f64 {
    let (left, width, bar_h, gap) = (210.0, 520.0, 20.0, 6.0);
    let max = bars
        .iter()
        .filter_map(|b| b.1)
        .fold(0.0, f64::max)
        .max(1e-9);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        y0 + 16.0,
        esc(title)
    );
    let mut y = y0 + 28.0;
    for (label, value, color) in bars {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 14.0,
            esc(label)
        );
        match value {
            Some(v) => {
                let w = (v / max * width).max(1.0);
                let _ = writeln!(
                    svg,
                    r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{color}"/>"#
                );
                let shown = if *v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                };
                let _ = writeln!(
                    svg,
                    r#"<text x="{}" y="{}" font-size="12">{} {}</text>"#,
                    left + w + 6.0,
                    y + 14.0,
                    shown,
                    esc(unit)
                );
            }
            None => {
                let _ = writeln!(
                    svg,
                    r##"<text x="{left}" y="{}" font-size="12" fill="#a00">null (not measured)</text>"##,
                    y + 14.0
                );
            }
        }
        y += bar_h + gap;
    }
    y - y0 + 14.0
}

pub fn svg(r: &Value) -> String {
    let ours = "#2a7ab9";
    let other = "#9a9a9a";
    let pp: Vec<(String, Option<f64>, &str)> = per_packet::KEYS
        .iter()
        .map(|k| {
            (
                k.to_string(),
                r["per_packet_ns"][k].as_f64(),
                if *k == "xdp_filter" || *k == "floor" {
                    other
                } else {
                    ours
                },
            )
        })
        .collect();
    let ht: Vec<(String, Option<f64>, &str)> = http::KEYS
        .iter()
        .map(|k| {
            (
                k.to_string(),
                r["http"][k]["rps"].as_f64(),
                if k.starts_with("xdp") { ours } else { other },
            )
        })
        .collect();
    let lat = |field: &str| -> Vec<(String, Option<f64>, &str)> {
        http::KEYS
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    r["http"][k][field].as_f64(),
                    if k.starts_with("xdp") { ours } else { other },
                )
            })
            .collect()
    };
    let fl: Vec<(String, Option<f64>, &str)> =
        ["baseline_rps", "none_rps", "nftables_rps", "xdp_rps"]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    r["flood"][k].as_f64(),
                    if *k == "xdp_rps" { ours } else { other },
                )
            })
            .collect();
    let mut body = String::new();
    let mut y = 40.0;
    y += panel(
        &mut body,
        y,
        "Per-packet cost (BPF_PROG_TEST_RUN), lower is better",
        "ns",
        &pp,
    );
    y += panel(
        &mut body,
        y,
        "HTTP through the load balancer: req/s, higher is better",
        "req/s",
        &ht,
    );
    y += panel(
        &mut body,
        y,
        "HTTP p99 latency under wrk (each at its own saturation), lower is better",
        "ms",
        &lat("p99_ms"),
    );
    let rate_title = format!(
        "HTTP p99 latency, every target at {} req/s, lower is better",
        r["http_detail"]["run"]["fixed_rate"]["rate"]
            .as_u64()
            .map_or("one fixed rate".into(), |v| v.to_string())
    );
    y += panel(&mut body, y, &rate_title, "ms", &lat("p99_ms_fixed_rate"));
    let flood_title = format!(
        "Legit req/s under a flood of {} pps (generator), higher is better",
        r["flood"]["flood_pps"]
            .as_f64()
            .map_or("null".into(), |v| format!("{v:.0}"))
    );
    y += panel(&mut body, y, &flood_title, "req/s", &fl);
    let stamp = format!(
        "{} | {} | kernel {} | {} CPUs{}",
        r["timestamp"].as_str().unwrap_or(""),
        r["machine"]["cpu_model"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or(""),
        r["machine"]["nproc"].as_i64().unwrap_or(0),
        if r["quick"].as_bool() == Some(true) {
            " | --quick"
        } else {
            ""
        }
    );
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"{h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"17\" font-weight=\"bold\">cargo xtask bench: blue = ours, grey = references</text>\n\
         {body}<text x=\"10\" y=\"{sy}\" font-size=\"11\" fill=\"#555\">{stamp}</text>\n</svg>\n",
        h = y + 30.0,
        sy = y + 14.0,
        stamp = esc(&stamp),
    )
}

/// Prints the summary, writes the chart next to the results and the targets into the file.
pub fn run(results: &Path) -> Result<()> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let r: Value = serde_json::from_str(&text)?;
    print!("{}", self::text(&r));
    let chart = results.with_extension("svg");
    std::fs::write(&chart, svg(&r)).with_context(|| format!("writing {}", chart.display()))?;
    let mut map = serde_json::Map::new();
    let t: Vec<Value> = targets(&r)
        .into_iter()
        .map(|(name, v, target, met)| json!({ "ratio": name, "value": v, "target": target, "met": met }))
        .collect();
    map.insert("targets".into(), json!(t));
    super::report::merge_into(results, map)?;
    println!("chart: {}", chart.display());
    Ok(())
}
