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

/// Most pixels of a tile (AVX-512: 2 channel vectors x 6 pixels; six base addresses stay in
/// general registers).
const MAX_NP: usize = 6;

trait FmaOps {
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
mod x86 {
    use super::FmaOps;
    use std::arch::x86_64::*;
    pub(super) struct Z;
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
    pub(super) struct Y;
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
tile_fn!(tile_avx512, x86::Z, 6, "avx2,fma,avx512f");
#[cfg(target_arch = "x86_64")]
tile_fn!(tile_avx2, x86::Y, 2, "avx2,fma");
#[cfg(target_arch = "aarch64")]
tile_fn!(tile_neon, arm::Q, 2, "neon");

/// Pixels per tile of each variant (32 channels take 2 AVX-512, 4 AVX2 or 8 NEON registers).
fn tile_pixels(v: Variant) -> usize {
    match v {
        Variant::Scalar => 4,
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => 6,
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
    // Tap offsets in k order (ci, ky, kx) from a pixel's top-left padded position.
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
            let mut sink = Sink {
                out: [std::ptr::null_mut(); MAX_NP],
                bias: [0.0; OCB],
                valid: (g.out_c - oc0).min(OCB),
                relu,
            };
            sink.bias[..sink.valid].copy_from_slice(&bias[oc0..oc0 + sink.valid]);
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
                unsafe {
                    match v {
                        Variant::Scalar => {
                            tile_scalar(&taps, wb, &[base[0], base[1], base[2], base[3]], &sink)
                        }
                        #[cfg(target_arch = "x86_64")]
                        Variant::Avx512 => tile_avx512(
                            &taps,
                            wb,
                            &[base[0], base[1], base[2], base[3], base[4], base[5]],
                            &sink,
                        ),
                        #[cfg(target_arch = "x86_64")]
                        Variant::Avx2 => tile_avx2(&taps, wb, &[base[0], base[1]], &sink),
                        #[cfg(target_arch = "aarch64")]
                        Variant::Neon => tile_neon(&taps, wb, &[base[0], base[1]], &sink),
                    }
                }
            }
        }
    });
    Ok((oh, ow))
}
