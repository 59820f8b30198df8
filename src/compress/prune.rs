//! Hard pruning by magnitude: remove the connections with the smallest |w|, either the
//! same fraction in every layer (layer-wise) or one threshold over all weights (global).
//! The removal is recorded as a mask constraint, so fine-tuning keeps it.
//!
//! [`prune_scored`] ranks weights within each output row instead, by magnitude or by
//! Wanda's activation-aware score `|W_ij| · ‖X_j‖₂` (Sun et al., 2023: the input
//! feature's L2 norm over calibration rows, [`input_norms`]), and also prunes to an
//! N:M pattern (2:4: in every block of 4 consecutive inputs of a row, keep 2).

use serde::{Deserialize, Serialize};

use std::collections::{BTreeMap, HashMap};

use super::pass::{check_fraction, Context, FineTune, ModelKind, Output, PassError, Technique};

use crate::model::Model;
use crate::spec::ParamKind;

/// How the sparsity target is spread over layers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every weight tensor loses the same fraction.
    #[default]
    Layer,
    /// One magnitude threshold across all weight tensors.
    Global,
}

/// How the sparsity target is reached over several prune-and-retrain steps.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// All at once (one step).
    #[default]
    OneShot,
    /// Zhu & Gupta's cubic (AGP) schedule: `s_t = s_f · (1 − (1 − t/n)³)`, fast first,
    /// gentle at the end.
    Cubic,
    /// Equal ratios of survivors per step: density `d_t = d_f^(t/n)`.
    Geometric,
}

impl Schedule {
    /// The sparsity after step `t` of `steps` (1-based) for a final sparsity `target`.
    pub fn at(self, target: f64, t: usize, steps: usize) -> f64 {
        let steps = steps.max(1);
        let frac = (t.min(steps)) as f64 / steps as f64;
        match self {
            Schedule::OneShot => target,
            Schedule::Cubic => target * (1.0 - (1.0 - frac).powi(3)),
            Schedule::Geometric => 1.0 - (1.0 - target).powf(frac),
        }
    }
}

/// Errors of the pruning pass.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PruneError {
    #[error("sparsity must be in [0, 1), got {0}")]
    Sparsity(f64),
    #[error("{0}")]
    Pattern(String),
    #[error("calibration run failed: {0}")]
    Calibration(String),
    #[error("layer '{0}' is not a weight of this model")]
    UnknownLayer(String),
}

/// What was pruned.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneSummary {
    /// Per weight tensor: name, weights, weights kept.
    pub layers: Vec<(String, usize, usize)>,
}

/// Prunes weight tensors (never biases) of `model` to `sparsity` by magnitude; `layers`
/// limits the pass to the named nodes (all weighted nodes when empty). Weights already
/// masked count as removed, and stay removed.
pub fn magnitude(model: &mut Model, sparsity: f64, scope: Scope, layers: &[String]) -> Result<PruneSummary, PruneError> {
    magnitude_per_layer(model, sparsity, scope, layers, &Default::default())
}

