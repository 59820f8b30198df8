//! Kernels that run a Linear layer straight from a compressed weight encoding:
//!
//! - [`CsrF32`]: a pruned f32 matrix as compressed sparse rows; work and memory scale
//!   with the non-zeros, so a 90%-sparse layer at batch 1 reads a tenth of the bytes.
//! - [`CsrI8`]: the same for int8 weights; the exact i32 product of u8 activations
//!   with the kept weights, so an integer layer gives the same bits as the dense kernel.
//! - [`CodebookF32`]: a weight-shared matrix as one byte per weight (the index of its
//!   shared value) and the table of shared values; at batch 1 the weights are looked
//!   up in the table while multiplying (a quarter of the bytes of dense f32), larger
//!   batches decode a panel of rows once into a small f32 buffer and reuse it for
//!   every sample.
//!
//! Float kernels add the same products as the dense kernel in a different order, so
//! they agree with it to rounding: `|y − y_dense| ≤ 1e-5 · (1 + Σ_k |w·x|)` per output
//! (the tolerance the tests check). Integer kernels are exact.

use super::kernels::{sgemm, MatRef};

/// A `[rows × cols]` f32 matrix as compressed sparse rows.
#[derive(Clone, Debug)]
pub struct CsrF32 {
    rows: usize,
    cols: usize,
    /// `row_start[o]..row_start[o + 1]` index the entries of row `o`.
    row_start: Vec<u32>,
    /// Column of each entry (all `< cols`, checked at construction).
    col: Vec<u32>,
    val: Vec<f32>,
}

impl CsrF32 {
    /// The non-zero entries of a dense row-major matrix.
    pub fn from_dense(w: &[f32], rows: usize, cols: usize) -> CsrF32 {
        assert_eq!(w.len(), rows * cols, "CsrF32: w must be rows*cols");
        let mut row_start = Vec::with_capacity(rows + 1);
        let (mut col, mut val) = (Vec::new(), Vec::new());
        row_start.push(0);
        for r in w.chunks_exact(cols.max(1)).take(rows) {
            for (c, &v) in r.iter().enumerate() {
                if v != 0.0 {
                    col.push(c as u32);
                    val.push(v);
                }
            }
            row_start.push(col.len() as u32);
        }
        row_start.resize(rows + 1, col.len() as u32);
        CsrF32 { rows, cols, row_start, col, val }
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.val.len()
    }

    /// `y[s, o] = bias[o] + Σ_k w[o, k]·x[s, k]` for `batch` samples (`x`: `batch × cols`,
    /// `y`: `batch × rows`).
    pub fn forward(&self, x: &[f32], batch: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        assert_eq!(x.len(), batch * self.cols, "CsrF32: x must be batch*cols");
        assert_eq!(y.len(), batch * self.rows, "CsrF32: y must be batch*rows");
        for (xs, ys) in x.chunks_exact(self.cols.max(1)).zip(y.chunks_exact_mut(self.rows.max(1))) {
            for (o, yo) in ys.iter_mut().enumerate() {
                let (a, b) = (self.row_start[o] as usize, self.row_start[o + 1] as usize);
                let dot = sparse_dot_f32(&self.col[a..b], &self.val[a..b], xs);
                *yo = dot + bias.map_or(0.0, |b| b[o]);
            }
        }
    }
}

/// `Σ_i val[i]·x[col[i]]` (every `col[i] < x.len()`, guaranteed by the matrices' construction).
#[inline]
fn sparse_dot_f32(col: &[u32], val: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected; the matrices only hold columns < cols and
        // their callers pass rows of x with cols values.
        return unsafe { x86::sparse_dot_f32(col, val, x) };
    }
    let mut acc = [0f32; 4];
    let mut cc = col.chunks_exact(4);
    let mut vc = val.chunks_exact(4);
    for (c, v) in (&mut cc).zip(&mut vc) {
        for j in 0..4 {
            acc[j] += v[j] * x[c[j] as usize];
        }
    }
    let tail: f32 = cc.remainder().iter().zip(vc.remainder()).map(|(&c, &v)| v * x[c as usize]).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

