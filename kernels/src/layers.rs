//! Shift layers: `ShiftConv2d` and `ShiftLinear` with both numeric paths and the fused epilogue.

use crate::error::{check_len, mul_dims, KernelError};
use crate::isa::Isa;
use crate::kern::SyncPtr;
use crate::ops::{self, ColGeom, Output, Quant};
use crate::packed::PackedShift;
use crate::prepared::{ActLayout, PreparedShift};
use crate::workspace::{sized, Workspace};

/// Convolution geometry (PyTorch semantics: cross-correlation, zero padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub in_c: usize,
    pub out_c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub groups: usize,
}

impl ConvGeom {
    /// Checks the geometry: non-zero sizes and strides, `groups` dividing both channel counts.
    pub fn validate(&self) -> Result<(), KernelError> {
        let g = self;
        if g.in_c == 0 || g.out_c == 0 || g.kh == 0 || g.kw == 0 {
            return Err(KernelError::invalid(format!(
                "conv geometry has a zero size: {g:?}"
            )));
        }
        if g.stride.0 == 0 || g.stride.1 == 0 {
            return Err(KernelError::invalid(format!(
                "conv stride must be positive: {g:?}"
            )));
        }
        if g.groups == 0 || !g.in_c.is_multiple_of(g.groups) || !g.out_c.is_multiple_of(g.groups) {
            return Err(KernelError::invalid(format!(
                "conv groups ({}) must divide in_channels ({}) and out_channels ({})",
                g.groups, g.in_c, g.out_c
            )));
        }
        mul_dims(&[g.in_c, g.kh, g.kw, g.out_c])?;
        Ok(())
    }

    /// Columns of the weight matrix: `in_c / groups * kh * kw`.
    pub fn k(&self) -> usize {
        self.in_c / self.groups * self.kh * self.kw
    }

    /// Output size `floor((H + 2p - k)/s) + 1`; an error if the kernel does not fit.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), KernelError> {
        let f = |n: usize, k: usize, s: usize, p: usize, what: &str| {
            let span = n + 2 * p;
            if span < k {
                Err(KernelError::shape(format!(
                    "input {what} {n} with padding {p} is smaller than the kernel ({k})"
                )))
            } else {
                Ok((span - k) / s + 1)
            }
        };
        Ok((
            f(h, self.kh, self.stride.0, self.pad.0, "height")?,
            f(w, self.kw, self.stride.1, self.pad.1, "width")?,
        ))
    }
}

/// The numeric path of a shift layer (docs/format.md, `shift_conv2d`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NumericPath {
    /// Activations quantized to `u8` with this scale and zero point; exact `i32` accumulation.
    Int8 { scale: f32, zero_point: i32 },
    /// `f32` activations, exact power-of-two products, `f32` sums in ascending `k`.
    Float,
}

/// Fused epilogue options: `y += residual` (same shape as the output), then ReLU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

