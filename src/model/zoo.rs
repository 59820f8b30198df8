//! Ready architectures. The zoo only returns graphs: nothing outside this module
//! knows these names.

use crate::spec::{Graph, Node, Op, PoolKind, INPUT};

/// The names [`build`] knows, with a one-line description each.
pub const MODELS: &[(&str, &str)] = &[
    ("mlp", "the seed: Dense(784→64, ReLU) + Dense(64→10, softmax), 50,890 parameters"),
    ("lenet300", "LeNet-300-100: 784-300-100-10 fully connected, 266,610 parameters"),
    ("lenet5", "LeNet-5: conv 6@5×5 pad 2, pool, conv 16@5×5, pool, 120, 84, 10; 61,706 parameters"),
    ("lstm", "LSTM: the image as 28 rows of 28 pixels (a 28-step sequence), LSTM(28→128), Linear 128→10; 82,186 parameters"),
    ("gru", "GRU: the image as 28 rows of 28 pixels (a 28-step sequence), GRU(28→128), Linear 128→10; 61,962 parameters"),
    ("lstm32", "a small LSTM (a distillation student): the image as 28 rows, LSTM(28→32), Linear 32→10; 8,266 parameters"),
    ("bilstm32", "a bidirectional LSTM: the image as 28 rows, LSTM(28→32) read both ways, the two final states (2×32) → Linear 64→10; 16,522 parameters"),
    ("vit", "ViT: 7×7 patches (16 + CLS token), width 64, 4 heads, 2 pre-norm blocks with FFN 128, CLS → Linear 64→10; 72,074 parameters"),
    ("cnn", "a wider CNN (teacher for distillation): conv 32@3×3, pool, conv 64@3×3, pool, 128, 10; 421,642 parameters"),
];

/// Mean and standard deviation of the Fashion-MNIST training pixels (scaled to [0, 1]):
/// every zoo model standardises its input first.
pub const FASHION_MEAN: f32 = 0.2860;
pub const FASHION_STD: f32 = 0.3530;

fn normalize() -> Op {
    Op::Normalize { mean: vec![FASHION_MEAN], std: vec![FASHION_STD] }
}

fn linear(i: usize, o: usize) -> Op {
    Op::Linear { in_features: i, out_features: o, bias: true }
}

fn mlp_of(widths: &[usize]) -> Graph {
    let mut layers = vec![("normalize".to_string(), normalize()), ("flatten".to_string(), Op::Flatten)];
    for (i, w) in widths.windows(2).enumerate() {
        layers.push((format!("fc{}", i + 1), linear(w[0], w[1])));
        if i + 2 < widths.len() {
            layers.push((format!("relu{}", i + 1), Op::Relu));
        }
    }
    layers.push(("softmax".to_string(), Op::Softmax));
    Graph::chain(vec![1, 28, 28], layers.iter().map(|(n, op)| (n.as_str(), op.clone())).collect())
}

