//! Datasets: the IDX (MNIST-format) reader, Fashion-MNIST splits and where to find them.
//!
//! [`locate`] finds the directory holding the four IDX files, [`load_fashion_mnist`]
//! reads it into train / validation / test [`Splits`]. Images are decoded once to
//! `f32` in `[0, 1]` (pixel / 255), stored sample after sample in one flat vector.
//! Every malformed file is a [`DataError`] naming the file; nothing here panics on
//! bad input.

mod idx;
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

/// The three splits of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// Images to train on.
    pub train: Dataset,
    /// Held out from the training file, for gates and early decisions.
    pub validation: Dataset,
    /// The separate test set, for reported accuracy.
    pub test: Dataset,
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
/// `validation` must be smaller than the training file's count. Only the samples kept
/// are decoded to `f32`.
pub fn load_fashion_mnist(
    dir: &Path,
    validation: usize,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<Splits, DataError> {
    const CLASSES: usize = FASHION_CLASSES.len();
    let [train_img, train_lab, test_img, test_lab] = IDX_FILES;
    // Inflating dominates: read the test files on a second thread meanwhile.
    let (train, test) = std::thread::scope(|s| {
        let test = s.spawn(|| read_pair(dir, test_img, test_lab, CLASSES));
        let train = read_pair(dir, train_img, train_lab, CLASSES);
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
    let total = tr_img.dims[0];
    if validation >= total {
        return Err(DataError::Validation { requested: validation, available: total });
    }
    let train_end = total - validation;
    let train_n = train_limit.map_or(train_end, |l| l.min(train_end));
    let test_n = test_limit.map_or(te_img.dims[0], |l| l.min(te_img.dims[0]));
    Ok(Splits {
        train: decode(&tr_img, &tr_lab, 0..train_n, CLASSES),
        validation: decode(&tr_img, &tr_lab, train_end..total, CLASSES),
        test: decode(&te_img, &te_lab, 0..test_n, CLASSES),
    })
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
    let (full, test) = (npy::load(train)?, npy::load(test)?);
    if full.sample_shape != test.sample_shape {
        return Err(DataError::ArrayShapes { train: full.sample_shape, test: test.sample_shape });
    }
    if validation >= full.len() {
        return Err(DataError::Validation { requested: validation, available: full.len() });
    }
    let num_classes = full.num_classes.max(test.num_classes);
    let train_end = full.len() - validation;
    let train_n = train_limit.map_or(train_end, |l| l.min(train_end));
    let mut splits = Splits { train: full.subset(0..train_n), validation: full.subset(train_end..full.len()), test: test.take(test_limit.unwrap_or(usize::MAX)) };
    for d in [&mut splits.train, &mut splits.validation, &mut splits.test] {
        d.num_classes = num_classes;
    }
    Ok(splits)
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
