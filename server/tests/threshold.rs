//! A per-model `threshold` in config.toml: a task-API answer whose top score is below it says
//! the input was not understood (no intent), is counted in a metric, and the web page says so.

mod common;

use common::*;
use serde_json::Value;

fn predict(s: &Server, model: &str) -> Value {
    let r = reqwest::blocking::Client::new()
        .post(s.url(&format!("/v1/models/{model}/predict")))
        .header("content-type", "audio/wav")
        .body(wav())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().unwrap()
}

fn load(s: &Server, model: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(s.url(&format!("/v2/repository/models/{model}/load")))
        .send()
        .unwrap()
}

#[test]
fn answers_below_the_threshold_are_not_understood() {
    let repo = Repo::new();
    repo.add("slu", 1, "slu_w3.safetensors", "");
    let path = repo.path().to_str().unwrap().to_string();
    let s = Server::start(
        &[
            "--model-repository",
            &path,
            "--model-control-mode",
            "explicit",
            "--load-model",
            "slu",
        ],
        &[],
    );

    // No threshold: always understood, intent given, no threshold echoed.
    let open = predict(&s, "slu");
    assert_eq!(open["understood"], true, "{open}");
    assert!(open["intent"]["action"].is_string(), "{open}");
    assert!(open.get("threshold").is_none(), "{open}");
    let top = open["predictions"][0]["score"].as_f64().unwrap();
    assert!(
        top > 0.0 && top < 0.99,
        "top score {top} leaves no room above it"
    );

    // The same model with a threshold above its top score, and one below it.
    let strict = (top + 1.0) / 2.0;
    let loose = top / 2.0;
    repo.add(
        "slu_strict",
        1,
        "slu_w3.safetensors",
        &format!("threshold = {strict}\n"),
    );
    repo.add(
        "slu_loose",
        1,
        "slu_w3.safetensors",
        &format!("threshold = {loose}\n"),
    );
    assert_eq!(load(&s, "slu_strict").status().as_u16(), 200);
    assert_eq!(load(&s, "slu_loose").status().as_u16(), 200);

    let no = predict(&s, "slu_strict");
    assert_eq!(no["understood"], false, "{no}");
    assert!(no.get("intent").is_none(), "a wrong intent was given: {no}");
    assert!(
        (no["threshold"].as_f64().unwrap() - strict).abs() < 1e-6,
        "{no}"
    );
    // The scores are still reported, and are the model's.
    assert_eq!(no["predictions"], open["predictions"]);
    assert_eq!(
        s.metric(
            "shiftserve_not_understood_total",
            &[("model", "slu_strict"), ("version", "1")]
        ),
        1.0
    );

    let yes = predict(&s, "slu_loose");
    assert_eq!(yes["understood"], true, "{yes}");
    assert_eq!(yes["intent"], open["intent"]);
    assert_eq!(
        s.metric(
            "shiftserve_not_understood_total",
            &[("model", "slu_loose"), ("version", "1")]
        ),
        0.0
    );

    // A threshold outside (0, 1] is a config error: the load fails and says why.
    repo.add("slu_bad", 1, "slu_w3.safetensors", "threshold = 1.5\n");
    let r = load(&s, "slu_bad");
    assert!(r.status().is_server_error() || r.status().is_client_error());
    let body: Value = r.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("threshold"),
        "{body}"
    );
}
