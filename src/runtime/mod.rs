//! (in progress)

pub mod int8;
