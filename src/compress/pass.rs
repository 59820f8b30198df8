//! The pass interface: what every technique implements, what it may read, and what it
//! returns. One technique is one config type (serde for recipes, clap for the verbs:
//! the same fields) implementing [`Technique`]; [`super::PassConfig`] lists them.
//!
//! A pass changes the model in place (and records the constraints later passes keep:
//! masks, codebooks, hashes), or returns its stored form ([`Stored::Encoded`]), and says
//! what it did in a typed summary serialised into the stage's `extra`. Fine-tuning is
//! [`Context::fine_tune`]'s job alone, so every pass holds every constraint the same way.

use serde::Serialize;

use crate::data::Dataset;
use crate::format::sqz::SqzModel;
use crate::model::Model;
use crate::report::Distillation;
use crate::train::{self, GroupLasso, TrainConfig, TrainEvent};

/// The kind of model a recipe compresses; it decides which data a pass can read and
/// how its stages are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A classifier with labelled training data (fine-tuning possible), gated by accuracy.
    Classifier,
    /// A sentence embedder: calibration sentences, no labels, gated by cosine fidelity.
    Embedder,
    /// Several task models from one data set (parameter sharing across models).
    Tasks,
}

impl ModelKind {
    /// How the kind is named in messages.
    pub fn describe(self) -> &'static str {
        match self {
            ModelKind::Classifier => "classifier recipes",
            ModelKind::Embedder => "hf_dir models",
            ModelKind::Tasks => "recipes with [[task]] tables",
        }
    }
}

