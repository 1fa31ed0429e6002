//! gRPC tensors to and from the v2 pipeline of `crate::http::decode`.
//!
//! A `ModelInferRequest` is put in the form the HTTP decoder reads (`InferInput`s plus the
//! binary data of Triton's binary tensor extension) and decoded by the same function,
//! `decode::samples_from_inputs`, against the model's shape: names, datatypes, shapes, batch
//! limits and element counts are checked there, before anything is sized from them, so both
//! protocols accept and refuse the same requests with the same messages.
//!
//! - `raw_input_contents[i]` is input i's binary data (`binary_data_size` = its length).
//! - Typed numeric contents (`fp32_contents`, `int_contents`, ...) are the JSON `data` numbers.
//! - `bytes_contents` (BYTES) become length-prefixed binary data, as a client would send them raw.

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::error::ApiError;
use crate::http::decode::{
    numeric_element_size, output_specs, samples_from_inputs, shape_elems, InferInput,
    InputParameters, ModelShape, OutputParameters, OutputSpec, RequestParameters, RequestedOutput,
    TensorData, V2Request, MAX_SHAPE_DIMS,
};
use crate::http::v2::{bytes_elements, OutputData, OutputTensor};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;

/// Decodes a `ModelInferRequest` for a model of shape `model`.
pub fn decode(r: ModelInferRequest, model: &ModelShape) -> Result<V2Request, ApiError> {
    if r.inputs.iter().any(|t| t.shape.len() > MAX_SHAPE_DIMS) {
        return Err(ApiError::bad_request(format!(
            "shape has more than {MAX_SHAPE_DIMS} dimensions"
        )));
    }
    let raw = r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(ApiError::bad_request(format!(
            "raw_input_contents has {} entries for {} inputs: give one per input, in order",
            raw.len(),
            r.inputs.len()
        )));
    }
    // Outputs first, as the HTTP decoder reads them: at most one entry per output the models have.
    if r.outputs.len() > 2 {
        return Err(ApiError::bad_request(
            "more than 2 outputs requested (the models have \"logits\" and \"probabilities\")",
        ));
    }
    let outputs = if r.outputs.is_empty() {
        None
    } else {
        Some(
            r.outputs
                .into_iter()
                .map(requested_output)
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let outputs = output_specs(&RequestParameters::default(), outputs)?;
    let mut inputs = Vec::with_capacity(r.inputs.len().min(2));
    let binary = if raw.len() == 1 {
        // The usual request: one input, its raw contents passed on without a copy.
        let raw = raw.into_iter().next().expect("one entry");
        let input = r.inputs.into_iter().next().expect("one input");
        inputs.push(input_v2(input, Some(raw.len()))?.0);
        raw
    } else {
        let mut raw = raw.into_iter();
        let mut binary = BytesMut::new();
        for input in r.inputs {
            let raw = raw.next();
            let (input, typed_bytes) = input_v2(input, raw.as_ref().map(Bytes::len))?;
            if let Some(b) = raw.or(typed_bytes) {
                binary.extend_from_slice(&b);
            }
            inputs.push(input);
        }
        binary.freeze()
    };
    let samples = samples_from_inputs(model, inputs, binary)?;
    Ok(V2Request {
        id: (!r.id.is_empty()).then_some(r.id),
        outputs,
        samples,
    })
}

/// One requested output; `classification` (int64) is read, other parameters are ignored as
/// HTTP ignores them.
fn requested_output(o: InferRequestedOutputTensor) -> Result<RequestedOutput, ApiError> {
    let classification =
        match o.parameters.get("classification") {
            None => None,
            Some(p) => match p.parameter_choice {
                Some(ParameterChoice::Int64Param(k)) => Some(u64::try_from(k).map_err(|_| {
                    ApiError::bad_request("classification must be a positive integer")
                })?),
                _ => return Err(ApiError::bad_request(
                    "classification must be an int64 parameter (the number of classes to return)",
                )),
            },
        };
    Ok(RequestedOutput {
        name: o.name,
        parameters: OutputParameters {
            classification,
            binary_data: None,
        },
    })
}

/// Input `t` in the HTTP form. With raw contents of `raw_len` bytes the data is binary; typed
/// BYTES contents are returned as binary data too (length-prefixed elements); typed numeric
/// contents become the `data` numbers.
fn input_v2(
    t: InferInputTensor,
    raw_len: Option<usize>,
) -> Result<(InferInput, Option<Bytes>), ApiError> {
    let name = t.name;
    if t.parameters.contains_key("shared_memory_region") {
        return Err(ApiError::bad_request(format!(
            "input \"{name}\": shared memory is not supported; send the data in the request"
        )));
    }
    let mut binary = None;
    let data = match (raw_len, t.contents) {
        (Some(_), Some(c)) if !is_empty(&c) => {
            return Err(ApiError::bad_request(format!(
                "input \"{name}\" has both contents and raw_input_contents: give one"
            )))
        }
        (Some(n), _) => {
            binary = Some(n);
            TensorData::Empty
        }
        (None, None) => TensorData::Empty,
        (None, Some(c)) => {
            if t.datatype == "BYTES" {
                if has_numbers(&c) {
                    return Err(ApiError::bad_request(format!(
                        "input \"{name}\" is BYTES: its contents go in bytes_contents"
                    )));
                }
                let b = Bytes::from(bytes_elements(&c.bytes_contents));
                let input = InferInput {
                    name,
                    shape: t.shape,
                    datatype: t.datatype,
                    parameters: InputParameters {
                        binary_data_size: Some(b.len() as u64),
                    },
                    data: TensorData::Empty,
                };
                return Ok((input, Some(b)));
            }
            typed_numbers(&name, &t.datatype, &t.shape, c)?
        }
    };
    let input = InferInput {
        name,
        shape: t.shape,
        datatype: t.datatype,
        parameters: InputParameters {
            binary_data_size: binary.map(|n| n as u64),
        },
        data,
    };
    Ok((input, None))
}

fn has_numbers(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty())
}

