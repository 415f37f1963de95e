//! `lb-web`, the app tier, over namespaces: MariaDB on db1, lb-web on web1 and web2 (the same
//! binary, files and certificate), curl on the client. Static files with ETag, 304, Range and
//! gzip; HTTPS with the lab CA, HTTP/2 by ALPN, the redirect; a note written on web1 and read
//! on web2, each answer naming its app server and database node; the combined access log.
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AppOptions},
};

/// One curl on the client: (status, response headers, body).
#[track_caller]
fn curl(lab: &Lab, extra: &[&str], url: &str) -> (u16, String, String) {
    let headers_file = lab.dir().join("curl-headers");
    let headers_arg = headers_file.display().to_string();
    let mut args = vec![
        "curl",
        "-s",
        "-m",
        "5",
        "-D",
        &headers_arg,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let out = lab
        .exec_unchecked(host::CLIENT, &args)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let headers = std::fs::read_to_string(&headers_file).unwrap_or_default();
    (code.trim().parse().unwrap_or(0), headers, body.to_string())
}

/// The value of header `name` (any case) in the last response of `headers`.
#[track_caller]
fn header(headers: &str, name: &str) -> String {
    let last = headers
        .rsplit("\r\n\r\n")
        .find(|block| !block.trim().is_empty())
        .unwrap_or("");
    last.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} header in:\n{headers}"))
}

