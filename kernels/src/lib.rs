//! Shift-add kernels for power-of-two weight networks (see `docs/kernels.md`).
//!
//! * [`PackedShift`]: weights in the storage layout of `docs/format.md` (bit planes).
//! * [`PreparedShift`]: the same weights in the compute layout of one [`Isa`], built once.
//! * [`ShiftConv2d`], [`ShiftLinear`]: shift layers with the integer path (u8 activations,
//!   exact `i32` sums of `±(a << m)`, no multiply in the inner loop) or the float path (exact
//!   exponent-field products, `f32` sums in ascending `k`), and a fused epilogue (scale, bias,
//!   residual, ReLU, optional requantization to `u8`).
//! * [`Conv2dF32`], [`LinearF32`], [`gemm_f32`]: fp32 layers through the `gemm` crate.
//! * [`max_pool2d`], [`avg_pool2d`], [`global_avg_pool`].
//!
//! Every layer's `forward` takes a caller-owned [`Workspace`] and an explicit thread count; no
//! global thread pool exists. The kernel variant is chosen by [`selected_isa`] (environment
//! variable `SHIFTSERVE_KERNEL=scalar|avx2|avx512|neon`, else the best the CPU supports) and every
//! variant gives bit-identical results.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

pub mod baseline;

mod direct;
mod error;
pub mod float;
mod fp32;
#[cfg(target_arch = "x86_64")]
mod gemv512;
mod isa;
mod kern;
mod layers;
#[cfg(target_arch = "x86_64")]
mod lutgemv;
mod ops;
mod packed;
mod policy;
mod pool;
mod prepared;
pub mod qconv;
pub mod reference;
mod simd;
mod workers;
mod workspace;

pub use direct::FusedScratch;
pub use error::{ErrorKind, KernelError};
pub use fp32::{gemm_f32, Conv2dF32, LinearF32};
pub use isa::{available_isas, best_isa, has_avx512_vnni, isa_from_setting, selected_isa, Isa};
pub use layers::{ConvGeom, Epilogue, Input, NumericPath, ShiftConv2d, ShiftLinear};
pub use ops::{quantize_u8, Output, Quant};
pub use packed::{Code, PackedShift};
pub use policy::{min_time, timed, KernelPolicy, TuneKey};
pub use pool::{avg_pool2d, global_avg_pool, max_pool2d, max_pool2d_nhwc, Pool2d};
pub use prepared::{
    shift_gemm_f32, shift_gemm_f32_blocked, shift_gemm_i32, shift_gemm_i32_blocked,
    BlockedActivations, PreparedShift,
};
pub use qconv::{ConvKernel, Family, QConv2d, QOutputs, QScratch, U8Target};
pub use workers::{TaskCounter, Workers};
pub use workspace::{Scratch, Workspace};
