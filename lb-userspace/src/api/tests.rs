//! The API's access rules (Host check, token, limits) on a router in memory and over loopback,
//! and its wire forms.
use std::path::Path;

use axum::body::Body;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tower::ServiceExt as _;

use super::*;
use crate::db;
use lb_common::maps::FlowKey;

const TOKEN: &str = "a-test-token-of-32-characters-ok";

/// `[api]` from `keys`, through the config's own parser and validator.
#[track_caller]
fn api_config(keys: &str) -> ApiConfig {
    let text = format!(
        "[api]\n{keys}\n[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"dsr\"\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\n"
    );
    crate::config::parse(Path::new("lb.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .api
}

/// The API's stack without the agent: the real middleware, `/healthz`, the dashboard and
/// the JSON fallbacks (every data route needs the agent's maps).
fn app(api: &ApiConfig) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .merge(ui::routes());
    let token: access::TokenSource = Arc::new(|| Some(TOKEN.to_string()));
    guarded(with_fallbacks(routes), Access::new(api, token))
}

async fn call(app: &Router, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut request = axum::http::Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let response = app
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn foreign_hosts_are_refused_with_a_json_error() {
    let app = app(&api_config(""));
    let (status, _) = call(&app, "/ui", &[("host", "127.0.0.1:9876")]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&app, "/ui", &[("host", "rebound.attacker.example")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let body: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(body["error"]["code"], "host_not_allowed");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let (status, _) = call(&app, "/healthz", &[("host", "anything.example")]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_exposed_api_wants_the_token_for_reads_but_not_for_healthz() {
    let api = api_config(
        "bind = \"0.0.0.0:9876\"\ntoken_file = \"/t\"\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\nallowed_hosts = [\"lb.example\"]"
    );
    let app = app(&api);
    let host = ("host", "lb.example:9876");
    let (status, body) = call(&app, "/ui", &[host]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("\"unauthorized\""), "{body}");
    let bearer = format!("Bearer {TOKEN}");
    let (status, _) = call(&app, "/ui", &[host, ("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, "/ui", &[host, ("authorization", "Bearer nope")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, "/healthz", &[host]).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn the_api_connection_limit_leaves_descriptors_to_health_checks() {
    let api = api_config("max_connections = 128");
    assert!(limits(&api, 1024, 100).is_ok());
    let error = limits(&api, 1024, 400).err().map(|e| e.to_string());
    assert!(
        error.as_deref().is_some_and(|e| e.contains("1186 in all")),
        "{error:?}"
    );
}

/// Over a real socket, as `lb run` serves: half-sent requests (ten times the connection
/// limit) neither keep a new client from the API nor outlive the header timeout.
#[tokio::test]
async fn half_sent_requests_are_closed_and_do_not_lock_clients_out() {
    let api = api_config("max_connections = 16\nheader_read_timeout_ms = 300");
    let limits = limits(&api, 20_000, 2).unwrap_or_else(|e| panic!("{e:#}"));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(lb_serve::serve(listener, app(&api), limits, None));

    let mut held = Vec::new();
    for _ in 0..160 {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = stream
            .write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: localhost\r\n")
            .await;
        held.push(stream);
    }
    let opened = std::time::Instant::now();
    for (path, expect) in [("/healthz", "200 OK"), ("/ui", "200 OK"), ("/nope", "404")] {
        let mut client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost:9876\r\nConnection: close\r\n\r\n");
        client
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer while half-sent requests were held"))
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expect}")),
            "{path}: {answer}"
        );
    }
    let mut buf = [0u8; 256];
    for stream in &mut held {
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            while let Ok(1..) = stream.read(&mut buf).await {}
        })
        .await;
        assert!(closed.is_ok(), "a half-sent request was open after 3 s");
    }
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "the last half-sent requests were closed after {took:?}, not at the 300 ms header timeout"
    );
}

#[test]
fn cursors_round_trip_and_garbage_is_refused() {
    let key = FlowKey {
        src: [1, 2, 3, 4],
        dst: [5, 6, 7, 8],
        src_port: 40000u16.to_be(),
        dst_port: 80u16.to_be(),
        proto: PROTO_TCP,
        family: lb_common::maps::FAMILY_V6,
        _pad: [0; 2],
    };
    assert_eq!(decode_cursor(&encode_cursor(&key)), Some(key));
    for bad in ["", "zz", &"0".repeat(76), &"é".repeat(38), &"0".repeat(80)] {
        assert_eq!(decode_cursor(bad), None, "{bad}");
    }
}

#[test]
fn database_roles_keep_their_names_on_the_wire() {
    let roles = [
        db::Role::Primary,
        db::Role::Replica,
        db::Role::Lagging,
        db::Role::Standby,
        db::Role::Fenced,
        db::Role::Diverged,
        db::Role::Down,
        db::Role::Unknown,
    ];
    for role in roles {
        let status = db::DatabaseStatus {
            write_service: "db-write".into(),
            read_service: None,
            policy: db::Policy::Safe,
            primary: None,
            write: None,
            read: Vec::new(),
            blocked: None,
            memory_error: None,
            failovers: 0,
            last_failover: None,
            nodes: vec![db::NodeStatus {
                name: "db1".into(),
                address: "10.0.0.21:3306".into(),
                role,
                reachable: true,
                read_only: None,
                lag_s: None,
                gtid: None,
                semi_sync: None,
                replicating_from: None,
                error: None,
            }],
        };
        let wire = serde_json::to_value(database_status(&status).nodes[0].role).ok();
        assert_eq!(wire, serde_json::to_value(role).ok(), "{role:?}");
    }
}
