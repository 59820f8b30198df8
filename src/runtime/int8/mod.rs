//! Integer inference kernels: u8 activations × symmetric int8 weights → i32.
//!
//! Activations are asymmetric u8 ([`QParams`](crate::spec::QParams): `real = scale * (q - zero_point)`),
//! weights are symmetric i8 per output channel (`real_w = w_scale[o] * q`), products
//! accumulate exactly in i32 and are requantized with integer fixed point
//! ([`Requant`]). For an output channel `o`:
//!
//! ```text
//! acc[o] = Σ_k x[k]·w[o,k] − zx·Σ_k w[o,k] + bias_i32[o]        (exact i32)
//! y[o]   = clamp(zy + round(acc[o] · sx·sw[o]/sy), lo, 255)       (u8 output)
//! y[o]   = sx·sw[o] · acc[o]                                       (f32 output)
//! ```
//!
//! The product `Σ x·w` is computed by one of three kernels, chosen at run time
//! ([`Kernel::detect`]): AVX-512 VNNI (`vpdpbusd`, 16 outputs × 4 k per instruction),
//! AVX2 (`vpmaddwd` on values widened to i16, which cannot saturate: unlike
//! `vpmaddubsw`), and a portable scalar loop. Integer arithmetic is exact, so every
//! kernel gives bit-identical results; [`set_force_scalar`] switches the whole
//! process to the scalar path (for tests and comparisons).
//!
//! Weights are packed once ([`PackedMatrix`]) into the layout the detected kernel
//! reads; activations are repacked per call into a word format in the caller's
//! `scratch` (4 bytes per i32 for VNNI, two u16 per i32 for AVX2, one value per i32
//! for scalar), so the kernels only ever broadcast one i32 per row and step.
//!
//! Files: this one holds the kernel choice, the packed weights and the product's dispatch;
//! `requant` the number formats, `pack` the data layouts, `scalar`, `avx2` and `avx512`
//! the kernels, `epilogue`, `linear` and `conv` the layers, `tests` their tests.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

mod conv;
mod epilogue;
mod linear;
mod pack;
mod requant;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

pub use conv::QuantizedConv2d;
pub use linear::{DynamicLinear, DynamicScratch, QuantizedLinear};
pub use requant::{Requant, dequantize_u8, quantize_u8};
pub use scalar::matmul_u8_i8_reference;

use epilogue::Epilogue;
use linear::row_range;
use pack::{blocks, pack_avx2, pack_rows, pack_vnni, pad_blocks, put_packed, quantize_row_dynamic, quantize_rows_to_panels};
use requant::requant_row;

// ---------------------------------------------------------------------------------
// Kernel selection
// ---------------------------------------------------------------------------------

/// Which implementation of the u8 × i8 product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512 F/BW + VNNI: `vpdpbusd` on 512-bit vectors.
    Avx512Vnni,
    /// AVX2: `vpmaddwd` on i16-widened operands.
    Avx2,
    /// Portable scalar code, also the reference every other kernel must equal.
    Scalar,
}

impl Kernel {
    /// The best kernel this CPU supports (detected once, then cached).
    pub fn detect() -> Kernel {
        static DETECTED: OnceLock<Kernel> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            [Kernel::Avx512Vnni, Kernel::Avx2]
                .into_iter()
                .find(|k| k.is_available())
                .unwrap_or(Kernel::Scalar)
        })
    }

    /// Whether this CPU can run the kernel (within `SQUEEZE_ISA`, [`super::isa`]).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => super::isa::avx2(),
            Kernel::Avx512Vnni => super::isa::avx512(),
        }
    }

    /// All kernels this CPU can run, fastest first (the scalar one always included).
    pub fn available() -> Vec<Kernel> {
        [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Scalar]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// Short name: `"avx512-vnni"`, `"avx2"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }

    /// How many activation values one packed i32 word holds for this kernel.
    fn elems_per_word(self) -> usize {
        match self {
            Kernel::Avx512Vnni => 4,
            Kernel::Avx2 => 2,
            Kernel::Scalar => 1,
        }
    }
}

