//! The quantized runtime (`QConv2d`: padded NHWC `u8` in, fused epilogue out) against the
//! layer the format defines (`ShiftConv2d`, f32 NCHW in and out, requantized output): every
//! kernel this CPU supports, dot-product and multiplication-free, must give the same bits for
//! random geometry (ragged channel counts and pixel tails, strides, paddings, borders wider than
//! the padding), every code and width the kernel can hold, residuals, ReLU, several `u8`
//! consumers and 1-3 worker threads.
//!
//! Case counts: `KERNELS_PROPTEST_CASES` (default 256 on x86-64, 8 elsewhere).

#![allow(clippy::too_many_arguments)]
mod common;
use common::Rng;
use common::*;
use kernels::qconv::{
    nchw_to_nhwc, nhwc_to_nchw, quantize_nchw_to_u8, EpilogueImpl, F32Layout, U8Layout,
};
use kernels::*;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("KERNELS_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(target_arch = "x86_64") { 256 } else { 8 })
}

fn code_strategy() -> impl Strategy<Value = (Code, u8)> {
    prop_oneof![
        3 => (Just(Code::ZeroFree), 2u8..=4),
        1 => (Just(Code::WithZero), 2u8..=5),
    ]
}

struct Case {
    geom: ConvGeom,
    n: usize,
    h: usize,
    w: usize,
    packed: PackedShift,
    scale: Vec<f32>,
    bias: Vec<f32>,
    inq: Quant,
    outq: [Quant; 2],
    x: Vec<f32>,
    residual: Option<Vec<f32>>,
    relu: bool,
}

fn make_case(
    (code, bits): (Code, u8),
    in_c: usize,
    out_c: usize,
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    hw: (usize, usize),
    n: usize,
    residual: bool,
    relu: bool,
    seed: u64,
) -> Option<Case> {
    let mut rng = Rng::new(seed);
    let geom = ConvGeom {
        in_c,
        out_c,
        kh: k.0,
        kw: k.1,
        stride,
        pad,
        groups: 1,
    };
    let (oh, ow) = geom.out_hw(hw.0, hw.1).ok()?;
    let kk = geom.k();
    if (kk as i64) * code.max_abs(bits) as i64 * 255 > i32::MAX as i64 {
        return None;
    }
    let packed = random_weights(&mut rng, code, bits, out_c, kk);
    let scale: Vec<f32> = (0..out_c).map(|_| 0.001 + rng.f32().abs() * 0.01).collect();
    let bias: Vec<f32> = (0..out_c).map(|_| rng.f32() * 0.5).collect();
    let q =
        |rng: &mut Rng| Quant::new(0.005 + rng.f32().abs() * 0.05, rng.below(256) as i32).unwrap();
    let inq = q(&mut rng);
    let outq = [q(&mut rng), q(&mut rng)];
    let x: Vec<f32> = (0..n * in_c * hw.0 * hw.1)
        .map(|_| rng.f32() * 4.0)
        .collect();
    let residual = residual.then(|| (0..n * out_c * oh * ow).map(|_| rng.f32() * 2.0).collect());
    Some(Case {
        geom,
        n,
        h: hw.0,
        w: hw.1,
        packed,
        scale,
        bias,
        inq,
        outq,
        x,
        residual,
        relu,
    })
}

/// The format's layer: f32 out and both requantized outputs, NCHW.
fn reference(c: &Case) -> (Vec<f32>, Vec<u8>, Vec<u8>) {
    let layer = ShiftConv2d::new(
        c.geom,
        c.packed.clone(),
        c.scale.clone(),
        c.bias.clone(),
        NumericPath::Int8 {
            scale: c.inq.scale,
            zero_point: c.inq.zero_point,
        },
        Isa::Scalar,
    )
    .unwrap();
    let (oh, ow) = c.geom.out_hw(c.h, c.w).unwrap();
    let len = c.n * c.geom.out_c * oh * ow;
    let mut ws = Workspace::new();
    let ep = || Epilogue {
        residual: c.residual.as_deref(),
        relu: c.relu,
    };
    let mut f = vec![0f32; len];
    layer
        .forward(&c.x, c.n, c.h, c.w, ep(), &mut f, &mut ws, 1)
        .unwrap();
    let mut u = [vec![0u8; len], vec![0u8; len]];
    for (i, buf) in u.iter_mut().enumerate() {
        layer
            .forward_to(
                Input::F32(&c.x),
                c.n,
                c.h,
                c.w,
                ep(),
                Output::U8 {
                    out: buf,
                    quant: c.outq[i],
                },
                &mut ws,
                1,
            )
            .unwrap();
    }
    let [u0, u1] = u;
    (f, u0, u1)
}

