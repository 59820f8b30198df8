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

/// Whether this CPU has AVX2 (the element-wise kernels below are compiled twice,
/// for the baseline and for AVX2, and pick at run time; results are identical).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
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

/// `n` values from `src` to `dst` in fixed-size unaligned blocks (the last one
/// overlapping), so that short spans are moved inline rather than by a `memcpy` call.
///
/// # Safety
/// `src[..n]` readable, `dst[..n]` writable, not overlapping.
#[inline(always)]
unsafe fn copy_span<T: Copy>(dst: *mut T, src: *const T, n: usize) {
    // SAFETY (all blocks): every block lies inside [0, n) of both spans.
    unsafe {
        if n >= 8 {
            let mut i = 0;
            while i + 8 <= n {
                (dst.add(i) as *mut [T; 8]).write_unaligned((src.add(i) as *const [T; 8]).read_unaligned());
                i += 8;
            }
            if i < n {
                (dst.add(n - 8) as *mut [T; 8]).write_unaligned((src.add(n - 8) as *const [T; 8]).read_unaligned());
            }
        } else if n >= 4 {
            (dst as *mut [T; 4]).write_unaligned((src as *const [T; 4]).read_unaligned());
            (dst.add(n - 4) as *mut [T; 4]).write_unaligned((src.add(n - 4) as *const [T; 4]).read_unaligned());
        } else {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
        }
    }
}

/// `dst[..n] += src[..n]`, in blocks that vectorize.
///
/// # Safety
/// `src[..n]` readable, `dst[..n]` writable, not overlapping.
#[inline(always)]
unsafe fn add_span(dst: *mut f32, src: *const f32, n: usize) {
    // SAFETY: every access is inside [0, n) of both spans.
    unsafe {
        let mut i = 0;
        while i + 8 <= n {
            let mut d = (dst.add(i) as *const [f32; 8]).read_unaligned();
            let v = (src.add(i) as *const [f32; 8]).read_unaligned();
            for j in 0..8 {
                d[j] += v[j];
            }
            (dst.add(i) as *mut [f32; 8]).write_unaligned(d);
            i += 8;
        }
        while i < n {
            *dst.add(i) += *src.add(i);
            i += 1;
        }
    }
}

/// Unfolds one sample `x[C,H,W]` into `col[C·k·k, OH·OW]` (row-major), `pad` outside.
pub fn im2col<T: Copy>(x: &[T], g: &Window, pad: T, col: &mut [T]) {
    im2col_ld(x, g, pad, col, g.positions());
}

/// [`im2col`] into a matrix with leading dimension `ld`: row `r = (c·k + ki)·k + kj`
/// of the sample's im2col matrix goes to `col[r·ld .. r·ld + OH·OW]`; the other columns
/// are left alone. Writing sample `s` of a batch at `col[s·OH·OW..]` with
/// `ld = n·OH·OW` builds the batch's matrix `[C·k·k, n·OH·OW]`.
pub fn im2col_ld<T: Copy>(x: &[T], g: &Window, pad: T, col: &mut [T], ld: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU.
        return unsafe { im2col_avx2(x, 1, g, pad, col, ld) };
    }
    im2col_impl(x, 1, g, pad, col, ld)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn im2col_avx2<T: Copy>(x: &[T], n: usize, g: &Window, pad: T, col: &mut [T], ld: usize) {
    im2col_impl(x, n, g, pad, col, ld)
}

