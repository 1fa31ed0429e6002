//! Compute layouts (built once per layer and ISA) and the per-ISA entry points of the shift
//! kernels.

use crate::error::{check_len, mul_dims, KernelError};
use crate::isa::Isa;
use crate::kern::{self, Lay, RowW, SyncPtr, TabW};
use crate::packed::{Code, CodeOp, PackedShift};
use crate::workspace::Scratch;

// ---- ISA wrappers: each runs a closure compiled (after inlining) for its target features. ----

#[cfg(target_arch = "x86_64")]
#[multiversion::target(
    "x86_64+avx2+fma+bmi1+bmi2+lzcnt+avx512f+avx512bw+avx512vl+avx512cd+avx512dq"
)]
unsafe fn with_avx512<T, F: FnOnce() -> T>(f: F) -> T {
    f()
}

#[cfg(target_arch = "x86_64")]
#[multiversion::target("x86_64+avx2+fma+bmi1+bmi2+lzcnt")]
unsafe fn with_avx2<T, F: FnOnce() -> T>(f: F) -> T {
    f()
}

#[cfg(target_arch = "aarch64")]
#[multiversion::target("aarch64+neon")]
unsafe fn with_neon<T, F: FnOnce() -> T>(f: F) -> T {
    f()
}

/// Runs `$body` with the lane constants of `$isa` bound and compiled for its features.
/// `L16`: i16 table lanes, `L32`: i32/f32 table lanes, `R`: rows per register block,
/// `LR`: row-vector lanes.
macro_rules! isa_dispatch {
    ($isa:expr, $body:expr) => {{
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                #[allow(dead_code)]
                type ViT = crate::simd::x86i::ZI;
                #[allow(dead_code)]
                type VfT = crate::simd::x86f::ZF;
                #[allow(dead_code)]
                const VPRF: usize = 2;
                #[allow(dead_code)]
                type V16T = crate::simd::x86::Z;
                #[allow(dead_code)]
                const VPR16: usize = 2;
                #[allow(dead_code)]
                const R16: usize = 4;
                #[allow(dead_code)]
                const L16: usize = 64;
                #[allow(dead_code)]
                const L32: usize = 32;
                #[allow(dead_code)]
                const R: usize = 4;
                #[allow(dead_code)]
                const LR: usize = 32;
                // SAFETY: a PreparedShift for Avx512 is only built after checking the CPU.
                unsafe {
                    with_avx512(
                        #[inline(always)]
                        || $body,
                    )
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                #[allow(dead_code)]
                type ViT = crate::simd::x86i::YI;
                #[allow(dead_code)]
                type VfT = crate::simd::x86f::YF;
                #[allow(dead_code)]
                const VPRF: usize = 2;
                #[allow(dead_code)]
                type V16T = crate::simd::x86::Y;
                #[allow(dead_code)]
                const VPR16: usize = 2;
                #[allow(dead_code)]
                const R16: usize = 4;
                #[allow(dead_code)]
                const L16: usize = 32;
                #[allow(dead_code)]
                const L32: usize = 16;
                #[allow(dead_code)]
                const R: usize = 4;
                #[allow(dead_code)]
                const LR: usize = 16;
                // SAFETY: as above.
                unsafe {
                    with_avx2(
                        #[inline(always)]
                        || $body,
                    )
                }
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                #[allow(dead_code)]
                type ViT = crate::simd::armi::QI;
                #[allow(dead_code)]
                type VfT = crate::simd::armf::QF;
                #[allow(dead_code)]
                const VPRF: usize = 4;
                #[allow(dead_code)]
                type V16T = crate::simd::arm::Q;
                #[allow(dead_code)]
                const VPR16: usize = 4;
                #[allow(dead_code)]
                const R16: usize = 4;
                #[allow(dead_code)]
                const L16: usize = 32;
                #[allow(dead_code)]
                const L32: usize = 16;
                #[allow(dead_code)]
                const R: usize = 4;
                #[allow(dead_code)]
                const LR: usize = 16;
                // SAFETY: as above.
                unsafe {
                    with_neon(
                        #[inline(always)]
                        || $body,
                    )
                }
            }
            _ => {
                #[allow(dead_code)]
                type ViT = crate::simd::ArrI8;
                #[allow(dead_code)]
                type VfT = crate::simd::ArrF8;
                #[allow(dead_code)]
                const VPRF: usize = 1;
                #[allow(dead_code)]
                type V16T = crate::simd::Arr8;
                #[allow(dead_code)]
                const VPR16: usize = 2;
                #[allow(dead_code)]
                const R16: usize = 2;
                #[allow(dead_code)]
                const L16: usize = 16;
                #[allow(dead_code)]
                const L32: usize = 8;
                #[allow(dead_code)]
                const R: usize = 2;
                #[allow(dead_code)]
                const LR: usize = 8;
                $body
            }
        }
    }};
}

