//! Parameter sharing across models: several task models over the same inputs stored as
//! one file with one shared trunk and a head per task.
//!
//! A *task* relabels the data set's classes through a label map (`map[class]` = the
//! task's label), e.g. Fashion-MNIST's 10 classes, a coarse grouping (tops, bottoms,
//! footwear, bags) and footwear-or-not. Every task model has the same architecture
//! except its *head*, the last `Linear` layer, sized for the task's classes; everything
//! before the head is the *trunk*.
//!
//! - **Hard form** ([`share_hard`]): the first task's separately trained model keeps its
//!   trunk and head; every other task gets a new head trained on that frozen trunk's
//!   features. The trunk is stored once.
//! - **Soft form** ([`share_soft`]): the task models are trained side by side, in turns
//!   of one epoch, each with the penalty `λ·Σ_b ‖θ_trunk − θ_b,trunk‖²` towards the
//!   others' trunks ([`crate::train::Pull`]), all starting from the same trunk. The
//!   trunks are then merged (averaged) into one and each head is fine-tuned on the
//!   merged trunk's features, starting from its own trained head.
//!
//! Both forms give one multi-head [`Model`] ([`assemble`]): the trunk, the first task's
//! head under its original name and a head `<head>_<task>` (with a softmax
//! `softmax_<task>`) per further task; graph output `t` is task `t`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::pass::{Context, ModelKind, Output, PassError, Technique};
use crate::data::Dataset;
use crate::model::{Model, ModelError};
use crate::runtime::exec::{self, RuntimeError, Workspace};
use crate::spec::{Graph, Node, Op};
use crate::store;
use crate::train::{self, Pull, TrainConfig, TrainEvent};

/// Why models cannot be shared.
#[derive(Debug, thiserror::Error)]
pub enum MultitaskError {
    #[error("parameter sharing needs at least one task")]
    NoTasks,
    #[error("task name '{0}' is used twice")]
    DuplicateTask(String),
    #[error("task '{task}': the label map has {got} entries, the data set has {classes} classes (give one label per class)")]
    LabelMapLength { task: String, got: usize, classes: usize },
    #[error("task '{task}': label {label} leaves the labels 0..{label} partly unused (labels must be 0, 1, …, k−1 with each used)")]
    LabelGap { task: String, label: usize },
    #[error("the architecture has no Linear layer feeding its single output, so there is no task head")]
    NoHead,
    #[error("cannot share the trunk: task '{task}' {why} (sharing needs the same architecture before the head)")]
    TrunkMismatch { task: String, why: String },
    #[error("penalty strength must be finite and ≥ 0, got {0}")]
    Penalty(f32),
    #[error("the model takes {model} inputs per sample, the data set has {data}")]
    InputMismatch { model: usize, data: usize },
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
}

/// One task: a name and a label map from the data set's classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub name: String,
    /// `labels[class]` = the task's label for that class; labels are `0..classes()`.
    pub labels: Vec<u8>,
}

impl Task {
    /// Number of task labels.
    pub fn classes(&self) -> usize {
        self.labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0)
    }

    /// The task's labels for data-set labels (every label must be below the map's length,
    /// see [`check_tasks`]).
    pub fn relabel(&self, labels: &[u8]) -> Vec<u8> {
        labels.iter().map(|&l| self.labels[l as usize]).collect()
    }
}

