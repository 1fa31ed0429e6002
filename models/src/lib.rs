//! shiftserve model files: loading, validation, preprocessing and execution on the shift kernels.
//!
//! CONTRACT SKELETON (docs/architecture.md): the types below are what the server compiles
//! against. Bodies are being filled in by the models work; signatures change only by agreement.

use std::fmt;
use std::path::Path;

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
    /// Numeric path of the shift layers: `"int8"`, `"float"` or `"none"`.
    pub numeric_path: String,
    pub description: String,
}

/// What the client said the payload is (Content-Type), if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaHint {
    Unknown,
    Image,
    Audio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed or unusable input (HTTP 400).
    BadInput,
    /// A media type this model cannot take (HTTP 415).
    UnsupportedMedia,
    /// Over a size limit: pixels, seconds, bytes (HTTP 413).
    TooLarge,
    /// The model file is invalid.
    InvalidModel,
    /// I/O error.
    Io,
    /// Internal failure (HTTP 500).
    Internal,
}

#[derive(Debug, Clone)]
pub struct ModelError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ModelError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ModelError { kind, message: message.into() }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ModelError {}

/// Limits applied while decoding inputs (defence against decompression bombs).
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    pub max_pixels: u64,
    pub max_audio_seconds: f32,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits { max_pixels: 40_000_000, max_audio_seconds: 30.0 }
    }
}

/// An opened, validated and planned model file. `Send + Sync`; share it behind an `Arc`.
pub struct Model {
    info: ModelInfo,
}

impl Model {
    pub fn open(path: &Path) -> Result<Model, ModelError> {
        let _ = path;
        Err(ModelError::new(ErrorKind::Internal, "models: loader not implemented yet"))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Model, ModelError> {
        let _ = bytes;
        Err(ModelError::new(ErrorKind::Internal, "models: loader not implemented yet"))
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Decode and featurize one input into the model's input tensor (`info().input_shape`).
    pub fn preprocess(&self, data: &[u8], hint: MediaHint, limits: &InputLimits) -> Result<Vec<f32>, ModelError> {
        let _ = (data, hint, limits);
        Err(ModelError::new(ErrorKind::Internal, "models: preprocessing not implemented yet"))
    }

    /// A session with buffers preallocated for up to `max_batch` samples, running on `threads` threads.
    pub fn session(&self, max_batch: usize, threads: usize) -> Session {
        let _ = threads;
        Session { max_batch, logits: Vec::new() }
    }
}

/// Runs batches; owned by one inference thread.
pub struct Session {
    max_batch: usize,
    logits: Vec<f32>,
}

impl Session {
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Runs a batch of preprocessed inputs; returns `[batch, classes]` logits.
    pub fn run(&mut self, batch: &[&[f32]]) -> Result<&[f32], ModelError> {
        let _ = batch;
        Err(ModelError::new(ErrorKind::Internal, "models: runtime not implemented yet"))?;
        Ok(&self.logits)
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The kernel instruction set in use, e.g. `"avx512"`.
pub fn kernel_isa() -> String {
    "unknown".to_string()
}
