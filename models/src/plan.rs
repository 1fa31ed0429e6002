//! The execution plan.
//!
//! Every graph node becomes a step holding its kernel layer object (weights in the compute layout
//! of the kernel chosen for it, built once at load). Integer-path shift convolutions with
//! `groups = 1` run in the quantized runtime ([`kernels::QConv2d`]): their activations travel
//! between layers as padded NHWC `u8`, requantized by the producer's fused epilogue for each
//! consumer's quantization, with an NHWC `f32` copy where a later convolution adds the value as
//! its residual. Float stems with a short reduction run on the direct NHWC kernel, and max
//! pooling after them in NHWC. Everything else (classifier, pools, LSTMs, the float path,
//! grouped convolutions) works on NCHW `f32`, with conversion steps where two forms meet.
//!
//! Each quantized layer's kernel is chosen at load by measurement: every kernel the
//! [`KernelPolicy`] allows and the CPU supports is timed on the layer's real shape (height
//! clipped to a few thousand output pixels) at the batch sizes and thread count the model will
//! serve, and the fastest is kept. Every kernel computes the same integers, so the choice changes
//! speed only, never an output bit; the direct float stem is used only where a load-time check
//! shows it gives `gemm`'s bits for the layer's shape.
//!
//! Buffers are assigned by liveness (a value's buffer is reused once its last reader has run, by
//! a later value of the same kind and layout), and a [`Runner`] (one per session) owns them, sized
//! for its maximum batch, plus one persistent worker pool: steady-state inference spawns no thread
//! and allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;

use kernels::qconv::{
    nchw_to_nhwc, nhwc_to_nchw, quantize_nchw_to_u8, quantize_nhwc_to_u8, F32Layout, U8Layout,
};
use kernels::{
    Code, Conv2dF32, ConvGeom, ConvKernel, Epilogue, Isa, KernelError, KernelPolicy, LinearF32,
    NumericPath, PackedShift, QConv2d, QOutputs, QScratch, Quant, ShiftConv2d, ShiftLinear,
    TuneKey, U8Target, Workers, Workspace,
};

use crate::error::{bad_input, internal, invalid, ModelError};
use crate::format::{DType, ModelFile};
use crate::graph::{
    CodeSpec, ConvAttrs, LstmOutput, Node, Op, PathSpec, PoolAttrs, ShiftAttrs, TtSpec,
};
use crate::lstm::{LstmCell, LstmScratch, Projection, TtMatrix};

fn kerr(node: &str) -> impl Fn(KernelError) -> ModelError + '_ {
    move |e| invalid(format!("node '{node}': {e}"))
}

fn run_err(node: &str) -> impl Fn(KernelError) -> ModelError + '_ {
    move |e| internal(format!("node '{node}': kernel failed: {e}"))
}

/// How a model is prepared: which kernels may run, and what the per-layer kernel choice is
/// measured for.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub policy: KernelPolicy,
    /// Batch sizes the sessions will run (the choice minimises their summed time).
    pub batch_sizes: Vec<usize>,
    /// Threads of the sessions.
    pub threads: usize,
}

impl PlanOptions {
    /// `SHIFTSERVE_KERNEL`'s policy, tuned for batch 1 on one thread.
    pub fn from_env() -> Result<PlanOptions, ModelError> {
        let policy =
            KernelPolicy::from_env().map_err(|e| invalid(format!("kernel selection: {e}")))?;
        Ok(PlanOptions {
            policy,
            batch_sizes: vec![1],
            threads: 1,
        })
    }
}

/// A buffer of a runner: an NCHW `f32` slot, a padded NHWC `u8` buffer, or an NHWC `f32` buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Buf {
    Slot(usize),
    U8(usize),
    Nhwc(usize),
}

/// A form of a value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rep {
    Nchw,
    U8(Quant),
    Nhwc,
}

impl Rep {
    fn same(&self, o: &Rep) -> bool {
        match (self, o) {
            (Rep::U8(a), Rep::U8(b)) => {
                a.scale.to_bits() == b.scale.to_bits() && a.zero_point == b.zero_point
            }
            (a, b) => a == b,
        }
    }
}

/// What one step computes.
enum Kind {
    /// fp32 convolution: NCHW in; NCHW out (`gemm`) or NHWC out (`direct`).
    Conv {
        layer: Conv2dF32,
        relu: bool,
        direct: bool,
    },
    ShiftConv {
        layer: ShiftConv2d,
        relu: bool,
        residual: bool,
    },
    /// A quantized-runtime convolution.
    QConv(Box<QStep>),
    Linear {
        layer: LinearF32,
        relu: bool,
    },
    ShiftLinear {
        layer: ShiftLinear,
        relu: bool,
    },
    MaxPool {
        attrs: PoolAttrs,
        nhwc: bool,
    },
    AvgPool(PoolAttrs),
    GlobalAvgPool,
    Add {
        relu: bool,
    },
    Relu,
    Lstm(LstmCell),
    /// Layout change (and quantization when the target is `u8`).
    Convert {
        quant: Option<Quant>,
    },
}

struct QStep {
    layer: QConv2d,
    relu: bool,
    /// `u8` buffers written, each with its consumers' quantization.
    u8_outs: Vec<(usize, Quant)>,
    /// NHWC `f32` buffer written (residual of a later convolution).
    nhwc_out: Option<usize>,
    /// NCHW `f32` slot written.
    nchw_out: Option<usize>,
}

struct Step {
    name: String,
    kind: Kind,
    /// Buffers read (input, then residual / second operand).
    inputs: Vec<Buf>,
    /// Buffer written (a quantized step lists its outputs in [`QStep`]; this is its first).
    output: Buf,
    /// Per-sample input shape (first input) and output shape.
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    /// Whether this step is a graph node (conversions are not).
    node: bool,
}

impl Step {
    fn out_len(&self) -> usize {
        self.out_shape.iter().product()
    }
}

/// What a layer runs on, for `shiftserve inspect`, `/v1/models` and the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerKernel {
    pub node: String,
    /// A [`ConvKernel`] name (`dot-avx512vnni`, `shift-avx2`, ...) for quantized convolutions;
    /// for other layers the operator's implementation (`shift-avx512 (grouped conv, int8
    /// path)`, `fp32-direct`, `fp32-gemm`, ...).
    pub kernel: String,
    /// Measured seconds per candidate kernel when the choice was measured (empty otherwise).
    pub measured: Vec<(String, f64)>,
}

/// A planned model: immutable, shared by all sessions.
pub struct Plan {
    steps: Vec<Step>,
    /// Per-sample capacity (elements) of each NCHW `f32` slot.
    slot_len: Vec<usize>,
    /// Per-sample layouts of the `u8` buffers and the zero point that fills their border.
    u8_bufs: Vec<(U8Layout, u8)>,
    /// Per-sample layouts of the NHWC `f32` buffers.
    nhwc_bufs: Vec<F32Layout>,
    input_slot: usize,
    input_len: usize,
    output_slot: usize,
    classes: usize,
    isa: Isa,
    kernels: Vec<LayerKernel>,
    policy: KernelPolicy,
    /// A direct fp32 conv, max pool and quantization to `u8` run as one pass (see
    /// [`find_fused_stem`]).
    fused_stem: Option<FusedStem>,
    /// Steps `0..sample_major` run one sample at a time on a batch (see [`sample_major_prefix`]).
    sample_major: usize,
}

