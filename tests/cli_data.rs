//! The data path end to end on generated data (no licensed files needed): `ncf data synth`,
//! `ncf data split`, training straight from a MovieLens folder, the embedded default run, and
//! `--resume` continuing a run bit for bit.

use ncf_train::Checkpoint;
use std::path::Path;
use std::process::{Command, Output};

fn ncf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncf")).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number after `key` in the "selected epoch …" line, e.g. `test HR@10 0.4570`.
fn selected(stdout: &str, key: &str) -> f64 {
    let line = stdout.lines().find(|l| l.starts_with("selected epoch")).expect("a summary line");
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    rest.split_whitespace().next().unwrap().trim_end_matches(';').parse().unwrap()
}

/// `ncf train` with no data argument trains NeuMF on the embedded sample at the defaults and
/// beats both chance (HR@10 0.10 for a random ranking of 100 candidates) and ranking by
/// popularity (HR@10 0.391 on this sample's test cases).
#[test]
fn default_run_trains_on_the_embedded_sample() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ncf")).arg("train").current_dir(dir.path()).output().unwrap();
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sample: 31192 ratings"), "{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("epoch ")).count(), 20, "{stdout}");
    let hr = selected(&stdout, "test HR@10 ");
    println!("default run: selected test HR@10 {hr}");
    assert!(hr >= 0.45, "HR@10 {hr} on the embedded sample (measured 0.534 at commit time; popularity 0.391)");
    let pop = ok(&ncf(&["eval", "--popularity"]));
    let pop_hr: f64 = pop.split("HR@10 ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(hr > pop_hr + 0.05, "NeuMF {hr} must beat the popularity baseline {pop_hr} clearly");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "writes nothing unless asked");
}

#[test]
fn synth_then_split_then_train_matches_training_on_the_movielens_folder() {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f).display().to_string();
    ok(&ncf(&["data", "synth", "--out", &p("ml"), "--users", "200", "--items", "150", "--density", "0.1"]));
    for f in ["ratings.dat", "movies.dat", "users.dat"] {
        assert!(d.path().join("ml").join(f).is_file(), "{f}");
    }
    let refused = ncf(&["data", "synth", "--out", &p("ml"), "--users", "5"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("exists; pass --force"));

    let split = ok(&ncf(&["data", "split", "--input", &p("ml"), "--out", &p("split"), "--name", "toy"]));
    assert!(split.contains("200 users, "), "{split}");
    // Movies nobody rated get no id: the count comes from the ratings.
    let n_items: usize = split.split("200 users, ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((100..=150).contains(&n_items), "{split}");
    let test_lines = std::fs::read_to_string(d.path().join("split/toy.test.rating")).unwrap().lines().count();
    assert_eq!(test_lines, 200);
    let negs = std::fs::read_to_string(d.path().join("split/toy.test.negative")).unwrap();
    assert!(negs.lines().all(|l| l.split('\t').count() == 100), "99 negatives per line");

    // The folder of split files and the MovieLens folder itself give the same run.
    let args = ["--model", "gmf", "--epochs", "2", "--batch", "64"];
    let from_split = ok(&ncf(&[&["train", "--data", &p("split")][..], &args[..]].concat()));
    let from_ml = ok(&ncf(&[&["train", "--data", &p("ml"), "--save", &p("m.st")][..], &args[..]].concat()));
    let epochs = |s: &str| {
        s.lines().filter(|l| l.starts_with("epoch")).map(|l| l[..l.find('[').unwrap()].to_string()).collect::<Vec<_>>()
    };
    assert_eq!(epochs(&from_split), epochs(&from_ml));

    // The checkpoint carries the raw ids, and eval on the MovieLens folder reproduces the test HR.
    let ck = Checkpoint::load(&d.path().join("m.st")).unwrap();
    let (users, items) = ck.id_maps(Path::new("m.st")).unwrap();
    assert_eq!(users.unwrap().raw(0), Some(1), "dense user 0 is MovieLens user 1");
    assert_eq!(items.unwrap().len(), n_items);
    let ev = ok(&ncf(&["eval", "--model", &p("m.st"), "--data", &p("ml")]));
    let hr = selected(&from_ml, "test HR@10 ");
    assert!(ev.contains(&format!("test HR@10 {hr:.4}")), "{ev} vs {hr}");

    // A model trained on other data is refused, naming why.
    ok(&ncf(&[
        "data",
        "synth",
        "--out",
        &p("other"),
        "--users",
        "200",
        "--items",
        "150",
        "--density",
        "0.1",
        "--seed",
        "9",
    ]));
    let wrong = ncf(&["eval", "--model", &p("m.st"), "--data", &p("other/ratings.dat")]);
    assert_eq!(wrong.status.code(), Some(2), "{}", String::from_utf8_lossy(&wrong.stdout));
}

#[test]
fn bad_ratings_are_reported_with_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("ml")).unwrap();
    std::fs::write(d.path().join("ml/ratings.dat"), "1::10::5::100\n1::11::4::101\n2::x::3::7\n").unwrap();
    let out = ncf(&["train", "--data", &d.path().join("ml").display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ratings.dat:3: field `MovieID`: `x` is not a non-negative integer id"), "{err}");
    let none = ncf(&["train", "--data", &d.path().display().to_string()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("neither an NCF split folder"));
}

/// Two epochs, then `--resume` for two more, ends with the same weights, optimizer state and
/// metrics as four epochs in one go.
#[test]
fn resume_continues_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f).display().to_string();
    ok(&ncf(&["data", "synth", "--out", &p("ml"), "--users", "150", "--items", "120", "--density", "0.1"]));
    let common = ["--data", &p("ml"), "--batch", "128", "--layers", "16,8,4"];
    let full = ok(&ncf(&[&["train", "--epochs", "4", "--save", &p("full.st")][..], &common[..]].concat()));
    ok(&ncf(&[&["train", "--epochs", "2", "--save", &p("part.st")][..], &common[..]].concat()));
    let conflict = ncf(&["train", "--resume", &p("part.st"), "--lr", "0.1"]);
    assert_eq!(conflict.status.code(), Some(2), "a hyperparameter may not change on resume");
    let resumed = ok(&ncf(&["train", "--resume", &p("part.st"), "--epochs", "4"]));
    assert_eq!(resumed.lines().filter(|l| l.starts_with("epoch")).count(), 2, "only epochs 3 and 4 run");
    assert_eq!(selected(&full, "test HR@10 "), selected(&resumed, "test HR@10 "));

    let (a, b) =
        (Checkpoint::load(&d.path().join("full.st")).unwrap(), Checkpoint::load(&d.path().join("part.st")).unwrap());
    assert!(a.tensors.iter().any(|t| t.name.starts_with("resume/optim/")), "optimizer state is saved");
    assert_eq!(a.tensors.len(), b.tensors.len());
    for t in &a.tensors {
        let u = b.tensors.iter().find(|u| u.name == t.name).unwrap_or_else(|| panic!("{} missing", t.name));
        let diff = t.data.iter().zip(&u.data).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(diff, 0, "{}: {diff} of {} values differ", t.name, t.data.len());
    }
    let epochs = |c: &Checkpoint| {
        let v: Vec<serde_json::Value> = serde_json::from_str(&c.metadata["epochs"]).unwrap();
        v.iter().map(|e| (e["loss"].as_f64(), e["valid_hr"].as_f64(), e["test_hr"].as_f64())).collect::<Vec<_>>()
    };
    assert_eq!(epochs(&a), epochs(&b));
}

