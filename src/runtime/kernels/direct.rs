//! The AVX2/FMA tiles. Callers have checked the features; inside, the unsafe
//! operations are unaligned loads/stores whose bounds the drivers assert. Apart from the
//! drivers (`direct_conv`) as they hold the x86 intrinsics.

use super::direct_conv::LANES;
use super::{DirectConv, Window};
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
