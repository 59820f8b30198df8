//! Hugging Face BERT directories: a tiny randomly initialised BERT written here (no
//! download), imported, checked against a plain f64 forward, compressed by a recipe,
//! and the bad inputs (no tokenizer, config not matching the weights, unsupported
//! architecture).

use std::collections::HashMap;
use std::path::Path;

use squeeze::format::hf;
use squeeze::model::Model;
use squeeze::text::TextEncoder;

use crate::util::{Dir, assert_error, squeeze};

const D: usize = 8;
const HEADS: usize = 2;
const FF: usize = 16;
const LAYERS: usize = 2;
const VOCAB: usize = 12;
const MAX_POS: usize = 16;

fn config(model_type: &str, hidden: usize) -> String {
    format!(
        r#"{{"architectures": ["BertModel"], "model_type": "{model_type}", "hidden_size": {hidden}, "num_hidden_layers": {LAYERS},
  "num_attention_heads": {HEADS}, "intermediate_size": {FF}, "vocab_size": {VOCAB}, "max_position_embeddings": {MAX_POS},
  "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0, "hidden_act": "gelu", "position_embedding_type": "absolute"}}"#
    )
}

/// The tensors of a random tiny BERT under their Hugging Face names (plus the pooler
/// and position_ids buffer that the importer skips).
fn random_weights(seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = squeeze::rng::Rng::new(seed);
    let mut t = Vec::new();
    let mut add = |name: &str, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        t.push((name.to_string(), shape, (0..n).map(|_| offset + rng.uniform(scale)).collect::<Vec<f32>>()));
    };
    add("embeddings.word_embeddings.weight", vec![VOCAB, D], 1.0, 0.0);
    add("embeddings.position_embeddings.weight", vec![MAX_POS, D], 0.5, 0.0);
    add("embeddings.token_type_embeddings.weight", vec![2, D], 0.5, 0.0);
    add("embeddings.LayerNorm.weight", vec![D], 0.2, 1.0);
    add("embeddings.LayerNorm.bias", vec![D], 0.2, 0.0);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for proj in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"] {
            add(&format!("{p}.{proj}.weight"), vec![D, D], 0.6, 0.0);
            add(&format!("{p}.{proj}.bias"), vec![D], 0.1, 0.0);
        }
        add(&format!("{p}.attention.output.LayerNorm.weight"), vec![D], 0.2, 1.0);
        add(&format!("{p}.attention.output.LayerNorm.bias"), vec![D], 0.2, 0.0);
        add(&format!("{p}.intermediate.dense.weight"), vec![FF, D], 0.6, 0.0);
        add(&format!("{p}.intermediate.dense.bias"), vec![FF], 0.1, 0.0);
        add(&format!("{p}.output.dense.weight"), vec![D, FF], 0.4, 0.0);
        add(&format!("{p}.output.dense.bias"), vec![D], 0.1, 0.0);
        add(&format!("{p}.output.LayerNorm.weight"), vec![D], 0.2, 1.0);
        add(&format!("{p}.output.LayerNorm.bias"), vec![D], 0.2, 0.0);
    }
    add("pooler.dense.weight", vec![D, D], 0.5, 0.0);
    add("pooler.dense.bias", vec![D], 0.1, 0.0);
    t
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut views: Vec<(String, TensorView)> =
        tensors.iter().zip(&bytes).map(|((n, s, _), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    // The position_ids buffer of HF checkpoints (I64), which is not a weight.
    let ids: Vec<u8> = (0..MAX_POS as i64).flat_map(|i| i.to_le_bytes()).collect();
    views.push(("embeddings.position_ids".into(), TensorView::new(Dtype::I64, vec![1, MAX_POS], &ids).unwrap()));
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A complete tiny sentence-transformers directory.
fn tiny_bert_dir(dir: &Dir) -> std::path::PathBuf {
    let root = dir.path("tiny-bert");
    std::fs::create_dir_all(root.join("1_Pooling")).unwrap();
    std::fs::write(root.join("config.json"), config("bert", D)).unwrap();
    write_safetensors(&root.join("model.safetensors"), &random_weights(17));
    std::fs::write(root.join("tokenizer.json"), squeeze::text::tests_support::tiny_tokenizer_json()).unwrap();
    std::fs::write(root.join("1_Pooling/config.json"), r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}"#).unwrap();
    std::fs::write(root.join("modules.json"), r#"[{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Pooling"}, {"type": "sentence_transformers.models.Normalize"}]"#).unwrap();
    root
}

fn layer_norm(x: &mut [f64], w: &[f32], b: &[f32]) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    for (i, v) in x.iter_mut().enumerate() {
        *v = (*v - mean) / (var + 1e-12).sqrt() * w[i] as f64 + b[i] as f64;
    }
}

fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse for a 1e-5 check: integrate instead
    // (Simpson, 2000 intervals on [0, |x|]).
    let n = 2000;
    let h = x.abs() / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x.abs());
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    (s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()).copysign(x)
}