/// As [`magnitude`], with per-layer targets (node name → sparsity) that override the
/// common one for those layers (layer-wise scope; under global scope the named layers
/// are pruned to their own targets and the rest share one threshold).
pub fn magnitude_per_layer(
    model: &mut Model,
    sparsity: f64,
    scope: Scope,
    layers: &[String],
    per_layer: &std::collections::BTreeMap<String, f64>,
) -> Result<PruneSummary, PruneError> {
    for s in std::iter::once(&sparsity).chain(per_layer.values()) {
        if !(0.0..1.0).contains(s) {
            return Err(PruneError::Sparsity(*s));
        }
    }
    if let Some(l) = per_layer.keys().find(|l| !model.params.specs.iter().any(|s| &s.node == *l && s.kind == ParamKind::Weight)) {
        return Err(PruneError::UnknownLayer(l.clone()));
    }
    for l in layers {
        if !model.params.specs.iter().any(|s| &s.node == l && s.kind == ParamKind::Weight) {
            return Err(PruneError::UnknownLayer(l.clone()));
        }
    }
    let targets: Vec<String> = model
        .params
        .specs
        .iter()
        .filter(|s| s.kind == ParamKind::Weight && (layers.is_empty() || layers.contains(&s.node)))
        .map(|s| s.name.clone())
        .collect();
    let magnitude_of = |m: &Model, name: &str| -> Vec<f32> {
        let w = m.params.get(name).expect("target comes from the model");
        let mask = m.constraints.masks.get(name);
        w.iter().enumerate().map(|(i, v)| if mask.is_some_and(|k| !k[i]) { -1.0 } else { v.abs() }).collect()
    };
    let node_of: std::collections::HashMap<String, String> =
        model.params.specs.iter().map(|s| (s.name.clone(), s.node.clone())).collect();
    let own_target = |name: &str| node_of.get(name).and_then(|n| per_layer.get(n)).copied();
    let global_threshold = match scope {
        Scope::Global => {
            let mut all: Vec<f32> = targets.iter().filter(|t| own_target(t).is_none()).flat_map(|t| magnitude_of(model, t)).collect();
            Some(kth_threshold(&mut all, sparsity))
        }
        Scope::Layer => None,
    };
    let mut summary = PruneSummary { layers: Vec::new() };
    for name in targets {
        let mags = magnitude_of(model, &name);
        let (mask, kept) = match (own_target(&name), global_threshold) {
            (None, Some((t, _))) => keep_above(&mags, t, None),
            (target, _) => {
                let mut sorted = mags.clone();
                let (t, ties) = kth_threshold(&mut sorted, target.unwrap_or(sparsity));
                keep_above(&mags, t, Some(ties))
            }
        };
        summary.layers.push((name.clone(), mags.len(), kept));
        model.set_mask(&name, mask).expect("mask has the parameter's length");
    }
    Ok(summary)
}

/// What ranks a weight within its output row.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// `|W_ij|`.
    #[default]
    Magnitude,
    /// `|W_ij| · ‖X_j‖₂` over calibration rows (Wanda).
    Wanda,
}

/// Which weights compete for removal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// The given fraction of every output row.
    Rows { sparsity: f64 },
    /// Keep `n` of every `m` consecutive inputs of a row (2:4 = semi-structured).
    NofM { n: usize, m: usize },
}

/// The weight tensors a row-wise pass can prune, with the graph value each one reads
/// (its input features): a Linear's weight reads the node's input; an attention
/// node's query/key/value weights read the attention input. The attention output
/// projection reads the attention context, which is internal to the node: it is
/// listed with no input value (Wanda scores it by magnitude).
pub fn row_prunable(model: &Model) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for node in &model.graph.nodes {
        match &node.op {
            crate::spec::Op::Linear { .. } => out.push((node.name.clone(), format!("{}.weight", node.name), Some(node.inputs[0].clone()))),
            _ => {
                for (suffix, reads_input) in attention_projections(&node.op) {
                    out.push((node.name.clone(), format!("{}.{suffix}.weight", node.name), reads_input.then(|| node.inputs[0].clone())));
                }
            }
        }
    }
    out
}

/// The projections of an attention node and whether each reads the node's input.
pub fn attention_projections(op: &crate::spec::Op) -> Vec<(&'static str, bool)> {
    match op {
        crate::spec::Op::SelfAttention { .. } => vec![("query", true), ("key", true), ("value", true), ("output", false)],
        _ => Vec::new(),
    }
}

