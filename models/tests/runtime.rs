//! The execution plan against an independent, naive interpreter of docs/format.md (written here
//! from the spec, float64 for fp32 ops, exact integers for the int8 path), on models covering
//! operators and attribute combinations the Python fixtures do not (grouped shift convs, fused
//! residuals on the float path, with-zero W4, avgpool, standalone relu/add, 2-bit int8 with a
//! non-zero zero point); plus batching, threads and input errors.

mod common;

use common::{labels, small_cnn_bytes, Rng};
use models::builder::{Conv, ModelBuilder};
use models::format::{DType, ModelFile};
use models::graph::{CodeSpec, ConvAttrs, Op, PathSpec, PoolAttrs, ShiftAttrs};
use models::{ErrorKind, Model};
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// naive reference interpreter (one sample at a time)

fn f32_of(file: &ModelFile, name: &str) -> Vec<f32> {
    let t = file.tensor(name).unwrap();
    assert_eq!(t.dtype, DType::F32);
    t.to_f32()
}

/// Decodes bit planes by the table in docs/format.md.
fn decode(file: &ModelFile, s: &ShiftAttrs, n: usize) -> Vec<i64> {
    let t = file.tensor(&s.weight).unwrap();
    let plane = n.div_ceil(8);
    (0..n)
        .map(|i| {
            let bit = |p: usize| ((t.data[p * plane + i / 8] >> (i % 8)) & 1) as i64;
            let sign = if bit(0) == 1 { -1 } else { 1 };
            let m: i64 = (1..s.bits).map(|p| bit(p) << (p - 1)).sum();
            match s.code {
                CodeSpec::ZeroFree => sign * (1 << m),
                CodeSpec::WithZero => {
                    if m == 0 {
                        0
                    } else {
                        sign * (1 << (m - 1))
                    }
                }
            }
        })
        .collect()
}

/// Input patches of a conv: cols[k][p] with k = (ci*kh + y)*kw + x within a group.
fn patches(
    x: &[f32],
    shape: &[usize],
    c: &ConvAttrs,
    group: usize,
) -> (Vec<Vec<f32>>, usize, usize) {
    let (h, w) = (shape[1], shape[2]);
    let (kh, kw) = c.kernel;
    let oh = (h + 2 * c.padding.0 - kh) / c.stride.0 + 1;
    let ow = (w + 2 * c.padding.1 - kw) / c.stride.1 + 1;
    let cg = c.in_channels / c.groups;
    let mut cols = vec![vec![0f32; oh * ow]; cg * kh * kw];
    for ci in 0..cg {
        let chan = group * cg + ci;
        for y in 0..kh {
            for xx in 0..kw {
                let k = (ci * kh + y) * kw + xx;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let iy = (oy * c.stride.0 + y) as isize - c.padding.0 as isize;
                        let ix = (ox * c.stride.1 + xx) as isize - c.padding.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            cols[k][oy * ow + ox] = x[(chan * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
            }
        }
    }
    (cols, oh, ow)
}

fn shift_matmul(
    s: &ShiftAttrs,
    wint: &[i64],
    cols: &[Vec<f32>],
    scale: f32,
    bias: f32,
) -> Vec<f32> {
    let p = cols[0].len();
    (0..p)
        .map(|pi| match s.path {
            PathSpec::Int8 {
                scale: is,
                zero_point,
            } => {
                let mut acc = 0i64;
                for (k, col) in cols.iter().enumerate() {
                    let q = ((col[pi] / is).round_ties_even() + zero_point as f32).clamp(0.0, 255.0)
                        as i64;
                    acc += wint[k] * (q - zero_point as i64);
                }
                let mul = is * scale;
                (acc as f32) * mul + bias
            }
            PathSpec::Float => {
                let mut acc = 0f32;
                for (k, col) in cols.iter().enumerate() {
                    acc += col[pi] * wint[k] as f32;
                }
                acc * scale + bias
            }
        })
        .collect()
}

fn pool(x: &[f32], shape: &[usize], p: &PoolAttrs, max: bool) -> Vec<f32> {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let oh = (h + 2 * p.padding.0 - p.kernel.0) / p.stride.0 + 1;
    let ow = (w + 2 * p.padding.1 - p.kernel.1) / p.stride.1 + 1;
    let mut out = Vec::new();
    for ch in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f64::NEG_INFINITY;
                let mut s = 0f64;
                for y in 0..p.kernel.0 {
                    for xx in 0..p.kernel.1 {
                        let iy = (oy * p.stride.0 + y) as isize - p.padding.0 as isize;
                        let ix = (ox * p.stride.1 + xx) as isize - p.padding.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            let v = x[(ch * h + iy as usize) * w + ix as usize] as f64;
                            m = m.max(v);
                            s += v;
                        }
                    }
                }
                out.push(if max {
                    m as f32
                } else {
                    (s / (p.kernel.0 * p.kernel.1) as f64) as f32
                });
            }
        }
    }
    out
}

