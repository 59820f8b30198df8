//! Compression passes, one file per technique. Each pass changes a [`Model`] (and
//! records the constraints later steps must keep) or produces its stored form.
//!
//! [`Model`]: crate::model::Model

pub mod distill;
pub mod hashed;
pub mod multitask;
pub mod prune;
pub mod quantize;
pub mod share;
pub mod smooth;
pub mod trim;