fn avx2_fma() -> bool {
    super::isa::avx2()
}

/// A `[rows × cols]` int8 matrix as compressed sparse rows, for the integer product.
#[derive(Clone, Debug)]
pub struct CsrI8 {
    rows: usize,
    cols: usize,
    row_start: Vec<u32>,
    col: Vec<u32>,
    val: Vec<i32>,
}

impl CsrI8 {
    /// The non-zero entries of a dense row-major i8 matrix.
    pub fn from_dense(w: &[i8], rows: usize, cols: usize) -> CsrI8 {
        assert_eq!(w.len(), rows * cols, "CsrI8: w must be rows*cols");
        let mut row_start = vec![0u32];
        let (mut col, mut val) = (Vec::new(), Vec::new());
        for r in w.chunks_exact(cols.max(1)).take(rows) {
            for (c, &v) in r.iter().enumerate() {
                if v != 0 {
                    col.push(c as u32);
                    val.push(v as i32);
                }
            }
            row_start.push(col.len() as u32);
        }
        row_start.resize(rows + 1, col.len() as u32);
        CsrI8 { rows, cols, row_start, col, val }
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.val.len()
    }

    /// `c[s, o] = init[o] + Σ_k w[o, k]·x[s, k]` exactly (wrapping i32, like the dense
    /// kernels), `x`: `batch × cols` u8, `c`: `batch × rows`. `widened` is scratch of at
    /// least `cols` values.
    pub fn product(&self, x: &[u8], batch: usize, init: &[i32], c: &mut [i32], widened: &mut [i32]) {
        assert_eq!(x.len(), batch * self.cols, "CsrI8: x must be batch*cols");
        assert_eq!(c.len(), batch * self.rows, "CsrI8: c must be batch*rows");
        assert!(init.len() >= self.rows, "CsrI8: init must cover the rows");
        let widened = &mut widened[..self.cols];
        for (xs, cs) in x.chunks_exact(self.cols.max(1)).zip(c.chunks_exact_mut(self.rows.max(1))) {
            widened.iter_mut().zip(xs).for_each(|(w, &v)| *w = v as i32);
            for (o, co) in cs.iter_mut().enumerate() {
                let (a, b) = (self.row_start[o] as usize, self.row_start[o + 1] as usize);
                *co = init[o].wrapping_add(sparse_dot_i32(&self.col[a..b], &self.val[a..b], widened));
            }
        }
    }
}

/// `Σ_i val[i]·x[col[i]]`, wrapping i32.
#[inline]
fn sparse_dot_i32(col: &[u32], val: &[i32], x: &[i32]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 was detected; columns < cols = x.len() (as for sparse_dot_f32).
        return unsafe { x86::sparse_dot_i32(col, val, x) };
    }
    col.iter().zip(val).fold(0i32, |s, (&c, &v)| s.wrapping_add(v.wrapping_mul(x[c as usize])))
}

/// A `[rows × cols]` weight-shared f32 matrix: one byte per weight indexing a table of
/// at most 256 shared values (pruned weights point at an entry holding 0.0).
#[derive(Clone, Debug)]
pub struct CodebookF32 {
    rows: usize,
    cols: usize,
    index: Vec<u8>,
    /// The shared values, padded with zeros to 256 entries so every byte is a valid index.
    table: Vec<f32>,
}

/// Rows decoded at a time for batched products (a panel of `PANEL × cols` f32 stays in
/// L2 and is reused for every sample of the batch by the f32 GEMM).
const PANEL: usize = 64;

