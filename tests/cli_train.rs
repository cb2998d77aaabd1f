//! `ncf train` / `ncf eval` end to end on a small generated split (no licensed data needed):
//! the TOML config, the summary JSON, checkpoints, and the refusal to overwrite.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// 30 users × 40 items; user u likes items (u + k·7) mod 40 for k in 0..6; the last liked item is
/// the test item, with 20 negatives drawn from items the user does not like.
fn toy_split(dir: &Path) {
    let (mut train, mut test, mut neg) = (String::new(), String::new(), String::new());
    for u in 0..30u32 {
        let liked: Vec<u32> = (0..6).map(|k| (u + k * 7) % 40).collect();
        for &i in &liked[..5] {
            writeln!(train, "{u}\t{i}\t5\t100").unwrap();
        }
        writeln!(test, "{u}\t{}\t5\t200", liked[5]).unwrap();
        let negs: Vec<String> = (0..40u32).filter(|j| !liked.contains(j)).take(20).map(|j| j.to_string()).collect();
        writeln!(neg, "({u},{})\t{}", liked[5], negs.join("\t")).unwrap();
    }
    std::fs::write(dir.join("toy.train.rating"), train).unwrap();
    std::fs::write(dir.join("toy.test.rating"), test).unwrap();
    std::fs::write(dir.join("toy.test.negative"), neg).unwrap();
}

fn ncf(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ncf")).args(args).output().unwrap()
}

