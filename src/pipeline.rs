//! The main job, one runner for every kind of model: make the baseline, apply each
//! pass ([`crate::compress::PassConfig`]), write each stage's file, decode it again and
//! measure it with the runtime, check the gate, and write `report.json` and
//! `report.md`.
//!
//! What differs between kinds of model is behind [`Evaluation`] (the evaluation
//! contract): how the baseline is made, what a pass may read (fine-tuning data,
//! calibration rows), how a stage is written and measured, and what the gate reads:
//! accuracy for classifiers ([`classifier`]), cosine fidelity for embedders
//! ([`embedding`]), per-task accuracy for multi-task files ([`tasks`]). A new kind
//! (an ImageNet classifier judged by top-1 agreement, a language model by perplexity)
//! is a new implementation, not a new runner.

use std::path::{Path, PathBuf};
use std::time::Instant;

mod classifier;
pub mod embedding;
mod tasks;

use crate::compress::pass::{Context, Stored};
use crate::compress::multitask;
use crate::format::sqz::SqzModel;
use crate::data::{self, DataError, Dataset, Splits};
use crate::format::sqz;
use crate::format::write_atomic;
use crate::model::{Model, ModelError};
use crate::recipe::Recipe;
use crate::report::measure::{machine_description, median_and_spread, peak_rss_bytes, sha256_hex, squeeze_version};
use crate::report::{Gate, Outcome, Report, Stage};
use crate::runtime::exec::{self, Plan, RuntimeError};
use crate::store::{self, ModelFile, StoreError};
use crate::train::{TrainConfig, TrainEvent};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Preprocess(String),
    #[error(transparent)]
    Pass(#[from] crate::compress::pass::PassError),
    #[error("share_tasks: {0}")]
    Multitask(#[from] multitask::MultitaskError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("unknown zoo model '{0}' (known: mlp, lenet300, lenet5, cnn)")]
    UnknownZoo(String),
    #[error("shape mismatch: the model takes inputs of shape {model:?} with {classes} outputs, the data set has samples of shape {data:?} and {data_classes} classes")]
    ShapeMismatch { model: Vec<usize>, classes: usize, data: Vec<usize>, data_classes: usize },
    #[error("cannot write '{path}': {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("output '{0}' would overwrite the recipe's input model; choose another --out-dir")]
    WouldOverwriteInput(PathBuf),
    #[error("{0}")]
    Embedding(#[from] embedding::EmbeddingError),
    #[error(transparent)]
    OutDir(#[from] crate::outdir::OutDirError),
    #[error("validation gate failed at stage '{stage}': {reason} (report written to {report})")]
    GateFailed { stage: String, reason: String, report: PathBuf },
}

/// Options given on the command line, over the recipe.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub recipe_path: PathBuf,
    pub out_dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
}

/// Progress of a run, for a caller that shows it.
#[derive(Clone, Debug)]
pub enum Event {
    /// A stage starts (its name).
    Stage(String),
    Train(TrainEvent),
    /// A stage was measured.
    Measured(Stage),
    /// What a pass did, in a few lines for a person.
    Summary(Vec<String>),
    /// Something that may make the figures wrong, though the run goes on (also in the
    /// report's `warnings`).
    Warning(String),
}

/// What the runtime measured on one stored model.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub accuracy: f64,
    pub validation_accuracy: f64,
    pub latency_us_b1: f64,
    pub latency_us_b1_spread: f64,
    pub throughput_b256: f64,
    pub kernel: String,
}

/// Loads the data set the recipe names, with command-line overrides, and checks that
/// every split holds samples (an empty validation split would let any model through
/// the gate).
pub fn load_data(recipe: &Recipe, opts: &RunOptions) -> Result<Splits, DataError> {
    let d = &recipe.data;
    let base = opts.recipe_path.parent().unwrap_or(Path::new("."));
    let validation = d.validation_from(base);
    let (train_limit, test_limit) = (opts.train_limit.or(d.train_limit), opts.test_limit.or(d.test_limit));
    let splits = match (d.dataset.as_str(), &d.train, &d.test) {
        ("images", Some(train), Some(test)) => {
            let o = data::images::ImageOptions { size: d.size.unwrap_or([28, 28]), channels: d.channels.unwrap_or(1), labels: d.labels.clone() };
            let (full, test) = data::images::load(&base.join(train), &base.join(test), &o)?;
            data::split_sets(full, test, &validation, train_limit, test_limit, "images")?
        }
        (_, Some(train), Some(test)) => {
            let source = |spec: &str| data::npy::ArraySource::parse(spec).relative_to(base);
            data::load_arrays_from(&source(train), &source(test), &validation, train_limit, test_limit)?
        }
        ("idx", _, _) => {
            let dir = opts.data_dir.clone().or_else(|| d.dir.clone()).unwrap_or_default();
            data::load_idx(&data::locate_idx(&dir)?, &validation, train_limit, test_limit, None)?
        }
        _ => {
            let explicit = opts.data_dir.clone().or_else(|| d.dir.clone());
            let dir = data::locate(explicit.as_deref())?;
            data::load_idx(&dir, &validation, train_limit, test_limit, Some(data::FASHION_CLASSES.len()))?
        }
    };
    splits.check_not_empty()?;
    Ok(splits)
}

/// The data set's name for the report: the recipe's `dataset`, with the folder read
/// for `"idx"` and `"images"` (they name no particular set).
pub fn dataset_name(recipe: &Recipe, opts: &RunOptions) -> String {
    let d = &recipe.data;
    match (d.dataset.as_str(), &d.train) {
        ("idx", _) => format!("idx ({})", opts.data_dir.as_ref().or(d.dir.as_ref()).map_or_else(String::new, |p| p.display().to_string())),
        ("images", Some(train)) => format!("images ({})", opts.recipe_path.parent().unwrap_or(Path::new(".")).join(train).display()),
        (name, _) => name.to_string(),
    }
}

/// A warning when inputs look like unscaled 0–255 pixels but the model expects unit-range
/// input, else `None`. `what` names the data (e.g. `"the test arrays"`).
///
/// The rule: squeeze feeds models values in `[0, 1]` (IDX files, uint8 arrays and image
/// folders are divided by 255 when read; float arrays are taken as they are). Data with
/// no value below 0 and a largest value above [`data::UNSCALED_MAX`] looks unscaled
/// ([`Dataset::looks_unscaled`]). It is worth a warning unless the model states that it
/// takes raw values: its first op is a `Normalize` with a mean above
/// [`data::UNSCALED_MAX`] (e.g. `[model.preprocess] scale = 1.0, mean = [127.5]`, or an
/// imported graph that subtracts 127.5). A model trained by the run itself (a zoo
/// recipe) is not checked: it learns whatever range it is given.
pub fn input_range_warning(graph: &crate::spec::Graph, data: &Dataset, what: &str) -> Option<String> {
    let (lo, hi) = data.looks_unscaled()?;
    let takes_raw = matches!(graph.nodes.first().map(|n| &n.op), Some(crate::spec::Op::Normalize { mean, .. }) if mean.iter().any(|m| *m > data::UNSCALED_MAX));
    (!takes_raw).then(|| {
        format!(
            "{what} hold values from {lo} to {hi}, but the model expects inputs in [0, 1]: they look like unscaled 0–255 pixels; \
             divide them by 255 (or store them as uint8, which squeeze divides), or put `[model.preprocess] scale = 255.0` in the recipe \
             if the model really takes raw pixels"
        )
    })
}

/// Checks the baseline `model` against the data's range ([`input_range_warning`]),
/// unless the run trained it; a warning goes to `on_event` and is returned for the report.
pub(crate) fn input_range_warnings(recipe: &Recipe, model: &Model, splits: &Splits, on_event: &mut dyn FnMut(Event)) -> Vec<String> {
    if recipe.model.zoo.is_some() {
        return Vec::new();
    }
    for (data, what) in [(&splits.test, "the test inputs"), (&splits.validation, "the validation inputs")] {
        if let Some(w) = input_range_warning(&model.graph, data, what) {
            on_event(Event::Warning(w.clone()));
            return vec![w];
        }
    }
    Vec::new()
}

/// Checks that `plan` accepts the data set's samples and covers its classes.
pub fn check_shapes(plan: &Plan, input_shape: &[usize], data: &Dataset) -> Result<(), PipelineError> {
    if plan.input_len() != data.sample_len() || plan.output_len() < data.num_classes {
        return Err(PipelineError::ShapeMismatch {
            model: input_shape.to_vec(),
            classes: plan.output_len(),
            data: data.sample_shape.clone(),
            data_classes: data.num_classes,
        });
    }
    Ok(())
}

/// Accuracy (test and validation), batch-1 latency over up to 1,000 test images and
/// batch-256 throughput on 2 threads, all with the runtime's kernels.
pub fn measure(plan: &Plan, splits: &Splits) -> Result<Measurement, RuntimeError> {
    let accuracy = exec::evaluate(plan, &splits.test.images, &splits.test.labels, 2)?;
    let validation_accuracy = exec::evaluate(plan, &splits.validation.images, &splits.validation.labels, 2)?;
    let mut lat = exec::latencies_us(plan, &splits.test.images, 1000)?;
    let spread = median_and_spread(&mut lat);
    let throughput_b256 = exec::throughput(plan, &splits.test.images, 256, 2, 0.3)?;
    Ok(Measurement {
        accuracy,
        validation_accuracy,
        latency_us_b1: spread.median,
        latency_us_b1_spread: spread.spread,
        throughput_b256,
        kernel: plan.kernel_description(),
    })
}

/// An empty report for a run of `recipe`: provenance (version, machine, the recipe's
/// path and hash) and the gate, on `metric` against the stage `against`.
pub(crate) fn new_report(recipe: &Recipe, opts: &RunOptions, gate: Gate) -> Report {
    let recipe_bytes = std::fs::read(&opts.recipe_path).unwrap_or_default();
    Report {
        schema_version: crate::report::SCHEMA_VERSION,
        squeeze_version: squeeze_version(),
        machine: machine_description(),
        recipe: opts.recipe_path.display().to_string(),
        recipe_sha256: sha256_hex(&recipe_bytes),
        seed: recipe.seed,
        dataset: dataset_name(recipe, opts),
        gate,
        result: Outcome::Passed,
        failed_stage: None,
        reason: None,
        stages: Vec::new(),
        warnings: Vec::new(),
    }
}

/// What differs between kinds of model (see the module docs): the evaluation contract
/// the runner drives. Made by each kind's `baseline`, which also writes and measures
/// the baseline stage(s).
pub(crate) trait Evaluation {
    /// The gate as the report states it.
    fn gate(&self) -> Gate;

    /// What pass `index` may read.
    fn context<'a>(&'a self, recipe: &Recipe, baseline: Option<&'a Model>, index: usize, progress: &'a mut dyn FnMut(TrainEvent)) -> Context<'a>;

    /// Whether the model is read back from the previous stage's file before each pass
    /// instead of being held (an embedder's weights are held about once at any time).
    fn reload_between_stages(&self) -> bool {
        false
    }

    /// Whether the run's last stage (`model.sqz`, the file a user ships) is entropy coded
    /// even when its pass leaves that to a later `code` pass: the coding is lossless, so
    /// `squeeze prune --out p.sqz` writes the smallest file for its pruned weights.
    /// Earlier stages keep their pass's coding, so a recipe still shows what each step
    /// gives (Deep Compression's fixed-width "pruned" stage, then `code`).
    fn entropy_code_last_stage(&self) -> bool {
        true
    }

    /// Writes `stored` to `path`, reads it back and measures what was written.
    fn record(&mut self, path: &Path, name: &str, stored: SqzModel, coding: store::Coding, wall_s: f64, extra: serde_json::Map<String, serde_json::Value>) -> Result<Stage, PipelineError>;

    /// Why `stage` fails the gate, or `None` when it holds.
    fn check(&self, stage: &Stage) -> Option<String>;
}

