//! The architecture as plain data: a graph of named nodes, their shapes and the
//! names of their parameters, plus the quantization plan a compressed model carries.
//!
//! A [`Graph`] is what importers build, what the zoo returns, what safetensors
//! metadata and the `.sqz` container store (as JSON), and what both the trainer
//! (`model`) and the inference runtime (`runtime`) execute. Nothing here holds a
//! tensor: shapes are per sample, the batch dimension is implicit.
//!
//! Values are named: the graph input is called [`INPUT`], every node's output is
//! called by the node's name. A node lists the values it reads in `inputs`; nodes are
//! stored in an order where every input is defined before it is read (checked by
//! [`Graph::validate`]). A plain chain is the common case, but residual adds and
//! several output heads are ordinary graphs.
//!
//! Parameters of node `n` are named `n.weight` and `n.bias`, in PyTorch's layouts:
//! Linear weight `[out, in]`, Conv2d weight `[out_channels, in_channels, k, k]`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// The name of the graph's input value.
pub const INPUT: &str = "input";

/// The number of elements of `shape`, or `None` when the product overflows (a corrupt
/// or hand-made shape in a file).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A shape error or a malformed graph.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("node '{node}': reads '{value}', which is not defined before it")]
    UnknownValue { node: String, value: String },
    #[error("node '{node}': name is used twice (or is the reserved name '{INPUT}')")]
    DuplicateName { node: String },
    #[error("node '{node}': expects {expected} input(s), got {got}")]
    Arity { node: String, expected: usize, got: usize },
    #[error("node '{node}': input shape {got:?} does not fit: {why}")]
    Shape { node: String, got: Vec<usize>, why: String },
    #[error("graph output '{0}' is not a node")]
    UnknownOutput(String),
    #[error("graph has no outputs")]
    NoOutputs,
}

/// One operation. Serialised with an `op` tag, e.g. `{"op":"linear","in_features":784,...}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// `y = x · Wᵀ + b` on the last dim: `[.., in_features]` → `[.., out_features]`
    /// (every leading position is one row, so a Transformer's projections and FFN are
    /// ordinary Linear nodes).
    Linear { in_features: usize, out_features: usize, bias: bool },
    /// 2-D convolution on `[C, H, W]` with square kernel, zero padding. With `groups`
    /// > 1 the channels split into that many groups convolved apart (depthwise when
    /// `groups == in_channels`): the weight is `[out_channels, in_channels / groups, k,
    /// k]`. `dilation` spaces the kernel taps (ONNX `dilations`, PyTorch `dilation`).
    /// Both default to 1 and are left out of the JSON then, so files written before
    /// they existed read (and write) unchanged.
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        dilation: usize,
    },
    /// Max pooling on `[C, H, W]`; `padding` (default 0, smaller than the kernel) pads
    /// each side with values that never win (ONNX `pads`, PyTorch `padding`).
    MaxPool2d {
        kernel: usize,
        stride: usize,
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
    },
    /// Average pooling on `[C, H, W]` with zero padding counted in the average
    /// (ONNX `count_include_pad = 1`, PyTorch's default); a global average pool is the
    /// kernel covering the whole map.
    AvgPool2d { kernel: usize, stride: usize, padding: usize },
    /// Any shape to 1-D.
    Flatten,
    Relu,
    /// Logistic `1 / (1 + e^−x)`, element-wise.
    Sigmoid,
    /// Hyperbolic tangent, element-wise.
    Tanh,
    /// Element-wise sum of two values of the same shape (residual connections).
    Add,
    /// Input preprocessing `y = (x − mean) / std`, one value for all elements or one
    /// per channel of a `[C, H, W]` value. Part of the model, so every runtime and
    /// exporter feeds the same numbers.
    Normalize { mean: Vec<f32>, std: Vec<f32> },
    /// Softmax over a 1-D value. As a graph output it marks a classifier head: the
    /// trainer fuses it with cross-entropy and reads the logits before it.
    Softmax,
    /// LSTM over a sequence `[steps, input_size]` (batch-first, as PyTorch's
    /// `batch_first=True` sees one sample), zero initial state. Parameters in PyTorch's
    /// layout and gate order (i, f, g, o): `weight_ih [4H, I]`, `weight_hh [4H, H]`,
    /// `bias_ih [4H]`, `bias_hh [4H]`. The output is the last hidden state `[H]`, or
    /// every step's hidden state `[steps, H]` with `sequence` (to stack layers: several
    /// layers are several nodes, each but the last with `sequence`).
    ///
    /// `bidirectional` adds a second direction that reads the sequence from its last
    /// step to its first, with its own parameters `weight_ih_reverse`, ... (PyTorch's
    /// `_reverse`); the output concatenates the two per step: `[steps, 2H]` (the reverse
    /// half of step `t` has seen steps `t..`), or without `sequence` `[2H]` = the
    /// forward direction's state after the last step and the reverse direction's after
    /// the first (PyTorch's `h_n[-2]`, `h_n[-1]`).
    Lstm {
        input_size: usize,
        hidden: usize,
        bias: bool,
        #[serde(default)]
        sequence: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        bidirectional: bool,
    },
    /// GRU over a sequence `[steps, input_size]`, zero initial state, PyTorch's layout
    /// and gate order (r, z, n): `weight_ih [3H, I]`, `weight_hh [3H, H]`, `bias_ih
    /// [3H]`, `bias_hh [3H]` (kept apart: `b_hn` sits inside the reset product).
    /// Output and `bidirectional` as for [`Op::Lstm`].
    Gru {
        input_size: usize,
        hidden: usize,
        bias: bool,
        #[serde(default)]
        sequence: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        bidirectional: bool,
    },
    /// Token ids `[seq]` (f32 holding integers, exact below 2²⁴) → rows of
    /// `weight [vocab, dim]`: `[seq, dim]`. With `pad_token`, trailing ids equal to it
    /// are padding: attention does not attend to them and mean pooling skips them.
    Embedding { vocab: usize, dim: usize, pad_token: Option<usize> },
    /// Adds rows `0..seq` of `weight [max_len, dim]` to `[seq, dim]`.
    PositionEmbedding { max_len: usize, dim: usize },
    /// Prepends a learned row `weight [dim]`: `[seq, dim]` → `[seq + 1, dim]` (ViT's CLS token).
    ClsToken { dim: usize },
    /// Non-overlapping `patch`×`patch` patches of `[channels, H, W]`, each mapped by
    /// `weight [dim, channels·patch·patch]` (patch flattened channel, row, column, as a
    /// strided Conv2d's kernel) plus `bias [dim]`: `[(H/patch)·(W/patch), dim]`, patches in
    /// row-major order.
    PatchEmbed { channels: usize, patch: usize, dim: usize },
    /// Layer normalisation over the last dim: `(x − mean) / √(var + eps) · weight + bias`.
    LayerNorm { dim: usize, eps: f32 },
    /// GELU, exact erf form `x · Φ(x)`, element-wise.
    Gelu,
    /// Multi-head scaled dot-product self-attention on `[seq, dim]` with query, key,
    /// value and output projections (HF BERT names). Each head has `head_dim` features
    /// (default `dim / heads`); the projection width is `heads · head_dim`: query, key
    /// and value weights are `[heads·head_dim, dim]` with `[heads·head_dim]` biases, the
    /// output weight is `[dim, heads·head_dim]` with a `[dim]` bias, so the residual
    /// width stays `dim` when heads are trimmed. Padding keys (see [`Op::Embedding`])
    /// are masked; `causal` also masks every key after the query.
    SelfAttention {
        dim: usize,
        heads: usize,
        causal: bool,
        /// Features per head; absent (the usual `dim / heads`) in files written before
        /// head trimming and whenever `heads · head_dim = dim`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head_dim: Option<usize>,
    },
    /// `[seq, dim]` → `[dim]`: the first row (`cls`) or the mean over valid (non-padding) rows.
    Pool { kind: PoolKind },
}

