//! The one configuration of a training run. [`TrainConfig`] is at once `ncf train`'s flags
//! (clap derive), the `--config run.toml` file (deserialized straight into it), and the JSON
//! recorded in summaries and checkpoints (serde). Defaults live in one place, the `#[arg]`
//! attributes: [`TrainConfig::default`] parses an empty command line.
//!
//! A run's settings are layered, lowest first: the defaults, a resumed checkpoint's settings
//! (without its per-invocation ones: the `Hardware` and `Output` flags), the TOML file's keys,
//! then the flags given on the command line ([`TrainConfig::layered`]). Each layer is the
//! struct serialized to a JSON object; a layer replaces only the keys it sets.

use crate::{Checkpoint, Result, TrainError};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};
use ncf_cpu::GemmImpl;
use ncf_model::ModelKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `--model`: which network to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Generalized matrix factorization.
    Gmf,
    /// The MLP tower.
    Mlp,
    /// GMF and MLP fused under one output layer.
    #[value(name = "neumf")]
    NeuMf,
    /// Plain matrix factorization (dot product of the embeddings).
    Mf,
    /// Explicit ratings: the MLP tower plus user and item biases, trained with MSE on a seeded
    /// 80/10/10 split of a ratings file (RMSE/MAE; `--layers` default 128,64,32 for it).
    Rating,
}

impl From<Model> for ModelKind {
    fn from(m: Model) -> ModelKind {
        match m {
            Model::Gmf => ModelKind::Gmf,
            Model::Mlp => ModelKind::Mlp,
            Model::NeuMf => ModelKind::NeuMf,
            Model::Mf => ModelKind::Mf,
            Model::Rating => ModelKind::Rating,
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        ModelKind::from(*self).fmt(f)
    }
}

/// `--device`: where the model trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// `--optimizer`: which update rule trains every group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimChoice {
    Adam,
    Sgd,
    /// Implicit alternating least squares (`--model mf` on the CPU): every user's factors
    /// solved against the items', then every item's, each epoch; no sampled negatives, no
    /// learning rate, so --batch, --neg, --lr and the optimizers' flags do not apply
    /// (`--als-alpha`, `--als-reg`, `--als-cg-steps`; `ncf_cpu::als`).
    Als,
}

/// `--lr-scaling`: how the learning rate follows the batch size. `--lr` is the rate at
/// `--lr-base-batch` (256, the paper's batch); a run at batch B uses `lr·√(B/base)` (sqrt) or
/// `lr·B/base` (linear). Measured on ML-1M (BENCHMARKS.md): at batch 65,536, sqrt scaling
/// reaches test HR@10 0.666 in 10 epochs against 0.562 unscaled (0.677 at batch 256).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    #[default]
    None,
    Sqrt,
    Linear,
}

/// `--rating-split`: see [`TrainConfig::rating_split`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RatingSplit {
    #[default]
    Random,
    PerUser,
}

impl From<RatingSplit> for ncf_data::SplitKind {
    fn from(s: RatingSplit) -> Self {
        match s {
            RatingSplit::Random => ncf_data::SplitKind::Random,
            RatingSplit::PerUser => ncf_data::SplitKind::PerUser,
        }
    }
}

/// `--lr-schedule`: see [`TrainConfig::lr_schedule`] and [`LrScheduler`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    #[default]
    Constant,
    Step,
    Cosine,
    Plateau,
}

/// The learning rate of each epoch under an [`LrSchedule`]. Ask [`LrScheduler::lr`] before an
/// epoch, then tell [`LrScheduler::observe`] its validation score (lower is better).
#[derive(Clone, Debug)]
pub struct LrScheduler {
    kind: LrSchedule,
    base: f64,
    gamma: f64,
    step: usize,
    plateau: usize,
    min: f64,
    epochs: usize,
    current: f64,
    best: f64,
    bad: usize,
}

impl LrScheduler {
    /// The schedule of `cfg` from base rate `base` (its effective `--lr`).
    pub fn new(cfg: &TrainConfig, base: f64) -> Self {
        LrScheduler {
            kind: cfg.lr_schedule,
            base,
            gamma: cfg.lr_gamma,
            step: cfg.lr_step.max(1),
            plateau: cfg.lr_plateau.max(1),
            min: cfg.lr_min,
            epochs: cfg.epochs.max(1),
            current: base,
            best: f64::INFINITY,
            bad: 0,
        }
    }

