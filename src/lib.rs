//! # squeeze
//!
//! A model-compression toolkit: train a network, score importance, compress
//! (prune, quantize, …), fine-tune with the constraints held, and validate that
//! accuracy holds, measuring every stage as a real file and a real run.
//!
//! ## Module map (arrows point from user to used)
//!
//! ```text
//! cli (main.rs) ─► compress ─► train ─► model ─► spec
//!       │             ├─► codec     │       └─► runtime kernels (f32, int8)
//!       │             │             └─► data
//!       │             └─► format (.sqz, safetensors, ONNX, PyTorch) ─► spec, codec
//!       ├─► report
//!       └─► runtime ─► spec, format's .sqz reader
//! ```
//!
//! - [`spec`]: the architecture as plain data (graph, shapes, quantization plan).
//! - [`data`]: IDX (MNIST-format) datasets and NumPy `.npy`/`.npz` arrays, splits, batching.
//! - [`model`]: a trainable network built from a spec: flat parameters, layers with
//!   forward and backward, the zoo.
//! - [`train`]: Adam, cross-entropy, the data-parallel trainer with constraints.
//! - [`compress`]: one file per technique (prune, random_prune, trim, quantize, share =
//!   k-means, hashed = HashedNets, distill, code, multitask = parameter sharing across
//!   models), each one config type implementing [`compress::pass::Technique`], listed in
//!   one registry ([`compress::PassConfig`]); [`compress::select`] is the one layer
//!   selector, [`compress::pass::Context::fine_tune`] the one place passes train.
//! - [`pipeline`]: the one runner for any recipe (baseline → passes → write → decode →
//!   measure → gate → report) behind an evaluation contract per kind of model
//!   (classifier, embedder, task models); the verbs run one-pass recipes through it.
//! - [`recipe`]: the TOML recipe (model, data, `[train]`, gate, the pass configs).
//! - [`codec`]: bit-level coding (position encodings, Huffman, f16, the fixed hash of
//!   hashed sharing); depends on nothing else.
//! - [`format`]: the `.sqz` container, safetensors I/O, ONNX import and export
//!   (encoding only: [`store::export_onnx`] runs the re-import check), PyTorch state
//!   dicts (restricted pickle reader) with architecture descriptions, atomic writes.
//! - [`store`]: reads any model file (sniffed by content), writes `.sqz`/safetensors,
//!   and exports ONNX/safetensors after checking the file reads back and computes the same.
//! - [`runtime`]: inference kernels (f32, int8, sparse, codebook, recurrent) and the executor that runs a stored
//!   model; it never reaches `model`, `train` or `compress`.
//! - [`report`]: the report schema (JSON + Markdown) and measurement helpers.

pub mod bench;
pub mod codec;
pub mod inspect;
pub mod limits;
pub mod outdir;
pub mod recipe;
pub mod store;
pub mod text;
pub mod compress;
pub mod pipeline;
pub mod data;
pub mod format;
pub mod model;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod spec;
pub mod train;
#[cfg(test)]
pub(crate) mod testing;
