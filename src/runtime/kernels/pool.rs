//! Max and average pooling (any window, padded windows and the 2×2 stride-2 fast case).

use super::Window;
#[cfg(target_arch = "x86_64")]
use super::{has_avx2, pool2x2_avx2};

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


/// Any window; `ARG` says whether `argmax` is written.
pub(super) fn maxpool_any<T: Copy + PartialOrd, const ARG: bool>(x: &[T], g: &Window, y: &mut [T], argmax: &mut [u32]) {
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
pub(super) fn maxpool_2x2<T: Copy + PartialOrd, const ARG: bool>(x: &[T], g: &Window, y: &mut [T], argmax: &mut [u32]) {
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
