//! Integer approximations of the nonlinearities around the int8 products, after I-BERT
//! (Kim et al. 2021, "I-BERT: Integer-only BERT Quantization"): softmax by i-exp,
//! LayerNorm with an integer mean, variance and Newton square root, GELU by the integer
//! erf polynomial, and (not in I-BERT) the LSTM/GRU gate sigmoid and tanh by a table.
//!
//! Every kernel here takes integers with a known scale and computes with i32/i64 adds,
//! multiplies, shifts and (once per row) an integer division; the constants that depend
//! on a scale are worked out in f64 when the kernel is built. What stays float is the
//! conversion at the edges, said on each `*_f32` helper: the f32 values the int8
//! products write are rounded to fixed point on the way in, and the integer results are
//! scaled back to f32 for the next product's own quantization.

use std::f64::consts::LN_2;
use std::sync::OnceLock;

use super::transformer::{Heads, ValidLengths};

/// `x` rounded to the nearest integer (halves away from zero), saturating at the i32
/// range. Not `f32::round`: on baseline x86-64 that is a libm call per value, which
/// kept the conversions here from vectorizing.
#[inline(always)]
fn round_i32(x: f32) -> i32 {
    (x + 0.5f32.copysign(x)) as i32
}

/// Runs `f` compiled for AVX2/FMA where present (the crate builds for baseline
/// x86-64); the same code either way, so the same results.
#[inline(always)]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the features were just detected.
        return unsafe { run(f) };
    }
    f()
}

/// Fraction bits of the integer softmax's probabilities: `p = q / 2^15`.
pub const PROB_BITS: u32 = 15;

/// i-exp constants for logits at one scale: `exp(x)` for `x ≤ 0` as
/// `2^−z · L(r)`, `x = −z·ln2 + r`, `r ∈ (−ln2, 0]`, with I-BERT's second-order
/// polynomial `L(r) = 0.3585·(r + 1.353)² + 0.344` evaluated on integers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntSoftmax {
    /// The logit differences are multiplied by `2^shift` (divided when negative) so that
    /// `ln2` is 2^14..2^15 units: the polynomial then has the same precision at every
    /// input scale and its terms stay far inside i64.
    shift: i32,
    /// Differences below `−floor` (input units) are clamped there: their exp is below
    /// 2^−62 of the maximum's and becomes 0 anyway.
    floor: i64,
    q_ln2: i64,
    q_b: i64,
    q_c: i64,
}

impl IntSoftmax {
    /// Constants for logits `x = q · scale` (`scale > 0`).
    pub fn new(scale: f64) -> IntSoftmax {
        let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
        let units_per_ln2 = LN_2 / scale;
        let shift = (14.0 - units_per_ln2.log2().floor()).clamp(-40.0, 40.0) as i32;
        let s = scale / 2f64.powi(shift);
        let q_ln2 = ((LN_2 / s).floor() as i64).max(1);
        let q_b = (1.353 / s).floor() as i64;
        let q_c = (0.344 / (0.3585 * s * s)).floor() as i64;
        let floor = (64.0 * LN_2 / scale).ceil().min((1u64 << 40) as f64) as i64;
        IntSoftmax { shift, floor: floor.max(1), q_ln2, q_b, q_c }
    }

    /// `e` proportional to `exp(d · scale)` for a difference `d ≤ 0` from the row maximum.
    #[inline(always)]
    fn exp(&self, d: i64) -> i64 {
        let d = d.max(-self.floor);
        let d = if self.shift >= 0 { d << self.shift } else { d >> -self.shift };
        let z = -d / self.q_ln2;
        let r = d + z * self.q_ln2;
        let poly = (r + self.q_b) * (r + self.q_b) + self.q_c;
        if z >= 63 { 0 } else { poly >> z }
    }

