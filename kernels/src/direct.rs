//! Direct fp32 convolution for layers with a short reduction (the float stem: `in/groups*kh*kw`
//! at most [`DIRECT_MAX_K`]), writing NHWC `f32`.
//!
//! Numerics: every output is `fma(w_k, x_k, acc)` chained over `k = (ci*kh + ky)*kw + kx` in
//! ascending order from `+0.0` (padding taps included, as zeros), then `+ bias`, then ReLU
//! (`y < 0 -> 0`). That is the order of a single `k` block of the `gemm` crate's fused
//! multiply-add micro-kernels after im2col, i.e. the bits `Conv2dF32::forward` computes through
//! `gemm` for such layers (the property tests compare the two); unlike `gemm` it does not depend
//! on the cache sizes the CPU reports, and every instruction set here gives the same bits
//! (scalar code uses `f32::mul_add`, the exact fused operation).
//!
//! Output channels are the vector lanes (16 per AVX-512 register, 8 AVX2, 4 NEON), a tile is
//! up to 4 channel vectors by `NP` pixels, and the input (NCHW) is read through a zero-padded
//! copy so the inner loop has no bounds tests.

use crate::error::{check_len, mul_dims, KernelError};
use crate::isa::Isa;
use crate::kern::SyncPtr;
use crate::layers::ConvGeom;
use crate::qconv::F32Layout;
use crate::workers::{TaskCounter, Workers};

/// Longest reduction the direct path takes (within one `gemm` k block on every CPU we know).
pub const DIRECT_MAX_K: usize = 256;

/// Channels per weight block (2 AVX-512 vectors): a block's weights for a 7x7x3 stem are 18 KiB,
/// which stay in L1 beside the input rows a tile reads.
const OCB: usize = 32;

/// Most pixels of a tile (AVX-512: 2 channel vectors x 8 pixels, 16 accumulators; 8 divides
/// the 112-pixel rows of an ImageNet stem, so no tile repeats a pixel; 6 measured about 1%
/// slower on the ResNet-18 stem).
const MAX_NP: usize = 8;

pub(crate) trait FmaOps {
    const VW: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn bcast(p: *const f32) -> Self::V;
    unsafe fn fma(acc: Self::V, w: Self::V, x: Self::V) -> Self::V;
    unsafe fn store(v: Self::V, p: *mut f32);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `if v < 0 { 0 } else { v }` per lane (keeps `-0.0` and NaN).
    unsafe fn relu(v: Self::V) -> Self::V;
}