#[allow(clippy::needless_range_loop)]
fn reference_forward(file: &ModelFile, input: &[f32]) -> Vec<f32> {
    let mut vals: HashMap<String, Vec<f32>> = HashMap::new();
    vals.insert(file.graph.input.name.clone(), input.to_vec());
    for node in &file.graph.nodes {
        let x = vals[&node.inputs[0]].clone();
        let shape = &node.input_shapes[0];
        let relu = |v: Vec<f32>, on: bool| {
            if on {
                v.into_iter().map(|a| a.max(0.0)).collect()
            } else {
                v
            }
        };
        let y: Vec<f32> = match &node.op {
            Op::Conv2d {
                conv,
                relu: r,
                weight,
                bias,
            } => {
                let w = f32_of(file, weight);
                let b = f32_of(file, bias);
                let og = conv.out_channels / conv.groups;
                let k = conv.k();
                let mut out = Vec::new();
                for g in 0..conv.groups {
                    let (cols, _, _) = patches(&x, shape, conv, g);
                    for o in g * og..(g + 1) * og {
                        for p in 0..cols[0].len() {
                            let s: f64 = (0..k)
                                .map(|kk| w[o * k + kk] as f64 * cols[kk][p] as f64)
                                .sum::<f64>()
                                + b[o] as f64;
                            out.push(s as f32);
                        }
                    }
                }
                relu(out, *r)
            }
            Op::ShiftConv2d {
                conv,
                relu: r,
                shift,
            } => {
                let k = conv.k();
                let wint = decode(file, shift, conv.out_channels * k);
                let scale = f32_of(file, &shift.scale);
                let bias = f32_of(file, &shift.bias);
                let og = conv.out_channels / conv.groups;
                let mut out = Vec::new();
                for g in 0..conv.groups {
                    let (cols, _, _) = patches(&x, shape, conv, g);
                    for o in g * og..(g + 1) * og {
                        out.extend(shift_matmul(
                            shift,
                            &wint[o * k..(o + 1) * k],
                            &cols,
                            scale[o],
                            bias[o],
                        ));
                    }
                }
                if let Some(res) = node.inputs.get(1) {
                    for (v, r) in out.iter_mut().zip(&vals[res]) {
                        *v += r;
                    }
                }
                relu(out, *r)
            }
            Op::Linear {
                in_features,
                out_features,
                relu: r,
                weight,
                bias,
            } => {
                let w = f32_of(file, weight);
                let b = f32_of(file, bias);
                let out = (0..*out_features)
                    .map(|o| {
                        ((0..*in_features)
                            .map(|i| w[o * in_features + i] as f64 * x[i] as f64)
                            .sum::<f64>()
                            + b[o] as f64) as f32
                    })
                    .collect();
                relu(out, *r)
            }
            Op::ShiftLinear {
                in_features,
                out_features,
                relu: r,
                shift,
            } => {
                let wint = decode(file, shift, in_features * out_features);
                let scale = f32_of(file, &shift.scale);
                let bias = f32_of(file, &shift.bias);
                let cols: Vec<Vec<f32>> = x.iter().map(|&v| vec![v]).collect();
                let out = (0..*out_features)
                    .flat_map(|o| {
                        shift_matmul(
                            shift,
                            &wint[o * in_features..(o + 1) * in_features],
                            &cols,
                            scale[o],
                            bias[o],
                        )
                    })
                    .collect();
                relu(out, *r)
            }
            Op::MaxPool2d(p) => pool(&x, shape, p, true),
            Op::AvgPool2d(p) => pool(&x, shape, p, false),
            Op::GlobalAvgPool => {
                let hw = shape[1] * shape[2];
                x.chunks(hw)
                    .map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32)
                    .collect()
            }
            Op::Flatten => x,
            Op::Add { relu: r } => relu(
                x.iter()
                    .zip(&vals[&node.inputs[1]])
                    .map(|(a, b)| a + b)
                    .collect(),
                *r,
            ),
            Op::Relu => relu(x, true),
            other => panic!("reference interpreter does not cover {}", other.name()),
        };
        assert_eq!(
            y.len(),
            node.output_shape.iter().product::<usize>(),
            "{}",
            node.name
        );
        vals.insert(node.output.clone(), y);
    }
    vals.remove(&file.graph.output.name).unwrap()
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    let maxabs = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.abs() + 1e-4 * maxabs;
        assert!((g - w).abs() <= tol, "{name}[{i}]: {g} vs reference {w}");
    }
}

