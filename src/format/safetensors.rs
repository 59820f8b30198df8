//! Dense f32 models as safetensors files, with the architecture in the file's metadata
//! (`squeeze.graph`, JSON), so any later command needs only the file. Other tools
//! (PyTorch, candle, `safetensors` in Python) read the tensors as they are.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

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

/// Parses safetensors bytes written by [`encode`] (or by another tool, with the
/// architecture added to the metadata).
pub fn decode(bytes: &[u8]) -> Result<DenseFile, SafetensorsError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| SafetensorsError::Format(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| SafetensorsError::Format(e.to_string()))?;
    let mut metadata: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let graph_json = metadata.remove(GRAPH_KEY).ok_or(SafetensorsError::NoGraph)?;
    let graph: Graph = serde_json::from_str(&graph_json).map_err(|e| SafetensorsError::BadGraph(e.to_string()))?;
    let masked: Vec<String> = match metadata.remove(MASKED_KEY) {
        Some(m) => serde_json::from_str(&m).map_err(|e| SafetensorsError::BadGraph(format!("{MASKED_KEY}: {e}")))?,
        None => Vec::new(),
    };
    let mut tensors = Vec::new();
    let mut named = st.tensors();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in named {
        if view.dtype() != Dtype::F32 {
            return Err(SafetensorsError::Dtype { name, dtype: format!("{:?}", view.dtype()) });
        }
        let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        tensors.push((name, view.shape().to_vec(), values));
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
}
