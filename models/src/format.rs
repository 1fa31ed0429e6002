//! The model file (docs/format.md): a safetensors container, memory-mapped and validated
//! completely before anything is built from it.
//!
//! Validation order: header length (capped) -> safetensors header (offsets cover the data
//! exactly, no overlap, shape * dtype = byte length) -> dtypes -> metadata keys -> graph
//! (references, shapes) -> preprocessing spec against the graph input -> every tensor the graph
//! names (dtype, exact shape, finite floats, packed planes: padding bits and codes) -> SHA-256.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{invalid, ErrorKind, ModelError};
use crate::graph::{parse_graph, CodeSpec, Graph, Op, ShiftAttrs};
use crate::preprocess::PreprocessSpec;
use crate::{Intent, Task};

/// Largest JSON header accepted (the graph of a ResNet-50 is well under 1 MiB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Largest number of tensors in one file.
pub const MAX_TENSORS: usize = 65_536;
/// Largest number of labels.
pub const MAX_LABELS: usize = 100_000;

/// Required metadata keys.
pub const KEY_VERSION: &str = "shiftserve.format_version";
pub const KEY_NAME: &str = "shiftserve.name";
pub const KEY_TASK: &str = "shiftserve.task";
pub const KEY_GRAPH: &str = "shiftserve.graph";
pub const KEY_PREPROCESS: &str = "shiftserve.preprocess";
pub const KEY_LABELS: &str = "shiftserve.labels";
pub const KEY_INTENTS: &str = "shiftserve.intents";
pub const KEY_SHA256: &str = "shiftserve.tensor_sha256";
pub const KEY_PRODUCER: &str = "shiftserve.producer";
pub const KEY_DESCRIPTION: &str = "shiftserve.description";
/// Optional softmax temperature: calibrated scores are `softmax(logits / T)`.
pub const KEY_TEMPERATURE: &str = "shiftserve.temperature";

/// The bytes of a model file: a read-only memory map or an owned buffer.
pub enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Element type of a stored tensor (only these three are allowed by format version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I32,
    U8,
}

impl DType {
    pub fn as_str(&self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::I32 => "I32",
            DType::U8 => "U8",
        }
    }
}

#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// A borrowed view of one stored tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    /// The values of an `F32` tensor (copied: file data need not be 4-byte aligned).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// An opened and completely validated model file.
pub struct ModelFile {
    bytes: Backing,
    tensors: BTreeMap<String, TensorEntry>,
    pub name: String,
    pub task: Task,
    pub graph: Graph,
    pub preprocess: PreprocessSpec,
    pub preprocess_json: String,
    pub labels: Vec<String>,
    pub intents: Vec<Intent>,
    pub producer: String,
    pub description: String,
    /// `shiftserve.temperature`: the softmax temperature fitted at export (positive, finite).
    pub temperature: Option<f32>,
    pub tensor_sha256: String,
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile")
            .field("name", &self.name)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl ModelFile {
    /// Memory-maps and validates `path`.
    pub fn open(path: &Path) -> Result<ModelFile, ModelError> {
        let io =
            |e: std::io::Error| ModelError::new(ErrorKind::Io, format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(ModelError::new(
                ErrorKind::Io,
                format!("{}: not a regular file", path.display()),
            ));
        }
        if meta.len() < 8 {
            return Err(invalid(format!(
                "{}: {} bytes is too short for a model file",
                path.display(),
                meta.len()
            )));
        }
        // SAFETY: the map is read-only and private to this process; model files are written
        // once and replaced by rename (a new version is a new file), never modified in place.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map))
            .map_err(|e| ModelError::new(e.kind, format!("{}: {}", path.display(), e.message)))
    }

    /// Validates an in-memory file.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<ModelFile, ModelError> {
        Self::parse(Backing::Owned(bytes))
    }

