//! Times the non-GEMM parts of an epoch on ML-1M-sized data: one epoch's negative sampling,
//! the sampled evaluation (every user's test item among 99 negatives) and full ranking, for
//! NeuMF-8 `[64,32,16,8]` at the trainer's settings (25,600 rows per scoring call).
//!
//! `cargo bench --bench pipeline` uses `$NCF_DATA/ncf-ml-1m` when `NCF_DATA` is set, otherwise
//! a synthetic ML-1M-sized dataset (`ncf data synth` defaults: 6,040 users × 3,706 movies,
//! about 1M ratings). The model is freshly initialized: scoring costs do not depend on the
//! weights' values. Prints the minimum and median of several runs (this machine is noisy; the
//! minimum is the best estimate of the cost).

use ncf_cpu::CpuBackend;
use ncf_data::{NcfSplit, Row, sample_epoch};
use ncf_model::{AnyModel, ModelConfig, ModelKind};
use ncf_train::Prepared;

#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn load() -> (NcfSplit, &'static str) {
    if let Some(d) = std::env::var_os("NCF_DATA") {
        let dir = std::path::PathBuf::from(d).join("ncf-ml-1m");
        return (NcfSplit::load(&dir).expect("NCF_DATA/ncf-ml-1m"), "NCF ML-1M split");
    }
    let syn = ncf_data::synth::generate(&ncf_data::synth::SynthConfig::default()).expect("synth");
    let data = ncf_data::Implicit::from_ratings(&syn.ratings, None);
    (ncf_data::leave_latest_out(&data, 99, 42).to_ncf_split("synth"), "synthetic ML-1M-sized data")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    // `-- sampled` loops the sampled evaluation only (for a profiler).
    let only_sampled = std::env::args().any(|a| a == "sampled");
    let (split, what) = load();
    let data = Prepared::from_split(&split, 42);
    println!(
        "{what}: {} users, {} items, {} training interactions; {} threads",
        split.n_users,
        split.n_items,
        data.train.len(),
        rayon::current_num_threads()
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut epoch = 0;
    let (min, med) = time(10, || {
        epoch += 1;
        sample_epoch(&data.train, &data.known, 4, 42, epoch, &mut rows)
    });
    println!("negative sampling, 1 epoch (4 per positive, {} rows): min {min:.1} ms, median {med:.1} ms", rows.len());

    let be = CpuBackend::<f32>::default();
    let cfg = ModelConfig::new(ModelKind::NeuMf, split.n_users, split.n_items);
    let mut model = AnyModel::new(&be, &cfg, 25_600, &mut ncf_core::rng::seeded(42, 1)).expect("model");
    if only_sampled {
        let (min, med) = time(200, || {
            ncf_eval::evaluate(&be, &mut model, &data.test, 10).expect("evaluate");
        });
        println!("sampled evaluation × 200: min {min:.1} ms, median {med:.1} ms");
        return;
    }
    let (min, med) = time(15, || {
        ncf_eval::evaluate(&be, &mut model, &data.test, 10).expect("evaluate");
    });
    println!(
        "sampled evaluation, NeuMF-8, {} users × 100 candidates: min {min:.1} ms, median {med:.1} ms",
        data.test.len()
    );
    let seen = |u: usize| data.known.of(u);
    let (min, med) = time(5, || {
        ncf_eval::evaluate_full(&be, &mut model, &split.test, split.n_items, seen, 10).expect("full");
    });
    println!(
        "full ranking, NeuMF-8, {} users × {} items: min {min:.0} ms, median {med:.0} ms",
        split.test.len(),
        split.n_items
    );
}
