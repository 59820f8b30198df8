//! squeeze graph → ONNX (opset 13).
//!
//! - [`export_f32`]: any graph with dense f32 parameters (a stored model decoded from any
//!   encoding: dense, sparse, codebook, int8 dequantized) as plain ONNX.
//! - [`export_qdq`]: a quantized `.sqz` model as ONNX QDQ: every integer layer reads its
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
//!   (TensorRT).
//!
//! This module only encodes (format depends on spec, not on the runtime); the check
//! that the bytes import again and compute what the model computes is
//! `store::export_onnx`, which every caller goes through before writing a file.

use std::collections::HashMap;

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
    #[error("the model has no integer layers to export as QDQ int8 (quantize it with mode = \"full\" first, or export fp32)")]
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
                let (qn, sn, zn) = (format!("{onnx}.q"), format!("{onnx}.scale"), format!("{onnx}.zero_point"));
                w.inits.push(tensor_i8(&qn, &[1, g, cols], &reorder_blocks(q, h * cols, order)));
                w.inits.push(tensor_f32(&sn, &[g], &reorder_blocks(scales, h, order)));
                w.inits.push(tensor_i8(&zn, &[g], &vec![0; g]));
                w.node("DequantizeLinear", &format!("{onnx}.dequantize"), vec![qn, sn, zn], onnx.clone(), vec![int("axis", 1)]);
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
        let integer = int8.filter(|q| q.plan.integer_nodes.contains(&node.name) && node.op.has_weight());
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
                    match q.weight_type {
                        WeightType::Uint8 => {
                            let shifted: Vec<u8> = wq.iter().map(|&v| (v as i16 + 128) as u8).collect();
                            w.inits.push(tensor_u8(&format!("{wname}.q"), &wshape, &shifted));
                            w.inits.push(tensor_u8(&format!("{wname}.zero_point"), &[oc], &vec![128; oc]));
                        }
                        WeightType::Int8 => {
                            w.inits.push(tensor_i8(&format!("{wname}.q"), &wshape, wq));
                            w.inits.push(tensor_i8(&format!("{wname}.zero_point"), &[oc], &vec![0; oc]));
                        }
                    }
                    w.inits.push(tensor_f32(&format!("{wname}.scale"), &[oc], ws));
                    w.node(
                        "DequantizeLinear",
                        &format!("{wname}.dequantize"),
                        vec![format!("{wname}.q"), format!("{wname}.scale"), format!("{wname}.zero_point")],
                        format!("{wname}.dq"),
                        vec![int("axis", 0)],
                    );
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
                    w.inits.push(tensor_f32(&wname, &wshape, get(&wname)?));
                    inputs.push(x.clone());
                    inputs.push(wname.clone());
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
    let g = GraphProto {
        node: w.nodes,
        name: Some("squeeze".into()),
        initializer: w.inits,
        doc_string: None,
        input: vec![value_info(INPUT, &graph.input_shape)],
        output: outputs,
        value_info: Vec::new(),
    };
    Ok(ModelProto {
        ir_version: Some(7),
        producer_name: Some("squeeze".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: Some(if int8.is_some() { "squeeze QDQ int8 export".into() } else { "squeeze fp32 export".into() }),
        graph: Some(g),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(EXPORT_OPSET) }],
        metadata_props: Vec::new(),
    })
}

/// ONNX fp32 of `graph` with dense parameters `tensors` (by name).
pub fn encode_f32(graph: &Graph, tensors: &HashMap<String, Vec<f32>>) -> Result<Vec<u8>, ExportError> {
    Ok(build(graph, tensors, None)?.encode_to_vec())
}

/// ONNX QDQ int8 of a quantized stored model (the integer layers' weights as
/// `weight_type`, every other tensor as dense f32; recurrent layers' int8 weights stay
/// int8 in front of a float LSTM/GRU, where no integer kernel reads them).
pub fn encode_qdq(model: &SqzModel, weight_type: WeightType) -> Result<Vec<u8>, ExportError> {
    if model.quant.integer_nodes.is_empty() {
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
