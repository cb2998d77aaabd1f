//! # ncf-train
//!
//! The training loop of the paper: each epoch draws fresh negatives, trains on shuffled
//! mini-batches with BCE, then evaluates HR@K / NDCG@K on a validation holdout (one training
//! interaction per user, which chooses the epoch and drives early stopping) and on the test set
//! (reported every epoch, never used to choose anything).

#![forbid(unsafe_code)]

use ncf_core::sample::{EpochKeys, SampleTables};
use ncf_core::{Backend, Decay, OptimKind, SgdHp};
use ncf_cpu::{CpuBackend, GemmImpl};
use ncf_data::interactions::{hold_out_one_per_user, sample_unseen};
use ncf_data::{IdMap, NcfSplit, Row, UserItems, sample_epoch};
use ncf_eval::{HitMetrics, RankCase, evaluate};
use ncf_model::{
    AnyModel, AnyStep, Batch, FastStep, Group, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepKind,
    StepScratch,
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
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub mod checkpoint;
pub mod plot;
pub mod source;
pub use checkpoint::{Checkpoint, ModelSpec};

fn cpu() -> String {
    "cpu".into()
}

/// Where each epoch's rows (positives and sampled negatives, shuffled) come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerChoice {
    /// `host` on the CPU, `device` on a GPU.
    #[default]
    Auto,
    /// `ncf_data::sample_epoch` on the CPU threads, copied in batch by batch.
    Host,
    /// [`Backend::sample_batch`]: each batch drawn where the model lives, from tables uploaded
    /// once ([`ncf_core::sample`]); no host→device copy per batch.
    Device,
}

impl std::str::FromStr for SamplerChoice {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(SamplerChoice::Auto),
            "host" => Ok(SamplerChoice::Host),
            "device" => Ok(SamplerChoice::Device),
            other => Err(TrainError::Config("sampler", format!("`{other}`: expected auto, host or device"))),
        }
    }
}

fn yes() -> bool {
    true
}

/// Which update rule trains every group.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimChoice {
    Adam,
    Sgd,
}

