//! Integer inference kernels: u8 activations × symmetric int8 weights → i32.
//!
//! Activations are asymmetric u8 ([`QParams`]: `real = scale * (q - zero_point)`),
//! weights are symmetric i8 per output channel (`real_w = w_scale[o] * q`), products
//! accumulate exactly in i32 and are requantized with integer fixed point
//! ([`Requant`]). For an output channel `o`:
//!
//! ```text
//! acc[o] = Σ_k x[k]·w[o,k] − zx·Σ_k w[o,k] + bias_i32[o]        (exact i32)
//! y[o]   = clamp(zy + round(acc[o] · sx·sw[o]/sy), lo, 255)       (u8 output)
//! y[o]   = sx·sw[o] · acc[o]                                       (f32 output)
//! ```
//!
//! The product `Σ x·w` is computed by one of three kernels, chosen at run time
//! ([`Kernel::detect`]): AVX-512 VNNI (`vpdpbusd`, 16 outputs × 4 k per instruction),
//! AVX2 (`vpmaddwd` on values widened to i16, which cannot saturate: unlike
//! `vpmaddubsw`), and a portable scalar loop. Integer arithmetic is exact, so every
//! kernel gives bit-identical results; [`set_force_scalar`] switches the whole
//! process to the scalar path (for tests and comparisons).
//!
//! Weights are packed once ([`PackedMatrix`]) into the layout the detected kernel
//! reads; activations are repacked per call into a word format in the caller's
//! `scratch` (4 bytes per i32 for VNNI, two u16 per i32 for AVX2, one value per i32
//! for scalar), so the kernels only ever broadcast one i32 per row and step.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::spec::QParams;

// ---------------------------------------------------------------------------------
// Kernel selection
// ---------------------------------------------------------------------------------

/// Which implementation of the u8 × i8 product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512 F/BW + VNNI: `vpdpbusd` on 512-bit vectors.
    Avx512Vnni,
    /// AVX2: `vpmaddwd` on i16-widened operands.
    Avx2,
    /// Portable scalar code, also the reference every other kernel must equal.
    Scalar,
}

impl Kernel {
    /// The best kernel this CPU supports (detected once, then cached).
    pub fn detect() -> Kernel {
        static DETECTED: OnceLock<Kernel> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            [Kernel::Avx512Vnni, Kernel::Avx2]
                .into_iter()
                .find(|k| k.is_available())
                .unwrap_or(Kernel::Scalar)
        })
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// All kernels this CPU can run, fastest first (the scalar one always included).
    pub fn available() -> Vec<Kernel> {
        [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Scalar]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// Short name: `"avx512-vnni"`, `"avx2"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }

    /// How many activation values one packed i32 word holds for this kernel.
    fn elems_per_word(self) -> usize {
        match self {
            Kernel::Avx512Vnni => 4,
            Kernel::Avx2 => 2,
            Kernel::Scalar => 1,
        }
    }
}

static FORCE_SCALAR: AtomicBool = AtomicBool::new(false);

/// Force every product in this process onto the scalar kernel (`true`), or go back
/// to the detected one (`false`). Results do not change, only speed.
pub fn set_force_scalar(force: bool) {
    FORCE_SCALAR.store(force, Ordering::Relaxed);
}

/// The kernel products run on now: `"avx512-vnni"`, `"avx2"` or `"scalar"`.
pub fn kernel_name() -> &'static str {
    if FORCE_SCALAR.load(Ordering::Relaxed) { Kernel::Scalar } else { Kernel::detect() }.name()
}

// ---------------------------------------------------------------------------------
// Requantization and (de)quantization
// ---------------------------------------------------------------------------------

