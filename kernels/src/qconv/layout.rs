//! Activation layouts of the quantized runtime.
//!
//! * [`U8Layout`]: quantized activations, NHWC `u8`, channels padded to a multiple of
//!   [`CHANNEL_ALIGN`], surrounded by a border of `border` pixels that holds the zero point of the
//!   quantization (so a convolution with padding `p <= border` reads its padding from memory
//!   instead of testing bounds). Written by the producing layer's epilogue, read by the next
//!   convolution.
//! * [`F32Layout`]: `f32` activations, NHWC, channels padded likewise; used for residual inputs
//!   (read by the epilogue) and as the float form of a value between quantized layers.

/// Channel padding of both layouts: a multiple of the widest oc vector (16 `i32` lanes) and of
/// the 4-byte groups the dot-product instructions read.
pub const CHANNEL_ALIGN: usize = 16;

/// Geometry of one sample of a padded NHWC `u8` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct U8Layout {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Channel stride (`c` rounded up to [`CHANNEL_ALIGN`]).
    pub cs: usize,
    /// Border pixels on every side (filled with the zero point).
    pub border: usize,
}

impl U8Layout {
    pub fn new(h: usize, w: usize, c: usize, border: usize) -> U8Layout {
        U8Layout {
            h,
            w,
            c,
            cs: c.div_ceil(CHANNEL_ALIGN) * CHANNEL_ALIGN,
            border,
        }
    }
    /// Bytes between vertically adjacent pixels.
    #[inline]
    pub fn row_stride(&self) -> usize {
        (self.w + 2 * self.border) * self.cs
    }
    /// Bytes of one sample, border included.
    #[inline]
    pub fn sample_len(&self) -> usize {
        (self.h + 2 * self.border) * self.row_stride()
    }
    /// Offset of pixel `(y, x)` of sample `b` (interior coordinates).
    #[inline]
    pub fn offset(&self, b: usize, y: usize, x: usize) -> usize {
        b * self.sample_len() + (y + self.border) * self.row_stride() + (x + self.border) * self.cs
    }
    /// Fills a buffer of `n` samples: the border with `fill`, the interior with `fill` too (the
    /// producer overwrites it).
    pub fn init(&self, buf: &mut [u8], fill: u8) {
        buf.fill(fill);
    }
}

/// Geometry of one sample of an NHWC `f32` tensor (no border).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct F32Layout {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub cs: usize,
}

impl F32Layout {
    pub fn new(h: usize, w: usize, c: usize) -> F32Layout {
        F32Layout {
            h,
            w,
            c,
            cs: c.div_ceil(CHANNEL_ALIGN) * CHANNEL_ALIGN,
        }
    }
    #[inline]
    pub fn sample_len(&self) -> usize {
        self.h * self.w * self.cs
    }
    #[inline]
    pub fn offset(&self, b: usize, y: usize, x: usize) -> usize {
        b * self.sample_len() + (y * self.w + x) * self.cs
    }
}
