//! Tests of the f32 kernels: products, im2col/col2im, pooling, the direct convolution
//! against im2col, and the element-wise kernels.

use super::*;
use super::pool::maxpool_any;
use crate::rng::Rng;

fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]).sum();
        }
    }
    c
}

#[test]
fn sgemm_matches_naive_with_transposes_and_accumulation() {
    let mut rng = Rng::new(3);
    for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (17, 10, 64), (64, 33, 5)] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(1.0)).collect();
        for (av, bv) in [
            (MatRef::rows(&a, k), MatRef::rows(&b, n)),
            (MatRef::transposed(&a, m), MatRef::transposed(&b, k)),
        ] {
            let want = naive(m, n, k, av, bv);
            let mut c = vec![1.0; m * n];
            sgemm(m, n, k, av, bv, &mut c, n, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-4);
            }
            sgemm(m, n, k, av, bv, &mut c, n, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 2.0 * y).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn col2im_is_the_adjoint_of_im2col() {
    // <im2col(x), c> == <x, col2im(c)> for random x, c.
    let g = Window { channels: 2, height: 5, width: 6, kernel: 3, stride: 2, padding: 1 };
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..2 * 5 * 6).map(|_| rng.uniform(1.0)).collect();
    let c: Vec<f32> = (0..g.patch_len() * g.positions()).map(|_| rng.uniform(1.0)).collect();
    let mut col = vec![0.0; c.len()];
    im2col(&x, &g, 0.0, &mut col);
    let mut back = vec![0.0; x.len()];
    col2im_add(&c, &g, &mut back);
    let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
    let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
    assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
}

/// The plain per-element im2col the fast one must equal.
fn im2col_naive(x: &[f32], g: &Window, pad: f32) -> Vec<f32> {
    let (oh, ow) = (g.out_height(), g.out_width());
    let mut col = vec![0.0; g.patch_len() * oh * ow];
    for c in 0..g.channels {
        for ki in 0..g.kernel {
            for kj in 0..g.kernel {
                let row = (c * g.kernel + ki) * g.kernel + kj;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        let inside = iy >= 0 && ix >= 0 && iy < g.height as isize && ix < g.width as isize;
                        col[row * oh * ow + oy * ow + ox] =
                            if inside { x[(c * g.height + iy as usize) * g.width + ix as usize] } else { pad };
                    }
                }
            }
        }
    }
    col
}

fn windows() -> Vec<Window> {
    let w = |channels, height, width, kernel, stride, padding| Window { channels, height, width, kernel, stride, padding };
    vec![
        w(1, 28, 28, 5, 1, 2),
        w(6, 14, 14, 5, 1, 0),
        w(2, 5, 6, 3, 2, 1),
        w(3, 9, 7, 3, 2, 1),
        w(2, 7, 7, 2, 2, 0),
        w(1, 4, 3, 1, 1, 0),
        w(2, 3, 3, 4, 1, 2),
        w(1, 20, 17, 3, 3, 4),
        w(1, 11, 13, 7, 1, 3),
    ]
}

