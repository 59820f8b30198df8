//! The main job: run a recipe end to end. Train (or load) the baseline, apply each
//! pass, write each stage's file, decode it again and measure it with the runtime
//! (accuracy, bytes, latency, throughput), check the gate on the validation split, and
//! write `report.json` and `report.md`.

use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod embedding;
mod tasks;

use crate::compress::{distill, hashed, multitask, prune, quantize, share, smooth, trim};
use crate::data::{self, DataError, Dataset, Splits};
use crate::format::sqz;
use crate::format::write_atomic;
use crate::model::{zoo, Model, ModelError};
use crate::recipe::{Pass, Recipe};
use crate::report::measure::{machine_description, median_and_spread, peak_rss_bytes, sha256_hex, squeeze_version};
use crate::report::{Distillation, DistillSeed, Gate, Outcome, Report, Stage};
use crate::runtime::exec::{self, Plan, RuntimeError};
use crate::store::{self, ModelFile, StoreError};
use crate::train::{self, TrainConfig, TrainEvent};

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
    #[error("prune: {0}")]
    Prune(#[from] prune::PruneError),
    #[error("share: {0}")]
    Share(#[from] share::ShareError),
    #[error("trim: {0}")]
    Trim(#[from] trim::TrimError),
    #[error("hash: {0}")]
    Hash(#[from] hashed::HashError),
    #[error("share_tasks: {0}")]
    Multitask(#[from] multitask::MultitaskError),
    #[error("quantize: {0}")]
    Quantize(#[from] quantize::QuantizeError),
    #[error(transparent)]
    Smooth(#[from] smooth::SmoothError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("unknown zoo model '{0}' (known: mlp, lenet300, lenet5, cnn)")]
    UnknownZoo(String),
    #[error("shape mismatch: the model takes inputs of shape {model:?} with {classes} outputs, the data set has samples of shape {data:?} and {data_classes} classes")]
    ShapeMismatch { model: Vec<usize>, classes: usize, data: Vec<usize>, data_classes: usize },
    #[error("distill: {0}")]
    Distill(#[from] distill::DistillError),
    #[error("recipe: a pass follows 'quantize'; quantize must be the last pass for now")]
    QuantizeNotLast,
    #[error("cannot write '{path}': {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("output '{0}' would overwrite the recipe's input model; choose another --out-dir")]
    WouldOverwriteInput(PathBuf),
    #[error("{0}")]
    Embedding(#[from] embedding::EmbeddingError),
    #[error("{0}")]
    EmbeddingOnly(String),
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

/// Fills in what the report says about the data once it is read: the gate's
/// `measured_on`.
pub(crate) fn describe_data(report: &mut Report, splits: &Splits) {
    report.gate.measured_on = splits.validation_source.clone();
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
/// unless the run trained it; a warning goes to the report and to `on_event`.
fn note_input_range(recipe: &Recipe, model: &Model, splits: &Splits, report: &mut Report, on_event: &mut dyn FnMut(Event)) {
    if recipe.model.zoo.is_some() {
        return;
    }
    for (data, what) in [(&splits.test, "the test inputs"), (&splits.validation, "the validation inputs")] {
        if let Some(w) = input_range_warning(&model.graph, data, what) {
            on_event(Event::Warning(w.clone()));
            report.warnings.push(w);
            return;
        }
    }
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
pub(crate) fn new_report(recipe: &Recipe, opts: &RunOptions, metric: &str, against: &str) -> Report {
    let recipe_bytes = std::fs::read(&opts.recipe_path).unwrap_or_default();
    Report {
        schema_version: crate::report::SCHEMA_VERSION,
        squeeze_version: squeeze_version(),
        machine: machine_description(),
        recipe: opts.recipe_path.display().to_string(),
        recipe_sha256: sha256_hex(&recipe_bytes),
        seed: recipe.seed,
        dataset: dataset_name(recipe, opts),
        gate: Gate { metric: metric.into(), max_drop: recipe.gate.max_accuracy_drop, against: against.into(), split: "validation".into(), measured_on: String::new() },
        result: Outcome::Passed,
        failed_stage: None,
        reason: None,
        stages: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Runs `recipe`; writes stage files, `report.json` and `report.md` into `opts.out_dir`.
pub fn run(recipe: &Recipe, opts: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<Report, PipelineError> {
    if let Some(i) = recipe.passes.iter().position(|p| matches!(p, Pass::Quantize { .. }))
        && i + 1 != recipe.passes.len()
    {
        return Err(PipelineError::QuantizeNotLast);
    }
    if !recipe.tasks.is_empty() {
        return tasks::run(recipe, opts, on_event);
    }
    if recipe.is_embedding() {
        return embedding::run(recipe, opts, on_event);
    }
    let splits = load_data(recipe, opts)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| PipelineError::Write { path: opts.out_dir.clone(), source })?;

    let mut report = new_report(recipe, opts, "accuracy", "baseline");
    describe_data(&mut report, &splits);

    // Baseline.
    on_event(Event::Stage("baseline".into()));
    let t = Instant::now();
    let train_cfg = TrainConfig {
        epochs: recipe.train.epochs,
        batch_size: recipe.train.batch_size,
        lr: recipe.train.lr,
        seed: recipe.seed,
        workers: 2,
        l1: 0.0,
        group_lasso: None,
        schedule: recipe.train.schedule,
    };
    let mut baseline_extra = serde_json::Map::new();
    let mut model = match (&recipe.model.zoo, &recipe.model.file) {
        (Some(name), _) => {
            let graph = zoo::build(name).ok_or_else(|| PipelineError::UnknownZoo(name.clone()))?;
            let mut model = Model::init(graph, recipe.seed)?;
            check_shapes(&store::model_plan(&model)?, &model.graph.input_shape, &splits.train)?;
            let stats = train::train(&mut model, &splits.train.images, &splits.train.labels, &train_cfg, &mut |e| on_event(Event::Train(e)));
            let sps: f64 = stats.iter().map(|s| s.samples_per_s).sum::<f64>() / stats.len().max(1) as f64;
            baseline_extra.insert("epochs".into(), stats.len().into());
            baseline_extra.insert("train_samples_per_s".into(), sps.round().into());
            baseline_extra.insert("final_train_loss".into(), stats.last().map_or(f64::NAN, |s| s.loss).into());
            model
        }
        (None, Some(file)) => {
            let mut model = store::read_model(file)?;
            if let Some(p) = &recipe.model.preprocess {
                let op = p.to_op().map_err(|e| PipelineError::Preprocess(format!("[model.preprocess] in the recipe: {e}")))?;
                let name = model.graph.prepend("preprocess", op);
                model.graph.validate().map_err(|e| PipelineError::Preprocess(format!("[model.preprocess] in the recipe does not fit the model's input: {e}")))?;
                baseline_extra.insert("preprocess".into(), format!("{:?} (node '{name}')", model.graph.nodes[0].op).into());
            }
            check_shapes(&store::model_plan(&model)?, &model.graph.input_shape, &splits.train)?;
            baseline_extra.insert("source".into(), file.display().to_string().into());
            model
        }
        (None, None) => {
            let (Some(state_dict), Some(arch)) = (&recipe.model.state_dict, &recipe.model.architecture) else {
                unreachable!("Recipe::parse checks the model source")
            };
            let model = store::import_pytorch(state_dict, arch)?;
            check_shapes(&store::model_plan(&model)?, &model.graph.input_shape, &splits.train)?;
            baseline_extra.insert("source".into(), state_dict.display().to_string().into());
            baseline_extra.insert("architecture".into(), arch.display().to_string().into());
            model
        }
    };
    note_input_range(recipe, &model, &splits, &mut report, on_event);
    let baseline_wall = t.elapsed().as_secs_f64();
    let params = model.graph.num_params() as u64;
    let fp32_bytes = 4.0 * params as f64;

    let last = recipe.passes.len();
    let path_for = |name: &str, ext: &str, is_last: bool| -> PathBuf {
        opts.out_dir.join(if is_last { format!("model.{ext}") } else { format!("{name}.{ext}") })
    };
    let baseline_path = path_for("baseline", "safetensors", last == 0);
    guard_input(recipe, &baseline_path)?;
    store::write_safetensors(&baseline_path, &model)?;
    let stage = measure_stage(&baseline_path, "baseline", baseline_wall, fp32_bytes, &splits, baseline_extra)?;
    on_event(Event::Measured(stage.clone()));
    let baseline_val = stage.validation_accuracy;
    let baseline_model = model.clone();
    report.stages.push(stage);

    for (i, pass) in recipe.passes.iter().enumerate() {
        let mut name = pass.stage_name();
        on_event(Event::Stage(name.clone()));
        let t = Instant::now();
        let mut extra = serde_json::Map::new();
        let mut distillation = None;
        let is_last = i + 1 == last;
        let (stored, entropy_coding) = match pass {
            Pass::Prune { sparsity, scope, layers, per_layer, schedule, steps, fine_tune_epochs, lr, l1, l1_epochs } => {
                let mut summary = prune::PruneSummary { layers: Vec::new() };
                let mut log = Vec::new();
                let soft_control = if *l1 > 0.0 {
                    // The hard control gets the soft phase's epochs as extra fine-tuning.
                    let control = model.clone();
                    let cfg = TrainConfig { epochs: *l1_epochs, l1: *l1, seed: recipe.seed.wrapping_add(777), ..train_cfg.clone() };
                    train::train(&mut model, &splits.train.images, &splits.train.labels, &cfg, &mut |e| on_event(Event::Train(e)));
                    Some(control)
                } else {
                    None
                };
                for t in 1..=*steps {
                    let target = schedule.at(*sparsity, t, *steps);
                    let per_t = per_layer.iter().map(|(k, v)| (k.clone(), schedule.at(*v, t, *steps))).collect();
                    summary = prune::magnitude_per_layer(&mut model, target, *scope, layers, &per_t)?;
                    let cfg = TrainConfig {
                        epochs: *fine_tune_epochs,
                        lr: lr.unwrap_or(recipe.train.lr * 0.5),
                        seed: recipe.seed.wrapping_add(1000 * (i as u64 + 1) + t as u64),
                        ..train_cfg.clone()
                    };
                    train::train(&mut model, &splits.train.images, &splits.train.labels, &cfg, &mut |e| on_event(Event::Train(e)));
                    if *steps > 1 {
                        let val = exec::evaluate(&store::model_plan(&model)?, &splits.validation.images, &splits.validation.labels, 2)?;
                        let kept: usize = summary.layers.iter().map(|l| l.2).sum();
                        let total: usize = summary.layers.iter().map(|l| l.1).sum();
                        log.push(serde_json::json!({ "step": t, "sparsity": 1.0 - kept as f64 / total as f64, "validation_accuracy": val }));
                    }
                }
                if !log.is_empty() {
                    extra.insert("steps".into(), log.into());
                }
                if let Some(mut control) = soft_control {
                    let per: std::collections::BTreeMap<String, f64> = per_layer.clone();
                    prune::magnitude_per_layer(&mut control, *sparsity, *scope, layers, &per)?;
                    let cfg = TrainConfig {
                        epochs: *fine_tune_epochs * *steps + *l1_epochs,
                        lr: lr.unwrap_or(recipe.train.lr * 0.5),
                        seed: recipe.seed.wrapping_add(1000 * (i as u64 + 1) + 1),
                        ..train_cfg.clone()
                    };
                    train::train(&mut control, &splits.train.images, &splits.train.labels, &cfg, &mut |e| on_event(Event::Train(e)));
                    let plan = store::model_plan(&control)?;
                    let test = exec::evaluate(&plan, &splits.test.images, &splits.test.labels, 2)?;
                    let val = exec::evaluate(&plan, &splits.validation.images, &splits.validation.labels, 2)?;
                    extra.insert("method".into(), format!("l1 (strength {l1}, {l1_epochs} epochs) then magnitude").into());
                    extra.insert(
                        "hard_control".into(),
                        serde_json::json!({ "method": "magnitude, one shot", "sparsity": sparsity, "epochs": cfg.epochs, "accuracy": test, "validation_accuracy": val }),
                    );
                }
                let layers: Vec<serde_json::Value> = summary
                    .layers
                    .iter()
                    .map(|(n, total, kept)| serde_json::json!({ "tensor": n, "weights": total, "kept": kept }))
                    .collect();
                extra.insert("layers".into(), layers.into());
                extra.insert("fine_tune_epochs".into(), (*fine_tune_epochs).into());
                extra.insert("scope".into(), format!("{scope:?}").to_lowercase().into());
                extra.insert("schedule".into(), format!("{schedule:?}").to_lowercase().into());
                let kept: usize = summary.layers.iter().map(|l| l.2).sum();
                let total: usize = summary.layers.iter().map(|l| l.1).sum();
                name = format!("pruned-{}", (100.0 * (1.0 - kept as f64 / total.max(1) as f64)).round());
                (quantize::store_f32(&model), false)
            }
            Pass::Share { linear_bits, conv_bits, per_layer, layers, fine_tune_epochs, lr, half_precision } => {
                let cfg = share::ShareConfig {
                    linear_bits: *linear_bits,
                    conv_bits: *conv_bits,
                    per_layer: per_layer.clone(),
                    layers: layers.clone(),
                };
                let summary = share::share(&mut model, &cfg)?;
                let tcfg = TrainConfig {
                    epochs: *fine_tune_epochs,
                    lr: lr.unwrap_or(recipe.train.lr * 0.1),
                    seed: recipe.seed.wrapping_add(1000 * (i as u64 + 1)),
                    ..train_cfg.clone()
                };
                fine_tune_shared(&mut model, &splits, &tcfg, *half_precision, on_event);
                record_shared(&mut extra, &summary.layers, "clusters", *fine_tune_epochs, *half_precision);
                (quantize::store_f32(&model), false)
            }
            Pass::Code {} => (quantize::store_f32(&model), true),
            Pass::Hash { fraction, signed, layers, fine_tune_epochs, lr, half_precision } => {
                let cfg = hashed::HashConfig { fraction: *fraction, signed: *signed, layers: layers.clone(), seed: recipe.seed };
                let summary = hashed::hash_weights(&mut model, &cfg)?;
                let tcfg = TrainConfig {
                    epochs: *fine_tune_epochs,
                    lr: lr.unwrap_or(recipe.train.lr),
                    seed: recipe.seed.wrapping_add(1000 * (i as u64 + 1)),
                    ..train_cfg.clone()
                };
                fine_tune_shared(&mut model, &splits, &tcfg, *half_precision, on_event);
                record_shared(&mut extra, &summary.layers, "buckets", *fine_tune_epochs, *half_precision);
                extra.insert("signed".into(), (*signed).into());
                (quantize::store_f32(&model), true)
            }
            // Recipes with tasks run in `tasks::run`; without them there is nothing to share.
            Pass::ShareTasks { .. } => return Err(multitask::MultitaskError::NoTasks.into()),
            Pass::PruneRows { .. } | Pass::Int4 { .. } => {
                return Err(PipelineError::EmbeddingOnly(format!("pass '{}' runs in embedding recipes ([model] hf_dir) only", pass.stage_name())));
            }
            Pass::Distill {
                teacher,
                student,
                seeds,
                mode,
                temperature,
                alpha,
                epochs,
                fine_tune_epochs,
                lr,
                fine_tune_lr,
                schedule,
                shifted_copies,
                max_shift,
            } => {
                let teacher_plan = match teacher {
                    Some(path) => store::read(path)?.plan()?,
                    None => store::model_plan(&baseline_model)?,
                };
                check_shapes(&teacher_plan, &model.graph.input_shape, &splits.train)?;
                let lr = lr.unwrap_or(if student.is_some() { recipe.train.lr } else { recipe.train.lr * 0.5 });
                let cfg = distill::DistillConfig {
                    mode: *mode,
                    temperature: *temperature,
                    alpha: *alpha,
                    epochs: *epochs,
                    fine_tune_epochs: *fine_tune_epochs,
                    lr,
                    fine_tune_lr: fine_tune_lr.unwrap_or(lr / 10.0),
                    batch_size: recipe.train.batch_size,
                    schedule: *schedule,
                    shifted_copies: *shifted_copies,
                    max_shift: *max_shift,
                };
                let stage_seed = recipe.seed.wrapping_add(1000 * (i as u64 + 1));
                let set = distill::transfer_set(
                    &splits.train.images,
                    &splits.train.labels,
                    &splits.train.sample_shape,
                    *shifted_copies,
                    *max_shift,
                    stage_seed,
                )?;
                let teacher_accuracy = exec::evaluate(&teacher_plan, &splits.test.images, &splits.test.labels, 2)?;
                let figures = match student {
                    None => {
                        distill::check_pair(&teacher_plan, &model)?;
                        let outputs = distill::teacher_outputs(&[&teacher_plan], &set.images, *temperature)?;
                        distill::distill(&mut model, &set, &outputs, &cfg, stage_seed, &mut |e| on_event(Event::Train(e)))?;
                        None
                    }
                    Some(name) => {
                        let graph = zoo::build(name).ok_or_else(|| PipelineError::UnknownZoo(name.clone()))?;
                        let make = |seed: u64| Ok(Model::init(graph.clone(), seed)?);
                        distill::check_pair(&teacher_plan, &make(0)?)?;
                        let outputs = distill::teacher_outputs(&[&teacher_plan], &set.images, *temperature)?;
                        let seed_list: Vec<u64> = (0..*seeds as u64).map(|k| recipe.seed.wrapping_add(k)).collect();
                        let mut first: Option<Model> = None;
                        let cmp = distill::compare(
                            &make,
                            &seed_list,
                            &set,
                            &outputs,
                            &cfg,
                            &splits.test.images,
                            &splits.test.labels,
                            &mut |e| on_event(Event::Train(e)),
                            &mut |_, m| {
                                if first.is_none() {
                                    first = Some(m.clone());
                                }
                            },
                        )?;
                        model = first.expect("at least one seed (checked by the recipe)");
                        Some(distillation_figures(name, teacher_accuracy, &cmp, &cfg, set.len()))
                    }
                };
                extra.insert("teacher".into(), teacher.as_ref().map_or("baseline".to_string(), |p| p.display().to_string()).into());
                extra.insert("teacher_accuracy".into(), teacher_accuracy.into());
                extra.insert("mode".into(), serde_json::to_value(mode).unwrap_or_default());
                extra.insert("temperature".into(), (*temperature as f64).into());
                extra.insert("alpha".into(), (*alpha as f64).into());
                extra.insert("epochs".into(), (*epochs).into());
                extra.insert("fine_tune_epochs".into(), (*fine_tune_epochs).into());
                extra.insert("schedule".into(), serde_json::to_value(schedule).unwrap_or_default());
                extra.insert("transfer_samples".into(), set.len().into());
                distillation = figures;
                (quantize::store_f32(&model), false)
            }
            Pass::Trim { ratio, score, heads, head_score, layers, per_layer, fine_tune_epochs, lr, calibration, group_lasso, group_lasso_epochs } => {
                let cfg = trim::TrimConfig { ratio: *ratio, score: *score, layers: layers.clone(), per_layer: per_layer.clone(), heads: *heads, head_score: *head_score };
                let n = (*calibration).min(splits.train.len());
                let calib = &splits.train.images[..n * splits.train.sample_len()];
                if *group_lasso > 0.0 {
                    let params = trim::scores(&model, &cfg, calib)?.into_keys().map(|l| format!("{l}.weight")).collect();
                    let gl = train::GroupLasso { strength: *group_lasso, params };
                    let soft = TrainConfig {
                        epochs: *group_lasso_epochs,
                        group_lasso: Some(gl),
                        seed: recipe.seed.wrapping_add(555),
                        ..train_cfg.clone()
                    };
                    train::train(&mut model, &splits.train.images, &splits.train.labels, &soft, &mut |e| on_event(Event::Train(e)));
                    extra.insert("group_lasso".into(), serde_json::json!({ "strength": group_lasso, "epochs": group_lasso_epochs }));
                }
                let (trimmed, summary) = trim::trim(&model, &cfg, calib)?;
                model = trimmed;
                let tcfg = TrainConfig {
                    epochs: *fine_tune_epochs,
                    lr: lr.unwrap_or(recipe.train.lr * 0.5),
                    seed: recipe.seed.wrapping_add(1000 * (i as u64 + 1)),
                    ..train_cfg.clone()
                };
                train::train(&mut model, &splits.train.images, &splits.train.labels, &tcfg, &mut |e| on_event(Event::Train(e)));
                let layers: Vec<serde_json::Value> = summary
                    .layers
                    .iter()
                    .map(|(n, before, after)| serde_json::json!({ "layer": n, "units_before": before, "units_after": after }))
                    .collect();
                extra.insert("layers".into(), layers.into());
                if !summary.heads.is_empty() {
                    let heads: Vec<serde_json::Value> = summary
                        .heads
                        .iter()
                        .map(|(n, before, after)| serde_json::json!({ "layer": n, "heads_before": before, "heads_after": after }))
                        .collect();
                    extra.insert("heads".into(), heads.into());
                    extra.insert("head_score".into(), serde_json::to_value(head_score).unwrap_or_default());
                }
                extra.insert("params_before".into(), summary.params_before.into());
                extra.insert("params_after".into(), summary.params_after.into());
                extra.insert("score".into(), serde_json::to_value(score).unwrap_or_default());
                (quantize::store_f32(&model), false)
            }
            Pass::Quantize { mode, layers, calibration, small_tensors, smooth, float_activations, nonlinear, nonlinear_ops } => {
                let n = (*calibration).min(splits.train.len());
                let calib = &splits.train.images[..n * splits.train.sample_len()];
                let smoothed = match smooth {
                    Some(alpha) => {
                        let (m, summary) = smooth::smooth(&model, calib, *alpha)?;
                        extra.insert("smooth_alpha".into(), f64::from(*alpha).into());
                        extra.insert("smoothed_inputs".into(), smooth::summary_json(&summary));
                        Some(m)
                    }
                    None => None,
                };
                let mut stored = quantize::quantize_with_nonlinear(smoothed.as_ref().unwrap_or(&model), *mode, layers, calib, *small_tensors, *nonlinear, nonlinear_ops)?;
                if !float_activations.is_empty() {
                    let off = quantize::keep_float_activations(&mut stored, float_activations)?;
                    extra.insert("float_activation_layers".into(), off.into());
                }
                extra.insert("mode".into(), format!("{mode:?}").to_lowercase().into());
                extra.insert("small_tensors".into(), format!("{small_tensors:?}").to_lowercase().into());
                if !stored.quant.integer_nonlinear.is_empty() {
                    extra.insert("integer_nonlinear".into(), stored.quant.integer_nonlinear.iter().map(|k| k.name()).collect::<Vec<_>>().into());
                }
                extra.insert("calibration_images".into(), n.into());
                extra.insert("integer_layers".into(), stored.quant.integer_nodes.iter().cloned().collect::<Vec<_>>().into());
                (stored, true)
            }
        };
        let path = path_for(&name, "sqz", is_last);
        guard_input(recipe, &path)?;
        store::write_sqz_with(&path, &stored, entropy_coding)?;
        let wall = t.elapsed().as_secs_f64();
        let mut stage = measure_stage(&path, &name, wall, fp32_bytes, &splits, extra)?;
        stage.distillation = distillation;
        on_event(Event::Measured(stage.clone()));
        let drop = baseline_val - stage.validation_accuracy;
        let failed = drop > recipe.gate.max_accuracy_drop;
        report.stages.push(stage);
        if failed {
            let reason = format!(
                "validation accuracy dropped {:.2} points against the baseline, more than the allowed {:.2} (by {:.2} points)",
                drop * 100.0,
                recipe.gate.max_accuracy_drop * 100.0,
                (drop - recipe.gate.max_accuracy_drop) * 100.0
            );
            return Err(gate_failed(&mut report, &opts.out_dir, name, reason));
        }
    }
    write_report(&report, &opts.out_dir)?;
    Ok(report)
}

/// The report's figures for a distillation compared with its control.
pub fn distillation_figures(student: &str, teacher_accuracy: f64, cmp: &distill::Comparison, cfg: &distill::DistillConfig, transfer_samples: usize) -> Distillation {
    let (control_accuracy, control_spread) = cmp.control();
    let (distilled_accuracy, distilled_spread) = cmp.distilled();
    let (gain, gain_spread) = cmp.gain();
    Distillation {
        student: student.to_string(),
        teacher_accuracy,
        mode: match cfg.mode {
            distill::Mode::Soft => "soft".into(),
            distill::Mode::Hard => "hard".into(),
        },
        temperature: cfg.temperature as f64,
        alpha: cfg.alpha as f64,
        epochs: cfg.total_epochs(),
        transfer_samples,
        control_accuracy,
        control_spread,
        distilled_accuracy,
        distilled_spread,
        gain,
        gain_spread,
        seeds: cmp
            .seeds
            .iter()
            .map(|r| DistillSeed { seed: r.seed, control_accuracy: r.control_accuracy, distilled_accuracy: r.distilled_accuracy })
            .collect(),
    }
}

/// Refuses to write over the recipe's own model file.
fn guard_input(recipe: &Recipe, out: &Path) -> Result<(), PipelineError> {
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
fn measure_stage(
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

/// Writes `report.json` and `report.md` atomically; returns the JSON's path.
/// Fine-tunes a weight-shared (k-means or hashed) model with its sharing held, then
/// rounds its shared values to f16 when the pass asks for half precision.
fn fine_tune_shared(model: &mut Model, splits: &Splits, cfg: &TrainConfig, half_precision: bool, on_event: &mut dyn FnMut(Event)) {
    train::train(model, &splits.train.images, &splits.train.labels, cfg, &mut |e| on_event(Event::Train(e)));
    if half_precision {
        share::round_to_half(model);
    }
}

/// Records a sharing pass in a stage's `extra`: per tensor its weights and how many
/// distinct values serve them (`unit`: "clusters" of a codebook, "buckets" of a hash),
/// and the fine-tuning that followed.
fn record_shared(extra: &mut serde_json::Map<String, serde_json::Value>, layers: &[(String, usize, usize)], unit: &str, fine_tune_epochs: usize, half_precision: bool) {
    let layers: Vec<serde_json::Value> = layers.iter().map(|(n, weights, k)| serde_json::json!({ "tensor": n, "weights": weights, unit: k })).collect();
    extra.insert("layers".into(), layers.into());
    extra.insert("fine_tune_epochs".into(), fine_tune_epochs.into());
    extra.insert("half_precision".into(), half_precision.into());
}

/// Marks `report` failed at `stage` for `reason`, writes it to `dir`, and returns the
/// error that names the stage and the written report (or the write's own error).
fn gate_failed(report: &mut Report, dir: &Path, stage: String, reason: String) -> PipelineError {
    report.result = Outcome::Failed;
    report.failed_stage = Some(stage.clone());
    report.reason = Some(reason.clone());
    match write_report(report, dir) {
        Ok(path) => PipelineError::GateFailed { stage, reason, report: path },
        Err(e) => e,
    }
}

pub fn write_report(report: &Report, dir: &Path) -> Result<PathBuf, PipelineError> {
    let json = dir.join("report.json");
    let md = dir.join("report.md");
    write_atomic(&json, report.to_json().as_bytes()).map_err(|source| PipelineError::Write { path: json.clone(), source })?;
    write_atomic(&md, report.to_markdown().as_bytes()).map_err(|source| PipelineError::Write { path: md, source })?;
    Ok(json)
}
