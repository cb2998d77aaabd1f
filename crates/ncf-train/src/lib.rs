//! # ncf-train
//!
//! The training loop of the paper: each epoch draws fresh negatives, trains on shuffled
//! mini-batches with BCE, then evaluates HR@K / NDCG@K on a validation holdout (one training
//! interaction per user, which chooses the epoch and drives early stopping) and on the test set
//! (reported every epoch, never used to choose anything).

#![forbid(unsafe_code)]

use ncf_core::sample::{EpochKeys, SampleTables};
use ncf_core::{AdamHp, Backend, Decay, OptimKind, SgdHp};
use ncf_cpu::{CpuBackend, GemmImpl};
use ncf_data::interactions::{hold_out_one_per_user, sample_unseen};
use ncf_data::{IdMap, NcfSplit, Row, SideFeatures, UserItems, sample_epoch};
use ncf_eval::{HitMetrics, RankCase, evaluate};
use ncf_model::{
    AnyModel, AnyStep, Batch, FastStep, Group, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepScratch,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
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
    /// A config file that cannot be read, or settings that do not combine.
    #[error("{0}")]
    File(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

mod als;
pub mod checkpoint;
pub mod config;
pub mod infer;
pub mod plot;
pub mod ratings;
pub mod source;
pub use checkpoint::{Checkpoint, ModelSpec};
pub use config::{
    Device, Gemm, LrScaling, LrSchedule, LrScheduler, Model as ModelChoice, OptimChoice, Preset, SamplerChoice, Step,
    TrainConfig,
};

/// A split made ready for training: the validation holdout taken out of the training set, and
/// the ranking cases of validation and test.
pub struct Prepared {
    /// Everything the training file says each user interacted with (negatives avoid these).
    pub known: UserItems,
    /// What is trained on: `known` minus the validation holdout.
    pub train: UserItems,
    pub valid: Vec<RankCase>,
    pub test: Vec<RankCase>,
    /// The test cases of the users with fewer than [`LOW_ACTIVITY`] training interactions.
    pub low_test: Vec<RankCase>,
    /// Raw ids of the dense ids, when the data has them; saved in checkpoints.
    pub user_ids: Option<IdMap>,
    pub item_ids: Option<IdMap>,
    /// Side features (the hybrid NeuMF/MLP, `--features`), one row per dense id.
    pub user_features: Option<SideFeatures>,
    pub item_features: Option<SideFeatures>,
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
        let test: Vec<RankCase> =
            split.test.par_iter().zip(&split.negatives).map(|(&(u, i), negs)| RankCase::new(u, i, negs)).collect();
        let low_test = test.iter().filter(|c| known.of(c.user as usize).len() < LOW_ACTIVITY).cloned().collect();
        Prepared {
            known,
            train,
            valid,
            test,
            low_test,
            user_ids: split.user_ids.clone(),
            item_ids: split.item_ids.clone(),
            user_features: None,
            item_features: None,
        }
    }

    /// Adds the side features of the MovieLens metadata files in `dir` ([`load_side_features`]).
    /// Users without a raw id map (an NCF split) are matched by the NCF convention
    /// `MovieLens UserID = dense id + 1`. Returns lines describing what was read.
    pub fn with_features(&mut self, dir: &std::path::Path) -> Result<Vec<String>> {
        let users = match &self.user_ids {
            Some(m) => m.clone(),
            None => IdMap::from_raw((1..=self.known.n_users as u64).collect::<Vec<_>>()),
        };
        let (u, i, lines) = load_side_features(dir, &users, self.item_ids.as_ref())?;
        (self.user_features, self.item_features) = (u, i);
        Ok(lines)
    }
}

/// The side features of the MovieLens metadata files in `dir` (movies: `movies.dat`, `u.item`
/// or `movies.csv`; users: `users.dat` or `u.user`; either may be absent, not both), one row
/// per dense id of `users` and `items` (their raw ids are the metadata's MovieIDs/UserIDs).
/// Returns the users' and the items' tables and lines describing them. Movies with no `items`
/// map to match them by is an error.
pub fn load_side_features(
    dir: &std::path::Path,
    users: &IdMap,
    items: Option<&IdMap>,
) -> Result<(Option<SideFeatures>, Option<SideFeatures>, Vec<String>)> {
    let meta = ncf_data::MovieLensFiles::find_meta(dir)?;
    let item_f = match (&meta.movies, items) {
        (Some(p), Some(items)) => Some(ncf_data::item_features(&ncf_data::load_item_meta(p)?, items, |r| r)),
        (Some(_), None) => {
            return Err(TrainError::Config(
                "features",
                "the data has no item id map (NAME.item_ids.tsv or item_id_map.tsv) to match movies by".into(),
            ));
        }
        (None, _) => None,
    };
    let user_f = match &meta.users {
        Some(p) => Some(ncf_data::user_features(&ncf_data::load_users(p)?, users, |r| r)),
        None => None,
    };
    if user_f.is_none() && item_f.is_none() {
        return Err(TrainError::Config(
            "features",
            format!(
                "no movies (movies.dat, u.item, movies.csv) or users (users.dat, u.user) file in {}",
                dir.display()
            ),
        ));
    }
    let lines = [("item", &item_f, &meta.movies), ("user", &user_f, &meta.users)]
        .into_iter()
        .map(|(what, f, file)| match (f, file) {
            (Some(f), Some(p)) => format!(
                "features: {} {what} columns from {} ({} {what}s of the data not listed there)",
                f.width(),
                p.display(),
                f.missing
            ),
            _ => format!("features: no {what} file in {}, no {what} features", dir.display()),
        })
        .collect();
    Ok((user_f, item_f, lines))
}

/// What one epoch did.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The learning rate the epoch ran at (`--lr-schedule`).
    #[serde(default)]
    pub lr: f64,
    /// Test HR@K and NDCG@K of the users with fewer than [`LOW_ACTIVITY`] training
    /// interactions (the cold-ish users side features should help), and how many there are.
    #[serde(default)]
    pub low_test_hr: f64,
    #[serde(default)]
    pub low_test_ndcg: f64,
    #[serde(default)]
    pub low_users: usize,
    /// Time per phase of the training step (wall seconds, and each half's busy seconds), in
    /// step order, when the step keeps it (the CPU's two-lane step with `NCF_STEP_TIMES=1`);
    /// empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_phases: Vec<ncf_model::PhaseTime>,
}

