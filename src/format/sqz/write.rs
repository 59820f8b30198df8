//! The writer: checking a model, the header and META section, and writing a whole
//! container, in memory or streamed to a file one tensor at a time.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use super::{FormatError, HEADER_LEN, KIND_END, KIND_META, KIND_META_DEFLATED, KIND_TENS, Limits, MAGIC, MINOR_HASHED, MINOR_INT4, Meta, SqzModel, VERSION, Values};
use super::encode::{Body, deflate, encode_tensor, encode_tensor_parts, f32_le_bytes};
use super::frame::push_section;

/// Serialises `model` after checking it: per tensor, values length matches the
/// positions (or numel), positions are in range and strictly increasing, int8 scales
/// number `shape[0]`, names are unique, and everything fits [`Limits::default`].
pub fn encode(model: &SqzModel) -> Result<Vec<u8>, FormatError> {
    encode_with(model, &EncodeOptions::default())
}

/// Choices the encoder leaves to its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Allow entropy coding (Huffman-coded positions, indices and int8 values, deflate).
    /// Without it, only fixed-width codes are used: the size before entropy coding, as
    /// Deep Compression reports its "pruned" and "quantized" stages.
    pub entropy_coding: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions { entropy_coding: true }
    }
}

/// [`encode`] with explicit [`EncodeOptions`].
pub fn encode_with(model: &SqzModel, opts: &EncodeOptions) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    let mut out = encode_head(model, opts)?;
    for t in &model.tensors {
        push_section(&mut out, KIND_TENS, &encode_tensor(t, &limits, opts.entropy_coding)?)?;
    }
    push_section(&mut out, KIND_END, &[])?;
    if out.len() > limits.max_bytes {
        return Err(FormatError::LimitExceeded {
            what: format!("encoded size {}", out.len()),
            limit: limits.max_bytes as u64,
        });
    }
    Ok(out)
}

/// Encodes `model` straight into `path` (atomically, see [`crate::format::write_atomic_with`]),
/// one tensor at a time, dropping each tensor once it is written: the file's bytes
/// are never held whole, and the model's memory shrinks as the file grows. Same bytes
/// as [`encode_with`]; returns the number written.
pub fn write_sqz_streaming(path: &Path, mut model: SqzModel, opts: &EncodeOptions) -> Result<u64, FormatError> {
    let limits = Limits::default();
    let head = encode_head(&model, opts)?;
    let tensors = std::mem::take(&mut model.tensors);
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let mut written = 0u64;
    crate::format::write_atomic_with(
        path,
        |file| {
            let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
            w.write_all(&head).map_err(io)?;
            written += head.len() as u64;
            for t in tensors {
                // Head and body are written one after the other (the checksum runs
                // over both), so a large dense tensor is never copied whole.
                let (head, body) = encode_tensor_parts(&t, &limits, opts.entropy_coding)?;
                let body_len = match &body {
                    Body::Bytes(b) => b.len(),
                    Body::F32(v) => 4 * v.len(),
                };
                let len = u32::try_from(head.len() + body_len).map_err(|_| FormatError::LimitExceeded {
                    what: format!("section 'TENS' payload of {} bytes", head.len() + body_len),
                    limit: u64::from(u32::MAX),
                })?;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&KIND_TENS);
                w.write_all(&KIND_TENS).map_err(io)?;
                w.write_all(&len.to_le_bytes()).map_err(io)?;
                crc.update(&head);
                w.write_all(&head).map_err(io)?;
                match &body {
                    Body::Bytes(b) => {
                        crc.update(b);
                        w.write_all(b).map_err(io)?;
                    }
                    Body::F32(v) => {
                        let mut chunk = Vec::with_capacity(1 << 16);
                        for part in v.chunks(1 << 14) {
                            chunk.clear();
                            f32_le_bytes(part, &mut chunk);
                            crc.update(&chunk);
                            w.write_all(&chunk).map_err(io)?;
                        }
                    }
                }
                w.write_all(&crc.finalize().to_le_bytes()).map_err(io)?;
                written += 12 + head.len() as u64 + body_len as u64;
                drop(body);
                drop(t);
                if written > limits.max_bytes as u64 {
                    return Err(FormatError::LimitExceeded { what: format!("encoded size {written}"), limit: limits.max_bytes as u64 });
                }
            }
            let mut end = Vec::new();
            push_section(&mut end, KIND_END, &[])?;
            w.write_all(&end).map_err(io)?;
            written += end.len() as u64;
            w.flush().map_err(io)
        },
        io,
    )?;
    Ok(written)
}

/// The magic, version and META section of `model` (after checking its tensors' names
/// and count).
fn encode_head(model: &SqzModel, opts: &EncodeOptions) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    if model.tensors.len() > limits.max_tensors {
        return Err(FormatError::Invalid(format!(
            "{} tensors, at most {} allowed",
            model.tensors.len(),
            limits.max_tensors
        )));
    }
    let mut names = BTreeSet::new();
    for t in &model.tensors {
        if !names.insert(t.name.as_str()) {
            return Err(FormatError::Invalid(format!("tensor name '{}' is used twice", t.name)));
        }
    }
    let mut metadata = model.metadata.clone();
    metadata
        .entry("producer".to_string())
        .or_insert_with(|| format!("squeeze {}", env!("CARGO_PKG_VERSION")));
    let meta = Meta {
        graph: model.graph.clone(),
        quant: model.quant.clone(),
        metadata,
        tensor_count: model.tensors.len(),
    };
    let json = serde_json::to_vec(&meta)
        .map_err(|e| FormatError::Invalid(format!("cannot serialise metadata: {e}")))?;
    // JSON cannot carry NaN or infinities: make sure what we store reads back equal.
    match serde_json::from_slice::<Meta>(&json) {
        Ok(back) if back.graph == meta.graph && back.quant == meta.quant => {}
        _ => {
            return Err(FormatError::Invalid(
                "graph or quantization plan does not survive JSON (non-finite scale?)".into(),
            ));
        }
    }

    let mut out = Vec::with_capacity(HEADER_LEN + json.len() + 64);
    out.extend_from_slice(&MAGIC);
    let hashed = model.tensors.iter().any(|t| matches!(t.values, Values::Hashed { .. }));
    let int4 = model.tensors.iter().any(|t| matches!(t.values, Values::I4 { .. }));
    let minor = if int4 {
        MINOR_INT4
    } else if hashed {
        MINOR_HASHED
    } else {
        VERSION.1
    };
    out.extend_from_slice(&VERSION.0.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    match deflate(&json).filter(|d| opts.entropy_coding && d.len() < json.len()) {
        Some(d) => push_section(&mut out, KIND_META_DEFLATED, &d)?,
        None => push_section(&mut out, KIND_META, &json)?,
    }
    Ok(out)
}

