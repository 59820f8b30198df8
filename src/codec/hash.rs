//! The fixed hash of hashed weight sharing (HashedNets, Chen et al. 2015): element `i`
//! of a tensor (flat row-major index, so `i = row · cols + col` for a matrix) belongs
//! to bucket `bucket(seed, i, k)` and, when signs are hashed too, is negated when
//! `negated(seed, i)`. The writer stores only the tensor's `seed`, `k` and the `k`
//! bucket values; the reader recomputes every element's bucket and sign, so the hash
//! is part of the `.sqz` format and must never change.
//!
//! `h = splitmix64(seed + (i + 1) · 0x9E3779B97F4A7C15)` (wrapping), bucket =
//! `((h >> 32) · k) >> 32` (the upper 32 bits scaled to `0..k`), negated = lowest bit
//! of `h`.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser (Steele, Lea and Flood 2014).
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(seed: u64, index: u64) -> u64 {
    splitmix64(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The bucket of element `index` among `k` buckets (`k ≥ 1`): always below `k`.
pub fn bucket(seed: u64, index: u64, k: u32) -> u32 {
    (((mix(seed, index) >> 32) * u64::from(k)) >> 32) as u32
}

/// Whether element `index` stores the negated bucket value (when signs are hashed).
pub fn negated(seed: u64, index: u64) -> bool {
    mix(seed, index) & 1 == 1
}

/// A tensor's seed from a run's seed and the tensor's name (FNV-1a of the name mixed
/// with the seed), so every layer of a model hashes differently.
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    splitmix64(seed ^ h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_fixed_forever() {
        // The format depends on these exact values.
        assert_eq!(splitmix64(0), 0);
        assert_eq!(splitmix64(1), 0x5692_161D_100B_05E5);
        // The first output of the SplitMix64 generator seeded with 0.
        assert_eq!(splitmix64(GOLDEN), 0xE220_A839_7B1D_CDAF);
        let b: Vec<u32> = (0..8).map(|i| bucket(42, i, 10)).collect();
        let s: Vec<bool> = (0..8).map(|i| negated(42, i)).collect();
        assert_eq!(b, FIXED_BUCKETS);
        assert_eq!(s, FIXED_SIGNS);
    }

    // Computed independently (a Python transcription of the definition above).
    const FIXED_BUCKETS: [u32; 8] = [7, 1, 2, 3, 0, 8, 2, 8];
    const FIXED_SIGNS: [bool; 8] = [true, true, false, false, false, false, true, false];

    #[test]
    fn buckets_are_in_range_and_roughly_uniform() {
        let k = 7u32;
        let mut count = [0usize; 7];
        for i in 0..70_000u64 {
            let b = bucket(3, i, k);
            assert!(b < k);
            count[b as usize] += 1;
        }
        assert!(count.iter().all(|&c| (9_000..11_000).contains(&c)), "{count:?}");
        let negatives = (0..10_000u64).filter(|&i| negated(3, i)).count();
        assert!((4_500..5_500).contains(&negatives), "{negatives}");
        assert_eq!(bucket(3, 5, 1), 0);
        assert_ne!(tensor_seed(1, "fc1.weight"), tensor_seed(1, "fc2.weight"));
        assert_ne!(tensor_seed(1, "fc1.weight"), tensor_seed(2, "fc1.weight"));
    }
}
