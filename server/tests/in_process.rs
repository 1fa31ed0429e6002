//! HTTP behaviour in-process: the real router, repository, batcher and models, with the runner
//! injected (no binary, no port). The injected runner wraps the real session and can be told
//! to fail, panic or stall, which the end-to-end tests cannot arrange.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use shiftserve::batcher::{Runner, SessionRunner};
use shiftserve::config::ServeArgs;
use shiftserve::http::{router, AppState};
use shiftserve::metrics::Metrics;
use shiftserve::repository::{ControlMode, Repository};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// What the next runs of the injected runner do: 0 run normally, 1 fail, 2 panic, 3 stall,
/// 4 block until the mode is changed.
#[derive(Default)]
struct Script {
    mode: AtomicUsize,
    runs: AtomicUsize,
}

struct Scripted {
    inner: SessionRunner,
    script: Arc<Script>,
}

impl Runner for Scripted {
    fn run(&mut self, batch: &[&[f32]]) -> Result<Vec<f32>, models::ModelError> {
        self.script.runs.fetch_add(1, Ordering::SeqCst);
        match self.script.mode.load(Ordering::SeqCst) {
            1 => Err(models::ModelError::new(
                models::ErrorKind::Internal,
                "injected failure",
            )),
            2 => panic!("injected panic"),
            3 => {
                std::thread::sleep(Duration::from_millis(400));
                self.inner.run(batch)
            }
            4 => {
                while self.script.mode.load(Ordering::SeqCst) == 4 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                self.inner.run(batch)
            }
            _ => self.inner.run(batch),
        }
    }
}

struct App {
    router: axum::Router,
    state: Arc<AppState>,
    script: Arc<Script>,
    _repo: common::Repo,
}

