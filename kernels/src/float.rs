//! Multiplication-free exact products `x * (±2^shift)` and `x * 0` on IEEE-754 binary32 bits.
//!
//! For a finite `x` the product is formed by shifting the significand while `x` is subnormal and
//! adding the rest of `shift` to the exponent field, saturating to infinity on overflow; the sign
//! is XORed. This equals IEEE multiplication exactly (a power-of-two scaling never rounds unless
//! it overflows, which rounds to infinity). A NaN input is returned quieted with its payload and
//! sign (what x86 and Arm multipliers do). The functions are branch-free so they vectorize.

const SIGN: u32 = 0x8000_0000;
const ABS: u32 = 0x7fff_ffff;
const INF: u32 = 0x7f80_0000;
const QUIET: u32 = 0x0040_0000;
/// The NaN produced by `inf * 0` (IEEE default quiet NaN, positive).
pub const DEFAULT_NAN: u32 = 0x7fc0_0000;

/// Bits of `x * 2^shift`, negated if `neg` (`neg` is 0 or `0x8000_0000`); `shift <= 31`.
#[inline(always)]
pub fn mul_pow2_bits(x: u32, shift: u32, neg: u32) -> u32 {
    let sign = x & SIGN;
    let abs = x & ABS;
    // Subnormal (or zero) significands move left until bit 23 is reached.
    let sub_room = abs.leading_zeros().saturating_sub(8);
    let s1 = if shift < sub_room { shift } else { sub_room };
    let fin = (abs << s1).wrapping_add((shift - s1) << 23);
    let fin = if fin > INF || fin < abs { INF } else { fin };
    let is_nan = abs > INF;
    let r_abs = if is_nan { abs | QUIET } else { fin };
    let r_sign = if is_nan { sign } else { sign ^ neg };
    r_abs | r_sign
}

/// Bits of `x * (+0.0)`.
#[inline(always)]
pub fn mul_zero_bits(x: u32) -> u32 {
    let abs = x & ABS;
    if abs > INF {
        abs | QUIET | (x & SIGN)
    } else if abs == INF {
        DEFAULT_NAN
    } else {
        x & SIGN
    }
}

/// `x * w` for the power-of-two (or zero) weight described by `(shift, neg, zero)`.
#[inline(always)]
pub(crate) fn mul_code_bits(x: u32, shift: u32, neg: bool, zero: bool) -> u32 {
    if zero {
        mul_zero_bits(x)
    } else {
        mul_pow2_bits(x, shift, if neg { SIGN } else { 0 })
    }
}

/// `x * w` where `w` is `±2^shift`, as `f32` (for tests and callers outside the kernels).
pub fn mul_pow2(x: f32, shift: u32, negative: bool) -> f32 {
    f32::from_bits(mul_pow2_bits(
        x.to_bits(),
        shift,
        if negative { SIGN } else { 0 },
    ))
}
