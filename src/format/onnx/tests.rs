//! Import checked against ONNX Runtime: the fixtures in tests/fixtures/onnx were written
//! by onnx.helper and run by ONNX Runtime (scripts/make-onnx-fixtures.py), which stored
//! the inputs and outputs next to each model.

use std::path::PathBuf;

use super::*;
use crate::format::onnx::{encode_f32, encode_int8, ExportError, WeightType};
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
            let e = export_onnx(Path::new(name), ModelFile::Dense(crate::store::dense_file(&model)), false, WeightType::Uint8).unwrap_err().to_string();
            assert!(e.contains("'patch' (PatchEmbed) cannot be exported to ONNX yet"), "{e}");
            continue;
        }
        if *name == "bilstm32" {
            let e = export_onnx(Path::new(name), ModelFile::Dense(crate::store::dense_file(&model)), false, WeightType::Uint8).unwrap_err().to_string();
            assert!(e.contains("'lstm' is a bidirectional LSTM/GRU"), "{e}");
            continue;
        }
        let check = export_onnx(Path::new(name), ModelFile::Dense(crate::store::dense_file(&model)), false, WeightType::Uint8).unwrap();
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
    use crate::compress::quantize::{quantize, Mode, Precision};
    let graph = crate::spec::Graph::chain(
        vec![1, 8, 8],
        vec![
            ("norm", crate::spec::Op::Normalize { mean: vec![0.3], std: vec![0.4] }),
            ("conv", crate::spec::Op::Conv2d { in_channels: 1, out_channels: 3, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 }),
            ("relu", crate::spec::Op::Relu),
            ("pool", crate::spec::Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
            ("flat", crate::spec::Op::Flatten),
            ("fc", crate::spec::Op::Linear { in_features: 48, out_features: 5, bias: true }),
            ("sig", crate::spec::Op::Sigmoid),
            ("out", crate::spec::Op::Linear { in_features: 5, out_features: 4, bias: true }),
        ],
    );
    let model = crate::model::Model::init(graph, 5).unwrap();
    let mut rng = crate::rng::Rng::new(6);
    let calibration: Vec<f32> = (0..64 * 64).map(|_| rng.next_f32()).collect();
    let q = quantize(&model, &Precision::int8_all(&model, Mode::Full), &calibration).unwrap();
    let check = export_onnx(Path::new("q"), ModelFile::Sqz(q.clone()), false, WeightType::Uint8).unwrap();
    assert!(check.max_diff <= check.tolerance && check.int8_layers == 3);
    let back = import(&check.bytes).unwrap();
    assert!(back.notes.iter().any(|n| n.contains("QDQ pairs are dropped")), "{:?}", back.notes);
    assert_eq!(back.graph.nodes.iter().filter(|n| n.op.has_weight()).count(), 3);
    // The default file stores the weights as uint8 (q + 128, zero point 128), the int8
    // file as int8 with zero point 0: the same real values, so both import to the same
    // dequantized weights.
    let int8 = export_onnx(Path::new("q"), ModelFile::Sqz(q.clone()), false, WeightType::Int8).unwrap();
    assert!(int8.max_diff <= int8.tolerance && int8.int8_layers == 3);
    let weight_init = |bytes: &[u8], suffix: &str| {
        let m = <super::super::proto::ModelProto as prost::Message>::decode(bytes).unwrap();
        m.graph.unwrap().initializer.into_iter().find(|t| t.name.as_deref() == Some(&format!("fc.weight.{suffix}"))).unwrap()
    };
    use super::super::proto::data_type;
    let (u8_q, u8_zero) = (weight_init(&check.bytes, "q"), weight_init(&check.bytes, "zero_point"));
    assert_eq!((u8_q.data_type, u8_zero.data_type), (Some(data_type::UINT8), Some(data_type::UINT8)));
    assert!(u8_zero.raw_data.as_deref().unwrap().iter().all(|&z| z == 128));
    let (i8_q, i8_zero) = (weight_init(&int8.bytes, "q"), weight_init(&int8.bytes, "zero_point"));
    assert_eq!((i8_q.data_type, i8_zero.data_type), (Some(data_type::INT8), Some(data_type::INT8)));
    let shifted: Vec<u8> = i8_q.raw_data.unwrap().iter().map(|&b| (b as i8 as i16 + 128) as u8).collect();
    assert_eq!(u8_q.raw_data.unwrap(), shifted);
    let int8_back = import(&int8.bytes).unwrap();
    assert_eq!(int8_back.tensors, back.tensors, "both weight types dequantize to the same weights");
    // A float model has nothing to export as QDQ.
    let f = crate::store::stored_f32(&model);
    assert!(matches!(encode_int8(&f, WeightType::Uint8), Err(ExportError::NotQuantized)));
    // --float: the same quantized model as fp32 (weights dequantized).
    assert_eq!(export_onnx(Path::new("q"), ModelFile::Sqz(q), true, WeightType::Uint8).unwrap().int8_layers, 0);
}

