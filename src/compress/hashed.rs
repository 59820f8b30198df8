//! Hashed weight sharing within one model (HashedNets, Chen et al. 2015): every entry of
//! a weight tensor is mapped by a fixed hash of (tensor seed, flat index) to one of `k`
//! buckets, optionally with a hashed ±1 sign, so the layer has only `k` free values and
//! a file stores just those and the seed, no per-weight index ([`crate::codec::hash`]).
//!
//! The pass records the mapping as a codebook constraint marked with its hash key, so
//! the trainer trains the buckets like centroids (each bucket's gradient is the sum of
//! its members' gradients, times their signs). Applied to a trained model, each bucket
//! starts at the least-squares fit of its members (the mean of `sign · w`).

use serde::{Deserialize, Serialize};

use super::pass::{Context, FineTune, ModelKind, Output, PassError, Technique};
use super::share::{SharedReport, SharedTensor, fine_tune_shared};
use crate::codec::hash;
use crate::model::{Codebook, HashKey, Model};
use crate::spec::ParamKind;

/// Errors of the hashing pass.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HashError {
    #[error("fraction must be in (0, 1] (buckets per weight), got {0}")]
    Fraction(f64),
    #[error("layer '{0}' is not a weighted layer of this model")]
    UnknownLayer(String),
    #[error("'{name}' would need {buckets} buckets, at most 65536 per tensor; lower the fraction")]
    TooManyBuckets { name: String, buckets: usize },
    #[error("'{0}' is pruned (has a mask); apply hashing before pruning")]
    Masked(String),
}

/// Which tensors to hash and how.
#[derive(Clone, Debug, PartialEq)]
pub struct HashConfig {
    /// Buckets per weight: `k = ceil(fraction · numel)` per tensor.
    pub fraction: f64,
    /// Hash a ±1 sign per entry too (makes the shared inner products unbiased).
    pub signed: bool,
    /// Node names to hash (every weighted layer when empty).
    pub layers: Vec<String>,
    /// Mixed with each tensor's name into its hash seed.
    pub seed: u64,
}

/// Per hashed tensor: name, weights, buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct HashSummary {
    pub layers: Vec<(String, usize, usize)>,
}

/// Hashes the selected weight tensors of `model` into buckets (see the module docs).
pub fn hash_weights(model: &mut Model, cfg: &HashConfig) -> Result<HashSummary, HashError> {
    if !(cfg.fraction > 0.0 && cfg.fraction <= 1.0) {
        return Err(HashError::Fraction(cfg.fraction));
    }
    let weights: Vec<_> = model.params.specs.iter().filter(|s| s.kind == ParamKind::Weight).cloned().collect();
    for l in &cfg.layers {
        if !weights.iter().any(|s| &s.node == l) {
            return Err(HashError::UnknownLayer(l.clone()));
        }
    }
    let chosen: Vec<_> = weights.into_iter().filter(|s| cfg.layers.is_empty() || cfg.layers.contains(&s.node)).collect();
    for spec in &chosen {
        if model.constraints.masks.contains_key(&spec.name) {
            return Err(HashError::Masked(spec.name.clone()));
        }
        let k = buckets_for(spec.numel(), cfg.fraction);
        if k > 1 << 16 {
            return Err(HashError::TooManyBuckets { name: spec.name.clone(), buckets: k });
        }
    }
    let mut summary = HashSummary { layers: Vec::new() };
    for spec in chosen {
        let n = spec.numel();
        let k = buckets_for(n, cfg.fraction);
        let seed = hash::tensor_seed(cfg.seed, &spec.name);
        let assignment: Vec<u16> = (0..n as u64).map(|i| hash::bucket(seed, i, k as u32) as u16).collect();
        let negated: Vec<bool> = if cfg.signed { (0..n as u64).map(|i| hash::negated(seed, i)).collect() } else { Vec::new() };
        let w = model.params.get(&spec.name).expect("spec comes from the model");
        let (mut sum, mut count) = (vec![0.0f64; k], vec![0usize; k]);
        for (i, (&a, &v)) in assignment.iter().zip(w).enumerate() {
            let s = if negated.get(i).copied().unwrap_or(false) { -1.0 } else { 1.0 };
            sum[a as usize] += s * f64::from(v);
            count[a as usize] += 1;
        }
        let centroids = sum.iter().zip(&count).map(|(s, &c)| if c > 0 { (s / c as f64) as f32 } else { 0.0 }).collect();
        summary.layers.push((spec.name.clone(), n, k));
        let hash = Some(HashKey { seed, signed: cfg.signed });
        model.constraints.codebooks.insert(spec.name.clone(), Codebook { centroids, assignment, negated, hash });
    }
    model.apply_codebooks();
    Ok(summary)
}

