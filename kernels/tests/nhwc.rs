//! The NHWC forms of the float layers the quantized runtime uses around its convolutions: the
//! direct fp32 convolution (a fused multiply-add chain in `k` order on every instruction set,
//! and bit-identical to the im2col + `gemm` layer wherever its load-time check says so, which
//! must hold for the stems the bundled models use), NHWC max pooling (identical to NCHW, NaN and
//! signed zeros included) and NHWC requantization; and the fused stem (direct conv, max pool,
//! quantization in one pass), which must give exactly the bits of the three steps in turn.

mod common;
use common::Rng;
use kernels::qconv::{
    nchw_to_nhwc, nhwc_to_nchw, quantize_nchw_to_u8, quantize_nhwc_to_u8, F32Layout, U8Layout,
};
use kernels::FusedScratch;
use kernels::*;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("KERNELS_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(target_arch = "x86_64") { 128 } else { 8 })
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The stems of ResNet-18 (7x7/2, 3 channels at 224x224) and of the bundled models pass the
/// load-time check, so they run on the direct kernel with the bits they were served with.
#[test]
fn resnet_and_bundled_stems_pass_the_gemm_check() {
    for (c, o, k, s, p, h, w) in [
        (3, 64, 7, 2, 3, 224, 224),
        (1, 16, 3, 1, 1, 28, 28),
        (1, 16, 7, 2, 3, 40, 151),
        (1, 16, 7, 2, 3, 32, 101),
    ] {
        let g = ConvGeom {
            in_c: c,
            out_c: o,
            kh: k,
            kw: k,
            stride: (s, s),
            pad: (p, p),
            groups: 1,
        };
        let mut rng = Rng::new(9);
        let layer =
            Conv2dF32::new(g, (0..o * g.k()).map(|_| rng.f32()).collect(), vec![0.0; o]).unwrap();
        assert!(
            layer.direct_matches_gemm(h, w, best_isa()),
            "{g:?} at {h}x{w}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn direct_conv_equals_the_gemm_layer(
        in_c in 1usize..6, out_c in 1usize..80,
        kh in 1usize..8, kw in 1usize..8, sh in 1usize..3, sw in 1usize..3,
        ph in 0usize..4, pw in 0usize..4, h in 1usize..20, w in 1usize..20, n in 1usize..3,
        relu in any::<bool>(), threads in 1usize..4, seed in any::<u64>(),
    ) {
        let g = ConvGeom { in_c, out_c, kh, kw, stride: (sh, sw), pad: (ph, pw), groups: 1 };
        prop_assume!(g.k() <= 256);
        let Ok((oh, ow)) = g.out_hw(h, w) else { return Ok(()) };
        let mut rng = Rng::new(seed);
        let wt: Vec<f32> = (0..out_c * g.k()).map(|_| rng.f32()).collect();
        let b: Vec<f32> = (0..out_c).map(|_| rng.f32() * 0.1).collect();
        let x: Vec<f32> = (0..n * in_c * h * w).map(|_| rng.f32() * 3.0).collect();
        let layer = Conv2dF32::new(g, wt.clone(), b.clone()).unwrap();
        prop_assert!(layer.has_direct());
        // The defined order: fma chain over k from +0.0, padding taps as zeros, + bias, ReLU.
        let mut chain = vec![0f32; n * out_c * oh * ow];
        for bi in 0..n { for o in 0..out_c { for oy in 0..oh { for ox in 0..ow {
            let mut acc = 0f32;
            for ci in 0..in_c { for ky in 0..kh { for kx in 0..kw {
                let (iy, ix) = ((oy * sh + ky) as isize - ph as isize, (ox * sw + kx) as isize - pw as isize);
                let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize { 0.0 }
                    else { x[((bi * in_c + ci) * h + iy as usize) * w + ix as usize] };
                acc = wt[o * g.k() + (ci * kh + ky) * kw + kx].mul_add(v, acc);
            }}}
            let mut y = acc + b[o];
            if relu && y < 0.0 { y = 0.0; }
            chain[((bi * out_c + o) * oh + oy) * ow + ox] = y;
        }}}}
        let mut gemm_out = vec![0f32; chain.len()];
        layer.forward(&x, n, h, w, Epilogue { residual: None, relu }, &mut gemm_out, &mut Workspace::new(), 1).unwrap();
        let ol = F32Layout::new(oh, ow, out_c);
        let workers = Workers::new(threads);
        let checked = layer.direct_matches_gemm(h, w, best_isa());
        for isa in available_isas() {
            let mut got = vec![f32::NAN; n * ol.sample_len()];
            let mut pad = Vec::new();
            layer.forward_nhwc(&x, n, h, w, relu, &mut got, ol, &mut pad, &workers, isa).unwrap();
            let mut back = vec![0f32; chain.len()];
            nhwc_to_nchw(&got, n, ol, &mut back).unwrap();
            prop_assert!(bits_eq(&back, &chain), "{isa}: direct conv is not the fma chain");
            if checked {
                prop_assert!(bits_eq(&back, &gemm_out), "{isa}: checked equal to gemm, but differs");
            }
        }
    }

    #[test]
    fn nhwc_max_pool_equals_nchw(
        c in 1usize..40, h in 1usize..12, w in 1usize..12, k in 1usize..4, s in 1usize..3,
        p in 0usize..2, n in 1usize..3, seed in any::<u64>(),
    ) {
        let pool = Pool2d { kernel: (k, k), stride: (s, s), pad: (p, p) };
        let Ok((oh, ow)) = pool.out_hw(h, w) else { return Ok(()) };
        let mut rng = Rng::new(seed);
        let specials = [0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0];
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|_| if rng.below(5) == 0 { specials[rng.below(specials.len())] } else { rng.f32() })
            .collect();
        let mut want = vec![0f32; n * c * oh * ow];
        max_pool2d(&x, n, c, h, w, pool, &mut want).unwrap();
        let (xl, ol) = (F32Layout::new(h, w, c), F32Layout::new(oh, ow, c));
        let mut xn = vec![0f32; n * xl.sample_len()];
        nchw_to_nhwc(&x, n, xl, &mut xn).unwrap();
        let mut got = vec![0f32; n * ol.sample_len()];
        max_pool2d_nhwc(&xn, n, xl, pool, &mut got, ol, &Workers::new(1 + seed as usize % 3)).unwrap();
        let mut back = vec![0f32; want.len()];
        nhwc_to_nchw(&got, n, ol, &mut back).unwrap();
        prop_assert!(bits_eq(&back, &want));
    }

    #[test]
    fn nhwc_quantization_equals_nchw(
        c in 1usize..40, h in 1usize..9, w in 1usize..9, border in 0usize..3, n in 1usize..3,
        zp in 0i32..256, seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let q = Quant::new(0.001 + rng.f32().abs() * 0.1, zp).unwrap();
        let x: Vec<f32> = (0..n * c * h * w).map(|_| rng.f32() * 30.0).collect();
        let ul = U8Layout::new(h, w, c, border);
        let mut a = vec![zp as u8; n * ul.sample_len()];
        quantize_nchw_to_u8(&x, n, ul, q, &mut a).unwrap();
        let fl = F32Layout::new(h, w, c);
        let mut xn = vec![0f32; n * fl.sample_len()];
        nchw_to_nhwc(&x, n, fl, &mut xn).unwrap();
        let mut b = vec![zp as u8; n * ul.sample_len()];
        quantize_nhwc_to_u8(&xn, n, fl, ul, q, &mut b).unwrap();
        prop_assert_eq!(&a, &b);
        for bi in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    for ch in 0..c {
                        prop_assert_eq!(a[ul.offset(bi, y, xx) + ch], q.quantize(x[((bi * c + ch) * h + y) * w + xx]));
                    }
                }
            }
        }
    }
    #[test]
    fn fused_stem_equals_conv_pool_quantize(
        in_c in 1usize..4, out_c in 1usize..70, k in 1usize..8, s in 1usize..3, p in 0usize..4,
        pk in 1usize..4, ps in 1usize..3, pp in 0usize..2, h in 1usize..30, w in 1usize..30,
        n in 1usize..4, border in 0usize..2, relu in any::<bool>(), threads in 1usize..4,
        zp in 0i32..256, scale_pow in -9i32..3, nan in 0usize..4, seed in any::<u64>(),
    ) {
        let g = ConvGeom { in_c, out_c, kh: k, kw: k, stride: (s, s), pad: (p, p), groups: 1 };
        let pool = Pool2d { kernel: (pk, pk), stride: (ps, ps), pad: (pp, pp) };
        let Ok((oh, ow)) = g.out_hw(h, w) else { return Ok(()) };
        let Ok((poh, pow)) = pool.out_hw(oh, ow) else { return Ok(()) };
        let mut rng = Rng::new(seed);
        let wt: Vec<f32> = (0..out_c * g.k()).map(|_| rng.f32()).collect();
        let b: Vec<f32> = (0..out_c).map(|_| rng.f32() * 0.1).collect();
        let mut x: Vec<f32> = (0..n * in_c * h * w).map(|_| rng.f32() * 3.0).collect();
        // Sometimes a NaN input, so NaNs reach the conv output and the pool.
        if nan == 0 { let i = rng.below(x.len()); x[i] = f32::NAN; }
        let layer = Conv2dF32::new(g, wt, b).unwrap();
        let q = Quant::new(2f32.powi(scale_pow) * (1.0 + rng.f32().abs()), zp).unwrap();
        let (cl, pl) = (F32Layout::new(oh, ow, out_c), F32Layout::new(poh, pow, out_c));
        let ul = U8Layout::new(poh, pow, out_c, border);
        let workers = Workers::new(threads);
        for isa in available_isas() {
            // The three steps.
            let mut conv = vec![0f32; n * cl.sample_len()];
            let mut pad = Vec::new();
            layer.forward_nhwc(&x, n, h, w, relu, &mut conv, cl, &mut pad, &workers, isa).unwrap();
            let mut pooled = vec![0f32; n * pl.sample_len()];
            max_pool2d_nhwc(&conv, n, cl, pool, &mut pooled, pl, &workers).unwrap();
            let mut want = vec![zp as u8; n * ul.sample_len()];
            quantize_nhwc_to_u8(&pooled, n, pl, ul, q, &mut want).unwrap();
            // Fused, into a buffer whose border holds the zero point as the runtime's do.
            let mut got = vec![zp as u8; n * ul.sample_len()];
            let mut got_f = vec![0f32; n * pl.sample_len()];
            let mut scratch = FusedScratch::default();
            let mut pad2 = Vec::new();
            layer
                .forward_nhwc_pool_u8(&x, n, h, w, relu, pool, q, &mut got_f, pl, &mut got, ul, &mut pad2, &mut scratch, &workers, isa)
                .unwrap();
            prop_assert!(bits_eq(&pooled, &got_f), "{isa}: fused stem f32 differs from conv + pool");
            prop_assert!(want == got, "{isa}: fused stem u8 differs from conv + pool + quantize");
        }
    }
}
