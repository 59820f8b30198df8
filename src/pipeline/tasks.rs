//! Recipes with `[[task]]` tables: parameter sharing across models.
//!
//! Stages: `separate-<task>`, one separately trained model per task (the reference,
//! each written and measured on its own task's labels), then one stage per
//! `share_tasks` pass: the one multi-head file, measured per task from the file as
//! stored. The gate holds each task's validation accuracy within `max_accuracy_drop`
//! of its separate model. Shared stages add to `extra`: `tasks` (per task: `task`,
//! `accuracy`, `validation_accuracy`, `separate_accuracy`, `separate_validation_accuracy`,
//! `delta_points`), `separate_bytes` (the separate files together) and
//! `bytes_fraction_of_separate`.

use std::path::Path;
use std::time::Instant;

use super::{Baseline, Evaluation, Event, PipelineError, RunOptions, guard_input, load_data, measure_stage};
use crate::compress::multitask::{self, MultitaskConfig, Task};
use crate::compress::pass::{Calibration, Context, ModelKind, TaskSet};
use crate::data::{Dataset, Splits};
use crate::format::sqz::SqzModel;
use crate::model::{Model, zoo};
use crate::recipe::Recipe;
use crate::report::{Gate, Stage, TaskAccuracy};
use crate::spec::Graph;
use crate::store;
use crate::train::{TrainConfig, TrainEvent};

/// A copy of `data` with the task's labels (used for the validation and test splits
/// only, to measure each task).
fn relabeled(data: &Dataset, task: &Task) -> Dataset {
    Dataset {
        images: data.images.clone(),
        labels: task.relabel(&data.labels),
        sample_shape: data.sample_shape.clone(),
        num_classes: task.classes(),
    }
}

/// The task models, their splits relabelled per task, and the separate models' figures.
pub(super) struct Tasks {
    tasks: Vec<Task>,
    graphs: Vec<Graph>,
    separate: Vec<Model>,
    cfg: MultitaskConfig,
    splits: Splits,
    task_splits: Vec<Splits>,
    /// Per task: the separate model's test and validation accuracy.
    reference: Vec<(f64, f64)>,
    separate_bytes: u64,
    separate_fp32: f64,
    max_drop: f64,
}

/// Trains a model per task (the reference), writes and measures each on its own labels.
pub(super) fn baseline(recipe: &Recipe, opts: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<(Box<dyn Evaluation>, Baseline), PipelineError> {
    let tasks: Vec<Task> = recipe.tasks.iter().map(|t| Task { name: t.name.clone(), labels: t.labels.clone() }).collect();
    let mut graphs = Vec::with_capacity(tasks.len());
    for section in &recipe.tasks {
        let name = section.zoo.as_ref().or(recipe.model.zoo.as_ref()).ok_or_else(|| PipelineError::UnknownZoo(String::new()))?;
        let g = zoo::build(name).ok_or_else(|| PipelineError::UnknownZoo(name.clone()))?;
        let head = multitask::find_head(&g)?;
        graphs.push((g, head));
    }
    let graphs: Vec<Graph> = graphs.iter().zip(&tasks).map(|((g, head), task)| multitask::task_graph(g, head, task.classes())).collect();
    multitask::check_trunks(&tasks, &graphs)?;
    // The models are checked before the data is read (a mistake costs no time).
    let splits = load_data(recipe, opts)?;
    multitask::check_tasks(&tasks, splits.train.num_classes)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| PipelineError::Write { path: opts.out_dir.clone(), source })?;
    let cfg = MultitaskConfig {
        train: TrainConfig {
            epochs: recipe.train.epochs,
            batch_size: recipe.train.batch_size,
            lr: recipe.train.lr,
            seed: recipe.seed,
            ..TrainConfig::default()
        },
    };
    // Measuring reads only the validation and test splits.
    let task_splits: Vec<Splits> = tasks
        .iter()
        .map(|t| Splits {
            train: Dataset { images: Vec::new(), labels: Vec::new(), sample_shape: splits.train.sample_shape.clone(), num_classes: t.classes() },
            validation: relabeled(&splits.validation, t),
            test: relabeled(&splits.test, t),
            validation_source: splits.validation_source.clone(),
        })
        .collect();

    on_event(Event::Stage("separate".into()));
    let t = Instant::now();
    let separate = multitask::train_separate(&tasks, &graphs, &splits.train, &cfg, &mut |e| on_event(Event::Train(e)))?;
    let train_wall = t.elapsed().as_secs_f64() / tasks.len() as f64;
    let mut reference = Vec::new();
    let mut stages = Vec::new();
    let (mut separate_bytes, mut separate_fp32) = (0u64, 0.0f64);
    let mut file = opts.out_dir.clone();
    for (t, (task, model)) in tasks.iter().zip(&separate).enumerate() {
        let path = opts.out_dir.join(format!("separate-{}.sqz", task.name));
        let _ = crate::outdir::record(&path);
        guard_input(recipe, &path)?;
        let start = Instant::now();
        store::write_sqz(&path, store::stored_f32(model), store::Coding::Entropy)?;
        let fp32 = 4.0 * model.graph.num_params() as f64;
        let mut extra = serde_json::Map::new();
        extra.insert("task".into(), task.name.clone().into());
        extra.insert("classes".into(), task.classes().into());
        extra.insert("labels".into(), task.labels.clone().into());
        extra.insert("epochs".into(), cfg.train.epochs.into());
        let wall = train_wall + start.elapsed().as_secs_f64();
        let stage = measure_stage(&path, &format!("separate-{}", task.name), wall, fp32, &task_splits[t], extra)?;
        on_event(Event::Measured(stage.clone()));
        reference.push((stage.accuracy, stage.validation_accuracy));
        separate_bytes += stage.bytes;
        separate_fp32 += fp32;
        stages.push(stage);
        file = path;
    }
    let first = separate.first().cloned();
    let eval = Tasks { tasks, graphs, separate, cfg, splits, task_splits, reference, separate_bytes, separate_fp32, max_drop: recipe.gate.max_accuracy_drop };
    Ok((Box::new(eval), Baseline { model: first, stages, file, warnings: Vec::new() }))
}

