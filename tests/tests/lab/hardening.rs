//! Issue 16's hardening over namespaces, on the whole stack (lb-web, MariaDB, the agent with
//! health checks and its database watch): slowloris processes against lb-web and the agent's
//! API do not fail a health check nor keep new clients out, both servers close the half-sent
//! requests, and none of the lab's passwords or the token shows in logs or answers.
use std::process::Command;

use lb_tests::agent_lab::curl;
use xtask::{
    hardening::{self, Attack},
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions},
    util,
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
        rate: 2_000,
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
        let opened: u64 = outcome
            .attackers
            .iter()
            .filter(|a| a.target == target)
            .map(|a| a.report.opened)
            .sum();
        assert!(
            opened > 20_000,
            "{target}: only {opened} half-sent requests, not above the lab's descriptor limit"
        );
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

/// An agent whose API listens on the lb's lab address: HTTPS with a certificate from
/// `lb-web gen-certs`, the token for reads, `Host` checked; `/healthz` open.
#[test]
#[ignore = "needs root"]
fn an_exposed_api_speaks_tls_wants_the_token_and_checks_host() {
    let lab = Lab::up(LabSpec::standard("hd-api-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let ok = |result: anyhow::Result<()>| result.unwrap_or_else(|e| panic!("{e:#}"));
    let lb = stack::release_binary("lb").unwrap_or_else(|e| panic!("{e:#}"));
    ok(stack::start_web_servers(&lab));
    ok(stack::attach_peer_pass(&lab, &lb));
    let certs = lab.dir().join("api-certs");
    let web = stack::release_binary("lb-web").unwrap_or_else(|e| panic!("{e:#}"));
    let mut gen = Command::new(web);
    gen.arg("gen-certs")
        .arg("--out")
        .arg(&certs)
        .args(["--ip", addr::LB]);
    ok(util::output(&mut gen).map(drop));
    let token_file = lab.dir().join("api-token");
    ok(util::write_private(&token_file, format!("{TOKEN}\n")));
    let options = AgentOptions {
        api_token: Some(TOKEN.to_string()),
        ..AgentOptions::default()
    };
    let text = stack::agent_config_text(&stack::pin_dir(&lab), &token_file, &options)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let api = format!("{}:9876", addr::LB);
    let text = text.replacen(
        "[api]\n",
        &format!(
            "[api]\nbind = \"{api}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nallowed_hosts = [\"lb.lab.example\"]\n",
            certs.join("server.pem").display(),
            certs.join("server-key.pem").display()
        ),
        1,
    );
    // The host policy lets only open ports reach the lb itself: open the API's.
    let text = format!(
        "{text}\n[[firewall.host.open_ports]]\nport = 22\n\n[[firewall.host.open_ports]]\nport = 9876\nsources = [\"{}/32\"]\n",
        addr::CLIENT
    );
    let config = lab.dir().join("lb.toml");
    ok(util::write_private(&config, text));
    stack::start_agent(&lab, &lb, &config).unwrap_or_else(|e| panic!("{e:#}"));

    // The CLI from the client: https with the lab's CA; reads need the token.
    let ca = certs.join("ca.pem").display().to_string();
    let url = format!("https://{api}");
    let cli = |extra: &[&str]| {
        let mut args = vec![
            lb.display().to_string(),
            "--api".into(),
            url.clone(),
            "--ca-file".into(),
            ca.clone(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push("status".into());
        let out = lab
            .exec_unchecked(host::CLIENT, &args)
            .unwrap_or_else(|e| panic!("{e:#}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (success, text) = cli(&[]);
    assert!(!success && text.contains("unauthorized"), "{text}");
    let token_path = token_file.display().to_string();
    let (success, text) = cli(&["--token-file", &token_path]);
    assert!(success && text.contains("\"api_bind\""), "{text}");
    let plain = lab
        .exec_unchecked(
            host::CLIENT,
            &[
                lb.display().to_string(),
                "--api".into(),
                format!("http://{api}"),
                "--token-file".into(),
                token_path.clone(),
                "status".into(),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !plain.status.success(),
        "plain HTTP to the TLS API answered"
    );

    // Host: the bind address and the configured name pass, another name is refused.
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let status_url = format!("https://{api}/api/v1/status");
    for (host_header, expect) in [
        (format!("Host: {api}"), 200),
        ("Host: lb.lab.example:9876".to_string(), 200),
        ("Host: rebound.attacker.example:9876".to_string(), 403),
    ] {
        let (status, body) = curl(
            &lab,
            host::CLIENT,
            &["--cacert", &ca, "-H", &bearer, "-H", &host_header],
            &status_url,
        );
        assert_eq!(status, expect, "{host_header}: {body}");
        if expect == 403 {
            assert!(body.contains("host_not_allowed"), "{body}");
        }
    }
    let (status, body) = curl(
        &lab,
        host::CLIENT,
        &["--cacert", &ca],
        &format!("https://{api}/healthz"),
    );
    assert_eq!((status, body.trim()), (200, "{\"status\":\"ok\"}"));
}
