//! A trainable network built from a [`Graph`]: every parameter lives in one flat
//! buffer ([`Params`]), every layer owns its forward and backward over buffers
//! allocated once per batch size ([`Workspace`]), and per-parameter constraints
//! ([`Constraints`]) record what later steps must keep (pruning masks).
//!
//! ```
//! use squeeze::model::{zoo, Model};
//! let model = Model::init(zoo::build("mlp").unwrap(), 42).unwrap();
//! assert_eq!(model.params.len(), 784 * 64 + 64 + 64 * 10 + 10);
//! ```

mod network;
mod recurrent;
mod transformer;
pub mod zoo;

use std::collections::{BTreeMap, HashMap};

pub use network::{SoftTargets, Workspace};


use crate::rng::Rng;
use crate::spec::{Graph, Op, ParamKind, ParamSpec, SpecError};

/// Errors building a model from a graph and tensors.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid architecture: {0}")]
    Spec(#[from] SpecError),
    #[error("tensor '{name}' is missing")]
    MissingTensor { name: String },
    #[error("tensor '{name}' has shape {got:?}, the architecture needs {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("tensor '{name}' is not a parameter of this architecture")]
    UnexpectedTensor { name: String },
    #[error("mask for '{name}' has {got} entries, the parameter has {expected}")]
    MaskLength { name: String, expected: usize, got: usize },
}

/// All parameters of a graph in one flat buffer, in [`Graph::parameters`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub specs: Vec<ParamSpec>,
    pub offsets: Vec<usize>,
    pub data: Vec<f32>,
}

impl Params {
    fn zeros(specs: Vec<ParamSpec>) -> Params {
        let mut offsets = Vec::with_capacity(specs.len());
        let mut total = 0;
        for s in &specs {
            offsets.push(total);
            total += s.numel();
        }
        Params { specs, offsets, data: vec![0.0; total] }
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Index of the parameter called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// The flat range of parameter `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i] + self.specs[i].numel()
    }

    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.index(name).map(|i| &self.data[self.range(i)])
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let i = self.index(name)?;
        let r = self.range(i);
        Some(&mut self.data[r])
    }

    /// Named views of every parameter.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamSpec, &[f32])> {
        self.specs.iter().enumerate().map(|(i, s)| (s, &self.data[self.range(i)]))
    }
}

/// Shared values of one parameter: element `i` is `centroids[assignment[i]]`, negated
/// where `negated[i]` (unless a mask removes it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Codebook {
    pub centroids: Vec<f32>,
    pub assignment: Vec<u16>,
    /// Per element: store the negated centroid (hashed signs); empty = none negated.
    pub negated: Vec<bool>,
    /// Set when the assignment (and `negated`) come from a fixed hash (HashedNets), so
    /// a file may store just the hash seed instead of the assignment.
    pub hash: Option<HashKey>,
}

/// The hash a [`Codebook`]'s assignment was computed from (see `codec::hash`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashKey {
    /// The tensor's hash seed.
    pub seed: u64,
    /// Whether signs are hashed too.
    pub signed: bool,
}

impl Codebook {
    /// The value of element `i` (mask not applied).
    pub fn value(&self, i: usize) -> f32 {
        let c = self.centroids[self.assignment[i] as usize];
        if self.negated.get(i).copied().unwrap_or(false) { -c } else { c }
    }
}

/// What later steps must keep about parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Constraints {
    /// Pruning masks by parameter name: `false` = the weight is removed and stays 0.
    pub masks: BTreeMap<String, Vec<bool>>,
    /// Weight sharing by parameter name: the assignment is fixed, the centroids train.
    pub codebooks: BTreeMap<String, Codebook>,
}

/// An architecture, its parameters and their constraints.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub graph: Graph,
    pub params: Params,
    pub constraints: Constraints,
}

