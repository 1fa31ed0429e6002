//! Every route and status code over HTTP against the real binary. One behaviour per test: each
//! test starts its own server on its own repository and port, so tests run in any order and in
//! parallel, and one failure does not hide the others.

mod common;

use common::*;
use reqwest::blocking::multipart;
use serde_json::{json, Value};

const TINY_CFG: &str = "max_batch_size = 4\nmax_queue_delay_us = 1000\n[warmup]\nbatch_sizes = [1, 4]\niterations = 1\n";

fn start() -> (Repo, Server) {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", TINY_CFG);
    repo.add("slu", 1, "slu_w3.safetensors", "max_batch_size = 2\n");
    let path = repo.path().to_str().unwrap().to_string();
    let server = Server::start(
        &["--model-repository", &path, "--max-body-bytes", "200000"],
        &[("SHIFTSERVE_API_KEY", API_KEY)],
    );
    (repo, server)
}

fn auth(rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
    rb.bearer_auth(API_KEY)
}

fn assert_error(resp: reqwest::blocking::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: Value = resp.json().unwrap();
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {v}"))
        .to_string();
    assert!(!msg.is_empty());
    msg
}

fn top1(v: &Value) -> (String, u64) {
    let p = &v["predictions"][0];
    (
        p["label"].as_str().unwrap().to_string(),
        p["index"].as_u64().unwrap(),
    )
}

/// The inference routes: (OpenAPI path, a concrete URL for the `tiny` model).
const INFERENCE_ROUTES: [(&str, &str); 4] = [
    ("/v1/models/{m}/predict", "/v1/models/tiny/predict"),
    (
        "/v1/models/{m}/versions/{v}/predict",
        "/v1/models/tiny/versions/1/predict",
    ),
    ("/v2/models/{m}/infer", "/v2/models/tiny/infer"),
    (
        "/v2/models/{m}/versions/{v}/infer",
        "/v2/models/tiny/versions/1/infer",
    ),
];