struct ScalarFma;
impl FmaOps for ScalarFma {
    const VW: usize = 8;
    type V = [f32; 8];
    #[inline(always)]
    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 8] {
        std::ptr::read_unaligned(p as *const [f32; 8])
    }
    #[inline(always)]
    unsafe fn bcast(p: *const f32) -> [f32; 8] {
        [*p; 8]
    }
    #[inline(always)]
    unsafe fn fma(mut acc: [f32; 8], w: [f32; 8], x: [f32; 8]) -> [f32; 8] {
        for i in 0..8 {
            acc[i] = w[i].mul_add(x[i], acc[i]);
        }
        acc
    }
    #[inline(always)]
    unsafe fn store(v: [f32; 8], p: *mut f32) {
        std::ptr::copy_nonoverlapping(v.as_ptr(), p, 8)
    }
    #[inline(always)]
    unsafe fn add(mut a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        for i in 0..8 {
            a[i] += b[i];
        }
        a
    }
    #[inline(always)]
    unsafe fn relu(mut v: [f32; 8]) -> [f32; 8] {
        for x in v.iter_mut() {
            if *x < 0.0 {
                *x = 0.0;
            }
        }
        v
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::FmaOps;
    use std::arch::x86_64::*;
    pub(crate) struct Z;
    impl FmaOps for Z {
        const VW: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const f32) -> __m512 {
            _mm512_set1_ps(*p)
        }
        #[inline(always)]
        unsafe fn fma(acc: __m512, w: __m512, x: __m512) -> __m512 {
            _mm512_fmadd_ps(w, x, acc)
        }
        #[inline(always)]
        unsafe fn store(v: __m512, p: *mut f32) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn relu(v: __m512) -> __m512 {
            let z = _mm512_setzero_ps();
            _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, z), z)
        }
    }
    pub(crate) struct Y;
    impl FmaOps for Y {
        const VW: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const f32) -> __m256 {
            _mm256_set1_ps(*p)
        }
        #[inline(always)]
        unsafe fn fma(acc: __m256, w: __m256, x: __m256) -> __m256 {
            _mm256_fmadd_ps(w, x, acc)
        }
        #[inline(always)]
        unsafe fn store(v: __m256, p: *mut f32) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn relu(v: __m256) -> __m256 {
            let z = _mm256_setzero_ps();
            _mm256_blendv_ps(v, z, _mm256_cmp_ps::<_CMP_LT_OQ>(v, z))
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::FmaOps;
    use std::arch::aarch64::*;
    pub(super) struct Q;
    impl FmaOps for Q {
        const VW: usize = 4;
        type V = float32x4_t;
        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            vld1q_f32(p)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const f32) -> float32x4_t {
            vld1q_dup_f32(p)
        }
        #[inline(always)]
        unsafe fn fma(acc: float32x4_t, w: float32x4_t, x: float32x4_t) -> float32x4_t {
            vfmaq_f32(acc, w, x)
        }
        #[inline(always)]
        unsafe fn store(v: float32x4_t, p: *mut f32) {
            vst1q_f32(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vaddq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn relu(v: float32x4_t) -> float32x4_t {
            let z = vdupq_n_f32(0.0);
            vbslq_f32(vcltq_f32(v, z), z, v)
        }
    }
}

/// The direct convolution followed by max pooling and quantization to `u8`, fused so that each
/// band of convolution rows is pooled while it is in cache (the unfused steps write the whole
/// convolution output and read it back): `out_f32` (NHWC `f32` in `fl`) and `out_u8` (NHWC `u8`
/// in `ul`; border and channel padding untouched), both of the pooled size, get exactly what
/// [`forward`], `max_pool2d_nhwc` and `quantize_nhwc_to_u8` give in turn: every convolution row
/// comes from the same tiles, the maximum follows the same rules (row-major taps, strict `>`, so
/// ties between `-0.0` and `+0.0` keep the first; any NaN gives NaN), and each pooled pixel is
/// quantized by the same routine.
///
/// `padded` and `scratch` are caller-owned scratch ([`FusedScratch::reserve`] sizes the latter).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_pool_u8(
    g: &ConvGeom,
    dw: &DirectWeights,
    bias: &[f32],
    relu: bool,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    pool: crate::pool::Pool2d,
    quant: crate::ops::Quant,
    out_f32: &mut [f32],
    fl: F32Layout,
    out_u8: &mut [u8],
    ul: crate::qconv::U8Layout,
    padded: &mut Vec<f32>,
    scratch: &mut FusedScratch,
    workers: &Workers,
    isa: Isa,
) -> Result<(), KernelError> {
    let (oh, ow) = g.out_hw(h, w)?;
    let (poh, pow) = pool.out_hw(oh, ow)?;
    check_len("direct conv input", x.len(), mul_dims(&[n, g.in_c, h, w])?)?;
    check_len(
        "fused stem f32 output",
        out_f32.len(),
        mul_dims(&[n, fl.sample_len()])?,
    )?;
    check_len(
        "fused stem u8 output",
        out_u8.len(),
        mul_dims(&[n, ul.sample_len()])?,
    )?;
    if (ul.h, ul.w, ul.c) != (poh, pow, g.out_c)
        || (fl.h, fl.w, fl.c) != (poh, pow, g.out_c)
        || g.groups != 1
        || dw.k != g.k()
    {
        return Err(KernelError::shape(
            "fused stem: layouts or weights do not match",
        ));
    }
    let (hp, wp, psz) = pad_input(g, x, n, h, w, padded);
    let (toff, k) = tap_offsets(g, hp, wp)?;
    let taps = Taps { toff: &toff[..k] };
    let v = variant(isa);
    let np_tile = tile_pixels(v);
    let nob = g.out_c.div_ceil(OCB);
    let co = g.out_c;
    let threads = workers.threads();
    // Bands of pooled rows, each computed in order through a ring of `pk` convolution rows (a
    // pooling window's rows), so a convolution row is computed once per band and stays in L1/L2
    // until its last pooled row is done; only the `pk - ps` rows shared by two bands are
    // computed twice. One band per image on one thread; a few per worker otherwise, to balance.
    let per_image = if threads == 1 {
        1
    } else {
        (threads * 3).div_ceil(n).clamp(1, poh)
    };
    let band = poh.div_ceil(per_image);
    let bands = poh.div_ceil(band);
    let (pk, ps, pp) = (pool.kernel.0, pool.stride.0, pool.pad.0 as isize);
    let (row_len, ring) = fused_sizes(g, h, w, pool)?;
    if pk > MAX_POOL_ROWS {
        return Err(KernelError::shape(format!(
            "fused stem: pooling window of {pk} rows (at most {MAX_POOL_ROWS})"
        )));
    }
    scratch.reserve_rows(threads, row_len, ring);
    let fq = crate::qconv::FastQuant::new(quant);
    let tasks = TaskCounter::new(n * bands);
    let pad_ptr = SyncPtr(padded.as_mut_ptr());
    let r_ptr = SyncPtr(scratch.rows.as_mut_ptr());
    let f_ptr = SyncPtr(out_f32.as_mut_ptr());
    let u_ptr = SyncPtr(out_u8.as_mut_ptr());
    let (sh, sw) = g.stride;
    // The vector max pool of the stem's instruction set, if it has one.
    #[cfg(target_arch = "x86_64")]
    let max_pixel: Option<MaxPixelFn> = match isa {
        Isa::Avx512 if isa.is_supported() => Some(max_pixel_avx512),
        Isa::Avx2 if isa.is_supported() => Some(max_pixel_avx2),
        _ => None,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let max_pixel: Option<MaxPixelFn> = None;
    workers.run(&|tid| {
        // SAFETY: worker `tid` owns its slice of the row scratch.
        let rows = unsafe {
            std::slice::from_raw_parts_mut(r_ptr.get().add(tid * ring * row_len), ring * row_len)
        };
        while let Some(t) = tasks.next() {
            let (b, bi) = (t / bands, t % bands);
            let (py0, py1) = (bi * band, ((bi + 1) * band).min(poh));
            // Convolution rows y_done.. are not computed yet in this band.
            let mut y_done = 0usize;
            for py in py0..py1 {
                let ys = (py as isize * ps as isize - pp).max(0) as usize
                    ..((py * ps) as isize - pp + pk as isize).min(oh as isize) as usize;
                for y in ys.start.max(y_done)..ys.end {
                    let row = rows[(y % ring) * row_len..].as_mut_ptr();
                    for ob in 0..nob {
                        let oc0 = ob * OCB;
                        let wb = dw.w[ob * k * OCB..].as_ptr();
                        let mut sink = Sink::block(bias, ob, relu);
                        let mut x0 = 0;
                        while x0 < ow {
                            let np = np_tile.min(ow - x0);
                            let mut base = [std::ptr::null::<f32>(); MAX_NP];
                            for j in 0..np_tile {
                                // Ragged tail: repeat the last pixel (the same values are
                                // stored again).
                                let ox = x0 + j.min(np - 1);
                                // SAFETY: inside the padded copy and this worker's rows.
                                unsafe {
                                    base[j] = pad_ptr.get().add(b * psz + y * sh * wp + ox * sw)
                                        as *const f32;
                                    sink.out[j] = row.add(ox * co + oc0);
                                }
                            }
                            // SAFETY: every tap is inside the padded copy; the CPU supports
                            // the variant (checked by the caller).
                            unsafe { run_tile(v, &taps, wb, &base, &sink) };
                            x0 += np;
                        }
                    }
                }
                y_done = y_done.max(ys.end);
                // The window's rows, in order (a window spans at most `ring` rows, so they sit
                // in distinct ring slots).
                let mut wrows = [std::ptr::null::<f32>(); MAX_POOL_ROWS];
                for (i, y) in ys.clone().enumerate() {
                    wrows[i] = rows[(y % ring) * row_len..].as_ptr();
                }
                let wrows = &wrows[..ys.len()];
                for px in 0..pow {
                    let x_a = px as isize * pool.stride.1 as isize - pool.pad.1 as isize;
                    let xs = x_a.max(0) as usize
                        ..(x_a + pool.kernel.1 as isize).min(ow as isize) as usize;
                    // SAFETY: this task owns output rows py0..py1 of sample b in both outputs.
                    let (df, du) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(
                                f_ptr.get().add(fl.offset(b, py, px)),
                                co,
                            ),
                            std::slice::from_raw_parts_mut(
                                u_ptr.get().add(ul.offset(b, py, px)),
                                co,
                            ),
                        )
                    };
                    if let Some(max_pixel) = max_pixel {
                        // SAFETY: the CPU supports the variant (checked above); the window's
                        // rows are computed.
                        unsafe {
                            max_pixel(wrows, co, xs.clone(), df.as_mut_ptr(), du.as_mut_ptr(), &fq)
                        };
                        continue;
                    }
                    let mut c0 = 0;
                    while c0 < co {
                        let m = (co - c0).min(16);
                        let mut acc = [f32::NEG_INFINITY; 16];
                        let mut nan = [false; 16];
                        for &r in wrows {
                            for ix in xs.clone() {
                                // SAFETY: a computed row of `row_len = ow * co` values.
                                let src =
                                    unsafe { std::slice::from_raw_parts(r.add(ix * co + c0), m) };
                                for l in 0..m {
                                    let v = src[l];
                                    nan[l] |= v.is_nan();
                                    if v > acc[l] {
                                        acc[l] = v;
                                    }
                                }
                            }
                        }
                        for l in 0..m {
                            df[c0 + l] = if nan[l] { f32::NAN } else { acc[l] };
                        }
                        c0 += 16;
                    }
                    crate::qconv::quantize_pixel(df, du, &fq);
                }
            }
        }
    });
    Ok(())
}

