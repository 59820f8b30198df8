//! Knowledge distillation: a student learns from a teacher's outputs, then fine-tunes on
//! the true labels.
//!
//! - **Soft**: loss `α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)` (Hinton et
//!   al.); the teacher's softened probabilities are computed once and cached.
//! - **Hard**: the student learns the teacher's predicted labels with plain CE.
//!
//! The *transfer set* is what the teacher labels: the training images, optionally with
//! shifted copies (a CNN teacher answers for a shifted garment almost as it does for the
//! original, so the copies carry its knowledge to places the training set does not
//! cover). A fair control ([`train_control`]) trains the same student on the same
//! transfer set with the true labels, for the same epochs and learning-rate schedule.
//! [`compare`] runs both over several seeds and measures them on a test set.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pass::{Context, ModelKind, Output, PassError, Technique};
use crate::model::{Model, ModelError};
use crate::report::{Distillation, DistillSeed};
use crate::runtime::exec::{self, Plan, RuntimeError};
use crate::rng::Rng;
use crate::train::{self, EpochStats, LrSchedule, TrainConfig, TrainEvent};

/// Why distillation cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error("temperature must be positive, got {0}")]
    Temperature(f32),
    #[error("alpha must be in [0, 1], got {0}")]
    Alpha(f32),
    #[error("the teacher has {teacher} outputs and the student {student}: a student must predict the same classes as its teacher")]
    Outputs { teacher: usize, student: usize },
    #[error("the teacher takes {teacher} input values and the student {student}: both must read the same samples")]
    Inputs { teacher: usize, student: usize },
    #[error("teacher {index} takes {got} inputs with {got_classes} outputs, the first teacher {want} with {want_classes}: an ensemble's teachers must match")]
    EnsembleMismatch { index: usize, got: usize, got_classes: usize, want: usize, want_classes: usize },
    #[error("the teacher's outputs cover {teacher} samples, the transfer set has {set}")]
    Coverage { teacher: usize, set: usize },
    #[error("student: {0}")]
    Student(String),
    #[error("unknown zoo model '{0}'")]
    UnknownZoo(String),
    #[error("no teacher given")]
    NoTeacher,
    #[error("shifted copies need images of shape [channels, height, width], got {0:?}")]
    NotImages(Vec<usize>),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
}

/// Soft targets at a temperature, or the teacher's labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Soft,
    Hard,
}

/// Distillation settings; [`Default`] is the best setting measured for the seed MLP
/// from the zoo CNN (see the README's Distillation section).
#[derive(Clone, Debug, PartialEq)]
pub struct DistillConfig {
    pub mode: Mode,
    pub temperature: f32,
    /// Weight of the teacher term; `1 − alpha` goes to the true labels (soft mode).
    pub alpha: f32,
    /// Epochs of distillation over the transfer set.
    pub epochs: usize,
    /// Epochs on the true labels afterwards (the same for the control).
    pub fine_tune_epochs: usize,
    pub lr: f32,
    pub fine_tune_lr: f32,
    pub batch_size: usize,
    pub schedule: LrSchedule,
    /// Shifted copies of every training image added to the transfer set (0 = the
    /// training images only).
    pub shifted_copies: usize,
    /// Largest shift in pixels, in each direction.
    pub max_shift: usize,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            mode: Mode::Soft,
            temperature: 1.0,
            alpha: 1.0,
            epochs: 45,
            fine_tune_epochs: 0,
            lr: 1e-3,
            fine_tune_lr: 1e-4,
            batch_size: 128,
            schedule: LrSchedule::Cosine,
            shifted_copies: 0,
            max_shift: 2,
        }
    }
}

impl DistillConfig {
    /// Checks the settings a user gives.
    pub fn check(&self) -> Result<(), DistillError> {
        if !(self.temperature > 0.0) || !self.temperature.is_finite() {
            return Err(DistillError::Temperature(self.temperature));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(DistillError::Alpha(self.alpha));
        }
        Ok(())
    }

    /// Total epochs each student trains (the control gets the same).
    pub fn total_epochs(&self) -> usize {
        self.epochs + self.fine_tune_epochs
    }
}

