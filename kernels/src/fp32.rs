//! Full-precision layers (stem convolution, classifier) through the `gemm` crate.

use crate::direct::{self, DirectWeights, DIRECT_MAX_K};
use crate::error::{check_len, mul_dims, KernelError};
use crate::isa::Isa;
use crate::kern::SyncPtr;
use crate::layers::{ConvGeom, Epilogue};
use crate::ops::{self, ColGeom};
use crate::qconv::F32Layout;
use crate::workers::Workers;
use crate::workspace::{sized, Workspace};

/// Strided single-threaded `c = a*b (+ c)` via `gemm`.
/// # Safety
/// Pointers and strides must describe valid, non-overlapping `m x k`, `k x n`, `m x n` views.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
    accumulate: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs,
        accumulate,
        a,
        a_cs,
        a_rs,
        b,
        b_cs,
        b_rs,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Threaded strided gemm: splits `n` (or `m` when `n` is small) into `threads` parts, run on the
/// installed worker pool (`Workers::install`) or else on scoped threads.
#[allow(clippy::too_many_arguments)]
fn gemm_threads(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * c_rs..r * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    let (ap, bp, cp) = (
        SyncPtr(a.as_ptr() as *mut f32),
        SyncPtr(b.as_ptr() as *mut f32),
        SyncPtr(c.as_mut_ptr()),
    );
    let t = threads.max(1);
    let split_n = n >= m;
    let dim = if split_n { n } else { m };
    let t = t.min(dim.div_ceil(16)).max(1);
    let run = move |lo: usize, hi: usize| {
        let (ap, bp, cp) = (ap, bp, cp);
        // SAFETY: the views lie inside the checked slices; threads write disjoint parts of c.
        unsafe {
            if split_n {
                gemm_raw(
                    m,
                    hi - lo,
                    k,
                    ap.0,
                    a_rs as isize,
                    a_cs as isize,
                    bp.0.add(lo * b_cs),
                    b_rs as isize,
                    b_cs as isize,
                    cp.0.add(lo),
                    c_rs as isize,
                    accumulate,
                )
            } else {
                gemm_raw(
                    hi - lo,
                    n,
                    k,
                    ap.0.add(lo * a_rs),
                    a_rs as isize,
                    a_cs as isize,
                    bp.0,
                    b_rs as isize,
                    b_cs as isize,
                    cp.0.add(lo * c_rs),
                    c_rs as isize,
                    accumulate,
                )
            }
        }
    };
    if t == 1 {
        run(0, dim);
        return;
    }
    let per = dim.div_ceil(t);
    crate::workers::split_run(t, &|i| {
        let (lo, hi) = ((i * per).min(dim), ((i + 1) * per).min(dim));
        if lo < hi {
            run(lo, hi);
        }
    });
}

/// Row-major `c[m,n] = a[m,k] * b[k,n]` (`+= ` if `accumulate`), on `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
) -> Result<(), KernelError> {
    check_len("gemm_f32 a", a.len(), mul_dims(&[m, k])?)?;
    check_len("gemm_f32 b", b.len(), mul_dims(&[k, n])?)?;
    check_len("gemm_f32 c", c.len(), mul_dims(&[m, n])?)?;
    gemm_threads(m, n, k, a, k, 1, b, n, 1, c, n, accumulate, threads);
    Ok(())
}

/// An fp32 convolution (weights `[out, in/groups, kh, kw]`): im2col + `gemm` (NCHW), and for
/// short reductions also the direct kernel of `direct.rs` (NHWC output, the same bits).
#[derive(Clone, Debug)]
pub struct Conv2dF32 {
    geom: ConvGeom,
    weight: Vec<f32>,
    bias: Vec<f32>,
    direct: Option<DirectWeights>,
}

impl Conv2dF32 {
    pub fn new(geom: ConvGeom, weight: Vec<f32>, bias: Vec<f32>) -> Result<Self, KernelError> {
        geom.validate()?;
        check_len(
            "conv2d weight",
            weight.len(),
            mul_dims(&[geom.out_c, geom.k()])?,
        )?;
        check_len("conv2d bias", bias.len(), geom.out_c)?;
        let direct = (geom.groups == 1 && geom.k() <= DIRECT_MAX_K)
            .then(|| DirectWeights::new(&weight, geom.out_c, geom.k()));
        Ok(Conv2dF32 {
            geom,
            weight,
            bias,
            direct,
        })
    }

