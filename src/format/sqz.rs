//! The native `.sqz` container: a compressed model's graph, quantization plan and
//! tensors (dense or sparse; f32, per-channel int8 or shared-weight codebooks) in one
//! checksummed file.
//!
//! # Byte layout (version 1.0, all integers little-endian)
//!
//! ```text
//! header   magic 89 53 51 5A ("\x89SQZ")  u16 major = 1  u16 minor = 0
//! section* kind [u8; 4] (ASCII)  u32 payload length  payload  u32 CRC-32 of kind ‖ payload
//! ```
//!
//! Sections follow the header until an `END ` section (empty payload), which must be
//! the last bytes of the file. As in PNG, a kind whose first letter is uppercase is
//! *critical* (a reader that does not know it must refuse the file) and lowercase is
//! *ancillary* (unknown ones are checked and skipped). The reader accepts any 1.x
//! minor version: extensions within a major version only add sections or new values
//! of existing tag bytes.
//!
//! - `MDEF` (critical) may stand in for `META`: the same JSON, deflated, written
//!   when smaller (inflated size capped at 16 MiB).
//! - `META` (critical, exactly one, before any `TENS`): compact JSON
//!   `{"graph":…,"quant":…,"metadata":{…},"tensor_count":N}`.
//! - `TENS` (critical, one per tensor, exactly `tensor_count`, names unique):
//!
//!   ```text
//!   u16 name length, name (UTF-8)
//!   u8 rank (≤ Limits::max_rank), u32 × rank dims       numel = product < 2^32
//!   u8 value type        0 = f32, 1 = int8 with one f32 scale per index of dim 0,
//!                        2 = codebook (shared weights)
//!   u8 position coding   0 = dense, 1 = bitmap, 2 = gaps (then u8 gap width 1..=8),
//!                        3 = Huffman gaps (then u8 span exponent e in 0..=15)
//!   u32 count            number of stored values (dense: = numel)
//!   u8 body coding       0 = raw, 1 = raw deflate (RFC 1951) of the body,
//!                        2 = tagged components (never deflated)
//!   body (rest of the payload), body coding 0 or 1 (value types 0 and 1 only):
//!     int8 only: f32 scales × dims[0]
//!     positions (sparse only): bitmap ceil(numel/8) bytes, the gap stream or the
//!                              Huffman gap stream (see crate::codec), zero-padded
//!                              to a byte
//!     values: f32 × count (raw IEEE bits) or i8 × count
//!   body, body coding 2:
//!     f32:       positions, u8 tag, values      tag 0 = f32 × count, 1 = f16 × count
//!     int8:      f32 scales × dims[0], positions, u8 tag, values
//!                                               tag 0 = i8 × count, 2 = Huffman
//!     codebook:  u32 k (≤ 65536), u8 tag, centroids
//!                                               tag 0 = f32 × k, 1 = f16 × k
//!                positions, u8 tag, indices     tag 0 = packed, 2 = Huffman
//!     hashed:    u64 seed, u8 flags (bit 0 = signs hashed; other bits 0),
//!                u32 k (1 ≤ k ≤ max(numel, 1)), u8 tag, buckets
//!                                               tag 0 = f32 × k, 1 = f16 × k
//!   ```
//!
//!   Value type 3 = hashed (HashedNets): element `i` (flat row-major index) is
//!   `buckets[bucket(seed, i, k)]`, negated when signs are hashed and
//!   `negated(seed, i)` ([`crate::codec::hash`]). No per-element index is stored:
//!   position coding must be 0 (dense), count = numel, body coding 2.
//!
//!   Value type 4 = int4 group-wise (minor version 2): element `i` (flat row-major
//!   index) is `scales[i / group] · q[i]` with `q` in `-8..=7`. Dense only (position
//!   coding 0), count = numel, body coding 2:
//!
//!   ```text
//!   u32 group (1..=65536), u8 tag 1, f16 scales × ceil(numel / group),
//!   u8 tag 0, q packed two per byte (element 2j in the low nibble, two's complement)
//!   ```
//!
//!   Component tags: 0 = plain, 1 = f16 (IEEE binary16 bits as u16, see
//!   [`crate::codec::f16`]), 2 = Huffman (a [`crate::codec::huffman`] stream: code
//!   length table then code words, zero-padded to a byte; int8 values are coded as
//!   the 256 byte values, indices over the alphabet `0..k`). Packed indices are
//!   `max(1, ceil(log2 k))` bits each, LSB first, zero-padded
//!   ([`crate::codec::pack_indices`]). Every index is below `k`.
//! - `END ` (critical): empty.
//!
//! Value type 2, position coding 3 and body coding 2 are additions within version
//! 1.0, value type 3 (hashed) one within 1.1: files without them are byte-identical
//! to before and still decode; a reader that predates them reports such a tensor as
//! corrupt ("unknown value type"). Writers put minor version 2 in the header only
//! when an int4 tensor is present, else 1 when a hashed tensor is present, so every
//! other file stays 1.0.
//!
//! # Encoder choices
//!
//! Per tensor the encoder picks the smallest position coding: bitmap, fixed-width
//! gaps at every width, or Huffman gaps at spans `2^1..=2^10`
//! ([`crate::codec::choose_position_coding`]). It then builds every applicable body
//! and keeps the smallest (the earlier one on ties): raw; deflated; for f32 values
//! the tagged f16 body when every value converts to f16 and back bit-exactly; for
//! int8 the tagged Huffman body. Codebooks are always tagged: centroids as f16 when
//! all are exact, else f32; indices Huffman-coded when strictly smaller than packed.
//!
//! - `END ` (critical): empty.
//!
//! # Untrusted input
//!
//! Decoding never panics. Every length is checked against the bytes that remain
//! before anything is allocated; a deflated body may inflate to at most the size
//! its header implies (and at most the remaining [`Limits::max_bytes`] budget,
//! which bounds input size plus all inflated bytes), so memory use is linear in
//! `max_bytes`. Huffman code words, gap symbols and packed indices all take at
//! least one bit, so decoded counts are bounded by the stream's bit length.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{self, PositionCoding, huffman};
use crate::spec::{Graph, QuantPlan};

/// The four magic bytes that open every `.sqz` file.
pub const MAGIC: [u8; 4] = [0x89, b'S', b'Q', b'Z'];
/// The (major, minor) version this build writes (minor 1 only for files with hashed
/// tensors, see the module docs).
pub const VERSION: (u16, u16) = (1, 0);

const HEADER_LEN: usize = 8;
const KIND_META: [u8; 4] = *b"META";
/// The same JSON as `META`, deflated (RFC 1951); written when smaller.
const KIND_META_DEFLATED: [u8; 4] = *b"MDEF";
/// Largest inflated `MDEF` accepted: architectures are kilobytes, not megabytes.
const MAX_META_BYTES: u64 = 16 << 20;
const KIND_TENS: [u8; 4] = *b"TENS";
const KIND_END: [u8; 4] = *b"END ";
const VT_F32: u8 = 0;
const VT_I8: u8 = 1;
const POS_DENSE: u8 = 0;
const POS_BITMAP: u8 = 1;
const POS_GAPS: u8 = 2;
const BODY_RAW: u8 = 0;
const BODY_DEFLATE: u8 = 1;
const BODY_TAGGED: u8 = 2;
const VT_CODEBOOK: u8 = 2;
const VT_HASHED: u8 = 3;
/// Flag bit of a hashed tensor: signs are hashed too.
const HASH_SIGNED: u8 = 1;
/// The minor version that introduced hashed tensors.
const MINOR_HASHED: u16 = 1;
/// Int4 group-wise values (see the module docs).
const VT_I4: u8 = 4;
/// The minor version that introduced int4 tensors.
const MINOR_INT4: u16 = 2;
/// Largest int4 group.
pub const MAX_I4_GROUP: usize = 1 << 16;
const POS_HUFF_GAPS: u8 = 3;
/// Component tags of a tagged body.
const C_PLAIN: u8 = 0;
const C_F16: u8 = 1;
const C_HUFF: u8 = 2;
/// Most centroids a codebook may have (indices are `u16`).
pub const MAX_CENTROIDS: usize = 1 << 16;

/// A compressed model as stored in a `.sqz` file.
#[derive(Clone, Debug, PartialEq)]
pub struct SqzModel {
    /// The architecture.
    pub graph: Graph,
    /// Which nodes run on integer kernels, with calibrated activation quantization.
    pub quant: QuantPlan,
    /// The stored parameters.
    pub tensors: Vec<StoredTensor>,
    /// Free-form string metadata ([`encode`] adds `"producer" = "squeeze <version>"`
    /// if absent).
    pub metadata: BTreeMap<String, String>,
}

/// One stored parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    /// Parameter name, e.g. `fc1.weight`.
    pub name: String,
    /// Shape, e.g. `[out, in]`.
    pub shape: Vec<usize>,
    /// The stored values.
    pub values: Values,
    /// Sorted, strictly increasing flat row-major indices of the stored values;
    /// `None` = dense (values cover every element).
    pub positions: Option<Vec<u32>>,
}

