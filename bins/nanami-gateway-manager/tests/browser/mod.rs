//! A small WebDriver client for driving Debian's headless Chromium from integration
//! tests: no dependencies beyond `serde_json` and `base64`, a blocking HTTP/1.1
//! client over `std::net::TcpStream` to talk to `chromedriver`.
//!
//! [`Browser::start`] runs `/usr/bin/chromedriver` (Debian package
//! `chromium-driver`) on a port it chose itself (`--port=0`; it prints the port it
//! bound) in a process group of its own, and opens one session of
//! `/usr/bin/chromium` (package `chromium`): headless, offline (no background
//! networking, updates, sync or QUIC), a fresh profile in a temporary directory,
//! and any certificate accepted (`acceptInsecureCerts` and
//! `--ignore-certificate-errors`) so the manager's private-CA HTTPS pages load.
//! Dropping the [`Browser`] ends the session, kills the process group (chromedriver
//! and every Chromium process) and removes the profile, also when a test panics.
//!
//! Every call is bounded: a WebDriver command that does not answer within
//! [`COMMAND_TIMEOUT`] fails the test instead of hanging it, and chromedriver is
//! told to give up page loads and scripts sooner ([`PAGE_TIMEOUT`]). WebDriver
//! errors panic with the command and chromedriver's message.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

/// chromedriver, from Debian's `chromium-driver` package.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Chromium, from Debian's `chromium` package.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The longest any one WebDriver command may take (connect, write, each read).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// chromedriver's page-load and script timeouts: shorter than [`COMMAND_TIMEOUT`],
/// so a page that never loads is reported as chromedriver's `timeout` error.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long chromedriver may take to start and report its port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The Chromium switches of every session: headless, no sandbox (tests run as
/// root), nothing fetched from the internet, shared memory in /tmp, and any
/// certificate accepted. [`Browser::start_with`] appends to these; the profile
/// directory (`--user-data-dir`) is added by [`Browser::start_with`].
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--ignore-certificate-errors",
    "--window-size=1280,900",
];

/// The WebDriver key of an element reference in a command's answer.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where tests write screenshots as artifacts: `$NANAMI_ARTIFACTS/screenshots` when
/// `NANAMI_ARTIFACTS` is set, else `screenshots` under Cargo's per-package
/// temporary directory (`CARGO_TARGET_TMPDIR`). Created if missing.
pub fn screenshot_dir() -> PathBuf {
    let dir = match std::env::var_os("NANAMI_ARTIFACTS") {
        Some(base) if !base.is_empty() => PathBuf::from(base).join("screenshots"),
        _ => Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"),
    };
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create screenshot dir {}: {e}", dir.display()));
    dir
}

/// One headless Chromium driven through its own chromedriver; see the module
/// documentation. Everything is torn down on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: PathBuf,
    /// chromedriver's stdout and stderr, for messages when something fails.
    output: Arc<Mutex<String>>,
}

impl Browser {
    /// Starts chromedriver and a Chromium session with [`CHROMIUM_ARGS`].
    ///
    /// Panics, naming the Debian packages, when chromedriver or Chromium is not
    /// installed, and with chromedriver's output when either fails to start.
    pub fn start() -> Browser {
        Browser::start_with(&[])
    }