/// Users with fewer training interactions than this are reported apart ("low activity").
pub const LOW_ACTIVITY: usize = 20;

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
    /// The selected epoch's test metrics on the users with fewer than [`LOW_ACTIVITY`]
    /// training interactions, and how many there are.
    pub low_test_hr: f64,
    pub low_test_ndcg: f64,
    pub low_users: usize,
    pub seconds_per_epoch: EpochSeconds,
    pub samples_per_second: f64,
    pub threads: usize,
    /// The CPU kernels' SIMD level (`avx512`, `avx2+fma`, `portable`; `NCF_SIMD` forces a lower one).
    pub simd: String,
    pub config: TrainConfig,
}

/// `--l2` and `--weight-decay`: non-negative, and not both.
pub(crate) fn check_decay(cfg: &TrainConfig) -> Result<()> {
    let bad = |name: &'static str, why: &str| Err(TrainError::Config(name, why.to_string()));
    if !(cfg.l2 >= 0.0 && cfg.l2.is_finite()) {
        return bad("l2", "must be a non-negative number");
    }
    if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
        return bad("weight_decay", "must be a non-negative number");
    }
    if cfg.l2 > 0.0 && cfg.weight_decay > 0.0 {
        return bad("weight_decay", "and --l2 exclude each other (decoupled decay or an L2 penalty, not both)");
    }
    Ok(())
}

pub(crate) fn optim_config(cfg: &TrainConfig) -> OptimConfig {
    let lr = cfg.effective_lr();
    let base = match cfg.optimizer {
        OptimChoice::Adam => OptimConfig::uniform(
            OptimKind::Adam(AdamHp { lr, beta1: cfg.beta1, beta2: cfg.beta2, ..AdamHp::default() }),
            true,
        ),
        // ALS takes no gradient steps (`als::train_als` builds no optimizer); the rating
        // trainer refuses it before it gets here.
        OptimChoice::Sgd | OptimChoice::Als => {
            OptimConfig::uniform(OptimKind::Sgd(SgdHp { lr, momentum: cfg.momentum, decay: Decay::None }), false)
        }
    };
    let mut o = base;
    o.embedding.lazy = cfg.lazy_embeddings;
    if cfg.l2 > 0.0 {
        o = o.with_decay(Group::Embedding, Decay::L2(cfg.l2)).with_decay(Group::Weight, Decay::L2(cfg.l2));
    }
    if cfg.weight_decay > 0.0 {
        let d = Decay::Decoupled(cfg.weight_decay);
        o = o.with_decay(Group::Embedding, d).with_decay(Group::Weight, d);
    }
    o
}

fn check(cfg: &TrainConfig) -> Result<ModelKind> {
    let bad = |name: &'static str, why: &str| Err(TrainError::Config(name, why.to_string()));
    if cfg.model == ModelChoice::Rating {
        return bad("model", "the rating model trains on explicit ratings: ncf_train::ratings::train_ratings");
    }
    check_decay(cfg)?;
    if cfg.batch_norm || cfg.dropout != 0.0 {
        return bad("batch_norm/dropout", "are offered for the rating model's tower (--model rating)");
    }
    if cfg.lr_schedule != LrSchedule::Constant && cfg.device != Device::Cpu {
        return bad("lr_schedule", "the GPU trainer runs a constant rate so far (its recorded steps hold the rate)");
    }
    if cfg.batch == 0 {
        return bad("batch", "must be at least 1");
    }
    check_run(cfg)?;
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return bad("lr", "must be a positive number");
    }
    if cfg.lr_base_batch == 0 {
        return bad("lr_base_batch", "must be at least 1");
    }
    if !(0.0..1.0).contains(&cfg.momentum) {
        return bad("momentum", "must be in [0, 1)");
    }
    if !(0.0..1.0).contains(&cfg.beta1) {
        return bad("beta1", "must be in [0, 1)");
    }
    if !(0.0..1.0).contains(&cfg.beta2) {
        return bad("beta2", "must be in [0, 1)");
    }
    Ok(cfg.model.into())
}

