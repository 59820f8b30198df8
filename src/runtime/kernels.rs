//! f32 kernels shared by the trainer and the inference runtime: matrix product,
//! im2col/col2im, max pooling. The matrix product is `gemm`'s single-threaded
//! kernel; parallelism is over the batch, one level up.

/// A read-only strided view of a row-major or transposed matrix.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub rs: usize,
    /// Distance between consecutive columns.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix that has `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, rs: 1, cs: cols }
    }
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `c[m×n] = a[m×k] · b[k×n]` (or `c +=` when `accumulate`), `c` row-major with `ldc`.
///
/// Panics if a view is too short for the shape: that is a bug in the caller, not bad input.
pub fn sgemm(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.fits(m, k) && b.fits(k, n), "sgemm: operand too short for {m}×{k}·{k}×{n}");
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "sgemm: output too short");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the asserts above bound every index the kernel touches: a's last element is
    // (m-1)*rs+(k-1)*cs, b's (k-1)*rs+(n-1)*cs, c's (m-1)*ldc+n-1; c is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Geometry of a 2-D convolution or pooling window over a `[C, H, W]` sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Rows of the im2col matrix: `C·k·k`.
    pub fn patch_len(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
    /// Columns of the im2col matrix: `OH·OW`.
    pub fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }
}

/// Unfolds one sample `x[C,H,W]` into `col[C·k·k, OH·OW]` (row-major), `pad` outside.
pub fn im2col<T: Copy>(x: &[T], g: &Window, pad: T, col: &mut [T]) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let npos = oh * ow;
    let mut row = 0;
    for c in 0..g.channels {
        let plane = &x[c * g.height * g.width..(c + 1) * g.height * g.width];
        for ki in 0..g.kernel {
            for kj in 0..g.kernel {
                let dst = &mut col[row * npos..(row + 1) * npos];
                for oy in 0..oh {
                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                    let out = &mut dst[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= g.height as isize {
                        out.fill(pad);
                        continue;
                    }
                    let src = &plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        *o = if ix < 0 || ix >= g.width as isize { pad } else { src[ix as usize] };
                    }
                }
                row += 1;
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds `col[C·k·k, OH·OW]` back into `dx[C,H,W]`.
pub fn col2im_add(col: &[f32], g: &Window, dx: &mut [f32]) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let npos = oh * ow;
    let mut row = 0;
    for c in 0..g.channels {
        let plane = &mut dx[c * g.height * g.width..(c + 1) * g.height * g.width];
        for ki in 0..g.kernel {
            for kj in 0..g.kernel {
                let src = &col[row * npos..(row + 1) * npos];
                for oy in 0..oh {
                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                    if iy < 0 || iy >= g.height as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    for ox in 0..ow {
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        if ix >= 0 && ix < g.width as isize {
                            dst[ix as usize] += src[oy * ow + ox];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Max pooling of one sample `x[C,H,W]` into `y[C,OH,OW]` (no padding); when `argmax` is
/// given it receives the flat input index of each maximum (first one on ties).
pub fn maxpool<T: Copy + PartialOrd>(x: &[T], g: &Window, y: &mut [T], mut argmax: Option<&mut [u32]>) {
    let (oh, ow) = (g.out_height(), g.out_width());
    for c in 0..g.channels {
        let base = c * g.height * g.width;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best_i = base + oy * g.stride * g.width + ox * g.stride;
                let mut best = x[best_i];
                for ki in 0..g.kernel {
                    let row = base + (oy * g.stride + ki) * g.width + ox * g.stride;
                    for kj in 0..g.kernel {
                        if x[row + kj] > best {
                            best = x[row + kj];
                            best_i = row + kj;
                        }
                    }
                }
                let o = (c * oh + oy) * ow + ox;
                y[o] = best;
                if let Some(a) = argmax.as_deref_mut() {
                    a[o] = best_i as u32;
                }
            }
        }
    }
}

/// `y = (x − mean[c]) / std[c]` over samples of `sample_len` values, where `mean` and
/// `std` have one entry per channel (or one for all).
pub fn normalize(x: &[f32], mean: &[f32], std: &[f32], sample_len: usize, y: &mut [f32]) {
    let per = sample_len / mean.len();
    let inv: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
    for (xs, ys) in x.chunks_exact(sample_len).zip(y.chunks_exact_mut(sample_len)) {
        for (c, (xc, yc)) in xs.chunks_exact(per).zip(ys.chunks_exact_mut(per)).enumerate() {
            let (m, s) = (mean[c], inv[c]);
            yc.iter_mut().zip(xc).for_each(|(o, &i)| *o = (i - m) * s);
        }
    }
}

/// Row-wise softmax of `x[rows, n]` in place, max-subtracted for stability.
pub fn softmax_rows(x: &mut [f32], n: usize) {
    for row in x.chunks_exact_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]).sum();
            }
        }
        c
    }

    #[test]
    fn sgemm_matches_naive_with_transposes_and_accumulation() {
        let mut rng = Rng::new(3);
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (17, 10, 64), (64, 33, 5)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(1.0)).collect();
            for (av, bv) in [
                (MatRef::rows(&a, k), MatRef::rows(&b, n)),
                (MatRef::transposed(&a, m), MatRef::transposed(&b, k)),
            ] {
                let want = naive(m, n, k, av, bv);
                let mut c = vec![1.0; m * n];
                sgemm(m, n, k, av, bv, &mut c, n, false);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4);
                }
                sgemm(m, n, k, av, bv, &mut c, n, true);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for random x, c.
        let g = Window { channels: 2, height: 5, width: 6, kernel: 3, stride: 2, padding: 1 };
        let mut rng = Rng::new(9);
        let x: Vec<f32> = (0..2 * 5 * 6).map(|_| rng.uniform(1.0)).collect();
        let c: Vec<f32> = (0..g.patch_len() * g.positions()).map(|_| rng.uniform(1.0)).collect();
        let mut col = vec![0.0; c.len()];
        im2col(&x, &g, 0.0, &mut col);
        let mut back = vec![0.0; x.len()];
        col2im_add(&c, &g, &mut back);
        let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }

    #[test]
    fn maxpool_picks_the_max_and_its_index() {
        let g = Window { channels: 1, height: 2, width: 4, kernel: 2, stride: 2, padding: 0 };
        let x = [1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 9.0, 1.0];
        let mut y = [0.0; 2];
        let mut idx = [0u32; 2];
        maxpool(&x, &g, &mut y, Some(&mut idx));
        assert_eq!(y, [5.0, 9.0]);
        assert_eq!(idx, [1, 6]);
    }
}
