//! Measures how an ONNX export agrees with squeeze on the Fashion-MNIST test set: runs
//! squeeze's runtime on MODEL (any file squeeze reads) and ONNX Runtime on EXPORT.onnx
//! (through scripts/onnxruntime-check.py, python3 + onnxruntime), and prints both
//! accuracies, top-1 agreement and the max absolute output difference, then whether
//! issue 8's bar is met: for a float model, max |diff| ≤ 1e-4 and the same top-1 on ≥
//! 99.9% of the images; for an int8 model (QDQ export), ONNX Runtime's accuracy within
//! 0.3 points of squeeze's integer path. Exits 1 when it is not.
//!
//!     cargo run --release --example onnx_agreement -- MODEL EXPORT.onnx [DATA_DIR]
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: onnx_agreement MODEL EXPORT.onnx [DATA_DIR]");
    }
    let (model, export) = (Path::new(&args[0]), Path::new(&args[1]));
    let data = squeeze::data::locate(args.get(2).map(Path::new))?;
    let test = squeeze::data::load_fashion_mnist(&data, 0, Some(10), None)?.test;
    let n = test.labels.len();
    let file = squeeze::store::read(model)?;
    let int8 = matches!(&file, squeeze::store::ModelFile::Sqz(s) if !s.quant.integer_nodes.is_empty());
    let plan = file.plan()?;
    let ours = plan.run(&test.images, n, &mut squeeze::runtime::exec::Workspace::default())?.to_vec();

    let tmp = std::env::temp_dir().join(format!("onnx-agreement-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (input, output) = (tmp.join("in.f32"), tmp.join("out.f32"));
    std::fs::write(&input, test.images.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/onnxruntime-check.py");
    let o = Command::new("python3")
        .arg(&script)
        .args(["run", &args[1], input.to_str().unwrap(), &n.to_string(), output.to_str().unwrap()])
        .output()
        .context("running python3 (needs onnxruntime)")?;
    if !o.status.success() {
        bail!("onnxruntime failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let theirs: Vec<f32> = std::fs::read(&output)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    std::fs::remove_dir_all(&tmp).ok();
    if theirs.len() != ours.len() {
        bail!("ONNX Runtime gave {} values, squeeze {}", theirs.len(), ours.len());
    }
    let classes = ours.len() / n;
    let accuracy = |out: &[f32]| out.chunks(classes).zip(&test.labels).filter(|(r, y)| argmax(r) == **y as usize).count() as f64 / n as f64 * 100.0;
    let agree = ours.chunks(classes).zip(theirs.chunks(classes)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let (acc_ours, acc_theirs) = (accuracy(&ours), accuracy(&theirs));
    let (met, bar) = if int8 {
        ((acc_ours - acc_theirs).abs() <= 0.3, "int8: |accuracy difference| <= 0.3 points")
    } else {
        (max <= 1e-4 && agree * 1000 >= n * 999, "fp32: max |diff| <= 1e-4 and top-1 agreement >= 99.9%")
    };
    println!(
        "{} vs {} ({} bytes): squeeze {:.2}%, onnxruntime {:.2}%, top-1 agreement {agree}/{n} ({:.2}%), max |diff| {max:.2e}; {bar}: {}",
        model.display(),
        export.display(),
        std::fs::metadata(export)?.len(),
        acc_ours,
        acc_theirs,
        agree as f64 / n as f64 * 100.0,
        if met { "met" } else { "NOT met" }
    );
    if !met {
        std::process::exit(1);
    }
    Ok(())
}
