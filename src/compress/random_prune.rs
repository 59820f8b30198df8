//! The `random_prune` pass: remove a random `sparsity` fraction of each selected weight
//! tensor, then fine-tune with the masks held. It is the control that magnitude pruning
//! (`prune`) must beat at the same sparsity and the same fine-tuning: if magnitude does
//! no better than chance, the importance score is not earning its keep.
//!
//! This file is also the worked example of adding a technique: one config type that
//! implements [`Technique`] and one line in `compress::passes!`.

use serde::{Deserialize, Serialize};

use super::pass::{check_fraction, Context, FineTune, ModelKind, Output, PassError, Technique};
use super::prune::{PruneError, PruneSummary, TensorKept};
use crate::model::Model;
use crate::rng::Rng;
use crate::spec::ParamKind;

/// `type = "random_prune"`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RandomPrune {
    /// Fraction of each selected weight tensor to remove at random, in [0, 1).
    #[arg(long)]
    pub sparsity: f64,
    /// Only these layers (node names or `*` patterns, comma-separated); default all.
    #[serde(default)]
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// Fine-tuning epochs afterwards.
    #[serde(default = "super::default_fine_tune")]
    #[arg(long, default_value_t = 3)]
    pub fine_tune_epochs: usize,
    /// Fine-tuning learning rate (default: half the training rate).
    #[arg(long)]
    pub lr: Option<f32>,
}

/// What a `random_prune` stage reports in `extra`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RandomPruneReport {
    pub method: &'static str,
    pub layers: Vec<TensorKept>,
    pub fine_tune_epochs: usize,
}

/// Masks a random `sparsity` fraction of each weight tensor of the `layers` nodes (all
/// when empty): exactly `round(sparsity · n)` per tensor, chosen by a seeded shuffle.
/// Weights already masked stay masked and count among the removed.
pub fn random_masks(model: &mut Model, sparsity: f64, layers: &[String], seed: u64) -> Result<PruneSummary, PruneError> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(PruneError::Sparsity(sparsity));
    }
    let mut rng = Rng::new(seed);
    let targets: Vec<(String, usize)> = model
        .params
        .specs
        .iter()
        .filter(|s| s.kind == ParamKind::Weight && (layers.is_empty() || layers.contains(&s.node)))
        .map(|s| (s.name.clone(), s.numel()))
        .collect();
    let mut summary = PruneSummary { layers: Vec::new() };
    for (name, n) in targets {
        let old = model.constraints.masks.get(&name).cloned();
        let remove = ((sparsity * n as f64).round() as usize).min(n);
        // Already-pruned weights go first; the rest of the removals are drawn at random.
        let (mut gone, mut alive): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| old.as_ref().is_some_and(|m| !m[i]));
        rng.shuffle(&mut alive);
        let extra = remove.saturating_sub(gone.len());
        gone.extend_from_slice(&alive[..extra.min(alive.len())]);
        let mut mask = vec![true; n];
        for i in gone {
            mask[i] = false;
        }
        let kept = mask.iter().filter(|k| **k).count();
        summary.layers.push((name.clone(), n, kept));
        model.set_mask(&name, mask).expect("mask has the parameter's length");
    }
    Ok(summary)
}

impl Technique for RandomPrune {
    fn stage_name(&self) -> String {
        "random-pruned".into()
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Classifier {
            return Err(super::not_available(kind, &self.stage_name()));
        }
        check_fraction("random_prune", "sparsity", self.sparsity)
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let layers = super::select::weighted_nodes(model, &self.layers).map_err(PruneError::UnknownLayer)?;
        let summary = random_masks(model, self.sparsity, &layers, ctx.pass_seed())?;
        let ft = FineTune { epochs: self.fine_tune_epochs, lr: self.lr.unwrap_or(ctx.lr() * 0.5), seed: ctx.pass_seed().wrapping_add(1), ..Default::default() };
        ctx.fine_tune("random_prune", model, ft)?;
        let lines = summary.lines();
        let (layers, sparsity) = summary.rows();
        let mut out = Output::model(&RandomPruneReport { method: "random", layers, fine_tune_epochs: self.fine_tune_epochs });
        out.name = Some(format!("random-pruned-{}", (100.0 * sparsity).round()));
        out.lines = lines;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;

    #[test]
    fn removes_the_fraction_at_random_and_keeps_earlier_removals() {
        let mut m = Model::init(zoo::build("lenet300").unwrap(), 1).unwrap();
        let s = random_masks(&mut m, 0.5, &["fc1".into()], 7).unwrap();
        assert_eq!(s.layers.len(), 1);
        let (name, n, kept) = &s.layers[0];
        assert_eq!(*kept, n - (n / 2));
        let mask = m.constraints.masks[name].clone();
        assert!(m.params.get(name).unwrap().iter().zip(&mask).all(|(w, k)| *k || *w == 0.0));
        // Not a magnitude cut: removed and kept weights overlap in |w|.
        let w = m.params.get(name).unwrap().to_vec();
        let mut m2 = Model::init(zoo::build("lenet300").unwrap(), 1).unwrap();
        let orig = m2.params.get(name).unwrap().to_vec();
        let max_removed = orig.iter().zip(&mask).filter(|(_, k)| !**k).map(|(v, _)| v.abs()).fold(0.0f32, f32::max);
        let min_kept = w.iter().zip(&mask).filter(|(_, k)| **k).map(|(v, _)| v.abs()).fold(f32::INFINITY, f32::min);
        assert!(max_removed > min_kept);
        // Going further keeps every earlier removal; the same seed gives the same mask.
        let s2 = random_masks(&mut m, 0.75, &["fc1".into()], 8).unwrap();
        assert_eq!(s2.layers[0].2, n - (3 * n / 4));
        assert!(mask.iter().zip(&m.constraints.masks[name]).all(|(a, b)| *a || !*b));
        random_masks(&mut m2, 0.5, &["fc1".into()], 7).unwrap();
        assert_eq!(m2.constraints.masks[name], mask);
        assert!(random_masks(&mut m2, 1.0, &[], 7).is_err());
    }
}
