//! Post-training quantization to 8 bits.
//!
//! Weights: symmetric int8 per output channel, `scale[o] = max|w[o,:]| / 127`, so a
//! pruned (zero) weight stays exactly zero. *Full* mode also calibrates every
//! activation on sample images (min/max, asymmetric u8) and marks the layers as integer:
//! the runtime then runs u8 × i8 → i32 with integer requantization end to end. *Weights*
//! mode stores int8 weights only; they are dequantized when the model is loaded.
//! Either mode can be limited to named layers (the rest stays f32). LSTM and GRU nodes
//! in full mode run their input and recurrent products on integers (the hidden state at
//! a static u8 scale over [−1, 1], the input sequence calibrated) with the gates in f32;
//! in weights mode they compute in f32 from int8 weights dequantized at load. Full mode
//! can also run softmax, LayerNorm, GELU and the gates on integer approximations
//! ([`NonlinearChoice::Integer`], `runtime::intops`); the default keeps them f32.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::pass::{Context, ModelKind, Output, PassError, Technique};
use crate::format::sqz::{SqzModel, StoredTensor, Values};
use crate::store::stored_tensor;
use crate::model::Model;
use crate::runtime::exec::{Plan, RuntimeError, Weights, Workspace};
use crate::spec::{Graph, Nonlinearity, Op, ParamKind, QParams, QuantPlan};

/// Which part of the model becomes integer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// int8 weights and u8 activations, integer arithmetic.
    #[default]
    Full,
    /// int8 weights only; compute stays f32.
    Weights,
    /// int8 weights; the inputs of Linear and self-attention projections quantized to
    /// u8 per row at run time (no calibration), products on integers, outputs f32.
    /// Other weighted nodes keep int8 weights dequantized at load.
    Dynamic,
}

/// How the tensors that stay float in a quantized model (biases, LayerNorm scales and
/// shifts, a CLS token: every [`ParamKind::Bias`] parameter) are stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SmallTensors {
    /// As trained, 4 bytes each (the default: files and figures made before this
    /// option existed stay byte-identical).
    #[default]
    F32,
    /// Rounded to the nearest IEEE half (2 bytes each, stored exactly). The rounding
    /// happens before calibration, so the activation ranges, the stored values and what
    /// the runtime computes with all agree. Their relative error (2^-11) is far below
    /// int8's, which matters for models whose float tensors are a sizeable share of
    /// the file (a small ViT: LayerNorms, attention biases, CLS token).
    F16,
}

/// Errors of the quantization pass.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("layer '{0}' is not a Linear, Conv2d, LSTM or GRU node of this model")]
    UnknownLayer(String),
    #[error("float_activations: '{0}' names no layer that runs on integer kernels in this mode (Linear or attention nodes; `*` matches any text)")]
    NoIntegerLayer(String),
    #[error("full quantization needs calibration data (images, or sentences: set [data] calibration), none were given")]
    NoCalibration,
    #[error("integer nonlinearities (nonlinear = \"integer\") need full quantization (mode = \"full\"); the {0} mode keeps them float")]
    NonlinearNeedsFull(&'static str),
    #[error("integer {0} was asked for, but the model has no {1}; leave it out of the list")]
    NonlinearAbsent(&'static str, &'static str),
    #[error("{0} listed in nonlinear_ops but nonlinear = \"float\": set nonlinear = \"integer\" (or drop the list)")]
    NonlinearOpsWithFloat(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Whether the nonlinearities of a full-int8 model run in f32 or on integer
/// approximations (see `runtime::intops`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NonlinearChoice {
    /// f32 (the default: files and figures made before the choice stay byte-identical).
    #[default]
    Float,
    /// Integer approximations, for the kinds listed (all the model has when none are).
    Integer,
}

/// The nonlinearities a quantized model should run on integers: `choice` with the
/// kinds the user listed (`ops`, empty = every kind the model has). Checks that the
/// mode is full, that a listed kind exists in the model, and that a list is not given
/// with `float`.
pub fn integer_nonlinearities(model: &crate::spec::Graph, mode: Mode, choice: NonlinearChoice, ops: &[Nonlinearity]) -> Result<BTreeSet<Nonlinearity>, QuantizeError> {
    check_nonlinear_choice(mode, choice, ops)?;
    if choice == NonlinearChoice::Float {
        return Ok(BTreeSet::new());
    }
    let has = |kind: Nonlinearity| {
        model.nodes.iter().any(|n| match kind {
            Nonlinearity::Softmax => matches!(n.op, Op::SelfAttention { .. }),
            Nonlinearity::LayerNorm => matches!(n.op, Op::LayerNorm { .. }),
            Nonlinearity::Gelu => matches!(n.op, Op::Gelu),
            Nonlinearity::Gates => n.op.recurrent().is_some(),
        })
    };
    if ops.is_empty() {
        return Ok(Nonlinearity::ALL.into_iter().filter(|&k| has(k)).collect());
    }
    for &k in ops {
        if !has(k) {
            let what = match k {
                Nonlinearity::Softmax => "self-attention node",
                Nonlinearity::LayerNorm => "LayerNorm node",
                Nonlinearity::Gelu => "GELU node",
                Nonlinearity::Gates => "LSTM or GRU node",
            };
            return Err(QuantizeError::NonlinearAbsent(k.name(), what));
        }
    }
    Ok(ops.iter().copied().collect())
}

/// Symmetric per-row int8 of a `[rows, cols…]` tensor: (values, scales).
pub fn quantize_per_channel(w: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let cols = w.len() / rows.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for row in w.chunks(cols.max(1)) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    }
    (q, scales)
}

/// Symmetric int4 in groups of `group` consecutive (flat row-major) elements:
/// `scale = max|w| / 7` per group, rounded up to the next f16 (scales are stored as
/// f16), `q = round(w / scale)` in `-7..=7`; zeros stay exactly zero. Returns (q, scales).
pub fn quantize_groups_int4(w: &[f32], group: usize) -> (Vec<i8>, Vec<f32>) {
    use crate::codec::f16;
    let group = group.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len().div_ceil(group));
    for g in w.chunks(group) {
        let max = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let want = max / 7.0;
        let mut bits = f16::from_f32(want);
        // Rounding the scale down would push the largest |w| past 7.
        if f16::to_f32(bits) < want {
            bits += 1;
        }
        let scale = match f16::to_f32(bits) {
            _ if max == 0.0 => 1.0,
            // Beyond f16's range (|w| > 7 × 65504): clamp, the largest weights saturate.
            x if !x.is_finite() => 65504.0,
            // Below f16's smallest subnormal: those weights store as zero.
            0.0 => f16::to_f32(1),
            x => x,
        };
        scales.push(scale);
        q.extend(g.iter().map(|v| (v / scale).round().clamp(-7.0, 7.0) as i8));
    }
    (q, scales)
}