/// Fashion-MNIST's three tasks over its classes (T-shirt, trouser, pullover, dress,
/// coat, sandal, shirt, sneaker, bag, ankle boot): the 10 classes; tops (incl. dress and
/// coat) 0, bottoms 1, footwear 2, bags 3; footwear or not.
pub fn fashion_mnist_tasks() -> Vec<Task> {
    let task = |name: &str, labels: [u8; 10]| Task { name: name.into(), labels: labels.to_vec() };
    vec![
        task("classes", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        task("coarse", [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]),
        task("footwear", [0, 0, 0, 0, 0, 1, 0, 1, 0, 1]),
    ]
}

/// Checks names and label maps against a data set of `classes` classes.
pub fn check_tasks(tasks: &[Task], classes: usize) -> Result<(), MultitaskError> {
    if tasks.is_empty() {
        return Err(MultitaskError::NoTasks);
    }
    for (i, t) in tasks.iter().enumerate() {
        if tasks[..i].iter().any(|o| o.name == t.name) {
            return Err(MultitaskError::DuplicateTask(t.name.clone()));
        }
        if t.labels.len() != classes {
            return Err(MultitaskError::LabelMapLength { task: t.name.clone(), got: t.labels.len(), classes });
        }
        if let Some(missing) = (0..t.classes()).find(|&l| !t.labels.contains(&(l as u8))) {
            return Err(MultitaskError::LabelGap { task: t.name.clone(), label: missing });
        }
    }
    Ok(())
}

/// Where the head sits in an architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadInfo {
    /// The head's node name (its parameters are `<name>.weight`, `<name>.bias`).
    pub node: String,
    /// Index of the head node.
    pub index: usize,
    /// The graph value the head reads: the trunk's features.
    pub features: String,
    /// Length of the feature vector.
    pub feature_len: usize,
}

/// The last Linear layer of a single-output graph is the head.
pub fn find_head(graph: &Graph) -> Result<HeadInfo, MultitaskError> {
    if graph.outputs.len() != 1 {
        return Err(MultitaskError::NoHead);
    }
    let index = graph.nodes.iter().rposition(|n| matches!(n.op, Op::Linear { .. })).ok_or(MultitaskError::NoHead)?;
    match &graph.nodes[index] {
        Node { name, inputs, op: Op::Linear { in_features, bias: true, .. } } if inputs.len() == 1 => {
            Ok(HeadInfo { node: name.clone(), index, features: inputs[0].clone(), feature_len: *in_features })
        }
        _ => Err(MultitaskError::NoHead),
    }
}

/// `graph` with its head resized to `classes` outputs.
pub fn task_graph(graph: &Graph, head: &HeadInfo, classes: usize) -> Graph {
    let mut g = graph.clone();
    if let Op::Linear { out_features, .. } = &mut g.nodes[head.index].op {
        *out_features = classes;
    }
    g
}

/// Whether `param` belongs to the head.
fn is_head_param(head: &HeadInfo, param: &str) -> bool {
    param.strip_prefix(head.node.as_str()).is_some_and(|rest| rest.starts_with('.'))
}

/// Checks that every task's architecture has the same trunk (node for node, and the
/// same parameter names and shapes) as the first; `graphs[t]` belongs to `tasks[t]`.
pub fn check_trunks(tasks: &[Task], graphs: &[Graph]) -> Result<HeadInfo, MultitaskError> {
    let head = find_head(&graphs[0])?;
    let trunk_params = |g: &Graph, h: &HeadInfo| -> Vec<(String, Vec<usize>)> {
        g.parameters().into_iter().filter(|p| !is_head_param(h, &p.name)).map(|p| (p.name, p.shape)).collect()
    };
    let reference = trunk_params(&graphs[0], &head);
    for (task, g) in tasks.iter().zip(graphs).skip(1) {
        let mismatch = |why: String| MultitaskError::TrunkMismatch { task: task.name.clone(), why };
        if g.input_shape != graphs[0].input_shape {
            return Err(mismatch(format!("takes inputs of shape {:?}, task '{}' {:?}", g.input_shape, tasks[0].name, graphs[0].input_shape)));
        }
        let h = find_head(g)?;
        if h.node != head.node || h.features != head.features || h.feature_len != head.feature_len {
            return Err(mismatch(format!(
                "has its head '{}' on '{}' ({} features), task '{}' has '{}' on '{}' ({} features)",
                h.node, h.features, h.feature_len, tasks[0].name, head.node, head.features, head.feature_len
            )));
        }
        let params = trunk_params(g, &h);
        if let Some(((n, s), (rn, rs))) = params.iter().zip(&reference).find(|(a, b)| a != b) {
            return Err(mismatch(format!("has trunk parameter '{n}' of shape {s:?} where task '{}' has '{rn}' of shape {rs:?}", tasks[0].name)));
        }
        if params.len() != reference.len() {
            return Err(mismatch(format!("has {} trunk parameters, task '{}' has {}", params.len(), tasks[0].name, reference.len())));
        }
    }
    Ok(head)
}

