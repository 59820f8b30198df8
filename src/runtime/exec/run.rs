//! Running a [`Plan`]: the per-step execution over a [`Workspace`] (buffers, the fused
//! integer chain, splitting a batch or a step among threads).

use std::collections::BTreeMap;

use super::{CHAIN_ROWS, IntChain, Kernel, Plan, Repr, RuntimeError, Slot, Step, Workspace};
use crate::runtime::{int8, intops, recurrent};
use crate::runtime::kernels::{MatRef, conv2d_forward, conv_chunk, maxpool, sgemm, sgemm_threads, softmax_rows};
use crate::runtime::transformer as tf;

impl Plan {
    /// Runs the fused prefix on `n` samples of `x` (see [`IntChain`]); the last chain
    /// step's output slot receives all rows, earlier slots serve as per-block buffers.
    fn run_chain(&self, chain: IntChain, x: &[f32], n: usize, ws: &mut Workspace) {
        let per = self.input_len();
        let first = chain.normalize as usize + 1;
        let Kernel::Quantize(qp) = self.steps[first - 1].kernel else { unreachable!("a chain quantizes before its first Linear") };
        let last = chain.steps - 1;
        let mut r0 = 0;
        while r0 < n {
            let m = CHAIN_ROWS.min(n - r0);
            let xb = &x[r0 * per..(r0 + m) * per];
            let q0 = self.steps[first - 1].out;
            match &self.steps[0] {
                Step { kernel: Kernel::Normalize { mean, std }, out, .. } if chain.normalize => {
                    let nb = &mut ws.f[*out][..m * per];
                    crate::runtime::kernels::normalize(xb, mean, std, per, nb);
                    int8::quantize_u8(nb, qp, &mut ws.q[q0][..m * per]);
                }
                _ => int8::quantize_u8(xb, qp, &mut ws.q[q0][..m * per]),
            }
            for (si, step) in self.steps[first..chain.steps].iter().enumerate().map(|(i, s)| (i + first, s)) {
                let (xi, o) = (step.inputs[0], step.out);
                let (xl, ol) = (self.slots[xi].len, self.slots[o].len);
                let Kernel::LinearI8(l) = resolve(&step.kernel, n) else { unreachable!("a chain holds integer Linear layers") };
                // Earlier steps write the block at the start of their slot; the last one
                // writes its rows in place.
                let at = if si == last { r0 * ol } else { 0 };
                match self.slots[o].repr {
                    Repr::U8(_) => {
                        let (xs, y) = pair(&mut ws.q, xi, o);
                        l.forward_u8(&xs[..m * xl], m, &mut y[at..at + m * ol], &mut ws.acc);
                    }
                    Repr::F32 => l.forward_f32(&ws.q[xi][..m * xl], m, &mut ws.f[o][at..at + m * ol], &mut ws.acc),
                }
            }
            r0 += m;
        }
    }