/// Per graph value read by a row-prunable weight: the L2 norm of each feature (last
/// dim) over every calibration row. `inputs` holds `n` samples; with `valid`, rows of a
/// `[seq, features]` value at positions at or past a sample's valid length (padding)
/// are left out.
pub fn input_norms(model: &Model, inputs: &[f32], n: usize, valid: Option<&[usize]>) -> Result<HashMap<String, Vec<f32>>, PruneError> {
    use crate::runtime::exec::{Plan, Weights, Workspace};
    let calib = |e: String| PruneError::Calibration(e);
    let shapes = model.graph.validate().map_err(|e| calib(e.to_string()))?;
    let seq = model.graph.input_shape.first().copied().unwrap_or(0);
    let wanted: HashMap<String, usize> = row_prunable(model)
        .into_iter()
        .filter_map(|(_, _, v)| v)
        .filter_map(|v| {
            let shape = if v == crate::spec::INPUT { model.graph.input_shape.clone() } else { shapes.get(&v)?.clone() };
            Some((v, *shape.last()?))
        })
        .collect();
    let weights: HashMap<String, Weights> = model.tensors().into_iter().map(|(k, v)| (k, Weights::F32(v))).collect();
    let plan = Plan::new(&model.graph, weights, &crate::spec::QuantPlan::default()).map_err(|e| calib(e.to_string()))?;
    let per = model.graph.input_len();
    if n == 0 || inputs.len() != n * per {
        return Err(calib(format!("{} calibration values are not {n} samples of {per}", inputs.len())));
    }
    let mut sums: HashMap<String, Vec<f64>> = wanted.iter().map(|(k, &f)| (k.clone(), vec![0.0; f])).collect();
    let mut ws = Workspace::default();
    let batch = 16;
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let mut observe = |name: &str, data: &[f32]| {
            let (Some(&features), Some(acc)) = (wanted.get(name), sums.get_mut(name)) else { return };
            let per_sample = data.len() / (end - start);
            let rows = per_sample / features;
            for s in 0..end - start {
                let limit = match valid {
                    Some(v) if rows == seq => v.get(start + s).copied().unwrap_or(rows).min(rows),
                    _ => rows,
                };
                for r in 0..limit {
                    let row = &data[s * per_sample + r * features..][..features];
                    acc.iter_mut().zip(row).for_each(|(a, &x)| *a += f64::from(x) * f64::from(x));
                }
            }
        };
        plan.run_observe(&inputs[start * per..end * per], end - start, &mut ws, &mut observe).map_err(|e| calib(e.to_string()))?;
    }
    Ok(sums.into_iter().map(|(k, v)| (k, v.into_iter().map(|x| x.sqrt() as f32).collect())).collect())
}

/// Prunes the row-prunable weights of `layers` (all when empty; see [`row_prunable`])
/// by `score` within each output row, to `pattern`. Wanda needs `norms` from
/// [`input_norms`]; a weight whose input has no norm (the attention output
/// projection) is scored by magnitude. Weights already masked stay removed.
pub fn prune_scored(
    model: &mut Model,
    pattern: Pattern,
    score: Score,
    norms: &HashMap<String, Vec<f32>>,
    layers: &[String],
) -> Result<PruneSummary, PruneError> {
    let targets = row_prunable(model);
    for l in layers {
        if !targets.iter().any(|(node, _, _)| node == l) {
            return Err(PruneError::UnknownLayer(l.clone()));
        }
    }
    match pattern {
        Pattern::Rows { sparsity } if !(0.0..1.0).contains(&sparsity) => return Err(PruneError::Sparsity(sparsity)),
        Pattern::NofM { n, m } if n == 0 || n > m => return Err(PruneError::Pattern(format!("{n}:{m} must keep between 1 and {m} of every {m}"))),
        _ => {}
    }
    let mut summary = PruneSummary { layers: Vec::new() };
    for (node, name, input) in targets {
        if !layers.is_empty() && !layers.contains(&node) {
            continue;
        }
        let spec = model.params.specs.iter().find(|s| s.name == name).expect("row_prunable lists parameters").clone();
        let (rows, cols) = (spec.shape[0], spec.numel() / spec.shape[0].max(1));
        let norm = match (score, &input) {
            (Score::Wanda, Some(v)) => {
                let n = norms.get(v).ok_or_else(|| PruneError::Calibration(format!("no input norms for '{v}' (read by '{name}')")))?;
                if n.len() != cols {
                    return Err(PruneError::Calibration(format!("'{v}' has {} norms, '{name}' has {cols} inputs", n.len())));
                }
                Some(n.clone())
            }
            _ => None,
        };
        let w = model.params.get(&name).expect("listed parameter");
        let old = model.constraints.masks.get(&name);
        let scores: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| if old.is_some_and(|k| !k[i]) { -1.0 } else { v.abs() * norm.as_ref().map_or(1.0, |n| n[i % cols]) })
            .collect();
        let mut mask = vec![true; w.len()];
        for r in 0..rows {
            let row = &scores[r * cols..(r + 1) * cols];
            let keep = &mut mask[r * cols..(r + 1) * cols];
            match pattern {
                Pattern::Rows { sparsity } => {
                    let remove = ((cols as f64) * sparsity).round() as usize;
                    let mut order: Vec<usize> = (0..cols).collect();
                    // Stable: among equal scores the earlier input goes first.
                    order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
                    order[..remove].iter().for_each(|&j| keep[j] = false);
                    row.iter().zip(keep.iter_mut()).for_each(|(s, k)| *k &= *s >= 0.0);
                }
                Pattern::NofM { n, m } => {
                    if cols % m != 0 {
                        return Err(PruneError::Pattern(format!("'{name}' has {cols} inputs per row, not a multiple of {m} ({n}:{m} pruning)")));
                    }
                    for b in (0..cols).step_by(m) {
                        let mut order: Vec<usize> = (b..b + m).collect();
                        order.sort_by(|&a, &c| row[c].total_cmp(&row[a]));
                        order[n..].iter().for_each(|&j| keep[j] = false);
                        order[..n].iter().for_each(|&j| keep[j] &= row[j] >= 0.0);
                    }
                }
            }
        }
        let kept = mask.iter().filter(|k| **k).count();
        summary.layers.push((name.clone(), mask.len(), kept));
        model.set_mask(&name, mask).expect("mask has the parameter's length");
    }
    Ok(summary)
}