impl CodebookF32 {
    /// From per-weight indices into `centroids`; `None` when there are more than 255
    /// shared values (one table entry is kept for pruned weights) or an index is out of range.
    pub fn new(indices: &[u16], kept: Option<&[bool]>, centroids: &[f32], rows: usize, cols: usize) -> Option<CodebookF32> {
        if indices.len() != rows * cols || centroids.len() > 255 || indices.iter().any(|&i| i as usize >= centroids.len().max(1)) {
            return None;
        }
        let zero = centroids.len() as u8;
        let index = indices
            .iter()
            .enumerate()
            .map(|(i, &a)| if kept.is_none_or(|k| k[i]) { a as u8 } else { zero })
            .collect();
        let mut table = vec![0f32; 256];
        table[..centroids.len()].copy_from_slice(centroids);
        Some(CodebookF32 { rows, cols, index, table })
    }

    /// The dense matrix this stands for.
    pub fn to_dense(&self) -> Vec<f32> {
        self.index.iter().map(|&i| self.table[i as usize]).collect()
    }

    /// `y[s, o] = bias[o] + Σ_k w[o, k]·x[s, k]`; `panel` is scratch.
    pub fn forward(&self, x: &[f32], batch: usize, bias: Option<&[f32]>, y: &mut [f32], panel: &mut Vec<f32>) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), batch * cols, "CodebookF32: x must be batch*cols");
        assert_eq!(y.len(), batch * rows, "CodebookF32: y must be batch*rows");
        if batch <= 2 {
            for (xs, ys) in x.chunks_exact(cols.max(1)).zip(y.chunks_exact_mut(rows.max(1))) {
                for (o, yo) in ys.iter_mut().enumerate() {
                    *yo = lookup_dot(&self.index[o * cols..(o + 1) * cols], &self.table, xs) + bias.map_or(0.0, |b| b[o]);
                }
            }
            return;
        }
        panel.resize(PANEL * cols, 0.0);
        for r0 in (0..rows).step_by(PANEL) {
            let pr = PANEL.min(rows - r0);
            for (d, &i) in panel.iter_mut().zip(&self.index[r0 * cols..(r0 + pr) * cols]) {
                *d = self.table[i as usize];
            }
            // Columns r0..r0+pr of y (row stride `rows`) from the decoded panel.
            let b = MatRef::transposed(&panel[..pr * cols], cols);
            sgemm(batch, pr, cols, MatRef::rows(x, cols), b, &mut y[r0..], rows, false);
        }
        if let Some(bias) = bias {
            for row in y.chunks_exact_mut(rows.max(1)) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
    }
}

