//! Which kernels may run (`SHIFTSERVE_KERNEL`), and the per-layer choice among them by
//! measurement.
//!
//! `SHIFTSERVE_KERNEL` is a comma-separated list; each item is
//! * `auto` (or unset/empty): every kernel this CPU supports;
//! * a family: `shift` (alias `multiplication-free`): the shift-add table kernels only;
//!   `dot`: the dot-product kernels only;
//! * an instruction set: `scalar`, `avx2`, `avx512`, `neon`: the kernels of that set, both
//!   families (`avx2` includes AVX-VNNI);
//! * a kernel name (`shift-avx512`, `dot-avx512vnni`, ...; see [`ConvKernel::name`]).
//!
//! The result must contain at least one kernel this CPU supports, and every named item must be
//! known and supported here; otherwise it is an error naming what is available (the server
//! refuses to start on it).
//!
//! Layers that only the older layer code runs (float path, grouped convolutions, shift linear
//! layers) use the best [`Isa`] among the allowed kernels' instruction sets.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::error::KernelError;
use crate::isa::Isa;
use crate::qconv::{ConvKernel, Family};

/// The kernels a process may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPolicy {
    allowed: Vec<ConvKernel>,
    setting: String,
}

impl KernelPolicy {
    /// Every kernel this CPU supports.
    pub fn auto() -> KernelPolicy {
        KernelPolicy {
            allowed: ConvKernel::supported(),
            setting: "auto".into(),
        }
    }

    /// Parses a `SHIFTSERVE_KERNEL` value (see the module docs).
    pub fn parse(value: Option<&str>) -> Result<KernelPolicy, KernelError> {
        let v = value.map(str::trim).unwrap_or("");
        if v.is_empty() || v.eq_ignore_ascii_case("auto") {
            return Ok(KernelPolicy::auto());
        }
        let supported = ConvKernel::supported();
        let mut allowed: Vec<ConvKernel> = Vec::new();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let l = item.to_ascii_lowercase();
            let set: Vec<ConvKernel> = match l.as_str() {
                "auto" => supported.clone(),
                "shift" | "multiplication-free" => supported
                    .iter()
                    .copied()
                    .filter(|k| k.family() == Family::MultiplicationFree)
                    .collect(),
                "dot" => supported
                    .iter()
                    .copied()
                    .filter(|k| k.family() == Family::DotProduct)
                    .collect(),
                _ => {
                    if let Ok(isa) = l.parse::<Isa>() {
                        isa.check_supported().map_err(|e| {
                            KernelError::unsupported(format!("SHIFTSERVE_KERNEL={v}: {e}"))
                        })?;
                        supported
                            .iter()
                            .copied()
                            .filter(|k| k.isa() == isa)
                            .collect()
                    } else if let Some(k) = ConvKernel::from_name(&l) {
                        if !k.is_supported() {
                            return Err(KernelError::unsupported(format!(
                                "SHIFTSERVE_KERNEL={v}: kernel {k} is not supported by this CPU \
                                 (available: {})",
                                names(&supported)
                            )));
                        }
                        vec![k]
                    } else {
                        return Err(KernelError::unsupported(format!(
                            "SHIFTSERVE_KERNEL={v}: unknown item '{item}' (use auto, shift, dot, \
                             an instruction set scalar|avx2|avx512|neon, or a kernel name: {})",
                            names(&ConvKernel::ALL)
                        )));
                    }
                }
            };
            for k in set {
                if !allowed.contains(&k) {
                    allowed.push(k);
                }
            }
        }
        if allowed.is_empty() {
            return Err(KernelError::unsupported(format!(
                "SHIFTSERVE_KERNEL={v} allows no kernel this CPU supports (available: {})",
                names(&supported)
            )));
        }
        Ok(KernelPolicy {
            allowed,
            setting: v.to_string(),
        })
    }

    /// The policy of this process (`SHIFTSERVE_KERNEL`), parsed once.
    pub fn from_env() -> Result<KernelPolicy, KernelError> {
        static P: OnceLock<Result<KernelPolicy, KernelError>> = OnceLock::new();
        P.get_or_init(|| KernelPolicy::parse(std::env::var("SHIFTSERVE_KERNEL").ok().as_deref()))
            .clone()
    }

    /// Allowed kernels, in [`ConvKernel::ALL`] order.
    pub fn allowed(&self) -> Vec<ConvKernel> {
        ConvKernel::ALL
            .into_iter()
            .filter(|k| self.allowed.contains(k))
            .collect()
    }

    /// The setting as given (`auto` when unset).
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// The instruction set for layers only the older layer code runs: the best among the
    /// allowed kernels' sets.
    pub fn legacy_isa(&self) -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.is_supported() && self.allowed.iter().any(|k| k.isa() == *i))
            .unwrap_or(Isa::Scalar)
    }

    /// Allowed kernels that can run a layer with weights of this code and width.
    pub fn candidates(&self, code: crate::Code, bits: u8) -> Vec<ConvKernel> {
        self.allowed()
            .into_iter()
            .filter(|k| k.handles(code, bits))
            .collect()
    }
}

