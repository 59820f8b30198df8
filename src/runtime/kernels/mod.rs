//! f32 kernels shared by the trainer and the inference runtime: matrix product,
//! im2col/col2im, max pooling. The matrix product is `gemm`'s single-threaded
//! kernel; parallelism is over the batch, one level up.
//!
//! Files: this one holds the matrix product and the window geometry; `im2col` the
//! convolution's data movement, `pool` pooling (`pool2x2_avx2` its AVX2 case),
//! `direct_conv` the direct convolution (`direct` its AVX2/FMA tiles), `elementwise`
//! the element-wise and row kernels.

mod direct_conv;
mod elementwise;
mod im2col;
mod pool;
#[cfg(target_arch = "x86_64")]
pub(crate) mod direct;
#[cfg(target_arch = "x86_64")]
mod pool2x2_avx2;
#[cfg(test)]
mod tests;

pub use direct_conv::{DirectConv, direct_weight_grad};
pub use elementwise::{argmax, normalize, sigmoid, softmax_rows, sum, tanh};
pub use im2col::{CONV_CHUNK_VALUES, col2im_add, col2im_add_batch, col2im_add_ld, conv2d_forward, conv_chunk, im2col, im2col_batch, im2col_ld, samples_to_channels};
pub use pool::{avgpool, avgpool_backward_add, maxpool};

pub(crate) use direct_conv::direct_tiles;

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
    sgemm_threads(m, n, k, a, b, c, ldc, accumulate, 1);
}

/// Products smaller than this many multiply-adds run on one thread: below it, waking a
/// second thread costs about as much as it saves.
pub const PARALLEL_MIN_MACS: usize = 1 << 18;

/// [`sgemm`] on up to `threads` threads of the rayon pool (gemm splits the product;
/// each output element is still one thread's sum in the same order, so the result does
/// not depend on `threads`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_threads(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool, threads: usize) {
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
            if threads > 1 && m * n * k >= PARALLEL_MIN_MACS { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
        );
    }
}

/// `c[m×n] = a[m×k] · b[k×n]` into the raw `c` (row stride `ldc`), single-threaded:
/// for callers that write disjoint column blocks of one matrix from several threads.
///
/// # Safety
/// `c` must be valid for writes at `r·ldc + j` for every `r < m`, `j < n`, and no other
/// thread may touch those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_raw(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: *mut f32, ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.fits(m, k) && b.fits(k, n), "sgemm_raw: operand too short for {m}×{k}·{k}×{n}");
    if k == 0 {
        for r in 0..m {
            // SAFETY: the caller guarantees row r's first n elements are ours to write.
            unsafe { std::ptr::write_bytes(c.add(r * ldc), 0, n) };
        }
        return;
    }
    // SAFETY: a and b are bounded by the assert; c by the caller's contract.
    unsafe {
        gemm::gemm(
            m, n, k, c, 1, ldc as isize, false, a.data.as_ptr(), a.cs as isize, a.rs as isize, b.data.as_ptr(), b.cs as isize, b.rs as isize, 1.0, 1.0, false,
            false, false, gemm::Parallelism::None,
        );
    }
}

/// A raw pointer that may cross to the rayon pool; every use says why its writes are
/// disjoint.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
// SAFETY: only used for writes to disjoint elements from the threads of one call.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Whether this CPU has AVX2 (im2col and col2im are compiled twice,
/// for the baseline and for AVX2, and pick at run time; results are identical).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    super::isa::avx2()
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

impl Window {
    /// For kernel offset `kj`, the output indices `[lo, hi)` (of `out` along a side of
    /// `len` inputs) whose input index `o·stride + kj − padding` lies inside `0..len`;
    /// the others read padding.
    #[inline]
    fn valid_range(&self, kj: usize, out: usize, len: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if p > kj { (p - kj).div_ceil(s) } else { 0 }.min(out);
        let hi = if len + p > kj { ((len - 1 + p - kj) / s + 1).min(out) } else { 0 };
        (lo, hi.max(lo))
    }
}
