//! The model repository: scanning `<repo>/<model>/<version>/model.safetensors`, loading with
//! warmup, atomic version swaps, control modes (none, poll, explicit) and the index.

use crate::batcher::{session_runners, BatchConfig, BatchObserver, Batcher, Runner, RunnerFactory};
use crate::metrics::Metrics;
use crate::model_config::ModelConfig;
use crate::stats::VersionStats;
use models::Model;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

pub const MODEL_FILE: &str = "model.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlMode {
    /// Load everything at startup; the repository never changes.
    None,
    /// Load everything at startup, then rescan every `--repository-poll-secs`.
    Poll,
    /// Load only `--load-model` names at startup; load/unload through the API.
    Explicit,
}

impl ControlMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
        }
    }
}

/// Identifies the bytes of a version on disk (size + mtime) and its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let md = std::fs::metadata(path)?;
    Ok(Fingerprint {
        len: md.len(),
        modified: md.modified().ok(),
    })
}

/// One loaded, warmed-up, serving version.
pub struct LoadedVersion {
    pub name: String,
    pub version: u64,
    pub model: Arc<Model>,
    pub config: ModelConfig,
    pub batcher: Batcher,
    pub stats: Arc<VersionStats>,
    pub input_len: usize,
    pub num_classes: usize,
    pub load_seconds: f64,
    fingerprint: Fingerprint,
}