/// Shared settings of both forms.
#[derive(Clone, Debug, PartialEq)]
pub struct MultitaskConfig {
    /// Epochs, batch size, learning rate and seed of every task model (and of the heads).
    pub train: TrainConfig,
}

/// A separately trained model per task (seeds `seed + t`), the reference both forms are
/// measured against. `graphs[t]` is task `t`'s architecture (head already resized).
pub fn train_separate(
    tasks: &[Task],
    graphs: &[Graph],
    data: &Dataset,
    cfg: &MultitaskConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Vec<Model>, MultitaskError> {
    let mut models = Vec::with_capacity(tasks.len());
    for (t, (task, g)) in tasks.iter().zip(graphs).enumerate() {
        let seed = cfg.train.seed.wrapping_add(t as u64);
        let mut m = Model::init(g.clone(), seed)?;
        check_input(&m, data)?;
        let tc = TrainConfig { seed, ..cfg.train.clone() };
        train::train(&mut m, &data.images, &task.relabel(&data.labels), &tc, on_event);
        models.push(m);
    }
    Ok(models)
}

fn check_input(m: &Model, data: &Dataset) -> Result<(), MultitaskError> {
    if m.graph.input_len() != data.sample_len() {
        return Err(MultitaskError::InputMismatch { model: m.graph.input_len(), data: data.sample_len() });
    }
    Ok(())
}

/// The trunk's features (`n × feature_len`) for `images`, run by the runtime.
pub fn features(trunk: &Model, head: &HeadInfo, images: &[f32]) -> Result<Vec<f32>, MultitaskError> {
    let plan = store::model_plan(trunk)?;
    let per = plan.input_len();
    let n = images.len() / per.max(1);
    let dim = head.feature_len;
    let mut f = vec![0.0f32; n * dim];
    let mut ws = Workspace::default();
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        plan.run_observe(&images[start * per..end * per], end - start, &mut ws, &mut |name, d| {
            if name == head.features {
                f[start * dim..end * dim].copy_from_slice(&d[..(end - start) * dim]);
            }
        })?;
    }
    Ok(f)
}

