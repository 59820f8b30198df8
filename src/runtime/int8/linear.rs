//! The integer Linear layers: [`QuantizedLinear`] (static input quantization) and
//! [`DynamicLinear`] (each input row quantized on its own range at run time).

use super::{Epilogue, F32Out, Kernel, NR, PackedMatrix, Sink, blocks, fused_f32, gemm_packed_threads, pack_rows, pad_blocks, quantize_row_dynamic, quantize_rows_to_panels, split_scratch};
#[cfg(target_arch = "x86_64")]
use super::{gemm_avx2_threads, product_f32};

use crate::spec::QParams;

/// A Linear layer (`y = x·Wᵀ + b`) prepared for integer inference.
#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    weights: PackedMatrix,
    pub(super) epi: Epilogue,
    /// The kept weights as sparse rows, when the product runs on them instead
    /// ([`with_sparse_product`](Self::with_sparse_product)); the same exact sums.
    pub(super) sparse: Option<crate::runtime::sparse::CsrI8>,
}

impl QuantizedLinear {
    /// Prepare a Linear layer.
    ///
    /// - `w`: `[out_features, in_features]` row-major i8 (symmetric, `real = w_scales[o]·q`);
    /// - `bias`: optional `[out_features]` f32, quantized to i32 at scale
    ///   `input.scale·w_scales[o]` (rounded half away from zero);
    /// - `input`: quantization of `x`;
    /// - `output`: `Some(qp)` → [`forward_u8`](Self::forward_u8) requantizes to `qp`;
    ///   `None` → only [`forward_f32`](Self::forward_f32) (e.g. logits);
    /// - `relu`: fused ReLU (u8 output clamped at the output zero point, f32 at 0).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        w: &[i8],
        w_scales: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<&[f32]>,
        input: QParams,
        output: Option<QParams>,
        relu: bool,
    ) -> QuantizedLinear {
        let weights = PackedMatrix::new(w, out_features, in_features);
        let epi = Epilogue::new(&weights, w_scales, bias, input, output, relu);
        QuantizedLinear { weights, epi, sparse: None }
    }

    /// The same layer with its product on the non-zero weights only (compressed sparse
    /// rows): bit-identical outputs, faster when most weights are zero and batches small.
    pub fn with_sparse_product(mut self) -> QuantizedLinear {
        let (n, k) = (self.weights.n, self.weights.k);
        self.sparse = Some(crate::runtime::sparse::CsrI8::from_dense(&self.weights.raw, n, k));
        self
    }

    /// Fraction of zero weights.
    pub fn zero_fraction(&self) -> f64 {
        let raw = &self.weights.raw;
        raw.iter().filter(|&&v| v == 0).count() as f64 / raw.len().max(1) as f64
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weights.k
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weights.n
    }

    /// Accumulators `[batch × out]` (bias and zero point included) into the tail of
    /// `scratch`; returns the offset where they start.
    fn accumulate(&self, x: &[u8], batch: usize, scratch: &mut Vec<i32>, threads: usize) -> usize {
        let k = self.weights.k;
        assert_eq!(x.len(), batch * k, "x must be batch*in_features");
        if let Some(sp) = &self.sparse {
            let n = self.weights.n;
            if scratch.len() < k + batch * n {
                scratch.resize(k + batch * n, 0);
            }
            let (widened, c) = scratch.split_at_mut(k);
            sp.product(x, batch, &self.epi.init, &mut c[..batch * n], widened);
            return k;
        }
        let kernel = self.weights.effective_kernel();
        let (a, c) = split_scratch(scratch, kernel, batch, &self.weights);
        pack_rows(kernel.elems_per_word(), x, batch, k, a);
        gemm_packed_threads(kernel, a, batch, &self.weights, &self.epi.init, c, threads);
        a.len()
    }

    /// `x`: `[batch, in]` u8 → `y`: `[batch, out]` u8 at the output QParams (panics
    /// if the layer was built with `output: None`). `scratch` is grown as needed.
    pub fn forward_u8(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Vec<i32>) {
        self.forward_u8_threads(x, batch, y, scratch, 1);
    }

    /// [`forward_u8`](Self::forward_u8) with the product on up to `threads` threads
    /// (the same result).
    pub fn forward_u8_threads(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Vec<i32>, threads: usize) {
        let n = self.weights.n;
        assert_eq!(y.len(), batch * n, "y must be batch*out_features");
        let off = self.accumulate(x, batch, scratch, threads);
        self.epi.requant_rows(&scratch[off..off + batch * n], n, y);
    }

    /// `x`: `[batch, in]` u8 → `y`: `[batch, out]` f32, `y = input.scale·w_scales[o]·acc`
    /// (dequantized accumulators, bias included; ReLU at 0 if fused). Works whether or
    /// not the layer has output QParams.
    pub fn forward_f32(&self, x: &[u8], batch: usize, y: &mut [f32], scratch: &mut Vec<i32>) {
        self.forward_f32_threads(x, batch, y, scratch, 1);
    }

    /// [`forward_f32`](Self::forward_f32) with the product on up to `threads` threads
    /// (the same result).
    pub fn forward_f32_threads(&self, x: &[u8], batch: usize, y: &mut [f32], scratch: &mut Vec<i32>, threads: usize) {
        let n = self.weights.n;
        assert_eq!(y.len(), batch * n, "y must be batch*out_features");
        #[cfg(target_arch = "x86_64")]
        if self.sparse.is_none() && fused_f32(&self.weights) {
            let out = F32Out { y: y.as_mut_ptr(), row_scale: &[], row_zp: &[], col_scale: &self.epi.acc_scale, col_sums: &[], bias: &[], relu: self.epi.relu };
            return product_f32(&self.weights, x, batch, scratch, &self.epi.init, out, y.len(), threads);
        }
        let off = self.accumulate(x, batch, scratch, threads);
        let c = &scratch[off..off + batch * n];
        for (yr, cr) in y.chunks_exact_mut(n).zip(c.chunks_exact(n)) {
            for (o, (y, &acc)) in yr.iter_mut().zip(cr).enumerate() {
                *y = self.epi.to_f32(o, acc);
            }
        }
    }
}