fn inputs(len: usize, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = Rng(seed);
    (0..n).map(|_| r.vec(len, 2.0)).collect()
}

#[test]
fn small_cnn_matches_the_naive_interpreter() {
    for seed in 1..=4 {
        let bytes = small_cnn_bytes(seed);
        let file = ModelFile::from_bytes(bytes.clone()).unwrap();
        let model = Model::from_bytes(bytes).unwrap();
        let xs = inputs(3 * 12 * 12, 6, seed + 100);
        let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let mut s = model.session(6, 1);
        let out = s.run(&refs).unwrap().to_vec();
        for (i, x) in xs.iter().enumerate() {
            let want = reference_forward(&file, x);
            assert_close(
                &format!("seed {seed} sample {i}"),
                &out[i * 5..(i + 1) * 5],
                &want,
            );
        }
    }
}

/// A CIFAR-style net: 3x3 stem, basic blocks on the float path with with_zero W4 weights and a
/// strided 1x1 downsample, avgpool head.
#[test]
fn float_path_blocks_with_downsample_match_the_naive_interpreter() {
    let mut r = Rng(77);
    let mut b = ModelBuilder::new(
        "float-blocks",
        "image_classification",
        &[1, 10, 10],
        common::image_preprocess(1, 10, 10),
    );
    let x = b.conv2d(
        "stem",
        "input",
        Conv::new(1, 4, 3, 1, 1),
        true,
        &r.vec(36, 0.5),
        &r.vec(4, 0.1),
    );
    let c1 = Conv::new(4, 6, 3, 2, 1);
    let h = b
        .shift_conv2d(
            "b.conv1",
            &x,
            None,
            c1,
            true,
            &r.shift(6, c1.k(), 4, CodeSpec::WithZero, None),
        )
        .unwrap();
    let cd = Conv::new(4, 6, 1, 2, 0);
    let d = b
        .shift_conv2d(
            "b.down",
            &x,
            None,
            cd,
            false,
            &r.shift(6, cd.k(), 4, CodeSpec::WithZero, None),
        )
        .unwrap();
    let c2 = Conv::new(6, 6, 3, 1, 1);
    let y = b
        .shift_conv2d(
            "b.conv2",
            &h,
            Some(&d),
            c2,
            true,
            &r.shift(6, c2.k(), 4, CodeSpec::WithZero, None),
        )
        .unwrap();
    let p = b.pool("avg", "avgpool2d", &y, 2, 2, 0);
    let f = b.unary("flat", "flatten", &p);
    b.linear(
        "fc",
        &f,
        6 * 2 * 2,
        3,
        false,
        &r.vec(72, 0.4),
        &r.vec(3, 0.1),
    );
    let bytes = b.to_bytes(&labels(3), None).unwrap();
    let file = ModelFile::from_bytes(bytes.clone()).unwrap();
    let model = Model::from_bytes(bytes).unwrap();
    assert_eq!(model.info().numeric_path, "float");
    assert_eq!(model.info().weight_bits, vec![4]);
    let xs = inputs(100, 3, 5);
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let out = model.session(3, 2).run(&refs).unwrap().to_vec();
    for (i, x) in xs.iter().enumerate() {
        assert_close(
            &format!("sample {i}"),
            &out[i * 3..(i + 1) * 3],
            &reference_forward(&file, x),
        );
    }
}

#[test]
fn batching_and_threads_do_not_change_results() {
    let model = Model::from_bytes(small_cnn_bytes(9)).unwrap();
    let xs = inputs(3 * 12 * 12, 7, 3);
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let whole = model.session(7, 1).run(&refs).unwrap().to_vec();
    let mut s = model.session(3, 2);
    let mut pieces = Vec::new();
    for chunk in refs.chunks(3) {
        pieces.extend_from_slice(s.run(chunk).unwrap());
    }
    let mut one = model.session(1, 1);
    for (i, x) in refs.iter().enumerate() {
        let single = one.run(&[x]).unwrap();
        assert_close(&format!("single {i}"), single, &whole[i * 5..(i + 1) * 5]);
    }
    assert_close("chunked", &pieces, &whole);
    // the session is reusable: the same input again gives the same answer
    let again = model.session(7, 1).run(&refs).unwrap().to_vec();
    assert_eq!(again, whole);
}

#[test]
fn bad_batches_are_rejected_with_bad_input() {
    let model = Model::from_bytes(small_cnn_bytes(10)).unwrap();
    let mut s = model.session(2, 1);
    let good = vec![0.5f32; 3 * 12 * 12];
    let short = vec![0.5f32; 10];
    let mut nan = good.clone();
    nan[17] = f32::NAN;
    for (what, batch) in [
        ("empty", vec![]),
        ("too many", vec![good.as_slice(); 3]),
        ("short", vec![short.as_slice()]),
        ("nan", vec![good.as_slice(), nan.as_slice()]),
    ] {
        let e = s.run(&batch).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput, "{what}: {e}");
    }
    // the session still works afterwards
    assert_eq!(s.run(&[&good]).unwrap().len(), 5);
}

