//! The executor: a [`Plan`] resolves a graph, its stored weights and its quantization
//! plan into a list of kernel calls once; [`Plan::run`] then executes them over a
//! reusable [`Workspace`].
//!
//! Values are either f32 or u8 with quantization parameters. Integer nodes (listed in
//! the [`QuantPlan`]) take u8 input and produce u8 (requantized, with a following ReLU
//! fused) or f32 when their output has no calibrated parameters (logits). Conversions
//! are inserted where a consumer needs the other representation; Flatten is free.

use std::collections::{BTreeMap, HashMap};

use super::int8::{self, DynamicLinear, QuantizedConv2d, QuantizedLinear};
use super::intops;
use super::recurrent;
use super::transformer::{self as tf, Heads, Patches, ValidLengths};
use super::kernels::{conv2d_forward, conv_chunk, maxpool, sgemm, sgemm_threads, softmax_rows, DirectConv, MatRef, Window};
use super::sparse::{CodebookF32, CsrF32};
use crate::spec::{Graph, Nonlinearity, Op, PoolKind, QParams, QuantPlan, Recurrent, SpecError, ATTENTION_PROJECTIONS, INPUT, RECURRENT_PARAMS};

/// Why a stored model cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid architecture: {0}")]
    Spec(#[from] SpecError),
    #[error("tensor '{name}' is missing")]
    MissingTensor { name: String },
    #[error("tensor '{name}' has {got} values, the architecture needs {expected}")]
    TensorSize { name: String, expected: usize, got: usize },
    #[error("node '{node}' runs on integers but value '{value}' has no calibrated quantization")]
    MissingQParams { node: String, value: String },
    #[error("node '{node}' is listed as integer but its weight is not stored as int8")]
    NotInt8 { node: String },
    #[error("node '{node}' is listed as dynamically quantized: only Linear and SelfAttention nodes with int8 weights can be")]
    NotDynamic { node: String },
    #[error("node '{node}': token id {id} is not an integer in 0..{vocab} (the model's vocabulary); check the tokenizer matches the model")]
    TokenId { node: String, id: f32, vocab: usize },
    #[error("node '{node}' ({op}) cannot run on integers: only Linear, Conv2d and SelfAttention nodes can (its weights may still be stored int8)")]
    IntegerUnsupported { node: String, op: &'static str },
    #[error("input has {got} values, expected a multiple of {per_sample} (shape {shape:?})")]
    InputShape { got: usize, per_sample: usize, shape: Vec<usize> },
}

/// A weight as the runtime receives it (dense; sparse encodings are expanded by the reader).
#[derive(Clone, Debug, PartialEq)]
pub enum Weights {
    F32(Vec<f32>),
    /// Symmetric int8 per output channel: `real = scales[row] * q`.
    I8 { q: Vec<i8>, scales: Vec<f32> },
}

impl Weights {
    fn len(&self) -> usize {
        match self {
            Weights::F32(v) => v.len(),
            Weights::I8 { q, .. } => q.len(),
        }
    }

    /// Dequantized dense values, moving f32 values instead of copying them (a plan
    /// built from a stored model then holds its weights once, not twice).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            Weights::F32(v) => v,
            q => q.to_f32(),
        }
    }

    /// Dequantized dense values.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Weights::F32(v) => v.clone(),
            Weights::I8 { q, scales } => {
                let row = q.len() / scales.len().max(1);
                q.iter().enumerate().map(|(i, &v)| scales[i / row.max(1)] * v as f32).collect()
            }
        }
    }
}

/// What a weight's stored encoding allows besides its dense values (from the reader):
/// the kernels that may run it without expanding it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoding {
    /// Stored sparse (positions and kept values).
    pub sparse: bool,
    /// Stored as indices into shared values.
    pub codebook: Option<CodebookIndices>,
}

/// A weight-shared tensor as stored: one index per weight into `centroids`; `kept`
/// marks the stored positions when the tensor is also sparse (the rest are zero).
#[derive(Clone, Debug, PartialEq)]
pub struct CodebookIndices {
    pub indices: Vec<u16>,
    pub centroids: Vec<f32>,
    pub kept: Option<Vec<bool>>,
}

/// Rows per block of a fused integer chain ([`IntChain`]): a multiple of the int8
/// kernel's 6-row tile whose u8 rows, widened copies and accumulators stay in L2 next
/// to the weights, while the caller's f32 input streams through once.
const CHAIN_ROWS: usize = 48;

/// The plan's first steps when they are `Quantize(input)` (optionally after a
/// `Normalize(input)`, as every zoo model starts) followed by integer Linear layers each
/// reading only the previous one's output (e.g. a whole int8 MLP): they run
/// block by block of [`CHAIN_ROWS`] samples, every layer on a block before the next
/// block is quantized, so the intermediate values never leave the cache. Rows are
/// independent and the integer arithmetic exact, so the results are the same bits as
/// running the steps one after another over the whole batch.
#[derive(Clone, Copy, Debug)]
struct IntChain {
    /// Steps covered (the Normalize and Quantize steps and the Linear steps after them).
    steps: usize,
    /// The chain starts with Normalize (then Quantize is its second step).
    normalize: bool,
}

/// Batches at which candidate kernels are timed when a plan is built; a winner at
/// `TIMED_BATCHES[i]` runs batches up to (not including) `TIMED_BATCHES[i + 1]`.
const TIMED_BATCHES: [usize; 3] = [1, 16, 256];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Repr {
    F32,
    U8(QParams),
}

#[derive(Clone)]
enum Kernel {
    LinearF32 { w: Vec<f32>, b: Option<Vec<f32>>, inf: usize, outf: usize },
    /// `direct` where the direct kernel applies (stride 1, AVX2/FMA), else im2col.
    ConvF32 { w: Vec<f32>, b: Option<Vec<f32>>, g: Window, oc: usize, direct: Option<Box<DirectConv>> },
    LinearI8(Box<QuantizedLinear>),
    /// int8 weights with the f32 input quantized per row at run time (f32 in and out).
    LinearDynamic(Box<DynamicLinear>),
    /// A pruned f32 layer on its non-zero weights.
    LinearCsr { csr: CsrF32, b: Option<Vec<f32>> },
    /// A weight-shared f32 layer from its indices and table.
    LinearCodebook { cb: CodebookF32, b: Option<Vec<f32>> },
    /// Different kernels by batch size: the first whose bound exceeds the batch runs
    /// (measured at plan build, see [`TIMED_BATCHES`]).
    ByBatch(Vec<(usize, Kernel)>),
    ConvI8(Box<QuantizedConv2d>),
    MaxPool(Window),
    AvgPool(Window),
    Sigmoid,
    Tanh,
    Relu,
    ReluU8(u8),
    Add,
    Softmax,
    Normalize { mean: Vec<f32>, std: Vec<f32> },
    Quantize(QParams),
    Dequantize(QParams),
    Recurrent(Box<RecurrentKernel>),
    /// An LSTM/GRU node on integer products (u8 input sequence, f32 output).
    RecurrentI8 { cell: Box<recurrent::QuantizedRecurrent>, steps: usize },
    /// Token ids → table rows; with a pad token, sets the batch's valid lengths.
    Embedding { node: String, table: Vec<f32>, vocab: usize, dim: usize, pad: Option<usize> },
    AddPositions { table: Vec<f32>, seq: usize, dim: usize },
    PrependCls { row: Vec<f32>, seq: usize, dim: usize },
    PatchEmbed { geo: Patches, w: Vec<f32>, b: Vec<f32>, dim: usize },
    LayerNorm { gamma: Vec<f32>, beta: Vec<f32>, dim: usize, eps: f32 },
    /// LayerNorm on integers ([`intops::IntLayerNorm`]; f32 in and out).
    LayerNormInt(Box<intops::IntLayerNorm>),
    Gelu,
    /// i-GELU on integers ([`intops::IntGelu`]; f32 in and out).
    GeluInt(intops::IntGelu),
    Attention(Box<AttentionKernel>),
    Pool { seq: usize, dim: usize, mean: bool },
}

impl Kernel {
    /// What a profile calls this step.
    fn kind(&self) -> &'static str {
        match self {
            Kernel::LinearF32 { .. } => "linear f32",
            Kernel::ConvF32 { .. } => "conv f32",
            Kernel::LinearI8(_) => "linear int8",
            Kernel::LinearDynamic(_) => "linear dynamic int8",
            Kernel::LinearCsr { .. } => "linear sparse",
            Kernel::LinearCodebook { .. } => "linear codebook",
            Kernel::ByBatch(_) => "by batch",
            Kernel::ConvI8(_) => "conv int8",
            Kernel::MaxPool(_) => "max pool",
            Kernel::AvgPool(_) => "avg pool",
            Kernel::Sigmoid => "sigmoid",
            Kernel::Tanh => "tanh",
            Kernel::Relu | Kernel::ReluU8(_) => "relu",
            Kernel::Add => "add",
            Kernel::Softmax => "softmax",
            Kernel::Normalize { .. } => "normalize",
            Kernel::Quantize(_) => "quantize",
            Kernel::Dequantize(_) => "dequantize",
            Kernel::Recurrent(_) => "recurrent f32",
            Kernel::RecurrentI8 { .. } => "recurrent int8",
            Kernel::Embedding { .. } => "embedding",
            Kernel::AddPositions { .. } => "positions",
            Kernel::PrependCls { .. } => "cls token",
            Kernel::PatchEmbed { .. } => "patch embedding",
            Kernel::LayerNorm { .. } => "layer norm",
            Kernel::LayerNormInt(_) => "layer norm integer",
            Kernel::Gelu => "gelu",
            Kernel::GeluInt(_) => "gelu integer",
            Kernel::Attention(_) => "attention",
            Kernel::Pool { .. } => "pool",
        }
    }
}

/// A self-attention node: the query, key and value projections fused into one
/// `[3·dim, dim]` product, the output projection, f32 or int8 each.
#[derive(Clone)]
struct AttentionKernel {
    geo: Heads,
    qkv: Projection,
    output: Projection,
    /// The context value's name, `<node>.context`, as calibration observes it.
    context: String,
    /// Scores, softmax and context on integers ([`intops::attend_integer`]).
    integer_softmax: bool,
}

#[derive(Clone)]
enum Projection {
    F32 { w: Vec<f32>, b: Vec<f32> },
    /// u8 input at `input`, f32 output.
    I8 { layer: Box<QuantizedLinear>, input: QParams },
    /// f32 input quantized per row at run time, f32 output.
    Dynamic(Box<DynamicLinear>),
}

impl Projection {
    fn kind(&self) -> &'static str {
        match self {
            Projection::F32 { .. } => "attention projection f32",
            Projection::I8 { .. } => "attention projection int8",
            Projection::Dynamic(_) => "attention projection dynamic int8",
        }
    }

    /// `y [rows, out] = x [rows, in] · Wᵀ + b`; an int8 projection quantizes `x` first.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        xq: Option<&[u8]>,
        rows: usize,
        inf: usize,
        outf: usize,
        y: &mut [f32],
        qbuf: &mut Vec<u8>,
        acc: &mut Vec<i32>,
        dynamic: &mut int8::DynamicScratch,
        threads: usize,
    ) {
        match self {
            Projection::Dynamic(layer) => layer.forward(&x[..rows * inf], rows, &mut y[..rows * outf], dynamic, threads),
            Projection::F32 { w, b } => {
                sgemm_threads(rows, outf, inf, MatRef::rows(x, inf), MatRef::transposed(w, inf), y, outf, false, threads);
                for row in y[..rows * outf].chunks_exact_mut(outf) {
                    row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                }
            }
            Projection::I8 { layer, input } => {
                let xq = match xq {
                    Some(q) => q,
                    None => {
                        if qbuf.len() < rows * inf {
                            qbuf.resize(rows * inf, 0);
                        }
                        int8::quantize_u8(&x[..rows * inf], *input, &mut qbuf[..rows * inf]);
                        &qbuf[..rows * inf]
                    }
                };
                layer.forward_f32_threads(&xq[..rows * inf], rows, &mut y[..rows * outf], acc, threads);
            }
        }
    }
}

