//! IEEE 754 binary16 ("half") conversion, used to store f32 values losslessly in two
//! bytes when they happen to be representable.
//!
//! [`from_f32`] rounds to nearest, ties to even, handling subnormals, ±0 and ±∞
//! (overflow gives ±∞, NaN a quiet NaN); [`to_f32`] is exact. [`exact`] is the test
//! the `.sqz` encoder uses: a value is stored as f16 only when the round trip
//! reproduces its f32 bits; NaN never counts as representable.

/// The binary16 bits nearest to `x` (round to nearest, ties to even).
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xFF) as i32;
    let man = bits & 0x007F_FFFF;
    if exp == 0xFF {
        // Infinity or NaN (kept quiet, payload's top bits kept).
        return sign | 0x7C00 | if man != 0 { 0x0200 | (man >> 13) as u16 } else { 0 };
    }
    // Unbiased exponent; f16 normal exponents are -14..=15.
    let e = exp - 127;
    if e > 15 {
        return sign | 0x7C00;
    }
    if exp == 0 {
        // f32 subnormals are far below the smallest f16 subnormal (2^-24).
        return sign;
    }
    let full = man | 0x0080_0000; // 24-bit significand, value = full · 2^(e - 23)
    // Shift so that the result is in units of the f16 target: normal numbers keep
    // 10 fraction bits (shift 13), subnormals (e < -14) lose more.
    let shift = if e >= -14 { 13 } else { 13 + (-14 - e) as u32 };
    if shift > 24 {
        return sign; // below half the smallest subnormal: rounds to zero
    }
    let mut q = full >> shift;
    let rem = full & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rem > half || (rem == half && q & 1 == 1) {
        q += 1;
    }
    if e >= -14 {
        // q is the 11-bit significand (with implicit bit), possibly carried to 2^11.
        let mut biased = (e + 15) as u32;
        if q >= 0x800 {
            q >>= 1;
            biased += 1;
        }
        if biased >= 31 {
            return sign | 0x7C00;
        }
        sign | ((biased << 10) as u16) | (q & 0x3FF) as u16
    } else {
        // Subnormal (q ≤ 0x400; q = 0x400 is the smallest normal, encoded the same way).
        sign | q as u16
    }
}

/// The f32 value of binary16 bits (exact).
pub fn to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1F);
    let man = u32::from(h & 0x3FF);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m · 2^-24, normalised for f32.
            let lead = 31 - m.leading_zeros(); // position of the top bit, 0..=9
            let e = lead as i32 - 24 + 127;
            sign | ((e as u32) << 23) | ((m << (23 - lead)) & 0x007F_FFFF)
        }
        (31, 0) => sign | 0x7F80_0000,
        (31, m) => sign | 0x7FC0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The binary16 bits of `x` if converting back gives exactly `x`'s bits (NaN: never).
pub fn exact(x: f32) -> Option<u16> {
    if x.is_nan() {
        return None;
    }
    let h = from_f32(x);
    (to_f32(h).to_bits() == x.to_bits()).then_some(h)
}

/// Rounds `x` to the nearest IEEE half-precision value (ties to even), as f32.
pub fn round(x: f32) -> f32 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let a = x.abs();
    // Largest finite half is 65504; beyond it stays as is (not representable).
    if a >= 65520.0 {
        return x;
    }
    // Spacing of halves around a: 2^(e-10) for normal halves (e ≥ -14), 2^-24 below.
    let e = a.log2().floor().max(-14.0) as i32;
    let ulp = 2f32.powi(e - 10);
    let q = a / ulp;
    let r = q.round_ties_even() * ulp;
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of binary16 bits computed independently, in f64.
    fn reference(h: u16) -> f64 {
        let s = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((h >> 10) & 0x1F);
        let m = f64::from(h & 0x3FF);
        match e {
            0 => s * m * 2f64.powi(-24),
            31 if m == 0.0 => s * f64::INFINITY,
            31 => f64::NAN,
            _ => s * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        }
    }

    #[test]
    fn every_half_converts_exactly_and_back() {
        for h in 0..=u16::MAX {
            let x = to_f32(h);
            let r = reference(h);
            if r.is_nan() {
                assert!(x.is_nan() && exact(x).is_none());
                assert!(to_f32(from_f32(x)).is_nan());
                continue;
            }
            assert_eq!(f64::from(x), r, "{h:04x}");
            assert_eq!(from_f32(x), h, "{h:04x}");
            assert_eq!(exact(x), Some(h));
        }
    }

    #[test]
    fn rounds_to_nearest_even() {
        // Between consecutive halves: nearest wins, ties go to the even significand.
        let mut seed = 12345u64;
        for _ in 0..200_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let x = f32::from_bits((seed >> 32) as u32);
            if x.is_nan() {
                continue;
            }
            let h = from_f32(x);
            let v = reference(h);
            let xd = f64::from(x);
            if v.is_infinite() {
                assert!(xd.abs() >= 65520.0, "{x}"); // 65504 + half an ulp
                continue;
            }
            // Neighbours toward and away from zero (same sign).
            for n in [h.wrapping_sub(1), h.wrapping_add(1)] {
                if (n & 0x7FFF) >= 0x7C00 || (n ^ h) & 0x8000 != 0 {
                    continue;
                }
                let dn = (reference(n) - xd).abs();
                let dh = (v - xd).abs();
                assert!(dh < dn || (dh == dn && h & 1 == 0), "{x}: {h:04x} vs {n:04x}");
            }
        }
        assert_eq!(from_f32(1.0 + 2f32.powi(-11)), 0x3C00); // tie → even (down)
        assert_eq!(from_f32(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02); // tie → even (up)
        assert_eq!(from_f32(65520.0), 0x7C00);
        assert_eq!(from_f32(65519.0), 0x7BFF);
        assert_eq!(from_f32(2f32.powi(-25)), 0); // tie with zero → even (zero)
        assert_eq!(from_f32(2f32.powi(-25) * 1.5), 1);
        assert_eq!(from_f32(-0.0), 0x8000);
        assert_eq!(exact(0.1), None);
        assert_eq!(exact(f32::NEG_INFINITY), Some(0xFC00));
        assert_eq!(exact(1e-30), None);
        assert_eq!(exact(-0.0), Some(0x8000));
    }

    #[test]
    fn f16_rounding_matches_ieee_half() {
        // 1 + 2^-10 is the next half after 1; 1 + 2^-11 ties to even (1.0).
        assert_eq!(round(1.0 + 2f32.powi(-10)), 1.0 + 2f32.powi(-10));
        assert_eq!(round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(round(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2.0 * 2f32.powi(-10));
        assert_eq!(round(-0.1), -0.099_975_586);
        // Subnormal halves: multiples of 2^-24.
        assert_eq!(round(3.1 * 2f32.powi(-24)), 3.0 * 2f32.powi(-24));
    }
}
