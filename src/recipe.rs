//! Recipes: a TOML file naming the model, the data, the training, the passes and the
//! validation gate. Unknown keys are errors, reported with the file and the key.
//!
//! ```toml
//! name = "seed"
//! seed = 1234
//! [model]
//! zoo = "mlp"                 # or: file = "model.safetensors" / "model.sqz"
//! [data]
//! dataset = "fashion-mnist"   # or "idx", "numpy", "images": see DataSection
//! validation = 5000           # held out of the training images; the gate reads it
//! [train]
//! epochs = 10
//! batch_size = 128
//! lr = 0.001
//! [gate]
//! max_accuracy_drop = 0.005   # fraction: 0.005 = half a point, against the baseline
//! [[pass]]
//! type = "prune"
//! sparsity = 0.5
//! fine_tune_epochs = 3
//! [[pass]]
//! type = "quantize"
//! mode = "full"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;


use crate::compress::pass::ModelKind;
use crate::train::LrSchedule;

/// Why a recipe cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe '{path}': {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("recipe '{path}': {message}")]
    Parse { path: PathBuf, message: String },
    #[error("recipe '{path}': {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A parsed, checked recipe.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub model: ModelSource,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    pub gate: GateSection,
    #[serde(default, rename = "pass")]
    pub passes: Vec<Pass>,
    /// Parameter sharing across models: the tasks (`[[task]]` tables). A recipe with
    /// tasks trains a model per task (the reference) and runs only `share_tasks` passes.
    #[serde(default, rename = "task")]
    pub tasks: Vec<TaskSection>,
}

/// One task of a multi-task recipe:
///
/// ```toml
/// [[task]]
/// name = "coarse"                        # unique; names the head and the report rows
/// labels = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2] # the task's label for each data-set class
/// zoo = "mlp"                            # optional: this task's architecture (default [model])
/// ```
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    pub name: String,
    pub labels: Vec<u8>,
    pub zoo: Option<String>,
}

pub use crate::compress::multitask::ShareForm;

fn default_seed() -> u64 {
    1234
}

/// Where the model comes from: a zoo architecture trained from scratch, or a file.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    pub zoo: Option<String>,
    /// A trained model (`.safetensors` or `.sqz`), relative to the recipe's directory;
    /// it is the baseline and is not retrained.
    pub file: Option<PathBuf>,
    /// A PyTorch state dict (`.pth`/`.pt` zip or `.safetensors`), relative to the
    /// recipe; needs `architecture`. It is the baseline and is not retrained.
    pub state_dict: Option<PathBuf>,
    /// The architecture description (TOML layer list) for `state_dict`.
    pub architecture: Option<PathBuf>,
    /// Preprocessing to put in front of a `file` model (e.g. an ONNX file whose graph
    /// does not normalise its input itself): `scale`, `mean`, `std` as in an
    /// architecture description's `[preprocess]`. It becomes part of the model.
    pub preprocess: Option<crate::format::arch::Preprocess>,
    /// A Hugging Face BERT directory (config.json, model.safetensors, tokenizer.json),
    /// relative to the recipe: an embedding model, gated by cosine fidelity (needs
    /// `[data] dataset = "text"` and the `[gate]` cosine bounds).
    pub hf_dir: Option<PathBuf>,
    /// Tokens per input of an `hf_dir` model (default: the tokenizer's truncation length).
    pub seq_len: Option<usize>,
}

impl ModelSource {
    /// A trained model file (the baseline, not retrained).
    pub fn file(path: &Path) -> ModelSource {
        ModelSource { zoo: None, file: Some(path.to_path_buf()), state_dict: None, architecture: None, preprocess: None, hf_dir: None, seq_len: None }
    }

    /// A zoo architecture the run trains from scratch (with `[train]`).
    pub fn zoo(name: &str) -> ModelSource {
        ModelSource { zoo: Some(name.to_string()), file: None, state_dict: None, architecture: None, preprocess: None, hf_dir: None, seq_len: None }
    }
}

/// A verb's recipe of one pass ([`Recipe::one_pass`]) before it is checked: the verb
/// sets the fields it takes (`[train]` for a zoo model, `[[task]]` tables), then
/// [`OnePass::checked`] runs every check a recipe file gets.
#[derive(Clone, Debug)]
pub struct OnePass(pub Recipe);

impl OnePass {
    pub fn checked(self) -> Result<Recipe, RecipeError> {
        self.0.validated(Path::new("(command line)"))
    }
}

