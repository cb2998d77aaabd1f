//! Crash safety: `ncf train --save` killed with SIGKILL at any moment, including in the middle
//! of writing its checkpoint, never loses or corrupts the last good checkpoint, and `--resume`
//! from whatever survived ends with the same bits as a run that was never killed. The same
//! holds for `ncf data synth` and `ncf data split`: a file under its final name is always
//! whole. A full disk gives a clear error and leaves the previous checkpoint intact.

use ncf_train::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ncf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ncf"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small deterministic generator for the kill schedule (the same moments on every run).
struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const EPOCHS: &str = "6";

/// The training run every kill interrupts: NeuMF on a synthetic split, a checkpoint of about
/// 1.3 MB rewritten after each of 6 epochs.
fn train_args(split: &Path, ckpt: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--data", &split.display().to_string(), "--epochs", EPOCHS, "--batch", "128"]
        .map(String::from)
        .to_vec();
    a.extend(["--factors", "16", "--layers", "32,16,8", "--save"].map(String::from));
    a.push(ckpt.display().to_string());
    a
}

/// Every tensor's bits (by name), and each epoch's loss, validation HR and test HR.
type Fingerprint = (Vec<(String, Vec<u64>)>, Vec<(Option<f64>, Option<f64>, Option<f64>)>);

/// A checkpoint's [`Fingerprint`] (not the timings, which differ from run to run).
fn fingerprint(path: &Path) -> Fingerprint {
    let c = Checkpoint::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut t: Vec<(String, Vec<u64>)> =
        c.tensors.iter().map(|t| (t.name.clone(), t.data.iter().map(|x| x.to_bits()).collect())).collect();
    t.sort();
    let v: Vec<serde_json::Value> = serde_json::from_str(&c.metadata["epochs"]).unwrap();
    let e = v.iter().map(|e| (e["loss"].as_f64(), e["valid_hr"].as_f64(), e["test_hr"].as_f64())).collect();
    (t, e)
}

/// The checkpoint's own record of its selected epoch's test metrics, as `ncf eval` prints them.
fn recorded_metrics(path: &Path) -> String {
    let c = Checkpoint::load(path).unwrap();
    let s: serde_json::Value = serde_json::from_str(&c.metadata["summary"]).unwrap();
    format!("test HR@10 {:.4} NDCG@10 {:.4}", s["test_hr"].as_f64().unwrap(), s["test_ndcg"].as_f64().unwrap())
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

/// How a kill is timed.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// After this long.
    After(Duration),
    /// As soon as a checkpoint's temporary file appears, after this long: mid-write.
    MidWrite(Duration),
}