/// Checks that `student` reads the teacher's inputs and predicts its classes.
pub fn check_pair(teacher: &Plan, student: &Model) -> Result<(), DistillError> {
    let student_plan = crate::store::model_plan(student)?;
    if student_plan.output_len() != teacher.output_len() {
        return Err(DistillError::Outputs { teacher: teacher.output_len(), student: student_plan.output_len() });
    }
    if student.graph.input_len() != teacher.input_len() {
        return Err(DistillError::Inputs { teacher: teacher.input_len(), student: student.graph.input_len() });
    }
    Ok(())
}

/// The inputs the teacher labels and the students train on, with the true labels.
#[derive(Clone, Debug)]
pub struct TransferSet {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
}

impl TransferSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The training images followed by `copies` shifted copies of each, every copy moved by
/// a random `(dy, dx)` in `[−max_shift, max_shift]²` (not both 0) with zero fill, so an
/// image shifted off the edge loses only background on Fashion-MNIST.
pub fn transfer_set(
    images: &[f32],
    labels: &[u8],
    shape: &[usize],
    copies: usize,
    max_shift: usize,
    seed: u64,
) -> Result<TransferSet, DistillError> {
    let mut out = TransferSet { images: images.to_vec(), labels: labels.to_vec() };
    if copies == 0 || max_shift == 0 {
        return Ok(out);
    }
    let &[channels, h, w] = shape else {
        return Err(DistillError::NotImages(shape.to_vec()));
    };
    let per = channels * h * w;
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x51F7);
    let span = 2 * max_shift + 1;
    out.images.reserve(copies * images.len());
    out.labels.reserve(copies * labels.len());
    for _ in 0..copies {
        for (img, &y) in images.chunks_exact(per).zip(labels) {
            let (dy, dx) = loop {
                let dy = rng.below(span) as isize - max_shift as isize;
                let dx = rng.below(span) as isize - max_shift as isize;
                if dy != 0 || dx != 0 {
                    break (dy, dx);
                }
            };
            let start = out.images.len();
            out.images.resize(start + per, 0.0);
            let dst = &mut out.images[start..];
            for c in 0..channels {
                for r in 0..h {
                    let sr = r as isize - dy;
                    if sr < 0 || sr >= h as isize {
                        continue;
                    }
                    for col in 0..w {
                        let sc = col as isize - dx;
                        if sc >= 0 && sc < w as isize {
                            dst[(c * h + r) * w + col] = img[(c * h + sr as usize) * w + sc as usize];
                        }
                    }
                }
            }
            out.labels.push(y);
        }
    }
    Ok(out)
}

/// The teachers' outputs on a transfer set, computed once.
#[derive(Clone, Debug)]
pub struct TeacherOutputs {
    /// `softmax(logits / T)` per sample, averaged over the teachers (`n × classes`).
    pub probs: Vec<f32>,
    /// The ensemble's predicted label per sample (argmax of `probs`).
    pub labels: Vec<u8>,
    pub classes: usize,
    pub temperature: f32,
}

/// Runs every teacher over `images` once; an ensemble's softened probabilities are averaged.
pub fn teacher_outputs(teachers: &[&Plan], images: &[f32], temperature: f32) -> Result<TeacherOutputs, DistillError> {
    let first = teachers.first().ok_or(DistillError::NoTeacher)?;
    if !(temperature > 0.0) {
        return Err(DistillError::Temperature(temperature));
    }
    let classes = first.output_len();
    for (index, t) in teachers.iter().enumerate().skip(1) {
        if t.output_len() != classes || t.input_len() != first.input_len() {
            return Err(DistillError::EnsembleMismatch {
                index,
                got: t.input_len(),
                got_classes: t.output_len(),
                want: first.input_len(),
                want_classes: classes,
            });
        }
    }
    let mut probs = exec::teacher_outputs(first, images, temperature)?;
    for t in &teachers[1..] {
        let more = exec::teacher_outputs(t, images, temperature)?;
        probs.iter_mut().zip(&more).for_each(|(p, q)| *p += q);
    }
    let k = teachers.len() as f32;
    probs.iter_mut().for_each(|p| *p /= k);
    let labels = probs.chunks_exact(classes).map(|r| crate::runtime::kernels::argmax(r) as u8).collect();
    Ok(TeacherOutputs { probs, labels, classes, temperature })
}

