//! The reader: parsing a container from bytes or a file (section by section), checking
//! framing, version, limits and CRCs, and summarizing each section.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{FormatError, HEADER_LEN, KIND_END, KIND_META, KIND_META_DEFLATED, KIND_TENS, Limits, MAGIC, MAX_META_BYTES, Meta, SectionSummary, SqzModel, StoredTensor, hex};
use super::decode::{decode_tensor, peek_name};
use super::frame::{crc, kind_str, le_u32};

/// Parses and checks a `.sqz` file.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<SqzModel, FormatError> {
    parse(bytes, limits).map(|(m, _)| m)
}

/// Parses and checks a `.sqz` file like [`decode`] and reports every section.
pub fn summarize(bytes: &[u8], limits: &Limits) -> Result<Vec<SectionSummary>, FormatError> {
    parse(bytes, limits).map(|(_, s)| s)
}

/// Reads a `.sqz` file with [`Limits::default`], section by section: the file's bytes
/// are never held whole next to the decoded tensors.
pub fn read_sqz(path: &Path) -> Result<SqzModel, FormatError> {
    read_sqz_from(path, true).map(|(m, _)| m)
}

/// [`read_sqz`] with the report of every section (see [`summarize`]), in one pass.
pub fn read_sqz_summarized(path: &Path) -> Result<(SqzModel, Vec<SectionSummary>), FormatError> {
    read_sqz_from(path, true)
}

/// Checks a `.sqz` file like [`read_sqz`] and reports every section, keeping no tensor.
pub fn summarize_file(path: &Path) -> Result<Vec<SectionSummary>, FormatError> {
    read_sqz_from(path, false).map(|(_, s)| s)
}

fn read_sqz_from(path: &Path, keep_tensors: bool) -> Result<(SqzModel, Vec<SectionSummary>), FormatError> {
    let limits = Limits::default();
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limits.max_bytes as u64 {
        return Err(FormatError::LimitExceeded {
            what: format!("file '{}' of {size} bytes", path.display()),
            limit: limits.max_bytes as u64,
        });
    }
    let reader = std::io::BufReader::with_capacity(1 << 16, file);
    parse_from(Source::File { reader, len: size as usize, at: 0 }, &limits, keep_tensors)
}

/// Where [`parse`] reads a container from: bytes in memory, or a file read section by
/// section (so a large model is never held twice, as file bytes and decoded tensors).
enum Source<'a> {
    Bytes(&'a [u8]),
    File { reader: std::io::BufReader<File>, len: usize, at: usize },
}

impl<'a> Source<'a> {
    fn len(&self) -> usize {
        match self {
            Source::Bytes(b) => b.len(),
            Source::File { len, .. } => *len,
        }
    }

    /// `n` bytes at `pos` (the caller checked that they exist).
    fn read(&mut self, pos: usize, n: usize) -> Result<Cow<'a, [u8]>, FormatError> {
        match self {
            Source::Bytes(b) => {
                let b: &'a [u8] = b;
                Ok(Cow::Borrowed(&b[pos..pos + n]))
            }
            Source::File { reader, at, .. } => {
                use std::io::{Seek, SeekFrom};
                let io = |e: std::io::Error| FormatError::Corrupt(format!("reading at offset {pos}: {e}"));
                if *at != pos {
                    reader.seek(SeekFrom::Start(pos as u64)).map_err(io)?;
                }
                let mut buf = vec![0u8; n];
                reader.read_exact(&mut buf).map_err(io)?;
                *at = pos + n;
                Ok(Cow::Owned(buf))
            }
        }
    }
}

fn parse(bytes: &[u8], limits: &Limits) -> Result<(SqzModel, Vec<SectionSummary>), FormatError> {
    parse_from(Source::Bytes(bytes), limits, true)
}

