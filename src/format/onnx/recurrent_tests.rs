//! ONNX LSTM/GRU: import of models written by onnx.helper and run by ONNX Runtime
//! (scripts/make-onnx-recurrent-fixtures.py stored their inputs and outputs), export of
//! squeeze's recurrent layers and the exact round trip of their parameters.

use std::path::Path;

use super::*;
use super::import::tests::{fixture, max_diff_against_onnxruntime};
use crate::model::Model;
use crate::spec::{Graph, Op};
use crate::store::{export_onnx, ModelFile};

fn kinds(g: &Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.kind()).collect()
}

#[test]
fn stacked_lstms_from_onnx_helper_match_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("lstm_stack");
    assert!(diff < 1e-5, "max difference {diff}");
    assert_eq!(kinds(&m.graph), ["LSTM", "LSTM", "Linear"]);
    assert_eq!(m.graph.input_shape, vec![6, 5]);
    assert!(matches!(m.graph.nodes[0].op, Op::Lstm { input_size: 5, hidden: 4, bias: true, sequence: true, bidirectional: false }));
    assert!(matches!(m.graph.nodes[1].op, Op::Lstm { input_size: 4, hidden: 3, bias: true, sequence: false, bidirectional: false }));
}

#[test]
fn gru_without_bias_from_onnx_helper_matches_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("gru_no_bias");
    assert!(diff < 1e-5, "max difference {diff}");
    assert_eq!(kinds(&m.graph), ["GRU", "Linear"]);
    assert!(matches!(m.graph.nodes[0].op, Op::Gru { input_size: 4, hidden: 6, bias: false, sequence: false, bidirectional: false }));
}

#[test]
fn gru_sequence_output_from_onnx_helper_matches_onnxruntime() {
    let (m, diff) = max_diff_against_onnxruntime("gru_sequence");
    assert!(diff < 1e-5, "max difference {diff}");
    assert_eq!(kinds(&m.graph), ["GRU"]);
    assert!(matches!(m.graph.nodes[0].op, Op::Gru { input_size: 3, hidden: 5, bias: true, sequence: true, bidirectional: false }));
}

#[test]
fn recurrent_variants_squeeze_cannot_run_are_one_clear_error() {
    let err = |name: &str| import(&std::fs::read(fixture(name)).unwrap()).unwrap_err().to_string();
    let e = err("gru_reset_before.onnx");
    assert!(e.contains("linear_before_reset = 0") && e.contains("node 'h' (GRU)"), "{e}");
    let e = err("lstm_bidirectional.onnx");
    assert!(e.contains("direction 'bidirectional'"), "{e}");
}

/// squeeze → ONNX → squeeze keeps every recurrent parameter exactly (the gate blocks
/// are permuted there and back) for stacked LSTM/GRU layers, with and without bias,
/// sequence and last-state outputs.
#[test]
fn recurrent_layers_round_trip_exactly() {
    let graph = Graph::chain(
        vec![5, 3],
        vec![
            ("norm", Op::Normalize { mean: vec![0.2], std: vec![0.5] }),
            ("lstm", Op::Lstm { input_size: 3, hidden: 4, bias: true, sequence: true, bidirectional: false }),
            ("gru", Op::Gru { input_size: 4, hidden: 3, bias: false, sequence: true, bidirectional: false }),
            ("last", Op::Lstm { input_size: 3, hidden: 2, bias: false, sequence: false, bidirectional: false }),
        ],
    );
    let model = Model::init(graph, 11).unwrap();
    let check = export_onnx(Path::new("rnn"), ModelFile::Dense(crate::store::dense_file(&model)), false, WeightType::Uint8).unwrap();
    assert!(check.max_diff <= check.tolerance, "{} > {}", check.max_diff, check.tolerance);
    let back = import(&check.bytes).unwrap();
    assert_eq!(kinds(&back.graph), kinds(&model.graph));
    assert_eq!(back.graph.input_shape, model.graph.input_shape);
    let original = model.tensors();
    assert_eq!(back.tensors.len(), original.len());
    for (name, _, values) in &back.tensors {
        assert_eq!(values, &original[name], "{name}");
    }
    // The whole-sequence output as the graph output.
    let seq = Graph::chain(vec![4, 2], vec![("gru", Op::Gru { input_size: 2, hidden: 3, bias: true, sequence: true, bidirectional: false })]);
    let model = Model::init(seq, 12).unwrap();
    let check = export_onnx(Path::new("seq"), ModelFile::Dense(crate::store::dense_file(&model)), false, WeightType::Uint8).unwrap();
    assert!(check.max_diff <= check.tolerance);
    assert_eq!(import(&check.bytes).unwrap().graph.outputs.len(), 1);
}

