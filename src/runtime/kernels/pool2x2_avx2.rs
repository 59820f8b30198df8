//! 2×2, stride-2 max pooling without argmax on AVX2, 8 (f32) or 16 (u8) outputs at a
//! time; the same comparisons in the same order as [`maxpool_2x2`](super::pool::maxpool_2x2), so the same values.
//!
//! Blocks of outputs may run past the end of an output row: the extra lanes read the
//! following input rows and write outputs that the next blocks (in increasing order)
//! overwrite with their right values. Only the last block of the whole buffer, where
//! that would leave the slices, goes through zero-padded copies. Apart from `pool` as it holds x86 intrinsics.

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