/// How int4 group scales are chosen.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Int4Scales {
    /// `max|w| / 7`, rounded up to f16: no weight is clipped, codes use `-7..=7`.
    Max,
    /// Per group, the f16 scale among a grid around `max|w| / 7.5` (and the
    /// least-squares refit of the best one) that minimises the (importance-weighted)
    /// squared rounding error, with codes in `-8..=7`: large weights may clip when that
    /// lowers the error of the rest (as llama.cpp's k-quants search their scales).
    #[default]
    Search,
}

/// Int4 codes of `g` at `scale`: `round(w / scale)` clamped to `lo..=7`.
fn int4_codes(g: &[f32], scale: f32, lo: f32, out: &mut Vec<i8>) {
    out.clear();
    out.extend(g.iter().map(|v| (v / scale).round().clamp(lo, 7.0) as i8));
}

/// Squared rounding error of `g` at `scale`, each element weighted by `importance`
/// (1 when absent), with codes clamped to `lo..=7`.
fn int4_error(g: &[f32], importance: Option<&[f32]>, scale: f32, lo: f32) -> f64 {
    let mut e = 0.0f64;
    for (i, &v) in g.iter().enumerate() {
        let q = (v / scale).round().clamp(lo, 7.0);
        let d = f64::from(v - q * scale);
        e += d * d * importance.map_or(1.0, |h| f64::from(h[i]));
    }
    e
}

/// `x` as the nearest f16 that is a usable positive scale (see [`quantize_groups_int4`]).
fn f16_scale(x: f32) -> f32 {
    use crate::codec::f16;
    match f16::to_f32(f16::from_f32(x)) {
        s if !s.is_finite() => 65504.0,
        s if s <= 0.0 => f16::to_f32(1),
        s => s,
    }
}

/// Int4 in groups of `group` consecutive (flat row-major) elements, scales chosen by
/// `how` (see [`Int4Scales`]); `importance[j]` weights the error of column `j` of a
/// `[rows, importance.len()]` tensor (e.g. the squared input-activation norm of a
/// Linear layer, as activation-aware quantizers weight it). Zeros stay exactly zero.
/// Returns (codes, f16-exact scales).
pub fn quantize_groups_int4_with(w: &[f32], group: usize, how: Int4Scales, importance: Option<&[f32]>) -> (Vec<i8>, Vec<f32>) {
    if how == Int4Scales::Max {
        return quantize_groups_int4(w, group);
    }
    let group = group.max(1);
    let cols = importance.map_or(0, <[f32]>::len);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len().div_ceil(group));
    let mut weights = Vec::with_capacity(group);
    for (gi, g) in w.chunks(group).enumerate() {
        let max = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if max == 0.0 {
            scales.push(1.0);
            q.extend(std::iter::repeat_n(0i8, g.len()));
            continue;
        }
        let h = importance.filter(|_| cols > 0).map(|h| {
            weights.clear();
            weights.extend((0..g.len()).map(|i| h[(gi * group + i) % cols]));
            weights.as_slice()
        });
        // The no-clipping scale of `Max` is a candidate, so the search never does worse
        // than it on the weighted error.
        let (start_q, start_s) = quantize_groups_int4(g, g.len());
        let mut best = (int4_error(g, h, start_s[0], -8.0), start_s[0], start_q);
        let consider = |s: f32, best: &mut (f64, f32, Vec<i8>)| {
            let s = f16_scale(s);
            let e = int4_error(g, h, s, -8.0);
            if e < best.0 {
                best.0 = e;
                best.1 = s;
                int4_codes(g, s, -8.0, &mut best.2);
            }
        };
        for step in 0..=24 {
            // Divisors 6.0 ..= 9.0: from clipping nothing to clipping the largest weights.
            consider(max / (6.0 + 0.125 * step as f32), &mut best);
        }
        // Least-squares refit of the scale for the chosen codes.
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (i, (&v, &c)) in g.iter().zip(&best.2).enumerate() {
            let hw = h.map_or(1.0, |h| f64::from(h[i]));
            num += hw * f64::from(v) * f64::from(c);
            den += hw * f64::from(c) * f64::from(c);
        }
        if den > 0.0 && num > 0.0 {
            consider((num / den) as f32, &mut best);
        }
        let (_, best_s, best_q) = best;
        scales.push(best_s);
        q.extend_from_slice(&best_q);
    }
    (q, scales)
}

/// Whether a node name matches a layer pattern (see [`super::select::matches`]).
pub use super::select::matches as layer_matches;

/// How one weighted node's weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// int8 per output channel (`scale[o] = max|w[o,:]| / 127`), sparse where pruned.
    Int8,
    /// int4 in groups of `group` values along each row, f16 scales; dense (a pruned
    /// zero is a zero code).
    Int4 { group: usize },
}

/// What [`quantize`] does to a model: the one description every quantizing pass
/// builds (`quantize`: int8 for the chosen nodes; `int4`: int4, int8 and f32 by node).
#[derive(Clone, Debug, Default)]
pub struct Precision {
    /// What happens to activations: calibrated u8 and integer kernels (full), f32
    /// (weights), quantized per row at run time (dynamic).
    pub mode: Mode,
    /// Per weighted node, how its weights are stored; a node not listed stays f32.
    pub weights: BTreeMap<String, WeightFormat>,
    /// How the tensors that stay float are stored.
    pub small_tensors: SmallTensors,
    /// Nonlinearities that run on integer approximations (full mode; see
    /// [`integer_nonlinearities`]).
    pub integer_nonlinear: BTreeSet<Nonlinearity>,
    /// Nodes (names or `*` patterns) whose int8 weights compute with f32 activations:
    /// taken off the integer kernels. A pattern that matches no integer node is an error.
    pub float_activations: Vec<String>,
    /// How int4 group scales are chosen.
    pub int4_scales: Int4Scales,
    /// Per weight tensor, the importance of each input column for int4 rounding.
    pub int4_importance: HashMap<String, Vec<f32>>,
}

impl Precision {
    /// int8 weights for every weighted node, activations as `mode` says.
    pub fn int8_all(model: &Model, mode: Mode) -> Precision {
        let weighted = model.graph.nodes.iter().filter(|n| n.op.has_params());
        Precision { mode, weights: weighted.map(|n| (n.name.clone(), WeightFormat::Int8)).collect(), ..Default::default() }
    }

