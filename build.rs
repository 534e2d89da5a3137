//! Bakes the git commit into the binary for `vitals_build_info`.
use std::process::Command;

fn main() {
    let commit = std::env::var("BUILD_VITALS_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
        });
    println!(
        "cargo:rustc-env=BUILD_VITALS_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    println!("cargo:rerun-if-env-changed=BUILD_VITALS_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
}
