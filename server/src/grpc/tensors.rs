//! gRPC tensors to and from the v2 request form of `crate::http::v2`.
//!
//! Every input becomes what an HTTP client sends with Triton's binary tensor extension: numeric
//! tensors as FP32 little-endian bytes, BYTES tensors as length-prefixed elements, each declared
//! by a `binary_data_size` parameter. From there the HTTP route's own parsing checks names,
//! shapes, batch limits and element counts, so both protocols accept and refuse the same requests.

use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{infer_parameter::ParameterChoice, InferParameter, InferTensorContents};
use super::proto::{ModelInferRequest, ModelInferResponse};
use crate::error::ApiError;
use crate::http::v2::{
    bytes_elements, InferInput, OutputData, OutputSpec, OutputTensor, RequestedOutput, INPUT_RAW,
};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A `ModelInferRequest` in the v2 request form.
pub struct Parsed {
    pub id: String,
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferInput>,
    /// The binary data of `inputs`, in order.
    pub binary: Bytes,
    pub outputs: Option<Vec<RequestedOutput>>,
}

fn parameters(p: HashMap<String, InferParameter>) -> Map<String, Value> {
    p.into_iter()
        .filter_map(|(k, v)| {
            let v = match v.parameter_choice? {
                ParameterChoice::BoolParam(b) => Value::Bool(b),
                ParameterChoice::Int64Param(i) => Value::from(i),
                ParameterChoice::StringParam(s) => Value::String(s),
            };
            Some((k, v))
        })
        .collect()
}

pub fn parse_request(r: ModelInferRequest) -> Result<Parsed, ApiError> {
    let raw = r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(ApiError::bad_request(format!(
            "raw_input_contents has {} entries for {} inputs: give one per input, in order",
            raw.len(),
            r.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    let mut binary = BytesMut::new();
    for input in r.inputs {
        let (input, data) = input_v2(input, raw.next())?;
        binary.extend_from_slice(&data);
        inputs.push(input);
    }
    let outputs = if r.outputs.is_empty() {
        None
    } else {
        Some(r.outputs.into_iter().map(output_v2).collect())
    };
    Ok(Parsed {
        id: r.id,
        parameters: parameters(r.parameters),
        inputs,
        binary: binary.freeze(),
        outputs,
    })
}

fn output_v2(o: InferRequestedOutputTensor) -> RequestedOutput {
    RequestedOutput {
        name: o.name,
        parameters: parameters(o.parameters),
    }
}

/// Elements of a shape (the protocol requires the contents to hold exactly that many).
fn elements(name: &str, shape: &[i64]) -> Result<usize, ApiError> {
    shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d).map_err(|_| {
            ApiError::bad_request(format!(
                "input \"{name}\" shape {shape:?} has a negative dimension"
            ))
        })?;
        n.checked_mul(d).ok_or_else(|| {
            ApiError::bad_request(format!("input \"{name}\" shape {shape:?} overflows"))
        })
    })
}

/// Bytes per element of a numeric datatype.
fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * (2.0f32).powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * (2.0f32).powi(e - 15),
    }
}