/// The magnitude at rank `sparsity·n` and how many entries equal to it must go too, so
/// that exactly `round(sparsity·n)` entries are removed.
fn kth_threshold(v: &mut [f32], sparsity: f64) -> (f32, usize) {
    let remove = ((v.len() as f64) * sparsity).round() as usize;
    if remove == 0 {
        return (f32::NEG_INFINITY, 0);
    }
    let (_, &mut t, _) = v.select_nth_unstable_by(remove - 1, |a, b| a.total_cmp(b));
    let below = v.iter().filter(|x| **x < t).count();
    (t, remove - below)
}

/// Keeps entries above `t`; of the entries equal to `t`, removes the first `ties`
/// (all of them when `ties` is `None`).
fn keep_above(mags: &[f32], t: f32, ties: Option<usize>) -> (Vec<bool>, usize) {
    let mut ties_left = ties.unwrap_or(usize::MAX);
    let mut kept = 0;
    let mask = mags
        .iter()
        .map(|&m| {
            let keep = if m < 0.0 || m < t {
                false
            } else if m == t && ties_left > 0 {
                ties_left -= 1;
                false
            } else {
                true
            };
            kept += keep as usize;
            keep
        })
        .collect();
    (mask, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;
    use crate::spec::Graph;

    #[test]
    fn layerwise_removes_exactly_the_fraction_of_smallest_weights() {
        let mut m = Model::init(zoo::build("lenet300").unwrap(), 1).unwrap();
        let before = m.params.get("fc2.weight").unwrap().to_vec();
        let s = magnitude(&mut m, 0.5, Scope::Layer, &[]).unwrap();
        for (name, total, kept) in &s.layers {
            assert_eq!(*kept, total - (*total as f64 * 0.5).round() as usize, "{name}");
        }
        let after = m.params.get("fc2.weight").unwrap();
        let max_removed = before.iter().zip(after).filter(|(_, a)| **a == 0.0).map(|(b, _)| b.abs()).fold(0.0, f32::max);
        let min_kept = after.iter().filter(|a| **a != 0.0).map(|a| a.abs()).fold(f32::MAX, f32::min);
        assert!(max_removed <= min_kept);
        // Biases are untouched.
        assert!(m.params.get("fc1.bias").unwrap().iter().all(|b| *b != 0.0));
    }

    #[test]
    fn global_uses_one_threshold_and_repruning_keeps_old_removals() {
        let mut m = Model::init(zoo::build("lenet300").unwrap(), 2).unwrap();
        let s = magnitude(&mut m, 0.9, Scope::Global, &[]).unwrap();
        let total: usize = s.layers.iter().map(|l| l.1).sum();
        let kept: usize = s.layers.iter().map(|l| l.2).sum();
        assert_eq!(total - kept, (total as f64 * 0.9).round() as usize);
        // Layers with larger init bounds (fewer inputs) keep more under one threshold.
        assert!(s.layers[2].2 as f64 / s.layers[2].1 as f64 > s.layers[0].2 as f64 / s.layers[0].1 as f64);
        let old = m.constraints.masks.clone();
        magnitude(&mut m, 0.95, Scope::Global, &[]).unwrap();
        for (name, mask) in &old {
            let new = &m.constraints.masks[name];
            assert!(mask.iter().zip(new).all(|(o, n)| *o || !*n));
        }
    }

    #[test]
    fn schedules_reach_the_target_monotonically() {
        for s in [Schedule::Cubic, Schedule::Geometric] {
            let mut prev = 0.0;
            for t in 1..=5 {
                let v = s.at(0.9, t, 5);
                assert!(v > prev && v <= 0.9 + 1e-12, "{s:?} {t} {v}");
                prev = v;
            }
            assert!((prev - 0.9).abs() < 1e-12);
        }
        // Cubic removes most early: after 1 of 4 steps, 1 − 0.75³ ≈ 58% of the target.
        assert!((Schedule::Cubic.at(0.8, 1, 4) - 0.8 * (1.0 - 0.421875)).abs() < 1e-12);
        assert_eq!(Schedule::OneShot.at(0.5, 1, 1), 0.5);
    }

    #[test]
    fn per_layer_targets_override_the_common_one() {
        let mut m = Model::init(zoo::build("lenet300").unwrap(), 3).unwrap();
        let per = [("fc1".to_string(), 0.95), ("fc3".to_string(), 0.2)].into();
        let s = magnitude_per_layer(&mut m, 0.5, Scope::Layer, &[], &per).unwrap();
        let frac: Vec<f64> = s.layers.iter().map(|l| 1.0 - l.2 as f64 / l.1 as f64).collect();
        assert!((frac[0] - 0.95).abs() < 1e-3 && (frac[1] - 0.5).abs() < 1e-3 && (frac[2] - 0.2).abs() < 1e-3, "{frac:?}");
    }

    /// lenet300's layers (Linear 784-300-100-10, no input normalisation) with calibration inputs whose features have
    /// very different scales, so that Wanda and magnitude disagree.
    fn plain_lenet300() -> Graph {
        let linear = |i, o| crate::spec::Op::Linear { in_features: i, out_features: o, bias: true };
        use crate::spec::Op::Relu;
        Graph::chain(vec![784], vec![("fc1", linear(784, 300)), ("relu1", Relu), ("fc2", linear(300, 100)), ("relu2", Relu), ("fc3", linear(100, 10))])
    }

    fn scaled_inputs(n: usize) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(11);
        (0..n * 784).map(|i| rng.uniform(1.0) * if (i % 784) % 2 == 0 { 10.0 } else { 0.01 }).collect()
    }

    #[test]
    fn input_norms_are_the_l2_norm_of_each_feature_over_rows() {
        let m = Model::init(plain_lenet300(), 4).unwrap();
        let x = scaled_inputs(5);
        let norms = input_norms(&m, &x, 5, None).unwrap();
        let want: Vec<f32> = (0..784).map(|j| (0..5).map(|s| (x[s * 784 + j] as f64).powi(2)).sum::<f64>().sqrt() as f32).collect();
        let got = &norms[crate::spec::INPUT];
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * b.max(1.0)));
        // fc2 reads fc1's ReLU: 300 features.
        let fc2_input = &m.graph.node("fc2").unwrap().inputs[0];
        assert_eq!(norms[fc2_input].len(), 300);
        assert!(matches!(input_norms(&m, &x[..10], 5, None), Err(PruneError::Calibration(_))));
    }

    #[test]
    fn wanda_prunes_each_row_by_weight_times_input_norm() {
        let x = scaled_inputs(8);
        let mut a = Model::init(plain_lenet300(), 4).unwrap();
        let mut b = a.clone();
        let norms = input_norms(&a, &x, 8, None).unwrap();
        let w = a.params.get("fc1.weight").unwrap().to_vec();
        let s = prune_scored(&mut a, Pattern::Rows { sparsity: 0.5 }, Score::Wanda, &norms, &[]).unwrap();
        prune_scored(&mut b, Pattern::Rows { sparsity: 0.5 }, Score::Magnitude, &norms, &[]).unwrap();
        assert_eq!(s.layers.len(), 3);
        let mask = &a.constraints.masks["fc1.weight"];
        let n = &norms[crate::spec::INPUT];
        for r in 0..300 {
            let row = r * 784..(r + 1) * 784;
            assert_eq!(mask[row.clone()].iter().filter(|k| **k).count(), 392, "row {r} keeps half");
            let score = |j: usize| w[r * 784 + j].abs() * n[j];
            let max_removed = (0..784).filter(|&j| !mask[r * 784 + j]).map(score).fold(0.0, f32::max);
            let min_kept = (0..784).filter(|&j| mask[r * 784 + j]).map(score).fold(f32::MAX, f32::min);
            assert!(max_removed <= min_kept, "row {r}");
        }
        // With inputs 1000x apart in scale, Wanda keeps mostly the loud (even) inputs;
        // magnitude does not look at the inputs.
        let even_kept = |m: &Model| m.constraints.masks["fc1.weight"].iter().enumerate().filter(|(i, k)| **k && (i % 784) % 2 == 0).count();
        assert!(even_kept(&a) > 300 * 380, "{}", even_kept(&a));
        assert!(even_kept(&b) < 300 * 250, "{}", even_kept(&b));
        // Output error on the calibration inputs: Wanda's is smaller.
        let dense = Model::init(plain_lenet300(), 4).unwrap();
        let run = |m: &Model| {
            let p = crate::store::model_plan(m).unwrap();
            p.run(&x, 8, &mut Default::default()).unwrap().to_vec()
        };
        let (yd, ya, yb) = (run(&dense), run(&a), run(&b));
        let err = |y: &[f32]| y.iter().zip(&yd).map(|(p, q)| (p - q).powi(2)).sum::<f32>();
        assert!(err(&ya) < err(&yb), "wanda {} vs magnitude {}", err(&ya), err(&yb));
    }

    #[test]
    fn two_four_keeps_the_two_best_of_every_four_and_old_removals_stay() {
        let mut m = Model::init(plain_lenet300(), 6).unwrap();
        magnitude(&mut m, 0.3, Scope::Layer, &["fc2".into()]).unwrap();
        let old = m.constraints.masks["fc2.weight"].clone();
        let w = m.params.get("fc1.weight").unwrap().to_vec();
        prune_scored(&mut m, Pattern::NofM { n: 2, m: 4 }, Score::Magnitude, &HashMap::new(), &["fc1".into(), "fc2".into()]).unwrap();
        let mask = &m.constraints.masks["fc1.weight"];
        for b in (0..w.len()).step_by(4) {
            let kept: Vec<usize> = (b..b + 4).filter(|&i| mask[i]).collect();
            assert_eq!(kept.len(), 2, "block {b}");
            let min_kept = kept.iter().map(|&i| w[i].abs()).fold(f32::MAX, f32::min);
            assert!((b..b + 4).filter(|&i| !mask[i]).all(|i| w[i].abs() <= min_kept));
        }
        let new = &m.constraints.masks["fc2.weight"];
        assert!(old.iter().zip(new).all(|(o, n)| *o || !*n), "a removed weight came back");
        assert!(!m.constraints.masks.contains_key("fc3.weight"));
        // fc3 has 100 inputs per row: fine for 2:4, not for 3:8.
        let e = prune_scored(&mut m, Pattern::NofM { n: 3, m: 8 }, Score::Magnitude, &HashMap::new(), &["fc3".into()]).unwrap_err();
        assert!(e.to_string().contains("not a multiple of 8"), "{e}");
        assert!(matches!(prune_scored(&mut m, Pattern::NofM { n: 5, m: 4 }, Score::Magnitude, &HashMap::new(), &[]), Err(PruneError::Pattern(_))));
        // Wanda without norms for a layer is an error, not a silent magnitude fallback.
        assert!(matches!(prune_scored(&mut m, Pattern::Rows { sparsity: 0.5 }, Score::Wanda, &HashMap::new(), &[]), Err(PruneError::Calibration(_))));
    }

    #[test]
    fn bad_sparsity_and_unknown_layer_are_errors() {
        let mut m = Model::init(zoo::build("mlp").unwrap(), 1).unwrap();
        assert_eq!(magnitude(&mut m, 1.0, Scope::Layer, &[]), Err(PruneError::Sparsity(1.0)));
        assert!(matches!(magnitude(&mut m, 0.5, Scope::Layer, &["nope".into()]), Err(PruneError::UnknownLayer(_))));
    }
}