    /// Runs `n` samples of `x` and returns the head output (`n × output_len`; the one a
    /// classifier scores, [`crate::spec::Graph::head`]).
    pub fn run<'w>(&self, x: &[f32], n: usize, ws: &'w mut Workspace) -> Result<&'w [f32], RuntimeError> {
        self.execute_split(x, n, ws)?;
        let o = self.outputs[self.head];
        Ok(&ws.f[o][..n * self.slots[o].len])
    }

    /// Every output, in graph order.
    pub fn run_all(&self, x: &[f32], n: usize, ws: &mut Workspace) -> Result<Vec<Vec<f32>>, RuntimeError> {
        self.execute_split(x, n, ws)?;
        Ok(self.outputs.iter().map(|&o| ws.f[o][..n * self.slots[o].len].to_vec()).collect())
    }

    /// Runs and shows every f32 graph value (by name) to `observe`: used for calibration.
    pub fn run_observe(&self, x: &[f32], n: usize, ws: &mut Workspace, observe: &mut dyn FnMut(&str, &[f32])) -> Result<(), RuntimeError> {
        self.execute(x, n, ws, false, observe, self.threads)
    }

    /// Runs `n` samples on [`Plan::threads`] threads: shares of the batch side by side
    /// when there are several samples, else one sample with its layers split.
    fn execute_split(&self, x: &[f32], n: usize, ws: &mut Workspace) -> Result<(), RuntimeError> {
        use rayon::prelude::*;
        let parts = self.threads.min(n);
        if parts <= 1 {
            return self.execute(x, n, ws, true, &mut |_, _| {}, self.threads);
        }
        let per = self.input_len();
        if x.len() < n * per {
            return Err(RuntimeError::InputShape { got: x.len(), per_sample: per, shape: self.input_shape.clone() });
        }
        if ws.parts.len() < parts {
            ws.parts.resize_with(parts, Workspace::default);
        }
        let share = n.div_ceil(parts);
        let profiling = ws.profile.is_some();
        for pw in &mut ws.parts[..parts] {
            pw.profile = profiling.then(BTreeMap::new);
        }
        let results: Vec<Result<(), RuntimeError>> = ws.parts[..parts]
            .par_iter_mut()
            .enumerate()
            .map(|(i, pw)| {
                let (lo, hi) = (i * share, ((i + 1) * share).min(n));
                if lo >= hi {
                    return Ok(());
                }
                self.execute(&x[lo * per..hi * per], hi - lo, pw, true, &mut |_, _| {}, 1)
            })
            .collect();
        results.into_iter().collect::<Result<(), RuntimeError>>()?;
        // The shares ran side by side: a kind's wall time is the mean over them.
        for i in 0..parts {
            for (kind, (calls, secs)) in ws.parts[i].profile.take().unwrap_or_default() {
                ws.add_time(kind, calls, secs / parts as f64);
            }
        }
        if ws.f.len() != self.slots.len() {
            ws.f = vec![Vec::new(); self.slots.len()];
            ws.q = vec![Vec::new(); self.slots.len()];
        }
        for &o in &self.outputs {
            let len = self.slots[o].len;
            if ws.f[o].len() < n * len {
                ws.f[o].resize(n * len, 0.0);
            }
            for (i, pw) in ws.parts[..parts].iter().enumerate() {
                let (lo, hi) = (i * share, ((i + 1) * share).min(n));
                if lo < hi {
                    ws.f[o][lo * len..hi * len].copy_from_slice(&pw.f[o][..(hi - lo) * len]);
                }
            }
        }
        Ok(())
    }

    /// Runs the steps; `fuse` lets the fused integer prefix run block by block (its
    /// intermediate values are then not whole, so observers turn it off). `threads`
    /// may split single steps (products by columns, attention by heads, element-wise
    /// steps by rows).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn execute(&self, x: &[f32], n: usize, ws: &mut Workspace, fuse: bool, observe: &mut dyn FnMut(&str, &[f32]), threads: usize) -> Result<(), RuntimeError> {
        let per = self.input_len();
        if x.len() < n * per {
            return Err(RuntimeError::InputShape { got: x.len(), per_sample: per, shape: self.input_shape.clone() });
        }
        if ws.f.len() != self.slots.len() {
            ws.f = vec![Vec::new(); self.slots.len()];
            ws.q = vec![Vec::new(); self.slots.len()];
        }
        // Values get a buffer just before the step that writes them and give it back
        // after the last step that reads them, so a deep model (a Transformer at batch
        // 32) holds a few layers' activations at a time, not every value of the graph.
        // The input, the outputs and the fused chain's values keep theirs.
        let last_read = self.last_reads();
        let chain_steps = self.chain.filter(|_| fuse).map_or(0, |c| c.steps);
        let mut upfront = vec![0];
        upfront.extend(self.steps[..chain_steps].iter().flat_map(|s| s.inputs.iter().copied().chain([s.out])));
        for i in upfront {
            self.ensure_buffer(i, n, ws);
        }
        // An integer model's input is read once, by its quantization: quantize straight
        // from the caller's buffer instead of copying it into the workspace first.
        let direct_quantize = match self.steps.first() {
            Some(Step { kernel: Kernel::Quantize(qp), inputs, out }) if inputs[0] == 0 && self.input_read_once => Some((*qp, *out)),
            _ => None,
        };
        let chain = self.chain.filter(|_| fuse);
        // A chain reads the caller's input itself (its first step is the only reader).
        if direct_quantize.is_none() && chain.is_none() {
            ws.f[0][..n * per].copy_from_slice(&x[..n * per]);
        }
        observe_slot(&self.slots[0], &x[..n * per], observe);
        ws.valid.clear();
        if let Some(c) = chain {
            self.run_chain(c, x, n, ws);
        }
        for (si, step) in self.steps.iter().enumerate().skip(chain.map_or(0, |c| c.steps)) {
            let (xi, o) = (step.inputs[0], step.out);
            if si == 0
                && let Some((qp, out)) = direct_quantize
            {
                self.ensure_buffer(out, n, ws);
                int8::quantize_u8(&x[..n * per], qp, &mut ws.q[out][..n * self.slots[out].len]);
                continue;
            }
            // An elementwise GELU whose input dies with it runs in place, on the
            // input's buffer (the FFN's widest value is then held once, not twice).
            let in_place = matches!(step.kernel, Kernel::Gelu)
                && self.slots[xi].len == self.slots[o].len
                && last_read[xi] == Some(si)
                && xi != 0
                && !self.outputs.contains(&xi);
            if in_place {
                let input = std::mem::take(&mut ws.f[xi]);
                let old = std::mem::replace(&mut ws.f[o], input);
                if old.capacity() > 0 {
                    ws.free_f.push(old);
                }
            }
            self.ensure_buffer(o, n, ws);
            let (xl, ol) = (self.slots[xi].len, self.slots[o].len);
            // Linear kernels see rows: samples × positions.
            let rows = self.linear_rows.get(&si).copied().unwrap_or(1);
            let (n, xl, ol) = if rows == 1 { (n, xl, ol) } else { (n * rows, xl / rows, ol / rows) };
            let kernel = resolve(&step.kernel, n);
            let started = ws.profile.is_some().then(std::time::Instant::now);
            match kernel {
                Kernel::LinearF32 { .. } | Kernel::LinearPacked(_) | Kernel::LinearCsr { .. } | Kernel::LinearCodebook { .. } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    run_linear_f32(kernel, &xs[..n * xl], n, &mut y[..n * ol], &mut ws.tmp, threads);
                }
                Kernel::ConvF32 { direct: Some(d), .. } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    d.forward(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.col);
                }
                Kernel::ConvF32 { w, b, g, oc, direct: None } => {
                    // Chunks of samples whose im2col matrix stays in cache: one product
                    // per chunk, scattered to the per-sample layout.
                    let (pl, q) = (g.patch_len(), g.positions());
                    let chunk = conv_chunk(g).min(n);
                    if ws.col.len() < chunk * pl * q {
                        ws.col.resize(chunk * pl * q, 0.0);
                    }
                    if ws.tmp.len() < chunk * oc * q {
                        ws.tmp.resize(chunk * oc * q, 0.0);
                    }
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    let mut s0 = 0;
                    while s0 < n {
                        let c = chunk.min(n - s0);
                        let (xc, yc) = (&xs[s0 * xl..(s0 + c) * xl], &mut y[s0 * ol..(s0 + c) * ol]);
                        conv2d_forward(xc, c, g, w, b.as_deref(), *oc, &mut ws.col, &mut ws.tmp, yc);
                        s0 += c;
                    }
                }
                Kernel::ByBatch(_) => unreachable!("resolved above"),
                Kernel::LinearI8(l) => {
                    match self.slots[o].repr {
                        Repr::U8(_) => {
                            let (xs, y) = pair(&mut ws.q, xi, o);
                            l.forward_u8_threads(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.acc, threads);
                        }
                        Repr::F32 => l.forward_f32_threads(&ws.q[xi][..n * xl], n, &mut ws.f[o][..n * ol], &mut ws.acc, threads),
                    }
                }
                Kernel::LinearDynamic(l) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    l.forward(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.dynamic, threads);
                }
                Kernel::ConvI8(c) => {
                    match self.slots[o].repr {
                        Repr::U8(_) => {
                            let (xs, y) = pair(&mut ws.q, xi, o);
                            c.forward_u8(&xs[..n * xl], n, &mut y[..n * ol], &mut ws.acc);
                        }
                        Repr::F32 => c.forward_f32(&ws.q[xi][..n * xl], n, &mut ws.f[o][..n * ol], &mut ws.acc),
                    }
                }
                Kernel::MaxPool(g) => match self.slots[o].repr {
                    Repr::F32 => {
                        let (xs, y) = pair(&mut ws.f, xi, o);
                        for s in 0..n {
                            maxpool(&xs[s * xl..(s + 1) * xl], g, &mut y[s * ol..(s + 1) * ol], None);
                        }
                    }
                    Repr::U8(_) => {
                        let (xs, y) = pair(&mut ws.q, xi, o);
                        for s in 0..n {
                            maxpool(&xs[s * xl..(s + 1) * xl], g, &mut y[s * ol..(s + 1) * ol], None);
                        }
                    }
                },
                Kernel::AvgPool(g) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    for s in 0..n {
                        crate::runtime::kernels::avgpool(&xs[s * xl..(s + 1) * xl], g, &mut y[s * ol..(s + 1) * ol]);
                    }
                }
                Kernel::Sigmoid => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    crate::runtime::kernels::sigmoid(&xs[..n * xl], &mut y[..n * ol]);
                }
                Kernel::Tanh => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    crate::runtime::kernels::tanh(&xs[..n * xl], &mut y[..n * ol]);
                }
                Kernel::Relu => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    y[..n * ol].iter_mut().zip(&xs[..n * xl]).for_each(|(v, &i)| *v = i.max(0.0));
                }
                Kernel::ReluU8(zp) => {
                    let (xs, y) = pair(&mut ws.q, xi, o);
                    y[..n * ol].iter_mut().zip(&xs[..n * xl]).for_each(|(v, &i)| *v = i.max(*zp));
                }
                Kernel::Add => {
                    let mut y = std::mem::take(&mut ws.f[o]);
                    let (a, b) = (&ws.f[step.inputs[0]], &ws.f[step.inputs[1]]);
                    for ((v, p), q) in y[..n * ol].iter_mut().zip(a).zip(b) {
                        *v = p + q;
                    }
                    ws.f[o] = y;
                }
                Kernel::Softmax => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    y[..n * ol].copy_from_slice(&xs[..n * xl]);
                    softmax_rows(&mut y[..n * ol], ol);
                }
                Kernel::Normalize { mean, std } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    crate::runtime::kernels::normalize(&xs[..n * xl], mean, std, xl, &mut y[..n * ol]);
                }
                Kernel::Recurrent(r) => {
                    ws.recurrent.reserve(&r.geo, r.steps, n);
                    let w: Vec<recurrent::CellWeights> =
                        r.dirs.iter().map(|(w_ih, w_hh, b_ih, b_hh)| recurrent::CellWeights { w_ih, w_hh, b_ih: b_ih.as_deref(), b_hh: b_hh.as_deref() }).collect();
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    recurrent::forward_node(&r.geo, r.steps, &w, &xs[..n * xl], n, &mut ws.recurrent, &mut y[..n * ol]);
                }
                Kernel::RecurrentI8 { cell, steps } => {
                    ws.recurrent.reserve(cell.geometry(), *steps, n);
                    cell.forward(*steps, &ws.q[xi][..n * xl], n, &mut ws.recurrent, &mut ws.recurrent_quant, &mut ws.f[o][..n * ol]);
                }
                Kernel::Embedding { node, table, vocab, dim, pad } => {
                    let ids = &ws.f[xi][..n * xl];
                    if let Some(id) = tf::bad_token(ids, *vocab) {
                        return Err(RuntimeError::TokenId { node: node.clone(), id, vocab: *vocab });
                    }
                    if let Some(pad) = pad {
                        ws.valid.from_ids(ids, n, xl, *pad);
                    }
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::embed(&xs[..n * xl], table, *dim, &mut y[..n * ol]);
                }
                Kernel::AddPositions { table, seq, dim } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::add_positions(&xs[..n * xl], table, *seq, *dim, &mut y[..n * ol]);
                }
                Kernel::PrependCls { row, seq, dim } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::prepend_cls(&xs[..n * xl], row, *seq, *dim, &mut y[..n * ol]);
                }
                Kernel::PatchEmbed { geo, w, b, dim } => {
                    let rows = n * geo.count();
                    if ws.col.len() < rows * geo.len() {
                        ws.col.resize(rows * geo.len(), 0.0);
                    }
                    geo.gather(&ws.f[xi][..n * xl], n, &mut ws.col);
                    let y = &mut ws.f[o][..n * ol];
                    sgemm(rows, *dim, geo.len(), MatRef::rows(&ws.col, geo.len()), MatRef::transposed(w, geo.len()), y, *dim, false);
                    for row in y.chunks_exact_mut(*dim) {
                        row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                    }
                }
                Kernel::LayerNorm { gamma, beta, dim, eps } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], *dim, |x, y| tf::layer_norm_fast(x, *dim, gamma, beta, *eps, y));
                }
                Kernel::Gelu if in_place => par_rows_in_place(threads, &mut ws.f[o][..n * ol], 1, tf::gelu_fast_in_place),
                Kernel::LayerNormInt(ln) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], ln.dim(), |x, y| ln.forward_f32(x, y));
                }
                Kernel::GeluInt(g) => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], 1, |x, y| g.forward_f32(x, y));
                }
                Kernel::Gelu => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    par_rows(threads, &xs[..n * xl], &mut y[..n * ol], 1, tf::gelu_fast);
                }
                Kernel::Pool { seq, dim, mean } => {
                    let (xs, y) = pair(&mut ws.f, xi, o);
                    tf::pool(&xs[..n * xl], n, *seq, *dim, *mean, &ws.valid, &mut y[..n * ol]);
                }
                Kernel::Attention(a) => {
                    let (geo, d, inner) = (a.geo, a.geo.dim, a.geo.inner());
                    let rows = n * geo.seq;
                    let sc = &mut ws.attention;
                    for (buf, len) in [(&mut sc.qkv, rows * 3 * inner), (&mut sc.ctx, rows * inner), (&mut sc.probs, n * geo.heads * geo.seq * geo.seq)] {
                        if buf.len() < len {
                            buf.resize(len, 0.0);
                        }
                    }
                    let xq = matches!(self.slots[xi].repr, Repr::U8(_)).then(|| &ws.q[xi][..rows * d]);
                    let xf: &[f32] = if xq.is_some() { &[] } else { &ws.f[xi][..rows * d] };
                    a.qkv.run(xf, xq, rows, d, 3 * inner, &mut sc.qkv, &mut sc.ctx_q, &mut ws.acc, &mut ws.dynamic, threads);
                    let mid = ws.profile.is_some().then(std::time::Instant::now);
                    let sc = &mut ws.attention;
                    let qkv = &sc.qkv[..rows * 3 * inner];
                    if a.integer_softmax {
                        intops::attend_integer(&geo, qkv, &qkv[inner..], &qkv[2 * inner..], 3 * inner, n, &ws.valid, &mut ws.attention_int, &mut sc.ctx);
                    } else {
                        geo.attend_threads(qkv, &qkv[inner..], &qkv[2 * inner..], 3 * inner, n, &ws.valid, &mut sc.probs, &mut sc.ctx, threads);
                    }
                    observe(&a.context, &sc.ctx[..rows * inner]);
                    let late = ws.profile.is_some().then(std::time::Instant::now);
                    a.output.run(&sc.ctx[..rows * inner], None, rows, inner, d, &mut ws.f[o][..n * ol], &mut sc.ctx_q, &mut ws.acc, &mut ws.dynamic, threads);
                    if let (Some(s), Some(m), Some(l)) = (started, mid, late) {
                        for (kind, secs) in [(a.qkv.kind(), m - s), ("attention scores+context", l - m), (a.output.kind(), l.elapsed())] {
                            ws.add_time(kind, 1, secs.as_secs_f64());
                        }
                    }
                }
                Kernel::Quantize(qp) => int8::quantize_u8(&ws.f[xi][..n * xl], *qp, &mut ws.q[o][..n * ol]),
                Kernel::Dequantize(qp) => int8::dequantize_u8(&ws.q[xi][..n * xl], *qp, &mut ws.f[o][..n * ol]),
            }
            if !matches!(kernel, Kernel::Attention(_)) {
                ws.record(kernel.kind(), started);
            }
            if self.slots[o].repr == Repr::F32 {
                observe_slot(&self.slots[o], &ws.f[o][..n * ol], observe);
            }
            for &done in step.inputs.iter().chain([&o]) {
                let held = match self.slots[done].repr {
                    Repr::F32 => ws.f[done].capacity(),
                    Repr::U8(_) => ws.q[done].capacity(),
                };
                if held > 0 && last_read[done] <= Some(si) && !self.outputs.contains(&done) && done != 0 {
                    match self.slots[done].repr {
                        Repr::F32 => ws.free_f.push(std::mem::take(&mut ws.f[done])),
                        Repr::U8(_) => ws.free_q.push(std::mem::take(&mut ws.q[done])),
                    }
                }
            }
        }
        Ok(())
    }

    /// Per slot, the last step that reads it (None: no step reads it).
    fn last_reads(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.slots.len()];
        for (si, step) in self.steps.iter().enumerate() {
            for &i in &step.inputs {
                last[i] = Some(si);
            }
        }
        last
    }

    /// Gives slot `i` a buffer for `n` samples, reusing a freed one when there is one.
    fn ensure_buffer(&self, i: usize, n: usize, ws: &mut Workspace) {
        let need = n * self.slots[i].len;
        match self.slots[i].repr {
            Repr::F32 if ws.f[i].len() < need => {
                if ws.f[i].is_empty() {
                    ws.f[i] = take_free(&mut ws.free_f, need);
                }
                ws.f[i].resize(need, 0.0);
            }
            Repr::U8(_) if ws.q[i].len() < need => {
                if ws.q[i].is_empty() {
                    ws.q[i] = take_free(&mut ws.free_q, need);
                }
                ws.q[i].resize(need, 0);
            }
            _ => {}
        }
    }
}

