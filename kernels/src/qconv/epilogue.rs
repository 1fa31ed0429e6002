//! The fused epilogue of the quantized convolution, applied to one tile of exact `i32` sums:
//! `y = f32(acc + corr[o]) * mul[o] + bias[o]`, `+ residual`, ReLU (`y < 0 -> 0`), then written
//! as `f32` (NHWC or NCHW) and/or requantized to `u8` for each consumer
//! (`clamp(round_half_even(y / scale) + zero_point, 0, 255)`). Separate multiply and add (no FMA
//! contraction), so every target gives the bits of `ops::epilogue_i32` and `Quant::quantize`.
//!
//! Three implementations, chosen per layer ([`EpilogueImpl`]): portable code (auto-vectorised per
//! target), AVX2 on 8-lane registers, and AVX-512 on 16-lane registers with masked tails. They
//! perform the same operations in the same order, so they give the same bits.

use multiversion::multiversion;

use crate::error::KernelError;

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

/// Which implementation of the epilogue (and of the stem's requantization) runs. Every one gives
/// the same bits; the choice changes speed only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EpilogueImpl {
    /// Portable code (compiled for AVX2+FMA, AVX-512 and NEON by `multiversion`).
    Portable,
    /// 8-lane AVX2 registers.
    Avx2,
    /// 16-lane AVX-512 registers with masked tails.
    Avx512,
}