/// The BERT forward with mean pooling, in f64, on the unpadded token ids.
fn reference_embedding(w: &HashMap<String, Vec<f32>>, ids: &[usize]) -> Vec<f64> {
    let seq = ids.len();
    let lin = |x: &[Vec<f64>], name: &str, out: usize| -> Vec<Vec<f64>> {
        let (wt, b) = (&w[&format!("{name}.weight")], &w[&format!("{name}.bias")]);
        x.iter().map(|row| (0..out).map(|o| b[o] as f64 + row.iter().enumerate().map(|(i, v)| v * wt[o * row.len() + i] as f64).sum::<f64>()).collect()).collect()
    };
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(p, &id)| {
            let mut row: Vec<f64> = (0..D)
                .map(|j| {
                    (w["embeddings.word_embeddings.weight"][id * D + j] + w["embeddings.position_embeddings.weight"][p * D + j] + w["embeddings.token_type_embeddings.weight"][j]) as f64
                })
                .collect();
            layer_norm(&mut row, &w["embeddings.LayerNorm.weight"], &w["embeddings.LayerNorm.bias"]);
            row
        })
        .collect();
    let hd = D / HEADS;
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        let q = lin(&x, &format!("{p}.attention.self.query"), D);
        let k = lin(&x, &format!("{p}.attention.self.key"), D);
        let v = lin(&x, &format!("{p}.attention.self.value"), D);
        let mut ctx = vec![vec![0.0; D]; seq];
        for h in 0..HEADS {
            for i in 0..seq {
                let s: Vec<f64> = (0..seq).map(|j| (0..hd).map(|d| q[i][h * hd + d] * k[j][h * hd + d]).sum::<f64>() / (hd as f64).sqrt()).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    ctx[i][h * hd + d] = (0..seq).map(|j| e[j] / z * v[j][h * hd + d]).sum();
                }
            }
        }
        let a = lin(&ctx, &format!("{p}.attention.output.dense"), D);
        for i in 0..seq {
            let mut r: Vec<f64> = (0..D).map(|j| a[i][j] + x[i][j]).collect();
            layer_norm(&mut r, &w[&format!("{p}.attention.output.LayerNorm.weight")], &w[&format!("{p}.attention.output.LayerNorm.bias")]);
            x[i] = r;
        }
        let up: Vec<Vec<f64>> = lin(&x, &format!("{p}.intermediate.dense"), FF).into_iter().map(|r| r.into_iter().map(|v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()))).collect()).collect();
        let down = lin(&up, &format!("{p}.output.dense"), D);
        for i in 0..seq {
            let mut r: Vec<f64> = (0..D).map(|j| down[i][j] + x[i][j]).collect();
            layer_norm(&mut r, &w[&format!("{p}.output.LayerNorm.weight")], &w[&format!("{p}.output.LayerNorm.bias")]);
            x[i] = r;
        }
    }
    (0..D).map(|j| x.iter().map(|r| r[j]).sum::<f64>() / seq as f64).collect()
}

