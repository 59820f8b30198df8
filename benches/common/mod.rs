//! What the benchmarks share.

use std::time::Instant;

/// The best (least) seconds of `reps` calls of `f`: other processes' load only ever adds
/// time, so the minimum is the figure least disturbed by them.
pub fn best_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
