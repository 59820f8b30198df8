//! ONNX → squeeze graph.
//!
//! The importer walks the ONNX nodes in order and keeps, for every ONNX value, either a
//! constant (initializers, Constant nodes, folded DequantizeLinear of weights) or a
//! runtime value of the squeeze graph with its per-sample shape (the batch dimension is
//! implicit in squeeze). Each op type has a handler in [`REGISTRY`]; a node whose type
//! has none is one [`OnnxError::Unsupported`] naming the op, the node and the list.
//!
//! Folding keeps imported models ordinary squeeze models, so every pass applies to them:
//! a per-channel affine step (BatchNormalization, Add/Sub/Mul/Div by a constant) after a
//! Linear/Conv2d that nothing else reads becomes part of that layer's weight and bias;
//! elsewhere it becomes a `Normalize` node (y = (x − mean) / std), which is also how input
//! scaling written into the ONNX graph survives.
//!
//! Only nodes that feed a float graph output are imported: classic-ML exporters add
//! post-processing (skl2onnx: ArgMax, Cast, ArrayFeatureExtractor, ZipMap for the label
//! output) that squeeze skips, saying so in [`Imported::notes`].

use std::collections::{BTreeSet, HashMap, HashSet};

use prost::Message;

use super::proto::{attr_type, data_type, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::spec::{output_shape, Cell, Graph, Node, Op, INPUT};

mod recurrent;
use recurrent::View;

/// The ai.onnx opsets the importer accepts.
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=21;

/// The largest tensor dimension the importer reads: a protobuf file holds at most 2 GiB,
/// so a larger dimension is a corrupt or hand-made shape (and a size-0 tensor would
/// otherwise let any other dimension through the element count).
pub const MAX_DIM: usize = (1 << 31) - 1;

/// The most values one sample of any runtime value may hold (1 GiB of f32): larger
/// shapes come from corrupt dimensions, and the runtime's buffers are sized from them.
pub const MAX_VALUES_PER_SAMPLE: usize = 1 << 28;

/// Whether one sample of a value of `shape` holds more than [`MAX_VALUES_PER_SAMPLE`].
fn too_many_values(shape: &[usize]) -> bool {
    crate::spec::checked_numel(shape).is_none_or(|n| n > MAX_VALUES_PER_SAMPLE)
}

/// The highest tensor rank the importer reads (ONNX models use up to 6 or so); it also
/// bounds the axes lists of Squeeze/Unsqueeze, which are searched per dimension.
pub const MAX_RANK: usize = 64;

/// The largest kernel, stride, dilation or padding of a 2-D window.
pub const MAX_WINDOW: usize = 1 << 16;

/// Why an ONNX file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not an ONNX model (protobuf decoding failed: {0}); expected a .onnx file as written by an ONNX exporter")]
    Decode(String),
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error("unsupported ONNX op '{op}' in node '{node}'; squeeze imports: {}", SUPPORTED_OPS.join(", "))]
    Unsupported { op: String, node: String },
    #[error("ONNX node '{node}' ({op}): {why}")]
    Node { node: String, op: String, why: String },
    #[error("ONNX graph input: {0}")]
    Input(String),
    #[error("ONNX opset {version} of domain '{domain}' is not supported: squeeze imports ai.onnx opsets 11 to 21")]
    Opset { domain: String, version: i64 },
    #[error("ONNX tensor '{name}': {why}")]
    Tensor { name: String, why: String },
    #[error("ONNX graph: {0}")]
    Graph(String),
}

/// An imported model: a squeeze graph and its dense f32 parameters.
#[derive(Clone, Debug)]
pub struct Imported {
    pub graph: Graph,
    /// `(name, shape, values)` of every parameter the graph declares.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// What the importer folded, skipped or assumed, one line each.
    pub notes: Vec<String>,
    /// The ai.onnx opset of the file.
    pub opset: i64,
    /// `producer_name producer_version` of the file.
    pub producer: String,
    /// ONNX op type → number of nodes, over the whole file (for `inspect`).
    pub op_counts: Vec<(String, usize)>,
}

type Handler = fn(&mut Builder, &NodeProto, &str) -> Result<(), OnnxError>;

/// The op registry: every ONNX op type the importer maps, with its handler.
const REGISTRY: &[(&str, Handler)] = &[
    ("Add", |b, n, name| b.binary(n, name, Arith::Add)),
    ("AveragePool", |b, n, name| b.pool(n, name, PoolKind::Average)),
    ("BatchNormalization", Builder::batch_norm),
    ("Cast", Builder::cast),
    ("Constant", Builder::constant),
    ("Concat", Builder::concat),
    ("Conv", Builder::conv),
    ("DequantizeLinear", Builder::dequantize),
    ("Div", |b, n, name| b.binary(n, name, Arith::Div)),
    ("Dropout", Builder::alias),
    ("Flatten", Builder::flatten),
    ("Gemm", Builder::gemm),
    ("Gather", Builder::gather),
    ("GlobalAveragePool", |b, n, name| b.pool(n, name, PoolKind::GlobalAverage)),
    ("GRU", |b, n, name| b.recurrent(n, name, Cell::Gru)),
    ("Identity", Builder::alias),
    ("LSTM", |b, n, name| b.recurrent(n, name, Cell::Lstm)),
    ("MatMul", Builder::matmul),
    ("MaxPool", |b, n, name| b.pool(n, name, PoolKind::Max)),
    ("Mul", |b, n, name| b.binary(n, name, Arith::Mul)),
    ("QuantizeLinear", Builder::quantize),
    ("Relu", |b, n, name| b.unary(n, name, Op::Relu)),
    ("Reshape", Builder::reshape),
    ("Shape", Builder::shape),
    ("Sigmoid", |b, n, name| b.unary(n, name, Op::Sigmoid)),
    ("Softmax", Builder::softmax),
    ("Squeeze", |b, n, name| b.unsqueeze(n, name, false)),
    ("Sub", |b, n, name| b.binary(n, name, Arith::Sub)),
    ("Tanh", |b, n, name| b.unary(n, name, Op::Tanh)),
    ("Transpose", Builder::transpose),
    ("Unsqueeze", |b, n, name| b.unsqueeze(n, name, true)),
];

/// The ONNX op types the importer maps (the registry's keys).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "Conv", "DequantizeLinear", "Div",
    "Dropout", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "GRU", "Identity", "LSTM", "MatMul", "MaxPool", "Mul",
    "QuantizeLinear", "Relu", "Reshape", "Shape", "Sigmoid", "Softmax", "Squeeze", "Sub", "Tanh", "Transpose",
    "Unsqueeze",
];

/// Whether `bytes` look like an ONNX model: a protobuf that decodes as a ModelProto with
/// a graph and an opset import. Cheap enough for sniffing a file's kind.
pub fn is_onnx(bytes: &[u8]) -> bool {
    // A ModelProto starts with a field tag of wire type 0 (ir_version, field 1) or 2.
    if bytes.is_empty() || !matches!(bytes[0], 0x08 | 0x12 | 0x1a | 0x22 | 0x3a | 0x42) {
        return false;
    }
    ModelProto::decode(bytes).is_ok_and(|m| m.graph.is_some() && !m.opset_import.is_empty())
}

/// Imports an ONNX model from its bytes.
pub fn import(bytes: &[u8]) -> Result<Imported, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| OnnxError::Graph("no ai.onnx opset import".into()))?;
    if !OPSETS.contains(&opset) {
        return Err(OnnxError::Opset { domain: "ai.onnx".into(), version: opset });
    }
    let producer = format!("{} {}", model.producer_name.as_deref().unwrap_or("?"), model.producer_version.as_deref().unwrap_or("")).trim().to_string();
    let mut op_counts: Vec<(String, usize)> = Vec::new();
    for n in &graph.node {
        let op = n.op_type.clone().unwrap_or_default();
        match op_counts.iter_mut().find(|(o, _)| *o == op) {
            Some(c) => c.1 += 1,
            None => op_counts.push((op, 1)),
        }
    }
    let mut b = Builder::new(graph, bytes.len())?;
    b.run(graph)?;
    let mut imported = b.finish()?;
    imported.opset = opset;
    imported.producer = producer;
    imported.op_counts = op_counts;
    Ok(imported)
}