#[test]
fn layers_report_shapes_params_and_bytes() {
    let model = Model::from_bytes(small_cnn_bytes(11)).unwrap();
    let layers = model.layers();
    assert_eq!(layers.len(), 12);
    let conv2 = layers.iter().find(|l| l.name == "block.conv2").unwrap();
    assert_eq!(conv2.op, "shift_conv2d");
    assert_eq!(conv2.input_shape, vec![8, 6, 6]);
    assert_eq!(conv2.output_shape, vec![8, 6, 6]);
    assert_eq!(conv2.bits, Some(4));
    assert_eq!(conv2.path, Some("float"));
    // grouped: 8 outputs x (8/2 * 9) weights + scale + bias
    assert_eq!(conv2.params, 8 * 36 + 16);
    // 4 planes of ceil(288/8) bytes + 2 x 8 floats
    assert_eq!(conv2.bytes, 4 * 36 + 64);
    let info = model.info();
    assert_eq!(
        info.parameters,
        layers.iter().map(|l| l.params).sum::<u64>()
    );
    assert_eq!(info.fp32_bytes, info.parameters * 4);
    assert!(info.file_bytes > 0);
}

#[test]
fn model_is_send_and_sync_and_sessions_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Model>();
    send::<models::Session>();
}

#[test]
fn synthetic_resnet18_is_a_valid_model() {
    let cfg = models::synth::SynthConfig {
        resolution: 64,
        classes: 10,
        ..Default::default()
    };
    let m = models::synth::resnet18(&cfg).unwrap();
    let info = m.info();
    assert_eq!(info.input_shape, vec![3, 64, 64]);
    assert_eq!(info.weight_bits, vec![3]);
    assert_eq!(info.numeric_path, "int8");
    // ResNet-18 stage convs (incl. 1x1 downsamples): 11,157,504 weights + a scale and a bias per
    // output channel (4,736 channels), independent of the input size
    let shift: u64 = m
        .layers()
        .iter()
        .filter(|l| l.op == "shift_conv2d")
        .map(|l| l.params)
        .sum();
    assert_eq!(shift, 11_157_504 + 2 * 4_736);
    let x = models::synth::random_input(3 * 64 * 64, 1);
    let logits = m.session(1, 1).run(&[&x]).unwrap().to_vec();
    assert_eq!(logits.len(), 10);
    assert!(logits.iter().all(|v| v.is_finite()));
    // random low-variance weights still give distinct logits (not a collapsed network)
    let spread = logits.iter().cloned().fold(f32::MIN, f32::max)
        - logits.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1e-3, "{logits:?}");
}

/// ResNet-18's stem (direct fp32 conv, max pool, quantization) runs fused when nothing observes
/// the intermediate values and as three steps when something does: the logits are the same bits,
/// at every batch size and thread count, and the report names the fused kernel.
#[test]
fn fused_stem_and_sample_major_batches_give_the_bits_of_the_unfused_batch_major_steps() {
    let cfg = models::synth::SynthConfig {
        resolution: 64,
        classes: 10,
        ..Default::default()
    };
    let m = models::synth::resnet18(&cfg).unwrap();
    let stem = m.layer_kernels().iter().find(|k| k.node == "stem").unwrap();
    assert!(
        stem.kernel.ends_with("+ maxpool + quantize (fused)"),
        "{}",
        stem.kernel
    );
    // A batch runs the stem and layer1 sample by sample (activations larger than weights),
    // the rest over the whole batch; `run_observed` runs every step over the whole batch.
    let per_sample = m.sample_major_steps();
    assert!(
        per_sample.len() > 3 && per_sample.iter().any(|s| s == "layer1.1.conv2"),
        "{per_sample:?}"
    );
    assert!(!per_sample.iter().any(|s| s.starts_with("layer3")));
    let xs: Vec<Vec<f32>> = (0..6)
        .map(|i| models::synth::random_input(3 * 64 * 64, 40 + i))
        .collect();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    for threads in [1, 2, 3] {
        for n in [1, 2, 5, 6] {
            let mut s = m.session(6, threads);
            let fused = s.run(&refs[..n]).unwrap().to_vec();
            let mut seen = 0;
            let observed = s
                .run_observed(&refs[..n], &mut |_, _| seen += 1)
                .unwrap()
                .to_vec();
            assert!(seen > 20);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fused), bits(&observed), "threads {threads} batch {n}");
        }
    }
}
