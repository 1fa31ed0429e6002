//! `<repo>/<model>/config.toml`: batching, threads, deadline, version policy and warmup.
//! Every key is optional; unknown keys are rejected so typos do not silently fall back.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub description: Option<String>,
    pub max_batch_size: usize,
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay_us: u64,
    /// Wait up to `max_queue_delay_us` for a preferred batch size even when the model is idle
    /// (Triton's fixed delay). Off: an idle model runs a request at once.
    pub wait_when_idle: bool,
    /// After a batch, an inference thread that finds the queue empty polls it this long before
    /// it sleeps (one thread per model at a time): a request that arrives meanwhile starts
    /// without a thread wake-up, at the cost of up to this much CPU time per idle gap. 0: sleep
    /// at once.
    pub idle_spin_us: u64,
    pub queue_capacity: usize,
    /// How long a request that finds the queue full waits for room (in arrival order, within
    /// its deadline, before its body is read) until it is refused with 429. 0: refuse at once.
    pub max_queue_wait_ms: u64,
    pub threads: usize,
    pub instances: usize,
    pub timeout_ms: u64,
    pub version_policy: VersionPolicy,
    pub warmup: Warmup,
    /// Minimum top-1 score (softmax probability, in (0, 1]) of a task-API answer: below it the
    /// answer says the input was not understood (`"understood": false`, no intent) instead of
    /// naming a class it is unsure of. None: every answer is given.
    pub threshold: Option<f32>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            description: None,
            max_batch_size: 8,
            preferred_batch_sizes: Vec::new(),
            max_queue_delay_us: 2000,
            wait_when_idle: false,
            idle_spin_us: 0,
            queue_capacity: 256,
            max_queue_wait_ms: 1000,
            threads: 1,
            instances: 1,
            timeout_ms: 10_000,
            version_policy: VersionPolicy::Latest(1),
            warmup: Warmup::default(),
            threshold: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Warmup {
    pub batch_sizes: Vec<usize>,
    pub iterations: usize,
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup {
            batch_sizes: vec![1],
            iterations: 1,
        }
    }
}

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionPolicy {
    /// The `n` highest versions (`"latest"` is `Latest(1)`).
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPolicy {
    Name(String),
    Latest { latest: usize },
    Specific { specific: Vec<u64> },
}

impl<'de> Deserialize<'de> for VersionPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match RawPolicy::deserialize(d).map_err(|_| {
            D::Error::custom(r#"version_policy must be "latest", "all", { latest = N } or { specific = [..] }"#)
        })? {
            RawPolicy::Name(s) if s == "latest" => Ok(VersionPolicy::Latest(1)),
            RawPolicy::Name(s) if s == "all" => Ok(VersionPolicy::All),
            RawPolicy::Name(s) => Err(D::Error::custom(format!(
                "unknown version_policy \"{s}\" (expected \"latest\", \"all\", {{ latest = N }} or {{ specific = [..] }})"
            ))),
            RawPolicy::Latest { latest } => Ok(VersionPolicy::Latest(latest)),
            RawPolicy::Specific { specific } => Ok(VersionPolicy::Specific(specific)),
        }
    }
}

impl Serialize for VersionPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            VersionPolicy::All => s.serialize_str("all"),
            VersionPolicy::Latest(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("latest", n)?;
                m.end()
            }
            VersionPolicy::Specific(v) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("specific", v)?;
                m.end()
            }
        }
    }
}

impl VersionPolicy {
    /// Picks the served versions out of the available ones (any order in, ascending out).
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = available.to_vec();
        v.sort_unstable();
        v.dedup();
        match self {
            VersionPolicy::All => v,
            VersionPolicy::Latest(n) => {
                let skip = v.len().saturating_sub(*n);
                v.split_off(skip)
            }
            VersionPolicy::Specific(want) => v.into_iter().filter(|x| want.contains(x)).collect(),
        }
    }
}

