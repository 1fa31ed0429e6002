//! Unit tests: weights storage, ISA selection, layers against naive references.
#![allow(clippy::too_many_arguments)]

mod common;
use common::*;
use kernels::*;

#[test]
fn packed_roundtrip_and_layout() {
    // W3 zero-free: value (-1)^s 2^m; weight i at bit i%8 of byte i/8 in each plane.
    let vals = [1, -1, 2, -8, 4, 8, -2, -4, 1, 2];
    let w = PackedShift::from_values(Code::ZeroFree, 3, 2, 5, &vals).unwrap();
    assert_eq!(w.planes().len(), 3 * 2);
    // sign plane: negatives at 1,3,6,7 -> byte0 = 0b1100_1010
    assert_eq!(w.planes()[0], 0b1100_1010);
    assert_eq!(w.planes()[1], 0);
    // magnitude bit 0 (m odd: 2, 8, 2, 8): indices 2,3,5,6 (2,-8,8,-2), byte1: index 9 (2)
    assert_eq!(w.planes()[2], 0b0110_1100);
    assert_eq!(w.planes()[3], 0b10);
    assert_eq!(w.values(), vals);
    assert_eq!(w.value(1, 4), 2);
    let again = PackedShift::from_planes(Code::ZeroFree, 3, 2, 5, w.planes()).unwrap();
    assert_eq!(again, w);
}

