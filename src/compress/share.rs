//! Weight sharing within a layer (Deep Compression, Han et al. 2016, §3): the surviving
//! weights of each layer are clustered by 1-D k-means into `2^bits` shared values with
//! linear initialisation between the minimum and maximum weight (the initialisation the
//! paper found best). The assignment is recorded as a codebook constraint; fine-tuning
//! then trains the centroids (each receives the sum of its weights' gradients) while the
//! assignment and the pruning mask are held.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::pass::{Context, FineTune, ModelKind, Output, PassError, Technique};
use crate::model::{Codebook, Model};
use crate::spec::{Op, ParamKind};

/// Errors of the sharing pass.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShareError {
    #[error("bits must be between 1 and 16, got {0}")]
    Bits(u32),
    #[error("layer '{0}' is not a weight of this model")]
    UnknownLayer(String),
}

/// Bits per shared index by layer kind (the paper: 8 for conv, 5 for fully connected),
/// with per-layer overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareConfig {
    pub linear_bits: u32,
    pub conv_bits: u32,
    pub per_layer: BTreeMap<String, u32>,
    /// Layers to share (all weighted layers when empty).
    pub layers: Vec<String>,
}

/// What the pass did per weight tensor: name, surviving weights, clusters.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareSummary {
    pub layers: Vec<(String, usize, usize)>,
}

/// 1-D k-means with linear initialisation; returns (centroids, assignment of each value).
/// Deterministic; stops when no assignment changes (or after 100 rounds).
pub fn kmeans_1d(values: &[f32], k: usize) -> (Vec<f32>, Vec<u16>) {
    if values.is_empty() || k == 0 {
        return (Vec::new(), Vec::new());
    }
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let k = k.min(values.len()).max(1);
    let mut centroids: Vec<f32> = if k == 1 || hi == lo {
        vec![(lo + hi) / 2.0; 1]
    } else {
        (0..k).map(|i| lo + (hi - lo) * i as f32 / (k - 1) as f32).collect()
    };
    let mut assign = vec![u16::MAX; values.len()];
    for _ in 0..100 {
        // Centroids stay sorted, so the nearest one is found between midpoints.
        let mids: Vec<f32> = centroids.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let mut changed = false;
        for (a, &v) in assign.iter_mut().zip(values) {
            let c = mids.partition_point(|&m| m < v) as u16;
            if *a != c {
                *a = c;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sum = vec![0.0f64; centroids.len()];
        let mut count = vec![0usize; centroids.len()];
        for (&a, &v) in assign.iter().zip(values) {
            sum[a as usize] += v as f64;
            count[a as usize] += 1;
        }
        for (c, (s, n)) in centroids.iter_mut().zip(sum.iter().zip(&count)) {
            if *n > 0 {
                *c = (*s / *n as f64) as f32;
            }
        }
    }
    // Drop empty clusters and renumber, keeping order.
    let mut used = vec![false; centroids.len()];
    assign.iter().for_each(|&a| used[a as usize] = true);
    let mut remap = vec![0u16; centroids.len()];
    let mut kept = Vec::new();
    for (i, c) in centroids.iter().enumerate() {
        if used[i] {
            remap[i] = kept.len() as u16;
            kept.push(*c);
        }
    }
    assign.iter_mut().for_each(|a| *a = remap[*a as usize]);
    (kept, assign)
}

/// Clusters every selected weight tensor of `model` and records the codebooks; the
/// weights are replaced by their centroids. Pruned weights stay zero and unassigned.
pub fn share(model: &mut Model, cfg: &ShareConfig) -> Result<ShareSummary, ShareError> {
    for b in [cfg.linear_bits, cfg.conv_bits].iter().chain(cfg.per_layer.values()) {
        if !(1..=16).contains(b) {
            return Err(ShareError::Bits(*b));
        }
    }
    for l in cfg.layers.iter().chain(cfg.per_layer.keys()) {
        if !model.params.specs.iter().any(|s| &s.node == l && s.kind == ParamKind::Weight) {
            return Err(ShareError::UnknownLayer(l.clone()));
        }
    }
    let mut summary = ShareSummary { layers: Vec::new() };
    let specs: Vec<_> = model.params.specs.iter().filter(|s| s.kind == ParamKind::Weight).cloned().collect();
    for spec in specs {
        if !cfg.layers.is_empty() && !cfg.layers.contains(&spec.node) {
            continue;
        }
        let is_conv = matches!(model.graph.node(&spec.node).map(|n| &n.op), Some(Op::Conv2d { .. }));
        let bits = cfg.per_layer.get(&spec.node).copied().unwrap_or(if is_conv { cfg.conv_bits } else { cfg.linear_bits });
        let mask = model.constraints.masks.get(&spec.name).cloned();
        let w = model.params.get_mut(&spec.name).expect("spec comes from the model");
        let kept: Vec<usize> = (0..w.len()).filter(|&i| mask.as_ref().is_none_or(|m| m[i])).collect();
        let values: Vec<f32> = kept.iter().map(|&i| w[i]).collect();
        let (centroids, assign) = kmeans_1d(&values, 1usize << bits);
        let mut assignment = vec![0u16; w.len()];
        for (&i, &a) in kept.iter().zip(&assign) {
            assignment[i] = a;
            w[i] = centroids[a as usize];
        }
        summary.layers.push((spec.name.clone(), kept.len(), centroids.len()));
        model.constraints.codebooks.insert(spec.name.clone(), Codebook { centroids, assignment, ..Default::default() });
    }
    Ok(summary)
}

/// Rounds the centroids of every codebook and every bias to half precision (so the
/// container can store them in 16 bits without loss), and re-applies the codebooks.
pub fn round_to_half(model: &mut Model) {
    for cb in model.constraints.codebooks.values_mut() {
        cb.centroids.iter_mut().for_each(|c| *c = crate::codec::f16::round(*c));
    }
    model.apply_codebooks();
    crate::compress::quantize::round_small_tensors_to_f16(model);
}

/// The `share` pass: per-layer k-means into `2^bits` values, then centroid fine-tuning
/// with the assignment (and any pruning mask) held.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// Bits per shared index of Linear layers (2^bits values).
    #[serde(default = "default_linear_bits")]
    #[arg(long, default_value_t = 5)]
    pub linear_bits: u32,
    /// Bits per shared index of Conv2d layers.
    #[serde(default = "default_conv_bits")]
    #[arg(long, default_value_t = 8)]
    pub conv_bits: u32,
    /// Per-layer bits (node name → bits; recipes only).
    #[serde(default)]
    #[arg(skip)]
    pub per_layer: BTreeMap<String, u32>,
    /// Only these layers (node names or `*` patterns, comma-separated); default all.
    #[serde(default)]
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    #[serde(default = "super::default_fine_tune")]
    #[arg(long, default_value_t = 3)]
    pub fine_tune_epochs: usize,
    /// Centroid learning rate (default: a tenth of the training rate).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Round centroids and biases to half precision so they are stored in 16 bits.
    #[serde(default)]
    #[arg(long)]
    pub half_precision: bool,
}

fn default_linear_bits() -> u32 {
    5
}

fn default_conv_bits() -> u32 {
    8
}

/// Per tensor of a sharing pass (k-means or hashed): its weights and the distinct
/// values that serve them.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SharedTensor {
    pub tensor: String,
    pub weights: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clusters: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buckets: Option<usize>,
}

