//! Tests of the int8 kernels and layers: every kernel against the scalar reference, the
//! packings, requantization and the layers' outputs.

use super::*;
use super::linear::row_range_lanes;
use super::pack::pack_panels;
use super::requant::quantize_u8_impl;
use crate::spec::QParams;
use crate::rng::Rng;

/// u8 data with extremes: a third 0/255, the rest uniform.
fn rand_u8(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| match rng.below(6) {
            0 => 0,
            1 => 255,
            _ => rng.below(256) as u8,
        })
        .collect()
}

/// i8 data with extremes -128/127 included.
fn rand_i8(rng: &mut Rng, len: usize) -> Vec<i8> {
    (0..len)
        .map(|_| match rng.below(6) {
            0 => -128,
            1 => 127,
            _ => (rng.below(256) as i32 - 128) as i8,
        })
        .collect()
}

#[test]
fn every_kernel_matches_reference_bit_for_bit() {
    let mut rng = Rng::new(42);
    let kernels = Kernel::available();
    assert!(kernels.contains(&Kernel::Scalar));
    let mut scratch = Vec::new();
    for &m in &[1, 3, 17, 256] {
        for &n in &[1, 10, 15, 64, 100] {
            for &k in &[1, 5, 25, 63, 784] {
                let a = rand_u8(&mut rng, m * k);
                let b = rand_i8(&mut rng, n * k);
                let mut want = vec![0; m * n];
                matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
                for &kern in &kernels {
                    let p = PackedMatrix::with_kernel(&b, n, k, kern);
                    let mut got = vec![0; m * n];
                    matmul_u8_i8(&a, m, &p, &mut got, &mut scratch);
                    assert_eq!(got, want, "{} m={m} n={n} k={k}", kern.name());
                }
            }
        }
    }
}

/// The product split among threads (by 16-output blocks, or rows on the scalar
/// kernel) equals the plain reference, on odd shapes large enough to be split.
#[test]
fn threaded_product_matches_reference() {
    let mut rng = Rng::new(11);
    for &(m, n, k) in &[(37, 53, 131), (1, 290, 901), (5, 1000, 77)] {
        let a = rand_u8(&mut rng, m * k);
        let b = rand_i8(&mut rng, n * k);
        let mut want = vec![0i32; m * n];
        matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
        for kernel in Kernel::available() {
            let packed = PackedMatrix::with_kernel(&b, n, k, kernel);
            let kw = k.div_ceil(kernel.elems_per_word());
            let mut ap = vec![0i32; m * kw];
            pack_rows(kernel.elems_per_word(), &a, m, k, &mut ap);
            let init = vec![0i32; blocks(n) * NR];
            for threads in [1, 2, 3] {
                let mut c = vec![7i32; m * n];
                gemm_packed_threads(kernel, &ap, m, &packed, &init, &mut c, threads);
                assert_eq!(c, want, "{} {m}×{n}×{k} on {threads} threads", kernel.name());
            }
        }
    }
}

/// Dynamic (per-row) quantization: close to the f32 product on an odd shape, the
/// same bits on the scalar kernel and on 2 threads.
#[test]
fn dynamic_linear_matches_float_and_is_kernel_independent() {
    let mut rng = Rng::new(12);
    let (rows, n, k) = (7, 45, 203);
    let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(0.3)).collect();
    let (wq, ws) = crate::compress::quantize::quantize_per_channel(&w, n);
    let bias: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
    // Rows of different ranges, one all positive, one constant.
    let mut x: Vec<f32> = (0..rows * k).map(|i| rng.uniform(1.0) * (1 + i / k) as f32).collect();
    x[k..2 * k].iter_mut().for_each(|v| *v = v.abs() + 0.5);
    x[2 * k..3 * k].iter_mut().for_each(|v| *v = 0.25);
    let layer = DynamicLinear::new(&wq, &ws, n, k, Some(&bias));
    let mut y = vec![0f32; rows * n];
    let mut sc = DynamicScratch::default();
    layer.forward(&x, rows, &mut y, &mut sc, 1);
    for r in 0..rows {
        let scale = x[r * k..(r + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs()));
        for o in 0..n {
            let exact: f32 = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum::<f32>() + bias[o];
            // Activation rounding (scale/255 per value) and weight rounding bound the error.
            let tol = 0.02 * scale * (k as f32).sqrt();
            assert!((y[r * n + o] - exact).abs() < tol, "row {r} out {o}: {} vs {exact}", y[r * n + o]);
        }
    }
    let mut y2 = vec![0f32; rows * n];
    layer.forward(&x, rows, &mut y2, &mut sc, 2);
    assert_eq!(y, y2);
    set_force_scalar(true);
    let scalar_layer = DynamicLinear::new(&wq, &ws, n, k, Some(&bias));
    let mut y3 = vec![0f32; rows * n];
    scalar_layer.forward(&x, rows, &mut y3, &mut sc, 1);
    set_force_scalar(false);
    assert_eq!(y, y3);
}

