//! The executor: a [`Plan`] resolves a graph, its stored weights and its quantization
//! plan into a list of kernel calls once; [`Plan::run`] then executes them over a
//! reusable [`Workspace`].
//!
//! Values are either f32 or u8 with quantization parameters. Integer nodes (listed in
//! the [`QuantPlan`](crate::spec::QuantPlan)) take u8 input and produce u8 (requantized, with a following ReLU
//! fused) or f32 when their output has no calibrated parameters (logits). Conversions
//! are inserted where a consumer needs the other representation; Flatten is free.
//!
//! Files: this one holds the types (weights, kernels, the plan, the workspace); `build`
//! builds a plan, `run` executes it, `eval` measures it on data (accuracy, latency,
//! throughput), `tests` tests them.

use std::collections::{BTreeMap, HashMap};

use super::int8::{self, DynamicLinear, QuantizedConv2d, QuantizedLinear};
use super::intops;
use super::recurrent;
use super::transformer::{Heads, Patches, ValidLengths};
use super::kernels::{sgemm_threads, DirectConv, MatRef, Window};
use super::packed::PackedLinear;
use super::sparse::{CodebookF32, CsrF32};
use crate::spec::{QParams, Recurrent, SpecError};

mod build;
mod eval;
mod run;
#[cfg(test)]
mod tests;

pub use eval::{evaluate, latencies_us, teacher_outputs, throughput};
pub(in crate::runtime) use run::PAR_MIN_VALUES;

use run::run_linear_f32;

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
    /// The general GEMM (the `gemm` crate), which packs `w` on every call.
    LinearF32 { w: Vec<f32>, b: Option<Vec<f32>>, inf: usize, outf: usize },
    /// Weights packed once for squeeze's AVX2/AVX-512 kernel.
    LinearPacked(Box<PackedLinear>),
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
            Kernel::LinearF32 { .. } | Kernel::LinearPacked(_) => "linear f32",
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
    /// Weights packed once for squeeze's AVX2/AVX-512 kernel.
    Packed(Box<PackedLinear>),
    /// u8 input at `input`, f32 output.
    I8 { layer: Box<QuantizedLinear>, input: QParams },
    /// f32 input quantized per row at run time, f32 output.
    Dynamic(Box<DynamicLinear>),
}

impl Projection {
    /// An f32 projection (`w` is `[outf, inf]`): packed where AVX2 or AVX-512 runs it.
    fn f32(w: Vec<f32>, b: Vec<f32>, inf: usize, outf: usize) -> Projection {
        if crate::runtime::isa::avx2() {
            Projection::Packed(Box::new(PackedLinear::new(&w, Some(&b), inf, outf)))
        } else {
            Projection::F32 { w, b }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Projection::F32 { .. } | Projection::Packed(_) => "attention projection f32",
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
            Projection::Packed(p) => p.forward(&x[..rows * inf], rows, &mut y[..rows * outf], threads),
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
    /// Which of `outputs` a classifier scores ([`crate::spec::Graph::head`]).
    head: usize,
    /// The value holding the head output's logits: the input of a final Softmax, else
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

impl Plan {
    /// Per-sample input length.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of classes (length of the head output, [`crate::spec::Graph::head`]).
    pub fn output_len(&self) -> usize {
        self.slots[self.outputs[self.head]].len
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
}
