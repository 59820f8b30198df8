//! Training side of the LSTM and GRU nodes: the forward is the runtime's
//! ([`crate::runtime::recurrent::forward`]), which leaves the activated gates, the
//! states each step starts from and (LSTM) the cell states in its scratch buffers;
//! backward through time reads them.
//!
//! Backward (BPTT), per step from the last: the element-wise gate gradients for the
//! whole batch, then one product `dA_t · W_hh` carries the gradient to `h_{t−1}`.
//! The weight gradients need no per-step work: `dW_ih = dAᵀ·X` and `dW_hh = dAᵀ·H_prev`
//! are single products over all `n·steps` rows, and so is `dX = dA·W_ih`.
//!
//! A bidirectional node is two one-direction layers: the reverse one runs forward and
//! backward on the input reversed in time; the output gradient is split into the two
//! halves (the reverse half reversed in time too) and the reverse input gradient is
//! reversed back and added.

use std::ops::Range;

use crate::runtime::kernels::{sgemm, MatRef};
use crate::runtime::recurrent::{forward, place_direction, reverse_steps, take_direction, CellWeights, Scratch};
use crate::spec::{Cell, Recurrent};

/// One recurrent node of a training workspace: one [`Direction`] per direction and,
/// for a bidirectional node, the buffers that reverse and split its values.
#[derive(Clone, Debug)]
pub(super) struct RecurrentLayer {
    geo: Recurrent,
    steps: usize,
    dirs: Vec<Direction>,
    /// `[n, steps, I]`: the input reversed in time (bidirectional).
    x_rev: Vec<f32>,
    /// One direction's output or output gradient, in its own layout (bidirectional).
    y_dir: Vec<f32>,
    /// `[n, steps, I]`: the reverse direction's input gradient before un-reversing.
    dx_rev: Vec<f32>,
}

impl RecurrentLayer {
    /// Buffers for batches of up to `capacity` sequences of `steps` steps; `ranges`
    /// holds each direction's parameter ranges (forward, then reverse).
    pub fn new(geo: Recurrent, steps: usize, ranges: Vec<[Option<Range<usize>>; 4]>, capacity: usize) -> RecurrentLayer {
        assert_eq!(ranges.len(), geo.directions(), "one set of parameter ranges per direction");
        let one = geo.one_direction();
        let dirs = ranges.into_iter().map(|r| Direction::new(one, steps, r, capacity)).collect();
        let both = geo.bidirectional;
        let xl = if both { capacity * steps * geo.input_size } else { 0 };
        let ol = if both { capacity * if geo.sequence { steps * geo.hidden } else { geo.hidden } } else { 0 };
        RecurrentLayer { geo, steps, dirs, x_rev: vec![0.0; xl], y_dir: vec![0.0; ol], dx_rev: vec![0.0; xl] }
    }

    pub fn forward(&mut self, p: &[f32], x: &[f32], n: usize, y: &mut [f32]) {
        if !self.geo.bidirectional {
            return self.dirs[0].forward(p, x, n, y);
        }
        let (xl, ol) = self.lens(n);
        reverse_steps(&x[..xl], n, self.steps, self.geo.input_size, &mut self.x_rev[..xl]);
        for d in 0..2 {
            let xd = if d == 0 { &x[..xl] } else { &self.x_rev[..xl] };
            self.dirs[d].forward(p, xd, n, &mut self.y_dir[..ol]);
            place_direction(&self.geo, self.steps, n, d, &self.y_dir[..ol], y);
        }
    }

    /// Input and one-direction output lengths for `n` sequences.
    fn lens(&self, n: usize) -> (usize, usize) {
        let g = &self.geo;
        (n * self.steps * g.input_size, n * if g.sequence { self.steps * g.hidden } else { g.hidden })
    }

    /// As [`Direction::backward`] for the whole node (`dy` w.r.t. its output, both
    /// directions' halves for a bidirectional node).
    pub fn backward(&mut self, p: &[f32], x: &[f32], dy: &[f32], n: usize, grad: &mut [f32], dx: Option<(&mut [f32], bool)>) {
        if !self.geo.bidirectional {
            return self.dirs[0].backward(p, x, dy, n, grad, dx);
        }
        let (xl, ol) = self.lens(n);
        let (steps, isz) = (self.steps, self.geo.input_size);
        let mut dx = dx;
        take_direction(&self.geo, steps, n, 0, dy, &mut self.y_dir[..ol]);
        self.dirs[0].backward(p, &x[..xl], &self.y_dir[..ol], n, grad, dx.as_mut().map(|(d, fresh)| (&mut d[..xl], *fresh)));
        take_direction(&self.geo, steps, n, 1, dy, &mut self.y_dir[..ol]);
        reverse_steps(&x[..xl], n, steps, isz, &mut self.x_rev[..xl]);
        let dx_rev = dx.is_some().then_some((&mut self.dx_rev[..xl], true));
        self.dirs[1].backward(p, &self.x_rev[..xl], &self.y_dir[..ol], n, grad, dx_rev);
        if let Some((d, _)) = dx {
            // Step t of the reverse direction's input is step steps − 1 − t of x.
            for s in 0..n {
                for t in 0..steps {
                    let (from, to) = ((s * steps + t) * isz, (s * steps + steps - 1 - t) * isz);
                    d[to..to + isz].iter_mut().zip(&self.dx_rev[from..from + isz]).for_each(|(a, b)| *a += b);
                }
            }
        }
    }
}

