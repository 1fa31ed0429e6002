//! LSTM over the frame axis, batched across samples: the input projection of all frames of all
//! samples is one matrix product (dense `gemm` or the MPS contraction), then each step does one
//! recurrent product for the whole batch. Values are laid out feature-major, `[features, cols]`,
//! so every product is a plain row-major GEMM with the weights as the left operand.
//!
//! MPS (`lstm_tt`): `W[j, i]` with `i = (i_1..i_d)`, `j = (j_1..j_d)` (first mode most
//! significant) is `G_1[i_1] .. G_d[i_d] G_{d+1}[j_1] .. G_{2d}[j_d]`. `x` is contracted with
//! `G_1..G_d` (each step one GEMM over `(r_{k-1}, n_k)`), leaving `r_d` numbers per column, then
//! expanded through `G_{d+1}..G_{2d}` (each step one GEMM producing `(r_{d+k}, m_k)`). The
//! matrix is never formed.

use kernels::{gemm_f32, KernelError};

/// An MPS matrix with its cores permuted for GEMM.
pub struct TtMatrix {
    rows: usize,
    cols: usize,
    in_modes: Vec<usize>,
    out_modes: Vec<usize>,
    ranks: Vec<usize>,
    /// `A_k [r_k, r_{k-1} * n_k]` for the input cores.
    contract: Vec<Vec<f32>>,
    /// `E_k [r_{d+k} * m_k, r_{d+k-1}]` for the output cores.
    expand: Vec<Vec<f32>>,
    /// Row of the result for each position of the expansion output.
    perm: Vec<usize>,
    /// Largest intermediate per column.
    max_inter: usize,
}

