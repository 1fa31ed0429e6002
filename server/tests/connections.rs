//! The connection layer against the real binary (issue 10, cases 3 and 5): header, body and
//! idle timeouts, the connection limit, early 413, `Connection: close` while draining, request
//! ids, case-insensitive auth scheme, and logs (per request at DEBUG, a summary at INFO, no
//! colour codes off a terminal).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    addr: String,
    base: String,
    log: tempfile::NamedTempFile,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }
    fn wait_ready(&self) {
        let c = reqwest::blocking::Client::new();
        let t0 = Instant::now();
        while !c
            .get(format!("{}/v2/health/ready", self.base))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(t0.elapsed() < Duration::from_secs(120), "not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts shiftserve on a repository with the `tiny` model; stderr goes to a file.
fn start(repo: &Repo, args: &[&str]) -> Proc {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(bin())
        .args(["--http-address", "127.0.0.1", "--http-port", "0"])
        .args(["--model-repository", repo.path().to_str().unwrap()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("shiftserve listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    std::thread::spawn(move || for _ in reader.lines() {});
    let addr = base.trim_start_matches("http://").to_string();
    let p = Proc {
        child,
        addr,
        base,
        log,
    };
    p.wait_ready();
    p
}

fn tiny_repo() -> Repo {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    repo
}

/// Reads until the peer closes (or the read timeout); returns what arrived and whether the
/// connection was closed.
fn read_until_close(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into_owned(), true)
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

fn metric(p: &Proc, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", p.base))
        .unwrap()
        .text()
        .unwrap();
    metric_sum(&text, name, labels)
}

#[test]
fn trickled_headers_are_cut_off() {
    let repo = tiny_repo();
    let p = start(&repo, &["--http-header-timeout-secs", "1"]);
    let mut s = p.connect();
    let t0 = Instant::now();
    s.write_all(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let (_, closed) = read_until_close(&mut s);
    assert!(closed, "connection with unfinished headers left open");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        metric(
            &p,
            "shiftserve_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 1.0
    );
}

#[test]
fn idle_connections_are_closed() {
    let repo = tiny_repo();
    let p = start(&repo, &["--http-idle-timeout-secs", "1"]);
    // Never sends anything.
    let mut silent = p.connect();
    // Sends one request, then stays idle on keep-alive.
    let mut used = p.connect();
    used.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let (text, closed) = read_until_close(&mut used);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed);
    let (_, closed) = read_until_close(&mut silent);
    assert!(closed);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        metric(
            &p,
            "shiftserve_connections_closed_total",
            &[("reason", "idle_timeout")]
        ) >= 2.0
    );
}

#[test]
fn trickled_body_gets_408() {
    let repo = tiny_repo();
    let p = start(&repo, &["--http-body-timeout-secs", "1"]);
    let mut s = p.connect();
    s.write_all(
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"",
    )
    .unwrap();
    let t0 = Instant::now();
    let (text, closed) = read_until_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(closed);
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let repo = tiny_repo();
    let p = start(&repo, &["--max-connections", "3"]);
    // Let the readiness probe's connection close.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..3).map(|_| p.connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = p.connect();
    let (text, closed) = read_until_close(&mut extra);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too many open connections"), "{text}");
    assert!(closed);
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(metric(&p, "shiftserve_connections_refused_total", &[]) >= 1.0);
}

#[test]
fn declared_oversized_body_gets_413_without_continue() {
    let repo = tiny_repo();
    let p = start(&repo, &["--max-body-bytes", "1000"]);
    let mut s = p.connect();
    s.write_all(
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let (text, closed) = read_until_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.contains("exceeds 1000 bytes"), "{text}");
    assert!(closed);
}

#[test]
fn answers_while_draining_close_the_connection() {
    let repo = tiny_repo();
    let p = start(&repo, &["--exit-timeout-secs", "20"]);
    // An accepted request whose body never arrives keeps the server draining.
    let mut pending = p.connect();
    pending
        .write_all(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    let mut s = p.connect();
    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (text, closed) = read_until_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(closed);
}

#[test]
fn request_ids_are_bounded_and_sanitised() {
    let repo = tiny_repo();
    let p = start(&repo, &[]);
    let c = reqwest::blocking::Client::new();
    let id_of = |id: &str| -> String {
        c.get(format!("{}/v2/health/live", p.base))
            .header("x-request-id", id)
            .send()
            .unwrap()
            .headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(id_of("trace-42:abc/DEF"), "trace-42:abc/DEF");
    let long = "a".repeat(60_000);
    for bad in [long.as_str(), "has space", "quote\"d", "<script>"] {
        let got = id_of(bad);
        assert_ne!(got, bad);
        assert_eq!(got.len(), 36, "{got}");
        assert!(uuid_like(&got), "{got}");
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

#[test]
fn auth_scheme_is_case_insensitive() {
    let repo = tiny_repo();
    let p = start(&repo, &["--api-key", API_KEY]);
    let c = reqwest::blocking::Client::new();
    let status = |auth: &str| {
        c.get(format!("{}/v2/models/tiny", p.base))
            .header("authorization", auth)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(status(&format!("{scheme} {API_KEY}")), 200, "{scheme}");
    }
    assert_eq!(status(&format!("Bearer {API_KEY}x")), 401);
    assert_eq!(status(&format!("Basic {API_KEY}")), 401);
    assert_eq!(status("Bearer"), 401);
}

#[test]
fn requests_are_logged_at_debug_with_a_summary_at_info_and_no_colour() {
    let repo = tiny_repo();
    let p = start(&repo, &["--log-level", "info", "--log-summary-secs", "1"]);
    let c = reqwest::blocking::Client::new();
    for _ in 0..5 {
        let r = c
            .post(format!("{}/v1/models/tiny/predict", p.base))
            .header("content-type", "image/png")
            .body(png(28, 28, 0))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let t0 = Instant::now();
    while !p.log_text().contains("requests answered") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no summary line:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = p.log_text();
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
    assert!(!text.contains("finished processing request"), "{text}");
    let summary = text
        .lines()
        .find(|l| l.contains("requests answered"))
        .unwrap();
    // 5 predictions plus readiness probes.
    assert!(summary.contains("status_2xx="), "{summary}");
    drop(p);

    // At DEBUG every request has its line, in JSON with --log-format json.
    let p = start(
        &repo,
        &[
            "--log-level",
            "info,tower_http=debug",
            "--log-format",
            "json",
        ],
    );
    let r = c
        .get(format!("{}/v2/health/live", p.base))
        .header("x-request-id", "find-me-7")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    std::thread::sleep(Duration::from_millis(300));
    let text = p.log_text();
    let line = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}"))
        })
        .find(|v| {
            v["span"]["request_id"] == "find-me-7" && v["message"] == "finished processing request"
        })
        .unwrap_or_else(|| panic!("no request line in {text}"));
    assert_eq!(line["level"], "DEBUG");
}
