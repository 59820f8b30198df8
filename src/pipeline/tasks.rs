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

use std::path::PathBuf;
use std::time::Instant;

use super::{Event, PipelineError, RunOptions, guard_input, load_data, measure_stage, write_report, gate_failed};
use crate::compress::multitask::{self, MultitaskConfig, SoftConfig, Task};
use crate::compress::quantize;
use crate::data::{Dataset, Splits};
use crate::model::zoo;
use crate::recipe::{Pass, Recipe, ShareForm};
use crate::report::Report;
use crate::store;
use crate::train::TrainConfig;

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

/// Runs a recipe with tasks (see the module docs).
pub(super) fn run(recipe: &Recipe, opts: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<Report, PipelineError> {
    let splits = load_data(recipe, opts)?;
    let tasks: Vec<Task> = recipe.tasks.iter().map(|t| Task { name: t.name.clone(), labels: t.labels.clone() }).collect();
    multitask::check_tasks(&tasks, splits.train.num_classes)?;
    let mut graphs = Vec::with_capacity(tasks.len());
    for (section, task) in recipe.tasks.iter().zip(&tasks) {
        let name = section.zoo.as_ref().or(recipe.model.zoo.as_ref()).ok_or_else(|| PipelineError::UnknownZoo(String::new()))?;
        let g = zoo::build(name).ok_or_else(|| PipelineError::UnknownZoo(name.clone()))?;
        let head = multitask::find_head(&g)?;
        graphs.push(multitask::task_graph(&g, &head, task.classes()));
    }
    multitask::check_trunks(&tasks, &graphs)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| PipelineError::Write { path: opts.out_dir.clone(), source })?;

    let mut report = super::new_report(recipe, opts, "accuracy (every task)", &format!("separate-{}", tasks[0].name));
    super::describe_data(&mut report, &splits);
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
    let mut reference = Vec::new(); // (test, validation) per task
    let (mut separate_bytes, mut separate_fp32) = (0u64, 0.0f64);
    for (t, (task, model)) in tasks.iter().zip(&separate).enumerate() {
        let path = opts.out_dir.join(format!("separate-{}.sqz", task.name));
        guard_input(recipe, &path)?;
        let start = Instant::now();
        store::write_sqz(&path, &quantize::store_f32(model))?;
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
        report.stages.push(stage);
    }

    let last = recipe.passes.len();
    for (i, pass) in recipe.passes.iter().enumerate() {
        let Pass::ShareTasks { form, penalty, head_epochs, head_lr } = pass else {
            // Recipe::parse allows only share_tasks passes next to tasks.
            return Err(multitask::MultitaskError::NoTasks.into());
        };
        let name = pass.stage_name();
        on_event(Event::Stage(name.clone()));
        let t = Instant::now();
        let mut extra = serde_json::Map::new();
        let shared = match form {
            ShareForm::Hard => multitask::share_hard(&tasks, &separate, &splits.train, &cfg, &mut |e| on_event(Event::Train(e)))?,
            ShareForm::Soft => {
                let soft = SoftConfig {
                    strength: *penalty,
                    epochs: recipe.train.epochs,
                    head_epochs: *head_epochs,
                    head_lr: head_lr.unwrap_or(recipe.train.lr * 0.1),
                };
                let (m, summary) = multitask::share_soft(&tasks, &graphs, &splits.train, &cfg, &soft, &mut |e| on_event(Event::Train(e)))?;
                extra.insert("penalty".into(), f64::from(*penalty).into());
                extra.insert("head_epochs".into(), (*head_epochs).into());
                extra.insert("trunk_rms_distance_before_merge".into(), summary.trunk_rms_distance.into());
                m
            }
        };
        extra.insert("form".into(), (if *form == ShareForm::Hard { "hard" } else { "soft" }).into());
        let path: PathBuf = opts.out_dir.join(if i + 1 == last { "model.sqz".to_string() } else { format!("{name}.sqz") });
        guard_input(recipe, &path)?;
        store::write_sqz(&path, &quantize::store_f32(&shared))?;
        let wall = t.elapsed().as_secs_f64();
        let mut stage = measure_stage(&path, &name, wall, separate_fp32, &task_splits[0], extra)?;
        // Every task runs from the one file as stored.
        let plan = store::read(&path)?.plan()?;
        let test = multitask::task_accuracies(&plan, &tasks, &splits.test)?;
        let val = multitask::task_accuracies(&plan, &tasks, &splits.validation)?;
        let rows: Vec<serde_json::Value> = tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                serde_json::json!({
                    "task": task.name, "accuracy": test[t], "validation_accuracy": val[t],
                    "separate_accuracy": reference[t].0, "separate_validation_accuracy": reference[t].1,
                    "delta_points": 100.0 * (test[t] - reference[t].0),
                })
            })
            .collect();
        stage.extra.insert("tasks".into(), rows.into());
        stage.extra.insert("separate_bytes".into(), separate_bytes.into());
        stage.extra.insert("bytes_fraction_of_separate".into(), (stage.bytes as f64 / separate_bytes as f64).into());
        on_event(Event::Measured(stage.clone()));
        report.stages.push(stage);
        let worst = (0..tasks.len()).max_by(|&a, &b| (reference[a].1 - val[a]).total_cmp(&(reference[b].1 - val[b]))).unwrap_or(0);
        let drop = reference[worst].1 - val[worst];
        if drop > recipe.gate.max_accuracy_drop {
            let reason = format!(
                "task '{}': validation accuracy dropped {:.2} points against its separate model, more than the allowed {:.2}",
                tasks[worst].name,
                drop * 100.0,
                recipe.gate.max_accuracy_drop * 100.0
            );
            return Err(gate_failed(&mut report, &opts.out_dir, name, reason));
        }
    }
    write_report(&report, &opts.out_dir)?;
    Ok(report)
}
