//! Shared by the integration tests: the testapp binary and the Docker image.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The berth-testapp binary, built once per test process.
pub fn testapp() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["build", "-p", "berth-testapp"])
            .current_dir(workspace_root())
            .output()
            .expect("run cargo build -p berth-testapp");
        let bin = target_dir().join("debug").join("berth-testapp");
        if !out.status.success() {
            // A workspace being edited by others can fail to load for a
            // moment; an already built testapp is as good.
            let why = String::from_utf8_lossy(&out.stderr);
            assert!(bin.is_file(), "building berth-testapp failed: {why}");
            eprintln!("NOTE: cargo build -p berth-testapp failed, using the existing binary: {why}");
        }
        assert!(bin.is_file(), "no testapp at {}", bin.display());
        bin
    })
    .clone()
}

/// Whether a Docker engine answers. Without one, the docker tests fail
/// unless BERTH_SKIP_DOCKER=1, and then say SKIPPED with the reason.
pub fn docker_available() -> bool {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = OK.get_or_init(|| {
        match Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
        {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(format!("cannot run docker: {e}")),
        }
    });
    match r {
        Ok(()) => true,
        Err(why) => {
            let skip = std::env::var("BERTH_SKIP_DOCKER").is_ok_and(|v| v == "1");
            assert!(
                skip,
                "no Docker engine ({why}); set BERTH_SKIP_DOCKER=1 to skip the docker tests explicitly"
            );
            // Straight to the file descriptor: libtest's capture would hide
            // an eprintln! of a passing test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: docker tests: no Docker engine ({why}); BERTH_SKIP_DOCKER=1"
            );
            false
        }
    }
}

pub const TEST_IMAGE: &str = "berth-testapp:latest";

/// Builds `berth-testapp:latest` with scripts/build-test-image when missing.
pub fn ensure_test_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new(workspace_root().join("scripts/build-test-image"))
            .arg("--if-missing")
            .current_dir(workspace_root())
            .status()
            .expect("run scripts/build-test-image");
        assert!(status.success(), "scripts/build-test-image failed");
    });
}

/// Removes every container carrying `label=value` (a test's leftovers).
pub fn remove_labelled(label: &str, value: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}={value}")])
        .output();
    if let Ok(o) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
    }
}