    /// Total size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// A stored tensor by name.
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let (name, e) = self.tensors.get_key_value(name)?;
        Some(TensorRef {
            name,
            dtype: e.dtype,
            shape: &e.shape,
            data: &self.bytes[e.start..e.end],
        })
    }

    /// Names of all stored tensors, ascending byte order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    fn parse(bytes: Backing) -> Result<ModelFile, ModelError> {
        let buf: &[u8] = &bytes;
        if buf.len() < 8 {
            return Err(invalid(format!(
                "file is {} bytes, too short for a safetensors header",
                buf.len()
            )));
        }
        let n = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
        if n > MAX_HEADER_BYTES {
            return Err(invalid(format!(
                "header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes"
            )));
        }
        if n + 8 > buf.len() as u64 {
            return Err(invalid(format!(
                "header length {n} runs past the end of the {}-byte file (truncated?)",
                buf.len()
            )));
        }
        let data_start = 8 + n as usize;
        let (_, meta) = SafeTensors::read_metadata(buf)
            .map_err(|e| invalid(format!("safetensors container: {e}")))?;
        let infos = meta.tensors();
        if infos.len() > MAX_TENSORS {
            return Err(invalid(format!(
                "{} tensors exceed the limit of {MAX_TENSORS}",
                infos.len()
            )));
        }
        let mut tensors = BTreeMap::new();
        for (name, info) in infos {
            let dtype = match info.dtype {
                Dtype::F32 => DType::F32,
                Dtype::I32 => DType::I32,
                Dtype::U8 => DType::U8,
                other => {
                    return Err(invalid(format!(
                        "tensor '{name}' has dtype {other:?}; only F32, I32 and U8 are allowed"
                    )))
                }
            };
            let (s, e) = info.data_offsets;
            // read_metadata checked s <= e, contiguity and that the data ends at the file end.
            let start = data_start.checked_add(s).filter(|&x| x <= buf.len());
            let end = data_start.checked_add(e).filter(|&x| x <= buf.len());
            let (Some(start), Some(end)) = (start, end) else {
                return Err(invalid(format!("tensor '{name}' lies outside the file")));
            };
            if end < start {
                return Err(invalid(format!("tensor '{name}' has inverted offsets")));
            }
            tensors.insert(
                name,
                TensorEntry {
                    dtype,
                    shape: info.shape.clone(),
                    start,
                    end,
                },
            );
        }
        let md: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let get = |key: &str| -> Result<&str, ModelError> {
            md.get(key)
                .map(String::as_str)
                .ok_or_else(|| invalid(format!("missing metadata key '{key}'")))
        };

        let version = get(KEY_VERSION)?;
        if version != "1" {
            return Err(invalid(format!(
                "format version '{version}' is not supported (this build reads version 1)"
            )));
        }
        let name = get(KEY_NAME)?.to_string();
        check_model_name(&name)?;
        let task = match get(KEY_TASK)? {
            "image_classification" => Task::ImageClassification,
            "spoken_intent" => Task::SpokenIntent,
            "audio_classification" => Task::AudioClassification,
            other => return Err(invalid(format!("unknown task '{other}'"))),
        };
        let graph = parse_graph(get(KEY_GRAPH)?)?;
        let preprocess_json = get(KEY_PREPROCESS)?.to_string();
        let preprocess = PreprocessSpec::parse(&preprocess_json)?;
        preprocess.check_against(task, &graph.input.shape)?;

        let labels: Vec<String> = parse_json_strings(get(KEY_LABELS)?, KEY_LABELS)?;
        let classes = graph.output.shape[0];
        if labels.len() != classes {
            return Err(invalid(format!(
                "{} labels for {classes} output logits",
                labels.len()
            )));
        }
        let intents = if task == Task::SpokenIntent {
            let intents = parse_intents(get(KEY_INTENTS)?)?;
            if intents.len() != labels.len() {
                return Err(invalid(format!(
                    "{} intents for {} labels",
                    intents.len(),
                    labels.len()
                )));
            }
            intents
        } else {
            Vec::new()
        };
        let producer = get(KEY_PRODUCER)?.to_string();
        let description = md.get(KEY_DESCRIPTION).cloned().unwrap_or_default();
        let temperature = match md.get(KEY_TEMPERATURE) {
            None => None,
            Some(text) => match text.trim().parse::<f32>() {
                Ok(t) if t.is_finite() && t > 0.0 => Some(t),
                _ => {
                    return Err(invalid(format!(
                        "{KEY_TEMPERATURE} must be a positive finite number, got {text:?}"
                    )))
                }
            },
        };
        let tensor_sha256 = get(KEY_SHA256)?.to_string();
        if tensor_sha256.len() != 64
            || !tensor_sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid(format!(
                "{KEY_SHA256} must be 64 lowercase hex digits"
            )));
        }

        let file = ModelFile {
            bytes,
            tensors,
            name,
            task,
            graph,
            preprocess,
            preprocess_json,
            labels,
            intents,
            producer,
            description,
            temperature,
            tensor_sha256,
        };
        file.check_tensors()?;
        file.check_hash()?;
        Ok(file)
    }

    fn check_hash(&self) -> Result<(), ModelError> {
        let mut h = Sha256::new();
        for e in self.tensors.values() {
            h.update(&self.bytes[e.start..e.end]);
        }
        let digest = h.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        if hex != self.tensor_sha256 {
            return Err(invalid(format!(
                "tensor data SHA-256 mismatch: file says {}, data hashes to {hex} (corrupt file)",
                self.tensor_sha256
            )));
        }
        Ok(())
    }

    /// A tensor the graph refers to, with its dtype and exact shape checked.
    pub(crate) fn expect(
        &self,
        node: &str,
        role: &str,
        name: &str,
        dtype: DType,
        shape: &[usize],
    ) -> Result<TensorRef<'_>, ModelError> {
        let t = self.tensor(name).ok_or_else(|| {
            invalid(format!(
                "node '{node}': {role} tensor '{name}' is not in the file"
            ))
        })?;
        if t.dtype != dtype {
            return Err(invalid(format!(
                "node '{node}': {role} tensor '{name}' is {}, expected {}",
                t.dtype.as_str(),
                dtype.as_str()
            )));
        }
        if t.shape != shape {
            return Err(invalid(format!(
                "node '{node}': {role} tensor '{name}' has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        if dtype == DType::F32 {
            if let Some(i) = t
                .data
                .chunks_exact(4)
                .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
            {
                return Err(invalid(format!(
                    "node '{node}': {role} tensor '{name}' has a non-finite value at index {i}"
                )));
            }
        }
        Ok(t)
    }

    fn check_shift(
        &self,
        node: &str,
        s: &ShiftAttrs,
        rows: usize,
        cols: usize,
    ) -> Result<(), ModelError> {
        let total = rows.checked_mul(cols).ok_or_else(|| {
            invalid(format!(
                "node '{node}': weight matrix {rows}x{cols} overflows"
            ))
        })?;
        let planes = self.expect(
            node,
            "weight",
            &s.weight,
            DType::U8,
            &[s.bits, total.div_ceil(8)],
        )?;
        check_planes(node, s.code, s.bits, total, planes.data)?;
        self.expect(node, "scale", &s.scale, DType::F32, &[rows])?;
        self.expect(node, "bias", &s.bias, DType::F32, &[rows])?;
        Ok(())
    }

    fn check_tensors(&self) -> Result<(), ModelError> {
        for node in &self.graph.nodes {
            let n = node.name.as_str();
            match &node.op {
                Op::Conv2d {
                    conv, weight, bias, ..
                } => {
                    let shape = [
                        conv.out_channels,
                        conv.in_channels / conv.groups,
                        conv.kernel.0,
                        conv.kernel.1,
                    ];
                    self.expect(n, "weight", weight, DType::F32, &shape)?;
                    self.expect(n, "bias", bias, DType::F32, &[conv.out_channels])?;
                }
                Op::ShiftConv2d { conv, shift, .. } => {
                    self.check_shift(n, shift, conv.out_channels, conv.k())?
                }
                Op::Linear {
                    in_features,
                    out_features,
                    weight,
                    bias,
                    ..
                } => {
                    self.expect(
                        n,
                        "weight",
                        weight,
                        DType::F32,
                        &[*out_features, *in_features],
                    )?;
                    self.expect(n, "bias", bias, DType::F32, &[*out_features])?;
                }
                Op::ShiftLinear {
                    in_features,
                    out_features,
                    shift,
                    ..
                } => self.check_shift(n, shift, *out_features, *in_features)?,
                Op::Lstm {
                    input_size,
                    hidden_size,
                    w_ih,
                    w_hh,
                    bias,
                    ..
                } => {
                    let g = 4 * hidden_size;
                    self.expect(n, "w_ih", w_ih, DType::F32, &[g, *input_size])?;
                    self.expect(n, "w_hh", w_hh, DType::F32, &[g, *hidden_size])?;
                    self.expect(n, "bias", bias, DType::F32, &[g])?;
                }
                Op::LstmTt {
                    hidden_size,
                    ih,
                    hh,
                    bias,
                    ..
                } => {
                    for (role, tt) in [("ih", ih), ("hh", hh)] {
                        for (k, core) in tt.cores.iter().enumerate() {
                            self.expect(
                                n,
                                &format!("{role} core {k}"),
                                core,
                                DType::F32,
                                &tt.core_shape(k),
                            )?;
                        }
                    }
                    self.expect(n, "bias", bias, DType::F32, &[4 * hidden_size])?;
                }
                Op::MaxPool2d(_)
                | Op::AvgPool2d(_)
                | Op::GlobalAvgPool
                | Op::Flatten
                | Op::Add { .. }
                | Op::Relu => {}
            }
        }
        Ok(())
    }
}

/// Checks a packed bit-plane tensor: padding bits zero and (for `with_zero`) no negative zero.
pub fn check_planes(
    node: &str,
    code: CodeSpec,
    bits: usize,
    total: usize,
    data: &[u8],
) -> Result<(), ModelError> {
    let plane_len = total.div_ceil(8);
    debug_assert_eq!(data.len(), bits * plane_len);
    let tail_bits = total % 8;
    if tail_bits != 0 {
        let pad_mask: u8 = !((1u8 << tail_bits) - 1);
        for p in 0..bits {
            let last = data[p * plane_len + plane_len - 1];
            if last & pad_mask != 0 {
                return Err(invalid(format!(
                    "node '{node}': weight plane {p} has non-zero padding bits (0x{last:02x}) after weight {total}"
                )));
            }
        }
    }
    if code == CodeSpec::WithZero {
        let sign = &data[..plane_len];
        for (i, &s) in sign.iter().enumerate() {
            let mut mag = 0u8;
            for p in 1..bits {
                mag |= data[p * plane_len + i];
            }
            let neg_zero = s & !mag;
            if neg_zero != 0 {
                let w = i * 8 + neg_zero.trailing_zeros() as usize;
                return Err(invalid(format!(
                    "node '{node}': weight {w} is a negative zero code (corrupt with_zero plane)"
                )));
            }
        }
    }
    Ok(())
}

fn check_model_name(name: &str) -> Result<(), ModelError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !ok {
        return Err(invalid(format!(
            "model name {name:?} must match [a-z0-9][a-z0-9_-]* and be at most 64 bytes"
        )));
    }
    Ok(())
}