/// Buffers of the attention kernels.
#[derive(Default)]
struct AttentionScratch {
    qkv: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    ctx_q: Vec<u8>,
}

/// An LSTM/GRU node with its dense f32 weights.
#[derive(Clone)]
struct RecurrentKernel {
    geo: Recurrent,
    steps: usize,
    /// Per direction (forward, then reverse for a bidirectional node): `weight_ih`,
    /// `weight_hh`, `bias_ih`, `bias_hh`.
    dirs: Vec<(Vec<f32>, Vec<f32>, Option<Vec<f32>>, Option<Vec<f32>>)>,
}

struct Step {
    kernel: Kernel,
    inputs: Vec<usize>,
    out: usize,
}

struct Slot {
    repr: Repr,
    len: usize,
    /// The graph values this slot holds (several when Flatten aliases it).
    names: Vec<String>,
}

/// A graph resolved into kernel calls.
pub struct Plan {
    steps: Vec<Step>,
    slots: Vec<Slot>,
    outputs: Vec<usize>,
    input_shape: Vec<usize>,
    int_layers: usize,
    /// Of the integer layers, those quantizing their input per row at run time.
    dynamic_layers: usize,
    f32_layers: usize,
    dequantized_at_load: bool,
    /// What the loader expanded to dense f32 (e.g. "sparse, codebook"), said in
    /// [`Plan::kernel_description`] because it means no speed gain from that encoding.
    expanded: Vec<&'static str>,
    /// Per layer that had a choice of kernels: what was measured and chosen.
    choices: Vec<String>,
    /// Only one step reads the input value (so it may read the caller's buffer).
    input_read_once: bool,
    /// The fused integer prefix of the steps, if there is one.
    chain: Option<IntChain>,
    /// The value holding the first output's logits: the input of a final Softmax, else
    /// the output itself.
    logits_name: String,
    /// Linear steps on sequences: rows per sample (a step not listed has one).
    linear_rows: HashMap<usize, usize>,
    /// Threads one [`Plan::run`] may use (see [`Plan::set_threads`]).
    threads: usize,
    /// The nonlinearities this plan runs on integers (named in the kernel description).
    integer_nonlinear: Vec<&'static str>,
}

/// Reusable buffers for [`Plan::run`]; grows to the largest batch seen.
#[derive(Default)]
pub struct Workspace {
    f: Vec<Vec<f32>>,
    q: Vec<Vec<u8>>,
    acc: Vec<i32>,
    col: Vec<f32>,
    tmp: Vec<f32>,
    recurrent: recurrent::Scratch,
    recurrent_quant: recurrent::QuantScratch,
    dynamic: int8::DynamicScratch,
    attention: AttentionScratch,
    attention_int: intops::AttentionIntScratch,
    valid: ValidLengths,
    /// One workspace per share of a batch split across threads.
    parts: Vec<Workspace>,
    /// Buffers of values no later step reads, for the next values to be written.
    free_f: Vec<Vec<f32>>,
    free_q: Vec<Vec<u8>>,
    /// Wall time per kind of step, when profiling (see [`Workspace::start_profile`]).
    profile: Option<BTreeMap<&'static str, (usize, f64)>>,
}

impl Workspace {
    /// From now on, [`Plan::run`] adds each step's wall time to a table by the kind of
    /// step (e.g. "int8 linear", "layer norm"; attention in its three parts).
    pub fn start_profile(&mut self) {
        self.profile = Some(BTreeMap::new());
    }