/// Trains a zoo model as a teacher: `epochs` with a cosine schedule from 1e-3.
pub fn train_teacher(
    zoo_name: &str,
    images: &[f32],
    labels: &[u8],
    epochs: usize,
    seed: u64,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Model, DistillError> {
    let graph = crate::model::zoo::build(zoo_name).ok_or_else(|| DistillError::UnknownZoo(zoo_name.to_string()))?;
    let mut m = Model::init(graph, seed)?;
    let cfg = TrainConfig { epochs, seed, schedule: LrSchedule::Cosine, ..TrainConfig::default() };
    train::train(&mut m, images, labels, &cfg, on_event);
    Ok(m)
}

fn phase_configs(cfg: &DistillConfig, seed: u64) -> (TrainConfig, TrainConfig) {
    let main = TrainConfig {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed,
        schedule: cfg.schedule,
        ..TrainConfig::default()
    };
    let fine = TrainConfig { epochs: cfg.fine_tune_epochs, lr: cfg.fine_tune_lr, seed: seed.wrapping_add(1000), ..main.clone() };
    (main, fine)
}

/// Distils `student` in place: `cfg.epochs` on the teacher's outputs (soft or hard) over
/// the transfer set, then `cfg.fine_tune_epochs` on its true labels. Every constraint the
/// student carries (masks, codebooks) is held, so this also recovers a compressed model.
pub fn distill(
    student: &mut Model,
    set: &TransferSet,
    teacher: &TeacherOutputs,
    cfg: &DistillConfig,
    seed: u64,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Vec<EpochStats>, DistillError> {
    cfg.check()?;
    if teacher.probs.len() != set.len() * teacher.classes {
        return Err(DistillError::Coverage { teacher: teacher.probs.len() / teacher.classes.max(1), set: set.len() });
    }
    let (main, fine) = phase_configs(cfg, seed);
    let mut stats = match cfg.mode {
        Mode::Soft => {
            // The softened targets were computed at the teacher's temperature.
            let soft = train::Teacher { probs: teacher.probs.clone(), alpha: cfg.alpha, temperature: teacher.temperature };
            train::train_with(student, &set.images, &set.labels, Some(&soft), &main, on_event)
        }
        Mode::Hard => train::train(student, &set.images, &teacher.labels, &main, on_event),
    };
    if cfg.fine_tune_epochs > 0 {
        stats.extend(train::train(student, &set.images, &set.labels, &fine, on_event));
    }
    Ok(stats)
}

/// The control: `student` trained on the same transfer set with the true labels, for the
/// same epochs, rates and schedule as [`distill`].
pub fn train_control(
    student: &mut Model,
    set: &TransferSet,
    cfg: &DistillConfig,
    seed: u64,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Vec<EpochStats> {
    let (main, fine) = phase_configs(cfg, seed);
    let mut stats = train::train(student, &set.images, &set.labels, &main, on_event);
    if cfg.fine_tune_epochs > 0 {
        stats.extend(train::train(student, &set.images, &set.labels, &fine, on_event));
    }
    stats
}

/// One seed of a comparison: test accuracy of the student alone and distilled.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub control_accuracy: f64,
    pub distilled_accuracy: f64,
}

impl SeedResult {
    pub fn gain(&self) -> f64 {
        self.distilled_accuracy - self.control_accuracy
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    (mean, var.sqrt())
}

/// A comparison over seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Comparison {
    pub seeds: Vec<SeedResult>,
}

impl Comparison {
    pub fn control(&self) -> (f64, f64) {
        mean_sd(&self.seeds.iter().map(|s| s.control_accuracy).collect::<Vec<_>>())
    }
    pub fn distilled(&self) -> (f64, f64) {
        mean_sd(&self.seeds.iter().map(|s| s.distilled_accuracy).collect::<Vec<_>>())
    }
    pub fn gain(&self) -> (f64, f64) {
        mean_sd(&self.seeds.iter().map(SeedResult::gain).collect::<Vec<_>>())
    }
}

/// For each seed: a fresh student (`make_student(seed)`) distilled and another trained
/// alone as the control, both measured on `test` with the runtime. Calls `on_seed` after
/// each seed with the result and the distilled student (e.g. to keep the first).
#[allow(clippy::too_many_arguments)]
pub fn compare(
    make_student: &dyn Fn(u64) -> Result<Model, DistillError>,
    seeds: &[u64],
    set: &TransferSet,
    teacher: &TeacherOutputs,
    cfg: &DistillConfig,
    test_images: &[f32],
    test_labels: &[u8],
    on_event: &mut dyn FnMut(TrainEvent),
    on_seed: &mut dyn FnMut(&SeedResult, &Model),
) -> Result<Comparison, DistillError> {
    cfg.check()?;
    let evaluate = |m: &Model| -> Result<f64, DistillError> {
        let plan = crate::store::model_plan(m)?;
        Ok(exec::evaluate(&plan, test_images, test_labels, 2)?)
    };
    let mut out = Comparison { seeds: Vec::new() };
    for &seed in seeds {
        let mut alone = make_student(seed)?;
        train_control(&mut alone, set, cfg, seed, on_event);
        let mut student = make_student(seed)?;
        distill(&mut student, set, teacher, cfg, seed, on_event)?;
        let r = SeedResult { seed, control_accuracy: evaluate(&alone)?, distilled_accuracy: evaluate(&student)? };
        on_seed(&r, &student);
        out.seeds.push(r);
    }
    Ok(out)
}

/// The `distill` pass. Without `student`: recovery, the current (compressed) model
/// learns from the teacher with every constraint held. With `student` (a zoo name, or a
/// model file whose weights it starts from): a student is distilled and compared over
/// `seeds` seeds with the same student trained alone on the same inputs for the same
/// epochs; the stage is the first seed's distilled student. The teacher is the
/// recipe's baseline unless a file is named; `ensemble` adds teachers whose softened
/// outputs are averaged with it.
///
/// Defaults depend on the case: recovery takes temperature 4, alpha 0.9, 3 epochs at a
/// constant rate of half the training rate; a fresh student takes [`DistillConfig`]'s
/// defaults (temperature 1, alpha 1, 45 epochs, cosine schedule, the training rate),
/// the best measured for the seed MLP.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Distill {
    /// A teacher model file (relative to the recipe); default: the baseline.
    #[arg(skip)]
    pub teacher: Option<PathBuf>,
    /// More teacher files: the softened outputs of all teachers are averaged (an ensemble).
    #[serde(default)]
    #[arg(skip)]
    pub ensemble: Vec<PathBuf>,
    /// The student: a zoo name (trained from scratch) or a model file (starts from its
    /// weights); default: the current model is distilled (recovery).
    #[arg(long)]
    pub student: Option<String>,
    /// Seeds of the comparison with a student trained alone (with `student`).
    #[serde(default = "super::default_one")]
    #[arg(long, default_value_t = super::default_one())]
    pub seeds: usize,
    /// soft: the teacher's outputs softened at `temperature`; hard: its predicted labels.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub mode: Mode,
    /// Softening temperature (default 4 for recovery, 1 for a fresh student).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Weight of the distillation term; 1 − alpha goes to the true labels (default 0.9
    /// for recovery, 1 for a fresh student).
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Distillation epochs (default 3 for recovery, 45 for a fresh student).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Epochs on the true labels afterwards.
    #[serde(default)]
    #[arg(long, default_value_t = 0)]
    pub fine_tune_epochs: usize,
    /// Learning rate (default: half the training rate for recovery, the training rate
    /// for a fresh student).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learning rate of the fine-tuning epochs (default: lr / 10).
    #[arg(long)]
    pub fine_tune_lr: Option<f32>,
    /// Learning-rate schedule of each phase, for both students (default constant for
    /// recovery, cosine for a fresh student).
    #[arg(long, value_enum)]
    pub schedule: Option<LrSchedule>,
    /// Shifted copies of each training image in the transfer set.
    #[serde(default)]
    #[arg(long, default_value_t = 0)]
    pub shifted_copies: usize,
    /// Largest shift of a copy, in pixels.
    #[serde(default = "default_max_shift")]
    #[arg(long, default_value_t = default_max_shift())]
    pub max_shift: usize,
}

fn default_max_shift() -> usize {
    2
}

impl Distill {
    /// Temperature, alpha, epochs and schedule, with the defaults of the case (a fresh
    /// student or recovery).
    fn settings(&self) -> (f32, f32, usize, LrSchedule) {
        let fresh = DistillConfig::default();
        if self.student.is_some() {
            (self.temperature.unwrap_or(fresh.temperature), self.alpha.unwrap_or(fresh.alpha), self.epochs.unwrap_or(fresh.epochs), self.schedule.unwrap_or(fresh.schedule))
        } else {
            (self.temperature.unwrap_or(4.0), self.alpha.unwrap_or(0.9), self.epochs.unwrap_or(super::default_fine_tune()), self.schedule.unwrap_or_default())
        }
    }
}

/// What a `distill` stage reports in `extra` (the comparison with the control goes to
/// the stage's typed `distillation`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct DistillReport {
    pub teacher: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ensemble: Vec<String>,
    pub teacher_accuracy: f64,
    pub mode: Mode,
    pub temperature: f64,
    pub alpha: f64,
    pub epochs: usize,
    pub fine_tune_epochs: usize,
    pub schedule: LrSchedule,
    pub transfer_samples: usize,
}