/// Steps `conv`, `conv + 1` (max pool into NHWC buffer `pooled`) and `conv + 2` (quantization
/// into `u8` buffer `out`) of the plan, run by one fused kernel writing both.
#[derive(Clone, Copy, Debug)]
struct FusedStem {
    conv: usize,
    pool: kernels::Pool2d,
    quant: Quant,
    pooled: usize,
    out: usize,
}

/// Whether the value a buffer holds after step `last_reader` is read by a later step (before
/// another step writes the buffer again).
fn read_later(steps: &[Step], buf: Buf, last_reader: usize) -> bool {
    for s in &steps[last_reader + 1..] {
        if s.inputs.contains(&buf) {
            return true;
        }
        let writes = s.output == buf
            || match &s.kind {
                Kind::QConv(q) => {
                    q.u8_outs.iter().any(|(k, _)| buf == Buf::U8(*k))
                        || q.nhwc_out.map(Buf::Nhwc) == Some(buf)
                        || q.nchw_out.map(Buf::Slot) == Some(buf)
                }
                _ => false,
            };
        if writes {
            return false;
        }
    }
    false
}

/// A fusable stem: a direct fp32 conv writing NHWC, read only by the NHWC max pool after it,
/// which is followed by a quantization of its output to `u8`; no `u8` buffer is written before
/// the conv (so the fused kernel, writing the `u8` buffer two steps early, cannot clobber a live
/// value). The pooled `f32` output is still written (a residual may read it).
fn find_fused_stem(steps: &[Step]) -> Option<FusedStem> {
    for i in 0..steps.len().saturating_sub(2) {
        let (a, b, c) = (&steps[i], &steps[i + 1], &steps[i + 2]);
        let (Kind::Conv { direct: true, .. }, Kind::MaxPool { attrs, nhwc: true }) =
            (&a.kind, &b.kind)
        else {
            if matches!(a.output, Buf::U8(_)) {
                return None;
            }
            continue;
        };
        let Kind::Convert { quant: Some(q) } = &c.kind else {
            return None;
        };
        let (Buf::Nhwc(_), Buf::Nhwc(pooled), Buf::U8(out)) = (a.output, b.output, c.output) else {
            return None;
        };
        if b.inputs != [a.output] || c.inputs != [b.output] || read_later(steps, a.output, i + 1) {
            return None;
        }
        return Some(FusedStem {
            conv: i,
            pool: pool(attrs),
            quant: *q,
            pooled,
            out,
        });
    }
    None
}

/// How many leading steps of a batch run one sample at a time (each sample through all of them,
/// then the next sample) instead of one step over the whole batch: a fused stem at step 0 and the
/// quantized convolutions after it, as long as a layer touches more activation bytes per sample
/// than it has weight bytes (the early, wide layers of a CNN). Their working set is then one
/// sample's activations, which stay in the core's L2 cache, while the later layers (small
/// activations, large weights) still run over the whole batch and reuse their weights across it.
///
/// Every such step reads and writes only its sample's part of padded NHWC buffers whose layout
/// is fixed per buffer (or, for the stem, the input slot), in the same order per sample, so the
/// bits are those of batch-major execution; steps that write an NCHW slot end the prefix (a slot
/// may hold values of different per-sample sizes). Returns 0 when there is no such prefix.
fn sample_major_prefix(
    steps: &[Step],
    fused: Option<FusedStem>,
    u8_bufs: &[(U8Layout, u8)],
    nhwc_bufs: &[F32Layout],
) -> usize {
    let Some(f) = fused else { return 0 };
    if f.conv != 0 {
        return 0;
    }
    let mut end = 3;
    for s in &steps[3..] {
        let Kind::QConv(q) = &s.kind else { break };
        if q.nchw_out.is_some() || s.inputs.iter().any(|b| matches!(b, Buf::Slot(_))) {
            break;
        }
        let mut act = 0usize;
        for b in s.inputs.iter().copied() {
            act += match b {
                Buf::U8(k) => u8_bufs[k].0.sample_len(),
                Buf::Nhwc(k) => 4 * nhwc_bufs[k].sample_len(),
                Buf::Slot(_) => 0,
            };
        }
        act += q
            .u8_outs
            .iter()
            .map(|&(k, _)| u8_bufs[k].0.sample_len())
            .sum::<usize>();
        act += q.nhwc_out.map_or(0, |k| 4 * nhwc_bufs[k].sample_len());
        if act < q.layer.weight_bytes() {
            break;
        }
        end += 1;
    }
    end
}

/// Buffers of one kind, assigned by liveness: a free buffer with the same key is reused.
struct Pool<K> {
    items: Vec<(K, bool)>,
}

impl<K: PartialEq + Copy> Pool<K> {
    fn new() -> Self {
        Pool { items: Vec::new() }
    }
    fn take(&mut self, key: K) -> usize {
        if let Some(i) = self.items.iter().position(|(k, free)| *free && *k == key) {
            self.items[i].1 = false;
            return i;
        }
        self.items.push((key, false));
        self.items.len() - 1
    }
}

/// All buffers of a plan under construction.
struct Buffers {
    /// NCHW slots grow to the largest value placed in them.
    slots: Vec<(usize, bool)>,
    u8s: Pool<(U8Layout, u8)>,
    nhwc: Pool<F32Layout>,
}

impl Buffers {
    /// The smallest free slot that fits, else the largest free one grown, else a new one.
    fn take_slot(&mut self, len: usize) -> usize {
        let mut best: Option<usize> = None;
        for (s, &(cap, free)) in self.slots.iter().enumerate() {
            if !free {
                continue;
            }
            best = Some(match best {
                None => s,
                Some(b) => {
                    let bcap = self.slots[b].0;
                    let better = match (cap >= len, bcap >= len) {
                        (true, false) => true,
                        (false, true) => false,
                        (true, true) => cap < bcap,
                        (false, false) => cap > bcap,
                    };
                    if better {
                        s
                    } else {
                        b
                    }
                }
            });
        }
        match best {
            Some(s) => {
                self.slots[s] = (self.slots[s].0.max(len), false);
                s
            }
            None => {
                self.slots.push((len, false));
                self.slots.len() - 1
            }
        }
    }

    fn take(&mut self, rep: Rep, shape: &[usize], border: usize) -> Result<Buf, ModelError> {
        let len: usize = shape.iter().product();
        Ok(match rep {
            Rep::Nchw => Buf::Slot(self.take_slot(len)),
            Rep::U8(q) => {
                let (c, h, w) = chw(shape)?;
                Buf::U8(
                    self.u8s
                        .take((U8Layout::new(h, w, c, border), q.zero_point as u8)),
                )
            }
            Rep::Nhwc => {
                let (c, h, w) = chw(shape)?;
                Buf::Nhwc(self.nhwc.take(F32Layout::new(h, w, c)))
            }
        })
    }