/// A real multiplier `M` as integer fixed point: `M ≈ multiplier · 2^-shift`, with
/// `multiplier` in `[2^30, 2^31)` (31 significant bits).
///
/// Rounding policy: [`apply`](Requant::apply) computes the exact 64-bit product
/// `acc · multiplier` and divides by `2^shift` rounding **half away from zero**
/// (like `f64::round`), saturating to the i32 range. Supports `M` in `[0, 2^29)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requant {
    multiplier: i64,
    shift: u32,
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
    fn apply_u8(&self, acc: i32, zp: i32, lo: i32) -> u8 {
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
fn requant_row(rq: &Requant, zp: i32, lo: i32, acc: &[i32], y: &mut [u8]) {
    assert_eq!(acc.len(), y.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx2.is_available() && !FORCE_SCALAR.load(Ordering::Relaxed) {
        // SAFETY: AVX2 was just detected.
        done = unsafe { x86::requant_row_avx2(rq.multiplier, rq.shift, zp, lo, acc, y) };
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
fn quantize_u8_impl(x: &[f32], qp: QParams, out: &mut [u8]) {
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

// ---------------------------------------------------------------------------------
// Packed weights and the product
// ---------------------------------------------------------------------------------

/// Output channels per packed block (one 512-bit or two 256-bit accumulators).
const NR: usize = 16;

/// The largest reduction length for which `Σ u8·i8` provably fits in i32
/// (`255 · 128 · 65536 < 2^31`).
pub const MAX_K: usize = 1 << 16;

/// A weight matrix `b` (`[n × k]` i8, row-major, one row per output) packed once for
/// the kernel detected at construction, plus its row sums (for zero-point correction).
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    kernel: Kernel,
    /// The original rows, read by the scalar kernel.
    raw: Vec<i8>,
    /// VNNI layout: per block of 16 outputs, per group of 4 k: 16 × 4 bytes.
    packed_i8: Vec<i8>,
    /// AVX2 layout: per block of 16 outputs, per pair of k: 16 × 2 i16.
    packed_i16: Vec<i16>,
    row_sums: Vec<i32>,
}

impl PackedMatrix {
    /// Pack `b` (`[n × k]` row-major) for the best kernel of this CPU.
    pub fn new(b: &[i8], n: usize, k: usize) -> PackedMatrix {
        PackedMatrix::with_kernel(b, n, k, Kernel::detect())
    }

    /// Pack `b` for a given kernel (panics if this CPU cannot run it, or if
    /// `k > MAX_K`).
    pub fn with_kernel(b: &[i8], n: usize, k: usize, kernel: Kernel) -> PackedMatrix {
        assert_eq!(b.len(), n * k, "PackedMatrix: b must be n*k = {}*{}", n, k);
        assert!(k <= MAX_K, "PackedMatrix: k = {k} exceeds {MAX_K} (i32 accumulators could overflow)");
        assert!(kernel.is_available(), "kernel {} is not supported by this CPU", kernel.name());
        let row_sums = b.chunks_exact(k.max(1)).take(n).map(|r| r.iter().map(|&v| v as i32).sum()).collect();
        let row_sums = if k == 0 { vec![0; n] } else { row_sums };
        let (packed_i8, packed_i16) = match kernel {
            Kernel::Avx512Vnni => (pack_vnni(b, n, k), Vec::new()),
            Kernel::Avx2 => (Vec::new(), pack_avx2(b, n, k)),
            Kernel::Scalar => (Vec::new(), Vec::new()),
        };
        PackedMatrix { n, k, kernel, raw: b.to_vec(), packed_i8, packed_i16, row_sums }
    }

    /// Number of rows of `b` (outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The kernel the packing is for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `Σ_k b[o, k]` for each output `o`.
    pub fn row_sums(&self) -> &[i32] {
        &self.row_sums
    }

    /// The kernel a product runs on now (the packed one unless scalar is forced).
    fn effective_kernel(&self) -> Kernel {
        if FORCE_SCALAR.load(Ordering::Relaxed) { Kernel::Scalar } else { self.kernel }
    }
}

/// Bytes of packed activations the AVX2 kernel keeps hot per chunk of rows (in L2).
const ROW_CHUNK_BYTES: usize = 256 << 10;

/// Where the AVX2 product writes its `m × n` results: the raw i32 accumulators, or
/// f32 outputs dequantized in registers (no accumulator buffer to write and re-read).
#[derive(Clone, Copy)]
enum Sink<'a> {
    I32(*mut i32),
    F32(F32Out<'a>),
}

/// `y[r,o] = (sx[r]·sw[o])·(acc − zx[r]·Σ_k w[o,k]) + bias[o]`, then ReLU if asked, in
/// the same f32 operations, in the same order, as the layers' scalar epilogues.
#[derive(Clone, Copy)]
struct F32Out<'a> {
    y: *mut f32,
    /// Per row input scale and zero point (dynamic input); empty: scale 1, zero point 0.
    row_scale: &'a [f32],
    row_zp: &'a [i32],
    /// Per output (`sw`, or `sx·sw` for a static input), padded to whole 16-blocks.
    col_scale: &'a [f32],
    /// `Σ_k w[o,k]` padded to whole 16-blocks (read only with `row_zp`).
    col_sums: &'a [i32],
    /// Padded to whole 16-blocks; empty: no bias.
    bias: &'a [f32],
    relu: bool,
}

// SAFETY: a Sink is shared by the threads of one product, each writing only the columns
// of its own blocks (see `gemm_avx2_blocks`); the slices are read-only.
unsafe impl Send for Sink<'_> {}
unsafe impl Sync for Sink<'_> {}

/// `v` padded with zeros to whole 16-blocks.
fn pad_blocks<T: Copy + Default>(v: &[T]) -> Vec<T> {
    let mut p = v.to_vec();
    p.resize(blocks(v.len()) * NR, T::default());
    p
}

/// Number of 16-output blocks covering `n`.
fn blocks(n: usize) -> usize {
    n.div_ceil(NR)
}

/// VNNI layout: index `((blk·kw + g)·16 + lane)·4 + t` holds `b[16·blk + lane, 4g + t]`,
/// zero where out of range.
fn pack_vnni(b: &[i8], n: usize, k: usize) -> Vec<i8> {
    let kw = k.div_ceil(4);
    let mut p = vec![0i8; blocks(n) * kw * NR * 4];
    for o in 0..n {
        let (blk, lane) = (o / NR, o % NR);
        for (kk, &v) in b[o * k..(o + 1) * k].iter().enumerate() {
            p[((blk * kw + kk / 4) * NR + lane) * 4 + kk % 4] = v;
        }
    }
    p
}

/// AVX2 layout: index `((blk·kw + g)·16 + lane)·2 + t` holds `b[16·blk + lane, 2g + t]`
/// as i16, zero where out of range.
fn pack_avx2(b: &[i8], n: usize, k: usize) -> Vec<i16> {
    let kw = k.div_ceil(2);
    let mut p = vec![0i16; blocks(n) * kw * NR * 2];
    for o in 0..n {
        let (blk, lane) = (o / NR, o % NR);
        for (kk, &v) in b[o * k..(o + 1) * k].iter().enumerate() {
            p[((blk * kw + kk / 2) * NR + lane) * 2 + kk % 2] = v as i16;
        }
    }
    p
}

/// Pack `m` u8 rows of length `k` into words of `e` values each (`kw = ceil(k/e)` words
/// per row, zero-padded): e = 4 → 4 bytes per i32 (little endian), e = 2 → two u16
/// halves in the AVX2 kernel's panels ([`pack_panels`]), e = 1 → the value itself.
fn pack_rows(e: usize, x: &[u8], m: usize, k: usize, dst: &mut [i32]) {
    let kw = k.div_ceil(e);
    if k == 0 {
        return;
    }
    if e == 2 {
        return pack_panels(x, m, k, dst);
    }
    for (src, d) in x.chunks_exact(k).take(m).zip(dst.chunks_exact_mut(kw)) {
        match e {
            1 => d.iter_mut().zip(src).for_each(|(d, &s)| *d = s as i32),
            4 => {
                let mut ch = src.chunks_exact(4);
                for (d, c) in d.iter_mut().zip(&mut ch) {
                    *d = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                let rem = ch.remainder();
                if !rem.is_empty() {
                    let mut bytes = [0u8; 4];
                    bytes[..rem.len()].copy_from_slice(rem);
                    d[kw - 1] = i32::from_le_bytes(bytes);
                }
            }
            _ => unreachable!("unsupported word format"),
        }
    }
}

/// Rows per panel of the AVX2 activation layout (the kernel's tile height).
const PANEL: usize = 6;

/// The AVX2 layout of `m` u8 rows of length `k`: pairs of values as two u16 halves of
/// an i32 word (`kw = ceil(k/2)` words per row, the odd tail zero-padded), rows in panels
/// of [`PANEL`] (the last may be shorter) stored word-major, `panel_base + g·h + r`, so a
/// tile's rows are read as one stream.
fn pack_panels(x: &[u8], m: usize, k: usize, dst: &mut [i32]) {
    let kw = k.div_ceil(2);
    assert!(x.len() >= m * k && dst.len() >= m * kw);
    let mut q16 = vec![0u16; 2 * kw];
    for p0 in (0..m).step_by(PANEL) {
        let h = PANEL.min(m - p0);
        let panel = &mut dst[p0 * kw..(p0 + h) * kw];
        for r in 0..h {
            put_panel_row(panel, h, r, &x[(p0 + r) * k..(p0 + r + 1) * k], &mut q16);
        }
    }
}

/// Row `r` of a panel of `h` rows (see [`pack_panels`]) from its u8 values `q`, widened
/// to u16 in `q16` (`2·kw` values; the odd tail stays zero) so each word is one copy.
#[inline]
fn put_panel_row(panel: &mut [i32], h: usize, r: usize, q: &[u8], q16: &mut [u16]) {
    q16.iter_mut().zip(q).for_each(|(w, &v)| *w = v as u16);
    for (g, c) in q16.chunks_exact(2).enumerate() {
        panel[g * h + r] = (c[0] as u32 | (c[1] as u32) << 16) as i32;
    }
}

/// `x` quantized to u8 in `q` on its own range (a dynamic row); its parameters.
fn quantize_row_dynamic(x: &[f32], q: &mut [u8]) -> QParams {
    let (lo, hi) = row_range(x);
    let qp = QParams::from_range(lo, hi);
    quantize_u8(x, qp, q);
    qp
}

/// Dynamic quantization of `x` (`rows × k` f32), each row on its own range, straight
/// into the AVX2 panel layout `dst` (`rows · ceil(k/2)` words, see [`pack_panels`]),
/// each row's scale and zero point into `row_scale` and `row_zp`; whole panels shared
/// among up to `threads` threads when the rows are many enough to pay for it.
fn quantize_rows_to_panels(x: &[f32], rows: usize, k: usize, dst: &mut [i32], row_scale: &mut [f32], row_zp: &mut [i32], threads: usize) {
    use rayon::prelude::*;
    let kw = k.div_ceil(2);
    assert!(x.len() >= rows * k && dst.len() >= rows * kw && row_scale.len() >= rows && row_zp.len() >= rows);
    if rows == 0 || k == 0 {
        return;
    }
    // Part `first` of the rows: they start a panel, and so does every PANEL-th after.
    let part = |first: usize, dst: &mut [i32], scale: &mut [f32], zp: &mut [i32]| {
        let mut q = vec![0u8; k];
        let mut q16 = vec![0u16; 2 * kw];
        let n = scale.len();
        for p0 in (0..n).step_by(PANEL) {
            let h = PANEL.min(n - p0);
            let panel = &mut dst[p0 * kw..(p0 + h) * kw];
            for r in 0..h {
                let qp = quantize_row_dynamic(&x[(first + p0 + r) * k..(first + p0 + r + 1) * k], &mut q);
                (scale[p0 + r], zp[p0 + r]) = (qp.scale, qp.zero_point);
                put_panel_row(panel, h, r, &q, &mut q16);
            }
        }
    };
    let (dst, row_scale, row_zp) = (&mut dst[..rows * kw], &mut row_scale[..rows], &mut row_zp[..rows]);
    let panels = rows.div_ceil(PANEL);
    let parts = if threads > 1 && rows * k >= 2 * super::exec::PAR_MIN_VALUES { threads.min(panels) } else { 1 };
    if parts == 1 {
        return part(0, dst, row_scale, row_zp);
    }
    let per = panels.div_ceil(parts) * PANEL;
    dst.par_chunks_mut(per * kw)
        .zip(row_scale.par_chunks_mut(per))
        .zip(row_zp.par_chunks_mut(per))
        .enumerate()
        .for_each(|(t, ((d, s), z))| part(t * per, d, s, z));
}

/// Where word `g` of row `r` lies among `m` rows of `kw` words packed for words of `e`
/// values: row-major, except the AVX2 layout's panels (see [`pack_panels`]).
#[inline]
fn word_index(e: usize, m: usize, kw: usize, r: usize, g: usize) -> usize {
    if e == 2 {
        let p0 = r / PANEL * PANEL;
        p0 * kw + g * PANEL.min(m - p0) + (r - p0)
    } else {
        r * kw + g
    }
}

/// Write activation `kk` of row `r` into packed activations `a` of `m` rows (see
/// [`word_index`]; `a` must start zeroed).
#[inline]
fn put_packed(e: usize, a: &mut [i32], m: usize, kw: usize, r: usize, kk: usize, v: u8) {
    let bits = 32 / e;
    a[word_index(e, m, kw, r, kk / e)] |= ((v as u32) << ((kk % e) * bits)) as i32;
}

/// The core product on packed activations: `c[r, o] = init[o] + Σ_k a[r,k]·b[o,k]`
/// (wrapping i32), `a` packed by [`pack_rows`] for `kernel`, `init` of length
/// `blocks(n)·16`, `c` of `m × n`.
fn gemm_packed(kernel: Kernel, a: &[i32], m: usize, b: &PackedMatrix, init: &[i32], c: &mut [i32]) {
    let (n, k) = (b.n, b.k);
    let kw = k.div_ceil(kernel.elems_per_word());
    assert!(a.len() >= m * kw && init.len() >= blocks(n) * NR && c.len() >= m * n);
    match kernel {
        Kernel::Scalar => {
            for r in 0..m {
                let x = &a[r * k..(r + 1) * k];
                for o in 0..n {
                    let w = &b.raw[o * k..(o + 1) * k];
                    let dot = x.iter().zip(w).fold(0i32, |s, (&x, &w)| s.wrapping_add(x * w as i32));
                    c[r * n + o] = init[o].wrapping_add(dot);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert_eq!(b.kernel, Kernel::Avx2);
            // SAFETY: a PackedMatrix with kernel Avx2 is only built after
            // `Kernel::Avx2.is_available()` confirmed AVX2 on this CPU.
            unsafe { x86::gemm_avx2(a, m, kw, &b.packed_i16, n, init, c) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => {
            assert_eq!(b.kernel, Kernel::Avx512Vnni);
            // SAFETY: as above, the constructor checked avx512f, avx512bw, avx512vnni.
            unsafe { x86::gemm_vnni(a, m, kw, &b.packed_i8, n, init, c) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("SIMD kernels exist only on x86_64"),
    }
}

/// [`gemm_packed`] with the output blocks (AVX2) or rows (scalar) shared among up to
/// `threads` threads of the rayon pool when the product is large enough; every output
/// is the same exact integer sum whichever thread computes it.
fn gemm_packed_threads(kernel: Kernel, a: &[i32], m: usize, b: &PackedMatrix, init: &[i32], c: &mut [i32], threads: usize) {
    use rayon::prelude::*;
    let (n, k) = (b.n, b.k);
    if threads <= 1 || m * n * k < super::kernels::PARALLEL_MIN_MACS || m == 0 {
        return gemm_packed(kernel, a, m, b, init, c);
    }
    let kw = k.div_ceil(kernel.elems_per_word());
    assert!(a.len() >= m * kw && init.len() >= blocks(n) * NR && c.len() >= m * n);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // c holds m·n values (asserted above).
        Kernel::Avx2 => gemm_avx2_threads(a, m, b, init, Sink::I32(c.as_mut_ptr()), threads),
        _ => {
            let rows = m.div_ceil(threads);
            let words = if kernel == Kernel::Scalar { k } else { kw };
            c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(|(t, ct)| {
                let r0 = t * rows;
                let mr = ct.len() / n.max(1);
                gemm_packed(kernel, &a[r0 * words..(r0 + mr) * words], mr, b, init, ct);
            });
        }
    }
}

/// The AVX2 product on packed activations `a` into `sink`, the 16-output blocks shared
/// among up to `threads` threads of the rayon pool when the product is large enough.
#[cfg(target_arch = "x86_64")]
fn gemm_avx2_threads(a: &[i32], m: usize, b: &PackedMatrix, init: &[i32], sink: Sink, threads: usize) {
    use rayon::prelude::*;
    let (n, k) = (b.n, b.k);
    assert!(b.kernel == Kernel::Avx2 && init.len() >= blocks(n) * NR);
    let kw = k.div_ceil(2);
    let nb = blocks(n);
    let parts = if threads <= 1 || m * n * k < super::kernels::PARALLEL_MIN_MACS { 1 } else { threads };
    let per = nb.div_ceil(parts).max(1);
    let run = |t: usize| {
        // SAFETY: AVX2 was checked when `b` was packed; the caller's sink holds m·n
        // values, and part t alone writes the columns of blocks t·per..(t+1)·per.
        unsafe { x86::gemm_avx2_blocks(a, m, kw, &b.packed_i16, n, init, sink, t * per..((t + 1) * per).min(nb)) }
    };
    if parts == 1 {
        run(0);
    } else {
        (0..nb.div_ceil(per)).into_par_iter().for_each(run);
    }
}

/// `x` (`rows × k` u8) times `b` straight into f32 outputs (`out.y`, `rows × n`, at
/// least `y_len` long), the activations packed into `scratch`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn product_f32(b: &PackedMatrix, x: &[u8], rows: usize, scratch: &mut Vec<i32>, init: &[i32], out: F32Out, y_len: usize, threads: usize) {
    let kw = b.k.div_ceil(2);
    assert!(x.len() == rows * b.k && y_len >= rows * b.n, "product_f32: x must be rows×k, y rows×n");
    if scratch.len() < rows * kw {
        scratch.resize(rows * kw, 0);
    }
    pack_rows(2, x, rows, b.k, &mut scratch[..rows * kw]);
    gemm_avx2_threads(&scratch[..rows * kw], rows, b, init, Sink::F32(out), threads);
}

/// Whether products on `b` may run [`product_f32`] now.
fn fused_f32(b: &PackedMatrix) -> bool {
    b.effective_kernel() == Kernel::Avx2
}

/// Size the scratch for `m` rows of `b` and split it into (packed a, c).
fn split_scratch<'s>(scratch: &'s mut Vec<i32>, kernel: Kernel, m: usize, b: &PackedMatrix) -> (&'s mut [i32], &'s mut [i32]) {
    let kw = b.k.div_ceil(kernel.elems_per_word());
    let need = m * kw + m * b.n;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let (a, rest) = scratch.split_at_mut(m * kw);
    (a, &mut rest[..m * b.n])
}

/// `c[m×n] = a[m×k] · bᵀ` on the current kernel, exact (`a` u8 row-major, `b` packed).
/// `scratch` is grown as needed and may be reused across calls.
pub fn matmul_u8_i8(a: &[u8], m: usize, b: &PackedMatrix, c: &mut [i32], scratch: &mut Vec<i32>) {
    assert_eq!(a.len(), m * b.k, "matmul_u8_i8: a must be m*k");
    assert_eq!(c.len(), m * b.n, "matmul_u8_i8: c must be m*n");
    let kernel = b.effective_kernel();
    let init = vec![0i32; blocks(b.n) * NR];
    let kw = b.k.div_ceil(kernel.elems_per_word());
    if scratch.len() < m * kw {
        scratch.resize(m * kw, 0);
    }
    let ap = &mut scratch[..m * kw];
    pack_rows(kernel.elems_per_word(), a, m, b.k, ap);
    gemm_packed(kernel, ap, m, b, &init, c);
}

/// The raw product, plainly: `c[m×n] = a[m×k] · bᵀ` with `a` u8 row-major and `b`
/// `[n×k]` i8 row-major, exact i32 (the reference every kernel is tested against).
pub fn matmul_u8_i8_reference(a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
    assert!(a.len() == m * k && b.len() == n * k && c.len() == m * n, "matmul_u8_i8_reference: bad sizes");
    for r in 0..m {
        for o in 0..n {
            let mut s = 0i32;
            for kk in 0..k {
                s = s.wrapping_add(a[r * k + kk] as i32 * b[o * k + kk] as i32);
            }
            c[r * n + o] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD kernels. Each is a `#[target_feature]` function, so calling one is
    //! `unsafe` for callers that have not checked the feature; inside, the only
    //! unsafe operations are unaligned loads/stores whose bounds are asserted first.

    use super::NR;
    use std::arch::x86_64::*;

    /// `y[i] = clamp(zp + round_half_away(acc[i]·m / 2^shift), lo, 255)` for whole
    /// groups of 8, exactly as `Requant::apply_u8`; returns how many were done.
    #[target_feature(enable = "avx2")]
    pub(super) fn requant_row_avx2(m: i64, shift: u32, zp: i32, lo: i32, acc: &[i32], y: &mut [u8]) -> usize {
        let n = acc.len().min(y.len()) / 8 * 8;
        let mv = _mm256_set1_epi64x(m);
        let half = _mm256_set1_epi64x(1i64 << (shift - 1));
        let cnt = _mm_cvtsi32_si128(shift as i32);
        let zero = _mm256_setzero_si256();
        let (zpv, lov, hiv) = (_mm256_set1_epi64x(zp as i64), _mm256_set1_epi64x(lo as i64), _mm256_set1_epi64x(255));
        // Rounded, offset and clamped, for i64 products p: ((p + half − (p < 0)) >> shift)
        // as an arithmetic shift (x >> s == !((!x) >>> s) for negative x).
        let fix = |p: __m256i| {
            let t = _mm256_add_epi64(_mm256_add_epi64(p, half), _mm256_cmpgt_epi64(zero, p));
            let sign = _mm256_cmpgt_epi64(zero, t);
            let r = _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(t, sign), cnt), sign);
            let v = _mm256_add_epi64(r, zpv);
            let v = _mm256_blendv_epi8(v, lov, _mm256_cmpgt_epi64(lov, v));
            _mm256_blendv_epi8(v, hiv, _mm256_cmpgt_epi64(v, hiv))
        };
        // Byte 0 of each i32 to the low dword of each 128-bit half, then both together.
        let bytes = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let gather = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
        if shift >= 32 {
            // The usual case (multipliers below 1/2): floor(t / 2^shift) is the high
            // dword of t (floor(t / 2^32), fits an i32) shifted right by shift − 32, and
            // |that| < 2^30·3/2, so the offset and clamp run on i32 lanes.
            let cnt32 = _mm_cvtsi32_si128(shift as i32 - 32);
            let (zp32, lo32, hi32) = (_mm256_set1_epi32(zp), _mm256_set1_epi32(lo), _mm256_set1_epi32(255));
            let round = |p: __m256i| _mm256_add_epi64(_mm256_add_epi64(p, half), _mm256_cmpgt_epi64(zero, p));
            for i in (0..n).step_by(8) {
                // SAFETY: i + 8 <= n <= acc.len(), y.len().
                unsafe {
                    let a = _mm256_loadu_si256(acc.as_ptr().add(i) as *const __m256i);
                    let te = round(_mm256_mul_epi32(a, mv));
                    let to = round(_mm256_mul_epi32(_mm256_srli_epi64::<32>(a), mv));
                    let high = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(te), to);
                    let v = _mm256_add_epi32(_mm256_sra_epi32(high, cnt32), zp32);
                    let v = _mm256_min_epi32(_mm256_max_epi32(v, lo32), hi32);
                    let packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, bytes), gather);
                    _mm_storel_epi64(y.as_mut_ptr().add(i) as *mut __m128i, _mm256_castsi256_si128(packed));
                }
            }
            return n;
        }
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= acc.len(), y.len().
            unsafe {
                let a = _mm256_loadu_si256(acc.as_ptr().add(i) as *const __m256i);
                let even = fix(_mm256_mul_epi32(a, mv));
                let odd = fix(_mm256_mul_epi32(_mm256_srli_epi64::<32>(a), mv));
                let v = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
                let packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, bytes), gather);
                _mm_storel_epi64(y.as_mut_ptr().add(i) as *mut __m128i, _mm256_castsi256_si128(packed));
            }
        }
        n
    }

    /// Rows of accumulators `c` (`rows × n`) to u8 with a multiplier and shift per
    /// output lane (`mult`, and `sh_even`/`sh_odd` holding the shifts of the even/odd
    /// lanes of each group of 8), exactly as `Requant::apply_u8`; does the first
    /// `n / 8 · 8` outputs of every row and returns that count.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn requant_rows_avx2(c: &[i32], n: usize, mult: &[i32], sh_even: &[i64], sh_odd: &[i64], zp: i32, lo: i32, y: &mut [u8]) -> usize {
        let n8 = n / 8 * 8;
        let rows = if n == 0 { 0 } else { c.len() / n };
        assert!(y.len() >= rows * n && mult.len() >= n8 && sh_even.len() >= n8 / 2 && sh_odd.len() >= n8 / 2);
        let zero = _mm256_setzero_si256();
        let one = _mm256_set1_epi64x(1);
        let (zpv, lov, hiv) = (_mm256_set1_epi64x(zp as i64), _mm256_set1_epi64x(lo as i64), _mm256_set1_epi64x(255));
        let bytes = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let gather = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
        for g in (0..n8).step_by(8) {
            // SAFETY: g + 8 <= n8 <= mult.len(); g/2 + 4 <= sh_*.len().
            let (mv, ce, co) = unsafe {
                (
                    _mm256_loadu_si256(mult.as_ptr().add(g) as *const __m256i),
                    _mm256_loadu_si256(sh_even.as_ptr().add(g / 2) as *const __m256i),
                    _mm256_loadu_si256(sh_odd.as_ptr().add(g / 2) as *const __m256i),
                )
            };
            let mo = _mm256_srli_epi64::<32>(mv);
            let (he, ho) = (_mm256_sllv_epi64(one, _mm256_sub_epi64(ce, one)), _mm256_sllv_epi64(one, _mm256_sub_epi64(co, one)));
            let fix = |p: __m256i, half: __m256i, cnt: __m256i| {
                let t = _mm256_add_epi64(_mm256_add_epi64(p, half), _mm256_cmpgt_epi64(zero, p));
                let sign = _mm256_cmpgt_epi64(zero, t);
                let r = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(t, sign), cnt), sign);
                let v = _mm256_add_epi64(r, zpv);
                let v = _mm256_blendv_epi8(v, lov, _mm256_cmpgt_epi64(lov, v));
                _mm256_blendv_epi8(v, hiv, _mm256_cmpgt_epi64(v, hiv))
            };
            for r in 0..rows {
                // SAFETY: r·n + g + 8 <= rows·n <= c.len(), y.len().
                unsafe {
                    let a = _mm256_loadu_si256(c.as_ptr().add(r * n + g) as *const __m256i);
                    let even = fix(_mm256_mul_epi32(a, mv), he, ce);
                    let odd = fix(_mm256_mul_epi32(_mm256_srli_epi64::<32>(a), mo), ho, co);
                    let v = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
                    let packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, bytes), gather);
                    _mm_storel_epi64(y.as_mut_ptr().add(r * n + g) as *mut __m128i, _mm256_castsi256_si128(packed));
                }
            }
        }
        n8
    }

    /// One sample of the direct convolution: `xp` the padded u16 planes, `acc` the
    /// `[oc, oh·ow]` accumulators (bias and zero-point terms included).
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn direct_conv_sample(d: &super::DirectI8, xp: &[u16], acc: &mut [i32], oc: usize, oh: usize, ow: usize) {
        let (q, bw, steps) = (oh * ow, d.nv * 8, d.soff.len());
        assert!(acc.len() >= oc * q && d.w.len() >= d.blocks * steps * bw * 2 && d.init.len() >= d.blocks * bw);
        // The farthest u16 a tile reads: the last step's pair at the last position.
        let last = d.soff.iter().max().copied().unwrap_or(0) + (oh - 1) * d.wp + ow - 1 + 1;
        assert!(xp.len() > last, "direct conv: padded input too short");
        for blk in 0..d.blocks {
            let (w, init) = (d.w[blk * steps * bw * 2..].as_ptr(), d.init[blk * bw..].as_ptr());
            let lanes = bw.min(oc - blk * bw);
            for oy in 0..oh {
                for &(ox0, r) in &d.row_tiles {
                    // SAFETY: reads stay below `last` (asserted); the tile writes
                    // acc[(blk·bw + lane)·q + oy·ow + ox0 + ..r] for lane < lanes, inside
                    // acc as ox0 + r <= ow.
                    unsafe {
                        let x = xp.as_ptr().add(oy * d.wp + ox0);
                        let out = acc.as_mut_ptr().add(blk * bw * q + oy * ow + ox0);
                        match (d.nv, r) {
                            (1, 1) => i8_tile::<1, 1>(x, &d.soff, w, init, out, q, lanes),
                            (1, 2) => i8_tile::<1, 2>(x, &d.soff, w, init, out, q, lanes),
                            (1, 3) => i8_tile::<1, 3>(x, &d.soff, w, init, out, q, lanes),
                            (1, 4) => i8_tile::<1, 4>(x, &d.soff, w, init, out, q, lanes),
                            (1, 5) => i8_tile::<1, 5>(x, &d.soff, w, init, out, q, lanes),
                            (1, 6) => i8_tile::<1, 6>(x, &d.soff, w, init, out, q, lanes),
                            (1, 7) => i8_tile::<1, 7>(x, &d.soff, w, init, out, q, lanes),
                            (1, 8) => i8_tile::<1, 8>(x, &d.soff, w, init, out, q, lanes),
                            (2, 1) => i8_tile::<2, 1>(x, &d.soff, w, init, out, q, lanes),
                            (2, 2) => i8_tile::<2, 2>(x, &d.soff, w, init, out, q, lanes),
                            (2, 3) => i8_tile::<2, 3>(x, &d.soff, w, init, out, q, lanes),
                            (2, 4) => i8_tile::<2, 4>(x, &d.soff, w, init, out, q, lanes),
                            (2, 5) => i8_tile::<2, 5>(x, &d.soff, w, init, out, q, lanes),
                            (2, 6) => i8_tile::<2, 6>(x, &d.soff, w, init, out, q, lanes),
                            _ => unreachable!("tile {}x{r}", d.nv),
                        }
                    }
                }
            }
        }
    }

    /// `R` positions × `NV·8` channels: `init + Σ_step madd(x pair, w pair)`, stored
    /// transposed as `out[lane·q + r]` for `lane < lanes`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn i8_tile<const NV: usize, const R: usize>(x: *const u16, soff: &[usize], w: *const i16, init: *const i32, out: *mut i32, q: usize, lanes: usize) {
        // SAFETY: the caller guarantees the pairs x[soff[st] + r .. +2] (r < R), the
        // weights w[(st·NV + v)·16 .. +16], init[..NV·8] are readable and out[lane·q + ..R]
        // writable for lane < lanes.
        unsafe {
            let mut acc = [[_mm256_setzero_si256(); NV]; R];
            for a in acc.iter_mut() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_si256(init.add(v * 8) as *const __m256i);
                }
            }
            for (st, &off) in soff.iter().enumerate() {
                let mut wv = [_mm256_setzero_si256(); NV];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm256_loadu_si256(w.add((st * NV + v) * 16) as *const __m256i);
                }
                let xr = x.add(off);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_epi32((xr.add(r) as *const i32).read_unaligned());
                    for (a, w) in a.iter_mut().zip(&wv) {
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, *w));
                    }
                }
            }
            for v in 0..NV {
                let mut rows = [_mm256_setzero_ps(); 8];
                for (row, a) in rows.iter_mut().zip(&acc) {
                    *row = _mm256_castsi256_ps(a[v]);
                }
                let t = crate::runtime::kernels::direct::transpose8(rows);
                for (lane, tv) in t.iter().enumerate().take(lanes.saturating_sub(v * 8)) {
                    let p = out.add((v * 8 + lane) * q);
                    let tv = _mm256_castps_si256(*tv);
                    if R == 8 {
                        _mm256_storeu_si256(p as *mut __m256i, tv);
                    } else {
                        let mut tmp = [0i32; 8];
                        _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, tv);
                        for (i, &val) in tmp.iter().enumerate().take(R) {
                            *p.add(i) = val;
                        }
                    }
                }
            }
        }
    }

    /// Write a 16-wide tile row into `c` (only the valid columns).
    #[inline(always)]
    fn store_row(c: &mut [i32], n: usize, r: usize, col0: usize, cols: usize, v: &[i32; NR]) {
        c[r * n + col0..r * n + col0 + cols].copy_from_slice(&v[..cols]);
    }

    /// AVX2 driver: for each 16-output block, rows in tiles of 6 (then 4, then 1–3).
    #[target_feature(enable = "avx2")]
    pub(super) fn gemm_avx2(a: &[i32], m: usize, kw: usize, w: &[i16], n: usize, init: &[i32], c: &mut [i32]) {
        assert!(c.len() >= m * n);
        // SAFETY: c holds m·n elements, exclusively borrowed.
        unsafe { gemm_avx2_blocks(a, m, kw, w, n, init, super::Sink::I32(c.as_mut_ptr()), 0..n.div_ceil(NR)) }
    }

    /// [`gemm_avx2`] on the 16-output blocks `blks` only, writing through `c`.
    ///
    /// # Safety
    /// AVX2 must be available; `c` must be valid for `m·n` i32 and columns
    /// `16·blks.start..16·blks.end` of it written by no one else during the call.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm_avx2_blocks(a: &[i32], m: usize, kw: usize, w: &[i16], n: usize, init: &[i32], sink: super::Sink, blks: std::ops::Range<usize>) {
        let bw = kw * NR * 2; // i16 per block
        assert!(w.len() >= n.div_ceil(NR) * bw && a.len() >= m * kw && blks.end <= n.div_ceil(NR));
        if let super::Sink::F32(o) = &sink {
            let padded = n.div_ceil(NR) * NR;
            assert!(o.col_scale.len() >= padded && (o.bias.is_empty() || o.bias.len() >= padded));
            assert!((o.row_scale.is_empty() || o.row_scale.len() >= m) && (o.row_zp.is_empty() || (o.row_zp.len() >= m && o.col_sums.len() >= padded)));
        }
        // SAFETY (every store below): row r < m, columns col0..col0+cols < n lie in
        // this call's blocks, so the caller's contract covers them; the per-column
        // vectors hold whole blocks (asserted above).
        let put = |r: usize, col0: usize, cols: usize, v: &[i32; NR]| unsafe { store_sink_row(&sink, n, r, col0, cols, v) };
        // Rows in chunks whose packed activations stay in L2 while every block's weights
        // stream past them once (a whole batch of rows would be re-read from memory per block).
        let chunk = (super::ROW_CHUNK_BYTES / (kw * 4).max(1)).clamp(6, m.max(6)) / 6 * 6;
        let mut r0 = 0;
        while r0 < m {
            let r1 = (r0 + chunk).min(m);
            for blk in blks.clone() {
                let col0 = blk * NR;
                let cols = NR.min(n - col0);
                let ini: &[i32; NR] = init[col0..col0 + NR].try_into().unwrap();
                macro_rules! tile {
                    ($rows:literal, $r:expr) => {{
                        let t = tile_avx2::<$rows>(&a[$r * kw..], kw, &w[blk * bw..(blk + 1) * bw], ini);
                        (0..$rows).for_each(|i| put($r + i, col0, cols, &t[i]));
                    }};
                }
                // Whole panels of 6 rows, then the last, shorter panel.
                let mut r = r0;
                while r + 6 <= r1 {
                    tile!(6, r);
                    r += 6;
                }
                match r1 - r {
                    5 => tile!(5, r),
                    4 => tile!(4, r),
                    3 => tile!(3, r),
                    2 => tile!(2, r),
                    1 => tile!(1, r),
                    _ => {}
                }
            }
            r0 = r1;
        }
    }

    /// Row `r`'s 16 accumulators of the block at `col0` (`cols` of them real) into `sink`.
    ///
    /// # Safety
    /// AVX2 must be available; `sink` must be writable at `r·n + col0 .. + cols` and its
    /// per-column vectors hold `col0 + 16` values, its per-row ones `r + 1`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_sink_row(sink: &super::Sink, n: usize, r: usize, col0: usize, cols: usize, v: &[i32; NR]) {
        match sink {
            super::Sink::I32(c) => unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), c.add(r * n + col0), cols) },
            super::Sink::F32(o) => unsafe {
                let ld = |p: *const i32| _mm256_loadu_si256(p as *const __m256i);
                let (mut a0, mut a1) = (ld(v.as_ptr()), ld(v.as_ptr().add(8)));
                if let Some(&zp) = o.row_zp.get(r) {
                    let z = _mm256_set1_epi32(zp);
                    a0 = _mm256_sub_epi32(a0, _mm256_mullo_epi32(z, ld(o.col_sums.as_ptr().add(col0))));
                    a1 = _mm256_sub_epi32(a1, _mm256_mullo_epi32(z, ld(o.col_sums.as_ptr().add(col0 + 8))));
                }
                let (mut s0, mut s1) = (_mm256_loadu_ps(o.col_scale.as_ptr().add(col0)), _mm256_loadu_ps(o.col_scale.as_ptr().add(col0 + 8)));
                if let Some(&sx) = o.row_scale.get(r) {
                    let sx = _mm256_set1_ps(sx);
                    (s0, s1) = (_mm256_mul_ps(sx, s0), _mm256_mul_ps(sx, s1));
                }
                let mut f0 = _mm256_mul_ps(s0, _mm256_cvtepi32_ps(a0));
                let mut f1 = _mm256_mul_ps(s1, _mm256_cvtepi32_ps(a1));
                if !o.bias.is_empty() {
                    f0 = _mm256_add_ps(f0, _mm256_loadu_ps(o.bias.as_ptr().add(col0)));
                    f1 = _mm256_add_ps(f1, _mm256_loadu_ps(o.bias.as_ptr().add(col0 + 8)));
                }
                if o.relu {
                    (f0, f1) = (_mm256_max_ps(f0, _mm256_setzero_ps()), _mm256_max_ps(f1, _mm256_setzero_ps()));
                }
                let dst = o.y.add(r * n + col0);
                if cols == NR {
                    _mm256_storeu_ps(dst, f0);
                    _mm256_storeu_ps(dst.add(8), f1);
                } else {
                    let mut t = [0f32; NR];
                    _mm256_storeu_ps(t.as_mut_ptr(), f0);
                    _mm256_storeu_ps(t.as_mut_ptr().add(8), f1);
                    std::ptr::copy_nonoverlapping(t.as_ptr(), dst, cols);
                }
            },
        }
    }

    /// `R` rows × 16 outputs over the whole reduction. `a` is one panel of `R` rows
    /// (word `g` of row `r` at `g·R + r`, two u16 values each), `w` one block (`kw` × 32 i16).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn tile_avx2<const R: usize>(a: &[i32], kw: usize, w: &[i16], init: &[i32; NR]) -> [[i32; NR]; R] {
        assert!(a.len() >= R * kw && w.len() >= kw * NR * 2);
        let (ap, wp) = (a.as_ptr(), w.as_ptr());
        // SAFETY: init has 16 i32 = two 256-bit vectors; unaligned loads.
        let i0 = unsafe { _mm256_loadu_si256(init.as_ptr() as *const __m256i) };
        let i1 = unsafe { _mm256_loadu_si256(init.as_ptr().add(8) as *const __m256i) };
        let mut acc = [[i0, i1]; R];
        for g in 0..kw {
            // SAFETY: g < kw, so w[32g .. 32g+32] and the panel's a[g·R + r] (r < R) are
            // in bounds by the assertion above.
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_si256(wp.add(g * 32) as *const __m256i),
                    _mm256_loadu_si256(wp.add(g * 32 + 16) as *const __m256i),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32(unsafe { *ap.add(g * R + r) });
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, w1));
            }
        }
        let mut out = [[0i32; NR]; R];
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: o is 16 i32 = two 256-bit vectors; unaligned stores.
            unsafe {
                _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, acc[0]);
                _mm256_storeu_si256(o.as_mut_ptr().add(8) as *mut __m256i, acc[1]);
            }
        }
        out
    }

    /// AVX-512 VNNI driver: for each 16-output block, rows in tiles of 8, remainders
    /// with split accumulators so a single row is not latency-bound.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn gemm_vnni(a: &[i32], m: usize, kw: usize, w: &[i8], n: usize, init: &[i32], c: &mut [i32]) {
        let bw = kw * NR * 4; // bytes per block
        assert!(w.len() >= n.div_ceil(NR) * bw && a.len() >= m * kw);
        for blk in 0..n.div_ceil(NR) {
            let wb = &w[blk * bw..(blk + 1) * bw];
            let col0 = blk * NR;
            let cols = NR.min(n - col0);
            let ini: &[i32; NR] = init[col0..col0 + NR].try_into().unwrap();
            let mut r = 0;
            while r + 8 <= m {
                let t = tile_vnni::<8, 1>(&a[r * kw..], kw, wb, ini);
                (0..8).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
                r += 8;
            }
            while r + 4 <= m {
                let t = tile_vnni::<4, 1>(&a[r * kw..], kw, wb, ini);
                (0..4).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
                r += 4;
            }
            match m - r {
                3 => {
                    let t = tile_vnni::<3, 2>(&a[r * kw..], kw, wb, ini);
                    (0..3).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
                }
                2 => {
                    let t = tile_vnni::<2, 2>(&a[r * kw..], kw, wb, ini);
                    (0..2).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
                }
                1 => {
                    let t = tile_vnni::<1, 4>(&a[r * kw..], kw, wb, ini);
                    store_row(c, n, r, col0, cols, &t[0]);
                }
                _ => {}
            }
        }
    }

    /// `R` rows × 16 outputs, each row with `S` accumulators taking every `S`-th
    /// group of 4 k (summed at the end; i32 addition is exact modulo 2^32, so the
    /// order does not matter). `a` holds rows of `kw` words of 4 u8, `w` one block
    /// (`kw` × 64 i8).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn tile_vnni<const R: usize, const S: usize>(a: &[i32], kw: usize, w: &[i8], init: &[i32; NR]) -> [[i32; NR]; R] {
        assert!(a.len() >= (R - 1) * kw + kw && w.len() >= kw * NR * 4);
        let (ap, wp) = (a.as_ptr(), w.as_ptr());
        let zero = _mm512_setzero_si512();
        let mut acc = [[zero; S]; R];
        let mut g = 0;
        while g + S <= kw {
            for s in 0..S {
                // SAFETY: g + s < kw: w[64(g+s) .. +64] and a[r·kw + g + s] are in bounds.
                let wv = unsafe { _mm512_loadu_si512(wp.add((g + s) * 64) as *const __m512i) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(unsafe { *ap.add(r * kw + g + s) });
                    acc[s] = _mm512_dpbusd_epi32(acc[s], x, wv);
                }
            }
            g += S;
        }
        while g < kw {
            // SAFETY: g < kw, as above.
            let wv = unsafe { _mm512_loadu_si512(wp.add(g * 64) as *const __m512i) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(unsafe { *ap.add(r * kw + g) });
                acc[0] = _mm512_dpbusd_epi32(acc[0], x, wv);
            }
            g += 1;
        }
        // SAFETY: init is 16 i32 = one 512-bit vector.
        let iv = unsafe { _mm512_loadu_si512(init.as_ptr() as *const __m512i) };
        let mut out = [[0i32; NR]; R];
        for (o, acc) in out.iter_mut().zip(acc) {
            let sum = acc.iter().fold(iv, |t, &v| _mm512_add_epi32(t, v));
            // SAFETY: o is 16 i32 = one 512-bit vector.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, sum) };
        }
        out
    }
}

