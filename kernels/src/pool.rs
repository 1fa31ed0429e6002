//! Pooling (PyTorch semantics, `ceil_mode=False`).

use crate::error::{check_len, mul_dims, KernelError};
use multiversion::multiversion;

/// Pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl Pool2d {
    /// Output size; errors on zero sizes, padding above half the kernel (as PyTorch), or a window
    /// larger than the padded input.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), KernelError> {
        let p = self;
        if p.kernel.0 == 0 || p.kernel.1 == 0 || p.stride.0 == 0 || p.stride.1 == 0 {
            return Err(KernelError::invalid(format!(
                "pooling needs non-zero kernel and stride: {p:?}"
            )));
        }
        if 2 * p.pad.0 > p.kernel.0 || 2 * p.pad.1 > p.kernel.1 {
            return Err(KernelError::invalid(format!(
                "pooling padding must be at most half the kernel: {p:?}"
            )));
        }
        if h + 2 * p.pad.0 < p.kernel.0 || w + 2 * p.pad.1 < p.kernel.1 {
            return Err(KernelError::shape(format!(
                "pooling window {p:?} larger than the {h}x{w} input"
            )));
        }
        Ok((
            (h + 2 * p.pad.0 - p.kernel.0) / p.stride.0 + 1,
            (w + 2 * p.pad.1 - p.kernel.1) / p.stride.1 + 1,
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn pool(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    p: Pool2d,
    out: &mut [f32],
    max: bool,
) -> Result<(usize, usize), KernelError> {
    let (oh, ow) = p.out_hw(h, w)?;
    check_len("pooling input", x.len(), mul_dims(&[n, c, h, w])?)?;
    check_len("pooling output", out.len(), mul_dims(&[n, c, oh, ow])?)?;
    let div = (p.kernel.0 * p.kernel.1) as f32;
    for (img, o) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                let mut nan = false;
                for ky in 0..p.kernel.0 {
                    let iy = (oy * p.stride.0 + ky) as isize - p.pad.0 as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..p.kernel.1 {
                        let ix = (ox * p.stride.1 + kx) as isize - p.pad.1 as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let v = img[iy as usize * w + ix as usize];
                        if max {
                            nan |= v.is_nan();
                            if v > acc {
                                acc = v;
                            }
                        } else {
                            acc += v;
                        }
                    }
                }
                o[oy * ow + ox] = if max {
                    if nan {
                        f32::NAN
                    } else {
                        acc
                    }
                } else {
                    acc / div
                };
            }
        }
    }
    Ok((oh, ow))
}

/// Max pooling, NCHW; padding counts as -inf; NaN propagates (as PyTorch). Returns `(oh, ow)`.
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    p: Pool2d,
    out: &mut [f32],
) -> Result<(usize, usize), KernelError> {
    pool(x, n, c, h, w, p, out, true)
}

/// Max pooling on NHWC `f32` (`xl` in, `ol` out): the same window order and NaN rule as
/// [`max_pool2d`], vectorized over channels.
pub fn max_pool2d_nhwc(
    x: &[f32],
    n: usize,
    xl: crate::qconv::F32Layout,
    p: Pool2d,
    out: &mut [f32],
    ol: crate::qconv::F32Layout,
) -> Result<(usize, usize), KernelError> {
    let (oh, ow) = p.out_hw(xl.h, xl.w)?;
    if (ol.h, ol.w, ol.c) != (oh, ow, xl.c) {
        return Err(KernelError::shape(
            "max_pool2d_nhwc: output layout does not match",
        ));
    }
    check_len("pooling input", x.len(), mul_dims(&[n, xl.sample_len()])?)?;
    check_len(
        "pooling output",
        out.len(),
        mul_dims(&[n, ol.sample_len()])?,
    )?;
    max_pool_nhwc_loop(x, n, xl, p, out, ol);
    Ok((oh, ow))
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
fn max_pool_nhwc_loop(
    x: &[f32],
    n: usize,
    xl: crate::qconv::F32Layout,
    p: Pool2d,
    out: &mut [f32],
    ol: crate::qconv::F32Layout,
) {
    for b in 0..n {
        for oy in 0..ol.h {
            // Rows and columns of the window inside the input.
            let y0 = (oy * p.stride.0) as isize - p.pad.0 as isize;
            let ys = y0.max(0) as usize..((y0 + p.kernel.0 as isize).min(xl.h as isize)) as usize;
            for ox in 0..ol.w {
                let x0 = (ox * p.stride.1) as isize - p.pad.1 as isize;
                let xs =
                    x0.max(0) as usize..((x0 + p.kernel.1 as isize).min(xl.w as isize)) as usize;
                let dst = ol.offset(b, oy, ox);
                max_window(x, xl, b, ys.clone(), xs, &mut out[dst..dst + xl.c]);
            }
        }
    }
}

/// The maximum over a window of NHWC pixels for every channel, taps in row-major order (the
/// order of `max_pool2d`, so ties between `-0.0` and `+0.0` resolve the same way); any NaN
/// gives NaN.
#[inline(always)]
fn max_window(
    x: &[f32],
    xl: crate::qconv::F32Layout,
    b: usize,
    ys: std::ops::Range<usize>,
    xs: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let c = out.len();
    let mut c0 = 0;
    while c0 < c {
        let m = (c - c0).min(16);
        let mut acc = [f32::NEG_INFINITY; 16];
        let mut nan = [false; 16];
        for iy in ys.clone() {
            for ix in xs.clone() {
                let o = xl.offset(b, iy, ix) + c0;
                let src: &[f32; 16] = match x.get(o..o + 16) {
                    Some(v) => v.try_into().expect("16 values"),
                    None => {
                        // The last channels of the last pixel: a partial group.
                        let mut t = [0f32; 16];
                        t[..m].copy_from_slice(&x[o..o + m]);
                        for (i, &v) in t[..m].iter().enumerate() {
                            nan[i] |= v.is_nan();
                            if v > acc[i] {
                                acc[i] = v;
                            }
                        }
                        continue;
                    }
                };
                for i in 0..16 {
                    let v = src[i];
                    nan[i] |= v.is_nan();
                    if v > acc[i] {
                        acc[i] = v;
                    }
                }
            }
        }
        for i in 0..m {
            out[c0 + i] = if nan[i] { f32::NAN } else { acc[i] };
        }
        c0 += 16;
    }
}

/// Average pooling, NCHW; the divisor is `kh*kw` (padding counts, PyTorch's default
/// `count_include_pad=True`). Sums in window order.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool2d(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    p: Pool2d,
    out: &mut [f32],
) -> Result<(usize, usize), KernelError> {
    pool(x, n, c, h, w, p, out, false)
}

/// Global average pooling: `x` `[n, c, hw]` -> `out` `[n, c]` (mean over `hw`, summed in order).
pub fn global_avg_pool(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if hw == 0 {
        return Err(KernelError::shape(
            "global_avg_pool over an empty spatial extent",
        ));
    }
    check_len("global_avg_pool input", x.len(), mul_dims(&[n, c, hw])?)?;
    check_len("global_avg_pool output", out.len(), mul_dims(&[n, c])?)?;
    gap(x, hw, out);
    Ok(())
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
fn gap(x: &[f32], hw: usize, out: &mut [f32]) {
    let inv = hw as f32;
    for (o, row) in out.iter_mut().zip(x.chunks_exact(hw)) {
        let mut s = 0.0f32;
        for &v in row {
            s += v;
        }
        *o = s / inv;
    }
}