    /// The rate for epoch `epoch` (1-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        let e = epoch.saturating_sub(1);
        match self.kind {
            LrSchedule::Constant => self.base,
            LrSchedule::Step => self.base * self.gamma.powi((e / self.step) as i32),
            LrSchedule::Cosine if self.epochs <= 1 => self.base,
            LrSchedule::Cosine => {
                let x = e as f64 / (self.epochs - 1) as f64;
                self.min + (self.base - self.min) * (1.0 + (std::f64::consts::PI * x).cos()) / 2.0
            }
            LrSchedule::Plateau => self.current,
        }
    }

    /// Records an epoch's validation score (lower is better; at least 1e-4 better than the
    /// best so far counts as better): after `--lr-plateau` epochs in a row without one, the
    /// plateau schedule's rate is cut by `--lr-gamma`.
    pub fn observe(&mut self, score: f64) {
        if score < self.best - 1e-4 {
            self.best = score;
            self.bad = 0;
        } else {
            self.bad += 1;
            if self.bad >= self.plateau {
                self.current *= self.gamma;
                self.bad = 0;
            }
        }
    }
}

impl TrainConfig {
    /// The learning rate this run uses: `--lr`, scaled from `--lr-base-batch` to `--batch` by
    /// `--lr-scaling`.
    pub fn effective_lr(&self) -> f64 {
        let ratio = self.batch as f64 / self.lr_base_batch.max(1) as f64;
        match self.lr_scaling {
            LrScaling::None => self.lr,
            LrScaling::Sqrt => self.lr * ratio.sqrt(),
            LrScaling::Linear => self.lr * ratio,
        }
    }
}

/// `--preset`: a named set of settings, applied over the defaults and under everything given
/// (a `--config` file's keys, then the command line's flags win).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The shortest time to test HR@10 ≥ 0.68 found on the NCF ML-1M split (RESULTS.md): the
    /// MF model with 24 factors trained by implicit ALS (α 10, λ 1, 3 conjugate-gradient steps
    /// per row), 4 epochs. Its settings were chosen by validation HR@10 per second.
    Fast,
    /// The fastest gradient-trained (neural) recipe found: GMF with 32 factors, batch 4096,
    /// Adam lr 0.008, 3 epochs (chosen on validation HR per second).
    #[value(name = "fast-gmf")]
    #[serde(rename = "fast-gmf")]
    FastGmf,
}

impl Preset {
    /// The flags the preset sets, as `(key, value)` (`TrainConfig` field names).
    pub fn settings(self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        match self {
            Preset::Fast => vec![
                ("model", json!("mf")),
                ("optimizer", json!("als")),
                ("factors", json!(24)),
                ("als_alpha", json!(10.0)),
                ("als_reg", json!(1.0)),
                ("als_cg_steps", json!(3)),
                ("epochs", json!(4)),
            ],
            Preset::FastGmf => vec![
                ("model", json!("gmf")),
                ("factors", json!(32)),
                ("batch", json!(4096)),
                ("lr", json!(0.008)),
                ("epochs", json!(3)),
            ],
        }
    }
}

/// `--gemm`: the matrix product of the dense layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gemm {
    /// The triple loop.
    Naive,
    /// The hand-written kernel (the tiled kernel on a GPU).
    Scratch,
    /// matrixmultiply on the CPU, cuBLAS on a GPU.
    Library,
    /// On the CPU the fastest measured per product (see `GemmImpl::Auto`); on a GPU cuBLAS, which
    /// spreads the weight-gradient products (K = the batch) over the whole GPU where the tiled
    /// kernel gives them one to four blocks, and gives the same bits on every run on one GPU
    /// model with one stream (cuBLAS's reproducibility rule).
    #[default]
    Auto,
}

impl From<Gemm> for GemmImpl {
    fn from(g: Gemm) -> GemmImpl {
        match g {
            Gemm::Naive => GemmImpl::Naive,
            Gemm::Scratch => GemmImpl::Scratch,
            Gemm::Library => GemmImpl::Library,
            Gemm::Auto => GemmImpl::Auto,
        }
    }
}

/// `--sampler`: where each epoch's rows (positives and sampled negatives, shuffled) come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerChoice {
    /// `host` on the CPU, `device` on a GPU.
    #[default]
    Auto,
    /// `ncf_data::sample_epoch` on the CPU threads, copied in batch by batch.
    Host,
    /// `Backend::sample_batch`: each batch drawn where the model lives, from tables uploaded
    /// once (`ncf_core::sample`); no host→device copy per batch.
    Device,
}

/// `--step`: how one training step (forward, backward, optimizer update of a batch) runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// The backend's fastest training step (`ncf_model::FastStep`: on the CPU the two-lane
    /// step, an even batch's halves side by side on two cores; on a GPU the fused step, three
    /// kernels, where the model and optimizer allow it).
    #[default]
    Fast,
    /// The plain op-by-op step (`ncf_model::train_step`), one backend op after another.
    Reference,
}

