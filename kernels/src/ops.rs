//! Data movement and element-wise helpers shared by the layers: quantization, layout changes,
//! im2col and the fused epilogue. Hot loops are multiversioned (runtime-selected by the
//! `multiversion` crate); they contain no FMA-contractible code, so every target gives the same
//! bits.

use multiversion::multiversion;

/// Static 8-bit quantization parameters: `q = clamp(round_half_even(x / scale) + zero_point,
/// 0, 255)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    pub scale: f32,
    pub zero_point: i32,
}

impl Quant {
    /// Validates: scale finite and > 0, zero point in 0..=255.
    pub fn new(scale: f32, zero_point: i32) -> Result<Quant, crate::KernelError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(crate::KernelError::invalid(format!(
                "quantization scale must be finite and positive, got {scale}"
            )));
        }
        if !(0..=255).contains(&zero_point) {
            return Err(crate::KernelError::invalid(format!(
                "quantization zero point must be in 0..=255, got {zero_point}"
            )));
        }
        Ok(Quant { scale, zero_point })
    }

    /// Quantizes one value (NaN maps to the zero point).
    #[inline(always)]
    pub fn quantize(self, x: f32) -> u8 {
        let r = (x / self.scale).round_ties_even();
        let v = if r.is_nan() {
            0
        } else {
            r.clamp(-512.0, 512.0) as i32
        };
        (v + self.zero_point).clamp(0, 255) as u8
    }
}

/// Quantizes `x` into `out` (same length).
pub fn quantize_u8(x: &[f32], q: Quant, out: &mut [u8]) -> Result<(), crate::KernelError> {
    crate::error::check_len("quantize_u8 output", out.len(), x.len())?;
    quantize_slice(x, q.scale, q.zero_point, out);
    Ok(())
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn quantize_slice(x: &[f32], scale: f32, zp: i32, out: &mut [u8]) {
    let q = Quant {
        scale,
        zero_point: zp,
    };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = q.quantize(v);
    }
}

/// `[N][C][HW]` -> `[C][N][HW]` (the kernels' pixel axis is `N*HW`).
pub(crate) fn to_cnhw<T: Copy>(x: &[T], n: usize, c: usize, hw: usize, out: &mut [T]) {
    for b in 0..n {
        for ch in 0..c {
            let src = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
            out[(ch * n + b) * hw..(ch * n + b + 1) * hw].copy_from_slice(src);
        }
    }
}

/// Quantizing variant of `to_cnhw`.
pub(crate) fn quantize_cnhw(x: &[f32], n: usize, c: usize, hw: usize, q: Quant, out: &mut [u8]) {
    for b in 0..n {
        for ch in 0..c {
            let src = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
            quantize_slice(
                src,
                q.scale,
                q.zero_point,
                &mut out[(ch * n + b) * hw..(ch * n + b + 1) * hw],
            );
        }
    }
}

/// Geometry needed by im2col.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ColGeom {
    pub c: usize,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

/// im2col from `[C][N][H][W]` into `[C*kh*kw][N*OH*OW]`, row `(c*kh + y)*kw + x`, padding `pad`.
pub(crate) fn im2col<T: Copy>(x: &[T], g: ColGeom, pad: T, out: &mut [T]) {
    let p = g.n * g.oh * g.ow;
    for row in 0..g.c * g.kh * g.kw {
        im2col_row(x, g, pad, row, &mut out[row * p..(row + 1) * p]);
    }
}

/// One row of `im2col` (length `N*OH*OW`).
pub(crate) fn im2col_row<T: Copy>(x: &[T], g: ColGeom, pad: T, row: usize, dst: &mut [T]) {
    let xk = row % g.kw;
    let y = (row / g.kw) % g.kh;
    let c = row / (g.kw * g.kh);
    for b in 0..g.n {
        let img = &x[(c * g.n + b) * g.h * g.w..(c * g.n + b + 1) * g.h * g.w];
        for oy in 0..g.oh {
            let d = &mut dst[(b * g.oh + oy) * g.ow..(b * g.oh + oy + 1) * g.ow];
            let iy = (oy * g.sh + y) as isize - g.ph as isize;
            if iy < 0 || iy >= g.h as isize {
                d.fill(pad);
                continue;
            }
            let src = &img[iy as usize * g.w..(iy as usize + 1) * g.w];
            // Output columns whose input column is inside the row.
            let lo = (g.pw.saturating_sub(xk)).div_ceil(g.sw).min(g.ow);
            let hi = if g.w + g.pw > xk {
                ((g.w + g.pw - xk - 1) / g.sw + 1).min(g.ow)
            } else {
                0
            }
            .max(lo);
            d[..lo].fill(pad);
            d[hi..].fill(pad);
            if hi == lo {
                // No output column of this tap reads inside the row (padding wider than the
                // input): all padding.
            } else if g.sw == 1 {
                let s0 = lo + xk - g.pw;
                d[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
            } else {
                for (ox, v) in d[lo..hi].iter_mut().enumerate() {
                    *v = src[(ox + lo) * g.sw + xk - g.pw];
                }
            }
        }
    }
}

/// Builds the pixel-blocked activation matrix of a grouped layer: for group `g`, block `b`
/// (of `l` pixels) and column `kk < kg`, the `l` values start at `((g * nblk + b) * kg + kk) * l`.
/// Row `k` of the logical `[K, P]` matrix comes from `row(k, buf)` (or straight from `src` rows
/// when `direct`).
pub(crate) fn build_blocked<T: Copy>(
    kt: usize,
    kg: usize,
    p: usize,
    l: usize,
    mut row: impl FnMut(usize, &mut [T]),
    rowbuf: &mut [T],
    out: &mut [T],
) {
    let nblk = p.div_ceil(l);
    for k in 0..kt {
        let (g, kk) = (k / kg, k % kg);
        row(k, rowbuf);
        for b in 0..nblk {
            let len = l.min(p - b * l);
            let o = ((g * nblk + b) * kg + kk) * l;
            out[o..o + len].copy_from_slice(&rowbuf[b * l..b * l + len]);
        }
    }
}

/// Where a layer writes its result.
pub enum Output<'a> {
    /// `f32`, NCHW.
    F32(&'a mut [f32]),
    /// Requantized to `u8` with `quant` (the next layer's input quantization), NCHW.
    U8 { out: &'a mut [u8], quant: Quant },
}

impl Output<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Output::F32(o) => o.len(),
            Output::U8 { out, .. } => out.len(),
        }
    }
}

