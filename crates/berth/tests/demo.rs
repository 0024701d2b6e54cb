//! `berth demo` in its shortened mode, as CI runs it: the whole lifecycle
//! (cluster, services, load balancer, load, scale, load, teardown) must
//! succeed and report zero client-visible errors despite the flaky backend.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::process::Command;

#[test]
fn demo_quick_runs_the_whole_lifecycle() {
    let berth = env!("CARGO_BIN_EXE_berth");
    let testapp = std::path::Path::new(berth).with_file_name("berth-testapp");
    assert!(
        testapp.exists(),
        "{} is missing: build the workspace binaries first (scripts/test does)",
        testapp.display()
    );
    let out = Command::new(berth)
        .args(["demo", "--quick", "--driver", "process", "--connections", "8"])
        .output()
        .expect("run berth demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("before scaling") || l.starts_with("after scaling"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let tasks: u32 = cols[2].parse().unwrap();
        let rps: f64 = cols[3].parse().unwrap();
        let errors: u64 = cols[cols.len() - 1].parse().unwrap();
        assert!(tasks >= 3 && rps > 0.0, "{row}");
        assert_eq!(errors, 0, "client-visible errors through the load balancer: {row}");
    }
    assert!(stdout.contains("before scaling              3"), "{stdout}");
    assert!(stdout.contains("after scaling               6"), "{stdout}");
}
