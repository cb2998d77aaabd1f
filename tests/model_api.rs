//! Model-level behaviour: bad input is a typed error (never a panic), and NeuMF can be built
//! from pretrained GMF and MLP with the paper's α-weighted output layer.

use ncf_core::{Backend, Error};
use ncf_cpu::CpuBackend;
use ncf_model::{AnyModel, Gmf, Mlp, Model, ModelConfig, ModelKind, NeuMf};

fn ids(be: &CpuBackend<f32>, x: &[u32]) -> Vec<u32> {
    let mut out = be.zeros_ids(x.len()).unwrap();
    be.write_ids(&mut out, x).unwrap();
    out
}

#[test]
fn out_of_range_ids_and_oversized_batches_are_typed_errors() {
    let be = CpuBackend::<f32>::default();
    for kind in ModelKind::ALL {
        let cfg = ModelConfig::new(kind, 10, 20);
        let mut m = AnyModel::new(&be, &cfg, 4, &mut ncf_core::rng::seeded(1, 0)).unwrap();
        let err = m.forward(&be, &ids(&be, &[0, 1, 2, 3]), &ids(&be, &[0, 20, 1, 1]), 4).unwrap_err();
        match &err {
            Error::IdOutOfRange { op: "embedding_forward", id: 20, pos: 1, rows: 20, .. } => {}
            other => panic!("{kind}: unexpected {other}"),
        }
        let err = m.forward(&be, &ids(&be, &[0; 5]), &ids(&be, &[0; 5]), 5).unwrap_err();
        assert!(err.to_string().contains("batch of 5 rows exceeds the workspace's max_batch 4"), "{kind}: {err}");
        // Fewer ids than the batch claims: a shape error naming the op and both sizes.
        let err = m.forward(&be, &ids(&be, &[0, 1]), &ids(&be, &[0, 1]), 3).unwrap_err();
        assert!(
            err.to_string().contains("shape mismatch for `ids`: expected (3) = 3 elements, got a buffer of 2 elements"),
            "{kind}: {err}"
        );
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let be = CpuBackend::<f32>::default();
    let mut rng = ncf_core::rng::seeded(1, 0);
    let mut cfg = ModelConfig::new(ModelKind::Mlp, 10, 20);
    cfg.layers = vec![63, 8];
    let err = AnyModel::new(&be, &cfg, 4, &mut rng).err().unwrap();
    assert!(err.to_string().contains("layers[0] must be even"), "{err}");
    cfg.layers = vec![64];
    assert!(AnyModel::new(&be, &cfg, 4, &mut rng).is_err());
    let mut cfg = ModelConfig::new(ModelKind::Gmf, 0, 20);
    assert!(AnyModel::new(&be, &cfg, 4, &mut rng).is_err());
    cfg.users = 3;
    cfg.factors = 0;
    assert!(AnyModel::new(&be, &cfg, 4, &mut rng).is_err());
    assert!("transformer".parse::<ModelKind>().is_err());
    assert_eq!("NeuMF".parse::<ModelKind>().unwrap(), ModelKind::NeuMf);
}

#[test]
fn neumf_from_pretrained_copies_towers_and_mixes_the_output_layer() {
    let be = CpuBackend::<f64>::default();
    let mut cfg = ModelConfig::new(ModelKind::NeuMf, 6, 9);
    cfg.factors = 4;
    cfg.layers = vec![16, 8, 4];
    let gmf = Gmf::new(&be, &ModelConfig { kind: ModelKind::Gmf, ..cfg.clone() }, 3, &mut ncf_core::rng::seeded(1, 0))
        .unwrap();
    let mlp = Mlp::new(&be, &ModelConfig { kind: ModelKind::Mlp, ..cfg.clone() }, 3, &mut ncf_core::rng::seeded(2, 0))
        .unwrap();
    let alpha = 0.5;
    let neumf = NeuMf::from_pretrained(&be, &cfg, &gmf, &mlp, alpha, 3).unwrap();
    let host = |ps: &ncf_model::ParamSet<CpuBackend<f64>>, name: &str| {
        ps.to_host(&be).unwrap().into_iter().find(|t| t.name == name).unwrap().data
    };
    for name in ["gmf_user_embedding", "gmf_item_embedding"] {
        assert_eq!(host(&neumf.params, name), host(&gmf.params, name), "{name}");
    }
    for name in ["mlp_user_embedding", "mlp_item_embedding", "mlp_0_weight", "mlp_0_bias", "mlp_1_weight", "mlp_1_bias"]
    {
        assert_eq!(host(&neumf.params, name), host(&mlp.params, name), "{name}");
    }
    let w = host(&neumf.params, "predict_weight");
    let (wg, wm) = (host(&gmf.params, "predict_weight"), host(&mlp.params, "predict_weight"));
    assert_eq!(w.len(), 8);
    for k in 0..4 {
        assert_eq!(w[k], alpha * wg[k]);
        assert_eq!(w[4 + k], (1.0 - alpha) * wm[k]);
    }

    // So the pretrained NeuMF's logit is exactly α·GMF + (1−α)·MLP for any input.
    let (mut g, mut m, mut n) = (gmf, mlp, neumf);
    let u = vec![0u32, 5, 2];
    let i = vec![8u32, 0, 3];
    g.forward(&be, &u, &i, 3).unwrap();
    m.forward(&be, &u, &i, 3).unwrap();
    n.forward(&be, &u, &i, 3).unwrap();
    for r in 0..3 {
        let want = alpha * g.logits()[r] + (1.0 - alpha) * m.logits()[r];
        assert!((n.logits()[r] - want).abs() < 1e-12, "row {r}: {} vs {want}", n.logits()[r]);
    }

    let bad_cfg = ModelConfig { factors: 5, ..cfg.clone() };
    let err = NeuMf::from_pretrained(&be, &bad_cfg, &g, &m, 0.5, 3).err().unwrap();
    assert!(err.to_string().contains("NeuMf::from_pretrained"), "{err}");
    assert!(NeuMf::from_pretrained(&be, &cfg, &g, &m, 1.5, 3).is_err());
}

/// `score` (first MLP layer precomputed per user and per item) is `forward` up to rounding, for
/// every model, in f64 and f32; and it refuses tables computed from older weights.
#[test]
fn fast_scoring_matches_forward_and_refuses_stale_tables() {
    fn check<T: ncf_cpu::CpuFloat>(tol: ncf_core::Tol) {
        let be = CpuBackend::<T>::default();
        let (n_users, n_items, b) = (13, 29, 64);
        let users: Vec<u32> = (0..b as u32).map(|k| (k * 7) % n_users as u32).collect();
        let items: Vec<u32> = (0..b as u32).map(|k| (k * 11 + 3) % n_items as u32).collect();
        for kind in ModelKind::ALL {
            let mut cfg = ModelConfig::new(kind, n_users, n_items);
            cfg.layers = vec![16, 12, 6, 4];
            cfg.init = ncf_model::InitConfig::for_gradcheck();
            let mut m = AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(5, 0)).unwrap();
            m.forward(&be, &users, &items, b).unwrap();
            let want: Vec<f64> = m.logits()[..b].iter().map(|x| x.to_f64()).collect();
            m.prepare_scoring(&be).unwrap();
            m.score(&be, &users, &items, b).unwrap();
            let got: Vec<f64> = m.logits()[..b].iter().map(|x| x.to_f64()).collect();
            ncf_core::tol::assert_close(&format!("{kind} score vs forward"), &got, &want, tol);
            if matches!(kind, ModelKind::Mlp | ModelKind::NeuMf) {
                // The hybrid: the features' columns of layer 0 fold into the per-user and
                // per-item tables.
                let hcfg = ModelConfig { user_features: 5, item_features: 3, ..cfg.clone() };
                let mut h = AnyModel::new(&be, &hcfg, b, &mut ncf_core::rng::seeded(6, 0)).unwrap();
                let hot = |n: usize, w: usize| -> Vec<f64> { (0..n * w).map(|k| (k % 3 == 1) as u8 as f64).collect() };
                h.params_and_grads().0.load(&be, "user_features", &hot(n_users, 5)).unwrap();
                h.params_and_grads().0.load(&be, "item_features", &hot(n_items, 3)).unwrap();
                h.forward(&be, &users, &items, b).unwrap();
                let want: Vec<f64> = h.logits()[..b].iter().map(|x| x.to_f64()).collect();
                h.prepare_scoring(&be).unwrap();
                h.score(&be, &users, &items, b).unwrap();
                let got: Vec<f64> = h.logits()[..b].iter().map(|x| x.to_f64()).collect();
                ncf_core::tol::assert_close(&format!("{kind}+features score vs forward"), &got, &want, tol);
                // The features matter: zero them and the logits change.
                h.params_and_grads().0.load(&be, "item_features", &vec![0.0; n_items * 3]).unwrap();
                h.forward(&be, &users, &items, b).unwrap();
                let zeroed: Vec<f64> = h.logits()[..b].iter().map(|x| x.to_f64()).collect();
                assert_ne!(zeroed, want, "{kind}: the item features change the logits");
            }
            if matches!(kind, ModelKind::Mlp | ModelKind::NeuMf) {
                let name = m.params().tensors[0].name.clone();
                let n = m.params().tensors[0].numel();
                m.params_and_grads().0.load(&be, &name, &vec![0.5; n]).unwrap();
                let err = m.score(&be, &users, &items, b).unwrap_err().to_string();
                assert!(err.contains("weights changed since prepare_scoring"), "{kind}: {err}");
            }
        }
    }
    check::<f64>(ncf_core::Tol::F64_KERNEL);
    check::<f32>(ncf_core::Tol::F32_KERNEL);
}

