//! Model files of every kind squeeze reads: the `.sqz` container, safetensors with
//! squeeze's architecture metadata, and ONNX models (imported into a squeeze graph). Sniffs the kind from the bytes, not the extension,
//! and turns a file into a trainable [`Model`] or a runnable [`Plan`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::format::arch::{ArchError, Architecture};
use crate::format::onnx::{self, ExportError, Imported, OnnxError};
use crate::format::pytorch::{self, PytorchError};
use crate::format::safetensors::{self as st, DenseFile, SafetensorsError};
use crate::format::sqz::{self, FormatError, SqzModel, StoredTensor, Values};
use crate::format::{is_sqz, write_atomic};
use crate::model::{Codebook, HashKey, Model, ModelError};
use crate::runtime::exec::{CodebookIndices, Encoding, Plan, RuntimeError, Weights};
use crate::spec::{Graph, QuantPlan};

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read '{path}': {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write '{path}': {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("'{path}' is not a model file: expected a .sqz container, a safetensors file written by squeeze, or an ONNX model{hint}")]
    NotAModel { path: PathBuf, hint: String },
    #[error("'{path}': {source}")]
    Sqz { path: PathBuf, source: FormatError },
    // The ONNX errors are printed, not chained as sources: `{err:#}` would repeat them.
    #[error("'{path}': {error}")]
    Onnx { path: PathBuf, error: OnnxError },
    #[error("{0}")]
    Export(ExportError),
    #[error("the exported ONNX does not import back: {0}")]
    Reimport(OnnxError),
    #[error("cannot run the model to check the export: {0}")]
    ExportRun(RuntimeError),
    #[error("the exported ONNX disagrees with the model: max |difference| {max_diff:.3e} on {samples} check inputs (allowed {tolerance:.1e}); nothing was written")]
    ExportMismatch { max_diff: f32, tolerance: f32, samples: usize },
    #[error("'{path}': {source}")]
    Safetensors { path: PathBuf, source: SafetensorsError },
    #[error("'{path}': {source}")]
    Model { path: PathBuf, source: ModelError },
    #[error("'{path}': {source}")]
    Runtime { path: PathBuf, source: RuntimeError },
    // The inner errors are fields, not sources, so that a printed chain says them once.
    #[error("'{path}': {reason}")]
    StateDict { path: PathBuf, reason: PytorchError },
    #[error("{reason} (state dict '{state_dict}', architecture '{arch}')")]
    Import { state_dict: PathBuf, arch: PathBuf, reason: ArchError },
    #[error("export to '{path}' failed its check: {why}; nothing was written")]
    ExportCheck { path: PathBuf, why: String },
}

/// A model file as read.
#[derive(Clone, Debug)]
pub enum ModelFile {
    Dense(DenseFile),
    Sqz(SqzModel),
    /// An ONNX model, imported (dense f32 parameters).
    Onnx(Imported),
}

impl ModelFile {
    pub fn graph(&self) -> &Graph {
        match self {
            ModelFile::Dense(d) => &d.graph,
            ModelFile::Sqz(s) => &s.graph,
            ModelFile::Onnx(o) => &o.graph,
        }
    }