/// The baseline a kind of model starts from.
pub(crate) struct Baseline {
    /// The model in memory (`None` when the kind reads it back from `file`).
    pub model: Option<Model>,
    /// The stages written and measured (the baseline, or one separate model per task).
    pub stages: Vec<Stage>,
    /// The last baseline file (what an embedder's first pass reads).
    pub file: PathBuf,
    /// What the report should warn about (e.g. inputs that look unscaled).
    pub warnings: Vec<String>,
}

/// The recipe's `[train]` settings as the trainer takes them.
pub(crate) fn train_defaults(recipe: &Recipe) -> TrainConfig {
    TrainConfig {
        epochs: recipe.train.epochs,
        batch_size: recipe.train.batch_size,
        lr: recipe.train.lr,
        seed: recipe.seed,
        workers: 2,
        l1: 0.0,
        group_lasso: None,
        schedule: recipe.train.schedule,
    }
}

/// The file of stage `name`: `model.<ext>` for the last stage of the run.
/// The path is named in the directory's manifest first ([`crate::outdir::record`]).
pub(crate) fn stage_path(opts: &RunOptions, name: &str, ext: &str, is_last: bool) -> PathBuf {
    let path = opts.out_dir.join(if is_last { format!("model.{ext}") } else { format!("{name}.{ext}") });
    let _ = crate::outdir::record(&path);
    path
}