    /// Whether [`Conv2dF32::forward_nhwc`] can run this layer.
    pub fn has_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Whether the direct kernel gives exactly the bits of [`Conv2dF32::forward`] (im2col and
    /// `gemm`, one thread) on an `h x w` input: checked on a pseudo-random input of that shape.
    /// `gemm` keeps a plain fused multiply-add chain over `k` for most shapes with a short
    /// reduction but switches to other orders for some small ones (e.g. `k = 2`), so the planner
    /// asks before it replaces one by the other.
    pub fn direct_matches_gemm(&self, h: usize, w: usize, isa: Isa) -> bool {
        let Some(_) = &self.direct else { return false };
        let g = self.geom;
        let Ok((oh, ow)) = g.out_hw(h, w) else {
            return false;
        };
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let x: Vec<f32> = (0..g.in_c * h * w)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        let mut want = vec![0f32; g.out_c * oh * ow];
        let ep = Epilogue {
            residual: None,
            relu: false,
        };
        if self
            .forward(&x, 1, h, w, ep, &mut want, &mut Workspace::new(), 1)
            .is_err()
        {
            return false;
        }
        let ol = F32Layout::new(oh, ow, g.out_c);
        let mut got = vec![0f32; ol.sample_len()];
        let workers = Workers::single();
        if self
            .forward_nhwc(
                &x,
                1,
                h,
                w,
                false,
                &mut got,
                ol,
                &mut Vec::new(),
                &workers,
                isa,
            )
            .is_err()
        {
            return false;
        }
        (0..g.out_c).all(|c| {
            (0..oh * ow).all(|p| got[p * ol.cs + c].to_bits() == want[c * oh * ow + p].to_bits())
        })
    }

    /// The direct kernel: `x` NCHW, `out` NHWC `f32` in `ol` (no residual); bit-identical to
    /// [`Conv2dF32::forward`]. `padded` is caller-owned scratch (a zero-padded input copy).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_nhwc(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        relu: bool,
        out: &mut [f32],
        ol: F32Layout,
        padded: &mut Vec<f32>,
        workers: &Workers,
        isa: Isa,
    ) -> Result<(usize, usize), KernelError> {
        let dw = self.direct_weights(isa)?;
        direct::forward(
            &self.geom, dw, &self.bias, relu, x, n, h, w, out, ol, padded, workers, isa,
        )
    }
    /// The direct kernel fused with the max pool and the quantization that follow it (the stem
    /// of a ResNet), computed band by band while the convolution rows are in cache: `out_f32`
    /// (NHWC in `fl`) and `out_u8` (NHWC `u8` in `ul`), both of the pooled size, get exactly the
    /// bits of [`Conv2dF32::forward_nhwc`], [`crate::max_pool2d_nhwc`] and
    /// [`crate::qconv::quantize_nhwc_to_u8`] in turn. `padded` is caller-owned scratch as for
    /// [`Conv2dF32::forward_nhwc`]; `scratch` can be sized beforehand with
    /// [`crate::FusedScratch::reserve`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_nhwc_pool_u8(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        relu: bool,
        pool: crate::Pool2d,
        quant: crate::Quant,
        out_f32: &mut [f32],
        fl: F32Layout,
        out_u8: &mut [u8],
        ul: crate::qconv::U8Layout,
        padded: &mut Vec<f32>,
        scratch: &mut crate::FusedScratch,
        workers: &Workers,
        isa: Isa,
    ) -> Result<(), KernelError> {
        let dw = self.direct_weights(isa)?;
        direct::forward_pool_u8(
            &self.geom, dw, &self.bias, relu, x, n, h, w, pool, quant, out_f32, fl, out_u8, ul,
            padded, scratch, workers, isa,
        )
    }

    /// The direct kernel's weights, if the layer has one and `isa` runs here.
    fn direct_weights(&self, isa: Isa) -> Result<&direct::DirectWeights, KernelError> {
        isa.check_supported()?;
        self.direct
            .as_ref()
            .ok_or_else(|| KernelError::unsupported("this conv has no direct kernel"))
    }

    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    /// How the layer computes (for reports).
    pub fn implementation(&self) -> &'static str {
        if self.direct.is_some() {
            "fp32-direct"
        } else {
            "fp32-gemm"
        }
    }

    /// NCHW in/out; returns the output `(height, width)`.
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
        let g = self.geom;
        let (oh, ow) = g.out_hw(h, w)?;
        let img = mul_dims(&[g.in_c, h, w])?;
        let oimg = mul_dims(&[g.out_c, oh, ow])?;
        check_len("conv2d input", x.len(), mul_dims(&[n, img])?)?;
        check_len("conv2d output", out.len(), mul_dims(&[n, oimg])?)?;
        if let Some(r) = ep.residual {
            check_len("conv2d residual", r.len(), out.len())?;
        }
        let ohw = oh * ow;
        let kg = g.k();
        let og = g.out_c / g.groups;
        let direct = g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad == (0, 0);
        let cg = ColGeom {
            c: g.in_c,
            n: 1,
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
        for b in 0..n {
            let xi = &x[b * img..(b + 1) * img];
            let cols: &[f32] = if direct {
                xi
            } else {
                let cb = sized(&mut ws.colsf, mul_dims(&[g.in_c * g.kh * g.kw, ohw])?);
                ops::im2col(xi, cg, 0.0, cb);
                cb
            };
            let yo = &mut out[b * oimg..(b + 1) * oimg];
            for gi in 0..g.groups {
                gemm_threads(
                    og,
                    ohw,
                    kg,
                    &self.weight[gi * og * kg..(gi + 1) * og * kg],
                    kg,
                    1,
                    &cols[gi * kg * ohw..(gi + 1) * kg * ohw],
                    ohw,
                    1,
                    &mut yo[gi * og * ohw..(gi + 1) * og * ohw],
                    ohw,
                    false,
                    threads,
                );
            }
            let res = ep.residual.map(|r| &r[b * oimg..(b + 1) * oimg]);
            ops::bias_rows(yo, ohw, &self.bias, res, ep.relu);
        }
        Ok((oh, ow))
    }
}

