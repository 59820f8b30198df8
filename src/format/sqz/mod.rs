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
//!
//! Files: this one holds the format's constants and types (model, tensor, limits,
//! summaries, errors); `frame` the section framing and CRC shared by both sides, `write`
//! and `encode` the writer and the tensor encodings, `read` and `decode` the reader and
//! the tensor decodings, `tests` the round-trip and fuzz-style tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::spec::{Graph, QuantPlan};

mod decode;
mod encode;
mod frame;
mod read;
mod write;
#[cfg(test)]
mod tests;

pub use read::{decode, read_sqz, read_sqz_summarized, summarize, summarize_file};
pub use write::{EncodeOptions, encode, encode_with, write_sqz_streaming};

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
