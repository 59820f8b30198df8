//! Training side of the Transformer ops: the forward kernels are the runtime's
//! ([`crate::runtime::transformer`]); this module keeps what their backward passes
//! read (projected queries, keys, values, attention probabilities, gathered patches)
//! and computes the gradients.

use std::ops::Range;

use crate::runtime::kernels::{sgemm, MatRef};
use crate::runtime::transformer::{row_stats, Heads, Patches, ValidLengths};

/// `y[rows, outf] = x[rows, inf] · Wᵀ + b`.
pub(super) fn affine(x: &[f32], rows: usize, inf: usize, outf: usize, w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
    sgemm(rows, outf, inf, MatRef::rows(x, inf), MatRef::transposed(w, inf), y, outf, false);
    if let Some(b) = b {
        for row in y[..rows * outf].chunks_exact_mut(outf) {
            row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
        }
    }
}

/// Gradients of `y = x·Wᵀ + b` given `dy`: `dW += dyᵀ·x`, `db += Σ dy`, and `dx`
/// written (`fresh`) or added.
#[allow(clippy::too_many_arguments)]
pub(super) fn affine_backward(
    x: &[f32],
    dy: &[f32],
    rows: usize,
    inf: usize,
    outf: usize,
    w: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<(&mut [f32], bool)>,
) {
    sgemm(outf, inf, rows, MatRef::transposed(&dy[..rows * outf], outf), MatRef::rows(&x[..rows * inf], inf), dw, inf, true);
    if let Some(db) = db {
        for row in dy[..rows * outf].chunks_exact(outf) {
            db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
        }
    }
    if let Some((dx, fresh)) = dx {
        sgemm(rows, inf, outf, MatRef::rows(&dy[..rows * outf], outf), MatRef::rows(w, inf), &mut dx[..rows * inf], inf, !fresh);
    }
}

/// One self-attention node of a training workspace.
#[derive(Clone, Debug)]
pub(super) struct AttentionLayer {
    pub geo: Heads,
    /// Parameter ranges: query, key, value, output; weight then bias each.
    ranges: [Range<usize>; 8],
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    probs: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dctx: Vec<f32>,
}

impl AttentionLayer {
    pub fn new(geo: Heads, ranges: [Range<usize>; 8], capacity: usize) -> AttentionLayer {
        // Projected queries, keys, values and the context are `heads · head_dim` wide.
        let act = capacity * geo.seq * geo.inner();
        let z = || vec![0.0; act];
        AttentionLayer {
            geo,
            ranges,
            q: z(),
            k: z(),
            v: z(),
            ctx: z(),
            probs: vec![0.0; capacity * geo.heads * geo.seq * geo.seq],
            dq: z(),
            dk: z(),
            dv: z(),
            dctx: z(),
        }
    }

    pub fn forward(&mut self, p: &[f32], x: &[f32], n: usize, valid: &ValidLengths, y: &mut [f32]) {
        let (d, inner, rows) = (self.geo.dim, self.geo.inner(), n * self.geo.seq);
        let r = &self.ranges;
        let act = rows * inner;
        affine(x, rows, d, inner, &p[r[0].clone()], Some(&p[r[1].clone()]), &mut self.q[..act]);
        affine(x, rows, d, inner, &p[r[2].clone()], Some(&p[r[3].clone()]), &mut self.k[..act]);
        affine(x, rows, d, inner, &p[r[4].clone()], Some(&p[r[5].clone()]), &mut self.v[..act]);
        self.geo.attend(&self.q, &self.k, &self.v, inner, n, valid, &mut self.probs, &mut self.ctx);
        affine(&self.ctx, rows, inner, d, &p[r[6].clone()], Some(&p[r[7].clone()]), y);
    }

    /// Adds the parameter gradients to `grad` and writes/adds `dx`.
    pub fn backward(&mut self, p: &[f32], x: &[f32], dy: &[f32], n: usize, valid: &ValidLengths, grad: &mut [f32], dx: Option<(&mut [f32], bool)>) {
        let geo = self.geo;
        let (s_len, d, hd, rows) = (geo.seq, geo.dim, geo.head_dim, n * geo.seq);
        let inner = geo.inner();
        let r = self.ranges.clone();
        let act = rows * inner;
        {
            let (dw, db) = two(grad, &r[6], &r[7]);
            affine_backward(&self.ctx, dy, rows, inner, d, &p[r[6].clone()], dw, Some(db), Some((&mut self.dctx[..act], true)));
        }
        let scale = 1.0 / (hd as f32).sqrt();
        self.dq[..act].fill(0.0);
        self.dk[..act].fill(0.0);
        self.dv[..act].fill(0.0);
        let mut dp = vec![0.0f32; s_len];
        for s in 0..n {
            let vl = valid.of(s, s_len);
            let base = s * s_len * inner;
            for h in 0..geo.heads {
                let pbase = (s * geo.heads + h) * s_len * s_len;
                let col = |i: usize| base + i * inner + h * hd..base + i * inner + (h + 1) * hd;
                for i in 0..s_len {
                    let keys = geo.keys(i, vl);
                    let prow = &self.probs[pbase + i * s_len..pbase + i * s_len + keys];
                    let dci = &self.dctx[col(i)];
                    let mut dot = 0.0;
                    for (j, (&pj, dpj)) in prow.iter().zip(dp.iter_mut()).enumerate() {
                        let vj = &self.v[col(j)];
                        *dpj = dci.iter().zip(vj).map(|(a, b)| a * b).sum();
                        dot += pj * *dpj;
                        self.dv[col(j)].iter_mut().zip(dci).for_each(|(a, &b)| *a += pj * b);
                    }
                    for (j, &pj) in prow.iter().enumerate() {
                        let ds = pj * (dp[j] - dot) * scale;
                        if ds == 0.0 {
                            continue;
                        }
                        let (qi, kj) = (col(i), col(j));
                        for c in 0..hd {
                            self.dq[qi.start + c] += ds * self.k[kj.start + c];
                            self.dk[kj.start + c] += ds * self.q[qi.start + c];
                        }
                    }
                }
            }
        }
        let mut dx = dx;
        for (t, g) in [(0usize, &self.dq), (1, &self.dk), (2, &self.dv)] {
            let (dw, db) = two(grad, &r[2 * t], &r[2 * t + 1]);
            let dxi = dx.as_mut().map(|(buf, fresh)| (&mut buf[..rows * d], *fresh && t == 0));
            affine_backward(x, g, rows, d, inner, &p[r[2 * t].clone()], dw, Some(db), dxi);
        }
    }
}