static FORCE_SCALAR: AtomicBool = AtomicBool::new(false);

/// Force every product in this process onto the scalar kernel (`true`), or go back
/// to the detected one (`false`). Results do not change, only speed.
pub fn set_force_scalar(force: bool) {
    FORCE_SCALAR.store(force, Ordering::Relaxed);
}

/// The kernel products run on now: `"avx512-vnni"`, `"avx2"` or `"scalar"`.
pub fn kernel_name() -> &'static str {
    if FORCE_SCALAR.load(Ordering::Relaxed) { Kernel::Scalar } else { Kernel::detect() }.name()
}

// ---------------------------------------------------------------------------------
// Packed weights and the product
// ---------------------------------------------------------------------------------

/// Output channels per packed block (one 512-bit or two 256-bit accumulators).
const NR: usize = 16;

/// The largest reduction length for which `Σ u8·i8` provably fits in i32
/// (`255 · 128 · 65536 < 2^31`).
pub const MAX_K: usize = 1 << 16;

/// A weight matrix `b` (`[n × k]` i8, row-major, one row per output) packed once for
/// the kernel detected at construction, plus its row sums (for zero-point correction).
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    kernel: Kernel,
    /// The original rows, read by the scalar kernel.
    raw: Vec<i8>,
    /// VNNI layout: per block of 16 outputs, per group of 4 k: 16 × 4 bytes.
    packed_i8: Vec<i8>,
    /// AVX2 layout: per block of 16 outputs, per pair of k: 16 × 2 i16.
    packed_i16: Vec<i16>,
    row_sums: Vec<i32>,
}

impl PackedMatrix {
    /// Pack `b` (`[n × k]` row-major) for the best kernel of this CPU.
    pub fn new(b: &[i8], n: usize, k: usize) -> PackedMatrix {
        PackedMatrix::with_kernel(b, n, k, Kernel::detect())
    }

    /// Pack `b` for a given kernel (panics if this CPU cannot run it, or if
    /// `k > MAX_K`).
    pub fn with_kernel(b: &[i8], n: usize, k: usize, kernel: Kernel) -> PackedMatrix {
        assert_eq!(b.len(), n * k, "PackedMatrix: b must be n*k = {}*{}", n, k);
        assert!(k <= MAX_K, "PackedMatrix: k = {k} exceeds {MAX_K} (i32 accumulators could overflow)");
        assert!(kernel.is_available(), "kernel {} is not supported by this CPU", kernel.name());
        let row_sums = b.chunks_exact(k.max(1)).take(n).map(|r| r.iter().map(|&v| v as i32).sum()).collect();
        let row_sums = if k == 0 { vec![0; n] } else { row_sums };
        let (packed_i8, packed_i16) = match kernel {
            Kernel::Avx512Vnni => (pack_vnni(b, n, k), Vec::new()),
            Kernel::Avx2 => (Vec::new(), pack_avx2(b, n, k)),
            Kernel::Scalar => (Vec::new(), Vec::new()),
        };
        PackedMatrix { n, k, kernel, raw: b.to_vec(), packed_i8, packed_i16, row_sums }
    }

    /// Number of rows of `b` (outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The kernel the packing is for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `Σ_k b[o, k]` for each output `o`.
    pub fn row_sums(&self) -> &[i32] {
        &self.row_sums
    }

    /// The kernel a product runs on now (the packed one unless scalar is forced).
    fn effective_kernel(&self) -> Kernel {
        if FORCE_SCALAR.load(Ordering::Relaxed) { Kernel::Scalar } else { self.kernel }
    }
}

/// Bytes of packed activations the AVX2 kernel keeps hot per chunk of rows (in L2).
const ROW_CHUNK_BYTES: usize = 256 << 10;

