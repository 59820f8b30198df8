//! Tensor encodings, writing side: one in-memory tensor checked and encoded into a
//! `TENS` payload (dense, sparse positions, int8, int4, codebook, hashed; raw, deflated
//! or entropy-coded bodies).

use std::io::Write;

use super::{BODY_DEFLATE, BODY_RAW, BODY_TAGGED, C_F16, C_HUFF, C_PLAIN, FormatError, HASH_SIGNED, Limits, MAX_CENTROIDS, MAX_I4_GROUP, POS_BITMAP, POS_DENSE, POS_GAPS, POS_HUFF_GAPS, StoredTensor, VT_CODEBOOK, VT_F32, VT_HASHED, VT_I4, VT_I8, Values};
use crate::codec::{self, PositionCoding, huffman};

/// Checks one in-memory tensor; returns its numel.
fn check_tensor(t: &StoredTensor, limits: &Limits) -> Result<u64, FormatError> {
    let bad = |why: String| FormatError::Invalid(format!("tensor '{}': {why}", t.name));
    if t.name.is_empty() || t.name.len() > usize::from(u16::MAX) {
        return Err(bad(format!("name must have 1..=65535 bytes, has {}", t.name.len())));
    }
    if t.shape.len() > limits.max_rank {
        return Err(bad(format!("rank {} exceeds {}", t.shape.len(), limits.max_rank)));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| u32::try_from(d).ok().and_then(|d| a.checked_mul(u64::from(d))))
        .filter(|&n| n <= u64::from(u32::MAX))
        .ok_or_else(|| bad(format!("shape {:?} has 2^32 or more elements", t.shape)))?;
    let count = match &t.positions {
        None => numel,
        Some(p) => {
            if !p.windows(2).all(|w| w[0] < w[1]) {
                return Err(bad("positions are not strictly increasing".into()));
            }
            if let Some(&last) = p.last()
                && u64::from(last) >= numel
            {
                return Err(bad(format!("position {last} is outside the {numel} elements")));
            }
            p.len() as u64
        }
    };
    if t.values.len() as u64 != count {
        return Err(bad(format!("{} values stored for {count} positions", t.values.len())));
    }
    if let Values::I8 { scales, .. } = &t.values {
        match t.shape.first() {
            None => return Err(bad("int8 values need a rank of at least 1".into())),
            Some(&rows) if rows != scales.len() => {
                return Err(bad(format!("{} scales for {rows} rows", scales.len())));
            }
            Some(_) => {}
        }
    }
    if let Values::I4 { q, group, scales } = &t.values {
        if t.positions.is_some() {
            return Err(bad("int4 values are dense only (no positions)".into()));
        }
        if !(1..=MAX_I4_GROUP).contains(group) {
            return Err(bad(format!("int4 group {group} is not in 1..={MAX_I4_GROUP}")));
        }
        if scales.len() as u64 != numel.div_ceil(*group as u64) {
            return Err(bad(format!("{} int4 scales for {numel} elements in groups of {group}", scales.len())));
        }
        if let Some(v) = q.iter().find(|v| !(-8..=7).contains(*v)) {
            return Err(bad(format!("int4 value {v} is outside -8..=7")));
        }
        if let Some(s) = scales.iter().find(|s| !s.is_finite()) {
            return Err(bad(format!("int4 scale {s} is not finite")));
        }
        if let Some(s) = scales.iter().find(|s| codec::f16::exact(**s).is_none()) {
            return Err(bad(format!("int4 scale {s} is not exact in f16")));
        }
    }
    if let Values::Hashed { buckets, .. } = &t.values {
        if t.positions.is_some() {
            return Err(bad("hashed values are dense only (no positions)".into()));
        }
        if buckets.is_empty() || buckets.len() as u64 > numel.max(1) {
            return Err(bad(format!("{} hash buckets for {numel} elements (need 1..=max(numel, 1))", buckets.len())));
        }
    }
    if let Values::Codebook { indices, centroids } = &t.values {
        if centroids.len() > MAX_CENTROIDS {
            return Err(bad(format!(
                "{} centroids, at most {MAX_CENTROIDS} allowed",
                centroids.len()
            )));
        }
        if let Some(&i) = indices.iter().find(|&&i| usize::from(i) >= centroids.len()) {
            return Err(bad(format!("index {i} outside the {} centroids", centroids.len())));
        }
    }
    Ok(numel)
}

