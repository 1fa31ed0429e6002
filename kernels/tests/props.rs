//! Property tests: every ISA available on this machine gives the same `i32` accumulators and
//! the same `f32` bits as the straightforward reference, for random shapes (ragged tails, both
//! kernels), every bit width and code, strides, paddings and groups; the multiplication-free
//! float products equal IEEE multiplication.
//!
//! Case counts: `KERNELS_PROPTEST_CASES` (default 256 on x86-64, 8 on other targets, which run
//! under qemu in CI).

#![allow(clippy::too_many_arguments)]
mod common;
use common::Rng;
use common::*;
use kernels::*;
use proptest::prelude::*;

fn cases(scale: u32) -> u32 {
    let base = std::env::var("KERNELS_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(target_arch = "x86_64") { 256 } else { 8 });
    (base * scale).max(1)
}

fn code_strategy() -> impl Strategy<Value = (Code, u8)> {
    prop_oneof![
        (Just(Code::ZeroFree), 2u8..=4),
        (Just(Code::WithZero), 2u8..=5),
    ]
}

/// Activation values that stress the float path: signed zeros, subnormals, huge values that
/// overflow when scaled, infinities, NaNs (quiet and signalling, both signs), ordinary numbers.
fn special_f32(rng: &mut Rng) -> f32 {
    let specials = [
        0.0f32,
        -0.0,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x0040_0000),
        f32::from_bits(0x007f_ffff),
        f32::MIN_POSITIVE,
        f32::MAX,
        -f32::MAX,
        3.0e37,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_0001),
        f32::from_bits(0xffa0_0000),
        f32::from_bits(0x7f80_0001),
    ];
    match rng.below(4) {
        0 => specials[rng.below(specials.len())],
        1 => f32::from_bits(rng.next_u64() as u32),
        _ => rng.f32() * 4.0,
    }
}