/// The `prune` pass: magnitude pruning, then fine-tuning with the masks held; with
/// `steps > 1` the target is reached gradually along `schedule`, fine-tuning after
/// every step. With `l1 > 0` (soft pruning) the model first trains `l1_epochs` with an
/// L1 penalty, and the stage reports a hard-pruning control at the same sparsity and
/// the same total epochs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// Fraction of weights to remove, in [0, 1).
    #[arg(long)]
    pub sparsity: f64,
    /// layer: the same fraction in every layer; global: one threshold for all.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub scope: Scope,
    /// Only these layers (node names or `*` patterns, comma-separated); default all.
    #[serde(default)]
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// Per-layer targets (node name → sparsity) that override `sparsity` (recipes only).
    #[serde(default)]
    #[arg(skip)]
    pub per_layer: BTreeMap<String, f64>,
    /// How the target is reached over `steps`: one-shot, cubic or geometric.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub schedule: Schedule,
    /// Prune-and-fine-tune steps.
    #[serde(default = "super::default_one")]
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Fine-tuning epochs after each step.
    #[serde(default = "super::default_fine_tune")]
    #[arg(long, default_value_t = 3)]
    pub fine_tune_epochs: usize,
    /// Fine-tuning learning rate (default: half the training rate).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Soft pruning: strength of an L1 penalty trained for `l1_epochs` before
    /// thresholding (0: plain magnitude pruning).
    #[serde(default)]
    #[arg(long, default_value_t = 0.0)]
    pub l1: f32,
    /// Epochs of the L1 phase.
    #[serde(default = "super::default_fine_tune")]
    #[arg(long, default_value_t = 3)]
    pub l1_epochs: usize,
}

