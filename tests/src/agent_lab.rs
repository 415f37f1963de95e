//! Driving a running agent in a lab: the `lb` CLI and curl inside the lab's namespaces, and
//! the HTTP answers seen through the VIP.
use std::{
    collections::HashMap,
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use xtask::{
    lab::{host, Lab},
    stack,
};

/// `lb ARGS` on the lb host (where the agent's API listens on loopback).
#[track_caller]
pub fn lb(lab: &Lab, args: &[&str]) -> Output {
    let binary = stack::release_binary("lb").unwrap_or_else(|e| panic!("{e:#}"));
    let mut command = vec![binary.display().to_string()];
    command.extend(args.iter().map(|a| a.to_string()));
    lab.exec_unchecked(host::LB, &command)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// stdout of `lb ARGS`, which must succeed.
#[track_caller]
pub fn lb_ok(lab: &Lab, args: &[&str]) -> String {
    let out = lb(lab, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lb {args:?} failed:\n{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// stderr of `lb ARGS`, which must fail.
#[track_caller]
pub fn lb_err(lab: &Lab, args: &[&str]) -> String {
    let out = lb(lab, args);
    assert!(
        !out.status.success(),
        "lb {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `lb ARGS --json`, parsed.
#[track_caller]
pub fn lb_json(lab: &Lab, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = lb_ok(lab, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lb {args:?}: not JSON ({e}):\n{text}"))
}

/// One HTTP request with curl on `on` host: (status, body). `extra` are curl arguments.
#[track_caller]
pub fn curl(lab: &Lab, on: &str, extra: &[&str], url: &str) -> (u16, String) {
    let mut args = vec!["curl", "-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = lab
        .exec_unchecked(on, &args)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `count` sequential HTTP requests from the client, each on a new connection; answers by body.
#[track_caller]
pub fn answers(lab: &Lab, url: &str, count: usize) -> HashMap<String, usize> {
    let script = format!("for i in $(seq {count}); do curl -s -m 3 {url} || echo FAILED; done");
    let out = lab
        .exec_stdout(host::CLIENT, &["sh", "-c", &script])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut answers = HashMap::new();
    for line in out.lines() {
        *answers.entry(line.trim().to_string()).or_default() += 1;
    }
    answers
}

/// A backend's entry in `lb backends SERVICE --json`.
#[track_caller]
pub fn backend(lab: &Lab, service: &str, backend: &str) -> Value {
    let lists = lb_json(lab, &["backends", service]);
    lists[0]["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == backend))
        .cloned()
        .unwrap_or_else(|| panic!("no backend {backend} in {lists}"))
}

/// Polls the API until the backend's data-path state is `state`; the time it took.
pub fn wait_for_state(
    lab: &Lab,
    service: &str,
    name: &str,
    state: &str,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if backend(lab, service, name)["state"] == state {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
