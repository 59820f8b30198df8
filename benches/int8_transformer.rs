//! The products of a BERT-small encoder (all-MiniLM-L6-v2: width 384, FFN 1536) on one
//! thread: our f32 GEMM against the exact int8 product, at 32 rows (one sentence of 32
//! tokens) and 1024 rows (batch 32), with the weights hot (the same matrix again) and
//! cold (cycling through six layers' worth, 10.6 M weights, as a real forward does).
//! Rates are multiply-adds per second; ratios int8/f32 are of the same run. The last
//! columns run the whole int8 layer (bias, dequantized f32 output) and f32 on 2 threads, cold.
//! Run: `cargo bench --bench int8_transformer`.
use std::time::Instant;

use squeeze::runtime::int8::{self, PackedMatrix, QuantizedLinear};
use squeeze::runtime::kernels::{sgemm, sgemm_threads, MatRef};
use squeeze::spec::QParams;

const SHAPES: [(&str, usize, usize); 4] = [("qkv", 384, 1152), ("out", 384, 384), ("ffn1", 384, 1536), ("ffn2", 1536, 384)];
const LAYERS: usize = 6;

fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    println!("int8 kernel: {}", int8::kernel_name());
    println!(
        "{:<6} {:>5} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7} | {:>11} {:>11} {:>7}",
        "shape", "rows", "f32 hot", "int8 hot", "ratio", "f32 cold", "int8 cold", "ratio", "f32 2thr", "layer 2thr", "ratio"
    );
    for &m in &[32usize, 1024] {
        for &(name, k, n) in &SHAPES {
            let input = QParams { scale: 1.0 / 255.0, zero_point: 3 };
            let layers: Vec<(Vec<f32>, PackedMatrix, QuantizedLinear)> = (0..LAYERS)
                .map(|_| {
                    let w: Vec<i8> = (0..n * k).map(|_| (rnd() % 255) as u8 as i8).collect();
                    let wf = w.iter().map(|&v| v as f32 * 0.01).collect();
                    let layer = QuantizedLinear::new(&w, &vec![0.01; n], n, k, Some(&vec![0.5; n]), input, None, false);
                    (wf, PackedMatrix::new(&w, n, k), layer)
                })
                .collect();
            let xq: Vec<u8> = (0..m * k).map(|_| rnd() as u8).collect();
            let xf: Vec<f32> = xq.iter().map(|&v| v as f32 / 255.0).collect();
            let (mut yf, mut c, mut scratch) = (vec![0f32; m * n], vec![0i32; m * n], Vec::new());
            let reps = if m == 32 { 60 } else { 6 };
            let f32_run = |l: &(Vec<f32>, PackedMatrix, QuantizedLinear), yf: &mut Vec<f32>| sgemm(m, n, k, MatRef::rows(&xf, k), MatRef::transposed(&l.0, k), yf, n, false);
            let f32_two = |l: &(Vec<f32>, PackedMatrix, QuantizedLinear), yf: &mut Vec<f32>| sgemm_threads(m, n, k, MatRef::rows(&xf, k), MatRef::transposed(&l.0, k), yf, n, false, 2);
            let macs = (m * n * k) as f64;
            let f_hot = best(reps, || f32_run(&layers[0], &mut yf));
            let i_hot = best(reps, || int8::matmul_u8_i8(&xq, m, &layers[0].1, &mut c, &mut scratch));
            let f_cold = best(reps / 3, || layers.iter().for_each(|l| f32_run(l, &mut yf))) / LAYERS as f64;
            let i_cold = best(reps / 3, || layers.iter().for_each(|l| int8::matmul_u8_i8(&xq, m, &l.1, &mut c, &mut scratch))) / LAYERS as f64;
            let f_two = best(reps / 3, || layers.iter().for_each(|l| f32_two(l, &mut yf))) / LAYERS as f64;
            let l_two = best(reps / 3, || layers.iter().for_each(|l| l.2.forward_f32_threads(&xq, m, &mut yf, &mut scratch, 2))) / LAYERS as f64;
            let g = |t: f64| format!("{:.1} G/s", macs / t / 1e9);
            println!(
                "{name:<6} {m:>5} {:>10} {:>10} {:>6.2}x {:>10} {:>10} {:>6.2}x | {:>11} {:>11} {:>6.2}x",
                g(f_hot),
                g(i_hot),
                f_hot / i_hot,
                g(f_cold),
                g(i_cold),
                f_cold / i_cold,
                g(f_two),
                g(l_two),
                f_two / l_two
            );
        }
    }
}
