//! The fuzzers: packets against the reference model, the API with schemathesis, the config parser with cargo-fuzz.
use super::*;

/// `lb-fuzz`: random and mutated packets through BPF_PROG_TEST_RUN against the reference
/// model. It writes the `packet_fuzz` key itself; this reads it back.
pub(super) fn packet_fuzz(suite: &mut Suite) -> Result<Finding> {
    let packets = suite.sizes.packets;
    // A stale key from an earlier run must not stand in for this one.
    merge_results(
        &suite.results,
        "packet_fuzz",
        Value::Null,
        json!({ "reason": "running" }),
    )?;
    // Built by the `cargo build --release` above (lb-tests is a default member).
    let mut cmd = Command::new(stack::release_binary("lb-fuzz")?);
    cmd.current_dir(util::workspace_root())
        .args([
            "--packets",
            &packets.to_string(),
            "--seed",
            &suite.seed.to_string(),
            "--results",
        ])
        .arg(&suite.results);
    let outcome = util::run(&mut cmd);
    let text = std::fs::read_to_string(&suite.results)?;
    let results: Value = serde_json::from_str(&text)?;
    let value = results["packet_fuzz"].clone();
    if value.is_null() {
        bail!(
            "lb-fuzz wrote no packet_fuzz key: {}",
            outcome
                .err()
                .map_or("it exited 0".into(), |e| format!("{e:#}"))
        );
    }
    let count = |key: &str| value[key].as_u64().unwrap_or(u64::MAX);
    let (ran, aborted, mismatches) = (
        count("packets"),
        count("aborted"),
        count("model_mismatches"),
    );
    let pass = outcome.is_ok() && ran >= packets && aborted == 0 && mismatches == 0;
    let bar = if packets >= PACKETS_BAR {
        String::new()
    } else {
        format!(" (quick: the full run's bar is {PACKETS_BAR})")
    };
    Ok(Finding {
        value,
        detail: json!({ "seed": suite.seed, "command": util::cmd_line(&cmd) }),
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!("{ran} packets{bar}, aborted {aborted} (bar 0), model mismatches {mismatches} (bar 0), seed {}", suite.seed),
    })
}

/// schemathesis against the running agent's OpenAPI document: first without a token and with
/// a wrong one (every write must be refused and change nothing), then with the token (no 5xx).
pub(super) fn api_fuzz(suite: &mut Suite) -> Result<Finding> {
    let schemathesis = setup::working_schemathesis().with_context(|| {
        format!(
            "schemathesis {} is not installed: run `cargo xtask setup`",
            setup::SCHEMATHESIS_VERSION
        )
    })?;
    let examples = suite.sizes.api_examples;
    let seed = suite.seed;
    let stack = suite.stack()?;
    // Outside the lab's directory, which goes with the lab: the logs and reports stay.
    let dir = util::target_dir().join("chaos").join("api-fuzz");
    std::fs::create_dir_all(&dir)?;

    let before = write_visible_state(stack)?;
    let no_token = run_schemathesis(stack, &schemathesis, &dir, "no-token", None, examples, seed)?;
    let wrong_token = run_schemathesis(
        stack,
        &schemathesis,
        &dir,
        "wrong-token",
        Some("not-the-token"),
        examples,
        seed,
    )?;
    let after = write_visible_state(stack)?;
    let state_changed = before != after;
    let token = stack.token.clone();
    let with_token = run_schemathesis(
        stack,
        &schemathesis,
        &dir,
        "token",
        Some(&token),
        examples,
        seed,
    )?;
    // The agent must have lived through it all.
    stack
        .api("/api/v1/status")
        .context("the agent after the API fuzzing")?;

    let unauthorized = [&no_token, &wrong_token];
    let writes_accepted: usize = unauthorized
        .iter()
        .map(|r| r.writes_accepted)
        .sum::<usize>()
        + usize::from(state_changed);
    let requests = no_token.requests + wrong_token.requests + with_token.requests;
    let server_errors =
        no_token.server_errors + wrong_token.server_errors + with_token.server_errors;
    let value = json!({ "requests": requests, "server_errors": server_errors, "unauthorized_writes_accepted": writes_accepted });
    let detail = json!({
        "runs": { "no_token": no_token.detail(), "wrong_token": wrong_token.detail(), "token": with_token.detail() },
        "state_changed_without_token": state_changed,
        "state_compared": { "services": before["services"].as_array().map_or(0, Vec::len), "rules": before["rules"].as_array().map_or(0, Vec::len) },
        "reports": dir.display().to_string(),
        "max_examples": examples,
        "seed": seed,
        "schemathesis": setup::SCHEMATHESIS_VERSION,
    });
    // Some writes with the token must succeed: else the token (and the "refused" above) proves nothing.
    let pass = requests > 0
        && server_errors == 0
        && writes_accepted == 0
        && with_token.writes_accepted > 0;
    Ok(Finding {
        value,
        detail,
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{requests} requests ({} writes with the token, {} accepted), 5xx {server_errors} (bar 0), unauthorized writes accepted {writes_accepted} (bar 0)",
            with_token.writes, with_token.writes_accepted
        ),
    })
}

