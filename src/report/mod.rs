//! The machine-readable run report (JSON, schema below) and its Markdown rendering,
//! plus the measurement helpers in [`measure`].
//!
//! The JSON schema is documented on the types themselves: [`Report`] is the top-level
//! object, [`Gate`] its `gate`, [`Stage`] each element of `stages`. Field names are the
//! JSON keys. [`SCHEMA_VERSION`] changes whenever a key is removed or its meaning changes;
//! readers should ignore keys they do not know.

pub mod measure;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serialize};

pub use measure::{Spread, machine_description, median_and_spread, peak_rss_bytes, sha256_hex, squeeze_version};

/// The version of the report schema written in `schema_version`.
/// 2: an embedder's cosines moved from `extra` to `fidelity`, a multi-task stage's rows
/// from `extra.tasks` to `tasks`.
pub const SCHEMA_VERSION: u32 = 2;

/// A run report: what was run, where, and every stage's measured result.
///
/// ```json
/// { "schema_version": 1, "squeeze_version": "0.1.0+31fc1df0ab",
///   "machine": "2 cores, AMD EPYC 9R14 96-Core Processor (avx2, avx512f, avx512_vnni)",
///   "recipe": "recipes/seed.toml", "recipe_sha256": "…64 hex digits…", "seed": 1234,
///   "dataset": "fashion-mnist",
///   "gate": { "metric": "accuracy", "max_drop": 0.005, "against": "baseline", "split": "validation",
///             "measured_on": "5000 held out of training images" },
///   "result": "failed", "failed_stage": "prune", "reason": "validation accuracy dropped 0.9 points",
///   "stages": [ { "name": "baseline", … } ] }
/// ```
///
/// `failed_stage` and `reason` are present only when `result` is `"failed"` (absent keys
/// read back as `None`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Report {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// `"<crate version>+<short git commit>"`, see [`squeeze_version`].
    pub squeeze_version: String,
    /// Cores, CPU model and SIMD flags, see [`machine_description`].
    pub machine: String,
    /// The recipe file as given on the command line.
    pub recipe: String,
    /// SHA-256 of the recipe file's bytes, lowercase hex.
    pub recipe_sha256: String,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Dataset name, e.g. `"fashion-mnist"`.
    pub dataset: String,
    /// The acceptance rule each compressed stage is checked against.
    pub gate: Gate,
    /// `"passed"` or `"failed"`.
    pub result: Outcome,
    /// The stage that failed the gate or the run (only when failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_stage: Option<String>,
    /// Why, in a sentence (only when failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Stages in the order they ran; the first is normally the uncompressed baseline.
    pub stages: Vec<Stage>,
    /// Things the run noticed that may make its figures wrong though it went on, one
    /// sentence each, e.g. inputs that look like unscaled 0–255 pixels (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The quality gate: `metric` on `split` may drop at most `max_drop` below the stage
/// named `against`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Gate {
    /// The metric compared, e.g. `"accuracy"`.
    pub metric: String,
    /// The largest allowed drop, as a fraction (`0.005` = half an accuracy point).
    pub max_drop: f64,
    /// The stage compared against, e.g. `"baseline"`.
    pub against: String,
    /// The split the gate is measured on, e.g. `"validation"` (never the samples the
    /// test accuracy is measured on).
    pub split: String,
    /// What that split holds, in words: `"5000 held out of training images"`, `"first
    /// 2000 of the test set (test accuracy on the other 8000)"`, `"val.npz (1000)"`
    /// (absent in older reports and where the split has no such choice).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub measured_on: String,
}

/// Whether the run passed its gates. Serialised as `"passed"` / `"failed"`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every stage ran and held the gate.
    Passed,
    /// A stage failed (see `failed_stage` and `reason`).
    Failed,
}

