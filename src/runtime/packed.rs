//! An f32 Linear layer whose weights are packed once, when the plan is built, into the
//! panels its microkernel reads: `y[rows × out] = x[rows × in] · Wᵀ + b`.
//!
//! Why: the general GEMM (the `gemm` crate) packs the weight matrix again on every call.
//! For a Transformer at batch 1 (32 token rows) that repacking costs about as much as
//! the products themselves (all-MiniLM-L6-v2's products took 15–17 ms per forward on a
//! 2-core AVX-512 Xeon through it). Packed once, each weight is read once per call,
//! from memory, straight into the FMA units.
//!
//! Below [`GEMM_BELOW_ROWS`] rows (one image) and from [`GEMM_FROM_ROWS`] rows on (a
//! batch of sentences), the general GEMM runs instead.
//!
//! Layout: output columns in panels of `width` (32 for AVX-512: two zmm; 16 for AVX2 and
//! scalar: two ymm), each panel `[in][width]` contiguous, the last panel zero-padded.
//! The microkernel keeps `MR` rows × `width` columns of sums in registers, broadcasts one
//! input value per row and step, and adds the bias when it stores. Panels are split
//! between threads; within a panel every row block reuses it from cache. Every path sums
//! each output in the same order (`k` ascending, one FMA per step), so the AVX-512,
//! AVX2 and scalar paths agree to rounding with each other and with the reference.

use super::isa::{self, Isa};

/// Rows of sums held in registers.
const MR: usize = 8;

/// From this many rows on, the general GEMM (which blocks over rows and depth) is as
/// fast or faster: measured on all-MiniLM-L6-v2's shapes on a 2-core AVX-512 Xeon,
/// packed vs GEMM per forward: 8 rows 2.0 vs 12.1 ms, 64 rows 12.4 vs 19.3 ms, 128 rows
/// 28.5 vs 27.2 ms, 512 rows 73.2 vs 68.9 ms (`examples/gemm_shapes.rs`).
pub const GEMM_FROM_ROWS: usize = 128;

/// Below this many rows the register tile holds too few independent sums to hide the
/// FMA latency, and the GEMM is faster: the seed MLP (784→64→10) at batch 1 took 4.4–5.0 µs
/// packed against 2.7–3.4 µs through the GEMM (`squeeze bench mlp`, same machine).
pub const GEMM_BELOW_ROWS: usize = 4;

/// A Linear layer's weights packed for [`PackedLinear::forward`].
#[derive(Clone, Debug)]
pub struct PackedLinear {
    /// Input features (`k`).
    pub inf: usize,
    /// Output features (`n`).
    pub outf: usize,
    /// Columns per panel.
    width: usize,
    /// The instruction set the panels were packed for.
    isa: Isa,
    /// Panels, `[panels][inf][width]`.
    panels: Vec<f32>,
    bias: Vec<f32>,
    /// The weights as given (`[outf, inf]`), for the GEMM from [`GEMM_FROM_ROWS`] rows
    /// on. This holds the layer's weights twice: the price of the faster small batches
    /// until the packed kernel blocks over rows and depth itself.
    rows_major: Vec<f32>,
}

impl PackedLinear {
    /// Packs `w` (`[outf, inf]` row-major, as a Linear layer stores it) and `bias` for
    /// the instruction set in use ([`isa::active`]).
    pub fn new(w: &[f32], bias: Option<&[f32]>, inf: usize, outf: usize) -> PackedLinear {
        PackedLinear::for_isa(w, bias, inf, outf, isa::active())
    }

    /// [`PackedLinear::new`] for a given level (tests run every level the CPU has).
    pub fn for_isa(w: &[f32], bias: Option<&[f32]>, inf: usize, outf: usize, isa: Isa) -> PackedLinear {
        assert_eq!(w.len(), inf * outf, "packed linear: weight of {} values for {outf}×{inf}", w.len());
        let width = if isa == Isa::Avx512 { 32 } else { 16 };
        let count = outf.div_ceil(width);
        let mut panels = vec![0.0f32; count * inf * width];
        for o in 0..outf {
            let (p, j) = (o / width, o % width);
            let panel = &mut panels[p * inf * width..(p + 1) * inf * width];
            for (kk, &v) in w[o * inf..(o + 1) * inf].iter().enumerate() {
                panel[kk * width + j] = v;
            }
        }
        let mut b = vec![0.0f32; count * width];
        if let Some(bias) = bias {
            b[..outf].copy_from_slice(&bias[..outf]);
        }
        PackedLinear { inf, outf, width, isa, panels, bias: b, rows_major: w.to_vec() }
    }