/// One pooled pixel of [`forward_pool_u8`] on 16 channels at a time: the maximum over the rows
/// `rows` (in window order) and columns `xs` with the rules of `pool::max_row` (strict `>` in
/// row-major tap order, any NaN gives NaN), written to `dst` and, requantized by the
/// epilogue's rule (`quantize_v`, the very function `quantize_pixel` runs on this CPU), to `udst`.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ; every row holds columns `xs` of `co` channels; `dst` and `udst` hold
/// `co` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn max_pixel_avx512(
    rows: &[*const f32],
    co: usize,
    xs: std::ops::Range<usize>,
    dst: *mut f32,
    udst: *mut u8,
    fq: &crate::qconv::FastQuant,
) {
    use std::arch::x86_64::*;
    let nan = _mm512_set1_ps(f32::NAN);
    let mut c0 = 0;
    while c0 < co {
        let valid = (co - c0).min(16);
        let m: __mmask16 = if valid == 16 {
            0xffff
        } else {
            (1u32 << valid) as u16 - 1
        };
        let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut any_nan: __mmask16 = 0;
        for &r in rows {
            for ix in xs.clone() {
                let v = _mm512_maskz_loadu_ps(m, r.add(ix * co + c0));
                any_nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                acc = _mm512_mask_mov_ps(acc, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, acc), v);
            }
        }
        let y = _mm512_mask_mov_ps(acc, any_nan, nan);
        _mm512_mask_storeu_ps(dst.add(c0), m, y);
        let q = crate::qconv::epilogue::x86::quantize_v(y, fq);
        _mm_mask_storeu_epi8(udst.add(c0) as *mut i8, m, q);
        c0 += 16;
    }
}

