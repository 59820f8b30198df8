//! Where the time of an integer Linear layer goes (seed MLP shapes): input
//! quantization, the raw product, the layer with its requantization, the f32 GEMM.
//! Run: `cargo bench --bench int8_parts`.

mod common;
use squeeze::runtime::int8::{self, PackedMatrix, QuantizedLinear};
use squeeze::spec::QParams;

/// Best microseconds of `reps` calls of `f`.
fn best(reps: usize, f: impl FnMut()) -> f64 {
    common::best_secs(reps, f) * 1e6
}

fn main() {
    let (k, n) = (784usize, 64usize);
    let mut s = 12345u64;
    let mut rnd = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
    let w: Vec<i8> = (0..n * k).map(|_| (rnd() % 255) as i8).collect();
    let w2: Vec<i8> = (0..10 * n).map(|_| (rnd() % 255) as i8).collect();
    let wf: Vec<f32> = w.iter().map(|&v| v as f32 * 0.01).collect();
    let xq = QParams { scale: 1.0 / 255.0, zero_point: 0 };
    let hq = QParams { scale: 0.05, zero_point: 0 };
    let l1 = QuantizedLinear::new(&w, &vec![0.002; n], n, k, Some(&vec![0.1; n]), xq, Some(hq), true);
    let l2 = QuantizedLinear::new(&w2, &[0.01; 10], 10, n, Some(&[0.0; 10]), hq, None, false);
    let p = PackedMatrix::new(&w, n, k);
    for &m in &[1usize, 256] {
        let xf: Vec<f32> = (0..m * k).map(|i| if (i / 4) % 2 == 0 { 0.0 } else { (rnd() % 1000) as f32 / 1000.0 }).collect();
        let mut x = vec![0u8; m * k];
        let (mut h, mut y, mut c, mut sc) = (vec![0u8; m * n], vec![0f32; m * 10], vec![0i32; m * n], Vec::new());
        let mut yf = vec![0f32; m * n];
        let reps = if m == 1 { 20000 } else { 300 };
        let tq = best(reps, || int8::quantize_u8(&xf, xq, &mut x));
        let tg = best(reps, || int8::matmul_u8_i8(&x, m, &p, &mut c, &mut sc));
        let tl = best(reps, || l1.forward_u8(&x, m, &mut h, &mut sc));
        let t2 = best(reps, || l2.forward_f32(&h, m, &mut y, &mut sc));
        let tf = best(reps, || squeeze::runtime::kernels::sgemm(m, n, k, squeeze::runtime::kernels::MatRef::rows(&xf, k), squeeze::runtime::kernels::MatRef::transposed(&wf, k), &mut yf, n, false));
        println!("m={m}: quantize {tq:.2} µs, product {tg:.2}, layer1 u8 {tl:.2}, layer2 f32 {t2:.2}, f32 sgemm layer1 {tf:.2} (per image: int8 total {:.3}, f32 {:.3})", (tq + tl + t2) / m as f64, tf / m as f64);
    }
}
