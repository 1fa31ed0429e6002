//! The crate's error type.

use std::fmt;

/// What went wrong, coarsely: callers map kinds to their own error classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A slice length or dimension does not match the layer's geometry.
    Shape,
    /// A parameter is out of range (bit width, stride 0, groups not dividing channels, ...).
    Invalid,
    /// Packed weights violate the storage layout (padding bits set, negative zero, ...).
    Corrupt,
    /// The requested instruction set is unknown or not supported by this CPU.
    Unsupported,
}

/// Error returned by every fallible function of this crate. Kernels never panic on bad shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelError {
    kind: ErrorKind,
    msg: String,
}

impl KernelError {
    pub(crate) fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        KernelError {
            kind,
            msg: msg.into(),
        }
    }
    pub(crate) fn shape(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shape, msg)
    }
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, msg)
    }
    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, msg)
    }
    pub(crate) fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, msg)
    }
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The human-readable message (also the `Display` output).
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for KernelError {}

/// Checks that a slice has exactly the expected length.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError::shape(format!(
            "{what}: expected {want} elements, got {got}"
        )));
    }
    Ok(())
}

/// Multiplies dimensions, failing on overflow.
pub(crate) fn mul_dims(dims: &[usize]) -> Result<usize, KernelError> {
    dims.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| KernelError::shape(format!("dimensions {dims:?} overflow usize")))
    })
}