/// The settings every implicit run reads, whatever trains it: epochs, K, `--stop-at-hr`, the
/// evaluation's rows.
pub(crate) fn check_run(cfg: &TrainConfig) -> Result<()> {
    let bad = |name: &'static str, why: &str| Err(TrainError::Config(name, why.to_string()));
    if cfg.epochs == 0 {
        return bad("epochs", "must be at least 1 (with --resume: the total, epochs already run included)");
    }
    if cfg.k == 0 {
        return bad("k", "must be at least 1");
    }
    if cfg.stop_at_hr.is_some_and(|x| !(x > 0.0 && x <= 1.0)) {
        return bad("stop_at_hr", "must be in (0, 1]");
    }
    if cfg.eval_rows < 100 {
        return bad("eval_rows", "must hold at least one user's 100 candidates");
    }
    Ok(())
}

/// A finished run: its summary, every epoch's report and the weights of the
/// validation-selected epoch.
pub struct Outcome {
    pub summary: Summary,
    pub epochs: Vec<EpochReport>,
    pub best: Checkpoint,
}

/// Builds the model to train: fresh, or NeuMF from pretrained GMF + MLP checkpoints.
fn build_model<B: Backend<T = f32>>(
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    be: &B,
    max_rows: usize,
) -> Result<AnyModel<B>> {
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

/// Where a resumed run picks up: read from a checkpoint's `resume/…` tensors and `resume`
/// metadata (see [`checkpoint`]).
pub struct ResumeFrom<'a> {
    pub checkpoint: &'a Checkpoint,
    pub path: &'a std::path::Path,
}

/// Trains on `data` with `cfg` (f32, on `cfg.device`, the current rayon pool), calling
/// `on_epoch` after each epoch. With `resume`, the weights, optimizer state, epoch reports and
/// best epoch come from the checkpoint and training continues with its next epoch; since every
/// epoch's negatives and shuffle derive from (seed, epoch), the result is bit-identical to a run
/// that never stopped.
pub fn train(
    cfg: &TrainConfig,
    data: &Prepared,
    resume: Option<ResumeFrom<'_>>,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<Outcome> {
    if cfg.optimizer == OptimChoice::Als {
        return als::train_als(cfg, data, resume, on_epoch);
    }
    let kind = check(cfg)?;
    match cfg.device {
        Device::Cpu => train_on(&CpuBackend::<f32>::new(cfg.gemm.into()), kind, cfg, data, resume, on_epoch),
        // Written, not yet run on a GPU (see crates/ncf-cuda).
        Device::Cuda => {
            let (users, items) = (data.known.n_users, data.known.n_items);
            gpu_rows_fit(users, items)?;
            let be = ncf_cuda::CudaBackend::new(0, gpu_gemm(cfg.gemm.into()))
                .map_err(|e| TrainError::Config("device", e.to_string()))?;
            let (free, total) = be.memory()?;
            gpu_memory_fits(&model_config(kind, cfg, users, items), cfg, free, total)?;
            // Score every validation or test case in one forward call where it fits: the GPU
            // has room for far more rows than the CPU's cache-sized default.
            let mut cfg = cfg.clone();
            if cfg.eval_rows == config::DEFAULT_EVAL_ROWS {
                cfg.eval_rows = GPU_EVAL_ROWS;
            }
            train_on(&be, kind, &cfg, data, resume, on_epoch)
        }
    }
}

/// The GPU kernels address table rows with 32-bit signed sizes: more than 2³¹ − 1 users or
/// items is refused before anything is allocated.
pub fn gpu_rows_fit(users: usize, items: usize) -> Result<()> {
    for (what, n) in [("users", users), ("items", items)] {
        if n > i32::MAX as usize {
            return Err(TrainError::Config(
                "device",
                format!("{n} {what} exceed the GPU kernels' 2^31 - 1 = {} rows per table", i32::MAX),
            ));
        }
    }
    Ok(())
}

/// The model's parameters (embedding tables, dense layers, head).
pub fn param_count(m: &ModelConfig) -> u128 {
    let rows = (m.users + m.items) as u128;
    let dense: u128 = m.layers.windows(2).map(|w| (w[0] * w[1] + w[1]) as u128).sum();
    let head = |inp: usize| inp as u128 + 1;
    let (f, d, h) = (m.factors as u128, m.layers.first().map_or(0, |&x| x / 2) as u128, *m.layers.last().unwrap_or(&0));
    match m.kind {
        ModelKind::Gmf => rows * f + head(m.factors),
        ModelKind::Mlp => rows * d + dense + head(h),
        ModelKind::NeuMf => rows * (f + d) + dense + head(m.factors + h),
        ModelKind::Mf => rows * (f + 1) + 1,
        ModelKind::Rating => rows * (d + 1) + dense + head(h),
    }
}