/// One stage's measurements, taken on the stage's stored file.
///
/// Non-finite floats (a measurement that could not be taken) are written as `null`
/// and read back as NaN.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Stage {
    /// Stage name, e.g. `"baseline"`, `"prune"`, `"int8"`.
    pub name: String,
    /// Test-set accuracy as a fraction in `[0, 1]`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub accuracy: f64,
    /// Validation-split accuracy as a fraction (what the gate reads).
    #[serde(deserialize_with = "f64_or_nan")]
    pub validation_accuracy: f64,
    /// Size of the stage's file in bytes.
    pub bytes: u64,
    /// Compression ratio: fp32 parameter bytes of the uncompressed model
    /// (4 × its parameter count) divided by `bytes`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub ratio: f64,
    /// Parameter count (weights and biases).
    pub params: u64,
    /// Parameters that are not zero.
    pub nonzero_params: u64,
    /// Stored bits per parameter: `8 × bytes / params`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub bits_per_weight: f64,
    /// Median latency of one image (batch 1), microseconds.
    #[serde(deserialize_with = "f64_or_nan")]
    pub latency_us_b1: f64,
    /// Half the inter-quartile range of the batch-1 latency samples, microseconds.
    #[serde(deserialize_with = "f64_or_nan")]
    pub latency_us_b1_spread: f64,
    /// Images per second at batch 256 (median run).
    #[serde(deserialize_with = "f64_or_nan")]
    pub throughput_b256: f64,
    /// The inference kernel used, e.g. `"f32-dense"`, `"int8-vnni"`.
    pub kernel: String,
    /// Wall-clock seconds the stage took (training or compression plus measuring).
    #[serde(deserialize_with = "f64_or_nan")]
    pub wall_s: f64,
    /// Peak resident set size of the process after the stage, bytes, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// The stage's file name, relative to the report's directory.
    pub file: String,
    /// Technique-specific facts (e.g. sparsity per layer), free-form JSON.
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// A distillation stage's comparison with the student trained alone (present only
    /// on a distill stage with a fresh student; added in schema 1 without breaking it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<Distillation>,
    /// An embedder's stage: cosine fidelity to the fp32 embeddings (what its gate reads;
    /// absent on the baseline, which is the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<Fidelity>,
    /// A multi-task stage: per task, accuracy from the one file against the task's
    /// separately trained model (what its gate reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskAccuracy>>,
}

/// Cosine similarity of a stage's embeddings to the fp32 baseline's, per held-out
/// sentence (f64 sums).
///
/// ```json
/// { "mean_cosine": 0.99912, "min_cosine": 0.99698, "min_cosine_sentence": 417 }
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Fidelity {
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean_cosine: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub min_cosine: f64,
    /// The 1-based line of the held-out sentence with the lowest cosine.
    pub min_cosine_sentence: usize,
}

/// One task of a multi-task stage: test and validation accuracy from the shared file,
/// its separate model's, and the difference in points (test).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskAccuracy {
    pub task: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub accuracy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub validation_accuracy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub separate_accuracy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub separate_validation_accuracy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub delta_points: f64,
}

/// Distillation against its control: the same student architecture trained alone on the
/// same inputs for the same epochs, per seed and as mean ± sample standard deviation.
/// Accuracies are test-set fractions; `gain` is distilled − alone.
///
/// ```json
/// { "student": "mlp", "teacher_accuracy": 0.9204, "mode": "soft", "temperature": 4.0,
///   "alpha": 0.9, "epochs": 30, "transfer_samples": 165000,
///   "control_accuracy": 0.8868, "control_spread": 0.0006,
///   "distilled_accuracy": 0.8927, "distilled_spread": 0.0011,
///   "gain": 0.0059, "gain_spread": 0.0014,
///   "seeds": [ { "seed": 1234, "control_accuracy": 0.8864, "distilled_accuracy": 0.8931 } ] }
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Distillation {
    pub student: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub teacher_accuracy: f64,
    /// `"soft"` or `"hard"`.
    pub mode: String,
    pub temperature: f64,
    pub alpha: f64,
    /// Total epochs of each student (distillation + fine-tuning; the control the same).
    pub epochs: usize,
    /// Samples in the transfer set (training images and their shifted copies).
    pub transfer_samples: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub control_accuracy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub control_spread: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub distilled_accuracy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub distilled_spread: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub gain: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub gain_spread: f64,
    pub seeds: Vec<DistillSeed>,
}