pub const MAX_BATCH_LIMIT: usize = 1024;
/// Upper bounds of the other values: generous for any real deployment, small enough that a typo
/// (an extra few zeros) is an error rather than a queue that exhausts memory.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Longest `idle_spin_us`.
pub const MAX_IDLE_SPIN_US: u64 = 10_000;
pub const MAX_LIST_LEN: usize = 64;
pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_VERSIONS: usize = 10_000;

impl ModelConfig {
    pub fn parse(text: &str) -> Result<ModelConfig, String> {
        let cfg: ModelConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `config.toml` in `dir`; a missing file means all defaults.
    pub fn load(dir: &Path) -> Result<ModelConfig, String> {
        let path = dir.join("config.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => ModelConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelConfig::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 || self.max_batch_size > MAX_BATCH_LIMIT {
            return Err(format!(
                "max_batch_size must be in 1..={MAX_BATCH_LIMIT}, got {}",
                self.max_batch_size
            ));
        }
        for &p in &self.preferred_batch_sizes {
            if p == 0 || p > self.max_batch_size {
                return Err(format!(
                    "preferred_batch_sizes entry {p} must be in 1..=max_batch_size ({})",
                    self.max_batch_size
                ));
            }
        }
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(format!(
                "queue_capacity must be in 1..={MAX_QUEUE_CAPACITY}, got {}",
                self.queue_capacity
            ));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION_LEN)
        {
            return Err(format!(
                "description must be at most {MAX_DESCRIPTION_LEN} bytes"
            ));
        }
        if self.preferred_batch_sizes.len() > MAX_LIST_LEN
            || self.warmup.batch_sizes.len() > MAX_LIST_LEN
        {
            return Err(format!(
                "preferred_batch_sizes and warmup.batch_sizes take at most {MAX_LIST_LEN} entries"
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err(format!("threads must be in 1..=256, got {}", self.threads));
        }
        if self.instances == 0 || self.instances > 64 {
            return Err(format!(
                "instances must be in 1..=64, got {}",
                self.instances
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "timeout_ms must be in 1..={MAX_TIMEOUT_MS} (one hour), got {}",
                self.timeout_ms
            ));
        }
        if self.idle_spin_us > MAX_IDLE_SPIN_US {
            return Err(format!(
                "idle_spin_us must be in 0..={MAX_IDLE_SPIN_US} (10 ms), got {}",
                self.idle_spin_us
            ));
        }
        if self.max_queue_wait_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "max_queue_wait_ms must be in 0..={MAX_TIMEOUT_MS} (one hour), got {}",
                self.max_queue_wait_ms
            ));
        }
        if self.max_queue_delay_us > 60_000_000 {
            return Err("max_queue_delay_us must be at most 60 s".into());
        }
        match &self.version_policy {
            VersionPolicy::Latest(0) => {
                return Err("version_policy { latest = N } needs N >= 1".into())
            }
            VersionPolicy::Specific(v) if v.is_empty() || v.contains(&0) => {
                return Err(
                    "version_policy { specific = [..] } needs positive version numbers".into(),
                )
            }
            VersionPolicy::Latest(n) if *n > MAX_VERSIONS => {
                return Err(format!(
                    "version_policy {{ latest = N }} needs N <= {MAX_VERSIONS}"
                ))
            }
            VersionPolicy::Specific(v) if v.len() > MAX_VERSIONS => {
                return Err(format!(
                    "version_policy {{ specific = [..] }} takes at most {MAX_VERSIONS} versions"
                ))
            }
            _ => {}
        }
        for &b in &self.warmup.batch_sizes {
            if b == 0 || b > self.max_batch_size {
                return Err(format!(
                    "warmup batch size {b} must be in 1..=max_batch_size ({})",
                    self.max_batch_size
                ));
            }
        }
        if self.warmup.iterations > 1000 {
            return Err("warmup.iterations must be at most 1000".into());
        }
        if let Some(t) = self.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(format!("threshold must be in (0, 1], got {t}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        assert_eq!(ModelConfig::parse("").unwrap(), ModelConfig::default());
    }

    #[test]
    fn full_example_parses() {
        let c = ModelConfig::parse(
            r#"
description = "DenseShift W3 ResNet-20 on Fashion-MNIST"
max_batch_size = 8
preferred_batch_sizes = [4, 8]
max_queue_delay_us = 2000
queue_capacity = 256
threads = 1
instances = 1
timeout_ms = 10000
version_policy = "latest"
[warmup]
batch_sizes = [1, 8]
iterations = 2
"#,
        )
        .unwrap();
        assert_eq!(c.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(c.warmup.batch_sizes, vec![1, 8]);
        assert_eq!(c.version_policy, VersionPolicy::Latest(1));
    }

    #[test]
    fn version_policies() {
        let p = |s: &str| {
            ModelConfig::parse(&format!("version_policy = {s}")).map(|c| c.version_policy)
        };
        assert_eq!(p("\"all\"").unwrap(), VersionPolicy::All);
        assert_eq!(p("{ latest = 2 }").unwrap(), VersionPolicy::Latest(2));
        assert_eq!(
            p("{ specific = [1, 3] }").unwrap(),
            VersionPolicy::Specific(vec![1, 3])
        );
        assert!(p("\"newest\"").is_err());
        assert!(p("{ latest = 0 }").is_err());
        let avail = [3, 1, 2, 5];
        assert_eq!(VersionPolicy::Latest(1).select(&avail), vec![5]);
        assert_eq!(VersionPolicy::Latest(2).select(&avail), vec![3, 5]);
        assert_eq!(VersionPolicy::All.select(&avail), vec![1, 2, 3, 5]);
        assert_eq!(
            VersionPolicy::Specific(vec![1, 3, 9]).select(&avail),
            vec![1, 3]
        );
        assert_eq!(VersionPolicy::Latest(4).select(&[]), Vec::<u64>::new());
    }

    #[test]
    fn rejects_bad_values_and_unknown_keys() {
        assert!(ModelConfig::parse("max_batch_size = 0").is_err());
        assert!(ModelConfig::parse("max_batch_size = 4\npreferred_batch_sizes = [8]").is_err());
        assert!(ModelConfig::parse("threads = 0").is_err());
        assert!(ModelConfig::parse("max_batch = 4")
            .unwrap_err()
            .contains("max_batch"));
        assert!(ModelConfig::parse("queue_capacity = 0").is_err());
        assert!(ModelConfig::parse("[warmup]\nbatch_sizes = [16]").is_err());
        for bad in ["0.0", "-0.5", "1.5", "nan", "inf"] {
            let e = ModelConfig::parse(&format!("threshold = {bad}")).unwrap_err();
            assert!(e.contains("threshold"), "{bad}: {e}");
        }
        assert_eq!(
            ModelConfig::parse("threshold = 1.0").unwrap().threshold,
            Some(1.0)
        );
    }

    #[test]
    fn every_value_is_bounded() {
        for (text, needle) in [
            ("queue_capacity = 1000000000000000000", "queue_capacity"),
            ("timeout_ms = 86400000", "timeout_ms"),
            ("max_queue_delay_us = 61000000", "max_queue_delay_us"),
            ("max_queue_wait_ms = 3600001", "max_queue_wait_ms"),
            ("idle_spin_us = 10001", "idle_spin_us"),
            ("threads = 257", "threads"),
            ("instances = 65", "instances"),
            ("max_batch_size = 1025", "max_batch_size"),
            ("version_policy = { latest = 100000 }", "latest"),
            ("[warmup]\niterations = 1001", "iterations"),
        ] {
            let e = ModelConfig::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let long = format!("description = \"{}\"", "x".repeat(5000));
        assert!(ModelConfig::parse(&long)
            .unwrap_err()
            .contains("description"));
        let many = format!("preferred_batch_sizes = [{}]", vec!["1"; 65].join(", "));
        assert!(ModelConfig::parse(&many).is_err());
        // The largest accepted values are accepted.
        assert!(ModelConfig::parse("queue_capacity = 1000000\ntimeout_ms = 3600000").is_ok());
    }
}
