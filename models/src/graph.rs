//! The graph stored in `shiftserve.graph` (docs/format.md): parsing into typed nodes, reference
//! checks and shape inference. Everything here is bounded: node counts, ranks and element counts
//! are capped before anything is allocated from them.

use serde_json::{Map, Value};
use std::collections::HashMap;

use crate::error::{invalid, ModelError};

/// Most nodes a graph may have.
pub const MAX_NODES: usize = 4096;
/// Largest rank of a value (without the batch dimension).
pub const MAX_RANK: usize = 4;
/// Largest number of f32 elements of one value of one sample (64 MiB).
pub const MAX_VALUE_ELEMS: usize = 1 << 24;
/// Largest im2col matrix of one convolution for one sample (`in/groups*kh*kw * oh*ow` elements,
/// 128 MiB): the kernels' workspace holds it, so it must be bounded whatever the weights.
pub const MAX_IM2COL_ELEMS: usize = 1 << 25;
/// Largest activation memory of one sample summed over all buffers the plan keeps (256 MiB).
pub const MAX_ACTIVATION_ELEMS: usize = 1 << 26;
/// Largest kernel / stride / padding / channel count / feature count accepted in attributes.
pub const MAX_DIM: usize = 1 << 20;
/// Largest tensor-train order `d` (number of modes per side).
pub const MAX_TT_ORDER: usize = 16;

/// A shift layer's weight code (docs/format.md, "Packed power-of-two weights").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSpec {
    ZeroFree,
    WithZero,
}

impl CodeSpec {
    pub fn as_str(&self) -> &'static str {
        match self {
            CodeSpec::ZeroFree => "zero_free",
            CodeSpec::WithZero => "with_zero",
        }
    }

    /// Bit widths the code allows.
    pub fn valid_bits(&self, bits: usize) -> bool {
        match self {
            CodeSpec::ZeroFree => (2..=4).contains(&bits),
            CodeSpec::WithZero => (2..=5).contains(&bits),
        }
    }
}

/// Numeric path of a shift layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PathSpec {
    /// 8-bit asymmetric input quantization and exact integer accumulation.
    Int8 { scale: f32, zero_point: i32 },
    /// f32 accumulation with exponent-add products.
    Float,
}

impl PathSpec {
    pub fn as_str(&self) -> &'static str {
        match self {
            PathSpec::Int8 { .. } => "int8",
            PathSpec::Float => "float",
        }
    }
}

/// Convolution geometry shared by `conv2d` and `shift_conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvAttrs {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub groups: usize,
}

impl ConvAttrs {
    /// Columns of the weight matrix: `in/groups * kh * kw`.
    pub fn k(&self) -> usize {
        self.in_channels / self.groups * self.kernel.0 * self.kernel.1
    }
}

/// Pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolAttrs {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

/// Shift weight description (shared by `shift_conv2d` and `shift_linear`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftAttrs {
    pub bits: usize,
    pub code: CodeSpec,
    pub path: PathSpec,
    pub weight: String,
    pub scale: String,
    pub bias: String,
}

/// How an LSTM summarises its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LstmOutput {
    Last,
    Mean,
}

/// One MPS (tensor-train) matrix: `in_modes` (product = columns), `out_modes` (product = rows),
/// `ranks` (`2d - 1` inner ranks) and the `2d` core tensor names (`<node>.ih.core1` ..
/// `<node>.ih.core{2d}` unless the spec lists `cores`).
#[derive(Debug, Clone, PartialEq)]
pub struct TtSpec {
    pub in_modes: Vec<usize>,
    pub out_modes: Vec<usize>,
    pub ranks: Vec<usize>,
    pub cores: Vec<String>,
}

impl TtSpec {
    /// Order `d` (modes per side).
    pub fn order(&self) -> usize {
        self.in_modes.len()
    }

    /// Full rank list `r_0 .. r_{2d}` including the unit boundary ranks.
    pub fn full_ranks(&self) -> Vec<usize> {
        let mut r = Vec::with_capacity(self.ranks.len() + 2);
        r.push(1);
        r.extend_from_slice(&self.ranks);
        r.push(1);
        r
    }

    /// Mode of core `k` (0-based, `0..2d`).
    pub fn mode(&self, k: usize) -> usize {
        let d = self.order();
        if k < d {
            self.in_modes[k]
        } else {
            self.out_modes[k - d]
        }
    }

    /// Shape `[r_{k-1}, n_k, r_k]` of core `k` (0-based).
    pub fn core_shape(&self, k: usize) -> [usize; 3] {
        let r = self.full_ranks();
        [r[k], self.mode(k), r[k + 1]]
    }