#[test]
fn packed_validation_errors() {
    let ok = PackedShift::from_values(Code::WithZero, 3, 1, 5, &[0, 1, -1, 4, -4]).unwrap();
    assert_eq!(ok.values(), vec![0, 1, -1, 4, -4]);
    let mut planes = ok.planes().to_vec();
    // wrong length
    let e = PackedShift::from_planes(Code::WithZero, 3, 1, 5, &planes[..2]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    // padding bit set (5 weights: bits 5..8 are padding)
    planes[1] |= 0x80;
    let e = PackedShift::from_planes(Code::WithZero, 3, 1, 5, &planes).unwrap_err();
    assert!(e.message().contains("padding"), "{e}");
    planes[1] &= 0x7f;
    // negative zero: weight 0 has m == 0; set its sign bit
    planes[0] |= 1;
    let e = PackedShift::from_planes(Code::WithZero, 3, 1, 5, &planes).unwrap_err();
    assert!(e.message().contains("negative zero"), "{e}");
    // the same bits are fine for zero-free (no zero code)
    assert!(PackedShift::from_planes(Code::ZeroFree, 3, 1, 5, &planes).is_ok());
    // bit widths
    assert!(PackedShift::from_values(Code::ZeroFree, 5, 1, 1, &[1]).is_err());
    assert!(PackedShift::from_values(Code::WithZero, 5, 1, 1, &[-16384]).is_ok());
    assert!(PackedShift::from_values(Code::ZeroFree, 3, 1, 1, &[16]).is_err());
    assert!(PackedShift::from_values(Code::ZeroFree, 3, 1, 1, &[0]).is_err());
    assert!(PackedShift::from_values(Code::ZeroFree, 3, 0, 1, &[]).is_err());
    assert!(PackedShift::from_values(Code::ZeroFree, 2, 1, 2, &[1]).is_err());
}

#[test]
fn every_code_roundtrips() {
    for (code, bits) in [
        (Code::ZeroFree, 2),
        (Code::ZeroFree, 3),
        (Code::ZeroFree, 4),
        (Code::WithZero, 2),
        (Code::WithZero, 3),
        (Code::WithZero, 4),
        (Code::WithZero, 5),
    ] {
        let vals = code_values(code, bits);
        assert_eq!(
            vals.len(),
            if code == Code::ZeroFree {
                1 << bits
            } else {
                (1 << bits) - 1
            }
        );
        let w = PackedShift::from_values(code, bits, 1, vals.len(), &vals).unwrap();
        assert_eq!(w.values(), vals);
        assert_eq!(
            vals.iter().map(|v| v.abs()).max().unwrap(),
            code.max_abs(bits)
        );
    }
}

#[test]
fn isa_selection() {
    assert_eq!(isa_from_setting(None).unwrap(), best_isa());
    assert_eq!(isa_from_setting(Some("")).unwrap(), best_isa());
    assert_eq!(isa_from_setting(Some("scalar")).unwrap(), Isa::Scalar);
    let e = isa_from_setting(Some("sse9")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.message().contains("sse9"));
    for isa in Isa::ALL {
        let r = isa_from_setting(Some(isa.name()));
        assert_eq!(r.is_ok(), isa.is_supported(), "{isa}");
        assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
    }
    #[cfg(target_arch = "x86_64")]
    assert!(isa_from_setting(Some("neon"))
        .unwrap_err()
        .message()
        .contains("not supported"));
    assert!(available_isas().contains(&Isa::Scalar));
    assert_eq!(available_isas()[0], best_isa());
    // selected_isa is cached and consistent with the environment
    let s = selected_isa();
    assert_eq!(s, selected_isa());
    assert_eq!(
        s,
        isa_from_setting(std::env::var("SHIFTSERVE_KERNEL").ok().as_deref())
    );
}

fn conv_case(
    rng: &mut Rng,
    isa: Isa,
    g: ConvGeom,
    code: Code,
    bits: u8,
    n: usize,
    h: usize,
    w: usize,
    residual: bool,
    relu: bool,
) {
    let wts = random_weights(rng, code, bits, g.out_c, g.k());
    let scale: Vec<f32> = (0..g.out_c).map(|_| 0.01 + rng.f32().abs() * 0.1).collect();
    let bias: Vec<f32> = (0..g.out_c).map(|_| rng.f32()).collect();
    let x: Vec<f32> = (0..n * g.in_c * h * w).map(|_| rng.f32() * 2.0).collect();
    let (oh, ow) = g.out_hw(h, w).unwrap();
    let res: Vec<f32> = (0..n * g.out_c * oh * ow).map(|_| rng.f32()).collect();
    let res_opt = if residual { Some(&res[..]) } else { None };
    let mut ws = Workspace::new();
    // integer path
    let (sc, zp) = (0.02f32, 100);
    let layer = ShiftConv2d::new(
        g,
        wts.clone(),
        scale.clone(),
        bias.clone(),
        NumericPath::Int8 {
            scale: sc,
            zero_point: zp,
        },
        isa,
    )
    .unwrap();
    let (want, _, woh, wow) =
        naive_conv_int(&g, &wts, &x, n, h, w, sc, zp, &scale, &bias, res_opt, relu);
    assert_eq!((oh, ow), (woh, wow));
    for threads in [1, 2, 3] {
        let mut out = vec![f32::NAN; want.len()];
        let ep = Epilogue {
            residual: res_opt,
            relu,
        };
        let hw = layer
            .forward(&x, n, h, w, ep, &mut out, &mut ws, threads)
            .unwrap();
        assert_eq!(hw, (oh, ow));
        assert!(
            bits_eq(&out, &want),
            "int path {isa} {g:?} {code:?}/{bits} n={n} {h}x{w} threads={threads}"
        );
    }
    // requantized output equals quantizing the f32 output
    let oq = Quant::new(0.05, 7).unwrap();
    let mut q = vec![0u8; want.len()];
    layer
        .forward_to(
            Input::F32(&x),
            n,
            h,
            w,
            Epilogue {
                residual: res_opt,
                relu,
            },
            Output::U8 {
                out: &mut q,
                quant: oq,
            },
            &mut ws,
            2,
        )
        .unwrap();
    let wq: Vec<u8> = want.iter().map(|&v| quantize(v, 0.05, 7) as u8).collect();
    assert_eq!(q, wq);
    // pre-quantized u8 input gives the same result
    let xq: Vec<u8> = x.iter().map(|&v| quantize(v, sc, zp) as u8).collect();
    let mut out = vec![0f32; want.len()];
    layer
        .forward_to(
            Input::U8(&xq),
            n,
            h,
            w,
            Epilogue {
                residual: res_opt,
                relu,
            },
            Output::F32(&mut out),
            &mut ws,
            1,
        )
        .unwrap();
    assert!(bits_eq(&out, &want));
    // float path
    let layer = ShiftConv2d::new(
        g,
        wts.clone(),
        scale.clone(),
        bias.clone(),
        NumericPath::Float,
        isa,
    )
    .unwrap();
    let (want, _, _) = naive_conv_float(&g, &wts, &x, n, h, w, &scale, &bias, res_opt, relu);
    for threads in [1, 2] {
        let mut out = vec![f32::NAN; want.len()];
        layer
            .forward(
                &x,
                n,
                h,
                w,
                Epilogue {
                    residual: res_opt,
                    relu,
                },
                &mut out,
                &mut ws,
                threads,
            )
            .unwrap();
        assert!(
            bits_eq(&out, &want),
            "float path {isa} {g:?} {code:?}/{bits} n={n} {h}x{w}"
        );
    }
}

fn geom(in_c: usize, out_c: usize, k: usize, s: usize, p: usize, groups: usize) -> ConvGeom {
    ConvGeom {
        in_c,
        out_c,
        kh: k,
        kw: k,
        stride: (s, s),
        pad: (p, p),
        groups,
    }
}

#[test]
fn shift_conv_matches_naive_reference() {
    let mut rng = Rng::new(1);
    for isa in available_isas() {
        conv_case(
            &mut rng,
            isa,
            geom(8, 16, 3, 1, 1, 1),
            Code::ZeroFree,
            3,
            1,
            9,
            11,
            true,
            true,
        );
        conv_case(
            &mut rng,
            isa,
            geom(16, 8, 1, 1, 0, 1),
            Code::ZeroFree,
            2,
            2,
            7,
            5,
            false,
            true,
        );
        conv_case(
            &mut rng,
            isa,
            geom(6, 12, 3, 2, 1, 1),
            Code::WithZero,
            3,
            2,
            10,
            9,
            true,
            false,
        );
        conv_case(
            &mut rng,
            isa,
            geom(8, 8, 3, 1, 1, 8),
            Code::ZeroFree,
            4,
            1,
            6,
            6,
            false,
            true,
        );
        conv_case(
            &mut rng,
            isa,
            geom(4, 8, 3, 2, 0, 4),
            Code::WithZero,
            5,
            3,
            7,
            8,
            false,
            false,
        );
        conv_case(
            &mut rng,
            isa,
            geom(6, 4, 2, 1, 1, 2),
            Code::WithZero,
            4,
            1,
            5,
            4,
            true,
            true,
        );
        conv_case(
            &mut rng,
            isa,
            ConvGeom {
                in_c: 3,
                out_c: 5,
                kh: 1,
                kw: 3,
                stride: (2, 1),
                pad: (0, 2),
                groups: 1,
            },
            Code::ZeroFree,
            3,
            2,
            5,
            3,
            false,
            true,
        );
        // a layer wide enough for the table kernel with ragged pixel tails
        conv_case(
            &mut rng,
            isa,
            geom(20, 37, 3, 1, 1, 1),
            Code::ZeroFree,
            3,
            2,
            13,
            11,
            true,
            true,
        );
        // batches large enough to run in chunks of samples: 1+1+1 (int8 and float) and, on
        // the int8 path, 2+1 (a ragged last chunk)
        for (hw, n) in [(48, 3), (38, 3)] {
            conv_case(
                &mut rng,
                isa,
                geom(16, 8, 3, 1, 1, 1),
                Code::ZeroFree,
                3,
                n,
                hw,
                hw,
                true,
                true,
            );
        }
    }
}

#[test]
fn shift_linear_matches_reference() {
    let mut rng = Rng::new(2);
    for isa in available_isas() {
        for &(n, inf, outf, bits) in &[
            (1usize, 64usize, 70usize, 3u8),
            (3, 33, 5, 2),
            (40, 17, 19, 4),
        ] {
            let w = random_weights(&mut rng, Code::ZeroFree, bits, outf, inf);
            let scale: Vec<f32> = (0..outf).map(|_| 0.5 + rng.f32()).collect();
            let bias: Vec<f32> = (0..outf).map(|_| rng.f32()).collect();
            let x: Vec<f32> = (0..n * inf).map(|_| rng.f32()).collect();
            let g = geom(inf, outf, 1, 1, 0, 1);
            let mut ws = Workspace::new();
            let l = ShiftLinear::new(
                inf,
                outf,
                w.clone(),
                scale.clone(),
                bias.clone(),
                NumericPath::Int8 {
                    scale: 0.01,
                    zero_point: 128,
                },
                isa,
            )
            .unwrap();
            let mut out = vec![0f32; n * outf];
            l.forward(&x, n, Epilogue::default(), &mut out, &mut ws, 2)
                .unwrap();
            let (want, _, _, _) =
                naive_conv_int(&g, &w, &x, n, 1, 1, 0.01, 128, &scale, &bias, None, false);
            assert!(bits_eq(&out, &want), "linear int {isa} n={n}");
            let l = ShiftLinear::new(
                inf,
                outf,
                w.clone(),
                scale.clone(),
                bias.clone(),
                NumericPath::Float,
                isa,
            )
            .unwrap();
            l.forward(
                &x,
                n,
                Epilogue {
                    residual: None,
                    relu: true,
                },
                &mut out,
                &mut ws,
                1,
            )
            .unwrap();
            let (want, _, _) = naive_conv_float(&g, &w, &x, n, 1, 1, &scale, &bias, None, true);
            assert!(bits_eq(&out, &want), "linear float {isa} n={n}");
        }
    }
}

#[test]
fn layer_shape_errors_are_errors() {
    let isa = Isa::Scalar;
    let w = PackedShift::from_values(Code::ZeroFree, 2, 4, 18, &[1; 72]).unwrap();
    let g = geom(2, 4, 3, 1, 1, 1);
    let p = NumericPath::Int8 {
        scale: 0.1,
        zero_point: 3,
    };
    assert!(ShiftConv2d::new(g, w.clone(), vec![1.0; 3], vec![0.0; 4], p, isa).is_err());
    assert!(ShiftConv2d::new(
        geom(2, 4, 3, 1, 1, 3),
        w.clone(),
        vec![1.0; 4],
        vec![0.0; 4],
        p,
        isa
    )
    .is_err());
    assert!(ShiftConv2d::new(
        geom(2, 4, 2, 1, 1, 1),
        w.clone(),
        vec![1.0; 4],
        vec![0.0; 4],
        p,
        isa
    )
    .is_err());
    assert!(ShiftConv2d::new(
        g,
        w.clone(),
        vec![1.0; 4],
        vec![0.0; 4],
        NumericPath::Int8 {
            scale: 0.0,
            zero_point: 0
        },
        isa
    )
    .is_err());
    assert!(ShiftConv2d::new(
        g,
        w.clone(),
        vec![1.0; 4],
        vec![0.0; 4],
        NumericPath::Int8 {
            scale: 1.0,
            zero_point: 256
        },
        isa
    )
    .is_err());
    assert!(ShiftConv2d::new(
        ConvGeom {
            stride: (0, 1),
            ..g
        },
        w.clone(),
        vec![1.0; 4],
        vec![0.0; 4],
        p,
        isa
    )
    .is_err());
    let l = ShiftConv2d::new(g, w, vec![1.0; 4], vec![0.0; 4], p, isa).unwrap();
    let mut ws = Workspace::new();
    let x = vec![0.5f32; 2 * 5 * 5];
    let mut out = vec![0f32; 4 * 25];
    assert!(l
        .forward(&x, 1, 5, 5, Epilogue::default(), &mut out, &mut ws, 1)
        .is_ok());
    assert_eq!(
        l.forward(&x, 1, 5, 4, Epilogue::default(), &mut out, &mut ws, 1)
            .unwrap_err()
            .kind(),
        ErrorKind::Shape
    );
    assert!(l
        .forward(&x, 1, 5, 5, Epilogue::default(), &mut out[1..], &mut ws, 1)
        .is_err());
    assert!(l
        .forward(
            &x,
            1,
            5,
            5,
            Epilogue {
                residual: Some(&x),
                relu: false
            },
            &mut out,
            &mut ws,
            1
        )
        .is_err());
    let mut small = vec![0f32; 4];
    assert!(l
        .forward(
            &x[..2],
            1,
            1,
            1,
            Epilogue::default(),
            &mut small,
            &mut ws,
            1
        )
        .is_ok()); // padding makes 1x1 valid
    let lf = ShiftConv2d::new(
        g,
        l.weights().clone(),
        vec![1.0; 4],
        vec![0.0; 4],
        NumericPath::Float,
        isa,
    )
    .unwrap();
    let xq = vec![0u8; 50];
    assert!(lf
        .forward_to(
            Input::U8(&xq),
            1,
            5,
            5,
            Epilogue::default(),
            Output::F32(&mut out),
            &mut ws,
            1
        )
        .is_err());
    // 5-bit with-zero weights (|w| up to 16384) over many columns cannot use the int path
    let big = PackedShift::from_values(Code::WithZero, 5, 1, 600, &[16384; 600]).unwrap();
    let e = ShiftLinear::new(600, 1, big.clone(), vec![1.0], vec![0.0], p, isa).unwrap_err();
    assert!(e.message().contains("float path"));
    assert!(ShiftLinear::new(600, 1, big, vec![1.0], vec![0.0], NumericPath::Float, isa).is_ok());
}

#[test]
fn workspace_is_reused() {
    let mut rng = Rng::new(3);
    let g = geom(16, 32, 3, 1, 1, 1);
    let w = random_weights(&mut rng, Code::ZeroFree, 3, 32, g.k());
    let l = ShiftConv2d::new(
        g,
        w,
        vec![0.1; 32],
        vec![0.0; 32],
        NumericPath::Int8 {
            scale: 0.05,
            zero_point: 128,
        },
        best_isa(),
    )
    .unwrap();
    let x: Vec<f32> = (0..16 * 20 * 20).map(|_| rng.f32()).collect();
    let mut out = vec![0f32; 32 * 400];
    let mut ws = Workspace::new();
    l.forward(&x, 1, 20, 20, Epilogue::default(), &mut out, &mut ws, 2)
        .unwrap();
    let bytes = ws.allocated_bytes();
    assert!(bytes > 0);
    let first = out.clone();
    for _ in 0..3 {
        l.forward(&x, 1, 20, 20, Epilogue::default(), &mut out, &mut ws, 2)
            .unwrap();
    }
    assert_eq!(ws.allocated_bytes(), bytes);
    assert_eq!(out, first);
}

fn naive_gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                c[i * n + j] += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
        }
    }
    c
}