    /// `y[rows × outf] = x[rows × inf] · Wᵀ + b` on up to `threads` threads.
    pub fn forward(&self, x: &[f32], rows: usize, y: &mut [f32], threads: usize) {
        let (k, n) = (self.inf, self.outf);
        assert!(x.len() >= rows * k && y.len() >= rows * n, "packed linear: buffers too short");
        if rows >= GEMM_FROM_ROWS || rows < GEMM_BELOW_ROWS {
            use super::kernels::{sgemm_threads, MatRef};
            sgemm_threads(rows, n, k, MatRef::rows(x, k), MatRef::transposed(&self.rows_major, k), y, n, false, threads);
            for row in y[..rows * n].chunks_exact_mut(n) {
                row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
            }
            return;
        }
        let count = n.div_ceil(self.width);
        // Below this many multiply-adds a second thread costs more than it saves.
        let threads = if rows * n * k < 1 << 18 { 1 } else { threads.clamp(1, count) };
        let y_ptr = super::kernels::SendPtr(y.as_mut_ptr());
        let run = move |panels: std::ops::Range<usize>| {
            let out = y_ptr;
            // SAFETY: each call writes only the columns of its own panels, rows < `rows`.
            unsafe { self.panels_forward(x, rows, out.0, panels) }
        };
        if threads == 1 {
            run(0..count);
        } else {
            use rayon::prelude::*;
            let share = count.div_ceil(threads);
            (0..threads).into_par_iter().for_each(|t| run((t * share).min(count)..((t + 1) * share).min(count)));
        }
    }

    /// The given panels for every row.
    ///
    /// # Safety
    /// `y` must hold `rows × outf` values; no other thread writes these panels' columns.
    unsafe fn panels_forward(&self, x: &[f32], rows: usize, y: *mut f32, panels: std::ops::Range<usize>) {
        let (k, n, width) = (self.inf, self.outf, self.width);
        let mut tile = [0.0f32; MR * 32];
        for p in panels {
            let panel = &self.panels[p * k * width..(p + 1) * k * width];
            let bias = &self.bias[p * width..(p + 1) * width];
            let cols = width.min(n - p * width);
            let mut r0 = 0;
            while r0 < rows {
                let mr = MR.min(rows - r0);
                let xs = &x[r0 * k..(r0 + mr) * k];
                match self.isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: packed for AVX-512 only when the level is active.
                    Isa::Avx512 => unsafe { avx512::tile(xs, mr, k, panel, bias, &mut tile) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: packed for AVX2 only when the level is active.
                    Isa::Avx2 => unsafe { avx2::tile(xs, mr, k, panel, bias, &mut tile) },
                    _ => scalar_tile(xs, mr, k, width, panel, bias, &mut tile),
                }
                for r in 0..mr {
                    // SAFETY: row r0 + r < rows, columns p·width .. p·width + cols ≤ n.
                    unsafe { std::ptr::copy_nonoverlapping(tile.as_ptr().add(r * width), y.add((r0 + r) * n + p * width), cols) };
                }
                r0 += mr;
            }
        }
    }
}