    /// Softmax of one row of integer logits into probabilities `p / 2^PROB_BITS` (the
    /// row sums to 2^15 up to rounding). `e` is scratch of the row's length. An empty
    /// row (every key masked) writes nothing.
    pub fn row(&self, x: &[i32], e: &mut [i64], p: &mut [u16]) {
        let Some(&max) = x.iter().max() else { return };
        let mut sum = 0i64;
        for (v, ev) in x.iter().zip(e.iter_mut()) {
            *ev = self.exp(*v as i64 - max as i64);
            sum += *ev;
        }
        // The maximum's own term is L(0) > 0, so sum > 0; `e · factor ≤ 2^62`.
        let factor = (1i64 << 62) / sum.max(1);
        let shift = 62 - PROB_BITS;
        for (ev, pv) in e[..x.len()].iter().zip(p.iter_mut()) {
            *pv = ((*ev * factor + (1i64 << (shift - 1))) >> shift) as u16;
        }
    }
}

/// `floor(√n)` by Newton's iteration on integers, started above the root.
pub fn isqrt(n: i64) -> i64 {
    if n < 2 {
        return n.max(0);
    }
    let bits = 64 - n.leading_zeros();
    let mut x = 1i64 << bits.div_ceil(2);
    loop {
        let y = (x + n / x) >> 1;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// Magnitude bound of a row quantized for [`IntLayerNorm`]: `|q| < 2^20`.
const LN_IN_BITS: i32 = 20;
/// Fraction bits of the normalized value `(x − mean) / std`.
const LN_NORM_BITS: u32 = 14;
/// Fraction bits of the integer LayerNorm's output.
pub const LN_OUT_BITS: u32 = 16;
/// Power-of-two exponents a row's scale may take (`2^−k`, `k` in this range).
const LN_K: std::ops::RangeInclusive<i32> = -64..=63;

/// A row of f32 values as integers `q = round(x · 2^k)` with `|q| < 2^20`, `k` chosen
/// from the row's largest magnitude (a power of two, so the scale is exact and the
/// LayerNorm's constants can be tabled per `k`). Float: this is the conversion in.
pub fn quantize_row_pow2(x: &[f32], q: &mut [i32]) -> i32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let k = if max > 0.0 && max.is_finite() { LN_IN_BITS - (max.log2().floor() as i32 + 1) } else { 0 };
    let k = k.clamp(*LN_K.start(), *LN_K.end());
    let f = 2f32.powi(k);
    let lim = ((1i64 << LN_IN_BITS) - 1) as f32;
    for (qv, v) in q.iter_mut().zip(x) {
        *qv = round_i32((v * f).clamp(-lim, lim));
    }
    k
}

/// LayerNorm over rows of `dim` integers: integer mean and variance, `√(var + eps)` by
/// [`isqrt`], the normalized value in Q14, then fixed-point `gamma` and `beta`.
/// Output in Q16 (`y = out / 2^16`).
#[derive(Clone, Debug)]
pub struct IntLayerNorm {
    dim: usize,
    /// `round(gamma · 2^gamma_bits)`.
    gamma: Vec<i64>,
    /// `round(beta · 2^(14 + gamma_bits))`.
    beta: Vec<i64>,
    gamma_bits: u32,
    /// `eps` in the units of the variance of a row at scale `2^−k`: `eps · 4^k`, per `k`.
    eps_by_k: Vec<i64>,
}

impl IntLayerNorm {
    pub fn new(gamma: &[f32], beta: &[f32], eps: f32) -> IntLayerNorm {
        let gmax = gamma.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        // The largest |gamma| gets 24 bits; the products stay below 2^47.
        let e = if gmax > 0.0 { gmax.log2().floor() as i32 + 1 } else { 0 };
        let gamma_bits = (24 - e).clamp(0, 40) as u32;
        let g = 2f64.powi(gamma_bits as i32);
        let b = 2f64.powi((LN_NORM_BITS + gamma_bits) as i32);
        let sat = (1i64 << 52) as f64;
        IntLayerNorm {
            dim: gamma.len(),
            gamma: gamma.iter().map(|&v| (v as f64 * g).round() as i64).collect(),
            beta: beta.iter().map(|&v| (v as f64 * b).round().clamp(-sat, sat) as i64).collect(),
            gamma_bits,
            // Up to 2^62: far above any variance (< 2^42), so a saturated eps still
            // dominates as the real one does.
            eps_by_k: LN_K.map(|k| (eps as f64 * 4f64.powi(k)).round().min((1u64 << 62) as f64) as i64).collect(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// One row `q` at scale `2^−k` (from [`quantize_row_pow2`]) → `y` in Q16.
    pub fn row(&self, q: &[i32], k: i32, y: &mut [i32]) {
        let n = self.dim as i64;
        let sum: i64 = q.iter().map(|&v| v as i64).sum();
        let mean = (2 * sum + n).div_euclid(2 * n); // round(sum / n)
        let var = q.iter().map(|&v| (v as i64 - mean) * (v as i64 - mean)).sum::<i64>() / n;
        let eps = self.eps_by_k[(k.clamp(*LN_K.start(), *LN_K.end()) - LN_K.start()) as usize];
        let std = isqrt(var.saturating_add(eps)).max(1);
        // |d| ≤ √dim · std, so |d · inv| ≤ √dim · 2^44 stays in i64.
        let inv = (1i64 << (30 + LN_NORM_BITS)) / std;
        let out_shift = (LN_NORM_BITS + self.gamma_bits) as i32 - LN_OUT_BITS as i32;
        let lim = i32::MAX as i64;
        for ((yv, &v), (&g, &b)) in y.iter_mut().zip(q).zip(self.gamma.iter().zip(&self.beta)) {
            let norm = ((v as i64 - mean) * inv + (1 << 29)) >> 30;
            let acc = norm * g + b;
            let out = if out_shift > 0 { (acc + (1i64 << (out_shift - 1))) >> out_shift } else { acc << -out_shift };
            *yv = out.clamp(-lim, lim) as i32;
        }
    }

    /// Rows of f32 in and out: each row quantized by [`quantize_row_pow2`] (float),
    /// normalized on integers ([`Self::row`]), the Q16 result scaled back (float).
    pub fn forward_f32(&self, x: &[f32], y: &mut [f32]) {
        let d = self.dim;
        let mut q = vec![0i32; 2 * d];
        let (qi, qo) = q.split_at_mut(d);
        let back = 1.0 / (1u32 << LN_OUT_BITS) as f32;
        with_avx2(|| {
            for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                let k = quantize_row_pow2(xr, qi);
                self.row(qi, k, qo);
                yr.iter_mut().zip(qo.iter()).for_each(|(a, &b)| *a = b as f32 * back);
            }
        })
    }
}

/// Fraction bits of the fixed-point input of [`IntGelu`] (`q = round(x · 2^12)`).
pub const GELU_IN_BITS: u32 = 12;

/// I-BERT's i-GELU: `GELU(x) = x/2 · (1 + erf(x/√2))` with
/// `erf(u) ≈ sgn(u)·[a·(min(|u|, −b) + b)² + 1]`, `a = −0.2888`, `b = −1.769`, on integers:
/// input `q` at scale `S = 2^−12`, output `q · (erf_q + one_q)` (i64) at
/// [`IntGelu::output_scale`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntGelu {
    q_b: i64,
    q_c: i64,
    out_scale: f64,
}

impl Default for IntGelu {
    fn default() -> Self {
        IntGelu::new(2f64.powi(-(GELU_IN_BITS as i32)))
    }
}

impl IntGelu {
    /// Constants for inputs `x = q · scale`.
    pub fn new(scale: f64) -> IntGelu {
        const A: f64 = -0.2888;
        const B: f64 = -1.769;
        let s = scale / std::f64::consts::SQRT_2; // the erf argument's scale
        let erf_scale = A * s * s;
        IntGelu { q_b: (B / s).floor() as i64, q_c: (1.0 / erf_scale).floor() as i64, out_scale: scale * erf_scale / 2.0 }
    }

    /// The real value of one output unit.
    pub fn output_scale(&self) -> f64 {
        self.out_scale
    }

    /// GELU of one integer input, in output units.
    #[inline(always)]
    pub fn apply(&self, q: i32) -> i64 {
        let q = q as i64;
        let a = q.abs().min(-self.q_b) + self.q_b;
        // sgn(q)·(a² + c) + c: `c = 1/erf_scale` is the integer "1" of the erf.
        let erf = q.signum() * (a * a + self.q_c);
        q * (erf + self.q_c)
    }

    /// f32 in and out: `x` rounded to Q12 (float), i-GELU on integers, scaled back (float).
    pub fn forward_f32(&self, x: &[f32], y: &mut [f32]) {
        let f = (1u32 << GELU_IN_BITS) as f32;
        let lim = (1i64 << 30) as f32;
        let back = self.out_scale as f32;
        with_avx2(|| {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = self.apply(round_i32((xv * f).clamp(-lim, lim))) as f32 * back;
            }
        })
    }
}

/// Fraction bits of a gate's fixed-point input (`q = round(x · 2^12)`).
pub const GATE_IN_BITS: u32 = 12;
/// Fraction bits of a gate's output (`σ = out / 2^15`; tanh likewise, signed).
pub const GATE_OUT_BITS: u32 = 15;
/// The sigmoid table covers inputs in [−16, 16) (σ(16) = 1 − 1.1e−7).
const GATE_RANGE: i32 = 16;
/// Table step 2^−7: input units per step (2^(12 − 7)).
const GATE_STEP_BITS: u32 = 5;

/// σ at every 2^−7 in [−16, 16] in Q15 (4,097 entries, 16 KB): built once in f64.
fn sigmoid_table() -> &'static [i32] {
    static TABLE: OnceLock<Vec<i32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let steps = (2 * GATE_RANGE as usize) << (GATE_IN_BITS - GATE_STEP_BITS);
        (0..=steps)
            .map(|i| {
                let x = i as f64 / (1u32 << (GATE_IN_BITS - GATE_STEP_BITS)) as f64 - GATE_RANGE as f64;
                (2f64.powi(GATE_OUT_BITS as i32) / (1.0 + (-x).exp())).round() as i32
            })
            .collect()
    })
}

