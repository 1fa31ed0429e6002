use kernels::qconv::{F32Layout, U8Layout};
use kernels::*;
#[repr(C)]
struct Ts {
    s: i64,
    ns: i64,
}
extern "C" {
    fn clock_gettime(c: i32, t: *mut Ts) -> i32;
}
fn cpu_now() -> f64 {
    let mut t = Ts { s: 0, ns: 0 };
    unsafe { clock_gettime(3, &mut t) };
    t.s as f64 + t.ns as f64 * 1e-9
}
fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let only = std::env::var("K").ok();
    let shapes = [
        (64, 64, 3, 1, 56),
        (64, 128, 3, 2, 56),
        (64, 128, 1, 2, 56),
        (128, 128, 3, 1, 28),
        (128, 256, 3, 2, 28),
        (256, 256, 3, 1, 14),
        (256, 512, 3, 2, 14),
        (512, 512, 3, 1, 7),
    ];
    let workers = Workers::new(threads);
    let only_shape: Option<usize> = std::env::var("S").ok().and_then(|s| s.parse().ok());
    let reps: usize = std::env::var("R")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    for n in [1usize, 8] {
        for (si, &(c, o, k, s, hw)) in shapes.iter().enumerate() {
            if only_shape.is_some_and(|x| x != si) {
                continue;
            }
            let g = ConvGeom {
                in_c: c,
                out_c: o,
                kh: k,
                kw: k,
                stride: (s, s),
                pad: (k / 2, k / 2),
                groups: 1,
            };
            let vals: Vec<i32> = (0..o * g.k())
                .map(|i| {
                    let m = (i * 7 + i / 3) % 4;
                    if i % 3 == 0 {
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
            let xl = U8Layout::new(hw, hw, c, 1);
            let x: Vec<u8> = (0..n * xl.sample_len())
                .map(|i| (i * 31 % 251) as u8)
                .collect();
            let ol = U8Layout::new(oh, ow, o, 1);
            let mut ob = vec![0u8; n * ol.sample_len()];
            let fl = F32Layout::new(oh, ow, o);
            let mut fb = vec![0f32; n * fl.sample_len()];
            let macs = (n * oh * ow * o * g.k()) as f64;
            let mut line = format!("{c:>3}->{o:>3} k{k} s{s} {hw:>2}x{hw:<2} b{n}:");
            for kern in ConvKernel::supported() {
                if let Some(f) = &only {
                    if !kern.name().contains(f.as_str()) {
                        continue;
                    }
                }
                if kern == ConvKernel::DotScalar || kern == ConvKernel::Shift(Isa::Scalar) {
                    continue;
                }
                let layer = QConv2d::new(g, &w, &scale, &bias, q, kern).unwrap();
                let mut scratch = QScratch::new();
                let mut times = vec![];
                for _ in 0..reps {
                    let targets = [U8Target::new(&mut ob, ol, q)];
                    let t = cpu_now();
                    layer
                        .forward(
                            &x,
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
                    times.push(cpu_now() - t);
                }
                times.sort_by(|a, b| a.partial_cmp(b).unwrap());
                line += &format!(
                    "  {} {:.0} ({:.3}ms)",
                    kern.name(),
                    macs / times[0] / 1e9,
                    times[0] * 1e3
                );
            }
            println!("{line}");
        }
    }
}