/// Starts the run, kills it at `moment`; whether the kill found a temporary file being written.
/// A checkpoint that existed just before the kill must exist after it (none is ever lost).
fn run_and_kill(args: &[String], dir: &Path, ckpt: &Path, moment: Moment) -> bool {
    let mut child = ncf().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    match moment {
        Moment::After(d) => {
            while start.elapsed() < d {
                if child.try_wait().unwrap().is_some() {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Moment::MidWrite(d) => loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if start.elapsed() >= d && !temporaries(dir).is_empty() {
                break;
            }
        },
    }
    let existed = ckpt.exists();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!existed || ckpt.exists(), "{moment:?}: the checkpoint was there before the kill and is gone after it");
    !temporaries(dir).is_empty()
}

/// At least 50 kills at pseudo-random moments over the whole run, and 20 more timed to land
/// while a checkpoint is being written. After each: the checkpoint (if the run got that far)
/// loads, `ncf eval` gives the metrics recorded in it, and `--resume` (or a fresh start, if
/// no checkpoint was written yet) ends bit for bit where the uninterrupted run ended, leaving
/// no temporary file behind.
#[test]
fn sigkill_at_any_moment_loses_nothing_and_resume_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f);
    ok(ncf()
        .args(["data", "synth", "--out", p("ml").to_str().unwrap(), "--users", "1500", "--items", "800"])
        .args(["--density", "0.02", "--seed", "5"])
        .output()
        .unwrap());
    ok(ncf()
        .args(["data", "split", "--input", p("ml").to_str().unwrap(), "--out", p("split").to_str().unwrap()])
        .args(["--name", "toy"])
        .output()
        .unwrap());
    let split = p("split");
    let t0 = Instant::now();
    ok(ncf().args(train_args(&split, &p("full.st"))).output().unwrap());
    let full_time = t0.elapsed();
    let want = fingerprint(&p("full.st"));

    let mut rng = Lcg(2026);
    let runs = std::fs::create_dir_all(p("runs")).map(|_| p("runs")).unwrap();
    // Spread over the run (start-up and the first epoch are about a third of it), a few past its end.
    let mut moments: Vec<Moment> =
        (0..50).map(|_| Moment::After(full_time.mul_f64(0.15 + 0.95 * rng.unit()))).collect();
    moments.extend((0..20).map(|_| Moment::MidWrite(full_time.mul_f64(0.9 * rng.unit()))));
    let (mut with_ckpt, mut mid_write, mut before_first) = (0, 0, 0);
    for (k, &moment) in moments.iter().enumerate() {
        let dir: PathBuf = runs.join(k.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let ckpt = dir.join("m.st");
        let args = train_args(&split, &ckpt);
        let killed_mid_write = run_and_kill(&args, &dir, &ckpt, moment);
        mid_write += usize::from(killed_mid_write);
        let resume_args: Vec<String> = if ckpt.exists() {
            with_ckpt += 1;
            // The last good checkpoint loads, and re-evaluating it gives its recorded metrics.
            let eval = ok(ncf()
                .args(["eval", "--model", ckpt.to_str().unwrap(), "--data", split.to_str().unwrap()])
                .output()
                .unwrap());
            let recorded = recorded_metrics(&ckpt);
            assert!(
                eval.contains(&recorded),
                "kill {k} ({moment:?}): eval printed {eval}, the checkpoint records {recorded}"
            );
            ["train", "--resume", ckpt.to_str().unwrap(), "--epochs", EPOCHS].map(String::from).to_vec()
        } else {
            before_first += 1;
            args
        };
        ok(ncf().args(&resume_args).output().unwrap());
        let got = fingerprint(&ckpt);
        assert!(
            got == want,
            "kill {k} ({moment:?}): the resumed run's checkpoint differs from the uninterrupted run's"
        );
        assert_eq!(temporaries(&dir), Vec::<String>::new(), "kill {k}: a temporary file was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "{} kills: {with_ckpt} after a checkpoint existed, {before_first} before the first one, {mid_write} with a \
         checkpoint half written; every resume bit-identical (uninterrupted run {full_time:?})",
        moments.len()
    );
    assert!(with_ckpt >= 30, "most kills should find a checkpoint ({with_ckpt} did)");
    assert!(mid_write >= 5, "kills timed for a write should catch some mid-write ({mid_write} did)");
}

/// `ncf data synth` and `ncf data split` killed at pseudo-random moments: any file under its
/// final name is byte-identical to the one an uninterrupted run writes.
#[test]
fn data_outputs_are_never_half_written() {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f);
    let synth = |out: &Path| {
        let mut c = ncf();
        c.args(["data", "synth", "--out", out.to_str().unwrap(), "--users", "3000", "--items", "1500"]).args([
            "--density",
            "0.03",
            "--seed",
            "9",
        ]);
        c
    };
    let split = |input: &Path, out: &Path| {
        let mut c = ncf();
        c.args(["data", "split", "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--name", "x"]);
        c
    };
    let t0 = Instant::now();
    ok(synth(&p("ml")).output().unwrap());
    let synth_time = t0.elapsed();
    let t0 = Instant::now();
    ok(split(&p("ml"), &p("split")).output().unwrap());
    let split_time = t0.elapsed();
    let read_all = |dir: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let (want_ml, want_split) = (read_all(&p("ml")), read_all(&p("split")));
    let mut rng = Lcg(7);
    let (mut partial_sets, mut files_checked) = (0, 0);
    for k in 0..20 {
        let (mut cmd, want, out, time) = if k % 2 == 0 {
            (synth(&p("ml2")), &want_ml, p("ml2"), synth_time)
        } else {
            (split(&p("ml"), &p("split2")), &want_split, p("split2"), split_time)
        };
        let _ = std::fs::remove_dir_all(&out);
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(time.mul_f64(1.2 * rng.unit()));
        let _ = child.kill();
        child.wait().unwrap();
        if !out.exists() {
            continue;
        }
        let got = read_all(&out);
        let finals: Vec<_> = got.iter().filter(|(n, _)| !n.contains(".tmp")).collect();
        partial_sets += usize::from(finals.len() < want.len());
        for (name, bytes) in finals {
            let w = want.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("unexpected file {name}"));
            assert!(&w.1 == bytes, "kill {k}: {name} is {} bytes, a whole one is {}", bytes.len(), w.1.len());
            files_checked += 1;
        }
    }
    println!(
        "20 kills of synth/split: {files_checked} files under their final names, all whole; {partial_sets} runs cut between files"
    );
}