impl From<Step> for ncf_model::StepKind {
    fn from(s: Step) -> Self {
        match s {
            Step::Fast => ncf_model::StepKind::Fast,
            Step::Reference => ncf_model::StepKind::Reference,
        }
    }
}

/// `--help` sections. Flags under [`HARDWARE`] and [`OUTPUT`] belong to one invocation: a
/// resumed run takes them from its own command line (or defaults), never from the checkpoint.
pub const DATA: &str = "Data";
pub const MODEL: &str = "Model";
pub const TRAINING: &str = "Training";
pub const HARDWARE: &str = "Hardware";
pub const OUTPUT: &str = "Output";

/// Every setting of a run: `ncf train`'s flags, the keys of its `--config` TOML file (the field
/// names; `-` may stand for `_`), and the `config` recorded in summaries and checkpoints.
/// Defaults are the original code's: batch 256, Adam lr 0.001, 4 negatives, factors 8, layers
/// `[64,32,16,8]`, K = 10.
#[derive(Clone, Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// An NCF split folder, a MovieLens folder (ratings.dat, u.data or ratings.csv) or one
    /// ratings file; default: the sample embedded in the binary.
    #[arg(long, help_heading = DATA)]
    pub data: Option<PathBuf>,
    /// MovieLens sources: only ratings >= this count as positives (default: every rating).
    #[arg(long, conflicts_with = "resume", help_heading = DATA)]
    #[serde(alias = "min-rating")]
    pub min_rating: Option<f32>,
    /// MovieLens sources: seed of the leave-latest-out test negatives (independent of --seed,
    /// so every model is tested on the same cases).
    #[arg(long, conflicts_with = "resume", default_value_t = 42, help_heading = DATA)]
    #[serde(alias = "split-seed")]
    pub split_seed: u64,
    /// The rating model's 80/10/10 split: random (one shuffle of all ratings) or per-user
    /// (each user's ratings shuffled and cut, so every user is in all three parts).
    #[arg(long, conflicts_with = "resume", value_enum, default_value_t = RatingSplit::Random, help_heading = DATA)]
    #[serde(alias = "rating-split")]
    pub rating_split: RatingSplit,
    /// MovieLens sources: sampled test negatives per user: 99 (the paper's protocol) or 999
    /// (MLPerf's). NCF split folders bring their own.
    #[arg(long, conflicts_with = "resume", default_value_t = 99, help_heading = DATA)]
    #[serde(alias = "test-negatives")]
    pub test_negatives: usize,

    /// Named settings under the flags you give: fast = the shortest time to a good model on
    /// ML-1M found so far (MF with 24 factors trained by implicit ALS, 4 epochs); fast-gmf =
    /// the fastest gradient-trained one (GMF, 32 factors, batch 4096, lr 0.008, 3 epochs).
    /// RESULTS.md has how each was chosen.
    #[arg(long, conflicts_with = "resume", value_enum, help_heading = MODEL)]
    pub preset: Option<Preset>,
    #[arg(long, conflicts_with = "resume", value_enum, ignore_case = true, default_value_t = Model::NeuMf, help_heading = MODEL)]
    pub model: Model,
    /// GMF / MF embedding width (predictive factors).
    #[arg(long, conflicts_with = "resume", default_value_t = 8, help_heading = MODEL)]
    pub factors: usize,
    /// MLP widths; the first is the concatenated embedding width.
    #[arg(long, conflicts_with = "resume", default_value = "64,32,16,8", value_delimiter = ',', help_heading = MODEL)]
    pub layers: Vec<usize>,
    /// NeuMF: start from this trained GMF checkpoint (needs --pretrain-mlp too).
    #[arg(long, conflicts_with = "resume", requires = "pretrain_mlp", help_heading = MODEL)]
    #[serde(alias = "pretrain-gmf")]
    pub pretrain_gmf: Option<PathBuf>,
    /// NeuMF: start from this trained MLP checkpoint (needs --pretrain-gmf too).
    #[arg(long, conflicts_with = "resume", requires = "pretrain_gmf", help_heading = MODEL)]
    #[serde(alias = "pretrain-mlp")]
    pub pretrain_mlp: Option<PathBuf>,
    /// Weight of GMF in the pretrained NeuMF's output layer.
    #[arg(long, conflicts_with = "resume", default_value_t = 0.5, help_heading = MODEL)]
    pub alpha: f64,

    /// Sampled negatives per positive, per epoch.
    #[arg(long, conflicts_with = "resume", default_value_t = 4, help_heading = TRAINING)]
    pub neg: usize,
    #[arg(long, conflicts_with = "resume", default_value_t = 256, help_heading = TRAINING)]
    pub batch: usize,
    /// Learning rate (at --lr-base-batch when --lr-scaling is set).
    #[arg(long, conflicts_with = "resume", default_value_t = 0.001, help_heading = TRAINING)]
    pub lr: f64,
    /// Scale --lr with the batch: none, sqrt (lr·√(batch/base)) or linear (lr·batch/base).
    #[arg(long, conflicts_with = "resume", value_enum, default_value_t = LrScaling::None, help_heading = TRAINING)]
    #[serde(alias = "lr-scaling")]
    pub lr_scaling: LrScaling,
    /// The batch at which --lr applies when --lr-scaling is set.
    #[arg(long, conflicts_with = "resume", default_value_t = 256, help_heading = TRAINING)]
    #[serde(alias = "lr-base-batch")]
    pub lr_base_batch: usize,
    /// How the learning rate changes from epoch to epoch (on the CPU; the GPU trainer runs
    /// constant only): constant; step (× --lr-gamma every --lr-step epochs);
    /// cosine (from --lr down to --lr-min over --epochs); plateau (× --lr-gamma after
    /// --lr-plateau epochs without a better validation score: RMSE for ratings, HR@K for
    /// implicit models).
    #[arg(long, conflicts_with = "resume", value_enum, default_value_t = LrSchedule::Constant, help_heading = TRAINING)]
    #[serde(alias = "lr-schedule")]
    pub lr_schedule: LrSchedule,
    /// --lr-schedule step: epochs between cuts.
    #[arg(long, conflicts_with = "resume", default_value_t = 10, help_heading = TRAINING)]
    #[serde(alias = "lr-step")]
    pub lr_step: usize,
    /// --lr-schedule step and plateau: the factor of each cut.
    #[arg(long, conflicts_with = "resume", default_value_t = 0.5, help_heading = TRAINING)]
    #[serde(alias = "lr-gamma")]
    pub lr_gamma: f64,
    /// --lr-schedule plateau: epochs without a better validation score before a cut.
    #[arg(long, conflicts_with = "resume", default_value_t = 2, help_heading = TRAINING)]
    #[serde(alias = "lr-plateau")]
    pub lr_plateau: usize,
    /// --lr-schedule cosine: the rate of the last epoch.
    #[arg(long, conflicts_with = "resume", default_value_t = 0.0, help_heading = TRAINING)]
    #[serde(alias = "lr-min")]
    pub lr_min: f64,
    #[arg(long, conflicts_with = "resume", value_enum, default_value_t = OptimChoice::Adam, help_heading = TRAINING)]
    pub optimizer: OptimChoice,
    /// Adam's β₁ (MLPerf's large-batch NCF recipe: 0.25 at batch 1,048,576 with lr 0.0045).
    #[arg(long, conflicts_with = "resume", default_value_t = 0.9, help_heading = TRAINING)]
    pub beta1: f64,
    /// Adam's β₂ (MLPerf's large-batch NCF recipe: 0.5).
    #[arg(long, conflicts_with = "resume", default_value_t = 0.999, help_heading = TRAINING)]
    pub beta2: f64,
    /// SGD momentum (0: vanilla SGD, as the paper uses for pretrained NeuMF; ignored by Adam).
    #[arg(long, conflicts_with = "resume", default_value_t = 0.9, help_heading = TRAINING)]
    pub momentum: f64,
    /// --optimizer als: the weight of an observed interaction beyond an unobserved one's
    /// (confidence c = 1 + α, Hu et al. 2008).
    #[arg(long, conflicts_with = "resume", default_value_t = 10.0, help_heading = TRAINING)]
    #[serde(alias = "als-alpha")]
    pub als_alpha: f64,
    /// --optimizer als: λ, the L2 penalty on every user's and item's factors.
    #[arg(long, conflicts_with = "resume", default_value_t = 1.0, help_heading = TRAINING)]
    #[serde(alias = "als-reg")]
    pub als_reg: f64,
    /// --optimizer als: conjugate-gradient steps per row in each sweep, from the row's last
    /// value (0: solve each row exactly, which is slower).
    #[arg(long, conflicts_with = "resume", default_value_t = 3, help_heading = TRAINING)]
    #[serde(alias = "als-cg-steps")]
    pub als_cg_steps: usize,
    /// L2 penalty on embeddings and weights (the paper's regularization), 0 = none.
    #[arg(long, conflicts_with = "resume", default_value_t = 0.0, help_heading = TRAINING)]
    pub l2: f64,
    /// Decoupled weight decay (AdamW: `w ← w − lr·λ·w` beside the Adam step, not through the
    /// gradient) on embeddings and weights, 0 = none. Excludes --l2.
    #[arg(long, conflicts_with_all = ["resume", "l2"], default_value_t = 0.0, help_heading = TRAINING)]
    #[serde(alias = "weight-decay")]
    pub weight_decay: f64,
    /// The rating model: batch normalization after each dense layer of the tower (batch
    /// statistics in training, running statistics when predicting).
    #[arg(long, conflicts_with = "resume", help_heading = MODEL)]
    #[serde(alias = "batch-norm")]
    pub batch_norm: bool,
    /// The rating model: inverted dropout on each dense layer's output at this probability
    /// (seeded; off when predicting), 0 = none.
    #[arg(long, conflicts_with = "resume", default_value_t = 0.0, help_heading = MODEL)]
    pub dropout: f64,
    /// The hybrid model (rating or NeuMF/MLP): side features (items' genres and release decade,
    /// users' gender, age and occupation) from the MovieLens metadata files, concatenated to
    /// the MLP tower's input. Read from --features-from, else the --data folder (u.item,
    /// u.user; movies.dat, users.dat; movies.csv).
    #[arg(long, conflicts_with = "resume", help_heading = MODEL)]
    pub features: bool,
    /// The folder holding the metadata files for --features (e.g. ../shared/data/ml-1m for the
    /// NCF ML-1M split, whose item_id_map.tsv maps its items to MovieLens ids).
    #[arg(long, value_name = "DIR", requires = "features", conflicts_with = "resume", help_heading = MODEL)]
    #[serde(alias = "features-from")]
    pub features_from: Option<PathBuf>,
    /// The rating model: predictions are clamped to the rating range (e.g. 1..=5) unless this
    /// is given.
    #[arg(long, help_heading = MODEL)]
    #[serde(alias = "no-clamp")]
    pub no_clamp: bool,
    /// Epochs to train; with --resume, the total to reach (default: the checkpoint's).
    #[arg(long, default_value_t = 20, help_heading = TRAINING)]
    pub epochs: usize,
    #[arg(long, conflicts_with = "resume", default_value_t = 42, help_heading = TRAINING)]
    pub seed: u64,
    /// Stop after this many epochs without a better validation HR (0: never stop early).
    #[arg(long, default_value_t = 0, help_heading = TRAINING)]
    pub patience: usize,
    /// Benchmark mode (MLPerf's): stop after the first epoch whose TEST HR@K reaches this value
    /// and print the wall time to get there, data loading included. The test data then decides
    /// when to stop, so the printed metrics are not a held-out estimate: use it to time runs,
    /// not to report accuracy.
    #[arg(long, value_name = "HR", help_heading = TRAINING)]
    #[serde(alias = "stop-at-hr")]
    pub stop_at_hr: Option<f64>,
    /// Cut-off K of HR@K and NDCG@K.
    #[arg(long, conflicts_with = "resume", default_value_t = 10, help_heading = TRAINING)]
    pub k: usize,
    /// Row-sparse Adam/SGD on embedding tables (only the rows a batch touches). Not a flag;
    /// settable in the TOML file.
    #[arg(skip = true)]
    #[serde(alias = "lazy-embeddings")]
    pub lazy_embeddings: bool,
    /// Rows scored per forward call during evaluation. Not a flag; settable in the TOML file.
    #[arg(skip = DEFAULT_EVAL_ROWS)]
    #[serde(alias = "eval-rows")]
    pub eval_rows: usize,

    /// Worker threads (default: all cores).
    #[arg(long, help_heading = HARDWARE)]
    pub threads: Option<usize>,
    /// cuda checks for the driver, NVRTC, cuBLAS and a GPU and names what is missing; the CUDA
    /// path is written but not yet verified on a GPU.
    #[arg(long, value_enum, default_value_t = Device::Cpu, help_heading = HARDWARE)]
    pub device: Device,
    /// GEMM used by the dense layers: naive, scratch (the hand-written kernel; the tiled
    /// kernel on a GPU), library (matrixmultiply; cuBLAS on a GPU) or auto (on the CPU the
    /// scratch kernel forward and matrixmultiply backward, the fastest measured; on a GPU
    /// cuBLAS). The GPU's fused step has no GEMM: this sets the reference step's products.
    #[arg(long, value_enum, default_value_t = Gemm::Auto, help_heading = HARDWARE)]
    pub gemm: Gemm,
    /// Where each epoch's negatives are sampled: host (the CPU threads), device (where the model
    /// trains, from tables uploaded once: no copy per batch), or auto (host on the CPU, device
    /// on a GPU).
    #[arg(long, value_enum, default_value_t = SamplerChoice::Auto, help_heading = HARDWARE)]
    pub sampler: SamplerChoice,
    /// How each training step runs: fast (the backend's fastest training step) or reference
    /// (the plain op-by-op path, one backend op after another: the yardstick fast is checked
    /// against).
    #[arg(long, value_enum, default_value_t = Step::Fast, help_heading = HARDWARE)]
    pub step: Step,
    /// With the device sampler: record one training step as a graph (CUDA) and replay it for
    /// every full batch of the epoch. `--no-graph` (TOML: `graph = false`) issues every op of
    /// every step from the host instead.
    #[arg(long = "no-graph", action = clap::ArgAction::SetFalse, help_heading = HARDWARE)]
    pub graph: bool,

    /// The rating model: write the train/validation/test split into this folder as
    /// `train.tsv`, `valid.tsv`, `test.tsv` (raw user id, raw item id, rating; tab-separated),
    /// so another library can be run on exactly the same split (`benches/ratings_peer.py`).
    #[arg(long, value_name = "DIR", help_heading = OUTPUT)]
    #[serde(alias = "write-split")]
    pub write_split: Option<PathBuf>,
    /// Write one JSON object per epoch to this file.
    #[arg(long, help_heading = OUTPUT)]
    #[serde(alias = "metrics-jsonl")]
    pub metrics_jsonl: Option<PathBuf>,
    /// Write the training curves (loss, HR@K, NDCG@K by epoch) as an SVG plot to this file.
    #[arg(long, help_heading = OUTPUT)]
    pub plot: Option<PathBuf>,
    /// Write the run's summary as JSON to this file.
    #[arg(long, help_heading = OUTPUT)]
    #[serde(alias = "summary-json")]
    pub summary_json: Option<PathBuf>,
    /// Checkpoint file (safetensors), rewritten atomically after every epoch: the
    /// validation-selected weights (what `ncf eval` reads), the config, id maps and metrics,
    /// and the state `--resume` continues from.
    #[arg(long, help_heading = OUTPUT)]
    pub save: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (same data, model and settings; --epochs sets
    /// the new total). The checkpoint keeps being updated unless --save names another file.
    #[arg(long, value_name = "CKPT", help_heading = OUTPUT)]
    pub resume: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long, help_heading = OUTPUT)]
    pub force: bool,

    /// NeuMF only: the loaded --pretrain-gmf and --pretrain-mlp checkpoints.
    #[arg(skip)]
    #[serde(skip)]
    pub pretrained: Option<(Checkpoint, Checkpoint)>,
    /// Draw a progress bar per epoch on stderr (hidden when stderr is not a terminal).
    #[arg(skip)]
    #[serde(skip)]
    pub progress: bool,
}

