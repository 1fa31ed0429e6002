//! Storage layout of power-of-two weights: bit planes (docs/format.md, "Packed power-of-two
//! weights").

use crate::error::{mul_dims, KernelError};

/// How a `bits`-bit code maps to an integer weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// DenseShift: `(-1)^s * 2^m`, bits 2..=4 (W2 ±{1,2}, W3 ±{1,2,4,8}, W4 ±{1..128}).
    ZeroFree,
    /// DeepShift / S3: `0` if `m == 0`, else `(-1)^s * 2^(m-1)`; bits 2..=5. A zero must have
    /// `s = 0`.
    WithZero,
}

impl Code {
    /// Whether `bits` is a valid width for this code.
    pub fn supports_bits(self, bits: u8) -> bool {
        match self {
            Code::ZeroFree => (2..=4).contains(&bits),
            Code::WithZero => (2..=5).contains(&bits),
        }
    }

    /// Parses the format's `"code"` attribute (`zero_free` / `with_zero`).
    pub fn from_name(s: &str) -> Result<Code, KernelError> {
        match s {
            "zero_free" => Ok(Code::ZeroFree),
            "with_zero" => Ok(Code::WithZero),
            _ => Err(KernelError::invalid(format!(
                "unknown weight code `{s}` (expected zero_free or with_zero)"
            ))),
        }
    }

    /// The format's name for this code.
    pub fn name(self) -> &'static str {
        match self {
            Code::ZeroFree => "zero_free",
            Code::WithZero => "with_zero",
        }
    }

    /// Decodes sign bit `s` and magnitude field `m`. `None` for the forbidden negative zero.
    pub(crate) fn decode(self, s: bool, m: u32) -> Option<i32> {
        let v = match self {
            Code::ZeroFree => 1i32 << m,
            Code::WithZero => {
                if m == 0 {
                    return if s { None } else { Some(0) };
                }
                1i32 << (m - 1)
            }
        };
        Some(if s { -v } else { v })
    }

    /// Largest |weight| representable with `bits`.
    pub fn max_abs(self, bits: u8) -> i32 {
        let mmax = (1u32 << (bits - 1)) - 1;
        match self {
            Code::ZeroFree => 1 << mmax,
            Code::WithZero => 1 << (mmax - 1),
        }
    }
}

/// One weight's code as used by the compute layouts: `s | m << 1` (`s` = sign bit, `m` =
/// magnitude field), in `0..2^bits`.
pub(crate) type CodeIdx = u8;

/// Decoded meaning of a code index: the weight is `0` if `zero`, else `(-1)^neg * 2^shift`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CodeOp {
    pub shift: u32,
    pub neg: bool,
    pub zero: bool,
}

impl CodeOp {
    pub(crate) fn of(code: Code, c: CodeIdx) -> CodeOp {
        let s = c & 1 == 1;
        let m = (c >> 1) as u32;
        match code {
            Code::ZeroFree => CodeOp {
                shift: m,
                neg: s,
                zero: false,
            },
            Code::WithZero => {
                if m == 0 {
                    // The negative-zero code never survives validation; treat it as zero anyway.
                    CodeOp {
                        shift: 0,
                        neg: false,
                        zero: true,
                    }
                } else {
                    CodeOp {
                        shift: m - 1,
                        neg: s,
                        zero: false,
                    }
                }
            }
        }
    }
    pub(crate) fn value(self) -> i32 {
        if self.zero {
            0
        } else if self.neg {
            -(1 << self.shift)
        } else {
            1 << self.shift
        }
    }
}

/// A `rows x cols` matrix of power-of-two weights in the storage layout of docs/format.md:
/// `bits` bit planes (plane 0 = sign, planes 1.. = magnitude bits, LSB first), each
/// `ceil(rows*cols/8)` bytes, weight `i = r*cols + c` at bit `i % 8` of byte `i / 8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedShift {
    code: Code,
    bits: u8,
    rows: usize,
    cols: usize,
    plane_len: usize,
    planes: Vec<u8>,
}

fn check_header(code: Code, bits: u8, rows: usize, cols: usize) -> Result<usize, KernelError> {
    if !code.supports_bits(bits) {
        return Err(KernelError::invalid(format!(
            "{} weights cannot have {bits} bits (zero_free: 2..=4, with_zero: 2..=5)",
            code.name()
        )));
    }
    if rows == 0 || cols == 0 {
        return Err(KernelError::shape(format!(
            "weight matrix must be non-empty, got {rows}x{cols}"
        )));
    }
    let n = mul_dims(&[rows, cols])?;
    Ok(n.div_ceil(8))
}

