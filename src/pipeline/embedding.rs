//! The embedding pipeline: a Hugging Face BERT sentence embedder (`[model] hf_dir`)
//! imported, compressed by the recipe's passes and gated by fidelity: the cosine
//! similarity between each stage's embeddings and the fp32 baseline's on held-out
//! sentences (mean and minimum). Every stage is written, read back and run from the
//! file, like the classifier pipeline; its bytes are also compared with the source
//! directory's `model.safetensors`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::compress::pass::{Calibration, Context, ModelKind};
use crate::format::hf::{self, HfError};
use crate::format::sqz::SqzModel;
use crate::model::Model;
use crate::recipe::Recipe;
use crate::report::measure::{Spread, median_and_spread, peak_rss_bytes};
use crate::report::{Fidelity, Gate, Stage};
use crate::train::TrainEvent;
use crate::runtime::exec::{Plan, RuntimeError, Workspace};
use crate::runtime::transformer::ValidLengths;
use crate::spec::Op;
use crate::store::{self, ModelFile};
use crate::text::{self, TextEncoder, TextError};

use super::{Baseline, Evaluation, Event, PipelineError, RunOptions, file_counts_with, guard_input, stage_path};

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
    coding: store::Coding,
    packed_tokenizer: &str,
    ids: &[f32],
    n: usize,
    reference: Option<&[f32]>,
    fp32_bytes: f64,
    hf_bytes: u64,
    wall_s: f64,
    mut extra: serde_json::Map<String, serde_json::Value>,
) -> Result<Measured, PipelineError> {
    sqz.metadata.insert(text::TOKENIZER_KEY.into(), packed_tokenizer.into());
    // Memory: the stage is written tensor by tensor (dropped as it goes), read back
    // section by section, and its tensors move into the plan, so the weights are held
    // about once at any time (scope 5 of the MiniLM issue).
    let bytes = store::write_sqz(path, sqz, coding)?;
    let (stored, sections) = crate::format::sqz::read_sqz_summarized(path).map_err(|source| store::StoreError::Sqz { path: path.into(), source })?;
    let file = ModelFile::Sqz(stored);
    let (params, nonzero, bits) = file_counts_with(&file, path, Some(&sections))?;
    let dim = plan_output_dim(&file);
    let plan = file.into_plan()?;
    let embeddings = embed_ids(&plan, ids, n, 32)?;
    let (b1, b1_spread) = time_batches(&plan, ids, n, 1, 30)?;
    let (b32, _) = time_batches(&plan, ids, n, 32, 5)?;
    let fidelity = reference.map(|reference| {
        let cos = row_cosines(&embeddings, reference, dim);
        let mean_cosine = cos.iter().sum::<f64>() / cos.len() as f64;
        let (worst, min_cosine) = cos.iter().enumerate().fold((0, f64::INFINITY), |(wi, wm), (i, &c)| if c < wm { (i, c) } else { (wi, wm) });
        Fidelity { mean_cosine, min_cosine, min_cosine_sentence: worst + 1 }
    });
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
        wall_s,
        peak_rss_bytes: peak_rss_bytes(),
        file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        extra: extra.into_iter().collect(),
        distillation: None,
        fidelity,
        tasks: None,
    };
    Ok(Measured { stage, embeddings })
}

fn plan_output_dim(file: &ModelFile) -> usize {
    let g = file.graph();
    g.validate().ok().and_then(|s| s.get(&g.outputs[0]).map(|v| v.iter().product())).unwrap_or(1)
}

/// An embedder's held-out sentences (as token ids), calibration sentences, reference
/// embeddings and gate.
pub(super) struct Embedder {
    packed_tokenizer: String,
    ids: Vec<f32>,
    n: usize,
    calibration: Option<(Vec<f32>, Vec<usize>)>,
    reference: Vec<f32>,
    fp32_bytes: f64,
    hf_bytes: u64,
    min_mean: f64,
    min_each: f64,
}