/// A quantized recurrent model as QDQ: the classifier runs integer, the LSTM is written
/// as a float LSTM holding its int8 weights dequantized (squeeze itself runs the LSTM's
/// products on integers; ONNX's LSTM op has no integer form).
#[test]
fn qdq_export_of_a_quantized_lstm_model() {
    use crate::compress::quantize::{quantize, Mode, Precision};
    let graph = Graph::chain(
        vec![6, 4],
        vec![
            ("lstm", Op::Lstm { input_size: 4, hidden: 5, bias: true, sequence: false, bidirectional: false }),
            ("fc", Op::Linear { in_features: 5, out_features: 3, bias: true }),
        ],
    );
    let model = Model::init(graph, 7).unwrap();
    let mut rng = crate::rng::Rng::new(8);
    let calibration: Vec<f32> = (0..32 * 24).map(|_| rng.next_f32()).collect();
    let q = quantize(&model, &Precision::int8_all(&model, Mode::Full), &calibration).unwrap();
    let check = export_onnx(Path::new("q"), ModelFile::Sqz(q), false, WeightType::Uint8).unwrap();
    assert!(check.max_diff <= check.tolerance, "{} > {}", check.max_diff, check.tolerance);
    assert_eq!(check.int8_layers, 1);
    assert_eq!(kinds(&import(&check.bytes).unwrap().graph), ["LSTM", "Linear"]);
    // The LSTM weights stay int8 in the file, dequantized per gate row.
    let model = <proto::ModelProto as prost::Message>::decode(&check.bytes[..]).unwrap();
    let graph = model.graph.unwrap();
    for t in ["lstm.W.q", "lstm.R.q"] {
        let tensor = graph.initializer.iter().find(|i| i.name.as_deref() == Some(t)).unwrap_or_else(|| panic!("{t} missing"));
        assert_eq!(tensor.data_type, Some(proto::data_type::INT8), "{t}");
    }
    assert!(graph.node.iter().any(|n| n.name.as_deref() == Some("lstm.W.dequantize")));
}

/// Bidirectional layers (a bidirectional LSTM returning its sequence, a bidirectional
/// GRU returning its last states) through the model: PyTorch-style `_reverse`
/// parameters, the trainer's forward equal to the runtime's, full int8 quantizes every
/// direction's weights and runs both layers on integers close to f32, the `.sqz` file
/// reads back, and the ONNX exporter refuses them by name. Old architectures (no
/// `bidirectional` key) read as unidirectional and write back without the key.
#[test]
fn bidirectional_layers_train_quantize_and_run_and_the_exporter_refuses_them() {
    use crate::compress::quantize::{quantize, Mode, Precision};
    use crate::format::sqz::Values;
    let graph = Graph::chain(
        vec![6, 4],
        vec![
            ("l1", Op::Lstm { input_size: 4, hidden: 5, bias: true, sequence: true, bidirectional: true }),
            ("l2", Op::Gru { input_size: 10, hidden: 3, bias: true, sequence: false, bidirectional: true }),
            ("fc", Op::Linear { in_features: 6, out_features: 3, bias: true }),
        ],
    );
    assert_eq!(graph.validate().unwrap()["l1"], [6, 10]);
    let model = Model::init(graph, 9).unwrap();
    let names: Vec<String> = model.graph.parameters().iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names[..8],
        ["l1.weight_ih", "l1.weight_hh", "l1.bias_ih", "l1.bias_hh", "l1.weight_ih_reverse", "l1.weight_hh_reverse", "l1.bias_ih_reverse", "l1.bias_hh_reverse"]
    );
    let n = 32;
    let mut rng = crate::rng::Rng::new(10);
    let x: Vec<f32> = (0..n * 24).map(|_| rng.next_f32()).collect();
    let float = crate::store::model_plan(&model).unwrap().run(&x, n, &mut Default::default()).unwrap().to_vec();
    let mut ws = crate::model::Workspace::new(&model, n);
    ws.forward(&model.params, &x, n);
    for (a, b) in ws.head_output(n).iter().zip(&float) {
        assert!((a - b).abs() < 1e-5, "trainer {a} vs runtime {b}");
    }
    let q = quantize(&model, &Precision::int8_all(&model, Mode::Full), &x).unwrap();
    for t in q.tensors.iter().filter(|t| t.name.contains("weight")) {
        assert!(matches!(t.values, Values::I8 { .. }), "{} is not int8", t.name);
    }
    assert!(["l1", "l2", "fc"].iter().all(|l| q.quant.integer_nodes.contains(*l)));
    let int8 = crate::store::sqz_plan(&q).unwrap().run(&x, n, &mut Default::default()).unwrap().to_vec();
    let scale = float.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = int8.iter().zip(&float).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 0.05 * scale.max(0.1), "int8 {diff} off on outputs up to {scale}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bi.sqz");
    crate::store::write_sqz(&path, q.clone(), crate::store::Coding::Entropy).unwrap();
    let back = crate::store::read(&path).unwrap().plan().unwrap().run(&x, n, &mut Default::default()).unwrap().to_vec();
    assert_eq!(back, int8);
    let e = export_onnx(Path::new("q"), ModelFile::Sqz(q), false, WeightType::Uint8).unwrap_err().to_string();
    assert!(e.contains("'l1'") && e.contains("bidirectional"), "{e}");
    // serde: absent key = unidirectional, and a unidirectional node writes no key.
    let uni = Op::Lstm { input_size: 4, hidden: 5, bias: true, sequence: false, bidirectional: false };
    let text = serde_json::to_string(&uni).unwrap();
    assert!(!text.contains("bidirectional"), "{text}");
    assert_eq!(serde_json::from_str::<Op>(&text).unwrap(), uni);
    let bi = Op::Gru { input_size: 4, hidden: 5, bias: true, sequence: false, bidirectional: true };
    assert!(serde_json::to_string(&bi).unwrap().contains("\"bidirectional\":true"));
}