#[test]
fn batched_im2col_and_col2im_match_the_per_sample_reference() {
    let mut rng = Rng::new(11);
    for g in windows() {
        let (xl, pl, q) = (g.channels * g.height * g.width, g.patch_len(), g.positions());
        for n in [1, 3] {
            let x: Vec<f32> = (0..n * xl).map(|_| rng.uniform(1.0)).collect();
            // The batch matrix: sample s's columns at s·q, leading dimension n·q.
            let mut col = vec![f32::NAN; pl * n * q];
            im2col_batch(&x, n, &g, -7.0, &mut col);
            for s in 0..n {
                let want = im2col_naive(&x[s * xl..(s + 1) * xl], &g, -7.0);
                for r in 0..pl {
                    assert_eq!(&col[r * n * q + s * q..r * n * q + (s + 1) * q], &want[r * q..(r + 1) * q], "{g:?} n={n} s={s} row {r}");
                }
            }
            // col2im: the batched adjoint equals the per-sample naive scatter-add.
            let c: Vec<f32> = (0..pl * n * q).map(|_| rng.uniform(1.0)).collect();
            let mut dx = vec![0.5; n * xl];
            col2im_add_batch(&c, n, &g, &mut dx);
            for s in 0..n {
                let mut want = vec![0.5f32; xl];
                for c_ in 0..g.channels {
                    for ki in 0..g.kernel {
                        for kj in 0..g.kernel {
                            let row = (c_ * g.kernel + ki) * g.kernel + kj;
                            for oy in 0..g.out_height() {
                                for ox in 0..g.out_width() {
                                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                                    let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                                    if iy >= 0 && ix >= 0 && iy < g.height as isize && ix < g.width as isize {
                                        want[(c_ * g.height + iy as usize) * g.width + ix as usize] +=
                                            c[row * n * q + s * q + oy * g.out_width() + ox];
                                    }
                                }
                            }
                        }
                    }
                }
                for (i, (a, b)) in dx[s * xl..(s + 1) * xl].iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-5, "{g:?} n={n} s={s} dx[{i}]: {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn u8_im2col_matches_the_f32_one() {
    let mut rng = Rng::new(12);
    for g in windows() {
        let xl = g.channels * g.height * g.width;
        let x: Vec<u8> = (0..xl).map(|_| rng.below(256) as u8).collect();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut col = vec![0u8; g.patch_len() * g.positions()];
        im2col(&x, &g, 3u8, &mut col);
        let want = im2col_naive(&xf, &g, 3.0);
        assert!(col.iter().zip(&want).all(|(&a, &b)| a as f32 == b), "{g:?}");
    }
}

#[test]
fn batched_conv_forward_matches_a_direct_convolution() {
    let mut rng = Rng::new(13);
    for g in windows() {
        let oc = 5;
        let (xl, pl, q) = (g.channels * g.height * g.width, g.patch_len(), g.positions());
        let w: Vec<f32> = (0..oc * pl).map(|_| rng.uniform(1.0)).collect();
        let b: Vec<f32> = (0..oc).map(|_| rng.uniform(1.0)).collect();
        for n in [1, 4] {
            let x: Vec<f32> = (0..n * xl).map(|_| rng.uniform(1.0)).collect();
            let (mut col, mut tmp, mut y) = (vec![0.0; n * pl * q], vec![0.0; n * oc * q], vec![0.0; n * oc * q]);
            conv2d_forward(&x, n, &g, &w, Some(&b), oc, &mut col, &mut tmp, &mut y);
            for s in 0..n {
                let colr = im2col_naive(&x[s * xl..(s + 1) * xl], &g, 0.0);
                for o in 0..oc {
                    for p in 0..q {
                        let want = b[o] + (0..pl).map(|r| w[o * pl + r] * colr[r * q + p]).sum::<f32>();
                        let got = y[(s * oc + o) * q + p];
                        assert!((got - want).abs() < 1e-4, "{g:?} n={n} s={s} o={o} p={p}: {got} vs {want}");
                    }
                }
            }
            // And the channel-major gather inverts the scatter.
            let mut cm = vec![0.0; oc * n * q];
            samples_to_channels(&y, n, oc, q, &mut cm);
            for s in 0..n {
                for o in 0..oc {
                    assert_eq!(&cm[o * n * q + s * q..o * n * q + (s + 1) * q], &y[(s * oc + o) * q..(s * oc + o + 1) * q]);
                }
            }
        }
    }
}

#[test]
fn direct_conv_matches_the_im2col_product() {
    if !DirectConv::available() {
        return;
    }
    let mut rng = Rng::new(15);
    for g in windows().into_iter().filter(|g| g.stride == 1) {
        for oc in [1, 5, 6, 8, 9, 16, 17, 33] {
            let (xl, pl, q) = (g.channels * g.height * g.width, g.patch_len(), g.positions());
            let w: Vec<f32> = (0..oc * pl).map(|_| rng.uniform(1.0)).collect();
            let b: Vec<f32> = (0..oc).map(|_| rng.uniform(1.0)).collect();
            let n = 3;
            let x: Vec<f32> = (0..n * xl).map(|_| rng.uniform(1.0)).collect();
            let (mut col, mut tmp, mut want) = (vec![0.0; n * pl * q], vec![0.0; n * oc * q], vec![0.0; n * oc * q]);
            conv2d_forward(&x, n, &g, &w, Some(&b), oc, &mut col, &mut tmp, &mut want);
            let d = DirectConv::new(&g, &w, Some(&b), oc).unwrap();
            let mut got = vec![f32::NAN; n * oc * q];
            d.forward(&x, n, &mut got, &mut Vec::new());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-4, "{g:?} oc={oc} y[{i}]: {a} vs {b}");
            }
            // Weight and bias gradient against the im2col product dW = dY·colᵀ.
            let dy: Vec<f32> = (0..n * oc * q).map(|_| rng.uniform(1.0)).collect();
            let mut want_dw = vec![0.25f32; oc * pl];
            let mut want_db = vec![0.5f32; oc];
            for s in 0..n {
                let colr = im2col_naive(&x[s * xl..(s + 1) * xl], &g, 0.0);
                for o in 0..oc {
                    let dyo = &dy[(s * oc + o) * q..(s * oc + o + 1) * q];
                    want_db[o] += dyo.iter().sum::<f32>();
                    for r in 0..pl {
                        want_dw[o * pl + r] += dyo.iter().zip(&colr[r * q..(r + 1) * q]).map(|(a, b)| a * b).sum::<f32>();
                    }
                }
            }
            let (mut dw, mut db) = (vec![0.25f32; oc * pl], vec![0.5f32; oc]);
            assert!(direct_weight_grad(&g, oc, &x, &dy, n, &mut dw, Some(&mut db), &mut Vec::new()));
            for (i, (a, b)) in dw.iter().zip(&want_dw).enumerate() {
                assert!((a - b).abs() < 1e-3, "{g:?} oc={oc} dw[{i}]: {a} vs {b}");
            }
            for (i, (a, b)) in db.iter().zip(&want_db).enumerate() {
                assert!((a - b).abs() < 1e-3, "{g:?} oc={oc} db[{i}]: {a} vs {b}");
            }
        }
    }
}

#[test]
fn maxpool_2x2_fast_path_equals_the_general_window() {
    let mut rng = Rng::new(14);
    for (h, w) in [(28, 28), (10, 10), (7, 9), (2, 2), (5, 4), (40, 66), (3, 35)] {
        let g = Window { channels: 3, height: h, width: w, kernel: 2, stride: 2, padding: 0 };
        // Few distinct values, so ties happen and the first-on-ties rule is tested.
        let x: Vec<f32> = (0..3 * h * w).map(|_| rng.below(4) as f32).collect();
        let len = 3 * g.positions();
        let (mut y1, mut y2, mut a1, mut a2) = (vec![0.0; len], vec![0.0; len], vec![0u32; len], vec![0u32; len]);
        maxpool(&x, &g, &mut y1, Some(&mut a1));
        maxpool_any::<f32, true>(&x, &g, &mut y2, &mut a2);
        assert_eq!((&y1, &a1), (&y2, &a2), "{h}x{w}");
        let mut y3 = vec![0.0; len];
        maxpool(&x, &g, &mut y3, None);
        assert_eq!(y3, y1);
        // NaNs and signed zeros: the vector path keeps the scalar comparison order.
        let specials = [f32::NAN, 0.0, -0.0, 1.0, -1.0];
        let x: Vec<f32> = (0..3 * h * w).map(|_| specials[rng.below(5) as usize]).collect();
        let (mut y4, mut y5) = (vec![0.0f32; len], vec![0.0f32; len]);
        maxpool(&x, &g, &mut y4, None);
        maxpool_any::<f32, false>(&x, &g, &mut y5, &mut []);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y4), bits(&y5), "{h}x{w} specials");
        let xu: Vec<u8> = (0..3 * h * w).map(|_| rng.below(256) as u8).collect();
        let (mut y6, mut y7) = (vec![0u8; len], vec![0u8; len]);
        maxpool(&xu, &g, &mut y6, None);
        maxpool_any::<u8, false>(&xu, &g, &mut y7, &mut []);
        assert_eq!(y6, y7, "{h}x{w} u8");
    }
}

#[test]
fn maxpool_picks_the_max_and_its_index() {
    let g = Window { channels: 1, height: 2, width: 4, kernel: 2, stride: 2, padding: 0 };
    let x = [1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 9.0, 1.0];
    let mut y = [0.0; 2];
    let mut idx = [0u32; 2];
    maxpool(&x, &g, &mut y, Some(&mut idx));
    assert_eq!(y, [5.0, 9.0]);
    assert_eq!(idx, [1, 6]);
}
