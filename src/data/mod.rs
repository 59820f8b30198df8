//! Datasets: the IDX (MNIST-format) reader, Fashion-MNIST splits and where to find them,
//! NumPy arrays ([`npy`]) and folders of PNG/JPEG images ([`images`]).
//!
//! [`locate`] finds the directory holding the four IDX files, [`load_fashion_mnist`]
//! reads it into train / validation / test [`Splits`] ([`load_idx`] reads any
//! MNIST-format set, [`load_arrays_from`] NumPy arrays, [`images::load`] image folders).
//! Images are decoded once to `f32` in `[0, 1]` (pixel / 255), stored sample after
//! sample in one flat vector; float arrays are taken as they are (see
//! [`Dataset::looks_unscaled`]). Where the validation split comes from is a
//! [`ValidationFrom`]; [`Splits::validation_source`] says it in words for the report.
//! Every malformed file is a [`DataError`] naming the file; nothing here panics on
//! bad input.

mod idx;
pub mod images;
pub mod npy;

use std::env;
use std::path::{Path, PathBuf};

pub use idx::{IMAGES_MAGIC, Idx, LABELS_MAGIC, MAX_GZ_PAYLOAD, read_idx, write_idx_images, write_idx_labels};

/// The Fashion-MNIST class names, indexed by label.
pub const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The environment variable naming a dataset directory (after `--data DIR`).
pub const DATA_ENV: &str = "SQUEEZE_DATA";

/// Where Debian's `dataset-fashion-mnist` package installs the dataset.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The four IDX files a dataset directory must hold, each raw or with `.gz` appended.
pub const IDX_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

const INSTALL_HINT: &str = "install it with: sudo apt-get install dataset-fashion-mnist (Debian), or pass --data DIR / \
                            set SQUEEZE_DATA to a directory holding the four IDX files";

