//! Training on explicit ratings: the rating model (`ModelKind::Rating`) fitted with MSE on a
//! seeded train/validation/test split, judged by RMSE and MAE. The validation RMSE picks the
//! epoch whose weights are kept and drives early stopping; the test set is only reported.
//!
//! One step is the reference path, op by op: `forward → MSE → backward → optimizer`, the same
//! model blocks, kernels and optimizer as the implicit trainer (no second engine).

use crate::{Result, TrainConfig, TrainError, optim_config};
use ncf_core::{Backend, Float};
use ncf_cpu::CpuBackend;
use ncf_data::{Rated, RatingSplit, SideFeatures};
use ncf_model::{Batch, HostTensor, Model, ModelConfig, ModelKind, Optimizer, Rating, StepScratch};
use rand::seq::SliceRandom;
use serde::Serialize;

/// The tower the rating model gets when `--layers` keeps the NCF default: 128 inputs (64 per
/// side), then 64 and 32.
pub const DEFAULT_RATING_LAYERS: [usize; 3] = [128, 64, 32];

/// One epoch: the mean training MSE, and RMSE/MAE on validation and test (predictions
/// clamped to the rating range).
#[derive(Clone, Debug, Serialize)]
pub struct RatingEpoch {
    pub epoch: usize,
    /// The learning rate the epoch ran at.
    pub lr: f64,
    pub loss: f64,
    pub valid_rmse: f64,
    pub valid_mae: f64,
    pub test_rmse: f64,
    pub test_mae: f64,
    pub seconds: f64,
}

/// The run's outcome: the validation-selected epoch's test metrics.
#[derive(Clone, Debug, Serialize)]
pub struct RatingSummary {
    pub model: String,
    /// Side-feature columns (users, items); 0, 0 for the id-only model.
    pub features: (usize, usize),
    pub layers: Vec<usize>,
    pub train_ratings: usize,
    pub valid_ratings: usize,
    pub test_ratings: usize,
    pub epochs_run: usize,
    pub selected_epoch: usize,
    pub valid_rmse: f64,
    pub test_rmse: f64,
    pub test_mae: f64,
    pub seconds: f64,
}

/// Test errors in one group: how many ratings, the mean of prediction − truth, RMSE and MAE.
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub label: String,
    pub count: usize,
    pub mean_error: f64,
    pub rmse: f64,
    pub mae: f64,
}

/// The selected epoch's test errors by true rating and by the user's number of training
/// ratings (activity).
#[derive(Clone, Debug, Serialize)]
pub struct Residuals {
    pub by_rating: Vec<Bucket>,
    pub by_activity: Vec<Bucket>,
}

/// User activity buckets: training ratings per user, lower bounds.
pub const ACTIVITY_BUCKETS: [usize; 5] = [0, 20, 50, 100, 200];

fn bucket(label: String, errs: &[f64]) -> Bucket {
    let n = errs.len().max(1) as f64;
    Bucket {
        label,
        count: errs.len(),
        mean_error: errs.iter().sum::<f64>() / n,
        rmse: (errs.iter().map(|e| e * e).sum::<f64>() / n).sqrt(),
        mae: errs.iter().map(|e| e.abs()).sum::<f64>() / n,
    }
}

/// Groups the errors `pred − truth` of `rows` (`errs[k]` for `rows[k]`).
fn residuals(rows: &[Rated], errs: &[f64], train: &[Rated], n_users: usize) -> Residuals {
    let mut activity = vec![0usize; n_users];
    train.iter().for_each(|r| activity[r.user as usize] += 1);
    let mut ratings: Vec<f32> = rows.iter().map(|r| r.rating).collect();
    ratings.sort_by(f32::total_cmp);
    ratings.dedup();
    let by_rating = ratings
        .iter()
        .map(|&v| {
            let e: Vec<f64> = rows.iter().zip(errs).filter(|(r, _)| r.rating == v).map(|(_, &e)| e).collect();
            bucket(format!("{v}"), &e)
        })
        .collect();
    let by_activity = ACTIVITY_BUCKETS
        .iter()
        .enumerate()
        .map(|(k, &lo)| {
            let hi = ACTIVITY_BUCKETS.get(k + 1).copied().unwrap_or(usize::MAX);
            let e: Vec<f64> = rows
                .iter()
                .zip(errs)
                .filter(|(r, _)| (lo..hi).contains(&activity[r.user as usize]))
                .map(|(_, &e)| e)
                .collect();
            let label = if hi == usize::MAX { format!("{lo}+") } else { format!("{lo}-{}", hi - 1) };
            bucket(label, &e)
        })
        .collect();
    Residuals { by_rating, by_activity }
}