/// Rows scored per forward call during evaluation on the CPU (cache-sized).
pub const DEFAULT_EVAL_ROWS: usize = 25_600;

impl Default for TrainConfig {
    /// The flags' defaults: an empty command line, parsed.
    fn default() -> Self {
        let m = command().try_get_matches_from(["train"]).expect("no flag is required");
        TrainConfig::from_arg_matches(&m).expect("the defaults parse")
    }
}

/// `TrainConfig`'s flags as a command of their own.
fn command() -> clap::Command {
    TrainConfig::augment_args(clap::Command::new("train"))
}

type Layer = serde_json::Map<String, serde_json::Value>;

fn to_layer(cfg: &TrainConfig) -> Layer {
    match serde_json::to_value(cfg) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => unreachable!("a struct serializes to an object"),
    }
}

impl TrainConfig {
    /// The keys (field names) of the flags `matches` got from the command line itself, not
    /// from defaults. `matches` are those of a command that `TrainConfig` was flattened into.
    pub fn explicit_keys(matches: &ArgMatches) -> Vec<String> {
        command()
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| matches.try_contains_id(id).is_ok())
            .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
            .map(String::from)
            .collect()
    }

    /// Reads a TOML file straight into the struct (missing keys take their defaults), and the
    /// keys it sets. An unknown key is an error naming the file and the key; a bad value names
    /// the file, the line and the field.
    pub fn from_toml_file(path: &Path) -> Result<(TrainConfig, Vec<String>)> {
        let file = path.display();
        let size = std::fs::metadata(path).map_err(|e| TrainError::File(format!("reading {file}: {e}")))?.len();
        if size > Self::MAX_TOML_BYTES {
            return Err(TrainError::File(format!(
                "{file}: {size} bytes exceeds the limit of {} bytes for a config file (MAX_TOML_BYTES)",
                Self::MAX_TOML_BYTES
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::File(format!("reading {file}: {e}")))?;
        Self::from_toml_str(&text, path)
    }

    /// The largest config file read: 1 MiB (a full config is about 1 KB).
    pub const MAX_TOML_BYTES: u64 = 1 << 20;

    /// [`Self::from_toml_file`] on text already read; `path` names it in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<(TrainConfig, Vec<String>)> {
        let file = path.display();
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message();
            if let Some(key) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
                let at = line.map_or(String::new(), |l| format!(" (line {l})"));
                return TrainError::File(format!(
                    "{file}: unknown key `{key}`{at}; the keys are `ncf train`'s flag names, see `ncf train --help`"
                ));
            }
            let key = line.and_then(|l| text.lines().nth(l - 1)).and_then(|t| t.split_once('=')).map(|(k, _)| k.trim());
            match (line, key) {
                (Some(l), Some(k)) => TrainError::File(format!("{file}:{l}: field `{k}`: {msg}")),
                (Some(l), None) => TrainError::File(format!("{file}:{l}: {msg}")),
                _ => TrainError::File(format!("{file}: {msg}")),
            }
        })?;
        let table: toml::Table = text.parse().map_err(|e| TrainError::File(format!("{file}: {e}")))?;
        Ok((cfg, table.keys().map(|k| k.replace('-', "_")).collect()))
    }

    /// The settings of a checkpoint's run that a resumed run takes over: all but the
    /// per-invocation ones (flags under the [`HARDWARE`] and [`OUTPUT`] headings).
    fn resumed_layer(ckpt: &Checkpoint, path: &Path) -> Result<Layer> {
        let mut saved = to_layer(&ckpt.train_config(path)?);
        for a in command().get_arguments() {
            if matches!(a.get_help_heading(), Some(HARDWARE | OUTPUT)) {
                saved.remove(a.get_id().as_str());
            }
        }
        Ok(saved)
    }

    /// A run's settings from its layers, lowest first: the defaults; with `resume`, the
    /// checkpoint's settings (`Self::resumed_layer`); `file`'s keys (a config read with
    /// [`Self::from_toml_file`] and the keys it sets); the `cli` fields named in `explicit`
    /// ([`Self::explicit_keys`]). With `resume`, a file key that `--resume` excludes is an
    /// error, as the flag would be.
    pub fn layered(
        cli: &TrainConfig,
        explicit: &[String],
        file: Option<(&Path, &TrainConfig, &[String])>,
        resume: Option<(&Checkpoint, &Path)>,
    ) -> Result<TrainConfig> {
        let mut out = to_layer(&TrainConfig::default());
        if let Some((ckpt, path)) = resume {
            out.extend(Self::resumed_layer(ckpt, path)?);
        }
        // A preset (from the command line, else the file) goes right over the defaults.
        let preset = if explicit.iter().any(|k| k == "preset") {
            cli.preset
        } else {
            file.and_then(|(_, cfg, keys)| keys.iter().any(|k| k == "preset").then_some(cfg.preset).flatten())
        };
        if let Some(p) = preset {
            for (k, v) in p.settings() {
                out.insert(k.to_string(), v);
            }
        }
        if let Some((path, cfg, keys)) = file {
            if resume.is_some() {
                let cmd = command();
                for a in cmd.get_arguments().filter(|a| keys.iter().any(|k| k == a.get_id().as_str())) {
                    if cmd.get_arg_conflicts_with(a).iter().any(|c| c.get_id() == "resume") {
                        return Err(TrainError::File(format!(
                            "{}: key `{}` cannot be used with --resume (the checkpoint sets it)",
                            path.display(),
                            a.get_id()
                        )));
                    }
                }
            }
            overlay(&mut out, &to_layer(cfg), keys);
        }
        overlay(&mut out, &to_layer(cli), explicit);
        let mut cfg: TrainConfig = serde_json::from_value(serde_json::Value::Object(out))
            .map_err(|e| TrainError::File(format!("combining the settings: {e}")))?;
        cfg.pretrained = cli.pretrained.clone();
        cfg.progress = cli.progress;
        Ok(cfg)
    }
}

