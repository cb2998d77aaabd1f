//! Checkpoints round-trip exactly, refuse to overwrite, and reject files that are not theirs.

use ncf_cpu::CpuBackend;
use ncf_model::{AnyModel, Model, ModelConfig, ModelKind};
use ncf_train::{Checkpoint, ModelSpec};

#[test]
fn save_load_round_trip_and_overwrite_policy() {
    let be = CpuBackend::<f32>::default();
    let mut cfg = ModelConfig::new(ModelKind::NeuMf, 7, 11);
    cfg.layers = vec![16, 8, 4];
    let m = AnyModel::new(&be, &cfg, 4, &mut ncf_core::rng::seeded(3, 0)).unwrap();
    let ck = Checkpoint {
        spec: ModelSpec::of(&cfg),
        tensors: m.params().to_host(&be).unwrap(),
        metadata: Default::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    ck.save(&path, false).unwrap();
    let err = ck.save(&path, false).unwrap_err().to_string();
    assert!(err.contains("exists; pass --force"), "{err}");
    ck.save(&path, true).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");

    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back.spec, ck.spec);
    assert_eq!(back.metadata.get("id_map").map(String::as_str), Some("identity"));
    let rebuilt = back.model(&be, 4, &path).unwrap();
    let (a, b) = (m.params().to_host(&be).unwrap(), rebuilt.params().to_host(&be).unwrap());
    assert_eq!(a, b, "f32 weights survive bit for bit");

    std::fs::write(&path, b"not a checkpoint").unwrap();
    let err = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(err.contains("m.safetensors") && err.contains("not a safetensors file"), "{err}");
}
