//! Errors of the models crate. Every failure carries a kind the server maps to a status.

use std::fmt;

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
        ModelError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ModelError {}

/// The error type of preprocessing (same type; the kind tells 400 / 413 / 415 apart).
pub type PreprocessError = ModelError;

pub(crate) fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::new(ErrorKind::InvalidModel, msg)
}

pub(crate) fn bad_input(msg: impl Into<String>) -> ModelError {
    ModelError::new(ErrorKind::BadInput, msg)
}

pub(crate) fn too_large(msg: impl Into<String>) -> ModelError {
    ModelError::new(ErrorKind::TooLarge, msg)
}

pub(crate) fn unsupported(msg: impl Into<String>) -> ModelError {
    ModelError::new(ErrorKind::UnsupportedMedia, msg)
}

pub(crate) fn internal(msg: impl Into<String>) -> ModelError {
    ModelError::new(ErrorKind::Internal, msg)
}