pub struct RatingOutcome {
    pub summary: RatingSummary,
    /// The selected epoch's test errors, grouped.
    pub residuals: Residuals,
    pub epochs: Vec<RatingEpoch>,
    /// The selected epoch's weights.
    pub weights: Vec<HostTensor>,
}

/// RMSE and MAE of `model` on `rows`, predictions clamped to `range` (infinite: no clamp).
fn evaluate<B: Backend>(
    be: &B,
    model: &mut Rating<B>,
    rows: &[Rated],
    range: (f32, f32),
    batch: &mut Batch<B>,
) -> Result<(f64, f64)> {
    let errs = errors(be, model, rows, range, batch)?;
    let n = errs.len().max(1) as f64;
    Ok(((errs.iter().map(|e| e * e).sum::<f64>() / n).sqrt(), errs.iter().map(|e| e.abs()).sum::<f64>() / n))
}

/// Each row's prediction (clamped to `range`) minus its rating.
fn errors<B: Backend>(
    be: &B,
    model: &mut Rating<B>,
    rows: &[Rated],
    range: (f32, f32),
    batch: &mut Batch<B>,
) -> Result<Vec<f64>> {
    let mut errs = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(model.max_batch()) {
        let (u, i): (Vec<u32>, Vec<u32>) = chunk.iter().map(|r| (r.user, r.item)).unzip();
        let y: Vec<B::T> = chunk.iter().map(|r| B::T::from_f64(r.rating as f64)).collect();
        batch.set(be, &u, &i, &y)?;
        model.score(be, &batch.users, &batch.items, chunk.len())?; // eval mode
        let pred = be.download(model.logits())?;
        for (p, r) in pred.iter().zip(chunk) {
            errs.push(p.to_f64().clamp(range.0 as f64, range.1 as f64) - r.rating as f64);
        }
    }
    Ok(errs)
}

/// Side features for the hybrid rating model: the users' and the items' multi-hot rows (one
/// row per dense id), either side optional.
#[derive(Clone, Copy, Debug, Default)]
pub struct Side<'a> {
    pub users: Option<&'a SideFeatures>,
    pub items: Option<&'a SideFeatures>,
}

