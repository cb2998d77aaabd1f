//! Checkpoints from elsewhere: a file whose metadata disagrees with its tensors gets a clear
//! error naming the file and what is wrong, never a panic or an allocation the file's size
//! does not justify. One test per way a file can lie.

use ncf_cpu::CpuBackend;
use ncf_model::{AnyModel, HostTensor, Model, ModelConfig, ModelKind};
use ncf_train::infer::Scorer;
use ncf_train::{Checkpoint, ModelSpec};
use std::path::Path;

/// A NeuMF checkpoint of 7 users × 11 items (factors 8, layers 16,8,4) with its training items,
/// as `ncf train --save` writes one.
fn good() -> Checkpoint {
    let be = CpuBackend::<f32>::default();
    let cfg = ModelConfig { layers: vec![16, 8, 4], ..ModelConfig::new(ModelKind::NeuMf, 7, 11) };
    let m = AnyModel::new(&be, &cfg, 4, &mut ncf_core::rng::seeded(3, 0)).unwrap();
    let mut ck = Checkpoint {
        spec: ModelSpec::of(&cfg),
        tensors: m.params().to_host(&be).unwrap(),
        metadata: Default::default(),
    };
    let pairs: Vec<(u32, u32)> = (0..7).map(|u| (u, (u * 3) % 11)).collect();
    ck.put_seen(&ncf_data::UserItems::from_pairs(7, 11, &pairs));
    ck
}

/// Saves `ck` and loads it the way `ncf eval`/`recommend`/`serve` do (checkpoint, then the
/// scorer, which builds the model); the error text, or "ok".
fn load(dir: &Path, ck: &Checkpoint) -> String {
    let path = dir.join("m.safetensors");
    ck.save(&path, true).unwrap();
    load_path(&path)
}

fn load_path(path: &Path) -> String {
    match Checkpoint::load(path).and_then(|c| Scorer::from_checkpoint(&c, path, None)) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

fn tensor<'a>(ck: &'a mut Checkpoint, name: &str) -> &'a mut HostTensor {
    ck.tensors.iter_mut().find(|t| t.name == name).unwrap()
}

fn expect(got: &str, want: &str) {
    assert!(got.contains("m.safetensors"), "the error names the file: {got}");
    assert!(got.contains(want), "expected `{want}` in: {got}");
}

#[test]
fn a_good_checkpoint_loads() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(load(d.path(), &good()), "ok");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let d = tempfile::tempdir().unwrap();
    let mut ck = good();
    tensor(&mut ck, "gmf_user_embedding").shape = vec![8, 7]; // same elements, transposed
    expect(&load(d.path(), &ck), "tensor `gmf_user_embedding` has shape [8, 7], but its model spec needs [7, 8]");
}

#[test]
fn a_missing_tensor_is_named() {
    let d = tempfile::tempdir().unwrap();
    let mut ck = good();
    ck.tensors.retain(|t| t.name != "mlp_1_weight");
    // The file now holds fewer weights than the spec needs, which is caught first.
    expect(&load(d.path(), &ck), "needs 473 weights, but the file holds 441");
    // With the weight count made up elsewhere, the name itself is reported.
    ck.tensors.push(HostTensor { name: "spare".into(), shape: vec![32], data: vec![0.0; 32] });
    expect(&load(d.path(), &ck), "missing tensor `mlp_1_weight` for a neumf model");
}

#[test]
fn a_spec_declaring_huge_tables_is_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    for (users, want) in [
        (1usize << 40, "needs 17592186044777 weights, but the file holds 473"),
        (usize::MAX / 2, "needs more than 2^64 weights, but the file holds 473"),
    ] {
        let mut ck = good();
        ck.spec.users = users;
        // The training items' CSR is sized for 7 users; the weight check comes first.
        expect(&load(d.path(), &ck), want);
    }
    let mut ck = good();
    ck.spec.layers = vec![16, 1 << 30, 4];
    expect(&load(d.path(), &ck), "weights, but the file holds 473");
}