/// A Linear layer on int8 weights whose f32 input is quantized per row at run time
/// ("dynamic" quantization, no calibration): row `r` gets the asymmetric u8 parameters
/// of its own range ([`QParams::from_range`]), the product is the exact integer one,
/// and `y[r,o] = sx[r]·sw[o]·(acc[r,o] − zx[r]·Σ_k w[o,k]) + bias[o]` in f32.
#[derive(Clone, Debug)]
pub struct DynamicLinear {
    weights: PackedMatrix,
    /// `w_scales`, `bias` (zeros when none) and the weights' row sums, each padded to
    /// whole 16-blocks (as the fused f32 output reads them).
    w_scales: Vec<f32>,
    bias: Vec<f32>,
    sums: Vec<i32>,
    /// Zero accumulator starts, padded to whole 16-blocks.
    zero_init: Vec<i32>,
}

/// The smallest and largest value of `x` (±∞ when empty; NaN values are skipped).
pub(super) fn row_range(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx2.is_available() {
        // SAFETY: AVX2 was just detected.
        return unsafe { row_range_avx2(x) };
    }
    row_range_lanes(x)
}

/// [`row_range`] in eight independent lanes, so the compiler vectorizes it (min and max
/// do not depend on the order).
pub(super) fn row_range_lanes(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    let fold = |init: f32, lanes: [f32; 8], f: fn(f32, f32) -> f32| chunks.remainder().iter().chain(&lanes).fold(init, |a, &b| f(a, b));
    (fold(f32::INFINITY, lo, f32::min), fold(f32::NEG_INFINITY, hi, f32::max))
}

/// [`row_range_lanes`] on 256-bit vectors. `vminps(x, acc)` returns `acc` when `x` is
/// NaN, so NaN values are skipped as `f32::min` skips them; the lanes never hold NaN.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_range_avx2(x: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (mut lo, mut hi) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(f32::NEG_INFINITY));
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        // SAFETY: c holds 8 f32; unaligned load.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        lo = _mm256_min_ps(v, lo);
        hi = _mm256_max_ps(v, hi);
    }
    let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
    // SAFETY: l and h hold 8 f32 each.
    unsafe {
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
    }
    let rest = chunks.remainder();
    (rest.iter().chain(&l).fold(f32::INFINITY, |a, &b| a.min(b)), rest.iter().chain(&h).fold(f32::NEG_INFINITY, |a, &b| a.max(b)))
}