/// Refuses a run whose model cannot fit the GPU's free memory, with the numbers: each
/// parameter takes 16 bytes (the weight, its gradient, Adam's two moments) and each table row
/// 12 more (the fused step's list heads, the reference step's row plan).
pub fn gpu_memory_fits(m: &ModelConfig, cfg: &TrainConfig, free: usize, total: usize) -> Result<()> {
    let params = param_count(m);
    let need = 16 * params + 12 * (m.users + m.items) as u128;
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    if need > free as u128 {
        return Err(TrainError::Config(
            "device",
            format!(
                "{} {} with {} users and {} items has {params} parameters, which need {:.2} GiB of GPU memory \
                 (16 bytes each: weight, gradient, Adam's m and v; plus 12 per table row), but the GPU has \
                 {:.2} GiB free of {:.2} GiB (batch {})",
                m.kind.as_str(),
                cfg.factors,
                m.users,
                m.items,
                gib(need),
                gib(free as u128),
                gib(total as u128),
                cfg.batch
            ),
        ));
    }
    Ok(())
}

fn model_config(kind: ModelKind, cfg: &TrainConfig, users: usize, items: usize) -> ModelConfig {
    ModelConfig { factors: cfg.factors, layers: cfg.layers.clone(), ..ModelConfig::new(kind, users, items) }
}

/// Training steps recorded into one CUDA graph by the device-sampled epoch (each replay
/// launches their sampling and steps at once).
pub const STEPS_PER_GRAPH: usize = 16;

/// Rows scored per forward call on a GPU (6,040 ML-1M users × 100 candidates fit in one).
pub const GPU_EVAL_ROWS: usize = 1 << 20;

/// `--gemm` on a GPU: the naive kernel, the hand-written tiled kernel, or cuBLAS (also `auto`:
/// the tiled kernel gives the weight-gradient products, whose K is the batch, one to four
/// blocks; cuBLAS splits them over the GPU, with bitwise reproducible results on one stream).
pub fn gpu_gemm(g: GemmImpl) -> ncf_cuda::GpuGemm {
    match g {
        GemmImpl::Naive => ncf_cuda::GpuGemm::Naive,
        GemmImpl::Scratch => ncf_cuda::GpuGemm::Tiled,
        GemmImpl::Library | GemmImpl::Auto => ncf_cuda::GpuGemm::Cublas,
    }
}

/// What an epoch's training did: rows trained on, seconds spent sampling and training, and
/// the mean loss over its steps.
struct Trained {
    rows: usize,
    sampling_s: f64,
    training_s: f64,
    loss: f64,
    /// The step's phase times ([`ncf_model::Step::take_phase_times`]), if it keeps them.
    phases: Vec<ncf_model::PhaseTime>,
}

/// An epoch's progress bar and its running loss: the loss is read back from the device every
/// 200 steps when the bar is shown, else once at the end of the epoch.
struct Progress<'a> {
    cfg: &'a TrainConfig,
    bar: indicatif::ProgressBar,
    loss_sum: f64,
    start: Instant,
    steps: usize,
}

impl<'a> Progress<'a> {
    fn new(cfg: &'a TrainConfig, epoch: usize, steps: usize, start: Instant) -> Self {
        let bar =
            if cfg.progress { indicatif::ProgressBar::new(steps as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(epoch.to_string());
        Progress { cfg, bar, loss_sum: 0.0, start, steps }
    }

    /// After step number `step` (from 0).
    fn step<B: FastStep<T = f32>>(
        &mut self,
        be: &B,
        step: usize,
        stepper: &mut AnyStep<B>,
        scratch: &mut StepScratch<B>,
    ) -> Result<()> {
        if self.cfg.progress && (step + 1).is_multiple_of(200) {
            self.loss_sum += stepper.take_loss(be, scratch)?;
            let rate = ((step + 1) * self.cfg.batch) as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            self.bar.set_position(step as u64 + 1);
            self.bar.set_message(format!("loss {:.4}  {:.0} samples/s", self.loss_sum / (step + 1) as f64, rate));
        }
        Ok(())
    }

    /// Clears the bar; the epoch's mean loss.
    fn finish<B: FastStep<T = f32>>(
        self,
        be: &B,
        stepper: &mut AnyStep<B>,
        scratch: &mut StepScratch<B>,
    ) -> Result<f64> {
        self.bar.finish_and_clear();
        Ok((self.loss_sum + stepper.take_loss(be, scratch)?) / self.steps.max(1) as f64)
    }
}

/// The device sampler's tables (uploaded once) and state `[batch number, epoch keys]`.
struct DeviceSampler<B: Backend> {
    tables: SampleTables<B>,
    state: B::Ids,
}

/// A model being trained on a backend, with its optimizer and the buffers its epochs reuse.
struct Trainer<'a, B: FastStep<T = f32>> {
    be: &'a B,
    cfg: &'a TrainConfig,
    data: &'a Prepared,
    model: AnyModel<B>,
    opt: Optimizer<B>,
    batch: Batch<B>,
    scratch: StepScratch<B>,
    /// The training step `--step` chose: the backend's fastest, or the reference.
    stepper: AnyStep<B>,
    /// Host sampling: the epoch's rows, and one batch's columns.
    rows: Vec<Row>,
    cols: (Vec<u32>, Vec<u32>, Vec<f32>),
    /// `Some` when batches are sampled on the device.
    sampler: Option<DeviceSampler<B>>,
}

impl<'a, B: FastStep<T = f32>> Trainer<'a, B> {
    fn new(be: &'a B, cfg: &'a TrainConfig, data: &'a Prepared, model: AnyModel<B>, opt: Optimizer<B>) -> Result<Self> {
        let device_sampling = match cfg.sampler {
            SamplerChoice::Auto => cfg.device != Device::Cpu,
            SamplerChoice::Host => false,
            SamplerChoice::Device => true,
        };
        let sampler = if device_sampling {
            let (t, k) = (&data.train, &data.known);
            let tables = SampleTables::upload(be, (&t.offsets, &t.items), (&k.offsets, &k.items), t.n_items, cfg.neg)?;
            Some(DeviceSampler { tables, state: be.zeros_ids(5)? })
        } else {
            None
        };
        Ok(Trainer {
            be,
            cfg,
            data,
            model,
            opt,
            batch: Batch::with_capacity(be, cfg.batch)?,
            scratch: StepScratch::new(be, cfg.batch)?,
            stepper: AnyStep::new(be, cfg.step.into(), cfg.batch)?,
            rows: Vec::new(),
            cols: (Vec::with_capacity(cfg.batch), Vec::with_capacity(cfg.batch), Vec::with_capacity(cfg.batch)),
            sampler,
        })
    }