/// The smallest freed buffer holding `need` values, else the largest (to be grown).
fn take_free<T>(free: &mut Vec<Vec<T>>, need: usize) -> Vec<T> {
    let fits = free.iter().enumerate().filter(|(_, b)| b.len() >= need).min_by_key(|(_, b)| b.len()).map(|(i, _)| i);
    let pick = fits.or_else(|| free.iter().enumerate().max_by_key(|(_, b)| b.len()).map(|(i, _)| i));
    pick.map(|i| free.swap_remove(i)).unwrap_or_default()
}

/// Values below which an element-wise step stays on one thread: waking a second one
/// costs about as much as it saves.
pub(in crate::runtime) const PAR_MIN_VALUES: usize = 1 << 14;

/// Values per share when `len` values in rows of `row` are split among `threads`, or
/// `None` when the step should stay on one thread.
fn par_chunk(threads: usize, len: usize, row: usize) -> Option<usize> {
    if threads <= 1 || len < 2 * PAR_MIN_VALUES {
        return None;
    }
    let rows = len / row.max(1);
    Some(rows.div_ceil(threads).max(PAR_MIN_VALUES / row.max(1)) * row)
}

/// `f` on rows of `row` values of `x` into `y`, the rows shared among up to `threads`
/// threads when there are enough of them to pay for the hand-over.
fn par_rows(threads: usize, x: &[f32], y: &mut [f32], row: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    use rayon::prelude::*;
    match par_chunk(threads, x.len(), row) {
        None => f(x, y),
        Some(chunk) => x.par_chunks(chunk).zip(y.par_chunks_mut(chunk)).for_each(|(x, y)| f(x, y)),
    }
}

