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
/// [`max_pool2d`], vectorized over channels, output rows split over the workers.
pub fn max_pool2d_nhwc(
    x: &[f32],
    n: usize,
    xl: crate::qconv::F32Layout,
    p: Pool2d,
    out: &mut [f32],
    ol: crate::qconv::F32Layout,
    workers: &crate::Workers,
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
    let rows = n * oh;
    let per = rows.div_ceil(workers.threads() * 4).max(1);
    let tasks = crate::TaskCounter::new(rows.div_ceil(per));
    let optr = crate::kern::SyncPtr(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let avx512 =
        crate::Isa::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512dq");
    workers.run(&|_| {
        while let Some(t) = tasks.next() {
            for row in t * per..((t + 1) * per).min(rows) {
                let (b, oy) = (row / oh, row % oh);
                // SAFETY: this task owns output row `row`; offsets are inside the checked
                // buffers.
                let dst = unsafe { optr.get().add(ol.offset(b, oy, 0)) };
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    unsafe { x86::max_row(x, xl, b, oy, ow, p, dst, ol.cs) };
                    continue;
                }
                max_row(x, xl, b, oy, ow, p, dst, ol.cs);
            }
        }
    });
    Ok((oh, ow))
}

/// The rows and columns of the input a window covers.
#[inline(always)]
fn window(
    p: Pool2d,
    xl: crate::qconv::F32Layout,
    oy: usize,
    ox: usize,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let y0 = (oy * p.stride.0) as isize - p.pad.0 as isize;
    let x0 = (ox * p.stride.1) as isize - p.pad.1 as isize;
    (
        y0.max(0) as usize..((y0 + p.kernel.0 as isize).min(xl.h as isize)) as usize,
        x0.max(0) as usize..((x0 + p.kernel.1 as isize).min(xl.w as isize)) as usize,
    )
}

/// One output row, portable: per channel the maximum over the window in row-major tap order
/// (the order of `max_pool2d`, so ties between `-0.0` and `+0.0` resolve the same way); any NaN
/// gives NaN.
#[allow(clippy::too_many_arguments)]
fn max_row(
    x: &[f32],
    xl: crate::qconv::F32Layout,
    b: usize,
    oy: usize,
    ow: usize,
    p: Pool2d,
    dst: *mut f32,
    ocs: usize,
) {
    for ox in 0..ow {
        let (ys, xs) = window(p, xl, oy, ox);
        for c in 0..xl.c {
            let mut acc = f32::NEG_INFINITY;
            let mut nan = false;
            for iy in ys.clone() {
                for ix in xs.clone() {
                    let v = x[xl.offset(b, iy, ix) + c];
                    nan |= v.is_nan();
                    if v > acc {
                        acc = v;
                    }
                }
            }
            // SAFETY: the caller owns this output row.
            unsafe { *dst.add(ox * ocs + c) = if nan { f32::NAN } else { acc } };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{window, Pool2d};
    use std::arch::x86_64::*;

    /// [`super::max_row`] on 16 channels at a time.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/DQ; the caller owns the output row; `x` holds the input.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]
    pub(super) unsafe fn max_row(
        x: &[f32],
        xl: crate::qconv::F32Layout,
        b: usize,
        oy: usize,
        ow: usize,
        p: Pool2d,
        dst: *mut f32,
        ocs: usize,
    ) {
        let xp = x.as_ptr();
        let nan = _mm512_set1_ps(f32::NAN);
        for ox in 0..ow {
            let (ys, xs) = window(p, xl, oy, ox);
            let mut c0 = 0;
            while c0 < xl.c {
                let valid = (xl.c - c0).min(16);
                let m: __mmask16 = if valid == 16 {
                    0xffff
                } else {
                    (1u32 << valid) as u16 - 1
                };
                let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut any_nan: __mmask16 = 0;
                for iy in ys.clone() {
                    for ix in xs.clone() {
                        let v = _mm512_maskz_loadu_ps(m, xp.add(xl.offset(b, iy, ix) + c0));
                        any_nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                        acc = _mm512_mask_mov_ps(acc, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, acc), v);
                    }
                }
                let r = _mm512_mask_mov_ps(acc, any_nan, nan);
                _mm512_mask_storeu_ps(dst.add(ox * ocs + c0), m, r);
                c0 += 16;
            }
        }
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
