//! Forward and backward of a whole graph over buffers allocated once.

use std::mem::take;

use super::recurrent::RecurrentLayer;
use super::transformer::{affine, affine_backward, layer_norm_backward, AttentionLayer, PatchLayer};
use crate::runtime::transformer::{self as tf, Heads, Patches, ValidLengths};
use super::{Model, Params};
use crate::runtime::kernels::{avgpool, avgpool_backward_add, col2im_add_batch, conv2d_forward, conv_chunk, direct_weight_grad, im2col_batch, maxpool, samples_to_channels, sgemm, softmax_rows, DirectConv, MatRef, Window};
use crate::spec::{ConvExpansion, Graph, Op, PoolKind, ATTENTION_PROJECTIONS, INPUT};

/// Teacher probabilities for knowledge distillation (Hinton et al. 2015): the loss
/// becomes `α·T²·KL(teacher ‖ softmax(student/T)) + (1−α)·CE(student, labels)`, where
/// `probs` holds `softmax(teacher_logits / T)` per sample of the batch.
#[derive(Clone, Copy, Debug)]
pub struct SoftTargets<'a> {
    pub probs: &'a [f32],
    pub alpha: f32,
    pub temperature: f32,
}

/// One node, resolved: value ids (0 is the graph input, node `i` writes value `i + 1`),
/// parameter ranges in the flat buffer and the window geometry of conv/pool layers.
#[derive(Clone, Debug)]
struct Step {
    op: Op,
    inputs: Vec<usize>,
    out: usize,
    weight: Option<std::ops::Range<usize>>,
    bias: Option<std::ops::Range<usize>>,
    window: Option<Window>,
    /// A grouped or dilated conv, run as the plain conv of its expanded weight.
    expansion: Option<ConvExpansion>,
}

/// Activations, gradients and scratch of one worker for batches of up to `capacity`
/// samples. Built once per (model, batch size) and reused for every step.
pub struct Workspace {
    capacity: usize,
    steps: Vec<Step>,
    value_len: Vec<usize>,
    acts: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    /// im2col matrix `[C·k·k, chunk·positions]` of each conv node for one chunk of
    /// samples: small enough to stay in cache, rebuilt by the backward pass rather
    /// than kept for the whole batch.
    cols: Vec<Vec<f32>>,
    /// Column gradient of a conv node for one chunk of samples (only where the input
    /// needs a gradient).
    dcols: Vec<Vec<f32>>,
    /// A conv product for one chunk in channel-major layout `[out_channels,
    /// chunk·positions]`, shared by all conv nodes (forward output before the
    /// scatter, backward `dy`).
    conv_tmp: Vec<f32>,
    /// Conv nodes that run on the direct kernel (weights repacked every forward).
    direct: Vec<Option<DirectConv>>,
    direct_scratch: Vec<f32>,
    /// Per grouped or dilated conv node: its expanded weight (rebuilt every forward)
    /// and that weight's gradient before it is gathered back.
    expanded_w: Vec<Vec<f32>>,
    expanded_dw: Vec<Vec<f32>>,
    /// During a backward pass: whether a value's gradient has been written yet.
    written: Vec<bool>,
    /// Whether the loss gradient with respect to each value is needed: values that
    /// depend on no parameter (the input, its normalisation) get none.
    needs_grad: Vec<bool>,
    argmax: Vec<Vec<u32>>,
    /// LSTM/GRU nodes: parameter ranges and their forward/backward buffers.
    recurrent: Vec<Option<RecurrentLayer>>,
    /// SelfAttention nodes: parameter ranges and the buffers their backward reads.
    attention: Vec<Option<AttentionLayer>>,
    /// PatchEmbed nodes: the gathered patches of the last forward.
    patches: Vec<Option<PatchLayer>>,
    /// Sequence values: positions per sample (for the Transformer ops).
    seq_len: Vec<usize>,
    /// Valid (non-padding) lengths of the current batch, set by an Embedding with a pad token.
    valid: ValidLengths,
    /// Gradient of the loss with respect to every parameter, same layout as [`Params::data`].
    pub param_grad: Vec<f32>,
    head: usize,
    /// The value the loss gradient enters at (the logits): the head's input when the
    /// head is a Softmax fused with the cross-entropy, else the head itself.
    logits: usize,
    fused_softmax: bool,
    probs: Vec<f32>,
}