/// Quantizing straight into panels on 2 threads (uneven parts, a short last panel, an
/// odd row length) gives the words, scales and zero points of quantizing each row and
/// packing them afterwards.
#[test]
fn quantize_rows_to_panels_matches_quantize_then_pack() {
    let mut rng = Rng::new(5);
    for (rows, k) in [(173usize, 203usize), (7, 9), (1, 1)] {
        let x: Vec<f32> = (0..rows * k).map(|i| rng.uniform(2.0) + (i / k % 3) as f32).collect();
        let kw = k.div_ceil(2);
        let (mut q, mut want_scale, mut want_zp) = (vec![0u8; rows * k], vec![], vec![]);
        for (xr, qr) in x.chunks_exact(k).zip(q.chunks_exact_mut(k)) {
            let (lo, hi) = row_range_lanes(xr);
            let qp = QParams::from_range(lo, hi);
            quantize_u8_impl(xr, qp, qr);
            want_scale.push(qp.scale);
            want_zp.push(qp.zero_point);
        }
        let mut want = vec![0i32; rows * kw];
        pack_panels(&q, rows, k, &mut want);
        for threads in [1, 2] {
            let (mut got, mut scale, mut zp) = (vec![-1i32; rows * kw], vec![0f32; rows], vec![0i32; rows]);
            quantize_rows_to_panels(&x, rows, k, &mut got, &mut scale, &mut zp, threads);
            assert_eq!((&got, &scale, &zp), (&want, &want_scale, &want_zp), "rows {rows} k {k} threads {threads}");
        }
    }
}

#[test]
fn row_range_is_the_plain_min_and_max() {
    let mut rng = Rng::new(31);
    for len in [0usize, 1, 7, 8, 9, 383, 384, 1536] {
        let x: Vec<f32> = (0..len).map(|_| rng.uniform(3.0)).collect();
        let plain = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert_eq!(row_range(&x), plain, "len {len}");
        assert_eq!(row_range_lanes(&x), plain, "len {len}");
    }
}

#[test]
fn worst_case_sums_are_exact() {
    // All 255 × -128 and 255 × 127: the largest magnitudes, no saturation allowed.
    for &(k, wv) in &[(784usize, -128i8), (784, 127), (4099, -128)] {
        let (m, n) = (5, 17);
        let a = vec![255u8; m * k];
        let b = vec![wv; n * k];
        let mut want = vec![0; m * n];
        matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
        assert_eq!(want[0], 255 * wv as i32 * k as i32);
        for kern in Kernel::available() {
            let p = PackedMatrix::with_kernel(&b, n, k, kern);
            let mut got = vec![0; m * n];
            matmul_u8_i8(&a, m, &p, &mut got, &mut Vec::new());
            assert_eq!(got, want, "{}", kern.name());
        }
    }
}

/// The VNNI kernel cannot run on a CPU without AVX-512; check its packed layouts
/// (weights and 4-byte activation words) with a scalar emulation of the kernel's
/// loop instead, lane by lane as `vpdpbusd` computes it.
#[test]
fn vnni_layout_emulated() {
    let mut rng = Rng::new(3);
    for &(m, n, k) in &[(3, 10, 5), (17, 64, 63), (1, 100, 784), (2, 15, 1)] {
        let a = rand_u8(&mut rng, m * k);
        let b = rand_i8(&mut rng, n * k);
        let mut want = vec![0; m * n];
        matmul_u8_i8_reference(&a, &b, m, n, k, &mut want);
        let kw = k.div_ceil(4);
        let w = pack_vnni(&b, n, k);
        let mut ap = vec![0i32; m * kw];
        pack_rows(4, &a, m, k, &mut ap);
        for r in 0..m {
            for blk in 0..blocks(n) {
                let mut acc = [0i32; NR];
                for g in 0..kw {
                    let x = ap[r * kw + g].to_le_bytes();
                    for (lane, acc) in acc.iter_mut().enumerate() {
                        for t in 0..4 {
                            let wv = w[((blk * kw + g) * NR + lane) * 4 + t];
                            *acc += x[t] as i32 * wv as i32;
                        }
                    }
                }
                for lane in 0..NR.min(n - blk * NR) {
                    assert_eq!(acc[lane], want[r * n + blk * NR + lane]);
                }
            }
        }
    }
}

