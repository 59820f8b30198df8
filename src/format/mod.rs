//! File formats: the native `.sqz` container ([`sqz`]), dense models as
//! [`safetensors`], ONNX models ([`onnx`]), PyTorch state dicts ([`pytorch`], read with the restricted
//! [`pickle`] reader) mapped by an architecture description ([`arch`]), and atomic
//! file writes.

pub mod arch;
pub mod hf;
pub mod onnx;
pub mod pickle;
pub mod pytorch;
pub mod safetensors;
pub mod sqz;

pub use sqz::{
    FormatError, Limits, MAX_CENTROIDS, SectionSummary, SqzModel, StoredTensor, Values, decode,
    EncodeOptions, encode, encode_with, read_sqz, summarize,
};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether `bytes` start with the `.sqz` magic (to sniff a file's type; the rest is
/// not checked).
pub fn is_sqz(bytes: &[u8]) -> bool {
    bytes.starts_with(&sqz::MAGIC)
}

/// Writes `bytes` to `path` atomically: into a temporary file `.{name}.tmp-{pid}-{n}`
/// in the same directory, fsynced, then renamed over `path`. Readers see either the
/// old file or the complete new one; the temporary file is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes), |e| e)
}

/// As [`write_atomic`], with the content written by `write` into the temporary file
/// (so a large file can be streamed); `io` turns I/O errors into the caller's error.
pub fn write_atomic_with<E>(path: &Path, write: impl FnOnce(&mut File) -> Result<(), E>, io: impl Fn(io::Error) -> E) -> Result<(), E> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' has no file name", path.display()),
        ))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A killed writer's temporary files of this target (their process gone) go first.
    crate::outdir::clean_stale_temps(dir, Some(&name.to_string_lossy()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(&io)?;
        write(&mut f)?;
        f.sync_all().map_err(&io)?;
        drop(f);
        fs::rename(&tmp, path).map_err(&io)
    })();
    match result {
        Ok(()) => {
            // Make the rename durable; not every platform can open a directory.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_target_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.sqz");
        fs::write(&target, b"old contents, longer than the new").unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["model.sqz".to_string()]);

        // A failing rename (target is a non-empty directory) cleans up the temp file.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();
        assert!(write_atomic(&blocked, b"data").is_err());
        let count = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(count, 2, "only model.sqz and blocked/ remain");
    }

    #[test]
    fn sniffs_magic() {
        assert!(is_sqz(&sqz::MAGIC));
        assert!(!is_sqz(b"PK\x03\x04"));
        assert!(!is_sqz(&sqz::MAGIC[..3]));
    }
}
