//! Measurement helpers: peak memory, a machine description, the build's version,
//! robust summaries of timing samples and SHA-256 digests.

use sha2::{Digest, Sha256};

/// Makes glibc hand large freed buffers straight back to the system. glibc raises its
/// mmap threshold each time a large block is freed (up to 32 MB), after which blocks
/// of that size come from the heap and stay resident when freed; a run that reads,
/// writes and frees a model tensor by tensor would then keep the freed tensors in its
/// peak memory. Fixing the threshold at 256 KiB keeps every larger buffer mapped on
/// its own and unmapped when freed. Does nothing off glibc.
pub fn release_freed_memory_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; it is called before any
        // other thread exists (at the start of main).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        }
    }
}

/// Peak resident set size of this process in bytes (`VmHWM` from `/proc/self/status`),
/// or `None` where that is not available (non-Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The SIMD features the kernels care about, in the order they are listed.
const FLAGS: [&str; 3] = ["avx2", "avx512f", "avx512_vnni"];

/// A one-line description of the machine, e.g.
/// `"2 cores, AMD EPYC 9R14 96-Core Processor (avx2, avx512f, avx512_vnni)"`: the
/// cores this process may use, the CPU model from `/proc/cpuinfo` (or `unknown CPU`)
/// and which of avx2 / avx512f / avx512_vnni the CPU flags list, then the level squeeze's
/// kernels use ([`crate::runtime::isa::description`], e.g. `"; kernels avx512"`).
pub fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
    };
    let model = field("model name").filter(|m| !m.is_empty()).unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let present: Vec<&str> = FLAGS.into_iter().filter(|f| flags.split(' ').any(|g| g == *f)).collect();
    let mut s = format!("{cores} core{}, {model}", if cores == 1 { "" } else { "s" });
    if !present.is_empty() {
        s += &format!(" ({})", present.join(", "));
    }
    s + &format!("; kernels {}", crate::runtime::isa::description())
}

/// The crate version plus the git commit it was built from, e.g. `"0.1.0+31fc1df0ab"`
/// (`"0.1.0+unknown"` when built outside a git checkout).
pub fn squeeze_version() -> String {
    format!("{}+{}", env!("CARGO_PKG_VERSION"), env!("SQUEEZE_GIT_COMMIT"))
}

/// A robust summary of repeated measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median sample.
    pub median: f64,
    /// Half the inter-quartile range, `(Q3 − Q1) / 2`: about half the samples lie
    /// within `median ± spread`.
    pub spread: f64,
}

/// Median and half inter-quartile range of `samples` (sorted in place). Quartiles
/// interpolate linearly between order statistics (Q1 at rank `0.25 (n − 1)`). Empty
/// input gives NaN for both; NaN samples sort last.
pub fn median_and_spread(samples: &mut [f64]) -> Spread {
    if samples.is_empty() {
        return Spread { median: f64::NAN, spread: f64::NAN };
    }
    samples.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (samples.len() - 1) as f64;
        let (lo, frac) = (pos.floor() as usize, pos.fract());
        let hi = (lo + 1).min(samples.len() - 1);
        samples[lo] + (samples[hi] - samples[lo]) * frac
    };
    Spread { median: q(0.5), spread: (q(0.75) - q(0.25)) / 2.0 }
}

/// The SHA-256 digest of `bytes` as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_on_known_samples() {
        assert_eq!(median_and_spread(&mut [5.0, 1.0, 4.0, 2.0, 3.0]), Spread { median: 3.0, spread: 1.0 });
        assert_eq!(median_and_spread(&mut [4.0, 1.0, 3.0, 2.0]), Spread { median: 2.5, spread: 0.75 });
        assert_eq!(median_and_spread(&mut [7.0]), Spread { median: 7.0, spread: 0.0 });
        assert!(median_and_spread(&mut []).median.is_nan());
    }

    #[test]
    fn machine_version_rss_sha() {
        let m = machine_description();
        assert!(m.contains("core"), "{m}");
        assert!(squeeze_version().starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")));
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
