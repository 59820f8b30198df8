//! Model files of every kind squeeze reads: the `.sqz` container and safetensors with
//! squeeze's architecture metadata. Sniffs the kind from the bytes, not the extension,
//! and turns a file into a trainable [`Model`] or a runnable [`Plan`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::format::safetensors::{self as st, DenseFile, SafetensorsError};
use crate::format::sqz::{self, FormatError, Limits, SqzModel, Values};
use crate::format::{is_sqz, write_atomic};
use crate::model::{Codebook, Model, ModelError};
use crate::runtime::exec::{Plan, RuntimeError, Weights};
use crate::spec::{Graph, QuantPlan};

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read '{path}': {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write '{path}': {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("'{path}' is not a model file: expected a .sqz container or a safetensors file written by squeeze{hint}")]
    NotAModel { path: PathBuf, hint: String },
    #[error("'{path}': {source}")]
    Sqz { path: PathBuf, source: FormatError },
    #[error("'{path}': {source}")]
    Safetensors { path: PathBuf, source: SafetensorsError },
    #[error("'{path}': {source}")]
    Model { path: PathBuf, source: ModelError },
    #[error("'{path}': {source}")]
    Runtime { path: PathBuf, source: RuntimeError },
}

/// A model file as read.
#[derive(Clone, Debug)]
pub enum ModelFile {
    Dense(DenseFile),
    Sqz(SqzModel),
}

impl ModelFile {
    pub fn graph(&self) -> &Graph {
        match self {
            ModelFile::Dense(d) => &d.graph,
            ModelFile::Sqz(s) => &s.graph,
        }
    }

    /// A trainable model: int8 weights are dequantized, stored sparsity becomes masks.
    pub fn into_model(self) -> Result<Model, ModelError> {
        match self {
            ModelFile::Dense(d) => {
                let masked = d.masked.clone();
                let tensors = d.tensors.into_iter().map(|(n, s, v)| (n, (s, v))).collect();
                let mut model = Model::from_tensors(d.graph, tensors)?;
                for name in masked {
                    let mask = model.params.get(&name).ok_or(ModelError::MissingTensor { name: name.clone() })?.iter().map(|v| *v != 0.0).collect();
                    model.set_mask(&name, mask)?;
                }
                Ok(model)
            }
            ModelFile::Sqz(s) => {
                let masks: Vec<(String, Vec<bool>)> = s
                    .tensors
                    .iter()
                    .filter_map(|t| {
                        t.positions.as_ref().map(|p| {
                            let mut m = vec![false; t.numel()];
                            p.iter().for_each(|&i| m[i as usize] = true);
                            (t.name.clone(), m)
                        })
                    })
                    .collect();
                let codebooks: Vec<(String, Codebook)> = s
                    .tensors
                    .iter()
                    .filter_map(|t| match &t.values {
                        Values::Codebook { indices, centroids } => {
                            let mut assignment = vec![0u16; t.numel()];
                            match &t.positions {
                                Some(p) => p.iter().zip(indices).for_each(|(&i, &a)| assignment[i as usize] = a),
                                None => assignment.copy_from_slice(indices),
                            }
                            Some((t.name.clone(), Codebook { centroids: centroids.clone(), assignment }))
                        }
                        _ => None,
                    })
                    .collect();
                let tensors = s.tensors.iter().map(|t| (t.name.clone(), (t.shape.clone(), t.to_dense_f32()))).collect();
                let mut model = Model::from_tensors(s.graph, tensors)?;
                for (name, mask) in masks {
                    model.set_mask(&name, mask)?;
                }
                model.constraints.codebooks.extend(codebooks);
                Ok(model)
            }
        }
    }

    /// The executor for this file, running each tensor from its stored encoding.
    pub fn plan(&self) -> Result<Plan, RuntimeError> {
        match self {
            ModelFile::Dense(d) => {
                let w = d.tensors.iter().map(|(n, _, v)| (n.clone(), Weights::F32(v.clone()))).collect();
                Plan::new(&d.graph, w, &QuantPlan::default())
            }
            ModelFile::Sqz(s) => sqz_plan(s),
        }
    }
}

