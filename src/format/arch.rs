//! Architecture descriptions: a short TOML layer list that maps a PyTorch state dict
//! onto a squeeze [`Graph`].
//!
//! ```toml
//! input = [1, 28, 28]            # per-sample shape the model reads
//! [preprocess]                   # inputs arrive in [0, 1] (u8 pixels / 255, as torchvision's ToTensor)
//! mean = [0.2860]                # then (x - mean) / std, one value or one per channel
//! std = [0.3530]
//! [[layer]]
//! op = "flatten"
//! [[layer]]
//! op = "linear"
//! weight = "fc1.weight"          # state-dict keys; `out = 64` optionally checks the width
//! bias = "fc1.bias"
//! [[layer]]
//! op = "relu"
//! [[layer]]
//! op = "linear"
//! weight = "fc2.weight"
//! bias = "fc2.bias"
//! [[layer]]
//! op = "softmax"                 # optional: marks a classifier head
//! ```
//!
//! Layer ops: `linear`, `conv2d` (`stride`, `padding`, `groups`, `dilation`; the kernel
//! comes from the weight), `maxpool2d` (`kernel`, `stride` defaulting to the kernel,
//! `padding`), `flatten`, `relu`,
//! `softmax`. Widths and kernel sizes are read from the weights and every shape is
//! inferred from `input`; what does not fit is reported key by key, all problems at
//! once. Every state-dict key must be used by a layer or listed in `ignore`.
//!
//! A weighted layer's node is named after its keys (`fc1.weight` → node `fc1`), so the
//! model's parameter names are the state dict's keys and an export writes them back.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;

use super::pytorch::StateDict;
use crate::spec::{Graph, Op, output_shape};

/// A parsed architecture description.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Per-sample input shape, e.g. `[1, 28, 28]` or `[784]`.
    pub input: Vec<usize>,
    pub preprocess: Option<Preprocess>,
    /// State-dict keys that no layer uses on purpose (e.g. `num_batches_tracked`).
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(rename = "layer", default)]
    pub layers: Vec<Layer>,
}

/// Input preprocessing as part of the model: inputs arrive in `[0, 1]` (u8 pixels /
/// 255, as torchvision's `ToTensor`); the model sees `(x · scale − mean) / std`.
/// `scale` (default 1) is for models trained on another range, e.g. 255 for raw pixel
/// values; `mean`/`std` (default 0 and 1) hold one value or one per channel, on the
/// scaled values.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    #[serde(default)]
    pub scale: Option<f32>,
    #[serde(default)]
    pub mean: Vec<f32>,
    #[serde(default)]
    pub std: Vec<f32>,
}

impl Preprocess {
    /// The Normalize op doing this: `(x·s − m)/d = (x − m/s) / (d/s)`.
    pub fn to_op(&self) -> Result<Op, String> {
        let scale = self.scale.unwrap_or(1.0);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("preprocess scale must be a positive number, got {scale}"));
        }
        let mean = if self.mean.is_empty() { vec![0.0] } else { self.mean.clone() };
        let std = if self.std.is_empty() { vec![1.0] } else { self.std.clone() };
        if mean.len() != std.len() && mean.len() != 1 && std.len() != 1 {
            return Err(format!("preprocess mean has {} values and std {}: give one value or one per channel", mean.len(), std.len()));
        }
        let n = mean.len().max(std.len());
        let at = |v: &Vec<f32>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
        Ok(Op::Normalize {
            mean: (0..n).map(|i| at(&mean, i) / scale).collect(),
            std: (0..n).map(|i| at(&std, i) / scale).collect(),
        })
    }
}

/// One layer of the description.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    Linear {
        weight: String,
        bias: Option<String>,
        /// Expected output width (checked against the weight when given).
        out: Option<usize>,
    },
    Conv2d {
        weight: String,
        bias: Option<String>,
        /// Expected output channels (checked when given).
        out: Option<usize>,
        /// Expected kernel size (checked when given).
        kernel: Option<usize>,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        /// PyTorch's `groups` (depthwise when it equals the input channels): the
        /// weight is `[out, in / groups, k, k]`.
        #[serde(default = "one")]
        groups: usize,
        #[serde(default = "one")]
        dilation: usize,
    },
    #[serde(rename = "maxpool2d")]
    MaxPool2d {
        kernel: usize,
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
    },
    Flatten,
    Relu,
    Softmax,
}