/// A head (`weight`, `bias`) for `task`, trained on fixed `features`, starting from
/// `init` when given (else a fresh initialisation from `seed`).
fn train_head(
    features: &[f32],
    feature_len: usize,
    task: &Task,
    labels: &[u8],
    init: Option<(&[f32], &[f32])>,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<(Vec<f32>, Vec<f32>), MultitaskError> {
    let k = task.classes();
    let g = Graph::chain(
        vec![feature_len],
        vec![("head", Op::Linear { in_features: feature_len, out_features: k, bias: true }), ("softmax", Op::Softmax)],
    );
    let mut hm = Model::init(g, cfg.seed)?;
    if let Some((w, b)) = init {
        hm.params.get_mut("head.weight").expect("head graph").copy_from_slice(w);
        hm.params.get_mut("head.bias").expect("head graph").copy_from_slice(b);
    }
    train::train(&mut hm, features, &task.relabel(labels), cfg, on_event);
    Ok((hm.params.get("head.weight").expect("head graph").to_vec(), hm.params.get("head.bias").expect("head graph").to_vec()))
}

/// One multi-head model: `trunk`'s parameters (its own head is dropped) and
/// `heads[t]` = (weight, bias) of task `t`.
pub fn assemble(trunk: &Model, head: &HeadInfo, tasks: &[Task], heads: &[(Vec<f32>, Vec<f32>)]) -> Result<Model, MultitaskError> {
    let dim = head.feature_len;
    let mut graph = task_graph(&trunk.graph, head, tasks[0].classes());
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = trunk
        .params
        .iter()
        .filter(|(s, _)| !is_head_param(head, &s.name))
        .map(|(s, d)| (s.name.clone(), (s.shape.clone(), d.to_vec())))
        .collect();
    for (t, (task, (w, b))) in tasks.iter().zip(heads).enumerate() {
        let k = task.classes();
        let node = if t == 0 { head.node.clone() } else { format!("{}_{}", head.node, task.name) };
        if t > 0 {
            graph.nodes.push(Node {
                name: node.clone(),
                inputs: vec![head.features.clone()],
                op: Op::Linear { in_features: dim, out_features: k, bias: true },
            });
            graph.nodes.push(Node { name: format!("softmax_{}", task.name), inputs: vec![node.clone()], op: Op::Softmax });
            graph.outputs.push(format!("softmax_{}", task.name));
        }
        tensors.insert(format!("{node}.weight"), (vec![k, dim], w.clone()));
        tensors.insert(format!("{node}.bias"), (vec![k], b.clone()));
    }
    Ok(Model::from_tensors(graph, tensors)?)
}

/// The hard form: `separate[0]`'s trunk and head, plus a head per further task trained
/// for `cfg.train.epochs` on that trunk's frozen features.
pub fn share_hard(
    tasks: &[Task],
    separate: &[Model],
    data: &Dataset,
    cfg: &MultitaskConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Model, MultitaskError> {
    let graphs: Vec<Graph> = separate.iter().map(|m| m.graph.clone()).collect();
    let head = check_trunks(tasks, &graphs)?;
    let trunk = &separate[0];
    let feats = features(trunk, &head, &data.images)?;
    let mut heads = vec![own_head(trunk, &head)];
    for (t, task) in tasks.iter().enumerate().skip(1) {
        let hc = TrainConfig { seed: cfg.train.seed.wrapping_add(100 + t as u64), ..cfg.train.clone() };
        heads.push(train_head(&feats, head.feature_len, task, &data.labels, None, &hc, on_event)?);
    }
    assemble(trunk, &head, tasks, &heads)
}

fn own_head(model: &Model, head: &HeadInfo) -> (Vec<f32>, Vec<f32>) {
    let get = |s: &str| model.params.get(&format!("{}.{s}", head.node)).map(<[f32]>::to_vec).unwrap_or_default();
    (get("weight"), get("bias"))
}

/// Settings of the soft form.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftConfig {
    /// λ of the pull between trunks.
    pub strength: f32,
    /// Epochs of each task model, trained in turns (one epoch each per round).
    pub epochs: usize,
    /// Epochs of each head on the merged trunk.
    pub head_epochs: usize,
    /// Learning rate of the head fine-tuning.
    pub head_lr: f32,
}

/// What the soft form measured besides the merged model.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftSummary {
    /// Root-mean-square distance of each task's trunk from the merged trunk, before
    /// merging (how far the penalty let them drift apart).
    pub trunk_rms_distance: Vec<f64>,
}