/// Replaces `keys` of `base` with their values in `top`.
fn overlay(base: &mut Layer, top: &Layer, keys: &[String]) {
    for k in keys {
        if let Some(v) = top.get(k) {
            base.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--preset fast` sets its keys over the defaults; flags given on the command line win.
    #[test]
    fn a_preset_sits_between_the_defaults_and_the_flags() {
        let parse = |args: &[&str]| {
            let m = command().try_get_matches_from(std::iter::once("train").chain(args.iter().copied())).unwrap();
            let cli = TrainConfig::from_arg_matches(&m).unwrap();
            TrainConfig::layered(&cli, &TrainConfig::explicit_keys(&m), None, None).unwrap()
        };
        let c = parse(&["--preset", "fast"]);
        assert_eq!((c.model, c.optimizer, c.factors, c.epochs), (Model::Mf, OptimChoice::Als, 24, 4));
        assert_eq!((c.als_alpha, c.als_reg, c.als_cg_steps), (10.0, 1.0, 3));
        let c = parse(&["--preset", "fast", "--factors", "64", "--epochs", "5"]);
        assert_eq!((c.model, c.optimizer, c.factors, c.epochs), (Model::Mf, OptimChoice::Als, 64, 5));
        let c = parse(&["--preset", "fast-gmf"]);
        assert_eq!((c.model, c.factors, c.batch, c.lr, c.epochs), (Model::Gmf, 32, 4096, 0.008, 3));
        let c = parse(&["--preset", "fast-gmf", "--factors", "64", "--epochs", "5"]);
        assert_eq!((c.model, c.factors, c.batch, c.epochs), (Model::Gmf, 64, 4096, 5));
        let c = parse(&[]);
        assert_eq!((c.model, c.factors, c.batch), (Model::NeuMf, 8, 256));
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        let d = TrainConfig::default();
        assert_eq!(
            (d.model, d.factors, d.layers.as_slice(), d.neg, d.batch),
            (Model::NeuMf, 8, &[64, 32, 16, 8][..], 4, 256)
        );
        assert_eq!(
            (d.lr, d.optimizer, d.epochs, d.k, d.eval_rows),
            (0.001, OptimChoice::Adam, 20, 10, DEFAULT_EVAL_ROWS)
        );
        assert!(d.graph && d.lazy_embeddings && !d.force);
        assert_eq!((d.device, d.gemm, d.sampler, d.step), (Device::Cpu, Gemm::Auto, SamplerChoice::Auto, Step::Fast));
        // A missing key takes the same default.
        let empty: TrainConfig = toml::from_str("").unwrap();
        assert_eq!(serde_json::to_value(&empty).unwrap(), serde_json::to_value(&d).unwrap());
    }

    #[test]
    fn command_line_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "model = \"gmf\"\nlr = 0.01\npretrain-gmf = \"g.st\"\ngraph = false\nstep = \"reference\"\n",
        )
        .unwrap();
        let (file, keys) = TrainConfig::from_toml_file(&path).unwrap();
        let m = command().try_get_matches_from(["train", "--lr", "0.5", "--factors", "16"]).unwrap();
        let cli = TrainConfig::from_arg_matches(&m).unwrap();
        let explicit = TrainConfig::explicit_keys(&m);
        assert_eq!(explicit, ["factors", "lr"]);
        let cfg = TrainConfig::layered(&cli, &explicit, Some((&path, &file, &keys)), None).unwrap();
        assert_eq!((cfg.model, cfg.lr, cfg.factors, cfg.batch), (Model::Gmf, 0.5, 16, 256));
        assert_eq!((cfg.pretrain_gmf, cfg.graph, cfg.step), (Some(PathBuf::from("g.st")), false, Step::Reference));
    }

    #[test]
    fn file_errors_name_the_file_the_line_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let err = |text: &str| {
            std::fs::write(&path, text).unwrap();
            TrainConfig::from_toml_file(&path).unwrap_err().to_string()
        };
        let e = err("lr = 0.1\nlearning_rate = 3\n");
        assert!(e.contains("bad.toml: unknown key `learning_rate` (line 2)"), "{e}");
        let e = err("epochs = 2\n\nlr = \"fast\"\n");
        assert!(e.contains("bad.toml:3: field `lr`: invalid type: string \"fast\""), "{e}");
        let e = err("model = \"resnet\"\n");
        assert!(e.contains("bad.toml:1: field `model`: unknown variant `resnet`"), "{e}");
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    fn sched(kind: LrSchedule) -> LrScheduler {
        let cfg = TrainConfig {
            lr_schedule: kind,
            lr_step: 3,
            lr_gamma: 0.5,
            lr_plateau: 2,
            lr_min: 0.1,
            epochs: 5,
            ..TrainConfig::default()
        };
        LrScheduler::new(&cfg, 1.0)
    }

    #[test]
    fn each_schedule_gives_its_rates() {
        let rates = |s: &LrScheduler| (1..=7).map(|e| s.lr(e)).collect::<Vec<_>>();
        assert_eq!(rates(&sched(LrSchedule::Constant)), [1.0; 7]);
        assert_eq!(rates(&sched(LrSchedule::Step)), [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
        let c = sched(LrSchedule::Cosine);
        assert_eq!((c.lr(1), c.lr(5)), (1.0, 0.1));
        assert!((c.lr(3) - 0.55).abs() < 1e-12, "{}", c.lr(3)); // halfway: (1 + 0.1) / 2
        // Plateau: better, better, worse, worse (cut), worse, worse (cut), better.
        let mut p = sched(LrSchedule::Plateau);
        let mut seen = Vec::new();
        for (e, score) in [0.9, 0.8, 0.85, 0.8, 0.81, 0.82, 0.5].into_iter().enumerate() {
            seen.push(p.lr(e + 1));
            p.observe(score);
        }
        assert_eq!(seen, [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25]);
        assert_eq!(p.lr(8), 0.25);
    }
}