    /// Number of parameters in the cores.
    pub fn params(&self) -> usize {
        (0..2 * self.order())
            .map(|k| self.core_shape(k).iter().product::<usize>())
            .sum()
    }
}

/// A typed operator with its attributes and the names of the tensors it uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv2d {
        conv: ConvAttrs,
        relu: bool,
        weight: String,
        bias: String,
    },
    ShiftConv2d {
        conv: ConvAttrs,
        relu: bool,
        shift: ShiftAttrs,
    },
    Linear {
        in_features: usize,
        out_features: usize,
        relu: bool,
        weight: String,
        bias: String,
    },
    ShiftLinear {
        in_features: usize,
        out_features: usize,
        relu: bool,
        shift: ShiftAttrs,
    },
    MaxPool2d(PoolAttrs),
    AvgPool2d(PoolAttrs),
    GlobalAvgPool,
    Flatten,
    Add {
        relu: bool,
    },
    Relu,
    Lstm {
        input_size: usize,
        hidden_size: usize,
        output: LstmOutput,
        w_ih: String,
        w_hh: String,
        bias: String,
    },
    LstmTt {
        input_size: usize,
        hidden_size: usize,
        output: LstmOutput,
        ih: TtSpec,
        hh: TtSpec,
        bias: String,
    },
}

impl Op {
    /// The operator name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::ShiftConv2d { .. } => "shift_conv2d",
            Op::Linear { .. } => "linear",
            Op::ShiftLinear { .. } => "shift_linear",
            Op::MaxPool2d(_) => "maxpool2d",
            Op::AvgPool2d(_) => "avgpool2d",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Flatten => "flatten",
            Op::Add { .. } => "add",
            Op::Relu => "relu",
            Op::Lstm { .. } => "lstm",
            Op::LstmTt { .. } => "lstm_tt",
        }
    }

    /// The shift attributes of a shift layer.
    pub fn shift(&self) -> Option<&ShiftAttrs> {
        match self {
            Op::ShiftConv2d { shift, .. } | Op::ShiftLinear { shift, .. } => Some(shift),
            _ => None,
        }
    }
}

/// A graph value declaration (graph input or output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueDecl {
    pub name: String,
    pub shape: Vec<usize>,
}

/// One node, with its inferred input and output shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub output: String,
    pub input_shapes: Vec<Vec<usize>>,
    pub output_shape: Vec<usize>,
}

/// A parsed, reference-checked and shape-inferred graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub input: ValueDecl,
    pub output: ValueDecl,
    pub nodes: Vec<Node>,
}

