//! Straightforward reference implementations (no tables, no SIMD), used by the property tests
//! and available to other crates' tests.

use crate::float::mul_code_bits;
use crate::packed::{CodeOp, PackedShift};

/// `acc[r, p] = Σ_k w[r,k] * act[k, p]` with plain integer multiplication (`act` `[cols, p]`).
pub fn gemm_i32(w: &PackedShift, act: &[u8], p: usize) -> Vec<i32> {
    let vals = w.values();
    let (rows, cols) = (w.rows(), w.cols());
    let mut acc = vec![0i32; rows * p];
    for r in 0..rows {
        for k in 0..cols {
            let wv = vals[r * cols + k];
            for j in 0..p {
                acc[r * p + j] += wv * act[k * p + j] as i32;
            }
        }
    }
    acc
}

/// `out[r, p] = Σ_k act[k, p] * w[r,k]`, ascending `k` from `+0.0`, products by IEEE
/// multiplication `x * (w as f32)` except that `inf * 0` gives the positive default NaN.
pub fn gemm_f32(w: &PackedShift, act: &[f32], p: usize) -> Vec<f32> {
    let vals = w.values();
    let (rows, cols) = (w.rows(), w.cols());
    let mut out = vec![0f32; rows * p];
    for r in 0..rows {
        for j in 0..p {
            let mut s = 0.0f32;
            for k in 0..cols {
                s += mul_ieee(act[k * p + j], vals[r * cols + k]);
            }
            out[r * p + j] = s;
        }
    }
    out
}

/// IEEE `x * w` with the NaN conventions of the kernels (input NaN: quieted, sign kept;
/// `±inf * 0`: positive default NaN).
pub fn mul_ieee(x: f32, w: i32) -> f32 {
    let y = x * w as f32;
    if y.is_nan() && !x.is_nan() {
        f32::from_bits(crate::float::DEFAULT_NAN)
    } else {
        y
    }
}

/// The kernels' multiplication-free product for an integer power-of-two (or zero) weight.
pub fn mul_shift(x: f32, w: i32) -> f32 {
    let op = if w == 0 {
        CodeOp {
            shift: 0,
            neg: false,
            zero: true,
        }
    } else {
        CodeOp {
            shift: w.unsigned_abs().trailing_zeros(),
            neg: w < 0,
            zero: false,
        }
    };
    f32::from_bits(mul_code_bits(x.to_bits(), op.shift, op.neg, op.zero))
}
