//! The trainer: Adam on softmax cross-entropy, mini-batches split over two workers,
//! every constraint of the model held after each step (masked weights stay exactly 0).
//!
//! The library reports progress through a callback and never touches the terminal.

use crate::model::{Model, SoftTargets, Workspace};
use crate::rng::Rng;

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    /// Seeds the order of the samples; the same seed gives the same weights.
    pub seed: u64,
    /// Number of workers the batch is split over.
    pub workers: usize,
    /// Strength λ of an L1 penalty `λ·Σ|w|` on every weight tensor (not biases): the
    /// sparsity-inducing loss of soft pruning. 0 = off.
    pub l1: f32,
    /// Group lasso `λ·Σ_rows ‖w_row‖₂` on the named weight tensors: drives whole neurons
    /// (rows; filters for Conv2d) to zero, the soft form of trimming.
    pub group_lasso: Option<GroupLasso>,
    /// How the learning rate moves over the run; constant by default.
    pub schedule: LrSchedule,
}

/// The learning rate over a run of `train`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr` at every step.
    #[default]
    Constant,
    /// Cosine decay from `lr` at the first step to 0 after the last:
    /// `lr·(1 + cos(π·step/steps))/2`. Small late steps settle the weights in a minimum
    /// instead of leaving them wherever the last noisy constant-rate step put them.
    Cosine,
}

impl LrSchedule {
    /// The factor on the base rate at `step` of `steps` (0-based).
    pub fn factor(self, step: usize, steps: usize) -> f32 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps.max(1) as f64).cos()) as f32,
        }
    }
}

/// A group-lasso penalty: strength and the weight tensors whose rows are the groups.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupLasso {
    pub strength: f32,
    pub params: Vec<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { epochs: 10, batch_size: 128, lr: 1e-3, seed: 1234, workers: 2, l1: 0.0, group_lasso: None, schedule: LrSchedule::Constant }
    }
}

/// What happened in one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub loss: f64,
    pub train_accuracy: f64,
    pub samples_per_s: f64,
    pub wall_s: f64,
}

/// Progress events for a caller that wants to show them.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// An epoch starts; `batches` steps follow.
    EpochStart { epoch: usize, epochs: usize, batches: usize },
    /// One optimisation step finished.
    Step,
    EpochEnd(EpochStats),
}

/// Adam (Kingma & Ba) over the flat parameter buffer, as PyTorch's defaults.
#[derive(Clone, Debug)]
pub struct Adam {
    pub lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    t: i32,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    pub fn new(len: usize, lr: f32) -> Adam {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 0, m: vec![0.0; len], v: vec![0.0; len] }
    }

    /// One step; where `mask` is 0 the parameter is set to 0 and its moments stay 0,
    /// so a pruned weight never comes back.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], mask: Option<&[f32]>) {
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t);
        let c2 = 1.0 - self.beta2.powi(self.t);
        let step = self.lr / c1;
        let inv_c2_sqrt = 1.0 / c2.sqrt();
        for i in 0..params.len() {
            if let Some(mask) = mask
                && mask[i] == 0.0
            {
                params[i] = 0.0;
                continue;
            }
            let g = grad[i];
            let m = self.beta1 * self.m[i] + (1.0 - self.beta1) * g;
            let v = self.beta2 * self.v[i] + (1.0 - self.beta2) * g * g;
            self.m[i] = m;
            self.v[i] = v;
            params[i] -= step * m / ((v.sqrt() * inv_c2_sqrt) + self.eps);
        }
    }
}

