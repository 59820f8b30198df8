//! Structured trimming: remove whole neurons of Linear layers and whole filters (output
//! channels) of Conv2d layers by an importance score, and propagate the removal to every
//! tensor that reads them, so the result is a smaller *dense* [`Model`] (a new graph
//! with fewer `out_features`/`out_channels` and, downstream, fewer
//! `in_features`/`in_channels`) that computes the same function on the kept units.
//!
//! A unit of node `X` can be removed when `X`'s output reaches the next weighted layers
//! only through element-wise or per-channel ops: ReLU, MaxPool2d, Normalize (one value,
//! or one per channel, which is then sliced too) and Flatten. After a Flatten of a
//! `[C, H, W]` value, removing channel `c` removes the inputs `c·H·W..(c+1)·H·W` of the
//! next Linear. A layer whose output (directly or through those ops) reaches an Add
//! (residual connection), a Softmax or a graph output cannot be trimmed: its units are
//! the shape of a residual sum, the classes, or something the caller reads.
//!
//! Recurrent hidden units: removing unit `k` of an LSTM/GRU removes row `k` of every
//! gate's block of `weight_ih`, `weight_hh` and both biases, column `k` of `weight_hh`,
//! and the matching input column of the next layer (a Linear head reading the last
//! hidden state, or the next LSTM/GRU's `weight_ih` reading the sequence). A unit is
//! scored by the weights of all its gate rows (`weight_ih` and `weight_hh`), or by its
//! mean |h|; the Taylor score is not defined for recurrent units.
//!
//! Attention heads: removing head `h` of a SelfAttention node (`heads` of `head_dim`
//! features) removes rows `h·head_dim..(h+1)·head_dim` of the query, key and value
//! weights and biases and the same columns of the output projection's weight; the
//! output bias and the residual width stay, so nothing outside the node changes. The
//! node keeps `head_dim` and its `heads` shrinks ([`TrimConfig::heads`] per node). Heads
//! are ranked by [`HeadScore`]: the magnitude of their weights, or their measured
//! contribution to the output projection on calibration inputs.
//!
//! Constraints: pruning masks are sliced with their tensors (rows of removed units,
//! columns of removed inputs are dropped). Weight-sharing codebooks are **all cleared**:
//! the parameters keep their (shared) values, but the assignment is no longer a
//! constraint; sharing is meant to be redone after trimming.
//!
//! ```
//! use squeeze::compress::trim::{trim, Score, TrimConfig};
//! use squeeze::model::{zoo, Model};
//! let model = Model::init(zoo::build("mlp").unwrap(), 1).unwrap();
//! let cfg = TrimConfig { ratio: 0.5, score: Score::L1, ..Default::default() };
//! let (small, summary) = trim(&model, &cfg, &[]).unwrap();
//! assert_eq!(summary.layers, vec![("fc1".to_string(), 64, 32)]);
//! assert_eq!(small.params.len(), 784 * 32 + 32 + 32 * 10 + 10);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::pass::{check_fraction, Context, FineTune, ModelKind, Output, PassError, Technique};
use crate::model::{Model, ModelError, Workspace};
use crate::runtime::exec::{self, RuntimeError};
use crate::runtime::transformer::ValidLengths;
use crate::spec::{Attention, Graph, Op, SpecError};

/// How the importance of a unit (neuron or filter) is measured; the lowest go first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Sum of |w| over the unit's incoming weights (its weight row or filter; the bias
    /// is not counted), as in Li et al., "Pruning Filters for Efficient ConvNets".
    #[default]
    L1,
    /// Euclidean norm of the unit's incoming weights (bias not counted).
    L2,
    /// Mean |activation| over the calibration images (and over positions for a
    /// filter). The activation is the output of the first ReLU the layer's output
    /// passes through before the next weighted layer, or the layer's own output when
    /// there is none.
    MeanActivation,
    /// First-order Taylor estimate of the loss change when the unit is removed
    /// (Molchanov et al. 2017): per image `|Σ_positions z · ∂L/∂z| / positions`,
    /// averaged over the calibration images, where `z` is the unit's pre-activation.
    /// Through a ReLU, `z · ∂L/∂z = a · ∂L/∂a` element by element, so this is the
    /// post-ReLU criterion. It is computed exactly (not approximated) with the
    /// training engine's backward pass, one image at a time, through the identity
    /// `Σ_positions z · ∂L/∂z = Σ_θ θ · ∂L/∂θ` over the unit's weights and bias.
    /// Calibration images carry no labels: the loss is the cross-entropy against the
    /// model's own top-1 prediction (so the head may have at most 256 classes).
    Taylor,
}

impl Score {
    /// Whether the score needs calibration images.
    pub fn needs_data(self) -> bool {
        matches!(self, Score::MeanActivation | Score::Taylor)
    }
}

/// How the importance of an attention head is measured; the lowest go first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HeadScore {
    /// Euclidean norm of every weight the head owns: its rows of the query, key and
    /// value weights and its columns of the output weight (no data needed).
    #[default]
    Magnitude,
    /// Mean over calibration positions of the L2 norm of the head's contribution to
    /// the node's output, `W_o[:, head] · context_head` (the output projection applied
    /// to that head's slice of the attention context). Padding positions are not
    /// counted. The change of the output when the head is removed is exactly this
    /// vector, so the score ranks heads by what removing them changes first-hand.
    Contribution,
}

/// What to trim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrimConfig {
    /// Fraction of units to remove in each selected layer, in `[0, 1)`; exactly
    /// `round(ratio · units)` go, but at least one unit always stays.
    pub ratio: f64,
    /// The importance score.
    pub score: Score,
    /// Node names to trim. Empty: every Linear/Conv2d/LSTM/GRU whose output feeds another
    /// weighted layer through element-wise/per-channel ops only (so never the last
    /// classifier layer); layers that cannot be trimmed are skipped silently. A named
    /// layer that cannot be trimmed is an error.
    pub layers: Vec<String>,
    /// Per-layer ratios (node name → ratio) overriding `ratio`. Naming a layer here
    /// also selects it (as if it were listed in `layers`).
    pub per_layer: BTreeMap<String, f64>,
    /// Attention heads to remove from each SelfAttention node: every one, or only those
    /// named in `layers` when it names any. 0 = no head trimming. At least one head
    /// must stay in each node.
    pub heads: usize,
    /// How heads are ranked.
    pub head_score: HeadScore,
}

/// What was trimmed.
#[derive(Clone, Debug, PartialEq)]
pub struct TrimSummary {
    /// Per trimmed layer, in graph order: node name, units before, units after.
    pub layers: Vec<(String, usize, usize)>,
    /// Per trimmed attention node, in graph order: node name, heads before, heads after.
    pub heads: Vec<(String, usize, usize)>,
    /// Parameters of the model before trimming.
    pub params_before: usize,
    /// Parameters of the trimmed model.
    pub params_after: usize,
}

