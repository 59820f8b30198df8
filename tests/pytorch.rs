//! PyTorch state dicts, architecture descriptions, NumPy data and safetensors export.
//!
//! The fixtures in tests/fixtures/pytorch/ were written by scripts/torch_zip.py (Python
//! standard library only, reproducing torch.save's zip layout), not by torch; the
//! expected values and logits in tiny_mlp.expected.json were computed there in plain
//! Python.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use squeeze::data::npy::npy_bytes;
use squeeze::format::pytorch::{self, PytorchError};
use squeeze::store::{self, ModelFile};

use crate::util::{assert_error, run_recipe, squeeze, Dir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch").join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny_mlp.expected.json")).unwrap()).unwrap()
}

const ARCH: &str = r#"
input = [1, 2, 2]
[preprocess]
mean = [0.5]
std = [0.25]
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
weight = "fc1.weight"
bias = "fc1.bias"
out = 3
[[layer]]
op = "relu"
[[layer]]
op = "linear"
weight = "fc2.weight"
bias = "fc2.bias"
"#;

fn arch(d: &Dir) -> PathBuf {
    d.write("tiny.arch.toml", ARCH)
}

#[test]
fn every_fixture_reads_to_the_known_weights() {
    let want = expected();
    for name in ["tiny_mlp.pth", "checkpoint.pt", "tiny_mlp_float16.pth", "tiny_mlp_bfloat16.pth", "tiny_mlp_float64.pth", "tiny_mlp.safetensors"] {
        let sd = pytorch::read_state_dict(&std::fs::read(fixture(name)).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let keys: Vec<&str> = sd.keys().map(String::as_str).collect();
        assert_eq!(keys, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"], "{name}");
        for (k, t) in &sd {
            let values: Vec<f32> = want["values"][k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let shape: Vec<usize> = want["shapes"][k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!((&t.shape, &t.values), (&shape, &values), "{name} {k}");
        }
    }
    let half = pytorch::read_state_dict(&std::fs::read(fixture("tiny_mlp_float16.pth")).unwrap()).unwrap();
    assert_eq!(half["fc1.weight"].dtype, "float16");
}

#[test]
fn imported_model_gives_the_logits_computed_in_python() {
    let d = Dir::new();
    let want = expected();
    for sd in ["tiny_mlp.pth", "tiny_mlp.safetensors"] {
        let model = store::import_pytorch(&fixture(sd), &arch(&d)).unwrap();
        let names: Vec<String> = model.params.iter().map(|(s, _)| s.name.clone()).collect();
        assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
        let plan = store::model_plan(&model).unwrap();
        let inputs: Vec<f32> = want["inputs"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
        let mut ws = squeeze::runtime::exec::Workspace::default();
        let got = plan.run(&inputs, 3, &mut ws).unwrap().to_vec();
        let logits: Vec<f32> = want["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
        for (g, w) in got.iter().zip(&logits) {
            assert!((g - w).abs() < 1e-5, "{sd}: {got:?} vs {logits:?}");
        }
    }
}

/// A zip holding `entries` (stored).
fn zip_of(path: &Path, entries: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in entries {
        z.start_file(*name, zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn malformed_files_are_one_clear_error() {
    let d = Dir::new();
    let a = arch(&d);
    let out = d.path("out.safetensors");
    let import = |file: &Path| squeeze(&["import", file.to_str().unwrap(), "--arch", a.to_str().unwrap(), "--out", out.to_str().unwrap()]);

    // Truncated at several points: never a panic, always exit 2 and no output.
    let bytes = std::fs::read(fixture("tiny_mlp.pth")).unwrap();
    for cut in [10, bytes.len() / 3, bytes.len() - 30] {
        let p = d.path("cut.pth");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let o = import(&p);
        assert_error(&o, "cut.pth");
        assert!(!out.exists());
    }
    // Pickles with a disallowed global, an unknown opcode, a truncated stream.
    let pkl = zip_of;
    let cases: [(&[u8], &str); 4] = [
        (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R.", "os.system, which squeeze does not run"),
        (b"\x80\x02ctorch.storage\n_load_from_bytes\n.", "torch.storage._load_from_bytes"),
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00a\x00", "opcode 0x00"),
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00a", "truncated"),
    ];
    for (data, needle) in cases {
        let p = d.path("bad.pth");
        pkl(&p, &[("bad/data.pkl", data), ("bad/version", b"3\n")]);
        assert_error(&import(&p), needle);
    }
    // A zip without data.pkl, a tensor whose storage entry is missing, a legacy file.
    let p = d.path("nopkl.pth");
    zip_of(&p, &[("x/version", b"3\n")]);
    assert_error(&import(&p), "no data.pkl");
    let p = d.path("nostorage.pth");
    let z = std::fs::read(fixture("tiny_mlp.pth")).unwrap();
    let mut arch_zip = zip::ZipArchive::new(std::io::Cursor::new(&z[..])).unwrap();
    let mut pkl_bytes = Vec::new();
    std::io::Read::read_to_end(&mut arch_zip.by_name("tiny_mlp/data.pkl").unwrap(), &mut pkl_bytes).unwrap();
    zip_of(&p, &[("tiny_mlp/data.pkl", &pkl_bytes)]);
    assert_error(&import(&p), "storage 'tiny_mlp/data/0' is missing");
    let p = d.path("legacy.pth");
    std::fs::write(&p, b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02M\xe8\x03.").unwrap();
    assert_error(&import(&p), "legacy (pre-1.6) format: protocol version Int(1000)");
    assert!(!out.exists());

    // Errors of the library type, not only of the CLI.
    assert!(matches!(pytorch::read_state_dict(&bytes[..bytes.len() / 2]), Err(PytorchError::Zip(_))));
}

#[test]
fn key_and_shape_mismatches_are_listed_key_by_key() {
    let d = Dir::new();
    let out = d.path("out.safetensors");
    let wrong = ARCH.replace("out = 3", "out = 4").replace("bias = \"fc2.bias\"\n", "").replace("[[layer]]\nop = \"relu\"\n", "[[layer]]\nop = \"relu\"\n[[layer]]\nop = \"linear\"\nweight = \"fc3.weight\"\n");
    let a = d.write("wrong.arch.toml", &wrong);
    let o = squeeze(&["import", fixture("tiny_mlp.pth").to_str().unwrap(), "--arch", a.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    // fc3 is missing, so fc2's input width is unknown: its weight is not judged.
    assert_error(&o, "the state dict does not match the architecture (4 problems)");
    for needle in [
        "fc1.weight: expected [4, 4] for linear 4->4, found [3, 4]",
        "fc1.bias: expected [4], found [3]",
        "missing key fc3.weight",
        "unused key fc2.bias",
    ] {
        assert!(o.stderr.contains(needle), "lacks '{needle}': {}", o.stderr);
    }
    assert!(!out.exists());
    // A description that is not TOML of the known layers names the line.
    let a = d.write("typo.arch.toml", &ARCH.replace("op = \"relu\"", "op = \"rleu\""));
    let o = squeeze(&["import", fixture("tiny_mlp.pth").to_str().unwrap(), "--arch", a.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_error(&o, "rleu");
    assert!(o.stderr.contains("line"), "{}", o.stderr);
}

/// Writes `x` ([n, 1, 2, 2] f32) and labels as an .npz.
fn write_npz(path: &Path, x: &[f32], labels: &[i64]) {
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let yb: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let xs = npy_bytes("<f4", &[labels.len(), 1, 2, 2], &xb);
    let ys = npy_bytes("<i8", &[labels.len()], &yb);
    zip_of(path, &[("x.npy", &xs), ("y.npy", &ys)]);
}

/// Random inputs in [0, 1) labelled by the imported model itself (a data set it fits).
fn labelled_by_model(n: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let d = Dir::new();
    let model = store::import_pytorch(&fixture("tiny_mlp.pth"), &arch(&d)).unwrap();
    let plan = store::model_plan(&model).unwrap();
    let mut rng = squeeze::rng::Rng::new(seed);
    let x: Vec<f32> = (0..n * 4).map(|_| rng.next_f32()).collect();
    let mut ws = squeeze::runtime::exec::Workspace::default();
    let logits = plan.run(&x, n, &mut ws).unwrap();
    let labels = logits.chunks(2).map(|l| i64::from(l[1] > l[0])).collect();
    (x, labels)
}

#[test]
fn numpy_data_drives_eval_and_a_recipe_on_an_imported_model() {
    let d = Dir::new();
    let (x, y) = labelled_by_model(300, 1);
    write_npz(&d.path("train.npz"), &x, &y);
    let (x, y) = labelled_by_model(100, 2);
    write_npz(&d.path("test.npz"), &x, &y);
    let a = arch(&d);
    let model = d.path("tiny.safetensors");
    let o = squeeze(&["import", fixture("tiny_mlp.pth").to_str().unwrap(), "--arch", a.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = squeeze(&[
        "eval",
        model.to_str().unwrap(),
        "--train-arrays",
        d.path("train.npz").to_str().unwrap(),
        "--test-arrays",
        d.path("test.npz").to_str().unwrap(),
        "--validation",
        "50",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("test accuracy 100.00% (100 images)"), "{}", o.stdout);

    // Inputs of the wrong size for the model: a clear error.
    let xb: Vec<u8> = vec![0; 3 * 5 * 4];
    zip_of(&d.path("bad.npz"), &[("x.npy", &npy_bytes("<f4", &[3, 5], &xb)), ("y.npy", &npy_bytes("|u1", &[3], &[0, 1, 0]))]);
    let o = squeeze(&["eval", model.to_str().unwrap(), "--train-arrays", d.path("bad.npz").to_str().unwrap(), "--test-arrays", d.path("bad.npz").to_str().unwrap(), "--validation", "1"]);
    assert_error(&o, "shape");

    // A recipe: the state dict and architecture as the model, the arrays as the data.
    let recipe = d.write(
        "r.toml",
        &format!(
            "name = \"t\"\n[model]\nstate_dict = \"{}\"\narchitecture = \"tiny.arch.toml\"\n[data]\ndataset = \"numpy\"\ntrain = \"train.npz\"\ntest = \"test.npz\"\nvalidation = 50\n[train]\nbatch_size = 32\n[gate]\nmax_accuracy_drop = 1.0\n[[pass]]\ntype = \"prune\"\nsparsity = 0.5\nfine_tune_epochs = 1\n[[pass]]\ntype = \"quantize\"\ncalibration = 100\n",
            fixture("tiny_mlp.pth").display()
        ),
    );
    let out = d.path("out");
    let (o, report) = run_recipe(&recipe, &out);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages[0]["accuracy"], 1.0, "the baseline labels are its own predictions");
    assert_eq!(report["dataset"], "numpy");
    assert_eq!(stages.len(), 3);

    // Export the int8 result back to safetensors with the PyTorch keys.
    let exported = d.path("back.safetensors");
    let o = squeeze(&["export", out.join("model.sqz").to_str().unwrap(), "--format", "safetensors", "--out", exported.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("max |Δ| 0e0 against the decoded model"), "{}", o.stdout);
    let sd = pytorch::read_state_dict(&std::fs::read(&exported).unwrap()).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
    let zeros = sd["fc1.weight"].values.iter().filter(|v| **v == 0.0).count();
    assert!(zeros >= 6, "half of the 12 weights pruned, exported as zeros");
}

#[test]
fn export_round_trips_and_refuses_bad_targets() {
    let d = Dir::new();
    let model = store::import_pytorch(&fixture("tiny_mlp.pth"), &arch(&d)).unwrap();
    let path = d.path("e.safetensors");
    let s = store::export_safetensors(&ModelFile::Dense(store::dense_file(&model)), &path, 8).unwrap();
    assert_eq!((s.tensors, s.checked_inputs, s.max_abs_diff, s.max_abs_diff_vs_stored), (4, 8, 0.0, 0.0));
    assert_eq!(s.bytes, std::fs::metadata(&path).unwrap().len());
    // Read back as a foreign state dict: same keys and values as the original file.
    let back = pytorch::read_state_dict(&std::fs::read(&path).unwrap()).unwrap();
    let orig = pytorch::read_state_dict(&std::fs::read(fixture("tiny_mlp.pth")).unwrap()).unwrap();
    let values = |sd: &BTreeMap<String, pytorch::Tensor>| sd.iter().map(|(k, t)| (k.clone(), t.shape.clone(), t.values.clone())).collect::<Vec<_>>();
    assert_eq!(values(&back), values(&orig));
    // and as a squeeze model again.
    assert_eq!(store::read_model(&path).unwrap().params, model.params);

    // Export into a missing directory: an error, nothing written.
    let o = squeeze(&["export", path.to_str().unwrap(), "--format", "safetensors", "--out", d.path("no/such/dir/x.safetensors").to_str().unwrap()]);
    assert_error(&o, "x.safetensors");
    let o = squeeze(&["export", path.to_str().unwrap(), "--format", "safetensors", "--out", path.to_str().unwrap()]);
    assert_error(&o, "is the input file");
    // A raw state dict is not a squeeze model: the error says how to import it.
    let o = squeeze(&["eval", fixture("tiny_mlp.pth").to_str().unwrap()]);
    assert_error(&o, "squeeze import");
}

#[test]
fn sample_model_trained_elsewhere_matches_its_numpy_logits() {
    // recipes/models/fmnist-mlp-sklearn.* come from scripts/train_sklearn_mlp.py
    // (scikit-learn); the JSON holds numpy's logits of the first test images.
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models");
    let images = Path::new(squeeze::data::DEFAULT_DATA_DIR).join("t10k-images-idx3-ubyte.gz");
    if !images.exists() {
        return; // Fashion-MNIST not installed: nothing to compare with
    }
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(models.join("fmnist-mlp-sklearn.json")).unwrap()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(info["first_test_logits"].clone()).unwrap();
    let idx = squeeze::data::read_idx(&images, 3).unwrap();
    let n = want.len();
    let x: Vec<f32> = idx.data[..n * 784].iter().map(|&b| f32::from(b) / 255.0).collect();
    for file in ["fmnist-mlp-sklearn.pth", "fmnist-mlp-sklearn.safetensors"] {
        let model = store::import_pytorch(&models.join(file), &models.join("fmnist-mlp-sklearn.arch.toml")).unwrap();
        // Logits sit before the final softmax; drop it to compare them.
        let mut graph = model.graph.clone();
        graph.nodes.pop();
        graph.outputs = vec![graph.nodes.last().unwrap().name.clone()];
        let logits_model = squeeze::model::Model::from_tensors(graph, model.tensors().into_iter().map(|(k, v)| {
            let shape = model.params.specs[model.params.index(&k).unwrap()].shape.clone();
            (k, (shape, v))
        }).collect()).unwrap();
        let mut ws = squeeze::runtime::exec::Workspace::default();
        let got = store::model_plan(&logits_model).unwrap().run(&x, n, &mut ws).unwrap().to_vec();
        for (g, w) in got.iter().zip(want.iter().flatten()) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{file}: {g} vs {w}");
        }
    }
}

#[test]
fn published_legacy_checkpoint_reads_and_runs_as_python_computes_it() {
    // lpips-alex-v0.1.pth ships in the PyPI package lpips 0.1.4 (BSD-2-Clause, see
    // LICENSE-lpips), saved by PyTorch itself in its legacy format. The expected values
    // were read by Python's own pickle module (scripts/legacy_pth_expected.py).
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("lpips-alex-v0.1.expected.json")).unwrap()).unwrap();
    let sd = pytorch::read_state_dict(&std::fs::read(fixture("lpips-alex-v0.1.pth")).unwrap()).unwrap();
    let tensors = want["tensors"].as_object().unwrap();
    assert_eq!(sd.len(), tensors.len());
    for (k, t) in tensors {
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        let values: Vec<f64> = serde_json::from_value(t["values"].clone()).unwrap();
        assert_eq!(sd[k].shape, shape, "{k}");
        assert_eq!(sd[k].values, values.iter().map(|v| *v as f32).collect::<Vec<_>>(), "{k}");
    }
    // Every truncation of it, and of a zip fixture, is an error, never a panic.
    for name in ["lpips-alex-v0.1.pth", "tiny_mlp.pth", "checkpoint.pt"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in 0..bytes.len() {
            assert!(pytorch::read_state_dict(&bytes[..cut]).is_err(), "{name} cut at {cut}");
        }
    }
    // Its first layer as a squeeze model: a 1x1 convolution over 64 channels.
    let d = Dir::new();
    let others: Vec<String> = tensors.keys().filter(|k| !k.starts_with("lin0")).map(|k| format!("\"{k}\"")).collect();
    let a = d.write(
        "lpips.arch.toml",
        &format!("input = [64, 2, 2]\nignore = [{}]\n[[layer]]\nop = \"conv2d\"\nweight = \"lin0.model.1.weight\"\nkernel = 1\n", others.join(", ")),
    );
    let model = store::import_pytorch(&fixture("lpips-alex-v0.1.pth"), &a).unwrap();
    let x: Vec<f32> = serde_json::from_value::<Vec<Vec<Vec<f64>>>>(want["conv_input"].clone()).unwrap().into_iter().flatten().flatten().map(|v| v as f32).collect();
    let y: Vec<f64> = serde_json::from_value::<Vec<Vec<f64>>>(want["conv_output"].clone()).unwrap().into_iter().flatten().collect();
    let mut ws = squeeze::runtime::exec::Workspace::default();
    let got = store::model_plan(&model).unwrap().run(&x, 1, &mut ws).unwrap().to_vec();
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&y) {
        assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {y:?}");
    }
}
