//! Writing model files from Rust: used by [`crate::synth`] (benchmark models with random weights)
//! and by tests. Produces exactly what docs/format.md describes (bit planes, metadata, SHA-256).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use safetensors::{Dtype, View};
use serde_json::{json, Value};

use crate::error::{internal, invalid, ModelError};
use crate::format;
use crate::graph::CodeSpec;

/// Encodes integer weights (row-major `[rows, cols]`) into `bits` bit planes.
pub fn pack_planes(code: CodeSpec, bits: usize, values: &[i32]) -> Result<Vec<u8>, ModelError> {
    if !code.valid_bits(bits) {
        return Err(invalid(format!(
            "bits {bits} not allowed for {}",
            code.as_str()
        )));
    }
    let plane_len = values.len().div_ceil(8);
    let mut out = vec![0u8; bits * plane_len];
    let max_m = (1u32 << (bits - 1)) - 1;
    for (i, &v) in values.iter().enumerate() {
        let (s, m) = match code {
            CodeSpec::ZeroFree => {
                let a = v.unsigned_abs();
                if a == 0 || !a.is_power_of_two() || a.trailing_zeros() > max_m {
                    return Err(invalid(format!(
                        "weight {v} is not representable as zero_free W{bits}"
                    )));
                }
                (v < 0, a.trailing_zeros())
            }
            CodeSpec::WithZero => {
                if v == 0 {
                    (false, 0)
                } else {
                    let a = v.unsigned_abs();
                    if !a.is_power_of_two() || a.trailing_zeros() + 1 > max_m {
                        return Err(invalid(format!(
                            "weight {v} is not representable as with_zero {bits}-bit"
                        )));
                    }
                    (v < 0, a.trailing_zeros() + 1)
                }
            }
        };
        let (byte, bit) = (i / 8, i % 8);
        if s {
            out[byte] |= 1 << bit;
        }
        for p in 1..bits {
            if (m >> (p - 1)) & 1 == 1 {
                out[p * plane_len + byte] |= 1 << bit;
            }
        }
    }
    Ok(out)
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Convolution geometry for the builder.
#[derive(Debug, Clone, Copy)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Conv {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Conv {
        Conv {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups: 1,
        }
    }

    /// Weight columns `in/groups * k * k`.
    pub fn k(&self) -> usize {
        self.in_channels / self.groups * self.kernel * self.kernel
    }

    fn attrs(&self) -> Value {
        json!({
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel": [self.kernel, self.kernel], "stride": [self.stride, self.stride],
            "padding": [self.padding, self.padding], "groups": self.groups,
        })
    }
}

/// Shift layer parameters for the builder.
#[derive(Debug, Clone)]
pub struct Shift {
    pub bits: usize,
    pub code: CodeSpec,
    /// `None` for the float path, `Some((scale, zero_point))` for int8.
    pub int8: Option<(f32, i32)>,
    /// Integer weights, row-major `[rows, cols]`.
    pub values: Vec<i32>,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Builds a model file in memory.
pub struct ModelBuilder {
    name: String,
    task: String,
    input_shape: Vec<usize>,
    preprocess: Value,
    nodes: Vec<Value>,
    tensors: BTreeMap<String, Raw>,
    metadata_overrides: HashMap<String, Option<String>>,
    description: Option<String>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl ModelBuilder {
    pub fn new(name: &str, task: &str, input_shape: &[usize], preprocess: Value) -> ModelBuilder {
        ModelBuilder {
            name: name.to_string(),
            task: task.to_string(),
            input_shape: input_shape.to_vec(),
            preprocess,
            nodes: Vec::new(),
            tensors: BTreeMap::new(),
            metadata_overrides: HashMap::new(),
            description: None,
        }
    }

    pub fn description(&mut self, text: &str) -> &mut Self {
        self.description = Some(text.to_string());
        self
    }

    /// Replaces (`Some`) or removes (`None`) a metadata entry in the written file (for tests of
    /// the validation).
    pub fn override_metadata(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        self.metadata_overrides
            .insert(key.to_string(), value.map(str::to_string));
        self
    }

    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        self.tensors.insert(
            name.to_string(),
            Raw {
                dtype: Dtype::F32,
                shape: shape.to_vec(),
                data: f32_bytes(data),
            },
        );
        name.to_string()
    }

    pub fn tensor_u8(&mut self, name: &str, shape: &[usize], data: &[u8]) -> String {
        self.tensors.insert(
            name.to_string(),
            Raw {
                dtype: Dtype::U8,
                shape: shape.to_vec(),
                data: data.to_vec(),
            },
        );
        name.to_string()
    }

    pub fn tensor_i32(&mut self, name: &str, shape: &[usize], data: &[i32]) -> String {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors.insert(
            name.to_string(),
            Raw {
                dtype: Dtype::I32,
                shape: shape.to_vec(),
                data: bytes,
            },
        );
        name.to_string()
    }

    /// Adds a raw node (JSON object); returns its output value name.
    pub fn node(&mut self, node: Value) -> String {
        let out = node
            .get("output")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.nodes.push(node);
        out
    }

