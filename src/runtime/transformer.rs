//! Forward kernels of the Transformer ops (embeddings, patch embedding, LayerNorm,
//! GELU, self-attention, pooling), shared by the runtime executor and the training
//! workspace (which keeps the buffers these leave behind for its backward pass).
//!
//! Layout: a sequence value of `n` samples is `[n, seq, dim]`, row-major. The valid
//! length of each sample (the positions before its trailing padding, see
//! [`crate::spec::Op::Embedding`]) is computed once from the token ids; attention and
//! mean pooling read it through [`ValidLengths`].

use super::kernels::{sgemm, sgemm_raw, MatRef, SendPtr};

/// Per-sample valid lengths of the token sequence, or none (every position valid).
#[derive(Clone, Debug, Default)]
pub struct ValidLengths {
    /// Valid positions per sample; empty when the graph has no padding token.
    pub lens: Vec<usize>,
    /// The sequence length the lengths count in (the Embedding's input).
    pub seq: usize,
}

impl ValidLengths {
    /// Valid positions of sample `s` in a sequence of `seq` positions. A sequence longer
    /// than the token sequence (a prepended CLS row) has its extra leading rows valid.
    /// At least one position stays valid, so attention always has a key.
    pub fn of(&self, s: usize, seq: usize) -> usize {
        match self.lens.get(s) {
            None => seq,
            Some(&l) => (l + seq.saturating_sub(self.seq)).clamp(1, seq),
        }
    }

    /// Counts each sample's trailing `pad` ids in `ids [n, seq]`.
    pub fn from_ids(&mut self, ids: &[f32], n: usize, seq: usize, pad: usize) {
        self.seq = seq;
        self.lens.clear();
        for row in ids.chunks_exact(seq).take(n) {
            let trailing = row.iter().rev().take_while(|&&t| t == pad as f32).count();
            self.lens.push(seq - trailing);
        }
    }

    pub fn clear(&mut self) {
        self.lens.clear();
    }
}

/// The first id of `ids` that is not an integer in `0..vocab`, if any.
pub fn bad_token(ids: &[f32], vocab: usize) -> Option<f32> {
    ids.iter().copied().find(|&t| !(t >= 0.0 && t < vocab as f32 && t.fract() == 0.0))
}

/// `y[i] = table[ids[i]]`; ids must be checked with [`bad_token`] first (an invalid
/// id gives a zero row).
pub fn embed(ids: &[f32], table: &[f32], dim: usize, y: &mut [f32]) {
    let vocab = table.len() / dim.max(1);
    for (&t, row) in ids.iter().zip(y.chunks_exact_mut(dim)) {
        let id = t as usize;
        if t >= 0.0 && id < vocab {
            row.copy_from_slice(&table[id * dim..(id + 1) * dim]);
        } else {
            row.fill(0.0);
        }
    }
}

/// `y = x + table[0..seq]` for each of the samples of `x [n, seq, dim]`.
pub fn add_positions(x: &[f32], table: &[f32], seq: usize, dim: usize, y: &mut [f32]) {
    let rows = &table[..seq * dim];
    for (xs, ys) in x.chunks_exact(seq * dim).zip(y.chunks_exact_mut(seq * dim)) {
        for ((o, &a), &p) in ys.iter_mut().zip(xs).zip(rows) {
            *o = a + p;
        }
    }
}

/// `y = [cls; x]` per sample: `[n, seq, dim]` → `[n, seq + 1, dim]`.
pub fn prepend_cls(x: &[f32], cls: &[f32], seq: usize, dim: usize, y: &mut [f32]) {
    for (xs, ys) in x.chunks_exact(seq * dim).zip(y.chunks_exact_mut((seq + 1) * dim)) {
        ys[..dim].copy_from_slice(cls);
        ys[dim..].copy_from_slice(xs);
    }
}

/// Geometry of a [`crate::spec::Op::PatchEmbed`] node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
}

impl Patches {
    /// Patches per image.
    pub fn count(&self) -> usize {
        (self.height / self.patch) * (self.width / self.patch)
    }