/// Raw little-endian elements of `datatype` as f32 values.
fn raw_to_f32(datatype: &str, raw: &[u8]) -> Vec<f32> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            raw.chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")) as f32)
                .collect()
        };
    }
    match datatype {
        "INT8" => conv!(i8, 1),
        "UINT8" => conv!(u8, 1),
        "INT16" => conv!(i16, 2),
        "UINT16" => conv!(u16, 2),
        "INT32" => conv!(i32, 4),
        "UINT32" => conv!(u32, 4),
        "INT64" => conv!(i64, 8),
        "UINT64" => conv!(u64, 8),
        "FP32" => conv!(f32, 4),
        "FP64" => conv!(f64, 8),
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

/// The typed contents of a numeric datatype as f32 values, and the number of values given in
/// fields that do not belong to the datatype (which must be none).
fn typed_to_f32(datatype: &str, c: InferTensorContents) -> Option<(Vec<f32>, usize)> {
    let total = c.bool_contents.len()
        + c.int_contents.len()
        + c.int64_contents.len()
        + c.uint_contents.len()
        + c.uint64_contents.len()
        + c.fp32_contents.len()
        + c.fp64_contents.len()
        + c.bytes_contents.len();
    let values: Vec<f32> = match datatype {
        "INT8" | "INT16" | "INT32" => c.int_contents.iter().map(|&x| x as f32).collect(),
        "INT64" => c.int64_contents.iter().map(|&x| x as f32).collect(),
        "UINT8" | "UINT16" | "UINT32" => c.uint_contents.iter().map(|&x| x as f32).collect(),
        "UINT64" => c.uint64_contents.iter().map(|&x| x as f32).collect(),
        "FP32" => c.fp32_contents,
        "FP64" => c.fp64_contents.iter().map(|&x| x as f32).collect(),
        _ => return None,
    };
    let other = total - values.len();
    Some((values, other))
}

/// One input tensor in the v2 form, with its binary data.
fn input_v2(t: InferInputTensor, raw: Option<Bytes>) -> Result<(InferInput, Bytes), ApiError> {
    let name = t.name;
    let datatype = t.datatype;
    if t.parameters.contains_key("shared_memory_region") {
        return Err(ApiError::bad_request(format!(
            "input \"{name}\": shared memory is not supported; send the data in the request"
        )));
    }
    let n = elements(&name, &t.shape)?;
    let data: Bytes = if datatype == "BYTES" {
        match (raw, t.contents) {
            (Some(_), Some(_)) => return Err(both(&name)),
            // Length-prefixed elements already; the v2 parser splits and counts them.
            (Some(raw), None) => raw,
            (None, Some(c)) => {
                let others = c.bool_contents.len()
                    + c.int_contents.len()
                    + c.int64_contents.len()
                    + c.uint_contents.len()
                    + c.uint64_contents.len()
                    + c.fp32_contents.len()
                    + c.fp64_contents.len();
                if others > 0 {
                    return Err(ApiError::bad_request(format!(
                        "input \"{name}\" is BYTES: its contents go in bytes_contents"
                    )));
                }
                Bytes::from(bytes_elements(&c.bytes_contents))
            }
            (None, None) => return Err(no_data(&name)),
        }
    } else {
        if name == INPUT_RAW {
            return Err(ApiError::bad_request(format!(
                "input \"{INPUT_RAW}\" must be BYTES, got {datatype}"
            )));
        }
        let Some(size) = element_size(&datatype) else {
            return Err(ApiError::bad_request(format!(
                "input \"{name}\" must be numeric (FP32, or another integer or float type), got {datatype:?}"
            )));
        };
        let values = match (raw, t.contents) {
            (Some(_), Some(_)) => return Err(both(&name)),
            (Some(raw), None) => {
                if Some(raw.len()) != n.checked_mul(size) {
                    return Err(ApiError::bad_request(format!(
                        "raw contents of input \"{name}\" have {} bytes, shape {:?} of {datatype} needs {}",
                        raw.len(),
                        t.shape,
                        n.saturating_mul(size)
                    )));
                }
                if datatype == "FP32" {
                    raw
                } else {
                    f32_bytes(&raw_to_f32(&datatype, &raw))
                }
            }
            (None, Some(c)) => {
                let Some((values, other)) = typed_to_f32(&datatype, c) else {
                    return Err(ApiError::bad_request(format!(
                        "input \"{name}\": {datatype} has no typed contents field; send it as raw_input_contents"
                    )));
                };
                if other > 0 {
                    return Err(ApiError::bad_request(format!(
                        "input \"{name}\" is {datatype} but has contents in fields of other datatypes"
                    )));
                }
                if values.len() != n {
                    return Err(ApiError::bad_request(format!(
                        "input \"{name}\" has {} values, shape {:?} needs {n}",
                        values.len(),
                        t.shape
                    )));
                }
                f32_bytes(&values)
            }
            (None, None) => return Err(no_data(&name)),
        };
        debug_assert_eq!(values.len(), n * 4);
        values
    };
    let mut parameters = Map::new();
    parameters.insert("binary_data_size".into(), Value::from(data.len()));
    let input = InferInput {
        name,
        shape: t.shape,
        datatype: if datatype == "BYTES" {
            datatype
        } else {
            "FP32".into()
        },
        parameters,
        data: None,
    };
    Ok((input, data))
}

fn f32_bytes(v: &[f32]) -> Bytes {
    v.iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>()
        .into()
}

fn both(name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "input \"{name}\" has both contents and raw_input_contents: give one"
    ))
}