pub(super) fn encode_tensor(t: &StoredTensor, limits: &Limits, entropy: bool) -> Result<Vec<u8>, FormatError> {
    let (mut p, body) = encode_tensor_parts(t, limits, entropy)?;
    match body {
        Body::Bytes(b) => p.extend(b),
        Body::F32(v) => f32_le_bytes(v, &mut p),
    }
    Ok(p)
}

/// A tensor payload's body: encoded bytes, or dense f32 values stored as they are
/// (written straight from the values by a streaming writer, not copied first).
pub(super) enum Body<'a> {
    Bytes(Vec<u8>),
    F32(&'a [f32]),
}

pub(super) fn f32_le_bytes(v: &[f32], out: &mut Vec<u8>) {
    out.reserve(4 * v.len());
    v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes()));
}

/// A tensor's payload as its head (name, shape, value type, positions, body coding)
/// and its body.
pub(super) fn encode_tensor_parts<'a>(t: &'a StoredTensor, limits: &Limits, entropy: bool) -> Result<(Vec<u8>, Body<'a>), FormatError> {
    let numel = check_tensor(t, limits)?;
    let invalid = |e: codec::CodecError| FormatError::Invalid(format!("tensor '{}': {e}", t.name));
    let coding = t.positions.as_deref().map(|p| codec::choose_position_coding_among(p, numel, entropy).0);
    let mut p = Vec::new();
    p.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
    p.extend_from_slice(t.name.as_bytes());
    p.push(t.shape.len() as u8);
    for &d in &t.shape {
        p.extend_from_slice(&(d as u32).to_le_bytes());
    }
    p.push(match t.values {
        Values::F32(_) => VT_F32,
        Values::I8 { .. } => VT_I8,
        Values::I4 { .. } => VT_I4,
        Values::Codebook { .. } => VT_CODEBOOK,
        Values::Hashed { .. } => VT_HASHED,
    });
    match coding {
        None => p.push(POS_DENSE),
        Some(PositionCoding::Bitmap) => p.push(POS_BITMAP),
        Some(PositionCoding::Gaps { width }) => p.extend_from_slice(&[POS_GAPS, width]),
        Some(PositionCoding::HuffmanGaps { span_log2 }) => {
            p.extend_from_slice(&[POS_HUFF_GAPS, span_log2])
        }
    }
    p.extend_from_slice(&(t.values.len() as u32).to_le_bytes());

    // Dense f32 without entropy coding: the raw values win unless every value is exact
    // in f16 (the candidates below would pick the same); they are not copied here.
    if let (Values::F32(v), None, false) = (&t.values, &t.positions, entropy)
        && !v.iter().all(|&x| codec::f16::exact(x).is_some())
    {
        p.push(BODY_RAW);
        return Ok((p, Body::F32(v)));
    }
    let positions = t.positions.as_deref().unwrap_or(&[]);
    let pos_bytes = match coding {
        None => Vec::new(),
        Some(PositionCoding::Bitmap) => codec::encode_bitmap(positions, numel),
        Some(PositionCoding::Gaps { width }) => {
            codec::encode_gaps(positions, width).map_err(invalid)?
        }
        Some(PositionCoding::HuffmanGaps { span_log2 }) => {
            codec::encode_huffman_gaps(positions, span_log2).map_err(invalid)?
        }
    };
    let f32s = |v: &[f32], out: &mut Vec<u8>| {
        v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes()))
    };
    // All f16 bits if every value converts exactly.
    let f16s = |v: &[f32]| -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(v.len() * 2);
        for &x in v {
            out.extend_from_slice(&codec::f16::exact(x)?.to_le_bytes());
        }
        Some(out)
    };

    // Candidate bodies; the first of the smallest wins.
    let mut candidates: Vec<(u8, Vec<u8>)> = Vec::new();
    match &t.values {
        Values::F32(v) => {
            let mut body = pos_bytes.clone();
            f32s(v, &mut body);
            if let Some(d) = deflate(&body).filter(|_| entropy) {
                candidates.push((BODY_DEFLATE, d));
            }
            candidates.insert(0, (BODY_RAW, body));
            if let Some(h) = f16s(v) {
                let mut body = pos_bytes;
                body.push(C_F16);
                body.extend(h);
                candidates.push((BODY_TAGGED, body));
            }
        }
        Values::I8 { q, scales } => {
            let mut prefix = Vec::with_capacity(scales.len() * 4 + pos_bytes.len());
            f32s(scales, &mut prefix);
            prefix.extend_from_slice(&pos_bytes);
            let mut body = prefix.clone();
            body.extend(q.iter().map(|&x| x as u8));
            if let Some(d) = deflate(&body).filter(|_| entropy) {
                candidates.push((BODY_DEFLATE, d));
            }
            candidates.insert(0, (BODY_RAW, body));
            if entropy {
                let symbols: Vec<u32> = q.iter().map(|&x| u32::from(x as u8)).collect();
                let mut body = prefix;
                body.push(C_HUFF);
                body.extend(huffman::encode_stream(&symbols, 256).map_err(invalid)?);
                candidates.push((BODY_TAGGED, body));
            }
        }
        Values::Codebook { indices, centroids } => {
            let k = centroids.len() as u64;
            let mut body = Vec::new();
            body.extend_from_slice(&(k as u32).to_le_bytes());
            match f16s(centroids) {
                Some(h) => {
                    body.push(C_F16);
                    body.extend(h);
                }
                None => {
                    body.push(C_PLAIN);
                    f32s(centroids, &mut body);
                }
            }
            body.extend(pos_bytes);
            let packed = codec::pack_indices(indices, k).map_err(invalid)?;
            let symbols: Vec<u32> = indices.iter().map(|&i| u32::from(i)).collect();
            let huff = huffman::encode_stream(&symbols, k as usize).map_err(invalid)?;
            if entropy && huff.len() < packed.len() {
                body.push(C_HUFF);
                body.extend(huff);
            } else {
                body.push(C_PLAIN);
                body.extend(packed);
            }
            candidates.push((BODY_TAGGED, body));
        }
        Values::I4 { q, group, scales } => {
            let mut body = Vec::with_capacity(6 + scales.len() * 2 + q.len().div_ceil(2));
            body.extend_from_slice(&(*group as u32).to_le_bytes());
            body.push(C_F16);
            body.extend(f16s(scales).ok_or_else(|| FormatError::Invalid(format!("tensor '{}': int4 scale not exact in f16", t.name)))?);
            body.push(C_PLAIN);
            body.extend(q.chunks(2).map(|p| (p[0] as u8 & 0x0F) | ((*p.get(1).unwrap_or(&0) as u8 & 0x0F) << 4)));
            candidates.push((BODY_TAGGED, body));
        }
        Values::Hashed { buckets, seed, signed, .. } => {
            let mut body = Vec::new();
            body.extend_from_slice(&seed.to_le_bytes());
            body.push(if *signed { HASH_SIGNED } else { 0 });
            body.extend_from_slice(&(buckets.len() as u32).to_le_bytes());
            match f16s(buckets) {
                Some(h) => {
                    body.push(C_F16);
                    body.extend(h);
                }
                None => {
                    body.push(C_PLAIN);
                    f32s(buckets, &mut body);
                }
            }
            candidates.push((BODY_TAGGED, body));
        }
    }
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate() {
        if c.1.len() < candidates[best].1.len() {
            best = i;
        }
    }
    let (body_coding, body) = candidates.swap_remove(best);
    p.push(body_coding);
    Ok((p, Body::Bytes(body)))
}

pub(super) fn deflate(data: &[u8]) -> Option<Vec<u8>> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).ok()?;
    e.finish().ok()
}
