//! Where the data comes from: the validation split's source and its report line, other
//! IDX sets, folders of images, `eval` on test data alone, and unscaled inputs.

use std::path::{Path, PathBuf};

use crate::util::{assert_error, run_recipe, squeeze, tiny_dataset, Dir};

fn data_dir(d: &Dir) -> PathBuf {
    let data = d.path("data");
    std::fs::create_dir(&data).unwrap();
    tiny_dataset(&data, 600, 300);
    data
}

/// A one-epoch mlp recipe with `data` as its `[data]` table and no passes.
fn recipe_with(d: &Dir, data: &str) -> PathBuf {
    d.write(
        "recipe.toml",
        &format!("name = \"t\"\nseed = 7\n[model]\nzoo = \"mlp\"\n[data]\n{data}\n[train]\nepochs = 1\nbatch_size = 64\n[gate]\nmax_accuracy_drop = 1.0\n"),
    )
}

/// `inputs.npy,labels.npy` in `d`: `n` samples of `shape`, inputs `value(i)`.
fn arrays(d: &Dir, stem: &str, n: usize, shape: &[usize], descr: &str, value: impl Fn(usize) -> f32) -> String {
    let per: usize = shape.iter().product();
    let x: Vec<u8> = match descr {
        "|u1" => (0..n * per).map(|i| value(i) as u8).collect(),
        _ => (0..n * per).flat_map(|i| value(i).to_le_bytes()).collect(),
    };
    let y: Vec<u8> = (0..n as i64).flat_map(|i| (i % 10).to_le_bytes()).collect();
    let (xp, yp) = (d.path(&format!("{stem}_x.npy")), d.path(&format!("{stem}_y.npy")));
    let mut full = vec![n];
    full.extend_from_slice(shape);
    std::fs::write(&xp, squeeze::data::npy::npy_bytes(descr, &full, &x)).unwrap();
    std::fs::write(&yp, squeeze::data::npy::npy_bytes("<i8", &[n], &y)).unwrap();
    format!("{},{}", xp.display(), yp.display())
}

/// An untrained mlp saved as a file model.
fn mlp_file(d: &Dir) -> PathBuf {
    let m = d.path("mlp.safetensors");
    let g = squeeze::model::zoo::build("mlp").unwrap();
    squeeze::store::write_safetensors(&m, &squeeze::model::Model::init(g, 1).unwrap()).unwrap();
    m
}

/// `validation = 0` used to switch the gate off: the empty split scored 0% at every
/// stage, so any model passed. Now every way to an empty split is one clear error.
#[test]
fn an_empty_validation_split_is_an_error_not_a_silent_pass() {
    let d = Dir::new();
    let data = data_dir(&d);
    let dir = format!("dir = \"{}\"", data.display());
    let out = d.path("out");
    let (o, report) = run_recipe(&recipe_with(&d, &format!("{dir}\nvalidation = 0")), &out);
    assert_error(&o, "validation = 0 leaves the validation split empty");
    assert!(o.stderr.contains("validation_from"), "says what to do: {}", o.stderr);
    assert!(report.is_null());
    // The first N test samples, all of them: nothing left to test on.
    let (o, _) = run_recipe(&recipe_with(&d, &format!("{dir}\nvalidation_from = \"test\"\nvalidation = 300")), &out);
    assert_error(&o, "takes the first 300 test samples");
    // A validation set with no samples.
    let empty = arrays(&d, "empty", 0, &[1, 28, 28], "|u1", |_| 0.0);
    let (o, _) = run_recipe(&recipe_with(&d, &format!("{dir}\nvalidation_arrays = \"{empty}\"")), &out);
    assert_error(&o, "the validation split is empty");
    // And on the command line.
    let o = squeeze(&["train", "--epochs", "1", "--validation", "0", "--out", d.path("m.safetensors").to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("0 leaves the validation split empty"), "{}", o.stderr);
    let o = squeeze(&["run", "--recipe", d.path("recipe.toml").to_str().unwrap(), "--validation", "10", "--out-dir", out.to_str().unwrap()]);
    assert_error(&o, "set [data] validation = N");
}

/// The gate can be measured on data the model has not been trained on: the first N test
/// samples (test accuracy on the rest) or a separate set; the report says which.
#[test]
fn the_report_says_what_the_gate_was_measured_on() {
    let d = Dir::new();
    let data = data_dir(&d);
    let dir = format!("dir = \"{}\"", data.display());
    let cases = [
        (format!("{dir}\nvalidation = 100"), "100 held out of training images".to_string()),
        (format!("{dir}\nvalidation_from = \"test\"\nvalidation = 100"), "first 100 of the test set (test accuracy on the other 200)".to_string()),
        (format!("{dir}\nvalidation_from = \"test\"\nvalidation = 100\ntest_limit = 50"), "first 100 of the test set (test accuracy on the other 50)".to_string()),
        (format!("{dir}\nvalidation_arrays = \"{}\"", arrays(&d, "val", 40, &[1, 28, 28], "|u1", |i| (i % 200) as f32)), "val_x.npy,val_y.npy (40)".to_string()),
    ];
    for (i, (table, want)) in cases.iter().enumerate() {
        let out = d.path(&format!("out{i}"));
        let (o, report) = run_recipe(&recipe_with(&d, table), &out);
        assert_eq!(o.code, 0, "{table}: {}", o.stderr);
        assert_eq!(report["gate"]["split"], "validation");
        assert_eq!(report["gate"]["measured_on"], want.as_str(), "{table}");
        assert_eq!(report["dataset"], "fashion-mnist");
        assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains(want.as_str()));
    }
    // Conflicting or incomplete keys are one error naming what to change.
    let (o, _) = run_recipe(&recipe_with(&d, &format!("{dir}\nvalidation_from = \"test\"")), &d.path("bad"));
    assert_error(&o, "needs validation = N");
    let (o, _) = run_recipe(&recipe_with(&d, &format!("{dir}\nvalidation = 5\nvalidation_arrays = \"v.npz\"")), &d.path("bad"));
    assert_error(&o, "leave out validation");
    let (o, _) = run_recipe(&recipe_with(&d, &format!("{dir}\nvalidation_from = \"tset\"\nvalidation = 5")), &d.path("bad"));
    assert_error(&o, "tset");
    // A validation set of another shape.
    let odd = arrays(&d, "odd", 10, &[5, 5], "|u1", |_| 0.0);
    let (o, _) = run_recipe(&recipe_with(&d, &format!("{dir}\nvalidation_arrays = \"{odd}\"")), &d.path("bad"));
    assert_error(&o, "validation samples have shape [5, 5]");
}