/// [`par_rows`] on values overwritten in place.
fn par_rows_in_place(threads: usize, v: &mut [f32], row: usize, f: impl Fn(&mut [f32]) + Sync) {
    use rayon::prelude::*;
    match par_chunk(threads, v.len(), row) {
        None => f(v),
        Some(chunk) => v.par_chunks_mut(chunk).for_each(|c| f(c)),
    }
}

/// The kernel that runs a batch of `n` (a by-batch choice resolved).
fn resolve(kernel: &Kernel, n: usize) -> &Kernel {
    match kernel {
        Kernel::ByBatch(by) => by.iter().find(|(bound, _)| n < *bound).map_or(&by[by.len() - 1].1, |(_, k)| k),
        k => k,
    }
}

/// A float Linear kernel on `n` samples: `y = x·Wᵀ + b` (the dense product on up to
/// `threads` threads).
pub(super) fn run_linear_f32(kernel: &Kernel, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Vec<f32>, threads: usize) {
    match kernel {
        Kernel::LinearF32 { w, b, inf, outf } => {
            sgemm_threads(n, *outf, *inf, MatRef::rows(x, *inf), MatRef::transposed(w, *inf), y, *outf, false, threads);
            if let Some(b) = b {
                for row in y.chunks_exact_mut(*outf) {
                    row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                }
            }
        }
        Kernel::LinearPacked(p) => p.forward(x, n, y, threads),
        Kernel::LinearCsr { csr, b } => csr.forward(x, n, b.as_deref(), y),
        Kernel::LinearCodebook { cb, b } => cb.forward(x, n, b.as_deref(), y, scratch),
        _ => unreachable!("not a float Linear kernel"),
    }
}

fn observe_slot(slot: &Slot, data: &[f32], observe: &mut dyn FnMut(&str, &[f32])) {
    for name in &slot.names {
        observe(name, data);
    }
}

/// Disjoint borrows of buffer `a` (read) and `b` (write), `a != b`.
fn pair<T>(bufs: &mut [Vec<T>], a: usize, b: usize) -> (&[T], &mut [T]) {
    assert_ne!(a, b);
    if a < b {
        let (lo, hi) = bufs.split_at_mut(b);
        (&lo[a], &mut hi[0])
    } else {
        let (lo, hi) = bufs.split_at_mut(a);
        (&hi[0], &mut lo[b])
    }
}