/// Stored values of a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Plain f32 values.
    F32(Vec<f32>),
    /// Symmetric int8, one scale per index of dim 0 (output channel):
    /// `real = scales[row] * q`.
    I8 {
        /// Quantized values.
        q: Vec<i8>,
        /// One scale per index of dim 0.
        scales: Vec<f32>,
    },
    /// Weight sharing: every stored value is `centroids[indices[i]]`.
    Codebook {
        /// One centroid index per stored value, each below `centroids.len()`.
        indices: Vec<u16>,
        /// The shared values (at most [`MAX_CENTROIDS`]).
        centroids: Vec<f32>,
    },
    /// Int4 group-wise: element `i` is `scales[i / group] · q[i]`, `q` in `-8..=7`,
    /// scales exact in f16 (they are stored as f16); dense only (no positions).
    I4 {
        /// One value in `-8..=7` per element.
        q: Vec<i8>,
        /// Elements per scale (consecutive in flat row-major order).
        group: usize,
        /// `ceil(numel / group)` scales, each exactly representable in f16.
        scales: Vec<f32>,
    },
    /// Hashed weight sharing (HashedNets): element `i` is
    /// `±buckets[codec::hash::bucket(seed, i, k)]`; only dense (no positions).
    Hashed {
        /// The `k` shared values.
        buckets: Vec<f32>,
        /// The tensor's hash seed.
        seed: u64,
        /// Whether the sign of each element is hashed too.
        signed: bool,
        /// Number of elements (the tensor's numel).
        len: usize,
    },
}

impl Values {
    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I8 { q, .. } => q.len(),
            Values::I4 { q, .. } => q.len(),
            Values::Codebook { indices, .. } => indices.len(),
            Values::Hashed { len, .. } => *len,
        }
    }

    /// Whether no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StoredTensor {
    /// Number of elements of the shape (saturates at `usize::MAX` on overflow).
    pub fn numel(&self) -> usize {
        crate::spec::checked_numel(&self.shape).unwrap_or(usize::MAX)
    }

    /// Number of stored values whose real value is not zero.
    pub fn nonzeros(&self) -> usize {
        let mut n = 0;
        self.for_each_value(|_, v| n += usize::from(v != 0.0));
        n
    }

    /// The dense, dequantized tensor: zeros where no value is stored. Entries of an
    /// inconsistent tensor (position or row out of range) are skipped, never panic.
    pub fn to_dense_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        self.for_each_value(|i, v| {
            if let Some(x) = out.get_mut(i) {
                *x = v;
            }
        });
        out
    }

    /// A short name of the encoding: `f32`, `int8/ch`, `codebook-<k>`, `sparse-f32`,
    /// `sparse-int8/ch`, `sparse-codebook-<k>`.
    pub fn encoding_name(&self) -> String {
        let sparse = if self.positions.is_some() { "sparse-" } else { "" };
        let ty = match &self.values {
            Values::F32(_) => "f32".to_string(),
            Values::I8 { .. } => "int8/ch".to_string(),
            Values::I4 { group, .. } => format!("int4/g{group}"),
            Values::Codebook { centroids, .. } => format!("codebook-{}", centroids.len()),
            Values::Hashed { buckets, signed: true, .. } => format!("hashed-signed-{}", buckets.len()),
            Values::Hashed { buckets, signed: false, .. } => format!("hashed-{}", buckets.len()),
        };
        format!("{sparse}{ty}")
    }

    /// Calls `f(flat_index, real_value)` for every stored value.
    fn for_each_value(&self, mut f: impl FnMut(usize, f32)) {
        let numel = self.numel();
        let row_len = match self.shape.first() {
            Some(&d) if d > 0 => (numel / d).max(1),
            _ => numel.max(1),
        };
        let index = |i: usize| match &self.positions {
            Some(p) => p.get(i).map(|&x| x as usize),
            None => Some(i),
        };
        match &self.values {
            Values::F32(v) => {
                for (i, &x) in v.iter().enumerate() {
                    if let Some(j) = index(i) {
                        f(j, x);
                    }
                }
            }
            Values::I8 { q, scales } => {
                for (i, &x) in q.iter().enumerate() {
                    if let Some(j) = index(i) {
                        let s = scales.get(j / row_len).copied().unwrap_or(0.0);
                        f(j, s * f32::from(x));
                    }
                }
            }
            Values::I4 { q, group, scales } => {
                let group = (*group).max(1);
                for (i, &x) in q.iter().enumerate() {
                    if let Some(j) = index(i) {
                        f(j, scales.get(i / group).copied().unwrap_or(0.0) * f32::from(x));
                    }
                }
            }
            Values::Codebook { indices, centroids } => {
                for (i, &x) in indices.iter().enumerate() {
                    if let (Some(j), Some(&v)) = (index(i), centroids.get(usize::from(x))) {
                        f(j, v);
                    }
                }
            }
            Values::Hashed { buckets, seed, signed, len } => {
                let Ok(k) = u32::try_from(buckets.len()) else { return };
                if k == 0 {
                    return;
                }
                for i in 0..*len {
                    let v = buckets[codec::hash::bucket(*seed, i as u64, k) as usize];
                    let v = if *signed && codec::hash::negated(*seed, i as u64) { -v } else { v };
                    if let Some(j) = index(i) {
                        f(j, v);
                    }
                }
            }
        }
    }
}

/// Resource limits for decoding untrusted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest input accepted; also the budget for all inflated tensor bodies.
    pub max_bytes: usize,
    /// Most tensors a file may declare.
    pub max_tensors: usize,
    /// Highest tensor rank.
    pub max_rank: usize,
}

impl Default for Limits {
    /// 1 GiB, 65 536 tensors, rank 8.
    fn default() -> Limits {
        Limits { max_bytes: 1 << 30, max_tensors: 1 << 16, max_rank: 8 }
    }
}

/// One section of a file, as [`summarize`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionSummary {
    /// The 4-byte kind, e.g. `TENS`.
    pub kind: String,
    /// The tensor's name, for `TENS`.
    pub tensor: Option<String>,
    /// How the payload is coded, e.g. `json`, `sparse-int8/ch bitmap+deflate`,
    /// `int8/ch dense`, `f32 dense`, `sparse-f32 gaps/b4`, `f32 dense + v-f16`,
    /// `sparse-int8/ch gaps-huff/s8 + v-huff`,
    /// `sparse-codebook-32 gaps-huff/s16 + idx-huff + c-f16` (tagged bodies list
    /// their value component, then the centroids: `v-f32`/`v-f16`/`v-i8`/`v-huff`,
    /// `idx-packed`/`idx-huff`, `c-f32`/`c-f16`).
    pub encoding: String,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Bytes including framing (kind, length, CRC): payload + 12. The file length
    /// is 8 (header) plus the sum of these.
    pub total_bytes: usize,
    /// For `TENS`: bytes of the stored positions (the sparsity "index" of Deep
    /// Compression's tables); 0 for dense tensors and other sections. In a deflated
    /// body, the deflated bytes are apportioned by the positions' inflated share.
    pub index_bytes: usize,
    /// For `TENS`: the rest of the body: values or codebook indices, centroids,
    /// scales and component tags. `payload_bytes - index_bytes - value_bytes` is the
    /// tensor header (name, shape, codings, count).
    pub value_bytes: usize,
}

/// Why a `.sqz` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file system refused.
    #[error("cannot access '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The magic bytes are wrong: this is some other kind of file.
    #[error("not a .sqz file (magic bytes are {}, expected {})", hex(found), hex(&MAGIC))]
    NotSqz {
        /// The first (up to 4) bytes found.
        found: Vec<u8>,
    },
    /// Written by an incompatible (newer major) version.
    #[error("unsupported .sqz version {major}.{minor} (this build reads 1.x)")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// The file ends early.
    #[error("file is truncated: {what} needs {needed} bytes, {available} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A section's CRC does not match its contents.
    #[error(
        "checksum mismatch in section '{section}' at offset {offset}: stored {stored:08x}, computed {computed:08x}"
    )]
    ChecksumMismatch {
        /// Section kind.
        section: String,
        /// Byte offset of the section.
        offset: u64,
        /// CRC stored in the file.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// A critical section this build does not know (written by a newer squeeze?).
    #[error(
        "section '{kind}' is critical but unknown to this reader (written by a newer squeeze?)"
    )]
    UnknownCritical {
        /// Section kind.
        kind: String,
    },
    /// Checksums are fine but the content is inconsistent.
    #[error("corrupt .sqz file: {0}")]
    Corrupt(String),
    /// The input is larger than a [`Limits`] allows.
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What is too large.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The in-memory model given to [`encode`] is inconsistent.
    #[error("invalid model: {0}")]
    Invalid(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// The `META` section's JSON.
#[derive(Serialize, Deserialize)]
struct Meta {
    graph: Graph,
    quant: QuantPlan,
    metadata: BTreeMap<String, String>,
    tensor_count: usize,
}

// ---------------------------------------------------------------------------------
// Encoding

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

/// Encodes `model` straight into `path` (atomically, see [`super::write_atomic_with`]),
/// one tensor at a time, dropping each tensor once it is written: the file's bytes
/// are never held whole, and the model's memory shrinks as the file grows. Same bytes
/// as [`encode_with`]; returns the number written.
pub fn write_sqz_streaming(path: &Path, mut model: SqzModel, opts: &EncodeOptions) -> Result<u64, FormatError> {
    let limits = Limits::default();
    let head = encode_head(&model, opts)?;
    let tensors = std::mem::take(&mut model.tensors);
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let mut written = 0u64;
    super::write_atomic_with(
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

/// A section's kind and payload length.
fn push_section_header(out: &mut Vec<u8>, kind: [u8; 4], payload: &[u8]) -> Result<(), FormatError> {
    let len = u32::try_from(payload.len()).map_err(|_| FormatError::LimitExceeded {
        what: format!("section '{}' payload of {} bytes", kind_str(&kind), payload.len()),
        limit: u64::from(u32::MAX),
    })?;
    out.extend_from_slice(&kind);
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn push_section(out: &mut Vec<u8>, kind: [u8; 4], payload: &[u8]) -> Result<(), FormatError> {
    push_section_header(out, kind, payload)?;
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc(&kind, payload).to_le_bytes());
    Ok(())
}

fn crc(kind: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(payload);
    h.finalize()
}

fn kind_str(kind: &[u8]) -> String {
    String::from_utf8_lossy(kind).into_owned()
}

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

fn encode_tensor(t: &StoredTensor, limits: &Limits, entropy: bool) -> Result<Vec<u8>, FormatError> {
    let (mut p, body) = encode_tensor_parts(t, limits, entropy)?;
    match body {
        Body::Bytes(b) => p.extend(b),
        Body::F32(v) => f32_le_bytes(v, &mut p),
    }
    Ok(p)
}

/// A tensor payload's body: encoded bytes, or dense f32 values stored as they are
/// (written straight from the values by a streaming writer, not copied first).
enum Body<'a> {
    Bytes(Vec<u8>),
    F32(&'a [f32]),
}

fn f32_le_bytes(v: &[f32], out: &mut Vec<u8>) {
    out.reserve(4 * v.len());
    v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes()));
}

/// A tensor's payload as its head (name, shape, value type, positions, body coding)
/// and its body.
fn encode_tensor_parts<'a>(t: &'a StoredTensor, limits: &Limits, entropy: bool) -> Result<(Vec<u8>, Body<'a>), FormatError> {
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

fn deflate(data: &[u8]) -> Option<Vec<u8>> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).ok()?;
    e.finish().ok()
}

