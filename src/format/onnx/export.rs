//! squeeze graph → ONNX (opset 13).
//!
//! - [`encode_f32`]: any graph with dense f32 parameters (a stored model decoded from any
//!   encoding: dense, sparse, codebook, int8 dequantized) as plain ONNX.
//! - [`encode_int8`]: a quantized `.sqz` model with its int8 weights kept int8. A full
//!   int8 model is written as ONNX QDQ: every integer layer reads its
//!   input through QuantizeLinear → DequantizeLinear with squeeze's calibrated u8 scale
//!   and zero point, its int8 weight through DequantizeLinear with the per-output-channel
//!   scales (axis 0), its bias as int32 at scale `input_scale · weight_scale[o]` (as
//!   squeeze's integer kernels round it), and a calibrated output is quantized again.
//!   ONNX Runtime fuses these patterns into integer kernels (QLinearConv, QGemm/MatMulInteger).
//!   The weights are written as [`WeightType::Uint8`] by default: squeeze's int8 value
//!   plus 128 with zero point 128, the same real values. ONNX Runtime's x86 u8×s8 kernels
//!   on CPUs without VNNI (`vpmaddubsw`) saturate 16-bit sums of two products, so an
//!   int8-weight file computes something else there; its u8×u8 kernels widen to 16 bits
//!   first and are exact, so the uint8 file computes what squeeze's integer path does.
//!   [`WeightType::Int8`] (symmetric, zero point 0) is for runtimes that require it
//!   (TensorRT). Weights-only and dynamic models (and any int8 weight no integer layer
//!   reads) keep their int8 weights as INT8 initializers with per-output-channel float
//!   scales, dequantized into float Gemm/Conv: what squeeze computes for weights-only.
//!
//! Both keep the names the graph input and outputs had in an imported model's file
//! ([`Graph::io_names`]), so an export can replace the file it came from; zoo and
//! PyTorch models use squeeze's names (`input`, the output nodes' names).
//!
//! This module only encodes (format depends on spec, not on the runtime); the check
//! that the bytes import again and compute what the model computes is
//! `store::export_onnx`, which every caller goes through before writing a file.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::proto::{
    attr_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use crate::format::sqz::{SqzModel, Values};
use crate::spec::{Cell, Graph, Op, QParams, QuantPlan, Recurrent, SpecError, INPUT, RECURRENT_PARAMS};

/// The opset squeeze writes: per-axis DequantizeLinear needs 13.
pub const EXPORT_OPSET: i64 = 13;

/// How a QDQ export stores the integer layers' weights (the real values are the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightType {
    /// `q + 128` as uint8 with zero point 128: exact in ONNX Runtime's u8×u8 kernels on
    /// every x86 CPU.
    #[default]
    Uint8,
    /// `q` as int8 with zero point 0 (symmetric): what TensorRT requires; ONNX Runtime's
    /// u8×s8 AVX2 kernels can saturate on it (CPUs without VNNI).
    Int8,
}

/// Why a model cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("the model has no int8 weights to export as int8 (quantize it first, or export fp32)")]
    NotQuantized,
    #[error("integer layer '{node}' reads '{value}', which has no calibrated quantization")]
    MissingQParams { node: String, value: String },
    #[error("integer layer '{0}' has no int8 weight")]
    NotInt8(String),
    #[error("node '{0}' is a bidirectional LSTM/GRU, which the ONNX exporter does not write yet; keep the model as .sqz or safetensors")]
    Bidirectional(String),
    #[error("invalid architecture: {0}")]
    Spec(#[from] SpecError),
    #[error("node '{node}' ({op}) cannot be exported to ONNX yet: Transformer ops (embeddings, LayerNorm, GELU, self-attention, pooling, Linear on a sequence) are not supported by the ONNX exporter; keep the model as .sqz or safetensors")]
    Unsupported { node: String, op: &'static str },
}

fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn tensor_i8(name: &str, dims: &[usize], data: &[i8]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::INT8),
        name: Some(name.into()),
        raw_data: Some(data.iter().map(|&v| v as u8).collect()),
        ..Default::default()
    }
}

fn tensor_u8(name: &str, dims: &[usize], data: &[u8]) -> TensorProto {
    TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), data_type: Some(data_type::UINT8), name: Some(name.into()), raw_data: Some(data.to_vec()), ..Default::default() }
}

