//! The execution plan: every graph node becomes a kernel layer object (weights in the compute
//! layout of the selected ISA, built once at load), values are assigned to a small set of
//! reusable buffer slots by liveness, and a [`Runner`] (one per session) owns buffers sized for
//! its maximum batch, so steady-state inference allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;

use kernels::{
    Code, Conv2dF32, ConvGeom, Epilogue, Isa, KernelError, LinearF32, NumericPath, PackedShift,
    ShiftConv2d, ShiftLinear, Workspace,
};

use crate::error::{bad_input, internal, invalid, ModelError};
use crate::format::{DType, ModelFile};
use crate::graph::{CodeSpec, ConvAttrs, LstmOutput, Op, PathSpec, PoolAttrs, ShiftAttrs, TtSpec};
use crate::lstm::{LstmCell, LstmScratch, Projection, TtMatrix};

fn kerr(node: &str) -> impl Fn(KernelError) -> ModelError + '_ {
    move |e| invalid(format!("node '{node}': {e}"))
}

fn run_err(node: &str) -> impl Fn(KernelError) -> ModelError + '_ {
    move |e| internal(format!("node '{node}': kernel failed: {e}"))
}

/// What one step computes.
enum Kind {
    Conv {
        layer: Conv2dF32,
        relu: bool,
    },
    ShiftConv {
        layer: ShiftConv2d,
        relu: bool,
        residual: bool,
    },
    Linear {
        layer: LinearF32,
        relu: bool,
    },
    ShiftLinear {
        layer: ShiftLinear,
        relu: bool,
    },
    MaxPool(PoolAttrs),
    AvgPool(PoolAttrs),
    GlobalAvgPool,
    Add {
        relu: bool,
    },
    Relu,
    Lstm(LstmCell),
}

struct Step {
    name: String,
    kind: Kind,
    /// Buffer slots of the inputs (in node order).
    inputs: Vec<usize>,
    output: usize,
    /// Per-sample input shape (first input) and output element count.
    in_shape: Vec<usize>,
    out_len: usize,
}

/// A planned model: immutable, shared by all sessions.
pub struct Plan {
    steps: Vec<Step>,
    /// Per-sample capacity (elements) of each buffer slot.
    slot_len: Vec<usize>,
    input_slot: usize,
    input_len: usize,
    output_slot: usize,
    classes: usize,
    isa: Isa,
}

