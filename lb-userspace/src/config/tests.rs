//! The config's parsing and validation, on example files.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;

#[track_caller]
fn errors_of(text: &str) -> Vec<ConfigError> {
    match parse(Path::new("lb.toml"), text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

const GOOD: &str = r#"
[agent]
interface = "eth0"

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
mode = "dsr"

[[service.backend]]
name = "web1"
address = "10.0.0.11"

[[service.backend]]
name = "web2"
address = "10.0.0.12"
weight = 2
"#;

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../examples/lb.toml");
    if let Err(e) = parse(Path::new("examples/lb.toml"), text) {
        panic!("examples/lb.toml is invalid:\n{e}");
    }
}

#[test]
fn snat_address_is_one_address_or_a_list() {
    let nat = GOOD.replace("mode = \"dsr\"", "mode = \"nat\"\nsnat_address = SNAT");
    let one = nat.replace("SNAT", "\"10.0.0.3\"");
    let config = parse(Path::new("lb.toml"), &one).unwrap_or_else(|e| panic!("{e}"));
    let snat = config.services[0]
        .snat_address
        .as_ref()
        .map(|s| s.0.clone());
    assert_eq!(snat, Some(vec![IpAddr::from([10, 0, 0, 3])]));

    let list = nat.replace("SNAT", "[\"10.0.0.3\", \"10.0.0.4\"]");
    let config = parse(Path::new("lb.toml"), &list).unwrap_or_else(|e| panic!("{e}"));
    let snat = config.services[0].snat_address.as_ref().map(|s| s.0.len());
    assert_eq!(snat, Some(2));

    for (bad, expect) in [
        ("[]", "empty list"),
        ("[\"10.0.0.3\", \"10.0.0.3\"]", "listed twice"),
        ("[\"10.0.0.3\", \"fd00::3\"]", "not of the VIP's address family"),
        ("\"0.0.0.0\"", "cannot be a source address"),
        ("\"255.255.255.255\"", "cannot be a source address"),
        ("\"224.0.0.1\"", "cannot be a source address"),
        ("\"127.0.0.1\"", "cannot be a source address"),
        (
            "[\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\", \"10.0.0.4\", \"10.0.0.5\", \"10.0.0.6\", \"10.0.0.7\", \"10.0.0.8\", \"10.0.0.9\"]",
            "at most 8",
        ),
    ] {
        let errors = errors_of(&nat.replace("SNAT", bad));
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert!(errors[0].message.contains(expect), "{bad}: {}", errors[0]);
        assert_eq!(errors[0].line, 10, "{bad}: the error points at snat_address: {}", errors[0]);
    }
    // Not an address at all: a parse error, not a panic.
    let errors = errors_of(&nat.replace("SNAT", "[\"10.0.0.3\", 7]"));
    assert!(!errors.is_empty());
    let errors = errors_of(&nat.replace("SNAT", "\"10.0.0.x\""));
    assert!(
        errors[0].message.contains("invalid IP address"),
        "{}",
        errors[0]
    );
}

#[test]
fn good_config_parses() {
    let config = parse(Path::new("lb.toml"), GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.services.len(), 1);
    assert_eq!(config.services[0].backends[1].weight, 2);
    assert_eq!(config.agent.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
}

#[test]
fn maps_over_the_memory_budget_are_refused_where_the_budget_is_set() {
    // 4M IPv4 connections take about 480 MiB of flow table alone.
    let text = GOOD.replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nflow_capacity = 4194304\nmap_memory_budget_mib = 128",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = &errors[0];
    assert_eq!((error.line, error.column), (5, 25), "{error}");
    assert!(
        error.message.contains("map_memory_budget_mib = 128 MiB")
            && error.message.contains("FLOWS_V4"),
        "{error}"
    );
    assert!(
        error.fix.contains("lower agent.flow_capacity")
            && error
                .fix
                .contains("raise agent.map_memory_budget_mib to at least"),
        "{error}"
    );

    // Without a budget in the file, the error points at flow_capacity.
    let text = GOOD.replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nflow_capacity = 67108864",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (4, 17), "{}", errors[0]);

    // The same capacity within a budget large enough; the default fits the default.
    let text = GOOD.replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nflow_capacity = 4194304\nmap_memory_budget_mib = 2048",
    );
    parse(Path::new("lb.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let config = parse(Path::new("lb.toml"), GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.agent.flow_capacity, DEFAULT_FLOW_CAPACITY);
    assert_eq!(
        config.agent.unverified_capacity(),
        DEFAULT_FLOW_CAPACITY / 4
    );

    let text = GOOD.replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nmap_memory_budget_mib = 0",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("out of range"), "{}", errors[0]);
    assert_eq!(errors[0].line, 4, "{}", errors[0]);
}

#[test]
fn maps_are_sized_from_what_the_config_needs() {
    use crate::sizing::UNUSED_TABLE_ENTRIES;
    let config = parse(Path::new("lb.toml"), GOOD).unwrap_or_else(|e| panic!("{e}"));
    let sizes = config.map_sizes();
    assert_eq!(sizes.flows_v4, DEFAULT_FLOW_CAPACITY);
    assert_eq!(sizes.flows_v6, UNUSED_TABLE_ENTRIES, "no IPv6 service");
    assert_eq!(sizes.nat_reverse, UNUSED_TABLE_ENTRIES, "no NAT service");
    assert_eq!(sizes.fw_v4_half_groups % 64, 0, "whole pages");
    assert!(sizes.fw_v4_half_groups < lb_common::maps::V4_HALF_GROUPS);

    let nat = GOOD.replace(
        "mode = \"dsr\"",
        "mode = \"nat\"\nsnat_address = \"10.0.0.3\"",
    );
    let config = parse(Path::new("lb.toml"), &nat).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.map_sizes().nat_reverse, DEFAULT_FLOW_CAPACITY);

    // Many prefixes: a larger rule table, never over the largest one.
    let rules: String = (0..5000u32)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "{GOOD}\n[[firewall.rule]]\nname = \"many\"\nsources = [{rules}]\naction = \"drop\"\n"
    );
    let config = parse(Path::new("lb.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let many = config.map_sizes().fw_v4_half_groups;
    assert!(many > sizes.fw_v4_half_groups && many <= lb_common::maps::V4_HALF_GROUPS);
    assert_eq!(many % 64, 0);
}

#[test]
fn unknown_key_is_located() {
    let text = GOOD.replace("port = 80", "port = 80\nmodee = \"nat\"");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 9, "{}", errors[0]);
    assert!(errors[0].message.contains("modee"), "{}", errors[0]);
}

#[test]
fn semantic_errors_are_all_reported_with_positions() {
    let text = GOOD
        .replace("mode = \"dsr\"", "mode = \"nat\"")
        .replace("weight = 2", "weight = 0");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].message.contains("snat_address"));
    assert_eq!((errors[0].line, errors[0].column), (9, 8));
    assert!(errors[1].message.contains("weight 0"));
    assert_eq!(errors[1].line, 18);
}