/// The soft form: models pulled together while training, merged, heads fine-tuned.
pub fn share_soft(
    tasks: &[Task],
    graphs: &[Graph],
    data: &Dataset,
    cfg: &MultitaskConfig,
    soft: &SoftConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<(Model, SoftSummary), MultitaskError> {
    if !(soft.strength.is_finite() && soft.strength >= 0.0) {
        return Err(MultitaskError::Penalty(soft.strength));
    }
    let head = check_trunks(tasks, graphs)?;
    // All start from one trunk (the first task's initialisation); heads differ.
    let mut models = Vec::with_capacity(tasks.len());
    for (t, g) in graphs.iter().enumerate() {
        let mut m = Model::init(g.clone(), cfg.train.seed.wrapping_add(t as u64))?;
        check_input(&m, data)?;
        if let Some(first) = models.first() {
            copy_trunk(first, &mut m, &head);
        }
        models.push(m);
    }
    let labels: Vec<Vec<u8>> = tasks.iter().map(|t| t.relabel(&data.labels)).collect();
    let trunk_ranges = |m: &Model| -> Vec<std::ops::Range<usize>> {
        (0..m.params.specs.len()).filter(|&i| !is_head_param(&head, &m.params.specs[i].name)).map(|i| m.params.range(i)).collect()
    };
    for epoch in 0..soft.epochs {
        for a in 0..models.len() {
            // Anchors in model a's layout: its own buffer with the others' trunks.
            let anchors: Vec<Vec<f32>> = (0..models.len())
                .filter(|&b| b != a)
                .map(|b| {
                    let mut buf = models[a].params.data.clone();
                    for r in trunk_ranges(&models[a]) {
                        buf[r.clone()].copy_from_slice(&models[b].params.data[r]);
                    }
                    buf
                })
                .collect();
            let pull = Pull { strength: soft.strength, ranges: trunk_ranges(&models[a]), anchors };
            let tc = TrainConfig {
                epochs: 1,
                seed: cfg.train.seed.wrapping_add(1000 * (epoch as u64 + 1) + a as u64),
                ..cfg.train.clone()
            };
            train::train_pulled(&mut models[a], &data.images, &labels[a], &pull, &tc, on_event);
        }
    }
    // Merge: the mean of the trunks.
    let mut merged = models[0].clone();
    let ranges = trunk_ranges(&merged);
    for r in &ranges {
        for i in r.clone() {
            merged.params.data[i] = models.iter().map(|m| m.params.data[i]).sum::<f32>() / models.len() as f32;
        }
    }
    let trunk_rms_distance = models
        .iter()
        .map(|m| {
            let (mut sum, mut n) = (0.0f64, 0usize);
            for r in &ranges {
                for i in r.clone() {
                    sum += f64::from(m.params.data[i] - merged.params.data[i]).powi(2);
                    n += 1;
                }
            }
            (sum / n.max(1) as f64).sqrt()
        })
        .collect();
    let feats = features(&merged, &head, &data.images)?;
    let mut heads = Vec::with_capacity(tasks.len());
    for (t, task) in tasks.iter().enumerate() {
        let (w, b) = own_head(&models[t], &head);
        let hc = TrainConfig {
            epochs: soft.head_epochs,
            lr: soft.head_lr,
            seed: cfg.train.seed.wrapping_add(200 + t as u64),
            ..cfg.train.clone()
        };
        heads.push(train_head(&feats, head.feature_len, task, &data.labels, Some((&w, &b)), &hc, on_event)?);
    }
    Ok((assemble(&merged, &head, tasks, &heads)?, SoftSummary { trunk_rms_distance }))
}

fn copy_trunk(from: &Model, to: &mut Model, head: &HeadInfo) {
    for i in 0..to.params.specs.len() {
        let name = to.params.specs[i].name.clone();
        if !is_head_param(head, &name)
            && let Some(src) = from.params.get(&name)
        {
            let r = to.params.range(i);
            to.params.data[r].copy_from_slice(src);
        }
    }
}

/// Accuracy of each task on `data`: output `t` of `plan` against task `t`'s labels.
pub fn task_accuracies(plan: &exec::Plan, tasks: &[Task], data: &Dataset) -> Result<Vec<f64>, MultitaskError> {
    let per = plan.input_len();
    let n = data.len();
    let mut correct = vec![0usize; tasks.len()];
    let mut ws = Workspace::default();
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        let outs = plan.run_all(&data.images[start * per..end * per], end - start, &mut ws)?;
        for (t, task) in tasks.iter().enumerate() {
            let Some(out) = outs.get(t) else { continue };
            let k = out.len() / (end - start).max(1);
            for (row, &y) in out.chunks_exact(k.max(1)).zip(&data.labels[start..end]) {
                if crate::runtime::kernels::argmax(row) == task.labels[y as usize] as usize {
                    correct[t] += 1;
                }
            }
        }
    }
    Ok(correct.iter().map(|&c| c as f64 / n.max(1) as f64).collect())
}

/// How a `share_tasks` pass shares the trunk.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShareForm {
    /// The first task's trunk, frozen, with a head per task.
    #[default]
    Hard,
    /// Task models pulled together while training, merged, heads fine-tuned.
    Soft,
}