fn app(config: &str) -> App {
    let repo = common::Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", config);
    let opts = ServeArgs {
        model_repository: Some(repo.path().to_path_buf()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let metrics = Arc::new(Metrics::new("test"));
    let script = Arc::new(Script::default());
    let s2 = script.clone();
    let repository = Repository::new(
        repo.path().to_path_buf(),
        ControlMode::None,
        metrics.clone(),
    )
    .with_runners(Arc::new(move |session| {
        Box::new(Scripted {
            inner: SessionRunner(session),
            script: s2.clone(),
        })
    }));
    let repository = Arc::new(repository);
    assert!(repository.load_initial(&[]).is_empty());
    let state = Arc::new(AppState::new(repository, metrics, opts, "test".into()));
    state.started.store(true, Ordering::SeqCst);
    App {
        router: router(state.clone()),
        state,
        script,
        _repo: repo,
    }
}

async fn call(app: &App, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

fn predict(timeout_ms: Option<u64>) -> Request<Body> {
    let uri = match timeout_ms {
        Some(t) => format!("/v1/models/tiny/predict?timeout_ms={t}"),
        None => "/v1/models/tiny/predict".into(),
    };
    Request::post(uri)
        .header("content-type", "image/png")
        .body(Body::from(common::png(28, 28, 3)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_answering_in_process() {
    let a = app("");
    let (st, _) = call(
        &a,
        Request::get("/v2/health/ready")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = call(&a, predict(None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["predictions"][0]["label"].is_string(), "{v}");
    // Warmup runs the session before the factory wraps it: the request is the only run here.
    assert_eq!(a.script.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_is_a_json_500_and_the_next_request_is_served() {
    let a = app("");
    let (_, good) = call(&a, predict(None)).await;
    a.script.mode.store(1, Ordering::SeqCst);
    let (st, v) = call(&a, predict(None)).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("injected failure"),
        "{v}"
    );
    a.script.mode.store(0, Ordering::SeqCst);
    let (st, v) = call(&a, predict(None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["predictions"], good["predictions"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_is_a_json_500_and_the_worker_survives() {
    let a = app("");
    let (_, good) = call(&a, predict(None)).await;
    a.script.mode.store(2, Ordering::SeqCst);
    let (st, v) = call(&a, predict(None)).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(v["error"].as_str().unwrap().contains("panicked"), "{v}");
    a.script.mode.store(0, Ordering::SeqCst);
    for _ in 0..3 {
        let (st, v) = call(&a, predict(None)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["predictions"], good["predictions"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_model_times_out_requests_and_sheds_beyond_its_queue() {
    // One instance, batches of one, room for 2 admitted samples, no waiting for room.
    let a = app("max_batch_size = 1\nqueue_capacity = 2\nmax_queue_wait_ms = 0\n");
    a.script.mode.store(3, Ordering::SeqCst);
    // A deadline shorter than the stall: 504 with a JSON error.
    let (st, v) = call(&a, predict(Some(100))).await;
    assert_eq!(st, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert!(v["error"].is_string(), "{v}");
    // Several at once: the queue admits 2, the rest are refused with 429 at once.
    let mut calls = Vec::new();
    for _ in 0..6 {
        let r = a.router.clone();
        calls.push(tokio::spawn(async move {
            let resp = r.oneshot(predict(Some(5000))).await.unwrap();
            resp.status()
        }));
    }
    let mut ok = 0;
    let mut shed = 0;
    for c in calls {
        match c.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => shed += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(
        ok >= 2 && shed >= 1 && ok + shed == 6,
        "ok {ok}, shed {shed}"
    );
}

/// A body that does not decode (invalid JSON) for the v1 predict and v2 infer routes.
fn undecodable(uri: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from("{\"b64\": not json"))
        .unwrap()
}

/// Polls `cond` until it holds (the machine may pause the test for a while).
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_before_the_body_is_decoded() {
    // One instance, batches of one, room for 2 admitted samples, no waiting for room.
    let a = app("max_batch_size = 1\nqueue_capacity = 2\ninstances = 1\nmax_queue_wait_ms = 0\n");
    let lv = a.state.repo.get("tiny", None).unwrap();
    let routes = [
        "/v1/models/tiny/predict",
        "/v1/models/tiny/versions/1/predict",
        "/v2/models/tiny/infer",
        "/v2/models/tiny/versions/1/infer",
    ];
    // With room in the queue these bodies are decoded, and refused as malformed.
    for uri in routes {
        let (st, v) = call(&a, undecodable(uri)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{uri}: {v}");
    }
    // One request held in the runner, two more filling the queue.
    let held = hold_a_full_queue(&a).await;
    // Full: the same undecodable bodies now get the queue's 429 (not 400), as JSON errors with
    // Retry-After, and take no place in the queue.
    for uri in routes {
        let resp = a.router.clone().oneshot(undecodable(uri)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{uri}");
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .map(|h| h.to_str().unwrap()),
            Some("1"),
            "{uri}"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["error"].as_str(),
            Some("model \"tiny\" queue is full (2 requests)"),
            "{uri}: {v}"
        );
        assert_eq!(lv.batcher.depth(), 2);
    }
    // A valid request is refused the same way while the queue is full.
    let (st, v) = call(&a, predict(None)).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // Released, every accepted request is answered.
    a.script.mode.store(0, Ordering::SeqCst);
    for h in held {
        let (st, v) = h.await.unwrap();
        assert_eq!(st, StatusCode::OK, "{v}");
        assert!(v["predictions"][0]["label"].is_string(), "{v}");
    }
    assert_eq!(a.script.runs.load(Ordering::SeqCst), 3);
    assert_eq!(lv.batcher.depth(), 0);
    // With room again, bodies are decoded again.
    let (st, v) = call(&a, undecodable(routes[2])).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

/// Spawns `req` on the router; the handle yields its status and JSON body.
fn spawn_call(a: &App, req: Request<Body>) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let r = a.router.clone();
    tokio::spawn(async move {
        let resp = r.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    })
}

/// Blocks the runner and fills the queue of `a` (capacity 2): one request in the runner, two
/// queued. Returns their handles.
async fn hold_a_full_queue(a: &App) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    let lv = a.state.repo.get("tiny", None).unwrap();
    a.script.mode.store(4, Ordering::SeqCst);
    let mut held = vec![spawn_call(a, predict(Some(600_000)))];
    wait_for("the first request to reach the runner", || {
        a.script.runs.load(Ordering::SeqCst) == 1
    })
    .await;
    held.push(spawn_call(a, predict(Some(600_000))));
    held.push(spawn_call(a, predict(Some(600_000))));
    wait_for("the queue to fill", || lv.batcher.depth() == 2).await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_without_room_waits_for_it_unread_and_is_then_served() {
    let a =
        app("max_batch_size = 1\nqueue_capacity = 2\ninstances = 1\nmax_queue_wait_ms = 600000\n");
    let lv = a.state.repo.get("tiny", None).unwrap();
    let held = hold_a_full_queue(&a).await;
    // Beyond the capacity: a valid request on each API and an undecodable body wait for room,
    // taking no place and not answered (the undecodable one is not decoded yet).
    let waiting = vec![
        spawn_call(&a, predict(Some(600_000))),
        spawn_call(
            &a,
            Request::post("/v2/models/tiny/infer?timeout_ms=600000")
                .header("content-type", "application/json")
                .body(Body::from("{\"inputs\": not json"))
                .unwrap(),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiting.iter().all(|h| !h.is_finished()));
    assert_eq!(lv.batcher.depth(), 2);
    assert_eq!(a.script.runs.load(Ordering::SeqCst), 1);
    // Released: every request is answered; the waiters as if the queue had had room.
    a.script.mode.store(0, Ordering::SeqCst);
    for h in held {
        let (st, v) = h.await.unwrap();
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let mut waiting = waiting.into_iter();
    let (st, v) = waiting.next().unwrap().await.unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["predictions"][0]["label"].is_string(), "{v}");
    let (st, v) = waiting.next().unwrap().await.unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(a.script.runs.load(Ordering::SeqCst), 4);
    assert_eq!(lv.batcher.depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_finds_no_room_within_the_wait_is_refused_with_429() {
    let a = app("max_batch_size = 1\nqueue_capacity = 2\ninstances = 1\nmax_queue_wait_ms = 150\n");
    let lv = a.state.repo.get("tiny", None).unwrap();
    let held = hold_a_full_queue(&a).await;
    for uri in ["/v1/models/tiny/predict", "/v2/models/tiny/infer"] {
        let t = std::time::Instant::now();
        let (st, v) = call(&a, undecodable(uri)).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{uri}: {v}");
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{uri}: {:?}",
            t.elapsed()
        );
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.starts_with("model \"tiny\" queue is full (2 requests) and had no room within 1"),
            "{msg}"
        );
        assert_eq!(lv.batcher.depth(), 2);
    }
    // A request's own deadline bounds the wait too (50 ms here): still the queue's 429.
    let (st, v) = call(&a, predict(Some(50))).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    a.script.mode.store(0, Ordering::SeqCst);
    for h in held {
        let (st, v) = h.await.unwrap();
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    assert_eq!(lv.batcher.depth(), 0);
}
