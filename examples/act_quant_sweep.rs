//! Explores int8 *activation* quantization of a Hugging Face BERT directory before
//! writing a recipe: imports it once, computes fp32 embeddings of the first N held-out
//! sentences, then for each configuration prints the mean and minimum cosine to fp32.
//! The figures to report come from `squeeze run` on the recipes; this only finds where
//! the error comes from and what to try.
//!
//!     cargo run --release --example act_quant_sweep -- models/all-MiniLM-L6-v2 \
//!         data/shakespeare/heldout.txt data/shakespeare/calibration.txt N CONFIG...
//!
//! A CONFIG is comma-separated `key=value` items:
//! `mode=dynamic|full|weights` (default dynamic), `smooth=α` (SmoothQuant strength),
//! `float=FRAGMENT` (nodes whose name contains it keep f32 activations, int8 weights;
//! repeatable), `only=FRAGMENT` (only those nodes get integer activations; repeatable),
//! `cal=K` (calibration sentences, default 1000). `sensitivity-dynamic` and
//! `sensitivity-full` expand to one configuration per weighted node, each with only
//! that node's activations in f32 ("all but one").

use anyhow::{Context, Result, bail};
use squeeze::compress::{quantize, smooth};
use squeeze::pipeline::embedding::{embed_ids, row_cosines};

#[path = "common/minilm.rs"]
mod minilm;

fn main() -> Result<()> {
    let minilm::Sweep { args, model, encoder, ids, n, reference, dim, calibration: cal } = minilm::load(1000)?;
    let cal_refs: Vec<&str> = cal.iter().map(String::as_str).collect();
    let cal_ids = encoder.encode(&cal_refs)?;
    let integer_candidates: Vec<String> = model
        .graph
        .nodes
        .iter()
        .filter(|nd| matches!(nd.op, squeeze::spec::Op::Linear { .. } | squeeze::spec::Op::SelfAttention { .. }))
        .map(|nd| nd.name.clone())
        .collect();
    let mut configs: Vec<String> = Vec::new();
    for c in &args[4..] {
        match c.as_str() {
            "sensitivity-dynamic" | "sensitivity-full" => {
                let mode = if c.ends_with("dynamic") { "dynamic" } else { "full" };
                configs.extend(integer_candidates.iter().map(|nd| format!("mode={mode},float={nd}")));
            }
            other => configs.push(other.to_string()),
        }
    }
    let seq = 64;
    println!("| config | mean cosine | min cosine |");
    for config in configs {
        let (mut mode, mut alpha, mut float, mut only, mut k) = (quantize::Mode::Dynamic, None, Vec::new(), Vec::new(), 1000usize);
        for item in config.split(',') {
            let (key, value) = item.split_once('=').context("key=value")?;
            match key {
                "mode" => {
                    mode = match value {
                        "dynamic" => quantize::Mode::Dynamic,
                        "full" => quantize::Mode::Full,
                        "weights" => quantize::Mode::Weights,
                        _ => bail!("mode {value}"),
                    }
                }
                "smooth" => alpha = Some(value.parse::<f32>()?),
                "float" => float.push(value.to_string()),
                "only" => only.push(value.to_string()),
                "cal" => k = value.parse()?,
                _ => bail!("unknown key {key}"),
            }
        }
        let cal = &cal_ids[..k.min(cal_refs.len()) * seq];
        let smoothed;
        let m = match alpha {
            Some(a) => {
                smoothed = smooth::smooth(&model, cal, a)?.0;
                &smoothed
            }
            None => &model,
        };
        let mut q = quantize::quantize(m, &quantize::Precision::int8_all(m, mode), cal)?;
        let keep_float = |nd: &String| float.iter().any(|f| nd.contains(f.as_str())) || (!only.is_empty() && !only.iter().any(|f| nd.contains(f.as_str())));
        q.quant.integer_nodes.retain(|nd| !keep_float(nd));
        q.quant.dynamic.retain(|nd| !keep_float(nd));
        let emb = embed_ids(&squeeze::store::sqz_into_plan(q)?, &ids, n, 32)?;
        let cos = row_cosines(&emb, &reference, dim);
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
        println!("| {config} | {mean:.6} | {min:.6} |");
    }
    Ok(())
}