// ---------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------

/// What a layer does with its accumulators, shared by Linear and Conv2d.
#[derive(Clone, Debug)]
struct Epilogue {
    /// `bias_i32[o] − zx·Σ_k w[o,k]`, padded to whole 16-blocks: the kernels start
    /// their accumulators here.
    init: Vec<i32>,
    /// Per output channel: `sx·sw[o]` (f32 output), padded to whole 16-blocks.
    acc_scale: Vec<f32>,
    /// Per output channel: requantization to the output scale (u8 output).
    requant: Vec<Requant>,
    /// The requantization multipliers and shifts in the vector kernel's layout
    /// (`Requant::multiplier` fits an i32; shifts of even and odd lanes per group of 8).
    rq_mult: Vec<i32>,
    rq_sh_even: Vec<i64>,
    rq_sh_odd: Vec<i64>,
    output: Option<QParams>,
    relu: bool,
}

impl Epilogue {
    fn new(b: &PackedMatrix, w_scales: &[f32], bias: Option<&[f32]>, input: QParams, output: Option<QParams>, relu: bool) -> Epilogue {
        let n = b.n;
        assert_eq!(w_scales.len(), n, "w_scales must have one scale per output");
        assert!(input.scale > 0.0 && input.scale.is_finite(), "input scale must be positive");
        assert!((0..=255).contains(&input.zero_point), "input zero point must be in 0..=255");
        assert!(w_scales.iter().all(|s| *s > 0.0 && s.is_finite()), "weight scales must be positive");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias must have one value per output");
        }
        let acc_scale: Vec<f32> = pad_blocks(&w_scales.iter().map(|&s| input.scale * s).collect::<Vec<f32>>());
        let mut init = vec![0i32; blocks(n) * NR];
        for o in 0..n {
            let bias_q = bias.map_or(0, |b| (b[o] as f64 / (input.scale as f64 * w_scales[o] as f64)).round() as i32);
            init[o] = bias_q.wrapping_sub(input.zero_point.wrapping_mul(b.row_sums[o]));
        }
        let requant = match output {
            Some(qp) => {
                assert!(qp.scale > 0.0 && qp.scale.is_finite(), "output scale must be positive");
                assert!((0..=255).contains(&qp.zero_point), "output zero point must be in 0..=255");
                w_scales.iter().map(|&s| Requant::from_real(input.scale as f64 * s as f64 / qp.scale as f64)).collect()
            }
            None => Vec::new(),
        };
        let rq_mult = requant.iter().map(|r| r.multiplier as i32).collect();
        let rq_sh_even = requant.iter().step_by(2).map(|r| r.shift as i64).collect();
        let rq_sh_odd = requant.iter().skip(1).step_by(2).map(|r| r.shift as i64).collect();
        Epilogue { init, acc_scale, requant, rq_mult, rq_sh_even, rq_sh_odd, output, relu }
    }

    /// Requantize rows of `n` accumulators (`c`, `rows × n`) into `y`.
    fn requant_rows(&self, c: &[i32], n: usize, y: &mut [u8]) {
        let (zp, lo) = self.output_qp();
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if Kernel::Avx2.is_available() && !FORCE_SCALAR.load(Ordering::Relaxed) {
            // SAFETY: AVX2 was just detected.
            done = unsafe { x86::requant_rows_avx2(c, n, &self.rq_mult, &self.rq_sh_even, &self.rq_sh_odd, zp, lo, y) };
        }
        if done < n {
            for (yr, cr) in y.chunks_exact_mut(n).zip(c.chunks_exact(n)) {
                for ((y, &acc), rq) in yr[done..].iter_mut().zip(&cr[done..]).zip(&self.requant[done..n]) {
                    *y = rq.apply_u8(acc, zp, lo);
                }
            }
        }
    }

    /// Requantize accumulator `acc` of channel `o`.
    #[inline]
    fn to_u8(&self, zp: i32, lo: i32, o: usize, acc: i32) -> u8 {
        self.requant[o].apply_u8(acc, zp, lo)
    }

    fn output_qp(&self) -> (i32, i32) {
        let qp = self.output.expect("forward_u8 needs output QParams (layer was built with output: None)");
        let lo = if self.relu { qp.zero_point } else { 0 };
        (qp.zero_point, lo)
    }

    #[inline]
    fn to_f32(&self, o: usize, acc: i32) -> f32 {
        let v = self.acc_scale[o] * acc as f32;
        if self.relu { v.max(0.0) } else { v }
    }
}

