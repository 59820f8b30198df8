//! Hostile input and misuse (issue 19): readers under an address-space limit, absurd
//! recipe values refused up front, and output directories shared between runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{assert_error, Dir, Output};

/// 2 GB of address space: more than any reader needs for these tiny files, far less
/// than what the bugs reserved.
const LIMIT_KIB: u64 = 2_000_000;

/// Runs the binary under `ulimit -v kib` (a child `sh` sets the limit, then execs it).
pub fn squeeze_limited(args: &[&str], kib: u64) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_squeeze"))
        .args(args)
        .env_remove("SQUEEZE_DATA")
        .output()
        .expect("run squeeze under sh");
    use std::os::unix::process::ExitStatusExt;
    let o = Output {
        // A signal (abort, stack overflow) shows as 128 + its number, as a shell says it.
        code: out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!o.stderr.contains("panicked"), "squeeze panicked: {}", o.stderr);
    o
}

fn arch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models/fmnist-mlp-sklearn.arch.toml")
}

/// `squeeze import FILE --arch ... --out o.safetensors` under the limit; asserts one
/// clean error naming `needle`, and no output.
fn import_fails_cleanly(d: &Dir, file: &Path, needle: &str) {
    let out = d.path("o.safetensors");
    let o = squeeze_limited(&["import", file.to_str().unwrap(), "--arch", arch().to_str().unwrap(), "--out", out.to_str().unwrap()], LIMIT_KIB);
    assert_error(&o, needle);
    assert!(!out.exists());
}

/// A legacy (pre-1.6) torch.save file whose object is the pickle `root`: the magic
/// number, protocol version 1001, empty system info, then `root`.
fn legacy_file(root: &[u8]) -> Vec<u8> {
    let mut b = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    b.extend_from_slice(b"\x80\x02M\xe9\x03.\x80\x02}.");
    b.extend_from_slice(root);
    b
}

