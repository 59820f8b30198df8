//! Hugging Face BERT directories (`config.json`, `model.safetensors`, `tokenizer.json`,
//! and sentence-transformers' `modules.json` / `1_Pooling/config.json` when present)
//! imported into a squeeze graph of plain nodes, so every pass applies to them.
//!
//! The graph (names are the HF tensor names, so a parameter `<node>.weight` is the HF
//! key of that tensor wherever the layouts agree):
//!
//! ```text
//! input [seq] token ids
//! embeddings.word_embeddings      Embedding (pad_token = config pad_token_id)
//! embeddings.position_embeddings  PositionEmbedding (token_type row 0 folded in)
//! embeddings.LayerNorm            LayerNorm
//! per layer l (post-norm, as BERT):
//!   encoder.layer.l.attention.self           SelfAttention (query/key/value/output)
//!   encoder.layer.l.attention.residual       Add
//!   encoder.layer.l.attention.output.LayerNorm
//!   encoder.layer.l.intermediate.dense       Linear  -> encoder.layer.l.intermediate.gelu  Gelu
//!   encoder.layer.l.output.dense             Linear
//!   encoder.layer.l.output.residual          Add
//!   encoder.layer.l.output.LayerNorm
//! pooling                          Pool (mean, or cls from 1_Pooling/config.json)
//! ```
//!
//! Every sentence uses token type 0, so `token_type_embeddings[0]` is added to every
//! position row once, at import. The attention output projection
//! (`attention.output.dense`) is stored as the attention node's `output` projection.
//! BERT's pooler (`pooler.dense`, a tanh head for next-sentence prediction) and the
//! `position_ids` buffer are not part of a sentence embedding and are skipped.
//! sentence-transformers' final Normalize module (L2) is not a graph node: cosine
//! similarity does not see it; `normalize` in [`HfImport`] tells users of the
//! embedding to apply it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::spec::{Graph, Node, Op, PoolKind};

/// Why a directory cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("'{dir}' has no {file}: a Hugging Face model directory needs config.json, model.safetensors and tokenizer.json")]
    Missing { dir: PathBuf, file: &'static str },
    #[error("cannot read '{path}': {why}")]
    Read { path: PathBuf, why: String },
    #[error("'{path}': unsupported architecture: {why} (squeeze imports BERT encoders: model_type \"bert\", absolute positions, GELU)")]
    Unsupported { path: PathBuf, why: String },
    #[error("'{path}' does not match config.json: {why}")]
    Mismatch { path: PathBuf, why: String },
    #[error("sequence length {seq} must be between 1 and max_position_embeddings {max}")]
    SeqLen { seq: usize, max: usize },
}

#[derive(Deserialize)]
struct BertConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<usize>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_position")]
    position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position() -> String {
    "absolute".into()
}

/// An imported directory: the graph and its tensors, the tokenizer, how to pool.
pub struct HfImport {
    pub graph: Graph,
    /// (name, shape, values) for every parameter of `graph`.
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// The `tokenizer.json` text.
    pub tokenizer_json: String,
    pub pad_token: usize,
    /// sentence-transformers appends an L2 normalisation (modules.json).
    pub normalize: bool,
    /// Tensors of the file that the graph does not use (pooler, buffers).
    pub skipped: Vec<String>,
}

fn read_text(path: &Path) -> Result<String, HfError> {
    std::fs::read_to_string(path).map_err(|e| HfError::Read { path: path.into(), why: e.to_string() })
}

/// Whether `dir` looks like a Hugging Face model directory (has a config.json).
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join("config.json").is_file()
}

