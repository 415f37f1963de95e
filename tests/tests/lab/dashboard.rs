//! The dashboard at `/ui`, in a real headless Chromium inside the lb namespace, against the
//! real agent and the seed's stack: the page loads, lists web1 and web2 with the state the API
//! reports, its chart grows with each poll, and the rates it charts add up to exactly the new
//! flows the data path counted. Also: the host reaches the page through xtask's forwarder.
//!
//! `LB_DASHBOARD_SCREENSHOT=FILE` also writes a 1280x900 PNG of the page after a longer run of
//! mixed traffic (that is how docs/dashboard.png is made).
use std::{
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{
    agent_lab::{backend, curl, lb_json},
    browser::{self, http_request, Browser},
};
use serde_json::{json, Value};
use xtask::{
    forward::Forwarder,
    lab::{addr, host, Lab, LabSpec},
    stack,
};

/// Longest wait for something the page does once a second.
const PAGE_WAIT: Duration = Duration::from_secs(15);
/// Requests through the VIP while the page watches.
const REQUESTS: usize = 200;

#[test]
#[ignore = "needs root"]
fn the_dashboard_shows_both_backends_and_charts_their_live_rates() {
    assert!(
        browser::available(),
        "the dashboard test needs Debian's chromium and chromium-driver: run `cargo xtask setup`"
    );
    let lab = Lab::up(LabSpec::standard("lbt-ui-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    // The whole stack: the database panel shows the replicated cluster's real roles.
    stack::start_full_stack(&lab, "dashboard-test-token").unwrap_or_else(|e| panic!("{e:#}"));
    for web in ["web1", "web2"] {
        let healthy =
            xtask::util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
                let state = backend(&lab, "web-dsr", web);
                state["state"] == "active" && state["health"]["last_ok"] == true
            });
        assert!(
            healthy,
            "{web} never became active and healthy: {}",
            backend(&lab, "web-dsr", web)
        );
    }

    the_host_reaches_the_dashboard_through_the_forwarder(&lab);

    let browser = Browser::start(&lab, host::LB, (1280, 900)).unwrap_or_else(|e| panic!("{e:#}"));
    browser
        .goto(&format!("http://{}/ui", stack::AGENT_API))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(run(&browser, "return document.title;", &[]), "lb dashboard");
    wait_for_polls(&browser, 2);

    the_backends_are_listed_with_the_state_the_api_reports(&browser, &lab);
    the_chart_grows_and_its_rates_add_up_to_the_counted_flows(&browser, &lab);
    firewall_drops_are_shown_by_reason(&browser, &lab);
    the_database_panel_renders_roles(&browser, &lab);

    if let Some(path) = std::env::var_os("LB_DASHBOARD_SCREENSHOT") {
        take_screenshot(&browser, &lab, Path::new(&path));
    }
    drop(browser);
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}

/// What `cargo xtask run` does for the host: a forwarder into the lb namespace.
fn the_host_reaches_the_dashboard_through_the_forwarder(lab: &Lab) {
    let netns = Path::new("/run/netns").join(lab.ns(host::LB));
    let any_port = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let forwarder =
        Forwarder::start(any_port, &netns, stack::AGENT_API).unwrap_or_else(|e| panic!("{e:#}"));
    for (path, content_type, needle) in [
        ("/ui", "text/html", "<title>lb dashboard</title>"),
        ("/ui/app.js", "text/javascript", "/api/v1/status"),
        ("/ui/style.css", "text/css", ".chart"),
    ] {
        let stream = TcpStream::connect(forwarder.local_addr()).unwrap_or_else(|e| panic!("{e}"));
        let response = http_request(stream, "GET", "127.0.0.1", path, None)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            response.status,
            200,
            "{path} through the forwarder: {}",
            response.text()
        );
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with(content_type)),
            "{path}: {:?}",
            response.headers
        );
        assert!(response.text().contains(needle), "{path} lacks {needle}");
    }
    // The real agent's router: JSON errors around the dashboard, no write on it.
    for (method, path, status, code) in [
        ("GET", "/ui/missing.js", 404, "not_found"),
        ("GET", "/no/such/page", 404, "not_found"),
        ("POST", "/ui", 405, "method_not_allowed"),
    ] {
        let stream = TcpStream::connect(forwarder.local_addr()).unwrap_or_else(|e| panic!("{e}"));
        let response = http_request(stream, method, "127.0.0.1", path, None)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let body: Value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", response.text()));
        assert_eq!(
            (response.status, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {body}"
        );
    }
}

