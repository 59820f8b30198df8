//! ONNX import and export.
//!
//! - [`import`]: an ONNX model (opsets 11 to 21) becomes an ordinary squeeze graph with
//!   dense f32 parameters. Each ONNX node maps through an op registry onto squeeze ops;
//!   BatchNormalization, constant bias adds and constant scales fold into the layer before
//!   them, constant affine steps on the input fold into a `Normalize` node, layout-only
//!   Reshape/Transpose/Flatten become `Flatten` or nothing. Exporter post-processing that
//!   does not feed a float output (skl2onnx's ArgMax, Cast, ZipMap, ...) is skipped.
//! - [`export`]: any graph squeeze holds as ONNX fp32, a full-int8 model as ONNX QDQ
//!   int8 (QuantizeLinear/DequantizeLinear around integer layers), a weights-only or
//!   dynamic int8 model as int8 weights dequantized into float layers; an imported
//!   model keeps its original input and output names. The check that an
//!   export imports back and computes the same is `store::export_onnx` (it runs models,
//!   which the format layer does not).
//!
//! The protobuf messages are a hand-written subset of `onnx.proto` ([`proto`]).

pub mod export;
pub mod import;
pub mod proto;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod recurrent_tests;

pub use export::{encode_f32, encode_int8, ExportError, WeightType};
pub use import::{import, is_onnx, Imported, OnnxError, SUPPORTED_OPS};
