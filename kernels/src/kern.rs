//! Portable kernel bodies. Each is `#[inline(always)]` and generic over lane counts, so that the
//! per-ISA entry points in `prepared.rs` (compiled with `#[multiversion::target(..)]`) get them
//! vectorized for their own instruction set. Dispatch happens once per call, never per element.
//!
//! Two kernels:
//! * `table_*`: vectorized across pixels. For a block of `L` pixels and a chunk of `k`, every
//!   product an activation can take (`±a << m` for each of the `2^bits` codes) is written once
//!   into a table shared by all output rows; the inner loop is then one table load + add per
//!   weight and `L` pixels, the weight's code selecting the table entry (an address, no
//!   arithmetic on the weight). The integer variant keeps `i16` lanes (activations centred to
//!   `-128..=127`) and widens to `i32` before a partial sum could overflow.
//! * `rowvec_*`: vectorized across output rows, for a handful of pixels (GEMV).

use crate::float::mul_code_bits;
use crate::packed::CodeOp;
use crate::simd::{V16, VF};

/// A raw pointer shared by threads that write disjoint index sets.
pub(crate) struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    #[inline(always)]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
    /// # Safety
    /// As `pointer::add`.
    #[inline(always)]
    pub(crate) unsafe fn offset(self, n: usize) -> SyncPtr<T> {
        SyncPtr(self.0.add(n))
    }
}

/// Activation layout: element `(k, p)` of a pixel block starting at `p0` (a multiple of the
/// kernel's lane count `L`) is at `(p0 / L) * bs + k * ks + (p - p0)`. Row-major `[K, P]` is
/// `ks = P, bs = L`; pixel-blocked `[P/L][K][L]` is `ks = L, bs = K * L`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lay {
    pub ks: usize,
    pub bs: usize,
}

/// Weights in the compute layout of the table kernel: one code index per weight, row-major.
pub(crate) struct TabW<'a> {
    pub codes: &'a [u8],
    pub rows: usize,
    pub k: usize,
    pub ncodes: usize,
    pub ops: &'a [CodeOp],
}

/// Table kernel core for `i16` lanes, pixel range `[pb, pe)`: `build(k0, kn, p0, pn, table)`
/// fills `kn * ncodes * L` table entries; `flush` widens a ragged row block. Explicit vectors: `L = V::N * VPR` lanes per row, `R` rows per
/// register block (`R * VPR` accumulator registers).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn table_core_v16<V: V16, const L: usize, const VPR: usize, const R: usize>(
    w: &TabW<'_>,
    kc: usize,
    pb: usize,
    pe: usize,
    tbl: &mut [i16],
    acc: SyncPtr<i32>,
    stride: usize,
    mut build: impl FnMut(usize, usize, usize, usize, &mut [i16]),
    mut flush: impl FnMut(usize, usize, usize, &[i16; L], bool),
) {
    let (rows, k, nc) = (w.rows, w.k, w.ncodes);
    assert!(V::N * VPR == L && tbl.len() >= kc * nc * L && w.codes.len() == rows * k);
    let mut p0 = pb;
    let mut tmp = [0i16; L];
    while p0 < pe {
        let pn = L.min(pe - p0);
        let mut k0 = 0;
        while k0 < k {
            let kn = kc.min(k - k0);
            build(k0, kn, p0, pn, &mut tbl[..kn * nc * L]);
            let first = k0 == 0;
            let tp = tbl.as_ptr();
            let mut o = 0;
            while o < rows {
                // Rows past the end repeat the last row (their results are not stored).
                let crow: [*const u8; R] = std::array::from_fn(|r| unsafe {
                    w.codes.as_ptr().add((o + r).min(rows - 1) * k + k0)
                });
                // SAFETY: codes < ncodes (checked when the layout was built), so each entry lies
                // inside the kn*nc*L table entries just built; code rows are inside `codes`.
                unsafe {
                    let mut a = [[V::zero(); VPR]; R];
                    let mut tk = tp;
                    for kl in 0..kn {
                        for r in 0..R {
                            let t = tk.add(*crow[r].add(kl) as usize * L);
                            for v in 0..VPR {
                                a[r][v] = a[r][v].add(V::load(t.add(v * V::N)));
                            }
                        }
                        tk = tk.add(nc * L);
                    }
                    for r in 0..R.min(rows - o) {
                        if pn == L {
                            let dst = acc.0.add((o + r) * stride + p0);
                            for v in 0..VPR {
                                a[r][v].widen_into(dst.add(v * V::N), first);
                            }
                        } else {
                            for v in 0..VPR {
                                a[r][v].store(tmp.as_mut_ptr().add(v * V::N));
                            }
                            flush(o + r, p0, pn, &tmp, first);
                        }
                    }
                }
                o += R;
            }
            k0 += kn;
        }
        p0 += pn;
    }
}

