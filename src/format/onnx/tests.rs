//! Import checked against ONNX Runtime: the fixtures in tests/fixtures/onnx were written
//! by onnx.helper and run by ONNX Runtime (scripts/make-onnx-fixtures.py), which stored
//! the inputs and outputs next to each model.

use std::path::PathBuf;

use super::*;
use crate::runtime::exec::{Plan, Weights, Workspace};
use crate::spec::QuantPlan;

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx").join(name)
}

pub(crate) fn plan_of(m: &Imported) -> Plan {
    let w = m.tensors.iter().map(|(n, _, v)| (n.clone(), Weights::F32(v.clone()))).collect();
    Plan::new(&m.graph, w, &QuantPlan::default()).unwrap()
}

/// Imports `name`.onnx, runs its stored inputs and returns the largest absolute
/// difference from ONNX Runtime's outputs.
fn max_diff_against_onnxruntime(name: &str) -> (Imported, f32) {
    let m = import(&std::fs::read(fixture(&format!("{name}.onnx"))).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.json"))).unwrap()).unwrap();
    let floats = |k: &str| reference[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect::<Vec<f32>>();
    let (x, want) = (floats("input"), floats("output"));
    let batch = reference["batch"].as_u64().unwrap() as usize;
    let plan = plan_of(&m);
    assert_eq!(plan.output_len(), reference["output_per_sample"].as_u64().unwrap() as usize, "{name}");
    let got = plan.run(&x, batch, &mut Workspace::default()).unwrap().to_vec();
    assert_eq!(got.len(), want.len(), "{name}");
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    (m, diff)
}

#[test]
fn gemm_mlp_matches_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("mlp_gemm");
    assert!(diff < 1e-5, "max difference {diff}");
    let kinds: Vec<&str> = m.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(kinds, ["Linear", "ReLU", "Linear", "Softmax"]);
    assert_eq!(m.opset, 13);
}

#[test]
fn conv_batchnorm_cnn_matches_onnxruntime_with_the_norm_folded() {
    let (m, diff) = max_diff_against_onnxruntime("cnn_bn");
    assert!(diff < 1e-5, "max difference {diff}");
    let kinds: Vec<&str> = m.graph.nodes.iter().map(|n| n.op.kind()).collect();
    // BatchNormalization folded into conv1 (which gains a bias).
    assert_eq!(kinds, ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "Flatten", "Linear"]);
    assert!(m.notes.iter().any(|n| n.contains("bn1") && n.contains("conv1")), "{:?}", m.notes);
}

#[test]
fn matmul_add_sigmoid_tanh_constants_match_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("matmul_constants");
    assert!(diff < 1e-5, "max difference {diff}");
    let kinds: Vec<&str> = m.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(kinds, ["Linear", "Sigmoid", "Linear", "Tanh"], "bias adds and the constant scale fold into the layers");
    assert_eq!(m.opset, 11);
}

#[test]
fn input_scaling_and_average_pools_match_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("pools_normalize");
    assert!(diff < 1e-5, "max difference {diff}");
    let kinds: Vec<&str> = m.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(kinds, ["Normalize", "Conv2d", "ReLU", "AvgPool2d", "Conv2d", "AvgPool2d", "Flatten", "Linear"]);
    assert_eq!(m.opset, 21);
}

#[test]
fn layout_only_reshapes_and_transposes_match_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("reshape_layout");
    assert!(diff < 1e-5, "max difference {diff}");
    assert_eq!(m.graph.input_shape, vec![1, 8, 8], "the input reshape becomes the model's input shape");
}

#[test]
fn bad_files_are_one_clear_error() {
    let err = |name: &str| import(&std::fs::read(fixture(name)).unwrap()).unwrap_err().to_string();
    let e = err("unsupported_op.onnx");
    assert!(e.contains("'LeakyRelu'") && e.contains("'leaky'") && e.contains("Gemm, GlobalAveragePool"), "{e}");
    let e = err("symbolic_input.onnx");
    assert!(e.contains("cannot be resolved") && e.contains("[N, features]"), "{e}");
    let e = err("grouped_conv.onnx");
    assert!(e.contains("group = 4"), "{e}");
    // Truncated and foreign bytes.
    let good = std::fs::read(fixture("mlp_gemm.onnx")).unwrap();
    for cut in [1, 10, good.len() / 2, good.len() - 1] {
        assert!(import(&good[..cut]).is_err(), "truncated at {cut}");
    }
    assert!(import(b"{\"not\": \"onnx\"}").is_err());
    assert!(import(&[]).is_err());
    assert!(!is_onnx(b"PK\x03\x04 a zip file"));
    assert!(is_onnx(&good));
}
