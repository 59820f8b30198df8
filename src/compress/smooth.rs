//! SmoothQuant-style smoothing (Xiao et al. 2023) before int8 activation quantization.
//!
//! A few input channels of a Transformer's products carry values tens of times larger
//! than the rest (BERT's LayerNorm outputs have such outlier channels). When a row of
//! activations is quantized to u8 with one step, those channels set the step and the
//! others lose most of their bits. Smoothing moves part of that range into the weights:
//! per input channel `j` of a product `y = x·Wᵀ`,
//!
//! `s_j = max|x_j|^α / max|W_{:,j}|^(1−α)`, `x_j ← x_j / s_j`, `W_{:,j} ← W_{:,j}·s_j`,
//!
//! which leaves `y` unchanged in exact arithmetic. `max|x_j|` comes from calibration
//! inputs; the division has to be folded into whatever produces `x`, so only inputs
//! with a linear per-channel producer are smoothed:
//!
//! - a LayerNorm's output read by a Linear or by self-attention's query/key/value:
//!   `γ_j, β_j ← γ_j/s_j, β_j/s_j`. When the LayerNorm's output has other readers (in a
//!   post-norm block such as BERT's it is also the residual), the consumer gets its own
//!   copy of the LayerNorm, `<consumer>.smoothed_input`, with the divided `γ, β`, and
//!   the other readers keep the original;
//! - self-attention's context (the input of its output projection): channel `j` of
//!   the context is the attention-weighted sum of value channel `j` of the same head
//!   (the weights sum to 1 per query), so row `j` of the value projection and its bias
//!   are divided by `s_j` and column `j` of the output projection multiplied.
//!
//! An input produced by GELU (the second FFN layer) cannot be smoothed exactly and is
//! left as it is.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Model, ModelError};
use crate::runtime::exec::{RuntimeError, Workspace};
use crate::spec::{Node, Op};