/// Errors of the trimming pass.
#[derive(Debug, thiserror::Error)]
pub enum TrimError {
    /// The common ratio is outside `[0, 1)`.
    #[error("trim ratio must be in [0, 1), got {0}")]
    Ratio(f64),
    /// A per-layer ratio is outside `[0, 1)`.
    #[error("trim ratio for layer '{layer}' must be in [0, 1), got {ratio}")]
    LayerRatio {
        /// The node name.
        layer: String,
        /// The ratio given.
        ratio: f64,
    },
    /// A requested layer is not a Linear, Conv2d, LSTM, GRU or SelfAttention node of the model.
    #[error("layer '{0}' is not a Linear, Conv2d, LSTM, GRU or SelfAttention node of this model")]
    UnknownLayer(String),
    /// A requested layer cannot be trimmed.
    #[error("layer '{layer}' cannot be trimmed: {reason}")]
    NotTrimmable {
        /// The node name.
        layer: String,
        /// Why not.
        reason: String,
    },
    /// More heads asked to be removed than a node can lose.
    #[error("cannot remove {remove} heads from the attention node '{layer}': it has {heads}, and at least one must stay (ask for at most {})", heads.saturating_sub(1))]
    TooManyHeads {
        /// The node name.
        layer: String,
        /// Heads the node has.
        heads: usize,
        /// Heads asked to be removed.
        remove: usize,
    },
    /// An attention node is named but no head count was given.
    #[error("layer '{0}' is an attention node: trim its heads with heads = N (its width is tied to the model width)")]
    AttentionWithoutHeads(String),
    /// Heads were asked for in a model without attention.
    #[error("heads = {0} asks to trim attention heads, but the model has no SelfAttention node")]
    NoAttention(usize),
    /// The contribution score was asked for without calibration inputs.
    #[error("the head score 'contribution' needs calibration inputs, none were given")]
    MissingHeadCalibration,
    /// A data-driven score was asked for without calibration images.
    #[error("score {0:?} needs calibration images, none were given")]
    MissingCalibration(Score),
    /// The calibration buffer is not a whole number of images.
    #[error("calibration data has {got} values, not a multiple of the input length {per_sample}")]
    CalibrationShape {
        /// Values given.
        got: usize,
        /// Values per image.
        per_sample: usize,
    },
    /// The Taylor score's identity needs a unit's output to be linear in its weights.
    #[error("the Taylor score is not defined for the recurrent node '{0}': use l1, l2 or mean-activation")]
    TaylorRecurrent(String),
    /// Taylor scores label images with u8 class indices.
    #[error("Taylor scores label calibration images with the model's own prediction, which needs at most 256 classes; the head has {0}")]
    TooManyClasses(usize),
    /// The model's parameters do not match its graph.
    #[error("the model's parameters do not match its graph: {0}")]
    Inconsistent(String),
    /// The model's graph is invalid.
    #[error("invalid architecture: {0}")]
    Spec(#[from] SpecError),
    /// Building the trimmed model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Running the model on the calibration images failed.
    #[error("cannot run the model on the calibration images: {0}")]
    Runtime(#[from] RuntimeError),
}

/// How the units of one trimmable node reach the rest of the graph.
#[derive(Clone, Debug)]
struct Reach {
    units: usize,
    /// Elements per unit in the node's own output (positions of a filter; 1 for Linear).
    positions: usize,
    /// The value whose |activation| [`Score::MeanActivation`] averages.
    activation: String,
    /// Weighted nodes reading the units, with the elements per unit in their input.
    consumers: Vec<(String, usize)>,
    /// The unit is the last dimension of the output (a recurrent node's `[H]` or
    /// `[steps, H]`, a Linear on a sequence `[positions, units]`), so its elements are
    /// `units` apart instead of one block (a Conv2d channel's `[units, positions]`).
    unit_last: bool,
    /// Per-channel Normalize nodes on the way, whose mean/std are sliced.
    normalizes: Vec<String>,
}

/// Follows the output of weighted node `idx` through element-wise/per-channel ops.
fn reach(graph: &Graph, shapes: &HashMap<String, Vec<usize>>, idx: usize) -> Result<Reach, String> {
    let node = &graph.nodes[idx];
    let units = match node.op {
        Op::Linear { out_features, .. } => out_features,
        // Removing a channel of a grouped conv would unbalance its groups.
        Op::Conv2d { groups, .. } if groups > 1 => {
            return Err(format!("it is a grouped convolution (groups = {groups}); trimming grouped convolutions is not supported"));
        }
        Op::Conv2d { out_channels, .. } => out_channels,
        // A unit of a bidirectional node is two (one per direction) and its output
        // interleaves them per step; not supported yet.
        Op::Lstm { bidirectional: true, .. } | Op::Gru { bidirectional: true, .. } => {
            return Err("it is a bidirectional LSTM/GRU; trimming bidirectional recurrent layers is not supported".into());
        }
        Op::Lstm { hidden, .. } | Op::Gru { hidden, .. } => hidden,
        _ => return Err("it is not a Linear, Conv2d, LSTM or GRU node".into()),
    };
    let recurrent = node.op.recurrent().is_some();
    if units == 0 {
        return Err("it has no units".into());
    }
    let numel = |v: &str| shapes.get(v).map_or(0, |s| s.iter().product::<usize>());
    let positions = numel(&node.name) / units.max(1);
    // A recurrent node's or a Linear on a sequence's units are the last dim, interleaved across steps/positions.
    let unit_last = recurrent || (matches!(node.op, Op::Linear { .. }) && shapes.get(&node.name).is_some_and(|s| s.len() > 1));
    let mut out = Reach { units, positions, activation: node.name.clone(), consumers: Vec::new(), normalizes: Vec::new(), unit_last };
    let mut first_relu: Option<usize> = None;
    let mut stack = vec![node.name.clone()];
    let mut seen = BTreeSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v.clone()) {
            continue;
        }
        if graph.outputs.contains(&v) {
            return Err(if v == node.name {
                "its output is a graph output".into()
            } else {
                format!("its output reaches the graph output '{v}'")
            });
        }
        for (j, reader) in graph.nodes.iter().enumerate().filter(|(_, n)| n.inputs.contains(&v)) {
            match &reader.op {
                Op::Relu => {
                    if first_relu.is_none_or(|r| j < r) {
                        first_relu = Some(j);
                    }
                    stack.push(reader.name.clone());
                }
                // Per-unit ops: a removed unit's channel simply disappears from them.
                Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::Flatten | Op::Sigmoid | Op::Tanh => stack.push(reader.name.clone()),
                Op::Normalize { mean, .. } => {
                    if mean.len() > 1 {
                        out.normalizes.push(reader.name.clone());
                    }
                    stack.push(reader.name.clone());
                }
                // A recurrent node's units are the last dimension: a Linear must read
                // them as its features (the last hidden state), not a flattened sequence.
                &Op::Linear { in_features, .. } if recurrent => {
                    if in_features != units {
                        return Err(format!(
                            "the Linear '{}' reads its output flattened ({in_features} features from {units} units per step); only a Linear on the last hidden state or another LSTM/GRU can follow a trimmed recurrent node",
                            reader.name
                        ));
                    }
                    out.consumers.push((reader.name.clone(), 1));
                }
                Op::Conv2d { .. } if recurrent => {
                    return Err(format!("its output feeds the Conv2d '{}'", reader.name));
                }
                Op::Conv2d { groups, .. } if *groups > 1 => {
                    return Err(format!(
                        "its output feeds the grouped convolution '{}' (groups = {groups}); trimming into grouped convolutions is not supported",
                        reader.name
                    ));
                }
                Op::Lstm { bidirectional: true, .. } | Op::Gru { bidirectional: true, .. } => {
                    return Err(format!(
                        "its output feeds the bidirectional {} '{}'; trimming into bidirectional recurrent layers is not supported",
                        reader.op.kind(),
                        reader.name
                    ));
                }
                // The next recurrent node reads the units as its input features: columns of its weight_ih.
                Op::Lstm { .. } | Op::Gru { .. } if recurrent => out.consumers.push((reader.name.clone(), 1)),
                // Elements per unit in the reader's input: a Linear after Flatten reads a
                // channel's positions as consecutive columns; one on a sequence reads the
                // units themselves (in_features = units, so 1).
                &Op::Linear { in_features, .. } => out.consumers.push((reader.name.clone(), in_features / units.max(1))),
                Op::Conv2d { .. } => out.consumers.push((reader.name.clone(), numel(&v) / units.max(1))),
                Op::Add => {
                    return Err(format!(
                        "its output reaches the Add '{}' (a residual connection, whose inputs must keep the same shape)",
                        reader.name
                    ));
                }
                Op::Softmax => {
                    return Err(format!("its output feeds the Softmax '{}' directly (its units are the classes)", reader.name));
                }
                Op::Lstm { .. } | Op::Gru { .. } => {
                    return Err(format!("its output feeds the recurrent node '{}' (trimming into a recurrent input is not supported)", reader.name));
                }
                // Element-wise: a removed unit simply disappears from it.
                Op::Gelu => stack.push(reader.name.clone()),
                Op::Embedding { .. } | Op::PositionEmbedding { .. } | Op::ClsToken { .. } | Op::PatchEmbed { .. } | Op::LayerNorm { .. } | Op::SelfAttention { .. } | Op::Pool { .. } => {
                    return Err(format!(
                        "its output feeds the {} '{}', whose width is tied to the model width (trim attention heads or FFN neurons instead)",
                        reader.op.kind(),
                        reader.name
                    ));
                }
            }
        }
    }
    if out.consumers.is_empty() {
        return Err("its output does not reach another Linear, Conv2d, LSTM or GRU layer".into());
    }
    if let Some(r) = first_relu {
        out.activation = graph.nodes[r].name.clone();
    }
    Ok(out)
}

/// Checks the model and resolves which layers to trim with which ratio, in graph order.
fn select(model: &Model, cfg: &TrimConfig) -> Result<Vec<(String, f64, Reach)>, TrimError> {
    let graph = &model.graph;
    let shapes = graph.validate()?;
    let specs = graph.parameters();
    if model.params.specs != specs {
        return Err(TrimError::Inconsistent("parameter list differs from the graph's".into()));
    }
    let total: usize = specs.iter().map(|s| s.numel()).sum();
    if model.params.data.len() != total || model.params.offsets.len() != specs.len() {
        return Err(TrimError::Inconsistent(format!("{} values for {total} parameters", model.params.data.len())));
    }
    if !(0.0..1.0).contains(&cfg.ratio) {
        return Err(TrimError::Ratio(cfg.ratio));
    }
    if let Some((l, r)) = cfg.per_layer.iter().find(|(_, r)| !(0.0..1.0).contains(*r)) {
        return Err(TrimError::LayerRatio { layer: l.clone(), ratio: *r });
    }
    let index_of = |name: &str| graph.nodes.iter().position(|n| n.name == name && n.op.has_params());
    let mut chosen: BTreeMap<usize, Reach> = BTreeMap::new();
    for name in cfg.layers.iter().chain(cfg.per_layer.keys()) {
        let i = index_of(name).ok_or_else(|| TrimError::UnknownLayer(name.clone()))?;
        // Attention nodes lose heads (see `attention_nodes`), not units.
        if graph.nodes[i].op.attention().is_some() {
            if cfg.heads == 0 || cfg.per_layer.contains_key(name) {
                return Err(TrimError::AttentionWithoutHeads(name.clone()));
            }
            continue;
        }
        let r = reach(graph, &shapes, i).map_err(|reason| TrimError::NotTrimmable { layer: name.clone(), reason })?;
        chosen.insert(i, r);
    }
    if cfg.layers.is_empty() {
        for i in 0..graph.nodes.len() {
            if graph.nodes[i].op.has_params()
                && !chosen.contains_key(&i)
                && let Ok(r) = reach(graph, &shapes, i)
            {
                chosen.insert(i, r);
            }
        }
    }
    Ok(chosen
        .into_iter()
        .map(|(i, r)| {
            let name = graph.nodes[i].name.clone();
            let ratio = cfg.per_layer.get(&name).copied().unwrap_or(cfg.ratio);
            (name, ratio, r)
        })
        // Ratio 0 everywhere selects nothing (a heads-only trim), unless layers are named.
        .filter(|(name, ratio, _)| *ratio > 0.0 || cfg.layers.contains(name) || cfg.per_layer.contains_key(name))
        .collect())
}

/// Importance of every unit of the layers [`trim`] would trim with `cfg` (node name →
/// one score per unit; higher is more important). `calibration` holds `n × input_len`
/// images and may be empty for [`Score::L1`] and [`Score::L2`].
pub fn scores(model: &Model, cfg: &TrimConfig, calibration: &[f32]) -> Result<BTreeMap<String, Vec<f64>>, TrimError> {
    let selected = select(model, cfg)?;
    let layers: Vec<(String, Reach)> = selected.into_iter().map(|(n, _, r)| (n, r)).collect();
    compute_scores(model, cfg.score, &layers, calibration)
}