fn f32_bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1), ..ProptestConfig::default() })]

    #[test]
    fn shift_gemm_i32_all_isas_match_reference(
        (code, bits) in code_strategy(),
        rows in 1usize..70,
        k in 1usize..90,
        p in prop_oneof![1usize..9, 9usize..200],
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let w = random_weights(&mut rng, code, bits, rows, k);
        let act: Vec<u8> = (0..k * p).map(|_| rng.u8()).collect();
        let want = reference::gemm_i32(&w, &act, p);
        let mut scratch = Scratch::new();
        for isa in available_isas() {
            let pw = PreparedShift::new(&w, isa).unwrap();
            let mut acc = vec![i32::MIN; rows * p];
            shift_gemm_i32(&pw, &act, p, &mut acc, threads, &mut scratch).unwrap();
            prop_assert_eq!(&acc, &want, "isa {} {:?}/{} {}x{} p={}", isa, code, bits, rows, k, p);
        }
    }

    #[test]
    fn shift_gemm_f32_all_isas_bit_identical(
        (code, bits) in code_strategy(),
        rows in 1usize..50,
        k in 1usize..70,
        p in prop_oneof![1usize..9, 9usize..120],
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let w = random_weights(&mut rng, code, bits, rows, k);
        let act: Vec<f32> = (0..k * p).map(|_| special_f32(&mut rng)).collect();
        let want = reference::gemm_f32(&w, &act, p);
        let mut scratch = Scratch::new();
        for isa in available_isas() {
            let pw = PreparedShift::new(&w, isa).unwrap();
            let mut out = vec![f32::NAN; rows * p];
            shift_gemm_f32(&pw, &act, p, &mut out, threads, &mut scratch).unwrap();
            prop_assert!(f32_bits_equal(&out, &want), "isa {} {:?}/{} {}x{} p={}", isa, code, bits, rows, k, p);
        }
    }

    #[test]
    fn shift_conv_all_isas_match_scalar_and_reference(
        (code, bits) in code_strategy(),
        cin in 1usize..7,
        cout_mult in 1usize..4,
        group_kind in 0usize..3,
        kh in 1usize..4,
        kw in 1usize..4,
        stride in (1usize..4, 1usize..4),
        pad in (0usize..3, 0usize..3),
        n in 1usize..3,
        h in 1usize..12,
        wd in 1usize..12,
        residual in any::<bool>(),
        relu in any::<bool>(),
        float in any::<bool>(),
        zp in 0i32..256,
        seed in any::<u64>(),
    ) {
        let groups = match group_kind { 0 => 1, 1 => cin, _ => if cin % 2 == 0 { 2 } else { 1 } };
        let cout = groups * cout_mult * if groups == 1 { 3 } else { 1 };
        let g = ConvGeom { in_c: cin, out_c: cout, kh, kw, stride, pad, groups };
        prop_assume!(g.out_hw(h, wd).is_ok());
        let (oh, ow) = g.out_hw(h, wd).unwrap();
        let mut rng = Rng::new(seed);
        let w = random_weights(&mut rng, code, bits, cout, g.k());
        let scale: Vec<f32> = (0..cout).map(|_| rng.f32() * 0.1).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rng.f32()).collect();
        let x: Vec<f32> = (0..n * cin * h * wd).map(|_| rng.f32() * 3.0).collect();
        let res: Vec<f32> = (0..n * cout * oh * ow).map(|_| rng.f32()).collect();
        let res_opt = if residual { Some(&res[..]) } else { None };
        let in_scale = 0.005 + rng.f32().abs() * 0.05;
        let path = if float { NumericPath::Float } else { NumericPath::Int8 { scale: in_scale, zero_point: zp } };
        let want = if float {
            naive_conv_float(&g, &w, &x, n, h, wd, &scale, &bias, res_opt, relu).0
        } else {
            naive_conv_int(&g, &w, &x, n, h, wd, in_scale, zp, &scale, &bias, res_opt, relu).0
        };
        let mut ws = Workspace::new();
        for isa in available_isas() {
            let layer = match ShiftConv2d::new(g, w.clone(), scale.clone(), bias.clone(), path, isa) {
                Ok(l) => l,
                // Only 5-bit with-zero weights over many columns may refuse the int path.
                Err(e) => { prop_assert!(!float && bits == 5, "{}", e); return Ok(()); }
            };
            let mut out = vec![f32::NAN; want.len()];
            let ep = Epilogue { residual: res_opt, relu };
            layer.forward(&x, n, h, wd, ep, &mut out, &mut ws, 1 + (seed % 3) as usize).unwrap();
            prop_assert!(f32_bits_equal(&out, &want), "isa {} {:?} {:?}/{} float={}", isa, g, code, bits, float);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(40), ..ProptestConfig::default() })]

    /// The exponent-field product equals IEEE multiplication by ±2^m (and by 0) for every input
    /// bit pattern: zeros, subnormals (including those that become normal), overflow to
    /// infinity, infinities and NaNs.
    #[test]
    fn float_products_equal_ieee_multiplication(bits_x in any::<u32>(), shift in 0u32..15, neg in any::<bool>()) {
        let x = f32::from_bits(bits_x);
        let w = if neg { -(1i32 << shift) } else { 1i32 << shift };
        let got = float::mul_pow2(x, shift, neg);
        let want = x * w as f32;
        prop_assert_eq!(got.to_bits(), want.to_bits(), "x={:e} ({:#x}) w={}", x, bits_x, w);
        prop_assert_eq!(reference::mul_shift(x, w).to_bits(), want.to_bits());
        let z = reference::mul_shift(x, 0);
        let zw = x * 0.0;
        if x.is_infinite() {
            prop_assert!(z.is_nan() && zw.is_nan());
        } else {
            prop_assert_eq!(z.to_bits(), zw.to_bits());
        }
    }
}

#[test]
fn float_products_edge_cases() {
    let cases: &[(f32, i32, f32)] = &[
        (0.0, -8, -0.0),
        (-0.0, 4, -0.0),
        (f32::from_bits(1), 8, f32::from_bits(8)),
        (f32::from_bits(0x0040_0000), 2, f32::MIN_POSITIVE),
        (f32::from_bits(0x007f_ffff), -2, f32::from_bits(0x80ff_fffe)),
        (f32::MAX, 2, f32::INFINITY),
        (-f32::MAX, 2, f32::NEG_INFINITY),
        (1.0e38, -8, f32::NEG_INFINITY),
        (f32::INFINITY, -1, f32::NEG_INFINITY),
        (1.5, 128, 192.0),
        (-3.0, -16384, 49152.0),
    ];
    for &(x, w, want) in cases {
        let got = reference::mul_shift(x, w);
        assert_eq!(got.to_bits(), want.to_bits(), "{x:e} * {w}");
        assert_eq!(
            got.to_bits(),
            (x * w as f32).to_bits(),
            "{x:e} * {w} vs IEEE"
        );
    }
    // NaN keeps payload and sign, quieted; inf * 0 is the default NaN
    let snan = f32::from_bits(0xff80_0001);
    assert_eq!(reference::mul_shift(snan, -4).to_bits(), 0xffc0_0001);
    assert_eq!(
        reference::mul_shift(f32::INFINITY, 0).to_bits(),
        0x7fc0_0000
    );
    assert_eq!(reference::mul_shift(-2.5, 0).to_bits(), (-0.0f32).to_bits());
}