/// Disjoint mutable views of two ranges of `buf` (a weight and its bias).
fn two<'a>(buf: &'a mut [f32], a: &Range<usize>, b: &Range<usize>) -> (&'a mut [f32], &'a mut [f32]) {
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&mut lo[a.clone()], &mut hi[..b.len()])
    } else {
        assert!(b.end <= a.start, "ranges overlap");
        let (lo, hi) = buf.split_at_mut(a.start);
        (&mut hi[..a.len()], &mut lo[b.clone()])
    }
}

/// LayerNorm backward for rows of `dim`: `dγ += Σ dy·x̂`, `dβ += Σ dy`,
/// `dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` with `dx̂ = dy·γ`.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_backward(x: &[f32], dy: &[f32], dim: usize, eps: f32, gamma: &[f32], dgamma: &mut [f32], dbeta: &mut [f32], dx: Option<(&mut [f32], bool)>) {
    let mut xhat = vec![0.0f32; dim];
    let mut dxhat = vec![0.0f32; dim];
    let mut dx = dx;
    for (ri, (xr, dyr)) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).enumerate() {
        let (mean, rstd) = row_stats(xr, eps);
        let (mut m1, mut m2) = (0.0f32, 0.0f32);
        for c in 0..dim {
            xhat[c] = (xr[c] - mean) * rstd;
            dgamma[c] += dyr[c] * xhat[c];
            dbeta[c] += dyr[c];
            dxhat[c] = dyr[c] * gamma[c];
            m1 += dxhat[c];
            m2 += dxhat[c] * xhat[c];
        }
        let (m1, m2) = (m1 / dim as f32, m2 / dim as f32);
        if let Some((buf, fresh)) = dx.as_mut() {
            let row = &mut buf[ri * dim..(ri + 1) * dim];
            for c in 0..dim {
                let v = rstd * (dxhat[c] - m1 - xhat[c] * m2);
                if *fresh { row[c] = v } else { row[c] += v }
            }
        }
    }
}

/// A patch embedding of a training workspace: the gathered patches of the last forward.
#[derive(Clone, Debug)]
pub(super) struct PatchLayer {
    pub geo: Patches,
    pub dim: usize,
    cols: Vec<f32>,
    dcols: Vec<f32>,
}

impl PatchLayer {
    pub fn new(geo: Patches, dim: usize, capacity: usize) -> PatchLayer {
        let len = capacity * geo.count() * geo.len();
        PatchLayer { geo, dim, cols: vec![0.0; len], dcols: Vec::new() }
    }

    pub fn forward(&mut self, w: &[f32], b: &[f32], x: &[f32], n: usize, y: &mut [f32]) {
        let rows = n * self.geo.count();
        self.geo.gather(x, n, &mut self.cols[..rows * self.geo.len()]);
        affine(&self.cols, rows, self.geo.len(), self.dim, w, Some(b), y);
    }

    pub fn backward(&mut self, w: &[f32], dy: &[f32], n: usize, dw: &mut [f32], db: &mut [f32], dx: Option<(&mut [f32], bool)>) {
        let (rows, len) = (n * self.geo.count(), self.geo.len());
        let want_dx = dx.is_some();
        if want_dx && self.dcols.len() < rows * len {
            self.dcols.resize(rows * len, 0.0);
        }
        let dcols = if want_dx { Some((&mut self.dcols[..rows * len], true)) } else { None };
        affine_backward(&self.cols, dy, rows, len, self.dim, w, dw, Some(db), dcols);
        if let Some((dx, fresh)) = dx {
            let img = self.geo.channels * self.geo.height * self.geo.width;
            if fresh {
                dx[..n * img].fill(0.0);
            }
            self.geo.scatter_add(&self.dcols[..rows * len], n, dx);
        }
    }
}
