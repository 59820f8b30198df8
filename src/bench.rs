//! `squeeze bench`: inference speed of a model file ([`bench_file`]: the file as stored,
//! its own f32 and the int8 forms that need no data) or of a zoo model ([`bench_zoo`]:
//! training speed too, and every encoding the runtime runs natively), each against the
//! model's own f32 in the same run (ratios, since shared machines are noisy), with the
//! kernel and the machine's instruction set named. The result is plain data
//! (serialisable for `--json`) and prints as a table ([`std::fmt::Display`]).

use std::fmt;

use serde::Serialize;

use crate::compress::{prune, quantize, share};
use crate::data::Splits;
use crate::model::{zoo, Model};
use crate::report::measure::{machine_description, median_and_spread};
use crate::runtime::exec;
use crate::store;
use crate::train::{self, TrainConfig};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown zoo model '{0}' (known: {known})", known = zoo::MODELS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    UnknownModel(String),
    #[error("the training data holds no samples")]
    NoData,
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Prune(#[from] prune::PruneError),
    #[error(transparent)]
    Share(#[from] share::ShareError),
    #[error(transparent)]
    Quantize(#[from] quantize::QuantizeError),
    #[error("runtime: {0}")]
    Runtime(#[from] exec::RuntimeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Hf(#[from] crate::format::hf::HfError),
}

/// One encoding's figures.
#[derive(Clone, Debug, Serialize)]
pub struct EncodingRow {
    pub encoding: &'static str,
    pub kernel: String,
    pub latency_us_b1: f64,
    pub latency_us_b1_spread: f64,
    /// Samples per second at the report's `batch`.
    pub throughput: f64,
    pub latency_speedup_vs_f32: f64,
    pub throughput_ratio_vs_f32: f64,
}

/// What [`bench_zoo`] or [`bench_file`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub machine: String,
    pub threads: usize,
    /// Training images of the timed epoch (zoo models only).
    pub train_samples: usize,
    pub train_samples_per_s: f64,
    pub rounds: usize,
    /// Samples per batch of the throughput figures.
    pub batch: usize,
    /// What the timed inputs were.
    pub inputs: String,
    /// Dense f32 first: the baseline of the ratios.
    pub encodings: Vec<EncodingRow>,
}

/// Trains zoo model `name` for one epoch on up to `train_samples` images (timed), then
/// times every encoding the runtime runs natively, from the stored form as `squeeze run`
/// measures it: dense f32, full int8, 90% pruned (sparse) f32 and int8, and weight
/// sharing (5-bit codebooks for Linear, 8-bit for Conv2d). Rounds interleave the
/// encodings, so load from other processes hits every encoding alike.
pub fn bench_zoo(name: &str, splits: &Splits, train_samples: usize) -> Result<BenchReport, BenchError> {
    let graph = zoo::build(name).ok_or_else(|| BenchError::UnknownModel(name.into()))?;
    let mut m = Model::init(graph, 1)?;
    let n = train_samples.min(splits.train.len());
    if n == 0 {
        return Err(BenchError::NoData);
    }
    let per = splits.train.sample_len();
    let cfg = TrainConfig { epochs: 1, ..TrainConfig::default() };
    let stats = train::train(&mut m, &splits.train.images[..n * per], &splits.train.labels[..n], &cfg, &mut |_| {});
    let calib = &splits.train.images[..1000.min(n) * per];
    let mut pruned = m.clone();
    prune::magnitude(&mut pruned, 0.9, prune::Scope::Layer, &[])?;
    let mut shared = m.clone();
    share::share(&mut shared, &share::ShareConfig { linear_bits: 5, conv_bits: 8, per_layer: Default::default(), layers: Vec::new() })?;
    let plans = [
        ("f32", store::model_plan(&m)?),
        ("int8", store::sqz_plan(&quantize::quantize(&m, &quantize::Precision::int8_all(&m, quantize::Mode::Full), calib)?)?),
        ("f32-pruned90", store::sqz_plan(&store::stored_f32(&pruned))?),
        ("int8-pruned90", store::sqz_plan(&quantize::quantize(&pruned, &quantize::Precision::int8_all(&pruned, quantize::Mode::Full), calib)?)?),
        ("codebook", store::sqz_plan(&store::stored_f32(&shared))?),
    ];
    let (rounds, encodings) = time_interleaved(&plans, &splits.test.images, 200, 256)?;
    Ok(BenchReport {
        model: name.into(),
        machine: machine_description(),
        threads: 2,
        train_samples: n,
        train_samples_per_s: stats[0].samples_per_s.round(),
        rounds,
        batch: 256,
        inputs: "the test images".into(),
        encodings,
    })
}

/// Times the model in `path` (`.sqz`, safetensors, ONNX, or a Hugging Face directory):
/// the file as stored, its own dense f32, and, for a float model, dynamic int8 (weights
/// int8, inputs quantized per row at run time: the int8 form that needs no calibration
/// data); batch-1 latency and batch-`batch` throughput on 2 threads, in interleaved
/// rounds. Inputs are generated: values uniform in [0, 1) for images and features,
/// token ids uniform over the vocabulary for a text model (speed does not depend on
/// the values, except through a pruned model's zeros, which are in the weights).
pub fn bench_file(path: &std::path::Path, batch: usize) -> Result<BenchReport, BenchError> {
    let (stored, model) = if path.is_dir() {
        let imported = crate::format::hf::import(path, None)?;
        let m = Model::from_tensors(imported.graph, imported.tensors)?;
        (None, m)
    } else {
        let file = store::read(path)?;
        let stored = match &file {
            store::ModelFile::Sqz(s) => Some(store::sqz_plan(s)?),
            _ => None,
        };
        let model = file.into_model().map_err(|source| crate::store::StoreError::Model { path: path.into(), source })?;
        (stored, model)
    };
    let float = store::model_plan(&model)?;
    let per = float.input_len();
    let vocab = model.graph.nodes.iter().find_map(|n| match n.op {
        crate::spec::Op::Embedding { vocab, .. } => Some(vocab),
        _ => None,
    });
    let samples = (4 * batch).max(64);
    let mut rng = crate::rng::Rng::new(7);
    let inputs: Vec<f32> = (0..samples * per)
        .map(|_| match vocab {
            Some(v) => (rng.next_u64() % v as u64) as f32,
            None => (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32,
        })
        .collect();
    let mut plans: Vec<(&'static str, exec::Plan)> = Vec::new();
    plans.push(("f32", float));
    if let Some(s) = stored {
        plans.push(("as stored", s));
    }
    let has_linear = model.graph.nodes.iter().any(|n| matches!(n.op, crate::spec::Op::Linear { .. } | crate::spec::Op::SelfAttention { .. }));
    if has_linear {
        let dynamic = quantize::quantize(&model, &quantize::Precision::int8_all(&model, quantize::Mode::Dynamic), &[])?;
        plans.push(("int8-dynamic", store::sqz_plan(&dynamic)?));
    }
    let (rounds, encodings) = time_interleaved(&plans, &inputs, 40, batch)?;
    Ok(BenchReport {
        model: path.display().to_string(),
        machine: machine_description(),
        threads: 2,
        train_samples: 0,
        train_samples_per_s: 0.0,
        rounds,
        batch,
        inputs: match vocab {
            Some(v) => format!("generated token ids (uniform over {v}), {per} per sample"),
            None => format!("generated values uniform in [0, 1), {per} per sample"),
        },
        encodings,
    })
}

/// Times `plans` (the first is the f32 baseline of the ratios) in 5 interleaved rounds,
/// so load from other processes hits every encoding alike: batch-1 latency over up to
/// `latency_samples` inputs on one thread, throughput at `batch` on 2 threads. Returns
/// the rounds and one row per plan.
fn time_interleaved(plans: &[(&'static str, exec::Plan)], inputs: &[f32], latency_samples: usize, batch: usize) -> Result<(usize, Vec<EncodingRow>), BenchError> {
    let rounds = 5;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); plans.len()];
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); plans.len()];
    for _ in 0..rounds {
        for (i, (_, plan)) in plans.iter().enumerate() {
            lat[i].extend(exec::latencies_us(plan, inputs, latency_samples)?);
            thr[i].push(exec::throughput(plan, inputs, batch, 2, 0.1)?);
        }
    }
    let mut encodings: Vec<EncodingRow> = plans
        .iter()
        .zip(lat.iter_mut().zip(thr.iter_mut()))
        .map(|((encoding, plan), (l, t))| {
            let s = median_and_spread(l);
            EncodingRow {
                encoding,
                kernel: plan.kernel_description(),
                latency_us_b1: s.median,
                latency_us_b1_spread: s.spread,
                throughput: median_and_spread(t).median,
                latency_speedup_vs_f32: 0.0,
                throughput_ratio_vs_f32: 0.0,
            }
        })
        .collect();
    let (base_lat, base_thr) = (encodings[0].latency_us_b1, encodings[0].throughput);
    for e in &mut encodings {
        e.latency_speedup_vs_f32 = base_lat / e.latency_us_b1;
        e.throughput_ratio_vs_f32 = e.throughput / base_thr;
    }
    Ok((rounds, encodings))
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model {}, {}", self.model, self.machine)?;
        if self.train_samples > 0 {
            writeln!(f, "training: {:.0} samples/s (1 epoch of {} images, batch 128, 2 workers)", self.train_samples_per_s, self.train_samples)?;
        }
        let b = self.batch;
        writeln!(f, "inference on {}: {} interleaved rounds; b1 = one sample (median ± half IQR); b{b} = batches of {b} on {} threads", self.inputs, self.rounds, self.threads)?;
        writeln!(f, "{:<14} {:>14} {:>12} {:>8} {:>9}  kernel", "encoding", "b1 µs (±)", format!("b{b} /s"), "b1 ×f32", format!("b{b} ×f32"))?;
        for e in &self.encodings {
            writeln!(
                f,
                "{:<14} {:>7.2} ±{:<5.2} {:>12.0} {:>7.2}× {:>8.2}×  {}",
                e.encoding, e.latency_us_b1, e.latency_us_b1_spread, e.throughput, e.latency_speedup_vs_f32, e.throughput_ratio_vs_f32, e.kernel
            )?;
        }
        Ok(())
    }
}