/// Why a model cannot be smoothed.
#[derive(Debug, thiserror::Error)]
pub enum SmoothError {
    #[error("smooth: alpha must be a number in [0, 1], got {0}")]
    Alpha(f32),
    #[error("smooth needs calibration inputs (sentences: set [data] calibration), none were given")]
    NoCalibration,
    #[error("smooth: no product of this model reads a LayerNorm output or an attention context, so there is nothing to smooth (it applies to Transformer models)")]
    NothingToSmooth,
    #[error("smooth: '{0}' holds shared weights (a codebook or hash); smooth before sharing, not after")]
    Shared(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Which input of a node was smoothed and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Linear's or attention's query/key/value input, produced by LayerNorm `norm`.
    /// `copied`: the LayerNorm was duplicated (its output has other readers).
    LayerNormInput { consumer: String, norm: String, copied: bool },
    /// The context of attention node `attention` (the output projection's input).
    Context { attention: String },
}

impl Target {
    /// The graph value whose channels are divided by `s`.
    fn value(&self, graph: &crate::spec::Graph) -> String {
        match self {
            Target::LayerNormInput { consumer, .. } => graph.node(consumer).map(|n| n.inputs[0].clone()).unwrap_or_default(),
            Target::Context { attention } => format!("{attention}.context"),
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Target::LayerNormInput { consumer, norm, copied: true } => format!("{consumer} (input from a copy of {norm})"),
            Target::LayerNormInput { consumer, norm, copied: false } => format!("{consumer} (input from {norm})"),
            Target::Context { attention } => format!("{attention}.output (value rows)"),
        }
    }
}

/// What [`smooth`] did: the smoothed inputs with the range of their factors.
#[derive(Clone, Debug, Default)]
pub struct SmoothSummary {
    /// Per smoothed input: the target and (min, max) of its factors `s`.
    pub targets: Vec<(Target, f32, f32)>,
}

/// The inputs of `model` that can be smoothed exactly (see the module docs), in graph order.
pub fn targets(model: &Model) -> Vec<Target> {
    let g = &model.graph;
    let producer = |value: &str| g.node(value);
    let readers = |value: &str| g.nodes.iter().filter(|n| n.inputs.iter().any(|i| i == value)).count() + g.outputs.iter().filter(|o| *o == value).count();
    let mut out = Vec::new();
    for n in &g.nodes {
        let reads_norm = matches!(n.op, Op::Linear { .. } | Op::SelfAttention { .. })
            && producer(&n.inputs[0]).is_some_and(|p| matches!(p.op, Op::LayerNorm { .. }));
        if reads_norm {
            let norm = n.inputs[0].clone();
            let copied = readers(&norm) > 1;
            out.push(Target::LayerNormInput { consumer: n.name.clone(), norm, copied });
        }
        if matches!(n.op, Op::SelfAttention { .. }) {
            out.push(Target::Context { attention: n.name.clone() });
        }
    }
    out
}

/// Per channel (last dimension) max |x| of the given values over the calibration inputs
/// (`n × input_len`, every position, padding included as the runtime computes it).
fn channel_maxima(model: &Model, values: &[(String, usize)], calibration: &[f32]) -> Result<HashMap<String, Vec<f32>>, SmoothError> {
    let per = model.graph.input_len();
    let n = calibration.len() / per.max(1);
    if n == 0 {
        return Err(SmoothError::NoCalibration);
    }
    let plan = crate::store::model_plan(model)?;
    let mut maxima: HashMap<String, Vec<f32>> = values.iter().map(|(v, c)| (v.clone(), vec![0.0; *c])).collect();
    let mut ws = Workspace::default();
    for start in (0..n).step_by(64) {
        let end = (start + 64).min(n);
        plan.run_observe(&calibration[start * per..end * per], end - start, &mut ws, &mut |name, data| {
            if let Some(m) = maxima.get_mut(name) {
                let c = m.len();
                for row in data.chunks_exact(c) {
                    for (mx, v) in m.iter_mut().zip(row) {
                        *mx = mx.max(v.abs());
                    }
                }
            }
        })?;
    }
    Ok(maxima)
}

/// The smoothing factors of one input from its activation and weight maxima:
/// `s = max|x|^α / max|w|^(1−α)`, 1 where either is zero (a dead channel stays as it is).
pub fn factors(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(weight_max)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 {
                let s = (f64::from(a).powf(f64::from(alpha)) / f64::from(w).powf(f64::from(1.0 - alpha))) as f32;
                if s.is_finite() && s > 0.0 { s } else { 1.0 }
            } else {
                1.0
            }
        })
        .collect()
}

