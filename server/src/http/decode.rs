//! Request decoders: every protocol's body (OIP v2 JSON, OIP v2 binary tensors, the task API's
//! raw, multipart and base64 JSON bodies) turned into samples.
//!
//! Every size derived from a request (rank, batch, element count, byte count, output count) is
//! checked with overflow-checked arithmetic against the model and the limits before anything is
//! sized from it; what the JSON parser itself allocates is bounded by the body limit, at most
//! a small constant factor above the body (tensor data is parsed straight into `f32`s or one
//! string buffer, never into a tree of JSON values). The decoders are pure functions of the
//! bytes, the headers and the model's shape, so they are fuzzed directly (`fuzz/`, and
//! `server/tests/decoder_fuzz.rs` on stable Rust).

use super::infer::Sample;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use base64::Engine;
use bytes::Bytes;
use models::MediaHint;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

pub const INPUT_TENSOR: &str = "input";
pub const INPUT_RAW: &str = "raw";
pub const OUTPUT_LOGITS: &str = "logits";
pub const OUTPUT_PROBS: &str = "probabilities";

/// Most dimensions accepted in a request's `shape` (the models take rank 1 to 4, plus batch).
pub const MAX_SHAPE_DIMS: usize = 16;

/// What a decoder needs to know about the addressed model.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape<'a> {
    /// One sample's shape (no batch dimension).
    pub input_shape: &'a [usize],
    /// The most samples one request may carry.
    pub max_batch_size: usize,
}

impl ModelShape<'_> {
    /// Values in one sample; `None` if the product overflows (no real model does).
    pub fn per_sample(&self) -> Option<usize> {
        self.input_shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

// ----- media types: the one table -----

/// Media kind from a file name's extension (`shiftserve run`, multipart file names).
pub fn hint_from_extension(ext: Option<&str>) -> MediaHint {
    match ext.map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("wav" | "wave") => MediaHint::Audio,
        Some("png" | "jpg" | "jpeg" | "webp" | "bmp" | "gif") => MediaHint::Image,
        _ => MediaHint::Unknown,
    }
}

/// Media kind of an encoded file from its Content-Type (parameters ignored, any case), falling
/// back to the file name's extension when the type is absent or `application/octet-stream`.
/// Every front end maps media types here: `image/*` and WAV are accepted, other audio types and
/// anything else are 415.
pub fn media_hint(content_type: &str, filename: Option<&str>) -> Result<MediaHint, ApiError> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ct.starts_with("image/") {
        return Ok(MediaHint::Image);
    }
    if matches!(
        ct.as_str(),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave"
    ) {
        return Ok(MediaHint::Audio);
    }
    if ct.starts_with("audio/") {
        return Err(ApiError::unsupported_media(format!(
            "unsupported audio type {ct}: send WAV (audio/wav)"
        )));
    }
    if ct.is_empty() || ct == "application/octet-stream" {
        return Ok(hint_from_extension(
            filename.and_then(|f| f.rsplit_once('.')).map(|(_, e)| e),
        ));
    }
    Err(ApiError::unsupported_media(format!(
        "unsupported Content-Type {ct}: send image/*, audio/wav or application/octet-stream"
    )))
}

// ----- OIP v2 -----

/// Tensor data as sent in JSON: nested arrays flattened in row-major order while parsing,
/// numbers straight into `f32` and strings into one buffer.
#[derive(Debug, Default, PartialEq)]
pub enum TensorData {
    #[default]
    Empty,
    Numbers(Vec<f32>),
    /// Strings concatenated; `ends[i]` is where string `i` ends in `text`.
    Strings {
        text: String,
        ends: Vec<usize>,
    },
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::Empty => 0,
            TensorData::Numbers(v) => v.len(),
            TensorData::Strings { ends, .. } => ends.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn strings(&self) -> impl Iterator<Item = &str> {
        let (text, ends): (&str, &[usize]) = match self {
            TensorData::Strings { text, ends } => (text, ends),
            _ => ("", &[]),
        };
        let mut start = 0;
        ends.iter().map(move |&e| {
            let s = &text[start..e];
            start = e;
            s
        })
    }
}

struct Flatten<'a>(&'a mut TensorData);