/// How [`Op::Pool`] reduces a sequence.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Cls,
    Mean,
}

/// The projections of a [`Op::SelfAttention`] node, in parameter order; each has
/// `<node>.<name>.weight` and `<node>.<name>.bias` (shapes in [`Op::SelfAttention`]).
pub const ATTENTION_PROJECTIONS: [&str; 4] = ["query", "key", "value", "output"];

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// A convolution's geometry as a plain (ungrouped, undilated) convolution computes
/// it: the weight `[out_channels, in_channels / groups, k, k]` placed block-diagonally
/// into `[out_channels, in_channels, k_eff, k_eff]` with its taps `dilation` apart,
/// zeros elsewhere. Every kernel runs grouped and dilated convolutions this way: the
/// extra terms are exact zeros, so sums are unchanged, at `groups × dilation²`-ish the
/// work of a dedicated kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvExpansion {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub groups: usize,
    pub dilation: usize,
}

impl ConvExpansion {
    /// The expansion of a Conv2d op (None for any other op).
    pub fn of(op: &Op) -> Option<ConvExpansion> {
        match *op {
            Op::Conv2d { in_channels, out_channels, kernel, groups, dilation, .. } => {
                Some(ConvExpansion { in_channels, out_channels, kernel, groups: groups.max(1), dilation: dilation.max(1) })
            }
            _ => None,
        }
    }

    /// Whether the stored weight already is the plain one.
    pub fn is_plain(&self) -> bool {
        self.groups == 1 && self.dilation == 1
    }

    /// Kernel side of the equivalent plain convolution: `(k − 1)·dilation + 1`.
    pub fn effective_kernel(&self) -> usize {
        (self.kernel.max(1) - 1) * self.dilation + 1
    }

    /// For each value of the stored weight, its index in the expanded one.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        let (ig, og) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let (k, ke, d) = (self.kernel, self.effective_kernel(), self.dilation);
        (0..self.out_channels).flat_map(move |o| {
            let g = o / og.max(1);
            (0..ig).flat_map(move |c| {
                (0..k).flat_map(move |ki| (0..k).map(move |kj| ((o * self.in_channels + g * ig + c) * ke + ki * d) * ke + kj * d))
            })
        })
    }

    /// Values of the expanded weight.
    pub fn expanded_len(&self) -> usize {
        let ke = self.effective_kernel();
        self.out_channels * self.in_channels * ke * ke
    }

    /// The expanded weight of a stored one (zeros off the groups and between taps).
    pub fn expand<T: Copy + Default>(&self, w: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); self.expanded_len()];
        for (&v, i) in w.iter().zip(self.positions()) {
            out[i] = v;
        }
        out
    }

    /// Adds the stored weight's share of an expanded weight's gradient to `dw`.
    pub fn gather_add(&self, expanded: &[f32], dw: &mut [f32]) {
        for (d, i) in dw.iter_mut().zip(self.positions()) {
            *d += expanded[i];
        }
    }
}

/// The shape of a recurrent node, as its kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recurrent {
    pub cell: Cell,
    pub input_size: usize,
    pub hidden: usize,
    pub bias: bool,
    /// Whether every step's hidden state is returned (else only the last).
    pub sequence: bool,
    /// A second direction over the reversed sequence (see [`Op::Lstm`]).
    pub bidirectional: bool,
}

/// The shape of a self-attention node, as its kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    /// Residual width (the node's input and output features).
    pub dim: usize,
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
    pub causal: bool,
}

impl Attention {
    /// Width of the projected queries, keys, values and context: `heads · head_dim`.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Which recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    Lstm,
    Gru,
}