/// Why a pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("prune: {0}")]
    Prune(#[from] super::prune::PruneError),
    #[error("share: {0}")]
    Share(#[from] super::share::ShareError),
    #[error("trim: {0}")]
    Trim(#[from] super::trim::TrimError),
    #[error("hash: {0}")]
    Hash(#[from] super::hashed::HashError),
    #[error("share_tasks: {0}")]
    Multitask(#[from] super::multitask::MultitaskError),
    #[error("quantize: {0}")]
    Quantize(#[from] super::quantize::QuantizeError),
    #[error(transparent)]
    Smooth(#[from] super::smooth::SmoothError),
    #[error("distill: {0}")]
    Distill(#[from] super::distill::DistillError),
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::exec::RuntimeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("pass '{pass}': {message}")]
    Usage { pass: String, message: String },
}

/// Calibration inputs: rows of model input (images, or token ids padded to the model's
/// length) and, for text, each row's number of real tokens.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calibration<'a> {
    pub rows: &'a [f32],
    pub count: usize,
    pub lengths: Option<&'a [usize]>,
}

impl<'a> Calibration<'a> {
    /// The first `n` rows (all when fewer), with their lengths.
    pub fn first(&self, n: usize) -> Calibration<'a> {
        let k = n.min(self.count);
        let per = self.rows.len().checked_div(self.count).unwrap_or(0);
        Calibration { rows: &self.rows[..k * per], count: k, lengths: self.lengths.map(|l| &l[..k]) }
    }
}

/// Fine-tuning settings a pass asks for; the rest comes from the recipe's `[train]`.
#[derive(Clone, Debug, Default)]
pub struct FineTune {
    pub epochs: usize,
    pub lr: f32,
    pub seed: u64,
    /// L1 penalty on every weight (soft pruning).
    pub l1: f32,
    /// Group lasso on the rows of these weight tensors (soft trimming).
    pub group_lasso: Option<GroupLasso>,
}

/// Several task models sharing one data set: what a `share_tasks` pass reads.
pub struct TaskSet<'a> {
    pub tasks: &'a [super::multitask::Task],
    pub graphs: &'a [crate::spec::Graph],
    pub separate: &'a [Model],
    pub config: &'a super::multitask::MultitaskConfig,
}

/// What a pass may read besides the model.
pub struct Context<'a> {
    pub kind: ModelKind,
    /// Labelled training data (fine-tuning, transfer sets); `None` for embedders.
    pub train: Option<&'a Dataset>,
    /// Labelled validation and test data, for a pass that reports a control it trained
    /// (soft pruning's hard control, a distillation teacher's accuracy).
    pub validation: Option<&'a Dataset>,
    pub test: Option<&'a Dataset>,
    /// Calibration rows: the first training images of a classifier, the calibration
    /// sentences of an embedder (empty when the recipe names none).
    pub calibration: Calibration<'a>,
    /// The recipe's `[train]` settings: batch size, learning rate, schedule.
    pub train_defaults: TrainConfig,
    /// The recipe's seed.
    pub seed: u64,
    /// The pass's position in the recipe (0-based).
    pub index: usize,
    /// The uncompressed model (the default distillation teacher), when it is held.
    pub baseline: Option<&'a Model>,
    /// The task models, for `share_tasks`.
    pub tasks: Option<TaskSet<'a>>,
    pub progress: &'a mut dyn FnMut(TrainEvent),
}

impl<'a> Context<'a> {
    /// The seed of this pass's randomness: the recipe's seed + 1000·(position + 1).
    pub fn pass_seed(&self) -> u64 {
        self.seed.wrapping_add(1000 * (self.index as u64 + 1))
    }

    /// The recipe's training rate (the default every pass's rate is scaled from).
    pub fn lr(&self) -> f32 {
        self.train_defaults.lr
    }

    /// The labelled training data, or a usage error naming `pass` when the model kind
    /// has none (an embedder cannot be fine-tuned here).
    pub fn train_data(&self, pass: &str) -> Result<&'a Dataset, PassError> {
        self.train.ok_or_else(|| PassError::Usage {
            pass: pass.into(),
            message: format!("needs labelled training data, which {} do not have", self.kind.describe()),
        })
    }

    /// Fine-tunes `model` with every constraint it carries held (masks stay zero, shared
    /// weights stay shared, hashes stay hashed): the one place passes train.
    pub fn fine_tune(&mut self, pass: &str, model: &mut Model, ft: FineTune) -> Result<(), PassError> {
        // Zero epochs is a no-op only where there is no data (an embedder's one-shot
        // passes); elsewhere the trainer still runs, as it always has.
        if self.train.is_none() && ft.epochs == 0 && ft.l1 == 0.0 && ft.group_lasso.is_none() {
            return Ok(());
        }
        let data = self.train_data(pass)?;
        let cfg = TrainConfig { epochs: ft.epochs, lr: ft.lr, seed: ft.seed, l1: ft.l1, group_lasso: ft.group_lasso, ..self.train_defaults.clone() };
        train::train(model, &data.images, &data.labels, &cfg, self.progress);
        Ok(())
    }

    /// Test and validation accuracy of `model` run from its f32 plan (a control's figures).
    pub fn accuracies(&self, model: &Model) -> Result<(f64, f64), PassError> {
        let plan = crate::store::model_plan(model)?;
        Ok((accuracy_on(&plan, self.test)?, accuracy_on(&plan, self.validation)?))
    }

    /// Validation accuracy of `model` run from its f32 plan (a gradual pass's steps).
    pub fn validation_accuracy(&self, model: &Model) -> Result<f64, PassError> {
        accuracy_on(&crate::store::model_plan(model)?, self.validation)
    }
}

/// Accuracy of `plan` on `data`, NaN when there is none.
fn accuracy_on(plan: &crate::runtime::exec::Plan, data: Option<&Dataset>) -> Result<f64, PassError> {
    match data {
        Some(d) => Ok(crate::runtime::exec::evaluate(plan, &d.images, &d.labels, 2)?),
        None => Ok(f64::NAN),
    }
}

/// How the stage of a pass is stored.
#[derive(Debug)]
pub enum Stored {
    /// The changed model as it is: f32 (f16 where exact), sparse where masked, codebook
    /// indices where shared, buckets where hashed.
    Model,
    /// An encoded form the pass made (int8, int4): the last pass of a recipe.
    Encoded(Box<SqzModel>),
}

/// What a pass returns.
#[derive(Debug)]
pub struct Output {
    pub stored: Stored,
    /// Write the stage with Huffman-coded indices and positions.
    pub entropy_coding: bool,
    /// The stage's name when it depends on the result (e.g. `pruned-50`); else
    /// [`Technique::stage_name`].
    pub name: Option<String>,
    /// The pass's typed summary, serialised: the stage's `extra`.
    pub details: serde_json::Map<String, serde_json::Value>,
    /// A distillation compared with its control.
    pub distillation: Option<Distillation>,
    /// What the pass did, in a few lines for a person (printed by the verbs and `run`).
    pub lines: Vec<String>,
}

impl Output {
    /// The model stored as it is, with `details`.
    pub fn model(details: &impl Serialize) -> Output {
        Output { stored: Stored::Model, entropy_coding: false, name: None, details: details_map(details), distillation: None, lines: Vec::new() }
    }

    /// An encoded stage, with `details`.
    pub fn encoded(stored: SqzModel, details: &impl Serialize) -> Output {
        Output { stored: Stored::Encoded(Box::new(stored)), entropy_coding: false, name: None, details: details_map(details), distillation: None, lines: Vec::new() }
    }
}

/// A typed summary as the JSON object of a stage's `extra` (`None` fields left out).
pub fn details_map(details: &impl Serialize) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(details) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// One compression technique.
pub trait Technique {
    /// The stage name in reports (before the pass ran).
    fn stage_name(&self) -> String;

    /// Checks the configuration's values and that the pass can run on `kind`: the one
    /// place that says which pass may run where. Messages name the key and the value.
    fn check(&self, kind: ModelKind) -> Result<(), String>;

    /// Whether no pass may follow this one (its stored form is final).
    fn is_final(&self) -> bool {
        false
    }

    /// Applies the technique to `model` (in place, when it stores the model as it is).
    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError>;
}

/// A fraction in `[0, 1)` or a message naming `what`.
pub fn check_fraction(pass: &str, what: &str, v: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&v) { Ok(()) } else { Err(format!("pass {pass}: {what}: expected a fraction in [0, 1), got {v}")) }
}