/// The `[data]` table: which data set, and where the gate's validation split comes from.
///
/// ```toml
/// [data]
/// dataset = "fashion-mnist"   # or "idx" (with dir), "numpy", "images", "text"
/// validation = 5000           # the validation split's size (see validation_from)
/// ```
///
/// Data sets:
/// - `"fashion-mnist"` (default): the four IDX files in `dir`, else `--data`,
///   `$SQUEEZE_DATA`, `/usr/share/datasets/fashion-mnist`; 10 classes.
/// - `"idx"`: any MNIST-format IDX set (MNIST, KMNIST, …) in `dir` (required): the four
///   files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
///   `t10k-labels-idx1-ubyte`, each raw or `.gz`; classes = the largest label + 1. The
///   report's `dataset` is `idx (<dir>)`.
/// - `"numpy"`: `train` and `test` arrays (`file.npz` with `x`, `y`, or
///   `inputs.npy,labels.npy`). uint8 inputs are divided by 255, float inputs are taken as
///   they are (squeeze's zoo and imported image models expect `[0, 1]`).
/// - `"images"`: `train` and `test` folders of PNG/JPEG images, each with one subfolder
///   per class (sorted names = label order) or a `labels` file; decoded to `channels`
///   (1 = grayscale, 3 = RGB), resized to cover `size = [rows, cols]` (aspect kept,
///   centre-cropped), scaled to `[0, 1]`; samples are `[channels, rows, cols]`. The
///   report's `dataset` is `images (<train folder>)`.
///
/// The validation split (what the gate reads; never the reported test accuracy):
/// - default, `validation_from = "train"`: the last `validation` (default 5000) training
///   samples, held out of training. Right for a model trained here; a model imported
///   from elsewhere was usually trained on all of them, so the gate would measure
///   training accuracy;
/// - `validation_from = "test"` with `validation = N` (required): the first N test
///   samples; the test accuracy is then measured on the rest, so the two never overlap;
/// - `validation_arrays = "val.npz"` (or `"x.npy,y.npy"`, relative to the recipe): a
///   separate labelled set of the same per-sample shape (uint8 inputs divided by 255,
///   like `"numpy"`); it excludes `validation` and `validation_from`.
///
/// The report's `gate.measured_on` says which, e.g. `"5000 held out of training images"`.
/// An empty validation split is an error: it would score 0% at every stage and pass any
/// model.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    pub dataset: String,
    /// Directory of the IDX files (else `--data`, `$SQUEEZE_DATA`, the Debian path); as
    /// given (relative to the working directory). Required for `dataset = "idx"`.
    pub dir: Option<PathBuf>,
    /// Samples in the validation split: held out of the training data (default 5000), or
    /// with `validation_from = "test"` the first N test samples. At least 1.
    pub validation: Option<usize>,
    /// Where the validation split comes from: `"train"` (default) or `"test"`.
    pub validation_from: Option<ValidationSplit>,
    /// A separate validation set, `val.npz` (arrays `x`, `y`) or `inputs.npy,labels.npy`,
    /// relative to the recipe.
    pub validation_arrays: Option<String>,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// With `dataset = "numpy"`: the training arrays, `train.npz` (arrays `x`, `y`) or
    /// `inputs.npy,labels.npy`, relative to the recipe. With `dataset = "images"`: the
    /// folder of training images, relative to the recipe.
    pub train: Option<String>,
    /// With `dataset = "numpy"`: the test arrays, as `train`. With `dataset = "images"`:
    /// the folder of test images.
    pub test: Option<String>,
    /// With `dataset = "images"`: a labels file inside each of the train and test
    /// folders (lines `filename label`, the label a class index) instead of class
    /// subfolders.
    pub labels: Option<PathBuf>,
    /// With `dataset = "images"`: `[rows, cols]` of the samples (default `[28, 28]`).
    pub size: Option<[usize; 2]>,
    /// With `dataset = "images"`: 1 (grayscale, default) or 3 (RGB).
    pub channels: Option<usize>,
    /// With `dataset = "text"`: calibration sentences, one per line, relative to the recipe.
    pub calibration: Option<PathBuf>,
    /// With `dataset = "text"`: held-out sentences, one per line (the gate reads them).
    pub heldout: Option<PathBuf>,
    /// With `dataset = "text"`: use at most this many calibration sentences.
    pub calibration_limit: Option<usize>,
    /// With `dataset = "text"`: use at most this many held-out sentences.
    pub heldout_limit: Option<usize>,
}

/// The default validation size, held out of the training data.
pub const DEFAULT_VALIDATION: usize = 5000;

/// `[data] validation_from`: which set the validation split is taken from.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValidationSplit {
    /// The last `validation` training samples, held out of training.
    #[default]
    Train,
    /// The first `validation` test samples; test accuracy on the rest.
    Test,
}

impl DataSection {
    /// Where the validation split comes from, with relative array paths taken from
    /// `base` (the recipe's directory).
    pub fn validation_from(&self, base: &Path) -> crate::data::ValidationFrom {
        use crate::data::ValidationFrom;
        if let Some(spec) = &self.validation_arrays {
            return ValidationFrom::Arrays(crate::data::npy::ArraySource::parse(spec).relative_to(base));
        }
        match self.validation_from.unwrap_or_default() {
            ValidationSplit::Train => ValidationFrom::Train(self.validation.unwrap_or(DEFAULT_VALIDATION)),
            ValidationSplit::Test => ValidationFrom::Test(self.validation.unwrap_or(DEFAULT_VALIDATION)),
        }
    }

