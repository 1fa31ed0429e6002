//! AVX-512 GEMV for zero-free W2/W3 weights: vectorized across 32 columns `k` of one row, the
//! weight's bit planes used directly as AVX-512 mask registers. Per 32 weights: one masked
//! select of the doubled activations, one masked shift by 2 (W3), one masked negation and one add, all in `i16` lanes
//! (centred activations), widened to `i32` before any lane could overflow. The compute layout is
//! the storage layout transposed to `[rows][ceil(K/32)][bits]` 32-bit words: still `bits` bits
//! per weight, so the weight stream is as small as the file's.

use crate::kern::SyncPtr;
use std::arch::x86_64::*;

/// Rows per register block.
const RB: usize = 8;

/// Builds the mask layout from code indices (`s | m << 1`, row-major `[rows][k]`).
pub(crate) fn build_masks(codes: &[u8], rows: usize, k: usize, bits: usize) -> Vec<u32> {
    let nkb = k.div_ceil(32);
    let mut out = vec![0u32; rows * nkb * bits];
    for o in 0..rows {
        for kk in 0..k {
            let c = codes[o * k + kk];
            let base = (o * nkb + kk / 32) * bits;
            for b in 0..bits {
                if (c >> b) & 1 == 1 {
                    out[base + b] |= 1 << (kk % 32);
                }
            }
        }
    }
    out
}

#[inline(always)]
unsafe fn widen(acc32: __m512i, v: __m512i) -> __m512i {
    let lo = _mm512_srai_epi32(_mm512_slli_epi32(v, 16), 16);
    let hi = _mm512_srai_epi32(v, 16);
    _mm512_add_epi32(acc32, _mm512_add_epi32(lo, hi))
}

/// Rows `[r0, r1)`: `acc[o*stride + p] = Σ_k w[o,k] * xs[p][k]` where `xs` holds, per pixel,
/// `nkb*32` centred activations (zero padded). `terms`: k-blocks per `i16` chunk.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn gemv<const BITS: usize>(
    masks: &[u32],
    nkb: usize,
    terms: usize,
    xs: &[i16],
    np: usize,
    r0: usize,
    r1: usize,
    acc: SyncPtr<i32>,
    stride: usize,
) {
    debug_assert!(xs.len() >= np * nkb * 32 && masks.len() >= r1 * nkb * BITS);
    let zero = _mm512_setzero_si512();
    let mut o = r0;
    while o < r1 {
        let rn = RB.min(r1 - o);
        let mrow: [*const u32; RB] =
            std::array::from_fn(|r| masks.as_ptr().add((o + r.min(rn - 1)) * nkb * BITS));
        for p in 0..np {
            let x = xs.as_ptr().add(p * nkb * 32);
            let mut a32 = [zero; RB];
            let mut kb = 0;
            while kb < nkb {
                let ke = (kb + terms).min(nkb);
                let mut a16 = [zero; RB];
                for b in kb..ke {
                    let xv = _mm512_loadu_si512(x.add(b * 32) as *const __m512i);
                    let mut x2 = _mm512_add_epi16(xv, xv);
                    // Opaque to LLVM, which would otherwise turn the masked select below into a
                    // mask-to-vector + variable shift sequence (three uops instead of one).
                    std::arch::asm!("/* {0} */", inout(zmm_reg) x2, options(pure, nomem, nostack));
                    for r in 0..RB {
                        let m = mrow[r].add(b * BITS);
                        let mut t = _mm512_mask_mov_epi16(xv, *m.add(1), x2);
                        if BITS >= 3 {
                            t = _mm512_mask_slli_epi16::<2>(t, *m.add(2), t);
                        }
                        t = _mm512_mask_sub_epi16(t, *m, zero, t);
                        a16[r] = _mm512_add_epi16(a16[r], t);
                    }
                }
                for r in 0..RB {
                    a32[r] = widen(a32[r], a16[r]);
                }
                kb = ke;
            }
            for (r, &v) in a32.iter().enumerate().take(rn) {
                *acc.0.add((o + r) * stride + p) = _mm512_reduce_add_epi32(v);
            }
        }
        o += rn;
    }
}
