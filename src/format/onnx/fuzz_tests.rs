//! The importer on corrupted input: every ONNX fixture, and squeeze's own exports of
//! small graphs, are mutated thousands of times (a byte replaced or bit-flipped, a
//! truncation, an insertion; 1 to 4 edits per copy, as the .sqz container's fuzz tests
//! do) and imported. Nothing may panic or ask for an absurd allocation: a mutated
//! dimension or length must become an `OnnxError`. Whatever imports must build a
//! runtime plan (or fail with an error) and run one sample.
//!
//! Allocations are watched by a counting global allocator (this test binary only): the
//! fuzzing thread records the largest single request it makes, and each import must stay
//! under a bound proportional to the input's length. A wrapped or unchecked size would
//! ask for far more (or abort the process with "memory allocation failed").

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::Instant;

use prost::Message;

use super::{import, Imported, SUPPORTED_OPS};
use crate::format::onnx::encode_f32;
use crate::format::onnx::proto::{attr_type, data_type, AttributeProto, ModelProto, NodeProto, TensorProto};
use crate::rng::Rng;
use crate::runtime::exec::{Plan, Weights, Workspace};
use crate::spec::{Graph, Node, Op, QuantPlan, INPUT};

struct Watched;

thread_local! {
    /// The largest single allocation this thread asked for since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator also runs while thread-locals are being torn down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static WATCHED: Watched = Watched;

fn take_largest() -> usize {
    LARGEST.with(|l| l.replace(0))
}

/// The most one import (and its plan and one-sample run) may ask for at once: the
/// decoded values are f64 (8 bytes from as little as 1 byte of int8 data), plus slack
/// for tables, and per-sample activations bounded by what the file's dimensions allow.
fn allocation_bound(input_len: usize) -> usize {
    64 * input_len + (64 << 20)
}

/// All `.onnx` fixtures, by name.
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "fixtures missing from {}", dir.display());
    files
}

/// Small graphs written by squeeze's exporter: a conv net and a GRU on sequences, so the
/// mutants also reach the exporter's layout (Transposes, Squeezes, recurrent weights).
fn own_exports() -> Vec<(String, Vec<u8>)> {
    let conv = Graph {
        input_shape: vec![2, 6, 6],
        nodes: vec![
            Node { name: "conv".into(), inputs: vec![INPUT.into()], op: Op::Conv2d { in_channels: 2, out_channels: 3, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 } },
            Node { name: "relu".into(), inputs: vec!["conv".into()], op: Op::Relu },
            Node { name: "pool".into(), inputs: vec!["relu".into()], op: Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 } },
            Node { name: "flat".into(), inputs: vec!["pool".into()], op: Op::Flatten },
            Node { name: "fc".into(), inputs: vec!["flat".into()], op: Op::Linear { in_features: 27, out_features: 4, bias: true } },
            Node { name: "soft".into(), inputs: vec!["fc".into()], op: Op::Softmax },
        ],
        outputs: vec!["soft".into()],
        io_names: Default::default(),
    };
    let gru = Graph {
        input_shape: vec![5, 3],
        nodes: vec![
            Node { name: "gru".into(), inputs: vec![INPUT.into()], op: Op::Gru { input_size: 3, hidden: 4, bias: true, sequence: false, bidirectional: false } },
            Node { name: "fc".into(), inputs: vec!["gru".into()], op: Op::Linear { in_features: 4, out_features: 2, bias: true } },
        ],
        outputs: vec!["fc".into()],
        io_names: Default::default(),
    };
    let mut rng = Rng::new(11);
    [("conv (squeeze export)", conv), ("gru (squeeze export)", gru)]
        .into_iter()
        .map(|(name, g)| {
            let tensors: HashMap<String, Vec<f32>> =
                g.parameters().iter().map(|p| (p.name.clone(), (0..p.numel()).map(|_| rng.next_f32() - 0.5).collect())).collect();
            let bytes = encode_f32(&g, &tensors).unwrap();
            assert!(import(&bytes).is_ok(), "{name} does not import back");
            (name.to_string(), bytes)
        })
        .collect()
}