fn tensor_i32(name: &str, dims: &[usize], data: &[i32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::INT32),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::INT64),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// ONNX gate block `k` of a recurrent weight is squeeze's (PyTorch's) block `order[k]`:
/// ONNX LSTM gates are (i, o, f, c) where PyTorch has (i, f, g, o); ONNX GRU gates are
/// (z, r, h) where PyTorch has (r, z, n).
pub(crate) fn onnx_gate_order(cell: Cell) -> &'static [usize] {
    match cell {
        Cell::Lstm => &[0, 3, 1, 2],
        Cell::Gru => &[1, 0, 2],
    }
}

/// The blocks of `data` (`blocks` blocks of `block_len` values) in the order `order`:
/// block `k` of the result is block `order[k]` of `data`.
pub(crate) fn reorder_blocks<T: Copy>(data: &[T], block_len: usize, order: &[usize]) -> Vec<T> {
    order.iter().flat_map(|&k| data[k * block_len..(k + 1) * block_len].iter().copied()).collect()
}

/// An LSTM/GRU node as ONNX: squeeze's batch-first sequence `[N, T, I]` is transposed to
/// ONNX's time-major `[T, N, I]` (opset 13 has no batch-first `layout`), the weights
/// regrouped into ONNX's gate order with a leading direction axis, and the output
/// brought back to squeeze's layout: the last hidden state `Y_h [1, N, H]` squeezed to
/// `[N, H]`, or the whole sequence `Y [T, 1, N, H]` squeezed and transposed to `[N, T, H]`.
fn recurrent(
    w: &mut Writer,
    name: &str,
    x: &str,
    r: &Recurrent,
    tensors: &HashMap<String, Vec<f32>>,
    int8_weights: Option<&HashMap<String, (Vec<i8>, Vec<f32>)>>,
) -> Result<(), ExportError> {
    let get = |n: &str| tensors.get(n).ok_or_else(|| ExportError::MissingTensor(n.into()));
    let (h, i, g) = (r.hidden, r.input_size, r.gate_rows());
    let order = onnx_gate_order(r.cell);
    let [w_ih, w_hh, b_ih, b_hh] = RECURRENT_PARAMS.map(|(suffix, _)| format!("{name}.{suffix}"));
    let (wn, rn, bn) = (format!("{name}.W"), format!("{name}.R"), format!("{name}.B"));
    for (param, onnx, cols) in [(&w_ih, &wn, i), (&w_hh, &rn, h)] {
        match int8_weights.and_then(|m| m.get(param)) {
            // int8 weights stay int8 in the file: DequantizeLinear per gate row (axis 1 of
            // [1, rows, cols]), the float product squeeze's runtime forms at load.
            Some((q, scales)) if q.len() == g * cols && scales.len() == g => {
                let (q, scales) = (reorder_blocks(q, h * cols, order), reorder_blocks(scales, h, order));
                w.dequantized(onnx, onnx, &[1, g, cols], &q, &scales, 1, WeightType::Int8);
            }
            _ => w.inits.push(tensor_f32(onnx, &[1, g, cols], &reorder_blocks(get(param)?, h * cols, order))),
        }
    }
    let mut inputs = vec![format!("{name}.x_time_major"), wn, rn];
    if r.bias {
        let mut b = reorder_blocks(get(&b_ih)?, h, order);
        b.extend(reorder_blocks(get(&b_hh)?, h, order));
        w.inits.push(tensor_f32(&bn, &[1, 2 * g], &b));
        inputs.push(bn);
    }
    w.node("Transpose", &format!("{name}.to_time_major"), vec![x.into()], inputs[0].clone(), vec![ints("perm", &[1, 0, 2])]);
    let (op, mut attrs) = match r.cell {
        Cell::Lstm => ("LSTM", vec![]),
        // PyTorch's GRU applies the reset gate after the recurrent product.
        Cell::Gru => ("GRU", vec![int("linear_before_reset", 1)]),
    };
    attrs.push(int("hidden_size", h as i64));
    let (y, y_h) = (format!("{name}.Y"), format!("{name}.Y_h"));
    let outputs = if r.sequence { vec![y.clone()] } else { vec![String::new(), y_h.clone()] };
    w.nodes.push(NodeProto { input: inputs, output: outputs, name: Some(name.into()), op_type: Some(op.into()), attribute: attrs, ..Default::default() });
    let axes = format!("{name}.squeeze_axes");
    if r.sequence {
        w.inits.push(tensor_i64(&axes, &[1], &[1]));
        let seq = format!("{name}.Y_time_major");
        w.node("Squeeze", &format!("{name}.squeeze"), vec![y, axes], seq.clone(), vec![]);
        w.node("Transpose", &format!("{name}.to_batch_first"), vec![seq], name.into(), vec![ints("perm", &[1, 0, 2])]);
    } else {
        w.inits.push(tensor_i64(&axes, &[1], &[0]));
        w.node("Squeeze", &format!("{name}.squeeze"), vec![y_h, axes], name.into(), vec![]);
    }
    Ok(())
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), ints: v.iter().map(|&x| x as i64).collect(), r#type: Some(attr_type::INTS), ..Default::default() }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), i: Some(v), r#type: Some(attr_type::INT), ..Default::default() }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let mut dim = vec![Dimension { dim_value: None, dim_param: Some("N".into()) }];
    dim.extend(shape.iter().map(|&d| Dimension { dim_value: Some(d as i64), dim_param: None }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type: Some(data_type::FLOAT), shape: Some(TensorShapeProto { dim }) }) }),
        doc_string: None,
    }
}