/// Imports the BERT encoder in `dir` with inputs of `seq` tokens (None: the
/// tokenizer's truncation length, else 128).
pub fn import(dir: &Path, seq: Option<usize>) -> Result<HfImport, HfError> {
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !dir.join(file).is_file() {
            return Err(HfError::Missing { dir: dir.into(), file });
        }
    }
    let config_path = dir.join("config.json");
    let config_text = read_text(&config_path)?;
    let raw: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| HfError::Read { path: config_path.clone(), why: e.to_string() })?;
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if model_type != "bert" {
        return Err(HfError::Unsupported { path: config_path, why: format!("model_type {model_type:?}") });
    }
    let cfg: BertConfig =
        serde_json::from_value(raw).map_err(|e| HfError::Read { path: config_path.clone(), why: e.to_string() })?;
    let _ = (&cfg.model_type, &cfg.architectures);
    if cfg.hidden_act != "gelu" {
        return Err(HfError::Unsupported { path: config_path, why: format!("hidden_act {:?} (only the exact erf GELU)", cfg.hidden_act) });
    }
    if cfg.position_embedding_type != "absolute" {
        return Err(HfError::Unsupported { path: config_path, why: format!("position_embedding_type {:?}", cfg.position_embedding_type) });
    }
    if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
        return Err(HfError::Unsupported {
            path: config_path,
            why: format!("{} heads do not divide hidden_size {}", cfg.num_attention_heads, cfg.hidden_size),
        });
    }
    let pad_token = cfg.pad_token_id.unwrap_or(0);
    if pad_token >= cfg.vocab_size {
        return Err(HfError::Unsupported { path: config_path, why: format!("pad_token_id {pad_token} ≥ vocab_size {}", cfg.vocab_size) });
    }

    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer_json = read_text(&tokenizer_path)?;
    let tokenizer_len = serde_json::from_str::<serde_json::Value>(&tokenizer_json)
        .map_err(|e| HfError::Read { path: tokenizer_path.clone(), why: e.to_string() })?
        .pointer("/truncation/max_length")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    // Without a length: the tokenizer's, else 128, never beyond the position table.
    let seq = seq.unwrap_or_else(|| tokenizer_len.unwrap_or(128).min(cfg.max_position_embeddings));
    if seq == 0 || seq > cfg.max_position_embeddings {
        return Err(HfError::SeqLen { seq, max: cfg.max_position_embeddings });
    }

    let (pool, normalize) = sentence_transformers_head(dir)?;

    let weights_path = dir.join("model.safetensors");
    // Tensors are read one at a time from the file: the file's bytes are never held
    // whole next to the imported weights.
    let st = LazySafetensors::open(&weights_path)?;
    // BertFor* checkpoints prefix the encoder with "bert."; BertModel does not.
    let prefix = if st.names().iter().any(|n| n.starts_with("bert.embeddings.")) { "bert." } else { "" };
    let mismatch = |why: String| HfError::Mismatch { path: weights_path.clone(), why };
    let used: std::cell::RefCell<Vec<String>> = Default::default();
    let tensor = |key: &str, shape: &[usize]| -> Result<Vec<f32>, HfError> {
        let full = format!("{prefix}{key}");
        let entry = st.entry(&full).ok_or_else(|| mismatch(format!("tensor '{full}' is missing")))?;
        if entry.shape != shape {
            return Err(mismatch(format!("tensor '{full}' has shape {:?}, config.json implies {shape:?}", entry.shape)));
        }
        used.borrow_mut().push(full.clone());
        st.read_f32(entry).map_err(|why| mismatch(format!("tensor '{full}': {why}")))
    };

    let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
    let eps = cfg.layer_norm_eps as f32;
    let mut nodes: Vec<Node> = Vec::new();
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    let mut prev = crate::spec::INPUT.to_string();
    let add = |nodes: &mut Vec<Node>, name: String, inputs: Vec<String>, op: Op| -> String {
        nodes.push(Node { name: name.clone(), inputs, op });
        name
    };

    let word = "embeddings.word_embeddings";
    tensors.insert(format!("{word}.weight"), (vec![cfg.vocab_size, d], tensor(&format!("{word}.weight"), &[cfg.vocab_size, d])?));
    prev = add(&mut nodes, word.into(), vec![prev], Op::Embedding { vocab: cfg.vocab_size, dim: d, pad_token: Some(pad_token) });

    let pos = "embeddings.position_embeddings";
    let mut pos_w = tensor(&format!("{pos}.weight"), &[cfg.max_position_embeddings, d])?;
    if cfg.type_vocab_size > 0 {
        let types = tensor("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, d])?;
        for row in pos_w.chunks_mut(d) {
            row.iter_mut().zip(&types[..d]).for_each(|(p, t)| *p += t);
        }
    }
    tensors.insert(format!("{pos}.weight"), (vec![cfg.max_position_embeddings, d], pos_w));
    prev = add(&mut nodes, pos.into(), vec![prev], Op::PositionEmbedding { max_len: cfg.max_position_embeddings, dim: d });

    let ln0 = "embeddings.LayerNorm";
    for q in ["weight", "bias"] {
        tensors.insert(format!("{ln0}.{q}"), (vec![d], tensor(&format!("{ln0}.{q}"), &[d])?));
    }
    prev = add(&mut nodes, ln0.into(), vec![prev], Op::LayerNorm { dim: d, eps });

    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        let attn = format!("{p}.attention.self");
        for (proj, key) in [("query", "attention.self.query"), ("key", "attention.self.key"), ("value", "attention.self.value"), ("output", "attention.output.dense")] {
            tensors.insert(format!("{attn}.{proj}.weight"), (vec![d, d], tensor(&format!("{p}.{key}.weight"), &[d, d])?));
            tensors.insert(format!("{attn}.{proj}.bias"), (vec![d], tensor(&format!("{p}.{key}.bias"), &[d])?));
        }
        let block_in = prev.clone();
        let a = add(&mut nodes, attn, vec![prev], Op::SelfAttention { dim: d, heads: cfg.num_attention_heads, causal: false, head_dim: None });
        let r = add(&mut nodes, format!("{p}.attention.residual"), vec![a, block_in], Op::Add);
        let ln1 = format!("{p}.attention.output.LayerNorm");
        for q in ["weight", "bias"] {
            tensors.insert(format!("{ln1}.{q}"), (vec![d], tensor(&format!("{ln1}.{q}"), &[d])?));
        }
        let ln1 = add(&mut nodes, ln1, vec![r], Op::LayerNorm { dim: d, eps });
        let up = format!("{p}.intermediate.dense");
        tensors.insert(format!("{up}.weight"), (vec![ff, d], tensor(&format!("{up}.weight"), &[ff, d])?));
        tensors.insert(format!("{up}.bias"), (vec![ff], tensor(&format!("{up}.bias"), &[ff])?));
        let up = add(&mut nodes, up, vec![ln1.clone()], Op::Linear { in_features: d, out_features: ff, bias: true });
        let g = add(&mut nodes, format!("{p}.intermediate.gelu"), vec![up], Op::Gelu);
        let down = format!("{p}.output.dense");
        tensors.insert(format!("{down}.weight"), (vec![d, ff], tensor(&format!("{down}.weight"), &[d, ff])?));
        tensors.insert(format!("{down}.bias"), (vec![d], tensor(&format!("{down}.bias"), &[d])?));
        let down = add(&mut nodes, down, vec![g], Op::Linear { in_features: ff, out_features: d, bias: true });
        let r2 = add(&mut nodes, format!("{p}.output.residual"), vec![down, ln1], Op::Add);
        let ln2 = format!("{p}.output.LayerNorm");
        for q in ["weight", "bias"] {
            tensors.insert(format!("{ln2}.{q}"), (vec![d], tensor(&format!("{ln2}.{q}"), &[d])?));
        }
        prev = add(&mut nodes, ln2, vec![r2], Op::LayerNorm { dim: d, eps });
    }
    if let Some(extra) = st.names().iter().find(|n| n.starts_with(&format!("{prefix}encoder.layer.{}.", cfg.num_hidden_layers))) {
        return Err(mismatch(format!("tensor '{extra}' belongs to a layer beyond num_hidden_layers {}", cfg.num_hidden_layers)));
    }
    let pooled = add(&mut nodes, "pooling".into(), vec![prev], Op::Pool { kind: pool });
    let graph = Graph { input_shape: vec![seq], nodes, outputs: vec![pooled], io_names: Default::default() };
    graph.validate().map_err(|e| mismatch(e.to_string()))?;
    let mut skipped: Vec<String> = st.names().into_iter().filter(|n| !used.borrow().iter().any(|u| u == *n)).map(str::to_string).collect();
    skipped.sort();
    Ok(HfImport { graph, tensors, tokenizer_json, pad_token, normalize, skipped })
}

