//! 100k structured random and mutated frames through the real XDP program and the reference
//! model (`lb_common::model`), in both scenarios (strict and relaxed firewall): no XDP_ABORTED,
//! no disagreement. The full run is
//! `cargo run --release -p lb-tests --bin lb-fuzz -- --packets 1000000`.
use lb_tests::fuzz::{self, scenario::Scenario, Options};

#[test]
#[ignore = "needs root"]
fn the_program_agrees_with_the_model_on_100k_fuzzed_frames() {
    let packets = std::env::var("LB_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let report = fuzz::run(&Options {
        packets,
        seed: 0x5EED,
        ..Options::default()
    });
    eprintln!("{}", report.summary());
    assert_eq!(report.packets, packets);
    assert_eq!(
        (report.aborted, report.model_mismatches),
        (0, 0),
        "{}",
        report.summary()
    );
    // The generator reaches every decision the configuration allows.
    for verdict in [
        "forward_dsr",
        "forward_nat",
        "nat_reply",
        "drop_malformed",
        "pass_not_ip",
        "drop_denied",
        "drop_spoofed",
        "drop_tcp_flags",
        "drop_fragment",
        "pass_fragment",
        "drop_service_source",
        "drop_no_backend",
        "drop_host_policy",
        "pass_host",
        "pass_no_service",
    ] {
        assert!(
            report.verdicts.get(verdict).is_some_and(|&n| n > 0),
            "no packet got {verdict}\n{}",
            report.summary()
        );
    }
}

/// The comparison bites: a model that believes one fewer firewall check disagrees at once.
#[test]
#[ignore = "needs root"]
fn a_wrong_model_is_caught() {
    static WRONG: lb_common::model::Config = lb_common::model::Config {
        tcp_flag_checks: false,
        ..fuzz::scenario::MODEL
    };
    static SCENARIOS: [Scenario; 1] = [Scenario {
        model: &WRONG,
        ..fuzz::scenario::STRICT
    }];
    let options = Options {
        packets: 5_000,
        seed: 0x5EED,
        shrink_max: 0,
        max_mismatches: 1,
        scenarios: &SCENARIOS,
        ..Options::default()
    };
    let report = fuzz::run(&options);
    assert!(
        report.model_mismatches > 0,
        "a model without TCP flag checks went unnoticed\n{}",
        report.summary()
    );
}