/// Runs `recipe`; writes stage files, `report.json` and `report.md` into `opts.out_dir`.
pub fn run(recipe: &Recipe, opts: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<Report, PipelineError> {
    // Held to the end: one run in the directory, its files only (see crate::outdir).
    let _claim = crate::outdir::claim(&opts.out_dir, &recipe.model_inputs())?;
    let (mut eval, baseline) = match recipe.kind() {
        crate::compress::pass::ModelKind::Classifier => classifier::baseline(recipe, opts, on_event)?,
        crate::compress::pass::ModelKind::Embedder => embedding::baseline(recipe, opts, on_event)?,
        crate::compress::pass::ModelKind::Tasks => tasks::baseline(recipe, opts, on_event)?,
    };
    let mut report = new_report(recipe, opts, eval.gate());
    report.stages = baseline.stages;
    report.warnings = baseline.warnings;
    let reload = eval.reload_between_stages();
    let mut held = baseline.model.clone();
    let mut previous = baseline.file;
    let last = recipe.passes.len();
    for (i, pass) in recipe.passes.iter().enumerate() {
        on_event(Event::Stage(pass.stage_name()));
        let t = Instant::now();
        let mut model = match held.take() {
            Some(m) if !reload => m,
            _ => store::read_model(&previous)?,
        };
        let output = {
            let mut progress = |e| on_event(Event::Train(e));
            let mut ctx = eval.context(recipe, baseline.model.as_ref(), i, &mut progress);
            pass.technique().apply(&mut model, &mut ctx)?
        };
        // A name that repeats (e.g. trimming heads in two steps) gets a step number.
        let mut name = output.name.unwrap_or_else(|| pass.stage_name());
        let repeats = report.stages.iter().filter(|s| s.name == name || s.name.starts_with(&format!("{name}-step"))).count();
        if repeats > 0 {
            name = format!("{name}-step{}", repeats + 1);
        }
        let path = stage_path(opts, &name, "sqz", i + 1 == last);
        guard_input(recipe, &path)?;
        let stored = match output.stored {
            Stored::Encoded(s) => {
                if !reload {
                    held = Some(model);
                }
                *s
            }
            Stored::Model if reload => store::into_stored_f32(model),
            Stored::Model => {
                let s = store::stored_f32(&model);
                held = Some(model);
                s
            }
        };
        let wall = t.elapsed().as_secs_f64();
        let entropy = output.entropy_coding || (i + 1 == last && eval.entropy_code_last_stage());
        let coding = if entropy { store::Coding::Entropy } else { store::Coding::FixedWidth };
        let mut stage = eval.record(&path, &name, stored, coding, wall, output.details)?;
        stage.distillation = output.distillation;
        on_event(Event::Measured(stage.clone()));
        if !output.lines.is_empty() {
            on_event(Event::Summary(output.lines));
        }
        let failure = eval.check(&stage);
        report.stages.push(stage);
        previous = path;
        if let Some(reason) = failure {
            return Err(gate_failed(&mut report, &opts.out_dir, name, reason));
        }
    }
    write_report(&report, &opts.out_dir)?;
    Ok(report)
}

/// Refuses to write over the recipe's own model file.
pub(crate) fn guard_input(recipe: &Recipe, out: &Path) -> Result<(), PipelineError> {
    for input in [&recipe.model.file, &recipe.model.state_dict].into_iter().flatten() {
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(out))
            && a == b
        {
            return Err(PipelineError::WouldOverwriteInput(out.to_path_buf()));
        }
    }
    Ok(())
}