impl TtMatrix {
    /// `ranks` is the full list `r_0..r_{2d}`; `cores[k]` is `[r_k, mode_k, r_{k+1}]` row-major.
    pub fn new(
        in_modes: &[usize],
        out_modes: &[usize],
        ranks: &[usize],
        cores: &[Vec<f32>],
    ) -> TtMatrix {
        let d = in_modes.len();
        let rows: usize = out_modes.iter().product();
        let cols: usize = in_modes.iter().product();
        let mut contract = Vec::with_capacity(d);
        let mut max_inter = cols.max(rows);
        for k in 0..d {
            let (rp, n, rn) = (ranks[k], in_modes[k], ranks[k + 1]);
            let g = &cores[k];
            let mut a = vec![0f32; rn * rp * n];
            for r0 in 0..rp {
                for i in 0..n {
                    for r1 in 0..rn {
                        a[r1 * (rp * n) + r0 * n + i] = g[(r0 * n + i) * rn + r1];
                    }
                }
            }
            contract.push(a);
            let rest: usize = in_modes[k + 1..].iter().product();
            max_inter = max_inter.max(rn * rest);
        }
        let mut expand = Vec::with_capacity(d);
        let mut j_prod = 1usize;
        for k in 0..d {
            let (rp, m, rn) = (ranks[d + k], out_modes[k], ranks[d + k + 1]);
            let g = &cores[d + k];
            let mut e = vec![0f32; rn * m * rp];
            for r0 in 0..rp {
                for jm in 0..m {
                    for r1 in 0..rn {
                        e[(r1 * m + jm) * rp + r0] = g[(r0 * m + jm) * rn + r1];
                    }
                }
            }
            expand.push(e);
            j_prod *= m;
            max_inter = max_inter.max(rn * j_prod);
        }
        // Expansion output position: mixed radix (j_d, .., j_1), j_d most significant.
        // Row: mixed radix (j_1, .., j_d), j_1 most significant.
        let mut perm = vec![0usize; rows];
        for (pos, p) in perm.iter_mut().enumerate() {
            let mut rem = pos;
            let mut digits = vec![0usize; d];
            // least significant digit of pos is j_1
            for (k, digit) in digits.iter_mut().enumerate() {
                *digit = rem % out_modes[k];
                rem /= out_modes[k];
            }
            let mut row = 0usize;
            for k in 0..d {
                row = row * out_modes[k] + digits[k];
            }
            *p = row;
        }
        TtMatrix {
            rows,
            cols,
            in_modes: in_modes.to_vec(),
            out_modes: out_modes.to_vec(),
            ranks: ranks.to_vec(),
            contract,
            expand,
            perm,
            max_inter,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Scratch elements per column needed by [`TtMatrix::apply`] (each of two buffers).
    pub fn scratch_per_col(&self) -> usize {
        self.max_inter
    }

    /// `y [rows, ncol] = W x`, `x [cols, ncol]`; `a`, `b` are scratch of at least
    /// `scratch_per_col() * ncol` elements.
    pub fn apply(
        &self,
        x: &[f32],
        ncol: usize,
        y: &mut [f32],
        a: &mut [f32],
        b: &mut [f32],
        threads: usize,
    ) -> Result<(), KernelError> {
        let d = self.in_modes.len();
        // where the current intermediate lives: 0 = x, 1 = a, 2 = b
        let mut loc = 0u8;
        let mut per_col = self.cols;
        let mut gemm_step = |m: usize,
                             kk: usize,
                             w: &[f32],
                             loc: &mut u8,
                             per_col: &mut usize|
         -> Result<(), KernelError> {
            let n = (*per_col / kk) * ncol;
            let (src, dst): (&[f32], &mut [f32]) = match *loc {
                0 => (&x[..kk * n], &mut a[..m * n]),
                1 => (&a[..kk * n], &mut b[..m * n]),
                _ => (&b[..kk * n], &mut a[..m * n]),
            };
            gemm_f32(m, n, kk, w, src, dst, false, threads)?;
            *loc = if *loc == 1 { 2 } else { 1 };
            *per_col = m * (*per_col / kk);
            Ok(())
        };
        for k in 0..d {
            let (rp, n, rn) = (self.ranks[k], self.in_modes[k], self.ranks[k + 1]);
            gemm_step(rn, rp * n, &self.contract[k], &mut loc, &mut per_col)?;
        }
        for k in 0..d {
            let (rp, m, rn) = (self.ranks[d + k], self.out_modes[k], self.ranks[d + k + 1]);
            gemm_step(rn * m, rp, &self.expand[k], &mut loc, &mut per_col)?;
        }
        let res: &[f32] = if loc == 1 { a } else { b };
        for (pos, &row) in self.perm.iter().enumerate() {
            y[row * ncol..(row + 1) * ncol].copy_from_slice(&res[pos * ncol..(pos + 1) * ncol]);
        }
        Ok(())
    }
}

/// A gate projection: dense `[4H, in]` weights or an MPS.
pub enum Projection {
    Dense(Vec<f32>),
    Tt(TtMatrix),
}

impl Projection {
    fn scratch_per_col(&self) -> usize {
        match self {
            Projection::Dense(_) => 0,
            Projection::Tt(t) => t.scratch_per_col(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        rows: usize,
        cols: usize,
        x: &[f32],
        ncol: usize,
        y: &mut [f32],
        s: &mut TtScratch,
        threads: usize,
    ) -> Result<(), KernelError> {
        match self {
            Projection::Dense(w) => gemm_f32(
                rows,
                ncol,
                cols,
                w,
                &x[..cols * ncol],
                &mut y[..rows * ncol],
                false,
                threads,
            ),
            Projection::Tt(t) => {
                let need = t.scratch_per_col() * ncol;
                t.apply(x, ncol, y, &mut s.a[..need], &mut s.b[..need], threads)
            }
        }
    }
}

#[derive(Default)]
struct TtScratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// Session-owned LSTM buffers (sized once for the largest LSTM and batch).
#[derive(Default)]
pub struct LstmScratch {
    x: Vec<f32>,
    gx: Vec<f32>,
    g: Vec<f32>,
    h: Vec<f32>,
    c: Vec<f64>,
    acc: Vec<f64>,
    tt: TtScratch,
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// One LSTM layer (gates `i, f, g, o`, `h0 = c0 = 0`).
pub struct LstmCell {
    input: usize,
    hidden: usize,
    frames: usize,
    mean: bool,
    ih: Projection,
    hh: Projection,
    bias: Vec<f32>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl LstmCell {
    pub fn new(
        input: usize,
        hidden: usize,
        frames: usize,
        mean: bool,
        ih: Projection,
        hh: Projection,
        bias: Vec<f32>,
    ) -> LstmCell {
        LstmCell {
            input,
            hidden,
            frames,
            mean,
            ih,
            hh,
            bias,
        }
    }

    /// Grows `s` so a batch of `n` runs without allocating.
    pub fn reserve(&self, s: &mut LstmScratch, n: usize) {
        let cols = self.frames * n;
        let g = 4 * self.hidden;
        grow(&mut s.x, self.input * cols);
        grow(&mut s.gx, g * cols);
        grow(&mut s.g, g * n);
        grow(&mut s.h, self.hidden * n);
        grow(&mut s.c, self.hidden * n);
        grow(&mut s.acc, self.hidden * n);
        let tt = (self.ih.scratch_per_col() * cols).max(self.hh.scratch_per_col() * n);
        grow(&mut s.tt.a, tt);
        grow(&mut s.tt.b, tt);
    }

    /// `x [n, 1, F, T]` -> `out [n, H]`.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        s: &mut LstmScratch,
        threads: usize,
    ) -> Result<(), KernelError> {
        self.reserve(s, n);
        let (f, t_len, hd) = (self.input, self.frames, self.hidden);
        let g4 = 4 * hd;
        let cols = t_len * n;
        // X[f, t*n + b] = x[b, f, t]
        let xs = &mut s.x[..f * cols];
        for b in 0..n {
            let sample = &x[b * f * t_len..(b + 1) * f * t_len];
            for fi in 0..f {
                let row = &sample[fi * t_len..(fi + 1) * t_len];
                for (t, &v) in row.iter().enumerate() {
                    xs[fi * cols + t * n + b] = v;
                }
            }
        }
        self.ih.apply(
            g4,
            f,
            &s.x[..f * cols],
            cols,
            &mut s.gx[..g4 * cols],
            &mut s.tt,
            threads,
        )?;
        s.h[..hd * n].fill(0.0);
        s.c[..hd * n].fill(0.0);
        s.acc[..hd * n].fill(0.0);
        for t in 0..t_len {
            if t == 0 {
                s.g[..g4 * n].fill(0.0);
            } else {
                self.hh.apply(
                    g4,
                    hd,
                    &s.h[..hd * n],
                    n,
                    &mut s.g[..g4 * n],
                    &mut s.tt,
                    threads,
                )?;
            }
            let gx = &s.gx[..g4 * cols];
            for j in 0..hd {
                for b in 0..n {
                    let pre = |gate: usize| -> f64 {
                        let r = gate * hd + j;
                        s.g[r * n + b] as f64
                            + gx[r * cols + t * n + b] as f64
                            + self.bias[r] as f64
                    };
                    let (i, fg, gg, o) = (
                        sigmoid(pre(0)),
                        sigmoid(pre(1)),
                        pre(2).tanh(),
                        sigmoid(pre(3)),
                    );
                    let c = fg * s.c[j * n + b] + i * gg;
                    let h = o * c.tanh();
                    s.c[j * n + b] = c;
                    s.h[j * n + b] = h as f32;
                    s.acc[j * n + b] += h;
                }
            }
        }
        for b in 0..n {
            for j in 0..hd {
                out[b * hd + j] = if self.mean {
                    (s.acc[j * n + b] / t_len as f64) as f32
                } else {
                    s.h[j * n + b]
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense matrix of an MPS, by the definition (test only).
    fn densify(
        in_modes: &[usize],
        out_modes: &[usize],
        ranks: &[usize],
        cores: &[Vec<f32>],
    ) -> Vec<f64> {
        let d = in_modes.len();
        let rows: usize = out_modes.iter().product();
        let cols: usize = in_modes.iter().product();
        let mut w = vec![0f64; rows * cols];
        for row in 0..rows {
            for col in 0..cols {
                // digits, first most significant
                let mut id = vec![0; d];
                let mut jd = vec![0; d];
                let (mut c, mut r) = (col, row);
                for k in (0..d).rev() {
                    id[k] = c % in_modes[k];
                    c /= in_modes[k];
                    jd[k] = r % out_modes[k];
                    r /= out_modes[k];
                }
                let mut v = vec![1f64];
                for k in 0..2 * d {
                    let (rp, m, rn) = (
                        ranks[k],
                        if k < d { in_modes[k] } else { out_modes[k - d] },
                        ranks[k + 1],
                    );
                    let idx = if k < d { id[k] } else { jd[k - d] };
                    let mut nv = vec![0f64; rn];
                    for a in 0..rp {
                        for bb in 0..rn {
                            nv[bb] += v[a] * cores[k][(a * m + idx) * rn + bb] as f64;
                        }
                    }
                    v = nv;
                }
                w[row * cols + col] = v[0];
            }
        }
        w
    }

    #[test]
    fn tt_apply_equals_the_dense_matrix_product() {
        let in_modes = [2, 3, 2];
        let out_modes = [4, 2, 3];
        let ranks = [1, 2, 3, 2, 3, 2, 1];
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let modes: Vec<usize> = in_modes.iter().chain(out_modes.iter()).copied().collect();
        let cores: Vec<Vec<f32>> = (0..6)
            .map(|k| {
                (0..ranks[k] * modes[k] * ranks[k + 1])
                    .map(|_| rnd())
                    .collect()
            })
            .collect();
        let tt = TtMatrix::new(&in_modes, &out_modes, &ranks, &cores);
        let dense = densify(&in_modes, &out_modes, &ranks, &cores);
        let (rows, cols, ncol) = (24, 12, 3);
        let x: Vec<f32> = (0..cols * ncol).map(|_| rnd()).collect();
        let mut y = vec![0f32; rows * ncol];
        let mut a = vec![0f32; tt.scratch_per_col() * ncol];
        let mut b = a.clone();
        tt.apply(&x, ncol, &mut y, &mut a, &mut b, 1).unwrap();
        for r in 0..rows {
            for c in 0..ncol {
                let want: f64 = (0..cols)
                    .map(|k| dense[r * cols + k] * x[k * ncol + c] as f64)
                    .sum();
                assert!(
                    (y[r * ncol + c] as f64 - want).abs() < 1e-5,
                    "row {r} col {c}: {} vs {want}",
                    y[r * ncol + c]
                );
            }
        }
    }
}