#[test]
#[ignore = "needs root"]
fn lb_web_static_files_https_and_notes_across_both_servers() {
    let lab = Lab::up(LabSpec::standard("lbt-web1-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let mariadb = stack::start_mariadb(&lab, host::DB1).unwrap_or_else(|e| panic!("{e:#}"));
    stack::create_app_database(&lab, host::DB1).unwrap_or_else(|e| panic!("{e:#}"));
    // Straight at db1: the database VIPs and their failover are tested elsewhere.
    let db1 = format!("{}:3306", addr::DB1);
    let options = AppOptions {
        db_write: db1.clone(),
        db_read: db1,
        redirect_to_https: false,
    };
    let app = stack::start_app_servers(&lab, &options).unwrap_or_else(|e| panic!("{e:#}"));
    let ca = app.ca.display().to_string();
    let web1 = format!("http://{}", addr::WEB1);
    let web2 = format!("http://{}", addr::WEB2);

    // Static file: ETag + Last-Modified, then 304 for If-None-Match; the same tag on both servers.
    let (status, headers, body) = curl(&lab, &[], &format!("{web1}/index.html"));
    assert_eq!(status, 200, "{headers}{body}");
    assert!(body.contains("The lb lab"), "{body}");
    let etag = header(&headers, "etag");
    assert!(!header(&headers, "last-modified").is_empty());
    assert_eq!(header(&headers, "x-served-by"), "app=web1");
    let (status, headers, body) = curl(
        &lab,
        &["-H", &format!("If-None-Match: {etag}")],
        &format!("{web1}/index.html"),
    );
    assert_eq!((status, body.as_str()), (304, ""), "{headers}");
    let (_, headers, _) = curl(&lab, &[], &format!("{web2}/index.html"));
    assert_eq!(
        header(&headers, "etag"),
        etag,
        "web1 and web2 serve the same file"
    );
    assert_eq!(header(&headers, "x-served-by"), "app=web2");

    // Range.
    let (status, headers, body) = curl(&lab, &["-r", "6-10"], &format!("{web1}/lorem.txt"));
    assert_eq!((status, body.as_str()), (206, "ipsum"), "{headers}");
    assert!(
        header(&headers, "content-range").starts_with("bytes 6-10/"),
        "{headers}"
    );

    // Compression: gzip (curl decodes it with --compressed) and brotli negotiated.
    let (status, headers, body) = curl(
        &lab,
        &["--compressed", "-H", "Accept-Encoding: gzip"],
        &format!("{web1}/lorem.txt"),
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), "gzip");
    assert!(
        body.starts_with("Lorem ipsum") && body.len() > 10_000,
        "decoded body of {} bytes",
        body.len()
    );
    let (_, headers, _) = curl(
        &lab,
        &["-H", "Accept-Encoding: br"],
        &format!("{web1}/lorem.txt"),
    );
    assert_eq!(header(&headers, "content-encoding"), "br");

    // HTTPS with the lab CA: HTTP/2 by ALPN, HTTP/1.1 when asked; the VIP is in the certificate.
    for (web, address) in [(host::WEB1, addr::WEB1), (host::WEB2, addr::WEB2)] {
        let url = format!("https://{address}/healthz");
        let (status, headers, body) = curl(
            &lab,
            &[
                "--cacert",
                &ca,
                "--http2",
                "-w",
                " %{http_version}\n%{http_code}",
            ],
            &url,
        );
        assert_eq!(status, 200, "{web}: {headers}");
        assert_eq!(body, "ok 2", "{web}: HTTP/2 over TLS");
        let (_, _, body) = curl(
            &lab,
            &[
                "--cacert",
                &ca,
                "--http1.1",
                "-w",
                " %{http_version}\n%{http_code}",
            ],
            &url,
        );
        assert_eq!(body, "ok 1.1", "{web}: HTTP/1.1 over TLS");
    }
    let (status, _, _) = curl(&lab, &[], &format!("https://{}/", addr::WEB1));
    assert_eq!(
        status, 0,
        "curl without the lab CA must refuse the certificate"
    );
    let ca_text = std::fs::read_to_string(&app.ca).unwrap_or_default();
    assert!(ca_text.starts_with("-----BEGIN CERTIFICATE-----"));

    // A note written through web1, read back through web2; each says who served it.
    let (status, headers, body) = curl(
        &lab,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"text": "written on web1"}"#,
        ],
        &format!("{web1}/api/notes"),
    );
    assert_eq!(status, 201, "{headers}{body}");
    assert_eq!(header(&headers, "x-served-by"), "app=web1 db=db1");
    let written: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(written["note"]["created_by"], "web1", "{written}");
    assert_eq!(written["served_by"]["app"], "web1");
    assert_eq!(written["served_by"]["db"]["name"], "db1", "{written}");
    let id = written["note"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {written}"));
    let (status, headers, body) = curl(&lab, &[], &format!("{web2}/api/notes/{id}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-served-by"), "app=web2 db=db1");
    let read: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(read["note"]["text"], "written on web1");
    assert_eq!(read["served_by"]["app"], "web2");
    let (status, _, body) = curl(
        &lab,
        &["--cacert", &ca],
        &format!("https://{}/api/notes", addr::WEB2),
    );
    assert_eq!(status, 200);
    assert!(body.contains("written on web1"), "{body}");
    let (status, _, body) = curl(
        &lab,
        &["-X", "POST", "-d", "not json"],
        &format!("{web2}/api/notes"),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = curl(&lab, &[], &format!("{web2}/api/notes/999999"));
    assert_eq!(status, 404);

    // The access log: one combined-format line per request, client address first.
    let log = std::fs::read_to_string(stack::app_access_log(&lab, host::WEB1)).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("\"GET /index.html HTTP/1.1\" 200 "))
        .unwrap_or_else(|| panic!("no line for GET /index.html in:\n{log}"));
    assert!(
        line.starts_with(&format!("{} - - [", addr::CLIENT)),
        "{line}"
    );
    assert!(
        line.contains(" +0000] \"GET") && line.contains("\"-\" \"curl/"),
        "not the combined format: {line}"
    );
    assert!(log.contains("\"GET /healthz HTTP/2.0\" 200 2 "), "{log}");
    // Compressed answers are logged with the bytes sent, not the file's size.
    let gzip = log
        .lines()
        .find(|l| l.contains("\"GET /lorem.txt HTTP/1.1\" 200 "))
        .unwrap_or_else(|| panic!("{log}"));
    let sent: usize = gzip
        .split(' ')
        .nth(9)
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no byte count: {gzip}"));
    assert!(sent > 0 && sent < 2000, "{gzip}");

    // Database down: the API answers 503 with a JSON error, the server stays up.
    lab.stop(mariadb).unwrap_or_else(|e| panic!("{e:#}"));
    let (status, headers, body) = curl(&lab, &[], &format!("{web1}/api/notes"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "content-type"), "application/json");
    assert!(body.contains("database_unavailable"), "{body}");
    let (status, _, _) = curl(&lab, &[], &format!("{web1}/healthz"));
    assert_eq!(status, 200);

    // Redirect to HTTPS when enabled: the same host and path, and curl -L lands on the page.
    let (_, web1_pid) = app.pids[0].clone();
    lab.stop(web1_pid).unwrap_or_else(|e| panic!("{e:#}"));
    let options = AppOptions {
        redirect_to_https: true,
        ..options
    };
    stack::start_app_server(&lab, host::WEB1, &options).unwrap_or_else(|e| panic!("{e:#}"));
    let (status, headers, _) = curl(&lab, &[], &format!("{web1}/index.html?x=1"));
    assert_eq!(status, 308);
    assert_eq!(
        header(&headers, "location"),
        format!("https://{}/index.html?x=1", addr::WEB1)
    );
    let (status, _, body) = curl(
        &lab,
        &["-L", "--cacert", &ca],
        &format!("{web1}/index.html"),
    );
    assert_eq!(status, 200);
    assert!(body.contains("The lb lab"));

    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
