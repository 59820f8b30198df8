//! Tests of the executor: plans against reference computations, kernel choices,
//! conversions, threads and the measuring helpers.

use super::*;
use crate::rng::Rng;
use crate::spec::{Graph, INPUT, Node, Op, PoolKind, QParams, QuantPlan};

fn lin(i: usize, o: usize) -> Op {
    Op::Linear { in_features: i, out_features: o, bias: true }
}

fn weights(graph: &Graph, rng: &mut Rng) -> HashMap<String, Vec<f32>> {
    graph.parameters().iter().map(|p| (p.name.clone(), (0..p.numel()).map(|_| rng.uniform(0.5)).collect())).collect()
}

/// y = W2·relu(W1·x + b1) + b2 by hand.
fn reference(w: &HashMap<String, Vec<f32>>, x: &[f32]) -> Vec<f32> {
    let layer = |name: &str, x: &[f32], outf: usize| -> Vec<f32> {
        let (wt, b) = (&w[&format!("{name}.weight")], &w[&format!("{name}.bias")]);
        (0..outf).map(|o| b[o] + x.iter().enumerate().map(|(i, v)| v * wt[o * x.len() + i]).sum::<f32>()).collect()
    };
    let h: Vec<f32> = layer("fc1", x, 7).into_iter().map(|v| v.max(0.0)).collect();
    layer("fc2", &h, 3)
}

fn mlp() -> Graph {
    Graph::chain(vec![5], vec![("fc1", lin(5, 7)), ("relu", Op::Relu), ("fc2", lin(7, 3))])
}

