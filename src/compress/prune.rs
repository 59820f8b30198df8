//! Hard pruning by magnitude: remove the connections with the smallest |w|, either the
//! same fraction in every layer (layer-wise) or one threshold over all weights (global).
//! The removal is recorded as a mask constraint, so fine-tuning keeps it.

use serde::{Deserialize, Serialize};

use crate::model::Model;
use crate::spec::ParamKind;

/// How the sparsity target is spread over layers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every weight tensor loses the same fraction.
    #[default]
    Layer,
    /// One magnitude threshold across all weight tensors.
    Global,
}

/// How the sparsity target is reached over several prune-and-retrain steps.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
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

    #[test]
    fn bad_sparsity_and_unknown_layer_are_errors() {
        let mut m = Model::init(zoo::build("mlp").unwrap(), 1).unwrap();
        assert_eq!(magnitude(&mut m, 1.0, Scope::Layer, &[]), Err(PruneError::Sparsity(1.0)));
        assert!(matches!(magnitude(&mut m, 0.5, Scope::Layer, &["nope".into()]), Err(PruneError::UnknownLayer(_))));
    }
}