/// Integer sigmoid and tanh for LSTM/GRU gates: a table of σ over a fixed-point input
/// with linear interpolation between entries (one load pair, one multiply, one shift).
/// A table rather than a polynomial because σ and tanh saturate: a bounded input range
/// covers them to 1e−7, and interpolation at step 2^−7 is within 1e−6 of the function,
/// where a low-order polynomial (I-BERT has none for σ) would need range reduction, an
/// i-exp and a division per value. tanh uses the same table: `tanh x = 2σ(2x) − 1`.
#[derive(Clone, Copy, Debug)]
pub struct IntGates {
    table: &'static [i32],
}

impl Default for IntGates {
    fn default() -> Self {
        IntGates { table: sigmoid_table() }
    }
}

impl IntGates {
    /// σ of a Q12 input, in Q15.
    #[inline(always)]
    pub fn sigmoid(&self, q: i32) -> i32 {
        let top = (GATE_RANGE << GATE_IN_BITS) - 1;
        let u = (q.clamp(-top - 1, top) + (GATE_RANGE << GATE_IN_BITS)) as usize;
        let (i, f) = (u >> GATE_STEP_BITS, (u & ((1 << GATE_STEP_BITS) - 1)) as i32);
        let (a, b) = (self.table[i], self.table[i + 1]);
        a + (((b - a) * f + (1 << (GATE_STEP_BITS - 1))) >> GATE_STEP_BITS)
    }