fn is_empty(c: &InferTensorContents) -> bool {
    !has_numbers(c) && c.bytes_contents.is_empty()
}

/// The typed contents of a numeric input as numbers. Only the datatype's own field may hold
/// values; their count must be the shape's, which is compared before anything is converted.
fn typed_numbers(
    name: &str,
    datatype: &str,
    shape: &[i64],
    c: InferTensorContents,
) -> Result<TensorData, ApiError> {
    if numeric_element_size(datatype).is_none() {
        return Err(ApiError::bad_request(format!(
            "input \"{name}\" must be numeric (FP32), got {datatype}"
        )));
    }
    let given = [
        c.bool_contents.len(),
        c.int_contents.len(),
        c.int64_contents.len(),
        c.uint_contents.len(),
        c.uint64_contents.len(),
        c.fp32_contents.len(),
        c.fp64_contents.len(),
        c.bytes_contents.len(),
    ]
    .iter()
    .sum::<usize>();
    let own = match datatype {
        "INT8" | "INT16" | "INT32" => c.int_contents.len(),
        "INT64" => c.int64_contents.len(),
        "UINT8" | "UINT16" | "UINT32" => c.uint_contents.len(),
        "UINT64" => c.uint64_contents.len(),
        "FP32" => c.fp32_contents.len(),
        "FP64" => c.fp64_contents.len(),
        _ => {
            return Err(ApiError::bad_request(format!(
                "input \"{name}\": {datatype} has no typed contents field; send it in raw_input_contents"
            )))
        }
    };
    if given != own {
        return Err(ApiError::bad_request(format!(
            "input \"{name}\" is {datatype} but has contents in fields of other datatypes"
        )));
    }
    let expected = shape_elems(shape)?;
    if own != expected {
        return Err(ApiError::bad_request(format!(
            "input \"{name}\" has {own} values, shape {shape:?} needs {expected}"
        )));
    }
    let values: Vec<f32> = match datatype {
        "INT8" | "INT16" | "INT32" => c.int_contents.iter().map(|&x| x as f32).collect(),
        "INT64" => c.int64_contents.iter().map(|&x| x as f32).collect(),
        "UINT8" | "UINT16" | "UINT32" => c.uint_contents.iter().map(|&x| x as f32).collect(),
        "UINT64" => c.uint64_contents.iter().map(|&x| x as f32).collect(),
        "FP32" => c.fp32_contents,
        _ => c.fp64_contents.iter().map(|&x| x as f32).collect(),
    };
    Ok(if values.is_empty() {
        TensorData::Empty
    } else {
        TensorData::Numbers(values)
    })
}

