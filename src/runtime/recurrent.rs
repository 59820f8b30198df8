//! LSTM and GRU forward over a batch of sequences, shared by the inference runtime and
//! the trainer (which keeps the buffers filled here for its backward pass).
//!
//! Layout: a batch of `n` sequences of `steps` steps is sample-major, `x[n, t, i]`.
//! The input projection of every step is one matrix product over all `n·steps` rows;
//! each step then adds the recurrent product `h_{t−1} · W_hhᵀ` (one product over the
//! batch, strided views into the sample-major buffers) and applies the gates.
//! Gate order and equations are PyTorch's:
//!
//! - LSTM (i, f, g, o): `c_t = σ(f)·c_{t−1} + σ(i)·tanh(g)`, `h_t = σ(o)·tanh(c_t)`, where
//!   each gate is `W_i· x_t + b_i· + W_h· h_{t−1} + b_h·`.
//! - GRU (r, z, n): `r = σ(W_ir x + b_ir + W_hr h + b_hr)`, `z` likewise,
//!   `n = tanh(W_in x + b_in + r·(W_hn h + b_hn))`, `h_t = (1 − z)·n + z·h_{t−1}`.

use super::int8::{quantize_u8, QuantizedLinear};
use super::intops::IntGates;
use super::kernels::{sgemm, MatRef};
use crate::spec::{Cell, QParams, Recurrent};

/// A recurrent node's parameters (PyTorch layouts, see [`crate::spec::Op::Lstm`]).
#[derive(Clone, Copy, Debug)]
pub struct CellWeights<'a> {
    pub w_ih: &'a [f32],
    pub w_hh: &'a [f32],
    pub b_ih: Option<&'a [f32]>,
    pub b_hh: Option<&'a [f32]>,
}

