//! Golden tests: every model fixture exported by the Python package (`models/tests/fixtures/
//! <name>.safetensors` with `<name>.golden.safetensors` holding `input` and `logits` from
//! `shiftserve_train.reference.forward`) must load, and the Rust runtime must agree: top-1
//! identical and every logit within `RTOL * |ref| + ATOL`.
//!
//! Tolerance: RTOL = 1e-4 (the bar). ATOL = 1e-4 * max|logit of that sample|: a logit
//! near zero carries the absolute rounding error of the whole logit vector (the fp32 classifier
//! sums `in_features` products whose magnitudes are of the order of the largest logits, in a
//! different order than the float64 reference), so its relative error is meaningless on its own.

use std::path::{Path, PathBuf};

use models::Model;
use safetensors::{Dtype, SafeTensors};

const RTOL: f32 = 1e-4;
const ATOL_FRACTION_OF_MAX: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name} must be F32");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// Compares one fixture; returns the worst error relative to the per-element tolerance.
fn check_fixture(model_path: &Path, golden_path: &Path) -> f32 {
    let name = model_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let model = Model::open(model_path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let bytes = std::fs::read(golden_path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (in_shape, input) = f32s(&st, "input");
    let (out_shape, logits) = f32s(&st, "logits");
    let batch = in_shape[0];
    let per: usize = in_shape[1..].iter().product();
    assert_eq!(
        &in_shape[1..],
        model.info().input_shape.as_slice(),
        "{name}: golden input shape"
    );
    let classes = out_shape[1];
    assert_eq!(classes, model.info().labels.len());
    let samples: Vec<&[f32]> = input.chunks_exact(per).collect();

    // Whole batch in one session, and again in two sessions with other batch sizes and
    // threads: all must agree with the reference.
    let mut worst = 0f32;
    for (max_batch, threads) in [(batch, 1), (batch.div_ceil(2).max(1), 2)] {
        let mut session = model.session(max_batch, threads);
        for (ci, chunk) in samples.chunks(max_batch).enumerate() {
            let out = session
                .run(chunk)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .to_vec();
            for (i, got) in out.chunks_exact(classes).enumerate() {
                let s = ci * max_batch + i;
                let want = &logits[s * classes..(s + 1) * classes];
                let maxabs = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
                    let tol = RTOL * w.abs() + ATOL_FRACTION_OF_MAX * maxabs;
                    let err = (g - w).abs();
                    worst = worst.max(err / tol);
                    assert!(
                        err <= tol,
                        "{name}: sample {s} logit {j}: rust {g} vs reference {w} (|diff| {err:e} > tol {tol:e}, batch {max_batch}, threads {threads})"
                    );
                }
                assert_eq!(
                    argmax(got),
                    argmax(want),
                    "{name}: sample {s} top-1 differs"
                );
            }
        }
    }
    worst
}

#[test]
fn every_exported_fixture_matches_its_golden_logits() {
    let dir = fixtures();
    let mut checked = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let fname = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = fname.strip_suffix(".safetensors") else {
            continue;
        };
        if stem.ends_with(".golden") {
            continue;
        }
        let golden = dir.join(format!("{stem}.golden.safetensors"));
        if !golden.exists() {
            continue;
        }
        let worst = check_fixture(&path, &golden);
        eprintln!("{stem}: worst error = {worst:.3} x tolerance");
        checked.push(stem.to_string());
    }
    assert!(
        checked.iter().any(|s| s == "tiny_w3"),
        "tiny_w3 fixture missing; checked {checked:?}"
    );
}

/// Per-node comparison for fixtures that carry `node.<name>` tensors: localises a disagreement.
#[test]
fn tiny_w3_intermediate_values_match_the_reference() {
    let dir = fixtures();
    let model = Model::open(&dir.join("tiny_w3.safetensors")).unwrap();
    let bytes = std::fs::read(dir.join("tiny_w3.golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (in_shape, input) = f32s(&st, "input");
    let per: usize = in_shape[1..].iter().product();
    let samples: Vec<&[f32]> = input.chunks_exact(per).collect();
    let mut session = model.session(samples.len(), 1);
    let mut compared = 0;
    let mut failures = Vec::new();
    session
        .run_observed(&samples, &mut |node, values| {
            let key = format!("node.{node}");
            if st.tensor(&key).is_err() {
                return;
            }
            let (_, want) = f32s(&st, &key);
            assert_eq!(want.len(), values.len(), "{key}: size");
            let maxabs = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = values
                .iter()
                .zip(&want)
                .map(|(g, w)| {
                    (g - w).abs() / (RTOL * w.abs() + ATOL_FRACTION_OF_MAX * maxabs + 1e-30)
                })
                .fold(0f32, f32::max);
            if worst > 1.0 {
                failures.push(format!("{node}: worst {worst:.2} x tolerance"));
            }
            compared += 1;
        })
        .unwrap();
    assert!(compared > 3, "only {compared} nodes compared");
    assert!(failures.is_empty(), "nodes off the reference: {failures:?}");
}