    /// Checks the data keys of a classifier recipe; the message names the key.
    fn check(&self) -> Result<(), String> {
        let images_only = [("labels", self.labels.is_some()), ("size", self.size.is_some()), ("channels", self.channels.is_some())];
        match (self.dataset.as_str(), &self.train, &self.test) {
            ("fashion-mnist", None, None) | ("numpy", Some(_), Some(_)) | ("images", Some(_), Some(_)) => {}
            ("idx", None, None) if self.dir.is_some() => {}
            ("idx", None, None) => return Err("dataset = \"idx\" needs dir = \"path\", the folder holding the four MNIST-format IDX files".into()),
            ("fashion-mnist" | "idx", _, _) => return Err("data.train/data.test name NumPy arrays or image folders: set dataset = \"numpy\" or \"images\"".into()),
            ("numpy", _, _) => return Err("dataset = \"numpy\" needs data.train and data.test (each `file.npz` with arrays x, y, or `inputs.npy,labels.npy`)".into()),
            ("images", _, _) => return Err("dataset = \"images\" needs data.train and data.test, each a folder with one subfolder of images per class (or a `labels` file)".into()),
            (other, _, _) => return Err(format!("data.dataset: expected \"fashion-mnist\", \"idx\", \"numpy\" or \"images\", got \"{other}\"")),
        }
        if self.dataset != "images"
            && let Some((key, _)) = images_only.iter().find(|(_, set)| *set)
        {
            return Err(format!("data.{key} applies to dataset = \"images\" only"));
        }
        if let Some(c) = self.channels
            && !matches!(c, 1 | 3)
        {
            return Err(format!("data.channels: expected 1 (grayscale) or 3 (RGB), got {c}"));
        }
        if let Some([r, c]) = self.size
            && !((1..=4096).contains(&r) && (1..=4096).contains(&c))
        {
            return Err(format!("data.size: expected [rows, cols] each from 1 to 4096, got [{r}, {c}]"));
        }
        if self.validation == Some(0) {
            return Err("[data] validation = 0 leaves the validation split empty: the gate would score 0% at every stage and pass any model; \
                        give at least 1 (default 5000), or name the validation data with validation_from = \"test\" or validation_arrays"
                .into());
        }
        if self.validation_arrays.is_some() && (self.validation.is_some() || self.validation_from.is_some()) {
            return Err("[data] validation_arrays is the whole validation split: leave out validation and validation_from".into());
        }
        if self.validation_from == Some(ValidationSplit::Test) && self.validation.is_none() {
            return Err("[data] validation_from = \"test\" needs validation = N: the gate reads the first N test samples, the test accuracy the rest".into());
        }
        Ok(())
    }
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            dataset: "fashion-mnist".into(),
            dir: None,
            validation: None,
            validation_from: None,
            validation_arrays: None,
            train_limit: None,
            test_limit: None,
            train: None,
            test: None,
            labels: None,
            size: None,
            channels: None,
            calibration: None,
            heldout: None,
            calibration_limit: None,
            heldout_limit: None,
        }
    }
}

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    /// `"constant"` (default) or `"cosine"` decay to 0 over the run.
    pub schedule: LrSchedule,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection { epochs: 10, batch_size: 128, lr: 1e-3, schedule: LrSchedule::Constant }
    }
}

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// Largest allowed drop of validation accuracy against the baseline, as a fraction
    /// (classifiers; required unless the model is an `hf_dir` embedder).
    #[serde(default = "not_set")]
    pub max_accuracy_drop: f64,
    /// Embedders: smallest allowed mean cosine similarity to the fp32 embeddings over
    /// the held-out sentences.
    pub min_mean_cosine: Option<f64>,
    /// Embedders: smallest allowed cosine of any single held-out sentence.
    pub min_cosine: Option<f64>,
}

fn not_set() -> f64 {
    f64::NAN
}

/// One compression step: the config of one technique (see [`crate::compress`]).
pub use crate::compress::PassConfig as Pass;

/// The checks of an embedding recipe: text data, cosine gate, passes it can run.
fn check_embedding(r: Recipe, invalid: &dyn Fn(String) -> RecipeError) -> Result<Recipe, RecipeError> {
    if r.data.dataset != "text" || r.data.heldout.is_none() {
        return Err(invalid("an hf_dir model is evaluated on text: set [data] dataset = \"text\", heldout = \"sentences.txt\" (and calibration = ... for Wanda or full int8)".into()));
    }
    let (Some(mean), Some(min)) = (r.gate.min_mean_cosine, r.gate.min_cosine) else {
        return Err(invalid("an hf_dir model is gated by fidelity: set [gate] min_mean_cosine and min_cosine (e.g. 0.999 and 0.995)".into()));
    };
    if !r.gate.max_accuracy_drop.is_nan() {
        return Err(invalid("gate.max_accuracy_drop is for classifiers; an hf_dir model uses min_mean_cosine and min_cosine".into()));
    }
    for (what, v) in [("min_mean_cosine", mean), ("min_cosine", min)] {
        if !(-1.0..=1.0).contains(&v) {
            return Err(invalid(format!("gate.{what}: expected a cosine in [-1, 1], got {v}")));
        }
    }
    if r.model.seq_len == Some(0) {
        return Err(invalid("[model] seq_len must be at least 1".into()));
    }
    Ok(r)
}

