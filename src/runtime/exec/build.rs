//! Building a [`Plan`]: resolving the graph's nodes into kernels (timing candidate
//! kernels where several compute the same function), inserting u8 ⇄ f32 conversions and
//! finding the fused integer chain. Apart from running, which never changes the plan.

use std::collections::HashMap;

use super::{AttentionKernel, Encoding, IntChain, Kernel, Plan, Projection, RecurrentKernel, Repr, RuntimeError, Slot, Step, TIMED_BATCHES, Weights, run_linear_f32};
use crate::runtime::{intops, recurrent};
use crate::runtime::int8::{DynamicLinear, QuantizedConv2d, QuantizedLinear};
use crate::runtime::kernels::{DirectConv, Window};
use crate::runtime::packed::PackedLinear;
use crate::runtime::sparse::{CodebookF32, CsrF32};
use crate::runtime::transformer::{Heads, Patches};
use crate::spec::{ATTENTION_PROJECTIONS, Graph, INPUT, Nonlinearity, Op, PoolKind, QuantPlan, RECURRENT_PARAMS, Recurrent};

/// Threads a plan uses by default: every core for a text Transformer (token ids in;
/// large enough per sample that splitting one layer pays), one otherwise: the
/// classifier measurements (a ViT included) time one thread at batch 1 and split
/// batches among threads themselves (see [`throughput`]).
fn default_threads(graph: &Graph) -> usize {
    if graph.nodes.iter().any(|n| matches!(n.op, Op::Embedding { .. })) && graph.nodes.iter().any(|n| matches!(n.op, Op::SelfAttention { .. })) {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// A dense f32 Linear: weights packed once into the panels of squeeze's own kernel
/// where AVX2 or AVX-512 runs it ([`PackedLinear`]), else the general GEMM.
fn dense_linear(w: Vec<f32>, b: Option<Vec<f32>>, inf: usize, outf: usize) -> Kernel {
    if crate::runtime::isa::avx2() {
        Kernel::LinearPacked(Box::new(PackedLinear::new(&w, b.as_deref(), inf, outf)))
    } else {
        Kernel::LinearF32 { w, b, inf, outf }
    }
}

/// A LayerNorm or GELU node's kernel: f32, or the integer approximation when the plan
/// lists its kind in `integer_nonlinear`.
fn float_or_integer_nonlinearity(
    op: &Op,
    take: &mut dyn FnMut(&str) -> Result<Weights, RuntimeError>,
    integer_nonlinear: &std::collections::BTreeSet<Nonlinearity>,
) -> Result<Kernel, RuntimeError> {
    Ok(match *op {
        Op::LayerNorm { dim, eps } => {
            let (gamma, beta) = (take("weight")?.into_f32(), take("bias")?.into_f32());
            if integer_nonlinear.contains(&Nonlinearity::LayerNorm) {
                Kernel::LayerNormInt(Box::new(intops::IntLayerNorm::new(&gamma, &beta, eps)))
            } else {
                Kernel::LayerNorm { gamma, beta, dim, eps }
            }
        }
        _ if integer_nonlinear.contains(&Nonlinearity::Gelu) => Kernel::GeluInt(intops::IntGelu::default()),
        _ => Kernel::Gelu,
    })
}

/// The int8 query, key and value weights of an attention node stacked into one fused
/// `[3·inner, dim]` matrix (with their scales and biases), and its output projection's.
#[allow(clippy::type_complexity)]
fn fused_int8_projections<'a>(parts: &'a [(Weights, Vec<f32>)], node: &str) -> Result<(Vec<i8>, Vec<f32>, Vec<f32>, &'a [i8], &'a [f32]), RuntimeError> {
    let (mut wq, mut scales, mut bias) = (Vec::new(), Vec::new(), Vec::new());
    for (w, b) in &parts[..3] {
        let Weights::I8 { q, scales: sc } = w else {
            return Err(RuntimeError::NotInt8 { node: node.to_string() });
        };
        wq.extend_from_slice(q);
        scales.extend_from_slice(sc);
        bias.extend_from_slice(b);
    }
    let Weights::I8 { q: oq, scales: osc } = &parts[3].0 else {
        return Err(RuntimeError::NotInt8 { node: node.to_string() });
    };
    Ok((wq, scales, bias, oq, osc))
}

impl Plan {
    /// Resolves `graph` with `weights` (by parameter name) and the quantization plan.
    pub fn new(graph: &Graph, weights: HashMap<String, Weights>, quant: &QuantPlan) -> Result<Plan, RuntimeError> {
        Plan::with_encodings(graph, weights, quant, &HashMap::new())
    }

    /// As [`Plan::new`], with the stored encodings of weights (by parameter name): a
    /// Linear layer whose weight is stored sparse or as a codebook gets each kernel
    /// that encoding allows timed on its real shape, and the fastest per batch size
    /// runs (said in [`Plan::kernel_description`]). Other layers expand them to dense.
    pub fn with_encodings(
        graph: &Graph,
        mut weights: HashMap<String, Weights>,
        quant: &QuantPlan,
        encodings: &HashMap<String, Encoding>,
    ) -> Result<Plan, RuntimeError> {
        let shapes = graph.validate()?;
        let consumers = graph.consumers();
        let mut plan = Plan {
            steps: Vec::new(),
            slots: Vec::new(),
            outputs: Vec::new(),
            input_shape: graph.input_shape.clone(),
            int_layers: 0,
            dynamic_layers: 0,
            f32_layers: 0,
            dequantized_at_load: false,
            expanded: Vec::new(),
            choices: Vec::new(),
            input_read_once: false,
            chain: None,
            linear_rows: HashMap::new(),
            threads: default_threads(graph),
            integer_nonlinear: Vec::new(),
            head: graph.outputs.iter().position(|o| o == graph.head()).unwrap_or(0),
            logits_name: match graph.node(graph.head()) {
                Some(n) if matches!(n.op, Op::Softmax) => n.inputs[0].clone(),
                _ => graph.head().to_string(),
            },
        };
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut converted: HashMap<usize, usize> = HashMap::new();
        let input = plan.add_slot(Repr::F32, graph.input_len(), INPUT);
        slot_of.insert(INPUT.into(), input);
        let mut fused_relu: HashMap<String, String> = HashMap::new();

        for node in &graph.nodes {
            if let Some(src) = fused_relu.get(&node.name) {
                let s = slot_of[src];
                plan.slots[s].names.push(node.name.clone());
                slot_of.insert(node.name.clone(), s);
                continue;
            }
            let out_len: usize = shapes[&node.name].iter().product();
            let in_shape = &shapes[&node.inputs[0]];
            let x = slot_of[&node.inputs[0]];
            // A Linear on a sequence runs one row per position.
            let linear_rows = match node.op {
                Op::Linear { in_features, .. } => in_shape.iter().product::<usize>() / in_features.max(1),
                _ => 1,
            };
            match &node.op {
                Op::Linear { .. } | Op::Conv2d { .. } => {
                    let (mut w, b) = take_weights(&mut weights, graph, &node.name)?;
                    // Grouped and dilated convs run as the plain conv of their expanded
                    // weight (exact zeros elsewhere), on the same kernels.
                    let expansion = crate::spec::ConvExpansion::of(&node.op);
                    if let Some(e) = expansion.filter(|e| !e.is_plain()) {
                        w = match w {
                            Weights::F32(v) => Weights::F32(e.expand(&v)),
                            Weights::I8 { q, scales } => Weights::I8 { q: e.expand(&q), scales },
                        };
                    }
                    let kernel_eff = expansion.map_or(1, |e| e.effective_kernel());
                    let enc = encodings.get(&format!("{}.weight", node.name)).cloned().unwrap_or_default();
                    let is_linear = matches!(node.op, Op::Linear { .. });
                    if !is_linear {
                        if enc.sparse {
                            plan.note_expanded("sparse");
                        }
                        if enc.codebook.is_some() {
                            plan.note_expanded("codebook");
                        }
                    }
                    if quant.dynamic.contains(&node.name) && quant.integer_nodes.contains(&node.name) {
                        let (Weights::I8 { q, scales }, Op::Linear { in_features, out_features, .. }) = (w, &node.op) else {
                            return Err(RuntimeError::NotDynamic { node: node.name.clone() });
                        };
                        let x = plan.convert(x, Repr::F32, &mut converted);
                        let kernel = Kernel::LinearDynamic(Box::new(DynamicLinear::new(&q, &scales, *out_features, *in_features, b.as_deref())));
                        let out = plan.add_slot(Repr::F32, out_len, &node.name);
                        plan.steps.push(Step { kernel, inputs: vec![x], out });
                        if linear_rows != 1 {
                            plan.linear_rows.insert(plan.steps.len() - 1, linear_rows);
                        }
                        slot_of.insert(node.name.clone(), out);
                        plan.int_layers += 1;
                        plan.dynamic_layers += 1;
                        continue;
                    }
                    if quant.integer_nodes.contains(&node.name) {
                        let Weights::I8 { q, scales } = w else {
                            return Err(RuntimeError::NotInt8 { node: node.name.clone() });
                        };
                        let xq = match plan.slots[x].repr {
                            Repr::U8(qp) => (x, qp),
                            Repr::F32 => {
                                let qp = *quant.activations.get(&node.inputs[0]).ok_or_else(|| {
                                    RuntimeError::MissingQParams { node: node.name.clone(), value: node.inputs[0].clone() }
                                })?;
                                (plan.convert(x, Repr::U8(qp), &mut converted), qp)
                            }
                        };
                        // Fuse a ReLU that is the only reader, when its output is calibrated.
                        let relu = graph
                            .nodes
                            .iter()
                            .find(|n| n.inputs.first() == Some(&node.name) && matches!(n.op, Op::Relu))
                            .filter(|r| consumers.get(&node.name) == Some(&1) && quant.activations.contains_key(&r.name));
                        let out_name = relu.map(|r| r.name.clone()).unwrap_or_else(|| node.name.clone());
                        let out_qp = quant.activations.get(&out_name).copied();
                        let repr = out_qp.map_or(Repr::F32, Repr::U8);
                        let kernel = match node.op {
                            Op::Linear { in_features, out_features, .. } => {
                                let dense = QuantizedLinear::new(&q, &scales, out_features, in_features, b.as_deref(), xq.1, out_qp, relu.is_some());
                                if enc.sparse {
                                    let zeros = dense.zero_fraction();
                                    let sparse = dense.clone().with_sparse_product();
                                    let cands = vec![("int8-dense", Kernel::LinearI8(Box::new(dense))), ("int8-sparse-csr", Kernel::LinearI8(Box::new(sparse)))];
                                    plan.choose(&node.name, &format!("{:.0}% zeros", zeros * 100.0), cands, in_features, out_features, out_qp.is_some())
                                } else {
                                    Kernel::LinearI8(Box::new(dense))
                                }
                            }
                            Op::Conv2d { in_channels, out_channels, stride, padding, .. } => {
                                Kernel::ConvI8(Box::new(QuantizedConv2d::new(
                                    &q, &scales, out_channels, in_channels, in_shape[1], in_shape[2], kernel_eff, stride, padding,
                                    b.as_deref(), xq.1, out_qp, relu.is_some(),
                                )))
                            }
                            _ => unreachable!(),
                        };
                        let out = plan.add_slot(repr, out_len, &node.name);
                        plan.steps.push(Step { kernel, inputs: vec![xq.0], out });
                        if linear_rows != 1 {
                            plan.linear_rows.insert(plan.steps.len() - 1, linear_rows);
                        }
                        slot_of.insert(node.name.clone(), out);
                        if let Some(r) = relu {
                            fused_relu.insert(r.name.clone(), node.name.clone());
                        }
                        plan.int_layers += 1;
                        continue;
                    }
                    plan.dequantized_at_load |= matches!(w, Weights::I8 { .. });
                    let w = w.into_f32();
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    let kernel = match node.op {
                        Op::Linear { in_features, out_features, .. } => {
                            let mut cands = Vec::new();
                            let mut what = Vec::new();
                            if enc.sparse {
                                let csr = CsrF32::from_dense(&w, out_features, in_features);
                                what.push(format!("{:.0}% zeros", 100.0 * (1.0 - csr.nnz() as f64 / w.len().max(1) as f64)));
                                cands.push(("f32-sparse-csr", Kernel::LinearCsr { csr, b: b.clone() }));
                            }
                            if let Some(cb) = &enc.codebook
                                && let Some(cb) = CodebookF32::new(&cb.indices, cb.kept.as_deref(), &cb.centroids, out_features, in_features)
                            {
                                what.push(format!("{} shared values", enc.codebook.as_ref().map_or(0, |c| c.centroids.len())));
                                cands.push(("f32-codebook", Kernel::LinearCodebook { cb, b: b.clone() }));
                            }
                            let dense = dense_linear(w, b, in_features, out_features);
                            if cands.is_empty() {
                                dense
                            } else {
                                cands.insert(0, ("f32-dense", dense));
                                plan.choose(&node.name, &what.join(", "), cands, in_features, out_features, false)
                            }
                        }
                        Op::Conv2d { in_channels, out_channels, stride, padding, .. } => {
                            let g = Window { channels: in_channels, height: in_shape[1], width: in_shape[2], kernel: kernel_eff, stride, padding };
                            let direct = DirectConv::new(&g, &w, b.as_deref(), out_channels).map(Box::new);
                            Kernel::ConvF32 { w, b, g, oc: out_channels, direct }
                        }
                        _ => unreachable!(),
                    };
                    plan.f32_layers += 1;
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    if linear_rows != 1 {
                        plan.linear_rows.insert(plan.steps.len() - 1, linear_rows);
                    }
                    slot_of.insert(node.name.clone(), out);
                }
                Op::MaxPool2d { kernel, stride, padding } => {
                    let g = Window { channels: in_shape[0], height: in_shape[1], width: in_shape[2], kernel: *kernel, stride: *stride, padding: *padding };
                    let repr = plan.slots[x].repr;
                    let out = plan.add_slot(repr, out_len, &node.name);
                    plan.steps.push(Step { kernel: Kernel::MaxPool(g), inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                // Float-only ops: in an int8 plan they run in f32 between integer layers.
                Op::AvgPool2d { .. } | Op::Sigmoid | Op::Tanh => {
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    let kernel = match node.op {
                        Op::AvgPool2d { kernel, stride, padding } => Kernel::AvgPool(Window {
                            channels: in_shape[0],
                            height: in_shape[1],
                            width: in_shape[2],
                            kernel,
                            stride,
                            padding,
                        }),
                        Op::Sigmoid => Kernel::Sigmoid,
                        _ => Kernel::Tanh,
                    };
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Flatten => {
                    plan.slots[x].names.push(node.name.clone());
                    slot_of.insert(node.name.clone(), x);
                }
                Op::Relu => {
                    let repr = plan.slots[x].repr;
                    let kernel = match repr {
                        Repr::F32 => Kernel::Relu,
                        Repr::U8(qp) => Kernel::ReluU8(qp.zero_point.clamp(0, 255) as u8),
                    };
                    let out = plan.add_slot(repr, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Normalize { mean, std } => {
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel: Kernel::Normalize { mean: mean.clone(), std: std.clone() }, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Lstm { .. } | Op::Gru { .. } => {
                    let geo = node.op.recurrent().expect("a recurrent op");
                    if quant.integer_nodes.contains(&node.name) {
                        let kernel = plan.integer_recurrent(graph, node, geo, in_shape[0], &mut weights, quant, x, &mut converted)?;
                        let out = plan.add_slot(Repr::F32, out_len, &node.name);
                        plan.steps.push(Step { kernel: kernel.0, inputs: vec![kernel.1], out });
                        slot_of.insert(node.name.clone(), out);
                        plan.int_layers += 1;
                        continue;
                    }
                    let specs = graph.parameters();
                    let mut take = |suffix: &str| -> Result<Option<Vec<f32>>, RuntimeError> {
                        let name = format!("{}.{suffix}", node.name);
                        let Some(spec) = specs.iter().find(|p| p.name == name) else { return Ok(None) };
                        let w = weights.remove(&name).ok_or_else(|| RuntimeError::MissingTensor { name: name.clone() })?;
                        if w.len() != spec.numel() {
                            return Err(RuntimeError::TensorSize { name, expected: spec.numel(), got: w.len() });
                        }
                        plan.dequantized_at_load |= matches!(w, Weights::I8 { .. });
                        Ok(Some(w.to_f32()))
                    };
                    let mut dirs = Vec::new();
                    for d in 0..geo.directions() {
                        let mut param = |k: usize| take(&Recurrent::param_suffix(RECURRENT_PARAMS[k].0, d));
                        let [w_ih, w_hh, b_ih, b_hh] = [param(0)?, param(1)?, param(2)?, param(3)?];
                        dirs.push((w_ih.unwrap_or_default(), w_hh.unwrap_or_default(), b_ih, b_hh));
                    }
                    let kernel = RecurrentKernel { geo, steps: in_shape[0], dirs };
                    let x = plan.convert(x, Repr::F32, &mut converted);
                    plan.f32_layers += 1;
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel: Kernel::Recurrent(Box::new(kernel)), inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Embedding { .. }
                | Op::PositionEmbedding { .. }
                | Op::ClsToken { .. }
                | Op::PatchEmbed { .. }
                | Op::LayerNorm { .. }
                | Op::Gelu
                | Op::SelfAttention { .. }
                | Op::Pool { .. } => {
                    let integer = quant.integer_nodes.contains(&node.name);
                    if integer && !matches!(node.op, Op::SelfAttention { .. }) {
                        return Err(RuntimeError::IntegerUnsupported { node: node.name.clone(), op: node.op.kind() });
                    }
                    let specs = graph.parameters();
                    let mut take = |suffix: &str| -> Result<Weights, RuntimeError> {
                        let name = format!("{}.{suffix}", node.name);
                        let expected = specs.iter().find(|p| p.name == name).map_or(0, |p| p.numel());
                        let w = weights.remove(&name).ok_or_else(|| RuntimeError::MissingTensor { name: name.clone() })?;
                        if w.len() != expected {
                            return Err(RuntimeError::TensorSize { name, expected, got: w.len() });
                        }
                        Ok(w)
                    };
                    let seq = in_shape.first().copied().unwrap_or(1);
                    let kernel = match node.op {
                        Op::Embedding { vocab, dim, pad_token } => {
                            Kernel::Embedding { node: node.name.clone(), table: take("weight")?.into_f32(), vocab, dim, pad: pad_token }
                        }
                        Op::PositionEmbedding { dim, .. } => Kernel::AddPositions { table: take("weight")?.into_f32(), seq, dim },
                        Op::ClsToken { dim } => Kernel::PrependCls { row: take("weight")?.into_f32(), seq, dim },
                        Op::PatchEmbed { channels, patch, dim } => {
                            let geo = Patches { channels, height: in_shape[1], width: in_shape[2], patch };
                            plan.f32_layers += 1;
                            Kernel::PatchEmbed { geo, w: take("weight")?.into_f32(), b: take("bias")?.into_f32(), dim }
                        }
                        Op::LayerNorm { .. } | Op::Gelu => float_or_integer_nonlinearity(&node.op, &mut take, &quant.integer_nonlinear)?,
                        Op::Pool { kind } => Kernel::Pool { seq, dim: in_shape[1], mean: kind == PoolKind::Mean },
                        Op::SelfAttention { dim, .. } => {
                            let geo = Heads::new(node.op.attention().expect("an attention node"), seq);
                            let inner = geo.inner();
                            let mut parts = Vec::new();
                            for proj in ATTENTION_PROJECTIONS {
                                parts.push((take(&format!("{proj}.weight"))?, take(&format!("{proj}.bias"))?.into_f32()));
                            }
                            let context = format!("{}.context", node.name);
                            let (qkv, output) = if integer && quant.dynamic.contains(&node.name) {
                                let (wq, scales, bias, oq, osc) = fused_int8_projections(&parts, &node.name)?;
                                plan.int_layers += 1;
                                plan.dynamic_layers += 1;
                                (
                                    Projection::Dynamic(Box::new(DynamicLinear::new(&wq, &scales, 3 * inner, dim, Some(&bias)))),
                                    Projection::Dynamic(Box::new(DynamicLinear::new(oq, osc, dim, inner, Some(&parts[3].1)))),
                                )
                            } else if integer {
                                let qp = |value: &str| {
                                    quant.activations.get(value).copied().ok_or_else(|| RuntimeError::MissingQParams { node: node.name.clone(), value: value.to_string() })
                                };
                                let (in_qp, ctx_qp) = (qp(&node.inputs[0])?, qp(&context)?);
                                let (wq, scales, bias, oq, osc) = fused_int8_projections(&parts, &node.name)?;
                                let qkv = QuantizedLinear::new(&wq, &scales, 3 * inner, dim, Some(&bias), in_qp, None, false);
                                let out = QuantizedLinear::new(oq, osc, dim, inner, Some(&parts[3].1), ctx_qp, None, false);
                                plan.int_layers += 1;
                                (Projection::I8 { layer: Box::new(qkv), input: in_qp }, Projection::I8 { layer: Box::new(out), input: ctx_qp })
                            } else {
                                let mut w = Vec::with_capacity(3 * inner * dim);
                                let mut b = Vec::with_capacity(3 * inner);
                                for (pw, pb) in &parts[..3] {
                                    plan.dequantized_at_load |= matches!(pw, Weights::I8 { .. });
                                    w.extend(pw.to_f32());
                                    b.extend_from_slice(pb);
                                }
                                plan.dequantized_at_load |= matches!(parts[3].0, Weights::I8 { .. });
                                plan.f32_layers += 1;
                                (Projection::f32(w, b, dim, 3 * inner), Projection::f32(parts[3].0.to_f32(), parts[3].1.clone(), inner, dim))
                            };
                            let integer_softmax = quant.integer_nonlinear.contains(&Nonlinearity::Softmax);
                            Kernel::Attention(Box::new(AttentionKernel { geo, qkv, output, context, integer_softmax }))
                        }
                        _ => unreachable!(),
                    };
                    let x = match (&kernel, plan.slots[x].repr) {
                        (Kernel::Attention(a), Repr::U8(qp)) if matches!(&a.qkv, Projection::I8 { input, .. } if *input == qp) => x,
                        _ => plan.convert(x, Repr::F32, &mut converted),
                    };
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs: vec![x], out });
                    slot_of.insert(node.name.clone(), out);
                }
                Op::Add | Op::Softmax => {
                    let inputs: Vec<usize> = node
                        .inputs
                        .iter()
                        .map(|v| {
                            let s = slot_of[v];
                            plan.convert(s, Repr::F32, &mut converted)
                        })
                        .collect();
                    let kernel = if matches!(node.op, Op::Add) { Kernel::Add } else { Kernel::Softmax };
                    let out = plan.add_slot(Repr::F32, out_len, &node.name);
                    plan.steps.push(Step { kernel, inputs, out });
                    slot_of.insert(node.name.clone(), out);
                }
            }
        }
        for o in &graph.outputs {
            let s = slot_of[o];
            let s = plan.convert(s, Repr::F32, &mut converted);
            plan.outputs.push(s);
        }
        plan.integer_nonlinear = quant.integer_nonlinear.iter().map(|k| k.name()).collect();
        plan.input_read_once = plan.steps.iter().flat_map(|s| &s.inputs).filter(|&&i| i == input).count() == 1 && !plan.outputs.contains(&input);
        plan.chain = plan.find_chain();
        Ok(plan)
    }

    /// An integer LSTM/GRU node: its int8 weights, its input converted to u8 at the
    /// calibrated parameters. Returns the kernel and the slot it reads.
    #[allow(clippy::too_many_arguments)]
    fn integer_recurrent(
        &mut self,
        graph: &Graph,
        node: &crate::spec::Node,
        geo: Recurrent,
        steps: usize,
        weights: &mut HashMap<String, Weights>,
        quant: &QuantPlan,
        x: usize,
        converted: &mut HashMap<usize, usize>,
    ) -> Result<(Kernel, usize), RuntimeError> {
        let specs = graph.parameters();
        let mut take = |suffix: &str| -> Result<Option<Weights>, RuntimeError> {
            let name = format!("{}.{suffix}", node.name);
            let Some(spec) = specs.iter().find(|p| p.name == name) else { return Ok(None) };
            let w = weights.remove(&name).ok_or_else(|| RuntimeError::MissingTensor { name: name.clone() })?;
            if w.len() != spec.numel() {
                return Err(RuntimeError::TensorSize { name, expected: spec.numel(), got: w.len() });
            }
            Ok(Some(w))
        };
        let mut dirs = Vec::new();
        for d in 0..geo.directions() {
            let mut param = |k: usize| take(&Recurrent::param_suffix(RECURRENT_PARAMS[k].0, d));
            let [w_ih, w_hh, b_ih, b_hh] = [param(0)?, param(1)?, param(2)?, param(3)?];
            let (Some(Weights::I8 { q: q_ih, scales: s_ih }), Some(Weights::I8 { q: q_hh, scales: s_hh })) = (w_ih, w_hh) else {
                return Err(RuntimeError::NotInt8 { node: node.name.clone() });
            };
            dirs.push(((q_ih, s_ih), (q_hh, s_hh), b_ih.map(|b| b.to_f32()), b_hh.map(|b| b.to_f32())));
        }
        let input_qp = match self.slots[x].repr {
            Repr::U8(qp) => qp,
            Repr::F32 => *quant
                .activations
                .get(&node.inputs[0])
                .ok_or_else(|| RuntimeError::MissingQParams { node: node.name.clone(), value: node.inputs[0].clone() })?,
        };
        let xq = self.convert(x, Repr::U8(input_qp), converted);
        let mut dirs = dirs.into_iter();
        let ((q_ih, s_ih), (q_hh, s_hh), b_ih, b_hh) = dirs.next().expect("a recurrent node has a forward direction");
        let mut cell = recurrent::QuantizedRecurrent::new(geo, (&q_ih, &s_ih), (&q_hh, &s_hh), b_ih, b_hh, input_qp);
        if let Some(((q_ih, s_ih), (q_hh, s_hh), b_ih, b_hh)) = dirs.next() {
            cell = cell.with_reverse((&q_ih, &s_ih), (&q_hh, &s_hh), b_ih, b_hh);
        }
        let cell = cell.with_integer_gates(quant.integer_nonlinear.contains(&Nonlinearity::Gates));
        Ok((Kernel::RecurrentI8 { cell: Box::new(cell), steps }, xq))
    }

    /// Times each candidate kernel of a Linear layer (`inf → outf`, the first candidate
    /// being the dense one) at every batch of [`TIMED_BATCHES`] on synthetic input,
    /// records what won and by how much, and returns the kernel (or a by-batch choice).
    /// Every candidate computes the same function: integer ones bit for bit, float ones
    /// to rounding.
    fn choose(&mut self, node: &str, what: &str, cands: Vec<(&'static str, Kernel)>, inf: usize, outf: usize, u8_out: bool) -> Kernel {
        let mut winners: Vec<(usize, usize, f64)> = Vec::new(); // (batch, candidate, speed-up over dense)
        for &batch in &TIMED_BATCHES {
            let times: Vec<f64> = cands.iter().map(|(_, k)| time_linear(k, batch, inf, outf, u8_out)).collect();
            let best = (0..times.len()).min_by(|&a, &b| times[a].total_cmp(&times[b])).unwrap_or(0);
            winners.push((batch, best, times[0] / times[best]));
        }
        let mut parts = Vec::new();
        for (i, &(batch, best, gain)) in winners.iter().enumerate() {
            if i > 0 && winners[i - 1].1 == best {
                continue;
            }
            let mut p = format!("b{batch}+ {}", cands[best].0);
            if best != 0 {
                p.push_str(&format!(" {gain:.2}× dense"));
            }
            parts.push(p);
        }
        self.choices.push(format!("{node} ({what}): {}", parts.join(", ")));
        let mut by_batch: Vec<(usize, usize)> = Vec::new(); // (upper bound, candidate)
        for (i, &(_, best, _)) in winners.iter().enumerate() {
            let bound = TIMED_BATCHES.get(i + 1).copied().unwrap_or(usize::MAX);
            match by_batch.last_mut() {
                Some(last) if last.1 == best => last.0 = bound,
                _ => by_batch.push((bound, best)),
            }
        }
        if by_batch.len() == 1 {
            return cands.into_iter().nth(by_batch[0].1).expect("winner is a candidate").1;
        }
        Kernel::ByBatch(by_batch.iter().map(|&(bound, c)| (bound, cands[c].1.clone())).collect())
    }

    /// The longest `Quantize(input) → LinearI8 → … → LinearI8` prefix whose intermediate
    /// values have no other reader (see [`IntChain`]).
    fn find_chain(&self) -> Option<IntChain> {
        let readers = |slot: usize| self.steps.iter().flat_map(|s| &s.inputs).filter(|&&i| i == slot).count();
        if !self.input_read_once {
            return None;
        }
        let normalize = match self.steps.first() {
            Some(Step { kernel: Kernel::Normalize { .. }, inputs, out }) if inputs[0] == 0 => {
                if readers(*out) != 1 || self.outputs.contains(out) {
                    return None;
                }
                true
            }
            _ => false,
        };
        let q = normalize as usize;
        match self.steps.get(q) {
            Some(Step { kernel: Kernel::Quantize(_), inputs, .. }) if inputs[0] == if normalize { self.steps[0].out } else { 0 } => {}
            _ => return None,
        }
        let mut len = q + 1;
        while let Some(step) = self.steps.get(len) {
            let prev = self.steps[len - 1].out;
            let linear = match &step.kernel {
                Kernel::LinearI8(_) => true,
                Kernel::ByBatch(by) => by.iter().all(|(_, k)| matches!(k, Kernel::LinearI8(_))),
                _ => false,
            };
            if !linear || step.inputs[0] != prev || readers(prev) != 1 || self.outputs.contains(&prev) {
                break;
            }
            len += 1;
        }
        (len > q + 1).then_some(IntChain { steps: len, normalize })
    }


    fn add_slot(&mut self, repr: Repr, len: usize, name: &str) -> usize {
        self.slots.push(Slot { repr, len, names: vec![name.to_string()] });
        self.slots.len() - 1
    }

    /// The slot holding `s` in representation `want`, adding a conversion step once.
    fn convert(&mut self, s: usize, want: Repr, cache: &mut HashMap<usize, usize>) -> usize {
        let have = self.slots[s].repr;
        if have == want {
            return s;
        }
        if let Some(&c) = cache.get(&s)
            && self.slots[c].repr == want
        {
            return c;
        }
        let kernel = match (have, want) {
            (Repr::F32, Repr::U8(qp)) => Kernel::Quantize(qp),
            (Repr::U8(qp), Repr::F32) => Kernel::Dequantize(qp),
            (Repr::U8(from), Repr::U8(to)) => {
                // Requantize through f32: rare (a value read with two calibrations).
                let f = self.convert(s, Repr::F32, cache);
                let out = self.add_slot(want, self.slots[s].len, &format!("{}@q", self.slots[s].names[0]));
                self.steps.push(Step { kernel: Kernel::Quantize(to), inputs: vec![f], out });
                let _ = from;
                return out;
            }
            (Repr::F32, Repr::F32) => unreachable!(),
        };
        let out = self.add_slot(want, self.slots[s].len, &format!("{}@{}", self.slots[s].names[0], if want == Repr::F32 { "f32" } else { "u8" }));
        self.steps.push(Step { kernel, inputs: vec![s], out });
        cache.insert(s, out);
        out
    }
}


/// Best-of-several seconds for one call of a Linear kernel on `batch` synthetic samples.
fn time_linear(kernel: &Kernel, batch: usize, inf: usize, outf: usize, u8_out: bool) -> f64 {
    // Enough repetitions for a stable minimum, about the same total work per batch size.
    let reps = (64 / batch).clamp(3, 32);
    let mut best = f64::INFINITY;
    match kernel {
        Kernel::LinearI8(l) => {
            let x: Vec<u8> = (0..batch * inf).map(|i| ((i * 7919) % 251) as u8).collect();
            let (mut yq, mut yf, mut acc) = (vec![0u8; batch * outf], vec![0f32; batch * outf], Vec::new());
            for _ in 0..reps {
                let t = std::time::Instant::now();
                if u8_out {
                    l.forward_u8(&x, batch, &mut yq, &mut acc);
                } else {
                    l.forward_f32(&x, batch, &mut yf, &mut acc);
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        _ => {
            let x: Vec<f32> = (0..batch * inf).map(|i| ((i * 7919) % 251) as f32 / 251.0).collect();
            let (mut y, mut scratch) = (vec![0f32; batch * outf], Vec::new());
            for _ in 0..reps {
                let t = std::time::Instant::now();
                run_linear_f32(kernel, &x, batch, &mut y, &mut scratch, 1);
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
    }
    best
}

fn take_weights(
    weights: &mut HashMap<String, Weights>,
    graph: &Graph,
    node: &str,
) -> Result<(Weights, Option<Vec<f32>>), RuntimeError> {
    let spec = graph.parameters();
    let find = |n: &str| spec.iter().find(|p| p.name == n).map(|p| p.numel());
    let wname = format!("{node}.weight");
    let w = weights.remove(&wname).ok_or_else(|| RuntimeError::MissingTensor { name: wname.clone() })?;
    let expected = find(&wname).unwrap_or(0);
    if w.len() != expected {
        return Err(RuntimeError::TensorSize { name: wname, expected, got: w.len() });
    }
    let bname = format!("{node}.bias");
    let b = match find(&bname) {
        None => None,
        Some(len) => {
            let b = weights.remove(&bname).ok_or_else(|| RuntimeError::MissingTensor { name: bname.clone() })?.to_f32();
            if b.len() != len {
                return Err(RuntimeError::TensorSize { name: bname, expected: len, got: b.len() });
            }
            Some(b)
        }
    };
    Ok((w, b))
}
