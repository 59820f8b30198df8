//! Models of any shape survive every file format bit for bit, and run from it.


use squeeze::compress::quantize::{self, Mode, Precision};
use squeeze::format::sqz::{self, Limits};
use squeeze::model::Model;
use squeeze::spec::{Graph, Node, Op, INPUT};
use squeeze::store::{self, ModelFile};

fn two_heads_with_residual() -> Graph {
    let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
    Graph {
        input_shape: vec![1, 6, 6],
        nodes: vec![
            Node { name: "conv".into(), inputs: vec![INPUT.into()], op: Op::Conv2d { in_channels: 1, out_channels: 2, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 } },
            Node { name: "relu".into(), inputs: vec!["conv".into()], op: Op::Relu },
            Node { name: "flat".into(), inputs: vec!["relu".into()], op: Op::Flatten },
            Node { name: "fc".into(), inputs: vec!["flat".into()], op: lin(72, 72) },
            Node { name: "sum".into(), inputs: vec!["fc".into(), "flat".into()], op: Op::Add },
            Node { name: "classes".into(), inputs: vec!["sum".into()], op: lin(72, 10) },
            Node { name: "coarse".into(), inputs: vec!["sum".into()], op: lin(72, 4) },
        ],
        outputs: vec!["classes".into(), "coarse".into()],
        io_names: Default::default(),
    }
}

#[test]
fn two_head_residual_model_round_trips_safetensors_and_sqz() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::init(two_heads_with_residual(), 3).unwrap();
    let mask: Vec<bool> = (0..72 * 72).map(|i| i % 3 != 0).collect();
    model.set_mask("fc.weight", mask).unwrap();

    let st = dir.path().join("m.safetensors");
    store::write_safetensors(&st, &model).unwrap();
    let back = store::read_model(&st).unwrap();
    assert_eq!(back, model, "safetensors: graph, weights and masks");

    let f = dir.path().join("m.sqz");
    store::write_sqz(&f, store::stored_f32(&model), store::Coding::Entropy).unwrap();
    let back = store::read_model(&f).unwrap();
    assert_eq!(back, model, ".sqz f32: graph, weights and masks");

    let x: Vec<f32> = (0..36).map(|i| i as f32 / 36.0).collect();
    let want = store::model_plan(&model).unwrap().run_all(&x, 1, &mut Default::default()).unwrap();
    let got = store::read(&f).unwrap().plan().unwrap().run_all(&x, 1, &mut Default::default()).unwrap();
    assert_eq!(want, got, "both heads run from the decoded file");

    // int8 weights + activations: decode gives bit-identical tensors and both heads run.
    let q = quantize::quantize(&model, &Precision::int8_all(&model, Mode::Full), &x).unwrap();
    let bytes = sqz::encode(&q).unwrap();
    let mut decoded = sqz::decode(&bytes, &Limits::default()).unwrap();
    assert!(decoded.metadata.remove("producer").is_some_and(|p| p.starts_with("squeeze ")));
    assert!(decoded == q, "decoded .sqz differs from the encoded model");
    let heads = store::sqz_plan(&decoded).unwrap().run_all(&x, 1, &mut Default::default()).unwrap();
    assert_eq!((heads[0].len(), heads[1].len()), (10, 4));
    let ModelFile::Sqz(_) = store::read(&f).unwrap() else { panic!("sniffed as sqz") };
}

/// Two stacked recurrent layers (an LSTM returning its sequence into a GRU) and a head.
fn recurrent_stack() -> Graph {
    Graph::chain(
        vec![5, 3],
        vec![
            ("lstm", Op::Lstm { input_size: 3, hidden: 6, bias: true, sequence: true, bidirectional: false }),
            ("gru", Op::Gru { input_size: 6, hidden: 4, bias: true, sequence: false, bidirectional: false }),
            ("fc", Op::Linear { in_features: 4, out_features: 3, bias: true }),
            ("softmax", Op::Softmax),
        ],
    )
}

