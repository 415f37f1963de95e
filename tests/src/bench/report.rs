//! `target/bench/results.json` and the table on stdout.
//!
//! The file is shared by the parts of `cargo xtask bench` (per-packet here; `http`, `flood`
//! later): each part replaces only its own top-level keys and keeps the others.
use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};

use super::per_packet::{action_name, round1, PerPacket, KEYS};

/// The top-level keys this part owns (everything else in an existing file is kept).
pub fn per_packet_sections(
    result: &PerPacket,
    machine: Value,
    bpf_stats: Value,
    quick: bool,
    timestamp: &str,
) -> Map<String, Value> {
    let mut ns = Map::new();
    let mut detail = Map::new();
    for key in KEYS {
        let outcome = result.outcomes.iter().find(|o| o.key == key);
        ns.insert(key.to_string(), json!(outcome.and_then(|o| o.ns)));
        if let Some(o) = outcome {
            detail.insert(key.to_string(), o.detail.clone());
        }
    }
    let value = |k: &str| ns.get(k).and_then(Value::as_f64);
    let ratio = |a: &str, b: &str| match (value(a), value(b)) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
        _ => Value::Null,
    };
    // The same ratios round by round: the two cases of one round ran a few ms apart, so a
    // machine that changes speed between rounds moves both alike.
    let rounds = |k: &str| -> Vec<f64> {
        result
            .outcomes
            .iter()
            .find(|o| o.key == k && o.ns.is_some())
            .and_then(|o| o.detail["rounds"].as_array().cloned())
            .map(|r| r.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let round_ratio = |a: &str, b: &str| {
        let (a, b) = (rounds(a), rounds(b));
        let mut r: Vec<f64> = a
            .iter()
            .zip(&b)
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect();
        if r.is_empty() || a.len() != b.len() {
            return Value::Null;
        }
        r.sort_by(f64::total_cmp);
        let m = if r.len() % 2 == 1 {
            r[r.len() / 2]
        } else {
            (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0
        };
        json!((m * 100.0).round() / 100.0)
    };
    let pairs = [
        ("lb_established", "xdp_filter"),
        ("nat_forward", "xdp_filter"),
        ("passthrough", "xdp_filter"),
        ("fw_drop", "xdp_filter"),
        ("fw_pass_10k_prefixes", "xdp_filter"),
        ("fw_pass_10k_prefixes", "lb_established"),
    ];
    let mut ratios = Map::new();
    let mut by_round = Map::new();
    for (a, b) in pairs {
        ratios.insert(format!("{a} / {b}"), ratio(a, b));
        by_round.insert(format!("{a} / {b}"), round_ratio(a, b));
    }
    ratios.insert(
        "median_of_per_round_ratios".into(),
        json!({
            "note": "ratio within each round, then the median: less sensitive to the machine changing speed between rounds",
            "ratios": by_round,
        }),
    );
    detail.insert("ratios".into(), Value::Object(ratios));
    let mut scale = result.scale.clone();
    for (key, base) in [
        ("lb_established_100k_prefixes", "fw_pass_10k_prefixes"),
        ("lb_established_1m_flows", "lb_established"),
    ] {
        let ns = scale[key]["ns"].as_f64();
        if let (Some(ns), Some(b)) = (ns, value(base)) {
            scale[key][format!("x_{base}")] = json!((ns / b * 100.0).round() / 100.0);
        }
        if let (Some(ns), Some(f)) = (ns, value("xdp_filter")) {
            scale[key]["x_xdp_filter"] = json!((ns / f * 100.0).round() / 100.0);
        }
    }
    detail.insert("scale".into(), scale);
    let mut run = result.settings.clone();
    run["bpf_stats_enabled"] = bpf_stats;
    run["timestamp"] = json!(timestamp);
    run["quick"] = json!(quick);
    run["source"] = super::system::source_version();
    detail.insert("run".into(), run);

    let mut sections = Map::new();
    sections.insert("per_packet_ns".into(), Value::Object(ns));
    sections.insert("per_packet_detail".into(), Value::Object(detail));
    sections.insert("machine".into(), machine);
    sections.insert("timestamp".into(), json!(timestamp));
    sections.insert("quick".into(), json!(quick));
    sections
}

/// Writes `sections` into the JSON object at `path`, keeping its other top-level keys. A file
/// that is not a JSON object is moved aside (`.bad`), not overwritten silently.
pub fn merge_into(path: &Path, sections: Map<String, Value>) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut top = match fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => map,
            _ => {
                let aside = path.with_extension("json.bad");
                fs::rename(path, &aside)
                    .with_context(|| format!("moving {} aside", path.display()))?;
                eprintln!(
                    "lb-bench: WARNING: {} was not a JSON object; moved to {}",
                    path.display(),
                    aside.display()
                );
                Map::new()
            }
        },
        Err(_) => Map::new(),
    };
    for (k, v) in sections {
        top.insert(k, v);
    }
    let text = serde_json::to_string_pretty(&Value::Object(top))? + "\n";
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// The table: case, ns/packet, x floor, x xdp-filter, verdict.
pub fn table(result: &PerPacket) -> String {
    let get = |k: &str| {
        result
            .outcomes
            .iter()
            .find(|o| o.key == k)
            .and_then(|o| o.ns)
    };
    let (floor, filter) = (get("floor"), get("xdp_filter"));
    let times = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
        _ => "-".into(),
    };
    let mut s = format!(
        "per-packet cost, BPF_PROG_TEST_RUN, {}-byte TCP/IPv4 frame (median of rounds)\n",
        result.frame_len
    );
    s += &format!(
        "{:<22} {:>10} {:>9} {:>13}  {}\n",
        "case", "ns/packet", "x floor", "x xdp-filter", "verdict"
    );
    for key in KEYS {
        let Some(o) = result.outcomes.iter().find(|o| o.key == key) else {
            continue;
        };
        let ns =
            o.ns.map_or("null".to_string(), |v| format!("{:.1}", round1(v)));
        let verdict = match (o.ns, o.return_value) {
            (Some(_), Some(ret)) => action_name(ret).to_string(),
            _ => o.detail["reason"]
                .as_str()
                .map_or("-".into(), |r| format!("null: {r}")),
        };
        s += &format!(
            "{:<22} {:>10} {:>9} {:>13}  {}\n",
            key,
            ns,
            times(o.ns, floor),
            times(o.ns, filter),
            verdict
        );
    }
    let scale_ns = |k: &str| result.scale[k]["ns"].as_f64();
    let shown = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.1}"));
    s += &format!(
        "scale: lb_established with 100k prefixes {} ns (x{} fw_pass_10k_prefixes); lb_established with the flow table \
         pre-filled (1M flows) {} ns (x{} lb_established); rule set apply 10k {} ms, 100k {} ms\n",
        shown(scale_ns("lb_established_100k_prefixes")),
        times(scale_ns("lb_established_100k_prefixes"), get("fw_pass_10k_prefixes")),
        shown(scale_ns("lb_established_1m_flows")),
        times(scale_ns("lb_established_1m_flows"), get("lb_established")),
        shown(result.scale["rule_apply_ms"]["prefixes_10k"].as_f64()),
        shown(result.scale["rule_apply_ms"]["prefixes_100k"].as_f64()),
    );
    s
}
