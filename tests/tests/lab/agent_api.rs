//! The agent's status API and CLI against a running agent with the real program in namespaces:
//! every read endpoint and CLI command, the token on writes, drain/enable/weight/add/remove,
//! reload (API and SIGHUP) keeping a live connection, and clear errors for bad input.
use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    agent_lab::{answers, backend, curl, lb_err, lb_json, lb_ok, wait_for_state},
    netns,
};
use serde_json::Value;
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions},
    util,
};

const TOKEN: &str = "lab-token-0123456789abcdef0123456789";
const API: &str = "http://127.0.0.1:9876";

fn vip_url() -> String {
    format!("http://{}/", addr::VIP_HTTP)
}

/// curl on the lb host against the API: (status, parsed JSON body or Null).
#[track_caller]
fn api(lab: &Lab, extra: &[&str], path: &str) -> (u16, Value) {
    let (status, body) = curl(lab, host::LB, extra, &format!("{API}{path}"));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[track_caller]
fn assert_error(response: (u16, Value), status: u16, code: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["error"]["code"], code, "{}", response.1);
    assert!(
        response.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        response.1
    );
}

#[test]
#[ignore = "needs root"]
fn status_api_and_cli_against_a_running_agent() {
    let lab = Lab::up(LabSpec::standard("lbt-ag1-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let options = AgentOptions {
        web_health: Some("kind = \"http\"\nexpect_body = \"web\"".into()),
        api_token: Some(TOKEN.into()),
        db_health: None,
        app_tier: false,
        database: false,
        firewall: false,
    };
    let agent = stack::start_with(&lab, &options).unwrap_or_else(|e| panic!("{e:#}"));
    let token_file = stack::api_token_file(&lab).display().to_string();
    let auth = ["--token-file", token_file.as_str()];

    reads(&lab);
    writes_need_the_token(&lab);
    drain_enable_and_weight(&lab, &auth);
    add_and_remove(&lab, &auth);
    bad_bodies(&lab);
    reload_keeps_flows(&lab, &auth, agent);
    bad_config_files(&lab);

    let error = lb_err(&lab, &["status", "--api", "http://127.0.0.1:9"]);
    assert!(error.contains("is `lb run` running?"), "{error}");

    lab.stop(agent).unwrap_or_else(|e| panic!("{e:#}"));
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}

fn reads(lab: &Lab) {
    // Health checks ran at least once on every backend.
    for name in ["web1", "web2"] {
        assert!(wait_for_state(lab, "web-dsr", name, "active", Duration::from_secs(5)).is_some());
    }
    std::thread::sleep(Duration::from_millis(500));
    let web1 = backend(lab, "web-dsr", "web1");
    assert_eq!(web1["health"]["kind"], "http", "{web1}");
    assert_eq!(web1["health"]["up"], true, "{web1}");
    assert_eq!(web1["health"]["last_ok"], true, "{web1}");
    assert!(
        web1["health"]["checks"].as_u64().is_some_and(|n| n >= 2),
        "{web1}"
    );

    let seen = answers(lab, &vip_url(), 20);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&10), Some(&10)),
        "{seen:?}"
    );

    let status = lb_ok(lab, &["status"]);
    println!("$ lb status\n{status}");
    assert!(status.contains("running on eth0"), "{status}");
    assert!(
        status.contains("backends 4: 4 active, 0 draining, 0 down"),
        "{status}"
    );
    let json = lb_json(lab, &["status"]);
    assert_eq!(
        (json["services"].as_u64(), json["writes_enabled"].as_bool()),
        (Some(2), Some(true)),
        "{json}"
    );
    assert!(
        json["traffic"]["new_flows"]
            .as_u64()
            .is_some_and(|n| n >= 20),
        "{json}"
    );

    let services = lb_ok(lab, &["services"]);
    println!("$ lb services\n{services}");
    assert!(
        services
            .lines()
            .any(|l| l.starts_with("web-dsr") && l.contains("2/2") && l.contains("http")),
        "{services}"
    );
    let backends = lb_ok(lab, &["backends"]);
    println!("$ lb backends\n{backends}");
    assert_eq!(
        backends.lines().filter(|l| l.contains(" active ")).count(),
        4,
        "{backends}"
    );

    // Flows, paged through the CLI with the cursor.
    let page = lb_json(lab, &["flows", "--limit", "5"]);
    assert_eq!(page["flows"].as_array().map(Vec::len), Some(5), "{page}");
    assert_eq!(page["flows"][0]["service"], "web-dsr", "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("no cursor: {page}"));
    let next = lb_json(lab, &["flows", "--limit", "5", "--cursor", cursor]);
    assert_eq!(next["flows"].as_array().map(Vec::len), Some(5), "{next}");
    assert_ne!(next["flows"][0], page["flows"][0]);
    let table = lb_ok(lab, &["flows", "--limit", "3"]);
    assert!(
        table.contains("CLIENT") && table.contains("web-dsr") && table.contains("--cursor"),
        "{table}"
    );

    let (code, body) = curl(lab, host::LB, &[], &format!("{API}/healthz"));
    assert_eq!((code, body.contains("ok")), (200, true));
    let (code, metrics) = curl(lab, host::LB, &[], &format!("{API}/metrics"));
    assert_eq!(code, 200);
    for needle in [
        "lb_backend_flows_total{service=\"web-dsr\",backend=\"web1\"} 10",
        "lb_backend_state{service=\"web-dsr\",backend=\"web1\",state=\"active\"} 1",
        "lb_health_check_duration_seconds_bucket{",
        "lb_packets_total{verdict=\"forward_dsr\"}",
        "lb_packets_total{verdict=\"drop_no_backend\"} 0",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }
    let (code, openapi) = api(lab, &[], "/api/v1/openapi.json");
    assert_eq!(code, 200);
    assert_eq!(openapi["openapi"], "3.0.3");
    for path in [
        "/api/v1/status",
        "/api/v1/flows",
        "/api/v1/services/{service}/backends/{backend}/drain",
        "/metrics",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    let (code, service) = api(lab, &[], "/api/v1/services/web-nat");
    assert_eq!(
        (code, service["mode"].as_str()),
        (200, Some("nat")),
        "{service}"
    );
    assert_error(
        api(lab, &[], "/api/v1/services/nope/backends"),
        404,
        "service_not_found",
    );
    assert_error(api(lab, &[], "/api/v1/nope"), 404, "not_found");
    assert_error(
        api(lab, &["-X", "DELETE"], "/api/v1/status"),
        405,
        "method_not_allowed",
    );
    assert_error(api(lab, &[], "/api/v1/flows?limit=0"), 400, "invalid_query");
    assert_error(
        api(lab, &[], "/api/v1/flows?cursor=zz"),
        400,
        "invalid_query",
    );
    assert_error(api(lab, &[], "/api/v1/flows?page=2"), 400, "invalid_query");
    assert_error(
        api(lab, &[], "/api/v1/flows?table=half-open"),
        400,
        "invalid_query",
    );
    let (code, page) = api(lab, &[], "/api/v1/flows?table=unverified&limit=5");
    assert_eq!(code, 200, "{page}");
    assert!(page["flows"].is_array(), "{page}");
}

fn writes_need_the_token(lab: &Lab) {
    let error = lb_err(lab, &["drain", "web-dsr", "web1"]);
    assert!(
        error.contains("(unauthorized)") && error.contains("--token-file"),
        "{error}"
    );
    let wrong = ["-X", "POST", "-H", "Authorization: Bearer not-the-token"];
    assert_error(
        api(lab, &wrong, "/api/v1/services/web-dsr/backends/web1/drain"),
        401,
        "unauthorized",
    );
    assert_error(
        api(lab, &["-X", "POST"], "/api/v1/reload"),
        401,
        "unauthorized",
    );
    assert_eq!(
        backend(lab, "web-dsr", "web1")["state"],
        "active",
        "an unauthorized write changed something"
    );
}

fn drain_enable_and_weight(lab: &Lab, auth: &[&str]) {
    let out = lb_ok(lab, &[&["drain", "web-dsr", "web1"], auth].concat());
    assert!(out.contains("draining"), "{out}");
    let web1 = backend(lab, "web-dsr", "web1");
    assert_eq!(
        (web1["state"].as_str(), web1["admin"].as_str()),
        (Some("draining"), Some("draining")),
        "{web1}"
    );
    let seen = answers(lab, &vip_url(), 10);
    assert_eq!(
        seen.get("web2"),
        Some(&10),
        "a draining backend got new flows: {seen:?}"
    );

    lb_ok(lab, &[&["enable", "web-dsr", "web1"], auth].concat());
    let seen = answers(lab, &vip_url(), 10);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&5), Some(&5)),
        "{seen:?}"
    );

    lb_ok(lab, &[&["weight", "web-dsr", "web1", "3"], auth].concat());
    let seen = answers(lab, &vip_url(), 8);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&6), Some(&2)),
        "weights 3:1 over two cycles: {seen:?}"
    );
    let error = lb_err(lab, &[&["weight", "web-dsr", "web1", "0"], auth].concat());
    assert!(
        error.contains("out of range") && error.contains("invalid_value"),
        "{error}"
    );
    lb_ok(lab, &[&["weight", "web-dsr", "web1", "1"], auth].concat());
    let error = lb_err(lab, &[&["drain", "web-dsr", "nope"], auth].concat());
    assert!(error.contains("backend_not_found"), "{error}");
}

