//! shiftserve model files: loading, validation, preprocessing and execution on the shift kernels.
//!
//! * [`format`](mod@format): the safetensors container, memory-mapped and validated completely
//!   (docs/format.md); [`graph`]: the typed graph with reference and shape checks.
//! * [`preprocess`]: the image and audio front ends declared in the file.
//! * [`plan`]: the execution plan (kernel layer objects built once at load) and [`Session`]s
//!   with buffers preallocated for a maximum batch.
//! * [`builder`] / [`synth`]: writing model files from Rust; a random-weight ResNet-18 W3 for
//!   benchmarks.

pub mod builder;
mod error;
pub mod format;
pub mod graph;
pub mod lstm;
pub mod plan;
pub mod preprocess;
pub mod synth;

use std::path::Path;
use std::sync::Arc;

pub use error::{ErrorKind, ModelError, PreprocessError};
pub use plan::{LayerKernel, PlanOptions};

use format::ModelFile;
use graph::{Op, PathSpec};

/// What the model does; decides the server's answer shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    ImageClassification,
    SpokenIntent,
    AudioClassification,
}

impl Task {
    pub fn as_str(&self) -> &'static str {
        match self {
            Task::ImageClassification => "image_classification",
            Task::SpokenIntent => "spoken_intent",
            Task::AudioClassification => "audio_classification",
        }
    }
}

/// One intent (Fluent Speech Commands style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub action: String,
    pub object: String,
    pub location: String,
}

/// Everything the server reports about a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub task: Task,
    pub labels: Vec<String>,
    /// Aligned with `labels` for `Task::SpokenIntent`, empty otherwise.
    pub intents: Vec<Intent>,
    /// Per-sample input shape (no batch dimension), e.g. `[1, 28, 28]`.
    pub input_shape: Vec<usize>,
    /// The preprocessing spec as stored in the file (JSON text).
    pub preprocess_json: String,
    /// `"image"` or `"audio"`.
    pub input_kind: &'static str,
    /// Bit widths of the shift layers (sorted, unique), e.g. `[3]`.
    pub weight_bits: Vec<u8>,
    /// Size of the model file in bytes.
    pub file_bytes: u64,
    /// Bytes the same parameters would take in fp32.
    pub fp32_bytes: u64,
    pub parameters: u64,
    /// Numeric path of the shift layers: `"int8"`, `"float"`, `"mixed"` or `"none"`.
    pub numeric_path: String,
    pub description: String,
    /// Softmax temperature fitted at export (`shiftserve.temperature`): scores are
    /// `softmax(logits / T)`; `None` = 1. The logits themselves never change.
    pub temperature: Option<f32>,
    /// Storage of the tensor-train (MPS) matrices of the `lstm_tt` nodes against the dense
    /// matrices they replace; `None` when the model has none.
    pub tensor_train: Option<TensorTrainStorage>,
}

/// The `W_ih` / `W_hh` matrices of every `lstm_tt` node: stored as MPS cores, against the dense
/// fp32 matrices of the `lstm` they replace (`4H x I` + `4H x H` per node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorTrainStorage {
    /// Parameters of the cores.
    pub params: u64,
    /// Bytes of the cores in the file.
    pub bytes: u64,
    /// Parameters of the dense matrices: `4H * (I + H)` per node.
    pub dense_params: u64,
    /// The dense matrices in fp32.
    pub dense_bytes: u64,
}

impl TensorTrainStorage {
    /// Cores' parameters / dense matrices' parameters.
    pub fn fraction(&self) -> f64 {
        if self.dense_params == 0 {
            0.0
        } else {
            self.params as f64 / self.dense_params as f64
        }
    }
}

/// One graph node as `shiftserve inspect` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    pub name: String,
    /// Operator name as in the file (`"shift_conv2d"`, ...).
    pub op: &'static str,
    /// Shape of the first input (no batch dimension).
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    /// Weight bits of a shift layer.
    pub bits: Option<u8>,
    /// Numeric path of a shift layer (`"int8"` / `"float"`).
    pub path: Option<&'static str>,
    /// Parameters (weights, scales, biases, TT cores).
    pub params: u64,
    /// Bytes of this layer's tensors in the file.
    pub bytes: u64,
}