/// Trains `model` in place on `images[n × input_len]` / `labels[n]`.
///
/// Each batch is split into `workers` contiguous parts run on their own thread with
/// their own [`Workspace`]; the gradients are summed in worker order, so a seed gives
/// the same weights on every run.
pub fn train(
    model: &mut Model,
    images: &[f32],
    labels: &[u8],
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Vec<EpochStats> {
    train_with(model, images, labels, None, cfg, on_event)
}

/// A teacher's softened outputs for distillation: `probs[n × classes]` =
/// `softmax(teacher_logits / temperature)` per training sample, computed once.
#[derive(Clone, Debug)]
pub struct Teacher {
    pub probs: Vec<f32>,
    pub alpha: f32,
    pub temperature: f32,
}

/// [`train`], optionally distilling from `teacher` (soft targets, loss
/// `α·T²·KL + (1−α)·CE`); for hard distillation pass the teacher's labels as `labels`.
pub fn train_with(
    model: &mut Model,
    images: &[f32],
    labels: &[u8],
    teacher: Option<&Teacher>,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Vec<EpochStats> {
    train_inner(model, images, labels, teacher, None, cfg, on_event)
}

/// The soft form of parameter sharing across models: a penalty
/// `λ·Σ_b ‖θ_r − θ_b,r‖²` pulling the named parameters `r` of the model being trained
/// towards the same parameters of other models `b` (held fixed while this model trains).
/// Training several models in turns with each other as anchors minimises
/// `λ·Σ_{a<b} ‖θ_a − θ_b‖²` plus their losses by block coordinate descent.
#[derive(Clone, Debug, PartialEq)]
pub struct Pull {
    /// λ.
    pub strength: f32,
    /// Flat ranges of [`crate::model::Params::data`] the penalty covers.
    pub ranges: Vec<std::ops::Range<usize>>,
    /// The other models' whole flat parameter buffers (same layout over `ranges`).
    pub anchors: Vec<Vec<f32>>,
}

impl Pull {
    /// The penalty at `params`, summed in f64.
    pub fn value(&self, params: &[f32]) -> f64 {
        let p: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
        self.value_f64(&p)
    }

    /// The penalty at f64 parameters (for gradient checks).
    pub fn value_f64(&self, params: &[f64]) -> f64 {
        let mut sum = 0.0;
        for anchor in &self.anchors {
            for r in &self.ranges {
                for (p, a) in params[r.clone()].iter().zip(&anchor[r.clone()]) {
                    sum += (p - f64::from(*a)).powi(2);
                }
            }
        }
        f64::from(self.strength) * sum
    }

    /// Adds the penalty's gradient `2λ·Σ_b (θ − θ_b)` to `grad`.
    pub fn add_gradient(&self, params: &[f32], grad: &mut [f32]) {
        let two_lambda = 2.0 * self.strength;
        for anchor in &self.anchors {
            for r in &self.ranges {
                for ((g, p), a) in grad[r.clone()].iter_mut().zip(&params[r.clone()]).zip(&anchor[r.clone()]) {
                    *g += two_lambda * (p - a);
                }
            }
        }
    }
}

/// [`train`] with a [`Pull`] penalty added to the loss.
pub fn train_pulled(
    model: &mut Model,
    images: &[f32],
    labels: &[u8],
    pull: &Pull,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Vec<EpochStats> {
    train_inner(model, images, labels, None, Some(pull), cfg, on_event)
}

fn train_inner(
    model: &mut Model,
    images: &[f32],
    labels: &[u8],
    teacher: Option<&Teacher>,
    pull: Option<&Pull>,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Vec<EpochStats> {
    let n = labels.len();
    let input_len = model.graph.input_len();
    assert_eq!(images.len(), n * input_len, "images and labels disagree");
    let batch = cfg.batch_size.max(1).min(n.max(1));
    let workers = cfg.workers.clamp(1, batch);
    let per_worker = batch.div_ceil(workers);
    let mut spaces: Vec<Workspace> = (0..workers).map(|_| Workspace::new(model, per_worker)).collect();
    let classes = teacher.map_or(0, |t| t.probs.len() / n.max(1));
    let mut inputs: Vec<(Vec<f32>, Vec<u8>, Vec<f32>)> = (0..workers)
        .map(|_| (vec![0.0; per_worker * input_len], vec![0u8; per_worker], vec![0.0; per_worker * classes]))
        .collect();
    let mask = model.flat_mask();
    let mut adam = Adam::new(model.params.len(), cfg.lr);
    let mut shared = SharedWeights::new(model, cfg.lr);
    let mut rng = Rng::new(cfg.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut grad = vec![0.0f32; model.params.len()];
    let group_rows: Vec<(std::ops::Range<usize>, usize)> = cfg
        .group_lasso
        .iter()
        .flat_map(|gl| gl.params.iter())
        .filter_map(|name| model.params.index(name))
        .map(|i| (model.params.range(i), model.params.specs[i].shape[1..].iter().product::<usize>().max(1)))
        .collect();
    let weight_ranges: Vec<std::ops::Range<usize>> = (0..model.params.specs.len())
        .filter(|&i| model.params.specs[i].kind == crate::spec::ParamKind::Weight)
        .map(|i| model.params.range(i))
        .collect();
    // Grown per epoch, not reserved for `cfg.epochs` (a huge count is refused up front,
    // see crate::limits, but must never be an allocation here).
    let mut stats = Vec::new();
    let total_steps = cfg.epochs.saturating_mul(n.div_ceil(batch));
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let start = std::time::Instant::now();
        rng.shuffle(&mut order);
        let batches = n.div_ceil(batch);
        on_event(TrainEvent::EpochStart { epoch, epochs: cfg.epochs, batches });
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for chunk in order.chunks(batch) {
            let scale = 1.0 / chunk.len() as f32;
            let parts: Vec<&[u32]> = chunk.chunks(per_worker).collect();
            for (part, (x, y, t)) in parts.iter().zip(inputs.iter_mut()) {
                for (j, &idx) in part.iter().enumerate() {
                    let idx = idx as usize;
                    x[j * input_len..(j + 1) * input_len].copy_from_slice(&images[idx * input_len..(idx + 1) * input_len]);
                    y[j] = labels[idx];
                    if let Some(teacher) = teacher {
                        t[j * classes..(j + 1) * classes].copy_from_slice(&teacher.probs[idx * classes..(idx + 1) * classes]);
                    }
                }
            }
            let params = &model.params;
            let results: Vec<(f64, usize)> = std::thread::scope(|s| {
                let mut jobs = spaces.iter_mut().zip(&inputs).zip(&parts);
                let (first, rest): (_, Vec<_>) = (jobs.next().unwrap(), jobs.collect());
                let handles: Vec<_> = rest
                    .into_iter()
                    .map(|((ws, (x, y, t)), part)| {
                        s.spawn(move || {
                            let soft = teacher.map(|te| SoftTargets { probs: t, alpha: te.alpha, temperature: te.temperature });
                            ws.forward(params, x, part.len());
                            ws.loss_and_backward(params, y, soft, part.len(), scale)
                        })
                    })
                    .collect();
                let ((ws, (x, y, t)), part) = first;
                let soft = teacher.map(|te| SoftTargets { probs: t, alpha: te.alpha, temperature: te.temperature });
                ws.forward(params, x, part.len());
                let mut out = vec![ws.loss_and_backward(params, y, soft, part.len(), scale)];
                out.extend(handles.into_iter().map(|h| h.join().expect("training worker panicked")));
                out
            });
            grad.copy_from_slice(&spaces[0].param_grad);
            for ws in &spaces[1..parts.len()] {
                grad.iter_mut().zip(&ws.param_grad).for_each(|(g, w)| *g += w);
            }
            if let Some(pull) = pull {
                pull.add_gradient(&model.params.data, &mut grad);
            }
            if cfg.l1 > 0.0 {
                // d/dw λ|w| = λ·sign(w) (0 at 0).
                for r in &weight_ranges {
                    for (g, w) in grad[r.clone()].iter_mut().zip(&model.params.data[r.clone()]) {
                        if *w != 0.0 {
                            *g += cfg.l1 * w.signum();
                        }
                    }
                }
            }
            if let Some(gl) = &cfg.group_lasso {
                // d/dw λ‖w_g‖₂ = λ·w_g / ‖w_g‖₂ for each row g (0 for a zero row).
                for (range, row) in &group_rows {
                    for r in range.clone().step_by(*row) {
                        let w = &model.params.data[r..r + row];
                        let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
                        if norm > 0.0 {
                            for (g, v) in grad[r..r + row].iter_mut().zip(w) {
                                *g += gl.strength * v / norm;
                            }
                        }
                    }
                }
            }
            let lr = cfg.lr * cfg.schedule.factor(step, total_steps);
            step += 1;
            adam.lr = lr;
            shared.adam.lr = lr;
            adam.step(&mut model.params.data, &grad, mask.as_deref());
            shared.step(&mut model.params.data, &grad, mask.as_deref());
            for (l, c) in results {
                loss_sum += l;
                correct += c;
            }
            on_event(TrainEvent::Step);
        }
        let wall = start.elapsed().as_secs_f64();
        let s = EpochStats {
            epoch,
            loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            samples_per_s: n as f64 / wall,
            wall_s: wall,
        };
        on_event(TrainEvent::EpochEnd(s.clone()));
        stats.push(s);
    }
    shared.store(model);
    stats
}

/// The codebook constraints during training: each centroid is a parameter of its own,
/// its gradient the sum of its weights' gradients (Deep Compression's centroid
/// fine-tuning), stepped by its own Adam; the weights are then set from the centroids,
/// so shared weights stay shared.
struct SharedWeights {
    /// (flat range of the parameter, offset of its centroids, its name)
    layers: Vec<(std::ops::Range<usize>, usize, String)>,
    assignments: Vec<Vec<u16>>,
    /// Per layer: which elements hold the negated centroid (hashed signs); may be empty.
    negated: Vec<Vec<bool>>,
    centroids: Vec<f32>,
    grad: Vec<f32>,
    adam: Adam,
}

impl SharedWeights {
    fn new(model: &Model, lr: f32) -> SharedWeights {
        let mut layers = Vec::new();
        let mut assignments = Vec::new();
        let mut negated = Vec::new();
        let mut centroids = Vec::new();
        for (name, cb) in &model.constraints.codebooks {
            if let Some(i) = model.params.index(name) {
                layers.push((model.params.range(i), centroids.len(), name.clone()));
                assignments.push(cb.assignment.clone());
                negated.push(cb.negated.clone());
                centroids.extend_from_slice(&cb.centroids);
            }
        }
        let n = centroids.len();
        SharedWeights { layers, assignments, negated, centroids, grad: vec![0.0; n], adam: Adam::new(n, lr) }
    }

    fn step(&mut self, params: &mut [f32], grad: &[f32], mask: Option<&[f32]>) {
        if self.layers.is_empty() {
            return;
        }
        self.grad.fill(0.0);
        let kept = |i: usize| mask.is_none_or(|m| m[i] != 0.0);
        // w_i = s_i·c_a(i) with s_i = ±1, so dL/dc = Σ_i s_i·dL/dw_i.
        let sign = |neg: &[bool], j: usize| if neg.get(j).copied().unwrap_or(false) { -1.0 } else { 1.0 };
        for (((range, off, _), assign), neg) in self.layers.iter().zip(&self.assignments).zip(&self.negated) {
            for (j, &a) in assign.iter().enumerate() {
                let i = range.start + j;
                if kept(i) {
                    self.grad[off + a as usize] += sign(neg, j) * grad[i];
                }
            }
        }
        self.adam.step(&mut self.centroids, &self.grad, None);
        for (((range, off, _), assign), neg) in self.layers.iter().zip(&self.assignments).zip(&self.negated) {
            for (j, &a) in assign.iter().enumerate() {
                let i = range.start + j;
                params[i] = if kept(i) { sign(neg, j) * self.centroids[off + a as usize] } else { 0.0 };
            }
        }
    }

    /// Writes the trained centroids back into the model's constraints.
    fn store(&self, model: &mut Model) {
        for (idx, (_, off, name)) in self.layers.iter().enumerate() {
            if let Some(cb) = model.constraints.codebooks.get_mut(name) {
                let k = cb.centroids.len();
                cb.centroids.copy_from_slice(&self.centroids[*off..off + k]);
                debug_assert_eq!(cb.assignment, self.assignments[idx]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Graph, Op};

    /// Two Gaussian blobs per class in 8-D: a small MLP must learn them.
    fn toy(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = Rng::new(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let c = rng.below(3);
            for d in 0..8 {
                x.push(if d % 3 == c { 1.0 } else { 0.0 } + rng.uniform(0.3));
            }
            y.push(c as u8);
        }
        (x, y)
    }

    fn toy_model(seed: u64) -> Model {
        let g = Graph::chain(
            vec![8],
            vec![
                ("fc1", Op::Linear { in_features: 8, out_features: 16, bias: true }),
                ("relu", Op::Relu),
                ("fc2", Op::Linear { in_features: 16, out_features: 3, bias: true }),
                ("softmax", Op::Softmax),
            ],
        );
        Model::init(g, seed).unwrap()
    }

    #[test]
    fn learns_a_separable_problem_and_is_deterministic() {
        let (x, y) = toy(600, 1);
        let cfg = TrainConfig { epochs: 5, batch_size: 32, lr: 1e-2, seed: 9, workers: 2, l1: 0.0, group_lasso: None, schedule: LrSchedule::Constant };
        let mut a = toy_model(4);
        let stats = train(&mut a, &x, &y, &cfg, &mut |_| {});
        assert!(stats.last().unwrap().train_accuracy > 0.95, "{stats:?}");
        assert!(stats.last().unwrap().loss < stats[0].loss);
        let mut b = toy_model(4);
        train(&mut b, &x, &y, &cfg, &mut |_| {});
        assert_eq!(a.params.data, b.params.data, "same seed, same weights");
    }

    #[test]
    fn cosine_schedule_decays_to_zero_and_constant_stays() {
        assert_eq!(LrSchedule::Constant.factor(7, 10), 1.0);
        assert_eq!(LrSchedule::Cosine.factor(0, 10), 1.0);
        assert!((LrSchedule::Cosine.factor(5, 10) - 0.5).abs() < 1e-6);
        assert!(LrSchedule::Cosine.factor(9, 10) < 0.03);
        // The default keeps every earlier result: a constant rate.
        assert_eq!(TrainConfig::default().schedule, LrSchedule::Constant);
        let (x, y) = toy(300, 8);
        let cfg = TrainConfig { epochs: 3, batch_size: 32, lr: 1e-2, seed: 3, ..TrainConfig::default() };
        let mut cosine = toy_model(2);
        let stats = train(&mut cosine, &x, &y, &TrainConfig { schedule: LrSchedule::Cosine, ..cfg.clone() }, &mut |_| {});
        assert!(stats.last().unwrap().train_accuracy > 0.9, "{stats:?}");
        let mut constant = toy_model(2);
        train(&mut constant, &x, &y, &cfg, &mut |_| {});
        assert_ne!(cosine.params.data, constant.params.data);
    }

    #[test]
    fn l1_penalty_shrinks_weights() {
        let (x, y) = toy(300, 5);
        let cfg = TrainConfig { epochs: 3, batch_size: 32, lr: 1e-2, seed: 3, workers: 2, l1: 0.0, group_lasso: None, schedule: LrSchedule::Constant };
        let mut plain = toy_model(8);
        train(&mut plain, &x, &y, &cfg, &mut |_| {});
        let mut sparse = toy_model(8);
        train(&mut sparse, &x, &y, &TrainConfig { l1: 0.05, ..cfg }, &mut |_| {});
        let l1 = |m: &Model| m.params.get("fc1.weight").unwrap().iter().map(|w| w.abs()).sum::<f32>();
        assert!(l1(&sparse) < 0.5 * l1(&plain), "{} vs {}", l1(&sparse), l1(&plain));
    }

    #[test]
    fn group_lasso_drives_whole_rows_towards_zero() {
        let (x, y) = toy(300, 6);
        let cfg = TrainConfig { epochs: 4, batch_size: 32, lr: 1e-2, seed: 4, workers: 2, l1: 0.0, group_lasso: None, schedule: LrSchedule::Constant };
        let mut plain = toy_model(9);
        train(&mut plain, &x, &y, &cfg, &mut |_| {});
        let mut soft = toy_model(9);
        let gl = GroupLasso { strength: 0.05, params: vec!["fc1.weight".into()] };
        train(&mut soft, &x, &y, &TrainConfig { group_lasso: Some(gl), ..cfg }, &mut |_| {});
        let small_rows = |m: &Model| m.params.get("fc1.weight").unwrap().chunks(8).filter(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt() < 0.05).count();
        assert!(small_rows(&soft) > small_rows(&plain) + 3, "{} vs {}", small_rows(&soft), small_rows(&plain));
        // fc2 was not in the group: untouched by the penalty.
        assert!(soft.params.get("fc2.weight").unwrap().iter().any(|v| v.abs() > 0.1));
    }

    #[test]
    fn pull_gradient_matches_finite_differences_in_f64() {
        let mut rng = Rng::new(11);
        let len = 23;
        let params: Vec<f32> = (0..len).map(|_| rng.uniform(1.0)).collect();
        let anchors: Vec<Vec<f32>> = (0..3).map(|_| (0..len).map(|_| rng.uniform(1.0)).collect()).collect();
        // Two ranges with a gap: entries outside them get no gradient.
        let pull = Pull { strength: 0.37, ranges: vec![2..9, 13..21], anchors };
        let mut grad = vec![0.0f32; len];
        pull.add_gradient(&params, &mut grad);
        let p64: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
        assert!((pull.value(&params) - pull.value_f64(&p64)).abs() < 1e-9);
        let h = 1e-5;
        for i in 0..len {
            let (mut up, mut down) = (p64.clone(), p64.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (pull.value_f64(&up) - pull.value_f64(&down)) / (2.0 * h);
            assert!((numeric - f64::from(grad[i])).abs() < 1e-5 * (1.0 + numeric.abs()), "entry {i}: numeric {numeric}, analytic {}", grad[i]);
            if !(2..9).contains(&i) && !(13..21).contains(&i) {
                assert_eq!(grad[i], 0.0);
            }
        }
    }

    #[test]
    fn pulled_training_stays_near_its_anchor() {
        let (x, y) = toy(300, 8);
        let cfg = TrainConfig { epochs: 3, batch_size: 32, lr: 1e-2, seed: 2, ..TrainConfig::default() };
        let anchor = toy_model(1);
        let fc1 = anchor.params.range(anchor.params.index("fc1.weight").unwrap());
        let dist = |m: &Model| m.params.data[fc1.clone()].iter().zip(&anchor.params.data[fc1.clone()]).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
        let mut free = toy_model(1);
        train(&mut free, &x, &y, &cfg, &mut |_| {});
        let mut pulled = toy_model(1);
        let pull = Pull { strength: 0.5, ranges: vec![fc1.clone()], anchors: vec![anchor.params.data.clone()] };
        train_pulled(&mut pulled, &x, &y, &pull, &cfg, &mut |_| {});
        assert!(dist(&pulled) < 0.2 * dist(&free), "{} vs {}", dist(&pulled), dist(&free));
    }

    #[test]
    fn masked_weights_stay_exactly_zero() {
        let (x, y) = toy(300, 2);
        let mut m = toy_model(5);
        let mask: Vec<bool> = (0..16 * 8).map(|i| i % 2 == 0).collect();
        m.set_mask("fc1.weight", mask.clone()).unwrap();
        let cfg = TrainConfig { epochs: 2, batch_size: 16, lr: 1e-2, seed: 1, workers: 2, l1: 0.0, group_lasso: None, schedule: LrSchedule::Constant };
        train(&mut m, &x, &y, &cfg, &mut |_| {});
        let w = m.params.get("fc1.weight").unwrap();
        for (v, keep) in w.iter().zip(&mask) {
            if !keep {
                assert_eq!(*v, 0.0);
            } else {
                assert_ne!(*v, 0.0);
            }
        }
    }

    /// The toy's 8 features read as 4 steps of 2: an LSTM or GRU learns it; magnitude
    /// pruning masks every weight matrix (recurrent ones included, biases never), and
    /// fine-tuning keeps the removed weights at exactly zero.
    #[test]
    fn recurrent_models_learn_and_pruned_recurrent_weights_stay_zero() {
        let (x, y) = toy(400, 3);
        for cell in ["lstm", "gru"] {
            let rec = match cell {
                "lstm" => Op::Lstm { input_size: 2, hidden: 8, bias: true, sequence: false, bidirectional: false },
                _ => Op::Gru { input_size: 2, hidden: 8, bias: true, sequence: false, bidirectional: false },
            };
            let g = Graph::chain(vec![4, 2], vec![("rec", rec), ("fc", Op::Linear { in_features: 8, out_features: 3, bias: true }), ("softmax", Op::Softmax)]);
            let mut m = Model::init(g, 6).unwrap();
            let cfg = TrainConfig { epochs: 6, batch_size: 32, lr: 2e-2, seed: 2, workers: 2, l1: 0.0, group_lasso: None, ..TrainConfig::default() };
            let stats = train(&mut m, &x, &y, &cfg, &mut |_| {});
            assert!(stats.last().unwrap().train_accuracy > 0.9, "{cell}: {stats:?}");
            let summary = crate::compress::prune::magnitude(&mut m, 0.5, crate::compress::prune::Scope::Layer, &[]).unwrap();
            let pruned: Vec<&str> = summary.layers.iter().map(|l| l.0.as_str()).collect();
            assert_eq!(pruned, ["rec.weight_ih", "rec.weight_hh", "fc.weight"], "{cell}");
            train(&mut m, &x, &y, &TrainConfig { epochs: 2, ..cfg }, &mut |_| {});
            for name in ["rec.weight_ih", "rec.weight_hh"] {
                let (w, mask) = (m.params.get(name).unwrap(), &m.constraints.masks[name]);
                assert_eq!(mask.iter().filter(|k| !**k).count(), w.len() / 2, "{cell} {name}");
                assert!(w.iter().zip(mask).all(|(v, keep)| *keep || *v == 0.0), "{cell} {name}: a pruned weight moved");
            }
            assert!(m.params.get("rec.bias_hh").unwrap().iter().all(|b| *b != 0.0), "biases are not pruned");
        }
    }

    #[test]
    fn shared_weights_stay_shared_and_centroids_train() {
        let (x, y) = toy(300, 4);
        let mut m = toy_model(7);
        m.set_mask("fc1.weight", (0..128).map(|i| i % 4 != 0).collect()).unwrap();
        let cfg_share = crate::compress::share::ShareConfig { linear_bits: 2, conv_bits: 2, per_layer: Default::default(), layers: vec![] };
        crate::compress::share::share(&mut m, &cfg_share).unwrap();
        let before = m.constraints.codebooks["fc1.weight"].centroids.clone();
        let cfg = TrainConfig { epochs: 2, batch_size: 16, lr: 1e-2, seed: 1, workers: 2, l1: 0.0, group_lasso: None, schedule: LrSchedule::Constant };
        train(&mut m, &x, &y, &cfg, &mut |_| {});
        let cb = &m.constraints.codebooks["fc1.weight"];
        assert_ne!(cb.centroids, before, "centroids were trained");
        let w = m.params.get("fc1.weight").unwrap();
        for (i, v) in w.iter().enumerate() {
            let want = if i % 4 == 0 { 0.0 } else { cb.centroids[cb.assignment[i] as usize] };
            assert_eq!(*v, want);
        }
    }

    #[test]
    fn one_worker_and_two_workers_agree_closely() {
        let (x, y) = toy(200, 3);
        let cfg1 = TrainConfig { epochs: 1, batch_size: 20, lr: 1e-2, seed: 1, workers: 1, l1: 0.0, group_lasso: None, schedule: LrSchedule::Constant };
        let cfg2 = TrainConfig { workers: 2, ..cfg1.clone() };
        let mut a = toy_model(6);
        let mut b = toy_model(6);
        train(&mut a, &x, &y, &cfg1, &mut |_| {});
        train(&mut b, &x, &y, &cfg2, &mut |_| {});
        for (p, q) in a.params.data.iter().zip(&b.params.data) {
            assert!((p - q).abs() < 1e-4);
        }
    }
}