/// Lane counts of an ISA: (i16 table lanes, 32-bit table lanes, row-vector lanes).
pub(crate) fn lanes(isa: Isa) -> (usize, usize, usize) {
    isa_dispatch!(isa, (L16, L32, LR))
}

/// Bytes of L1 a kernel's activation table may use.
const TABLE_BUDGET: usize = 36 * 1024;

/// How the activation matrix of a kernel call is laid out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ActLayout {
    /// `[K, P]` with row stride `ps`.
    RowMajor { ps: usize },
    /// `[ceil(P/L)][K][L]` with `L = block_lanes(path)` (the last block zero padded).
    Blocked,
}

/// How the integer path accumulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntMode {
    /// `i16` lanes over centred activations, widened every `kc` steps.
    I16 { kc: usize },
    /// `i32` lanes over raw activations.
    I32 { kc: usize },
}

/// Power-of-two weights in the compute layouts of one ISA. Built once; read-only afterwards.
#[derive(Clone, Debug)]
pub struct PreparedShift {
    isa: Isa,
    code: Code,
    bits: u8,
    rows: usize,
    cols: usize,
    max_abs: i32,
    ops: Vec<CodeOp>,
    /// Table-kernel layout: one code index per weight, row-major `[rows][cols]`.
    codes: Vec<u8>,
    /// Row-vector layout `[ceil(rows/LR)][cols][LR]`, one op byte per weight.
    rowvec: Vec<u8>,
    row_sums: Vec<i64>,
    int_mode: IntMode,
    kc_f32: usize,
    /// AVX-512 GEMV layout (zero-free W2/W3): bit-plane masks `[rows][ceil(cols/32)][bits]`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    gemv_masks: Vec<u32>,
    /// AVX-512 table-lookup GEMV layout (widths up to 3 bits): one byte per weight pair
    /// (`lutgemv.rs`), for a single activation vector.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    lut_pairs: Vec<u8>,
}