/// [`max_pixel_avx512`] on 8-lane AVX2 registers (same rules: strict `>` in tap order, any NaN
/// gives the canonical NaN), with the requantized copy in `udst` by the AVX2 epilogue's rule.
///
/// # Safety
/// AVX2; every row holds columns `xs` of `co` channels; `dst` and `udst` hold `co` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_pixel_avx2(
    rows: &[*const f32],
    co: usize,
    xs: std::ops::Range<usize>,
    dst: *mut f32,
    udst: *mut u8,
    fq: &crate::qconv::FastQuant,
) {
    use std::arch::x86_64::*;
    let nan = _mm256_set1_ps(f32::NAN);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut c0 = 0;
    while c0 < co {
        let valid = (co - c0).min(8);
        let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lanes);
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut any_nan = _mm256_setzero_ps();
        for &r in rows {
            for ix in xs.clone() {
                let p = r.add(ix * co + c0);
                let v = if valid == 8 {
                    _mm256_loadu_ps(p)
                } else {
                    _mm256_maskload_ps(p, m)
                };
                any_nan = _mm256_or_ps(any_nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                acc = _mm256_blendv_ps(acc, v, _mm256_cmp_ps::<_CMP_GT_OQ>(v, acc));
            }
        }
        let y = _mm256_blendv_ps(acc, nan, any_nan);
        if valid == 8 {
            _mm256_storeu_ps(dst.add(c0), y);
        } else {
            _mm256_maskstore_ps(dst.add(c0), m, y);
        }
        let q = crate::qconv::epilogue::x86::quantize8(y, fq);
        crate::qconv::epilogue::x86::store_u8(udst.add(c0), q, valid);
        c0 += 8;
    }
}

