//! Bakes the git commit into the binary for `vitals_build_info` and
//! `vitals --version`.
//!
//! The commit comes from `BUILD_VITALS_COMMIT` when set (container builds:
//! the Dockerfile's build argument, since .dockerignore keeps .git out of
//! the context), else from `git rev-parse`. Cargo re-runs this script when
//! HEAD moves: on a commit, a checkout or a merge (the files git changes
//! then: HEAD, the branch's ref, packed-refs), so an incremental build never
//! reports the commit of an earlier build.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BUILD_VITALS_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let from_env = std::env::var("BUILD_VITALS_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c != "unknown");
    let commit = from_env.or_else(|| {
        // `--git-path` resolves worktrees (.git is a file there) and the
        // common directory that holds the refs.
        let path = |name: &str| git(&["rev-parse", "--git-path", name]);
        if let Some(head) = path("HEAD") {
            println!("cargo:rerun-if-changed={head}");
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|b| path(&b)) {
            // The branch's loose ref (refs/heads/<branch>), even when it
            // does not exist (packed): Cargo then re-runs this script on
            // every build, which stays right when git writes it again.
            println!("cargo:rerun-if-changed={branch}");
        }
        if let Some(packed) = path("packed-refs").filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={packed}");
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo:rustc-env=BUILD_VITALS_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