/// Imports `bytes`; an accepted model must build a plan (or say why not) and run one
/// sample of zeros (or say why not). Returns whether the import succeeded.
fn import_checked(bytes: &[u8], what: &str) -> bool {
    take_largest();
    let outcome = std::panic::catch_unwind(|| match import(bytes) {
        Ok(m) => {
            build_and_run(&m);
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    });
    let Ok(accepted) = outcome else {
        // Keep the input that panicked, to reproduce it with `squeeze inspect`.
        let path = std::env::temp_dir().join("squeeze-onnx-fuzz-panic.onnx");
        let _ = std::fs::write(&path, bytes);
        panic!("{what}: a mutant panicked (written to {})", path.display());
    };
    let largest = take_largest();
    assert!(largest <= allocation_bound(bytes.len()), "{what}: one allocation of {largest} bytes for a {}-byte file", bytes.len());
    accepted
}

fn build_and_run(m: &Imported) {
    let weights = m.tensors.iter().map(|(n, _, v)| (n.clone(), Weights::F32(v.clone()))).collect();
    let Ok(plan) = Plan::new(&m.graph, weights, &QuantPlan::default()) else { return };
    // Run only graphs whose values are small: the importer allows up to
    // MAX_VALUES_PER_SAMPLE per value, and a run allocates them.
    let Ok(shapes) = m.graph.validate() else { return };
    if shapes.values().any(|s| s.iter().product::<usize>() > 1 << 16) {
        return;
    }
    let x = vec![0.0f32; m.graph.input_len()];
    let _ = plan.run(&x, 1, &mut Workspace::default());
}

/// Mutants per file: a fixed budget of bytes, so the large fixtures (sklearn's 200 KB
/// MLP) do not dominate the run time, and 300 to 8000 copies of every file.
fn mutants_of(len: usize) -> usize {
    (16_000_000 / len.max(1)).clamp(300, 8000)
}

#[test]
fn corrupted_onnx_files_import_or_fail_cleanly() {
    let start = Instant::now();
    let mut rng = Rng::new(2026);
    let mut files = fixtures();
    files.extend(own_exports());
    let (mut mutants, mut accepted) = (0usize, 0usize);
    for (name, bytes) in &files {
        let copies = mutants_of(bytes.len());
        let mut ok = 0;
        for _ in 0..copies {
            let mut b = bytes.to_vec();
            crate::testing::mutate(&mut b, &mut rng, 4);
            ok += import_checked(&b, name) as usize;
        }
        mutants += copies;
        accepted += ok;
        eprintln!("{name}: {copies} mutants, {ok} imported");
    }
    // Truncations at every length of a small fixture, and random byte strings (half of
    // them starting like a ModelProto, so they get past the first tag).
    let small = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/mlp_gemm.onnx")).unwrap();
    for n in 0..small.len() {
        import_checked(&small[..n], "truncated mlp_gemm");
    }
    for i in 0..3000 {
        let len = rng.below(400);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 && len >= 4 {
            b[..4].copy_from_slice(&small[..4]);
        }
        import_checked(&b, "random bytes");
    }
    eprintln!(
        "{mutants} mutants of {} files ({accepted} imported), {} truncations, 3000 random strings in {:.1} s",
        files.len(),
        small.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(accepted > 0, "mutations never reached an importable file");
}

/// A value that breaks size arithmetic: zero, ±1, powers of two around the 32- and
/// 64-bit limits, small numbers, anything.
fn extreme(rng: &mut Rng) -> i64 {
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => -1,
        3 => 2,
        4 => i64::MAX,
        5 => i64::MIN,
        6 => 1 << 31,
        7 => 1 << 32,
        8 => 1 << 62,
        9 => rng.below(64) as i64,
        10 => -2 - rng.below(8) as i64,
        _ => rng.next_u64() as i64,
    }
}

fn tensors_of(m: &mut ModelProto) -> Vec<&mut TensorProto> {
    let Some(g) = m.graph.as_mut() else { return Vec::new() };
    let mut ts: Vec<&mut TensorProto> = g.initializer.iter_mut().collect();
    ts.extend(g.node.iter_mut().flat_map(|n| n.attribute.iter_mut().filter_map(|a| a.t.as_mut())));
    ts
}

/// One edit of the decoded model that byte mutations rarely make: a tensor dimension,
/// attribute or input dimension set to an extreme value, a node rewired to another
/// value, duplicated, retyped or removed, a tensor's data cut or retyped.
fn mutate_structure(m: &mut ModelProto, rng: &mut Rng) {
    let names: Vec<String> = {
        let Some(g) = m.graph.as_ref() else { return };
        g.node.iter().flat_map(|n| n.output.iter().cloned()).chain(g.initializer.iter().filter_map(|t| t.name.clone())).chain(g.input.iter().filter_map(|i| i.name.clone())).collect()
    };
    match rng.below(8) {
        0 => {
            let mut ts = tensors_of(m);
            if !ts.is_empty() {
                let k = rng.below(ts.len());
                let t = &mut ts[k];
                if t.dims.is_empty() || rng.below(4) == 0 {
                    t.dims.push(extreme(rng));
                } else {
                    let d = rng.below(t.dims.len());
                    t.dims[d] = extreme(rng);
                }
            }
        }
        1 => {
            let g = m.graph.as_mut().unwrap();
            let with_attrs: Vec<usize> = (0..g.node.len()).filter(|&i| !g.node[i].attribute.is_empty()).collect();
            if !with_attrs.is_empty() {
                let n = &mut g.node[with_attrs[rng.below(with_attrs.len())]];
                let k = rng.below(n.attribute.len());
                let a = &mut n.attribute[k];
                if a.ints.is_empty() || rng.below(4) == 0 {
                    a.i = Some(extreme(rng));
                    if rng.below(2) == 0 {
                        a.ints.push(extreme(rng));
                    }
                } else {
                    let j = rng.below(a.ints.len());
                    a.ints[j] = extreme(rng);
                }
            }
        }
        2 => {
            let g = m.graph.as_mut().unwrap();
            if !g.input.is_empty() {
                let k = rng.below(g.input.len());
                let shape = g.input[k].r#type.as_mut().and_then(|t| t.tensor_type.as_mut()).and_then(|t| t.shape.as_mut());
                if let Some(s) = shape
                    && !s.dim.is_empty()
                {
                    let d = rng.below(s.dim.len());
                    s.dim[d].dim_value = Some(extreme(rng));
                }
            }
        }
        3 => {
            let g = m.graph.as_mut().unwrap();
            if !g.node.is_empty() && !names.is_empty() {
                let k = rng.below(g.node.len());
                let n = &mut g.node[k];
                let v = names[rng.below(names.len())].clone();
                if n.input.is_empty() || rng.below(4) == 0 {
                    n.input.push(v);
                } else {
                    let j = rng.below(n.input.len());
                    n.input[j] = v;
                }
            }
        }
        4 => {
            // A copy of a node, reading one input twice (Concat(x, x) doubles x).
            let g = m.graph.as_mut().unwrap();
            if !g.node.is_empty() {
                let mut copy: NodeProto = g.node[rng.below(g.node.len())].clone();
                if let Some(first) = copy.input.first().cloned() {
                    copy.input.push(first);
                }
                let at = rng.below(g.node.len() + 1);
                g.node.insert(at, copy);
            }
        }
        5 => {
            let g = m.graph.as_mut().unwrap();
            if !g.node.is_empty() {
                let k = rng.below(g.node.len());
                g.node[k].op_type = Some(SUPPORTED_OPS[rng.below(SUPPORTED_OPS.len())].to_string());
            }
        }
        6 => {
            let g = m.graph.as_mut().unwrap();
            if rng.below(2) == 0 && !g.node.is_empty() {
                let k = rng.below(g.node.len());
                g.node.remove(k);
            } else if !g.initializer.is_empty() {
                let k = rng.below(g.initializer.len());
                g.initializer.remove(k);
            }
        }
        _ => {
            let mut ts = tensors_of(m);
            if !ts.is_empty() {
                let k = rng.below(ts.len());
                let t = &mut ts[k];
                match rng.below(3) {
                    0 => t.data_type = Some([0, 1, 2, 3, 6, 7, 11, 16][rng.below(8)]),
                    1 => {
                        if let Some(r) = t.raw_data.as_mut() {
                            let keep = rng.below(r.len() + 1);
                            r.truncate(keep);
                        }
                        let keep = rng.below(t.float_data.len() + 1);
                        t.float_data.truncate(keep);
                    }
                    _ => t.int64_data.push(extreme(rng)),
                }
            }
        }
    }
}

#[test]
fn structurally_corrupted_onnx_models_import_or_fail_cleanly() {
    let start = Instant::now();
    let mut rng = Rng::new(7);
    let mut files = fixtures();
    files.extend(own_exports());
    let (mut mutants, mut accepted) = (0usize, 0usize);
    for (name, bytes) in &files {
        let Ok(model) = ModelProto::decode(bytes.as_slice()) else { panic!("{name} does not decode") };
        let copies = mutants_of(bytes.len());
        let mut ok = 0;
        for _ in 0..copies {
            let mut m = model.clone();
            for _ in 0..1 + rng.below(3) {
                mutate_structure(&mut m, &mut rng);
            }
            ok += import_checked(&m.encode_to_vec(), name) as usize;
        }
        mutants += copies;
        accepted += ok;
        eprintln!("{name}: {copies} structural mutants, {ok} imported");
    }
    eprintln!("{mutants} structural mutants of {} files ({accepted} imported) in {:.1} s", files.len(), start.elapsed().as_secs_f64());
    assert!(accepted > 0, "structural mutations never reached an importable file");
}

// What the fuzzing found, one crafted file each: every one is a clear error now.

fn mlp_gemm() -> ModelProto {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/mlp_gemm.onnx");
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(output.to_string()),
        op_type: Some(op.to_string()),
        attribute,
        ..NodeProto::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), ints: values.to_vec(), r#type: Some(attr_type::INTS), ..AttributeProto::default() }
}