    /// A trainable model: int8 weights are dequantized, stored sparsity becomes masks.
    pub fn into_model(self) -> Result<Model, ModelError> {
        match self {
            ModelFile::Onnx(o) => Model::from_tensors(o.graph, o.tensors.into_iter().map(|(n, s, v)| (n, (s, v))).collect()),
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
                            Some((t.name.clone(), Codebook { centroids: centroids.clone(), assignment, ..Default::default() }))
                        }
                        Values::Hashed { buckets, seed, signed, len } => {
                            let k = buckets.len() as u32;
                            let assignment = (0..*len as u64).map(|i| crate::codec::hash::bucket(*seed, i, k) as u16).collect();
                            let negated = if *signed { (0..*len as u64).map(|i| crate::codec::hash::negated(*seed, i)).collect() } else { Vec::new() };
                            let hash = Some(HashKey { seed: *seed, signed: *signed });
                            // More than 2^16 buckets cannot be a trainable codebook: the tensor stays plain.
                            (buckets.len() <= 1 << 16).then(|| (t.name.clone(), Codebook { centroids: buckets.clone(), assignment, negated, hash }))
                        }
                        _ => None,
                    })
                    .collect();
                // Dense f32 tensors move into the model rather than being copied.
                let tensors = s.tensors.into_iter().map(|t| {
                    let values = match (t.values, &t.positions) {
                        (Values::F32(v), None) => v,
                        (values, _) => StoredTensor { name: String::new(), shape: t.shape.clone(), values, positions: t.positions.clone() }.to_dense_f32(),
                    };
                    (t.name, (t.shape, values))
                }).collect();
                let mut model = Model::from_tensors(s.graph, tensors)?;
                for (name, mask) in masks {
                    model.set_mask(&name, mask)?;
                }
                model.constraints.codebooks.extend(codebooks);
                Ok(model)
            }
        }
    }

    /// [`ModelFile::plan`] consuming the file: its tensors move into the plan, so the
    /// weights are held once.
    pub fn into_plan(self) -> Result<Plan, RuntimeError> {
        match self {
            ModelFile::Sqz(s) => sqz_into_plan(s),
            other => other.plan(),
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
            ModelFile::Onnx(o) => {
                let w = o.tensors.iter().map(|(n, _, v)| (n.clone(), Weights::F32(v.clone()))).collect();
                Plan::new(&o.graph, w, &QuantPlan::default())
            }
        }
    }
}

/// The executor for a stored model: int8 tensors stay int8 (expanded to dense rows when
/// stored sparse), f32 tensors are expanded to dense f32.
pub fn sqz_plan(s: &SqzModel) -> Result<Plan, RuntimeError> {
    sqz_into_plan(s.clone())
}

/// [`sqz_plan`] consuming the model: dense f32 and int8 values move into the plan.
pub fn sqz_into_plan(s: SqzModel) -> Result<Plan, RuntimeError> {
    let mut w = HashMap::new();
    let mut encodings = HashMap::new();
    let mut hashed = false;
    let mut int4 = false;
    let weight_names: std::collections::HashSet<String> =
        s.graph.parameters().into_iter().filter(|p| p.kind == crate::spec::ParamKind::Weight).map(|p| p.name).collect();
    for t in s.tensors {
        if weight_names.contains(&t.name) && (t.positions.is_some() || matches!(t.values, Values::Codebook { .. })) {
            let kept = t.positions.as_ref().map(|p| {
                let mut m = vec![false; t.numel()];
                p.iter().for_each(|&i| m[i as usize] = true);
                m
            });
            let codebook = match &t.values {
                Values::Codebook { indices, centroids } => {
                    let mut all = vec![0u16; t.numel()];
                    match &t.positions {
                        Some(p) => p.iter().zip(indices).for_each(|(&i, &a)| all[i as usize] = a),
                        None => all.copy_from_slice(indices),
                    }
                    Some(CodebookIndices { indices: all, centroids: centroids.clone(), kept: kept.clone() })
                }
                _ => None,
            };
            encodings.insert(t.name.clone(), Encoding { sparse: t.positions.is_some(), codebook });
        }
        hashed |= matches!(t.values, Values::Hashed { .. });
        let weights = match (&t.values, &t.positions) {
            (Values::I8 { .. } | Values::F32(_), None) => match t.values {
                Values::I8 { q, scales } => Weights::I8 { q, scales },
                Values::F32(v) => Weights::F32(v),
                _ => unreachable!("matched above"),
            },
            (Values::I8 { q, scales }, Some(pos)) => {
                let mut dense = vec![0i8; t.numel()];
                pos.iter().zip(q).for_each(|(&i, &v)| dense[i as usize] = v);
                Weights::I8 { q: dense, scales: scales.clone() }
            }
            // Int4 weights are dequantized at load: the compute is f32.
            (Values::I4 { .. }, _) => {
                int4 = true;
                Weights::F32(t.to_dense_f32())
            }
            (Values::F32(_) | Values::Codebook { .. } | Values::Hashed { .. }, _) => Weights::F32(t.to_dense_f32()),
        };
        w.insert(t.name, weights);
    }
    let mut plan = Plan::with_encodings(&s.graph, w, &s.quant, &encodings)?;
    if hashed {
        plan.note_expanded("hashed");
    }
    if int4 {
        plan.note_expanded("int4");
    }
    Ok(plan)
}