/// Why a dataset could not be found or read. `path` is always the offending file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read (including a corrupt gzip stream).
    #[error("cannot read '{}': {source}; check the file exists and is intact (reinstall or re-download it)", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The header's magic number is not the expected IDX kind.
    #[error(
        "'{}' is not the expected IDX file: magic 0x{found:08x}, expected 0x{expected:08x} \
         (0x00000803 = images, 0x00000801 = labels); check which file is which",
        .path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number read.
        found: u32,
        /// The magic number wanted.
        expected: u32,
    },
    /// The file is shorter than its header promises.
    #[error("'{}' is truncated: expected {expected} bytes, got {got}; re-download or reinstall the dataset", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises (decompressed, header included).
        expected: u64,
        /// Bytes present (decompressed, header included).
        got: u64,
    },
    /// The file holds more bytes than its header promises.
    #[error("'{}' has trailing bytes: expected {expected} bytes, got {got}; the file is not a clean IDX file", .path.display())]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises (decompressed, header included).
        expected: u64,
        /// Bytes present (decompressed, header included).
        got: u64,
    },
    /// A gzipped file claims a payload beyond [`MAX_GZ_PAYLOAD`].
    #[error("'{}' claims {claimed} bytes of data, more than the {limit}-byte limit; is it really an IDX file?", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Payload bytes the header claims.
        claimed: u64,
        /// The limit, [`MAX_GZ_PAYLOAD`].
        limit: u64,
    },
    /// The images and labels files disagree on the number of samples.
    #[error(
        "'{}' holds {n_images} images but '{}' holds {n_labels} labels; the two files must come from the same set",
        .images.display(), .labels.display()
    )]
    Mismatch {
        /// The images file.
        images: PathBuf,
        /// The labels file.
        labels: PathBuf,
        /// Images in `images`.
        n_images: usize,
        /// Labels in `labels`.
        n_labels: usize,
    },
    /// Training and test images have different shapes.
    #[error("'{}' holds images of shape {got:?}, expected {expected:?} like the training set", .path.display())]
    Shape {
        /// The test images file.
        path: PathBuf,
        /// `[rows, cols]` of the training images.
        expected: Vec<usize>,
        /// `[rows, cols]` found.
        got: Vec<usize>,
    },
    /// A label is not a valid class index.
    #[error("'{}': label {label} at index {index} is not below the {num_classes} classes", .path.display())]
    BadLabel {
        /// The labels file.
        path: PathBuf,
        /// The sample's index.
        index: usize,
        /// The label read.
        label: u8,
        /// The number of classes.
        num_classes: usize,
    },
    /// The validation split would leave no training images.
    #[error(
        "a validation split of {requested} images leaves nothing to train on: the training set holds \
         {available}; pass a smaller validation size"
    )]
    Validation {
        /// The validation size asked for.
        requested: usize,
        /// Images in the training file.
        available: usize,
    },
    /// A NumPy `.npy`/`.npz` file that cannot be used as data.
    #[error("'{}': {why}", .path.display())]
    Npy {
        /// The file (for an array inside a `.npz`: `archive.npz/name.npy`).
        path: PathBuf,
        /// What is wrong and what to do.
        why: String,
    },
    /// The two splits of a NumPy data set disagree on the sample shape.
    #[error("test inputs have per-sample shape {test:?}, training inputs {train:?}; both splits must hold the same kind of sample")]
    ArrayShapes {
        /// Per-sample shape of the training inputs.
        train: Vec<usize>,
        /// Per-sample shape of the test inputs.
        test: Vec<usize>,
    },
    /// The first `requested` test samples were asked for as the validation split, but
    /// the test set holds only `available`: nothing would be left to test on.
    #[error(
        "validation_from = \"test\" takes the first {requested} test samples as the validation split, but the \
         test set holds {available}, leaving no test samples; take fewer (e.g. validation = {})",
        .available / 5
    )]
    TestValidation {
        /// The validation size asked for.
        requested: usize,
        /// Samples in the test set (after `test_limit`).
        available: usize,
    },
    /// A split that a gate or an evaluation reads holds no samples.
    #[error("the {split} split is empty ({source_desc}): {hint}")]
    EmptySplit {
        /// `"validation"`, `"test"` or `"training"`.
        split: &'static str,
        /// Where the split was taken from.
        source_desc: String,
        /// What to do.
        hint: &'static str,
    },
    /// A separate validation set does not fit the training data.
    #[error("'{}': validation samples have shape {got:?}, the training samples {expected:?}; the validation set must hold the same kind of sample", .path.display())]
    ValidationShape {
        /// The validation data.
        path: PathBuf,
        /// Per-sample shape of the training data.
        expected: Vec<usize>,
        /// Per-sample shape of the validation data.
        got: Vec<usize>,
    },
    /// A directory meant to hold an MNIST-format IDX set lacks one of the four files.
    #[error(
        "no MNIST-format IDX set in '{}': expected train-images-idx3-ubyte, train-labels-idx1-ubyte, \
         t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there (each raw or .gz); point [data] dir at the \
         folder holding them",
        .dir.display()
    )]
    IdxNotFound {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A folder-of-images data set that cannot be used.
    #[error("'{}': {why}", .path.display())]
    Image {
        /// The image file or folder.
        path: PathBuf,
        /// What is wrong and what to do.
        why: String,
    },
    /// No dataset directory was found (or it lacks one of the four files).
    #[error(
        "fashion-mnist not found: searched {} for train-images-idx3-ubyte, train-labels-idx1-ubyte, \
         t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each raw or .gz); {INSTALL_HINT}",
        display_paths(.searched)
    )]
    NotFound {
        /// The directories tried.
        searched: Vec<PathBuf>,
    },
}

/// `'a', 'b'` for the error messages.
fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| format!("'{}'", p.display())).collect::<Vec<_>>().join(", ")
}