impl Evaluation for Tasks {
    fn gate(&self) -> Gate {
        Gate { metric: "accuracy (every task)".into(), max_drop: self.max_drop, against: format!("separate-{}", self.tasks[0].name), split: "validation".into(), measured_on: self.splits.validation_source.clone() }
    }

    fn context<'a>(&'a self, recipe: &Recipe, baseline: Option<&'a Model>, index: usize, progress: &'a mut dyn FnMut(TrainEvent)) -> Context<'a> {
        Context {
            kind: ModelKind::Tasks,
            train: Some(&self.splits.train),
            validation: Some(&self.splits.validation),
            test: Some(&self.splits.test),
            calibration: Calibration::default(),
            train_defaults: self.cfg.train.clone(),
            seed: recipe.seed,
            index,
            baseline,
            tasks: Some(TaskSet { tasks: &self.tasks, graphs: &self.graphs, separate: &self.separate, config: &self.cfg }),
            progress,
        }
    }

    fn record(&mut self, path: &Path, name: &str, stored: SqzModel, coding: store::Coding, wall_s: f64, extra: serde_json::Map<String, serde_json::Value>) -> Result<Stage, PipelineError> {
        store::write_sqz(path, stored, coding)?;
        let mut stage = measure_stage(path, name, wall_s, self.separate_fp32, &self.task_splits[0], extra)?;
        // Every task runs from the one file as stored.
        let plan = store::read(path)?.plan()?;
        let test = multitask::task_accuracies(&plan, &self.tasks, &self.splits.test)?;
        let val = multitask::task_accuracies(&plan, &self.tasks, &self.splits.validation)?;
        let rows = self
            .tasks
            .iter()
            .enumerate()
            .map(|(t, task)| TaskAccuracy {
                task: task.name.clone(),
                accuracy: test[t],
                validation_accuracy: val[t],
                separate_accuracy: self.reference[t].0,
                separate_validation_accuracy: self.reference[t].1,
                delta_points: 100.0 * (test[t] - self.reference[t].0),
            })
            .collect();
        stage.tasks = Some(rows);
        stage.extra.insert("separate_bytes".into(), self.separate_bytes.into());
        stage.extra.insert("bytes_fraction_of_separate".into(), (stage.bytes as f64 / self.separate_bytes as f64).into());
        Ok(stage)
    }

    fn check(&self, stage: &Stage) -> Option<String> {
        let rows = stage.tasks.as_ref()?;
        let worst = (0..rows.len()).max_by(|&a, &b| (self.reference[a].1 - rows[a].validation_accuracy).total_cmp(&(self.reference[b].1 - rows[b].validation_accuracy)))?;
        let drop = self.reference[worst].1 - rows[worst].validation_accuracy;
        (drop > self.max_drop).then(|| {
            format!(
                "task '{}': validation accuracy dropped {:.2} points against its separate model, more than the allowed {:.2}",
                self.tasks[worst].name,
                drop * 100.0,
                self.max_drop * 100.0
            )
        })
    }
}