impl Plan {
    /// Builds kernel layers for every node of a validated file.
    pub fn build(file: &ModelFile) -> Result<Plan, ModelError> {
        let isa =
            kernels::selected_isa().map_err(|e| internal(format!("kernel selection: {e}")))?;
        let graph = &file.graph;

        // Value -> slot, with flatten as an alias of its input (same memory, no step).
        let mut value_slot: HashMap<&str, usize> = HashMap::new();
        let mut slot_len: Vec<usize> = Vec::new();
        let mut slot_free: Vec<bool> = Vec::new();
        // last node index that reads each slot (through any alias); computed first
        let mut alias: HashMap<&str, &str> = HashMap::new();
        for n in &graph.nodes {
            if matches!(n.op, Op::Flatten) {
                alias.insert(n.output.as_str(), n.inputs[0].as_str());
            }
        }
        let root = |v: &str| -> String {
            let mut v = v.to_string();
            while let Some(a) = alias.get(v.as_str()) {
                v = a.to_string();
            }
            v
        };
        let mut last_use: HashMap<String, usize> = HashMap::new();
        for (i, n) in graph.nodes.iter().enumerate() {
            for inp in &n.inputs {
                last_use.insert(root(inp), i);
            }
        }
        let final_root = root(&graph.output.name);
        last_use.insert(final_root.clone(), usize::MAX);

        let input_len: usize = graph.input.shape.iter().product();
        slot_len.push(input_len);
        slot_free.push(false);
        value_slot.insert(graph.input.name.as_str(), 0);

        let mut steps = Vec::with_capacity(graph.nodes.len());
        for (i, node) in graph.nodes.iter().enumerate() {
            let input_slots: Vec<usize> = node
                .inputs
                .iter()
                .map(|v| {
                    value_slot
                        .get(v.as_str())
                        .copied()
                        .ok_or_else(|| internal(format!("plan: value '{v}' has no slot")))
                })
                .collect::<Result<_, _>>()?;
            let out_len: usize = node.output_shape.iter().product();
            if matches!(node.op, Op::Flatten) {
                value_slot.insert(node.output.as_str(), input_slots[0]);
                continue;
            }
            // choose a free slot: smallest that fits, else the largest (grown)
            let mut best: Option<usize> = None;
            for (s, &free) in slot_free.iter().enumerate() {
                if !free {
                    continue;
                }
                best = match best {
                    None => Some(s),
                    Some(b) => {
                        let (fits_s, fits_b) = (slot_len[s] >= out_len, slot_len[b] >= out_len);
                        let better = match (fits_s, fits_b) {
                            (true, false) => true,
                            (false, true) => false,
                            (true, true) => slot_len[s] < slot_len[b],
                            (false, false) => slot_len[s] > slot_len[b],
                        };
                        Some(if better { s } else { b })
                    }
                };
            }
            let out_slot = match best {
                Some(s) => {
                    slot_len[s] = slot_len[s].max(out_len);
                    slot_free[s] = false;
                    s
                }
                None => {
                    slot_len.push(out_len);
                    slot_free.push(false);
                    slot_len.len() - 1
                }
            };
            value_slot.insert(node.output.as_str(), out_slot);
            // inputs whose last reader is this node free their slot (after the output was placed,
            // so a step never writes the memory it reads)
            for inp in &node.inputs {
                let r = root(inp);
                if last_use.get(&r) == Some(&i) {
                    if let Some(&s) = value_slot.get(r.as_str()) {
                        slot_free[s] = true;
                    }
                }
            }
            let kind = build_kind(
                file,
                node.name.as_str(),
                &node.op,
                node.inputs.len(),
                &node.input_shapes,
                isa,
            )?;
            steps.push(Step {
                name: node.name.clone(),
                kind,
                inputs: input_slots,
                output: out_slot,
                in_shape: node.input_shapes[0].clone(),
                out_len,
            });
        }
        let total: usize = slot_len.iter().sum();
        if total > crate::graph::MAX_ACTIVATION_ELEMS {
            return Err(invalid(format!(
                "the graph needs {total} activation values per sample (limit {})",
                crate::graph::MAX_ACTIVATION_ELEMS
            )));
        }
        let output_slot = *value_slot
            .get(graph.output.name.as_str())
            .ok_or_else(|| internal("plan: no output slot"))?;
        Ok(Plan {
            steps,
            slot_len,
            input_slot: 0,
            input_len,
            output_slot,
            classes: graph.output.shape[0],
            isa,
        })
    }

    /// Number of buffer slots (distinct activation buffers per session).
    pub fn slots(&self) -> usize {
        self.slot_len.len()
    }

    /// Elements of activation memory per sample across all slots.
    pub fn activation_elems_per_sample(&self) -> usize {
        self.slot_len.iter().sum()
    }