/// Parses and checks the graph JSON.
pub fn parse_graph(text: &str) -> Result<Graph, ModelError> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("shiftserve.graph is not valid JSON: {e}")))?;
    let root = root
        .as_object()
        .ok_or_else(|| invalid("shiftserve.graph must be a JSON object"))?;

    let inputs = decls(root, "inputs")?;
    let outputs = decls(root, "outputs")?;
    if inputs.len() != 1 {
        return Err(invalid(format!(
            "graph: exactly one input is supported, found {}",
            inputs.len()
        )));
    }
    if outputs.len() != 1 {
        return Err(invalid(format!(
            "graph: exactly one output is required, found {}",
            outputs.len()
        )));
    }
    let input = inputs.into_iter().next().unwrap_or_else(|| unreachable!());
    let output = outputs.into_iter().next().unwrap_or_else(|| unreachable!());
    if input.shape.is_empty() {
        return Err(invalid(format!(
            "graph input '{}' has an empty shape",
            input.name
        )));
    }

    let nodes_json = root
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("graph: 'nodes' must be an array"))?;
    if nodes_json.is_empty() {
        return Err(invalid("graph: 'nodes' is empty"));
    }
    if nodes_json.len() > MAX_NODES {
        return Err(invalid(format!(
            "graph: {} nodes exceed the limit of {MAX_NODES}",
            nodes_json.len()
        )));
    }

    // name -> shape of every value defined so far
    let mut values: HashMap<String, Vec<usize>> = HashMap::new();
    values.insert(input.name.clone(), input.shape.clone());
    let mut node_names: HashMap<String, usize> = HashMap::new();
    let mut nodes = Vec::with_capacity(nodes_json.len());

    for (index, nj) in nodes_json.iter().enumerate() {
        let obj = nj
            .as_object()
            .ok_or_else(|| invalid(format!("graph: node #{index} is not an object")))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("graph: node #{index} has no string 'name'")))?
            .to_string();
        check_name(&name, &format!("graph: node #{index} name"))?;
        if node_names.insert(name.clone(), index).is_some() {
            return Err(invalid(format!("graph: node name '{name}' is used twice")));
        }
        let op_name = obj
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("graph: node '{name}' has no string 'op'")))?;
        let a = Attrs {
            node: &name,
            op: op_name,
            obj,
        };
        let inputs: Vec<String> = match obj.get("inputs").and_then(Value::as_array) {
            Some(list) if list.len() <= 2 => list
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| a.err("'inputs' must be an array of strings"))?,
            Some(list) => return Err(a.err(&format!("{} inputs, at most 2 allowed", list.len()))),
            None => return Err(a.err("'inputs' must be an array of strings")),
        };
        let output = obj
            .get("output")
            .and_then(Value::as_str)
            .ok_or_else(|| a.err("'output' must be a string"))?
            .to_string();
        check_name(&output, &format!("graph: node '{name}' output"))?;
        if values.contains_key(&output) {
            return Err(a.err(&format!("output value '{output}' is already defined")));
        }
        let mut input_shapes = Vec::with_capacity(inputs.len());
        for i in &inputs {
            match values.get(i) {
                Some(s) => input_shapes.push(s.clone()),
                None => {
                    return Err(a.err(&format!(
                        "input '{i}' is neither the graph input nor the output of an earlier node"
                    )))
                }
            }
        }
        let op = parse_op(&a)?;
        let output_shape = infer(&a, &op, &input_shapes)?;
        let elems = elems_checked(&output_shape).ok_or_else(|| a.err("output shape overflows"))?;
        if elems == 0 || elems > MAX_VALUE_ELEMS {
            return Err(a.err(&format!(
                "output shape {output_shape:?} has {elems} elements (allowed 1..={MAX_VALUE_ELEMS})"
            )));
        }
        values.insert(output.clone(), output_shape.clone());
        nodes.push(Node {
            name,
            op,
            inputs,
            output,
            input_shapes,
            output_shape,
        });
    }

    let last = nodes.last().unwrap_or_else(|| unreachable!());
    if last.output != output.name {
        return Err(invalid(format!(
            "graph: the output '{}' must be produced by the last node, which produces '{}'",
            output.name, last.output
        )));
    }
    if last.output_shape != output.shape {
        return Err(invalid(format!(
            "graph: declared output shape {:?} differs from the inferred shape {:?}",
            output.shape, last.output_shape
        )));
    }
    if output.shape.len() != 1 {
        return Err(invalid(format!(
            "graph: the output must be a vector of logits [classes], found shape {:?}",
            output.shape
        )));
    }
    Ok(Graph {
        input,
        output,
        nodes,
    })
}

fn check_name(name: &str, what: &str) -> Result<(), ModelError> {
    if name.is_empty() || name.len() > 256 {
        return Err(invalid(format!("{what}: names must be 1..=256 bytes")));
    }
    Ok(())
}

fn elems_checked(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn decls(root: &Map<String, Value>, key: &str) -> Result<Vec<ValueDecl>, ModelError> {
    let list = root
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("graph: '{key}' must be an array")))?;
    if list.len() > 16 {
        return Err(invalid(format!("graph: too many {key}")));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let o = v
            .as_object()
            .ok_or_else(|| invalid(format!("graph: {key}[{i}] is not an object")))?;
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("graph: {key}[{i}] has no string 'name'")))?;
        check_name(name, &format!("graph: {key}[{i}]"))?;
        let shape_v = o
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(format!("graph: {key}[{i}] '{name}' has no 'shape' array")))?;
        if shape_v.len() > MAX_RANK {
            return Err(invalid(format!(
                "graph: {key}[{i}] '{name}' has rank {} > {MAX_RANK}",
                shape_v.len()
            )));
        }
        let mut shape = Vec::with_capacity(shape_v.len());
        for d in shape_v {
            match d.as_u64() {
                Some(x) if x >= 1 && x <= MAX_VALUE_ELEMS as u64 => shape.push(x as usize),
                _ => {
                    return Err(invalid(format!(
                        "graph: {key}[{i}] '{name}' shape {shape_v:?} must hold positive integers"
                    )))
                }
            }
        }
        match elems_checked(&shape) {
            Some(n) if n <= MAX_VALUE_ELEMS => {}
            _ => {
                return Err(invalid(format!(
                    "graph: {key}[{i}] '{name}' shape {shape:?} is too large"
                )))
            }
        }
        out.push(ValueDecl {
            name: name.to_string(),
            shape,
        });
    }
    Ok(out)
}

/// Attribute accessor with precise error messages.
struct Attrs<'a> {
    node: &'a str,
    op: &'a str,
    obj: &'a Map<String, Value>,
}

