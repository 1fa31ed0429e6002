//! Minimal explicit vectors of `i16` for the hot loop of the integer table kernel (auto-
//! vectorization is reliable for the table build but not for a register-blocked accumulator
//! array on every target). Methods are `#[inline(always)]`; the intrinsics inline once the
//! caller (a `#[multiversion::target]` wrapper) has the features.

#[allow(clippy::missing_safety_doc)]
pub(crate) trait V16: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const i16) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn store(self, p: *mut i16);
    /// `dst[0..N] = (first ? 0 : dst[0..N]) + widen(self)` in `i32`.
    unsafe fn widen_into(self, dst: *mut i32, first: bool);
}

/// Portable fallback: 8 lanes in an array.
#[derive(Clone, Copy)]
pub(crate) struct Arr8([i16; 8]);

impl V16 for Arr8 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Arr8([0; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const i16) -> Self {
        Arr8(std::ptr::read_unaligned(p as *const [i16; 8]))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for j in 0..8 {
            r[j] = r[j].wrapping_add(o.0[j]);
        }
        Arr8(r)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut i16) {
        std::ptr::write_unaligned(p as *mut [i16; 8], self.0)
    }
    #[inline(always)]
    unsafe fn widen_into(self, dst: *mut i32, first: bool) {
        for j in 0..8 {
            let d = dst.add(j);
            *d = if first { 0 } else { *d }.wrapping_add(self.0[j] as i32);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::V16;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Y(__m256i);
    impl V16 for Y {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Y(_mm256_setzero_si256())
        }
        #[inline(always)]
        unsafe fn load(p: *const i16) -> Self {
            Y(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Y(_mm256_add_epi16(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i16) {
            _mm256_storeu_si256(p as *mut __m256i, self.0)
        }
        #[inline(always)]
        unsafe fn widen_into(self, dst: *mut i32, first: bool) {
            let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(self.0));
            let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(self.0));
            let (d0, d1) = (dst as *mut __m256i, dst.add(8) as *mut __m256i);
            if first {
                _mm256_storeu_si256(d0, lo);
                _mm256_storeu_si256(d1, hi);
            } else {
                _mm256_storeu_si256(d0, _mm256_add_epi32(_mm256_loadu_si256(d0), lo));
                _mm256_storeu_si256(d1, _mm256_add_epi32(_mm256_loadu_si256(d1), hi));
            }
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Z(__m512i);
    impl V16 for Z {
        const N: usize = 32;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Z(_mm512_setzero_si512())
        }
        #[inline(always)]
        unsafe fn load(p: *const i16) -> Self {
            Z(_mm512_loadu_si512(p as *const __m512i))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Z(_mm512_add_epi16(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i16) {
            _mm512_storeu_si512(p as *mut __m512i, self.0)
        }
        #[inline(always)]
        unsafe fn widen_into(self, dst: *mut i32, first: bool) {
            let lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(self.0));
            let hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(self.0));
            let (d0, d1) = (dst as *mut __m512i, dst.add(16) as *mut __m512i);
            if first {
                _mm512_storeu_si512(d0, lo);
                _mm512_storeu_si512(d1, hi);
            } else {
                _mm512_storeu_si512(d0, _mm512_add_epi32(_mm512_loadu_si512(d0), lo));
                _mm512_storeu_si512(d1, _mm512_add_epi32(_mm512_loadu_si512(d1), hi));
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod arm {
    use super::V16;
    use std::arch::aarch64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Q(int16x8_t);
    impl V16 for Q {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Q(vdupq_n_s16(0))
        }
        #[inline(always)]
        unsafe fn load(p: *const i16) -> Self {
            Q(vld1q_s16(p))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Q(vaddq_s16(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i16) {
            vst1q_s16(p, self.0)
        }
        #[inline(always)]
        unsafe fn widen_into(self, dst: *mut i32, first: bool) {
            let lo = vmovl_s16(vget_low_s16(self.0));
            let hi = vmovl_high_s16(self.0);
            if first {
                vst1q_s32(dst, lo);
                vst1q_s32(dst.add(4), hi);
            } else {
                vst1q_s32(dst, vaddq_s32(vld1q_s32(dst), lo));
                vst1q_s32(dst.add(4), vaddq_s32(vld1q_s32(dst.add(4)), hi));
            }
        }
    }
}

/// Explicit `f32` vectors for the float-path table kernel (plain adds: no FMA).
#[allow(clippy::missing_safety_doc)]
pub(crate) trait VF: Copy {
    /// Lane type (`f32`, or `i32` with wrapping adds).
    type E: Copy + Default;
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const Self::E) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn store(self, p: *mut Self::E);
}

#[derive(Clone, Copy)]
pub(crate) struct ArrF8([f32; 8]);

impl VF for ArrF8 {
    type E = f32;
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        ArrF8([0.0; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        ArrF8(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for j in 0..8 {
            r[j] += o.0[j];
        }
        ArrF8(r)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86f {
    use super::VF;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct YF(__m256);
    impl VF for YF {
        type E = f32;
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            YF(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            YF(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            YF(_mm256_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct ZF(__m512);
    impl VF for ZF {
        type E = f32;
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            ZF(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            ZF(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            ZF(_mm512_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod armf {
    use super::VF;
    use std::arch::aarch64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct QF(float32x4_t);
    impl VF for QF {
        type E = f32;
        const N: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            QF(vdupq_n_f32(0.0))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            QF(vld1q_f32(p))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            QF(vaddq_f32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            vst1q_f32(p, self.0)
        }
    }
}

/// `i32` lanes (wrapping adds) for the integer table kernel of wide codes.
#[derive(Clone, Copy)]
pub(crate) struct ArrI8([i32; 8]);

impl VF for ArrI8 {
    type E = i32;
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        ArrI8([0; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const i32) -> Self {
        ArrI8(std::ptr::read_unaligned(p as *const [i32; 8]))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for j in 0..8 {
            r[j] = r[j].wrapping_add(o.0[j]);
        }
        ArrI8(r)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut i32) {
        std::ptr::write_unaligned(p as *mut [i32; 8], self.0)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86i {
    use super::VF;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct YI(__m256i);
    impl VF for YI {
        type E = i32;
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            YI(_mm256_setzero_si256())
        }
        #[inline(always)]
        unsafe fn load(p: *const i32) -> Self {
            YI(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            YI(_mm256_add_epi32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm256_storeu_si256(p as *mut __m256i, self.0)
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct ZI(__m512i);
    impl VF for ZI {
        type E = i32;
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            ZI(_mm512_setzero_si512())
        }
        #[inline(always)]
        unsafe fn load(p: *const i32) -> Self {
            ZI(_mm512_loadu_si512(p as *const __m512i))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            ZI(_mm512_add_epi32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            _mm512_storeu_si512(p as *mut __m512i, self.0)
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod armi {
    use super::VF;
    use std::arch::aarch64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct QI(int32x4_t);
    impl VF for QI {
        type E = i32;
        const N: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            QI(vdupq_n_s32(0))
        }
        #[inline(always)]
        unsafe fn load(p: *const i32) -> Self {
            QI(vld1q_s32(p))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            QI(vaddq_s32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut i32) {
            vst1q_s32(p, self.0)
        }
    }
}
