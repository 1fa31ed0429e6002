//! The quantized convolution runtime: `u8` NHWC activations in, fused epilogue out, with every
//! kernel family behind one driver.
//!
//! A [`QConv2d`] is one integer-path shift convolution (groups = 1) prepared for one
//! [`ConvKernel`]:
//!
//! * **dot-product kernels** (`dot-*`): the power-of-two weights decoded once to `i8` (`±2^m` is
//!   exact in `i8` up to 64) and multiplied by `vpdpbusd` (AVX-512 VNNI, AVX-VNNI),
//!   `vpmaddubsw`+`vpmaddwd` (AVX2), `sdot`/`usdot` (NEON), or portable code. Direct
//!   convolution over the padded NHWC input (no im2col): a tile of output channels by pixels,
//!   4 input channels per step.
//! * **shift-add kernels** (`shift-*`): the multiplication-free table kernels of
//!   [`crate::PreparedShift`], fed a pixel-blocked im2col of the same input.
//!
//! All of them compute the same exact `i32` sums `Σ w (q - zp)`, and the epilogue is shared, so
//! the choice of kernel never changes a bit of the output.

pub mod epilogue;
pub mod layout;
pub(crate) mod micro;

use std::sync::Mutex;

use crate::error::{check_len, mul_dims, KernelError};
use crate::isa::Isa;
use crate::kern::SyncPtr;
use crate::layers::ConvGeom;
use crate::ops::Quant;
use crate::packed::{Code, PackedShift};
use crate::prepared::{ActLayout, PreparedShift};
use crate::workers::{TaskCounter, Workers};
use crate::workspace::Scratch;

pub use epilogue::{EpilogueImpl, FastQuant, U8Target};
pub use layout::{F32Layout, U8Layout, CHANNEL_ALIGN};
use micro::TileGeom;

/// Whether a kernel multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Table lookups, shifts and adds only (DenseShift's premise).
    MultiplicationFree,
    /// Integer dot-product instructions on the decoded `i8` weights.
    DotProduct,
}