/// Buffers of [`DynamicLinear::forward`], reused across calls.
#[derive(Default)]
pub struct DynamicScratch {
    q: Vec<u8>,
    acc: Vec<i32>,
    /// Each row's input scale and zero point.
    row_scale: Vec<f32>,
    row_zp: Vec<i32>,
}

impl DynamicLinear {
    /// `w`: `[out, in]` row-major i8 with `real = w_scales[o]·q`; `bias` optional.
    pub fn new(w: &[i8], w_scales: &[f32], out_features: usize, in_features: usize, bias: Option<&[f32]>) -> DynamicLinear {
        assert_eq!(w_scales.len(), out_features, "one weight scale per output");
        let weights = PackedMatrix::new(w, out_features, in_features);
        let bias = bias.map_or_else(|| vec![0.0; out_features], <[f32]>::to_vec);
        assert_eq!(bias.len(), out_features, "one bias per output");
        let (w_scales, bias, sums) = (pad_blocks(w_scales), pad_blocks(&bias), pad_blocks(&weights.row_sums));
        DynamicLinear { weights, w_scales, bias, sums, zero_init: vec![0; blocks(out_features) * NR] }
    }

    pub fn in_features(&self) -> usize {
        self.weights.k
    }

    pub fn out_features(&self) -> usize {
        self.weights.n
    }

    /// `x [rows, in]` f32 → `y [rows, out]` f32, the product on up to `threads` threads.
    pub fn forward(&self, x: &[f32], rows: usize, y: &mut [f32], sc: &mut DynamicScratch, threads: usize) {
        let (n, k) = (self.weights.n, self.weights.k);
        assert!(x.len() == rows * k && y.len() == rows * n, "DynamicLinear: x must be rows×in, y rows×out");
        #[cfg(target_arch = "x86_64")]
        if fused_f32(&self.weights) {
            sc.row_scale.resize(rows, 0.0);
            sc.row_zp.resize(rows, 0);
            let kw = k.div_ceil(2);
            if sc.acc.len() < rows * kw {
                sc.acc.resize(rows * kw, 0);
            }
            quantize_rows_to_panels(x, rows, k, &mut sc.acc, &mut sc.row_scale, &mut sc.row_zp, threads);
            let out = F32Out { y: y.as_mut_ptr(), row_scale: &sc.row_scale, row_zp: &sc.row_zp, col_scale: &self.w_scales, col_sums: &self.sums, bias: &self.bias, relu: false };
            return gemm_avx2_threads(&sc.acc[..rows * kw], rows, &self.weights, &self.zero_init, Sink::F32(out), threads);
        }
        if sc.q.len() < rows * k {
            sc.q.resize(rows * k, 0);
        }
        sc.row_scale.clear();
        sc.row_zp.clear();
        for (xr, qr) in x.chunks_exact(k.max(1)).zip(sc.q.chunks_exact_mut(k.max(1))).take(rows) {
            let qp = quantize_row_dynamic(xr, qr);
            sc.row_scale.push(qp.scale);
            sc.row_zp.push(qp.zero_point);
        }
        let kernel = self.weights.effective_kernel();
        let (a, c) = split_scratch(&mut sc.acc, kernel, rows, &self.weights);
        pack_rows(kernel.elems_per_word(), &sc.q[..rows * k], rows, k, a);
        gemm_packed_threads(kernel, a, rows, &self.weights, &self.zero_init, c, threads);
        for (r, (yr, cr)) in y.chunks_exact_mut(n).zip(c.chunks_exact(n)).enumerate() {
            for o in 0..n {
                let exact = cr[o].wrapping_sub(sc.row_zp[r].wrapping_mul(self.sums[o]));
                yr[o] = sc.row_scale[r] * self.w_scales[o] * exact as f32 + self.bias[o];
            }
        }
    }
}
