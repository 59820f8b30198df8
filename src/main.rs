//! The `squeeze` command line: parses arguments, calls the library, prints results.
//! Exit codes: 0 success, 1 a validation gate failed (the report is written), 2 error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use squeeze::compress::distill::{self, DistillConfig};
use squeeze::compress::{prune, quantize, share, trim, PassConfig};
use squeeze::data::{self, Splits};
use squeeze::format::hf;
use squeeze::format::sqz::{self, Limits};
use squeeze::model::{zoo, Model};
use squeeze::pipeline::{self, Event, PipelineError, RunOptions};
use squeeze::recipe::Recipe;
use squeeze::report::measure::median_and_spread;
use squeeze::runtime::exec;
use squeeze::store::{self, ModelFile};
use squeeze::train::{self, LrSchedule, TrainConfig, TrainEvent};

/// `println!` that ends the process quietly when stdout is closed (`squeeze inspect m |
/// head`), instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("squeeze: cannot write to stdout: {e}");
            std::process::exit(2);
        }
    }};
}

#[derive(Parser)]
#[command(name = "squeeze", version, about = "Make trained neural networks smaller and faster, and prove they still work.")]
#[command(after_help = "Main job:  squeeze run --recipe recipes/seed.toml --out-dir out/seed\n\
Exit codes: 0 success, 1 a validation gate failed (report written), 2 error.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a recipe end to end: train, compress, validate, write files and report.
    ///
    /// The recipe's [data] table names the data set and the gate's validation split:
    ///   dataset = "fashion-mnist" (default; dir, else --data, $SQUEEZE_DATA, the Debian path)
    ///           | "idx" (dir = any MNIST-format IDX set: MNIST, KMNIST, …; classes from the labels)
    ///           | "numpy" (train, test = "file.npz" with arrays x, y, or "x.npy,y.npy")
    ///           | "images" (train, test = folders with one subfolder of PNG/JPEG images per class,
    ///             or labels = "labels.txt" in each: lines `filename label`; size = [rows, cols]
    ///             (default [28, 28]), channels = 1 or 3; scaled to [0, 1])
    ///   validation = N              the gate's split: the last N training samples (default 5000, at least 1)
    ///   validation_from = "test"    … or the first N test samples (test accuracy on the rest)
    ///   validation_arrays = "val.npz"  … or a separate labelled set (no validation / validation_from)
    /// A model imported from elsewhere was usually trained on all training samples: gate it on
    /// test samples or a separate set. report.json says what the gate read (gate.measured_on)
    /// and lists warnings, e.g. float inputs in 0–255 given to a model that expects [0, 1].
    #[command(verbatim_doc_comment)]
    Run {
        /// The recipe (TOML); see recipes/ for examples.
        #[arg(long)]
        recipe: PathBuf,
        /// Directory for the stage files, model.sqz, report.json and report.md.
        #[arg(long, default_value = "out")]
        out_dir: PathBuf,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Train a zoo model and save it as safetensors (architecture in its metadata).
    Train {
        /// Zoo name (mlp, lenet300, lenet5, cnn, lstm, gru).
        #[arg(long, default_value = "mlp")]
        model: String,
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_parser = squeeze::limits::epochs_arg, default_value_t = 10)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
        #[arg(long, value_parser = squeeze::limits::lr_arg, default_value_t = 1e-3)]
        lr: f32,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Accuracy of a model file on the test set, run by the runtime from its stored encoding.
    ///
    /// Reads only test data: --test-arrays alone (no training arrays, no validation split),
    /// else the IDX test files. Warns on stderr when float inputs look like unscaled 0–255
    /// pixels for a model that expects [0, 1].
    Eval {
        /// A .sqz or .safetensors model.
        model: PathBuf,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Prune connections by magnitude, then fine-tune with the pruned weights held at
    /// zero: a recipe of one `prune` pass (the same flags as its keys), run, measured
    /// and reported like any recipe.
    Prune {
        model: PathBuf,
        #[command(flatten)]
        pass: prune::Prune,
        #[command(flatten)]
        run: OnePassArgs,
    },
    /// Prune connections at random (the control magnitude pruning must beat), then
    /// fine-tune: a recipe of one `random_prune` pass.
    RandomPrune {
        model: PathBuf,
        #[command(flatten)]
        pass: squeeze::compress::random_prune::RandomPrune,
        #[command(flatten)]
        run: OnePassArgs,
    },
    /// Remove whole neurons/filters (or attention heads) by importance, propagate to the
    /// next layer, then fine-tune the smaller dense model: a recipe of one `trim` pass.
    Trim {
        model: PathBuf,
        #[command(flatten)]
        pass: trim::Trim,
        #[command(flatten)]
        run: OnePassArgs,
    },
    /// Quantize to 8 bits: full (int8 weights and activations, integer arithmetic),
    /// weights only, or dynamic: a recipe of one `quantize` pass.
    Quantize {
        model: PathBuf,
        #[command(flatten)]
        pass: quantize::Quantize,
        #[command(flatten)]
        run: OnePassArgs,
    },
    /// Distil a student from a teacher (soft targets at temperature T, or the teacher's
    /// labels with --hard), then fine-tune on the true labels; compares each seed with
    /// the same student trained alone on the same inputs for the same epochs.
    Distill {
        /// The teacher: a model file (.safetensors or .sqz) or a zoo name (trained first
        /// for --teacher-epochs). Repeat for an ensemble (softened outputs averaged).
        #[arg(long, required = true)]
        teacher: Vec<String>,
        /// Epochs to train a zoo-name teacher (cosine schedule).
        #[arg(long, value_parser = squeeze::limits::epochs_arg, default_value_t = 15)]
        teacher_epochs: usize,
        /// Save a zoo-name teacher after training it (.safetensors or .sqz).
        #[arg(long)]
        save_teacher: Option<PathBuf>,
        /// The student: a zoo name (trained from scratch) or a model file.
        #[arg(long, default_value = "mlp")]
        student: String,
        /// Distillation epochs.
        #[arg(long, value_parser = squeeze::limits::epochs_arg, default_value_t = DistillConfig::default().epochs)]
        epochs: usize,
        /// Fine-tuning epochs on the true labels after distillation.
        #[arg(long, value_parser = squeeze::limits::epochs_arg, default_value_t = DistillConfig::default().fine_tune_epochs)]
        fine_tune_epochs: usize,
        #[arg(long, default_value_t = DistillConfig::default().temperature)]
        temperature: f32,
        /// Weight of the distillation term (1 − alpha goes to the true labels).
        #[arg(long, default_value_t = DistillConfig::default().alpha)]
        alpha: f32,
        /// Hard distillation: learn the teacher's predicted labels.
        #[arg(long)]
        hard: bool,
        #[arg(long, value_parser = squeeze::limits::lr_arg, default_value_t = DistillConfig::default().lr)]
        lr: f32,
        /// Learning rate of the fine-tuning epochs, for both the distilled student
        /// and the control (same schedule); default lr / 10.
        #[arg(long, value_parser = squeeze::limits::lr_arg)]
        fine_tune_lr: Option<f32>,
        /// Learning-rate schedule of each phase, for both students.
        #[arg(long, value_enum, default_value_t = ScheduleArg::from(DistillConfig::default().schedule))]
        schedule: ScheduleArg,
        /// Shifted copies of each training image added to the transfer set (both
        /// students train on them; the teacher labels them once).
        #[arg(long, default_value_t = DistillConfig::default().shifted_copies)]
        shifted_copies: usize,
        /// Largest shift of a copy, in pixels.
        #[arg(long, default_value_t = DistillConfig::default().max_shift)]
        max_shift: usize,
        /// Seeds to run (each: distilled student and control student); 0 = only
        /// train (and --save-teacher) the teachers.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Where to write the distilled student of the first seed (.safetensors or .sqz).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Parameter sharing across models: three Fashion-MNIST tasks (10 classes; tops,
    /// bottoms, footwear, bags; footwear or not) as one file with a shared trunk and a
    /// head per task, against three separately trained models.
    Share {
        #[command(flatten)]
        share: ShareArgs,
        /// The shared multi-head model (.sqz).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Show what a model file holds: architecture, per-tensor encoding and bytes
    /// (.sqz, .safetensors, an ONNX model with what squeeze imports from it, or a
    /// Hugging Face BERT directory).
    Inspect { model: PathBuf },
    /// Sentence embeddings from a text model (an imported Hugging Face embedder; its
    /// tokenizer is stored in the file): one sentence with --text (printed), or a file
    /// of sentences, one per line, with --file (written to --out as an [n, dim] .npy).
    Embed {
        model: PathBuf,
        #[arg(long, conflicts_with = "file")]
        text: Option<String>,
        #[arg(long, requires = "out")]
        file: Option<PathBuf>,
        /// The .npy for --file's embeddings (mean-pooled, not normalised).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Tokens per sentence (default: the model's input length).
        #[arg(long)]
        seq_len: Option<usize>,
        /// With --file: also time batch 1 and batch 32 on those sentences.
        #[arg(long, requires = "file")]
        time: bool,
        /// With --time: also show where the time of a batch-1 and a batch-32 run goes,
        /// per kind of step.
        #[arg(long, requires = "time")]
        profile: bool,
        /// With --time: also time this model (e.g. the fp32 baseline.sqz) against MODEL,
        /// call by call on the same batches, and print MODEL's speed-up over it per
        /// adjacent pair of calls (robust to the machine's speed drifting).
        #[arg(long, requires = "time", value_name = "BASELINE")]
        against: Option<PathBuf>,
        /// Pad every sentence to the model's input length, as `run` measures the
        /// embeddings (bit for bit; slower on short text). By default sentences are
        /// grouped by token count and each group runs at the shortest of 8, 16, 32, …
        /// tokens that holds it: the same embeddings up to f32 rounding in attention.
        #[arg(long)]
        full_length: bool,
        /// With --file: embed at most this many sentences.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Import a PyTorch state dict (.pth/.pt zip or .safetensors) with an architecture
    /// description (TOML layer list naming its keys), or a Hugging Face BERT directory
    /// (no --arch); writes a squeeze model file.
    Import {
        /// The state dict: a torch.save zip (.pth/.pt) or a .safetensors file; or a
        /// Hugging Face directory (config.json, model.safetensors, tokenizer.json).
        state_dict: PathBuf,
        /// The architecture description (see recipes/models/*.arch.toml).
        #[arg(long)]
        arch: Option<PathBuf>,
        /// Tokens per input of a Hugging Face model (default: the tokenizer's length).
        #[arg(long)]
        seq_len: Option<usize>,
        /// Output (.safetensors keeps the PyTorch key names; or .sqz).
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a model for other runtimes: ONNX or safetensors (dense f32, PyTorch key
    /// names for imported models). ONNX of a quantized model keeps its int8 weights int8:
    /// full int8 as QDQ (squeeze's calibrated u8 activations); weights-only and dynamic
    /// models as int8 weights with per-channel scales through DequantizeLinear into float
    /// layers (dynamic's run-time activation quantization is a squeeze speed choice and
    /// is not in the file); other models as fp32. An imported ONNX model keeps its input
    /// and output names. The file is read again and checked against the model before it
    /// is written.
    Export {
        /// A .sqz, .safetensors or .onnx model.
        model: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// ONNX fp32 even when the model is quantized (weights dequantized).
        #[arg(long)]
        float: bool,
        /// How a QDQ export stores int8 weights: uint8 (value + 128, zero point 128; exact
        /// in ONNX Runtime on every x86 CPU) or int8 (symmetric, zero point 0, as TensorRT
        /// requires; ONNX Runtime's AVX2 u8×s8 kernels can saturate on it without VNNI).
        /// The real weight values are the same either way. Weights that no integer kernel
        /// reads (weights-only and dynamic models, LSTM/GRU) are always int8, zero point 0.
        #[arg(long, value_enum, default_value_t = WeightTypeArg::Uint8)]
        weight_type: WeightTypeArg,
        /// Inputs on which the re-read export must give the model's outputs (safetensors).
        #[arg(long, default_value_t = 16)]
        check_inputs: usize,
    },
    /// Measure training speed and inference latency/throughput, f32 against int8, in one run.
    Bench {
        /// Zoo name (mlp, lenet300, lenet5, cnn, lstm, gru); the same as --model.
        #[arg(value_name = "MODEL")]
        model_name: Option<String>,
        /// Zoo name (mlp, lenet300, lenet5, cnn, lstm, gru).
        #[arg(long, default_value = "mlp")]
        model: String,
        /// Training images for the training-speed epoch.
        #[arg(long, default_value_t = 20000)]
        train_samples: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// What every one-pass verb takes besides the pass's own flags.
#[derive(Args, Clone)]
struct OnePassArgs {
    /// Seed of the pass's randomness and fine-tuning (the recipe's `seed`).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Output model (.sqz; .safetensors for a pass that leaves the model float).
    #[arg(long)]
    out: PathBuf,
    /// Also keep the run's report.json, report.md and stage files in this directory
    /// (default: only --out is kept).
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

/// A verb that is one pass: the recipe of that pass on `model`, run by the same runner
/// as `squeeze run` (so `squeeze prune M --sparsity 0.5 --out P` writes the bytes the
/// equivalent recipe writes), then its final stage moved to `--out`.
fn one_pass(model: &Path, pass: PassConfig, args: &OnePassArgs) -> Result<ExitCode> {
    let out = &args.out;
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or_default().to_string();
    if ext != "sqz" && ext != "safetensors" {
        bail!("output '{}' must end in .sqz or .safetensors", out.display());
    }
    if ext == "safetensors" && pass.technique().is_final() {
        bail!("'{}' stores an encoded (quantized) model, which only .sqz holds: write --out as .sqz", pass.stage_name());
    }
    refuse_overwrite(out, &[model])?;
    if args.data.train_arrays.is_some() != args.data.test_arrays.is_some() {
        bail!("'{}' fine-tunes and calibrates on training data: give --train-arrays too (--test-arrays alone serves eval)", pass.stage_name());
    }
    let name = pass.stage_name();
    let recipe = Recipe::one_pass(model, args.data.recipe_data(), args.seed, pass).context("the pass's settings")?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // A killed verb's scratch directory and temporary files (their process gone).
    squeeze::outdir::clean_stale_temps(parent, None);
    // The run's stage files and report go to a scratch directory beside --out (removed
    // afterwards) unless --report-dir keeps them.
    let scratch = match &args.report_dir {
        Some(d) => d.clone(),
        None => parent.join(format!(".squeeze-{}-{}", name, std::process::id())),
    };
    let opts = RunOptions { recipe_path: PathBuf::from(format!("(squeeze {})", std::env::args().nth(1).unwrap_or_default())), out_dir: scratch.clone(), data_dir: None, train_limit: None, test_limit: None };
    let mut bar = TrainBar::default();
    let result = pipeline::run(&recipe, &opts, &mut |e| match e {
        Event::Stage(name) => eprintln!("== {name}"),
        Event::Train(t) => bar.on(t),
        Event::Measured(s) => out!("{}", stage_line(&s)),
        Event::Summary(lines) => lines.iter().for_each(|l| out!("  {l}")),
        Event::Warning(w) => eprintln!("warning: {w}"),
    });
    let finish = || -> Result<u64> {
        let report = result.map_err(|e| match store::read(model) {
            Ok(f) if matches!(e, PipelineError::ShapeMismatch { .. }) => text_model_hint(
                e.into(),
                model,
                f.graph(),
                "compress it with a recipe, e.g. `squeeze run --recipe recipes/minilm-int8.toml`, which calibrates and validates on sentences",
            ),
            _ => e.into(),
        })?;
        let last = report.stages.last().context("the run measured no stage")?;
        let produced = scratch.join(&last.file);
        let bytes = if ext == "sqz" {
            // Written atomically like every output: a failed write leaves no half file.
            let bytes = std::fs::read(&produced).with_context(|| format!("cannot read '{}'", produced.display()))?;
            squeeze::format::write_atomic(out, &bytes).with_context(|| format!("cannot write '{}'", out.display()))?;
            bytes.len() as u64
        } else {
            let m = store::read_model(&produced)?;
            if !m.constraints.codebooks.is_empty() {
                bail!("a weight-shared model keeps its codebooks only in .sqz; write --out as .sqz");
            }
            store::write_safetensors(out, &m)?
        };
        Ok(bytes)
    };
    let written = finish();
    if args.report_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let bytes = written?;
    out!("wrote {} ({} bytes){}", out.display(), bytes, args.report_dir.as_ref().map_or(String::new(), |d| format!("; report: {}", d.join("report.md").display())));
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Clone, Default)]
struct DataArgs {
    /// Directory with the Fashion-MNIST IDX files (else $SQUEEZE_DATA, else /usr/share/datasets/fashion-mnist).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Use only the first N training images.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    test_limit: Option<usize>,
    /// Training images held out for validation (default 5000; at least 1). `run` takes
    /// it from the recipe's [data] validation, `eval` reads only the test set.
    #[arg(long, value_name = "N", value_parser = validation_size)]
    validation: Option<usize>,
    /// Your own training data instead of Fashion-MNIST: train.npz (arrays x, y) or inputs.npy,labels.npy.
    #[arg(long, value_name = "NPZ|X.npy,Y.npy", requires = "test_arrays")]
    train_arrays: Option<String>,
    /// Your own test data: test.npz (arrays x, y) or inputs.npy,labels.npy (with --train-arrays;
    /// alone for `eval`, which reads only test data). uint8 inputs are divided by 255,
    /// float inputs are taken as they are (image models expect values in [0, 1]).
    #[arg(long, value_name = "NPZ|X.npy,Y.npy")]
    test_arrays: Option<String>,
}

impl DataArgs {
    /// The `[data]` section of a one-pass recipe.
    fn recipe_data(&self) -> squeeze::recipe::DataSection {
        let arrays = self.train_arrays.is_some();
        squeeze::recipe::DataSection {
            dataset: if arrays { "numpy".into() } else { "fashion-mnist".into() },
            dir: self.data.clone(),
            validation: self.validation,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            train: self.train_arrays.clone(),
            test: self.test_arrays.clone(),
            ..Default::default()
        }
    }

    fn load(&self) -> Result<Splits> {
        let validation = self.validation.unwrap_or(squeeze::recipe::DEFAULT_VALIDATION);
        if let (Some(train), Some(test)) = (&self.train_arrays, &self.test_arrays) {
            let (train, test) = (data::npy::ArraySource::parse(train), data::npy::ArraySource::parse(test));
            return Ok(data::load_arrays(&train, &test, validation, self.train_limit, self.test_limit)?);
        }
        if self.test_arrays.is_some() {
            bail!("--test-arrays alone is for `eval`; this command trains: give --train-arrays too (train.npz with arrays x, y, or inputs.npy,labels.npy)");
        }
        let dir = data::locate(self.data.as_deref())?;
        Ok(data::load_fashion_mnist(&dir, validation, self.train_limit, self.test_limit)?)
    }

    /// Only the test set (for `eval`): `--test-arrays`, else the IDX test files; never
    /// the training data or a validation split.
    fn load_test(&self) -> Result<data::Dataset> {
        let test = match &self.test_arrays {
            Some(spec) => data::npy::load(&data::npy::ArraySource::parse(spec))?.take(self.test_limit.unwrap_or(usize::MAX)),
            None => data::load_idx_test(&data::locate(self.data.as_deref())?, self.test_limit, Some(data::FASHION_CLASSES.len()))?,
        };
        if test.is_empty() {
            bail!("the test data holds no samples: give a test set with at least one sample");
        }
        Ok(test)
    }
}

/// `--validation`: at least 1, since an empty validation split scores 0% at every stage.
fn validation_size(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Err("0 leaves the validation split empty (a gate would score 0% at every stage and pass any model); give at least 1 (default 5000)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Args, Clone)]
struct ShareArgs {
    /// Zoo architecture of the task models (its last Linear becomes the task head):
    /// one name for all tasks, or one per task, comma-separated (they must share a trunk).
    #[arg(long = "model", value_delimiter = ',', default_value = "mlp")]
    models: Vec<String>,
    /// hard: the 10-class model's trunk with a head per task; soft: models trained with
    /// a pull between their trunks, merged, heads fine-tuned.
    #[arg(long, value_enum, default_value = "hard")]
    form: FormArg,
    #[arg(long, value_parser = squeeze::limits::epochs_arg, default_value_t = 10)]
    epochs: usize,
    /// Soft form: λ of the penalty λ·Σ‖θ_a − θ_b‖² between trunks.
    #[arg(long, value_parser = squeeze::limits::finite_arg, default_value_t = 0.001)]
    penalty: f32,
    /// Soft form: epochs of each head on the merged trunk.
    #[arg(long, value_parser = squeeze::limits::epochs_arg, default_value_t = 2)]
    head_epochs: usize,
    /// Soft form: learning rate of the head fine-tuning.
    #[arg(long, value_parser = squeeze::limits::lr_arg, default_value_t = 1e-4)]
    head_lr: f32,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum FormArg {
    Hard,
    Soft,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum ScheduleArg {
    Constant,
    Cosine,
}

impl From<LrSchedule> for ScheduleArg {
    fn from(s: LrSchedule) -> Self {
        match s {
            LrSchedule::Constant => ScheduleArg::Constant,
            LrSchedule::Cosine => ScheduleArg::Cosine,
        }
    }
}

impl From<ScheduleArg> for LrSchedule {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Constant => LrSchedule::Constant,
            ScheduleArg::Cosine => LrSchedule::Cosine,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum ExportFormat {
    /// ONNX: QDQ int8 for a quantized model, else fp32; checked by importing it again.
    Onnx,
    /// Dense f32 tensors (PyTorch key names for imported models), checked by re-reading.
    Safetensors,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum WeightTypeArg {
    Uint8,
    Int8,
}

/// The error and its causes on one line, leaving out a cause whose text the line already
/// holds (many of our errors quote their source in their own message).
fn error_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn main() -> ExitCode {
    squeeze::report::measure::release_freed_memory_promptly();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(PipelineError::GateFailed { .. }) = err.downcast_ref::<PipelineError>() {
                eprintln!("squeeze: {}", error_line(&err));
                return ExitCode::from(1);
            }
            eprintln!("squeeze: {}", error_line(&err));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { recipe, out_dir, data } => cmd_run(&recipe, out_dir, data),
        Command::Train { model, out, epochs, batch_size, lr, seed, data } => {
            refuse_overwrite(&out, &[])?;
            let graph = zoo::build(&model).with_context(|| format!("unknown zoo model '{model}' (known: {})", zoo_names()))?;
            let splits = data.load()?;
            let mut m = Model::init(graph, seed)?;
            let cfg = TrainConfig { epochs, batch_size, lr, seed, workers: 2, l1: 0.0, group_lasso: None, schedule: Default::default() };
            let mut bar = TrainBar::default();
            train::train(&mut m, &splits.train.images, &splits.train.labels, &cfg, &mut |e| bar.on(e));
            let bytes = store::write_safetensors(&out, &m)?;
            let acc = exec::evaluate(&store::model_plan(&m)?, &splits.test.images, &splits.test.labels, 2)?;
            out!("wrote {} ({} bytes); test accuracy {:.2}%", out.display(), bytes, acc * 100.0);
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { model, data } => {
            let file = store::read(&model)?;
            let plan = file.plan()?;
            let test = data.load_test()?;
            pipeline::check_shapes(&plan, &file.graph().input_shape, &test)
                .map_err(|e| text_model_hint(e.into(), &model, file.graph(), "evaluate it with `squeeze run` (the gate is the cosine to its fp32 embeddings) or embed with `squeeze embed`"))?;
            if let Some(w) = pipeline::input_range_warning(file.graph(), &test, "the test inputs") {
                eprintln!("warning: {w}");
            }
            let acc = exec::evaluate(&plan, &test.images, &test.labels, 2)?;
            out!(
                "{}: test accuracy {:.2}% ({} images), kernel {}",
                model.display(),
                acc * 100.0,
                test.len(),
                plan.kernel_description()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune { model, pass, run } => one_pass(&model, PassConfig::Prune(pass), &run),
        Command::RandomPrune { model, pass, run } => one_pass(&model, PassConfig::RandomPrune(pass), &run),
        Command::Trim { model, pass, run } => one_pass(&model, PassConfig::Trim(pass), &run),
        Command::Quantize { model, pass, run } => one_pass(&model, PassConfig::Quantize(pass), &run),
        Command::Distill {
            teacher,
            teacher_epochs,
            save_teacher,
            student,
            epochs,
            fine_tune_epochs,
            temperature,
            alpha,
            hard,
            lr,
            fine_tune_lr,
            schedule,
            shifted_copies,
            max_shift,
            seeds,
            out,
            data,
        } => {
            let inputs: Vec<&Path> = teacher.iter().map(Path::new).chain([Path::new(&student)]).collect();
            refuse_overwrite(&out, &inputs)?;
            let cfg = DistillConfig {
                mode: if hard { distill::Mode::Hard } else { distill::Mode::Soft },
                temperature,
                alpha,
                epochs,
                fine_tune_epochs,
                lr,
                fine_tune_lr: fine_tune_lr.unwrap_or(lr / 10.0),
                batch_size: 128,
                schedule: schedule.into(),
                shifted_copies,
                max_shift,
            };
            cfg.check().context("distill")?;
            let teacher = TeacherArgs { sources: teacher, epochs: teacher_epochs, save: save_teacher };
            cmd_distill(&teacher, &student, &cfg, seeds, &out, &data)
        }
        Command::Share { share, out, data } => share_tasks(&share, &out, &data),
        Command::Export { model, format, out, float, weight_type, check_inputs } => {
            let weight_type = match weight_type {
                WeightTypeArg::Uint8 => squeeze::format::onnx::WeightType::Uint8,
                WeightTypeArg::Int8 => squeeze::format::onnx::WeightType::Int8,
            };
            export(&model, format, &out, float, weight_type, check_inputs)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { model } => {
            if model.is_dir() {
                inspect_hf(&model)?;
            } else {
                inspect(&model)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed { model, text, file, out, seq_len, time, profile, against, full_length, limit } => embed(&model, text, file, out, seq_len, time, profile, against, full_length, limit),
        Command::Bench { model_name, model, train_samples, json, data } => bench(model_name.as_deref().unwrap_or(&model), train_samples, json, &data),
        Command::Import { state_dict, arch: None, seq_len, out } => {
            if !state_dict.is_dir() {
                bail!("'{}' is not a directory: a PyTorch state dict needs --arch (a Hugging Face model is imported from its directory)", state_dict.display());
            }
            if out.extension().and_then(|e| e.to_str()) != Some("sqz") {
                bail!("output '{}' must end in .sqz (it carries the tokenizer)", out.display());
            }
            let imported = hf::import(&state_dict, seq_len)?;
            let packed = squeeze::text::pack_tokenizer(&imported.tokenizer_json);
            let m = Model::from_tensors(imported.graph, imported.tensors)?;
            let mut sqz = quantize::store_f32(&m);
            sqz.metadata.insert(squeeze::text::TOKENIZER_KEY.into(), packed);
            let bytes = store::write_sqz(&out, sqz, store::Coding::Entropy)?;
            out!("wrote {} ({} bytes, {} parameters, input {:?} token ids); not imported: {}", out.display(), bytes, m.graph.num_params(), m.graph.input_shape, imported.skipped.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { state_dict, arch: Some(arch), seq_len, out } => {
            if seq_len.is_some() {
                bail!("--seq-len applies to Hugging Face directories only");
            }
            refuse_overwrite(&out, &[&state_dict, &arch])?;
            let m = store::import_pytorch(&state_dict, &arch)?;
            let bytes = write_model(&out, &m)?;
            for (spec, _) in m.params.iter() {
                out!("{:<24} {:?}", spec.name, spec.shape);
            }
            out!("wrote {} ({} bytes, {} parameters, input {:?})", out.display(), bytes, m.graph.num_params(), m.graph.input_shape);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `inspect` of a Hugging Face directory: what the importer makes of it.
fn inspect_hf(dir: &Path) -> Result<()> {
    let imported = hf::import(dir, None)?;
    let graph = &imported.graph;
    let shapes = graph.validate()?;
    let weights = std::fs::metadata(dir.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
    let encoder = squeeze::text::TextEncoder::from_json(&imported.tokenizer_json, graph.input_shape[0], imported.pad_token as u32)?;
    out!(
        "{}: Hugging Face BERT directory, model.safetensors {weights} bytes, {} parameters imported (fp32 {} bytes)",
        dir.display(),
        graph.num_params(),
        4 * graph.num_params()
    );
    out!("tokenizer: {} tokens, inputs of {} token ids padded with id {}", encoder.vocab_size(), graph.input_shape[0], imported.pad_token);
    out!("sentence embedding: {:?} pooling{}", graph.outputs, if imported.normalize { ", then L2 normalisation (sentence-transformers Normalize; not a graph node)" } else { "" });
    out!("not imported: {}", if imported.skipped.is_empty() { "nothing".to_string() } else { imported.skipped.join(", ") });
    out!("\narchitecture: input {:?}, outputs {:?}", graph.input_shape, graph.outputs);
    out!("  {:<44} {:<17} {:<14} {:>9}", "node", "op", "output shape", "params");
    for node in &graph.nodes {
        let p: usize = graph.parameters().iter().filter(|s| s.node == node.name).map(|s| s.numel()).sum();
        out!("  {:<44} {:<17} {:<14} {:>9}", node.name, node.op.kind(), format!("{:?}", shapes[&node.name]), if p > 0 { p.to_string() } else { String::new() });
    }
    Ok(())
}

/// `embed`: sentence embeddings from a model file that carries its tokenizer.
#[allow(clippy::too_many_arguments)]
fn embed(model: &Path, text: Option<String>, file: Option<PathBuf>, out: Option<PathBuf>, seq_len: Option<usize>, time: bool, profile: bool, against: Option<PathBuf>, full_length: bool, limit: Option<usize>) -> Result<ExitCode> {
    use squeeze::pipeline::embedding as emb;
    let mut f = store::read(model)?;
    if let Some(seq) = seq_len {
        emb::set_seq_len(&mut f, seq)?;
    }
    let encoder = emb::encoder_for(&f)?;
    let sentences: Vec<String> = match (&text, &file) {
        (Some(t), None) => vec![t.clone()],
        (None, Some(p)) => emb::read_sentences(p, limit)?,
        _ => bail!("give --text \"a sentence\" or --file SENTENCES --out EMBEDDINGS.npy"),
    };
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let n = sentences.len();
    let t = std::time::Instant::now();
    let ids = encoder.encode(&refs)?;
    let (e, plan) = if full_length {
        let plan = f.plan()?;
        (emb::embed_ids(&plan, &ids, n, 32)?, plan)
    } else {
        let e = emb::embed_sentences(&mut f, &ids, n, 32)?;
        // The model at its full input length: its kernels, and what --time measures.
        (e, f.plan()?)
    };
    let wall = t.elapsed().as_secs_f64();
    let dim = e.len() / n;
    match (text, file, out) {
        (Some(_), _, _) => {
            let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
            out!("{} dims, mean-pooled, L2 norm {norm:.6}; L2-normalised:", dim);
            out!("{}", e.iter().map(|v| format!("{:.6}", v / norm)).collect::<Vec<_>>().join(" "));
        }
        (None, Some(_), Some(out_path)) => {
            refuse_overwrite(&out_path, &[model])?;
            let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
            squeeze::format::write_atomic(&out_path, &squeeze::data::npy::npy_bytes("<f4", &[n, dim], &bytes))
                .with_context(|| format!("cannot write '{}'", out_path.display()))?;
            out!("wrote {} ({n} × {dim}) in {wall:.2} s with kernels {}", out_path.display(), plan.kernel_description());
            if time {
                let (b1, s1) = emb::time_batches(&plan, &ids, n, 1, 50)?;
                let (b32, s32) = emb::time_batches(&plan, &ids, n, 32, 10)?;
                out!(
                    "seq {} tokens: batch 1 {:.2} ± {:.2} ms ({:.1} sentences/s), batch 32 {:.1} ± {:.1} ms ({:.1} sentences/s)",
                    ids.len() / n,
                    b1 * 1e3,
                    s1 * 1e3,
                    1.0 / b1,
                    b32 * 1e3,
                    s32 * 1e3,
                    32.0 / b32
                );
            }
            if let Some(base_path) = &against {
                let mut base = store::read(base_path)?;
                emb::set_seq_len(&mut base, ids.len() / n)?;
                let base_plan = base.plan()?;
                out!("interleaved with {} (kernels {}), call by call:", base_path.display(), base_plan.kernel_description());
                for (batch, reps) in [(1, 100), (32, 20)] {
                    let p = emb::time_interleaved([&base_plan, &plan], &ids, n, batch, reps)
                        .with_context(|| format!("'{}' cannot run these sentences", base_path.display()))?;
                    out!(
                        "  batch {batch:>2}: {:.2} ms against {:.2} ms, speed-up {:.2} ± {:.2}× (median of {reps} adjacent pairs ± half the interquartile range)",
                        p.second.median * 1e3,
                        p.first.median * 1e3,
                        p.speedup.median,
                        p.speedup.spread,
                    );
                }
            }
            if profile {
                for (batch, reps) in [(1, 50), (32, 10)] {
                    let (rows, whole) = emb::profile_batches(&plan, &ids, n, batch, reps)?;
                    out!("batch {batch}: {:.2} ms per run (mean of {reps}), by kind of step:", whole * 1e3);
                    for (kind, secs) in rows {
                        out!("  {kind:<34} {:>8.3} ms {:>5.1}%", secs * 1e3, 100.0 * secs / whole);
                    }
                }
            }
        }
        _ => bail!("--file needs --out EMBEDDINGS.npy"),
    }
    Ok(ExitCode::SUCCESS)
}

fn zoo_names() -> String {
    zoo::MODELS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Writes `.sqz` (sparse where masked) or `.safetensors` by the output's extension.
fn write_model(out: &Path, m: &Model) -> Result<u64> {
    match out.extension().and_then(|e| e.to_str()) {
        Some("sqz") => Ok(store::write_sqz(out, quantize::store_f32(m), store::Coding::Entropy)?),
        Some("safetensors") => Ok(store::write_safetensors(out, m)?),
        _ => bail!("output '{}' must end in .sqz or .safetensors", out.display()),
    }
}

/// A data set that does not fit a text model (token ids in) is usually the default image
/// set: say what handles text models instead (`instead`) along with the mismatch.
fn text_model_hint(e: anyhow::Error, model: &Path, graph: &squeeze::spec::Graph, instead: &str) -> anyhow::Error {
    if squeeze::pipeline::embedding::text_input(graph).is_ok() {
        e.context(format!("'{}' is a text model (it takes token ids): {instead}", model.display()))
    } else {
        e
    }
}

/// A count that must be at least 1 (a limit of 0 would leave nothing to train or test on).
fn at_least_one(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Never write over an input file.
fn refuse_overwrite(out: &Path, inputs: &[&Path]) -> Result<()> {
    for input in inputs {
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(out))
            && a == b
        {
            bail!("output '{}' is the input file; choose another --out", out.display());
        }
    }
    Ok(())
}

fn cmd_run(recipe_path: &Path, out_dir: PathBuf, data: DataArgs) -> Result<ExitCode> {
    if data.train_arrays.is_some() || data.test_arrays.is_some() {
        bail!("`run` takes its data from the recipe: set [data] dataset = \"numpy\", train = ..., test = ... there");
    }
    if data.validation.is_some() {
        bail!("`run` takes the validation split from the recipe: set [data] validation = N (or validation_from / validation_arrays) there");
    }
    let recipe = Recipe::load(recipe_path)?;
    let opts = RunOptions {
        recipe_path: recipe_path.to_path_buf(),
        out_dir: out_dir.clone(),
        data_dir: data.data.clone(),
        train_limit: data.train_limit,
        test_limit: data.test_limit,
    };
    let mut bar = TrainBar::default();
    let report = pipeline::run(&recipe, &opts, &mut |e| match e {
        Event::Stage(name) => eprintln!("== {name}"),
        Event::Train(t) => bar.on(t),
        Event::Measured(s) => out!("{}", stage_line(&s)),
        Event::Summary(lines) => lines.iter().for_each(|l| out!("  {l}")),
        Event::Warning(w) => eprintln!("warning: {w}"),
    })?;
    let first = &report.stages[0];
    let last = report.stages.last().unwrap_or(first);
    let quality = match &last.fidelity {
        Some(f) => format!("mean cosine {:.6} to the fp32 embeddings", f.mean_cosine),
        None => format!("{:.2}% vs baseline {:.2}% (test)", last.accuracy * 100.0, first.accuracy * 100.0),
    };
    out!(
        "gate passed: final '{}' {quality}, {} bytes, {:.1}× smaller than fp32; report: {}",
        last.name,
        last.bytes,
        last.ratio,
        out_dir.join("report.md").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// One measured stage as `run` prints it: accuracy for a classifier, cosine to the fp32
/// embeddings for an embedding model.
fn stage_line(s: &squeeze::report::Stage) -> String {
    let quality = match &s.fidelity {
        Some(f) => format!("cosine mean {:.6} min {:.6}", f.mean_cosine, f.min_cosine),
        _ if s.accuracy.is_nan() => "(reference embeddings)".to_string(),
        _ => format!("test acc {:>6.2}%  val acc {:>6.2}%", s.accuracy * 100.0, s.validation_accuracy * 100.0),
    };
    let throughput = if s.throughput_b256.is_nan() { String::new() } else { format!("  {:>10.0} img/s (b256)", s.throughput_b256) };
    format!(
        "{:<14} {quality}  {:>9} bytes  {:>6.2}×  {:>7.2} µs/img (b1){throughput}  kernel {}",
        s.name, s.bytes, s.ratio, s.latency_us_b1, s.kernel
    )
}

/// A training progress bar on a terminal; silent when stderr is not one.
#[derive(Default)]
struct TrainBar {
    bar: Option<ProgressBar>,
}

impl TrainBar {
    fn on(&mut self, e: TrainEvent) {
        match e {
            TrainEvent::EpochStart { epoch, epochs, batches } => {
                let bar = ProgressBar::new(batches as u64);
                bar.set_style(
                    ProgressStyle::with_template("  epoch {msg} [{bar:30}] {pos}/{len} batches {elapsed}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_message(format!("{epoch}/{epochs}"));
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bar = Some(bar);
            }
            TrainEvent::Step => {
                if let Some(b) = &self.bar {
                    b.inc(1);
                }
            }
            TrainEvent::EpochEnd(s) => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                eprintln!(
                    "  epoch {:>2}: loss {:.4}, train acc {:.2}%, {:.0} samples/s, {:.1} s",
                    s.epoch,
                    s.loss,
                    s.train_accuracy * 100.0,
                    s.samples_per_s,
                    s.wall_s
                );
            }
        }
    }
}

fn export(path: &Path, format: ExportFormat, out: &Path, float: bool, weight_type: squeeze::format::onnx::WeightType, check_inputs: usize) -> Result<()> {
    use squeeze::format::onnx;
    refuse_overwrite(out, &[path])?;
    let file = store::read(path)?;
    let bytes = match format {
        ExportFormat::Safetensors => {
            let s = store::export_safetensors(&file, out, check_inputs)?;
            out!(
                "wrote {} ({} bytes, {} tensors, dense f32); re-read and checked on {} inputs: max |Δ| {:e} against the decoded model, {:e} against the stored encoding's runtime",
                out.display(),
                s.bytes,
                s.tensors,
                s.checked_inputs,
                s.max_abs_diff,
                s.max_abs_diff_vs_stored
            );
            return Ok(());
        }
        ExportFormat::Onnx => {
            let e = store::export_onnx(path, file, float, weight_type).with_context(|| format!("exporting '{}' as ONNX", path.display()))?;
            if e.int8_layers > 0 {
                let weights = match weight_type {
                    onnx::WeightType::Uint8 => "int8 weights stored as uint8 (zero point 128)",
                    onnx::WeightType::Int8 => "int8 weights (zero point 0)",
                };
                out!("ONNX opset {}, QDQ int8: {} integer layers with per-channel {weights} and squeeze's calibrated u8 activations", onnx::export::EXPORT_OPSET, e.int8_layers);
                out!("checked: imported again, max |difference| {:.2e} from the model run on dequantized weights ({} inputs)", e.max_diff, e.samples);
            } else if e.int8_weights > 0 {
                let dynamic = if e.dynamic_layers > 0 { format!(" ({} dynamic layers: their run-time activation quantization is not in the file)", e.dynamic_layers) } else { String::new() };
                out!("ONNX opset {}, int8 weights: {} tensors as int8 with per-channel scales through DequantizeLinear, float activations{dynamic}", onnx::export::EXPORT_OPSET, e.int8_weights);
                out!("checked: imported again, max |difference| {:.2e} from the model run on dequantized weights ({} inputs)", e.max_diff, e.samples);
            } else {
                out!("ONNX opset {}, fp32 (every tensor decoded to dense f32)", onnx::export::EXPORT_OPSET);
                out!("checked: imported again, max |difference| {:.2e} from the model ({} inputs)", e.max_diff, e.samples);
            }
            e.bytes
        }
    };
    squeeze::format::write_atomic(out, &bytes).with_context(|| format!("cannot write '{}'", out.display()))?;
    out!("wrote {} ({} bytes)", out.display(), bytes.len());
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let file = store::read(path)?;
    let bytes = std::fs::metadata(path).with_context(|| format!("cannot read '{}'", path.display()))?.len();
    let graph = file.graph().clone();
    let shapes = graph.validate()?;
    let kind = match &file {
        ModelFile::Dense(_) => "safetensors (dense f32)".to_string(),
        ModelFile::Sqz(_) => ".sqz container".to_string(),
        ModelFile::Onnx(o) => format!("ONNX (opset {}, from {}), imported", o.opset, if o.producer.is_empty() { "?" } else { &o.producer }),
    };
    let params = graph.num_params();
    out!("{}: {kind}, {bytes} bytes, {params} parameters ({:.2}× vs fp32 {} bytes)", path.display(), 4.0 * params as f64 / bytes as f64, 4 * params);
    out!("\narchitecture: input {:?}, outputs {:?}", graph.input_shape, graph.outputs);
    out!("  {:<10} {:<10} {:<14} {:<16} {:>9}", "node", "op", "reads", "output shape", "params");
    for node in &graph.nodes {
        let p: usize = graph.parameters().iter().filter(|s| s.node == node.name).map(|s| s.numel()).sum();
        out!(
            "  {:<10} {:<10} {:<14} {:<16} {:>9}",
            node.name,
            node.op.kind(),
            node.inputs.join(","),
            format!("{:?}", shapes[&node.name]),
            if p > 0 { p.to_string() } else { String::new() }
        );
    }
    out!("\ntensors:");
    out!("  {:<14} {:<16} {:>9} {:>9} {:>8}  encoding", "name", "shape", "stored", "bytes", "bits/el");
    match &file {
        ModelFile::Dense(d) => {
            for (name, shape, v) in &d.tensors {
                out!("  {:<14} {:<16} {:>9} {:>9} {:>8.2}  f32 dense", name, format!("{shape:?}"), v.len(), v.len() * 4, 32.0);
            }
        }
        ModelFile::Onnx(o) => {
            for (name, shape, v) in &o.tensors {
                out!("  {:<14} {:<16} {:>9} {:>9} {:>8.2}  f32 dense (imported)", name, format!("{shape:?}"), v.len(), v.len() * 4, 32.0);
            }
            let ops: Vec<String> = o.op_counts.iter().map(|(op, n)| format!("{op} ×{n}")).collect();
            out!("
ONNX ops in the file: {}", ops.join(", "));
            if !o.notes.is_empty() {
                out!("import notes:");
                for note in &o.notes {
                    out!("  - {note}");
                }
            }
            out!("imported: the model runs every squeeze pass (prune, trim, quantize, share, distill) and exports back to ONNX");
        }
        ModelFile::Sqz(s) => {
            let raw = std::fs::read(path)?;
            let sections = sqz::summarize(&raw, &Limits::default())?;
            for sec in &sections {
                let Some(name) = &sec.tensor else {
                    out!("  {:<14} {:<16} {:>9} {:>9} {:>8}  {}", format!("[{}]", sec.kind.trim()), "", "", sec.total_bytes, "", sec.encoding);
                    continue;
                };
                let t = s.tensors.iter().find(|t| &t.name == name);
                let (shape, stored, numel) = t.map_or((String::new(), 0, 1), |t| (format!("{:?}", t.shape), t.values.len(), t.numel()));
                out!(
                    "  {:<14} {:<16} {:>9} {:>9} {:>8.2}  {}",
                    name,
                    shape,
                    stored,
                    sec.total_bytes,
                    sec.total_bytes as f64 * 8.0 / numel as f64,
                    sec.encoding
                );
            }
            layer_table(s, &sections, bytes);
            if !s.quant.integer_nodes.is_empty() {
                out!("\ninteger layers: {}", s.quant.integer_nodes.iter().cloned().collect::<Vec<_>>().join(", "));
                for (v, qp) in &s.quant.activations {
                    out!("  activation {v:<12} scale {:.6} zero point {}", qp.scale, qp.zero_point);
                }
            }
            out!("\nkernel: {}", store::sqz_plan(s)?.kernel_description());
        }
    }
    Ok(())
}

/// Per-layer accounting in the style of Deep Compression's Tables 2–5: weights kept,
/// bits per kept weight for the values (codes, codebook, scales) and for the positions,
/// the layer's bytes (weight and bias sections, framing included), its share of the
/// file and its ratio against fp32.
fn layer_table(s: &sqz::SqzModel, sections: &[sqz::SectionSummary], file_bytes: u64) {
    out!("\nper layer (weight bits and index bits are per kept weight):");
    out!(
        "  {:<10} {:>9} {:>8} {:>12} {:>11} {:>9} {:>8} {:>8}",
        "layer", "params", "kept %", "weight bits", "index bits", "bytes", "share", "ratio"
    );
    let section = |name: &str| sections.iter().find(|x| x.tensor.as_deref() == Some(name));
    let specs = s.graph.parameters();
    for node in s.graph.nodes.iter().filter(|n| n.op.has_params()) {
        // Every weight matrix of the node (one for Linear/Conv2d; weight_ih and
        // weight_hh for LSTM/GRU) and its biases.
        let mine: Vec<&squeeze::spec::ParamSpec> = specs.iter().filter(|p| p.node == node.name).collect();
        let tensor = |name: &str| s.tensors.iter().find(|t| t.name == name);
        let weights: Vec<_> = mine.iter().filter(|p| p.kind == squeeze::spec::ParamKind::Weight).filter_map(|p| Some((tensor(&p.name)?, section(&p.name)?))).collect();
        if weights.is_empty() {
            continue;
        }
        let params: usize = mine.iter().map(|p| p.numel()).sum();
        let numel: usize = weights.iter().map(|(t, _)| t.numel()).sum();
        let stored: usize = weights.iter().map(|(t, _)| t.values.len()).sum();
        let kept = stored.max(1);
        let bytes: usize = mine.iter().filter_map(|p| section(&p.name)).map(|x| x.total_bytes).sum();
        let value_bytes: usize = weights.iter().map(|(_, x)| x.value_bytes).sum();
        let index_bytes: usize = weights.iter().map(|(_, x)| x.index_bytes).sum();
        out!(
            "  {:<10} {:>9} {:>7.1}% {:>12.2} {:>11.2} {:>9} {:>7.1}% {:>7.1}×",
            node.name,
            params,
            100.0 * stored as f64 / numel.max(1) as f64,
            value_bytes as f64 * 8.0 / kept as f64,
            index_bytes as f64 * 8.0 / kept as f64,
            bytes,
            100.0 * bytes as f64 / file_bytes as f64,
            4.0 * params as f64 / bytes as f64
        );
    }
    let params = s.graph.num_params();
    let weights: usize = s.graph.parameters().iter().filter(|p| p.kind == squeeze::spec::ParamKind::Weight).map(|p| p.numel()).sum();
    let kept: usize = s
        .tensors
        .iter()
        .filter(|t| specs.iter().any(|p| p.name == t.name && p.kind == squeeze::spec::ParamKind::Weight))
        .map(|t| t.values.len())
        .sum();
    out!(
        "  {:<10} {:>9} {:>7.1}% {:>12} {:>11} {:>9} {:>7.1}% {:>7.1}×",
        "total",
        params,
        100.0 * kept as f64 / weights.max(1) as f64,
        "",
        "",
        file_bytes,
        100.0,
        4.0 * params as f64 / file_bytes as f64
    );
}

/// Where the teachers come from.
struct TeacherArgs {
    /// Files or zoo names.
    sources: Vec<String>,
    /// Epochs for a zoo-name teacher.
    epochs: usize,
    save: Option<PathBuf>,
}

fn cmd_distill(t: &TeacherArgs, student: &str, cfg: &DistillConfig, seeds: u64, out: &Path, data: &DataArgs) -> Result<ExitCode> {
    if !matches!(out.extension().and_then(|e| e.to_str()), Some("sqz" | "safetensors")) {
        bail!("output '{}' must end in .sqz or .safetensors", out.display());
    }
    let splits = data.load()?;
    let mut bar = TrainBar::default();
    let mut plans = Vec::new();
    for (i, source) in t.sources.iter().enumerate() {
        let plan = match zoo::build(source) {
            Some(_) => {
                let m = distill::train_teacher(source, &splits.train.images, &splits.train.labels, t.epochs, 1234 + i as u64, &mut |e| bar.on(e))?;
                if let Some(path) = &t.save {
                    let path = if i == 0 { path.clone() } else { path.with_extension(format!("{i}.{}", path.extension().and_then(|e| e.to_str()).unwrap_or("safetensors"))) };
                    write_model(&path, &m)?;
                    out!("saved teacher {source} to {}", path.display());
                }
                store::model_plan(&m)?
            }
            None => store::read(Path::new(source))
                .with_context(|| format!("teacher '{source}' is neither a zoo name ({}) nor a readable model file", zoo_names()))?
                .plan()?,
        };
        pipeline::check_shapes(&plan, &[plan.input_len()], &splits.train).with_context(|| format!("teacher '{source}'"))?;
        let acc = exec::evaluate(&plan, &splits.test.images, &splits.test.labels, 2)?;
        out!("teacher {source}: test accuracy {:.2}%", acc * 100.0);
        plans.push(plan);
    }
    if seeds == 0 {
        // Teachers only (e.g. to train and --save-teacher one): nothing to compare.
        out!("--seeds 0: no student trained");
        return Ok(ExitCode::SUCCESS);
    }
    let make_student = |seed: u64| -> Result<Model, distill::DistillError> {
        match zoo::build(student) {
            Some(g) => Ok(Model::init(g, seed)?),
            None => store::read_model(Path::new(student)).map_err(|e| distill::DistillError::Student(e.to_string())),
        }
    };
    let probe = make_student(0).with_context(|| format!("student '{student}' is neither a zoo name ({}) nor a readable model file", zoo_names()))?;
    distill::check_pair(&plans[0], &probe).context("distill")?;
    let set = distill::transfer_set(
        &splits.train.images,
        &splits.train.labels,
        &splits.train.sample_shape,
        cfg.shifted_copies,
        cfg.max_shift,
        7,
    )?;
    let refs: Vec<&exec::Plan> = plans.iter().collect();
    let teacher = distill::teacher_outputs(&refs, &set.images, cfg.temperature)?;
    if plans.len() > 1 {
        let agree = teacher.labels[..splits.train.len()].iter().zip(&splits.train.labels).filter(|(a, b)| a == b).count();
        out!("ensemble of {}: agrees with {:.2}% of the training labels", plans.len(), 100.0 * agree as f64 / splits.train.len() as f64);
    }
    let seed_list: Vec<u64> = (1..=seeds).collect();
    let mut wrote = false;
    let cmp = distill::compare(
        &make_student,
        &seed_list,
        &set,
        &teacher,
        cfg,
        &splits.test.images,
        &splits.test.labels,
        &mut |e| bar.on(e),
        &mut |r, m| {
            out!(
                "seed {}: student alone {:.2}%, distilled {:.2}% ({:+.2} points; {} epochs each over {} samples)",
                r.seed,
                r.control_accuracy * 100.0,
                r.distilled_accuracy * 100.0,
                r.gain() * 100.0,
                cfg.total_epochs(),
                set.len()
            );
            if !wrote {
                wrote = true;
                if let Err(e) = write_model(out, m) {
                    eprintln!("squeeze: {}", error_line(&e));
                    std::process::exit(2);
                }
            }
        },
    )?;
    let (c, cs) = cmp.control();
    let (d, ds) = cmp.distilled();
    let (g, gs) = cmp.gain();
    out!(
        "mean over {} seeds: alone {:.2}% ± {:.2}, distilled {:.2}% ± {:.2}, gain {:+.2} ± {:.2} points ({} distillation, T = {}, alpha = {}, {:?} schedule, {} shifted copies); wrote {}",
        cmp.seeds.len(),
        c * 100.0,
        cs * 100.0,
        d * 100.0,
        ds * 100.0,
        g * 100.0,
        gs * 100.0,
        if cfg.mode == distill::Mode::Hard { "hard" } else { "soft" },
        cfg.temperature,
        cfg.alpha,
        cfg.schedule,
        cfg.shifted_copies,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn share_tasks(a: &ShareArgs, out: &Path, data: &DataArgs) -> Result<ExitCode> {
    use squeeze::compress::multitask::{self, MultitaskConfig, SoftConfig};
    if out.extension().and_then(|e| e.to_str()) != Some("sqz") {
        bail!("output '{}' must end in .sqz", out.display());
    }
    let tasks = multitask::fashion_mnist_tasks();
    if a.models.len() != 1 && a.models.len() != tasks.len() {
        bail!("--model takes one zoo name for every task or one per task ({}), got {}", tasks.len(), a.models.len());
    }
    let mut graphs = Vec::new();
    for t in 0..tasks.len() {
        let name = &a.models[t.min(a.models.len() - 1)];
        let g = zoo::build(name).with_context(|| format!("unknown zoo model '{name}' (known: {})", zoo_names()))?;
        let head = multitask::find_head(&g)?;
        graphs.push(multitask::task_graph(&g, &head, tasks[t].classes()));
    }
    multitask::check_trunks(&tasks, &graphs)?;
    let splits = data.load()?;
    multitask::check_tasks(&tasks, splits.train.num_classes)?;
    let cfg = MultitaskConfig { train: TrainConfig { epochs: a.epochs, batch_size: 128, lr: 1e-3, seed: a.seed, ..TrainConfig::default() } };
    let mut bar = TrainBar::default();
    let separate = multitask::train_separate(&tasks, &graphs, &splits.train, &cfg, &mut |e| bar.on(e))?;
    let mut separate_acc = Vec::new();
    let mut separate_bytes = 0;
    for (t, m) in separate.iter().enumerate() {
        separate_bytes += sqz::encode(&quantize::store_f32(m))?.len();
        separate_acc.push(multitask::task_accuracies(&store::model_plan(m)?, &tasks[t..=t], &splits.test)?[0]);
    }
    let shared = match a.form {
        FormArg::Hard => multitask::share_hard(&tasks, &separate, &splits.train, &cfg, &mut |e| bar.on(e))?,
        FormArg::Soft => {
            let soft = SoftConfig { strength: a.penalty, epochs: a.epochs, head_epochs: a.head_epochs, head_lr: a.head_lr };
            multitask::share_soft(&tasks, &graphs, &splits.train, &cfg, &soft, &mut |e| bar.on(e))?.0
        }
    };
    let bytes = store::write_sqz(out, quantize::store_f32(&shared), store::Coding::Entropy)?;
    // Every head runs from the one file.
    let acc = multitask::task_accuracies(&store::read(out)?.plan()?, &tasks, &splits.test)?;
    out!("{:<10} {:>12} {:>12} {:>8}", "task", "separate", "shared", "Δ pts");
    for (t, task) in tasks.iter().enumerate() {
        out!("{:<10} {:>11.2}% {:>11.2}% {:>+8.2}", task.name, separate_acc[t] * 100.0, acc[t] * 100.0, (acc[t] - separate_acc[t]) * 100.0);
    }
    out!(
        "bytes: three separate models {separate_bytes}, one shared file {bytes} ({:.1}% of separate, {} form); wrote {}",
        bytes as f64 * 100.0 / separate_bytes as f64,
        if matches!(a.form, FormArg::Hard) { "hard" } else { "soft" },
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn bench(model: &str, train_samples: usize, json: bool, data: &DataArgs) -> Result<ExitCode> {
    let graph = zoo::build(model).with_context(|| format!("unknown zoo model '{model}' (known: {})", zoo_names()))?;
    let splits = data.load()?;
    let mut m = Model::init(graph, 1)?;
    let n = train_samples.min(splits.train.len());
    let per = splits.train.sample_len();
    let cfg = TrainConfig { epochs: 1, ..TrainConfig::default() };
    let stats = train::train(&mut m, &splits.train.images[..n * per], &splits.train.labels[..n], &cfg, &mut |_| {});
    let train_sps = stats[0].samples_per_s;
    let calib = &splits.train.images[..1000.min(n) * per];
    // Every encoding the runtime runs natively, from the stored form (as `squeeze run`
    // measures it): dense f32, full int8, 90% pruned (sparse) f32 and int8, and weight
    // sharing (5-bit codebooks for Linear, 8-bit for Conv2d).
    let mut pruned = m.clone();
    prune::magnitude(&mut pruned, 0.9, prune::Scope::Layer, &[])?;
    let mut shared = m.clone();
    share::share(&mut shared, &share::ShareConfig { linear_bits: 5, conv_bits: 8, per_layer: Default::default(), layers: Vec::new() })?;
    let plans = [
        ("f32", store::model_plan(&m)?),
        ("int8", store::sqz_plan(&quantize::quantize(&m, quantize::Mode::Full, &[], calib)?)?),
        ("f32-pruned90", store::sqz_plan(&quantize::store_f32(&pruned))?),
        ("int8-pruned90", store::sqz_plan(&quantize::quantize(&pruned, quantize::Mode::Full, &[], calib)?)?),
        ("codebook", store::sqz_plan(&quantize::store_f32(&shared))?),
    ];
    // Interleaved rounds, so load from other processes hits every encoding alike.
    let rounds = 5;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); plans.len()];
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); plans.len()];
    for _ in 0..rounds {
        for (i, (_, plan)) in plans.iter().enumerate() {
            lat[i].extend(exec::latencies_us(plan, &splits.test.images, 200)?);
            thr[i].push(exec::throughput(plan, &splits.test.images, 256, 2, 0.1)?);
        }
    }
    let rows: Vec<(&str, String, f64, f64, f64)> = plans
        .iter()
        .zip(lat.iter_mut().zip(thr.iter_mut()))
        .map(|((name, plan), (l, t))| {
            let s = median_and_spread(l);
            (*name, plan.kernel_description(), s.median, s.spread, median_and_spread(t).median)
        })
        .collect();
    let (base_lat, base_thr) = (rows[0].2, rows[0].4);
    if json {
        let v = serde_json::json!({
            "model": model,
            "machine": squeeze::report::measure::machine_description(),
            "threads": 2,
            "train_samples_per_s": train_sps.round(),
            "encodings": rows.iter().map(|(n, k, l, sp, t)| serde_json::json!({
                "encoding": n, "kernel": k, "latency_us_b1": l, "latency_us_b1_spread": sp, "throughput_b256": t.round(),
                "latency_speedup_vs_f32": base_lat / l, "throughput_ratio_vs_f32": t / base_thr,
            })).collect::<Vec<_>>(),
        });
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!("model {model}, {}", squeeze::report::measure::machine_description());
    out!("training: {:.0} samples/s (1 epoch of {n} images, batch 128, 2 workers)", train_sps);
    out!("inference: {rounds} interleaved rounds; b1 = one image, one thread (median ± half IQR); b256 = batches of 256 on 2 threads");
    out!("{:<14} {:>14} {:>12} {:>8} {:>9}  kernel", "encoding", "b1 µs (±)", "b256 img/s", "b1 ×f32", "b256 ×f32");
    for (name, kernel, lat, spread, thr) in &rows {
        out!("{:<14} {:>7.2} ±{:<5.2} {:>12.0} {:>7.2}× {:>8.2}×  {}", name, lat, spread, thr, base_lat / lat, thr / base_thr, kernel);
    }
    Ok(ExitCode::SUCCESS)
}