/// Per-row affine epilogue over `acc[o][n*hw + p]` (row stride `n*hw`), writing
/// `out[(b*rows + o)*hw + p]`: `y = f32(acc + corr[o]) * mul[o] + add[o]`, `+ residual`, ReLU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn epilogue_i32(
    acc: &[i32],
    rows: usize,
    n: usize,
    hw: usize,
    corr: &[i32],
    mul: &[f32],
    add: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut Output<'_>,
) {
    per_row_chunks(acc, rows, n, hw, residual, out, |o, chunk, res, t| {
        affine_i32(chunk, corr[o], mul[o], add[o], res, relu, t)
    });
}

/// Float-path version of `epilogue_i32`: `y = acc * mul[o] + add[o]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn epilogue_f32(
    acc: &[f32],
    rows: usize,
    n: usize,
    hw: usize,
    mul: &[f32],
    add: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut Output<'_>,
) {
    per_row_chunks(acc, rows, n, hw, residual, out, |o, chunk, res, t| {
        affine_f32(chunk, mul[o], add[o], res, relu, t)
    });
}

/// The loop both epilogues share: for every row `o` and sample `b`, hands `affine` chunks of
/// at most 256 accumulators with the matching residual slice and a scratch output, then stores
/// the scratch into `out` (as f32, or requantized to u8).
fn per_row_chunks<T>(
    acc: &[T],
    rows: usize,
    n: usize,
    hw: usize,
    residual: Option<&[f32]>,
    out: &mut Output<'_>,
    mut affine: impl FnMut(usize, &[T], Option<&[f32]>, &mut [f32]),
) {
    let mut tmp = [0f32; 256];
    for o in 0..rows {
        for b in 0..n {
            let src = &acc[o * n * hw + b * hw..o * n * hw + (b + 1) * hw];
            let base = (b * rows + o) * hw;
            for (ci, chunk) in src.chunks(256).enumerate() {
                let t = &mut tmp[..chunk.len()];
                let off = base + ci * 256;
                let res = residual.map(|r| &r[off..off + chunk.len()]);
                affine(o, chunk, res, t);
                store(t, off, out);
            }
        }
    }
}

fn store(t: &[f32], off: usize, out: &mut Output<'_>) {
    match out {
        Output::F32(o) => o[off..off + t.len()].copy_from_slice(t),
        Output::U8 { out, quant } => quantize_slice(
            t,
            quant.scale,
            quant.zero_point,
            &mut out[off..off + t.len()],
        ),
    }
}

#[inline(always)]
pub(crate) fn relu1(y: f32) -> f32 {
    if y < 0.0 {
        0.0
    } else {
        y
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
fn affine_i32(
    src: &[i32],
    corr: i32,
    mul: f32,
    add: f32,
    res: Option<&[f32]>,
    relu: bool,
    t: &mut [f32],
) {
    for (d, &a) in t.iter_mut().zip(src) {
        *d = (a.wrapping_add(corr)) as f32 * mul + add;
    }
    finish(res, relu, t);
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
fn affine_f32(src: &[f32], mul: f32, add: f32, res: Option<&[f32]>, relu: bool, t: &mut [f32]) {
    for (d, &a) in t.iter_mut().zip(src) {
        *d = a * mul + add;
    }
    finish(res, relu, t);
}

#[inline(always)]
fn finish(res: Option<&[f32]>, relu: bool, t: &mut [f32]) {
    if let Some(r) = res {
        for (d, &v) in t.iter_mut().zip(r) {
            *d += v;
        }
    }
    if relu {
        for d in t.iter_mut() {
            *d = relu1(*d);
        }
    }
}

/// `y = x + b` per row of `[rows][n]`, residual, ReLU (fp32 layers' epilogue, in place).
pub(crate) fn bias_rows(
    y: &mut [f32],
    cols: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
) {
    for (o, row) in y.chunks_exact_mut(cols).enumerate() {
        let res = residual.map(|r| &r[o * cols..(o + 1) * cols]);
        bias_row(row, bias[o], res, relu);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
fn bias_row(row: &mut [f32], b: f32, res: Option<&[f32]>, relu: bool) {
    for v in row.iter_mut() {
        *v += b;
    }
    finish(res, relu, row);
}