/// The executor for a float model.
pub fn model_plan(model: &Model) -> Result<Plan, RuntimeError> {
    let w = model.tensors().into_iter().map(|(k, v)| (k, Weights::F32(v))).collect();
    Plan::new(&model.graph, w, &QuantPlan::default())
}

/// Reads a model file, sniffing its kind from the first bytes.
pub fn read(path: &Path) -> Result<ModelFile, StoreError> {
    // A .sqz file is decoded section by section, never held whole next to its tensors.
    let mut head = [0u8; 8];
    let got = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|source| StoreError::Io { path: path.into(), source })?;
        let mut got = 0;
        while got < head.len() {
            match f.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(StoreError::Io { path: path.into(), source }),
            }
        }
        got
    };
    if got >= 4 && is_sqz(&head[..got]) {
        let m = sqz::read_sqz(path).map_err(|source| StoreError::Sqz { path: path.into(), source })?;
        return Ok(ModelFile::Sqz(m));
    }
    let bytes = std::fs::read(path).map_err(|source| StoreError::Io { path: path.into(), source })?;
    if st::is_safetensors(&bytes) {
        let d = st::decode(&bytes).map_err(|source| StoreError::Safetensors { path: path.into(), source })?;
        return Ok(ModelFile::Dense(d));
    }
    // ONNX has no magic number: a `.onnx` name or a protobuf that decodes as a model.
    let onnx_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if onnx_name || onnx::is_onnx(&bytes) {
        let m = onnx::import(&bytes).map_err(|error| StoreError::Onnx { path: path.into(), error })?;
        return Ok(ModelFile::Onnx(m));
    }
    let hint = if bytes.starts_with(b"PK\x03\x04") {
        " (it is a zip archive, e.g. a PyTorch .pth: import it with `squeeze import FILE --arch ARCH.toml --out model.safetensors`, or name it as `state_dict` with an `architecture` in a recipe)".to_string()
    } else if bytes.is_empty() {
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

/// How a `.sqz` file codes its indices, positions and int8 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// Every encoding allowed: Huffman-coded indices and positions, deflate where it pays.
    Entropy,
    /// Fixed-width codes only: the size before entropy coding, as Deep Compression
    /// reports its "pruned" and "quantized" stages.
    FixedWidth,
}

/// Writes a stored model as `.sqz`, the one way squeeze writes one: atomically, and
/// tensor by tensor, dropping each once it is written (a large model is never held
/// twice; [`sqz::write_sqz_streaming`], the same bytes as [`sqz::encode_with`]).
/// Returns the bytes written.
pub fn write_sqz(path: &Path, model: SqzModel, coding: Coding) -> Result<u64, StoreError> {
    let opts = sqz::EncodeOptions { entropy_coding: coding == Coding::Entropy };
    sqz::write_sqz_streaming(path, model, &opts).map_err(|source| StoreError::Sqz { path: path.into(), source })
}

/// The stored form of a float model: f32 tensors, sparse where a mask says so.
pub fn stored_f32(model: &Model) -> SqzModel {
    let tensors = model
        .params
        .iter()
        .map(|(spec, data)| {
            let masked = model.constraints.masks.contains_key(&spec.name);
            let values = match model.constraints.codebooks.get(&spec.name) {
                // A hashed layer stores only its buckets and hash seed; pruned, it falls
                // back to the values (stored sparse), since a hash cannot skip elements.
                Some(cb) => match cb.hash {
                    Some(h) if !masked => Values::Hashed { buckets: cb.centroids.clone(), seed: h.seed, signed: h.signed, len: data.len() },
                    Some(_) => Values::F32(data.to_vec()),
                    None => Values::Codebook { indices: cb.assignment.clone(), centroids: cb.centroids.clone() },
                },
                None => Values::F32(data.to_vec()),
            };
            stored_tensor(spec.name.clone(), spec.shape.clone(), model.constraints.masks.get(&spec.name), values)
        })
        .collect();
    SqzModel { graph: model.graph.clone(), quant: QuantPlan::default(), tensors, metadata: BTreeMap::new() }
}