#[test]
fn force_scalar_switches_kernel_name() {
    // Only this test touches the global flag; the others pick kernels explicitly.
    let detected = Kernel::detect().name();
    set_force_scalar(true);
    assert_eq!(kernel_name(), "scalar");
    set_force_scalar(false);
    assert_eq!(kernel_name(), detected);
}

#[test]
fn requant_matches_real_rounding() {
    let mut rng = Rng::new(9);
    for &m in &[1e-9, 0.000_123, 0.003_921_568_6, 0.25, 0.5, 0.999_999, 1.0, 1.5, 3.7, 100.0, 255.9, 5e8] {
        let rq = Requant::from_real(m);
        assert!((rq.to_real() - m).abs() <= m * 2f64.powi(-30), "{m} -> {}", rq.to_real());
        for i in 0..2000 {
            let acc = match i {
                0 => i32::MAX,
                1 => i32::MIN,
                2 => 0,
                _ => (rng.next_u64() as i32) >> rng.below(31),
            };
            // Exact rational rounding in i128: p / 2^shift, ties away from zero.
            let p = acc as i128 * rq.multiplier() as i128;
            let d = 1i128 << rq.shift();
            let (q, rem) = (p.div_euclid(d), p.rem_euclid(d));
            let up = 2 * rem > d || (2 * rem == d && p > 0);
            let want = (q + up as i128).clamp(i32::MIN as i128, i32::MAX as i128) as i32;
            assert_eq!(rq.apply(acc), want, "m={m} acc={acc}");
            // And against the requested multiplier: within one step.
            let approx = (acc as f64 * m).clamp(i32::MIN as f64, i32::MAX as f64);
            assert!((rq.apply(acc) as f64 - approx).abs() <= 1.0 + approx.abs() * 1e-9);
        }
    }
    // Ties go away from zero.
    let half = Requant::from_real(0.5);
    assert_eq!((half.apply(1), half.apply(-1), half.apply(3), half.apply(-3)), (1, -1, 2, -2));
    assert_eq!(Requant::from_real(0.0).apply(12345), 0);
}

#[test]
fn quantize_roundtrip_and_rounding() {
    let qp = QParams { scale: 0.1, zero_point: 100 };
    let x = [0.0, 0.05, -0.05, 0.149, 1.0, -10.0, -11.0, 15.5, 16.0, 1e9, -1e9, f32::NAN];
    let mut q = [0u8; 12];
    quantize_u8(&x, qp, &mut q);
    for (i, (&v, &got)) in x.iter().zip(&q).enumerate() {
        let want = if v.is_nan() { 100 } else { ((v / qp.scale).round() as i64 + 100).clamp(0, 255) as u8 };
        assert_eq!(got, want, "x[{i}] = {v}");
    }
    let mut back = [0f32; 12];
    dequantize_u8(&q, qp, &mut back);
    assert_eq!(back[0], 0.0);
    assert!((back[4] - 1.0).abs() < 1e-6);
}

fn qp_of(v: &[f32]) -> QParams {
    let (lo, hi) = v.iter().fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
    QParams::from_range(lo, hi)
}

/// Random layer data: u8 input, symmetric i8 weights (-127..=127) with scales, bias.
struct LayerData {
    x: Vec<u8>,
    xq: QParams,
    w: Vec<i8>,
    ws: Vec<f32>,
    bias: Vec<f32>,
}

fn layer_data(rng: &mut Rng, batch_len: usize, n: usize, k: usize) -> LayerData {
    let x = rand_u8(rng, batch_len);
    let xq = QParams { scale: 0.02, zero_point: 37 };
    let w = (0..n * k).map(|_| (rng.below(255) as i32 - 127) as i8).collect();
    let ws = (0..n).map(|_| 0.001 + 0.01 * rng.next_f32()).collect();
    let bias = (0..n).map(|_| rng.uniform(1.0)).collect();
    LayerData { x, xq, w, ws, bias }
}

