//! Using a trained model from the shell: `ncf recommend` and `ncf similar`, on the embedded
//! sample and (through `NCF_DATA`) on the NCF ML-1M split with `movies.dat`'s titles.

use ncf_core::testenv::data_dir;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};

fn ncf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncf")).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn train(data: Option<&Path>, out: &Path, epochs: &str) {
    let out = out.to_str().unwrap();
    let mut args = vec!["train", "--epochs", epochs, "--save", out, "--force"];
    let d;
    if let Some(p) = data {
        d = p.display().to_string();
        args.extend(["--data", &d]);
    }
    ok(&ncf(&args));
}

fn lines_json(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// For a user of the ML-1M split model, `ncf recommend` prints 10 titled movies, none of them
/// among the user's training items; `ncf similar` gives Star Wars its sequels.
#[test]
fn recommend_on_ml1m_leaves_out_training_items_and_shows_titles() {
    let (Some(split), Some(ml1m)) = (data_dir("ncf-ml-1m"), data_dir("ml-1m")) else { return };
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m.safetensors");
    train(Some(&split), &model, "2");
    // The training items of user 42, as MovieLens ids.
    let map: HashMap<u32, u64> = std::fs::read_to_string(split.join("item_id_map.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect();
    let seen: HashSet<u64> = std::fs::read_to_string(split.join("ml-1m.train.rating"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("42\t"))
        .map(|l| map[&l.split('\t').nth(1).unwrap().parse::<u32>().unwrap()])
        .collect();
    assert!(seen.len() >= 20, "user 42 has {} training items", seen.len());
    let (m, meta) = (model.to_str().unwrap(), ml1m.join("movies.dat"));
    let meta = meta.to_str().unwrap();
    let out = lines_json(&ok(&ncf(&["recommend", "--model", m, "--user", "42", "--items-meta", meta, "--json"])));
    assert_eq!(out.len(), 1);
    let items = out[0]["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    for it in items {
        let id = it["item"].as_u64().unwrap();
        assert!(!seen.contains(&id), "recommended training item {id}");
        assert!(!it["title"].as_str().unwrap().is_empty() && it["genres"].is_array(), "{it}");
    }
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let text = ok(&ncf(&["recommend", "--model", m, "--user", "42", "--items-meta", meta]));
    println!("{text}");
    assert_eq!(text.lines().count(), 11, "{text}");
    let near = lines_json(&ok(&ncf(&["similar", "--model", m, "--item", "260", "-k", "10", "--json"])));
    let ids: Vec<u64> = near[0]["similar"].as_array().unwrap().iter().map(|i| i["item"].as_u64().unwrap()).collect();
    println!("Star Wars (260): {ids:?}");
    assert!(!ids.contains(&260));
    // Plausible: both Star Wars sequels (Empire 1196, Jedi 1210) among its ten neighbours.
    assert!(ids.contains(&1196) && ids.contains(&1210), "{ids:?}");
}

/// On the embedded sample: text and JSON agree, a user the model does not know gets the
/// popularity list flagged as such, many users come from a file, and bad input is refused.
#[test]
fn recommend_and_similar_on_the_embedded_sample() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("s.safetensors");
    train(None, &model, "2");
    let m = model.to_str().unwrap();
    let one = lines_json(&ok(&ncf(&["recommend", "--model", m, "--user", "1", "-k", "5", "--json"])));
    assert_eq!(one[0]["items"].as_array().unwrap().len(), 5);
    assert!(one[0].get("fallback").is_none());
    let unknown = lines_json(&ok(&ncf(&["recommend", "--model", m, "--user", "99999999", "--json"])));
    assert_eq!(unknown[0]["fallback"], "popularity");
    assert_eq!(unknown[0]["items"].as_array().unwrap().len(), 10);
    let users = d.path().join("users.txt");
    std::fs::write(&users, "1\n2\n\n99999999\n3\n").unwrap();
    let many = lines_json(&ok(&ncf(&["recommend", "--model", m, "--users-file", users.to_str().unwrap(), "--json"])));
    assert_eq!(many.iter().map(|v| v["user"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 99999999, 3]);
    assert_eq!(
        many[0]["items"],
        lines_json(&ok(&ncf(&["recommend", "--model", m, "--user", "1", "--json"])))[0]["items"]
    );
    let item = one[0]["items"][0]["item"].as_u64().unwrap().to_string();
    for e in ["auto", "gmf", "mlp", "both"] {
        let near = lines_json(&ok(&ncf(&["similar", "--model", m, "--item", &item, "--embedding", e, "--json"])));
        let sims: Vec<f64> =
            near[0]["similar"].as_array().unwrap().iter().map(|i| i["score"].as_f64().unwrap()).collect();
        assert_eq!(sims.len(), 10);
        assert!(
            sims.windows(2).all(|w| w[0] >= w[1]) && sims.iter().all(|s| (-1.0001..=1.0001).contains(s)),
            "{sims:?}"
        );
    }
    // Bad input: a clear error and a non-zero exit.
    std::fs::write(&users, "1\nx7\n").unwrap();
    let bad = ncf(&["recommend", "--model", m, "--users-file", users.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("users.txt:2: field `user`: `x7`"));
    let bad = ncf(&["similar", "--model", m, "--item", "99999999"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("item 99999999 is not in the model"));
    assert!(!ncf(&["recommend", "--model", m, "--user", "1", "-k", "0"]).status.success());
    assert!(!ncf(&["recommend", "--model", m, "--user", "1", "-k", "1001"]).status.success());
}