impl Cell {
    /// Gates per hidden unit: 4 for LSTM (i, f, g, o), 3 for GRU (r, z, n).
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

impl Recurrent {
    /// Rows of `weight_ih`/`weight_hh` and length of each bias: gates × hidden.
    pub fn gate_rows(&self) -> usize {
        self.cell.gates() * self.hidden
    }

    /// 2 for a bidirectional node, else 1.
    pub fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// The geometry of one direction (what the single-direction kernels run).
    pub fn one_direction(&self) -> Recurrent {
        Recurrent { bidirectional: false, ..*self }
    }

    /// Features per output step: `directions · hidden`.
    pub fn output_width(&self) -> usize {
        self.directions() * self.hidden
    }

    /// Parameter suffix of `suffix` (from [`RECURRENT_PARAMS`]) for direction `d`
    /// (0 forward, 1 reverse: PyTorch's `_reverse`).
    pub fn param_suffix(suffix: &str, d: usize) -> String {
        if d == 0 { suffix.to_string() } else { format!("{suffix}{REVERSE_SUFFIX}") }
    }
}

/// What a bidirectional node's reverse-direction parameters append to the names.
pub const REVERSE_SUFFIX: &str = "_reverse";

/// Suffixes of a recurrent node's parameters, in [`Graph::parameters`] order.
pub const RECURRENT_PARAMS: [(&str, ParamKind); 4] =
    [("weight_ih", ParamKind::Weight), ("weight_hh", ParamKind::Weight), ("bias_ih", ParamKind::Bias), ("bias_hh", ParamKind::Bias)];

impl Op {
    /// How many values the op reads.
    pub fn arity(&self) -> usize {
        match self {
            Op::Add => 2,
            _ => 1,
        }
    }

    /// Whether the op has a `weight` (and possibly `bias`) parameter.
    pub fn has_weight(&self) -> bool {
        matches!(self, Op::Linear { .. } | Op::Conv2d { .. })
    }

    /// Whether the op has trainable parameters of any kind (weighted, recurrent or a
    /// Transformer op's tables, projections and norms).
    pub fn has_params(&self) -> bool {
        self.has_weight()
            || self.recurrent().is_some()
            || matches!(
                self,
                Op::Embedding { .. } | Op::PositionEmbedding { .. } | Op::ClsToken { .. } | Op::PatchEmbed { .. } | Op::LayerNorm { .. } | Op::SelfAttention { .. }
            )
    }

    /// The geometry of a SelfAttention node (`head_dim` resolved; `dim / heads` when
    /// absent).
    pub fn attention(&self) -> Option<Attention> {
        match *self {
            Op::SelfAttention { dim, heads, causal, head_dim } => {
                Some(Attention { dim, heads, head_dim: head_dim.unwrap_or(dim / heads.max(1)), causal })
            }
            _ => None,
        }
    }

    /// The recurrent geometry of an LSTM or GRU node.
    pub fn recurrent(&self) -> Option<Recurrent> {
        match *self {
            Op::Lstm { input_size, hidden, bias, sequence, bidirectional } => Some(Recurrent { cell: Cell::Lstm, input_size, hidden, bias, sequence, bidirectional }),
            Op::Gru { input_size, hidden, bias, sequence, bidirectional } => Some(Recurrent { cell: Cell::Gru, input_size, hidden, bias, sequence, bidirectional }),
            _ => None,
        }
    }

    /// A short human name, as `inspect` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "Linear",
            Op::Conv2d { .. } => "Conv2d",
            Op::MaxPool2d { .. } => "MaxPool2d",
            Op::AvgPool2d { .. } => "AvgPool2d",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Flatten => "Flatten",
            Op::Relu => "ReLU",
            Op::Add => "Add",
            Op::Softmax => "Softmax",
            Op::Normalize { .. } => "Normalize",
            Op::Lstm { .. } => "LSTM",
            Op::Gru { .. } => "GRU",
            Op::Embedding { .. } => "Embedding",
            Op::PositionEmbedding { .. } => "PositionEmbedding",
            Op::ClsToken { .. } => "ClsToken",
            Op::PatchEmbed { .. } => "PatchEmbed",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::Gelu => "GELU",
            Op::SelfAttention { .. } => "SelfAttention",
            Op::Pool { .. } => "Pool",
        }
    }
}

/// A named node of the graph.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub op: Op,
}

/// A network: per-sample input shape, nodes in execution order, output value names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub input_shape: Vec<usize>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<String>,
    /// The names the graph input ([`INPUT`]) and output values had in the file the model
    /// was imported from, where they differ from squeeze's value names: value → original
    /// name (an ONNX model's `image` input, `logits` output). The ONNX exporter writes
    /// these names, so that an export can replace the original file. Empty for zoo and
    /// PyTorch models (they keep squeeze's names); absent from files written before it
    /// existed and not written when empty, so those files read and write unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub io_names: BTreeMap<String, String>,
}

/// Whether a parameter is a weight matrix/kernel or a bias vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    Bias,
}

