//! `cargo bench -p kernels`: one table of GMAC/s (median of repeated runs, one thread) for the
//! shift kernels of every ISA this CPU supports, the int8 dot-product baseline on the same
//! weights, and fp32 `gemm`, on ResNet-18 conv shapes (as GEMMs over im2col'd activations) and
//! GEMV/LSTM-sized matrices. Ratios are against fp32 gemm (and int8) measured in the same run.
//!
//! A third table runs whole quantized convolution layers (`QConv2d`: padded NHWC `u8` in, fused
//! requantizing epilogue out) with every kernel this CPU supports, multiplication-free and
//! dot-product, on the ResNet-18 layer shapes, with the ratios of the shift-add kernels to the
//! dot-product kernels of the same instruction set.
//!
//! Environment: `KERNELS_BENCH_QUICK=1` runs a reduced set; `KERNELS_BENCH_SECS` sets the time
//! budget per measurement (default 0.25 s, at least 3 runs); `KERNELS_BENCH_FILTER=substring`
//! keeps matching shapes, `KERNELS_BENCH_ISA=name` one shift variant.

use kernels::baseline::Int8Weights;
use kernels::qconv::{F32Layout, U8Layout};
use kernels::*;
use std::hint::black_box;
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// CPU time of the calling thread in seconds (`CLOCK_THREAD_CPUTIME_ID`, exact to the
/// nanosecond on Linux), so that time slices lost to other processes on this shared machine do
/// not count; `None` elsewhere.
#[cfg(target_os = "linux")]
fn thread_cpu() -> Option<f64> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clk: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: plain libc call writing into a valid timespec.
    let r = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    (r == 0).then_some(t.sec as f64 + t.nsec as f64 * 1e-9)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> Option<f64> {
    None
}