/// A constant tensor, values widened to f64 (exact for f32 and for the integers that
/// shapes and quantized weights hold).
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Vec<f64>,
    data_type: i32,
}

impl Const {
    fn numel(&self) -> usize {
        self.data.len()
    }
}

#[derive(Clone, Debug)]
enum Val {
    Const(Const),
    /// A squeeze runtime value and its per-sample shape.
    Act { value: String, shape: Vec<usize> },
}

/// Dense parameters of an imported Linear/Conv2d node.
struct LayerParams {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, PartialEq)]
enum PoolKind {
    Max,
    Average,
    GlobalAverage,
}

struct Builder {
    input_shape: Vec<usize>,
    input_name: String,
    nodes: Vec<Node>,
    params: HashMap<String, LayerParams>,
    shapes: HashMap<String, Vec<usize>>,
    vals: HashMap<String, Val>,
    /// ONNX value → how many needed nodes (and graph outputs) read it.
    uses: HashMap<String, usize>,
    /// squeeze value → readers not yet imported (a layer may absorb a following affine
    /// step only when nothing else reads its output).
    pending: HashMap<String, usize>,
    names: HashSet<String>,
    notes: Vec<String>,
    needed: Vec<bool>,
    outputs: Vec<String>,
    /// ONNX values that hold a squeeze value in another layout than batch-first
    /// (time-major sequences and LSTM/GRU outputs, before they are brought back).
    views: HashMap<String, View>,
    /// Parameters of imported LSTM/GRU nodes by parameter name (`node.weight_ih`, …).
    recurrent: HashMap<String, Vec<f32>>,
    /// The most values a constant folded from others (Concat, Gather) may hold. Every
    /// value a real file folds is stored in it, so the file's length bounds them; a
    /// chain of Concats of a value with itself would otherwise double it per node.
    max_folded: usize,
}

fn node_err(n: &NodeProto, name: &str, why: impl Into<String>) -> OnnxError {
    OnnxError::Node { node: name.to_string(), op: n.op_type.clone().unwrap_or_default(), why: why.into() }
}

fn attr<'a>(n: &'a NodeProto, key: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(key))
}

fn attr_int(n: &NodeProto, key: &str, default: i64) -> i64 {
    attr(n, key).and_then(|a| a.i).unwrap_or(default)
}

fn attr_float(n: &NodeProto, key: &str, default: f32) -> f32 {
    attr(n, key).and_then(|a| a.f).unwrap_or(default)
}

fn attr_ints(n: &NodeProto, key: &str) -> Option<Vec<i64>> {
    attr(n, key).map(|a| a.ints.clone())
}

fn attr_strings(n: &NodeProto, key: &str) -> Option<Vec<String>> {
    attr(n, key).map(|a| a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

fn attr_string(n: &NodeProto, key: &str) -> Option<String> {
    attr(n, key).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
}

/// Decodes a tensor's values (raw little-endian bytes or the typed repeated field).
fn decode_tensor(t: &TensorProto) -> Result<Const, OnnxError> {
    let name = t.name.clone().unwrap_or_default();
    let bad = |why: String| OnnxError::Tensor { name: name.clone(), why };
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(bad("its data is stored in an external file; squeeze reads self-contained .onnx files only (re-save with onnx.save_model(..., save_as_external_data=False))".into()));
    }
    if t.dims.len() > MAX_RANK {
        return Err(bad(format!("rank {} is higher than {MAX_RANK} (the file is corrupt)", t.dims.len())));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(bad(format!("negative dimension {d}")));
        }
        if d as u64 > MAX_DIM as u64 {
            return Err(bad(format!("dimension {d} is larger than any tensor a .onnx file can hold (the file is corrupt)")));
        }
        dims.push(d as usize);
    }
    let numel = crate::spec::checked_numel(&dims).ok_or_else(|| bad("dimensions overflow".into()))?;
    let dt = t.data_type.unwrap_or(0);
    let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
    let width = match dt {
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::DOUBLE | data_type::INT64 => 8,
        data_type::INT8 | data_type::UINT8 => 1,
        other => return Err(bad(format!("element type {other} is not supported (float, double, int8, uint8, int32, int64 are)"))),
    };
    let data: Vec<f64> = match raw {
        Some(r) => {
            let needed = numel.checked_mul(width).ok_or_else(|| bad(format!("shape {dims:?} needs more bytes than memory holds")))?;
            if r.len() != needed {
                return Err(bad(format!("raw data has {} bytes, shape {dims:?} needs {needed}", r.len())));
            }
            match dt {
                data_type::FLOAT => r.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                data_type::INT32 => r.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                data_type::DOUBLE => r.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                data_type::INT64 => r.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                data_type::INT8 => r.iter().map(|&b| b as i8 as f64).collect(),
                _ => r.iter().map(|&b| b as f64).collect(),
            }
        }
        None => match dt {
            data_type::FLOAT => t.float_data.iter().map(|&v| v as f64).collect(),
            data_type::DOUBLE => t.double_data.clone(),
            data_type::INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
            _ => t.int32_data.iter().map(|&v| v as f64).collect(),
        },
    };
    if data.len() != numel {
        return Err(bad(format!("holds {} values, shape {dims:?} needs {numel}", data.len())));
    }
    Ok(Const { dims, data, data_type: dt })
}

/// Keeps letters, digits, `_`, `.` and `-` of an ONNX name (PyTorch writes `/fc1/Gemm`).
fn sanitize(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' }).collect();
    s.trim_matches('_').to_string()
}

/// A per-channel constant for a value of per-sample `shape`: one value, or one per
/// channel (`[C, H, W]` values) or per feature (`[F]` values), after numpy broadcasting.
fn per_channel(c: &Const, shape: &[usize]) -> Option<Vec<f64>> {
    if c.numel() == 1 {
        return Some(vec![c.data[0]]);
    }
    let mut dims: Vec<usize> = c.dims.clone();
    // Broadcasting aligns trailing dimensions; a full-rank constant carries the batch dim.
    if dims.len() == shape.len() + 1 {
        if dims[0] != 1 {
            return None;
        }
        dims.remove(0);
    }
    while dims.len() < shape.len() {
        dims.insert(0, 1);
    }
    if dims.len() != shape.len() {
        return None;
    }
    let (&channels, &first) = (shape.first()?, dims.first()?);
    if first == channels && dims[1..].iter().all(|&d| d == 1) {
        return Some(c.data.clone());
    }
    None
}