#[test]
fn f32_plan_matches_a_hand_computation() {
    let g = mlp();
    let mut rng = Rng::new(1);
    let w = weights(&g, &mut rng);
    let plan = Plan::new(&g, w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect(), &QuantPlan::default()).unwrap();
    assert_eq!(plan.kernel_description(), "f32-dense");
    let x: Vec<f32> = (0..4 * 5).map(|_| rng.next_f32()).collect();
    let mut ws = Workspace::default();
    let y = plan.run(&x, 4, &mut ws).unwrap().to_vec();
    for s in 0..4 {
        let want = reference(&w, &x[s * 5..(s + 1) * 5]);
        for (a, b) in y[s * 3..(s + 1) * 3].iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}

#[test]
fn int8_plan_fuses_relu_and_stays_close_to_float() {
    let g = mlp();
    let mut rng = Rng::new(2);
    let w = weights(&g, &mut rng);
    let mut stored = HashMap::new();
    for (k, v) in &w {
        if k.ends_with("weight") {
            let rows = if k.starts_with("fc1") { 7 } else { 3 };
            let cols = v.len() / rows;
            let mut q = Vec::new();
            let mut scales = Vec::new();
            for r in v.chunks(cols) {
                let s = r.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                scales.push(s);
                q.extend(r.iter().map(|x| (x / s).round() as i8));
            }
            stored.insert(k.clone(), Weights::I8 { q, scales });
        } else {
            stored.insert(k.clone(), Weights::F32(v.clone()));
        }
    }
    let quant = QuantPlan {
        integer_nodes: ["fc1".to_string(), "fc2".to_string()].into(),
        activations: [("input".to_string(), QParams::from_range(0.0, 1.0)), ("relu".to_string(), QParams::from_range(0.0, 2.0))].into(),
        ..Default::default()
    };
    let plan = Plan::new(&g, stored, &quant).unwrap();
    assert!(plan.kernel_description().starts_with("int8-"), "{}", plan.kernel_description());
    // Quantize, fc1+relu (fused), fc2 → f32 logits: three steps, no separate ReLU.
    assert_eq!(plan.steps.len(), 3);
    let x: Vec<f32> = (0..8 * 5).map(|_| rng.next_f32()).collect();
    let mut ws = Workspace::default();
    let y = plan.run(&x, 8, &mut ws).unwrap().to_vec();
    for s in 0..8 {
        let want = reference(&w, &x[s * 5..(s + 1) * 5]);
        for (a, b) in y[s * 3..(s + 1) * 3].iter().zip(&want) {
            assert!((a - b).abs() < 0.05, "{a} vs {b}");
        }
    }
}

/// An all-integer MLP (odd widths, one layer stored sparse so its kernel is chosen
/// per batch) runs as one fused chain, block by block, and gives exactly the bits of
/// the same steps run one after another over the whole batch, at batches around
/// the block size.
#[test]
fn fused_integer_chain_equals_step_by_step() {
    for normalize in [false, true] {
        fused_chain_case(normalize);
    }
}

fn fused_chain_case(normalize: bool) {
    let mut layers = vec![("fc1", lin(37, 29)), ("r1", Op::Relu), ("fc2", lin(29, 23)), ("r2", Op::Relu), ("fc3", lin(23, 5)), ("sm", Op::Softmax)];
    if normalize {
        // As the zoo models start: standardise, flatten.
        layers.splice(0..0, [("norm", Op::Normalize { mean: vec![0.3], std: vec![0.45] }), ("flat", Op::Flatten)]);
    }
    let g = Graph::chain(if normalize { vec![1, 37] } else { vec![37] }, layers);
    let mut rng = Rng::new(31);
    let mut stored = HashMap::new();
    for p in g.parameters() {
        let v: Vec<f32> = (0..p.numel()).map(|i| if p.name == "fc2.weight" && i % 3 != 0 { 0.0 } else { rng.uniform(0.5) }).collect();
        if p.name.ends_with("weight") {
            let rows = p.shape[0];
            let scales: Vec<f32> = v.chunks(v.len() / rows).map(|r| r.iter().fold(1e-6f32, |m, x| m.max(x.abs())) / 127.0).collect();
            let q = v.iter().enumerate().map(|(i, x)| (x / scales[i / (v.len() / rows)]).round() as i8).collect();
            stored.insert(p.name.clone(), Weights::I8 { q, scales });
        } else {
            stored.insert(p.name.clone(), Weights::F32(v));
        }
    }
    let quant = QuantPlan {
        integer_nodes: ["fc1", "fc2", "fc3"].iter().map(|s| s.to_string()).collect(),
        activations: [(if normalize { "flat" } else { "input" }, (-0.7, 2.0)), ("r1", (0.0, 3.0)), ("r2", (0.0, 2.5))]
            .iter()
            .map(|(n, (lo, hi))| (n.to_string(), QParams::from_range(*lo, *hi)))
            .collect(),
        ..Default::default()
    };
    let encodings: HashMap<String, Encoding> = [("fc2.weight".to_string(), Encoding { sparse: true, codebook: None })].into();
    let plan = Plan::with_encodings(&g, stored, &quant, &encodings).unwrap();
    assert_eq!(plan.chain.map(|c| c.steps), Some(4 + normalize as usize), "[normalize +] quantize + three integer layers");
    for batch in [1usize, 5, CHAIN_ROWS - 1, CHAIN_ROWS, CHAIN_ROWS + 1, 3 * CHAIN_ROWS + 7, 256] {
        let x: Vec<f32> = (0..batch * 37).map(|_| rng.next_f32() * 1.2 - 0.1).collect();
        let fused = plan.run(&x, batch, &mut Workspace::default()).unwrap().to_vec();
        let mut ws = Workspace::default();
        plan.execute(&x, batch, &mut ws, false, &mut |_, _| {}, 1).unwrap();
        let o = plan.outputs[0];
        assert_eq!(fused, ws.f[o][..batch * 5], "batch {batch} normalize {normalize}");
        assert!(fused.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
}

/// A pruned and weight-shared model run with its encodings (sparse/codebook kernels
/// timed and chosen per batch size) agrees with the dense plan at every batch size,
/// and the description says what was chosen for each layer.
#[test]
fn encoded_layers_agree_with_dense_at_every_batch() {
    let g = Graph::chain(vec![37], vec![("fc1", lin(37, 29)), ("relu", Op::Relu), ("fc2", lin(29, 5))]);
    let mut rng = Rng::new(6);
    let mut w = weights(&g, &mut rng);
    let centroids = vec![-0.4f32, -0.1, 0.2, 0.45];
    let indices: Vec<u16> = (0..29 * 37).map(|_| rng.below(4) as u16).collect();
    let kept: Vec<bool> = (0..29 * 37).map(|_| rng.below(10) < 7).collect();
    w.insert("fc1.weight".into(), (0..29 * 37).map(|i| if kept[i] { centroids[indices[i] as usize] } else { 0.0 }).collect());
    w.get_mut("fc2.weight").unwrap().iter_mut().enumerate().for_each(|(i, v)| if i % 10 != 0 { *v = 0.0 });
    let dense = |w: &HashMap<String, Vec<f32>>| w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect::<HashMap<_, _>>();
    let encodings: HashMap<String, Encoding> = [
        ("fc1.weight".to_string(), Encoding { sparse: true, codebook: Some(CodebookIndices { indices, centroids, kept: Some(kept) }) }),
        ("fc2.weight".to_string(), Encoding { sparse: true, codebook: None }),
    ]
    .into();
    let plain = Plan::new(&g, dense(&w), &QuantPlan::default()).unwrap();
    let encoded = Plan::with_encodings(&g, dense(&w), &QuantPlan::default(), &encodings).unwrap();
    let desc = encoded.kernel_description();
    assert_eq!(encoded.layer_choices().len(), 2, "{desc}");
    assert!(desc.contains("fc1 (") && desc.contains("fc2 (90% zeros)"), "{desc}");
    for batch in [1usize, 2, 15, 16, 17, 255, 256, 257] {
        let x: Vec<f32> = (0..batch * 37).map(|_| rng.next_f32()).collect();
        let a = plain.run(&x, batch, &mut Workspace::default()).unwrap().to_vec();
        let b = encoded.run(&x, batch, &mut Workspace::default()).unwrap().to_vec();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + p.abs()) * 37.0, "batch {batch}: {p} vs {q}");
        }
    }
}

