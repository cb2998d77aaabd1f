//! # ncf-train
//!
//! The training loop of the paper: each epoch draws fresh negatives, trains on shuffled
//! mini-batches with BCE, then evaluates HR@K / NDCG@K on a validation holdout (one training
//! interaction per user, which chooses the epoch and drives early stopping) and on the test set
//! (reported every epoch, never used to choose anything).

use ncf_core::{Decay, OptimKind, SgdHp};
use ncf_cpu::{CpuBackend, GemmImpl};
use ncf_data::interactions::{hold_out_one_per_user, sample_unseen};
use ncf_data::{NcfSplit, Row, UserItems, sample_epoch};
use ncf_eval::{HitMetrics, RankCase, evaluate};
use ncf_model::{
    AnyModel, Batch, Group, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepScratch, train_step,
};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Engine(#[from] ncf_core::Error),
    #[error(transparent)]
    Data(#[from] ncf_data::DataError),
    #[error("invalid setting `{0}`: {1}")]
    Config(&'static str, String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub mod checkpoint;
pub mod plot;
pub use checkpoint::{Checkpoint, ModelSpec};

/// Which update rule trains every group.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimChoice {
    Adam,
    Sgd,
}

/// Every setting of a run. Defaults are the original code's: batch 256, Adam lr 0.001,
/// 4 negatives, factors 8, layers [64,32,16,8], K = 10.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub model: String,
    pub factors: usize,
    pub layers: Vec<usize>,
    pub neg: usize,
    pub batch: usize,
    pub lr: f64,
    pub optimizer: OptimChoice,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    /// L2 penalty on embeddings and weights (the paper's regularization), 0 = none.
    pub l2: f64,
    pub epochs: usize,
    pub seed: u64,
    /// Stop after this many epochs without a better validation HR (0 = never stop early).
    pub patience: usize,
    pub k: usize,
    /// Row-sparse Adam/SGD on embedding tables (only the rows a batch touches).
    pub lazy_embeddings: bool,
    /// Rows scored per forward call during evaluation.
    pub eval_rows: usize,
    #[serde(skip)]
    pub gemm: GemmImpl,
    /// NeuMF only: start from a trained GMF and a trained MLP (the paper's pre-training).
    #[serde(skip)]
    pub pretrained: Option<(Checkpoint, Checkpoint)>,
    /// Weight of the GMF half of the pretrained output layer.
    pub alpha: f64,
    /// Draw a progress bar per epoch on stderr (hidden when stderr is not a terminal).
    #[serde(skip)]
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "neumf".into(),
            factors: 8,
            layers: vec![64, 32, 16, 8],
            neg: 4,
            batch: 256,
            lr: 0.001,
            optimizer: OptimChoice::Adam,
            momentum: 0.9,
            l2: 0.0,
            epochs: 20,
            seed: 42,
            patience: 0,
            k: 10,
            lazy_embeddings: true,
            eval_rows: 25_600,
            gemm: GemmImpl::Scratch,
            pretrained: None,
            alpha: 0.5,
            progress: false,
        }
    }
}

/// A split made ready for training: the validation holdout taken out of the training set, and
/// the ranking cases of validation and test.
pub struct Prepared {
    /// Everything the training file says each user interacted with (negatives avoid these).
    pub known: UserItems,
    /// What is trained on: `known` minus the validation holdout.
    pub train: UserItems,
    pub valid: Vec<RankCase>,
    pub test: Vec<RankCase>,
}

impl Prepared {
    /// Holds out one training interaction per user for validation, with 99 sampled negatives
    /// that the user has not interacted with (in training, or as the test item).
    pub fn from_split(split: &NcfSplit, seed: u64) -> Self {
        let known = UserItems::from_pairs(split.n_users, split.n_items, &split.train);
        let (train, held) = hold_out_one_per_user(&known, ncf_core::rng::splitmix64(seed ^ 0x7a11d));
        let mut test_item = vec![u32::MAX; split.n_users];
        for &(u, i) in &split.test {
            test_item[u as usize] = i;
        }
        let valid: Vec<RankCase> = (0..split.n_users)
            .into_par_iter()
            .filter_map(|u| {
                let target = held[u]?;
                let negs = sample_unseen(&known, u, &[test_item[u]], 99, ncf_core::rng::splitmix64(seed ^ 0xa11d));
                Some(RankCase::new(u as u32, target, &negs))
            })
            .collect();
        let test = split.test.iter().zip(&split.negatives).map(|(&(u, i), negs)| RankCase::new(u, i, negs)).collect();
        Prepared { known, train, valid, test }
    }
}

/// What one epoch did.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub loss: f64,
    pub valid_hr: f64,
    pub valid_ndcg: f64,
    pub test_hr: f64,
    pub test_ndcg: f64,
    pub sampling_s: f64,
    pub training_s: f64,
    pub eval_s: f64,
    pub samples_per_second: f64,
}