    /// The kernel ISA the layers were built for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

fn geom(c: &ConvAttrs) -> ConvGeom {
    ConvGeom {
        in_c: c.in_channels,
        out_c: c.out_channels,
        kh: c.kernel.0,
        kw: c.kernel.1,
        stride: c.stride,
        pad: c.padding,
        groups: c.groups,
    }
}

fn pool(p: &PoolAttrs) -> kernels::Pool2d {
    kernels::Pool2d {
        kernel: p.kernel,
        stride: p.stride,
        pad: p.padding,
    }
}

fn f32_tensor(
    file: &ModelFile,
    node: &str,
    role: &str,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, ModelError> {
    Ok(file.expect(node, role, name, DType::F32, shape)?.to_f32())
}

fn shift_parts(
    file: &ModelFile,
    node: &str,
    s: &ShiftAttrs,
    rows: usize,
    cols: usize,
    isa: Isa,
) -> Result<(PackedShift, Vec<f32>, Vec<f32>, NumericPath), ModelError> {
    let planes = file.expect(
        node,
        "weight",
        &s.weight,
        DType::U8,
        &[s.bits, (rows * cols).div_ceil(8)],
    )?;
    let code = match s.code {
        CodeSpec::ZeroFree => Code::ZeroFree,
        CodeSpec::WithZero => Code::WithZero,
    };
    let packed = PackedShift::from_planes(code, s.bits as u8, rows, cols, planes.data)
        .map_err(kerr(node))?;
    let scale = f32_tensor(file, node, "scale", &s.scale, &[rows])?;
    let bias = f32_tensor(file, node, "bias", &s.bias, &[rows])?;
    let path = match s.path {
        PathSpec::Int8 { scale, zero_point } => NumericPath::Int8 { scale, zero_point },
        PathSpec::Float => NumericPath::Float,
    };
    let _ = isa;
    Ok((packed, scale, bias, path))
}

fn tt_matrix(
    file: &ModelFile,
    node: &str,
    role: &str,
    tt: &TtSpec,
) -> Result<TtMatrix, ModelError> {
    let cores = tt
        .cores
        .iter()
        .enumerate()
        .map(|(k, name)| {
            f32_tensor(
                file,
                node,
                &format!("{role} core {}", k + 1),
                name,
                &tt.core_shape(k),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TtMatrix::new(
        &tt.in_modes,
        &tt.out_modes,
        &tt.full_ranks(),
        &cores,
    ))
}

fn build_kind(
    file: &ModelFile,
    node: &str,
    op: &Op,
    n_inputs: usize,
    in_shapes: &[Vec<usize>],
    isa: Isa,
) -> Result<Kind, ModelError> {
    Ok(match op {
        Op::Conv2d {
            conv,
            relu,
            weight,
            bias,
        } => {
            let w = f32_tensor(
                file,
                node,
                "weight",
                weight,
                &[
                    conv.out_channels,
                    conv.in_channels / conv.groups,
                    conv.kernel.0,
                    conv.kernel.1,
                ],
            )?;
            let b = f32_tensor(file, node, "bias", bias, &[conv.out_channels])?;
            Kind::Conv {
                layer: Conv2dF32::new(geom(conv), w, b).map_err(kerr(node))?,
                relu: *relu,
            }
        }
        Op::ShiftConv2d { conv, relu, shift } => {
            let (packed, scale, bias, path) =
                shift_parts(file, node, shift, conv.out_channels, conv.k(), isa)?;
            let layer =
                ShiftConv2d::new(geom(conv), packed, scale, bias, path, isa).map_err(kerr(node))?;
            Kind::ShiftConv {
                layer,
                relu: *relu,
                residual: n_inputs == 2,
            }
        }
        Op::Linear {
            in_features,
            out_features,
            relu,
            weight,
            bias,
        } => {
            let w = f32_tensor(file, node, "weight", weight, &[*out_features, *in_features])?;
            let b = f32_tensor(file, node, "bias", bias, &[*out_features])?;
            Kind::Linear {
                layer: LinearF32::new(*in_features, *out_features, w, b).map_err(kerr(node))?,
                relu: *relu,
            }
        }
        Op::ShiftLinear {
            in_features,
            out_features,
            relu,
            shift,
        } => {
            let (packed, scale, bias, path) =
                shift_parts(file, node, shift, *out_features, *in_features, isa)?;
            let layer =
                ShiftLinear::new(*in_features, *out_features, packed, scale, bias, path, isa)
                    .map_err(kerr(node))?;
            Kind::ShiftLinear { layer, relu: *relu }
        }
        Op::MaxPool2d(p) => Kind::MaxPool(*p),
        Op::AvgPool2d(p) => Kind::AvgPool(*p),
        Op::GlobalAvgPool => Kind::GlobalAvgPool,
        Op::Add { relu } => Kind::Add { relu: *relu },
        Op::Relu => Kind::Relu,
        Op::Flatten => return Err(internal("flatten is an alias, not a step")),
        Op::Lstm {
            input_size,
            hidden_size,
            output,
            w_ih,
            w_hh,
            bias,
        } => {
            let g = 4 * hidden_size;
            let wi = f32_tensor(file, node, "w_ih", w_ih, &[g, *input_size])?;
            let wh = f32_tensor(file, node, "w_hh", w_hh, &[g, *hidden_size])?;
            let b = f32_tensor(file, node, "bias", bias, &[g])?;
            Kind::Lstm(LstmCell::new(
                *input_size,
                *hidden_size,
                in_shapes[0][2],
                *output == LstmOutput::Mean,
                Projection::Dense(wi),
                Projection::Dense(wh),
                b,
            ))
        }
        Op::LstmTt {
            input_size,
            hidden_size,
            output,
            ih,
            hh,
            bias,
        } => {
            let b = f32_tensor(file, node, "bias", bias, &[4 * hidden_size])?;
            let ih = tt_matrix(file, node, "ih", ih)?;
            let hh = tt_matrix(file, node, "hh", hh)?;
            Kind::Lstm(LstmCell::new(
                *input_size,
                *hidden_size,
                in_shapes[0][2],
                *output == LstmOutput::Mean,
                Projection::Tt(ih),
                Projection::Tt(hh),
                b,
            ))
        }
    })
}

/// Per-session execution state: activation buffers for `max_batch` samples, the kernel
/// workspace and LSTM scratch. Built once; `run` allocates nothing after the first call.
pub struct Runner {
    plan: Arc<Plan>,
    max_batch: usize,
    threads: usize,
    bufs: Vec<Vec<f32>>,
    ws: Workspace,
    lstm: LstmScratch,
}

impl Runner {
    pub fn new(plan: Arc<Plan>, max_batch: usize, threads: usize) -> Runner {
        let bufs = plan
            .slot_len
            .iter()
            .map(|&n| vec![0f32; n * max_batch])
            .collect();
        let mut lstm = LstmScratch::default();
        for s in &plan.steps {
            if let Kind::Lstm(cell) = &s.kind {
                cell.reserve(&mut lstm, max_batch);
            }
        }
        Runner {
            plan,
            max_batch,
            threads,
            bufs,
            ws: Workspace::new(),
            lstm,
        }
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `batch` (each sample exactly the input shape); returns `[batch, classes]` logits.
    pub fn run(&mut self, batch: &[&[f32]]) -> Result<&[f32], ModelError> {
        self.run_observed(batch, &mut |_, _| {})
    }

    /// As [`Runner::run`], calling `observe(node name, [batch, ...] output)` after every step
    /// (flatten nodes are aliases and are not reported).
    pub fn run_observed(
        &mut self,
        batch: &[&[f32]],
        observe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<&[f32], ModelError> {
        let plan = Arc::clone(&self.plan);
        let b = batch.len();
        if b == 0 {
            return Err(bad_input("empty batch"));
        }
        if b > self.max_batch {
            return Err(bad_input(format!(
                "batch of {b} exceeds this session's maximum of {}",
                self.max_batch
            )));
        }
        {
            let inp = &mut self.bufs[plan.input_slot];
            for (i, x) in batch.iter().enumerate() {
                if x.len() != plan.input_len {
                    return Err(bad_input(format!(
                        "sample {i} has {} values, the model takes {}",
                        x.len(),
                        plan.input_len
                    )));
                }
                if let Some(j) = x.iter().position(|v| !v.is_finite()) {
                    return Err(bad_input(format!(
                        "sample {i} has a non-finite value at index {j}"
                    )));
                }
                inp[i * plan.input_len..(i + 1) * plan.input_len].copy_from_slice(x);
            }
        }
        for step in &plan.steps {
            self.step(step, b)?;
            observe(&step.name, &self.bufs[step.output][..b * step.out_len]);
        }
        Ok(&self.bufs[plan.output_slot][..b * plan.classes])
    }

    fn step(&mut self, step: &Step, n: usize) -> Result<(), ModelError> {
        let threads = self.threads;
        let mut out_buf = std::mem::take(&mut self.bufs[step.output]);
        let result = (|| -> Result<(), ModelError> {
            let out = &mut out_buf[..n * step.out_len];
            let in_len: usize = step.in_shape.iter().product();
            let x = &self.bufs[step.inputs[0]][..n * in_len];
            let second = step
                .inputs
                .get(1)
                .map(|&s| &self.bufs[s][..n * step.out_len]);
            let e = run_err(&step.name);
            let hw = |s: &Vec<usize>| (s[0], s[1], s[2]);
            match &step.kind {
                Kind::Conv { layer, relu } => {
                    let (_, h, w) = hw(&step.in_shape);
                    layer
                        .forward(
                            x,
                            n,
                            h,
                            w,
                            Epilogue {
                                residual: None,
                                relu: *relu,
                            },
                            out,
                            &mut self.ws,
                            threads,
                        )
                        .map_err(e)?;
                }
                Kind::ShiftConv {
                    layer,
                    relu,
                    residual,
                } => {
                    let (_, h, w) = hw(&step.in_shape);
                    let r = if *residual { second } else { None };
                    layer
                        .forward(
                            x,
                            n,
                            h,
                            w,
                            Epilogue {
                                residual: r,
                                relu: *relu,
                            },
                            out,
                            &mut self.ws,
                            threads,
                        )
                        .map_err(e)?;
                }
                Kind::Linear { layer, relu } => {
                    layer
                        .forward(
                            x,
                            n,
                            Epilogue {
                                residual: None,
                                relu: *relu,
                            },
                            out,
                            &mut self.ws,
                            threads,
                        )
                        .map_err(e)?;
                }
                Kind::ShiftLinear { layer, relu } => {
                    layer
                        .forward(
                            x,
                            n,
                            Epilogue {
                                residual: None,
                                relu: *relu,
                            },
                            out,
                            &mut self.ws,
                            threads,
                        )
                        .map_err(e)?;
                }
                Kind::MaxPool(p) => {
                    let (c, h, w) = hw(&step.in_shape);
                    kernels::max_pool2d(x, n, c, h, w, pool(p), out).map_err(e)?;
                }
                Kind::AvgPool(p) => {
                    let (c, h, w) = hw(&step.in_shape);
                    kernels::avg_pool2d(x, n, c, h, w, pool(p), out).map_err(e)?;
                }
                Kind::GlobalAvgPool => {
                    let (c, h, w) = hw(&step.in_shape);
                    kernels::global_avg_pool(x, n, c, h * w, out).map_err(e)?;
                }
                Kind::Add { relu } => {
                    let y = second.ok_or_else(|| internal("add without a second operand"))?;
                    for ((o, a), b) in out.iter_mut().zip(x).zip(y) {
                        let s = a + b;
                        *o = if *relu { s.max(0.0) } else { s };
                    }
                }
                Kind::Relu => {
                    for (o, a) in out.iter_mut().zip(x) {
                        *o = a.max(0.0);
                    }
                }
                Kind::Lstm(cell) => cell
                    .forward(x, n, out, &mut self.lstm, threads)
                    .map_err(e)?,
            }
            Ok(())
        })();
        self.bufs[step.output] = out_buf;
        result
    }
}
