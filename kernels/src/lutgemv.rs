//! Table-lookup GEMV for weights of at most 3 bits (AVX-512 BW), after T-MAC's idea: for one
//! activation vector, every pair of columns `(2j, 2j+1)` gets a table of the 64 values
//! `w(c1) * a[2j] + w(c2) * a[2j+1]` over all pairs of codes; a weight pair is then a 6-bit
//! index, and `vpermi2w` looks up 32 rows' pairs (64 products) in one instruction. The tables
//! are built with shifts and negations (`w = ±2^m`), so the kernel stays multiplication-free.
//!
//! Weight stream: one byte per weight pair (4 bits per weight, 2x less than `i8`), laid out
//! `[row group of 256][pair][256 rows]` so one table load serves 256 rows. 64 index bytes are
//! loaded as 32 16-bit words: `vpermi2w` reads only the low 6 bits of each word, so the word
//! itself indexes the even row and the word shifted right by 8 the odd one (no widening
//! shuffle competes with the lookups for the shuffle port). Sums run
//! over centred activations (`q - 128`) in `i16` lanes, widened to `i32` every
//! [`pairs_per_widen`] pairs, before any lane could overflow; the caller adds `128 * Σ w`.
//!
//! Used for one activation vector (batch-1 shift linear layers and 1x1 convolutions on one
//! pixel), where the weights dominate the memory traffic.

use std::arch::x86_64::*;

use crate::kern::SyncPtr;
use crate::packed::CodeOp;

/// Rows sharing one table load.
pub(crate) const GROUP: usize = 256;
/// 64-row blocks per group (two accumulators each: even and odd rows).
const RB: usize = GROUP / 64;

/// Builds the pair-index layout from code indices (row-major `[rows][k]`, codes < 8).
pub(crate) fn build(codes: &[u8], rows: usize, k: usize) -> Vec<u8> {
    let pairs = k.div_ceil(2);
    let groups = rows.div_ceil(GROUP);
    let mut out = vec![0u8; groups * pairs * GROUP];
    for o in 0..rows {
        let (g, r) = (o / GROUP, o % GROUP);
        for j in 0..pairs {
            let c1 = codes[o * k + 2 * j];
            let c2 = if 2 * j + 1 < k {
                codes[o * k + 2 * j + 1]
            } else {
                0
            };
            out[(g * pairs + j) * GROUP + r] = c1 | (c2 << 3);
        }
    }
    out
}

/// Pairs whose `i16` lookups may be summed before widening: `|entry| <= 2 * 128 * max|w|`.
pub(crate) fn pairs_per_widen(max_abs: i32) -> usize {
    (32767 / (256 * max_abs.max(1) as usize)).max(1)
}

/// Bytes of table scratch for `k` columns.
pub(crate) fn table_bytes(k: usize) -> usize {
    k.div_ceil(2) * 64 * 2
}

/// Builds the 64-entry tables of every column pair for one activation vector `act(kk)` (raw
/// `u8`): entry `c1 | c2 << 3` is `w(c1) * (a1 - 128) + w(c2) * (a2 - 128)`.
///
/// # Safety
/// AVX-512 F/BW; `ops` has 8 entries (codes past the width repeat code 0: never indexed);
/// `tables` holds [`table_bytes`]`(k) / 2` values.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn build_tables(
    ops: &[CodeOp; 8],
    k: usize,
    act: impl Fn(usize) -> u8,
    tables: &mut [i16],
) {
    // Per code: shift, negation mask, zero mask as 16-bit lanes 0..8 (repeated to 32 lanes).
    let mut sh = [0i16; 32];
    let mut ng = [0i16; 32];
    let mut keep = [0i16; 32];
    for i in 0..32 {
        let op = ops[i % 8];
        sh[i] = op.shift as i16;
        ng[i] = if op.neg { -1 } else { 0 };
        keep[i] = if op.zero { 0 } else { -1 };
    }
    let sh = _mm512_loadu_si512(sh.as_ptr() as *const _);
    let ng = _mm512_loadu_si512(ng.as_ptr() as *const _);
    let keep = _mm512_loadu_si512(keep.as_ptr() as *const _);
    // Index vectors: table lane i (0..64) = c1 (i & 7) from the first column's values,
    // c2 (i >> 3) from the second's.
    let mut i1 = [0i16; 32];
    let mut i2lo = [0i16; 32];
    let mut i2hi = [0i16; 32];
    for i in 0..32 {
        i1[i] = (i & 7) as i16;
        i2lo[i] = (i >> 3) as i16;
        i2hi[i] = ((i + 32) >> 3) as i16;
    }
    let i1 = _mm512_loadu_si512(i1.as_ptr() as *const _);
    let i2lo = _mm512_loadu_si512(i2lo.as_ptr() as *const _);
    let i2hi = _mm512_loadu_si512(i2hi.as_ptr() as *const _);
    // value(c) * a for all codes (lanes 0..8 meaningful): ((a << m) & keep ^ neg) - neg.
    let times = |a: i16| -> __m512i {
        let t = _mm512_sllv_epi16(_mm512_set1_epi16(a), sh);
        let t = _mm512_xor_si512(_mm512_and_si512(t, keep), ng);
        _mm512_sub_epi16(t, ng)
    };
    let tp = tables.as_mut_ptr();
    for j in 0..k.div_ceil(2) {
        let a1 = act(2 * j) as i16 - 128;
        let a2 = if 2 * j + 1 < k {
            act(2 * j + 1) as i16 - 128
        } else {
            0
        };
        let (v1, v2) = (times(a1), times(a2));
        let first = _mm512_permutexvar_epi16(i1, v1);
        let lo = _mm512_add_epi16(first, _mm512_permutexvar_epi16(i2lo, v2));
        let hi = _mm512_add_epi16(first, _mm512_permutexvar_epi16(i2hi, v2));
        _mm512_storeu_si512(tp.add(j * 64) as *mut _, lo);
        _mm512_storeu_si512(tp.add(j * 64 + 32) as *mut _, hi);
    }
}

