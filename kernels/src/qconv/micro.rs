//! Dot-product micro-kernels of the quantized convolution: one tile of `NV` output-channel
//! vectors (`VW` `i32` lanes each) by `NP` output pixels, accumulated over every `(ky, kx, c4)`
//! step of the receptive field. Each step broadcasts 4 input channels of a pixel (4 `u8`) and
//! multiplies them with the 4 matching weights of every output channel (`i8`), adding the 4
//! products into that channel's `i32` lane. The integer sums are exact, so every instruction set
//! gives the same integers as the scalar kernel.
//!
//! The generic body is `#[inline(always)]` and instantiated inside one `#[target_feature]`
//! function per instruction set, so the whole loop nest is compiled for it.

/// Instruction-set primitives of a dot-product kernel.
pub(crate) trait DotOps {
    /// `i32` lanes of one accumulator vector (output channels per vector).
    const VW: usize;
    /// Whether activations are centred (`q - 128` as `i8`) before multiplying.
    const CENTRED: bool;
    type Acc: Copy;
    type W: Copy;
    type A: Copy;
    unsafe fn zero() -> Self::Acc;
    /// `VW * 4` weight bytes: lane `j` gets bytes `4j..4j+4`.
    unsafe fn load_w(p: *const i8) -> Self::W;
    /// 4 activation bytes at `p`, repeated in every lane.
    unsafe fn bcast(p: *const u8) -> Self::A;
    unsafe fn dot(acc: Self::Acc, a: Self::A, w: Self::W) -> Self::Acc;
    unsafe fn store(acc: Self::Acc, p: *mut i32);
}

/// Where one tile reads: per pixel the address of its receptive field's first byte.
pub(crate) struct TileGeom {
    pub kh: usize,
    pub kw: usize,
    /// 4-channel groups per pixel (`cs / 4`).
    pub c4: usize,
    pub row_stride: usize,
    pub cs: usize,
    /// Steps whose `vpmaddubsw` pair sums may be added in `i16` before widening (AVX2 kernel):
    /// `32767 / (2 * 255 * max|w|)`, 8 for W3. Read only by the x86 AVX2 tile.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub chunk: usize,
}