impl Model {
    /// A freshly initialised model: weights and biases uniform in ±1/√fan_in (PyTorch's
    /// default for Linear and Conv2d; ±1/√hidden for LSTM/GRU), drawn from `seed`.
    pub fn init(graph: Graph, seed: u64) -> Result<Model, ModelError> {
        graph.validate()?;
        let mut params = Params::zeros(graph.parameters());
        let mut rng = Rng::new(seed);
        for i in 0..params.specs.len() {
            let spec = &params.specs[i];
            let recurrent = graph.node(&spec.node).and_then(|n| n.op.recurrent());
            let fan_in = match spec.kind {
                // PyTorch's LSTM/GRU: every parameter uniform in ±1/√hidden.
                _ if recurrent.is_some() => recurrent.map_or(1, |r| r.hidden),
                ParamKind::Weight => spec.shape[1..].iter().product::<usize>(),
                // The bias shares its layer's fan-in: the weight precedes it.
                ParamKind::Bias => params.specs[i - 1].shape[1..].iter().product::<usize>(),
            };
            let mut bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let op = graph.node(&spec.node).map(|n| &n.op);
            match op {
                // LayerNorm starts as the identity: scale 1, shift 0.
                Some(Op::LayerNorm { .. }) => {
                    let v = if spec.name.ends_with(".weight") { 1.0 } else { 0.0 };
                    let r = params.range(i);
                    params.data[r].fill(v);
                    continue;
                }
                // Tables and the CLS row: small values (std 0.02, as BERT and ViT), so
                // they do not swamp the patch/token features at the start.
                Some(Op::Embedding { .. } | Op::PositionEmbedding { .. } | Op::ClsToken { .. }) => bound = 0.02 * 3f32.sqrt(),
                _ => {}
            }
            let r = params.range(i);
            params.data[r].iter_mut().for_each(|w| *w = rng.uniform(bound));
        }
        Ok(Model { graph, params, constraints: Constraints::default() })
    }

    /// A model from named tensors; every parameter must be present with its exact shape.
    pub fn from_tensors(
        graph: Graph,
        mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<Model, ModelError> {
        graph.validate()?;
        let mut params = Params::zeros(graph.parameters());
        for i in 0..params.specs.len() {
            let spec = &params.specs[i];
            let (shape, data) = tensors
                .remove(&spec.name)
                .ok_or_else(|| ModelError::MissingTensor { name: spec.name.clone() })?;
            if shape != spec.shape || data.len() != spec.numel() {
                return Err(ModelError::ShapeMismatch {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    got: shape,
                });
            }
            let r = params.range(i);
            params.data[r].copy_from_slice(&data);
        }
        if let Some(name) = tensors.into_keys().min() {
            return Err(ModelError::UnexpectedTensor { name });
        }
        Ok(Model { graph, params, constraints: Constraints::default() })
    }

    /// Adds a pruning mask for `name` and zeroes the removed weights.
    pub fn set_mask(&mut self, name: &str, mask: Vec<bool>) -> Result<(), ModelError> {
        let w = self.params.get_mut(name).ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        if w.len() != mask.len() {
            return Err(ModelError::MaskLength { name: name.into(), expected: w.len(), got: mask.len() });
        }
        for (v, &keep) in w.iter_mut().zip(&mask) {
            if !keep {
                *v = 0.0;
            }
        }
        self.constraints.masks.insert(name.to_string(), mask);
        Ok(())
    }

    /// The masks as one flat multiplier over [`Params::data`] (1 = free, 0 = held at zero),
    /// or `None` when nothing is masked.
    pub fn flat_mask(&self) -> Option<Vec<f32>> {
        if self.constraints.masks.is_empty() {
            return None;
        }
        let mut flat = vec![1.0; self.params.len()];
        for (name, mask) in &self.constraints.masks {
            if let Some(i) = self.params.index(name) {
                let r = self.params.range(i);
                for (f, &keep) in flat[r].iter_mut().zip(mask) {
                    *f = if keep { 1.0 } else { 0.0 };
                }
            }
        }
        Some(flat)
    }

    /// Writes every codebook's centroids into its parameter (masked entries stay 0).
    pub fn apply_codebooks(&mut self) {
        for (name, cb) in &self.constraints.codebooks {
            let mask = self.constraints.masks.get(name);
            if let Some(i) = self.params.index(name) {
                let r = self.params.range(i);
                for (j, w) in self.params.data[r].iter_mut().enumerate().take(cb.assignment.len()) {
                    *w = if mask.is_some_and(|m| !m[j]) { 0.0 } else { cb.value(j) };
                }
            }
        }
    }

    /// Number of non-zero parameters.
    pub fn nonzero_params(&self) -> usize {
        self.params.data.iter().filter(|v| **v != 0.0).count()
    }

    /// Dense copies of every parameter by name, as the runtime takes them.
    pub fn tensors(&self) -> HashMap<String, Vec<f32>> {
        self.params.iter().map(|(s, d)| (s.name.clone(), d.to_vec())).collect()
    }
}
