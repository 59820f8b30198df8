//! The embedding pipeline: a Hugging Face BERT sentence embedder (`[model] hf_dir`)
//! imported, compressed by the recipe's passes and gated by fidelity: the cosine
//! similarity between each stage's embeddings and the fp32 baseline's on held-out
//! sentences (mean and minimum). Every stage is written, read back and run from the
//! file, like the classifier pipeline; its bytes are also compared with the source
//! directory's `model.safetensors`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::compress::{prune, quantize, smooth, trim};
use crate::format::hf::{self, HfError};
use crate::format::sqz::SqzModel;
use crate::model::Model;
use crate::recipe::{Pass, Recipe};
use crate::report::measure::{Spread, median_and_spread, peak_rss_bytes};
use crate::report::{Gate, Report, Stage};
use crate::runtime::exec::{Plan, RuntimeError, Workspace};
use crate::runtime::transformer::ValidLengths;
use crate::spec::Op;
use crate::store::{self, ModelFile};
use crate::text::{self, TextEncoder, TextError};

use super::{Event, PipelineError, RunOptions, file_counts_with, guard_input, new_report, write_report, gate_failed};

/// Why text or an embedder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error("cannot read sentences from '{path}': {why}")]
    Sentences { path: PathBuf, why: String },
    #[error("the model does not start with a token Embedding: it does not take text")]
    NotText,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("a text model needs an input length of at least 1 token, got 0")]
    ZeroLength,
}

/// The token-embedding node's pad token and the input length of a graph that takes text.
pub fn text_input(graph: &crate::spec::Graph) -> Result<(usize, u32), EmbeddingError> {
    let pad = graph.nodes.iter().find_map(|n| match n.op {
        Op::Embedding { pad_token, .. } if n.inputs[0] == crate::spec::INPUT => Some(pad_token.unwrap_or(0) as u32),
        _ => None,
    });
    match (pad, graph.input_shape.as_slice()) {
        (Some(pad), &[seq]) => Ok((seq, pad)),
        _ => Err(EmbeddingError::NotText),
    }
}

/// The tokenizer stored in a model file, producing rows of the model's input length.
pub fn encoder_for(file: &ModelFile) -> Result<TextEncoder, EmbeddingError> {
    let (seq, pad) = text_input(file.graph())?;
    let metadata = match file {
        ModelFile::Sqz(s) => &s.metadata,
        ModelFile::Dense(d) => &d.metadata,
        ModelFile::Onnx(_) => return Err(TextError::NoTokenizer.into()),
    };
    let packed = metadata.get(text::TOKENIZER_KEY).ok_or(TextError::NoTokenizer)?;
    Ok(TextEncoder::from_json(&text::unpack_tokenizer(packed)?, seq, pad)?)
}

/// Sets the model's input length (token Embedding graphs only; the weights do not
/// depend on it, up to the position table's length, which validation checks).
pub fn set_seq_len(file: &mut ModelFile, seq: usize) -> Result<(), EmbeddingError> {
    text_input(file.graph())?;
    if seq == 0 {
        return Err(EmbeddingError::ZeroLength);
    }
    match file {
        ModelFile::Sqz(s) => s.graph.input_shape = vec![seq],
        ModelFile::Dense(d) => d.graph.input_shape = vec![seq],
        ModelFile::Onnx(o) => o.graph.input_shape = vec![seq],
    }
    Ok(())
}

/// Reads non-empty lines of `path`, at most `limit`.
pub fn read_sentences(path: &Path, limit: Option<usize>) -> Result<Vec<String>, EmbeddingError> {
    let text = std::fs::read_to_string(path).map_err(|e| EmbeddingError::Sentences { path: path.into(), why: e.to_string() })?;
    let mut s: Vec<String> = text::sentences(&text).into_iter().map(String::from).collect();
    if let Some(n) = limit {
        s.truncate(n);
    }
    if s.is_empty() {
        return Err(EmbeddingError::Sentences { path: path.into(), why: "no sentences (one per line expected)".into() });
    }
    Ok(s)
}

/// Embeddings (`n × dim`, row per sample) of `n` id rows, in batches of `batch`.
pub fn embed_ids(plan: &Plan, ids: &[f32], n: usize, batch: usize) -> Result<Vec<f32>, RuntimeError> {
    let per = ids.len() / n.max(1);
    let mut ws = Workspace::default();
    let mut out = Vec::new();
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        out.extend_from_slice(plan.run(&ids[start * per..end * per], end - start, &mut ws)?);
    }
    Ok(out)
}