/// One pooled pixel, maximum and requantization: `max_pixel_avx512` or `max_pixel_avx2`.
type MaxPixelFn = unsafe fn(
    &[*const f32],
    usize,
    std::ops::Range<usize>,
    *mut f32,
    *mut u8,
    &crate::qconv::FastQuant,
);

/// Tallest pooling window [`forward_pool_u8`] takes (its rows are kept in a ring).
pub(crate) const MAX_POOL_ROWS: usize = 16;

/// Row ring of one worker of [`forward_pool_u8`]: `(len of a convolution row, rows in the
/// ring)`; the ring holds one pooling window.
pub(crate) fn fused_sizes(
    g: &ConvGeom,
    h: usize,
    w: usize,
    pool: crate::pool::Pool2d,
) -> Result<(usize, usize), KernelError> {
    let (oh, ow) = g.out_hw(h, w)?;
    pool.out_hw(oh, ow)?;
    Ok((
        mul_dims(&[ow, g.out_c])?,
        pool.kernel.0.clamp(1, MAX_POOL_ROWS),
    ))
}

/// Scratch of [`forward_pool_u8`]: per-worker `f32` convolution rows (a ring of one pooling window) (sized by the geometry and the
/// thread count only, so reserving them once means no allocation on any batch size).
#[derive(Default, Debug)]
pub struct FusedScratch {
    rows: Vec<f32>,
}

impl FusedScratch {
    fn reserve_rows(&mut self, threads: usize, row_len: usize, rows_max: usize) {
        if self.rows.len() < threads * rows_max * row_len {
            self.rows.resize(threads * rows_max * row_len, 0.0);
        }
    }

    /// Grows the buffers for the fused stem of `layer` on `h x w` inputs with `threads` workers.
    pub fn reserve(
        &mut self,
        layer: &crate::Conv2dF32,
        h: usize,
        w: usize,
        pool: crate::pool::Pool2d,
        threads: usize,
    ) -> Result<(), KernelError> {
        let (row_len, rows_max) = fused_sizes(layer.geom(), h, w, pool)?;
        self.reserve_rows(threads, row_len, rows_max);
        Ok(())
    }
}

/// Tile geometry: tap `t` of a pixel is at `base + toff[t]`.
struct Taps<'a> {
    toff: &'a [usize],
}

/// Where a tile's results go: per pixel an NHWC row of the output, the bias of the block, the
/// number of valid channels in the block, ReLU.
struct Sink {
    out: [*mut f32; MAX_NP],
    bias: [f32; OCB],
    valid: usize,
    relu: bool,
}

impl Sink {
    /// The sink of output-channel block `ob` (`bias` holds every channel's bias); rows unset.
    fn block(bias: &[f32], ob: usize, relu: bool) -> Sink {
        let oc0 = ob * OCB;
        let valid = (bias.len() - oc0).min(OCB);
        let mut b = [0.0; OCB];
        b[..valid].copy_from_slice(&bias[oc0..oc0 + valid]);
        Sink {
            out: [std::ptr::null_mut(); MAX_NP],
            bias: b,
            valid,
            relu,
        }
    }
}

/// `acc[p][v]` over all taps (`w` is `[taps][OCB]` for this block), then `+ bias`, ReLU, stored
/// to the sink.
#[inline(always)]
unsafe fn tile<F: FmaOps, const NV: usize, const NP: usize>(
    t: &Taps<'_>,
    w: *const f32,
    base: &[*const f32; NP],
    sink: &Sink,
) {
    let mut acc = [[F::zero(); NV]; NP];
    for (k, &off) in t.toff.iter().enumerate() {
        let wp = w.add(k * OCB);
        let mut wv = [F::load(wp); NV];
        for v in 1..NV {
            wv[v] = F::load(wp.add(v * F::VW));
        }
        for p in 0..NP {
            let x = F::bcast(base[p].add(off));
            for v in 0..NV {
                acc[p][v] = F::fma(acc[p][v], wv[v], x);
            }
        }
    }
    for v in 0..NV {
        let o = v * F::VW;
        if o >= sink.valid {
            break;
        }
        let b = F::load(sink.bias.as_ptr().add(o));
        for p in 0..NP {
            let mut y = F::add(acc[p][v], b);
            if sink.relu {
                y = F::relu(y);
            }
            if o + F::VW <= sink.valid {
                F::store(y, sink.out[p].add(o));
            } else {
                let mut t = [0f32; 16];
                F::store(y, t.as_mut_ptr());
                std::ptr::copy_nonoverlapping(t.as_ptr(), sink.out[p].add(o), sink.valid - o);
            }
        }
    }
}

