//! Batch-1 speed of a weight-shared Linear layer from its codebook form, against the
//! runtime's dense f32 kernel in the same run, on the layer shapes of the seed MLP
//! (784→64, 64→10) and LeNet-300-100 (784→300, 300→100, 100→10).
//!
//! Kernels: `dense` = the runtime's f32 GEMV (sgemm with m = 1, plus bias);
//! `gather` = `sparse::CodebookF32` (byte indices, vgatherdps from a 256-entry table);
//! `lut4` / `lut8` = `codebook::CodebookLut` with 16 values (4-bit indices) / 32 values
//! (byte indices), table in registers. Calls are interleaved (dense, gather, lut4, lut8,
//! repeated) so the machine's load hits all alike; medians over rounds of the mean
//! ns per call, and ratios dense/kernel (> 1: faster than dense) are printed.
//!
//! Run: `cargo bench --bench codebook` (env SQUEEZE_BENCH_ROUNDS, default 200).

use std::hint::black_box;
use std::time::Instant;

use squeeze::rng::Rng;
use squeeze::runtime::codebook::CodebookLut;
use squeeze::runtime::kernels::{sgemm, MatRef};
use squeeze::runtime::sparse::CodebookF32;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Mean ns per call of `f` over `reps` calls.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e9 / reps as f64
}

fn main() {
    let rounds: usize = std::env::var("SQUEEZE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let mut rng = Rng::new(7);
    println!("{:<10} {:>9} {:>9} {:>9} {:>9}   {:>8} {:>8} {:>8}", "layer", "dense ns", "gather", "lut4", "lut8", "d/gather", "d/lut4", "d/lut8");
    for &(inf, outf) in &[(784usize, 64usize), (64, 10), (784, 300), (300, 100), (100, 10)] {
        let x: Vec<f32> = (0..inf).map(|_| rng.uniform(1.0)).collect();
        let bias: Vec<f32> = (0..outf).map(|_| rng.uniform(0.1)).collect();
        let c16: Vec<f32> = (0..16).map(|_| rng.uniform(0.3)).collect();
        let c32: Vec<f32> = (0..32).map(|_| rng.uniform(0.3)).collect();
        let i16: Vec<u16> = (0..inf * outf).map(|_| rng.below(16) as u16).collect();
        let i32_: Vec<u16> = (0..inf * outf).map(|_| rng.below(32) as u16).collect();
        let gather = CodebookF32::new(&i16, None, &c16, outf, inf).unwrap();
        let lut4 = CodebookLut::new(&i16, None, &c16, outf, inf).unwrap();
        let lut8 = CodebookLut::new(&i32_, None, &c32, outf, inf).unwrap();
        let w = lut4.to_dense();
        let mut y = vec![0f32; outf];
        let mut panel = Vec::new();
        // ~50 µs of work per timed block, whatever the layer size.
        let reps = (50_000 / (inf * outf / 100).max(1)).clamp(20, 20_000);
        let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            t[0].push(time(reps, || {
                sgemm(1, outf, inf, MatRef::rows(&x, inf), MatRef::transposed(&w, inf), &mut y, outf, false);
                y.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
                black_box(&mut y);
            }));
            t[1].push(time(reps, || {
                gather.forward(&x, 1, Some(&bias), &mut y, &mut panel);
                black_box(&mut y);
            }));
            t[2].push(time(reps, || {
                lut4.forward(&x, 1, Some(&bias), &mut y);
                black_box(&mut y);
            }));
            t[3].push(time(reps, || {
                lut8.forward(&x, 1, Some(&bias), &mut y);
                black_box(&mut y);
            }));
        }
        let m: Vec<f64> = t.iter_mut().map(|v| median(v)).collect();
        println!(
            "{:<10} {:>9.0} {:>9.0} {:>9.0} {:>9.0}   {:>8.2} {:>8.2} {:>8.2}",
            format!("{inf}->{outf}"),
            m[0], m[1], m[2], m[3], m[0] / m[1], m[0] / m[2], m[0] / m[3]
        );
    }
}
