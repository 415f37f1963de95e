//! Config files the lab writes for other programs (nginx, HAProxy, lb-web), kept as template
//! files under `xtask/templates/` and filled by replacing `{{name}}` placeholders.
//!
//! No template engine: a placeholder is replaced by its value as is, and [`fill`] refuses a
//! value without a placeholder and a placeholder left unfilled, so a renamed key in a template
//! or in its renderer fails loudly instead of writing `{{name}}` into a config.
use std::path::Path;

use anyhow::{bail, Result};

const NGINX_WEB: &str = include_str!("../templates/nginx-web.conf");
const NGINX_PROXY: &str = include_str!("../templates/nginx-proxy.conf");
const HAPROXY: &str = include_str!("../templates/haproxy.cfg");
const LB_WEB: &str = include_str!("../templates/lb-web.toml");

/// `template` (named `name` in errors) with every `{{key}}` of `values` replaced by its value.
/// Errors: a key with no placeholder in the template, or any `{{...}}` left after filling.
pub fn fill(name: &str, template: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = template.to_string();
    for (key, value) in values {
        let placeholder = format!("{{{{{key}}}}}");
        if !out.contains(&placeholder) {
            bail!("template {name}: no placeholder {placeholder} for the value given");
        }
        out = out.replace(&placeholder, value);
    }
    let left = placeholders(&out);
    if !left.is_empty() {
        bail!(
            "template {name}: placeholder(s) left unfilled: {}",
            left.join(", ")
        );
    }
    Ok(out)
}

/// Every `{{...}}` in `text`, in order.
fn placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start..];
        let end = after.find("}}").map_or(after.len(), |e| e + 2);
        found.push(after[..end].to_string());
        rest = &after[end..];
    }
    found
}

/// nginx on a lab web host: one worker answering every request with the host's name; pid, logs
/// and temporary files under `dir`.
pub fn nginx_web(dir: &Path, web: &str) -> Result<String> {
    let dir = dir.display().to_string();
    fill("nginx-web.conf", NGINX_WEB, &[("dir", &dir), ("web", web)])
}

/// nginx as a round-robin reverse proxy on `lb:port` over `web1` and `web2` (port 80).
pub fn nginx_proxy(dir: &Path, lb: &str, port: u16, web1: &str, web2: &str) -> Result<String> {
    let dir = dir.display().to_string();
    let port = port.to_string();
    fill(
        "nginx-proxy.conf",
        NGINX_PROXY,
        &[
            ("dir", &dir),
            ("lb", lb),
            ("port", &port),
            ("web1", web1),
            ("web2", web2),
        ],
    )
}

/// HAProxy in HTTP mode on `lb:port`, round robin over `web1` and `web2` (port 80).
pub fn haproxy(pidfile: &Path, lb: &str, port: u16, web1: &str, web2: &str) -> Result<String> {
    let pidfile = pidfile.display().to_string();
    let port = port.to_string();
    fill(
        "haproxy.cfg",
        HAPROXY,
        &[
            ("pidfile", &pidfile),
            ("lb", lb),
            ("port", &port),
            ("web1", web1),
            ("web2", web2),
        ],
    )
}

/// What differs between the lab's lb-web configs.
#[derive(Debug, Clone)]
pub struct LbWeb<'a> {
    /// The host's name (`server_name`).
    pub web: &'a str,
    pub static_dir: &'a Path,
    pub access_log: &'a Path,
    pub redirect_to_https: bool,
    pub https_port: u16,
    /// Holds `server.pem` and `server-key.pem`.
    pub certs: &'a Path,
    /// `host:port` of the database's write and read addresses.
    pub db_write: &'a str,
    pub db_read: &'a str,
    pub db_user: &'a str,
    pub db_password: &'a str,
    pub db_name: &'a str,
}