/// Instruction set of the direct kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

fn variant(isa: Isa) -> Variant {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Variant::Avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Variant::Avx2,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Variant::Neon,
        _ => Variant::Scalar,
    }
}

macro_rules! tile_fn {
    ($name:ident, $f:ty, $np:literal, $($feat:literal)?) => {
        $(#[target_feature(enable = $feat)])?
        unsafe fn $name(t: &Taps<'_>, w: *const f32, base: &[*const f32; $np], sink: &Sink) {
            tile::<$f, { OCB / <$f as FmaOps>::VW }, $np>(t, w, base, sink)
        }
    };
}

tile_fn!(tile_scalar, ScalarFma, 4,);
#[cfg(target_arch = "x86_64")]
tile_fn!(tile_avx512, x86::Z, 8, "avx2,fma,avx512f");
#[cfg(target_arch = "x86_64")]
tile_fn!(tile_avx2, x86::Y, 2, "avx2,fma");
#[cfg(target_arch = "aarch64")]
tile_fn!(tile_neon, arm::Q, 2, "neon");

/// Pixels per tile of each variant (32 channels take 2 AVX-512, 4 AVX2 or 8 NEON registers).
fn tile_pixels(v: Variant) -> usize {
    match v {
        Variant::Scalar => 4,
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => 8,
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => 2,
        #[cfg(target_arch = "aarch64")]
        Variant::Neon => 2,
    }
}

/// The direct-path weights of one fp32 convolution: `[ceil(out/64)][k][64]`, zero padded.
#[derive(Clone, Debug)]
pub(crate) struct DirectWeights {
    w: Vec<f32>,
    k: usize,
}

impl DirectWeights {
    /// From `[out, k]` weights.
    pub(crate) fn new(weight: &[f32], out_c: usize, k: usize) -> DirectWeights {
        let nob = out_c.div_ceil(OCB);
        let mut w = vec![0f32; nob * k * OCB];
        for o in 0..out_c {
            for kk in 0..k {
                w[((o / OCB) * k + kk) * OCB + o % OCB] = weight[o * k + kk];
            }
        }
        DirectWeights { w, k }
    }
}

/// Copies `n` NCHW samples into `padded` with a zero border; returns the padded height, width and
/// sample length.
fn pad_input(
    g: &ConvGeom,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    padded: &mut Vec<f32>,
) -> (usize, usize, usize) {
    let (ph, pw) = g.pad;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let psz = g.in_c * hp * wp;
    if padded.len() < n * psz {
        padded.resize(n * psz, 0.0);
    }
    for b in 0..n {
        for c in 0..g.in_c {
            let dst = &mut padded[b * psz + c * hp * wp..b * psz + (c + 1) * hp * wp];
            dst[..ph * wp].fill(0.0);
            dst[(ph + h) * wp..].fill(0.0);
            for y in 0..h {
                let row = &mut dst[(y + ph) * wp..(y + ph + 1) * wp];
                row[..pw].fill(0.0);
                row[pw + w..].fill(0.0);
                let src = (b * g.in_c + c) * h * w + y * w;
                row[pw..pw + w].copy_from_slice(&x[src..src + w]);
            }
        }
    }
    (hp, wp, psz)
}

/// Tap offsets in k order (ci, ky, kx) from a pixel's top-left padded position.
fn tap_offsets(
    g: &ConvGeom,
    hp: usize,
    wp: usize,
) -> Result<([usize; DIRECT_MAX_K], usize), KernelError> {
    let mut toff = [0usize; DIRECT_MAX_K];
    let k = g.k();
    if k > DIRECT_MAX_K {
        return Err(KernelError::unsupported("direct conv: reduction too long"));
    }
    for ci in 0..g.in_c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                toff[(ci * g.kh + ky) * g.kw + kx] = ci * hp * wp + ky * wp + kx;
            }
        }
    }
    Ok((toff, k))
}