/// What one forward pass leaves behind; the trainer's backward reads it.
#[derive(Clone, Debug, Default)]
pub struct Scratch {
    /// `[n, steps, gates·H]`: activated gates (LSTM i, f, g, o; GRU r, z, n).
    pub gates: Vec<f32>,
    /// `[n, steps, H]`: the hidden state each step starts from, `h_{t−1}` (zero at t = 0).
    pub hprev: Vec<f32>,
    /// LSTM: `[n, steps, H]` cell states `c_t`.
    pub cells: Vec<f32>,
    /// LSTM: `[n, steps, H]` `tanh(c_t)`, kept for the backward pass.
    pub tanh_cells: Vec<f32>,
    /// `[H]`: the hidden state being computed.
    pub h_new: Vec<f32>,
    /// `[H]` zeros: the state before the first step.
    zeros: Vec<f32>,
    /// GRU: `[n, steps, 3H]` recurrent products `W_hh·h_{t−1} + b_hh` (the n part is
    /// needed for the reset gate's gradient).
    pub hh: Vec<f32>,
    /// Bidirectional nodes: the time-reversed input sequence.
    pub x_rev: Vec<f32>,
    /// Bidirectional nodes: one direction's output before it is placed.
    pub y_dir: Vec<f32>,
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// The time-reversed copy of `x[n, steps, width]` (step `t` goes to `steps − 1 − t`).
pub fn reverse_steps<T: Copy>(x: &[T], n: usize, steps: usize, width: usize, out: &mut [T]) {
    for s in 0..n {
        for t in 0..steps {
            let (from, to) = ((s * steps + t) * width, (s * steps + steps - 1 - t) * width);
            out[to..to + width].copy_from_slice(&x[from..from + width]);
        }
    }
}

/// Where direction `d`'s output goes in a bidirectional node's output `[n, (steps,) 2H]`:
/// calls `f(offset in the direction's own output, offset in the node's output)` for
/// every `H`-long row. The direction's own output is `[n, H]`, or `[n, steps, H]` in
/// the order it ran (reversed time for the reverse direction).
fn direction_rows(r: &Recurrent, steps: usize, n: usize, d: usize, mut f: impl FnMut(usize, usize)) {
    let (h, w) = (r.hidden, 2 * r.hidden);
    for s in 0..n {
        if r.sequence {
            for t in 0..steps {
                let ran = if d == 0 { t } else { steps - 1 - t };
                f((s * steps + ran) * h, (s * steps + t) * w + d * h);
            }
        } else {
            f(s * h, s * w + d * h);
        }
    }
}

/// Direction `d`'s output `y_dir` into its half of the bidirectional output `y`.
pub fn place_direction(r: &Recurrent, steps: usize, n: usize, d: usize, y_dir: &[f32], y: &mut [f32]) {
    let h = r.hidden;
    direction_rows(r, steps, n, d, |own, node| y[node..node + h].copy_from_slice(&y_dir[own..own + h]));
}

/// The inverse of [`place_direction`]: direction `d`'s part of `dy` (a gradient w.r.t.
/// the bidirectional output) in that direction's own layout.
pub fn take_direction(r: &Recurrent, steps: usize, n: usize, d: usize, dy: &[f32], dy_dir: &mut [f32]) {
    let h = r.hidden;
    direction_rows(r, steps, n, d, |own, node| dy_dir[own..own + h].copy_from_slice(&dy[node..node + h]));
}

/// As [`forward`] for a node of either kind: `w` holds one [`CellWeights`] per
/// direction. A bidirectional node runs the forward direction on `x` and the reverse
/// direction on `x` reversed in time, each as a one-direction node, and places each
/// output in its half of `y`.
pub fn forward_node(r: &Recurrent, steps: usize, w: &[CellWeights], x: &[f32], n: usize, scratch: &mut Scratch, y: &mut [f32]) {
    if !r.bidirectional {
        return forward(r, steps, &w[0], x, n, scratch, y);
    }
    let one = r.one_direction();
    let (xl, ol) = (n * steps * r.input_size, n * if r.sequence { steps * r.hidden } else { r.hidden });
    let (mut x_rev, mut y_dir) = (std::mem::take(&mut scratch.x_rev), std::mem::take(&mut scratch.y_dir));
    grow(&mut x_rev, xl);
    grow(&mut y_dir, ol);
    reverse_steps(&x[..xl], n, steps, r.input_size, &mut x_rev[..xl]);
    for (d, xd) in [&x[..xl], &x_rev[..xl]].into_iter().enumerate() {
        forward(&one, steps, &w[d], xd, n, scratch, &mut y_dir[..ol]);
        place_direction(r, steps, n, d, &y_dir[..ol], y);
    }
    (scratch.x_rev, scratch.y_dir) = (x_rev, y_dir);
}

impl Scratch {
    /// Grows the buffers to hold `n` sequences of `steps` steps.
    pub fn reserve(&mut self, r: &Recurrent, steps: usize, n: usize) {
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        let (h, rows) = (r.hidden, n * steps);
        grow(&mut self.gates, rows * r.gate_rows());
        grow(&mut self.hprev, rows * h);
        grow(&mut self.h_new, h);
        grow(&mut self.zeros, h);
        match r.cell {
            Cell::Lstm => {
                grow(&mut self.cells, rows * h);
                grow(&mut self.tanh_cells, rows * h);
            }
            Cell::Gru => grow(&mut self.hh, rows * 3 * h),
        }
    }
}

/// `e^x` by range reduction to `2^k · e^r`, |r| ≤ ln2/2, and a degree-6 polynomial
/// (relative error below 3e-7 on the clamped range). Branch-free, so loops over it
/// vectorize: libm's `expf`/`tanhf` were ~40% of LSTM training time.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    #![allow(clippy::excessive_precision)]
    let x = x.max(-87.0).min(87.0);
    // Round to nearest by adding 1.5·2²³: the sum's low mantissa bits then hold the
    // integer, so no float→int conversion (a libm call or a saturating branch on
    // baseline x86-64) keeps the loop from vectorizing.
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    // ln 2 split in two so `k·ln2` subtracts exactly.
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k from k's bits: |k| ≤ 126 after the clamp, so the exponent field stays normal.
    let k_bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    p * f32::from_bits(k_bits.wrapping_add(127) << 23)
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh x = 1 − 2 / (e^{2x} + 1)` (absolute error ~1e-7 near 0, exact sign and limits).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `v = σ(v)` element-wise, 8 lanes at a time where AVX2/FMA are present.
pub fn sigmoid_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        // SAFETY: the features were just detected.
        return unsafe { sigmoid_avx2(v) };
    }
    v.iter_mut().for_each(|a| *a = sigmoid(*a));
}

/// `v = tanh(v)` element-wise, 8 lanes at a time where AVX2/FMA are present.
pub fn tanh_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        // SAFETY: the features were just detected.
        return unsafe { tanh_avx2(v) };
    }
    v.iter_mut().for_each(|a| *a = tanh(*a));
}

/// The same loops compiled for AVX2/FMA (the crate builds for baseline x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid_avx2(v: &mut [f32]) {
    v.iter_mut().for_each(|a| *a = sigmoid(*a));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_avx2(v: &mut [f32]) {
    v.iter_mut().for_each(|a| *a = tanh(*a));
}

/// Runs `n` sequences `x[n, steps, input_size]` in one direction; writes `y[n, H]`
/// (last hidden state) or `y[n, steps, H]` with `r.sequence`. `scratch` must hold
/// `n·steps` rows ([`Scratch::reserve`]). Bidirectional nodes: [`forward_node`].
pub fn forward(r: &Recurrent, steps: usize, w: &CellWeights, x: &[f32], n: usize, scratch: &mut Scratch, y: &mut [f32]) {
    let (h, isz, g) = (r.hidden, r.input_size, r.gate_rows());
    let rows = n * steps;
    // Input projection of every step at once: gates = X · W_ihᵀ (+ biases).
    sgemm(rows, g, isz, MatRef::rows(&x[..rows * isz], isz), MatRef::transposed(w.w_ih, isz), &mut scratch.gates[..rows * g], g, false);
    add_input_biases(r, w.b_ih, w.b_hh, &mut scratch.gates[..rows * g]);
    let (sh, sg) = (steps * h, steps * g);
    let accumulate = r.cell == Cell::Lstm;
    run_steps(r, steps, w.b_hh, n, scratch, y, None, &mut |hp, dst| {
        // LSTM: gates[:, t] += h_{t−1} · W_hhᵀ; GRU: hh[:, t] = h_{t−1} · W_hhᵀ.
        sgemm(n, g, h, MatRef { data: hp, rs: sh, cs: 1 }, MatRef::transposed(w.w_hh, h), dst, sg, accumulate);
    });
}

/// Adds `b_ih` (and for an LSTM `b_hh`, which simply adds to the same pre-activations)
/// to every row of the input projection.
fn add_input_biases(r: &Recurrent, b_ih: Option<&[f32]>, b_hh: Option<&[f32]>, gates: &mut [f32]) {
    let g = r.gate_rows();
    let lstm_b_hh = if r.cell == Cell::Lstm { b_hh } else { None };
    for b in [b_ih, lstm_b_hh].into_iter().flatten() {
        for row in gates.chunks_exact_mut(g) {
            row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
        }
    }
}

/// The steps after the input projection (in `scratch.gates`): per step, the recurrent
/// product from `recurrent_product(h_{t−1} rows, destination rows)` — both start at step
/// `t` of sample 0 with rows `steps·H` and `steps·gates·H` apart; an LSTM adds into the
/// gates, a GRU overwrites `scratch.hh` — then the gates and the state update in f32.
/// With `integer_gates`, every sigmoid and tanh runs on [`IntGates`] instead (the gate
/// pre-activations rounded to fixed point; the state update stays f32).
#[allow(clippy::too_many_arguments)]
fn run_steps(
    r: &Recurrent,
    steps: usize,
    b_hh: Option<&[f32]>,
    n: usize,
    scratch: &mut Scratch,
    y: &mut [f32],
    integer_gates: Option<&IntGates>,
    recurrent_product: &mut dyn FnMut(&[f32], &mut [f32]),
) {
    let sigmoid_in_place = |v: &mut [f32]| match integer_gates {
        Some(g) => g.sigmoid_f32(v),
        None => sigmoid_in_place(v),
    };
    let tanh_in_place = |v: &mut [f32]| match integer_gates {
        Some(g) => g.tanh_f32(v),
        None => tanh_in_place(v),
    };
    let (h, g) = (r.hidden, r.gate_rows());
    let rows = n * steps;
    let gates = &mut scratch.gates[..rows * g];
    let hprev = &mut scratch.hprev[..rows * h];
    for s in 0..n {
        hprev[s * steps * h..(s * steps + 1) * h].fill(0.0);
    }
    let zeros = &scratch.zeros[..h];
    for t in 0..steps {
        if t > 0 {
            match r.cell {
                Cell::Lstm => recurrent_product(&hprev[t * h..], &mut gates[t * g..]),
                Cell::Gru => recurrent_product(&hprev[t * h..], &mut scratch.hh[t * g..]),
            }
        }
        for s in 0..n {
            let row = (s * steps + t) * g;
            let at = (s * steps + t) * h;
            let gt = &mut gates[row..row + g];
            let h_new = &mut scratch.h_new[..h];
            match r.cell {
                Cell::Lstm => {
                    sigmoid_in_place(&mut gt[..2 * h]);
                    tanh_in_place(&mut gt[2 * h..3 * h]);
                    sigmoid_in_place(&mut gt[3 * h..]);
                    let (done, cur) = scratch.cells.split_at_mut(at);
                    let cp = if t > 0 { &done[at - h..] } else { &zeros[..] };
                    let (c, tc) = (&mut cur[..h], &mut scratch.tanh_cells[at..at + h]);
                    let (i, rest) = gt.split_at(h);
                    let (f, rest) = rest.split_at(h);
                    let (gg, o) = rest.split_at(h);
                    for k in 0..h {
                        c[k] = f[k] * cp[k] + i[k] * gg[k];
                    }
                    tc.copy_from_slice(c);
                    tanh_in_place(tc);
                    for k in 0..h {
                        h_new[k] = o[k] * tc[k];
                    }
                }
                Cell::Gru => {
                    let hrow = &mut scratch.hh[row..row + g];
                    if t == 0 {
                        hrow.fill(0.0);
                    }
                    if let Some(b) = b_hh {
                        hrow.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                    }
                    for k in 0..2 * h {
                        gt[k] += hrow[k];
                    }
                    sigmoid_in_place(&mut gt[..2 * h]);
                    let (rz, nn) = gt.split_at_mut(2 * h);
                    let (rg, zg) = rz.split_at(h);
                    for k in 0..h {
                        nn[k] += rg[k] * hrow[2 * h + k];
                    }
                    tanh_in_place(nn);
                    let hp = &hprev[at..at + h];
                    for k in 0..h {
                        h_new[k] = (1.0 - zg[k]) * nn[k] + zg[k] * hp[k];
                    }
                }
            }
            // h_t is the next step's h_{t−1} and, in sequence mode or at the last step, output.
            if t + 1 < steps {
                hprev[at + h..at + 2 * h].copy_from_slice(h_new);
            }
            if r.sequence {
                y[at..at + h].copy_from_slice(h_new);
            } else if t + 1 == steps {
                y[s * h..(s + 1) * h].copy_from_slice(h_new);
            }
        }
    }
}

/// The static quantization of a recurrent hidden state fed back into the recurrent
/// product: an LSTM's `h = σ(o)·tanh(c)` and a GRU's `h` (a convex mix of tanh values,
/// starting from 0) lie in [−1, 1], so no calibration is needed. Zero point 128 makes
/// the zero initial state exact; the step is 2/255.
pub const HIDDEN_QPARAMS: QParams = QParams { scale: 2.0 / 255.0, zero_point: 128 };

/// An LSTM/GRU node on integer products: `weight_ih` and `weight_hh` as symmetric int8
/// per gate row, the input sequence as u8 (calibrated [`QParams`]) and the hidden state
/// as u8 at [`HIDDEN_QPARAMS`]; u8 × i8 → exact i32, dequantized to f32 per gate row.
/// Biases, gate nonlinearities and the state update stay f32 (the same code as
/// [`forward`]). The input projection of all steps is one integer product.
/// A bidirectional node holds a second direction (`_reverse` weights) that runs on the
/// input reversed in time, as [`forward_node`] does.
#[derive(Clone, Debug)]
pub struct QuantizedRecurrent {
    geo: Recurrent,
    input_qp: QParams,
    /// The forward direction, then (bidirectional) the reverse one.
    dirs: Vec<QuantizedDirection>,
    /// Gate sigmoid/tanh on integers ([`IntGates`]) instead of f32.
    integer_gates: Option<IntGates>,
}

#[derive(Clone, Debug)]
struct QuantizedDirection {
    w_ih: QuantizedLinear,
    w_hh: QuantizedLinear,
    b_ih: Option<Vec<f32>>,
    b_hh: Option<Vec<f32>>,
}

/// Per-call buffers of [`QuantizedRecurrent::forward`].
#[derive(Clone, Debug, Default)]
pub struct QuantScratch {
    /// `[n, H]`: `h_{t−1}` quantized.
    hq: Vec<u8>,
    /// `[n, gates·H]`: the recurrent product of one step.
    rec: Vec<f32>,
    acc: Vec<i32>,
    /// Bidirectional nodes: the time-reversed u8 input sequence.
    x_rev: Vec<u8>,
}

impl QuantizedRecurrent {
    /// `w_ih`/`w_hh` as `(int8 values, one scale per gate row)` in PyTorch's layout;
    /// `input_qp` quantizes the input sequence. A bidirectional `geo` needs
    /// [`Self::with_reverse`] before it runs.
    pub fn new(
        geo: Recurrent,
        w_ih: (&[i8], &[f32]),
        w_hh: (&[i8], &[f32]),
        b_ih: Option<Vec<f32>>,
        b_hh: Option<Vec<f32>>,
        input_qp: QParams,
    ) -> QuantizedRecurrent {
        let mut q = QuantizedRecurrent { geo, input_qp, dirs: Vec::new(), integer_gates: None };
        q.push_direction(w_ih, w_hh, b_ih, b_hh);
        q
    }

    /// The reverse direction's weights (the `_reverse` tensors), as in [`Self::new`].
    pub fn with_reverse(mut self, w_ih: (&[i8], &[f32]), w_hh: (&[i8], &[f32]), b_ih: Option<Vec<f32>>, b_hh: Option<Vec<f32>>) -> QuantizedRecurrent {
        self.push_direction(w_ih, w_hh, b_ih, b_hh);
        self
    }

    fn push_direction(&mut self, w_ih: (&[i8], &[f32]), w_hh: (&[i8], &[f32]), b_ih: Option<Vec<f32>>, b_hh: Option<Vec<f32>>) {
        let (geo, g) = (self.geo, self.geo.gate_rows());
        self.dirs.push(QuantizedDirection {
            w_ih: QuantizedLinear::new(w_ih.0, w_ih.1, g, geo.input_size, None, self.input_qp, None, false),
            w_hh: QuantizedLinear::new(w_hh.0, w_hh.1, g, geo.hidden, None, HIDDEN_QPARAMS, None, false),
            b_ih,
            b_hh,
        });
    }

    /// Runs the gate sigmoid and tanh on [`IntGates`] when `on`.
    pub fn with_integer_gates(mut self, on: bool) -> QuantizedRecurrent {
        self.integer_gates = on.then(IntGates::default);
        self
    }

    /// The node's geometry.
    pub fn geometry(&self) -> &Recurrent {
        &self.geo
    }

    /// The quantization the input sequence must arrive in.
    pub fn input_qparams(&self) -> QParams {
        self.input_qp
    }

    /// As [`forward_node`], from the input quantized at [`Self::input_qparams`].
    pub fn forward(&self, steps: usize, x: &[u8], n: usize, scratch: &mut Scratch, quant: &mut QuantScratch, y: &mut [f32]) {
        let r = &self.geo;
        let one = r.one_direction();
        if !r.bidirectional {
            return self.forward_direction(&self.dirs[0], &one, steps, x, n, scratch, quant, y);
        }
        assert_eq!(self.dirs.len(), 2, "a bidirectional integer node is built with its reverse weights");
        let (xl, ol) = (n * steps * r.input_size, n * if r.sequence { steps * r.hidden } else { r.hidden });
        let (mut x_rev, mut y_dir) = (std::mem::take(&mut quant.x_rev), std::mem::take(&mut scratch.y_dir));
        grow(&mut x_rev, xl);
        grow(&mut y_dir, ol);
        reverse_steps(&x[..xl], n, steps, r.input_size, &mut x_rev[..xl]);
        for (d, xd) in [&x[..xl], &x_rev[..xl]].into_iter().enumerate() {
            self.forward_direction(&self.dirs[d], &one, steps, xd, n, scratch, quant, &mut y_dir[..ol]);
            place_direction(r, steps, n, d, &y_dir[..ol], y);
        }
        (quant.x_rev, scratch.y_dir) = (x_rev, y_dir);
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_direction(&self, dir: &QuantizedDirection, r: &Recurrent, steps: usize, x: &[u8], n: usize, scratch: &mut Scratch, quant: &mut QuantScratch, y: &mut [f32]) {
        let (h, g) = (r.hidden, r.gate_rows());
        let rows = n * steps;
        dir.w_ih.forward_f32(&x[..rows * r.input_size], rows, &mut scratch.gates[..rows * g], &mut quant.acc);
        add_input_biases(r, dir.b_ih.as_deref(), dir.b_hh.as_deref(), &mut scratch.gates[..rows * g]);
        let (sh, sg) = (steps * h, steps * g);
        if quant.hq.len() < n * h {
            quant.hq.resize(n * h, 0);
        }
        if quant.rec.len() < n * g {
            quant.rec.resize(n * g, 0.0);
        }
        let QuantScratch { hq, rec, acc, .. } = quant;
        let (hq, rec) = (&mut hq[..n * h], &mut rec[..n * g]);
        let accumulate = r.cell == Cell::Lstm;
        run_steps(r, steps, dir.b_hh.as_deref(), n, scratch, y, self.integer_gates.as_ref(), &mut |hp, dst| {
            for (s, q) in hq.chunks_exact_mut(h).enumerate() {
                quantize_u8(&hp[s * sh..s * sh + h], HIDDEN_QPARAMS, q);
            }
            dir.w_hh.forward_f32(hq, n, rec, acc);
            for (s, p) in rec.chunks_exact(g).enumerate() {
                let d = &mut dst[s * sg..s * sg + g];
                if accumulate {
                    d.iter_mut().zip(p).for_each(|(v, p)| *v += p);
                } else {
                    d.copy_from_slice(p);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// One sequence by the textbook equations, step by step in f64.
    fn reference(r: &Recurrent, steps: usize, w: &CellWeights, x: &[f32]) -> Vec<Vec<f64>> {
        let (h, isz, g) = (r.hidden, r.input_size, r.gate_rows());
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mv = |m: &[f32], cols: usize, v: &[f64], row: usize| -> f64 { (0..cols).map(|c| m[row * cols + c] as f64 * v[c]).sum() };
        let mut hs = vec![0.0f64; h];
        let mut cs = vec![0.0f64; h];
        let mut out = Vec::new();
        for t in 0..steps {
            let xt: Vec<f64> = x[t * isz..(t + 1) * isz].iter().map(|&v| v as f64).collect();
            let bi = |j: usize| w.b_ih.map_or(0.0, |b| b[j] as f64);
            let bh = |j: usize| w.b_hh.map_or(0.0, |b| b[j] as f64);
            let gi: Vec<f64> = (0..g).map(|j| mv(w.w_ih, isz, &xt, j) + bi(j)).collect();
            let gh: Vec<f64> = (0..g).map(|j| mv(w.w_hh, h, &hs, j) + bh(j)).collect();
            let mut next = vec![0.0; h];
            for k in 0..h {
                match r.cell {
                    Cell::Lstm => {
                        let a = |q: usize| gi[q * h + k] + gh[q * h + k];
                        let c = sig(a(1)) * cs[k] + sig(a(0)) * a(2).tanh();
                        cs[k] = c;
                        next[k] = sig(a(3)) * c.tanh();
                    }
                    Cell::Gru => {
                        let rv = sig(gi[k] + gh[k]);
                        let zv = sig(gi[h + k] + gh[h + k]);
                        let nv = (gi[2 * h + k] + rv * gh[2 * h + k]).tanh();
                        next[k] = (1.0 - zv) * nv + zv * hs[k];
                    }
                }
            }
            hs = next;
            out.push(hs.clone());
        }
        out
    }

    /// The integer cell plainly, one sequence: u8 input and hidden state, exact integer
    /// dot products, each scaled by `s_x·s_w[row]` in f32, biases added in the kernel's
    /// order, gates by this module's scalar `sigmoid`/`tanh`.
    #[allow(clippy::too_many_arguments)]
    fn int8_reference(r: &Recurrent, steps: usize, q_ih: &[i8], s_ih: &[f32], q_hh: &[i8], s_hh: &[f32], b_ih: Option<&[f32]>, b_hh: Option<&[f32]>, xq: &[u8], xqp: QParams) -> Vec<Vec<f32>> {
        let (h, isz, g) = (r.hidden, r.input_size, r.gate_rows());
        let hq_p = HIDDEN_QPARAMS;
        let quant = |v: f32| -> u8 {
            let s = (v / hq_p.scale).clamp((-hq_p.zero_point - 1) as f32, (256 - hq_p.zero_point) as f32) as f64;
            (s.round() as i32 + hq_p.zero_point).clamp(0, 255) as u8
        };
        let dot = |q: &[i8], row: usize, cols: usize, a: &[u8], zp: i32| -> i32 { (0..cols).map(|c| (a[c] as i32 - zp) * q[row * cols + c] as i32).sum() };
        let (mut hs, mut cs) = (vec![0.0f32; h], vec![0.0f32; h]);
        let mut out = Vec::new();
        for t in 0..steps {
            let xt = &xq[t * isz..(t + 1) * isz];
            let hq: Vec<u8> = hs.iter().map(|&v| quant(v)).collect();
            let mut pre: Vec<f32> = (0..g).map(|j| (xqp.scale * s_ih[j]) * dot(q_ih, j, isz, xt, xqp.zero_point) as f32).collect();
            for (j, p) in pre.iter_mut().enumerate() {
                if let Some(b) = b_ih {
                    *p += b[j];
                }
                if let (Cell::Lstm, Some(b)) = (r.cell, b_hh) {
                    *p += b[j];
                }
            }
            let rec: Vec<f32> = (0..g).map(|j| if t == 0 { 0.0 } else { (hq_p.scale * s_hh[j]) * dot(q_hh, j, h, &hq, hq_p.zero_point) as f32 }).collect();
            let mut next = vec![0.0f32; h];
            match r.cell {
                Cell::Lstm => {
                    let a: Vec<f32> = (0..g).map(|j| if t == 0 { pre[j] } else { pre[j] + rec[j] }).collect();
                    for k in 0..h {
                        let c = sigmoid(a[h + k]) * cs[k] + sigmoid(a[k]) * tanh(a[2 * h + k]);
                        cs[k] = c;
                        next[k] = sigmoid(a[3 * h + k]) * tanh(c);
                    }
                }
                Cell::Gru => {
                    let hh: Vec<f32> = (0..g).map(|j| rec[j] + b_hh.map_or(0.0, |b| b[j])).collect();
                    for k in 0..h {
                        let rv = sigmoid(pre[k] + hh[k]);
                        let zv = sigmoid(pre[h + k] + hh[h + k]);
                        let nv = tanh(pre[2 * h + k] + rv * hh[2 * h + k]);
                        next[k] = (1.0 - zv) * nv + zv * hs[k];
                    }
                }
            }
            hs = next;
            out.push(hs.clone());
        }
        out
    }

    #[test]
    fn integer_cell_matches_the_plain_integer_reference_on_odd_shapes() {
        use crate::runtime::int8::quantize_u8;
        let mut rng = Rng::new(77);
        let quantize_rows = |w: &[f32], rows: usize| -> (Vec<i8>, Vec<f32>) {
            let cols = w.len() / rows;
            let mut q = Vec::new();
            let mut scales = Vec::new();
            for row in w.chunks(cols) {
                let s = row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) / 127.0;
                scales.push(s);
                q.extend(row.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
            }
            (q, scales)
        };
        for cell in [Cell::Lstm, Cell::Gru] {
            for (isz, hidden, steps, n, bias, sequence) in [(3, 5, 4, 3, true, false), (7, 2, 1, 2, false, true), (1, 9, 6, 5, true, true), (29, 17, 3, 1, true, false)] {
                let r = Recurrent { cell, input_size: isz, hidden, bias, sequence, bidirectional: false };
                let g = r.gate_rows();
                let mut v = |len: usize, a: f32| -> Vec<f32> { (0..len).map(|_| rng.uniform(a)).collect() };
                let (w_ih, w_hh, b_ih, b_hh) = (v(g * isz, 0.8), v(g * hidden, 0.8), v(g, 0.5), v(g, 0.5));
                let x = v(n * steps * isz, 1.5);
                let xqp = QParams::from_range(-1.5, 1.5);
                let mut xq = vec![0u8; x.len()];
                quantize_u8(&x, xqp, &mut xq);
                let ((q_ih, s_ih), (q_hh, s_hh)) = (quantize_rows(&w_ih, g), quantize_rows(&w_hh, g));
                let (bi, bh) = (bias.then(|| b_ih.clone()), bias.then(|| b_hh.clone()));
                let cellq = QuantizedRecurrent::new(r, (&q_ih, &s_ih), (&q_hh, &s_hh), bi.clone(), bh.clone(), xqp);
                let mut scratch = Scratch::default();
                scratch.reserve(&r, steps, n);
                let out_len = if sequence { steps * hidden } else { hidden };
                let mut y = vec![0.0; n * out_len];
                cellq.forward(steps, &xq, n, &mut scratch, &mut QuantScratch::default(), &mut y);
                // And the float cell on the same (unquantized) weights, for the size of the quantization error.
                let wf = CellWeights { w_ih: &w_ih, w_hh: &w_hh, b_ih: bi.as_deref(), b_hh: bh.as_deref() };
                for s in 0..n {
                    let xs = &xq[s * steps * isz..(s + 1) * steps * isz];
                    let want = int8_reference(&r, steps, &q_ih, &s_ih, &q_hh, &s_hh, bi.as_deref(), bh.as_deref(), xs, xqp);
                    let want: Vec<f32> = if sequence { want.concat() } else { want.last().unwrap().clone() };
                    for (a, b) in y[s * out_len..(s + 1) * out_len].iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "{cell:?} {isz}x{hidden}: {a} vs {b}");
                    }
                    let float = reference(&r, steps, &wf, &x[s * steps * isz..(s + 1) * steps * isz]);
                    let float: Vec<f64> = if sequence { float.concat() } else { float.last().unwrap().clone() };
                    for (a, b) in y[s * out_len..(s + 1) * out_len].iter().zip(&float) {
                        assert!((*a as f64 - b).abs() < 0.06, "{cell:?} {isz}x{hidden}: int8 {a} vs float {b}");
                    }
                }
            }
        }
    }

    /// A bidirectional node, f32 and int8, against the per-direction references: the
    /// forward half is the plain cell on the sequence, the reverse half the cell (with
    /// the `_reverse` weights) on the sequence read backwards, placed step by step.
    #[test]
    fn bidirectional_nodes_match_the_references_run_on_the_reversed_sequence() {
        use crate::runtime::int8::quantize_u8;
        let mut rng = Rng::new(41);
        let quantize_rows = |w: &[f32], rows: usize| -> (Vec<i8>, Vec<f32>) {
            let cols = w.len() / rows;
            let scales: Vec<f32> = w.chunks(cols).map(|row| row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) / 127.0).collect();
            let q = w.iter().enumerate().map(|(i, v)| (v / scales[i / cols]).round().clamp(-127.0, 127.0) as i8).collect();
            (q, scales)
        };
        for cell in [Cell::Lstm, Cell::Gru] {
            for (isz, hidden, steps, n, bias, sequence) in [(3, 5, 4, 3, true, false), (2, 3, 5, 2, true, true), (4, 2, 1, 1, false, true), (5, 4, 3, 2, false, false)] {
                let r = Recurrent { cell, input_size: isz, hidden, bias, sequence, bidirectional: true };
                let one = r.one_direction();
                let g = r.gate_rows();
                let mut v = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform(0.8)).collect() };
                let dirs: Vec<[Vec<f32>; 4]> = (0..2).map(|_| [v(g * isz), v(g * hidden), v(g), v(g)]).collect();
                let w: Vec<CellWeights> = dirs
                    .iter()
                    .map(|[a, b, c, d]| CellWeights { w_ih: a, w_hh: b, b_ih: bias.then_some(&c[..]), b_hh: bias.then_some(&d[..]) })
                    .collect();
                let x = v(n * steps * isz);
                let mut scratch = Scratch::default();
                scratch.reserve(&r, steps, n);
                let out_len = if sequence { steps * 2 * hidden } else { 2 * hidden };
                let mut y = vec![0.0; n * out_len];
                forward_node(&r, steps, &w, &x, n, &mut scratch, &mut y);
                // int8: the same node on integer products.
                let xqp = QParams::from_range(-0.8, 0.8);
                let mut xq = vec![0u8; x.len()];
                quantize_u8(&x, xqp, &mut xq);
                let q: Vec<_> = dirs.iter().map(|[a, b, ..]| (quantize_rows(a, g), quantize_rows(b, g))).collect();
                let bias_of = |d: usize, k: usize| bias.then(|| dirs[d][k].clone());
                let cellq = QuantizedRecurrent::new(r, (&q[0].0 .0, &q[0].0 .1), (&q[0].1 .0, &q[0].1 .1), bias_of(0, 2), bias_of(0, 3), xqp)
                    .with_reverse((&q[1].0 .0, &q[1].0 .1), (&q[1].1 .0, &q[1].1 .1), bias_of(1, 2), bias_of(1, 3));
                let mut yq = vec![0.0; n * out_len];
                let mut sq = Scratch::default();
                sq.reserve(&r, steps, n);
                cellq.forward(steps, &xq, n, &mut sq, &mut QuantScratch::default(), &mut yq);
                let rev = |a: &[f32], width: usize| -> Vec<f32> { (0..steps).rev().flat_map(|t| a[t * width..(t + 1) * width].to_vec()).collect() };
                let revq = |a: &[u8]| -> Vec<u8> { (0..steps).rev().flat_map(|t| a[t * isz..(t + 1) * isz].to_vec()).collect() };
                // Both directions' per-step outputs → the node's layout.
                let join = |fw: Vec<Vec<f64>>, bw: Vec<Vec<f64>>| -> Vec<f64> {
                    if sequence {
                        (0..steps).flat_map(|t| fw[t].iter().chain(&bw[steps - 1 - t]).copied().collect::<Vec<_>>()).collect()
                    } else {
                        fw[steps - 1].iter().chain(&bw[steps - 1]).copied().collect()
                    }
                };
                for s in 0..n {
                    let xs = &x[s * steps * isz..(s + 1) * steps * isz];
                    let want = join(reference(&one, steps, &w[0], xs), reference(&one, steps, &w[1], &rev(xs, isz)));
                    for (a, b) in y[s * out_len..(s + 1) * out_len].iter().zip(&want) {
                        assert!((*a as f64 - b).abs() < 1e-5, "{cell:?} f32 {a} vs {b}");
                    }
                    let xqs = &xq[s * steps * isz..(s + 1) * steps * isz];
                    let int = |d: usize, xd: &[u8]| -> Vec<Vec<f64>> {
                        let (bi, bh) = (bias_of(d, 2), bias_of(d, 3));
                        int8_reference(&one, steps, &q[d].0 .0, &q[d].0 .1, &q[d].1 .0, &q[d].1 .1, bi.as_deref(), bh.as_deref(), xd, xqp)
                            .into_iter()
                            .map(|row| row.into_iter().map(f64::from).collect())
                            .collect()
                    };
                    let want_q = join(int(0, xqs), int(1, &revq(xqs)));
                    for (a, b) in yq[s * out_len..(s + 1) * out_len].iter().zip(&want_q) {
                        assert!((*a as f64 - b).abs() < 1e-5, "{cell:?} int8 {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_exp_sigmoid_and_tanh_match_libm() {
        let mut x = -90.0f32;
        while x < 90.0 {
            let e = (x as f64).exp();
            if x > -80.0 && x < 80.0 {
                assert!(((exp(x) as f64 - e) / e).abs() < 1e-6, "exp({x}) = {} vs {e}", exp(x));
            }
            let sg = 1.0 / (1.0 + (-x as f64).exp());
            assert!((sigmoid(x) as f64 - sg).abs() < 1e-6, "sigmoid({x})");
            assert!((tanh(x) as f64 - (x as f64).tanh()).abs() < 1e-6, "tanh({x})");
            x += 0.0137;
        }
        assert_eq!((tanh(100.0), tanh(-100.0), sigmoid(100.0)), (1.0, -1.0, 1.0));
        assert!(sigmoid(-100.0) < 1e-30);
    }

    #[test]
    fn batched_forward_matches_the_step_by_step_equations_on_odd_shapes() {
        let mut rng = Rng::new(31);
        for cell in [Cell::Lstm, Cell::Gru] {
            for (isz, hidden, steps, n, bias, sequence) in [(3, 5, 4, 3, true, false), (7, 2, 1, 2, false, true), (1, 9, 6, 5, true, true)] {
                let r = Recurrent { cell, input_size: isz, hidden, bias, sequence, bidirectional: false };
                let g = r.gate_rows();
                let mut v = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform(0.8)).collect() };
                let (w_ih, w_hh, b_ih, b_hh) = (v(g * isz), v(g * hidden), v(g), v(g));
                let w = CellWeights { w_ih: &w_ih, w_hh: &w_hh, b_ih: bias.then_some(&b_ih[..]), b_hh: bias.then_some(&b_hh[..]) };
                let x = v(n * steps * isz);
                let mut scratch = Scratch::default();
                scratch.reserve(&r, steps, n);
                let out_len = if sequence { steps * hidden } else { hidden };
                let mut y = vec![0.0; n * out_len];
                forward(&r, steps, &w, &x, n, &mut scratch, &mut y);
                for s in 0..n {
                    let want = reference(&r, steps, &w, &x[s * steps * isz..(s + 1) * steps * isz]);
                    let want: Vec<f64> = if sequence { want.concat() } else { want.last().unwrap().clone() };
                    for (a, b) in y[s * out_len..(s + 1) * out_len].iter().zip(&want) {
                        assert!((*a as f64 - b).abs() < 1e-5, "{cell:?} {a} vs {b}");
                    }
                }
            }
        }
    }
}
