//! What a model file holds, for `squeeze inspect`: its architecture, each tensor's
//! stored encoding and bytes, per-layer accounting in the style of Deep Compression's
//! Tables 2–5, and the kernels the runtime picks. [`inspect`] reads any file squeeze
//! reads (a Hugging Face directory with [`inspect_hf_dir`]); the result is plain data
//! (serialisable for `--json`) and prints as the table a person reads ([`std::fmt::Display`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::format::hf;
use crate::format::sqz;
use crate::spec::{Graph, ParamKind, SpecError};
use crate::store::{self, ModelFile, StoreError};

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("'{path}': {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("'{path}': {source}")]
    Sqz { path: PathBuf, source: sqz::FormatError },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Hf(#[from] hf::HfError),
    #[error("tokenizer: {0}")]
    Text(#[from] crate::text::TextError),
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::exec::RuntimeError),
}

/// One node of the architecture.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub op: String,
    pub reads: Vec<String>,
    pub output_shape: Vec<usize>,
    pub params: usize,
}

/// One stored tensor, or a section of the container that is not a tensor (`name` in
/// brackets, e.g. `[META]`).
#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub shape: Option<Vec<usize>>,
    /// Values stored (fewer than the shape's elements when pruned and stored sparse).
    pub stored: Option<usize>,
    pub bytes: usize,
    pub bits_per_element: Option<f64>,
    pub encoding: String,
}

/// One weighted layer's accounting (weight bits and index bits per kept weight).
#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub layer: String,
    pub params: usize,
    pub kept_percent: f64,
    pub weight_bits: Option<f64>,
    pub index_bits: Option<f64>,
    pub bytes: u64,
    pub share_percent: f64,
    pub ratio_vs_fp32: f64,
}

/// An imported ONNX file: the ops it holds and what the importer noted.
#[derive(Clone, Debug, Serialize)]
pub struct OnnxDetails {
    pub opset: i64,
    pub producer: String,
    pub ops: Vec<(String, usize)>,
    pub notes: Vec<String>,
}

/// A quantized `.sqz` file's integer layers and activation quantization.
#[derive(Clone, Debug, Serialize)]
pub struct IntegerDetails {
    pub layers: Vec<String>,
    /// (value, scale, zero point)
    pub activations: Vec<(String, f32, i32)>,
}

/// What [`inspect`] found in a model file.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    /// `"safetensors"`, `"sqz"` or `"onnx"`.
    pub format: &'static str,
    pub bytes: u64,
    pub params: usize,
    pub input_shape: Vec<usize>,
    pub outputs: Vec<String>,
    pub nodes: Vec<NodeRow>,
    pub tensors: Vec<TensorRow>,
    /// Per weighted layer, then a `total` row (`.sqz` only).
    pub layers: Vec<LayerRow>,
    pub onnx: Option<OnnxDetails>,
    pub integer: Option<IntegerDetails>,
    /// The kernels the runtime runs this file with (`.sqz` only).
    pub kernel: Option<String>,
}