/// What the client said the payload is (Content-Type), if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaHint {
    Unknown,
    Image,
    Audio,
}

/// Limits applied while decoding inputs (defence against decompression bombs).
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    pub max_pixels: u64,
    pub max_audio_seconds: f32,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_pixels: 40_000_000,
            max_audio_seconds: 30.0,
        }
    }
}

/// Largest batch a session preallocates for.
pub const MAX_BATCH: usize = 1024;

/// An opened, validated and planned model file. `Send + Sync`; share it behind an `Arc`.
pub struct Model {
    info: ModelInfo,
    layers: Vec<LayerInfo>,
    preprocess: preprocess::PreprocessSpec,
    plan: Arc<plan::Plan>,
}

impl Model {
    /// Memory-maps, validates and plans a model file (kernels chosen for batch 1, one thread,
    /// under `SHIFTSERVE_KERNEL`).
    pub fn open(path: &Path) -> Result<Model, ModelError> {
        Self::from_file(ModelFile::open(path)?, &PlanOptions::from_env()?)
    }

    /// As [`Model::open`], with the kernel policy and the batch sizes and thread count the
    /// per-layer kernel choice is measured for.
    pub fn open_with(path: &Path, opts: &PlanOptions) -> Result<Model, ModelError> {
        Self::from_file(ModelFile::open(path)?, opts)
    }

