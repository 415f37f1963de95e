//! Headless Chromium inside a lab namespace, driven over WebDriver: chromedriver runs in the
//! namespace and the test sends it a handful of W3C WebDriver commands over HTTP/1.1 (hyper's
//! client, [`xtask::http`]), on connections opened inside that namespace (no WebDriver client
//! library needed).
use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use xtask::lab::Lab;

use crate::netns;

/// chromedriver's port inside the namespace (its default; the namespace is the lab's own).
const DRIVER_PORT: u16 = 9515;
/// Longest a single WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Debian puts the browser and its driver (`cargo xtask setup` installs both).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser session; dropping it closes the browser and stops the driver.
pub struct Browser<'lab> {
    lab: &'lab Lab,
    ns: String,
    driver_pid: u32,
    session: String,
    profile: PathBuf,
}

/// An HTTP answer: status, headers, body.
pub use xtask::http::Response as HttpResponse;

/// One HTTP/1.1 request on `stream` with `Connection: close`; reads the whole answer (by its
/// framing: chromedriver says `Connection: close` but keeps the socket open).
pub fn http_request(
    stream: TcpStream,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<HttpResponse> {
    let request = xtask::http::close(xtask::http::json(method, host, path, body)?);
    xtask::http::send(&stream, request, COMMAND_TIMEOUT)
        .with_context(|| format!("the answer to {method} {path}"))
}

/// True when both the browser and its driver are installed.
pub fn available() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

impl<'lab> Browser<'lab> {
    /// Starts chromedriver on `host` of `lab` and opens a headless Chromium session with a
    /// fresh profile and a `width` x `height` viewport (the page's visible area).
    pub fn start(lab: &'lab Lab, host: &str, (width, height): (u32, u32)) -> Result<Browser<'lab>> {
        if !available() {
            bail!("{CHROMIUM} or {CHROMEDRIVER} is missing: `cargo xtask setup` installs Debian's chromium and chromium-driver");
        }
        let ns = lab.ns(host);
        let profile = lab
            .dir()
            .join(format!("chromium-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile)?;
        let driver_pid = lab.spawn(
            host,
            &[CHROMEDRIVER.to_string(), format!("--port={DRIVER_PORT}")],
            "chromedriver",
        )?;
        let mut browser = Browser {
            lab,
            ns,
            driver_pid,
            session: String::new(),
            profile,
        };
        let ready =
            xtask::util::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                browser
                    .command("GET", "/status", None)
                    .is_ok_and(|v| v["ready"] == true)
            });
        if !ready {
            bail!(
                "chromedriver did not become ready:\n{}",
                lab.read_log("chromedriver")
            );
        }
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", browser.profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        } } });
        let created = browser
            .command("POST", "/session", Some(&capabilities))
            .context("starting Chromium through chromedriver")?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no sessionId in the new session")?
            .to_string();
        browser.set_viewport(width, height)?;
        Ok(browser)
    }

    /// The window includes room for browser controls even when headless: grow it by the
    /// difference so the page itself gets `width` x `height`.
    fn set_viewport(&self, width: u32, height: u32) -> Result<()> {
        let inner = self.execute("return [window.innerWidth, window.innerHeight];", &[])?;
        let (Some(inner_width), Some(inner_height)) = (inner[0].as_u64(), inner[1].as_u64()) else {
            bail!("the page's size is not two numbers: {inner}");
        };
        let rect = json!({
            "width": 2 * u64::from(width) - inner_width.min(u64::from(width)),
            "height": 2 * u64::from(height) - inner_height.min(u64::from(height)),
        });
        self.command("POST", &self.session_path("/window/rect"), Some(&rect))?;
        Ok(())
    }

    /// One WebDriver command: its `value`, or the driver's error.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], DRIVER_PORT));
        let stream = netns::connect_in(&self.ns, addr, COMMAND_TIMEOUT)
            .with_context(|| format!("connecting to chromedriver in {}", self.ns))?;
        let response = http_request(
            stream,
            method,
            &format!("127.0.0.1:{DRIVER_PORT}"),
            path,
            body,
        )?;
        let json: Value = serde_json::from_slice(&response.body).with_context(|| {
            format!(
                "{method} {path}: HTTP {}, not JSON: {}",
                response.status,
                response.text()
            )
        })?;
        if response.status != 200 {
            bail!(
                "{method} {path}: HTTP {}: {} {}",
                response.status,
                json["value"]["error"],
                json["value"]["message"]
            );
        }
        Ok(json["value"].clone())
    }

    fn session_path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session)
    }

    /// Loads `url` and waits for the page's load event.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.command(
            "POST",
            &self.session_path("/url"),
            Some(&json!({ "url": url })),
        )
        .map(|_| ())
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page; its return value.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.command(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` every 100 ms until it returns something truthy (not false, null, 0 or "");
    /// that value, or an error naming `what` after `timeout`.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let value = self.execute(script, &[])?;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return Ok(value);
            }
            if start.elapsed() > timeout {
                bail!("waited {timeout:?} for {what}; last value {value}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot_png(&self) -> Result<Vec<u8>> {
        let value = self.command("GET", &self.session_path("/screenshot"), None)?;
        let text = value.as_str().context("the screenshot is not a string")?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("the screenshot is not base64")
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            if let Err(e) = self.command("DELETE", &self.session_path(""), None) {
                eprintln!("browser: closing the session: {e:#}");
            }
        }
        let _ = self.lab.stop(self.driver_pid);
        // A browser the driver failed to close: find it by its own profile directory, by pid.
        for pid in processes_mentioning(&self.profile.display().to_string()) {
            xtask::util::signal(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Pids whose command line contains `needle` (our browser's unique profile path).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}
