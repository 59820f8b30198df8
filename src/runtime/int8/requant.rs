//! Requantization ([`Requant`]: integer fixed-point rescaling of i32 accumulators to u8)
//! and the f32 ⇄ u8 (de)quantization of activations: the number formats every kernel and
//! layer shares, apart from the products that compute the accumulators.

use super::{FORCE_SCALAR, Kernel};
#[cfg(target_arch = "x86_64")]
use super::avx2;
use std::sync::atomic::Ordering;

use crate::spec::QParams;

/// A real multiplier `M` as integer fixed point: `M ≈ multiplier · 2^-shift`, with
/// `multiplier` in `[2^30, 2^31)` (31 significant bits).
///
/// Rounding policy: [`apply`](Requant::apply) computes the exact 64-bit product
/// `acc · multiplier` and divides by `2^shift` rounding **half away from zero**
/// (like `f64::round`), saturating to the i32 range. Supports `M` in `[0, 2^29)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requant {
    pub(super) multiplier: i64,
    pub(super) shift: u32,
}

impl Requant {
    /// The fixed-point form of `m` (panics unless `0 <= m < 2^29` and finite).
    pub fn from_real(m: f64) -> Requant {
        assert!(m.is_finite() && (0.0..(1u64 << 29) as f64).contains(&m), "requant multiplier {m} out of range");
        if m == 0.0 {
            return Requant { multiplier: 0, shift: 1 };
        }
        // Find shift with m·2^shift in [2^30, 2^31); m < 2^29 gives shift >= 2.
        let mut shift: i32 = 30 - m.log2().floor() as i32;
        let mut mult = (m * 2f64.powi(shift)).round();
        // log2 rounding at the boundaries, and round() reaching 2^31.
        while mult >= (1u64 << 31) as f64 {
            shift -= 1;
            mult = (m * 2f64.powi(shift)).round();
        }
        while mult < (1u64 << 30) as f64 && shift < 62 {
            shift += 1;
            mult = (m * 2f64.powi(shift)).round();
        }
        let (mut mult, mut shift) = (mult as i64, shift);
        // Tiny multipliers: keep the shift within what an i64 product allows.
        if shift > 62 {
            let excess = (shift - 62) as u32;
            mult = if excess >= 63 { 0 } else { (mult + (1 << (excess - 1))) >> excess };
            shift = 62;
        }
        debug_assert!(shift >= 1);
        Requant { multiplier: mult, shift: shift as u32 }
    }

    /// `round(acc · M)`, half away from zero, saturated to i32.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        // shift is in 1..=62 by construction, |p| < 2^62: no overflow.
        let p = acc as i64 * self.multiplier;
        let half = 1i64 << (self.shift - 1);
        let r = (p + half - (p < 0) as i64) >> self.shift;
        r.clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }

    /// `clamp(zp + round(acc · M), lo, 255)` as u8 (same rounding as [`apply`](Self::apply),
    /// branch-free so data-dependent ReLU clamps do not mispredict).
    #[inline]
    pub(super) fn apply_u8(&self, acc: i32, zp: i32, lo: i32) -> u8 {
        let p = acc as i64 * self.multiplier;
        let half = 1i64 << (self.shift - 1);
        let r = ((p + half - (p < 0) as i64) >> self.shift) + zp as i64;
        r.max(lo as i64).min(255) as u8
    }

    /// The integer multiplier (`M = multiplier · 2^-shift`).
    pub fn multiplier(&self) -> i64 {
        self.multiplier
    }

    /// The right shift (`M = multiplier · 2^-shift`).
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// The real multiplier this represents.
    pub fn to_real(&self) -> f64 {
        self.multiplier as f64 * 2f64.powi(-(self.shift as i32))
    }
}