/// Parses a container; with `keep_tensors` false, each tensor is checked and summarised
/// but not kept (the model comes back without tensors).
fn parse_from(mut src: Source, limits: &Limits, keep_tensors: bool) -> Result<(SqzModel, Vec<SectionSummary>), FormatError> {
    let total = src.len();
    if total > limits.max_bytes {
        return Err(FormatError::LimitExceeded {
            what: format!("input of {total} bytes", ),
            limit: limits.max_bytes as u64,
        });
    }
    let head = src.read(0, total.min(HEADER_LEN))?;
    if head[..head.len().min(4)] != MAGIC[..head.len().min(4)] {
        return Err(FormatError::NotSqz { found: head[..head.len().min(4)].to_vec() });
    }
    if total < HEADER_LEN {
        return Err(FormatError::Truncated {
            what: "the header".into(),
            needed: HEADER_LEN as u64,
            available: total as u64,
        });
    }
    let major = u16::from_le_bytes([head[4], head[5]]);
    let minor = u16::from_le_bytes([head[6], head[7]]);
    match (major, minor) {
        (1, _) => {}
        _ => return Err(FormatError::UnsupportedVersion { major, minor }),
    }

    let mut pos = HEADER_LEN;
    let mut meta: Option<Meta> = None;
    let mut tensors: Vec<StoredTensor> = Vec::new();
    let mut seen = 0usize;
    let mut names = BTreeSet::new();
    let mut summaries = Vec::new();
    let mut budget = limits.max_bytes as u64;
    loop {
        let avail = total - pos;
        if avail < 8 {
            return Err(FormatError::Truncated {
                what: "a section header (the END section is missing)".into(),
                needed: 8,
                available: avail as u64,
            });
        }
        let header = src.read(pos, 8)?;
        let kind: [u8; 4] = [header[0], header[1], header[2], header[3]];
        let len = le_u32(&header[4..8]) as usize;
        let rest_len = avail - 8;
        if !kind.iter().all(|&c| c.is_ascii_alphanumeric() || c == b' ') {
            return Err(FormatError::Corrupt(format!(
                "section kind {} at offset {pos} is not ASCII",
                hex(&kind)
            )));
        }
        let name = kind_str(&kind);
        if rest_len < 4 || len > rest_len - 4 {
            let what = match kind {
                KIND_TENS => {
                    // A name is a u16 length and at most 65535 bytes.
                    let rest = src.read(pos + 8, rest_len.min(2 + usize::from(u16::MAX)))?;
                    match peek_name(&rest) {
                        Some(n) => format!("tensor '{n}'"),
                        None => "section 'TENS'".into(),
                    }
                }
                _ => format!("section '{name}'"),
            };
            return Err(FormatError::Truncated {
                what,
                needed: len as u64 + 4,
                available: rest_len as u64,
            });
        }
        let rest = src.read(pos + 8, len + 4)?;
        let payload = &rest[..len];
        let stored = le_u32(&rest[len..len + 4]);
        let computed = crc(&kind, payload);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                section: name,
                offset: pos as u64,
                stored,
                computed,
            });
        }
        let mut summary = SectionSummary {
            kind: name.clone(),
            tensor: None,
            encoding: String::new(),
            payload_bytes: len,
            total_bytes: len + 12,
            index_bytes: 0,
            value_bytes: 0,
        };
        pos += 12 + len;
        match kind {
            KIND_META | KIND_META_DEFLATED => {
                if meta.is_some() {
                    return Err(FormatError::Corrupt("a second META section".into()));
                }
                let inflated;
                let json = if kind == KIND_META_DEFLATED {
                    let mut out = Vec::new();
                    let mut d = flate2::read::DeflateDecoder::new(payload).take(MAX_META_BYTES + 1);
                    std::io::Read::read_to_end(&mut d, &mut out)
                        .map_err(|e| FormatError::Corrupt(format!("MDEF section: {e}")))?;
                    if out.len() as u64 > MAX_META_BYTES {
                        return Err(FormatError::LimitExceeded { what: "inflated META".into(), limit: MAX_META_BYTES });
                    }
                    inflated = out;
                    &inflated[..]
                } else {
                    payload
                };
                let m: Meta = serde_json::from_slice(json)
                    .map_err(|e| FormatError::Corrupt(format!("META section: {e}")))?;
                if m.tensor_count > limits.max_tensors {
                    return Err(FormatError::LimitExceeded {
                        what: format!("tensor count {}", m.tensor_count),
                        limit: limits.max_tensors as u64,
                    });
                }
                meta = Some(m);
                summary.encoding = if kind == KIND_META_DEFLATED { "json+deflate".into() } else { "json".into() };
            }
            KIND_TENS => {
                let Some(m) = &meta else {
                    return Err(FormatError::Corrupt(
                        "TENS section before the META section".into(),
                    ));
                };
                if seen >= m.tensor_count {
                    return Err(FormatError::Corrupt(format!(
                        "more TENS sections than the {} META declares",
                        m.tensor_count
                    )));
                }
                let (t, encoding, index_bytes, value_bytes) =
                    decode_tensor(payload, limits, &mut budget)?;
                if !names.insert(t.name.clone()) {
                    return Err(FormatError::Corrupt(format!(
                        "tensor '{}' is stored twice",
                        t.name
                    )));
                }
                summary.tensor = Some(t.name.clone());
                summary.encoding = encoding;
                summary.index_bytes = index_bytes;
                summary.value_bytes = value_bytes;
                seen += 1;
                if keep_tensors {
                    tensors.push(t);
                }
            }
            KIND_END => {
                if len != 0 {
                    return Err(FormatError::Corrupt(format!(
                        "END section has {len} payload bytes"
                    )));
                }
                summaries.push(summary);
                if pos != total {
                    return Err(FormatError::Corrupt(format!(
                        "{} bytes after the END section",
                        total - pos
                    )));
                }
                break;
            }
            _ if kind[0].is_ascii_uppercase() => {
                return Err(FormatError::UnknownCritical { kind: name });
            }
            _ => summary.encoding = "unknown ancillary (skipped)".into(),
        }
        summaries.push(summary);
    }
    let meta = meta.ok_or_else(|| FormatError::Corrupt("no META section".into()))?;
    if seen != meta.tensor_count {
        return Err(FormatError::Corrupt(format!(
            "META declares {} tensors, {} are stored",
            meta.tensor_count,
            seen
        )));
    }
    let model = SqzModel { graph: meta.graph, quant: meta.quant, tensors, metadata: meta.metadata };
    Ok((model, summaries))
}
