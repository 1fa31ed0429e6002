//! End-to-end batch latency of the synthetic ResNet-18 (224x224, random low-variance weights):
//! W3 on the int8 path and on the float path, against the fp32 twin (same network, every shift
//! conv an fp32 `conv2d` through the `gemm` crate) measured in the same run.
//!
//! A second table times the small exported fixtures (SLU shift ResNet, dense and MPS LSTMs) at
//! batch 1 and 8 and reports the batching gain `8 * t(1) / t(8)` (samples per second at batch 8
//! over batch 1), since the LSTMs are batched across samples.
//!
//! `cargo bench -p models` (set `SHIFTSERVE_BENCH_REPS` for more repetitions, default 7;
//! `SHIFTSERVE_BENCH_RES` for another resolution, default 224). Prints medians and ratios;
//! the machine is shared and noisy, so compare ratios, not absolute numbers across runs.

use std::time::Instant;

use models::synth::{random_input, resnet18, SynthConfig};
use models::Model;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median seconds per batch.
fn time_batch(model: &Model, batch: usize, threads: usize, reps: usize) -> f64 {
    let len: usize = model.info().input_shape.iter().product();
    let xs: Vec<Vec<f32>> = (0..batch).map(|i| random_input(len, i as u64)).collect();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let mut s = model.session(batch, threads);
    s.run(&refs).expect("warm-up run");
    let times = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let out = s.run(&refs).expect("run");
            std::hint::black_box(out);
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(times)
}

/// Median seconds per node for one sample on one thread, by op kind.
fn per_op(model: &Model, reps: usize) -> Vec<(String, f64)> {
    let len: usize = model.info().input_shape.iter().product();
    let x = random_input(len, 7);
    let mut s = model.session(1, 1);
    s.run(&[&x]).expect("warm-up");
    let mut per_rep: Vec<std::collections::BTreeMap<String, f64>> = Vec::new();
    for _ in 0..reps {
        let mut totals = std::collections::BTreeMap::new();
        let mut last = Instant::now();
        let ops: std::collections::HashMap<&str, &str> = model
            .layers()
            .iter()
            .map(|l| (l.name.as_str(), l.op))
            .collect();
        s.run_observed(&[&x], &mut |node, _| {
            let now = Instant::now();
            let key = ops.get(node).map(|op| op.to_string()).unwrap_or_default();
            *totals.entry(key).or_insert(0.0) += (now - last).as_secs_f64();
            last = now;
        })
        .expect("run");
        per_rep.push(totals);
    }
    per_rep[0]
        .keys()
        .map(|k| (k.clone(), median(per_rep.iter().map(|m| m[k]).collect())))
        .collect()
}

fn main() {
    // cargo bench passes `--bench`; a filter argument is accepted and ignored
    let reps: usize = std::env::var("SHIFTSERVE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let res: usize = std::env::var("SHIFTSERVE_BENCH_RES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(224);
    let base = SynthConfig {
        resolution: res,
        ..SynthConfig::default()
    };
    let variants = [
        ("fp32 twin (baseline)", SynthConfig { fp32: true, ..base }),
        ("W3 int8", base),
        (
            "W3 float",
            SynthConfig {
                int8: false,
                ..base
            },
        ),
    ];
    let models: Vec<(&str, Model)> = variants
        .iter()
        .map(|(name, cfg)| {
            (
                *name,
                resnet18(cfg).unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        })
        .collect();
    println!(
        "synthetic ResNet-18 {res}x{res}, kernel ISA {}, median of {reps} runs",
        models::kernel_isa()
    );
    for (name, m) in &models {
        println!(
            "  {name:<22} file {:>6.2} MB, {} parameters",
            m.info().file_bytes as f64 / 1e6,
            m.info().parameters
        );
    }
    println!();
    println!("time by operator, batch 1, 1 thread (ms):");
    for (name, m) in &models {
        let parts: Vec<String> = per_op(m, reps)
            .into_iter()
            .map(|(op, t)| format!("{op} {:.1}", t * 1e3))
            .collect();
        println!("  {name:<22} {}", parts.join(", "));
    }
    println!();
    println!(
        "{:<22} {:>5} {:>7} {:>12} {:>12} {:>10}",
        "model", "batch", "threads", "ms/batch", "images/s", "vs fp32"
    );
    for &(batch, threads) in &[(1usize, 1usize), (1, 2), (8, 1), (8, 2)] {
        let mut baseline = None;
        for (name, m) in &models {
            let t = time_batch(m, batch, threads, reps);
            let base = *baseline.get_or_insert(t);
            println!(
                "{name:<22} {batch:>5} {threads:>7} {:>12.2} {:>12.1} {:>9.2}x",
                t * 1e3,
                batch as f64 / t,
                base / t
            );
        }
    }

    println!();
    println!("exported fixtures (models/tests/fixtures), 1 thread:");
    println!(
        "{:<16} {:>14} {:>14} {:>14}",
        "model", "ms batch 1", "ms batch 8", "batching gain"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in [
        "slu_w3",
        "dense_lstm",
        "tt_lstm",
        "tiny_w3",
        "bottleneck_w4",
    ] {
        let path = dir.join(format!("{name}.safetensors"));
        let Ok(m) = Model::open(&path) else {
            println!("{name:<16} (missing)");
            continue;
        };
        let t1 = time_batch(&m, 1, 1, reps * 3);
        let t8 = time_batch(&m, 8, 1, reps * 3);
        println!(
            "{name:<16} {:>14.3} {:>14.3} {:>13.2}x",
            t1 * 1e3,
            t8 * 1e3,
            8.0 * t1 / t8
        );
    }
}
