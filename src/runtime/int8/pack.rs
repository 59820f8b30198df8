//! Packing: weights into the VNNI and AVX2 block layouts, activations into the kernels'
//! word formats (and the AVX2 panels, optionally quantizing f32 rows on the fly): the data
//! layouts, separate from the arithmetic that reads them.

use super::{NR, quantize_u8, row_range};

use crate::spec::QParams;

/// `v` padded with zeros to whole 16-blocks.
pub(super) fn pad_blocks<T: Copy + Default>(v: &[T]) -> Vec<T> {
    let mut p = v.to_vec();
    p.resize(blocks(v.len()) * NR, T::default());
    p
}

/// Number of 16-output blocks covering `n`.
pub(super) fn blocks(n: usize) -> usize {
    n.div_ceil(NR)
}

/// VNNI layout: index `((blk·kw + g)·16 + lane)·4 + t` holds `b[16·blk + lane, 4g + t]`,
/// zero where out of range.
pub(super) fn pack_vnni(b: &[i8], n: usize, k: usize) -> Vec<i8> {
    let kw = k.div_ceil(4);
    let mut p = vec![0i8; blocks(n) * kw * NR * 4];
    for o in 0..n {
        let (blk, lane) = (o / NR, o % NR);
        for (kk, &v) in b[o * k..(o + 1) * k].iter().enumerate() {
            p[((blk * kw + kk / 4) * NR + lane) * 4 + kk % 4] = v;
        }
    }
    p
}

/// AVX2 layout: index `((blk·kw + g)·16 + lane)·2 + t` holds `b[16·blk + lane, 2g + t]`
/// as i16, zero where out of range.
pub(super) fn pack_avx2(b: &[i8], n: usize, k: usize) -> Vec<i16> {
    let kw = k.div_ceil(2);
    let mut p = vec![0i16; blocks(n) * kw * NR * 2];
    for o in 0..n {
        let (blk, lane) = (o / NR, o % NR);
        for (kk, &v) in b[o * k..(o + 1) * k].iter().enumerate() {
            p[((blk * kw + kk / 2) * NR + lane) * 2 + kk % 2] = v as i16;
        }
    }
    p
}