/// Reads `path` (`.sqz`, safetensors or ONNX) and describes it.
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    let file = store::read(path)?;
    let bytes = std::fs::metadata(path).map_err(|source| InspectError::Io { path: path.into(), source })?.len();
    let graph = file.graph().clone();
    let nodes = node_rows(&graph)?;
    let mut inspection = Inspection {
        path: path.into(),
        format: match &file {
            ModelFile::Dense(_) => "safetensors",
            ModelFile::Sqz(_) => "sqz",
            ModelFile::Onnx(_) => "onnx",
        },
        bytes,
        params: graph.num_params(),
        input_shape: graph.input_shape.clone(),
        outputs: graph.outputs.clone(),
        nodes,
        tensors: Vec::new(),
        layers: Vec::new(),
        onnx: None,
        integer: None,
        kernel: None,
    };
    let dense = |name: &str, shape: &[usize], len: usize, how: &str| TensorRow {
        name: name.into(),
        shape: Some(shape.to_vec()),
        stored: Some(len),
        bytes: len * 4,
        bits_per_element: Some(32.0),
        encoding: how.into(),
    };
    match &file {
        ModelFile::Dense(d) => inspection.tensors = d.tensors.iter().map(|(n, s, v)| dense(n, s, v.len(), "f32 dense")).collect(),
        ModelFile::Onnx(o) => {
            inspection.tensors = o.tensors.iter().map(|(n, s, v)| dense(n, s, v.len(), "f32 dense (imported)")).collect();
            inspection.onnx = Some(OnnxDetails { opset: o.opset, producer: o.producer.clone(), ops: o.op_counts.iter().map(|(op, n)| (op.clone(), *n)).collect(), notes: o.notes.clone() });
        }
        ModelFile::Sqz(s) => {
            let sections = sqz::summarize_file(path).map_err(|source| InspectError::Sqz { path: path.into(), source })?;
            for sec in &sections {
                let Some(name) = &sec.tensor else {
                    inspection.tensors.push(TensorRow { name: format!("[{}]", sec.kind.trim()), shape: None, stored: None, bytes: sec.total_bytes, bits_per_element: None, encoding: sec.encoding.clone() });
                    continue;
                };
                let t = s.tensors.iter().find(|t| &t.name == name);
                inspection.tensors.push(TensorRow {
                    name: name.clone(),
                    shape: t.map(|t| t.shape.clone()),
                    stored: t.map(|t| t.values.len()),
                    bytes: sec.total_bytes,
                    bits_per_element: Some(sec.total_bytes as f64 * 8.0 / t.map_or(1, |t| t.numel()) as f64),
                    encoding: sec.encoding.clone(),
                });
            }
            inspection.layers = layer_rows(s, &sections, bytes);
            if !s.quant.integer_nodes.is_empty() {
                inspection.integer = Some(IntegerDetails {
                    layers: s.quant.integer_nodes.iter().cloned().collect(),
                    activations: s.quant.activations.iter().map(|(v, qp)| (v.clone(), qp.scale, qp.zero_point)).collect(),
                });
            }
            inspection.kernel = Some(store::sqz_plan(s)?.kernel_description());
        }
    }
    Ok(inspection)
}

fn node_rows(graph: &Graph) -> Result<Vec<NodeRow>, SpecError> {
    let shapes = graph.validate()?;
    let specs = graph.parameters();
    Ok(graph
        .nodes
        .iter()
        .map(|node| NodeRow {
            name: node.name.clone(),
            op: node.op.kind().to_string(),
            reads: node.inputs.clone(),
            output_shape: shapes[&node.name].clone(),
            params: specs.iter().filter(|s| s.node == node.name).map(|s| s.numel()).sum(),
        })
        .collect())
}