/// Adds the 32 `i16` lanes of `v` into 32-bit sums: `acc32[0]` gets the even words (lane `d`:
/// word `2d`), `acc32[1]` the odd ones (word `2d + 1`). Shifts only, so the shuffle port stays
/// free for the lookups.
#[inline(always)]
unsafe fn widen(acc32: &mut [__m512i; 2], v: __m512i) {
    let even = _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(v));
    let odd = _mm512_srai_epi32::<16>(v);
    acc32[0] = _mm512_add_epi32(acc32[0], even);
    acc32[1] = _mm512_add_epi32(acc32[1], odd);
}

/// Row groups `[g0, g1)`: `acc[o * stride + p] = Σ_k w[o,k] * (a[k] - 128)` for rows `o <
/// rows`, with the tables of one activation vector.
///
/// # Safety
/// AVX-512 F/BW; `idx` is [`build`]'s layout for `pairs` pairs; `tables` from
/// [`build_tables`]; the output rows are the caller's.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn gemv(
    idx: &[u8],
    pairs: usize,
    tables: &[i16],
    per_widen: usize,
    rows: usize,
    g0: usize,
    g1: usize,
    acc: SyncPtr<i32>,
    stride: usize,
    p: usize,
) {
    let zero = _mm512_setzero_si512();
    for g in g0..g1 {
        // [block][even, odd]
        let mut a32 = [[[zero; 2]; 2]; RB];
        let gi = idx.as_ptr().add(g * pairs * GROUP);
        let mut j = 0;
        while j < pairs {
            let je = (j + per_widen).min(pairs);
            let mut a16 = [[zero; 2]; RB];
            for jj in j..je {
                let tlo = _mm512_loadu_si512(tables.as_ptr().add(jj * 64) as *const _);
                let thi = _mm512_loadu_si512(tables.as_ptr().add(jj * 64 + 32) as *const _);
                let ip = gi.add(jj * GROUP);
                for (r, a) in a16.iter_mut().enumerate() {
                    let words = _mm512_loadu_si512(ip.add(r * 64) as *const _);
                    let odd = _mm512_srli_epi16::<8>(words);
                    a[0] = _mm512_add_epi16(a[0], _mm512_permutex2var_epi16(tlo, words, thi));
                    a[1] = _mm512_add_epi16(a[1], _mm512_permutex2var_epi16(tlo, odd, thi));
                }
            }
            for (r, a) in a16.iter().enumerate() {
                widen(&mut a32[r][0], a[0]);
                widen(&mut a32[r][1], a[1]);
            }
            j = je;
        }
        // Vector `parity` of block r holds row r*64 + 2w + parity in word w; the widened sums
        // hold word 2d in lane d of [0] and word 2d + 1 in lane d of [1].
        let mut lanes = [0i32; 16];
        for (r, eo) in a32.iter().enumerate() {
            for (parity, halves) in eo.iter().enumerate() {
                for (half, a) in halves.iter().enumerate() {
                    _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, *a);
                    for (d, &v) in lanes.iter().enumerate() {
                        let o = g * GROUP + r * 64 + 2 * (2 * d + half) + parity;
                        if o < rows {
                            *acc.get().add(o * stride + p) = v;
                        }
                    }
                }
            }
        }
    }
}
