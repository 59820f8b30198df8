//! The ONNX importer (protobuf decoding, graph translation, initializers).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = squeeze::format::onnx::import(data);
});