/// The `share_tasks` pass: parameter sharing across the recipe's `[[task]]` models, one
/// file with one trunk and a head per task, measured per task against the separately
/// trained models.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ShareTasks {
    /// hard: the first task's trunk, frozen, with a head per task; soft: task models
    /// trained with a pull between their trunks, merged, heads fine-tuned.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub form: ShareForm,
    /// Soft form: λ of the pull `λ·Σ‖θ_a − θ_b‖²` between the trunks.
    #[serde(default = "default_penalty")]
    #[arg(long, default_value_t = default_penalty())]
    pub penalty: f32,
    /// Soft form: epochs of each head on the merged trunk.
    #[serde(default = "default_head_epochs")]
    #[arg(long, default_value_t = default_head_epochs())]
    pub head_epochs: usize,
    /// Soft form: learning rate of the head fine-tuning (default a tenth of the training rate).
    #[arg(long)]
    pub head_lr: Option<f32>,
}

fn default_penalty() -> f32 {
    0.001
}

fn default_head_epochs() -> usize {
    2
}

/// What a `share_tasks` stage reports in `extra` (the runner adds the per-task rows).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ShareTasksReport {
    pub form: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_epochs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunk_rms_distance_before_merge: Option<Vec<f64>>,
}

impl Technique for ShareTasks {
    fn stage_name(&self) -> String {
        match self.form {
            ShareForm::Hard => "shared-hard".into(),
            ShareForm::Soft => "shared-soft".into(),
        }
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        if kind != ModelKind::Tasks {
            return Err("pass share_tasks needs the tasks: add [[task]] tables with name and labels".into());
        }
        if !(self.penalty.is_finite() && self.penalty >= 0.0) {
            return Err(format!("pass share_tasks: penalty: expected a finite λ ≥ 0, got {}", self.penalty));
        }
        Ok(())
    }

    fn apply(&self, model: &mut Model, ctx: &mut Context) -> Result<Output, PassError> {
        let data = ctx.train_data("share_tasks")?;
        let Some(set) = &ctx.tasks else {
            return Err(MultitaskError::NoTasks.into());
        };
        let (tasks, graphs, separate, cfg) = (set.tasks, set.graphs, set.separate, set.config);
        let lr = ctx.lr();
        let mut report = ShareTasksReport { form: if self.form == ShareForm::Hard { "hard" } else { "soft" }, penalty: None, head_epochs: None, trunk_rms_distance_before_merge: None };
        *model = match self.form {
            ShareForm::Hard => share_hard(tasks, separate, data, cfg, ctx.progress)?,
            ShareForm::Soft => {
                let soft = SoftConfig { strength: self.penalty, epochs: cfg.train.epochs, head_epochs: self.head_epochs, head_lr: self.head_lr.unwrap_or(lr * 0.1) };
                let (m, summary) = share_soft(tasks, graphs, data, cfg, &soft, ctx.progress)?;
                report.penalty = Some(f64::from(self.penalty));
                report.head_epochs = Some(self.head_epochs);
                report.trunk_rms_distance_before_merge = Some(summary.trunk_rms_distance);
                m
            }
        };
        let mut out = Output::model(&report);
        out.entropy_coding = true;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;

    #[test]
    fn label_maps_are_checked() {
        let good = fashion_mnist_tasks();
        check_tasks(&good, 10).unwrap();
        assert_eq!(good.iter().map(Task::classes).collect::<Vec<_>>(), vec![10, 4, 2]);
        let short = vec![Task { name: "x".into(), labels: vec![0, 1, 0] }];
        assert!(matches!(check_tasks(&short, 10), Err(MultitaskError::LabelMapLength { got: 3, classes: 10, .. })));
        let gap = vec![Task { name: "x".into(), labels: vec![0, 2, 0, 0, 0, 0, 0, 0, 0, 0] }];
        let err = check_tasks(&gap, 10).unwrap_err().to_string();
        assert!(err.contains("'x'") && err.contains("label 1"), "{err}");
        let twice = vec![good[1].clone(), good[1].clone()];
        assert!(matches!(check_tasks(&twice, 10), Err(MultitaskError::DuplicateTask(_))));
        assert!(matches!(check_tasks(&[], 10), Err(MultitaskError::NoTasks)));
    }

    #[test]
    fn different_architectures_cannot_share_a_trunk() {
        let tasks = fashion_mnist_tasks();
        let mlp = zoo::build("mlp").unwrap();
        let head = find_head(&mlp).unwrap();
        assert_eq!((head.node.as_str(), head.feature_len), ("fc2", 64));
        let same: Vec<Graph> = tasks.iter().map(|t| task_graph(&mlp, &head, t.classes())).collect();
        check_trunks(&tasks, &same).unwrap();
        let lenet300 = zoo::build("lenet300").unwrap();
        let h300 = find_head(&lenet300).unwrap();
        let mixed = vec![same[0].clone(), task_graph(&lenet300, &h300, 4), same[2].clone()];
        let err = check_trunks(&tasks, &mixed).unwrap_err().to_string();
        assert!(err.contains("task 'coarse'") && err.contains("same architecture"), "{err}");
    }

    /// A tiny two-layer net on 8-D inputs with 4 classes: the trunk is fc1.
    fn tiny_data(n: usize) -> Dataset {
        let mut rng = crate::rng::Rng::new(3);
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let c = rng.below(4);
            for d in 0..8 {
                images.push(if d % 4 == c { 1.0 } else { 0.0 } + rng.uniform(0.2));
            }
            labels.push(c as u8);
        }
        Dataset { images, labels, sample_shape: vec![8], num_classes: 4 }
    }