/// One direction of a recurrent node: where its parameters live in the flat buffer and
/// every buffer its forward and backward need, allocated once.
#[derive(Clone, Debug)]
struct Direction {
    pub geo: Recurrent,
    pub steps: usize,
    pub w_ih: Range<usize>,
    pub w_hh: Range<usize>,
    pub b_ih: Option<Range<usize>>,
    pub b_hh: Option<Range<usize>>,
    scratch: Scratch,
    /// `[n, steps, gates·H]`: gradient w.r.t. the input-side pre-activations.
    d_in: Vec<f32>,
    /// GRU: `[n, steps, 3H]` gradient w.r.t. the recurrent products (differs from
    /// `d_in` in the n gate, which the reset gate scales). LSTM uses `d_in` for both.
    d_rec: Vec<f32>,
    /// `[n, H]`: gradient reaching `h_t` from step `t + 1`.
    dh_carry: Vec<f32>,
    /// LSTM: `[n, H]` gradient reaching `c_t` from step `t + 1`.
    dc_carry: Vec<f32>,
}

impl Direction {
    /// Buffers for batches of up to `capacity` sequences of `steps` steps.
    fn new(geo: Recurrent, steps: usize, ranges: [Option<Range<usize>>; 4], capacity: usize) -> Direction {
        let [w_ih, w_hh, b_ih, b_hh] = ranges;
        let mut scratch = Scratch::default();
        scratch.reserve(&geo, steps, capacity);
        let rows = capacity * steps;
        Direction {
            geo,
            steps,
            w_ih: w_ih.expect("a recurrent node has weight_ih"),
            w_hh: w_hh.expect("a recurrent node has weight_hh"),
            b_ih,
            b_hh,
            scratch,
            d_in: vec![0.0; rows * geo.gate_rows()],
            d_rec: if geo.cell == Cell::Gru { vec![0.0; rows * geo.gate_rows()] } else { Vec::new() },
            dh_carry: vec![0.0; capacity * geo.hidden],
            dc_carry: if geo.cell == Cell::Lstm { vec![0.0; capacity * geo.hidden] } else { Vec::new() },
        }
    }

