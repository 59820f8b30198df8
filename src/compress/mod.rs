//! Compression passes, one file per technique.

pub mod prune;