#[test]
fn recurrent_model_round_trips_every_format_and_runs_partly_int8() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::init(recurrent_stack(), 5).unwrap();
    let names: Vec<&str> = model.params.specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(&names[..4], ["lstm.weight_ih", "lstm.weight_hh", "lstm.bias_ih", "lstm.bias_hh"]);
    assert_eq!(model.params.specs[1].shape, vec![24, 6], "PyTorch layout [4H, H]");
    assert_eq!(model.params.specs[4].shape, vec![12, 6], "GRU weight_ih [3H, I]");
    model.set_mask("lstm.weight_hh", (0..24 * 6).map(|i| i % 4 != 0).collect()).unwrap();

    let st = dir.path().join("m.safetensors");
    store::write_safetensors(&st, &model).unwrap();
    assert_eq!(store::read_model(&st).unwrap(), model, "safetensors: graph, weights and masks");
    let f = dir.path().join("m.sqz");
    store::write_sqz(&f, store::stored_f32(&model), store::Coding::Entropy).unwrap();
    assert_eq!(store::read_model(&f).unwrap(), model, ".sqz f32: graph, weights and masks");

    let x: Vec<f32> = (0..4 * 15).map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.4).collect();
    let want = store::model_plan(&model).unwrap().run(&x, 4, &mut Default::default()).unwrap().to_vec();
    let got = store::read(&f).unwrap().plan().unwrap().run(&x, 4, &mut Default::default()).unwrap().to_vec();
    assert_eq!(want, got, "runs from the decoded file");

    // Full quantization: the head and both recurrent layers run their products on
    // integer kernels (int8 weights, u8 inputs and hidden states), the gates in f32.
    let q = quantize::quantize(&model, &Precision::int8_all(&model, Mode::Full), &x).unwrap();
    assert_eq!(q.quant.integer_nodes.iter().collect::<Vec<_>>(), ["fc", "gru", "lstm"]);
    assert!(q.tensors.iter().filter(|t| t.name.contains("weight")).all(|t| matches!(t.values, sqz::Values::I8 { .. })));
    let qf = dir.path().join("q.sqz");
    store::write_sqz(&qf, q.clone(), store::Coding::Entropy).unwrap();
    let plan = store::read(&qf).unwrap().plan().unwrap();
    assert!(plan.kernel_description().starts_with("int8-"), "{}", plan.kernel_description());
    let y = plan.run(&x, 4, &mut Default::default()).unwrap().to_vec();
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() < 0.05, "int8 {a} vs f32 {b}");
    }
    // Weights mode keeps f32 arithmetic from the int8 weights.
    let w = quantize::quantize(&model, &Precision::int8_all(&model, Mode::Weights), &x).unwrap();
    let plan = store::sqz_plan(&w).unwrap();
    assert!(plan.kernel_description().contains("dequantized at load"), "{}", plan.kernel_description());
    // An integer plan that names a recurrent node stored in f32 is refused with a clear error.
    let mut bad = store::stored_f32(&model);
    bad.quant = q.quant.clone();
    let e = store::sqz_plan(&bad).err().expect("refused").to_string();
    assert!(e.contains("'fc'") || e.contains("'gru'") || e.contains("'lstm'"), "{e}");
    assert!(e.contains("not stored as int8"), "{e}");
}

/// A small ViT (and a padded text encoder) survive safetensors and `.sqz` (f32, int8,
/// entropy coded) and run from the re-read file with the same outputs.
#[test]
fn transformer_models_round_trip_safetensors_and_sqz() {
    let dir = tempfile::tempdir().unwrap();
    let g = squeeze::model::zoo::vit(&squeeze::model::zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 2, ffn: 24 });
    let model = Model::init(g, 3).unwrap();
    let x: Vec<f32> = (0..3 * 784).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    let want = store::model_plan(&model).unwrap().run(&x, 3, &mut Default::default()).unwrap().to_vec();
    let st = dir.path().join("vit.safetensors");
    store::write_safetensors(&st, &model).unwrap();
    let back = store::read_model(&st).unwrap();
    assert_eq!(back.graph, model.graph);
    assert_eq!(back.params.data, model.params.data);
    let q = quantize::quantize(&model, &Precision::int8_all(&model, Mode::Full), &x).unwrap();
    for (name, file) in [("f32.sqz", store::stored_f32(&model)), ("int8.sqz", q.clone())] {
        for coded in [false, true] {
            let p = dir.path().join(format!("{coded}{name}"));
            store::write_sqz(&p, file.clone(), if coded { store::Coding::Entropy } else { store::Coding::FixedWidth }).unwrap();
            let ModelFile::Sqz(read) = store::read(&p).unwrap() else { panic!("not sqz") };
            assert_eq!(read.graph, file.graph);
            assert_eq!(read.quant, file.quant);
            let got = store::sqz_plan(&read).unwrap().run(&x, 3, &mut Default::default()).unwrap().to_vec();
            let expect = store::sqz_plan(&file).unwrap().run(&x, 3, &mut Default::default()).unwrap().to_vec();
            assert_eq!(got, expect, "{name} coded={coded}");
            let tol = if name.starts_with("int8") { 0.05 } else { 1e-6 };
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= tol), "{name}");
        }
    }
}

/// A model file whose Transformer graph does not fit (a head count that does not divide
/// the width, a patch that does not divide the image): one clear error, exit 2.
#[test]
fn transformer_shape_errors_are_clean_cli_errors() {
    let dir = tempfile::tempdir().unwrap();
    let g = squeeze::model::zoo::vit(&squeeze::model::zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 1, ffn: 24 });
    let model = Model::init(g, 3).unwrap();
    let good = dir.path().join("vit.safetensors");
    store::write_safetensors(&good, &model).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let patch = |from: &str, to: &str, name: &str| {
        assert_eq!(from.len(), to.len());
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..header_end].to_vec()).unwrap();
        let _ = text;
        let fixed = header.replace(from, to);
        assert_ne!(fixed, header, "{from} not in the header");
        let mut out = bytes[..8].to_vec();
        out.extend_from_slice(fixed.as_bytes());
        out.extend_from_slice(&bytes[header_end..]);
        let p = dir.path().join(name);
        std::fs::write(&p, out).unwrap();
        p
    };
    for (from, to, needle) in [(r#"\"heads\":4"#, r#"\"heads\":3"#, "3 heads do not divide dim 16"), (r#"\"patch\":7"#, r#"\"patch\":5"#, "multiples of the patch size 5")] {
        let p = patch(from, to, "bad.safetensors");
        crate::util::assert_error(&crate::util::squeeze(&["inspect", p.to_str().unwrap()]), needle);
    }
}