/// `y[i] = rq.apply_u8(acc[i], zp, lo)` for a run of accumulators of one channel,
/// eight at a time on AVX2 (the same integer arithmetic, so the same bits).
pub(super) fn requant_row(rq: &Requant, zp: i32, lo: i32, acc: &[i32], y: &mut [u8]) {
    assert_eq!(acc.len(), y.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx2.is_available() && !FORCE_SCALAR.load(Ordering::Relaxed) {
        // SAFETY: AVX2 was just detected.
        done = unsafe { avx2::requant_row_avx2(rq.multiplier, rq.shift, zp, lo, acc, y) };
    }
    for (o, &a) in y[done..].iter_mut().zip(&acc[done..]) {
        *o = rq.apply_u8(a, zp, lo);
    }
}

/// `round(v)` half away from zero for `|v| <= 2^22`, written so it vectorizes
/// (no `roundf` call on baseline x86-64).
#[inline]
fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

/// Quantize floats to u8: `q = clamp(round(x / scale) + zero_point, 0, 255)`, rounding
/// half away from zero (NaN maps to the zero point). `out.len()` must equal `x.len()`.
pub fn quantize_u8(x: &[f32], qp: QParams, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "quantize_u8: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx2.is_available() && !FORCE_SCALAR.load(Ordering::Relaxed) {
        // SAFETY: AVX2 was just detected. The same bytes as the scalar form.
        return unsafe { quantize_u8_avx2(x, qp, out) };
    }
    quantize_u8_impl(x, qp, out)
}

/// The same result as [`quantize_u8_impl`], 32 values per step (the compiler does not
/// vectorize the saturating float→int casts of the scalar form). The division is the
/// same IEEE division; rounding half away from zero is `trunc(v + copysign(0.49999997, v))`,
/// which equals `round_half_away` for every float with |v| <= 600 (checked exhaustively
/// over all 2.3·10^9 of them; `v` is clamped to [-256, 256] first); four vectors are
/// packed to bytes together.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_u8_avx2(x: &[f32], qp: QParams, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let zp = qp.zero_point;
    let n32 = x.len() / 32 * 32;
    let scale = _mm256_set1_ps(qp.scale);
    let (lo, hi) = (_mm256_set1_ps((-zp - 1) as f32), _mm256_set1_ps((256 - zp) as f32));
    let below_half = _mm256_set1_ps(0.49999997);
    let sign = _mm256_set1_ps(-0.0);
    let zpv = _mm256_set1_epi32(zp);
    // packus works within 128-bit halves: dwords 0,4,1,5,2,6,3,7 put the bytes in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let one = |p: *const f32| {
        // SAFETY (of the load): callers pass p with 8 readable floats.
        let v = _mm256_div_ps(unsafe { _mm256_loadu_ps(p) }, scale);
        // NaN → 0 (the scalar `as i32` gives 0), then clamp as the scalar code.
        let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
        let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
        let half = _mm256_or_ps(_mm256_and_ps(v, sign), below_half);
        _mm256_add_epi32(_mm256_cvttps_epi32(_mm256_add_ps(v, half)), zpv)
    };
    for i in (0..n32).step_by(32) {
        // SAFETY: i + 32 <= n32 <= x.len() = out.len().
        unsafe {
            let p = x.as_ptr().add(i);
            let (a, b, c, d) = (one(p), one(p.add(8)), one(p.add(16)), one(p.add(24)));
            // Saturating packs clamp to 0..=255 exactly like the scalar clamp.
            let bytes = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, _mm256_permutevar8x32_epi32(bytes, order));
        }
    }
    quantize_u8_impl(&x[n32..], qp, &mut out[n32..])
}

#[inline(always)]
pub(super) fn quantize_u8_impl(x: &[f32], qp: QParams, out: &mut [u8]) {
    let zp = qp.zero_point;
    // Clamping before rounding keeps the value in round_half_away's exact range and
    // cannot change the result (the final clamp is to 0..=255 around zp).
    let lo = (-zp - 1) as f32;
    let hi = (256 - zp) as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let s = (v / qp.scale).clamp(lo, hi);
        *o = (round_half_away(s) + zp).clamp(0, 255) as u8;
    }
}

/// Dequantize u8 values: `out = scale * (q - zero_point)`. Lengths must be equal.
pub fn dequantize_u8(q: &[u8], qp: QParams, out: &mut [f32]) {
    assert_eq!(q.len(), out.len(), "dequantize_u8: length mismatch");
    for (o, &v) in out.iter_mut().zip(q) {
        *o = qp.scale * (v as i32 - qp.zero_point) as f32;
    }
}