fn names(v: &[ConvKernel]) -> String {
    v.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// Process-wide cache of measured layer times: the same layer shape is timed once per kernel,
/// batch and thread count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TuneKey {
    pub in_c: usize,
    pub out_c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub h: usize,
    pub w: usize,
    pub batch: usize,
    pub threads: usize,
    pub kernel: ConvKernel,
}

fn cache() -> &'static Mutex<HashMap<TuneKey, f64>> {
    static C: OnceLock<Mutex<HashMap<TuneKey, f64>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Returns the cached seconds for `key`, or runs `measure` and caches what it returns.
pub fn timed(key: TuneKey, measure: impl FnOnce() -> f64) -> f64 {
    if let Some(&t) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return t;
    }
    let t = measure();
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, t);
    t
}

/// Shortest of `reps` runs of `f` (seconds), after one warm-up run.
pub fn min_time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_into_kernel_sets() {
        let auto = KernelPolicy::parse(None).unwrap();
        assert_eq!(auto.allowed(), ConvKernel::supported());
        assert_eq!(KernelPolicy::parse(Some(" ")).unwrap(), auto);
        let shift = KernelPolicy::parse(Some("shift")).unwrap();
        assert!(shift
            .allowed()
            .iter()
            .all(|k| k.family() == Family::MultiplicationFree));
        assert!(shift.allowed().contains(&ConvKernel::Shift(Isa::Scalar)));
        let dot = KernelPolicy::parse(Some("DOT")).unwrap();
        assert!(dot
            .allowed()
            .iter()
            .all(|k| k.family() == Family::DotProduct));
        let sc = KernelPolicy::parse(Some("scalar")).unwrap();
        assert_eq!(
            sc.allowed(),
            vec![ConvKernel::Shift(Isa::Scalar), ConvKernel::DotScalar]
        );
        assert_eq!(sc.legacy_isa(), Isa::Scalar);
        let two = KernelPolicy::parse(Some("shift-scalar, dot-scalar")).unwrap();
        assert_eq!(two.allowed(), sc.allowed());
        assert_eq!(shift.legacy_isa(), crate::best_isa());
    }

    #[test]
    fn unknown_or_unsupported_settings_are_errors() {
        for bad in ["foo", "scalar,foo", "shift-foo"] {
            let e = KernelPolicy::parse(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("unknown item"), "{bad}: {e}");
        }
        #[cfg(target_arch = "x86_64")]
        {
            let e = KernelPolicy::parse(Some("neon")).unwrap_err();
            assert!(e.to_string().contains("SHIFTSERVE_KERNEL=neon"), "{e}");
            let e = KernelPolicy::parse(Some("dot-neon-sdot")).unwrap_err();
            assert!(e.to_string().contains("not supported"), "{e}");
        }
    }
}