impl Workspace {
    /// Buffers for `model`'s graph and batches of up to `capacity` samples.
    /// The first graph output is the classifier head the loss is computed on.
    pub fn new(model: &Model, capacity: usize) -> Workspace {
        let graph: &Graph = &model.graph;
        let shapes = graph.validate().expect("a Model's graph is validated when the model is built");
        let mut ids = std::collections::HashMap::new();
        ids.insert(INPUT.to_string(), 0usize);
        let mut value_len = vec![graph.input_len()];
        let mut steps = Vec::with_capacity(graph.nodes.len());
        for (i, node) in graph.nodes.iter().enumerate() {
            let inputs: Vec<usize> = node.inputs.iter().map(|v| ids[v]).collect();
            let in_shape = &shapes[&node.inputs[0]];
            let range = |name: String| model.params.index(&name).map(|j| model.params.range(j));
            let window = match node.op {
                Op::Conv2d { in_channels, stride, padding, .. } => Some(Window {
                    channels: in_channels,
                    height: in_shape[1],
                    width: in_shape[2],
                    kernel: ConvExpansion::of(&node.op).map_or(1, |e| e.effective_kernel()),
                    stride,
                    padding,
                }),
                Op::MaxPool2d { kernel, stride, padding } => Some(Window {
                    channels: in_shape[0],
                    height: in_shape[1],
                    width: in_shape[2],
                    kernel,
                    stride,
                    padding,
                }),
                Op::AvgPool2d { kernel, stride, padding } => Some(Window {
                    channels: in_shape[0],
                    height: in_shape[1],
                    width: in_shape[2],
                    kernel,
                    stride,
                    padding,
                }),
                _ => None,
            };
            steps.push(Step {
                op: node.op.clone(),
                inputs,
                out: i + 1,
                weight: range(format!("{}.weight", node.name)),
                bias: range(format!("{}.bias", node.name)),
                window,
                expansion: ConvExpansion::of(&node.op).filter(|e| !e.is_plain()),
            });
            ids.insert(node.name.clone(), i + 1);
            value_len.push(shapes[&node.name].iter().product());
        }
        let head = ids[graph.head()];
        let fused_softmax = head > 0 && matches!(steps[head - 1].op, Op::Softmax);
        let logits = if fused_softmax { steps[head - 1].inputs[0] } else { head };
        let acts = value_len.iter().map(|l| vec![0.0; l * capacity]).collect();
        let grads = value_len.iter().enumerate().map(|(v, l)| if v == 0 { Vec::new() } else { vec![0.0; l * capacity] }).collect();
        let direct = steps
            .iter()
            .map(|s| match (&s.op, s.window) {
                (&Op::Conv2d { out_channels, .. }, Some(w)) => {
                    DirectConv::new(&w, &vec![0.0; out_channels * w.patch_len()], None, out_channels)
                }
                _ => None,
            })
            .collect();
        let cols = steps
            .iter()
            .zip(&direct)
            .map(|(s, d): (&Step, &Option<DirectConv>)| match (&s.op, s.window) {
                (Op::Conv2d { .. }, Some(w)) if d.is_none() => vec![0.0; conv_chunk(&w).min(capacity) * w.patch_len() * w.positions()],
                _ => Vec::new(),
            })
            .collect();
        let mut needs_grad = vec![false; value_len.len()];
        for s in &steps {
            needs_grad[s.out] = s.op.has_params() || s.inputs.iter().any(|&v| needs_grad[v]);
        }
        let dcols = steps
            .iter()
            .map(|s| match (&s.op, s.window) {
                (Op::Conv2d { .. }, Some(w)) if needs_grad[s.inputs[0]] => {
                    vec![0.0; conv_chunk(&w).min(capacity) * w.patch_len() * w.positions()]
                }
                _ => Vec::new(),
            })
            .collect();
        let conv_tmp_len = steps
            .iter()
            .map(|s| match (&s.op, s.window) {
                (&Op::Conv2d { out_channels, .. }, Some(w)) => conv_chunk(&w).min(capacity) * out_channels * w.positions(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let argmax = steps
            .iter()
            .map(|s| match s.op {
                Op::MaxPool2d { .. } => vec![0u32; value_len[s.out] * capacity],
                _ => Vec::new(),
            })
            .collect();
        let recurrent = graph
            .nodes
            .iter()
            .zip(&steps)
            .map(|(node, s)| {
                let geo = s.op.recurrent()?;
                let steps_len = shapes[&node.inputs[0]][0];
                let ranges = (0..geo.directions())
                    .map(|d| crate::spec::RECURRENT_PARAMS.map(|(suffix, _)| range(&model.params, format!("{}.{}", node.name, crate::spec::Recurrent::param_suffix(suffix, d)))))
                    .collect();
                Some(RecurrentLayer::new(geo, steps_len, ranges, capacity))
            })
            .collect();
        let attention = graph
            .nodes
            .iter()
            .zip(&steps)
            .map(|(node, s)| {
                let a = s.op.attention()?;
                let seq = shapes[&node.inputs[0]][0];
                let mut ranges = Vec::new();
                for proj in ATTENTION_PROJECTIONS {
                    for part in ["weight", "bias"] {
                        ranges.push(range(&model.params, format!("{}.{proj}.{part}", node.name)).expect("attention parameters exist"));
                    }
                }
                let ranges: [std::ops::Range<usize>; 8] = ranges.try_into().expect("eight attention parameters");
                Some(AttentionLayer::new(Heads::new(a, seq), ranges, capacity))
            })
            .collect();
        let patches = graph
            .nodes
            .iter()
            .zip(&steps)
            .map(|(node, s)| {
                let Op::PatchEmbed { channels, patch, dim } = s.op else { return None };
                let x = &shapes[&node.inputs[0]];
                Some(PatchLayer::new(Patches { channels, height: x[1], width: x[2], patch }, dim, capacity))
            })
            .collect();
        let seq_len = graph.nodes.iter().map(|node| shapes[&node.inputs[0]].first().copied().unwrap_or(1)).collect();
        let classes = value_len[head];
        let expanded_len = |s: &Step| s.expansion.map_or(0, |e| e.expanded_len());
        Workspace {
            attention,
            patches,
            seq_len,
            valid: ValidLengths::default(),
            expanded_w: steps.iter().map(|s| vec![0.0; expanded_len(s)]).collect(),
            expanded_dw: steps.iter().map(|s| vec![0.0; expanded_len(s)]).collect(),
            recurrent,
            capacity,
            steps,
            value_len,
            acts,
            grads,
            cols,
            dcols,
            conv_tmp: vec![0.0; conv_tmp_len],
            direct,
            direct_scratch: Vec::new(),
            written: vec![false; needs_grad.len()],
            needs_grad,
            argmax,
            param_grad: vec![0.0; model.params.len()],
            head,
            logits,
            fused_softmax,
            probs: vec![0.0; classes * capacity],
        }
    }

    /// The batch size this workspace was built for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Runs the graph on `n` samples `x[n × input_len]`.
    pub fn forward(&mut self, params: &Params, x: &[f32], n: usize) {
        assert!(n <= self.capacity, "batch of {n} exceeds workspace capacity {}", self.capacity);
        self.valid.clear();
        let len0 = self.value_len[0];
        self.acts[0][..n * len0].copy_from_slice(&x[..n * len0]);
        let p = &params.data;
        for si in 0..self.steps.len() {
            let step = &self.steps[si];
            let mut y = take(&mut self.acts[step.out]);
            let ylen = self.value_len[step.out];
            let xlen = self.value_len[step.inputs[0]];
            let x = &self.acts[step.inputs[0]][..n * xlen];
            let y_n = &mut y[..n * ylen];
            match step.op {
                Op::Linear { in_features, out_features, .. } => {
                    // Every leading position is a row: [n, .., in] → [n, .., out].
                    let rows = n * xlen / in_features;
                    let w = &p[step.weight.clone().unwrap()];
                    affine(x, rows, in_features, out_features, w, step.bias.clone().map(|b| &p[b]), y_n);
                }
                Op::Conv2d { out_channels, .. } => {
                    let g = step.window.unwrap();
                    let mut w = &p[step.weight.clone().unwrap()];
                    if let Some(e) = step.expansion {
                        let ew = &mut self.expanded_w[si];
                        ew.fill(0.0);
                        for (&v, i) in w.iter().zip(e.positions()) {
                            ew[i] = v;
                        }
                        w = ew;
                    }
                    let b = step.bias.clone().map(|r| &p[r]);
                    if let Some(d) = &mut self.direct[si] {
                        d.set_weights(w, b);
                        d.forward(x, n, y_n, &mut self.direct_scratch);
                        self.acts[step.out] = y;
                        continue;
                    }
                    let (chunk, pl, q) = (conv_chunk(&g), g.patch_len(), g.positions());
                    let mut s0 = 0;
                    while s0 < n {
                        let c = chunk.min(n - s0);
                        let col = &mut self.cols[si][..c * pl * q];
                        let (xc, yc) = (&x[s0 * xlen..(s0 + c) * xlen], &mut y_n[s0 * ylen..(s0 + c) * ylen]);
                        conv2d_forward(xc, c, &g, w, b, out_channels, col, &mut self.conv_tmp, yc);
                        s0 += c;
                    }
                }
                Op::MaxPool2d { .. } => {
                    let g = step.window.unwrap();
                    let am = &mut self.argmax[si];
                    for s in 0..n {
                        maxpool(&x[s * xlen..(s + 1) * xlen], &g, &mut y_n[s * ylen..(s + 1) * ylen], Some(&mut am[s * ylen..(s + 1) * ylen]));
                    }
                }
                Op::AvgPool2d { .. } => {
                    let g = step.window.unwrap();
                    for s in 0..n {
                        avgpool(&x[s * xlen..(s + 1) * xlen], &g, &mut y_n[s * ylen..(s + 1) * ylen]);
                    }
                }
                Op::Sigmoid => crate::runtime::kernels::sigmoid(x, y_n),
                Op::Tanh => crate::runtime::kernels::tanh(x, y_n),
                Op::Flatten => y_n.copy_from_slice(x),
                Op::Normalize { ref mean, ref std } => {
                    crate::runtime::kernels::normalize(x, mean, std, xlen, y_n);
                }
                Op::Relu => y_n.iter_mut().zip(x).for_each(|(o, &i)| *o = i.max(0.0)),
                Op::Add => {
                    let x2 = &self.acts[step.inputs[1]][..n * xlen];
                    for ((o, a), b) in y_n.iter_mut().zip(x).zip(x2) {
                        *o = a + b;
                    }
                }
                Op::Softmax => {
                    y_n.copy_from_slice(x);
                    softmax_rows(y_n, ylen);
                }
                Op::Lstm { .. } | Op::Gru { .. } => {
                    let layer = self.recurrent[si].as_mut().expect("recurrent nodes have a layer");
                    layer.forward(p, x, n, y_n);
                }
                Op::Embedding { dim, pad_token, .. } => {
                    // Invalid ids give zero rows here; the runtime reports them (training
                    // data are images or checked ids).
                    if let Some(pad) = pad_token {
                        self.valid.from_ids(x, n, xlen, pad);
                    }
                    tf::embed(x, &p[step.weight.clone().unwrap()], dim, y_n);
                }
                Op::PositionEmbedding { dim, .. } => {
                    tf::add_positions(x, &p[step.weight.clone().unwrap()], self.seq_len[si], dim, y_n);
                }
                Op::ClsToken { dim } => tf::prepend_cls(x, &p[step.weight.clone().unwrap()], self.seq_len[si], dim, y_n),
                Op::PatchEmbed { .. } => {
                    let layer = self.patches[si].as_mut().expect("patch nodes have a layer");
                    layer.forward(&p[step.weight.clone().unwrap()], &p[step.bias.clone().unwrap()], x, n, y_n);
                }
                Op::LayerNorm { dim, eps } => tf::layer_norm(x, dim, &p[step.weight.clone().unwrap()], &p[step.bias.clone().unwrap()], eps, y_n),
                Op::Gelu => tf::gelu(x, y_n),
                Op::SelfAttention { .. } => {
                    let layer = self.attention[si].as_mut().expect("attention nodes have a layer");
                    layer.forward(p, x, n, &self.valid, y_n);
                }
                Op::Pool { kind } => {
                    let seq = self.seq_len[si];
                    tf::pool(x, n, seq, xlen / seq, kind == PoolKind::Mean, &self.valid, y_n);
                }
            }
            self.acts[step.out] = y;
        }
    }

    /// The head's output (probabilities when it is a Softmax) for the last forward.
    pub fn head_output(&self, n: usize) -> &[f32] {
        &self.acts[self.head][..n * self.value_len[self.head]]
    }

    /// Softmax cross-entropy on the head for `labels` (or, with `soft`, the distillation
    /// loss), then backward through the graph. The loss gradient is scaled by `scale`
    /// (1 / the full batch size when the batch is split over workers).
    /// [`Workspace::param_grad`] is overwritten. Returns the summed loss and the number
    /// of correct top-1 predictions (against `labels`).
    pub fn loss_and_backward(&mut self, params: &Params, labels: &[u8], soft: Option<SoftTargets>, n: usize, scale: f32) -> (f64, usize) {
        let classes = self.value_len[self.head];
        let probs = &mut self.probs[..n * classes];
        if self.fused_softmax {
            probs.copy_from_slice(&self.acts[self.head][..n * classes]);
        } else {
            probs.copy_from_slice(&self.acts[self.head][..n * classes]);
            softmax_rows(probs, classes);
        }
        let mut loss = 0.0f64;
        let mut correct = 0;
        // Gradients are written, not cleared and accumulated: the first contribution to
        // a value assigns, later ones add (`written`).
        self.written.fill(false);
        self.written[self.logits] = true;
        let logits = &self.acts[self.logits];
        let dlogits = &mut self.grads[self.logits][..n * classes];
        let mut q = vec![0.0f32; classes];
        for (s, (&y, row)) in labels[..n].iter().zip(probs.chunks_exact(classes)).enumerate() {
            let y = y as usize;
            let ce = -(row[y].max(1e-30) as f64).ln();
            if crate::runtime::kernels::argmax(row) == y {
                correct += 1;
            }
            let d = &mut dlogits[s * classes..(s + 1) * classes];
            for (j, (dv, &pv)) in d.iter_mut().zip(row).enumerate() {
                *dv = (pv - if j == y { 1.0 } else { 0.0 }) * scale;
            }
            let Some(st) = soft else {
                loss += ce;
                continue;
            };
            // α·T²·KL(t ‖ softmax(s/T)) + (1−α)·CE: d/ds = α·T·(softmax(s/T) − t) + (1−α)(p − y).
            let (a, t) = (st.alpha, st.temperature);
            let teacher = &st.probs[s * classes..(s + 1) * classes];
            q.iter_mut().zip(&logits[s * classes..(s + 1) * classes]).for_each(|(qv, &l)| *qv = l / t);
            softmax_rows(&mut q, classes);
            let kl: f64 = teacher.iter().zip(&q).filter(|(p, _)| **p > 0.0).map(|(&p, &qv)| p as f64 * ((p as f64) / (qv.max(1e-30) as f64)).ln()).sum();
            loss += (a * t * t) as f64 * kl + (1.0 - a) as f64 * ce;
            for ((dv, &qv), &tv) in d.iter_mut().zip(&q).zip(teacher) {
                *dv = *dv * (1.0 - a) + a * t * (qv - tv) * scale;
            }
        }
        self.backward(params, n);
        (loss, correct)
    }

    fn backward(&mut self, params: &Params, n: usize) {
        self.param_grad.fill(0.0);
        let p = &params.data;
        for si in (0..self.steps.len()).rev() {
            let step = &self.steps[si];
            // No gradient reached this output (e.g. a head the loss does not read): it
            // is zero, and so is everything it would contribute.
            if (self.fused_softmax && step.out == self.head) || !self.needs_grad[step.out] || !self.written[step.out] {
                continue;
            }
            let ylen = self.value_len[step.out];
            let xid = step.inputs[0];
            let xlen = self.value_len[xid];
            let dy_buf = take(&mut self.grads[step.out]);
            let dy = &dy_buf[..n * ylen];
            let need_dx = self.needs_grad[xid];
            // Whether this step's contribution to dx is the first (assign) or not (add).
            let fresh = !self.written[xid];
            match step.op {
                Op::Linear { in_features, out_features, .. } => {
                    let rows = n * xlen / in_features;
                    let wr = step.weight.clone().unwrap();
                    let x = &self.acts[xid][..n * xlen];
                    let (dw, db) = weight_and_bias(&mut self.param_grad, &wr, step.bias.as_ref());
                    let dx = need_dx.then(|| (&mut self.grads[xid][..n * xlen], fresh));
                    affine_backward(x, dy, rows, in_features, out_features, &p[wr.clone()], dw, db, dx);
                }
                Op::Conv2d { out_channels, .. } => {
                    // The weight gradient by the direct kernel where it applies, else
                    // one product per chunk of samples on the channel-major gradient
                    // dY[oc, c·q] and the chunk's im2col matrix col[pl, c·q] (rebuilt:
                    // cheaper than keeping the whole batch's). The input gradient is
                    // dcol = Wᵀ·dY per chunk, folded back by col2im.
                    let g = step.window.unwrap();
                    let (chunk, pl, q) = (conv_chunk(&g), g.patch_len(), g.positions());
                    let wr = step.weight.clone().unwrap();
                    // A grouped or dilated conv: the gradient of its expanded weight
                    // goes to a buffer of its own and is gathered back at the end.
                    let expanded = step.expansion.is_some();
                    let mut dw_buf = take(&mut self.expanded_dw[si]);
                    dw_buf.fill(0.0);
                    let direct = self.direct[si].is_some() && {
                        let (dw, db) = weight_and_bias(&mut self.param_grad, &wr, step.bias.as_ref());
                        let dw = if expanded { &mut dw_buf[..] } else { dw };
                        let x = &self.acts[xid][..n * xlen];
                        direct_weight_grad(&g, out_channels, x, dy, n, dw, db, &mut self.direct_scratch)
                    };
                    let w_full: &[f32] = if expanded { &self.expanded_w[si] } else { &p[wr.clone()] };
                    if need_dx && fresh {
                        self.grads[xid][..n * xlen].fill(0.0);
                    }
                    let mut s0 = 0;
                    while s0 < n && (need_dx || !direct) {
                        let c = chunk.min(n - s0);
                        let cq = c * q;
                        let dyc = &mut self.conv_tmp[..out_channels * cq];
                        samples_to_channels(&dy[s0 * ylen..(s0 + c) * ylen], c, out_channels, q, dyc);
                        if !direct {
                            let col = &mut self.cols[si][..c * pl * q];
                            im2col_batch(&self.acts[xid][s0 * xlen..(s0 + c) * xlen], c, &g, 0.0, col);
                            let dw = if expanded { &mut dw_buf[..] } else { &mut self.param_grad[wr.clone()] };
                            sgemm(out_channels, pl, cq, MatRef::rows(dyc, cq), MatRef::transposed(col, cq), dw, pl, true);
                            if let Some(br) = &step.bias {
                                for (d, row) in self.param_grad[br.clone()].iter_mut().zip(dyc.chunks_exact(cq)) {
                                    *d += crate::runtime::kernels::sum(row);
                                }
                            }
                        }
                        if need_dx {
                            let dcol = &mut self.dcols[si][..pl * cq];
                            sgemm(pl, cq, out_channels, MatRef::transposed(w_full, pl), MatRef::rows(dyc, cq), dcol, cq, false);
                            col2im_add_batch(dcol, c, &g, &mut self.grads[xid][s0 * xlen..(s0 + c) * xlen]);
                        }
                        s0 += c;
                    }
                    if let Some(e) = step.expansion {
                        e.gather_add(&dw_buf, &mut self.param_grad[wr.clone()]);
                    }
                    self.expanded_dw[si] = dw_buf;
                }
                Op::MaxPool2d { .. } if need_dx => {
                    let am = &self.argmax[si];
                    let dx = &mut self.grads[xid];
                    if fresh {
                        dx[..n * xlen].fill(0.0);
                    }
                    for s in 0..n {
                        let dxs = &mut dx[s * xlen..(s + 1) * xlen];
                        for (o, &src) in am[s * ylen..(s + 1) * ylen].iter().enumerate() {
                            dxs[src as usize] += dy[s * ylen + o];
                        }
                    }
                }
                Op::AvgPool2d { .. } if need_dx => {
                    let g = step.window.unwrap();
                    let dx = &mut self.grads[xid];
                    if fresh {
                        dx[..n * xlen].fill(0.0);
                    }
                    for s in 0..n {
                        avgpool_backward_add(&dy[s * ylen..(s + 1) * ylen], &g, &mut dx[s * xlen..(s + 1) * xlen]);
                    }
                }
                Op::Sigmoid if need_dx => {
                    // dx = dy · y (1 − y)
                    let y = &self.acts[step.out][..n * ylen];
                    for ((d, &g), &yv) in self.grads[xid][..n * xlen].iter_mut().zip(dy).zip(y) {
                        put(fresh, d, g * yv * (1.0 - yv));
                    }
                }
                Op::Tanh if need_dx => {
                    // dx = dy · (1 − y²)
                    let y = &self.acts[step.out][..n * ylen];
                    for ((d, &g), &yv) in self.grads[xid][..n * xlen].iter_mut().zip(dy).zip(y) {
                        put(fresh, d, g * (1.0 - yv * yv));
                    }
                }
                Op::Normalize { ref std, .. } if need_dx => {
                    // dx = dy / std (per channel)
                    let per = xlen / std.len();
                    for (i, (d, g)) in self.grads[xid][..n * xlen].iter_mut().zip(dy).enumerate() {
                        put(fresh, d, g / std[(i % xlen) / per]);
                    }
                }
                Op::Flatten if need_dx => {
                    let dx = &mut self.grads[xid][..n * xlen];
                    if fresh {
                        dx.copy_from_slice(dy);
                    } else {
                        dx.iter_mut().zip(dy).for_each(|(d, g)| *d += g);
                    }
                }
                Op::Relu if need_dx => {
                    let y = &self.acts[step.out][..n * ylen];
                    let dx = &mut self.grads[xid][..n * xlen];
                    if fresh {
                        dx.iter_mut().zip(dy).zip(y).for_each(|((d, &g), &yv)| *d = if yv > 0.0 { g } else { 0.0 });
                    } else {
                        dx.iter_mut().zip(dy).zip(y).for_each(|((d, &g), &yv)| *d += if yv > 0.0 { g } else { 0.0 });
                    }
                }
                Op::Add => {
                    for &v in &step.inputs {
                        if self.needs_grad[v] {
                            let fresh = !self.written[v];
                            self.grads[v][..n * xlen].iter_mut().zip(dy).for_each(|(d, &g)| put(fresh, d, g));
                            self.written[v] = true;
                        }
                    }
                }
                Op::Softmax if need_dx => {
                    // dx_i = y_i (dy_i − Σ_j dy_j y_j)
                    let y = &self.acts[step.out][..n * ylen];
                    let dx = &mut self.grads[xid][..n * xlen];
                    for ((dxr, dyr), yr) in dx.chunks_exact_mut(ylen).zip(dy.chunks_exact(ylen)).zip(y.chunks_exact(ylen)) {
                        let dot: f32 = dyr.iter().zip(yr).map(|(a, b)| a * b).sum();
                        for ((d, g), yv) in dxr.iter_mut().zip(dyr).zip(yr) {
                            put(fresh, d, yv * (g - dot));
                        }
                    }
                }
                Op::Lstm { .. } | Op::Gru { .. } => {
                    let layer = self.recurrent[si].as_mut().expect("recurrent nodes have a layer");
                    let x = &self.acts[xid][..n * xlen];
                    let dx = need_dx.then(|| (&mut self.grads[xid][..n * xlen], fresh));
                    layer.backward(p, x, dy, n, &mut self.param_grad, dx);
                }
                Op::Embedding { dim, .. } => {
                    let dw = &mut self.param_grad[step.weight.clone().unwrap()];
                    let vocab = dw.len() / dim;
                    for (&t, row) in self.acts[xid][..n * xlen].iter().zip(dy.chunks_exact(dim)) {
                        let id = t as usize;
                        if t >= 0.0 && id < vocab {
                            dw[id * dim..(id + 1) * dim].iter_mut().zip(row).for_each(|(a, &b)| *a += b);
                        }
                    }
                }
                Op::PositionEmbedding { dim, .. } => {
                    let len = self.seq_len[si] * dim;
                    let dw = &mut self.param_grad[step.weight.clone().unwrap()][..len];
                    for row in dy.chunks_exact(len) {
                        dw.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
                    }
                    if need_dx {
                        self.grads[xid][..n * xlen].iter_mut().zip(dy).for_each(|(d, &g)| put(fresh, d, g));
                    }
                }
                Op::ClsToken { dim } => {
                    let dw = &mut self.param_grad[step.weight.clone().unwrap()];
                    for row in dy.chunks_exact(ylen) {
                        dw.iter_mut().zip(&row[..dim]).for_each(|(a, &b)| *a += b);
                    }
                    if need_dx {
                        let dx = &mut self.grads[xid][..n * xlen];
                        for (dxs, dys) in dx.chunks_exact_mut(xlen).zip(dy.chunks_exact(ylen)) {
                            dxs.iter_mut().zip(&dys[dim..]).for_each(|(d, &g)| put(fresh, d, g));
                        }
                    }
                }
                Op::PatchEmbed { .. } => {
                    let layer = self.patches[si].as_mut().expect("patch nodes have a layer");
                    let wr = step.weight.clone().unwrap();
                    let (dw, db) = weight_and_bias(&mut self.param_grad, &wr, step.bias.as_ref());
                    let dx = need_dx.then(|| (&mut self.grads[xid][..n * xlen], fresh));
                    layer.backward(&p[wr.clone()], dy, n, dw, db.expect("PatchEmbed has a bias"), dx);
                }
                Op::LayerNorm { dim, eps } => {
                    let wr = step.weight.clone().unwrap();
                    let (dg, db) = weight_and_bias(&mut self.param_grad, &wr, step.bias.as_ref());
                    let x = &self.acts[xid][..n * xlen];
                    let dx = need_dx.then(|| (&mut self.grads[xid][..n * xlen], fresh));
                    layer_norm_backward(x, dy, dim, eps, &p[wr.clone()], dg, db.expect("LayerNorm has a bias"), dx);
                }
                Op::Gelu if need_dx => {
                    let (xs, dx) = pair_mut(&mut self.acts, &mut self.grads, xid);
                    for ((d, &g), &xv) in dx[..n * xlen].iter_mut().zip(dy).zip(&xs[..n * xlen]) {
                        put(fresh, d, g * tf::gelu_grad(xv));
                    }
                }
                Op::SelfAttention { .. } => {
                    let layer = self.attention[si].as_mut().expect("attention nodes have a layer");
                    let x = &self.acts[xid][..n * xlen];
                    let dx = need_dx.then(|| (&mut self.grads[xid][..n * xlen], fresh));
                    layer.backward(p, x, dy, n, &self.valid, &mut self.param_grad, dx);
                }
                Op::Pool { kind } if need_dx => {
                    let seq = self.seq_len[si];
                    let dim = xlen / seq;
                    let dx = &mut self.grads[xid][..n * xlen];
                    for (s, (dxs, dys)) in dx.chunks_exact_mut(xlen).zip(dy.chunks_exact(dim)).enumerate() {
                        let (rows, scale) = match kind {
                            PoolKind::Cls => (1, 1.0),
                            PoolKind::Mean => {
                                let vl = self.valid.of(s, seq);
                                (vl, 1.0 / vl as f32)
                            }
                        };
                        for (r, row) in dxs.chunks_exact_mut(dim).enumerate() {
                            for (d, &g) in row.iter_mut().zip(dys) {
                                put(fresh, d, if r < rows { g * scale } else { 0.0 });
                            }
                        }
                    }
                }
                _ => {}
            }
            if need_dx && !matches!(step.op, Op::Add) {
                self.written[xid] = true;
            }
            self.grads[step.out] = dy_buf;
        }
    }
}

/// The flat range of parameter `name`, if the model has it.
fn range(params: &Params, name: String) -> Option<std::ops::Range<usize>> {
    params.index(&name).map(|j| params.range(j))
}

/// Reads `acts[i]` while writing `grads[i]` (different vectors of the same index).
fn pair_mut<'a>(acts: &'a mut [Vec<f32>], grads: &'a mut [Vec<f32>], i: usize) -> (&'a [f32], &'a mut [f32]) {
    (&acts[i], &mut grads[i])
}

/// `*d = v` for the first contribution to a gradient, `*d += v` after.
#[inline(always)]
fn put(fresh: bool, d: &mut f32, v: f32) {
    if fresh {
        *d = v;
    } else {
        *d += v;
    }
}

/// Disjoint mutable views of a weight range and an optional bias range of `buf`.
fn weight_and_bias<'a>(buf: &'a mut [f32], w: &std::ops::Range<usize>, b: Option<&std::ops::Range<usize>>) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    match b {
        None => (&mut buf[w.clone()], None),
        Some(b) if b.start >= w.end => {
            let (lo, hi) = buf.split_at_mut(b.start);
            (&mut lo[w.clone()], Some(&mut hi[..b.len()]))
        }
        Some(b) => {
            assert!(b.end <= w.start, "weight and bias ranges overlap");
            let (lo, hi) = buf.split_at_mut(w.start);
            (&mut hi[..w.len()], Some(&mut lo[b.clone()]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;
    use crate::rng::Rng;
    use crate::spec::Node;

    /// Mean loss of the batch in f64 from a float forward (the finite-difference oracle
    /// perturbs the f32 parameters and reads the f64-accumulated loss).
    fn loss(model: &Model, x: &[f32], labels: &[u8]) -> f64 {
        let mut ws = Workspace::new(model, labels.len());
        ws.forward(&model.params, x, labels.len());
        let classes = ws.value_len[ws.head];
        let mut probs = ws.head_output(labels.len()).to_vec();
        if !ws.fused_softmax {
            softmax_rows(&mut probs, classes);
        }
        labels.iter().enumerate().map(|(s, &y)| -(probs[s * classes + y as usize] as f64).ln()).sum::<f64>() / labels.len() as f64
    }

    fn check_gradients(model: &Model, seed: u64, samples: usize) {
        check_gradients_with(model, seed, samples, None);
    }

    /// The distillation loss α·T²·KL(t ‖ softmax(s/T)) + (1−α)·CE in f64, α = 0.7, T = 3.
    fn distill_loss(model: &Model, x: &[f32], labels: &[u8], teacher: &[f32]) -> f64 {
        let mut ws = Workspace::new(model, labels.len());
        ws.forward(&model.params, x, labels.len());
        let classes = ws.value_len[ws.head];
        let logits = ws.acts[ws.logits][..labels.len() * classes].to_vec();
        let (a, t) = (0.7f64, 3.0f64);
        let mut total = 0.0;
        for (s, &y) in labels.iter().enumerate() {
            let row: Vec<f64> = logits[s * classes..(s + 1) * classes].iter().map(|&v| v as f64).collect();
            let lse = |scale: f64| {
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b / scale));
                m + row.iter().map(|&v| (v / scale - m).exp()).sum::<f64>().ln()
            };
            let ce = lse(1.0) - row[y as usize];
            let kl: f64 = (0..classes)
                .map(|j| {
                    let p = teacher[s * classes + j] as f64;
                    p * (p.ln() - (row[j] / t - lse(t)))
                })
                .sum();
            total += a * t * t * kl + (1.0 - a) * ce;
        }
        total / labels.len() as f64
    }

    /// 6 → 5 (ReLU) → 3 with a softmax head: small enough for finite differences.
    fn tiny_mlp() -> crate::spec::Graph {
        crate::spec::Graph::chain(
            vec![6],
            vec![
                ("fc1", Op::Linear { in_features: 6, out_features: 5, bias: true }),
                ("relu", Op::Relu),
                ("fc2", Op::Linear { in_features: 5, out_features: 3, bias: true }),
                ("softmax", Op::Softmax),
            ],
        )
    }

    #[test]
    fn distillation_gradients_match_finite_differences() {
        let g = tiny_mlp();
        check_gradients_with(&Model::init(g, 11).unwrap(), 12, 4, Some(&[0.7, 0.2, 0.1, 0.1, 0.1, 0.8, 0.3, 0.3, 0.4, 0.05, 0.9, 0.05]));
    }

    fn check_gradients_with(model: &Model, seed: u64, samples: usize, teacher: Option<&[f32]>) {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..samples * model.graph.input_len()).map(|_| rng.next_f32()).collect();
        let labels: Vec<u8> = (0..samples).map(|_| rng.below(3) as u8).collect();
        check_gradients_at(model, &x, &labels, teacher);
    }

    /// Analytic gradients against central differences of the f64 loss at inputs `x`.
    fn check_gradients_at(model: &Model, x: &[f32], labels: &[u8], teacher: Option<&[f32]>) {
        let samples = labels.len();
        let mut ws = Workspace::new(model, samples);
        ws.forward(&model.params, x, samples);
        let soft = teacher.map(|probs| SoftTargets { probs, alpha: 0.7, temperature: 3.0 });
        ws.loss_and_backward(&model.params, &labels, soft, samples, 1.0 / samples as f32);
        let analytic = ws.param_grad.clone();
        // Central differences on a sample of parameters; f32 forward, so a relative
        // tolerance that f32 rounding allows with eps = 1e-2 on O(1) inputs.
        let mut m = model.clone();
        // Every parameter of a tiny model (so each tensor of each op is covered), a
        // sample of a larger one.
        let step = if m.params.len() < 1000 { 1 } else { (m.params.len() / 60).max(1) };
        let mut checked = 0;
        for i in (0..m.params.len()).step_by(step) {
            let orig = m.params.data[i];
            let eps = 1e-2f32;
            let f = |m: &Model| match teacher {
                Some(t) => distill_loss(m, x, labels, t),
                None => loss(m, x, labels),
            };
            m.params.data[i] = orig + eps;
            let up = f(&m);
            m.params.data[i] = orig - eps;
            let down = f(&m);
            m.params.data[i] = orig;
            let numeric = (up - down) / (2.0 * eps as f64);
            let a = analytic[i] as f64;
            assert!((a - numeric).abs() <= 2e-3 + 2e-2 * numeric.abs(), "param {i}: analytic {a}, numeric {numeric}");
            checked += 1;
        }
        assert!(checked > 10);
    }

    /// A tiny text encoder: token ids with padding → Embedding, positions, one post-norm
    /// block (attention, Add, LayerNorm, Linear on the sequence, GELU, Linear, Add,
    /// LayerNorm), mean pooling over valid positions, a 3-class head.
    fn tiny_text_encoder(causal: bool) -> Graph {
        tiny_text_encoder_heads(causal, 2, None)
    }

    /// [`tiny_text_encoder`] with `heads` heads of `head_dim` features (None: `6 / heads`).
    fn tiny_text_encoder_heads(causal: bool, heads: usize, head_dim: Option<usize>) -> Graph {
        let (d, seq) = (6, 5);
        let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
        let node = |name: &str, inputs: &[&str], op: Op| Node { name: name.into(), inputs: inputs.iter().map(|s| s.to_string()).collect(), op };
        Graph {
            input_shape: vec![seq],
            nodes: vec![
                node("emb", &[INPUT], Op::Embedding { vocab: 7, dim: d, pad_token: Some(0) }),
                node("pos", &["emb"], Op::PositionEmbedding { max_len: 8, dim: d }),
                node("attn", &["pos"], Op::SelfAttention { dim: d, heads, causal, head_dim }),
                node("res1", &["attn", "pos"], Op::Add),
                node("ln1", &["res1"], Op::LayerNorm { dim: d, eps: 1e-5 }),
                node("fc1", &["ln1"], lin(d, 8)),
                node("gelu", &["fc1"], Op::Gelu),
                node("fc2", &["gelu"], lin(8, d)),
                node("res2", &["fc2", "ln1"], Op::Add),
                node("ln2", &["res2"], Op::LayerNorm { dim: d, eps: 1e-5 }),
                node("pool", &["ln2"], Op::Pool { kind: PoolKind::Mean }),
                node("head", &["pool"], lin(d, 3)),
                node("softmax", &["head"], Op::Softmax),
            ],
            outputs: vec!["softmax".into()],
            io_names: Default::default(),
        }
    }

    /// Random non-default LayerNorm scales and shifts and larger weights, so no
    /// gradient term hides behind an identity.
    fn perturbed(graph: Graph, seed: u64) -> Model {
        let mut model = Model::init(graph, seed).unwrap();
        let mut rng = Rng::new(seed + 100);
        for i in 0..model.params.specs.len() {
            let r = model.params.range(i);
            let (name, kind) = (model.params.specs[i].name.clone(), model.params.specs[i].kind);
            for v in &mut model.params.data[r] {
                *v = if name.starts_with("ln") && name.ends_with(".weight") { 1.0 + rng.uniform(0.5) } else if kind == crate::spec::ParamKind::Bias || name.contains("emb") || name.starts_with("pos") || name.starts_with("cls") { rng.uniform(0.5) } else { *v * 1.5 };
            }
        }
        model
    }

    #[test]
    fn text_encoder_gradients_match_finite_differences_with_padding_and_causal_masks() {
        for causal in [false, true] {
            let model = perturbed(tiny_text_encoder(causal), 50 + causal as u64);
            // Three sequences: full, two padding positions, four (one valid token).
            let x = [3.0, 1.0, 4.0, 6.0, 5.0, 2.0, 6.0, 5.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0];
            check_gradients_at(&model, &x, &[0, 2, 1], None);
        }
    }

    /// Trimmed-head geometry: the projections are `heads · head_dim` wide, not `dim`
    /// (wider with 2 heads of 5, narrower with 1 head of 2, odd with 3 heads of 1).
    #[test]
    fn attention_gradients_match_finite_differences_when_heads_times_head_dim_is_not_dim() {
        for (i, (heads, hd)) in [(2, 5), (1, 2), (3, 1)].into_iter().enumerate() {
            let g = tiny_text_encoder_heads(i == 1, heads, Some(hd));
            let shapes = g.validate().unwrap();
            assert_eq!(shapes["attn"], vec![5, 6], "the residual width stays dim");
            let model = perturbed(g, 70 + i as u64);
            assert_eq!(model.params.get("attn.query.weight").unwrap().len(), heads * hd * 6);
            assert_eq!(model.params.get("attn.output.weight").unwrap().len(), 6 * heads * hd);
            let x = [3.0, 1.0, 4.0, 6.0, 5.0, 2.0, 6.0, 5.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0];
            check_gradients_at(&model, &x, &[0, 2, 1], None);
        }
    }

    /// A tiny pre-norm ViT: 2 channels of 4×6, 2×2 patches (6 patches + CLS), CLS pooling.
    #[test]
    fn vit_block_gradients_match_finite_differences() {
        let shape = crate::model::zoo::VitShape { patch: 2, dim: 4, heads: 2, blocks: 1, ffn: 6 };
        let mut g = zoo::vit(&shape);
        // Re-shape the zoo graph to a tiny image and three classes.
        g.input_shape = vec![2, 4, 6];
        for n in &mut g.nodes {
            match &mut n.op {
                Op::PatchEmbed { channels, .. } => *channels = 2,
                Op::PositionEmbedding { max_len, .. } => *max_len = 7,
                Op::Normalize { .. } => n.op = Op::Normalize { mean: vec![0.1, 0.2], std: vec![0.9, 1.1] },
                Op::Linear { out_features, .. } if n.name == "head" => *out_features = 3,
                _ => {}
            }
        }
        let model = perturbed(g, 60);
        check_gradients(&model, 61, 3);
    }

    #[test]
    fn mlp_gradients_match_finite_differences() {
        let g = tiny_mlp();
        check_gradients(&Model::init(g, 1).unwrap(), 2, 4);
    }

    #[test]
    fn conv_pool_gradients_match_finite_differences() {
        let g = crate::spec::Graph::chain(
            vec![2, 7, 7],
            vec![
                ("c1", Op::Conv2d { in_channels: 2, out_channels: 3, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 }),
                ("r1", Op::Relu),
                ("n1", Op::Normalize { mean: vec![0.1, 0.2, 0.3], std: vec![0.5, 1.5, 2.0] }),
                ("p1", Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
                ("c2", Op::Conv2d { in_channels: 3, out_channels: 4, kernel: 2, stride: 2, padding: 0, bias: true, groups: 1, dilation: 1 }),
                ("f", Op::Flatten),
                ("fc", Op::Linear { in_features: 4, out_features: 3, bias: true }),
            ],
        );
        check_gradients(&Model::init(g, 3).unwrap(), 4, 3);
    }

    /// Grouped (2 groups), depthwise dilated (stride 1: the direct kernel where AVX2 is
    /// there) and strided dilated convolutions and a padded max pool.
    fn grouped_dilated_graph() -> Graph {
        crate::spec::Graph::chain(
            vec![4, 7, 7],
            vec![
                ("g", Op::Conv2d { in_channels: 4, out_channels: 6, kernel: 3, stride: 1, padding: 1, bias: true, groups: 2, dilation: 1 }),
                // Tanh, not ReLU: a kink within the finite-difference step fails the check.
                ("r1", Op::Tanh),
                ("dw", Op::Conv2d { in_channels: 6, out_channels: 6, kernel: 3, stride: 1, padding: 2, bias: true, groups: 6, dilation: 2 }),
                ("p", Op::MaxPool2d { kernel: 3, stride: 2, padding: 1 }),
                ("d", Op::Conv2d { in_channels: 6, out_channels: 3, kernel: 2, stride: 2, padding: 1, bias: false, groups: 1, dilation: 2 }),
                ("f", Op::Flatten),
                ("fc", Op::Linear { in_features: 12, out_features: 3, bias: true }),
            ],
        )
    }

    #[test]
    fn grouped_dilated_conv_and_padded_maxpool_gradients_match_finite_differences() {
        let g = grouped_dilated_graph();
        let shapes = g.validate().unwrap();
        assert_eq!(shapes["dw"], vec![6, 7, 7]);
        assert_eq!(shapes["p"], vec![6, 4, 4]);
        assert_eq!(shapes["d"], vec![3, 2, 2]);
        let model = Model::init(g, 21).unwrap();
        assert_eq!(model.params.get("g.weight").unwrap().len(), 6 * 2 * 9);
        assert_eq!(model.params.get("dw.weight").unwrap().len(), 6 * 9);
        check_gradients(&model, 22, 3);
    }

    /// A grouped, dilated, strided, padded conv on odd shapes: the training forward and
    /// the runtime's f32 plan against a plain loop over the definition.
    #[test]
    fn grouped_dilated_conv_matches_a_plain_reference() {
        let (ic, oc, groups, k, stride, pad, dil, h, w) = (6, 9, 3, 3, 2, 2, 2, 9, 8);
        let g = Graph::chain(
            vec![ic, h, w],
            vec![("c", Op::Conv2d { in_channels: ic, out_channels: oc, kernel: k, stride, padding: pad, bias: true, groups, dilation: dil })],
        );
        let shape = g.validate().unwrap()["c"].clone();
        let model = Model::init(g, 4).unwrap();
        let (wt, b) = (model.params.get("c.weight").unwrap(), model.params.get("c.bias").unwrap());
        let n = 3;
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..n * ic * h * w).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let (oh, ow, ig, og) = (shape[1], shape[2], ic / groups, oc / groups);
        let mut want = vec![0.0f64; n * oc * oh * ow];
        for s in 0..n {
            for o in 0..oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = b[o] as f64;
                        for c in 0..ig {
                            let ci = (o / og) * ig + c;
                            for ki in 0..k {
                                for kj in 0..k {
                                    let iy = (oy * stride + ki * dil) as isize - pad as isize;
                                    let ix = (ox * stride + kj * dil) as isize - pad as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        let xv = x[((s * ic + ci) * h + iy as usize) * w + ix as usize] as f64;
                                        acc += xv * wt[((o * ig + c) * k + ki) * k + kj] as f64;
                                    }
                                }
                            }
                        }
                        want[((s * oc + o) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        let mut ws = Workspace::new(&model, n);
        ws.forward(&model.params, &x, n);
        let plan = crate::store::model_plan(&model).unwrap();
        let ran = plan.run(&x, n, &mut crate::runtime::exec::Workspace::default()).unwrap().to_vec();
        for (what, got) in [("training forward", &ws.acts[1][..n * oc * oh * ow]), ("runtime plan", &ran[..])] {
            assert_eq!(got.len(), want.len());
            let worst = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-5, "{what}: max difference {worst}");
        }
    }

    /// The ops ONNX import brings: sigmoid, tanh, padded average pooling and a global
    /// average pool (the kernel covering the map).
    #[test]
    fn sigmoid_tanh_avgpool_gradients_match_finite_differences() {
        let g = crate::spec::Graph::chain(
            vec![2, 7, 7],
            vec![
                ("c1", Op::Conv2d { in_channels: 2, out_channels: 3, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 }),
                ("t1", Op::Tanh),
                ("a1", Op::AvgPool2d { kernel: 3, stride: 2, padding: 1 }),
                ("c2", Op::Conv2d { in_channels: 3, out_channels: 4, kernel: 2, stride: 1, padding: 0, bias: true, groups: 1, dilation: 1 }),
                ("s1", Op::Sigmoid),
                ("gap", Op::AvgPool2d { kernel: 3, stride: 3, padding: 0 }),
                ("f", Op::Flatten),
                ("fc", Op::Linear { in_features: 4, out_features: 3, bias: true }),
            ],
        );
        let shapes = g.validate().unwrap();
        assert_eq!(shapes["a1"], vec![3, 4, 4]);
        assert_eq!(shapes["gap"], vec![4, 1, 1]);
        check_gradients(&Model::init(g, 13).unwrap(), 14, 3);
    }

    #[test]
    fn residual_add_and_unfused_softmax_gradients_match() {
        let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
        let g = Graph {
            input_shape: vec![4],
            nodes: vec![
                Node { name: "a".into(), inputs: vec![INPUT.into()], op: lin(4, 4) },
                Node { name: "r".into(), inputs: vec!["a".into()], op: Op::Relu },
                Node { name: "b".into(), inputs: vec!["r".into()], op: lin(4, 4) },
                Node { name: "sum".into(), inputs: vec!["b".into(), "a".into()], op: Op::Add },
                Node { name: "sm".into(), inputs: vec!["sum".into()], op: Op::Softmax },
                Node { name: "head".into(), inputs: vec!["sm".into()], op: lin(4, 3) },
                Node { name: "aux".into(), inputs: vec!["sum".into()], op: lin(4, 2) },
            ],
            outputs: vec!["head".into(), "aux".into()],
            io_names: Default::default(),
        };
        check_gradients(&Model::init(g, 5).unwrap(), 6, 5);
    }

    /// Two stacked recurrent layers (the first returns its sequence) and a head:
    /// 4 steps of 3 features → 5 units per step → 4 units → 3 classes.
    fn tiny_recurrent(cell: &str) -> Graph {
        let rec = |input_size, hidden, sequence| match cell {
            "lstm" => Op::Lstm { input_size, hidden, bias: true, sequence, bidirectional: false },
            _ => Op::Gru { input_size, hidden, bias: true, sequence, bidirectional: false },
        };
        Graph::chain(
            vec![4, 3],
            vec![
                ("r1", rec(3, 5, true)),
                ("r2", rec(5, 4, false)),
                ("fc", Op::Linear { in_features: 4, out_features: 3, bias: true }),
                ("softmax", Op::Softmax),
            ],
        )
    }

    #[test]
    fn lstm_and_gru_gradients_match_finite_differences() {
        for (i, cell) in ["lstm", "gru"].into_iter().enumerate() {
            let mut model = Model::init(tiny_recurrent(cell), 20 + i as u64).unwrap();
            // Larger weights than the default init, so the gates leave their linear range.
            model.params.data.iter_mut().for_each(|v| *v *= 2.0);
            check_gradients(&model, 30 + i as u64, 3);
        }
    }

    /// Bidirectional recurrent layers: a bidirectional sequence layer (3 → 2×5 per
    /// step) feeding a bidirectional last-state layer (10 → 2×4, one without biases),
    /// then a head; the `_reverse` parameters, the split output gradient and the
    /// reversed input gradient all against finite differences.
    #[test]
    fn bidirectional_lstm_and_gru_gradients_match_finite_differences() {
        for (i, cell) in ["lstm", "gru"].into_iter().enumerate() {
            let rec = |input_size, hidden, sequence, bias| match cell {
                "lstm" => Op::Lstm { input_size, hidden, bias, sequence, bidirectional: true },
                _ => Op::Gru { input_size, hidden, bias, sequence, bidirectional: true },
            };
            let g = Graph::chain(
                vec![4, 3],
                vec![
                    ("r1", rec(3, 5, true, true)),
                    ("r2", rec(10, 4, false, i == 0)),
                    ("fc", Op::Linear { in_features: 8, out_features: 3, bias: true }),
                    ("softmax", Op::Softmax),
                ],
            );
            let mut model = Model::init(g, 50 + i as u64).unwrap();
            assert!(model.params.get("r1.weight_ih_reverse").is_some_and(|w| w.len() == cell_gates(cell) * 5 * 3));
            assert!(model.params.get("r2.weight_hh_reverse").is_some_and(|w| w.len() == cell_gates(cell) * 4 * 4));
            model.params.data.iter_mut().for_each(|v| *v *= 2.0);
            check_gradients(&model, 60 + i as u64, 3);
        }
    }

    fn cell_gates(cell: &str) -> usize {
        if cell == "lstm" { 4 } else { 3 }
    }

    #[test]
    fn recurrent_gradients_hold_with_masked_weights_and_no_bias() {
        for cell in ["lstm", "gru"] {
            let mut g = tiny_recurrent(cell);
            if let Op::Lstm { bias, .. } | Op::Gru { bias, .. } = &mut g.nodes[1].op {
                *bias = false;
            }
            let mut model = Model::init(g, 40).unwrap();
            model.params.data.iter_mut().for_each(|v| *v *= 2.0);
            for name in ["r1.weight_hh", "r1.weight_ih", "r2.weight_hh"] {
                let len = model.params.get(name).unwrap().len();
                model.set_mask(name, (0..len).map(|j| j % 3 != 1).collect()).unwrap();
            }
            assert!(model.params.get("r2.bias_ih").is_none());
            check_gradients(&model, 41, 4);
        }
    }

    /// The batched, chunked conv path (LeNet-5's conv1 runs in chunks of 4 samples)
    /// gives the same loss and parameter gradient as running the samples one at a time.
    #[test]
    fn batched_gradients_equal_the_sum_of_per_sample_gradients() {
        let model = Model::init(zoo::build("lenet5").unwrap(), 8).unwrap();
        let n = 11;
        let mut rng = Rng::new(9);
        let x: Vec<f32> = (0..n * 784).map(|_| rng.next_f32()).collect();
        let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
        let mut ws = Workspace::new(&model, n);
        ws.forward(&model.params, &x, n);
        let (loss, _) = ws.loss_and_backward(&model.params, &labels, None, n, 1.0 / n as f32);
        let mut one = Workspace::new(&model, 1);
        let mut want = vec![0.0f64; model.params.len()];
        let mut want_loss = 0.0;
        for s in 0..n {
            one.forward(&model.params, &x[s * 784..(s + 1) * 784], 1);
            want_loss += one.loss_and_backward(&model.params, &labels[s..s + 1], None, 1, 1.0 / n as f32).0;
            want.iter_mut().zip(&one.param_grad).for_each(|(w, &g)| *w += g as f64);
        }
        assert!((loss - want_loss).abs() < 1e-4 * want_loss.abs(), "{loss} vs {want_loss}");
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in ws.param_grad.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-4 * scale, "param {i}: {g} vs {w}");
        }
    }

    #[test]
    fn lenet5_forward_runs_and_probabilities_sum_to_one() {
        let model = Model::init(zoo::build("lenet5").unwrap(), 7).unwrap();
        let mut ws = Workspace::new(&model, 3);
        let x = vec![0.5; 3 * 784];
        ws.forward(&model.params, &x, 3);
        for row in ws.head_output(3).chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
