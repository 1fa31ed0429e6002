//! Requests that once took the whole server down, each its own test: they must get a JSON 400
//! and leave the process serving.

mod common;

use common::*;
use serde_json::{json, Value};

fn start() -> (Repo, Server) {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "max_batch_size = 4\n");
    let path = repo.path().to_str().unwrap().to_string();
    // A body limit large enough for the requests below: the sizes they declare must be refused
    // from the shape, not from the body.
    let server = Server::start(
        &["--model-repository", &path, "--max-body-bytes", "4000000"],
        &[],
    );
    (repo, server)
}

/// The shape of one sample of the `tiny` fixture, and its element count.
fn sample_shape(s: &Server) -> (Vec<i64>, usize) {
    let meta: Value = s
        .client
        .get(s.url("/v2/models/tiny"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let shape: Vec<i64> = meta["inputs"][0]["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .filter(|&d| d != -1)
        .collect();
    let n = shape.iter().product::<i64>() as usize;
    (shape, n)
}

fn post_infer(s: &Server, body: &Value) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/v2/models/tiny/infer"))
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn assert_still_serving(s: &Server) {
    let r = s.client.get(s.url("/v2/health/live")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (shape, n) = sample_shape(s);
    let mut full = vec![1i64];
    full.extend(&shape);
    let (status, v) = post_infer(
        s,
        &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": full, "data": vec![0.5f32; n]}]}),
    );
    assert_eq!(status, 200, "{v}");
}

/// Issue 10, case 1: shape[0] = 10^7 with one sample of data made the server reserve ~250 GB
/// and abort.
#[test]
fn huge_declared_batch_in_json_is_refused_before_allocation() {
    let (_repo, s) = start();
    let (shape, n) = sample_shape(&s);
    for batch in [10_000_000i64, 1_000_000, 5] {
        let mut full = vec![batch];
        full.extend(&shape);
        let (status, v) = post_infer(
            &s,
            &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": full, "data": vec![0.0f32; n]}]}),
        );
        assert_eq!(status, 400, "batch {batch}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("max_batch_size"), "{msg}");
    }
    assert_still_serving(&s);
}

/// A shape whose element count overflows `usize`, and a zero batch.
#[test]
fn overflowing_and_empty_shapes_are_refused() {
    let (_repo, s) = start();
    let (shape, n) = sample_shape(&s);
    let mut huge = vec![i64::MAX, i64::MAX];
    huge.extend(&shape);
    let mut zero = vec![0i64];
    zero.extend(&shape);
    for full in [huge, zero] {
        let (status, v) = post_infer(
            &s,
            &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": full, "data": vec![0.0f32; n]}]}),
        );
        assert_eq!(status, 400, "{v}");
    }
    assert_still_serving(&s);
}

/// BYTES input whose shape declares a billion encoded elements.
#[test]
fn huge_bytes_shape_is_refused() {
    let (_repo, s) = start();
    let (status, v) = post_infer(
        &s,
        &json!({"inputs": [{"name": "raw", "datatype": "BYTES", "shape": [1_000_000_000i64], "data": ["AAAA"]}]}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("max_batch_size"),
        "{v}"
    );
    assert_still_serving(&s);
}

/// A binary tensor request whose declared `binary_data_size` exceeds what follows (and `usize`).
#[test]
fn binary_sizes_beyond_the_body_are_refused() {
    let (_repo, s) = start();
    let (shape, n) = sample_shape(&s);
    let mut full = vec![1i64];
    full.extend(&shape);
    for declared in [u64::MAX, (n * 4 + 4) as u64, 1u64 << 40] {
        let header = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": full,
            "parameters": {"binary_data_size": declared}}]})
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(std::iter::repeat_n(0u8, n * 4));
        let r = s
            .client
            .post(s.url("/v2/models/tiny/infer"))
            .header("inference-header-content-length", header.len().to_string())
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{declared}");
    }
    assert_still_serving(&s);
}

/// The same output requested many times multiplied the answer: each output is named at most
/// once, and a shape has at most 16 dimensions.
#[test]
fn repeated_outputs_and_deep_shapes_are_refused() {
    let (_repo, s) = start();
    let (shape, n) = sample_shape(&s);
    let mut full = vec![1i64];
    full.extend(&shape);
    let outputs: Vec<Value> = (0..10_000).map(|_| json!({"name": "logits"})).collect();
    let (status, v) = post_infer(
        &s,
        &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": full, "data": vec![0.0f32; n]}],
            "outputs": outputs}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("outputs"), "{v}");
    let (status, v) = post_infer(
        &s,
        &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": vec![1i64; 100_000], "data": [0.0]}]}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("dimensions"), "{v}");
    assert_still_serving(&s);
}