#[test]
fn train_with_config_then_eval_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    toy_split(d.path());
    let p = |f: &str| d.path().join(f).display().to_string();
    std::fs::write(
        d.path().join("run.toml"),
        "model = \"neumf\"\nlayers = [16, 8, 4]\nepochs = 3\nbatch = 64\nlr = 0.01\n",
    )
    .unwrap();
    let data = d.path().display().to_string();
    let out = ncf(&[
        "train",
        "--config",
        &p("run.toml"),
        "--data",
        &data,
        "--epochs",
        "2",
        "--summary-json",
        &p("s.json"),
        "--save",
        &p("m.st"),
        "--metrics-jsonl",
        &p("m.jsonl"),
        "--plot",
        &p("curves.svg"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("s.json")).unwrap()).unwrap();
    for key in [
        "model",
        "factors",
        "layers",
        "epochs_run",
        "selected_epoch",
        "k",
        "test_hr",
        "test_ndcg",
        "valid_hr",
        "valid_ndcg",
        "best_test_hr",
        "seconds_per_epoch",
        "samples_per_second",
    ] {
        assert!(s.get(key).is_some(), "summary lacks `{key}`: {s}");
    }
    assert_eq!(s["epochs_run"], 2, "the command line overrides the config file");
    assert_eq!(s["layers"], serde_json::json!([16, 8, 4]), "the config file sets layers");
    assert_eq!(std::fs::read_to_string(p("m.jsonl")).unwrap().lines().count(), 2);
    let svg = std::fs::read_to_string(p("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("HR@10") && svg.matches("<polyline").count() == 5, "{svg}");

    // The checkpoint re-evaluates to the selected epoch's test metrics.
    let ev = ncf(&["eval", "--model", &p("m.st"), "--data", &data]);
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let line = String::from_utf8_lossy(&ev.stdout).to_string();
    assert!(line.contains(&format!("test HR@10 {:.4}", s["test_hr"].as_f64().unwrap())), "{line} vs {s}");

    // Outputs are never overwritten without --force, and nothing runs before the refusal.
    let again = ncf(&["train", "--data", &data, "--epochs", "1", "--save", &p("m.st")]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists; pass --force"));

    std::fs::write(d.path().join("bad.toml"), "learning_rate = 3\n").unwrap();
    let bad = ncf(&["train", "--config", &p("bad.toml"), "--data", &data]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad.toml: unknown key `learning_rate`"));

    let missing = ncf(&["train", "--data", &p("nowhere")]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nowhere"));
}

/// Without a driver, `--device cuda` is a clean error naming what is missing (exit 2, no
/// panic). On a machine with a GPU the probe passes and this test has nothing to check.
#[test]
fn device_cuda_without_a_gpu_names_what_is_missing() {
    if ncf_cuda::device::driver_present() {
        println!("skipped: a CUDA driver is present");
        return;
    }
    for cmd in [&["train", "--device", "cuda"][..], &["eval", "--popularity", "--device", "cuda"][..]] {
        let out = ncf(cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CUDA is not available: libcuda (the NVIDIA driver) could not be loaded"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `--sampler device` (batches drawn by `Backend::sample_batch`, as on a GPU) trains on the
/// CPU too: the same seed gives the same run, and the model learns (beats the popularity
/// baseline of the embedded sample, test HR@10 0.391).
#[test]
fn device_sampler_is_deterministic_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = dir.path().join(name);
        let o = ncf(&["train", "--epochs", "3", "--sampler", "device", "--summary-json", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        (v["test_hr"].as_f64().unwrap(), v["valid_hr"].as_f64().unwrap(), v["config"]["sampler"].clone())
    };
    let (a, b) = (run("a.json"), run("b.json"));
    println!("device sampler, 3 epochs: test HR@10 {:.4}, valid {:.4}", a.0, a.1);
    assert_eq!(a, b, "same seed, same run");
    assert_eq!(a.2, "device");
    assert!(a.0 > 0.43, "test HR@10 {} should beat popularity (0.391) clearly", a.0);
}

/// `--step reference` runs the plain op-by-op step. MF never splits its batch, so both steps
/// give the same numbers bit for bit; the two-lane step of GMF and NeuMF sums their dense
/// gradients per half, so their metrics may differ only by that rounding (here: the loss
/// within 1e-4 relative).
#[test]
fn step_reference_and_fast_agree() {
    let d = tempfile::tempdir().unwrap();
    toy_split(d.path());
    let data = d.path().display().to_string();
    let run = |model: &str, step: &str| -> Vec<serde_json::Value> {
        let out_path = d.path().join(format!("{model}-{step}.jsonl"));
        let path = out_path.display().to_string();
        let out = ncf(&[
            "train",
            "--data",
            &data,
            "--model",
            model,
            "--step",
            step,
            "--epochs",
            "3",
            "--batch",
            "64",
            "--layers",
            "16,8,4",
            "--lr",
            "0.01",
            "--metrics-jsonl",
            &path,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(&out_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let keys = ["loss", "valid_hr", "valid_ndcg", "test_hr", "test_ndcg"];
    let (fast, reference) = (run("mf", "fast"), run("mf", "reference"));
    assert_eq!(fast.len(), 3);
    for (f, r) in fast.iter().zip(&reference) {
        for k in keys {
            assert_eq!(f[k], r[k], "mf epoch {}: {k}", f["epoch"]);
        }
    }
    for model in ["gmf", "neumf"] {
        let (fast, reference) = (run(model, "fast"), run(model, "reference"));
        assert_eq!(fast.len(), 3);
        for (f, r) in fast.iter().zip(&reference) {
            let (a, b) = (f["loss"].as_f64().unwrap(), r["loss"].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "{model} epoch {}: loss {a} (fast) vs {b} (reference)",
                f["epoch"]
            );
        }
    }
    let bad = ncf(&["train", "--data", &data, "--step", "fused"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// A split folder with a missing file names that file.
#[test]
fn a_split_folder_missing_a_file_names_it() {
    let d = tempfile::tempdir().unwrap();
    toy_split(d.path());
    std::fs::remove_file(d.path().join("toy.test.negative")).unwrap();
    let out = ncf(&["train", "--data", &d.path().display().to_string(), "--epochs", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("toy.test.negative is missing"), "{err}");
}

/// `--stop-at-hr X` stops after the first epoch whose test HR reaches X and prints the time to
/// get there; a value never reached runs every epoch and says so.
#[test]
fn stop_at_hr_stops_at_the_first_epoch_that_reaches_it() {
    let out = ncf(&["train", "--epochs", "12", "--stop-at-hr", "0.45"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let test_hr: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .map(|l| l.split("test HR@10 ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap())
        .collect();
    let first = test_hr.iter().position(|&h| h >= 0.45).expect("reached within 12 epochs");
    assert_eq!(test_hr.len(), first + 1, "stopped right after the first epoch at or above 0.45: {test_hr:?}");
    let line = text.lines().find(|l| l.starts_with("time to test HR@10 >= 0.45:")).expect(&text);
    assert!(line.contains(&format!("reached at epoch {}", first + 1)), "{line}");

    let out = ncf(&["train", "--epochs", "2", "--stop-at-hr", "0.999"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("test HR@10 did not reach 0.999 in 2 epochs"), "{text}");
    let out = ncf(&["train", "--epochs", "1", "--stop-at-hr", "1.5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop_at_hr"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An id past 2³¹ − 1 in a split file (which would ask for a table of that many rows, past
/// what the GPU kernels address) is refused with the file, line and field, before anything is
/// allocated.
#[test]
fn an_id_beyond_2_31_is_refused_with_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    toy_split(d.path());
    let train = d.path().join("toy.train.rating");
    let mut text = std::fs::read_to_string(&train).unwrap();
    text.push_str("3000000000\t1\t5\t978300760\n");
    std::fs::write(&train, &text).unwrap();
    let line = text.lines().count();
    let out = ncf(&["train", "--data", &d.path().display().to_string(), "--epochs", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let want = format!("toy.train.rating:{line}: field `user`: `3000000000` is not an integer id in 0..=2147483647");
    assert!(err.contains(&want), "{err}");
}

/// `ncf train --test-negatives 999` on a ratings folder tests on exactly the split that
/// `ncf data split --test-negatives 999` writes (MLPerf's protocol): the same metrics, and
/// 999 negatives per test user.
#[test]
fn test_negatives_999_on_the_fly_equals_the_written_split() {
    let d = tempfile::tempdir().unwrap();
    let (raw, split) = (d.path().join("raw"), d.path().join("split"));
    let p = |x: &Path| x.display().to_string();
    let o = ncf(&["data", "synth", "--out", &p(&raw), "--users", "300", "--items", "3000", "--density", "0.02"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ncf(&["data", "split", "--input", &p(&raw), "--out", &p(&split), "--name", "s", "--test-negatives", "999"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let negs = std::fs::read_to_string(split.join("s.test.negative")).unwrap();
    assert!(negs.lines().all(|l| l.split('\t').count() == 1000), "999 negatives after (user,item)");
    let run = |data: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--data", data.to_str().unwrap(), "--epochs", "1"];
        args.extend_from_slice(extra);
        let o = ncf(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        text.lines().find(|l| l.starts_with("epoch")).unwrap().split(" [").next().unwrap().to_string()
    };
    let (on_the_fly, written) = (run(&raw, &["--test-negatives", "999"]), run(&split, &[]));
    assert_eq!(on_the_fly, written);
    assert_ne!(on_the_fly, run(&raw, &[]), "99 negatives give other test metrics");
}

/// `--lr-scaling sqrt` at batch 1,024 from `--lr 0.001` at the base batch 256 trains exactly
/// as `--lr 0.002` does (√4 = 2); linear as 0.004; and the run says which rate it used.
#[test]
fn lr_scaling_sets_the_rate_from_the_batch() {
    let epoch_line = |args: &[&str]| {
        let mut all = vec!["train", "--epochs", "1", "--batch", "1024"];
        all.extend_from_slice(args);
        let o = ncf(&all);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let line = out.lines().find(|l| l.starts_with("epoch")).unwrap().split(" [").next().unwrap().to_string();
        (line, String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (sqrt, err) = epoch_line(&["--lr", "0.001", "--lr-scaling", "sqrt"]);
    assert!(err.contains("learning rate 0.002000 (--lr 0.001 at batch 256, Sqrt scaling to batch 1024)"), "{err}");
    assert_eq!(sqrt, epoch_line(&["--lr", "0.002"]).0);
    assert_eq!(epoch_line(&["--lr", "0.001", "--lr-scaling", "linear"]).0, epoch_line(&["--lr", "0.004"]).0);
    assert_ne!(sqrt, epoch_line(&["--lr", "0.001"]).0);
}

/// `--model rating` on ML-100K: a seeded 80/10/10 split, RMSE/MAE per epoch, the summary's
/// `test_rmse`/`test_mae`; the same seed gives the same numbers; a rating outside 1..=5 is
/// refused naming the file.
#[test]
fn the_rating_model_trains_on_ml100k_and_reports_rmse_and_mae() {
    let Some(ml100k) = ncf_core::testenv::data_dir("ml-100k") else { return };
    let d = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let summary = d.path().join(name);
        let o = ncf(&[
            "train",
            "--model",
            "rating",
            "--data",
            ml100k.to_str().unwrap(),
            "--epochs",
            "3",
            "--batch",
            "1024",
            "--lr",
            "0.002",
            "--summary-json",
            summary.to_str().unwrap(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("valid RMSE") && out.contains("test RMSE"), "{out}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
        (v["test_rmse"].as_f64().unwrap(), v["test_mae"].as_f64().unwrap(), v["train_ratings"].as_u64().unwrap())
    };
    let (rmse, mae, n) = run("a.json");
    // A model that learned nothing (the global mean) scores about 1.12 RMSE on ML-100K.
    assert!(rmse < 1.0 && mae < rmse && mae > 0.5, "test RMSE {rmse}, MAE {mae}");
    assert_eq!(n, 80_000);
    assert_eq!(run("b.json"), (rmse, mae, n), "the same seed must give the same numbers");

    let bad = d.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("u.data"), "1\t1\t5\t881250949\n2\t1\t7\t881250950\n").unwrap();
    let o = ncf(&["train", "--model", "rating", "--data", bad.to_str().unwrap(), "--epochs", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("u.data:2: field `rating`: 7 is outside the declared range"), "{err}");

    // The per-user split cuts each user's ratings: other counts, every user tested.
    let summary = d.path().join("per-user.json");
    let o = ncf(&[
        "train",
        "--model",
        "rating",
        "--data",
        ml100k.to_str().unwrap(),
        "--epochs",
        "1",
        "--rating-split",
        "per-user",
        "--summary-json",
        summary.to_str().unwrap(),
        "--plot",
        d.path().join("curves.svg").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    assert_eq!((v["train_ratings"].as_u64(), v["test_ratings"].as_u64()), (Some(79_926), Some(10_037)), "{v}");
    // The residual report: every test rating in one true-rating bucket and one activity
    // bucket, and the buckets' squared errors add up to the test RMSE.
    for side in ["by_rating", "by_activity"] {
        let b = v["residuals"][side].as_array().unwrap_or_else(|| panic!("no residuals.{side}: {v}"));
        let n: u64 = b.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(n, 10_037, "{side}");
        let se: f64 = b.iter().map(|b| b["count"].as_f64().unwrap() * b["rmse"].as_f64().unwrap().powi(2)).sum();
        let rmse = (se / n as f64).sqrt();
        assert!((rmse - v["test_rmse"].as_f64().unwrap()).abs() < 1e-9, "{side}: {rmse} vs {}", v["test_rmse"]);
    }
    assert_eq!(v["residuals"]["by_rating"].as_array().unwrap().len(), 5);
    let svg = std::fs::read_to_string(d.path().join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("RMSE") && svg.contains("test residuals by true rating"));

    // Decoupled weight decay and an L2 penalty exclude each other.
    let o = ncf(&[
        "train",
        "--model",
        "rating",
        "--data",
        ml100k.to_str().unwrap(),
        "--l2",
        "0.001",
        "--weight-decay",
        "0.1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--weight-decay") && err.contains("--l2"), "{err}");

    // The rating trainer runs on the CPU only: asking for a GPU is refused, not ignored.
    let o = ncf(&["train", "--model", "rating", "--data", ml100k.to_str().unwrap(), "--device", "cuda"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("CPU only"), "{err}");

    // The implicit trainer follows a schedule on the CPU too: each epoch's rate is in the
    // metrics, halved every epoch here.
    let jsonl = d.path().join("implicit.jsonl");
    let args =
        ["train", "--epochs", "3", "--lr", "0.004", "--lr-schedule", "step", "--lr-step", "1", "--lr-gamma", "0.5"];
    let o = ncf(&[&args[..], &["--metrics-jsonl", jsonl.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lrs: Vec<f64> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs, [0.004, 0.002, 0.001]);
}

/// `--batch-norm --dropout` train the rating model's regularized tower, the same numbers for
/// the same seed; the implicit models refuse both flags.
#[test]
fn the_rating_models_batch_norm_and_dropout_flags_train_and_are_seeded() {
    let Some(ml100k) = ncf_core::testenv::data_dir("ml-100k") else { return };
    let d = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let summary = d.path().join(name);
        let data = ml100k.to_str().unwrap();
        let args = ["train", "--model", "rating", "--data", data, "--epochs", "2", "--batch", "1024"];
        let extra = ["--batch-norm", "--dropout", "0.2", "--summary-json", summary.to_str().unwrap()];
        let o = ncf(&[&args[..], &extra[..]].concat());
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{out}\n{err}");
        assert!(err.contains("batch norm, dropout 0.2"), "{err}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
        v["test_rmse"].as_f64().unwrap()
    };
    let rmse = run("a.json");
    assert!(rmse < 1.05, "test RMSE {rmse}");
    assert_eq!(run("b.json"), rmse, "the same seed gives the same dropout masks and numbers");
    let o = ncf(&["train", "--model", "gmf", "--epochs", "1", "--dropout", "0.2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("rating model"), "{err}");
}

/// `--write-split` writes the rating split (raw ids) for a peer library, all 100,000 ratings
/// once, and refuses to overwrite it without --force.
#[test]
fn the_rating_split_is_written_for_peers() {
    let Some(ml100k) = ncf_core::testenv::data_dir("ml-100k") else { return };
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("split");
    let args = ["train", "--model", "rating", "--data", ml100k.to_str().unwrap(), "--epochs", "1"];
    let o = ncf(&[&args[..], &["--write-split", dir.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut all = Vec::new();
    for (name, want) in [("train.tsv", 80_000), ("valid.tsv", 10_000), ("test.tsv", 10_000)] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), want, "{name}");
        for l in &lines {
            let f: Vec<&str> = l.split('\t').collect();
            let r: f32 = f[2].parse().unwrap();
            assert!(f.len() == 3 && f[0].parse::<u32>().unwrap() >= 1 && (1.0..=5.0).contains(&r), "{name}: {l}");
            all.push((f[0].parse::<u32>().unwrap(), f[1].parse::<u32>().unwrap()));
        }
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 100_000, "every (user, item) rating once across the three files");
    let o = ncf(&[&args[..], &["--write-split", dir.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--force"), "{err}");
}

/// `--features` trains the hybrid rating model on ML-100K's u.item and u.user (30 + 30
/// columns); a malformed metadata file stops it with the file, line and field.
#[test]
fn the_hybrid_rating_model_reads_u_item_and_u_user() {
    let Some(ml100k) = ncf_core::testenv::data_dir("ml-100k") else { return };
    let d = tempfile::tempdir().unwrap();
    let summary = d.path().join("s.json");
    let args = ["train", "--model", "rating", "--epochs", "2", "--batch", "1024", "--features", "--data"];
    let o = ncf(&[&args[..], &[ml100k.to_str().unwrap(), "--summary-json", summary.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("30 item columns") && err.contains("30 user columns"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(
        (v["model"].as_str(), v["features"][0].as_u64(), v["features"][1].as_u64()),
        (Some("rating+features"), Some(30), Some(30))
    );
    assert!(v["test_rmse"].as_f64().unwrap() < 1.05, "{v}");

    // A copy whose u.user has an unknown occupation on line 3, and one whose u.item has an
    // unknown genre flag.
    for (file, bad, want) in [
        ("u.user", "3|23|M|astronaut|32067", "u.user:3: field `occupation`"),
        ("u.item", "", "u.item:2: field `genre flag`"),
    ] {
        let copy = d.path().join(format!("bad-{file}"));
        std::fs::create_dir(&copy).unwrap();
        for f in ["u.data", "u.item", "u.user"] {
            std::fs::copy(ml100k.join(f), copy.join(f)).unwrap();
        }
        let text = std::fs::read(copy.join(file)).unwrap();
        let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        if file == "u.user" {
            lines[2] = bad.as_bytes().to_vec();
        } else {
            let n = lines[1].len();
            lines[1][n - 1] = b'7'; // the last genre flag of line 2
        }
        std::fs::write(copy.join(file), lines.join(&b'\n')).unwrap();
        let o = ncf(&["train", "--model", "rating", "--epochs", "1", "--features", "--data", copy.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{file}: {err}");
    }
}

/// The implicit hybrid (`--model neumf --features`) on a synthetic MovieLens folder (its
/// movies.dat and users.dat carry the side features): it trains, reports the low-activity
/// users apart, and refuses --save (hybrid checkpoints are not supported yet).
#[test]
fn the_implicit_hybrid_trains_on_synthetic_side_features() {
    let d = tempfile::tempdir().unwrap();
    let ml = d.path().join("ml");
    let synth =
        ["data", "synth", "--out", ml.to_str().unwrap(), "--users", "300", "--items", "200", "--density", "0.08"];
    assert!(ncf(&synth).status.success());
    let summary = d.path().join("s.json");
    let args = ["train", "--data", ml.to_str().unwrap(), "--features", "--epochs", "2", "--summary-json"];
    let o = ncf(&[&args[..], &[summary.to_str().unwrap()]].concat());
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("30 item columns") && err.contains("30 user columns"), "{err}");
    assert!(out.contains("test users with fewer than 20 training interactions"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let (hr, low) = (v["test_hr"].as_f64().unwrap(), v["low_test_hr"].as_f64().unwrap());
    assert!(hr > 0.0 && hr <= 1.0 && (0.0..=1.0).contains(&low) && v["low_users"].as_u64().unwrap() > 0, "{v}");

    let o = ncf(&[
        &args[..],
        &[d.path().join("t.json").to_str().unwrap(), "--save", d.path().join("m.st").to_str().unwrap()],
    ]
    .concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot be saved"), "{err}");
    let o = ncf(&["train", "--model", "gmf", "--data", ml.to_str().unwrap(), "--features", "--epochs", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("MLP tower"), "{err}");
}

/// `NCF_SIMD=avx2` runs the AVX2 kernels (the direct GEMM among them) on an AVX-512 CPU, and
/// training gives the same bits as at the CPU's own level: every fast kernel's AVX2 and AVX-512
/// copies compute each element in the same order. On a CPU without AVX-512 both runs are AVX2.
#[test]
fn forcing_avx2_trains_bit_for_bit_like_the_native_level() {
    for args in [&["--model", "neumf"][..], &["--preset", "fast"]] {
        forced_avx2_matches_native(args);
    }
}

/// `ncf train ARGS --epochs 2` prints the same numbers at the native level and at forced AVX2.
fn forced_avx2_matches_native(args: &[&str]) {
    let run = |simd: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ncf"));
        c.args(["train", "--epochs", "2", "--threads", "2"]).args(args);
        match simd {
            Some(s) => c.env("NCF_SIMD", s),
            None => c.env_remove("NCF_SIMD"),
        };
        let o = c.output().unwrap();
        let (out, err) =
            (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
        assert!(o.status.success(), "{out}\n{err}");
        // The numbers, without the timings.
        let lines: Vec<String> =
            out.lines().filter(|l| l.starts_with("epoch")).map(|l| l.split('[').next().unwrap().to_string()).collect();
        let level = err.lines().find(|l| l.starts_with("cpu:")).unwrap_or_default().to_string();
        (lines, level)
    };
    let (native, native_level) = run(None);
    let (avx2, avx2_level) = run(Some("avx2"));
    assert_eq!(native.len(), 2, "{native:?}");
    println!("{native_level}\n{avx2_level}");
    if ncf_cpu::simd::SimdLevel::detected() >= ncf_cpu::simd::SimdLevel::Avx2Fma {
        assert!(avx2_level.contains("SIMD avx2+fma"), "{avx2_level}");
    }
    assert_eq!(native, avx2, "{args:?}: the AVX2 and the native kernels trained different numbers");
}

/// `--preset fast` trains MF by implicit ALS: it prints interactions per second (no sampling),
/// saves an MF checkpoint that `ncf eval` scores to the run's own test HR@10, and `--model
/// gmf --optimizer als` is refused with what to change.
#[test]
fn the_als_preset_trains_saves_and_evaluates() {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f).display().to_string();
    let out = ncf(&["train", "--preset", "fast", "--summary-json", &p("s.json"), "--save", &p("m.st")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let epochs: Vec<&str> = text.lines().filter(|l| l.starts_with("epoch")).collect();
    assert_eq!(epochs.len(), 4, "{text}");
    assert!(epochs.iter().all(|l| l.contains("0.00s sample") && l.contains("interactions/s]")), "{text}");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("s.json")).unwrap()).unwrap();
    assert_eq!((s["model"].as_str(), s["config"]["optimizer"].as_str()), (Some("mf"), Some("als")), "{s}");
    let ev = ncf(&["eval", "--model", &p("m.st")]);
    let line = String::from_utf8_lossy(&ev.stdout).to_string();
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    assert!(line.contains(&format!("test HR@10 {:.4}", s["test_hr"].as_f64().unwrap())), "{line} vs {s}");

    let bad = ncf(&["train", "--model", "gmf", "--optimizer", "als", "--epochs", "1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("add --model mf"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `NCF_STEP_TIMES=1` prints the two-lane step's phase times after each epoch and writes them
/// to the metrics; without it there are none, and the numbers are the same either way.
#[test]
fn step_times_are_printed_and_recorded_only_when_asked() {
    let d = tempfile::tempdir().unwrap();
    toy_split(d.path());
    let data = d.path().display().to_string();
    let run = |times: bool| -> (String, serde_json::Value) {
        let path = d.path().join(format!("m-{times}.jsonl"));
        let mut c = Command::new(env!("CARGO_BIN_EXE_ncf"));
        c.args(["train", "--data", &data, "--model", "neumf", "--epochs", "1", "--batch", "64", "--threads", "2"]);
        c.args(["--metrics-jsonl", &path.display().to_string()]);
        if times {
            c.env("NCF_STEP_TIMES", "1");
        } else {
            c.env_remove("NCF_STEP_TIMES");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let line = std::fs::read_to_string(&path).unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), serde_json::from_str(line.trim()).unwrap())
    };
    let (out, m) = run(true);
    assert!(out.contains("step phases (NCF_STEP_TIMES=1): forward+backward "), "{out}");
    let phases = m["step_phases"].as_array().expect("step_phases");
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["forward+backward", "scatter+optimizer"]);
    let wall: Vec<f64> = phases.iter().map(|p| p["wall_s"].as_f64().unwrap()).collect();
    let sum: f64 = wall.iter().sum();
    assert!(sum > 0.0 && sum <= m["training_s"].as_f64().unwrap(), "{phases:?} within {}", m["training_s"]);
    for (p, w) in phases.iter().zip(&wall) {
        let busy: Vec<f64> = p["busy_s"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
        assert!(busy.len() == 2 && busy.iter().all(|b| *b >= 0.0 && b <= w), "a half is busy within its phase: {p}");
        assert!(p["solo_steps"].as_u64().is_some(), "the pace's count of steps on one thread: {p}");
    }
    let (plain, m0) = run(false);
    assert!(!plain.contains("step phases") && m0.get("step_phases").is_none(), "{plain}\n{m0}");
    assert_eq!((&m["loss"], &m["test_hr"]), (&m0["loss"], &m0["test_hr"]), "timing changes no number");
}