#[test]
fn database_section_is_checked_against_its_services() {
    let db = |extra: &str| {
        format!(
            "{GOOD}\n[[service]]\nname = \"dbw\"\nvip = \"10.0.0.101\"\nport = 3306\nmode = \"dsr\"\n{extra}\n\
             [[service.backend]]\nname = \"db1\"\naddress = \"10.0.0.21\"\n\n\
             [[service]]\nname = \"dbr\"\nvip = \"10.0.0.102\"\nport = 3306\nmode = \"dsr\"\n\n\
             [[service.backend]]\nname = \"db9\"\naddress = \"10.0.0.29\"\n\n\
             [database]\nwrite_service = \"dbw\"\nread_service = \"dbr\"\nuser = \"a\"\nreplication_user = \"r\"\nfail_after = 0\n"
        )
    };
    let errors = errors_of(&db(""));
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(errors.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("backend `db9` is not a node"),
        "{messages:?}"
    );
    assert!(messages[1].contains("fail_after 0"), "{messages:?}");
    let errors = errors_of(&db("[service.health]\nkind = \"tcp\"\n"));
    assert!(
        errors.iter().any(|e| e
            .message
            .contains("the [database] section checks its nodes")),
        "{errors:?}"
    );
    let text = db("").replace("write_service = \"dbw\"", "write_service = \"nope\"");
    assert!(errors_of(&text)
        .iter()
        .any(|e| e.message.contains("`nope` is not a configured service")));
    // The failover policy is one of three words; a probe gives up only well after its timeout.
    let policy = db("").replace("fail_after = 0", "failover = \"sometimes\"");
    let errors = errors_of(&policy);
    assert!(
        errors.iter().any(|e| e.message.contains("sometimes")
            && e.message.contains("safe")
            && e.message.contains("available")),
        "{errors:?}"
    );
    // The bool of older configs is refused with the words that replace it.
    let old = db("").replace("fail_after = 0", "failover = true");
    let errors = errors_of(&old);
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("failover = true is no longer")
                && e.fix.contains("\"safe\"")),
        "{errors:?}"
    );
    let unreachable = db("").replace(
        "fail_after = 0",
        "timeout_ms = 500\nunreachable_after_ms = 700",
    );
    assert!(
        errors_of(&unreachable)
            .iter()
            .any(|e| e.message.contains("unreachable_after_ms 700")),
        "a give-up shorter than two probe timeouts"
    );
}