/// [`stored_f32`] consuming the model. A float model without masks or codebooks has its
/// tensors split off the end of the flat parameter buffer, which shrinks as they go,
/// so the weights are never held twice (the first tensor takes the buffer itself).
pub fn into_stored_f32(model: Model) -> SqzModel {
    if !model.constraints.masks.is_empty() || !model.constraints.codebooks.is_empty() {
        return stored_f32(&model);
    }
    let Model { graph, mut params, .. } = model;
    let mut order: Vec<usize> = (0..params.specs.len()).collect();
    order.sort_by_key(|&i| params.offsets[i]);
    let mut tensors: Vec<Option<StoredTensor>> = (0..order.len()).map(|_| None).collect();
    for &i in order.iter().rev() {
        let r = params.range(i);
        params.data.truncate(r.end);
        let values = if r.start == 0 {
            std::mem::take(&mut params.data)
        } else {
            let v = params.data[r.start..].to_vec();
            params.data.truncate(r.start);
            params.data.shrink_to_fit();
            v
        };
        let spec = &params.specs[i];
        tensors[i] = Some(StoredTensor { name: spec.name.clone(), shape: spec.shape.clone(), values: Values::F32(values), positions: None });
    }
    SqzModel { graph, quant: QuantPlan::default(), tensors: tensors.into_iter().flatten().collect(), metadata: BTreeMap::new() }
}

/// A tensor whose masked-out entries are dropped (positions kept) when it has a mask.
pub(crate) fn stored_tensor(name: String, shape: Vec<usize>, mask: Option<&Vec<bool>>, values: Values) -> StoredTensor {
    let Some(mask) = mask else {
        return StoredTensor { name, shape, values, positions: None };
    };
    let positions: Vec<u32> = mask.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i as u32).collect();
    let values = match values {
        Values::F32(v) => Values::F32(positions.iter().map(|&i| v[i as usize]).collect()),
        Values::I8 { q, scales } => Values::I8 { q: positions.iter().map(|&i| q[i as usize]).collect(), scales },
        Values::Codebook { indices, centroids } => Values::Codebook { indices: positions.iter().map(|&i| indices[i as usize]).collect(), centroids },
        // stored_f32 never pairs hashed values with a mask; int4 stays dense (its zeros
        // are stored as zero codes).
        dense @ (Values::Hashed { .. } | Values::I4 { .. }) => return StoredTensor { name, shape, values: dense, positions: None },
    };
    StoredTensor { name, shape, values, positions: Some(positions) }
}

/// Reads a PyTorch state dict (`.pth`/`.pt` zip or `.safetensors`) and maps it onto the
/// architecture description `arch` (see [`crate::format::arch`]). The model's parameter
/// names are the state dict's keys.
pub fn import_pytorch(state_dict: &Path, arch: &Path) -> Result<Model, StoreError> {
    let text = std::fs::read_to_string(arch).map_err(|source| StoreError::Io { path: arch.into(), source })?;
    let import_err = |reason| StoreError::Import { state_dict: state_dict.into(), arch: arch.into(), reason };
    let description = Architecture::parse(&text, &arch.display().to_string()).map_err(import_err)?;
    let bytes = std::fs::read(state_dict).map_err(|source| StoreError::Io { path: state_dict.into(), source })?;
    let state = pytorch::read_state_dict(&bytes).map_err(|reason| StoreError::StateDict { path: state_dict.into(), reason })?;
    let (graph, tensors) = description.build(&state).map_err(import_err)?;
    Model::from_tensors(graph, tensors).map_err(|source| StoreError::Model { path: state_dict.into(), source })
}

/// What [`export_safetensors`] wrote and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSummary {
    pub bytes: u64,
    pub tensors: usize,
    /// Inputs compared between the model and the re-read file.
    pub checked_inputs: usize,
    /// Largest output difference between the decoded model and the re-read file (0 when
    /// the file holds exactly the model's values).
    pub max_abs_diff: f32,
    /// Largest output difference between the re-read file (f32) and the stored model run
    /// from its own encoding (non-zero for int8 models: their activations are quantized).
    pub max_abs_diff_vs_stored: f32,
}

