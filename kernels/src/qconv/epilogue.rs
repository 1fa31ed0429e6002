//! The fused epilogue of the quantized convolution, applied to one tile of exact `i32` sums:
//! `y = f32(acc + corr[o]) * mul[o] + bias[o]`, `+ residual`, ReLU (`y < 0 -> 0`), then written
//! as `f32` (NHWC or NCHW) and/or requantized to `u8` for each consumer
//! (`clamp(round_half_even(y / scale) + zero_point, 0, 255)`). Separate multiply and add (no FMA
//! contraction), so every target gives the bits of `ops::epilogue_i32` and `Quant::quantize`.

use multiversion::multiversion;

use super::layout::{F32Layout, U8Layout};
use crate::kern::SyncPtr;
use crate::ops::Quant;

/// Requantization with a precomputed reciprocal: `y * (1/scale)` is used only where it cannot
/// round differently from `y / scale` (far from a half-integer); a 16-lane group with any lane
/// near one is divided exactly.
#[derive(Clone, Copy, Debug)]
pub struct FastQuant {
    pub quant: Quant,
    inv: f32,
    fast: bool,
}

impl FastQuant {
    pub fn new(quant: Quant) -> FastQuant {
        let inv = 1.0 / quant.scale;
        FastQuant {
            quant,
            inv,
            fast: inv.is_normal() && quant.scale.is_normal(),
        }
    }

    /// Quantizes 16 values exactly as `Quant::quantize` does.
    #[inline(always)]
    pub fn quantize16(&self, y: &[f32; 16], out: &mut [u8; 16]) {
        let mut d = [0f32; 16];
        let mut near = false;
        if self.fast {
            for i in 0..16 {
                d[i] = y[i] * self.inv;
            }
            for i in 0..16 {
                // Same rule as the AVX-512 version: a quotient within 2^-11 of a half-integer
                // (for |d| <= 1024 the reciprocal's error is below 1.5 * 2^-13) is recomputed
                // by exact division; beyond 1024 both saturate. NaN compares false.
                near |= (d[i] - d[i].round_ties_even()).abs() >= 0.5 - 1.0 / 2048.0;
            }
        }
        if !self.fast || near {
            for i in 0..16 {
                d[i] = y[i] / self.quant.scale;
            }
        }
        let zp = self.quant.zero_point;
        for i in 0..16 {
            let r = d[i].round_ties_even();
            let v = if r.is_nan() {
                0
            } else {
                r.clamp(-512.0, 512.0) as i32
            };
            out[i] = (v + zp).clamp(0, 255) as u8;
        }
    }
}

/// A `u8` consumer of the layer's output.
pub struct U8Target {
    pub(crate) ptr: SyncPtr<u8>,
    pub(crate) layout: U8Layout,
    pub(crate) q: FastQuant,
}

/// Everything the epilogue reads besides the tile.
pub(crate) struct EpiCtx<'a> {
    pub corr: &'a [i32],
    pub mul: &'a [f32],
    pub bias: &'a [f32],
    pub relu: bool,
    pub out_c: usize,
    pub oh: usize,
    pub ow: usize,
    pub residual: Option<(SyncPtr<f32>, F32Layout)>,
    pub u8s: &'a [U8Target],
    pub f32_nhwc: Option<(SyncPtr<f32>, F32Layout)>,
    pub f32_nchw: Option<SyncPtr<f32>>,
    /// Use the AVX-512 epilogue (the CPU has AVX-512 F/BW/VL/DQ).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub avx512: bool,
}

/// Applies the epilogue (the AVX-512 version where the CPU has it, else portable code).
///
/// # Safety
/// As [`apply_portable`].
#[inline]
pub(crate) unsafe fn apply(
    ctx: &EpiCtx<'_>,
    tile: &[i32],
    ocb: usize,
    oc0: usize,
    p0: usize,
    np: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if ctx.avx512 {
        return x86::apply_avx512(ctx, tile, ocb, oc0, p0, np);
    }
    apply_portable(ctx, tile, ocb, oc0, p0, np)
}