/// The reference: `tile[r][j] = bias[j] + Σₖ x[r][k] · panel[k][j]`, k ascending with
/// one fused multiply-add per step (as the vector paths do).
fn scalar_tile(x: &[f32], mr: usize, k: usize, width: usize, panel: &[f32], bias: &[f32], tile: &mut [f32]) {
    for r in 0..mr {
        let acc = &mut tile[r * width..(r + 1) * width];
        acc.fill(0.0);
        for kk in 0..k {
            let a = x[r * k + kk];
            for (s, &w) in acc.iter_mut().zip(&panel[kk * width..(kk + 1) * width]) {
                *s = a.mul_add(w, *s);
            }
        }
        acc.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// 8 rows × 32 columns (two zmm per row); fewer rows run the same loop.
    ///
    /// # Safety
    /// AVX-512 F must be available; `panel` holds `k × 32` values, `x` `mr × k`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(x: &[f32], mr: usize, k: usize, panel: &[f32], bias: &[f32], tile: &mut [f32; super::MR * 32]) {
        assert!(panel.len() >= k * 32 && x.len() >= mr * k && (1..=super::MR).contains(&mr) && bias.len() >= 32);
        let mut acc = [[_mm512_setzero_ps(); 2]; super::MR];
        let (p, xp) = (panel.as_ptr(), x.as_ptr());
        macro_rules! rows {
            ($($r:literal)*) => {
                for kk in 0..k {
                    // SAFETY: kk < k, so the panel's row kk (32 values) and x[r][kk] for
                    // r < mr are inside the slices checked above.
                    unsafe {
                        let b0 = _mm512_loadu_ps(p.add(kk * 32));
                        let b1 = _mm512_loadu_ps(p.add(kk * 32 + 16));
                        $(
                            let a = _mm512_set1_ps(*xp.add($r * k + kk));
                            acc[$r][0] = _mm512_fmadd_ps(a, b0, acc[$r][0]);
                            acc[$r][1] = _mm512_fmadd_ps(a, b1, acc[$r][1]);
                        )*
                    }
                }
            };
        }
        match mr {
            8 => rows!(0 1 2 3 4 5 6 7),
            7 => rows!(0 1 2 3 4 5 6),
            6 => rows!(0 1 2 3 4 5),
            5 => rows!(0 1 2 3 4),
            4 => rows!(0 1 2 3),
            3 => rows!(0 1 2),
            2 => rows!(0 1),
            _ => rows!(0),
        }
        // SAFETY: bias holds 32 values and the tile MR × 32.
        unsafe {
            let (b0, b1) = (_mm512_loadu_ps(bias.as_ptr()), _mm512_loadu_ps(bias.as_ptr().add(16)));
            for (r, a) in acc.iter().enumerate().take(mr) {
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * 32), _mm512_add_ps(a[0], b0));
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * 32 + 16), _mm512_add_ps(a[1], b1));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Up to 6 rows × 16 columns in registers (two ymm per row); 7 or 8 rows run as
    /// 6 + the rest.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `panel` holds `k × 16` values, `x` `mr × k`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(x: &[f32], mr: usize, k: usize, panel: &[f32], bias: &[f32], tile: &mut [f32; super::MR * 32]) {
        let first = mr.min(6);
        // SAFETY: the same features; rows checks the lengths.
        unsafe { rows(x, first, k, panel, bias, &mut tile[..]) };
        if mr > 6 {
            // SAFETY: as above, for rows 6.. of the block.
            unsafe { rows(&x[6 * k..], mr - 6, k, panel, bias, &mut tile[6 * 16..]) };
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows(x: &[f32], mr: usize, k: usize, panel: &[f32], bias: &[f32], tile: &mut [f32]) {
        assert!(panel.len() >= k * 16 && x.len() >= mr * k && (1..=6).contains(&mr) && bias.len() >= 16 && tile.len() >= mr * 16);
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        let (p, xp) = (panel.as_ptr(), x.as_ptr());
        macro_rules! rows {
            ($($r:literal)*) => {
                for kk in 0..k {
                    // SAFETY: kk < k, so the panel's row kk (16 values) and x[r][kk] for
                    // r < mr are inside the slices checked above.
                    unsafe {
                        let b0 = _mm256_loadu_ps(p.add(kk * 16));
                        let b1 = _mm256_loadu_ps(p.add(kk * 16 + 8));
                        $(
                            let a = _mm256_set1_ps(*xp.add($r * k + kk));
                            acc[$r][0] = _mm256_fmadd_ps(a, b0, acc[$r][0]);
                            acc[$r][1] = _mm256_fmadd_ps(a, b1, acc[$r][1]);
                        )*
                    }
                }
            };
        }
        match mr {
            6 => rows!(0 1 2 3 4 5),
            5 => rows!(0 1 2 3 4),
            4 => rows!(0 1 2 3),
            3 => rows!(0 1 2),
            2 => rows!(0 1),
            _ => rows!(0),
        }
        // SAFETY: bias holds 16 values and the tile mr × 16 (checked above).
        unsafe {
            let (b0, b1) = (_mm256_loadu_ps(bias.as_ptr()), _mm256_loadu_ps(bias.as_ptr().add(8)));
            for (r, a) in acc.iter().enumerate().take(mr) {
                _mm256_storeu_ps(tile.as_mut_ptr().add(r * 16), _mm256_add_ps(a[0], b0));
                _mm256_storeu_ps(tile.as_mut_ptr().add(r * 16 + 8), _mm256_add_ps(a[1], b1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            for o in 0..n {
                y[r * n + o] = b[o] as f64 + (0..k).map(|kk| x[r * k + kk] as f64 * w[o * k + kk] as f64).sum::<f64>();
            }
        }
        y
    }

    /// Every level the CPU has, against an f64 reference, over shapes with row and column
    /// tails (rows not a multiple of the register rows, columns not of the panel width),
    /// on one and two threads.
    #[test]
    fn every_level_matches_the_reference() {
        let levels: Vec<Isa> = [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|l| *l <= isa::cpu()).collect();
        let mut state = 1u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(rows, k, n) in &[(1, 7, 3), (3, 33, 17), (8, 64, 32), (9, 100, 45), (32, 384, 130), (13, 1536, 64), (70, 200, 300), (GEMM_FROM_ROWS + 3, 50, 40)] {
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let want = reference(&x, &w, &b, rows, k, n);
            let mut scalar = Vec::new();
            for &level in &levels {
                let packed = PackedLinear::for_isa(&w, Some(&b), k, n, level);
                for threads in [1, 2] {
                    let mut y = vec![f32::NAN; rows * n];
                    packed.forward(&x, rows, &mut y, threads);
                    for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                        let bound = 1e-5 * (1.0 + (0..k).map(|kk| (x[i / n * k + kk] * w[i % n * k + kk]).abs() as f64).sum::<f64>());
                        assert!((got as f64 - want).abs() <= bound, "{level:?} {rows}x{k}x{n} threads {threads}: y[{i}] = {got}, want {want}");
                    }
                    if level == Isa::Scalar {
                        scalar = y.clone();
                    } else if (GEMM_BELOW_ROWS..GEMM_FROM_ROWS).contains(&rows) {
                        assert_eq!(y, scalar, "{level:?} {rows}x{k}x{n}: the same sums in the same order as the scalar path");
                    }
                }
            }
        }
    }
}
