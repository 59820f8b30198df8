//! What a layer does with its accumulators (bias and zero-point start, f32 scale or u8
//! requantization, ReLU), shared by the Linear and Conv2d layers.

use super::{FORCE_SCALAR, Kernel, NR, PackedMatrix, Requant, blocks, pad_blocks};
#[cfg(target_arch = "x86_64")]
use super::avx2;
use std::sync::atomic::Ordering;

use crate::spec::QParams;

/// What a layer does with its accumulators, shared by Linear and Conv2d.
#[derive(Clone, Debug)]
pub(super) struct Epilogue {
    /// `bias_i32[o] − zx·Σ_k w[o,k]`, padded to whole 16-blocks: the kernels start
    /// their accumulators here.
    pub(super) init: Vec<i32>,
    /// Per output channel: `sx·sw[o]` (f32 output), padded to whole 16-blocks.
    pub(super) acc_scale: Vec<f32>,
    /// Per output channel: requantization to the output scale (u8 output).
    pub(super) requant: Vec<Requant>,
    /// The requantization multipliers and shifts in the vector kernel's layout
    /// (`Requant::multiplier` fits an i32; shifts of even and odd lanes per group of 8).
    rq_mult: Vec<i32>,
    rq_sh_even: Vec<i64>,
    rq_sh_odd: Vec<i64>,
    output: Option<QParams>,
    pub(super) relu: bool,
}

impl Epilogue {
    pub(super) fn new(b: &PackedMatrix, w_scales: &[f32], bias: Option<&[f32]>, input: QParams, output: Option<QParams>, relu: bool) -> Epilogue {
        let n = b.n;
        assert_eq!(w_scales.len(), n, "w_scales must have one scale per output");
        assert!(input.scale > 0.0 && input.scale.is_finite(), "input scale must be positive");
        assert!((0..=255).contains(&input.zero_point), "input zero point must be in 0..=255");
        assert!(w_scales.iter().all(|s| *s > 0.0 && s.is_finite()), "weight scales must be positive");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias must have one value per output");
        }
        let acc_scale: Vec<f32> = pad_blocks(&w_scales.iter().map(|&s| input.scale * s).collect::<Vec<f32>>());
        let mut init = vec![0i32; blocks(n) * NR];
        for o in 0..n {
            let bias_q = bias.map_or(0, |b| (b[o] as f64 / (input.scale as f64 * w_scales[o] as f64)).round() as i32);
            init[o] = bias_q.wrapping_sub(input.zero_point.wrapping_mul(b.row_sums[o]));
        }
        let requant = match output {
            Some(qp) => {
                assert!(qp.scale > 0.0 && qp.scale.is_finite(), "output scale must be positive");
                assert!((0..=255).contains(&qp.zero_point), "output zero point must be in 0..=255");
                w_scales.iter().map(|&s| Requant::from_real(input.scale as f64 * s as f64 / qp.scale as f64)).collect()
            }
            None => Vec::new(),
        };
        let rq_mult = requant.iter().map(|r| r.multiplier as i32).collect();
        let rq_sh_even = requant.iter().step_by(2).map(|r| r.shift as i64).collect();
        let rq_sh_odd = requant.iter().skip(1).step_by(2).map(|r| r.shift as i64).collect();
        Epilogue { init, acc_scale, requant, rq_mult, rq_sh_even, rq_sh_odd, output, relu }
    }

    /// Requantize rows of `n` accumulators (`c`, `rows × n`) into `y`.
    pub(super) fn requant_rows(&self, c: &[i32], n: usize, y: &mut [u8]) {
        let (zp, lo) = self.output_qp();
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if Kernel::Avx2.is_available() && !FORCE_SCALAR.load(Ordering::Relaxed) {
            // SAFETY: AVX2 was just detected.
            done = unsafe { avx2::requant_rows_avx2(c, n, &self.rq_mult, &self.rq_sh_even, &self.rq_sh_odd, zp, lo, y) };
        }
        if done < n {
            for (yr, cr) in y.chunks_exact_mut(n).zip(c.chunks_exact(n)) {
                for ((y, &acc), rq) in yr[done..].iter_mut().zip(&cr[done..]).zip(&self.requant[done..n]) {
                    *y = rq.apply_u8(acc, zp, lo);
                }
            }
        }
    }

    /// Requantize accumulator `acc` of channel `o`.
    #[inline]
    pub(super) fn to_u8(&self, zp: i32, lo: i32, o: usize, acc: i32) -> u8 {
        self.requant[o].apply_u8(acc, zp, lo)
    }

    pub(super) fn output_qp(&self) -> (i32, i32) {
        let qp = self.output.expect("forward_u8 needs output QParams (layer was built with output: None)");
        let lo = if self.relu { qp.zero_point } else { 0 };
        (qp.zero_point, lo)
    }

    #[inline]
    pub(super) fn to_f32(&self, o: usize, acc: i32) -> f32 {
        let v = self.acc_scale[o] * acc as f32;
        if self.relu { v.max(0.0) } else { v }
    }
}
