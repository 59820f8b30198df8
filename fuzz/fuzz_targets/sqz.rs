//! The `.sqz` reader on raw bytes: most mutants fail a section's CRC-32 (see `sqz_crc`
//! for the payload parsers behind it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use squeeze::format::sqz::{decode, summarize, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = decode(data, &limits);
    let _ = summarize(data, &limits);
});
