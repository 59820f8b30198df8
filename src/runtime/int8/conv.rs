//! The integer Conv2d layer: im2col times the packed weights, or the direct AVX2 kernel
//! for stride 1 ([`DirectI8`]'s weight and offset layout).

use super::{Epilogue, Kernel, PackedMatrix, gemm_packed, put_packed, requant_row, split_scratch};
#[cfg(target_arch = "x86_64")]
use super::avx2;

use crate::spec::QParams;

/// A 2-D convolution (square kernel, stride, zero padding) prepared for integer
/// inference. Samples are `[C, H, W]` u8, outputs `[OC, OH, OW]`. Padding uses the
/// input zero point, so it stands for real 0.0. Runs as im2col (`[OH·OW, C·k·k]`
/// rows) times the weights, written back transposed.
#[derive(Clone, Debug)]
pub struct QuantizedConv2d {
    pub(super) weights: PackedMatrix,
    epi: Epilogue,
    in_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
    pad_value: u8,
    /// The direct kernel, where it applies (stride 1, AVX2).
    pub(super) direct: Option<DirectI8>,
}

/// A stride-1 convolution on the AVX2 product (u8 widened to u16 pairs × i16 weight
/// pairs, `vpmaddwd`) computed straight from the input padded with its zero point:
/// no im2col rows. Tiles of up to 8 positions of an output row × 8 or 16 output
/// channels accumulate in registers; the i32 sums are exact, so they equal the
/// im2col product's bit for bit.
#[derive(Clone, Debug)]
pub(super) struct DirectI8 {
    /// Vectors of 8 output channels per block (1 or 2).
    pub(super) nv: usize,
    pub(super) blocks: usize,
    /// For each pair step `(c, ki, j)`: the u16 offset of `(c, ki, 2j)` in the padded planes.
    pub(super) soff: Vec<usize>,
    /// Per block, per step, per lane: the weight pair `(w[o, c, ki, 2j], w[o, c, ki, 2j+1])`,
    /// zero beyond the kernel or the channels.
    pub(super) w: Vec<i16>,
    /// Accumulator start per block lane (the epilogue's `init`), zero-padded.
    pub(super) init: Vec<i32>,
    /// How an output row is cut into tiles: (first column, positions).
    pub(super) row_tiles: Vec<(usize, usize)>,
    hp: usize,
    pub(super) wp: usize,
}

impl DirectI8 {
    #[allow(clippy::too_many_arguments)]
    fn new(w: &[i8], oc: usize, ic: usize, k: usize, hp: usize, wp: usize, ow: usize, init: &[i32]) -> DirectI8 {
        let nv = if oc <= 8 { 1 } else { 2 };
        let bw = nv * 8;
        let blocks = oc.div_ceil(bw);
        let pairs = k.div_ceil(2);
        let mut soff = Vec::with_capacity(ic * k * pairs);
        for c in 0..ic {
            for ki in 0..k {
                for j in 0..pairs {
                    soff.push(c * hp * wp + ki * wp + 2 * j);
                }
            }
        }
        let steps = soff.len();
        let mut wp16 = vec![0i16; blocks * steps * bw * 2];
        for o in 0..oc {
            let (blk, lane) = (o / bw, o % bw);
            for c in 0..ic {
                for ki in 0..k {
                    for kj in 0..k {
                        let st = (c * k + ki) * pairs + kj / 2;
                        wp16[((blk * steps + st) * bw + lane) * 2 + kj % 2] = w[((o * ic + c) * k + ki) * k + kj] as i16;
                    }
                }
            }
        }
        let mut ini = vec![0i32; blocks * bw];
        ini[..oc].copy_from_slice(&init[..oc]);
        let row_tiles = if nv == 1 && ow >= 8 {
            (0..ow - 8).step_by(8).chain(std::iter::once(ow - 8)).map(|x| (x, 8)).collect()
        } else {
            crate::runtime::kernels::direct_tiles(ow, if nv == 1 { 8 } else { 6 }).collect()
        };
        DirectI8 { nv, blocks, soff, w: wp16, init: ini, row_tiles, hp, wp }
    }