    /// Trains one epoch on the sampler chosen.
    fn epoch(&mut self, epoch: usize) -> Result<Trained> {
        if self.sampler.is_some() { self.device_epoch(epoch) } else { self.host_epoch(epoch) }
    }

    /// One epoch sampled on the host (`ncf_data::sample_epoch` on the CPU threads), its
    /// batches copied in one by one.
    fn host_epoch(&mut self, epoch: usize) -> Result<Trained> {
        let (be, cfg) = (self.be, self.cfg);
        let t0 = Instant::now();
        sample_epoch(&self.data.train, &self.data.known, cfg.neg, cfg.seed, epoch as u64, &mut self.rows);
        let t1 = Instant::now();
        let n_rows = self.rows.len();
        let mut progress = Progress::new(cfg, epoch, n_rows.div_ceil(cfg.batch), t1);
        let Trainer { model, opt, batch, scratch, stepper, rows, cols: (us, is, ys), .. } = self;
        // The steps run inside the chosen step's `run_steps` (the CPU's two-lane step keeps its
        // helper thread spinning for the epoch).
        stepper.run_steps(|stepper| -> Result<()> {
            for (step, chunk) in rows.chunks(cfg.batch).enumerate() {
                // The rows' columns, written in place (no `push` with its capacity check per
                // element: this runs on the step's critical path, with the helper thread idle),
                // a column at a time: one loop over the four zipped slices took about 1,000
                // TSC cycles a batch of 256 with the rows in cache, three loops 600.
                us.resize(chunk.len(), 0);
                is.resize(chunk.len(), 0);
                ys.resize(chunk.len(), 0.0);
                us.iter_mut().zip(chunk).for_each(|(u, r)| *u = r.user);
                is.iter_mut().zip(chunk).for_each(|(i, r)| *i = r.item);
                ys.iter_mut().zip(chunk).for_each(|(y, r)| *y = r.label);
                batch.set(be, us, is, ys)?;
                // The next batch's rows, on their way from memory while this one trains: at
                // `993c8f6` the three loops above took 1,580–1,790 TSC cycles (2.6 GHz) a batch
                // of 256 without such a prefetch, 730–810 with it, on the Zen 4 VM of
                // BENCHMARKS.md.
                let next = ((step + 1) * cfg.batch).min(rows.len());
                ncf_cpu::ops::prefetch(rows, next, cfg.batch.min(rows.len() - next));
                stepper.step(be, model, opt, batch, scratch)?;
                progress.step(be, step, stepper, scratch)?;
            }
            Ok(())
        })?;
        let loss = progress.finish(be, stepper, scratch)?;
        let training_s = t1.elapsed().as_secs_f64();
        let phases = stepper.take_phase_times();
        Ok(Trained { rows: n_rows, sampling_s: (t1 - t0).as_secs_f64(), training_s, loss, phases })
    }

