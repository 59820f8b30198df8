//! safetensors files: the one reader ([`Header`], [`Header::read`], [`Header::tensor_f32`])
//! that every safetensors input goes through (squeeze's own dense models, PyTorch state
//! dicts, a Hugging Face directory's `model.safetensors`, read lazily), and squeeze's
//! dense f32 models written with the architecture in the metadata (`squeeze.graph`,
//! JSON), so any later command needs only the file. Other tools (PyTorch, candle,
//! `safetensors` in Python) read the tensors as they are.
//!
//! The header is checked against the real size of the file before anything is
//! allocated from it: its length, every tensor's byte range, and each tensor's length
//! against its shape and dtype when it is read.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};

use safetensors::tensor::{Dtype, TensorView};

use super::pickle::StorageType;

use crate::spec::Graph;

/// Metadata key holding the architecture as JSON.
pub const GRAPH_KEY: &str = "squeeze.graph";
/// Metadata key listing (JSON array) the parameters that carry a pruning mask; the mask
/// is their non-zero pattern.
pub const MASKED_KEY: &str = "squeeze.masked";

/// Errors reading or writing a safetensors model.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    #[error("safetensors file has no squeeze architecture (metadata key '{GRAPH_KEY}'); it was not written by squeeze")]
    NoGraph,
    #[error("architecture in metadata is invalid: {0}")]
    BadGraph(String),
    #[error("tensor '{name}' has dtype {dtype}, only F32 is supported")]
    Dtype { name: String, dtype: String },
}

/// A dense model file: architecture, named f32 tensors, free metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseFile {
    pub graph: Graph,
    /// (name, shape, values) in the order they were written.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Names of parameters with a pruning mask.
    pub masked: Vec<String>,
    /// Other metadata entries (without the squeeze keys).
    pub metadata: BTreeMap<String, String>,
}

/// Serialises `file` to safetensors bytes.
pub fn encode(file: &DenseFile) -> Result<Vec<u8>, SafetensorsError> {
    let bytes: Vec<Vec<u8>> = file.tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(file.tensors.len());
    for ((name, shape, _), b) in file.tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| SafetensorsError::Format(e.to_string()))?;
        views.push((name.clone(), view));
    }
    let mut meta: HashMap<String, String> = file.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    meta.insert(GRAPH_KEY.into(), serde_json::to_string(&file.graph).expect("graph serialises"));
    if !file.masked.is_empty() {
        meta.insert(MASKED_KEY.into(), serde_json::to_string(&file.masked).expect("names serialise"));
    }
    safetensors::serialize(views, Some(meta)).map_err(|e| SafetensorsError::Format(e.to_string()))
}

/// The largest header squeeze reads (100 MB; a 7B model's header is about 1 MB).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's place in a safetensors file.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct Entry {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub data_offsets: [u64; 2],
}