/// Seconds per epoch, averaged over the epochs run.
#[derive(Clone, Debug, Serialize)]
pub struct EpochSeconds {
    pub sampling: f64,
    pub training: f64,
    pub eval: f64,
    pub total: f64,
}

/// The run's outcome. Test metrics are those of the validation-selected epoch.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub factors: usize,
    pub layers: Vec<usize>,
    pub epochs_run: usize,
    pub selected_epoch: usize,
    pub k: usize,
    pub test_hr: f64,
    pub test_ndcg: f64,
    pub valid_hr: f64,
    pub valid_ndcg: f64,
    pub best_test_hr: f64,
    pub best_test_ndcg: f64,
    pub best_test_epoch: usize,
    pub seconds_per_epoch: EpochSeconds,
    pub samples_per_second: f64,
    pub threads: usize,
    pub config: TrainConfig,
}

fn optim_config(cfg: &TrainConfig) -> OptimConfig {
    let base = match cfg.optimizer {
        OptimChoice::Adam => OptimConfig::adam(cfg.lr),
        OptimChoice::Sgd => OptimConfig::uniform(
            OptimKind::Sgd(SgdHp { lr: cfg.lr, momentum: cfg.momentum, decay: Decay::None }),
            false,
        ),
    };
    let mut o = base;
    o.embedding.lazy = cfg.lazy_embeddings;
    if cfg.l2 > 0.0 {
        o = o.with_decay(Group::Embedding, Decay::L2(cfg.l2)).with_decay(Group::Weight, Decay::L2(cfg.l2));
    }
    o
}

fn check(cfg: &TrainConfig) -> Result<ModelKind> {
    let kind: ModelKind = cfg.model.parse()?;
    let bad = |name: &'static str, why: &str| Err(TrainError::Config(name, why.to_string()));
    if cfg.batch == 0 {
        return bad("batch", "must be at least 1");
    }
    if cfg.k == 0 {
        return bad("k", "must be at least 1");
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return bad("lr", "must be a positive number");
    }
    if cfg.eval_rows < 100 {
        return bad("eval_rows", "must hold at least one user's 100 candidates");
    }
    Ok(kind)
}

/// A finished run: its summary, every epoch's report and the weights of the
/// validation-selected epoch.
pub struct Outcome {
    pub summary: Summary,
    pub epochs: Vec<EpochReport>,
    pub best: Checkpoint,
}

/// Builds the model to train: fresh, or NeuMF from pretrained GMF + MLP checkpoints.
fn build_model(
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    be: &CpuBackend<f32>,
    max_rows: usize,
) -> Result<AnyModel<CpuBackend<f32>>> {
    let Some((g, m)) = &cfg.pretrained else {
        return Ok(AnyModel::new(be, mcfg, max_rows, &mut ncf_core::rng::seeded(cfg.seed, 1))?);
    };
    if mcfg.kind != ModelKind::NeuMf {
        return Err(TrainError::Config("pretrain", "pre-training applies to neumf only".into()));
    }
    let (gp, mp) = (std::path::Path::new("--pretrain-gmf"), std::path::Path::new("--pretrain-mlp"));
    let (AnyModel::Gmf(gmf), AnyModel::Mlp(mlp)) = (g.model(be, 1, gp)?, m.model(be, 1, mp)?) else {
        return Err(TrainError::Config(
            "pretrain",
            format!("expected a gmf and an mlp checkpoint, got {} and {}", g.spec.kind, m.spec.kind),
        ));
    };
    Ok(AnyModel::NeuMf(ncf_model::NeuMf::from_pretrained(be, mcfg, &gmf, &mlp, cfg.alpha, max_rows)?))
}