    fn free(&mut self, b: Buf) {
        match b {
            Buf::Slot(i) => self.slots[i].1 = true,
            Buf::U8(i) => self.u8s.items[i].1 = true,
            Buf::Nhwc(i) => self.nhwc.items[i].1 = true,
        }
    }
}

fn chw(shape: &[usize]) -> Result<(usize, usize, usize), ModelError> {
    match shape {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(internal(format!(
            "plan: a value in NHWC form must be [C, H, W], got {shape:?}"
        ))),
    }
}

/// The input quantization and padding of a node the quantized runtime runs.
fn q_input(node: &Node) -> Option<(Quant, usize)> {
    match &node.op {
        Op::ShiftConv2d { conv, shift, .. } if conv.groups == 1 => match shift.path {
            PathSpec::Int8 { scale, zero_point } => Some((
                Quant { scale, zero_point },
                conv.padding.0.max(conv.padding.1),
            )),
            PathSpec::Float => None,
        },
        _ => None,
    }
}

/// One form a value's consumers need: the form, the border (u8), the last reader.
#[derive(Clone, Copy, Debug)]
struct Need {
    rep: Rep,
    border: usize,
    last: usize,
}

impl Plan {
    /// Builds kernel layers for every node of a validated file, with the process's kernel policy
    /// and the choice tuned for batch 1 on one thread.
    pub fn build(file: &ModelFile) -> Result<Plan, ModelError> {
        Plan::build_with(file, &PlanOptions::from_env()?)
    }