impl LoadedVersion {
    pub fn version_str(&self) -> String {
        self.version.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SlotState {
    Loading,
    Ready,
    Unavailable,
}

struct Slot {
    versions: BTreeMap<u64, Arc<LoadedVersion>>,
    state: SlotState,
    reason: String,
    /// Versions whose last load failed, with the file they failed on (poll mode retries only
    /// when the file changes).
    failed: HashMap<u64, (Fingerprint, String)>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            versions: BTreeMap::new(),
            state: SlotState::Unavailable,
            reason: String::new(),
            failed: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IndexEntry {
    pub name: String,
    /// Empty when no version is loaded.
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: String,
    pub reason: String,
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    UnknownModel,
    UnknownVersion,
    /// Known but has no ready version (loading, failed or unloaded).
    NotReady(String),
}

pub struct Repository {
    root: PathBuf,
    mode: ControlMode,
    metrics: Arc<Metrics>,
    slots: RwLock<BTreeMap<String, Slot>>,
    load_lock: Mutex<()>,
    /// Models that should be served: every model directory found by the last scan (none and
    /// poll modes), or the models asked for at start and through the load API and not unloaded
    /// since (explicit mode). Strict readiness needs every one of them ready.
    expected: Mutex<BTreeSet<String>>,
    /// Skipped repository entries already logged, with why.
    skipped: Mutex<HashMap<PathBuf, String>>,
    /// The last `config.toml` error of each model, with the file it came from (logged and
    /// counted once per change of the file).
    config_errors: Mutex<HashMap<String, (Option<Fingerprint>, String)>>,
    /// Makes each instance's runner from its session.
    runners: RunnerFactory,
}

/// A model name usable as a directory name and URL segment.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !name.starts_with('.')
}

struct VersionObserver {
    metrics: Arc<Metrics>,
    stats: Arc<VersionStats>,
    model: String,
    version: String,
    last_depth: AtomicI64,
}

impl BatchObserver for VersionObserver {
    fn queue_depth(&self, depth: usize) {
        // The gauge is per model: add this version's change so several versions sum up.
        let prev = self.last_depth.swap(depth as i64, Ordering::SeqCst);
        self.metrics
            .queue_depth
            .with_label_values(&[&self.model])
            .add(depth as i64 - prev);
    }

    fn batch_done(&self, size: usize, infer: Duration) {
        let l = [self.model.as_str(), self.version.as_str()];
        let m = &self.metrics;
        m.inference_duration
            .with_label_values(&l)
            .observe(infer.as_secs_f64());
        m.batch_size.with_label_values(&l).observe(size as f64);
        m.nv_exec_count.with_label_values(&l).inc();
        m.nv_count.with_label_values(&l).inc_by(size as u64);
        m.nv_infer_us
            .with_label_values(&l)
            .inc_by(infer.as_secs_f64() * 1e6);
        self.stats.batch_executed(size, infer);
    }

    fn skipped(&self, cancelled: bool) {
        tracing::debug!(model = %self.model, version = %self.version, cancelled, "queued request dropped before running");
    }
}

/// Opens, plans and warms up one version, then starts its inference threads.
pub fn load_version(
    name: &str,
    version: u64,
    path: &Path,
    config: &ModelConfig,
    metrics: &Arc<Metrics>,
    runners_of: &RunnerFactory,
) -> Result<LoadedVersion, String> {
    let t0 = Instant::now();
    let fp = fingerprint(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The per-layer kernel choice is measured for the batch sizes and thread count this version
    // will run with (batch 1 for an idle model, the largest batch under load).
    let mut batch_sizes = vec![1, config.max_batch_size];
    batch_sizes.extend(config.preferred_batch_sizes.iter().copied());
    batch_sizes.sort_unstable();
    batch_sizes.dedup();
    let mut opts = models::PlanOptions::from_env().map_err(|e| e.message)?;
    opts.batch_sizes = batch_sizes;
    opts.threads = config.threads;
    let model =
        Model::open_with(path, &opts).map_err(|e| format!("{}: {}", path.display(), e.message))?;
    let info = model.info();
    let input_len: usize = info.input_shape.iter().product();
    let num_classes = info.labels.len();
    if input_len == 0 || num_classes == 0 {
        return Err(format!(
            "{}: model has an empty input shape or no labels",
            path.display()
        ));
    }
    let mut runners: Vec<Box<dyn Runner>> = Vec::new();
    let zeros = vec![0.0f32; input_len];
    for _ in 0..config.instances {
        let mut session = model.session(config.max_batch_size, config.threads);
        for &bs in &config.warmup.batch_sizes {
            let batch: Vec<&[f32]> = (0..bs).map(|_| zeros.as_slice()).collect();
            for _ in 0..config.warmup.iterations {
                let out = session
                    .run(&batch)
                    .map_err(|e| format!("warmup failed: {}", e.message))?;
                if out.len() != bs * num_classes || out.iter().any(|x| !x.is_finite()) {
                    return Err(format!(
                        "warmup produced {} values (expected {}) or non-finite logits",
                        out.len(),
                        bs * num_classes
                    ));
                }
            }
        }
        runners.push(runners_of(session));
    }
    let vs = version.to_string();
    metrics.init_version(name, &vs);
    for lk in model.layer_kernels() {
        metrics
            .layer_kernel_info
            .with_label_values(&[name, &vs, &lk.node, &lk.kernel])
            .set(1);
    }
    let stats = Arc::new(VersionStats::default());
    let observer = Arc::new(VersionObserver {
        metrics: metrics.clone(),
        stats: stats.clone(),
        model: name.to_string(),
        version: vs.clone(),
        last_depth: AtomicI64::new(0),
    });
    let batch_cfg = BatchConfig {
        max_batch_size: config.max_batch_size,
        preferred_batch_sizes: config.preferred_batch_sizes.clone(),
        max_queue_delay: Duration::from_micros(config.max_queue_delay_us),
        queue_capacity: config.queue_capacity,
        wait_when_idle: config.wait_when_idle,
        idle_spin: Duration::from_micros(config.idle_spin_us),
    };
    let batcher = Batcher::start(&format!("{name}-{version}"), batch_cfg, runners, observer)
        .map_err(|e| format!("cannot start inference threads: {e}"))?;
    let load_seconds = t0.elapsed().as_secs_f64();
    metrics
        .model_load_duration
        .with_label_values(&[name, &vs])
        .set(load_seconds);
    Ok(LoadedVersion {
        name: name.to_string(),
        version,
        model: Arc::new(model),
        config: config.clone(),
        batcher,
        stats,
        input_len,
        num_classes,
        load_seconds,
        fingerprint: fp,
    })
}

/// Version directories (positive integers) holding a model file; `skipped` hears about every
/// entry that is not one, and why.
fn list_versions_reporting(dir: &Path, skipped: &mut dyn FnMut(PathBuf, &str)) -> Vec<u64> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let path = e.path();
            let Some(s) = name.to_str() else {
                skipped(path, "the name is not UTF-8");
                continue;
            };
            if s == "config.toml" || s.starts_with('.') {
                continue;
            }
            let v = match s.parse::<u64>() {
                Ok(v) if v > 0 && !s.starts_with('+') => v,
                _ => {
                    skipped(path, "not a version directory (a positive integer)");
                    continue;
                }
            };
            if !path.is_dir() {
                skipped(path, "a version must be a directory");
                continue;
            }
            let file = path.join(MODEL_FILE);
            match std::fs::metadata(&file) {
                Ok(md) if md.is_file() => out.push(v),
                Ok(_) => skipped(file, "not a regular file"),
                Err(_) => skipped(path, "the version directory has no model.safetensors"),
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
fn list_versions(dir: &Path) -> Vec<u64> {
    list_versions_reporting(dir, &mut |_, _| {})
}

impl Repository {
    pub fn new(root: PathBuf, mode: ControlMode, metrics: Arc<Metrics>) -> Repository {
        Repository {
            root,
            mode,
            metrics,
            slots: RwLock::new(BTreeMap::new()),
            load_lock: Mutex::new(()),
            expected: Mutex::new(BTreeSet::new()),
            skipped: Mutex::new(HashMap::new()),
            config_errors: Mutex::new(HashMap::new()),
            runners: session_runners(),
        }
    }

    /// The same repository with every instance's runner made by `runners` (tests wrap the
    /// session to slow it down or make it fail; the server uses [`session_runners`]).
    pub fn with_runners(mut self, runners: RunnerFactory) -> Repository {
        self.runners = runners;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn mode(&self) -> ControlMode {
        self.mode
    }

    /// Model directories currently in the repository. Entries that are not (hidden files, bad
    /// names, files) are logged once each; an unreadable repository once per distinct error.
    pub fn model_dirs(&self) -> Vec<String> {
        let mut names = Vec::new();
        match std::fs::read_dir(&self.root) {
            Ok(rd) => {
                self.skip_once(&self.root, "");
                for e in rd.flatten() {
                    let path = e.path();
                    let Some(n) = e.file_name().to_str().map(str::to_string) else {
                        self.skip_once(&path, "the name is not UTF-8");
                        continue;
                    };
                    if n.starts_with('.') {
                        continue;
                    }
                    if !valid_model_name(&n) {
                        self.skip_once(
                            &path,
                            "not a valid model name (letters, digits, '_', '-', '.'; at most 128)",
                        );
                    } else if !path.is_dir() {
                        self.skip_once(&path, "a model must be a directory");
                    } else {
                        names.push(n);
                    }
                }
            }
            Err(e) => self.skip_once(
                &self.root,
                &format!("cannot read the model repository: {e}"),
            ),
        }
        names.sort();
        names
    }

    /// Logs at WARN that `path` is skipped and why, once per path and reason (an empty reason
    /// forgets the path's last reason).
    fn skip_once(&self, path: &Path, why: &str) {
        let mut seen = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        if why.is_empty() {
            seen.remove(path);
            return;
        }
        if seen.get(path).map(String::as_str) != Some(why) {
            seen.insert(path.to_path_buf(), why.to_string());
            tracing::warn!(path = %path.display(), reason = why, "model repository entry skipped");
        }
    }

    /// Brings a model in line with the repository: loads new or changed versions (with warmup)
    /// and swaps them in atomically; versions that fail keep their previous copy serving.
    /// `retry_failed` retries versions whose identical file failed before.
    /// Returns an error describing every failure (the model may still be serving).
    pub fn sync_model(&self, name: &str, retry_failed: bool) -> Result<(), String> {
        if !valid_model_name(name) {
            return Err(format!("invalid model name \"{name}\""));
        }
        let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.root.join(name);
        if !dir.is_dir() {
            self.unload_locked(name, "not found in the model repository");
            return Err(format!(
                "model \"{name}\" not found in the model repository"
            ));
        }
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        let (current, failed) = {
            let mut slots = self.slots.write().unwrap();
            let slot = slots.entry(name.to_string()).or_insert_with(Slot::new);
            if slot.versions.is_empty() {
                slot.state = SlotState::Loading;
            }
            (slot.versions.clone(), slot.failed.clone())
        };
        let mut errors: Vec<String> = Vec::new();
        let config = match ModelConfig::load(&dir) {
            Ok(c) => {
                self.config_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                Some(c)
            }
            Err(e) => {
                let fp = fingerprint(&dir.join("config.toml")).ok();
                let mut seen = self.config_errors.lock().unwrap_or_else(|p| p.into_inner());
                let new = seen.get(name) != Some(&(fp.clone(), e.clone()));
                if new {
                    seen.insert(name.to_string(), (fp, e.clone()));
                    tracing::warn!(model = name, error = %e, "config.toml rejected; what serves keeps serving");
                    self.metrics
                        .model_load_failures
                        .with_label_values(&[name])
                        .inc();
                }
                errors.push(if current.is_empty() {
                    e
                } else {
                    format!("{e} (the previous configuration keeps serving)")
                });
                None
            }
        };
        let mut next: BTreeMap<u64, Arc<LoadedVersion>> = BTreeMap::new();
        let mut new_failed = failed.clone();
        match &config {
            None => {
                // Bad config: keep serving what we have.
                next = current.clone();
            }
            Some(cfg) => {
                let available =
                    list_versions_reporting(&dir, &mut |p, why| self.skip_once(&p, why));
                let wanted = cfg.version_policy.select(&available);
                // Failures of versions that are gone (or no longer wanted) are forgotten.
                new_failed.retain(|v, _| wanted.contains(v));
                if wanted.is_empty() {
                    errors.push(format!(
                        "no version directory with a {MODEL_FILE} matches the version policy"
                    ));
                }
                for v in wanted {
                    let path = dir.join(v.to_string()).join(MODEL_FILE);
                    let fp = match fingerprint(&path) {
                        Ok(fp) => fp,
                        Err(e) => {
                            errors.push(format!("{}: {e}", path.display()));
                            if let Some(cur) = current.get(&v) {
                                next.insert(v, cur.clone());
                            }
                            continue;
                        }
                    };
                    if let Some(cur) = current.get(&v) {
                        if cur.fingerprint == fp && &cur.config == cfg {
                            next.insert(v, cur.clone());
                            continue;
                        }
                    }
                    if let Some((failed_fp, why)) = failed.get(&v) {
                        if !retry_failed && failed_fp == &fp {
                            if let Some(cur) = current.get(&v) {
                                next.insert(v, cur.clone());
                            }
                            errors.push(why.clone());
                            continue;
                        }
                    }
                    tracing::info!(model = name, version = v, path = %path.display(), "loading model version");
                    match load_version(name, v, &path, cfg, &self.metrics, &self.runners) {
                        Ok(lv) => {
                            tracing::info!(
                                model = name,
                                version = v,
                                seconds = lv.load_seconds,
                                "model version ready"
                            );
                            new_failed.remove(&v);
                            next.insert(v, Arc::new(lv));
                        }
                        Err(e) => {
                            tracing::error!(model = name, version = v, error = %e, "model load failed; previous version keeps serving");
                            self.metrics
                                .model_load_failures
                                .with_label_values(&[name])
                                .inc();
                            let why = format!("version {v}: {e}");
                            new_failed.insert(v, (fp, why.clone()));
                            errors.push(why);
                            if let Some(cur) = current.get(&v) {
                                next.insert(v, cur.clone());
                            }
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            // Something failed: keep every version that serves now, so a broken new version
            // never takes the model down (the policy is applied again on the next success).
            for (v, cur) in &current {
                next.entry(*v).or_insert_with(|| cur.clone());
            }
        }
        // Atomic swap.
        let retired: Vec<Arc<LoadedVersion>> = {
            let mut slots = self.slots.write().unwrap();
            let slot = slots.entry(name.to_string()).or_insert_with(Slot::new);
            let old = std::mem::replace(&mut slot.versions, next.clone());
            slot.failed = new_failed;
            slot.state = if next.is_empty() {
                SlotState::Unavailable
            } else {
                SlotState::Ready
            };
            slot.reason = errors.join("; ");
            old.into_values()
                .filter(|o| !next.get(&o.version).is_some_and(|n| Arc::ptr_eq(n, o)))
                .collect()
        };
        self.retire(retired, &next);
        for lv in next.values() {
            self.metrics
                .model_ready
                .with_label_values(&[name, &lv.version_str()])
                .set(1);
        }
        // Versions that failed show 0 (as UNAVAILABLE in the index); forgotten ones disappear.
        let failed_now: Vec<u64> = {
            let slots = self.slots.read().unwrap();
            slots
                .get(name)
                .map(|s| s.failed.keys().copied().collect())
                .unwrap_or_default()
        };
        for v in &failed_now {
            if !next.contains_key(v) {
                self.metrics
                    .model_ready
                    .with_label_values(&[name, &v.to_string()])
                    .set(0);
            }
        }
        for v in failed.keys() {
            if !failed_now.contains(v) && !next.contains_key(v) {
                let _ = self
                    .metrics
                    .model_ready
                    .remove_label_values(&[name, &v.to_string()]);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Stops old versions: they finish their queued work on a background thread.
    fn retire(
        &self,
        retired: Vec<Arc<LoadedVersion>>,
        still_serving: &BTreeMap<u64, Arc<LoadedVersion>>,
    ) {
        for lv in retired {
            if !still_serving.contains_key(&lv.version) {
                // A version that no longer serves leaves the metrics.
                let l = [lv.name.as_str(), &lv.version_str()];
                let _ = self.metrics.model_ready.remove_label_values(&l);
                let _ = self.metrics.model_load_duration.remove_label_values(&l);
                let _ = self.metrics.not_understood.remove_label_values(&l);
                for lk in lv.model.layer_kernels() {
                    let _ = self.metrics.layer_kernel_info.remove_label_values(&[
                        &lv.name,
                        &lv.version_str(),
                        &lk.node,
                        &lk.kernel,
                    ]);
                }
            }
            lv.batcher.close();
            let _ = std::thread::Builder::new().name("retire".into()).spawn(move || {
                lv.batcher.shutdown();
                tracing::info!(model = %lv.name, version = lv.version, "retired version drained");
            });
        }
    }

    fn unload_locked(&self, name: &str, reason: &str) -> bool {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let retired: Vec<Arc<LoadedVersion>> = {
            let mut slots = self.slots.write().unwrap();
            let Some(slot) = slots.get_mut(name) else {
                return false;
            };
            slot.state = SlotState::Unavailable;
            slot.reason = reason.to_string();
            std::mem::take(&mut slot.versions).into_values().collect()
        };
        if !retired.is_empty() {
            tracing::info!(model = name, reason, "model unloaded");
        }
        self.retire(retired, &BTreeMap::new());
        true
    }

    /// Unloads every version; queued requests still complete. False if the model is unknown.
    pub fn unload(&self, name: &str) -> bool {
        let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.unload_locked(name, "unloaded");
        known || (valid_model_name(name) && self.root.join(name).is_dir())
    }

    /// Initial load according to the control mode. Returns the models that failed to load
    /// (fully), with why.
    pub fn load_initial(&self, explicit: &[String]) -> Vec<(String, String)> {
        let names: Vec<String> = match self.mode {
            ControlMode::None | ControlMode::Poll => self.model_dirs(),
            ControlMode::Explicit if explicit.iter().any(|n| n == "*") => self.model_dirs(),
            ControlMode::Explicit => explicit.to_vec(),
        };
        *self.expected.lock().unwrap_or_else(|p| p.into_inner()) = names.iter().cloned().collect();
        let mut failed = Vec::new();
        for name in &names {
            if let Err(e) = self.sync_model(name, true) {
                tracing::error!(model = %name, error = %e, "model not (fully) loaded");
                failed.push((name.clone(), e));
            }
        }
        // A requested model that is not in the repository still should be served.
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(names);
        failed
    }

    /// Why the server is not ready to serve every model it should (empty when it is): the
    /// repository cannot be read, it has no models (none and poll modes), or a model that
    /// should be served has no ready version.
    pub fn not_ready(&self) -> Vec<String> {
        if let Err(e) = std::fs::read_dir(&self.root) {
            return vec![format!(
                "the model repository {} cannot be read: {e}",
                self.root.display()
            )];
        }
        let expected: Vec<String> = self
            .expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if expected.is_empty() && self.mode != ControlMode::Explicit {
            return vec![format!(
                "the model repository {} has no models",
                self.root.display()
            )];
        }
        let slots = self.slots.read().unwrap();
        expected
            .into_iter()
            .filter_map(|name| match slots.get(&name) {
                Some(slot) if !slot.versions.is_empty() => None,
                Some(slot) if slot.state == SlotState::Loading => {
                    Some(format!("model \"{name}\" is loading"))
                }
                Some(slot) if !slot.reason.is_empty() => Some(format!(
                    "model \"{name}\" is not available: {}",
                    slot.reason
                )),
                _ => Some(format!("model \"{name}\" is not loaded")),
            })
            .collect()
    }

    /// One poll pass: new and changed models load, removed ones unload.
    pub fn poll_once(&self) {
        let dirs = self.model_dirs();
        *self.expected.lock().unwrap_or_else(|p| p.into_inner()) = dirs.iter().cloned().collect();
        for name in &dirs {
            if let Err(e) = self.sync_model(name, false) {
                tracing::debug!(model = %name, error = %e, "poll: model not fully in sync");
            }
        }
        let known: Vec<String> = self.slots.read().unwrap().keys().cloned().collect();
        for name in known {
            if !dirs.contains(&name) {
                let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
                self.unload_locked(&name, "removed from the model repository");
                // Gone from the repository: forget it (requests get 404 again).
                self.slots.write().unwrap().remove(&name);
            }
        }
    }

    /// The version to serve: `version` if given, else the highest loaded one.
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedVersion>, LookupError> {
        let slots = self.slots.read().unwrap();
        let Some(slot) = slots.get(name) else {
            if valid_model_name(name) && self.root.join(name).is_dir() {
                return Err(LookupError::NotReady("model is not loaded".into()));
            }
            return Err(LookupError::UnknownModel);
        };
        match version {
            Some(v) => slot
                .versions
                .get(&v)
                .cloned()
                .ok_or(LookupError::UnknownVersion),
            None => slot.versions.values().next_back().cloned().ok_or_else(|| {
                LookupError::NotReady(match slot.state {
                    SlotState::Loading => "model is loading".to_string(),
                    _ if slot.reason.is_empty() => "model is not loaded".to_string(),
                    _ => format!("model is not available: {}", slot.reason),
                })
            }),
        }
    }

    /// Loaded versions of a model, ascending.
    pub fn versions(&self, name: &str) -> Vec<Arc<LoadedVersion>> {
        self.slots
            .read()
            .unwrap()
            .get(name)
            .map(|s| s.versions.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every loaded version of every model.
    pub fn all_loaded(&self) -> Vec<Arc<LoadedVersion>> {
        self.slots
            .read()
            .unwrap()
            .values()
            .flat_map(|s| s.versions.values().cloned())
            .collect()
    }

    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let slots = self.slots.read().unwrap();
        let mut out = Vec::new();
        let mut names: Vec<String> = self.model_dirs();
        for k in slots.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        names.sort();
        for name in names {
            match slots.get(&name) {
                Some(slot) if !slot.versions.is_empty() => {
                    for v in slot.versions.keys() {
                        out.push(IndexEntry {
                            name: name.clone(),
                            version: v.to_string(),
                            state: "READY".into(),
                            // Serving, but e.g. a rejected config.toml or a failed new version.
                            reason: slot.reason.clone(),
                        });
                    }
                    if !ready_only {
                        let mut failed: Vec<_> = slot
                            .failed
                            .iter()
                            .filter(|(v, _)| !slot.versions.contains_key(v))
                            .collect();
                        failed.sort_by_key(|(v, _)| **v);
                        for (v, (_, why)) in failed {
                            out.push(IndexEntry {
                                name: name.clone(),
                                version: v.to_string(),
                                state: "UNAVAILABLE".into(),
                                reason: why.clone(),
                            });
                        }
                    }
                }
                Some(slot) if !ready_only => out.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: match slot.state {
                        SlotState::Loading => "LOADING".into(),
                        _ => "UNAVAILABLE".into(),
                    },
                    reason: slot.reason.clone(),
                }),
                None if !ready_only => out.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE".into(),
                    reason: "not loaded".into(),
                }),
                _ => {}
            }
        }
        out
    }

    /// Stops accepting work everywhere and waits until every queued request has been answered.
    pub fn shutdown(&self) {
        let all = self.all_loaded();
        for lv in &all {
            lv.batcher.close();
        }
        for lv in &all {
            lv.batcher.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_model_name("fashion-mnist_w3.v2"));
        assert!(!valid_model_name("../etc"));
        assert!(!valid_model_name(".hidden"));
        assert!(!valid_model_name(""));
        assert!(!valid_model_name("a/b"));
    }

    #[test]
    fn version_dirs_need_a_model_file() {
        let t = tempfile::tempdir().unwrap();
        for v in ["1", "2", "10", "x", "0", "+3"] {
            std::fs::create_dir_all(t.path().join(v)).unwrap();
            std::fs::write(t.path().join(v).join(MODEL_FILE), b"").unwrap();
        }
        std::fs::create_dir_all(t.path().join("7")).unwrap();
        assert_eq!(list_versions(t.path()), vec![1, 2, 10]);
    }

    #[test]
    fn failed_load_is_reported_and_counted() {
        let t = tempfile::tempdir().unwrap();
        let mdir = t.path().join("broken");
        std::fs::create_dir_all(mdir.join("1")).unwrap();
        std::fs::write(mdir.join("1").join(MODEL_FILE), b"not a safetensors file").unwrap();
        let metrics = Arc::new(Metrics::new("scalar"));
        let repo = Repository::new(t.path().to_path_buf(), ControlMode::Poll, metrics.clone());
        let err = repo.sync_model("broken", true).unwrap_err();
        assert!(err.contains("version 1"), "{err}");
        assert_eq!(
            metrics
                .model_load_failures
                .with_label_values(&["broken"])
                .get(),
            1
        );
        assert!(matches!(
            repo.get("broken", None),
            Err(LookupError::NotReady(_))
        ));
        // Unchanged file: poll mode does not retry.
        repo.poll_once();
        assert_eq!(
            metrics
                .model_load_failures
                .with_label_values(&["broken"])
                .get(),
            1
        );
        let idx = repo.index(false);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx[0].state, "UNAVAILABLE");
        assert!(idx[0].reason.contains("version 1"));
        assert_eq!(
            repo.get("nope", None).err(),
            Some(LookupError::UnknownModel)
        );
    }

    #[test]
    fn bad_config_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let mdir = t.path().join("m");
        std::fs::create_dir_all(&mdir).unwrap();
        std::fs::write(mdir.join("config.toml"), "max_batch_size = 0").unwrap();
        let repo = Repository::new(
            t.path().to_path_buf(),
            ControlMode::None,
            Arc::new(Metrics::new("scalar")),
        );
        assert!(repo
            .sync_model("m", true)
            .unwrap_err()
            .contains("max_batch_size"));
    }

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tiny_w3.safetensors")
    }

    fn add_version(root: &Path, model: &str, v: u64) {
        let d = root.join(model).join(v.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(tiny(), d.join(MODEL_FILE)).unwrap();
    }

    /// Captures what is logged while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    fn ready_series(m: &Metrics) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("shiftserve_model_ready{"))
            .map(str::to_string)
            .collect()
    }

    /// Issue 10, case 4: a bad config.toml in poll mode is logged at WARN and counted once per
    /// change of the file, and the index shows why while the old configuration serves.
    #[test]
    fn rejected_config_is_reported_once_per_change() {
        let t = tempfile::tempdir().unwrap();
        add_version(t.path(), "m", 1);
        let metrics = Arc::new(Metrics::new("scalar"));
        let repo = Repository::new(t.path().to_path_buf(), ControlMode::Poll, metrics.clone());
        repo.load_initial(&[]);
        assert!(repo.not_ready().is_empty());
        let failures = || metrics.model_load_failures.with_label_values(&["m"]).get();
        std::fs::write(
            t.path().join("m/config.toml"),
            "queue_capacity = 1000000000000000000\n",
        )
        .unwrap();
        let log = logged(|| {
            repo.poll_once();
            repo.poll_once();
            repo.poll_once();
        });
        assert_eq!(log.matches("config.toml rejected").count(), 1, "{log}");
        assert!(log.contains("WARN"), "{log}");
        assert_eq!(failures(), 1);
        let idx = repo.index(false);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx[0].state, "READY");
        assert!(idx[0].reason.contains("queue_capacity"), "{:?}", idx[0]);
        // Still serving: readiness is unaffected.
        assert!(repo.not_ready().is_empty());
        // Another bad content is another change.
        std::fs::write(t.path().join("m/config.toml"), "threads = 0\n").unwrap();
        let log = logged(|| repo.poll_once());
        assert_eq!(log.matches("config.toml rejected").count(), 1, "{log}");
        assert_eq!(failures(), 2);
        std::fs::write(t.path().join("m/config.toml"), "threads = 1\n").unwrap();
        repo.poll_once();
        assert_eq!(repo.index(false)[0].reason, "");
        repo.shutdown();
    }

    /// Issue 10, case 4: removed versions leave the index and the metrics.
    #[test]
    fn removed_versions_leave_the_index_and_the_metrics() {
        let t = tempfile::tempdir().unwrap();
        add_version(t.path(), "m", 1);
        add_version(t.path(), "m", 2);
        std::fs::write(t.path().join("m/config.toml"), "version_policy = \"all\"\n").unwrap();
        // A broken version 3.
        std::fs::create_dir_all(t.path().join("m/3")).unwrap();
        std::fs::write(t.path().join("m/3").join(MODEL_FILE), b"broken").unwrap();
        let metrics = Arc::new(Metrics::new("scalar"));
        let repo = Repository::new(t.path().to_path_buf(), ControlMode::Poll, metrics.clone());
        repo.load_initial(&[]);
        let versions = |repo: &Repository| -> Vec<(String, String)> {
            repo.index(false)
                .into_iter()
                .map(|e| (e.version, e.state))
                .collect()
        };
        assert_eq!(
            versions(&repo),
            vec![
                ("1".into(), "READY".into()),
                ("2".into(), "READY".into()),
                ("3".into(), "UNAVAILABLE".into())
            ]
        );
        let series = ready_series(&metrics);
        assert_eq!(series.len(), 3, "{series:?}");
        assert!(series
            .iter()
            .any(|l| l.contains("version=\"3\"") && l.ends_with(" 0")));
        std::fs::remove_dir_all(t.path().join("m/2")).unwrap();
        std::fs::remove_dir_all(t.path().join("m/3")).unwrap();
        repo.poll_once();
        assert_eq!(versions(&repo), vec![("1".into(), "READY".into())]);
        let series = ready_series(&metrics);
        assert_eq!(series.len(), 1, "{series:?}");
        assert!(series[0].contains("version=\"1\"") && series[0].ends_with(" 1"));
        repo.shutdown();
    }

    /// Issue 10, case 4: skipped entries (bad names, files, non-regular model files, version
    /// directories that are not numbers) are logged once each.
    #[test]
    fn skipped_entries_are_logged_once() {
        let t = tempfile::tempdir().unwrap();
        add_version(t.path(), "m", 1);
        std::fs::write(t.path().join("README.txt"), "x").unwrap();
        std::fs::create_dir_all(t.path().join("bad name")).unwrap();
        std::fs::create_dir_all(t.path().join("m/latest")).unwrap();
        std::fs::create_dir_all(t.path().join("m/2").join(MODEL_FILE)).unwrap();
        std::fs::create_dir_all(t.path().join("m/3")).unwrap();
        let repo = Repository::new(
            t.path().to_path_buf(),
            ControlMode::Poll,
            Arc::new(Metrics::new("scalar")),
        );
        let log = logged(|| {
            repo.load_initial(&[]);
            repo.poll_once();
            repo.poll_once();
        });
        for what in [
            "README.txt",
            "bad name",
            "latest",
            "2/model.safetensors",
            "m/3",
        ] {
            assert_eq!(
                log.lines()
                    .filter(|l| l.contains("entry skipped") && l.contains(what))
                    .count(),
                1,
                "{what}: {log}"
            );
        }
        assert_eq!(repo.index(true).len(), 1);
        repo.shutdown();
    }
}