/// Every setting of a run. Defaults are the original code's: batch 256, Adam lr 0.001,
/// 4 negatives, factors 8, layers [64,32,16,8], K = 10.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// `cpu` or `cuda`.
    #[serde(skip, default = "cpu")]
    pub device: String,
    /// Where the epoch's rows are sampled.
    #[serde(default)]
    pub sampler: SamplerChoice,
    /// With the device sampler: record one training step as a graph (CUDA) and replay it for
    /// every full batch of the epoch, instead of issuing each op from the host.
    #[serde(default = "yes")]
    pub graph: bool,
    /// Write a checkpoint here after every epoch (atomically, replacing the previous one): the
    /// validation-selected weights, plus what `--resume` needs to continue the run.
    #[serde(skip)]
    pub save: Option<std::path::PathBuf>,
    /// Where the data came from (`--data`, `--min-rating`, `--split-seed`), recorded so that
    /// `--resume` and readers of the summary know; `train` itself takes a [`Prepared`].
    pub data: Option<String>,
    pub min_rating: Option<f32>,
    pub split_seed: u64,
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
            gemm: GemmImpl::Auto,
            pretrained: None,
            alpha: 0.5,
            progress: false,
            device: "cpu".into(),
            sampler: SamplerChoice::Auto,
            graph: true,
            save: None,
            data: None,
            min_rating: None,
            split_seed: 42,
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
    /// Raw ids of the dense ids, when the data has them; saved in checkpoints.
    pub user_ids: Option<IdMap>,
    pub item_ids: Option<IdMap>,
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
        Prepared { known, train, valid, test, user_ids: split.user_ids.clone(), item_ids: split.item_ids.clone() }
    }
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
    if !(0.0..1.0).contains(&cfg.momentum) {
        return bad("momentum", "must be in [0, 1)");
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

/// Trains on `data` with `cfg` (f32, CPU, the current rayon pool), calling `on_epoch` after
/// each epoch. With `resume`, the weights, optimizer state, epoch reports and best epoch come
/// from the checkpoint and training continues with its next epoch; since every epoch's
/// negatives and shuffle derive from (seed, epoch), the result is bit-identical to a run that
/// never stopped.
pub fn train(
    cfg: &TrainConfig,
    data: &Prepared,
    resume: Option<ResumeFrom<'_>>,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<Outcome> {
    let kind = check(cfg)?;
    match cfg.device.as_str() {
        "cpu" => train_on(&CpuBackend::<f32>::new(cfg.gemm), kind, cfg, data, resume, on_epoch),
        // Written, not yet run on a GPU (see crates/ncf-cuda).
        "cuda" => {
            let be = ncf_cuda::CudaBackend::new(0, gpu_gemm(cfg.gemm))
                .map_err(|e| TrainError::Config("device", e.to_string()))?;
            // Score every validation or test case in one forward call where it fits: the GPU
            // has room for far more rows than the CPU's cache-sized default.
            let mut cfg = cfg.clone();
            if cfg.eval_rows == TrainConfig::default().eval_rows {
                cfg.eval_rows = GPU_EVAL_ROWS;
            }
            train_on(&be, kind, &cfg, data, resume, on_epoch)
        }
        other => Err(TrainError::Config("device", format!("`{other}`: expected cpu or cuda"))),
    }
}

/// Rows scored per forward call on a GPU (6,040 ML-1M users × 100 candidates fit in one).
pub const GPU_EVAL_ROWS: usize = 1 << 20;

/// `--gemm` on a GPU: the naive kernel, the hand-written tiled kernel, or cuBLAS.
pub fn gpu_gemm(g: GemmImpl) -> ncf_cuda::GpuGemm {
    match g {
        GemmImpl::Naive => ncf_cuda::GpuGemm::Naive,
        GemmImpl::Scratch | GemmImpl::Auto => ncf_cuda::GpuGemm::Tiled,
        GemmImpl::Library => ncf_cuda::GpuGemm::Cublas,
    }
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
    let mcfg = ModelConfig {
        kind,
        users: data.known.n_users,
        items: data.known.n_items,
        factors: cfg.factors,
        layers: cfg.layers.clone(),
        init: Default::default(),
    };
    let max_rows = cfg.batch.max(cfg.eval_rows);
    let mut reports: Vec<EpochReport> = Vec::new();
    let mut best_valid: Option<usize> = None;
    let (mut model, mut best_weights, mut opt) = match &resume {
        None => {
            let model = build_model(cfg, &mcfg, be, max_rows)?;
            let best = model.params().to_host(be)?;
            let opt = Optimizer::new(be, model.params(), optim_config(cfg), cfg.batch)?;
            (model, best, opt)
        }
        Some(r) => {
            let st = checkpoint::ResumeState::read(r.checkpoint, r.path)?;
            if ModelSpec::of(&mcfg) != r.checkpoint.spec {
                return Err(TrainError::Checkpoint {
                    path: r.path.display().to_string(),
                    reason: format!(
                        "holds a {:?} model, but this run builds {:?}",
                        r.checkpoint.spec,
                        ModelSpec::of(&mcfg)
                    ),
                });
            }
            let mut model = AnyModel::new(be, &mcfg, max_rows, &mut ncf_core::rng::seeded(cfg.seed, 1))?;
            for t in &st.current {
                model.params_and_grads().0.load(be, &t.name, &t.data)?;
            }
            let mut opt = Optimizer::new(be, model.params(), optim_config(cfg), cfg.batch)?;
            opt.load_state(be, model.params(), &st.optim, st.t)?;
            reports = st.epochs;
            best_valid = st.best_valid;
            (model, r.checkpoint.tensors.iter().filter(|t| !t.name.starts_with("resume/")).cloned().collect(), opt)
        }
    };
    let mut batch = Batch::with_capacity(be, cfg.batch)?;
    let mut scratch = StepScratch::new(be, cfg.batch)?;
    let mut stepper = AnyStep::new(be, StepKind::Fast, cfg.batch)?;
    let (mut us, mut is, mut ys) =
        (Vec::with_capacity(cfg.batch), Vec::with_capacity(cfg.batch), Vec::with_capacity(cfg.batch));
    let mut rows: Vec<Row> = Vec::new();
    let device_sampling = match cfg.sampler {
        SamplerChoice::Auto => cfg.device != "cpu",
        SamplerChoice::Host => false,
        SamplerChoice::Device => true,
    };
    // The device sampler's tables (uploaded once) and state `[batch number, epoch keys]`.
    let tables = if device_sampling {
        let (t, k) = (&data.train, &data.known);
        Some(SampleTables::upload(be, (&t.offsets, &t.items), (&k.offsets, &k.items), t.n_items, cfg.neg)?)
    } else {
        None
    };
    let mut sampler_state = be.zeros_ids(5)?;
    let stopped_early = |reports: &[EpochReport], best: Option<usize>| {
        cfg.patience > 0 && best.is_some_and(|b| reports.len() - 1 - b >= cfg.patience)
    };
    let first = reports.len() + 1;

    for epoch in first..=cfg.epochs {
        if stopped_early(&reports, best_valid) {
            break;
        }
        let t0 = Instant::now();
        let n_rows = match &tables {
            Some(tables) => {
                let k = EpochKeys::new(cfg.seed, epoch as u64).words();
                be.write_ids(&mut sampler_state, &[0, k[0], k[1], k[2], k[3]])?;
                tables.rows() as usize
            }
            None => {
                sample_epoch(&data.train, &data.known, cfg.neg, cfg.seed, epoch as u64, &mut rows);
                rows.len()
            }
        };
        let t1 = Instant::now();
        let steps = n_rows.div_ceil(cfg.batch);
        let bar =
            if cfg.progress { indicatif::ProgressBar::new(steps as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(epoch.to_string());
        let mut loss_sum = 0.0;
        let mut progress = |step: usize, stepper: &mut AnyStep<B>, scratch: &mut StepScratch<B>| -> Result<()> {
            if cfg.progress && (step + 1).is_multiple_of(200) {
                loss_sum += stepper.take_loss(be, scratch)?;
                let rate = ((step + 1) * cfg.batch) as f64 / t1.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(step as u64 + 1);
                bar.set_message(format!("loss {:.4}  {:.0} samples/s", loss_sum / (step + 1) as f64, rate));
            }
            Ok(())
        };
        match &tables {
            None => stepper.run_steps(|stepper| -> Result<()> {
                for (step, chunk) in rows.chunks(cfg.batch).enumerate() {
                    us.clear();
                    is.clear();
                    ys.clear();
                    for r in chunk {
                        us.push(r.user);
                        is.push(r.item);
                        ys.push(r.label);
                    }
                    batch.set(be, &us, &is, &ys)?;
                    stepper.step(be, &mut model, &mut opt, &batch, &mut scratch)?;
                    progress(step, stepper, &mut scratch)?;
                }
                Ok(())
            })?,
            Some(tables) => {
                // Every batch is drawn on the device; only the loss is read back, every 200
                // steps with a progress bar, else once per epoch.
                let mut sampled_step = |b: usize,
                                        stepper: &mut AnyStep<B>,
                                        model: &mut AnyModel<B>,
                                        opt: &mut Optimizer<B>,
                                        batch: &mut Batch<B>,
                                        scratch: &mut StepScratch<B>|
                 -> ncf_core::Result<()> {
                    be.sample_batch(
                        tables,
                        &mut sampler_state,
                        cfg.batch,
                        b,
                        &mut batch.users,
                        &mut batch.items,
                        &mut batch.labels,
                    )?;
                    batch.len = b;
                    stepper.step(be, model, opt, batch, scratch)
                };
                let full = n_rows / cfg.batch;
                let mut step = 0;
                // The first step runs directly: it allocates what later steps reuse (row plans,
                // library workspaces), which a recording could not.
                if full > 0 {
                    sampled_step(cfg.batch, &mut stepper, &mut model, &mut opt, &mut batch, &mut scratch)?;
                    progress(step, &mut stepper, &mut scratch)?;
                    step += 1;
                }
                let graph = if cfg.graph && full > 2 {
                    let t_before = opt.t;
                    let g = be.capture(&mut || {
                        sampled_step(cfg.batch, &mut stepper, &mut model, &mut opt, &mut batch, &mut scratch)
                    })?;
                    // Recording ran the host side of one step (the optimizer's host count went up)
                    // but nothing on the device.
                    opt.t = t_before;
                    g
                } else {
                    None
                };
                match &graph {
                    Some(g) => {
                        let t_start = opt.t;
                        while step < full {
                            be.replay(g)?;
                            progress(step, &mut stepper, &mut scratch)?;
                            step += 1;
                        }
                        // Each replay advanced the device's step count; the host's follows.
                        opt.set_steps(be, t_start + (full - 1) as u64)?;
                        model.params_and_grads().0.touch();
                    }
                    None => {
                        while step < full {
                            sampled_step(cfg.batch, &mut stepper, &mut model, &mut opt, &mut batch, &mut scratch)?;
                            progress(step, &mut stepper, &mut scratch)?;
                            step += 1;
                        }
                    }
                }
                let tail = n_rows - full * cfg.batch;
                if tail > 0 {
                    sampled_step(tail, &mut stepper, &mut model, &mut opt, &mut batch, &mut scratch)?;
                }
            }
        }
        bar.finish_and_clear();
        let loss = (loss_sum + stepper.take_loss(be, &mut scratch)?) / steps.max(1) as f64;
        let t2 = Instant::now();
        let v: HitMetrics = evaluate(be, &mut model, &data.valid, cfg.k)?;
        let t: HitMetrics = evaluate(be, &mut model, &data.test, cfg.k)?;
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
            samples_per_second: n_rows as f64 / training_s.max(1e-9),
        };
        on_epoch(&report);
        reports.push(report);
        let k = reports.len() - 1;
        if best_valid.is_none_or(|b| reports[k].valid_hr > reports[b].valid_hr) {
            best_valid = Some(k);
            best_weights = model.params().to_host(be)?;
        }
        if let Some(path) = &cfg.save {
            let resume = checkpoint::ResumeState {
                epochs: reports.clone(),
                best_valid,
                current: model.params().to_host(be)?,
                optim: opt.state_to_host(be, model.params())?,
                t: opt.t,
            };
            let summary = summarize(cfg, &reports, best_valid);
            snapshot(cfg, &mcfg, data, &summary, &reports, best_weights.clone(), Some(resume)).save(path, true)?;
        }
    }
    let summary = summarize(cfg, &reports, best_valid);
    let best = snapshot(cfg, &mcfg, data, &summary, &reports, best_weights, None);
    Ok(Outcome { summary, epochs: reports, best })
}

/// The run's summary so far: test metrics at the validation-selected epoch.
fn summarize(cfg: &TrainConfig, reports: &[EpochReport], best_valid: Option<usize>) -> Summary {
    let n = reports.len().max(1) as f64;
    let mean = |f: fn(&EpochReport) -> f64| reports.iter().map(f).sum::<f64>() / n;
    let sel = best_valid.map(|b| reports[b].clone());
    let best_test = reports.iter().max_by(|a, b| a.test_hr.total_cmp(&b.test_hr)).cloned();
    let (sampling, training, eval) = (mean(|r| r.sampling_s), mean(|r| r.training_s), mean(|r| r.eval_s));
    Summary {
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
    if let Some(r) = resume {
        r.write_into(&mut ckpt);
    }
    ckpt
}
