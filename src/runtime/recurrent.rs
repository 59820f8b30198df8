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
    /// LSTM: `[n, steps, H]` `tanh(c_t)`, kept for the backward pass.
    pub tanh_cells: Vec<f32>,
    /// `[H]`: the hidden state being computed.
    pub h_new: Vec<f32>,
    /// `[H]` zeros: the state before the first step.
    zeros: Vec<f32>,
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
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { sigmoid_avx2(v) };
    }
    v.iter_mut().for_each(|a| *a = sigmoid(*a));
}

/// `v = tanh(v)` element-wise, 8 lanes at a time where AVX2/FMA are present.
pub fn tanh_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
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
    let zeros = &scratch.zeros[..h];
    for t in 0..steps {
        if t > 0 {
            let hp = MatRef { data: &hprev[t * h..], rs: sh, cs: 1 };
            match r.cell {
                // gates[:, t] += h_{t−1} · W_hhᵀ
                Cell::Lstm => sgemm(n, g, h, hp, MatRef::transposed(w.w_hh, h), &mut gates[t * g..], sg, true),
                Cell::Gru => sgemm(n, g, h, hp, MatRef::transposed(w.w_hh, h), &mut scratch.hh[t * g..], sg, false),
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
                    if let Some(b) = w.b_hh {
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