    /// One epoch sampled on the device: every batch is drawn where the model lives; the full
    /// batches replay one recorded step (a CUDA graph) where the backend can record.
    fn device_epoch(&mut self, epoch: usize) -> Result<Trained> {
        let (be, cfg) = (self.be, self.cfg);
        let Trainer { model, opt, batch, scratch, stepper, sampler, .. } = self;
        let Some(DeviceSampler { tables, state }) = sampler else {
            unreachable!("device_epoch runs with a device sampler");
        };
        let t0 = Instant::now();
        let k = EpochKeys::new(cfg.seed, epoch as u64).words();
        be.write_ids(state, &[0, k[0], k[1], k[2], k[3]])?;
        let n_rows = tables.rows() as usize;
        let t1 = Instant::now();
        let mut progress = Progress::new(cfg, epoch, n_rows.div_ceil(cfg.batch), t1);
        let mut sampled_step = |b: usize,
                                stepper: &mut AnyStep<B>,
                                model: &mut AnyModel<B>,
                                opt: &mut Optimizer<B>,
                                batch: &mut Batch<B>,
                                scratch: &mut StepScratch<B>|
         -> ncf_core::Result<()> {
            be.sample_batch(tables, state, cfg.batch, b, &mut batch.users, &mut batch.items, &mut batch.labels)?;
            batch.len = b;
            stepper.step(be, model, opt, batch, scratch)
        };
        let full = n_rows / cfg.batch;
        let mut step = 0;
        // The first step runs directly: it allocates what later steps reuse (row plans,
        // library workspaces), which a recording could not.
        if full > 0 {
            sampled_step(cfg.batch, stepper, model, opt, batch, scratch)?;
            progress.step(be, step, stepper, scratch)?;
            step += 1;
        }
        // Record STEPS_PER_GRAPH steps (their sampling included: the device advances its
        // batch counter) as one graph, and replay it: one launch per that many steps.
        let per = STEPS_PER_GRAPH.min(full.saturating_sub(step) / 2);
        let graph = if cfg.graph && per >= 1 {
            let t_before = opt.t;
            let g = be.capture(&mut || {
                (0..per).try_for_each(|_| sampled_step(cfg.batch, stepper, model, opt, batch, scratch))
            })?;
            // Recording ran the host side of the steps (the optimizer's host count went up)
            // but nothing on the device.
            opt.t = t_before;
            g
        } else {
            None
        };
        if let Some(g) = &graph {
            let t_start = opt.t;
            let first = step;
            while step + per <= full {
                be.replay(g)?;
                for _ in 0..per {
                    progress.step(be, step, stepper, scratch)?;
                    step += 1;
                }
            }
            // Each replay advanced the device's step count; the host's follows.
            opt.set_steps(be, t_start + (step - first) as u64)?;
            model.params_and_grads().0.touch();
        }
        while step < full {
            sampled_step(cfg.batch, stepper, model, opt, batch, scratch)?;
            progress.step(be, step, stepper, scratch)?;
            step += 1;
        }
        let tail = n_rows - full * cfg.batch;
        if tail > 0 {
            sampled_step(tail, stepper, model, opt, batch, scratch)?;
        }
        let loss = progress.finish(be, stepper, scratch)?;
        let training_s = t1.elapsed().as_secs_f64();
        let phases = stepper.take_phase_times();
        Ok(Trained { rows: n_rows, sampling_s: (t1 - t0).as_secs_f64(), training_s, loss, phases })
    }

    /// HR@K and NDCG@K on the validation holdout and on the test set; the seconds it took.
    /// Validation and test metrics, the low-activity users' test metrics and their count, and
    /// the seconds it took.
    fn evaluate(&mut self) -> Result<(HitMetrics, HitMetrics, (HitMetrics, usize), f64)> {
        evaluate_sets(self.be, &mut self.model, self.data, self.cfg.k)
    }

    /// Writes `path`: the selected weights and the run so far, with the state to resume from.
    fn checkpoint(&self, path: &std::path::Path, mcfg: &ModelConfig, best: &Best) -> Result<()> {
        let current = self.model.params().to_host(self.be)?;
        let optim = self.opt.state_to_host(self.be, self.model.params())?;
        save_run(path, self.cfg, mcfg, self.data, best, current, optim, self.opt.t)
    }
}

/// Writes `path` (atomically): the selected weights and the run so far, with the state to
/// resume from (`current` weights, optimizer state `optim` after `t` steps).
#[allow(clippy::too_many_arguments)]
fn save_run(
    path: &std::path::Path,
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    data: &Prepared,
    best: &Best,
    current: Vec<ncf_model::HostTensor>,
    optim: Vec<ncf_model::HostTensor>,
    t: u64,
) -> Result<()> {
    let resume = checkpoint::ResumeState { epochs: best.reports.clone(), best_valid: best.valid, current, optim, t };
    let summary = summarize(cfg, &best.reports, best.valid);
    snapshot(cfg, mcfg, data, &summary, &best.reports, best.weights.clone(), Some(resume)).save(path, true)
}

/// The epochs so far, and the validation-selected one with its weights.
struct Best {
    reports: Vec<EpochReport>,
    valid: Option<usize>,
    weights: Vec<ncf_model::HostTensor>,
}

impl Best {
    /// Records an epoch; keeps `model`'s weights when its validation HR is the best so far.
    fn record<B: Backend<T = f32>>(&mut self, be: &B, report: EpochReport, model: &AnyModel<B>) -> Result<()> {
        self.reports.push(report);
        let k = self.reports.len() - 1;
        if self.valid.is_none_or(|b| self.reports[k].valid_hr > self.reports[b].valid_hr) {
            self.valid = Some(k);
            self.weights = model.params().to_host(be)?;
        }
        Ok(())
    }