impl Builder {
    fn new(graph: &GraphProto, file_len: usize) -> Result<Builder, OnnxError> {
        let mut vals = HashMap::new();
        for t in &graph.initializer {
            let name = t.name.clone().unwrap_or_default();
            vals.insert(name, Val::Const(decode_tensor(t)?));
        }
        // Float outputs are the model's results; skl2onnx's ZipMap (a sequence of maps)
        // is read through to its float input.
        let producer: HashMap<&str, usize> =
            graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
        let mut notes = Vec::new();
        let mut outputs = Vec::new();
        for o in &graph.output {
            let name = o.name.clone().unwrap_or_default();
            let elem = o.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.elem_type);
            let zipmap = producer.get(name.as_str()).map(|&i| &graph.node[i]).filter(|n| n.op_type.as_deref() == Some("ZipMap"));
            if let Some(z) = zipmap {
                let input = z.input.first().cloned().unwrap_or_default();
                notes.push(format!("output '{name}' is a ZipMap (a map per sample): its float input '{input}' is the model's output"));
                outputs.push(input);
            } else if elem == Some(data_type::FLOAT) || elem.is_none() {
                outputs.push(name);
            } else {
                notes.push(format!("output '{name}' (element type {}) is post-processing, not scores: skipped", elem.unwrap_or(0)));
            }
        }
        if outputs.is_empty() {
            return Err(OnnxError::Graph("no float output to import (squeeze reads score/logit outputs)".into()));
        }
        // The nodes that feed the chosen outputs.
        let mut needed = vec![false; graph.node.len()];
        let mut stack: Vec<String> = outputs.clone();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(v) = stack.pop() {
            if !seen.insert(v.clone()) {
                continue;
            }
            if let Some(&i) = producer.get(v.as_str())
                && !needed[i]
            {
                needed[i] = true;
                stack.extend(graph.node[i].input.iter().filter(|s| !s.is_empty()).cloned());
            }
        }
        let skipped: BTreeSet<&str> =
            graph.node.iter().zip(&needed).filter(|(_, k)| !**k).map(|(n, _)| n.op_type.as_deref().unwrap_or("?")).collect();
        if !skipped.is_empty() {
            notes.push(format!("skipped nodes that feed no float output: {}", skipped.into_iter().collect::<Vec<_>>().join(", ")));
        }
        // The one runtime input: a graph input that is not an initializer and is read.
        let read: HashSet<&str> = seen.iter().map(String::as_str).collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !vals.contains_key(i.name.as_deref().unwrap_or("")) && read.contains(i.name.as_deref().unwrap_or("")))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => return Err(OnnxError::Input("the outputs read no graph input".into())),
            more => {
                return Err(OnnxError::Input(format!(
                    "{} inputs ({}); squeeze models take one input",
                    more.len(),
                    more.iter().map(|i| i.name.clone().unwrap_or_default()).collect::<Vec<_>>().join(", ")
                )));
            }
        };
        let input_name = input.name.clone().unwrap_or_default();
        let tensor_type = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let elem = tensor_type.and_then(|t| t.elem_type);
        if elem != Some(data_type::FLOAT) {
            return Err(OnnxError::Input(format!("'{input_name}' has element type {}, squeeze models take float32 input", elem.unwrap_or(0))));
        }
        let dims = tensor_type.and_then(|t| t.shape.as_ref()).map(|s| s.dim.clone()).unwrap_or_default();
        let show: Vec<String> = dims.iter().map(|d| d.dim_value.map(|v| v.to_string()).or(d.dim_param.clone()).unwrap_or_else(|| "?".into())).collect();
        if dims.len() < 2 {
            return Err(OnnxError::Input(format!("'{input_name}' has shape [{}]; squeeze needs [batch, features…] with the per-sample dimensions known", show.join(", "))));
        }
        let mut input_shape = Vec::new();
        for (i, d) in dims.iter().enumerate().skip(1) {
            match d.dim_value {
                Some(v) if v > 0 => input_shape.push(v as usize),
                _ => {
                    return Err(OnnxError::Input(format!(
                        "'{input_name}' has shape [{}]: dimension {i} is not a fixed size, so the per-sample shape cannot be resolved; export the model with fixed input dimensions (only the batch may vary)",
                        show.join(", ")
                    )));
                }
            }
        }
        if too_many_values(&input_shape) {
            return Err(OnnxError::Input(format!(
                "'{input_name}' has shape [{}]: more than {MAX_VALUES_PER_SAMPLE} values per sample (the file is corrupt, or the model too large for squeeze)",
                show.join(", ")
            )));
        }
        if !matches!(input_shape.len(), 1..=3) {
            return Err(OnnxError::Input(format!("'{input_name}' has shape [{}]; squeeze takes [N, features], [N, steps, features] or [N, C, H, W]", show.join(", "))));
        }
        let mut uses: HashMap<String, usize> = HashMap::new();
        for (n, _) in graph.node.iter().zip(&needed).filter(|(_, k)| **k) {
            for i in n.input.iter().filter(|s| !s.is_empty()) {
                *uses.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &outputs {
            *uses.entry(o.clone()).or_default() += 1;
        }
        vals.insert(input_name.clone(), Val::Act { value: INPUT.into(), shape: input_shape.clone() });
        let mut pending = HashMap::new();
        pending.insert(INPUT.to_string(), uses.get(&input_name).copied().unwrap_or(0));
        let mut shapes = HashMap::new();
        shapes.insert(INPUT.to_string(), input_shape.clone());
        Ok(Builder {
            input_shape,
            input_name,
            nodes: Vec::new(),
            params: HashMap::new(),
            shapes,
            vals,
            uses,
            pending,
            names: [INPUT.to_string()].into(),
            notes,
            needed,
            outputs,
            views: HashMap::new(),
            recurrent: HashMap::new(),
            max_folded: file_len.max(1 << 16),
        })
    }

    fn run(&mut self, graph: &GraphProto) -> Result<(), OnnxError> {
        for (i, n) in graph.node.iter().enumerate() {
            if !self.needed[i] {
                continue;
            }
            let op = n.op_type.clone().unwrap_or_default();
            let name = n.name.clone().filter(|s| !s.is_empty()).or_else(|| n.output.iter().find(|s| !s.is_empty()).cloned()).unwrap_or_else(|| format!("{op}_{i}"));
            if !matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
                return Err(OnnxError::Unsupported { op: format!("{}:{op}", n.domain.clone().unwrap_or_default()), node: name });
            }
            let Some((_, handler)) = REGISTRY.iter().find(|(k, _)| *k == op) else {
                return Err(OnnxError::Unsupported { op, node: name });
            };
            // This node consumes one read of each runtime input.
            for input in n.input.iter().filter(|s| !s.is_empty()) {
                let read = match self.vals.get(input) {
                    Some(Val::Act { value, .. }) => Some(value),
                    _ => self.views.get(input).map(|v| &v.value),
                };
                if let Some(value) = read
                    && let Some(p) = self.pending.get_mut(value)
                {
                    *p = p.saturating_sub(1);
                }
            }
            handler(self, n, &name)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Imported, OnnxError> {
        let mut outputs = Vec::new();
        for o in &self.outputs {
            match self.vals.get(o) {
                Some(Val::Act { value, .. }) if value != INPUT => outputs.push(value.clone()),
                Some(Val::Act { .. }) => return Err(OnnxError::Graph(format!("output '{o}' is the input itself"))),
                Some(Val::Const(_)) => return Err(OnnxError::Graph(format!("output '{o}' is a constant, not computed from the input"))),
                None => return Err(OnnxError::Graph(format!("output '{o}' is not produced by any node"))),
            }
        }
        // The file's own input and output names, for an export that replaces the file.
        let mut io_names = std::collections::BTreeMap::new();
        if !self.input_name.is_empty() && self.input_name != INPUT {
            io_names.insert(INPUT.to_string(), self.input_name.clone());
        }
        for (onnx, value) in self.outputs.iter().zip(&outputs) {
            if !onnx.is_empty() && onnx != value {
                io_names.entry(value.clone()).or_insert_with(|| onnx.clone());
            }
        }
        let graph = Graph { input_shape: self.input_shape, nodes: self.nodes, outputs, io_names };
        graph.validate().map_err(|e| OnnxError::Graph(e.to_string()))?;
        let mut tensors = Vec::new();
        for spec in graph.parameters() {
            if let Some(data) = self.recurrent.get(&spec.name) {
                tensors.push((spec.name.clone(), spec.shape.clone(), data.clone()));
                continue;
            }
            let p = &self.params[&spec.node];
            let data = match spec.kind {
                crate::spec::ParamKind::Weight => p.weight.clone(),
                crate::spec::ParamKind::Bias => p.bias.clone().unwrap_or_else(|| vec![0.0; spec.numel()]),
            };
            tensors.push((spec.name.clone(), spec.shape.clone(), data));
        }
        Ok(Imported { graph, tensors, notes: self.notes, opset: 0, producer: String::new(), op_counts: Vec::new() })
    }

    fn get(&self, n: &NodeProto, name: &str, i: usize) -> Result<&Val, OnnxError> {
        let v = n.input.get(i).filter(|s| !s.is_empty()).ok_or_else(|| node_err(n, name, format!("input {i} is missing")))?;
        if let Some(view) = self.views.get(v) {
            return Err(node_err(n, name, format!("reads '{v}', {}", view.describe())));
        }
        self.vals.get(v).ok_or_else(|| node_err(n, name, format!("reads '{v}', which is not defined before it")))
    }

    fn act(&self, n: &NodeProto, name: &str, i: usize) -> Result<(String, Vec<usize>), OnnxError> {
        match self.get(n, name, i)? {
            Val::Act { value, shape } => Ok((value.clone(), shape.clone())),
            Val::Const(_) => Err(node_err(n, name, format!("input {i} is a constant; squeeze expects it to be computed from the model input"))),
        }
    }

    fn constant_input(&self, n: &NodeProto, name: &str, i: usize) -> Result<Option<Const>, OnnxError> {
        if n.input.get(i).is_none_or(|s| s.is_empty()) {
            return Ok(None);
        }
        match self.get(n, name, i)? {
            Val::Const(c) => Ok(Some(c.clone())),
            Val::Act { .. } => Err(node_err(n, name, format!("input {i} must be a constant (an initializer or a Constant node), it is computed at run time"))),
        }
    }

    fn out_name(n: &NodeProto, name: &str) -> Result<String, OnnxError> {
        n.output.first().filter(|s| !s.is_empty()).cloned().ok_or_else(|| node_err(n, name, "has no output"))
    }

    /// Binds ONNX output 0 of `n` to an existing squeeze value.
    fn bind(&mut self, n: &NodeProto, name: &str, value: String, shape: Vec<usize>) -> Result<(), OnnxError> {
        let out = Self::out_name(n, name)?;
        let readers = self.uses.get(&out).copied().unwrap_or(0);
        *self.pending.entry(value.clone()).or_default() += readers;
        self.vals.insert(out, Val::Act { value, shape });
        Ok(())
    }

    /// Adds a squeeze node reading `inputs`, named after the ONNX node, bound to output 0.
    fn add(&mut self, n: &NodeProto, name: &str, inputs: Vec<String>, op: Op) -> Result<String, OnnxError> {
        let (unique, shape) = self.add_node(n, name, inputs, op)?;
        self.bind(n, name, unique.clone(), shape)?;
        Ok(unique)
    }

    /// Adds a squeeze node reading `inputs`, named after the ONNX node; binds nothing.
    fn add_node(&mut self, n: &NodeProto, name: &str, inputs: Vec<String>, op: Op) -> Result<(String, Vec<usize>), OnnxError> {
        let mut base = sanitize(name);
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
            base = format!("{}{}", n.op_type.as_deref().unwrap_or("node").to_ascii_lowercase(), if base.is_empty() { String::new() } else { format!("_{base}") });
        }
        let mut unique = base.clone();
        let mut k = 2;
        while self.names.contains(&unique) {
            unique = format!("{base}_{k}");
            k += 1;
        }
        let ins: Vec<Vec<usize>> = inputs.iter().map(|v| self.shapes[v].clone()).collect();
        let shape = output_shape(&unique, &op, &ins).map_err(|e| node_err(n, name, e.to_string()))?;
        if too_many_values(&shape) {
            return Err(node_err(n, name, format!("output shape {shape:?} holds more than {MAX_VALUES_PER_SAMPLE} values per sample")));
        }
        self.names.insert(unique.clone());
        self.shapes.insert(unique.clone(), shape.clone());
        self.pending.insert(unique.clone(), 0);
        self.nodes.push(Node { name: unique.clone(), inputs, op });
        Ok((unique, shape))
    }

    fn producer(&self, value: &str) -> Option<usize> {
        self.nodes.iter().position(|x| x.name == value)
    }

    /// `y = scale · x + shift` per channel (each of length 1 or C), folded into the layer
    /// before it when nothing else reads that layer's output, else a Normalize node.
    fn affine(&mut self, n: &NodeProto, name: &str, x: (String, Vec<usize>), scale: Vec<f64>, shift: Vec<f64>) -> Result<(), OnnxError> {
        let (value, shape) = x;
        let channels = shape[0];
        let at = |v: &Vec<f64>, c: usize| if v.len() == 1 { v[0] } else { v[c] };
        let free = self.pending.get(&value).copied().unwrap_or(0) == 0 && !self.outputs.iter().any(|o| matches!(self.vals.get(o), Some(Val::Act { value: v, .. }) if *v == value));
        if let Some(i) = self.producer(&value).filter(|_| free) {
            let node = &mut self.nodes[i];
            let out_channels = match &mut node.op {
                Op::Linear { out_features, bias, .. } => {
                    *bias = true;
                    *out_features
                }
                Op::Conv2d { out_channels, bias, .. } => {
                    *bias = true;
                    *out_channels
                }
                _ => 0,
            };
            if out_channels > 0 {
                let Some(p) = self.params.get_mut(&node.name) else {
                    return Err(node_err(n, name, format!("layer '{}' has no parameters to fold into", node.name)));
                };
                let per = p.weight.len() / out_channels;
                let bias = p.bias.get_or_insert_with(|| vec![0.0; out_channels]);
                for o in 0..out_channels {
                    let (a, b) = (at(&scale, o), at(&shift, o));
                    p.weight[o * per..(o + 1) * per].iter_mut().for_each(|w| *w = (*w as f64 * a) as f32);
                    bias[o] = (bias[o] as f64 * a + b) as f32;
                }
                let op = n.op_type.clone().unwrap_or_default();
                self.notes.push(format!("{op} '{name}' folded into '{}'", node.name));
                return self.bind(n, name, value, shape);
            }
        }
        let c = if scale.len() > 1 || shift.len() > 1 { channels } else { 1 };
        // Onto a Normalize before it (e.g. Sub mean, then Div std):
        // a·(x − m)/s + b = (x − (m − b·s/a)) / (s/a).
        if let Some(i) = self.producer(&value).filter(|_| free)
            && let Op::Normalize { mean, std } = &self.nodes[i].op
            && scale.iter().all(|&a| a > 0.0 && a.is_finite())
        {
            let c = c.max(mean.len());
            let at32 = |v: &Vec<f32>, c: usize| if v.len() == 1 { v[0] as f64 } else { v[c] as f64 };
            let (mut m2, mut s2) = (Vec::with_capacity(c), Vec::with_capacity(c));
            for ch in 0..c {
                let (a, b, m, s) = (at(&scale, ch), at(&shift, ch), at32(mean, ch), at32(std, ch));
                m2.push((m - b * s / a) as f32);
                s2.push((s / a) as f32);
            }
            self.nodes[i].op = Op::Normalize { mean: m2, std: s2 };
            let op = n.op_type.clone().unwrap_or_default();
            self.notes.push(format!("{op} '{name}' folded into the Normalize '{}'", self.nodes[i].name));
            return self.bind(n, name, value, shape);
        }
        // As a Normalize node: y = (x − mean) / std with std = 1/scale, mean = −shift/scale.
        let mut mean = Vec::with_capacity(c);
        let mut std = Vec::with_capacity(c);
        for ch in 0..c {
            let (a, b) = (at(&scale, ch), at(&shift, ch));
            if !(a > 0.0 && a.is_finite() && b.is_finite()) {
                return Err(node_err(n, name, format!("scale {a} on channel {ch} cannot be imported here: only positive scales become a Normalize step, and there is no Linear/Conv before it to fold into")));
            }
            mean.push((-b / a) as f32);
            std.push((1.0 / a) as f32);
        }
        if shape.len() != 3 && c > 1 {
            // Normalize is per channel of [C, H, W] or one value for all; per-feature
            // constants on a 1-D value have no squeeze op.
            return Err(node_err(n, name, format!("a per-feature constant on a {shape:?} value is only supported right after a Linear layer")));
        }
        self.add(n, name, vec![value], Op::Normalize { mean, std })?;
        Ok(())
    }

    fn binary(&mut self, n: &NodeProto, name: &str, kind: Arith) -> Result<(), OnnxError> {
        let (a, b) = (self.get(n, name, 0)?.clone(), self.get(n, name, 1)?.clone());
        match (a, b) {
            (Val::Act { value: va, shape: sa }, Val::Act { value: vb, shape: sb }) if kind == Arith::Add => {
                if sa != sb {
                    return Err(node_err(n, name, format!("adds values of shapes {sa:?} and {sb:?}; squeeze adds equal shapes only")));
                }
                self.add(n, name, vec![va, vb], Op::Add)?;
                Ok(())
            }
            (Val::Act { .. }, Val::Act { .. }) => {
                Err(node_err(n, name, "both inputs are computed at run time; squeeze supports this op with one constant input (or Add of two values)"))
            }
            (Val::Const(ca), Val::Const(cb)) => {
                let c = broadcast_const(&ca, &cb, kind).ok_or_else(|| node_err(n, name, "constant inputs with shapes that do not broadcast simply"))?;
                let out = Self::out_name(n, name)?;
                self.vals.insert(out, Val::Const(c));
                Ok(())
            }
            (Val::Act { value, shape }, Val::Const(c)) => {
                let v = per_channel(&c, &shape).ok_or_else(|| node_err(n, name, format!("constant of shape {:?} does not broadcast per channel over {shape:?}", c.dims)))?;
                let ones = vec![1.0];
                let zeros = vec![0.0];
                let (scale, shift) = match kind {
                    Arith::Add => (ones, v),
                    Arith::Sub => (ones, v.iter().map(|x| -x).collect()),
                    Arith::Mul => (v, zeros),
                    Arith::Div => (v.iter().map(|x| 1.0 / x).collect(), zeros),
                };
                self.affine(n, name, (value, shape), scale, shift)
            }
            (Val::Const(c), Val::Act { value, shape }) => {
                let v = per_channel(&c, &shape).ok_or_else(|| node_err(n, name, format!("constant of shape {:?} does not broadcast per channel over {shape:?}", c.dims)))?;
                let (scale, shift) = match kind {
                    Arith::Add => (vec![1.0], v),
                    Arith::Sub => (vec![-1.0], v),
                    Arith::Mul => (v, vec![0.0]),
                    Arith::Div => return Err(node_err(n, name, "dividing a constant by a computed value is not supported")),
                };
                self.affine(n, name, (value, shape), scale, shift)
            }
        }
    }

    fn unary(&mut self, n: &NodeProto, name: &str, op: Op) -> Result<(), OnnxError> {
        let (x, _) = self.act(n, name, 0)?;
        self.add(n, name, vec![x], op)?;
        Ok(())
    }

    fn alias(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        for extra in n.output.iter().skip(1).filter(|s| !s.is_empty()) {
            if self.uses.get(extra).copied().unwrap_or(0) > 0 {
                return Err(node_err(n, name, format!("its extra output '{extra}' (e.g. a dropout mask) is used; squeeze runs inference only")));
            }
        }
        match self.get(n, name, 0)?.clone() {
            Val::Act { value, shape } => self.bind(n, name, value, shape),
            Val::Const(c) => {
                self.vals.insert(Self::out_name(n, name)?, Val::Const(c));
                Ok(())
            }
        }
    }

    fn cast(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let to = attr_int(n, "to", 0) as i32;
        match self.get(n, name, 0)?.clone() {
            Val::Const(mut c) => {
                c.data_type = to;
                self.vals.insert(Self::out_name(n, name)?, Val::Const(c));
                Ok(())
            }
            Val::Act { value, shape } if to == data_type::FLOAT => self.bind(n, name, value, shape),
            Val::Act { .. } => Err(node_err(n, name, format!("casts a computed value to element type {to}; squeeze computes in float32"))),
        }
    }

    fn constant(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let a = n.attribute.first().ok_or_else(|| node_err(n, name, "has no value attribute"))?;
        let key = a.name.as_deref().unwrap_or("");
        let c = match (key, a.r#type) {
            ("value", _) => decode_tensor(a.t.as_ref().ok_or_else(|| node_err(n, name, "value attribute holds no tensor"))?)?,
            ("value_float", _) | (_, Some(attr_type::FLOAT)) => Const { dims: vec![], data: vec![a.f.unwrap_or(0.0) as f64], data_type: data_type::FLOAT },
            ("value_floats", _) | (_, Some(attr_type::FLOATS)) => {
                Const { dims: vec![a.floats.len()], data: a.floats.iter().map(|&v| v as f64).collect(), data_type: data_type::FLOAT }
            }
            ("value_int", _) | (_, Some(attr_type::INT)) => Const { dims: vec![], data: vec![a.i.unwrap_or(0) as f64], data_type: data_type::INT64 },
            ("value_ints", _) | (_, Some(attr_type::INTS)) => {
                Const { dims: vec![a.ints.len()], data: a.ints.iter().map(|&v| v as f64).collect(), data_type: data_type::INT64 }
            }
            _ => return Err(node_err(n, name, format!("Constant with attribute '{key}' is not supported (value, value_float(s), value_int(s) are)"))),
        };
        self.vals.insert(Self::out_name(n, name)?, Val::Const(c));
        Ok(())
    }

    fn dequantize(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        match self.get(n, name, 0)?.clone() {
            // Activation fake-quantization (QDQ): squeeze computes in float here.
            Val::Act { value, shape } => {
                self.note_once("QuantizeLinear/DequantizeLinear on activations read as float (the QDQ pairs are dropped; quantize again with squeeze)");
                self.bind(n, name, value, shape)
            }
            Val::Const(x) => {
                let scale = self.constant_input(n, name, 1)?.ok_or_else(|| node_err(n, name, "has no scale"))?;
                let zero = self.constant_input(n, name, 2)?;
                if let Some(z) = &zero
                    && z.numel() != 1
                    && z.numel() != scale.numel()
                {
                    return Err(node_err(n, name, format!("zero point has {} values, the scale {}", z.numel(), scale.numel())));
                }
                let axis = attr_int(n, "axis", 1);
                let per = if scale.numel() == 1 {
                    None
                } else {
                    let axis = if axis < 0 { axis + x.dims.len() as i64 } else { axis } as usize;
                    if axis >= x.dims.len() || x.dims[axis] != scale.numel() {
                        return Err(node_err(n, name, format!("scale has {} values, axis {axis} of {:?} does not match", scale.numel(), x.dims)));
                    }
                    Some((axis, x.dims[axis + 1..].iter().product::<usize>()))
                };
                let data = x
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| {
                        let c = per.map_or(0, |(axis, inner)| (i / inner) % x.dims[axis]);
                        let z = zero.as_ref().map_or(0.0, |z| if z.numel() == 1 { z.data[0] } else { z.data[c] });
                        // The f32 product, as ONNX Runtime computes it.
                        ((q - z) as f32 * scale.data[c] as f32) as f64
                    })
                    .collect();
                self.vals.insert(Self::out_name(n, name)?, Val::Const(Const { dims: x.dims.clone(), data, data_type: data_type::FLOAT }));
                Ok(())
            }
        }
    }

    fn quantize(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        match self.get(n, name, 0)?.clone() {
            Val::Act { value, shape } => {
                self.note_once("QuantizeLinear/DequantizeLinear on activations read as float (the QDQ pairs are dropped; quantize again with squeeze)");
                self.bind(n, name, value, shape)
            }
            Val::Const(_) => Err(node_err(n, name, "quantizing a constant is not supported (store the quantized tensor instead)")),
        }
    }

    fn note_once(&mut self, note: &str) {
        if !self.notes.iter().any(|x| x == note) {
            self.notes.push(note.to_string());
        }
    }

    fn layer(&mut self, n: &NodeProto, name: &str, x: String, op: Op, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Result<(), OnnxError> {
        let node = self.add(n, name, vec![x], op)?;
        self.params.insert(node, LayerParams { weight, bias });
        Ok(())
    }

    fn gemm(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let (x, shape) = self.act(n, name, 0)?;
        if attr_int(n, "transA", 0) != 0 {
            return Err(node_err(n, name, "transA = 1 (a transposed batch) is not supported"));
        }
        let [k] = shape[..] else {
            return Err(node_err(n, name, format!("input has per-sample shape {shape:?}; Gemm needs [batch, features] (add a Flatten)")));
        };
        let b = self.constant_input(n, name, 1)?.ok_or_else(|| node_err(n, name, "has no B"))?;
        let (alpha, beta) = (attr_float(n, "alpha", 1.0) as f64, attr_float(n, "beta", 1.0) as f64);
        let trans_b = attr_int(n, "transB", 0) != 0;
        let (rows, cols) = match b.dims[..] {
            [r, c] => (r, c),
            _ => return Err(node_err(n, name, format!("B has shape {:?}, expected 2-D", b.dims))),
        };
        let (inf, outf) = if trans_b { (cols, rows) } else { (rows, cols) };
        if inf != k {
            return Err(node_err(n, name, format!("B has shape {:?} but the input has {k} features", b.dims)));
        }
        let weight: Vec<f32> = (0..outf * inf)
            .map(|i| {
                let (o, j) = (i / inf, i % inf);
                let v = if trans_b { b.data[o * cols + j] } else { b.data[j * cols + o] };
                (alpha * v) as f32
            })
            .collect();
        let bias = match self.constant_input(n, name, 2)? {
            None => None,
            Some(c) if c.numel() == 1 || c.numel() == outf => {
                Some((0..outf).map(|o| (beta * c.data[if c.numel() == 1 { 0 } else { o }]) as f32).collect())
            }
            Some(c) => return Err(node_err(n, name, format!("C has shape {:?}; squeeze takes one bias per output ({outf})", c.dims))),
        };
        let op = Op::Linear { in_features: inf, out_features: outf, bias: bias.is_some() };
        self.layer(n, name, x, op, weight, bias)
    }

    fn matmul(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let (x, shape) = self.act(n, name, 0)?;
        let [k] = shape[..] else {
            return Err(node_err(n, name, format!("input has per-sample shape {shape:?}; MatMul is imported as a Linear layer on [batch, features]")));
        };
        let b = self.constant_input(n, name, 1)?.ok_or_else(|| node_err(n, name, "has no B"))?;
        let [rows, cols] = b.dims[..] else {
            return Err(node_err(n, name, format!("B has shape {:?}, expected 2-D", b.dims)));
        };
        if rows != k {
            return Err(node_err(n, name, format!("B has shape {:?} but the input has {k} features", b.dims)));
        }
        let weight: Vec<f32> = (0..cols * rows).map(|i| b.data[(i % rows) * cols + i / rows] as f32).collect();
        let op = Op::Linear { in_features: rows, out_features: cols, bias: false };
        self.layer(n, name, x, op, weight, None)
    }

    /// Square kernel, equal strides, symmetric equal padding, equal dilations: the 2-D
    /// window squeeze's Conv2d/pools take. Returns (kernel, stride, padding, dilation).
    fn window(&self, n: &NodeProto, name: &str, shape: &[usize], kernel: Option<(usize, usize)>) -> Result<(usize, usize, usize, usize), OnnxError> {
        if shape.len() != 3 {
            return Err(node_err(n, name, format!("input has per-sample shape {shape:?}; squeeze's 2-D windows take [C, H, W]")));
        }
        let ks = attr_ints(n, "kernel_shape");
        let (kh, kw) = match (ks.as_deref(), kernel) {
            (Some(&[h, w]), _) => (h, w),
            (None, Some((h, w))) => (h as i64, w as i64),
            _ => return Err(node_err(n, name, "needs a 2-D kernel_shape")),
        };
        let window_range = 1..=MAX_WINDOW as i64;
        if !window_range.contains(&kh) || !window_range.contains(&kw) {
            return Err(node_err(n, name, format!("kernel {kh}×{kw}: squeeze takes kernels of 1 to {MAX_WINDOW}")));
        }
        let (kh, kw) = (kh as usize, kw as usize);
        if kh != kw {
            return Err(node_err(n, name, format!("kernel {kh}×{kw} is not square; squeeze supports square kernels")));
        }
        let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
        if strides.len() != 2 || strides[0] != strides[1] || !window_range.contains(&strides[0]) {
            return Err(node_err(n, name, format!("strides {strides:?}: squeeze supports equal strides")));
        }
        let dilations = attr_ints(n, "dilations").unwrap_or_else(|| vec![1, 1]);
        if dilations.len() != 2 || dilations[0] != dilations[1] || !window_range.contains(&dilations[0]) {
            return Err(node_err(n, name, format!("dilations {dilations:?}: squeeze supports equal dilations")));
        }
        let dilation = dilations[0] as usize;
        let span = (kh.max(1) - 1) * dilation + 1;
        let stride = strides[0] as usize;
        let auto_pad = attr_string(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
        let pad = match auto_pad.as_str() {
            "NOTSET" => {
                let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
                if pads.len() != 4 || pads.iter().any(|&p| p != pads[0]) || pads[0] < 0 {
                    return Err(node_err(n, name, format!("pads {pads:?}: squeeze supports the same padding on every side")));
                }
                if pads[0] > MAX_WINDOW as i64 {
                    return Err(node_err(n, name, format!("pads {pads:?}: squeeze takes padding up to {MAX_WINDOW}")));
                }
                pads[0] as usize
            }
            "VALID" => 0,
            "SAME_UPPER" | "SAME_LOWER" if stride == 1 && span % 2 == 1 => (span - 1) / 2,
            other => return Err(node_err(n, name, format!("auto_pad {other} with kernel {kh} and stride {stride} gives uneven padding, which squeeze does not support"))),
        };
        Ok((kh, stride, pad, dilation))
    }

    fn conv(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let (x, shape) = self.act(n, name, 0)?;
        let w = self.constant_input(n, name, 1)?.ok_or_else(|| node_err(n, name, "has no weight"))?;
        let [oc, ic, kh, kw] = w.dims[..] else {
            return Err(node_err(n, name, format!("weight has shape {:?}; squeeze imports 2-D convolutions", w.dims)));
        };
        let group = attr_int(n, "group", 1);
        if group < 1 || oc % group as usize != 0 {
            return Err(node_err(n, name, format!("group = {group} does not divide the {oc} output channels")));
        }
        let groups = group as usize;
        let (kernel, stride, padding, dilation) = self.window(n, name, &shape, Some((kh, kw)))?;
        if kernel != kh || kh != kw {
            return Err(node_err(n, name, format!("kernel_shape does not match the weight {:?}", w.dims)));
        }
        if ic.checked_mul(groups) != Some(shape[0]) {
            return Err(node_err(
                n,
                name,
                format!("weight expects {ic} input channels per group × group {groups}, the input has {}", shape[0]),
            ));
        }
        let bias = match self.constant_input(n, name, 2)? {
            None => None,
            Some(c) if c.numel() == oc => Some(c.data.iter().map(|&v| v as f32).collect()),
            Some(c) => return Err(node_err(n, name, format!("bias has {} values, expected {oc}", c.numel()))),
        };
        let op = Op::Conv2d { in_channels: ic * groups, out_channels: oc, kernel, stride, padding, bias: bias.is_some(), groups, dilation };
        let weight = w.data.iter().map(|&v| v as f32).collect();
        self.layer(n, name, x, op, weight, bias)
    }

    fn pool(&mut self, n: &NodeProto, name: &str, kind: PoolKind) -> Result<(), OnnxError> {
        let (x, shape) = self.act(n, name, 0)?;
        if n.output.iter().skip(1).any(|o| self.uses.get(o).copied().unwrap_or(0) > 0) {
            return Err(node_err(n, name, "its indices output is used; squeeze pools return values only"));
        }
        if kind == PoolKind::GlobalAverage {
            if shape.len() != 3 || shape[1] != shape[2] {
                return Err(node_err(n, name, format!("input {shape:?}: squeeze imports GlobalAveragePool over square [C, H, H] maps")));
            }
            let k = shape[1];
            self.add(n, name, vec![x], Op::AvgPool2d { kernel: k, stride: k, padding: 0 })?;
            return Ok(());
        }
        let (kernel, stride, padding, dilation) = self.window(n, name, &shape, None)?;
        if dilation != 1 {
            return Err(node_err(n, name, format!("pooling with dilation {dilation} is not supported (only 1)")));
        }
        if attr_int(n, "ceil_mode", 0) != 0 {
            let floor = (shape[1] + 2 * padding).saturating_sub(kernel) / stride;
            let ceil = (shape[1] + 2 * padding).saturating_sub(kernel).div_ceil(stride);
            if floor != ceil {
                return Err(node_err(n, name, "ceil_mode = 1 changes the output size here; squeeze pools round down"));
            }
        }
        let op = match kind {
            PoolKind::Max => {
                if padding >= kernel {
                    return Err(node_err(n, name, format!("pads {padding} must be smaller than the kernel {kernel}")));
                }
                if attr_int(n, "storage_order", 0) != 0 {
                    return Err(node_err(n, name, "storage_order = 1 is not supported"));
                }
                Op::MaxPool2d { kernel, stride, padding }
            }
            _ => {
                if padding != 0 && attr_int(n, "count_include_pad", 0) == 0 {
                    return Err(node_err(n, name, "padded average pooling that excludes the padding from the count is not supported (count_include_pad = 1 is)"));
                }
                Op::AvgPool2d { kernel, stride, padding }
            }
        };
        self.add(n, name, vec![x], op)?;
        Ok(())
    }

    fn batch_norm(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let x = self.act(n, name, 0)?;
        if attr_int(n, "training_mode", 0) != 0 {
            return Err(node_err(n, name, "training_mode = 1 is not supported; export the model in eval mode"));
        }
        let eps = attr_float(n, "epsilon", 1e-5) as f64;
        let get = |b: &Self, i: usize, what: &str| -> Result<Vec<f64>, OnnxError> {
            let c = b.constant_input(n, name, i)?.ok_or_else(|| node_err(n, name, format!("has no {what}")))?;
            if c.numel() != x.1[0] {
                return Err(node_err(n, name, format!("{what} has {} values, the input has {} channels", c.numel(), x.1[0])));
            }
            Ok(c.data)
        };
        let (gamma, beta, mean, var) = (get(self, 1, "scale")?, get(self, 2, "bias")?, get(self, 3, "mean")?, get(self, 4, "var")?);
        let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift: Vec<f64> = beta.iter().zip(&mean).zip(&scale).map(|((b, m), a)| b - m * a).collect();
        self.affine(n, name, x, scale, shift)
    }

    fn flatten(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let (x, shape) = self.act(n, name, 0)?;
        let axis = attr_int(n, "axis", 1);
        if axis != 1 && !(shape.len() == 1 && axis == -1) {
            return Err(node_err(n, name, format!("axis = {axis}: squeeze flattens each sample (axis = 1)")));
        }
        if shape.len() == 1 {
            return self.bind(n, name, x, shape);
        }
        self.add(n, name, vec![x], Op::Flatten)?;
        Ok(())
    }

    fn reshape(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let (x, shape) = self.act(n, name, 0)?;
        let target = match (self.constant_input(n, name, 1)?, attr_ints(n, "shape")) {
            (Some(c), _) => c.data.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            (None, Some(s)) => s,
            (None, None) => return Err(node_err(n, name, "has no target shape")),
        };
        let numel: usize = shape.iter().product();
        let mut per: Vec<i64> = target.iter().skip(1).copied().collect();
        if target.is_empty() {
            return Err(node_err(n, name, "target shape is empty"));
        }
        for (i, d) in per.iter_mut().enumerate() {
            if *d == 0 {
                *d = *shape.get(i).ok_or_else(|| node_err(n, name, format!("target {target:?} copies a dimension the input lacks")))? as i64;
            }
        }
        let known = per.iter().filter(|&&d| d > 0).try_fold(1i64, |a, &d| a.checked_mul(d)).unwrap_or(0);
        let unknown = per.iter().filter(|&&d| d == -1).count();
        if unknown > 1 || per.iter().any(|&d| d < -1) || known == 0 {
            return Err(node_err(n, name, format!("target shape {target:?} cannot be resolved per sample")));
        }
        if unknown == 1 {
            let fill = numel as i64 / known;
            per.iter_mut().filter(|d| **d == -1).for_each(|d| *d = fill);
        }
        let per: Vec<usize> = per.iter().map(|&d| d as usize).collect();
        if per.iter().product::<usize>() != numel {
            return Err(node_err(n, name, format!("target shape {target:?} does not keep the {numel} values of each sample (batch first)")));
        }
        if per == shape {
            return self.bind(n, name, x, shape);
        }
        if per.len() == 1 {
            self.add(n, name, vec![x], Op::Flatten)?;
            return Ok(());
        }
        // A reshape of the raw input only reinterprets the flat sample: the model input
        // takes that shape directly (e.g. [N, 784] → [N, 1, 28, 28]).
        if x == INPUT && self.nodes.is_empty() && self.pending.get(INPUT).copied().unwrap_or(0) == 0 && per.len() == 3 {
            self.notes.push(format!("Reshape '{name}' of the input to {per:?}: the model input is taken as {per:?} per sample"));
            self.input_shape = per.clone();
            self.shapes.insert(INPUT.into(), per.clone());
            return self.bind(n, name, x, per);
        }
        Err(node_err(n, name, format!("reshapes {shape:?} to {per:?}; squeeze supports reshapes that flatten a sample or keep its layout")))
    }

    fn transpose(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        if self.is_view(n, 0) || attr_ints(n, "perm").is_some_and(|p| p.first().is_some_and(|&a| a != 0)) {
            return self.transpose_view(n, name);
        }
        let (x, shape) = self.act(n, name, 0)?;
        let perm = attr_ints(n, "perm").unwrap_or_else(|| (0..=shape.len() as i64).rev().collect());
        if perm.len() != shape.len() + 1 || perm[0] != 0 {
            return Err(node_err(n, name, format!("perm {perm:?} moves the batch dimension")));
        }
        // ONNX axis p ≥ 1 is per-sample axis p − 1; anything else does not fit.
        let moved: Vec<usize> = perm[1..].iter().map(|&p| if (1..=shape.len() as i64).contains(&p) { p as usize - 1 } else { usize::MAX }).collect();
        let mut sorted = moved.clone();
        sorted.sort_unstable();
        if sorted.iter().enumerate().any(|(i, &p)| p != i) {
            return Err(node_err(n, name, format!("perm {perm:?} is not a permutation of the input's {} axes", shape.len() + 1)));
        }
        // A layout change only when the dimensions larger than 1 keep their order.
        let order: Vec<usize> = moved.iter().copied().filter(|&p| shape[p] > 1).collect();
        if order.windows(2).any(|w| w[0] > w[1]) {
            return Err(node_err(n, name, format!("perm {perm:?} reorders the data of a {shape:?} value; squeeze supports transposes that only move size-1 dimensions")));
        }
        let new_shape: Vec<usize> = moved.iter().map(|&p| shape[p]).collect();
        if new_shape == shape {
            return self.bind(n, name, x, shape);
        }
        if new_shape.len() == 1 || new_shape.iter().filter(|&&d| d > 1).count() <= 1 && new_shape.len() != 3 {
            self.add(n, name, vec![x], Op::Flatten)?;
            return Ok(());
        }
        Err(node_err(n, name, format!("perm {perm:?} turns {shape:?} into {new_shape:?}, a layout squeeze has no op for")))
    }

    /// The shape of a runtime value, as a constant whose batch entry is a placeholder
    /// (1): PyTorch's `x.view(x.size(0), -1)` exports Shape → Gather → Unsqueeze →
    /// Concat → Reshape, and squeeze's Reshape treats the first entry as the batch.
    fn shape(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let data: Vec<f64> = match self.get(n, name, 0)?.clone() {
            Val::Act { shape, .. } => std::iter::once(1.0).chain(shape.iter().map(|&d| d as f64)).collect(),
            Val::Const(c) => c.dims.iter().map(|&d| d as f64).collect(),
        };
        let c = Const { dims: vec![data.len()], data, data_type: data_type::INT64 };
        self.vals.insert(Self::out_name(n, name)?, Val::Const(c));
        Ok(())
    }

    /// Gather on constants (shape arithmetic), along axis 0 of a 1-D constant.
    fn gather(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let data = self.constant_input(n, name, 0)?.ok_or_else(|| node_err(n, name, "has no data"))?;
        let idx = self.constant_input(n, name, 1)?.ok_or_else(|| node_err(n, name, "has no indices"))?;
        if data.dims.len() != 1 || attr_int(n, "axis", 0) != 0 {
            return Err(node_err(n, name, "squeeze folds Gather of 1-D constants only (shape arithmetic)"));
        }
        let len = data.numel() as i64;
        if idx.numel() > self.max_folded {
            return Err(node_err(n, name, format!("gathers {} values, more than the file stores (the file is corrupt)", idx.numel())));
        }
        let mut out = Vec::with_capacity(idx.numel());
        for &i in &idx.data {
            let i = if i < 0.0 { i as i64 + len } else { i as i64 };
            out.push(*data.data.get(i as usize).filter(|_| i >= 0).ok_or_else(|| node_err(n, name, format!("index {i} out of range")))?);
        }
        let c = Const { dims: idx.dims.clone(), data: out, data_type: data.data_type };
        self.vals.insert(Self::out_name(n, name)?, Val::Const(c));
        Ok(())
    }

    /// Unsqueeze/Squeeze of constants (axes as attribute before opset 13, input after).
    fn unsqueeze(&mut self, n: &NodeProto, name: &str, add: bool) -> Result<(), OnnxError> {
        if !add && (self.is_view(n, 0) || matches!(self.get(n, name, 0), Ok(Val::Act { .. }))) {
            return self.squeeze_view(n, name);
        }
        let mut c = match self.get(n, name, 0)?.clone() {
            Val::Const(c) => c,
            Val::Act { .. } => return Err(node_err(n, name, "squeeze folds Squeeze/Unsqueeze of constants only")),
        };
        let axes = self.squeeze_axes(n, name)?;
        if add {
            if c.dims.len() + axes.len() > MAX_RANK {
                return Err(node_err(n, name, format!("the result would have rank {}, more than {MAX_RANK}", c.dims.len() + axes.len())));
            }
            let rank = (c.dims.len() + axes.len()) as i64;
            let mut axes: Vec<usize> = axes.iter().map(|&a| if a < 0 { a + rank } else { a } as usize).collect();
            axes.sort_unstable();
            for a in axes {
                c.dims.insert(a.min(c.dims.len()), 1);
            }
        } else if axes.is_empty() {
            c.dims.retain(|&d| d != 1);
        } else {
            let rank = c.dims.len() as i64;
            let drop: Vec<usize> = axes.iter().map(|&a| if a < 0 { a + rank } else { a } as usize).collect();
            // Only size-1 axes may go: the dimensions must keep describing the values.
            if let Some(&a) = drop.iter().find(|&&a| c.dims.get(a) != Some(&1)) {
                return Err(node_err(n, name, format!("axis {a} of a constant of shape {:?} is not of size 1", c.dims)));
            }
            c.dims = c.dims.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &d)| d).collect();
        }
        self.vals.insert(Self::out_name(n, name)?, Val::Const(c));
        Ok(())
    }

    /// The `axes` of Squeeze/Unsqueeze: an attribute before opset 13, an input after.
    fn squeeze_axes(&self, n: &NodeProto, name: &str) -> Result<Vec<i64>, OnnxError> {
        let axes: Vec<i64> = match (attr_ints(n, "axes"), self.constant_input(n, name, 1)?) {
            (Some(a), _) => a,
            (None, Some(a)) => a.data.iter().map(|&v| v as i64).collect(),
            (None, None) => Vec::new(),
        };
        if axes.len() > MAX_RANK {
            return Err(node_err(n, name, format!("{} axes; a tensor has at most {MAX_RANK}", axes.len())));
        }
        Ok(axes)
    }

    /// Concat of 1-D constants (shape arithmetic).
    fn concat(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let mut data = Vec::new();
        let mut data_type = data_type::INT64;
        for i in 0..n.input.len() {
            let c = self.constant_input(n, name, i)?.ok_or_else(|| node_err(n, name, format!("input {i} is missing")))?;
            if c.dims.len() > 1 {
                return Err(node_err(n, name, "squeeze folds Concat of 1-D constants only (shape arithmetic)"));
            }
            data_type = c.data_type;
            if data.len() + c.numel() > self.max_folded {
                return Err(node_err(n, name, format!("the concatenated constant would hold more than {} values, more than the file stores (the file is corrupt)", self.max_folded)));
            }
            data.extend(c.data);
        }
        let c = Const { dims: vec![data.len()], data, data_type };
        self.vals.insert(Self::out_name(n, name)?, Val::Const(c));
        Ok(())
    }

    fn softmax(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let (x, shape) = self.act(n, name, 0)?;
        let axis = attr_int(n, "axis", -1);
        if shape.len() != 1 || !matches!(axis, 1 | -1) {
            return Err(node_err(n, name, format!("softmax over axis {axis} of a {shape:?} value; squeeze applies Softmax to [batch, classes]")));
        }
        self.add(n, name, vec![x], Op::Softmax)?;
        Ok(())
    }
}

/// Elementwise `a ∘ b` of two constants when one is a scalar or both have equal shapes.
fn broadcast_const(a: &Const, b: &Const, kind: Arith) -> Option<Const> {
    let f = |x: f64, y: f64| match kind {
        Arith::Add => x + y,
        Arith::Sub => x - y,
        Arith::Mul => x * y,
        Arith::Div => x / y,
    };
    let (dims, data) = if a.dims == b.dims {
        (a.dims.clone(), a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect())
    } else if b.numel() == 1 {
        (a.dims.clone(), a.data.iter().map(|&x| f(x, b.data[0])).collect())
    } else if a.numel() == 1 {
        (b.dims.clone(), b.data.iter().map(|&y| f(a.data[0], y)).collect())
    } else {
        return None;
    };
    Some(Const { dims, data, data_type: a.data_type })
}

#[cfg(test)]
#[path = "tests.rs"]
pub(super) mod tests;
