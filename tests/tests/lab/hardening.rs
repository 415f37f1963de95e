//! Issue 16's hardening over namespaces, on the whole stack (lb-web, MariaDB, the agent with
//! health checks and its database watch): slowloris processes against lb-web and the agent's
//! API do not fail a health check nor keep new clients out, both servers close the half-sent
//! requests, and none of the lab's passwords or the token shows in logs or answers.
use xtask::{
    hardening::{self, Attack},
    lab::{Lab, LabSpec},
    stack,
};

/// Namespaces of this test: a prefix of its own.
const PREFIX: &str = "hd-";
const TOKEN: &str = "hd-lab-token-0123456789abcdef0123456789";

#[test]
#[ignore = "needs root"]
fn slowloris_keeps_neither_health_checks_nor_clients_out_and_no_secret_leaks() {
    let lab = Lab::up(LabSpec::standard(PREFIX)).unwrap_or_else(|e| panic!("lab: {e:#}"));
    stack::start_full_stack(&lab, TOKEN).unwrap_or_else(|e| panic!("{e:#}"));
    // 24,000 half-sent requests per server, above the lab's file-descriptor limit of 20,000.
    let attack = Attack {
        connections: 12_000,
        seconds: 25,
    };
    let outcome = hardening::slowloris_during_health_checks(&lab, &attack)
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", lab.read_log("agent")));
    eprintln!("{outcome:#?}");
    assert!(
        outcome.probe_failures.is_empty(),
        "new clients failed during the attack: {:?}",
        outcome.probe_failures
    );
    assert_eq!(
        outcome.health_checks_failed, 0,
        "health checks failed during the attack"
    );
    for target in ["lb-web", "api"] {
        assert!(
            outcome.closed_by_server(target) > 0,
            "{target} closed no half-sent request: {outcome:?}"
        );
    }
    let (hits, searched) =
        hardening::secrets_in_outputs(&lab, TOKEN).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        hits.is_empty(),
        "secrets found: {hits:?} (searched {searched:?})"
    );
}