fn compute_scores(model: &Model, score: Score, layers: &[(String, Reach)], calibration: &[f32]) -> Result<BTreeMap<String, Vec<f64>>, TrimError> {
    let per = model.graph.input_len();
    let n = if score.needs_data() {
        if calibration.is_empty() {
            return Err(TrimError::MissingCalibration(score));
        }
        if per == 0 || !calibration.len().is_multiple_of(per) {
            return Err(TrimError::CalibrationShape { got: calibration.len(), per_sample: per });
        }
        calibration.len() / per
    } else {
        0
    };
    // Every incoming weight of each unit: its row, or for a recurrent node its row in
    // each gate block of weight_ih and of weight_hh.
    let weight_rows = |name: &str, units: usize| -> Result<Vec<Vec<f32>>, TrimError> {
        let tensor = |suffix: &str| model.params.get(&format!("{name}.{suffix}")).ok_or_else(|| ModelError::MissingTensor { name: format!("{name}.{suffix}") });
        match model.graph.node(name).and_then(|n| n.op.recurrent()) {
            Some(r) => {
                let (w_ih, w_hh) = (tensor("weight_ih")?, tensor("weight_hh")?);
                Ok((0..units)
                    .map(|k| {
                        let mut row = Vec::new();
                        for q in 0..r.cell.gates() {
                            let at = q * r.hidden + k;
                            row.extend_from_slice(&w_ih[at * r.input_size..(at + 1) * r.input_size]);
                            row.extend_from_slice(&w_hh[at * r.hidden..(at + 1) * r.hidden]);
                        }
                        row
                    })
                    .collect())
            }
            None => {
                let w = tensor("weight")?;
                Ok(w.chunks_exact(w.len() / units.max(1)).map(|r| r.to_vec()).collect())
            }
        }
    };
    let mut out = BTreeMap::new();
    match score {
        Score::L1 | Score::L2 => {
            for (name, r) in layers {
                let s = weight_rows(name, r.units)?
                    .into_iter()
                    .map(|row| match score {
                        Score::L1 => row.iter().map(|v| v.abs() as f64).sum(),
                        _ => row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt(),
                    })
                    .collect();
                out.insert(name.clone(), s);
            }
        }
        Score::MeanActivation => {
            let plan = crate::store::model_plan(model)?;
            let mut ws = exec::Workspace::default();
            // Activation value → (units, elements per unit, Σ|a| per unit).
            let mut sums: HashMap<&str, (usize, usize, Vec<f64>)> =
                layers.iter().map(|(_, r)| (r.activation.as_str(), (r.units, 1, vec![0.0; r.units]))).collect();
            let unit_last: BTreeSet<&str> = layers.iter().filter(|(_, r)| r.unit_last).map(|(_, r)| r.activation.as_str()).collect();
            const BATCH: usize = 64;
            for start in (0..n).step_by(BATCH) {
                let b = BATCH.min(n - start);
                plan.run_observe(&calibration[start * per..(start + b) * per], b, &mut ws, &mut |value, data| {
                    if let Some((units, block, acc)) = sums.get_mut(value) {
                        *block = (data.len() / b / *units).max(1);
                        if unit_last.contains(value) {
                            for step in data.chunks_exact(*units) {
                                acc.iter_mut().zip(step).for_each(|(a, v)| *a += v.abs() as f64);
                            }
                            return;
                        }
                        for sample in data.chunks_exact(*block * *units) {
                            for (a, unit) in acc.iter_mut().zip(sample.chunks_exact(*block)) {
                                *a += unit.iter().map(|v| v.abs() as f64).sum::<f64>();
                            }
                        }
                    }
                })?;
            }
            for (name, r) in layers {
                let (_, block, acc) = &sums[r.activation.as_str()];
                out.insert(name.clone(), acc.iter().map(|a| a / (n * block) as f64).collect());
            }
        }
        Score::Taylor => {
            if let Some((name, _)) = layers.iter().find(|(_, r)| r.unit_last) {
                return Err(TrimError::TaylorRecurrent(name.clone()));
            }
            let mut ws = Workspace::new(model, 1);
            let classes = ws.head_output(1).len();
            if classes > 256 {
                return Err(TrimError::TooManyClasses(classes));
            }
            let ranges: Vec<_> = layers
                .iter()
                .map(|(name, _)| {
                    let w = model.params.index(&format!("{name}.weight")).map(|i| model.params.range(i));
                    let b = model.params.index(&format!("{name}.bias")).map(|i| model.params.range(i));
                    (w, b)
                })
                .collect();
            let mut acc: Vec<Vec<f64>> = layers.iter().map(|(_, r)| vec![0.0; r.units]).collect();
            for x in calibration.chunks_exact(per) {
                ws.forward(&model.params, x, 1);
                let label = crate::runtime::kernels::argmax(ws.head_output(1)) as u8;
                ws.loss_and_backward(&model.params, &[label], None, 1, 1.0);
                let (p, g) = (&model.params.data, &ws.param_grad);
                for ((a, (_, r)), (wr, br)) in acc.iter_mut().zip(layers).zip(&ranges) {
                    let Some(wr) = wr.clone() else { continue };
                    let row = wr.len() / r.units.max(1);
                    for (u, a) in a.iter_mut().enumerate() {
                        let s = wr.start + u * row..wr.start + (u + 1) * row;
                        let mut t: f64 = p[s.clone()].iter().zip(&g[s]).map(|(w, d)| (*w as f64) * (*d as f64)).sum();
                        if let Some(br) = br {
                            t += p[br.start + u] as f64 * g[br.start + u] as f64;
                        }
                        *a += t.abs() / r.positions.max(1) as f64;
                    }
                }
            }
            for ((name, _), a) in layers.iter().zip(acc) {
                out.insert(name.clone(), a.into_iter().map(|v| v / n as f64).collect());
            }
        }
    }
    Ok(out)
}

/// The attention nodes [`trim`] removes heads from with `cfg` (graph order), checked
/// against `cfg.heads`.
fn attention_nodes(model: &Model, cfg: &TrimConfig) -> Result<Vec<(String, Attention)>, TrimError> {
    if cfg.heads == 0 {
        return Ok(Vec::new());
    }
    let all: Vec<(String, Attention)> = model.graph.nodes.iter().filter_map(|n| Some((n.name.clone(), n.op.attention()?))).collect();
    if all.is_empty() {
        return Err(TrimError::NoAttention(cfg.heads));
    }
    let named: Vec<(String, Attention)> = all.iter().filter(|(n, _)| cfg.layers.contains(n)).cloned().collect();
    let chosen = if cfg.layers.is_empty() { all } else { named };
    if let Some((name, a)) = chosen.iter().find(|(_, a)| cfg.heads >= a.heads) {
        return Err(TrimError::TooManyHeads { layer: name.clone(), heads: a.heads, remove: cfg.heads });
    }
    Ok(chosen)
}

/// Importance of every head of the attention nodes [`trim`] would trim with `cfg`
/// (node name → one score per head; higher is more important). `calibration` holds
/// `n × input_len` inputs (images, or token ids) and may be empty for
/// [`HeadScore::Magnitude`].
pub fn head_scores(model: &Model, cfg: &TrimConfig, calibration: &[f32]) -> Result<BTreeMap<String, Vec<f64>>, TrimError> {
    let nodes = attention_nodes(model, cfg)?;
    compute_head_scores(model, cfg.head_score, &nodes, calibration)
}

fn compute_head_scores(model: &Model, score: HeadScore, nodes: &[(String, Attention)], calibration: &[f32]) -> Result<BTreeMap<String, Vec<f64>>, TrimError> {
    let tensor = |name: String| model.params.get(&name).ok_or(ModelError::MissingTensor { name });
    let mut out = BTreeMap::new();
    match score {
        HeadScore::Magnitude => {
            for (name, a) in nodes {
                let (hd, inner, d) = (a.head_dim, a.inner(), a.dim);
                let mut acc = vec![0.0f64; a.heads];
                for proj in ["query", "key", "value"] {
                    let w = tensor(format!("{name}.{proj}.weight"))?;
                    for (r, row) in w.chunks_exact(d).enumerate() {
                        acc[r / hd] += row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
                    }
                }
                let wo = tensor(format!("{name}.output.weight"))?;
                for row in wo.chunks_exact(inner) {
                    for (c, &v) in row.iter().enumerate() {
                        acc[c / hd] += f64::from(v) * f64::from(v);
                    }
                }
                out.insert(name.clone(), acc.into_iter().map(f64::sqrt).collect());
            }
        }
        HeadScore::Contribution => {
            let per = model.graph.input_len();
            if calibration.is_empty() {
                return Err(TrimError::MissingHeadCalibration);
            }
            if per == 0 || !calibration.len().is_multiple_of(per) {
                return Err(TrimError::CalibrationShape { got: calibration.len(), per_sample: per });
            }
            let n = calibration.len() / per;
            // Token inputs with a padding id: padding positions are not counted.
            let pad = model.graph.nodes.iter().find_map(|node| match node.op {
                Op::Embedding { pad_token: Some(p), .. } if node.inputs[0] == crate::spec::INPUT => Some(p),
                _ => None,
            });
            let plan = crate::store::model_plan(model)?;
            let mut ws = exec::Workspace::default();
            // Context value → (geometry, output weight, Σ‖contribution‖ per head, positions counted).
            let mut sums: HashMap<String, (Attention, &[f32], Vec<f64>, usize)> = HashMap::new();
            for (name, a) in nodes {
                sums.insert(format!("{name}.context"), (*a, tensor(format!("{name}.output.weight"))?, vec![0.0; a.heads], 0));
            }
            let mut valid = ValidLengths::default();
            let mut contribution = Vec::new();
            const BATCH: usize = 16;
            for start in (0..n).step_by(BATCH) {
                let b = BATCH.min(n - start);
                let x = &calibration[start * per..(start + b) * per];
                match pad {
                    Some(p) => valid.from_ids(x, b, per, p),
                    None => valid.clear(),
                }
                plan.run_observe(x, b, &mut ws, &mut |value, data| {
                    let Some((a, wo, acc, count)) = sums.get_mut(value) else { return };
                    let (hd, inner, d) = (a.head_dim, a.inner(), a.dim);
                    let rows = data.len() / inner / b;
                    contribution.resize(d, 0.0f32);
                    for s in 0..b {
                        for r in 0..valid.of(s, rows) {
                            let ctx = &data[(s * rows + r) * inner..][..inner];
                            for (h, a) in acc.iter_mut().enumerate() {
                                let ch = &ctx[h * hd..(h + 1) * hd];
                                for (y, wrow) in contribution.iter_mut().zip(wo.chunks_exact(inner)) {
                                    *y = wrow[h * hd..(h + 1) * hd].iter().zip(ch).map(|(w, c)| w * c).sum();
                                }
                                *a += contribution.iter().map(|&y| f64::from(y) * f64::from(y)).sum::<f64>().sqrt();
                            }
                            *count += 1;
                        }
                    }
                })?;
            }
            for (name, _) in nodes {
                let (_, _, acc, count) = &sums[&format!("{name}.context")];
                out.insert(name.clone(), acc.iter().map(|v| v / (*count).max(1) as f64).collect());
            }
        }
    }
    Ok(out)
}