    /// int8 weights for `nodes` (exact names of weighted nodes; every weighted node
    /// when empty), activations as `mode` says.
    pub fn int8(model: &Model, mode: Mode, nodes: &[String]) -> Result<Precision, QuantizeError> {
        let mut precision = Precision::int8_all(model, mode);
        if let Some(l) = nodes.iter().find(|l| !precision.weights.contains_key(*l)) {
            return Err(QuantizeError::UnknownLayer(l.clone()));
        }
        if !nodes.is_empty() {
            precision.weights.retain(|n, _| nodes.contains(n));
        }
        Ok(precision)
    }
}

/// Quantizes `model` as `precision` says; full mode calibrates the activation ranges
/// on `calibration` (`n × input_len` samples). The one entry to quantization.
pub fn quantize(model: &Model, precision: &Precision, calibration: &[f32]) -> Result<SqzModel, QuantizeError> {
    if precision.small_tensors == SmallTensors::F16 {
        // Rounded before calibration, so the ranges see what the runtime computes with.
        let mut rounded = model.clone();
        round_small_tensors_to_f16(&mut rounded);
        return quantize_exact(&rounded, precision, calibration);
    }
    quantize_exact(model, precision, calibration)
}

fn quantize_exact(model: &Model, precision: &Precision, calibration: &[f32]) -> Result<SqzModel, QuantizeError> {
    let masks = &model.constraints.masks;
    let tensors = model
        .params
        .iter()
        .map(|(spec, data)| {
            let format = if spec.kind == ParamKind::Weight { precision.weights.get(&spec.node) } else { None };
            match format {
                Some(&WeightFormat::Int8) => {
                    let (q, scales) = quantize_per_channel(data, spec.shape[0]);
                    stored_tensor(spec.name.clone(), spec.shape.clone(), masks.get(&spec.name), Values::I8 { q, scales })
                }
                Some(&WeightFormat::Int4 { group }) => {
                    let importance = precision.int4_importance.get(&spec.name).map(Vec::as_slice);
                    let (q, scales) = quantize_groups_int4_with(data, group.max(1), precision.int4_scales, importance);
                    StoredTensor { name: spec.name.clone(), shape: spec.shape.clone(), values: Values::I4 { q, group: group.max(1), scales }, positions: None }
                }
                None => stored_tensor(spec.name.clone(), spec.shape.clone(), masks.get(&spec.name), Values::F32(data.to_vec())),
            }
        })
        .collect();
    let integer = precision.integer_nodes(&model.graph)?;
    let quant = match precision.mode {
        Mode::Weights => QuantPlan::default(),
        Mode::Full => QuantPlan { integer_nodes: integer, activations: calibrate(model, calibration)?, ..Default::default() },
        Mode::Dynamic => QuantPlan { integer_nodes: integer.clone(), dynamic: integer, ..Default::default() },
    };
    let quant = QuantPlan { integer_nonlinear: precision.integer_nonlinear.clone(), ..quant };
    Ok(SqzModel { graph: model.graph.clone(), quant, tensors, metadata: BTreeMap::new() })
}

impl Precision {
    /// The int8 nodes the mode runs on integer kernels (full: Linear, Conv2d,
    /// attention, LSTM/GRU; dynamic: Linear and attention), before `float_activations`.
    fn integer_candidates(&self, graph: &Graph) -> BTreeSet<String> {
        let pick: fn(&Op) -> bool = match self.mode {
            Mode::Weights => return BTreeSet::new(),
            Mode::Full => runs_on_integers,
            Mode::Dynamic => |op| matches!(op, Op::Linear { .. } | Op::SelfAttention { .. }),
        };
        self.weights.iter().filter(|(n, f)| **f == WeightFormat::Int8 && graph.node(n).is_some_and(|n| pick(&n.op))).map(|(n, _)| n.clone()).collect()
    }

    /// The nodes `float_activations` takes off the integer kernels (their int8 weights
    /// are dequantized at load and compute in f32 from f32 activations). A pattern that
    /// matches no integer node is an error.
    pub fn float_activation_nodes(&self, graph: &Graph) -> Result<Vec<String>, QuantizeError> {
        let candidates = self.integer_candidates(graph);
        if let Some(p) = self.float_activations.iter().find(|p| !candidates.iter().any(|n| layer_matches(p, n))) {
            return Err(QuantizeError::NoIntegerLayer(p.clone()));
        }
        Ok(candidates.into_iter().filter(|n| self.float_activations.iter().any(|p| layer_matches(p, n))).collect())
    }

    /// The nodes that run on integer kernels.
    fn integer_nodes(&self, graph: &Graph) -> Result<BTreeSet<String>, QuantizeError> {
        let off = self.float_activation_nodes(graph)?;
        Ok(self.integer_candidates(graph).into_iter().filter(|n| !off.contains(n)).collect())
    }
}