/// The input lengths [`embed_sentences`] pads a group of sentences to: powers of two
/// from 8 below the model's input length `max`, then `max`.
pub fn bucket_lengths(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (3..usize::BITS).map(|p| 1usize << p).take_while(|&b| b < max).collect();
    v.push(max);
    v
}

/// Embeddings (`n × dim`, in their order) of `n` sentences given as token ids padded to
/// the model's input length (`ids [n, len]`, as [`encoder_for`] encodes them), in batches
/// of `batch`.
///
/// Instead of padding every sentence to the model's input length, sentences are grouped
/// by their token count and each group runs at the shortest of [`bucket_lengths`] that
/// holds it (as sentence-transformers pads per batch), on a plan built for that length
/// and dropped before the next. Padding never reaches a real token (attention reads the
/// valid keys only, pooling the valid rows, every other step works row by row), so the
/// embeddings are those of the full-length run, at a fraction of its work on short text,
/// up to f32 rounding: the attention scores are a product over a different number of
/// query rows, and on an int8 model such a difference can move a value across a
/// quantization step. Sentences longer than the model's input length are truncated.
pub fn embed_sentences(file: &mut ModelFile, ids: &[f32], n: usize, batch: usize) -> Result<Vec<f32>, EmbeddingError> {
    let (max, pad) = text_input(file.graph())?;
    // Each sentence's length as the runtime counts it (its trailing pad ids dropped).
    let mut lens = ValidLengths::default();
    lens.from_ids(ids, n, max, pad as usize);
    let valid: Vec<usize> = (0..n).map(|i| lens.of(i, max)).collect();
    let mut out = Vec::new();
    let mut dim = 0;
    let mut start = 0;
    for b in bucket_lengths(max) {
        let members: Vec<usize> = (0..n).filter(|&i| valid[i] > start && valid[i] <= b).collect();
        start = b;
        if members.is_empty() {
            continue;
        }
        set_seq_len(file, b)?;
        let plan = file.plan();
        set_seq_len(file, max)?;
        let plan = plan?;
        let bucket_ids: Vec<f32> = members.iter().flat_map(|&i| ids[i * max..i * max + b].iter().copied()).collect();
        let e = embed_ids(&plan, &bucket_ids, members.len(), batch)?;
        if out.is_empty() {
            dim = e.len() / members.len();
            out = vec![0f32; n * dim];
        }
        for (k, &i) in members.iter().enumerate() {
            out[i * dim..(i + 1) * dim].copy_from_slice(&e[k * dim..(k + 1) * dim]);
        }
    }
    Ok(out)
}

/// Cosine similarity of each row of `a` with the same row of `b` (f64 sums).
pub fn row_cosines(a: &[f32], b: &[f32], dim: usize) -> Vec<f64> {
    a.chunks(dim)
        .zip(b.chunks(dim))
        .map(|(x, y)| {
            let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
            for (&p, &q) in x.iter().zip(y) {
                xy += f64::from(p) * f64::from(q);
                xx += f64::from(p) * f64::from(p);
                yy += f64::from(q) * f64::from(q);
            }
            if xx == 0.0 || yy == 0.0 { 0.0 } else { xy / (xx.sqrt() * yy.sqrt()) }
        })
        .collect()
}

/// Median seconds per call of `batch` rows, over `reps` calls on the first rows of `ids`
/// (cycling through them), with the spread (half the inter-quartile range).
pub fn time_batches(plan: &Plan, ids: &[f32], n: usize, batch: usize, reps: usize) -> Result<(f64, f64), RuntimeError> {
    let per = ids.len() / n.max(1);
    let batch = batch.min(n).max(1);
    let mut ws = Workspace::default();
    plan.run(&ids[..batch * per], batch, &mut ws)?;
    let mut samples = Vec::with_capacity(reps);
    for r in 0..reps {
        let start = (r * batch) % (n - batch + 1);
        let t = Instant::now();
        plan.run(&ids[start * per..(start + batch) * per], batch, &mut ws)?;
        samples.push(t.elapsed().as_secs_f64());
    }
    let s = median_and_spread(&mut samples);
    Ok((s.median, s.spread))
}