/// Per-layer accounting: weights kept, bits per kept weight for the values (codes,
/// codebook, scales) and for the positions, the layer's bytes (weight and bias sections,
/// framing included), its share of the file and its ratio against fp32; then the total.
fn layer_rows(s: &sqz::SqzModel, sections: &[sqz::SectionSummary], file_bytes: u64) -> Vec<LayerRow> {
    let section = |name: &str| sections.iter().find(|x| x.tensor.as_deref() == Some(name));
    let tensor = |name: &str| s.tensors.iter().find(|t| t.name == name);
    let specs = s.graph.parameters();
    let mut rows = Vec::new();
    for node in s.graph.nodes.iter().filter(|n| n.op.has_params()) {
        // Every weight matrix of the node (one for Linear/Conv2d; weight_ih and
        // weight_hh for LSTM/GRU) and its biases.
        let mine: Vec<&crate::spec::ParamSpec> = specs.iter().filter(|p| p.node == node.name).collect();
        let weights: Vec<_> = mine.iter().filter(|p| p.kind == ParamKind::Weight).filter_map(|p| Some((tensor(&p.name)?, section(&p.name)?))).collect();
        if weights.is_empty() {
            continue;
        }
        let params: usize = mine.iter().map(|p| p.numel()).sum();
        let numel: usize = weights.iter().map(|(t, _)| t.numel()).sum();
        let stored: usize = weights.iter().map(|(t, _)| t.values.len()).sum();
        let kept = stored.max(1) as f64;
        let bytes: usize = mine.iter().filter_map(|p| section(&p.name)).map(|x| x.total_bytes).sum();
        rows.push(LayerRow {
            layer: node.name.clone(),
            params,
            kept_percent: 100.0 * stored as f64 / numel.max(1) as f64,
            weight_bits: Some(weights.iter().map(|(_, x)| x.value_bytes).sum::<usize>() as f64 * 8.0 / kept),
            index_bits: Some(weights.iter().map(|(_, x)| x.index_bytes).sum::<usize>() as f64 * 8.0 / kept),
            bytes: bytes as u64,
            share_percent: 100.0 * bytes as f64 / file_bytes as f64,
            ratio_vs_fp32: 4.0 * params as f64 / bytes as f64,
        });
    }
    let params = s.graph.num_params();
    let weights: usize = specs.iter().filter(|p| p.kind == ParamKind::Weight).map(|p| p.numel()).sum();
    let kept: usize = s.tensors.iter().filter(|t| specs.iter().any(|p| p.name == t.name && p.kind == ParamKind::Weight)).map(|t| t.values.len()).sum();
    rows.push(LayerRow {
        layer: "total".into(),
        params,
        kept_percent: 100.0 * kept as f64 / weights.max(1) as f64,
        weight_bits: None,
        index_bits: None,
        bytes: file_bytes,
        share_percent: 100.0,
        ratio_vs_fp32: 4.0 * params as f64 / file_bytes as f64,
    });
    rows
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.format, &self.onnx) {
            ("safetensors", _) => "safetensors (dense f32)".to_string(),
            ("onnx", Some(o)) => format!("ONNX (opset {}, from {}), imported", o.opset, if o.producer.is_empty() { "?" } else { &o.producer }),
            _ => ".sqz container".to_string(),
        };
        writeln!(f, "{}: {kind}, {} bytes, {} parameters ({:.2}× vs fp32 {} bytes)", self.path.display(), self.bytes, self.params, 4.0 * self.params as f64 / self.bytes as f64, 4 * self.params)?;
        writeln!(f, "\narchitecture: input {:?}, outputs {:?}", self.input_shape, self.outputs)?;
        writeln!(f, "  {:<10} {:<10} {:<14} {:<16} {:>9}", "node", "op", "reads", "output shape", "params")?;
        for n in &self.nodes {
            let params = if n.params > 0 { n.params.to_string() } else { String::new() };
            writeln!(f, "  {:<10} {:<10} {:<14} {:<16} {:>9}", n.name, n.op, n.reads.join(","), format!("{:?}", n.output_shape), params)?;
        }
        writeln!(f, "\ntensors:")?;
        writeln!(f, "  {:<14} {:<16} {:>9} {:>9} {:>8}  encoding", "name", "shape", "stored", "bytes", "bits/el")?;
        for t in &self.tensors {
            let shape = t.shape.as_ref().map_or(String::new(), |s| format!("{s:?}"));
            let stored = t.stored.map_or(String::new(), |s| s.to_string());
            let bits = t.bits_per_element.map_or(String::new(), |b| format!("{b:.2}"));
            writeln!(f, "  {:<14} {:<16} {:>9} {:>9} {:>8}  {}", t.name, shape, stored, t.bytes, bits, t.encoding)?;
        }
        if let Some(o) = &self.onnx {
            let ops: Vec<String> = o.ops.iter().map(|(op, n)| format!("{op} ×{n}")).collect();
            writeln!(f, "\nONNX ops in the file: {}", ops.join(", "))?;
            if !o.notes.is_empty() {
                writeln!(f, "import notes:")?;
                for note in &o.notes {
                    writeln!(f, "  - {note}")?;
                }
            }
            writeln!(f, "imported: the model runs every squeeze pass (prune, trim, quantize, share, distill) and exports back to ONNX")?;
        }
        if !self.layers.is_empty() {
            writeln!(f, "\nper layer (weight bits and index bits are per kept weight):")?;
            writeln!(f, "  {:<10} {:>9} {:>8} {:>12} {:>11} {:>9} {:>8} {:>8}", "layer", "params", "kept %", "weight bits", "index bits", "bytes", "share", "ratio")?;
            for r in &self.layers {
                let bits = |b: Option<f64>| b.map_or(String::new(), |b| format!("{b:.2}"));
                writeln!(
                    f,
                    "  {:<10} {:>9} {:>7.1}% {:>12} {:>11} {:>9} {:>7.1}% {:>7.1}×",
                    r.layer,
                    r.params,
                    r.kept_percent,
                    bits(r.weight_bits),
                    bits(r.index_bits),
                    r.bytes,
                    r.share_percent,
                    r.ratio_vs_fp32
                )?;
            }
        }
        if let Some(i) = &self.integer {
            writeln!(f, "\ninteger layers: {}", i.layers.join(", "))?;
            for (v, scale, zero) in &i.activations {
                writeln!(f, "  activation {v:<12} scale {scale:.6} zero point {zero}")?;
            }
        }
        if let Some(k) = &self.kernel {
            writeln!(f, "\nkernel: {k}")?;
        }
        Ok(())
    }
}

