//! The `squeeze` command line: parses arguments, calls the library, prints results.
//! Exit codes: 0 success, 1 a validation gate failed (the report is written), 2 error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use squeeze::compress::distill;
use squeeze::compress::{prune, quantize, trim, PassConfig};
use squeeze::data::{self, Splits};
use squeeze::format::hf;
use squeeze::model::{zoo, Model};
use squeeze::pipeline::{self, Event, PipelineError, RunOptions};
use squeeze::recipe::{ModelSource, OnePass, Recipe, TaskSection, TrainSection};
use squeeze::runtime::exec;
use squeeze::store;
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
Exit codes: 0 success, 1 a validation gate failed (report written), 2 error.\n\
SQUEEZE_ISA=scalar|avx2|avx512 caps the instruction set of squeeze's kernels (to test or compare paths).")]
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
    /// labels with --mode hard), then fine-tune on the true labels; compares each seed
    /// with the same student trained alone on the same inputs for the same epochs: a
    /// recipe of one `distill` pass whose baseline is the (first) teacher.
    Distill {
        /// The teacher: a model file (.safetensors, .sqz, .onnx), or a zoo name trained
        /// first (--teacher-epochs, cosine schedule). Repeat with model files for an
        /// ensemble (softened outputs averaged).
        #[arg(long, required = true)]
        teacher: Vec<String>,
        /// Epochs to train a zoo-name teacher (cosine schedule).
        #[arg(long, value_parser = squeeze::limits::epochs_arg, default_value_t = 15)]
        teacher_epochs: usize,
        /// Also write the teacher (the run's baseline) to this file (.safetensors or .sqz).
        #[arg(long)]
        save_teacher: Option<PathBuf>,
        #[command(flatten)]
        pass: distill::Distill,
        #[command(flatten)]
        run: OnePassArgs,
    },
    /// Parameter sharing across models: three Fashion-MNIST tasks (10 classes; tops,
    /// bottoms, footwear, bags; footwear or not) as one file with a shared trunk and a
    /// head per task, against three separately trained models: a recipe of one
    /// `share_tasks` pass with those three `[[task]]` tables.
    Share {
        /// Zoo architecture of the task models (its last Linear becomes the task head):
        /// one name for all tasks, or one per task, comma-separated (they must share a trunk).
        #[arg(long = "model", value_delimiter = ',', default_value = "mlp")]
        models: Vec<String>,
        /// Training epochs of each separate task model (and of the soft form's joint training).
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        #[command(flatten)]
        pass: squeeze::compress::multitask::ShareTasks,
        #[command(flatten)]
        run: OnePassArgs,
    },
    /// Show what a model file holds: architecture, per-tensor encoding and bytes
    /// (.sqz, .safetensors, an ONNX model with what squeeze imports from it, or a
    /// Hugging Face BERT directory).
    Inspect {
        model: PathBuf,
        /// Print JSON (the same fields) instead of tables.
        #[arg(long)]
        json: bool,
    },
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
    /// Time a model: a file (.sqz, .safetensors, .onnx, a Hugging Face directory) as
    /// stored, its own f32 and dynamic int8, on generated inputs; or a zoo model, trained
    /// one epoch (timed) and stored in every encoding the runtime runs natively.
    /// Batch-1 latency and batch throughput against f32 in the same run; the machine's
    /// instruction set and each kernel named.
    Bench {
        /// A model file or directory, or a zoo name (mlp, lenet300, lenet5, cnn, lstm, gru).
        #[arg(value_name = "MODEL")]
        model_name: Option<String>,
        /// Zoo name (the same as MODEL).
        #[arg(long, default_value = "mlp")]
        model: String,
        /// Training images for a zoo model's training-speed epoch.
        #[arg(long, default_value_t = 20000)]
        train_samples: usize,
        /// Samples per batch of a file's throughput figure (a zoo model uses 256).
        #[arg(long, default_value_t = 256, value_parser = at_least_one)]
        batch: usize,
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

/// A verb that is one pass: the recipe of that pass ([`Recipe::one_pass`]), run by the
/// same runner as `squeeze run` (so `squeeze prune M --sparsity 0.5 --out P` writes the
/// bytes the equivalent recipe writes), then its final stage moved to `--out`.
/// `save_baseline` also keeps the run's baseline (e.g. a teacher the run trained).
fn one_pass(recipe: OnePass, args: &OnePassArgs, inputs: &[&Path], save_baseline: Option<&Path>) -> Result<ExitCode> {
    let pass = recipe.0.passes[0].clone();
    let out = &args.out;
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or_default().to_string();
    if ext != "sqz" && ext != "safetensors" {
        bail!("output '{}' must end in .sqz or .safetensors", out.display());
    }
    if ext == "safetensors" && pass.technique().is_final() {
        bail!("'{}' stores an encoded (quantized) model, which only .sqz holds: write --out as .sqz", pass.stage_name());
    }
    refuse_overwrite(out, inputs)?;
    if let Some(path) = save_baseline {
        refuse_overwrite(path, inputs)?;
    }
    if args.data.train_arrays.is_some() != args.data.test_arrays.is_some() {
        bail!("'{}' fine-tunes and calibrates on training data: give --train-arrays too (--test-arrays alone serves eval)", pass.stage_name());
    }
    let model_file = recipe.0.model.file.clone();
    let recipe = recipe.checked().context("the pass's settings")?;
    let name = pass.stage_name();
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
        let report = result.map_err(|e| match model_file.as_deref().map(store::read) {
            Some(Ok(f)) if matches!(e, PipelineError::ShapeMismatch { .. }) => text_model_hint(
                e.into(),
                model_file.as_deref().unwrap_or(Path::new("")),
                f.graph(),
                "compress it with a recipe, e.g. `squeeze run --recipe recipes/minilm-int8.toml`, which calibrates and validates on sentences",
            ),
            _ => e.into(),
        })?;
        if let (Some(path), Some(first)) = (save_baseline, report.stages.first()) {
            let bytes = write_model(path, &store::read_model(&scratch.join(&first.file))?)?;
            out!("saved the baseline ({}) to {} ({bytes} bytes)", first.name, path.display());
        }
        let separate: Vec<&squeeze::report::Stage> = report.stages.iter().filter(|s| s.name.starts_with("separate-")).collect();
        let last = report.stages.last().context("the run measured no stage")?;
        if !separate.is_empty() && last.tasks.is_some() {
            let separate_bytes: u64 = separate.iter().map(|s| s.bytes).sum();
            out!("bytes: {} separate models {separate_bytes}, one shared file {} ({:.1}% of separate)", separate.len(), last.bytes, last.bytes as f64 * 100.0 / separate_bytes as f64);
        }
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

/// `squeeze distill`: the first teacher is the run's baseline (a file, or a zoo model
/// the run trains), the others join it as an ensemble.
fn distill_verb(teachers: &[String], teacher_epochs: usize, save_teacher: Option<&Path>, mut pass: distill::Distill, run: &OnePassArgs) -> Result<ExitCode> {
    let Some(student) = pass.student.clone() else {
        bail!("--student is required: a zoo name ({}) or a model file", zoo_names());
    };
    let is_file = |t: &str| Path::new(t).is_file();
    for t in teachers {
        if zoo::build(t).is_none() && !is_file(t) {
            bail!("teacher '{t}' is neither a zoo name ({}) nor a model file", zoo_names());
        }
    }
    if let Some(t) = teachers.iter().skip(1).find(|t| !is_file(t)) {
        bail!("teacher '{t}': only the first --teacher may be a zoo name (the run trains it); train another with `squeeze train --model {t} --out {t}.safetensors` and pass the file");
    }
    let (first, rest) = teachers.split_first().context("give a --teacher")?;
    pass.ensemble = rest.iter().map(PathBuf::from).collect();
    let source = if is_file(first) { ModelSource::file(Path::new(first)) } else { ModelSource::zoo(first) };
    let mut recipe = Recipe::one_pass(source, run.data.recipe_data(), run.seed, PassConfig::Distill(pass));
    recipe.0.train = TrainSection { epochs: teacher_epochs, schedule: LrSchedule::Cosine, ..TrainSection::default() };
    let inputs: Vec<&Path> = teachers.iter().map(Path::new).chain([Path::new(&student)]).collect();
    one_pass(recipe, run, &inputs, save_teacher)
}

/// `squeeze share`: the three Fashion-MNIST tasks as `[[task]]` tables, each on its zoo model.
fn share_verb(models: &[String], epochs: usize, pass: squeeze::compress::multitask::ShareTasks, run: &OnePassArgs) -> Result<ExitCode> {
    let tasks = squeeze::compress::multitask::fashion_mnist_tasks();
    if models.len() != 1 && models.len() != tasks.len() {
        bail!("--model takes one zoo name for every task or one per task ({}), got {}", tasks.len(), models.len());
    }
    if let Some(m) = models.iter().find(|m| zoo::build(m).is_none()) {
        bail!("unknown zoo model '{m}' (known: {})", zoo_names());
    }
    let mut recipe = Recipe::one_pass(ModelSource::zoo(&models[0]), run.data.recipe_data(), run.seed, PassConfig::ShareTasks(pass));
    recipe.0.train = TrainSection { epochs, ..TrainSection::default() };
    recipe.0.tasks = tasks
        .iter()
        .enumerate()
        .map(|(t, task)| TaskSection { name: task.name.clone(), labels: task.labels.clone(), zoo: (models.len() > 1).then(|| models[t].clone()) })
        .collect();
    one_pass(recipe, run, &[], None)
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
    // A mistyped instruction-set cap would silently run the CPU's best kernels.
    squeeze::runtime::isa::cap().map_err(anyhow::Error::msg)?;
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
        Command::Prune { model, pass, run } => one_pass(Recipe::one_pass(ModelSource::file(&model), run.data.recipe_data(), run.seed, PassConfig::Prune(pass)), &run, &[&model], None),
        Command::RandomPrune { model, pass, run } => {
            one_pass(Recipe::one_pass(ModelSource::file(&model), run.data.recipe_data(), run.seed, PassConfig::RandomPrune(pass)), &run, &[&model], None)
        }
        Command::Trim { model, pass, run } => one_pass(Recipe::one_pass(ModelSource::file(&model), run.data.recipe_data(), run.seed, PassConfig::Trim(pass)), &run, &[&model], None),
        Command::Quantize { model, pass, run } => {
            one_pass(Recipe::one_pass(ModelSource::file(&model), run.data.recipe_data(), run.seed, PassConfig::Quantize(pass)), &run, &[&model], None)
        }
        Command::Distill { teacher, teacher_epochs, save_teacher, pass, run } => distill_verb(&teacher, teacher_epochs, save_teacher.as_deref(), pass, &run),
        Command::Share { models, epochs, pass, run } => share_verb(&models, epochs, pass, &run),
        Command::Export { model, format, out, float, weight_type, check_inputs } => {
            let weight_type = match weight_type {
                WeightTypeArg::Uint8 => squeeze::format::onnx::WeightType::Uint8,
                WeightTypeArg::Int8 => squeeze::format::onnx::WeightType::Int8,
            };
            export(&model, format, &out, float, weight_type, check_inputs)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { model, json } => {
            let text = match (model.is_dir(), json) {
                (true, false) => squeeze::inspect::inspect_hf_dir(&model)?.to_string(),
                (true, true) => serde_json::to_string_pretty(&squeeze::inspect::inspect_hf_dir(&model)?)?,
                (false, false) => squeeze::inspect::inspect(&model)?.to_string(),
                (false, true) => serde_json::to_string_pretty(&squeeze::inspect::inspect(&model)?)?,
            };
            out!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed { model, text, file, out, seq_len, time, profile, against, full_length, limit } => embed(&model, text, file, out, seq_len, time, profile, against, full_length, limit),
        Command::Bench { model_name, model, train_samples, batch, json, data } => {
            let name = model_name.as_deref().unwrap_or(&model);
            let report = if Path::new(name).exists() {
                squeeze::bench::bench_file(Path::new(name), batch)?
            } else if zoo::build(name).is_some() {
                squeeze::bench::bench_zoo(name, &data.load()?, train_samples)?
            } else {
                bail!("'{name}' is neither a model file nor a zoo model (known: {})", zoo_names());
            };
            let text = if json { serde_json::to_string_pretty(&report)? } else { report.to_string() };
            out!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
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
            let mut sqz = store::stored_f32(&m);
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
        Some("sqz") => Ok(store::write_sqz(out, store::stored_f32(m), store::Coding::Entropy)?),
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
    let mut line = format!(
        "{:<14} {quality}  {:>9} bytes  {:>6.2}×  {:>7.2} µs/img (b1){throughput}  kernel {}",
        s.name, s.bytes, s.ratio, s.latency_us_b1, s.kernel
    );
    for t in s.tasks.iter().flatten() {
        line += &format!(
            "\n  task {:<10} test acc {:>6.2}%  val acc {:>6.2}%  (separate {:>6.2}%, {:+.2} points)",
            t.task,
            t.accuracy * 100.0,
            t.validation_accuracy * 100.0,
            t.separate_accuracy * 100.0,
            t.delta_points
        );
    }
    line
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