/// Compare integer outputs with a float computation of the same quantized values.
fn check_u8_and_f32(float_y: &[f32], oc_of: impl Fn(usize) -> usize, relu: bool, yq: QParams, got_u8: &[u8], got_f32: &[f32], d: &LayerData) {
    let yf: Vec<f32> = float_y.iter().map(|&v| if relu { v.max(0.0) } else { v }).collect();
    let mut want = vec![0u8; yf.len()];
    quantize_u8(&yf, yq, &mut want);
    for (i, (&g, &w)) in got_u8.iter().zip(&want).enumerate() {
        assert!((g as i32 - w as i32).abs() <= 1, "u8 out {i}: got {g}, float says {w}");
    }
    for (i, (&g, &w)) in got_f32.iter().zip(&yf).enumerate() {
        // Only the bias is rounded (half an accumulator step) plus f32 error.
        let tol = 0.5 * d.xq.scale * d.ws[oc_of(i)] + 1e-4 * (1.0 + w.abs());
        assert!((g - w).abs() <= tol, "f32 out {i}: got {g}, float says {w}");
    }
}

#[test]
fn linear_agrees_with_float() {
    let mut rng = Rng::new(5);
    for &(batch, n, k, relu) in &[(1, 64, 784, true), (3, 10, 64, false), (17, 15, 5, true), (256, 100, 63, false)] {
        let d = layer_data(&mut rng, batch * k, n, k);
        let mut xf = vec![0f32; d.x.len()];
        dequantize_u8(&d.x, d.xq, &mut xf);
        let mut yf = vec![0f32; batch * n];
        for r in 0..batch {
            for o in 0..n {
                let s: f64 = (0..k).map(|kk| xf[r * k + kk] as f64 * (d.w[o * k + kk] as f64 * d.ws[o] as f64)).sum();
                yf[r * n + o] = (s + d.bias[o] as f64) as f32;
            }
        }
        let yq = qp_of(&yf);
        let layer = QuantizedLinear::new(&d.w, &d.ws, n, k, Some(&d.bias), d.xq, Some(yq), relu);
        let (mut yu, mut yo) = (vec![0u8; batch * n], vec![0f32; batch * n]);
        let mut scratch = Vec::new();
        layer.forward_u8(&d.x, batch, &mut yu, &mut scratch);
        layer.forward_f32(&d.x, batch, &mut yo, &mut scratch);
        check_u8_and_f32(&yf, |i| i % n, relu, yq, &yu, &yo, &d);
    }
}

#[test]
fn conv_agrees_with_naive_float_conv() {
    let mut rng = Rng::new(6);
    // (batch, ic, oc, h, w, kernel, stride, padding, relu)
    let cases = [(2, 1, 8, 28, 28, 5, 1, 2, true), (1, 3, 10, 9, 7, 3, 2, 1, false), (3, 4, 17, 6, 6, 3, 1, 0, true), (1, 2, 1, 5, 5, 1, 1, 0, false)];
    for &(batch, ic, oc, h, w, kk, s, pad, relu) in &cases {
        let k = ic * kk * kk;
        let d = layer_data(&mut rng, batch * ic * h * w, oc, k);
        let (oh, ow) = ((h + 2 * pad - kk) / s + 1, (w + 2 * pad - kk) / s + 1);
        let mut xf = vec![0f32; d.x.len()];
        dequantize_u8(&d.x, d.xq, &mut xf);
        let mut yf = vec![0f32; batch * oc * oh * ow];
        for b in 0..batch {
            for o in 0..oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = d.bias[o] as f64;
                        for c in 0..ic {
                            for ki in 0..kk {
                                for kj in 0..kk {
                                    let (iy, ix) = ((oy * s + ki) as isize - pad as isize, (ox * s + kj) as isize - pad as isize);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = xf[((b * ic + c) * h + iy as usize) * w + ix as usize] as f64;
                                    let wv = d.w[((o * ic + c) * kk + ki) * kk + kj] as f64 * d.ws[o] as f64;
                                    sum += xv * wv;
                                }
                            }
                        }
                        yf[((b * oc + o) * oh + oy) * ow + ox] = sum as f32;
                    }
                }
            }
        }
        let yq = qp_of(&yf);
        let conv = QuantizedConv2d::new(&d.w, &d.ws, oc, ic, h, w, kk, s, pad, Some(&d.bias), d.xq, Some(yq), relu);
        assert_eq!(conv.output_shape(), [oc, oh, ow]);
        let (mut yu, mut yo) = (vec![0u8; yf.len()], vec![0f32; yf.len()]);
        let mut scratch = Vec::new();
        conv.forward_u8(&d.x, batch, &mut yu, &mut scratch);
        conv.forward_f32(&d.x, batch, &mut yo, &mut scratch);
        check_u8_and_f32(&yf, |i| (i / (oh * ow)) % oc, relu, yq, &yu, &yo, &d);
    }
}

