//! The engine against PyTorch: a tiny NeuMF's logits, loss, every gradient, and the weights
//! after two Adam steps and two SGD-with-momentum steps, all computed by PyTorch in float64
//! (`tests/fixtures/neumf_tiny_oracle.json`, copied from `shared/fixtures/`).
//!
//! Finite differences prove a backward matches its own forward; this proves the forward, the
//! loss and the optimizers mean what PyTorch (and the original NCF code) mean.

use ncf_core::tol::compare;
use ncf_core::{Backend, Tol};
use ncf_cpu::{CpuBackend, GemmImpl};
use ncf_model::{InitConfig, Model, ModelConfig, ModelKind, NeuMf, OptimConfig, Optimizer, StepScratch, train_step};
use serde_json::Value;

/// Agreement expected in f64: summation order differs from PyTorch's, nothing else.
const ORACLE: Tol = Tol { abs: 1e-12, rel: 1e-10 };

fn oracle() -> Value {
    serde_json::from_str(include_str!("fixtures/neumf_tiny_oracle.json")).expect("fixture parses")
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not numeric: {other}"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    flat(v).into_iter().map(|x| x as u32).collect()
}

struct Setup {
    be: CpuBackend<f64>,
    model: NeuMf<CpuBackend<f64>>,
    batch: ncf_model::Batch<CpuBackend<f64>>,
}

fn setup(o: &Value, gemm: GemmImpl) -> Setup {
    let c = &o["config"];
    let (users, items) = (c["users"].as_u64().unwrap() as usize, c["items"].as_u64().unwrap() as usize);
    let cfg = ModelConfig {
        factors: c["factors"].as_u64().unwrap() as usize,
        layers: ids(&c["layers"]).into_iter().map(|x| x as usize).collect(),
        init: InitConfig::default(),
        ..ModelConfig::new(ModelKind::NeuMf, users, items)
    };
    let be = CpuBackend::<f64>::new(gemm);
    let mut rng = ncf_core::rng::seeded(0, 0);
    let mut model = NeuMf::new(&be, &cfg, 6, &mut rng).unwrap();
    let names: Vec<String> = model.params.tensors.iter().map(|t| t.name.clone()).collect();
    for name in &names {
        model.params.load(&be, name, &flat(&o["params"][name])).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut batch = ncf_model::Batch::with_capacity(&be, 6).unwrap();
    batch.set(&be, &ids(&o["batch"]["users"]), &ids(&o["batch"]["items"]), &flat(&o["batch"]["labels"])).unwrap();
    Setup { be, model, batch }
}

fn check_params(s: &Setup, want: &Value, what: &str) {
    let mut failures = Vec::new();
    for t in s.model.params.to_host(&s.be).unwrap() {
        let c = compare(&format!("{what}/{}", t.name), &t.data, &flat(&want[&t.name]), ORACLE);
        println!("{c}");
        if !c.ok() {
            failures.push(c.to_string());
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn forward_loss_and_every_gradient_match_pytorch() {
    let o = oracle();
    for gemm in [GemmImpl::Naive, GemmImpl::Scratch, GemmImpl::Library] {
        let mut s = setup(&o, gemm);
        let b = s.batch.len;
        s.model.forward(&s.be, &s.batch.users, &s.batch.items, b).unwrap();
        let logits = s.be.download(s.model.logits()).unwrap()[..b].to_vec();
        let c = compare("logits", &logits, &flat(&o["logits"]), ORACLE);
        println!("{gemm:?} {c}");
        assert!(c.ok(), "{gemm:?}: {c}");
        let mut scratch = StepScratch::new(&s.be, b).unwrap();
        s.be.bce_with_logits(s.model.logits(), &s.batch.labels, b, &mut scratch.loss, &mut scratch.dlogits).unwrap();
        let loss = scratch.take_loss(&s.be).unwrap();
        let c = compare("loss", &[loss], &[o["loss"].as_f64().unwrap()], ORACLE);
        println!("{gemm:?} {c}");
        assert!(c.ok(), "{gemm:?}: {c}");
        s.model.backward(&s.be, &s.batch.users, &s.batch.items, &scratch.dlogits, b).unwrap();
        for t in s.model.grads.to_host(&s.be).unwrap() {
            let c = compare(&format!("grad {}", t.name), &t.data, &flat(&o["grads"][&t.name]), ORACLE);
            println!("{gemm:?} {c}");
            assert!(c.ok(), "{gemm:?}: {c}");
        }
    }
}

#[test]
fn two_dense_adam_steps_match_pytorch() {
    let o = oracle();
    let mut s = setup(&o, GemmImpl::Scratch);
    let lr = o["adam"]["lr"].as_f64().unwrap();
    let betas = flat(&o["adam"]["betas"]);
    let hp = ncf_core::AdamHp {
        lr,
        beta1: betas[0],
        beta2: betas[1],
        eps: o["adam"]["eps"].as_f64().unwrap(),
        decay: ncf_core::Decay::None,
    };
    // PyTorch's Adam is dense: every embedding row steps, touched or not.
    let cfg = OptimConfig::uniform(ncf_core::OptimKind::Adam(hp), false);
    let mut opt = Optimizer::new(&s.be, &s.model.params, cfg, 6).unwrap();
    let mut scratch = StepScratch::new(&s.be, 6).unwrap();
    for _ in 0..2 {
        train_step(&s.be, &mut s.model, &mut opt, &s.batch, &mut scratch).unwrap();
    }
    check_params(&s, &o["params_after_2_steps_adam"], "adam");
}

#[test]
fn two_sgd_momentum_steps_match_pytorch() {
    let o = oracle();
    let mut s = setup(&o, GemmImpl::Scratch);
    let cfg = OptimConfig::sgd(o["sgd"]["lr"].as_f64().unwrap(), o["sgd"]["momentum"].as_f64().unwrap());
    let mut opt = Optimizer::new(&s.be, &s.model.params, cfg, 6).unwrap();
    let mut scratch = StepScratch::new(&s.be, 6).unwrap();
    for _ in 0..2 {
        train_step(&s.be, &mut s.model, &mut opt, &s.batch, &mut scratch).unwrap();
    }
    check_params(&s, &o["params_after_2_steps_sgd_momentum"], "sgd");
}

/// In this fixture the same batch is used at both steps, so every row with a gradient at step 2
/// also had one at step 1, and rows never touched have zero moments: lazy Adam must agree with
/// PyTorch's dense Adam exactly here.
#[test]
fn lazy_adam_equals_dense_when_the_same_rows_are_touched() {
    let o = oracle();
    let mut s = setup(&o, GemmImpl::Scratch);
    let lr = o["adam"]["lr"].as_f64().unwrap();
    let mut opt = Optimizer::new(&s.be, &s.model.params, OptimConfig::adam(lr), 6).unwrap();
    let mut scratch = StepScratch::new(&s.be, 6).unwrap();
    for _ in 0..2 {
        train_step(&s.be, &mut s.model, &mut opt, &s.batch, &mut scratch).unwrap();
    }
    check_params(&s, &o["params_after_2_steps_adam"], "lazy adam");
}
