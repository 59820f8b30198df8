//! Inference: the kernels for each stored encoding and the executor that runs a
//! stored model. Depends only on `spec` and the `.sqz` reader, never on the trainer.
//!
//! - [`kernels`]: f32 matrix product (gemm), im2col, pooling; shared with the trainer.
//! - [`int8`]: u8 × i8 → i32 kernels (AVX-512 VNNI, AVX2, scalar reference) with
//!   integer requantization.
//! - [`sparse`]: Linear kernels on compressed sparse rows (f32 and int8) and on
//!   codebook indices (weight sharing), without expanding the weights to dense f32.
//! - [`recurrent`]: LSTM and GRU forward over a batch of sequences (shared with the trainer).
//! - [`transformer`]: Transformer ops (embeddings, LayerNorm, GELU, self-attention,
//!   pooling), shared with the trainer.
//! - [`intops`]: integer approximations (I-BERT) of softmax, LayerNorm, GELU and the
//!   LSTM/GRU gate sigmoid/tanh, run where the quantization plan asks for them.
//! - [`exec`]: the executor that runs a graph from its stored weights, choosing per
//!   layer the fastest kernel the stored encoding allows (timed at plan build).

pub mod codebook;
pub mod exec;
pub mod int8;
pub mod intops;
pub mod isa;
pub mod kernels;
pub mod packed;
pub mod recurrent;
pub mod sparse;
pub mod transformer;