impl Flatten<'_> {
    fn number<E: serde::de::Error>(self, x: f32) -> Result<(), E> {
        match self.0 {
            TensorData::Empty => *self.0 = TensorData::Numbers(vec![x]),
            TensorData::Numbers(v) => v.push(x),
            _ => return Err(E::custom("tensor data mixes numbers and strings")),
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data: numbers (or base64 strings for BYTES), in (nested) arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<(), E> {
        self.number(x as f32)
    }

    fn visit_i64<E: serde::de::Error>(self, x: i64) -> Result<(), E> {
        self.number(x as f32)
    }

    fn visit_u64<E: serde::de::Error>(self, x: u64) -> Result<(), E> {
        self.number(x as f32)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        match self.0 {
            TensorData::Empty => {
                *self.0 = TensorData::Strings {
                    text: s.to_string(),
                    ends: vec![s.len()],
                }
            }
            TensorData::Strings { text, ends } => {
                text.push_str(s);
                ends.push(text.len());
            }
            _ => return Err(E::custom("tensor data mixes numbers and strings")),
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = TensorData::Empty;
        Flatten(&mut data).deserialize(d)?;
        Ok(data)
    }
}

/// A sequence of at most `MAX_SHAPE_DIMS` integers.
fn bounded_shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an array of at most {MAX_SHAPE_DIMS} integers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<i64>, A::Error> {
            let mut out = Vec::new();
            while let Some(d) = seq.next_element::<i64>()? {
                if out.len() == MAX_SHAPE_DIMS {
                    return Err(serde::de::Error::custom(format!(
                        "shape has more than {MAX_SHAPE_DIMS} dimensions"
                    )));
                }
                out.push(d);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

/// Outputs: at most one entry per output the models have.
fn bounded_outputs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<RequestedOutput>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<RequestedOutput>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("null or an array of at most 2 outputs")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(V)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(o) = seq.next_element::<RequestedOutput>()? {
                if out.len() == 2 {
                    return Err(serde::de::Error::custom(format!(
                        "more than 2 outputs requested (the models have \"{OUTPUT_LOGITS}\" and \"{OUTPUT_PROBS}\")"
                    )));
                }
                out.push(o);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(V)
}

/// The input parameters shiftserve reads; others are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct InputParameters {
    /// Binary tensor extension: the input's bytes after the JSON header.
    pub binary_data_size: Option<u64>,
}

/// The request parameters shiftserve reads; others are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RequestParameters {
    /// Every output as binary data unless an output says otherwise.
    pub binary_data_output: Option<bool>,
}

/// The output parameters shiftserve reads; others are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OutputParameters {
    /// Classification extension: the top K as `"score:index:label"` strings.
    pub classification: Option<u64>,
    pub binary_data: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferInput {
    /// `input` (a preprocessed numeric tensor) or `raw` (BYTES: encoded image/WAV files).
    #[schema(pattern = "^(input|raw)$")]
    pub name: String,
    #[serde(deserialize_with = "bounded_shape")]
    #[schema(max_items = 16)]
    pub shape: Vec<i64>,
    /// `FP32` (other numeric types are converted) for `input`; `BYTES` for `raw`.
    #[schema(
        pattern = "^(FP16|BF16|FP32|FP64|INT8|INT16|INT32|INT64|UINT8|UINT16|UINT32|UINT64|BYTES)$"
    )]
    pub datatype: String,
    /// `binary_data_size` (binary tensor extension); other keys are ignored.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: InputParameters,
    /// Row-major data (nested arrays accepted); BYTES elements are base64 strings.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: TensorData,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestedOutput {
    /// `logits` or `probabilities`.
    #[schema(pattern = "^(logits|probabilities)$")]
    pub name: String,
    /// `classification` (int K) and `binary_data` (bool); other keys are ignored.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: OutputParameters,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferRequest {
    pub id: Option<String>,
    /// `binary_data_output` (bool); other keys are ignored.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: RequestParameters,
    /// Exactly one input: `input` or `raw`.
    #[schema(min_items = 1, max_items = 1)]
    pub inputs: Vec<InferInput>,
    /// The outputs to return (default: both); if present, not empty, each named once.
    #[serde(default, deserialize_with = "bounded_outputs")]
    #[schema(min_items = 1, max_items = 2)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One output to return.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    pub name: String,
    /// Classification extension: top K (capped at the number of classes when answering).
    pub classification: Option<usize>,
    pub binary: bool,
}

/// A decoded v2 inference request.
pub struct V2Request {
    pub id: Option<String>,
    pub outputs: Vec<OutputSpec>,
    pub samples: Vec<Sample>,
}

