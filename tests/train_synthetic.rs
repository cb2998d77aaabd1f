//! NeuMF learns a planted structure: on a synthetic problem whose positives come from hidden
//! user and item factors, the training loss falls and the held-out item ranks far above chance.
//! Training is deterministic: the same seed gives bit-identical weights, on 1 or 2 threads.

use ncf_core::{Backend, Rng};
use ncf_cpu::CpuBackend;
use ncf_model::{AnyModel, Batch, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepScratch, train_step};
use rand::RngExt;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashSet;

const USERS: usize = 300;
const ITEMS: usize = 200;
const POSITIVES_PER_USER: usize = 20;
const NEGATIVES: usize = 4;

/// A planted problem: user u likes the 20 items with the highest `a_u · b_i` (hidden dimension
/// 4). One liked item per user is held out, with 99 items the user does not like as its
/// ranking competitors (the NCF protocol; chance HR@10 = 0.10).
struct Planted {
    train: Vec<(u32, u32)>,
    liked: Vec<HashSet<u32>>,
    test: Vec<(u32, u32, Vec<u32>)>,
}

fn planted(seed: u64) -> Planted {
    let mut rng = ncf_core::rng::seeded(seed, 1);
    let normal = |n: usize, rng: &mut Rng| -> Vec<f64> { (0..n).map(|_| StandardNormal.sample(rng)).collect() };
    let a = normal(USERS * 4, &mut rng);
    let b = normal(ITEMS * 4, &mut rng);
    let (mut train, mut liked, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..USERS {
        let mut scored: Vec<(f64, u32)> =
            (0..ITEMS).map(|i| ((0..4).map(|k| a[u * 4 + k] * b[i * 4 + k]).sum(), i as u32)).collect();
        scored.sort_by(|x, y| y.0.total_cmp(&x.0));
        let mut pos: Vec<u32> = scored[..POSITIVES_PER_USER].iter().map(|s| s.1).collect();
        pos.shuffle(&mut rng);
        let held = pos.pop().unwrap();
        let mut others: Vec<u32> = scored[POSITIVES_PER_USER..].iter().map(|s| s.1).collect();
        others.shuffle(&mut rng);
        test.push((u as u32, held, others[..99].to_vec()));
        train.extend(pos.iter().map(|&i| (u as u32, i)));
        liked.push(pos.iter().copied().chain([held]).collect());
    }
    Planted { train, liked, test }
}

/// HR@10 and NDCG@10 of the held-out items.
fn evaluate<B: Backend<T = f32>, M: Model<B>>(be: &B, model: &mut M, p: &Planted) -> (f64, f64) {
    let mut batch = Batch::with_capacity(be, 100).unwrap();
    let (mut hr, mut ndcg) = (0.0, 0.0);
    for (u, held, negs) in &p.test {
        let items: Vec<u32> = std::iter::once(*held).chain(negs.iter().copied()).collect();
        batch.set(be, &vec![*u; 100], &items, &[0.0; 100]).unwrap();
        model.forward(be, &batch.users, &batch.items, 100).unwrap();
        let s = be.download(model.logits()).unwrap();
        let rank = s[1..100].iter().filter(|&&x| x > s[0]).count();
        if rank < 10 {
            hr += 1.0;
            ndcg += 1.0 / ((rank + 2) as f64).log2();
        }
    }
    (hr / p.test.len() as f64, ndcg / p.test.len() as f64)
}

struct Run {
    losses: Vec<f64>,
    hr: f64,
    ndcg: f64,
    hr_before: f64,
    weights: Vec<Vec<f32>>,
}

/// Trains NeuMF (factors 8, layers [32,16,8]) with 4 sampled negatives per positive,
/// Adam lr 0.005 with lazy embedding rows.
fn train(seed: u64, epochs: usize, batch_size: usize) -> Run {
    let p = planted(7);
    let be = CpuBackend::<f32>::default();
    let mut cfg = ModelConfig::new(ModelKind::NeuMf, USERS, ITEMS);
    cfg.layers = vec![32, 16, 8];
    let mut init_rng = ncf_core::rng::seeded(seed, 2);
    let mut model = AnyModel::new(&be, &cfg, batch_size.max(100), &mut init_rng).unwrap();
    let (hr_before, _) = evaluate(&be, &mut model, &p);
    let mut opt = Optimizer::new(&be, model.params(), OptimConfig::adam(0.005), batch_size).unwrap();
    let mut batch = Batch::with_capacity(&be, batch_size).unwrap();
    let mut scratch = StepScratch::new(&be, batch_size).unwrap();
    let mut rng = ncf_core::rng::seeded(seed, 3);
    let mut losses = Vec::new();
    for _ in 0..epochs {
        // Each positive plus NEGATIVES items the user does not like, drawn uniformly.
        let mut rows: Vec<(u32, u32, f32)> = Vec::new();
        for &(u, i) in &p.train {
            rows.push((u, i, 1.0));
            for _ in 0..NEGATIVES {
                let j = loop {
                    let j = rng.random_range(0..ITEMS as u32);
                    if !p.liked[u as usize].contains(&j) {
                        break j;
                    }
                };
                rows.push((u, j, 0.0));
            }
        }
        rows.shuffle(&mut rng);
        let (mut total, mut steps) = (0.0, 0);
        for chunk in rows.chunks(batch_size) {
            let us: Vec<u32> = chunk.iter().map(|r| r.0).collect();
            let is: Vec<u32> = chunk.iter().map(|r| r.1).collect();
            let ys: Vec<f32> = chunk.iter().map(|r| r.2).collect();
            batch.set(&be, &us, &is, &ys).unwrap();
            train_step(&be, &mut model, &mut opt, &batch, &mut scratch).unwrap();
            total += scratch.take_loss(&be).unwrap();
            steps += 1;
        }
        losses.push(total / steps as f64);
    }
    let (hr, ndcg) = evaluate(&be, &mut model, &p);
    let weights = model.params().tensors.iter().map(|t| t.buf.clone()).collect();
    Run { losses, hr, ndcg, hr_before, weights }
}

#[test]
fn neumf_learns_planted_structure() {
    let r = train(11, 8, 256);
    println!("loss by epoch: {:?}", r.losses.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>());
    println!(
        "HR@10 before training {:.3}, after {:.3}; NDCG@10 after {:.3} (chance HR@10 = 0.100)",
        r.hr_before, r.hr, r.ndcg
    );
    assert!(r.losses.windows(2).all(|w| w[1] < w[0]), "loss must fall every epoch: {:?}", r.losses);
    assert!(r.losses[r.losses.len() - 1] < 0.8 * r.losses[0], "{:?}", r.losses);
    assert!(r.hr >= 0.5, "HR@10 {:.3} is not clearly above chance (0.10)", r.hr);
    assert!(r.hr > r.hr_before + 0.3, "training must help: {:.3} → {:.3}", r.hr_before, r.hr);
}

/// Batch 256 (the paper's) and batch 4096, where the embedding, GEMM and optimizer kernels take
/// their multi-threaded paths: the weights must not depend on the thread count.
#[test]
fn same_seed_gives_bit_identical_weights_on_one_two_and_three_threads() {
    let bits =
        |r: &Run| r.weights.iter().map(|w| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
    for batch in [256, 4096] {
        let run_on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| train(5, 2, batch))
        };
        let a = run_on(2);
        let b = run_on(2);
        assert_eq!(bits(&a), bits(&b), "batch {batch}: same seed, same thread count");
        for threads in [1, 3] {
            let c = run_on(threads);
            assert_eq!(bits(&a), bits(&c), "batch {batch}: same seed, 2 threads vs {threads}");
            assert_eq!(a.losses, c.losses);
        }
        let d = train(6, 2, batch);
        assert_ne!(bits(&a), bits(&d), "batch {batch}: a different seed must give different weights");
    }
}
