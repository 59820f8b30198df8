//! The restricted pickle reader alone (memo sharing, nesting cap, expansion budget).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = squeeze::format::pickle::load(data);
});