impl Attrs<'_> {
    fn err(&self, msg: &str) -> ModelError {
        invalid(format!("graph: node '{}' ({}): {msg}", self.node, self.op))
    }

    fn get(&self, key: &str) -> Result<&Value, ModelError> {
        self.obj
            .get(key)
            .ok_or_else(|| self.err(&format!("missing attribute '{key}'")))
    }

    fn dim(&self, key: &str) -> Result<usize, ModelError> {
        dim_of(self.get(key)?, 1)
            .ok_or_else(|| self.err(&format!("'{key}' must be an integer in 1..={MAX_DIM}")))
    }

    fn pair(&self, key: &str, min: usize) -> Result<(usize, usize), ModelError> {
        let v = self.get(key)?;
        let bad = || {
            self.err(&format!(
                "'{key}' must be [a, b] with integers in {min}..={MAX_DIM}"
            ))
        };
        let arr = v.as_array().ok_or_else(bad)?;
        if arr.len() != 2 {
            return Err(bad());
        }
        let a = dim_of(&arr[0], min).ok_or_else(bad)?;
        let b = dim_of(&arr[1], min).ok_or_else(bad)?;
        Ok((a, b))
    }

    fn flag(&self, key: &str) -> Result<bool, ModelError> {
        match self.obj.get(key) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(&format!("'{key}' must be a boolean"))),
        }
    }

    fn string(&self, key: &str) -> Result<&str, ModelError> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| self.err(&format!("'{key}' must be a string")))
    }

    /// A tensor reference: the attribute names the tensor; absent, the convention `<node>.<role>`.
    fn tensor(&self, key: &str) -> Result<String, ModelError> {
        match self.obj.get(key) {
            None => Ok(format!("{}.{key}", self.node)),
            Some(v) => v
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    self.err(&format!("tensor attribute '{key}' must be a tensor name"))
                }),
        }
    }

    fn conv(&self) -> Result<ConvAttrs, ModelError> {
        let c = ConvAttrs {
            in_channels: self.dim("in_channels")?,
            out_channels: self.dim("out_channels")?,
            kernel: self.pair("kernel", 1)?,
            stride: self.pair("stride", 1)?,
            padding: self.pair("padding", 0)?,
            groups: match self.obj.get("groups") {
                None => 1,
                Some(v) => {
                    dim_of(v, 1).ok_or_else(|| self.err("'groups' must be a positive integer"))?
                }
            },
        };
        if !c.in_channels.is_multiple_of(c.groups) || !c.out_channels.is_multiple_of(c.groups) {
            return Err(self.err(&format!(
                "groups {} must divide in_channels {} and out_channels {}",
                c.groups, c.in_channels, c.out_channels
            )));
        }
        Ok(c)
    }

    fn pool(&self) -> Result<PoolAttrs, ModelError> {
        let p = PoolAttrs {
            kernel: self.pair("kernel", 1)?,
            stride: self.pair("stride", 1)?,
            padding: self.pair("padding", 0)?,
        };
        // PyTorch: "pad should be at most half of effective kernel size".
        if p.padding.0 * 2 > p.kernel.0 || p.padding.1 * 2 > p.kernel.1 {
            return Err(self.err(&format!(
                "padding {:?} must be at most half the kernel {:?}",
                p.padding, p.kernel
            )));
        }
        Ok(p)
    }

    fn shift(&self) -> Result<ShiftAttrs, ModelError> {
        let code = match self.string("code")? {
            "zero_free" => CodeSpec::ZeroFree,
            "with_zero" => CodeSpec::WithZero,
            other => {
                return Err(self.err(&format!("unknown code '{other}' (zero_free or with_zero)")))
            }
        };
        let bits = self.get("bits")?.as_u64().unwrap_or(0) as usize;
        if !code.valid_bits(bits) {
            return Err(self.err(&format!(
                "bits {} not allowed for code {}",
                self.get("bits")?,
                code.as_str()
            )));
        }
        let path = match self.string("path")? {
            "float" => PathSpec::Float,
            "int8" => {
                let q = self.get("input_quant")?.as_object().ok_or_else(|| {
                    self.err("'input_quant' must be {\"scale\": f, \"zero_point\": i}")
                })?;
                let scale = q.get("scale").and_then(Value::as_f64).unwrap_or(f64::NAN);
                let scale32 = scale as f32;
                if !(scale32.is_finite() && scale32 > 0.0 && scale32.is_normal()) {
                    return Err(self.err("input_quant.scale must be a positive normal f32"));
                }
                let zp = q.get("zero_point").and_then(Value::as_i64).unwrap_or(-1);
                if !(0..=255).contains(&zp) {
                    return Err(self.err("input_quant.zero_point must be an integer in 0..=255"));
                }
                PathSpec::Int8 {
                    scale: scale32,
                    zero_point: zp as i32,
                }
            }
            other => return Err(self.err(&format!("unknown path '{other}' (int8 or float)"))),
        };
        Ok(ShiftAttrs {
            bits,
            code,
            path,
            weight: self.tensor("weight")?,
            scale: self.tensor("scale")?,
            bias: self.tensor("bias")?,
        })
    }

    /// `output_mode` (docs/format.md calls it `output`, which collides with the node's output
    /// value name; the exporter writes `output_mode`).
    fn lstm_output(&self) -> Result<LstmOutput, ModelError> {
        match self.string("output_mode")? {
            "last" => Ok(LstmOutput::Last),
            "mean" => Ok(LstmOutput::Mean),
            other => Err(self.err(&format!("unknown LSTM output '{other}' (last or mean)"))),
        }
    }

    fn tt(&self, key: &str) -> Result<TtSpec, ModelError> {
        let o = self
            .get(key)?
            .as_object()
            .ok_or_else(|| self.err(&format!("'{key}' must be an object")))?;
        let list = |field: &str, max_len: usize| -> Result<Vec<usize>, ModelError> {
            let bad = || {
                self.err(&format!(
                    "'{key}.{field}' must be an array of positive integers"
                ))
            };
            let arr = o.get(field).and_then(Value::as_array).ok_or_else(bad)?;
            if arr.is_empty() || arr.len() > max_len {
                return Err(bad());
            }
            arr.iter().map(|v| dim_of(v, 1).ok_or_else(bad)).collect()
        };
        let in_modes = list("in_modes", MAX_TT_ORDER)?;
        let out_modes = list("out_modes", MAX_TT_ORDER)?;
        if in_modes.len() != out_modes.len() {
            return Err(self.err(&format!(
                "'{key}': in_modes and out_modes must have the same length"
            )));
        }
        let d = in_modes.len();
        let ranks = if d == 1 {
            match o.get("ranks").and_then(Value::as_array) {
                Some(a) if a.len() == 1 => list("ranks", 1)?,
                _ => return Err(self.err(&format!("'{key}.ranks' must hold 2d-1 = 1 rank"))),
            }
        } else {
            list("ranks", 2 * MAX_TT_ORDER)?
        };
        if ranks.len() != 2 * d - 1 {
            return Err(self.err(&format!(
                "'{key}.ranks' must hold 2d-1 = {} ranks, found {}",
                2 * d - 1,
                ranks.len()
            )));
        }
        let cores = match o.get("cores") {
            None => (1..=2 * d)
                .map(|k| format!("{}.{key}.core{k}", self.node))
                .collect(),
            Some(v) => {
                let bad = || {
                    self.err(&format!(
                        "'{key}.cores' must be an array of {} tensor names",
                        2 * d
                    ))
                };
                let arr = v.as_array().ok_or_else(bad)?;
                if arr.len() != 2 * d {
                    return Err(bad());
                }
                arr.iter()
                    .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(TtSpec {
            in_modes,
            out_modes,
            ranks,
            cores,
        })
    }
}

fn dim_of(v: &Value, min: usize) -> Option<usize> {
    let x = v.as_u64()?;
    if x < min as u64 || x > MAX_DIM as u64 {
        return None;
    }
    Some(x as usize)
}

fn parse_op(a: &Attrs) -> Result<Op, ModelError> {
    Ok(match a.op {
        "conv2d" => Op::Conv2d {
            conv: a.conv()?,
            relu: a.flag("relu")?,
            weight: a.tensor("weight")?,
            bias: a.tensor("bias")?,
        },
        "shift_conv2d" => Op::ShiftConv2d {
            conv: a.conv()?,
            relu: a.flag("relu")?,
            shift: a.shift()?,
        },
        "linear" => Op::Linear {
            in_features: a.dim("in_features")?,
            out_features: a.dim("out_features")?,
            relu: a.flag("relu")?,
            weight: a.tensor("weight")?,
            bias: a.tensor("bias")?,
        },
        "shift_linear" => Op::ShiftLinear {
            in_features: a.dim("in_features")?,
            out_features: a.dim("out_features")?,
            relu: a.flag("relu")?,
            shift: a.shift()?,
        },
        "maxpool2d" => Op::MaxPool2d(a.pool()?),
        "avgpool2d" => Op::AvgPool2d(a.pool()?),
        "global_avgpool" => Op::GlobalAvgPool,
        "flatten" => Op::Flatten,
        "add" => Op::Add {
            relu: a.flag("relu")?,
        },
        "relu" => Op::Relu,
        "lstm" => Op::Lstm {
            input_size: a.dim("input_size")?,
            hidden_size: a.dim("hidden_size")?,
            output: a.lstm_output()?,
            w_ih: a.tensor("w_ih")?,
            w_hh: a.tensor("w_hh")?,
            bias: a.tensor("bias")?,
        },
        "lstm_tt" => {
            let input_size = a.dim("input_size")?;
            let hidden_size = a.dim("hidden_size")?;
            let ih = a.tt("ih")?;
            let hh = a.tt("hh")?;
            let gates = 4 * hidden_size;
            for (key, tt, cols) in [("ih", &ih, input_size), ("hh", &hh, hidden_size)] {
                let pin = tt
                    .in_modes
                    .iter()
                    .try_fold(1usize, |p, &m| p.checked_mul(m));
                let pout = tt
                    .out_modes
                    .iter()
                    .try_fold(1usize, |p, &m| p.checked_mul(m));
                if pin != Some(cols) {
                    return Err(a.err(&format!(
                        "'{key}.in_modes' {:?} must multiply to {cols}",
                        tt.in_modes
                    )));
                }
                if pout != Some(gates) {
                    return Err(a.err(&format!(
                        "'{key}.out_modes' {:?} must multiply to 4*hidden = {gates}",
                        tt.out_modes
                    )));
                }
                // Intermediate sizes of the contraction must stay bounded.
                let r = tt.full_ranks();
                for k in 0..2 * tt.order() {
                    let s = r[k]
                        .checked_mul(tt.mode(k))
                        .and_then(|x| x.checked_mul(r[k + 1]));
                    if s.is_none_or(|s| s > MAX_VALUE_ELEMS) {
                        return Err(a.err(&format!("'{key}' core {k} is too large")));
                    }
                }
                for (k, &rk) in r.iter().enumerate() {
                    let inter = if k <= tt.order() {
                        // after contracting k input cores: r_k * prod(in_modes[k..])
                        tt.in_modes[k.min(tt.order())..]
                            .iter()
                            .try_fold(rk, |p, &m| p.checked_mul(m))
                    } else {
                        tt.out_modes[..k - tt.order()]
                            .iter()
                            .try_fold(rk, |p, &m| p.checked_mul(m))
                    };
                    if inter.is_none_or(|s| s > MAX_VALUE_ELEMS) {
                        return Err(
                            a.err(&format!("'{key}' rank {k} makes an intermediate too large"))
                        );
                    }
                }
            }
            Op::LstmTt {
                input_size,
                hidden_size,
                output: a.lstm_output()?,
                ih,
                hh,
                bias: a.tensor("bias")?,
            }
        }
        other => return Err(a.err(&format!("unknown op '{other}'"))),
    })
}

fn conv_out(
    a: &Attrs,
    h: usize,
    k: usize,
    s: usize,
    p: usize,
    axis: &str,
) -> Result<usize, ModelError> {
    let padded = h + 2 * p;
    if padded < k {
        return Err(a.err(&format!(
            "{axis}: input {h} + 2*padding {p} is smaller than the kernel {k}"
        )));
    }
    Ok((padded - k) / s + 1)
}

fn infer(a: &Attrs, op: &Op, ins: &[Vec<usize>]) -> Result<Vec<usize>, ModelError> {
    let arity = |n: usize| -> Result<(), ModelError> {
        if ins.len() != n {
            Err(a.err(&format!("takes {n} input(s), got {}", ins.len())))
        } else {
            Ok(())
        }
    };
    let chw = |s: &Vec<usize>| -> Result<(usize, usize, usize), ModelError> {
        if s.len() != 3 {
            return Err(a.err(&format!("expects a [C, H, W] input, got {s:?}")));
        }
        Ok((s[0], s[1], s[2]))
    };
    match op {
        Op::Conv2d { conv, .. } | Op::ShiftConv2d { conv, .. } => {
            let residual = matches!(op, Op::ShiftConv2d { .. });
            if residual {
                if ins.is_empty() || ins.len() > 2 {
                    return Err(a.err(&format!(
                        "takes x and an optional residual, got {} inputs",
                        ins.len()
                    )));
                }
            } else {
                arity(1)?;
            }
            let (c, h, w) = chw(&ins[0])?;
            if c != conv.in_channels {
                return Err(a.err(&format!(
                    "input has {c} channels, in_channels is {}",
                    conv.in_channels
                )));
            }
            let oh = conv_out(a, h, conv.kernel.0, conv.stride.0, conv.padding.0, "height")?;
            let ow = conv_out(a, w, conv.kernel.1, conv.stride.1, conv.padding.1, "width")?;
            let cols = (conv.in_channels / conv.groups)
                .checked_mul(conv.kernel.0)
                .and_then(|k| k.checked_mul(conv.kernel.1))
                .and_then(|k| k.checked_mul(oh))
                .and_then(|k| k.checked_mul(ow));
            if cols.is_none_or(|n| n > MAX_IM2COL_ELEMS) {
                return Err(a.err(&format!(
                    "the patch matrix (in/groups*kh*kw x oh*ow) exceeds {MAX_IM2COL_ELEMS} elements"
                )));
            }
            let out = vec![conv.out_channels, oh, ow];
            if ins.len() == 2 && ins[1] != out {
                return Err(a.err(&format!(
                    "residual shape {:?} differs from the output shape {out:?}",
                    ins[1]
                )));
            }
            Ok(out)
        }
        Op::Linear {
            in_features,
            out_features,
            ..
        }
        | Op::ShiftLinear {
            in_features,
            out_features,
            ..
        } => {
            arity(1)?;
            if ins[0] != [*in_features] {
                return Err(a.err(&format!(
                    "expects a [{in_features}] input, got {:?}",
                    ins[0]
                )));
            }
            Ok(vec![*out_features])
        }
        Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
            arity(1)?;
            let (c, h, w) = chw(&ins[0])?;
            let oh = conv_out(a, h, p.kernel.0, p.stride.0, p.padding.0, "height")?;
            let ow = conv_out(a, w, p.kernel.1, p.stride.1, p.padding.1, "width")?;
            Ok(vec![c, oh, ow])
        }
        Op::GlobalAvgPool => {
            arity(1)?;
            let (c, _, _) = chw(&ins[0])?;
            Ok(vec![c])
        }
        Op::Flatten => {
            arity(1)?;
            Ok(vec![ins[0].iter().product()])
        }
        Op::Add { .. } => {
            arity(2)?;
            if ins[0] != ins[1] {
                return Err(a.err(&format!(
                    "operand shapes differ: {:?} vs {:?}",
                    ins[0], ins[1]
                )));
            }
            Ok(ins[0].clone())
        }
        Op::Relu => {
            arity(1)?;
            Ok(ins[0].clone())
        }
        Op::Lstm {
            input_size,
            hidden_size,
            ..
        }
        | Op::LstmTt {
            input_size,
            hidden_size,
            ..
        } => {
            arity(1)?;
            let s = &ins[0];
            if s.len() != 3 || s[0] != 1 || s[1] != *input_size {
                return Err(a.err(&format!("expects a [1, {input_size}, T] input, got {s:?}")));
            }
            // 4H gate pre-activations for every frame are kept per sample.
            if hidden_size
                .checked_mul(4)
                .and_then(|g| g.checked_mul(s[2]))
                .is_none_or(|n| n > MAX_VALUE_ELEMS)
            {
                return Err(a.err("4*hidden_size*frames is too large"));
            }
            Ok(vec![*hidden_size])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(nodes: &str, input: &str, output: &str) -> String {
        format!(
            r#"{{"inputs":[{{"name":"input","shape":{input}}}],"outputs":[{{"name":"logits","shape":{output}}}],"nodes":{nodes}}}"#
        )
    }

    #[test]
    fn parses_conv_pool_linear_chain() {
        let text = g(
            r#"[{"name":"c","op":"conv2d","inputs":["input"],"output":"c","in_channels":1,"out_channels":4,"kernel":[3,3],"stride":[2,2],"padding":[1,1],"groups":1,"relu":true},
                {"name":"p","op":"maxpool2d","inputs":["c"],"output":"p","kernel":[3,3],"stride":[2,2],"padding":[1,1]},
                {"name":"g","op":"global_avgpool","inputs":["p"],"output":"g"},
                {"name":"fc","op":"linear","inputs":["g"],"output":"logits","in_features":4,"out_features":10}]"#,
            "[1,28,28]",
            "[10]",
        );
        let graph = parse_graph(&text).unwrap();
        assert_eq!(graph.nodes[0].output_shape, vec![4, 14, 14]);
        assert_eq!(graph.nodes[1].output_shape, vec![4, 7, 7]);
        assert_eq!(graph.nodes[2].output_shape, vec![4]);
        assert_eq!(graph.nodes[3].output_shape, vec![10]);
        assert_eq!(
            graph.nodes[3].op,
            Op::Linear {
                in_features: 4,
                out_features: 10,
                relu: false,
                weight: "fc.weight".into(),
                bias: "fc.bias".into()
            }
        );
    }

    #[test]
    fn rejects_dangling_reference_and_cycles() {
        let text = g(
            r#"[{"name":"r","op":"relu","inputs":["later"],"output":"x"},{"name":"later","op":"flatten","inputs":["x"],"output":"logits"}]"#,
            "[4]",
            "[4]",
        );
        let e = parse_graph(&text).unwrap_err();
        assert!(e.message.contains("'later' is neither"), "{}", e.message);
    }

    #[test]
    fn rejects_duplicate_outputs_and_wrong_last_node() {
        let text = g(
            r#"[{"name":"a","op":"relu","inputs":["input"],"output":"input"}]"#,
            "[4]",
            "[4]",
        );
        assert!(parse_graph(&text)
            .unwrap_err()
            .message
            .contains("already defined"));
        let text = g(
            r#"[{"name":"a","op":"relu","inputs":["input"],"output":"logits"},{"name":"b","op":"relu","inputs":["logits"],"output":"z"}]"#,
            "[4]",
            "[4]",
        );
        assert!(parse_graph(&text)
            .unwrap_err()
            .message
            .contains("last node"));
    }

    #[test]
    fn rejects_huge_shapes_without_allocating() {
        let text = g(
            r#"[{"name":"c","op":"conv2d","inputs":["input"],"output":"logits","in_channels":1,"out_channels":1048576,"kernel":[1,1],"stride":[1,1],"padding":[0,0],"groups":1}]"#,
            "[1,4096,4096]",
            "[1]",
        );
        let e = parse_graph(&text).unwrap_err();
        assert!(
            e.message.contains("too large") || e.message.contains("elements"),
            "{}",
            e.message
        );
        let text = g(
            r#"[{"name":"f","op":"flatten","inputs":["input"],"output":"logits"}]"#,
            "[18446744073709551615]",
            "[1]",
        );
        assert!(parse_graph(&text).is_err());
    }

    #[test]
    fn shift_attrs_are_checked() {
        let node = |extra: &str| {
            g(
                &format!(
                    r#"[{{"name":"s","op":"shift_linear","inputs":["input"],"output":"logits","in_features":8,"out_features":2{extra}}}]"#
                ),
                "[8]",
                "[2]",
            )
        };
        assert!(parse_graph(&node(r#","bits":3,"code":"zero_free","path":"float""#)).is_ok());
        assert!(
            parse_graph(&node(r#","bits":5,"code":"zero_free","path":"float""#))
                .unwrap_err()
                .message
                .contains("bits")
        );
        assert!(parse_graph(&node(r#","bits":5,"code":"with_zero","path":"float""#)).is_ok());
        assert!(
            parse_graph(&node(r#","bits":3,"code":"zero_free","path":"int8""#))
                .unwrap_err()
                .message
                .contains("input_quant")
        );
        assert!(parse_graph(&node(r#","bits":3,"code":"zero_free","path":"int8","input_quant":{"scale":0.1,"zero_point":300}"#)).is_err());
        assert!(parse_graph(&node(r#","bits":3,"code":"zero_free","path":"int8","input_quant":{"scale":-1,"zero_point":0}"#)).is_err());
        let ok = parse_graph(&node(r#","bits":3,"code":"zero_free","path":"int8","input_quant":{"scale":0.5,"zero_point":3}"#)).unwrap();
        assert_eq!(
            ok.nodes[0].op.shift().unwrap().path,
            PathSpec::Int8 {
                scale: 0.5,
                zero_point: 3
            }
        );
    }

    #[test]
    fn lstm_tt_modes_and_ranks_are_checked() {
        let node = |ih: &str| {
            g(
                &format!(
                    r#"[{{"name":"l","op":"lstm_tt","inputs":["input"],"output":"logits","input_size":8,"hidden_size":4,"output_mode":"last","ih":{ih},"hh":{{"in_modes":[2,2],"out_modes":[4,4],"ranks":[2,3,2]}}}}]"#
                ),
                "[1,8,5]",
                "[4]",
            )
        };
        let ok = parse_graph(&node(
            r#"{"in_modes":[2,4],"out_modes":[4,4],"ranks":[2,3,2]}"#,
        ))
        .unwrap();
        if let Op::LstmTt { ih, .. } = &ok.nodes[0].op {
            assert_eq!(ih.core_shape(0), [1, 2, 2]);
            assert_eq!(ih.core_shape(3), [2, 4, 1]);
            assert_eq!(ih.cores[3], "l.ih.core4");
        } else {
            panic!("not lstm_tt");
        }
        assert!(parse_graph(&node(
            r#"{"in_modes":[2,2],"out_modes":[4,4],"ranks":[2,3,2]}"#
        ))
        .unwrap_err()
        .message
        .contains("multiply to 8"));
        assert!(parse_graph(&node(
            r#"{"in_modes":[2,4],"out_modes":[4,4],"ranks":[2,3]}"#
        ))
        .unwrap_err()
        .message
        .contains("ranks"));
    }
}
