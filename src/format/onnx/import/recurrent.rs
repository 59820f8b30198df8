//! ONNX LSTM/GRU → squeeze `Lstm`/`Gru`, and the layout changes around them.
//!
//! ONNX recurrent ops read a time-major `[seq, batch, input]` sequence (opset 14 adds
//! `layout = 1`, batch-first) and return `Y [seq, dirs, batch, H]` and `Y_h [dirs,
//! batch, H]`, so exporters wrap them in Transposes that move the batch axis and in
//! Squeezes of the direction axis. Such values are kept as a [`View`]: a squeeze value
//! plus where the batch axis sits among the ONNX dimensions. Transpose and Squeeze move
//! views around; once the batch is first again and the dimensions are the value's own,
//! the view becomes an ordinary runtime value. Any other op reading a view is one clear
//! error.

use super::{attr, attr_int, attr_ints, attr_string, attr_strings, node_err, Builder, Const, OnnxError};
use crate::format::onnx::export::{onnx_gate_order, reorder_blocks};
use crate::format::onnx::proto::NodeProto;
use crate::spec::{Cell, Op};

/// A squeeze value seen through an ONNX layout that is not batch-first.
#[derive(Clone, Debug)]
pub(crate) struct View {
    /// The squeeze value.
    pub value: String,
    /// Its per-sample shape in squeeze.
    pub shape: Vec<usize>,
    /// Where the batch axis sits in the ONNX tensor.
    pub batch_axis: usize,
    /// The ONNX dimensions other than the batch, in order. Without the size-1 entries
    /// they equal `shape` without its size-1 entries (the data order is squeeze's).
    pub dims: Vec<usize>,
}

impl View {
    fn onnx_shape(&self) -> String {
        let mut d: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        d.insert(self.batch_axis, "N".into());
        format!("[{}]", d.join(", "))
    }

    /// Why a general op cannot read this value.
    pub fn describe(&self) -> String {
        format!(
            "a value of ONNX shape {} (batch at axis {}: a time-major sequence or an LSTM/GRU output); squeeze reads such values only through Transpose/Squeeze back to batch-first [N, {}] or as LSTM/GRU input",
            self.onnx_shape(),
            self.batch_axis,
            self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )
    }
}

fn all_equal(c: &Const, v: f64) -> bool {
    c.data.iter().all(|&x| x == v)
}

impl Builder {
    pub(super) fn is_view(&self, n: &NodeProto, i: usize) -> bool {
        n.input.get(i).is_some_and(|v| self.views.contains_key(v))
    }

    /// Input `i` as a view (a batch-first runtime value is the trivial view).
    fn view_of(&self, n: &NodeProto, name: &str, i: usize) -> Result<View, OnnxError> {
        if let Some(v) = n.input.get(i).and_then(|v| self.views.get(v)) {
            return Ok(v.clone());
        }
        let (value, shape) = self.act(n, name, i)?;
        Ok(View { value, dims: shape.clone(), shape, batch_axis: 0 })
    }

    /// Binds ONNX output `index` of `n` to `view`: an ordinary value when the batch is
    /// first and the dimensions are the value's (or a Flatten of it to 1-D), else a view.
    fn bind_view(&mut self, n: &NodeProto, name: &str, index: usize, view: View) -> Result<(), OnnxError> {
        let out = n.output.get(index).filter(|s| !s.is_empty()).cloned().ok_or_else(|| node_err(n, name, format!("output {index} is missing")))?;
        if view.batch_axis == 0 && view.dims == view.shape {
            let mut m = n.clone();
            m.output = vec![out];
            return self.bind(&m, name, view.value, view.shape);
        }
        if view.batch_axis == 0 && view.dims.len() == 1 && index == 0 {
            self.add(n, name, vec![view.value], Op::Flatten)?;
            return Ok(());
        }
        let readers = self.uses.get(&out).copied().unwrap_or(0);
        *self.pending.entry(view.value.clone()).or_default() += readers;
        self.vals.remove(&out);
        self.views.insert(out, view);
        Ok(())
    }

