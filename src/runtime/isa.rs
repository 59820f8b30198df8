//! Which instruction sets squeeze's own kernels use: what the CPU has, capped by the
//! environment variable `SQUEEZE_ISA` (`scalar`, `avx2` or `avx512`). Every kernel asks
//! here instead of detecting features itself, so one machine can run, and test, every
//! path: `SQUEEZE_ISA=avx2 cargo test` on an AVX-512 machine runs the AVX2 kernels,
//! `SQUEEZE_ISA=scalar` the portable ones. Results do not change, only speed (integer
//! kernels are exact; float kernels agree to rounding).
//!
//! The f32 matrix products of the `gemm` crate pick their own kernels and are not
//! capped: they follow the CPU.

use std::sync::OnceLock;

/// An instruction-set level, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable code, the reference every other path must equal.
    Scalar,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 F, BW and VNNI (with AVX2 and FMA).
    Avx512,
}

/// The environment variable that caps the level.
pub const ENV: &str = "SQUEEZE_ISA";

impl Isa {
    /// The name `SQUEEZE_ISA` takes: `"scalar"`, `"avx2"`, `"avx512"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a `SQUEEZE_ISA` value.
    pub fn parse(s: &str) -> Result<Isa, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" => Ok(Isa::Avx512),
            other => Err(format!("{ENV}={other}: expected scalar, avx2 or avx512")),
        }
    }
}

/// The highest level this CPU supports.
pub fn cpu() -> Isa {
    static CPU: OnceLock<Isa> = OnceLock::new();
    *CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            match (avx2, avx512) {
                (true, true) => Isa::Avx512,
                (true, false) => Isa::Avx2,
                _ => Isa::Scalar,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Scalar
    })
}

/// The cap set by `SQUEEZE_ISA`, if any (`Err` for a value that is not a level; the
/// command line refuses it at start, the library then ignores it).
pub fn cap() -> Result<Option<Isa>, String> {
    match std::env::var(ENV) {
        Ok(v) if !v.trim().is_empty() => Isa::parse(&v).map(Some),
        _ => Ok(None),
    }
}

/// The level the kernels use: the CPU's, capped by `SQUEEZE_ISA` (read once).
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| match cap() {
        Ok(Some(c)) => c.min(cpu()),
        _ => cpu(),
    })
}

/// Whether the AVX2+FMA kernels may run.
#[inline]
pub fn avx2() -> bool {
    active() >= Isa::Avx2
}

/// Whether the AVX-512 VNNI kernels may run.
#[inline]
pub fn avx512() -> bool {
    active() >= Isa::Avx512
}

/// For reports and `bench`: the level in use, and why when it is below the CPU's,
/// e.g. `"avx2 (SQUEEZE_ISA; the CPU has avx512)"`.
pub fn description() -> String {
    let (a, c) = (active(), cpu());
    if a < c { format!("{} ({ENV}; the CPU has {})", a.name(), c.name()) } else { a.name().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Isa::parse("AVX2"), Ok(Isa::Avx2));
        assert_eq!(Isa::parse(" scalar "), Ok(Isa::Scalar));
        assert!(Isa::parse("sse9").unwrap_err().contains("expected scalar, avx2 or avx512"));
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(active() <= cpu());
        assert_eq!(avx512(), active() == Isa::Avx512);
    }
}