/// Integer-layer data for a QDQ export.
struct Int8 {
    plan: QuantPlan,
    weights: HashMap<String, (Vec<i8>, Vec<f32>)>,
    weight_type: WeightType,
}

struct Writer {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// squeeze value → the ONNX name its float consumers read.
    name: HashMap<String, String>,
    /// Quantize/dequantize pairs already written: (value, zero point, scale bits) → name.
    qdq: HashMap<(String, i32, u32), String>,
}

impl Writer {
    fn node(&mut self, op: &str, name: &str, inputs: Vec<String>, output: String, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto { input: inputs, output: vec![output], name: Some(name.into()), op_type: Some(op.into()), attribute, ..Default::default() });
    }

    /// The int8 tensor `q` (shape `dims`, one float scale per index of axis `axis`) as
    /// initializers `{base}.q`, `{base}.scale`, `{base}.zero_point`, read through a
    /// DequantizeLinear node whose output is `output`: the values `scale · q` squeeze
    /// computes with. Stored as `weight_type` (see [`WeightType`]; the real values are
    /// the same either way).
    #[allow(clippy::too_many_arguments)]
    fn dequantized(&mut self, base: &str, output: &str, dims: &[usize], q: &[i8], scales: &[f32], axis: i64, weight_type: WeightType) {
        let (qn, sn, zn) = (format!("{base}.q"), format!("{base}.scale"), format!("{base}.zero_point"));
        let channels = scales.len();
        match weight_type {
            WeightType::Uint8 => {
                let shifted: Vec<u8> = q.iter().map(|&v| (v as i16 + 128) as u8).collect();
                self.inits.push(tensor_u8(&qn, dims, &shifted));
                self.inits.push(tensor_u8(&zn, &[channels], &vec![128; channels]));
            }
            WeightType::Int8 => {
                self.inits.push(tensor_i8(&qn, dims, q));
                self.inits.push(tensor_i8(&zn, &[channels], &vec![0; channels]));
            }
        }
        self.inits.push(tensor_f32(&sn, &[channels], scales));
        self.node("DequantizeLinear", &format!("{base}.dequantize"), vec![qn, sn, zn], output.into(), vec![int("axis", axis)]);
    }

    /// `onnx_value` through QuantizeLinear → DequantizeLinear with `qp` (once per pair).
    fn fake_quant(&mut self, value: &str, onnx_value: &str, qp: QParams) -> String {
        let key = (value.to_string(), qp.zero_point, qp.scale.to_bits());
        if let Some(n) = self.qdq.get(&key) {
            return n.clone();
        }
        let k = self.qdq.len();
        let base = if k == 0 || !self.qdq.keys().any(|(v, _, _)| v == value) { value.to_string() } else { format!("{value}.{k}") };
        let (s, z) = (format!("{base}.scale"), format!("{base}.zero_point"));
        self.inits.push(tensor_f32(&s, &[], &[qp.scale]));
        self.inits.push(tensor_u8(&z, &[], &[qp.zero_point.clamp(0, 255) as u8]));
        let (q, dq) = (format!("{base}.q"), format!("{base}.dq"));
        self.node("QuantizeLinear", &format!("{base}.quantize"), vec![onnx_value.into(), s.clone(), z.clone()], q.clone(), vec![]);
        self.node("DequantizeLinear", &format!("{base}.dequantize"), vec![q, s, z], dq.clone(), vec![]);
        self.qdq.insert(key, dq.clone());
        dq
    }
}