/// Slices the heads `keep` (sorted) of attention node `node` (see the module docs).
fn trim_heads(
    model: &Model,
    node: &mut crate::spec::Node,
    a: Attention,
    keep: &[usize],
    tensors: &mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    masks: &mut BTreeMap<String, Vec<bool>>,
) -> Result<(), TrimError> {
    let (hd, inner, d) = (a.head_dim, a.inner(), a.dim);
    let kept: Vec<usize> = keep.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect();
    let all_d: Vec<usize> = (0..d).collect();
    if let Op::SelfAttention { heads, head_dim, .. } = &mut node.op {
        *heads = keep.len();
        // Written only when it no longer follows from dim / heads.
        *head_dim = (keep.len() * hd != d).then_some(hd);
    }
    for proj in crate::spec::ATTENTION_PROJECTIONS {
        let output = proj == "output";
        for part in ["weight", "bias"] {
            let pname = format!("{}.{proj}.{part}", node.name);
            let Some(data) = model.params.get(&pname) else { continue };
            let (shape, rows, cols, rows_kept, cols_kept): (Vec<usize>, usize, usize, &[usize], &[usize]) = match (output, part) {
                (false, "weight") => (vec![kept.len(), d], inner, d, &kept, &all_d),
                (false, _) => (vec![kept.len()], inner, 1, &kept, &[0]),
                (true, "weight") => (vec![d, kept.len()], d, inner, &all_d, &kept),
                (true, _) => (vec![d], d, 1, &all_d, &[0]),
            };
            if data.len() != rows * cols {
                return Err(TrimError::Inconsistent(format!("'{pname}' has {} values, not {rows}×{cols}", data.len())));
            }
            tensors.insert(pname.clone(), (shape, slice(data, cols, 1, rows_kept, cols_kept)));
            if let Some(mask) = model.constraints.masks.get(&pname) {
                if mask.len() != data.len() {
                    return Err(ModelError::MaskLength { name: pname, expected: data.len(), got: mask.len() }.into());
                }
                masks.insert(pname, slice(mask, cols, 1, rows_kept, cols_kept));
            }
        }
    }
    Ok(())
}

/// The units to keep: all but the `round(ratio · units)` lowest scores (capped so one
/// unit stays), ties removed by lower index first. Sorted.
fn keep_units(score: &[f64], ratio: f64) -> Vec<usize> {
    let units = score.len();
    let remove = ((ratio * units as f64).round() as usize).min(units.saturating_sub(1));
    keep_count(score, units - remove)
}

/// The `keep` highest-scoring units, ties removed by lower index first. Sorted.
fn keep_count(score: &[f64], keep: usize) -> Vec<usize> {
    let remove = score.len().saturating_sub(keep);
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
    let mut keep = order[remove..].to_vec();
    keep.sort_unstable();
    keep
}

/// Copies the kept part of a `[rows, cols, inner]` tensor.
fn slice<T: Copy>(data: &[T], cols: usize, inner: usize, rows_kept: &[usize], cols_kept: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(rows_kept.len() * cols_kept.len() * inner);
    for &r in rows_kept {
        for &c in cols_kept {
            let at = (r * cols + c) * inner;
            out.extend_from_slice(&data[at..at + inner]);
        }
    }
    out
}

/// Trims `model` as `cfg` asks: scores every unit of the selected layers on the
/// original model, removes the lowest, and returns the smaller dense model with the
/// same function on the kept units, plus a summary. `calibration` holds `n ×
/// input_len` images for the data-driven scores and may be empty for L1/L2.
///
/// Masks of every sliced tensor are sliced alike; all codebooks are cleared (see the
/// module documentation).
pub fn trim(model: &Model, cfg: &TrimConfig, calibration: &[f32]) -> Result<(Model, TrimSummary), TrimError> {
    let selected = select(model, cfg)?;
    let layers: Vec<(String, Reach)> = selected.iter().map(|(n, _, r)| (n.clone(), r.clone())).collect();
    let scores = compute_scores(model, cfg.score, &layers, calibration)?;
    let attention = attention_nodes(model, cfg)?;
    let head_scores = compute_head_scores(model, cfg.head_score, &attention, calibration)?;

    let mut out_keep: HashMap<String, Vec<usize>> = HashMap::new();
    // Weighted consumer → (kept units of its producer, elements per unit in its input).
    let mut in_keep: HashMap<String, (Vec<usize>, usize)> = HashMap::new();
    let mut normalize_keep: HashMap<String, Vec<usize>> = HashMap::new();
    let mut summary = TrimSummary { layers: Vec::new(), heads: Vec::new(), params_before: model.graph.num_params(), params_after: 0 };
    let mut head_keep: HashMap<String, (Attention, Vec<usize>)> = HashMap::new();
    for (name, a) in &attention {
        let keep = keep_count(&head_scores[name], a.heads - cfg.heads);
        summary.heads.push((name.clone(), a.heads, keep.len()));
        head_keep.insert(name.clone(), (*a, keep));
    }
    for (name, ratio, r) in &selected {
        let keep = keep_units(&scores[name], *ratio);
        summary.layers.push((name.clone(), r.units, keep.len()));
        for (c, block) in &r.consumers {
            in_keep.insert(c.clone(), (keep.clone(), *block));
        }
        for n in &r.normalizes {
            normalize_keep.insert(n.clone(), keep.clone());
        }
        out_keep.insert(name.clone(), keep);
    }

    let mut graph = model.graph.clone();
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    let mut masks = BTreeMap::new();
    for node in &mut graph.nodes {
        if let Some((a, keep)) = head_keep.get(&node.name) {
            trim_heads(model, node, *a, keep, &mut tensors, &mut masks)?;
            continue;
        }
        if let Some(r) = node.op.recurrent() {
            trim_recurrent(model, node, r, out_keep.get(&node.name), in_keep.get(&node.name).map(|k| &k.0), &mut tensors, &mut masks)?;
            continue;
        }
        let (rows, cols, inner) = match node.op {
            Op::Linear { in_features, out_features, .. } => (out_features, in_features, 1),
            // A grouped conv is never trimmed nor trimmed into (refused above): its
            // weight `[out, in / groups, k, k]` is copied whole.
            Op::Conv2d { in_channels, out_channels, kernel, groups, .. } => (out_channels, in_channels / groups.max(1), kernel * kernel),
            Op::Normalize { ref mut mean, ref mut std } => {
                if let Some(keep) = normalize_keep.get(&node.name) {
                    *mean = keep.iter().map(|&c| mean[c]).collect();
                    *std = keep.iter().map(|&c| std[c]).collect();
                }
                continue;
            }
            // Other parameterised nodes (Transformer ops, LSTM/GRU) keep their tensors:
            // their width is never trimmed.
            _ => {
                for (spec, data) in model.params.iter().filter(|(s, _)| s.node == node.name) {
                    if let Some(m) = model.constraints.masks.get(&spec.name) {
                        masks.insert(spec.name.clone(), m.clone());
                    }
                    tensors.insert(spec.name.clone(), (spec.shape.clone(), data.to_vec()));
                }
                continue;
            }
        };
        let rows_kept = out_keep.get(&node.name).cloned().unwrap_or_else(|| (0..rows).collect());
        let cols_kept: Vec<usize> = match (in_keep.get(&node.name), &node.op) {
            (Some((keep, block)), Op::Linear { .. }) => keep.iter().flat_map(|&u| u * block..(u + 1) * block).collect(),
            (Some((keep, _)), _) => keep.clone(),
            (None, _) => (0..cols).collect(),
        };
        match &mut node.op {
            Op::Linear { in_features, out_features, .. } => {
                (*in_features, *out_features) = (cols_kept.len(), rows_kept.len());
            }
            Op::Conv2d { groups, .. } if *groups > 1 => {}
            Op::Conv2d { in_channels, out_channels, .. } => {
                (*in_channels, *out_channels) = (cols_kept.len(), rows_kept.len());
            }
            _ => {}
        }
        for (suffix, cols, inner, cols_kept) in [("weight", cols, inner, &cols_kept[..]), ("bias", 1, 1, &[0][..])] {
            let pname = format!("{}.{suffix}", node.name);
            let Some(data) = model.params.get(&pname) else { continue };
            let shape = if suffix == "bias" {
                vec![rows_kept.len()]
            } else if inner == 1 {
                vec![rows_kept.len(), cols_kept.len()]
            } else {
                let k = (inner as f64).sqrt().round() as usize;
                vec![rows_kept.len(), cols_kept.len(), k, k]
            };
            tensors.insert(pname.clone(), (shape, slice(data, cols, inner, &rows_kept, cols_kept)));
            if let Some(mask) = model.constraints.masks.get(&pname) {
                if mask.len() != data.len() {
                    return Err(ModelError::MaskLength { name: pname, expected: data.len(), got: mask.len() }.into());
                }
                masks.insert(pname, slice(mask, cols, inner, &rows_kept, cols_kept));
            }
        }
    }
    let mut trimmed = Model::from_tensors(graph, tensors)?;
    trimmed.constraints.masks = masks;
    summary.params_after = trimmed.graph.num_params();
    Ok((trimmed, summary))
}

