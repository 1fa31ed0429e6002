#![allow(dead_code)]
#![allow(clippy::too_many_arguments)]
//! Test helpers: a small deterministic RNG and naive layer references written straight from
//! docs/format.md.

use kernels::{Code, ConvGeom, PackedShift};

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// All integer values a code can take at `bits`.
pub fn code_values(code: Code, bits: u8) -> Vec<i32> {
    let mmax = (1u32 << (bits - 1)) - 1;
    let mut v = Vec::new();
    for m in 0..=mmax {
        match code {
            Code::ZeroFree => {
                v.push(1 << m);
                v.push(-(1 << m));
            }
            Code::WithZero => {
                if m == 0 {
                    v.push(0);
                } else {
                    v.push(1 << (m - 1));
                    v.push(-(1 << (m - 1)));
                }
            }
        }
    }
    v
}

pub fn random_weights(
    rng: &mut Rng,
    code: Code,
    bits: u8,
    rows: usize,
    cols: usize,
) -> PackedShift {
    let vals = code_values(code, bits);
    let w: Vec<i32> = (0..rows * cols)
        .map(|_| vals[rng.below(vals.len())])
        .collect();
    PackedShift::from_values(code, bits, rows, cols, &w).unwrap()
}

pub fn quantize(x: f32, scale: f32, zp: i32) -> i32 {
    let r = (x / scale).round_ties_even();
    let v = if r.is_nan() {
        0
    } else {
        r.clamp(-512.0, 512.0) as i32
    };
    (v + zp).clamp(0, 255)
}

/// Naive conv over NCHW with an element accessor; returns (out, oh, ow). `prod(x, w)` gives the
/// product, `finish(acc_i, acc_f, o)` the output value before residual/relu.
pub fn naive_conv_int(
    g: &ConvGeom,
    w: &PackedShift,
    x: &[f32],
    n: usize,
    h: usize,
    wd: usize,
    in_scale: f32,
    zp: i32,
    scale: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
) -> (Vec<f32>, Vec<i32>, usize, usize) {
    let oh = (h + 2 * g.pad.0 - g.kh) / g.stride.0 + 1;
    let ow = (wd + 2 * g.pad.1 - g.kw) / g.stride.1 + 1;
    let icg = g.in_c / g.groups;
    let ocg = g.out_c / g.groups;
    let mut out = vec![0f32; n * g.out_c * oh * ow];
    let mut accs = vec![0i32; n * g.out_c * oh * ow];
    for b in 0..n {
        for o in 0..g.out_c {
            let grp = o / ocg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc: i64 = 0;
                    for ci in 0..icg {
                        let c = grp * icg + ci;
                        for y in 0..g.kh {
                            for xx in 0..g.kw {
                                let iy = (oy * g.stride.0 + y) as isize - g.pad.0 as isize;
                                let ix = (ox * g.stride.1 + xx) as isize - g.pad.1 as isize;
                                let q = if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize
                                {
                                    zp
                                } else {
                                    quantize(
                                        x[((b * g.in_c + c) * h + iy as usize) * wd + ix as usize],
                                        in_scale,
                                        zp,
                                    )
                                };
                                let wv = w.value(o, (ci * g.kh + y) * g.kw + xx);
                                acc += wv as i64 * (q - zp) as i64;
                            }
                        }
                    }
                    let idx = ((b * g.out_c + o) * oh + oy) * ow + ox;
                    let acc = i32::try_from(acc).unwrap();
                    accs[idx] = acc;
                    let mut y = acc as f32 * (in_scale * scale[o]) + bias[o];
                    if let Some(r) = residual {
                        y += r[idx];
                    }
                    if relu && y < 0.0 {
                        y = 0.0;
                    }
                    out[idx] = y;
                }
            }
        }
    }
    (out, accs, oh, ow)
}

/// Naive float-path conv: products by IEEE multiplication, sums in ascending column order.
pub fn naive_conv_float(
    g: &ConvGeom,
    w: &PackedShift,
    x: &[f32],
    n: usize,
    h: usize,
    wd: usize,
    scale: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
) -> (Vec<f32>, usize, usize) {
    let oh = (h + 2 * g.pad.0 - g.kh) / g.stride.0 + 1;
    let ow = (wd + 2 * g.pad.1 - g.kw) / g.stride.1 + 1;
    let icg = g.in_c / g.groups;
    let ocg = g.out_c / g.groups;
    let mut out = vec![0f32; n * g.out_c * oh * ow];
    for b in 0..n {
        for o in 0..g.out_c {
            let grp = o / ocg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0f32;
                    for ci in 0..icg {
                        let c = grp * icg + ci;
                        for y in 0..g.kh {
                            for xx in 0..g.kw {
                                let iy = (oy * g.stride.0 + y) as isize - g.pad.0 as isize;
                                let ix = (ox * g.stride.1 + xx) as isize - g.pad.1 as isize;
                                let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize
                                {
                                    0.0
                                } else {
                                    x[((b * g.in_c + c) * h + iy as usize) * wd + ix as usize]
                                };
                                let wv = w.value(o, (ci * g.kh + y) * g.kw + xx);
                                acc += kernels::reference::mul_ieee(v, wv);
                            }
                        }
                    }
                    let idx = ((b * g.out_c + o) * oh + oy) * ow + ox;
                    let mut y = acc * scale[o] + bias[o];
                    if let Some(r) = residual {
                        y += r[idx];
                    }
                    if relu && y < 0.0 {
                        y = 0.0;
                    }
                    out[idx] = y;
                }
            }
        }
    }
    (out, oh, ow)
}

pub fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}