// ---------------------------------------------------------------------------------
// Decoding

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

/// Encodes `model` and writes it atomically (see [`super::write_atomic`]); returns
/// the number of bytes written.
pub fn write_sqz(path: &Path, model: &SqzModel) -> Result<u64, FormatError> {
    let bytes = encode(model)?;
    super::write_atomic(path, &bytes)
        .map_err(|source| FormatError::Io { path: path.to_path_buf(), source })?;
    Ok(bytes.len() as u64)
}

/// A cursor over a checksummed payload; running out is corruption, not truncation.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = self.bytes.get(self.pos..).unwrap_or(&[]);
        self.pos = self.bytes.len();
        s
    }
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
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
fn peek_name(payload: &[u8]) -> Option<&str> {
    let mut r = Reader { bytes: payload, pos: 0 };
    let n = r.u16()?;
    std::str::from_utf8(r.take(u64::from(n))?).ok()
}

/// A decoded tensor with its summary: encoding description, position bytes and
/// value bytes (see [`SectionSummary`]).
type DecodedTensor = (StoredTensor, String, usize, usize);

fn decode_tensor(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::spec::{INPUT, Node, Op, QParams};

    fn fuzz_limits() -> Limits {
        Limits { max_bytes: 1 << 20, ..Limits::default() }
    }

    fn two_head_residual() -> Graph {
        let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
        Graph {
            input_shape: vec![8],
            nodes: vec![
                Node { name: "a".into(), inputs: vec![INPUT.into()], op: lin(8, 8) },
                Node { name: "r".into(), inputs: vec!["a".into()], op: Op::Relu },
                Node { name: "sum".into(), inputs: vec!["r".into(), INPUT.into()], op: Op::Add },
                Node { name: "h1".into(), inputs: vec!["sum".into()], op: lin(8, 3) },
                Node { name: "h2".into(), inputs: vec!["sum".into()], op: lin(8, 2) },
            ],
            outputs: vec!["h1".into(), "h2".into()],
            io_names: Default::default(),
        }
    }

    /// Streaming write gives the bytes of `encode_with`; reading a file section by
    /// section gives what decoding its bytes gives, including the errors of a
    /// truncated or corrupted file; the summary of a file keeps no tensor.
    #[test]
    fn streamed_files_equal_in_memory_encoding_and_decoding() {
        let dir = std::env::temp_dir().join(format!("sqz-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = sample_model();
        for entropy in [false, true] {
            let opts = EncodeOptions { entropy_coding: entropy };
            let path = dir.join(format!("m{entropy}.sqz"));
            let n = write_sqz_streaming(&path, m.clone(), &opts).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes, encode_with(&m, &opts).unwrap());
            assert_eq!(n, bytes.len() as u64);
            assert_eq!(read_sqz(&path).unwrap(), decode(&bytes, &Limits::default()).unwrap());
            assert_eq!(summarize_file(&path).unwrap(), summarize(&bytes, &Limits::default()).unwrap());
            // Damaged files: the same error from the file as from its bytes.
            for damaged in [bytes[..bytes.len() - 3].to_vec(), bytes[..HEADER_LEN + 20].to_vec(), bytes[..5].to_vec(), {
                let mut b = bytes.clone();
                let k = b.len() / 2;
                b[k] ^= 0x40;
                b
            }] {
                let p = dir.join("damaged.sqz");
                std::fs::write(&p, &damaged).unwrap();
                let want = decode(&damaged, &Limits::default()).unwrap_err().to_string();
                assert_eq!(read_sqz(&p).unwrap_err().to_string(), want);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Dense f32, dense int8, sparse f32 and sparse int8 tensors on a residual two-head graph.
    fn sample_model() -> SqzModel {
        let mut rng = Rng::new(5);
        let mut a_w: Vec<f32> = (0..64).map(|_| rng.uniform(1.0)).collect();
        a_w[3] = -0.0;
        let quant = QuantPlan {
            integer_nodes: ["h1".to_string()].into(),
            activations: [("sum".to_string(), QParams { scale: 0.02, zero_point: 3 })].into(),
            ..Default::default()
        };
        SqzModel {
            graph: two_head_residual(),
            quant,
            tensors: vec![
                StoredTensor {
                    name: "a.weight".into(),
                    shape: vec![8, 8],
                    values: Values::F32(a_w),
                    positions: None,
                },
                StoredTensor {
                    name: "a.bias".into(),
                    shape: vec![8],
                    values: Values::I8 {
                        q: vec![-128, -1, 0, 1, 2, 3, 127, 5],
                        scales: (0..8).map(|i| 0.01 * i as f32).collect(),
                    },
                    positions: None,
                },
                StoredTensor {
                    name: "h1.weight".into(),
                    shape: vec![3, 8],
                    values: Values::I8 { q: vec![5, -7, 9, 100], scales: vec![0.5, 0.25, 0.125] },
                    positions: Some(vec![0, 9, 10, 23]),
                },
                StoredTensor {
                    name: "h1.bias".into(),
                    shape: vec![3],
                    values: Values::F32(vec![0.5, -0.0, 1e-30]),
                    positions: None,
                },
                StoredTensor {
                    name: "h2.weight".into(),
                    shape: vec![2, 8],
                    values: Values::F32(vec![1.5, -2.5]),
                    positions: Some(vec![3, 15]),
                },
                StoredTensor {
                    name: "h2.bias".into(),
                    shape: vec![2],
                    values: Values::F32(vec![]),
                    positions: Some(vec![]),
                },
            ],
            metadata: [("note".to_string(), "two heads".to_string())].into(),
        }
    }

    fn with_producer(mut m: SqzModel) -> SqzModel {
        m.metadata.insert("producer".into(), format!("squeeze {}", env!("CARGO_PKG_VERSION")));
        m
    }

    fn section(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_section(&mut out, *kind, payload).unwrap();
        out
    }

    /// Offsets of every section: (offset, kind, payload length).
    fn sections(bytes: &[u8]) -> Vec<(usize, [u8; 4], usize)> {
        let mut pos = HEADER_LEN;
        let mut out = Vec::new();
        while pos + 8 <= bytes.len() {
            let kind: [u8; 4] = bytes[pos..pos + 4].try_into().unwrap();
            let len = le_u32(&bytes[pos + 4..pos + 8]) as usize;
            if pos + 12 + len > bytes.len() {
                break;
            }
            out.push((pos, kind, len));
            pos += 12 + len;
        }
        out
    }

    /// Recomputes every CRC so that mutations reach the payload parsers.
    fn fix_crcs(bytes: &mut [u8]) {
        for (pos, kind, len) in sections(bytes) {
            let c = crc(&kind, &bytes[pos + 8..pos + 8 + len]);
            bytes[pos + 8 + len..pos + 12 + len].copy_from_slice(&c.to_le_bytes());
        }
    }

    #[test]
    fn round_trips_all_tensor_kinds_exactly() {
        let m = sample_model();
        let bytes = encode(&m).unwrap();
        assert!(crate::format::is_sqz(&bytes));
        let back = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(back, with_producer(m.clone()));
        // -0.0 == 0.0 under PartialEq: compare bits too.
        for (a, b) in m.tensors.iter().zip(&back.tensors) {
            if let (Values::F32(x), Values::F32(y)) = (&a.values, &b.values) {
                assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
            }
        }
        // A present producer is kept.
        let mut m2 = m.clone();
        m2.metadata.insert("producer".into(), "other".into());
        assert_eq!(decode(&encode(&m2).unwrap(), &Limits::default()).unwrap(), m2);
        // The summary accounts for every byte.
        let s = summarize(&bytes, &Limits::default()).unwrap();
        assert_eq!(8 + s.iter().map(|x| x.total_bytes).sum::<usize>(), bytes.len());
        assert!(s[0].encoding.starts_with("json"), "{}", s[0].encoding);
        assert_eq!(s[1].tensor.as_deref(), Some("a.weight"));
        assert!(s[1].encoding.starts_with("f32 dense"), "{}", s[1].encoding);
        assert!(s[3].encoding.starts_with("sparse-int8/ch "), "{}", s[3].encoding);
        assert_eq!(s.last().unwrap().kind, "END ");
    }

    #[test]
    fn tensor_helpers() {
        let m = sample_model();
        let h1 = &m.tensors[2];
        assert_eq!(h1.numel(), 24);
        assert_eq!(h1.nonzeros(), 4);
        assert_eq!(h1.encoding_name(), "sparse-int8/ch");
        let d = h1.to_dense_f32();
        assert_eq!(d.len(), 24);
        assert_eq!((d[0], d[9], d[10], d[23], d[1]), (2.5, -1.75, 2.25, 12.5, 0.0));
        assert_eq!(m.tensors[0].encoding_name(), "f32");
        assert_eq!(m.tensors[1].encoding_name(), "int8/ch");
        assert_eq!(m.tensors[1].nonzeros(), 6); // q = 0 and scale 0 give zeros
        assert_eq!(m.tensors[4].encoding_name(), "sparse-f32");
        assert_eq!(m.tensors[4].to_dense_f32()[15], -2.5);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = encode(&sample_model()).unwrap();
        let original = decode(&bytes, &Limits::default()).unwrap();
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= x;
                match decode(&b, &fuzz_limits()) {
                    Err(_) => {}
                    // Only the minor version may change: 1.x readers accept newer minors.
                    Ok(m) => assert!((6..8).contains(&i) && m == original, "flip at {i} accepted"),
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample_model()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &fuzz_limits()).is_err(), "length {n}");
        }
        let tail = [0u8];
        let mut extended = bytes.clone();
        extended.extend_from_slice(&tail);
        assert!(matches!(decode(&extended, &fuzz_limits()), Err(FormatError::Corrupt(_))));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let bytes = encode(&sample_model()).unwrap();
        let (pos, _, len) = sections(&bytes)[2]; // a.bias
        let cut = pos + 8 + len - 3;
        let e = decode(&bytes[..cut], &Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "file is truncated: tensor 'a.bias' needs {} bytes, {} remain",
                len + 4,
                len - 3
            )
        );
        let e = decode(b"PK\x03\x04rest", &Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a .sqz file (magic bytes are 50 4b 03 04, expected 89 53 51 5a)"
        );
        let mut v2 = bytes.clone();
        v2[4] = 2;
        let e = decode(&v2, &Limits::default()).unwrap_err();
        assert!(matches!(e, FormatError::UnsupportedVersion { major: 2, minor: 0 }));
        let e = decode(&bytes[..bytes.len() - 12], &Limits::default()).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { needed: 8, available: 0, .. }), "{e}");
        let mut flipped = bytes.clone();
        flipped[pos + 10] ^= 1;
        assert!(matches!(
            decode(&flipped, &Limits::default()),
            Err(FormatError::ChecksumMismatch { ref section, .. }) if section == "TENS"
        ));
        let small = Limits { max_bytes: 100, ..Limits::default() };
        assert!(matches!(decode(&bytes, &small), Err(FormatError::LimitExceeded { .. })));
    }

    #[test]
    fn random_bytes_and_mutations_never_panic() {
        let mut rng = Rng::new(42);
        let valid = encode(&sample_model()).unwrap();
        for i in 0..4000 {
            let len = rng.below(300);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if i % 2 == 0 && b.len() >= 8 {
                b[..8].copy_from_slice(&valid[..8]);
            }
            let _ = decode(&b, &fuzz_limits());
        }
        mutations_decode_or_fail_cleanly(&valid, &mut rng, 4);
    }

    #[test]
    fn bitmap_at_half_density_gaps_at_five_percent() {
        let mut rng = Rng::new(9);
        let mut make = |name: &str, density: f32| {
            let mut positions: Vec<u32> =
                (0..10_000u32).filter(|_| rng.next_f32() < density).collect();
            if positions.last() != Some(&9_999) {
                positions.push(9_999);
            }
            let q = positions.iter().map(|_| 1 + rng.below(100) as i8).collect();
            StoredTensor {
                name: name.into(),
                shape: vec![100, 100],
                values: Values::I8 { q, scales: vec![0.1; 100] },
                positions: Some(positions),
            }
        };
        let mut m = sample_model();
        m.tensors = vec![make("half", 0.5), make("sparse", 0.05)];
        let bytes = encode(&m).unwrap();
        let s = summarize(&bytes, &Limits::default()).unwrap();
        assert!(s[1].encoding.starts_with("sparse-int8/ch bitmap"), "{}", s[1].encoding);
        assert!(s[2].encoding.starts_with("sparse-int8/ch gaps"), "{}", s[2].encoding);
        assert_eq!(decode(&bytes, &Limits::default()).unwrap(), with_producer(m));
    }

    #[test]
    fn seed_sized_int8_model_fits_the_budget() {
        // 784-32-10 MLP: 25,408 int8 weights (uniform random: the worst case for deflate).
        let mut rng = Rng::new(1);
        let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
        let graph = Graph::chain(
            vec![784],
            vec![("fc1", lin(784, 32)), ("r", Op::Relu), ("fc2", lin(32, 10))],
        );
        let mut tensors = Vec::new();
        for p in graph.parameters() {
            let n = p.numel();
            let values = if p.shape.len() == 2 {
                Values::I8 {
                    q: (0..n).map(|_| rng.below(255) as i32 as i8).collect(),
                    scales: (0..p.shape[0]).map(|_| rng.next_f32() * 0.01).collect(),
                }
            } else {
                Values::F32((0..n).map(|_| rng.uniform(0.1)).collect())
            };
            tensors.push(StoredTensor { name: p.name, shape: p.shape, values, positions: None });
        }
        let m = SqzModel { graph, quant: QuantPlan::default(), tensors, metadata: BTreeMap::new() };
        let bytes = encode(&m).unwrap();
        assert!(bytes.len() <= 33_000, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes, &Limits::default()).unwrap(), with_producer(m));
    }

    fn insert_after_meta(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
        let (pos, _, len) = sections(bytes)[0];
        let at = pos + 12 + len;
        [&bytes[..at], extra, &bytes[at..]].concat()
    }

    #[test]
    fn unknown_ancillary_is_skipped_unknown_critical_is_refused() {
        let m = sample_model();
        let bytes = encode(&m).unwrap();
        let with_text = insert_after_meta(&bytes, &section(b"teXt", b"hello"));
        assert_eq!(decode(&with_text, &Limits::default()).unwrap(), with_producer(m));
        let s = summarize(&with_text, &Limits::default()).unwrap();
        assert_eq!(s[1].kind, "teXt");
        let with_crit = insert_after_meta(&bytes, &section(b"TEXT", b"hello"));
        assert!(matches!(
            decode(&with_crit, &Limits::default()),
            Err(FormatError::UnknownCritical { ref kind }) if kind == "TEXT"
        ));
    }

    /// A TENS payload with a chosen header and raw body bytes.
    fn tens_payload(
        shape: &[u32],
        vt: u8,
        pos: &[u8],
        count: u32,
        body_coding: u8,
        body: &[u8],
    ) -> Vec<u8> {
        let mut p = vec![1, 0, b'w', shape.len() as u8];
        shape.iter().for_each(|d| p.extend_from_slice(&d.to_le_bytes()));
        p.push(vt);
        p.extend_from_slice(pos);
        p.extend_from_slice(&count.to_le_bytes());
        p.push(body_coding);
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn metadata_is_deflated_when_smaller_and_reads_back() {
        let m = sample_model();
        let bytes = encode(&m).unwrap();
        let s = summarize(&bytes, &Limits::default()).unwrap();
        assert_eq!(s[0].kind, "MDEF");
        assert_eq!(s[0].encoding, "json+deflate");
        let mut back = decode(&bytes, &Limits::default()).unwrap();
        back.metadata.remove("producer");
        let mut want = m.clone();
        want.metadata.remove("producer");
        assert_eq!(back, want);
        let plain = encode_with(&m, &EncodeOptions { entropy_coding: false }).unwrap();
        assert_eq!(summarize(&plain, &Limits::default()).unwrap()[0].kind, "META");
        assert!(plain.len() > bytes.len());
    }

    fn file_with(tens: &[u8]) -> Vec<u8> {
        let mut m = sample_model();
        m.tensors.clear();
        let bytes = encode_with(&m, &EncodeOptions { entropy_coding: false }).unwrap();
        let (pos, _, len) = sections(&bytes)[0];
        let json = String::from_utf8(bytes[pos + 8..pos + 8 + len].to_vec()).unwrap();
        let json = json.replace("\"tensor_count\":0", "\"tensor_count\":1");
        [
            &bytes[..8],
            &section(b"META", json.as_bytes()),
            &section(b"TENS", tens),
            &section(b"END ", b""),
        ]
        .concat()
    }

    #[test]
    fn deflate_bombs_and_inconsistent_bodies_are_refused() {
        // Baseline: a hand-made dense f32 tensor decodes.
        let ok = file_with(&tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_RAW, &[0; 8]));
        assert_eq!(
            decode(&ok, &Limits::default()).unwrap().tensors[0].values,
            Values::F32(vec![0.0; 2])
        );
        // 10 MB of zeros deflated, claimed to be a 1000-element tensor body.
        let bomb = deflate(&vec![0u8; 10 << 20]).unwrap();
        let f = file_with(&tens_payload(&[1000], VT_F32, &[POS_DENSE], 1000, BODY_DEFLATE, &bomb));
        let e = decode(&f, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("inflates beyond"), "{e}");
        // A huge sparse tensor whose bound is large: capped by the max_bytes budget.
        let f =
            file_with(&tens_payload(&[u32::MAX], VT_F32, &[POS_BITMAP], 0, BODY_DEFLATE, &bomb));
        assert!(matches!(decode(&f, &fuzz_limits()), Err(FormatError::LimitExceeded { .. })));
        // Wrong value count, bad coding bytes, trailing body bytes, huge shapes.
        for payload in [
            tens_payload(&[2], VT_F32, &[POS_DENSE], 1, BODY_RAW, &[0; 4]),
            tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_RAW, &[0; 9]),
            tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_RAW, &[0; 7]),
            tens_payload(&[2], 7, &[POS_DENSE], 2, BODY_RAW, &[0; 8]),
            tens_payload(&[2], VT_F32, &[9], 2, BODY_RAW, &[0; 8]),
            tens_payload(&[2], VT_F32, &[POS_GAPS, 9], 1, BODY_RAW, &[0; 5]),
            tens_payload(&[2], VT_F32, &[POS_DENSE], 2, 5, &[0; 8]),
            tens_payload(&[65536, 65536], VT_F32, &[POS_BITMAP], 0, BODY_RAW, &[]),
            tens_payload(&[8], VT_F32, &[POS_BITMAP], 1, BODY_RAW, &[3, 0, 0, 0, 0]),
            tens_payload(&[], VT_I8, &[POS_DENSE], 1, BODY_RAW, &[0]),
            tens_payload(&[1; 9], VT_F32, &[POS_DENSE], 1, BODY_RAW, &[0; 4]),
        ] {
            assert!(decode(&file_with(&payload), &Limits::default()).is_err());
        }
    }

    #[test]
    fn encode_rejects_inconsistent_models() {
        let cases: Vec<fn(&mut SqzModel)> = vec![
            |m| m.tensors[4].positions = Some(vec![15, 3]),
            |m| m.tensors[4].positions = Some(vec![3, 16]),
            |m| m.tensors[4].positions = Some(vec![3]),
            |m| m.tensors[0].values = Values::F32(vec![0.0; 63]),
            |m| m.tensors[1].values = Values::I8 { q: vec![0; 8], scales: vec![1.0; 7] },
            |m| m.tensors[1].name = "a.weight".into(),
            |m| m.tensors[1].name = String::new(),
            |m| m.tensors[3].shape = vec![1; 9],
            |m| {
                m.quant.activations.insert("x".into(), QParams { scale: f32::NAN, zero_point: 0 });
            },
        ];
        for (i, break_it) in cases.into_iter().enumerate() {
            let mut m = sample_model();
            break_it(&mut m);
            assert!(matches!(encode(&m), Err(FormatError::Invalid(_))), "case {i}");
        }
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqz");
        let m = sample_model();
        let n = write_sqz(&path, &m).unwrap();
        assert_eq!(n, std::fs::metadata(&path).unwrap().len());
        assert_eq!(read_sqz(&path).unwrap(), with_producer(m));
        let e = read_sqz(&dir.path().join("missing.sqz")).unwrap_err();
        assert!(matches!(e, FormatError::Io { .. }) && e.to_string().contains("missing.sqz"));
    }

    // -----------------------------------------------------------------------------
    // Codebooks, Huffman and f16 components

    fn gaussian(rng: &mut Rng) -> f32 {
        let u = rng.next_f32().max(1e-7);
        let v = rng.next_f32();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }

    fn f16_round(x: f32) -> f32 {
        codec::f16::to_f32(codec::f16::from_f32(x))
    }

    /// A Deep Compression layer: Gaussian weights pruned by magnitude to `density`,
    /// the survivors shared by `k` centroids (linear initialisation, 8 Lloyd
    /// iterations), centroids rounded to f16 when `round`.
    fn shared_layer(
        rng: &mut Rng,
        name: &str,
        shape: [usize; 2],
        density: f32,
        k: usize,
        round: bool,
    ) -> StoredTensor {
        let n = shape[0] * shape[1];
        let w: Vec<f32> = (0..n).map(|_| 0.05 * gaussian(rng)).collect();
        let mut mags: Vec<f32> = w.iter().map(|x| x.abs()).collect();
        mags.sort_by(f32::total_cmp);
        let threshold = mags[((1.0 - density) * n as f32) as usize];
        let positions: Vec<u32> =
            (0..n as u32).filter(|&i| w[i as usize].abs() >= threshold).collect();
        let kept: Vec<f32> = positions.iter().map(|&i| w[i as usize]).collect();
        let (lo, hi) = kept.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let mut centroids: Vec<f32> =
            (0..k).map(|j| lo + (hi - lo) * j as f32 / (k - 1) as f32).collect();
        let nearest = |c: &[f32], x: f32| {
            (0..c.len()).min_by(|&a, &b| (c[a] - x).abs().total_cmp(&(c[b] - x).abs())).unwrap()
        };
        for _ in 0..8 {
            let mut sum = vec![0f64; k];
            let mut cnt = vec![0usize; k];
            for &x in &kept {
                let j = nearest(&centroids, x);
                sum[j] += f64::from(x);
                cnt[j] += 1;
            }
            for j in 0..k {
                if cnt[j] > 0 {
                    centroids[j] = (sum[j] / cnt[j] as f64) as f32;
                }
            }
        }
        if round {
            centroids.iter_mut().for_each(|c| *c = f16_round(*c));
        }
        let indices = kept.iter().map(|&x| nearest(&centroids, x) as u16).collect();
        StoredTensor {
            name: name.into(),
            shape: shape.to_vec(),
            values: Values::Codebook { indices, centroids },
            positions: Some(positions),
        }
    }

    /// A small model using every new component: Huffman gaps, Huffman and packed
    /// indices, f16 and f32 centroids, f16 values, Huffman int8.
    fn codebook_model() -> SqzModel {
        let mut rng = Rng::new(21);
        let mut m = sample_model();
        let positions: Vec<u32> = (0..512).filter(|_| rng.next_f32() < 0.25).collect();
        let skewed = |r: &mut Rng| match r.below(20) {
            0..=13 => 0u16,
            14..=17 => 1,
            18 => 2,
            _ => 3,
        };
        let indices = positions.iter().map(|_| skewed(&mut rng)).collect();
        m.tensors = vec![
            StoredTensor {
                name: "a.weight".into(),
                shape: vec![16, 32],
                values: Values::Codebook { indices, centroids: vec![-0.5, 0.25, 1.5, -0.0] },
                positions: Some(positions),
            },
            StoredTensor {
                name: "a.bias".into(),
                shape: vec![40],
                values: Values::Codebook {
                    indices: (0..40).map(|_| rng.below(3) as u16).collect(),
                    centroids: vec![0.1, -0.2, 0.3],
                },
                positions: None,
            },
            StoredTensor {
                name: "h1.weight".into(),
                shape: vec![8, 32],
                values: Values::I8 {
                    q: (0..256).map(|_| (gaussian(&mut rng) * 3.0).round() as i8).collect(),
                    scales: vec![0.01; 8],
                },
                positions: None,
            },
            StoredTensor {
                name: "h1.bias".into(),
                shape: vec![16],
                values: Values::F32((0..16).map(|i| (i as f32 - 8.0) / 64.0).collect()),
                positions: None,
            },
        ];
        m
    }

    fn summaries(m: &SqzModel) -> (Vec<u8>, Vec<SectionSummary>) {
        let bytes = encode(m).unwrap();
        let s = summarize(&bytes, &Limits::default()).unwrap();
        assert_eq!(8 + s.iter().map(|x| x.total_bytes).sum::<usize>(), bytes.len());
        for x in &s {
            assert!(x.index_bytes + x.value_bytes <= x.payload_bytes, "{x:?}");
        }
        (bytes, s)
    }

    fn assert_same_bits(a: &SqzModel, b: &SqzModel) {
        assert_eq!(with_producer(a.clone()), *b);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (x, y) in a.tensors.iter().zip(&b.tensors) {
            match (&x.values, &y.values) {
                (Values::F32(p), Values::F32(q)) => assert_eq!(bits(p), bits(q)),
                (Values::Codebook { centroids: p, .. }, Values::Codebook { centroids: q, .. }) => {
                    assert_eq!(bits(p), bits(q))
                }
                _ => {}
            }
        }
    }

    #[test]
    fn small_codebook_model_uses_every_new_component() {
        let m = codebook_model();
        let (bytes, s) = summaries(&m);
        assert_same_bits(&m, &decode(&bytes, &Limits::default()).unwrap());
        let enc: Vec<&str> = s.iter().map(|x| x.encoding.as_str()).collect();
        assert!(
            enc[1].starts_with("sparse-codebook-4 gaps-huff/s")
                && enc[1].ends_with(" + idx-huff + c-f16"),
            "{}",
            enc[1]
        );
        assert_eq!(enc[2], "codebook-3 dense + idx-packed + c-f32");
        assert_eq!(enc[3], "int8/ch dense + v-huff");
        assert_eq!(enc[4], "f32 dense + v-f16");
        // Byte accounting: positions exactly, the rest of the body as values.
        let t = &m.tensors[0];
        let Some(PositionCoding::HuffmanGaps { span_log2 }) =
            Some(codec::choose_position_coding(t.positions.as_ref().unwrap(), 512).0)
        else {
            panic!("expected Huffman gaps");
        };
        let pos = codec::encode_huffman_gaps(t.positions.as_ref().unwrap(), span_log2).unwrap();
        assert_eq!(s[1].index_bytes, pos.len());
        assert_eq!(s[2].index_bytes, 0);
        // Header: 2 + 8 name + 1 rank + 8 dims + 1 type + 2 coding + 4 count + 1 body.
        assert_eq!(s[1].payload_bytes - s[1].index_bytes - s[1].value_bytes, 27);
        assert_eq!(s[3].value_bytes, s[3].payload_bytes - (2 + 9 + 1 + 8 + 1 + 1 + 4 + 1));
        let h = &m.tensors[0];
        assert_eq!(h.encoding_name(), "sparse-codebook-4");
        assert_eq!(m.tensors[1].encoding_name(), "codebook-3");
        let d = h.to_dense_f32();
        let p = h.positions.as_ref().unwrap();
        let Values::Codebook { indices, centroids } = &h.values else { unreachable!() };
        assert_eq!(d[p[3] as usize], centroids[indices[3] as usize]);
        assert_eq!(d.iter().filter(|x| **x != 0.0).count(), h.nonzeros());
        assert_eq!(h.nonzeros(), indices.iter().filter(|&&i| i != 3).count()); // -0.0 is zero
    }

    #[test]
    fn codebook_models_round_trip_exactly() {
        let mut rng = Rng::new(3);
        let mut m = sample_model();
        m.tensors.clear();
        for (i, (k, density)) in
            [(32, 0.05), (32, 0.5), (256, 0.05), (256, 0.5)].into_iter().enumerate()
        {
            m.tensors.push(shared_layer(
                &mut rng,
                &format!("s{i}"),
                [100, 200],
                density,
                k,
                i % 2 == 0,
            ));
        }
        // Dense codebook, f16-exact biases (and one that is not), int8 Huffman.
        let mut dense = shared_layer(&mut rng, "dense", [50, 40], 1.0, 16, false);
        dense.positions = None;
        m.tensors.push(dense);
        m.tensors.push(StoredTensor {
            name: "bias16".into(),
            shape: vec![300],
            values: Values::F32((0..300).map(|_| f16_round(gaussian(&mut rng) * 0.1)).collect()),
            positions: None,
        });
        m.tensors.push(StoredTensor {
            name: "bias32".into(),
            shape: vec![300],
            values: Values::F32((0..300).map(|_| gaussian(&mut rng) * 0.1).collect()),
            positions: None,
        });
        m.tensors.push(StoredTensor {
            name: "q".into(),
            shape: vec![100, 100],
            values: Values::I8 {
                q: (0..10_000).map(|_| (gaussian(&mut rng) * 6.0).round() as i8).collect(),
                scales: (0..100).map(|_| rng.next_f32() * 0.01).collect(),
            },
            positions: None,
        });
        let sparse_q = shared_layer(&mut rng, "sq", [100, 100], 0.1, 2, false);
        let Values::Codebook { indices, .. } = &sparse_q.values else { unreachable!() };
        m.tensors.push(StoredTensor {
            name: "sq".into(),
            shape: vec![100, 100],
            values: Values::I8 {
                q: indices.iter().map(|&i| (i as i8 * 9) - 4).collect(),
                scales: vec![0.5; 100],
            },
            positions: sparse_q.positions.clone(),
        });
        let (bytes, s) = summaries(&m);
        let back = decode(&bytes, &Limits::default()).unwrap();
        assert_same_bits(&m, &back);
        for x in &s[1..s.len() - 1] {
            let t = m.tensors.iter().find(|t| Some(&t.name) == x.tensor.as_ref()).unwrap();
            println!(
                "{:<7} {:>6} stored: {:>6} B = {:>5} index + {:>6} value  {}",
                t.name,
                t.values.len(),
                x.payload_bytes,
                x.index_bytes,
                x.value_bytes,
                x.encoding
            );
        }
        assert!(s[1].encoding.contains("idx-huff") && s[1].encoding.ends_with("c-f16"));
        assert!(s[2].encoding.ends_with("c-f32"), "{}", s[2].encoding);
        assert!(s[2].encoding.contains(" bitmap "), "{}", s[2].encoding); // density 0.5
        assert!(s[5].encoding.starts_with("codebook-16 dense + idx-"), "{}", s[5].encoding);
        assert_eq!(s[6].encoding, "f32 dense + v-f16");
        assert!(s[6].payload_bytes < 300 * 2 + 30);
        assert!(s[7].encoding.starts_with("f32 dense") && !s[7].encoding.contains("f16"));
        assert_eq!(s[8].encoding, "int8/ch dense + v-huff");
        assert!(s[9].encoding.starts_with("sparse-int8/ch gaps-huff/s"), "{}", s[9].encoding);
    }

    #[test]
    fn sparse_codebook_layer_costs_about_its_entropy() {
        // LeNet-300-100's fc1 (300 × 784 = 235,200 weights) at 8% density, k = 32.
        let mut rng = Rng::new(300);
        let t = shared_layer(&mut rng, "fc1.weight", [300, 784], 0.08, 32, true);
        let n = t.values.len();
        // Empirical entropies: of the gaps (geometric, unbounded alphabet) and indices.
        let entropy = |counts: &std::collections::HashMap<u32, usize>| {
            let total = counts.values().sum::<usize>() as f64;
            counts.values().map(|&c| -(c as f64 / total) * (c as f64 / total).log2()).sum::<f64>()
                * total
        };
        let mut gaps = std::collections::HashMap::new();
        let mut next = 0;
        for &p in t.positions.as_ref().unwrap() {
            *gaps.entry(p - next).or_insert(0) += 1;
            next = p + 1;
        }
        let Values::Codebook { indices, .. } = &t.values else { unreachable!() };
        let mut idx = std::collections::HashMap::new();
        indices.iter().for_each(|&i| *idx.entry(u32::from(i)).or_insert(0) += 1);
        let (h_pos, h_idx) = (entropy(&gaps) / 8.0, entropy(&idx) / 8.0);

        let mut m = sample_model();
        m.tensors = vec![t];
        let (bytes, s) = summaries(&m);
        assert_same_bits(&m, &decode(&bytes, &Limits::default()).unwrap());
        let x = &s[1];
        let per = |b: usize| b as f64 / n as f64;
        println!(
            "fc1 {n} of 235200 stored ({}): {} B payload = {:.3} B/weight; positions {} B \
             ({:.3} B/w, entropy {:.3}), indices+codebook {} B ({:.3} B/w, entropy {:.3}); \
             fixed 5-bit indices would be {:.3} B/w",
            x.encoding,
            x.payload_bytes,
            per(x.payload_bytes),
            x.index_bytes,
            per(x.index_bytes),
            h_pos / n as f64,
            x.value_bytes,
            per(x.value_bytes),
            h_idx / n as f64,
            5.0 / 8.0
        );
        assert!(x.encoding.starts_with("sparse-codebook-32 gaps-huff/s"), "{}", x.encoding);
        assert!(x.encoding.ends_with(" + idx-huff + c-f16"), "{}", x.encoding);
        // Within 2% (+ tables) of the order-0 entropy of gaps and indices. That
        // entropy is the floor for symbol-by-symbol coding: i.i.d. positions at 8%
        // carry H(0.08)/0.08 = 5.03 bits each, so with ~3.4-bit indices a layer
        // without structure in its pruning mask costs just over a byte per weight.
        assert!((x.index_bytes as f64) < h_pos * 1.02 + 64.0);
        assert!((x.value_bytes as f64) < h_idx * 1.02 + 64.0 + 64.0);
        assert!(per(x.payload_bytes) < 1.1, "{:.3} B/weight", per(x.payload_bytes));
        // Against the fixed-width baseline (4-bit gaps as in the paper, 5-bit indices).
        let fixed = codec::gaps_bit_len(m.tensors[0].positions.as_ref().unwrap(), 4).unwrap();
        let fixed = (fixed + 5 * n as u64).div_ceil(8) as f64;
        println!("fixed 4-bit gaps + 5-bit indices: {fixed} B = {:.3} B/weight", fixed / n as f64);
        assert!((x.payload_bytes as f64) < fixed * 0.9);
    }

    #[test]
    fn encoding_choices_follow_the_data() {
        let mut rng = Rng::new(17);
        let codebook = |indices: Vec<u16>, k: usize, centroids: Vec<f32>| StoredTensor {
            name: "w".into(),
            shape: vec![indices.len()],
            values: Values::Codebook { indices, centroids: centroids[..k].to_vec() },
            positions: None,
        };
        let exact: Vec<f32> = (0..32).map(|i| i as f32 / 16.0 - 1.0).collect();
        let inexact: Vec<f32> = (0..32).map(|i| i as f32 / 10.0 - 1.0).collect();
        let uniform: Vec<u16> = (0..5000).map(|_| rng.below(32) as u16).collect();
        let skewed: Vec<u16> =
            (0..5000).map(|_| ((gaussian(&mut rng).abs() * 3.0) as u16).min(31)).collect();
        let mut one_bad = exact.clone();
        one_bad[7] = 1.0 + 2f32.powi(-12); // needs 12 fraction bits: not an f16
        let mut nan = exact.clone();
        nan[0] = f32::NAN;
        let cases = [
            (
                codebook(uniform.clone(), 32, exact.clone()),
                "codebook-32 dense + idx-packed + c-f16",
            ),
            (codebook(skewed.clone(), 32, exact.clone()), "codebook-32 dense + idx-huff + c-f16"),
            (codebook(skewed, 32, inexact), "codebook-32 dense + idx-huff + c-f32"),
            (codebook(uniform.clone(), 32, one_bad), "codebook-32 dense + idx-packed + c-f32"),
            (codebook(uniform, 32, nan), "codebook-32 dense + idx-packed + c-f32"),
            (codebook(vec![0; 100], 1, exact.clone()), "codebook-1 dense + idx-packed + c-f16"),
            (codebook(vec![], 0, exact.clone()), "codebook-0 dense + idx-packed + c-f16"),
        ];
        for (t, expect) in cases {
            let mut m = sample_model();
            m.tensors = vec![t];
            let (bytes, s) = summaries(&m);
            assert_eq!(s[1].encoding, expect);
            let back = decode(&bytes, &Limits::default()).unwrap();
            assert_eq!(encode(&back).unwrap(), bytes); // NaN-safe equality
        }
        // f16 for f32 values only when every value is exact: subnormal halves, ±0 and
        // ±inf are; 1e-30, 0.1 and NaN are not.
        let tiny = 2f32.powi(-24);
        for (v, f16) in [
            (vec![0.5, -0.0, tiny, -3.0 * tiny, 65504.0, f32::INFINITY, 1.0], true),
            (vec![0.5, -0.0, 1e-30, 0.25, 1.0, 2.0, 4.0], false),
            (vec![0.5, 0.1, 0.25, 1.0, 2.0, 4.0, 8.0], false),
            (vec![0.5, f32::NAN, 0.25, 1.0, 2.0, 4.0, 8.0], false),
        ] {
            let mut m = sample_model();
            m.tensors = vec![StoredTensor {
                name: "b".into(),
                shape: vec![v.len()],
                values: Values::F32(v),
                positions: None,
            }];
            let (bytes, s) = summaries(&m);
            assert_eq!(s[1].encoding.contains("v-f16"), f16, "{}", s[1].encoding);
            assert_eq!(encode(&decode(&bytes, &Limits::default()).unwrap()).unwrap(), bytes);
        }
    }

    #[test]
    fn encode_rejects_bad_codebooks() {
        let t = |indices: Vec<u16>, k: usize| StoredTensor {
            name: "w".into(),
            shape: vec![indices.len()],
            values: Values::Codebook { indices, centroids: vec![0.5; k] },
            positions: None,
        };
        for bad in [t(vec![0, 3, 1], 3), t(vec![0], 0), t(vec![0], MAX_CENTROIDS + 1)] {
            let mut m = sample_model();
            m.tensors = vec![bad];
            assert!(matches!(encode(&m), Err(FormatError::Invalid(_))));
        }
        let mut m = sample_model();
        m.tensors = vec![t(vec![65535, 0], MAX_CENTROIDS)];
        assert_same_bits(&m, &decode(&encode(&m).unwrap(), &Limits::default()).unwrap());
    }

    #[test]
    fn malformed_tagged_bodies_are_refused() {
        let ok = |p: Vec<u8>| decode(&file_with(&p), &Limits::default());
        // f32 as f16: 2 values.
        let good =
            tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_TAGGED, &[C_F16, 0, 0x3C, 0, 0xC0]);
        assert_eq!(ok(good).unwrap().tensors[0].values, Values::F32(vec![1.0, -2.0]));
        // Codebook k = 2, f32 centroids, packed indices 0, 1, 1.
        let mut cb = vec![2, 0, 0, 0, C_PLAIN];
        cb.extend_from_slice(&1.5f32.to_le_bytes());
        cb.extend_from_slice(&(-1.0f32).to_le_bytes());
        let good = tens_payload(
            &[3],
            VT_CODEBOOK,
            &[POS_DENSE],
            3,
            BODY_TAGGED,
            &[&cb[..], &[C_PLAIN, 0b110]].concat(),
        );
        let back = ok(good).unwrap();
        assert_eq!(back.tensors[0].to_dense_f32(), vec![1.5, -1.0, -1.0]);
        for payload in [
            // Unknown tags, codebook without tagged body, index ≥ k, k too large,
            // nonzero padding, trailing bytes, short values, bad span.
            tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_TAGGED, &[C_HUFF, 0, 0, 0, 0]),
            tens_payload(&[2], VT_F32, &[POS_DENSE], 2, 3, &[0; 8]),
            tens_payload(
                &[3],
                VT_CODEBOOK,
                &[POS_DENSE],
                3,
                BODY_RAW,
                &[&cb[..], &[C_PLAIN, 0b110]].concat(),
            ),
            tens_payload(
                &[3],
                VT_CODEBOOK,
                &[POS_DENSE],
                3,
                BODY_TAGGED,
                &[&cb[..], &[C_F16, 0b110]].concat(),
            ),
            tens_payload(
                &[3],
                VT_CODEBOOK,
                &[POS_DENSE],
                3,
                BODY_TAGGED,
                &[&cb[..], &[C_PLAIN, 0b1110]].concat(),
            ),
            tens_payload(
                &[3],
                VT_CODEBOOK,
                &[POS_DENSE],
                3,
                BODY_TAGGED,
                &[&cb[..], &[C_PLAIN, 0b110, 0]].concat(),
            ),
            tens_payload(
                &[3],
                VT_CODEBOOK,
                &[POS_DENSE],
                3,
                BODY_TAGGED,
                &[&cb[..], &[C_PLAIN]].concat(),
            ),
            tens_payload(&[3], VT_CODEBOOK, &[POS_DENSE], 3, BODY_TAGGED, &[1, 0, 1, 0, C_PLAIN]),
            tens_payload(
                &[3],
                VT_CODEBOOK,
                &[POS_DENSE],
                3,
                BODY_TAGGED,
                &[0, 0, 0, 0, C_PLAIN, C_PLAIN, 0],
            ),
            tens_payload(&[3], VT_CODEBOOK, &[POS_DENSE], 3, BODY_TAGGED, &[0, 0, 0, 0, 9]),
            tens_payload(&[2], VT_F32, &[POS_HUFF_GAPS, 16], 1, BODY_TAGGED, &[0, C_F16, 0, 0]),
            tens_payload(
                &[2],
                VT_I8,
                &[POS_DENSE],
                2,
                BODY_TAGGED,
                &[&[0u8; 8][..], &[C_F16, 0, 0]].concat(),
            ),
        ] {
            assert!(ok(payload).is_err());
        }
        // A huge count from few bytes: every code word takes a bit, so decoding runs
        // out of input instead of allocating 2^32 values.
        let h = huffman::encode_stream(&[0; 8], 256).unwrap();
        let body = [&1f32.to_le_bytes()[..], &[C_HUFF], &h].concat();
        let huge = tens_payload(&[1, u32::MAX], VT_I8, &[POS_DENSE], u32::MAX, BODY_TAGGED, &body);
        assert!(ok(huge).unwrap_err().to_string().contains("values: bit stream ends"));
        let fine = tens_payload(&[1, 8], VT_I8, &[POS_DENSE], 8, BODY_TAGGED, &body);
        assert_eq!(
            ok(fine).unwrap().tensors[0].values,
            Values::I8 { q: vec![0; 8], scales: vec![1.0] }
        );
    }

    #[test]
    fn new_encodings_survive_flips_truncations_and_mutations() {
        survives_flips_truncations_and_mutations(codebook_model(), 43);
    }

    /// Two hashed tensors (signed with f16 buckets, unsigned with f32 buckets) and
    /// plain ones on the residual two-head graph.
    fn hashed_model() -> SqzModel {
        let mut m = sample_model();
        let mut rng = Rng::new(8);
        m.tensors[0].values = Values::Hashed {
            buckets: (0..9).map(|_| f16_round(rng.uniform(1.0))).collect(),
            seed: 0x0123_4567_89AB_CDEF,
            signed: true,
            len: 64,
        };
        m.tensors[0].positions = None;
        let h1 = m.tensors.iter_mut().find(|t| t.name == "h1.weight").unwrap();
        h1.values = Values::Hashed { buckets: vec![0.1, -0.3, 0.7], seed: 5, signed: false, len: 24 };
        h1.positions = None;
        m
    }

    #[test]
    fn hashed_tensors_round_trip_and_expand_by_the_hash() {
        let m = with_producer(hashed_model());
        let bytes = encode(&m).unwrap();
        assert_eq!(&bytes[4..8], &[1, 0, 1, 0], "a hashed tensor makes the file 1.1");
        assert_eq!(decode(&bytes, &Limits::default()).unwrap(), m);
        // Files without hashed tensors stay 1.0.
        assert_eq!(&encode(&sample_model()).unwrap()[4..8], &[1, 0, 0, 0]);
        let dense = m.tensors[0].to_dense_f32();
        let Values::Hashed { buckets, seed, .. } = &m.tensors[0].values else { unreachable!() };
        for (i, v) in dense.iter().enumerate() {
            let b = buckets[codec::hash::bucket(*seed, i as u64, 9) as usize];
            assert_eq!(*v, if codec::hash::negated(*seed, i as u64) { -b } else { b });
        }
        let (_, sums) = summaries(&m);
        let a = sums.iter().find(|s| s.tensor.as_deref() == Some("a.weight")).unwrap();
        assert_eq!(a.encoding, "hashed-signed-9 dense + c-f16");
        // 9 buckets in f16 + seed, flags, k, tag: no per-weight index.
        assert_eq!(a.value_bytes, 9 * 2 + 8 + 1 + 4 + 1);
        let h1 = sums.iter().find(|s| s.tensor.as_deref() == Some("h1.weight")).unwrap();
        assert_eq!(h1.encoding, "hashed-3 dense + c-f32");
    }

    #[test]
    fn hashed_survives_flips_truncations_and_mutations() {
        survives_flips_truncations_and_mutations(hashed_model(), 44);
    }

    #[test]
    fn malformed_hashed_tensors_are_refused() {
        let body = |seed: u64, flags: u8, k: u32, tag: u8, buckets: &[u8]| {
            let mut b = seed.to_le_bytes().to_vec();
            b.push(flags);
            b.extend_from_slice(&k.to_le_bytes());
            b.push(tag);
            b.extend_from_slice(buckets);
            b
        };
        let ok = tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 0, &[0; 8]));
        let d = decode(&file_with(&ok), &Limits::default()).unwrap();
        assert!(matches!(d.tensors[0].values, Values::Hashed { signed: true, len: 6, .. }));
        let err = |payload: Vec<u8>| decode(&file_with(&payload), &Limits::default()).unwrap_err().to_string();
        let cases = [
            (tens_payload(&[2, 3], 3, &[0], 6, 0, &body(7, 1, 2, 0, &[0; 8])), "body coding 2"),
            (tens_payload(&[2, 3], 3, &[1], 6, 2, &[0; 1]), "dense only"),
            (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 0, 0, &[])), "0 hash buckets"),
            (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 7, 0, &[0; 28])), "7 hash buckets for 6"),
            (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 2, 2, 0, &[0; 8])), "unknown hash flags"),
            (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 5, &[0; 8])), "unknown bucket coding 5"),
            (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 0, &[0; 7])), "inside the buckets"),
            (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 0, &[0; 9])), "1 unused bytes"),
            (tens_payload(&[2, 3], 3, &[0], 6, 2, &[1, 2, 3]), "hash seed"),
        ];
        for (payload, want) in cases {
            let e = err(payload);
            assert!(e.contains(want) && e.contains("'w'"), "{e} should contain {want:?}");
        }
        // A few bytes may not stand for gigabytes of expanded weights.
        let bomb = tens_payload(&[65536, 65535], 3, &[0], u32::MAX - 65535 + 1 - 1, 2, &body(7, 0, 1, 0, &[0; 4]));
        let e = decode(&file_with(&bomb), &Limits::default()).unwrap_err();
        assert!(matches!(e, FormatError::LimitExceeded { .. }), "{e}");
        // The encoder refuses hashed values with positions or a wrong bucket count.
        let mut m = hashed_model();
        m.tensors[0].positions = Some((0..64).collect());
        assert!(encode(&m).unwrap_err().to_string().contains("dense only"));
        let mut m = hashed_model();
        m.tensors[0].values = Values::Hashed { buckets: vec![], seed: 1, signed: false, len: 64 };
        assert!(encode(&m).unwrap_err().to_string().contains("0 hash buckets"));
    }

    /// One int4 tensor (group 5, so the last group is partial and the last byte holds
    /// one nibble when numel is odd) on the residual two-head graph.
    fn int4_model() -> SqzModel {
        let mut m = sample_model();
        let mut rng = Rng::new(9);
        let n = m.tensors[0].numel();
        m.tensors[0].values = Values::I4 {
            q: (0..n).map(|_| rng.below(16) as i8 - 8).collect(),
            group: 5,
            scales: (0..n.div_ceil(5)).map(|_| f16_round(rng.uniform(1.0).abs() + 0.01)).collect(),
        };
        m.tensors[0].positions = None;
        m
    }

    #[test]
    fn int4_tensors_round_trip_in_a_minor_2_file() {
        let m = with_producer(int4_model());
        let bytes = encode(&m).unwrap();
        assert_eq!(&bytes[4..8], &[1, 0, 2, 0], "an int4 tensor makes the file 1.2");
        assert_eq!(decode(&bytes, &Limits::default()).unwrap(), m);
        let Values::I4 { q, scales, .. } = &m.tensors[0].values else { unreachable!() };
        for (i, v) in m.tensors[0].to_dense_f32().iter().enumerate() {
            assert_eq!(*v, scales[i / 5] * f32::from(q[i]));
        }
        let (_, sums) = summaries(&m);
        let a = sums.iter().find(|s| s.tensor.as_deref() == Some(m.tensors[0].name.as_str())).unwrap();
        assert_eq!(a.encoding, "int4/g5 dense + s-f16");
        let n = m.tensors[0].numel();
        // group, two tags, f16 scales, half a byte per value.
        assert_eq!(a.value_bytes, 4 + 2 + 2 * n.div_ceil(5) + n.div_ceil(2));
    }

    #[test]
    fn int4_survives_flips_truncations_and_mutations() {
        survives_flips_truncations_and_mutations(int4_model(), 45);
    }

    #[test]
    fn malformed_int4_tensors_are_refused() {
        let body = |group: u32, stag: u8, scales: &[u8], vtag: u8, packed: &[u8]| {
            let mut b = group.to_le_bytes().to_vec();
            b.push(stag);
            b.extend_from_slice(scales);
            b.push(vtag);
            b.extend_from_slice(packed);
            b
        };
        // 6 elements in groups of 4: 2 f16 scales, 3 packed bytes.
        let ok = tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 0, &[0xF7, 0x08, 0x10]));
        let d = decode(&file_with(&ok), &Limits::default()).unwrap();
        let Values::I4 { q, group: 4, .. } = &d.tensors[0].values else { panic!("{:?}", d.tensors[0].values) };
        assert_eq!(q, &vec![7, -1, -8, 0, 0, 1]);
        let err = |payload: Vec<u8>| decode(&file_with(&payload), &Limits::default()).unwrap_err().to_string();
        let cases = [
            (tens_payload(&[2, 3], 4, &[0], 6, 0, &body(4, 1, &[0; 4], 0, &[0; 3])), "body coding 2"),
            (tens_payload(&[2, 3], 4, &[1], 6, 2, &[0; 1]), "dense only"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(0, 1, &[0; 4], 0, &[0; 3])), "int4 group 0"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 0, &[0; 4], 0, &[0; 3])), "must be f16"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &[4, 0, 0, 0, 1, 0, 0, 0]), "inside the scales"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0, 0x7C, 0, 0], 0, &[0; 3])), "not finite"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 2, &[0; 3])), "packed nibbles"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 0, &[0; 2])), "inside the values"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 0, &[0; 4])), "1 unused bytes"),
            (tens_payload(&[2, 3], 4, &[0], 6, 2, &[1, 2]), "int4 group"),
        ];
        for (payload, want) in cases {
            let e = err(payload);
            assert!(e.contains(want) && e.contains("'w'"), "{e} should contain {want:?}");
        }
        // The encoder refuses int4 values it could not store faithfully.
        let mut m = int4_model();
        m.tensors[0].positions = Some((0..m.tensors[0].numel() as u32).collect());
        assert!(encode(&m).unwrap_err().to_string().contains("dense only"));
        let mut m = int4_model();
        if let Values::I4 { q, .. } = &mut m.tensors[0].values {
            q[0] = 8;
        }
        assert!(encode(&m).unwrap_err().to_string().contains("outside -8..=7"));
        let mut m = int4_model();
        if let Values::I4 { scales, .. } = &mut m.tensors[0].values {
            scales[0] = 0.1;
        }
        assert!(encode(&m).unwrap_err().to_string().contains("not exact in f16"));
    }

    fn survives_flips_truncations_and_mutations(m: SqzModel, seed: u64) {
        let bytes = encode(&m).unwrap();
        let original = decode(&bytes, &Limits::default()).unwrap();
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= x;
                if let Ok(d) = decode(&b, &fuzz_limits()) {
                    assert!((6..8).contains(&i) && d == original, "flip at {i} accepted");
                }
            }
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &fuzz_limits()).is_err(), "length {n}");
        }
        mutations_decode_or_fail_cleanly(&bytes, &mut Rng::new(seed), 3);
    }

    /// 20,000 copies of `valid` with 1 to `max_edits` random edits each (a byte replaced
    /// or bit-flipped, a truncation, an insertion) are decoded as they are and again with
    /// their checksums fixed (to reach the payload parsers): none panics, and whatever
    /// decodes is a valid model that re-encodes byte-stably (bytes, not PartialEq, so that
    /// NaN values compare). Some must decode, or the edits never got past the header.
    fn mutations_decode_or_fail_cleanly(valid: &[u8], rng: &mut Rng, max_edits: usize) {
        let mut accepted = 0;
        for _ in 0..20000 {
            let mut b = valid.to_vec();
            crate::testing::mutate(&mut b, rng, max_edits);
            let _ = decode(&b, &fuzz_limits());
            fix_crcs(&mut b);
            if let Ok(m) = decode(&b, &fuzz_limits()) {
                assert!(summarize(&b, &fuzz_limits()).is_ok());
                m.tensors.iter().for_each(|t| assert_eq!(t.to_dense_f32().len(), t.numel()));
                let again = encode(&m).unwrap();
                let back = decode(&again, &fuzz_limits()).unwrap();
                assert_eq!(encode(&back).unwrap(), again);
                accepted += 1;
            }
        }
        assert!(accepted > 0, "mutations never reached a decodable file");
    }
}
