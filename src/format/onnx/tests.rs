//! Import checked against ONNX Runtime: the fixtures in tests/fixtures/onnx were written
//! by onnx.helper and run by ONNX Runtime (scripts/make-onnx-fixtures.py), which stored
//! the inputs and outputs next to each model.

use std::path::PathBuf;

use super::*;
use crate::format::onnx::{encode_f32, encode_qdq, ExportError};
use crate::store::{export_onnx, ModelFile};
use std::path::Path;
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
pub(crate) fn max_diff_against_onnxruntime(name: &str) -> (Imported, f32) {
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
    eprintln!("{name}: max |squeeze − onnxruntime| = {diff:.2e}");
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
fn pytorch_style_view_flatten_folds_its_shape_arithmetic() {
    let (m, diff) = max_diff_against_onnxruntime("view_flatten");
    assert!(diff < 1e-5, "max difference {diff}");
    let kinds: Vec<&str> = m.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(kinds, ["Conv2d", "MaxPool2d", "Flatten", "Linear"]);
    assert_eq!(m.graph.nodes[0].name, "conv1_Conv", "PyTorch's /conv1/Conv, sanitised");
}

/// Every zoo model exports to ONNX fp32 and imports back to the same graph (the export
/// itself checks the outputs on 8 inputs).
#[test]
fn every_zoo_model_exports_and_imports_back() {
    for (name, _) in crate::model::zoo::MODELS {
        let model = crate::model::Model::init(crate::model::zoo::build(name).unwrap(), 3).unwrap();
        if *name == "vit" {
            // Transformer ops are refused with one clear error.
            let e = export_onnx(Path::new(name), ModelFile::Dense(crate::store::dense_file(&model)), false).unwrap_err().to_string();
            assert!(e.contains("'patch' (PatchEmbed) cannot be exported to ONNX yet"), "{e}");
            continue;
        }
        let check = export_onnx(Path::new(name), ModelFile::Dense(crate::store::dense_file(&model)), false).unwrap();
        assert!(check.max_diff <= check.tolerance, "{name}");
        assert_eq!(encode_f32(&model.graph, &model.tensors()).unwrap(), check.bytes);
        let back = import(&check.bytes).unwrap();
        let kinds = |g: &crate::spec::Graph| g.nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>();
        assert_eq!(kinds(&back.graph), kinds(&model.graph), "{name}");
        assert_eq!(back.graph.num_params(), model.graph.num_params(), "{name}");
    }
}

/// A quantized conv model (int8 weights, calibrated activations, a residual-free chain
/// with Normalize, conv, ReLU, pool, flatten, linear) as QDQ, and the errors around it.
#[test]
fn qdq_export_of_a_quantized_conv_model_imports_back() {
    use crate::compress::quantize::{quantize, Mode};
    let graph = crate::spec::Graph::chain(
        vec![1, 8, 8],
        vec![
            ("norm", crate::spec::Op::Normalize { mean: vec![0.3], std: vec![0.4] }),
            ("conv", crate::spec::Op::Conv2d { in_channels: 1, out_channels: 3, kernel: 3, stride: 1, padding: 1, bias: true }),
            ("relu", crate::spec::Op::Relu),
            ("pool", crate::spec::Op::MaxPool2d { kernel: 2, stride: 2 }),
            ("flat", crate::spec::Op::Flatten),
            ("fc", crate::spec::Op::Linear { in_features: 48, out_features: 5, bias: true }),
            ("sig", crate::spec::Op::Sigmoid),
            ("out", crate::spec::Op::Linear { in_features: 5, out_features: 4, bias: true }),
        ],
    );
    let model = crate::model::Model::init(graph, 5).unwrap();
    let mut rng = crate::rng::Rng::new(6);
    let calibration: Vec<f32> = (0..64 * 64).map(|_| rng.next_f32()).collect();
    let q = quantize(&model, Mode::Full, &[], &calibration).unwrap();
    let check = export_onnx(Path::new("q"), ModelFile::Sqz(q.clone()), false).unwrap();
    assert!(check.max_diff <= check.tolerance && check.int8_layers == 3);
    let back = import(&check.bytes).unwrap();
    assert!(back.notes.iter().any(|n| n.contains("QDQ pairs are dropped")), "{:?}", back.notes);
    assert_eq!(back.graph.nodes.iter().filter(|n| n.op.has_weight()).count(), 3);
    // A float model has nothing to export as QDQ.
    let f = crate::compress::quantize::store_f32(&model);
    assert!(matches!(encode_qdq(&f), Err(ExportError::NotQuantized)));
    // --float: the same quantized model as fp32 (weights dequantized).
    assert_eq!(export_onnx(Path::new("q"), ModelFile::Sqz(q), true).unwrap().int8_layers, 0);
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