/// Where the AVX2 product writes its `m × n` results: the raw i32 accumulators, or
/// f32 outputs dequantized in registers (no accumulator buffer to write and re-read).
#[derive(Clone, Copy)]
enum Sink<'a> {
    I32(*mut i32),
    F32(F32Out<'a>),
}

/// `y[r,o] = (sx[r]·sw[o])·(acc − zx[r]·Σ_k w[o,k]) + bias[o]`, then ReLU if asked, in
/// the same f32 operations, in the same order, as the layers' scalar epilogues.
#[derive(Clone, Copy)]
struct F32Out<'a> {
    y: *mut f32,
    /// Per row input scale and zero point (dynamic input); empty: scale 1, zero point 0.
    row_scale: &'a [f32],
    row_zp: &'a [i32],
    /// Per output (`sw`, or `sx·sw` for a static input), padded to whole 16-blocks.
    col_scale: &'a [f32],
    /// `Σ_k w[o,k]` padded to whole 16-blocks (read only with `row_zp`).
    col_sums: &'a [i32],
    /// Padded to whole 16-blocks; empty: no bias.
    bias: &'a [f32],
    relu: bool,
}

// SAFETY: a Sink is shared by the threads of one product, each writing only the columns
// of its own blocks (see `gemm_avx2_blocks`); the slices are read-only.
unsafe impl Send for Sink<'_> {}
unsafe impl Sync for Sink<'_> {}