/// Puts `nodes` before the first Gemm, which then reads `feeds` instead of `x` (or, with
/// `weight`, instead of its weight `w1`).
fn with_prefix(nodes: Vec<NodeProto>, feeds: &str, weight: bool) -> ModelProto {
    let mut m = mlp_gemm();
    let g = m.graph.as_mut().unwrap();
    g.node[0].input[if weight { 1 } else { 0 }] = feeds.to_string();
    g.node.splice(0..0, nodes);
    m
}

fn import_error(m: &ModelProto) -> String {
    let bytes = m.encode_to_vec();
    take_largest();
    let e = import(&bytes).map(|_| ()).unwrap_err().to_string();
    assert!(take_largest() <= allocation_bound(bytes.len()));
    e
}

#[test]
fn a_chain_of_self_concats_is_refused_before_it_grows() {
    // 40 doublings of a 1-value constant ask for 2^40 values (8 TiB as f64) from a
    // file of a few kilobytes.
    let mut nodes = vec![node("Constant", &[], "c0", vec![ints("value_ints", &[1])])];
    for i in 0..40 {
        let (a, b) = (format!("c{i}"), format!("c{}", i + 1));
        nodes.push(node("Concat", &[&a, &a], &b, vec![]));
    }
    nodes.push(node("Reshape", &["x", "c40"], "xr", vec![]));
    let e = import_error(&with_prefix(nodes, "xr", false));
    assert!(e.contains("Concat") && e.contains("more than the file stores"), "{e}");
}