const SENTENCES: [&str; 4] = ["the cat sat", "the cats sat on the mat.", "cat", "the the the cat sat on the mat the cat sat on"];

#[test]
fn tiny_bert_imports_and_matches_a_plain_forward_with_padding_masked() {
    let dir = Dir::new();
    let root = tiny_bert_dir(&dir);
    let imported = hf::import(&root, Some(10)).unwrap();
    assert_eq!(imported.skipped, vec!["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]);
    assert!(imported.normalize);
    let encoder = TextEncoder::from_json(&imported.tokenizer_json, 10, 0).unwrap();
    let model = Model::from_tensors(imported.graph, imported.tensors).unwrap();
    let plan = squeeze::store::model_plan(&model).unwrap();
    let ids = encoder.encode(&SENTENCES).unwrap();
    let lens = encoder.lengths(&SENTENCES).unwrap();
    // [CLS] the cat ##s sat on the mat . [SEP] is 10; the last sentence is truncated to 10.
    assert_eq!(lens, vec![5, 10, 3, 10]);
    let got = squeeze::pipeline::embedding::embed_ids(&plan, &ids, SENTENCES.len(), 3).unwrap();
    let weights: HashMap<String, Vec<f32>> = random_weights(17).into_iter().map(|(n, _, v)| (n, v)).collect();
    for (s, &len) in lens.iter().enumerate() {
        let tokens: Vec<usize> = ids[s * 10..s * 10 + len].iter().map(|&v| v as usize).collect();
        let want = reference_embedding(&weights, &tokens);
        for j in 0..D {
            let g = got[s * D + j] as f64;
            assert!((g - want[j]).abs() < 1e-4 * (1.0 + want[j].abs()), "sentence {s} dim {j}: {g} vs {}", want[j]);
        }
    }
}

/// The values of a little-endian f32 `.npy` (version 1 header).
fn npy_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn cli_imports_inspects_and_embeds_a_hugging_face_directory() {
    let dir = Dir::new();
    let root = tiny_bert_dir(&dir);
    let root_s = root.to_str().unwrap();
    let o = squeeze(&["inspect", root_s]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("SelfAttention") && o.stdout.contains("pooler.dense.weight") && o.stdout.contains("L2 normalisation"), "{}", o.stdout);
    let m = dir.path("m.sqz");
    let o = squeeze(&["import", root_s, "--seq-len", "10", "--out", m.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = squeeze(&["embed", m.to_str().unwrap(), "--text", "the cat sat"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let values: Vec<f64> = o.stdout.lines().nth(1).unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(values.len(), D);
    assert!((values.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-4, "printed embedding is L2-normalised");
    let sentences = dir.write("s.txt", &SENTENCES.join("\n"));
    let npy = dir.path("e.npy");
    let o = squeeze(&["embed", m.to_str().unwrap(), "--file", sentences.to_str().unwrap(), "--out", npy.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let a = squeeze::data::npy::read_npy(&npy).unwrap();
    assert_eq!(a.shape, vec![SENTENCES.len(), D]);
    let data = npy_f32(&npy);
    assert_eq!(data.len(), SENTENCES.len() * D);
    // The same sentence alone (printed) and in a batch with longer ones agree.
    let norm = data[..D].iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    for j in 0..D {
        assert!((data[j] as f64 / norm - values[j]).abs() < 1e-5);
    }
    // Grouped by length (the default) and padded to the model's length give the same
    // embeddings up to f32 rounding; the sentences here fall in groups of 8 and 10 tokens.
    let full = dir.path("full.npy");
    let o = squeeze(&["embed", m.to_str().unwrap(), "--file", sentences.to_str().unwrap(), "--out", full.to_str().unwrap(), "--full-length"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let diff = npy_f32(&full).iter().zip(&npy_f32(&npy)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "grouped by length vs full length: {diff}");
    // Timing with a profile: one line per kind of step, for batch 1 and batch 32.
    let timed = dir.path("t.npy");
    let o = squeeze(&["embed", m.to_str().unwrap(), "--file", sentences.to_str().unwrap(), "--out", timed.to_str().unwrap(), "--time", "--profile"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("batch 1:") && o.stdout.contains("batch 32:") && o.stdout.contains("by kind of step"), "{}", o.stdout);
    for kind in ["attention projection f32", "attention scores+context", "layer norm", "gelu", "embedding"] {
        assert!(o.stdout.lines().filter(|l| l.trim_start().starts_with(kind)).count() == 2, "{kind} twice:\n{}", o.stdout);
    }
    // Interleaved against a baseline (here itself): one speed-up per batch size, near 1.
    let o = squeeze(&["embed", m.to_str().unwrap(), "--file", sentences.to_str().unwrap(), "--out", timed.to_str().unwrap(), "--time", "--against", m.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let speedups: Vec<f64> = o.stdout.lines().filter_map(|l| l.split("speed-up ").nth(1)).map(|v| v.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(speedups.len(), 2, "{}", o.stdout);
    assert!(speedups.iter().all(|s| (0.5..2.0).contains(s)), "the same model against itself: {speedups:?}");
    let o = squeeze(&["embed", m.to_str().unwrap(), "--file", sentences.to_str().unwrap(), "--out", timed.to_str().unwrap(), "--time", "--against", dir.path("missing.sqz").to_str().unwrap()]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("missing.sqz") && !o.stderr.contains("panicked"), "{}", o.stderr);
    // The image commands on a text model: one error that says what handles text models.
    let pruned = dir.path("pruned.sqz");
    for args in [vec!["eval", m.to_str().unwrap()], vec!["prune", m.to_str().unwrap(), "--sparsity", "0.5", "--out", pruned.to_str().unwrap()]] {
        let o = squeeze(&args);
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains("is a text model") && o.stderr.contains("shape mismatch"), "{}", o.stderr);
    }
    // An input length of 0 tokens is an error, not a panic.
    let o = squeeze(&["embed", m.to_str().unwrap(), "--text", "x", "--seq-len", "0"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("at least 1 token") && !o.stderr.contains("panicked"), "{}", o.stderr);
    // --profile needs --time.
    let o = squeeze(&["embed", m.to_str().unwrap(), "--file", sentences.to_str().unwrap(), "--out", timed.to_str().unwrap(), "--profile"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    // A model without a tokenizer cannot embed text.
    let o = squeeze(&["embed", npy.to_str().unwrap(), "--text", "x"]);
    assert_eq!(o.code, 2);
}

#[test]
fn bad_hugging_face_directories_are_one_clear_error() {
    let dir = Dir::new();
    let root = tiny_bert_dir(&dir);
    let out = dir.path("x.sqz");
    let run = |args: &[&str]| squeeze(args);
    // No tokenizer.
    std::fs::rename(root.join("tokenizer.json"), dir.path("tok.json")).unwrap();
    for cmd in [vec!["inspect", root.to_str().unwrap()], vec!["import", root.to_str().unwrap(), "--out", out.to_str().unwrap()]] {
        assert_error(&run(&cmd), "has no tokenizer.json");
    }
    std::fs::rename(dir.path("tok.json"), root.join("tokenizer.json")).unwrap();
    // A config that does not match the weights.
    std::fs::write(root.join("config.json"), config("bert", 12)).unwrap();
    assert_error(&run(&["inspect", root.to_str().unwrap()]), "does not match config.json");
    // An architecture squeeze does not import.
    std::fs::write(root.join("config.json"), config("gpt2", D)).unwrap();
    assert_error(&run(&["import", root.to_str().unwrap(), "--out", out.to_str().unwrap()]), "unsupported architecture");
    std::fs::write(root.join("config.json"), config("bert", D).replace("\"gelu\"", "\"relu\"")).unwrap();
    assert_error(&run(&["inspect", root.to_str().unwrap()]), "unsupported architecture");
    // Truncated weights.
    std::fs::write(root.join("config.json"), config("bert", D)).unwrap();
    let bytes = std::fs::read(root.join("model.safetensors")).unwrap();
    std::fs::write(root.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert_error(&run(&["inspect", root.to_str().unwrap()]), "model.safetensors");
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn embedding_recipe_gates_on_cosine_and_compresses_every_way() {
    let dir = Dir::new();
    let root = tiny_bert_dir(&dir);
    let heldout = dir.write("heldout.txt", &["the cat sat on the mat.", "cats sat", "the mat", "on the cat", "the cats sat on the mats"].join("\n"));
    let calib = dir.write("calib.txt", &SENTENCES.join("\n"));
    let recipe = |passes: &str, min_mean: f64| {
        let min_each = if min_mean >= 1.0 { 1.0 } else { -1.0 };
        dir.write(
            "r.toml",
            &format!(
                "name = \"tiny\"\n[model]\nhf_dir = \"{}\"\nseq_len = 10\n[data]\ndataset = \"text\"\nheldout = \"{}\"\ncalibration = \"{}\"\n[gate]\nmin_mean_cosine = {min_mean}\nmin_cosine = {min_each}\n{passes}",
                root.display(),
                heldout.display(),
                calib.display()
            ),
        )
    };
    let out = dir.path("out");
    let r = recipe("[[pass]]\ntype = \"prune_rows\"\nsparsity = 0.5\nscore = \"wanda\"\n[[pass]]\ntype = \"quantize\"\nmode = \"weights\"\n", 0.5);
    let (o, report) = crate::util::run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stages = report["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["baseline", "pruned-50-wanda", "int8-weights"]);
    for s in &stages[1..] {
        let (mean, min) = (s["fidelity"]["mean_cosine"].as_f64().unwrap(), s["fidelity"]["min_cosine"].as_f64().unwrap());
        assert!(mean <= 1.0 + 1e-9 && min <= mean + 1e-12 && mean > 0.5, "{s}");
        assert_eq!(s["extra"]["heldout_sentences"], 5);
    }
    assert!(stages[2]["bytes"].as_u64().unwrap() < stages[0]["bytes"].as_u64().unwrap());
    assert!(out.join("model.sqz").exists());
    let o = squeeze(&["embed", out.join("model.sqz").to_str().unwrap(), "--text", "the cat"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // int4 and 2:4 run; an impossible gate fails with exit 1 and a report.
    let out2 = dir.path("out2");
    let r = recipe("[[pass]]\ntype = \"prune_rows\"\nn_of_m = [2, 4]\n[[pass]]\ntype = \"int4\"\ngroup = 8\n", 1.0);
    let (o, report) = crate::util::run_recipe(&r, &out2);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(report["result"], "failed");
    assert!(o.stderr.contains("cosine"), "{}", o.stderr);
    // Mixed precision: the first block at int8 (a pattern), the word embeddings at
    // f32, the rest int4 with activation-weighted scale search.
    let out4 = dir.path("out4");
    let r = recipe(
        "[[pass]]\ntype = \"int4\"\ngroup = 8\nint8 = [\"encoder.layer.0.*\"]\nkeep = [\"embeddings.word_embeddings\"]\ncalibration = 4\n",
        0.5,
    );
    let (o, report) = crate::util::run_recipe(&r, &out4);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stage = &report["stages"][1];
    assert_eq!(stage["extra"]["calibration_sentences"], 4);
    assert_eq!(stage["extra"]["scales"], "search");
    assert!(stage["extra"]["int8_layers"].as_array().unwrap().iter().all(|l| l.as_str().unwrap().starts_with("encoder.layer.0.")), "{stage}");
    let stored = squeeze::format::sqz::read_sqz(&out4.join("model.sqz")).unwrap();
    let kind = |name: &str| stored.tensors.iter().find(|t| t.name == name).map(|t| t.encoding_name()).unwrap();
    assert_eq!(kind("embeddings.word_embeddings.weight"), "f32");
    assert_eq!(kind("encoder.layer.0.intermediate.dense.weight"), "int8/ch");
    assert_eq!(kind("encoder.layer.0.attention.self.query.weight"), "int8/ch");
    assert_eq!(kind("encoder.layer.1.output.dense.weight"), "int4/g8");
    let r = recipe("[[pass]]\ntype = \"int4\"\nint8 = [\"encoder.layer.9.*\"]\n", 0.5);
    assert_error(&crate::util::run_recipe(&r, &dir.path("out5")).0, "encoder.layer.9.*");
    // Recipe mistakes are errors before anything runs.
    let r = recipe("[[pass]]\ntype = \"prune_rows\"\nsparsity = 0.5\nn_of_m = [2, 4]\n", 0.5);
    assert_error(&crate::util::run_recipe(&r, &dir.path("out3")).0, "exactly one of sparsity or n_of_m");
}

/// SmoothQuant on a post-norm BERT: the LayerNorms that also feed a residual are copied
/// for the products, the f32 embeddings stay the same, and with an outlier channel in
/// every LayerNorm, dynamic int8 gets closer to f32 with smoothing than without.
#[test]
fn smoothing_a_post_norm_bert_is_exact_in_f32_and_helps_int8_with_outliers() {
    use squeeze::compress::{quantize, smooth};
    use squeeze::pipeline::embedding::{embed_ids, row_cosines};
    let dir = Dir::new();
    let root = tiny_bert_dir(&dir);
    let imported = hf::import(&root, Some(10)).unwrap();
    let encoder = TextEncoder::from_json(&imported.tokenizer_json, 10, 0).unwrap();
    let mut model = Model::from_tensors(imported.graph, imported.tensors).unwrap();
    let norms: Vec<String> = model.graph.nodes.iter().filter(|n| matches!(n.op, squeeze::spec::Op::LayerNorm { .. })).map(|n| n.name.clone()).collect();
    for n in &norms {
        model.params.get_mut(&format!("{n}.weight")).unwrap()[2] = 25.0;
    }
    let heldout = ["the cat sat on the mat.", "cats sat", "the mat", "on the cat", "the cats sat on the mats", "sat sat cat", "the the mat"];
    let ids = encoder.encode(&heldout).unwrap();
    let cal = encoder.encode(&SENTENCES).unwrap();
    let (smoothed, summary) = smooth::smooth(&model, &cal, 0.5).unwrap();
    // Per block: the attention's input, its context and the FFN input; both norm inputs
    // are copies (the norms also feed the residuals).
    assert_eq!(summary.targets.len(), 3 * LAYERS, "{:?}", summary.targets);
    assert_eq!(smoothed.graph.nodes.len(), model.graph.nodes.len() + 2 * LAYERS);
    for l in 0..LAYERS {
        for consumer in ["attention.self", "intermediate.dense"] {
            let copy = format!("encoder.layer.{l}.{consumer}.smoothed_input");
            assert!(smoothed.graph.node(&copy).is_some(), "{copy}");
            assert_eq!(smoothed.graph.node(&format!("encoder.layer.{l}.{consumer}")).unwrap().inputs[0], copy);
        }
    }
    // The residuals still read the original norms, unchanged.
    assert_eq!(smoothed.params.get("embeddings.LayerNorm.weight"), model.params.get("embeddings.LayerNorm.weight"));
    let n = heldout.len();
    let want = embed_ids(&squeeze::store::model_plan(&model).unwrap(), &ids, n, 4).unwrap();
    let got = embed_ids(&squeeze::store::model_plan(&smoothed).unwrap(), &ids, n, 4).unwrap();
    for (a, b) in want.iter().zip(&got) {
        assert!((a - b).abs() < 1e-5 * (1.0 + a.abs()), "smoothing changed an f32 embedding: {a} vs {b}");
    }
    let worst_cosine = |m: &Model| {
        let q = quantize::quantize(m, &quantize::Precision::int8_all(m, quantize::Mode::Dynamic), &[]).unwrap();
        let e = embed_ids(&squeeze::store::sqz_into_plan(q).unwrap(), &ids, n, 4).unwrap();
        row_cosines(&e, &want, D).into_iter().fold(f64::INFINITY, f64::min)
    };
    let (plain, smooth_min) = (worst_cosine(&model), worst_cosine(&smoothed));
    // This tiny model loses little either way (1 − cosine ≈ 3e-8 plain, 2e-8 smoothed
    // when written); smoothing must lower the error, not raise it.
    assert!(smooth_min > plain, "min cosine of dynamic int8: {plain} plain, {smooth_min} smoothed");
}

/// The quantize pass's `smooth` and `float_activations` keys run from a recipe, are
/// recorded in the report and the file, and their mistakes are clear errors.
#[test]
fn embedding_recipe_smooths_and_keeps_chosen_activations_float() {
    let dir = Dir::new();
    let root = tiny_bert_dir(&dir);
    let heldout = dir.write("heldout.txt", &["the cat sat on the mat.", "cats sat", "the mat", "on the cat", "the cats sat on the mats"].join("\n"));
    let calib = dir.write("calib.txt", &SENTENCES.join("\n"));
    let recipe = |pass: &str, with_calibration: bool| {
        let cal = if with_calibration { format!("calibration = \"{}\"\n", calib.display()) } else { String::new() };
        dir.write(
            "r.toml",
            &format!(
                "name = \"tiny\"\n[model]\nhf_dir = \"{}\"\nseq_len = 10\n[data]\ndataset = \"text\"\nheldout = \"{}\"\n{cal}[gate]\nmin_mean_cosine = 0.5\nmin_cosine = -1\n[[pass]]\ntype = \"quantize\"\n{pass}",
                root.display(),
                heldout.display()
            ),
        )
    };
    let out = dir.path("out");
    let r = recipe("mode = \"dynamic\"\nsmooth = 0.5\nfloat_activations = [\"encoder.layer.*.output.dense\"]\n", true);
    let (o, report) = crate::util::run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stage = &report["stages"][1];
    assert_eq!(stage["extra"]["smooth_alpha"], 0.5);
    assert_eq!(stage["extra"]["smoothed_inputs"].as_object().unwrap().len(), 3 * LAYERS, "{stage}");
    let off: Vec<&str> = stage["extra"]["float_activation_layers"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(off, vec!["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]);
    let stored = squeeze::format::sqz::read_sqz(&out.join("model.sqz")).unwrap();
    assert!(stored.graph.node("encoder.layer.1.intermediate.dense.smoothed_input").is_some());
    assert!(stored.quant.dynamic.contains("encoder.layer.1.intermediate.dense") && !stored.quant.dynamic.contains("encoder.layer.1.output.dense"));
    assert!(stored.tensors.iter().any(|t| t.name == "encoder.layer.1.output.dense.weight" && t.encoding_name() == "int8/ch"));
    // Full int8 smooths too.
    let (o, _) = crate::util::run_recipe(&recipe("mode = \"full\"\nsmooth = 0.75\n", true), &dir.path("out-full"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Mistakes: a pattern matching no integer layer, smoothing without calibration sentences.
    assert_error(&crate::util::run_recipe(&recipe("mode = \"dynamic\"\nfloat_activations = [\"encoder.layer.9.*\"]\n", true), &dir.path("o2")).0, "encoder.layer.9.*");
    assert_error(&crate::util::run_recipe(&recipe("mode = \"dynamic\"\nsmooth = 0.5\n", false), &dir.path("o3")).0, "calibration");
    assert_error(&crate::util::run_recipe(&recipe("mode = \"dynamic\"\nsmooth = 1.5\n", true), &dir.path("o4")).0, "[0, 1]");
}
