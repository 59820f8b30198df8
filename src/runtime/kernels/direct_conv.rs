//! The direct convolution (AVX2 + FMA): weights packed into the tile layout, the padded
//! sample, and the drivers of the forward pass and the weight gradient; the vector tiles
//! themselves are in `direct`.

use super::{Window, sum};
#[cfg(target_arch = "x86_64")]
use super::{direct, has_avx2};

/// Splits `len` into the fewest tiles of at most `max`, as equal as possible:
/// yields (start, size).
pub(crate) fn direct_tiles(len: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let t = len.div_ceil(max).max(1);
    let (base, extra) = (len / t, len % t);
    (0..t).scan(0, move |start, i| {
        let size = base + (i < extra) as usize;
        let s = *start;
        *start += size;
        Some((s, size))
    })
}

/// Output channels per vector of the direct kernels.
pub(super) const LANES: usize = 8;

/// Copies sample `x[C,H,W]` into `xp[C, H+2p, W+2p]` with zero borders.
fn pad_sample(x: &[f32], g: &Window, xp: &mut [f32]) {
    let (h, w, p) = (g.height, g.width, g.padding);
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    for c in 0..g.channels {
        let plane = &mut xp[c * hp * wp..(c + 1) * hp * wp];
        plane[..p * wp].fill(0.0);
        plane[(p + h) * wp..].fill(0.0);
        for iy in 0..h {
            let row = &mut plane[(p + iy) * wp..(p + iy + 1) * wp];
            row[..p].fill(0.0);
            row[p + w..].fill(0.0);
            row[p..p + w].copy_from_slice(&x[(c * h + iy) * w..(c * h + iy + 1) * w]);
        }
    }
}

/// A stride-1 convolution prepared for the direct kernel: no im2col matrix, each
/// output tile (up to 12 positions of one output row × 8 or 16 output channels) is
/// accumulated in registers straight from the zero-padded input, one FMA per weight
/// and position. Built only where AVX2 and FMA are available ([`DirectConv::new`]).
#[derive(Clone, Debug)]
pub struct DirectConv {
    pub(super) g: Window,
    pub(super) oc: usize,
    /// Vectors of 8 output channels per block (1 or 2).
    pub(super) nv: usize,
    pub(super) blocks: usize,
    /// Offset in the padded input of each patch element `(c, ki, kj)`.
    pub(super) koff: Vec<usize>,
    /// Weights per block of `nv·8` output channels: `[patch element][nv·8]`, zero-padded.
    pub(super) w: Vec<f32>,
    /// Bias per block, `nv·8` values, zero-padded.
    pub(super) bias: Vec<f32>,
    /// How an output row is cut into tiles: (first column, positions).
    pub(super) row_tiles: Vec<(usize, usize)>,
}

impl DirectConv {
    /// Prepares `w[oc, C·k·k]` and `bias` for window `g`, or `None` where the kernel
    /// does not apply (stride other than 1, or a CPU without AVX2/FMA).
    pub fn new(g: &Window, w: &[f32], bias: Option<&[f32]>, oc: usize) -> Option<DirectConv> {
        if !Self::available() || g.stride != 1 || oc == 0 {
            return None;
        }
        let nv = if oc <= LANES { 1 } else { 2 };
        let (hp, wp) = (g.height + 2 * g.padding, g.width + 2 * g.padding);
        let mut koff = Vec::with_capacity(g.patch_len());
        for c in 0..g.channels {
            for ki in 0..g.kernel {
                for kj in 0..g.kernel {
                    koff.push(c * hp * wp + ki * wp + kj);
                }
            }
        }
        let ow = g.out_width();
        // One vector of channels: tiles of 8 positions (the last one overlapping its
        // neighbour: the same values are written twice); two: up to 6.
        let row_tiles = if nv == 1 && ow >= 8 {
            (0..ow - 8).step_by(8).chain(std::iter::once(ow - 8)).map(|x| (x, 8)).collect()
        } else {
            direct_tiles(ow, if nv == 1 { 8 } else { 6 }).collect()
        };
        let blocks = oc.div_ceil(nv * LANES);
        let mut d = DirectConv { g: *g, oc, nv, blocks, koff, w: Vec::new(), bias: Vec::new(), row_tiles };
        d.set_weights(w, bias);
        Some(d)
    }