    /// A Transpose that moves the batch axis (or transposes a view): allowed when the
    /// dimensions larger than 1 keep their order.
    pub(super) fn transpose_view(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let x = self.view_of(n, name, 0)?;
        let rank = x.dims.len() + 1;
        let perm = attr_ints(n, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
        let mut sorted: Vec<i64> = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..rank as i64).collect::<Vec<_>>() {
            return Err(node_err(n, name, format!("perm {perm:?} does not fit a value of ONNX shape {}", x.onnx_shape())));
        }
        // Each ONNX axis: None for the batch, else (index among the non-batch dims, size).
        let axis = |p: usize| if p == x.batch_axis { None } else { let k = if p < x.batch_axis { p } else { p - 1 }; Some((k, x.dims[k])) };
        let moved: Vec<Option<(usize, usize)>> = perm.iter().map(|&p| axis(p as usize)).collect();
        let order: Vec<usize> = moved.iter().flatten().filter(|(_, d)| *d > 1).map(|(k, _)| *k).collect();
        if order.windows(2).any(|w| w[0] > w[1]) {
            return Err(node_err(n, name, format!("perm {perm:?} reorders the data of a value of ONNX shape {}; squeeze supports transposes that only move the batch and size-1 dimensions", x.onnx_shape())));
        }
        let batch_axis = moved.iter().position(|m| m.is_none()).expect("perm is a permutation");
        let dims = moved.iter().flatten().map(|(_, d)| *d).collect();
        self.bind_view(n, name, 0, View { batch_axis, dims, ..x })
    }

    /// Squeeze of a runtime value or view: drops size-1 dimensions other than the batch.
    pub(super) fn squeeze_view(&mut self, n: &NodeProto, name: &str) -> Result<(), OnnxError> {
        let x = self.view_of(n, name, 0)?;
        let rank = (x.dims.len() + 1) as i64;
        let axes = self.squeeze_axes(n, name)?;
        let mut drop: Vec<usize> = Vec::new();
        for &a in &axes {
            let p = if a < 0 { a + rank } else { a };
            if p < 0 || p >= rank {
                return Err(node_err(n, name, format!("axis {a} out of range for ONNX shape {}", x.onnx_shape())));
            }
            drop.push(p as usize);
        }
        // An axis named twice (2 and -1 of a rank-3 value) is dropped once.
        drop.sort_unstable();
        drop.dedup();
        if axes.is_empty() {
            drop = (0..rank as usize).filter(|&p| p != x.batch_axis && x.dims[if p < x.batch_axis { p } else { p - 1 }] == 1).collect();
        }
        let mut dims = Vec::new();
        let mut batch_axis = 0;
        for p in 0..rank as usize {
            if p == x.batch_axis {
                if drop.contains(&p) {
                    return Err(node_err(n, name, "squeezes the batch dimension"));
                }
                batch_axis = p - drop.iter().filter(|&&d| d < p).count();
                continue;
            }
            let d = x.dims[if p < x.batch_axis { p } else { p - 1 }];
            if drop.contains(&p) {
                if d != 1 {
                    return Err(node_err(n, name, format!("axis {p} of ONNX shape {} has size {d}, not 1", x.onnx_shape())));
                }
            } else {
                dims.push(d);
            }
        }
        self.bind_view(n, name, 0, View { batch_axis, dims, ..x })
    }