    /// Values per patch (the weight's columns).
    pub fn len(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index in a `[C, H, W]` image of element `e` of patch `q` (flattened channel,
    /// row, column like a Conv2d kernel).
    #[inline]
    fn source(&self, q: usize, e: usize) -> usize {
        let p = self.patch;
        let (c, r) = (e / (p * p), e % (p * p));
        let (ky, kx) = (r / p, r % p);
        let per_row = self.width / p;
        let (py, px) = (q / per_row, q % per_row);
        (c * self.height + py * p + ky) * self.width + px * p + kx
    }

    /// Gathers `x [n, C, H, W]` into `cols [n·count, len]`.
    pub fn gather(&self, x: &[f32], n: usize, cols: &mut [f32]) {
        let (img, cnt, len) = (self.channels * self.height * self.width, self.count(), self.len());
        for s in 0..n {
            let xs = &x[s * img..(s + 1) * img];
            for q in 0..cnt {
                let row = &mut cols[(s * cnt + q) * len..(s * cnt + q + 1) * len];
                for (e, v) in row.iter_mut().enumerate() {
                    *v = xs[self.source(q, e)];
                }
            }
        }
    }

    /// Adds `dcols [n·count, len]` back into the image gradient `dx [n, C, H, W]`
    /// (patches do not overlap, so every pixel receives at most one term).
    pub fn scatter_add(&self, dcols: &[f32], n: usize, dx: &mut [f32]) {
        let (img, cnt, len) = (self.channels * self.height * self.width, self.count(), self.len());
        for s in 0..n {
            let dxs = &mut dx[s * img..(s + 1) * img];
            for q in 0..cnt {
                let row = &dcols[(s * cnt + q) * len..(s * cnt + q + 1) * len];
                for (e, v) in row.iter().enumerate() {
                    dxs[self.source(q, e)] += v;
                }
            }
        }
    }
}

/// Layer normalisation of every `dim`-long row of `x` into `y`.
pub fn layer_norm(x: &[f32], dim: usize, gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    normalize_rows(x, dim, gamma, beta, eps, y, row_stats);
}

/// `y = (x − mean)·rstd·γ + β` per row of `dim`, the statistics from `stats`.
#[allow(clippy::too_many_arguments)]
fn normalize_rows(x: &[f32], dim: usize, gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32], stats: fn(&[f32], f32) -> (f32, f32)) {
    for (xr, yr) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)) {
        let (mean, rstd) = stats(xr, eps);
        for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
            *o = (v - mean) * rstd * g + b;
        }
    }
}

/// [`layer_norm`] for inference: the row statistics summed in eight f64 lanes
/// ([`row_stats_lanes`]) so they vectorize; the normalization is the same f32 arithmetic.
pub fn layer_norm_fast(x: &[f32], dim: usize, gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    normalize_rows(x, dim, gamma, beta, eps, y, row_stats_lanes);
}

/// [`row_stats`] with the f64 sums split over eight lanes: the same statistics up to
/// f64 rounding (far below the f32 results' last bit), four to eight times faster.
#[inline]
pub fn row_stats_lanes(x: &[f32], eps: f32) -> (f32, f32) {
    const L: usize = 8;
    let n = x.len().max(1) as f64;
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    let mut acc = [0f64; L];
    for c in chunks.clone() {
        for i in 0..L {
            acc[i] += c[i] as f64;
        }
    }
    let mean = (acc.iter().sum::<f64>() + tail.iter().map(|&v| v as f64).sum::<f64>()) / n;
    let mut acc = [0f64; L];
    for c in chunks {
        for i in 0..L {
            let d = c[i] as f64 - mean;
            acc[i] += d * d;
        }
    }
    let var = (acc.iter().sum::<f64>() + tail.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>()) / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// Mean and `1/√(var + eps)` of a row (two passes, f64 sums: rows of 384+ values).
#[inline]
pub fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// GELU `x·Φ(x)` with the exact error function.
pub fn gelu(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = gelu1(v);
    }
}

