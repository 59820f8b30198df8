//! The AVX2 kernels (`vpmaddwd` on u8/i8 widened to i16): the tiled product, its
//! fused f32 output, vector requantization and the direct convolution. Each is a
//! `#[target_feature]` function, so calling one is `unsafe` for callers that have not
//! checked the feature; inside, the only unsafe operations are unaligned loads/stores
//! whose bounds are asserted first. Apart so the x86 intrinsics stay out of the portable code.

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
pub(super) unsafe fn direct_conv_sample(d: &super::conv::DirectI8, xp: &[u16], acc: &mut [i32], oc: usize, oh: usize, ow: usize) {
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
pub(super) fn store_row(c: &mut [i32], n: usize, r: usize, col0: usize, cols: usize, v: &[i32; NR]) {
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
