//! Element-wise and row kernels: normalization, sums, softmax, argmax, sigmoid, tanh.

/// `y = (x − mean[c]) / std[c]` over samples of `sample_len` values, where `mean` and
/// `std` have one entry per channel (or one for all).
pub fn normalize(x: &[f32], mean: &[f32], std: &[f32], sample_len: usize, y: &mut [f32]) {
    let per = sample_len / mean.len();
    for (xs, ys) in x.chunks_exact(sample_len).zip(y.chunks_exact_mut(sample_len)) {
        for (c, (xc, yc)) in xs.chunks_exact(per).zip(ys.chunks_exact_mut(per)).enumerate() {
            // The reciprocal per channel here rather than in a Vec: no allocation per call.
            let (m, s) = (mean[c], 1.0 / std[c]);
            yc.iter_mut().zip(xc).for_each(|(o, &i)| *o = (i - m) * s);
        }
    }
}

/// Sum of `x` in 16 interleaved partial sums (vectorizes; the order is fixed, so the
/// result is deterministic).
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &v)| *a += v);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Row-wise softmax of `x[rows, n]` in place, max-subtracted for stability.
pub fn softmax_rows(x: &mut [f32], n: usize) {
    for row in x.chunks_exact_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Logistic function, element-wise.
pub fn sigmoid(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, &i)| *o = 1.0 / (1.0 + (-i).exp()));
}

/// Hyperbolic tangent, element-wise.
pub fn tanh(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, &i)| *o = i.tanh());
}