    /// As [`Browser::start`], with `args` appended to Chromium's switches; e.g.
    /// `--blink-settings=scriptEnabled=false` runs the session with the pages'
    /// JavaScript off (WebDriver's own scripts, as [`Browser::status`], still
    /// run).
    pub fn start_with(args: &[&str]) -> Browser {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: browser tests need the Debian packages \
                 `chromium chromium-driver` (installed by scripts/deps: \
                 apt-get install chromium chromium-driver)"
            );
        }
        let profile = fresh_dir("nanami-chromium");
        let (driver, port, output) = spawn_driver(&profile);
        // From here on a panic drops `browser`, which cleans up.
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            profile,
            output,
        };
        browser.wait_ready();

        let mut chrome_args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        chrome_args.extend(args.iter().map(|a| a.to_string()));
        chrome_args.push(format!("--user-data-dir={}", browser.profile.display()));
        let page_ms = PAGE_TIMEOUT.as_millis();
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": page_ms, "script": page_ms },
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": chrome_args,
                        // The first tab opens about:blank, not the new-tab page,
                        // which offline sometimes takes 5 s to load (and the first
                        // command waits for it).
                        "prefs": {
                            "session": { "restore_on_startup": 4, "startup_urls": ["about:blank"] },
                        },
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let created = browser.command("POST", "/session", Some(&caps));
        browser.session = created
            .get("sessionId")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("new session: no sessionId in {created}"))
            .to_string();
        browser
    }

    /// Opens `url` in the current tab and waits for it to load (chromedriver's
    /// page-load strategy `normal`: the `load` event). An answer with an error
    /// status is a page like any other (see [`Browser::status`]); a server that
    /// cannot be reached panics with Chromium's error (`net::ERR_CONNECTION_REFUSED`).
    pub fn goto(&self, url: &str) {
        self.session_cmd("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The HTTP status of the current top-level document (its navigation timing
    /// entry's `responseStatus`), also when Chromium shows its own error page for
    /// an empty 4xx/5xx answer; 0 for a document that came with no HTTP answer.
    pub fn status(&self) -> u16 {
        let v = self.execute(
            "const e = performance.getEntriesByType('navigation')[0]; \
             return e ? e.responseStatus : null;",
            &[],
        );
        let status = v
            .as_u64()
            .unwrap_or_else(|| panic!("no navigation entry for {}: {v}", self.current_url()));
        u16::try_from(status).unwrap_or_else(|_| panic!("responseStatus {status} is no status"))
    }

    /// The browser console's messages of level `SEVERE` since the previous call
    /// (chromedriver hands each log entry out once): `console.error` calls,
    /// uncaught exceptions, and documents or subresources answered with an error
    /// status, each as chromedriver formats it (URL, position, text).
    ///
    /// Not reported: the failure of `/favicon.ico`, which Chromium requests on its
    /// own for pages that name no icon (a page's own broken resources are).
    pub fn console_errors(&self) -> Vec<String> {
        let body = json!({ "type": "browser" });
        let entries = match self.try_session_cmd("POST", "/se/log", Some(&body)) {
            Ok(v) => v,
            Err(e) if e.error == "unknown command" => self.session_cmd("POST", "/log", Some(&body)),
            Err(e) => panic!("POST /se/log: {e}"),
        };
        let entries = entries
            .as_array()
            .unwrap_or_else(|| panic!("browser log: not a list: {entries}"));
        entries
            .iter()
            .filter(|e| e.get("level").and_then(Value::as_str) == Some("SEVERE"))
            .filter_map(|e| e.get("message").and_then(Value::as_str))
            .filter(|m| !is_automatic_favicon(m))
            .map(str::to_string)
            .collect()
    }

    /// Runs `script` as the body of a function in the page (WebDriver's Execute
    /// Script: `arguments` are `args`, its `return` value is the result).
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.session_cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The rendered (visible) text of the first element matching the CSS
    /// selector `css`; panics when nothing matches.
    pub fn text(&self, css: &str) -> String {
        let el = self.element(css);
        self.element_text(&el)
    }

    /// The rendered text of every element matching `css`, in document order.
    pub fn texts(&self, css: &str) -> Vec<String> {
        self.elements(css)
            .iter()
            .map(|el| self.element_text(el))
            .collect()
    }

    /// Whether some element matches the CSS selector `css`.
    pub fn exists(&self, css: &str) -> bool {
        !self.elements(css).is_empty()
    }

    /// Attribute `name` of the first element matching `css` as in the markup (or
    /// as scripts set it), `None` when it has none; panics when nothing matches.
    /// A field's current contents are [`Browser::value`], not its `value`
    /// attribute.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let el = self.element(css);
        let v = self.session_cmd("GET", &format!("/element/{el}/attribute/{name}"), None);
        match v {
            Value::Null => None,
            Value::String(s) => Some(s),
            other @ (Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_)) => {
                Some(other.to_string())
            }
        }
    }

    /// The current value of the first form field (input, textarea, select)
    /// matching `css`: what the user typed, as the form would submit it.
    pub fn value(&self, css: &str) -> String {
        let el = self.element(css);
        string(
            self.session_cmd("GET", &format!("/element/{el}/property/value"), None),
            "value property",
        )
    }

    /// The current document's title.
    pub fn title(&self) -> String {
        string(self.session_cmd("GET", "/title", None), "title")
    }

    /// The URL of the current top-level document (the one asked for, also when
    /// Chromium shows an error page for it).
    pub fn current_url(&self) -> String {
        string(self.session_cmd("GET", "/url", None), "url")
    }

    /// The current DOM serialized as HTML (WebDriver's Get Page Source).
    pub fn source(&self) -> String {
        string(self.session_cmd("GET", "/source", None), "source")
    }

    /// Clicks the first element matching `css` (scrolled into view, as a user
    /// would). Does not wait for a page the click may load: see
    /// [`Browser::follow`].
    pub fn click(&self, css: &str) {
        let el = self.element(css);
        self.session_cmd("POST", &format!("/element/{el}/click"), Some(&json!({})));
    }

    /// Clicks the link or button matching `css` and waits until the page it
    /// loads has replaced the current one and finished loading; panics when no
    /// new page has loaded within [`PAGE_TIMEOUT`].
    pub fn follow(&self, css: &str) {
        let el = self.element(css);
        let page = self.element("html");
        self.session_cmd("POST", &format!("/element/{el}/click"), Some(&json!({})));
        self.wait_for_new_page(&page, &format!("following `{css}`"));
    }

    /// Replaces the contents of the first input or textarea matching `css` with
    /// `text`, typed as keystrokes.
    pub fn fill(&self, css: &str, text: &str) {
        let el = self.element(css);
        self.session_cmd("POST", &format!("/element/{el}/clear"), Some(&json!({})));
        self.session_cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// Submits a form as a user would and waits for the page the server answers
    /// with, as [`Browser::follow`]: `css` names either a submit button, which is
    /// clicked, or a form, whose first submit button is clicked (a form without
    /// one is submitted with `requestSubmit()`).
    pub fn submit(&self, css: &str) {
        let el = self.element(css);
        let page = self.element("html");
        let tag = string(
            self.session_cmd("GET", &format!("/element/{el}/name"), None),
            "tag name",
        );
        let button = if tag.eq_ignore_ascii_case("form") {
            let buttons = self.session_cmd(
                "POST",
                &format!("/element/{el}/elements"),
                Some(&json!({
                    "using": "css selector",
                    "value": "button:not([type]), button[type=submit], input[type=submit], input[type=image]",
                })),
            );
            element_ids(&buttons).into_iter().next()
        } else {
            Some(el.clone())
        };
        match button {
            Some(button) => {
                self.session_cmd(
                    "POST",
                    &format!("/element/{button}/click"),
                    Some(&json!({})),
                );
            }
            None => {
                self.execute("arguments[0].requestSubmit();", &[element_ref(&el)]);
            }
        }
        self.wait_for_new_page(&page, &format!("submitting `{css}`"));
    }

    /// Writes a PNG screenshot of the viewport to `path` (parent directories are
    /// created); see [`screenshot_dir`] for where artifacts belong.
    pub fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let b64 = string(self.session_cmd("GET", "/screenshot", None), "screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .unwrap_or_else(|e| panic!("screenshot: bad base64: {e}"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write screenshot {}: {e}", path.display()));
    }

    /// The first element matching `css`, as a WebDriver element id.
    fn element(&self, css: &str) -> String {
        self.elements(css).into_iter().next().unwrap_or_else(|| {
            panic!(
                "no element matches CSS selector `{css}` on {}",
                self.current_url()
            )
        })
    }

    /// Every element matching `css`, as WebDriver element ids.
    fn elements(&self, css: &str) -> Vec<String> {
        let found = self.session_cmd(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        element_ids(&found)
    }

    fn element_text(&self, el: &str) -> String {
        string(
            self.session_cmd("GET", &format!("/element/{el}/text"), None),
            "element text",
        )
    }

    /// Waits until the document whose root element is `page` has been replaced
    /// (the element is stale) and the new one has loaded (`readyState` is
    /// `complete`): a click's navigation starts asynchronously, so chromedriver's
    /// own wait after a click can miss it.
    fn wait_for_new_page(&self, page: &str, what: &str) {
        nanami_testkit::wait_until(what, PAGE_TIMEOUT, || {
            let replaced = match self.try_session_cmd("GET", &format!("/element/{page}/name"), None)
            {
                Ok(_) => false,
                Err(e) if e.status == 0 => panic!("{what}: chromedriver is gone: {e}"),
                Err(e) => e.error == "stale element reference" || e.error == "no such element",
            };
            replaced
                && matches!(
                    self.try_session_cmd(
                        "POST",
                        "/execute/sync",
                        Some(&json!({ "script": "return document.readyState;", "args": [] })),
                    ),
                    Ok(Value::String(s)) if s == "complete"
                )
        });
    }

    /// Polls chromedriver's `/status` until it reports ready.
    fn wait_ready(&self) {
        nanami_testkit::wait_until("chromedriver ready", STARTUP_TIMEOUT, || {
            self.try_command("GET", "/status", None)
                .ok()
                .and_then(|v| v.get("ready").and_then(Value::as_bool))
                .unwrap_or(false)
        });
    }

    fn session_cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    fn try_session_cmd(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, WebDriverError> {
        self.try_command(method, &format!("/session/{}{path}", self.session), body)
    }

    /// A WebDriver command whose failure fails the test.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_command(method, path, body).unwrap_or_else(|e| {
            let output = self.output();
            if output.is_empty() {
                panic!("WebDriver {method} {path}: {e}")
            } else {
                panic!("WebDriver {method} {path}: {e}\nchromedriver's output:\n{output}")
            }
        })
    }

    /// A WebDriver command: its `value`, or the error it answered with.
    fn try_command(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, WebDriverError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let (status, bytes) =
            http(addr, method, path, body, COMMAND_TIMEOUT).map_err(|e| WebDriverError {
                status: 0,
                error: "transport".into(),
                message: e.to_string(),
            })?;
        let mut answer: Value = serde_json::from_slice(&bytes).map_err(|e| WebDriverError {
            status,
            error: "bad answer".into(),
            message: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
        })?;
        let value = answer
            .get_mut("value")
            .map(Value::take)
            .unwrap_or(Value::Null);
        let error = value.get("error").and_then(Value::as_str);
        if status == 200 && error.is_none() {
            return Ok(value);
        }
        Err(WebDriverError {
            status,
            error: error.unwrap_or("unknown error").to_string(),
            message: value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }

    fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort throughout: this also runs while a failed test unwinds.
        if !self.session.is_empty() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
            let path = format!("/session/{}", self.session);
            let _ = http(addr, "DELETE", &path, None, Duration::from_secs(10));
        }
        // chromedriver leads its own process group, which Chromium's processes
        // join; chromedriver is not yet reaped, so the group id is still ours.
        // (Chromium's crash handlers leave the group; they exit with Chromium.)
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A killed process may take a moment to release the profile.
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.profile) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break,
            }
        }
    }
}

