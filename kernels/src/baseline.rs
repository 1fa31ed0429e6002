//! The int8 dot-product baseline the benchmark compares against: the same power-of-two weights
//! decoded to `i8` and multiplied with `u8` activations by the CPU's best int8 dot-product
//! instruction (AVX-512 VNNI `vpdpbusd` here; a plain scalar loop elsewhere). Not used by the
//! layers; it exists to measure what multiplication-free kernels are up against.

use crate::error::{check_len, mul_dims, KernelError};
use crate::packed::PackedShift;

/// Activations in the layout of the int8 GEMM kernel.
pub struct PackedAct {
    data: Vec<u8>,
    p: usize,
    pp: usize,
    act: Vec<u8>,
}

/// Weights decoded to `i8` in the layouts the VNNI kernels want.
pub struct Int8Weights {
    rows: usize,
    cols: usize,
    /// `cols` rounded up to a multiple of 4.
    k4: usize,
    /// Row-major `[rows][k4]` (zero padded), for the GEMM kernel (weights broadcast).
    rowmajor: Vec<i8>,
    /// `[ceil(rows/16)][k4/4][16][4]`, for the GEMV kernel (weights in lanes).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    blocked: Vec<i8>,
    vnni: bool,
}

impl Int8Weights {
    /// Decodes; every weight must fit `i8` (W2/W3, with-zero up to 4 bits).
    pub fn new(w: &PackedShift) -> Result<Self, KernelError> {
        let vals = w.values();
        if vals.iter().any(|v| !(-128..=127).contains(v)) {
            return Err(KernelError::invalid("int8 baseline: weights do not fit i8"));
        }
        let (rows, cols) = (w.rows(), w.cols());
        let k4 = cols.div_ceil(4) * 4;
        let mut rowmajor = vec![0i8; rows * k4];
        let nb = rows.div_ceil(16);
        let mut blocked = vec![0i8; nb * k4 * 16];
        for r in 0..rows {
            for c in 0..cols {
                let v = vals[r * cols + c] as i8;
                rowmajor[r * k4 + c] = v;
                blocked[((r / 16) * (k4 / 4) + c / 4) * 64 + (r % 16) * 4 + c % 4] = v;
            }
        }
        Ok(Int8Weights {
            rows,
            cols,
            k4,
            rowmajor,
            blocked,
            vnni: crate::isa::has_avx512_vnni(),
        })
    }

    /// Whether the VNNI kernels are used (else the scalar loop).
    pub fn uses_vnni(&self) -> bool {
        self.vnni
    }

    /// Activations `[cols, p]` repacked for the GEMM kernel (groups of 4 `k` per pixel).
    pub fn pack_activations(&self, act: &[u8], p: usize) -> Result<PackedAct, KernelError> {
        check_len(
            "int8 gemm activations",
            act.len(),
            mul_dims(&[self.cols, p])?,
        )?;
        let pp = p.div_ceil(64) * 64;
        let mut data = vec![0u8; self.k4 * pp];
        for k in 0..self.cols {
            let src = &act[k * p..(k + 1) * p];
            let base = (k / 4) * pp * 4 + k % 4;
            for (j, &v) in src.iter().enumerate() {
                data[base + j * 4] = v;
            }
        }
        Ok(PackedAct {
            data,
            p,
            pp,
            act: act.to_vec(),
        })
    }

    /// `acc[r, p] = Σ_k w[r,k] * act[k, p]`.
    pub fn gemm_i32_packed(
        &self,
        a: &PackedAct,
        p: usize,
        acc: &mut [i32],
    ) -> Result<(), KernelError> {
        check_len(
            "int8 gemm accumulators",
            acc.len(),
            mul_dims(&[self.rows, p])?,
        )?;
        if a.p != p || a.data.len() != self.k4 * a.pp {
            return Err(KernelError::shape(
                "int8 gemm: packed activations of another shape",
            ));
        }
        #[cfg(target_arch = "x86_64")]
        if self.vnni {
            // SAFETY: VNNI support checked at construction; buffers sized by pack_activations.
            unsafe { vnni::gemm(self, &a.data, a.pp, p, acc) };
            return Ok(());
        }
        let act = &a.act;
        for r in 0..self.rows {
            let row = &mut acc[r * p..(r + 1) * p];
            row.fill(0);
            for k in 0..self.cols {
                let w = self.rowmajor[r * self.k4 + k] as i32;
                for (s, &x) in row.iter_mut().zip(&act[k * p..(k + 1) * p]) {
                    *s += w * x as i32;
                }
            }
        }
        Ok(())
    }