impl PackedShift {
    /// Wraps planes read from a model file, validating them completely: the length must be
    /// `bits * ceil(rows*cols/8)`, padding bits in each plane's last byte must be zero, and (for
    /// `with_zero`) no weight may be a negative zero.
    pub fn from_planes(
        code: Code,
        bits: u8,
        rows: usize,
        cols: usize,
        planes: &[u8],
    ) -> Result<Self, KernelError> {
        let plane_len = check_header(code, bits, rows, cols)?;
        let want = plane_len * bits as usize;
        if planes.len() != want {
            return Err(KernelError::corrupt(format!(
                "packed weights {rows}x{cols} at {bits} bits need {bits} planes of {plane_len} \
                 bytes ({want} bytes), got {} bytes",
                planes.len()
            )));
        }
        let n = rows * cols;
        let tail = n % 8;
        if tail != 0 {
            let pad_mask = !((1u8 << tail) - 1);
            for b in 0..bits as usize {
                let last = planes[b * plane_len + plane_len - 1];
                if last & pad_mask != 0 {
                    return Err(KernelError::corrupt(format!(
                        "packed weights: padding bits set in the last byte of plane {b}"
                    )));
                }
            }
        }
        if code == Code::WithZero {
            for j in 0..plane_len {
                let mut mag = 0u8;
                for b in 1..bits as usize {
                    mag |= planes[b * plane_len + j];
                }
                let neg_zero = planes[j] & !mag;
                if neg_zero != 0 {
                    let i = j * 8 + neg_zero.trailing_zeros() as usize;
                    return Err(KernelError::corrupt(format!(
                        "packed weights: negative zero code at row {}, column {}",
                        i / cols,
                        i % cols
                    )));
                }
            }
        }
        Ok(PackedShift {
            code,
            bits,
            rows,
            cols,
            plane_len,
            planes: planes.to_vec(),
        })
    }

    /// Encodes integer weights (row-major `rows x cols`). Every value must be representable by
    /// `code` at `bits` bits.
    pub fn from_values(
        code: Code,
        bits: u8,
        rows: usize,
        cols: usize,
        values: &[i32],
    ) -> Result<Self, KernelError> {
        let plane_len = check_header(code, bits, rows, cols)?;
        crate::error::check_len("weight values", values.len(), rows * cols)?;
        let ncodes = 1u32 << bits;
        let mut planes = vec![0u8; plane_len * bits as usize];
        for (i, &v) in values.iter().enumerate() {
            let c = (0..ncodes)
                .find(|&c| {
                    let (s, m) = (c & 1 == 1, c >> 1);
                    code.decode(s, m) == Some(v)
                })
                .ok_or_else(|| {
                    KernelError::invalid(format!(
                        "weight {v} at row {}, column {} is not a {}-bit {} value",
                        i / cols,
                        i % cols,
                        bits,
                        code.name()
                    ))
                })?;
            for b in 0..bits as usize {
                if (c >> b) & 1 == 1 {
                    planes[b * plane_len + i / 8] |= 1 << (i % 8);
                }
            }
        }
        Ok(PackedShift {
            code,
            bits,
            rows,
            cols,
            plane_len,
            planes,
        })
    }

    /// The code index `s | m << 1` of weight number `i = r*cols + c`.
    #[inline]
    pub(crate) fn code_idx(&self, i: usize) -> CodeIdx {
        let (byte, bit) = (i / 8, i % 8);
        let mut c = 0u8;
        for b in 0..self.bits as usize {
            c |= ((self.planes[b * self.plane_len + byte] >> bit) & 1) << b;
        }
        c
    }

    /// All code indices, row-major.
    pub(crate) fn code_indices(&self) -> Vec<CodeIdx> {
        (0..self.rows * self.cols)
            .map(|i| self.code_idx(i))
            .collect()
    }

    /// The decoded integer weight at row `r`, column `c`. Panics if out of range (like slice
    /// indexing).
    pub fn value(&self, r: usize, c: usize) -> i32 {
        assert!(
            r < self.rows && c < self.cols,
            "weight index ({r}, {c}) out of range"
        );
        CodeOp::of(self.code, self.code_idx(r * self.cols + c)).value()
    }

    /// All decoded weights, row-major.
    pub fn values(&self) -> Vec<i32> {
        (0..self.rows * self.cols)
            .map(|i| CodeOp::of(self.code, self.code_idx(i)).value())
            .collect()
    }

    /// The bit planes, `bits * ceil(rows*cols/8)` bytes.
    pub fn planes(&self) -> &[u8] {
        &self.planes
    }
    pub fn code(&self) -> Code {
        self.code
    }
    pub fn bits(&self) -> u8 {
        self.bits
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
}