    /// ONNX LSTM/GRU (forward, default activations, zero initial state) → squeeze's
    /// `Lstm`/`Gru`, the weights regrouped into PyTorch's gate order.
    pub(super) fn recurrent(&mut self, n: &NodeProto, name: &str, cell: Cell) -> Result<(), OnnxError> {
        let layout = attr_int(n, "layout", 0);
        let x = self.view_of(n, name, 0)?;
        let want_batch = if layout == 1 { 0 } else { 1 };
        let (steps, input_size) = match x.dims[..] {
            [t, i] if x.batch_axis == want_batch && x.shape == [t, i] => (t, i),
            _ => {
                return Err(node_err(
                    n,
                    name,
                    format!(
                        "input X has ONNX shape {}; squeeze's {} reads a {} sequence of fixed length",
                        x.onnx_shape(),
                        if cell == Cell::Lstm { "LSTM" } else { "GRU" },
                        if layout == 1 { "[batch, seq, input] (layout = 1)" } else { "[seq, batch, input] (layout = 0)" }
                    ),
                ));
            }
        };
        let direction = attr_string(n, "direction").unwrap_or_else(|| "forward".into());
        if direction != "forward" {
            return Err(node_err(n, name, format!("direction '{direction}': squeeze's recurrent layers run forward only")));
        }
        let defaults: &[&str] = match cell {
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
        };
        if let Some(a) = attr_strings(n, "activations")
            && !a.iter().map(String::as_str).eq(defaults.iter().copied())
        {
            return Err(node_err(n, name, format!("activations {a:?}: squeeze's cells use {defaults:?}")));
        }
        if attr(n, "clip").is_some() {
            return Err(node_err(n, name, "cell clipping (clip) is not supported"));
        }
        if cell == Cell::Lstm && attr_int(n, "input_forget", 0) != 0 {
            return Err(node_err(n, name, "input_forget = 1 (coupled gates) is not supported"));
        }
        if cell == Cell::Gru && attr_int(n, "linear_before_reset", 0) != 1 {
            return Err(node_err(n, name, "linear_before_reset = 0: squeeze's GRU (as PyTorch's) applies the reset gate after the recurrent product, which is linear_before_reset = 1"));
        }
        let hidden = attr_int(n, "hidden_size", 0);
        let gates = cell.gates();
        let w = self.constant_input(n, name, 1)?.ok_or_else(|| node_err(n, name, "has no weight W"))?;
        let r = self.constant_input(n, name, 2)?.ok_or_else(|| node_err(n, name, "has no recurrence weight R"))?;
        // W's gate rows bound hidden_size (tensor dimensions are at most MAX_DIM), so
        // the products below cannot overflow once W matches.
        let hidden = if hidden > 0 { usize::try_from(hidden).unwrap_or(usize::MAX) } else { w.dims.get(1).copied().unwrap_or(0) / gates };
        let g = gates.saturating_mul(hidden);
        if hidden == 0 || g == usize::MAX || w.dims != [1, g, input_size] || r.dims != [1, g, hidden] {
            return Err(node_err(n, name, format!("W {:?} / R {:?} do not match hidden_size {hidden} and input size {input_size} (expected [1, {g}, {input_size}] and [1, {g}, {hidden}])", w.dims, r.dims)));
        }
        let b = self.constant_input(n, name, 3)?;
        if let Some(b) = &b
            && b.dims != [1, 2 * g]
        {
            return Err(node_err(n, name, format!("B has shape {:?}, expected [1, {}]", b.dims, 2 * g)));
        }
        if let Some(lens) = self.constant_input(n, name, 4)?
            && !all_equal(&lens, steps as f64)
        {
            return Err(node_err(n, name, format!("sequence_lens other than the full length {steps} are not supported")));
        }
        for (i, what) in [(5, "initial_h"), (6, "initial_c"), (7, "peepholes P")] {
            if let Some(c) = self.constant_input(n, name, i)?
                && !all_equal(&c, 0.0)
            {
                return Err(node_err(n, name, format!("a nonzero {what} is not supported (squeeze starts from a zero state, without peepholes)")));
            }
        }
        let used = |b: &Builder, i: usize| n.output.get(i).filter(|s| !s.is_empty()).is_some_and(|o| b.uses.get(o).copied().unwrap_or(0) > 0);
        let (y, y_h, y_c) = (used(self, 0), used(self, 1), used(self, 2));
        if y_c {
            return Err(node_err(n, name, "the cell state output Y_c is read; squeeze's LSTM returns hidden states only"));
        }
        if y && y_h {
            return Err(node_err(n, name, "both the sequence Y and the last state Y_h are read; squeeze's layer returns one of them"));
        }
        let op = match cell {
            Cell::Lstm => Op::Lstm { input_size, hidden, bias: b.is_some(), sequence: y, bidirectional: false },
            Cell::Gru => Op::Gru { input_size, hidden, bias: b.is_some(), sequence: y, bidirectional: false },
        };
        let (node, _) = self.add_node(n, name, vec![x.value], op)?;
        // Inverse of the export order: squeeze block p is ONNX block inverse[p].
        let order = onnx_gate_order(cell);
        let mut inverse = vec![0; gates];
        for (k, &p) in order.iter().enumerate() {
            inverse[p] = k;
        }
        let f32s = |d: &[f64]| d.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        self.recurrent.insert(format!("{node}.weight_ih"), reorder_blocks(&f32s(&w.data), hidden * input_size, &inverse));
        self.recurrent.insert(format!("{node}.weight_hh"), reorder_blocks(&f32s(&r.data), hidden * hidden, &inverse));
        if let Some(b) = &b {
            self.recurrent.insert(format!("{node}.bias_ih"), reorder_blocks(&f32s(&b.data[..g]), hidden, &inverse));
            self.recurrent.insert(format!("{node}.bias_hh"), reorder_blocks(&f32s(&b.data[g..]), hidden, &inverse));
        }
        if y {
            let batch_axis = if layout == 1 { 0 } else { 2 };
            self.bind_view(n, name, 0, View { value: node, shape: vec![steps, hidden], batch_axis, dims: vec![steps, 1, hidden] })
        } else {
            let batch_axis = if layout == 1 { 0 } else { 1 };
            self.bind_view(n, name, 1, View { value: node, shape: vec![hidden], batch_axis, dims: vec![1, hidden] })
        }
    }
}