/// The element count of a shape, overflow-checked; negative dimensions are refused.
pub fn shape_elems(shape: &[i64]) -> Result<usize, ApiError> {
    shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d)
            .map_err(|_| ApiError::bad_request("input shape has a negative dimension"))?;
        n.checked_mul(d)
            .ok_or_else(|| ApiError::bad_request("input shape overflows"))
    })
}

/// A request's declared batch must fit the model before anything is sized from it.
fn check_batch(model: &ModelShape, batch: usize) -> Result<(), ApiError> {
    let max = model.max_batch_size;
    if batch == 0 || batch > max {
        return Err(ApiError::bad_request(format!(
            "batch of {batch} is outside 1..={max} (the model's max_batch_size)"
        )));
    }
    Ok(())
}

/// Splits BYTES binary data (each element a 4-byte little-endian length, then the bytes) into
/// exactly `expected` elements.
fn split_bytes_elements(mut data: Bytes, expected: usize) -> Result<Vec<Bytes>, ApiError> {
    let mut out = Vec::with_capacity(expected);
    while !data.is_empty() {
        if out.len() == expected {
            return Err(ApiError::bad_request(format!(
                "input \"{INPUT_RAW}\" binary data has more than the {expected} elements its shape declares"
            )));
        }
        if data.len() < 4 {
            return Err(ApiError::bad_request("truncated BYTES element length"));
        }
        let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let _ = data.split_to(4);
        if data.len() < n {
            return Err(ApiError::bad_request(
                "BYTES element longer than the binary data",
            ));
        }
        out.push(data.split_to(n));
    }
    Ok(out)
}

/// The request's `Inference-Header-Content-Length`, if any.
pub fn parse_header_len(value: Option<&[u8]>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(h) => std::str::from_utf8(h)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request("Inference-Header-Content-Length must be an integer")
            }),
    }
}

/// Decodes a v2 inference body: JSON, JSON header + binary tensors (`header_len` > 0), or one
/// raw encoded file (`header_len` = 0, its kind from `content_type`).
pub fn decode_v2(
    body: Bytes,
    header_len: Option<&[u8]>,
    content_type: &str,
    model: &ModelShape,
) -> Result<V2Request, ApiError> {
    match parse_header_len(header_len)? {
        Some(0) => {
            let hint = media_hint(content_type, None)?;
            Ok(V2Request {
                id: None,
                outputs: output_specs(&RequestParameters::default(), None)?,
                samples: vec![Sample::Encoded { data: body, hint }],
            })
        }
        Some(n) if n > body.len() => Err(ApiError::bad_request(format!(
            "Inference-Header-Content-Length {n} exceeds the body ({} bytes)",
            body.len()
        ))),
        other => {
            let n = other.unwrap_or(body.len());
            let request: InferRequest = super::json_object(&body[..n]).map_err(|e| {
                ApiError::bad_request(format!("invalid inference request JSON: {e}"))
            })?;
            let binary = body.slice(n..);
            let outputs = output_specs(&request.parameters, request.outputs)?;
            let samples = samples_from_inputs(model, request.inputs, binary)?;
            Ok(V2Request {
                id: request.id,
                outputs,
                samples,
            })
        }
    }
}

/// Bytes per element of a numeric tensor datatype; `None` for anything else.
pub fn numeric_element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

/// An IEEE 754 half-precision value.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Little-endian elements of a numeric datatype as `f32`s. The caller has checked that `raw`
/// holds a whole number of elements of a datatype `numeric_element_size` knows.
fn le_to_f32(datatype: &str, raw: &[u8]) -> Vec<f32> {
    macro_rules! conv {
        ($t:ty) => {
            raw.chunks_exact(std::mem::size_of::<$t>())
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")) as f32)
                .collect()
        };
    }
    match datatype {
        "INT8" => conv!(i8),
        "UINT8" => conv!(u8),
        "INT16" => conv!(i16),
        "UINT16" => conv!(u16),
        "INT32" => conv!(i32),
        "UINT32" => conv!(u32),
        "INT64" => conv!(i64),
        "UINT64" => conv!(u64),
        "FP32" => conv!(f32),
        "FP64" => conv!(f64),
        "FP16" => raw
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        "BF16" => raw
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        _ => unreachable!("numeric datatypes only"),
    }
}