/// The generic tile: `out[p * NV*VW + v*VW + lane]` = exact `Σ w * a` over the receptive field.
///
/// # Safety
/// `w` must hold `kh*kw*c4` steps of `NV*VW*4` bytes; every `base[p] + ky*row_stride + kx*cs +
/// 4*c4` must be readable; `out` must hold `NP*NV*VW` values; the CPU must support `D`.
#[inline(always)]
pub(crate) unsafe fn tile<D: DotOps, const NV: usize, const NP: usize>(
    g: &TileGeom,
    w: *const i8,
    base: &[*const u8; NP],
    out: *mut i32,
) {
    let mut acc = [[D::zero(); NV]; NP];
    let mut wp = w;
    let step = NV * D::VW * 4;
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let off = ky * g.row_stride + kx * g.cs;
            let mut ap: [*const u8; NP] = [std::ptr::null(); NP];
            for p in 0..NP {
                ap[p] = base[p].add(off);
            }
            for _ in 0..g.c4 {
                let mut wv = [D::load_w(wp); NV];
                for v in 1..NV {
                    wv[v] = D::load_w(wp.add(v * D::VW * 4));
                }
                for p in 0..NP {
                    let a = D::bcast(ap[p]);
                    for v in 0..NV {
                        acc[p][v] = D::dot(acc[p][v], a, wv[v]);
                    }
                    ap[p] = ap[p].add(4);
                }
                wp = wp.add(step);
            }
        }
    }
    for p in 0..NP {
        for v in 0..NV {
            D::store(acc[p][v], out.add((p * NV + v) * D::VW));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Portable scalar kernel (any CPU; also the reference the SIMD kernels are tested against).

pub(crate) struct ScalarDot;

impl DotOps for ScalarDot {
    const VW: usize = 16;
    const CENTRED: bool = false;
    type Acc = [i32; 16];
    type W = [i8; 64];
    type A = [u8; 4];
    #[inline(always)]
    unsafe fn zero() -> [i32; 16] {
        [0; 16]
    }
    #[inline(always)]
    unsafe fn load_w(p: *const i8) -> [i8; 64] {
        std::ptr::read_unaligned(p as *const [i8; 64])
    }
    #[inline(always)]
    unsafe fn bcast(p: *const u8) -> [u8; 4] {
        std::ptr::read_unaligned(p as *const [u8; 4])
    }
    #[inline(always)]
    unsafe fn dot(mut acc: [i32; 16], a: [u8; 4], w: [i8; 64]) -> [i32; 16] {
        for (j, s) in acc.iter_mut().enumerate() {
            let mut t = 0i32;
            for i in 0..4 {
                t += a[i] as i32 * w[j * 4 + i] as i32;
            }
            *s = s.wrapping_add(t);
        }
        acc
    }
    #[inline(always)]
    unsafe fn store(acc: [i32; 16], p: *mut i32) {
        std::ptr::copy_nonoverlapping(acc.as_ptr(), p, 16);
    }
}

// ---------------------------------------------------------------------------------------------
// x86-64.

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::DotOps;
    use std::arch::x86_64::*;

    /// AVX-512 VNNI: `vpdpbusd zmm` (64 u8 x i8 products per instruction), 16 channels per vector.
    pub(crate) struct Vnni512;
    impl DotOps for Vnni512 {
        const VW: usize = 16;
        const CENTRED: bool = false;
        type Acc = __m512i;
        type W = __m512i;
        type A = __m512i;
        #[inline(always)]
        unsafe fn zero() -> __m512i {
            _mm512_setzero_si512()
        }
        #[inline(always)]
        unsafe fn load_w(p: *const i8) -> __m512i {
            _mm512_loadu_si512(p as *const _)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> __m512i {
            _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
            _mm512_dpbusd_epi32(acc, a, w)
        }
        #[inline(always)]
        unsafe fn store(acc: __m512i, p: *mut i32) {
            _mm512_storeu_si512(p as *mut _, acc)
        }
    }

    /// AVX-VNNI: the VEX-encoded 256-bit `vpdpbusd` (Alder Lake and later, Zen 5), 8 channels
    /// per vector, 16 registers.
    pub(crate) struct AvxVnni;
    impl DotOps for AvxVnni {
        const VW: usize = 8;
        const CENTRED: bool = false;
        type Acc = __m256i;
        type W = __m256i;
        type A = __m256i;
        #[inline(always)]
        unsafe fn zero() -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline(always)]
        unsafe fn load_w(p: *const i8) -> __m256i {
            _mm256_loadu_si256(p as *const _)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> __m256i {
            _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(acc, a, w)
        }
        #[inline(always)]
        unsafe fn store(acc: __m256i, p: *mut i32) {
            _mm256_storeu_si256(p as *mut _, acc)
        }
    }

    /// The AVX2 tile with two-level accumulation: `vpmaddubsw` pair sums are added in `i16`
    /// (`vpaddw`) for `g.chunk` steps, then widened by `vpmaddwd` with ones into `i32`: two
    /// instructions per 32 products instead of three. Exact because `g.chunk * 2 * 255 *
    /// max|w| <= 32767`.
    ///
    /// # Safety
    /// As `super::tile`; AVX2.
    #[inline(always)]
    pub(crate) unsafe fn tile_madd16<const NV: usize, const NP: usize>(
        g: &super::TileGeom,
        w: *const i8,
        base: &[*const u8; NP],
        out: *mut i32,
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); NV]; NP];
        let mut part = [[_mm256_setzero_si256(); NV]; NP];
        let mut wp = w;
        let mut left = g.chunk;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let off = ky * g.row_stride + kx * g.cs;
                let mut ap: [*const u8; NP] = [std::ptr::null(); NP];
                for p in 0..NP {
                    ap[p] = base[p].add(off);
                }
                for _ in 0..g.c4 {
                    let mut wv = [_mm256_loadu_si256(wp as *const _); NV];
                    for v in 1..NV {
                        wv[v] = _mm256_loadu_si256(wp.add(v * 32) as *const _);
                    }
                    for p in 0..NP {
                        let a = _mm256_set1_epi32(std::ptr::read_unaligned(ap[p] as *const i32));
                        for v in 0..NV {
                            part[p][v] =
                                _mm256_add_epi16(part[p][v], _mm256_maddubs_epi16(a, wv[v]));
                        }
                        ap[p] = ap[p].add(4);
                    }
                    wp = wp.add(NV * 32);
                    left -= 1;
                    if left == 0 {
                        for p in 0..NP {
                            for v in 0..NV {
                                acc[p][v] = _mm256_add_epi32(
                                    acc[p][v],
                                    _mm256_madd_epi16(part[p][v], ones),
                                );
                                part[p][v] = _mm256_setzero_si256();
                            }
                        }
                        left = g.chunk;
                    }
                }
            }
        }
        for p in 0..NP {
            for v in 0..NV {
                let a = _mm256_add_epi32(acc[p][v], _mm256_madd_epi16(part[p][v], ones));
                _mm256_storeu_si256(out.add((p * NV + v) * 8) as *mut _, a);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// aarch64.

#[cfg(target_arch = "aarch64")]
pub(crate) mod arm {
    use super::DotOps;
    use std::arch::aarch64::*;

    /// NEON `sdot` (ARMv8.2 dot product): signed x signed, so activations are centred
    /// (`q ^ 0x80` = `q - 128` as `i8`); 4 channels per vector.
    pub(crate) struct Sdot;
    impl DotOps for Sdot {
        const VW: usize = 4;
        const CENTRED: bool = true;
        type Acc = int32x4_t;
        type W = int8x16_t;
        type A = int8x16_t;
        #[inline(always)]
        unsafe fn zero() -> int32x4_t {
            vdupq_n_s32(0)
        }
        #[inline(always)]
        unsafe fn load_w(p: *const i8) -> int8x16_t {
            vld1q_s8(p)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> int8x16_t {
            let v = vld1q_dup_s32(p as *const i32);
            veorq_s8(vreinterpretq_s8_s32(v), vdupq_n_s8(-128))
        }
        #[inline(always)]
        unsafe fn dot(acc: int32x4_t, a: int8x16_t, w: int8x16_t) -> int32x4_t {
            let r: int32x4_t;
            std::arch::asm!(
                "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
                acc = inlateout(vreg) acc => r,
                w = in(vreg) w,
                a = in(vreg) a,
                options(pure, nomem, nostack, preserves_flags)
            );
            r
        }
        #[inline(always)]
        unsafe fn store(acc: int32x4_t, p: *mut i32) {
            vst1q_s32(p, acc)
        }
    }

    /// NEON `usdot` (ARMv8.6 i8mm): unsigned activations times signed weights, no centring.
    pub(crate) struct Usdot;
    impl DotOps for Usdot {
        const VW: usize = 4;
        const CENTRED: bool = false;
        type Acc = int32x4_t;
        type W = int8x16_t;
        type A = uint8x16_t;
        #[inline(always)]
        unsafe fn zero() -> int32x4_t {
            vdupq_n_s32(0)
        }
        #[inline(always)]
        unsafe fn load_w(p: *const i8) -> int8x16_t {
            vld1q_s8(p)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> uint8x16_t {
            vreinterpretq_u8_s32(vld1q_dup_s32(p as *const i32))
        }
        #[inline(always)]
        unsafe fn dot(acc: int32x4_t, a: uint8x16_t, w: int8x16_t) -> int32x4_t {
            let r: int32x4_t;
            std::arch::asm!(
                "usdot {acc:v}.4s, {a:v}.16b, {w:v}.16b",
                acc = inlateout(vreg) acc => r,
                a = in(vreg) a,
                w = in(vreg) w,
                options(pure, nomem, nostack, preserves_flags)
            );
            r
        }
        #[inline(always)]
        unsafe fn store(acc: int32x4_t, p: *mut i32) {
            vst1q_s32(p, acc)
        }
    }
}
