//! im2col / col2im (the convolution's rows, scalar and AVX2 builds of one routine) and the
//! im2col convolution itself: the data movement, apart from the product it feeds.

use super::{MatRef, Window, sgemm};
#[cfg(target_arch = "x86_64")]
use super::has_avx2;

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