fn one() -> usize {
    1
}

impl Layer {
    fn op_name(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "linear",
            Layer::Conv2d { .. } => "conv2d",
            Layer::MaxPool2d { .. } => "maxpool2d",
            Layer::Flatten => "flatten",
            Layer::Relu => "relu",
            Layer::Softmax => "softmax",
        }
    }
}

/// Why a description or its state dict cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArchError {
    #[error("{0}")]
    Parse(String),
    #[error("the state dict does not match the architecture ({} problem{}): {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("; "))]
    Mismatch(Vec<String>),
}

impl Architecture {
    /// Parses description text (`origin` names it in messages).
    pub fn parse(text: &str, origin: &str) -> Result<Architecture, ArchError> {
        let arch: Architecture = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1)).unwrap_or_default();
            ArchError::Parse(format!("architecture '{origin}': {}{line}", e.message()))
        })?;
        if arch.layers.is_empty() {
            return Err(ArchError::Parse(format!("architecture '{origin}': no [[layer]] entries")));
        }
        if arch.input.is_empty() || arch.input.contains(&0) {
            return Err(ArchError::Parse(format!("architecture '{origin}': input must be a non-empty shape of positive sizes, got {:?}", arch.input)));
        }
        Ok(arch)
    }

    /// Maps `state` onto this description: the graph and its tensors by parameter name,
    /// or every mismatch at once.
    #[allow(clippy::type_complexity)]
    pub fn build(&self, state: &StateDict) -> Result<(Graph, HashMap<String, (Vec<usize>, Vec<f32>)>), ArchError> {
        let mut problems: Vec<String> = Vec::new();
        let mut used: BTreeSet<&str> = BTreeSet::new();
        let mut tensors = HashMap::new();
        let mut layers: Vec<(String, Op)> = Vec::new();
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut shape: Option<Vec<usize>> = Some(self.input.clone());

        if let Some(p) = &self.preprocess {
            match p.to_op() {
                Ok(op) => layers.push(("normalize".into(), op)),
                Err(e) => problems.push(e),
            }
            names.insert("normalize".into());
        }
        let dims = |s: &[Option<usize>]| format!("[{}]", s.iter().map(|d| d.map_or("_".into(), |d| d.to_string())).collect::<Vec<_>>().join(", "));

        for (i, layer) in self.layers.iter().enumerate() {
            let at = format!("layer {} ({})", i + 1, layer.op_name());
            // Weighted layers: node named after the keys, shapes from the weight.
            let op = match layer {
                Layer::Linear { weight, bias, out } | Layer::Conv2d { weight, bias, out, .. } => {
                    let node = match weight.strip_suffix(".weight") {
                        Some(n) if !n.is_empty() => n.to_string(),
                        _ => {
                            problems.push(format!("{at}: weight key '{weight}' must end in '.weight' (as PyTorch modules name it)"));
                            format!("layer{}", i + 1)
                        }
                    };
                    if let Some(b) = bias
                        && *b != format!("{node}.bias")
                    {
                        problems.push(format!("{at}: bias key '{b}' must be '{node}.bias', next to its weight"));
                    }
                    let found_w = state.get(weight.as_str());
                    used.insert(weight.as_str());
                    if found_w.is_none() {
                        problems.push(format!("missing key {weight}"));
                    }
                    let conv = matches!(layer, Layer::Conv2d { .. });
                    let (in_dim, spatial) = match (&shape, conv) {
                        (Some(s), false) if s.len() == 1 => (Some(s[0]), None),
                        (Some(s), true) if s.len() == 3 => (Some(s[0]), Some((s[1], s[2]))),
                        (Some(s), false) => {
                            problems.push(format!("{at} {weight}: input has shape {s:?}, linear needs a 1-D input (add a flatten layer before it)"));
                            (None, None)
                        }
                        (Some(s), true) => {
                            problems.push(format!("{at} {weight}: input has shape {s:?}, conv2d needs [channels, height, width]"));
                            (None, None)
                        }
                        (None, _) => (None, None),
                    };
                    let mut ok = true;
                    let (out_n, kernel_n) = if let Layer::Conv2d { kernel, groups, .. } = layer {
                        let w = found_w.map(|t| t.shape.clone());
                        let fo = w.as_ref().filter(|w| w.len() == 4).map(|w| w[0]);
                        let fk = w.as_ref().filter(|w| w.len() == 4 && w[2] == w[3]).map(|w| w[2]);
                        let o = out.or(fo);
                        let k = kernel.or(fk);
                        let groups = (*groups).max(1);
                        if let Some(c) = in_dim.filter(|c| c % groups != 0) {
                            problems.push(format!("{at} {weight}: groups = {groups} does not divide the {c} input channels"));
                            ok = false;
                        }
                        let in_dim = in_dim.map(|c| c / groups);
                        if let Some(w) = &w {
                            let expect = [o, in_dim, k, k];
                            let fits = w.len() == 4 && expect.iter().zip(w).all(|(e, f)| e.is_none_or(|e| e == *f));
                            if !fits {
                                let why = if w.len() == 4 && w[2] != w[3] { " (only square kernels are supported)" } else { "" };
                                let per = if groups > 1 { format!(" per group (groups = {groups})") } else { String::new() };
                                problems.push(format!(
                                    "{weight}: expected {} for conv2d with {} input channels{per}, found {w:?}{why}",
                                    dims(&expect),
                                    in_dim.map_or("?".into(), |c| c.to_string())
                                ));
                                ok = false;
                            }
                        }
                        (o, k)
                    } else {
                        let w = found_w.map(|t| t.shape.clone());
                        let o = out.or(w.as_ref().filter(|w| w.len() == 2).map(|w| w[0]));
                        if let Some(w) = &w {
                            let expect = [o, in_dim];
                            let fits = w.len() == 2 && expect.iter().zip(w).all(|(e, f)| e.is_none_or(|e| e == *f));
                            if !fits {
                                let sig = |d: Option<usize>| d.map_or("?".into(), |d| d.to_string());
                                problems.push(format!("{weight}: expected {} for linear {}->{}, found {w:?}", dims(&expect), sig(in_dim), sig(o)));
                                ok = false;
                            }
                        }
                        (o, None)
                    };
                    if let Some(b) = bias {
                        used.insert(b.as_str());
                        match state.get(b.as_str()) {
                            None => problems.push(format!("missing key {b}")),
                            Some(t) if out_n.is_some_and(|o| t.shape != [o]) => {
                                problems.push(format!("{b}: expected [{}], found {:?}", out_n.unwrap_or(0), t.shape));
                                ok = false;
                            }
                            Some(_) => {}
                        }
                    }
                    let op = match (in_dim, out_n, layer) {
                        (Some(i), Some(o), Layer::Linear { .. }) => Some(Op::Linear { in_features: i, out_features: o, bias: bias.is_some() }),
                        (Some(i), Some(o), Layer::Conv2d { stride, padding, groups, dilation, .. }) => kernel_n.map(|k| Op::Conv2d {
                            in_channels: i,
                            out_channels: o,
                            kernel: k,
                            stride: *stride,
                            padding: *padding,
                            bias: bias.is_some(),
                            groups: *groups,
                            dilation: *dilation,
                        }),
                        _ => None,
                    };
                    let _ = spatial;
                    if ok && let Some(t) = found_w {
                        tensors.insert(format!("{node}.weight"), (t.shape.clone(), t.values.clone()));
                        if let Some(b) = bias.as_ref().and_then(|b| state.get(b.as_str())) {
                            tensors.insert(format!("{node}.bias"), (b.shape.clone(), b.values.clone()));
                        }
                    }
                    if !names.insert(node.clone()) {
                        problems.push(format!("{at}: '{weight}' is used by two layers"));
                    }
                    op.map(|op| (node, op))
                }
                other => {
                    let op = match other {
                        Layer::MaxPool2d { kernel, stride, padding } => {
                            Op::MaxPool2d { kernel: *kernel, stride: stride.unwrap_or(*kernel), padding: *padding }
                        }
                        Layer::Flatten => Op::Flatten,
                        Layer::Relu => Op::Relu,
                        _ => Op::Softmax,
                    };
                    let mut node = format!("{}{}", other.op_name(), i + 1);
                    while names.contains(&node) || state.keys().any(|k| k.strip_suffix(".weight") == Some(node.as_str())) {
                        node.push('_');
                    }
                    names.insert(node.clone());
                    Some((node, op))
                }
            };
            // Shape inference continues past a problem when the layer's op is known.
            shape = match (op, &shape) {
                (Some((node, op)), Some(s)) => match output_shape(&node, &op, std::slice::from_ref(s)) {
                    Ok(next) => {
                        layers.push((node, op));
                        Some(next)
                    }
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        None
                    }
                },
                _ => None,
            };
        }
        if let (Some(Layer::Softmax), Some(s)) = (self.layers.last(), &shape)
            && s.len() != 1
        {
            problems.push(format!("softmax: the output has shape {s:?}, expected 1-D"));
        }
        let ignored: BTreeSet<&str> = self.ignore.iter().map(String::as_str).collect();
        for key in state.keys() {
            if !used.contains(key.as_str()) && !ignored.contains(key.as_str()) {
                problems.push(format!("unused key {key} (no layer names it; list it in `ignore` if that is intended)"));
            }
        }
        for key in &self.ignore {
            if !state.contains_key(key) {
                problems.push(format!("ignore names {key}, which the state dict does not hold"));
            }
        }
        if !problems.is_empty() {
            return Err(ArchError::Mismatch(problems));
        }
        let graph = Graph::chain(self.input.clone(), layers.iter().map(|(n, op)| (n.as_str(), op.clone())).collect());
        graph.validate().map_err(|e| ArchError::Mismatch(vec![e.to_string()]))?;
        Ok((graph, tensors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pytorch::Tensor;

    fn t(shape: &[usize]) -> Tensor {
        Tensor { shape: shape.to_vec(), values: (0..shape.iter().product::<usize>()).map(|i| i as f32).collect(), dtype: "float32" }
    }

    const MLP: &str = r#"
input = [1, 4, 4]
[preprocess]
mean = [0.5]
std = [0.25]
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
weight = "net.0.weight"
bias = "net.0.bias"
out = 8
[[layer]]
op = "relu"
[[layer]]
op = "linear"
weight = "net.2.weight"
bias = "net.2.bias"
[[layer]]
op = "softmax"
"#;

    fn mlp_state() -> StateDict {
        [("net.0.weight", t(&[8, 16])), ("net.0.bias", t(&[8])), ("net.2.weight", t(&[3, 8])), ("net.2.bias", t(&[3]))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn builds_graph_named_by_keys() {
        let arch = Architecture::parse(MLP, "mlp.toml").unwrap();
        let (g, tensors) = arch.build(&mlp_state()).unwrap();
        let shapes = g.validate().unwrap();
        assert_eq!(shapes["net.2"], vec![3]);
        assert_eq!(g.nodes[0].op, Op::Normalize { mean: vec![0.5], std: vec![0.25] });
        let names: Vec<_> = g.parameters().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]);
        assert_eq!(tensors["net.2.bias"].1, vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn reports_every_mismatch_at_once() {
        let arch = Architecture::parse(MLP, "mlp.toml").unwrap();
        let mut s = mlp_state();
        s.insert("net.0.weight".into(), t(&[8, 15]));
        s.remove("net.2.bias");
        s.insert("extra.running_mean".into(), t(&[3]));
        let Err(ArchError::Mismatch(p)) = arch.build(&s) else { panic!() };
        assert_eq!(
            p,
            vec![
                "net.0.weight: expected [8, 16] for linear 16->8, found [8, 15]".to_string(),
                "missing key net.2.bias".to_string(),
                "unused key extra.running_mean (no layer names it; list it in `ignore` if that is intended)".to_string(),
            ]
        );
        let mut s = mlp_state();
        s.insert("net.2.weight".into(), t(&[3, 9]));
        s.insert("net.0.bias".into(), t(&[7]));
        let msg = arch.build(&s).unwrap_err().to_string();
        assert!(msg.contains("net.0.bias: expected [8], found [7]"), "{msg}");
        assert!(msg.contains("net.2.weight: expected [3, 8] for linear 8->3, found [3, 9]"), "{msg}");
        assert!(msg.starts_with("the state dict does not match the architecture (2 problems)"), "{msg}");
    }

    #[test]
    fn conv_layers_and_layout_errors() {
        let text = r#"
input = [1, 8, 8]
ignore = ["bn.num_batches_tracked"]
[[layer]]
op = "conv2d"
weight = "c.weight"
bias = "c.bias"
padding = 1
[[layer]]
op = "maxpool2d"
kernel = 2
[[layer]]
op = "linear"
weight = "fc.weight"
"#;
        let arch = Architecture::parse(text, "c.toml").unwrap();
        let mut s: StateDict = [("c.weight", t(&[4, 1, 3, 3])), ("c.bias", t(&[4])), ("fc.weight", t(&[2, 64])), ("bn.num_batches_tracked", t(&[]))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let msg = arch.build(&s).unwrap_err().to_string();
        assert!(msg.contains("linear needs a 1-D input (add a flatten layer before it)"), "{msg}");
        let fixed = text.replace("op = \"linear\"", "op = \"flatten\"\n[[layer]]\nop = \"linear\"");
        let arch = Architecture::parse(&fixed, "c.toml").unwrap();
        let (g, _) = arch.build(&s).unwrap();
        assert_eq!(g.validate().unwrap()["fc"], vec![2]);
        s.insert("c.weight".into(), t(&[4, 2, 3, 2]));
        let msg = arch.build(&s).unwrap_err().to_string();
        assert!(msg.contains("c.weight: expected [4, 1, _, _] for conv2d with 1 input channels, found [4, 2, 3, 2] (only square kernels"), "{msg}");
    }

/// PyTorch's `groups`/`dilation` and a padded max pool: the weight is checked per
    /// group, the graph carries them, and a preprocess `scale` folds into the Normalize.
    #[test]
    fn grouped_dilated_conv_padded_pool_and_scale() {
        let text = r#"
input = [4, 9, 9]
[preprocess]
scale = 255.0
mean = [127.5]
std = [51.0]
[[layer]]
op = "conv2d"
weight = "dw.weight"
groups = 4
dilation = 2
padding = 2
[[layer]]
op = "maxpool2d"
kernel = 3
stride = 2
padding = 1
[[layer]]
op = "flatten"
[[layer]]
op = "linear"
weight = "fc.weight"
"#;
        let arch = Architecture::parse(text, "g.toml").unwrap();
        let mut s: StateDict = [("dw.weight", t(&[8, 1, 3, 3])), ("fc.weight", t(&[2, 8 * 5 * 5]))].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let (g, _) = arch.build(&s).unwrap();
        assert_eq!(g.nodes[0].op, Op::Normalize { mean: vec![0.5], std: vec![0.2] });
        assert_eq!(g.nodes[1].op, Op::Conv2d { in_channels: 4, out_channels: 8, kernel: 3, stride: 1, padding: 2, bias: false, groups: 4, dilation: 2 });
        assert_eq!(g.nodes[2].op, Op::MaxPool2d { kernel: 3, stride: 2, padding: 1 });
        assert_eq!(g.validate().unwrap()["fc"], vec![2]);
        s.insert("dw.weight".into(), t(&[8, 4, 3, 3]));
        let msg = arch.build(&s).unwrap_err().to_string();
        assert!(msg.contains("dw.weight: expected [8, 1, 3, 3] for conv2d with 1 input channels per group (groups = 4), found [8, 4, 3, 3]"), "{msg}");
        let odd = Architecture::parse(&text.replace("groups = 4", "groups = 3"), "g.toml").unwrap();
        let msg = odd.build(&s).unwrap_err().to_string();
        assert!(msg.contains("groups = 3 does not divide the 4 input channels"), "{msg}");
    }

    #[test]
    fn bad_descriptions_name_the_problem() {
        let e = Architecture::parse("input = [784]\n[[layer]]\nop = \"gelu\"\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("a.toml") && e.contains("gelu") && e.contains("line"), "{e}");
        let e = Architecture::parse("input = [784]\n[[layer]]\nop = \"linear\"\nweight = \"w\"\nwidth = 3\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("width"), "{e}");
        let e = Architecture::parse("input = [784]\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("no [[layer]]"), "{e}");
        let arch = Architecture::parse("input = [4]\n[[layer]]\nop = \"linear\"\nweight = \"w1\"\nbias = \"b1\"\n", "a.toml").unwrap();
        let s: StateDict = [("w1", t(&[2, 4])), ("b1", t(&[2]))].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let msg = arch.build(&s).unwrap_err().to_string();
        assert!(msg.contains("weight key 'w1' must end in '.weight'"), "{msg}");
    }
}
