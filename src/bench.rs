//! `squeeze bench`: training speed and inference speed of a zoo model, every encoding
//! the runtime runs natively against the model's own f32 in the same run (ratios, since
//! shared machines are noisy), with the kernel and the machine named. The result is
//! plain data (serialisable for `--json`) and prints as a table ([`std::fmt::Display`]).

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
}

/// One encoding's figures.
#[derive(Clone, Debug, Serialize)]
pub struct EncodingRow {
    pub encoding: &'static str,
    pub kernel: String,
    pub latency_us_b1: f64,
    pub latency_us_b1_spread: f64,
    pub throughput_b256: f64,
    pub latency_speedup_vs_f32: f64,
    pub throughput_ratio_vs_f32: f64,
}

/// What [`bench_zoo`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub machine: String,
    pub threads: usize,
    pub train_samples: usize,
    pub train_samples_per_s: f64,
    pub rounds: usize,
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
    let rounds = 5;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); plans.len()];
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); plans.len()];
    for _ in 0..rounds {
        for (i, (_, plan)) in plans.iter().enumerate() {
            lat[i].extend(exec::latencies_us(plan, &splits.test.images, 200)?);
            thr[i].push(exec::throughput(plan, &splits.test.images, 256, 2, 0.1)?);
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
                throughput_b256: median_and_spread(t).median,
                latency_speedup_vs_f32: 0.0,
                throughput_ratio_vs_f32: 0.0,
            }
        })
        .collect();
    let (base_lat, base_thr) = (encodings[0].latency_us_b1, encodings[0].throughput_b256);
    for e in &mut encodings {
        e.latency_speedup_vs_f32 = base_lat / e.latency_us_b1;
        e.throughput_ratio_vs_f32 = e.throughput_b256 / base_thr;
    }
    Ok(BenchReport {
        model: name.into(),
        machine: machine_description(),
        threads: 2,
        train_samples: n,
        train_samples_per_s: stats[0].samples_per_s.round(),
        rounds,
        encodings,
    })
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model {}, {}", self.model, self.machine)?;
        writeln!(f, "training: {:.0} samples/s (1 epoch of {} images, batch 128, 2 workers)", self.train_samples_per_s, self.train_samples)?;
        writeln!(f, "inference: {} interleaved rounds; b1 = one image, one thread (median ± half IQR); b256 = batches of 256 on {} threads", self.rounds, self.threads)?;
        writeln!(f, "{:<14} {:>14} {:>12} {:>8} {:>9}  kernel", "encoding", "b1 µs (±)", "b256 img/s", "b1 ×f32", "b256 ×f32")?;
        for e in &self.encodings {
            writeln!(
                f,
                "{:<14} {:>7.2} ±{:<5.2} {:>12.0} {:>7.2}× {:>8.2}×  {}",
                e.encoding, e.latency_us_b1, e.latency_us_b1_spread, e.throughput_b256, e.latency_speedup_vs_f32, e.throughput_ratio_vs_f32, e.kernel
            )?;
        }
        Ok(())
    }
}
