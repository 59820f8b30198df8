//! What the MiniLM sweep examples share: the command line `DIR HELDOUT CALIBRATION [N]`,
//! the imported model at 64 tokens, the first N held-out sentences as token ids with their
//! fp32 embeddings, and the calibration sentences.
use std::path::Path;

use anyhow::{Context, Result};
use squeeze::model::Model;
use squeeze::pipeline::embedding::{embed_ids, read_sentences};
use squeeze::text::TextEncoder;

pub const SEQ: usize = 64;

pub struct Sweep {
    /// Every argument (a sweep may read more after N).
    #[allow(dead_code)] // each example includes this module; not every one reads them
    pub args: Vec<String>,
    pub model: Model,
    pub encoder: TextEncoder,
    /// Token ids of the first `n` held-out sentences.
    pub ids: Vec<f32>,
    pub n: usize,
    /// Their fp32 embeddings, `dim` each.
    pub reference: Vec<f32>,
    pub dim: usize,
    /// Up to `calibration_limit` calibration sentences.
    pub calibration: Vec<String>,
}

/// Reads the arguments and prepares a sweep with up to `calibration_limit` calibration
/// sentences (N defaults to 300).
pub fn load(calibration_limit: usize) -> Result<Sweep> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, heldout, calibration] = [0, 1, 2].map(|i| args.get(i).cloned());
    let (Some(dir), Some(heldout), Some(calibration)) = (dir, heldout, calibration) else {
        anyhow::bail!("usage: DIR HELDOUT CALIBRATION [N] [...]");
    };
    let n: usize = args.get(3).map_or(Ok(300), |s| s.parse()).context("N")?;
    let imported = squeeze::format::hf::import(Path::new(&dir), Some(SEQ))?;
    let encoder = TextEncoder::from_json(&imported.tokenizer_json, SEQ, imported.pad_token as u32)?;
    let model = Model::from_tensors(imported.graph, imported.tensors)?;
    let sentences = read_sentences(Path::new(&heldout), Some(n))?;
    let n = sentences.len();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let ids = encoder.encode(&refs)?;
    let calibration = read_sentences(Path::new(&calibration), Some(calibration_limit))?;
    let reference = embed_ids(&squeeze::store::model_plan(&model)?, &ids, n, 32)?;
    let dim = reference.len() / n.max(1);
    Ok(Sweep { args, model, encoder, ids, n, reference, dim, calibration })
}