impl Entry {
    /// The element type, if squeeze reads it (F32, F16, BF16, F64 and integer types).
    pub fn element(&self) -> Option<StorageType> {
        Some(match self.dtype.as_str() {
            "F32" => StorageType::F32,
            "F16" => StorageType::F16,
            "BF16" => StorageType::BF16,
            "F64" => StorageType::F64,
            "I64" => StorageType::I64,
            "I32" => StorageType::I32,
            "I16" => StorageType::I16,
            "I8" => StorageType::I8,
            "U8" => StorageType::U8,
            "BOOL" => StorageType::Bool,
            _ => return None,
        })
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A safetensors header: free metadata and every tensor's entry, its ranges checked
/// against the file's size.
#[derive(Clone, Debug)]
pub struct Header {
    pub metadata: BTreeMap<String, String>,
    /// By name (sorted).
    pub entries: BTreeMap<String, Entry>,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

impl Header {
    /// Reads the header from the start of `source`, a file of `size` bytes.
    pub fn read(source: &mut impl Read, size: u64) -> Result<Header, SafetensorsError> {
        let bad = |why: String| SafetensorsError::Format(why);
        let mut n = [0u8; 8];
        source.read_exact(&mut n).map_err(|_| bad(format!("{size} bytes: too short for a safetensors header")))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > size.saturating_sub(8) || header_len > MAX_HEADER {
            return Err(bad(format!("header of {header_len} bytes does not fit the file's {size} bytes")));
        }
        let mut header = vec![0u8; header_len as usize];
        source.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
        let mut raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let metadata: BTreeMap<String, String> = match raw.remove("__metadata__") {
            Some(m) => serde_json::from_value(m).map_err(|e| bad(format!("header __metadata__: {e}")))?,
            None => BTreeMap::new(),
        };
        let data_start = 8 + header_len;
        let data_len = size - data_start;
        let mut entries = BTreeMap::new();
        for (name, v) in raw {
            let e: Entry = serde_json::from_value(v).map_err(|e| bad(format!("header entry '{name}': {e}")))?;
            let [begin, end] = e.data_offsets;
            if begin > end || end > data_len {
                return Err(bad(format!("tensor '{name}': data offsets {begin}..{end} are outside the file's {data_len} data bytes")));
            }
            entries.insert(name, e);
        }
        Ok(Header { metadata, entries, data_start })
    }

    /// Reads a header from an in-memory file.
    pub fn of(bytes: &[u8]) -> Result<Header, SafetensorsError> {
        Header::read(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
    }

    /// The tensor `entry` of `source` as f32 (from any element type squeeze reads),
    /// read in chunks of at most 1 MiB; its length is checked against shape × width.
    pub fn tensor_f32<R: Read + Seek>(&self, source: &mut R, entry: &Entry) -> Result<Vec<f32>, String> {
        let dtype = entry.element().ok_or_else(|| format!("dtype {} is not supported", entry.dtype))?;
        let width = dtype.size() as u64;
        let [begin, end] = entry.data_offsets;
        if end - begin != entry.numel().saturating_mul(width) {
            return Err(format!("{} data bytes for shape {:?} of {}", end - begin, entry.shape, entry.dtype));
        }
        source.seek(SeekFrom::Start(self.data_start + begin)).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(entry.numel() as usize);
        let mut chunk = vec![0u8; (1 << 20).min((end - begin) as usize)];
        let mut left = (end - begin) as usize;
        while left > 0 {
            let take = left.min(chunk.len());
            source.read_exact(&mut chunk[..take]).map_err(|e| e.to_string())?;
            out.extend((0..take / width as usize).map(|i| dtype.read_f32(&chunk[..take], i)));
            left -= take;
        }
        Ok(out)
    }
}

/// Parses safetensors bytes written by [`encode`] (or by another tool, with the
/// architecture added to the metadata).
pub fn decode(bytes: &[u8]) -> Result<DenseFile, SafetensorsError> {
    let header = Header::of(bytes)?;
    let mut metadata = header.metadata.clone();
    let graph_json = metadata.remove(GRAPH_KEY).ok_or(SafetensorsError::NoGraph)?;
    let graph: Graph = serde_json::from_str(&graph_json).map_err(|e| SafetensorsError::BadGraph(e.to_string()))?;
    let masked: Vec<String> = match metadata.remove(MASKED_KEY) {
        Some(m) => serde_json::from_str(&m).map_err(|e| SafetensorsError::BadGraph(format!("{MASKED_KEY}: {e}")))?,
        None => Vec::new(),
    };
    let mut tensors = Vec::new();
    let mut source = std::io::Cursor::new(bytes);
    for (name, entry) in &header.entries {
        if entry.dtype != "F32" {
            return Err(SafetensorsError::Dtype { name: name.clone(), dtype: entry.dtype.clone() });
        }
        let values = header.tensor_f32(&mut source, entry).map_err(|why| SafetensorsError::Format(format!("tensor '{name}': {why}")))?;
        tensors.push((name.clone(), entry.shape.clone(), values));
    }
    Ok(DenseFile { graph, tensors, masked, metadata })
}

/// Whether `bytes` look like a safetensors file (8-byte header length, then `{`).
pub fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{' && u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize <= bytes.len() - 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Op;

    /// Truncated and mutated files are errors or valid files, never a panic.
    #[test]
    fn corrupted_files_never_panic() {
        let graph = Graph::chain(vec![3], vec![("fc", Op::Linear { in_features: 3, out_features: 2, bias: true })]);
        let file = DenseFile {
            graph,
            tensors: vec![("fc.bias".into(), vec![2], vec![0.5, -1.0]), ("fc.weight".into(), vec![2, 3], vec![1.0, 0.0, -2.5, 7.0, 3.0, 4.0])],
            masked: vec!["fc.weight".into()],
            metadata: BTreeMap::new(),
        };
        let accepted = crate::testing::fuzz_reader(&encode(&file).unwrap(), 7, 5000, decode);
        assert!(accepted > 0, "no mutant decoded: the edits never got past the header");
    }

    #[test]
    fn round_trips_graph_tensors_and_masks() {
        let graph = Graph::chain(vec![3], vec![("fc", Op::Linear { in_features: 3, out_features: 2, bias: true })]);
        let file = DenseFile {
            graph,
            tensors: vec![
                ("fc.bias".into(), vec![2], vec![0.5, -0.0]),
                ("fc.weight".into(), vec![2, 3], vec![1.0, 0.0, -2.5, f32::MIN_POSITIVE, 3.0, 4.0]),
            ],
            masked: vec!["fc.weight".into()],
            metadata: BTreeMap::from([("note".to_string(), "x".to_string())]),
        };
        let bytes = encode(&file).unwrap();
        assert!(is_safetensors(&bytes));
        let back = decode(&bytes).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.tensors[0].2[1].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn foreign_or_broken_files_are_errors() {
        assert!(matches!(decode(b"hello world, not a model"), Err(SafetensorsError::Format(_))));
        let plain = safetensors::serialize(Vec::<(String, TensorView)>::new(), None).unwrap();
        assert!(matches!(decode(&plain), Err(SafetensorsError::NoGraph)));
    }

    /// The one reader trusts no size the file claims: a header longer than the file, a
    /// tensor whose range lies past the end, or whose bytes do not fit its shape, is
    /// refused before anything is allocated from it.
    #[test]
    fn claimed_sizes_are_checked_against_the_file() {
        let mut huge = (1u64 << 40).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(Header::of(&huge).unwrap_err().to_string().contains("does not fit the file"));
        let with = |entry: &str, data: usize| {
            let json = format!("{{\"t\":{entry}}}");
            let mut b = (json.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(json.as_bytes());
            b.extend(std::iter::repeat_n(0u8, data));
            b
        };
        let past_end = with(r#"{"dtype":"F32","shape":[4],"data_offsets":[0,16]}"#, 8);
        assert!(Header::of(&past_end).unwrap_err().to_string().contains("outside the file's 8 data bytes"));
        let short = with(r#"{"dtype":"F32","shape":[1000000000],"data_offsets":[0,8]}"#, 8);
        let h = Header::of(&short).unwrap();
        let err = h.tensor_f32(&mut std::io::Cursor::new(&short), &h.entries["t"]).unwrap_err();
        assert!(err.contains("8 data bytes for shape [1000000000]"), "{err}");
        let ok = with(r#"{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}"#, 8);
        let h = Header::of(&ok).unwrap();
        assert_eq!(h.tensor_f32(&mut std::io::Cursor::new(&ok), &h.entries["t"]).unwrap(), vec![0.0; 4]);
    }
}