/// Which outputs a run asks the layer for: the model asks for one `u8` consumer and, for a
/// block output, an NHWC `f32` copy (the epilogue's specialised whole-vector path); the full set
/// takes the general path.
#[derive(Clone, Copy, Debug)]
struct Outs {
    nchw: bool,
    nhwc: bool,
    n_u8: usize,
}

const ALL_OUTS: Outs = Outs {
    nchw: true,
    nhwc: true,
    n_u8: 2,
};

fn run_kernel(
    c: &Case,
    kernel: ConvKernel,
    epilogue: EpilogueImpl,
    extra_border: usize,
    threads: usize,
) -> (Vec<f32>, Vec<f32>, Vec<u8>, Vec<u8>) {
    let (nchw, nhwc, mut u) = run_kernel_outs(c, kernel, epilogue, extra_border, threads, ALL_OUTS);
    let u1 = u.pop().unwrap();
    let u0 = u.pop().unwrap();
    (nchw.unwrap(), nhwc.unwrap(), u0, u1)
}

/// NCHW `f32`, NHWC `f32` converted to NCHW (each absent when not asked for), and the `u8`
/// outputs converted to NCHW.
type RunOutputs = (Option<Vec<f32>>, Option<Vec<f32>>, Vec<Vec<u8>>);

