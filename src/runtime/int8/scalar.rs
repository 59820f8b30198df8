//! The portable scalar kernels: the product every SIMD kernel must equal bit for bit, and
//! the plain reference product the tests compare all kernels against.

use super::PackedMatrix;

/// The scalar product on activations packed one value per word:
/// `c[r, o] = init[o] + Σ_k a[r,k]·b[o,k]` (wrapping i32), `c` of `m × n`.
pub(super) fn gemm_scalar(a: &[i32], m: usize, b: &PackedMatrix, init: &[i32], c: &mut [i32]) {
    let (n, k) = (b.n, b.k);
    for r in 0..m {
        let x = &a[r * k..(r + 1) * k];
        for o in 0..n {
            let w = &b.raw[o * k..(o + 1) * k];
            let dot = x.iter().zip(w).fold(0i32, |s, (&x, &w)| s.wrapping_add(x * w as i32));
            c[r * n + o] = init[o].wrapping_add(dot);
        }
    }
}

/// The raw product, plainly: `c[m×n] = a[m×k] · bᵀ` with `a` u8 row-major and `b`
/// `[n×k]` i8 row-major, exact i32 (the reference every kernel is tested against).
pub fn matmul_u8_i8_reference(a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
    assert!(a.len() == m * k && b.len() == n * k && c.len() == m * n, "matmul_u8_i8_reference: bad sizes");
    for r in 0..m {
        for o in 0..n {
            let mut s = 0i32;
            for kk in 0..k {
                s = s.wrapping_add(a[r * k + kk] as i32 * b[o * k + kk] as i32);
            }
            c[r * n + o] = s;
        }
    }
}