    /// tanh of a Q12 input, in Q15 (signed).
    #[inline(always)]
    pub fn tanh(&self, q: i32) -> i32 {
        let lim = GATE_RANGE << GATE_IN_BITS;
        2 * self.sigmoid(2 * q.clamp(-lim, lim)) - (1 << GATE_OUT_BITS)
    }

    /// `v = σ(v)`: rounded to Q12 (float), the table (integer), scaled back (float).
    pub fn sigmoid_f32(&self, v: &mut [f32]) {
        let (f, back, lim) = ((1u32 << GATE_IN_BITS) as f32, 1.0 / (1u32 << GATE_OUT_BITS) as f32, (1i32 << 30) as f32);
        with_avx2(|| v.iter_mut().for_each(|a| *a = self.sigmoid(round_i32((*a * f).clamp(-lim, lim))) as f32 * back));
    }

    /// `v = tanh(v)`, as [`Self::sigmoid_f32`].
    pub fn tanh_f32(&self, v: &mut [f32]) {
        let (f, back, lim) = ((1u32 << GATE_IN_BITS) as f32, 1.0 / (1u32 << GATE_OUT_BITS) as f32, (1i32 << 30) as f32);
        with_avx2(|| v.iter_mut().for_each(|a| *a = self.tanh(round_i32((*a * f).clamp(-lim, lim))) as f32 * back));
    }
}

