//! The command line end to end on a tiny data set, and its answers to bad input.

use crate::util::{assert_error, recipe, run_recipe, squeeze, tiny_dataset, Dir};

const PRUNE_QUANT: &str = "[[pass]]\ntype = \"prune\"\nsparsity = 0.5\nfine_tune_epochs = 1\n[[pass]]\ntype = \"quantize\"\nmode = \"full\"\ncalibration = 200\n";

fn data_dir(d: &Dir) -> std::path::PathBuf {
    let data = d.path("data");
    std::fs::create_dir(&data).unwrap();
    tiny_dataset(&data, 1500, 400);
    data
}

#[test]
fn run_trains_prunes_quantizes_and_reports_what_eval_reproduces() {
    let d = Dir::new();
    let data = data_dir(&d);
    let r = recipe(&d, &data, "mlp", PRUNE_QUANT, 0.05);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert_eq!(report["result"], "passed");
    assert_eq!(report["schema_version"], 2);
    let stages = report["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["baseline", "pruned-50", "int8"]);
    let baseline = &stages[0];
    assert!(baseline["accuracy"].as_f64().unwrap() > 0.8, "tiny data is easy: {baseline}");
    for s in stages {
        let file = out.join(s["file"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), s["bytes"].as_u64().unwrap(), "bytes is the real file size");
        assert!(s["latency_us_b1"].as_f64().unwrap() > 0.0 && s["throughput_b256"].as_f64().unwrap() > 0.0);
    }
    let int8 = &stages[2];
    assert_eq!(int8["file"], "model.sqz");
    assert!(int8["kernel"].as_str().unwrap().starts_with("int8-"));
    // Half the weights pruned: the non-zero count is about half (biases stay).
    let nz = int8["nonzero_params"].as_u64().unwrap() as f64 / int8["params"].as_u64().unwrap() as f64;
    assert!((0.45..0.56).contains(&nz), "{nz}");
    // Pruned + int8 + sparse positions: well over 4× smaller than fp32.
    assert!(int8["ratio"].as_f64().unwrap() > 5.0);
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("pruned-50"));

    // `squeeze eval` on the written file reproduces the reported accuracy exactly.
    let e = squeeze(&["eval", out.join("model.sqz").to_str().unwrap(), "--data", data.to_str().unwrap(), "--validation", "300"]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let want = format!("{:.2}%", int8["accuracy"].as_f64().unwrap() * 100.0);
    assert!(e.stdout.contains(&want), "eval printed {}, report says {want}", e.stdout);
}

#[test]
fn deep_compression_recipe_codes_smaller_and_eval_reproduces_it() {
    let d = Dir::new();
    let data = data_dir(&d);
    let passes = "[[pass]]\ntype = \"prune\"\nsparsity = 0.8\nschedule = \"cubic\"\nsteps = 2\nfine_tune_epochs = 1\n[pass.per_layer]\nfc2 = 0.5\n[[pass]]\ntype = \"share\"\nlinear_bits = 4\nfine_tune_epochs = 1\nhalf_precision = true\n[[pass]]\ntype = \"code\"\n";
    let r = recipe(&d, &data, "mlp", passes, 0.05);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let stages = report["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["baseline", "pruned-80", "shared", "coded"]);
    let bytes: Vec<u64> = stages.iter().map(|s| s["bytes"].as_u64().unwrap()).collect();
    assert!(bytes[1] < bytes[0] && bytes[2] < bytes[1] && bytes[3] < bytes[2], "each stage smaller: {bytes:?}");
    // Sharing and coding change the encoding, not the weights: same accuracy.
    assert_eq!(stages[2]["accuracy"], stages[3]["accuracy"]);
    assert_eq!(stages[1]["extra"]["steps"].as_array().unwrap().len(), 2);
    let model = out.join("model.sqz");
    let i = squeeze(&["inspect", model.to_str().unwrap()]);
    assert!(i.stdout.contains("sparse-codebook-") && i.stdout.contains("per layer") && i.stdout.contains("index bits"), "{}", i.stdout);
    let e = squeeze(&["eval", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--validation", "300"]);
    let want = format!("{:.2}%", stages[3]["accuracy"].as_f64().unwrap() * 100.0);
    assert!(e.stdout.contains(&want), "eval printed {}, report says {want}", e.stdout);
    // The decoded file is the trained model: reading it back as a model keeps masks and codebooks.
    let m = squeeze::store::read_model(&model).unwrap();
    assert_eq!(m.constraints.codebooks.len(), 2);
    assert_eq!(m.constraints.masks.len(), 2);
}

#[test]
fn soft_pruning_reports_a_hard_control_at_the_same_sparsity() {
    let d = Dir::new();
    let data = data_dir(&d);
    let passes = "[[pass]]\ntype = \"prune\"\nsparsity = 0.6\nl1 = 0.001\nl1_epochs = 1\nfine_tune_epochs = 1\n";
    let r = recipe(&d, &data, "mlp", passes, 0.2);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stage = &report["stages"][1];
    assert_eq!(stage["name"], "pruned-60");
    let control = &stage["extra"]["hard_control"];
    assert_eq!(control["sparsity"], 0.6);
    assert_eq!(control["epochs"], 2, "same total epochs as the soft arm (1 L1 + 1 fine-tune)");
    assert!(control["accuracy"].as_f64().unwrap() > 0.5);
}

#[test]
fn distillation_recovers_a_pruned_model_with_masks_held() {
    let d = Dir::new();
    let data = data_dir(&d);
    let passes = "[[pass]]\ntype = \"prune\"\nsparsity = 0.7\nfine_tune_epochs = 0\n[[pass]]\ntype = \"distill\"\nepochs = 1\nfine_tune_epochs = 1\n";
    let r = recipe(&d, &data, "mlp", passes, 0.2);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stage = &report["stages"][2];
    assert_eq!(stage["name"], "distilled");
    assert_eq!(stage["extra"]["teacher"], "baseline");
    assert_eq!(stage["nonzero_params"], report["stages"][1]["nonzero_params"], "the pruning mask held");
    // A recipe with a bad temperature is refused before anything runs.
    let bad = recipe(&d, &data, "mlp", "[[pass]]\ntype = \"distill\"\ntemperature = 0.0\n", 0.2);
    assert_error(&squeeze(&["run", "--recipe", bad.to_str().unwrap(), "--out-dir", d.path("bad").to_str().unwrap()]), "temperature");
}

#[test]
fn distillation_recipe_compares_a_fresh_student_with_its_control_over_seeds() {
    let d = Dir::new();
    let data = data_dir(&d);
    // The baseline (lenet300) is the teacher; the stage is a fresh mlp student.
    let passes = "[[pass]]\ntype = \"distill\"\nstudent = \"mlp\"\nseeds = 2\nepochs = 1\nfine_tune_epochs = 1\nschedule = \"cosine\"\nshifted_copies = 1\nalpha = 1.0\n";
    let r = recipe(&d, &data, "lenet300", passes, 0.5);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stage = &report["stages"][1];
    assert_eq!(stage["name"], "distilled");
    assert_eq!(stage["params"], 50_890, "the stage is the student");
    let dist = &stage["distillation"];
    assert_eq!(dist["student"], "mlp");
    assert_eq!(dist["epochs"], 2);
    assert_eq!(dist["transfer_samples"], 2 * (1500 - 300), "training images and one shifted copy each");
    assert_eq!(dist["seeds"].as_array().unwrap().len(), 2);
    assert_eq!(dist["teacher_accuracy"], report["stages"][0]["accuracy"], "the teacher is the baseline");
    let first = &dist["seeds"][0];
    assert_eq!(first["distilled_accuracy"], stage["accuracy"], "the stage's file is the first seed's distilled student");
    let mean = (first["control_accuracy"].as_f64().unwrap() + dist["seeds"][1]["control_accuracy"].as_f64().unwrap()) / 2.0;
    assert!((dist["control_accuracy"].as_f64().unwrap() - mean).abs() < 1e-12);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Distillation") && md.contains("mean ± sd"), "{md}");
    // An unknown student and a wrong alpha are refused before anything runs.
    let bad = recipe(&d, &data, "mlp", "[[pass]]\ntype = \"distill\"\nstudent = \"resnet\"\n", 0.2);
    assert_error(&squeeze(&["run", "--recipe", bad.to_str().unwrap(), "--out-dir", d.path("bad").to_str().unwrap()]), "resnet");
    let bad = recipe(&d, &data, "mlp", "[[pass]]\ntype = \"distill\"\nstudent = \"mlp\"\nalpha = 1.5\n", 0.2);
    assert_error(&squeeze(&["run", "--recipe", bad.to_str().unwrap(), "--out-dir", d.path("bad").to_str().unwrap()]), "alpha");
}

#[test]
fn soft_trimming_shrinks_groups_then_removes_them() {
    let d = Dir::new();
    let data = data_dir(&d);
    let passes = "[[pass]]\ntype = \"trim\"\nratio = 0.5\ngroup_lasso = 0.01\ngroup_lasso_epochs = 1\nfine_tune_epochs = 1\n";
    let r = recipe(&d, &data, "mlp", passes, 0.2);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let stage = &report["stages"][1];
    assert_eq!(stage["name"], "trimmed");
    assert_eq!(stage["params"], 25_450);
    assert_eq!(stage["extra"]["group_lasso"]["epochs"], 1);
}

#[test]
fn gate_failure_stops_with_exit_1_and_names_the_stage() {
    let d = Dir::new();
    let data = data_dir(&d);
    let passes = "[[pass]]\ntype = \"prune\"\nsparsity = 0.995\nfine_tune_epochs = 0\n[[pass]]\ntype = \"quantize\"\n";
    let r = recipe(&d, &data, "mlp", passes, 0.0);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("gate failed at stage 'pruned-100'") || o.stderr.contains("gate failed at stage 'pruned-99'"), "{}", o.stderr);
    assert_eq!(report["result"], "failed");
    assert!(report["reason"].as_str().unwrap().contains("points"));
    assert_eq!(report["stages"].as_array().unwrap().len(), 2, "the run stopped at the failing stage");
    assert!(!out.join("model.sqz").exists());
}

#[test]
fn verbs_train_prune_quantize_inspect_chain() {
    let d = Dir::new();
    let data = data_dir(&d);
    let ds = data.to_str().unwrap();
    let m = d.path("m.safetensors");
    let o = squeeze(&["train", "--model", "mlp", "--epochs", "2", "--out", m.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = d.path("p.sqz");
    let o = squeeze(&["prune", m.to_str().unwrap(), "--sparsity", "0.8", "--scope", "global", "--fine-tune-epochs", "1", "--out", p.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("kept"));
    let q = d.path("q.sqz");
    let o = squeeze(&["quantize", p.to_str().unwrap(), "--out", q.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("kernel int8-"), "{}", o.stdout);
    // f16 biases: the 74 bias values of the mlp take two bytes each instead of four.
    let h = d.path("h.sqz");
    let o = squeeze(&["quantize", p.to_str().unwrap(), "--small-tensors", "f16", "--out", h.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (full, half) = (std::fs::metadata(&q).unwrap().len() as i64, std::fs::metadata(&h).unwrap().len() as i64);
    assert!(full - half >= 74 * 2 - 16, "{full} → {half} bytes");
    let w = d.path("w.sqz");
    let o = squeeze(&["quantize", m.to_str().unwrap(), "--mode", "weights", "--layers", "fc1", "--out", w.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("dequantized"), "{}", o.stdout);
    let t = d.path("t.sqz");
    let o = squeeze(&["trim", m.to_str().unwrap(), "--ratio", "0.5", "--fine-tune-epochs", "1", "--out", t.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("fc1: 64 → 32 units") && o.stdout.contains("50890 → 25450 parameters"), "{}", o.stdout);
    let o = squeeze(&["distill", "--teacher", m.to_str().unwrap(), "--student", "mlp", "--epochs", "1", "--fine-tune-epochs", "1", "--seeds", "1", "--out", d.path("s.safetensors").to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("mean over 1 seeds") && d.path("s.safetensors").exists(), "{}", o.stdout);
    // A zoo-name teacher trained first (and saved), an ensemble with the file, hard
    // labels, shifted copies, and a lenet5 student.
    let saved = d.path("teacher.safetensors");
    let o = squeeze(&[
        "distill", "--teacher", "mlp", "--teacher-epochs", "1", "--save-teacher", saved.to_str().unwrap(), "--teacher", m.to_str().unwrap(), "--student", "lenet5", "--mode", "hard", "--epochs", "1",
        "--shifted-copies", "1", "--schedule", "cosine", "--seeds", "2", "--out", d.path("s5.sqz").to_str().unwrap(), "--data", ds, "--validation", "300",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("baseline") && o.stdout.contains("ensemble of 2"), "{}", o.stdout);
    assert!(o.stdout.contains("seed 1235:") && o.stdout.contains("over 2400 samples") && o.stdout.contains("mean over 2 seeds"), "{}", o.stdout);
    assert_eq!(squeeze::store::read_model(&d.path("s5.sqz")).unwrap().graph.num_params(), 61_706, "the lenet5 student was written");
    assert_eq!(squeeze::store::read_model(&saved).unwrap().graph.num_params(), 50_890, "the trained mlp teacher was saved");
    let sh = d.path("shared.sqz");
    let o = squeeze(&["share", "--epochs", "1", "--out", sh.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("task coarse") && o.stdout.contains("task footwear") && o.stdout.contains("% of separate"), "{}", o.stdout);
    let heads = squeeze::store::read(&sh).unwrap().plan().unwrap().run_all(&vec![0.5; 784], 1, &mut Default::default()).unwrap();
    assert_eq!(heads.iter().map(|h| h.len()).collect::<Vec<_>>(), [10, 4, 2], "one file, three task heads");
    let soft = d.path("soft.sqz");
    let o = squeeze(&["share", "--form", "soft", "--penalty", "0.001", "--epochs", "1", "--out", soft.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("shared-soft") && soft.exists(), "{}", o.stdout);
    assert_error(&squeeze(&["share", "--out", d.path("shared.txt").to_str().unwrap(), "--data", ds]), "must end in .sqz");
    let i = squeeze(&["inspect", q.to_str().unwrap()]);
    assert_eq!(i.code, 0, "{}", i.stderr);
    assert!(i.stdout.contains("fc1.weight") && i.stdout.contains("sparse-int8"), "{}", i.stdout);
    assert!(i.stdout.contains("integer layers: fc1, fc2"), "{}", i.stdout);
    let i = squeeze(&["inspect", m.to_str().unwrap()]);
    assert!(i.stdout.contains("f32 dense") && i.stdout.contains("Linear"), "{}", i.stdout);
    // --json: the same facts as data; the per-layer rows add up to the file.
    let j = squeeze(&["inspect", q.to_str().unwrap(), "--json"]);
    assert_eq!(j.code, 0, "{}", j.stderr);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("inspect --json prints JSON");
    assert_eq!(v["bytes"].as_u64(), Some(std::fs::metadata(&q).unwrap().len()));
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.last().unwrap()["layer"], "total");
    let section_bytes: u64 = v["tensors"].as_array().unwrap().iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert!(section_bytes <= v["bytes"].as_u64().unwrap() && section_bytes > 0);
    assert_eq!(v["integer"]["layers"], serde_json::json!(["fc1", "fc2"]));
    for verb in ["run", "train", "eval", "prune", "trim", "quantize", "distill", "share", "inspect", "bench", "import", "export"] {
        let h = squeeze(&[verb, "--help"]);
        assert_eq!(h.code, 0);
        assert!(h.stdout.contains("Usage"), "{verb}");
    }
}

#[test]
fn bad_input_gets_one_clear_error_and_no_output_file() {
    let d = Dir::new();
    let data = data_dir(&d);
    let ds = data.to_str().unwrap();
    let out = d.path("out.sqz");
    let outs = out.to_str().unwrap();

    // Missing file.
    assert_error(&squeeze(&["eval", d.path("nope.sqz").to_str().unwrap(), "--data", ds]), "nope.sqz");
    // A text file given as a model.
    let txt = d.write("notes.txt", "these are not weights\n");
    assert_error(&squeeze(&["quantize", txt.to_str().unwrap(), "--out", outs, "--data", ds]), "not a model file");
    assert!(!out.exists());

    // A real .sqz, then truncated and corrupted copies.
    let m = d.path("m.safetensors");
    assert_eq!(squeeze(&["train", "--epochs", "1", "--out", m.to_str().unwrap(), "--data", ds, "--validation", "300"]).code, 0);
    let good = d.path("good.sqz");
    assert_eq!(squeeze(&["quantize", m.to_str().unwrap(), "--out", good.to_str().unwrap(), "--data", ds, "--validation", "300"]).code, 0);
    let bytes = std::fs::read(&good).unwrap();
    let trunc = d.path("trunc.sqz");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(&squeeze(&["quantize", trunc.to_str().unwrap(), "--out", outs, "--data", ds]), "truncated");
    assert!(!out.exists());
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let corrupt = d.path("corrupt.sqz");
    std::fs::write(&corrupt, &bad).unwrap();
    assert_error(&squeeze(&["eval", corrupt.to_str().unwrap(), "--data", ds]), "checksum");
    assert_error(&squeeze(&["inspect", corrupt.to_str().unwrap()]), "checksum");

    // Unknown recipe key.
    let r = d.write("r.toml", "name = \"x\"\n[model]\nzoo = \"mlp\"\n[gate]\nmax_accuracy_drop = 0.01\nmax_acuracy = 3\n");
    let run_out = d.path("run-out");
    assert_error(&squeeze(&["run", "--recipe", r.to_str().unwrap(), "--out-dir", run_out.to_str().unwrap()]), "max_acuracy");
    assert!(!run_out.exists());

    // Shape mismatch between model and data.
    let odd = d.path("odd.safetensors");
    let graph = squeeze::spec::Graph::chain(vec![10], vec![("fc", squeeze::spec::Op::Linear { in_features: 10, out_features: 10, bias: true })]);
    squeeze::store::write_safetensors(&odd, &squeeze::model::Model::init(graph, 1).unwrap()).unwrap();
    assert_error(&squeeze(&["eval", odd.to_str().unwrap(), "--data", ds, "--validation", "300"]), "shape mismatch");
    assert_error(&squeeze(&["prune", odd.to_str().unwrap(), "--sparsity", "0.5", "--out", outs, "--data", ds, "--validation", "300"]), "shape mismatch");
    assert!(!out.exists());

    // Wrong use of trim and distill.
    assert_error(&squeeze(&["trim", good.to_str().unwrap(), "--ratio", "1.5", "--out", outs, "--data", ds, "--validation", "300"]), "ratio");
    assert!(!out.exists());
    let five = d.path("five.safetensors");
    let g5 = squeeze::spec::Graph::chain(vec![1, 28, 28], vec![("flat", squeeze::spec::Op::Flatten), ("fc", squeeze::spec::Op::Linear { in_features: 784, out_features: 5, bias: true })]);
    squeeze::store::write_safetensors(&five, &squeeze::model::Model::init(g5, 1).unwrap()).unwrap();
    let student_out = d.path("student.safetensors");
    let so = student_out.to_str().unwrap();
    let ms = m.to_str().unwrap();
    assert_error(&squeeze(&["distill", "--teacher", ms, "--student", five.to_str().unwrap(), "--out", so, "--data", ds, "--validation", "300"]), "same classes");
    // A student reading other inputs (10 values, not 28×28).
    assert_error(&squeeze(&["distill", "--teacher", ms, "--student", odd.to_str().unwrap(), "--out", so, "--data", ds, "--validation", "300"]), "same samples");
    assert_error(&squeeze(&["distill", "--teacher", ms, "--student", "mlp", "--temperature", "0", "--out", so, "--data", ds]), "temperature must be positive");
    assert_error(&squeeze(&["distill", "--teacher", ms, "--student", "mlp", "--alpha", "1.2", "--out", so, "--data", ds]), "alpha in [0, 1]");
    assert_error(&squeeze(&["distill", "--teacher", ms, "--out", so, "--data", ds]), "--student is required");
    assert_error(&squeeze(&["distill", "--teacher", "resnet", "--student", "mlp", "--out", so, "--data", ds, "--validation", "300"]), "neither a zoo name");
    assert!(!student_out.exists());

    // Missing data set: the error says how to get it.
    assert_error(&squeeze(&["eval", good.to_str().unwrap(), "--data", d.path("no-data").to_str().unwrap()]), "apt-get install dataset-fashion-mnist");
    // Refuses to overwrite its input.
    let o = squeeze(&["quantize", good.to_str().unwrap(), "--out", good.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_error(&o, "input");
    assert_eq!(std::fs::read(&good).unwrap(), bytes, "input untouched");
    // Unknown zoo model.
    assert_error(&squeeze(&["train", "--model", "resnet", "--out", outs, "--data", ds]), "resnet");
}

#[test]
fn shipped_recipes_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            squeeze::recipe::Recipe::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn closed_stdout_ends_quietly_without_a_panic() {
    // `squeeze inspect m | head -1`: the reader goes away before squeeze writes.
    let d = Dir::new();
    let m = d.path("m.safetensors");
    let graph = squeeze::model::zoo::build("lenet5").unwrap();
    squeeze::store::write_safetensors(&m, &squeeze::model::Model::init(graph, 1).unwrap()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_squeeze"))
        .args(["inspect", m.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}

const TASKS: &str = "[[task]]\nname = \"classes\"\nlabels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n[[task]]\nname = \"coarse\"\nlabels = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]\n[[task]]\nname = \"footwear\"\nlabels = [0, 0, 0, 0, 0, 1, 0, 1, 0, 1]\n";

#[test]
fn task_recipe_stores_every_task_in_one_file_and_reports_each() {
    let d = Dir::new();
    let data = data_dir(&d);
    let passes = format!("{TASKS}[[pass]]\ntype = \"share_tasks\"\nform = \"hard\"\n[[pass]]\ntype = \"share_tasks\"\nform = \"soft\"\npenalty = 0.001\nhead_epochs = 1\n");
    let r = recipe(&d, &data, "mlp", &passes, 0.5);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let stages = report["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["separate-classes", "separate-coarse", "separate-footwear", "shared-hard", "shared-soft"]);
    let separate: u64 = stages[..3].iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    for s in &stages[3..] {
        assert_eq!(s["extra"]["separate_bytes"].as_u64().unwrap(), separate);
        assert!(s["bytes"].as_u64().unwrap() * 100 < separate * 40, "one trunk for three tasks: {s}");
        let tasks = s["tasks"].as_array().unwrap();
        assert_eq!(tasks.iter().map(|t| t["task"].as_str().unwrap()).collect::<Vec<_>>(), ["classes", "coarse", "footwear"]);
        for (t, sep) in tasks.iter().zip(&stages[..3]) {
            assert_eq!(t["separate_accuracy"], sep["accuracy"]);
            assert!(t["accuracy"].as_f64().unwrap() > 0.7, "{t}");
        }
        // The stage's own accuracy is the first task's, run from the stored file.
        assert_eq!(s["accuracy"], tasks[0]["accuracy"]);
    }
    assert!(stages[4]["extra"]["trunk_rms_distance_before_merge"].as_array().unwrap().len() == 3);
    let heads = squeeze::store::read(&out.join("model.sqz")).unwrap().plan().unwrap().run_all(&vec![0.5; 784], 1, &mut Default::default()).unwrap();
    assert_eq!(heads.iter().map(|h| h.len()).collect::<Vec<_>>(), [10, 4, 2]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Per task") && md.contains("| shared-soft | footwear |"), "{md}");
}

#[test]
fn sharing_mismatched_models_gets_one_clear_error() {
    let d = Dir::new();
    let data = data_dir(&d);
    let ds = data.to_str().unwrap();
    let out = d.path("o.sqz");
    let outs = out.to_str().unwrap();
    // Different architectures cannot share a trunk, on the command line and in a recipe.
    assert_error(&squeeze(&["share", "--model", "mlp,lenet300,mlp", "--out", outs, "--data", ds]), "cannot share the trunk: task 'coarse'");
    assert_error(&squeeze(&["share", "--model", "mlp,mlp", "--out", outs, "--data", ds]), "one per task");
    assert!(!out.exists());
    let pass = "[[pass]]\ntype = \"share_tasks\"\n";
    let mixed = TASKS.replacen("name = \"coarse\"\n", "name = \"coarse\"\nzoo = \"lenet300\"\n", 1);
    let r = recipe(&d, &data, "mlp", &format!("{mixed}{pass}"), 0.5);
    let (o, _) = run_recipe(&r, &d.path("out1"));
    assert_error(&o, "cannot share the trunk");
    // A label map must give a label to every class of the data set.
    let short = TASKS.replace("[0, 0, 0, 0, 0, 1, 0, 1, 0, 1]", "[0, 0, 1]");
    let r = recipe(&d, &data, "mlp", &format!("{short}{pass}"), 0.5);
    let (o, _) = run_recipe(&r, &d.path("out2"));
    assert_error(&o, "task 'footwear': the label map has 3 entries, the data set has 10 classes");
    // Tasks with another pass, or an unknown key in a task table.
    let r = recipe(&d, &data, "mlp", &format!("{TASKS}{PRUNE_QUANT}"), 0.5);
    assert_error(&run_recipe(&r, &d.path("out3")).0, "no other pass");
    let r = recipe(&d, &data, "mlp", &format!("{}{pass}", TASKS.replace("labels", "label")), 0.5);
    assert_error(&run_recipe(&r, &d.path("out4")).0, "label");
    assert!(!d.path("out3").join("report.json").exists());
}

#[test]
fn hashed_recipe_stores_buckets_and_the_runtime_runs_them() {
    let d = Dir::new();
    let data = data_dir(&d);
    let r = recipe(&d, &data, "mlp", "[[pass]]\ntype = \"hash\"\nfraction = 0.125\nfine_tune_epochs = 2\n", 0.5);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let stages = report["stages"].as_array().unwrap();
    let hashed = &stages[1];
    assert_eq!(hashed["name"], "hashed");
    assert!(hashed["kernel"].as_str().unwrap().contains("hashed expanded at load"), "{hashed}");
    // About an eighth of the weights' values, no indices: well under a seventh of the dense file.
    assert!(hashed["bytes"].as_u64().unwrap() * 7 < stages[0]["bytes"].as_u64().unwrap(), "{hashed}");
    assert_eq!(hashed["extra"]["layers"][0]["buckets"], 6272);
    let model = out.join("model.sqz");
    let e = squeeze(&["eval", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--validation", "300"]);
    assert!(e.stdout.contains(&format!("{:.2}%", hashed["accuracy"].as_f64().unwrap() * 100.0)), "{}", e.stdout);
    let i = squeeze(&["inspect", model.to_str().unwrap()]);
    assert!(i.stdout.contains("hashed-signed-6272"), "{}", i.stdout);
}

#[test]
fn lstm_recipe_prunes_quantizes_and_inspect_lists_the_recurrent_layer() {
    let d = Dir::new();
    let data = d.path("data");
    std::fs::create_dir(&data).unwrap();
    tiny_dataset(&data, 600, 200);
    let passes = "[[pass]]\ntype = \"prune\"\nsparsity = 0.5\nfine_tune_epochs = 1\n[[pass]]\ntype = \"quantize\"\nmode = \"full\"\ncalibration = 100\n";
    let r = recipe(&d, &data, "lstm", passes, 0.2);
    let out = d.path("out");
    let (o, report) = run_recipe(&r, &out);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let stages = report["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["baseline", "pruned-50", "int8"]);
    assert!(stages[0]["accuracy"].as_f64().unwrap() > 0.5, "the bands are rows: an LSTM over rows learns them: {}", stages[0]);
    // Half of every weight matrix pruned (weight_ih, weight_hh, the head).
    let nz = stages[1]["nonzero_params"].as_u64().unwrap() as f64 / stages[1]["params"].as_u64().unwrap() as f64;
    assert!((0.49..0.53).contains(&nz), "{nz}");
    assert!(stages[2]["ratio"].as_f64().unwrap() > 5.0, "{}", stages[2]);
    // The LSTM's products run on integer kernels too: every weighted layer is int8.
    assert!(stages[2]["kernel"].as_str().unwrap().starts_with("int8-"), "{}", stages[2]);
    let model = out.join("model.sqz");
    let i = squeeze(&["inspect", model.to_str().unwrap()]);
    assert_eq!(i.code, 0, "{}", i.stderr);
    for want in ["LSTM", "lstm.weight_hh", "lstm.weight_ih", "[512, 128]", "per layer"] {
        assert!(i.stdout.contains(want), "inspect lacks '{want}': {}", i.stdout);
    }
    let layer_row = i.stdout.lines().find(|l| l.trim_start().starts_with("lstm ") && l.contains('%')).expect("a per-layer row for lstm");
    assert!(layer_row.contains("50.0%"), "{layer_row}");
    let e = squeeze(&["eval", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--validation", "300"]);
    let want = format!("{:.2}%", stages[2]["accuracy"].as_f64().unwrap() * 100.0);
    assert!(e.stdout.contains(&want), "eval printed {}, report says {want}", e.stdout);
}

#[test]
fn sequence_shapes_that_do_not_fit_are_one_clear_error() {
    use squeeze::spec::{Graph, Op};
    let d = Dir::new();
    let data = d.path("data");
    std::fs::create_dir(&data).unwrap();
    tiny_dataset(&data, 400, 100);
    let ds = data.to_str().unwrap();
    let head = |h| ("fc", Op::Linear { in_features: h, out_features: 10, bias: true });
    // A model reading 27 features per step: the data holds 28×28 images.
    let narrow = d.path("narrow.safetensors");
    let g = Graph::chain(vec![28, 27], vec![("lstm", Op::Lstm { input_size: 27, hidden: 8, bias: true, sequence: false, bidirectional: false }), head(8)]);
    squeeze::store::write_safetensors(&narrow, &squeeze::model::Model::init(g, 1).unwrap()).unwrap();
    assert_error(&squeeze(&["eval", narrow.to_str().unwrap(), "--data", ds, "--validation", "100"]), "shape mismatch");
    // A stored graph whose GRU width does not match its sequence: refused when read.
    let g = Graph::chain(vec![28, 28], vec![("gru", Op::Gru { input_size: 28, hidden: 8, bias: true, sequence: false, bidirectional: false }), head(8)]);
    let good = squeeze::model::Model::init(g, 1).unwrap();
    let bytes = squeeze::format::safetensors::encode(&squeeze::store::dense_file(&good)).unwrap();
    // Edit the graph in the header (escaped JSON in the metadata) to input_size 14: same
    // length, so the header's length prefix stays right.
    let mut bytes = bytes;
    let at = bytes.windows(15).position(|w| w.starts_with(b"input_size\\\":28") || w.starts_with(b"input_size\":28")).expect("the header names input_size");
    let digits = at + bytes[at..].iter().position(|b| *b == b'2').unwrap();
    bytes[digits..digits + 2].copy_from_slice(b"14");
    let bad = d.path("bad.safetensors");
    std::fs::write(&bad, &bytes).unwrap();
    for args in [vec!["eval", bad.to_str().unwrap(), "--data", ds], vec!["inspect", bad.to_str().unwrap()]] {
        assert_error(&squeeze(&args), "GRU expects a sequence [steps, 14]");
    }
    // Your own sequences that do not fit a [28, 28] model: 20 steps, or 30 features per step.
    let model = d.path("lstm.safetensors");
    let g = Graph::chain(vec![28, 28], vec![("lstm", Op::Lstm { input_size: 28, hidden: 8, bias: true, sequence: false, bidirectional: false }), head(8)]);
    squeeze::store::write_safetensors(&model, &squeeze::model::Model::init(g, 1).unwrap()).unwrap();
    for (steps, width) in [(20usize, 28usize), (28, 30)] {
        let n = 40;
        let x: Vec<u8> = (0..n * steps * width).flat_map(|i| ((i % 7) as f32 / 7.0).to_le_bytes()).collect();
        let y: Vec<u8> = (0..n as i64).flat_map(|i| (i % 10).to_le_bytes()).collect();
        let (xp, yp) = (d.path(&format!("x{steps}_{width}.npy")), d.path(&format!("y{steps}_{width}.npy")));
        std::fs::write(&xp, squeeze::data::npy::npy_bytes("<f4", &[n, steps, width], &x)).unwrap();
        std::fs::write(&yp, squeeze::data::npy::npy_bytes("<i8", &[n], &y)).unwrap();
        let arrays = format!("{},{}", xp.display(), yp.display());
        let data_args = ["--train-arrays", &arrays, "--test-arrays", &arrays, "--validation", "10"];
        let mut eval = vec!["eval", model.to_str().unwrap()];
        eval.extend(data_args);
        let o = squeeze(&eval);
        assert_error(&o, "shape mismatch");
        assert!(o.stderr.contains(&format!("[{steps}, {width}]")), "the error names the data's shape: {}", o.stderr);
        let q = d.path("q.sqz");
        let mut quantize = vec!["quantize", model.to_str().unwrap(), "--out", q.to_str().unwrap()];
        quantize.extend(data_args);
        assert_error(&squeeze(&quantize), "shape mismatch");
        assert!(!q.exists());
    }
}

/// An error whose message already quotes its cause prints that cause once, not twice.
#[test]
fn an_error_line_does_not_repeat_its_cause() {
    let d = Dir::new();
    let missing = d.path("missing.toml");
    let o = squeeze(&["run", "--recipe", missing.to_str().unwrap(), "--out-dir", d.path("out").to_str().unwrap()]);
    assert_error(&o, "cannot read recipe");
    let line = o.stderr.lines().find(|l| l.starts_with("squeeze:")).unwrap();
    assert_eq!(line.matches("os error 2").count(), 1, "cause repeated: {line}");
}

/// A data limit of 0 would train on nothing (it used to write a model with a NaN loss).
#[test]
fn zero_data_limits_are_refused() {
    for flag in ["--train-limit", "--test-limit"] {
        let o = squeeze(&["train", "--model", "mlp", "--epochs", "1", flag, "0", "--out", "never.safetensors"]);
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains("must be at least 1"), "{}", o.stderr);
        assert!(!std::path::Path::new("never.safetensors").exists());
    }
}

/// Each compression verb is its one-pass recipe run by the same runner: `squeeze prune M
/// --sparsity 0.5 --out P` writes the bytes the equivalent recipe writes as its
/// model.sqz (likewise trim, quantize and the random-pruning control).
#[test]
fn each_verb_writes_the_bytes_of_its_one_pass_recipe() {
    let d = Dir::new();
    let data = data_dir(&d);
    let ds = data.to_str().unwrap();
    let m = d.path("m.safetensors");
    let o = squeeze(&["train", "--model", "mlp", "--epochs", "1", "--out", m.to_str().unwrap(), "--data", ds, "--validation", "300"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let cases: [(&str, &[&str], &str); 4] = [
        ("prune", &["--sparsity", "0.5", "--fine-tune-epochs", "1"], "type = \"prune\"\nsparsity = 0.5\nfine_tune_epochs = 1\n"),
        ("trim", &["--ratio", "0.5", "--fine-tune-epochs", "1"], "type = \"trim\"\nratio = 0.5\nfine_tune_epochs = 1\n"),
        ("quantize", &["--calibration", "200"], "type = \"quantize\"\ncalibration = 200\n"),
        ("random-prune", &["--sparsity", "0.5", "--fine-tune-epochs", "1"], "type = \"random_prune\"\nsparsity = 0.5\nfine_tune_epochs = 1\n"),
    ];
    for (verb, flags, pass) in cases {
        let by_verb = d.path(&format!("{verb}.sqz"));
        let mut args = vec![verb, m.to_str().unwrap()];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--seed", "7", "--out", by_verb.to_str().unwrap(), "--data", ds, "--validation", "300"]);
        let o = squeeze(&args);
        assert_eq!(o.code, 0, "{verb}: {}", o.stderr);
        assert!(o.stdout.contains(&format!("wrote {}", by_verb.display())), "{}", o.stdout);
        let recipe = d.path(&format!("{verb}.toml"));
        let text = format!(
            "name = \"{verb}\"\nseed = 7\n[model]\nfile = \"{}\"\n[data]\ndir = \"{ds}\"\nvalidation = 300\n[gate]\nmax_accuracy_drop = 1.0\n[[pass]]\n{pass}",
            m.display()
        );
        std::fs::write(&recipe, text).unwrap();
        let out = d.path(&format!("{verb}-run"));
        let o = squeeze(&["run", "--recipe", recipe.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{verb} recipe: {}", o.stderr);
        let (a, b) = (std::fs::read(&by_verb).unwrap(), std::fs::read(out.join("model.sqz")).unwrap());
        assert!(a == b, "{verb}: the verb wrote {} bytes, its recipe {} bytes, and they differ", a.len(), b.len());
        if verb == "prune" {
            // The run's last stage is entropy coded (lossless), so the verb's file is
            // smaller than fixed-width codes of the same pruned weights.
            let back = squeeze::store::read_model(&by_verb).unwrap();
            let fixed = d.path("prune-fixed-width.sqz");
            let fixed_bytes = squeeze::store::write_sqz(&fixed, squeeze::store::stored_f32(&back), squeeze::store::Coding::FixedWidth).unwrap();
            assert!((a.len() as u64) < fixed_bytes, "entropy coded {} bytes, fixed-width {fixed_bytes}", a.len());
            std::fs::remove_file(&fixed).unwrap();
        }
        // The verb leaves nothing but its output behind.
        assert!(std::fs::read_dir(d.path("")).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".squeeze-")));
    }
    // The verbs whose recipe needs more than a model file: `distill` (the teacher is the
    // baseline) and `share` (the three tasks as [[task]] tables, zoo models trained by the run).
    let tasks = "[[task]]\nname = \"classes\"\nlabels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n[[task]]\nname = \"coarse\"\nlabels = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]\n[[task]]\nname = \"footwear\"\nlabels = [0, 0, 0, 0, 0, 1, 0, 1, 0, 1]\n";
    let wider: [(&str, &[&str], String); 2] = [
        (
            "distill",
            &["--teacher", m.to_str().unwrap(), "--student", "mlp", "--epochs", "1", "--seeds", "1"],
            format!("[model]\nfile = \"{}\"\n[[pass]]\ntype = \"distill\"\nstudent = \"mlp\"\nepochs = 1\nseeds = 1\n", m.display()),
        ),
        ("share", &["--epochs", "1", "--form", "soft", "--head-epochs", "1"], format!("[model]\nzoo = \"mlp\"\n[train]\nepochs = 1\n{tasks}[[pass]]\ntype = \"share_tasks\"\nform = \"soft\"\nhead_epochs = 1\n")),
    ];
    for (verb, flags, body) in wider {
        let by_verb = d.path(&format!("{verb}.sqz"));
        let mut args = vec![verb];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--seed", "7", "--out", by_verb.to_str().unwrap(), "--data", ds, "--validation", "300"]);
        let o = squeeze(&args);
        assert_eq!(o.code, 0, "{verb}: {}", o.stderr);
        let recipe = d.path(&format!("{verb}.toml"));
        std::fs::write(&recipe, format!("name = \"{verb}\"\nseed = 7\n[data]\ndir = \"{ds}\"\nvalidation = 300\n[gate]\nmax_accuracy_drop = 1.0\n{body}")).unwrap();
        let out = d.path(&format!("{verb}-run"));
        let o = squeeze(&["run", "--recipe", recipe.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{verb} recipe: {}", o.stderr);
        let (a, b) = (std::fs::read(&by_verb).unwrap(), std::fs::read(out.join("model.sqz")).unwrap());
        assert!(a == b, "{verb}: the verb wrote {} bytes, its recipe {} bytes, and they differ", a.len(), b.len());
    }
    // A quantized model only fits .sqz; the pass's own checks hold on the command line.
    assert_error(&squeeze(&["quantize", m.to_str().unwrap(), "--out", d.path("q.safetensors").to_str().unwrap(), "--data", ds]), "only .sqz holds");
    assert_error(&squeeze(&["random-prune", m.to_str().unwrap(), "--sparsity", "1.5", "--out", d.path("r.sqz").to_str().unwrap(), "--data", ds]), "sparsity");
    assert_error(&squeeze(&["prune", m.to_str().unwrap(), "--sparsity", "0.5", "--layers", "fc9", "--out", d.path("r.sqz").to_str().unwrap(), "--data", ds, "--validation", "300"]), "fc9");
}

/// Issue "runtime speed", item 5: `SQUEEZE_ISA` caps the instruction set of squeeze's
/// kernels, so every path runs on any machine: a full-int8 model (integer kernels) and a
/// pruned float one (sparse kernels) give the same accuracy on the scalar, AVX2 and
/// (where the CPU has it) AVX-512 paths, and the kernel description names the path.
/// A value that is not a level is one clear error.
#[test]
fn every_instruction_set_path_gives_the_same_accuracy() {
    let d = Dir::new();
    let data = data_dir(&d);
    let ds = data.to_str().unwrap();
    let m = d.path("m.safetensors");
    assert_eq!(squeeze(&["train", "--model", "mlp", "--epochs", "1", "--out", m.to_str().unwrap(), "--data", ds, "--validation", "300"]).code, 0);
    let q = d.path("q.sqz");
    assert_eq!(squeeze(&["quantize", m.to_str().unwrap(), "--calibration", "200", "--out", q.to_str().unwrap(), "--data", ds, "--validation", "300"]).code, 0);
    let p = d.path("p.sqz");
    assert_eq!(squeeze(&["prune", m.to_str().unwrap(), "--sparsity", "0.9", "--fine-tune-epochs", "0", "--out", p.to_str().unwrap(), "--data", ds, "--validation", "300"]).code, 0);
    let eval = |model: &std::path::Path, isa: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_squeeze")).args(["eval", model.to_str().unwrap(), "--data", ds]).env("SQUEEZE_ISA", isa).output().unwrap();
        assert!(out.status.success(), "{isa}: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let accuracy = line.split("test accuracy ").nth(1).and_then(|r| r.split('%').next()).unwrap().to_string();
        (accuracy, line)
    };
    let cpu_has_avx512 = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vnni");
    let cpu_has_avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let (want, _) = eval(&q, "scalar");
    for (isa, kernel, runs) in [("scalar", "int8-scalar", true), ("avx2", "int8-avx2", cpu_has_avx2), ("avx512", "int8-avx512-vnni", cpu_has_avx512)] {
        if !runs {
            eprintln!("this CPU lacks {isa}: that path is tested on a machine that has it");
            continue;
        }
        let (acc, line) = eval(&q, isa);
        assert_eq!(acc, want, "{isa}: {line}");
        assert!(line.contains(kernel), "{isa} should run {kernel}: {line}");
        let (sparse_acc, _) = eval(&p, isa);
        assert_eq!(sparse_acc, eval(&p, "scalar").0, "{isa}: the pruned model");
    }
    // `bench FILE` times a user's own file: as stored, its f32 and dynamic int8, with the
    // machine's instruction set and each kernel named; under a cap, the capped kernels.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_squeeze")).args(["bench", q.to_str().unwrap(), "--batch", "16", "--json"]).env("SQUEEZE_ISA", "avx2").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["encodings"].as_array().unwrap().iter().map(|e| e["encoding"].as_str().unwrap()).collect();
    assert_eq!(names, ["f32", "as stored", "int8-dynamic"]);
    assert_eq!(v["batch"], 16);
    let stored = &v["encodings"][1];
    assert!(stored["latency_us_b1"].as_f64().unwrap() > 0.0 && stored["throughput"].as_f64().unwrap() > 0.0);
    if cpu_has_avx2 {
        assert!(stored["kernel"].as_str().unwrap().starts_with("int8-avx2"), "{}", stored["kernel"]);
        assert!(v["machine"].as_str().unwrap().contains("kernels avx2"), "{}", v["machine"]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_squeeze")).args(["eval", q.to_str().unwrap(), "--data", ds]).env("SQUEEZE_ISA", "sse9").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SQUEEZE_ISA=sse9: expected scalar, avx2 or avx512"), "{}", String::from_utf8_lossy(&out.stderr));
}