    /// The table since [`Workspace::start_profile`], slowest first: kind, calls, seconds.
    /// Profiling stops.
    pub fn take_profile(&mut self) -> Vec<(&'static str, usize, f64)> {
        let mut rows: Vec<_> = self.profile.take().unwrap_or_default().into_iter().map(|(k, (c, t))| (k, c, t)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    fn record(&mut self, kind: &'static str, since: Option<std::time::Instant>) {
        if let Some(t) = since {
            self.add_time(kind, 1, t.elapsed().as_secs_f64());
        }
    }

    /// Adds `calls` and `secs` to `kind`'s row of the profile, if profiling.
    fn add_time(&mut self, kind: &'static str, calls: usize, secs: f64) {
        if let Some(p) = self.profile.as_mut() {
            let e = p.entry(kind).or_default();
            e.0 += calls;
            e.1 += secs;
        }
    }
}

/// Threads a plan uses by default: every core for a text Transformer (token ids in;
/// large enough per sample that splitting one layer pays), one otherwise: the
/// classifier measurements (a ViT included) time one thread at batch 1 and split
/// batches among threads themselves (see [`throughput`]).
fn default_threads(graph: &Graph) -> usize {
    if graph.nodes.iter().any(|n| matches!(n.op, Op::Embedding { .. })) && graph.nodes.iter().any(|n| matches!(n.op, Op::SelfAttention { .. })) {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// A LayerNorm or GELU node's kernel: f32, or the integer approximation when the plan
/// lists its kind in `integer_nonlinear`.
fn float_or_integer_nonlinearity(
    op: &Op,
    take: &mut dyn FnMut(&str) -> Result<Weights, RuntimeError>,
    integer_nonlinear: &std::collections::BTreeSet<Nonlinearity>,
) -> Result<Kernel, RuntimeError> {
    Ok(match *op {
        Op::LayerNorm { dim, eps } => {
            let (gamma, beta) = (take("weight")?.into_f32(), take("bias")?.into_f32());
            if integer_nonlinear.contains(&Nonlinearity::LayerNorm) {
                Kernel::LayerNormInt(Box::new(intops::IntLayerNorm::new(&gamma, &beta, eps)))
            } else {
                Kernel::LayerNorm { gamma, beta, dim, eps }
            }
        }
        _ if integer_nonlinear.contains(&Nonlinearity::Gelu) => Kernel::GeluInt(intops::IntGelu::default()),
        _ => Kernel::Gelu,
    })
}

/// The int8 query, key and value weights of an attention node stacked into one fused
/// `[3·inner, dim]` matrix (with their scales and biases), and its output projection's.
#[allow(clippy::type_complexity)]
fn fused_int8_projections<'a>(parts: &'a [(Weights, Vec<f32>)], node: &str) -> Result<(Vec<i8>, Vec<f32>, Vec<f32>, &'a [i8], &'a [f32]), RuntimeError> {
    let (mut wq, mut scales, mut bias) = (Vec::new(), Vec::new(), Vec::new());
    for (w, b) in &parts[..3] {
        let Weights::I8 { q, scales: sc } = w else {
            return Err(RuntimeError::NotInt8 { node: node.to_string() });
        };
        wq.extend_from_slice(q);
        scales.extend_from_slice(sc);
        bias.extend_from_slice(b);
    }
    let Weights::I8 { q: oq, scales: osc } = &parts[3].0 else {
        return Err(RuntimeError::NotInt8 { node: node.to_string() });
    };
    Ok((wq, scales, bias, oq, osc))
}

impl Plan {
    /// Resolves `graph` with `weights` (by parameter name) and the quantization plan.
    pub fn new(graph: &Graph, weights: HashMap<String, Weights>, quant: &QuantPlan) -> Result<Plan, RuntimeError> {
        Plan::with_encodings(graph, weights, quant, &HashMap::new())
    }

    /// As [`Plan::new`], with the stored encodings of weights (by parameter name): a
    /// Linear layer whose weight is stored sparse or as a codebook gets each kernel
    /// that encoding allows timed on its real shape, and the fastest per batch size
    /// runs (said in [`Plan::kernel_description`]). Other layers expand them to dense.
    pub fn with_encodings(
        graph: &Graph,
        mut weights: HashMap<String, Weights>,
        quant: &QuantPlan,
        encodings: &HashMap<String, Encoding>,
    ) -> Result<Plan, RuntimeError> {
        let shapes = graph.validate()?;
        let consumers = graph.consumers();
        let mut plan = Plan {
            steps: Vec::new(),
            slots: Vec::new(),
            outputs: Vec::new(),
            input_shape: graph.input_shape.clone(),
            int_layers: 0,
            dynamic_layers: 0,
            f32_layers: 0,
            dequantized_at_load: false,
            expanded: Vec::new(),
            choices: Vec::new(),
            input_read_once: false,
            chain: None,
            linear_rows: HashMap::new(),
            threads: default_threads(graph),
            integer_nonlinear: Vec::new(),
            logits_name: match graph.node(&graph.outputs[0]) {
                Some(n) if matches!(n.op, Op::Softmax) => n.inputs[0].clone(),
                _ => graph.outputs[0].clone(),
            },
        };
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut converted: HashMap<usize, usize> = HashMap::new();
        let input = plan.add_slot(Repr::F32, graph.input_len(), INPUT);
        slot_of.insert(INPUT.into(), input);
        let mut fused_relu: HashMap<String, String> = HashMap::new();

        for node in &graph.nodes {
            if let Some(src) = fused_relu.get(&node.name) {
                let s = slot_of[src];
                plan.slots[s].names.push(node.name.clone());
                slot_of.insert(node.name.clone(), s);
                continue;
            }
            let out_len: usize = shapes[&node.name].iter().product();
            let in_shape = &shapes[&node.inputs[0]];
            let x = slot_of[&node.inputs[0]];
            // A Linear on a sequence runs one row per position.
            let linear_rows = match node.op {
                Op::Linear { in_features, .. } => in_shape.iter().product::<usize>() / in_features.max(1),
                _ => 1,
            };
            match &node.op {
                Op::Linear { .. } | Op::Conv2d { .. } => {
                    let (mut w, b) = take_weights(&mut weights, graph, &node.name)?;
                    // Grouped and dilated convs run as the plain conv of their expanded
                    // weight (exact zeros elsewhere), on the same kernels.
                    let expansion = crate::spec::ConvExpansion::of(&node.op);
                    if let Some(e) = expansion.filter(|e| !e.is_plain()) {
                        w = match w {
                            Weights::F32(v) => Weights::F32(e.expand(&v)),
                            Weights::I8 { q, scales } => Weights::I8 { q: e.expand(&q), scales },
                        };
                    }
                    let kernel_eff = expansion.map_or(1, |e| e.effective_kernel());
                    let enc = encodings.get(&format!("{}.weight", node.name)).cloned().unwrap_or_default();
                    let is_linear = matches!(node.op, Op::Linear { .. });
                    if !is_linear {
                        if enc.sparse {
                            plan.note_expanded("sparse");
                        }
                        if enc.codebook.is_some() {
                            plan.note_expanded("codebook");
                        }
                    }
                    if quant.dynamic.contains(&node.name) && quant.integer_nodes.contains(&node.name) {
                        let (Weights::I8 { q, scales }, Op::Linear { in_features, out_features, .. }) = (w, &node.op) else {
                            return Err(RuntimeError::NotDynamic { node: node.name.clone() });
                        };
                        let x = plan.convert(x, Repr::F32, &mut converted);
                        let kernel = Kernel::LinearDynamic(Box::new(DynamicLinear::new(&q, &scales, *out_features, *in_features, b.as_deref())));
                        let out = plan.add_slot(Repr::F32, out_len, &node.name);
                        plan.steps.push(Step { kernel, inputs: vec![x], out });
                        if linear_rows != 1 {
                            plan.linear_rows.insert(plan.steps.len() - 1, linear_rows);
                        }
                        slot_of.insert(node.name.clone(), out);
                        plan.int_layers += 1;
                        plan.dynamic_layers += 1;
                        continue;
                    }
                    if quant.integer_nodes.contains(&node.name) {
                        let Weights::I8 { q, scales } = w else {
                            return Err(RuntimeError::NotInt8 { node: node.name.clone() });
                        };
                        let xq = match plan.slots[x].repr {
                            Repr::U8(qp) => (x, qp),
                            Repr::F32 => {
                                let qp = *quant.activations.get(&node.inputs[0]).ok_or_else(|| {
                                    RuntimeError::MissingQParams { node: node.name.clone(), value: node.inputs[0].clone() }
                                })?;
                                (plan.convert(x, Repr::U8(qp), &mut converted), qp)
                            }
                        };
                        // Fuse a ReLU that is the only reader, when its output is calibrated.
                        let relu = graph
                            .nodes
                            .iter()
                            .find(|n| n.inputs.first() == Some(&node.name) && matches!(n.op, Op::Relu))
                            .filter(|r| consumers.get(&node.name) == Some(&1) && quant.activations.contains_key(&r.name));
                        let out_name = relu.map(|r| r.name.clone()).unwrap_or_else(|| node.name.clone());
                        let out_qp = quant.activations.get(&out_name).copied();
                        let repr = out_qp.map_or(Repr::F32, Repr::U8);
                        let kernel = match node.op {
                            Op::Linear { in_features, out_features, .. } => {
                                let dense = QuantizedLinear::new(&q, &scales, out_features, in_features, b.as_deref(), xq.1, out_qp, relu.is_some());
                                if enc.sparse {
                                    let zeros = dense.zero_fraction();
                                    let sparse = dense.clone().with_sparse_product();
                                    let cands = vec![("int8-dense", Kernel::LinearI8(Box::new(dense))), ("int8-sparse-csr", Kernel::LinearI8(Box::new(sparse)))];
                                    plan.choose(&node.name, &format!("{:.0}% zeros", zeros * 100.0), cands, in_features, out_features, out_qp.is_some())
                                } else {
                                    Kernel::LinearI8(Box::new(dense))
                                }
                            }
                            Op::Conv2d { in_channels, out_channels, stride, padding, .. } => {
                                Kernel::ConvI8(Box::new(QuantizedConv2d::new(
                                    &q, &scales, out_channels, in_channels, in_shape[1], in_shape[2], kernel_eff, stride, padding,
                                    b.as_deref(), xq.1, out_qp, relu.is_some(),
                                )))
                            }
                            _ => unreachable!(),
                        };
                        let out = plan.add_slot(repr, out_len, &node.name);
                        plan.steps.push(Step { kernel, inputs: vec![xq.0], out });
                        if linear_rows != 1 {
                            plan.linear_rows.insert(plan.steps.len() - 1, linear_rows);
                        }
                        slot_of.insert(node.name.clone(), out);
                        if let Some(r) = relu {
                            fused_relu.insert(r.name.clone(), node.name.clone());
                        }
                        plan.int_layers += 1;
                        continue;
                    }
                    plan.dequantized_at_load |= matches!(w, Weights::I8 { .. });
                    let w = w.into_f32();
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    let kernel = match node.op {
                        Op::Linear { in_features, out_features, .. } => {
                            let mut cands = Vec::new();
                            let mut what = Vec::new();
                            if enc.sparse {
                                let csr = CsrF32::from_dense(&w, out_features, in_features);
                                what.push(format!("{:.0}% zeros", 100.0 * (1.0 - csr.nnz() as f64 / w.len().max(1) as f64)));
                                cands.push(("f32-sparse-csr", Kernel::LinearCsr { csr, b: b.clone() }));
                            }
                            if let Some(cb) = &enc.codebook
                                && let Some(cb) = CodebookF32::new(&cb.indices, cb.kept.as_deref(), &cb.centroids, out_features, in_features)
                            {
                                what.push(format!("{} shared values", enc.codebook.as_ref().map_or(0, |c| c.centroids.len())));
                                cands.push(("f32-codebook", Kernel::LinearCodebook { cb, b: b.clone() }));
                            }
                            let dense = Kernel::LinearF32 { w, b, inf: in_features, outf: out_features };
                            if cands.is_empty() {
                                dense
                            } else {
                                cands.insert(0, ("f32-dense", dense));
                                plan.choose(&node.name, &what.join(", "), cands, in_features, out_features, false)
                            }
                        }
                        Op::Conv2d { in_channels, out_channels, stride, padding, .. } => {
                            let g = Window { channels: in_channels, height: in_shape[1], width: in_shape[2], kernel: kernel_eff, stride, padding };
                            let direct = DirectConv::new(&g, &w, b.as_deref(), out_channels).map(Box::new);
                            Kernel::ConvF32 { w, b, g, oc: out_channels, direct }
                        }
                        _ => unreachable!(),
                    };
                    plan.f32_layers += 1;
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    if linear_rows != 1 {
                        plan.linear_rows.insert(plan.steps.len() - 1, linear_rows);
                    }
                    slot_of.insert(node.name.clone(), out);
                }
                Op::MaxPool2d { kernel, stride, padding } => {
                    let g = Window { channels: in_shape[0], height: in_shape[1], width: in_shape[2], kernel: *kernel, stride: *stride, padding: *padding };
                    let repr = plan.slots[x].repr;
                    let out = plan.add_slot(repr, out_len, &node.name);
                    plan.steps.push(Step { kernel: Kernel::MaxPool(g), inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                // Float-only ops: in an int8 plan they run in f32 between integer layers.
                Op::AvgPool2d { .. } | Op::Sigmoid | Op::Tanh => {
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    let kernel = match node.op {
                        Op::AvgPool2d { kernel, stride, padding } => Kernel::AvgPool(Window {
                            channels: in_shape[0],
                            height: in_shape[1],
                            width: in_shape[2],
                            kernel,
                            stride,
                            padding,
                        }),
                        Op::Sigmoid => Kernel::Sigmoid,
                        _ => Kernel::Tanh,
                    };
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Flatten => {
                    plan.slots[x].names.push(node.name.clone());
                    slot_of.insert(node.name.clone(), x);
                }
                Op::Relu => {
                    let repr = plan.slots[x].repr;
                    let kernel = match repr {
                        Repr::F32 => Kernel::Relu,
                        Repr::U8(qp) => Kernel::ReluU8(qp.zero_point.clamp(0, 255) as u8),
                    };
                    let out = plan.add_slot(repr, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Normalize { mean, std } => {
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel: Kernel::Normalize { mean: mean.clone(), std: std.clone() }, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Lstm { .. } | Op::Gru { .. } => {
                    let geo = node.op.recurrent().expect("a recurrent op");
                    if quant.integer_nodes.contains(&node.name) {
                        let kernel = plan.integer_recurrent(graph, node, geo, in_shape[0], &mut weights, quant, x, &mut converted)?;
                        let out = plan.add_slot(Repr::F32, out_len, &node.name);
                        plan.steps.push(Step { kernel: kernel.0, inputs: vec![kernel.1], out });
                        slot_of.insert(node.name.clone(), out);
                        plan.int_layers += 1;
                        continue;
                    }
                    let specs = graph.parameters();
                    let mut take = |suffix: &str| -> Result<Option<Vec<f32>>, RuntimeError> {
                        let name = format!("{}.{suffix}", node.name);
                        let Some(spec) = specs.iter().find(|p| p.name == name) else { return Ok(None) };
                        let w = weights.remove(&name).ok_or_else(|| RuntimeError::MissingTensor { name: name.clone() })?;
                        if w.len() != spec.numel() {
                            return Err(RuntimeError::TensorSize { name, expected: spec.numel(), got: w.len() });
                        }
                        plan.dequantized_at_load |= matches!(w, Weights::I8 { .. });
                        Ok(Some(w.to_f32()))
                    };
                    let mut dirs = Vec::new();
                    for d in 0..geo.directions() {
                        let mut param = |k: usize| take(&Recurrent::param_suffix(RECURRENT_PARAMS[k].0, d));
                        let [w_ih, w_hh, b_ih, b_hh] = [param(0)?, param(1)?, param(2)?, param(3)?];
                        dirs.push((w_ih.unwrap_or_default(), w_hh.unwrap_or_default(), b_ih, b_hh));
                    }
                    let kernel = RecurrentKernel { geo, steps: in_shape[0], dirs };
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    plan.f32_layers += 1;
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel: Kernel::Recurrent(Box::new(kernel)), inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Embedding { .. }
                | Op::PositionEmbedding { .. }
                | Op::ClsToken { .. }
                | Op::PatchEmbed { .. }
                | Op::LayerNorm { .. }
                | Op::Gelu
                | Op::SelfAttention { .. }
                | Op::Pool { .. } => {
                    let integer = quant.integer_nodes.contains(&node.name);
                    if integer && !matches!(node.op, Op::SelfAttention { .. }) {
                        return Err(RuntimeError::IntegerUnsupported { node: node.name.clone(), op: node.op.kind() });
                    }
                    let specs = graph.parameters();
                    let mut take = |suffix: &str| -> Result<Weights, RuntimeError> {
                        let name = format!("{}.{suffix}", node.name);
                        let expected = specs.iter().find(|p| p.name == name).map_or(0, |p| p.numel());
                        let w = weights.remove(&name).ok_or_else(|| RuntimeError::MissingTensor { name: name.clone() })?;
                        if w.len() != expected {
                            return Err(RuntimeError::TensorSize { name, expected, got: w.len() });
                        }
                        Ok(w)
                    };
                    let seq = in_shape.first().copied().unwrap_or(1);
                    let kernel = match node.op {
                        Op::Embedding { vocab, dim, pad_token } => {
                            Kernel::Embedding { node: node.name.clone(), table: take("weight")?.into_f32(), vocab, dim, pad: pad_token }
                        }
                        Op::PositionEmbedding { dim, .. } => Kernel::AddPositions { table: take("weight")?.into_f32(), seq, dim },
                        Op::ClsToken { dim } => Kernel::PrependCls { row: take("weight")?.into_f32(), seq, dim },
                        Op::PatchEmbed { channels, patch, dim } => {
                            let geo = Patches { channels, height: in_shape[1], width: in_shape[2], patch };
                            plan.f32_layers += 1;
                            Kernel::PatchEmbed { geo, w: take("weight")?.into_f32(), b: take("bias")?.into_f32(), dim }
                        }
                        Op::LayerNorm { .. } | Op::Gelu => float_or_integer_nonlinearity(&node.op, &mut take, &quant.integer_nonlinear)?,
                        Op::Pool { kind } => Kernel::Pool { seq, dim: in_shape[1], mean: kind == PoolKind::Mean },
                        Op::SelfAttention { dim, .. } => {
                            let geo = Heads::new(node.op.attention().expect("an attention node"), seq);
                            let inner = geo.inner();
                            let mut parts = Vec::new();
                            for proj in ATTENTION_PROJECTIONS {
                                parts.push((take(&format!("{proj}.weight"))?, take(&format!("{proj}.bias"))?.into_f32()));
                            }
                            let context = format!("{}.context", node.name);
                            let (qkv, output) = if integer && quant.dynamic.contains(&node.name) {
                                let (wq, scales, bias, oq, osc) = fused_int8_projections(&parts, &node.name)?;
                                plan.int_layers += 1;
                                plan.dynamic_layers += 1;
                                (
                                    Projection::Dynamic(Box::new(DynamicLinear::new(&wq, &scales, 3 * inner, dim, Some(&bias)))),
                                    Projection::Dynamic(Box::new(DynamicLinear::new(oq, osc, dim, inner, Some(&parts[3].1)))),
                                )
                            } else if integer {
                                let qp = |value: &str| {
                                    quant.activations.get(value).copied().ok_or_else(|| RuntimeError::MissingQParams { node: node.name.clone(), value: value.to_string() })
                                };
                                let (in_qp, ctx_qp) = (qp(&node.inputs[0])?, qp(&context)?);
                                let (wq, scales, bias, oq, osc) = fused_int8_projections(&parts, &node.name)?;
                                let qkv = QuantizedLinear::new(&wq, &scales, 3 * inner, dim, Some(&bias), in_qp, None, false);
                                let out = QuantizedLinear::new(oq, osc, dim, inner, Some(&parts[3].1), ctx_qp, None, false);
                                plan.int_layers += 1;
                                (Projection::I8 { layer: Box::new(qkv), input: in_qp }, Projection::I8 { layer: Box::new(out), input: ctx_qp })
                            } else {
                                let mut w = Vec::with_capacity(3 * inner * dim);
                                let mut b = Vec::with_capacity(3 * inner);
                                for (pw, pb) in &parts[..3] {
                                    plan.dequantized_at_load |= matches!(pw, Weights::I8 { .. });
                                    w.extend(pw.to_f32());
                                    b.extend_from_slice(pb);
                                }
                                plan.dequantized_at_load |= matches!(parts[3].0, Weights::I8 { .. });
                                plan.f32_layers += 1;
                                (Projection::F32 { w, b }, Projection::F32 { w: parts[3].0.to_f32(), b: parts[3].1.clone() })
                            };
                            let integer_softmax = quant.integer_nonlinear.contains(&Nonlinearity::Softmax);
                            Kernel::Attention(Box::new(AttentionKernel { geo, qkv, output, context, integer_softmax }))
                        }
                        _ => unreachable!(),
                    };
                    let x = match (&kernel, plan.slots[x].repr) {
                        (Kernel::Attention(a), Repr::U8(qp)) if matches!(&a.qkv, Projection::I8 { input, .. } if *input == qp) => x,
                        _ => plan.convert(x, Repr::F32, &mut converted),
                    };
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Add | Op::Softmax => {
                    let inputs: Vec<usize> = node
                        .inputs
                        .iter()
                        .map(|v| {
                            let s = slot_of[v];
                            plan.convert(s, Repr::F32, &mut converted)
                        })
                        .collect();
                    let kernel = if matches!(node.op, Op::Add) { Kernel::Add } else { Kernel::Softmax };
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs, out });
                    slot_of.insert(node.name.clone(), out);
                }
            }
        }
        for o in &graph.outputs {
            let s = slot_of[o];
            let s = plan.convert(s, Repr::F32, &mut converted);
            plan.outputs.push(s);
        }
        plan.integer_nonlinear = quant.integer_nonlinear.iter().map(|k| k.name()).collect();
        plan.input_read_once = plan.steps.iter().flat_map(|s| &s.inputs).filter(|&&i| i == input).count() == 1 && !plan.outputs.contains(&input);
        plan.chain = plan.find_chain();
        Ok(plan)
    }

    /// An integer LSTM/GRU node: its int8 weights, its input converted to u8 at the
    /// calibrated parameters. Returns the kernel and the slot it reads.
    #[allow(clippy::too_many_arguments)]
    fn integer_recurrent(
        &mut self,
        graph: &Graph,
        node: &crate::spec::Node,
        geo: Recurrent,
        steps: usize,
        weights: &mut HashMap<String, Weights>,
        quant: &QuantPlan,
        x: usize,
        converted: &mut HashMap<usize, usize>,
    ) -> Result<(Kernel, usize), RuntimeError> {
        let specs = graph.parameters();
        let mut take = |suffix: &str| -> Result<Option<Weights>, RuntimeError> {
            let name = format!("{}.{suffix}", node.name);
            let Some(spec) = specs.iter().find(|p| p.name == name) else { return Ok(None) };
            let w = weights.remove(&name).ok_or_else(|| RuntimeError::MissingTensor { name: name.clone() })?;
            if w.len() != spec.numel() {
                return Err(RuntimeError::TensorSize { name, expected: spec.numel(), got: w.len() });
            }
            Ok(Some(w))
        };
        let mut dirs = Vec::new();
        for d in 0..geo.directions() {
            let mut param = |k: usize| take(&Recurrent::param_suffix(RECURRENT_PARAMS[k].0, d));
            let [w_ih, w_hh, b_ih, b_hh] = [param(0)?, param(1)?, param(2)?, param(3)?];
            let (Some(Weights::I8 { q: q_ih, scales: s_ih }), Some(Weights::I8 { q: q_hh, scales: s_hh })) = (w_ih, w_hh) else {
                return Err(RuntimeError::NotInt8 { node: node.name.clone() });
            };
            dirs.push(((q_ih, s_ih), (q_hh, s_hh), b_ih.map(|b| b.to_f32()), b_hh.map(|b| b.to_f32())));
        }
        let input_qp = match self.slots[x].repr {
            Repr::U8(qp) => qp,
            Repr::F32 => *quant
                .activations
                .get(&node.inputs[0])
                .ok_or_else(|| RuntimeError::MissingQParams { node: node.name.clone(), value: node.inputs[0].clone() })?,
        };
        let xq = self.convert(x, Repr::U8(input_qp), converted);
        let mut dirs = dirs.into_iter();
        let ((q_ih, s_ih), (q_hh, s_hh), b_ih, b_hh) = dirs.next().expect("a recurrent node has a forward direction");
        let mut cell = recurrent::QuantizedRecurrent::new(geo, (&q_ih, &s_ih), (&q_hh, &s_hh), b_ih, b_hh, input_qp);
        if let Some(((q_ih, s_ih), (q_hh, s_hh), b_ih, b_hh)) = dirs.next() {
            cell = cell.with_reverse((&q_ih, &s_ih), (&q_hh, &s_hh), b_ih, b_hh);
        }
        let cell = cell.with_integer_gates(quant.integer_nonlinear.contains(&Nonlinearity::Gates));
        Ok((Kernel::RecurrentI8 { cell: Box::new(cell), steps }, xq))
    }

    /// Times each candidate kernel of a Linear layer (`inf → outf`, the first candidate
    /// being the dense one) at every batch of [`TIMED_BATCHES`] on synthetic input,
    /// records what won and by how much, and returns the kernel (or a by-batch choice).
    /// Every candidate computes the same function: integer ones bit for bit, float ones
    /// to rounding.
    fn choose(&mut self, node: &str, what: &str, cands: Vec<(&'static str, Kernel)>, inf: usize, outf: usize, u8_out: bool) -> Kernel {
        let mut winners: Vec<(usize, usize, f64)> = Vec::new(); // (batch, candidate, speed-up over dense)
        for &batch in &TIMED_BATCHES {
            let times: Vec<f64> = cands.iter().map(|(_, k)| time_linear(k, batch, inf, outf, u8_out)).collect();
            let best = (0..times.len()).min_by(|&a, &b| times[a].total_cmp(&times[b])).unwrap_or(0);
            winners.push((batch, best, times[0] / times[best]));
        }
        let mut parts = Vec::new();
        for (i, &(batch, best, gain)) in winners.iter().enumerate() {
            if i > 0 && winners[i - 1].1 == best {
                continue;
            }
            let mut p = format!("b{batch}+ {}", cands[best].0);
            if best != 0 {
                p.push_str(&format!(" {gain:.2}× dense"));
            }
            parts.push(p);
        }
        self.choices.push(format!("{node} ({what}): {}", parts.join(", ")));
        let mut by_batch: Vec<(usize, usize)> = Vec::new(); // (upper bound, candidate)
        for (i, &(_, best, _)) in winners.iter().enumerate() {
            let bound = TIMED_BATCHES.get(i + 1).copied().unwrap_or(usize::MAX);
            match by_batch.last_mut() {
                Some(last) if last.1 == best => last.0 = bound,
                _ => by_batch.push((bound, best)),
            }
        }
        if by_batch.len() == 1 {
            return cands.into_iter().nth(by_batch[0].1).expect("winner is a candidate").1;
        }
        Kernel::ByBatch(by_batch.iter().map(|&(bound, c)| (bound, cands[c].1.clone())).collect())
    }

    /// The longest `Quantize(input) → LinearI8 → … → LinearI8` prefix whose intermediate
    /// values have no other reader (see [`IntChain`]).
    fn find_chain(&self) -> Option<IntChain> {
        let readers = |slot: usize| self.steps.iter().flat_map(|s| &s.inputs).filter(|&&i| i == slot).count();
        if !self.input_read_once {
            return None;
        }
        let normalize = match self.steps.first() {
            Some(Step { kernel: Kernel::Normalize { .. }, inputs, out }) if inputs[0] == 0 => {
                if readers(*out) != 1 || self.outputs.contains(out) {
                    return None;
                }
                true
            }
            _ => false,
        };
        let q = normalize as usize;
        match self.steps.get(q) {
            Some(Step { kernel: Kernel::Quantize(_), inputs, .. }) if inputs[0] == if normalize { self.steps[0].out } else { 0 } => {}
            _ => return None,
        }
        let mut len = q + 1;
        while let Some(step) = self.steps.get(len) {
            let prev = self.steps[len - 1].out;
            let linear = match &step.kernel {
                Kernel::LinearI8(_) => true,
                Kernel::ByBatch(by) => by.iter().all(|(_, k)| matches!(k, Kernel::LinearI8(_))),
                _ => false,
            };
            if !linear || step.inputs[0] != prev || readers(prev) != 1 || self.outputs.contains(&prev) {
                break;
            }
            len += 1;
        }
        (len > q + 1).then_some(IntChain { steps: len, normalize })
    }

    /// Runs the fused prefix on `n` samples of `x` (see [`IntChain`]); the last chain
    /// step's output slot receives all rows, earlier slots serve as per-block buffers.
    fn run_chain(&self, chain: IntChain, x: &[f32], n: usize, ws: &mut Workspace) {
        let per = self.input_len();
        let first = chain.normalize as usize + 1;
        let Kernel::Quantize(qp) = self.steps[first - 1].kernel else { unreachable!("a chain quantizes before its first Linear") };
        let last = chain.steps - 1;
        let mut r0 = 0;
        while r0 < n {
            let m = CHAIN_ROWS.min(n - r0);
            let xb = &x[r0 * per..(r0 + m) * per];
            let q0 = self.steps[first - 1].out;
            match &self.steps[0] {
                Step { kernel: Kernel::Normalize { mean, std }, out, .. } if chain.normalize => {
                    let nb = &mut ws.f[*out][..m * per];
                    super::kernels::normalize(xb, mean, std, per, nb);
                    int8::quantize_u8(nb, qp, &mut ws.q[q0][..m * per]);
                }
                _ => int8::quantize_u8(xb, qp, &mut ws.q[q0][..m * per]),
            }
            for (si, step) in self.steps[first..chain.steps].iter().enumerate().map(|(i, s)| (i + first, s)) {
                let (xi, o) = (step.inputs[0], step.out);
                let (xl, ol) = (self.slots[xi].len, self.slots[o].len);
                let Kernel::LinearI8(l) = resolve(&step.kernel, n) else { unreachable!("a chain holds integer Linear layers") };
                // Earlier steps write the block at the start of their slot; the last one
                // writes its rows in place.
                let at = if si == last { r0 * ol } else { 0 };
                match self.slots[o].repr {
                    Repr::U8(_) => {
                        let (xs, y) = pair(&mut ws.q, xi, o);
                        l.forward_u8(&xs[..m * xl], m, &mut y[at..at + m * ol], &mut ws.acc);
                    }
                    Repr::F32 => l.forward_f32(&ws.q[xi][..m * xl], m, &mut ws.f[o][at..at + m * ol], &mut ws.acc),
                }
            }
            r0 += m;
        }
    }

    fn add_slot(&mut self, repr: Repr, len: usize, name: &str) -> usize {
        self.slots.push(Slot { repr, len, names: vec![name.to_string()] });
        self.slots.len() - 1
    }

    /// The slot holding `s` in representation `want`, adding a conversion step once.
    fn convert(&mut self, s: usize, want: Repr, cache: &mut HashMap<usize, usize>) -> usize {
        let have = self.slots[s].repr;
        if have == want {
            return s;
        }
        if let Some(&c) = cache.get(&s)
            && self.slots[c].repr == want
        {
            return c;
        }
        let kernel = match (have, want) {
            (Repr::F32, Repr::U8(qp)) => Kernel::Quantize(qp),
            (Repr::U8(qp), Repr::F32) => Kernel::Dequantize(qp),
            (Repr::U8(from), Repr::U8(to)) => {
                // Requantize through f32: rare (a value read with two calibrations).
                let f = self.convert(s, Repr::F32, cache);
                let out = self.add_slot(want, self.slots[s].len, &format!("{}@q", self.slots[s].names[0]));
                self.steps.push(Step { kernel: Kernel::Quantize(to), inputs: vec![f], out });
                let _ = from;
                return out;
            }
            (Repr::F32, Repr::F32) => unreachable!(),
        };
        let out = self.add_slot(want, self.slots[s].len, &format!("{}@{}", self.slots[s].names[0], if want == Repr::F32 { "f32" } else { "u8" }));
        self.steps.push(Step { kernel, inputs: vec![s], out });
        cache.insert(s, out);
        out
    }

    /// Per-sample input length.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of classes (length of the first output).
    pub fn output_len(&self) -> usize {
        self.slots[self.outputs[0]].len
    }

    /// Records that the loader expanded an encoding (`"sparse"`, `"codebook"`) to dense.
    pub fn note_expanded(&mut self, what: &'static str) {
        if !self.expanded.contains(&what) {
            self.expanded.push(what);
        }
    }

    /// Which kernels run the weighted layers, e.g. `int8-avx512-vnni` or `f32-dense`,
    /// and which stored encodings were expanded to dense at load.
    /// Layers whose stored encoding offered several kernels add what was measured, e.g.
    /// `fc1 (90% zeros): b1+ f32-sparse-csr 2.10× dense, b16+ f32-dense`.
    pub fn kernel_description(&self) -> String {
        let mut base = self.base_kernel_description();
        if !self.expanded.is_empty() {
            base = format!("{base} ({} expanded at load)", self.expanded.join(" + "));
        }
        if !self.choices.is_empty() {
            base = format!("{base}; {}", self.choices.join("; "));
        }
        if !self.integer_nonlinear.is_empty() {
            base = format!("{base}; integer {}", self.integer_nonlinear.join(", "));
        }
        base
    }

    /// What was measured and chosen for each layer that had a choice of kernels.
    pub fn layer_choices(&self) -> &[String] {
        &self.choices
    }

    fn base_kernel_description(&self) -> String {
        let int8 = match self.dynamic_layers {
            0 => format!("int8-{}", int8::kernel_name()),
            d if d == self.int_layers => format!("int8-{} (activations quantized per row at run time)", int8::kernel_name()),
            d => format!("int8-{} ({d} layers' activations quantized per row at run time)", int8::kernel_name()),
        };
        let base = match (self.int_layers, self.f32_layers) {
            (i, 0) if i > 0 => int8,
            (0, _) if self.dequantized_at_load => "f32-dense (int8 weights dequantized at load)".into(),
            (0, _) => "f32-dense".into(),
            (i, f) => format!("mixed: {i} {int8} + {f} f32-dense layers"),
        };
        if self.threads > 1 { format!("{base}, {} threads", self.threads) } else { base }
    }

    /// Threads one run may use: a batch of several samples is split into that many
    /// shares run side by side (each on its own workspace), a single sample has its
    /// large products, attention heads and element-wise steps split. A split sample
    /// gets the bits one thread gives; a split batch gets the bits of each share run
    /// alone (float products may round differently for different row counts, within
    /// what any batch size changes).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `n` samples of `x` and returns the first output (`n × output_len`).
    pub fn run<'w>(&self, x: &[f32], n: usize, ws: &'w mut Workspace) -> Result<&'w [f32], RuntimeError> {
        self.execute_split(x, n, ws)?;
        let o = self.outputs[0];
        Ok(&ws.f[o][..n * self.slots[o].len])
    }

    /// Every output, in graph order.
    pub fn run_all(&self, x: &[f32], n: usize, ws: &mut Workspace) -> Result<Vec<Vec<f32>>, RuntimeError> {
        self.execute_split(x, n, ws)?;
        Ok(self.outputs.iter().map(|&o| ws.f[o][..n * self.slots[o].len].to_vec()).collect())
    }

    /// Runs and shows every f32 graph value (by name) to `observe`: used for calibration.
    pub fn run_observe(&self, x: &[f32], n: usize, ws: &mut Workspace, observe: &mut dyn FnMut(&str, &[f32])) -> Result<(), RuntimeError> {
        self.execute(x, n, ws, false, observe, self.threads)
    }

    /// Runs `n` samples on [`Plan::threads`] threads: shares of the batch side by side
    /// when there are several samples, else one sample with its layers split.
    fn execute_split(&self, x: &[f32], n: usize, ws: &mut Workspace) -> Result<(), RuntimeError> {
        use rayon::prelude::*;
        let parts = self.threads.min(n);
        if parts <= 1 {
            return self.execute(x, n, ws, true, &mut |_, _| {}, self.threads);
        }
        let per = self.input_len();
        if x.len() < n * per {
            return Err(RuntimeError::InputShape { got: x.len(), per_sample: per, shape: self.input_shape.clone() });
        }
        if ws.parts.len() < parts {
            ws.parts.resize_with(parts, Workspace::default);
        }
        let share = n.div_ceil(parts);
        let profiling = ws.profile.is_some();
        for pw in &mut ws.parts[..parts] {
            pw.profile = profiling.then(BTreeMap::new);
        }
        let results: Vec<Result<(), RuntimeError>> = ws.parts[..parts]
            .par_iter_mut()
            .enumerate()
            .map(|(i, pw)| {
                let (lo, hi) = (i * share, ((i + 1) * share).min(n));
                if lo >= hi {
                    return Ok(());
                }
                self.execute(&x[lo * per..hi * per], hi - lo, pw, true, &mut |_, _| {}, 1)
            })
            .collect();
        results.into_iter().collect::<Result<(), RuntimeError>>()?;
        // The shares ran side by side: a kind's wall time is the mean over them.
        for i in 0..parts {
            for (kind, (calls, secs)) in ws.parts[i].profile.take().unwrap_or_default() {
                ws.add_time(kind, calls, secs / parts as f64);
            }
        }
        if ws.f.len() != self.slots.len() {
            ws.f = vec![Vec::new(); self.slots.len()];
            ws.q = vec![Vec::new(); self.slots.len()];
        }
        for &o in &self.outputs {
            let len = self.slots[o].len;
            if ws.f[o].len() < n * len {
                ws.f[o].resize(n * len, 0.0);
            }
            for (i, pw) in ws.parts[..parts].iter().enumerate() {
                let (lo, hi) = (i * share, ((i + 1) * share).min(n));
                if lo < hi {
                    ws.f[o][lo * len..hi * len].copy_from_slice(&pw.f[o][..(hi - lo) * len]);
                }
            }
        }
        Ok(())
    }

    /// Runs the steps; `fuse` lets the fused integer prefix run block by block (its
    /// intermediate values are then not whole, so observers turn it off). `threads`
    /// may split single steps (products by columns, attention by heads, element-wise
    /// steps by rows).
    #[allow(clippy::too_many_arguments)]
    fn execute(&self, x: &[f32], n: usize, ws: &mut Workspace, fuse: bool, observe: &mut dyn FnMut(&str, &[f32]), threads: usize) -> Result<(), RuntimeError> {
        let per = self.input_len();
        if x.len() < n * per {
            return Err(RuntimeError::InputShape { got: x.len(), per_sample: per, shape: self.input_shape.clone() });
        }
        if ws.f.len() != self.slots.len() {
            ws.f = vec![Vec::new(); self.slots.len()];
            ws.q = vec![Vec::new(); self.slots.len()];
        }
        // Values get a buffer just before the step that writes them and give it back
        // after the last step that reads them, so a deep model (a Transformer at batch
        // 32) holds a few layers' activations at a time, not every value of the graph.
        // The input, the outputs and the fused chain's values keep theirs.
        let last_read = self.last_reads();
        let chain_steps = self.chain.filter(|_| fuse).map_or(0, |c| c.steps);
        let mut upfront = vec![0];
        upfront.extend(self.steps[..chain_steps].iter().flat_map(|s| s.inputs.iter().copied().chain([s.out])));
        for i in upfront {
            self.ensure_buffer(i, n, ws);
        }
        // An integer model's input is read once, by its quantization: quantize straight
        // from the caller's buffer instead of copying it into the workspace first.
        let direct_quantize = match self.steps.first() {
            Some(Step { kernel: Kernel::Quantize(qp), inputs, out }) if inputs[0] == 0 && self.input_read_once => Some((*qp, *out)),
            _ => None,
        };
        let chain = self.chain.filter(|_| fuse);
        // A chain reads the caller's input itself (its first step is the only reader).
        if direct_quantize.is_none() && chain.is_none() {
            ws.f[0][..n * per].copy_from_slice(&x[..n * per]);
        }
        observe_slot(&self.slots[0], &x[..n * per], observe);
        ws.valid.clear();
        if let Some(c) = chain {
            self.run_chain(c, x, n, ws);
        }
        for (si, step) in self.steps.iter().enumerate().skip(chain.map_or(0, |c| c.steps)) {
            let (xi, o) = (step.inputs[0], step.out);
            if si == 0
                && let Some((qp, out)) = direct_quantize
            {
                self.ensure_buffer(out, n, ws);
                int8::quantize_u8(&x[..n * per], qp, &mut ws.q[out][..n * self.slots[out].len]);
                continue;
            }
            // An elementwise GELU whose input dies with it runs in place, on the
            // input's buffer (the FFN's widest value is then held once, not twice).
            let in_place = matches!(step.kernel, Kernel::Gelu)
                && self.slots[xi].len == self.slots[o].len
                && last_read[xi] == Some(si)
                && xi != 0
                && !self.outputs.contains(&xi);
            if in_place {
                let input = std::mem::take(&mut ws.f[xi]);
                let old = std::mem::replace(&mut ws.f[o], input);
                if old.capacity() > 0 {
                    ws.free_f.push(old);
                }
            }
            self.ensure_buffer(o, n, ws);
            let (xl, ol) = (self.slots[xi].len, self.slots[o].len);
            // Linear kernels see rows: samples × positions.
            let rows = self.linear_rows.get(&si).copied().unwrap_or(1);
            let (n, xl, ol) = if rows == 1 { (n, xl, ol) } else { (n * rows, xl / rows, ol / rows) };
            let kernel = resolve(&step.kernel, n);
            let started = ws.profile.is_some().then(std::time::Instant::now);
            match kernel {
                Kernel::LinearF32 { .. } | Kernel::LinearCsr { .. } | Kernel::LinearCodebook { .. } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    run_linear_f32(kernel, &xs[..n * xl], n, &mut y[..n * ol], &mut ws.tmp, threads);
                }
                Kernel::ConvF32 { direct: Some(d), .. } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    d.forward(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.col);
                }
                Kernel::ConvF32 { w, b, g, oc, direct: None } => {
                    // Chunks of samples whose im2col matrix stays in cache: one product
                    // per chunk, scattered to the per-sample layout.
                    let (pl, q) = (g.patch_len(), g.positions());
                    let chunk = conv_chunk(g).min(n);
                    if ws.col.len() < chunk * pl * q {
                        ws.col.resize(chunk * pl * q, 0.0);
                    }
                    if ws.tmp.len() < chunk * oc * q {
                        ws.tmp.resize(chunk * oc * q, 0.0);
                    }
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    let mut s0 = 0;
                    while s0 < n {
                        let c = chunk.min(n - s0);
                        let (xc, yc) = (&xs[s0 * xl..(s0 + c) * xl], &mut y[s0 * ol..(s0 + c) * ol]);
                        conv2d_forward(xc, c, g, w, b.as_deref(), *oc, &mut ws.col, &mut ws.tmp, yc);
                        s0 += c;
                    }
                }
                Kernel::ByBatch(_) => unreachable!("resolved above"),
                Kernel::LinearI8(l) => {
                    match self.slots[o].repr {
                        Repr::U8(_) => {
                            let (xs, y) = pair(&mut ws.q, xi, o);
                            l.forward_u8_threads(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.acc, threads);
                        }
                        Repr::F32 => l.forward_f32_threads(&ws.q[xi][..n * xl], n, &mut ws.f[o][..n * ol], &mut ws.acc, threads),
                    }
                }
                Kernel::LinearDynamic(l) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    l.forward(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.dynamic, threads);
                }
                Kernel::ConvI8(c) => {
                    match self.slots[o].repr {
                        Repr::U8(_) => {
                            let (xs, y) = pair(&mut ws.q, xi, o);
                            c.forward_u8(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.acc);
                        }
                        Repr::F32 => c.forward_f32(&ws.q[xi][..n * xl], n, &mut ws.f[o][..n * ol], &mut ws.acc),
                    }
                }
                Kernel::MaxPool(g) => match self.slots[o].repr {
                    Repr::F32 => {
                        let (xs, y) = pair(&mut ws.f, xi, o);
                        for s in 0..n {
                            maxpool(&xs[s * xl..(s + 1) * xl], g, &mut y[s * ol..(s + 1) * ol], None);
                        }
                    }
                    Repr::U8(_) => {
                        let (xs, y) = pair(&mut ws.q, xi, o);
                        for s in 0..n {
                            maxpool(&xs[s * xl..(s + 1) * xl], g, &mut y[s * ol..(s + 1) * ol], None);
                        }
                    }
                },
                Kernel::AvgPool(g) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    for s in 0..n {
                        super::kernels::avgpool(&xs[s * xl..(s + 1) * xl], g, &mut y[s * ol..(s + 1) * ol]);
                    }
                }
                Kernel::Sigmoid => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    super::kernels::sigmoid(&xs[..n * xl], &mut y[..n * ol]);
                }
                Kernel::Tanh => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    super::kernels::tanh(&xs[..n * xl], &mut y[..n * ol]);
                }
                Kernel::Relu => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    y[..n * ol].iter_mut().zip(&xs[..n * xl]).for_each(|(v, &i)| *v = i.max(0.0));
                }
                Kernel::ReluU8(zp) => {
                    let (xs, y) = pair(&mut ws.q, xi, o);
                    y[..n * ol].iter_mut().zip(&xs[..n * xl]).for_each(|(v, &i)| *v = i.max(*zp));
                }
                Kernel::Add => {
                    let mut y = std::mem::take(&mut ws.f[o]);
                    let (a, b) = (&ws.f[step.inputs[0]], &ws.f[step.inputs[1]]);
                    for ((v, p), q) in y[..n * ol].iter_mut().zip(a).zip(b) {
                        *v = p + q;
                    }
                    ws.f[o] = y;
                }
                Kernel::Softmax => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    y[..n * ol].copy_from_slice(&xs[..n * xl]);
                    softmax_rows(&mut y[..n * ol], ol);
                }
                Kernel::Normalize { mean, std } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    super::kernels::normalize(&xs[..n * xl], mean, std, xl, &mut y[..n * ol]);
                }
                Kernel::Recurrent(r) => {
                    ws.recurrent.reserve(&r.geo, r.steps, n);
                    let w: Vec<recurrent::CellWeights> =
                        r.dirs.iter().map(|(w_ih, w_hh, b_ih, b_hh)| recurrent::CellWeights { w_ih, w_hh, b_ih: b_ih.as_deref(), b_hh: b_hh.as_deref() }).collect();
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    recurrent::forward_node(&r.geo, r.steps, &w, &xs[..n * xl], n, &mut ws.recurrent, &mut y[..n * ol]);
                }
                Kernel::RecurrentI8 { cell, steps } => {
                    ws.recurrent.reserve(cell.geometry(), *steps, n);
                    cell.forward(*steps, &ws.q[xi][..n * xl], n, &mut ws.recurrent, &mut ws.recurrent_quant, &mut ws.f[o][..n * ol]);
                }
                Kernel::Embedding { node, table, vocab, dim, pad } => {
                    let ids = &ws.f[xi][..n * xl];
                    if let Some(id) = tf::bad_token(ids, *vocab) {
                        return Err(RuntimeError::TokenId { node: node.clone(), id, vocab: *vocab });
                    }
                    if let Some(pad) = pad {
                        ws.valid.from_ids(ids, n, xl, *pad);
                    }
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::embed(&xs[..n * xl], table, *dim, &mut y[..n * ol]);
                }
                Kernel::AddPositions { table, seq, dim } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::add_positions(&xs[..n * xl], table, *seq, *dim, &mut y[..n * ol]);
                }
                Kernel::PrependCls { row, seq, dim } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::prepend_cls(&xs[..n * xl], row, *seq, *dim, &mut y[..n * ol]);
                }
                Kernel::PatchEmbed { geo, w, b, dim } => {
                    let rows = n * geo.count();
                    if ws.col.len() < rows * geo.len() {
                        ws.col.resize(rows * geo.len(), 0.0);
                    }
                    geo.gather(&ws.f[xi][..n * xl], n, &mut ws.col);
                    let y = &mut ws.f[o][..n * ol];
                    sgemm(rows, *dim, geo.len(), MatRef::rows(&ws.col, geo.len()), MatRef::transposed(w, geo.len()), y, *dim, false);
                    for row in y.chunks_exact_mut(*dim) {
                        row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                    }
                }
                Kernel::LayerNorm { gamma, beta, dim, eps } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], *dim, |x, y| tf::layer_norm_fast(x, *dim, gamma, beta, *eps, y));
                }
                Kernel::Gelu if in_place => par_rows_in_place(threads, &mut ws.f[o][..n * ol], 1, tf::gelu_fast_in_place),
                Kernel::LayerNormInt(ln) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], ln.dim(), |x, y| ln.forward_f32(x, y));
                }
                Kernel::GeluInt(g) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], 1, |x, y| g.forward_f32(x, y));
                }
                Kernel::Gelu => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], 1, tf::gelu_fast);
                }
                Kernel::Pool { seq, dim, mean } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::pool(&xs[..n * xl], n, *seq, *dim, *mean, &ws.valid, &mut y[..n * ol]);
                }
                Kernel::Attention(a) => {
                    let (geo, d, inner) = (a.geo, a.geo.dim, a.geo.inner());
                    let rows = n * geo.seq;
                    let sc = &mut ws.attention;
                    for (buf, len) in [(&mut sc.qkv, rows * 3 * inner), (&mut sc.ctx, rows * inner), (&mut sc.probs, n * geo.heads * geo.seq * geo.seq)] {
                        if buf.len() < len {
                            buf.resize(len, 0.0);
                        }
                    }
                    let xq = matches!(self.slots[xi].repr, Repr::U8(_)).then(|| &ws.q[xi][..rows * d]);
                    let xf: &[f32] = if xq.is_some() { &[] } else { &ws.f[xi][..rows * d] };
                    a.qkv.run(xf, xq, rows, d, 3 * inner, &mut sc.qkv, &mut sc.ctx_q, &mut ws.acc, &mut ws.dynamic, threads);
                    let mid = ws.profile.is_some().then(std::time::Instant::now);
                    let sc = &mut ws.attention;
                    let qkv = &sc.qkv[..rows * 3 * inner];
                    if a.integer_softmax {
                        intops::attend_integer(&geo, qkv, &qkv[inner..], &qkv[2 * inner..], 3 * inner, n, &ws.valid, &mut ws.attention_int, &mut sc.ctx);
                    } else {
                        geo.attend_threads(qkv, &qkv[inner..], &qkv[2 * inner..], 3 * inner, n, &ws.valid, &mut sc.probs, &mut sc.ctx, threads);
                    }
                    observe(&a.context, &sc.ctx[..rows * inner]);
                    let late = ws.profile.is_some().then(std::time::Instant::now);
                    a.output.run(&sc.ctx[..rows * inner], None, rows, inner, d, &mut ws.f[o][..n * ol], &mut sc.ctx_q, &mut ws.acc, &mut ws.dynamic, threads);
                    if let (Some(s), Some(m), Some(l)) = (started, mid, late) {
                        for (kind, secs) in [(a.qkv.kind(), m - s), ("attention scores+context", l - m), (a.output.kind(), l.elapsed())] {
                            ws.add_time(kind, 1, secs.as_secs_f64());
                        }
                    }
                }
                Kernel::Quantize(qp) => int8::quantize_u8(&ws.f[xi][..n * xl], *qp, &mut ws.q[o][..n * ol]),
                Kernel::Dequantize(qp) => int8::dequantize_u8(&ws.q[xi][..n * xl], *qp, &mut ws.f[o][..n * ol]),
            }
            if !matches!(kernel, Kernel::Attention(_)) {
                ws.record(kernel.kind(), started);
            }
            if self.slots[o].repr == Repr::F32 {
                observe_slot(&self.slots[o], &ws.f[o][..n * ol], observe);
            }
            for &done in step.inputs.iter().chain([&o]) {
                let held = match self.slots[done].repr {
                    Repr::F32 => ws.f[done].capacity(),
                    Repr::U8(_) => ws.q[done].capacity(),
                };
                if held > 0 && last_read[done] <= Some(si) && !self.outputs.contains(&done) && done != 0 {
                    match self.slots[done].repr {
                        Repr::F32 => ws.free_f.push(std::mem::take(&mut ws.f[done])),
                        Repr::U8(_) => ws.free_q.push(std::mem::take(&mut ws.q[done])),
                    }
                }
            }
        }
        Ok(())
    }

    /// Per slot, the last step that reads it (None: no step reads it).
    fn last_reads(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.slots.len()];
        for (si, step) in self.steps.iter().enumerate() {
            for &i in &step.inputs {
                last[i] = Some(si);
            }
        }
        last
    }

    /// Gives slot `i` a buffer for `n` samples, reusing a freed one when there is one.
    fn ensure_buffer(&self, i: usize, n: usize, ws: &mut Workspace) {
        let need = n * self.slots[i].len;
        match self.slots[i].repr {
            Repr::F32 if ws.f[i].len() < need => {
                if ws.f[i].is_empty() {
                    ws.f[i] = take_free(&mut ws.free_f, need);
                }
                ws.f[i].resize(need, 0.0);
            }
            Repr::U8(_) if ws.q[i].len() < need => {
                if ws.q[i].is_empty() {
                    ws.q[i] = take_free(&mut ws.free_q, need);
                }
                ws.q[i].resize(need, 0);
            }
            _ => {}
        }
    }
}

