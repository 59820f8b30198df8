//! safetensors: squeeze's own dense files (the graph in the metadata) and any
//! safetensors state dict (every dtype to f32).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = squeeze::format::safetensors::decode(data);
    let _ = squeeze::format::pytorch::read_safetensors(data);
});
