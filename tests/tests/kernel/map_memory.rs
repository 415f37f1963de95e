//! The kernel memory of the data path's maps, as the kernel reports it (`memlock`): the lab's
//! config (the one `cargo xtask run` writes) stays within 128 MiB, memory grows with
//! `agent.flow_capacity`, and the estimate behind `agent.map_memory_budget_mib` is close to the
//! kernel's figure. Needs root: run by `cargo xtask test` (`--include-ignored`).
use std::path::Path;

use lb_userspace::{
    config,
    dataplane::{Dataplane, LoadOptions},
    sizing::{self, MemoryReport},
};

const MIB: u64 = 1024 * 1024;

/// The lab's agent config (xtask `stack::full_stack_options`), with `agent_keys` added to its
/// `[agent]` section.
fn lab_config(agent_keys: &str) -> config::Config {
    let text = xtask::stack::agent_config_text(
        Path::new("/sys/fs/bpf/lb-map-memory-test"),
        Path::new("/run/lb-map-memory-test-token"),
        &xtask::stack::full_stack_options("token"),
    )
    .expect("the lab's agent config renders");
    let text = text.replacen("[agent]\n", &format!("[agent]\n{agent_keys}\n"), 1);
    config::parse(Path::new("lab.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Loads the maps sized for `config` (private, nothing pinned or attached) and reads their
/// kernel memory.
fn measure(config: &config::Config) -> MemoryReport {
    lb_tests::assert_root("loading the data path's maps");
    let sizes = config.map_sizes();
    let dataplane = Dataplane::load(&LoadOptions::for_sizes(&sizes, None)).expect("loads");
    dataplane
        .map_memory(&sizes, config.agent.map_memory_budget_bytes())
        .expect("memlock of every map")
}

fn map<'a>(report: &'a MemoryReport, name: &str) -> &'a sizing::MapMemory {
    report
        .maps
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {report:?}"))
}

#[test]
#[ignore = "needs root"]
fn the_lab_config_takes_at_most_128_mib() {
    // Before the maps were sized from the config, every agent loaded the object's sizes
    // (`LoadOptions::default()`): printed for comparison.
    let config = lab_config("");
    lb_tests::assert_root("loading the data path's maps");
    let before = Dataplane::load(&LoadOptions::default())
        .expect("loads")
        .map_memory(&config.map_sizes(), config.agent.map_memory_budget_bytes())
        .expect("memlock of every map");
    println!("the object's own sizes (every agent before sizing):");
    for m in &before.maps {
        println!(
            "{:<18} {:>12} bytes  {:>9} entries",
            m.name, m.bytes, m.max_entries
        );
    }
    println!(
        "total {} ({} bytes)\n",
        sizing::mib(before.total_bytes),
        before.total_bytes
    );

    println!("the lab's config:");
    let report = measure(&config);
    for m in &report.maps {
        println!(
            "{:<18} {:>12} bytes  {:>9} entries",
            m.name, m.bytes, m.max_entries
        );
    }
    println!(
        "total {} ({} bytes)",
        sizing::mib(report.total_bytes),
        report.total_bytes
    );
    assert!(
        report.total_bytes <= 128 * MIB,
        "the lab's maps take {}",
        sizing::mib(report.total_bytes)
    );
    assert!(
        report.maps.len() >= lb_common::names::PINNED_MAPS.len(),
        "every map is reported"
    );
    // The LPM tries (FW_V6, SERVICE_SOURCES) take memory per prefix, and none is written here.
    assert!(
        report
            .maps
            .iter()
            .filter(|m| m.bytes == 0)
            .all(|m| m.name == "FW_V6" || m.name == "SERVICE_SOURCES"),
        "{report:?}"
    );
    // No IPv6 service in the lab: its flow table is a placeholder.
    assert_eq!(
        map(&report, "FLOWS_V6").max_entries,
        sizing::UNUSED_TABLE_ENTRIES
    );
    assert_eq!(
        report.resize_pending().count(),
        0,
        "loaded as the config wants"
    );
}

#[test]
#[ignore = "needs root"]
fn memory_grows_with_flow_capacity_and_the_estimate_follows_the_kernel() {
    let cpus = sizing::possible_cpus();
    let mut totals = Vec::new();
    for capacity in [65_536u32, 262_144, 1_048_576] {
        let config = lab_config(&format!("flow_capacity = {capacity}"));
        let report = measure(&config);
        assert_eq!(map(&report, "FLOWS_V4").max_entries, capacity);
        let estimate = sizing::estimate(&config.map_demand(), cpus);
        for (name, estimated) in &estimate {
            let real = map(&report, name).bytes;
            // Within 10%, or 64 KiB for the small maps (fixed overheads of the kernel's own).
            let slack = (real / 10).max(64 * 1024);
            assert!(
                estimated.abs_diff(real) <= slack,
                "{name} at flow_capacity {capacity}: estimated {estimated}, the kernel says {real}"
            );
        }
        println!(
            "flow_capacity {capacity}: {} (estimate {})",
            sizing::mib(report.total_bytes),
            sizing::mib(sizing::estimate_total(&config.map_demand(), cpus))
        );
        totals.push(report.total_bytes);
    }
    assert!(
        totals.windows(2).all(|w| w[0] < w[1]),
        "memory grows with flow_capacity: {totals:?}"
    );
    assert!(
        totals[2] - totals[0] > 200 * MIB,
        "1M flows (with NAT) take far more than 64k: {totals:?}"
    );
}