/// A full disk (a 1.5 MB tmpfs, in a private mount namespace through `unshare`): the next
/// checkpoint write fails with an error naming the checkpoint and the cause, exits non-zero,
/// leaves no temporary file, and the previous checkpoint is byte for byte what it was.
/// Skipped (with a `skipped:` line) where this machine cannot mount a tmpfs.
#[test]
fn a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f);
    ok(ncf()
        .args(["data", "synth", "--out", p("ml").to_str().unwrap(), "--users", "300", "--items", "200", "--seed", "3"])
        .output()
        .unwrap());
    let mnt = p("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let bin = env!("CARGO_BIN_EXE_ncf");
    let ml = p("ml");
    let ckpt = mnt.join("m.st");
    let train = format!("{bin} train --data {} --factors 16 --layers 32,16,8 --save {}", ml.display(), ckpt.display());
    let script = format!(
        "set -u\n\
         mount -t tmpfs -o size=1536k tmpfs {mnt} || exit 99\n\
         {train} --epochs 1 >/dev/null 2>{d}/first.err || exit 98\n\
         cp {ckpt} {d}/before.st\n\
         dd if=/dev/zero of={mnt}/fill bs=4k 2>/dev/null\n\
         {bin} train --resume {ckpt} --epochs 2 >/dev/null 2>{d}/second.err\n\
         echo $? > {d}/rc\n\
         cp {ckpt} {d}/after.st\n\
         ls {mnt} > {d}/ls\n",
        mnt = mnt.display(),
        bin = bin,
        d = d.path().display(),
        ckpt = ckpt.display(),
    );
    let out = Command::new("unshare").args(["-rm", "sh", "-c", &script]).output();
    let out = match out {
        Ok(o) if o.status.code() == Some(99) || String::from_utf8_lossy(&o.stderr).starts_with("unshare:") => None,
        Ok(o) => Some(o),
        Err(_) => None,
    };
    let Some(out) = out else {
        println!("skipped: cannot mount a tmpfs here (unshare -rm + mount -t tmpfs failed)");
        return;
    };
    assert!(out.status.success(), "{out:?}\n{}", std::fs::read_to_string(p("first.err")).unwrap_or_default());
    let rc = std::fs::read_to_string(p("rc")).unwrap();
    let err = std::fs::read_to_string(p("second.err")).unwrap();
    println!("full disk: exit {} and\n{err}", rc.trim());
    assert_ne!(rc.trim(), "0", "{err}");
    assert!(err.contains("No space left on device") && err.contains("m.st"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(p("before.st")).unwrap(), std::fs::read(p("after.st")).unwrap(), "the checkpoint changed");
    assert_eq!(std::fs::read_to_string(p("ls")).unwrap(), "fill\nm.st\n", "only the filler and the checkpoint remain");
    Checkpoint::load(&p("after.st")).unwrap();
}