/// Towers so wide that a batch of rows would need gigabytes of activations: the weights fit
/// the file (the tables are small), so the workspace limit is what refuses them, before any
/// workspace is allocated. A wide but modest model still loads, scoring fewer users per call.
#[test]
fn towers_too_wide_for_the_workspace_limit_are_refused() {
    let be = CpuBackend::<f32>::default();
    let build = |items: usize, factors: usize, layers: Vec<usize>| {
        let cfg = ModelConfig { factors, layers, ..ModelConfig::new(ModelKind::NeuMf, 7, items) };
        let m = AnyModel::new(&be, &cfg, 1, &mut ncf_core::rng::seeded(3, 0)).unwrap();
        let mut ck = Checkpoint {
            spec: ModelSpec::of(&cfg),
            tensors: m.params().to_host(&be).unwrap(),
            metadata: Default::default(),
        };
        let pairs: Vec<(u32, u32)> = (0..7).map(|u| (u, u % items as u32)).collect();
        ck.put_seen(&ncf_data::UserItems::from_pairs(7, items, &pairs));
        ck
    };
    let d = tempfile::tempdir().unwrap();
    // 30,000 items and a 30,000-wide layer: 0.2 M weights, but 30,000 rows of 120,000 floats.
    let wide = build(30_000, 1, vec![2, 30_000, 1]);
    expect(
        &load(d.path(), &wide),
        "needs about 13735 MB of activations for 30000 rows, past the limit of 1024 MB (MAX_WORKSPACE_FLOATS)",
    );
    // 11 items and a 4,096-wide layer: one user per call (11 rows) fits.
    assert_eq!(load(d.path(), &build(11, 8, vec![16, 4096, 4])), "ok");
}

#[test]
fn a_changed_model_spec_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut ck = good();
    ck.spec.factors = 4; // the file's GMF tables are 8 wide
    expect(&load(d.path(), &ck), "tensor `gmf_user_embedding` has shape [7, 8], but its model spec needs [7, 4]");
    let mut ck = good();
    ck.spec.kind = "mlp".into(); // an MLP's tensors are a subset: its head is narrower
    expect(&load(d.path(), &ck), "tensor `predict_weight` has shape [1, 12], but its model spec needs [1, 4]");
    let mut ck = good();
    ck.spec.kind = "transformer".into();
    expect(&load(d.path(), &ck), "bad `model` metadata");
    let mut ck = good();
    ck.spec.layers = vec![15, 8, 4];
    expect(&load(d.path(), &ck), "bad `model` metadata");
    let mut ck = good();
    ck.spec.items = 0;
    expect(&load(d.path(), &ck), "bad `model` metadata");
}

#[test]
fn non_finite_weights_are_refused() {
    let d = tempfile::tempdir().unwrap();
    for (name, k, x, shown) in [
        ("mlp_0_weight", 5, f64::NAN, "NaN"),
        ("predict_bias", 0, f64::INFINITY, "inf"),
        ("gmf_item_embedding", 87, f64::NEG_INFINITY, "-inf"),
    ] {
        let mut ck = good();
        tensor(&mut ck, name).data[k] = x;
        expect(&load(d.path(), &ck), &format!("tensor `{name}` holds {shown} at element {k}"));
    }
}

#[test]
fn bad_training_items_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut ck = good();
    tensor(&mut ck, "seen/items").data[2] = 11.0; // items are 0..=10
    expect(&load(d.path(), &ck), "`seen/items` holds item 11 of a model with 11 items");
    let mut ck = good();
    tensor(&mut ck, "seen/offsets").data[3] = 1.0; // offsets must not decrease
    expect(&load(d.path(), &ck), "`seen/offsets` is not a CSR");
    let mut ck = good();
    let off = tensor(&mut ck, "seen/offsets");
    off.data.pop();
    off.shape = vec![7];
    expect(&load(d.path(), &ck), "`seen/offsets` has 7 entries for 7 users");
}

/// Bytes that are not a well-formed safetensors file: truncated, a header length far beyond
/// the file, a header declaring a tensor of 10¹² elements over 8 bytes of data, overlapping
/// offsets, and a tensor of the wrong dtype. Each is an error naming the file.
#[test]
fn malformed_files_are_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("m.safetensors");
    good().save(&path, true).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = |json: &str, data: usize| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    let model = r#""__metadata__":{"model":"{\"kind\":\"gmf\",\"users\":1,\"items\":1,\"factors\":1,\"layers\":[]}"}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() - 5].to_vec()),
        ("header cut", bytes[..20].to_vec()),
        ("empty", vec![]),
        ("header length 2^64-1", [u64::MAX.to_le_bytes().to_vec(), bytes[8..].to_vec()].concat()),
        (
            "huge shape",
            header(&format!(r#"{{{model},"x":{{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,8]}}}}"#), 8),
        ),
        (
            "shape overflow",
            header(
                &format!(
                    r#"{{{model},"x":{{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}}}"#
                ),
                8,
            ),
        ),
        (
            "offsets past the end",
            header(&format!(r#"{{{model},"x":{{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}}}"#), 8),
        ),
        ("wrong dtype", header(&format!(r#"{{{model},"x":{{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}}}"#), 8)),
        ("not json", header("{{{{", 0)),
        ("no spec", header(r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4)),
        ("spec not json", header(r#"{"__metadata__":{"model":"{"}}"#, 0)),
    ];
    for (what, b) in cases {
        std::fs::write(&path, &b).unwrap();
        let got = load_path(&path);
        assert!(got != "ok" && got.contains("m.safetensors"), "{what}: {got}");
        println!("{what}: {got}");
    }
}