    /// As [`Plan::build`], with explicit options.
    pub fn build_with(file: &ModelFile, opts: &PlanOptions) -> Result<Plan, ModelError> {
        let isa = opts.policy.legacy_isa();
        let graph = &file.graph;
        let nodes = &graph.nodes;

        // Flatten is an alias of its input (same NCHW memory, no step).
        let mut alias: HashMap<&str, &str> = HashMap::new();
        for n in nodes {
            if matches!(n.op, Op::Flatten) {
                alias.insert(n.output.as_str(), n.inputs[0].as_str());
            }
        }
        let root = |v: &str| -> String {
            let mut v = v;
            while let Some(a) = alias.get(v) {
                v = a;
            }
            v.to_string()
        };

        // Pass 1: layers of the nodes outside the quantized runtime, and the form each value is
        // produced in (quantized convolutions produce whatever their consumers need: `None`).
        let mut native: HashMap<String, Option<Rep>> = HashMap::new();
        native.insert(graph.input.name.clone(), Some(Rep::Nchw));
        let mut kinds: Vec<Option<Kind>> = Vec::with_capacity(nodes.len());
        for node in nodes {
            if matches!(node.op, Op::Flatten) || q_input(node).is_some() {
                kinds.push(None);
                if !matches!(node.op, Op::Flatten) {
                    native.insert(node.output.clone(), None);
                }
                continue;
            }
            let mut kind = build_kind(
                file,
                &node.name,
                &node.op,
                node.inputs.len(),
                &node.input_shapes,
                isa,
            )?;
            let mut form = Rep::Nchw;
            match &mut kind {
                Kind::Conv { layer, direct, .. } => {
                    let (_, h, w) = chw(&node.input_shapes[0])?;
                    if layer.has_direct() && layer.direct_matches_gemm(h, w, isa) {
                        *direct = true;
                        form = Rep::Nhwc;
                    }
                }
                Kind::MaxPool { nhwc, .. }
                    if native.get(&root(&node.inputs[0])) == Some(&Some(Rep::Nhwc)) =>
                {
                    *nhwc = true;
                    form = Rep::Nhwc;
                }
                _ => {}
            }
            native.insert(node.output.clone(), Some(form));
            kinds.push(Some(kind));
        }

        // Pass 2: the forms each value's consumers read, with the last reader of each.
        let mut needs: HashMap<String, Vec<Need>> = HashMap::new();
        let mut need = |v: String, rep: Rep, border: usize, reader: usize| {
            let list = needs.entry(v).or_default();
            if let Some(e) = list.iter_mut().find(|e| e.rep.same(&rep)) {
                e.border = e.border.max(border);
                e.last = e.last.max(reader);
            } else {
                list.push(Need {
                    rep,
                    border,
                    last: reader,
                });
            }
        };
        for (i, n) in nodes.iter().enumerate() {
            if matches!(n.op, Op::Flatten) {
                continue;
            }
            if let Some((quant, pad)) = q_input(n) {
                need(root(&n.inputs[0]), Rep::U8(quant), pad, i);
                if let Some(r) = n.inputs.get(1) {
                    need(root(r), Rep::Nhwc, 0, i);
                }
            } else if matches!(kinds[i], Some(Kind::MaxPool { nhwc: true, .. })) {
                need(root(&n.inputs[0]), Rep::Nhwc, 0, i);
            } else {
                for v in &n.inputs {
                    need(root(v), Rep::Nchw, 0, i);
                }
            }
        }
        need(root(&graph.output.name), Rep::Nchw, 0, usize::MAX);

        // Pass 3: steps and buffers in node order.
        let mut bufs = Buffers {
            slots: Vec::new(),
            u8s: Pool::new(),
            nhwc: Pool::new(),
        };
        let mut placed: HashMap<String, Vec<(Rep, Buf)>> = HashMap::new();
        let mut frees: Vec<(usize, Buf)> = Vec::new();
        let mut steps: Vec<Step> = Vec::with_capacity(nodes.len() + 8);
        let mut kernels_info: Vec<LayerKernel> = Vec::new();

        // Places the native form of a value written by a plain step, then conversion steps for
        // every other form its consumers need. `at` is the producing node's index.
        let place_plain = |value: &str,
                           shape: &[usize],
                           form: Rep,
                           at: usize,
                           bufs: &mut Buffers,
                           placed: &mut HashMap<String, Vec<(Rep, Buf)>>,
                           steps: &mut Vec<Step>,
                           frees: &mut Vec<(usize, Buf)>|
         -> Result<Buf, ModelError> {
            let list = needs.get(value).cloned().unwrap_or_default();
            let own = list.iter().find(|n| n.rep.same(&form)).copied();
            let buf = bufs.take(form, shape, own.map(|n| n.border).unwrap_or(0))?;
            placed
                .entry(value.to_string())
                .or_default()
                .push((form, buf));
            for n in list.iter().filter(|n| !n.rep.same(&form)) {
                let to = bufs.take(n.rep, shape, n.border)?;
                placed
                    .entry(value.to_string())
                    .or_default()
                    .push((n.rep, to));
                if n.last != usize::MAX {
                    frees.push((n.last, to));
                }
                steps.push(Step {
                    name: format!("{value} (convert)"),
                    kind: Kind::Convert {
                        quant: match n.rep {
                            Rep::U8(q) => Some(q),
                            _ => None,
                        },
                    },
                    inputs: vec![buf],
                    output: to,
                    in_shape: shape.to_vec(),
                    out_shape: shape.to_vec(),
                    node: false,
                });
            }
            let last = own.map(|n| n.last).unwrap_or(at);
            if last != usize::MAX {
                frees.push((last.max(at), buf));
            }
            Ok(buf)
        };

        let input_len: usize = graph.input.shape.iter().product();
        let input_buf = place_plain(
            &graph.input.name,
            &graph.input.shape,
            Rep::Nchw,
            0,
            &mut bufs,
            &mut placed,
            &mut steps,
            &mut frees,
        )?;
        let Buf::Slot(input_slot) = input_buf else {
            return Err(internal("plan: the input is not in a slot"));
        };

        let lookup = |placed: &HashMap<String, Vec<(Rep, Buf)>>, v: &str, rep: Rep| {
            let r = root(v);
            placed
                .get(&r)
                .and_then(|l| l.iter().find(|(p, _)| p.same(&rep)))
                .map(|&(_, b)| b)
                .ok_or_else(|| internal(format!("plan: value '{r}' has no {rep:?} form")))
        };

        let workers = Workers::new(opts.threads.max(1));
        for (i, node) in nodes.iter().enumerate() {
            if matches!(node.op, Op::Flatten) {
                continue;
            }
            if let Some((quant, _)) = q_input(node) {
                let mut inputs = vec![lookup(&placed, &node.inputs[0], Rep::U8(quant))?];
                if let Some(r) = node.inputs.get(1) {
                    inputs.push(lookup(&placed, r, Rep::Nhwc)?);
                }
                let (layer, info) = build_qconv(file, node, quant, opts, &workers)?;
                kernels_info.push(info);
                let mut list = needs.get(&node.output).cloned().unwrap_or_default();
                if list.is_empty() {
                    // An unread value still needs somewhere to go.
                    list.push(Need {
                        rep: Rep::Nchw,
                        border: 0,
                        last: i,
                    });
                }
                let mut q = QStep {
                    layer,
                    relu: matches!(node.op, Op::ShiftConv2d { relu: true, .. }),
                    u8_outs: Vec::new(),
                    nhwc_out: None,
                    nchw_out: None,
                };
                let mut first = None;
                for n in &list {
                    let b = bufs.take(n.rep, &node.output_shape, n.border)?;
                    first.get_or_insert(b);
                    placed
                        .entry(node.output.clone())
                        .or_default()
                        .push((n.rep, b));
                    if n.last != usize::MAX {
                        frees.push((n.last.max(i), b));
                    }
                    match (n.rep, b) {
                        (Rep::U8(qq), Buf::U8(k)) => q.u8_outs.push((k, qq)),
                        (Rep::Nhwc, Buf::Nhwc(k)) => q.nhwc_out = Some(k),
                        (Rep::Nchw, Buf::Slot(k)) => q.nchw_out = Some(k),
                        _ => return Err(internal("plan: buffer kind mismatch")),
                    }
                }
                steps.push(Step {
                    name: node.name.clone(),
                    kind: Kind::QConv(Box::new(q)),
                    inputs,
                    output: first.expect("at least one output"),
                    in_shape: node.input_shapes[0].clone(),
                    out_shape: node.output_shape.clone(),
                    node: true,
                });
            } else {
                let kind = kinds[i].take().expect("built in pass 1");
                let form = native[&node.output].expect("plain node form");
                let reads = match &kind {
                    Kind::MaxPool { nhwc: true, .. } => Rep::Nhwc,
                    _ => Rep::Nchw,
                };
                let inputs = node
                    .inputs
                    .iter()
                    .map(|v| lookup(&placed, v, reads))
                    .collect::<Result<Vec<_>, _>>()?;
                kernels_info.push(LayerKernel {
                    node: node.name.clone(),
                    kernel: plain_kernel_name(&node.op, isa, &kind),
                    measured: Vec::new(),
                });
                // The step goes in before its conversions; its output buffer is placed first.
                let at = steps.len();
                let out = place_plain(
                    &node.output,
                    &node.output_shape,
                    form,
                    i,
                    &mut bufs,
                    &mut placed,
                    &mut steps,
                    &mut frees,
                )?;
                steps.insert(
                    at,
                    Step {
                        name: node.name.clone(),
                        kind,
                        inputs,
                        output: out,
                        in_shape: node.input_shapes[0].clone(),
                        out_shape: node.output_shape.clone(),
                        node: true,
                    },
                );
            }
            // Buffers whose last reader was this node become free (after this node's outputs
            // were placed, so a step never writes the memory it reads).
            let mut k = 0;
            while k < frees.len() {
                if frees[k].0 <= i {
                    bufs.free(frees.swap_remove(k).1);
                } else {
                    k += 1;
                }
            }
        }
        let u8_bufs: Vec<(U8Layout, u8)> = bufs.u8s.items.iter().map(|(k, _)| *k).collect();
        let nhwc_bufs: Vec<F32Layout> = bufs.nhwc.items.iter().map(|(k, _)| *k).collect();
        let slot_len: Vec<usize> = bufs.slots.iter().map(|(c, _)| *c).collect();
        let total_bytes = 4 * slot_len.iter().sum::<usize>()
            + u8_bufs.iter().map(|(l, _)| l.sample_len()).sum::<usize>()
            + 4 * nhwc_bufs.iter().map(|l| l.sample_len()).sum::<usize>();
        if total_bytes > 4 * crate::graph::MAX_ACTIVATION_ELEMS {
            return Err(invalid(format!(
                "the graph needs {total_bytes} bytes of activations per sample (limit {})",
                4 * crate::graph::MAX_ACTIVATION_ELEMS
            )));
        }
        let output_slot = match lookup(&placed, &graph.output.name, Rep::Nchw)? {
            Buf::Slot(s) => s,
            _ => return Err(internal("plan: the output is not in a slot")),
        };
        let fused_stem = find_fused_stem(&steps);
        if let Some(f) = fused_stem {
            let (conv, pool) = (&steps[f.conv].name, &steps[f.conv + 1].name);
            for k in kernels_info.iter_mut() {
                if &k.node == conv {
                    k.kernel = format!("{} + maxpool + quantize (fused)", k.kernel);
                } else if &k.node == pool {
                    k.kernel = format!("fused into {conv}");
                }
            }
        }
        let sample_major = sample_major_prefix(&steps, fused_stem, &u8_bufs, &nhwc_bufs);
        Ok(Plan {
            fused_stem,
            sample_major,
            steps,
            slot_len,
            u8_bufs,
            nhwc_bufs,
            input_slot,
            input_len,
            output_slot,
            classes: graph.output.shape[0],
            isa,
            kernels: kernels_info,
            policy: opts.policy.clone(),
        })
    }

    /// Number of NCHW `f32` buffer slots.
    pub fn slots(&self) -> usize {
        self.slot_len.len()
    }

    /// Bytes of activation memory per sample across all buffers.
    pub fn activation_bytes_per_sample(&self) -> usize {
        4 * self.slot_len.iter().sum::<usize>()
            + self
                .u8_bufs
                .iter()
                .map(|(l, _)| l.sample_len())
                .sum::<usize>()
            + 4 * self.nhwc_bufs.iter().map(|l| l.sample_len()).sum::<usize>()
    }

