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
    }
}