fn no_data(name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "input \"{name}\" has no data (neither contents nor raw_input_contents)"
    ))
}

/// The answer, with every output's data in raw_output_contents as Triton answers (FP32
/// little-endian, BYTES length-prefixed).
pub fn response(
    model: &str,
    version: &str,
    id: String,
    specs: &[OutputSpec],
    outputs: Vec<OutputTensor>,
) -> ModelInferResponse {
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw = Vec::with_capacity(outputs.len());
    for (spec, t) in specs.iter().zip(outputs) {
        raw.push(match &t.data {
            OutputData::Fp32(v) => f32_bytes(v),
            OutputData::Bytes(s) => Bytes::from(bytes_elements(s)),
        });
        tensors.push(InferOutputTensor {
            name: spec.name.clone(),
            datatype: t.datatype.to_string(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
    }
    ModelInferResponse {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id,
        parameters: HashMap::new(),
        outputs: tensors,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        // bf16 1.5 = 0x3fc0
        assert_eq!(raw_to_f32("BF16", &0x3fc0u16.to_le_bytes()), vec![1.5]);
    }

    #[test]
    fn numeric_inputs_become_fp32_binary() {
        let t = InferInputTensor {
            name: "input".into(),
            datatype: "UINT8".into(),
            shape: vec![1, 3],
            parameters: HashMap::new(),
            contents: None,
        };
        let (i, data) = input_v2(t.clone(), Some(Bytes::from_static(&[0, 128, 255]))).unwrap();
        assert_eq!(i.datatype, "FP32");
        assert_eq!(i.parameters["binary_data_size"], 12);
        assert_eq!(data, f32_bytes(&[0.0, 128.0, 255.0]));
        // Raw size must match the shape.
        let e = input_v2(t.clone(), Some(Bytes::from_static(&[0, 1]))).unwrap_err();
        assert!(e.message.contains("needs 3"), "{}", e.message);
        // Typed contents in the datatype's field only.
        let typed = |c: InferTensorContents| InferInputTensor {
            contents: Some(c),
            ..t.clone()
        };
        let (_, data) = input_v2(
            typed(InferTensorContents {
                uint_contents: vec![1, 2, 3],
                ..Default::default()
            }),
            None,
        )
        .unwrap();
        assert_eq!(data, f32_bytes(&[1.0, 2.0, 3.0]));
        let e = input_v2(
            typed(InferTensorContents {
                fp32_contents: vec![1.0, 2.0, 3.0],
                ..Default::default()
            }),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("other datatypes"), "{}", e.message);
        let e = input_v2(
            typed(InferTensorContents {
                uint_contents: vec![1],
                ..Default::default()
            }),
            Some(Bytes::from_static(&[1])),
        )
        .unwrap_err();
        assert!(e.message.contains("both"), "{}", e.message);
        let e = input_v2(
            InferInputTensor {
                shape: vec![-1, 3],
                ..t
            },
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("negative"), "{}", e.message);
    }

    #[test]
    fn bytes_contents_become_length_prefixed() {
        let t = InferInputTensor {
            name: "raw".into(),
            datatype: "BYTES".into(),
            shape: vec![2],
            parameters: HashMap::new(),
            contents: Some(InferTensorContents {
                bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")],
                ..Default::default()
            }),
        };
        let (i, data) = input_v2(t, None).unwrap();
        assert_eq!(i.datatype, "BYTES");
        assert_eq!(&data[..], b"\x02\0\0\0ab\x01\0\0\0c");
    }
}