    /// Whether this CPU runs the direct kernels.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Repacks new weights of the same shape (the trainer does this every step).
    pub fn set_weights(&mut self, w: &[f32], bias: Option<&[f32]>) {
        let (pl, bw) = (self.g.patch_len(), self.nv * LANES);
        assert_eq!(w.len(), self.oc * pl, "DirectConv: weight size");
        self.w.clear();
        self.w.resize(self.blocks * pl * bw, 0.0);
        self.bias.clear();
        self.bias.resize(self.blocks * bw, 0.0);
        for o in 0..self.oc {
            let (blk, lane) = (o / bw, o % bw);
            for kk in 0..pl {
                self.w[(blk * pl + kk) * bw + lane] = w[o * pl + kk];
            }
            self.bias[blk * bw + lane] = bias.map_or(0.0, |b| b[o]);
        }
    }

    /// Padded input length of one sample.
    pub(super) fn padded_len(&self) -> usize {
        self.g.channels * (self.g.height + 2 * self.g.padding) * (self.g.width + 2 * self.g.padding)
    }

    /// `y[n, oc, OH·OW]` = the convolution of `x[n, C, H, W]` plus bias.
    /// `scratch` holds one padded sample (grown as needed).
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Vec<f32>) {
        let g = &self.g;
        let (xl, yl) = (g.channels * g.height * g.width, self.oc * g.positions());
        assert!(x.len() >= n * xl && y.len() >= n * yl, "DirectConv::forward: buffer too short");
        let plen = self.padded_len();
        if g.padding > 0 && scratch.len() < plen {
            scratch.resize(plen, 0.0);
        }
        for s in 0..n {
            let xs = &x[s * xl..(s + 1) * xl];
            let xp: &[f32] = if g.padding > 0 {
                pad_sample(xs, g, &mut scratch[..plen]);
                &scratch[..plen]
            } else {
                xs
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `new` only builds a DirectConv where AVX2 and FMA are available;
            // `xp` is one padded sample and `y` one output sample (asserted above).
            unsafe {
                direct::forward_sample(self, xp, &mut y[s * yl..(s + 1) * yl])
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("DirectConv is only built on x86_64");
        }
    }
}

/// The weight (and bias) gradient of a stride-1 convolution by the direct kernel:
/// `dw[oc, C·k·k] += Σ dy[s, oc, pos] · x[s, c, pos + (ki, kj)]` and `db[oc] += Σ dy`
/// over `n` samples, without an im2col matrix. `scratch` is grown as needed. Returns
/// `false` (and does nothing) where the kernel does not apply.
#[allow(clippy::too_many_arguments)]
pub fn direct_weight_grad(g: &Window, oc: usize, x: &[f32], dy: &[f32], n: usize, dw: &mut [f32], db: Option<&mut [f32]>, scratch: &mut Vec<f32>) -> bool {
    if !DirectConv::available() || g.stride != 1 || oc == 0 {
        return false;
    }
    let (pl, q) = (g.patch_len(), g.positions());
    let (xl, yl) = (g.channels * g.height * g.width, oc * q);
    assert!(x.len() >= n * xl && dy.len() >= n * yl && dw.len() >= oc * pl, "direct_weight_grad: buffer too short");
    let nv = if oc <= LANES { 1 } else { 2 };
    let bw = nv * LANES;
    let blocks = oc.div_ceil(bw);
    let (hp, wp) = (g.height + 2 * g.padding, g.width + 2 * g.padding);
    let plen = g.channels * hp * wp;
    // scratch: padded sample | dy transposed [pos][blocks·bw] | gradient [blocks][pl][bw]
    let need = plen + q * blocks * bw + blocks * pl * bw;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (xp, rest) = scratch.split_at_mut(plen);
    let (dyt, acc) = rest.split_at_mut(q * blocks * bw);
    let acc = &mut acc[..blocks * pl * bw];
    acc.fill(0.0);
    dyt.fill(0.0);
    for s in 0..n {
        let xs = &x[s * xl..(s + 1) * xl];
        let xps: &[f32] = if g.padding > 0 {
            pad_sample(xs, g, xp);
            xp
        } else {
            xs
        };
        let dys = &dy[s * yl..(s + 1) * yl];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was checked above.
        unsafe {
            direct::to_lanes(dys, oc, q, bw, dyt)
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were checked above; the buffers have the sizes the
        // kernel reads (one padded sample, q·blocks·bw transposed gradients,
        // blocks·pl·bw accumulators).
        unsafe {
            direct::weight_grad_sample(g, nv, blocks, xps, dyt, acc)
        }
    }
    for o in 0..oc {
        let (blk, lane) = (o / bw, o % bw);
        for kk in 0..pl {
            dw[o * pl + kk] += acc[(blk * pl + kk) * bw + lane];
        }
    }
    if let Some(db) = db {
        for s in 0..n {
            for (d, row) in db.iter_mut().zip(dy[s * yl..(s + 1) * yl].chunks_exact(q)) {
                *d += sum(row);
            }
        }
    }
    true
}