/// Outputs of `plan` on `x` (`n` samples).
fn outputs(plan: &Plan, x: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
    let mut ws = crate::runtime::exec::Workspace::default();
    Ok(plan.run(x, n, &mut ws)?.to_vec())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// Writes any model squeeze holds as a dense f32 safetensors file (every stored encoding
/// decoded; parameter names as in the model, i.e. the PyTorch keys of an imported
/// model; the architecture in the metadata). Before the file is put in place, its bytes
/// are read back as a plain state dict (as PyTorch or any safetensors reader sees them)
/// and run on `check_inputs` deterministic inputs in `[0, 1)`: any output difference
/// from the model is an error and nothing is written.
pub fn export_safetensors(file: &ModelFile, path: &Path, check_inputs: usize) -> Result<ExportSummary, StoreError> {
    let model = file.clone().into_model().map_err(|source| StoreError::Model { path: path.into(), source })?;
    let dense = dense_file(&model);
    let bytes = st::encode(&dense).map_err(|source| StoreError::Safetensors { path: path.into(), source })?;
    let check = |why: String| StoreError::ExportCheck { path: path.into(), why };
    let runtime = |source| StoreError::Runtime { path: path.into(), source };

    // Re-read through the generic state-dict reader, not the writer's own decoder.
    let state = pytorch::read_state_dict(&bytes).map_err(|e| check(format!("the written bytes do not read back: {e}")))?;
    let specs = model.graph.parameters();
    if state.len() != specs.len() {
        return Err(check(format!("{} tensors read back, the model has {}", state.len(), specs.len())));
    }
    let tensors = state.into_iter().map(|(k, t)| (k, (t.shape, t.values))).collect();
    let reread = Model::from_tensors(model.graph.clone(), tensors).map_err(|e| check(e.to_string()))?;

    let n = check_inputs.max(1);
    let mut rng = crate::rng::Rng::new(0x5eed);
    let x: Vec<f32> = (0..n * model.graph.input_len()).map(|_| rng.next_f32()).collect();
    let want = outputs(&model_plan(&model).map_err(runtime)?, &x, n).map_err(runtime)?;
    let got = outputs(&model_plan(&reread).map_err(runtime)?, &x, n).map_err(runtime)?;
    let diff = max_abs_diff(&want, &got);
    if diff > 0.0 {
        return Err(check(format!("outputs of the re-read file differ from the model's by up to {diff:e}")));
    }
    let stored = outputs(&file.plan().map_err(runtime)?, &x, n).map_err(runtime)?;
    write_atomic(path, &bytes).map_err(|source| StoreError::Write { path: path.into(), source })?;
    Ok(ExportSummary {
        bytes: bytes.len() as u64,
        tensors: specs.len(),
        checked_inputs: n,
        max_abs_diff: diff,
        max_abs_diff_vs_stored: max_abs_diff(&got, &stored),
    })
}

impl From<ExportError> for StoreError {
    fn from(e: ExportError) -> StoreError {
        StoreError::Export(e)
    }
}

/// An ONNX export and what its check measured.
#[derive(Clone, Debug)]
pub struct OnnxExport {
    pub bytes: Vec<u8>,
    /// Integer layers written as QDQ (0 for an fp32 export).
    pub int8_layers: usize,
    /// Weight tensors stored int8 in the file (QDQ layers' weights included; 0 for an
    /// fp32 export).
    pub int8_weights: usize,
    /// Layers squeeze runs with dynamic (run-time, per row) activation quantization,
    /// written with float activations (see [`onnx::encode_int8`]).
    pub dynamic_layers: usize,
    /// Inputs the re-imported file was run on, the largest output difference from the
    /// model, and what was allowed.
    pub samples: usize,
    pub max_diff: f32,
    pub tolerance: f32,
}

/// ONNX bytes of a model file: with its int8 weights kept int8 when it is a quantized
/// `.sqz` (unless `float`; see [`onnx::encode_int8`]: QDQ for full int8, int8 weights
/// through DequantizeLinear into float layers for weights-only and dynamic models), else
/// fp32 of its parameters decoded from any encoding. An imported ONNX model keeps its
/// original input and output names. Before returning, the bytes
/// are imported again by squeeze's importer and run on 8 inputs in [0, 1] against the
/// model: fp32 and int8-weight files must agree within 1e-5 (relative to the outputs'
/// magnitude) with the model run in float from its (dequantized) weights; QDQ within
/// 1e-3 (the int32 bias rounding). The activation quantization itself is what ONNX Runtime
/// runs (checked against squeeze's integer kernels by the test suite). `weight_type`:
/// how the QDQ file stores the integer layers' weights (see [`onnx::WeightType`]).
pub fn export_onnx(path: &Path, file: ModelFile, float: bool, weight_type: onnx::WeightType) -> Result<OnnxExport, StoreError> {
    let (graph, bytes, reference, tolerance, counts) = match file {
        ModelFile::Sqz(s) if !float && s.tensors.iter().any(|t| matches!(t.values, Values::I8 { .. })) => {
            let bytes = onnx::encode_int8(&s, weight_type)?;
            // The float run of the same weights (int8 dequantized at load).
            let w = s
                .tensors
                .iter()
                .map(|t| {
                    let v = match &t.values {
                        Values::I8 { q, scales } => {
                            let mut full = vec![0i8; t.numel()];
                            match &t.positions {
                                Some(p) => p.iter().zip(q).for_each(|(&i, &v)| full[i as usize] = v),
                                None => full.copy_from_slice(q),
                            }
                            Weights::I8 { q: full, scales: scales.clone() }
                        }
                        _ => Weights::F32(t.to_dense_f32()),
                    };
                    (t.name.clone(), v)
                })
                .collect();
            let plan = Plan::new(&s.graph, w, &QuantPlan::default()).map_err(StoreError::ExportRun)?;
            // Integer LSTM/GRU nodes are written as float recurrent ops holding their
            // dequantized int8 weights, dynamic layers as float layers: not integer
            // layers of the ONNX graph.
            let int8_layers =
                s.quant.integer_nodes.iter().filter(|n| !s.quant.dynamic.contains(*n) && s.graph.node(n).is_some_and(|n| n.op.has_weight())).count();
            let int8_weights = s.tensors.iter().filter(|t| matches!(t.values, Values::I8 { .. })).count();
            let tolerance = if int8_layers > 0 { 1e-3 } else { 1e-5 };
            (s.graph.clone(), bytes, plan, tolerance, (int8_layers, int8_weights, s.quant.dynamic.len()))
        }
        other => {
            let model = other.into_model().map_err(|source| StoreError::Model { path: path.into(), source })?;
            let bytes = onnx::encode_f32(&model.graph, &model.tensors())?;
            let plan = model_plan(&model).map_err(StoreError::ExportRun)?;
            (model.graph, bytes, plan, 1e-5, (0, 0, 0))
        }
    };
    let (int8_layers, int8_weights, dynamic_layers) = counts;
    let back = onnx::import(&bytes).map_err(StoreError::Reimport)?;
    let w = back.tensors.iter().map(|(n, _, v)| (n.clone(), Weights::F32(v.clone()))).collect();
    let plan = Plan::new(&back.graph, w, &QuantPlan::default()).map_err(StoreError::ExportRun)?;
    let samples = 8;
    let mut rng = crate::rng::Rng::new(0x5eed_0000);
    let x: Vec<f32> = (0..samples * graph.input_len()).map(|_| rng.next_f32()).collect();
    let want = reference.run_all(&x, samples, &mut Default::default()).map_err(StoreError::ExportRun)?;
    let got = plan.run_all(&x, samples, &mut Default::default()).map_err(StoreError::ExportRun)?;
    let (mut max_diff, mut scale) = (0.0f32, 1.0f32);
    let shapes_agree = want.len() == got.len() && want.iter().zip(&got).all(|(a, b)| a.len() == b.len());
    if !shapes_agree {
        return Err(StoreError::ExportMismatch { max_diff: f32::INFINITY, tolerance, samples });
    }
    for (u, v) in want.iter().flatten().zip(got.iter().flatten()) {
        max_diff = max_diff.max((u - v).abs());
        scale = scale.max(u.abs());
    }
    // Relative to the outputs' magnitude (logits can be large).
    let allowed = tolerance * scale;
    if !(max_diff <= allowed) {
        return Err(StoreError::ExportMismatch { max_diff, tolerance: allowed, samples });
    }
    Ok(OnnxExport { bytes, int8_layers, int8_weights, dynamic_layers, samples, max_diff, tolerance: allowed })
}