/// The graph of a zoo model, or `None` for an unknown name.
pub fn build(name: &str) -> Option<Graph> {
    Some(match name {
        "mlp" => mlp_of(&[784, 64, 10]),
        "lenet300" => mlp_of(&[784, 300, 100, 10]),
        "lenet5" => Graph::chain(
            vec![1, 28, 28],
            vec![
                ("normalize", normalize()),
                ("conv1", Op::Conv2d { in_channels: 1, out_channels: 6, kernel: 5, stride: 1, padding: 2, bias: true, groups: 1, dilation: 1 }),
                ("relu1", Op::Relu),
                ("pool1", Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
                ("conv2", Op::Conv2d { in_channels: 6, out_channels: 16, kernel: 5, stride: 1, padding: 0, bias: true, groups: 1, dilation: 1 }),
                ("relu2", Op::Relu),
                ("pool2", Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
                ("flatten", Op::Flatten),
                ("fc1", linear(400, 120)),
                ("relu3", Op::Relu),
                ("fc2", linear(120, 84)),
                ("relu4", Op::Relu),
                ("fc3", linear(84, 10)),
                ("softmax", Op::Softmax),
            ],
        ),
        "cnn" => Graph::chain(
            vec![1, 28, 28],
            vec![
                ("normalize", normalize()),
                ("conv1", Op::Conv2d { in_channels: 1, out_channels: 32, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 }),
                ("relu1", Op::Relu),
                ("pool1", Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
                ("conv2", Op::Conv2d { in_channels: 32, out_channels: 64, kernel: 3, stride: 1, padding: 1, bias: true, groups: 1, dilation: 1 }),
                ("relu2", Op::Relu),
                ("pool2", Op::MaxPool2d { kernel: 2, stride: 2, padding: 0 }),
                ("flatten", Op::Flatten),
                ("fc1", linear(3136, 128)),
                ("relu3", Op::Relu),
                ("fc2", linear(128, 10)),
                ("softmax", Op::Softmax),
            ],
        ),
        "vit" => vit(&VitShape { patch: 7, dim: 64, heads: 4, blocks: 2, ffn: 128 }),
        "lstm" => recurrent(Op::Lstm { input_size: 28, hidden: 128, bias: true, sequence: false, bidirectional: false }),
        "gru" => recurrent(Op::Gru { input_size: 28, hidden: 128, bias: true, sequence: false, bidirectional: false }),
        "lstm32" => recurrent(Op::Lstm { input_size: 28, hidden: 32, bias: true, sequence: false, bidirectional: false }),
        "bilstm32" => recurrent(Op::Lstm { input_size: 28, hidden: 32, bias: true, sequence: false, bidirectional: true }),
        _ => return None,
    })
}

/// One recurrent layer over the image read row by row, the last hidden state into a
/// linear classifier. The input shape `[28, 28]` (steps, features) holds the same 784
/// values as `[1, 28, 28]`, so no reshape is needed.
fn recurrent(layer: Op) -> Graph {
    let name = if matches!(layer, Op::Lstm { .. }) { "lstm" } else { "gru" };
    let hidden = layer.recurrent().map_or(0, |r| r.output_width());
    Graph::chain(vec![28, 28], vec![("normalize", normalize()), (name, layer), ("fc", linear(hidden, 10)), ("softmax", Op::Softmax)])
}

/// The shape of a small Vision Transformer on 28×28 images.
#[derive(Clone, Copy, Debug)]
pub struct VitShape {
    pub patch: usize,
    pub dim: usize,
    pub heads: usize,
    pub blocks: usize,
    pub ffn: usize,
}

/// A pre-norm Vision Transformer (Dosovitskiy et al. 2021): patch embedding, CLS token,
/// learned positions, `blocks` × [LayerNorm → self-attention → +x, LayerNorm → Linear →
/// GELU → Linear → +x], a final LayerNorm, the CLS row into a linear classifier.
/// Block `i`'s nodes are `b{i}_ln1`, `b{i}_attn`, `b{i}_res1`, `b{i}_ln2`, `b{i}_fc1`,
/// `b{i}_gelu`, `b{i}_fc2`, `b{i}_res2`.
pub fn vit(s: &VitShape) -> Graph {
    let tokens = (28 / s.patch) * (28 / s.patch) + 1;
    let mut nodes = Vec::new();
    let mut push = |name: String, inputs: Vec<String>, op: Op| {
        nodes.push(Node { name: name.clone(), inputs, op });
        name
    };
    let x = push("normalize".into(), vec![INPUT.into()], normalize());
    let x = push("patch".into(), vec![x], Op::PatchEmbed { channels: 1, patch: s.patch, dim: s.dim });
    let x = push("cls".into(), vec![x], Op::ClsToken { dim: s.dim });
    let mut x = push("pos".into(), vec![x], Op::PositionEmbedding { max_len: tokens, dim: s.dim });
    let ln = || Op::LayerNorm { dim: s.dim, eps: 1e-6 };
    for b in 1..=s.blocks {
        let ln1 = push(format!("b{b}_ln1"), vec![x.clone()], ln());
        let attn = push(format!("b{b}_attn"), vec![ln1], Op::SelfAttention { dim: s.dim, heads: s.heads, causal: false, head_dim: None });
        let res1 = push(format!("b{b}_res1"), vec![attn, x], Op::Add);
        let ln2 = push(format!("b{b}_ln2"), vec![res1.clone()], ln());
        let fc1 = push(format!("b{b}_fc1"), vec![ln2], linear(s.dim, s.ffn));
        let gelu = push(format!("b{b}_gelu"), vec![fc1], Op::Gelu);
        let fc2 = push(format!("b{b}_fc2"), vec![gelu], linear(s.ffn, s.dim));
        x = push(format!("b{b}_res2"), vec![fc2, res1], Op::Add);
    }
    let x = push("ln".into(), vec![x], ln());
    let x = push("pool".into(), vec![x], Op::Pool { kind: PoolKind::Cls });
    let x = push("head".into(), vec![x], linear(s.dim, 10));
    let out = push("softmax".into(), vec![x], Op::Softmax);
    Graph { input_shape: vec![1, 28, 28], nodes, outputs: vec![out], io_names: Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoo_models_validate_with_documented_sizes() {
        for (name, want) in [("mlp", 50_890), ("lenet300", 266_610), ("lenet5", 61_706), ("cnn", 421_642), ("lstm", 82_186), ("gru", 61_962), ("vit", 72_074), ("lstm32", 8_266)] {
            let g = build(name).unwrap();
            let shapes = g.validate().unwrap();
            assert_eq!(g.num_params(), want, "{name}");
            assert_eq!(shapes["softmax"], vec![10]);
        }
        assert!(build("resnet").is_none());
    }
}