/// The rating model's regularized tower: training mode (batch statistics, dropout masks set by
/// `set_noise`) and eval mode (`score`: running statistics, no dropout) differ; each is
/// deterministic; the forward moves the running statistics and the optimizer never does.
#[test]
fn the_regularized_rating_tower_has_train_and_eval_modes() {
    use ncf_model::{OptimConfig, Optimizer, Rating};
    let be = CpuBackend::<f64>::default();
    let cfg = ModelConfig {
        batch_norm: true,
        dropout: 0.5,
        layers: vec![16, 12, 8],
        ..ModelConfig::new(ModelKind::Rating, 6, 9)
    };
    let mut m = Rating::new(&be, &cfg, 8, &mut ncf_core::rng::seeded(3, 0)).unwrap();
    let (users, items) = (vec![0u32, 1, 2, 3, 4, 5, 0, 1], vec![0u32, 2, 4, 6, 8, 1, 3, 5]);
    let stat = |m: &Rating<CpuBackend<f64>>, name: &str| {
        m.params.to_host(&be).unwrap().into_iter().find(|t| t.name == name).unwrap().data
    };
    assert_eq!(stat(&m, "mlp_0_bn_mean"), vec![0.0; 12]);
    let run = |m: &mut Rating<CpuBackend<f64>>, noise: Option<u64>| {
        match noise {
            Some(step) => {
                m.set_noise(7, step);
                m.forward(&be, &users, &items, 8).unwrap();
            }
            None => m.score(&be, &users, &items, 8).unwrap(),
        }
        be.download(m.logits()).unwrap()
    };
    let train_a = run(&mut m, Some(1));
    let moved = stat(&m, "mlp_0_bn_mean");
    assert!(moved.iter().any(|&v| v != 0.0), "the training forward moves the running mean");
    assert_eq!(run(&mut m, Some(1)), train_a, "the same step's masks give the same outputs");
    assert_ne!(run(&mut m, Some(2)), train_a, "another step draws other masks");
    let before = stat(&m, "mlp_0_bn_mean");
    let eval = run(&mut m, None);
    assert_eq!(run(&mut m, None), eval, "eval mode is deterministic");
    assert_ne!(eval, train_a);
    assert_eq!(stat(&m, "mlp_0_bn_mean"), before, "scoring leaves the running statistics alone");

    // An Adam step with decoupled weight decay changes the weights, not the statistics.
    let opt_cfg = OptimConfig::adam(0.1).with_decay(ncf_model::Group::Bias, ncf_core::Decay::Decoupled(0.5));
    let mut opt = Optimizer::new(&be, &m.params, opt_cfg, 8).unwrap();
    m.set_noise(7, 3);
    m.forward(&be, &users, &items, 8).unwrap();
    let stats = (stat(&m, "mlp_0_bn_mean"), stat(&m, "mlp_0_bn_var"), stat(&m, "mlp_0_bn_gamma"));
    m.backward(&be, &users, &items, &vec![0.1; 8], 8).unwrap();
    let (p, g) = m.params_and_grads();
    opt.step(&be, p, g, &users, &items, 8).unwrap();
    assert_eq!((stat(&m, "mlp_0_bn_mean"), stat(&m, "mlp_0_bn_var")), (stats.0, stats.1));
    assert_ne!(stat(&m, "mlp_0_bn_gamma"), stats.2, "γ is trained");

    // NCF's towers take neither.
    let bad = ModelConfig { dropout: 0.2, ..ModelConfig::new(ModelKind::NeuMf, 6, 9) };
    let err = AnyModel::new(&be, &bad, 4, &mut ncf_core::rng::seeded(1, 0)).err().expect("refused").to_string();
    assert!(err.contains("offered for the rating model"), "{err}");
    let bad = ModelConfig { dropout: 1.0, ..cfg };
    assert!(Rating::new(&be, &bad, 4, &mut ncf_core::rng::seeded(1, 0)).is_err());
}