/// A parameter the graph declares.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub node: String,
    pub kind: ParamKind,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Graph {
    /// Puts `op` first: it reads the graph input and every node that read the input
    /// reads it instead (e.g. preprocessing stated for an imported model). Its name is
    /// `name`, with `_` appended until no node has it. Returns the name.
    pub fn prepend(&mut self, name: &str, op: Op) -> String {
        let mut name = name.to_string();
        while self.nodes.iter().any(|n| n.name == name) {
            name.push('_');
        }
        for node in &mut self.nodes {
            for i in &mut node.inputs {
                if i == INPUT {
                    *i = name.clone();
                }
            }
        }
        for o in &mut self.outputs {
            if o == INPUT {
                *o = name.clone();
            }
        }
        self.nodes.insert(0, Node { name: name.clone(), inputs: vec![INPUT.into()], op });
        name
    }

    /// A chain: each node reads the previous one (the first reads the input), the last
    /// is the single output.
    pub fn chain(input_shape: Vec<usize>, layers: Vec<(&str, Op)>) -> Graph {
        let mut nodes = Vec::with_capacity(layers.len());
        let mut prev = INPUT.to_string();
        for (name, op) in layers {
            nodes.push(Node { name: name.to_string(), inputs: vec![prev.clone()], op });
            prev = name.to_string();
        }
        Graph { input_shape, nodes, outputs: vec![prev], io_names: BTreeMap::new() }
    }

    /// Checks names, wiring and shapes; returns the per-sample shape of every value.
    pub fn validate(&self) -> Result<HashMap<String, Vec<usize>>, SpecError> {
        let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
        shapes.insert(INPUT.to_string(), self.input_shape.clone());
        for node in &self.nodes {
            if shapes.contains_key(&node.name) {
                return Err(SpecError::DuplicateName { node: node.name.clone() });
            }
            if node.inputs.len() != node.op.arity() {
                return Err(SpecError::Arity {
                    node: node.name.clone(),
                    expected: node.op.arity(),
                    got: node.inputs.len(),
                });
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for v in &node.inputs {
                match shapes.get(v) {
                    Some(s) => ins.push(s.clone()),
                    None => {
                        return Err(SpecError::UnknownValue {
                            node: node.name.clone(),
                            value: v.clone(),
                        });
                    }
                }
            }
            let out = output_shape(&node.name, &node.op, &ins)?;
            shapes.insert(node.name.clone(), out);
        }
        if self.outputs.is_empty() {
            return Err(SpecError::NoOutputs);
        }
        for o in &self.outputs {
            if o == INPUT || !shapes.contains_key(o) {
                return Err(SpecError::UnknownOutput(o.clone()));
            }
        }
        Ok(shapes)
    }

    /// Every parameter in a fixed order (node order, weight before bias).
    pub fn parameters(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        for node in &self.nodes {
            if let Some(r) = node.op.recurrent() {
                let rows = r.gate_rows();
                // PyTorch's order: the forward direction's four, then the reverse's.
                for d in 0..r.directions() {
                    for (suffix, kind) in RECURRENT_PARAMS {
                        let shape = match suffix {
                            "weight_ih" => vec![rows, r.input_size],
                            "weight_hh" => vec![rows, r.hidden],
                            _ if r.bias => vec![rows],
                            _ => continue,
                        };
                        out.push(ParamSpec { name: format!("{}.{}", node.name, Recurrent::param_suffix(suffix, d)), node: node.name.clone(), kind, shape });
                    }
                }
                continue;
            }
            let mut push = |suffix: &str, kind: ParamKind, shape: Vec<usize>| {
                out.push(ParamSpec { name: format!("{}.{suffix}", node.name), node: node.name.clone(), kind, shape })
            };
            match node.op {
                Op::Embedding { vocab, dim, .. } => push("weight", ParamKind::Weight, vec![vocab, dim]),
                Op::PositionEmbedding { max_len, dim } => push("weight", ParamKind::Weight, vec![max_len, dim]),
                // A single learned row: a vector like a bias (not pruned or quantized).
                Op::ClsToken { dim } => push("weight", ParamKind::Bias, vec![dim]),
                Op::PatchEmbed { channels, patch, dim } => {
                    push("weight", ParamKind::Weight, vec![dim, channels * patch * patch]);
                    push("bias", ParamKind::Bias, vec![dim]);
                }
                // The scale is a per-feature vector, kept float like a bias.
                Op::LayerNorm { dim, .. } => {
                    push("weight", ParamKind::Bias, vec![dim]);
                    push("bias", ParamKind::Bias, vec![dim]);
                }
                Op::SelfAttention { dim, .. } => {
                    let inner = node.op.attention().map_or(dim, |a| a.inner());
                    for proj in ATTENTION_PROJECTIONS {
                        let (out, inp) = if proj == "output" { (dim, inner) } else { (inner, dim) };
                        push(&format!("{proj}.weight"), ParamKind::Weight, vec![out, inp]);
                        push(&format!("{proj}.bias"), ParamKind::Bias, vec![out]);
                    }
                }
                _ => {}
            }
            let (wshape, bias_len, bias) = match node.op {
                Op::Linear { in_features, out_features, bias } => {
                    (vec![out_features, in_features], out_features, bias)
                }
                Op::Conv2d { in_channels, out_channels, kernel, bias, groups, .. } => {
                    (vec![out_channels, in_channels / groups.max(1), kernel, kernel], out_channels, bias)
                }
                _ => continue,
            };
            out.push(ParamSpec {
                name: format!("{}.weight", node.name),
                node: node.name.clone(),
                kind: ParamKind::Weight,
                shape: wshape,
            });
            if bias {
                out.push(ParamSpec {
                    name: format!("{}.bias", node.name),
                    node: node.name.clone(),
                    kind: ParamKind::Bias,
                    shape: vec![bias_len],
                });
            }
        }
        out
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }

    /// The node with that name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Number of input features per sample.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// The output a classifier scores and trains on: the first output that no node
    /// reads, else the first output. An imported model may return hidden values beside
    /// its logits (`features`, read by the next layer; `logits`, read by a final
    /// softmax): those are not what its accuracy is taken from.
    pub fn head(&self) -> &str {
        let read: std::collections::HashSet<&str> = self.nodes.iter().flat_map(|n| n.inputs.iter().map(String::as_str)).collect();
        self.outputs.iter().find(|o| !read.contains(o.as_str())).or(self.outputs.first()).map_or("", String::as_str)
    }

    /// How many nodes read each value (the graph outputs count as readers too).
    pub fn consumers(&self) -> HashMap<String, usize> {
        let mut c: HashMap<String, usize> = HashMap::new();
        for n in &self.nodes {
            for i in &n.inputs {
                *c.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &self.outputs {
            *c.entry(o.clone()).or_default() += 1;
        }
        c
    }
}

/// Output shape of `op` given its input shapes, or why they do not fit.
pub fn output_shape(name: &str, op: &Op, ins: &[Vec<usize>]) -> Result<Vec<usize>, SpecError> {
    let bad = |why: String| SpecError::Shape { node: name.to_string(), got: ins[0].clone(), why };
    let x = &ins[0];
    match op {
        &Op::Linear { in_features, out_features, .. } => {
            if x.last() != Some(&in_features) {
                return Err(bad(format!("Linear expects [.., {in_features}] (its last dim is the {in_features} input features)")));
            }
            let mut y = x.clone();
            *y.last_mut().expect("not empty") = out_features;
            Ok(y)
        }
        &Op::Conv2d { in_channels, out_channels, kernel, stride, padding, groups, dilation, .. } => {
            if x.len() != 3 || x[0] != in_channels {
                return Err(bad(format!("Conv2d expects [{in_channels}, H, W]")));
            }
            if stride == 0 || kernel == 0 || dilation == 0 {
                return Err(bad("kernel, stride and dilation must be at least 1".into()));
            }
            if groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 {
                return Err(bad(format!(
                    "groups = {groups} must divide both in_channels ({in_channels}) and out_channels ({out_channels})"
                )));
            }
            let k = (kernel - 1) * dilation + 1;
            let (h, w) = (x[1] + 2 * padding, x[2] + 2 * padding);
            if h < k || w < k {
                return Err(bad(format!("kernel {kernel} (dilation {dilation}) is larger than the padded input")));
            }
            Ok(vec![out_channels, (h - k) / stride + 1, (w - k) / stride + 1])
        }
        &Op::MaxPool2d { kernel, stride, padding } => {
            if x.len() != 3 {
                return Err(bad("MaxPool2d expects [C, H, W]".into()));
            }
            if stride == 0 || kernel == 0 || padding >= kernel || x[1] + 2 * padding < kernel || x[2] + 2 * padding < kernel {
                return Err(bad(format!("pool kernel {kernel} / stride {stride} / padding {padding} do not fit")));
            }
            Ok(vec![x[0], (x[1] + 2 * padding - kernel) / stride + 1, (x[2] + 2 * padding - kernel) / stride + 1])
        }
        &Op::AvgPool2d { kernel, stride, padding } => {
            if x.len() != 3 {
                return Err(bad("AvgPool2d expects [C, H, W]".into()));
            }
            if stride == 0 || kernel == 0 || padding >= kernel || x[1] + 2 * padding < kernel || x[2] + 2 * padding < kernel {
                return Err(bad(format!("pool kernel {kernel} / stride {stride} / padding {padding} do not fit")));
            }
            Ok(vec![x[0], (x[1] + 2 * padding - kernel) / stride + 1, (x[2] + 2 * padding - kernel) / stride + 1])
        }
        Op::Flatten => Ok(vec![x.iter().product()]),
        Op::Relu | Op::Sigmoid | Op::Tanh => Ok(x.clone()),
        Op::Normalize { mean, std } => {
            let channels = if x.len() == 3 { x[0] } else { 1 };
            let fits = |v: &Vec<f32>| v.len() == 1 || v.len() == channels;
            if mean.len() != std.len() || !fits(mean) {
                return Err(bad(format!("Normalize needs 1 or {channels} mean/std values, got {}/{}", mean.len(), std.len())));
            }
            if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || mean.iter().any(|m| !m.is_finite()) {
                return Err(bad("Normalize needs finite means and positive stds".into()));
            }
            Ok(x.clone())
        }
        Op::Softmax => {
            if x.len() != 1 {
                return Err(bad("Softmax expects a 1-D value".into()));
            }
            Ok(x.clone())
        }
        Op::Lstm { .. } | Op::Gru { .. } => {
            let r = op.recurrent().expect("a recurrent op");
            let kind = op.kind();
            if r.hidden == 0 || r.input_size == 0 {
                return Err(bad(format!("{kind} needs input_size and hidden of at least 1")));
            }
            if x.len() != 2 || x[1] != r.input_size || x[0] == 0 {
                return Err(bad(format!(
                    "{kind} expects a sequence [steps, {}] (steps ≥ 1, {} features per step)",
                    r.input_size, r.input_size
                )));
            }
            Ok(if r.sequence { vec![x[0], r.output_width()] } else { vec![r.output_width()] })
        }
        &Op::Embedding { vocab, dim, pad_token } => {
            if vocab == 0 || dim == 0 {
                return Err(bad("Embedding needs vocab and dim of at least 1".into()));
            }
            if pad_token.is_some_and(|p| p >= vocab) {
                return Err(bad(format!("Embedding pad_token {} is not below vocab {vocab}", pad_token.unwrap_or(0))));
            }
            if x.len() != 1 || x[0] == 0 {
                return Err(bad("Embedding expects token ids [seq] (seq ≥ 1)".into()));
            }
            Ok(vec![x[0], dim])
        }
        &Op::PositionEmbedding { max_len, dim } => {
            if x.len() != 2 || x[1] != dim {
                return Err(bad(format!("PositionEmbedding expects [seq, {dim}]")));
            }
            if x[0] > max_len {
                return Err(bad(format!("sequence length {} exceeds the position table's max_len {max_len}", x[0])));
            }
            Ok(x.clone())
        }
        &Op::ClsToken { dim } => {
            if x.len() != 2 || x[1] != dim {
                return Err(bad(format!("ClsToken expects [seq, {dim}]")));
            }
            Ok(vec![x[0] + 1, dim])
        }
        &Op::PatchEmbed { channels, patch, dim } => {
            if patch == 0 || dim == 0 {
                return Err(bad("PatchEmbed needs patch and dim of at least 1".into()));
            }
            if x.len() != 3 || x[0] != channels {
                return Err(bad(format!("PatchEmbed expects an image [{channels}, H, W]")));
            }
            if x[1] % patch != 0 || x[2] % patch != 0 || x[1] == 0 || x[2] == 0 {
                return Err(bad(format!("image height {} and width {} must be multiples of the patch size {patch}", x[1], x[2])));
            }
            Ok(vec![(x[1] / patch) * (x[2] / patch), dim])
        }
        &Op::LayerNorm { dim, eps } => {
            if x.last() != Some(&dim) {
                return Err(bad(format!("LayerNorm expects [.., {dim}]")));
            }
            if !(eps.is_finite() && eps > 0.0) {
                return Err(bad(format!("LayerNorm eps must be positive, got {eps}")));
            }
            Ok(x.clone())
        }
        Op::Gelu => Ok(x.clone()),
        &Op::SelfAttention { dim, heads, head_dim, .. } => {
            match head_dim {
                None if heads == 0 || dim == 0 || dim % heads != 0 => {
                    return Err(bad(format!("SelfAttention needs a head count that divides the width: {heads} heads do not divide dim {dim}")));
                }
                Some(hd) if heads == 0 || dim == 0 || hd == 0 => {
                    return Err(bad(format!("SelfAttention needs at least one head of at least one feature and a width: {heads} heads of {hd} on dim {dim}")));
                }
                _ => {}
            }
            if x.len() != 2 || x[1] != dim || x[0] == 0 {
                return Err(bad(format!("SelfAttention expects a sequence [seq, {dim}] (seq ≥ 1)")));
            }
            Ok(x.clone())
        }
        Op::Pool { .. } => {
            if x.len() != 2 || x[0] == 0 {
                return Err(bad("Pool expects a sequence [seq, dim] (seq ≥ 1)".into()));
            }
            Ok(vec![x[1]])
        }
        Op::Add => {
            if ins[1] != *x {
                return Err(bad(format!("Add needs equal shapes, other input is {:?}", ins[1])));
            }
            Ok(x.clone())
        }
    }
}

/// Affine quantization of a value: `real = scale * (q - zero_point)`, `q` in `0..=255`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

impl QParams {
    /// Parameters that cover `[min, max]` (widened to include 0, so 0.0 is exact).
    pub fn from_range(min: f32, max: f32) -> QParams {
        let min = min.min(0.0);
        let max = max.max(0.0);
        let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
        let zero_point = (-min / scale).round().clamp(0.0, 255.0) as i32;
        QParams { scale, zero_point }
    }
}

/// How a compressed model runs integer arithmetic: which nodes run on int8 kernels
/// and the calibrated quantization of the values around them. Stored in `.sqz`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuantPlan {
    /// Nodes whose Linear/Conv2d run with u8 activations × i8 weights → i32.
    pub integer_nodes: BTreeSet<String>,
    /// Calibrated quantization of values (node outputs, or [`INPUT`]).
    pub activations: BTreeMap<String, QParams>,
    /// Integer nodes (Linear, SelfAttention) whose f32 input is quantized per row at
    /// run time instead of at a calibrated scale ("dynamic"; their outputs stay f32).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub dynamic: BTreeSet<String>,
    /// Nonlinearities that run on integer approximations instead of f32 (absent in
    /// files made before the choice existed, and when every one stays float).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub integer_nonlinear: BTreeSet<Nonlinearity>,
}

/// A kind of nonlinearity that full int8 can run on integers (I-BERT-style
/// approximations in `runtime::intops`) instead of f32.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Nonlinearity {
    /// The softmax inside self-attention (with its scores and context products).
    Softmax,
    /// Every LayerNorm node.
    #[serde(rename = "layernorm")]
    LayerNorm,
    /// Every GELU node.
    Gelu,
    /// The sigmoid and tanh of the LSTM/GRU gates in an integer recurrent step.
    Gates,
}

impl Nonlinearity {
    pub const ALL: [Nonlinearity; 4] = [Nonlinearity::Softmax, Nonlinearity::LayerNorm, Nonlinearity::Gelu, Nonlinearity::Gates];

    /// The name recipes and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Nonlinearity::Softmax => "softmax",
            Nonlinearity::LayerNorm => "layernorm",
            Nonlinearity::Gelu => "gelu",
            Nonlinearity::Gates => "gates",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_head_residual() -> Graph {
        let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
        Graph {
            input_shape: vec![8],
            nodes: vec![
                Node { name: "a".into(), inputs: vec![INPUT.into()], op: lin(8, 8) },
                Node { name: "r".into(), inputs: vec!["a".into()], op: Op::Relu },
                Node { name: "sum".into(), inputs: vec!["r".into(), INPUT.into()], op: Op::Add },
                Node { name: "h1".into(), inputs: vec!["sum".into()], op: lin(8, 3) },
                Node { name: "h2".into(), inputs: vec!["sum".into()], op: lin(8, 2) },
            ],
            outputs: vec!["h1".into(), "h2".into()],
            io_names: Default::default(),
        }
    }

    #[test]
    fn residual_two_head_graph_validates_and_round_trips_json() {
        let g = two_head_residual();
        let shapes = g.validate().unwrap();
        assert_eq!(shapes["h1"], vec![3]);
        assert_eq!(shapes["h2"], vec![2]);
        let json = serde_json::to_string(&g).unwrap();
        let back: Graph = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        assert_eq!(g.num_params(), 8 * 8 + 8 + 8 * 3 + 3 + 8 * 2 + 2);
    }

    /// Graphs written before Conv2d had groups/dilation and MaxPool2d padding read
    /// as before, and write the same JSON (so the same file bytes) when they use none.
    #[test]
    fn conv_groups_dilation_and_pool_padding_default_and_stay_out_of_old_json() {
        let old = r#"[{"op":"conv2d","in_channels":4,"out_channels":6,"kernel":3,"stride":1,"padding":1,"bias":true},{"op":"max_pool2d","kernel":2,"stride":2}]"#;
        let ops: Vec<Op> = serde_json::from_str(old).unwrap();
        assert_eq!(ops[0], Op::Conv2d { in_channels: 4, out_channels: 6, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 });
        assert_eq!(ops[1], Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 });
        assert_eq!(serde_json::to_string(&ops).unwrap(), old);
        let grouped = Op::Conv2d { in_channels: 4, out_channels: 6, kernel: 3, stride: 1, padding: 1, bias: true, groups: 2, dilation: 3 };
        let json = serde_json::to_string(&grouped).unwrap();
        assert!(json.contains(r#""groups":2"#) && json.contains(r#""dilation":3"#), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), grouped);
        // Weight per group; groups that do not divide the channels are a shape error.
        let g = Graph::chain(vec![4, 9, 9], vec![("c", grouped)]);
        assert_eq!(g.parameters()[0].shape, vec![6, 2, 3, 3]);
        assert_eq!(g.validate().unwrap()["c"], vec![6, 5, 5]);
        let bad = Graph::chain(vec![4, 9, 9], vec![("c", Op::Conv2d { in_channels: 4, out_channels: 6, kernel: 3, stride: 1, padding: 1, bias: true, groups: 3, dilation: 1 })]);
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("groups = 3 must divide"), "{e}");
        let bad = Graph::chain(vec![1, 5, 5], vec![("p", Op::MaxPool2d { kernel: 2, stride: 2, padding: 2 })]);
        assert!(bad.validate().is_err());
    }

    /// The expansion places each stored weight at its block-diagonal, dilated spot.
    #[test]
    fn conv_expansion_places_weights_by_group_and_dilation() {
        let op = Op::Conv2d { in_channels: 4, out_channels: 2, kernel: 2, stride: 1, padding: 0, bias: false, groups: 2, dilation: 2 };
        let e = ConvExpansion::of(&op).unwrap();
        assert_eq!(e.effective_kernel(), 3);
        let w: Vec<f32> = (1..=16).map(|v| v as f32).collect(); // [2 out, 2 in per group, 2, 2]
        let full = e.expand(&w);
        assert_eq!(full.len(), 2 * 4 * 9);
        // Output 0 reads channels 0, 1; output 1 reads channels 2, 3. Taps at (0,0), (0,2), (2,0), (2,2).
        let at = |o: usize, c: usize, y: usize, x: usize| full[((o * 4 + c) * 3 + y) * 3 + x];
        assert_eq!([at(0, 0, 0, 0), at(0, 0, 0, 2), at(0, 0, 2, 0), at(0, 0, 2, 2)], [1.0, 2.0, 3.0, 4.0]);
        assert_eq!([at(0, 1, 0, 0), at(1, 2, 0, 0), at(1, 3, 2, 2)], [5.0, 9.0, 16.0]);
        assert_eq!(full.iter().filter(|v| **v != 0.0).count(), 16);
        let mut back = vec![0.0; 16];
        e.gather_add(&full, &mut back);
        assert_eq!(back, w);
    }

    /// A node put in front of a graph takes over every read of the input.
    #[test]
    fn prepend_reroutes_the_input() {
        let mut g = two_head_residual();
        let readers = g.nodes.iter().filter(|n| n.inputs.iter().any(|i| i == INPUT)).count();
        assert!(readers > 0);
        let name = g.prepend(g.nodes[0].name.clone().as_str(), Op::Normalize { mean: vec![0.5], std: vec![2.0] });
        assert!(name.ends_with('_'), "a taken name gets a suffix: {name}");
        assert_eq!(g.nodes[0].inputs, vec![INPUT.to_string()]);
        assert_eq!(g.nodes.iter().filter(|n| n.inputs.iter().any(|i| i == INPUT)).count(), 1);
        assert_eq!(g.nodes.iter().filter(|n| n.inputs.contains(&name)).count(), readers);
        g.validate().unwrap();
    }

    #[test]
    fn shape_mismatch_and_unknown_value_are_errors() {
        let mut g = two_head_residual();
        g.nodes[3].op = Op::Linear { in_features: 7, out_features: 3, bias: true };
        assert!(matches!(g.validate(), Err(SpecError::Shape { .. })));
        let mut g = two_head_residual();
        g.nodes[0].inputs = vec!["nope".into()];
        assert!(matches!(g.validate(), Err(SpecError::UnknownValue { .. })));
    }

    #[test]
    fn conv_and_pool_shapes() {
        let g = Graph::chain(
            vec![1, 28, 28],
            vec![
                ("c1", Op::Conv2d { in_channels: 1, out_channels: 6, kernel: 5, stride: 1, padding: 2, bias: true, groups: 1, dilation: 1 }),
                ("p1", Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
                ("c2", Op::Conv2d { in_channels: 6, out_channels: 16, kernel: 5, stride: 1, padding: 0, bias: true, groups: 1, dilation: 1 }),
                ("p2", Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
                ("f", Op::Flatten),
            ],
        );
        let s = g.validate().unwrap();
        assert_eq!(s["p1"], vec![6, 14, 14]);
        assert_eq!(s["c2"], vec![16, 10, 10]);
        assert_eq!(s["f"], vec![400]);
    }

    /// Transformer shapes: a ViT stem and block validate; a head count that does not
    /// divide the width, a patch that does not divide the image, a sequence longer than
    /// the position table and a Linear of the wrong width are one clear error each.
    #[test]
    fn transformer_shapes_and_their_errors() {
        let stem = |heads: usize, patch: usize, max_len: usize, fc_in: usize| {
            Graph::chain(
                vec![1, 28, 28],
                vec![
                    ("patch", Op::PatchEmbed { channels: 1, patch, dim: 64 }),
                    ("cls", Op::ClsToken { dim: 64 }),
                    ("pos", Op::PositionEmbedding { max_len, dim: 64 }),
                    ("ln", Op::LayerNorm { dim: 64, eps: 1e-6 }),
                    ("attn", Op::SelfAttention { dim: 64, heads, causal: false, head_dim: None }),
                    ("fc", Op::Linear { in_features: fc_in, out_features: 128, bias: true }),
                    ("gelu", Op::Gelu),
                    ("pool", Op::Pool { kind: PoolKind::Mean }),
                ],
            )
        };
        let s = stem(4, 7, 17, 64).validate().unwrap();
        assert_eq!(s["patch"], vec![16, 64]);
        assert_eq!(s["cls"], vec![17, 64]);
        assert_eq!(s["fc"], vec![17, 128]);
        assert_eq!(s["pool"], vec![128]);
        let why = |g: Graph| match g.validate() {
            Err(e @ SpecError::Shape { .. }) => e.to_string(),
            other => panic!("expected a shape error, got {other:?}"),
        };
        assert!(why(stem(5, 7, 17, 64)).contains("5 heads do not divide dim 64"));
        assert!(why(stem(4, 5, 17, 64)).contains("multiples of the patch size 5"));
        assert!(why(stem(4, 7, 16, 64)).contains("sequence length 17 exceeds the position table's max_len 16"));
        assert!(why(stem(4, 7, 17, 32)).contains("Linear expects [.., 32]"));
        let g = stem(4, 7, 17, 64);
        let names: Vec<String> = g.parameters().iter().map(|p| p.name.clone()).collect();
        assert!(names.contains(&"attn.query.weight".to_string()) && names.contains(&"attn.output.bias".to_string()));
        let p = g.parameters();
        let kind = |n: &str| p.iter().find(|s| s.name == n).unwrap().kind;
        assert_eq!(kind("attn.key.weight"), ParamKind::Weight);
        assert_eq!(kind("ln.weight"), ParamKind::Bias);
        assert_eq!(kind("cls.weight"), ParamKind::Bias);
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains(r#""op":"self_attention""#) && json.contains(r#""kind":"mean""#), "{json}");
        assert_eq!(serde_json::from_str::<Graph>(&json).unwrap(), g);
        let emb = Graph::chain(vec![8], vec![("emb", Op::Embedding { vocab: 10, dim: 4, pad_token: Some(10) })]);
        assert!(why(emb).contains("pad_token 10 is not below vocab 10"));
    }

    /// `io_names`: absent in JSON written before it existed (an old file reads with
    /// none and writes back byte for byte), written only when set, and read back.
    #[test]
    fn io_names_are_optional_in_the_stored_architecture() {
        let old = r#"{"input_shape":[4],"nodes":[{"name":"fc","inputs":["input"],"op":"linear","in_features":4,"out_features":2,"bias":true}],"outputs":["fc"]}"#;
        let g: Graph = serde_json::from_str(old).unwrap();
        assert!(g.io_names.is_empty());
        assert_eq!(serde_json::to_string(&g).unwrap(), old);
        let mut named = g.clone();
        named.io_names = [(INPUT.to_string(), "pixels".to_string()), ("fc".to_string(), "logits".to_string())].into();
        let json = serde_json::to_string(&named).unwrap();
        assert!(json.contains(r#""io_names":{"fc":"logits","input":"pixels"}"#), "{json}");
        assert_eq!(serde_json::from_str::<Graph>(&json).unwrap(), named);
    }

    /// `head_dim`: absent in JSON written before it existed (and written only when
    /// set), so old files read as `dim / heads`; a trimmed node's projections are
    /// `heads · head_dim` wide while its input and output stay `dim` wide.
    #[test]
    fn attention_head_dim_is_optional_and_sets_the_projection_width() {
        let old = r#"{"input_shape":[5,8],"nodes":[{"name":"attn","inputs":["input"],"op":"self_attention","dim":8,"heads":4,"causal":false}],"outputs":["attn"]}"#;
        let g: Graph = serde_json::from_str(old).unwrap();
        assert_eq!(g.nodes[0].op, Op::SelfAttention { dim: 8, heads: 4, causal: false, head_dim: None });
        assert_eq!(g.nodes[0].op.attention().unwrap().head_dim, 2);
        assert_eq!(serde_json::to_string(&g).unwrap(), old, "an untrimmed node writes what it read");
        let trimmed = Graph::chain(vec![5, 8], vec![("attn", Op::SelfAttention { dim: 8, heads: 3, causal: false, head_dim: Some(2) })]);
        assert_eq!(trimmed.validate().unwrap()["attn"], vec![5, 8]);
        let shape = |n: &str| trimmed.parameters().into_iter().find(|p| p.name == n).unwrap().shape;
        assert_eq!(shape("attn.query.weight"), vec![6, 8]);
        assert_eq!(shape("attn.value.bias"), vec![6]);
        assert_eq!(shape("attn.output.weight"), vec![8, 6]);
        assert_eq!(shape("attn.output.bias"), vec![8]);
        let json = serde_json::to_string(&trimmed).unwrap();
        assert!(json.contains(r#""head_dim":2"#), "{json}");
        assert_eq!(serde_json::from_str::<Graph>(&json).unwrap(), trimmed);
        let zero = Graph::chain(vec![5, 8], vec![("attn", Op::SelfAttention { dim: 8, heads: 0, causal: false, head_dim: Some(2) })]);
        assert!(zero.validate().is_err());
    }

    #[test]
    fn qparams_cover_range_and_zero_exactly() {
        let q = QParams::from_range(-1.0, 3.0);
        assert_eq!(q.zero_point, 64);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-7);
        let q = QParams::from_range(0.0, 2.55);
        assert_eq!(q.zero_point, 0);
    }
}