/// GELU for inference: `x·Φ(x)` with `erf` from Abramowitz & Stegun 7.1.26 (absolute
/// error ≤ 1.5e-7) and `exp` by range reduction and the Cephes polynomial, eight lanes
/// at a time with AVX2+FMA. The scalar path performs the same IEEE operations in the
/// same order (`mul_add` is the fused multiply-add), so both give identical bits.
pub fn gelu_fast(x: &[f32], y: &mut [f32]) {
    let len = x.len().min(y.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        // SAFETY: AVX2 and FMA were just detected; both slices hold `len` values.
        done = unsafe { fast_gelu::avx2(x.as_ptr(), y.as_mut_ptr(), len) };
    }
    for (o, &v) in y[done..len].iter_mut().zip(&x[done..len]) {
        *o = fast_gelu::scalar(v);
    }
}

/// [`gelu_fast`] overwriting its input (the same bits as writing elsewhere).
pub fn gelu_fast_in_place(v: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        // SAFETY: AVX2 and FMA were just detected; each group of 8 is loaded before it
        // is stored, so reading and writing the same buffer is sound.
        done = unsafe { fast_gelu::avx2(v.as_ptr(), v.as_mut_ptr(), v.len()) };
    }
    for o in &mut v[done..] {
        *o = fast_gelu::scalar(*o);
    }
}

mod fast_gelu {
    pub const P: f32 = 0.327_591_1;
    pub const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152, 1.061_405_4];
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const EXP: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
    /// Below this, `exp` is 0 to f32 precision for what `erf` needs (and `2^n` stays normal).
    pub const EXP_MIN: f32 = -87.0;

    /// `exp(v)` for `v ≤ 0`.
    #[inline]
    fn exp(v: f32) -> f32 {
        let v = v.max(EXP_MIN);
        let n = (v * LOG2E).round_ties_even();
        let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, v));
        let mut p = EXP[0];
        for &c in &EXP[1..] {
            p = p.mul_add(r, c);
        }
        let e = (p * r).mul_add(r, r) + 1.0;
        e * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    #[inline]
    pub fn scalar(x: f32) -> f32 {
        let z = x * std::f32::consts::FRAC_1_SQRT_2;
        let a = z.abs();
        let t = 1.0 / P.mul_add(a, 1.0);
        let mut poly = A[4];
        for &c in A[..4].iter().rev() {
            poly = poly.mul_add(t, c);
        }
        poly *= t;
        let erf = (-poly).mul_add(exp(-(a * a)), 1.0);
        let erf = if z < 0.0 { -erf } else { erf };
        0.5 * x * (1.0 + erf)
    }

    /// Whole groups of 8 of the `len` values at `x` into `y` (which may be `x`);
    /// returns how many values were written.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `x` readable and `y` writable for `len` values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(x: *const f32, y: *mut f32, len: usize) -> usize {
        use std::arch::x86_64::*;
        let len = len / 8 * 8;
        let (sign, one, half) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
        for i in (0..len).step_by(8) {
            // SAFETY: i + 8 ≤ len ≤ both lengths.
            let v = unsafe { _mm256_loadu_ps(x.add(i)) };
            let z = _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let a = _mm256_andnot_ps(sign, z);
            let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(P), a, one));
            let mut poly = _mm256_set1_ps(A[4]);
            for &c in A[..4].iter().rev() {
                poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(c));
            }
            poly = _mm256_mul_ps(poly, t);
            // exp(-a²)
            let e_in = _mm256_max_ps(_mm256_xor_ps(_mm256_mul_ps(a, a), sign), _mm256_set1_ps(EXP_MIN));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(e_in, _mm256_set1_ps(LOG2E)));
            let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), e_in));
            let mut p = _mm256_set1_ps(EXP[0]);
            for &c in &EXP[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), one);
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
            let ex = _mm256_mul_ps(e, pow2);
            let erf = _mm256_fnmadd_ps(poly, ex, one);
            // erf takes z's sign (z < 0 → −erf; z = −0.0 gives +erf like the scalar test).
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(z, _mm256_setzero_ps());
            let erf = _mm256_blendv_ps(erf, _mm256_xor_ps(erf, sign), neg);
            let out = _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf));
            // SAFETY: as for the load.
            unsafe { _mm256_storeu_ps(y.add(i), out) };
        }
        len
    }
}

