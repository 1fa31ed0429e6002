use kernels::qconv::F32Layout;
use kernels::*;
fn cpu_now() -> f64 {
    let mut t = libc_ts { s: 0, ns: 0 };
    unsafe { clock_gettime(3, &mut t) };
    t.s as f64 + t.ns as f64 * 1e-9
}
#[repr(C)]
struct libc_ts {
    s: i64,
    ns: i64,
}
extern "C" {
    fn clock_gettime(c: i32, t: *mut libc_ts) -> i32;
}
fn main() {
    let g = ConvGeom {
        in_c: 3,
        out_c: 64,
        kh: 7,
        kw: 7,
        stride: (2, 2),
        pad: (3, 3),
        groups: 1,
    };
    let w: Vec<f32> = (0..64 * 147)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
        .collect();
    let layer = Conv2dF32::new(g, w, vec![0.1; 64]).unwrap();
    let x: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 13 % 97) as f32 - 48.0) * 0.02)
        .collect();
    let ol = F32Layout::new(112, 112, 64);
    let mut out = vec![0f32; ol.sample_len()];
    let mut pad = Vec::new();
    let workers = Workers::new(1);
    let mut ts = vec![];
    for _ in 0..50 {
        let t = cpu_now();
        layer
            .forward_nhwc(
                &x,
                1,
                224,
                224,
                true,
                &mut out,
                ol,
                &mut pad,
                &workers,
                Isa::Avx512,
            )
            .unwrap();
        ts.push(cpu_now() - t);
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "stem direct: min {:.3} ms, median {:.3} ms, {:.1} GMAC/s (min)",
        ts[0] * 1e3,
        ts[25] * 1e3,
        118.0e6 / ts[0] / 1e9
    );
}