    fn weights<'a>(&self, p: &'a [f32]) -> CellWeights<'a> {
        CellWeights {
            w_ih: &p[self.w_ih.clone()],
            w_hh: &p[self.w_hh.clone()],
            b_ih: self.b_ih.clone().map(|r| &p[r]),
            b_hh: self.b_hh.clone().map(|r| &p[r]),
        }
    }

    fn forward(&mut self, p: &[f32], x: &[f32], n: usize, y: &mut [f32]) {
        let w = self.weights(p);
        forward(&self.geo, self.steps, &w, x, n, &mut self.scratch, y);
    }

    /// Adds the parameter gradients to `grad` (the flat gradient buffer) and, with `dx`,
    /// writes (`fresh`) or adds the input gradient. `x` and `dy` are the forward's input
    /// and the gradient w.r.t. its output.
    fn backward(&mut self, p: &[f32], x: &[f32], dy: &[f32], n: usize, grad: &mut [f32], dx: Option<(&mut [f32], bool)>) {
        let (h, isz, g, steps) = (self.geo.hidden, self.geo.input_size, self.geo.gate_rows(), self.steps);
        let rows = n * steps;
        let sg = steps * g;
        let w_hh = &p[self.w_hh.clone()];
        let sc = &self.scratch;
        let dh_carry = &mut self.dh_carry[..n * h];
        dh_carry.fill(0.0);
        let sequence = self.geo.sequence;
        // Adds the gradient entering h_t from the output to the carried one.
        let add_output_grad = |dh: &mut [f32], s: usize, t: usize| {
            let from = if sequence {
                Some(&dy[(s * steps + t) * h..(s * steps + t + 1) * h])
            } else if t + 1 == steps {
                Some(&dy[s * h..(s + 1) * h])
            } else {
                None
            };
            if let Some(from) = from {
                dh.iter_mut().zip(from).for_each(|(a, b)| *a += b);
            }
        };
        match self.geo.cell {
            Cell::Lstm => {
                let d_in = &mut self.d_in[..rows * g];
                let dc_carry = &mut self.dc_carry[..n * h];
                dc_carry.fill(0.0);
                for t in (0..steps).rev() {
                    for s in 0..n {
                        let row = (s * steps + t) * g;
                        let at = (s * steps + t) * h;
                        let dh = &mut dh_carry[s * h..(s + 1) * h];
                        add_output_grad(dh, s, t);
                        let dc_next = &mut dc_carry[s * h..(s + 1) * h];
                        let gt = &sc.gates[row..row + g];
                        let (i, rest) = gt.split_at(h);
                        let (f, rest) = rest.split_at(h);
                        let (gg, o) = rest.split_at(h);
                        let tc = &sc.tanh_cells[at..at + h];
                        // c_{t−1}: the zero state at t = 0 (tanh_cells' row is any h values there, times 0).
                        let (cp, cp_scale) = if t > 0 { (&sc.cells[at - h..at], 1.0) } else { (tc, 0.0) };
                        let (di, rest) = d_in[row..row + g].split_at_mut(h);
                        let (df, rest) = rest.split_at_mut(h);
                        let (dg, dout) = rest.split_at_mut(h);
                        for k in 0..h {
                            let dc = dc_next[k] + dh[k] * o[k] * (1.0 - tc[k] * tc[k]);
                            dc_next[k] = dc * f[k];
                            di[k] = dc * gg[k] * i[k] * (1.0 - i[k]);
                            df[k] = dc * cp[k] * cp_scale * f[k] * (1.0 - f[k]);
                            dg[k] = dc * i[k] * (1.0 - gg[k] * gg[k]);
                            dout[k] = dh[k] * tc[k] * o[k] * (1.0 - o[k]);
                        }
                    }
                    if t > 0 {
                        // dh_{t−1} = dA_t · W_hh
                        sgemm(n, h, g, MatRef { data: &d_in[t * g..], rs: sg, cs: 1 }, MatRef::rows(w_hh, h), dh_carry, h, false);
                    }
                }
            }
            Cell::Gru => {
                let d_in = &mut self.d_in[..rows * g];
                let d_rec = &mut self.d_rec[..rows * g];
                for t in (0..steps).rev() {
                    for s in 0..n {
                        let row = (s * steps + t) * g;
                        let at = (s * steps + t) * h;
                        let dh = &mut dh_carry[s * h..(s + 1) * h];
                        add_output_grad(dh, s, t);
                        let gt = &sc.gates[row..row + g];
                        let (rg, rest) = gt.split_at(h);
                        let (zg, ng) = rest.split_at(h);
                        let hn = &sc.hh[row + 2 * h..row + g];
                        let hp = &sc.hprev[at..at + h];
                        let (dir, rest) = d_in[row..row + g].split_at_mut(h);
                        let (diz, din) = rest.split_at_mut(h);
                        let (drr, rest) = d_rec[row..row + g].split_at_mut(h);
                        let (drz, drn) = rest.split_at_mut(h);
                        for k in 0..h {
                            let (rv, zv, nv) = (rg[k], zg[k], ng[k]);
                            let dan = dh[k] * (1.0 - zv) * (1.0 - nv * nv);
                            let dar = dan * hn[k] * rv * (1.0 - rv);
                            let daz = dh[k] * (hp[k] - nv) * zv * (1.0 - zv);
                            dir[k] = dar;
                            diz[k] = daz;
                            din[k] = dan;
                            drr[k] = dar;
                            drz[k] = daz;
                            drn[k] = dan * rv;
                            dh[k] *= zv;
                        }
                    }
                    if t > 0 {
                        // dh_{t−1} = z·dh_t + dA_t · W_hh
                        sgemm(n, h, g, MatRef { data: &d_rec[t * g..], rs: sg, cs: 1 }, MatRef::rows(w_hh, h), dh_carry, h, true);
                    }
                }
            }
        }
        let d_in = &self.d_in[..rows * g];
        let d_rec = if self.geo.cell == Cell::Gru { &self.d_rec[..rows * g] } else { d_in };
        let hprev = &sc.hprev[..rows * h];
        sgemm(g, isz, rows, MatRef::transposed(d_in, g), MatRef::rows(&x[..rows * isz], isz), &mut grad[self.w_ih.clone()], isz, true);
        sgemm(g, h, rows, MatRef::transposed(d_rec, g), MatRef::rows(hprev, h), &mut grad[self.w_hh.clone()], h, true);
        for (range, d) in [(&self.b_ih, d_in), (&self.b_hh, d_rec)] {
            if let Some(r) = range {
                let db = &mut grad[r.clone()];
                for row in d.chunks_exact(g) {
                    db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
            }
        }
        if let Some((dx, fresh)) = dx {
            sgemm(rows, isz, g, MatRef::rows(d_in, g), MatRef::rows(&p[self.w_ih.clone()], isz), &mut dx[..rows * isz], isz, !fresh);
        }
    }
}