/// Table kernel core for 32-bit lanes (`f32` float path, `i32` wide integer codes) with explicit
/// vectors: each row's running sums are loaded,
/// the chunk's products added in ascending `k`, and stored back.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn table_core_vf<V: VF, const L: usize, const VPR: usize, const R: usize>(
    w: &TabW<'_>,
    kc: usize,
    pb: usize,
    pe: usize,
    tbl: &mut [V::E],
    acc: SyncPtr<V::E>,
    stride: usize,
    mut build: impl FnMut(usize, usize, usize, usize, &mut [V::E]),
) {
    let (rows, k, nc) = (w.rows, w.k, w.ncodes);
    assert!(V::N * VPR == L && tbl.len() >= kc * nc * L && w.codes.len() == rows * k);
    let mut p0 = pb;
    let mut tmp = [V::E::default(); L];
    while p0 < pe {
        let pn = L.min(pe - p0);
        let mut k0 = 0;
        while k0 < k {
            let kn = kc.min(k - k0);
            build(k0, kn, p0, pn, &mut tbl[..kn * nc * L]);
            let first = k0 == 0;
            let tp = tbl.as_ptr();
            let mut o = 0;
            while o < rows {
                let rn = R.min(rows - o);
                let crow: [*const u8; R] = std::array::from_fn(|r| unsafe {
                    w.codes.as_ptr().add((o + r.min(rn - 1)) * k + k0)
                });
                // SAFETY: as in `table_core_v16`; accumulator rows o..o+rn of this thread's
                // pixel range are disjoint from other threads'.
                unsafe {
                    let mut a = [[V::zero(); VPR]; R];
                    if !first {
                        for r in 0..rn {
                            let src = acc.0.add((o + r) * stride + p0);
                            if pn == L {
                                for v in 0..VPR {
                                    a[r][v] = V::load(src.add(v * V::N));
                                }
                            } else {
                                tmp[..pn].copy_from_slice(std::slice::from_raw_parts(src, pn));
                                for v in 0..VPR {
                                    a[r][v] = V::load(tmp.as_ptr().add(v * V::N));
                                }
                            }
                        }
                    }
                    let mut tk = tp;
                    for kl in 0..kn {
                        for r in 0..R {
                            let t = tk.add(*crow[r].add(kl) as usize * L);
                            for v in 0..VPR {
                                a[r][v] = a[r][v].add(V::load(t.add(v * V::N)));
                            }
                        }
                        tk = tk.add(nc * L);
                    }
                    for r in 0..rn {
                        let dst = acc.0.add((o + r) * stride + p0);
                        if pn == L {
                            for v in 0..VPR {
                                a[r][v].store(dst.add(v * V::N));
                            }
                        } else {
                            for v in 0..VPR {
                                a[r][v].store(tmp.as_mut_ptr().add(v * V::N));
                            }
                            std::slice::from_raw_parts_mut(dst, pn).copy_from_slice(&tmp[..pn]);
                        }
                    }
                }
                o += R;
            }
            k0 += kn;
        }
        p0 += pn;
    }
}