/// The core product on packed activations: `c[r, o] = init[o] + Σ_k a[r,k]·b[o,k]`
/// (wrapping i32), `a` packed by [`pack_rows`] for `kernel`, `init` of length
/// `blocks(n)·16`, `c` of `m × n`.
fn gemm_packed(kernel: Kernel, a: &[i32], m: usize, b: &PackedMatrix, init: &[i32], c: &mut [i32]) {
    let (n, k) = (b.n, b.k);
    let kw = k.div_ceil(kernel.elems_per_word());
    assert!(a.len() >= m * kw && init.len() >= blocks(n) * NR && c.len() >= m * n);
    match kernel {
        Kernel::Scalar => scalar::gemm_scalar(a, m, b, init, c),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert_eq!(b.kernel, Kernel::Avx2);
            // SAFETY: a PackedMatrix with kernel Avx2 is only built after
            // `Kernel::Avx2.is_available()` confirmed AVX2 on this CPU.
            unsafe { avx2::gemm_avx2(a, m, kw, &b.packed_i16, n, init, c) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => {
            assert_eq!(b.kernel, Kernel::Avx512Vnni);
            // SAFETY: as above, the constructor checked avx512f, avx512bw, avx512vnni.
            unsafe { avx512::gemm_vnni(a, m, kw, &b.packed_i8, n, init, c) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("SIMD kernels exist only on x86_64"),
    }
}

/// [`gemm_packed`] with the output blocks (AVX2) or rows (scalar) shared among up to
/// `threads` threads of the rayon pool when the product is large enough; every output
/// is the same exact integer sum whichever thread computes it.
fn gemm_packed_threads(kernel: Kernel, a: &[i32], m: usize, b: &PackedMatrix, init: &[i32], c: &mut [i32], threads: usize) {
    use rayon::prelude::*;
    let (n, k) = (b.n, b.k);
    if threads <= 1 || m * n * k < super::kernels::PARALLEL_MIN_MACS || m == 0 {
        return gemm_packed(kernel, a, m, b, init, c);
    }
    let kw = k.div_ceil(kernel.elems_per_word());
    assert!(a.len() >= m * kw && init.len() >= blocks(n) * NR && c.len() >= m * n);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // c holds m·n values (asserted above).
        Kernel::Avx2 => gemm_avx2_threads(a, m, b, init, Sink::I32(c.as_mut_ptr()), threads),
        _ => {
            let rows = m.div_ceil(threads);
            let words = if kernel == Kernel::Scalar { k } else { kw };
            c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(|(t, ct)| {
                let r0 = t * rows;
                let mr = ct.len() / n.max(1);
                gemm_packed(kernel, &a[r0 * words..(r0 + mr) * words], mr, b, init, ct);
            });
        }
    }
}

/// The AVX2 product on packed activations `a` into `sink`, the 16-output blocks shared
/// among up to `threads` threads of the rayon pool when the product is large enough.
#[cfg(target_arch = "x86_64")]
fn gemm_avx2_threads(a: &[i32], m: usize, b: &PackedMatrix, init: &[i32], sink: Sink, threads: usize) {
    use rayon::prelude::*;
    let (n, k) = (b.n, b.k);
    assert!(b.kernel == Kernel::Avx2 && init.len() >= blocks(n) * NR);
    let kw = k.div_ceil(2);
    let nb = blocks(n);
    let parts = if threads <= 1 || m * n * k < super::kernels::PARALLEL_MIN_MACS { 1 } else { threads };
    let per = nb.div_ceil(parts).max(1);
    let run = |t: usize| {
        // SAFETY: AVX2 was checked when `b` was packed; the caller's sink holds m·n
        // values, and part t alone writes the columns of blocks t·per..(t+1)·per.
        unsafe { avx2::gemm_avx2_blocks(a, m, kw, &b.packed_i16, n, init, sink, t * per..((t + 1) * per).min(nb)) }
    };
    if parts == 1 {
        run(0);
    } else {
        (0..nb.div_ceil(per)).into_par_iter().for_each(run);
    }
}

/// `x` (`rows × k` u8) times `b` straight into f32 outputs (`out.y`, `rows × n`, at
/// least `y_len` long), the activations packed into `scratch`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn product_f32(b: &PackedMatrix, x: &[u8], rows: usize, scratch: &mut Vec<i32>, init: &[i32], out: F32Out, y_len: usize, threads: usize) {
    let kw = b.k.div_ceil(2);
    assert!(x.len() == rows * b.k && y_len >= rows * b.n, "product_f32: x must be rows×k, y rows×n");
    if scratch.len() < rows * kw {
        scratch.resize(rows * kw, 0);
    }
    pack_rows(2, x, rows, b.k, &mut scratch[..rows * kw]);
    gemm_avx2_threads(&scratch[..rows * kw], rows, b, init, Sink::F32(out), threads);
}

/// Whether products on `b` may run [`product_f32`] now.
fn fused_f32(b: &PackedMatrix) -> bool {
    b.effective_kernel() == Kernel::Avx2
}

/// Size the scratch for `m` rows of `b` and split it into (packed a, c).
fn split_scratch<'s>(scratch: &'s mut Vec<i32>, kernel: Kernel, m: usize, b: &PackedMatrix) -> (&'s mut [i32], &'s mut [i32]) {
    let kw = b.k.div_ceil(kernel.elems_per_word());
    let need = m * kw + m * b.n;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let (a, rest) = scratch.split_at_mut(m * kw);
    (a, &mut rest[..m * b.n])
}

/// `c[m×n] = a[m×k] · bᵀ` on the current kernel, exact (`a` u8 row-major, `b` packed).
/// `scratch` is grown as needed and may be reused across calls.
pub fn matmul_u8_i8(a: &[u8], m: usize, b: &PackedMatrix, c: &mut [i32], scratch: &mut Vec<i32>) {
    assert_eq!(a.len(), m * b.k, "matmul_u8_i8: a must be m*k");
    assert_eq!(c.len(), m * b.n, "matmul_u8_i8: c must be m*n");
    let kernel = b.effective_kernel();
    let init = vec![0i32; blocks(b.n) * NR];
    let kw = b.k.div_ceil(kernel.elems_per_word());
    if scratch.len() < m * kw {
        scratch.resize(m * kw, 0);
    }
    let ap = &mut scratch[..m * kw];
    pack_rows(kernel.elems_per_word(), a, m, b.k, ap);
    gemm_packed(kernel, ap, m, b, &init, c);
}
