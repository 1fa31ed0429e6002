//! Served answers do not move by one bit: the logits of every bundled model (on the bundled
//! request fixtures and on deterministic tensors), of every exported test fixture and of the
//! synthetic ResNet-18 variants are compared bit for bit with `fixtures/answers.json`, recorded
//! from the runtime before the quantized NHWC runtime and the dot-product kernels existed.
//! Kernel choice (automatic, or `SHIFTSERVE_KERNEL` restricted to the multiplication-free family
//! or to one instruction set), batch size and thread count must not change a single bit.
//!
//! Re-record (only when a change is *meant* to change answers, and say so in the commit):
//! `SHIFTSERVE_BLESS_ANSWERS=1 cargo test --release -p models --test answers`.
//!
//! One file per float class of CPU ([`float_class`]): `answers.json` for AVX-512 CPUs,
//! `answers-avx2.json` for AVX2-only x86 (recorded 2026-12-02 on a Zen 3 core at commit
//! `3c4148f`'s runtime plus the bit-identical AVX2 epilogue; the AVX-512 record was checked
//! unchanged on every landing since it was made). The `bundled/fashion` entries of both were
//! re-recorded on 2026-12-03 for the retrained width-32 `fashion` (a new model, meant to change
//! answers): the AVX-512 ones on a Zen-5-class core, the AVX2 ones under
//! `qemu-x86_64-static -cpu max` (AVX2+FMA, no AVX-512), which reproduced every other entry of
//! the Zen 3 record bit for bit except `synth/resnet18-fp32-twin-64px`, whose `gemm` blocking
//! follows the reported cache sizes (those entries were kept from the Zen 3 record). The
//! `bundled/digits` entries of both were re-recorded the same way, the same day, for the
//! retrained width-24 `digits` (again meant; the qemu run again reproduced every other entry but
//! those `synth/resnet18-fp32-twin-64px` ones). The `f32` layers that use the `gemm` crate
//! round differently on the two classes, so their bits are not comparable across classes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use models::synth::{self, SynthConfig};
use models::{InputLimits, MediaHint, Model};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The float instruction class of this CPU. The bits of the `f32` layers that go through the
/// `gemm` crate (classifiers, LSTM matrices, im2col convolutions) depend on the micro-kernel it
/// picks for the CPU (AVX-512, AVX2+FMA or other), so answers are recorded once per class: the
/// integer path, the direct stem and every kernel choice are CPU-independent, the `gemm` crate's
/// summation order is not.
fn float_class() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2";
        }
    }
    "other"
}

/// `answers.json` (AVX-512 CPUs: recorded before the quantized NHWC runtime and the
/// dot-product kernels existed) or `answers-<class>.json` for other CPU classes.
fn answers_file() -> PathBuf {
    let name = match float_class() {
        "avx512" => "answers.json".to_string(),
        c => format!("answers-{c}.json"),
    };
    workspace().join("models/tests/fixtures").join(name)
}