/// The report's figures for a distillation compared with its control.
pub fn distillation_figures(student: &str, teacher_accuracy: f64, cmp: &Comparison, cfg: &DistillConfig, transfer_samples: usize) -> Distillation {
    let (control_accuracy, control_spread) = cmp.control();
    let (distilled_accuracy, distilled_spread) = cmp.distilled();
    let (gain, gain_spread) = cmp.gain();
    Distillation {
        student: student.to_string(),
        teacher_accuracy,
        mode: match cfg.mode {
            Mode::Soft => "soft".into(),
            Mode::Hard => "hard".into(),
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
        seeds: cmp.seeds.iter().map(|r| DistillSeed { seed: r.seed, control_accuracy: r.control_accuracy, distilled_accuracy: r.distilled_accuracy }).collect(),
    }
}

impl Technique for Distill {
    fn stage_name(&self) -> String {
        "distilled".into()
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Classifier {
            return Err(super::not_available(kind, &self.stage_name()));
        }
        let (temperature, alpha, _, _) = self.settings();
        if !(temperature > 0.0 && (0.0..=1.0).contains(&alpha)) {
            return Err(format!("pass distill: temperature must be positive and alpha in [0, 1], got {temperature} and {alpha}"));
        }
        if let Some(name) = &self.student
            && crate::model::zoo::build(name).is_none()
            && !Path::new(name).is_file()
        {
            let known: Vec<&str> = crate::model::zoo::MODELS.iter().map(|(n, _)| *n).collect();
            return Err(format!("pass distill: student: '{name}' is neither a zoo name ({}) nor a model file", known.join(", ")));
        }
        if self.seeds == 0 {
            return Err("pass distill: seeds: expected at least 1, got 0".into());
        }
        Ok(())
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let usage = |message: String| PassError::Usage { pass: "distill".into(), message };
        let train = ctx.train_data("distill")?;
        let test = ctx.test.unwrap_or(train);
        let mut plans = vec![match &self.teacher {
            Some(path) => crate::store::read(path)?.plan()?,
            None => crate::store::model_plan(ctx.baseline.ok_or_else(|| usage("no baseline model is held to teach from; name a teacher file".into()))?)?,
        }];
        for path in &self.ensemble {
            plans.push(crate::store::read(path)?.plan()?);
        }
        for plan in &plans {
            if plan.input_len() != train.sample_len() {
                return Err(usage(format!("the teacher takes {} inputs per sample, the data has {}", plan.input_len(), train.sample_len())));
            }
        }
        let (temperature, alpha, epochs, schedule) = self.settings();
        let lr = self.lr.unwrap_or(if self.student.is_some() { ctx.lr() } else { ctx.lr() * 0.5 });
        let cfg = DistillConfig {
            mode: self.mode,
            temperature,
            alpha,
            epochs,
            fine_tune_epochs: self.fine_tune_epochs,
            lr,
            fine_tune_lr: self.fine_tune_lr.unwrap_or(lr / 10.0),
            batch_size: ctx.train_defaults.batch_size,
            schedule,
            shifted_copies: self.shifted_copies,
            max_shift: self.max_shift,
        };
        let stage_seed = ctx.pass_seed();
        let set = transfer_set(&train.images, &train.labels, &train.sample_shape, self.shifted_copies, self.max_shift, stage_seed)?;
        let teacher_accuracy = exec::evaluate(&plans[0], &test.images, &test.labels, 2)?;
        let refs: Vec<&Plan> = plans.iter().collect();
        let outputs = teacher_outputs(&refs, &set.images, temperature)?;
        let mut lines = Vec::new();
        if plans.len() > 1 {
            let n = train.len();
            let agree = outputs.labels[..n].iter().zip(&train.labels).filter(|(a, b)| a == b).count();
            lines.push(format!("ensemble of {} teachers: agrees with {:.2}% of the training labels", plans.len(), 100.0 * agree as f64 / n as f64));
        }
        let figures = match &self.student {
            None => {
                check_pair(&plans[0], model)?;
                distill(model, &set, &outputs, &cfg, stage_seed, ctx.progress)?;
                None
            }
            Some(name) => {
                let graph = crate::model::zoo::build(name);
                let file = if graph.is_none() { Some(crate::store::read_model(Path::new(name))?) } else { None };
                let make = |seed: u64| -> Result<Model, DistillError> {
                    match (&graph, &file) {
                        (Some(g), _) => Ok(Model::init(g.clone(), seed)?),
                        (None, Some(m)) => Ok(m.clone()),
                        (None, None) => Err(DistillError::UnknownZoo(name.clone())),
                    }
                };
                check_pair(&plans[0], &make(0)?)?;
                let seed_list: Vec<u64> = (0..self.seeds as u64).map(|k| ctx.seed.wrapping_add(k)).collect();
                let mut first: Option<Model> = None;
                let cmp = compare(&make, &seed_list, &set, &outputs, &cfg, &test.images, &test.labels, ctx.progress, &mut |r, m| {
                    lines.push(format!(
                        "seed {}: student alone {:.2}%, distilled {:.2}% ({:+.2} points; {} epochs each over {} samples)",
                        r.seed,
                        r.control_accuracy * 100.0,
                        r.distilled_accuracy * 100.0,
                        r.gain() * 100.0,
                        cfg.total_epochs(),
                        set.len()
                    ));
                    if first.is_none() {
                        first = Some(m.clone());
                    }
                })?;
                *model = first.ok_or_else(|| usage("seeds: expected at least 1, got 0".into()))?;
                let figures = distillation_figures(name, teacher_accuracy, &cmp, &cfg, set.len());
                lines.push(format!(
                    "mean over {} seeds: alone {:.2}% ± {:.2}, distilled {:.2}% ± {:.2}, gain {:+.2} ± {:.2} points (teacher {:.2}%)",
                    cmp.seeds.len(),
                    figures.control_accuracy * 100.0,
                    figures.control_spread * 100.0,
                    figures.distilled_accuracy * 100.0,
                    figures.distilled_spread * 100.0,
                    figures.gain * 100.0,
                    figures.gain_spread * 100.0,
                    teacher_accuracy * 100.0
                ));
                Some(figures)
            }
        };
        let mut out = Output::model(&DistillReport {
            teacher: self.teacher.as_ref().map_or("baseline".to_string(), |p| p.display().to_string()),
            ensemble: self.ensemble.iter().map(|p| p.display().to_string()).collect(),
            teacher_accuracy,
            mode: self.mode,
            temperature: f64::from(temperature),
            alpha: f64::from(alpha),
            epochs,
            fine_tune_epochs: self.fine_tune_epochs,
            schedule,
            transfer_samples: set.len(),
        });
        out.distillation = figures;
        out.lines = lines;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_copies_move_pixels_and_keep_labels() {
        // One 1×3×3 image with a single lit pixel in the middle.
        let mut img = vec![0.0f32; 9];
        img[4] = 1.0;
        let set = transfer_set(&img, &[7], &[1, 3, 3], 5, 1, 3).unwrap();
        assert_eq!(set.len(), 6);
        assert_eq!(set.labels, vec![7; 6]);
        assert_eq!(&set.images[..9], &img[..]);
        for copy in set.images[9..].chunks(9) {
            // Moved by one pixel at most in each direction, not in place, nothing lost.
            assert_eq!(copy.iter().sum::<f32>(), 1.0);
            assert_eq!(copy[4], 0.0);
        }
        assert!(matches!(transfer_set(&img, &[7], &[9], 1, 1, 3), Err(DistillError::NotImages(_))));
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let bad_t = DistillConfig { temperature: 0.0, ..Default::default() };
        assert!(matches!(bad_t.check(), Err(DistillError::Temperature(_))));
        let bad_a = DistillConfig { alpha: 1.5, ..Default::default() };
        assert!(matches!(bad_a.check(), Err(DistillError::Alpha(_))));
        assert!(DistillConfig::default().check().is_ok());
    }

    #[test]
    fn mean_and_spread() {
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_sd(&[4.0]), (4.0, 0.0));
    }
}