#[test]
fn fp32_layers_match_naive() {
    let mut rng = Rng::new(4);
    let (m, n, k) = (13, 70, 29);
    let a: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.f32()).collect();
    let want = naive_gemm(m, n, k, &a, &b);
    for threads in [1, 2, 4] {
        let mut c = vec![1.0f32; m * n];
        gemm_f32(m, n, k, &a, &b, &mut c, true, threads).unwrap();
        for (x, y) in c.iter().zip(&want) {
            assert!((*x as f64 - (y + 1.0)).abs() < 1e-4);
        }
    }
    assert!(gemm_f32(m, n, k, &a, &b[1..], &mut vec![0.0; m * n], false, 1).is_err());
    // conv: compare against the float-path naive conv with weights that are powers of two
    // (exactly representable), with a tolerance since gemm may reassociate.
    let g = geom(3, 8, 3, 2, 1, 1);
    let w = random_weights(&mut rng, Code::ZeroFree, 3, 8, g.k());
    let wf: Vec<f32> = w.values().iter().map(|&v| v as f32).collect();
    let bias: Vec<f32> = (0..8).map(|_| rng.f32()).collect();
    let x: Vec<f32> = (0..2 * 3 * 9 * 9).map(|_| rng.f32()).collect();
    let conv = Conv2dF32::new(g, wf, bias.clone()).unwrap();
    let (oh, ow) = g.out_hw(9, 9).unwrap();
    let mut out = vec![0f32; 2 * 8 * oh * ow];
    let mut ws = Workspace::new();
    conv.forward(
        &x,
        2,
        9,
        9,
        Epilogue {
            residual: None,
            relu: true,
        },
        &mut out,
        &mut ws,
        2,
    )
    .unwrap();
    let (want, _, _) = naive_conv_float(&g, &w, &x, 2, 9, 9, &[1.0; 8], &bias, None, true);
    for (x, y) in out.iter().zip(&want) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // linear
    let lin_w: Vec<f32> = (0..5 * 7).map(|_| rng.f32()).collect();
    let lb: Vec<f32> = (0..5).map(|_| rng.f32()).collect();
    let lin = LinearF32::new(7, 5, lin_w.clone(), lb.clone()).unwrap();
    let xin: Vec<f32> = (0..3 * 7).map(|_| rng.f32()).collect();
    let mut y = vec![0f32; 15];
    lin.forward(&xin, 3, Epilogue::default(), &mut y, &mut ws, 2)
        .unwrap();
    for bi in 0..3 {
        for o in 0..5 {
            let s: f32 = (0..7)
                .map(|i| xin[bi * 7 + i] * lin_w[o * 7 + i])
                .sum::<f32>()
                + lb[o];
            assert!((y[bi * 5 + o] - s).abs() < 1e-5);
        }
    }
    assert!(LinearF32::new(7, 5, lin_w, vec![0.0; 4]).is_err());
}