/// Issue 19, item 1: a 224-byte zip whose entry claims 3.75 GiB was reserved whole
/// (exit 134 under a memory limit). The claim is only a hint now.
#[test]
fn pth_entry_claiming_gigabytes_is_one_error_under_a_memory_limit() {
    let d = Dir::new();
    let file = d.path("claims.pth");
    let b64 = "UEsDBBQAAAAAAEsKhl2LGJ4HAgAAAAIAAAAKAAAAYS9kYXRhLnBrbH0uUEsDBBQAAAAAAEsKhl2FPeMZBgAAAAYAAAALAAAAYS9ieXRlb3JkZXJsaXR0bGVQSwECFAMUAAAAAABLCoZdixieBwIAAAACAAAACgAAAAAAAAAAAAAAgAEAAAAAYS9kYXRhLnBrbFBLAQIUAxQAAAAAAEsKhl2FPeMZBgAAAAAAAPALAAAAAAAAAAAAAACAASoAAABhL2J5dGVvcmRlclBLBQYAAAAAAgACAHEAAABZAAAAAAA=";
    let bytes = base64::decode(b64).unwrap();
    assert_eq!(bytes.len(), 224);
    std::fs::write(&file, &bytes).unwrap();
    import_fails_cleanly(&d, &file, "byteorder");
    // The real model imports under the same limit (the limit itself is not the failure).
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models/fmnist-mlp-sklearn.pth");
    let out = d.path("good.safetensors");
    let o = squeeze_limited(&["import", good.to_str().unwrap(), "--arch", arch().to_str().unwrap(), "--out", out.to_str().unwrap()], LIMIT_KIB);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// Issue 19, item 2: 40 rounds of GET, GET, TUPLE2, PUT (under 300 bytes) doubled the value
/// each round by copying (2⁴⁰ values, abort). Memo references share now, and the
/// expanded size is bounded.
#[test]
fn pickle_billion_laughs_is_one_error_under_a_memory_limit() {
    let mut pkl = b"\x80\x02]q\x00".to_vec();
    for _ in 0..40 {
        pkl.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    pkl.push(b'.');
    assert!(pkl.len() < 300);
    let d = Dir::new();
    let file = d.path("laughs.pth");
    std::fs::write(&file, legacy_file(&pkl)).unwrap();
    let t = std::time::Instant::now();
    import_fails_cleanly(&d, &file, "expands to more than");
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

/// Issue 19, item 3: a million nested lists overflowed the stack when the value was
/// dropped (signal 11 or 6). Nesting is capped where values are built.
#[test]
fn deeply_nested_pickle_is_one_error_not_a_stack_overflow() {
    let n = 1_000_000;
    let mut pkl = b"\x80\x02".to_vec();
    pkl.extend(std::iter::repeat_n(b']', n));
    pkl.extend(std::iter::repeat_n(b'a', n - 1));
    pkl.push(b'.');
    let d = Dir::new();
    let file = d.path("deep.pth");
    std::fs::write(&file, legacy_file(&pkl)).unwrap();
    import_fails_cleanly(&d, &file, "nests containers more than 256 deep");
    // Nested tuples (built from a MARK) are capped the same way.
    let mut pkl = b"\x80\x02".to_vec();
    for _ in 0..n / 2 {
        pkl.extend_from_slice(b"(");
    }
    pkl.extend_from_slice(b"N");
    for _ in 0..n / 2 {
        pkl.extend_from_slice(b"t");
    }
    pkl.push(b'.');
    std::fs::write(&file, legacy_file(&pkl)).unwrap();
    import_fails_cleanly(&d, &file, "nests containers more than 256 deep");
}

/// A recipe for the zoo MLP with `train`, `gate` and `passes` as given; its data folder
/// does not exist, so any check that waited for the data would report the data instead.
fn recipe_text(d: &Dir, model: &str, train: &str, gate: &str, passes: &str) -> PathBuf {
    d.write(
        "r.toml",
        &format!("name = \"h\"\n[model]\n{model}\n[data]\ndir = \"{}\"\n[train]\n{train}\n[gate]\n{gate}\n{passes}", d.path("no-data").display()),
    )
}

/// Issue 19, items 4, 5 and 7: absurd or non-finite numbers, `calibration = 0`, an
/// unknown zoo name and `epochs = 0` for a zoo model are refused before any data is
/// read, with the key, the value and the allowed range; nothing is written.
#[test]
fn absurd_recipe_values_are_refused_before_any_data_is_read() {
    let d = Dir::new();
    let zoo = "zoo = \"mlp\"";
    let gate = "max_accuracy_drop = 0.05";
    let prune = |extra: &str| format!("[[pass]]\ntype = \"prune\"\nsparsity = 0.5\n{extra}\n");
    let cases: Vec<(&str, &str, &str, String, &str)> = vec![
        (zoo, "epochs = 1000000000", gate, String::new(), "[train] epochs = 1000000000 is out of range: expected 0 to 10000"),
        (zoo, "lr = nan", gate, String::new(), "[train] lr = NaN"),
        (zoo, "lr = inf", gate, String::new(), "[train] lr = inf"),
        (zoo, "lr = -0.01", gate, String::new(), "above 0"),
        (zoo, "epochs = 2", "max_accuracy_drop = nan", String::new(), "[gate] max_accuracy_drop = NaN is not a number squeeze can use"),
        (zoo, "epochs = 2", gate, prune("fine_tune_epochs = 1000000000"), "fine_tune_epochs = 1000000000 is out of range"),
        (zoo, "epochs = 2", gate, prune("lr = nan"), "lr = NaN"),
        (zoo, "epochs = 2", gate, "[[pass]]\ntype = \"quantize\"\ncalibration = 0\n".into(), "calibration = 0 leaves nothing to calibrate on"),
        ("zoo = \"mlpp\"", "epochs = 2", gate, String::new(), "zoo = \"mlpp\" is not a zoo model (known: mlp,"),
        (zoo, "epochs = 0", gate, String::new(), "epochs = 0 would leave the zoo model untrained"),
    ];
    for (model, train, gate, passes, needle) in cases {
        let r = recipe_text(&d, model, train, gate, &passes);
        let out = d.path("out");
        let o = crate::util::squeeze(&["run", "--recipe", r.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
        assert_error(&o, needle);
        assert!(!out.exists(), "{train} {passes}: nothing is written");
    }
    // epochs = 0 is fine for a file model (it is not trained).
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models/fmnist-mlp-sklearn.safetensors");
    let r = recipe_text(&d, &format!("state_dict = \"{}\"\narchitecture = \"{}\"", model.display(), arch().display()), "epochs = 0", gate, "");
    let o = crate::util::squeeze(&["run", "--recipe", r.to_str().unwrap(), "--out-dir", d.path("out").to_str().unwrap()]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no-data"), "the run got as far as the data: {}", o.stderr);
}

/// The same ranges on the command line: flags are refused by the parser (exit 2) with
/// the value and the range, and nothing is trained.
#[test]
fn absurd_flags_are_refused_at_once() {
    let d = Dir::new();
    let out = d.path("m.safetensors");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models/fmnist-mlp-sklearn.safetensors");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--epochs", "18446744073709551615"], "0 to 10000"),
        (vec!["train", "--epochs", "1000000000"], "0 to 10000"),
        (vec!["train", "--lr", "nan"], "above 0"),
        (vec!["train", "--lr", "inf"], "above 0"),
        (vec!["distill", "--teacher", "mlp", "--student", "mlp", "--fine-tune-epochs", "1000000000"], "0 to 10000"),
        (vec!["distill", "--teacher", "mlp", "--student", "mlp", "--lr", "NaN"], "lr = NaN"),
        (vec!["share", "--head-lr", "nan"], "head_lr = NaN"),
        (vec!["prune", model.to_str().unwrap(), "--sparsity", "0.5", "--fine-tune-epochs", "1000000000"], "0 to 10000"),
        (vec!["prune", model.to_str().unwrap(), "--sparsity", "0.5", "--lr", "nan"], "lr = NaN"),
        (vec!["quantize", model.to_str().unwrap(), "--calibration", "0"], "calibration = 0"),
    ];
    let sqz = d.path("m.sqz");
    for (mut args, needle) in cases {
        let out = if args[0] == "quantize" { &sqz } else { &out };
        args.extend(["--out", out.to_str().unwrap()]);
        let t = std::time::Instant::now();
        let o = crate::util::squeeze(&args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(needle), "{args:?}: {}", o.stderr);
        assert!(t.elapsed().as_secs() < 10, "{args:?} took {:?}", t.elapsed());
        assert!(!out.exists());
    }
}

/// The files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Waits (up to 120 s) until `path` exists.
fn wait_for(path: &Path, child: &mut std::process::Child) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {} appeared", path.display());
        assert!(t.elapsed().as_secs() < 120, "{} never appeared", path.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Issue 19, items 6 and 7: two runs into one directory (the second is refused at once
/// while the first holds it); a killed run's files, temporary files and stale lock do
/// not survive the next run, which leaves exactly its own files.
#[test]
fn one_run_at_a_time_and_a_rerun_leaves_only_its_own_files() {
    let d = Dir::new();
    let data = d.path("data");
    std::fs::create_dir(&data).unwrap();
    crate::util::tiny_dataset(&data, 1500, 400);
    let out = d.path("out");
    let write = |name: &str, passes: &str| {
        d.write(
            name,
            &format!("name = \"t\"\nseed = 7\n[model]\nzoo = \"mlp\"\n[data]\ndir = \"{}\"\nvalidation = 300\n[train]\nepochs = 2\nbatch_size = 64\nlr = 0.002\n[gate]\nmax_accuracy_drop = 1.0\n{passes}", data.display()),
        )
    };
    let run = |r: &Path| crate::util::run_recipe(r, &out);
    // Run A: baseline, pruned-50, int8 (model.sqz).
    let a = write("a.toml", "[[pass]]\ntype = \"prune\"\nsparsity = 0.5\nfine_tune_epochs = 1\n[[pass]]\ntype = \"quantize\"\ncalibration = 200\n");
    let (o, _) = run(&a);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(out.join("pruned-50.sqz").exists());
    // Run B fine-tunes for a long time: started, then a second run is refused while it
    // holds the directory, then B is killed.
    let b = write("b.toml", "[[pass]]\ntype = \"share\"\nlinear_bits = 4\nfine_tune_epochs = 2000\n");
    let mut slow = Command::new(env!("CARGO_BIN_EXE_squeeze"))
        .args(["run", "--recipe", b.to_str().unwrap(), "--out-dir", out.to_str().unwrap()])
        .env_remove("SQUEEZE_DATA")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&out.join(".squeeze.lock"), &mut slow);
    let t = std::time::Instant::now();
    let (second, _) = run(&a);
    assert_error(&second, "is in use by another squeeze run (process");
    assert!(second.stderr.contains(&slow.id().to_string()), "{}", second.stderr);
    assert!(t.elapsed().as_secs() < 5, "refused at once, not after training: {:?}", t.elapsed());
    // B wrote its baseline (run A's files were removed when B took the directory).
    wait_for(&out.join("baseline.safetensors"), &mut slow);
    std::thread::sleep(std::time::Duration::from_millis(300));
    slow.kill().unwrap();
    slow.wait().unwrap();
    let after_kill = listing(&out);
    assert!(!after_kill.iter().any(|n| n == "report.json" || n == "pruned-50.sqz" || n == "model.sqz"), "run A's files are gone: {after_kill:?}");
    // What a writer killed mid-write leaves: a temporary file of a dead process.
    std::fs::write(out.join(".model.sqz.tmp-999999999-0"), b"half").unwrap();
    // Run C: baseline and int8 only; the directory then holds exactly its files.
    let c = write("c.toml", "[[pass]]\ntype = \"quantize\"\ncalibration = 200\n");
    let (o, report) = run(&c);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut want: Vec<String> = report["stages"].as_array().unwrap().iter().map(|s| s["file"].as_str().unwrap().to_string()).collect();
    want.extend([".squeeze-files".to_string(), "report.json".into(), "report.md".into()]);
    want.sort();
    assert_eq!(listing(&out), want);
}

/// Item 7: a model file inside --out-dir and an output directory that cannot be
/// written are refused before any data is read or any training starts.
#[test]
fn output_directory_problems_are_refused_before_training() {
    let d = Dir::new();
    let out = d.path("out");
    std::fs::create_dir(&out).unwrap();
    let model = out.join("mine.safetensors");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models/fmnist-mlp-sklearn.safetensors"), &model).unwrap();
    let r = recipe_text(&d, &format!("state_dict = \"{}\"\narchitecture = \"{}\"", model.display(), arch().display()), "epochs = 2", "max_accuracy_drop = 0.05", "");
    let o = crate::util::squeeze(&["run", "--recipe", r.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
    assert_error(&o, "is inside the output directory");
    assert_eq!(listing(&out), ["mine.safetensors"]);
    // A file where the directory should be (tests run as root here, so a read-only
    // directory would still be writable; this is the same refusal).
    let file = d.write("plain-file", "x");
    let r = recipe_text(&d, "zoo = \"mlp\"", "epochs = 2", "max_accuracy_drop = 0.05", "");
    let o = crate::util::squeeze(&["run", "--recipe", r.to_str().unwrap(), "--out-dir", file.join("out").to_str().unwrap()]);
    assert_error(&o, "cannot write to the output directory");
}

/// Every input kept in tests/fixtures/fuzz/TARGET (crashes and hostile inputs found by
/// the fuzz targets in fuzz/ or by hand) goes through that target's reader: each is an
/// error or a value, never a panic, and the known hostile ones are errors.
#[test]
fn fuzz_regression_inputs_are_clean_errors() {
    use squeeze::format::{onnx, pickle, pytorch, safetensors, sqz};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut n = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let b = std::fs::read(&f).unwrap();
            let ok = match target.as_str() {
                "sqz" | "sqz_crc" => sqz::decode(&b, &sqz::Limits::default()).is_ok(),
                "onnx" => onnx::import(&b).is_ok(),
                "safetensors" => safetensors::decode(&b).is_ok() || pytorch::read_safetensors(&b).is_ok(),
                "pytorch_zip" => pytorch::read_state_dict(&b).is_ok(),
                "pytorch_legacy" => pytorch::read_legacy(&b).is_ok(),
                "pickle" => pickle::load(&b).is_ok(),
                "npy" => squeeze::data::npy::parse_npy(&b, Path::new("f.npy")).is_ok() || squeeze::data::npy::parse_npz(&b, Path::new("f.npz"), &["x", "y"]).is_ok(),
                other => panic!("tests/fixtures/fuzz/{other}: no such fuzz target"),
            };
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains("claims") || name.contains("laughs") || name.contains("nested") {
                assert!(!ok, "{target}/{name} must be refused");
            }
            n += 1;
        }
    }
    assert!(n >= 3);
}