    /// `patience` epochs have passed without a better validation HR (0: never).
    fn stalled(&self, patience: usize) -> bool {
        patience > 0 && self.valid.is_some_and(|b| self.reports.len() - 1 - b >= patience)
    }
}

/// HR@K and NDCG@K of `model` on the validation holdout and on the test set, the
/// low-activity users' test metrics and their count, and the seconds it took.
fn evaluate_sets<B: Backend<T = f32>>(
    be: &B,
    model: &mut AnyModel<B>,
    data: &Prepared,
    k: usize,
) -> Result<(HitMetrics, HitMetrics, (HitMetrics, usize), f64)> {
    let t = Instant::now();
    let valid = evaluate(be, model, &data.valid, k)?;
    let test = evaluate(be, model, &data.test, k)?;
    let low = &data.low_test;
    let low_m = if low.is_empty() { HitMetrics { hr: 0.0, ndcg: 0.0, ..test } } else { evaluate(be, model, low, k)? };
    Ok((valid, test, (low_m, low.len()), t.elapsed().as_secs_f64()))
}

/// [`train`] on a given backend.
fn train_on<B: FastStep<T = f32>>(
    be: &B,
    kind: ModelKind,
    cfg: &TrainConfig,
    data: &Prepared,
    resume: Option<ResumeFrom<'_>>,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Outcome> {
    let mut mcfg = model_config(kind, cfg, data.known.n_users, data.known.n_items);
    mcfg.user_features = data.user_features.as_ref().map_or(0, SideFeatures::width);
    mcfg.item_features = data.item_features.as_ref().map_or(0, SideFeatures::width);
    if (mcfg.user_features > 0 || mcfg.item_features > 0) && (cfg.save.is_some() || resume.is_some()) {
        return Err(TrainError::Config("features", "a hybrid model cannot be saved or resumed yet (--save)".into()));
    }
    let max_rows = cfg.batch.max(cfg.eval_rows);
    let (model, opt, mut best) = match &resume {
        None => start(be, cfg, &mcfg, max_rows)?,
        Some(r) => resume_from(be, cfg, &mcfg, max_rows, r)?,
    };
    let mut model = model;
    for (name, f) in [("user_features", &data.user_features), ("item_features", &data.item_features)] {
        if let Some(f) = f {
            model.params_and_grads().0.load(be, name, &f.dense())?;
        }
    }
    let mut tr = Trainer::new(be, cfg, data, model, opt)?;
    // The rate of each epoch (`--lr-schedule`); a resumed run replays its epochs' validation
    // scores, so a plateau schedule resumes where it was.
    let mut schedule = LrScheduler::new(cfg, cfg.effective_lr());
    best.reports.iter().for_each(|r| schedule.observe(-r.valid_hr));
    for epoch in best.reports.len() + 1..=cfg.epochs {
        if best.stalled(cfg.patience) {
            break;
        }
        let lr = schedule.lr(epoch);
        tr.opt.set_lr(lr);
        let trained = tr.epoch(epoch)?;
        let (v, t, (low, low_users), eval_s) = tr.evaluate()?;
        let report = EpochReport {
            epoch,
            loss: trained.loss,
            valid_hr: v.hr,
            valid_ndcg: v.ndcg,
            test_hr: t.hr,
            test_ndcg: t.ndcg,
            sampling_s: trained.sampling_s,
            training_s: trained.training_s,
            eval_s,
            samples_per_second: trained.rows as f64 / trained.training_s.max(1e-9),
            lr,
            low_test_hr: low.hr,
            low_test_ndcg: low.ndcg,
            low_users,
            step_phases: trained.phases,
        };
        on_epoch(&report);
        let reached = cfg.stop_at_hr.is_some_and(|x| report.test_hr >= x);
        schedule.observe(-report.valid_hr);
        best.record(be, report, &tr.model)?;
        if let Some(path) = &cfg.save {
            tr.checkpoint(path, &mcfg, &best)?;
        }
        if reached {
            break;
        }
    }
    let summary = summarize(cfg, &best.reports, best.valid);
    let checkpoint = snapshot(cfg, &mcfg, data, &summary, &best.reports, best.weights, None);
    Ok(Outcome { summary, epochs: best.reports, best: checkpoint })
}

/// A fresh run: the model (or NeuMF from pretrained GMF and MLP), its optimizer, no epochs.
fn start<B: Backend<T = f32>>(
    be: &B,
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    max_rows: usize,
) -> Result<(AnyModel<B>, Optimizer<B>, Best)> {
    let model = build_model(cfg, mcfg, be, max_rows)?;
    let weights = model.params().to_host(be)?;
    let opt = Optimizer::new(be, model.params(), optim_config(cfg), cfg.batch)?;
    Ok((model, opt, Best { reports: Vec::new(), valid: None, weights }))
}

/// A resumed run: weights, optimizer state, epochs and the selected epoch from the checkpoint.
fn resume_from<B: Backend<T = f32>>(
    be: &B,
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    max_rows: usize,
    r: &ResumeFrom<'_>,
) -> Result<(AnyModel<B>, Optimizer<B>, Best)> {
    let mut model = AnyModel::new(be, mcfg, max_rows, &mut ncf_core::rng::seeded(cfg.seed, 1))?;
    let (st, best) = resume_weights(be, mcfg, r, &mut model)?;
    let mut opt = Optimizer::new(be, model.params(), optim_config(cfg), cfg.batch)?;
    opt.load_state(be, model.params(), &st.optim, st.t)?;
    Ok((model, opt, best))
}

/// A resumed run's weights, loaded into `model` (built for `mcfg`, which must be the
/// checkpoint's spec), and its epochs and selected weights; the resume state, for the
/// optimizer's part.
fn resume_weights<B: Backend<T = f32>>(
    be: &B,
    mcfg: &ModelConfig,
    r: &ResumeFrom<'_>,
    model: &mut AnyModel<B>,
) -> Result<(checkpoint::ResumeState, Best)> {
    let st = checkpoint::ResumeState::read(r.checkpoint, r.path)?;
    if ModelSpec::of(mcfg) != r.checkpoint.spec {
        return Err(TrainError::Checkpoint {
            path: r.path.display().to_string(),
            reason: format!("holds a {:?} model, but this run builds {:?}", r.checkpoint.spec, ModelSpec::of(mcfg)),
        });
    }
    for t in &st.current {
        model.params_and_grads().0.load(be, &t.name, &t.data)?;
    }
    let weights = r.checkpoint.tensors.iter().filter(|t| !t.name.starts_with("resume/")).cloned().collect();
    let best = Best { reports: st.epochs.clone(), valid: st.best_valid, weights };
    Ok((st, best))
}

/// The run's summary so far: test metrics at the validation-selected epoch.
fn summarize(cfg: &TrainConfig, reports: &[EpochReport], best_valid: Option<usize>) -> Summary {
    let n = reports.len().max(1) as f64;
    let mean = |f: fn(&EpochReport) -> f64| reports.iter().map(f).sum::<f64>() / n;
    let sel = best_valid.map(|b| reports[b].clone());
    let best_test = reports.iter().max_by(|a, b| a.test_hr.total_cmp(&b.test_hr)).cloned();
    let (sampling, training, eval) = (mean(|r| r.sampling_s), mean(|r| r.training_s), mean(|r| r.eval_s));
    Summary {
        model: cfg.model.to_string(),
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
        low_test_hr: sel.as_ref().map_or(0.0, |r| r.low_test_hr),
        low_test_ndcg: sel.as_ref().map_or(0.0, |r| r.low_test_ndcg),
        low_users: sel.as_ref().map_or(0, |r| r.low_users),
        seconds_per_epoch: EpochSeconds { sampling, training, eval, total: sampling + training + eval },
        samples_per_second: mean(|r| r.samples_per_second),
        threads: rayon::current_num_threads(),
        simd: ncf_cpu::simd::SimdLevel::best().name().to_string(),
        config: cfg.clone(),
    }
}

/// A checkpoint of the selected weights with the run's metadata, and optionally its resume state.
fn snapshot(
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    data: &Prepared,
    summary: &Summary,
    reports: &[EpochReport],
    best_weights: Vec<ncf_model::HostTensor>,
    resume: Option<checkpoint::ResumeState>,
) -> Checkpoint {
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("summary".to_string(), serde_json::to_string(summary).unwrap_or_default());
    metadata.insert("epochs".to_string(), serde_json::to_string(reports).unwrap_or_default());
    metadata.insert("train_config".to_string(), serde_json::to_string(cfg).unwrap_or_default());
    checkpoint::put_id_maps(&mut metadata, data.user_ids.as_ref(), data.item_ids.as_ref());
    let mut ckpt = Checkpoint { spec: ModelSpec::of(mcfg), tensors: best_weights, metadata };
    ckpt.put_seen(&data.known);
    if let Some(r) = resume {
        r.write_into(&mut ckpt);
    }
    ckpt
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// `param_count` is what the models allocate, for each kind.
    #[test]
    fn param_count_matches_the_models() {
        let be = CpuBackend::<f32>::default();
        for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::NeuMf, ModelKind::Mf] {
            let m = ModelConfig { factors: 6, layers: vec![16, 8, 4], ..ModelConfig::new(kind, 13, 7) };
            let model = AnyModel::new(&be, &m, 4, &mut ncf_core::rng::seeded(1, 1)).unwrap();
            assert_eq!(param_count(&m), model.params().numel() as u128, "{kind:?}");
        }
    }