/// Turns the request's inputs into samples: the one pipeline of the v2 front ends (HTTP JSON,
/// HTTP binary tensors, gRPC). `binary` holds the binary data of the inputs that declare a
/// `binary_data_size`, in order (the gRPC front end passes its raw contents this way).
pub fn samples_from_inputs(
    model: &ModelShape,
    inputs: Vec<InferInput>,
    mut binary: Bytes,
) -> Result<Vec<Sample>, ApiError> {
    if inputs.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "expected exactly one input, \"{INPUT_TENSOR}\" (FP32 tensor) or \"{INPUT_RAW}\" (BYTES, encoded image/WAV); got {}",
            inputs.len()
        )));
    }
    let input = inputs.into_iter().next().expect("one input");
    let bin: Option<Bytes> = match input.parameters.binary_data_size {
        Some(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= binary.len())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "input \"{}\" declares binary_data_size {n} but only {} binary bytes follow the header",
                        input.name,
                        binary.len()
                    ))
                })?;
            Some(binary.split_to(n))
        }
        None => None,
    };
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} unclaimed bytes of binary data after the header",
            binary.len()
        )));
    }
    match (input.name.as_str(), input.datatype.as_str()) {
        (INPUT_TENSOR, dt) => {
            let per = model
                .per_sample()
                .ok_or_else(|| ApiError::internal("model input shape overflows"))?;
            let total = shape_elems(&input.shape)?;
            let dims = &input.shape;
            let same = |a: &[i64], b: &[usize]| {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(&x, &y)| usize::try_from(x).ok() == Some(y))
            };
            let batch = if same(dims, model.input_shape) {
                1
            } else if dims.len() == model.input_shape.len() + 1
                && same(&dims[1..], model.input_shape)
            {
                dims[0] as usize
            } else {
                return Err(ApiError::bad_request(format!(
                    "input \"{INPUT_TENSOR}\" shape {:?} does not match [-1, {}]",
                    input.shape,
                    model
                        .input_shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            // The declared batch against the model's limit, the element count against the
            // shape, before anything is sized from them.
            check_batch(model, batch)?;
            let expected = batch
                .checked_mul(per)
                .filter(|&e| e == total)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "input \"{INPUT_TENSOR}\" shape {:?} is too large ({total} elements)",
                        input.shape
                    ))
                })?;
            let values: Vec<f32> = match bin {
                Some(b) => {
                    let Some(size) = numeric_element_size(dt) else {
                        return Err(ApiError::bad_request(format!(
                            "input \"{INPUT_TENSOR}\" must be numeric (FP32), got {dt}"
                        )));
                    };
                    if expected.checked_mul(size) != Some(b.len()) {
                        return Err(ApiError::bad_request(format!(
                            "binary data of \"{INPUT_TENSOR}\" has {} bytes, shape {:?} of {dt} needs {}",
                            b.len(),
                            input.shape,
                            expected.saturating_mul(size)
                        )));
                    }
                    le_to_f32(dt, &b)
                }
                None => {
                    if numeric_element_size(dt).is_none() {
                        return Err(ApiError::bad_request(format!(
                            "input \"{INPUT_TENSOR}\" must be numeric (FP32), got {dt}"
                        )));
                    }
                    match input.data {
                        TensorData::Empty => {
                            return Err(ApiError::bad_request(format!(
                                "input \"{INPUT_TENSOR}\" has no data"
                            )))
                        }
                        TensorData::Numbers(v) if v.len() == expected => v,
                        TensorData::Numbers(v) => {
                            return Err(ApiError::bad_request(format!(
                                "input \"{INPUT_TENSOR}\" has {} values, shape {:?} needs {expected}",
                                v.len(),
                                input.shape
                            )))
                        }
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "input \"{INPUT_TENSOR}\" data must be numbers"
                            )))
                        }
                    }
                }
            };
            Ok(values
                .chunks_exact(per)
                .map(|c| Sample::Tensor(c.to_vec()))
                .collect())
        }
        (INPUT_RAW, "BYTES") => {
            let total = shape_elems(&input.shape)?;
            check_batch(model, total)?;
            let elems: Vec<Bytes> = match bin {
                Some(b) => split_bytes_elements(b, total)?,
                None => match &input.data {
                    TensorData::Empty => {
                        return Err(ApiError::bad_request(format!(
                            "input \"{INPUT_RAW}\" has no data"
                        )))
                    }
                    TensorData::Strings { ends, .. } if ends.len() != total => {
                        return Err(ApiError::bad_request(format!(
                            "input \"{INPUT_RAW}\" has {} elements, shape {:?} needs {total}",
                            ends.len(),
                            input.shape
                        )))
                    }
                    TensorData::Strings { .. } => input
                        .data
                        .strings()
                        .map(|s| {
                            base64::engine::general_purpose::STANDARD
                                .decode(s)
                                .map(Bytes::from)
                                .map_err(|e| {
                                    ApiError::bad_request(format!(
                                        "input \"{INPUT_RAW}\" is not valid base64: {e}"
                                    ))
                                })
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "input \"{INPUT_RAW}\" elements must be base64 strings"
                        )))
                    }
                },
            };
            if elems.len() != total {
                return Err(ApiError::bad_request(format!(
                    "input \"{INPUT_RAW}\" has {} elements, shape {:?} needs {total}",
                    elems.len(),
                    input.shape
                )));
            }
            Ok(elems
                .into_iter()
                .map(|data| Sample::Encoded {
                    data,
                    hint: MediaHint::Unknown,
                })
                .collect())
        }
        (INPUT_RAW, dt) => Err(ApiError::bad_request(format!(
            "input \"{INPUT_RAW}\" must be BYTES, got {dt}"
        ))),
        (other, _) => Err(ApiError::bad_request(format!(
            "unknown input \"{other}\": expected \"{INPUT_TENSOR}\" (FP32 tensor) or \"{INPUT_RAW}\" (BYTES, encoded image/WAV)"
        ))),
    }
}