    /// Elements of NCHW `f32` activation memory per sample.
    pub fn activation_elems_per_sample(&self) -> usize {
        self.slot_len.iter().sum()
    }

    /// The shift-add instruction set of layers outside the quantized runtime.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The kernel of every layer, in graph order.
    pub fn kernels(&self) -> &[LayerKernel] {
        &self.kernels
    }

    /// Names of the leading steps that run one sample at a time on a batch (see
    /// [`sample_major_prefix`]); empty when every step runs over the whole batch.
    pub fn sample_major_steps(&self) -> Vec<String> {
        self.steps[..self.sample_major]
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Every step in execution order: (name, what runs it). Conversion steps between the forms
    /// of a value are included.
    pub fn steps_info(&self) -> Vec<(String, String)> {
        let mut k = self.kernels.iter();
        let fused_convert = self.fused_stem.map(|f| f.conv + 2);
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let what = match (&s.kind, s.inputs.first(), s.output) {
                    (Kind::Convert { .. }, ..) if Some(i) == fused_convert => {
                        format!("fused into {}", self.steps[i - 2].name)
                    }
                    (Kind::Convert { .. }, Some(from), to) => {
                        format!("convert {} -> {}", buf_form(*from), buf_form(to))
                    }
                    _ => k.next().map(|l| l.kernel.clone()).unwrap_or_default(),
                };
                (s.name.clone(), what)
            })
            .collect()
    }

    /// The kernel policy the plan was built with.
    pub fn policy(&self) -> &KernelPolicy {
        &self.policy
    }
}

fn buf_form(b: Buf) -> &'static str {
    match b {
        Buf::Slot(_) => "NCHW f32",
        Buf::U8(_) => "NHWC u8",
        Buf::Nhwc(_) => "NHWC f32",
    }
}

/// Output pixels per sample the measurement keeps (the height is clipped to reach about this).
const TUNE_PIXELS: usize = 1536;

/// Builds a quantized layer with the fastest allowed kernel for its shape.
fn build_qconv(
    file: &ModelFile,
    node: &Node,
    quant: Quant,
    opts: &PlanOptions,
    workers: &Workers,
) -> Result<(QConv2d, LayerKernel), ModelError> {
    let name = node.name.as_str();
    let Op::ShiftConv2d { conv, shift, .. } = &node.op else {
        return Err(internal("build_qconv on a node that is not a shift conv"));
    };
    let (c, h, w) = chw(&node.input_shapes[0])?;
    let (packed, scale, bias, _) =
        shift_parts(file, name, shift, conv.out_channels, conv.k(), Isa::Scalar)?;
    let g = geom(conv);
    let cands = opts.policy.candidates(packed.code(), packed.bits());
    if cands.is_empty() {
        return Err(invalid(format!(
            "node '{name}': no allowed kernel (SHIFTSERVE_KERNEL={}) can run {}-bit {} weights",
            opts.policy.setting(),
            packed.bits(),
            packed.code().name()
        )));
    }
    let make =
        |k: ConvKernel| QConv2d::new(g, &packed, &scale, &bias, quant, k).map_err(kerr(name));
    if cands.len() == 1 {
        let layer = make(cands[0])?;
        return Ok((
            layer,
            LayerKernel {
                node: name.to_string(),
                kernel: cands[0].name().to_string(),
                measured: Vec::new(),
            },
        ));
    }
    // Clip the height so one sample has about TUNE_PIXELS output pixels.
    let (_, ow) = g.out_hw(h, w).map_err(kerr(name))?;
    let rows = TUNE_PIXELS.div_ceil(ow.max(1)).max(1);
    let h_eff = h
        .min((rows - 1) * g.stride.0 + g.kh.saturating_sub(2 * g.pad.0).max(1))
        .max(1);
    let (oh_eff, _) = g.out_hw(h_eff, w).map_err(kerr(name))?;
    let mut best: Option<(f64, QConv2d)> = None;
    let mut measured = Vec::new();
    for k in cands {
        let layer = make(k)?;
        let mut total = 0.0;
        for &n in &opts.batch_sizes {
            let n = n.max(1);
            let key = TuneKey {
                in_c: c,
                out_c: g.out_c,
                kh: g.kh,
                kw: g.kw,
                stride: g.stride,
                pad: g.pad,
                h: h_eff,
                w,
                batch: n,
                threads: workers.threads(),
                kernel: k,
            };
            let xl = U8Layout::new(h_eff, w, c, g.pad.0.max(g.pad.1));
            let x: Vec<u8> = (0..n * xl.sample_len())
                .map(|i| (i * 131 % 251) as u8)
                .collect();
            let ol = U8Layout::new(oh_eff, ow, g.out_c, 1);
            let mut out = vec![0u8; n * ol.sample_len()];
            let mut scratch = QScratch::new();
            let mut run = || {
                let targets = [U8Target::new(&mut out, ol, quant)];
                layer.forward(
                    &x,
                    xl,
                    n,
                    None,
                    true,
                    QOutputs {
                        u8s: &targets,
                        f32_nhwc: None,
                        f32_nchw: None,
                    },
                    &mut scratch,
                    workers,
                )
            };
            // A kernel that fails here is an error of the model, not a slow kernel.
            run().map_err(kerr(name))?;
            total += kernels::timed(key, || {
                let mut timed_run = || {
                    let _ = run();
                };
                let t = kernels::min_time(3, &mut timed_run);
                // Short layers: more repetitions for a steadier minimum.
                if t < 2e-4 {
                    kernels::min_time(15, &mut timed_run)
                } else {
                    t
                }
            });
        }
        measured.push((k.name().to_string(), total));
        if best.as_ref().is_none_or(|(t, _)| total < *t) {
            best = Some((total, layer));
        }
    }
    let (_, layer) = best.expect("at least one candidate");
    Ok((
        LayerKernel {
            node: name.to_string(),
            kernel: layer.kernel().name().to_string(),
            measured,
        },
        layer,
    ))
    .map(|(i, l)| (l, i))
}