fn build(graph: &Graph, tensors: &HashMap<String, Vec<f32>>, int8: Option<&Int8>) -> Result<ModelProto, ExportError> {
    let shapes = graph.validate()?;
    if let Some(node) = graph.nodes.iter().find(|n| {
        let seq_linear = matches!(n.op, Op::Linear { .. }) && shapes[&n.inputs[0]].len() > 1;
        seq_linear
            || matches!(
                n.op,
                Op::Embedding { .. } | Op::PositionEmbedding { .. } | Op::ClsToken { .. } | Op::PatchEmbed { .. } | Op::LayerNorm { .. } | Op::Gelu | Op::SelfAttention { .. } | Op::Pool { .. }
            )
    }) {
        return Err(ExportError::Unsupported { node: node.name.clone(), op: node.op.kind() });
    }
    if let Some(node) = graph.nodes.iter().find(|n| n.op.recurrent().is_some_and(|r| r.bidirectional)) {
        return Err(ExportError::Bidirectional(node.name.clone()));
    }
    let consumers = graph.consumers();
    let mut w = Writer { nodes: Vec::new(), inits: Vec::new(), name: HashMap::new(), qdq: HashMap::new() };
    w.name.insert(INPUT.into(), INPUT.into());
    // Mirror of the runtime's representation of each value (exec.rs): Some(qp) where
    // squeeze holds it as u8, so the ONNX graph quantizes at the same places.
    let mut repr: HashMap<String, Option<QParams>> = HashMap::new();
    repr.insert(INPUT.into(), None);
    let mut fused_relu: HashMap<String, Option<QParams>> = HashMap::new();
    let get = |n: &str| tensors.get(n).ok_or_else(|| ExportError::MissingTensor(n.into()));
    for node in &graph.nodes {
        let x_value = &node.inputs[0];
        let x = w.name[x_value].clone();
        let out = node.name.clone();
        let in_shape = &shapes[x_value];
        let mut out_repr: Option<QParams> = None;
        // Calibrated integer layers are written as QDQ; a dynamic layer's activations are
        // quantized per row at run time by squeeze's kernels (a speed choice, not part of
        // the model's function), so it is written like a weights-only layer.
        let integer = int8.filter(|q| q.plan.integer_nodes.contains(&node.name) && !q.plan.dynamic.contains(&node.name) && node.op.has_weight());
        match &node.op {
            Op::Linear { .. } | Op::Conv2d { .. } => {
                let wname = format!("{}.weight", node.name);
                let bname = format!("{}.bias", node.name);
                let wshape = graph.parameters().into_iter().find(|p| p.name == wname).map(|p| p.shape).ok_or_else(|| ExportError::MissingTensor(wname.clone()))?;
                let bias = graph.parameters().into_iter().any(|p| p.name == bname);
                let mut inputs = Vec::new();
                if let Some(q) = integer {
                    let in_qp = match repr.get(x_value).copied().flatten() {
                        Some(qp) => qp,
                        None => *q.plan.activations.get(x_value).ok_or_else(|| ExportError::MissingQParams { node: node.name.clone(), value: x_value.clone() })?,
                    };
                    let float_x = w.name[x_value].clone();
                    let xq = match repr.get(x_value).copied().flatten() {
                        Some(_) => float_x,
                        None => w.fake_quant(x_value, &float_x, in_qp),
                    };
                    let (wq, ws) = q.weights.get(&wname).ok_or_else(|| ExportError::NotInt8(node.name.clone()))?;
                    let oc = wshape[0];
                    w.dequantized(&wname, &format!("{wname}.dq"), &wshape, wq, ws, 0, q.weight_type);
                    inputs.push(xq);
                    inputs.push(format!("{wname}.dq"));
                    if bias {
                        let b = get(&bname)?;
                        let scales: Vec<f32> = ws.iter().map(|s| (in_qp.scale as f64 * *s as f64) as f32).collect();
                        let bq: Vec<i32> = b.iter().zip(ws).map(|(v, s)| (*v as f64 / (in_qp.scale as f64 * *s as f64)).round() as i32).collect();
                        w.inits.push(tensor_i32(&format!("{bname}.q"), &[oc], &bq));
                        w.inits.push(tensor_f32(&format!("{bname}.scale"), &[oc], &scales));
                        w.inits.push(tensor_i32(&format!("{bname}.zero_point"), &[oc], &vec![0; oc]));
                        w.node(
                            "DequantizeLinear",
                            &format!("{bname}.dequantize"),
                            vec![format!("{bname}.q"), format!("{bname}.scale"), format!("{bname}.zero_point")],
                            format!("{bname}.dq"),
                            vec![int("axis", 0)],
                        );
                        inputs.push(format!("{bname}.dq"));
                    }
                    let relu = graph
                        .nodes
                        .iter()
                        .find(|n| n.inputs.first() == Some(&node.name) && matches!(n.op, Op::Relu))
                        .filter(|r| consumers.get(&node.name) == Some(&1) && q.plan.activations.contains_key(&r.name));
                    match relu {
                        Some(r) => {
                            fused_relu.insert(r.name.clone(), q.plan.activations.get(&r.name).copied());
                        }
                        None => out_repr = q.plan.activations.get(&node.name).copied(),
                    }
                } else {
                    match int8.and_then(|q| q.weights.get(&wname)) {
                        // A stored int8 weight that no integer kernel reads (weights-only
                        // and dynamic models, layers left out of full int8): int8 in the
                        // file, dequantized per output channel in front of the float
                        // Gemm/Conv, as squeeze dequantizes it at load. Symmetric int8:
                        // no integer kernel reads it, so ONNX Runtime's u8×s8 saturation
                        // (why QDQ layers default to uint8) cannot arise.
                        Some((wq, ws)) if wq.len() == wshape.iter().product::<usize>() && ws.len() == wshape[0] => {
                            let dq = format!("{wname}.dq");
                            w.dequantized(&wname, &dq, &wshape, wq, ws, 0, WeightType::Int8);
                            inputs.push(x.clone());
                            inputs.push(dq);
                        }
                        _ => {
                            w.inits.push(tensor_f32(&wname, &wshape, get(&wname)?));
                            inputs.push(x.clone());
                            inputs.push(wname.clone());
                        }
                    }
                    if bias {
                        let b = get(&bname)?;
                        w.inits.push(tensor_f32(&bname, &[b.len()], b));
                        inputs.push(bname);
                    }
                }
                match node.op {
                    Op::Linear { .. } => w.node("Gemm", &node.name, inputs, out.clone(), vec![int("transB", 1)]),
                    Op::Conv2d { kernel, stride, padding, groups, dilation, .. } => w.node(
                        "Conv",
                        &node.name,
                        inputs,
                        out.clone(),
                        vec![
                            ints("kernel_shape", &[kernel, kernel]),
                            ints("strides", &[stride, stride]),
                            ints("pads", &[padding; 4]),
                            ints("dilations", &[dilation, dilation]),
                            int("group", groups as i64),
                        ],
                    ),
                    _ => unreachable!(),
                }
            }
            Op::MaxPool2d { kernel, stride, padding } => {
                let mut attrs = vec![ints("kernel_shape", &[*kernel, *kernel]), ints("strides", &[*stride, *stride])];
                if *padding > 0 {
                    attrs.push(ints("pads", &[*padding; 4]));
                }
                w.node("MaxPool", &node.name, vec![x], out.clone(), attrs);
                out_repr = repr[x_value];
            }
            Op::AvgPool2d { kernel, stride, padding } => w.node(
                "AveragePool",
                &node.name,
                vec![x],
                out.clone(),
                vec![
                    ints("kernel_shape", &[*kernel, *kernel]),
                    ints("strides", &[*stride, *stride]),
                    ints("pads", &[*padding; 4]),
                    int("count_include_pad", 1),
                ],
            ),
            Op::Flatten => {
                w.node("Flatten", &node.name, vec![x], out.clone(), vec![int("axis", 1)]);
                out_repr = repr[x_value];
            }
            Op::Relu => {
                w.node("Relu", &node.name, vec![x], out.clone(), vec![]);
                out_repr = match fused_relu.get(&node.name) {
                    Some(qp) => *qp,
                    None => repr[x_value],
                };
            }
            Op::Sigmoid => w.node("Sigmoid", &node.name, vec![x], out.clone(), vec![]),
            Op::Tanh => w.node("Tanh", &node.name, vec![x], out.clone(), vec![]),
            Op::Add => {
                let y = w.name[&node.inputs[1]].clone();
                w.node("Add", &node.name, vec![x, y], out.clone(), vec![]);
            }
            Op::Softmax => w.node("Softmax", &node.name, vec![x], out.clone(), vec![int("axis", -1)]),
            Op::Lstm { .. } | Op::Gru { .. } => {
                let r = node.op.recurrent().expect("a recurrent op");
                recurrent(&mut w, &node.name, &x, &r, tensors, int8.map(|q| &q.weights))?;
            }
            Op::Normalize { mean, std } => {
                // Per channel of [C, H, W] as [C, 1, 1]; one value as a scalar.
                let dims: Vec<usize> = if mean.len() > 1 { vec![mean.len(), 1, 1] } else { vec![] };
                let (m, s) = (format!("{}.mean", node.name), format!("{}.std", node.name));
                w.inits.push(tensor_f32(&m, &dims, mean));
                w.inits.push(tensor_f32(&s, &dims, std));
                let centered = format!("{}.centered", node.name);
                w.node("Sub", &format!("{}.sub", node.name), vec![x, m], centered.clone(), vec![]);
                w.node("Div", &node.name, vec![centered, s], out.clone(), vec![]);
                let _ = in_shape;
            }
            Op::Embedding { .. } | Op::PositionEmbedding { .. } | Op::ClsToken { .. } | Op::PatchEmbed { .. } | Op::LayerNorm { .. } | Op::Gelu | Op::SelfAttention { .. } | Op::Pool { .. } => {
                unreachable!("refused before the first node")
            }
        }
        repr.insert(out.clone(), out_repr);
        let name = match out_repr {
            Some(qp) => w.fake_quant(&out, &out, qp),
            None => out.clone(),
        };
        w.name.insert(out, name);
    }
    // Graph outputs keep squeeze's value names; a value read through Q/DQ gets an
    // Identity so the output name stays the node's.
    let mut outputs = Vec::new();
    for o in &graph.outputs {
        let onnx = w.name[o].clone();
        let name = if onnx == *o {
            o.clone()
        } else {
            let n = format!("{o}.output");
            w.node("Identity", &n, vec![onnx], n.clone(), vec![]);
            n
        };
        outputs.push(value_info(&name, &shapes[o]));
    }
    let mut g = GraphProto {
        node: w.nodes,
        name: Some("squeeze".into()),
        initializer: w.inits,
        doc_string: None,
        input: vec![value_info(INPUT, &graph.input_shape)],
        output: outputs,
        value_info: Vec::new(),
    };
    restore_io_names(&mut g, graph);
    let qdq = int8.is_some_and(|q| graph.nodes.iter().any(|n| n.op.has_weight() && q.plan.integer_nodes.contains(&n.name) && !q.plan.dynamic.contains(&n.name)));
    let doc = match int8 {
        Some(_) if qdq => "squeeze QDQ int8 export",
        Some(_) => "squeeze export: int8 weights (DequantizeLinear), float compute",
        None => "squeeze fp32 export",
    };
    Ok(ModelProto {
        ir_version: Some(7),
        producer_name: Some("squeeze".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: Some(doc.into()),
        graph: Some(g),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(EXPORT_OPSET) }],
        metadata_props: Vec::new(),
    })
}

