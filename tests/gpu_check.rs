//! `scripts/gpu-check.sh --dry-run`: the GPU check's plumbing on this CPU-only machine. Every
//! step runs (or is recorded as skipped, with why), nothing fails, and exactly the eight
//! promised files come back, with a summary that names each step.

use std::process::Command;

#[test]
fn gpu_check_dry_run_runs_every_step_and_writes_eight_files() {
    let out = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new("bash")
        .arg(format!("{root}/scripts/gpu-check.sh"))
        .arg("--dry-run")
        .env("OUT", out.path())
        .env("NCF_BIN", env!("CARGO_BIN_EXE_ncf"))
        .env_remove("NCF_REQUIRE_GPU")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "gpu-check --dry-run failed:\n{log}\n{}", String::from_utf8_lossy(&run.stderr));
    let mut files: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ml1m-large.jsonl",
            "ml1m.jsonl",
            "ml20m.jsonl",
            "nvidia-smi.txt",
            "res-usage.txt",
            "steps.log",
            "summary.json",
            "torch.jsonl"
        ]
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["dry_run"], true);
    assert_eq!(summary["failed"], serde_json::json!([]), "{log}");
    let steps = summary["steps"].as_array().unwrap();
    let status = |name: &str| steps.iter().find(|s| s["name"] == name).map(|s| s["exit"].clone());
    for name in [
        "test-parity",
        "test-checks",
        "torch-ml1m",
        "torch-ml1m-large",
        "gpu-bench",
        "memcheck",
        "res-usage",
        "nvidia-smi",
    ] {
        assert!(status(name).is_some(), "no step `{name}` in the summary:\n{log}");
    }
    assert_eq!(status("train-ml20m-neumf8"), Some(serde_json::json!(0)), "{log}");
    // The training steps really ran and wrote one JSON line per epoch.
    for (name, file, epochs) in [
        ("train-ml1m", "ml1m.jsonl", 1),
        ("train-ml1m-large", "ml1m-large.jsonl", 2),
        ("train-ml20m", "ml20m.jsonl", 1),
    ] {
        assert_eq!(status(name), Some(serde_json::json!(0)), "{name}:\n{log}");
        let lines = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert_eq!(lines.lines().count(), epochs, "{file}: {lines}");
    }
}
