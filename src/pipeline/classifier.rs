//! Classifiers: the baseline is trained from the zoo or read from a file (safetensors,
//! `.sqz`, ONNX, a PyTorch state dict with its architecture), passes fine-tune on the
//! training split and calibrate on its first images, and each stage is measured on the
//! test set (reported) and the validation split (gated): validation accuracy may drop
//! at most `max_accuracy_drop` below the baseline's.

use std::path::Path;
use std::time::Instant;

use super::{Baseline, Evaluation, Event, PipelineError, RunOptions, check_shapes, guard_input, load_data, measure_stage, stage_path, train_defaults};
use crate::compress::pass::{Calibration, Context, ModelKind};
use crate::data::Splits;
use crate::format::sqz::SqzModel;
use crate::model::{Model, zoo};
use crate::recipe::Recipe;
use crate::report::{Gate, Stage};
use crate::store;
use crate::train::{self, TrainEvent};

/// A classifier's data and gate.
pub(super) struct Classifier {
    splits: Splits,
    fp32_bytes: f64,
    max_drop: f64,
    baseline_validation: f64,
}

/// Trains or reads the baseline, writes it as safetensors and measures it.
pub(super) fn baseline(recipe: &Recipe, opts: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<(Box<dyn Evaluation>, Baseline), PipelineError> {
    // A model file is read before the data, so a bad file is the error shown (and
    // costs no data loading).
    on_event(Event::Stage("baseline".into()));
    let t = Instant::now();
    let mut extra = serde_json::Map::new();
    // Ok: a model read from a file; Err: the zoo name to train.
    let loaded = match (&recipe.model.zoo, &recipe.model.file, &recipe.model.state_dict, &recipe.model.architecture) {
        (Some(name), _, _, _) => Err(name),
        (None, Some(file), _, _) => {
            let mut model = store::read_model(file)?;
            if let Some(p) = &recipe.model.preprocess {
                let op = p.to_op().map_err(|e| PipelineError::Preprocess(format!("[model.preprocess] in the recipe: {e}")))?;
                let name = model.graph.prepend("preprocess", op);
                model.graph.validate().map_err(|e| PipelineError::Preprocess(format!("[model.preprocess] in the recipe does not fit the model's input: {e}")))?;
                extra.insert("preprocess".into(), format!("{:?} (node '{name}')", model.graph.nodes[0].op).into());
            }
            extra.insert("source".into(), file.display().to_string().into());
            Ok(model)
        }
        (None, None, Some(state_dict), Some(arch)) => {
            let model = store::import_pytorch(state_dict, arch)?;
            extra.insert("source".into(), state_dict.display().to_string().into());
            extra.insert("architecture".into(), arch.display().to_string().into());
            Ok(model)
        }
        _ => return Err(PipelineError::Preprocess("[model] names no classifier source (zoo, file, or state_dict with architecture)".into())),
    };
    let splits = load_data(recipe, opts)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| PipelineError::Write { path: opts.out_dir.clone(), source })?;
    let model = match loaded {
        Ok(model) => {
            check_shapes(&store::model_plan(&model)?, &model.graph.input_shape, &splits.train)?;
            model
        }
        Err(name) => {
            let graph = zoo::build(name).ok_or_else(|| PipelineError::UnknownZoo(name.clone()))?;
            let mut model = Model::init(graph, recipe.seed)?;
            check_shapes(&store::model_plan(&model)?, &model.graph.input_shape, &splits.train)?;
            let stats = train::train(&mut model, &splits.train.images, &splits.train.labels, &train_defaults(recipe), &mut |e| on_event(Event::Train(e)));
            let sps: f64 = stats.iter().map(|s| s.samples_per_s).sum::<f64>() / stats.len().max(1) as f64;
            extra.insert("epochs".into(), stats.len().into());
            extra.insert("train_samples_per_s".into(), sps.round().into());
            extra.insert("final_train_loss".into(), stats.last().map_or(f64::NAN, |s| s.loss).into());
            model
        }
    };
    let warnings = super::input_range_warnings(recipe, &model, &splits, on_event);
    let wall = t.elapsed().as_secs_f64();
    let fp32_bytes = 4.0 * model.graph.num_params() as f64;
    let path = stage_path(opts, "baseline", "safetensors", recipe.passes.is_empty());
    guard_input(recipe, &path)?;
    store::write_safetensors(&path, &model)?;
    let stage = measure_stage(&path, "baseline", wall, fp32_bytes, &splits, extra)?;
    on_event(Event::Measured(stage.clone()));
    let eval = Classifier { splits, fp32_bytes, max_drop: recipe.gate.max_accuracy_drop, baseline_validation: stage.validation_accuracy };
    Ok((Box::new(eval), Baseline { model: Some(model), stages: vec![stage], file: path, warnings }))
}

impl Evaluation for Classifier {
    fn gate(&self) -> Gate {
        Gate { metric: "accuracy".into(), max_drop: self.max_drop, against: "baseline".into(), split: "validation".into(), measured_on: self.splits.validation_source.clone() }
    }

    fn context<'a>(&'a self, recipe: &Recipe, baseline: Option<&'a Model>, index: usize, progress: &'a mut dyn FnMut(TrainEvent)) -> Context<'a> {
        let train = &self.splits.train;
        Context {
            kind: ModelKind::Classifier,
            train: Some(train),
            validation: Some(&self.splits.validation),
            test: Some(&self.splits.test),
            calibration: Calibration { rows: &train.images, count: train.len(), lengths: None },
            train_defaults: train_defaults(recipe),
            seed: recipe.seed,
            index,
            baseline,
            tasks: None,
            progress,
        }
    }

    fn record(&mut self, path: &Path, name: &str, stored: SqzModel, coding: store::Coding, wall_s: f64, extra: serde_json::Map<String, serde_json::Value>) -> Result<Stage, PipelineError> {
        store::write_sqz(path, stored, coding)?;
        measure_stage(path, name, wall_s, self.fp32_bytes, &self.splits, extra)
    }

    fn check(&self, stage: &Stage) -> Option<String> {
        let drop = self.baseline_validation - stage.validation_accuracy;
        (drop > self.max_drop).then(|| {
            format!(
                "validation accuracy dropped {:.2} points against the baseline, more than the allowed {:.2} (by {:.2} points)",
                drop * 100.0,
                self.max_drop * 100.0,
                (drop - self.max_drop) * 100.0
            )
        })
    }
}
