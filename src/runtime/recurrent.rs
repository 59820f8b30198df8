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

use super::kernels::{sgemm, MatRef};
use crate::spec::{Cell, Recurrent};

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
    /// GRU: `[n, steps, 3H]` recurrent products `W_hh·h_{t−1} + b_hh` (the n part is
    /// needed for the reset gate's gradient).
    pub hh: Vec<f32>,
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
        match r.cell {
            Cell::Lstm => grow(&mut self.cells, rows * h),
            Cell::Gru => grow(&mut self.hh, rows * 3 * h),
        }
    }
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Runs `n` sequences `x[n, steps, input_size]`; writes `y[n, H]` (last hidden state) or
/// `y[n, steps, H]` with `r.sequence`. `scratch` must hold `n·steps` rows ([`Scratch::reserve`]).
pub fn forward(r: &Recurrent, steps: usize, w: &CellWeights, x: &[f32], n: usize, scratch: &mut Scratch, y: &mut [f32]) {
    let (h, isz, g) = (r.hidden, r.input_size, r.gate_rows());
    let rows = n * steps;
    let gates = &mut scratch.gates[..rows * g];
    // Input projection of every step at once: gates = X · W_ihᵀ (+ biases).
    sgemm(rows, g, isz, MatRef::rows(&x[..rows * isz], isz), MatRef::transposed(w.w_ih, isz), gates, g, false);
    if let Some(b) = w.b_ih {
        for row in gates.chunks_exact_mut(g) {
            row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
        }
    }
    // LSTM: b_hh simply adds to the same pre-activations.
    if let (Cell::Lstm, Some(b)) = (r.cell, w.b_hh) {
        for row in gates.chunks_exact_mut(g) {
            row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
        }
    }
    let hprev = &mut scratch.hprev[..rows * h];
    for s in 0..n {
        hprev[s * steps * h..(s * steps + 1) * h].fill(0.0);
    }
    let (sh, sg) = (steps * h, steps * g);
    for t in 0..steps {
        match r.cell {
            Cell::Lstm => {
                if t > 0 {
                    // gates[:, t] += h_{t−1} · W_hhᵀ
                    sgemm(n, g, h, MatRef { data: &hprev[t * h..], rs: sh, cs: 1 }, MatRef::transposed(w.w_hh, h), &mut gates[t * g..], sg, true);
                }
                let cells = &mut scratch.cells[..rows * h];
                for s in 0..n {
                    let row = (s * steps + t) * g;
                    let gt = &mut gates[row..row + g];
                    let (i, rest) = gt.split_at_mut(h);
                    let (f, rest) = rest.split_at_mut(h);
                    let (gg, o) = rest.split_at_mut(h);
                    let c_off = (s * steps + t) * h;
                    for k in 0..h {
                        let iv = sigmoid(i[k]);
                        let fv = sigmoid(f[k]);
                        let gv = gg[k].tanh();
                        let ov = sigmoid(o[k]);
                        i[k] = iv;
                        f[k] = fv;
                        gg[k] = gv;
                        o[k] = ov;
                        let cp = if t > 0 { cells[c_off - h + k] } else { 0.0 };
                        let c = fv * cp + iv * gv;
                        cells[c_off + k] = c;
                        let hv = ov * c.tanh();
                        write_h(hprev, y, r.sequence, s, t, steps, h, k, hv);
                    }
                }
            }
            Cell::Gru => {
                let hh = &mut scratch.hh[..rows * g];
                if t > 0 {
                    sgemm(n, g, h, MatRef { data: &hprev[t * h..], rs: sh, cs: 1 }, MatRef::transposed(w.w_hh, h), &mut hh[t * g..], sg, false);
                } else {
                    for s in 0..n {
                        hh[s * sg..s * sg + g].fill(0.0);
                    }
                }
                for s in 0..n {
                    let row = (s * steps + t) * g;
                    let hrow = &mut hh[row..row + g];
                    if let Some(b) = w.b_hh {
                        hrow.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                    }
                    let gt = &mut gates[row..row + g];
                    let hp_off = (s * steps + t) * h;
                    for k in 0..h {
                        let rv = sigmoid(gt[k] + hrow[k]);
                        let zv = sigmoid(gt[h + k] + hrow[h + k]);
                        let nv = (gt[2 * h + k] + rv * hrow[2 * h + k]).tanh();
                        gt[k] = rv;
                        gt[h + k] = zv;
                        gt[2 * h + k] = nv;
                        let hv = (1.0 - zv) * nv + zv * hprev[hp_off + k];
                        write_h(hprev, y, r.sequence, s, t, steps, h, k, hv);
                    }
                }
            }
        }
    }
}

/// Stores `h_t[k]` of sample `s` where the next step reads it and in the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn write_h(hprev: &mut [f32], y: &mut [f32], sequence: bool, s: usize, t: usize, steps: usize, h: usize, k: usize, v: f32) {
    if t + 1 < steps {
        hprev[(s * steps + t + 1) * h + k] = v;
    }
    if sequence {
        y[(s * steps + t) * h + k] = v;
    } else if t + 1 == steps {
        y[s * h + k] = v;
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

    #[test]
    fn batched_forward_matches_the_step_by_step_equations_on_odd_shapes() {
        let mut rng = Rng::new(31);
        for cell in [Cell::Lstm, Cell::Gru] {
            for (isz, hidden, steps, n, bias, sequence) in [(3, 5, 4, 3, true, false), (7, 2, 1, 2, false, true), (1, 9, 6, 5, true, true)] {
                let r = Recurrent { cell, input_size: isz, hidden, bias, sequence };
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