/// The interleaved timing of two plans on the same batches: [`time_interleaved`].
pub struct PairTiming {
    /// Seconds per call of the first plan (median and spread).
    pub first: Spread,
    /// Seconds per call of the second plan.
    pub second: Spread,
    /// The second plan's speed-up over the first (first's time over second's), per pair
    /// of adjacent calls.
    pub speedup: Spread,
}

/// Times `plans[0]` and `plans[1]` on the same `batch`-row inputs, alternating call by
/// call (in ABBA order, so neither always runs first), `reps` calls each. This
/// machine's speed drifts by tens of percent over minutes; adjacent calls see the same
/// speed, so the per-pair ratio is the figure to compare, not the two medians.
pub fn time_interleaved(plans: [&Plan; 2], ids: &[f32], n: usize, batch: usize, reps: usize) -> Result<PairTiming, RuntimeError> {
    let per = ids.len() / n.max(1);
    let batch = batch.min(n).max(1);
    let mut ws = [Workspace::default(), Workspace::default()];
    for (plan, ws) in plans.iter().zip(&mut ws) {
        plan.run(&ids[..batch * per], batch, ws)?;
    }
    let (mut first, mut second, mut speedup) = (Vec::with_capacity(reps), Vec::with_capacity(reps), Vec::with_capacity(reps));
    for r in 0..reps {
        let start = (r * batch) % (n - batch + 1);
        let x = &ids[start * per..(start + batch) * per];
        let mut secs = [0.0; 2];
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let t = Instant::now();
            plans[i].run(x, batch, &mut ws[i])?;
            secs[i] = t.elapsed().as_secs_f64();
        }
        first.push(secs[0]);
        second.push(secs[1]);
        speedup.push(secs[0] / secs[1]);
    }
    Ok(PairTiming { first: median_and_spread(&mut first), second: median_and_spread(&mut second), speedup: median_and_spread(&mut speedup) })
}