fn plain_kernel_name(op: &Op, isa: Isa, kind: &Kind) -> String {
    match (op, kind) {
        (Op::Conv2d { .. }, Kind::Conv { direct, .. }) => {
            if *direct {
                format!("fp32-direct ({})", isa.name())
            } else {
                "fp32-gemm".to_string()
            }
        }
        (Op::ShiftConv2d { shift, .. }, _) | (Op::ShiftLinear { shift, .. }, _) => {
            let path = match shift.path {
                PathSpec::Int8 { .. } => "int8 path",
                PathSpec::Float => "float path",
            };
            let what = if matches!(op, Op::ShiftLinear { .. }) {
                "linear"
            } else {
                "conv"
            };
            format!("shift-{} ({what}, {path})", isa.name())
        }
        (Op::Linear { .. }, _) => "fp32-gemm".to_string(),
        (Op::MaxPool2d(_), Kind::MaxPool { nhwc: true, .. }) => "maxpool2d (NHWC)".to_string(),
        (Op::Lstm { .. }, _) => "fp32-lstm".to_string(),
        (Op::LstmTt { .. }, _) => "fp32-lstm-tt".to_string(),
        (op, _) => op.name().to_string(),
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
                direct: false,
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
        Op::MaxPool2d(p) => Kind::MaxPool {
            attrs: *p,
            nhwc: false,
        },
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
/// workspaces, LSTM scratch and the session's worker threads. Built once; `run` allocates
/// nothing after the first call (observing intermediate values may allocate).
pub struct Runner {
    plan: Arc<Plan>,
    max_batch: usize,
    threads: usize,
    bufs: Vec<Vec<f32>>,
    u8s: Vec<Vec<u8>>,
    nhwc: Vec<Vec<f32>>,
    observe_buf: Vec<f32>,
    targets: Vec<U8Target>,
    padded: Vec<f32>,
    ws: Workspace,
    lstm: LstmScratch,
    workers: Workers,
    qscratch: QScratch,
    fused: kernels::FusedScratch,
}

/// A callback that sees every node's NCHW output.
type Observer<'a> = &'a mut dyn FnMut(&str, &[f32]);

/// The three kinds of buffers of a runner, borrowed together.
struct Mem<'a> {
    bufs: &'a mut [Vec<f32>],
    u8s: &'a mut [Vec<u8>],
    nhwc: &'a mut [Vec<f32>],
}

impl Runner {
    pub fn new(plan: Arc<Plan>, max_batch: usize, threads: usize) -> Runner {
        let bufs = plan
            .slot_len
            .iter()
            .map(|&n| vec![0f32; n * max_batch])
            .collect();
        // Borders (and channel padding) hold the zero point for good: producers write only the
        // interior.
        let u8s = plan
            .u8_bufs
            .iter()
            .map(|(l, zp)| vec![*zp; l.sample_len() * max_batch])
            .collect();
        let nhwc = plan
            .nhwc_bufs
            .iter()
            .map(|l| vec![0f32; l.sample_len() * max_batch])
            .collect();
        let mut lstm = LstmScratch::default();
        let mut most_targets = 0;
        let mut padded = 0;
        for s in &plan.steps {
            match &s.kind {
                Kind::Lstm(cell) => cell.reserve(&mut lstm, max_batch),
                Kind::QConv(q) => most_targets = most_targets.max(q.u8_outs.len()),
                Kind::Conv {
                    layer,
                    direct: true,
                    ..
                } => {
                    let g = layer.geom();
                    let (_, h, w) = (s.in_shape[0], s.in_shape[1], s.in_shape[2]);
                    padded = padded.max(g.in_c * (h + 2 * g.pad.0) * (w + 2 * g.pad.1));
                }
                _ => {}
            }
        }
        let mut fused = kernels::FusedScratch::default();
        if let Some(f) = plan.fused_stem {
            let s = &plan.steps[f.conv];
            if let Kind::Conv { layer, .. } = &s.kind {
                // Geometry was checked when the plan was built; a failure here only means the
                // scratch grows on the first run.
                let _ = fused.reserve(layer, s.in_shape[1], s.in_shape[2], f.pool, threads);
            }
        }
        Runner {
            plan,
            max_batch,
            threads,
            bufs,
            u8s,
            nhwc,
            observe_buf: Vec::new(),
            targets: Vec::with_capacity(most_targets),
            padded: vec![0f32; padded * max_batch],
            ws: Workspace::new(),
            lstm,
            workers: Workers::new(threads),
            qscratch: QScratch::new(),
            fused,
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
        self.run_inner(batch, None, None)
    }

    /// As [`Runner::run`], adding each step's wall time (seconds) to `times[step]` (resized to
    /// [`Plan::steps_info`]'s length).
    pub fn run_timed(
        &mut self,
        batch: &[&[f32]],
        times: &mut Vec<f64>,
    ) -> Result<&[f32], ModelError> {
        times.resize(self.plan.steps.len(), 0.0);
        self.run_inner(batch, None, Some(times))
    }

    /// As [`Runner::run`], calling `observe(node name, [batch, ...] NCHW output)` after every
    /// node (flatten nodes are aliases and are not reported).
    pub fn run_observed(
        &mut self,
        batch: &[&[f32]],
        observe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<&[f32], ModelError> {
        self.run_inner(batch, Some(observe), None)
    }

    fn run_inner(
        &mut self,
        batch: &[&[f32]],
        observe: Option<Observer<'_>>,
        mut times: Option<&mut Vec<f64>>,
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
        // On a batch, the sample-major prefix takes each sample through its steps in turn;
        // observers see every step over the whole batch.
        let prefix = if observe.is_none() && b > 1 {
            plan.sample_major
        } else {
            0
        };
        if prefix > 0 {
            for s in 0..b {
                self.run_steps(0..prefix, s, 1, None, times.as_deref_mut())?;
            }
        }
        self.run_steps(prefix..plan.steps.len(), 0, b, observe, times)?;
        Ok(&self.bufs[plan.output_slot][..b * plan.classes])
    }

    /// Runs steps `steps` on samples `s0..s0 + n`. The fused stem stands for three steps (its
    /// time is the first one's) unless observing: observers see every node's own output. Only
    /// the fused stem and quantized convolutions run on a part of the batch (`s0 > 0`).
    fn run_steps(
        &mut self,
        steps: std::ops::Range<usize>,
        s0: usize,
        n: usize,
        mut observe: Option<Observer<'_>>,
        mut times: Option<&mut Vec<f64>>,
    ) -> Result<(), ModelError> {
        let plan = Arc::clone(&self.plan);
        let mut si = steps.start;
        while si < steps.end {
            let step = &plan.steps[si];
            let t0 = times.as_ref().map(|_| std::time::Instant::now());
            let fused = plan
                .fused_stem
                .filter(|f| f.conv == si && observe.is_none());
            match (fused, &step.kind) {
                (Some(f), _) => self.fused_stem(step, f, s0, n)?,
                (None, Kind::QConv(q)) => self.qconv(step, q, s0, n, None)?,
                (None, _) if s0 == 0 => self.step(step, n)?,
                _ => return Err(internal("plan: only convolutions run on part of a batch")),
            }
            if let (Some(t), Some(t0)) = (times.as_mut(), t0) {
                t[si] += t0.elapsed().as_secs_f64();
            }
            if let Some(obs) = observe.as_mut() {
                if step.node {
                    let len = n * step.out_len();
                    let data = self.nchw_view(step, n)?;
                    obs(&step.name, &data[..len]);
                }
            }
            si += if fused.is_some() { 3 } else { 1 };
        }
        Ok(())
    }

    /// A node's output as NCHW `f32` (converted into a scratch buffer when the step wrote
    /// another form).
    fn nchw_view(&mut self, step: &Step, n: usize) -> Result<&[f32], ModelError> {
        let len = n * step.out_len();
        let nchw = match &step.kind {
            Kind::QConv(q) => q.nchw_out.map(Buf::Slot),
            _ => matches!(step.output, Buf::Slot(_)).then_some(step.output),
        };
        if let Some(Buf::Slot(s)) = nchw {
            return Ok(&self.bufs[s][..len]);
        }
        if self.observe_buf.len() < len {
            self.observe_buf.resize(len, 0.0);
        }
        let e = run_err(&step.name);
        let from = match &step.kind {
            Kind::QConv(q) => q.nhwc_out.map(Buf::Nhwc),
            _ => Some(step.output),
        };
        match from {
            Some(Buf::Nhwc(k)) => {
                let l = self.plan.nhwc_bufs[k];
                nhwc_to_nchw(
                    &self.nhwc[k][..n * l.sample_len()],
                    n,
                    l,
                    &mut self.observe_buf[..len],
                )
                .map_err(e)?;
            }
            _ => {
                // Only u8 forms were written: recompute this step with an NCHW output.
                if let Kind::QConv(q) = &step.kind {
                    let mut out = std::mem::take(&mut self.observe_buf);
                    let r = self.qconv(step, q, 0, n, Some(&mut out[..len]));
                    self.observe_buf = out;
                    r?;
                }
            }
        }
        Ok(&self.observe_buf[..len])
    }

    /// Runs the fused stem (the conv step and the two after it) on samples `s0..s0 + n`.
    fn fused_stem(
        &mut self,
        step: &Step,
        f: FusedStem,
        s0: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        let Kind::Conv { layer, relu, .. } = &step.kind else {
            return Err(internal("plan: the fused stem is not a conv"));
        };
        let Buf::Slot(x) = step.inputs[0] else {
            return Err(internal("plan: the fused stem reads an NCHW slot"));
        };
        let (c, h, w) = (step.in_shape[0], step.in_shape[1], step.in_shape[2]);
        let l = self.plan.u8_bufs[f.out].0;
        let fl = self.plan.nhwc_bufs[f.pooled];
        let isa = self.plan.isa;
        layer
            .forward_nhwc_pool_u8(
                &self.bufs[x][s0 * c * h * w..(s0 + n) * c * h * w],
                n,
                h,
                w,
                *relu,
                f.pool,
                f.quant,
                &mut self.nhwc[f.pooled][s0 * fl.sample_len()..(s0 + n) * fl.sample_len()],
                fl,
                &mut self.u8s[f.out][s0 * l.sample_len()..(s0 + n) * l.sample_len()],
                l,
                &mut self.padded,
                &mut self.fused,
                &self.workers,
                isa,
            )
            .map_err(run_err(&step.name))
    }

    fn step(&mut self, step: &Step, n: usize) -> Result<(), ModelError> {
        if let Kind::QConv(q) = &step.kind {
            return self.qconv(step, q, 0, n, None);
        }
        let plan = &*self.plan;
        let e = run_err(&step.name);
        let threads = self.threads;
        // The output buffer is taken out of its vector for the call (no copy, no allocation) so
        // the inputs can be borrowed at the same time.
        let mut mem = Mem {
            bufs: &mut self.bufs,
            u8s: &mut self.u8s,
            nhwc: &mut self.nhwc,
        };
        let mut out = Taken::take(&mut mem, step.output);
        let workers = &self.workers;
        // Layers that split work by a thread count run their parts on this session's workers.
        let result = workers.install(|| -> Result<(), ModelError> {
            let in_len: usize = step.in_shape.iter().product();
            let slot = |b: Buf, len: usize| -> Result<&[f32], ModelError> {
                match b {
                    Buf::Slot(s) => Ok(&mem.bufs[s][..len]),
                    _ => Err(internal("plan: expected an NCHW input")),
                }
            };
            let hw = |s: &Vec<usize>| (s[0], s[1], s[2]);
            let ep = |residual, relu: bool| Epilogue { residual, relu };
            let out_len = n * step.out_len();
            match (&step.kind, &mut out) {
                (Kind::Convert { quant }, out) => {
                    let (c, h, w) = hw(&step.in_shape);
                    let (from, to) = (step.inputs[0], step.output);
                    match (from, to, out, quant) {
                        (Buf::Slot(s), Buf::U8(k), Taken::U8(o), Some(q)) => {
                            let l = plan.u8_bufs[k].0;
                            quantize_nchw_to_u8(
                                &mem.bufs[s][..n * c * h * w],
                                n,
                                l,
                                *q,
                                &mut o[..n * l.sample_len()],
                            )
                            .map_err(e)?
                        }
                        (Buf::Nhwc(s), Buf::U8(k), Taken::U8(o), Some(q)) => {
                            let (xl, l) = (plan.nhwc_bufs[s], plan.u8_bufs[k].0);
                            quantize_nhwc_to_u8(
                                &mem.nhwc[s][..n * xl.sample_len()],
                                n,
                                xl,
                                l,
                                *q,
                                &mut o[..n * l.sample_len()],
                            )
                            .map_err(e)?
                        }
                        (Buf::Slot(s), Buf::Nhwc(k), Taken::F32(o), None) => {
                            let l = plan.nhwc_bufs[k];
                            nchw_to_nhwc(
                                &mem.bufs[s][..n * c * h * w],
                                n,
                                l,
                                &mut o[..n * l.sample_len()],
                            )
                            .map_err(e)?
                        }
                        (Buf::Nhwc(s), Buf::Slot(_), Taken::F32(o), None) => {
                            let l = plan.nhwc_bufs[s];
                            nhwc_to_nchw(
                                &mem.nhwc[s][..n * l.sample_len()],
                                n,
                                l,
                                &mut o[..n * c * h * w],
                            )
                            .map_err(e)?
                        }
                        _ => return Err(internal("plan: unsupported conversion")),
                    }
                }
                (
                    Kind::Conv {
                        layer,
                        relu,
                        direct,
                    },
                    Taken::F32(o),
                ) => {
                    let (_, h, w) = hw(&step.in_shape);
                    let x = slot(step.inputs[0], n * in_len)?;
                    if *direct {
                        let Buf::Nhwc(k) = step.output else {
                            return Err(internal("plan: direct conv writes NHWC"));
                        };
                        let l = plan.nhwc_bufs[k];
                        layer
                            .forward_nhwc(
                                x,
                                n,
                                h,
                                w,
                                *relu,
                                &mut o[..n * l.sample_len()],
                                l,
                                &mut self.padded,
                                &self.workers,
                                plan.isa,
                            )
                            .map_err(e)?;
                    } else {
                        layer
                            .forward(
                                x,
                                n,
                                h,
                                w,
                                ep(None, *relu),
                                &mut o[..out_len],
                                &mut self.ws,
                                threads,
                            )
                            .map_err(e)?;
                    }
                }
                (Kind::MaxPool { attrs, nhwc: true }, Taken::F32(o)) => {
                    let (Buf::Nhwc(a), Buf::Nhwc(b)) = (step.inputs[0], step.output) else {
                        return Err(internal("plan: NHWC max pool buffers"));
                    };
                    let (xl, ol) = (plan.nhwc_bufs[a], plan.nhwc_bufs[b]);
                    kernels::max_pool2d_nhwc(
                        &mem.nhwc[a][..n * xl.sample_len()],
                        n,
                        xl,
                        pool(attrs),
                        &mut o[..n * ol.sample_len()],
                        ol,
                        &self.workers,
                    )
                    .map_err(e)?;
                }
                (kind, Taken::F32(o)) => {
                    let o = &mut o[..out_len];
                    let x = slot(step.inputs[0], n * in_len)?;
                    let second = match step.inputs.get(1) {
                        Some(&b) => Some(slot(b, out_len)?),
                        None => None,
                    };
                    match kind {
                        Kind::ShiftConv {
                            layer,
                            relu,
                            residual,
                        } => {
                            let (_, h, w) = hw(&step.in_shape);
                            let r = if *residual { second } else { None };
                            layer
                                .forward(x, n, h, w, ep(r, *relu), o, &mut self.ws, threads)
                                .map_err(e)?;
                        }
                        Kind::Linear { layer, relu } => {
                            layer
                                .forward(x, n, ep(None, *relu), o, &mut self.ws, threads)
                                .map_err(e)?;
                        }
                        Kind::ShiftLinear { layer, relu } => {
                            layer
                                .forward(x, n, ep(None, *relu), o, &mut self.ws, threads)
                                .map_err(e)?;
                        }
                        Kind::MaxPool { attrs, .. } => {
                            let (c, h, w) = hw(&step.in_shape);
                            kernels::max_pool2d(x, n, c, h, w, pool(attrs), o).map_err(e)?;
                        }
                        Kind::AvgPool(p) => {
                            let (c, h, w) = hw(&step.in_shape);
                            kernels::avg_pool2d(x, n, c, h, w, pool(p), o).map_err(e)?;
                        }
                        Kind::GlobalAvgPool => {
                            let (c, h, w) = hw(&step.in_shape);
                            kernels::global_avg_pool(x, n, c, h * w, o).map_err(e)?;
                        }
                        Kind::Add { relu } => {
                            let y =
                                second.ok_or_else(|| internal("add without a second operand"))?;
                            for ((o, a), b) in o.iter_mut().zip(x).zip(y) {
                                let s = a + b;
                                *o = if *relu { s.max(0.0) } else { s };
                            }
                        }
                        Kind::Relu => {
                            for (o, a) in o.iter_mut().zip(x) {
                                *o = a.max(0.0);
                            }
                        }
                        Kind::Lstm(cell) => {
                            cell.forward(x, n, o, &mut self.lstm, threads).map_err(e)?
                        }
                        _ => return Err(internal("plan: step and output buffer do not match")),
                    }
                }
                _ => return Err(internal("plan: step and output buffer do not match")),
            }
            Ok(())
        });
        out.put_back(
            &mut Mem {
                bufs: &mut self.bufs,
                u8s: &mut self.u8s,
                nhwc: &mut self.nhwc,
            },
            step.output,
        );
        result
    }

    /// Runs a quantized step on samples `s0..s0 + n`; `extra_nchw` receives an NCHW copy when
    /// observing (only with `s0 == 0`).
    fn qconv(
        &mut self,
        step: &Step,
        q: &QStep,
        s0: usize,
        n: usize,
        extra_nchw: Option<&mut [f32]>,
    ) -> Result<(), ModelError> {
        // Samples s0..s0+n of a buffer whose samples are `len` elements apart.
        let part = |len: usize| s0 * len..(s0 + n) * len;
        if s0 > 0 && (extra_nchw.is_some() || q.nchw_out.is_some()) {
            return Err(internal(
                "plan: an NCHW output is written for the whole batch",
            ));
        }
        let plan = &*self.plan;
        let Buf::U8(input) = step.inputs[0] else {
            return Err(internal("plan: quantized step without a u8 input"));
        };
        let xl = plan.u8_bufs[input].0;
        let mut u8_taken: [Vec<u8>; 4] = Default::default();
        if q.u8_outs.len() > u8_taken.len() {
            return Err(internal(format!(
                "node '{}': more than {} quantized consumers",
                step.name,
                u8_taken.len()
            )));
        }
        for (i, &(b, _)) in q.u8_outs.iter().enumerate() {
            u8_taken[i] = std::mem::take(&mut self.u8s[b]);
        }
        let mut nhwc_taken = q.nhwc_out.map(|b| std::mem::take(&mut self.nhwc[b]));
        let mut nchw_taken = q.nchw_out.map(|b| std::mem::take(&mut self.bufs[b]));
        self.targets.clear();
        for (i, &(b, quant)) in q.u8_outs.iter().enumerate() {
            let l = plan.u8_bufs[b].0;
            self.targets.push(U8Target::new(
                &mut u8_taken[i][part(l.sample_len())],
                l,
                quant,
            ));
        }
        let x = &self.u8s[input][part(xl.sample_len())];
        let residual = match step.inputs.get(1) {
            Some(&Buf::Nhwc(r)) => {
                let l = plan.nhwc_bufs[r];
                Some((&self.nhwc[r][part(l.sample_len())], l))
            }
            _ => None,
        };
        let f32_nhwc = match (&mut nhwc_taken, q.nhwc_out) {
            (Some(v), Some(b)) => {
                let l = plan.nhwc_bufs[b];
                Some((&mut v[part(l.sample_len())], l))
            }
            _ => None,
        };
        let out_len = n * step.out_len();
        let f32_nchw = match (extra_nchw, &mut nchw_taken) {
            (Some(o), _) => Some(o),
            (None, Some(v)) => Some(&mut v[..out_len]),
            (None, None) => None,
        };
        let result = q
            .layer
            .forward(
                x,
                xl,
                n,
                residual,
                q.relu,
                QOutputs {
                    u8s: &self.targets,
                    f32_nhwc,
                    f32_nchw,
                },
                &mut self.qscratch,
                &self.workers,
            )
            .map(|_| ())
            .map_err(run_err(&step.name));
        self.targets.clear();
        for (i, &(b, _)) in q.u8_outs.iter().enumerate() {
            self.u8s[b] = std::mem::take(&mut u8_taken[i]);
        }
        if let (Some(v), Some(b)) = (nhwc_taken, q.nhwc_out) {
            self.nhwc[b] = v;
        }
        if let (Some(v), Some(b)) = (nchw_taken, q.nchw_out) {
            self.bufs[b] = v;
        }
        result
    }
}

/// An output buffer taken out of the runner for one step.
enum Taken {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl Taken {
    fn take(mem: &mut Mem<'_>, b: Buf) -> Taken {
        match b {
            Buf::Slot(i) => Taken::F32(std::mem::take(&mut mem.bufs[i])),
            Buf::Nhwc(i) => Taken::F32(std::mem::take(&mut mem.nhwc[i])),
            Buf::U8(i) => Taken::U8(std::mem::take(&mut mem.u8s[i])),
        }
    }
    fn put_back(self, mem: &mut Mem<'_>, b: Buf) {
        match (self, b) {
            (Taken::F32(v), Buf::Slot(i)) => mem.bufs[i] = v,
            (Taken::F32(v), Buf::Nhwc(i)) => mem.nhwc[i] = v,
            (Taken::U8(v), Buf::U8(i)) => mem.u8s[i] = v,
            _ => unreachable!("a taken buffer goes back where it came from"),
        }
    }
}
