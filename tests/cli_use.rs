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
    // A new user who likes the Star Wars trilogy (folding in): mostly science fiction, none of
    // the three.
    let new =
        lines_json(&ok(&ncf(&["recommend", "--model", m, "--items", "260,1196,1210", "--items-meta", meta, "--json"])));
    let items = new[0]["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    let sci_fi = items.iter().filter(|i| i["genres"].as_array().unwrap().iter().any(|g| g == "Sci-Fi")).count();
    let ids: Vec<u64> = items.iter().map(|i| i["item"].as_u64().unwrap()).collect();
    println!("folded in from the trilogy: {ids:?}, {sci_fi} of them Sci-Fi");
    assert!(sci_fi >= 5 && !ids.iter().any(|i| [260, 1196, 1210].contains(i)), "{ids:?}");
}

/// On the embedded sample: text and JSON agree, a user the model does not know gets the
/// popularity list flagged as such, many users come from a file, and bad input is refused.
#[test]
fn recommend_and_similar_on_the_embedded_sample() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("s.safetensors");
    train(None, &model, "2");
    let m = model.to_str().unwrap();
    // The ranker (the fast path) scores as the model's own forward does, on a checkpoint.
    let mut scorer = ncf_train::infer::Scorer::load(&model, None).unwrap();
    let users: Vec<u32> = (0..scorer.n_users as u32).step_by(97).collect();
    let (fast, slow) = (scorer.scores(&users).unwrap(), scorer.scores_reference(&users).unwrap());
    let worst = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = slow.iter().fold(1f32, |m, x| m.max(x.abs()));
    assert!(worst <= 1e-4 * scale, "ranker vs reference: max_abs {worst:.3e} (scale {scale})");
    let pairs: Vec<(u32, u32)> =
        (0..500u32).map(|k| (k * 7 % scorer.n_users as u32, k * 13 % scorer.n_items as u32)).collect();
    let (fast, slow) = (scorer.score_pairs(&pairs).unwrap(), scorer.score_pairs_reference(&pairs).unwrap());
    let worst = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-4 * scale, "pairs, ranker vs reference: max_abs {worst:.3e} (scale {scale})");
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

/// `ncf embeddings` writes each table as CSV and `.npy` (float32 rows × width, uint64 ids),
/// the two agreeing, and refuses to overwrite without `--force`. If a Python with numpy is
/// on the PATH, `numpy.load` reads them too.
#[test]
fn embeddings_are_exported_as_csv_and_npy() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("s.safetensors");
    train(None, &model, "1");
    let out = d.path().join("emb");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    ok(&ncf(&["embeddings", "--model", m, "--out", o]));
    let csv = std::fs::read_to_string(out.join("gmf_item_embedding.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv.lines().skip(1).map(|l| l.split(',').map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(csv.lines().next().unwrap(), "raw_id,e0,e1,e2,e3,e4,e5,e6,e7");
    // The .npy: magic, version 1.0, a header naming dtype and shape, then the data.
    let read_npy = |name: &str| {
        let b = std::fs::read(out.join(name)).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0, "header padded to 64 bytes");
        (String::from_utf8(b[10..10 + hlen].to_vec()).unwrap(), b[10 + hlen..].to_vec())
    };
    let (h, data) = read_npy("gmf_item_embedding.npy");
    assert!(h.contains("'descr': '<f4'") && h.contains(&format!("'shape': ({}, 8)", rows.len())), "{h}");
    let floats: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let (h, ids) = read_npy("gmf_item_embedding.ids.npy");
    assert!(h.contains("'descr': '<u8'") && h.contains(&format!("'shape': ({},)", rows.len())), "{h}");
    for (r, row) in rows.iter().enumerate() {
        let id = u64::from_le_bytes(ids[r * 8..r * 8 + 8].try_into().unwrap());
        assert_eq!(row[0] as u64, id);
        for c in 0..8 {
            assert_eq!(row[1 + c] as f32, floats[r * 8 + c], "row {r} col {c}");
        }
    }
    let again = ncf(&["embeddings", "--model", m, "--out", o]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("pass --force"));
    ok(&ncf(&["embeddings", "--model", m, "--out", o, "--force"]));
    let py = "import numpy as np, sys; a = np.load(sys.argv[1]); print(a.shape, a.dtype)";
    match Command::new("python3").args(["-c", py, out.join("gmf_item_embedding.npy").to_str().unwrap()]).output() {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            assert_eq!(s.trim(), format!("({}, 8) float32", rows.len()));
        }
        _ => println!("numpy not installed: the .npy format was checked by hand only"),
    }
}