/// Integer products of centred activations `a - 128` in `i16` lanes; `acc[o*stride + p] =
/// Σ_k w[o,k] * (act[k,p] - 128)` for `p` in `[pb, pe)`. `kc` must keep every chunk's partial
/// sum inside `i16` (`kc * 128 * max|w| <= 32767`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn table_i16<V: V16, const L: usize, const VPR: usize, const R: usize>(
    w: &TabW<'_>,
    kc: usize,
    act: &[u8],
    lay: Lay,
    pb: usize,
    pe: usize,
    acc: SyncPtr<i32>,
    stride: usize,
    tbl: &mut [i16],
) {
    let ops = w.ops;
    let max_shift = ops
        .iter()
        .filter(|o| !o.zero)
        .map(|o| o.shift)
        .max()
        .unwrap_or(0);
    const NONE: usize = usize::MAX;
    let nc = ops.len();
    let (mut pos_of, mut neg_of) = ([NONE; 32], [NONE; 32]);
    let (mut zero_codes, mut nzero) = ([0usize; 32], 0);
    for (c, op) in ops.iter().enumerate() {
        if op.zero {
            zero_codes[nzero] = c;
            nzero += 1;
        } else if op.neg {
            neg_of[op.shift as usize] = c;
        } else {
            pos_of[op.shift as usize] = c;
        }
    }
    table_core_v16::<V, L, VPR, R>(
        w,
        kc,
        pb,
        pe,
        tbl,
        acc,
        stride,
        |k0, kn, p0, pn, t| {
            for kl in 0..kn {
                let o0 = (p0 / L) * lay.bs + (k0 + kl) * lay.ks;
                let src = &act[o0..o0 + pn];
                let mut a = [0i16; L];
                if pn == L {
                    for j in 0..L {
                        a[j] = src[j] as i16 - 128;
                    }
                } else {
                    for j in 0..pn {
                        a[j] = src[j] as i16 - 128;
                    }
                }
                // a << m by repeated doubling; the code (if any) of +2^m stores v, that of -2^m
                // stores -v; zero codes store 0.
                let tk = &mut t[kl * nc * L..(kl + 1) * nc * L];
                let tp = tk.as_mut_ptr();
                let mut v = a;
                for m in 0..=max_shift as usize {
                    if m > 0 {
                        for j in 0..L {
                            v[j] = v[j].wrapping_add(v[j]);
                        }
                    }
                    // SAFETY: code indices are < nc, so each entry lies inside `tk`.
                    unsafe {
                        if pos_of[m] != NONE {
                            *(tp.add(pos_of[m] * L) as *mut [i16; L]) = v;
                        }
                        if neg_of[m] != NONE {
                            let d = &mut *(tp.add(neg_of[m] * L) as *mut [i16; L]);
                            for j in 0..L {
                                d[j] = 0i16.wrapping_sub(v[j]);
                            }
                        }
                    }
                }
                for &c in &zero_codes[..nzero] {
                    tk[c * L..(c + 1) * L].fill(0);
                }
            }
        },
        |o, p0, pn, v, first| {
            // SAFETY: callers give each thread a disjoint pixel range of a [rows, stride] buffer.
            unsafe {
                let dst = acc.0.add(o * stride + p0);
                if pn == L {
                    let dst = &mut *(dst as *mut [i32; L]);
                    if first {
                        for j in 0..L {
                            dst[j] = v[j] as i32;
                        }
                    } else {
                        for j in 0..L {
                            dst[j] = dst[j].wrapping_add(v[j] as i32);
                        }
                    }
                } else {
                    let mut wide = [0i32; L];
                    for j in 0..L {
                        wide[j] = v[j] as i32;
                    }
                    let dst = std::slice::from_raw_parts_mut(dst, pn);
                    if first {
                        dst.copy_from_slice(&wide[..pn]);
                    } else {
                        for (d, &x) in dst.iter_mut().zip(&wide[..pn]) {
                            *d = d.wrapping_add(x);
                        }
                    }
                }
            }
        },
    );
}

/// Integer products of raw activations in `i32` lanes (for codes whose products exceed the
/// `i16` budget): `acc[o*stride + p] = Σ_k w[o,k] * act[k,p]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn table_i32<V: VF<E = i32>, const L: usize, const VPR: usize, const R: usize>(
    w: &TabW<'_>,
    kc: usize,
    act: &[u8],
    lay: Lay,
    pb: usize,
    pe: usize,
    acc: SyncPtr<i32>,
    stride: usize,
    tbl: &mut [i32],
) {
    let ops = w.ops;
    table_core_vf::<V, L, VPR, R>(w, kc, pb, pe, tbl, acc, stride, |k0, kn, p0, pn, t| {
        for kl in 0..kn {
            let o0 = (p0 / L) * lay.bs + (k0 + kl) * lay.ks;
            let src = &act[o0..o0 + pn];
            let mut a = [0i32; L];
            for j in 0..pn {
                a[j] = src[j] as i32;
            }
            for (c, op) in ops.iter().enumerate() {
                let keep: i32 = if op.zero { 0 } else { -1 };
                let neg: i32 = if op.neg { -1 } else { 0 };
                let sh = op.shift;
                let dst = &mut t[(kl * ops.len() + c) * L..(kl * ops.len() + c + 1) * L];
                for j in 0..L {
                    dst[j] = ((a[j].wrapping_shl(sh) & keep) ^ neg).wrapping_sub(neg);
                }
            }
        }
    });
}