/// The conv's SIMD path (activation words built by `put_packed`) against the
/// scalar one for every available kernel: bit-identical u8 outputs.
#[test]
fn conv_kernels_bit_identical() {
    let mut rng = Rng::new(8);
    let (ic, oc, h, w, kk) = (3, 20, 11, 9, 3);
    let d = layer_data(&mut rng, ic * h * w, oc, ic * kk * kk);
    let yq = QParams { scale: 0.05, zero_point: 120 };
    let mut outs = Vec::new();
    for kern in Kernel::available() {
        let mut conv = QuantizedConv2d::new(&d.w, &d.ws, oc, ic, h, w, kk, 2, 1, Some(&d.bias), d.xq, Some(yq), false);
        conv.weights = PackedMatrix::with_kernel(&d.w, oc, ic * kk * kk, kern);
        let mut y = vec![0u8; oc * 6 * 5];
        conv.forward_u8(&d.x, 1, &mut y, &mut Vec::new());
        outs.push(y);
    }
    assert!(outs.windows(2).all(|p| p[0] == p[1]));
}

/// The direct stride-1 conv against the im2col path on the scalar kernel: the
/// same accumulators, so bit-identical u8 and f32 outputs.
#[test]
fn direct_conv_bit_identical_to_scalar_im2col() {
    if !Kernel::Avx2.is_available() {
        return;
    }
    let mut rng = Rng::new(21);
    // (ic, oc, h, w, kernel, padding)
    let cases = [(1, 6, 28, 28, 5, 2), (6, 16, 14, 14, 5, 0), (3, 20, 11, 9, 3, 1), (2, 9, 5, 13, 4, 2), (1, 3, 3, 3, 3, 1), (4, 1, 7, 6, 2, 0), (2, 8, 9, 8, 1, 0)];
    for &(ic, oc, h, w, kk, pad) in &cases {
        let d = layer_data(&mut rng, 3 * ic * h * w, oc, ic * kk * kk);
        let yq = QParams { scale: 0.05, zero_point: 120 };
        for relu in [false, true] {
            let direct = QuantizedConv2d::new(&d.w, &d.ws, oc, ic, h, w, kk, 1, pad, Some(&d.bias), d.xq, Some(yq), relu);
            assert!(direct.direct.is_some());
            let mut scalar = direct.clone();
            scalar.weights = PackedMatrix::with_kernel(&d.w, oc, ic * kk * kk, Kernel::Scalar);
            let len = 3 * oc * direct.out_h * direct.out_w;
            let (mut a, mut b) = (vec![0u8; len], vec![1u8; len]);
            direct.forward_u8(&d.x, 3, &mut a, &mut Vec::new());
            scalar.forward_u8(&d.x, 3, &mut b, &mut Vec::new());
            assert_eq!(a, b, "u8 ic={ic} oc={oc} {h}x{w} k={kk} p={pad} relu={relu}");
            let (mut a, mut b) = (vec![0f32; len], vec![1f32; len]);
            direct.forward_f32(&d.x, 3, &mut a, &mut Vec::new());
            scalar.forward_f32(&d.x, 3, &mut b, &mut Vec::new());
            assert_eq!(a, b, "f32 ic={ic} oc={oc} {h}x{w} k={kk} p={pad} relu={relu}");
        }
    }
}

#[test]
fn vector_requant_equals_scalar_requant() {
    let mut rng = Rng::new(22);
    for &m in &[1e-9, 0.000_123, 0.003_921_568_6, 0.25, 0.5, 0.999_999, 1.0, 3.7, 255.9, 5e8] {
        let rq = Requant::from_real(m);
        for (zp, lo) in [(0, 0), (120, 120), (255, 0), (7, 7)] {
            let acc: Vec<i32> = (0..203)
                .map(|i| match i {
                    0 => i32::MAX,
                    1 => i32::MIN,
                    2 => 0,
                    _ => (rng.next_u64() as i32) >> rng.below(31),
                })
                .collect();
            let want: Vec<u8> = acc.iter().map(|&a| rq.apply_u8(a, zp, lo)).collect();
            let mut got = vec![0u8; acc.len()];
            requant_row(&rq, zp, lo, &acc, &mut got);
            assert_eq!(got, want, "m={m} zp={zp} lo={lo}");
        }
    }
}