/// One tile on the variant's kernel.
///
/// # Safety
/// Every tap of every base pixel is inside the padded input; the sink's rows are writable; the
/// CPU supports the variant.
#[inline(always)]
unsafe fn run_tile(
    v: Variant,
    taps: &Taps<'_>,
    wb: *const f32,
    base: &[*const f32; MAX_NP],
    sink: &Sink,
) {
    match v {
        Variant::Scalar => tile_scalar(taps, wb, &[base[0], base[1], base[2], base[3]], sink),
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => tile_avx512(
            taps,
            wb,
            &[
                base[0], base[1], base[2], base[3], base[4], base[5], base[6], base[7],
            ],
            sink,
        ),
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => tile_avx2(taps, wb, &[base[0], base[1]], sink),
        #[cfg(target_arch = "aarch64")]
        Variant::Neon => tile_neon(taps, wb, &[base[0], base[1]], sink),
    }
}

/// Runs the direct convolution: `x` NCHW (`n` samples of `in_c x h x w`), `out` NHWC in `ol`.
/// `padded` is caller-owned scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    g: &ConvGeom,
    dw: &DirectWeights,
    bias: &[f32],
    relu: bool,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    out: &mut [f32],
    ol: F32Layout,
    padded: &mut Vec<f32>,
    workers: &Workers,
    isa: Isa,
) -> Result<(usize, usize), KernelError> {
    let (oh, ow) = g.out_hw(h, w)?;
    check_len("direct conv input", x.len(), mul_dims(&[n, g.in_c, h, w])?)?;
    check_len(
        "direct conv output",
        out.len(),
        mul_dims(&[n, ol.sample_len()])?,
    )?;
    if (ol.h, ol.w, ol.c) != (oh, ow, g.out_c) || g.groups != 1 || dw.k != g.k() {
        return Err(KernelError::shape(
            "direct conv: layout or weights do not match",
        ));
    }
    let (hp, wp, psz) = pad_input(g, x, n, h, w, padded);
    let (toff, k) = tap_offsets(g, hp, wp)?;
    let taps = Taps { toff: &toff[..k] };
    let v = variant(isa);
    let np_tile = tile_pixels(v);
    let ohw = oh * ow;
    let p_total = n * ohw;
    let nob = g.out_c.div_ceil(OCB);
    let ntiles = p_total.div_ceil(np_tile);
    let tiles_per_task = ntiles.div_ceil(workers.threads() * 8).max(1);
    let chunks = ntiles.div_ceil(tiles_per_task);
    let tasks = TaskCounter::new(chunks * nob);
    let pad_ptr = SyncPtr(padded.as_mut_ptr());
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let (sh, sw) = g.stride;
    workers.run(&|_| {
        while let Some(t) = tasks.next() {
            let (chunk, ob) = (t / nob, t % nob);
            let wb = dw.w[ob * k * OCB..].as_ptr();
            let oc0 = ob * OCB;
            let mut sink = Sink::block(bias, ob, relu);
            for ti in chunk * tiles_per_task..((chunk + 1) * tiles_per_task).min(ntiles) {
                let p0 = ti * np_tile;
                let np = np_tile.min(p_total - p0);
                let mut base = [std::ptr::null::<f32>(); MAX_NP];
                for j in 0..np_tile {
                    // Ragged tail: repeat the last pixel (the same values are stored again).
                    let p = p0 + j.min(np - 1);
                    let (b, r) = (p / ohw, p % ohw);
                    let (oy, ox) = (r / ow, r % ow);
                    // SAFETY: inside the padded copy and the output; this task owns pixels
                    // p0..p0+np of channels oc0..oc0+valid.
                    unsafe {
                        base[j] = pad_ptr.get().add(b * psz + oy * sh * wp + ox * sw) as *const f32;
                        sink.out[j] = out_ptr.get().add(ol.offset(b, oy, ox) + oc0);
                    }
                }
                // SAFETY: every tap of every pixel is inside the padded copy; the CPU supports
                // the variant (checked by the caller).
                unsafe { run_tile(v, &taps, wb, &base, &sink) };
            }
        }
    });
    Ok((oh, ow))
}