/// Float path: `acc[o*stride + p] = Σ_k x[k,p] * w[o,k]` summed in ascending `k` from `+0.0`,
/// products exact (see `float.rs`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn table_f32<V: VF<E = f32>, const L: usize, const VPR: usize, const R: usize>(
    w: &TabW<'_>,
    kc: usize,
    act: &[f32],
    lay: Lay,
    pb: usize,
    pe: usize,
    acc: SyncPtr<f32>,
    stride: usize,
    tbl: &mut [f32],
) {
    let ops = w.ops;
    table_core_vf::<V, L, VPR, R>(w, kc, pb, pe, tbl, acc, stride, |k0, kn, p0, pn, t| {
        for kl in 0..kn {
            let o0 = (p0 / L) * lay.bs + (k0 + kl) * lay.ks;
            let src = &act[o0..o0 + pn];
            let mut a = [0u32; L];
            for j in 0..pn {
                a[j] = src[j].to_bits();
            }
            for (c, op) in ops.iter().enumerate() {
                let dst = &mut t[(kl * ops.len() + c) * L..(kl * ops.len() + c + 1) * L];
                for j in 0..L {
                    dst[j] = f32::from_bits(mul_code_bits(a[j], op.shift, op.neg, op.zero));
                }
            }
        }
    });
}

/// Weights in the row-vector layout: blocks of `LR` rows, `[rows/LR (rounded up)][k][LR]`, one
/// byte per weight `shift | neg << 5 | zero << 6` (padding rows are zero weights).
pub(crate) struct RowW<'a> {
    pub ops: &'a [u8],
    pub rows: usize,
    pub k: usize,
}

pub(crate) fn rowvec_op_byte(op: CodeOp) -> u8 {
    op.shift as u8 | (op.neg as u8) << 5 | (op.zero as u8) << 6
}

/// GEMV-style integer kernel for row blocks `[bb, be)`: for each pixel `p < np`,
/// `acc[o*stride + p] = Σ_k w[o,k] * act[k,p]` (act row stride `ps`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rowvec_i32<const LR: usize>(
    w: &RowW<'_>,
    act: &[u8],
    lay: Lay,
    np: usize,
    bb: usize,
    be: usize,
    acc: SyncPtr<i32>,
    stride: usize,
) {
    let k = w.k;
    for b in bb..be {
        let blk = &w.ops[b * k * LR..(b + 1) * k * LR];
        for p in 0..np {
            let mut a = [0i32; LR];
            for kk in 0..k {
                let x = act[kk * lay.ks + p] as i32;
                let g: &[u8; LR] = blk[kk * LR..(kk + 1) * LR].try_into().unwrap();
                for j in 0..LR {
                    let sh = (g[j] & 31) as u32;
                    let neg = -(((g[j] >> 5) & 1) as i32);
                    let keep = (((g[j] >> 6) & 1) as i32) - 1;
                    let t = ((x << sh) & keep ^ neg).wrapping_sub(neg);
                    a[j] = a[j].wrapping_add(t);
                }
            }
            let o0 = b * LR;
            for (j, &v) in a.iter().enumerate().take(w.rows.saturating_sub(o0).min(LR)) {
                // SAFETY: threads get disjoint row blocks of a [rows, stride] buffer.
                unsafe { *acc.0.add((o0 + j) * stride + p) = v };
            }
        }
    }
}

/// GEMV-style float kernel (ascending `k`, products exact).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rowvec_f32<const LR: usize>(
    w: &RowW<'_>,
    act: &[f32],
    lay: Lay,
    np: usize,
    bb: usize,
    be: usize,
    acc: SyncPtr<f32>,
    stride: usize,
) {
    let k = w.k;
    for b in bb..be {
        let blk = &w.ops[b * k * LR..(b + 1) * k * LR];
        for p in 0..np {
            let mut a = [0f32; LR];
            for kk in 0..k {
                let x = act[kk * lay.ks + p].to_bits();
                let g: &[u8; LR] = blk[kk * LR..(kk + 1) * LR].try_into().unwrap();
                for j in 0..LR {
                    let sh = (g[j] & 31) as u32;
                    let neg = (g[j] >> 5) & 1 == 1;
                    let zero = (g[j] >> 6) & 1 == 1;
                    a[j] += f32::from_bits(mul_code_bits(x, sh, neg, zero));
                }
            }
            let o0 = b * LR;
            for (j, &v) in a.iter().enumerate().take(w.rows.saturating_sub(o0).min(LR)) {
                // SAFETY: threads get disjoint row blocks of a [rows, stride] buffer.
                unsafe { *acc.0.add((o0 + j) * stride + p) = v };
            }
        }
    }
}