    fn merge(mut base: Value, extra: Value) -> Value {
        if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
            for (k, v) in e {
                b.insert(k, v);
            }
        }
        base
    }

    pub fn conv2d(
        &mut self,
        name: &str,
        x: &str,
        c: Conv,
        relu: bool,
        weight: &[f32],
        bias: &[f32],
    ) -> String {
        let w = self.tensor_f32(
            &format!("{name}.weight"),
            &[c.out_channels, c.in_channels / c.groups, c.kernel, c.kernel],
            weight,
        );
        let b = self.tensor_f32(&format!("{name}.bias"), &[c.out_channels], bias);
        let node = Self::merge(
            json!({"name": name, "op": "conv2d", "inputs": [x], "output": name, "relu": relu, "weight": w, "bias": b}),
            c.attrs(),
        );
        self.node(node)
    }

    fn shift_attrs(&mut self, name: &str, s: &Shift) -> Result<Value, ModelError> {
        let rows = s.scale.len();
        let planes = pack_planes(s.code, s.bits, &s.values)?;
        let w = self.tensor_u8(
            &format!("{name}.weight"),
            &[s.bits, s.values.len().div_ceil(8)],
            &planes,
        );
        let sc = self.tensor_f32(&format!("{name}.scale"), &[rows], &s.scale);
        let b = self.tensor_f32(&format!("{name}.bias"), &[rows], &s.bias);
        let mut v =
            json!({"bits": s.bits, "code": s.code.as_str(), "weight": w, "scale": sc, "bias": b});
        match s.int8 {
            Some((scale, zp)) => {
                v["path"] = json!("int8");
                v["input_quant"] = json!({"scale": scale, "zero_point": zp});
            }
            None => v["path"] = json!("float"),
        }
        Ok(v)
    }

    pub fn shift_conv2d(
        &mut self,
        name: &str,
        x: &str,
        residual: Option<&str>,
        c: Conv,
        relu: bool,
        s: &Shift,
    ) -> Result<String, ModelError> {
        if s.values.len() != c.out_channels * c.k() || s.scale.len() != c.out_channels {
            return Err(internal(format!(
                "{name}: weight/scale sizes do not match the geometry"
            )));
        }
        let mut inputs = vec![x.to_string()];
        if let Some(r) = residual {
            inputs.push(r.to_string());
        }
        let attrs = self.shift_attrs(name, s)?;
        let node = Self::merge(
            Self::merge(
                json!({"name": name, "op": "shift_conv2d", "inputs": inputs, "output": name, "relu": relu}),
                c.attrs(),
            ),
            attrs,
        );
        Ok(self.node(node))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &mut self,
        name: &str,
        x: &str,
        in_f: usize,
        out_f: usize,
        relu: bool,
        weight: &[f32],
        bias: &[f32],
    ) -> String {
        let w = self.tensor_f32(&format!("{name}.weight"), &[out_f, in_f], weight);
        let b = self.tensor_f32(&format!("{name}.bias"), &[out_f], bias);
        self.node(
            json!({"name": name, "op": "linear", "inputs": [x], "output": name, "in_features": in_f,
            "out_features": out_f, "relu": relu, "weight": w, "bias": b}),
        )
    }

    pub fn shift_linear(
        &mut self,
        name: &str,
        x: &str,
        in_f: usize,
        out_f: usize,
        relu: bool,
        s: &Shift,
    ) -> Result<String, ModelError> {
        if s.values.len() != in_f * out_f || s.scale.len() != out_f {
            return Err(internal(format!(
                "{name}: weight/scale sizes do not match the geometry"
            )));
        }
        let attrs = self.shift_attrs(name, s)?;
        let node = Self::merge(
            json!({"name": name, "op": "shift_linear", "inputs": [x], "output": name, "in_features": in_f, "out_features": out_f, "relu": relu}),
            attrs,
        );
        Ok(self.node(node))
    }