impl Recipe {
    /// Whether this recipe compresses a sentence embedder (gated by cosine fidelity).
    pub fn is_embedding(&self) -> bool {
        self.model.hf_dir.is_some()
    }

    /// The kind of model the recipe compresses: an embedder (`hf_dir`), task models
    /// (`[[task]]` tables), or a classifier.
    pub fn kind(&self) -> ModelKind {
        if self.is_embedding() {
            ModelKind::Embedder
        } else if !self.tasks.is_empty() {
            ModelKind::Tasks
        } else {
            ModelKind::Classifier
        }
    }

    /// The model files the run reads (the baseline's file or state dict, distillation
    /// teachers): none may lie in the output directory.
    pub fn model_inputs(&self) -> Vec<&Path> {
        let teachers = self.passes.iter().filter_map(|p| match p {
            Pass::Distill(d) => d.teacher.as_deref(),
            _ => None,
        });
        [&self.model.file, &self.model.state_dict].into_iter().flatten().map(PathBuf::as_path).chain(teachers).collect()
    }

    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io { path: path.into(), source })?;
        Recipe::parse(&text, path)
    }

    /// Parses recipe text; `path` is used in messages and to resolve relative files.
    pub fn parse(text: &str, path: &Path) -> Result<Recipe, RecipeError> {
        let r: Recipe = toml::from_str(text).map_err(|e| RecipeError::Parse {
            path: path.into(),
            message: e.message().to_string()
                + &e.span().map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1)).unwrap_or_default(),
        })?;
        // Every number as written (a NaN `max_accuracy_drop` is not a missing one); the
        // passes are checked after their own checks, in `validated`.
        if let Ok(mut raw) = toml::from_str::<toml::Table>(text) {
            raw.remove("pass");
            crate::limits::check_values(&toml::Value::Table(raw), "", "").map_err(|message| RecipeError::Invalid { path: path.into(), message })?;
        }
        r.validated(path)
    }

    /// The recipe of one pass, as the verbs (`squeeze prune`, `trim`, `quantize`,
    /// `distill`, `share`, ...) run it: no gate (`max_accuracy_drop = 1`; the stages are
    /// still measured and reported), the `[train]` defaults and no tasks (a verb sets
    /// those fields it takes), checked like a recipe file by [`OnePass::checked`].
    pub fn one_pass(model: ModelSource, data: DataSection, seed: u64, pass: Pass) -> OnePass {
        OnePass(Recipe {
            name: pass.stage_name(),
            seed,
            model,
            data,
            train: TrainSection::default(),
            gate: GateSection { max_accuracy_drop: 1.0, min_mean_cosine: None, min_cosine: None },
            passes: vec![pass],
            tasks: Vec::new(),
        })
    }

    /// Checks a recipe read from `path` and resolves its relative files against it.
    fn validated(mut self, path: &Path) -> Result<Recipe, RecipeError> {
        let r = &mut self;
        let invalid = |message: String| RecipeError::Invalid { path: path.into(), message };
        let sources = [r.model.zoo.is_some(), r.model.file.is_some(), r.model.state_dict.is_some(), r.model.hf_dir.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid("[model] needs exactly one of `zoo = \"name\"`, `file = \"path\"`, `state_dict = \"path\"` (with `architecture`) or `hf_dir = \"path\"`".into()));
        }
        if r.model.seq_len.is_some() && r.model.hf_dir.is_none() {
            return Err(invalid("[model] seq_len applies to an hf_dir model only".into()));
        }
        if r.model.state_dict.is_some() != r.model.architecture.is_some() {
            return Err(invalid("[model] `state_dict` and `architecture` go together: a PyTorch state dict needs its architecture description".into()));
        }
        if r.model.preprocess.is_some() && r.model.file.is_none() {
            return Err(invalid(
                "[model.preprocess] applies to a `file` model; a state dict states it in its architecture description's [preprocess], a zoo model trains on the data as it is".into(),
            ));
        }
        let limits = [("train_limit", r.data.train_limit), ("test_limit", r.data.test_limit), ("calibration_limit", r.data.calibration_limit), ("heldout_limit", r.data.heldout_limit)];
        if let Some((key, _)) = limits.iter().find(|(_, v)| *v == Some(0)) {
            return Err(invalid(format!("[data] {key} = 0 leaves no data; give at least 1, or leave it out for all")));
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for f in [&mut r.model.file, &mut r.model.state_dict, &mut r.model.architecture, &mut r.model.hf_dir, &mut r.data.calibration, &mut r.data.heldout]
            .into_iter()
            .flatten()
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        for p in r.passes.iter_mut() {
            if let Pass::Distill(d) = p
                && let Some(t) = &mut d.teacher
                && t.is_relative()
            {
                *t = base.join(&*t);
            }
        }
        // Each pass checks its own values and where it may run; a final pass
        // (quantize, int4) must be the last.
        let kind = r.kind();
        for (i, p) in r.passes.iter().enumerate() {
            p.technique().check(kind).map_err(&invalid)?;
            if p.technique().is_final() && i + 1 != r.passes.len() {
                return Err(invalid(format!("pass '{}' writes the final encoding, so it must be the last pass; move it to the end", p.stage_name())));
            }
        }
        // Numbers (a recipe file's [train] was checked as written; a verb's come from flags).
        for (i, p) in r.passes.iter().enumerate() {
            let at = format!("[[pass]] {} ({})", i + 1, p.stage_name());
            if let Ok(v) = toml::Value::try_from(p) {
                crate::limits::check_values(&v, &at, "").map_err(&invalid)?;
            }
            if let Pass::Quantize(q) = p
                && q.calibration == 0
            {
                return Err(invalid(format!("{at} calibration = 0 leaves nothing to calibrate on: expected at least 1 (default 1000)")));
            }
        }
        crate::limits::check_epochs("[train] epochs", r.train.epochs as u64).map_err(&invalid)?;
        crate::limits::check_lr("[train] lr", f64::from(r.train.lr)).map_err(&invalid)?;
        if r.train.batch_size == 0 {
            return Err(invalid("[train] batch_size = 0: expected at least 1 (default 128)".into()));
        }
        // A zoo model is trained here: with no epochs the baseline every stage is gated
        // against would be random weights.
        let zoos = r.model.zoo.iter().map(|z| ("[model] zoo", z)).chain(r.tasks.iter().filter_map(|t| t.zoo.as_ref().map(|z| ("[[task]] zoo", z))));
        for (key, name) in zoos {
            if crate::model::zoo::build(name).is_none() {
                let known: Vec<&str> = crate::model::zoo::MODELS.iter().map(|(n, _)| *n).collect();
                return Err(invalid(format!("{key} = \"{name}\" is not a zoo model (known: {})", known.join(", "))));
            }
        }
        if r.model.zoo.is_some() && r.train.epochs == 0 {
            return Err(invalid(format!(
                "[train] epochs = 0 would leave the zoo model untrained, and every stage is gated against it: expected 1 to {}",
                crate::limits::MAX_EPOCHS
            )));
        }
        if r.is_embedding() {
            return check_embedding(self, &invalid);
        }
        if r.data.calibration.is_some() || r.data.heldout.is_some() || r.gate.min_cosine.is_some() || r.gate.min_mean_cosine.is_some() {
            return Err(invalid("data.calibration/heldout and gate.min_cosine/min_mean_cosine are for embedding recipes ([model] hf_dir)".into()));
        }
        if r.gate.max_accuracy_drop.is_nan() {
            return Err(invalid("[gate] needs max_accuracy_drop (a fraction, e.g. 0.005)".into()));
        }
        r.data.check().map_err(invalid)?;
        if !(0.0..=1.0).contains(&r.gate.max_accuracy_drop) {
            return Err(invalid(format!("gate.max_accuracy_drop: expected a fraction in [0, 1], got {}", r.gate.max_accuracy_drop)));
        }
        if kind == ModelKind::Tasks {
            if r.passes.is_empty() {
                return Err(invalid("a recipe with [[task]] tables runs one or more share_tasks passes and no other pass".into()));
            }
            if r.model.zoo.is_none() {
                return Err(invalid("a recipe with [[task]] tables trains its task models: [model] needs `zoo = \"name\"`".into()));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::quantize::{Mode, NonlinearChoice, SmallTensors};

    #[test]
    fn module_example_parses() {
        let doc = include_str!("recipe.rs");
        let start = doc.find("//! ```toml").unwrap();
        let end = start + doc[start..].find("//! ```\n").unwrap();
        let text: String = doc[start..end].lines().skip(1).map(|l| l.trim_start_matches("//!").trim_start()).collect::<Vec<_>>().join("\n");
        let r = Recipe::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(r.passes.len(), 2);
        assert_eq!(
            r.passes[1],
            Pass::Quantize(crate::compress::quantize::Quantize {
                mode: Mode::Full,
                layers: vec![],
                calibration: 1000,
                small_tensors: SmallTensors::F32,
                smooth: None,
                float_activations: vec![],
                nonlinear: NonlinearChoice::Float,
                nonlinear_ops: vec![]
            })
        );
    }

    /// `[model.preprocess]` in front of a file model becomes a Normalize op on
    /// `x·scale`; it is refused for the sources that state it elsewhere.
    #[test]
    fn model_preprocess_is_read_for_file_models_only() {
        let text = "name = \"x\"\n[model]\nfile = \"their.onnx\"\n[model.preprocess]\nscale = 255.0\nmean = [127.5]\nstd = [63.75]\n[gate]\nmax_accuracy_drop = 0.01\n";
        let r = Recipe::parse(text, Path::new("r.toml")).unwrap();
        let op = r.model.preprocess.unwrap().to_op().unwrap();
        assert_eq!(op, crate::spec::Op::Normalize { mean: vec![0.5], std: vec![0.25] });
        let text = "name = \"x\"\n[model]\nzoo = \"mlp\"\n[model.preprocess]\nscale = 255.0\n[gate]\nmax_accuracy_drop = 0.01\n";
        let err = Recipe::parse(text, Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("[model.preprocess] applies to a `file` model"), "{err}");
        let text = "name = \"x\"\n[model]\nfile = \"m.onnx\"\n[model.preprocess]\nscael = 255.0\n[gate]\nmax_accuracy_drop = 0.01\n";
        let err = Recipe::parse(text, Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("scael"), "{err}");
        let bad = crate::format::arch::Preprocess { scale: Some(0.0), mean: vec![], std: vec![] };
        assert!(bad.to_op().unwrap_err().contains("positive"));
    }

    #[test]
    fn quantize_small_tensors_is_f32_unless_set_and_checked() {
        let base = "name = \"x\"\n[model]\nzoo = \"vit\"\n[gate]\nmax_accuracy_drop = 0.01\n[[pass]]\ntype = \"quantize\"\n";
        let r = Recipe::parse(&format!("{base}small_tensors = \"f16\"\n"), Path::new("r.toml")).unwrap();
        assert!(matches!(&r.passes[0], Pass::Quantize(q) if q.small_tensors == SmallTensors::F16));
        let r = Recipe::parse(base, Path::new("r.toml")).unwrap();
        assert!(matches!(&r.passes[0], Pass::Quantize(q) if q.small_tensors == SmallTensors::F32));
        let err = Recipe::parse(&format!("{base}small_tensors = \"f8\"\n"), Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("f8") && err.contains("f16"), "{err}");
    }

    /// `smooth` is off unless set, read as α, and checked; `float_activations` is a list.
    #[test]
    fn quantize_smooth_and_float_activations_are_read_and_checked() {
        let base = "name = \"e\"\n[model]\nhf_dir = \"m\"\n[data]\ndataset = \"text\"\nheldout = \"h.txt\"\n[gate]\nmin_mean_cosine = 0.999\nmin_cosine = 0.995\n[[pass]]\ntype = \"quantize\"\nmode = \"dynamic\"\n";
        let r = Recipe::parse(base, Path::new("r.toml")).unwrap();
        assert!(matches!(&r.passes[0], Pass::Quantize(q) if q.smooth.is_none() && q.float_activations.is_empty()));
        let r = Recipe::parse(&format!("{base}smooth = 0.5\nfloat_activations = [\"encoder.layer.*.output.dense\"]\n"), Path::new("r.toml")).unwrap();
        assert!(matches!(&r.passes[0], Pass::Quantize(q) if q.smooth == Some(0.5) && q.float_activations == ["encoder.layer.*.output.dense"]));
        assert_eq!(r.passes[0].stage_name(), "int8-dynamic");
        let err = |extra: &str| Recipe::parse(&format!("{base}{extra}"), Path::new("r.toml")).unwrap_err().to_string();
        for bad in ["smooth = 1.5\n", "smooth = -0.1\n", "smooth = nan\n"] {
            let e = err(bad);
            assert!(e.contains("smooth") && e.contains("[0, 1]"), "{bad}: {e}");
        }
        assert!(err("smooth = \"half\"\n").contains("invalid type"), "{}", err("smooth = \"half\"\n"));
        assert!(err("smoothing = 0.5\n").contains("smoothing"));
        // Classifier recipes check it too.
        let classifier = "name = \"x\"\n[model]\nzoo = \"vit\"\n[gate]\nmax_accuracy_drop = 0.01\n[[pass]]\ntype = \"quantize\"\n";
        assert!(Recipe::parse(&format!("{classifier}smooth = 0.5\n"), Path::new("r")).is_ok());
        assert!(Recipe::parse(&format!("{classifier}smooth = 2.0\n"), Path::new("r")).unwrap_err().to_string().contains("[0, 1]"));
    }

    /// `nonlinear` is float unless set; `integer` with an optional list of kinds; an
    /// unknown value or kind, a list with float, or integer outside full mode is one
    /// error naming what to change.
    #[test]
    fn quantize_nonlinear_is_float_unless_set_and_checked() {
        use crate::spec::Nonlinearity;
        let base = "name = \"x\"\n[model]\nzoo = \"vit\"\n[gate]\nmax_accuracy_drop = 0.01\n[[pass]]\ntype = \"quantize\"\n";
        let r = Recipe::parse(base, Path::new("r.toml")).unwrap();
        assert!(matches!(&r.passes[0], Pass::Quantize(q) if q.nonlinear == NonlinearChoice::Float && q.nonlinear_ops.is_empty()));
        let r = Recipe::parse(&format!("{base}nonlinear = \"integer\"\nnonlinear_ops = [\"softmax\", \"layernorm\"]\n"), Path::new("r.toml")).unwrap();
        assert!(
            matches!(&r.passes[0], Pass::Quantize(q) if q.nonlinear == NonlinearChoice::Integer && q.nonlinear_ops == [Nonlinearity::Softmax, Nonlinearity::LayerNorm])
        );
        let err = Recipe::parse(&format!("{base}nonlinear = \"fixed\"\n"), Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("fixed") && err.contains("integer"), "{err}");
        let err = Recipe::parse(&format!("{base}nonlinear = \"integer\"\nnonlinear_ops = [\"relu\"]\n"), Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("relu") && err.contains("gelu"), "{err}");
        let err = Recipe::parse(&format!("{base}nonlinear_ops = [\"gelu\"]\n"), Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("nonlinear = \"integer\""), "{err}");
        let err = Recipe::parse(&format!("{base}mode = \"weights\"\nnonlinear = \"integer\"\n"), Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("mode = \"full\""), "{err}");
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let text = "name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\nmax_accuracy_drop = 0.01\nmax_acuracy = 2\n";
        let err = Recipe::parse(text, Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("r.toml") && err.contains("max_acuracy") && err.contains("line 6"), "{err}");
        let text = "name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\nmax_accuracy_drop = 0.01\n[[pass]]\ntype = \"prune\"\nsparsity = 0.5\nspars = 1\n";
        let err = Recipe::parse(text, Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("spars"), "{err}");
        let text = "name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\nmax_accuracy_drop = 0.01\n[[pass]]\ntype = \"shrink\"\n";
        assert!(Recipe::parse(text, Path::new("r.toml")).unwrap_err().to_string().contains("shrink"));
        // A limit of 0 would train or measure on nothing.
        let text = "name = \"x\"\n[model]\nzoo = \"mlp\"\n[data]\ntrain_limit = 0\n[gate]\nmax_accuracy_drop = 0.01\n";
        assert!(Recipe::parse(text, Path::new("r.toml")).unwrap_err().to_string().contains("train_limit = 0"));
    }

    /// The `[data]` keys: where the validation split comes from, the `idx` and `images`
    /// data sets, and an empty validation split refused.
    #[test]
    fn data_keys_are_read_and_checked() {
        use crate::data::ValidationFrom;
        let with = |data: &str| Recipe::parse(&format!("name = \"x\"\n[model]\nzoo = \"mlp\"\n[data]\n{data}\n[gate]\nmax_accuracy_drop = 0.01\n"), Path::new("d/r.toml"));
        let base = Path::new("d");
        assert_eq!(with("").unwrap().data.validation_from(base), ValidationFrom::Train(5000));
        assert_eq!(with("validation = 300").unwrap().data.validation_from(base), ValidationFrom::Train(300));
        assert_eq!(with("validation_from = \"test\"\nvalidation = 2000").unwrap().data.validation_from(base), ValidationFrom::Test(2000));
        let arrays = with("validation_arrays = \"val.npz\"").unwrap().data.validation_from(base);
        assert_eq!(arrays, ValidationFrom::Arrays(crate::data::npy::ArraySource::Npz("d/val.npz".into())));
        let r = with("dataset = \"images\"\ntrain = \"tr\"\ntest = \"te\"\nsize = [32, 32]\nchannels = 3\nlabels = \"l.txt\"").unwrap();
        assert_eq!((r.data.size, r.data.channels), (Some([32, 32]), Some(3)));
        assert!(with("dataset = \"idx\"\ndir = \"/data/kmnist\"").is_ok());
        let err = |data: &str| with(data).unwrap_err().to_string();
        for (data, want) in [
            ("validation = 0", "validation = 0 leaves the validation split empty"),
            ("validation_from = \"test\"", "needs validation = N"),
            ("validation_from = \"val\"\nvalidation = 3", "val"),
            ("validation_arrays = \"v.npz\"\nvalidation_from = \"test\"", "leave out validation"),
            ("dataset = \"idx\"", "needs dir"),
            ("dataset = \"images\"\ntrain = \"tr\"", "needs data.train and data.test"),
            ("dataset = \"images\"\ntrain = \"tr\"\ntest = \"te\"\nchannels = 4", "channels"),
            ("dataset = \"images\"\ntrain = \"tr\"\ntest = \"te\"\nsize = [0, 28]", "data.size"),
            ("channels = 3", "applies to dataset = \"images\" only"),
            ("dataset = \"cifar\"", "\"idx\", \"numpy\" or \"images\""),
        ] {
            let e = err(data);
            assert!(e.contains(want), "{data}: {e}");
        }
    }

    #[test]
    fn task_recipes_are_checked() {
        let base = "name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\nmax_accuracy_drop = 0.005\n";
        let task = "[[task]]\nname = \"a\"\nlabels = [0, 1]\n";
        let ok = Recipe::parse(&format!("{base}{task}[[pass]]\ntype = \"share_tasks\"\nform = \"soft\"\n"), Path::new("r")).unwrap();
        assert_eq!(ok.tasks[0], TaskSection { name: "a".into(), labels: vec![0, 1], zoo: None });
        assert_eq!(ok.passes[0], Pass::ShareTasks(crate::compress::multitask::ShareTasks { form: ShareForm::Soft, penalty: 0.001, head_epochs: 2, head_lr: None }));
        let err = |text: String| Recipe::parse(&text, Path::new("r.toml")).unwrap_err().to_string();
        assert!(err(format!("{base}[[pass]]\ntype = \"share_tasks\"\n")).contains("[[task]]"));
        assert!(err(format!("{base}{task}[[pass]]\ntype = \"prune\"\nsparsity = 0.5\n")).contains("no other pass"));
        assert!(err(format!("{base}{task}labelz = [1]\n[[pass]]\ntype = \"share_tasks\"\n")).contains("labelz"));
        assert!(err(format!("{base}{task}[[pass]]\ntype = \"share_tasks\"\nform = \"medium\"\n")).contains("medium"));
        assert!(err(format!("{base}[[pass]]\ntype = \"hash\"\nfraction = 0.0\n")).contains("fraction"));
        let h = Recipe::parse(&format!("{base}[[pass]]\ntype = \"hash\"\nfraction = 0.125\n"), Path::new("r")).unwrap();
        assert!(matches!(&h.passes[0], Pass::Hash(x) if x.signed && x.fine_tune_epochs == 3));
    }

    #[test]
    fn embedding_recipes_need_text_data_and_a_cosine_gate() {
        let model = "name = \"e\"\n[model]\nhf_dir = \"m\"\n";
        let data = "[data]\ndataset = \"text\"\nheldout = \"h.txt\"\n";
        let gate = "[gate]\nmin_mean_cosine = 0.999\nmin_cosine = 0.995\n";
        let r = Recipe::parse(&format!("{model}{data}{gate}[[pass]]\ntype = \"int4\"\n"), Path::new("dir/r.toml")).unwrap();
        assert!(r.is_embedding());
        assert_eq!(r.model.hf_dir.as_deref(), Some(Path::new("dir/m")));
        assert_eq!(r.data.heldout.as_deref(), Some(Path::new("dir/h.txt")));
        assert!(matches!(&r.passes[0], Pass::Int4(x) if x.group == 32));
        assert_eq!(r.passes[0].stage_name(), "int4-g32");
        let err = |text: String| Recipe::parse(&text, Path::new("r")).unwrap_err().to_string();
        assert!(err(format!("{model}{gate}")).contains("dataset = \"text\""));
        assert!(err(format!("{model}{data}[gate]\nmin_cosine = 0.9\n")).contains("min_mean_cosine"));
        assert!(err(format!("{model}{data}[gate]\nmax_accuracy_drop = 0.01\nmin_mean_cosine = 0.9\nmin_cosine = 0.9\n")).contains("for classifiers"));
        assert!(err(format!("{model}{data}{gate}[[pass]]\ntype = \"prune_rows\"\n")).contains("exactly one of sparsity or n_of_m"));
        assert!(err(format!("{model}{data}{gate}[[pass]]\ntype = \"prune_rows\"\nn_of_m = [4, 4]\n")).contains("1 ≤ n < m"));
        assert!(err(format!("{model}{data}{gate}[[pass]]\ntype = \"share\"\n")).contains("not available for hf_dir"));
        assert!(err(format!("{model}{data}{gate}[[pass]]\ntype = \"int4\"\ngroup = 0\n")).contains("group"));
        // Classifier recipes keep their accuracy gate and cannot use the text keys.
        assert!(err("name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\nmin_cosine = 0.9\n".into()).contains("embedding recipes"));
        assert!(err("name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\n".into()).contains("max_accuracy_drop"));
        assert!(err("name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\nmax_accuracy_drop = 0.01\n[[pass]]\ntype = \"int4\"\n".into()).contains("embedding recipes only"));
    }

    #[test]
    fn every_shipped_recipe_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Recipe::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3);
        let r = Recipe::load(&dir.join("distill-mlp.toml")).unwrap();
        assert!(matches!(&r.passes[0], Pass::Distill(d) if d.student.as_deref() == Some("mlp") && d.seeds == 3));
        assert_eq!(r.train.schedule, LrSchedule::Cosine);
    }

    #[test]
    fn bad_values_are_errors() {
        let base = "name = \"x\"\n[model]\nzoo = \"mlp\"\n";
        assert!(Recipe::parse(&format!("{base}[gate]\nmax_accuracy_drop = 5.0\n"), Path::new("r")).is_err());
        assert!(Recipe::parse("name = \"x\"\n[model]\n[gate]\nmax_accuracy_drop = 0.1\n", Path::new("r")).is_err());
    }
}