/// A WebDriver command's failure: the HTTP status (0 when chromedriver could not
/// be reached), WebDriver's error code and message.
#[derive(Debug)]
struct WebDriverError {
    status: u16,
    error: String,
    message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.error, self.status, self.message)
    }
}

/// Starts chromedriver with `--port=0` in a process group of its own and waits for
/// it to report the port it bound ("ChromeDriver was started successfully on port
/// N."), so no other process can take the port in between. Its stdout and stderr
/// are kept (and drained, so it never blocks on them).
fn spawn_driver(profile: &Path) -> (Child, u16, Arc<Mutex<String>>) {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(CHROMEDRIVER)
        .args(["--port=0", "--log-level=WARNING"])
        // Chromium's crash database and caches go to the profile, not $HOME.
        .env("XDG_CONFIG_HOME", profile.join("xdg-config"))
        .env("XDG_CACHE_HOME", profile.join("xdg-cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}"));
    let output = Arc::new(Mutex::new(String::new()));
    let (port_tx, port_rx) = mpsc::channel();
    let stdout: Option<ChildStdout> = child.stdout.take();
    let stderr: Option<ChildStderr> = child.stderr.take();
    let drains: Vec<_> = [
        stdout.map(|o| drain(o, Arc::clone(&output), Some(port_tx))),
        stderr.map(|e| drain(e, Arc::clone(&output), None)),
    ]
    .into_iter()
    .flatten()
    .collect();
    match port_rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(port) => (child, port, output),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait();
            let _ = std::fs::remove_dir_all(profile);
            // The drain threads end with chromedriver: then its output is complete.
            for d in drains {
                let _ = d.join();
            }
            let out = output.lock().map(|o| o.clone()).unwrap_or_default();
            panic!(
                "chromedriver reported no port within {STARTUP_TIMEOUT:?} ({status:?}); its output:\n{out}"
            )
        }
    }
}