/// Max |w[:, j]| over the rows of `[rows, cols]` row-major weights, into `out[j]`.
fn column_max(w: &[f32], cols: usize, out: &mut [f32]) {
    for row in w.chunks_exact(cols) {
        for (m, v) in out.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
}

fn scale_columns(w: &mut [f32], s: &[f32]) {
    for row in w.chunks_exact_mut(s.len()) {
        row.iter_mut().zip(s).for_each(|(v, f)| *v *= f);
    }
}

/// Smooths every input of `targets(model)` with strength `alpha` (0.5 balances the
/// ranges of activations and weights), the activation maxima taken from `calibration`
/// (`n × input_len` model inputs). Returns the new model (same outputs in exact
/// arithmetic; LayerNorms copied where their output has other readers) and what was done.
pub fn smooth(model: &Model, calibration: &[f32], alpha: f32) -> Result<(Model, SmoothSummary), SmoothError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(SmoothError::Alpha(alpha));
    }
    let targets = targets(model);
    if targets.is_empty() {
        return Err(SmoothError::NothingToSmooth);
    }
    let graph = &model.graph;
    let consumer_of = |t: &Target| match t {
        Target::LayerNormInput { consumer, .. } => consumer.clone(),
        Target::Context { attention } => attention.clone(),
    };
    if let Some(name) = model.constraints.codebooks.keys().find(|k| targets.iter().any(|t| k.starts_with(&format!("{}.", consumer_of(t))))) {
        return Err(SmoothError::Shared(name.clone()));
    }
    let shapes = graph.validate().map_err(ModelError::from)?;
    let values: Vec<(String, usize)> = targets
        .iter()
        .map(|t| match t {
            Target::Context { attention } => {
                let inner = graph.node(attention).and_then(|n| n.op.attention()).map_or(0, |a| a.inner());
                (t.value(graph), inner)
            }
            _ => {
                let v = t.value(graph);
                let c = shapes.get(&v).and_then(|s| s.last().copied()).unwrap_or(0);
                (v, c)
            }
        })
        .collect();
    let maxima = channel_maxima(model, &values, calibration)?;
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = model.params.iter().map(|(s, d)| (s.name.clone(), (s.shape.clone(), d.to_vec()))).collect();
    let mut nodes: Vec<Node> = graph.nodes.clone();
    let mut summary = SmoothSummary::default();
    for (t, (value, cols)) in targets.iter().zip(&values) {
        let act = &maxima[value];
        let mut wmax = vec![0.0f32; *cols];
        let s = match t {
            Target::LayerNormInput { consumer, norm, copied } => {
                let weights: Vec<String> = match graph.node(consumer).map(|n| &n.op) {
                    Some(Op::SelfAttention { .. }) => ["query", "key", "value"].iter().map(|p| format!("{consumer}.{p}.weight")).collect(),
                    _ => vec![format!("{consumer}.weight")],
                };
                for w in &weights {
                    column_max(&tensors[w].1, *cols, &mut wmax);
                }
                let s = factors(act, &wmax, alpha);
                for w in &weights {
                    scale_columns(&mut tensors.get_mut(w).expect("weight listed above").1, &s);
                }
                let norm_node = graph.node(norm).expect("a target's LayerNorm exists").clone();
                let (gamma, beta) = (tensors[&format!("{norm}.weight")].clone(), tensors[&format!("{norm}.bias")].clone());
                let divided = |(shape, v): (Vec<usize>, Vec<f32>)| (shape, v.iter().zip(&s).map(|(x, f)| x / f).collect::<Vec<f32>>());
                let target_norm = if *copied { format!("{consumer}.smoothed_input") } else { norm.clone() };
                tensors.insert(format!("{target_norm}.weight"), divided(gamma));
                tensors.insert(format!("{target_norm}.bias"), divided(beta));
                if *copied {
                    let at = nodes.iter().position(|n| n.name == *consumer).expect("consumer exists");
                    nodes.insert(at, Node { name: target_norm.clone(), inputs: norm_node.inputs.clone(), op: norm_node.op.clone() });
                    nodes[at + 1].inputs[0] = target_norm;
                }
                s
            }
            Target::Context { attention } => {
                let out_w = format!("{attention}.output.weight");
                column_max(&tensors[&out_w].1, *cols, &mut wmax);
                let s = factors(act, &wmax, alpha);
                scale_columns(&mut tensors.get_mut(&out_w).expect("output projection").1, &s);
                let value_w = &mut tensors.get_mut(&format!("{attention}.value.weight")).expect("value projection").1;
                let dim = value_w.len() / cols.max(&1);
                for (row, f) in value_w.chunks_exact_mut(dim).zip(&s) {
                    row.iter_mut().for_each(|v| *v /= f);
                }
                let value_b = &mut tensors.get_mut(&format!("{attention}.value.bias")).expect("value bias").1;
                value_b.iter_mut().zip(&s).for_each(|(v, f)| *v /= f);
                s
            }
        };
        let (lo, hi) = s.iter().fold((f32::INFINITY, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        summary.targets.push((t.clone(), lo, hi));
    }
    let new_graph = crate::spec::Graph { nodes, ..graph.clone() };
    let mut smoothed = Model::from_tensors(new_graph, tensors)?;
    // Masks keep their meaning: scaling leaves a pruned (zero) weight zero.
    smoothed.constraints.masks = model.constraints.masks.clone();
    Ok((smoothed, summary))
}

/// The smoothing factors' range per target, for reports: `{ input: [min s, max s] }`.
pub fn summary_json(summary: &SmoothSummary) -> serde_json::Value {
    let m: BTreeMap<String, [f32; 2]> = summary.targets.iter().map(|(t, lo, hi)| (t.describe(), [*lo, *hi])).collect();
    serde_json::to_value(m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;
    use crate::rng::Rng;

    /// A small pre-norm ViT (LayerNorm → attention, LayerNorm → FFN, nothing else reads
    /// the norms) with one outlier channel in every LayerNorm's output.
    fn vit_with_outliers() -> (Model, Vec<f32>) {
        let mut m = Model::init(zoo::vit(&zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 2, ffn: 24 }), 5).unwrap();
        let mut rng = Rng::new(6);
        m.params.data.iter_mut().for_each(|v| *v += rng.uniform(0.05));
        let norms: Vec<String> = m.graph.nodes.iter().filter(|n| matches!(n.op, Op::LayerNorm { .. })).map(|n| n.name.clone()).collect();
        for n in norms {
            m.params.get_mut(&format!("{n}.weight")).unwrap()[3] = 12.0;
        }
        let x: Vec<f32> = (0..24 * 784).map(|_| rng.next_f32()).collect();
        (m, x)
    }

    fn run(m: &Model, x: &[f32], n: usize) -> Vec<f32> {
        crate::store::model_plan(m).unwrap().run(x, n, &mut Workspace::default()).unwrap().to_vec()
    }

    /// Smoothing changes the weights and norms but not the function (f32 rounding
    /// only); a pre-norm block folds into its LayerNorms in place.
    #[test]
    fn smoothing_a_pre_norm_vit_is_exact_in_f32_and_folds_in_place() {
        let (m, x) = vit_with_outliers();
        let (s, summary) = smooth(&m, &x[..16 * 784], 0.5).unwrap();
        assert_eq!(s.graph.nodes.len(), m.graph.nodes.len(), "no LayerNorm copies in a pre-norm model");
        // Per block: the attention's input, its context and the FFN input.
        assert_eq!(summary.targets.len(), 6, "{:?}", summary.targets);
        assert!(summary.targets.iter().all(|(t, lo, hi)| lo > &0.0 && hi > lo && !matches!(t, Target::LayerNormInput { copied: true, .. })));
        assert_ne!(s.params.get("b1_attn.query.weight"), m.params.get("b1_attn.query.weight"));
        let (want, got) = (run(&m, &x, 24), run(&s, &x, 24));
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "smoothing moved the outputs by {worst}");
    }

    /// The factors follow the formula, and a dead channel keeps factor 1.
    #[test]
    fn factors_balance_activation_and_weight_ranges() {
        let s = factors(&[4.0, 1.0, 0.0, 9.0], &[1.0, 4.0, 2.0, 0.0], 0.5);
        assert_eq!(s, vec![2.0, 0.5, 1.0, 1.0]);
        // α = 1: all the range moves into the weights; α = 0: all into the activations.
        assert_eq!(factors(&[4.0], &[0.5], 1.0), vec![4.0]);
        assert_eq!(factors(&[4.0], &[0.5], 0.0), vec![2.0]);
    }

    /// Bad strength, no calibration and models without LayerNorm-fed products are
    /// clear errors.
    #[test]
    fn bad_smoothing_requests_are_errors() {
        let (m, x) = vit_with_outliers();
        assert!(matches!(smooth(&m, &x, 1.5), Err(SmoothError::Alpha(_))));
        assert!(matches!(smooth(&m, &x, f32::NAN), Err(SmoothError::Alpha(_))));
        assert!(matches!(smooth(&m, &[], 0.5), Err(SmoothError::NoCalibration)));
        let mlp = Model::init(zoo::build("mlp").unwrap(), 1).unwrap();
        let x = vec![0.5; 784];
        let err = smooth(&mlp, &x, 0.5).unwrap_err();
        assert!(matches!(err, SmoothError::NothingToSmooth) && err.to_string().contains("Transformer"), "{err}");
    }
}
