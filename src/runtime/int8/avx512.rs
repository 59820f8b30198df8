//! The AVX-512 VNNI kernel (`vpdpbusd`, 16 outputs × 4 k per instruction), apart from the
//! AVX2 kernels as it needs other CPU features; the same `#[target_feature]` rules.

use super::NR;
use super::avx2::store_row;
use std::arch::x86_64::*;

/// AVX-512 VNNI driver: for each 16-output block, rows in tiles of 8, remainders
/// with split accumulators so a single row is not latency-bound.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn gemm_vnni(a: &[i32], m: usize, kw: usize, w: &[i8], n: usize, init: &[i32], c: &mut [i32]) {
    let bw = kw * NR * 4; // bytes per block
    assert!(w.len() >= n.div_ceil(NR) * bw && a.len() >= m * kw);
    for blk in 0..n.div_ceil(NR) {
        let wb = &w[blk * bw..(blk + 1) * bw];
        let col0 = blk * NR;
        let cols = NR.min(n - col0);
        let ini: &[i32; NR] = init[col0..col0 + NR].try_into().unwrap();
        let mut r = 0;
        while r + 8 <= m {
            let t = tile_vnni::<8, 1>(&a[r * kw..], kw, wb, ini);
            (0..8).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
            r += 8;
        }
        while r + 4 <= m {
            let t = tile_vnni::<4, 1>(&a[r * kw..], kw, wb, ini);
            (0..4).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
            r += 4;
        }
        match m - r {
            3 => {
                let t = tile_vnni::<3, 2>(&a[r * kw..], kw, wb, ini);
                (0..3).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
            }
            2 => {
                let t = tile_vnni::<2, 2>(&a[r * kw..], kw, wb, ini);
                (0..2).for_each(|i| store_row(c, n, r + i, col0, cols, &t[i]));
            }
            1 => {
                let t = tile_vnni::<1, 4>(&a[r * kw..], kw, wb, ini);
                store_row(c, n, r, col0, cols, &t[0]);
            }
            _ => {}
        }
    }
}

/// `R` rows × 16 outputs, each row with `S` accumulators taking every `S`-th
/// group of 4 k (summed at the end; i32 addition is exact modulo 2^32, so the
/// order does not matter). `a` holds rows of `kw` words of 4 u8, `w` one block
/// (`kw` × 64 i8).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn tile_vnni<const R: usize, const S: usize>(a: &[i32], kw: usize, w: &[i8], init: &[i32; NR]) -> [[i32; NR]; R] {
    assert!(a.len() >= (R - 1) * kw + kw && w.len() >= kw * NR * 4);
    let (ap, wp) = (a.as_ptr(), w.as_ptr());
    let zero = _mm512_setzero_si512();
    let mut acc = [[zero; S]; R];
    let mut g = 0;
    while g + S <= kw {
        for s in 0..S {
            // SAFETY: g + s < kw: w[64(g+s) .. +64] and a[r·kw + g + s] are in bounds.
            let wv = unsafe { _mm512_loadu_si512(wp.add((g + s) * 64) as *const __m512i) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(unsafe { *ap.add(r * kw + g + s) });
                acc[s] = _mm512_dpbusd_epi32(acc[s], x, wv);
            }
        }
        g += S;
    }
    while g < kw {
        // SAFETY: g < kw, as above.
        let wv = unsafe { _mm512_loadu_si512(wp.add(g * 64) as *const __m512i) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32(unsafe { *ap.add(r * kw + g) });
            acc[0] = _mm512_dpbusd_epi32(acc[0], x, wv);
        }
        g += 1;
    }
    // SAFETY: init is 16 i32 = one 512-bit vector.
    let iv = unsafe { _mm512_loadu_si512(init.as_ptr() as *const __m512i) };
    let mut out = [[0i32; NR]; R];
    for (o, acc) in out.iter_mut().zip(acc) {
        let sum = acc.iter().fold(iv, |t, &v| _mm512_add_epi32(t, v));
        // SAFETY: o is 16 i32 = one 512-bit vector.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, sum) };
    }
    out
}