#[track_caller]
fn run(browser: &Browser, script: &str, args: &[Value]) -> Value {
    browser
        .execute(script, args)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until the page has finished `count` polls more than it had, without an error shown.
#[track_caller]
fn wait_for_polls(browser: &Browser, count: u64) -> u64 {
    let now = run(browser, "return Number(document.body.dataset.polls);", &[])
        .as_u64()
        .unwrap_or(0);
    let target = now + count;
    let script = format!(
        "return Number(document.body.dataset.polls) >= {target} && !document.body.dataset.error;"
    );
    browser
        .wait_for(
            &format!("{count} more polls without an error"),
            &script,
            PAGE_WAIT,
        )
        .unwrap_or_else(|e| {
            let error = run(browser, "return document.body.dataset.error || null;", &[]);
            panic!("{e:#}; the page's error: {error}")
        });
    target
}

fn the_backends_are_listed_with_the_state_the_api_reports(browser: &Browser, lab: &Lab) {
    let rows = run(
        browser,
        "return [...document.querySelectorAll('#services tr[data-backend]')].map(r => ({
            service: r.dataset.service, backend: r.dataset.backend, state: r.dataset.state,
            stateText: r.querySelector('td.state').textContent,
            health: r.querySelector('td.health') ? r.querySelector('td.health').textContent : null }));",
        &[],
    );
    let rows = rows
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {rows}"));
    for service in ["web-dsr", "web-nat", "web-https"] {
        for web in ["web1", "web2"] {
            let row = rows
                .iter()
                .find(|r| r["service"] == service && r["backend"] == web)
                .unwrap_or_else(|| panic!("the page does not list {service}/{web}: {rows:?}"));
            let api = backend(lab, service, web);
            assert_eq!(
                row["state"], api["state"],
                "{service}/{web}: page {row}, API {api}"
            );
            assert!(
                row["stateText"]
                    .as_str()
                    .is_some_and(|t| t.contains("active")),
                "{service}/{web}: {row}"
            );
            let health = row["health"].as_str().unwrap_or_default();
            assert!(
                health.contains("up") && health.contains(" ok"),
                "{service}/{web} health: {health:?}"
            );
        }
    }
    assert!(
        rows.iter()
            .any(|r| r["service"] == "db" && r["backend"] == "db1"),
        "no db/db1 row: {rows:?}"
    );
}

/// New flows per backend of service `service` as the data path counted them.
fn flows_by_backend(lab: &Lab, service: &str) -> (u64, u64) {
    let list = lb_json(lab, &["backends", service]);
    let flows = |name: &str| {
        list[0]["backends"]
            .as_array()
            .and_then(|all| all.iter().find(|b| b["name"] == name))
            .and_then(|b| b["new_flows"].as_u64())
            .unwrap_or(0)
    };
    (flows("web1"), flows("web2"))
}