#[test]
fn a_zero_point_of_the_wrong_length_is_an_error() {
    let mut m = with_prefix(vec![node("DequantizeLinear", &["w1q", "s", "z"], "w1d", vec![])], "w1d", true);
    let g = m.graph.as_mut().unwrap();
    let w1 = g.initializer.iter().find(|t| t.name.as_deref() == Some("w1")).unwrap().clone();
    let numel = w1.dims.iter().product::<i64>() as usize;
    let tensor = |name: &str, dims: Vec<i64>, data_type: i32, raw: Vec<u8>| TensorProto {
        name: Some(name.into()),
        dims,
        data_type: Some(data_type),
        raw_data: Some(raw),
        ..TensorProto::default()
    };
    g.initializer.push(tensor("w1q", w1.dims.clone(), data_type::INT8, vec![3; numel]));
    g.initializer.push(tensor("s", vec![], data_type::FLOAT, 0.5f32.to_le_bytes().to_vec()));
    g.initializer.push(TensorProto { name: Some("z".into()), dims: vec![0], data_type: Some(data_type::INT8), ..TensorProto::default() });
    let e = import_error(&m);
    assert!(e.contains("zero point has 0 values, the scale 1"), "{e}");
}

#[test]
fn a_transpose_naming_the_batch_axis_twice_is_an_error() {
    let e = import_error(&with_prefix(vec![node("Transpose", &["x"], "xt", vec![ints("perm", &[0, 0])])], "xt", false));
    assert!(e.contains("perm [0, 0] is not a permutation"), "{e}");
}

#[test]
fn absurd_dimensions_are_errors_not_allocations() {
    let mut m = mlp_gemm();
    let shape = |m: &mut ModelProto| {
        let g = m.graph.as_mut().unwrap();
        g.input[0].r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim[1].dim_value = Some(1 << 40);
    };
    shape(&mut m);
    let e = import_error(&m);
    assert!(e.contains("more than 268435456 values per sample"), "{e}");
    // A size-0 tensor would pass any other dimension through the element count.
    let mut m = mlp_gemm();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![0, 1 << 40];
    m.graph.as_mut().unwrap().initializer[0].raw_data = None;
    m.graph.as_mut().unwrap().initializer[0].float_data.clear();
    let e = import_error(&m);
    assert!(e.contains("dimension 1099511627776 is larger than any tensor"), "{e}");
    // Windows: a padding that overflows the padded size.
    let conv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/cnn_bn.onnx");
    let mut m = ModelProto::decode(std::fs::read(conv).unwrap().as_slice()).unwrap();
    let c = m.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type.as_deref() == Some("Conv")).unwrap();
    c.attribute.retain(|a| a.name.as_deref() != Some("pads"));
    c.attribute.push(ints("pads", &[1 << 62; 4]));
    let e = import_error(&m);
    assert!(e.contains("squeeze takes padding up to 65536"), "{e}");
}