/// Per-call buffers of [`attend_integer`].
#[derive(Default, Clone, Debug)]
pub struct AttentionIntScratch {
    q: Vec<i8>,
    k: Vec<i8>,
    v: Vec<i8>,
    scores: Vec<i32>,
    e: Vec<i64>,
    p: Vec<u16>,
    ctx: Vec<i32>,
}

/// Symmetric int8 of a `[rows, cols]` block with row stride `ld`: returns the scale.
/// Float: the conversion in (the projections write f32).
fn quantize_block_i8(x: &[f32], rows: usize, cols: usize, ld: usize, out: &mut [i8]) -> f32 {
    let mut max = 0f32;
    for r in 0..rows {
        max = x[r * ld..r * ld + cols].iter().fold(max, |m, v| m.max(v.abs()));
    }
    let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    for r in 0..rows {
        for (o, v) in out[r * cols..(r + 1) * cols].iter_mut().zip(&x[r * ld..r * ld + cols]) {
            *o = round_i32((v * inv).clamp(-127.0, 127.0)) as i8;
        }
    }
    scale
}

/// Self-attention with an integer core, the same contract as [`Heads::attend`] (row
/// `i` of sample `s` at `(s·seq + i)·ld` in `q`, `k`, `v`; context `[n, seq, inner]`),
/// for each (sample, head): `Q_h`, `K_h` and `V_h` quantized to int8 at one symmetric
/// scale each (their largest magnitude, at run time: the float conversion in), scores
/// `Q_h·K_hᵀ` as exact i32 dot products, [`IntSoftmax`] over the valid keys of each row
/// (masked keys get probability 0), context `P·V_h` as i32 sums of Q15 probabilities
/// times int8 values, scaled back to f32 (the float conversion out).
#[allow(clippy::too_many_arguments)]
pub fn attend_integer(geo: &Heads, q: &[f32], k: &[f32], v: &[f32], ld: usize, n: usize, valid: &ValidLengths, sc: &mut AttentionIntScratch, ctx: &mut [f32]) {
    let (seq, hd, d) = (geo.seq, geo.head_dim, geo.inner());
    assert!(ctx.len() >= n * seq * d, "attend_integer: context too short");
    for buf in [&mut sc.q, &mut sc.k, &mut sc.v] {
        buf.resize(seq * hd, 0);
    }
    sc.scores.resize(seq * seq, 0);
    sc.e.resize(seq, 0);
    sc.p.resize(seq * seq, 0);
    sc.ctx.resize(hd, 0);
    let root = (hd as f64).sqrt();
    with_avx2(|| {
        for s in 0..n {
            let vl = valid.of(s, seq);
            for h in 0..geo.heads {
                let base = s * seq * ld + h * hd;
                let sq = quantize_block_i8(&q[base..], seq, hd, ld, &mut sc.q);
                let sk = quantize_block_i8(&k[base..], vl, hd, ld, &mut sc.k);
                let sv = quantize_block_i8(&v[base..], vl, hd, ld, &mut sc.v);
                let softmax = IntSoftmax::new(sq as f64 * sk as f64 / root);
                let back = sv / (1u32 << PROB_BITS) as f32;
                for i in 0..seq {
                    let keys = geo.keys(i, vl);
                    let qi = &sc.q[i * hd..(i + 1) * hd];
                    let row = &mut sc.scores[i * seq..i * seq + keys];
                    for (j, r) in row.iter_mut().enumerate() {
                        *r = qi.iter().zip(&sc.k[j * hd..(j + 1) * hd]).map(|(&a, &b)| a as i32 * b as i32).sum();
                    }
                    let p = &mut sc.p[i * seq..i * seq + keys];
                    softmax.row(row, &mut sc.e, p);
                    // Σ p ≤ 2^15 per row, so |Σ p·v| ≤ 127 · 2^15: no overflow at any length.
                    sc.ctx.fill(0);
                    for (j, &pj) in p.iter().enumerate() {
                        let pj = pj as i32;
                        sc.ctx.iter_mut().zip(&sc.v[j * hd..(j + 1) * hd]).for_each(|(c, &vv)| *c += pj * vv as i32);
                    }
                    let out = &mut ctx[(s * seq + i) * d + h * hd..(s * seq + i) * d + (h + 1) * hd];
                    out.iter_mut().zip(&sc.ctx).for_each(|(o, &c)| *o = c as f32 * back);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn softmax_f64(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = x.iter().map(|v| (v - m).exp()).sum();
        x.iter().map(|v| (v - m).exp() / z).collect()
    }

    /// Integer softmax against f64 softmax on odd row lengths and scales from tiny to
    /// huge: every probability within 1e-3 (I-BERT's polynomial and Q15 rounding), rows
    /// summing to 1 within 1e-3; all-equal logits give equal probabilities; an empty row
    /// writes nothing.
    #[test]
    fn integer_softmax_is_close_to_softmax_on_odd_rows_and_scales() {
        let mut rng = Rng::new(11);
        let mut worst = 0f64;
        for &scale in &[1e-7, 1e-4, 0.01, 0.05, 0.3, 2.0, 40.0] {
            let sm = IntSoftmax::new(scale);
            for &len in &[1usize, 3, 7, 17, 65] {
                for spread in [0.5f64, 4.0, 30.0] {
                    let x: Vec<i32> = (0..len).map(|_| (rng.uniform(spread as f32) as f64 / scale).round().clamp(-2e9, 2e9) as i32).collect();
                    let mut e = vec![0i64; len];
                    let mut p = vec![0u16; len];
                    sm.row(&x, &mut e, &mut p);
                    let want = softmax_f64(&x.iter().map(|&v| v as f64 * scale).collect::<Vec<_>>());
                    let mut total = 0.0;
                    for (a, b) in p.iter().zip(&want) {
                        let a = *a as f64 / 32768.0;
                        worst = worst.max((a - b).abs());
                        total += a;
                    }
                    assert!((total - 1.0).abs() < 1e-3, "scale {scale} len {len}: sums to {total}");
                }
            }
        }
        assert!(worst < 1e-3, "worst probability error {worst}");
        // All-equal logits: exactly equal probabilities, 1/len each to rounding.
        let sm = IntSoftmax::new(0.01);
        let x = vec![-12345i32; 7];
        let (mut e, mut p) = (vec![0i64; 7], vec![0u16; 7]);
        sm.row(&x, &mut e, &mut p);
        assert!(p.iter().all(|&v| v == p[0]) && (p[0] as f64 / 32768.0 - 1.0 / 7.0).abs() < 1e-4, "{p:?}");
        // Extreme logits: one dominant key takes all the mass; i32 extremes do not overflow.
        let x = [i32::MIN, i32::MAX, 0];
        let (mut e, mut p) = (vec![0i64; 3], vec![0u16; 3]);
        IntSoftmax::new(1.0).row(&x, &mut e, &mut p);
        assert_eq!(p, [0, 32768, 0]);
        // Empty (fully masked) row.
        let mut p: [u16; 0] = [];
        sm.row(&[], &mut [], &mut p);
    }

    #[test]
    fn integer_sqrt_is_the_floor_of_the_root() {
        for n in (0..5000i64).chain([1 << 40, (1 << 62) - 1, 999_999_999_999, i64::MAX]) {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1).checked_mul(r + 1).is_none_or(|s| s > n), "{n}: {r}");
        }
    }

    fn layer_norm_f64(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps as f64).sqrt();
        x.iter().zip(g.iter().zip(b)).map(|(&v, (&g, &b))| (v as f64 - mean) * inv * g as f64 + b as f64).collect()
    }

    /// Integer LayerNorm against f64 on odd widths and magnitudes from 1e-6 to 1e6
    /// (the row scale is a power of two, so the result does not depend on it): within
    /// 2e-4 · (1 + max|gamma|); a constant row (zero variance) gives exactly `beta`
    /// (to Q16); an all-zero row too.
    #[test]
    fn integer_layer_norm_is_close_to_layer_norm_on_odd_widths_and_magnitudes() {
        let mut rng = Rng::new(12);
        let mut worst = 0f64;
        for &dim in &[1usize, 5, 33, 64, 131] {
            let g: Vec<f32> = (0..dim).map(|_| 1.0 + rng.uniform(0.8)).collect();
            let b: Vec<f32> = (0..dim).map(|_| rng.uniform(0.5)).collect();
            let ln = IntLayerNorm::new(&g, &b, 1e-5);
            for &mag in &[1e-6f32, 1e-2, 1.0, 40.0, 1e6] {
                let rows = 3;
                let mut x: Vec<f32> = (0..rows * dim).map(|_| (rng.uniform(1.0) + 0.3) * mag).collect();
                // An outlier channel, as BERT's hidden states have.
                x[dim / 2] *= 20.0;
                let mut y = vec![0f32; rows * dim];
                ln.forward_f32(&x, &mut y);
                for r in 0..rows {
                    let want = layer_norm_f64(&x[r * dim..(r + 1) * dim], &g, &b, 1e-5);
                    for (a, w) in y[r * dim..(r + 1) * dim].iter().zip(&want) {
                        worst = worst.max((*a as f64 - w).abs());
                    }
                }
            }
        }
        assert!(worst < 2e-4 * (1.0 + 1.8), "worst LayerNorm error {worst}");
        let (g, b) = (vec![1.5f32, -0.5, 2.0], vec![0.25f32, -1.0, 0.125]);
        let ln = IntLayerNorm::new(&g, &b, 1e-5);
        for x in [[3.7f32; 3], [0.0; 3], [-1e-30; 3]] {
            let mut y = [0f32; 3];
            ln.forward_f32(&x, &mut y);
            assert_eq!(y, [0.25, -1.0, 0.125], "{x:?}");
        }
    }

    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    }

    /// erf to 1e-12 (Abramowitz & Stegun 7.1.26 is too coarse for a reference): the
    /// Maclaurin series below 3, the asymptotic expansion above.
    fn erf(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let (mut term, mut sum, mut k) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                k += 1.0;
                term *= -a * a / k;
                sum += term / (2.0 * k + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let (mut term, mut sum) = (1.0, 1.0);
            for k in 1..8 {
                term *= -((2 * k - 1) as f64) / (2.0 * a * a);
                sum += term;
            }
            1.0 - (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * sum
        };
        r.copysign(x)
    }

    /// i-GELU against the exact GELU: within 2e-2 absolute everywhere (I-BERT's erf
    /// polynomial; largest near |x| ≈ 2.5 where the polynomial is clipped), exact 0 at 0,
    /// the identity for large positive and 0 for large negative inputs.
    #[test]
    fn integer_gelu_is_close_to_gelu_over_its_range_and_at_the_edges() {
        let gelu = IntGelu::default();
        let mut worst = 0f64;
        let mut rng = Rng::new(13);
        let xs: Vec<f32> = (0..1001).map(|i| -8.0 + 16.0 * i as f32 / 1000.0).chain((0..37).map(|_| rng.uniform(30.0))).collect();
        let mut y = vec![0f32; xs.len()];
        gelu.forward_f32(&xs, &mut y);
        for (&x, &g) in xs.iter().zip(&y) {
            worst = worst.max((g as f64 - gelu_f64(x as f64)).abs());
        }
        assert!(worst < 2e-2, "worst GELU error {worst}");
        let mut y = [1f32; 4];
        gelu.forward_f32(&[0.0, 1000.0, -1000.0, 1e-9], &mut y);
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 1000.0).abs() < 1e-3 && y[2].abs() < 1e-6 && y[3] == 0.0, "{y:?}");
    }

    /// Gate sigmoid and tanh against f64 on odd lengths over [−20, 20] (beyond the
    /// table): σ within 7e-5, tanh within 2e-4 (input rounding to Q12, half a step
    /// times the slope, then the Q15 table and output roundings);
    /// saturation exact; 0 maps to exactly 1/2 and 0.
    #[test]
    fn integer_gates_are_close_to_sigmoid_and_tanh() {
        let gates = IntGates::default();
        let mut rng = Rng::new(14);
        let x: Vec<f32> = (0..997).map(|_| rng.uniform(20.0)).chain([0.0, 1e6, -1e6, 16.0, -16.0, 15.999]).collect();
        let (mut s, mut t) = (x.clone(), x.clone());
        gates.sigmoid_f32(&mut s);
        gates.tanh_f32(&mut t);
        let (mut ws, mut wt) = (0f64, 0f64);
        for ((&v, &a), &b) in x.iter().zip(&s).zip(&t) {
            let v = v as f64;
            ws = ws.max((a as f64 - 1.0 / (1.0 + (-v).exp())).abs());
            wt = wt.max((b as f64 - v.tanh()).abs());
        }
        assert!(ws < 7e-5 && wt < 2e-4, "sigmoid {ws}, tanh {wt}");
        let n = x.len();
        assert_eq!((s[n - 6], t[n - 6]), (0.5, 0.0));
        assert_eq!((s[n - 5], s[n - 4], t[n - 5], t[n - 4]), (1.0, 0.0, 1.0, -1.0));
    }

    /// Integer attention against f64 attention (softmax(q·kᵀ/√d)·v) on an odd shape
    /// with padding and causal masks, one sample with a single valid key: the context
    /// within 1% of the largest |v| (int8 q, k, v and the integer softmax).
    #[test]
    fn integer_attention_is_close_to_attention_with_masks() {
        let mut rng = Rng::new(15);
        let (n, seq, heads, hd) = (3, 5, 3, 3);
        let d = heads * hd;
        let mut r = |len: usize| (0..len).map(|_| rng.uniform(1.5)).collect::<Vec<f32>>();
        let (q, k, v) = (r(n * seq * d), r(n * seq * d), r(n * seq * d));
        let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        for causal in [false, true] {
            let geo = Heads { seq, dim: d, heads, head_dim: hd, causal };
            let valid = ValidLengths { lens: vec![5, 3, 1], seq };
            let mut ctx = vec![f32::NAN; n * seq * d];
            attend_integer(&geo, &q, &k, &v, d, n, &valid, &mut AttentionIntScratch::default(), &mut ctx);
            let mut worst = 0f64;
            for s in 0..n {
                let vl = valid.lens[s];
                for h in 0..heads {
                    for i in 0..seq {
                        let keys = if causal { vl.min(i + 1) } else { vl };
                        let at = |t: &[f32], j: usize, c: usize| t[(s * seq + j) * d + h * hd + c] as f64;
                        let scores: Vec<f64> = (0..keys).map(|j| (0..hd).map(|c| at(&q, i, c) * at(&k, j, c)).sum::<f64>() / (hd as f64).sqrt()).collect();
                        let p = softmax_f64(&scores);
                        for c in 0..hd {
                            let want: f64 = (0..keys).map(|j| p[j] * at(&v, j, c)).sum();
                            worst = worst.max((at(&ctx, i, c) - want).abs());
                        }
                    }
                }
            }
            assert!(worst < 0.01 * vmax, "causal {causal}: worst context error {worst} (max |v| {vmax})");
        }
    }
}