/// The smallest freed buffer holding `need` values, else the largest (to be grown).
fn take_free<T>(free: &mut Vec<Vec<T>>, need: usize) -> Vec<T> {
    let fits = free.iter().enumerate().filter(|(_, b)| b.len() >= need).min_by_key(|(_, b)| b.len()).map(|(i, _)| i);
    let pick = fits.or_else(|| free.iter().enumerate().max_by_key(|(_, b)| b.len()).map(|(i, _)| i));
    pick.map(|i| free.swap_remove(i)).unwrap_or_default()
}

/// Values below which an element-wise step stays on one thread: waking a second one
/// costs about as much as it saves.
pub(super) const PAR_MIN_VALUES: usize = 1 << 14;

/// Values per share when `len` values in rows of `row` are split among `threads`, or
/// `None` when the step should stay on one thread.
fn par_chunk(threads: usize, len: usize, row: usize) -> Option<usize> {
    if threads <= 1 || len < 2 * PAR_MIN_VALUES {
        return None;
    }
    let rows = len / row.max(1);
    Some(rows.div_ceil(threads).max(PAR_MIN_VALUES / row.max(1)) * row)
}

/// `f` on rows of `row` values of `x` into `y`, the rows shared among up to `threads`
/// threads when there are enough of them to pay for the hand-over.
fn par_rows(threads: usize, x: &[f32], y: &mut [f32], row: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    use rayon::prelude::*;
    match par_chunk(threads, x.len(), row) {
        None => f(x, y),
        Some(chunk) => x.par_chunks(chunk).zip(y.par_chunks_mut(chunk)).for_each(|(x, y)| f(x, y)),
    }
}