/// The config file of `lb-web` on a lab web host.
pub fn lb_web(c: &LbWeb) -> Result<String> {
    let static_dir = c.static_dir.display().to_string();
    let access_log = c.access_log.display().to_string();
    let certs = c.certs.display().to_string();
    let redirect = c.redirect_to_https.to_string();
    let https_port = c.https_port.to_string();
    fill(
        "lb-web.toml",
        LB_WEB,
        &[
            ("web", c.web),
            ("static_dir", &static_dir),
            ("access_log", &access_log),
            ("redirect_to_https", &redirect),
            ("https_port", &https_port),
            ("certs", &certs),
            ("db_write", c.db_write),
            ("db_read", c.db_read),
            ("db_user", c.db_user),
            ("db_password", c.db_password),
            ("db_name", c.db_name),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_every_occurrence() {
        let out = fill("t", "a {{x}} b {{x}} {{y}}", &[("x", "1"), ("y", "2")]).expect("renders");
        assert_eq!(out, "a 1 b 1 2");
    }

    #[test]
    fn fill_names_a_placeholder_left_unfilled() {
        let err = fill("t", "a {{x}} {{y}} {{z", &[("x", "1")]).expect_err("an error");
        let text = err.to_string();
        assert!(text.contains("template t"), "{text}");
        assert!(text.contains("{{y}}, {{z"), "{text}");
    }

    #[test]
    fn fill_refuses_a_value_without_placeholder() {
        let err = fill("t", "a {{x}}", &[("x", "1"), ("typo", "2")]).expect_err("an error");
        assert!(err.to_string().contains("{{typo}}"), "{err}");
    }

    /// Every template's placeholders, so that a renderer test can check it fills them all.
    fn template_keys(template: &str) -> Vec<String> {
        let mut keys = placeholders(template);
        keys.sort();
        keys.dedup();
        keys
    }

    #[test]
    fn nginx_web_fills_everything() {
        let out = nginx_web(Path::new("/run/lab/nginx-web1"), "web1").expect("renders");
        assert_eq!(template_keys(NGINX_WEB), ["{{dir}}", "{{web}}"]);
        assert!(out.contains("pid /run/lab/nginx-web1/nginx.pid;\n"));
        assert!(out.contains("scgi_temp_path /run/lab/nginx-web1;\n"));
        assert!(out.contains("location / { return 200 \"web1\\n\"; }"));
        assert!(out.contains("listen 80; listen [::]:80;"));
    }

    #[test]
    fn nginx_proxy_fills_everything() {
        let out = nginx_proxy(
            Path::new("/d"),
            "10.99.0.2",
            8002,
            "10.99.0.11",
            "10.99.0.12",
        )
        .expect("renders");
        assert!(
            out.contains("worker_processes auto;\npid /d/nginx.pid;\nerror_log /d/error.log;\n")
        );
        assert!(out.contains(
            "upstream webs { server 10.99.0.11:80; server 10.99.0.12:80; keepalive 64; }"
        ));
        assert!(
            out.contains("server { listen 10.99.0.2:8002; location / { proxy_pass http://webs;")
        );
        assert!(out.contains("proxy_set_header Connection \"\"; } }\n}\n"));
    }

    #[test]
    fn haproxy_fills_everything() {
        let out = haproxy(
            Path::new("/d/haproxy.pid"),
            "10.99.0.2",
            8001,
            "10.99.0.11",
            "10.99.0.12",
        )
        .expect("renders");
        assert!(out.contains("  pidfile /d/haproxy.pid\n"));
        assert!(out.contains("frontend web\n  bind 10.99.0.2:8001\n  default_backend webs\n"));
        assert!(out.contains(
            "backend webs\n  balance roundrobin\n  server web1 10.99.0.11:80\n  server web2 10.99.0.12:80\n"
        ));
        assert!(out.contains("defaults\n  mode http\n  timeout connect 5s\n"));
    }

    #[test]
    fn lb_web_fills_everything() {
        let out = lb_web(&LbWeb {
            web: "web2",
            static_dir: Path::new("/app/static"),
            access_log: Path::new("/logs/web2.log"),
            redirect_to_https: true,
            https_port: 443,
            certs: Path::new("/app/certs"),
            db_write: "10.99.0.101:3306",
            db_read: "10.99.0.102:3306",
            db_user: "user",
            db_password: "secret",
            db_name: "notes",
        })
        .expect("renders");
        for line in [
            "server_name = \"web2\"",
            "static_dir = \"/app/static\"",
            "access_log = \"/logs/web2.log\"",
            "[http]\nlisten = [\"[::]:80\"]\nredirect_to_https = true\n",
            "[https]\nlisten = [\"[::]:443\"]\ncert = \"/app/certs/server.pem\"\nkey = \"/app/certs/server-key.pem\"\n",
            "write = \"10.99.0.101:3306\"\nread = \"10.99.0.102:3306\"\nuser = \"user\"\npassword = \"secret\"\nname = \"notes\"\n",
            "nodes = { db1 = 1, db2 = 2 }",
        ] {
            assert!(out.contains(line), "no {line:?} in:\n{out}");
        }
    }
}