/// Reads the stage's file back from disk and measures what was really written.
pub(crate) fn measure_stage(
    path: &Path,
    name: &str,
    wall_s: f64,
    fp32_bytes: f64,
    splits: &Splits,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<Stage, PipelineError> {
    let bytes = std::fs::metadata(path).map_err(|source| StoreError::Io { path: path.into(), source })?.len();
    let file = store::read(path)?;
    let plan = file.plan()?;
    check_shapes(&plan, &file.graph().input_shape, &splits.test)?;
    let m = measure(&plan, splits)?;
    let (params, nonzero, weight_bits) = file_counts(&file, path)?;
    Ok(Stage {
        name: name.into(),
        accuracy: m.accuracy,
        validation_accuracy: m.validation_accuracy,
        bytes,
        ratio: fp32_bytes / bytes as f64,
        params,
        nonzero_params: nonzero,
        bits_per_weight: weight_bits,
        latency_us_b1: m.latency_us_b1,
        latency_us_b1_spread: m.latency_us_b1_spread,
        throughput_b256: m.throughput_b256,
        kernel: m.kernel,
        wall_s,
        peak_rss_bytes: peak_rss_bytes(),
        file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        extra: extra.into_iter().collect(),
        distillation: None,
        fidelity: None,
        tasks: None,
    })
}

/// Parameters, non-zero parameters, and stored bits per weight (weight tensors' bytes
/// on disk, scales and position indices included, × 8 / number of weights).
pub fn file_counts(file: &ModelFile, path: &Path) -> Result<(u64, u64, f64), StoreError> {
    file_counts_with(file, path, None)
}

/// [`file_counts`] with the `.sqz` file's section report when the caller has it (read
/// with the file), so the file is not read again while the model is held.
pub fn file_counts_with(file: &ModelFile, path: &Path, sections: Option<&[sqz::SectionSummary]>) -> Result<(u64, u64, f64), StoreError> {
    let graph = file.graph();
    let specs = graph.parameters();
    let weight_names: Vec<&str> = specs.iter().filter(|p| p.kind == crate::spec::ParamKind::Weight).map(|p| p.name.as_str()).collect();
    let weights: usize = specs.iter().filter(|p| p.kind == crate::spec::ParamKind::Weight).map(|p| p.numel()).sum();
    match file {
        ModelFile::Dense(d) => {
            let nonzero = d.tensors.iter().map(|(_, _, v)| v.iter().filter(|x| **x != 0.0).count()).sum::<usize>();
            Ok((graph.num_params() as u64, nonzero as u64, 32.0))
        }
        ModelFile::Onnx(o) => {
            let nonzero = o.tensors.iter().map(|(_, _, v)| v.iter().filter(|x| **x != 0.0).count()).sum::<usize>();
            Ok((graph.num_params() as u64, nonzero as u64, 32.0))
        }
        ModelFile::Sqz(s) => {
            let nonzero = s.tensors.iter().map(|t| t.nonzeros()).sum::<usize>();
            let read;
            let sections = match sections {
                Some(s) => s,
                None => {
                    read = sqz::summarize_file(path).map_err(|source| StoreError::Sqz { path: path.into(), source })?;
                    &read[..]
                }
            };
            let weight_bytes: usize = sections
                .iter()
                .filter(|s| s.tensor.as_deref().is_some_and(|t| weight_names.contains(&t)))
                .map(|s| s.total_bytes)
                .sum();
            Ok((graph.num_params() as u64, nonzero as u64, weight_bytes as f64 * 8.0 / weights.max(1) as f64))
        }
    }
}

/// Marks `report` failed at `stage` for `reason`, writes it to `dir`, and returns the
/// error that names the stage and the written report (or the write's own error).
pub(crate) fn gate_failed(report: &mut Report, dir: &Path, stage: String, reason: String) -> PipelineError {
    report.result = Outcome::Failed;
    report.failed_stage = Some(stage.clone());
    report.reason = Some(reason.clone());
    match write_report(report, dir) {
        Ok(path) => PipelineError::GateFailed { stage, reason, report: path },
        Err(e) => e,
    }
}

/// Writes `report.json` and `report.md` atomically; returns the JSON's path.
pub fn write_report(report: &Report, dir: &Path) -> Result<PathBuf, PipelineError> {
    let json = dir.join("report.json");
    let md = dir.join("report.md");
    write_atomic(&json, report.to_json().as_bytes()).map_err(|source| PipelineError::Write { path: json.clone(), source })?;
    write_atomic(&md, report.to_markdown().as_bytes()).map_err(|source| PipelineError::Write { path: md, source })?;
    Ok(json)
}
