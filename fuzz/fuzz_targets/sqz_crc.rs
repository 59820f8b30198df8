//! The `.sqz` reader with every section's CRC-32 recomputed after mutation, so that
//! mutants reach the META/TENS payload parsers instead of failing the checksum.
#![no_main]
use libfuzzer_sys::fuzz_target;
use squeeze::format::sqz::{decode, summarize, Limits};

/// Rewrites the CRC of each `kind ‖ u32 length ‖ payload ‖ u32 crc` section after the
/// 8-byte header, as far as the framing holds.
fn fix_crcs(b: &mut [u8]) {
    let mut pos = 8;
    while pos + 8 <= b.len() {
        let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let Some(end) = (pos + 8).checked_add(len).filter(|e| e + 4 <= b.len()) else { return };
        let mut h = crc32fast::Hasher::new();
        h.update(&b[pos..pos + 4]);
        h.update(&b[pos + 8..end]);
        b[end..end + 4].copy_from_slice(&h.finalize().to_le_bytes());
        pos = end + 4;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = data.to_vec();
    fix_crcs(&mut b);
    let limits = Limits::default();
    let _ = decode(&b, &limits);
    let _ = summarize(&b, &limits);
});
