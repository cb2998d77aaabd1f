//! `ncf eval`: a saved checkpoint (or the popularity baseline) on its data's test set.

use super::{check_device, source_options, thread_pool};
use anyhow::{Context, Result, bail};
use ncf_core::Backend;
use ncf_cpu::CpuBackend;
use ncf_train::{Device, Gemm};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint written by `ncf train --save`.
    #[arg(long, required_unless_present = "popularity")]
    model: Option<PathBuf>,
    /// Instead of a model, evaluate the popularity baseline (candidates ranked by their number
    /// of training interactions), sampled protocol.
    #[arg(long, conflicts_with_all = ["model", "full_ranking"])]
    popularity: bool,
    /// The data the model was trained on (as `ncf train --data`; default: the embedded sample).
    #[arg(long)]
    data: Option<PathBuf>,
    /// As `ncf train --min-rating`.
    #[arg(long)]
    min_rating: Option<f32>,
    /// As `ncf train --split-seed`.
    #[arg(long, default_value_t = 42)]
    split_seed: u64,
    /// MovieLens sources: test negatives per user (as `ncf train --test-negatives`).
    #[arg(long, default_value_t = 99)]
    test_negatives: usize,
    /// Cut-off K of HR@K and NDCG@K.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Rank the test item among all items the user has not interacted with in training
    /// (HR, NDCG, Precision, Recall @K and MRR) instead of among its 99 sampled negatives.
    #[arg(long)]
    full_ranking: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu or cuda (as `ncf train --device`; the CUDA path is not yet verified on a GPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// GEMM of the dense layers: naive, scratch (the tiled kernel on a GPU) or library
    /// (matrixmultiply on the CPU, cuBLAS on a GPU).
    #[arg(long, value_enum, default_value_t = Gemm::Scratch)]
    gemm: Gemm,
}

pub fn run(a: EvalArgs) -> Result<bool> {
    check_device(a.device)?;
    let pool = thread_pool(a.threads)?;
    let loaded = pool.install(|| {
        ncf_train::source::load(a.data.as_deref(), &source_options(a.min_rating, a.split_seed, a.test_negatives))
    })?;
    let split = &loaded.split;
    let data_name = a.data.as_ref().map_or(ncf_train::source::SAMPLE_NAME.to_string(), |d| d.display().to_string());
    let cases: Vec<ncf_eval::RankCase> =
        split.test.iter().zip(&split.negatives).map(|(&(u, i), n)| ncf_eval::RankCase::new(u, i, n)).collect();
    let Some(model_path) = &a.model else {
        let mut counts = vec![0u32; split.n_items];
        for &(_, i) in &split.train {
            counts[i as usize] += 1;
        }
        let m = ncf_eval::evaluate_popularity(&counts, &cases, a.k);
        println!(
            "popularity baseline on {data_name}: test HR@{k} {:.4} NDCG@{k} {:.4} over {} users",
            m.hr,
            m.ndcg,
            m.users,
            k = a.k
        );
        return Ok(true);
    };
    let ckpt = ncf_train::Checkpoint::load(model_path)?;
    if (ckpt.spec.users, ckpt.spec.items) != (split.n_users, split.n_items) {
        bail!(
            "{} was trained on {} users × {} items, but {data_name} has {} × {}",
            model_path.display(),
            ckpt.spec.users,
            ckpt.spec.items,
            split.n_users,
            split.n_items
        );
    }
    let (users, items) = ckpt.id_maps(model_path)?;
    for (what, saved, here) in [("user", users, &split.user_ids), ("item", items, &split.item_ids)] {
        if let (Some(saved), Some(here)) = (saved, here)
            && &saved != here
        {
            bail!("{} was trained with a different {what} id map than {data_name} has", model_path.display());
        }
    }
    let run = EvalRun { ckpt: &ckpt, path: model_path, split, cases: &cases, k: a.k, full: a.full_ranking };
    if a.device == Device::Cuda {
        let be = ncf_cuda::CudaBackend::new(0, ncf_train::gpu_gemm(a.gemm.into())).context("--device cuda")?;
        return pool.install(|| eval_on(&be, &run, ncf_train::GPU_EVAL_ROWS));
    }
    pool.install(|| eval_on(&CpuBackend::<f32>::new(a.gemm.into()), &run, ncf_train::config::DEFAULT_EVAL_ROWS))
}

/// What `ncf eval` evaluates.
struct EvalRun<'a> {
    ckpt: &'a ncf_train::Checkpoint,
    path: &'a Path,
    split: &'a ncf_data::NcfSplit,
    cases: &'a [ncf_eval::RankCase],
    k: usize,
    full: bool,
}

/// `ncf eval` on one backend.
fn eval_on<B: Backend<T = f32>>(be: &B, r: &EvalRun, rows: usize) -> Result<bool> {
    let (ckpt, model_path, split, k) = (r.ckpt, r.path, r.split, r.k);
    let mut model = ckpt.model(be, rows, model_path)?;
    let t = std::time::Instant::now();
    if r.full {
        let known = ncf_data::UserItems::from_pairs(split.n_users, split.n_items, &split.train);
        let seen = |u: usize| known.of(u);
        let m = ncf_eval::evaluate_full(be, &mut model, &split.test, split.n_items, seen, k)?;
        println!(
            "{} ({}), full ranking: HR@{k} {:.4} NDCG@{k} {:.4} Precision@{k} {:.4} Recall@{k} {:.4} MRR {:.4} over {} users ({:.3} s)",
            model_path.display(),
            ckpt.spec.kind,
            m.hr,
            m.ndcg,
            m.precision,
            m.recall,
            m.mrr,
            m.users,
            t.elapsed().as_secs_f64(),
        );
        return Ok(true);
    }
    let m = ncf_eval::evaluate(be, &mut model, r.cases, k)?;
    println!(
        "{} ({}): test HR@{k} {:.4} NDCG@{k} {:.4} over {} users ({:.3} s)",
        model_path.display(),
        ckpt.spec.kind,
        m.hr,
        m.ndcg,
        m.users,
        t.elapsed().as_secs_f64(),
    );
    Ok(true)
}
