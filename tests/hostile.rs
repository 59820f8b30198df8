//! Hostile input and misuse (issue 19): readers under an address-space limit, absurd
//! recipe values refused up front, and output directories shared between runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{assert_error, Dir, Output};

/// 2 GB of address space: more than any reader needs for these tiny files, far less
/// than what the bugs reserved.
const LIMIT_KIB: u64 = 2_000_000;

/// Runs the binary under `ulimit -v kib` (a child `sh` sets the limit, then execs it).
pub fn squeeze_limited(args: &[&str], kib: u64) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_squeeze"))
        .args(args)
        .env_remove("SQUEEZE_DATA")
        .output()
        .expect("run squeeze under sh");
    use std::os::unix::process::ExitStatusExt;
    let o = Output {
        // A signal (abort, stack overflow) shows as 128 + its number, as a shell says it.
        code: out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!o.stderr.contains("panicked"), "squeeze panicked: {}", o.stderr);
    o
}

fn arch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models/fmnist-mlp-sklearn.arch.toml")
}

/// `squeeze import FILE --arch ... --out o.safetensors` under the limit; asserts one
/// clean error naming `needle`, and no output.
fn import_fails_cleanly(d: &Dir, file: &Path, needle: &str) {
    let out = d.path("o.safetensors");
    let o = squeeze_limited(&["import", file.to_str().unwrap(), "--arch", arch().to_str().unwrap(), "--out", out.to_str().unwrap()], LIMIT_KIB);
    assert_error(&o, needle);
    assert!(!out.exists());
}

/// A legacy (pre-1.6) torch.save file whose object is the pickle `root`: the magic
/// number, protocol version 1001, empty system info, then `root`.
fn legacy_file(root: &[u8]) -> Vec<u8> {
    let mut b = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    b.extend_from_slice(b"\x80\x02M\xe9\x03.\x80\x02}.");
    b.extend_from_slice(root);
    b
}

/// Issue 19, item 1: a 224-byte zip whose entry claims 3.75 GiB was reserved whole
/// (exit 134 under a memory limit). The claim is only a hint now.
#[test]
fn pth_entry_claiming_gigabytes_is_one_error_under_a_memory_limit() {
    let d = Dir::new();
    let file = d.path("claims.pth");
    let b64 = "UEsDBBQAAAAAAEsKhl2LGJ4HAgAAAAIAAAAKAAAAYS9kYXRhLnBrbH0uUEsDBBQAAAAAAEsKhl2FPeMZBgAAAAYAAAALAAAAYS9ieXRlb3JkZXJsaXR0bGVQSwECFAMUAAAAAABLCoZdixieBwIAAAACAAAACgAAAAAAAAAAAAAAgAEAAAAAYS9kYXRhLnBrbFBLAQIUAxQAAAAAAEsKhl2FPeMZBgAAAAAAAPALAAAAAAAAAAAAAACAASoAAABhL2J5dGVvcmRlclBLBQYAAAAAAgACAHEAAABZAAAAAAA=";
    let bytes = base64::decode(b64).unwrap();
    assert_eq!(bytes.len(), 224);
    std::fs::write(&file, &bytes).unwrap();
    import_fails_cleanly(&d, &file, "byteorder");
    // The real model imports under the same limit (the limit itself is not the failure).
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/models/fmnist-mlp-sklearn.pth");
    let out = d.path("good.safetensors");
    let o = squeeze_limited(&["import", good.to_str().unwrap(), "--arch", arch().to_str().unwrap(), "--out", out.to_str().unwrap()], LIMIT_KIB);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// Issue 19, item 2: 40 rounds of GET, GET, TUPLE2, PUT (under 300 bytes) doubled the value
/// each round by copying (2⁴⁰ values, abort). Memo references share now, and the
/// expanded size is bounded.
#[test]
fn pickle_billion_laughs_is_one_error_under_a_memory_limit() {
    let mut pkl = b"\x80\x02]q\x00".to_vec();
    for _ in 0..40 {
        pkl.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    pkl.push(b'.');
    assert!(pkl.len() < 300);
    let d = Dir::new();
    let file = d.path("laughs.pth");
    std::fs::write(&file, legacy_file(&pkl)).unwrap();
    let t = std::time::Instant::now();
    import_fails_cleanly(&d, &file, "expands to more than");
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

/// Issue 19, item 3: a million nested lists overflowed the stack when the value was
/// dropped (signal 11 or 6). Nesting is capped where values are built.
#[test]
fn deeply_nested_pickle_is_one_error_not_a_stack_overflow() {
    let n = 1_000_000;
    let mut pkl = b"\x80\x02".to_vec();
    pkl.extend(std::iter::repeat_n(b']', n));
    pkl.extend(std::iter::repeat_n(b'a', n - 1));
    pkl.push(b'.');
    let d = Dir::new();
    let file = d.path("deep.pth");
    std::fs::write(&file, legacy_file(&pkl)).unwrap();
    import_fails_cleanly(&d, &file, "nests containers more than 256 deep");
    // Nested tuples (built from a MARK) are capped the same way.
    let mut pkl = b"\x80\x02".to_vec();
    for _ in 0..n / 2 {
        pkl.extend_from_slice(b"(");
    }
    pkl.extend_from_slice(b"N");
    for _ in 0..n / 2 {
        pkl.extend_from_slice(b"t");
    }
    pkl.push(b'.');
    std::fs::write(&file, legacy_file(&pkl)).unwrap();
    import_fails_cleanly(&d, &file, "nests containers more than 256 deep");
}