/// An fp32 fully connected layer, weights `[out, in]` (PyTorch layout).
#[derive(Clone, Debug)]
pub struct LinearF32 {
    in_f: usize,
    out_f: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LinearF32 {
    pub fn new(
        in_features: usize,
        out_features: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<Self, KernelError> {
        if in_features == 0 || out_features == 0 {
            return Err(KernelError::invalid("linear layer needs non-zero sizes"));
        }
        check_len(
            "linear weight",
            weight.len(),
            mul_dims(&[out_features, in_features])?,
        )?;
        check_len("linear bias", bias.len(), out_features)?;
        Ok(LinearF32 {
            in_f: in_features,
            out_f: out_features,
            weight,
            bias,
        })
    }
    pub fn in_features(&self) -> usize {
        self.in_f
    }
    pub fn out_features(&self) -> usize {
        self.out_f
    }

    /// `x` `[n, in]`, `out` `[n, out]`.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        ep: Epilogue<'_>,
        out: &mut [f32],
        _ws: &mut Workspace,
        threads: usize,
    ) -> Result<(), KernelError> {
        check_len("linear input", x.len(), mul_dims(&[n, self.in_f])?)?;
        check_len("linear output", out.len(), mul_dims(&[n, self.out_f])?)?;
        if let Some(r) = ep.residual {
            check_len("linear residual", r.len(), out.len())?;
        }
        // out[n, o] = x[n, k] * W^T[k, o]; W^T viewed with row stride 1, column stride in_f.
        gemm_threads(
            n,
            self.out_f,
            self.in_f,
            x,
            self.in_f,
            1,
            &self.weight,
            1,
            self.in_f,
            out,
            self.out_f,
            false,
            threads,
        );
        for (b, row) in out.chunks_exact_mut(self.out_f).enumerate() {
            for (v, &bb) in row.iter_mut().zip(&self.bias) {
                *v += bb;
            }
            if let Some(r) = ep.residual {
                for (v, &rr) in row.iter_mut().zip(&r[b * self.out_f..(b + 1) * self.out_f]) {
                    *v += rr;
                }
            }
            if ep.relu {
                row.iter_mut().for_each(|v| *v = ops::relu1(*v));
            }
        }
        Ok(())
    }
}