/// One seed of a [`Distillation`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DistillSeed {
    pub seed: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub control_accuracy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub distilled_accuracy: f64,
}

/// Reads a number, or `null` (how serde_json writes NaN and infinities) as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Report {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Plain structs with string map keys: serialisation cannot fail.
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// Parses a report written by [`Report::to_json`] (unknown keys are ignored).
    pub fn from_json(json: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The stage deltas are measured against: the one named by `gate.against`, else the
    /// first.
    fn reference(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == self.gate.against).or(self.stages.first())
    }

    /// A human-readable Markdown rendering, generated from the report alone: title,
    /// header facts, one table row per stage, and how the ratio is defined.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# squeeze report\n\n");
        let result = match self.result {
            Outcome::Passed => "**Result: passed**".to_string(),
            Outcome::Failed => {
                let mut r = "**Result: FAILED**".to_string();
                if let Some(stage) = &self.failed_stage {
                    r += &format!(" at stage `{}`", cell(stage));
                }
                if let Some(reason) = &self.reason {
                    r += &format!(": {}", cell(reason));
                }
                r
            }
        };
        let g = &self.gate;
        let drop =
            if g.metric == "accuracy" { format!("{:.2} points", g.max_drop * 100.0) } else { g.max_drop.to_string() };
        let facts = [
            result,
            format!("squeeze: `{}`", cell(&self.squeeze_version)),
            format!("machine: {}", cell(&self.machine)),
            format!("recipe: `{}` (sha256 `{}`)", cell(&self.recipe), cell(&self.recipe_sha256)),
            format!("seed: {}", self.seed),
            format!("dataset: {}", cell(&self.dataset)),
            format!(
                "gate: {} may drop at most {drop} below `{}`, measured on the {} split{}",
                cell(&g.metric),
                cell(&g.against),
                cell(&g.split),
                if g.measured_on.is_empty() { String::new() } else { format!(" ({})", cell(&g.measured_on)) }
            ),
        ];
        facts.iter().for_each(|f| _ = writeln!(md, "- {f}"));
        self.warnings.iter().for_each(|w| _ = writeln!(md, "- **warning**: {}", cell(w)));

        md += "\n| Stage | Test acc (%) | Δ vs baseline (pts) | Val acc (%) | Bytes | Ratio | Params | Non-zero \
               | Bits/weight | Latency b1 (µs) | Throughput b256 (img/s) | Kernel | Wall (s) |\n";
        md += "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|\n";
        let reference = self.reference();
        for s in &self.stages {
            let delta = match reference {
                Some(r) if !std::ptr::eq(r, s) => num(100.0 * (s.accuracy - r.accuracy), 2, true),
                _ => "—".to_string(),
            };
            let latency = format!("{} ± {}", num(s.latency_us_b1, 1, false), num(s.latency_us_b1_spread, 1, false));
            _ = writeln!(
                md,
                "| {} | {} | {delta} | {} | {} | {}× | {} | {} | {} | {latency} | {} | {} | {} |",
                cell(&s.name),
                num(100.0 * s.accuracy, 2, false),
                num(100.0 * s.validation_accuracy, 2, false),
                thousands(s.bytes),
                num(s.ratio, 2, false),
                thousands(s.params),
                thousands(s.nonzero_params),
                num(s.bits_per_weight, 2, false),
                human(s.throughput_b256),
                cell(&s.kernel),
                num(s.wall_s, 1, false),
            );
        }
        md += "\nRatio = fp32 parameter bytes of the uncompressed model";
        if let Some(r) = reference {
            _ = write!(md, " (4 × {} params = {} B)", thousands(r.params), thousands(4 * r.params));
        }
        md += " / file bytes.\n";
        self.tasks_markdown(&mut md);
        self.fidelity_markdown(&mut md);
        for st in &self.stages {
            let Some(d) = &st.distillation else { continue };
            _ = write!(
                md,
                "\n## Distillation (`{}`)\n\nStudent `{}` from a teacher at {}% test accuracy ({} distillation, T = {}, α = {}; \
                 {} epochs each over {} samples). The control is the same student trained alone on the same inputs for the \
                 same epochs.\n\n| Seed | Alone (%) | Distilled (%) | Gain (pts) |\n|--:|--:|--:|--:|\n",
                cell(&st.name),
                cell(&d.student),
                num(100.0 * d.teacher_accuracy, 2, false),
                cell(&d.mode),
                d.temperature,
                d.alpha,
                d.epochs,
                thousands(d.transfer_samples as u64),
            );
            for r in &d.seeds {
                _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    r.seed,
                    num(100.0 * r.control_accuracy, 2, false),
                    num(100.0 * r.distilled_accuracy, 2, false),
                    num(100.0 * (r.distilled_accuracy - r.control_accuracy), 2, true)
                );
            }
            _ = writeln!(
                md,
                "| mean ± sd | {} ± {} | {} ± {} | {} ± {} |",
                num(100.0 * d.control_accuracy, 2, false),
                num(100.0 * d.control_spread, 2, false),
                num(100.0 * d.distilled_accuracy, 2, false),
                num(100.0 * d.distilled_spread, 2, false),
                num(100.0 * d.gain, 2, true),
                num(100.0 * d.gain_spread, 2, false)
            );
        }
        md
    }

    /// An embedding model's stages: cosine to the fp32 embeddings, share of the original
    /// safetensors, batch-32 speed (the classifier columns above stay empty for them).
    fn fidelity_markdown(&self, md: &mut String) {
        let stages: Vec<&Stage> = self.stages.iter().filter(|s| s.extra.contains_key("heldout_sentences")).collect();
        if stages.is_empty() {
            return;
        }
        *md += "\n## Embedding fidelity\n\n| Stage | Mean cosine | Min cosine (sentence) | % of the original safetensors | Latency b32 (ms) | Sentences/s b32 | Peak RSS so far (MB) | × fp32 weights |\n";
        *md += "|---|--:|--:|--:|--:|--:|--:|--:|\n";
        let f = |s: &Stage, key: &str| s.extra.get(key).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        for s in &stages {
            let worst = s.fidelity.as_ref().map_or(String::new(), |f| format!(" (#{})", f.min_cosine_sentence));
            let (peak, times) = match s.peak_rss_bytes {
                Some(b) => (num(b as f64 / 1e6, 1, false), num(b as f64 / f(s, "fp32_weight_bytes"), 2, false)),
                None => ("not measured".to_string(), "—".to_string()),
            };
            _ = writeln!(
                md,
                "| {} | {} | {}{worst} | {} | {} | {} | {peak} | {times} |",
                cell(&s.name),
                num(s.fidelity.as_ref().map_or(f64::NAN, |f| f.mean_cosine), 6, false),
                num(s.fidelity.as_ref().map_or(f64::NAN, |f| f.min_cosine), 6, false),
                num(100.0 * f(s, "fraction_of_hf_safetensors"), 2, false),
                num(f(s, "latency_ms_b32"), 1, false),
                num(f(s, "sentences_per_s_b32"), 1, false),
            );
        }
        let n = stages[0].extra.get("heldout_sentences").and_then(serde_json::Value::as_u64).unwrap_or(0);
        _ = writeln!(md, "\nMeasured on {n} held-out sentences; the baseline is the reference, so its cosine is 1 by definition or absent. Peak RSS is the process's high-water mark (VmHWM, Linux only) when the stage was measured, so the last row is the run's peak; × fp32 weights divides it by 4 bytes × parameters.");
    }

    /// The per-task table of multi-task stages (written by recipes with `[[task]]`
    /// tables), if any.
    fn tasks_markdown(&self, md: &mut String) {
        let shared: Vec<&Stage> = self.stages.iter().filter(|s| s.tasks.is_some()).collect();
        if shared.is_empty() {
            return;
        }
        *md += "\n## Per task\n\n| Stage | Task | Test acc (%) | Separate model (%) | Δ (pts) | Val acc (%) | Separate val (%) |\n";
        *md += "|---|---|--:|--:|--:|--:|--:|\n";
        for s in &shared {
            for row in s.tasks.iter().flatten() {
                _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    cell(&s.name),
                    cell(&row.task),
                    num(100.0 * row.accuracy, 2, false),
                    num(100.0 * row.separate_accuracy, 2, false),
                    num(100.0 * (row.accuracy - row.separate_accuracy), 2, true),
                    num(100.0 * row.validation_accuracy, 2, false),
                    num(100.0 * row.separate_validation_accuracy, 2, false),
                );
            }
        }
        *md += "\n";
        for s in &shared {
            let sep = s.extra.get("separate_bytes").and_then(serde_json::Value::as_u64).unwrap_or(0);
            if sep > 0 {
                _ = writeln!(
                    md,
                    "- `{}`: one file of {} B holds every task: {}% of the separate models' {} B.",
                    cell(&s.name),
                    thousands(s.bytes),
                    num(100.0 * s.bytes as f64 / sep as f64, 1, false),
                    thousands(sep)
                );
            }
        }
    }
}