/// [`par_rows`] on values overwritten in place.
fn par_rows_in_place(threads: usize, v: &mut [f32], row: usize, f: impl Fn(&mut [f32]) + Sync) {
    use rayon::prelude::*;
    match par_chunk(threads, v.len(), row) {
        None => f(v),
        Some(chunk) => v.par_chunks_mut(chunk).for_each(|c| f(c)),
    }
}

/// The kernel that runs a batch of `n` (a by-batch choice resolved).
fn resolve(kernel: &Kernel, n: usize) -> &Kernel {
    match kernel {
        Kernel::ByBatch(by) => by.iter().find(|(bound, _)| n < *bound).map_or(&by[by.len() - 1].1, |(_, k)| k),
        k => k,
    }
}

/// A float Linear kernel on `n` samples: `y = x·Wᵀ + b` (the dense product on up to
/// `threads` threads).
fn run_linear_f32(kernel: &Kernel, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Vec<f32>, threads: usize) {
    match kernel {
        Kernel::LinearF32 { w, b, inf, outf } => {
            sgemm_threads(n, *outf, *inf, MatRef::rows(x, *inf), MatRef::transposed(w, *inf), y, *outf, false, threads);
            if let Some(b) = b {
                for row in y.chunks_exact_mut(*outf) {
                    row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                }
            }
        }
        Kernel::LinearCsr { csr, b } => csr.forward(x, n, b.as_deref(), y),
        Kernel::LinearCodebook { cb, b } => cb.forward(x, n, b.as_deref(), y, scratch),
        _ => unreachable!("not a float Linear kernel"),
    }
}