/// Pack `m` u8 rows of length `k` into words of `e` values each (`kw = ceil(k/e)` words
/// per row, zero-padded): e = 4 → 4 bytes per i32 (little endian), e = 2 → two u16
/// halves in the AVX2 kernel's panels ([`pack_panels`]), e = 1 → the value itself.
pub(super) fn pack_rows(e: usize, x: &[u8], m: usize, k: usize, dst: &mut [i32]) {
    let kw = k.div_ceil(e);
    if k == 0 {
        return;
    }
    if e == 2 {
        return pack_panels(x, m, k, dst);
    }
    for (src, d) in x.chunks_exact(k).take(m).zip(dst.chunks_exact_mut(kw)) {
        match e {
            1 => d.iter_mut().zip(src).for_each(|(d, &s)| *d = s as i32),
            4 => {
                let mut ch = src.chunks_exact(4);
                for (d, c) in d.iter_mut().zip(&mut ch) {
                    *d = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                let rem = ch.remainder();
                if !rem.is_empty() {
                    let mut bytes = [0u8; 4];
                    bytes[..rem.len()].copy_from_slice(rem);
                    d[kw - 1] = i32::from_le_bytes(bytes);
                }
            }
            _ => unreachable!("unsupported word format"),
        }
    }
}

/// Rows per panel of the AVX2 activation layout (the kernel's tile height).
const PANEL: usize = 6;

/// The AVX2 layout of `m` u8 rows of length `k`: pairs of values as two u16 halves of
/// an i32 word (`kw = ceil(k/2)` words per row, the odd tail zero-padded), rows in panels
/// of [`PANEL`] (the last may be shorter) stored word-major, `panel_base + g·h + r`, so a
/// tile's rows are read as one stream.
pub(super) fn pack_panels(x: &[u8], m: usize, k: usize, dst: &mut [i32]) {
    let kw = k.div_ceil(2);
    assert!(x.len() >= m * k && dst.len() >= m * kw);
    let mut q16 = vec![0u16; 2 * kw];
    for p0 in (0..m).step_by(PANEL) {
        let h = PANEL.min(m - p0);
        let panel = &mut dst[p0 * kw..(p0 + h) * kw];
        for r in 0..h {
            put_panel_row(panel, h, r, &x[(p0 + r) * k..(p0 + r + 1) * k], &mut q16);
        }
    }
}

/// Row `r` of a panel of `h` rows (see [`pack_panels`]) from its u8 values `q`, widened
/// to u16 in `q16` (`2·kw` values; the odd tail stays zero) so each word is one copy.
#[inline]
fn put_panel_row(panel: &mut [i32], h: usize, r: usize, q: &[u8], q16: &mut [u16]) {
    q16.iter_mut().zip(q).for_each(|(w, &v)| *w = v as u16);
    for (g, c) in q16.chunks_exact(2).enumerate() {
        panel[g * h + r] = (c[0] as u32 | (c[1] as u32) << 16) as i32;
    }
}

/// `x` quantized to u8 in `q` on its own range (a dynamic row); its parameters.
pub(super) fn quantize_row_dynamic(x: &[f32], q: &mut [u8]) -> QParams {
    let (lo, hi) = row_range(x);
    let qp = QParams::from_range(lo, hi);
    quantize_u8(x, qp, q);
    qp
}

/// Dynamic quantization of `x` (`rows × k` f32), each row on its own range, straight
/// into the AVX2 panel layout `dst` (`rows · ceil(k/2)` words, see [`pack_panels`]),
/// each row's scale and zero point into `row_scale` and `row_zp`; whole panels shared
/// among up to `threads` threads when the rows are many enough to pay for it.
pub(super) fn quantize_rows_to_panels(x: &[f32], rows: usize, k: usize, dst: &mut [i32], row_scale: &mut [f32], row_zp: &mut [i32], threads: usize) {
    use rayon::prelude::*;
    let kw = k.div_ceil(2);
    assert!(x.len() >= rows * k && dst.len() >= rows * kw && row_scale.len() >= rows && row_zp.len() >= rows);
    if rows == 0 || k == 0 {
        return;
    }
    // Part `first` of the rows: they start a panel, and so does every PANEL-th after.
    let part = |first: usize, dst: &mut [i32], scale: &mut [f32], zp: &mut [i32]| {
        let mut q = vec![0u8; k];
        let mut q16 = vec![0u16; 2 * kw];
        let n = scale.len();
        for p0 in (0..n).step_by(PANEL) {
            let h = PANEL.min(n - p0);
            let panel = &mut dst[p0 * kw..(p0 + h) * kw];
            for r in 0..h {
                let qp = quantize_row_dynamic(&x[(first + p0 + r) * k..(first + p0 + r + 1) * k], &mut q);
                (scale[p0 + r], zp[p0 + r]) = (qp.scale, qp.zero_point);
                put_panel_row(panel, h, r, &q, &mut q16);
            }
        }
    };
    let (dst, row_scale, row_zp) = (&mut dst[..rows * kw], &mut row_scale[..rows], &mut row_zp[..rows]);
    let panels = rows.div_ceil(PANEL);
    let parts = if threads > 1 && rows * k >= 2 * crate::runtime::exec::PAR_MIN_VALUES { threads.min(panels) } else { 1 };
    if parts == 1 {
        return part(0, dst, row_scale, row_zp);
    }
    let per = panels.div_ceil(parts) * PANEL;
    dst.par_chunks_mut(per * kw)
        .zip(row_scale.par_chunks_mut(per))
        .zip(row_zp.par_chunks_mut(per))
        .enumerate()
        .for_each(|(t, ((d, s), z))| part(t * per, d, s, z));
}

/// Where word `g` of row `r` lies among `m` rows of `kw` words packed for words of `e`
/// values: row-major, except the AVX2 layout's panels (see [`pack_panels`]).
#[inline]
fn word_index(e: usize, m: usize, kw: usize, r: usize, g: usize) -> usize {
    if e == 2 {
        let p0 = r / PANEL * PANEL;
        p0 * kw + g * PANEL.min(m - p0) + (r - p0)
    } else {
        r * kw + g
    }
}

/// Write activation `kk` of row `r` into packed activations `a` of `m` rows (see
/// [`word_index`]; `a` must start zeroed).
#[inline]
pub(super) fn put_packed(e: usize, a: &mut [i32], m: usize, kw: usize, r: usize, kk: usize, v: u8) {
    let bits = 32 / e;
    a[word_index(e, m, kw, r, kk / e)] |= ((v as u32) << ((kk % e) * bits)) as i32;
}