    /// GEMV: `y[r] = Σ_k w[r,k] * x[k]`.
    pub fn gemv_i32(&self, x: &[u8], y: &mut [i32]) -> Result<(), KernelError> {
        check_len("int8 gemv input", x.len(), self.cols)?;
        check_len("int8 gemv output", y.len(), self.rows)?;
        #[cfg(target_arch = "x86_64")]
        if self.vnni {
            // SAFETY: VNNI support checked at construction.
            unsafe { vnni::gemv(self, x, y) };
            return Ok(());
        }
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = (0..self.cols)
                .map(|k| self.rowmajor[r * self.k4 + k] as i32 * x[k] as i32)
                .sum();
        }
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::Int8Weights;
    use std::arch::x86_64::*;

    /// `packed` is `[k4/4][pp][4]` u8, `pp` a multiple of 64.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemm(
        w: &Int8Weights,
        packed: &[u8],
        pp: usize,
        p: usize,
        acc: &mut [i32],
    ) {
        let kq = w.k4 / 4;
        let mut tmp = [0i32; 64];
        let mut pb = 0;
        while pb < p {
            let pn = 64.min(p - pb);
            let mut o = 0;
            while o < w.rows {
                let rn = 4.min(w.rows - o);
                let mut a = [[_mm512_setzero_si512(); 4]; 4];
                for kq_i in 0..kq {
                    let ap = packed.as_ptr().add((kq_i * pp + pb) * 4);
                    let x0 = _mm512_loadu_si512(ap as *const _);
                    let x1 = _mm512_loadu_si512(ap.add(64) as *const _);
                    let x2 = _mm512_loadu_si512(ap.add(128) as *const _);
                    let x3 = _mm512_loadu_si512(ap.add(192) as *const _);
                    for r in 0..4 {
                        let rr = (o + r).min(w.rows - 1);
                        let wv = (w.rowmajor.as_ptr().add(rr * w.k4 + kq_i * 4) as *const i32)
                            .read_unaligned();
                        let b = _mm512_set1_epi32(wv);
                        a[r][0] = _mm512_dpbusd_epi32(a[r][0], x0, b);
                        a[r][1] = _mm512_dpbusd_epi32(a[r][1], x1, b);
                        a[r][2] = _mm512_dpbusd_epi32(a[r][2], x2, b);
                        a[r][3] = _mm512_dpbusd_epi32(a[r][3], x3, b);
                    }
                }
                for (r, ar) in a.iter().enumerate().take(rn) {
                    for (v, &reg) in ar.iter().enumerate() {
                        _mm512_storeu_si512(tmp.as_mut_ptr().add(v * 16) as *mut _, reg);
                    }
                    acc[(o + r) * p + pb..(o + r) * p + pb + pn].copy_from_slice(&tmp[..pn]);
                }
                o += 4;
            }
            pb += 64;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemv(w: &Int8Weights, x: &[u8], y: &mut [i32]) {
        let kq = w.k4 / 4;
        let mut xp = vec![0u8; w.k4];
        xp[..w.cols].copy_from_slice(x);
        let nb = w.rows.div_ceil(16);
        let mut tmp = [0i32; 16];
        let mut b = 0;
        while b < nb {
            let bn = 4.min(nb - b);
            let mut a = [_mm512_setzero_si512(); 4];
            for kq_i in 0..kq {
                let xv =
                    _mm512_set1_epi32((xp.as_ptr().add(kq_i * 4) as *const i32).read_unaligned());
                for (j, aj) in a.iter_mut().enumerate().take(bn) {
                    let wp = w.blocked.as_ptr().add(((b + j) * kq + kq_i) * 64);
                    *aj = _mm512_dpbusd_epi32(*aj, xv, _mm512_loadu_si512(wp as *const _));
                }
            }
            for (j, &aj) in a.iter().enumerate().take(bn) {
                _mm512_storeu_si512(tmp.as_mut_ptr() as *mut _, aj);
                let r0 = (b + j) * 16;
                let n = 16.min(w.rows - r0);
                y[r0..r0 + n].copy_from_slice(&tmp[..n]);
            }
            b += bn;
        }
    }
}
