//! The arithmetic ceiling of this CPU for the inner loops the int8 and f32 kernels can
//! use, per core, as the best of many short samples (so other processes' load mostly
//! drops out): `vpmaddwd` + `vpaddd` (our exact int8 product) alone and inside our
//! kernel's 6×16 tile (with its loads and broadcasts), `vpmaddubsw` +
//! `vpmaddwd(1)` + `vpaddd` (exact for 7-bit activations), two `vpmaddubsw` summed in
//! i16 before widening (not exact for u7 × i8: 2·(2·127·127) > 32767), and f32
//! `vfmadd231ps`. Also the 2-thread streaming read bandwidth over an array the size of
//! the f32 test set, which bounds any batch-256 run that reads its images as f32.
//! Run: `cargo bench --bench int8_peak`.

mod common;

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Hide a value from the optimizer each iteration, so products are recomputed.
    macro_rules! opaque {
        ($($v:ident),*) => { $( unsafe { asm!("/* {0} */", inout(ymm_reg) $v, options(nomem, nostack, preserves_flags)) } )* };
    }

    #[target_feature(enable = "avx2")]
    fn sum(a: [__m256i; 8]) -> i32 {
        let mut s = [0i32; 8];
        for v in a {
            let mut t = [0i32; 8];
            unsafe { _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, v) };
            s.iter_mut().zip(t).for_each(|(s, t)| *s = s.wrapping_add(t));
        }
        s.iter().fold(0, |a, &b| a.wrapping_add(b))
    }

    /// 8 × (`vpmaddwd` + `vpaddd`) per iteration: 128 MACs.
    #[target_feature(enable = "avx2")]
    pub fn madd(n: usize) -> i32 {
        let (mut x, mut y) = (_mm256_set1_epi32(0x0003_0005), _mm256_set1_epi32(0x0007_0001));
        let w = [_mm256_set1_epi16(3), _mm256_set1_epi16(-7), _mm256_set1_epi16(11), _mm256_set1_epi16(-13)];
        let mut a = [_mm256_setzero_si256(); 8];
        for _ in 0..n {
            opaque!(x, y);
            for i in 0..4 {
                a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(x, w[i]));
                a[i + 4] = _mm256_add_epi32(a[i + 4], _mm256_madd_epi16(y, w[i]));
            }
        }
        sum(a)
    }

    /// 8 × (`vpmaddubsw` + `vpmaddwd(1)` + `vpaddd`) per iteration: 256 MACs.
    #[target_feature(enable = "avx2")]
    pub fn maddubs(n: usize) -> i32 {
        let (mut x, mut y) = (_mm256_set1_epi32(0x0503_0507), _mm256_set1_epi32(0x0102_0304));
        let w = [_mm256_set1_epi8(3), _mm256_set1_epi8(-7), _mm256_set1_epi8(11), _mm256_set1_epi8(-13)];
        let one = _mm256_set1_epi16(1);
        let mut a = [_mm256_setzero_si256(); 8];
        for _ in 0..n {
            opaque!(x, y);
            for i in 0..4 {
                a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[i]), one));
                a[i + 4] = _mm256_add_epi32(a[i + 4], _mm256_madd_epi16(_mm256_maddubs_epi16(y, w[i]), one));
            }
        }
        sum(a)
    }

    /// 8 × (2 `vpmaddubsw` + `vpaddw` + `vpmaddwd(1)` + `vpaddd`) per iteration: 512 MACs.
    #[target_feature(enable = "avx2")]
    pub fn maddubs_pairs(n: usize) -> i32 {
        let (mut x, mut y) = (_mm256_set1_epi32(0x0503_0507), _mm256_set1_epi32(0x0102_0304));
        let w = [_mm256_set1_epi8(3), _mm256_set1_epi8(-7), _mm256_set1_epi8(11), _mm256_set1_epi8(-13)];
        let one = _mm256_set1_epi16(1);
        let mut a = [_mm256_setzero_si256(); 8];
        for _ in 0..n {
            opaque!(x, y);
            // Eight distinct (x, w) / (y, w') pairs, so no product is computed once for two.
            for i in 0..8 {
                let s = _mm256_add_epi16(_mm256_maddubs_epi16(x, w[i % 4]), _mm256_maddubs_epi16(y, w[(i + 1 + i / 4) % 4]));
                a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(s, one));
            }
        }
        sum(a)
    }

    /// The int8 kernel's inner loop as it runs (`tile_avx2::<6>`): per step of 2 k-values
    /// two weight loads, six activation broadcasts, 12 × (`vpmaddwd` + `vpaddd`), over k =
    /// 384 with its data in L1; `n` tiles: 6·16·384 MACs each.
    #[target_feature(enable = "avx2")]
    pub fn tile_6x16(n: usize) -> i32 {
        const KW: usize = 192;
        let a: Vec<i32> = (0..6 * KW).map(|i| ((i * 7919) % 65_000) as i32 & 0x00ff_00ff).collect();
        let w: Vec<i16> = (0..32 * KW).map(|i| ((i * 31) % 255) as i16 - 127).collect();
        let mut s = 0i32;
        for _ in 0..n {
            let (ap, wp) = (std::hint::black_box(a.as_ptr()), w.as_ptr());
            let mut acc = [[_mm256_setzero_si256(); 2]; 6];
            for g in 0..KW {
                // SAFETY: g < KW, so the 32 weights at 32g and the 6 words at 6g are in bounds.
                let (w0, w1) = unsafe { (_mm256_loadu_si256(wp.add(g * 32) as *const __m256i), _mm256_loadu_si256(wp.add(g * 32 + 16) as *const __m256i)) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32(unsafe { *ap.add(g * 6 + r) });
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, w0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, w1));
                }
            }
            // Every accumulator is summed, so none of the twelve products is dropped as dead code.
            let z = _mm256_setzero_si256();
            s = s.wrapping_add(sum([acc[0][0], acc[1][0], acc[2][0], acc[3][0], acc[4][0], acc[5][0], z, z]));
            s = s.wrapping_add(sum([acc[0][1], acc[1][1], acc[2][1], acc[3][1], acc[4][1], acc[5][1], z, z]));
        }
        s
    }

    /// 10 × `vfmadd231ps` per iteration: 80 MACs.
    #[target_feature(enable = "avx2,fma")]
    pub fn fma(n: usize) -> f32 {
        let (mut x, mut y) = (_mm256_set1_ps(1.0001), _mm256_set1_ps(0.9));
        let w = _mm256_set1_ps(0.999);
        let mut a = [_mm256_setzero_ps(); 10];
        for _ in 0..n {
            unsafe { asm!("/* {0} {1} */", inout(ymm_reg) x, inout(ymm_reg) y, options(nomem, nostack, preserves_flags)) };
            for i in 0..5 {
                a[i] = _mm256_fmadd_ps(x, w, a[i]);
                a[i + 5] = _mm256_fmadd_ps(y, w, a[i + 5]);
            }
        }
        let mut t = [0f32; 8];
        let s = a.iter().fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
        unsafe { _mm256_storeu_ps(t.as_mut_ptr(), s) };
        t.iter().sum()
    }
}