/// A convolution kernel: a value with a name, a family and a support test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    /// The multiplication-free table kernel of an instruction set.
    Shift(Isa),
    /// Portable dot-product code (any CPU).
    DotScalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`.
    DotAvx2,
    /// AVX-VNNI 256-bit `vpdpbusd`.
    DotAvxVnni,
    /// AVX-512 VNNI 512-bit `vpdpbusd`.
    DotAvx512Vnni,
    /// NEON `sdot` (ARMv8.2 dot product).
    DotNeonSdot,
    /// NEON `usdot` (ARMv8.6 i8mm).
    DotNeonI8mm,
}

impl ConvKernel {
    /// Every kernel this build knows, multiplication-free first.
    pub const ALL: [ConvKernel; 10] = [
        ConvKernel::Shift(Isa::Scalar),
        ConvKernel::Shift(Isa::Avx2),
        ConvKernel::Shift(Isa::Avx512),
        ConvKernel::Shift(Isa::Neon),
        ConvKernel::DotScalar,
        ConvKernel::DotAvx2,
        ConvKernel::DotAvxVnni,
        ConvKernel::DotAvx512Vnni,
        ConvKernel::DotNeonSdot,
        ConvKernel::DotNeonI8mm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Shift(Isa::Scalar) => "shift-scalar",
            ConvKernel::Shift(Isa::Avx2) => "shift-avx2",
            ConvKernel::Shift(Isa::Avx512) => "shift-avx512",
            ConvKernel::Shift(Isa::Neon) => "shift-neon",
            ConvKernel::DotScalar => "dot-scalar",
            ConvKernel::DotAvx2 => "dot-avx2",
            ConvKernel::DotAvxVnni => "dot-avxvnni",
            ConvKernel::DotAvx512Vnni => "dot-avx512vnni",
            ConvKernel::DotNeonSdot => "dot-neon-sdot",
            ConvKernel::DotNeonI8mm => "dot-neon-i8mm",
        }
    }

    pub fn from_name(s: &str) -> Option<ConvKernel> {
        ConvKernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
    }

    pub fn family(self) -> Family {
        match self {
            ConvKernel::Shift(_) => Family::MultiplicationFree,
            _ => Family::DotProduct,
        }
    }

    /// The instruction-set group the kernel belongs to (what `SHIFTSERVE_KERNEL=avx2` selects).
    pub fn isa(self) -> Isa {
        match self {
            ConvKernel::Shift(i) => i,
            ConvKernel::DotScalar => Isa::Scalar,
            ConvKernel::DotAvx2 | ConvKernel::DotAvxVnni => Isa::Avx2,
            ConvKernel::DotAvx512Vnni => Isa::Avx512,
            ConvKernel::DotNeonSdot | ConvKernel::DotNeonI8mm => Isa::Neon,
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            ConvKernel::Shift(i) => i.is_supported(),
            ConvKernel::DotScalar => true,
            #[cfg(target_arch = "x86_64")]
            ConvKernel::DotAvx2 => Isa::Avx2.is_supported(),
            #[cfg(target_arch = "x86_64")]
            ConvKernel::DotAvxVnni => {
                Isa::Avx2.is_supported() && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            ConvKernel::DotAvx512Vnni => {
                Isa::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            ConvKernel::DotNeonSdot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            ConvKernel::DotNeonI8mm => std::arch::is_aarch64_feature_detected!("i8mm"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel this CPU can run.
    pub fn supported() -> Vec<ConvKernel> {
        ConvKernel::ALL
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// Whether the kernel computes exact sums for weights of this code and width (dot kernels
    /// hold weights in `i8`; `vpmaddubsw` adds two products in `i16`).
    pub fn handles(self, code: Code, bits: u8) -> bool {
        let max = code.max_abs(bits) as i64;
        match self {
            ConvKernel::Shift(_) => true,
            ConvKernel::DotAvx2 => max <= 64,
            _ => max <= 127,
        }
    }
}

impl std::fmt::Display for ConvKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tile shape of a dot kernel: `nv` output-channel vectors of `vw` lanes by up to `np` pixels.
#[derive(Clone, Copy, Debug)]
struct DotShape {
    vw: usize,
    nv: usize,
    np: usize,
}

fn dot_shape(k: ConvKernel, out_c: usize) -> DotShape {
    let ocp = out_c.div_ceil(CHANNEL_ALIGN) * CHANNEL_ALIGN;
    match k {
        ConvKernel::DotAvx512Vnni => {
            if ocp.is_multiple_of(64) {
                DotShape {
                    vw: 16,
                    nv: 4,
                    np: 6,
                }
            } else if ocp.is_multiple_of(32) {
                DotShape {
                    vw: 16,
                    nv: 2,
                    np: 12,
                }
            } else {
                DotShape {
                    vw: 16,
                    nv: 1,
                    np: 16,
                }
            }
        }
        ConvKernel::DotAvxVnni => DotShape {
            vw: 8,
            nv: 2,
            np: 6,
        },
        ConvKernel::DotAvx2 => DotShape {
            vw: 8,
            nv: 2,
            np: 4,
        },
        ConvKernel::DotNeonSdot | ConvKernel::DotNeonI8mm => DotShape {
            vw: 4,
            nv: 4,
            np: 6,
        },
        _ => DotShape {
            vw: 16,
            nv: 1,
            np: 4,
        },
    }
}

/// Weights in the layout of the kernel that runs them.
#[derive(Clone, Debug)]
enum Prep {
    /// `[ob][ky][kx][c4][nv*vw][4]` `i8`, zero for padded channels.
    Dot { shape: DotShape, w: Vec<i8> },
    /// The table kernel's layouts.
    Shift(Box<PreparedShift>),
}

/// One integer-path shift convolution (groups = 1) prepared for one kernel.
#[derive(Clone, Debug)]
pub struct QConv2d {
    geom: ConvGeom,
    kernel: ConvKernel,
    prep: Prep,
    in_quant: Quant,
    /// Channel stride of the input layout the weights were packed for.
    in_cs: usize,
    /// `-zp * Σ_k w[o,k]`, padded to a multiple of 16 (raw activations).
    corr_raw: Vec<i32>,
    /// `(128 - zp) * Σ_k w[o,k]` (centred activations).
    corr_centred: Vec<i32>,
    mul: Vec<f32>,
    bias: Vec<f32>,
    /// Reduction steps the AVX2 kernel may sum in `i16`: `32767 / (2 * 255 * max|w|)`.
    madd_chunk: usize,
    /// The epilogue implementation (the widest this CPU runs unless set).
    epilogue: EpilogueImpl,
}

/// Where a [`QConv2d`] writes: any number of requantized `u8` consumers, and optionally the
/// `f32` values (NHWC for quantized consumers' residuals, NCHW for everything else).
pub struct QOutputs<'a> {
    pub u8s: &'a [U8Target],
    pub f32_nhwc: Option<(&'a mut [f32], F32Layout)>,
    pub f32_nchw: Option<&'a mut [f32]>,
}

impl U8Target {
    /// A `u8` consumer writing into `buf` (which must hold `n` samples of `layout`).
    pub fn new(buf: &mut [u8], layout: U8Layout, quant: Quant) -> U8Target {
        U8Target {
            ptr: SyncPtr(buf.as_mut_ptr()),
            layout,
            q: FastQuant::new(quant),
        }
    }
}

/// Per-worker scratch of [`QConv2d::forward`]: grows on first use, then reused.
#[derive(Default)]
pub struct QScratch {
    workers: Vec<Mutex<WorkerScratch>>,
}

#[derive(Default)]
struct WorkerScratch {
    cols: Vec<u8>,
    acc: Vec<i32>,
    tile: Vec<i32>,
    table: Scratch,
}

impl QScratch {
    pub fn new() -> QScratch {
        QScratch::default()
    }
    fn ensure(&mut self, threads: usize) {
        while self.workers.len() < threads {
            self.workers.push(Mutex::new(WorkerScratch::default()));
        }
    }
    /// Bytes held.
    pub fn allocated_bytes(&self) -> usize {
        self.workers
            .iter()
            .map(|w| {
                let w = w.lock().unwrap();
                w.cols.capacity() + 4 * w.acc.capacity() + 4 * w.tile.capacity()
            })
            .sum()
    }
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// Pixels per task of the shift path (a multiple of every table kernel's lane count).
const SHIFT_CHUNK: usize = 256;

impl QConv2d {
    /// Prepares the layer for `kernel`: `weights` is `[out_c, in_c*kh*kw]` (column
    /// `(ci*kh + ky)*kw + kx`), `scale`/`bias` per output channel, `in_quant` the input's
    /// quantization (integer path: `y = f32(Σ w (q - zp)) * (in.scale * scale[o]) + bias[o]`).
    pub fn new(
        geom: ConvGeom,
        weights: &PackedShift,
        scale: &[f32],
        bias: &[f32],
        in_quant: Quant,
        kernel: ConvKernel,
    ) -> Result<QConv2d, KernelError> {
        geom.validate()?;
        if geom.groups != 1 {
            return Err(KernelError::unsupported(
                "the quantized runtime runs groups = 1 convolutions",
            ));
        }
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
        let in_quant = Quant::new(in_quant.scale, in_quant.zero_point)?;
        if !kernel.is_supported() {
            return Err(KernelError::unsupported(format!(
                "kernel {kernel} is not supported by this CPU"
            )));
        }
        if !kernel.handles(weights.code(), weights.bits()) {
            return Err(KernelError::unsupported(format!(
                "kernel {kernel} cannot hold {}-bit {} weights exactly",
                weights.bits(),
                weights.code().name()
            )));
        }
        let k = geom.k();
        let max_abs = weights.code().max_abs(weights.bits()) as i64;
        if (k as i64) * max_abs * 255 > i32::MAX as i64 {
            return Err(KernelError::invalid(format!(
                "integer path could overflow i32 with {k} columns of {}-bit {} weights; use the \
                 float path",
                weights.bits(),
                weights.code().name()
            )));
        }
        let values = weights.values();
        let ocp = geom.out_c.div_ceil(CHANNEL_ALIGN) * CHANNEL_ALIGN;
        let row_sums: Vec<i64> = (0..geom.out_c)
            .map(|o| values[o * k..(o + 1) * k].iter().map(|&v| v as i64).sum())
            .collect();
        let zp = in_quant.zero_point as i64;
        let pad_i = |v: Vec<i32>| {
            let mut v = v;
            v.resize(ocp, 0);
            v
        };
        let pad_f = |v: Vec<f32>| {
            let mut v = v;
            v.resize(ocp, 0.0);
            v
        };
        let corr_raw = pad_i(row_sums.iter().map(|&r| (-zp * r) as i32).collect());
        let corr_centred = pad_i(row_sums.iter().map(|&r| ((128 - zp) * r) as i32).collect());
        let mul = pad_f(scale.iter().map(|&s| in_quant.scale * s).collect());
        let bias = pad_f(bias.to_vec());
        let in_cs = geom.in_c.div_ceil(CHANNEL_ALIGN) * CHANNEL_ALIGN;
        let prep = match kernel {
            ConvKernel::Shift(isa) => Prep::Shift(Box::new(PreparedShift::new(weights, isa)?)),
            _ => {
                let shape = dot_shape(kernel, geom.out_c);
                let ocb = shape.nv * shape.vw;
                let nob = geom.out_c.div_ceil(ocb);
                let c4 = in_cs / 4;
                let steps = geom.kh * geom.kw * c4;
                let mut w = vec![0i8; mul_dims(&[nob, steps, ocb, 4])?];
                for o in 0..geom.out_c {
                    let (ob, lane) = (o / ocb, o % ocb);
                    for ci in 0..geom.in_c {
                        for ky in 0..geom.kh {
                            for kx in 0..geom.kw {
                                let v = values[o * k + (ci * geom.kh + ky) * geom.kw + kx];
                                let step = (ky * geom.kw + kx) * c4 + ci / 4;
                                w[((ob * steps + step) * ocb + lane) * 4 + ci % 4] = v as i8;
                            }
                        }
                    }
                }
                Prep::Dot { shape, w }
            }
        };
        Ok(QConv2d {
            madd_chunk: (32767 / (2 * 255 * max_abs as usize).max(1)).max(1),
            geom,
            kernel,
            prep,
            in_quant,
            in_cs,
            corr_raw,
            corr_centred,
            mul,
            bias,
            epilogue: EpilogueImpl::best(),
        })
    }

    /// Runs this layer's epilogue with `e` instead of the widest one (tests and benchmarks
    /// compare them; every implementation gives the same bits).
    pub fn set_epilogue(&mut self, e: EpilogueImpl) -> Result<(), KernelError> {
        if !e.is_supported() {
            return Err(KernelError::unsupported(format!(
                "the {} epilogue is not supported by this CPU",
                e.name()
            )));
        }
        self.epilogue = e;
        Ok(())
    }

    pub fn epilogue(&self) -> EpilogueImpl {
        self.epilogue
    }

    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }
    pub fn kernel(&self) -> ConvKernel {
        self.kernel
    }
    pub fn in_quant(&self) -> Quant {
        self.in_quant
    }
    /// Output size for an `h x w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), KernelError> {
        self.geom.out_hw(h, w)
    }
    /// Bytes of the weights in the kernel's layout.
    pub fn weight_bytes(&self) -> usize {
        match &self.prep {
            Prep::Dot { w, .. } => w.len(),
            Prep::Shift(p) => p.rows() * p.cols(),
        }
    }

    /// Runs the layer on `n` samples of `x` (padded NHWC `u8`, quantized with
    /// [`QConv2d::in_quant`], border at least the padding), with an optional `f32` NHWC residual
    /// of the output's shape, writing every target in `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[u8],
        xl: U8Layout,
        n: usize,
        residual: Option<(&[f32], F32Layout)>,
        relu: bool,
        out: QOutputs<'_>,
        scratch: &mut QScratch,
        workers: &Workers,
    ) -> Result<(usize, usize), KernelError> {
        let g = self.geom;
        if xl.c != g.in_c || xl.cs != self.in_cs {
            return Err(KernelError::shape(format!(
                "input has {} channels (stride {}), the layer takes {} (stride {})",
                xl.c, xl.cs, g.in_c, self.in_cs
            )));
        }
        if xl.border < g.pad.0 || xl.border < g.pad.1 {
            return Err(KernelError::shape(format!(
                "input border {} is smaller than the padding {:?}",
                xl.border, g.pad
            )));
        }
        let (oh, ow) = g.out_hw(xl.h, xl.w)?;
        check_len("qconv input", x.len(), mul_dims(&[n, xl.sample_len()])?)?;
        let shape_ok = |l: (usize, usize, usize)| l == (oh, ow, g.out_c);
        if let Some((r, rl)) = residual {
            if !shape_ok((rl.h, rl.w, rl.c)) {
                return Err(KernelError::shape(
                    "residual layout does not match the output",
                ));
            }
            check_len("qconv residual", r.len(), mul_dims(&[n, rl.sample_len()])?)?;
        }
        for t in out.u8s {
            if !shape_ok((t.layout.h, t.layout.w, t.layout.c)) {
                return Err(KernelError::shape(
                    "u8 output layout does not match the output",
                ));
            }
        }
        if let Some((o, ol)) = &out.f32_nhwc {
            if !shape_ok((ol.h, ol.w, ol.c)) {
                return Err(KernelError::shape(
                    "f32 output layout does not match the output",
                ));
            }
            check_len(
                "qconv f32 output",
                o.len(),
                mul_dims(&[n, ol.sample_len()])?,
            )?;
        }
        if let Some(o) = &out.f32_nchw {
            check_len(
                "qconv nchw output",
                o.len(),
                mul_dims(&[n, g.out_c, oh, ow])?,
            )?;
        }
        let p_total = n * oh * ow;
        if p_total == 0 {
            return Ok((oh, ow));
        }
        // The shift path converts its sums to raw-activation sums itself (see `run_shift`).
        let centred = matches!(self.prep, Prep::Dot { .. }) && self.dot_centred();
        let ctx = epilogue::EpiCtx {
            corr: if centred {
                &self.corr_centred
            } else {
                &self.corr_raw
            },
            mul: &self.mul,
            bias: &self.bias,
            relu,
            out_c: g.out_c,
            oh,
            ow,
            residual: residual.map(|(r, l)| (SyncPtr(r.as_ptr() as *mut f32), l)),
            u8s: out.u8s,
            f32_nhwc: out.f32_nhwc.map(|(o, l)| (SyncPtr(o.as_mut_ptr()), l)),
            f32_nchw: out.f32_nchw.map(|o| SyncPtr(o.as_mut_ptr())),
            level: self.epilogue,
        };
        scratch.ensure(workers.threads());
        let geo = PixelGeom {
            xl,
            oh,
            ow,
            sh: g.stride.0,
            sw: g.stride.1,
            oy0: xl.border - g.pad.0,
            ox0: xl.border - g.pad.1,
        };
        let xp = SyncPtr(x.as_ptr() as *mut u8);
        match &self.prep {
            Prep::Dot { shape, w } => self.run_dot(*shape, w, xp, geo, p_total, &ctx, workers),
            Prep::Shift(p) => self.run_shift(p, xp, geo, p_total, &ctx, scratch, workers),
        }
        Ok((oh, ow))
    }

    fn dot_centred(&self) -> bool {
        use micro::DotOps;
        match self.kernel {
            #[cfg(target_arch = "aarch64")]
            ConvKernel::DotNeonSdot => micro::arm::Sdot::CENTRED,
            #[cfg(target_arch = "aarch64")]
            ConvKernel::DotNeonI8mm => micro::arm::Usdot::CENTRED,
            _ => micro::ScalarDot::CENTRED,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_dot(
        &self,
        shape: DotShape,
        w: &[i8],
        x: SyncPtr<u8>,
        geo: PixelGeom,
        p_total: usize,
        ctx: &epilogue::EpiCtx<'_>,
        workers: &Workers,
    ) {
        let g = self.geom;
        let ocb = shape.nv * shape.vw;
        let nob = g.out_c.div_ceil(ocb);
        let tg = TileGeom {
            kh: g.kh,
            kw: g.kw,
            c4: self.in_cs / 4,
            row_stride: geo.xl.row_stride(),
            cs: geo.xl.cs,
            chunk: self.madd_chunk,
        };
        let steps = g.kh * g.kw * tg.c4;
        let ntiles = p_total.div_ceil(shape.np);
        // Tasks: an output-channel block times a run of tiles. Enough tasks to balance the
        // workers, few enough that each reuses its block's weights over many pixels.
        let threads = workers.threads();
        let want = if threads > 1 { threads * 16 } else { 4 };
        let per_ob = want.div_ceil(nob).clamp(1, ntiles);
        let tiles_per_task = ntiles.div_ceil(per_ob);
        let chunks = ntiles.div_ceil(tiles_per_task);
        let tasks = TaskCounter::new(nob * chunks);
        let wp = SyncPtr(w.as_ptr() as *mut i8);
        workers.run(&|_| {
            let mut tile = [0i32; 512];
            while let Some(t) = tasks.next() {
                // Pixel-run major: consecutive tasks share the activations.
                let (chunk, ob) = (t / nob, t % nob);
                let wb = unsafe { wp.get().add(ob * steps * ocb * 4) as *const i8 };
                let t0 = chunk * tiles_per_task;
                let t1 = ((chunk + 1) * tiles_per_task).min(ntiles);
                for ti in t0..t1 {
                    // Balanced tiles: every tile has np or np - 1 pixels (no 1-pixel tail
                    // streaming a whole weight block for one pixel, as ResNet-18's 7x7 layers
                    // had: 49 = 8 x 6 + 1).
                    let p0 = ti * p_total / ntiles;
                    let np = (ti + 1) * p_total / ntiles - p0;
                    // SAFETY: bases are inside x (checked layout and length); the tile buffer
                    // holds np*ocb <= 512 values; this task owns these pixels of block ob.
                    unsafe {
                        epilogue::prefetch(ctx, ocb, ob * ocb, p0, np);
                        dispatch_tile(
                            self.kernel,
                            shape,
                            &tg,
                            wb,
                            x,
                            &geo,
                            p0,
                            np,
                            tile.as_mut_ptr(),
                        );
                        epilogue::apply(ctx, &tile[..np * ocb], ocb, ob * ocb, p0, np);
                    }
                }
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn run_shift(
        &self,
        prep: &PreparedShift,
        x: SyncPtr<u8>,
        geo: PixelGeom,
        p_total: usize,
        ctx: &epilogue::EpiCtx<'_>,
        scratch: &QScratch,
        workers: &Workers,
    ) {
        let g = self.geom;
        let k = g.k();
        let rows = g.out_c;
        let ocp = rows.div_ceil(CHANNEL_ALIGN) * CHANNEL_ALIGN;
        let l = prep.block_lanes(false);
        let chunk = SHIFT_CHUNK.max(l).div_ceil(l) * l;
        let nchunks = p_total.div_ceil(chunk);
        // Chunks go to workers round-robin (not first come, first served): every run gives each
        // worker the same chunks, so the buffers sized by the first run fit every later one and
        // steady-state runs allocate nothing.
        let nthreads = workers.threads();
        workers.run(&|wi| {
            let mut ws = scratch.workers[wi]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let WorkerScratch {
                cols,
                acc,
                tile,
                table,
            } = &mut *ws;
            for c in (wi..nchunks).step_by(nthreads) {
                let p0 = c * chunk;
                let np = chunk.min(p_total - p0);
                let nblk = np.div_ceil(l);
                // Pixel-blocked im2col of this chunk: [nblk][k][l], row k = (ci*kh + ky)*kw + kx.
                let cb = grow(cols, nblk * k * l);
                for blk in 0..nblk {
                    for lane in 0..l {
                        let j = blk * l + lane;
                        if j >= np {
                            for kk in 0..k {
                                cb[(blk * k + kk) * l + lane] = 0;
                            }
                            continue;
                        }
                        // SAFETY: the receptive field of an output pixel lies inside x.
                        let base = unsafe { x.get().add(geo.base(p0 + j)) as *const u8 };
                        let mut kk = 0;
                        for ci in 0..g.in_c {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let off = ky * geo.xl.row_stride() + kx * geo.xl.cs + ci;
                                    cb[(blk * k + kk) * l + lane] = unsafe { *base.add(off) };
                                    kk += 1;
                                }
                            }
                        }
                    }
                }
                let a = grow(acc, rows * np);
                let centred = prep.run_i32(
                    &cb[..nblk * k * l],
                    ActLayout::Blocked,
                    np,
                    SyncPtr(a.as_mut_ptr()),
                    np,
                    1,
                    table,
                );
                // [rows][np] -> [np][ocp] tiles for the shared epilogue, as sums over raw
                // activations (`Σ w q = Σ w (q - 128) + 128 Σ w`).
                let t = grow(tile, np * ocp);
                for j in 0..np {
                    for o in 0..ocp {
                        t[j * ocp + o] = if o >= rows {
                            0
                        } else if centred {
                            a[o * np + j]
                                .wrapping_add(self.corr_centred[o].wrapping_sub(self.corr_raw[o]))
                        } else {
                            a[o * np + j]
                        };
                    }
                }
                // SAFETY: this task owns pixels p0..p0+np of every channel.
                unsafe { epilogue::apply(ctx, &t[..np * ocp], ocp, 0, p0, np) };
            }
        });
    }
}

/// Maps flat output pixels to input addresses.
#[derive(Clone, Copy)]
struct PixelGeom {
    xl: U8Layout,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
    /// Buffer row/column of output pixel (0, 0)'s receptive field (border - padding).
    oy0: usize,
    ox0: usize,
}

impl PixelGeom {
    /// Byte offset in the input of the first tap of flat output pixel `p`.
    #[inline(always)]
    fn base(&self, p: usize) -> usize {
        let ohw = self.oh * self.ow;
        let (b, r) = (p / ohw, p % ohw);
        let (oy, ox) = (r / self.ow, r % self.ow);
        b * self.xl.sample_len()
            + (oy * self.sh + self.oy0) * self.xl.row_stride()
            + (ox * self.sw + self.ox0) * self.xl.cs
    }
}

/// Runs one tile of `np <= shape.np` pixels starting at `p0` with the kernel's instruction set.
///
/// # Safety
/// As [`micro::tile`]; `kernel` must be supported by this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch_tile(
    kernel: ConvKernel,
    shape: DotShape,
    tg: &TileGeom,
    w: *const i8,
    x: SyncPtr<u8>,
    geo: &PixelGeom,
    p0: usize,
    np: usize,
    out: *mut i32,
) {
    macro_rules! bases {
        ($np:literal) => {{
            let mut b = [std::ptr::null::<u8>(); $np];
            for (j, v) in b.iter_mut().enumerate() {
                *v = x.get().add(geo.base(p0 + j)) as *const u8;
            }
            b
        }};
    }
    // One instantiation per (kernel, nv, np): the ragged last tile uses a smaller np.
    macro_rules! run {
        ($f:ident, $nv:literal, [$($np:literal),*]) => {
            match np {
                $($np => $f::<$nv, $np>(tg, w, &bases!($np), out),)*
                _ => unreachable!("tile of {np} pixels"),
            }
        };
    }
    match (kernel, shape.nv) {
        #[cfg(target_arch = "x86_64")]
        (ConvKernel::DotAvx512Vnni, 4) => run!(tile_vnni512, 4, [1, 2, 3, 4, 5, 6]),
        #[cfg(target_arch = "x86_64")]
        (ConvKernel::DotAvx512Vnni, 2) => {
            run!(tile_vnni512, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        }
        #[cfg(target_arch = "x86_64")]
        (ConvKernel::DotAvx512Vnni, _) => {
            run!(
                tile_vnni512,
                1,
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
            )
        }
        #[cfg(target_arch = "x86_64")]
        (ConvKernel::DotAvxVnni, _) => run!(tile_avxvnni, 2, [1, 2, 3, 4, 5, 6]),
        #[cfg(target_arch = "x86_64")]
        (ConvKernel::DotAvx2, _) => run!(tile_avx2, 2, [1, 2, 3, 4]),
        #[cfg(target_arch = "aarch64")]
        (ConvKernel::DotNeonSdot, _) => run!(tile_sdot, 4, [1, 2, 3, 4, 5, 6]),
        #[cfg(target_arch = "aarch64")]
        (ConvKernel::DotNeonI8mm, _) => run!(tile_usdot, 4, [1, 2, 3, 4, 5, 6]),
        _ => run!(tile_scalar, 1, [1, 2, 3, 4]),
    }
}

unsafe fn tile_scalar<const NV: usize, const NP: usize>(
    g: &TileGeom,
    w: *const i8,
    base: &[*const u8; NP],
    out: *mut i32,
) {
    micro::tile::<micro::ScalarDot, NV, NP>(g, w, base, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_vnni512<const NV: usize, const NP: usize>(
    g: &TileGeom,
    w: *const i8,
    base: &[*const u8; NP],
    out: *mut i32,
) {
    micro::tile::<micro::x86::Vnni512, NV, NP>(g, w, base, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn tile_avxvnni<const NV: usize, const NP: usize>(
    g: &TileGeom,
    w: *const i8,
    base: &[*const u8; NP],
    out: *mut i32,
) {
    micro::tile::<micro::x86::AvxVnni, NV, NP>(g, w, base, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const NV: usize, const NP: usize>(
    g: &TileGeom,
    w: *const i8,
    base: &[*const u8; NP],
    out: *mut i32,
) {
    micro::x86::tile_madd16::<NV, NP>(g, w, base, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_sdot<const NV: usize, const NP: usize>(
    g: &TileGeom,
    w: *const i8,
    base: &[*const u8; NP],
    out: *mut i32,
) {
    micro::tile::<micro::arm::Sdot, NV, NP>(g, w, base, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile_usdot<const NV: usize, const NP: usize>(
    g: &TileGeom,
    w: *const i8,
    base: &[*const u8; NP],
    out: *mut i32,
) {
    micro::tile::<micro::arm::Usdot, NV, NP>(g, w, base, out)
}

/// Quantizes `n` samples of NCHW `f32` into a padded NHWC `u8` layout (border and channel
/// padding are left as they are: the buffer is initialised with the zero point once).
pub fn quantize_nchw_to_u8(
    x: &[f32],
    n: usize,
    layout: U8Layout,
    quant: Quant,
    out: &mut [u8],
) -> Result<(), KernelError> {
    let (c, h, w) = (layout.c, layout.h, layout.w);
    check_len("quantize input", x.len(), mul_dims(&[n, c, h, w])?)?;
    check_len(
        "quantize output",
        out.len(),
        mul_dims(&[n, layout.sample_len()])?,
    )?;
    let fq = FastQuant::new(quant);
    let mut y = [0f32; 16];
    let mut q = [0u8; 16];
    for b in 0..n {
        for yy in 0..h {
            for xx in 0..w {
                let dst = layout.offset(b, yy, xx);
                let mut c0 = 0;
                while c0 < c {
                    let m = (c - c0).min(16);
                    for i in 0..m {
                        y[i] = x[((b * c + c0 + i) * h + yy) * w + xx];
                    }
                    fq.quantize16(&y, &mut q);
                    out[dst + c0..dst + c0 + m].copy_from_slice(&q[..m]);
                    c0 += 16;
                }
            }
        }
    }
    Ok(())
}

/// Quantizes `n` samples of NHWC `f32` (`xl`) into a padded NHWC `u8` layout.
pub fn quantize_nhwc_to_u8(
    x: &[f32],
    n: usize,
    xl: F32Layout,
    layout: U8Layout,
    quant: Quant,
    out: &mut [u8],
) -> Result<(), KernelError> {
    if (xl.h, xl.w, xl.c) != (layout.h, layout.w, layout.c) {
        return Err(KernelError::shape("quantize: layouts do not match"));
    }
    check_len("quantize input", x.len(), mul_dims(&[n, xl.sample_len()])?)?;
    check_len(
        "quantize output",
        out.len(),
        mul_dims(&[n, layout.sample_len()])?,
    )?;
    let fq = FastQuant::new(quant);
    for b in 0..n {
        for yy in 0..layout.h {
            for xx in 0..layout.w {
                let src = xl.offset(b, yy, xx);
                let dst = layout.offset(b, yy, xx);
                quantize_pixel(&x[src..src + layout.c], &mut out[dst..dst + layout.c], &fq);
            }
        }
    }
    Ok(())
}

/// Quantizes one pixel's channels (`src.len() == dst.len()`) exactly as [`Quant::quantize`]:
/// the one routine behind [`quantize_nhwc_to_u8`] and the fused stem of `direct.rs`.
#[inline]
pub(crate) fn quantize_pixel(src: &[f32], dst: &mut [u8], fq: &FastQuant) {
    let c = src.len().min(dst.len());
    // SAFETY: `best` is supported here; both slices hold at least `c` values.
    unsafe { EpilogueImpl::best().quantize_unchecked(src.as_ptr(), dst.as_mut_ptr(), c, fq) };
}

/// NCHW `f32` -> NHWC `f32` (channel padding untouched).
pub fn nchw_to_nhwc(
    x: &[f32],
    n: usize,
    layout: F32Layout,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (c, h, w) = (layout.c, layout.h, layout.w);
    check_len("nhwc input", x.len(), mul_dims(&[n, c, h, w])?)?;
    check_len(
        "nhwc output",
        out.len(),
        mul_dims(&[n, layout.sample_len()])?,
    )?;
    for b in 0..n {
        for ch in 0..c {
            let src = &x[(b * c + ch) * h * w..(b * c + ch + 1) * h * w];
            for (i, &v) in src.iter().enumerate() {
                out[b * layout.sample_len() + i * layout.cs + ch] = v;
            }
        }
    }
    Ok(())
}

/// NHWC `f32` -> NCHW `f32`.
pub fn nhwc_to_nchw(
    x: &[f32],
    n: usize,
    layout: F32Layout,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (c, h, w) = (layout.c, layout.h, layout.w);
    check_len("nchw input", x.len(), mul_dims(&[n, layout.sample_len()])?)?;
    check_len("nchw output", out.len(), mul_dims(&[n, c, h, w])?)?;
    for b in 0..n {
        for ch in 0..c {
            let dst = &mut out[(b * c + ch) * h * w..(b * c + ch + 1) * h * w];
            for (i, v) in dst.iter_mut().enumerate() {
                *v = x[b * layout.sample_len() + i * layout.cs + ch];
            }
        }
    }
    Ok(())
}