/// The AVX2 quantization gives the same bytes as the scalar definition, including
/// ties, NaN, infinities and values far outside the range.
#[test]
fn vector_quantize_equals_scalar_quantize() {
    let mut rng = Rng::new(23);
    for qp in [QParams { scale: 1.0 / 255.0, zero_point: 0 }, QParams { scale: 0.1, zero_point: 100 }, QParams { scale: 0.037, zero_point: 255 }, QParams { scale: 3.0, zero_point: 7 }] {
        let mut x: Vec<f32> = (0..1001).map(|_| rng.uniform(20.0 * qp.scale * 255.0)).collect();
        // Exact ties around the zero point and specials.
        for (i, t) in (-300..300).enumerate() {
            x[i] = (t as f32 + 0.5) * qp.scale;
        }
        x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, f32::MIN_POSITIVE]);
        let (mut got, mut want) = (vec![0u8; x.len()], vec![0u8; x.len()]);
        quantize_u8(&x, qp, &mut got);
        quantize_u8_impl(&x, qp, &mut want);
        assert_eq!(got, want, "{qp:?}");
    }
}

/// The vector rounding (`trunc(v + copysign(0.49999997, v))`) against the scalar
/// definition: random scales and zero points, the floats around every half-integer
/// quotient, random bit patterns (subnormals, huge values, NaN), odd lengths.
#[test]
fn vector_quantize_rounds_like_scalar() {
    let mut rng = Rng::new(25);
    let mut scales: Vec<f32> = (0..40).map(|_| 10f32.powf(rng.next_f32() * 8.0 - 6.0)).collect();
    scales.extend([1.0 / 255.0, 2.0 / 255.0, 1.0, 0.5, 0.99999994, 1.0000001, 1.9999999]);
    for scale in scales {
        let qp = QParams { scale, zero_point: rng.below(256) as i32 };
        let mut x = Vec::new();
        for t in -300..300 {
            let mut v = f32::from_bits(((t as f32 + 0.5) * scale).to_bits().wrapping_sub(3));
            for _ in 0..7 {
                x.push(v);
                v = f32::from_bits(v.to_bits().wrapping_add(1));
            }
        }
        x.extend((0..3000).map(|_| f32::from_bits(rng.next_u64() as u32)));
        x.extend((0..1001).map(|_| f32::from_bits(rng.next_u64() as u32 & 0x807f_ffff)));
        let (mut got, mut want) = (vec![0u8; x.len()], vec![0u8; x.len()]);
        quantize_u8(&x, qp, &mut got);
        quantize_u8_impl(&x, qp, &mut want);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "scale {scale:e} zp {} x {:e}", qp.zero_point, x[i]);
        }
    }
}

/// A Linear layer's u8 and f32 outputs equal the plain integer computation exactly
/// (reference product + bias/zero-point start, then `Requant::apply_u8` / scale), for
/// the dense and the sparse product, on odd shapes and batches 1 to 257.
#[test]
fn linear_outputs_equal_the_integer_reference() {
    let mut rng = Rng::new(24);
    for &(n, k) in &[(1, 1), (7, 5), (10, 64), (33, 63), (64, 785), (100, 31)] {
        for &batch in &[1usize, 2, 3, 5, 17, 64, 257] {
            for relu in [false, true] {
                let mut d = layer_data(&mut rng, batch * k, n, k);
                // Prune about half, as the sparse product expects.
                d.w.iter_mut().for_each(|v| if rng.below(2) == 0 { *v = 0 });
                let yq = QParams { scale: 0.03 + rng.next_f32(), zero_point: rng.below(256) as i32 };
                let dense = QuantizedLinear::new(&d.w, &d.ws, n, k, Some(&d.bias), d.xq, Some(yq), relu);
                let mut c = vec![0i32; batch * n];
                matmul_u8_i8_reference(&d.x, &d.w, batch, n, k, &mut c);
                let (zp, lo) = dense.epi.output_qp();
                let want_u8: Vec<u8> = c.iter().enumerate().map(|(i, &v)| dense.epi.requant[i % n].apply_u8(v.wrapping_add(dense.epi.init[i % n]), zp, lo)).collect();
                let want_f32: Vec<f32> = c.iter().enumerate().map(|(i, &v)| dense.epi.to_f32(i % n, v.wrapping_add(dense.epi.init[i % n]))).collect();
                for layer in [dense.clone(), dense.clone().with_sparse_product()] {
                    let (mut yu, mut yf) = (vec![0u8; batch * n], vec![0f32; batch * n]);
                    layer.forward_u8(&d.x, batch, &mut yu, &mut Vec::new());
                    layer.forward_f32(&d.x, batch, &mut yf, &mut Vec::new());
                    let sparse = layer.sparse.is_some();
                    assert_eq!(yu, want_u8, "u8 n={n} k={k} batch={batch} relu={relu} sparse={sparse}");
                    assert_eq!(yf, want_f32, "f32 n={n} k={k} batch={batch} relu={relu} sparse={sparse}");
                }
            }
        }
    }
}