/// Where the time of a `batch`-row run goes, over `reps` runs (as [`time_batches`]):
/// per kind of step, seconds per run, slowest first, and the whole run's seconds.
pub fn profile_batches(plan: &Plan, ids: &[f32], n: usize, batch: usize, reps: usize) -> Result<(Vec<(&'static str, f64)>, f64), RuntimeError> {
    let per = ids.len() / n.max(1);
    let batch = batch.min(n).max(1);
    let mut ws = Workspace::default();
    plan.run(&ids[..batch * per], batch, &mut ws)?;
    ws.start_profile();
    let t = Instant::now();
    for r in 0..reps {
        let start = (r * batch) % (n - batch + 1);
        plan.run(&ids[start * per..(start + batch) * per], batch, &mut ws)?;
    }
    let whole = t.elapsed().as_secs_f64() / reps.max(1) as f64;
    let rows = ws.take_profile().into_iter().map(|(kind, _, secs)| (kind, secs / reps.max(1) as f64)).collect();
    Ok((rows, whole))
}

/// The figures of one stored stage.
struct Measured {
    stage: Stage,
    embeddings: Vec<f32>,
}

/// Writes `sqz` (with the tokenizer) to `path`, reads it back and measures it.
#[allow(clippy::too_many_arguments)]
fn store_and_measure(
    path: &Path,
    name: &str,
    mut sqz: SqzModel,
    entropy_coding: bool,
    packed_tokenizer: &str,
    ids: &[f32],
    n: usize,
    reference: Option<&[f32]>,
    fp32_bytes: f64,
    hf_bytes: u64,
    wall: Instant,
    mut extra: serde_json::Map<String, serde_json::Value>,
) -> Result<Measured, PipelineError> {
    sqz.metadata.insert(text::TOKENIZER_KEY.into(), packed_tokenizer.into());
    // Memory: the stage is written tensor by tensor (dropped as it goes), read back
    // section by section, and its tensors move into the plan, so the weights are held
    // about once at any time (scope 5 of the MiniLM issue).
    let bytes = store::write_sqz_streaming(path, sqz, entropy_coding)?;
    let (stored, sections) = crate::format::sqz::read_sqz_summarized(path).map_err(|source| store::StoreError::Sqz { path: path.into(), source })?;
    let file = ModelFile::Sqz(stored);
    let (params, nonzero, bits) = file_counts_with(&file, path, Some(&sections))?;
    let dim = plan_output_dim(&file);
    let plan = file.into_plan()?;
    let embeddings = embed_ids(&plan, ids, n, 32)?;
    let (b1, b1_spread) = time_batches(&plan, ids, n, 1, 30)?;
    let (b32, _) = time_batches(&plan, ids, n, 32, 5)?;
    if let Some(reference) = reference {
        let cos = row_cosines(&embeddings, reference, dim);
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        let (worst, min) = cos.iter().enumerate().fold((0, f64::INFINITY), |(wi, wm), (i, &c)| if c < wm { (i, c) } else { (wi, wm) });
        extra.insert("mean_cosine".into(), mean.into());
        extra.insert("min_cosine".into(), min.into());
        extra.insert("min_cosine_sentence".into(), (worst + 1).into());
    }
    extra.insert("heldout_sentences".into(), n.into());
    extra.insert("seq_len".into(), (ids.len() / n).into());
    extra.insert("hf_safetensors_bytes".into(), hf_bytes.into());
    extra.insert("fraction_of_hf_safetensors".into(), (bytes as f64 / hf_bytes as f64).into());
    extra.insert("latency_ms_b32".into(), (b32 * 1e3).into());
    extra.insert("sentences_per_s_b32".into(), (32.0_f64.min(n as f64) / b32).into());
    extra.insert("fp32_weight_bytes".into(), fp32_bytes.into());
    let stage = Stage {
        name: name.into(),
        accuracy: f64::NAN,
        validation_accuracy: f64::NAN,
        bytes,
        ratio: fp32_bytes / bytes as f64,
        params,
        nonzero_params: nonzero,
        bits_per_weight: bits,
        latency_us_b1: b1 * 1e6,
        latency_us_b1_spread: b1_spread * 1e6,
        throughput_b256: f64::NAN,
        kernel: plan.kernel_description(),
        wall_s: wall.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        extra: extra.into_iter().collect(),
        distillation: None,
    };
    Ok(Measured { stage, embeddings })
}

fn plan_output_dim(file: &ModelFile) -> usize {
    let g = file.graph();
    g.validate().ok().and_then(|s| s.get(&g.outputs[0]).map(|v| v.iter().product())).unwrap_or(1)
}

/// Runs an embedding recipe (see the module docs).
pub fn run(recipe: &Recipe, opts: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<Report, PipelineError> {
    let dir = recipe.model.hf_dir.as_ref().expect("Recipe::parse: embedding recipes have hf_dir");
    if let Some(i) = recipe.passes.iter().position(|p| matches!(p, Pass::Quantize { .. } | Pass::Int4 { .. }))
        && i + 1 != recipe.passes.len()
    {
        return Err(PipelineError::QuantizeNotLast);
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| PipelineError::Write { path: opts.out_dir.clone(), source })?;
    let (min_mean, min_each) = (recipe.gate.min_mean_cosine.unwrap_or(1.0), recipe.gate.min_cosine.unwrap_or(1.0));
    let mut report = new_report(recipe, opts, "cosine", "baseline");
    report.gate = Gate {
        metric: format!("cosine to the fp32 embeddings (mean ≥ {min_mean}, min ≥ {min_each})"),
        max_drop: 1.0 - min_mean,
        against: "baseline".into(),
        split: "heldout".into(),
        measured_on: String::new(),
    };

    on_event(Event::Stage("baseline".into()));
    let t = Instant::now();
    let imported = hf::import(dir, recipe.model.seq_len).map_err(EmbeddingError::from)?;
    let hf_bytes = std::fs::metadata(dir.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
    let seq = imported.graph.input_shape[0];
    let encoder = TextEncoder::from_json(&imported.tokenizer_json, seq, imported.pad_token as u32).map_err(EmbeddingError::from)?;
    let packed = text::pack_tokenizer(&imported.tokenizer_json);
    let mut extra = serde_json::Map::new();
    extra.insert("source".into(), dir.display().to_string().into());
    extra.insert("skipped_tensors".into(), imported.skipped.clone().into());
    extra.insert("l2_normalised_by_users".into(), imported.normalize.into());
    let model = Model::from_tensors(imported.graph, imported.tensors)?;
    let heldout_path = recipe.data.heldout.as_ref().expect("Recipe::parse: embedding recipes have heldout");
    let heldout = read_sentences(heldout_path, recipe.data.heldout_limit).map_err(EmbeddingError::from)?;
    let refs: Vec<&str> = heldout.iter().map(String::as_str).collect();
    let ids = encoder.encode(&refs).map_err(EmbeddingError::from)?;
    let lengths = encoder.lengths(&refs).map_err(EmbeddingError::from)?;
    extra.insert("truncated_sentences".into(), lengths.iter().filter(|&&l| l >= seq).count().into());
    let n = heldout.len();
    let params = model.graph.num_params() as u64;
    let fp32_bytes = 4.0 * params as f64;
    let last = recipe.passes.len();
    let path_for = |name: &str, is_last: bool| -> PathBuf { opts.out_dir.join(if is_last { "model.sqz".to_string() } else { format!("{name}.sqz") }) };

    let baseline_path = path_for("baseline", last == 0);
    guard_input(recipe, &baseline_path)?;
    // The float model moves into the baseline file; each pass reads its input back
    // from the previous stage's file, so no stage is measured while another copy of
    // the weights is held.
    let base = store_and_measure(&baseline_path, "baseline", quantize::into_stored_f32(model), false, &packed, &ids, n, None, fp32_bytes, hf_bytes, t, extra)?;
    let mut previous = baseline_path;
    on_event(Event::Measured(base.stage.clone()));
    report.stages.push(base.stage);
    let reference = base.embeddings;

    let calibration = match &recipe.data.calibration {
        Some(p) => {
            let s = read_sentences(p, recipe.data.calibration_limit).map_err(EmbeddingError::from)?;
            let r: Vec<&str> = s.iter().map(String::as_str).collect();
            Some((encoder.encode(&r).map_err(EmbeddingError::from)?, encoder.lengths(&r).map_err(EmbeddingError::from)?))
        }
        None => None,
    };

    for (i, pass) in recipe.passes.iter().enumerate() {
        // A pass repeated (e.g. trimming heads in two steps) gets a numbered stage name.
        let mut name = pass.stage_name();
        let repeats = report.stages.iter().filter(|s| s.name == name || s.name.starts_with(&format!("{name}-step"))).count();
        if repeats > 0 {
            name = format!("{name}-step{}", repeats + 1);
        }
        on_event(Event::Stage(name.clone()));
        let t = Instant::now();
        let mut extra = serde_json::Map::new();
        let is_last = i + 1 == last;
        let mut model = store::read_model(&previous)?;
        let (stored, entropy) = match pass {
            Pass::PruneRows { sparsity, n_of_m, score, layers, calibration: cal_n } => {
                let norms = match score {
                    prune::Score::Wanda => {
                        let Some((cal_ids, cal_lens)) = &calibration else {
                            return Err(PipelineError::Prune(prune::PruneError::Calibration("Wanda needs calibration sentences: set [data] calibration".into())));
                        };
                        let k = (*cal_n).min(cal_lens.len()).max(1);
                        extra.insert("calibration_sentences".into(), k.into());
                        prune::input_norms(&model, &cal_ids[..k * seq], k, Some(&cal_lens[..k]))?
                    }
                    prune::Score::Magnitude => Default::default(),
                };
                let pattern = match (sparsity, n_of_m) {
                    (_, Some([n, m])) => prune::Pattern::NofM { n: *n, m: *m },
                    (s, None) => prune::Pattern::Rows { sparsity: s.unwrap_or(0.0) },
                };
                let summary = prune::prune_scored(&mut model, pattern, *score, &norms, layers)?;
                let (total, kept) = summary.layers.iter().fold((0, 0), |(t, k), l| (t + l.1, k + l.2));
                extra.insert("pruned_weights".into(), (total - kept).into());
                extra.insert("sparsity_of_pruned_layers".into(), ((total - kept) as f64 / total.max(1) as f64).into());
                (quantize::into_stored_f32(model), false)
            }
            Pass::Trim { ratio, score, heads, head_score, layers, per_layer, fine_tune_epochs, calibration: cal_n, group_lasso, .. } => {
                // An embedder has no training labels here: trimming is one-shot.
                if *fine_tune_epochs > 0 || *group_lasso > 0.0 {
                    return Err(PipelineError::EmbeddingOnly(
                        "pass 'trim' on hf_dir models is one-shot (no fine-tuning data for an embedder): set fine_tune_epochs = 0 and leave group_lasso unset".into(),
                    ));
                }
                let cfg = trim::TrimConfig { ratio: *ratio, score: *score, layers: layers.clone(), per_layer: per_layer.clone(), heads: *heads, head_score: *head_score };
                let calib: &[f32] = match &calibration {
                    Some((cal_ids, cal_lens)) => {
                        let k = (*cal_n).min(cal_lens.len()).max(1);
                        extra.insert("calibration_sentences".into(), k.into());
                        &cal_ids[..k * seq]
                    }
                    None => &[],
                };
                let (trimmed, summary) = trim::trim(&model, &cfg, calib)?;
                drop(model);
                let units: Vec<serde_json::Value> = summary.layers.iter().map(|(n, b, a)| serde_json::json!({ "layer": n, "units_before": b, "units_after": a })).collect();
                let heads_json: Vec<serde_json::Value> = summary.heads.iter().map(|(n, b, a)| serde_json::json!({ "layer": n, "heads_before": b, "heads_after": a })).collect();
                extra.insert("layers".into(), units.into());
                extra.insert("heads".into(), heads_json.into());
                extra.insert("head_score".into(), serde_json::to_value(head_score).unwrap_or_default());
                extra.insert("params_before".into(), summary.params_before.into());
                extra.insert("params_after".into(), summary.params_after.into());
                (quantize::into_stored_f32(trimmed), false)
            }
            Pass::Int4 { group, layers, keep, int8, layer_groups, scales, calibration: cal_n } => {
                let chosen = chosen_layers(&model, layers, keep)?;
                let as_int8 = matching_layers(&model, int8)?;
                let (as_int8, int4): (Vec<String>, Vec<String>) = chosen.into_iter().partition(|l| as_int8.contains(l));
                let importance = if *cal_n > 0 {
                    let Some((cal_ids, cal_lens)) = &calibration else {
                        return Err(PipelineError::Prune(prune::PruneError::Calibration("int4 calibration needs sentences: set [data] calibration".into())));
                    };
                    let k = (*cal_n).min(cal_lens.len()).max(1);
                    extra.insert("calibration_sentences".into(), k.into());
                    int4_importance(&model, &prune::input_norms(&model, &cal_ids[..k * seq], k, Some(&cal_lens[..k]))?)
                } else {
                    Default::default()
                };
                extra.insert("group".into(), (*group).into());
                extra.insert("scales".into(), format!("{scales:?}").to_lowercase().into());
                extra.insert("int4_layers".into(), int4.len().into());
                extra.insert("int8_layers".into(), as_int8.clone().into());
                let mut node_groups = std::collections::HashMap::new();
                for (pattern, g) in layer_groups {
                    for node in matching_layers(&model, std::slice::from_ref(pattern))? {
                        node_groups.insert(node, *g);
                    }
                }
                if !node_groups.is_empty() {
                    extra.insert("layer_groups".into(), serde_json::to_value(&node_groups).unwrap_or_default());
                }
                let plan = quantize::Int4Plan { int4, int8: as_int8, group: *group, node_groups, scales: *scales, importance };
                let stored = quantize::quantize_mixed(&model, &plan);
                drop(model);
                (stored, false)
            }
            Pass::Quantize { mode, layers, calibration: cal_n, small_tensors, smooth, float_activations, nonlinear, nonlinear_ops } => {
                // Full int8 takes its activation scales from the calibration sentences
                // (ranges over every position, padding included, as the runtime sees
                // them), and smoothing its per-channel maxima.
                let cal: &[f32] = match (*mode == quantize::Mode::Full || smooth.is_some(), &calibration) {
                    (true, Some((cal_ids, cal_lens))) => {
                        let k = (*cal_n).min(cal_lens.len()).max(1);
                        extra.insert("calibration_sentences".into(), k.into());
                        &cal_ids[..k * seq]
                    }
                    (true, None) if smooth.is_some() => return Err(PipelineError::Smooth(smooth::SmoothError::NoCalibration)),
                    (true, None) => return Err(PipelineError::Quantize(quantize::QuantizeError::NoCalibration)),
                    (false, _) => &[],
                };
                if let Some(alpha) = smooth {
                    let (smoothed, summary) = smooth::smooth(&model, cal, *alpha)?;
                    extra.insert("smooth_alpha".into(), f64::from(*alpha).into());
                    extra.insert("smoothed_inputs".into(), smooth::summary_json(&summary));
                    model = smoothed;
                }
                let mut stored = quantize::quantize_with_nonlinear(&model, *mode, layers, cal, *small_tensors, *nonlinear, nonlinear_ops)?;
                if !stored.quant.integer_nonlinear.is_empty() {
                    extra.insert("integer_nonlinear".into(), stored.quant.integer_nonlinear.iter().map(|k| k.name()).collect::<Vec<_>>().into());
                }
                drop(model);
                if !float_activations.is_empty() {
                    let off = quantize::keep_float_activations(&mut stored, float_activations)?;
                    extra.insert("float_activation_layers".into(), off.into());
                }
                (stored, false)
            }
            Pass::Code {} => (quantize::into_stored_f32(model), true),
            other => return Err(PipelineError::EmbeddingOnly(format!("pass '{}' does not run on hf_dir models", other.stage_name()))),
        };
        let path = path_for(&name, is_last);
        guard_input(recipe, &path)?;
        let m = store_and_measure(&path, &name, stored, entropy, &packed, &ids, n, Some(&reference), fp32_bytes, hf_bytes, t, extra)?;
        on_event(Event::Measured(m.stage.clone()));
        let mean = m.stage.extra.get("mean_cosine").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let min = m.stage.extra.get("min_cosine").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        report.stages.push(m.stage);
        previous = path;
        if !(mean >= min_mean && min >= min_each) {
            let reason = format!("cosine to the fp32 embeddings on {n} held-out sentences: mean {mean:.6} (gate ≥ {min_mean}), min {min:.6} (gate ≥ {min_each})");
            return Err(gate_failed(&mut report, &opts.out_dir, name, reason));
        }
    }
    write_report(&report, &opts.out_dir)?;
    Ok(report)
}

/// Nodes to quantize: `layers` (all weighted nodes when empty) minus `keep`; each
/// entry is a node name or a prefix ending in `*` (see [`quantize::layer_matches`]).
fn chosen_layers(model: &Model, layers: &[String], keep: &[String]) -> Result<Vec<String>, quantize::QuantizeError> {
    let kept = matching_layers(model, keep)?;
    let mut out = if layers.is_empty() { weighted_nodes(model) } else { matching_layers(model, layers)? };
    out.retain(|l| !kept.contains(l));
    Ok(out)
}

/// The weighted nodes of `model`, in parameter order, once each.
fn weighted_nodes(model: &Model) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in model.params.specs.iter().filter(|s| s.kind == crate::spec::ParamKind::Weight) {
        if !out.contains(&s.node) {
            out.push(s.node.clone());
        }
    }
    out
}

/// The weighted nodes matched by any of `patterns`; a pattern matching none is an error.
fn matching_layers(model: &Model, patterns: &[String]) -> Result<Vec<String>, quantize::QuantizeError> {
    let weighted = weighted_nodes(model);
    if let Some(p) = patterns.iter().find(|p| !weighted.iter().any(|w| quantize::layer_matches(p, w))) {
        return Err(quantize::QuantizeError::UnknownLayer(p.clone()));
    }
    Ok(weighted.into_iter().filter(|w| patterns.iter().any(|p| quantize::layer_matches(p, w))).collect())
}

/// Per weight tensor, the importance of each input column for int4 rounding: the
/// squared calibration norm of the value it reads ([`prune::input_norms`]).
pub fn int4_importance(model: &Model, norms: &std::collections::HashMap<String, Vec<f32>>) -> std::collections::HashMap<String, Vec<f32>> {
    prune::row_prunable(model)
        .into_iter()
        .filter_map(|(_, tensor, value)| {
            let n = norms.get(&value?)?;
            // A column never seen in calibration still counts a little.
            let floor = n.iter().fold(0.0f32, |m, v| m.max(v * v)) * 1e-4;
            Some((tensor, n.iter().map(|v| (v * v).max(floor)).collect()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_lengths_double_from_8_and_end_at_the_model_length() {
        assert_eq!(bucket_lengths(64), vec![8, 16, 32, 64]);
        assert_eq!(bucket_lengths(10), vec![8, 10]);
        assert_eq!(bucket_lengths(8), vec![8]);
        assert_eq!(bucket_lengths(5), vec![5]);
        assert_eq!(bucket_lengths(100), vec![8, 16, 32, 64, 100]);
    }
}