/// A Linear layer (`y = x·Wᵀ + b`) prepared for integer inference.
#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    weights: PackedMatrix,
    epi: Epilogue,
    /// The kept weights as sparse rows, when the product runs on them instead
    /// ([`with_sparse_product`](Self::with_sparse_product)); the same exact sums.
    sparse: Option<super::sparse::CsrI8>,
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
        self.sparse = Some(super::sparse::CsrI8::from_dense(&self.weights.raw, n, k));
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
fn row_range(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx2.is_available() {
        // SAFETY: AVX2 was just detected.
        return unsafe { row_range_avx2(x) };
    }
    row_range_lanes(x)
}

/// [`row_range`] in eight independent lanes, so the compiler vectorizes it (min and max
/// do not depend on the order).
fn row_range_lanes(x: &[f32]) -> (f32, f32) {
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

/// A 2-D convolution (square kernel, stride, zero padding) prepared for integer
/// inference. Samples are `[C, H, W]` u8, outputs `[OC, OH, OW]`. Padding uses the
/// input zero point, so it stands for real 0.0. Runs as im2col (`[OH·OW, C·k·k]`
/// rows) times the weights, written back transposed.
#[derive(Clone, Debug)]
pub struct QuantizedConv2d {
    weights: PackedMatrix,
    epi: Epilogue,
    in_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
    pad_value: u8,
    /// The direct kernel, where it applies (stride 1, AVX2).
    direct: Option<DirectI8>,
}

/// A stride-1 convolution on the AVX2 product (u8 widened to u16 pairs × i16 weight
/// pairs, `vpmaddwd`) computed straight from the input padded with its zero point:
/// no im2col rows. Tiles of up to 8 positions of an output row × 8 or 16 output
/// channels accumulate in registers; the i32 sums are exact, so they equal the
/// im2col product's bit for bit.
#[derive(Clone, Debug)]
struct DirectI8 {
    /// Vectors of 8 output channels per block (1 or 2).
    nv: usize,
    blocks: usize,
    /// For each pair step `(c, ki, j)`: the u16 offset of `(c, ki, 2j)` in the padded planes.
    soff: Vec<usize>,
    /// Per block, per step, per lane: the weight pair `(w[o, c, ki, 2j], w[o, c, ki, 2j+1])`,
    /// zero beyond the kernel or the channels.
    w: Vec<i16>,
    /// Accumulator start per block lane (the epilogue's `init`), zero-padded.
    init: Vec<i32>,
    /// How an output row is cut into tiles: (first column, positions).
    row_tiles: Vec<(usize, usize)>,
    hp: usize,
    wp: usize,
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
            x86::direct_conv_sample(d, xp, &mut acc[..n * p], n, self.out_h, self.out_w)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// u8 data with extremes: a third 0/255, the rest uniform.
    fn rand_u8(rng: &mut Rng, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| match rng.below(6) {
                0 => 0,
                1 => 255,
                _ => rng.below(256) as u8,
            })
            .collect()
    }

    /// i8 data with extremes -128/127 included.
    fn rand_i8(rng: &mut Rng, len: usize) -> Vec<i8> {
        (0..len)
            .map(|_| match rng.below(6) {
                0 => -128,
                1 => 127,
                _ => (rng.below(256) as i32 - 128) as i8,
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_reference_bit_for_bit() {
        let mut rng = Rng::new(42);
        let kernels = Kernel::available();
        assert!(kernels.contains(&Kernel::Scalar));
        let mut scratch = Vec::new();
        for &m in &[1, 3, 17, 256] {
            for &n in &[1, 10, 15, 64, 100] {
                for &k in &[1, 5, 25, 63, 784] {
                    let a = rand_u8(&mut rng, m * k);
                    let b = rand_i8(&mut rng, n * k);
                    let mut want = vec![0; m * n];
                    matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
                    for &kern in &kernels {
                        let p = PackedMatrix::with_kernel(&b, n, k, kern);
                        let mut got = vec![0; m * n];
                        matmul_u8_i8(&a, m, &p, &mut got, &mut scratch);
                        assert_eq!(got, want, "{} m={m} n={n} k={k}", kern.name());
                    }
                }
            }
        }
    }

    /// The product split among threads (by 16-output blocks, or rows on the scalar
    /// kernel) equals the plain reference, on odd shapes large enough to be split.
    #[test]
    fn threaded_product_matches_reference() {
        let mut rng = Rng::new(11);
        for &(m, n, k) in &[(37, 53, 131), (1, 290, 901), (5, 1000, 77)] {
            let a = rand_u8(&mut rng, m * k);
            let b = rand_i8(&mut rng, n * k);
            let mut want = vec![0i32; m * n];
            matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
            for kernel in Kernel::available() {
                let packed = PackedMatrix::with_kernel(&b, n, k, kernel);
                let kw = k.div_ceil(kernel.elems_per_word());
                let mut ap = vec![0i32; m * kw];
                pack_rows(kernel.elems_per_word(), &a, m, k, &mut ap);
                let init = vec![0i32; blocks(n) * NR];
                for threads in [1, 2, 3] {
                    let mut c = vec![7i32; m * n];
                    gemm_packed_threads(kernel, &ap, m, &packed, &init, &mut c, threads);
                    assert_eq!(c, want, "{} {m}×{n}×{k} on {threads} threads", kernel.name());
                }
            }
        }
    }

    /// Dynamic (per-row) quantization: close to the f32 product on an odd shape, the
    /// same bits on the scalar kernel and on 2 threads.
    #[test]
    fn dynamic_linear_matches_float_and_is_kernel_independent() {
        let mut rng = Rng::new(12);
        let (rows, n, k) = (7, 45, 203);
        let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(0.3)).collect();
        let (wq, ws) = crate::compress::quantize::quantize_per_channel(&w, n);
        let bias: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
        // Rows of different ranges, one all positive, one constant.
        let mut x: Vec<f32> = (0..rows * k).map(|i| rng.uniform(1.0) * (1 + i / k) as f32).collect();
        x[k..2 * k].iter_mut().for_each(|v| *v = v.abs() + 0.5);
        x[2 * k..3 * k].iter_mut().for_each(|v| *v = 0.25);
        let layer = DynamicLinear::new(&wq, &ws, n, k, Some(&bias));
        let mut y = vec![0f32; rows * n];
        let mut sc = DynamicScratch::default();
        layer.forward(&x, rows, &mut y, &mut sc, 1);
        for r in 0..rows {
            let scale = x[r * k..(r + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs()));
            for o in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum::<f32>() + bias[o];
                // Activation rounding (scale/255 per value) and weight rounding bound the error.
                let tol = 0.02 * scale * (k as f32).sqrt();
                assert!((y[r * n + o] - exact).abs() < tol, "row {r} out {o}: {} vs {exact}", y[r * n + o]);
            }
        }
        let mut y2 = vec![0f32; rows * n];
        layer.forward(&x, rows, &mut y2, &mut sc, 2);
        assert_eq!(y, y2);
        set_force_scalar(true);
        let scalar_layer = DynamicLinear::new(&wq, &ws, n, k, Some(&bias));
        let mut y3 = vec![0f32; rows * n];
        scalar_layer.forward(&x, rows, &mut y3, &mut sc, 1);
        set_force_scalar(false);
        assert_eq!(y, y3);
    }

    /// Quantizing straight into panels on 2 threads (uneven parts, a short last panel, an
    /// odd row length) gives the words, scales and zero points of quantizing each row and
    /// packing them afterwards.
    #[test]
    fn quantize_rows_to_panels_matches_quantize_then_pack() {
        let mut rng = Rng::new(5);
        for (rows, k) in [(173usize, 203usize), (7, 9), (1, 1)] {
            let x: Vec<f32> = (0..rows * k).map(|i| rng.uniform(2.0) + (i / k % 3) as f32).collect();
            let kw = k.div_ceil(2);
            let (mut q, mut want_scale, mut want_zp) = (vec![0u8; rows * k], vec![], vec![]);
            for (xr, qr) in x.chunks_exact(k).zip(q.chunks_exact_mut(k)) {
                let (lo, hi) = row_range_lanes(xr);
                let qp = QParams::from_range(lo, hi);
                quantize_u8_impl(xr, qp, qr);
                want_scale.push(qp.scale);
                want_zp.push(qp.zero_point);
            }
            let mut want = vec![0i32; rows * kw];
            pack_panels(&q, rows, k, &mut want);
            for threads in [1, 2] {
                let (mut got, mut scale, mut zp) = (vec![-1i32; rows * kw], vec![0f32; rows], vec![0i32; rows]);
                quantize_rows_to_panels(&x, rows, k, &mut got, &mut scale, &mut zp, threads);
                assert_eq!((&got, &scale, &zp), (&want, &want_scale, &want_zp), "rows {rows} k {k} threads {threads}");
            }
        }
    }

    #[test]
    fn row_range_is_the_plain_min_and_max() {
        let mut rng = Rng::new(31);
        for len in [0usize, 1, 7, 8, 9, 383, 384, 1536] {
            let x: Vec<f32> = (0..len).map(|_| rng.uniform(3.0)).collect();
            let plain = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert_eq!(row_range(&x), plain, "len {len}");
            assert_eq!(row_range_lanes(&x), plain, "len {len}");
        }
    }

    #[test]
    fn worst_case_sums_are_exact() {
        // All 255 × -128 and 255 × 127: the largest magnitudes, no saturation allowed.
        for &(k, wv) in &[(784usize, -128i8), (784, 127), (4099, -128)] {
            let (m, n) = (5, 17);
            let a = vec![255u8; m * k];
            let b = vec![wv; n * k];
            let mut want = vec![0; m * n];
            matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
            assert_eq!(want[0], 255 * wv as i32 * k as i32);
            for kern in Kernel::available() {
                let p = PackedMatrix::with_kernel(&b, n, k, kern);
                let mut got = vec![0; m * n];
                matmul_u8_i8(&a, m, &p, &mut got, &mut Vec::new());
                assert_eq!(got, want, "{}", kern.name());
            }
        }
    }

    /// The VNNI kernel cannot run on a CPU without AVX-512; check its packed layouts
    /// (weights and 4-byte activation words) with a scalar emulation of the kernel's
    /// loop instead, lane by lane as `vpdpbusd` computes it.
    #[test]
    fn vnni_layout_emulated() {
        let mut rng = Rng::new(3);
        for &(m, n, k) in &[(3, 10, 5), (17, 64, 63), (1, 100, 784), (2, 15, 1)] {
            let a = rand_u8(&mut rng, m * k);
            let b = rand_i8(&mut rng, n * k);
            let mut want = vec![0; m * n];
            matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
            let kw = k.div_ceil(4);
            let w = pack_vnni(&b, n, k);
            let mut ap = vec![0i32; m * kw];
            pack_rows(4, &a, m, k, &mut ap);
            for r in 0..m {
                for blk in 0..blocks(n) {
                    let mut acc = [0i32; NR];
                    for g in 0..kw {
                        let x = ap[r * kw + g].to_le_bytes();
                        for (lane, acc) in acc.iter_mut().enumerate() {
                            for t in 0..4 {
                                let wv = w[((blk * kw + g) * NR + lane) * 4 + t];
                                *acc += x[t] as i32 * wv as i32;
                            }
                        }
                    }
                    for lane in 0..NR.min(n - blk * NR) {
                        assert_eq!(acc[lane], want[r * n + blk * NR + lane]);
                    }
                }
            }
        }
    }

    #[test]
    fn force_scalar_switches_kernel_name() {
        // Only this test touches the global flag; the others pick kernels explicitly.
        let detected = Kernel::detect().name();
        set_force_scalar(true);
        assert_eq!(kernel_name(), "scalar");
        set_force_scalar(false);
        assert_eq!(kernel_name(), detected);
    }

    #[test]
    fn requant_matches_real_rounding() {
        let mut rng = Rng::new(9);
        for &m in &[1e-9, 0.000_123, 0.003_921_568_6, 0.25, 0.5, 0.999_999, 1.0, 1.5, 3.7, 100.0, 255.9, 5e8] {
            let rq = Requant::from_real(m);
            assert!((rq.to_real() - m).abs() <= m * 2f64.powi(-30), "{m} -> {}", rq.to_real());
            for i in 0..2000 {
                let acc = match i {
                    0 => i32::MAX,
                    1 => i32::MIN,
                    2 => 0,
                    _ => (rng.next_u64() as i32) >> rng.below(31),
                };
                // Exact rational rounding in i128: p / 2^shift, ties away from zero.
                let p = acc as i128 * rq.multiplier() as i128;
                let d = 1i128 << rq.shift();
                let (q, rem) = (p.div_euclid(d), p.rem_euclid(d));
                let up = 2 * rem > d || (2 * rem == d && p > 0);
                let want = (q + up as i128).clamp(i32::MIN as i128, i32::MAX as i128) as i32;
                assert_eq!(rq.apply(acc), want, "m={m} acc={acc}");
                // And against the requested multiplier: within one step.
                let approx = (acc as f64 * m).clamp(i32::MIN as f64, i32::MAX as f64);
                assert!((rq.apply(acc) as f64 - approx).abs() <= 1.0 + approx.abs() * 1e-9);
            }
        }
        // Ties go away from zero.
        let half = Requant::from_real(0.5);
        assert_eq!((half.apply(1), half.apply(-1), half.apply(3), half.apply(-3)), (1, -1, 2, -2));
        assert_eq!(Requant::from_real(0.0).apply(12345), 0);
    }

    #[test]
    fn quantize_roundtrip_and_rounding() {
        let qp = QParams { scale: 0.1, zero_point: 100 };
        let x = [0.0, 0.05, -0.05, 0.149, 1.0, -10.0, -11.0, 15.5, 16.0, 1e9, -1e9, f32::NAN];
        let mut q = [0u8; 12];
        quantize_u8(&x, qp, &mut q);
        for (i, (&v, &got)) in x.iter().zip(&q).enumerate() {
            let want = if v.is_nan() { 100 } else { ((v / qp.scale).round() as i64 + 100).clamp(0, 255) as u8 };
            assert_eq!(got, want, "x[{i}] = {v}");
        }
        let mut back = [0f32; 12];
        dequantize_u8(&q, qp, &mut back);
        assert_eq!(back[0], 0.0);
        assert!((back[4] - 1.0).abs() < 1e-6);
    }

    fn qp_of(v: &[f32]) -> QParams {
        let (lo, hi) = v.iter().fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
        QParams::from_range(lo, hi)
    }

    /// Random layer data: u8 input, symmetric i8 weights (-127..=127) with scales, bias.
    struct LayerData {
        x: Vec<u8>,
        xq: QParams,
        w: Vec<i8>,
        ws: Vec<f32>,
        bias: Vec<f32>,
    }

    fn layer_data(rng: &mut Rng, batch_len: usize, n: usize, k: usize) -> LayerData {
        let x = rand_u8(rng, batch_len);
        let xq = QParams { scale: 0.02, zero_point: 37 };
        let w = (0..n * k).map(|_| (rng.below(255) as i32 - 127) as i8).collect();
        let ws = (0..n).map(|_| 0.001 + 0.01 * rng.next_f32()).collect();
        let bias = (0..n).map(|_| rng.uniform(1.0)).collect();
        LayerData { x, xq, w, ws, bias }
    }

    /// Compare integer outputs with a float computation of the same quantized values.
    fn check_u8_and_f32(float_y: &[f32], oc_of: impl Fn(usize) -> usize, relu: bool, yq: QParams, got_u8: &[u8], got_f32: &[f32], d: &LayerData) {
        let yf: Vec<f32> = float_y.iter().map(|&v| if relu { v.max(0.0) } else { v }).collect();
        let mut want = vec![0u8; yf.len()];
        quantize_u8(&yf, yq, &mut want);
        for (i, (&g, &w)) in got_u8.iter().zip(&want).enumerate() {
            assert!((g as i32 - w as i32).abs() <= 1, "u8 out {i}: got {g}, float says {w}");
        }
        for (i, (&g, &w)) in got_f32.iter().zip(&yf).enumerate() {
            // Only the bias is rounded (half an accumulator step) plus f32 error.
            let tol = 0.5 * d.xq.scale * d.ws[oc_of(i)] + 1e-4 * (1.0 + w.abs());
            assert!((g - w).abs() <= tol, "f32 out {i}: got {g}, float says {w}");
        }
    }

    #[test]
    fn linear_agrees_with_float() {
        let mut rng = Rng::new(5);
        for &(batch, n, k, relu) in &[(1, 64, 784, true), (3, 10, 64, false), (17, 15, 5, true), (256, 100, 63, false)] {
            let d = layer_data(&mut rng, batch * k, n, k);
            let mut xf = vec![0f32; d.x.len()];
            dequantize_u8(&d.x, d.xq, &mut xf);
            let mut yf = vec![0f32; batch * n];
            for r in 0..batch {
                for o in 0..n {
                    let s: f64 = (0..k).map(|kk| xf[r * k + kk] as f64 * (d.w[o * k + kk] as f64 * d.ws[o] as f64)).sum();
                    yf[r * n + o] = (s + d.bias[o] as f64) as f32;
                }
            }
            let yq = qp_of(&yf);
            let layer = QuantizedLinear::new(&d.w, &d.ws, n, k, Some(&d.bias), d.xq, Some(yq), relu);
            let (mut yu, mut yo) = (vec![0u8; batch * n], vec![0f32; batch * n]);
            let mut scratch = Vec::new();
            layer.forward_u8(&d.x, batch, &mut yu, &mut scratch);
            layer.forward_f32(&d.x, batch, &mut yo, &mut scratch);
            check_u8_and_f32(&yf, |i| i % n, relu, yq, &yu, &yo, &d);
        }
    }

    #[test]
    fn conv_agrees_with_naive_float_conv() {
        let mut rng = Rng::new(6);
        // (batch, ic, oc, h, w, kernel, stride, padding, relu)
        let cases = [(2, 1, 8, 28, 28, 5, 1, 2, true), (1, 3, 10, 9, 7, 3, 2, 1, false), (3, 4, 17, 6, 6, 3, 1, 0, true), (1, 2, 1, 5, 5, 1, 1, 0, false)];
        for &(batch, ic, oc, h, w, kk, s, pad, relu) in &cases {
            let k = ic * kk * kk;
            let d = layer_data(&mut rng, batch * ic * h * w, oc, k);
            let (oh, ow) = ((h + 2 * pad - kk) / s + 1, (w + 2 * pad - kk) / s + 1);
            let mut xf = vec![0f32; d.x.len()];
            dequantize_u8(&d.x, d.xq, &mut xf);
            let mut yf = vec![0f32; batch * oc * oh * ow];
            for b in 0..batch {
                for o in 0..oc {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut sum = d.bias[o] as f64;
                            for c in 0..ic {
                                for ki in 0..kk {
                                    for kj in 0..kk {
                                        let (iy, ix) = ((oy * s + ki) as isize - pad as isize, (ox * s + kj) as isize - pad as isize);
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                            continue;
                                        }
                                        let xv = xf[((b * ic + c) * h + iy as usize) * w + ix as usize] as f64;
                                        let wv = d.w[((o * ic + c) * kk + ki) * kk + kj] as f64 * d.ws[o] as f64;
                                        sum += xv * wv;
                                    }
                                }
                            }
                            yf[((b * oc + o) * oh + oy) * ow + ox] = sum as f32;
                        }
                    }
                }
            }
            let yq = qp_of(&yf);
            let conv = QuantizedConv2d::new(&d.w, &d.ws, oc, ic, h, w, kk, s, pad, Some(&d.bias), d.xq, Some(yq), relu);
            assert_eq!(conv.output_shape(), [oc, oh, ow]);
            let (mut yu, mut yo) = (vec![0u8; yf.len()], vec![0f32; yf.len()]);
            let mut scratch = Vec::new();
            conv.forward_u8(&d.x, batch, &mut yu, &mut scratch);
            conv.forward_f32(&d.x, batch, &mut yo, &mut scratch);
            check_u8_and_f32(&yf, |i| (i / (oh * ow)) % oc, relu, yq, &yu, &yo, &d);
        }
    }

    /// The conv's SIMD path (activation words built by `put_packed`) against the
    /// scalar one for every available kernel: bit-identical u8 outputs.
    #[test]
    fn conv_kernels_bit_identical() {
        let mut rng = Rng::new(8);
        let (ic, oc, h, w, kk) = (3, 20, 11, 9, 3);
        let d = layer_data(&mut rng, ic * h * w, oc, ic * kk * kk);
        let yq = QParams { scale: 0.05, zero_point: 120 };
        let mut outs = Vec::new();
        for kern in Kernel::available() {
            let mut conv = QuantizedConv2d::new(&d.w, &d.ws, oc, ic, h, w, kk, 2, 1, Some(&d.bias), d.xq, Some(yq), false);
            conv.weights = PackedMatrix::with_kernel(&d.w, oc, ic * kk * kk, kern);
            let mut y = vec![0u8; oc * 6 * 5];
            conv.forward_u8(&d.x, 1, &mut y, &mut Vec::new());
            outs.push(y);
        }
        assert!(outs.windows(2).all(|p| p[0] == p[1]));
    }

    /// The direct stride-1 conv against the im2col path on the scalar kernel: the
    /// same accumulators, so bit-identical u8 and f32 outputs.
    #[test]
    fn direct_conv_bit_identical_to_scalar_im2col() {
        if !Kernel::Avx2.is_available() {
            return;
        }
        let mut rng = Rng::new(21);
        // (ic, oc, h, w, kernel, padding)
        let cases = [(1, 6, 28, 28, 5, 2), (6, 16, 14, 14, 5, 0), (3, 20, 11, 9, 3, 1), (2, 9, 5, 13, 4, 2), (1, 3, 3, 3, 3, 1), (4, 1, 7, 6, 2, 0), (2, 8, 9, 8, 1, 0)];
        for &(ic, oc, h, w, kk, pad) in &cases {
            let d = layer_data(&mut rng, 3 * ic * h * w, oc, ic * kk * kk);
            let yq = QParams { scale: 0.05, zero_point: 120 };
            for relu in [false, true] {
                let direct = QuantizedConv2d::new(&d.w, &d.ws, oc, ic, h, w, kk, 1, pad, Some(&d.bias), d.xq, Some(yq), relu);
                assert!(direct.direct.is_some());
                let mut scalar = direct.clone();
                scalar.weights = PackedMatrix::with_kernel(&d.w, oc, ic * kk * kk, Kernel::Scalar);
                let len = 3 * oc * direct.out_h * direct.out_w;
                let (mut a, mut b) = (vec![0u8; len], vec![1u8; len]);
                direct.forward_u8(&d.x, 3, &mut a, &mut Vec::new());
                scalar.forward_u8(&d.x, 3, &mut b, &mut Vec::new());
                assert_eq!(a, b, "u8 ic={ic} oc={oc} {h}x{w} k={kk} p={pad} relu={relu}");
                let (mut a, mut b) = (vec![0f32; len], vec![1f32; len]);
                direct.forward_f32(&d.x, 3, &mut a, &mut Vec::new());
                scalar.forward_f32(&d.x, 3, &mut b, &mut Vec::new());
                assert_eq!(a, b, "f32 ic={ic} oc={oc} {h}x{w} k={kk} p={pad} relu={relu}");
            }
        }
    }

    #[test]
    fn vector_requant_equals_scalar_requant() {
        let mut rng = Rng::new(22);
        for &m in &[1e-9, 0.000_123, 0.003_921_568_6, 0.25, 0.5, 0.999_999, 1.0, 3.7, 255.9, 5e8] {
            let rq = Requant::from_real(m);
            for (zp, lo) in [(0, 0), (120, 120), (255, 0), (7, 7)] {
                let acc: Vec<i32> = (0..203)
                    .map(|i| match i {
                        0 => i32::MAX,
                        1 => i32::MIN,
                        2 => 0,
                        _ => (rng.next_u64() as i32) >> rng.below(31),
                    })
                    .collect();
                let want: Vec<u8> = acc.iter().map(|&a| rq.apply_u8(a, zp, lo)).collect();
                let mut got = vec![0u8; acc.len()];
                requant_row(&rq, zp, lo, &acc, &mut got);
                assert_eq!(got, want, "m={m} zp={zp} lo={lo}");
            }
        }
    }

    /// The AVX2 quantization gives the same bytes as the scalar definition, including
    /// ties, NaN, infinities and values far outside the range.
    #[test]
    fn vector_quantize_equals_scalar_quantize() {
        let mut rng = Rng::new(23);
        for qp in [QParams { scale: 1.0 / 255.0, zero_point: 0 }, QParams { scale: 0.1, zero_point: 100 }, QParams { scale: 0.037, zero_point: 255 }, QParams { scale: 3.0, zero_point: 7 }] {
            let mut x: Vec<f32> = (0..1001).map(|_| rng.uniform(20.0 * qp.scale * 255.0)).collect();
            // Exact ties around the zero point and specials.
            for (i, t) in (-300..300).enumerate() {
                x[i] = (t as f32 + 0.5) * qp.scale;
            }
            x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, f32::MIN_POSITIVE]);
            let (mut got, mut want) = (vec![0u8; x.len()], vec![0u8; x.len()]);
            quantize_u8(&x, qp, &mut got);
            quantize_u8_impl(&x, qp, &mut want);
            assert_eq!(got, want, "{qp:?}");
        }
    }

    /// The vector rounding (`trunc(v + copysign(0.49999997, v))`) against the scalar
    /// definition: random scales and zero points, the floats around every half-integer
    /// quotient, random bit patterns (subnormals, huge values, NaN), odd lengths.
    #[test]
    fn vector_quantize_rounds_like_scalar() {
        let mut rng = Rng::new(25);
        let mut scales: Vec<f32> = (0..40).map(|_| 10f32.powf(rng.next_f32() * 8.0 - 6.0)).collect();
        scales.extend([1.0 / 255.0, 2.0 / 255.0, 1.0, 0.5, 0.99999994, 1.0000001, 1.9999999]);
        for scale in scales {
            let qp = QParams { scale, zero_point: rng.below(256) as i32 };
            let mut x = Vec::new();
            for t in -300..300 {
                let mut v = f32::from_bits(((t as f32 + 0.5) * scale).to_bits().wrapping_sub(3));
                for _ in 0..7 {
                    x.push(v);
                    v = f32::from_bits(v.to_bits().wrapping_add(1));
                }
            }
            x.extend((0..3000).map(|_| f32::from_bits(rng.next_u64() as u32)));
            x.extend((0..1001).map(|_| f32::from_bits(rng.next_u64() as u32 & 0x807f_ffff)));
            let (mut got, mut want) = (vec![0u8; x.len()], vec![0u8; x.len()]);
            quantize_u8(&x, qp, &mut got);
            quantize_u8_impl(&x, qp, &mut want);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "scale {scale:e} zp {} x {:e}", qp.zero_point, x[i]);
            }
        }
    }

    /// A Linear layer's u8 and f32 outputs equal the plain integer computation exactly
    /// (reference product + bias/zero-point start, then `Requant::apply_u8` / scale), for
    /// the dense and the sparse product, on odd shapes and batches 1 to 257.
    #[test]
    fn linear_outputs_equal_the_integer_reference() {
        let mut rng = Rng::new(24);
        for &(n, k) in &[(1, 1), (7, 5), (10, 64), (33, 63), (64, 785), (100, 31)] {
            for &batch in &[1usize, 2, 3, 5, 17, 64, 257] {
                for relu in [false, true] {
                    let mut d = layer_data(&mut rng, batch * k, n, k);
                    // Prune about half, as the sparse product expects.
                    d.w.iter_mut().for_each(|v| if rng.below(2) == 0 { *v = 0 });
                    let yq = QParams { scale: 0.03 + rng.next_f32(), zero_point: rng.below(256) as i32 };
                    let dense = QuantizedLinear::new(&d.w, &d.ws, n, k, Some(&d.bias), d.xq, Some(yq), relu);
                    let mut c = vec![0i32; batch * n];
                    matmul_u8_i8_reference(&d.x, &d.w, batch, n, k, &mut c);
                    let (zp, lo) = dense.epi.output_qp();
                    let want_u8: Vec<u8> = c.iter().enumerate().map(|(i, &v)| dense.epi.requant[i % n].apply_u8(v.wrapping_add(dense.epi.init[i % n]), zp, lo)).collect();
                    let want_f32: Vec<f32> = c.iter().enumerate().map(|(i, &v)| dense.epi.to_f32(i % n, v.wrapping_add(dense.epi.init[i % n]))).collect();
                    for layer in [dense.clone(), dense.clone().with_sparse_product()] {
                        let (mut yu, mut yf) = (vec![0u8; batch * n], vec![0f32; batch * n]);
                        layer.forward_u8(&d.x, batch, &mut yu, &mut Vec::new());
                        layer.forward_f32(&d.x, batch, &mut yf, &mut Vec::new());
                        let sparse = layer.sparse.is_some();
                        assert_eq!(yu, want_u8, "u8 n={n} k={k} batch={batch} relu={relu} sparse={sparse}");
                        assert_eq!(yf, want_f32, "f32 n={n} k={k} batch={batch} relu={relu} sparse={sparse}");
                    }
                }
            }
        }
    }

    /// Speed of the seed MLP (784→64 ReLU → 64→10), single thread and 2 threads.
    /// Run: `cargo test --release --lib int8::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_mlp() {
        use std::time::Instant;
        let mut rng = Rng::new(1);
        let xq = QParams { scale: 1.0 / 255.0, zero_point: 0 };
        let hq = QParams { scale: 0.05, zero_point: 0 };
        let w1 = rand_i8(&mut rng, 64 * 784);
        let w2 = rand_i8(&mut rng, 10 * 64);
        let l1 = QuantizedLinear::new(&w1, &[0.002; 64], 64, 784, Some(&[0.1; 64]), xq, Some(hq), true);
        let l2 = QuantizedLinear::new(&w2, &[0.01; 10], 10, 64, Some(&[0.0; 10]), hq, None, false);
        let run = |x: &[u8], batch: usize, h: &mut Vec<u8>, y: &mut Vec<f32>, s: &mut Vec<i32>| {
            l1.forward_u8(x, batch, h, s);
            l2.forward_f32(h, batch, y, s);
        };
        println!("kernel: {}", kernel_name());
        for &batch in &[1usize, 256] {
            let x = rand_u8(&mut rng, batch * 784);
            let (mut h, mut y, mut s) = (vec![0u8; batch * 64], vec![0f32; batch * 10], Vec::new());
            let iters = if batch == 1 { 200_000 } else { 2_000 };
            for _ in 0..iters / 10 {
                run(&x, batch, &mut h, &mut y, &mut s);
            }
            let t = Instant::now();
            for _ in 0..iters {
                run(&x, batch, &mut h, &mut y, &mut s);
            }
            let per = t.elapsed().as_secs_f64() / iters as f64;
            println!("batch {batch}: {:.3} µs per call, {:.2} M images/s (1 thread)", per * 1e6, batch as f64 / per / 1e6);
            // The first layer alone.
            let t = Instant::now();
            for _ in 0..iters {
                l1.forward_u8(&x, batch, &mut h, &mut s);
            }
            let per1 = t.elapsed().as_secs_f64() / iters as f64;
            println!("  layer 784→64 alone: {:.3} µs", per1 * 1e6);
        }
        // Two threads, each running batches of 256.
        let batch = 256;
        let x = rand_u8(&mut rng, batch * 784);
        let iters = 2_000;
        let t = Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    let (mut h, mut y, mut s) = (vec![0u8; batch * 64], vec![0f32; batch * 10], Vec::new());
                    for _ in 0..iters {
                        run(&x, batch, &mut h, &mut y, &mut s);
                    }
                });
            }
        });
        let el = t.elapsed().as_secs_f64();
        println!("2 threads, batch 256: {:.2} M images/s", (2 * iters * batch) as f64 / el / 1e6);
        // Scalar for comparison.
        set_force_scalar(true);
        let t = Instant::now();
        let (mut h, mut y, mut s) = (vec![0u8; batch * 64], vec![0f32; batch * 10], Vec::new());
        for _ in 0..50 {
            run(&x, batch, &mut h, &mut y, &mut s);
        }
        set_force_scalar(false);
        println!("scalar, batch 256: {:.2} M images/s", (50 * batch) as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
}
