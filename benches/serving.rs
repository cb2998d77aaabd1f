//! What answering queries costs, on an ML-1M-sized NeuMF-8 `[64,32,16,8]` (6,040 users ×
//! 3,706 items, freshly initialised: the costs do not depend on the weights' values): `ncf
//! similar`'s exact cosine scan per query, and `ncf recommend`'s top 10 for every user (all
//! 22.4 M pairs scored, training items left out) by the ranker, with scoring alone by the
//! ranker and by the reference path. Prints the minimum and median of several
//! runs and the SIMD level, as the other benches.
//!
//! `cargo bench --bench serving`

use ncf_cpu::CpuBackend;
use ncf_model::{AnyModel, Model, ModelConfig, ModelKind};
use ncf_train::infer::{EmbeddingChoice, Scorer};
use ncf_train::{Checkpoint, ModelSpec};

#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (users, items) = (6_040, 3_706);
    let cfg = ModelConfig::new(ModelKind::NeuMf, users, items);
    let be = CpuBackend::<f32>::default();
    let model = AnyModel::new(&be, &cfg, 1, &mut ncf_core::rng::seeded(1, 1)).expect("model");
    let mut ckpt = Checkpoint {
        spec: ModelSpec::of(&cfg),
        tensors: model.params().to_host(&be).expect("weights"),
        metadata: Default::default(),
    };
    // About 165 training items per user, as in ML-1M.
    let pairs: Vec<(u32, u32)> =
        (0..users as u32).flat_map(|u| (0..165u32).map(move |k| (u, (u * 7 + k * 13) % items as u32))).collect();
    ckpt.put_seen(&ncf_data::UserItems::from_pairs(users, items, &pairs));
    let mut scorer = Scorer::from_checkpoint(&ckpt, std::path::Path::new("bench"), None).expect("scorer");
    println!("SIMD level: {}; threads: {}", ncf_cpu::simd::SimdLevel::best(), rayon::current_num_threads());
    let v = scorer.item_vectors(EmbeddingChoice::Auto).expect("vectors");
    let queries = 1_000;
    let (min, med) = time(5, || {
        for q in 0..queries {
            std::hint::black_box(scorer.similar(&v, (q * 37 % items) as u32, 10).expect("similar"));
        }
    });
    println!(
        "similar, top 10 of {items} items by cosine ({} floats each): {:.1} µs per query (min), {:.1} µs (median)",
        v.1,
        min * 1e3 / queries as f64,
        med * 1e3 / queries as f64
    );
    let all: Vec<u32> = (0..users as u32).collect();
    let (min, med) = time(5, || {
        std::hint::black_box(scorer.recommend(&all, 10).expect("recommend"));
    });
    println!(
        "recommend, top 10 for all {users} users ({} pairs scored, the ranker): {min:.0} ms (min), {med:.0} ms (median)",
        users * items
    );
    let (min, _) = time(3, || {
        std::hint::black_box(scorer.scores(&all).expect("scores"));
    });
    println!("  scoring alone, the ranker (ncf_cpu::rank): {min:.0} ms (min)");
    let (min, _) = time(2, || {
        std::hint::black_box(scorer.scores_reference(&all).expect("scores"));
    });
    println!("  scoring alone, the reference path (Model::score): {min:.0} ms (min)");
    // The ranker's kernel on one thread, on each instruction set this CPU has.
    let ranker = ncf_cpu::rank::Ranker::new(&ckpt.tensors, users, items).expect("ranker");
    let mut out = vec![0f32; items];
    let some = 500;
    for level in ncf_cpu::simd::SimdLevel::ALL.into_iter().filter(|l| l.is_available()) {
        let (min, med) = time(5, || {
            for u in 0..some {
                ranker.score_user_at(u, &mut out, level);
            }
            std::hint::black_box(&out);
        });
        println!(
            "  the ranker on one thread, {level}: {:.0} µs per user (min), {:.0} µs (median), {:.1} ns per pair",
            min * 1e3 / some as f64,
            med * 1e3 / some as f64,
            min * 1e6 / (some * items) as f64
        );
    }
}