/// A labelled image set, samples stored contiguously.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `len() × sample_len()` values, pixel / 255, sample after sample.
    pub images: Vec<f32>,
    /// One class index per sample, each `< num_classes`.
    pub labels: Vec<u8>,
    /// Per-sample shape, e.g. `[1, 28, 28]` (channels, rows, cols).
    pub sample_shape: Vec<usize>,
    /// Number of classes, e.g. 10.
    pub num_classes: usize,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample (the product of `sample_shape`).
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// The pixels of sample `i`. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// A new dataset of the given samples, in the given order (repeats allowed), e.g.
    /// `ds.subset(0..100)` or `ds.subset(order.iter().copied())`. Panics on an index
    /// `>= len()`.
    pub fn subset(&self, indices: impl IntoIterator<Item = usize>) -> Dataset {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset { images, labels, sample_shape: self.sample_shape.clone(), num_classes: self.num_classes }
    }

    /// The smallest and largest input value (`(0, 0)` for an empty set).
    pub fn value_range(&self) -> (f32, f32) {
        if self.images.is_empty() {
            return (0.0, 0.0);
        }
        self.images.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }

    /// Whether the inputs look like raw, unscaled values (e.g. 0–255 pixels stored as
    /// floats) rather than squeeze's unit range: no value below 0 and the largest above
    /// [`UNSCALED_MAX`]. IDX files, uint8 arrays and image folders are divided by 255
    /// when read, so they never look unscaled; float arrays are taken as they are.
    /// Returns the range when it looks unscaled.
    pub fn looks_unscaled(&self) -> Option<(f32, f32)> {
        let (lo, hi) = self.value_range();
        (lo >= 0.0 && hi > UNSCALED_MAX).then_some((lo, hi))
    }

    /// The first `min(limit, len())` samples.
    pub fn take(&self, limit: usize) -> Dataset {
        let n = limit.min(self.len());
        Dataset {
            images: self.images[..n * self.sample_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            sample_shape: self.sample_shape.clone(),
            num_classes: self.num_classes,
        }
    }
}

/// Inputs whose largest value is above this (and none below 0) look unscaled: see
/// [`Dataset::looks_unscaled`]. Unit-range data stays at or below 1; standardised data
/// has negative values.
pub const UNSCALED_MAX: f32 = 1.5;

/// The three splits of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// Images to train on.
    pub train: Dataset,
    /// The gate's data: by default held out from the training file (see [`ValidationFrom`]).
    pub validation: Dataset,
    /// The separate test set, for reported accuracy.
    pub test: Dataset,
    /// Where `validation` came from, in words for the report: `"5000 held out of training
    /// images"`, `"first 2000 of the test set (test accuracy on the other 8000)"`,
    /// `"val.npz (1000)"`.
    pub validation_source: String,
}

impl Splits {
    /// Checks that every split holds samples: an empty validation split would score 0%
    /// at every stage and let any model through the gate, an empty test split would
    /// report 0% accuracy, an empty training split trains on nothing.
    pub fn check_not_empty(&self) -> Result<(), DataError> {
        if self.validation.is_empty() {
            return Err(DataError::EmptySplit {
                split: "validation",
                source_desc: self.validation_source.clone(),
                hint: "the gate would score 0% at every stage and pass any model; set [data] validation to at least 1 \
                       (default 5000), or name the validation data with validation_from = \"test\" or validation_arrays",
            });
        }
        if self.test.is_empty() {
            return Err(DataError::EmptySplit { split: "test", source_desc: "the test data holds no samples".into(), hint: "give a test set with at least one sample" });
        }
        if self.train.is_empty() {
            return Err(DataError::EmptySplit { split: "training", source_desc: "the training data holds no samples".into(), hint: "give training data with at least one sample" });
        }
        Ok(())
    }
}

/// Where the validation split (what the gate reads) comes from.
///
/// A model trained elsewhere was usually trained on the whole training set, so a split
/// held out of it measures training accuracy; [`ValidationFrom::Test`] or
/// [`ValidationFrom::Arrays`] measure the gate on data the model has not seen.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidationFrom {
    /// The last `n` training samples, held out of training (the default, `n` = 5000).
    Train(usize),
    /// The first `n` test samples; the test split (reported accuracy) is the rest, so
    /// the two never overlap. `test_limit` then caps the rest.
    Test(usize),
    /// A separate labelled set: NumPy arrays (`val.npz` with `x`, `y`, or
    /// `inputs.npy,labels.npy`) of the same per-sample shape as the training data.
    Arrays(npy::ArraySource),
}

impl ValidationFrom {
    /// The words for the report, given the sizes read (`noun` e.g. `"images"`).
    fn describe(&self, noun: &str, validation: usize, test: usize) -> String {
        match self {
            ValidationFrom::Train(n) => format!("{n} held out of training {noun}"),
            ValidationFrom::Test(n) => format!("first {n} of the test set (test accuracy on the other {test})"),
            ValidationFrom::Arrays(src) => format!("{} ({validation})", src.display()),
        }
    }
}