#[test]
fn pooling() {
    // 1x1x4x4, values 0..16
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let p = Pool2d {
        kernel: (2, 2),
        stride: (2, 2),
        pad: (0, 0),
    };
    let mut out = vec![0f32; 4];
    assert_eq!(max_pool2d(&x, 1, 1, 4, 4, p, &mut out).unwrap(), (2, 2));
    assert_eq!(out, vec![5.0, 7.0, 13.0, 15.0]);
    avg_pool2d(&x, 1, 1, 4, 4, p, &mut out).unwrap();
    assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    // padded 3x3 stride 2 (ResNet stem pool): padding is -inf for max, counts for avg
    let p3 = Pool2d {
        kernel: (3, 3),
        stride: (2, 2),
        pad: (1, 1),
    };
    let mut o3 = vec![0f32; 4];
    max_pool2d(&x, 1, 1, 4, 4, p3, &mut o3).unwrap();
    assert_eq!(o3, vec![5.0, 7.0, 13.0, 15.0]);
    avg_pool2d(&x, 1, 1, 4, 4, p3, &mut o3).unwrap();
    assert_eq!(o3[0], (0.0 + 1.0 + 4.0 + 5.0) / 9.0);
    let neg: Vec<f32> = x.iter().map(|v| -v - 1.0).collect();
    max_pool2d(&neg, 1, 1, 4, 4, p3, &mut o3).unwrap();
    assert_eq!(o3[0], -1.0);
    let mut nan = x.clone();
    nan[0] = f32::NAN;
    max_pool2d(&nan, 1, 1, 4, 4, p, &mut out).unwrap();
    assert!(out[0].is_nan() && out[1] == 7.0);
    let mut g = vec![0f32; 2];
    global_avg_pool(&x, 1, 2, 8, &mut g).unwrap();
    assert_eq!(g, vec![3.5, 11.5]);
    assert!(max_pool2d(
        &x,
        1,
        1,
        4,
        4,
        Pool2d {
            kernel: (2, 2),
            stride: (2, 2),
            pad: (2, 2)
        },
        &mut out
    )
    .is_err());
    assert!(max_pool2d(&x, 1, 1, 4, 4, p, &mut o3[..3]).is_err());
    assert!(global_avg_pool(&x, 1, 2, 0, &mut g).is_err());
}