/// `Σ_k table[index[k]]·x[k]` (`table` has 256 entries).
#[inline]
fn lookup_dot(index: &[u8], table: &[f32], x: &[f32]) -> f32 {
    assert!(table.len() >= 256 && x.len() >= index.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2/FMA detected; bytes index the 256-entry table, x covers index.
        return unsafe { x86::lookup_dot(index, table, x) };
    }
    let mut acc = [0f32; 8];
    let mut ic = index.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (i, xv) in (&mut ic).zip(&mut xc) {
        for j in 0..8 {
            acc[j] += table[i[j] as usize] * xv[j];
        }
    }
    let tail: f32 = ic.remainder().iter().zip(xc.remainder()).map(|(&i, &v)| table[i as usize] * v).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `(l0 + l4, l1 + l5, l2 + l6, l3 + l7)`, then `(s0 + s2) + (s1 + s3)`: the
    /// horizontal sum every AVX2 f32 dot-product kernel here ends with.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// Eight entries per step: gather `x[col]`, multiply-add with the values.
    ///
    /// # Safety
    /// AVX2 and FMA must be available and every `col[i] < x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sparse_dot_f32(col: &[u32], val: &[f32], x: &[f32]) -> f32 {
        assert_eq!(col.len(), val.len());
        let n8 = col.len() / 8 * 8;
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: i + 8 <= n8 <= col.len() = val.len(); gathered columns are < x.len().
        unsafe {
            while i + 16 <= n8 {
                let c0 = _mm256_loadu_si256(col.as_ptr().add(i) as *const __m256i);
                let c1 = _mm256_loadu_si256(col.as_ptr().add(i + 8) as *const __m256i);
                a0 = _mm256_fmadd_ps(_mm256_i32gather_ps::<4>(x.as_ptr(), c0), _mm256_loadu_ps(val.as_ptr().add(i)), a0);
                a1 = _mm256_fmadd_ps(_mm256_i32gather_ps::<4>(x.as_ptr(), c1), _mm256_loadu_ps(val.as_ptr().add(i + 8)), a1);
                i += 16;
            }
            if i < n8 {
                let c0 = _mm256_loadu_si256(col.as_ptr().add(i) as *const __m256i);
                a0 = _mm256_fmadd_ps(_mm256_i32gather_ps::<4>(x.as_ptr(), c0), _mm256_loadu_ps(val.as_ptr().add(i)), a0);
            }
        }
        let tail: f32 = col[n8..].iter().zip(&val[n8..]).map(|(&c, &v)| v * x[c as usize]).sum();
        hsum(_mm256_add_ps(a0, a1)) + tail
    }

    /// The integer form: gather `x[col]` (i32), multiply by the values, wrapping add.
    ///
    /// # Safety
    /// AVX2 must be available and every `col[i] < x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sparse_dot_i32(col: &[u32], val: &[i32], x: &[i32]) -> i32 {
        assert_eq!(col.len(), val.len());
        let n8 = col.len() / 8 * 8;
        let mut acc = _mm256_setzero_si256();
        for i in (0..n8).step_by(8) {
            // SAFETY: as in sparse_dot_f32.
            unsafe {
                let c = _mm256_loadu_si256(col.as_ptr().add(i) as *const __m256i);
                let xv = _mm256_i32gather_epi32::<4>(x.as_ptr(), c);
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, _mm256_loadu_si256(val.as_ptr().add(i) as *const __m256i)));
            }
        }
        let mut lanes = [0i32; 8];
        // SAFETY: lanes holds 8 i32.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
        let tail = col[n8..].iter().zip(&val[n8..]).fold(0i32, |s, (&c, &v)| s.wrapping_add(v.wrapping_mul(x[c as usize])));
        lanes.iter().fold(tail, |s, &v| s.wrapping_add(v))
    }

    /// Eight weights per step: widen eight indices, gather their table values, multiply-add.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn lookup_dot(index: &[u8], table: &[f32], x: &[f32]) -> f32 {
        assert!(table.len() >= 256 && x.len() >= index.len());
        let n8 = index.len() / 8 * 8;
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: i + 8 <= n8 <= index.len() <= x.len(); bytes index the 256 entries.
        unsafe {
            while i + 16 <= n8 {
                let i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(index.as_ptr().add(i) as *const __m128i));
                let i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(index.as_ptr().add(i + 8) as *const __m128i));
                a0 = _mm256_fmadd_ps(_mm256_i32gather_ps::<4>(table.as_ptr(), i0), _mm256_loadu_ps(x.as_ptr().add(i)), a0);
                a1 = _mm256_fmadd_ps(_mm256_i32gather_ps::<4>(table.as_ptr(), i1), _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
                i += 16;
            }
            if i < n8 {
                let i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(index.as_ptr().add(i) as *const __m128i));
                a0 = _mm256_fmadd_ps(_mm256_i32gather_ps::<4>(table.as_ptr(), i0), _mm256_loadu_ps(x.as_ptr().add(i)), a0);
            }
        }
        let tail: f32 = index[n8..].iter().zip(&x[n8..]).map(|(&i, &v)| table[i as usize] * v).sum();
        hsum(_mm256_add_ps(a0, a1)) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn dense_ref(w: &[f32], rows: usize, cols: usize, x: &[f32], batch: usize, bias: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
        let mut y = vec![0f32; batch * rows];
        let mut mag = vec![0f32; batch * rows];
        for s in 0..batch {
            for o in 0..rows {
                let mut acc = 0f64;
                let mut m = 0f64;
                for k in 0..cols {
                    let p = w[o * cols + k] as f64 * x[s * cols + k] as f64;
                    acc += p;
                    m += p.abs();
                }
                y[s * rows + o] = (acc + bias.map_or(0.0, |b| b[o] as f64)) as f32;
                mag[s * rows + o] = m as f32;
            }
        }
        (y, mag)
    }

    fn close(got: &[f32], want: &[f32], mag: &[f32], what: &str) {
        for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
            assert!((g - w).abs() <= 1e-5 * (1.0 + m), "{what}: out {i}: {g} vs {w}");
        }
    }

    /// Odd shapes, batch 1..257, sparsity 0 to all-zero rows: CSR and codebook against
    /// the dense product in f64.
    #[test]
    fn float_kernels_match_dense_reference() {
        let mut rng = Rng::new(31);
        for &(rows, cols, density) in &[(1, 1, 1.0), (7, 13, 0.5), (33, 61, 0.1), (10, 300, 0.0), (65, 127, 0.9), (3, 784, 0.3)] {
            for &batch in &[1usize, 2, 3, 17, 257] {
                let w: Vec<f32> = (0..rows * cols).map(|_| if rng.next_f32() < density { rng.uniform(1.0) } else { 0.0 }).collect();
                let x: Vec<f32> = (0..batch * cols).map(|_| rng.uniform(1.0)).collect();
                let bias: Vec<f32> = (0..rows).map(|_| rng.uniform(1.0)).collect();
                let (want, mag) = dense_ref(&w, rows, cols, &x, batch, Some(&bias));
                let csr = CsrF32::from_dense(&w, rows, cols);
                assert_eq!(csr.nnz(), w.iter().filter(|v| **v != 0.0).count());
                let mut y = vec![0f32; batch * rows];
                csr.forward(&x, batch, Some(&bias), &mut y);
                close(&y, &want, &mag, "csr");
                // Codebook: 5 shared values (one is 0.0) plus pruned entries.
                let centroids = [-0.75f32, -0.25, 0.0, 0.5, 1.0];
                let idx: Vec<u16> = (0..rows * cols).map(|_| rng.below(5) as u16).collect();
                let kept: Vec<bool> = (0..rows * cols).map(|_| rng.next_f32() < 0.8).collect();
                let cb = CodebookF32::new(&idx, Some(&kept), &centroids, rows, cols).unwrap();
                let wd = cb.to_dense();
                for i in 0..rows * cols {
                    assert_eq!(wd[i], if kept[i] { centroids[idx[i] as usize] } else { 0.0 });
                }
                let (want, mag) = dense_ref(&wd, rows, cols, &x, batch, None);
                cb.forward(&x, batch, None, &mut y, &mut Vec::new());
                close(&y, &want, &mag, "codebook");
            }
        }
        assert!(CodebookF32::new(&[300], None, &vec![0.0; 256], 1, 1).is_none());
    }

    /// The integer CSR product equals the plain product of the dense matrix bit for bit.
    #[test]
    fn int8_csr_is_exact() {
        let mut rng = Rng::new(32);
        for &(rows, cols, density) in &[(1, 1, 1.0), (9, 31, 0.5), (100, 785, 0.1), (17, 5, 0.0)] {
            for &batch in &[1usize, 4, 257] {
                let w: Vec<i8> = (0..rows * cols).map(|_| if rng.next_f32() < density { (rng.below(255) as i32 - 127) as i8 } else { 0 }).collect();
                let x: Vec<u8> = (0..batch * cols).map(|_| rng.below(256) as u8).collect();
                let init: Vec<i32> = (0..rows).map(|_| rng.below(2000) as i32 - 1000).collect();
                let mut want = vec![0i32; batch * rows];
                for s in 0..batch {
                    for o in 0..rows {
                        want[s * rows + o] = init[o] + (0..cols).map(|k| x[s * cols + k] as i32 * w[o * cols + k] as i32).sum::<i32>();
                    }
                }
                let csr = CsrI8::from_dense(&w, rows, cols);
                let mut c = vec![0i32; batch * rows];
                csr.product(&x, batch, &init, &mut c, &mut vec![0; cols]);
                assert_eq!(c, want, "rows={rows} cols={cols} batch={batch}");
            }
        }
    }
}