    /// Tables past 2³¹ − 1 rows and models past the GPU's free memory are refused with the
    /// numbers, before anything is allocated.
    #[test]
    fn bad_gpu_sizes_are_refused_with_the_numbers() {
        let e = gpu_rows_fit(3_000_000_000, 10).unwrap_err().to_string();
        assert!(e.contains("3000000000 users exceed the GPU kernels' 2^31 - 1 = 2147483647 rows"), "{e}");
        assert!(gpu_rows_fit(i32::MAX as usize, 1).is_ok());
        let cfg = TrainConfig { factors: 64, layers: vec![256, 256, 128, 64], ..TrainConfig::default() };
        // NeuMF-64 on 1 G users: about 1.9e11 parameters, 2.9 TiB.
        let m = model_config(ModelKind::NeuMf, &cfg, 1_000_000_000, 26_744);
        let gib = 1usize << 30;
        let e = gpu_memory_fits(&m, &cfg, 130 * gib, 140 * gib).unwrap_err().to_string();
        println!("{e}");
        assert!(e.contains("parameters, which need") && e.contains("130.00 GiB free of 140.00 GiB"), "{e}");
        // ML-20M's sizes fit an H200 easily.
        let m = model_config(ModelKind::NeuMf, &cfg, 138_493, 26_744);
        assert!(gpu_memory_fits(&m, &cfg, 130 * gib, 140 * gib).is_ok());
    }
}