/// Trains the rating model on `split` (dense ids below `n_users`, `n_items`) with `cfg`'s
/// epochs, batch, learning rate, optimizer, L2, seed, patience, layers, batch norm and
/// dropout, on the CPU; with `side` features, the hybrid model. `on_epoch` sees each epoch's
/// report.
pub fn train_ratings(
    cfg: &TrainConfig,
    split: &RatingSplit,
    (n_users, n_items): (usize, usize),
    side: Side<'_>,
    range: (f32, f32),
    mut on_epoch: impl FnMut(&RatingEpoch),
) -> Result<RatingOutcome> {
    if split.train.is_empty() {
        return Err(TrainError::Config("data", "no training ratings".into()));
    }
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(TrainError::Config("batch/epochs", "must be at least 1".into()));
    }
    crate::check_decay(cfg)?;
    if cfg.optimizer == crate::OptimChoice::Als {
        return Err(TrainError::Config(
            "optimizer",
            "als trains the implicit MF model (--model mf), not ratings".into(),
        ));
    }
    let start = std::time::Instant::now();
    let be = CpuBackend::<f32>::new(cfg.gemm.into());
    let mut mcfg = ModelConfig::new(ModelKind::Rating, n_users, n_items);
    mcfg.layers = cfg.layers.clone();
    mcfg.batch_norm = cfg.batch_norm;
    mcfg.dropout = cfg.dropout;
    mcfg.user_features = side.users.map_or(0, SideFeatures::width);
    mcfg.item_features = side.items.map_or(0, SideFeatures::width);
    let rows = cfg.batch.max(4096);
    let mut model = Rating::new(&be, &mcfg, rows, &mut ncf_core::rng::seeded(cfg.seed, 1))?;
    // The output bias starts at the training mean (μ), the other biases at 0.
    let mean = split.train.iter().map(|r| r.rating as f64).sum::<f64>() / split.train.len() as f64;
    model.params.load(&be, "predict_bias", &[mean])?;
    for (name, f, n) in [("user_features", side.users, n_users), ("item_features", side.items, n_items)] {
        if let Some(f) = f {
            if f.active.len() != n {
                return Err(TrainError::Config("features", format!("{} rows of {name} for {n} ids", f.active.len())));
            }
            model.params.load(&be, name, &f.dense())?;
        }
    }
    let mut opt = Optimizer::new(&be, &model.params, optim_config(cfg), rows)?;
    let mut batch = Batch::with_capacity(&be, rows)?;
    let mut scratch = StepScratch::new(&be, rows)?;
    let mut order: Vec<usize> = (0..split.train.len()).collect();
    let mut schedule = crate::LrScheduler::new(cfg, cfg.effective_lr());
    let mut epochs: Vec<RatingEpoch> = Vec::new();
    // (epoch, its validation RMSE, its weights) of the best epoch so far.
    let mut best: Option<(usize, f64, Vec<HostTensor>)> = None;
    let (mut u, mut i, mut y) = (Vec::new(), Vec::new(), Vec::new());
    let clamp = if cfg.no_clamp { (f32::NEG_INFINITY, f32::INFINITY) } else { range };
    let mut step = 0u64;
    for epoch in 1..=cfg.epochs {
        let t = std::time::Instant::now();
        let lr = schedule.lr(epoch);
        opt.set_lr(lr);
        order.shuffle(&mut ncf_core::rng::seeded(cfg.seed, 1000 + epoch as u64));
        let mut steps = 0usize;
        for chunk in order.chunks(cfg.batch) {
            u.clear();
            i.clear();
            y.clear();
            for &k in chunk {
                let r = split.train[k];
                u.push(r.user);
                i.push(r.item);
                y.push(r.rating);
            }
            let b = chunk.len();
            batch.set(&be, &u, &i, &y)?;
            model.set_noise(cfg.seed, step); // this step's dropout masks
            step += 1;
            model.forward(&be, &batch.users, &batch.items, b)?;
            be.mse(model.logits(), &batch.labels, b, &mut scratch.loss, &mut scratch.dlogits)?;
            model.backward(&be, &batch.users, &batch.items, &scratch.dlogits, b)?;
            let (params, grads) = model.params_and_grads();
            opt.step(&be, params, grads, &batch.users, &batch.items, b)?;
            steps += 1;
        }
        let loss = scratch.take_loss(&be)? / steps as f64;
        let (valid_rmse, valid_mae) = evaluate(&be, &mut model, &split.valid, clamp, &mut batch)?;
        let (test_rmse, test_mae) = evaluate(&be, &mut model, &split.test, clamp, &mut batch)?;
        schedule.observe(valid_rmse);
        let report = RatingEpoch {
            epoch,
            lr,
            loss,
            valid_rmse,
            valid_mae,
            test_rmse,
            test_mae,
            seconds: t.elapsed().as_secs_f64(),
        };
        on_epoch(&report);
        epochs.push(report);
        // No validation set: the last epoch is kept.
        let score = if split.valid.is_empty() { -(epoch as f64) } else { valid_rmse };
        if best.as_ref().is_none_or(|b| score < b.1) {
            best = Some((epoch, score, model.params.to_host(&be)?));
        }
        let since = epoch - best.as_ref().map_or(epoch, |b| b.0);
        if cfg.patience > 0 && since >= cfg.patience {
            break;
        }
    }
    let (selected, _, weights) = best.expect("at least one epoch ran");
    for t in &weights {
        model.params.load(&be, &t.name, &t.data)?;
    }
    let errs = errors(&be, &mut model, &split.test, clamp, &mut batch)?;
    let residuals = residuals(&split.test, &errs, &split.train, n_users);
    let e = &epochs[selected - 1];
    let summary = RatingSummary {
        model: if side.users.is_some() || side.items.is_some() { "rating+features" } else { "rating" }.into(),
        features: (mcfg.user_features, mcfg.item_features),
        layers: cfg.layers.clone(),
        train_ratings: split.train.len(),
        valid_ratings: split.valid.len(),
        test_ratings: split.test.len(),
        epochs_run: epochs.len(),
        selected_epoch: selected,
        valid_rmse: e.valid_rmse,
        test_rmse: e.test_rmse,
        test_mae: e.test_mae,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(RatingOutcome { summary, residuals, epochs, weights })
}
