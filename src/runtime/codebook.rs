//! A batch-1 kernel for weight-shared Linear layers with small tables (at most 32
//! shared values, pruned weights included): the table lives in registers and eight
//! indices are turned into eight weights with in-register permutes, so the weights
//! cost half a byte (≤ 16 values, two 4-bit indices per byte) or one byte (≤ 32
//! values) each and nothing is gathered from memory.
//!
//! [`super::sparse::CodebookF32`] looks weights up with `vgatherdps` from a 256-entry
//! table, which is slower than dense f32 at batch 1; this kernel replaces the gather by
//! `vpermps` on 8-entry quarters of the table plus blends on the index's high bits.
//!
//! Results: every output is `bias + Σ` of the same products as the dense kernel in a
//! different order (eight lanes of fused multiply-adds, then a fixed pairwise sum, then
//! the tail columns in order), so it agrees with the dense product to rounding: the
//! tests check `|y − y_exact| ≤ 1e-5 · (1 + Σ_k |w·x|)`. The portable fallback computes
//! the very same sums (fused multiply-adds in the same lane order), so both paths give
//! identical bits.

/// How the indices are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexWidth {
    /// Two 4-bit indices per byte (low nibble first); tables of at most 16 values.
    Nibble,
    /// One index per byte; tables of at most 32 values.
    Byte,
}

/// A `[rows × cols]` weight-shared f32 matrix with a table of at most 32 values.
#[derive(Clone, Debug)]
pub struct CodebookLut {
    rows: usize,
    cols: usize,
    width: IndexWidth,
    /// Row-major indices, each row padded to a multiple of 8 columns (padding indexes 0).
    packed: Vec<u8>,
    /// Bytes per stored row.
    row_bytes: usize,
    /// The shared values (and 0.0 for pruned weights when needed), zero-padded to 32.
    table: [f32; 32],
}

impl CodebookLut {
    /// From per-weight indices into `centroids` (`kept[i] == false`: pruned, weight 0.0).
    /// `None` when the table (plus a 0.0 entry for pruned weights, unless a centroid
    /// is already exactly zero) would exceed 32 values or an index is out of range.
    pub fn new(indices: &[u16], kept: Option<&[bool]>, centroids: &[f32], rows: usize, cols: usize) -> Option<CodebookLut> {
        if indices.len() != rows * cols || indices.iter().any(|&i| i as usize >= centroids.len()) {
            return None;
        }
        let pruned = kept.is_some_and(|k| k.iter().any(|&v| !v));
        let zero = match centroids.iter().position(|&c| c == 0.0) {
            Some(z) => z,
            None if pruned => centroids.len(),
            None => 0, // never used
        };
        let entries = centroids.len().max(zero + 1);
        let width = match entries {
            0..=16 => IndexWidth::Nibble,
            17..=32 => IndexWidth::Byte,
            _ => return None,
        };
        let mut table = [0f32; 32];
        table[..centroids.len()].copy_from_slice(centroids);
        let cols8 = cols.div_ceil(8) * 8;
        let row_bytes = if width == IndexWidth::Nibble { cols8 / 2 } else { cols8 };
        let mut packed = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let v = if kept.is_none_or(|k| k[i]) { indices[i] as u8 } else { zero as u8 };
                match width {
                    IndexWidth::Nibble => packed[r * row_bytes + c / 2] |= v << (4 * (c % 2)),
                    IndexWidth::Byte => packed[r * row_bytes + c] = v,
                }
            }
        }
        Some(CodebookLut { rows, cols, width, packed, row_bytes, table })
    }

    pub fn width(&self) -> IndexWidth {
        self.width
    }

    /// Index of weight `(r, c)`.
    fn index(&self, r: usize, c: usize) -> usize {
        match self.width {
            IndexWidth::Nibble => (self.packed[r * self.row_bytes + c / 2] >> (4 * (c % 2)) & 15) as usize,
            IndexWidth::Byte => self.packed[r * self.row_bytes + c] as usize,
        }
    }

    /// The dense matrix this stands for.
    pub fn to_dense(&self) -> Vec<f32> {
        (0..self.rows * self.cols).map(|i| self.table[self.index(i / self.cols.max(1), i % self.cols.max(1))]).collect()
    }

    /// `y[s, o] = bias[o] + Σ_k w[o, k]·x[s, k]`, one sample at a time (this kernel is
    /// for small batches; the plan times it against the others per batch size).
    pub fn forward(&self, x: &[f32], batch: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), batch * cols, "CodebookLut: x must be batch*cols");
        assert_eq!(y.len(), batch * rows, "CodebookLut: y must be batch*rows");
        if let Some(b) = bias {
            assert_eq!(b.len(), rows, "CodebookLut: bias must be rows");
        }
        for s in 0..batch {
            let (xs, ys) = (&x[s * cols..(s + 1) * cols], &mut y[s * rows..(s + 1) * rows]);
            #[cfg(target_arch = "x86_64")]
            if avx2_fma() {
                // SAFETY: AVX2/FMA detected; shapes checked above and by construction.
                unsafe { x86::gemv(self, xs, ys) };
                self.finish(xs, bias, ys);
                continue;
            }
            self.gemv_portable(xs, ys);
            self.finish(xs, bias, ys);
        }
    }

    /// The eight-lane sums of the full 8-column groups, reduced in the same order as
    /// `x86::hsum`.
    fn gemv_portable(&self, x: &[f32], y: &mut [f32]) {
        let n8 = self.cols / 8 * 8;
        for (o, yo) in y.iter_mut().enumerate() {
            let mut acc = [0f32; 8];
            for c0 in (0..n8).step_by(8) {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = self.table[self.index(o, c0 + j)].mul_add(x[c0 + j], *a);
                }
            }
            let s: [f32; 4] = std::array::from_fn(|j| acc[j] + acc[j + 4]);
            *yo = (s[0] + s[2]) + (s[1] + s[3]);
        }
    }

    /// Adds the tail columns (in order) and the bias to the group sums in `y`.
    fn finish(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        let n8 = self.cols / 8 * 8;
        for (o, yo) in y.iter_mut().enumerate() {
            let tail: f32 = (n8..self.cols).map(|c| self.table[self.index(o, c)] * x[c]).sum();
            *yo = *yo + tail + bias.map_or(0.0, |b| b[o]);
        }
    }
}

