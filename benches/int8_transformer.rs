//! The products of a BERT-small encoder (all-MiniLM-L6-v2: width 384, FFN 1536) on one
//! thread: our f32 GEMM against the exact int8 product, at 32 rows (one sentence of 32
//! tokens) and 1024 rows (batch 32), with the weights hot (the same matrix again) and
//! cold (cycling through six layers' worth, 10.6 M weights, as a real forward does).
//! Rates are multiply-adds per second; ratios int8/f32 are of the same run. The last
//! columns run f32 and the whole dynamic int8 layer as MiniLM's int8 recipes do (f32
//! input quantized per row, bias, f32 output) on 2 threads, cold, call by call in turn:
//! rates are medians, the ratio the median of adjacent pairs' (this machine's speed
//! drifts over minutes, and two threads drift most).
//! Run: `cargo bench --bench int8_transformer`.

mod common;

use squeeze::runtime::int8::{self, DynamicLinear, DynamicScratch, PackedMatrix};
use squeeze::report::measure::median_and_spread;
use squeeze::runtime::kernels::{sgemm, sgemm_threads, MatRef};

const SHAPES: [(&str, usize, usize); 4] = [("qkv", 384, 1152), ("out", 384, 384), ("ffn1", 384, 1536), ("ffn2", 1536, 384)];
const LAYERS: usize = 6;

use common::best_secs as best;

/// Seconds of one call of `f`.
fn time(f: impl FnOnce()) -> f64 {
    let t = std::time::Instant::now();
    f();
    t.elapsed().as_secs_f64()
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
        "shape", "rows", "f32 hot", "int8 hot", "ratio", "f32 cold", "int8 cold", "ratio", "f32 2thr", "dyn 2thr", "ratio"
    );
    for &m in &[32usize, 1024] {
        for &(name, k, n) in &SHAPES {
            let layers: Vec<(Vec<f32>, PackedMatrix, DynamicLinear)> = (0..LAYERS)
                .map(|_| {
                    let w: Vec<i8> = (0..n * k).map(|_| (rnd() % 255) as u8 as i8).collect();
                    let wf = w.iter().map(|&v| v as f32 * 0.01).collect();
                    let layer = DynamicLinear::new(&w, &vec![0.01; n], n, k, Some(&vec![0.5; n]));
                    (wf, PackedMatrix::new(&w, n, k), layer)
                })
                .collect();
            let xq: Vec<u8> = (0..m * k).map(|_| rnd() as u8).collect();
            let xf: Vec<f32> = xq.iter().map(|&v| v as f32 / 255.0).collect();
            let (mut yf, mut c, mut scratch) = (vec![0f32; m * n], vec![0i32; m * n], Vec::new());
            let reps = if m == 32 { 60 } else { 6 };
            let f32_run = |l: &(Vec<f32>, PackedMatrix, DynamicLinear), yf: &mut Vec<f32>| sgemm(m, n, k, MatRef::rows(&xf, k), MatRef::transposed(&l.0, k), yf, n, false);
            let f32_two = |l: &(Vec<f32>, PackedMatrix, DynamicLinear), yf: &mut Vec<f32>| sgemm_threads(m, n, k, MatRef::rows(&xf, k), MatRef::transposed(&l.0, k), yf, n, false, 2);
            let macs = (m * n * k) as f64;
            let f_hot = best(reps, || f32_run(&layers[0], &mut yf));
            let i_hot = best(reps, || int8::matmul_u8_i8(&xq, m, &layers[0].1, &mut c, &mut scratch));
            let f_cold = best(reps / 3, || layers.iter().for_each(|l| f32_run(l, &mut yf))) / LAYERS as f64;
            let i_cold = best(reps / 3, || layers.iter().for_each(|l| int8::matmul_u8_i8(&xq, m, &l.1, &mut c, &mut scratch))) / LAYERS as f64;
            let mut dyn_scratch = DynamicScratch::default();
            let (mut f_twos, mut l_twos, mut ratios) = (vec![], vec![], vec![]);
            for _ in 0..reps * 2 {
                let f = time(|| layers.iter().for_each(|l| f32_two(l, &mut yf))) / LAYERS as f64;
                let l = time(|| layers.iter().for_each(|l| l.2.forward(&xf, m, &mut yf, &mut dyn_scratch, 2))) / LAYERS as f64;
                f_twos.push(f);
                l_twos.push(l);
                ratios.push(f / l);
            }
            let median = |mut v: Vec<f64>| median_and_spread(&mut v).median;
            let (f_two, l_two, two_ratio) = (median(f_twos), median(l_twos), median(ratios));
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
                two_ratio
            );
        }
    }
}