/// Slices a recurrent node: `keep` of its own hidden units (rows of every gate block,
/// columns of `weight_hh`), `input_keep` of its input features (columns of `weight_ih`).
fn trim_recurrent(
    model: &Model,
    node: &mut crate::spec::Node,
    r: crate::spec::Recurrent,
    keep: Option<&Vec<usize>>,
    input_keep: Option<&Vec<usize>>,
    tensors: &mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    masks: &mut BTreeMap<String, Vec<bool>>,
) -> Result<(), TrimError> {
    let units: Vec<usize> = keep.cloned().unwrap_or_else(|| (0..r.hidden).collect());
    let inputs: Vec<usize> = input_keep.cloned().unwrap_or_else(|| (0..r.input_size).collect());
    let rows: Vec<usize> = (0..r.cell.gates()).flat_map(|q| units.iter().map(move |&k| q * r.hidden + k)).collect();
    if let Op::Lstm { input_size, hidden, .. } | Op::Gru { input_size, hidden, .. } = &mut node.op {
        (*input_size, *hidden) = (inputs.len(), units.len());
    }
    // A bidirectional node is never trimmed nor trimmed into (refused above): both
    // directions' tensors are copied whole.
    let params = [("weight_ih", r.input_size, &inputs[..]), ("weight_hh", r.hidden, &units[..]), ("bias_ih", 1, &[0][..]), ("bias_hh", 1, &[0][..])];
    for (d, (suffix, cols, cols_kept)) in (0..r.directions()).flat_map(|d| params.iter().map(move |p| (d, *p))) {
        let pname = format!("{}.{}", node.name, crate::spec::Recurrent::param_suffix(suffix, d));
        let Some(data) = model.params.get(&pname) else { continue };
        let shape = if cols == 1 && suffix.starts_with("bias") { vec![rows.len()] } else { vec![rows.len(), cols_kept.len()] };
        tensors.insert(pname.clone(), (shape, slice(data, cols, 1, &rows, cols_kept)));
        if let Some(mask) = model.constraints.masks.get(&pname) {
            if mask.len() != data.len() {
                return Err(ModelError::MaskLength { name: pname, expected: data.len(), got: mask.len() }.into());
            }
            masks.insert(pname, slice(mask, cols, 1, &rows, cols_kept));
        }
    }
    Ok(())
}

/// The `trim` pass: remove whole neurons/filters (and attention heads) by importance,
/// propagate the removal to the next layer, then fine-tune the smaller dense model.
/// With `group_lasso > 0` (soft trimming) the rows to trim first train with a
/// group-lasso penalty so whole units shrink before they go.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Trim {
    /// Fraction of units to remove in each selected layer, in [0, 1) (0: heads only).
    #[serde(default)]
    #[arg(long, default_value_t = 0.0)]
    pub ratio: f64,
    /// How units are ranked.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub score: Score,
    /// Attention heads to remove from each SelfAttention node.
    #[serde(default)]
    #[arg(long, default_value_t = 0)]
    pub heads: usize,
    /// How attention heads are ranked: magnitude, or contribution (calibration data).
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub head_score: HeadScore,
    /// Only these layers (node names or `*` patterns, comma-separated); default every
    /// layer that feeds another weighted layer.
    #[serde(default)]
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// Per-layer ratios (node name → ratio; recipes only).
    #[serde(default)]
    #[arg(skip)]
    pub per_layer: BTreeMap<String, f64>,
    #[serde(default = "super::default_fine_tune")]
    #[arg(long, default_value_t = 3)]
    pub fine_tune_epochs: usize,
    /// Fine-tuning learning rate (default: half the training rate).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Calibration samples for the data-driven scores.
    #[serde(default = "super::default_calibration")]
    #[arg(long, default_value_t = 1000)]
    pub calibration: usize,
    /// Soft trimming: group-lasso strength on the rows to trim (0: off).
    #[serde(default)]
    #[arg(long, default_value_t = 0.0)]
    pub group_lasso: f32,
    /// Epochs of the group-lasso phase.
    #[serde(default = "super::default_fine_tune")]
    #[arg(long, default_value_t = 3)]
    pub group_lasso_epochs: usize,
}

/// Units of one trimmed layer.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct UnitsTrimmed {
    pub layer: String,
    pub units_before: usize,
    pub units_after: usize,
}

/// Heads of one trimmed attention node.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct HeadsTrimmed {
    pub layer: String,
    pub heads_before: usize,
    pub heads_after: usize,
}

/// The group-lasso phase of soft trimming.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct GroupLassoPhase {
    pub strength: f32,
    pub epochs: usize,
}

/// What a `trim` stage reports in `extra`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct TrimReport {
    pub layers: Vec<UnitsTrimmed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<HeadsTrimmed>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_score: Option<HeadScore>,
    pub params_before: usize,
    pub params_after: usize,
    pub score: Score,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_lasso: Option<GroupLassoPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_sentences: Option<usize>,
}

impl Technique for Trim {
    fn stage_name(&self) -> String {
        if self.heads == 0 {
            return "trimmed".into();
        }
        let score = match self.head_score {
            HeadScore::Magnitude => "magnitude",
            HeadScore::Contribution => "contribution",
        };
        if self.ratio > 0.0 { format!("trimmed-heads{}-{score}", self.heads) } else { format!("heads{}-{score}", self.heads) }
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        match kind {
            ModelKind::Tasks => return Err(super::not_available(kind, &self.stage_name())),
            ModelKind::Embedder if self.fine_tune_epochs > 0 || self.group_lasso > 0.0 => {
                return Err("pass trim: hf_dir models are trimmed in one shot (no fine-tuning data for an embedder): set fine_tune_epochs = 0 and leave group_lasso unset".into());
            }
            _ => {}
        }
        if self.ratio == 0.0 && self.heads == 0 {
            return Err("pass trim: nothing to trim: give ratio (a fraction of units) and/or heads (attention heads per node)".into());
        }
        check_fraction("trim", "ratio", self.ratio)?;
        for (k, v) in &self.per_layer {
            check_fraction("trim", &format!("per_layer.{k}"), *v)?;
        }
        Ok(())
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let layers = super::select::weighted_nodes(model, &self.layers).map_err(TrimError::UnknownLayer)?;
        let cfg = TrimConfig { ratio: self.ratio, score: self.score, layers, per_layer: self.per_layer.clone(), heads: self.heads, head_score: self.head_score };
        let calibration = ctx.calibration.first(self.calibration);
        let mut group_lasso = None;
        if self.group_lasso > 0.0 {
            let params = scores(model, &cfg, calibration.rows)?.into_keys().map(|l| format!("{l}.weight")).collect();
            let gl = crate::train::GroupLasso { strength: self.group_lasso, params };
            let ft = FineTune { epochs: self.group_lasso_epochs, lr: ctx.lr(), seed: ctx.seed.wrapping_add(555), l1: 0.0, group_lasso: Some(gl) };
            ctx.fine_tune("trim", model, ft)?;
            group_lasso = Some(GroupLassoPhase { strength: self.group_lasso, epochs: self.group_lasso_epochs });
        }
        let (trimmed, summary) = trim(model, &cfg, calibration.rows)?;
        *model = trimmed;
        let ft = FineTune { epochs: self.fine_tune_epochs, lr: self.lr.unwrap_or(ctx.lr() * 0.5), seed: ctx.pass_seed(), ..Default::default() };
        ctx.fine_tune("trim", model, ft)?;
        let mut lines: Vec<String> = summary.layers.iter().map(|(n, b, a)| format!("{n}: {b} → {a} units")).collect();
        lines.extend(summary.heads.iter().map(|(n, b, a)| format!("{n}: {b} → {a} heads")));
        lines.push(format!("{} → {} parameters", summary.params_before, summary.params_after));
        let heads: Vec<HeadsTrimmed> = summary.heads.iter().map(|(n, b, a)| HeadsTrimmed { layer: n.clone(), heads_before: *b, heads_after: *a }).collect();
        let has_heads = !heads.is_empty();
        let mut out = Output::model(&TrimReport {
            layers: summary.layers.iter().map(|(n, b, a)| UnitsTrimmed { layer: n.clone(), units_before: *b, units_after: *a }).collect(),
            heads: has_heads.then_some(heads),
            head_score: has_heads.then_some(self.head_score),
            params_before: summary.params_before,
            params_after: summary.params_after,
            score: self.score,
            group_lasso,
            calibration_sentences: (ctx.kind == ModelKind::Embedder && ctx.calibration.count > 0).then_some(calibration.count),
        });
        out.lines = lines;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;
    use crate::rng::Rng;
    use crate::spec::{Node, INPUT};
    use crate::store::model_plan;

    fn images(n: usize, len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * len).map(|_| rng.next_f32()).collect()
    }

