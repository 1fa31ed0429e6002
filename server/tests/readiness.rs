//! Readiness and start-up as operators rely on them (issue 10, case 2), against the real binary:
//! `/v2/health/ready` is 503 unless every model that should be served is ready,
//! `--exit-on-error` stops at a failed model, an invalid `SHIFTSERVE_KERNEL` refuses to start.

mod common;

use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Waits until `/v2/health/ready` has been answered after the initial load (200, or 503 for a
/// reason other than starting) and returns (status, error message).
fn settled_readiness(s: &Server) -> (u16, String) {
    let t0 = Instant::now();
    loop {
        let r = s.client.get(s.url("/v2/health/ready")).send().unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap();
        let msg = v["error"].as_str().unwrap_or("").to_string();
        if status == 200 || !msg.contains("starting") {
            return (status, msg);
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "still starting");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn broken(repo: &Repo, name: &str) {
    std::fs::create_dir_all(repo.path().join(name).join("1")).unwrap();
    std::fs::write(
        repo.path().join(name).join("1/model.safetensors"),
        b"not a model",
    )
    .unwrap();
}

#[test]
fn not_ready_when_every_model_failed() {
    let repo = Repo::new();
    broken(&repo, "bad");
    let s = Server::spawn(&["--model-repository", repo.path().to_str().unwrap()], &[]);
    let (status, msg) = settled_readiness(&s);
    assert_eq!(status, 503, "{msg}");
    assert!(msg.contains("\"bad\""), "{msg}");
    assert_eq!(
        s.client
            .get(s.url("/v2/health/live"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn not_ready_when_one_model_failed_unless_not_strict() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    broken(&repo, "bad");
    let path = repo.path().to_str().unwrap();
    let s = Server::spawn(&["--model-repository", path], &[]);
    let (status, msg) = settled_readiness(&s);
    assert_eq!(status, 503, "{msg}");
    assert!(
        msg.contains("\"bad\"") && !msg.contains("\"tiny\""),
        "{msg}"
    );
    // The good model serves all the same.
    let r = s
        .client
        .post(s.url("/v1/models/tiny/predict"))
        .header("content-type", "image/png")
        .body(png(28, 28, 1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(s);

    let s = Server::spawn(
        &["--model-repository", path, "--strict-readiness=false"],
        &[],
    );
    assert_eq!(settled_readiness(&s).0, 200);
}

#[test]
fn not_ready_when_the_repository_is_empty_or_gone() {
    let repo = Repo::new();
    let s = Server::spawn(&["--model-repository", repo.path().to_str().unwrap()], &[]);
    let (status, msg) = settled_readiness(&s);
    assert_eq!(status, 503);
    assert!(msg.contains("no models"), "{msg}");
    drop(s);

    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    let s = Server::start(&["--model-repository", repo.path().to_str().unwrap()], &[]);
    std::fs::remove_dir_all(repo.path()).unwrap();
    let (status, msg) = settled_readiness(&s);
    assert_eq!(status, 503);
    assert!(msg.contains("cannot be read"), "{msg}");
}

#[test]
fn explicit_mode_needs_the_requested_models() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    let path = repo.path().to_str().unwrap();
    // Nothing requested: ready.
    let s = Server::spawn(
        &[
            "--model-repository",
            path,
            "--model-control-mode",
            "explicit",
        ],
        &[],
    );
    assert_eq!(settled_readiness(&s).0, 200);
    // Unloading a loaded model takes it out of what should be served.
    assert_eq!(
        s.client
            .post(s.url("/v2/repository/models/tiny/load"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(settled_readiness(&s).0, 200);
    assert_eq!(
        s.client
            .post(s.url("/v2/repository/models/tiny/unload"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(settled_readiness(&s).0, 200);
    drop(s);
    // A requested model that does not exist: not ready.
    let s = Server::spawn(
        &[
            "--model-repository",
            path,
            "--model-control-mode",
            "explicit",
            "--load-model",
            "tiny,missing",
        ],
        &[],
    );
    let (status, msg) = settled_readiness(&s);
    assert_eq!(status, 503);
    assert!(msg.contains("\"missing\""), "{msg}");
}

/// Runs the binary to completion (bounded) and returns (exit code, stderr, stdout).
fn run_to_exit(
    sub: &[&str],
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(sub)
        .args(["--http-address", "127.0.0.1", "--http-port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("shiftserve {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn exit_on_error_stops_at_a_failed_model() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    broken(&repo, "bad");
    let (code, err, _) = run_to_exit(
        &[],
        &[
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--exit-on-error",
            "--log-level",
            "error",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--exit-on-error") && err.contains("bad"),
        "{err}"
    );
}

#[test]
fn invalid_kernel_policy_refuses_to_start() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "");
    for sub in [&["serve"][..], &[][..]] {
        let (code, err, out) = run_to_exit(
            sub,
            &["--model-repository", repo.path().to_str().unwrap()],
            &[("SHIFTSERVE_KERNEL", "foo")],
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("SHIFTSERVE_KERNEL") && err.contains("foo"),
            "{err}"
        );
        assert!(!out.contains("listening"), "{out}");
    }
}