impl PreparedShift {
    /// Builds the compute layouts of `isa` (which must be supported by this CPU).
    pub fn new(w: &PackedShift, isa: Isa) -> Result<Self, KernelError> {
        isa.check_supported()?;
        let (rows, cols) = (w.rows(), w.cols());
        let ncodes = 1usize << w.bits();
        let ops: Vec<CodeOp> = (0..ncodes).map(|c| CodeOp::of(w.code(), c as u8)).collect();
        let codes = w.code_indices();
        let mut row_sums = vec![0i64; rows];
        for (o, rs) in row_sums.iter_mut().enumerate() {
            *rs = codes[o * cols..(o + 1) * cols]
                .iter()
                .map(|&c| ops[c as usize].value() as i64)
                .sum();
        }
        let (l16, l32, lr) = lanes(isa);
        let nblk = rows.div_ceil(lr);
        let zero_op = kern::rowvec_op_byte(CodeOp {
            shift: 0,
            neg: false,
            zero: true,
        });
        let mut rowvec = vec![zero_op; mul_dims(&[nblk, cols, lr])?];
        for o in 0..rows {
            let (b, j) = (o / lr, o % lr);
            for k in 0..cols {
                rowvec[(b * cols + k) * lr + j] =
                    kern::rowvec_op_byte(ops[codes[o * cols + k] as usize]);
            }
        }
        let max_abs = w.code().max_abs(w.bits());
        let kc16 = 32767 / (128 * max_abs as usize);
        let int_mode = if kc16 >= 8 {
            IntMode::I16 {
                kc: kc16.min((TABLE_BUDGET / (ncodes * l16 * 2)).max(1)),
            }
        } else {
            IntMode::I32 {
                kc: (TABLE_BUDGET / (ncodes * l32 * 4)).max(1),
            }
        };
        let kc_f32 = (TABLE_BUDGET / (ncodes * l32 * 4)).max(1);
        #[allow(unused_mut)]
        let mut gemv_masks = Vec::new();
        #[allow(unused_mut)]
        let mut lut_pairs = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && w.bits() <= 3 {
            lut_pairs = crate::lutgemv::build(&codes, rows, cols);
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && w.code() == Code::ZeroFree && w.bits() <= 3 {
            gemv_masks = crate::gemv512::build_masks(&codes, rows, cols, w.bits() as usize);
        }
        Ok(PreparedShift {
            isa,
            code: w.code(),
            bits: w.bits(),
            rows,
            cols,
            max_abs,
            ops,
            codes,
            rowvec,
            row_sums,
            int_mode,
            kc_f32,
            gemv_masks,
            lut_pairs,
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn bits(&self) -> u8 {
        self.bits
    }
    pub fn code(&self) -> Code {
        self.code
    }
    /// `Σ_k w[r,k]` for every row.
    pub fn row_sums(&self) -> &[i64] {
        &self.row_sums
    }
    /// Largest |weight| the code can express at this width.
    pub fn max_abs(&self) -> i32 {
        self.max_abs
    }

    /// Whether `Σ_k |w| * 255` fits an `i32` for every row, i.e. the integer path is exact.
    pub fn int_path_fits(&self) -> bool {
        (self.cols as i64) * (self.max_abs as i64) * 255 <= i32::MAX as i64
    }

    fn tab(&self) -> TabW<'_> {
        TabW {
            codes: &self.codes,
            rows: self.rows,
            k: self.cols,
            ncodes: self.ops.len(),
            ops: &self.ops,
        }
    }

    /// Lane count of the pixel-blocked activation layout the kernels of this path read.
    pub(crate) fn block_lanes(&self, float: bool) -> usize {
        let (l16, l32, _) = lanes(self.isa);
        match (float, self.int_mode) {
            (false, IntMode::I16 { .. }) => l16,
            _ => l32,
        }
    }

    fn lay(&self, act: ActLayout, l: usize) -> Lay {
        match act {
            ActLayout::RowMajor { ps } => Lay { ks: ps, bs: l },
            ActLayout::Blocked => Lay {
                ks: l,
                bs: self.cols * l,
            },
        }
    }

    fn use_rowvec(&self, p: usize, float: bool) -> bool {
        let (l16, l32, _) = lanes(self.isa);
        let l = if float { l32 } else { l16 };
        p * 4 < l
    }

    /// Integer kernel on raw pointers. Writes `acc[o*stride + p]` for `o < rows`, `p < np`; the
    /// returned flag says whether activations were centred (then the true sum is
    /// `acc + 128 * row_sums[o]`).
    pub(crate) fn run_i32(
        &self,
        act: &[u8],
        layout: ActLayout,
        np: usize,
        acc: SyncPtr<i32>,
        stride: usize,
        threads: usize,
        scratch: &mut Scratch,
    ) -> bool {
        let threads = threads.max(1);
        #[cfg(target_arch = "x86_64")]
        if np == 1 && !self.lut_pairs.is_empty() {
            // One activation vector: the table-lookup GEMV (weights dominate the traffic).
            let lay = self.lay(layout, self.block_lanes(false));
            let pairs = self.cols.div_ceil(2);
            let groups = self.rows.div_ceil(crate::lutgemv::GROUP);
            let per_widen = crate::lutgemv::pairs_per_widen(self.max_abs);
            let mut ops8 = [self.ops[0]; 8];
            ops8[..self.ops.len()].copy_from_slice(&self.ops);
            run_split(
                groups,
                1,
                threads,
                |g0, g1, buf: &mut [u8]| {
                    let tables = cast_mut::<i16>(buf);
                    // SAFETY: tables exist only for Avx512 weights, built after checking the
                    // CPU; the table buffer holds table_bytes(cols); rows g0..g1 are this part's.
                    unsafe {
                        crate::lutgemv::build_tables(
                            &ops8,
                            self.cols,
                            |kk| act[kk * lay.ks],
                            tables,
                        );
                        crate::lutgemv::gemv(
                            &self.lut_pairs,
                            pairs,
                            tables,
                            per_widen,
                            self.rows,
                            g0,
                            g1,
                            acc,
                            stride,
                            0,
                        );
                    }
                },
                scratch,
                crate::lutgemv::table_bytes(self.cols),
            );
            return true;
        }
        #[cfg(target_arch = "x86_64")]
        if self.use_rowvec(np, false) && !self.gemv_masks.is_empty() {
            let lay = self.lay(layout, self.block_lanes(false));
            let nkb = self.cols.div_ceil(32);
            let terms = 32767 / (128 * self.max_abs as usize);
            let (bits, k) = (self.bits, self.cols);
            run_split(
                self.rows,
                4,
                threads,
                |r0, r1, buf: &mut [u8]| {
                    let xs = cast_mut::<i16>(buf);
                    for p in 0..np {
                        let x = &mut xs[p * nkb * 32..(p + 1) * nkb * 32];
                        for (kk, v) in x.iter_mut().enumerate() {
                            *v = if kk < k {
                                act[kk * lay.ks + p] as i16 - 128
                            } else {
                                0
                            };
                        }
                    }
                    // SAFETY: masks exist only for Avx512 weights, built after checking the CPU.
                    unsafe {
                        if bits == 2 {
                            crate::gemv512::gemv::<2>(
                                &self.gemv_masks,
                                nkb,
                                terms,
                                xs,
                                np,
                                r0,
                                r1,
                                acc,
                                stride,
                            )
                        } else {
                            crate::gemv512::gemv::<3>(
                                &self.gemv_masks,
                                nkb,
                                terms,
                                xs,
                                np,
                                r0,
                                r1,
                                acc,
                                stride,
                            )
                        }
                    }
                },
                scratch,
                np * nkb * 64,
            );
            return true;
        }
        if self.use_rowvec(np, false) {
            let lay = self.lay(layout, self.block_lanes(false));
            let w = RowW {
                ops: &self.rowvec,
                rows: self.rows,
                k: self.cols,
            };
            let (_, _, lr) = lanes(self.isa);
            let nblk = self.rows.div_ceil(lr);
            run_split(
                nblk,
                1,
                threads,
                |bb, be, _| {
                    isa_dispatch!(
                        self.isa,
                        kern::rowvec_i32::<LR>(&w, act, lay, np, bb, be, acc, stride)
                    )
                },
                scratch,
                0,
            );
            return false;
        }
        let w = self.tab();
        match self.int_mode {
            IntMode::I16 { kc } => {
                let (l16, _, _) = lanes(self.isa);
                let tbytes = kc * self.ops.len() * l16 * 2;
                let lay = self.lay(layout, l16);
                run_split(
                    np,
                    l16,
                    threads,
                    |pb, pe, buf: &mut [u8]| {
                        let tbl = cast_mut::<i16>(buf);
                        isa_dispatch!(
                            self.isa,
                            kern::table_i16::<V16T, L16, VPR16, R16>(
                                &w, kc, act, lay, pb, pe, acc, stride, tbl
                            )
                        )
                    },
                    scratch,
                    tbytes,
                );
                true
            }
            IntMode::I32 { kc } => {
                let (_, l32, _) = lanes(self.isa);
                let tbytes = kc * self.ops.len() * l32 * 4;
                let lay = self.lay(layout, l32);
                run_split(
                    np,
                    l32,
                    threads,
                    |pb, pe, buf: &mut [u8]| {
                        let tbl = cast_mut::<i32>(buf);
                        isa_dispatch!(
                            self.isa,
                            kern::table_i32::<ViT, L32, VPRF, R>(
                                &w, kc, act, lay, pb, pe, acc, stride, tbl
                            )
                        )
                    },
                    scratch,
                    tbytes,
                );
                false
            }
        }
    }

    /// Float kernel on raw pointers: `acc[o*stride + p] = Σ_k act[k*ps + p] * w[o,k]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_f32(
        &self,
        act: &[f32],
        layout: ActLayout,
        np: usize,
        acc: SyncPtr<f32>,
        stride: usize,
        threads: usize,
        scratch: &mut Scratch,
    ) {
        let threads = threads.max(1);
        if self.use_rowvec(np, true) {
            let lay = self.lay(layout, self.block_lanes(true));
            let w = RowW {
                ops: &self.rowvec,
                rows: self.rows,
                k: self.cols,
            };
            let (_, _, lr) = lanes(self.isa);
            let nblk = self.rows.div_ceil(lr);
            run_split(
                nblk,
                1,
                threads,
                |bb, be, _| {
                    isa_dispatch!(
                        self.isa,
                        kern::rowvec_f32::<LR>(&w, act, lay, np, bb, be, acc, stride)
                    )
                },
                scratch,
                0,
            );
            return;
        }
        let w = self.tab();
        let kc = self.kc_f32;
        let (_, l32, _) = lanes(self.isa);
        let tbytes = kc * self.ops.len() * l32 * 4;
        let lay = self.lay(layout, l32);
        run_split(
            np,
            l32,
            threads,
            |pb, pe, buf: &mut [u8]| {
                let tbl = cast_mut::<f32>(buf);
                isa_dispatch!(
                    self.isa,
                    kern::table_f32::<VfT, L32, VPRF, R>(
                        &w, kc, act, lay, pb, pe, acc, stride, tbl
                    )
                )
            },
            scratch,
            tbytes,
        );
    }
}

fn cast_mut<T: Copy>(buf: &mut [u8]) -> &mut [T] {
    assert!((buf.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: aligned (checked), T is a plain number type for which every bit pattern is valid.
    unsafe {
        std::slice::from_raw_parts_mut(
            buf.as_mut_ptr() as *mut T,
            buf.len() / std::mem::size_of::<T>(),
        )
    }
}

/// Splits `[0, n)` into at most `threads` ranges aligned to `align` and runs `f(begin, end,
/// scratch_bytes)` on each, the first on the calling thread, others on scoped threads.
fn run_split<F>(n: usize, align: usize, threads: usize, f: F, scratch: &mut Scratch, bytes: usize)
where
    F: Fn(usize, usize, &mut [u8]) + Sync,
{
    let units = n.div_ceil(align);
    let t = threads.min(units).max(1);
    let bufs = scratch.buffers(t, bytes);
    if t == 1 {
        f(0, n, &mut bufs[0][..bytes]);
        return;
    }
    let per = units.div_ceil(t);
    let bp = SyncPtr(bufs.as_mut_ptr());
    crate::workers::split_run(t, &|i| {
        let (pb, pe) = ((i * per * align).min(n), ((i + 1) * per * align).min(n));
        if pb < pe || i == 0 {
            // SAFETY: part i alone uses buffer i.
            let b = unsafe { &mut *bp.get().add(i) };
            f(pb, pe.max(pb), &mut b[..bytes]);
        }
    });
}

fn check_isa(w: &PreparedShift) -> Result<(), KernelError> {
    w.isa.check_supported()
}

/// `acc[r, p] = Σ_k w[r,k] * act[k, p]`, exact in `i32`: `act` is `[cols, p]` row-major `u8`,
/// `acc` is `[rows, p]`. Runs the ISA the weights were prepared for on `threads` threads.
pub fn shift_gemm_i32(
    w: &PreparedShift,
    act: &[u8],
    p: usize,
    acc: &mut [i32],
    threads: usize,
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    check_isa(w)?;
    check_len(
        "shift_gemm_i32 activations",
        act.len(),
        mul_dims(&[w.cols, p])?,
    )?;
    check_len(
        "shift_gemm_i32 accumulators",
        acc.len(),
        mul_dims(&[w.rows, p])?,
    )?;
    if !w.int_path_fits() {
        return Err(KernelError::invalid(format!(
            "integer path could overflow i32: {} columns of weights up to {} (use the float path)",
            w.cols, w.max_abs
        )));
    }
    if p == 0 {
        return Ok(());
    }
    let centred = w.run_i32(
        act,
        ActLayout::RowMajor { ps: p },
        p,
        SyncPtr(acc.as_mut_ptr()),
        p,
        threads,
        scratch,
    );
    if centred {
        for (o, row) in acc.chunks_exact_mut(p).enumerate() {
            let c = (128 * w.row_sums[o]) as i32;
            row.iter_mut().for_each(|v| *v = v.wrapping_add(c));
        }
    }
    Ok(())
}

/// Float path: `out[r, p] = Σ_k act[k, p] * w[r,k]` in `f32`, ascending `k` from `+0.0`, each
/// product exact (formed on the exponent field). Bit-identical on every ISA.
pub fn shift_gemm_f32(
    w: &PreparedShift,
    act: &[f32],
    p: usize,
    out: &mut [f32],
    threads: usize,
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    check_isa(w)?;
    check_len(
        "shift_gemm_f32 activations",
        act.len(),
        mul_dims(&[w.cols, p])?,
    )?;
    check_len("shift_gemm_f32 output", out.len(), mul_dims(&[w.rows, p])?)?;
    if p == 0 {
        return Ok(());
    }
    w.run_f32(
        act,
        ActLayout::RowMajor { ps: p },
        p,
        SyncPtr(out.as_mut_ptr()),
        p,
        threads,
        scratch,
    );
    Ok(())
}

/// Activations `[K, P]` repacked into the pixel-blocked layout the kernels of one
/// `PreparedShift` read (what the layers build directly from im2col).
pub struct BlockedActivations<T> {
    data: Vec<T>,
    p: usize,
    k: usize,
    l: usize,
}

impl PreparedShift {
    fn block<T: Copy + Default>(
        &self,
        act: &[T],
        p: usize,
        float: bool,
    ) -> Result<BlockedActivations<T>, KernelError> {
        check_len("activations", act.len(), mul_dims(&[self.cols, p])?)?;
        let l = self.block_lanes(float);
        let mut data = vec![T::default(); mul_dims(&[p.div_ceil(l), self.cols, l])?];
        let mut rb = vec![T::default(); p];
        crate::ops::build_blocked(
            self.cols,
            self.cols,
            p,
            l,
            |k, r| r.copy_from_slice(&act[k * p..(k + 1) * p]),
            &mut rb,
            &mut data,
        );
        Ok(BlockedActivations {
            data,
            p,
            k: self.cols,
            l,
        })
    }
    /// Repacks `u8` activations `[cols, p]` for `shift_gemm_i32_blocked`.
    pub fn block_u8(&self, act: &[u8], p: usize) -> Result<BlockedActivations<u8>, KernelError> {
        self.block(act, p, false)
    }
    /// Repacks `f32` activations `[cols, p]` for `shift_gemm_f32_blocked`.
    pub fn block_f32(&self, act: &[f32], p: usize) -> Result<BlockedActivations<f32>, KernelError> {
        self.block(act, p, true)
    }
}

/// `shift_gemm_i32` on pre-blocked activations (`acc` `[rows, p]`).
pub fn shift_gemm_i32_blocked(
    w: &PreparedShift,
    act: &BlockedActivations<u8>,
    acc: &mut [i32],
    threads: usize,
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    check_isa(w)?;
    if act.k != w.cols || act.l != w.block_lanes(false) {
        return Err(KernelError::shape(
            "blocked activations were built for other weights",
        ));
    }
    let p = act.p;
    check_len(
        "shift_gemm_i32 accumulators",
        acc.len(),
        mul_dims(&[w.rows, p])?,
    )?;
    if !w.int_path_fits() {
        return Err(KernelError::invalid(
            "integer path could overflow i32 (use the float path)",
        ));
    }
    let centred = w.run_i32(
        &act.data,
        ActLayout::Blocked,
        p,
        SyncPtr(acc.as_mut_ptr()),
        p,
        threads,
        scratch,
    );
    if centred {
        for (o, row) in acc.chunks_exact_mut(p).enumerate() {
            let c = (128 * w.row_sums[o]) as i32;
            row.iter_mut().for_each(|v| *v = v.wrapping_add(c));
        }
    }
    Ok(())
}

/// `shift_gemm_f32` on pre-blocked activations (`out` `[rows, p]`).
pub fn shift_gemm_f32_blocked(
    w: &PreparedShift,
    act: &BlockedActivations<f32>,
    out: &mut [f32],
    threads: usize,
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    check_isa(w)?;
    if act.k != w.cols || act.l != w.block_lanes(true) {
        return Err(KernelError::shape(
            "blocked activations were built for other weights",
        ));
    }
    check_len(
        "shift_gemm_f32 output",
        out.len(),
        mul_dims(&[w.rows, act.p])?,
    )?;
    w.run_f32(
        &act.data,
        ActLayout::Blocked,
        act.p,
        SyncPtr(out.as_mut_ptr()),
        act.p,
        threads,
        scratch,
    );
    Ok(())
}
