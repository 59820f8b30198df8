//! Explores mixed int4 precision on a Hugging Face BERT directory before writing a
//! recipe: imports it once, computes fp32 embeddings of the first N held-out sentences,
//! then for each configuration prints the mean and minimum cosine to fp32 and the
//! `.sqz` bytes (fixed-width codes, as `squeeze run` stores the int4 stage). The figures
//! to report come from `squeeze run` on the recipes; this only picks what to try.
//!
//!     cargo run --release --example int4_sweep -- models/all-MiniLM-L6-v2 \
//!         data/shakespeare/heldout.txt data/shakespeare/calibration.txt [N]
//!
//! `SWEEP=0,2,5` runs only those configurations (by index in the list below).

use anyhow::{Context, Result};
use squeeze::compress::{prune, quantize};
use squeeze::compress::quantize::{Int4Scales, Precision, WeightFormat};
use squeeze::pipeline::embedding::{embed_ids, int4_importance, row_cosines};

#[path = "common/minilm.rs"]
mod minilm;

fn main() -> Result<()> {
    let minilm::Sweep { model, encoder, ids, n, reference, dim, calibration: cal, .. } = minilm::load(128)?;
    let cal_refs: Vec<&str> = cal.iter().map(String::as_str).collect();
    let (cal_ids, cal_lens) = (encoder.encode(&cal_refs)?, encoder.lengths(&cal_refs)?);
    let norms = prune::input_norms(&model, &cal_ids, cal_refs.len(), Some(&cal_lens))?;
    let weighted = int4_importance(&model, &norms);
    let nodes: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for s in model.params.specs.iter().filter(|s| s.kind == squeeze::spec::ParamKind::Weight) {
            if !v.contains(&s.node) {
                v.push(s.node.clone());
            }
        }
        v
    };
    let fp32 = 4.0 * model.graph.num_params() as f64;
    // (name, group, scales, activation-weighted, int8 node-name fragments, f32 fragments,
    // word-embedding group (0: the default group)).
    type Config<'a> = (&'a str, usize, Int4Scales, bool, Vec<&'a str>, Vec<&'a str>, usize);
    let all: Vec<Config> = vec![
        ("max g32", 32, Int4Scales::Max, false, vec![], vec![], 0),
        ("search g32", 32, Int4Scales::Search, false, vec![], vec![], 0),
        ("search+cal g32", 32, Int4Scales::Search, true, vec![], vec![], 0),
        ("search+cal g64", 64, Int4Scales::Search, true, vec![], vec![], 0),
        ("search+cal g32, word emb f32", 32, Int4Scales::Search, true, vec![], vec!["embeddings.word_embeddings"], 0),
        ("search+cal g32, block 0 int8", 32, Int4Scales::Search, true, vec!["encoder.layer.0."], vec![], 0),
        ("search+cal g32, block 5 int8", 32, Int4Scales::Search, true, vec!["encoder.layer.5."], vec![], 0),
        ("search+cal g32, FFN out int8", 32, Int4Scales::Search, true, vec![".output.dense"], vec![], 0),
        ("search+cal g32, FFN in int8", 32, Int4Scales::Search, true, vec![".intermediate.dense"], vec![], 0),
        ("search+cal g32, attention int8", 32, Int4Scales::Search, true, vec![".attention.self"], vec![], 0),
        ("search+cal g32, word emb g384", 32, Int4Scales::Search, true, vec![], vec![], 384),
        ("search+cal g32, word emb g384, blocks 4-5 int8", 32, Int4Scales::Search, true, vec!["encoder.layer.4.", "encoder.layer.5."], vec![], 384),
        ("search+cal g32, word emb g384, block 5 + FFN in int8", 32, Int4Scales::Search, true, vec!["encoder.layer.5.", ".intermediate.dense"], vec![], 384),
        ("search+cal g32, word emb g384, blocks 3-5 int8", 32, Int4Scales::Search, true, vec!["encoder.layer.3.", "encoder.layer.4.", "encoder.layer.5."], vec![], 384),
    ];
    // SWEEP=a,b,c picks configurations by index (all when unset).
    let picked: Vec<usize> = match std::env::var("SWEEP") {
        Ok(v) => v.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>().context("SWEEP")?,
        Err(_) => (0..all.len()).collect(),
    };
    println!("| config | mean cosine | min cosine | bytes | % of fp32 |");
    for i in picked {
        let (name, group, scales, cal, int8, keep, emb_group) = all.get(i).cloned().context("SWEEP index")?;
        let pick = |pats: &[&str]| nodes.iter().filter(|n| pats.iter().any(|p| n.contains(p))).cloned().collect::<Vec<_>>();
        let (as_int8, kept) = (pick(&int8), pick(&keep));
        let group_of = |n: &str| if emb_group > 0 && n == "embeddings.word_embeddings" { emb_group } else { group };
        let int4 = nodes.iter().filter(|n| !as_int8.contains(n) && !kept.contains(n)).map(|n| (n.clone(), WeightFormat::Int4 { group: group_of(n) }));
        let weights = int4.chain(as_int8.iter().map(|n| (n.clone(), WeightFormat::Int8))).collect();
        let precision = Precision { mode: quantize::Mode::Weights, weights, int4_scales: scales, int4_importance: if cal { weighted.clone() } else { Default::default() }, ..Default::default() };
        let stored = quantize::quantize(&model, &precision, &[])?;
        let bytes = squeeze::format::sqz::encode_with(&stored, &squeeze::format::sqz::EncodeOptions { entropy_coding: false })?.len();
        let emb = embed_ids(&squeeze::store::sqz_into_plan(stored)?, &ids, n, 32)?;
        let cos = row_cosines(&emb, &reference, dim);
        let mean = cos.iter().sum::<f64>() / n as f64;
        let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
        println!("| {name} | {mean:.6} | {min:.6} | {bytes} | {:.2}% |", 100.0 * bytes as f64 / fp32);
    }
    Ok(())
}
