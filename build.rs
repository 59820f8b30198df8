//! Records the git commit the crate is built from, for `report::squeeze_version`.
//!
//! Sets `SQUEEZE_GIT_COMMIT` to `git rev-parse --short=10 HEAD`, or `unknown` when git
//! or the repository is missing, and reruns when HEAD or a ref moves (worktrees
//! included: HEAD lives in the worktree's git dir, refs in the common dir).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SQUEEZE_GIT_COMMIT={commit}");
    if let (Some(git_dir), Some(common)) =
        (git(&["rev-parse", "--absolute-git-dir"]), git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]))
    {
        let (git_dir, common) = (PathBuf::from(git_dir), PathBuf::from(common));
        for p in [git_dir.join("HEAD"), common.join("refs/heads"), common.join("packed-refs")] {
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