/// im2col of `n` samples into one matrix with leading dimension `ld`, sample `s`'s
/// columns at `s·OH·OW`. Row by row, all samples, so the writes run contiguously.
#[inline(always)]
fn im2col_impl<T: Copy>(x: &[T], n: usize, g: &Window, pad: T, col: &mut [T], ld: usize) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let npos = oh * ow;
    let (w, hw, s, p) = (g.width, g.height * g.width, g.stride, g.padding);
    let xlen = g.channels * hw;
    assert!(x.len() >= n * xlen, "im2col: input too short");
    assert!(ld >= n * npos && col.len() >= (g.patch_len() - 1) * ld + n * npos, "im2col: output too short");
    let (xp, cp) = (x.as_ptr(), col.as_mut_ptr());
    for c in 0..g.channels {
        for ki in 0..g.kernel {
            let (y0, y1) = g.valid_range(ki, oh, g.height);
            for kj in 0..g.kernel {
                let (x0, x1) = g.valid_range(kj, ow, w);
                let row = (c * g.kernel + ki) * g.kernel + kj;
                for smp in 0..n {
                    // SAFETY: the asserts above: the row's `n·npos` values start at
                    // row·ld with row < C·k·k; output (smp, oy, ox) is at smp·npos +
                    // oy·ow + ox < n·npos. Inputs are read only for oy in [y0, y1), ox in
                    // [x0, x1), where the input row oy·s + ki − p and column ox·s + kj − p
                    // lie inside the plane of channel c < C (valid_range) of sample smp < n.
                    unsafe {
                        let dst = cp.add(row * ld + smp * npos);
                        let plane = xp.add(smp * xlen + c * hw);
                        for oy in 0..oh {
                            let d = dst.add(oy * ow);
                            if oy < y0 || oy >= y1 {
                                for i in 0..ow {
                                    *d.add(i) = pad;
                                }
                                continue;
                            }
                            for i in (0..x0).chain(x1..ow) {
                                *d.add(i) = pad;
                            }
                            if x1 > x0 {
                                let src = plane.add((oy * s + ki - p) * w + x0 * s + kj - p);
                                if s == 1 {
                                    copy_span(d.add(x0), src, x1 - x0);
                                } else {
                                    for i in 0..x1 - x0 {
                                        *d.add(x0 + i) = *src.add(i * s);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col_ld`] for `n` samples `x[n, C, H, W]`: `col[C·k·k, n·OH·OW]`, the
/// columns of sample `s` at `s·OH·OW`.
pub fn im2col_batch<T: Copy>(x: &[T], n: usize, g: &Window, pad: T, col: &mut [T]) {
    let ld = n * g.positions();
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU.
        return unsafe { im2col_avx2(x, n, g, pad, col, ld) };
    }
    im2col_impl(x, n, g, pad, col, ld)
}

/// The adjoint of [`im2col`]: adds `col[C·k·k, OH·OW]` back into `dx[C,H,W]`.
pub fn col2im_add(col: &[f32], g: &Window, dx: &mut [f32]) {
    col2im_add_ld(col, g, dx, g.positions());
}

/// The adjoint of [`im2col_ld`]: adds the sample's columns of `col` (leading
/// dimension `ld`) back into `dx[C,H,W]`.
pub fn col2im_add_ld(col: &[f32], g: &Window, dx: &mut [f32], ld: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU.
        return unsafe { col2im_avx2(col, 1, g, dx, ld) };
    }
    col2im_impl(col, 1, g, dx, ld)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn col2im_avx2(col: &[f32], n: usize, g: &Window, dx: &mut [f32], ld: usize) {
    col2im_impl(col, n, g, dx, ld)
}

/// The adjoint of [`im2col_impl`]: `n` samples, row by row.
#[inline(always)]
fn col2im_impl(col: &[f32], n: usize, g: &Window, dx: &mut [f32], ld: usize) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let npos = oh * ow;
    let (w, hw, s, p) = (g.width, g.height * g.width, g.stride, g.padding);
    let xlen = g.channels * hw;
    assert!(dx.len() >= n * xlen, "col2im: output too short");
    assert!(ld >= n * npos && col.len() >= (g.patch_len() - 1) * ld + n * npos, "col2im: input too short");
    let (cp, dp) = (col.as_ptr(), dx.as_mut_ptr());
    for c in 0..g.channels {
        for ki in 0..g.kernel {
            let (y0, y1) = g.valid_range(ki, oh, g.height);
            for kj in 0..g.kernel {
                let (x0, x1) = g.valid_range(kj, ow, w);
                if x1 == x0 {
                    continue;
                }
                let row = (c * g.kernel + ki) * g.kernel + kj;
                for smp in 0..n {
                    // SAFETY: as in im2col_impl, with the roles of input and output swapped.
                    unsafe {
                        let src = cp.add(row * ld + smp * npos);
                        let plane = dp.add(smp * xlen + c * hw);
                        for oy in y0..y1 {
                            let sr = src.add(oy * ow + x0);
                            let d = plane.add((oy * s + ki - p) * w + x0 * s + kj - p);
                            if s == 1 {
                                add_span(d, sr, x1 - x0);
                            } else {
                                for i in 0..x1 - x0 {
                                    *d.add(i * s) += *sr.add(i);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`col2im_add_ld`] for `n` samples: adds `col[C·k·k, n·OH·OW]` into `dx[n, C, H, W]`.
pub fn col2im_add_batch(col: &[f32], n: usize, g: &Window, dx: &mut [f32]) {
    let ld = n * g.positions();
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU.
        return unsafe { col2im_avx2(col, n, g, dx, ld) };
    }
    col2im_impl(col, n, g, dx, ld)
}

/// How many im2col values a batched convolution builds at once: a chunk of samples
/// whose column matrix (and product) stay in the L2 cache.
pub const CONV_CHUNK_VALUES: usize = 96 * 1024;

/// Samples per chunk of a batched convolution over window `g` (at least 1).
pub fn conv_chunk(g: &Window) -> usize {
    (CONV_CHUNK_VALUES / (g.patch_len() * g.positions()).max(1)).max(1)
}

/// Convolution of `n` samples `x[n, C, H, W]` with `w[oc, C·k·k]` plus `bias` into
/// `y[n, oc, OH·OW]`, batched: the batch's im2col matrix is built in `col`
/// (`[C·k·k, n·OH·OW]`, left there for a backward pass), one matrix product writes
/// `tmp` (`[oc, n·OH·OW]`; not used for a single sample) and is scattered into `y`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(x: &[f32], n: usize, g: &Window, w: &[f32], bias: Option<&[f32]>, oc: usize, col: &mut [f32], tmp: &mut [f32], y: &mut [f32]) {
    let (pl, q) = (g.patch_len(), g.positions());
    let nq = n * q;
    let col = &mut col[..pl * nq];
    im2col_batch(x, n, g, 0.0, col);
    if n == 1 {
        let y = &mut y[..oc * q];
        sgemm(oc, q, pl, MatRef::rows(w, pl), MatRef::rows(col, q), y, q, false);
        if let Some(b) = bias {
            for (plane, &bb) in y.chunks_exact_mut(q).zip(b) {
                plane.iter_mut().for_each(|v| *v += bb);
            }
        }
        return;
    }
    let tmp = &mut tmp[..oc * nq];
    sgemm(oc, nq, pl, MatRef::rows(w, pl), MatRef::rows(col, nq), tmp, nq, false);
    for (o, trow) in tmp.chunks_exact(nq).enumerate() {
        let bb = bias.map_or(0.0, |b| b[o]);
        for (s, src) in trow.chunks_exact(q).enumerate() {
            let dst = &mut y[(s * oc + o) * q..(s * oc + o + 1) * q];
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + bb);
        }
    }
}

/// `out[c, s·len + i] = x[s, c, i]`: `n` samples of `channels × len` values into one
/// channel-major matrix `[channels, n·len]` (the layout of a batched convolution's
/// product).
pub fn samples_to_channels(x: &[f32], n: usize, channels: usize, len: usize, out: &mut [f32]) {
    let nl = n * len;
    for (c, orow) in out[..channels * nl].chunks_exact_mut(nl).enumerate() {
        for (s, dst) in orow.chunks_exact_mut(len).enumerate() {
            dst.copy_from_slice(&x[(s * channels + c) * len..(s * channels + c + 1) * len]);
        }
    }
}

/// Max pooling of one sample `x[C,H,W]` into `y[C,OH,OW]`; padding (smaller than the
/// kernel) never wins, so each window's maximum is over its inputs inside the map.
/// When `argmax` is given it receives the flat input index of each maximum (first one
/// on ties).
pub fn maxpool<T: Copy + PartialOrd + 'static>(x: &[T], g: &Window, y: &mut [T], argmax: Option<&mut [u32]>) {
    let (oh, ow) = (g.out_height(), g.out_width());
    assert!(x.len() >= g.channels * g.height * g.width && y.len() >= g.channels * oh * ow, "maxpool: buffer too short");
    if g.padding > 0 {
        assert!(g.padding < g.kernel, "maxpool: padding must be smaller than the kernel");
        return match argmax {
            Some(a) => maxpool_padded::<T, true>(x, g, y, a),
            None => maxpool_padded::<T, false>(x, g, y, &mut []),
        };
    }
    match argmax {
        Some(a) => {
            assert!(a.len() >= g.channels * oh * ow, "maxpool: argmax too short");
            if g.kernel == 2 && g.stride == 2 {
                maxpool_2x2::<T, true>(x, g, y, a)
            } else {
                maxpool_any::<T, true>(x, g, y, a)
            }
        }
        None if g.kernel == 2 && g.stride == 2 => {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                use std::any::TypeId;
                let n = g.channels * g.height * g.width;
                let m = g.channels * oh * ow;
                // SAFETY: T is exactly the type the slices are viewed as (TypeId), the
                // lengths were asserted above, and AVX2 is available.
                unsafe {
                    if TypeId::of::<T>() == TypeId::of::<f32>() {
                        let (x, y) = (std::slice::from_raw_parts(x.as_ptr() as *const f32, n), std::slice::from_raw_parts_mut(y.as_mut_ptr() as *mut f32, m));
                        return pool2x2_avx2::f32(x, g, y);
                    }
                    if TypeId::of::<T>() == TypeId::of::<u8>() {
                        let (x, y) = (std::slice::from_raw_parts(x.as_ptr() as *const u8, n), std::slice::from_raw_parts_mut(y.as_mut_ptr() as *mut u8, m));
                        return pool2x2_avx2::u8(x, g, y);
                    }
                }
            }
            maxpool_2x2::<T, false>(x, g, y, &mut [])
        }
        None => maxpool_any::<T, false>(x, g, y, &mut []),
    }
}

/// 2×2, stride-2 max pooling without argmax on AVX2, 8 (f32) or 16 (u8) outputs at a
/// time; the same comparisons in the same order as [`maxpool_2x2`], so the same values.
///
/// Blocks of outputs may run past the end of an output row: the extra lanes read the
/// following input rows and write outputs that the next blocks (in increasing order)
/// overwrite with their right values. Only the last block of the whole buffer, where
/// that would leave the slices, goes through zero-padded copies.
#[cfg(target_arch = "x86_64")]
mod pool2x2_avx2 {
    use super::Window;
    use std::arch::x86_64::*;

    /// `N` values of `src` from `at`, zero-filled past its end.
    fn padded<T: Copy + Default, const N: usize>(src: &[T], at: usize) -> [T; N] {
        let mut t = [T::default(); N];
        for (d, &v) in t.iter_mut().zip(src.get(at..).unwrap_or(&[])) {
            *d = v;
        }
        t
    }

    /// 8 outputs from 16 values of the two input rows at `p0`, `p1`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn block_f32(p0: *const f32, p1: *const f32, out: *mut f32) {
        // SAFETY: the caller guarantees 16 readable values at p0 and p1, 8 writable at out.
        unsafe {
            let split = |p: *const f32| {
                let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                let even = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b))));
                let odd = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_shuffle_ps::<0xDD>(a, b))));
                (even, odd)
            };
            let (a, b) = split(p0);
            let (c, d) = split(p1);
            // max_ps(v, m) is `v > m ? v : m`: the scalar `if v > best`, in the same order.
            _mm256_storeu_ps(out, _mm256_max_ps(d, _mm256_max_ps(c, _mm256_max_ps(b, a))));
        }
    }

    /// 16 outputs from 32 values of the two input rows.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn block_u8(p0: *const u8, p1: *const u8, out: *mut u8) {
        // SAFETY: the caller guarantees 32 readable bytes at p0 and p1, 16 writable at out.
        unsafe {
            let low = _mm256_set1_epi16(0xFF);
            let a = _mm256_loadu_si256(p0 as *const __m256i);
            let b = _mm256_loadu_si256(p1 as *const __m256i);
            // Pairs (even, odd byte) as u16: the max of the four of each output.
            let m = _mm256_max_epu16(
                _mm256_max_epu16(_mm256_and_si256(a, low), _mm256_srli_epi16::<8>(a)),
                _mm256_max_epu16(_mm256_and_si256(b, low), _mm256_srli_epi16::<8>(b)),
            );
            let packed = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(m, m));
            _mm_storeu_si128(out as *mut __m128i, _mm256_castsi256_si128(packed));
        }
    }

    macro_rules! pool_impl {
        ($name:ident, $t:ty, $lanes:expr, $block:ident) => {
            #[target_feature(enable = "avx2")]
            pub(super) fn $name(x: &[$t], g: &Window, y: &mut [$t]) {
                const L: usize = $lanes;
                let (oh, ow, w) = (g.out_height(), g.out_width(), g.width);
                assert!(x.len() >= g.channels * g.height * w && y.len() >= g.channels * oh * ow);
                for c in 0..g.channels {
                    for oy in 0..oh {
                        let r0 = (c * g.height + 2 * oy) * w;
                        let o0 = (c * oh + oy) * ow;
                        for ox in (0..ow).step_by(L) {
                            let (i0, i1, o) = (r0 + 2 * ox, r0 + w + 2 * ox, o0 + ox);
                            if i1 + 2 * L <= x.len() && o + L <= y.len() {
                                // SAFETY: bounds just checked (i0 < i1).
                                unsafe { $block(x.as_ptr().add(i0), x.as_ptr().add(i1), y.as_mut_ptr().add(o)) }
                            } else {
                                let (a, b) = (padded::<$t, { 2 * L }>(x, i0), padded::<$t, { 2 * L }>(x, i1));
                                let mut out = [<$t>::default(); L];
                                // SAFETY: local arrays of the right sizes.
                                unsafe { $block(a.as_ptr(), b.as_ptr(), out.as_mut_ptr()) }
                                let n = (ow - ox).min(L);
                                y[o..o + n].copy_from_slice(&out[..n]);
                            }
                        }
                    }
                }
            }
        };
    }
    pool_impl!(f32, f32, 8, block_f32);
    pool_impl!(u8, u8, 16, block_u8);
}

/// Any window; `ARG` says whether `argmax` is written.
fn maxpool_any<T: Copy + PartialOrd, const ARG: bool>(x: &[T], g: &Window, y: &mut [T], argmax: &mut [u32]) {
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
                if ARG {
                    argmax[o] = best_i as u32;
                }
            }
        }
    }
}

/// Any window with padding: only the taps inside the map count (every window holds
/// one, as the padding is smaller than the kernel).
fn maxpool_padded<T: Copy + PartialOrd, const ARG: bool>(x: &[T], g: &Window, y: &mut [T], argmax: &mut [u32]) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let (h, w, p) = (g.height as isize, g.width as isize, g.padding as isize);
    for c in 0..g.channels {
        let base = c * g.height * g.width;
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, x0) = ((oy * g.stride) as isize - p, (ox * g.stride) as isize - p);
                let mut best: Option<(T, usize)> = None;
                for iy in y0.max(0)..(y0 + g.kernel as isize).min(h) {
                    for ix in x0.max(0)..(x0 + g.kernel as isize).min(w) {
                        let i = base + (iy * w + ix) as usize;
                        if best.is_none_or(|(b, _)| x[i] > b) {
                            best = Some((x[i], i));
                        }
                    }
                }
                let (v, i) = best.expect("a window with padding smaller than the kernel holds an input");
                let o = (c * oh + oy) * ow + ox;
                y[o] = v;
                if ARG {
                    argmax[o] = i as u32;
                }
            }
        }
    }
}

/// The common 2×2, stride 2 window, same results as [`maxpool_any`].
fn maxpool_2x2<T: Copy + PartialOrd, const ARG: bool>(x: &[T], g: &Window, y: &mut [T], argmax: &mut [u32]) {
    let (oh, ow, w) = (g.out_height(), g.out_width(), g.width);
    for c in 0..g.channels {
        let base = c * g.height * w;
        for oy in 0..oh {
            let r0 = base + 2 * oy * w;
            let (x0, x1) = (&x[r0..r0 + 2 * ow], &x[r0 + w..r0 + w + 2 * ow]);
            let o0 = (c * oh + oy) * ow;
            let yr = &mut y[o0..o0 + ow];
            for ox in 0..ow {
                let i = 2 * ox;
                let (mut best, mut off) = (x0[i], 0);
                if x0[i + 1] > best {
                    best = x0[i + 1];
                    off = 1;
                }
                if x1[i] > best {
                    best = x1[i];
                    off = w;
                }
                if x1[i + 1] > best {
                    best = x1[i + 1];
                    off = w + 1;
                }
                yr[ox] = best;
                if ARG {
                    argmax[o0 + ox] = (r0 + i + off) as u32;
                }
            }
        }
    }
}

/// `y = (x − mean[c]) / std[c]` over samples of `sample_len` values, where `mean` and
/// `std` have one entry per channel (or one for all).
pub fn normalize(x: &[f32], mean: &[f32], std: &[f32], sample_len: usize, y: &mut [f32]) {
    let per = sample_len / mean.len();
    for (xs, ys) in x.chunks_exact(sample_len).zip(y.chunks_exact_mut(sample_len)) {
        for (c, (xc, yc)) in xs.chunks_exact(per).zip(ys.chunks_exact_mut(per)).enumerate() {
            // The reciprocal per channel here rather than in a Vec: no allocation per call.
            let (m, s) = (mean[c], 1.0 / std[c]);
            yc.iter_mut().zip(xc).for_each(|(o, &i)| *o = (i - m) * s);
        }
    }
}

/// Sum of `x` in 16 interleaved partial sums (vectorizes; the order is fixed, so the
/// result is deterministic).
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &v)| *a += v);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
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

// ---------------------------------------------------------------------------------
// Direct convolution (AVX2 + FMA)
// ---------------------------------------------------------------------------------

/// Splits `len` into the fewest tiles of at most `max`, as equal as possible:
/// yields (start, size).
pub(crate) fn direct_tiles(len: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let t = len.div_ceil(max).max(1);
    let (base, extra) = (len / t, len % t);
    (0..t).scan(0, move |start, i| {
        let size = base + (i < extra) as usize;
        let s = *start;
        *start += size;
        Some((s, size))
    })
}

/// Output channels per vector of the direct kernels.
const LANES: usize = 8;

/// Copies sample `x[C,H,W]` into `xp[C, H+2p, W+2p]` with zero borders.
fn pad_sample(x: &[f32], g: &Window, xp: &mut [f32]) {
    let (h, w, p) = (g.height, g.width, g.padding);
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    for c in 0..g.channels {
        let plane = &mut xp[c * hp * wp..(c + 1) * hp * wp];
        plane[..p * wp].fill(0.0);
        plane[(p + h) * wp..].fill(0.0);
        for iy in 0..h {
            let row = &mut plane[(p + iy) * wp..(p + iy + 1) * wp];
            row[..p].fill(0.0);
            row[p + w..].fill(0.0);
            row[p..p + w].copy_from_slice(&x[(c * h + iy) * w..(c * h + iy + 1) * w]);
        }
    }
}

/// A stride-1 convolution prepared for the direct kernel: no im2col matrix, each
/// output tile (up to 12 positions of one output row × 8 or 16 output channels) is
/// accumulated in registers straight from the zero-padded input, one FMA per weight
/// and position. Built only where AVX2 and FMA are available ([`DirectConv::new`]).
#[derive(Clone, Debug)]
pub struct DirectConv {
    g: Window,
    oc: usize,
    /// Vectors of 8 output channels per block (1 or 2).
    nv: usize,
    blocks: usize,
    /// Offset in the padded input of each patch element `(c, ki, kj)`.
    koff: Vec<usize>,
    /// Weights per block of `nv·8` output channels: `[patch element][nv·8]`, zero-padded.
    w: Vec<f32>,
    /// Bias per block, `nv·8` values, zero-padded.
    bias: Vec<f32>,
    /// How an output row is cut into tiles: (first column, positions).
    row_tiles: Vec<(usize, usize)>,
}

impl DirectConv {
    /// Prepares `w[oc, C·k·k]` and `bias` for window `g`, or `None` where the kernel
    /// does not apply (stride other than 1, or a CPU without AVX2/FMA).
    pub fn new(g: &Window, w: &[f32], bias: Option<&[f32]>, oc: usize) -> Option<DirectConv> {
        if !Self::available() || g.stride != 1 || oc == 0 {
            return None;
        }
        let nv = if oc <= LANES { 1 } else { 2 };
        let (hp, wp) = (g.height + 2 * g.padding, g.width + 2 * g.padding);
        let mut koff = Vec::with_capacity(g.patch_len());
        for c in 0..g.channels {
            for ki in 0..g.kernel {
                for kj in 0..g.kernel {
                    koff.push(c * hp * wp + ki * wp + kj);
                }
            }
        }
        let ow = g.out_width();
        // One vector of channels: tiles of 8 positions (the last one overlapping its
        // neighbour: the same values are written twice); two: up to 6.
        let row_tiles = if nv == 1 && ow >= 8 {
            (0..ow - 8).step_by(8).chain(std::iter::once(ow - 8)).map(|x| (x, 8)).collect()
        } else {
            direct_tiles(ow, if nv == 1 { 8 } else { 6 }).collect()
        };
        let blocks = oc.div_ceil(nv * LANES);
        let mut d = DirectConv { g: *g, oc, nv, blocks, koff, w: Vec::new(), bias: Vec::new(), row_tiles };
        d.set_weights(w, bias);
        Some(d)
    }

    /// Whether this CPU runs the direct kernels.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2() && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Repacks new weights of the same shape (the trainer does this every step).
    pub fn set_weights(&mut self, w: &[f32], bias: Option<&[f32]>) {
        let (pl, bw) = (self.g.patch_len(), self.nv * LANES);
        assert_eq!(w.len(), self.oc * pl, "DirectConv: weight size");
        self.w.clear();
        self.w.resize(self.blocks * pl * bw, 0.0);
        self.bias.clear();
        self.bias.resize(self.blocks * bw, 0.0);
        for o in 0..self.oc {
            let (blk, lane) = (o / bw, o % bw);
            for kk in 0..pl {
                self.w[(blk * pl + kk) * bw + lane] = w[o * pl + kk];
            }
            self.bias[blk * bw + lane] = bias.map_or(0.0, |b| b[o]);
        }
    }

    /// Padded input length of one sample.
    fn padded_len(&self) -> usize {
        self.g.channels * (self.g.height + 2 * self.g.padding) * (self.g.width + 2 * self.g.padding)
    }

    /// `y[n, oc, OH·OW]` = the convolution of `x[n, C, H, W]` plus bias.
    /// `scratch` holds one padded sample (grown as needed).
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Vec<f32>) {
        let g = &self.g;
        let (xl, yl) = (g.channels * g.height * g.width, self.oc * g.positions());
        assert!(x.len() >= n * xl && y.len() >= n * yl, "DirectConv::forward: buffer too short");
        let plen = self.padded_len();
        if g.padding > 0 && scratch.len() < plen {
            scratch.resize(plen, 0.0);
        }
        for s in 0..n {
            let xs = &x[s * xl..(s + 1) * xl];
            let xp: &[f32] = if g.padding > 0 {
                pad_sample(xs, g, &mut scratch[..plen]);
                &scratch[..plen]
            } else {
                xs
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `new` only builds a DirectConv where AVX2 and FMA are available;
            // `xp` is one padded sample and `y` one output sample (asserted above).
            unsafe {
                direct::forward_sample(self, xp, &mut y[s * yl..(s + 1) * yl])
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("DirectConv is only built on x86_64");
        }
    }
}

/// The weight (and bias) gradient of a stride-1 convolution by the direct kernel:
/// `dw[oc, C·k·k] += Σ dy[s, oc, pos] · x[s, c, pos + (ki, kj)]` and `db[oc] += Σ dy`
/// over `n` samples, without an im2col matrix. `scratch` is grown as needed. Returns
/// `false` (and does nothing) where the kernel does not apply.
#[allow(clippy::too_many_arguments)]
pub fn direct_weight_grad(g: &Window, oc: usize, x: &[f32], dy: &[f32], n: usize, dw: &mut [f32], db: Option<&mut [f32]>, scratch: &mut Vec<f32>) -> bool {
    if !DirectConv::available() || g.stride != 1 || oc == 0 {
        return false;
    }
    let (pl, q) = (g.patch_len(), g.positions());
    let (xl, yl) = (g.channels * g.height * g.width, oc * q);
    assert!(x.len() >= n * xl && dy.len() >= n * yl && dw.len() >= oc * pl, "direct_weight_grad: buffer too short");
    let nv = if oc <= LANES { 1 } else { 2 };
    let bw = nv * LANES;
    let blocks = oc.div_ceil(bw);
    let (hp, wp) = (g.height + 2 * g.padding, g.width + 2 * g.padding);
    let plen = g.channels * hp * wp;
    // scratch: padded sample | dy transposed [pos][blocks·bw] | gradient [blocks][pl][bw]
    let need = plen + q * blocks * bw + blocks * pl * bw;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (xp, rest) = scratch.split_at_mut(plen);
    let (dyt, acc) = rest.split_at_mut(q * blocks * bw);
    let acc = &mut acc[..blocks * pl * bw];
    acc.fill(0.0);
    dyt.fill(0.0);
    for s in 0..n {
        let xs = &x[s * xl..(s + 1) * xl];
        let xps: &[f32] = if g.padding > 0 {
            pad_sample(xs, g, xp);
            xp
        } else {
            xs
        };
        let dys = &dy[s * yl..(s + 1) * yl];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was checked above.
        unsafe {
            direct::to_lanes(dys, oc, q, bw, dyt)
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were checked above; the buffers have the sizes the
        // kernel reads (one padded sample, q·blocks·bw transposed gradients,
        // blocks·pl·bw accumulators).
        unsafe {
            direct::weight_grad_sample(g, nv, blocks, xps, dyt, acc)
        }
    }
    for o in 0..oc {
        let (blk, lane) = (o / bw, o % bw);
        for kk in 0..pl {
            dw[o * pl + kk] += acc[(blk * pl + kk) * bw + lane];
        }
    }
    if let Some(db) = db {
        for s in 0..n {
            for (d, row) in db.iter_mut().zip(dy[s * yl..(s + 1) * yl].chunks_exact(q)) {
                *d += sum(row);
            }
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod direct {
    //! The AVX2/FMA tiles. Callers have checked the features; inside, the unsafe
    //! operations are unaligned loads/stores whose bounds the drivers assert.

    use super::{DirectConv, Window, LANES};
    use std::arch::x86_64::*;

    /// The largest tile: accumulators `R · NV ≤ 12` of the 16 vector registers.
    const MAX_ACC: usize = 12;

    /// For `R` consecutive positions of one output row starting at `x` and the block's
    /// `NV·8` channels: `bias + Σ_kk w[kk][..] · x[koff[kk] + r]`, transposed in
    /// registers and stored as `y[lane·q + r]` for `lane < lanes`, `r < R`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn fwd_tile<const NV: usize, const R: usize>(x: *const f32, koff: &[usize], w: *const f32, bias: *const f32, y: *mut f32, q: usize, lanes: usize) {
        // SAFETY: the caller guarantees x[koff[kk] + r] for r < R, w[kk·NV·8 + ..NV·8]
        // for kk < koff.len() and bias[..NV·8] are readable, and y[lane·q + ..R]
        // writable for lane < lanes.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NV]; R];
            for a in acc.iter_mut() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(bias.add(v * LANES));
                }
            }
            for (kk, &off) in koff.iter().enumerate() {
                let wp = w.add(kk * NV * LANES);
                let mut wv = [_mm256_setzero_ps(); NV];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm256_loadu_ps(wp.add(v * LANES));
                }
                let xp = x.add(off);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*xp.add(r));
                    for (a, w) in a.iter_mut().zip(&wv) {
                        *a = _mm256_fmadd_ps(xv, *w, *a);
                    }
                }
            }
            for v in 0..NV {
                let mut rows = [_mm256_setzero_ps(); 8];
                for (row, a) in rows.iter_mut().zip(&acc) {
                    *row = a[v];
                }
                let t = transpose8(rows);
                for (lane, tv) in t.iter().enumerate().take(lanes.saturating_sub(v * LANES)) {
                    let p = y.add((v * LANES + lane) * q);
                    if R == 8 {
                        _mm256_storeu_ps(p, *tv);
                    } else {
                        let mut tmp = [0.0f32; 8];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), *tv);
                        for (i, &val) in tmp.iter().enumerate().take(R) {
                            *p.add(i) = val;
                        }
                    }
                }
            }
        }
    }

    /// 8×8 transpose: `out[j]` lane `i` = `r[i]` lane `j`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Calls `$f::<NV, R>` for a run-time `r` in 1..=8 (`NV = 1`) or 1..=6 (`NV = 2`).
    macro_rules! dispatch_fwd {
        ($nv:expr, $r:expr, $f:ident ( $($arg:expr),* )) => {
            match ($nv, $r) {
                (1, 1) => $f::<1, 1>($($arg),*),
                (1, 2) => $f::<1, 2>($($arg),*),
                (1, 3) => $f::<1, 3>($($arg),*),
                (1, 4) => $f::<1, 4>($($arg),*),
                (1, 5) => $f::<1, 5>($($arg),*),
                (1, 6) => $f::<1, 6>($($arg),*),
                (1, 7) => $f::<1, 7>($($arg),*),
                (1, 8) => $f::<1, 8>($($arg),*),
                (2, 1) => $f::<2, 1>($($arg),*),
                (2, 2) => $f::<2, 2>($($arg),*),
                (2, 3) => $f::<2, 3>($($arg),*),
                (2, 4) => $f::<2, 4>($($arg),*),
                (2, 5) => $f::<2, 5>($($arg),*),
                (2, 6) => $f::<2, 6>($($arg),*),
                _ => unreachable!("tile {}x{}", $nv, $r),
            }
        };
    }

    /// Calls `$f::<NV, R>` for a run-time `r` in 1..=12 (`NV = 1`) or 1..=6 (`NV = 2`).
    macro_rules! dispatch_dw {
        ($nv:expr, $r:expr, $f:ident ( $($arg:expr),* )) => {
            match ($nv, $r) {
                (1, 9) => $f::<1, 9>($($arg),*),
                (1, 10) => $f::<1, 10>($($arg),*),
                (1, 11) => $f::<1, 11>($($arg),*),
                (1, 12) => $f::<1, 12>($($arg),*),
                (nv, r) => dispatch_fwd!(nv, r, $f($($arg),*)),
            }
        };
    }

    /// One sample: `xp` padded input `[C, H+2p, W+2p]`, `y` output `[oc, OH·OW]`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `xp` must hold the padded sample and `y`
    /// `oc·OH·OW` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_sample(d: &DirectConv, xp: &[f32], y: &mut [f32]) {
        let g = &d.g;
        let (oh, ow) = (g.out_height(), g.out_width());
        let (q, wp, pl, bw) = (oh * ow, g.width + 2 * g.padding, g.patch_len(), d.nv * LANES);
        assert!(xp.len() >= d.padded_len() && y.len() >= d.oc * q);
        assert!(d.w.len() >= d.blocks * pl * bw && d.bias.len() >= d.blocks * bw && d.koff.len() == pl);
        for blk in 0..d.blocks {
            let (w, bias) = (d.w[blk * pl * bw..].as_ptr(), d.bias[blk * bw..].as_ptr());
            let lanes = bw.min(d.oc - blk * bw);
            for oy in 0..oh {
                for &(ox0, r) in &d.row_tiles {
                    // SAFETY: the tile's windows are rows oy..oy+k and columns
                    // ox0..ox0+r+k-1 of the padded planes: inside xp. The weights and
                    // bias of the block are inside d.w / d.bias (asserted); the outputs
                    // y[(blk·bw + lane)·q + oy·ow + ox0 + ..r] with ox0 + r <= ow and
                    // blk·bw + lane < oc are inside y.
                    unsafe {
                        let x = xp.as_ptr().add(oy * wp + ox0);
                        let y0 = y.as_mut_ptr().add(blk * bw * q + oy * ow + ox0);
                        dispatch_fwd!(d.nv, r, fwd_tile(x, &d.koff, w, bias, y0, q, lanes));
                    }
                }
            }
        }
    }

    /// `acc[r][v·8..] += Σ_pos dyt[pos][v·8..] · x[base(pos) + off0 + r]` over the
    /// output positions of one sample, `U` positions per step in separate
    /// accumulators (so that short tiles still keep enough FMAs in flight).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dw_tile<const NV: usize, const R: usize>(x: *const f32, oh: usize, ow: usize, wp: usize, dyt: *const f32, acc_out: *mut f32) {
        // SAFETY: the caller guarantees x[oy·wp + ox + r] (oy < oh, ox < ow, r < R),
        // dyt[(oy·ow + ox)·NV·8 + ..NV·8] and acc_out[..R·NV·8] are valid.
        unsafe {
            let mut a0 = [[_mm256_setzero_ps(); NV]; R];
            let mut a1 = [[_mm256_setzero_ps(); NV]; R];
            let two = R * NV <= 6;
            for oy in 0..oh {
                let xr = x.add(oy * wp);
                let dr = dyt.add(oy * ow * NV * LANES);
                let mut ox = 0;
                if two {
                    while ox + 2 <= ow {
                        for (u, acc) in [&mut a0, &mut a1].into_iter().enumerate() {
                            let mut dv = [_mm256_setzero_ps(); NV];
                            for (v, dv) in dv.iter_mut().enumerate() {
                                *dv = _mm256_loadu_ps(dr.add(((ox + u) * NV + v) * LANES));
                            }
                            let xp = xr.add(ox + u);
                            for (r, a) in acc.iter_mut().enumerate() {
                                let xv = _mm256_broadcast_ss(&*xp.add(r));
                                for v in 0..NV {
                                    a[v] = _mm256_fmadd_ps(xv, dv[v], a[v]);
                                }
                            }
                        }
                        ox += 2;
                    }
                }
                while ox < ow {
                    let mut dv = [_mm256_setzero_ps(); NV];
                    for (v, dv) in dv.iter_mut().enumerate() {
                        *dv = _mm256_loadu_ps(dr.add((ox * NV + v) * LANES));
                    }
                    let xp = xr.add(ox);
                    for (r, a) in a0.iter_mut().enumerate() {
                        let xv = _mm256_broadcast_ss(&*xp.add(r));
                        for v in 0..NV {
                            a[v] = _mm256_fmadd_ps(xv, dv[v], a[v]);
                        }
                    }
                    ox += 1;
                }
            }
            for r in 0..R {
                for v in 0..NV {
                    let p = acc_out.add((r * NV + v) * LANES);
                    let sum = _mm256_add_ps(a0[r][v], a1[r][v]);
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), sum));
                }
            }
        }
    }

    /// `dyt[(blk·q + pos)·bw + lane] = dy[(blk·bw + lane)·q + pos]`: a sample's
    /// `[oc, q]` values as `[blocks][q][bw]`, 8×8 blocks transposed in registers.
    /// Lanes past `oc` are written as zero.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to_lanes(dy: &[f32], oc: usize, q: usize, bw: usize, dyt: &mut [f32]) {
        let blocks = oc.div_ceil(bw);
        assert!(dy.len() >= oc * q && dyt.len() >= blocks * q * bw && bw.is_multiple_of(LANES));
        for o0 in (0..blocks * bw).step_by(LANES) {
            let (blk, v) = (o0 / bw, (o0 % bw) / LANES);
            let valid = oc.saturating_sub(o0).min(LANES);
            let mut pos0 = 0;
            while pos0 + LANES <= q {
                let mut rows = [_mm256_setzero_ps(); 8];
                for (i, r) in rows.iter_mut().enumerate().take(valid) {
                    // SAFETY: channel o0 + i < oc, positions pos0..pos0+8 <= q.
                    *r = unsafe { _mm256_loadu_ps(dy.as_ptr().add((o0 + i) * q + pos0)) };
                }
                for (j, t) in transpose8(rows).iter().enumerate() {
                    // SAFETY: (blk·q + pos0 + j)·bw + v·8 + 8 <= blocks·q·bw.
                    unsafe { _mm256_storeu_ps(dyt.as_mut_ptr().add((blk * q + pos0 + j) * bw + v * LANES), *t) };
                }
                pos0 += LANES;
            }
            for pos in pos0..q {
                for lane in 0..LANES {
                    dyt[(blk * q + pos) * bw + v * LANES + lane] = if lane < valid { dy[(o0 + lane) * q + pos] } else { 0.0 };
                }
            }
        }
    }

    /// One sample's contribution to the weight gradient: `xp` the padded input, `dyt`
    /// its output gradient as `[blocks][pos][nv·8]`, `acc` `[blocks][pl][nv·8]`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad_sample(g: &Window, nv: usize, blocks: usize, xp: &[f32], dyt: &[f32], acc: &mut [f32]) {
        let (oh, ow) = (g.out_height(), g.out_width());
        let (hp, wp, q, pl, bw) = (g.height + 2 * g.padding, g.width + 2 * g.padding, oh * ow, g.patch_len(), nv * LANES);
        assert!(xp.len() >= g.channels * hp * wp && dyt.len() >= blocks * q * bw && acc.len() >= blocks * pl * bw);
        let max_r = MAX_ACC / nv;
        for blk in 0..blocks {
            for c in 0..g.channels {
                for ki in 0..g.kernel {
                    for (kj0, r) in super::direct_tiles(g.kernel, max_r) {
                        let kk0 = (c * g.kernel + ki) * g.kernel + kj0;
                        // SAFETY: positions (oy, ox) with the offsets ki, kj0 + r stay
                        // inside plane c of the padded sample; dyt and acc bounds as
                        // asserted above.
                        unsafe {
                            let x = xp.as_ptr().add(c * hp * wp + ki * wp + kj0);
                            let dy = dyt.as_ptr().add(blk * q * bw);
                            let out = acc.as_mut_ptr().add((blk * pl + kk0) * bw);
                            dispatch_dw!(nv, r, dw_tile(x, oh, ow, wp, dy, out));
                        }
                    }
                }
            }
        }
    }
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

    /// The plain per-element im2col the fast one must equal.
    fn im2col_naive(x: &[f32], g: &Window, pad: f32) -> Vec<f32> {
        let (oh, ow) = (g.out_height(), g.out_width());
        let mut col = vec![0.0; g.patch_len() * oh * ow];
        for c in 0..g.channels {
            for ki in 0..g.kernel {
                for kj in 0..g.kernel {
                    let row = (c * g.kernel + ki) * g.kernel + kj;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                            let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                            let inside = iy >= 0 && ix >= 0 && iy < g.height as isize && ix < g.width as isize;
                            col[row * oh * ow + oy * ow + ox] =
                                if inside { x[(c * g.height + iy as usize) * g.width + ix as usize] } else { pad };
                        }
                    }
                }
            }
        }
        col
    }

    fn windows() -> Vec<Window> {
        let w = |channels, height, width, kernel, stride, padding| Window { channels, height, width, kernel, stride, padding };
        vec![
            w(1, 28, 28, 5, 1, 2),
            w(6, 14, 14, 5, 1, 0),
            w(2, 5, 6, 3, 2, 1),
            w(3, 9, 7, 3, 2, 1),
            w(2, 7, 7, 2, 2, 0),
            w(1, 4, 3, 1, 1, 0),
            w(2, 3, 3, 4, 1, 2),
            w(1, 20, 17, 3, 3, 4),
            w(1, 11, 13, 7, 1, 3),
        ]
    }

    #[test]
    fn batched_im2col_and_col2im_match_the_per_sample_reference() {
        let mut rng = Rng::new(11);
        for g in windows() {
            let (xl, pl, q) = (g.channels * g.height * g.width, g.patch_len(), g.positions());
            for n in [1, 3] {
                let x: Vec<f32> = (0..n * xl).map(|_| rng.uniform(1.0)).collect();
                // The batch matrix: sample s's columns at s·q, leading dimension n·q.
                let mut col = vec![f32::NAN; pl * n * q];
                im2col_batch(&x, n, &g, -7.0, &mut col);
                for s in 0..n {
                    let want = im2col_naive(&x[s * xl..(s + 1) * xl], &g, -7.0);
                    for r in 0..pl {
                        assert_eq!(&col[r * n * q + s * q..r * n * q + (s + 1) * q], &want[r * q..(r + 1) * q], "{g:?} n={n} s={s} row {r}");
                    }
                }
                // col2im: the batched adjoint equals the per-sample naive scatter-add.
                let c: Vec<f32> = (0..pl * n * q).map(|_| rng.uniform(1.0)).collect();
                let mut dx = vec![0.5; n * xl];
                col2im_add_batch(&c, n, &g, &mut dx);
                for s in 0..n {
                    let mut want = vec![0.5f32; xl];
                    for c_ in 0..g.channels {
                        for ki in 0..g.kernel {
                            for kj in 0..g.kernel {
                                let row = (c_ * g.kernel + ki) * g.kernel + kj;
                                for oy in 0..g.out_height() {
                                    for ox in 0..g.out_width() {
                                        let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                                        if iy >= 0 && ix >= 0 && iy < g.height as isize && ix < g.width as isize {
                                            want[(c_ * g.height + iy as usize) * g.width + ix as usize] +=
                                                c[row * n * q + s * q + oy * g.out_width() + ox];
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for (i, (a, b)) in dx[s * xl..(s + 1) * xl].iter().zip(&want).enumerate() {
                        assert!((a - b).abs() < 1e-5, "{g:?} n={n} s={s} dx[{i}]: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn u8_im2col_matches_the_f32_one() {
        let mut rng = Rng::new(12);
        for g in windows() {
            let xl = g.channels * g.height * g.width;
            let x: Vec<u8> = (0..xl).map(|_| rng.below(256) as u8).collect();
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut col = vec![0u8; g.patch_len() * g.positions()];
            im2col(&x, &g, 3u8, &mut col);
            let want = im2col_naive(&xf, &g, 3.0);
            assert!(col.iter().zip(&want).all(|(&a, &b)| a as f32 == b), "{g:?}");
        }
    }

    #[test]
    fn batched_conv_forward_matches_a_direct_convolution() {
        let mut rng = Rng::new(13);
        for g in windows() {
            let oc = 5;
            let (xl, pl, q) = (g.channels * g.height * g.width, g.patch_len(), g.positions());
            let w: Vec<f32> = (0..oc * pl).map(|_| rng.uniform(1.0)).collect();
            let b: Vec<f32> = (0..oc).map(|_| rng.uniform(1.0)).collect();
            for n in [1, 4] {
                let x: Vec<f32> = (0..n * xl).map(|_| rng.uniform(1.0)).collect();
                let (mut col, mut tmp, mut y) = (vec![0.0; n * pl * q], vec![0.0; n * oc * q], vec![0.0; n * oc * q]);
                conv2d_forward(&x, n, &g, &w, Some(&b), oc, &mut col, &mut tmp, &mut y);
                for s in 0..n {
                    let colr = im2col_naive(&x[s * xl..(s + 1) * xl], &g, 0.0);
                    for o in 0..oc {
                        for p in 0..q {
                            let want = b[o] + (0..pl).map(|r| w[o * pl + r] * colr[r * q + p]).sum::<f32>();
                            let got = y[(s * oc + o) * q + p];
                            assert!((got - want).abs() < 1e-4, "{g:?} n={n} s={s} o={o} p={p}: {got} vs {want}");
                        }
                    }
                }
                // And the channel-major gather inverts the scatter.
                let mut cm = vec![0.0; oc * n * q];
                samples_to_channels(&y, n, oc, q, &mut cm);
                for s in 0..n {
                    for o in 0..oc {
                        assert_eq!(&cm[o * n * q + s * q..o * n * q + (s + 1) * q], &y[(s * oc + o) * q..(s * oc + o + 1) * q]);
                    }
                }
            }
        }
    }

    #[test]
    fn direct_conv_matches_the_im2col_product() {
        if !DirectConv::available() {
            return;
        }
        let mut rng = Rng::new(15);
        for g in windows().into_iter().filter(|g| g.stride == 1) {
            for oc in [1, 5, 6, 8, 9, 16, 17, 33] {
                let (xl, pl, q) = (g.channels * g.height * g.width, g.patch_len(), g.positions());
                let w: Vec<f32> = (0..oc * pl).map(|_| rng.uniform(1.0)).collect();
                let b: Vec<f32> = (0..oc).map(|_| rng.uniform(1.0)).collect();
                let n = 3;
                let x: Vec<f32> = (0..n * xl).map(|_| rng.uniform(1.0)).collect();
                let (mut col, mut tmp, mut want) = (vec![0.0; n * pl * q], vec![0.0; n * oc * q], vec![0.0; n * oc * q]);
                conv2d_forward(&x, n, &g, &w, Some(&b), oc, &mut col, &mut tmp, &mut want);
                let d = DirectConv::new(&g, &w, Some(&b), oc).unwrap();
                let mut got = vec![f32::NAN; n * oc * q];
                d.forward(&x, n, &mut got, &mut Vec::new());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-4, "{g:?} oc={oc} y[{i}]: {a} vs {b}");
                }
                // Weight and bias gradient against the im2col product dW = dY·colᵀ.
                let dy: Vec<f32> = (0..n * oc * q).map(|_| rng.uniform(1.0)).collect();
                let mut want_dw = vec![0.25f32; oc * pl];
                let mut want_db = vec![0.5f32; oc];
                for s in 0..n {
                    let colr = im2col_naive(&x[s * xl..(s + 1) * xl], &g, 0.0);
                    for o in 0..oc {
                        let dyo = &dy[(s * oc + o) * q..(s * oc + o + 1) * q];
                        want_db[o] += dyo.iter().sum::<f32>();
                        for r in 0..pl {
                            want_dw[o * pl + r] += dyo.iter().zip(&colr[r * q..(r + 1) * q]).map(|(a, b)| a * b).sum::<f32>();
                        }
                    }
                }
                let (mut dw, mut db) = (vec![0.25f32; oc * pl], vec![0.5f32; oc]);
                assert!(direct_weight_grad(&g, oc, &x, &dy, n, &mut dw, Some(&mut db), &mut Vec::new()));
                for (i, (a, b)) in dw.iter().zip(&want_dw).enumerate() {
                    assert!((a - b).abs() < 1e-3, "{g:?} oc={oc} dw[{i}]: {a} vs {b}");
                }
                for (i, (a, b)) in db.iter().zip(&want_db).enumerate() {
                    assert!((a - b).abs() < 1e-3, "{g:?} oc={oc} db[{i}]: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn maxpool_2x2_fast_path_equals_the_general_window() {
        let mut rng = Rng::new(14);
        for (h, w) in [(28, 28), (10, 10), (7, 9), (2, 2), (5, 4), (40, 66), (3, 35)] {
            let g = Window { channels: 3, height: h, width: w, kernel: 2, stride: 2, padding: 0 };
            // Few distinct values, so ties happen and the first-on-ties rule is tested.
            let x: Vec<f32> = (0..3 * h * w).map(|_| rng.below(4) as f32).collect();
            let len = 3 * g.positions();
            let (mut y1, mut y2, mut a1, mut a2) = (vec![0.0; len], vec![0.0; len], vec![0u32; len], vec![0u32; len]);
            maxpool(&x, &g, &mut y1, Some(&mut a1));
            maxpool_any::<f32, true>(&x, &g, &mut y2, &mut a2);
            assert_eq!((&y1, &a1), (&y2, &a2), "{h}x{w}");
            let mut y3 = vec![0.0; len];
            maxpool(&x, &g, &mut y3, None);
            assert_eq!(y3, y1);
            // NaNs and signed zeros: the vector path keeps the scalar comparison order.
            let specials = [f32::NAN, 0.0, -0.0, 1.0, -1.0];
            let x: Vec<f32> = (0..3 * h * w).map(|_| specials[rng.below(5) as usize]).collect();
            let (mut y4, mut y5) = (vec![0.0f32; len], vec![0.0f32; len]);
            maxpool(&x, &g, &mut y4, None);
            maxpool_any::<f32, false>(&x, &g, &mut y5, &mut []);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y4), bits(&y5), "{h}x{w} specials");
            let xu: Vec<u8> = (0..3 * h * w).map(|_| rng.below(256) as u8).collect();
            let (mut y6, mut y7) = (vec![0u8; len], vec![0u8; len]);
            maxpool(&xu, &g, &mut y6, None);
            maxpool_any::<u8, false>(&xu, &g, &mut y7, &mut []);
            assert_eq!(y6, y7, "{h}x{w} u8");
        }
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

/// Average pooling of one `[C, H, W]` sample: each output is the window's sum over
/// `kernel²` (zero padding counts, as ONNX `count_include_pad = 1` and PyTorch's default).
pub fn avgpool(x: &[f32], g: &Window, y: &mut [f32]) {
    let (oh, ow) = (g.out_height(), g.out_width());
    assert!(x.len() >= g.channels * g.height * g.width && y.len() >= g.channels * oh * ow, "avgpool: buffer too short");
    let inv = 1.0 / (g.kernel * g.kernel) as f32;
    let y = &mut y[..g.channels * oh * ow];
    y.fill(0.0);
    window_taps(g, |o, i| y[o] += x[i]);
    y.iter_mut().for_each(|v| *v *= inv);
}

/// Adds the gradient of [`avgpool`] for one sample: `dx[window] += dy / kernel²`.
pub fn avgpool_backward_add(dy: &[f32], g: &Window, dx: &mut [f32]) {
    let inv = 1.0 / (g.kernel * g.kernel) as f32;
    window_taps(g, |o, i| dx[i] += dy[o] * inv);
}

/// Calls `f(output index, input index)` for every tap of every window of `g` that lies
/// inside the input (padding taps are skipped), window by window, taps in row order.
fn window_taps(g: &Window, mut f: impl FnMut(usize, usize)) {
    let (oh, ow) = (g.out_height(), g.out_width());
    for c in 0..g.channels {
        let base = c * g.height * g.width;
        for oy in 0..oh {
            for ox in 0..ow {
                let o = (c * oh + oy) * ow + ox;
                for ki in 0..g.kernel {
                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                    if iy < 0 || iy >= g.height as isize {
                        continue;
                    }
                    let row = base + iy as usize * g.width;
                    for kj in 0..g.kernel {
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        if ix >= 0 && ix < g.width as isize {
                            f(o, row + ix as usize);
                        }
                    }
                }
            }
        }
    }
}

/// Logistic function, element-wise.
pub fn sigmoid(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, &i)| *o = 1.0 / (1.0 + (-i).exp()));
}

/// Hyperbolic tangent, element-wise.
pub fn tanh(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, &i)| *o = i.tanh());
}