/// `model.safetensors`, its header read by the one safetensors reader and its tensors
/// read on demand (a model's weights are never held twice).
struct LazySafetensors {
    path: PathBuf,
    file: std::cell::RefCell<std::fs::File>,
    header: super::safetensors::Header,
}

impl LazySafetensors {
    fn open(path: &Path) -> Result<LazySafetensors, HfError> {
        let read_err = |why: String| HfError::Read { path: path.into(), why };
        let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let size = file.metadata().map_err(|e| read_err(e.to_string()))?.len();
        let header = super::safetensors::Header::read(&mut file, size).map_err(|e| read_err(e.to_string()))?;
        Ok(LazySafetensors { path: path.into(), file: std::cell::RefCell::new(file), header })
    }

    fn names(&self) -> Vec<&str> {
        self.header.entries.keys().map(String::as_str).collect()
    }

    fn entry(&self, name: &str) -> Option<&super::safetensors::Entry> {
        self.header.entries.get(name)
    }

    /// The tensor's values as f32, read in chunks.
    fn read_f32(&self, e: &super::safetensors::Entry) -> Result<Vec<f32>, String> {
        self.header.tensor_f32(&mut *self.file.borrow_mut(), e).map_err(|why| format!("reading '{}': {why}", self.path.display()))
    }
}