/// Extreme activations and weights over long rows: every i16 chunk runs at its overflow bound,
/// in the table kernel (many pixels), the row/GEMV kernels (few pixels) and the lookup GEMV
/// (one pixel).
#[test]
fn extreme_values_do_not_overflow() {
    let mut rng = Rng::new(5);
    for (code, bits) in [
        (Code::ZeroFree, 2u8),
        (Code::ZeroFree, 3),
        (Code::ZeroFree, 4),
        (Code::WithZero, 3),
        (Code::WithZero, 4),
    ] {
        let vals = code_values(code, bits);
        let wmax = *vals.iter().max().unwrap();
        let wmin = *vals.iter().min().unwrap();
        // 300 rows: more than one 256-row group of the lookup GEMV; odd k: a padded pair.
        let (rows, k) = (300, 1101);
        for &p in &[1usize, 3, 70] {
            for pattern in 0..3 {
                let w: Vec<i32> = (0..rows * k)
                    .map(|i| match pattern {
                        0 => wmin,
                        1 => wmax,
                        _ => {
                            if (i / k) % 2 == 0 {
                                wmin
                            } else {
                                vals[rng.below(vals.len())]
                            }
                        }
                    })
                    .collect();
                let packed = PackedShift::from_values(code, bits, rows, k, &w).unwrap();
                let act: Vec<u8> = (0..k * p)
                    .map(|i| match pattern {
                        0 => 0,
                        1 => 255,
                        _ => {
                            if i % 3 == 0 {
                                0
                            } else {
                                255
                            }
                        }
                    })
                    .collect();
                let want = reference::gemm_i32(&packed, &act, p);
                let mut scratch = Scratch::new();
                for isa in available_isas() {
                    let pw = PreparedShift::new(&packed, isa).unwrap();
                    let mut acc = vec![0i32; rows * p];
                    shift_gemm_i32(&pw, &act, p, &mut acc, 2, &mut scratch).unwrap();
                    assert_eq!(acc, want, "{isa} {code:?}/{bits} p={p} pattern={pattern}");
                    let ba = pw.block_u8(&act, p).unwrap();
                    acc.fill(0);
                    shift_gemm_i32_blocked(&pw, &ba, &mut acc, 1, &mut scratch).unwrap();
                    assert_eq!(
                        acc, want,
                        "blocked {isa} {code:?}/{bits} p={p} pattern={pattern}"
                    );
                }
            }
        }
    }
}