fn the_chart_grows_and_its_rates_add_up_to_the_counted_flows(browser: &Browser, lab: &Lab) {
    const CHART: &str = "
        const series = (id) => Object.fromEntries([...document.getElementById(id).querySelectorAll('path[data-backend]')]
            .map(p => [p.dataset.backend, { points: Number(p.dataset.points), max: Number(p.dataset.max) }]));
        const integral = {};
        for (const sample of window.lbDashboard.state.samples) {
            for (const r of sample.rates.values()) {
                if (r.service === 'web-dsr' && r.fps !== null) integral[r.backend] = (integral[r.backend] || 0) + r.fps * sample.seconds;
            }
        }
        return { samples: Number(document.getElementById('chart-packets').dataset.samples),
                 packets: series('chart-packets'), flows: series('chart-flows'), integral };";
    let before = run(browser, CHART, &[]);
    let counted_before = flows_by_backend(lab, "web-dsr");

    // One new connection per request; status codes counted (lb-web's /healthz has no newline).
    let script = format!(
        "for i in $(seq {REQUESTS}); do curl -s -m 3 -o /dev/null -w '%{{http_code}}\\n' http://{}/healthz || echo FAILED; done",
        addr::VIP_HTTP
    );
    let out = lab
        .exec_stdout(host::CLIENT, &["sh", "-c", &script])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ok = out.lines().filter(|l| l.trim() == "200").count();
    assert_eq!(ok, REQUESTS, "answers through the VIP:\n{out}");
    wait_for_polls(browser, 2);
    let after = run(browser, CHART, &[]);
    let counted_after = flows_by_backend(lab, "web-dsr");
    println!("chart before the traffic: {before}\nchart after: {after}");

    assert!(
        after["samples"].as_u64() > before["samples"].as_u64(),
        "the chart did not grow: {before} -> {after}"
    );
    for web in ["web1", "web2"] {
        let points = |v: &Value| v["packets"][web]["points"].as_u64().unwrap_or(0);
        assert!(
            points(&after) > points(&before),
            "{web}'s line did not grow: {before} -> {after}"
        );
        assert!(
            after["packets"][web]["max"].as_f64().unwrap_or(0.0) > 0.0,
            "{web}: no packet rate charted: {after}"
        );
        assert!(
            after["flows"][web]["max"].as_f64().unwrap_or(0.0) > 0.0,
            "{web}: no new-flow rate charted: {after}"
        );
    }
    // Rate x interval over every sample is the page's own count of new flows: it must match the
    // data path's counters exactly (nothing else reaches the VIP meanwhile).
    let counted = [
        (counted_after.0 - counted_before.0) as f64,
        (counted_after.1 - counted_before.1) as f64,
    ];
    assert_eq!(
        counted[0] + counted[1],
        REQUESTS as f64,
        "{counted_before:?} -> {counted_after:?}"
    );
    for (web, counted) in [("web1", counted[0]), ("web2", counted[1])] {
        let charted = after["integral"][web].as_f64().unwrap_or(-1.0);
        assert!((charted - counted).abs() < 0.01, "{web}: the page's rates add up to {charted} new flows, the data path counted {counted}");
    }
}

fn firewall_drops_are_shown_by_reason(browser: &Browser, lab: &Lab) {
    // TCP to a closed port of the load balancer itself: dropped by the host policy.
    let (status, _) = curl(
        lab,
        host::CLIENT,
        &["-m", "1"],
        &format!("http://{}:12345/", addr::LB),
    );
    assert_eq!(
        status, 0,
        "the host policy let a connection to a closed port through"
    );
    wait_for_polls(browser, 2);
    let firewall = lb_json(lab, &["fw", "list"]);
    let counted = firewall["drops"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["verdict"] == "drop_host_policy"))
        .and_then(|d| d["packets"].as_u64())
        .unwrap_or_else(|| panic!("no drop_host_policy in {firewall}"));
    let shown = run(
        browser,
        "const row = document.querySelector('#drops tr[data-reason=\"drop_host_policy\"]');
         return row ? row.cells[1].textContent : null;",
        &[],
    );
    let shown: u64 = shown
        .as_str()
        .map(|t| t.replace(',', ""))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("drops panel: {shown}"));
    assert!(
        shown >= 1 && shown <= counted,
        "drop_host_policy: page {shown}, API {counted}"
    );
    let reasons = run(
        browser,
        "return document.querySelectorAll('#drops [data-reason]').length;",
        &[],
    );
    assert_eq!(
        reasons.as_u64(),
        firewall["drops"].as_array().map(|d| d.len() as u64),
        "every drop reason is shown (a row, or in the line of reasons with no drop yet)"
    );
}