/// Best-of-several seconds for one call of a Linear kernel on `batch` synthetic samples.
fn time_linear(kernel: &Kernel, batch: usize, inf: usize, outf: usize, u8_out: bool) -> f64 {
    // Enough repetitions for a stable minimum, about the same total work per batch size.
    let reps = (64 / batch).clamp(3, 32);
    let mut best = f64::INFINITY;
    match kernel {
        Kernel::LinearI8(l) => {
            let x: Vec<u8> = (0..batch * inf).map(|i| ((i * 7919) % 251) as u8).collect();
            let (mut yq, mut yf, mut acc) = (vec![0u8; batch * outf], vec![0f32; batch * outf], Vec::new());
            for _ in 0..reps {
                let t = std::time::Instant::now();
                if u8_out {
                    l.forward_u8(&x, batch, &mut yq, &mut acc);
                } else {
                    l.forward_f32(&x, batch, &mut yf, &mut acc);
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        _ => {
            let x: Vec<f32> = (0..batch * inf).map(|i| ((i * 7919) % 251) as f32 / 251.0).collect();
            let (mut y, mut scratch) = (vec![0f32; batch * outf], Vec::new());
            for _ in 0..reps {
                let t = std::time::Instant::now();
                run_linear_f32(kernel, &x, batch, &mut y, &mut scratch, 1);
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
    }
    best
}

fn observe_slot(slot: &Slot, data: &[f32], observe: &mut dyn FnMut(&str, &[f32])) {
    for name in &slot.names {
        observe(name, data);
    }
}

/// Disjoint borrows of buffer `a` (read) and `b` (write), `a != b`.
fn pair<T>(bufs: &mut [Vec<T>], a: usize, b: usize) -> (&[T], &mut [T]) {
    assert_ne!(a, b);
    if a < b {
        let (lo, hi) = bufs.split_at_mut(b);
        (&lo[a], &mut hi[0])
    } else {
        let (lo, hi) = bufs.split_at_mut(a);
        (&hi[0], &mut lo[b])
    }
}

fn take_weights(
    weights: &mut HashMap<String, Weights>,
    graph: &Graph,
    node: &str,
) -> Result<(Weights, Option<Vec<f32>>), RuntimeError> {
    let spec = graph.parameters();
    let find = |n: &str| spec.iter().find(|p| p.name == n).map(|p| p.numel());
    let wname = format!("{node}.weight");
    let w = weights.remove(&wname).ok_or_else(|| RuntimeError::MissingTensor { name: wname.clone() })?;
    let expected = find(&wname).unwrap_or(0);
    if w.len() != expected {
        return Err(RuntimeError::TensorSize { name: wname, expected, got: w.len() });
    }
    let bname = format!("{node}.bias");
    let b = match find(&bname) {
        None => None,
        Some(len) => {
            let b = weights.remove(&bname).ok_or_else(|| RuntimeError::MissingTensor { name: bname.clone() })?.to_f32();
            if b.len() != len {
                return Err(RuntimeError::TensorSize { name: bname, expected: len, got: b.len() });
            }
            Some(b)
        }
    };
    Ok((w, b))
}

/// Top-1 accuracy of `plan` on `images`/`labels`, batches of 256 over `threads` threads.
pub fn evaluate(plan: &Plan, images: &[f32], labels: &[u8], threads: usize) -> Result<f64, RuntimeError> {
    let n = labels.len();
    if n == 0 {
        return Ok(0.0);
    }
    let per = plan.input_len();
    if images.len() != n * per {
        return Err(RuntimeError::InputShape { got: images.len(), per_sample: per, shape: plan.input_shape.clone() });
    }
    let classes = plan.output_len();
    let threads = threads.max(1);
    let share = n.div_ceil(threads);
    let correct: Result<Vec<usize>, RuntimeError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = (t * share).min(n);
                let hi = ((t + 1) * share).min(n);
                s.spawn(move || {
                    let mut ws = Workspace::default();
                    let mut correct = 0;
                    let mut start = lo;
                    while start < hi {
                        let end = (start + 256).min(hi);
                        let out = plan.run(&images[start * per..end * per], end - start, &mut ws)?;
                        for (row, &y) in out.chunks_exact(classes).zip(&labels[start..end]) {
                            if super::kernels::argmax(row) == y as usize {
                                correct += 1;
                            }
                        }
                        start = end;
                    }
                    Ok(correct)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("evaluation thread panicked")).collect()
    });
    Ok(correct?.iter().sum::<usize>() as f64 / n as f64)
}

/// `softmax(logits / temperature)` of the first output for every image (the logits are
/// read before a final Softmax node), for distillation.
pub fn teacher_outputs(plan: &Plan, images: &[f32], temperature: f32) -> Result<Vec<f32>, RuntimeError> {
    let per = plan.input_len();
    let n = images.len() / per;
    let classes = plan.output_len();
    let logits_name = plan.logits_name.clone();
    let mut out = vec![0.0f32; n * classes];
    let mut ws = Workspace::default();
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        plan.run_observe(&images[start * per..end * per], end - start, &mut ws, &mut |name, data| {
            if name == logits_name {
                out[start * classes..end * classes].copy_from_slice(&data[..(end - start) * classes]);
            }
        })?;
    }
    out.iter_mut().for_each(|v| *v /= temperature);
    super::kernels::softmax_rows(&mut out, classes);
    Ok(out)
}

/// Batch-1 latencies in µs, one per image, one thread, float input to logits.
pub fn latencies_us(plan: &Plan, images: &[f32], count: usize) -> Result<Vec<f64>, RuntimeError> {
    let per = plan.input_len();
    let n = (images.len() / per).min(count);
    let mut ws = Workspace::default();
    // Warm up buffers and caches.
    for i in 0..n.min(50) {
        plan.run(&images[i * per..(i + 1) * per], 1, &mut ws)?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::time::Instant::now();
        let y = plan.run(&images[i * per..(i + 1) * per], 1, &mut ws)?;
        std::hint::black_box(y);
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Images per second streaming `images` in batches of `batch` on `threads` threads,
/// repeated until at least `min_seconds` have passed.
pub fn throughput(plan: &Plan, images: &[f32], batch: usize, threads: usize, min_seconds: f64) -> Result<f64, RuntimeError> {
    let per = plan.input_len();
    let n = images.len() / per;
    let batches = n / batch.max(1);
    if batches == 0 {
        return Ok(0.0);
    }
    let start = std::time::Instant::now();
    let mut done = 0usize;
    while done == 0 || start.elapsed().as_secs_f64() < min_seconds {
        let r: Result<Vec<usize>, RuntimeError> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|t| {
                    s.spawn(move || {
                        let mut ws = Workspace::default();
                        let mut count = 0;
                        for b in (t..batches).step_by(threads.max(1)) {
                            let x = &images[b * batch * per..(b + 1) * batch * per];
                            std::hint::black_box(plan.run(x, batch, &mut ws)?);
                            count += batch;
                        }
                        Ok(count)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("benchmark thread panicked")).collect()
        });
        done += r?.iter().sum::<usize>();
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::spec::{Node, QParams};

    fn lin(i: usize, o: usize) -> Op {
        Op::Linear { in_features: i, out_features: o, bias: true }
    }

    fn weights(graph: &Graph, rng: &mut Rng) -> HashMap<String, Vec<f32>> {
        graph.parameters().iter().map(|p| (p.name.clone(), (0..p.numel()).map(|_| rng.uniform(0.5)).collect())).collect()
    }

    /// y = W2·relu(W1·x + b1) + b2 by hand.
    fn reference(w: &HashMap<String, Vec<f32>>, x: &[f32]) -> Vec<f32> {
        let layer = |name: &str, x: &[f32], outf: usize| -> Vec<f32> {
            let (wt, b) = (&w[&format!("{name}.weight")], &w[&format!("{name}.bias")]);
            (0..outf).map(|o| b[o] + x.iter().enumerate().map(|(i, v)| v * wt[o * x.len() + i]).sum::<f32>()).collect()
        };
        let h: Vec<f32> = layer("fc1", x, 7).into_iter().map(|v| v.max(0.0)).collect();
        layer("fc2", &h, 3)
    }

    fn mlp() -> Graph {
        Graph::chain(vec![5], vec![("fc1", lin(5, 7)), ("relu", Op::Relu), ("fc2", lin(7, 3))])
    }

    #[test]
    fn f32_plan_matches_a_hand_computation() {
        let g = mlp();
        let mut rng = Rng::new(1);
        let w = weights(&g, &mut rng);
        let plan = Plan::new(&g, w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect(), &QuantPlan::default()).unwrap();
        assert_eq!(plan.kernel_description(), "f32-dense");
        let x: Vec<f32> = (0..4 * 5).map(|_| rng.next_f32()).collect();
        let mut ws = Workspace::default();
        let y = plan.run(&x, 4, &mut ws).unwrap().to_vec();
        for s in 0..4 {
            let want = reference(&w, &x[s * 5..(s + 1) * 5]);
            for (a, b) in y[s * 3..(s + 1) * 3].iter().zip(&want) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn int8_plan_fuses_relu_and_stays_close_to_float() {
        let g = mlp();
        let mut rng = Rng::new(2);
        let w = weights(&g, &mut rng);
        let mut stored = HashMap::new();
        for (k, v) in &w {
            if k.ends_with("weight") {
                let rows = if k.starts_with("fc1") { 7 } else { 3 };
                let cols = v.len() / rows;
                let mut q = Vec::new();
                let mut scales = Vec::new();
                for r in v.chunks(cols) {
                    let s = r.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                    scales.push(s);
                    q.extend(r.iter().map(|x| (x / s).round() as i8));
                }
                stored.insert(k.clone(), Weights::I8 { q, scales });
            } else {
                stored.insert(k.clone(), Weights::F32(v.clone()));
            }
        }
        let quant = QuantPlan {
            integer_nodes: ["fc1".to_string(), "fc2".to_string()].into(),
            activations: [("input".to_string(), QParams::from_range(0.0, 1.0)), ("relu".to_string(), QParams::from_range(0.0, 2.0))].into(),
            ..Default::default()
        };
        let plan = Plan::new(&g, stored, &quant).unwrap();
        assert!(plan.kernel_description().starts_with("int8-"), "{}", plan.kernel_description());
        // Quantize, fc1+relu (fused), fc2 → f32 logits: three steps, no separate ReLU.
        assert_eq!(plan.steps.len(), 3);
        let x: Vec<f32> = (0..8 * 5).map(|_| rng.next_f32()).collect();
        let mut ws = Workspace::default();
        let y = plan.run(&x, 8, &mut ws).unwrap().to_vec();
        for s in 0..8 {
            let want = reference(&w, &x[s * 5..(s + 1) * 5]);
            for (a, b) in y[s * 3..(s + 1) * 3].iter().zip(&want) {
                assert!((a - b).abs() < 0.05, "{a} vs {b}");
            }
        }
    }

    /// An all-integer MLP (odd widths, one layer stored sparse so its kernel is chosen
    /// per batch) runs as one fused chain, block by block, and gives exactly the bits of
    /// the same steps run one after another over the whole batch, at batches around
    /// the block size.
    #[test]
    fn fused_integer_chain_equals_step_by_step() {
        for normalize in [false, true] {
            fused_chain_case(normalize);
        }
    }

    fn fused_chain_case(normalize: bool) {
        let mut layers = vec![("fc1", lin(37, 29)), ("r1", Op::Relu), ("fc2", lin(29, 23)), ("r2", Op::Relu), ("fc3", lin(23, 5)), ("sm", Op::Softmax)];
        if normalize {
            // As the zoo models start: standardise, flatten.
            layers.splice(0..0, [("norm", Op::Normalize { mean: vec![0.3], std: vec![0.45] }), ("flat", Op::Flatten)]);
        }
        let g = Graph::chain(if normalize { vec![1, 37] } else { vec![37] }, layers);
        let mut rng = Rng::new(31);
        let mut stored = HashMap::new();
        for p in g.parameters() {
            let v: Vec<f32> = (0..p.numel()).map(|i| if p.name == "fc2.weight" && i % 3 != 0 { 0.0 } else { rng.uniform(0.5) }).collect();
            if p.name.ends_with("weight") {
                let rows = p.shape[0];
                let scales: Vec<f32> = v.chunks(v.len() / rows).map(|r| r.iter().fold(1e-6f32, |m, x| m.max(x.abs())) / 127.0).collect();
                let q = v.iter().enumerate().map(|(i, x)| (x / scales[i / (v.len() / rows)]).round() as i8).collect();
                stored.insert(p.name.clone(), Weights::I8 { q, scales });
            } else {
                stored.insert(p.name.clone(), Weights::F32(v));
            }
        }
        let quant = QuantPlan {
            integer_nodes: ["fc1", "fc2", "fc3"].iter().map(|s| s.to_string()).collect(),
            activations: [(if normalize { "flat" } else { "input" }, (-0.7, 2.0)), ("r1", (0.0, 3.0)), ("r2", (0.0, 2.5))]
                .iter()
                .map(|(n, (lo, hi))| (n.to_string(), QParams::from_range(*lo, *hi)))
                .collect(),
            ..Default::default()
        };
        let encodings: HashMap<String, Encoding> = [("fc2.weight".to_string(), Encoding { sparse: true, codebook: None })].into();
        let plan = Plan::with_encodings(&g, stored, &quant, &encodings).unwrap();
        assert_eq!(plan.chain.map(|c| c.steps), Some(4 + normalize as usize), "[normalize +] quantize + three integer layers");
        for batch in [1usize, 5, CHAIN_ROWS - 1, CHAIN_ROWS, CHAIN_ROWS + 1, 3 * CHAIN_ROWS + 7, 256] {
            let x: Vec<f32> = (0..batch * 37).map(|_| rng.next_f32() * 1.2 - 0.1).collect();
            let fused = plan.run(&x, batch, &mut Workspace::default()).unwrap().to_vec();
            let mut ws = Workspace::default();
            plan.execute(&x, batch, &mut ws, false, &mut |_, _| {}, 1).unwrap();
            let o = plan.outputs[0];
            assert_eq!(fused, ws.f[o][..batch * 5], "batch {batch} normalize {normalize}");
            assert!(fused.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
    }

    /// A pruned and weight-shared model run with its encodings (sparse/codebook kernels
    /// timed and chosen per batch size) agrees with the dense plan at every batch size,
    /// and the description says what was chosen for each layer.
    #[test]
    fn encoded_layers_agree_with_dense_at_every_batch() {
        let g = Graph::chain(vec![37], vec![("fc1", lin(37, 29)), ("relu", Op::Relu), ("fc2", lin(29, 5))]);
        let mut rng = Rng::new(6);
        let mut w = weights(&g, &mut rng);
        let centroids = vec![-0.4f32, -0.1, 0.2, 0.45];
        let indices: Vec<u16> = (0..29 * 37).map(|_| rng.below(4) as u16).collect();
        let kept: Vec<bool> = (0..29 * 37).map(|_| rng.below(10) < 7).collect();
        w.insert("fc1.weight".into(), (0..29 * 37).map(|i| if kept[i] { centroids[indices[i] as usize] } else { 0.0 }).collect());
        w.get_mut("fc2.weight").unwrap().iter_mut().enumerate().for_each(|(i, v)| if i % 10 != 0 { *v = 0.0 });
        let dense = |w: &HashMap<String, Vec<f32>>| w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect::<HashMap<_, _>>();
        let encodings: HashMap<String, Encoding> = [
            ("fc1.weight".to_string(), Encoding { sparse: true, codebook: Some(CodebookIndices { indices, centroids, kept: Some(kept) }) }),
            ("fc2.weight".to_string(), Encoding { sparse: true, codebook: None }),
        ]
        .into();
        let plain = Plan::new(&g, dense(&w), &QuantPlan::default()).unwrap();
        let encoded = Plan::with_encodings(&g, dense(&w), &QuantPlan::default(), &encodings).unwrap();
        let desc = encoded.kernel_description();
        assert_eq!(encoded.layer_choices().len(), 2, "{desc}");
        assert!(desc.contains("fc1 (") && desc.contains("fc2 (90% zeros)"), "{desc}");
        for batch in [1usize, 2, 15, 16, 17, 255, 256, 257] {
            let x: Vec<f32> = (0..batch * 37).map(|_| rng.next_f32()).collect();
            let a = plain.run(&x, batch, &mut Workspace::default()).unwrap().to_vec();
            let b = encoded.run(&x, batch, &mut Workspace::default()).unwrap().to_vec();
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + p.abs()) * 37.0, "batch {batch}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn missing_qparams_and_float_weights_for_integer_nodes_are_errors() {
        let g = mlp();
        let w = weights(&g, &mut Rng::new(3));
        let f: HashMap<String, Weights> = w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect();
        let quant = QuantPlan { integer_nodes: ["fc1".to_string()].into(), ..Default::default() };
        assert!(matches!(Plan::new(&g, f.clone(), &quant), Err(RuntimeError::NotInt8 { .. })));
        let mut missing = f;
        missing.remove("fc2.bias");
        assert!(matches!(Plan::new(&g, missing, &QuantPlan::default()), Err(RuntimeError::MissingTensor { .. })));
    }

    /// Token ids: padding masks attention keys (a padded sample gives the output of its
    /// unpadded prefix through attention + mean pooling), and an id outside the
    /// vocabulary is an error naming the node, not a panic.
    #[test]
    fn token_ids_padding_and_bad_ids() {
        let g = Graph::chain(
            vec![4],
            vec![
                ("emb", Op::Embedding { vocab: 6, dim: 4, pad_token: Some(0) }),
                ("attn", Op::SelfAttention { dim: 4, heads: 2, causal: false, head_dim: None }),
                ("pool", Op::Pool { kind: PoolKind::Mean }),
            ],
        );
        let w = weights(&g, &mut Rng::new(9));
        let dense = |w: &HashMap<String, Vec<f32>>| w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect::<HashMap<_, _>>();
        let plan = Plan::new(&g, dense(&w), &QuantPlan::default()).unwrap();
        let padded = plan.run(&[3.0, 5.0, 0.0, 0.0], 1, &mut Workspace::default()).unwrap().to_vec();
        let mut g2 = g.clone();
        g2.input_shape = vec![2];
        let short = Plan::new(&g2, dense(&w), &QuantPlan::default()).unwrap();
        let want = short.run(&[3.0, 5.0], 1, &mut Workspace::default()).unwrap().to_vec();
        for (a, b) in padded.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        for bad in [6.0, -1.0, 2.5, f32::NAN] {
            let e = plan.run(&[1.0, bad, 0.0, 0.0], 1, &mut Workspace::default()).unwrap_err();
            assert!(matches!(e, RuntimeError::TokenId { ref node, vocab: 6, .. } if node == "emb"), "{e}");
        }
    }

    /// Values hand their buffers on once no later step reads them: a ViT run holds far
    /// fewer floats than all its values, and a workspace reused across batch sizes
    /// gives the same bits as a fresh one.
    #[test]
    fn workspace_reuses_dead_values_and_gives_the_same_bits() {
        let g = crate::model::zoo::vit(&crate::model::zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 3, ffn: 40 });
        let m = crate::model::Model::init(g.clone(), 3).unwrap();
        let plan = Plan::new(&g, m.tensors().into_iter().map(|(k, v)| (k, Weights::F32(v))).collect(), &QuantPlan::default()).unwrap();
        let mut rng = Rng::new(9);
        let x: Vec<f32> = (0..7 * 784).map(|_| rng.next_f32()).collect();
        let mut shared = Workspace::default();
        for n in [7, 2, 5, 7] {
            let fresh = plan.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
            let reused = plan.run(&x, n, &mut shared).unwrap().to_vec();
            assert_eq!(fresh, reused, "batch {n}");
        }
        let all: usize = plan.slots.iter().map(|s| 7 * s.len).sum();
        let held: usize = shared.f.iter().chain(&shared.free_f).map(Vec::len).sum();
        assert!(held * 3 < all, "holds {held} floats of {all}");
        // Every output is still readable after the run.
        let outs = plan.run_all(&x, 2, &mut shared).unwrap();
        assert_eq!(outs[0].len(), 2 * 10);
    }

    #[test]
    fn two_heads_and_residual_run() {
        let g = Graph {
            input_shape: vec![4],
            nodes: vec![
                Node { name: "a".into(), inputs: vec![INPUT.into()], op: lin(4, 4) },
                Node { name: "sum".into(), inputs: vec!["a".into(), INPUT.into()], op: Op::Add },
                Node { name: "h1".into(), inputs: vec!["sum".into()], op: lin(4, 2) },
                Node { name: "h2".into(), inputs: vec!["sum".into()], op: lin(4, 3) },
            ],
            outputs: vec!["h1".into(), "h2".into()],
            io_names: Default::default(),
        };
        let w = weights(&g, &mut Rng::new(4));
        let plan = Plan::new(&g, w.into_iter().map(|(k, v)| (k, Weights::F32(v))).collect(), &QuantPlan::default()).unwrap();
        let out = plan.run_all(&[0.1, 0.2, 0.3, 0.4], 1, &mut Workspace::default()).unwrap();
        assert_eq!((out[0].len(), out[1].len()), (2, 3));
    }
}