fn openapi(s: &Server) -> Value {
    s.client
        .get(s.url("/api-doc/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn public_routes_answer_without_a_key() {
    let (_repo, s) = start();
    let c = &s.client;
    // Public routes.
    assert_eq!(
        c.get(s.url("/v2/health/live")).send().unwrap().status(),
        200
    );
    assert_eq!(
        c.get(s.url("/v2/health/ready")).send().unwrap().status(),
        200
    );
    assert_eq!(c.get(s.url("/metrics")).send().unwrap().status(), 200);
    let spec: Value = c
        .get(s.url("/api-doc/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for p in [
        "/v1/models/{m}/predict",
        "/v1/models/{m}/versions/{v}/predict",
        "/v1/models",
        "/v2/models/{m}/infer",
        "/v2/models/{m}/versions/{v}/infer",
        "/v2/models/{m}/stats",
        "/v2/repository/index",
        "/v2/repository/models/{m}/load",
        "/v2/repository/models/{m}/unload",
        "/v2/health/ready",
        "/metrics",
    ] {
        assert!(spec["paths"].get(p).is_some(), "OpenAPI lacks {p}");
    }
    let docs = c.get(s.url("/docs")).send().unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().unwrap().contains("/api-doc/openapi.json"));
}

#[test]
fn protected_routes_need_the_api_key() {
    let (_repo, s) = start();
    let c = &s.client;
    // Auth: protected routes need the key.
    let msg = assert_error(c.get(s.url("/v2")).send().unwrap(), 401);
    assert!(msg.contains("API key"));
    assert_error(
        c.get(s.url("/v2")).bearer_auth("wrong").send().unwrap(),
        401,
    );
    assert_error(
        c.post(s.url("/v1/models/tiny/predict"))
            .body(png(28, 28, 1))
            .send()
            .unwrap(),
        401,
    );
    let meta: Value = auth(c.get(s.url("/v2"))).send().unwrap().json().unwrap();
    assert_eq!(meta["name"], "shiftserve");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
}

#[test]
fn model_metadata_readiness_and_config() {
    let (_repo, s) = start();
    let c = &s.client;
    // Model metadata, readiness, config.
    let m: Value = auth(c.get(s.url("/v2/models/tiny")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m["name"], "tiny");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(
        m["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]})
    );
    assert_eq!(m["outputs"][0]["shape"], json!([-1, 10]));
    assert_eq!(
        auth(c.get(s.url("/v2/models/tiny/versions/1")))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        auth(c.get(s.url("/v2/models/tiny/ready")))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        auth(c.get(s.url("/v2/models/tiny/versions/1/ready")))
            .send()
            .unwrap()
            .status(),
        200
    );
    let cfg: Value = auth(c.get(s.url("/v2/models/tiny/config")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(cfg["max_batch_size"], 4);
    assert_eq!(
        cfg["dynamic_batching"]["max_queue_delay_microseconds"],
        1000
    );
    assert_eq!(
        auth(c.get(s.url("/v2/models/tiny/versions/1/config")))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn unknown_models_versions_routes_and_methods_are_404_or_405() {
    let (_repo, s) = start();
    let c = &s.client;
    assert!(
        assert_error(auth(c.get(s.url("/v2/models/nope"))).send().unwrap(), 404).contains("nope")
    );
    assert_error(
        auth(c.get(s.url("/v2/models/tiny/versions/7")))
            .send()
            .unwrap(),
        404,
    );
    assert_error(
        auth(c.get(s.url("/v2/models/tiny/versions/abc/ready")))
            .send()
            .unwrap(),
        404,
    );
    assert_error(
        auth(c.get(s.url("/v2/models/nope/ready"))).send().unwrap(),
        404,
    );
    assert_error(auth(c.get(s.url("/no/such/route"))).send().unwrap(), 404);
    assert_error(
        auth(c.delete(s.url("/v2/models/tiny"))).send().unwrap(),
        405,
    );
    assert_error(
        auth(c.get(s.url("/v2/models/tiny/infer"))).send().unwrap(),
        405,
    );
}

#[test]
fn repository_index_in_none_mode_lists_ready_models() {
    let (_repo, s) = start();
    let c = &s.client;
    // Repository extension in "none" mode: index works, load/unload refused.
    let idx: Value = auth(c.post(s.url("/v2/repository/index")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = idx
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["slu", "tiny"]);
    assert!(idx
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["state"] == "READY" && e["version"] == "1"));
    let ready_only: Value = auth(c.post(s.url("/v2/repository/index")))
        .json(&json!({"ready": true}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready_only.as_array().unwrap().len(), 2);
}

#[test]
fn load_and_unload_are_409_in_none_mode_and_unload_nothing() {
    let (_repo, s) = start();
    let c = &s.client;
    // Load/unload are well formed but conflict with the control mode: 409, for known and
    // unknown models alike (the mode is checked first), and nothing is unloaded.
    for path in [
        "/v2/repository/models/tiny/load",
        "/v2/repository/models/tiny/unload",
        "/v2/repository/models/nope/load",
        "/v2/repository/models/nope/unload",
    ] {
        let msg = assert_error(auth(c.post(s.url(path))).send().unwrap(), 409);
        assert!(
            msg.contains("\"none\"") && msg.contains("--model-control-mode explicit"),
            "{path}: {msg}"
        );
    }
    assert_eq!(
        auth(c.get(s.url("/v2/models/tiny/ready")))
            .send()
            .unwrap()
            .status(),
        200,
        "a refused unload left the model serving"
    );
}

#[test]
fn model_list_describes_each_model() {
    let (_repo, s) = start();
    let c = &s.client;
    // Model list.
    let list: Value = auth(c.get(s.url("/v1/models")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let tiny = models.iter().find(|m| m["name"] == "tiny").unwrap();
    assert_eq!(tiny["task"], "image_classification");
    assert_eq!(tiny["weight_bits"], json!([3]));
    assert_eq!(tiny["input"]["shape"], json!([1, 28, 28]));
    assert!(tiny["compression_ratio"].as_f64().unwrap() > 1.0);
    assert!(!tiny["kernel_isa"].as_str().unwrap().is_empty());
    let slu = models.iter().find(|m| m["name"] == "slu").unwrap();
    assert_eq!(slu["task"], "spoken_intent");
    assert_eq!(slu["input"]["kind"], "audio");
}

#[test]
fn model_list_names_a_measured_kernel_for_every_conv_layer() {
    let (_repo, s) = start();
    let c = &s.client;
    let list: Value = auth(c.get(s.url("/v1/models")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let tiny = models.iter().find(|m| m["name"] == "tiny").unwrap();
    // Per layer, what runs it; every quantized convolution has a measured kernel.
    let layers = tiny["layers"].as_array().unwrap();
    assert!(layers.len() >= 3, "{layers:?}");
    let conv_kernels: Vec<&str> = layers
        .iter()
        .filter_map(|l| l["kernel"].as_str())
        .filter(|k| k.starts_with("shift-") || k.starts_with("dot-"))
        .collect();
    assert!(conv_kernels.len() >= 3, "{layers:?}");
}

/// The raw-body v1 answer for `img`, with every property of a raw-body answer asserted.
fn check_raw_image_body_gives_sorted_top5_with_timing(s: &Server, img: &[u8]) -> Value {
    let c = &s.client;
    let raw = auth(c.post(s.url("/v1/models/tiny/predict")))
        .header("content-type", "image/png")
        .body(img.to_vec())
        .send()
        .unwrap();
    assert_eq!(raw.status(), 200);
    for h in [
        "x-request-id",
        "x-queue-time",
        "x-inference-time",
        "x-total-time",
        "x-batch-size",
    ] {
        assert!(raw.headers().contains_key(h), "missing header {h}");
    }
    assert!(
        raw.headers()["x-total-time"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    assert_eq!(raw.headers()["x-batch-size"], "1");
    let raw: Value = raw.json().unwrap();
    assert_eq!(raw["model"], "tiny");
    assert_eq!(raw["version"], "1");
    let preds = raw["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 5);
    let scores: Vec<f64> = preds.iter().map(|p| p["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {scores:?}"
    );
    assert!(scores.iter().all(|&x| (0.0..=1.0).contains(&x)));
    for k in ["queue_ms", "preprocess_ms", "inference_ms", "total_ms"] {
        assert!(raw["timing"][k].as_f64().is_some(), "timing.{k}");
    }
    assert!(raw.get("intent").is_none());
    let labels: Value = auth(c.get(s.url("/v2/models/tiny")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let (label, index) = top1(&raw);
    assert_eq!(labels["parameters"]["labels"][index as usize], json!(label));
    raw
}

#[test]
fn raw_image_body_gives_sorted_top5_with_timing() {
    let (_repo, s) = start();
    check_raw_image_body_gives_sorted_top5_with_timing(&s, &png(28, 28, 3));
}

fn check_client_request_id_is_echoed(s: &Server) {
    let c = &s.client;
    let img = png(28, 28, 3);
    let raw = check_raw_image_body_gives_sorted_top5_with_timing(s, &img);
    // A client-supplied request id is echoed.
    let r = auth(c.post(s.url("/v1/models/tiny/versions/1/predict?top_k=3")))
        .header("content-type", "image/png")
        .header("x-request-id", "abc-123")
        .body(img.clone())
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r: Value = r.json().unwrap();
    assert_eq!(r["predictions"].as_array().unwrap().len(), 3);
    assert_eq!(top1(&r), top1(&raw));
}

#[test]
fn client_request_id_is_echoed() {
    let (_repo, s) = start();
    check_client_request_id_is_echoed(&s);
}

fn check_multipart_base64_and_octet_stream_agree_with_raw_body(s: &Server) {
    let c = &s.client;
    let img = png(28, 28, 3);
    let raw = check_raw_image_body_gives_sorted_top5_with_timing(s, &img);
    // Multipart and base64 JSON give the same answer.
    let form = multipart::Form::new().part(
        "file",
        multipart::Part::bytes(img.clone())
            .file_name("x.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let mp: Value = auth(c.post(s.url("/v1/models/tiny/predict")))
        .multipart(form)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(top1(&mp), top1(&raw));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&img);
    let js: Value = auth(c.post(s.url("/v1/models/tiny/predict?top_k=100")))
        .json(&json!({ "b64": b64 }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(top1(&js), top1(&raw));
    assert_eq!(
        js["predictions"].as_array().unwrap().len(),
        10,
        "top_k is capped at the class count"
    );
    let octet: Value = auth(c.post(s.url("/v1/models/tiny/predict")))
        .header("content-type", "application/octet-stream")
        .body(img.clone())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(top1(&octet), top1(&raw));
}

#[test]
fn multipart_base64_and_octet_stream_agree_with_raw_body() {
    let (_repo, s) = start();
    check_multipart_base64_and_octet_stream_agree_with_raw_body(&s);
}

#[test]
fn spoken_intent_model_returns_intent_slots() {
    let (_repo, s) = start();
    let c = &s.client;
    // Spoken intent model with a WAV: intent slots.
    let sv: Value = auth(c.post(s.url("/v1/models/slu/predict")))
        .header("content-type", "audio/wav")
        .body(wav())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let intent = &sv["intent"];
    for k in ["action", "object", "location"] {
        assert!(intent[k].is_string(), "intent.{k} in {sv}");
    }
    let label = sv["predictions"][0]["label"].as_str().unwrap();
    assert!(label.contains(intent["action"].as_str().unwrap()));
}

fn check_unsupported_media_types_are_415(s: &Server) {
    let c = &s.client;
    let img = png(28, 28, 3);
    // Errors.
    let url = s.url("/v1/models/tiny/predict");
    assert_error(
        auth(c.post(&url))
            .header("content-type", "text/plain")
            .body("hi")
            .send()
            .unwrap(),
        415,
    );
    assert_error(
        auth(c.post(&url))
            .header("content-type", "audio/wav")
            .body(wav())
            .send()
            .unwrap(),
        415,
    );
    assert_error(
        auth(c.post(s.url("/v1/models/slu/predict")))
            .header("content-type", "image/png")
            .body(img.clone())
            .send()
            .unwrap(),
        415,
    );
    assert_error(
        auth(c.post(&url))
            .header("content-type", "audio/mpeg")
            .body(vec![0u8; 10])
            .send()
            .unwrap(),
        415,
    );
    // Undeclared garbage stays an unrecognized (unsupported) media type.
    assert_error(
        auth(c.post(&url))
            .header("content-type", "application/octet-stream")
            .body(b"not an image".to_vec())
            .send()
            .unwrap(),
        415,
    );
}

#[test]
fn unsupported_media_types_are_415() {
    let (_repo, s) = start();
    check_unsupported_media_types_are_415(&s);
}

fn check_malformed_content_of_a_supported_type_is_400(s: &Server) {
    let c = &s.client;
    let img = png(28, 28, 3);
    let url = s.url("/v1/models/tiny/predict");
    // A supported media type whose content is malformed is a bad request, not a 415.
    assert_error(
        auth(c.post(&url))
            .header("content-type", "image/png")
            .body(b"not an image".to_vec())
            .send()
            .unwrap(),
        400,
    );
    let r = auth(c.post(s.url("/v1/models/slu/predict")))
        .header("content-type", "audio/wav")
        .body(b"definitely not RIFF/WAVE bytes".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.json::<Value>().unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("declared as a WAV file"), "{msg}");
    assert_error(
        auth(c.post(&url))
            .header("content-type", "image/png")
            .body(img[..40].to_vec())
            .send()
            .unwrap(),
        400,
    );
    assert_error(
        auth(c.post(&url))
            .header("content-type", "image/png")
            .body(Vec::new())
            .send()
            .unwrap(),
        400,
    );
    assert_error(
        auth(c.post(&url))
            .json(&json!({"b64": "%%%"}))
            .send()
            .unwrap(),
        400,
    );
    assert_error(
        auth(c.post(&url))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .unwrap(),
        400,
    );
    assert_error(
        auth(c.post(format!("{url}?top_k=0")))
            .header("content-type", "image/png")
            .body(img.clone())
            .send()
            .unwrap(),
        400,
    );
    assert_error(
        auth(c.post(format!("{url}?top_k=x")))
            .header("content-type", "image/png")
            .body(img.clone())
            .send()
            .unwrap(),
        400,
    );
    let form = multipart::Form::new().text("other", "x");
    assert!(assert_error(auth(c.post(&url)).multipart(form).send().unwrap(), 400).contains("file"));
}

#[test]
fn malformed_content_of_a_supported_type_is_400() {
    let (_repo, s) = start();
    check_malformed_content_of_a_supported_type_is_400(&s);
}

fn check_oversized_bodies_are_413_before_routing(s: &Server) {
    let c = &s.client;
    let url = s.url("/v1/models/tiny/predict");
    assert_error(
        auth(c.post(&url))
            .header("content-type", "image/png")
            .body(vec![0u8; 300_000])
            .send()
            .unwrap(),
        413,
    );
    let form = multipart::Form::new().part(
        "file",
        multipart::Part::bytes(vec![0u8; 300_000]).file_name("big.png"),
    );
    assert_error(auth(c.post(&url)).multipart(form).send().unwrap(), 413);
    let m = |reason: &str| {
        s.metric(
            "shiftserve_requests_total",
            &[("model", "tiny"), ("reason", reason)],
        )
    };
    // The two 413s above declared their length: they are refused before routing, without
    // reading the body, so they are not attributed to the model (issue 10: no 100 Continue, no
    // buffering of a body known to be too large).
    assert_eq!(m("too_large"), 0.0);
}

#[test]
fn oversized_bodies_are_413_before_routing() {
    let (_repo, s) = start();
    check_oversized_bodies_are_413_before_routing(&s);
}

fn check_unknown_model_or_version_predict_is_404(s: &Server) {
    let c = &s.client;
    let img = png(28, 28, 3);
    assert_error(
        auth(c.post(s.url("/v1/models/nope/predict")))
            .body(img.clone())
            .send()
            .unwrap(),
        404,
    );
    assert_error(
        auth(c.post(s.url("/v1/models/tiny/versions/2/predict")))
            .body(img.clone())
            .send()
            .unwrap(),
        404,
    );
}

#[test]
fn unknown_model_or_version_predict_is_404() {
    let (_repo, s) = start();
    check_unknown_model_or_version_predict_is_404(&s);
}

#[test]
fn errors_that_reach_a_model_are_counted_with_their_reason() {
    let (_repo, s) = start();
    // Self-contained: makes the requests of the body-form and error tests first (5 or more
    // answers, 4 unsupported media types and at least 5 bad inputs on `tiny`; the raw-body
    // reference request is repeated, so "ok" is higher than in the old combined test).
    check_raw_image_body_gives_sorted_top5_with_timing(&s, &png(28, 28, 3));
    check_client_request_id_is_echoed(&s);
    check_multipart_base64_and_octet_stream_agree_with_raw_body(&s);
    check_unsupported_media_types_are_415(&s);
    check_malformed_content_of_a_supported_type_is_400(&s);
    check_oversized_bodies_are_413_before_routing(&s);
    check_unknown_model_or_version_predict_is_404(&s);
    // Every error above that reached a model was counted with its reason.
    let m = |reason: &str| {
        s.metric(
            "shiftserve_requests_total",
            &[("model", "tiny"), ("reason", reason)],
        )
    };
    assert!(m("ok") >= 5.0);
    assert!(m("unsupported_media") >= 4.0);
    assert!(m("bad_input") >= 5.0);
    // The two 413s above declared their length: they are refused before routing, without
    // reading the body, so they are not attributed to the model (issue 10: no 100 Continue, no
    // buffering of a body known to be too large).
    assert_eq!(m("too_large"), 0.0);
}

#[test]
fn every_documented_error_answer_is_the_error_body_schema() {
    let (_repo, s) = start();
    let spec = openapi(&s);
    // Every documented error answer of every operation is the ErrorBody schema, and the
    // answers the server gives below are all documented.
    let mut ops = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (code, resp) in op["responses"].as_object().unwrap() {
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/ErrorBody",
                        "{method} {path} {code} does not document the JSON error body"
                    );
                }
            }
            ops += 1;
        }
    }
    assert_eq!(ops, 21);
    assert_eq!(
        spec["components"]["schemas"]["ErrorBody"]["required"],
        json!(["error"])
    );
}

#[test]
fn documented_statuses_and_parameter_ranges() {
    let (_repo, s) = start();
    let spec = openapi(&s);
    let documented = |method: &str, path: &str| -> Vec<u16> {
        spec["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} not documented"))
            .keys()
            .map(|k| k.parse().unwrap())
            .collect()
    };
    let param = |method: &str, path: &str, name: &str| -> Value {
        spec["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} lacks parameter {name}"))["schema"]
            .clone()
    };
    for (doc_path, _) in INFERENCE_ROUTES {
        let codes = documented("post", doc_path);
        for code in [200, 400, 401, 404, 413, 415, 429, 503, 504] {
            assert!(codes.contains(&code), "{doc_path} does not document {code}");
        }
        for name in ["timeout_ms", "x-request-timeout-ms"] {
            let sch = param("post", doc_path, name);
            assert_eq!(sch["minimum"], 1, "{doc_path} {name}");
            assert_eq!(sch["maximum"], 4294967295u64, "{doc_path} {name}");
        }
    }
    for doc_path in [
        "/v1/models/{m}/predict",
        "/v1/models/{m}/versions/{v}/predict",
    ] {
        let sch = param("post", doc_path, "top_k");
        assert_eq!(
            (&sch["minimum"], &sch["maximum"]),
            (&json!(1), &json!(4294967295u64))
        );
    }
    for doc_path in [
        "/v2/repository/models/{m}/load",
        "/v2/repository/models/{m}/unload",
    ] {
        let codes = documented("post", doc_path);
        assert!(
            codes.contains(&409) && !codes.contains(&400),
            "{doc_path}: {codes:?}"
        );
    }
    assert!(documented("post", "/v2/repository/index").contains(&400));
}

fn check_v1_deadlines_and_top_k_out_of_range_are_400(s: &Server) {
    let c = &s.client;
    // Deadlines: 0 is refused (from the query or the header) with a message naming the
    // source; out-of-range and negative values are 400 JSON errors; the documented maximum is
    // accepted and capped by --max-timeout-ms.
    let img = png(28, 28, 3);
    let predict = |url: &str, header: Option<&str>| {
        let mut rb = auth(c.post(s.url(url)))
            .header("content-type", "image/png")
            .body(img.clone());
        if let Some(h) = header {
            rb = rb.header("x-request-timeout-ms", h);
        }
        rb.send().unwrap()
    };
    for (_, url) in &INFERENCE_ROUTES[..2] {
        let msg = assert_error(predict(&format!("{url}?timeout_ms=0"), None), 400);
        assert!(msg.starts_with("timeout_ms must be at least 1"), "{msg}");
        let msg = assert_error(predict(url, Some("0")), 400);
        assert!(
            msg.starts_with("x-request-timeout-ms must be at least 1"),
            "{msg}"
        );
        for bad in ["-1", "4294967296"] {
            let msg = assert_error(predict(&format!("{url}?timeout_ms={bad}"), None), 400);
            assert!(msg.contains("timeout_ms"), "{msg}");
            let msg = assert_error(predict(url, Some(bad)), 400);
            assert!(msg.contains("from 1 to 4294967295"), "{msg}");
        }
        // top_k: 0, negative and beyond the documented maximum are refused; the maximum
        // itself returns every class.
        for bad in ["0", "-1", "4294967296"] {
            let msg = assert_error(predict(&format!("{url}?top_k={bad}"), None), 400);
            assert!(msg.contains("top_k"), "top_k={bad}: {msg}");
        }
        let r = predict(
            &format!("{url}?top_k=4294967295&timeout_ms=4294967295"),
            None,
        );
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["predictions"].as_array().unwrap().len(), 10);
        let r = predict(&format!("{url}?top_k=2"), Some("4294967295"));
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["predictions"].as_array().unwrap().len(), 2);
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&img);
    let msg = assert_error(
        auth(c.post(s.url("/v1/models/tiny/predict")))
            .json(&json!({"b64": b64, "top_k": 4294967296u64}))
            .send()
            .unwrap(),
        400,
    );
    assert!(msg.contains("invalid JSON body"), "{msg}");
}

#[test]
fn v1_deadlines_and_top_k_out_of_range_are_400() {
    let (_repo, s) = start();
    check_v1_deadlines_and_top_k_out_of_range_are_400(&s);
}

fn check_json_arrays_are_refused_where_objects_are_expected(s: &Server) {
    let c = &s.client;
    let img = png(28, 28, 3);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&img);
    // serde would build these structs from JSON arrays; the document only allows objects.
    let msg = assert_error(
        auth(c.post(s.url("/v1/models/tiny/predict")))
            .json(&json!([b64]))
            .send()
            .unwrap(),
        400,
    );
    assert!(msg.contains("expected a JSON object"), "{msg}");
    let msg = assert_error(
        auth(c.post(s.url("/v2/models/tiny/infer")))
            .json(&json!([null, {}, [{"name": "input", "shape": [1], "datatype": "FP32"}]]))
            .send()
            .unwrap(),
        400,
    );
    assert!(msg.contains("expected a JSON object"), "{msg}");
}

#[test]
fn json_arrays_are_refused_where_objects_are_expected() {
    let (_repo, s) = start();
    check_json_arrays_are_refused_where_objects_are_expected(&s);
}

#[test]
fn infer_request_schema_states_the_structural_rules() {
    let (_repo, s) = start();
    let spec = openapi(&s);
    // The inference request schema states the server's structural rules.
    let req_schema = &spec["components"]["schemas"]["InferRequest"]["properties"];
    assert_eq!(
        (
            &req_schema["inputs"]["minItems"],
            &req_schema["inputs"]["maxItems"]
        ),
        (&json!(1), &json!(1))
    );
    assert_eq!(
        spec["components"]["schemas"]["InferInput"]["properties"]["name"]["pattern"],
        "^(input|raw)$"
    );
}

fn check_v2_zero_and_negative_deadlines_are_400(s: &Server) {
    let c = &s.client;
    let x: Vec<f32> = (0..784).map(|i| (i % 7) as f32 / 7.0).collect();
    let body = json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x}]});
    for (_, url) in &INFERENCE_ROUTES[2..] {
        let msg = assert_error(
            auth(c.post(s.url(&format!("{url}?timeout_ms=0"))))
                .json(&body)
                .send()
                .unwrap(),
            400,
        );
        assert!(msg.starts_with("timeout_ms must be at least 1"), "{msg}");
        let msg = assert_error(
            auth(c.post(s.url(url)))
                .header("x-request-timeout-ms", "0")
                .json(&body)
                .send()
                .unwrap(),
            400,
        );
        assert!(
            msg.starts_with("x-request-timeout-ms must be at least 1"),
            "{msg}"
        );
        assert_error(
            auth(c.post(s.url(&format!("{url}?timeout_ms=-1"))))
                .json(&body)
                .send()
                .unwrap(),
            400,
        );
        let r = auth(c.post(s.url(url)))
            .header("x-request-timeout-ms", "60000")
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn v2_zero_and_negative_deadlines_are_400() {
    let (_repo, s) = start();
    check_v2_zero_and_negative_deadlines_are_400(&s);
}

#[test]
fn refused_deadlines_and_top_k_count_as_bad_input() {
    let (_repo, s) = start();
    let c = &s.client;
    // Self-contained: the deadline, top_k and array-body requests of the three tests above, on
    // a fresh server, so the count below is exactly theirs (the same 17 as in the old combined
    // test, which made these requests and no other counted 400 before this check).
    check_v1_deadlines_and_top_k_out_of_range_are_400(&s);
    check_json_arrays_are_refused_where_objects_are_expected(&s);
    check_v2_zero_and_negative_deadlines_are_400(&s);
    // Refused deadlines and top_k=0 are counted as bad input like every other 400 on a known
    // model: per v1 route 5 (timeout_ms=0, three bad headers, top_k=0), plus the b64 body,
    // plus the two array bodies, plus 2 per v2 route (query and header 0). Query strings that
    // do not parse are refused before the handler runs and are not counted.
    let text = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(
        metric_sum(
            &text,
            "shiftserve_requests_total",
            &[("model", "tiny"), ("reason", "bad_input")]
        ),
        17.0
    );
}

/// No body, an empty body and JSON null list every model; other bodies are 400 JSON errors.
#[test]
fn repository_index_body_forms() {
    let (_repo, s) = start();
    let c = &s.client;
    // Repository index: no body, an empty body and JSON null all list every model; a body
    // that is neither null nor {"ready": bool} is a 400 JSON error.
    let all: Value = auth(c.post(s.url("/v2/repository/index")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    for body in ["null", " null\n", "{}", ""] {
        let r = auth(c.post(s.url("/v2/repository/index")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "body {body:?}");
        assert_eq!(r.json::<Value>().unwrap(), all, "body {body:?}");
    }
    for body in [
        r#"{"ready": {}}"#,
        r#"{"ready": null}"#,
        "[1]",
        "[]",
        "[true]",
        "true",
        "{",
    ] {
        let msg = assert_error(
            auth(c.post(s.url("/v2/repository/index")))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .unwrap(),
            400,
        );
        assert!(msg.starts_with("invalid JSON"), "body {body:?}: {msg}");
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}
fn v2_inputs() -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..784)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let y: Vec<f32> = (0..784)
        .map(|i| ((i * 11 % 53) as f32 / 26.0) - 1.0)
        .collect();
    (x, y)
}

/// Returns the logits and probabilities of the batch of two.
fn check_v2_json_tensor_batch_of_two(s: &Server) -> (Vec<f32>, Vec<f32>) {
    let c = &s.client;
    let url = s.url("/v2/models/tiny/infer");
    let (x, y) = v2_inputs();
    // JSON tensor, batch of 2, nested data accepted.
    let nested: Vec<Vec<f32>> = vec![x.clone(), y.clone()];
    let r = auth(c.post(&url))
        .json(&json!({"id": "req-1", "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": nested}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-batch-size"));
    let r: Value = r.json().unwrap();
    assert_eq!(r["id"], "req-1");
    assert_eq!(r["model_name"], "tiny");
    assert_eq!(r["model_version"], "1");
    let outs = r["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[0]["name"], "logits");
    assert_eq!(outs[0]["shape"], json!([2, 10]));
    let logits = f32s(&outs[0]["data"]);
    let probs = f32s(&outs[1]["data"]);
    assert_eq!(logits.len(), 20);
    assert!((probs[..10].iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert_ne!(
        logits[..10],
        logits[10..],
        "two different inputs gave identical logits"
    );
    (logits, probs)
}

#[test]
fn v2_json_tensor_batch_of_two() {
    let (_repo, s) = start();
    check_v2_json_tensor_batch_of_two(&s);
}

fn check_v2_classification_extension_single_sample(s: &Server) {
    let c = &s.client;
    let (x, _) = v2_inputs();
    let (_, probs) = check_v2_json_tensor_batch_of_two(s);
    // Single sample without batch dim, classification extension, only one output.
    let r: Value = auth(c.post(s.url("/v2/models/tiny/versions/1/infer")))
        .json(&json!({"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": x}],
                      "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let out = &r["outputs"][0];
    assert_eq!(out["datatype"], "BYTES");
    assert_eq!(out["shape"], json!([1, 3]));
    let first: Vec<String> = out["data"][0]
        .as_str()
        .unwrap()
        .split(':')
        .map(str::to_string)
        .collect();
    assert_eq!(first.len(), 3, "score:index:label");
    let best = (0..10)
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap();
    assert_eq!(first[1].parse::<usize>().unwrap(), best);
    assert!((first[0].parse::<f32>().unwrap() - probs[best]).abs() < 1e-4);
}

#[test]
fn v2_classification_extension_single_sample() {
    let (_repo, s) = start();
    check_v2_classification_extension_single_sample(&s);
}

fn check_v2_binary_tensor_matches_json_logits(s: &Server) {
    let c = &s.client;
    let url = s.url("/v2/models/tiny/infer");
    let (x, _) = v2_inputs();
    let (logits, _) = check_v2_json_tensor_batch_of_two(s);
    // Binary tensor extension: FP32 input in binary, logits out in binary.
    let header = json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 784 * 4}}],
                        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    for v in &x {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let r = auth(c.post(&url))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let hlen: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().unwrap();
    let h: Value = serde_json::from_slice(&bytes[..hlen]).unwrap();
    assert_eq!(h["outputs"][0]["parameters"]["binary_data_size"], 40);
    let bin: Vec<f32> = bytes[hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(bin.len(), 10);
    for (a, b) in bin.iter().zip(&logits[..10]) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "binary {a} vs json {b}"
        );
    }
}

#[test]
fn v2_binary_tensor_matches_json_logits() {
    let (_repo, s) = start();
    check_v2_binary_tensor_matches_json_logits(&s);
}

/// Returns the v1 top-1 index of `png(28, 28, 9)` and that image in base64.
fn check_v2_encoded_image_agrees_with_v1(s: &Server) -> (usize, String) {
    let c = &s.client;
    let url = s.url("/v2/models/tiny/infer");
    // Encoded image as BYTES: JSON base64, binary BYTES, and the raw binary request agree with v1.
    let img = png(28, 28, 9);
    let v1: Value = auth(c.post(s.url("/v1/models/tiny/predict")))
        .header("content-type", "image/png")
        .body(img.clone())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let v1_index = v1["predictions"][0]["index"].as_u64().unwrap() as usize;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&img);
    let r: Value = auth(c.post(&url))
        .json(
            &json!({"inputs": [{"name": "raw", "shape": [1], "datatype": "BYTES", "data": [b64]}],
                      "outputs": [{"name": "logits", "parameters": {"classification": 1}}]}),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let s1 = r["outputs"][0]["data"][0].as_str().unwrap();
    assert_eq!(
        s1.split(':').nth(1).unwrap().parse::<usize>().unwrap(),
        v1_index
    );
    let header = json!({"inputs": [{"name": "raw", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": img.len() + 4}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&(img.len() as u32).to_le_bytes());
    body.extend_from_slice(&img);
    let r: Value = auth(c.post(&url))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .body(body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let p = f32s(&r["outputs"][1]["data"]);
    assert_eq!(
        (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap(),
        v1_index
    );
    let r: Value = auth(c.post(&url))
        .header("Inference-Header-Content-Length", "0")
        .header("content-type", "application/octet-stream")
        .body(img.clone())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let p = f32s(&r["outputs"][1]["data"]);
    assert_eq!(
        (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap(),
        v1_index
    );
    (v1_index, b64)
}

/// Encoded image as BYTES: JSON base64, binary BYTES, and the raw binary request agree with v1.
#[test]
fn v2_encoded_image_agrees_with_v1() {
    let (_repo, s) = start();
    check_v2_encoded_image_agrees_with_v1(&s);
}

fn check_v2_two_encoded_images_give_one_row_each_in_order(s: &Server) {
    let c = &s.client;
    let url = s.url("/v2/models/tiny/infer");
    let (v1_index, b64) = check_v2_encoded_image_agrees_with_v1(s);
    use base64::Engine;
    // Two encoded images in one request: preprocessed in parallel, one row each, in order.
    let b64_other = base64::engine::general_purpose::STANDARD.encode(png(28, 28, 77));
    let r: Value = auth(c.post(&url))
        .json(&json!({"inputs": [{"name": "raw", "shape": [2], "datatype": "BYTES", "data": [b64_other, b64]}],
                      "outputs": [{"name": "logits"}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["outputs"][0]["shape"], json!([2, 10]));
    let two = f32s(&r["outputs"][0]["data"]);
    assert_eq!(
        (0..10)
            .max_by(|&a, &b| two[10 + a].total_cmp(&two[10 + b]))
            .unwrap(),
        v1_index
    );
}

#[test]
fn v2_two_encoded_images_give_one_row_each_in_order() {
    let (_repo, s) = start();
    check_v2_two_encoded_images_give_one_row_each_in_order(&s);
}

fn check_v2_malformed_requests_are_400(s: &Server) {
    let c = &s.client;
    let url = s.url("/v2/models/tiny/infer");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(28, 28, 9));
    // Errors.
    let bad = |body: Value| assert_error(auth(c.post(&url)).json(&body).send().unwrap(), 400);
    bad(
        json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 27], "datatype": "FP32", "data": vec![0.0; 756]}]}),
    );
    bad(
        json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": vec![0.0; 10]}]}),
    );
    bad(
        json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "BOOL", "data": vec![true; 784]}]}),
    );
    bad(json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}));
    bad(json!({"inputs": []}));
    bad(json!({"inputs": [{"name": "raw", "shape": [1], "datatype": "BYTES", "data": ["!!!"]}]}));
    bad(
        json!({"inputs": [{"name": "raw", "shape": [1], "datatype": "BYTES", "data": [b64]}], "outputs": [{"name": "nope"}]}),
    );
    bad(
        json!({"inputs": [{"name": "input", "shape": [5, 1, 28, 28], "datatype": "FP32", "data": vec![0.0; 5 * 784]}]}),
    );
    bad(json!({"no_inputs": 1}));
    assert_error(
        auth(c.post(&url))
            .header("Inference-Header-Content-Length", "999999")
            .body("{}")
            .send()
            .unwrap(),
        400,
    );
}

#[test]
fn v2_malformed_requests_are_400() {
    let (_repo, s) = start();
    check_v2_malformed_requests_are_400(&s);
}

fn check_v2_unknown_model_or_version_is_404(s: &Server) {
    let c = &s.client;
    assert_error(
        auth(c.post(s.url("/v2/models/nope/infer")))
            .json(&json!({"inputs": []}))
            .send()
            .unwrap(),
        404,
    );
    assert_error(
        auth(c.post(s.url("/v2/models/tiny/versions/3/infer")))
            .json(&json!({"inputs": []}))
            .send()
            .unwrap(),
        404,
    );
}

#[test]
fn v2_unknown_model_or_version_is_404() {
    let (_repo, s) = start();
    check_v2_unknown_model_or_version_is_404(&s);
}

fn check_v2_oversized_body_is_413(s: &Server) {
    let c = &s.client;
    let url = s.url("/v2/models/tiny/infer");
    assert_error(
        auth(c.post(&url))
            .header("Inference-Header-Content-Length", "0")
            .body(vec![0u8; 300_000])
            .send()
            .unwrap(),
        413,
    );
}

#[test]
fn v2_oversized_body_is_413() {
    let (_repo, s) = start();
    check_v2_oversized_body_is_413(&s);
}

#[test]
fn v2_statistics_reflect_the_work() {
    let (_repo, s) = start();
    let c = &s.client;
    // Self-contained: the work of the v2 tests above (which repeat the batch-of-two and
    // encoded-image requests they build on, so the counts are at least the old ones).
    check_v2_json_tensor_batch_of_two(&s);
    check_v2_classification_extension_single_sample(&s);
    check_v2_binary_tensor_matches_json_logits(&s);
    check_v2_encoded_image_agrees_with_v1(&s);
    check_v2_two_encoded_images_give_one_row_each_in_order(&s);
    check_v2_malformed_requests_are_400(&s);
    check_v2_unknown_model_or_version_is_404(&s);
    check_v2_oversized_body_is_413(&s);
    // Statistics reflect the work.
    let st: Value = auth(c.get(s.url("/v2/models/tiny/stats")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ms = &st["model_stats"][0];
    assert_eq!(ms["name"], "tiny");
    assert_eq!(ms["version"], "1");
    assert!(ms["inference_count"].as_u64().unwrap() >= 7);
    assert!(ms["execution_count"].as_u64().unwrap() >= 1);
    assert!(ms["inference_stats"]["success"]["count"].as_u64().unwrap() >= 6);
    assert!(ms["inference_stats"]["fail"]["count"].as_u64().unwrap() >= 5);
    let lat = &ms["latency_percentiles"];
    for phase in ["request", "queue", "preprocess", "inference"] {
        for p in ["p50_ms", "p90_ms", "p95_ms", "p99_ms"] {
            assert!(lat[phase][p].as_f64().is_some(), "{phase}.{p} in {lat}");
        }
    }
    assert!(
        lat["request"]["p50_ms"].as_f64().unwrap() <= lat["request"]["p99_ms"].as_f64().unwrap()
    );
    let all: Value = auth(c.get(s.url("/v2/models/stats")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 2);
    assert_eq!(
        auth(c.get(s.url("/v2/models/tiny/versions/1/stats")))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_error(
        auth(c.get(s.url("/v2/models/tiny/versions/2/stats")))
            .send()
            .unwrap(),
        404,
    );
    assert_error(
        auth(c.get(s.url("/v2/models/nope/stats"))).send().unwrap(),
        404,
    );
}

/// One successful v1 request, then the metrics exposition.
fn served_metrics(s: &Server) -> String {
    let c = &s.client;
    let ok = auth(c.post(s.url("/v1/models/tiny/predict")))
        .header("content-type", "image/png")
        .body(png(28, 28, 5))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    c.get(s.url("/metrics")).send().unwrap().text().unwrap()
}

/// Parses the exposition strictly; returns the metric names.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (_n, t) = (it.next().unwrap(), it.next().unwrap());
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if let Some(l) = series.strip_prefix(name) {
            if !l.is_empty() {
                assert!(l.starts_with('{') && l.ends_with('}'), "{line}");
            }
        }
        names.insert(name.to_string());
    }
    names
}

#[test]
fn metrics_exposition_parses() {
    let (_repo, s) = start();
    let names = metric_names(&served_metrics(&s));
    assert!(!names.is_empty());
}

#[test]
fn metrics_cover_documented_names() {
    let (_repo, s) = start();
    let names = metric_names(&served_metrics(&s));
    // The names documented in docs/metrics.md.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .unwrap();
    let documented: Vec<String> = doc
        .split('`')
        .filter(|w| {
            (w.starts_with("shiftserve_") || w.starts_with("nv_") || w.starts_with("process_"))
                && !w.contains(' ')
        })
        .map(|w| w.split('{').next().unwrap().to_string())
        .collect();
    assert!(
        documented.len() >= 20,
        "docs/metrics.md lists too few names: {documented:?}"
    );
    for d in &documented {
        let present = names.contains(d)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| names.contains(&format!("{d}{s}")));
        assert!(present, "documented metric {d} is not exported");
    }
}

#[test]
fn metrics_count_served_requests() {
    let (_repo, s) = start();
    let text = served_metrics(&s);
    assert_eq!(
        metric_sum(
            &text,
            "shiftserve_model_ready",
            &[("model", "tiny"), ("version", "1")]
        ),
        1.0
    );
    assert!(metric_sum(&text, "nv_inference_count", &[("model", "tiny")]) >= 1.0);
    assert!(
        metric_sum(
            &text,
            "shiftserve_request_duration_seconds_count",
            &[("model", "tiny")]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &text,
            "shiftserve_batch_size_bucket",
            &[("model", "tiny"), ("le", "1")]
        ) >= 1.0
    );
    assert_eq!(metric_sum(&text, "shiftserve_build_info", &[]), 1.0);
    assert!(text.contains("le=\"0.0005\""));
}

#[test]
fn metrics_name_each_layers_kernel() {
    let (_repo, s) = start();
    let text = served_metrics(&s);
    // One info series per layer of the loaded version, naming its kernel.
    let layer_series = text
        .lines()
        .filter(|l| l.starts_with("shiftserve_layer_kernel_info{") && l.contains("model=\"tiny\""))
        .count();
    assert!(layer_series >= 3, "{text}");
    assert!(
        metric_sum(&text, "shiftserve_layer_kernel_info", &[("model", "tiny")])
            == layer_series as f64
    );
}
