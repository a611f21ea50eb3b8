//! The WebDriver client of `tests/browser` against headless Chromium and a few
//! pages served by the test itself over plain HTTP: statuses, text, forms,
//! console errors, screenshots, and a session with JavaScript off.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/deps).
#![allow(clippy::unwrap_used)]

mod browser;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use browser::{screenshot_dir, Browser};

/// Serves the test pages on a loopback port of its own, one thread per
/// connection, for the rest of the test process; returns its base URL.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    base
}

/// Answers one request (Chromium may also open connections it never uses: they
/// time out here).
fn answer(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).unwrap_or(0) > 2 {
        header.clear();
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = page(path, query);
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn page(path: &str, query: &str) -> (u16, String) {
    let html = |title: &str, body: &str| {
        format!(
            "<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>"
        )
    };
    match path {
        "/" => (
            200,
            html(
                "Clean",
                r#"<h1 id="heading">Hello</h1>
                <ul><li class="item">one</li><li class="item">two</li><li class="item">three</li></ul>
                <a id="to-form" href="/form" data-kind="nav">to the form</a>"#,
            ),
        ),
        "/form" => (
            200,
            html(
                "Login",
                r#"<form id="login" action="/welcome" method="get">
                <input id="user" name="user" value="preset">
                <input id="remember" type="checkbox"><button type="submit">Sign in</button>
                </form>"#,
            ),
        ),
        "/welcome" => {
            let user = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("user="))
                .unwrap_or_default()
                .replace(['<', '>', '&'], "");
            (
                200,
                html(
                    "Welcome",
                    &format!(r#"<p id="greeting">Welcome, {user}</p>"#),
                ),
            )
        }
        "/error" => (
            200,
            html(
                "Broken",
                r#"<p>broken</p><img src="/missing.png" alt="">
                <script>console.error("smoke-boom");</script>
                <script>throw new Error("smoke-throw");</script>"#,
            ),
        ),
        "/script" => (
            200,
            html(
                "Script",
                r#"<p id="js">as served</p>
                <script>document.getElementById("js").textContent = "changed by script";</script>"#,
            ),
        ),
        _ => (
            404,
            html("Not found", r#"<p id="missing">no such page</p>"#),
        ),
    }
}

#[test]
fn statuses_text_forms_console_errors_and_screenshots() {
    let base = serve();
    let started = Instant::now();
    let b = Browser::start();
    eprintln!("browser session started in {:?}", started.elapsed());

    b.goto(&format!("{base}/"));
    assert_eq!(b.status(), 200);
    assert_eq!(b.title(), "Clean");
    assert_eq!(b.current_url(), format!("{base}/"));
    assert_eq!(b.text("#heading"), "Hello");
    assert_eq!(b.texts("li.item"), ["one", "two", "three"]);
    assert!(b.exists("ul > li.item"));
    assert!(!b.exists("#nothing-like-this"));
    assert_eq!(b.attr("#to-form", "data-kind").as_deref(), Some("nav"));
    assert_eq!(b.attr("#to-form", "title"), None);
    assert!(b.source().contains(r#"<h1 id="heading">Hello</h1>"#));
    assert_eq!(
        b.console_errors(),
        Vec::<String>::new(),
        "a clean page logs no errors"
    );

    let shot = screenshot_dir().join("browser_smoke-clean.png");
    b.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        shot.display()
    );

    // A link, then a form: fill the field and submit, landing on the next page.
    b.follow("#to-form");
    assert_eq!(b.current_url(), format!("{base}/form"));
    assert_eq!(b.value("#user"), "preset");
    b.click("#remember");
    let checked = b.execute("return document.getElementById('remember').checked;", &[]);
    assert_eq!(
        checked,
        serde_json::Value::Bool(true),
        "click ticks the box"
    );
    b.fill("#user", "alice");
    assert_eq!(b.value("#user"), "alice");
    assert_eq!(b.attr("#user", "value").as_deref(), Some("preset"));
    b.submit("#login");
    assert_eq!(b.current_url(), format!("{base}/welcome?user=alice"));
    assert_eq!(b.status(), 200);
    assert_eq!(b.text("#greeting"), "Welcome, alice");
    // Submitting by the button itself works as well.
    b.goto(&format!("{base}/form"));
    b.fill("#user", "bob");
    b.submit("#login button");
    assert_eq!(b.text("#greeting"), "Welcome, bob");
    assert_eq!(b.console_errors(), Vec::<String>::new());

    b.goto(&format!("{base}/no/such/page"));
    assert_eq!(b.status(), 404);
    assert_eq!(b.text("#missing"), "no such page");
    let errors = b.console_errors();
    assert!(
        errors.len() == 1 && errors[0].contains("/no/such/page") && errors[0].contains("404"),
        "the 404 document is a console error: {errors:?}"
    );

    b.goto(&format!("{base}/error"));
    assert_eq!(b.status(), 200);
    let errors = b.console_errors();
    assert!(
        errors.iter().any(|e| e.contains("smoke-boom")),
        "console.error is reported: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("/missing.png") && e.contains("404")),
        "a 404 subresource is reported: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("smoke-throw")),
        "an uncaught exception is reported: {errors:?}"
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(
        b.console_errors(),
        Vec::<String>::new(),
        "errors are reported once"
    );

    b.goto(&format!("{base}/script"));
    assert_eq!(
        b.text("#js"),
        "changed by script",
        "JavaScript runs by default"
    );
    eprintln!("whole session took {:?}", started.elapsed());
}

#[test]
fn javascript_off_leaves_the_dom_as_served() {
    let base = serve();
    let started = Instant::now();
    let b = Browser::start_with(&["--blink-settings=scriptEnabled=false"]);
    eprintln!(
        "browser session (JavaScript off) started in {:?}",
        started.elapsed()
    );

    b.goto(&format!("{base}/script"));
    assert_eq!(b.status(), 200);
    assert_eq!(b.text("#js"), "as served");

    // The page's console.error does not run; its broken image still fails.
    b.goto(&format!("{base}/error"));
    let errors = b.console_errors();
    assert!(
        !errors.iter().any(|e| e.contains("smoke-boom")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("/missing.png")),
        "{errors:?}"
    );

    // Forms still work without JavaScript.
    b.goto(&format!("{base}/form"));
    b.fill("#user", "carol");
    b.submit("#login");
    assert_eq!(b.text("#greeting"), "Welcome, carol");
}