/// Speed of the seed MLP (784→64 ReLU → 64→10), single thread and 2 threads.
/// Run: `cargo test --release --lib int8::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_mlp() {
    use std::time::Instant;
    let mut rng = Rng::new(1);
    let xq = QParams { scale: 1.0 / 255.0, zero_point: 0 };
    let hq = QParams { scale: 0.05, zero_point: 0 };
    let w1 = rand_i8(&mut rng, 64 * 784);
    let w2 = rand_i8(&mut rng, 10 * 64);
    let l1 = QuantizedLinear::new(&w1, &[0.002; 64], 64, 784, Some(&[0.1; 64]), xq, Some(hq), true);
    let l2 = QuantizedLinear::new(&w2, &[0.01; 10], 10, 64, Some(&[0.0; 10]), hq, None, false);
    let run = |x: &[u8], batch: usize, h: &mut Vec<u8>, y: &mut Vec<f32>, s: &mut Vec<i32>| {
        l1.forward_u8(x, batch, h, s);
        l2.forward_f32(h, batch, y, s);
    };
    println!("kernel: {}", kernel_name());
    for &batch in &[1usize, 256] {
        let x = rand_u8(&mut rng, batch * 784);
        let (mut h, mut y, mut s) = (vec![0u8; batch * 64], vec![0f32; batch * 10], Vec::new());
        let iters = if batch == 1 { 200_000 } else { 2_000 };
        for _ in 0..iters / 10 {
            run(&x, batch, &mut h, &mut y, &mut s);
        }
        let t = Instant::now();
        for _ in 0..iters {
            run(&x, batch, &mut h, &mut y, &mut s);
        }
        let per = t.elapsed().as_secs_f64() / iters as f64;
        println!("batch {batch}: {:.3} µs per call, {:.2} M images/s (1 thread)", per * 1e6, batch as f64 / per / 1e6);
        // The first layer alone.
        let t = Instant::now();
        for _ in 0..iters {
            l1.forward_u8(&x, batch, &mut h, &mut s);
        }
        let per1 = t.elapsed().as_secs_f64() / iters as f64;
        println!("  layer 784→64 alone: {:.3} µs", per1 * 1e6);
    }
    // Two threads, each running batches of 256.
    let batch = 256;
    let x = rand_u8(&mut rng, batch * 784);
    let iters = 2_000;
    let t = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                let (mut h, mut y, mut s) = (vec![0u8; batch * 64], vec![0f32; batch * 10], Vec::new());
                for _ in 0..iters {
                    run(&x, batch, &mut h, &mut y, &mut s);
                }
            });
        }
    });
    let el = t.elapsed().as_secs_f64();
    println!("2 threads, batch 256: {:.2} M images/s", (2 * iters * batch) as f64 / el / 1e6);
    // Scalar for comparison.
    set_force_scalar(true);
    let t = Instant::now();
    let (mut h, mut y, mut s) = (vec![0u8; batch * 64], vec![0f32; batch * 10], Vec::new());
    for _ in 0..50 {
        run(&x, batch, &mut h, &mut y, &mut s);
    }
    set_force_scalar(false);
    println!("scalar, batch 256: {:.2} M images/s", (50 * batch) as f64 / t.elapsed().as_secs_f64() / 1e6);
}