/// Asks the cache for the `f32` lines the epilogue of this tile will touch (the residual it
/// reads, the `f32` output it writes), so that the loads and the stores' line fills overlap
/// the tile's arithmetic instead of stalling the epilogue: the residual was written two layers
/// earlier and is often out of L2 by now. A hint only: no effect on any value.
///
/// # Safety
/// As [`apply`] (the addresses are computed as it computes them; prefetching never faults).
#[inline]
pub(crate) unsafe fn prefetch(ctx: &EpiCtx<'_>, ocb: usize, oc0: usize, p0: usize, np: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ohw = ctx.oh * ctx.ow;
        let len = (oc0 + ocb).min(ctx.out_c).saturating_sub(oc0);
        if len == 0 {
            return;
        }
        let lines = |start: *const u8, bytes: usize| {
            let mut a = start as usize & !63;
            let end = start as usize + bytes;
            while a < end {
                _mm_prefetch::<_MM_HINT_T0>(a as *const i8);
                a += 64;
            }
        };
        if ctx.residual.is_none() && ctx.f32_nhwc.is_none() {
            return;
        }
        let (mut b, r) = (p0 / ohw, p0 % ohw);
        let (mut oy, mut ox) = (r / ctx.ow, r % ctx.ow);
        for _ in 0..np {
            if let Some((rp, rl)) = ctx.residual {
                lines(
                    rp.get().add(rl.offset(b, oy, ox) + oc0) as *const u8,
                    len * 4,
                );
            }
            if let Some((fp, fl)) = ctx.f32_nhwc {
                lines(
                    fp.get().add(fl.offset(b, oy, ox) + oc0) as *const u8,
                    len * 4,
                );
            }
            ox += 1;
            if ox == ctx.ow {
                ox = 0;
                oy += 1;
                if oy == ctx.oh {
                    oy = 0;
                    b += 1;
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ctx, ocb, oc0, p0, np);
}

/// Applies the epilogue to `np` pixels starting at flat output pixel `p0` (over `n*oh*ow`) and
/// the output channels `oc0..oc0 + ocb` (clipped to `out_c`); `tile[j * ocb + o]` is the sum of
/// pixel `p0 + j`, channel `oc0 + o`.
///
/// # Safety
/// The targets must be valid for every pixel and channel addressed; no other thread may write
/// the same pixels and channels concurrently.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
pub(crate) unsafe fn apply_portable(
    ctx: &EpiCtx<'_>,
    tile: &[i32],
    ocb: usize,
    oc0: usize,
    p0: usize,
    np: usize,
) {
    let ohw = ctx.oh * ctx.ow;
    let oc_end = (oc0 + ocb).min(ctx.out_c);
    for j in 0..np {
        let p = p0 + j;
        let (b, r) = (p / ohw, p % ohw);
        let (oy, ox) = (r / ctx.ow, r % ctx.ow);
        let mut o = oc0;
        while o < oc_end {
            // 16 channels at a time; lanes past `oc_end` are computed on padding and not stored
            // (`corr`/`mul`/`bias` are padded to a multiple of 16).
            let valid = (oc_end - o).min(16);
            let mut y = [0f32; 16];
            let t = &tile[j * ocb + (o - oc0)..];
            for i in 0..16 {
                let a = if i < valid { t[i] } else { 0 };
                y[i] = (a.wrapping_add(ctx.corr[o + i])) as f32 * ctx.mul[o + i] + ctx.bias[o + i];
            }
            if let Some((rp, rl)) = ctx.residual {
                let src = rp.0.add(rl.offset(b, oy, ox) + o);
                for i in 0..valid {
                    y[i] += *src.add(i);
                }
            }
            if ctx.relu {
                for v in y.iter_mut() {
                    if *v < 0.0 {
                        *v = 0.0;
                    }
                }
            }
            if let Some((fp, fl)) = ctx.f32_nhwc {
                let dst = fp.0.add(fl.offset(b, oy, ox) + o);
                std::ptr::copy_nonoverlapping(y.as_ptr(), dst, valid);
            }
            if let Some(np_) = ctx.f32_nchw {
                let base = (b * ctx.out_c + o) * ohw + r;
                for i in 0..valid {
                    *np_.0.add(base + i * ohw) = y[i];
                }
            }
            for t in ctx.u8s {
                let mut q = [0u8; 16];
                t.q.quantize16(&y, &mut q);
                let dst = t.ptr.0.add(t.layout.offset(b, oy, ox) + o);
                std::ptr::copy_nonoverlapping(q.as_ptr(), dst, valid);
            }
            o += 16;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::EpiCtx;
    use std::arch::x86_64::*;

    /// `Quant::quantize` of 16 lanes: `y * (1/scale)` rounded half to even, except in a group
    /// where some lane's quotient is within `2^-11` of a half-integer: there `y / scale` is
    /// computed exactly. (For `|d| <= 1024` the reciprocal's error is below `1.5 * 2^-13`, so
    /// outside that band both quotients round to the same integer; beyond 1024 both saturate.)
    /// NaN goes to the zero point; the result saturates to `u8`.
    #[inline(always)]
    pub(crate) unsafe fn quantize_v(y: __m512, q: &super::FastQuant) -> __m128i {
        let abs = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fff_ffff));
        let mut d;
        let mut rr;
        if q.fast {
            d = _mm512_mul_ps(y, _mm512_set1_ps(q.inv));
            rr = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(d);
            let e = _mm512_and_ps(_mm512_sub_ps(d, rr), abs);
            let near = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(e, _mm512_set1_ps(0.5 - 1.0 / 2048.0));
            if near != 0 {
                d = _mm512_div_ps(y, _mm512_set1_ps(q.quant.scale));
                rr = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(d);
            }
        } else {
            d = _mm512_div_ps(y, _mm512_set1_ps(q.quant.scale));
            rr = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(d);
        }
        let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(rr, rr);
        let c = _mm512_min_ps(
            _mm512_max_ps(rr, _mm512_set1_ps(-512.0)),
            _mm512_set1_ps(512.0),
        );
        let v = _mm512_maskz_cvtps_epi32(ord, c);
        let v = _mm512_max_epi32(
            _mm512_add_epi32(v, _mm512_set1_epi32(q.quant.zero_point)),
            _mm512_setzero_si512(),
        );
        _mm512_cvtusepi32_epi8(v)
    }

    /// Quantizes `c` channels of NHWC `f32` at `src` into `dst`.
    ///
    /// # Safety
    /// `src` readable and `dst` writable for `c` values; AVX-512 F/BW/VL/DQ.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]
    pub(crate) unsafe fn quantize_row(
        src: *const f32,
        dst: *mut u8,
        c: usize,
        q: &super::FastQuant,
    ) {
        let mut o = 0;
        while o < c {
            let valid = (c - o).min(16);
            let m: __mmask16 = if valid == 16 {
                0xffff
            } else {
                (1u32 << valid) as u16 - 1
            };
            let y = _mm512_maskz_loadu_ps(m, src.add(o));
            _mm_mask_storeu_epi8(dst.add(o) as *mut i8, m, quantize_v(y, q));
            o += 16;
        }
    }

    /// The epilogue on 16-lane registers; the same operations in the same order as the portable
    /// version (multiply, then add; residual; ReLU by `y < 0` mask so `-0.0` and NaN pass
    /// unchanged; requantization by reciprocal with an exact division for any group near a
    /// half-integer).
    ///
    /// # Safety
    /// As `apply_portable`, and the CPU must have AVX-512 F/BW/VL/DQ.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]
    pub(crate) unsafe fn apply_avx512(
        ctx: &EpiCtx<'_>,
        tile: &[i32],
        ocb: usize,
        oc0: usize,
        p0: usize,
        np: usize,
    ) {
        let ohw = ctx.oh * ctx.ow;
        let oc_end = (oc0 + ocb).min(ctx.out_c);
        let zero = _mm512_setzero_ps();
        let tp = tile.as_ptr();
        let mut b = p0 / ohw;
        let mut r = p0 % ohw;
        for j in 0..np {
            let (oy, ox) = (r / ctx.ow, r % ctx.ow);
            let mut o = oc0;
            while o < oc_end {
                let valid = (oc_end - o).min(16);
                let m: __mmask16 = if valid == 16 {
                    0xffff
                } else {
                    (1u32 << valid) as u16 - 1
                };
                let a = _mm512_maskz_loadu_epi32(m, tp.add(j * ocb + (o - oc0)));
                let a =
                    _mm512_add_epi32(a, _mm512_loadu_si512(ctx.corr.as_ptr().add(o) as *const _));
                let mut y = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(a),
                    _mm512_loadu_ps(ctx.mul.as_ptr().add(o)),
                );
                y = _mm512_add_ps(y, _mm512_loadu_ps(ctx.bias.as_ptr().add(o)));
                if let Some((rp, rl)) = ctx.residual {
                    let src = rp.get().add(rl.offset(b, oy, ox) + o);
                    y = _mm512_mask_add_ps(y, m, y, _mm512_maskz_loadu_ps(m, src));
                }
                if ctx.relu {
                    let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, zero);
                    y = _mm512_mask_mov_ps(y, neg, zero);
                }
                if let Some((fp, fl)) = ctx.f32_nhwc {
                    _mm512_mask_storeu_ps(fp.get().add(fl.offset(b, oy, ox) + o), m, y);
                }
                if let Some(np_) = ctx.f32_nchw {
                    let base = (b * ctx.out_c + o) * ohw + r;
                    let mut lanes = [0f32; 16];
                    _mm512_storeu_ps(lanes.as_mut_ptr(), y);
                    for i in 0..valid {
                        *np_.get().add(base + i * ohw) = lanes[i];
                    }
                }
                for t in ctx.u8s {
                    let bytes = quantize_v(y, &t.q);
                    let dst = t.ptr.get().add(t.layout.offset(b, oy, ox) + o);
                    _mm_mask_storeu_epi8(dst as *mut i8, m, bytes);
                }
                o += 16;
            }
            r += 1;
            if r == ohw {
                r = 0;
                b += 1;
            }
        }
    }
}