/// The executor for a stored model: int8 tensors stay int8 (expanded to dense rows when
/// stored sparse), f32 tensors are expanded to dense f32.
pub fn sqz_plan(s: &SqzModel) -> Result<Plan, RuntimeError> {
    let mut w = HashMap::new();
    let mut expanded = Vec::new();
    let weight_names: std::collections::HashSet<String> =
        s.graph.parameters().into_iter().filter(|p| p.kind == crate::spec::ParamKind::Weight).map(|p| p.name).collect();
    for t in &s.tensors {
        if t.positions.is_some() && weight_names.contains(&t.name) {
            expanded.push("sparse");
        }
        if matches!(t.values, Values::Codebook { .. }) {
            expanded.push("codebook");
        }
        let weights = match (&t.values, &t.positions) {
            (Values::I8 { q, scales }, None) => Weights::I8 { q: q.clone(), scales: scales.clone() },
            (Values::I8 { q, scales }, Some(pos)) => {
                let mut dense = vec![0i8; t.numel()];
                pos.iter().zip(q).for_each(|(&i, &v)| dense[i as usize] = v);
                Weights::I8 { q: dense, scales: scales.clone() }
            }
            (Values::F32(_) | Values::Codebook { .. }, _) => Weights::F32(t.to_dense_f32()),
        };
        w.insert(t.name.clone(), weights);
    }
    let mut plan = Plan::new(&s.graph, w, &s.quant)?;
    expanded.into_iter().for_each(|e| plan.note_expanded(e));
    Ok(plan)
}

/// The executor for a float model.
pub fn model_plan(model: &Model) -> Result<Plan, RuntimeError> {
    let w = model.tensors().into_iter().map(|(k, v)| (k, Weights::F32(v))).collect();
    Plan::new(&model.graph, w, &QuantPlan::default())
}

/// Reads a model file, sniffing its kind from the first bytes.
pub fn read(path: &Path) -> Result<ModelFile, StoreError> {
    let bytes = std::fs::read(path).map_err(|source| StoreError::Io { path: path.into(), source })?;
    if is_sqz(&bytes) {
        let m = sqz::decode(&bytes, &Limits::default()).map_err(|source| StoreError::Sqz { path: path.into(), source })?;
        return Ok(ModelFile::Sqz(m));
    }
    if st::is_safetensors(&bytes) {
        let d = st::decode(&bytes).map_err(|source| StoreError::Safetensors { path: path.into(), source })?;
        return Ok(ModelFile::Dense(d));
    }
    let hint = if bytes.is_empty() {
        " (the file is empty)".to_string()
    } else if bytes.iter().take(64).all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        " (it looks like a text file)".to_string()
    } else {
        String::new()
    };
    Err(StoreError::NotAModel { path: path.into(), hint })
}

/// Reads a file straight into a trainable model.
pub fn read_model(path: &Path) -> Result<Model, StoreError> {
    read(path)?.into_model().map_err(|source| StoreError::Model { path: path.into(), source })
}

/// The dense safetensors form of a model (masks recorded in the metadata).
pub fn dense_file(model: &Model) -> DenseFile {
    DenseFile {
        graph: model.graph.clone(),
        tensors: model.params.iter().map(|(s, d)| (s.name.clone(), s.shape.clone(), d.to_vec())).collect(),
        masked: model.constraints.masks.keys().cloned().collect(),
        metadata: Default::default(),
    }
}

/// Writes a float model as safetensors (atomically); returns the bytes written.
pub fn write_safetensors(path: &Path, model: &Model) -> Result<u64, StoreError> {
    let bytes = st::encode(&dense_file(model)).map_err(|source| StoreError::Safetensors { path: path.into(), source })?;
    write_atomic(path, &bytes).map_err(|source| StoreError::Write { path: path.into(), source })?;
    Ok(bytes.len() as u64)
}

/// Writes a stored model as `.sqz`, with entropy coding (Huffman-coded indices and
/// positions, deflate) or with fixed-width codes only; returns the bytes written.
pub fn write_sqz_with(path: &Path, model: &SqzModel, entropy_coding: bool) -> Result<u64, StoreError> {
    let opts = sqz::EncodeOptions { entropy_coding };
    let bytes = sqz::encode_with(model, &opts).map_err(|source| StoreError::Sqz { path: path.into(), source })?;
    write_atomic(path, &bytes).map_err(|source| StoreError::Write { path: path.into(), source })?;
    Ok(bytes.len() as u64)
}

/// Writes a stored model as `.sqz` with every encoding allowed (atomically); returns
/// the bytes written.
pub fn write_sqz(path: &Path, model: &SqzModel) -> Result<u64, StoreError> {
    let bytes = sqz::encode(model).map_err(|source| StoreError::Sqz { path: path.into(), source })?;
    write_atomic(path, &bytes).map_err(|source| StoreError::Write { path: path.into(), source })?;
    Ok(bytes.len() as u64)
}