/// The path of IDX file `name` in `dir`, preferring `name.gz` over the raw `name`.
fn idx_path(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)].into_iter().find(|p| p.is_file())
}

/// Finds the dataset directory: `explicit` (from `--data DIR`) if given, else the
/// directory in `$SQUEEZE_DATA` if set, else [`DEFAULT_DATA_DIR`].
///
/// The first place given is the only one tried: a wrong `--data` or `$SQUEEZE_DATA` is
/// an error, never silently replaced by another dataset. The directory must hold the
/// four [`IDX_FILES`], each raw or gzipped; otherwise the error names the place(s)
/// searched and how to install the dataset.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    let dir = match (explicit, env::var_os(DATA_ENV)) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    };
    if IDX_FILES.iter().all(|name| idx_path(&dir, name).is_some()) {
        Ok(dir)
    } else {
        Err(DataError::NotFound { searched: vec![dir] })
    }
}

/// Checks that `dir` holds an MNIST-format IDX set (the four [`IDX_FILES`], each raw or
/// gzipped), for `dataset = "idx"`; unlike [`locate`] the error names only `dir`.
pub fn locate_idx(dir: &Path) -> Result<PathBuf, DataError> {
    if IDX_FILES.iter().all(|name| idx_path(dir, name).is_some()) {
        Ok(dir.to_path_buf())
    } else {
        Err(DataError::IdxNotFound { dir: dir.to_path_buf() })
    }
}

/// Reads an images/labels pair, checking counts and labels.
fn read_pair(dir: &Path, images: &str, labels: &str, num_classes: usize) -> Result<(Idx, PathBuf, Idx), DataError> {
    let find = |name| idx_path(dir, name).ok_or_else(|| DataError::NotFound { searched: vec![dir.to_path_buf()] });
    let (ip, lp) = (find(images)?, find(labels)?);
    let (img, lab) = (read_idx(&ip, 3)?, read_idx(&lp, 1)?);
    if img.dims[0] != lab.dims[0] {
        return Err(DataError::Mismatch { images: ip, labels: lp, n_images: img.dims[0], n_labels: lab.dims[0] });
    }
    if let Some(index) = lab.data.iter().position(|&l| usize::from(l) >= num_classes) {
        return Err(DataError::BadLabel { path: lp, index, label: lab.data[index], num_classes });
    }
    Ok((img, ip, lab))
}

/// Decodes samples `range` of an images file into a [`Dataset`] (pixel / 255).
fn decode(img: &Idx, labels: &Idx, range: std::ops::Range<usize>, num_classes: usize) -> Dataset {
    let n = img.dims[1] * img.dims[2];
    Dataset {
        images: to_unit_f32(&img.data[range.start * n..range.end * n]),
        labels: labels.data[range].to_vec(),
        sample_shape: vec![1, img.dims[1], img.dims[2]],
        num_classes,
    }
}

/// `pixel / 255` for every byte, split over the available cores (the cost is mostly
/// first-touch page faults on the output, which parallelise well).
fn to_unit_f32(bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = bytes.len().div_ceil(threads).max(1 << 18);
    std::thread::scope(|s| {
        for (o, b) in out.chunks_mut(chunk).zip(bytes.chunks(chunk)) {
            s.spawn(move || o.iter_mut().zip(b).for_each(|(o, &b)| *o = f32::from(b) / 255.0));
        }
    });
    out
}

