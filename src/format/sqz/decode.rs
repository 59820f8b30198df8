//! Tensor encodings, reading side: one `TENS` payload decoded and checked back into a
//! tensor (the inverse of `encode`), never panicking on hostile bytes.

use std::borrow::Cow;
use std::io::Read;

use super::{BODY_DEFLATE, BODY_RAW, BODY_TAGGED, C_F16, C_HUFF, C_PLAIN, FormatError, HASH_SIGNED, Limits, MAX_CENTROIDS, MAX_I4_GROUP, POS_BITMAP, POS_DENSE, POS_GAPS, POS_HUFF_GAPS, StoredTensor, VT_CODEBOOK, VT_F32, VT_HASHED, VT_I4, VT_I8, Values};
use crate::codec::{self, PositionCoding, huffman};
use super::frame::{Reader, le_u32};

/// The body of a hashed tensor: seed, flags, k, tag, buckets.
fn decode_hashed(name: String, shape: Vec<usize>, numel: u64, raw: &[u8]) -> Result<DecodedTensor, FormatError> {
    let bad = |why: String| FormatError::Corrupt(format!("tensor '{name}': {why}"));
    let mut b = Reader { bytes: raw, pos: 0 };
    let short = |what: &str| bad(format!("body ends inside the {what}"));
    let seed = b.take(8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes"))).ok_or_else(|| short("hash seed"))?;
    let flags = b.u8().ok_or_else(|| short("hash flags"))?;
    if flags & !HASH_SIGNED != 0 {
        return Err(bad(format!("unknown hash flags {flags:#04x}")));
    }
    let k = u64::from(b.u32().ok_or_else(|| short("bucket count"))?);
    if k == 0 || k > numel.max(1) {
        return Err(bad(format!("{k} hash buckets for {numel} elements (need 1..=max(numel, 1))")));
    }
    let (size, desc) = match b.u8().ok_or_else(|| short("bucket tag"))? {
        C_PLAIN => (4, "c-f32"),
        C_F16 => (2, "c-f16"),
        c => return Err(bad(format!("unknown bucket coding {c}"))),
    };
    let avail = b.remaining();
    let bytes = b.take(k * size).ok_or_else(|| bad(format!("body ends inside the buckets: {} bytes needed, {avail} remain", k * size)))?;
    let buckets: Vec<f32> = if size == 4 {
        bytes.chunks_exact(4).map(|c| f32::from_bits(le_u32(c))).collect()
    } else {
        bytes.chunks_exact(2).map(|c| codec::f16::to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
    };
    if b.remaining() != 0 {
        return Err(bad(format!("{} unused bytes after the buckets", b.remaining())));
    }
    let values = Values::Hashed { buckets, seed, signed: flags & HASH_SIGNED != 0, len: numel as usize };
    let tensor = StoredTensor { name, shape, values, positions: None };
    let encoding = format!("{} dense + {desc}", tensor.encoding_name());
    Ok((tensor, encoding, 0, raw.len()))
}

/// The body of an int4 tensor: group, f16 scales, packed nibbles.
fn decode_int4(name: String, shape: Vec<usize>, numel: u64, raw: &[u8]) -> Result<DecodedTensor, FormatError> {
    let bad = |why: String| FormatError::Corrupt(format!("tensor '{name}': {why}"));
    let mut b = Reader { bytes: raw, pos: 0 };
    let short = |what: &str| bad(format!("body ends inside the {what}"));
    let group = u64::from(b.u32().ok_or_else(|| short("int4 group"))?);
    if group == 0 || group > MAX_I4_GROUP as u64 {
        return Err(bad(format!("int4 group {group} is not in 1..={MAX_I4_GROUP}")));
    }
    if b.u8().ok_or_else(|| short("scale tag"))? != C_F16 {
        return Err(bad("int4 scales must be f16 (tag 1)".into()));
    }
    let n_scales = numel.div_ceil(group);
    let avail = b.remaining();
    let s = b.take(n_scales * 2).ok_or_else(|| bad(format!("body ends inside the scales: {} bytes needed, {avail} remain", n_scales * 2)))?;
    let scales: Vec<f32> = s.chunks_exact(2).map(|c| codec::f16::to_f32(u16::from_le_bytes([c[0], c[1]]))).collect();
    if let Some(s) = scales.iter().find(|s| !s.is_finite()) {
        return Err(bad(format!("int4 scale {s} is not finite")));
    }
    if b.u8().ok_or_else(|| short("value tag"))? != C_PLAIN {
        return Err(bad("int4 values must be packed nibbles (tag 0)".into()));
    }
    let packed_len = numel.div_ceil(2);
    let avail = b.remaining();
    let packed = b.take(packed_len).ok_or_else(|| bad(format!("body ends inside the values: {packed_len} bytes needed, {avail} remain")))?;
    if b.remaining() != 0 {
        return Err(bad(format!("{} unused bytes after the values", b.remaining())));
    }
    // Sign-extend each nibble: shifting it to the top of an i8 and back.
    let mut q: Vec<i8> = packed.iter().flat_map(|&byte| [((byte << 4) as i8) >> 4, (byte as i8) >> 4]).collect();
    q.truncate(numel as usize);
    let values = Values::I4 { q, group: group as usize, scales };
    let tensor = StoredTensor { name, shape, values, positions: None };
    let encoding = format!("{} dense + s-f16", tensor.encoding_name());
    Ok((tensor, encoding, 0, raw.len()))
}

/// The tensor name at the start of a (possibly truncated) TENS payload, if readable.
pub(super) fn peek_name(payload: &[u8]) -> Option<&str> {
    let mut r = Reader { bytes: payload, pos: 0 };
    let n = r.u16()?;
    std::str::from_utf8(r.take(u64::from(n))?).ok()
}

/// A decoded tensor with its summary: encoding description, position bytes and
/// value bytes (see [`SectionSummary`]).
type DecodedTensor = (StoredTensor, String, usize, usize);

pub(super) fn decode_tensor(
    payload: &[u8],
    limits: &Limits,
    budget: &mut u64,
) -> Result<DecodedTensor, FormatError> {
    let mut r = Reader { bytes: payload, pos: 0 };
    let name = peek_name(payload)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FormatError::Corrupt("a TENS section has no readable name".into()))?
        .to_string();
    r.take(2 + name.len() as u64);
    let bad = |why: String| FormatError::Corrupt(format!("tensor '{name}': {why}"));
    let short = || bad("header ends early".into());

    let rank = usize::from(r.u8().ok_or_else(short)?);
    if rank > limits.max_rank {
        return Err(FormatError::LimitExceeded {
            what: format!("rank {rank} of tensor '{name}'"),
            limit: limits.max_rank as u64,
        });
    }
    let mut shape = Vec::with_capacity(rank);
    let mut numel = 1u64;
    for _ in 0..rank {
        let d = r.u32().ok_or_else(short)?;
        numel = numel.saturating_mul(u64::from(d));
        shape.push(d as usize);
    }
    if numel > u64::from(u32::MAX) {
        return Err(bad(format!("shape {shape:?} has 2^32 or more elements")));
    }
    let vt = match r.u8().ok_or_else(short)? {
        v @ (VT_F32 | VT_I8 | VT_CODEBOOK | VT_HASHED | VT_I4) => v,
        v => return Err(bad(format!("unknown value type {v}"))),
    };
    let coding = match r.u8().ok_or_else(short)? {
        POS_DENSE => None,
        POS_BITMAP => Some(PositionCoding::Bitmap),
        POS_GAPS => match r.u8().ok_or_else(short)? {
            w @ 1..=8 => Some(PositionCoding::Gaps { width: w }),
            w => return Err(bad(format!("gap width {w} is not in 1..=8"))),
        },
        POS_HUFF_GAPS => match r.u8().ok_or_else(short)? {
            e @ 0..=codec::MAX_SPAN_LOG2 => Some(PositionCoding::HuffmanGaps { span_log2: e }),
            e => return Err(bad(format!("gap span exponent {e} is not in 0..=15"))),
        },
        c => return Err(bad(format!("unknown position coding {c}"))),
    };
    let count = u64::from(r.u32().ok_or_else(short)?);
    if coding.is_none() && count != numel {
        return Err(bad(format!("dense tensor stores {count} values for {numel} elements")));
    }
    if count > numel {
        return Err(bad(format!("{count} values stored for {numel} elements")));
    }
    let rows = match (vt, shape.first()) {
        (VT_I8, Some(&d)) => d as u64,
        (VT_I8, None) => return Err(bad("int8 values need a rank of at least 1".into())),
        _ => 0,
    };
    let elem = if vt == VT_I8 { 1 } else { 4 };
    let positions_bound = match coding {
        None => 0,
        Some(PositionCoding::Bitmap) => codec::bitmap_len(numel),
        Some(PositionCoding::Gaps { width }) => {
            ((count + numel / ((1u64 << width) - 1)) * u64::from(width)).div_ceil(8)
        }
        Some(PositionCoding::HuffmanGaps { span_log2 }) => {
            // Table items take at most 2 × 35 bits per symbol, code words 16 bits.
            let alphabet = (1u64 << span_log2) + 1;
            (alphabet * 70 + (count + (numel >> span_log2)) * 16).div_ceil(8)
        }
    };
    let bound = rows * 4 + positions_bound + count * elem;
    let (deflated, tagged) = match r.u8().ok_or_else(short)? {
        BODY_RAW => (false, false),
        BODY_DEFLATE => (true, false),
        BODY_TAGGED => (false, true),
        c => return Err(bad(format!("unknown body coding {c}"))),
    };
    if vt == VT_CODEBOOK && !tagged {
        return Err(bad(format!("codebook values need body coding {BODY_TAGGED}")));
    }
    if vt == VT_HASHED {
        if !tagged {
            return Err(bad(format!("hashed values need body coding {BODY_TAGGED}")));
        }
        if coding.is_some() {
            return Err(bad("hashed values are dense only (position coding 0)".into()));
        }
        // The runtime expands a hashed tensor to numel f32 values: a few bytes must not
        // stand for gigabytes, so the expansion is charged to the inflation budget.
        let expanded = numel.saturating_mul(4);
        if expanded > *budget {
            return Err(FormatError::LimitExceeded { what: format!("expanded hashed tensor '{name}'"), limit: limits.max_bytes as u64 });
        }
        *budget -= expanded;
        return decode_hashed(name, shape, numel, r.rest());
    }
    if vt == VT_I4 {
        if !tagged {
            return Err(bad(format!("int4 values need body coding {BODY_TAGGED}")));
        }
        if coding.is_some() {
            return Err(bad("int4 values are dense only (position coding 0)".into()));
        }
        return decode_int4(name, shape, numel, r.rest());
    }
    let raw = r.rest();
    let body: Cow<[u8]> = if deflated {
        let cap = bound.min(*budget);
        let mut out = Vec::new();
        let mut d = flate2::bufread::DeflateDecoder::new(raw);
        (&mut d)
            .take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("deflated body: {e}")))?;
        if out.len() as u64 > cap {
            return Err(if cap == bound {
                bad(format!("body inflates beyond the {bound} bytes its header allows"))
            } else {
                FormatError::LimitExceeded {
                    what: format!("inflated data (at tensor '{name}')"),
                    limit: limits.max_bytes as u64,
                }
            });
        }
        if d.total_in() != raw.len() as u64 {
            return Err(bad("bytes after the end of the deflated body".into()));
        }
        *budget -= out.len() as u64;
        Cow::Owned(out)
    } else {
        Cow::Borrowed(raw)
    };

    let mut b = Reader { bytes: &body, pos: 0 };
    let need = |what: &str, n: u64, avail: usize| {
        bad(format!("body ends inside the {what}: {n} bytes needed, {avail} remain"))
    };
    let f32s = |s: &[u8]| s.chunks_exact(4).map(|c| f32::from_bits(le_u32(c))).collect::<Vec<_>>();
    let f16s = |s: &[u8]| {
        s.chunks_exact(2)
            .map(|c| codec::f16::to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect::<Vec<_>>()
    };
    let scales = match b.take(rows * 4) {
        Some(s) => f32s(s),
        None => return Err(need("scales", rows * 4, b.remaining())),
    };
    let mut centroid_desc = "";
    let centroids = if vt == VT_CODEBOOK {
        let k = u64::from(b.u32().ok_or_else(|| need("codebook size", 4, b.remaining()))?);
        if k > MAX_CENTROIDS as u64 {
            return Err(bad(format!("{k} centroids, at most {MAX_CENTROIDS} allowed")));
        }
        let tag = b.u8().ok_or_else(|| need("centroid tag", 1, 0))?;
        let (size, desc) = match tag {
            C_PLAIN => (4, "c-f32"),
            C_F16 => (2, "c-f16"),
            c => return Err(bad(format!("unknown centroid coding {c}"))),
        };
        centroid_desc = desc;
        let avail = b.remaining();
        let c = b.take(k * size).ok_or_else(|| need("centroids", k * size, avail))?;
        if size == 4 { f32s(c) } else { f16s(c) }
    } else {
        Vec::new()
    };
    let codec_err = |e: codec::CodecError| bad(format!("positions: {e}"));
    let positions_start = b.pos;
    let positions = match coding {
        None => None,
        Some(PositionCoding::Bitmap) => {
            let n = codec::bitmap_len(numel);
            let avail = b.remaining();
            let bits = b.take(n).ok_or_else(|| need("bitmap", n, avail))?;
            Some(codec::decode_bitmap(bits, numel, count).map_err(codec_err)?)
        }
        Some(PositionCoding::Gaps { width }) => {
            let stream = &body[b.pos..];
            let (p, used) = codec::decode_gaps(stream, numel, count, width).map_err(codec_err)?;
            b.take(used as u64);
            Some(p)
        }
        Some(PositionCoding::HuffmanGaps { span_log2 }) => {
            let stream = &body[b.pos..];
            let (p, used) =
                codec::decode_huffman_gaps(stream, numel, count, span_log2).map_err(codec_err)?;
            b.take(used as u64);
            Some(p)
        }
    };
    let positions_len = b.pos - positions_start;

    let values_err = |e: codec::CodecError| bad(format!("values: {e}"));
    let mut value_desc = "";
    let values = if !tagged {
        let avail = b.remaining();
        let vals = b.take(count * elem).ok_or_else(|| need("values", count * elem, avail))?;
        if vt == VT_I8 {
            Values::I8 { q: vals.iter().map(|&x| x as i8).collect(), scales }
        } else {
            Values::F32(f32s(vals))
        }
    } else {
        let tag = b.u8().ok_or_else(|| need("value tag", 1, 0))?;
        let avail = b.remaining();
        match (vt, tag) {
            (VT_F32, C_PLAIN | C_F16) => {
                let size = if tag == C_PLAIN { 4 } else { 2 };
                let v = b.take(count * size).ok_or_else(|| need("values", count * size, avail))?;
                value_desc = if tag == C_PLAIN { "v-f32" } else { "v-f16" };
                Values::F32(if tag == C_PLAIN { f32s(v) } else { f16s(v) })
            }
            (VT_I8, C_PLAIN) => {
                let v = b.take(count).ok_or_else(|| need("values", count, avail))?;
                value_desc = "v-i8";
                Values::I8 { q: v.iter().map(|&x| x as i8).collect(), scales }
            }
            (VT_I8, C_HUFF) => {
                let (s, used) =
                    huffman::decode_stream(&body[b.pos..], 256, count).map_err(values_err)?;
                b.take(used as u64);
                value_desc = "v-huff";
                Values::I8 { q: s.iter().map(|&x| x as u8 as i8).collect(), scales }
            }
            (VT_CODEBOOK, C_PLAIN | C_HUFF) => {
                let k = centroids.len() as u64;
                let (indices, used) = if tag == C_PLAIN {
                    value_desc = "idx-packed";
                    codec::unpack_indices(&body[b.pos..], k, count).map_err(values_err)?
                } else {
                    value_desc = "idx-huff";
                    let (s, used) = huffman::decode_stream(&body[b.pos..], k as usize, count)
                        .map_err(values_err)?;
                    (s.iter().map(|&x| x as u16).collect(), used)
                };
                b.take(used as u64);
                Values::Codebook { indices, centroids }
            }
            (_, c) => return Err(bad(format!("unknown value coding {c}"))),
        }
    };
    if b.remaining() != 0 {
        return Err(bad(format!("{} unused bytes after the values", b.remaining())));
    }
    let tensor = StoredTensor { name, shape, values, positions };
    let pos_desc = match coding {
        None => "dense".to_string(),
        Some(PositionCoding::Bitmap) => "bitmap".to_string(),
        Some(PositionCoding::Gaps { width }) => format!("gaps/b{width}"),
        Some(PositionCoding::HuffmanGaps { span_log2 }) => {
            format!("gaps-huff/s{}", 1u32 << span_log2)
        }
    };
    let mut encoding = format!("{} {pos_desc}", tensor.encoding_name());
    if deflated {
        encoding.push_str("+deflate");
    }
    for part in [value_desc, centroid_desc] {
        if !part.is_empty() {
            encoding.push_str(" + ");
            encoding.push_str(part);
        }
    }
    // Bytes of the positions as stored; a deflated body is apportioned by the
    // inflated share of the positions.
    let index_bytes = if deflated && !body.is_empty() {
        ((raw.len() as u128 * positions_len as u128 + body.len() as u128 / 2) / body.len() as u128)
            as usize
    } else {
        positions_len
    };
    Ok((tensor, encoding, index_bytes, raw.len() - index_bytes))
}