fn parse_json_strings(text: &str, key: &str) -> Result<Vec<String>, ModelError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("{key} is not valid JSON: {e}")))?;
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(format!("{key} must be a JSON array of strings")))?;
    if arr.len() > MAX_LABELS {
        return Err(invalid(format!(
            "{key}: {} entries exceed the limit of {MAX_LABELS}",
            arr.len()
        )));
    }
    arr.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("{key} must be a JSON array of strings")))
        })
        .collect()
}

fn parse_intents(text: &str) -> Result<Vec<Intent>, ModelError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("{KEY_INTENTS} is not valid JSON: {e}")))?;
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(format!("{KEY_INTENTS} must be a JSON array")))?;
    if arr.len() > MAX_LABELS {
        return Err(invalid(format!("{KEY_INTENTS}: too many entries")));
    }
    arr.iter()
        .enumerate()
        .map(|(i, o)| {
            let field = |k: &str| {
                o.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("{KEY_INTENTS}[{i}] needs a string '{k}'")))
            };
            Ok(Intent {
                action: field("action")?,
                object: field("object")?,
                location: field("location")?,
            })
        })
        .collect()
}

/// Hex SHA-256 over tensors in ascending byte order of their names (what the exporter writes).
pub fn tensor_sha256<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<(&str, &[u8])> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut h = Sha256::new();
    for (_, d) in sorted {
        h.update(d);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
