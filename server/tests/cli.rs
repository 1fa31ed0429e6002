//! `shiftserve inspect`, `run` and `bench` on the committed fixtures.

mod common;

use common::*;
use std::process::Command;

fn shiftserve(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_shows_layers_bits_and_compression() {
    let f = fixture("tiny_w3.safetensors");
    let (ok, out, err) = shiftserve(&["inspect", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("task         image_classification"));
    assert!(out.contains("weight bits  W3"));
    assert!(out.contains("compression"));
    let shift_rows = out
        .lines()
        .filter(|l| l.contains("shift_conv2d") && l.contains(" 3 "))
        .count();
    assert!(shift_rows >= 3, "{out}");
    let ratio: f64 = out
        .lines()
        .find(|l| l.starts_with("compression"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.trim_end_matches('x').parse().ok())
        .unwrap();
    assert!(ratio > 2.0 && ratio < 32.0, "{ratio}");
    // The last column names the kernel measured fastest for each quantized convolution.
    for l in out.lines().filter(|l| l.contains("shift_conv2d")) {
        let k = l.split_whitespace().last().unwrap();
        assert!(k.starts_with("shift-") || k.starts_with("dot-"), "{l}");
    }
}

/// The bundled tensor-train LSTM model.
fn intent_lstm() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/repository/intent-lstm/1/model.safetensors")
}

/// (core params, core bytes, dense params) of every `lstm_tt` node, read from the file's own
/// safetensors header: the cores' shapes and byte ranges, and `4H x (I + H)` with `H` from the
/// bias `[4H]` and `I` from the product of the `ih` input modes.
fn tt_storage_from_header(path: &std::path::Path) -> (u64, u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let graph: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["shiftserve.graph"].as_str().unwrap()).unwrap();
    let (mut params, mut core_bytes, mut dense) = (0u64, 0u64, 0u64);
    let mut nodes = 0;
    for node in graph["nodes"].as_array().unwrap() {
        if node["op"] != "lstm_tt" {
            continue;
        }
        nodes += 1;
        let name = node["name"].as_str().unwrap();
        for (key, t) in header.as_object().unwrap() {
            if key.starts_with(&format!("{name}.ih.core"))
                || key.starts_with(&format!("{name}.hh.core"))
            {
                let shape = t["shape"].as_array().unwrap();
                params += shape.iter().map(|d| d.as_u64().unwrap()).product::<u64>();
                let off = t["data_offsets"].as_array().unwrap();
                core_bytes += off[1].as_u64().unwrap() - off[0].as_u64().unwrap();
            }
        }
        let gates = header[node["bias"].as_str().unwrap()]["shape"][0]
            .as_u64()
            .unwrap();
        let input: u64 = node["ih"]["in_modes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_u64().unwrap())
            .product();
        dense += gates * (input + gates / 4);
    }
    assert_eq!(nodes, 1, "the bundled intent-lstm has one lstm_tt node");
    (params, core_bytes, dense)
}

#[test]
fn inspect_and_model_list_report_tensor_train_storage_against_the_dense_lstm() {
    let f = intent_lstm();
    let (params, core_bytes, dense) = tt_storage_from_header(&f);
    // intent-lstm: hidden 128, 40 log-mel inputs -> dense W_ih + W_hh = 512 x 168
    assert_eq!(dense, 512 * 168);
    assert_eq!(core_bytes, 4 * params);
    let (ok, out, err) = shiftserve(&["inspect", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("weight bits  none (fp32 tensor-train cores)"),
        "{out}"
    );
    let line = out.lines().find(|l| l.starts_with("tt-lstm")).expect(&out);
    let pct = 100.0 * params as f64 / dense as f64;
    assert!(
        line.starts_with(&format!(
            "tt-lstm      {params} params vs {dense} dense ({pct:.1} %)"
        )),
        "{line}"
    );
    assert!(pct < 10.0, "{line}");
    let vs_dense = out.lines().find(|l| l.starts_with("vs dense")).expect(&out);
    let file_bytes = std::fs::metadata(&f).unwrap().len();
    let total_params: u64 = out
        .lines()
        .find(|l| l.starts_with("parameters"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap();
    let dense_model = 4 * (total_params - params + dense);
    assert!(
        vs_dense.contains(&format!(
            "{:.2}x vs the fp32 model with dense LSTM matrices ({dense_model} bytes)",
            dense_model as f64 / file_bytes as f64
        )),
        "{vs_dense}"
    );
    // A model without lstm_tt has neither line.
    let (ok, out, _) = shiftserve(&["inspect", fixture("tiny_w3.safetensors").to_str().unwrap()]);
    assert!(
        ok && !out.contains("tt-lstm") && !out.contains("vs dense"),
        "{out}"
    );

    // /v1/models reports the same figures.
    let repo = Repo::new();
    let dir = repo.path().join("intent-lstm");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "max_batch_size = 1\n").unwrap();
    repo.add_bytes_version("intent-lstm", 1, &std::fs::read(&f).unwrap());
    repo.add("tiny", 1, "tiny_w3.safetensors", "max_batch_size = 1\n");
    let s = Server::start(&["--model-repository", repo.path().to_str().unwrap()], &[]);
    let list: serde_json::Value = s
        .client
        .get(s.url("/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let models = list["models"].as_array().unwrap();
    let m = models.iter().find(|m| m["name"] == "intent-lstm").unwrap();
    let tt = &m["tensor_train"];
    assert_eq!(tt["params"], params, "{m}");
    assert_eq!(tt["bytes"], core_bytes);
    assert_eq!(tt["dense_params"], dense);
    assert_eq!(tt["dense_bytes"], 4 * dense);
    let frac = tt["storage_fraction"].as_f64().unwrap();
    assert!(
        (frac - params as f64 / dense as f64).abs() < 1e-12,
        "{frac}"
    );
    let tiny = models.iter().find(|m| m["name"] == "tiny").unwrap();
    assert!(tiny.get("tensor_train").is_none(), "{tiny}");
}

#[test]
fn inspect_reports_the_kernel_policy_restriction() {
    let f = fixture("tiny_w3.safetensors");
    let out = Command::new(bin())
        .args(["inspect", f.to_str().unwrap()])
        .env("SHIFTSERVE_KERNEL", "shift")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let convs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("shift_conv2d"))
        .collect();
    assert!(convs.len() >= 3, "{text}");
    for l in convs {
        assert!(
            l.split_whitespace().last().unwrap().starts_with("shift-"),
            "{l}"
        );
    }
    let bad = Command::new(bin())
        .args(["inspect", f.to_str().unwrap()])
        .env("SHIFTSERVE_KERNEL", "no-such-kernel")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-such-kernel"));
}

#[test]
fn run_classifies_an_image_and_a_wav() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    std::fs::write(&img, png(28, 28, 4)).unwrap();
    let (ok, out, err) = shiftserve(&[
        "run",
        fixture("tiny_w3.safetensors").to_str().unwrap(),
        img.to_str().unwrap(),
        "--top-k",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert!(preds[0]["score"].as_f64().unwrap() >= preds[1]["score"].as_f64().unwrap());

    let wav = fixture("audio/pcm16_16k_mono.wav");
    let (ok, out, err) = shiftserve(&[
        "run",
        fixture("slu_w3.safetensors").to_str().unwrap(),
        wav.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("intent: action="), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("(class ")).count(), 5);

    // Errors are messages, not panics.
    let (ok, _, err) = shiftserve(&[
        "run",
        fixture("tiny_w3.safetensors").to_str().unwrap(),
        wav.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.starts_with("shiftserve: "), "{err}");
    assert!(!err.contains("panicked"));
    let (ok, _, err) = shiftserve(&["inspect", "/nonexistent/model.safetensors"]);
    assert!(
        !ok && err.contains("/nonexistent/model.safetensors"),
        "{err}"
    );
}

#[test]
fn bench_prints_percentiles_and_throughput() {
    let f = fixture("tiny_w3.safetensors");
    let (ok, out, err) = shiftserve(&[
        "bench",
        f.to_str().unwrap(),
        "--batch",
        "1,2",
        "--threads",
        "1,2",
        "--seconds",
        "0",
        "--min-iters",
        "3",
        "--warmup",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("p50 ms")
            && out.contains("p90 ms")
            && out.contains("p99 ms")
            && out.contains("samples/s")
    );
    // The summary table: the rows after the header, up to the load-average line.
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with("load average"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    for r in &rows {
        assert!(r[2].parse::<usize>().unwrap() >= 3);
        let (p50, p90, p99): (f64, f64, f64) = (
            r[3].parse().unwrap(),
            r[4].parse().unwrap(),
            r[5].parse().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p90 && p90 <= p99, "{out}");
        assert!(r[6].parse::<f64>().unwrap() > 0.0);
    }
    assert_eq!(rows[0][7], "1.00x");
    // The per-layer table names every layer's kernel and its time.
    let layers = out
        .split("per layer, threads 1 batch 1")
        .nth(1)
        .expect(&out);
    for node in ["stem", "layer1.0.conv1", "fc"] {
        let line = layers
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("{node}: {out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols[1].parse::<f64>().unwrap() >= 0.0, "{line}");
        assert!(cols.len() >= 4, "{line}");
    }
    assert!(
        layers.contains("dot-") || layers.contains("shift-"),
        "{out}"
    );
    let (ok, _, err) = shiftserve(&["bench", "--batch", "0", f.to_str().unwrap()]);
    assert!(!ok && err.contains("positive"), "{err}");
}