/// Deterministic inputs roughly in the range of normalised features.
fn tensor(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn hex(v: &[f32]) -> Vec<String> {
    v.iter().map(|x| format!("{:08x}", x.to_bits())).collect()
}

/// Logits of `inputs` run as one batch and each alone, with 1 and 2 threads. Every form is
/// recorded on its own: the runtime before this change was not batch-invariant for every model
/// (the LSTM's fp32 products went through `gemm` with batch-dependent blocking), and the record
/// keeps exactly what it served.
fn answer(out: &mut BTreeMap<String, Vec<String>>, key: &str, model: &Model, inputs: &[Vec<f32>]) {
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    for threads in [1, 2] {
        let mut many = model.session(inputs.len(), threads);
        let batch = many.run(&refs).unwrap_or_else(|e| panic!("{key}: {e}"));
        out.insert(
            format!("{key}/batch{}/threads{threads}", inputs.len()),
            hex(batch),
        );
        let mut one = model.session(1, threads);
        let mut singles = Vec::new();
        for x in &refs {
            singles.extend(hex(one.run(&[x]).unwrap()));
        }
        out.insert(format!("{key}/batch1/threads{threads}"), singles);
    }
}

fn collect() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let ws = workspace();
    let fixtures = ws.join("loadtest/fixtures");
    let bundled: [(&str, &str); 4] = [
        ("fashion", "shirt.png"),
        ("digits", "digit.wav"),
        ("intent", "intent.wav"),
        ("intent-lstm", "intent.wav"),
    ];
    for (name, file) in bundled {
        let model = Model::open(
            &ws.join("models/repository")
                .join(name)
                .join("1/model.safetensors"),
        )
        .unwrap();
        let bytes = std::fs::read(fixtures.join(file)).unwrap();
        let x = model
            .preprocess(&bytes, MediaHint::Unknown, &InputLimits::default())
            .unwrap();
        let len = x.len();
        let inputs = vec![x, tensor(len, 1), tensor(len, 2)];
        answer(&mut out, &format!("bundled/{name}"), &model, &inputs);
    }
    let fx = ws.join("models/tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&fx)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| {
            n.ends_with(".safetensors") && !n.contains(".golden.") && !n.starts_with("preprocess")
        })
        .collect();
    names.sort();
    for n in names {
        let model = Model::open(&fx.join(&n)).unwrap();
        let len: usize = model.info().input_shape.iter().product();
        let inputs: Vec<Vec<f32>> = (0..3).map(|i| tensor(len, 10 + i)).collect();
        answer(&mut out, &format!("fixture/{n}"), &model, &inputs);
    }
    let synths = [
        (
            "w3-int8",
            SynthConfig {
                bits: 3,
                ..Default::default()
            },
        ),
        (
            "w2-int8",
            SynthConfig {
                bits: 2,
                ..Default::default()
            },
        ),
        (
            "w4-int8",
            SynthConfig {
                bits: 4,
                ..Default::default()
            },
        ),
        (
            "w3-float",
            SynthConfig {
                int8: false,
                ..Default::default()
            },
        ),
        (
            "fp32-twin",
            SynthConfig {
                fp32: true,
                ..Default::default()
            },
        ),
    ];
    for (key, cfg) in synths {
        let cfg = SynthConfig {
            resolution: 64,
            classes: 10,
            seed: 7,
            ..cfg
        };
        let model = synth::resnet18(&cfg).unwrap();
        let len: usize = model.info().input_shape.iter().product();
        let inputs: Vec<Vec<f32>> = (0..2).map(|i| synth::random_input(len, 20 + i)).collect();
        answer(
            &mut out,
            &format!("synth/resnet18-{key}-64px"),
            &model,
            &inputs,
        );
    }
    out
}

#[test]
fn served_answers_are_bit_identical_to_the_recorded_ones() {
    let got = collect();
    let path = answers_file();
    if std::env::var("SHIFTSERVE_BLESS_ANSWERS").as_deref() == Ok("1") {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        eprintln!("recorded {} answers in {}", got.len(), path.display());
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (no answers recorded for this CPU's float class `{}`; record them with \
             SHIFTSERVE_BLESS_ANSWERS=1 on such a CPU, from a commit whose answers are known good)",
            path.display(),
            float_class()
        )
    });
    let want: BTreeMap<String, Vec<String>> = serde_json::from_str(&text).unwrap();
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the set of recorded answers changed"
    );
    let mut bad = Vec::new();
    for (k, w) in &want {
        let g = &got[k];
        let diff = w.iter().zip(g).filter(|(a, b)| a != b).count();
        if diff > 0 || w.len() != g.len() {
            bad.push(format!("{k}: {diff} of {} logits differ", w.len()));
        }
    }
    assert!(
        bad.is_empty(),
        "answers moved (kernel {:?}): {bad:?}",
        std::env::var("SHIFTSERVE_KERNEL").ok()
    );
}