fn add_and_remove(lab: &Lab, auth: &[&str]) {
    // db1 runs no web server: the new backend never passes its check, so never gets a flow.
    let out = lb_ok(
        lab,
        &[&["add-backend", "web-dsr", "web3", addr::DB1], auth].concat(),
    );
    assert!(out.contains("added"), "{out}");
    std::thread::sleep(Duration::from_millis(1500));
    let web3 = backend(lab, "web-dsr", "web3");
    assert_eq!(
        (web3["state"].as_str(), web3["health"]["up"].as_bool()),
        (Some("down"), Some(false)),
        "{web3}"
    );
    let seen = answers(lab, &vip_url(), 6);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&3), Some(&3)),
        "{seen:?}"
    );
    let error = lb_err(
        lab,
        &[&["add-backend", "web-dsr", "web3", addr::DB2], auth].concat(),
    );
    assert!(
        error.contains("conflict") && error.contains("already has a backend named `web3`"),
        "{error}"
    );
    let error = lb_err(
        lab,
        &[&["add-backend", "web-dsr", "web4", "fd99::21"], auth].concat(),
    );
    assert!(error.contains("address family"), "{error}");
    let error = lb_err(
        lab,
        &[
            &[
                "add-backend",
                "web-dsr",
                "web4",
                addr::DB2,
                "--port",
                "8080",
            ],
            auth,
        ]
        .concat(),
    );
    assert!(error.contains("DSR"), "{error}");

    lb_ok(
        lab,
        &[&["remove-backend", "web-dsr", "web3"], auth].concat(),
    );
    let lists = lb_json(lab, &["backends", "web-dsr"]);
    assert_eq!(
        lists[0]["backends"].as_array().map(Vec::len),
        Some(2),
        "{lists}"
    );
    lb_ok(
        lab,
        &[&["remove-backend", "web-nat", "web2"], auth].concat(),
    );
    let error = lb_err(
        lab,
        &[&["remove-backend", "web-nat", "web1"], auth].concat(),
    );
    assert!(error.contains("last backend"), "{error}");
}

