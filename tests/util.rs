//! Helpers: a fresh temporary directory, a tiny learnable IDX data set, and a runner
//! for the `squeeze` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir { tmp: tempfile::tempdir().expect("temp dir") }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// The output of one run of the binary.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn squeeze(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_squeeze")).args(args).env_remove("SQUEEZE_DATA").output().expect("run squeeze");
    let o = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!o.stderr.contains("panicked"), "squeeze panicked: {}", o.stderr);
    o
}

/// Asserts a clean failure: exit 2, one error line naming `needle`.
pub fn assert_error(o: &Output, needle: &str) {
    assert_eq!(o.code, 2, "expected exit 2, got {}: {}", o.code, o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("squeeze:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {}", o.stderr);
    assert!(lines[0].to_lowercase().contains(&needle.to_lowercase()), "error line lacks '{needle}': {}", lines[0]);
}

/// A Fashion-MNIST-shaped data set that a small MLP learns in a few epochs: class `c`
/// lights two horizontal bands whose rows depend on `c`, plus noise.
pub fn tiny_dataset(dir: &Path, train: usize, test: usize) {
    let mut state = 0x1234_5678u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut make = |n: usize| {
        let mut images = vec![0u8; n * 784];
        let mut labels = vec![0u8; n];
        for i in 0..n {
            let c = (next() % 10) as usize;
            labels[i] = c as u8;
            let img = &mut images[i * 784..(i + 1) * 784];
            for (p, v) in img.iter_mut().enumerate() {
                let row = p / 28;
                let band = row == 2 + 2 * c || row == 3 + 2 * c || (p % 28) == 3 + 2 * c;
                *v = if band { 160 + (next() % 90) as u8 } else { (next() % 70) as u8 };
            }
        }
        (images, labels)
    };
    let (ti, tl) = make(train);
    let (vi, vl) = make(test);
    squeeze::data::write_idx_images(&dir.join("train-images-idx3-ubyte.gz"), &ti, train, 28, 28, true).unwrap();
    squeeze::data::write_idx_labels(&dir.join("train-labels-idx1-ubyte.gz"), &tl, true).unwrap();
    squeeze::data::write_idx_images(&dir.join("t10k-images-idx3-ubyte"), &vi, test, 28, 28, false).unwrap();
    squeeze::data::write_idx_labels(&dir.join("t10k-labels-idx1-ubyte"), &vl, false).unwrap();
}

/// A recipe on the tiny data set.
pub fn recipe(dir: &Dir, data: &Path, zoo: &str, passes: &str, max_drop: f64) -> PathBuf {
    dir.write(
        "recipe.toml",
        &format!(
            "name = \"t\"\nseed = 7\n[model]\nzoo = \"{zoo}\"\n[data]\ndir = \"{}\"\nvalidation = 300\n[train]\nepochs = 3\nbatch_size = 64\nlr = 0.002\n[gate]\nmax_accuracy_drop = {max_drop}\n{passes}",
            data.display()
        ),
    )
}

/// Runs `squeeze run --recipe recipe --out-dir out`; returns what it printed and the
/// parsed `report.json` (`Null` when no report was written).
pub fn run_recipe(recipe: &Path, out: &Path) -> (Output, serde_json::Value) {
    let o = squeeze(&["run", "--recipe", recipe.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
    let report = std::fs::read_to_string(out.join("report.json")).map_or(serde_json::Value::Null, |t| serde_json::from_str(&t).unwrap());
    (o, report)
}