/// The checks of [`integer_nonlinearities`] that need no model (a recipe runs them
/// when it is read): a list only with `integer`, `integer` only in full mode.
pub fn check_nonlinear_choice(mode: Mode, choice: NonlinearChoice, ops: &[Nonlinearity]) -> Result<(), QuantizeError> {
    match (choice, mode) {
        (NonlinearChoice::Float, _) if !ops.is_empty() => {
            Err(QuantizeError::NonlinearOpsWithFloat(ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")))
        }
        (NonlinearChoice::Integer, Mode::Weights) => Err(QuantizeError::NonlinearNeedsFull("weights")),
        (NonlinearChoice::Integer, Mode::Dynamic) => Err(QuantizeError::NonlinearNeedsFull("dynamic")),
        _ => Ok(()),
    }
}

/// Rounds every [`ParamKind::Bias`] parameter to the nearest f16 value, so the
/// container stores it in two bytes without further loss.
pub fn round_small_tensors_to_f16(model: &mut Model) {
    for i in 0..model.params.specs.len() {
        if model.params.specs[i].kind == ParamKind::Bias {
            let r = model.params.range(i);
            model.params.data[r].iter_mut().for_each(|b| *b = crate::codec::f16::round(*b));
        }
    }
}

/// Whether full quantization runs `op` on integer kernels: Linear, Conv2d and the
/// projections of self-attention (its softmax stays f32).
fn runs_on_integers(op: &Op) -> bool {
    op.has_weight() || op.recurrent().is_some() || matches!(op, Op::SelfAttention { .. })
}

/// Min/max of every value over the calibration images, as u8 quantization parameters.
/// Values read only by a Softmax or returned as outputs get none: integer layers that
/// produce them emit f32 logits instead of requantizing.
fn calibrate(model: &Model, images: &[f32]) -> Result<BTreeMap<String, QParams>, QuantizeError> {
    let per = model.graph.input_len();
    let n = images.len() / per;
    if n == 0 {
        return Err(QuantizeError::NoCalibration);
    }
    let weights: HashMap<String, Weights> = model.tensors().into_iter().map(|(k, v)| (k, Weights::F32(v))).collect();
    let plan = Plan::new(&model.graph, weights, &QuantPlan::default())?;
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    let mut ws = Workspace::default();
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        plan.run_observe(&images[start * per..end * per], end - start, &mut ws, &mut |name, data| {
            let r = ranges.entry(name.to_string()).or_insert((f32::INFINITY, f32::NEG_INFINITY));
            for &v in data {
                r.0 = r.0.min(v);
                r.1 = r.1.max(v);
            }
        })?;
    }
    let float_only: BTreeSet<&str> = model
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Softmax))
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .chain(model.graph.outputs.iter().map(String::as_str))
        .collect();
    // Keep what an integer layer can read or write: its input, its output, and the
    // output of a ReLU it feeds (fused). Every other value stays f32, so its range
    // need not be stored. A layer whose every reader is a float-only Transformer op
    // (GELU, LayerNorm, a residual Add, pooling) writes f32 directly: requantizing
    // there would only lose precision before the conversion back.
    let weighted = |name: &str| model.graph.node(name).is_some_and(|n| n.op.has_weight());
    let float_readers = |name: &str| {
        let mut readers = model.graph.nodes.iter().filter(|r| r.inputs.iter().any(|i| i == name)).peekable();
        readers.peek().is_some() && readers.all(|r| matches!(r.op, Op::Gelu | Op::LayerNorm { .. } | Op::Add | Op::Pool { .. }))
    };
    let used: BTreeSet<String> = model
        .graph
        .nodes
        .iter()
        .flat_map(|n| {
            let mut v = Vec::new();
            if n.op.has_weight() {
                v.push(n.inputs[0].clone());
                if !float_readers(&n.name) {
                    v.push(n.name.clone());
                }
            }
            // Self-attention: its input (for the query/key/value projections) and its
            // context (for the output projection); its output stays f32.
            if matches!(n.op, Op::SelfAttention { .. }) {
                v.push(n.inputs[0].clone());
                v.push(format!("{}.context", n.name));
            }
            // A recurrent node reads its input sequence as u8; its output stays f32.
            if n.op.recurrent().is_some() {
                v.push(n.inputs[0].clone());
            }
            if matches!(n.op, Op::Relu) && weighted(&n.inputs[0]) {
                v.push(n.name.clone());
            }
            v
        })
        .collect();
    Ok(ranges
        .into_iter()
        .filter(|(name, _)| used.contains(name) && !float_only.contains(name.as_str()))
        .map(|(name, (lo, hi))| (name, QParams::from_range(lo, hi)))
        .collect())
}

/// The `quantize` pass: post-training quantization to 8 bits (the last pass).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Quantize {
    /// full: int8 weights and u8 activations, integer arithmetic; weights: int8 weights,
    /// f32 compute; dynamic: Linear/attention inputs quantized per row at run time.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub mode: Mode,
    /// Only these layers (node names or `*` patterns, comma-separated); default all.
    #[serde(default)]
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// Calibration samples for the activation ranges (full mode) and smoothing.
    #[serde(default = "super::default_calibration")]
    #[arg(long, default_value_t = 1000)]
    pub calibration: usize,
    /// How the tensors that stay float (biases, LayerNorm, CLS token) are stored: f32,
    /// or f16 (rounded before calibration; the runtime uses the rounded values).
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub small_tensors: SmallTensors,
    /// SmoothQuant strength α in [0, 1] (e.g. 0.5): before quantizing, divide each input
    /// channel of the products that read a LayerNorm or an attention context by
    /// `max|x|^α / max|w|^(1−α)` and multiply the weights' columns by it. Off by default.
    #[arg(long)]
    pub smooth: Option<f32>,
    /// Nodes (names or `*` patterns) whose int8 weights compute with f32 activations.
    #[serde(default)]
    #[arg(long, value_delimiter = ',')]
    pub float_activations: Vec<String>,
    /// Softmax, LayerNorm, GELU and LSTM/GRU gates of a full-int8 model: float, or
    /// integer (I-BERT-style approximations; see --nonlinear-ops).
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub nonlinear: NonlinearChoice,
    /// With nonlinear = integer: only these kinds (comma-separated); default every kind
    /// the model has.
    #[serde(default)]
    #[arg(long, value_delimiter = ',', value_parser = nonlinearity_from_str)]
    pub nonlinear_ops: Vec<Nonlinearity>,
}

/// A nonlinearity as the command line names it (as in recipes: softmax, layernorm, gelu, gates).
fn nonlinearity_from_str(s: &str) -> Result<Nonlinearity, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| format!("expected one of softmax, layernorm, gelu, gates; got '{s}'"))
}

/// What a `quantize` stage reports in `extra`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct QuantizeReport {
    pub mode: Mode,
    pub small_tensors: SmallTensors,
    pub integer_layers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_images: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_sentences: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smooth_alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoothed_inputs: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub integer_nonlinear: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub float_activation_layers: Option<Vec<String>>,
}

impl Technique for Quantize {
    fn stage_name(&self) -> String {
        match self.mode {
            Mode::Full => "int8".into(),
            Mode::Weights => "int8-weights".into(),
            Mode::Dynamic => "int8-dynamic".into(),
        }
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind == ModelKind::Tasks {
            return Err(super::not_available(kind, &self.stage_name()));
        }
        check_nonlinear_choice(self.mode, self.nonlinear, &self.nonlinear_ops).map_err(|e| format!("pass quantize: {e}"))?;
        if let Some(a) = self.smooth
            && !(0.0..=1.0).contains(&a)
        {
            return Err(format!("pass quantize: smooth: expected the SmoothQuant strength α in [0, 1] (e.g. 0.5), got {a}"));
        }
        Ok(())
    }

