//! Integration tests: the `squeeze` binary and the library on tiny data sets.

mod util;

mod cli;
mod data;
mod hf;
mod onnx;
mod pytorch;
mod hostile;
mod roundtrip;