fn avx2_fma() -> bool {
    super::isa::avx2()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CodebookLut, IndexWidth};
    use crate::runtime::sparse::x86::hsum;
    use std::arch::x86_64::*;

    /// The table in registers: `q[k]` holds entries `8k..8k+8`.
    struct Table {
        q: [__m256; 4],
    }

    /// Eight weights from four packed bytes (eight 4-bit indices, low nibble first).
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `p` must be readable for 4 bytes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn decode_nibbles(p: *const u8, t: &Table, lo_shift: __m256i, hi_shift: __m256i) -> __m256 {
        // SAFETY: 4 readable bytes (caller); the broadcast is a plain load.
        let word = _mm256_castps_si256(unsafe { _mm256_broadcast_ss(&*(p as *const f32)) });
        // Lane j: nibble j in bits 0..4 (vpermps reads bits 0..3) and its bit 3 in the sign bit.
        let idx = _mm256_srlv_epi32(word, lo_shift);
        let high = _mm256_castsi256_ps(_mm256_sllv_epi32(word, hi_shift));
        _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.q[0], idx), _mm256_permutevar8x32_ps(t.q[1], idx), high)
    }

    /// Eight weights from eight index bytes (values below 32).
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `p` must be readable for 8 bytes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn decode_bytes(p: *const u8, t: &Table) -> __m256 {
        // SAFETY: 8 readable bytes (caller).
        let idx = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p as *const __m128i) });
        let bit3 = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
        let bit4 = _mm256_castsi256_ps(_mm256_slli_epi32::<27>(idx));
        let low = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.q[0], idx), _mm256_permutevar8x32_ps(t.q[1], idx), bit3);
        let high = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.q[2], idx), _mm256_permutevar8x32_ps(t.q[3], idx), bit3);
        _mm256_blendv_ps(low, high, bit4)
    }

    /// `y[o]` = eight-lane FMA sums over the full 8-column groups of row `o`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `x.len() == cb.cols`, `y.len() == cb.rows`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemv(cb: &CodebookLut, x: &[f32], y: &mut [f32]) {
        assert!(x.len() == cb.cols && y.len() == cb.rows && cb.packed.len() == cb.rows * cb.row_bytes);
        // SAFETY: AVX2/FMA available (caller); shapes asserted.
        unsafe {
            match cb.width {
                IndexWidth::Nibble => gemv_impl::<true>(cb, x, y),
                IndexWidth::Byte => gemv_impl::<false>(cb, x, y),
            }
        }
    }

    /// Four rows at a time, so the decodes of different rows overlap and share each
    /// load of `x`.
    ///
    /// # Safety
    /// As [`gemv`], shapes already checked there.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gemv_impl<const NIBBLE: bool>(cb: &CodebookLut, x: &[f32], y: &mut [f32]) {
        let groups = cb.cols / 8;
        // SAFETY: the table has 32 entries.
        let t = Table { q: std::array::from_fn(|k| unsafe { _mm256_loadu_ps(cb.table.as_ptr().add(8 * k)) }) };
        let lo_shift = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let hi_shift = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
        let (gb, rb) = (if NIBBLE { 4 } else { 8 }, cb.row_bytes);
        let base = cb.packed.as_ptr();
        // Group g of row o reads bytes g*gb..(g+1)*gb of the row: within row_bytes
        // (= cols rounded up to 8, times gb / 8) and inside `packed` for o < rows.
        macro_rules! decode {
            ($p:expr) => {
                if NIBBLE { decode_nibbles($p, &t, lo_shift, hi_shift) } else { decode_bytes($p, &t) }
            };
        }
        let mut o = 0;
        while o + 4 <= cb.rows {
            let mut acc = [_mm256_setzero_ps(); 4];
            for g in 0..groups {
                // SAFETY: 8g + 8 <= cols = x.len(); packed bytes as above.
                unsafe {
                    let xv = _mm256_loadu_ps(x.as_ptr().add(8 * g));
                    acc[0] = _mm256_fmadd_ps(decode!(base.add(o * rb + g * gb)), xv, acc[0]);
                    acc[1] = _mm256_fmadd_ps(decode!(base.add((o + 1) * rb + g * gb)), xv, acc[1]);
                    acc[2] = _mm256_fmadd_ps(decode!(base.add((o + 2) * rb + g * gb)), xv, acc[2]);
                    acc[3] = _mm256_fmadd_ps(decode!(base.add((o + 3) * rb + g * gb)), xv, acc[3]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                y[o + r] = hsum(*a);
            }
            o += 4;
        }
        while o < cb.rows {
            let mut acc = _mm256_setzero_ps();
            for g in 0..groups {
                // SAFETY: as above.
                unsafe {
                    let xv = _mm256_loadu_ps(x.as_ptr().add(8 * g));
                    acc = _mm256_fmadd_ps(decode!(base.add(o * rb + g * gb)), xv, acc);
                }
            }
            y[o] = hsum(acc);
            o += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Odd shapes and batches, 4-bit and byte tables, with and without pruned weights:
    /// against the product in f64 of the dense matrix, and the AVX2 path against the
    /// portable one bit for bit.
    #[test]
    fn lut_kernel_matches_dense_reference() {
        let mut rng = Rng::new(61);
        for &(rows, cols) in &[(1, 1), (3, 7), (5, 8), (7, 13), (33, 61), (10, 300), (65, 127), (9, 784)] {
            for &(values, pruned) in &[(2usize, false), (15, true), (16, false), (16, true), (17, false), (31, true), (32, false)] {
                let centroids: Vec<f32> = (0..values).map(|_| rng.uniform(1.0)).collect();
                let idx: Vec<u16> = (0..rows * cols).map(|_| rng.below(values) as u16).collect();
                let kept: Vec<bool> = (0..rows * cols).map(|_| !pruned || rng.next_f32() < 0.7).collect();
                let cb = CodebookLut::new(&idx, Some(&kept), &centroids, rows, cols).expect("at most 32 entries");
                let want_width = if values + (pruned && kept.iter().any(|k| !k)) as usize <= 16 { IndexWidth::Nibble } else { IndexWidth::Byte };
                assert_eq!(cb.width(), want_width, "{values} values, pruned {pruned}");
                let wd = cb.to_dense();
                for i in 0..rows * cols {
                    assert_eq!(wd[i], if kept[i] { centroids[idx[i] as usize] } else { 0.0 });
                }
                for &batch in &[1usize, 2, 5] {
                    let x: Vec<f32> = (0..batch * cols).map(|_| rng.uniform(1.0)).collect();
                    let bias: Vec<f32> = (0..rows).map(|_| rng.uniform(1.0)).collect();
                    let mut y = vec![0f32; batch * rows];
                    cb.forward(&x, batch, Some(&bias), &mut y);
                    for s in 0..batch {
                        for o in 0..rows {
                            let (mut want, mut mag) = (bias[o] as f64, 0f64);
                            for k in 0..cols {
                                let p = wd[o * cols + k] as f64 * x[s * cols + k] as f64;
                                want += p;
                                mag += p.abs();
                            }
                            let got = y[s * rows + o];
                            assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + mag), "{rows}x{cols} v{values}: {got} vs {want}");
                        }
                        let (xs, mut portable) = (&x[s * cols..(s + 1) * cols], vec![0f32; rows]);
                        cb.gemv_portable(xs, &mut portable);
                        cb.finish(xs, Some(&bias), &mut portable);
                        assert_eq!(portable, y[s * rows..(s + 1) * rows], "portable path differs");
                    }
                }
            }
        }
        assert!(CodebookLut::new(&[0; 4], None, &vec![0.5; 33], 2, 2).is_none());
        assert!(CodebookLut::new(&[3], None, &[0.5; 3], 1, 1).is_none());
    }
}