fn bad_bodies(lab: &Lab) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let weight = "/api/v1/services/web-dsr/backends/web1/weight";
    for body in [
        "nope",
        "{\"weight\": \"x\"}",
        "{\"weight\": 2, \"extra\": 1}",
        "{}",
        "[]",
        "{\"weight\": -1}",
    ] {
        assert_error(
            api(
                lab,
                &["-X", "PUT", "-H", &auth, "--data-binary", body],
                weight,
            ),
            400,
            "invalid_body",
        );
    }
    assert_error(
        api(
            lab,
            &[
                "-X",
                "PUT",
                "-H",
                &auth,
                "--data-binary",
                "{\"weight\": 1000}",
            ],
            weight,
        ),
        422,
        "invalid_value",
    );
    let add = "/api/v1/services/web-dsr/backends";
    assert_error(
        api(
            lab,
            &[
                "-X",
                "POST",
                "-H",
                &auth,
                "--data-binary",
                "{\"name\":\"x\",\"address\":\"not-an-ip\"}",
            ],
            add,
        ),
        422,
        "invalid_value",
    );
    assert_error(
        api(
            lab,
            &[
                "-X",
                "POST",
                "-H",
                &auth,
                "--data-binary",
                "{\"name\":\"bad name\",\"address\":\"10.99.0.22\"}",
            ],
            add,
        ),
        422,
        "invalid_value",
    );
    let big = format!(
        "{{\"name\":\"{}\",\"address\":\"10.99.0.22\"}}",
        "x".repeat(3 << 20)
    );
    let big_file = lab.dir().join("big.json");
    std::fs::write(&big_file, big).unwrap_or_else(|e| panic!("{e}"));
    let response = api(
        lab,
        &[
            "-X",
            "POST",
            "-H",
            &auth,
            "--data-binary",
            &format!("@{}", big_file.display()),
        ],
        add,
    );
    assert_error(response, 413, "invalid_body");
    // The agent is still fine.
    assert_eq!(api(lab, &[], "/healthz").0, 200);
}

