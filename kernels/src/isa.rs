//! Instruction-set selection: which kernel variant runs.

use crate::error::KernelError;
use std::fmt;
use std::str::FromStr;

/// A kernel variant. Every variant computes bit-identical results; they differ in speed only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, no target features beyond the baseline of the build target.
    Scalar,
    /// x86-64 AVX2 (+FMA, BMI1/2, LZCNT).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/CD/DQ.
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Isa {
    /// All variants, best last.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// The name used by `SHIFTSERVE_KERNEL` and for reporting.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU (and this build's target architecture) can run the variant.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("bmi1")
                    && std::arch::is_x86_feature_detected!("bmi2")
                    && std::arch::is_x86_feature_detected!("lzcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512cd")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    pub(crate) fn check_supported(self) -> Result<(), KernelError> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(KernelError::unsupported(format!(
                "kernel variant `{self}` is not supported on this CPU (available: {})",
                names(&available_isas())
            )))
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        Isa::ALL.into_iter().find(|i| i.name() == t).ok_or_else(|| {
            KernelError::unsupported(format!(
                "unknown kernel variant `{s}`: expected one of scalar, avx2, avx512, neon"
            ))
        })
    }
}

fn names(v: &[Isa]) -> String {
    v.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

/// Variants this CPU supports, best first (the first one is what `selected_isa` picks by default).
pub fn available_isas() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .rev()
        .filter(|i| i.is_supported())
        .collect()
}

/// The best variant this CPU supports.
pub fn best_isa() -> Isa {
    available_isas()[0]
}

/// Resolves a `SHIFTSERVE_KERNEL` value (`None` or empty = best available). An unknown name or a
/// variant this CPU cannot run is an error.
pub fn isa_from_setting(value: Option<&str>) -> Result<Isa, KernelError> {
    match value.map(str::trim) {
        None | Some("") => Ok(best_isa()),
        Some(v) => {
            let isa: Isa = v.parse().map_err(|e: KernelError| {
                KernelError::unsupported(format!("SHIFTSERVE_KERNEL: {e}"))
            })?;
            isa.check_supported()
                .map_err(|e| KernelError::unsupported(format!("SHIFTSERVE_KERNEL={v}: {e}")))?;
            Ok(isa)
        }
    }
}

/// The shift-add variant for layers the older layer code runs: the best instruction set among
/// the kernels `SHIFTSERVE_KERNEL` allows (see [`crate::KernelPolicy`]; unset = every kernel),
/// resolved once for the life of the process. An unknown or unsupported setting is an error.
pub fn selected_isa() -> Result<Isa, KernelError> {
    crate::policy::KernelPolicy::from_env().map(|p| p.legacy_isa())
}

/// Whether the int8 dot-product baseline can use AVX-512 VNNI (`vpdpbusd`) on this CPU.
pub fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