/// Every value name `g` uses: node inputs and outputs, initializers, graph inputs and
/// outputs.
fn value_names(g: &GraphProto) -> HashSet<String> {
    let nodes = g.node.iter().flat_map(|n| n.input.iter().chain(&n.output)).cloned();
    let inits = g.initializer.iter().filter_map(|t| t.name.clone());
    let io = g.input.iter().chain(&g.output).filter_map(|v| v.name.clone());
    nodes.chain(inits).chain(io).filter(|n| !n.is_empty()).collect()
}

/// Renames value `from` to `to` everywhere in `g`.
fn rename_value(g: &mut GraphProto, from: &str, to: &str) {
    for n in &mut g.node {
        n.input.iter_mut().chain(n.output.iter_mut()).filter(|v| *v == from).for_each(|v| *v = to.into());
    }
    let names = g.initializer.iter_mut().map(|t| &mut t.name).chain(g.input.iter_mut().chain(g.output.iter_mut()).map(|v| &mut v.name));
    names.filter(|n| n.as_deref() == Some(from)).for_each(|n| *n = Some(to.into()));
}

/// Gives the graph input and outputs the names they had in the file the model was
/// imported from ([`Graph::io_names`]), so that the export can replace that file; values
/// without one keep squeeze's names. A squeeze value that already holds a wanted name
/// (e.g. a node named like another value's original name) is renamed out of the way
/// (`{name}.value`); an output that is also the input or another output is given its
/// name through an Identity node.
fn restore_io_names(g: &mut GraphProto, graph: &Graph) {
    if graph.io_names.is_empty() {
        return;
    }
    // (graph output index or None for the input, wanted name); a name wanted twice is
    // given once.
    let mut wanted: Vec<(Option<usize>, String)> = Vec::new();
    let mut io = graph.io_names.get(INPUT).map(|n| (None, n.clone())).into_iter().collect::<Vec<_>>();
    io.extend(graph.outputs.iter().enumerate().filter_map(|(i, o)| graph.io_names.get(o).map(|n| (Some(i), n.clone()))));
    for (slot, name) in io {
        if !wanted.iter().any(|(_, n)| *n == name) {
            wanted.push((slot, name));
        }
    }
    let mut fixed: HashSet<String> = HashSet::new();
    for (slot, name) in wanted {
        let current = match slot {
            None => g.input[0].name.clone(),
            Some(i) => g.output[i].name.clone(),
        }
        .unwrap_or_default();
        if current == name {
            fixed.insert(name);
            continue;
        }
        let used = value_names(g);
        if used.contains(&name) {
            if fixed.contains(&name) {
                continue;
            }
            let mut free = format!("{name}.value");
            while used.contains(&free) {
                free.push('_');
            }
            rename_value(g, &name, &free);
        }
        // An output whose value is also the input or another output gets an Identity.
        let shared = fixed.contains(&current) || g.input.iter().chain(&g.output).filter(|v| v.name.as_ref() == Some(&current)).count() > 1;
        match slot {
            Some(i) if shared => {
                let node = NodeProto { input: vec![current], output: vec![name.clone()], name: Some(format!("{name}.identity")), op_type: Some("Identity".into()), ..Default::default() };
                g.node.push(node);
                g.output[i].name = Some(name.clone());
            }
            _ => rename_value(g, &current, &name),
        }
        fixed.insert(name);
    }
}