#[test]
fn missing_qparams_and_float_weights_for_integer_nodes_are_errors() {
    let g = mlp();
    let w = weights(&g, &mut Rng::new(3));
    let f: HashMap<String, Weights> = w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect();
    let quant = QuantPlan { integer_nodes: ["fc1".to_string()].into(), ..Default::default() };
    assert!(matches!(Plan::new(&g, f.clone(), &quant), Err(RuntimeError::NotInt8 { .. })));
    let mut missing = f;
    missing.remove("fc2.bias");
    assert!(matches!(Plan::new(&g, missing, &QuantPlan::default()), Err(RuntimeError::MissingTensor { .. })));
}

/// Token ids: padding masks attention keys (a padded sample gives the output of its
/// unpadded prefix through attention + mean pooling), and an id outside the
/// vocabulary is an error naming the node, not a panic.
#[test]
fn token_ids_padding_and_bad_ids() {
    let g = Graph::chain(
        vec![4],
        vec![
            ("emb", Op::Embedding { vocab: 6, dim: 4, pad_token: Some(0) }),
            ("attn", Op::SelfAttention { dim: 4, heads: 2, causal: false, head_dim: None }),
            ("pool", Op::Pool { kind: PoolKind::Mean }),
        ],
    );
    let w = weights(&g, &mut Rng::new(9));
    let dense = |w: &HashMap<String, Vec<f32>>| w.iter().map(|(k, v)| (k.clone(), Weights::F32(v.clone()))).collect::<HashMap<_, _>>();
    let plan = Plan::new(&g, dense(&w), &QuantPlan::default()).unwrap();
    let padded = plan.run(&[3.0, 5.0, 0.0, 0.0], 1, &mut Workspace::default()).unwrap().to_vec();
    let mut g2 = g.clone();
    g2.input_shape = vec![2];
    let short = Plan::new(&g2, dense(&w), &QuantPlan::default()).unwrap();
    let want = short.run(&[3.0, 5.0], 1, &mut Workspace::default()).unwrap().to_vec();
    for (a, b) in padded.iter().zip(&want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    for bad in [6.0, -1.0, 2.5, f32::NAN] {
        let e = plan.run(&[1.0, bad, 0.0, 0.0], 1, &mut Workspace::default()).unwrap_err();
        assert!(matches!(e, RuntimeError::TokenId { ref node, vocab: 6, .. } if node == "emb"), "{e}");
    }
}

/// Values hand their buffers on once no later step reads them: a ViT run holds far
/// fewer floats than all its values, and a workspace reused across batch sizes
/// gives the same bits as a fresh one.
#[test]
fn workspace_reuses_dead_values_and_gives_the_same_bits() {
    let g = crate::model::zoo::vit(&crate::model::zoo::VitShape { patch: 7, dim: 16, heads: 4, blocks: 3, ffn: 40 });
    let m = crate::model::Model::init(g.clone(), 3).unwrap();
    let plan = Plan::new(&g, m.tensors().into_iter().map(|(k, v)| (k, Weights::F32(v))).collect(), &QuantPlan::default()).unwrap();
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..7 * 784).map(|_| rng.next_f32()).collect();
    let mut shared = Workspace::default();
    for n in [7, 2, 5, 7] {
        let fresh = plan.run(&x, n, &mut Workspace::default()).unwrap().to_vec();
        let reused = plan.run(&x, n, &mut shared).unwrap().to_vec();
        assert_eq!(fresh, reused, "batch {n}");
    }
    let all: usize = plan.slots.iter().map(|s| 7 * s.len).sum();
    let held: usize = shared.f.iter().chain(&shared.free_f).map(Vec::len).sum();
    assert!(held * 3 < all, "holds {held} floats of {all}");
    // Every output is still readable after the run.
    let outs = plan.run_all(&x, 2, &mut shared).unwrap();
    assert_eq!(outs[0].len(), 2 * 10);
}

#[test]
fn two_heads_and_residual_run() {
    let g = Graph {
        input_shape: vec![4],
        nodes: vec![
            Node { name: "a".into(), inputs: vec![INPUT.into()], op: lin(4, 4) },
            Node { name: "sum".into(), inputs: vec!["a".into(), INPUT.into()], op: Op::Add },
            Node { name: "h1".into(), inputs: vec!["sum".into()], op: lin(4, 2) },
            Node { name: "h2".into(), inputs: vec!["sum".into()], op: lin(4, 3) },
        ],
        outputs: vec!["h1".into(), "h2".into()],
        io_names: Default::default(),
    };
    let w = weights(&g, &mut Rng::new(4));
    let plan = Plan::new(&g, w.into_iter().map(|(k, v)| (k, Weights::F32(v))).collect(), &QuantPlan::default()).unwrap();
    let out = plan.run_all(&[0.1, 0.2, 0.3, 0.4], 1, &mut Workspace::default()).unwrap();
    assert_eq!((out[0].len(), out[1].len()), (2, 3));
}