/// Pooling and normalisation from sentence-transformers' files (mean pooling and no
/// normalisation when they are absent, as for a bare BertModel used as an embedder).
fn sentence_transformers_head(dir: &Path) -> Result<(PoolKind, bool), HfError> {
    let mut pool = PoolKind::Mean;
    let pooling = dir.join("1_Pooling/config.json");
    if pooling.is_file() {
        let v: serde_json::Value = serde_json::from_str(&read_text(&pooling)?).map_err(|e| HfError::Read { path: pooling.clone(), why: e.to_string() })?;
        let on = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        pool = match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
            (true, false) => PoolKind::Mean,
            (false, true) => PoolKind::Cls,
            _ => return Err(HfError::Unsupported { path: pooling, why: "pooling other than one of mean or CLS".into() }),
        };
        if on("pooling_mode_max_tokens") || on("pooling_mode_mean_sqrt_len_tokens") {
            return Err(HfError::Unsupported { path: pooling, why: "max or sqrt-length pooling".into() });
        }
    }
    let modules = dir.join("modules.json");
    let normalize = modules.is_file() && read_text(&modules)?.contains("sentence_transformers.models.Normalize");
    Ok((pool, normalize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    /// F32, F16 and BF16 tensors read back as the f32 values they store (through the
    /// element conversions the PyTorch readers share), other dtypes are a clear error.
    #[test]
    fn lazy_reader_converts_f32_f16_bf16() {
        let values = [1.5f32, -2.0, 0.25, 0.0, 1024.0, -0.125];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = values.iter().flat_map(|&v| crate::codec::f16::from_f32(v).to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let i64_bytes = vec![0u8; 16];
        let views = vec![
            ("a".to_string(), TensorView::new(Dtype::F32, vec![2, 3], &f32_bytes).unwrap()),
            ("b".to_string(), TensorView::new(Dtype::F16, vec![6], &f16_bytes).unwrap()),
            ("c".to_string(), TensorView::new(Dtype::BF16, vec![3, 2], &bf16_bytes).unwrap()),
            ("d".to_string(), TensorView::new(Dtype::I64, vec![2], &i64_bytes).unwrap()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let st = LazySafetensors::open(&path).unwrap();
        for name in ["a", "b", "c"] {
            assert_eq!(st.read_f32(st.entry(name).unwrap()).unwrap(), values, "tensor {name}");
        }
        assert_eq!(st.read_f32(st.entry("d").unwrap()).unwrap(), vec![0.0, 0.0], "integer tensors read as f32");
    }
}