/// Pathological inputs get an error naming the limit they pass and exit non-zero, never an
/// out-of-memory kill: a file with more lines than `NCF_MAX_LINES` (standing in for 2³¹
/// distinct ids: the default limit, 2²⁷ lines, is reached long before), a 2 MiB line
/// (standing in for a 10 GB one), and split ids that would make a table of 2³¹ rows. A raw
/// MovieLens id of 10¹⁸ is only a name (ids are mapped to rows), so it trains; one past
/// 2⁶⁴ is an error naming the file, line and field.
#[test]
fn pathological_inputs_name_the_limit_they_pass() {
    let d = tempfile::tempdir().unwrap();
    let p = |f: &str| d.path().join(f);
    let ml = p("ml");
    std::fs::create_dir_all(&ml).unwrap();
    let ratings: String = (0..150).map(|k| format!("{}::{}::4::{}\n", k % 20 + 1, k % 30 + 1, 978300000 + k)).collect();
    std::fs::write(ml.join("ratings.dat"), &ratings).unwrap();
    let run = |env: Option<(&str, &str)>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ncf"));
        c.args(["train", "--data", ml.to_str().unwrap(), "--epochs", "1", "--factors", "4", "--layers", "8,4"]);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let fails_with = |out: Output, want: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && !err.contains("panicked"), "{err}");
        assert!(err.contains(want), "expected `{want}` in:\n{err}");
    };
    ok(&run(None));
    let zero = Command::new(env!("CARGO_BIN_EXE_ncf"))
        .args(["train", "--data", ml.to_str().unwrap(), "--epochs", "0"])
        .output()
        .unwrap();
    fails_with(zero, "epochs");
    fails_with(
        run(Some(("NCF_MAX_LINES", "100"))),
        "ratings.dat:101: the number of lines exceeds the limit of 100 lines per file (NCF_MAX_LINES",
    );

    let long = format!("{ratings}1::2::3::{}\n", "9".repeat(2 << 20));
    std::fs::write(ml.join("ratings.dat"), long).unwrap();
    fails_with(run(None), "ratings.dat:151: line length exceeds the limit of 1048576 bytes per line (MAX_LINE_BYTES)");

    std::fs::write(ml.join("ratings.dat"), format!("{ratings}1::1000000000000000000::5::978400000\n")).unwrap();
    ok(&run(None));
    std::fs::write(ml.join("ratings.dat"), format!("{ratings}1::100000000000000000000::5::978400000\n")).unwrap();
    fails_with(run(None), "ratings.dat:151: field `MovieID`");

    ok(&ncf(&["data", "synth", "--out", &p("syn").display().to_string(), "--users", "30", "--items", "20"]));
    ok(&ncf(&[
        "data",
        "split",
        "--input",
        &p("syn").display().to_string(),
        "--out",
        &p("split").display().to_string(),
    ]));
    let train = std::fs::read_dir(p("split"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.to_string_lossy().ends_with(".train.rating"))
        .unwrap();
    let mut text = std::fs::read_to_string(&train).unwrap();
    text.push_str("0\t2147483647\t5\t978300760\n");
    std::fs::write(&train, &text).unwrap();
    let out = ncf(&["train", "--data", &p("split").display().to_string(), "--epochs", "1"]);
    fails_with(out, "item id 2147483647, a table of 2147483648 rows");
}