/// Grouped (group 2, BatchNorm folded in), depthwise dilated (group 6, dilation 2)
/// and plain dilated convolutions and a padded max pool on inputs around 0 (where
/// padding read as a value would change the maxima), against ONNX Runtime.
#[test]
fn grouped_depthwise_dilated_convs_and_padded_maxpool_match_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("grouped_dilated");
    assert!(diff < 1e-5, "max difference {diff}");
    let ops: Vec<&crate::spec::Op> = m.graph.nodes.iter().map(|n| &n.op).collect();
    use crate::spec::Op;
    assert!(matches!(ops[0], Op::Conv2d { in_channels: 4, out_channels: 6, groups: 2, dilation: 1, bias: true, .. }), "{:?}", ops[0]);
    assert!(matches!(ops[2], Op::Conv2d { in_channels: 6, out_channels: 6, groups: 6, dilation: 2, padding: 2, .. }), "{:?}", ops[2]);
    assert!(matches!(ops[3], Op::MaxPool2d { kernel: 3, stride: 2, padding: 1 }), "{:?}", ops[3]);
    assert!(matches!(ops[4], Op::Conv2d { groups: 1, dilation: 2, bias: false, .. }), "{:?}", ops[4]);
    assert!(m.notes.iter().any(|n| n.contains("bn1") && n.contains("grouped")), "{:?}", m.notes);
    // Stored weights keep ONNX's grouped layout [out, in / groups, k, k].
    let shape = |name: &str| m.tensors.iter().find(|(n, _, _)| n == name).map(|(_, s, _)| s.clone()).unwrap();
    assert_eq!(shape("grouped.weight"), [6, 2, 3, 3]);
    assert_eq!(shape("depthwise.weight"), [6, 1, 3, 3]);
    // The exports carry group, dilations and pads back: squeeze re-reads them and
    // compares outputs before returning (fp32 and QDQ int8).
    let model = crate::model::Model::from_tensors(m.graph.clone(), m.tensors.iter().map(|(n, s, v)| (n.clone(), (s.clone(), v.clone()))).collect()).unwrap();
    let tensors: HashMap<String, Vec<f32>> = m.tensors.iter().map(|(n, _, v)| (n.clone(), v.clone())).collect();
    let bytes = encode_f32(&m.graph, &tensors).unwrap();
    let back = import(&bytes).unwrap();
    assert_eq!(back.graph, m.graph);
    let mut rng = crate::rng::Rng::new(3);
    let calibration: Vec<f32> = (0..32 * 484).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    let q = crate::compress::quantize::quantize(&model, &crate::compress::quantize::Precision::int8_all(&model, crate::compress::quantize::Mode::Full), &calibration).unwrap();
    let check = export_onnx(Path::new("q"), ModelFile::Sqz(q), false, WeightType::Uint8).unwrap();
    assert!(check.max_diff <= check.tolerance && check.int8_layers == 4, "{} > {} ({} int8 layers)", check.max_diff, check.tolerance, check.int8_layers);
}

