//! A run's output directory: held by one run at a time, cleared of a previous run's
//! files, and of temporary files a killed run left.
//!
//! - **Lock.** A run holds `.squeeze.lock` in the directory (an OS file lock, with the
//!   holder's process id written in it) from its first check to its end. A second run
//!   into the same directory is refused at once, naming the process. The OS drops the
//!   lock when its process ends however it ends, so the lock of a killed run is stale
//!   and simply taken over; the file is removed when a run ends normally.
//! - **One run's files.** Every file a run writes is first named in `.squeeze-files`
//!   (before it is written, so a killed run's files are named too). The next run
//!   removes the files named there, and `report.json`, `report.md` and the stage files
//!   an older `report.json` lists, before it writes anything: the directory never holds
//!   two runs' files. Other files in the directory are left alone.
//! - **Temporary files.** [`crate::format::write_atomic`] writes `.NAME.tmp-PID-N` and
//!   renames it; a run killed in between leaves it. Those whose process is gone are
//!   removed when a run takes the directory (and when the same file is written again).
//! - **Inputs.** A model file inside the output directory is refused up front: the run
//!   would overwrite or remove it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name.
pub const LOCK: &str = ".squeeze.lock";

/// The list of the files the run writes, one name a line.
pub const MANIFEST: &str = ".squeeze-files";

/// Why a run cannot use its output directory.
#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error("output directory '{dir}' is in use by another squeeze run (process {pid}; lock file {lock}); wait for it to finish, or choose another --out-dir")]
    Busy { dir: PathBuf, pid: String, lock: PathBuf },
    #[error("cannot write to the output directory '{dir}': {source}; choose a writable --out-dir")]
    Unwritable { dir: PathBuf, source: io::Error },
    #[error("the model '{input}' is inside the output directory '{dir}', whose files this run replaces; move it elsewhere or choose another --out-dir")]
    InputInside { input: PathBuf, dir: PathBuf },
}

/// The output directory, held for the run (released when dropped).
#[derive(Debug)]
pub struct Claim {
    dir: PathBuf,
    lock: Option<File>,
    /// The directory did not exist before: removed again if the run leaves it empty.
    created: bool,
}

impl Claim {
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Unlink while holding the lock, then close (a run waiting on the old file sees
        // it gone and makes a new one).
        if let Some(lock) = self.lock.take() {
            let _ = fs::remove_file(self.dir.join(LOCK));
            drop(lock);
        }
        if self.created {
            let manifest = self.dir.join(MANIFEST);
            let only_manifest = fs::read_dir(&self.dir).is_ok_and(|d| d.filter_map(Result::ok).all(|e| e.path() == manifest));
            if only_manifest {
                let _ = fs::remove_file(&manifest);
                let _ = fs::remove_dir(&self.dir);
            }
        }
    }
}

/// Whether process `pid` is alive (on Linux, from `/proc`; elsewhere every process is
/// taken as alive, so nothing of a live run is ever removed).
pub fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// The process id in a temporary name `.NAME.tmp-PID-N`, or in a verb's scratch
/// directory `.squeeze-PASS-PID`.
fn temp_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    if let Some(i) = name.rfind(".tmp-") {
        let (pid, n) = name[i + 5..].split_once('-')?;
        n.parse::<u64>().ok()?;
        return pid.parse().ok();
    }
    if name.starts_with(".squeeze-") && name != MANIFEST {
        return name.rsplit('-').next()?.parse().ok();
    }
    None
}

/// Removes the temporary files (and verbs' scratch directories) in `dir` whose process
/// is gone; `only` limits it to the temporary files of one target name. Returns how
/// many were removed.
pub fn clean_stale_temps(dir: &Path, only: Option<&str>) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(target) = only
            && !name.starts_with(&format!(".{target}.tmp-"))
        {
            continue;
        }
        let Some(pid) = temp_pid(&name) else { continue };
        if pid_alive(pid) {
            continue;
        }
        let path = e.path();
        let gone = if e.file_type().is_ok_and(|t| t.is_dir()) { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed += usize::from(gone.is_ok());
    }
    removed
}

/// Takes `dir` for a run: refuses a model among `inputs` inside it, creates it, locks
/// it (refused at once while another live run holds it), removes stale temporary files
/// and the previous run's files.
pub fn claim(dir: &Path, inputs: &[&Path]) -> Result<Claim, OutDirError> {
    if let Ok(d) = fs::canonicalize(dir) {
        for input in inputs {
            if let Ok(i) = fs::canonicalize(input)
                && i.starts_with(&d)
            {
                return Err(OutDirError::InputInside { input: input.to_path_buf(), dir: dir.to_path_buf() });
            }
        }
    }
    let unwritable = |source| OutDirError::Unwritable { dir: dir.to_path_buf(), source };
    let created = !dir.exists();
    fs::create_dir_all(dir).map_err(unwritable)?;
    let lock_path = dir.join(LOCK);
    let file = loop {
        let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(unwritable)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = if pid.trim().is_empty() { "unknown".to_string() } else { pid.trim().to_string() };
                return Err(OutDirError::Busy { dir: dir.to_path_buf(), pid, lock: lock_path });
            }
            Err(fs::TryLockError::Error(e)) => return Err(unwritable(e)),
        }
        // The file may have been removed by the run that held it, between our open and
        // our lock: then the lock is on a file nobody else will see; start again.
        if same_file(&f, &lock_path) {
            f.set_len(0).and_then(|()| f.rewind()).and_then(|()| writeln!(f, "{}", std::process::id())).map_err(unwritable)?;
            break f;
        }
    };
    // Made only now: dropping it removes the lock file, which a refused run must not.
    let claim = Claim { dir: dir.to_path_buf(), lock: Some(file), created };
    clean_stale_temps(dir, None);
    remove_previous_run(dir).map_err(unwritable)?;
    Ok(claim)
}