    pub fn pool(
        &mut self,
        name: &str,
        op: &str,
        x: &str,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> String {
        self.node(json!({"name": name, "op": op, "inputs": [x], "output": name, "kernel": [kernel, kernel],
            "stride": [stride, stride], "padding": [padding, padding]}))
    }

    pub fn unary(&mut self, name: &str, op: &str, x: &str) -> String {
        self.node(json!({"name": name, "op": op, "inputs": [x], "output": name}))
    }

    pub fn add(&mut self, name: &str, a: &str, b: &str, relu: bool) -> String {
        self.node(
            json!({"name": name, "op": "add", "inputs": [a, b], "output": name, "relu": relu}),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn lstm(
        &mut self,
        name: &str,
        x: &str,
        input_size: usize,
        hidden: usize,
        mode: &str,
        w_ih: &[f32],
        w_hh: &[f32],
        bias: &[f32],
    ) -> String {
        let a = self.tensor_f32(&format!("{name}.w_ih"), &[4 * hidden, input_size], w_ih);
        let b = self.tensor_f32(&format!("{name}.w_hh"), &[4 * hidden, hidden], w_hh);
        let c = self.tensor_f32(&format!("{name}.bias"), &[4 * hidden], bias);
        self.node(json!({"name": name, "op": "lstm", "inputs": [x], "output": name, "input_size": input_size,
            "hidden_size": hidden, "output_mode": mode, "w_ih": a, "w_hh": b, "bias": c}))
    }

    /// `ih` / `hh`: `(in_modes, out_modes, ranks, cores)` with cores `[r_{k-1}, n_k, r_k]` flattened.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn lstm_tt(
        &mut self,
        name: &str,
        x: &str,
        input_size: usize,
        hidden: usize,
        mode: &str,
        ih: (&[usize], &[usize], &[usize], &[Vec<f32>]),
        hh: (&[usize], &[usize], &[usize], &[Vec<f32>]),
        bias: &[f32],
    ) -> String {
        for (part, (in_m, out_m, ranks, cores)) in [("ih", ih), ("hh", hh)] {
            let mut full = vec![1];
            full.extend_from_slice(ranks);
            full.push(1);
            let modes: Vec<usize> = in_m.iter().chain(out_m.iter()).copied().collect();
            for (k, core) in cores.iter().enumerate() {
                self.tensor_f32(
                    &format!("{name}.{part}.core{}", k + 1),
                    &[full[k], modes[k], full[k + 1]],
                    core,
                );
            }
        }
        let c = self.tensor_f32(&format!("{name}.bias"), &[4 * hidden], bias);
        self.node(json!({"name": name, "op": "lstm_tt", "inputs": [x], "output": name, "input_size": input_size,
            "hidden_size": hidden, "output_mode": mode,
            "ih": {"in_modes": ih.0, "out_modes": ih.1, "ranks": ih.2},
            "hh": {"in_modes": hh.0, "out_modes": hh.1, "ranks": hh.2},
            "bias": c}))
    }

    /// Serializes with `labels` (one per logit); `intents` for spoken_intent models.
    pub fn to_bytes(
        &self,
        labels: &[String],
        intents: Option<&[crate::Intent]>,
    ) -> Result<Vec<u8>, ModelError> {
        let last = self
            .nodes
            .last()
            .and_then(|n| n.get("output"))
            .and_then(Value::as_str)
            .unwrap_or("logits");
        let graph = json!({
            "inputs": [{"name": "input", "shape": self.input_shape}],
            "outputs": [{"name": last, "shape": [labels.len()]}],
            "nodes": self.nodes,
        });
        let sha = format::tensor_sha256(
            self.tensors
                .iter()
                .map(|(k, v)| (k.as_str(), v.data.as_slice())),
        );
        let mut md: HashMap<String, String> = HashMap::new();
        md.insert(format::KEY_VERSION.into(), "1".into());
        md.insert(format::KEY_NAME.into(), self.name.clone());
        md.insert(format::KEY_TASK.into(), self.task.clone());
        md.insert(format::KEY_GRAPH.into(), graph.to_string());
        md.insert(format::KEY_PREPROCESS.into(), self.preprocess.to_string());
        md.insert(format::KEY_LABELS.into(), json!(labels).to_string());
        if let Some(intents) = intents {
            let v: Vec<Value> = intents
                .iter()
                .map(|i| json!({"action": i.action, "object": i.object, "location": i.location}))
                .collect();
            md.insert(format::KEY_INTENTS.into(), Value::Array(v).to_string());
        }
        md.insert(format::KEY_SHA256.into(), sha);
        md.insert(
            format::KEY_PRODUCER.into(),
            format!("models {} (Rust builder)", env!("CARGO_PKG_VERSION")),
        );
        if let Some(d) = &self.description {
            md.insert(format::KEY_DESCRIPTION.into(), d.clone());
        }
        for (k, v) in &self.metadata_overrides {
            match v {
                Some(v) => md.insert(k.clone(), v.clone()),
                None => md.remove(k),
            };
        }
        safetensors::serialize(self.tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(md))
            .map_err(|e| internal(format!("serializing model: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_follow_the_documented_bit_layout() {
        // zero_free W3: values -1, 2, -8, 4 -> s = 1,0,1,0 ; m = 0,1,3,2
        let p = pack_planes(CodeSpec::ZeroFree, 3, &[-1, 2, -8, 4]).unwrap();
        assert_eq!(p, vec![0b0101, 0b0110, 0b1100]);
        // with_zero 3 bits: 0, -1, 4 -> s = 0,1,0 ; m = 0,1,3
        let p = pack_planes(CodeSpec::WithZero, 3, &[0, -1, 4]).unwrap();
        assert_eq!(p, vec![0b010, 0b110, 0b100]);
        assert!(pack_planes(CodeSpec::ZeroFree, 3, &[0]).is_err());
        assert!(pack_planes(CodeSpec::ZeroFree, 3, &[16]).is_err());
        assert!(pack_planes(CodeSpec::ZeroFree, 3, &[3]).is_err());
        assert!(pack_planes(CodeSpec::WithZero, 3, &[8]).is_err());
    }
}
