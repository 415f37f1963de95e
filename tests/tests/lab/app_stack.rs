//! The seed's whole web tier behind the load balancer: lb-web on web1 and web2 (HTTP and HTTPS)
//! behind the VIP, the notes API through the database VIPs to MariaDB, and the agent checking
//! the HTTPS servers with real TLS handshakes.
use std::time::Duration;

use lb_tests::agent_lab::{backend, curl};
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions, MYSQL_CHECK_PASSWORD, MYSQL_CHECK_USER},
};

#[test]
#[ignore = "needs root"]
fn the_app_tier_serves_through_the_vip_over_http_and_https() {
    let lab = Lab::up(LabSpec::standard("lbt-app-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    stack::start_mariadb(&lab, host::DB1).unwrap_or_else(|e| panic!("{e:#}"));
    let options = AgentOptions {
        web_health: Some("kind = \"http\"\npath = \"/healthz\"".into()),
        api_token: None,
        db_health: Some(format!("kind = \"mysql\"\nuser = \"{MYSQL_CHECK_USER}\"\npassword = \"{MYSQL_CHECK_PASSWORD}\"")),
        app_tier: true,
        database: false,
        firewall: false,
    };
    stack::start_with(&lab, &options).unwrap_or_else(|e| panic!("{e:#}"));

    // The HTTPS check: a real TLS handshake and GET /healthz against each lb-web.
    for web in ["web1", "web2"] {
        let mut state = backend(&lab, "web-https", web);
        for _ in 0..50 {
            if state["health"]["last_ok"] == true {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            state = backend(&lab, "web-https", web);
        }
        assert_eq!(state["health"]["last_ok"], true, "{web}: {state}");
        assert!(
            state["health"]["last_detail"]
                .as_str()
                .is_some_and(|r| r.contains("200")),
            "{web}: {state}"
        );
    }

    // A note written through the VIP over HTTP, read back over HTTPS; both app servers serve.
    let vip = addr::VIP_HTTP;
    let (status, body) = curl(
        &lab,
        host::CLIENT,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            "{\"text\":\"through the VIP\"}",
        ],
        &format!("http://{vip}/api/notes"),
    );
    assert_eq!(status, 201, "{body}");
    let ca = stack::app_dir(&lab)
        .join("certs")
        .join("ca.pem")
        .display()
        .to_string();
    let mut apps = std::collections::HashSet::new();
    for _ in 0..4 {
        let (status, body) = curl(
            &lab,
            host::CLIENT,
            &["--cacert", &ca],
            &format!("https://{vip}/api/notes"),
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("through the VIP"), "{body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        apps.insert(
            json["served_by"]["app"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        assert_eq!(json["served_by"]["db"]["name"], "db1", "{body}");
    }
    assert_eq!(apps.len(), 2, "round robin over HTTPS reached {apps:?}");
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