    fn is_final(&self) -> bool {
        true
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let layers = super::select::weighted_nodes(model, &self.layers).map_err(QuantizeError::UnknownLayer)?;
        // Checked before calibrating (a mistake costs no time).
        integer_nonlinearities(&model.graph, self.mode, self.nonlinear, &self.nonlinear_ops)?;
        let text = ctx.kind == ModelKind::Embedder;
        // An embedder calibrates on sentences only where it needs to (full int8's
        // activation ranges over every position, padding included, as the runtime sees
        // them; smoothing's per-channel maxima); a classifier on its first images.
        let needs = !text || self.mode == Mode::Full || self.smooth.is_some();
        let calibration = if needs { ctx.calibration.first(if text { self.calibration.max(1) } else { self.calibration }) } else { Default::default() };
        if text && needs && calibration.count == 0 {
            return Err(if self.smooth.is_some() { super::smooth::SmoothError::NoCalibration.into() } else { QuantizeError::NoCalibration.into() });
        }
        let mut report = QuantizeReport {
            mode: self.mode,
            small_tensors: self.small_tensors,
            integer_layers: Vec::new(),
            calibration_images: (!text).then_some(calibration.count),
            calibration_sentences: (text && needs).then_some(calibration.count),
            smooth_alpha: None,
            smoothed_inputs: None,
            integer_nonlinear: Vec::new(),
            float_activation_layers: None,
        };
        let smoothed = match self.smooth {
            Some(alpha) => {
                let (m, summary) = super::smooth::smooth(model, calibration.rows, alpha)?;
                report.smooth_alpha = Some(f64::from(alpha));
                report.smoothed_inputs = Some(super::smooth::summary_json(&summary));
                Some(m)
            }
            None => None,
        };
        let source = smoothed.as_ref().unwrap_or(model);
        let precision = Precision {
            small_tensors: self.small_tensors,
            integer_nonlinear: integer_nonlinearities(&source.graph, self.mode, self.nonlinear, &self.nonlinear_ops)?,
            float_activations: self.float_activations.clone(),
            ..Precision::int8(source, self.mode, &layers)?
        };
        if !self.float_activations.is_empty() {
            report.float_activation_layers = Some(precision.float_activation_nodes(&source.graph)?);
        }
        let stored = quantize(source, &precision, calibration.rows)?;
        report.integer_nonlinear = stored.quant.integer_nonlinear.iter().map(|k| k.name()).collect();
        report.integer_layers = stored.quant.integer_nodes.iter().cloned().collect();
        let mut out = Output::encoded(stored, &report);
        // Classifier int8 files code their indices where it pays, as they always have;
        // the embedder's streaming writer writes fixed-width codes.
        out.entropy_coding = !text;
        Ok(out)
    }
}

/// The `int4` pass: weight-only int4, group-wise with f16 scales (compute stays f32),
/// with per-layer precision (int8 or f32 nodes) and error-minimising scales.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Int4 {
    #[serde(default = "default_int4_group")]
    pub group: usize,
    /// Nodes to quantize (all weighted nodes when empty); the rest stay f32.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Nodes kept at f32 (mixed precision), e.g. the embeddings.
    #[serde(default)]
    pub keep: Vec<String>,
    /// Nodes stored as int8 per output channel instead of int4 (mixed precision).
    #[serde(default)]
    pub int8: Vec<String>,
    /// Group sizes other than `group` for chosen nodes (name or pattern), e.g.
    /// `{ "embeddings.*" = 128 }`: coarser where the error matters less.
    #[serde(default)]
    pub layer_groups: BTreeMap<String, usize>,
    /// How group scales are chosen: "search" (error-minimising, default) or "max".
    #[serde(default)]
    pub scales: Int4Scales,
    /// Calibration sentences whose input-activation norms weight the rounding error of
    /// each Linear/projection input column (0: unweighted).
    #[serde(default)]
    pub calibration: usize,
}

fn default_int4_group() -> usize {
    32
}

/// What an `int4` stage reports in `extra`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Int4Report {
    pub group: usize,
    pub scales: String,
    pub int4_layers: usize,
    pub int8_layers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_groups: Option<HashMap<String, usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_sentences: Option<usize>,
}

/// Per weight tensor, the importance of each input column for int4 rounding: the
/// squared calibration norm of the value it reads ([`super::prune::input_norms`]).
pub fn int4_importance(model: &Model, norms: &HashMap<String, Vec<f32>>) -> HashMap<String, Vec<f32>> {
    super::prune::row_prunable(model)
        .into_iter()
        .filter_map(|(_, tensor, value)| {
            let n = norms.get(&value?)?;
            // A column never seen in calibration still counts a little.
            let floor = n.iter().fold(0.0f32, |m, v| m.max(v * v)) * 1e-4;
            Some((tensor, n.iter().map(|v| (v * v).max(floor)).collect()))
        })
        .collect()
}

impl Technique for Int4 {
    fn stage_name(&self) -> String {
        format!("int4-g{}", self.group)
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Embedder {
            return Err(super::embedding_only(&self.stage_name()));
        }
        let max = crate::format::sqz::MAX_I4_GROUP;
        if self.group == 0 || self.group > max {
            return Err(format!("pass int4: group: expected 1..={max}, got {}", self.group));
        }
        if self.layer_groups.values().any(|g| *g == 0 || *g > max) {
            return Err(format!("pass int4: layer_groups: each group must be in 1..={max}"));
        }
        Ok(())
    }