#[test]
fn bad_files_are_one_clear_error() {
    let err = |name: &str| import(&std::fs::read(fixture(name)).unwrap()).unwrap_err().to_string();
    let e = err("unsupported_op.onnx");
    assert!(e.contains("'LeakyRelu'") && e.contains("'leaky'") && e.contains("Gemm, GlobalAveragePool"), "{e}");
    let e = err("symbolic_input.onnx");
    assert!(e.contains("cannot be resolved") && e.contains("[N, features]"), "{e}");
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

/// The exporter gives the graph input and outputs their [`Graph::io_names`], also where
/// a wanted name is already a squeeze value's (node `c`'s output, node `a`'s output):
/// those values are renamed out of the way, the file imports back with the same names,
/// and computes every output the model does. Without names the export is unchanged.
#[test]
fn export_restores_io_names_around_colliding_value_names() {
    use crate::spec::{Graph, Op, INPUT};
    let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
    let mut graph = Graph::chain(vec![4], vec![("a", lin(4, 3)), ("b", Op::Relu), ("c", lin(3, 2))]);
    graph.outputs = vec!["b".into(), "c".into()];
    let model = crate::model::Model::init(graph.clone(), 3).unwrap();
    let plain = encode_f32(&model.graph, &model.tensors()).unwrap();
    let names = |bytes: &[u8]| {
        let g = <crate::format::onnx::proto::ModelProto as prost::Message>::decode(bytes).unwrap().graph.unwrap();
        let names = |v: &[crate::format::onnx::proto::ValueInfoProto]| v.iter().map(|v| v.name.clone().unwrap()).collect::<Vec<_>>();
        (names(&g.input), names(&g.output))
    };
    assert_eq!(names(&plain), (vec![INPUT.to_string()], vec!["b".to_string(), "c".to_string()]));

    let mut named = model.clone();
    named.graph.io_names = [(INPUT, "c"), ("b", "a"), ("c", "out")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let check = export_onnx(Path::new("named"), ModelFile::Dense(crate::store::dense_file(&named)), false, WeightType::Uint8).unwrap();
    assert_eq!(names(&check.bytes), (vec!["c".to_string()], vec!["a".to_string(), "out".to_string()]));
    let back = import(&check.bytes).unwrap();
    assert_eq!(back.graph.io_names, named.graph.io_names);
    let mut rng = crate::rng::Rng::new(4);
    let x: Vec<f32> = (0..8 * 4).map(|_| rng.next_f32() - 0.5).collect();
    let want = crate::store::model_plan(&model).unwrap().run_all(&x, 8, &mut Workspace::default()).unwrap();
    let got = plan_of(&back).run_all(&x, 8, &mut Workspace::default()).unwrap();
    assert_eq!(want.len(), 2);
    for (w, g) in want.iter().zip(&got) {
        assert!(w.iter().zip(g).all(|(a, b)| (a - b).abs() <= 1e-6), "{w:?} vs {g:?}");
    }
}

/// Weights-only and dynamic int8 models export their int8 weights as INT8 initializers
/// (zero point 0, one scale per output channel) dequantized into float Gemm/Conv: no
/// QuantizeLinear, the re-import check within 1e-5, and the file imports to exactly the
/// dequantized weights squeeze's weights-only path computes with.
#[test]
fn weights_only_and_dynamic_models_export_int8_weights_with_float_activations() {
    use crate::compress::quantize::{quantize, Mode, Precision};
    use crate::spec::Op;
    let graph = crate::spec::Graph::chain(
        vec![1, 6, 6],
        vec![
            ("conv", Op::Conv2d { in_channels: 1, out_channels: 2, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 }),
            ("relu", Op::Relu),
            ("flat", Op::Flatten),
            ("fc", Op::Linear { in_features: 72, out_features: 4, bias: true }),
        ],
    );
    let model = crate::model::Model::init(graph, 11).unwrap();
    let mut rng = crate::rng::Rng::new(12);
    let calibration: Vec<f32> = (0..16 * 36).map(|_| rng.next_f32()).collect();
    for mode in [Mode::Weights, Mode::Dynamic] {
        let q = quantize(&model, &Precision::int8_all(&model, mode), &calibration).unwrap();
        let check = export_onnx(Path::new("q"), ModelFile::Sqz(q.clone()), false, WeightType::Uint8).unwrap();
        assert_eq!((check.int8_layers, check.int8_weights), (0, 2), "{mode:?}");
        assert!(check.max_diff <= check.tolerance && check.tolerance <= 1e-5 * 10.0, "{mode:?}: {} > {}", check.max_diff, check.tolerance);
        let m = <crate::format::onnx::proto::ModelProto as prost::Message>::decode(&check.bytes[..]).unwrap();
        let g = m.graph.unwrap();
        let dtype = |n: &str| g.initializer.iter().find(|t| t.name.as_deref() == Some(n)).and_then(|t| t.data_type);
        use crate::format::onnx::proto::data_type;
        for w in ["conv.weight", "fc.weight"] {
            assert_eq!(dtype(&format!("{w}.q")), Some(data_type::INT8), "{mode:?} {w}");
            assert_eq!(dtype(&format!("{w}.zero_point")), Some(data_type::INT8), "{mode:?} {w}");
            assert_eq!(dtype(&format!("{w}.scale")), Some(data_type::FLOAT), "{mode:?} {w}");
            assert_eq!(dtype(w), None, "{mode:?}: no float copy of {w}");
        }
        assert!(!g.node.iter().any(|n| n.op_type.as_deref() == Some("QuantizeLinear")), "{mode:?}");
        let back = import(&check.bytes).unwrap();
        let stored = crate::store::sqz_plan(&q).unwrap();
        let x: Vec<f32> = calibration[..4 * 36].to_vec();
        if mode == Mode::Weights {
            let want = stored.run(&x, 4, &mut Workspace::default()).unwrap().to_vec();
            let got = plan_of(&back).run(&x, 4, &mut Workspace::default()).unwrap().to_vec();
            assert!(want.iter().zip(&got).all(|(a, b)| (a - b).abs() <= 1e-5), "{want:?} vs {got:?}");
        }
        for t in &q.tensors {
            if let crate::format::sqz::Values::I8 { .. } = t.values {
                let dequantized = t.to_dense_f32();
                let imported = &back.tensors.iter().find(|(n, _, _)| *n == t.name).unwrap().2;
                assert_eq!(&dequantized, imported, "{mode:?} {}", t.name);
            }
        }
    }
    // A float model has nothing to export as int8.
    let f = crate::store::stored_f32(&model);
    assert!(matches!(encode_int8(&f, WeightType::Uint8), Err(ExportError::NotQuantized)));
}