use common::best_secs as best;

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            println!("this CPU has no AVX2/FMA: nothing to measure");
            return;
        }
        let n = 200_000;
        let reps = 300;
        // SAFETY (each call): AVX2 and FMA were detected above.
        let tiles = n / 50;
        // (what is measured, multiply-adds per call, the call)
        type Case = (&'static str, f64, Box<dyn Fn()>);
        let cases: [Case; 5] = [
            ("vpmaddwd + vpaddd (exact u8 x i8, widened to i16)", 128.0, Box::new(move || { std::hint::black_box(unsafe { peak::madd(n) }); })),
            ("our int8 kernel's 6x16 tile, k = 384, data in L1", 6.0 * 16.0 * 384.0 / 50.0, Box::new(move || { std::hint::black_box(unsafe { peak::tile_6x16(tiles) }); })),
            ("vpmaddubsw + vpmaddwd(1) + vpaddd (exact for u7 x i8)", 256.0, Box::new(move || { std::hint::black_box(unsafe { peak::maddubs(n) }); })),
            ("2 vpmaddubsw + vpaddw + vpmaddwd(1) + vpaddd (saturates for u7 x i8)", 512.0, Box::new(move || { std::hint::black_box(unsafe { peak::maddubs_pairs(n) }); })),
            ("vfmadd231ps (f32)", 80.0, Box::new(move || { std::hint::black_box(unsafe { peak::fma(n) }); })),
        ];
        for (name, macs, f) in &cases {
            let t = best(reps, f);
            println!("{name}: {:.1} G MAC/s per core", macs * n as f64 / t / 1e9);
        }
    }
    // Streaming read, 2 threads, over 10,000 images × 784 f32 (the test set's size).
    let data: Vec<f32> = (0..10_000 * 784).map(|i| (i % 7) as f32).collect();
    let half = data.len() / 2;
    let mut best_s = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for part in data.chunks(half) {
                s.spawn(move || {
                    let mut acc = [0f32; 8];
                    for _ in 0..10 {
                        for c in part.chunks_exact(8) {
                            acc.iter_mut().zip(c).for_each(|(a, &v)| *a += v);
                        }
                    }
                    std::hint::black_box(acc);
                });
            }
        });
        best_s = best_s.min(t.elapsed().as_secs_f64());
    }
    let bytes = 10.0 * data.len() as f64 * 4.0;
    println!("2-thread streaming read of a {:.1} MB f32 array: {:.1} GB/s", data.len() as f64 * 4.0 / 1e6, bytes / best_s / 1e9);
}