/// Loads Fashion-MNIST (or any MNIST-format set of 10 classes) from `dir`.
///
/// - validation: the *last* `validation` images of the training file, held out;
/// - train: the first `60000 - validation` training images, then cut to `train_limit`;
/// - test: the t10k set, cut to `test_limit`.
///
/// `validation` must be smaller than the training file's count (0 gives an empty
/// validation split, for callers that read only train and test; [`Splits::check_not_empty`]
/// refuses it where a gate reads it). Only the samples kept are decoded to `f32`.
pub fn load_fashion_mnist(
    dir: &Path,
    validation: usize,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<Splits, DataError> {
    load_idx(dir, &ValidationFrom::Train(validation), train_limit, test_limit, Some(FASHION_CLASSES.len()))
}

/// Loads any MNIST-format IDX set (MNIST, Fashion-MNIST, KMNIST, …) from `dir`, with the
/// validation split taken as `validation` says (see [`load_fashion_mnist`] for the
/// default). `num_classes`: a fixed class count (labels must be below it), or `None` for
/// the largest label of the training and test files plus one. Only the samples kept are
/// decoded to `f32`.
pub fn load_idx(
    dir: &Path,
    validation: &ValidationFrom,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    num_classes: Option<usize>,
) -> Result<Splits, DataError> {
    let check = num_classes.unwrap_or(256);
    let [train_img, train_lab, test_img, test_lab] = IDX_FILES;
    // Inflating dominates: read the test files on a second thread meanwhile.
    let (train, test) = std::thread::scope(|s| {
        let test = s.spawn(|| read_pair(dir, test_img, test_lab, check));
        let train = read_pair(dir, train_img, train_lab, check);
        (train, test.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    });
    let ((tr_img, _, tr_lab), (te_img, te_path, te_lab)) = (train?, test?);
    if te_img.dims[1..] != tr_img.dims[1..] {
        return Err(DataError::Shape {
            path: te_path,
            expected: tr_img.dims[1..].to_vec(),
            got: te_img.dims[1..].to_vec(),
        });
    }
    let classes = num_classes.unwrap_or_else(|| tr_lab.data.iter().chain(&te_lab.data).map(|&l| usize::from(l) + 1).max().unwrap_or(1));
    let (total, test_total) = (tr_img.dims[0], te_img.dims[0]);
    let limit = |l: Option<usize>, n: usize| l.map_or(n, |l| l.min(n));
    let splits = match validation {
        ValidationFrom::Train(n) => {
            if *n >= total {
                return Err(DataError::Validation { requested: *n, available: total });
            }
            let train_end = total - n;
            let test_n = limit(test_limit, test_total);
            Splits {
                train: decode(&tr_img, &tr_lab, 0..limit(train_limit, train_end), classes),
                validation: decode(&tr_img, &tr_lab, train_end..total, classes),
                test: decode(&te_img, &te_lab, 0..test_n, classes),
                validation_source: validation.describe("images", *n, test_n),
            }
        }
        ValidationFrom::Test(n) => {
            if *n >= test_total {
                return Err(DataError::TestValidation { requested: *n, available: test_total });
            }
            let test_n = limit(test_limit, test_total - n);
            Splits {
                train: decode(&tr_img, &tr_lab, 0..limit(train_limit, total), classes),
                validation: decode(&te_img, &te_lab, 0..*n, classes),
                test: decode(&te_img, &te_lab, *n..n + test_n, classes),
                validation_source: validation.describe("images", *n, test_n),
            }
        }
        ValidationFrom::Arrays(src) => {
            let train = decode(&tr_img, &tr_lab, 0..limit(train_limit, total), classes);
            let test = decode(&te_img, &te_lab, 0..limit(test_limit, test_total), classes);
            let mut splits = separate_validation(train, test, src)?;
            // A fixed class count (Fashion-MNIST) also bounds the validation labels.
            if let Some(fixed) = num_classes
                && splits.validation.num_classes > fixed
            {
                let index = splits.validation.labels.iter().position(|&l| usize::from(l) >= fixed).unwrap_or(0);
                let path = match src {
                    npy::ArraySource::Npz(p) => p.join("y.npy"),
                    npy::ArraySource::Npy { labels, .. } => labels.clone(),
                };
                return Err(DataError::BadLabel { path, index, label: splits.validation.labels[index], num_classes: fixed });
            }
            for d in [&mut splits.train, &mut splits.validation, &mut splits.test] {
                d.num_classes = classes.max(d.num_classes);
            }
            splits
        }
    };
    Ok(splits)
}

/// Reads only the test files of the MNIST-format set in `dir`, cut to `test_limit`
/// (what `squeeze eval` needs). The number of classes is `num_classes`, or the largest
/// label plus one.
pub fn load_idx_test(dir: &Path, test_limit: Option<usize>, num_classes: Option<usize>) -> Result<Dataset, DataError> {
    let (img, _, lab) = read_pair(dir, IDX_FILES[2], IDX_FILES[3], num_classes.unwrap_or(256))?;
    let classes = num_classes.unwrap_or_else(|| lab.data.iter().map(|&l| usize::from(l) + 1).max().unwrap_or(1));
    let n = test_limit.map_or(img.dims[0], |l| l.min(img.dims[0]));
    Ok(decode(&img, &lab, 0..n, classes))
}

/// Train and test sets with a validation set read from `src`: shapes checked, classes
/// the largest of the three.
fn separate_validation(train: Dataset, test: Dataset, src: &npy::ArraySource) -> Result<Splits, DataError> {
    let validation = npy::load(src)?;
    if validation.sample_shape != train.sample_shape {
        let path = match src {
            npy::ArraySource::Npz(p) => p.clone(),
            npy::ArraySource::Npy { inputs, .. } => inputs.clone(),
        };
        return Err(DataError::ValidationShape { path, expected: train.sample_shape, got: validation.sample_shape });
    }
    let validation_source = ValidationFrom::Arrays(src.clone()).describe("", validation.len(), test.len());
    let mut splits = Splits { train, validation, test, validation_source };
    let classes = splits.train.num_classes.max(splits.validation.num_classes).max(splits.test.num_classes);
    for d in [&mut splits.train, &mut splits.validation, &mut splits.test] {
        d.num_classes = classes;
    }
    Ok(splits)
}

/// Splits a whole training set and a whole test set (already read) as `validation`
/// says, then applies the limits; the number of classes is the largest of the splits'.
/// `noun` names the samples in the report (`"images"`, `"samples"`).
pub fn split_sets(
    full: Dataset,
    test: Dataset,
    validation: &ValidationFrom,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    noun: &str,
) -> Result<Splits, DataError> {
    if full.sample_shape != test.sample_shape {
        return Err(DataError::ArrayShapes { train: full.sample_shape, test: test.sample_shape });
    }
    let limit = |l: Option<usize>, n: usize| l.map_or(n, |l| l.min(n));
    let mut splits = match validation {
        ValidationFrom::Train(n) => {
            if *n >= full.len() {
                return Err(DataError::Validation { requested: *n, available: full.len() });
            }
            let train_end = full.len() - n;
            let test = test.take(limit(test_limit, test.len()));
            let validation_source = validation.describe(noun, *n, test.len());
            Splits { train: full.subset(0..limit(train_limit, train_end)), validation: full.subset(train_end..full.len()), test, validation_source }
        }
        ValidationFrom::Test(n) => {
            if *n >= test.len() {
                return Err(DataError::TestValidation { requested: *n, available: test.len() });
            }
            let test_n = limit(test_limit, test.len() - n);
            Splits {
                train: full.take(limit(train_limit, full.len())),
                validation: test.subset(0..*n),
                test: test.subset(*n..n + test_n),
                validation_source: validation.describe(noun, *n, test_n),
            }
        }
        ValidationFrom::Arrays(src) => {
            let train = full.take(limit(train_limit, full.len()));
            let test = test.take(limit(test_limit, test.len()));
            separate_validation(train, test, src)?
        }
    };
    let num_classes = splits.train.num_classes.max(splits.validation.num_classes).max(splits.test.num_classes);
    for d in [&mut splits.train, &mut splits.validation, &mut splits.test] {
        d.num_classes = num_classes;
    }
    Ok(splits)
}

/// Loads a user data set from NumPy arrays (see [`npy`]): the validation split is the
/// *last* `validation` samples of `train`, as for Fashion-MNIST; the number of classes
/// is the largest label of either split plus one.
pub fn load_arrays(
    train: &npy::ArraySource,
    test: &npy::ArraySource,
    validation: usize,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<Splits, DataError> {
    load_arrays_from(train, test, &ValidationFrom::Train(validation), train_limit, test_limit)
}

/// Loads a user data set from NumPy arrays with the validation split taken as
/// `validation` says; the number of classes is the largest label of the splits plus one.
pub fn load_arrays_from(
    train: &npy::ArraySource,
    test: &npy::ArraySource,
    validation: &ValidationFrom,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<Splits, DataError> {
    split_sets(npy::load(train)?, npy::load(test)?, validation, train_limit, test_limit, "samples")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a fake dataset: `n_train` / `n_test` images of 2×3, pixel = sample index,
    /// label = index % 10.
    fn fake(dir: &Path, n_train: usize, n_test: usize, gzip: bool) {
        let ext = if gzip { ".gz" } else { "" };
        for (img, lab, n) in [(IDX_FILES[0], IDX_FILES[1], n_train), (IDX_FILES[2], IDX_FILES[3], n_test)] {
            let pixels: Vec<u8> = (0..n).flat_map(|i| [i as u8; 6]).collect();
            let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            write_idx_images(&dir.join(format!("{img}{ext}")), &pixels, n, 2, 3, gzip).unwrap();
            write_idx_labels(&dir.join(format!("{lab}{ext}")), &labels, gzip).unwrap();
        }
    }

    #[test]
    fn splits_from_fake_data() {
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            fake(dir.path(), 20, 7, gzip);
            assert_eq!(locate(Some(dir.path())).unwrap(), dir.path());
            let s = load_fashion_mnist(dir.path(), 5, Some(4), None).unwrap();
            assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (4, 5, 7));
            assert_eq!(s.train.sample_shape, vec![1, 2, 3]);
            assert_eq!(s.train.sample_len(), 6);
            assert_eq!(s.validation.labels, vec![5, 6, 7, 8, 9]);
            assert_eq!(s.validation.image(0), &[15.0 / 255.0; 6]);
            assert_eq!(s.test.image(6), &[6.0 / 255.0; 6]);
            let sub = s.test.subset([6, 0]);
            assert_eq!((sub.labels.clone(), sub.image(1)), (vec![6, 0], &[0.0; 6][..]));
            assert_eq!(s.test.take(3), s.test.subset(0..3));
            assert_eq!(s.test.take(100).len(), 7);
            let err = load_fashion_mnist(dir.path(), 20, None, None).unwrap_err();
            assert!(matches!(err, DataError::Validation { requested: 20, available: 20 }), "{err}");
        }
    }

    /// The validation split from the test set or from arrays, described for the report;
    /// the default (held out of training) is what `load_fashion_mnist` always gave.
    #[test]
    fn validation_from_train_test_or_arrays() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), 20, 7, false);
        let held = load_idx(dir.path(), &ValidationFrom::Train(5), Some(4), None, Some(10)).unwrap();
        assert_eq!(held, load_fashion_mnist(dir.path(), 5, Some(4), None).unwrap());
        assert_eq!(held.validation_source, "5 held out of training images");

        let s = load_idx(dir.path(), &ValidationFrom::Test(3), None, None, None).unwrap();
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (20, 3, 4));
        assert_eq!((s.validation.labels.clone(), s.test.labels.clone()), (vec![0, 1, 2], vec![3, 4, 5, 6]));
        assert_eq!(s.train.num_classes, 10, "classes from the labels");
        assert_eq!(s.validation_source, "first 3 of the test set (test accuracy on the other 4)");
        let s = load_idx(dir.path(), &ValidationFrom::Test(3), None, Some(2), None).unwrap();
        assert_eq!((s.test.labels.clone(), s.validation_source.as_str()), (vec![3, 4], "first 3 of the test set (test accuracy on the other 2)"));
        let err = load_idx(dir.path(), &ValidationFrom::Test(7), None, None, None).unwrap_err();
        assert!(matches!(err, DataError::TestValidation { requested: 7, available: 7 }), "{err}");

        let (x, y) = (dir.path().join("vx.npy"), dir.path().join("vy.npy"));
        std::fs::write(&x, npy::npy_bytes("|u1", &[2, 1, 2, 3], &[255; 12])).unwrap();
        std::fs::write(&y, npy::npy_bytes("|u1", &[2], &[9, 1])).unwrap();
        let src = npy::ArraySource::Npy { inputs: x.clone(), labels: y.clone() };
        let s = load_idx(dir.path(), &ValidationFrom::Arrays(src.clone()), None, None, Some(10)).unwrap();
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (20, 2, 7));
        assert_eq!((s.validation.image(0), s.validation_source.as_str()), (&[1.0; 6][..], "vx.npy,vy.npy (2)"));
        // Fashion-MNIST's 10 classes bound the validation labels too; the shape must match.
        std::fs::write(&y, npy::npy_bytes("|u1", &[2], &[3, 12])).unwrap();
        let err = load_idx(dir.path(), &ValidationFrom::Arrays(src.clone()), None, None, Some(10)).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { index: 1, label: 12, .. }), "{err}");
        std::fs::write(&x, npy::npy_bytes("|u1", &[2, 6], &[0; 12])).unwrap();
        let err = load_idx(dir.path(), &ValidationFrom::Arrays(src), None, None, Some(10)).unwrap_err().to_string();
        assert!(err.contains("vx.npy") && err.contains("shape [6]") && err.contains("[1, 2, 3]"), "{err}");
    }

    /// Every split a gate or an evaluation reads must hold samples.
    #[test]
    fn empty_splits_are_errors_that_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), 20, 7, false);
        let s = load_fashion_mnist(dir.path(), 0, None, None).unwrap();
        let err = s.check_not_empty().unwrap_err().to_string();
        assert!(err.contains("the validation split is empty (0 held out of training images)") && err.contains("at least 1"), "{err}");
        assert!(load_fashion_mnist(dir.path(), 1, None, None).unwrap().check_not_empty().is_ok());
        let empty = Dataset { images: vec![], labels: vec![], sample_shape: vec![1, 2, 3], num_classes: 10 };
        let mut s = load_fashion_mnist(dir.path(), 1, None, None).unwrap();
        s.test = empty.clone();
        assert!(s.check_not_empty().unwrap_err().to_string().contains("test split is empty"));
        s.test = s.validation.clone();
        s.train = empty;
        assert!(s.check_not_empty().unwrap_err().to_string().contains("training split is empty"));
        assert!(matches!(locate_idx(&dir.path().join("none")), Err(DataError::IdxNotFound { .. })));
    }

    /// Unit-range and standardised inputs are fine; non-negative inputs above 1.5 look
    /// like unscaled pixels.
    #[test]
    fn unscaled_inputs_are_recognised() {
        let ds = |images: Vec<f32>| Dataset { labels: vec![0; images.len()], images, sample_shape: vec![1], num_classes: 1 };
        assert_eq!(ds(vec![0.0, 1.0, 0.5]).looks_unscaled(), None);
        assert_eq!(ds(vec![-2.0, 3.0]).looks_unscaled(), None, "standardised data has negatives");
        assert_eq!(ds(vec![0.0, 255.0, 17.0]).looks_unscaled(), Some((0.0, 255.0)));
        assert_eq!(ds(vec![]).looks_unscaled(), None);
    }

    #[test]
    fn count_mismatch_and_bad_label() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), 10, 4, false);
        write_idx_labels(&dir.path().join(IDX_FILES[3]), &[0, 1, 2], false).unwrap();
        let err = load_fashion_mnist(dir.path(), 1, None, None).unwrap_err();
        assert!(matches!(err, DataError::Mismatch { n_images: 4, n_labels: 3, .. }), "{err}");
        write_idx_labels(&dir.path().join(IDX_FILES[3]), &[0, 1, 12, 2], false).unwrap();
        let err = load_fashion_mnist(dir.path(), 1, None, None).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { index: 2, label: 12, .. }), "{err}");
    }

    #[test]
    fn locate_error_says_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), 3, 3, true);
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let msg = locate(Some(dir.path())).unwrap_err().to_string();
        assert!(msg.contains("apt-get install dataset-fashion-mnist"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn real_fashion_mnist_if_installed() {
        let dir = Path::new(DEFAULT_DATA_DIR);
        if locate(Some(dir)).is_err() {
            return; // not installed: nothing to check
        }
        let s = load_fashion_mnist(dir, 5000, None, None).unwrap();
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (55000, 5000, 10000));
        assert_eq!(s.train.sample_shape, vec![1, 28, 28]);
        assert_eq!(s.test.images.len(), 10000 * 784);
        assert!(s.train.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
        let mut counts = [0usize; 10];
        s.test.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [1000; 10]);
    }
}
