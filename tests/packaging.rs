//! Packaging: the hardened systemd units (systemd-analyze), the
//! `cargo deb` metadata, the man pages and shell completions generated
//! from the command line, and the build commit in `vitals --version`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::run;
use common::{require, vitals_bin};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const UNITS: &[&str] = &["vitals", "vitals-relay"];

/// `vitals man --dir` into `<dir>/man1`, for `man` and systemd-analyze's
/// Documentation= check.
fn man_pages(dir: &Path) -> PathBuf {
    let man1 = dir.join("man1");
    let (ok, out) = run(Command::new(vitals_bin())
        .arg("man")
        .arg("--dir")
        .arg(&man1));
    assert!(ok, "vitals man --dir:\n{out}");
    man1
}

#[test]
fn systemd_units_are_hardened_and_pass_systemd_analyze() {
    let analyze = require("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    man_pages(dir.path());
    let mut copies = Vec::new();
    for unit in UNITS {
        let path = root().join(format!("deploy/systemd/{unit}.service"));
        let text = std::fs::read_to_string(&path).unwrap();
        let has = |line: &str| text.lines().any(|l| l.trim() == line);
        for want in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "RestrictSUIDSGID=yes",
            "MemoryDenyWriteExecute=yes",
            "SystemCallFilter=@system-service",
        ] {
            assert!(has(want), "{unit}.service: missing {want}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("ProtectHome=")),
            "{unit}.service: ProtectHome"
        );
        assert!(
            text.lines().any(|l| l.starts_with("StateDirectory=")),
            "{unit}.service: StateDirectory"
        );
        // systemd-analyze checks that ExecStart's binary exists: the one
        // this test run built stands in for /usr/bin/vitals.
        let copy = dir.path().join(format!("{unit}.service"));
        std::fs::write(
            &copy,
            text.replace("/usr/bin/vitals", &vitals_bin().display().to_string()),
        )
        .unwrap();
        copies.push(copy);
    }
    let (ok, out) = run(Command::new(&analyze)
        .arg("verify")
        .args(&copies)
        .env("MANPATH", dir.path()));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    // The exposure score of `systemd-analyze security` (0 = fully locked
    // down, 10 = unprotected): "OK" is below 5; these units stay under 2.
    for copy in &copies {
        let (ok, out) = run(Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(copy));
        assert!(ok, "systemd-analyze security:\n{out}");
        let score: f64 = out
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
        eprintln!(
            "systemd-analyze security {}: exposure {score}",
            copy.display()
        );
        assert!(score < 2.0, "{}: exposure {score}:\n{out}", copy.display());
    }
}

/// Files a `cargo deb` asset source names: a path or a `dir/*.ext` glob.
fn asset_files(source: &str) -> Vec<PathBuf> {
    let path = root().join(source);
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    match name.split_once('*') {
        Some((prefix, suffix)) => std::fs::read_dir(path.parent().unwrap())
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| {
                        let n = p.file_name().unwrap().to_string_lossy();
                        n.starts_with(prefix) && n.ends_with(suffix)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => [path].into_iter().filter(|p| p.exists()).collect(),
    }
}

/// The `[package.metadata.deb]` table parses, installs both units, the
/// binary, the configuration (a conffile), man pages and completions, and
/// every asset from the source tree exists. (`cargo deb` itself needs a
/// release build; deploy/build-deb.sh runs it, see README "Packaging".)
#[test]
fn cargo_deb_metadata_installs_the_units_binary_man_pages_and_completions() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let deb = manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]");
    for key in ["maintainer", "copyright", "section", "extended-description"] {
        assert!(deb.get(key).and_then(|v| v.as_str()).is_some(), "deb.{key}");
    }
    let units: Vec<&str> = deb["systemd-units"]
        .as_array()
        .expect("systemd-units")
        .iter()
        .map(|u| {
            let dir = u["unit-scripts"].as_str().unwrap();
            let name = u["unit-name"].as_str().unwrap();
            assert!(
                root().join(dir).join(format!("{name}.service")).is_file(),
                "unit {name} not in {dir}"
            );
            name
        })
        .collect();
    assert_eq!(units, UNITS, "both units packaged");
    let scripts = deb["maintainer-scripts"].as_str().unwrap();
    assert!(
        root().join(scripts).is_dir(),
        "maintainer-scripts {scripts}"
    );

    let mut dests = Vec::new();
    for asset in deb["assets"].as_array().expect("assets") {
        let a = asset.as_array().unwrap();
        let (source, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        assert!(!dest.starts_with('/'), "{dest}: relative to /");
        dests.push(dest.to_string());
        // target/ is made by the build (binary) and deploy/build-deb.sh
        // (man pages, completions).
        if !source.starts_with("target/") {
            assert!(
                !asset_files(source).is_empty(),
                "asset {source} matches no file"
            );
        }
    }
    for want in [
        "usr/bin/",
        "etc/vitals/vitals.toml",
        "usr/share/man/man1/",
        "usr/share/bash-completion/completions/vitals",
        "usr/share/zsh/vendor-completions/_vitals",
        "usr/share/fish/vendor_completions.d/vitals.fish",
    ] {
        assert!(
            dests.iter().any(|d| d == want),
            "no asset installed at {want}"
        );
    }
    let conf: Vec<&str> = deb["conf-files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(conf.contains(&"/etc/vitals/vitals.toml"), "{conf:?}");
    // The packaged configuration is valid, as the unit's ExecStartPre checks.
    let (ok, out) = run(Command::new(vitals_bin())
        .arg("check")
        .arg("--config")
        .arg(root().join("deploy/debian/vitals.toml")));
    assert!(ok, "vitals check deploy/debian/vitals.toml:\n{out}");
    // The build script names the files the metadata installs.
    let script = std::fs::read_to_string(root().join("deploy/build-deb.sh")).unwrap();
    for generated in [
        "target/assets/man",
        "completions/_vitals",
        "completions/vitals.fish",
    ] {
        assert!(
            script.contains(generated),
            "build-deb.sh does not make {generated}"
        );
    }
}

#[test]
fn completions_are_generated_for_every_subcommand_and_flag() {
    let completions = |shell: &str| {
        let (ok, out) = run(Command::new(vitals_bin()).args(["completions", shell]));
        assert!(ok, "vitals completions {shell}:\n{out}");
        out
    };
    let bash = completions("bash");
    for word in [
        "run",
        "check",
        "relay",
        "backtest",
        "--web.listen-address",
        "--config",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    // bash loads it and registers the completion function.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vitals");
    std::fs::write(&file, &bash).unwrap();
    let (ok, out) = run(Command::new(require("bash"))
        .arg("-c")
        .arg(format!("source {} && complete -p vitals", file.display())));
    assert!(ok && out.contains("vitals"), "bash: {out}");
    assert!(completions("zsh").starts_with("#compdef vitals"));
    assert!(completions("fish").contains("complete -c vitals"));
    let (ok, _) = run(Command::new(vitals_bin()).args(["completions", "no-such-shell"]));
    assert!(!ok, "an unknown shell is refused");
}

#[test]
fn man_pages_are_generated_for_vitals_and_each_subcommand() {
    let (ok, page) = run(Command::new(vitals_bin()).arg("man"));
    assert!(ok, "{page}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH vitals 1"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let man1 = man_pages(dir.path());
    for name in [
        "vitals",
        "vitals-run",
        "vitals-check",
        "vitals-relay",
        "vitals-backtest",
    ] {
        let file = man1.join(format!("{name}.1"));
        assert!(file.is_file(), "{name}.1 not written");
    }
    // man renders it without complaint.
    let (ok, out) = run(Command::new(require("man"))
        .args(["--warnings", "-l", "-P", "cat"])
        .arg(man1.join("vitals-run.1"))
        .env("MANWIDTH", "100"));
    assert!(
        ok && out.contains("--web.listen-address"),
        "man vitals-run:\n{out}"
    );
    assert!(!out.contains("warning"), "man warnings:\n{out}");
}

/// `vitals --version` names the commit checked out when it was built: the
/// build script re-runs when HEAD moves, so an incremental build after a
/// commit or checkout does not keep the previous commit.
#[test]
fn version_names_the_checked_out_commit() {
    // (Not skipped when BUILD_VITALS_COMMIT is set: cargo test sets it for
    // the test process from the build script's output. A build in a git
    // checkout with an explicit BUILD_VITALS_COMMIT of another commit
    // fails here, rightly: it reports a commit that is not the code.)
    let (ok, head) = run(Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root()));
    if !ok {
        eprintln!("skipped: not a git checkout ({head})");
        return;
    }
    let (ok, version) = run(Command::new(vitals_bin()).arg("--version"));
    assert!(ok, "{version}");
    assert!(
        version.contains(&format!("({})", head.trim())),
        "vitals --version says {version:?}, HEAD is {}",
        head.trim()
    );
}

/// The container build has no .git (.dockerignore): the commit comes in as
/// a build argument, which compose passes.
#[test]
fn container_builds_take_the_commit_as_a_build_argument() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == ".git"),
        ".dockerignore keeps .git out"
    );
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("ARG BUILD_VITALS_COMMIT"),
        "Dockerfile ARG"
    );
    assert!(
        dockerfile.contains("ENV BUILD_VITALS_COMMIT=${BUILD_VITALS_COMMIT}"),
        "Dockerfile hands the argument to build.rs"
    );
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains("BUILD_VITALS_COMMIT: ${VITALS_COMMIT:-unknown}"),
        "compose passes VITALS_COMMIT as the build argument"
    );
    let build = std::fs::read_to_string(root().join("build.rs")).unwrap();
    assert!(build.contains("rerun-if-env-changed=BUILD_VITALS_COMMIT"));
}