/// One tensor of a pruning summary.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct TensorKept {
    pub tensor: String,
    pub weights: usize,
    pub kept: usize,
}

/// A gradual-pruning step's figures.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct StepFigures {
    pub step: usize,
    pub sparsity: f64,
    pub validation_accuracy: f64,
}

/// Soft pruning's control: hard pruning at the same sparsity and total epochs.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct HardControl {
    pub method: String,
    pub sparsity: f64,
    pub epochs: usize,
    pub accuracy: f64,
    pub validation_accuracy: f64,
}

/// What a `prune` stage reports in `extra`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PruneReport {
    pub layers: Vec<TensorKept>,
    pub fine_tune_epochs: usize,
    pub scope: String,
    pub schedule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepFigures>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_control: Option<HardControl>,
}

impl PruneSummary {
    /// One line per tensor: what it kept.
    pub fn lines(&self) -> Vec<String> {
        self.layers.iter().map(|(n, w, k)| format!("{n}: kept {k} of {w} ({:.1}%)", *k as f64 * 100.0 / (*w).max(1) as f64)).collect()
    }

    /// The summary as report rows, and the overall sparsity of the pruned tensors.
    pub fn rows(&self) -> (Vec<TensorKept>, f64) {
        let kept: usize = self.layers.iter().map(|l| l.2).sum();
        let total: usize = self.layers.iter().map(|l| l.1).sum();
        let rows = self.layers.iter().map(|(n, w, k)| TensorKept { tensor: n.clone(), weights: *w, kept: *k }).collect();
        (rows, 1.0 - kept as f64 / total.max(1) as f64)
    }
}