/// What a `share` or `hash` stage reports in `extra`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SharedReport {
    pub layers: Vec<SharedTensor>,
    pub fine_tune_epochs: usize,
    pub half_precision: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<bool>,
}

/// Fine-tunes a weight-shared (k-means or hashed) model with its sharing held, then
/// rounds its shared values to f16 when asked.
pub fn fine_tune_shared(pass: &str, model: &mut Model, ctx: &mut Context, ft: FineTune, half_precision: bool) -> Result<(), PassError> {
    ctx.fine_tune(pass, model, ft)?;
    if half_precision {
        round_to_half(model);
    }
    Ok(())
}

impl Technique for Share {
    fn stage_name(&self) -> String {
        "shared".into()
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Classifier {
            return Err(super::not_available(kind, &self.stage_name()));
        }
        for b in [self.linear_bits, self.conv_bits].iter().chain(self.per_layer.values()) {
            if !(1..=16).contains(b) {
                return Err(format!("pass share: bits: expected 1 to 16, got {b}"));
            }
        }
        Ok(())
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let layers = super::select::weighted_nodes(model, &self.layers).map_err(ShareError::UnknownLayer)?;
        let cfg = ShareConfig { linear_bits: self.linear_bits, conv_bits: self.conv_bits, per_layer: self.per_layer.clone(), layers };
        let summary = share(model, &cfg)?;
        let ft = FineTune { epochs: self.fine_tune_epochs, lr: self.lr.unwrap_or(ctx.lr() * 0.1), seed: ctx.pass_seed(), ..Default::default() };
        fine_tune_shared("share", model, ctx, ft, self.half_precision)?;
        let layers = summary.layers.iter().map(|(n, w, k)| SharedTensor { tensor: n.clone(), weights: *w, clusters: Some(*k), buckets: None }).collect();
        Ok(Output::model(&SharedReport { layers, fine_tune_epochs: self.fine_tune_epochs, half_precision: self.half_precision, signed: None }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::prune::{self, Scope};
    use crate::model::zoo;

    #[test]
    fn kmeans_finds_obvious_clusters_and_keeps_order() {
        let v = [0.0, 0.1, -0.05, 5.0, 5.2, 4.9, 10.0, 10.1];
        let (c, a) = kmeans_1d(&v, 3);
        assert_eq!(a, vec![0, 0, 0, 1, 1, 1, 2, 2]);
        assert!((c[0] - 0.016_666).abs() < 1e-4 && (c[1] - 5.033_33).abs() < 1e-4 && (c[2] - 10.05).abs() < 1e-4);
        // More clusters than distinct values: empty ones are dropped.
        let (c, a) = kmeans_1d(&[1.0, 1.0, 2.0], 8);
        assert_eq!(c.len(), 2);
        assert_eq!(a, vec![0, 0, 1]);
    }

    #[test]
    fn share_keeps_pruned_weights_zero_and_uses_2_pow_bits_values() {
        let mut m = Model::init(zoo::build("lenet300").unwrap(), 1).unwrap();
        prune::magnitude(&mut m, 0.9, Scope::Layer, &[]).unwrap();
        let cfg = ShareConfig { linear_bits: 5, conv_bits: 8, per_layer: [("fc3".to_string(), 3)].into(), layers: vec![] };
        let s = share(&mut m, &cfg).unwrap();
        assert_eq!(s.layers.len(), 3);
        for (name, _, k) in &s.layers {
            let w = m.params.get(name).unwrap();
            let mask = &m.constraints.masks[name];
            let mut distinct: Vec<u32> = w.iter().zip(mask).filter(|(_, k)| **k).map(|(v, _)| v.to_bits()).collect();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), *k);
            assert!(*k <= if name.starts_with("fc3") { 8 } else { 32 });
            assert!(w.iter().zip(mask).all(|(v, keep)| *keep || *v == 0.0));
        }
    }
}