/// Imports the Hugging Face directory, tokenizes the held-out and calibration
/// sentences, writes the fp32 baseline and embeds the held-out sentences with it (the
/// reference every stage is compared with).
pub(super) fn baseline(recipe: &Recipe, opts: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<(Box<dyn Evaluation>, Baseline), PipelineError> {
    let Some(dir) = recipe.model.hf_dir.as_ref() else {
        return Err(PipelineError::Preprocess("an embedding recipe needs [model] hf_dir".into()));
    };
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| PipelineError::Write { path: opts.out_dir.clone(), source })?;
    on_event(Event::Stage("baseline".into()));
    let t = Instant::now();
    let imported = hf::import(dir, recipe.model.seq_len).map_err(EmbeddingError::from)?;
    let hf_bytes = std::fs::metadata(dir.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
    let seq = imported.graph.input_shape[0];
    let encoder = TextEncoder::from_json(&imported.tokenizer_json, seq, imported.pad_token as u32).map_err(EmbeddingError::from)?;
    let packed_tokenizer = text::pack_tokenizer(&imported.tokenizer_json);
    let mut extra = serde_json::Map::new();
    extra.insert("source".into(), dir.display().to_string().into());
    extra.insert("skipped_tensors".into(), imported.skipped.clone().into());
    extra.insert("l2_normalised_by_users".into(), imported.normalize.into());
    let model = Model::from_tensors(imported.graph, imported.tensors)?;
    let Some(heldout_path) = recipe.data.heldout.as_ref() else {
        return Err(PipelineError::Preprocess("an embedding recipe needs [data] heldout (sentences, one per line)".into()));
    };
    let heldout = read_sentences(heldout_path, recipe.data.heldout_limit)?;
    let refs: Vec<&str> = heldout.iter().map(String::as_str).collect();
    let ids = encoder.encode(&refs).map_err(EmbeddingError::from)?;
    let lengths = encoder.lengths(&refs).map_err(EmbeddingError::from)?;
    extra.insert("truncated_sentences".into(), lengths.iter().filter(|&&l| l >= seq).count().into());
    let n = heldout.len();
    let fp32_bytes = 4.0 * model.graph.num_params() as f64;
    let path = stage_path(opts, "baseline", "sqz", recipe.passes.is_empty());
    guard_input(recipe, &path)?;
    // The float model moves into the baseline file; each pass reads its input back
    // from the previous stage's file, so no stage is measured while another copy of
    // the weights is held.
    let wall = t.elapsed().as_secs_f64();
    let base = store_and_measure(&path, "baseline", store::into_stored_f32(model), store::Coding::FixedWidth, &packed_tokenizer, &ids, n, None, fp32_bytes, hf_bytes, wall, extra)?;
    on_event(Event::Measured(base.stage.clone()));
    let calibration = match &recipe.data.calibration {
        Some(p) => {
            let s = read_sentences(p, recipe.data.calibration_limit)?;
            let r: Vec<&str> = s.iter().map(String::as_str).collect();
            Some((encoder.encode(&r).map_err(EmbeddingError::from)?, encoder.lengths(&r).map_err(EmbeddingError::from)?))
        }
        None => None,
    };
    let eval = Embedder {
        packed_tokenizer,
        ids,
        n,
        calibration,
        reference: base.embeddings,
        fp32_bytes,
        hf_bytes,
        min_mean: recipe.gate.min_mean_cosine.unwrap_or(1.0),
        min_each: recipe.gate.min_cosine.unwrap_or(1.0),
    };
    Ok((Box::new(eval), Baseline { model: None, stages: vec![base.stage], file: path, warnings: Vec::new() }))
}

impl Evaluation for Embedder {
    fn gate(&self) -> Gate {
        Gate {
            metric: format!("cosine to the fp32 embeddings (mean ≥ {}, min ≥ {})", self.min_mean, self.min_each),
            max_drop: 1.0 - self.min_mean,
            against: "baseline".into(),
            split: "heldout".into(),
            measured_on: format!("{} held-out sentences", self.n),
        }
    }

    fn context<'a>(&'a self, recipe: &Recipe, baseline: Option<&'a Model>, index: usize, progress: &'a mut dyn FnMut(TrainEvent)) -> Context<'a> {
        let calibration = match &self.calibration {
            Some((ids, lengths)) => Calibration { rows: ids, count: lengths.len(), lengths: Some(lengths) },
            None => Calibration::default(),
        };
        Context {
            kind: ModelKind::Embedder,
            train: None,
            validation: None,
            test: None,
            calibration,
            train_defaults: super::train_defaults(recipe),
            seed: recipe.seed,
            index,
            baseline,
            tasks: None,
            progress,
        }
    }

    fn reload_between_stages(&self) -> bool {
        true
    }

    /// A text model's stages keep their pass's fixed-width codes, as its recipes were
    /// measured (entropy coding its ~90 MB of int8 and f32 tensors is a change of its
    /// own, to be measured for size and load time before it is made).
    fn entropy_code_last_stage(&self) -> bool {
        false
    }

    fn record(&mut self, path: &Path, name: &str, stored: SqzModel, coding: store::Coding, wall_s: f64, extra: serde_json::Map<String, serde_json::Value>) -> Result<Stage, PipelineError> {
        let m = store_and_measure(path, name, stored, coding, &self.packed_tokenizer, &self.ids, self.n, Some(&self.reference), self.fp32_bytes, self.hf_bytes, wall_s, extra)?;
        Ok(m.stage)
    }

    fn check(&self, stage: &Stage) -> Option<String> {
        let (mean, min) = stage.fidelity.as_ref().map_or((f64::NAN, f64::NAN), |f| (f.mean_cosine, f.min_cosine));
        (!(mean >= self.min_mean && min >= self.min_each)).then(|| {
            format!(
                "cosine to the fp32 embeddings on {} held-out sentences: mean {mean:.6} (gate ≥ {}), min {min:.6} (gate ≥ {})",
                self.n, self.min_mean, self.min_each
            )
        })
    }
}

/// The int4 pass's rounding weights (kept here for the examples that sweep int4).
pub use crate::compress::quantize::int4_importance;

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