impl Technique for Prune {
    fn stage_name(&self) -> String {
        "pruned".into()
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Classifier {
            return Err(super::not_available(kind, &self.stage_name()));
        }
        check_fraction("prune", "sparsity", self.sparsity)?;
        for (k, v) in &self.per_layer {
            check_fraction("prune", &format!("per_layer.{k}"), *v)?;
        }
        if self.steps == 0 {
            return Err("pass prune: steps: expected at least 1, got 0".into());
        }
        Ok(())
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let lr = self.lr.unwrap_or(ctx.lr() * 0.5);
        let soft_control = if self.l1 > 0.0 {
            // The hard control gets the soft phase's epochs as extra fine-tuning.
            let control = model.clone();
            let ft = FineTune { epochs: self.l1_epochs, lr: ctx.lr(), seed: ctx.seed.wrapping_add(777), l1: self.l1, group_lasso: None };
            ctx.fine_tune("prune", model, ft)?;
            Some(control)
        } else {
            None
        };
        let mut summary = PruneSummary { layers: Vec::new() };
        let mut log = Vec::new();
        for t in 1..=self.steps {
            let target = self.schedule.at(self.sparsity, t, self.steps);
            let per_t = self.per_layer.iter().map(|(k, v)| (k.clone(), self.schedule.at(*v, t, self.steps))).collect();
            summary = magnitude_per_layer(model, target, self.scope, &self.layers, &per_t)?;
            let seed = ctx.pass_seed().wrapping_add(t as u64);
            ctx.fine_tune("prune", model, FineTune { epochs: self.fine_tune_epochs, lr, seed, ..Default::default() })?;
            if self.steps > 1 {
                let validation_accuracy = ctx.validation_accuracy(model)?;
                log.push(StepFigures { step: t, sparsity: summary.rows().1, validation_accuracy });
            }
        }
        let (mut method, mut hard_control) = (None, None);
        if let Some(mut control) = soft_control {
            magnitude_per_layer(&mut control, self.sparsity, self.scope, &self.layers, &self.per_layer)?;
            let epochs = self.fine_tune_epochs * self.steps + self.l1_epochs;
            ctx.fine_tune("prune", &mut control, FineTune { epochs, lr, seed: ctx.pass_seed().wrapping_add(1), ..Default::default() })?;
            let (accuracy, validation_accuracy) = ctx.accuracies(&control)?;
            method = Some(format!("l1 (strength {}, {} epochs) then magnitude", self.l1, self.l1_epochs));
            hard_control = Some(HardControl { method: "magnitude, one shot".into(), sparsity: self.sparsity, epochs, accuracy, validation_accuracy });
        }
        let lines = summary.lines();
        let (layers, sparsity) = summary.rows();
        let report = PruneReport {
            layers,
            fine_tune_epochs: self.fine_tune_epochs,
            scope: format!("{:?}", self.scope).to_lowercase(),
            schedule: format!("{:?}", self.schedule).to_lowercase(),
            steps: (!log.is_empty()).then_some(log),
            method,
            hard_control,
        };
        let mut out = Output::model(&report);
        out.name = Some(format!("pruned-{}", (100.0 * sparsity).round()));
        out.lines = lines;
        Ok(out)
    }
}