    fn outputs(m: &Model, x: &[f32], n: usize) -> Vec<f32> {
        let plan = model_plan(m).unwrap();
        let mut ws = exec::Workspace::default();
        plan.run(x, n, &mut ws).unwrap().to_vec()
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "max difference {worst}");
    }

    /// Zeroes the incoming weights and bias of `units` of node `name`: they output 0.
    fn kill(m: &mut Model, name: &str, units: &[usize]) {
        let b = m.params.get_mut(&format!("{name}.bias")).unwrap();
        let n = b.len();
        units.iter().for_each(|&u| b[u] = 0.0);
        let w = m.params.get_mut(&format!("{name}.weight")).unwrap();
        let row = w.len() / n;
        for &u in units {
            w[u * row..(u + 1) * row].fill(0.0);
        }
    }

    fn cfg(ratio: f64, score: Score, layers: &[&str], per: &[(&str, f64)]) -> TrimConfig {
        TrimConfig {
            ratio,
            score,
            layers: layers.iter().map(|s| s.to_string()).collect(),
            per_layer: per.iter().map(|(l, r)| (l.to_string(), *r)).collect(),
            ..Default::default()
        }
    }

    fn head_cfg(heads: usize, head_score: HeadScore, layers: &[&str]) -> TrimConfig {
        TrimConfig { heads, head_score, layers: layers.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    /// Makes head `h` of attention node `name` dead: its query/key/value rows and its
    /// output columns are zero, so it adds nothing to the output.
    fn kill_head(m: &mut Model, name: &str, h: usize) {
        let a = m.graph.node(name).unwrap().op.attention().unwrap();
        let (hd, inner, d) = (a.head_dim, a.inner(), a.dim);
        for proj in ["query", "key", "value"] {
            m.params.get_mut(&format!("{name}.{proj}.weight")).unwrap()[h * hd * d..(h + 1) * hd * d].fill(0.0);
            m.params.get_mut(&format!("{name}.{proj}.bias")).unwrap()[h * hd..(h + 1) * hd].fill(0.0);
        }
        for row in m.params.get_mut(&format!("{name}.output.weight")).unwrap().chunks_exact_mut(inner) {
            row[h * hd..(h + 1) * hd].fill(0.0);
        }
    }

    /// ViT heads: removing dead heads (2 of 4 per block) slices query/key/value rows and
    /// output columns, sets head_dim, keeps the residual width and the function, in f32
    /// and after full int8; both scores rank the dead heads last; masks are sliced.
    #[test]
    fn trimming_dead_heads_of_a_vit_keeps_its_function() {
        let x = images(6, 784, 8);
        let mut m = Model::init(zoo::vit(&zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 2, ffn: 12 }), 5).unwrap();
        kill_head(&mut m, "b1_attn", 1);
        kill_head(&mut m, "b1_attn", 2);
        kill_head(&mut m, "b2_attn", 0);
        kill_head(&mut m, "b2_attn", 3);
        let mask: Vec<bool> = (0..16 * 16).map(|i| i % 3 != 0).collect();
        m.constraints.masks.insert("b1_attn.output.weight".into(), mask.clone());
        for score in [HeadScore::Magnitude, HeadScore::Contribution] {
            let sc = head_scores(&m, &head_cfg(2, score, &[]), &x).unwrap();
            assert_eq!(sc["b1_attn"][1], 0.0, "{score:?}");
            assert!(sc["b1_attn"][0] > 0.0 && sc["b2_attn"][1] > 0.0 && sc["b2_attn"][2] > 0.0, "{score:?}: {sc:?}");
            let (t, s) = trim(&m, &head_cfg(2, score, &[]), &x).unwrap();
            assert!(s.layers.is_empty(), "heads only: {:?}", s.layers);
            assert_eq!(s.heads, vec![("b1_attn".into(), 4, 2), ("b2_attn".into(), 4, 2)]);
            assert_eq!(t.graph.node("b1_attn").unwrap().op, Op::SelfAttention { dim: 16, heads: 2, causal: false, head_dim: Some(4) });
            assert_eq!(t.params.get("b2_attn.key.weight").unwrap(), &m.params.get("b2_attn.key.weight").unwrap()[4 * 16..12 * 16]);
            assert_eq!(t.params.get("b1_attn.output.bias").unwrap(), m.params.get("b1_attn.output.bias").unwrap());
            assert_eq!(s.params_before - s.params_after, 2 * 2 * 4 * (4 * 16 + 3));
            assert_close(&outputs(&m, &x, 6), &outputs(&t, &x, 6));
            let kept_mask = &t.constraints.masks["b1_attn.output.weight"];
            let want: Vec<bool> = mask.chunks_exact(16).flat_map(|r| r[0..4].iter().chain(&r[12..16]).copied()).collect();
            assert_eq!(kept_mask, &want);
            // Full int8 of the trimmed model (fused QKV of 3·8 rows) runs and stays close.
            let q = crate::compress::quantize::quantize(&t, &crate::compress::quantize::Precision::int8_all(&t, crate::compress::quantize::Mode::Full), &x).unwrap();
            let plan = crate::store::ModelFile::Sqz(q).plan().unwrap();
            let got = plan.run(&x, 6, &mut exec::Workspace::default()).unwrap().to_vec();
            let want = outputs(&t, &x, 6);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 0.05, "int8 of the trimmed vit differs by {worst}");
        }
    }

    /// Token inputs: padding positions are not counted by the contribution score (a
    /// padded batch scores as the same sentences without padding).
    #[test]
    fn head_contribution_skips_padding_positions() {
        let graph = |seq: usize| {
            Graph::chain(
                vec![seq],
                vec![
                    ("emb", Op::Embedding { vocab: 7, dim: 8, pad_token: Some(0) }),
                    ("attn", Op::SelfAttention { dim: 8, heads: 4, causal: false, head_dim: None }),
                    ("pool", Op::Pool { kind: crate::spec::PoolKind::Mean }),
                ],
            )
        };
        let long = Model::init(graph(5), 3).unwrap();
        let short = Model::from_tensors(graph(3), long.tensors().into_iter().map(|(k, v)| {
            let shape = long.params.specs.iter().find(|s| s.name == k).unwrap().shape.clone();
            (k, (shape, v))
        }).collect()).unwrap();
        let cfg = head_cfg(1, HeadScore::Contribution, &[]);
        let padded = head_scores(&long, &cfg, &[3.0, 5.0, 6.0, 0.0, 0.0, 1.0, 2.0, 4.0, 0.0, 0.0]).unwrap();
        let unpadded = head_scores(&short, &cfg, &[3.0, 5.0, 6.0, 1.0, 2.0, 4.0]).unwrap();
        for (a, b) in padded["attn"].iter().zip(&unpadded["attn"]) {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn head_trimming_errors_are_clear() {
        let m = Model::init(zoo::vit(&zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 2, ffn: 12 }), 5).unwrap();
        let e = trim(&m, &head_cfg(4, HeadScore::Magnitude, &[]), &[]).unwrap_err();
        assert!(matches!(e, TrimError::TooManyHeads { heads: 4, remove: 4, .. }), "{e}");
        assert!(e.to_string().contains("at most 3"), "{e}");
        let e = trim(&m, &head_cfg(1, HeadScore::Contribution, &[]), &[]).unwrap_err();
        assert!(matches!(e, TrimError::MissingHeadCalibration), "{e}");
        let e = trim(&m, &head_cfg(0, HeadScore::Magnitude, &["b1_attn"]), &[]).unwrap_err();
        assert!(matches!(e, TrimError::AttentionWithoutHeads(ref l) if l == "b1_attn"), "{e}");
        let e = trim(&m, &TrimConfig { heads: 1, per_layer: [("b1_attn".to_string(), 0.5)].into(), ..Default::default() }, &[]).unwrap_err();
        assert!(matches!(e, TrimError::AttentionWithoutHeads(_)), "{e}");
        // Naming one attention node trims only it.
        let (_, s) = trim(&m, &head_cfg(1, HeadScore::Magnitude, &["b2_attn"]), &[]).unwrap();
        assert_eq!(s.heads, vec![("b2_attn".into(), 4, 3)]);
        let mlp = Model::init(zoo::build("mlp").unwrap(), 1).unwrap();
        let e = trim(&mlp, &head_cfg(1, HeadScore::Magnitude, &[]), &[]).unwrap_err();
        assert!(matches!(e, TrimError::NoAttention(1)), "{e}");
    }

    /// ViT FFN neurons: trimming fc1's dead units (GELU(0) = 0) removes fc1 rows and
    /// fc2 columns (Linear on the sequence: one column per unit) and keeps the function;
    /// fc2, the attention and the head are not trimmable (residual width, classes).
    #[test]
    fn trimming_dead_ffn_neurons_of_a_vit_keeps_its_function() {
        let x = images(6, 784, 7);
        let mut m = Model::init(zoo::vit(&zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 2, ffn: 12 }), 4).unwrap();
        kill(&mut m, "b1_fc1", &[0, 3, 4, 9, 10, 11]);
        kill(&mut m, "b2_fc1", &[1, 2, 5, 6, 7, 8]);
        let (t, s) = trim(&m, &cfg(0.5, Score::L2, &[], &[]), &[]).unwrap();
        assert_eq!(s.layers, vec![("b1_fc1".into(), 12, 6), ("b2_fc1".into(), 12, 6)]);
        assert_eq!(t.graph.node("b2_fc2").unwrap().op, Op::Linear { in_features: 6, out_features: 16, bias: true });
        assert_close(&outputs(&m, &x, 6), &outputs(&t, &x, 6));
        // Mean |activation| on a sequence reads the units interleaved and ranks the dead ones last.
        let sc = scores(&m, &cfg(0.5, Score::MeanActivation, &[], &[]), &x).unwrap();
        let b1 = &sc["b1_fc1"];
        assert!([0, 3, 4, 9, 10, 11].iter().all(|&u| b1[u] == 0.0) && [1, 2, 5].iter().all(|&u| b1[u] > 0.0), "{b1:?}");
        let e = trim(&m, &cfg(0.5, Score::L2, &["b1_fc2"], &[]), &[]).unwrap_err();
        assert!(matches!(&e, TrimError::NotTrimmable { reason, .. } if reason.contains("Add")), "{e}");
    }

    #[test]
    fn trimming_dead_units_keeps_the_function_of_mlp_lenet300_lenet5() {
        let x = images(8, 784, 99);
        // mlp: fc1 only (fc2 is the classifier).
        let mut m = Model::init(zoo::build("mlp").unwrap(), 1).unwrap();
        kill(&mut m, "fc1", &[0, 5, 17, 63]);
        let (t, s) = trim(&m, &cfg(4.0 / 64.0, Score::L1, &[], &[]), &[]).unwrap();
        assert_eq!(s.layers, vec![("fc1".into(), 64, 60)]);
        assert_close(&outputs(&m, &x, 8), &outputs(&t, &x, 8));

        // lenet300: fc1 and fc2 by default, with per-layer ratios.
        let mut m = Model::init(zoo::build("lenet300").unwrap(), 2).unwrap();
        let dead1: Vec<usize> = (0..300).step_by(10).collect();
        let dead2: Vec<usize> = (3..100).step_by(4).collect();
        kill(&mut m, "fc1", &dead1);
        kill(&mut m, "fc2", &dead2);
        let c = cfg(0.0, Score::L1, &[], &[("fc1", 30.0 / 300.0), ("fc2", dead2.len() as f64 / 100.0)]);
        let (t, s) = trim(&m, &c, &[]).unwrap();
        assert_eq!(s.layers, vec![("fc1".into(), 300, 270), ("fc2".into(), 100, 100 - dead2.len())]);
        assert_eq!(t.graph.nodes.iter().find(|n| n.name == "fc3").unwrap().op, Op::Linear { in_features: 75, out_features: 10, bias: true });
        assert_close(&outputs(&m, &x, 8), &outputs(&t, &x, 8));

        // lenet5: conv1 (through ReLU → MaxPool → Conv), conv2 (through ReLU → MaxPool →
        // Flatten → Linear), fc1, fc2.
        let mut m = Model::init(zoo::build("lenet5").unwrap(), 3).unwrap();
        kill(&mut m, "conv1", &[1, 4]);
        kill(&mut m, "conv2", &[0, 7, 8, 15]);
        kill(&mut m, "fc1", &(0..120).step_by(4).collect::<Vec<_>>());
        kill(&mut m, "fc2", &(1..84).step_by(4).collect::<Vec<_>>());
        let c = cfg(0.25, Score::L1, &[], &[("conv1", 2.0 / 6.0)]);
        let (t, s) = trim(&m, &c, &[]).unwrap();
        assert_eq!(
            s.layers,
            vec![("conv1".into(), 6, 4), ("conv2".into(), 16, 12), ("fc1".into(), 120, 90), ("fc2".into(), 84, 63)]
        );
        let fc1 = t.graph.nodes.iter().find(|n| n.name == "fc1").unwrap();
        assert_eq!(fc1.op, Op::Linear { in_features: 12 * 25, out_features: 90, bias: true });
        assert_eq!(s.params_after, t.params.len());
        assert_close(&outputs(&m, &x, 8), &outputs(&t, &x, 8));
    }

    #[test]
    fn data_driven_scores_remove_dead_units_too() {
        let x = images(6, 784, 5);
        let mut m = Model::init(zoo::build("lenet5").unwrap(), 4).unwrap();
        kill(&mut m, "conv2", &[2, 9]);
        kill(&mut m, "fc1", &[0, 1, 2]);
        for score in [Score::MeanActivation, Score::Taylor] {
            let sc = scores(&m, &cfg(0.0, score, &["conv2", "fc1"], &[]), &x).unwrap();
            assert_eq!(sc["conv2"][2], 0.0);
            assert_eq!(sc["fc1"][1], 0.0);
            let c = cfg(0.0, score, &["conv2"], &[("conv2", 2.0 / 16.0), ("fc1", 3.0 / 120.0)]);
            let (t, s) = trim(&m, &c, &x).unwrap();
            assert_eq!(s.layers, vec![("conv2".into(), 16, 14), ("fc1".into(), 120, 117)], "{score:?}");
            assert_close(&outputs(&m, &x, 6), &outputs(&t, &x, 6));
        }
    }

    #[test]
    fn taylor_is_z_times_dl_dz_against_own_prediction() {
        // mlp: z = fc1 pre-activation, dL/dz = (W2ᵀ (p − onehot(argmax p))) ⊙ [z > 0].
        let m = Model::init(zoo::build("mlp").unwrap(), 12).unwrap();
        let x = images(3, 784, 13);
        let sc = scores(&m, &cfg(0.0, Score::Taylor, &["fc1"], &[]), &x).unwrap();
        let plan = model_plan(&m).unwrap();
        let mut ws = exec::Workspace::default();
        let (mut z, mut p) = (Vec::new(), Vec::new());
        plan.run_observe(&x, 3, &mut ws, &mut |name, data| match name {
            "fc1" => z = data.to_vec(),
            "softmax" => p = data.to_vec(),
            _ => {}
        })
        .unwrap();
        let w2 = m.params.get("fc2.weight").unwrap();
        let mut want = vec![0.0f64; 64];
        for s in 0..3 {
            let (zs, ps) = (&z[s * 64..(s + 1) * 64], &p[s * 10..(s + 1) * 10]);
            let y = crate::runtime::kernels::argmax(ps);
            for j in 0..64 {
                let da: f64 = (0..10).map(|k| w2[k * 64 + j] as f64 * (ps[k] as f64 - (k == y) as u8 as f64)).sum();
                let dz = if zs[j] > 0.0 { da } else { 0.0 };
                want[j] += (zs[j] as f64 * dz).abs() / 3.0;
            }
        }
        for (g, w) in sc["fc1"].iter().zip(&want) {
            assert!((g - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }

    /// Grouped convs are refused by name, as the trimmed layer and as a reader; a
    /// model that merely holds one still trims its other layers, the grouped weight
    /// copied whole.
    #[test]
    fn grouped_convs_are_refused_clearly_and_copied_whole() {
        let conv = |i, o, groups| Op::Conv2d { in_channels: i, out_channels: o, kernel: 3, stride: 1, padding: 1, bias: true, groups, dilation: 1 };
        let g = Graph::chain(
            vec![2, 6, 6],
            vec![
                ("a", conv(2, 4, 1)),
                ("ra", Op::Relu),
                ("dw", conv(4, 4, 4)),
                ("rd", Op::Relu),
                ("b", conv(4, 4, 1)),
                ("rb", Op::Relu),
                ("f", Op::Flatten),
                ("fc1", Op::Linear { in_features: 144, out_features: 8, bias: true }),
                ("r", Op::Relu),
                ("fc2", Op::Linear { in_features: 8, out_features: 3, bias: true }),
            ],
        );
        let m = Model::init(g, 3).unwrap();
        let e = trim(&m, &cfg(0.5, Score::L2, &["dw"], &[]), &[]).unwrap_err().to_string();
        assert!(e.contains("'dw'") && e.contains("grouped convolution (groups = 4)"), "{e}");
        let e = trim(&m, &cfg(0.5, Score::L2, &["a"], &[]), &[]).unwrap_err().to_string();
        assert!(e.contains("feeds the grouped convolution 'dw'"), "{e}");
        let (t, _) = trim(&m, &cfg(0.5, Score::L2, &["b", "fc1"], &[]), &[]).unwrap();
        assert_eq!(t.params.get("dw.weight").unwrap(), m.params.get("dw.weight").unwrap());
        assert!(matches!(t.graph.node("dw").unwrap().op, Op::Conv2d { in_channels: 4, out_channels: 4, groups: 4, .. }));
        assert_eq!(t.params.get("fc1.weight").unwrap().len(), 4 * 72);
    }

    #[test]
    fn mlp_half_of_fc1_parameter_count() {
        let m = Model::init(zoo::build("mlp").unwrap(), 7).unwrap();
        let (t, s) = trim(&m, &cfg(0.5, Score::L2, &["fc1"], &[]), &[]).unwrap();
        let want = 784 * 32 + 32 + 32 * 10 + 10;
        assert_eq!((s.params_before, s.params_after, t.params.len()), (50_890, want, want));
        // The kept rows are the 32 largest by L2, in their original order.
        let w = m.params.get("fc1.weight").unwrap();
        let norms: Vec<f64> = w.chunks(784).map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()).collect();
        let kept = keep_units(&norms, 0.5);
        assert_eq!(&t.params.get("fc1.weight").unwrap()[784..1568], &w[kept[1] * 784..(kept[1] + 1) * 784]);
        assert_eq!(t.params.get("fc2.weight").unwrap()[1], m.params.get("fc2.weight").unwrap()[kept[1]]);
    }

    #[test]
    fn every_score_gives_a_valid_runnable_lenet5() {
        let x = images(10, 784, 11);
        let m = Model::init(zoo::build("lenet5").unwrap(), 5).unwrap();
        for score in [Score::L1, Score::L2, Score::MeanActivation, Score::Taylor] {
            let (t, s) = trim(&m, &cfg(0.5, score, &[], &[]), &x).unwrap();
            t.graph.validate().unwrap();
            let got: Vec<_> = s.layers.iter().map(|l| l.2).collect();
            assert_eq!(got, vec![3, 8, 60, 42], "{score:?}");
            assert!(s.params_after < s.params_before / 2);
            let y = outputs(&t, &x, 10);
            assert_eq!(y.len(), 100);
            for row in y.chunks(10) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn masks_are_sliced_and_codebooks_cleared() {
        let mut m = Model::init(zoo::build("lenet5").unwrap(), 6).unwrap();
        let w = m.params.get("fc1.weight").unwrap();
        let mask: Vec<bool> = w.iter().map(|v| v.abs() > 0.02).collect();
        m.set_mask("fc1.weight", mask.clone()).unwrap();
        m.constraints.codebooks.insert("fc2.weight".into(), Default::default());
        let (t, _) = trim(&m, &cfg(0.5, Score::L1, &["conv2"], &[]), &[]).unwrap();
        assert!(t.constraints.codebooks.is_empty());
        let tm = &t.constraints.masks["fc1.weight"];
        let tw = t.params.get("fc1.weight").unwrap();
        assert_eq!(tm.len(), tw.len());
        assert_eq!(tm.len(), 120 * 8 * 25);
        assert!(tm.iter().zip(tw).all(|(k, v)| *k || *v == 0.0));
        assert_eq!(tm.iter().filter(|k| **k).count(), tw.iter().filter(|v| **v != 0.0).count());
    }

    #[test]
    fn per_channel_normalize_is_sliced() {
        let conv = |i, o| Op::Conv2d { in_channels: i, out_channels: o, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 };
        let g = Graph::chain(
            vec![2, 6, 6],
            vec![
                ("c1", conv(2, 4)),
                ("norm", Op::Normalize { mean: vec![0.1, 0.2, 0.3, 0.4], std: vec![1.0, 2.0, 3.0, 4.0] }),
                ("r1", Op::Relu),
                ("c2", conv(4, 3)),
                ("f", Op::Flatten),
                ("out", Op::Linear { in_features: 108, out_features: 5, bias: true }),
            ],
        );
        let mut m = Model::init(g, 8).unwrap();
        kill(&mut m, "c1", &[2]);
        // Channel 2 reaches c2 as relu((0 − 0.3) / 3) = 0; make c2 ignore it anyway.
        let w = m.params.get_mut("c2.weight").unwrap();
        for o in 0..3 {
            w[(o * 4 + 2) * 9..(o * 4 + 3) * 9].fill(0.0);
        }
        let (t, s) = trim(&m, &cfg(0.25, Score::L1, &["c1"], &[]), &[]).unwrap();
        assert_eq!(s.layers, vec![("c1".into(), 4, 3)]);
        assert_eq!(t.graph.nodes[1].op, Op::Normalize { mean: vec![0.1, 0.2, 0.4], std: vec![1.0, 2.0, 4.0] });
        let x = images(3, 72, 1);
        assert_close(&outputs(&m, &x, 3), &outputs(&t, &x, 3));
        // By default c1 and c2 are trimmable, "out" is a graph output.
        let (_, s) = trim(&m, &cfg(0.5, Score::L1, &[], &[]), &[]).unwrap();
        assert_eq!(s.layers.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(), vec!["c1", "c2"]);
        assert!(matches!(trim(&m, &cfg(0.5, Score::L1, &["out"], &[]), &[]), Err(TrimError::NotTrimmable { reason, .. }) if reason.contains("graph output")));
    }

    #[test]
    fn error_cases() {
        let m = Model::init(zoo::build("lenet5").unwrap(), 9).unwrap();
        let run = |c: TrimConfig, x: &[f32]| trim(&m, &c, x).map(|_| ()).unwrap_err();
        assert!(matches!(run(cfg(1.0, Score::L1, &[], &[]), &[]), TrimError::Ratio(r) if r == 1.0));
        assert!(matches!(run(cfg(-0.1, Score::L1, &[], &[]), &[]), TrimError::Ratio(_)));
        assert!(matches!(run(cfg(f64::NAN, Score::L1, &[], &[]), &[]), TrimError::Ratio(_)));
        assert!(matches!(run(cfg(0.5, Score::L1, &[], &[("fc1", 1.5)]), &[]), TrimError::LayerRatio { .. }));
        assert!(matches!(run(cfg(0.5, Score::L1, &["nope"], &[]), &[]), TrimError::UnknownLayer(l) if l == "nope"));
        assert!(matches!(run(cfg(0.5, Score::L1, &["relu1"], &[]), &[]), TrimError::UnknownLayer(_)));
        let e = run(cfg(0.5, Score::L1, &["fc3"], &[]), &[]);
        assert!(matches!(&e, TrimError::NotTrimmable { layer, reason } if layer == "fc3" && reason.contains("Softmax 'softmax'")), "{e}");
        assert!(matches!(run(cfg(0.5, Score::MeanActivation, &[], &[]), &[]), TrimError::MissingCalibration(Score::MeanActivation)));
        assert!(matches!(run(cfg(0.5, Score::Taylor, &[], &[]), &[]), TrimError::MissingCalibration(Score::Taylor)));
        assert!(matches!(run(cfg(0.5, Score::Taylor, &[], &[]), &[0.0; 785]), TrimError::CalibrationShape { got: 785, per_sample: 784 }));

        // A residual graph: 'a' reaches an Add; explicit request fails, default skips it.
        let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
        let g = Graph {
            input_shape: vec![8],
            nodes: vec![
                Node { name: "a".into(), inputs: vec![INPUT.into()], op: lin(8, 8) },
                Node { name: "r".into(), inputs: vec!["a".into()], op: Op::Relu },
                Node { name: "sum".into(), inputs: vec!["r".into(), INPUT.into()], op: Op::Add },
                Node { name: "h".into(), inputs: vec!["sum".into()], op: lin(8, 3) },
            ],
            outputs: vec!["h".into()],
            io_names: Default::default(),
        };
        let r = Model::init(g, 1).unwrap();
        let e = trim(&r, &cfg(0.5, Score::L1, &["a"], &[]), &[]).unwrap_err();
        assert!(e.to_string().contains("'a'") && e.to_string().contains("Add 'sum'"), "{e}");
        let (same, s) = trim(&r, &cfg(0.5, Score::L1, &[], &[]), &[]).unwrap();
        assert!(s.layers.is_empty());
        assert_eq!(same.params, r.params);
    }

    /// Bidirectional recurrent layers are refused by name, as the trimmed layer and as
    /// a reader; trimming other layers copies their four `_reverse` tensors whole.
    #[test]
    fn bidirectional_recurrent_layers_are_refused_clearly_and_copied_whole() {
        let g = Graph::chain(
            vec![5, 3],
            vec![
                ("r1", Op::Lstm { input_size: 3, hidden: 6, bias: true, sequence: true, bidirectional: false }),
                ("r2", Op::Gru { input_size: 6, hidden: 4, bias: true, sequence: false, bidirectional: true }),
                ("fc1", Op::Linear { in_features: 8, out_features: 6, bias: true }),
                ("relu", Op::Relu),
                ("fc2", Op::Linear { in_features: 6, out_features: 3, bias: true }),
            ],
        );
        let m = Model::init(g, 4).unwrap();
        let e = trim(&m, &cfg(0.5, Score::L2, &["r2"], &[]), &[]).unwrap_err().to_string();
        assert!(e.contains("'r2'") && e.contains("bidirectional LSTM/GRU"), "{e}");
        let e = trim(&m, &cfg(0.5, Score::L2, &["r1"], &[]), &[]).unwrap_err().to_string();
        assert!(e.contains("feeds the bidirectional GRU 'r2'"), "{e}");
        let (t, _) = trim(&m, &cfg(0.5, Score::L2, &["fc1"], &[]), &[]).unwrap();
        for suffix in ["weight_ih_reverse", "weight_hh_reverse", "bias_ih_reverse", "bias_hh_reverse", "weight_ih"] {
            let name = format!("r2.{suffix}");
            assert_eq!(t.params.get(&name).unwrap(), m.params.get(&name).unwrap(), "{name}");
        }
        assert_eq!(t.params.get("fc1.weight").unwrap().len(), 3 * 8);
    }

    /// Two stacked recurrent layers and a head, with some hidden units dead (every gate
    /// row and bias zero: h stays exactly 0 for an LSTM and a GRU alike).
    fn stacked_recurrent(cell: &str, dead1: &[usize], dead2: &[usize]) -> Model {
        let rec = |i, h, sequence| match cell {
            "lstm" => Op::Lstm { input_size: i, hidden: h, bias: true, sequence, bidirectional: false },
            _ => Op::Gru { input_size: i, hidden: h, bias: true, sequence, bidirectional: false },
        };
        let g = Graph::chain(vec![5, 3], vec![("r1", rec(3, 6, true)), ("r2", rec(6, 7, false)), ("fc", Op::Linear { in_features: 7, out_features: 4, bias: true })]);
        let mut m = Model::init(g, 21).unwrap();
        for (name, dead) in [("r1", dead1), ("r2", dead2)] {
            let r = m.graph.node(name).unwrap().op.recurrent().unwrap();
            for suffix in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
                let w = m.params.get_mut(&format!("{name}.{suffix}")).unwrap();
                let row = w.len() / r.gate_rows();
                for q in 0..r.cell.gates() {
                    for &k in dead {
                        let at = q * r.hidden + k;
                        w[at * row..(at + 1) * row].fill(0.0);
                    }
                }
            }
        }
        m
    }

    #[test]
    fn trimming_dead_recurrent_units_keeps_the_function_and_shrinks_the_next_layers() {
        let x = images(4, 15, 3);
        for cell in ["lstm", "gru"] {
            let mut m = stacked_recurrent(cell, &[1, 4], &[0, 3, 6]);
            let w = m.params.get("r2.weight_hh").unwrap();
            m.set_mask("r2.weight_hh", w.iter().enumerate().map(|(i, _)| i % 3 != 0).collect()).unwrap();
            for score in [Score::L1, Score::L2, Score::MeanActivation] {
                let c = cfg(0.0, score, &[], &[("r1", 2.0 / 6.0), ("r2", 3.0 / 7.0)]);
                let (t, s) = trim(&m, &c, &x).unwrap();
                assert_eq!(s.layers, vec![("r1".into(), 6, 4), ("r2".into(), 7, 4)], "{cell} {score:?}");
                assert_eq!(t.graph.node("r2").unwrap().op.recurrent().map(|r| (r.input_size, r.hidden)), Some((4, 4)));
                assert_eq!(t.graph.node("fc").unwrap().op, Op::Linear { in_features: 4, out_features: 4, bias: true });
                assert_eq!(s.params_after, t.params.len());
                let gates = if cell == "lstm" { 4 } else { 3 };
                assert_eq!(t.constraints.masks["r2.weight_hh"].len(), gates * 4 * 4);
                assert_close(&outputs(&m, &x, 4), &outputs(&t, &x, 4));
            }
            // By default both recurrent nodes are trimmed (fc is the graph output).
            let (_, s) = trim(&m, &cfg(0.5, Score::L1, &[], &[]), &[]).unwrap();
            assert_eq!(s.layers.iter().map(|l| (l.0.as_str(), l.2)).collect::<Vec<_>>(), vec![("r1", 3), ("r2", 3)]);
            let e = trim(&m, &cfg(0.5, Score::Taylor, &["r2"], &[]), &x).unwrap_err();
            assert!(matches!(e, TrimError::TaylorRecurrent(ref n) if n == "r2"), "{e}");
        }
        // A Linear reading a whole sequence flattened cannot follow a trimmed recurrent node.
        let g = Graph::chain(
            vec![5, 3],
            vec![("r", Op::Lstm { input_size: 3, hidden: 4, bias: true, sequence: true, bidirectional: false }), ("f", Op::Flatten), ("fc", Op::Linear { in_features: 20, out_features: 2, bias: true })],
        );
        let m = Model::init(g, 1).unwrap();
        let e = trim(&m, &cfg(0.5, Score::L1, &["r"], &[]), &[]).unwrap_err();
        assert!(e.to_string().contains("flattened"), "{e}");
    }

    #[test]
    fn at_least_one_unit_stays_and_ties_go_by_index() {
        assert_eq!(keep_units(&[1.0, 1.0, 1.0, 1.0], 0.5), vec![2, 3]);
        assert_eq!(keep_units(&[3.0, 1.0, 2.0], 0.99), vec![0]);
        assert_eq!(keep_units(&[3.0], 0.9), vec![0]);
        assert_eq!(keep_units(&[0.5, 0.1, 0.9, 0.1], 0.25), vec![0, 2, 3]);
    }
}
