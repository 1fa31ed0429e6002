//! Batching, overload, deadlines, cancellation, graceful drain, poll-mode swaps, explicit mode.

mod common;

use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn predict(s: &Server, model: &str, query: &str) -> reqwest::blocking::Response {
    s.client
        .post(s.url(&format!("/v1/models/{model}/predict{query}")))
        .header("content-type", "image/png")
        .body(png(28, 28, 7))
        .send()
        .unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn error_of(r: reqwest::blocking::Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().unwrap();
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn batches_form_overload_sheds_deadlines_expire_cancelled_never_run() {
    let repo = Repo::new();
    // A batch leaves only when 4 requests are there (or after 3 s).
    repo.add(
        "batch",
        1,
        "tiny_w3.safetensors",
        "max_batch_size = 4\nmax_queue_delay_us = 3000000\nwait_when_idle = true\n",
    );
    // Waits 6 s for company (a wide window, so a loaded CI machine still sees both requests
    // queued before the batch leaves); only 2 requests fit in the queue.
    repo.add(
        "slowq",
        1,
        "tiny_w3.safetensors",
        "max_batch_size = 8\nmax_queue_delay_us = 6000000\nwait_when_idle = true\nqueue_capacity = 2\n",
    );
    let s = Server::start(&["--model-repository", repo.path().to_str().unwrap()], &[]);

    // Four concurrent requests run as one batch of 4.
    let sizes: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    let r = predict(&s, "batch", "");
                    assert_eq!(r.status(), 200);
                    r.headers()["x-batch-size"].to_str().unwrap().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(sizes, vec!["4"; 4]);
    let st: Value = s
        .client
        .get(s.url("/v2/models/batch/stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let batches = st["model_stats"][0]["batch_stats"]
        .as_array()
        .unwrap()
        .clone();
    let four = batches
        .iter()
        .find(|b| b["batch_size"] == 4)
        .expect("a batch of 4 in stats");
    assert_eq!(four["compute_infer"]["count"], 1);
    assert_eq!(
        st["model_stats"][0]["execution_count"], 1,
        "one batch of 4 (warmup is not counted)"
    );
    assert_eq!(st["model_stats"][0]["inference_count"], 4);

    // Overload: two requests wait in slowq's queue, the third is shed with 429 + Retry-After.
    std::thread::scope(|sc| {
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| {
                    let r = predict(&s, "slowq", "");
                    assert_eq!(r.status(), 200);
                    r.headers()["x-batch-size"].to_str().unwrap().to_string()
                })
            })
            .collect();
        wait_for("2 queued requests", Duration::from_secs(20), || {
            s.metric("shiftserve_queue_depth", &[("model", "slowq")]) == 2.0
        });
        let r = predict(&s, "slowq", "");
        assert_eq!(r.status(), 429);
        assert!(
            r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        assert!(error_of(r, 429).contains("queue is full"));
        for h in waiting {
            assert_eq!(h.join().unwrap(), "2");
        }
    });

    // Deadlines: the batch would wait 6 s, the requests allow 300 ms.
    let r = predict(&s, "slowq", "?timeout_ms=300");
    assert!(error_of(r, 504).contains("deadline"));
    let r = s
        .client
        .post(s.url("/v1/models/slowq/predict"))
        .header("content-type", "image/png")
        .header("x-request-timeout-ms", "300")
        .body(png(28, 28, 1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 504);

    // A client that gives up: its request is dropped before it runs.
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let r = impatient
        .post(s.url("/v1/models/slowq/predict"))
        .header("content-type", "image/png")
        .body(png(28, 28, 2))
        .send();
    assert!(r.is_err(), "client-side timeout expected");
    wait_for(
        "the cancelled request to be counted",
        Duration::from_secs(10),
        || {
            s.metric(
                "shiftserve_requests_total",
                &[("model", "slowq"), ("reason", "cancelled")],
            ) >= 1.0
        },
    );
    // Let the batcher's delay pass: nothing else may run.
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!(
        s.metric("nv_inference_count", &[("model", "slowq")]),
        2.0,
        "only the two accepted requests ran"
    );
    assert_eq!(
        s.metric("shiftserve_queue_depth", &[("model", "slowq")]),
        0.0
    );
    assert_eq!(
        s.metric(
            "shiftserve_requests_total",
            &[("model", "slowq"), ("reason", "timeout")]
        ),
        2.0
    );
    assert_eq!(
        s.metric(
            "shiftserve_requests_total",
            &[("model", "slowq"), ("reason", "overloaded")]
        ),
        1.0
    );
    assert_eq!(
        s.metric(
            "shiftserve_requests_total",
            &[("model", "slowq"), ("reason", "ok")]
        ),
        2.0
    );
    assert_eq!(s.metric("shiftserve_inflight_requests", &[]), 0.0);
}

#[test]
fn sigterm_drains_accepted_requests() {
    let repo = Repo::new();
    repo.add(
        "m",
        1,
        "tiny_w3.safetensors",
        "max_batch_size = 8\nmax_queue_delay_us = 3000000\nwait_when_idle = true\n",
    );
    let mut s = Server::start(
        &[
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--exit-timeout-secs",
            "30",
        ],
        &[],
    );
    let results = std::thread::scope(|sc| {
        let burst: Vec<_> = (0..6)
            .map(|_| sc.spawn(|| predict(&s, "m", "").status().as_u16()))
            .collect();
        wait_for("6 queued requests", Duration::from_secs(20), || {
            s.metric("shiftserve_queue_depth", &[("model", "m")]) == 6.0
        });
        s.sigterm();
        // Readiness turns 503 at once; new work is refused while the burst is still queued.
        wait_for("readiness 503", Duration::from_secs(5), || {
            s.client
                .get(s.url("/v2/health/ready"))
                .send()
                .unwrap()
                .status()
                == 503
        });
        let r = predict(&s, "m", "");
        assert!(error_of(r, 503).contains("shutting down"));
        assert_eq!(
            s.client
                .get(s.url("/v2/health/live"))
                .send()
                .unwrap()
                .status(),
            200
        );
        burst
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(results, vec![200; 6], "every accepted request is answered");
    let status = s.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn poll_mode_swaps_versions_under_load_and_keeps_serving_on_bad_version() {
    let repo = Repo::new();
    repo.add(
        "m",
        1,
        "tiny_w3.safetensors",
        "max_batch_size = 4\nmax_queue_delay_us = 1000\n",
    );
    let s = Server::start(
        &[
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--model-control-mode",
            "poll",
            "--repository-poll-secs",
            "1",
        ],
        &[],
    );
    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<(u16, String)>> = Mutex::new(Vec::new());
    let saw_v2 = Arc::new(AtomicBool::new(false));
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let r = predict(&s, "m", "");
                    let status = r.status().as_u16();
                    let v = if status == 200 {
                        r.json::<Value>().unwrap()["version"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    } else {
                        r.text().unwrap()
                    };
                    if v == "2" {
                        saw_v2.store(true, Ordering::SeqCst);
                    }
                    seen.lock().unwrap().push((status, v));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(800));
        repo.add_version("m", 2, "tiny_w2.safetensors");
        wait_for("version 2 to answer", Duration::from_secs(60), || {
            saw_v2.load(Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
    });
    let seen = seen.into_inner().unwrap();
    let failed: Vec<_> = seen.iter().filter(|(st, _)| *st != 200).collect();
    assert!(
        failed.is_empty(),
        "failed requests during the swap: {failed:?}"
    );
    assert!(seen.iter().any(|(_, v)| v == "1"));
    assert!(seen.iter().any(|(_, v)| v == "2"));
    assert_eq!(
        s.metric(
            "shiftserve_model_ready",
            &[("model", "m"), ("version", "1")]
        ),
        0.0
    );
    assert_eq!(
        s.metric(
            "shiftserve_model_ready",
            &[("model", "m"), ("version", "2")]
        ),
        1.0
    );

    // A corrupt version 3 fails to load; version 2 keeps serving and the failure is reported.
    let mut bytes = std::fs::read(fixture("tiny_w3.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    repo.add_bytes_version("m", 3, &bytes);
    wait_for("the load failure", Duration::from_secs(30), || {
        s.metric("shiftserve_model_load_failures_total", &[("model", "m")]) >= 1.0
    });
    let r = predict(&s, "m", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["version"], "2");
    let idx: Value = s
        .client
        .post(s.url("/v2/repository/index"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let v3 = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["version"] == "3")
        .expect("v3 in index");
    assert_eq!(v3["state"], "UNAVAILABLE");
    assert!(!v3["reason"].as_str().unwrap().is_empty());
    // The unchanged broken file is not retried on every poll.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        s.metric("shiftserve_model_load_failures_total", &[("model", "m")]),
        1.0
    );

    // A model directory that appears is loaded; a changed config.toml reloads it; a removed
    // directory is unloaded.
    repo.add("n", 1, "tiny_w3.safetensors", "max_batch_size = 4\n");
    wait_for("model n to load", Duration::from_secs(30), || {
        predict(&s, "n", "").status() == 200
    });
    let batch_of = |s: &Server| -> u64 {
        let c: Value = s
            .client
            .get(s.url("/v2/models/n/config"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        c["max_batch_size"].as_u64().unwrap()
    };
    assert_eq!(batch_of(&s), 4);
    std::fs::write(repo.path().join("n/config.toml"), "max_batch_size = 2\n").unwrap();
    wait_for("the new config", Duration::from_secs(30), || {
        batch_of(&s) == 2
    });
    assert_eq!(predict(&s, "n", "").status(), 200);
    std::fs::remove_dir_all(repo.path().join("n")).unwrap();
    wait_for("model n to be unloaded", Duration::from_secs(30), || {
        predict(&s, "n", "").status() == 404
    });
    assert_eq!(s.metric("shiftserve_model_ready", &[("model", "n")]), 0.0);
}

#[test]
fn explicit_mode_load_unload_with_config_file_and_env() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    std::fs::create_dir_all(repo.path().join("bad/1")).unwrap();
    std::fs::write(repo.path().join("bad/1/model.safetensors"), b"garbage").unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("shiftserve.toml");
    std::fs::write(
        &cfg,
        format!(
            "model_repository = \"{}\"\nmodel_control_mode = \"explicit\"\nlog_format = \"json\"\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let s = Server::start(
        &[],
        &[
            ("SHIFTSERVE_CONFIG", cfg.to_str().unwrap()),
            ("SHIFTSERVE_EXIT_TIMEOUT_SECS", "5"),
        ],
    );
    let c = &s.client;
    let post = |p: &str| c.post(s.url(p)).send().unwrap();

    let idx: Value = post("/v2/repository/index").json().unwrap();
    assert!(
        idx.as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "UNAVAILABLE"),
        "{idx}"
    );
    assert!(error_of(predict(&s, "tiny", ""), 503).contains("not loaded"));
    assert_eq!(
        c.get(s.url("/v2/models/tiny/ready"))
            .send()
            .unwrap()
            .status(),
        503
    );

    assert_eq!(post("/v2/repository/models/tiny/load").status(), 200);
    let r = predict(&s, "tiny", "");
    assert_eq!(r.status(), 200);
    let list: Value = c.get(s.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(list["models"][0]["name"], "tiny");
    assert_eq!(
        s.metric("shiftserve_model_ready", &[("model", "tiny")]),
        1.0
    );

    assert_eq!(post("/v2/repository/models/tiny/unload").status(), 200);
    assert_eq!(predict(&s, "tiny", "").status(), 503);
    assert_eq!(
        s.metric("shiftserve_model_ready", &[("model", "tiny")]),
        0.0
    );

    assert_eq!(post("/v2/repository/models/nope/load").status(), 404);
    assert_eq!(post("/v2/repository/models/nope/unload").status(), 404);
    assert_eq!(post("/v2/repository/models/..%2Fetc/load").status(), 404);
    let msg = error_of(post("/v2/repository/models/bad/load"), 500);
    assert!(msg.contains("bad"), "{msg}");
    assert_eq!(
        s.metric("shiftserve_model_load_failures_total", &[("model", "bad")]),
        1.0
    );
    let idx: Value = post("/v2/repository/index").json().unwrap();
    let bad = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "bad")
        .unwrap();
    assert_eq!(bad["state"], "UNAVAILABLE");
    // Reload after unload works.
    assert_eq!(post("/v2/repository/models/tiny/load").status(), 200);
    assert_eq!(predict(&s, "tiny", "").status(), 200);
}

#[test]
fn serves_the_bundled_repository_found_from_the_working_directory() {
    let work = tempfile::tempdir().unwrap();
    let mdir = work.path().join("models/repository/tiny/1");
    std::fs::create_dir_all(&mdir).unwrap();
    std::fs::copy(
        fixture("tiny_w3.safetensors"),
        mdir.join("model.safetensors"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.current_dir(work.path())
        .args([
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--log-level",
            "warn",
        ])
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("shiftserve listening on ")
        .unwrap()
        .to_string();
    let client = reqwest::blocking::Client::new();
    let t0 = Instant::now();
    let ok = loop {
        let r = client.get(format!("{base}/v2/models/tiny/ready")).send();
        if matches!(&r, Ok(r) if r.status() == 200) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "bundled repository model never became ready");
}

#[test]
fn json_logs_carry_request_ids() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    repo.add("other", 1, "tiny_w2.safetensors", "");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(bin())
        .args([
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--log-format",
            "json",
            // One line per request is DEBUG (INFO gets a periodic summary).
            "--log-level",
            "info,tower_http=debug",
        ])
        .args(["--model-repository", repo.path().to_str().unwrap()])
        .args(["--model-control-mode", "explicit", "--load-model", "tiny"])
        .stdout(std::process::Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("shiftserve listening on ")
        .unwrap()
        .to_string();
    let client = reqwest::blocking::Client::new();
    wait_for("readiness", Duration::from_secs(60), || {
        client
            .get(format!("{base}/v2/health/ready"))
            .send()
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    });
    let r = client
        .post(format!("{base}/v1/models/tiny/predict"))
        .header("content-type", "image/png")
        .header("x-request-id", "trace-me-123")
        .body(png(28, 28, 0))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Explicit mode loaded only the named model.
    let other = client
        .post(format!("{base}/v1/models/other/predict"))
        .body(png(28, 28, 0))
        .send()
        .unwrap();
    assert_eq!(other.status(), 503);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines.iter().any(|v| v["message"] == "shiftserve listening"));
    let req = lines
        .iter()
        .find(|v| v["span"]["request_id"] == "trace-me-123")
        .unwrap_or_else(|| panic!("no log line with the request id in {text}"));
    assert_eq!(req["span"]["path"], "/v1/models/tiny/predict");
    assert!(lines.iter().any(|v| v["message"] == "shiftserve stopped"));
}

#[test]
fn version_policy_all_serves_pinned_versions() {
    let repo = Repo::new();
    repo.add(
        "m",
        1,
        "tiny_w3.safetensors",
        "version_policy = \"all\"\ninstances = 2\npreferred_batch_sizes = [2]\n",
    );
    repo.add_version("m", 2, "tiny_w2.safetensors");
    let s = Server::start(&["--model-repository", repo.path().to_str().unwrap()], &[]);
    let meta: Value = s
        .client
        .get(s.url("/v2/models/m"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(meta["versions"], serde_json::json!(["1", "2"]));
    let x: Vec<f32> = (0..784).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
    let logits = |path: &str| -> (String, Vec<f64>) {
        let r: Value = s
            .client
            .post(s.url(path))
            .json(&serde_json::json!({"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": x}],
                                      "outputs": [{"name": "logits"}]}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let v = r["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (r["model_version"].as_str().unwrap().to_string(), v)
    };
    let (v1, l1) = logits("/v2/models/m/versions/1/infer");
    let (v2, l2) = logits("/v2/models/m/versions/2/infer");
    let (vd, ld) = logits("/v2/models/m/infer");
    assert_eq!((v1.as_str(), v2.as_str(), vd.as_str()), ("1", "2", "2"));
    assert_ne!(l1, l2, "different weights must give different logits");
    assert_eq!(l2, ld);
    let st: Value = s
        .client
        .get(s.url("/v2/models/m/stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(st["model_stats"].as_array().unwrap().len(), 2);
    assert_eq!(s.metric("shiftserve_model_ready", &[("model", "m")]), 2.0);
}

#[test]
fn admission_places_are_released_on_every_failed_path() {
    let repo = Repo::new();
    // A batch waits 3 s for company; 2 places in the queue.
    repo.add(
        "cap2",
        1,
        "tiny_w3.safetensors",
        "max_batch_size = 8\nmax_queue_delay_us = 3000000\nwait_when_idle = true\nqueue_capacity = 2\n",
    );
    let s = Server::start(&["--model-repository", repo.path().to_str().unwrap()], &[]);
    // Failures after admission: malformed bodies (fail in preprocessing), deadlines that pass
    // during preprocessing or in the queue, clients that go away.
    for i in 0..6u8 {
        let r = s
            .client
            .post(s.url("/v1/models/cap2/predict"))
            .header("content-type", "image/png")
            .body(vec![i; 64])
            .send()
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = predict(&s, "cap2", "?timeout_ms=1");
        assert_eq!(r.status(), 504);
    }
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = impatient
            .post(s.url("/v1/models/cap2/predict"))
            .header("content-type", "image/png")
            .body(png(28, 28, 3))
            .send();
        assert!(
            r.is_err(),
            "the request should still be waiting for company"
        );
    }
    wait_for("every place given back", Duration::from_secs(20), || {
        s.metric("shiftserve_queue_depth", &[("model", "cap2")]) == 0.0
    });
    // The full capacity is available again: two accepted, a third refused at once.
    std::thread::scope(|sc| {
        let waiting: Vec<_> = (0..2)
            .map(|_| sc.spawn(|| predict(&s, "cap2", "").status().as_u16()))
            .collect();
        wait_for("2 admitted requests", Duration::from_secs(20), || {
            s.metric("shiftserve_queue_depth", &[("model", "cap2")]) == 2.0
        });
        let t0 = Instant::now();
        let r = predict(&s, "cap2", "");
        assert!(error_of(r, 429).contains("queue is full"));
        assert!(t0.elapsed() < Duration::from_secs(2));
        for h in waiting {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    assert_eq!(
        s.metric("shiftserve_queue_depth", &[("model", "cap2")]),
        0.0
    );
}