#[inline]
pub fn gelu1(v: f32) -> f32 {
    0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d gelu / dx = Φ(x) + x·φ(x)`.
#[inline]
pub fn gelu_grad(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * v * v).exp() * 0.398_942_3;
    cdf + v * pdf
}

/// Geometry of one self-attention node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub seq: usize,
    /// Residual width (input and output features).
    pub dim: usize,
    pub heads: usize,
    /// Features per head (`dim / heads` unless heads were trimmed).
    pub head_dim: usize,
    pub causal: bool,
}

impl Heads {
    /// The geometry of attention node `a` on sequences of `seq`.
    pub fn new(a: crate::spec::Attention, seq: usize) -> Heads {
        Heads { seq, dim: a.dim, heads: a.heads, head_dim: a.head_dim, causal: a.causal }
    }

    /// Width of the projected queries, keys, values and of the context: `heads · head_dim`.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Keys query `i` of a sample with `valid` valid positions may attend to.
    #[inline]
    pub fn keys(&self, i: usize, valid: usize) -> usize {
        if self.causal { valid.min(i + 1) } else { valid }
    }

    /// Scaled dot-product attention of projected queries, keys and values: row `i` of
    /// sample `s` starts at `(s·seq + i)·ld` in each of `q`, `k`, `v` (so they may be
    /// column blocks of one fused `[n·seq, 3·inner]` product). Writes the probabilities
    /// `probs [n, heads, seq, seq]` (zero for masked keys) and the context
    /// `ctx [n, seq, inner]` (head `h` in columns `h·hd..(h+1)·hd`), `inner = heads·hd`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(&self, q: &[f32], k: &[f32], v: &[f32], ld: usize, n: usize, valid: &ValidLengths, probs: &mut [f32], ctx: &mut [f32]) {
        self.attend_threads(q, k, v, ld, n, valid, probs, ctx, 1);
    }

    /// [`attend`](Self::attend) with the (sample, head) pairs shared among up to
    /// `threads` threads; every pair is computed the same way whichever thread runs it,
    /// so the result does not depend on `threads`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_threads(&self, q: &[f32], k: &[f32], v: &[f32], ld: usize, n: usize, valid: &ValidLengths, probs: &mut [f32], ctx: &mut [f32], threads: usize) {
        use rayon::prelude::*;
        let (s_len, d) = (self.seq, self.inner());
        let pairs = n * self.heads;
        let per = s_len * s_len;
        assert!(probs.len() >= pairs * per && ctx.len() >= n * s_len * d, "attend: buffers too short");
        assert!(n == 0 || ((n - 1) * s_len + s_len - 1) * ld + d <= q.len().min(k.len()).min(v.len()), "attend: q/k/v too short");
        let out = SendPtr(ctx.as_mut_ptr());
        let task = |p: usize, prob: &mut [f32]| {
            // SAFETY: pair p = (s, h) writes only ctx rows s·seq.. of columns h·hd..(h+1)·hd
            // (bounded by the assert above); no two pairs share an element.
            unsafe { self.attend_head(q, k, v, ld, p / self.heads, p % self.heads, valid, prob, out) }
        };
        let probs = &mut probs[..pairs * per];
        if threads > 1 && pairs > 1 {
            probs.par_chunks_mut(per).with_min_len(pairs.div_ceil(threads)).enumerate().for_each(|(p, prob)| task(p, prob));
        } else {
            probs.chunks_mut(per).enumerate().for_each(|(p, prob)| task(p, prob));
        }
    }

    /// One head of one sample: scores `Q_h·K_hᵀ` and context `P·V_h` as two small
    /// products over the valid keys, the masked softmax between them.
    ///
    /// # Safety
    /// `ctx` must be valid for the context of sample `s` (`[seq, inner]` from `s·seq·inner`)
    /// and columns `h·hd..(h+1)·hd` of it not written by anyone else meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend_head(&self, q: &[f32], k: &[f32], v: &[f32], ld: usize, s: usize, h: usize, valid: &ValidLengths, prow_all: &mut [f32], ctx: SendPtr<f32>) {
        let (s_len, d, hd) = (self.seq, self.inner(), self.head_dim);
        let scale = 1.0 / (hd as f32).sqrt();
        let vl = valid.of(s, s_len);
        let base = s * s_len * ld + h * hd;
        let cbase = s * s_len * d + h * hd;
        // Scores of every query against the valid keys (masked further per row below).
        sgemm(s_len, vl, hd, MatRef { data: &q[base..], rs: ld, cs: 1 }, MatRef { data: &k[base..], rs: 1, cs: ld }, prow_all, s_len, false);
        for (i, prow) in prow_all.chunks_exact_mut(s_len).enumerate() {
            let keys = self.keys(i, vl);
            let mut max = f32::NEG_INFINITY;
            for p in prow[..keys].iter_mut() {
                *p *= scale;
                max = max.max(*p);
            }
            let mut sum = 0.0;
            for p in prow[..keys].iter_mut() {
                *p = (*p - max).exp();
                sum += *p;
            }
            let inv = 1.0 / sum;
            prow[..keys].iter_mut().for_each(|p| *p *= inv);
            prow[keys..].fill(0.0);
        }
        // SAFETY: forwarded from the caller (rows s·seq.., columns h·hd..(h+1)·hd).
        unsafe { sgemm_raw(s_len, hd, vl, MatRef::rows(prow_all, s_len), MatRef { data: &v[base..], rs: ld, cs: 1 }, ctx.0.add(cbase), d) };
    }
}

/// `[n, seq, dim]` → `[n, dim]`: the first row, or the mean of the valid rows.
pub fn pool(x: &[f32], n: usize, seq: usize, dim: usize, mean: bool, valid: &ValidLengths, y: &mut [f32]) {
    for s in 0..n {
        let xs = &x[s * seq * dim..(s + 1) * seq * dim];
        let ys = &mut y[s * dim..(s + 1) * dim];
        ys.copy_from_slice(&xs[..dim]);
        if mean {
            let vl = valid.of(s, seq);
            for row in xs[dim..vl * dim].chunks_exact(dim) {
                ys.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
            }
            let inv = 1.0 / vl as f32;
            ys.iter_mut().for_each(|a| *a *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention against a direct f64 evaluation of softmax(q·kᵀ/√d)·v with the masks,
    /// on an odd shape (seq 5, 3 heads of 3).
    #[test]
    fn attention_matches_a_plain_reference_with_padding_and_causal_masks() {
        let mut rng = crate::rng::Rng::new(3);
        let (n, seq, heads, hd) = (2, 5, 3, 3);
        let d = heads * hd;
        let mut r = |len: usize| (0..len).map(|_| rng.uniform(1.5)).collect::<Vec<f32>>();
        let (q, k, v) = (r(n * seq * d), r(n * seq * d), r(n * seq * d));
        for causal in [false, true] {
            let geo = Heads { seq, dim: d, heads, head_dim: hd, causal };
            let valid = ValidLengths { lens: vec![5, 3], seq };
            let mut probs = vec![0.0; n * heads * seq * seq];
            let mut ctx = vec![0.0; n * seq * d];
            geo.attend(&q, &k, &v, d, n, &valid, &mut probs, &mut ctx);
            for s in 0..n {
                let vl = [5, 3][s];
                for h in 0..heads {
                    for i in 0..seq {
                        let keys = if causal { vl.min(i + 1) } else { vl };
                        let at = |t: &[f32], j: usize, c: usize| t[(s * seq + j) * d + h * hd + c] as f64;
                        let scores: Vec<f64> = (0..keys).map(|j| (0..hd).map(|c| at(&q, i, c) * at(&k, j, c)).sum::<f64>() / (hd as f64).sqrt()).collect();
                        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                        for c in 0..hd {
                            let want: f64 = (0..keys).map(|j| (scores[j] - m).exp() / z * at(&v, j, c)).sum();
                            let got = ctx[(s * seq + i) * d + h * hd + c] as f64;
                            assert!((got - want).abs() < 1e-5, "s{s} h{h} i{i} c{c}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn padding_lengths_count_trailing_pads_and_pool_means_valid_rows() {
        let mut v = ValidLengths::default();
        v.from_ids(&[5.0, 0.0, 7.0, 0.0, 0.0, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0], 3, 4, 0);
        assert_eq!(v.lens, vec![3, 4, 0]);
        assert_eq!(v.of(0, 4), 3);
        assert_eq!(v.of(2, 4), 1, "an all-padding sample keeps one key");
        assert_eq!(v.of(0, 5), 4, "a prepended row is valid");
        let x: Vec<f32> = (0..3 * 4 * 2).map(|i| i as f32).collect();
        let mut y = vec![0.0; 6];
        pool(&x, 3, 4, 2, true, &v, &mut y);
        assert_eq!(&y[..2], &[2.0, 3.0]);
        assert_eq!(&y[2..4], &[11.0, 12.0]);
        pool(&x, 3, 4, 2, false, &v, &mut y);
        assert_eq!(&y[..2], &[0.0, 1.0]);
    }

    /// The inference GELU: within 2e-7·max(1, |x|) of the exact one, and the vector
    /// path gives the scalar path's bits (odd length, so both run).
    #[test]
    fn fast_gelu_is_close_to_exact_and_vector_equals_scalar() {
        let x: Vec<f32> = (0..20_003).map(|i| (i as f32 - 10_001.0) * 1.3e-3).chain([-80.0, -13.0, 0.0, -0.0, 9.0, 60.0, 1e-30]).collect();
        let mut y = vec![0.0; x.len()];
        gelu_fast(&x, &mut y);
        for (&v, &g) in x.iter().zip(&y) {
            let exact = 0.5 * v as f64 * (1.0 + libm::erf(v as f64 / std::f64::consts::SQRT_2));
            assert!((g as f64 - exact).abs() <= 2e-7 * (v.abs() as f64).max(1.0), "{v}: {g} vs {exact}");
            assert_eq!(g.to_bits(), fast_gelu::scalar(v).to_bits(), "{v}");
        }
        let mut in_place = x.clone();
        gelu_fast_in_place(&mut in_place);
        assert!(in_place.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "in place differs");
    }

    /// The lane-split statistics agree with the sequential ones to f64 rounding, so the
    /// f32 results are equal on these rows (odd lengths, a large offset, a constant row).
    #[test]
    fn lane_split_row_stats_equal_the_sequential_ones() {
        let mut rng = crate::rng::Rng::new(17);
        for len in [1usize, 7, 8, 9, 63, 384, 1537] {
            for offset in [0.0f32, 1e3] {
                let x: Vec<f32> = (0..len).map(|_| offset + rng.uniform(2.0)).collect();
                assert_eq!(row_stats_lanes(&x, 1e-12), row_stats(&x, 1e-12), "len {len} offset {offset}");
            }
        }
        assert_eq!(row_stats_lanes(&[0.5; 40], 1e-5), row_stats(&[0.5; 40], 1e-5));
    }

    #[test]
    fn gelu_matches_known_values_and_patches_follow_conv_layout() {
        assert!((gelu1(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu1(-2.0) + 0.045_500_26).abs() < 1e-6);
        let h = 1e-3f32;
        for x in [-2.5f32, -0.3, 0.0, 0.7, 3.0] {
            let fd = (gelu1(x + h) - gelu1(x - h)) / (2.0 * h);
            assert!((fd - gelu_grad(x)).abs() < 2e-3, "{x}");
        }
        // 2 channels, 4×6 image, patch 2: patch 4 is row 1, column 1 of the 2×3 grid.
        let g = Patches { channels: 2, height: 4, width: 6, patch: 2 };
        let x: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let mut cols = vec![0.0; g.count() * g.len()];
        g.gather(&x, 1, &mut cols);
        assert_eq!(&cols[4 * 8..5 * 8], &[14.0, 15.0, 20.0, 21.0, 38.0, 39.0, 44.0, 45.0]);
        let mut back = vec![0.0; 48];
        g.scatter_add(&cols, 1, &mut back);
        assert_eq!(back, x);
    }
}