    /// u16 values of the padded planes, plus two of slack for the last pair read.
    fn padded_len(&self, ic: usize) -> usize {
        ic * self.hp * self.wp + 2
    }
}

impl QuantizedConv2d {
    /// Prepare a Conv2d layer: `w` is `[out_channels, in_channels, kernel, kernel]` i8,
    /// one scale per output channel; `bias`, `input`, `output`, `relu` as in
    /// [`QuantizedLinear::new`]; the input sample shape is `[in_channels, height, width]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        w: &[i8],
        w_scales: &[f32],
        out_channels: usize,
        in_channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: Option<&[f32]>,
        input: QParams,
        output: Option<QParams>,
        relu: bool,
    ) -> QuantizedConv2d {
        assert!(kernel > 0 && stride > 0, "kernel and stride must be positive");
        assert!(height + 2 * padding >= kernel && width + 2 * padding >= kernel, "kernel larger than padded input");
        let out_h = (height + 2 * padding - kernel) / stride + 1;
        let out_w = (width + 2 * padding - kernel) / stride + 1;
        let weights = PackedMatrix::new(w, out_channels, in_channels * kernel * kernel);
        let epi = Epilogue::new(&weights, w_scales, bias, input, output, relu);
        let (hp, wp) = (height + 2 * padding, width + 2 * padding);
        let direct = (stride == 1 && out_channels > 0 && Kernel::Avx2.is_available())
            .then(|| DirectI8::new(w, out_channels, in_channels, kernel, hp, wp, out_w, &epi.init));
        QuantizedConv2d {
            weights,
            epi,
            in_channels,
            height,
            width,
            kernel,
            stride,
            padding,
            out_h,
            out_w,
            pad_value: input.zero_point as u8,
            direct,
        }
    }

    /// Output shape per sample: `[out_channels, out_h, out_w]`.
    pub fn output_shape(&self) -> [usize; 3] {
        [self.weights.n, self.out_h, self.out_w]
    }

    /// Values per input sample (`C·H·W`).
    pub fn input_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Accumulators `[OH·OW × OC]` of one sample into scratch; returns their offset.
    fn accumulate(&self, x: &[u8], scratch: &mut Vec<i32>) -> usize {
        let kernel = self.weights.effective_kernel();
        let e = kernel.elems_per_word();
        let p = self.out_h * self.out_w;
        let kk_len = self.weights.k;
        let (a, c) = split_scratch(scratch, kernel, p, &self.weights);
        let kw = kk_len.div_ceil(e);
        a.fill(0);
        let (h, w, k, s, pad) = (self.height as isize, self.width as isize, self.kernel, self.stride, self.padding as isize);
        for oy in 0..self.out_h {
            for ox in 0..self.out_w {
                let r = oy * self.out_w + ox;
                let mut kk = 0;
                for ch in 0..self.in_channels {
                    let plane = &x[ch * self.height * self.width..][..self.height * self.width];
                    for ki in 0..k {
                        let iy = (oy * s + ki) as isize - pad;
                        for kj in 0..k {
                            let ix = (ox * s + kj) as isize - pad;
                            let v = if iy >= 0 && iy < h && ix >= 0 && ix < w {
                                plane[(iy * w + ix) as usize]
                            } else {
                                self.pad_value
                            };
                            put_packed(e, a, p, kw, r, kk, v);
                            kk += 1;
                        }
                    }
                }
            }
        }
        gemm_packed(kernel, a, p, &self.weights, &self.epi.init, c);
        a.len()
    }

    /// `x`: `batch` samples `[C, H, W]` u8 → `y`: `batch` × `[OC, OH, OW]` u8 at the
    /// output QParams (panics if built with `output: None`).
    pub fn forward_u8(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Vec<i32>) {
        let (zp, lo) = self.epi.output_qp();
        self.forward_with(x, batch, y, scratch, |o, acc| self.epi.to_u8(zp, lo, o, acc), |o, acc, y| {
            requant_row(&self.epi.requant[o], zp, lo, acc, y)
        });
    }

    /// `x`: `batch` samples `[C, H, W]` u8 → `y`: `batch` × `[OC, OH, OW]` f32,
    /// `y = input.scale·w_scales[oc]·acc` (bias included, ReLU at 0 if fused).
    pub fn forward_f32(&self, x: &[u8], batch: usize, y: &mut [f32], scratch: &mut Vec<i32>) {
        self.forward_with(x, batch, y, scratch, |o, acc| self.epi.to_f32(o, acc), |o, acc, y| {
            y.iter_mut().zip(acc).for_each(|(v, &a)| *v = self.epi.to_f32(o, a))
        });
    }

    /// The direct kernel, unless the scalar product is forced (or packed for).
    fn direct(&self) -> Option<&DirectI8> {
        self.direct.as_ref().filter(|_| self.weights.effective_kernel() != Kernel::Scalar)
    }

    /// Accumulators `[OC, OH·OW]` of one sample by the direct kernel into the tail of
    /// `scratch` (after the padded input); returns their offset.
    fn accumulate_direct(&self, d: &DirectI8, x: &[u8], scratch: &mut Vec<i32>) -> usize {
        let (n, p) = (self.weights.n, self.out_h * self.out_w);
        let plen = d.padded_len(self.in_channels);
        let words = plen.div_ceil(2);
        if scratch.len() < words + n * p {
            scratch.resize(words + n * p, 0);
        }
        let (xw, acc) = scratch.split_at_mut(words);
        // SAFETY: u16 has a smaller alignment than i32 and the words hold 2·words ≥ plen
        // u16 values; the view is the only access to them while it lives.
        let xp: &mut [u16] = unsafe { std::slice::from_raw_parts_mut(xw.as_mut_ptr() as *mut u16, plen) };
        let (h, w, pad) = (self.height, self.width, self.padding);
        let zp = self.pad_value as u16;
        for c in 0..self.in_channels {
            let plane = &mut xp[c * d.hp * d.wp..(c + 1) * d.hp * d.wp];
            plane[..pad * d.wp].fill(zp);
            plane[(pad + h) * d.wp..].fill(zp);
            for iy in 0..h {
                let row = &mut plane[(pad + iy) * d.wp..(pad + iy + 1) * d.wp];
                row[..pad].fill(zp);
                row[pad + w..].fill(zp);
                let src = &x[(c * h + iy) * w..(c * h + iy + 1) * w];
                row[pad..pad + w].iter_mut().zip(src).for_each(|(o, &v)| *o = v as u16);
            }
        }
        xp[plen - 2..].fill(0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a DirectI8 is built only where AVX2 is available; xp is the padded
        // sample (plus slack) and acc holds n·p accumulators.
        unsafe {
            avx2::direct_conv_sample(d, xp, &mut acc[..n * p], n, self.out_h, self.out_w)
        }
        words
    }

    /// Runs the samples; `f` maps channel and accumulator to an output value, `row`
    /// does the same for a whole channel row (the direct path's epilogue).
    fn forward_with<T>(&self, x: &[u8], batch: usize, y: &mut [T], scratch: &mut Vec<i32>, f: impl Fn(usize, i32) -> T, row: impl Fn(usize, &[i32], &mut [T])) {
        let (n, p) = (self.weights.n, self.out_h * self.out_w);
        let in_len = self.input_len();
        assert_eq!(x.len(), batch * in_len, "x must be batch*C*H*W");
        assert_eq!(y.len(), batch * n * p, "y must be batch*OC*OH*OW");
        if let Some(d) = self.direct() {
            for (xs, ys) in x.chunks_exact(in_len.max(1)).zip(y.chunks_exact_mut((n * p).max(1))) {
                let off = self.accumulate_direct(d, xs, scratch);
                let acc = &scratch[off..off + n * p];
                for (o, (yr, ar)) in ys.chunks_exact_mut(p).zip(acc.chunks_exact(p)).enumerate() {
                    row(o, ar, yr);
                }
            }
            return;
        }
        for (xs, ys) in x.chunks_exact(in_len.max(1)).zip(y.chunks_exact_mut((n * p).max(1))) {
            let off = self.accumulate(xs, scratch);
            let c = &scratch[off..off + p * n];
            for (pos, cr) in c.chunks_exact(n).enumerate() {
                for (o, &acc) in cr.iter().enumerate() {
                    ys[o * p + pos] = f(o, acc);
                }
            }
        }
    }
}
