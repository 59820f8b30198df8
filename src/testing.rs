//! What the unit tests share.

use crate::rng::Rng;

/// Applies 1 to `max_edits` random edits to `b`: a byte replaced or bit-flipped, a
/// truncation, an insertion (the corruptions a file meets on disk or in transit). Stops
/// early if `b` becomes empty.
pub fn mutate(b: &mut Vec<u8>, rng: &mut Rng, max_edits: usize) {
    for _ in 0..1 + rng.below(max_edits) {
        if b.is_empty() {
            return;
        }
        let at = rng.below(b.len());
        match rng.below(4) {
            0 => b[at] = rng.next_u64() as u8,
            1 => b[at] ^= 1 << rng.below(8),
            2 => b.truncate(at),
            _ => b.insert(at, rng.next_u64() as u8),
        }
    }
}

/// Feeds `read` every truncation of `valid` and `copies` mutated copies of it (see
/// [`mutate`]); a panic fails the calling test. Returns how many mutants `read` accepted.
pub fn fuzz_reader<T, E>(valid: &[u8], seed: u64, copies: usize, mut read: impl FnMut(&[u8]) -> Result<T, E>) -> usize {
    for n in 0..valid.len() {
        let _ = read(&valid[..n]);
    }
    let mut rng = Rng::new(seed);
    let mut accepted = 0;
    for _ in 0..copies {
        let mut b = valid.to_vec();
        mutate(&mut b, &mut rng, 4);
        accepted += usize::from(read(&b).is_ok());
    }
    accepted
}
