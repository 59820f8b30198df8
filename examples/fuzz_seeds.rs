//! Writes the seed inputs of the fuzz targets that the test fixtures do not provide
//! (`.sqz` files of every value coding, squeeze's safetensors, `.npy`/`.npz`, a
//! state dict's pickle) into `fuzz/seeds/<target>/`:
//!
//!     cargo run --release --example fuzz_seeds -- fuzz/seeds
//!
//! Small on purpose (a 16-8-3 MLP): libFuzzer mutates small inputs far faster.
//! `scripts/fuzz.sh` adds the fixtures in tests/fixtures to the corpus.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Result;
use squeeze::compress::quantize::{self, Mode};
use squeeze::data::npy::npy_bytes;
use squeeze::model::Model;
use squeeze::spec::{Graph, Op};
use squeeze::store::{self, Coding};

fn tiny() -> Result<Model> {
    let graph = Graph::chain(
        vec![1, 4, 4],
        vec![
            ("norm", Op::Normalize { mean: vec![0.5], std: vec![0.25] }),
            ("flat", Op::Flatten),
            ("fc1", Op::Linear { in_features: 16, out_features: 8, bias: true }),
            ("relu", Op::Relu),
            ("fc2", Op::Linear { in_features: 8, out_features: 3, bias: true }),
        ],
    );
    Ok(Model::init(graph, 7)?)
}

fn npz(entries: &[(&str, Vec<u8>)], deflate: bool) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut out);
        let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in entries {
            z.start_file(format!("{name}.npy"), opts)?;
            z.write_all(bytes)?;
        }
        z.finish()?;
    }
    Ok(out.into_inner())
}

fn main() -> Result<()> {
    let root = std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".into());
    let root = Path::new(&root);
    let dir = |t: &str| -> Result<std::path::PathBuf> {
        let d = root.join(t);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let m = tiny()?;
    // .sqz: f32, int8 weights, and int8 with half the weights pruned (sparse positions),
    // each with entropy coding and with fixed-width codes.
    let sqz = dir("sqz")?;
    let mut pruned = m.clone();
    for name in ["fc1.weight", "fc2.weight"] {
        let n = pruned.params.get(name).unwrap().len();
        pruned.set_mask(name, (0..n).map(|i| i % 2 == 0).collect())?;
    }
    for (coding, tag) in [(Coding::Entropy, "entropy"), (Coding::FixedWidth, "fixed")] {
        store::write_sqz(&sqz.join(format!("f32-{tag}.sqz")), store::stored_f32(&m), coding)?;
        store::write_sqz(&sqz.join(format!("int8-{tag}.sqz")), quantize::quantize(&m, &quantize::Precision::int8_all(&m, Mode::Weights), &[])?, coding)?;
        store::write_sqz(&sqz.join(format!("pruned-int8-{tag}.sqz")), quantize::quantize(&pruned, &quantize::Precision::int8_all(&pruned, Mode::Weights), &[])?, coding)?;
        store::write_sqz(&sqz.join(format!("pruned-f32-{tag}.sqz")), store::stored_f32(&pruned), coding)?;
    }
    // squeeze's safetensors (the graph in the metadata).
    store::write_safetensors(&dir("safetensors")?.join("tiny.safetensors"), &m)?;
    // .npy and .npz.
    let npy = dir("npy")?;
    let x: Vec<u8> = (0..2 * 4 * 4).map(|i| (i * 7 % 256) as u8).collect();
    let xf: Vec<u8> = (0..2 * 4).flat_map(|i| (i as f32 * 0.25).to_le_bytes()).collect();
    let y: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let xn = npy_bytes("|u1", &[2, 4, 4], &x);
    let yn = npy_bytes("<i8", &[2], &y);
    std::fs::write(npy.join("x-u8.npy"), &xn)?;
    std::fs::write(npy.join("x-f32.npy"), npy_bytes("<f4", &[2, 4], &xf))?;
    std::fs::write(npy.join("y-i64.npy"), &yn)?;
    std::fs::write(npy.join("stored.npz"), npz(&[("x", xn.clone()), ("y", yn.clone())], false)?)?;
    std::fs::write(npy.join("deflated.npz"), npz(&[("x", xn), ("y", yn)], true)?)?;
    // The pickle of a torch.save state dict.
    let pth = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch/tiny_mlp.pth"))?;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&pth[..]))?;
    let mut pkl = Vec::new();
    zip.by_name("tiny_mlp/data.pkl")?.read_to_end(&mut pkl)?;
    std::fs::write(dir("pickle")?.join("tiny_mlp.pkl"), pkl)?;
    for d in std::fs::read_dir(root)? {
        let d = d?.path();
        println!("{}: {} seeds", d.display(), std::fs::read_dir(&d)?.count());
    }
    Ok(())
}