/// Trains on `data` with `cfg` (f32, CPU, the current rayon pool), calling `on_epoch` after
/// each epoch.
pub fn train(cfg: &TrainConfig, data: &Prepared, mut on_epoch: impl FnMut(&EpochReport)) -> Result<Outcome> {
    let kind = check(cfg)?;
    let be = CpuBackend::<f32>::new(cfg.gemm);
    let mcfg = ModelConfig {
        kind,
        users: data.known.n_users,
        items: data.known.n_items,
        factors: cfg.factors,
        layers: cfg.layers.clone(),
        init: Default::default(),
    };
    let max_rows = cfg.batch.max(cfg.eval_rows);
    let mut model = build_model(cfg, &mcfg, &be, max_rows)?;
    let mut best_weights = model.params().to_host(&be)?;
    let mut opt = Optimizer::new(&be, model.params(), optim_config(cfg), cfg.batch)?;
    let mut batch = Batch::with_capacity(&be, cfg.batch)?;
    let mut scratch = StepScratch::new(&be, cfg.batch)?;
    let (mut us, mut is, mut ys) =
        (Vec::with_capacity(cfg.batch), Vec::with_capacity(cfg.batch), Vec::with_capacity(cfg.batch));
    let mut rows: Vec<Row> = Vec::new();
    let mut reports: Vec<EpochReport> = Vec::new();
    let mut best_valid: Option<usize> = None;

    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        sample_epoch(&data.train, &data.known, cfg.neg, cfg.seed, epoch as u64, &mut rows);
        let t1 = Instant::now();
        let steps = rows.len().div_ceil(cfg.batch);
        let bar =
            if cfg.progress { indicatif::ProgressBar::new(steps as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(epoch.to_string());
        let mut loss_sum = 0.0;
        for (step, chunk) in rows.chunks(cfg.batch).enumerate() {
            us.clear();
            is.clear();
            ys.clear();
            for r in chunk {
                us.push(r.user);
                is.push(r.item);
                ys.push(r.label);
            }
            batch.set(&be, &us, &is, &ys)?;
            train_step(&be, &mut model, &mut opt, &batch, &mut scratch)?;
            if cfg.progress && (step + 1) % 200 == 0 {
                loss_sum += scratch.take_loss(&be)?;
                let rate = ((step + 1) * cfg.batch) as f64 / t1.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(step as u64 + 1);
                bar.set_message(format!("loss {:.4}  {:.0} samples/s", loss_sum / (step + 1) as f64, rate));
            }
        }
        bar.finish_and_clear();
        let loss = (loss_sum + scratch.take_loss(&be)?) / steps.max(1) as f64;
        let t2 = Instant::now();
        let v: HitMetrics = evaluate(&be, &mut model, &data.valid, cfg.k)?;
        let t: HitMetrics = evaluate(&be, &mut model, &data.test, cfg.k)?;
        let t3 = Instant::now();
        let training_s = (t2 - t1).as_secs_f64();
        let report = EpochReport {
            epoch,
            loss,
            valid_hr: v.hr,
            valid_ndcg: v.ndcg,
            test_hr: t.hr,
            test_ndcg: t.ndcg,
            sampling_s: (t1 - t0).as_secs_f64(),
            training_s,
            eval_s: (t3 - t2).as_secs_f64(),
            samples_per_second: rows.len() as f64 / training_s.max(1e-9),
        };
        on_epoch(&report);
        reports.push(report);
        let k = reports.len() - 1;
        if best_valid.is_none_or(|b| reports[k].valid_hr > reports[b].valid_hr) {
            best_valid = Some(k);
            best_weights = model.params().to_host(&be)?;
        }
        if cfg.patience > 0 && best_valid.is_some_and(|b| k - b >= cfg.patience) {
            break;
        }
    }
    let n = reports.len().max(1) as f64;
    let mean = |f: fn(&EpochReport) -> f64| reports.iter().map(f).sum::<f64>() / n;
    let sel = best_valid.map(|b| reports[b].clone());
    let best_test = reports.iter().max_by(|a, b| a.test_hr.total_cmp(&b.test_hr)).cloned();
    let (sampling, training, eval) = (mean(|r| r.sampling_s), mean(|r| r.training_s), mean(|r| r.eval_s));
    let summary = Summary {
        model: cfg.model.clone(),
        factors: cfg.factors,
        layers: cfg.layers.clone(),
        epochs_run: reports.len(),
        selected_epoch: sel.as_ref().map_or(0, |r| r.epoch),
        k: cfg.k,
        test_hr: sel.as_ref().map_or(0.0, |r| r.test_hr),
        test_ndcg: sel.as_ref().map_or(0.0, |r| r.test_ndcg),
        valid_hr: sel.as_ref().map_or(0.0, |r| r.valid_hr),
        valid_ndcg: sel.as_ref().map_or(0.0, |r| r.valid_ndcg),
        best_test_hr: best_test.as_ref().map_or(0.0, |r| r.test_hr),
        best_test_ndcg: best_test.as_ref().map_or(0.0, |r| r.test_ndcg),
        best_test_epoch: best_test.as_ref().map_or(0, |r| r.epoch),
        seconds_per_epoch: EpochSeconds { sampling, training, eval, total: sampling + training + eval },
        samples_per_second: mean(|r| r.samples_per_second),
        threads: rayon::current_num_threads(),
        config: cfg.clone(),
    };
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("summary".to_string(), serde_json::to_string(&summary).unwrap_or_default());
    metadata.insert("epochs".to_string(), serde_json::to_string(&reports).unwrap_or_default());
    let best = Checkpoint { spec: ModelSpec::of(&mcfg), tensors: best_weights, metadata };
    Ok(Outcome { summary, epochs: reports, best })
}