    fn is_final(&self) -> bool {
        true
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        use super::select::{all_weighted, weighted_nodes};
        let unknown = QuantizeError::UnknownLayer;
        let kept = weighted_nodes(model, &self.keep).map_err(unknown)?;
        let mut chosen = if self.layers.is_empty() { all_weighted(model) } else { weighted_nodes(model, &self.layers).map_err(unknown)? };
        chosen.retain(|l| !kept.contains(l));
        let as_int8 = weighted_nodes(model, &self.int8).map_err(unknown)?;
        let (as_int8, int4): (Vec<String>, Vec<String>) = chosen.into_iter().partition(|l| as_int8.contains(l));
        let mut calibration_sentences = None;
        let importance = if self.calibration > 0 {
            if ctx.calibration.count == 0 {
                return Err(super::prune::PruneError::Calibration("int4 calibration needs sentences: set [data] calibration".into()).into());
            }
            let cal = ctx.calibration.first(self.calibration);
            calibration_sentences = Some(cal.count);
            int4_importance(model, &super::prune::input_norms(model, cal.rows, cal.count, cal.lengths)?)
        } else {
            Default::default()
        };
        let mut node_groups = HashMap::new();
        for (pattern, g) in &self.layer_groups {
            for node in weighted_nodes(model, std::slice::from_ref(pattern)).map_err(unknown)? {
                node_groups.insert(node, *g);
            }
        }
        let report = Int4Report {
            group: self.group,
            scales: format!("{:?}", self.scales).to_lowercase(),
            int4_layers: int4.len(),
            int8_layers: as_int8.clone(),
            layer_groups: (!node_groups.is_empty()).then(|| node_groups.clone()),
            calibration_sentences,
        };
        let int4 = int4.into_iter().map(|n| {
            let group = node_groups.get(&n).copied().unwrap_or(self.group);
            (n, WeightFormat::Int4 { group })
        });
        let weights = int4.chain(as_int8.into_iter().map(|n| (n, WeightFormat::Int8))).collect();
        let precision = Precision { mode: Mode::Weights, weights, int4_scales: self.scales, int4_importance: importance, ..Default::default() };
        Ok(Output::encoded(quantize(model, &precision, &[])?, &report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// int8 of every node with the nonlinearities `choice` and `ops` pick (as the pass does).
    fn with_nonlinear(m: &Model, mode: Mode, x: &[f32], choice: NonlinearChoice, ops: &[Nonlinearity]) -> Result<SqzModel, QuantizeError> {
        let integer_nonlinear = integer_nonlinearities(&m.graph, mode, choice, ops)?;
        quantize(m, &Precision { integer_nonlinear, ..Precision::int8_all(m, mode) }, x)
    }
    use crate::model::{zoo, Workspace as TrainWorkspace};
    use crate::rng::Rng;

    /// A small ViT (2 blocks) on random 28×28 images, with trained-looking weights
    /// (init scaled up so attention is not uniform).
    fn small_vit() -> (Model, Vec<f32>) {
        let mut m = Model::init(zoo::vit(&zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 2, ffn: 24 }), 5).unwrap();
        let mut rng = Rng::new(6);
        m.params.data.iter_mut().for_each(|v| *v = *v * 1.0 + rng.uniform(0.05));
        let x: Vec<f32> = (0..40 * 784).map(|_| rng.next_f32()).collect();
        (m, x)
    }

    /// The runtime's f32 plan computes what the trainer computes, and full int8 (every
    /// Linear and attention projection on integer kernels) stays close to it.
    #[test]
    fn vit_runs_the_same_in_trainer_and_runtime_and_int8_stays_close() {
        let (m, x) = small_vit();
        let n = 40;
        let mut ws = TrainWorkspace::new(&m, n);
        ws.forward(&m.params, &x, n);
        let want = ws.head_output(n).to_vec();
        let plan = crate::store::model_plan(&m).unwrap();
        let got = plan.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Batch 1 runs the same as the batch.
        let one = plan.run(&x[784..2 * 784], 1, &mut Workspace::default()).unwrap().to_vec();
        for (a, b) in one.iter().zip(&want[10..20]) {
            assert!((a - b).abs() < 1e-5);
        }
        let q = quantize(&m, &Precision::int8_all(&m, Mode::Full), &x).unwrap();
        for node in ["b1_attn", "b2_attn", "b1_fc1", "b2_fc2", "head", "patch"] {
            let integer = q.quant.integer_nodes.contains(node);
            assert_eq!(integer, node != "patch", "{node}");
        }
        assert!(q.quant.activations.contains_key("b1_attn.context"));
        let qplan = crate::store::sqz_plan(&q).unwrap();
        assert!(qplan.kernel_description().starts_with("mixed: 7 int8-") && qplan.kernel_description().contains("+ 1 f32"), "{}", qplan.kernel_description());
        let got = qplan.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 0.05, "int8 probabilities differ by {worst}");
    }

    /// `nonlinear = integer` on a small ViT: the plan runs softmax, LayerNorm and GELU
    /// on the integer kernels (said in the kernel description) and its probabilities
    /// stay close to the float-nonlinearity int8 plan's; the default stores nothing new
    /// (the plan's JSON has no `integer_nonlinear` key, so older files read alike); a
    /// kind the model lacks, or integer outside full mode, is one clear error.
    #[test]
    fn integer_nonlinearities_run_on_a_vit_and_stay_close_to_float_ones() {
        let (m, x) = small_vit();
        let n = 40;
        let float = with_nonlinear(&m, Mode::Full, &x, NonlinearChoice::Float, &[]).unwrap();
        assert!(float.quant.integer_nonlinear.is_empty());
        assert!(!serde_json::to_string(&float.quant).unwrap().contains("integer_nonlinear"));
        let int = with_nonlinear(&m, Mode::Full, &x, NonlinearChoice::Integer, &[]).unwrap();
        assert_eq!(int.quant.integer_nonlinear, [Nonlinearity::Softmax, Nonlinearity::LayerNorm, Nonlinearity::Gelu].into());
        let back: QuantPlan = serde_json::from_str(&serde_json::to_string(&int.quant).unwrap()).unwrap();
        assert_eq!(back, int.quant);
        let (fp, ip) = (crate::store::sqz_plan(&float).unwrap(), crate::store::sqz_plan(&int).unwrap());
        assert!(ip.kernel_description().ends_with("integer softmax, layernorm, gelu"), "{}", ip.kernel_description());
        let a = fp.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
        let b = ip.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
        let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 0.05 && a != b, "integer nonlinearities move the probabilities by {worst}");
        let err = with_nonlinear(&m, Mode::Full, &x, NonlinearChoice::Integer, &[Nonlinearity::Gates]).unwrap_err();
        assert!(err.to_string().contains("no LSTM or GRU node"), "{err}");
        let err = with_nonlinear(&m, Mode::Weights, &x, NonlinearChoice::Integer, &[]).unwrap_err();
        assert!(err.to_string().contains("mode = \"full\""), "{err}");
    }

