//! End-to-end batch latency of the synthetic ResNet-18 (224x224, random low-variance weights):
//! W3 on the int8 path and on the float path, against the fp32 twin (same network, every shift
//! conv an fp32 `conv2d` through the `gemm` crate) measured in the same run.
//!
//! A second table times the small exported fixtures (SLU shift ResNet, dense and MPS LSTMs) at
//! batch 1 and 8 and reports the batching gain `8 * t(1) / t(8)` (samples per second at batch 8
//! over batch 1), since the LSTMs are batched across samples.
//!
//! `cargo bench -p models` (set `SHIFTSERVE_BENCH_REPS` for more repetitions, default 7;
//! `SHIFTSERVE_BENCH_RES` for another resolution, default 224; `SHIFTSERVE_BENCH_ONLY=fixtures`
//! skips ResNet-18). Time by operator is printed per sample at batch 1 and 8. Prints medians and ratios;
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
    time_batch_min(model, batch, threads, reps).0
}

/// (median, minimum) seconds per batch. On a shared machine a long run is more likely to be
/// preempted than a short one, which inflates the median of large batches; the minimum is the
/// least disturbed run.
fn time_batch_min(model: &Model, batch: usize, threads: usize, reps: usize) -> (f64, f64) {
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
        .collect::<Vec<f64>>();
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    (median(times), min)
}

/// Median seconds per node for a batch of `batch` on one thread, by op kind.
fn per_op(model: &Model, batch: usize, reps: usize) -> Vec<(String, f64)> {
    let len: usize = model.info().input_shape.iter().product();
    let xs: Vec<Vec<f32>> = (0..batch).map(|i| random_input(len, i as u64)).collect();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let mut s = model.session(batch, 1);
    s.run(&refs).expect("warm-up");
    let mut per_rep: Vec<std::collections::BTreeMap<String, f64>> = Vec::new();
    for _ in 0..reps {
        let mut totals = std::collections::BTreeMap::new();
        let mut last;
        let ops: std::collections::HashMap<&str, &str> = model
            .layers()
            .iter()
            .map(|l| (l.name.as_str(), l.op))
            .collect();
        last = Instant::now();
        s.run_observed(&refs, &mut |node, _| {
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
    // `SHIFTSERVE_BENCH_ONLY=fixtures` skips the ResNet-18 tables
    let only = std::env::var("SHIFTSERVE_BENCH_ONLY").unwrap_or_default();
    if only != "fixtures" {
        resnet(reps, res);
    }
    fixtures(reps);
}

fn resnet(reps: usize, res: usize) {
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
    for batch in [1usize, 8] {
        println!("time by operator, batch {batch}, 1 thread (ms per sample):");
        for (name, m) in &models {
            let parts: Vec<String> = per_op(m, batch, reps)
                .into_iter()
                .map(|(op, t)| format!("{op} {:.1}", t * 1e3 / batch as f64))
                .collect();
            println!("  {name:<22} {}", parts.join(", "));
        }
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
}

fn fixtures(reps: usize) {
    println!();
    println!("exported fixtures (models/tests/fixtures), 1 thread:");
    println!(
        "{:<16} {:>14} {:>14} {:>14} {:>18}",
        "model", "ms batch 1", "ms batch 8", "batching gain", "gain (of minima)"
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
        let (t1, m1) = time_batch_min(&m, 1, 1, reps * 3);
        let (t8, m8) = time_batch_min(&m, 8, 1, reps * 3);
        println!(
            "{name:<16} {:>14.3} {:>14.3} {:>13.2}x {:>17.2}x",
            t1 * 1e3,
            t8 * 1e3,
            8.0 * t1 / t8,
            8.0 * m1 / m8
        );
    }
    println!();
    println!("fixtures by operator, 1 thread (ms per sample, batch 1 / batch 8):");
    for name in ["slu_w3", "tiny_w3"] {
        let Ok(m) = Model::open(&dir.join(format!("{name}.safetensors"))) else {
            continue;
        };
        let b1 = per_op(&m, 1, reps * 3);
        let b8 = per_op(&m, 8, reps * 3);
        let parts: Vec<String> = b1
            .iter()
            .zip(&b8)
            .map(|((op, t1), (_, t8))| format!("{op} {:.3}/{:.3}", t1 * 1e3, t8 * 1e3 / 8.0))
            .collect();
        println!("  {name:<14} {}", parts.join(", "));
    }
}