impl EpilogueImpl {
    pub const ALL: [EpilogueImpl; 3] = [
        EpilogueImpl::Portable,
        EpilogueImpl::Avx2,
        EpilogueImpl::Avx512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EpilogueImpl::Portable => "portable",
            EpilogueImpl::Avx2 => "avx2",
            EpilogueImpl::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run it.
    pub fn is_supported(self) -> bool {
        match self {
            EpilogueImpl::Portable => true,
            #[cfg(target_arch = "x86_64")]
            EpilogueImpl::Avx2 => crate::isa::Isa::Avx2.is_supported(),
            #[cfg(target_arch = "x86_64")]
            EpilogueImpl::Avx512 => crate::isa::Isa::Avx512.is_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every implementation this CPU can run.
    pub fn supported() -> Vec<EpilogueImpl> {
        EpilogueImpl::ALL
            .into_iter()
            .filter(|e| e.is_supported())
            .collect()
    }

    /// The widest implementation this CPU runs (checked once).
    pub fn best() -> EpilogueImpl {
        static BEST: std::sync::OnceLock<EpilogueImpl> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            [EpilogueImpl::Avx512, EpilogueImpl::Avx2]
                .into_iter()
                .find(|e| e.is_supported())
                .unwrap_or(EpilogueImpl::Portable)
        })
    }

    /// Requantizes `src` into `dst` (the first `min(len)` values) exactly as
    /// [`crate::Quant::quantize`], with this implementation.
    pub fn quantize(self, src: &[f32], dst: &mut [u8], fq: &FastQuant) -> Result<(), KernelError> {
        if !self.is_supported() {
            return Err(KernelError::unsupported(format!(
                "the {} epilogue is not supported by this CPU",
                self.name()
            )));
        }
        let c = src.len().min(dst.len());
        // SAFETY: supported (checked above); both slices hold at least `c` values.
        unsafe { self.quantize_unchecked(src.as_ptr(), dst.as_mut_ptr(), c, fq) };
        Ok(())
    }

    /// # Safety
    /// `self` supported by this CPU; `src` readable and `dst` writable for `c` values.
    #[inline]
    pub(crate) unsafe fn quantize_unchecked(
        self,
        src: *const f32,
        dst: *mut u8,
        c: usize,
        fq: &FastQuant,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            EpilogueImpl::Avx512 => x86::quantize_row(src, dst, c, fq),
            #[cfg(target_arch = "x86_64")]
            EpilogueImpl::Avx2 => x86::quantize_row_avx2(src, dst, c, fq),
            _ => {
                let mut y = [0f32; 16];
                let mut q = [0u8; 16];
                let mut c0 = 0;
                while c0 < c {
                    let m = (c - c0).min(16);
                    std::ptr::copy_nonoverlapping(src.add(c0), y.as_mut_ptr(), m);
                    fq.quantize16(&y, &mut q);
                    std::ptr::copy_nonoverlapping(q.as_ptr(), dst.add(c0), m);
                    c0 += 16;
                }
            }
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
    /// The implementation to run (supported by this CPU: checked when the layer was set up).
    pub level: EpilogueImpl,
}

/// Applies the epilogue with the implementation `ctx.level` names.
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
    match ctx.level {
        #[cfg(target_arch = "x86_64")]
        EpilogueImpl::Avx512 => x86::apply_avx512(ctx, tile, ocb, oc0, p0, np),
        #[cfg(target_arch = "x86_64")]
        EpilogueImpl::Avx2 => x86::apply_avx2(ctx, tile, ocb, oc0, p0, np),
        _ => apply_portable(ctx, tile, ocb, oc0, p0, np),
    }
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
    use crate::direct::x86::{Y, Z};
    use crate::direct::FmaOps;
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

    /// One register of lanes for the whole-vector epilogue ([`apply_whole`]): the float
    /// operations (`load`, `add`, `relu`, `store`) are the direct convolution's [`FmaOps`] (the
    /// same instructions and `-0.0`/NaN rule); this adds the integer and requantizing ones.
    pub(crate) trait Lanes: FmaOps {
        type I: Copy;
        unsafe fn load_i(p: *const i32) -> Self::I;
        unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
        unsafe fn cvt(a: Self::I) -> Self::V;
        unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
        /// Requantizes and stores `VW` bytes.
        unsafe fn store_q(p: *mut u8, y: Self::V, q: &super::FastQuant);
    }

    impl Lanes for Z {
        type I = __m512i;
        #[inline(always)]
        unsafe fn load_i(p: *const i32) -> __m512i {
            _mm512_loadu_si512(p as *const _)
        }
        #[inline(always)]
        unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
            _mm512_add_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn cvt(a: __m512i) -> __m512 {
            _mm512_cvtepi32_ps(a)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store_q(p: *mut u8, y: __m512, q: &super::FastQuant) {
            _mm_storeu_si128(p as *mut __m128i, quantize_v(y, q))
        }
    }

    impl Lanes for Y {
        type I = __m256i;
        #[inline(always)]
        unsafe fn load_i(p: *const i32) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }
        #[inline(always)]
        unsafe fn add_i(a: __m256i, b: __m256i) -> __m256i {
            _mm256_add_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn cvt(a: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(a)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store_q(p: *mut u8, y: __m256, q: &super::FastQuant) {
            _mm_storel_epi64(p as *mut __m128i, quantize8(y, q))
        }
    }

    /// The common case of the epilogue, specialised at compile time: every channel group is a
    /// whole register of `L::VW` lanes inside `out_c`, at most one `u8` target, no NCHW output.
    /// `RES`/`RELU`/`F32`/`U8` say which parts run, so the inner loop has no branch on the
    /// layer's shape and no lane mask, and a pixel's addresses are computed once per pixel. The
    /// operations and their order are those of `apply_avx512` / `apply_avx2` on a full vector,
    /// so the bits are the same. Instantiated inside their `#[target_feature]` bodies.
    ///
    /// # Safety
    /// As `apply_portable`; `ocb % L::VW == 0`, `oc0 + ocb <= ctx.out_c`, `ctx.u8s.len() == U8
    /// as usize`, `ctx.residual.is_some() == RES`, `ctx.f32_nhwc.is_some() == F32`; the CPU
    /// runs `L`'s instructions.
    #[inline(always)]
    unsafe fn apply_whole<
        L: Lanes,
        const RES: bool,
        const RELU: bool,
        const F32: bool,
        const U8: bool,
    >(
        ctx: &EpiCtx<'_>,
        tile: &[i32],
        ocb: usize,
        oc0: usize,
        p0: usize,
        np: usize,
    ) {
        let ohw = ctx.oh * ctx.ow;
        let tp = tile.as_ptr();
        let corr = ctx.corr.as_ptr().add(oc0);
        let mul = ctx.mul.as_ptr().add(oc0);
        let bias = ctx.bias.as_ptr().add(oc0);
        let (mut b, r) = (p0 / ohw, p0 % ohw);
        let (mut oy, mut ox) = (r / ctx.ow, r % ctx.ow);
        for j in 0..np {
            let res = match ctx.residual {
                Some((rp, rl)) if RES => rp.get().add(rl.offset(b, oy, ox) + oc0) as *const f32,
                _ => std::ptr::null(),
            };
            let fout = match ctx.f32_nhwc {
                Some((fp, fl)) if F32 => fp.get().add(fl.offset(b, oy, ox) + oc0),
                _ => std::ptr::null_mut(),
            };
            let (qdst, q) = match ctx.u8s.first() {
                Some(t) if U8 => (
                    t.ptr.get().add(t.layout.offset(b, oy, ox) + oc0),
                    Some(&t.q),
                ),
                _ => (std::ptr::null_mut(), None),
            };
            let t = tp.add(j * ocb);
            let mut i = 0;
            while i < ocb {
                let a = L::add_i(L::load_i(t.add(i)), L::load_i(corr.add(i)));
                let mut y = L::mul(L::cvt(a), L::load(mul.add(i)));
                y = L::add(y, L::load(bias.add(i)));
                if RES {
                    y = L::add(y, L::load(res.add(i)));
                }
                if RELU {
                    y = L::relu(y);
                }
                if F32 {
                    L::store(y, fout.add(i));
                }
                if let (true, Some(q)) = (U8, q) {
                    L::store_q(qdst.add(i), y, q);
                }
                i += L::VW;
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

    /// Runs [`apply_whole`] for lanes `L` and returns from the caller when the tile qualifies
    /// (whole registers, at most one `u8` target, no NCHW output); otherwise falls through.
    macro_rules! whole_or_fall_through {
        ($l:ty, $ctx:expr, $tile:expr, $ocb:expr, $oc0:expr, $p0:expr, $np:expr) => {{
            let (ctx, ocb, oc0): (&EpiCtx<'_>, usize, usize) = ($ctx, $ocb, $oc0);
            if ocb.is_multiple_of(<$l as FmaOps>::VW)
                && oc0 + ocb <= ctx.out_c
                && ctx.f32_nchw.is_none()
                && ctx.u8s.len() <= 1
            {
                let key = (
                    ctx.residual.is_some(),
                    ctx.relu,
                    ctx.f32_nhwc.is_some(),
                    !ctx.u8s.is_empty(),
                );
                whole_or_fall_through!(@pick $l, key, ctx, $tile, ocb, oc0, $p0, $np;
                    (false, false, false, false), (false, false, false, true),
                    (false, false, true, false), (false, false, true, true),
                    (false, true, false, false), (false, true, false, true),
                    (false, true, true, false), (false, true, true, true),
                    (true, false, false, false), (true, false, false, true),
                    (true, false, true, false), (true, false, true, true),
                    (true, true, false, false), (true, true, false, true),
                    (true, true, true, false), (true, true, true, true));
            }
        }};
        (@pick $l:ty, $key:expr, $ctx:expr, $tile:expr, $ocb:expr, $oc0:expr, $p0:expr, $np:expr;
         $(($res:literal, $relu:literal, $f32:literal, $u8:literal)),*) => {
            match $key {
                $(($res, $relu, $f32, $u8) => {
                    return apply_whole::<$l, $res, $relu, $f32, $u8>(
                        $ctx, $tile, $ocb, $oc0, $p0, $np,
                    )
                })*
            }
        };
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
        whole_or_fall_through!(Z, ctx, tile, ocb, oc0, p0, np);
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

    /// `Quant::quantize` of 8 lanes, the same rule as [`quantize_v`] (a group of 8 with a lane
    /// near a half-integer is divided exactly; outside that band the reciprocal gives the same
    /// integer, so the group size does not change any bit). The 8 bytes are in the low half.
    #[inline(always)]
    pub(crate) unsafe fn quantize8(y: __m256, q: &super::FastQuant) -> __m128i {
        const R: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut d;
        let mut rr;
        if q.fast {
            d = _mm256_mul_ps(y, _mm256_set1_ps(q.inv));
            rr = _mm256_round_ps::<R>(d);
            let e = _mm256_and_ps(_mm256_sub_ps(d, rr), abs);
            let near = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(
                e,
                _mm256_set1_ps(0.5 - 1.0 / 2048.0),
            ));
            if near != 0 {
                d = _mm256_div_ps(y, _mm256_set1_ps(q.quant.scale));
                rr = _mm256_round_ps::<R>(d);
            }
        } else {
            d = _mm256_div_ps(y, _mm256_set1_ps(q.quant.scale));
            rr = _mm256_round_ps::<R>(d);
        }
        // NaN -> 0 before the zero point; clamp to +-512 (integral, so the conversion is exact).
        let ord = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(rr, rr));
        let c = _mm256_min_ps(
            _mm256_max_ps(rr, _mm256_set1_ps(-512.0)),
            _mm256_set1_ps(512.0),
        );
        let v = _mm256_and_si256(_mm256_cvtps_epi32(c), ord);
        let v = _mm256_add_epi32(v, _mm256_set1_epi32(q.quant.zero_point));
        // Saturate to u8: i32 -> u16 (negative -> 0), then u16 -> u8 (> 255 -> 255).
        let w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        _mm_packus_epi16(w, w)
    }

    /// Lane mask of the first `valid` (< 8) lanes.
    #[inline(always)]
    unsafe fn mask8(valid: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(valid as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// Stores the low `valid` bytes of `v`.
    #[inline(always)]
    pub(crate) unsafe fn store_u8(dst: *mut u8, v: __m128i, valid: usize) {
        if valid == 8 {
            _mm_storel_epi64(dst as *mut __m128i, v);
        } else {
            let mut b = [0u8; 16];
            _mm_storeu_si128(b.as_mut_ptr() as *mut __m128i, v);
            std::ptr::copy_nonoverlapping(b.as_ptr(), dst, valid);
        }
    }

    /// Quantizes `c` channels of NHWC `f32` at `src` into `dst` on 8-lane registers.
    ///
    /// # Safety
    /// `src` readable and `dst` writable for `c` values; AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn quantize_row_avx2(
        src: *const f32,
        dst: *mut u8,
        c: usize,
        q: &super::FastQuant,
    ) {
        let mut o = 0;
        while o < c {
            let valid = (c - o).min(8);
            let y = if valid == 8 {
                _mm256_loadu_ps(src.add(o))
            } else {
                _mm256_maskload_ps(src.add(o), mask8(valid))
            };
            store_u8(dst.add(o), quantize8(y, q), valid);
            o += 8;
        }
    }

    /// The epilogue on 8-lane AVX2 registers: the operations of the portable version in its
    /// order (convert, multiply, then add; residual; ReLU by `y < 0` so `-0.0` and NaN pass
    /// unchanged; requantization as [`quantize8`]).
    ///
    /// # Safety
    /// As `apply_portable`, and the CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn apply_avx2(
        ctx: &EpiCtx<'_>,
        tile: &[i32],
        ocb: usize,
        oc0: usize,
        p0: usize,
        np: usize,
    ) {
        whole_or_fall_through!(Y, ctx, tile, ocb, oc0, p0, np);
        let ohw = ctx.oh * ctx.ow;
        let oc_end = (oc0 + ocb).min(ctx.out_c);
        let zero = _mm256_setzero_ps();
        let tp = tile.as_ptr();
        let mut b = p0 / ohw;
        let mut r = p0 % ohw;
        for j in 0..np {
            let (oy, ox) = (r / ctx.ow, r % ctx.ow);
            let res = ctx
                .residual
                .map(|(rp, rl)| rp.get().add(rl.offset(b, oy, ox)) as *const f32);
            let fout = ctx
                .f32_nhwc
                .map(|(fp, fl)| fp.get().add(fl.offset(b, oy, ox)));
            let mut o = oc0;
            while o < oc_end {
                let valid = (oc_end - o).min(8);
                let m = mask8(valid);
                let t = tp.add(j * ocb + (o - oc0));
                let a = if valid == 8 {
                    _mm256_loadu_si256(t as *const __m256i)
                } else {
                    _mm256_maskload_epi32(t, m)
                };
                // corr/mul/bias are padded to a multiple of 16: full loads are in bounds.
                let a = _mm256_add_epi32(
                    a,
                    _mm256_loadu_si256(ctx.corr.as_ptr().add(o) as *const __m256i),
                );
                let mut y = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(a),
                    _mm256_loadu_ps(ctx.mul.as_ptr().add(o)),
                );
                y = _mm256_add_ps(y, _mm256_loadu_ps(ctx.bias.as_ptr().add(o)));
                if let Some(src) = res {
                    let rv = if valid == 8 {
                        _mm256_loadu_ps(src.add(o))
                    } else {
                        _mm256_maskload_ps(src.add(o), m)
                    };
                    // Lanes past `valid` are never stored: adding 0 there changes nothing.
                    y = _mm256_add_ps(y, rv);
                }
                if ctx.relu {
                    let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(y, zero);
                    y = _mm256_blendv_ps(y, zero, neg);
                }
                if let Some(dst) = fout {
                    if valid == 8 {
                        _mm256_storeu_ps(dst.add(o), y);
                    } else {
                        _mm256_maskstore_ps(dst.add(o), m, y);
                    }
                }
                if let Some(np_) = ctx.f32_nchw {
                    let base = (b * ctx.out_c + o) * ohw + r;
                    let mut lanes = [0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), y);
                    for (i, v) in lanes.iter().enumerate().take(valid) {
                        *np_.get().add(base + i * ohw) = *v;
                    }
                }
                for t in ctx.u8s {
                    let dst = t.ptr.get().add(t.layout.offset(b, oy, ox) + o);
                    store_u8(dst, quantize8(y, &t.q), valid);
                }
                o += 8;
            }
            r += 1;
            if r == ohw {
                r = 0;
                b += 1;
            }
        }
    }
}
