//! PyTorch's legacy (pre-1.6) format: pickles then raw storages.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = squeeze::format::pytorch::read_legacy(data);
});