fn buckets_for(numel: usize, fraction: f64) -> usize {
    ((numel as f64 * fraction).ceil() as usize).clamp(1, numel.max(1))
}

/// The `hash` pass (HashedNets): each weight tensor's entries are mapped by a fixed hash
/// to `ceil(fraction · numel)` buckets (with hashed ±1 signs unless `signed = false`);
/// the buckets are fine-tuned and the file stores only them and the hash seed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hash {
    /// Buckets per weight, in (0, 1]: 0.125 keeps 1/8 of the weights' values.
    pub fraction: f64,
    #[serde(default = "yes")]
    pub signed: bool,
    #[serde(default)]
    pub layers: Vec<String>,
    #[serde(default = "super::default_fine_tune")]
    pub fine_tune_epochs: usize,
    /// Bucket learning rate (default: the training rate).
    pub lr: Option<f32>,
    /// Round buckets and biases to half precision so they are stored in 16 bits.
    #[serde(default)]
    pub half_precision: bool,
}

fn yes() -> bool {
    true
}

impl Technique for Hash {
    fn stage_name(&self) -> String {
        "hashed".into()
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Classifier {
            return Err(super::not_available(kind, &self.stage_name()));
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(format!("pass hash: fraction: expected buckets per weight in (0, 1], got {}", self.fraction));
        }
        Ok(())
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let layers = super::select::weighted_nodes(model, &self.layers).map_err(HashError::UnknownLayer)?;
        let cfg = HashConfig { fraction: self.fraction, signed: self.signed, layers, seed: ctx.seed };
        let summary = hash_weights(model, &cfg)?;
        let ft = FineTune { epochs: self.fine_tune_epochs, lr: self.lr.unwrap_or(ctx.lr()), seed: ctx.pass_seed(), ..Default::default() };
        fine_tune_shared("hash", model, ctx, ft, self.half_precision)?;
        let layers = summary.layers.iter().map(|(n, w, k)| SharedTensor { tensor: n.clone(), weights: *w, clusters: None, buckets: Some(*k) }).collect();
        let mut out = Output::model(&SharedReport { layers, fine_tune_epochs: self.fine_tune_epochs, half_precision: self.half_precision, signed: Some(self.signed) });
        out.entropy_coding = true;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::sqz::{self, Limits, Values};
    use crate::model::zoo;
    use crate::store::{self, ModelFile};

    #[test]
    fn hashed_layers_store_only_buckets_and_run_from_the_file() {
        let mut m = Model::init(zoo::build("mlp").unwrap(), 3).unwrap();
        let dense_bytes = sqz::encode(&store::stored_f32(&m)).unwrap().len();
        let cfg = HashConfig { fraction: 0.125, signed: true, layers: vec![], seed: 9 };
        let s = hash_weights(&mut m, &cfg).unwrap();
        assert_eq!(s.layers, vec![("fc1.weight".into(), 784 * 64, 6272), ("fc2.weight".into(), 640, 80)]);
        // Every weight is ± its bucket; both signs occur.
        let cb = &m.constraints.codebooks["fc1.weight"];
        let w = m.params.get("fc1.weight").unwrap();
        assert!(w.iter().enumerate().all(|(i, &v)| v == cb.value(i)));
        assert!(cb.negated.iter().any(|&n| n) && cb.negated.iter().any(|&n| !n));
        let stored = store::stored_f32(&m);
        let bytes = sqz::encode(&stored).unwrap();
        assert!(bytes.len() < dense_bytes / 7, "{} vs {dense_bytes}", bytes.len());
        assert_eq!(&bytes[4..8], &[1, 0, 1, 0], "hashed files are version 1.1");
        let back = sqz::decode(&bytes, &Limits::default()).unwrap();
        assert!(matches!(back.tensors[0].values, Values::Hashed { signed: true, .. }));
        // The runtime expands the buckets to exactly the trained weights.
        let file = ModelFile::Sqz(back);
        assert!(file.plan().unwrap().kernel_description().contains("hashed expanded at load"));
        let x: Vec<f32> = (0..784 * 3).map(|i| (i % 17) as f32 / 17.0).collect();
        let mut ws = crate::runtime::exec::Workspace::default();
        let from_file = file.plan().unwrap().run(&x, 3, &mut ws).unwrap().to_vec();
        let from_model = store::model_plan(&m).unwrap().run(&x, 3, &mut ws).unwrap().to_vec();
        assert_eq!(from_file, from_model);
        // Read back as a trainable model, the hash constraint comes back.
        let again = file.into_model().unwrap();
        assert_eq!(again.constraints.codebooks["fc1.weight"], m.constraints.codebooks["fc1.weight"]);
    }

    #[test]
    fn buckets_train_and_stay_shared() {
        let mut m = Model::init(zoo::build("mlp").unwrap(), 4).unwrap();
        hash_weights(&mut m, &HashConfig { fraction: 0.25, signed: true, layers: vec!["fc2".into()], seed: 1 }).unwrap();
        assert!(!m.constraints.codebooks.contains_key("fc1.weight"));
        let before = m.constraints.codebooks["fc2.weight"].centroids.clone();
        let mut rng = crate::rng::Rng::new(2);
        let x: Vec<f32> = (0..784 * 64).map(|_| rng.uniform(1.0)).collect();
        let y: Vec<u8> = (0..64).map(|i| (i % 10) as u8).collect();
        let cfg = crate::train::TrainConfig { epochs: 2, batch_size: 16, ..Default::default() };
        crate::train::train(&mut m, &x, &y, &cfg, &mut |_| {});
        let cb = &m.constraints.codebooks["fc2.weight"];
        assert_ne!(cb.centroids, before);
        let w = m.params.get("fc2.weight").unwrap();
        assert!(w.iter().enumerate().all(|(i, &v)| v == cb.value(i)));
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut m = Model::init(zoo::build("mlp").unwrap(), 3).unwrap();
        let cfg = |fraction, layers: Vec<String>| HashConfig { fraction, signed: false, layers, seed: 0 };
        assert_eq!(hash_weights(&mut m, &cfg(0.0, vec![])), Err(HashError::Fraction(0.0)));
        assert_eq!(hash_weights(&mut m, &cfg(1.5, vec![])), Err(HashError::Fraction(1.5)));
        assert_eq!(hash_weights(&mut m, &cfg(0.5, vec!["fc9".into()])), Err(HashError::UnknownLayer("fc9".into())));
        let mut big = Model::init(zoo::build("lenet300").unwrap(), 3).unwrap();
        assert!(matches!(hash_weights(&mut big, &cfg(0.5, vec![])), Err(HashError::TooManyBuckets { .. })));
        m.set_mask("fc2.weight", vec![true; 640]).unwrap();
        assert_eq!(hash_weights(&mut m, &cfg(0.5, vec![])), Err(HashError::Masked("fc2.weight".into())));
    }
}
