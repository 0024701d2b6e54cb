//! `berth sched bench` as a user runs it: the JSON report of each generator
//! shape has the documented members, strands nothing that fits an empty
//! host, and a saved workload replays to the same packing; bad specs name
//! the offending key.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["sched", "bench"])
        .args(args)
        .output()
        .expect("run berth sched bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shape_reports_honest_figures() {
    for shape in ["default", "bimodal", "memory", "gpu", "uniform"] {
        let spec = format!("hosts=200,tasks=2000,seed=2,shape={shape}");
        let (ok, stdout, stderr) = bench(&["--generate", &spec, "--json"]);
        assert!(ok, "{stderr}");
        let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        for key in [
            "hosts",
            "tasks",
            "placed",
            "unplaced",
            "unplaced_fitting",
            "hosts_used",
            "lower_bound_hosts",
            "seconds",
            "placements_per_s",
            "cpu_util",
            "mem_util",
        ] {
            assert!(r.get(key).is_some(), "{shape}: no {key} in {r}");
        }
        assert_eq!(r["unplaced_fitting"], 0, "{shape}: {r}");
        let used = r["hosts_used"].as_u64().unwrap();
        let bound = r["lower_bound_hosts"].as_u64().unwrap();
        assert!(bound <= used && used * 100 <= bound * 105, "{shape}: {r}");
    }
}

#[test]
fn a_saved_workload_replays_the_same_packing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.json");
    let file = file.to_str().unwrap();
    let (ok, generated, stderr) = bench(&[
        "--generate",
        "hosts=50,tasks=400,seed=3,shape=bimodal",
        "--save",
        file,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let (ok, replayed, stderr) = bench(&["--workload", file, "--seed", "3", "--json"]);
    assert!(ok, "{stderr}");
    let a: serde_json::Value = serde_json::from_str(generated.trim()).unwrap();
    let b: serde_json::Value = serde_json::from_str(replayed.trim()).unwrap();
    for key in ["placed", "hosts_used", "lower_bound_hosts", "unplaced_fitting"] {
        assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
    }
}

#[test]
fn bad_specs_name_the_key() {
    let (ok, _, stderr) = bench(&["--generate", "hosts=10,shape=round"]);
    assert!(!ok);
    assert!(stderr.contains("unknown shape 'round'"), "{stderr}");
    let (ok, _, stderr) = bench(&["--generate", "hosts=10,cores=4"]);
    assert!(!ok);
    assert!(stderr.contains("unknown key 'cores'"), "{stderr}");
}