fn the_database_panel_renders_roles(browser: &Browser, lab: &Lab) {
    // The shape `GET /api/v1/status` gives when the agent manages a database.
    let database = json!({
        "primary": "db2", "failovers": 1,
        "last_failover": { "from": "db1", "to": "db2", "at_unix": 1_764_270_000, "duration_ms": 1830 },
        "nodes": [
            { "name": "db1", "address": "10.99.0.21:3306", "role": "fenced", "reachable": false, "read_only": null,
              "lag_s": null, "gtid": null, "error": "connection refused" },
            { "name": "db2", "address": "10.99.0.22:3306", "role": "primary", "reachable": true, "read_only": false,
              "lag_s": 0, "gtid": "0-2-17", "error": null }
        ]
    });
    let rendered = run(
        browser,
        "const panel = document.getElementById('database');
         window.lbDashboard.renderDatabase(arguments[0]);
         const summary = panel.querySelector('#database-summary');
         const out = { primary: summary ? summary.dataset.primary : null, text: panel.textContent,
                       roles: Object.fromEntries([...panel.querySelectorAll('tr[data-node]')].map(r => [r.dataset.node, r.dataset.role])) };
         window.lbDashboard.renderDatabase(null);
         out.none = panel.textContent;
         return out;",
        &[database],
    );
    assert_eq!(rendered["primary"], "db2", "{rendered}");
    assert_eq!(
        rendered["roles"],
        json!({ "db1": "fenced", "db2": "primary" }),
        "{rendered}"
    );
    let text = rendered["text"].as_str().unwrap_or_default();
    for needle in [
        "db1 → db2",
        "1.83 s",
        "connection refused",
        "0-2-17",
        "10.99.0.22:3306",
    ] {
        assert!(
            text.contains(needle),
            "the database panel lacks {needle:?}: {text}"
        );
    }
    assert_eq!(rendered["none"], "no database configured");

    // The live panel follows the agent's status, whether it manages a database or not.
    let status = lb_json(lab, &["status"]);
    let script = match status.get("database") {
        None | Some(Value::Null) => panic!("the full stack's agent reports no database: {status}"),
        Some(db) => format!(
            "const s = document.getElementById('database-summary'); return !!s && s.dataset.primary === {};",
            json!(db["primary"].as_str().unwrap_or(""))
        ),
    };
    browser
        .wait_for("the live database panel", &script, PAGE_WAIT)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A longer mix of traffic (HTTP, HTTPS, NAT, notes through the database VIPs, a few host-policy
/// drops) at a changing pace, then a PNG of the page while it still flows.
fn take_screenshot(browser: &Browser, lab: &Lab, path: &Path) {
    let vip = addr::VIP_HTTP;
    let nat = stack::NAT_PORT;
    let ca = stack::app_dir(lab).join("certs").join("ca.pem");
    let script = format!(
        "end=$(( $(date +%s) + 75 )); i=0
         while [ $(date +%s) -lt $end ] && [ $i -lt 20000 ]; do
           i=$((i+1))
           curl -s -m 2 -o /dev/null http://{vip}/
           [ $((i % 2)) -eq 0 ] && curl -s -m 2 -o /dev/null http://{vip}:{nat}/healthz
           [ $((i % 3)) -eq 0 ] && curl -s -m 2 -o /dev/null --cacert {ca} https://{vip}/healthz
           [ $((i % 10)) -eq 0 ] && curl -s -m 2 -o /dev/null -X POST -H 'content-type: application/json' -d '{{\"text\":\"dashboard\"}}' http://{vip}/api/notes
           [ $((i % 40)) -eq 0 ] && curl -s -m 1 -o /dev/null http://{lb}:12345/
           [ $(( ($(date +%s) / 15) % 2 )) -eq 0 ] && sleep 0.05
         done",
        ca = ca.display(),
        lb = addr::LB,
    );
    let traffic = lab
        .spawn(host::CLIENT, &["sh", "-c", &script], "dashboard-traffic")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(70) && lab.is_running(traffic) {
        std::thread::sleep(Duration::from_secs(1));
    }
    wait_for_polls(browser, 1);
    let png = browser.screenshot_png().unwrap_or_else(|e| panic!("{e:#}"));
    let _ = lab.stop(traffic);
    std::fs::write(path, &png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!(
        "dashboard screenshot: {} ({} bytes)",
        path.display(),
        png.len()
    );
}