/// `dataset = "idx"` reads any MNIST-format set from `dir`, counts classes from the
/// labels, and the report names what was read.
#[test]
fn idx_data_sets_other_than_fashion_mnist() {
    let d = Dir::new();
    let data = data_dir(&d);
    let out = d.path("out");
    let (o, report) = run_recipe(&recipe_with(&d, &format!("dataset = \"idx\"\ndir = \"{}\"\nvalidation = 100", data.display())), &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(report["dataset"], format!("idx ({})", data.display()));
    assert!(report["stages"][0]["accuracy"].as_f64().unwrap() > 0.3);
    let (o, _) = run_recipe(&recipe_with(&d, "dataset = \"idx\""), &out);
    assert_error(&o, "needs dir");
    let (o, _) = run_recipe(&recipe_with(&d, &format!("dataset = \"idx\"\ndir = \"{}\"", d.path("nowhere").display())), &out);
    assert_error(&o, "no MNIST-format IDX set in");
    assert!(!o.stderr.contains("fashion-mnist"), "{}", o.stderr);
}

/// Writes `n` 8-bit PNGs per class into `dir/<class>/`: class `c` is a bright band at
/// rows `2c..2c+2` of a `size×size` image (RGB when `rgb`).
fn image_folder(dir: &Path, classes: &[&str], n: usize, size: u32, rgb: bool) {
    for (c, class) in classes.iter().enumerate() {
        let sub = dir.join(class);
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..n {
            let ch = if rgb { 3 } else { 1 };
            let mut px = vec![0u8; (size * size) as usize * ch];
            for y in 0..size as usize {
                for x in 0..size as usize {
                    let v = if y / 2 == c { 220 } else { ((x * 7 + y * 3 + i * 11) % 40) as u8 };
                    px[(y * size as usize + x) * ch..][..ch].fill(v);
                }
            }
            let file = std::fs::File::create(sub.join(format!("{i:03}.png"))).unwrap();
            let mut enc = png::Encoder::new(std::io::BufWriter::new(file), size, size);
            enc.set_color(if rgb { png::ColorType::Rgb } else { png::ColorType::Grayscale });
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header().unwrap().write_image_data(&px).unwrap();
        }
    }
}

/// `dataset = "images"`: folders of PNGs, one subfolder per class, resized to `size`;
/// a corrupt image is one error naming the file.
#[test]
fn a_folder_of_images_is_a_data_set() {
    let d = Dir::new();
    let classes = ["ankle", "bag", "coat"];
    image_folder(&d.path("train"), &classes, 30, 14, true);
    image_folder(&d.path("test"), &classes, 8, 14, false);
    let table = "dataset = \"images\"\ntrain = \"train\"\ntest = \"test\"\nsize = [28, 28]\nchannels = 1\nvalidation = 12";
    let out = d.path("out");
    let (o, report) = run_recipe(&recipe_with(&d, table), &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(report["dataset"], format!("images ({})", d.path("train").display()));
    assert_eq!(report["gate"]["measured_on"], "12 held out of training images");
    assert!(report["warnings"].is_null(), "images are scaled to [0, 1]: {report}");
    // A size the model does not take is the shape error.
    let (o, _) = run_recipe(&recipe_with(&d, &table.replace("[28, 28]", "[10, 10]")), &out);
    assert_error(&o, "shape mismatch");
    // Keys of the image data set elsewhere, and bad values.
    let (o, _) = run_recipe(&recipe_with(&d, "size = [28, 28]"), &out);
    assert_error(&o, "applies to dataset = \"images\" only");
    let (o, _) = run_recipe(&recipe_with(&d, &table.replace("channels = 1", "channels = 2")), &out);
    assert_error(&o, "channels");
    // A corrupt image.
    let bad = d.path("test").join("bag").join("004.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let (o, _) = run_recipe(&recipe_with(&d, table), &out);
    assert_error(&o, "004.png");
    // A test class the training folder lacks.
    std::fs::write(&bad, &bytes).unwrap();
    std::fs::create_dir(d.path("test").join("dress")).unwrap();
    let (o, _) = run_recipe(&recipe_with(&d, table), &out);
    assert_error(&o, "the training folder does not have");
}

/// `eval` reads the test set only: `--test-arrays` alone is enough, and a model that
/// does not fit the data is the error shown (not a validation-split error).
#[test]
fn eval_needs_only_test_data_and_shows_the_shape_error() {
    let d = Dir::new();
    let model = mlp_file(&d);
    let ms = model.to_str().unwrap();
    let fits = arrays(&d, "fits", 30, &[1, 28, 28], "|u1", |i| (i % 256) as f32);
    let o = squeeze(&["eval", ms, "--test-arrays", &fits]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("(30 images)"), "{}", o.stdout);
    assert!(!o.stderr.contains("warning"), "uint8 inputs are scaled: {}", o.stderr);
    let odd = arrays(&d, "odd", 30, &[20, 20], "<f4", |_| 0.5);
    let o = squeeze(&["eval", ms, "--test-arrays", &odd]);
    assert_error(&o, "shape mismatch");
    assert!(o.stderr.contains("[20, 20]"), "{}", o.stderr);
    // Commands that train still need training data.
    let o = squeeze(&["prune", ms, "--sparsity", "0.5", "--out", d.path("p.sqz").to_str().unwrap(), "--test-arrays", &fits]);
    assert_error(&o, "give --train-arrays too");
}

/// Float inputs in 0–255 given to a model that expects [0, 1] are a warning on stderr
/// (eval) and in the report (run); uint8 or unit-range inputs are not.
#[test]
fn unscaled_float_pixels_are_a_warning() {
    let d = Dir::new();
    let model = mlp_file(&d);
    let raw = arrays(&d, "raw", 30, &[1, 28, 28], "<f4", |i| (i % 256) as f32);
    let o = squeeze(&["eval", model.to_str().unwrap(), "--test-arrays", &raw]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let warnings: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{}", o.stderr);
    assert!(warnings[0].contains("from 0 to 255") && warnings[0].contains("divide them by 255"), "{}", warnings[0]);
    let unit = arrays(&d, "unit", 30, &[1, 28, 28], "<f4", |i| (i % 256) as f32 / 255.0);
    let o = squeeze(&["eval", model.to_str().unwrap(), "--test-arrays", &unit]);
    assert!(!o.stderr.contains("warning"), "{}", o.stderr);

    let table = format!("dataset = \"numpy\"\ntrain = \"{raw}\"\ntest = \"{raw}\"\nvalidation = 10");
    let r = d.write(
        "file.toml",
        &format!("name = \"t\"\n[model]\nfile = \"{}\"\n[data]\n{table}\n[gate]\nmax_accuracy_drop = 1.0\n", model.display()),
    );
    let (o, report) = run_recipe(&r, &d.path("out"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let w = report["warnings"].as_array().expect("a warnings list");
    assert_eq!(w.len(), 1);
    assert!(w[0].as_str().unwrap().contains("0–255"), "{w:?}");
    assert!(o.stderr.lines().any(|l| l.starts_with("warning:") && l.contains("0–255")), "{}", o.stderr);
    // A model that states it takes raw pixels ([model.preprocess] scale = 1, mean 127.5) is not warned about.
    let r = d.write(
        "raw.toml",
        &format!(
            "name = \"t\"\n[model]\nfile = \"{}\"\n[model.preprocess]\nscale = 1.0\nmean = [127.5]\nstd = [64.0]\n[data]\n{table}\n[gate]\nmax_accuracy_drop = 1.0\n",
            model.display()
        ),
    );
    let (o, report) = run_recipe(&r, &d.path("out2"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(report["warnings"].is_null(), "{report}");
}