/// The outputs to return: both when none are named; each named output once.
pub fn output_specs(
    params: &RequestParameters,
    outputs: Option<Vec<RequestedOutput>>,
) -> Result<Vec<OutputSpec>, ApiError> {
    let all_binary = params.binary_data_output.unwrap_or(false);
    let requested = match outputs {
        None => vec![
            RequestedOutput {
                name: OUTPUT_LOGITS.into(),
                parameters: OutputParameters::default(),
            },
            RequestedOutput {
                name: OUTPUT_PROBS.into(),
                parameters: OutputParameters::default(),
            },
        ],
        Some(o) if o.is_empty() => {
            return Err(ApiError::bad_request("\"outputs\" is empty"));
        }
        Some(o) => o,
    };
    let mut specs: Vec<OutputSpec> = Vec::with_capacity(requested.len());
    for o in requested {
        if o.name != OUTPUT_LOGITS && o.name != OUTPUT_PROBS {
            return Err(ApiError::bad_request(format!(
                "unknown output \"{}\": expected \"{OUTPUT_LOGITS}\" or \"{OUTPUT_PROBS}\"",
                o.name
            )));
        }
        if specs.iter().any(|s| s.name == o.name) {
            return Err(ApiError::bad_request(format!(
                "output \"{}\" is requested twice",
                o.name
            )));
        }
        let classification = match o.parameters.classification {
            None => None,
            Some(0) => {
                return Err(ApiError::bad_request(
                    "classification must be a positive integer",
                ))
            }
            Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        };
        specs.push(OutputSpec {
            name: o.name,
            classification,
            binary: o.parameters.binary_data.unwrap_or(all_binary),
        });
    }
    Ok(specs)
}

// ----- task API -----

/// The body of a task API request: one encoded file.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct B64Body {
    /// The image or WAV file, base64 (a `data:...;base64,` prefix is accepted).
    pub b64: String,
    /// Optional, same as the `top_k` query parameter (which wins when both are given).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    pub top_k: Option<u32>,
}

/// A decoded task API body.
#[derive(Debug)]
pub struct TaskInput {
    pub data: Bytes,
    pub hint: MediaHint,
    /// `top_k` from a JSON body.
    pub top_k: Option<u32>,
}

/// Base64 (standard or URL-safe alphabet, whitespace ignored), optionally as a `data:` URL
/// whose media type gives the kind.
pub fn decode_b64(s: &str) -> Result<(Bytes, MediaHint), ApiError> {
    let (hint, payload) = match s.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::bad_request("malformed data: URL"))?;
            (media_hint(meta.trim_end_matches(";base64"), None)?, data)
        }
        None => (MediaHint::Unknown, s),
    };
    let cleaned: Vec<u8> = payload
        .bytes()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&cleaned))
        .map_err(|e| ApiError::bad_request(format!("b64 is not valid base64: {e}")))?;
    Ok((Bytes::from(bytes), hint))
}