    /// Integer gates on an LSTM and a GRU: only `gates` is chosen, and the outputs stay
    /// close to the float-gate int8 plan's.
    #[test]
    fn integer_gates_run_on_lstm_and_gru_and_stay_close_to_float_gates() {
        use crate::model::zoo;
        let mut rng = Rng::new(8);
        for name in ["lstm32", "gru"] {
            let m = Model::init(zoo::build(name).unwrap(), 3).unwrap();
            let x: Vec<f32> = (0..12 * 784).map(|_| rng.next_f32()).collect();
            let float = quantize(&m, &Precision::int8_all(&m, Mode::Full), &x).unwrap();
            let int = with_nonlinear(&m, Mode::Full, &x, NonlinearChoice::Integer, &[]).unwrap();
            assert_eq!(int.quant.integer_nonlinear, [Nonlinearity::Gates].into(), "{name}");
            let (fp, ip) = (crate::store::sqz_plan(&float).unwrap(), crate::store::sqz_plan(&int).unwrap());
            let a = fp.run(&x, 12, &mut Workspace::default()).unwrap().to_vec();
            let b = ip.run(&x, 12, &mut Workspace::default()).unwrap().to_vec();
            let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 0.01 && a != b, "{name}: integer gates move the outputs by {worst}");
        }
    }

    /// `small_tensors = f16`: the float tensors of a full-int8 ViT are stored in two
    /// bytes each, the int8 weights are untouched, the file reads back to exactly the
    /// values the runtime uses, and the outputs stay close to the f32-small-tensor file.
    #[test]
    fn f16_small_tensors_shrink_the_int8_file_and_read_back_exactly() {
        let (m, x) = small_vit();
        let n = 40;
        let wide = quantize(&m, &Precision::int8_all(&m, Mode::Full), &x).unwrap();
        let half = quantize(&m, &Precision { small_tensors: SmallTensors::F16, ..Precision::int8_all(&m, Mode::Full) }, &x).unwrap();
        assert_eq!(wide.quant.integer_nodes, half.quant.integer_nodes);
        let mut small_values = 0;
        for ((spec, _), (w, h)) in m.params.iter().zip(wide.tensors.iter().zip(&half.tensors)) {
            assert_eq!((&w.name, &w.shape), (&h.name, &h.shape));
            match (&w.values, &h.values) {
                (Values::I8 { .. }, Values::I8 { .. }) => assert_eq!(w, h, "{}: int8 weights must not change", w.name),
                (Values::F32(a), Values::F32(b)) => {
                    assert_eq!(spec.kind, ParamKind::Bias, "{}", w.name);
                    for (x, y) in a.iter().zip(b) {
                        assert!(crate::codec::f16::exact(*y).is_some(), "{}: {y} is not an f16", w.name);
                        assert!((x - y).abs() <= x.abs() * 2f32.powi(-11) + 1e-7, "{}: {x} rounded to {y}", w.name);
                    }
                    small_values += b.len();
                }
                other => panic!("{}: unexpected encodings {other:?}", w.name),
            }
        }
        assert!(small_values > 0);
        let (wide_bytes, half_bytes) = (crate::format::sqz::encode(&wide).unwrap(), crate::format::sqz::encode(&half).unwrap());
        // Every float value saves two bytes (the deflated f32 body is never smaller for
        // these trained-looking values); allow a little for the container's choices.
        assert!(wide_bytes.len() as i64 - half_bytes.len() as i64 >= small_values as i64 * 2 - 64, "{} → {} bytes, {small_values} small values", wide_bytes.len(), half_bytes.len());
        let back = crate::format::sqz::decode(&half_bytes, &Default::default()).unwrap();
        assert_eq!(back.tensors, half.tensors, "the file holds exactly the rounded values");
        assert_eq!(back.quant, half.quant);
        let ws = &mut Workspace::default();
        let y_wide = crate::store::sqz_plan(&wide).unwrap().run(&x, n, ws).unwrap().to_vec();
        let y_half = crate::store::sqz_plan(&back).unwrap().run(&x, n, ws).unwrap().to_vec();
        let worst = y_wide.iter().zip(&y_half).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 0.02, "f16 small tensors moved the probabilities by {worst}");
        // The f32 default is the old behaviour, byte for byte.
        assert_eq!(crate::format::sqz::encode(&quantize(&m, &Precision { small_tensors: SmallTensors::F32, ..Precision::int8_all(&m, Mode::Full) }, &x).unwrap()).unwrap(), wide_bytes);
    }

    /// Dynamic int8 (inputs quantized per row at run time) on the small ViT: every
    /// Linear and attention node integer without calibration, close to f32; and the
    /// f32, full int8 and dynamic plans on 2 threads give the bits of 1 thread at batch 1
    /// (layers split) and of each half run alone at batch 40 (samples split; a float
    /// product's rounding may depend on its row count, so not of the whole batch).
    #[test]
    fn vit_dynamic_int8_stays_close_and_threads_do_not_change_results() {
        let (m, x) = small_vit();
        let n = 40;
        let float = crate::store::model_plan(&m).unwrap();
        let want = float.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
        let q = quantize(&m, &Precision::int8_all(&m, Mode::Dynamic), &[]).unwrap();
        assert!(q.quant.activations.is_empty());
        for node in ["b1_attn", "b2_attn", "b1_fc1", "b2_fc2", "head"] {
            assert!(q.quant.integer_nodes.contains(node) && q.quant.dynamic.contains(node), "{node}");
        }
        assert!(!q.quant.integer_nodes.contains("patch"));
        let dynamic = crate::store::sqz_plan(&q).unwrap();
        assert!(dynamic.kernel_description().contains("per row at run time"), "{}", dynamic.kernel_description());
        let got = dynamic.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 0.05, "dynamic int8 probabilities differ by {worst}");
        let full = crate::store::sqz_plan(&quantize(&m, &Precision::int8_all(&m, Mode::Full), &x).unwrap()).unwrap();
        for mut plan in [float, full, dynamic] {
            plan.set_threads(1);
            let one = plan.run(&x[..784], 1, &mut Workspace::default()).unwrap().to_vec();
            // Each half of the batch alone, on one thread.
            let mut halves = plan.run(&x[..20 * 784], 20, &mut Workspace::default()).unwrap().to_vec();
            halves.extend_from_slice(plan.run(&x[20 * 784..n * 784], 20, &mut Workspace::default()).unwrap());
            plan.set_threads(2);
            let mut ws = Workspace::default();
            assert_eq!(one, plan.run(&x[..784], 1, &mut ws).unwrap(), "{} at batch 1", plan.kernel_description());
            assert_eq!(halves, plan.run(&x[..n * 784], n, &mut ws).unwrap(), "{} at batch {n}", plan.kernel_description());
        }
    }

    #[test]
    fn int4_groups_keep_zeros_bound_the_error_and_store_f16_scales() {
        let mut rng = crate::rng::Rng::new(3);
        // 70 values in groups of 32: the last group is partial; one group is all zero.
        let mut w: Vec<f32> = (0..70).map(|_| rng.uniform(1.0)).collect();
        w[32..64].iter_mut().for_each(|v| *v = 0.0);
        w[5] = 0.0;
        let (q, s) = quantize_groups_int4(&w, 32);
        assert_eq!(s.len(), 3);
        assert_eq!(q[5], 0);
        assert!(q[32..64].iter().all(|&v| v == 0));
        for (i, (&v, &qq)) in w.iter().zip(&q).enumerate() {
            let scale = s[i / 32];
            assert!(crate::codec::f16::exact(scale).is_some());
            assert!((-7..=7).contains(&qq));
            assert!((v - scale * qq as f32).abs() <= scale / 2.0 + 1e-6, "{i}: {v} vs {}", scale * qq as f32);
        }
        // The largest magnitude of a group lands on ±7 or just inside it (scale rounded up).
        let max_q = q[..32].iter().map(|v| v.abs()).max().unwrap();
        assert!(max_q >= 6, "{max_q}");
    }

    /// The searched scales never do worse than max/7 on the (weighted) squared error,
    /// usually much better; codes stay in -8..=7, scales exact in f16, zeros zero.
    #[test]
    fn int4_scale_search_lowers_the_weighted_error() {
        let mut rng = Rng::new(11);
        let cols = 48;
        // Heavy-tailed rows, as trained weights are: mostly small, a few large.
        let mut w: Vec<f32> = (0..8 * cols).map(|_| rng.uniform(1.0).powi(3)).collect();
        w[7] = 0.0;
        w[cols..2 * cols].iter_mut().for_each(|v| *v = 0.0);
        let importance: Vec<f32> = (0..cols).map(|j| if j % 5 == 0 { 10.0 } else { 0.5 + rng.next_f32() }).collect();
        let err = |q: &[i8], s: &[f32], h: Option<&[f32]>| -> f64 {
            w.iter().zip(q).enumerate().map(|(i, (&v, &c))| {
                let d = f64::from(v - s[i / 16] * f32::from(c));
                d * d * h.map_or(1.0, |h| f64::from(h[i % cols]))
            }).sum()
        };
        let (qm, sm) = quantize_groups_int4_with(&w, 16, Int4Scales::Max, None);
        let (qs, ss) = quantize_groups_int4_with(&w, 16, Int4Scales::Search, None);
        let (qw, sw) = quantize_groups_int4_with(&w, 16, Int4Scales::Search, Some(&importance));
        assert!(err(&qs, &ss, None) < 0.9 * err(&qm, &sm, None), "{} vs {}", err(&qs, &ss, None), err(&qm, &sm, None));
        assert!(err(&qw, &sw, Some(&importance)) <= err(&qs, &ss, Some(&importance)) + 1e-12);
        assert!(err(&qw, &sw, Some(&importance)) <= err(&qm, &sm, Some(&importance)) + 1e-12);
        for (q, s) in [(&qs, &ss), (&qw, &sw)] {
            assert!(q.iter().all(|c| (-8..=7).contains(c)));
            assert!(s.iter().all(|&x| x > 0.0 && crate::codec::f16::exact(x).is_some()));
            assert_eq!(q[7], 0);
            assert!(q[cols..2 * cols].iter().all(|&c| c == 0));
        }
    }

    /// Consuming a float model into its stored form gives what copying it gives.
    #[test]
    fn into_stored_f32_equals_store_f32() {
        let (m, _) = small_vit();
        let want = crate::store::stored_f32(&m);
        assert_eq!(crate::store::into_stored_f32(m), want);
    }

    /// Mixed precision: int4, int8 and f32 tensors in one model, by node.
    #[test]
    fn mixed_precision_stores_each_layer_as_asked() {
        let (m, _) = small_vit();
        let weights = [("b1_fc1", WeightFormat::Int4 { group: 32 }), ("patch", WeightFormat::Int4 { group: 16 }), ("b2_attn", WeightFormat::Int8)];
        let precision = Precision { mode: Mode::Weights, weights: weights.map(|(n, f)| (n.to_string(), f)).into(), int4_scales: Int4Scales::Search, ..Default::default() };
        let q = quantize(&m, &precision, &[]).unwrap();
        let kind = |name: &str| match &q.tensors.iter().find(|t| t.name == name).unwrap().values {
            Values::I4 { .. } => "int4",
            Values::I8 { .. } => "int8",
            Values::F32(_) => "f32",
            _ => "other",
        };
        assert_eq!(kind("b1_fc1.weight"), "int4");
        assert_eq!(kind("b1_fc1.bias"), "f32");
        assert_eq!(kind("patch.weight"), "int4");
        assert!(matches!(q.tensors.iter().find(|t| t.name == "patch.weight").unwrap().values, Values::I4 { group: 16, .. }));
        assert_eq!(kind("b2_attn.query.weight"), "int8");
        assert_eq!(kind("b2_attn.output.weight"), "int8");
        assert_eq!(kind("b1_attn.query.weight"), "f32");
        assert!(layer_matches("b2_*", "b2_attn") && !layer_matches("b2_*", "b1_attn") && layer_matches("head", "head") && !layer_matches("hea", "head"));
        let plan = crate::store::sqz_plan(&q).unwrap();
        plan.run(&vec![0.5; 784], 1, &mut Workspace::default()).unwrap();
    }

    #[test]
    fn int4_model_round_trips_through_the_container_and_runs() {
        let graph = crate::model::zoo::build("mlp").unwrap();
        let model = Model::init(graph, 5).unwrap();
        let all_int4 = model.graph.nodes.iter().filter(|n| n.op.has_params()).map(|n| (n.name.clone(), WeightFormat::Int4 { group: 32 })).collect();
        let sqz = quantize(&model, &Precision { mode: Mode::Weights, weights: all_int4, int4_scales: Int4Scales::Max, ..Default::default() }, &[]).unwrap();
        let bytes = crate::format::sqz::encode(&sqz).unwrap();
        let back = crate::format::sqz::decode(&bytes, &Default::default()).unwrap();
        assert_eq!(back.tensors, sqz.tensors);
        let plan = crate::store::sqz_plan(&back).unwrap();
        let float = crate::store::model_plan(&model).unwrap();
        let x: Vec<f32> = (0..model.graph.input_len() * 2).map(|i| (i % 7) as f32 / 7.0).collect();
        let (mut a, mut b) = (Workspace::default(), Workspace::default());
        let ya = plan.run(&x, 2, &mut a).unwrap().to_vec();
        let yb = float.run(&x, 2, &mut b).unwrap().to_vec();
        let rel = ya.iter().zip(&yb).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max) / yb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(rel < 0.25, "int4 output differs by {rel} of the output range");
        assert!(plan.kernel_description().contains("int4"), "{}", plan.kernel_description());
        assert!(matches!(Precision::int8(&model, Mode::Weights, &["nope".into()]), Err(QuantizeError::UnknownLayer(_))));
    }

    #[test]
    fn per_channel_keeps_zeros_and_bounds_the_error() {
        let w = [0.0, 0.5, -1.0, 0.25, 0.0, 2.0, -0.1, 0.0];
        let (q, s) = quantize_per_channel(&w, 2);
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(q[0], 0);
        assert_eq!(q[2], -127);
        assert_eq!(q[5], 127);
        for (i, (&v, &qq)) in w.iter().zip(&q).enumerate() {
            assert!((v - s[i / 4] * qq as f32).abs() <= s[i / 4] / 2.0 + 1e-7);
        }
    }
}