/// The answer, with every output's data in raw_output_contents as Triton answers (FP32
/// little-endian, BYTES length-prefixed).
pub fn response(
    model: &str,
    version: &str,
    id: Option<String>,
    specs: &[OutputSpec],
    outputs: Vec<OutputTensor>,
) -> ModelInferResponse {
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw = Vec::with_capacity(outputs.len());
    for (spec, t) in specs.iter().zip(outputs) {
        raw.push(match &t.data {
            OutputData::Fp32(v) => v
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
            OutputData::Bytes(s) => Bytes::from(bytes_elements(s)),
        });
        tensors.push(InferOutputTensor {
            name: spec.name.clone(),
            datatype: t.datatype.to_string(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::<String, InferParameter>::new(),
            contents: None,
        });
    }
    ModelInferResponse {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs: tensors,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::infer::Sample;

    const SHAPE: ModelShape = ModelShape {
        input_shape: &[1, 2, 2],
        max_batch_size: 4,
    };

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: HashMap::new(),
            contents: None,
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    fn tensors(r: &V2Request) -> Vec<Vec<f32>> {
        r.samples
            .iter()
            .map(|s| match s {
                Sample::Tensor(t) => t.clone(),
                Sample::Encoded { .. } => panic!("tensor expected"),
            })
            .collect()
    }

    #[test]
    fn raw_numeric_inputs_of_any_type() {
        let r = decode(
            request(
                vec![tensor("input", "UINT8", &[1, 1, 2, 2])],
                vec![Bytes::from_static(&[0, 1, 128, 255])],
            ),
            &SHAPE,
        )
        .unwrap();
        assert_eq!(tensors(&r), [vec![0.0, 1.0, 128.0, 255.0]]);
        assert_eq!(r.outputs.len(), 2);
        // The byte count must match the shape and datatype.
        let e = decode(
            request(
                vec![tensor("input", "FP32", &[1, 1, 2, 2])],
                vec![Bytes::from_static(&[0; 4])],
            ),
            &SHAPE,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("needs 16"), "{}", e.message);
    }

    #[test]
    fn typed_contents() {
        let mut t = tensor("input", "INT32", &[2, 1, 2, 2]);
        t.contents = Some(InferTensorContents {
            int_contents: (1..=8).collect(),
            ..Default::default()
        });
        let r = decode(request(vec![t.clone()], vec![]), &SHAPE).unwrap();
        assert_eq!(
            tensors(&r),
            [vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0, 8.0]]
        );
        // Values in another datatype's field, or too few, or both typed and raw.
        let mut other = t.clone();
        other.contents = Some(InferTensorContents {
            fp32_contents: vec![0.0; 8],
            ..Default::default()
        });
        let e = decode(request(vec![other], vec![]), &SHAPE).err().unwrap();
        assert!(e.message.contains("other datatypes"), "{}", e.message);
        let mut few = t.clone();
        few.contents = Some(InferTensorContents {
            int_contents: vec![1],
            ..Default::default()
        });
        let e = decode(request(vec![few], vec![]), &SHAPE).err().unwrap();
        assert!(e.message.contains("needs 8"), "{}", e.message);
        let e = decode(request(vec![t], vec![Bytes::from_static(&[0; 32])]), &SHAPE)
            .err()
            .unwrap();
        assert!(e.message.contains("both"), "{}", e.message);
    }

    #[test]
    fn sizes_are_checked_by_the_shared_decoder() {
        for (t, raw, needle) in [
            (
                tensor("input", "FP32", &[10_000_000, 1, 2, 2]),
                vec![Bytes::from_static(&[0; 16])],
                "max_batch_size",
            ),
            (
                tensor("input", "FP32", &[-1, 1, 2, 2]),
                vec![Bytes::from_static(&[0; 16])],
                "negative",
            ),
            (
                tensor("raw", "BYTES", &[1_000_000_000]),
                vec![Bytes::from_static(&[0; 4])],
                "max_batch_size",
            ),
            (
                tensor("input", "FP32", &[1; 17]),
                vec![Bytes::from_static(&[0; 4])],
                "dimensions",
            ),
            (
                tensor("raw", "FP32", &[1]),
                vec![Bytes::from_static(&[0; 4])],
                "must be BYTES",
            ),
            (
                tensor("pixels", "FP32", &[1, 1, 2, 2]),
                vec![Bytes::from_static(&[0; 16])],
                "unknown input",
            ),
            (
                tensor("input", "FP32", &[1, 1, 2, 2]),
                vec![],
                "has no data",
            ),
        ] {
            let e = decode(request(vec![t], raw), &SHAPE).err().unwrap();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn bytes_contents_become_samples() {
        let mut t = tensor("raw", "BYTES", &[2]);
        t.contents = Some(InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")],
            ..Default::default()
        });
        let r = decode(request(vec![t.clone()], vec![]), &SHAPE).unwrap();
        let data: Vec<&[u8]> = r
            .samples
            .iter()
            .map(|s| match s {
                Sample::Encoded { data, .. } => &data[..],
                Sample::Tensor(_) => panic!("encoded expected"),
            })
            .collect();
        assert_eq!(data, [&b"ab"[..], b"c"]);
        t.shape = vec![3];
        let e = decode(request(vec![t], vec![]), &SHAPE).err().unwrap();
        assert!(e.message.contains("3"), "{}", e.message);
    }

    #[test]
    fn outputs() {
        let mut req = request(
            vec![tensor("input", "FP32", &[1, 2, 2])],
            vec![Bytes::from_static(&[0; 16])],
        );
        let out = |name: &str, k: Option<i64>| InferRequestedOutputTensor {
            name: name.into(),
            parameters: k
                .map(|k| {
                    (
                        "classification".to_string(),
                        InferParameter {
                            parameter_choice: Some(ParameterChoice::Int64Param(k)),
                        },
                    )
                })
                .into_iter()
                .collect(),
        };
        req.outputs = vec![out("probabilities", Some(3))];
        let r = decode(req.clone(), &SHAPE).unwrap();
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(r.outputs[0].classification, Some(3));
        for (outs, needle) in [
            (vec![out("logits", None), out("logits", None)], "twice"),
            (vec![out("scores", None)], "unknown output"),
            (vec![out("logits", Some(0))], "positive"),
            (vec![out("logits", Some(-2))], "positive"),
            (
                vec![
                    out("logits", None),
                    out("probabilities", None),
                    out("logits", None),
                ],
                "more than 2",
            ),
        ] {
            req.outputs = outs;
            let e = decode(req.clone(), &SHAPE).err().unwrap();
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }
}