/// What the importer makes of a Hugging Face directory.
#[derive(Clone, Debug, Serialize)]
pub struct HfInspection {
    pub dir: PathBuf,
    /// Bytes of `model.safetensors`.
    pub weights_bytes: u64,
    pub params: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub pad_token: usize,
    pub outputs: Vec<String>,
    pub normalize: bool,
    pub not_imported: Vec<String>,
    pub input_shape: Vec<usize>,
    pub nodes: Vec<NodeRow>,
}

/// Imports the Hugging Face directory `dir` (in memory) and describes what squeeze made of it.
pub fn inspect_hf_dir(dir: &Path) -> Result<HfInspection, InspectError> {
    let imported = hf::import(dir, None)?;
    let graph = &imported.graph;
    let encoder = crate::text::TextEncoder::from_json(&imported.tokenizer_json, graph.input_shape[0], imported.pad_token as u32)?;
    Ok(HfInspection {
        dir: dir.into(),
        weights_bytes: std::fs::metadata(dir.join("model.safetensors")).map(|m| m.len()).unwrap_or(0),
        params: graph.num_params(),
        vocab_size: encoder.vocab_size(),
        seq_len: graph.input_shape[0],
        pad_token: imported.pad_token as usize,
        outputs: graph.outputs.clone(),
        normalize: imported.normalize,
        not_imported: imported.skipped.clone(),
        input_shape: graph.input_shape.clone(),
        nodes: node_rows(graph)?,
    })
}

impl fmt::Display for HfInspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: Hugging Face BERT directory, model.safetensors {} bytes, {} parameters imported (fp32 {} bytes)",
            self.dir.display(),
            self.weights_bytes,
            self.params,
            4 * self.params
        )?;
        writeln!(f, "tokenizer: {} tokens, inputs of {} token ids padded with id {}", self.vocab_size, self.seq_len, self.pad_token)?;
        let norm = if self.normalize { ", then L2 normalisation (sentence-transformers Normalize; not a graph node)" } else { "" };
        writeln!(f, "sentence embedding: {:?} pooling{norm}", self.outputs)?;
        writeln!(f, "not imported: {}", if self.not_imported.is_empty() { "nothing".to_string() } else { self.not_imported.join(", ") })?;
        writeln!(f, "\narchitecture: input {:?}, outputs {:?}", self.input_shape, self.outputs)?;
        writeln!(f, "  {:<44} {:<17} {:<14} {:>9}", "node", "op", "output shape", "params")?;
        for n in &self.nodes {
            let params = if n.params > 0 { n.params.to_string() } else { String::new() };
            writeln!(f, "  {:<44} {:<17} {:<14} {:>9}", n.name, n.op, format!("{:?}", n.output_shape), params)?;
        }
        Ok(())
    }
}