/// A layer's input.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// `f32`, NCHW.
    F32(&'a [f32]),
    /// `u8`, NCHW, already quantized with this layer's input quantization (integer path only),
    /// e.g. the `Output::U8` of the previous layer.
    U8(&'a [u8]),
}

/// A power-of-two weight convolution, built once, then only read.
#[derive(Clone, Debug)]
pub struct ShiftConv2d {
    geom: ConvGeom,
    packed: PackedShift,
    /// One per group.
    prep: Vec<PreparedShift>,
    scale: Vec<f32>,
    bias: Vec<f32>,
    path: NumericPath,
    quant: Option<Quant>,
    /// Integer path: `in.scale * scale[o]` (one f32 product, as the format says).
    mul: Vec<f32>,
    /// Integer path: `-zero_point * Σ_k w[o,k]` (raw activations).
    corr: Vec<i32>,
    /// Integer path: `(128 - zero_point) * Σ_k w[o,k]` (centred activations).
    corr_c: Vec<i32>,
}

impl ShiftConv2d {
    /// Builds the layer: `weights` is `[out_c, in_c/groups*kh*kw]`, `scale`/`bias` have `out_c`
    /// entries. Builds the compute layout of `isa` once.
    pub fn new(
        geom: ConvGeom,
        weights: PackedShift,
        scale: Vec<f32>,
        bias: Vec<f32>,
        path: NumericPath,
        isa: Isa,
    ) -> Result<Self, KernelError> {
        geom.validate()?;
        if weights.rows() != geom.out_c || weights.cols() != geom.k() {
            return Err(KernelError::shape(format!(
                "weights are {}x{}, conv {:?} needs {}x{}",
                weights.rows(),
                weights.cols(),
                geom,
                geom.out_c,
                geom.k()
            )));
        }
        check_len("shift layer scale", scale.len(), geom.out_c)?;
        check_len("shift layer bias", bias.len(), geom.out_c)?;
        isa.check_supported()?;
        let og = geom.out_c / geom.groups;
        let k = geom.k();
        let prep = if geom.groups == 1 {
            vec![PreparedShift::new(&weights, isa)?]
        } else {
            let vals = weights.values();
            (0..geom.groups)
                .map(|g| {
                    let part = PackedShift::from_values(
                        weights.code(),
                        weights.bits(),
                        og,
                        k,
                        &vals[g * og * k..(g + 1) * og * k],
                    )?;
                    PreparedShift::new(&part, isa)
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let row_sums: Vec<i64> = prep
            .iter()
            .flat_map(|p| p.row_sums().iter().copied())
            .collect();
        let (quant, mul, corr, corr_c) = match path {
            NumericPath::Int8 {
                scale: s,
                zero_point,
            } => {
                let q = Quant::new(s, zero_point)?;
                if !prep[0].int_path_fits() {
                    return Err(KernelError::invalid(format!(
                        "integer path could overflow i32 with {} columns of {}-bit {} weights; \
                         use the float path",
                        k,
                        weights.bits(),
                        weights.code().name()
                    )));
                }
                let mul = scale.iter().map(|&sc| s * sc).collect();
                let corr = row_sums
                    .iter()
                    .map(|&r| (-(zero_point as i64) * r) as i32)
                    .collect();
                let corr_c = row_sums
                    .iter()
                    .map(|&r| ((128 - zero_point as i64) * r) as i32)
                    .collect();
                (Some(q), mul, corr, corr_c)
            }
            NumericPath::Float => (
                None,
                scale.clone(),
                vec![0; geom.out_c],
                vec![0; geom.out_c],
            ),
        };
        Ok(ShiftConv2d {
            geom,
            packed: weights,
            prep,
            scale,
            bias,
            path,
            quant,
            mul,
            corr,
            corr_c,
        })
    }

    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }
    pub fn weights(&self) -> &PackedShift {
        &self.packed
    }
    pub fn path(&self) -> NumericPath {
        self.path
    }
    pub fn isa(&self) -> Isa {
        self.prep[0].isa()
    }
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
    /// The input quantization of the integer path.
    pub fn input_quant(&self) -> Option<Quant> {
        self.quant
    }

    /// `f32` in, `f32` out (NCHW). Returns the output `(height, width)`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        ep: Epilogue<'_>,
        out: &mut [f32],
        ws: &mut Workspace,
        threads: usize,
    ) -> Result<(usize, usize), KernelError> {
        self.forward_to(Input::F32(x), n, h, w, ep, Output::F32(out), ws, threads)
    }

    /// General form: `f32` or pre-quantized `u8` input; `f32` or requantized `u8` output.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_to(
        &self,
        input: Input<'_>,
        n: usize,
        h: usize,
        w: usize,
        ep: Epilogue<'_>,
        mut out: Output<'_>,
        ws: &mut Workspace,
        threads: usize,
    ) -> Result<(usize, usize), KernelError> {
        let g = self.geom;
        let (oh, ow) = g.out_hw(h, w)?;
        let in_len = mul_dims(&[n, g.in_c, h, w])?;
        let out_len = mul_dims(&[n, g.out_c, oh, ow])?;
        match input {
            Input::F32(x) => check_len("shift conv input", x.len(), in_len)?,
            Input::U8(x) => check_len("shift conv input", x.len(), in_len)?,
        }
        check_len("shift conv output", out.len(), out_len)?;
        if let Some(r) = ep.residual {
            check_len("shift conv residual", r.len(), out_len)?;
        }
        if n == 0 {
            return Ok((oh, ow));
        }
        // Batches run in chunks of whole samples whose im2col matrix stays cache-sized:
        // building one `[K][N*OH*OW]` matrix for a large batch streams it through memory
        // several times (im2col, blocking, kernel) and made batch 8 slower per sample than
        // batch 1. Every output pixel is computed the same way in any chunking (same kernel
        // per pixel block, same summation order), so results do not depend on the chunk size.
        let elem = match self.path {
            NumericPath::Int8 { .. } => 1,
            NumericPath::Float => 4,
        };
        let per_sample = g.k() * g.groups * oh * ow * elem;
        let nb = (CHUNK_BYTES / per_sample.max(1)).clamp(1, n);
        if nb < n {
            let (isz, osz) = (g.in_c * h * w, g.out_c * oh * ow);
            let mut b0 = 0;
            while b0 < n {
                let m = nb.min(n - b0);
                let inp = match input {
                    Input::F32(x) => Input::F32(&x[b0 * isz..(b0 + m) * isz]),
                    Input::U8(x) => Input::U8(&x[b0 * isz..(b0 + m) * isz]),
                };
                let o = match &mut out {
                    Output::F32(o) => Output::F32(&mut o[b0 * osz..(b0 + m) * osz]),
                    Output::U8 { out, quant } => Output::U8 {
                        out: &mut out[b0 * osz..(b0 + m) * osz],
                        quant: *quant,
                    },
                };
                let e = Epilogue {
                    residual: ep.residual.map(|r| &r[b0 * osz..(b0 + m) * osz]),
                    relu: ep.relu,
                };
                self.forward_to(inp, m, h, w, e, o, ws, threads)?;
                b0 += m;
            }
            return Ok((oh, ow));
        }
        let hw = h * w;
        let ohw = oh * ow;
        let p = n * ohw;
        let kt = mul_dims(&[g.in_c, g.kh, g.kw])?;
        let direct = g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad == (0, 0);
        let cg = ColGeom {
            c: g.in_c,
            n,
            h,
            w,
            kh: g.kh,
            kw: g.kw,
            sh: g.stride.0,
            sw: g.stride.1,
            ph: g.pad.0,
            pw: g.pad.1,
            oh,
            ow,
        };
        let og = g.out_c / g.groups;
        let kg = g.k();
        let Workspace {
            q,
            cols8,
            xf,
            colsf,
            acc_i,
            acc_f,
            row8,
            rowf,
            scratch,
        } = ws;
        match (self.path, self.quant) {
            (NumericPath::Int8 { .. }, Some(quant)) => {
                // 1. u8 activations in [C][N*H*W].
                let qbuf: &[u8] = match input {
                    Input::U8(x) if n == 1 => x,
                    Input::U8(x) => {
                        let qb = sized(q, in_len);
                        ops::to_cnhw(x, n, g.in_c, hw, qb);
                        qb
                    }
                    Input::F32(x) => {
                        let qb = sized(q, in_len);
                        ops::quantize_cnhw(x, n, g.in_c, hw, quant, qb);
                        qb
                    }
                };
                // 2. pixel-blocked [K][P] matrix per group.
                let l = self.prep[0].block_lanes(false);
                let gsz = mul_dims(&[p.div_ceil(l), kg, l])?;
                let act = sized(cols8, mul_dims(&[g.groups, gsz])?);
                let rb = sized(row8, p);
                let zp8 = quant.zero_point as u8;
                ops::build_blocked(
                    kt,
                    kg,
                    p,
                    l,
                    |k, r| {
                        if direct {
                            r.copy_from_slice(&qbuf[k * p..(k + 1) * p]);
                        } else {
                            ops::im2col_row(qbuf, cg, zp8, k, r);
                        }
                    },
                    rb,
                    act,
                );
                let act: &[u8] = act;
                // 3. accumulators [O][P].
                let acc = sized(acc_i, mul_dims(&[g.out_c, p])?);
                let ptr = SyncPtr(acc.as_mut_ptr());
                let centred = run_groups(&self.prep, threads, scratch, |gi, t, s| {
                    // SAFETY: group gi owns rows gi*og..(gi+1)*og of acc.
                    let gp = unsafe { ptr.offset(gi * og * p) };
                    self.prep[gi].run_i32(
                        &act[gi * gsz..(gi + 1) * gsz],
                        ActLayout::Blocked,
                        p,
                        gp,
                        p,
                        t,
                        s,
                    )
                });
                // 4. epilogue.
                let corr_ref: &[i32] = if centred { &self.corr_c } else { &self.corr };
                ops::epilogue_i32(
                    acc,
                    g.out_c,
                    n,
                    ohw,
                    corr_ref,
                    &self.mul,
                    &self.bias,
                    ep.residual,
                    ep.relu,
                    &mut out,
                );
            }
            _ => {
                let x = match input {
                    Input::F32(x) => x,
                    Input::U8(_) => {
                        return Err(KernelError::invalid(
                            "a float-path shift layer needs f32 input, got u8",
                        ))
                    }
                };
                let xb: &[f32] = if n == 1 {
                    x
                } else {
                    let b = sized(xf, in_len);
                    ops::to_cnhw(x, n, g.in_c, hw, b);
                    b
                };
                let l = self.prep[0].block_lanes(true);
                let gsz = mul_dims(&[p.div_ceil(l), kg, l])?;
                let act = sized(colsf, mul_dims(&[g.groups, gsz])?);
                let rb = sized(rowf, p);
                ops::build_blocked(
                    kt,
                    kg,
                    p,
                    l,
                    |k, r| {
                        if direct {
                            r.copy_from_slice(&xb[k * p..(k + 1) * p]);
                        } else {
                            ops::im2col_row(xb, cg, 0.0f32, k, r);
                        }
                    },
                    rb,
                    act,
                );
                let act: &[f32] = act;
                let acc = sized(acc_f, mul_dims(&[g.out_c, p])?);
                let ptr = SyncPtr(acc.as_mut_ptr());
                run_groups(&self.prep, threads, scratch, |gi, t, s| {
                    // SAFETY: group gi owns rows gi*og..(gi+1)*og of acc.
                    let gp = unsafe { ptr.offset(gi * og * p) };
                    self.prep[gi].run_f32(
                        &act[gi * gsz..(gi + 1) * gsz],
                        ActLayout::Blocked,
                        p,
                        gp,
                        p,
                        t,
                        s,
                    );
                    false
                });
                ops::epilogue_f32(
                    acc,
                    g.out_c,
                    n,
                    ohw,
                    &self.mul,
                    &self.bias,
                    ep.residual,
                    ep.relu,
                    &mut out,
                );
            }
        }
        Ok((oh, ow))
    }
}

/// Target size of one chunk's activation matrix (about a quarter of a 2 MiB L2).
const CHUNK_BYTES: usize = 512 * 1024;

/// Runs `f(group, threads, scratch)` for every group: one group uses all threads, several
/// groups are split across threads (one thread each). Returns `f`'s flag (same for all groups).
fn run_groups<F>(
    prep: &[PreparedShift],
    threads: usize,
    scratch: &mut Vec<crate::workspace::Scratch>,
    f: F,
) -> bool
where
    F: Fn(usize, usize, &mut crate::workspace::Scratch) -> bool + Sync,
{
    let threads = threads.max(1);
    let ng = prep.len();
    if scratch.is_empty() {
        scratch.push(Default::default());
    }
    if ng == 1 || threads == 1 {
        let mut flag = false;
        for gi in 0..ng {
            flag = f(gi, threads, &mut scratch[0]);
        }
        return flag;
    }
    let t = threads.min(ng);
    if scratch.len() < t {
        scratch.resize_with(t, Default::default);
    }
    let per = ng.div_ceil(t);
    let first = std::sync::atomic::AtomicBool::new(false);
    let sp = crate::kern::SyncPtr(scratch.as_mut_ptr());
    crate::workers::split_run(t, &|i| {
        // SAFETY: part i alone uses scratch i.
        let sc = unsafe { &mut *sp.get().add(i) };
        let mut flag = false;
        for gi in i * per..((i + 1) * per).min(ng) {
            flag = f(gi, 1, sc);
        }
        if i == 0 {
            first.store(flag, std::sync::atomic::Ordering::Relaxed);
        }
    });
    first.into_inner()
}

/// A power-of-two weight fully connected layer: `x` is `[n, in]`, output `[n, out]`.
#[derive(Clone, Debug)]
pub struct ShiftLinear {
    conv: ShiftConv2d,
}

impl ShiftLinear {
    /// `weights` is `[out_features, in_features]`.
    pub fn new(
        in_features: usize,
        out_features: usize,
        weights: PackedShift,
        scale: Vec<f32>,
        bias: Vec<f32>,
        path: NumericPath,
        isa: Isa,
    ) -> Result<Self, KernelError> {
        let geom = ConvGeom {
            in_c: in_features,
            out_c: out_features,
            kh: 1,
            kw: 1,
            stride: (1, 1),
            pad: (0, 0),
            groups: 1,
        };
        Ok(ShiftLinear {
            conv: ShiftConv2d::new(geom, weights, scale, bias, path, isa)?,
        })
    }
    pub fn in_features(&self) -> usize {
        self.conv.geom.in_c
    }
    pub fn out_features(&self) -> usize {
        self.conv.geom.out_c
    }
    pub fn weights(&self) -> &PackedShift {
        &self.conv.packed
    }
    pub fn path(&self) -> NumericPath {
        self.conv.path
    }
    pub fn isa(&self) -> Isa {
        self.conv.isa()
    }
    pub fn input_quant(&self) -> Option<Quant> {
        self.conv.quant
    }

    /// `f32` `[n, in]` in, `f32` `[n, out]` out.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        ep: Epilogue<'_>,
        out: &mut [f32],
        ws: &mut Workspace,
        threads: usize,
    ) -> Result<(), KernelError> {
        self.conv
            .forward_to(Input::F32(x), n, 1, 1, ep, Output::F32(out), ws, threads)
            .map(|_| ())
    }

    /// General form, as `ShiftConv2d::forward_to`.
    pub fn forward_to(
        &self,
        input: Input<'_>,
        n: usize,
        ep: Epilogue<'_>,
        out: Output<'_>,
        ws: &mut Workspace,
        threads: usize,
    ) -> Result<(), KernelError> {
        self.conv
            .forward_to(input, n, 1, 1, ep, out, ws, threads)
            .map(|_| ())
    }
}