/// Copies `from`'s lines into `output` on a thread of its own; sends the port of
/// chromedriver's start-up line to `port`.
fn drain(
    from: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    port: Option<mpsc::Sender<u16>>,
) -> std::thread::JoinHandle<()> {
    const STARTED: &str = "was started successfully on port ";
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let (Some(tx), Some(at)) = (&port, line.find(STARTED)) {
                let digits = line[at + STARTED.len()..].trim_end_matches('.');
                if let Ok(p) = digits.trim().parse::<u16>() {
                    let _ = tx.send(p);
                }
            }
            if let Ok(mut out) = output.lock() {
                out.push_str(&line);
                out.push('\n');
            }
        }
    })
}

/// A new empty directory under the system's temporary directory.
fn fresh_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{tag}-{}-{n}-{nanos}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// Whether a console message is the failure of Chromium's automatic
/// `/favicon.ico` request ("<origin>/favicon.ico - Failed to load resource: ...").
fn is_automatic_favicon(message: &str) -> bool {
    message
        .split_once(" - Failed to load resource")
        .is_some_and(|(url, _)| url.ends_with("/favicon.ico"))
}

/// The element ids in a Find Elements answer.
fn element_ids(found: &Value) -> Vec<String> {
    found
        .as_array()
        .map(|els| {
            els.iter()
                .filter_map(|el| el.get(ELEMENT_KEY).and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// An element id as a script argument.
fn element_ref(id: &str) -> Value {
    json!({ ELEMENT_KEY: id })
}

fn string(v: Value, what: &str) -> String {
    if let Value::String(s) = v {
        s
    } else {
        panic!("{what}: expected a string, got {v}")
    }
}

/// One HTTP/1.1 exchange (`Connection: close`) with a JSON body: the status and
/// the body (by `Content-Length`, chunked, or up to EOF). `timeout` bounds the
/// connect, the write and each read.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    read_response(BufReader::new(stream))
}

/// Reads an HTTP/1.1 response: status line, headers, body.
fn read_response(mut r: impl BufRead) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("end of stream in the headers".into()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| bad(format!("bad Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break; // Trailers, if any, are not needed: the connection closes.
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?; // The CRLF after the chunk.
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok((status, body))
}
