//! Models of any shape survive every file format bit for bit, and run from it.


use squeeze::compress::quantize::{self, Mode};
use squeeze::format::sqz::{self, Limits};
use squeeze::model::Model;
use squeeze::spec::{Graph, Node, Op, INPUT};
use squeeze::store::{self, ModelFile};

fn two_heads_with_residual() -> Graph {
    let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
    Graph {
        input_shape: vec![1, 6, 6],
        nodes: vec![
            Node { name: "conv".into(), inputs: vec![INPUT.into()], op: Op::Conv2d { in_channels: 1, out_channels: 2, kernel: 3, stride: 1, padding: 1, bias: true } },
            Node { name: "relu".into(), inputs: vec!["conv".into()], op: Op::Relu },
            Node { name: "flat".into(), inputs: vec!["relu".into()], op: Op::Flatten },
            Node { name: "fc".into(), inputs: vec!["flat".into()], op: lin(72, 72) },
            Node { name: "sum".into(), inputs: vec!["fc".into(), "flat".into()], op: Op::Add },
            Node { name: "classes".into(), inputs: vec!["sum".into()], op: lin(72, 10) },
            Node { name: "coarse".into(), inputs: vec!["sum".into()], op: lin(72, 4) },
        ],
        outputs: vec!["classes".into(), "coarse".into()],
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
    store::write_sqz(&f, &quantize::store_f32(&model)).unwrap();
    let back = store::read_model(&f).unwrap();
    assert_eq!(back, model, ".sqz f32: graph, weights and masks");

    let x: Vec<f32> = (0..36).map(|i| i as f32 / 36.0).collect();
    let want = store::model_plan(&model).unwrap().run_all(&x, 1, &mut Default::default()).unwrap();
    let got = store::read(&f).unwrap().plan().unwrap().run_all(&x, 1, &mut Default::default()).unwrap();
    assert_eq!(want, got, "both heads run from the decoded file");

    // int8 weights + activations: decode gives bit-identical tensors and both heads run.
    let q = quantize::quantize(&model, Mode::Full, &[], &x).unwrap();
    let bytes = sqz::encode(&q).unwrap();
    let mut decoded = sqz::decode(&bytes, &Limits::default()).unwrap();
    assert!(decoded.metadata.remove("producer").is_some_and(|p| p.starts_with("squeeze ")));
    assert!(decoded == q, "decoded .sqz differs from the encoded model");
    let heads = store::sqz_plan(&decoded).unwrap().run_all(&x, 1, &mut Default::default()).unwrap();
    assert_eq!((heads[0].len(), heads[1].len()), (10, 4));
    let ModelFile::Sqz(_) = store::read(&f).unwrap() else { panic!("sniffed as sqz") };
}