/// The layer's outputs in NCHW order (absent when not asked for).
fn run_kernel_outs(
    c: &Case,
    kernel: ConvKernel,
    epilogue: EpilogueImpl,
    extra_border: usize,
    threads: usize,
    outs: Outs,
) -> RunOutputs {
    let g = c.geom;
    let mut layer = QConv2d::new(g, &c.packed, &c.scale, &c.bias, c.inq, kernel).unwrap();
    layer.set_epilogue(epilogue).unwrap();
    let (oh, ow) = g.out_hw(c.h, c.w).unwrap();
    let xl = U8Layout::new(c.h, c.w, g.in_c, g.pad.0.max(g.pad.1) + extra_border);
    let mut xq = vec![c.inq.zero_point as u8; c.n * xl.sample_len()];
    quantize_nchw_to_u8(&c.x, c.n, xl, c.inq, &mut xq).unwrap();
    let fl = F32Layout::new(oh, ow, g.out_c);
    let res_nhwc = c.residual.as_ref().map(|r| {
        let mut v = vec![f32::NAN; c.n * fl.sample_len()];
        nchw_to_nhwc(r, c.n, fl, &mut v).unwrap();
        v
    });
    // Two u8 consumers with different borders and quantizations.
    let ul = [
        U8Layout::new(oh, ow, g.out_c, 1),
        U8Layout::new(oh, ow, g.out_c, 0),
    ];
    let mut ub: Vec<Vec<u8>> = (0..2)
        .map(|i| vec![c.outq[i].zero_point as u8; c.n * ul[i].sample_len()])
        .collect();
    let mut fnhwc = vec![f32::NAN; c.n * fl.sample_len()];
    let mut fnchw = vec![f32::NAN; c.n * g.out_c * oh * ow];
    {
        let (b0, b1) = ub.split_at_mut(1);
        let targets = [
            U8Target::new(&mut b0[0], ul[0], c.outq[0]),
            U8Target::new(&mut b1[0], ul[1], c.outq[1]),
        ];
        let targets = &targets[..outs.n_u8];
        let workers = Workers::new(threads);
        let mut scratch = QScratch::new();
        layer
            .forward(
                &xq,
                xl,
                c.n,
                res_nhwc.as_deref().map(|r| (r, fl)),
                c.relu,
                QOutputs {
                    u8s: targets,
                    f32_nhwc: outs.nhwc.then_some((&mut fnhwc[..], fl)),
                    f32_nchw: outs.nchw.then_some(&mut fnchw[..]),
                },
                &mut scratch,
                &workers,
            )
            .unwrap();
    }
    let mut from_nhwc = vec![0f32; fnchw.len()];
    nhwc_to_nchw(&fnhwc, c.n, fl, &mut from_nhwc).unwrap();
    // u8 interiors back to NCHW; borders must still hold the zero point.
    let mut u = Vec::new();
    for i in 0..outs.n_u8 {
        let l = ul[i];
        let mut v = vec![0u8; c.n * g.out_c * oh * ow];
        for b in 0..c.n {
            for y in 0..oh {
                for x in 0..ow {
                    for ch in 0..g.out_c {
                        v[((b * g.out_c + ch) * oh + y) * ow + x] = ub[i][l.offset(b, y, x) + ch];
                    }
                }
            }
            for yy in 0..oh + 2 * l.border {
                for xx in 0..ow + 2 * l.border {
                    let inside = yy >= l.border
                        && yy < oh + l.border
                        && xx >= l.border
                        && xx < ow + l.border;
                    if !inside {
                        let o = b * l.sample_len() + yy * l.row_stride() + xx * l.cs;
                        assert!(
                            ub[i][o..o + l.cs]
                                .iter()
                                .all(|&q| q == c.outq[i].zero_point as u8),
                            "border overwritten"
                        );
                    }
                }
            }
        }
        u.push(v);
    }
    (
        outs.nchw.then_some(fnchw),
        outs.nhwc.then_some(from_nhwc),
        u,
    )
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn check_all_kernels(
    c: &Case,
    extra_border: usize,
    threads: usize,
) -> Result<usize, TestCaseError> {
    let (f, u0, u1) = reference(c);
    let mut ran = 0;
    for kernel in ConvKernel::supported() {
        if !kernel.handles(c.packed.code(), c.packed.bits()) {
            continue;
        }
        // Every epilogue implementation this CPU runs, behind every kernel.
        for epi in EpilogueImpl::supported() {
            let (nchw, nhwc, q0, q1) = run_kernel(c, kernel, epi, extra_border, threads);
            let e = epi.name();
            prop_assert!(
                bits_eq(&nchw, &f),
                "{kernel} / {e} epilogue: f32 NCHW differs from the reference"
            );
            prop_assert!(
                bits_eq(&nhwc, &f),
                "{kernel} / {e} epilogue: f32 NHWC differs from the reference"
            );
            prop_assert_eq!(
                &q0,
                &u0,
                "{} / {} epilogue: requantized output 0 differs",
                kernel,
                e
            );
            prop_assert_eq!(
                &q1,
                &u1,
                "{} / {} epilogue: requantized output 1 differs",
                kernel,
                e
            );
            ran += 1;
        }
    }
    Ok(ran)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_kernel_matches_the_format_layer(
        code in code_strategy(),
        in_c in prop_oneof![1usize..9, 9usize..70],
        out_c in prop_oneof![1usize..17, 17usize..140],
        kh in 1usize..4, kw in 1usize..4,
        sh in 1usize..3, sw in 1usize..3,
        ph in 0usize..3, pw in 0usize..3,
        h in 1usize..14, w in 1usize..14,
        n in 1usize..4,
        residual in any::<bool>(),
        relu in any::<bool>(),
        extra_border in 0usize..2,
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        let c = make_case(code, in_c, out_c, (kh, kw), (sh, sw), (ph, pw), (h, w), n, residual, relu, seed);
        if let Some(c) = c {
            let ran = check_all_kernels(&c, extra_border, threads)?;
            prop_assert!(ran >= 1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// The outputs a model asks for (one `u8` consumer, with or without the NHWC `f32` copy of a
    /// block output, or the `f32` copy alone), on channel counts that are whole vectors (the
    /// epilogue's specialised path) and ragged ones (its general path): every kernel and
    /// epilogue gives the reference's bits.
    #[test]
    fn model_output_sets_match_the_format_layer(
        code in code_strategy(),
        in_c in prop_oneof![1usize..9, 9usize..70],
        out_c in prop_oneof![3 => (1usize..9).prop_map(|v| v * 16), 1 => 1usize..140],
        k in 1usize..4,
        s in 1usize..3,
        h in 1usize..12, w in 1usize..12,
        n in 1usize..4,
        residual in any::<bool>(),
        relu in any::<bool>(),
        outs in prop_oneof![
            Just(Outs { nchw: false, nhwc: false, n_u8: 1 }),
            Just(Outs { nchw: false, nhwc: true, n_u8: 1 }),
            Just(Outs { nchw: false, nhwc: true, n_u8: 0 }),
        ],
        threads in 1usize..3,
        seed in any::<u64>(),
    ) {
        let c = make_case(code, in_c, out_c, (k, k), (s, s), (k / 2, k / 2), (h, w), n, residual, relu, seed);
        if let Some(c) = c {
            let (f, u0, _) = reference(&c);
            let mut ran = 0;
            for kernel in ConvKernel::supported() {
                if !kernel.handles(c.packed.code(), c.packed.bits()) {
                    continue;
                }
                for epi in EpilogueImpl::supported() {
                    let (_, nhwc, u) = run_kernel_outs(&c, kernel, epi, 0, threads, outs);
                    let e = epi.name();
                    if let Some(nhwc) = nhwc {
                        prop_assert!(bits_eq(&nhwc, &f), "{kernel} / {e} epilogue, {outs:?}: f32 NHWC differs");
                    }
                    if outs.n_u8 == 1 {
                        prop_assert!(u[0] == u0, "{kernel} / {e} epilogue, {outs:?}: u8 output differs");
                    }
                    ran += 1;
                }
            }
            prop_assert!(ran >= 1);
        }
    }
}

/// ResNet-shaped layers (64-multiple channels, many pixels: full tiles, several tasks).
#[test]
fn resnet_shapes_match_on_every_kernel() {
    for (i, &(c, o, k, s, hw)) in [
        (64, 64, 3, 1, 14),
        (64, 128, 3, 2, 14),
        (64, 128, 1, 2, 14),
        (128, 128, 3, 1, 7),
    ]
    .iter()
    .enumerate()
    {
        let case = make_case(
            (Code::ZeroFree, 3),
            c,
            o,
            (k, k),
            (s, s),
            (k / 2, k / 2),
            (hw, hw),
            2,
            i % 2 == 0,
            true,
            i as u64,
        )
        .unwrap();
        for threads in [1, 2] {
            let ran = check_all_kernels(&case, 0, threads).unwrap();
            assert!(ran >= 2, "only {ran} kernels ran");
        }
    }
}

/// Values of y/scale exactly on and next to half-integers go through exact division.
#[test]
fn requantization_ties_round_like_division() {
    let q = Quant::new(0.1, 7).unwrap();
    let fq = kernels::qconv::FastQuant::new(q);
    let mut rng = Rng::new(3);
    for _ in 0..20000 {
        let k = (rng.below(2400) as f32 - 1200.0) + 0.5;
        let base = k * 0.1;
        let mut y = [0f32; 16];
        for (i, v) in y.iter_mut().enumerate() {
            let ulps = i as i32 - 8;
            *v = f32::from_bits((base.to_bits() as i32 + ulps) as u32);
        }
        let mut got = [0u8; 16];
        fq.quantize16(&y, &mut got);
        for i in 0..16 {
            assert_eq!(got[i], q.quantize(y[i]), "y = {:e}", y[i]);
        }
        // The vector implementations, on full groups and ragged tails.
        for epi in EpilogueImpl::supported() {
            for len in [16, 11, 8, 3] {
                let mut v = [0u8; 16];
                epi.quantize(&y[..len], &mut v[..len], &fq).unwrap();
                for i in 0..len {
                    assert_eq!(
                        v[i],
                        q.quantize(y[i]),
                        "{} epilogue, y = {:e}",
                        epi.name(),
                        y[i]
                    );
                }
            }
        }
    }
}

/// Special values through every requantization implementation: NaN, infinities, signed zeros,
/// saturation at both ends, subnormals and a scale whose reciprocal is not normal.
#[test]
fn requantization_special_values_match_on_every_epilogue() {
    let ys = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        1e30,
        -1e30,
        51.15,
        -51.15,
        25.65,
        0.05,
        -0.05,
        0.15,
        12.75,
    ];
    for q in [
        Quant::new(0.1, 7).unwrap(),
        Quant::new(0.1, 0).unwrap(),
        Quant::new(0.05, 255).unwrap(),
        Quant::new(1e-39, 128).unwrap(),
        Quant::new(3e38, 3).unwrap(),
    ] {
        let fq = kernels::qconv::FastQuant::new(q);
        for epi in EpilogueImpl::supported() {
            let mut v = [0u8; 16];
            epi.quantize(&ys, &mut v, &fq).unwrap();
            for i in 0..16 {
                assert_eq!(
                    v[i],
                    q.quantize(ys[i]),
                    "{} epilogue, scale {:e}, y = {:e}",
                    epi.name(),
                    q.scale,
                    ys[i]
                );
            }
        }
    }
}