fn median_secs(budget: f64, mut f: impl FnMut()) -> f64 {
    f(); // warm up (also grows workspaces)
    let mut v = Vec::new();
    let start = Instant::now();
    while v.len() < 3 || (start.elapsed().as_secs_f64() < budget && v.len() < 50) {
        let (t, c) = (Instant::now(), thread_cpu());
        f();
        let wall = t.elapsed().as_secs_f64();
        v.push(match (c, thread_cpu()) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => wall,
        });
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Prints a Markdown table header and its separator row of matching column widths.
fn print_header(hdr: &str) {
    println!("{hdr}");
    let sep: Vec<String> = hdr[1..hdr.len() - 1]
        .split('|')
        .map(|c| "-".repeat(c.len()))
        .collect();
    println!("|{}|", sep.join("|"));
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

struct Case {
    name: String,
    rows: usize,
    k: usize,
    p: usize,
}

fn main() {
    let quick = std::env::var("KERNELS_BENCH_QUICK").is_ok();
    let budget: f64 = std::env::var("KERNELS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.25);
    let only_isa = std::env::var("KERNELS_BENCH_ISA").ok();
    let isas: Vec<Isa> = available_isas()
        .into_iter()
        .rev()
        .filter(|i| only_isa.as_deref().is_none_or(|o| o == i.name()))
        .collect();
    let filter = std::env::var("KERNELS_BENCH_FILTER").ok();
    let mut cases = Vec::new();
    let convs: &[(usize, usize)] = if quick {
        &[(64, 56), (512, 7)]
    } else {
        &[(64, 56), (128, 28), (256, 14), (512, 7)]
    };
    for &(c, hw) in convs {
        for &ks in &[3usize, 1] {
            for &n in &[1usize, 8] {
                cases.push(Case {
                    name: format!("conv{ks}x{ks} {c}ch@{hw}x{hw} b{n}"),
                    rows: c,
                    k: c * ks * ks,
                    p: n * hw * hw,
                });
            }
        }
    }
    for &(r, k) in &[(4096usize, 4096usize), (1024, 256), (1024, 40)] {
        for &n in &[1usize, 8] {
            if quick && n == 8 {
                continue;
            }
            cases.push(Case {
                name: format!("gemv {r}x{k} b{n}"),
                rows: r,
                k,
                p: n,
            });
        }
    }
    if let Some(f) = &filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    println!("kernels benchmark: 1 thread, W3 zero-free weights, int path (u8 activations)");
    println!("CPU: {}", cpu_model());
    println!(
        "ISAs: {}; int8 baseline: {}",
        isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "),
        if has_avx512_vnni() {
            "AVX-512 VNNI vpdpbusd"
        } else {
            "scalar"
        }
    );
    println!("GMAC/s = MACs / thread CPU time (median of runs); ratios: best shift ISA / fp32 gemm and / int8\n");
    let mut hdr = format!("| {:<26} | {:>8} |", "shape (rows x K x pixels)", "MMAC");
    for i in &isas {
        hdr += &format!(" {:>9} |", format!("shift {}", i.name()));
    }
    hdr += &format!(
        " {:>9} | {:>9} | {:>11} | {:>11} |",
        "int8", "fp32 gemm", "shift/fp32", "shift/int8"
    );
    print_header(&hdr);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut float_rows = Vec::new();
    for c in &cases {
        let vals: Vec<i32> = (0..c.rows * c.k)
            .map(|_| {
                let r = rng.next();
                let m = (r >> 8) % 4;
                if r & 1 == 1 {
                    -(1 << m)
                } else {
                    1 << m
                }
            })
            .collect();
        let w = PackedShift::from_values(Code::ZeroFree, 3, c.rows, c.k, &vals).unwrap();
        let act: Vec<u8> = (0..c.k * c.p).map(|_| (rng.next() >> 24) as u8).collect();
        let actf: Vec<f32> = act.iter().map(|&a| a as f32 / 255.0).collect();
        let wf: Vec<f32> = vals.iter().map(|&v| v as f32).collect();
        let macs = (c.rows * c.k * c.p) as f64;
        let mut line = format!("| {:<26} | {:>8.1} |", c.name, macs / 1e6);
        let mut acc = vec![0i32; c.rows * c.p];
        let mut scratch = Scratch::new();
        let mut best: f64 = 0.0;
        let mut reference: Option<Vec<i32>> = None;
        for &isa in &isas {
            let pw = PreparedShift::new(&w, isa).unwrap();
            // The layers build this pixel-blocked layout straight from im2col; the int8 kernel
            // likewise gets its own layout outside the timed region.
            let ba = pw.block_u8(&act, c.p).unwrap();
            let t = median_secs(budget, || {
                shift_gemm_i32_blocked(&pw, black_box(&ba), &mut acc, 1, &mut scratch).unwrap();
                black_box(&acc);
            });
            // every ISA must agree (cheap sanity check; the property tests are the real proof)
            match &reference {
                None => reference = Some(acc.clone()),
                Some(r) => assert!(r == &acc, "ISA {isa} disagrees"),
            }
            let g = macs / t / 1e9;
            best = best.max(g);
            line += &format!(" {:>9.2} |", g);
        }
        if std::env::var("KERNELS_BENCH_ONLY_SHIFT").is_ok() {
            println!("{line}");
            continue;
        }
        let iw = Int8Weights::new(&w).unwrap();
        let ti = if c.p == 1 {
            let mut y = vec![0i32; c.rows];
            let t = median_secs(budget, || {
                iw.gemv_i32(black_box(&act), &mut y).unwrap();
                black_box(&y);
            });
            assert!(reference.as_ref().unwrap() == &y, "int8 gemv disagrees");
            t
        } else {
            // Activations are repacked for vpdpbusd outside the timed region, as the shift
            // kernels also get their preferred layout (the repack is im2col's job in a model).
            let pa = iw.pack_activations(&act, c.p).unwrap();
            let t = median_secs(budget, || {
                iw.gemm_i32_packed(black_box(&pa), c.p, &mut acc).unwrap();
                black_box(&acc);
            });
            assert!(reference.as_ref().unwrap() == &acc, "int8 gemm disagrees");
            t
        };
        let gi = macs / ti / 1e9;
        let mut outf = vec![0f32; c.rows * c.p];
        let tf = median_secs(budget, || {
            gemm_f32(c.rows, c.p, c.k, &wf, black_box(&actf), &mut outf, false, 1).unwrap();
            black_box(&outf);
        });
        let gf = macs / tf / 1e9;
        line += &format!(
            " {:>9.2} | {:>9.2} | {:>10.2}x | {:>10.2}x |",
            gi,
            gf,
            best / gf,
            best / gi
        );
        println!("{line}");
        float_rows.push((c.name.clone(), w, actf, gf, c.rows, c.p));
    }
    // Float path (DenseShift's own inference): f32 activations, exact exponent-field products,
    // f32 sums in ascending k. Same weights; compared with the fp32 gemm column above.
    println!("\nfloat path (f32 activations), GMAC/s; ratio: best shift ISA / fp32 gemm\n");
    let mut hdr = format!("| {:<26} |", "shape");
    for i in &isas {
        hdr += &format!(" {:>9} |", format!("float {}", i.name()));
    }
    hdr += &format!(" {:>9} | {:>11} |", "fp32 gemm", "shift/fp32");
    print_header(&hdr);
    for (name, w, actf, gf, rows, p) in float_rows
        .iter()
        .filter(|r| r.0.contains("3x3") || r.0.contains("b1"))
    {
        let macs = (*rows * w.cols() * *p) as f64;
        let mut out = vec![0f32; rows * p];
        let mut scratch = Scratch::new();
        let mut line = format!("| {:<26} |", name);
        let mut best: f64 = 0.0;
        for &isa in &isas {
            let pw = PreparedShift::new(w, isa).unwrap();
            let ba = pw.block_f32(actf, *p).unwrap();
            let t = median_secs(budget, || {
                shift_gemm_f32_blocked(&pw, black_box(&ba), &mut out, 1, &mut scratch).unwrap();
                black_box(&out);
            });
            let g = macs / t / 1e9;
            best = best.max(g);
            line += &format!(" {:>9.2} |", g);
        }
        line += &format!(" {:>9.2} | {:>10.2}x |", gf, best / gf);
        println!("{line}");
    }
    conv_table(budget, quick, filter.as_deref());
}

/// Whole quantized conv layers (ResNet-18 shapes) with every supported kernel.
fn conv_table(budget: f64, quick: bool, filter: Option<&str>) {
    if std::env::var("KERNELS_BENCH_ONLY_SHIFT").is_ok() {
        return;
    }
    let kernels: Vec<ConvKernel> = ConvKernel::supported()
        .into_iter()
        .filter(|k| !matches!(k, ConvKernel::Shift(Isa::Scalar) | ConvKernel::DotScalar))
        .collect();
    println!(
        "\nquantized conv layers (QConv2d: NHWC u8 in, fused epilogue, u8 + f32 out), 1 thread, \
         GMAC/s; shift/dot = shift-add kernel / dot-product kernel of the same instruction set\n"
    );
    let mut hdr = format!("| {:<28} | {:>7} |", "layer (in->out k stride @hw)", "MMAC");
    for k in &kernels {
        hdr += &format!(" {:>14} |", k.name());
    }
    let pairs: Vec<(ConvKernel, ConvKernel)> = [
        (ConvKernel::Shift(Isa::Avx2), ConvKernel::DotAvx2),
        (ConvKernel::Shift(Isa::Avx512), ConvKernel::DotAvx512Vnni),
        (ConvKernel::Shift(Isa::Neon), ConvKernel::DotNeonSdot),
    ]
    .into_iter()
    .filter(|(a, b)| kernels.contains(a) && kernels.contains(b))
    .collect();
    for (a, b) in &pairs {
        hdr += &format!(
            " {:>11} |",
            format!("{}/{}", a.isa().name(), b.name().trim_start_matches("dot-"))
        );
    }
    print_header(&hdr);
    let shapes: &[(usize, usize, usize, usize, usize)] = if quick {
        &[(64, 64, 3, 1, 56), (512, 512, 3, 1, 7)]
    } else {
        &[
            (64, 64, 3, 1, 56),
            (64, 128, 3, 2, 56),
            (64, 128, 1, 2, 56),
            (128, 128, 3, 1, 28),
            (128, 256, 3, 2, 28),
            (256, 256, 3, 1, 14),
            (256, 512, 3, 2, 14),
            (512, 512, 3, 1, 7),
        ]
    };
    let workers = Workers::new(1);
    let mut rng = Rng(0x0bad_cafe_1234_5678);
    for &n in &[1usize, 8] {
        for &(c, o, k, st, hw) in shapes {
            let name = format!("{c}->{o} {k}x{k}/{st} @{hw} b{n}");
            if filter.is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let g = ConvGeom {
                in_c: c,
                out_c: o,
                kh: k,
                kw: k,
                stride: (st, st),
                pad: (k / 2, k / 2),
                groups: 1,
            };
            let vals: Vec<i32> = (0..o * g.k())
                .map(|_| {
                    let r = rng.next();
                    let m = (r >> 8) % 4;
                    if r & 1 == 1 {
                        -(1 << m)
                    } else {
                        1 << m
                    }
                })
                .collect();
            let w = PackedShift::from_values(Code::ZeroFree, 3, o, g.k(), &vals).unwrap();
            let scale = vec![0.01f32; o];
            let bias = vec![0.1f32; o];
            let q = Quant::new(6.0 / 255.0, 0).unwrap();
            let (oh, ow) = g.out_hw(hw, hw).unwrap();
            let xl = U8Layout::new(hw, hw, c, k / 2);
            let x: Vec<u8> = (0..n * xl.sample_len())
                .map(|_| (rng.next() >> 24) as u8)
                .collect();
            let ol = U8Layout::new(oh, ow, o, 1);
            let fl = F32Layout::new(oh, ow, o);
            let macs = (n * oh * ow * o * g.k()) as f64;
            let mut line = format!("| {:<28} | {:>7.1} |", name, macs / 1e6);
            let mut got = Vec::new();
            let mut reference: Option<Vec<u8>> = None;
            for &kern in &kernels {
                let layer = QConv2d::new(g, &w, &scale, &bias, q, kern).unwrap();
                let mut scratch = QScratch::new();
                let mut ob = vec![0u8; n * ol.sample_len()];
                let mut fb = vec![0f32; n * fl.sample_len()];
                let t = median_secs(budget, || {
                    let targets = [U8Target::new(&mut ob, ol, q)];
                    layer
                        .forward(
                            black_box(&x),
                            xl,
                            n,
                            None,
                            true,
                            QOutputs {
                                u8s: &targets,
                                f32_nhwc: Some((&mut fb, fl)),
                                f32_nchw: None,
                            },
                            &mut scratch,
                            &workers,
                        )
                        .unwrap();
                });
                // Every kernel must write the same bytes (the property tests are the proof).
                match &reference {
                    None => reference = Some(ob.clone()),
                    Some(r) => assert!(r == &ob, "{kern} disagrees"),
                }
                let gm = macs / t / 1e9;
                got.push((kern, gm));
                line += &format!(" {:>14.1} |", gm);
            }
            for (a, b) in &pairs {
                let ga = got.iter().find(|(k, _)| k == a).map(|x| x.1).unwrap_or(0.0);
                let gb = got.iter().find(|(k, _)| k == b).map(|x| x.1).unwrap_or(1.0);
                line += &format!(" {:>10.2}x |", ga / gb);
            }
            println!("{line}");
        }
    }
}
