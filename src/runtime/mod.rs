//! Inference: the kernels for each stored encoding and the executor that runs a
//! stored model. Depends only on `spec` and the `.sqz` reader, never on the trainer.

pub mod kernels;