/// ONNX fp32 of `graph` with dense parameters `tensors` (by name).
pub fn encode_f32(graph: &Graph, tensors: &HashMap<String, Vec<f32>>) -> Result<Vec<u8>, ExportError> {
    Ok(build(graph, tensors, None)?.encode_to_vec())
}

/// ONNX of a stored model whose weights are (partly) int8, keeping them int8 in the
/// file (about a quarter of the fp32 size):
///
/// - full int8 (calibrated integer layers): QDQ, the integer layers' weights stored as
///   `weight_type`, their inputs and outputs quantized at squeeze's calibrated scales;
/// - weights-only (`--mode weights`), and any other int8 weight no integer kernel reads
///   (layers left float by a layer list, LSTM/GRU weights in front of a float
///   recurrent op): the int8 values with zero point 0 and their per-output-channel float
///   scales through DequantizeLinear into the float Gemm/Conv/LSTM/GRU: the function
///   squeeze's weights-only path computes (dequantized weights × float activations);
/// - dynamic (`--mode dynamic`): like weights-only. squeeze quantizes those layers'
///   inputs per row at run time for speed only; ONNX's DynamicQuantizeLinear quantizes
///   per tensor, another function, so the file keeps float activations.
///
/// Every other tensor is dense f32. [`ExportError::NotQuantized`] when the model has no
/// int8 weight.
pub fn encode_int8(model: &SqzModel, weight_type: WeightType) -> Result<Vec<u8>, ExportError> {
    if !model.tensors.iter().any(|t| matches!(t.values, Values::I8 { .. })) {
        return Err(ExportError::NotQuantized);
    }
    let mut dense = HashMap::new();
    let mut weights = HashMap::new();
    for t in &model.tensors {
        if let Values::I8 { q, scales } = &t.values {
            let mut full = vec![0i8; t.numel()];
            match &t.positions {
                Some(p) => p.iter().zip(q).for_each(|(&i, &v)| full[i as usize] = v),
                None => full.copy_from_slice(q),
            }
            weights.insert(t.name.clone(), (full, scales.clone()));
        }
        dense.insert(t.name.clone(), t.to_dense_f32());
    }
    let int8 = Int8 { plan: model.quant.clone(), weights, weight_type };
    Ok(build(&model.graph, &dense, Some(&int8))?.encode_to_vec())
}