#[cfg(unix)]
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

/// A plain file name (no directory part, not `.` or `..`): what a manifest or a report
/// may name for removal.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\\')
}

/// Removes the files the previous run wrote (see the module docs).
fn remove_previous_run(dir: &Path) -> io::Result<()> {
    let mut names: Vec<String> = vec!["report.json".into(), "report.md".into()];
    if let Ok(text) = fs::read_to_string(dir.join(MANIFEST)) {
        names.extend(text.lines().map(str::to_string));
    }
    if let Ok(text) = fs::read_to_string(dir.join("report.json"))
        && let Ok(report) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(stages) = report["stages"].as_array()
    {
        names.extend(stages.iter().filter_map(|s| s["file"].as_str().map(str::to_string)));
    }
    for name in names.iter().filter(|n| plain_name(n) && n.as_str() != LOCK && n.as_str() != MANIFEST) {
        match fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match fs::remove_file(dir.join(MANIFEST)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names `path` (a file in a run's directory) in the directory's manifest, before it
/// is written.
pub fn record(path: &Path) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return Ok(()) };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let manifest = dir.join(MANIFEST);
    let name = name.to_string_lossy();
    if fs::read_to_string(&manifest).is_ok_and(|t| t.lines().any(|l| l == name)) {
        return Ok(());
    }
    let mut f = OpenOptions::new().create(true).append(true).open(&manifest)?;
    writeln!(f, "{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_and_their_processes() {
        assert_eq!(temp_pid(".model.sqz.tmp-1234-0"), Some(1234));
        assert_eq!(temp_pid(".report.json.tmp-77-12"), Some(77));
        assert_eq!(temp_pid(".squeeze-pruned-50-4321"), Some(4321));
        assert_eq!(temp_pid("model.sqz"), None);
        assert_eq!(temp_pid(".squeeze-files"), None);
        assert_eq!(temp_pid(".squeeze.lock"), None);
        assert!(pid_alive(std::process::id()));
        let dir = tempfile::tempdir().unwrap();
        // A pid far above Linux's pid_max: no such process.
        let dead = dir.path().join(".model.sqz.tmp-999999999-0");
        let live = dir.path().join(format!(".model.sqz.tmp-{}-0", std::process::id()));
        fs::write(&dead, b"x").unwrap();
        fs::write(&live, b"x").unwrap();
        fs::write(dir.path().join("keep.sqz"), b"x").unwrap();
        assert_eq!(clean_stale_temps(dir.path(), Some("other.sqz")), 0);
        assert_eq!(clean_stale_temps(dir.path(), None), 1);
        assert!(!dead.exists() && live.exists() && dir.path().join("keep.sqz").exists());
    }

    #[test]
    fn a_claim_is_exclusive_and_clears_the_previous_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let c = claim(&out, &[]).unwrap();
        assert_eq!(fs::read_to_string(out.join(LOCK)).unwrap().trim(), std::process::id().to_string());
        // The same process's second claim is refused (the OS lock is per open file).
        let e = claim(&out, &[]).unwrap_err().to_string();
        assert!(e.contains("in use by another squeeze run") && e.contains(&std::process::id().to_string()), "{e}");
        record(&out.join("baseline.safetensors")).unwrap();
        record(&out.join("baseline.safetensors")).unwrap();
        fs::write(out.join("baseline.safetensors"), b"x").unwrap();
        fs::write(out.join("report.json"), r#"{"stages": [{"file": "old.sqz"}, {"file": "../escape"}]}"#).unwrap();
        fs::write(out.join("old.sqz"), b"x").unwrap();
        fs::write(out.join("notes.txt"), b"mine").unwrap();
        fs::write(dir.path().join("escape"), b"outside").unwrap();
        assert_eq!(fs::read_to_string(out.join(MANIFEST)).unwrap(), "baseline.safetensors\n");
        drop(c);
        assert!(!out.join(LOCK).exists());
        let _c = claim(&out, &[]).unwrap();
        let mut left: Vec<String> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [LOCK, "notes.txt"]);
        assert!(dir.path().join("escape").exists());
        // A model inside the directory is refused.
        let e = claim(&out, &[&out.join("notes.txt")]).unwrap_err().to_string();
        assert!(e.contains("inside the output directory"), "{e}");
    }

    #[test]
    fn an_unused_new_directory_is_removed_again() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new");
        drop(claim(&out, &[]).unwrap());
        assert!(!out.exists());
        // A file where the directory should be: one clear error.
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let e = claim(&file.join("out"), &[]).unwrap_err().to_string();
        assert!(e.contains("cannot write to the output directory"), "{e}");
    }
}