#[test]
fn secrets_are_not_in_debug_output() {
    let text = format!(
        "{GOOD}\n[[service]]\nname = \"dbw\"\nvip = \"10.0.0.101\"\nport = 3306\nmode = \"dsr\"\n\n\
         [[service.backend]]\nname = \"db1\"\naddress = \"10.0.0.21\"\n\n\
         [database]\nwrite_service = \"dbw\"\nuser = \"a\"\npassword = \"hunter2-admin\"\n\
         replication_user = \"r\"\nreplication_password = \"hunter2-repl\"\n"
    );
    let config = super::file::parse(Path::new("lb.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{config:?}");
    assert!(shown.contains("Secret(redacted)"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let database = config.database.unwrap_or_else(|| panic!("no [database]"));
    assert_eq!(
        database.password.as_ref().map(Secret::expose),
        Some("hunter2-admin")
    );
}

/// A prefix as the config and the API parse it, written back out.
fn prefix(text: &str) -> Result<String, String> {
    parse_prefix(text).map(|c| c.to_string())
}

/// The accepted inputs, the rejections and their messages (pinned before the prefix type
/// moved to `ipnet`).
#[test]
fn prefixes_parse_as_before() {
    let ok = |text: &str, want: &str| assert_eq!(prefix(text).as_deref(), Ok(want), "{text:?}");
    ok("10.0.0.0/8", "10.0.0.0/8");
    ok("0.0.0.0/0", "0.0.0.0/0");
    ok("192.0.2.7/32", "192.0.2.7/32");
    ok("2001:db8::/32", "2001:db8::/32");
    ok("::/0", "::/0");
    ok("2001:db8::1/128", "2001:db8::1/128");
    // A bare address is a /32 or a /128.
    ok("192.0.2.7", "192.0.2.7/32");
    ok("2001:db8::1", "2001:db8::1/128");
    // Host bits are cleared silently.
    ok("10.1.2.3/16", "10.1.0.0/16");
    ok("10.1.2.3/0", "0.0.0.0/0");
    ok("2001:db8:1:2::5/48", "2001:db8:1::/48");
    ok("::ffff:10.1.2.3/120", "::ffff:10.1.2.0/120");
    // Spaces around the address and the length are trimmed.
    ok(" 10.0.0.0/8", "10.0.0.0/8");
    ok("10.0.0.0 / 8 ", "10.0.0.0/8");
    ok(" 2001:db8::1 ", "2001:db8::1/128");

    let err = |text: &str, want: &str| assert_eq!(prefix(text), Err(want.to_string()), "{text:?}");
    err(
        "10.0.0.0/33",
        "`10.0.0.0/33`: the prefix length must be 0..=32",
    );
    err("::/129", "`::/129`: the prefix length must be 0..=128");
    err("10.0.0.0/", "`10.0.0.0/`: the prefix length must be 0..=32");
    err(
        "10.0.0.0/-1",
        "`10.0.0.0/-1`: the prefix length must be 0..=32",
    );
    err(
        "10.0.0.0/8/8",
        "`10.0.0.0/8/8`: the prefix length must be 0..=32",
    );
    err(
        "10.0.0.0/300",
        "`10.0.0.0/300`: the prefix length must be 0..=32",
    );
    err("nonsense/8", "`nonsense/8` is not an IP address or prefix");
    err("nonsense", "`nonsense` is not an IP address or prefix");
    err("10.0.0/8", "`10.0.0/8` is not an IP address or prefix");
    err("", "`` is not an IP address or prefix");
    err("   ", "`   ` is not an IP address or prefix");
    err("/8", "`/8` is not an IP address or prefix");
    err(
        "10.0. 0.0/8",
        "`10.0. 0.0/8` is not an IP address or prefix",
    );
}

#[test]
fn firewall_errors_are_located() {
    let with_fw = |fw: &str| format!("{fw}\n{GOOD}");
    for (fw, needle, line) in [
        ("[[firewall.rule]]\nname = \"x\"\nsources = [\"10.0.0.0/33\"]\naction = \"drop\"", "prefix length", 3),
        ("[[firewall.rule]]\nname = \"x\"\nsources = [\"10.0.0.0/8\"]\naction = \"reject\"", "unknown variant", 4),
        (
            "[[firewall.rule]]\nname = \"x\"\nsources = [\"10.0.0.0/8\"]\naction = \"drop\"\n[[firewall.rule]]\nname = \"y\"\nsources = [\"10.0.0.0/8\"]\naction = \"allow\"",
            "rules `x` and `y`",
            7,
        ),
        ("[firewall.host]\npolicy = \"closed\"", "unknown variant", 2),
    ] {
        let errors = errors_of(&with_fw(fw));
        let error = errors.iter().find(|e| e.to_string().contains(needle)).unwrap_or_else(|| panic!("{needle}: {errors:?}"));
        assert_eq!(error.line, line, "{error}");
    }
    let text = GOOD.replace(
        "mode = \"dsr\"",
        "mode = \"dsr\"\nallow_sources = [\"fd00::/8\"]",
    );
    let errors = errors_of(&text);
    assert!(errors[0].message.contains("address family"), "{errors:?}");
}

#[test]
fn bad_values_are_rejected() {
    for (from, to, needle) in [
        (
            "vip = \"10.0.0.100\"",
            "vip = \"10.0.0.300\"",
            "invalid IP address",
        ),
        ("port = 80", "port = 70000", "invalid value"),
        ("mode = \"dsr\"", "mode = \"tunnel\"", "unknown variant"),
        (
            "address = \"10.0.0.12\"",
            "address = \"fd00::12\"",
            "address family",
        ),
        (
            "address = \"10.0.0.12\"",
            "address = \"10.0.0.11\"",
            "listed twice",
        ),
        (
            "interface = \"eth0\"",
            "interface = \"a-very-long-interface-name\"",
            "not a valid interface",
        ),
    ] {
        let errors = errors_of(&GOOD.replace(from, to));
        assert!(
            errors.iter().any(|e| e.to_string().contains(needle)),
            "{to}: {errors:?}"
        );
    }
}

const HEALTH: &str = r#"
[service.health]
kind = "http"
path = "/healthz"
expect_body = "ok"
"#;

/// GOOD with `extra` inserted before the first backend (inside the service table).
fn good_with(extra: &str) -> String {
    GOOD.replacen(
        "\n[[service.backend]]",
        &format!("{extra}\n[[service.backend]]"),
        1,
    )
}

#[test]
fn api_and_health_parse_with_defaults() {
    let text = format!(
        "[api]\nbind = \"0.0.0.0:9000\"\ntoken_file = \"/etc/lb/token\"\ntls_cert_file = \"/etc/lb/api.pem\"\ntls_key_file = \"/etc/lb/api-key.pem\"\n{}",
        good_with(HEALTH)
    );
    let config = parse(Path::new("lb.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.api.bind.port(), 9000);
    let health = config.services[0]
        .health
        .as_ref()
        .unwrap_or_else(|| panic!("no health section"));
    assert_eq!(health.kind, HealthKind::Http);
    assert_eq!(
        (health.interval(), health.timeout()),
        (Duration::from_millis(200), Duration::from_millis(200))
    );
    assert_eq!((health.rise, health.fall), (2, 3));
    assert_eq!((health.path(), health.expect_status()), ("/healthz", 200));
    assert!(health.tls_verify());
}

#[test]
fn api_defaults_to_loopback() {
    let config = parse(Path::new("lb.toml"), GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.api.bind, DEFAULT_API_BIND);
    assert!(config.api.bind.ip().is_loopback());
    assert!(config.api.token_file.is_none());
}

#[test]
fn health_errors_are_located_and_explained() {
    for (health, needle, line) in [
        ("[service.health]\nkind = \"tcp\"\npath = \"/\"\n", "`path` only applies to kind = http or https", 12),
        ("[service.health]\nkind = \"http\"\ninterval_ms = 5\n", "interval_ms 5 is out of range", 12),
        ("[service.health]\nkind = \"http\"\ntimeout_ms = 900\n", "must be between 10 and interval_ms", 12),
        ("[service.health]\nkind = \"http\"\nfall = 0\n", "fall = 0 is out of range", 12),
        ("[service.health]\nkind = \"mysql\"\n", "needs `user`", 11),
        ("[service.health]\nkind = \"mysql\"\nuser = \"u\"\npassword = \"p\"\npassword_file = \"/f\"\n", "both password and password_file", 14),
        ("[service.health]\nkind = \"mysql\"\nuser = \"u\"\nmax_lag_s = 3\nrole = \"primary\"\n", "max_lag_s only applies", 13),
        ("[service.health]\nkind = \"https\"\npath = \"healthz\"\n", "is not a request path", 12),
        ("[service.health]\nkind = \"http\"\nexpect_status = 42\n", "not an HTTP status", 12),
        ("[service.health]\nkind = \"ping\"\n", "unknown variant", 11),
        ("[service.health]\nkind = \"tcp\"\nintervall_ms = 100\n", "unknown field", 12),
    ] {
        let errors = errors_of(&good_with(health));
        let error = errors.iter().find(|e| e.message.contains(needle)).unwrap_or_else(|| panic!("{needle}: {errors:?}"));
        assert_eq!(error.line, line, "{error}");
        assert!(!error.fix.is_empty() || error.message.contains("unknown"), "{error}");
    }
}

#[test]
fn udp_services_cannot_have_tcp_health_checks() {
    let text = good_with("[service.health]\nkind = \"tcp\"\n")
        .replace("port = 80", "port = 53\nprotocol = \"udp\"");
    let errors = errors_of(&text);
    assert!(
        errors.iter().any(|e| e.message.contains("is UDP")),
        "{errors:?}"
    );
}

#[test]
fn an_exposed_api_needs_tls_and_a_token_and_says_where() {
    let errors = errors_of(&format!("[api]\nbind = \"0.0.0.0:9876\"\n{GOOD}"));
    let tls = errors
        .iter()
        .find(|e| e.message.contains("no TLS certificate"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!((tls.line, tls.column), (2, 8), "{tls}");
    assert!(
        tls.fix.contains("api.tls_cert_file and api.tls_key_file"),
        "{tls}"
    );
    assert!(
        errors.iter().any(|e| e.message.contains("no token_file")),
        "{errors:?}"
    );
    // Loopback, v4 or v6, needs neither.
    for bind in ["127.0.0.1:9876", "[::1]:9876", "127.0.0.2:1"] {
        let text = format!("[api]\nbind = \"{bind}\"\n{GOOD}");
        let config = parse(Path::new("lb.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.api.is_exposed(), "{bind}");
    }
}

#[test]
fn api_tls_hosts_and_limits_are_checked() {
    for (api, needle, line) in [
        (
            "tls_cert_file = \"/c.pem\"\n",
            "without api.tls_key_file",
            2,
        ),
        (
            "tls_key_file = \"/k.pem\"\n",
            "without api.tls_cert_file",
            2,
        ),
        (
            "allowed_hosts = [\"http://lb.example\"]\n",
            "not a host name",
            2,
        ),
        (
            "allowed_hosts = [\"lb.example:9876\"]\n",
            "not a host name",
            2,
        ),
        ("allowed_hosts = [\"\"]\n", "not a host name", 2),
        ("max_connections = 0\n", "api.max_connections = 0", 2),
        (
            "header_read_timeout_ms = 1\n",
            "api.header_read_timeout_ms = 1",
            2,
        ),
        ("idle_timeout_ms = 99999999\n", "api.idle_timeout_ms", 2),
    ] {
        let errors = errors_of(&format!("[api]\n{api}{GOOD}"));
        let error = errors
            .iter()
            .find(|e| e.message.contains(needle))
            .unwrap_or_else(|| panic!("{api}: {errors:?}"));
        assert_eq!(error.line, line, "{error}");
    }
    let text = format!(
        "[api]\nallowed_hosts = [\"LB.example\", \"10.0.0.1\", \"fd00::1\"]\nmax_connections = 16\n{GOOD}"
    );
    let config = parse(Path::new("lb.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.api.allowed_hosts,
        ["lb.example", "10.0.0.1", "fd00::1"]
    );
    assert_eq!(config.api.max_connections, 16);
    assert_eq!(
        config.api.header_read_timeout_ms,
        DEFAULT_API_HEADER_READ_TIMEOUT_MS
    );
}

#[test]
fn bad_api_bind_is_rejected() {
    let errors = errors_of(&format!("[api]\nbind = \"localhost\"\n{GOOD}"));
    assert_eq!(errors[0].line, 2, "{}", errors[0]);
}