    /// Validates and plans an in-memory model file.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Model, ModelError> {
        Self::from_file(ModelFile::from_bytes(bytes)?, &PlanOptions::from_env()?)
    }

    /// As [`Model::from_bytes`], with explicit plan options.
    pub fn from_bytes_with(bytes: Vec<u8>, opts: &PlanOptions) -> Result<Model, ModelError> {
        Self::from_file(ModelFile::from_bytes(bytes)?, opts)
    }

    fn from_file(file: ModelFile, opts: &PlanOptions) -> Result<Model, ModelError> {
        let layers = layer_infos(&file);
        let plan = plan::Plan::build_with(&file, opts)?;
        let parameters: u64 = layers.iter().map(|l| l.params).sum();
        let mut bits: Vec<u8> = layers.iter().filter_map(|l| l.bits).collect();
        bits.sort_unstable();
        bits.dedup();
        let mut paths: Vec<&str> = layers.iter().filter_map(|l| l.path).collect();
        paths.sort_unstable();
        paths.dedup();
        let numeric_path = match paths.as_slice() {
            [] => "none".to_string(),
            [one] => one.to_string(),
            _ => "mixed".to_string(),
        };
        let info = ModelInfo {
            name: file.name.clone(),
            task: file.task,
            labels: file.labels.clone(),
            intents: file.intents.clone(),
            input_shape: file.graph.input.shape.clone(),
            preprocess_json: file.preprocess_json.clone(),
            input_kind: file.preprocess.kind(),
            weight_bits: bits,
            file_bytes: file.file_bytes(),
            fp32_bytes: parameters * 4,
            parameters,
            numeric_path,
            description: file.description.clone(),
            temperature: file.temperature,
            tensor_train: tensor_train_storage(&file),
        };
        // `file` (and its memory map) is dropped here: the plan owns its weights.
        Ok(Model {
            info,
            layers,
            preprocess: file.preprocess.clone(),
            plan: Arc::new(plan),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The graph nodes with shapes, bits, parameters and bytes (for `shiftserve inspect`).
    pub fn layers(&self) -> &[LayerInfo] {
        &self.layers
    }

    /// What runs each layer: the kernel chosen for every quantized convolution (and what it was
    /// measured against), the implementation of every other layer.
    pub fn layer_kernels(&self) -> &[plan::LayerKernel] {
        self.plan.kernels()
    }

    /// Steps that run sample by sample on a batch (the early, activation-heavy layers, so a
    /// sample's activations stay in cache); the rest run over the whole batch.
    pub fn sample_major_steps(&self) -> Vec<String> {
        self.plan.sample_major_steps()
    }

    /// Every execution step (graph nodes and layout conversions): (name, what runs it).
    pub fn steps(&self) -> Vec<(String, String)> {
        self.plan.steps_info()
    }

    /// The `SHIFTSERVE_KERNEL` policy the model was planned with.
    pub fn kernel_policy(&self) -> &kernels::KernelPolicy {
        self.plan.policy()
    }

    /// The parsed preprocessing spec.
    pub fn preprocess_spec(&self) -> &preprocess::PreprocessSpec {
        &self.preprocess
    }

    /// Decode and featurize one input into the model's input tensor (`info().input_shape`).
    pub fn preprocess(
        &self,
        data: &[u8],
        hint: MediaHint,
        limits: &InputLimits,
    ) -> Result<Vec<f32>, ModelError> {
        self.preprocess.run(data, hint, limits)
    }

    /// Whether preprocessing `data` is certainly small work
    /// ([`preprocess::PreprocessSpec::is_small_work`]).
    pub fn preprocess_is_small(&self, data: &[u8]) -> bool {
        self.preprocess.is_small_work(data)
    }

    /// A session with buffers preallocated for up to `max_batch` samples (clamped to
    /// `1..=MAX_BATCH`; see [`Session::max_batch`]), running on `threads` threads (at least 1).
    pub fn session(&self, max_batch: usize, threads: usize) -> Session {
        let max_batch = max_batch.clamp(1, MAX_BATCH);
        Session {
            inner: plan::Runner::new(Arc::clone(&self.plan), max_batch, threads.max(1)),
        }
    }
}

/// Runs batches; owned by one inference thread.
pub struct Session {
    inner: plan::Runner,
}

impl Session {
    pub fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    /// Threads this session computes with.
    pub fn threads(&self) -> usize {
        self.inner.threads()
    }

    /// As [`Session::run`], adding each step's wall time (seconds) to `times` (one entry per
    /// [`Model::steps`] item).
    pub fn run_timed(
        &mut self,
        batch: &[&[f32]],
        times: &mut Vec<f64>,
    ) -> Result<&[f32], ModelError> {
        self.inner.run_timed(batch, times)
    }

    /// Runs a batch of preprocessed inputs; returns `[batch, classes]` logits.
    pub fn run(&mut self, batch: &[&[f32]]) -> Result<&[f32], ModelError> {
        self.inner.run(batch)
    }

    /// As [`Session::run`], calling `observe(node name, [batch, ...] output)` after every node
    /// (for localising disagreements with a reference; flatten nodes are not reported).
    pub fn run_observed(
        &mut self,
        batch: &[&[f32]],
        observe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<&[f32], ModelError> {
        self.inner.run_observed(batch, observe)
    }
}

impl ModelInfo {
    /// The calibrated class probabilities of one sample's logits: `softmax(logits / T)` with the
    /// model's temperature ([`ModelInfo::temperature`]), plain softmax without one.
    pub fn scores(&self, logits: &[f32]) -> Vec<f32> {
        softmax_with_temperature(logits, self.temperature)
    }
}

/// `softmax(logits / T)`; `None` (or 1) is the plain softmax, bit for bit.
pub fn softmax_with_temperature(logits: &[f32], temperature: Option<f32>) -> Vec<f32> {
    let t = temperature.unwrap_or(1.0);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Dividing by T > 0 keeps the order, so the largest logit stays the shift; T = 1 divides by
    // one, which changes no bit.
    let exps: Vec<f32> = logits.iter().map(|&x| ((x - max) / t).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    softmax_with_temperature(logits, None)
}

/// The kernel instruction set in use, e.g. `"avx512"` (or `"error: ..."` when the
/// `SHIFTSERVE_KERNEL` setting names an unavailable one).
pub fn kernel_isa() -> String {
    match kernels::selected_isa() {
        Ok(isa) => isa.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

fn layer_infos(file: &ModelFile) -> Vec<LayerInfo> {
    let bytes_of = |names: &[&str]| -> u64 {
        names
            .iter()
            .filter_map(|n| file.tensor(n))
            .map(|t| t.data.len() as u64)
            .sum()
    };
    file.graph
        .nodes
        .iter()
        .map(|node| {
            let (params, bytes, bits, path): (usize, u64, Option<u8>, Option<&'static str>) =
                match &node.op {
                    Op::Conv2d {
                        conv, weight, bias, ..
                    } => (
                        conv.out_channels * conv.k() + conv.out_channels,
                        bytes_of(&[weight, bias]),
                        None,
                        None,
                    ),
                    Op::ShiftConv2d { conv, shift, .. } => (
                        conv.out_channels * conv.k() + 2 * conv.out_channels,
                        bytes_of(&[&shift.weight, &shift.scale, &shift.bias]),
                        Some(shift.bits as u8),
                        Some(path_name(&shift.path)),
                    ),
                    Op::Linear {
                        in_features,
                        out_features,
                        weight,
                        bias,
                        ..
                    } => (
                        in_features * out_features + out_features,
                        bytes_of(&[weight, bias]),
                        None,
                        None,
                    ),
                    Op::ShiftLinear {
                        in_features,
                        out_features,
                        shift,
                        ..
                    } => (
                        in_features * out_features + 2 * out_features,
                        bytes_of(&[&shift.weight, &shift.scale, &shift.bias]),
                        Some(shift.bits as u8),
                        Some(path_name(&shift.path)),
                    ),
                    Op::Lstm {
                        input_size,
                        hidden_size,
                        w_ih,
                        w_hh,
                        bias,
                        ..
                    } => {
                        let g = 4 * hidden_size;
                        (
                            g * input_size + g * hidden_size + g,
                            bytes_of(&[w_ih, w_hh, bias]),
                            None,
                            None,
                        )
                    }
                    Op::LstmTt {
                        hidden_size,
                        ih,
                        hh,
                        bias,
                        ..
                    } => {
                        let mut names: Vec<&str> = ih
                            .cores
                            .iter()
                            .chain(hh.cores.iter())
                            .map(String::as_str)
                            .collect();
                        names.push(bias);
                        (
                            ih.params() + hh.params() + 4 * hidden_size,
                            bytes_of(&names),
                            None,
                            None,
                        )
                    }
                    _ => (0, 0, None, None),
                };
            LayerInfo {
                name: node.name.clone(),
                op: node.op.name(),
                input_shape: node.input_shapes.first().cloned().unwrap_or_default(),
                output_shape: node.output_shape.clone(),
                bits,
                path,
                params: params as u64,
                bytes,
            }
        })
        .collect()
}

fn tensor_train_storage(file: &ModelFile) -> Option<TensorTrainStorage> {
    let mut total: Option<TensorTrainStorage> = None;
    for node in &file.graph.nodes {
        if let Op::LstmTt {
            input_size,
            hidden_size,
            ih,
            hh,
            ..
        } = &node.op
        {
            let t = total.get_or_insert(TensorTrainStorage {
                params: 0,
                bytes: 0,
                dense_params: 0,
                dense_bytes: 0,
            });
            let bytes: u64 = ih
                .cores
                .iter()
                .chain(hh.cores.iter())
                .filter_map(|n| file.tensor(n))
                .map(|c| c.data.len() as u64)
                .sum();
            let dense = (4 * hidden_size * (input_size + hidden_size)) as u64;
            t.params += (ih.params() + hh.params()) as u64;
            t.bytes += bytes;
            t.dense_params += dense;
            t.dense_bytes += 4 * dense;
        }
    }
    total
}

fn path_name(p: &PathSpec) -> &'static str {
    p.as_str()
}
