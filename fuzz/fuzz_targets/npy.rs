//! NumPy arrays: a `.npy` file, or a `.npz` archive (stored or deflated) read for
//! arrays `x` and `y` as `[data] dataset = "numpy"` does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"\x93NUMPY") {
        let _ = squeeze::data::npy::parse_npy(data, Path::new("fuzz.npy"));
    } else {
        let _ = squeeze::data::npy::parse_npz(data, Path::new("fuzz.npz"), &["x", "y"]);
    }
});