    fn tiny_graph() -> Graph {
        Graph::chain(
            vec![8],
            vec![
                ("fc1", Op::Linear { in_features: 8, out_features: 12, bias: true }),
                ("relu", Op::Relu),
                ("fc2", Op::Linear { in_features: 12, out_features: 4, bias: true }),
                ("softmax", Op::Softmax),
            ],
        )
    }

    #[test]
    fn both_forms_give_one_model_whose_heads_solve_their_tasks() {
        let data = tiny_data(400);
        let tasks = vec![
            Task { name: "all".into(), labels: vec![0, 1, 2, 3] },
            Task { name: "pairs".into(), labels: vec![0, 0, 1, 1] },
        ];
        check_tasks(&tasks, 4).unwrap();
        let base = tiny_graph();
        let head = find_head(&base).unwrap();
        let graphs: Vec<Graph> = tasks.iter().map(|t| task_graph(&base, &head, t.classes())).collect();
        let cfg = MultitaskConfig { train: TrainConfig { epochs: 6, batch_size: 32, lr: 1e-2, seed: 5, ..TrainConfig::default() } };
        let separate = train_separate(&tasks, &graphs, &data, &cfg, &mut |_| {}).unwrap();
        let hard = share_hard(&tasks, &separate, &data, &cfg, &mut |_| {}).unwrap();
        // One trunk, two heads: fc1 + fc2 (4 classes) + fc2_pairs (2 classes).
        assert_eq!(hard.graph.outputs.len(), 2);
        assert_eq!(hard.params.len(), 8 * 12 + 12 + 12 * 4 + 4 + 12 * 2 + 2);
        assert_eq!(hard.params.get("fc1.weight"), separate[0].params.get("fc1.weight"), "the first task's trunk is kept");
        let acc = task_accuracies(&store::model_plan(&hard).unwrap(), &tasks, &data).unwrap();
        assert!(acc.iter().all(|&a| a > 0.9), "{acc:?}");

        let soft_cfg = SoftConfig { strength: 0.05, epochs: 6, head_epochs: 2, head_lr: 5e-3 };
        let (soft, summary) = share_soft(&tasks, &graphs, &data, &cfg, &soft_cfg, &mut |_| {}).unwrap();
        let acc = task_accuracies(&store::model_plan(&soft).unwrap(), &tasks, &data).unwrap();
        assert!(acc.iter().all(|&a| a > 0.9), "{acc:?}");
        // A stronger pull keeps the trunks closer together before the merge.
        let loose = SoftConfig { strength: 0.0, ..soft_cfg.clone() };
        let (_, apart) = share_soft(&tasks, &graphs, &data, &cfg, &loose, &mut |_| {}).unwrap();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&summary.trunk_rms_distance) < 0.5 * mean(&apart.trunk_rms_distance), "{summary:?} vs {apart:?}");
        assert!(matches!(
            share_soft(&tasks, &graphs, &data, &cfg, &SoftConfig { strength: f32::NAN, ..soft_cfg }, &mut |_| {}),
            Err(MultitaskError::Penalty(_))
        ));
    }
}