/// Decodes a task API body (already read, within the body limit): a raw image or WAV,
/// `multipart/form-data` with a field `file`, or JSON `{"b64": ...}`.
pub async fn decode_task(content_type: &str, body: Bytes) -> Result<TaskInput, ApiError> {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if base == "multipart/form-data" {
        let req = Request::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .map_err(|e| ApiError::bad_request(format!("malformed multipart request: {e}")))?;
        let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
            ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        })?;
        loop {
            let field = mp.next_field().await.map_err(|e| {
                ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
            })?;
            let Some(field) = field else {
                return Err(ApiError::bad_request(
                    "multipart body has no field named \"file\"",
                ));
            };
            if field.name() != Some("file") {
                continue;
            }
            let fct = field.content_type().unwrap_or("").to_string();
            let fname = field.file_name().map(str::to_string);
            let hint = media_hint(&fct, fname.as_deref())?;
            let data = field.bytes().await.map_err(|e| {
                ApiError::bad_request(format!("cannot read multipart field: {}", e.body_text()))
            })?;
            return Ok(TaskInput {
                data,
                hint,
                top_k: None,
            });
        }
    }
    if base == "application/json" {
        let parsed: B64Body = super::json_object(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        let (data, hint) = decode_b64(&parsed.b64)?;
        return Ok(TaskInput {
            data,
            hint,
            top_k: parsed.top_k,
        });
    }
    let hint = media_hint(&base, None).map_err(|e| {
        ApiError::unsupported_media(format!(
            "{}; or multipart/form-data (field \"file\") or application/json {{\"b64\": ...}}",
            e.message
        ))
    })?;
    Ok(TaskInput {
        data: body,
        hint,
        top_k: None,
    })
}

/// Entry points for fuzzing the decoders (`fuzz/` with cargo-fuzz, and the stable-Rust harness
/// in `server/tests/decoder_fuzz.rs`): each takes arbitrary bytes, decodes them as a request to a
/// model of shape `[1, 28, 28]` with `max_batch_size` 8, and panics only if a decoder accepts
/// something that breaks the sizes it promises (or panics itself).
pub mod fuzzing {
    use super::*;