/// What API writes could change, without counters: services, backends (weight, admin
/// state), firewall rules, reloads.
fn write_visible_state(stack: &Stack) -> Result<Value> {
    let services = stack.api("/api/v1/services")?;
    let mut state = Vec::new();
    for service in services
        .as_array()
        .or_else(|| services["services"].as_array())
        .cloned()
        .unwrap_or_default()
    {
        let name = service["name"].as_str().unwrap_or("").to_string();
        let list = stack.api(&format!("/api/v1/services/{name}/backends"))?;
        let backends: Vec<Value> = list["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| json!([b["name"], b["address"], b["port"], b["weight"], b["admin"]]))
            .collect();
        state.push(json!({ "service": name, "backends": backends }));
    }
    let rules = stack.api("/api/v1/firewall/rules")?;
    let rules: Vec<Value> = rules["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| json!([r["name"], r["action"], r["kind"]]))
        .collect();
    let status = stack.api("/api/v1/status")?;
    Ok(json!({ "services": state, "rules": rules, "reloads": status["reloads"] }))
}

/// One schemathesis run, counted from its HAR report.
struct ApiRun {
    requests: usize,
    server_errors: usize,
    /// Write requests (POST, PUT, PATCH, DELETE) and those answered 2xx.
    writes: usize,
    writes_accepted: usize,
    exit: String,
    /// Up to 5 requests answered 5xx, or writes accepted without the token.
    examples: Vec<String>,
    /// How the writes were answered: status -> count.
    write_statuses: std::collections::BTreeMap<u64, usize>,
}

impl ApiRun {
    fn detail(&self) -> Value {
        json!({
            "requests": self.requests, "server_errors": self.server_errors, "writes": self.writes,
            "writes_2xx": self.writes_accepted, "schemathesis_exit": self.exit, "examples": self.examples,
            "write_statuses": self.write_statuses,
        })
    }
}

fn run_schemathesis(
    stack: &Stack,
    bin: &Path,
    dir: &Path,
    name: &str,
    token: Option<&str>,
    examples: u32,
    seed: u64,
) -> Result<ApiRun> {
    let har = dir.join(format!("{name}.har"));
    let _ = std::fs::remove_file(&har);
    let mut args: Vec<String> = vec![
        bin.display().to_string(),
        "run".into(),
        format!("http://{API}/api/v1/openapi.json"),
        "--checks".into(),
        "not_a_server_error".into(),
        "--phases".into(),
        "examples,coverage,fuzzing".into(),
        "--max-examples".into(),
        examples.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--workers".into(),
        "1".into(),
        "--request-timeout".into(),
        "5".into(),
        "--report".into(),
        "har".into(),
        "--report-har-path".into(),
        har.display().to_string(),
        "--suppress-health-check".into(),
        "all".into(),
        "--no-color".into(),
    ];
    if let Some(token) = token {
        args.push("--header".into());
        args.push(format!("Authorization: Bearer {token}"));
    }
    // Its working directory gets its example database (.schemathesis/): keep it with the reports.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &stack.lab.ns(host::LB)])
        .args(&args)
        .current_dir(dir);
    let out = util::output_timeout(&mut cmd, Duration::from_secs(600))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        dir.join(format!("{name}.log")),
        format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let text = std::fs::read_to_string(&har).with_context(|| {
        format!(
            "schemathesis ({name}) wrote no report {}: {}",
            har.display(),
            tail(&stdout, 20)
        )
    })?;
    let har: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", har.display()))?;
    let entries = har["log"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut run = ApiRun {
        requests: entries.len(),
        server_errors: 0,
        writes: 0,
        writes_accepted: 0,
        exit: out.status.to_string(),
        examples: Vec::new(),
        write_statuses: Default::default(),
    };
    for entry in &entries {
        let method = entry["request"]["method"].as_str().unwrap_or("?");
        let url = entry["request"]["url"].as_str().unwrap_or("?");
        let status = entry["response"]["status"].as_u64().unwrap_or(0);
        let write = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE");
        let accepted = write && token != Some(stack.token.as_str()) && (200..300).contains(&status);
        run.writes += usize::from(write);
        if write {
            *run.write_statuses.entry(status).or_default() += 1;
        }
        run.writes_accepted += usize::from(write && (200..300).contains(&status));
        if status >= 500 || accepted {
            run.server_errors += usize::from(status >= 500);
            if run.examples.len() < 5 {
                run.examples.push(format!("{method} {url} -> {status}"));
            }
        }
    }
    Ok(run)
}

/// cargo-fuzz on the agent's config parser and validator (fuzz/fuzz_targets/config_parse.rs),
/// seeded with examples/*.toml, bounded in time; any crash (panic, overflow, timeout) fails.
pub(super) fn config_fuzz(suite: &mut Suite) -> Result<Finding> {
    if !setup::working_cargo_fuzz() {
        bail!(
            "cargo-fuzz {} is not installed: run `cargo xtask setup`",
            setup::CARGO_FUZZ_VERSION
        );
    }
    let seconds = suite.sizes.config_fuzz_seconds;
    let root = util::workspace_root();
    let fuzz_dir = root.join("fuzz");
    let corpus = util::target_dir().join("chaos").join("config-corpus");
    std::fs::create_dir_all(&corpus)?;
    let artifacts = fuzz_dir.join("artifacts").join("config_parse");
    let crashes_before = crash_files(&artifacts);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&fuzz_dir)
        .args(["+nightly", "fuzz", "run", "config_parse"])
        .arg(&corpus)
        .arg(root.join("examples"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // A single input taking seconds is a hang: bounded time is part of the bar.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-seed={}", suite.seed % u64::from(u32::MAX)))
        .env_remove("RUSTUP_TOOLCHAIN");
    // Building the target the first time takes minutes; the run itself is bounded.
    let out = util::output_timeout(&mut cmd, Duration::from_secs(seconds + 1200))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::write(
        util::target_dir().join("chaos").join("config-fuzz.log"),
        &stderr,
    )?;
    let runs = stderr.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    });
    let new_crashes: Vec<String> = crash_files(&artifacts)
        .into_iter()
        .filter(|c| !crashes_before.contains(c))
        .collect();
    let Some(runs) = runs else {
        if new_crashes.is_empty() {
            bail!(
                "cargo fuzz did not finish a run ({}):\n{}",
                out.status,
                tail(&stderr, 30)
            );
        }
        let value = json!({ "runs": Value::Null, "crashes": new_crashes.len() });
        return Ok(Finding {
            value,
            detail: json!({ "crash_files": new_crashes, "log_tail": tail(&stderr, 40) }),
            mark: Mark::Fail,
            summary: format!(
                "{} crash(es), e.g. {} (see target/chaos/config-fuzz.log)",
                new_crashes.len(),
                new_crashes[0]
            ),
        });
    };
    let corpus_files = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
    let value = json!({ "runs": runs, "crashes": new_crashes.len(), "seconds": seconds });
    let pass = out.status.success() && new_crashes.is_empty() && runs > 0;
    Ok(Finding {
        value,
        detail: json!({ "corpus_files": corpus_files, "crash_files": new_crashes, "exit": out.status.to_string() }),
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{runs} inputs in {seconds} s, crashes {} (bar 0), corpus {corpus_files} files",
            new_crashes.len()
        ),
    })
}

/// Files libFuzzer leaves for a failing input (crash-, timeout-, oom-, leak-).
fn crash_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    ["crash-", "timeout-", "oom-", "leak-"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .collect()
        })
        .unwrap_or_default()
}
