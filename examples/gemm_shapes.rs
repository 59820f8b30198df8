//! Times the f32 products of one all-MiniLM-L6-v2 forward at 32 tokens (6 layers: fused
//! QKV, attention output, FFN in, FFN out; distinct weights, so they come from memory as
//! in the model) through `runtime::kernels::sgemm_threads`, to compare with the `embed
//! --profile` figures of the model itself.
//!   cargo run --release --example gemm_shapes
use squeeze::runtime::kernels::{sgemm_threads, MatRef};
use squeeze::runtime::packed::PackedLinear;
use std::time::Instant;

fn main() {
    let rows: usize = std::env::var("ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let shapes = [(384usize, 1152usize), (384, 384), (384, 1536), (1536, 384)];
    let layers = 6;
    let ws: Vec<Vec<Vec<f32>>> = (0..layers).map(|l| shapes.iter().map(|&(k, n)| (0..k * n).map(|i| ((i + l) % 7) as f32 * 0.01).collect()).collect()).collect();
    let x: Vec<f32> = (0..rows * 1536).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut y = vec![0f32; rows * 1536];
    for threads in [1, 2] {
        let mut per_shape = [0f64; 4];
        let reps = 20;
        for _ in 0..reps {
            for w in &ws {
                for (s, &(k, n)) in shapes.iter().enumerate() {
                    let t = Instant::now();
                    sgemm_threads(rows, n, k, MatRef::rows(&x[..rows * k], k), MatRef::transposed(&w[s], k), &mut y[..rows * n], n, false, threads);
                    per_shape[s] += t.elapsed().as_secs_f64();
                }
            }
        }
        let total: f64 = per_shape.iter().sum::<f64>() / reps as f64;
        let packed: Vec<Vec<PackedLinear>> = ws.iter().map(|l| shapes.iter().zip(l).map(|(&(k, n), w)| PackedLinear::new(w, None, k, n)).collect()).collect();
        let mut packed_shape = [0f64; 4];
        for _ in 0..reps {
            for layer in &packed {
                for (s, p) in layer.iter().enumerate() {
                    let t = Instant::now();
                    p.forward(&x[..rows * p.inf], rows, &mut y[..rows * p.outf], threads);
                    packed_shape[s] += t.elapsed().as_secs_f64();
                }
            }
        }
        println!("threads {threads}: packed once: {:.2} ms; per shape: {}", packed_shape.iter().sum::<f64>() / reps as f64 * 1e3,
            shapes.iter().zip(packed_shape).map(|(&(k, n), t)| format!("{k}x{n} {:.2} ms", t / reps as f64 * 1e3)).collect::<Vec<_>>().join(", "));
        println!("threads {threads}: one forward's products {:.2} ms; per shape (6 layers): {}", total * 1e3,
            shapes.iter().zip(per_shape).map(|(&(k, n), t)| format!("{k}x{n} {:.2} ms", t / reps as f64 * 1e3)).collect::<Vec<_>>().join(", "));
    }
}