    pub const SHAPE: ModelShape<'static> = ModelShape {
        input_shape: &[1, 28, 28],
        max_batch_size: 8,
    };

    const CONTENT_TYPES: [&str; 8] = [
        "",
        "application/json",
        "image/png",
        "audio/wav",
        "audio/mpeg",
        "application/octet-stream",
        "multipart/form-data; boundary=X",
        "text/plain",
    ];

    /// Panics if an accepted request breaks the sizes the decoders promise for `SHAPE`.
    pub fn check_v2(r: Result<V2Request, ApiError>) {
        let Ok(r) = r else { return };
        let per = SHAPE.per_sample().unwrap();
        assert!(
            (1..=SHAPE.max_batch_size).contains(&r.samples.len()),
            "{} samples accepted",
            r.samples.len()
        );
        for s in &r.samples {
            if let Sample::Tensor(t) = s {
                assert_eq!(t.len(), per, "tensor of the wrong length accepted");
            }
        }
        assert!((1..=2).contains(&r.outputs.len()));
        if r.outputs.len() == 2 {
            assert_ne!(r.outputs[0].name, r.outputs[1].name);
        }
    }

    /// The whole input is a v2 JSON body.
    pub fn v2_json(data: &[u8]) {
        check_v2(decode_v2(
            Bytes::copy_from_slice(data),
            None,
            "application/json",
            &SHAPE,
        ));
    }

    /// Byte 0 picks the Content-Type, bytes 1-2 (little-endian) are the
    /// `Inference-Header-Content-Length`, the rest is the body (JSON header + binary tensors).
    pub fn v2_binary(data: &[u8]) {
        if data.len() < 3 {
            return;
        }
        let ct = CONTENT_TYPES[data[0] as usize % CONTENT_TYPES.len()];
        let hl = u16::from_le_bytes([data[1], data[2]]).to_string();
        check_v2(decode_v2(
            Bytes::copy_from_slice(&data[3..]),
            Some(hl.as_bytes()),
            ct,
            &SHAPE,
        ));
    }

    /// Byte 0 picks the Content-Type (multipart with boundary `X` among them), the rest is a
    /// task API body.
    pub fn task(data: &[u8]) {
        let Some((&sel, body)) = data.split_first() else {
            return;
        };
        let ct = CONTENT_TYPES[sel as usize % CONTENT_TYPES.len()];
        thread_local! {
            static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
        }
        let r = RT.with(|rt| rt.block_on(decode_task(ct, Bytes::copy_from_slice(body))));
        if let Ok(t) = r {
            assert!(
                t.data.len() <= body.len(),
                "decoded file larger than the body"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ModelShape = ModelShape {
        input_shape: &[1, 2, 2],
        max_batch_size: 4,
    };

    fn v2(body: &str) -> Result<V2Request, ApiError> {
        decode_v2(
            Bytes::from(body.to_string()),
            None,
            "application/json",
            &SHAPE,
        )
    }

    #[test]
    fn media_hints() {
        assert_eq!(media_hint("image/png", None).unwrap(), MediaHint::Image);
        assert_eq!(media_hint("audio/wav", None).unwrap(), MediaHint::Audio);
        assert_eq!(
            media_hint("Audio/X-WAV; charset=binary", None).unwrap(),
            MediaHint::Audio
        );
        assert_eq!(media_hint("", Some("a.WAV")).unwrap(), MediaHint::Audio);
        assert_eq!(
            media_hint("application/octet-stream", Some("x.jpg")).unwrap(),
            MediaHint::Image
        );
        assert_eq!(media_hint("", None).unwrap(), MediaHint::Unknown);
        assert_eq!(media_hint("audio/mpeg", None).unwrap_err().status, 415);
        assert_eq!(media_hint("text/plain", None).unwrap_err().status, 415);
    }

    #[test]
    fn base64_forms() {
        let (b, h) = decode_b64("aGVsbG8=").unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(h, MediaHint::Unknown);
        let (b, h) = decode_b64("data:image/png;base64,aGVs\nbG8=").unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(h, MediaHint::Image);
        assert_eq!(decode_b64("%%%").unwrap_err().status, 400);
        assert_eq!(
            decode_b64("data:audio/mpeg;base64,aGVsbG8=")
                .unwrap_err()
                .status,
            415
        );
    }

    #[test]
    fn nested_data_is_flattened_into_samples() {
        let r = v2(
            r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[2,1,2,2],
            "data":[[[[1,2],[3,4]]],[[[5,6],[7,8.5]]]]}]}"#,
        )
        .unwrap();
        assert_eq!(r.samples.len(), 2);
        match &r.samples[1] {
            Sample::Tensor(t) => assert_eq!(t, &vec![5.0, 6.0, 7.0, 8.5]),
            _ => panic!("tensor expected"),
        }
        assert_eq!(r.outputs.len(), 2);
    }

    #[test]
    fn sizes_are_checked_before_allocation() {
        for (body, needle) in [
            // batch over the model's limit (the issue's 10^7 case)
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[10000000,1,2,2],"data":[1,2,3,4]}]}"#,
                "max_batch_size",
            ),
            // product overflows
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[9223372036854775807,9223372036854775807,1,2,2],"data":[1]}]}"#,
                "overflows",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[0,1,2,2],"data":[]}]}"#,
                "max_batch_size",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[-1,1,2,2],"data":[1,2,3,4]}]}"#,
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"raw","datatype":"BYTES","shape":[1000000000],"data":["AAAA"]}]}"#,
                "max_batch_size",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data":[1]}]}"#,
                "dimensions",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[2,1,2,2],"data":[1,2,3,4]}]}"#,
                "needs 8",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2,2],"data":[1,"a",3,4]}]}"#,
                "mixes",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2,2],"data":[true,1,3,4]}]}"#,
                "numbers",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2,2],"data":[1,2,3,4]}],
                "outputs":[{"name":"logits"},{"name":"logits"}]}"#,
                "twice",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2,2],"data":[1,2,3,4]}],
                "outputs":[{"name":"logits"},{"name":"probabilities"},{"name":"logits"}]}"#,
                "more than 2",
            ),
            (
                r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2,2],"data":[1,2,3,4]}],
                "outputs":[{"name":"logits","parameters":{"classification":0}}]}"#,
                "positive",
            ),
        ] {
            let e = v2(body).err().unwrap_or_else(|| panic!("accepted: {body}"));
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn binary_tensors() {
        let header = r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,2,2],"parameters":{"binary_data_size":16}}]}"#;
        let mut body = header.as_bytes().to_vec();
        for x in [1.0f32, 2.0, 3.0, 4.0] {
            body.extend_from_slice(&x.to_le_bytes());
        }
        let hl = header.len().to_string();
        let r = decode_v2(Bytes::from(body.clone()), Some(hl.as_bytes()), "", &SHAPE).unwrap();
        assert!(matches!(&r.samples[0], Sample::Tensor(t) if t == &vec![1.0, 2.0, 3.0, 4.0]));
        // Declared size beyond the body, a u64 beyond usize, a header length beyond the body.
        let big = header.replace("16", "18446744073709551615");
        let mut b2 = big.as_bytes().to_vec();
        b2.extend_from_slice(&[0; 16]);
        let hl2 = big.len().to_string();
        assert_eq!(
            decode_v2(Bytes::from(b2), Some(hl2.as_bytes()), "", &SHAPE)
                .err()
                .unwrap()
                .status,
            400
        );
        let e = decode_v2(
            Bytes::from(body),
            Some(b"99999999999999999999999"),
            "",
            &SHAPE,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("Inference-Header-Content-Length"));
        // BYTES elements beyond the declared count are refused while splitting.
        let header = r#"{"inputs":[{"name":"raw","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":16}}]}"#;
        let mut body = header.as_bytes().to_vec();
        for _ in 0..4 {
            body.extend_from_slice(&0u32.to_le_bytes());
        }
        let hl = header.len().to_string();
        let e = decode_v2(Bytes::from(body), Some(hl.as_bytes()), "", &SHAPE)
            .err()
            .unwrap();
        assert!(e.message.contains("more than the 1"), "{}", e.message);
    }

    #[test]
    fn binary_tensors_of_every_numeric_type() {
        let run = |dt: &str, data: &[u8]| {
            let header = format!(
                r#"{{"inputs":[{{"name":"input","datatype":"{dt}","shape":[1,2,2],"parameters":{{"binary_data_size":{}}}}}]}}"#,
                data.len()
            );
            let mut body = header.as_bytes().to_vec();
            body.extend_from_slice(data);
            let hl = header.len().to_string();
            decode_v2(Bytes::from(body), Some(hl.as_bytes()), "", &SHAPE).map(|r| {
                match &r.samples[0] {
                    Sample::Tensor(t) => t.clone(),
                    _ => panic!("tensor expected"),
                }
            })
        };
        assert_eq!(
            run("UINT8", &[0, 1, 128, 255]).unwrap(),
            [0.0, 1.0, 128.0, 255.0]
        );
        assert_eq!(
            run("INT8", &[0, 1, 0x80, 0xff]).unwrap(),
            [0.0, 1.0, -128.0, -1.0]
        );
        let f16: Vec<u8> = [0x3c00u16, 0xc000, 0x3555, 0x0001]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(
            run("FP16", &f16).unwrap(),
            [1.0, -2.0, 0.333_251_95, 2f32.powi(-24)]
        );
        let bf16: Vec<u8> = [0x3fc0u16; 4]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(run("BF16", &bf16).unwrap(), [1.5; 4]);
        let f64s: Vec<u8> = [1.5f64, -2.0, 0.0, 1e3]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(run("FP64", &f64s).unwrap(), [1.5, -2.0, 0.0, 1e3]);
        // The byte count follows the datatype's element size, checked before converting.
        let e = run("UINT8", &[0; 16]).err().unwrap();
        assert!(e.message.contains("needs 4"), "{}", e.message);
        let e = run("FP64", &[0; 16]).err().unwrap();
        assert!(e.message.contains("needs 32"), "{}", e.message);
        let e = run("BOOL", &[0; 4]).err().unwrap();
        assert!(e.message.contains("numeric"), "{}", e.message);
        assert!(f16_to_f32(0x7c00).is_infinite() && f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn raw_binary_uses_the_media_table() {
        let r = decode_v2(Bytes::from_static(b"x"), Some(b"0"), "image/png", &SHAPE).unwrap();
        assert!(matches!(
            &r.samples[0],
            Sample::Encoded {
                hint: MediaHint::Image,
                ..
            }
        ));
        let e = decode_v2(Bytes::from_static(b"x"), Some(b"0"), "audio/mpeg", &SHAPE)
            .err()
            .unwrap();
        assert_eq!(e.status, 415);
    }
}