/// The `prune_rows` pass: row-wise pruning of Linear and attention projection weights
/// by magnitude or Wanda's activation-aware score, to a sparsity or an N:M pattern
/// (`n_of_m = [2, 4]`); one shot, no fine-tuning (embedders).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PruneRows {
    /// Fraction of each output row removed (exclusive with `n_of_m`).
    pub sparsity: Option<f64>,
    /// Keep n of every m consecutive inputs of a row.
    pub n_of_m: Option<[usize; 2]>,
    #[serde(default)]
    pub score: Score,
    #[serde(default)]
    pub layers: Vec<String>,
    /// Calibration sentences for Wanda's input norms.
    #[serde(default = "super::default_text_calibration")]
    pub calibration: usize,
}

/// What a `prune_rows` stage reports in `extra`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PruneRowsReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_sentences: Option<usize>,
    pub pruned_weights: usize,
    pub sparsity_of_pruned_layers: f64,
}

impl Technique for PruneRows {
    fn stage_name(&self) -> String {
        let score = match self.score {
            Score::Magnitude => "magnitude",
            Score::Wanda => "wanda",
        };
        match (self.n_of_m, self.sparsity) {
            (Some([n, m]), _) => format!("pruned-{n}of{m}-{score}"),
            (None, s) => format!("pruned-{:.0}-{score}", 100.0 * s.unwrap_or(0.0)),
        }
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Embedder {
            return Err(super::embedding_only(&self.stage_name()));
        }
        match (self.sparsity, self.n_of_m) {
            (Some(s), None) => check_fraction("prune_rows", "sparsity", s),
            (None, Some([n, m])) if n >= 1 && n < m => Ok(()),
            (None, Some([n, m])) => Err(format!("pass prune_rows: n_of_m = [{n}, {m}] must keep 1 ≤ n < m")),
            _ => Err("pass prune_rows: set exactly one of sparsity or n_of_m".into()),
        }
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let mut calibration_sentences = None;
        let norms = match self.score {
            Score::Wanda => {
                if ctx.calibration.count == 0 {
                    return Err(PruneError::Calibration("Wanda needs calibration sentences: set [data] calibration".into()).into());
                }
                let cal = ctx.calibration.first(self.calibration.max(1));
                calibration_sentences = Some(cal.count);
                input_norms(model, cal.rows, cal.count, cal.lengths)?
            }
            Score::Magnitude => Default::default(),
        };
        let pattern = match (self.sparsity, self.n_of_m) {
            (_, Some([n, m])) => Pattern::NofM { n, m },
            (s, None) => Pattern::Rows { sparsity: s.unwrap_or(0.0) },
        };
        let summary = prune_scored(model, pattern, self.score, &norms, &self.layers)?;
        let (total, kept) = summary.layers.iter().fold((0, 0), |(t, k), l| (t + l.1, k + l.2));
        Ok(Output::model(&PruneRowsReport {
            calibration_sentences,
            pruned_weights: total - kept,
            sparsity_of_pruned_layers: (total - kept) as f64 / total.max(1) as f64,
        }))
    }
}