fn reload_keeps_flows(lab: &Lab, auth: &[&str], agent: u32) {
    let vip: SocketAddr = format!("{}:80", addr::VIP_HTTP)
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut connection = netns::connect_in(&lab.ns(host::CLIENT), vip, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    let first =
        netns::keep_alive_get(&mut connection, addr::VIP_HTTP).unwrap_or_else(|e| panic!("{e}"));

    let config_path = lab.dir().join("lb.toml");
    let original = std::fs::read_to_string(&config_path).unwrap_or_else(|e| panic!("{e}"));
    let weighted = original.replacen(
        "address = \"10.99.0.12\"\n",
        "address = \"10.99.0.12\"\nweight = 3\n",
        1,
    );
    std::fs::write(&config_path, &weighted).unwrap_or_else(|e| panic!("{e}"));
    let out = lb_ok(lab, &[&["reload"], auth].concat());
    assert!(out.contains("reloaded") && out.contains("kept"), "{out}");
    assert_eq!(backend(lab, "web-dsr", "web2")["weight"], 3);
    // web-nat's web2 was removed at runtime; the reload brought back what the file says.
    assert_eq!(
        lb_json(lab, &["backends", "web-nat"])[0]["backends"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        netns::keep_alive_get(&mut connection, addr::VIP_HTTP).unwrap_or_else(|e| panic!("{e}")),
        first
    );

    // SIGHUP does the same.
    std::fs::write(&config_path, &original).unwrap_or_else(|e| panic!("{e}"));
    assert!(lab.signal(agent, libc::SIGHUP));
    let reloaded = util::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        backend(lab, "web-dsr", "web2")["weight"] == 1
    });
    assert!(reloaded, "SIGHUP did not reload");
    assert_eq!(lb_json(lab, &["status"])["reloads"], 2);

    // An invalid file is refused; the running config stays.
    std::fs::write(
        &config_path,
        original.replacen("port = 80\n", "port = 80\nweight = 2\n", 1),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let error = lb_err(lab, &[&["reload"], auth].concat());
    assert!(
        error.contains("invalid_config")
            && error.contains("lb.toml:")
            && error.contains("running one is kept"),
        "{error}"
    );
    let status = lb_json(lab, &["status"]);
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    let seen = answers(lab, &vip_url(), 4);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&2), Some(&2)),
        "{seen:?}"
    );
    assert_eq!(
        netns::keep_alive_get(&mut connection, addr::VIP_HTTP).unwrap_or_else(|e| panic!("{e}")),
        first
    );
    std::fs::write(&config_path, &original).unwrap_or_else(|e| panic!("{e}"));
}

fn bad_config_files(lab: &Lab) {
    let bad = lab.dir().join("bad.toml");
    let text = "[agent]\ninterface = \"eth0\"\n\n[[service]]\nname = \"web\"\nvip = \"10.99.0.100\"\nport = 80\nmode = \"dsr\"\n\n\
                [service.health]\nkind = \"tcp\"\nexpect_status = 200\ninterval_ms = 5\n\n[[service.backend]]\nname = \"web1\"\naddress = \"10.99.0.11\"\n";
    std::fs::write(&bad, text).unwrap_or_else(|e| panic!("{e}"));
    let bad = bad.display().to_string();
    let error = lb_err(lab, &["check-config", &bad]);
    assert!(
        error.contains("bad.toml:12:17: service `web`: health `expect_status` only applies"),
        "{error}"
    );
    assert!(
        error.contains("bad.toml:13:15") && error.contains("fix:") && error.contains("2 error(s)"),
        "{error}"
    );
    let error = lb_err(
        lab,
        &["run", "--config", &bad, "--pin-path", "/nonexistent"],
    );
    assert!(error.contains("bad.toml:12:17"), "{error}");
}