/// Text made safe for a Markdown table cell or list item.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A number with `decimals` places (`+` shown if `signed`), or `—` when not finite.
fn num(x: f64, decimals: usize, signed: bool) -> String {
    match (x.is_finite(), signed) {
        (false, _) => "—".to_string(),
        (true, true) => format!("{x:+.decimals$}"),
        (true, false) => format!("{x:.decimals$}"),
    }
}

/// `203848` → `"203,848"`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with a k / M / G suffix, e.g. `1.50 M`.
fn human(x: f64) -> String {
    match x {
        x if !x.is_finite() => "—".to_string(),
        x if x >= 1e9 => format!("{:.2} G", x / 1e9),
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(result: Outcome) -> Report {
        let stage = |name: &str, acc: f64, bytes: u64| Stage {
            name: name.into(),
            accuracy: acc,
            validation_accuracy: acc - 0.001,
            bytes,
            ratio: 203_560.0 / bytes as f64,
            params: 50_890,
            nonzero_params: 50_890,
            bits_per_weight: 8.0 * bytes as f64 / 50_890.0,
            latency_us_b1: 9.1,
            latency_us_b1_spread: 0.4,
            throughput_b256: 1_500_000.0,
            kernel: "f32-dense".into(),
            wall_s: 21.3,
            peak_rss_bytes: Some(61_000_000),
            file: format!("{name}.safetensors"),
            extra: BTreeMap::from([("sparsity".to_string(), serde_json::json!({"fc1": 0.9}))]),
            distillation: None,
            fidelity: None,
            tasks: None,
        };
        let failed = result == Outcome::Failed;
        Report {
            schema_version: SCHEMA_VERSION,
            squeeze_version: squeeze_version(),
            machine: "2 cores, Test CPU (avx2)".into(),
            recipe: "recipes/seed.toml".into(),
            recipe_sha256: sha256_hex(b"recipe"),
            seed: 1234,
            dataset: "fashion-mnist".into(),
            gate: Gate {
                metric: "accuracy".into(),
                max_drop: 0.005,
                against: "baseline".into(),
                split: "validation".into(),
                measured_on: "5000 held out of training images".into(),
            },
            result,
            failed_stage: failed.then(|| "int8".into()),
            reason: failed.then(|| "validation accuracy dropped 1.20 points (limit 0.50)".into()),
            stages: vec![stage("baseline", 0.8712, 203_848), stage("int8", 0.8600, 51_234)],
            warnings: Vec::new(),
        }
    }

    #[test]
    fn json_round_trip() {
        for outcome in [Outcome::Passed, Outcome::Failed] {
            let r = sample(outcome);
            let json = r.to_json();
            assert_eq!(Report::from_json(&json).unwrap(), r);
            assert_eq!(json.contains("failed_stage"), outcome == Outcome::Failed);
        }
        let json = sample(Outcome::Passed).to_json();
        assert!(json.contains("\"result\": \"passed\""), "{json}");
        // NaN is written as null and read back as NaN, never an error.
        let mut r = sample(Outcome::Passed);
        r.stages[0].latency_us_b1 = f64::NAN;
        let back = Report::from_json(&r.to_json()).unwrap();
        assert!(back.stages[0].latency_us_b1.is_nan());
    }

    #[test]
    fn markdown_lists_stages_and_reason() {
        let md = sample(Outcome::Failed).to_markdown();
        for needle in
            ["baseline", "int8", "FAILED", "dropped 1.20 points", "87.12", "-1.12", "203,848", "1.50 M", "9.1 ± 0.4"]
        {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        assert!(md.contains("4 × 50,890 params"), "{md}");
        assert!(sample(Outcome::Passed).to_markdown().contains("Result: passed"));
    }

    #[test]
    fn markdown_shows_tasks_of_shared_stages() {
        let mut r = sample(Outcome::Passed);
        assert!(!r.to_markdown().contains("Per task"));
        r.stages[1].name = "shared-hard".into();
        r.stages[1].bytes = 191_370;
        r.stages[1].tasks = Some(vec![TaskAccuracy {
            task: "coarse".into(),
            accuracy: 0.9876,
            validation_accuracy: 0.99,
            separate_accuracy: 0.9886,
            separate_validation_accuracy: 0.991,
            delta_points: -0.1,
        }]);
        r.stages[1].extra.insert("separate_bytes".into(), 565_286.into());
        let md = r.to_markdown();
        for needle in ["## Per task", "| shared-hard | coarse | 98.76 | 98.86 | -0.10 | 99.00 | 99.10 |", "191,370 B", "33.9%", "565,286 B"] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        assert_eq!(Report::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn distillation_figures_round_trip_and_render() {
        let mut r = sample(Outcome::Passed);
        r.stages[1].distillation = Some(Distillation {
            student: "mlp".into(),
            teacher_accuracy: 0.9204,
            mode: "soft".into(),
            temperature: 4.0,
            alpha: 0.9,
            epochs: 30,
            transfer_samples: 165_000,
            control_accuracy: 0.8868,
            control_spread: 0.0006,
            distilled_accuracy: 0.8927,
            distilled_spread: 0.0011,
            gain: 0.0059,
            gain_spread: 0.0014,
            seeds: vec![DistillSeed { seed: 1234, control_accuracy: 0.8864, distilled_accuracy: 0.8931 }],
        });
        assert_eq!(Report::from_json(&r.to_json()).unwrap(), r);
        let md = r.to_markdown();
        for needle in ["## Distillation", "92.04", "88.68 ± 0.06", "+0.59 ± 0.14", "| 1234 | 88.64 | 89.31 | +0.67 |", "165,000"] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        // A report without the field (written before it existed) still reads.
        assert!(!sample(Outcome::Passed).to_json().contains("distillation"));
    }

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human(850.4), "850");
        assert_eq!(human(12_345.0), "12.3 k");
        assert_eq!(num(f64::NAN, 2, false), "—");
        assert_eq!(num(0.5, 2, true), "+0.50");
    }
}
