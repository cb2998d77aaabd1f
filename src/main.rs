//! `ncf`: the command-line front end of ncf-rs.
//!
//! Commands: `train`, `eval`, `data synth`, `data split` and `gradcheck`.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ncf_core::Backend;
use ncf_cpu::{CpuBackend, GemmImpl};
use ncf_model::gradcheck::{self, Options, Report};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod data_cmd;

#[derive(Parser)]
#[command(
    name = "ncf",
    version,
    about = "Neural Collaborative Filtering from scratch: hand-written kernels and backprop"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check every op's and every model's backward pass against finite differences (in f64),
    /// and one step of each optimizer against hand-computed values. Exits 1 on any failure.
    Gradcheck(GradcheckArgs),
    /// Train GMF, MLP, NeuMF or MF (default: NeuMF on the embedded sample), reporting HR@K /
    /// NDCG@K on a validation holdout and on the test set after every epoch.
    Train(Box<TrainArgs>),
    /// Re-evaluate a saved checkpoint on its data's test set (sampled or full ranking).
    Eval(EvalArgs),
    /// Make datasets: generate synthetic MovieLens data, or split ratings into the NCF format.
    #[command(subcommand)]
    Data(data_cmd::DataCmd),
}

#[derive(clap::Args)]
#[command(args_override_self = true)]
struct TrainArgs {
    /// Read flags from a TOML file (`lr = 0.001`, `layers = [64, 32, 16, 8]`, …); flags given
    /// on the command line override it.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// An NCF split folder, a MovieLens folder (ratings.dat, u.data or ratings.csv) or one
    /// ratings file; default: the sample embedded in the binary.
    #[arg(long)]
    data: Option<PathBuf>,
    /// MovieLens sources: only ratings >= this count as positives (default: every rating).
    #[arg(long, conflicts_with = "resume")]
    min_rating: Option<f32>,
    /// MovieLens sources: seed of the leave-latest-out test negatives (independent of --seed,
    /// so every model is tested on the same cases).
    #[arg(long, conflicts_with = "resume", default_value_t = 42)]
    split_seed: u64,
    /// gmf, mlp, neumf or mf.
    #[arg(long, conflicts_with = "resume", default_value = "neumf")]
    model: String,
    /// GMF / MF embedding width (predictive factors).
    #[arg(long, conflicts_with = "resume", default_value_t = 8)]
    factors: usize,
    /// MLP widths; the first is the concatenated embedding width.
    #[arg(long, conflicts_with = "resume", default_value = "64,32,16,8", value_delimiter = ',')]
    layers: Vec<usize>,
    /// Sampled negatives per positive, per epoch.
    #[arg(long, conflicts_with = "resume", default_value_t = 4)]
    neg: usize,
    #[arg(long, conflicts_with = "resume", default_value_t = 256)]
    batch: usize,
    #[arg(long, conflicts_with = "resume", default_value_t = 0.001)]
    lr: f64,
    /// adam or sgd.
    #[arg(long, conflicts_with = "resume", default_value = "adam")]
    optimizer: String,
    /// SGD momentum (0: vanilla SGD, as the paper uses for pretrained NeuMF).
    #[arg(long, conflicts_with = "resume", default_value_t = 0.9)]
    momentum: f64,
    /// L2 penalty on embeddings and weights.
    #[arg(long, conflicts_with = "resume", default_value_t = 0.0)]
    l2: f64,
    /// Epochs to train (default 20); with --resume, the total to reach.
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, conflicts_with = "resume", default_value_t = 42)]
    seed: u64,
    /// Stop after this many epochs without a better validation HR (default 0: never).
    #[arg(long)]
    patience: Option<usize>,
    /// Cut-off K of HR@K and NDCG@K.
    #[arg(long, conflicts_with = "resume", default_value_t = 10)]
    k: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// GEMM used by the dense layers: naive, scratch (the hand-written kernel; the tiled
    /// kernel on a GPU), library (matrixmultiply; cuBLAS on a GPU) or auto (on the CPU the
    /// scratch kernel forward and matrixmultiply backward, the fastest measured; on a GPU the
    /// tiled kernel).
    #[arg(long, default_value = "auto", value_parser = parse_gemm)]
    gemm: GemmImpl,
    /// cpu or cuda. cuda checks for the driver, NVRTC, cuBLAS and a GPU and names what is
    /// missing; the CUDA path is written but not yet verified on a GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where each epoch's negatives are sampled: host (the CPU threads), device (where the model
    /// trains, from tables uploaded once: no copy per batch), or auto (host on the CPU, device
    /// on a GPU).
    #[arg(long, default_value = "auto")]
    sampler: String,
    /// With the device sampler on a GPU: issue every op of every step from the host instead of
    /// replaying one recorded step (a CUDA graph).
    #[arg(long)]
    no_graph: bool,
    /// Write one JSON object per epoch to this file.
    #[arg(long)]
    metrics_jsonl: Option<PathBuf>,
    /// Write the training curves (loss, HR@K, NDCG@K by epoch) as an SVG plot to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the run's summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Checkpoint file (safetensors), rewritten atomically after every epoch: the
    /// validation-selected weights (what `ncf eval` reads), the config, id maps and metrics,
    /// and the state `--resume` continues from.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (same data, model and settings; --epochs sets
    /// the new total). The checkpoint keeps being updated unless --save names another file.
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// NeuMF: start from this trained GMF checkpoint (needs --pretrain-mlp too).
    #[arg(long, conflicts_with = "resume", requires = "pretrain_mlp")]
    pretrain_gmf: Option<PathBuf>,
    /// NeuMF: start from this trained MLP checkpoint (needs --pretrain-gmf too).
    #[arg(long, conflicts_with = "resume", requires = "pretrain_gmf")]
    pretrain_mlp: Option<PathBuf>,
    /// Weight of GMF in the pretrained NeuMF's output layer.
    #[arg(long, conflicts_with = "resume", default_value_t = 0.5)]
    alpha: f64,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
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
    #[arg(long, default_value = "cpu")]
    device: String,
    /// GEMM of the dense layers: naive, scratch (the tiled kernel on a GPU) or library
    /// (matrixmultiply on the CPU, cuBLAS on a GPU).
    #[arg(long, default_value = "scratch", value_parser = parse_gemm)]
    gemm: GemmImpl,
}

#[derive(clap::Args)]
struct GradcheckArgs {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed for the random problems and initial weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Finite-difference step h (5-point central stencil).
    #[arg(long, default_value_t = 1e-3)]
    step: f64,
    /// Maximum relative error allowed per element.
    #[arg(long, default_value_t = ncf_core::Tol::GRADCHECK_F64.rel)]
    rel_tol: f64,
    /// GEMM used by the dense layers: naive, scratch, library (matrixmultiply) or auto.
    #[arg(long, default_value = "scratch", value_parser = parse_gemm)]
    gemm: GemmImpl,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Testing aid: scale the analytic gradient of MODEL/TENSOR (e.g. `neumf/mlp_0_weight`) by
    /// 1.001 before comparing, to show that the check fails.
    #[arg(long, hide = true, value_name = "MODEL/TENSOR")]
    inject_fault: Option<String>,
}

fn parse_gemm(s: &str) -> Result<GemmImpl, String> {
    s.parse::<GemmImpl>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = match expand_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; `Ok(false)` means it ran and found a failure.
fn run(cli: Cli) -> Result<bool> {
    match cli.cmd {
        Cmd::Gradcheck(args) => gradcheck_cmd(args),
        Cmd::Train(args) => train_cmd(*args),
        Cmd::Eval(args) => eval_cmd(args),
        Cmd::Data(cmd) => data_cmd::run(cmd),
    }
}

/// `ncf train --config FILE.toml …`: every `key = value` of the file becomes `--key value`,
/// placed before the command line's own flags, so a flag given on the command line wins.
/// Keys are the flag names (`lr`, `layers`, `pretrain-gmf` or `pretrain_gmf`, …); an unknown key
/// is an error naming the file and the key.
fn expand_config(args: Vec<String>) -> Result<Vec<String>> {
    let Some(pos) = args.iter().position(|a| a == "--config" || a.starts_with("--config=")) else {
        return Ok(args);
    };
    let (path, drop) = match args[pos].strip_prefix("--config=") {
        Some(p) => (p.to_string(), 1),
        None => (args.get(pos + 1).cloned().context("--config needs a file")?, 2),
    };
    let sub = args.iter().position(|a| a == "train").context("--config applies to `ncf train`")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let train = cmd.find_subcommand("train").context("no train subcommand")?;
    let mut injected = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let known = train.get_arguments().any(|a| a.get_long() == Some(flag.as_str()));
        if !known || flag == "config" {
            bail!("{path}: unknown key `{key}` (keys are `ncf train` flag names, see `ncf train --help`)");
        }
        let text = match value {
            toml::Value::Boolean(true) => {
                injected.push(format!("--{flag}"));
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(items) => {
                items.iter().map(|v| v.to_string().trim_matches('"').to_string()).collect::<Vec<_>>().join(",")
            }
            other => bail!("{path}: key `{key}`: unsupported value {other}"),
        };
        injected.push(format!("--{flag}"));
        injected.push(text);
    }
    let mut out: Vec<String> = Vec::with_capacity(args.len() + injected.len());
    for (k, a) in args.into_iter().enumerate() {
        if k >= pos && k < pos + drop {
            continue;
        }
        out.push(a);
        if k == sub {
            out.append(&mut injected);
        }
    }
    Ok(out)
}

/// Writes `contents` to `path` atomically (a temporary file, then a rename), refusing to
/// replace an existing file unless `force`.
fn write_atomic(path: &Path, contents: &[u8], force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn train_cmd(a: TrainArgs) -> Result<bool> {
    check_device(&a.device)?;
    let resume = match &a.resume {
        Some(p) => Some((ncf_train::Checkpoint::load(p)?, p.clone())),
        None => None,
    };
    let save = a.save.clone().or_else(|| a.resume.clone());
    for p in [&a.metrics_jsonl, &a.summary_json, &save, &a.plot].into_iter().flatten() {
        if p.exists() && !a.force && Some(p) != a.resume.as_ref() {
            bail!("{} exists; pass --force to overwrite it", p.display());
        }
    }
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = a.threads {
        builder = builder.num_threads(t);
    }
    let pool = builder.build().context("building the thread pool")?;
    let mut cfg = match &resume {
        Some((ckpt, path)) => {
            let mut c = ckpt.train_config(path)?;
            if let Some(d) = &a.data {
                c.data = Some(d.display().to_string());
            }
            c
        }
        None => {
            let optimizer = match a.optimizer.as_str() {
                "adam" => ncf_train::OptimChoice::Adam,
                "sgd" => ncf_train::OptimChoice::Sgd,
                other => bail!("--optimizer {other}: expected adam or sgd"),
            };
            let pretrained = match (&a.pretrain_gmf, &a.pretrain_mlp) {
                (Some(g), Some(m)) => Some((ncf_train::Checkpoint::load(g)?, ncf_train::Checkpoint::load(m)?)),
                _ => None,
            };
            ncf_train::TrainConfig {
                pretrained,
                alpha: a.alpha,
                model: a.model.clone(),
                factors: a.factors,
                layers: a.layers.clone(),
                neg: a.neg,
                batch: a.batch,
                lr: a.lr,
                optimizer,
                l2: a.l2,
                momentum: a.momentum,
                seed: a.seed,
                k: a.k,
                data: a.data.as_ref().map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()).display().to_string()),
                min_rating: a.min_rating,
                split_seed: a.split_seed,
                ..Default::default()
            }
        }
    };
    cfg.gemm = a.gemm;
    cfg.device = a.device.clone();
    cfg.sampler = a.sampler.parse()?;
    cfg.graph = !a.no_graph;
    cfg.progress = true;
    cfg.save = save.clone();
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(p) = a.patience {
        cfg.patience = p;
    }
    let t = std::time::Instant::now();
    let opts = source_options(cfg.min_rating, cfg.split_seed);
    let data_path = cfg.data.as_ref().map(PathBuf::from);
    let loaded = pool.install(|| ncf_train::source::load(data_path.as_deref(), &opts))?;
    let split = &loaded.split;
    let data = pool.install(|| ncf_train::Prepared::from_split(split, cfg.seed));
    eprintln!("{}", loaded.description);
    eprintln!(
        "{} users, {} items, {} training interactions; {} validation and {} test users; loaded in {:.2} s",
        split.n_users,
        split.n_items,
        split.train.len(),
        data.valid.len(),
        data.test.len(),
        t.elapsed().as_secs_f64()
    );
    if let Some((ckpt, path)) = &resume {
        let (users, items) = ckpt.id_maps(path)?;
        for (what, saved, here) in [("user", users, &split.user_ids), ("item", items, &split.item_ids)] {
            if saved.as_ref() != here.as_ref() {
                bail!("{} was trained with a different {what} id map than this data has", path.display());
            }
        }
        let done = ckpt.metadata.get("epochs").and_then(|e| serde_json::from_str::<Vec<serde_json::Value>>(e).ok());
        eprintln!("resuming {} after epoch {} of {}", path.display(), done.map_or(0, |d| d.len()), cfg.epochs);
    }
    let mut jsonl = String::new();
    let k = a.k;
    let outcome = pool.install(|| {
        let from = resume.as_ref().map(|(c, p)| ncf_train::ResumeFrom { checkpoint: c, path: p });
        ncf_train::train(&cfg, &data, from, |r| {
            println!(
                "epoch {:>3}  loss {:.4}  valid HR@{k} {:.4} NDCG@{k} {:.4}  test HR@{k} {:.4} NDCG@{k} {:.4}  [{:.2}s sample, {:.2}s train, {:.2}s eval; {:.0} samples/s]",
                r.epoch, r.loss, r.valid_hr, r.valid_ndcg, r.test_hr, r.test_ndcg, r.sampling_s, r.training_s, r.eval_s, r.samples_per_second
            );
            jsonl.push_str(&serde_json::to_string(r).unwrap_or_default());
            jsonl.push('\n');
        })
    })?;
    let summary = &outcome.summary;
    println!(
        "selected epoch {} (best validation HR@{k}): test HR@{k} {:.4} NDCG@{k} {:.4}; best test epoch {}: HR@{k} {:.4} NDCG@{k} {:.4}; {:.2} s/epoch",
        summary.selected_epoch,
        summary.test_hr,
        summary.test_ndcg,
        summary.best_test_epoch,
        summary.best_test_hr,
        summary.best_test_ndcg,
        summary.seconds_per_epoch.total
    );
    if let Some(p) = &a.metrics_jsonl {
        write_atomic(p, jsonl.as_bytes(), a.force)?;
    }
    if let Some(p) = &a.summary_json {
        write_atomic(p, serde_json::to_string_pretty(summary)?.as_bytes(), a.force)?;
    }
    if let Some(p) = &a.plot {
        write_atomic(p, ncf_train::plot::training_curves_svg(&outcome.epochs, a.k).as_bytes(), a.force)?;
    }
    if let Some(p) = &save {
        eprintln!("{} holds epoch {} (selected) and the state to resume from", p.display(), summary.selected_epoch);
    }
    Ok(true)
}

/// `--device`: `cpu`, or `cuda` after probing the driver, NVRTC, cuBLAS and a device (a clean
/// error naming what is missing, never a panic).
fn check_device(device: &str) -> Result<()> {
    match device {
        "cpu" => Ok(()),
        "cuda" => {
            let gpu = ncf_cuda::device::probe(0).context("--device cuda")?;
            eprintln!(
                "device: {} (compute capability {}.{})",
                gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
            );
            Ok(())
        }
        other => bail!("--device {other}: expected cpu or cuda"),
    }
}

fn source_options(min_rating: Option<f32>, split_seed: u64) -> ncf_train::source::SourceOptions {
    ncf_train::source::SourceOptions { min_rating, split_seed, ..Default::default() }
}

fn eval_cmd(a: EvalArgs) -> Result<bool> {
    check_device(&a.device)?;
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = a.threads {
        builder = builder.num_threads(t);
    }
    let pool = builder.build().context("building the thread pool")?;
    let loaded =
        pool.install(|| ncf_train::source::load(a.data.as_deref(), &source_options(a.min_rating, a.split_seed)))?;
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
    if a.device == "cuda" {
        let be = ncf_cuda::CudaBackend::new(0, ncf_train::gpu_gemm(a.gemm)).context("--device cuda")?;
        return pool.install(|| eval_on(&be, &run, ncf_train::GPU_EVAL_ROWS));
    }
    pool.install(|| eval_on(&CpuBackend::<f32>::new(a.gemm), &run, ncf_train::TrainConfig::default().eval_rows))
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

fn gradcheck_cmd(args: GradcheckArgs) -> Result<bool> {
    if !(args.step > 0.0 && args.step.is_finite()) {
        bail!("--step must be a positive number, got {}", args.step);
    }
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        builder = builder.num_threads(t);
    }
    let pool = builder.build().context("building the thread pool")?;
    let opts = Options {
        h: args.step,
        tol: ncf_core::Tol { rel: args.rel_tol, ..ncf_core::Tol::GRADCHECK_F64 },
        seed: args.seed,
    };
    let be = CpuBackend::<f64>::new(args.gemm);
    let fault = |model: &str, tensor: &str, g: &mut [f64]| {
        if args.inject_fault.as_deref() == Some(&format!("{model}/{tensor}")) {
            g.iter_mut().for_each(|x| *x *= 1.001);
        }
    };
    let report = pool.install(|| gradcheck::run_all(&be, &opts, &fault)).context("gradient check")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &be.name());
    }
    Ok(report.ok)
}

fn print_report(r: &Report, backend: &str) {
    println!("gradient check: {backend}, dtype {}, 5-point central differences h = {:e}", r.dtype, r.h);
    println!(
        "tolerance: |analytic − numeric| ≤ {:e} or relative error ≤ {:e} (relative to max(|a|, |n|, 1e-6))\n",
        r.tol_abs, r.tol_rel
    );
    println!(
        "{:<6} {:<38} {:<22} {:>10} {:>7} {:>5} {:>10} {:>10}  status",
        "kind", "subject", "tensor", "shape", "checked", "kinks", "max_abs", "max_rel"
    );
    for s in &r.subjects {
        for t in &s.tensors {
            let shape = format!("{:?}", t.shape).replace(' ', "");
            println!(
                "{:<6} {:<38} {:<22} {:>10} {:>7} {:>5} {:>10.2e} {:>10.2e}  {}",
                s.kind,
                s.name,
                t.name,
                shape,
                t.checked,
                t.kinks,
                t.max_abs,
                t.max_rel,
                if t.ok { "ok" } else { "FAIL" }
            );
            for (i, a, n) in &t.first_bad {
                println!("         element {i}: analytic {a:.12e}  numeric {n:.12e}");
            }
        }
    }
    let tensors: usize = r.subjects.iter().map(|s| s.tensors.len()).sum();
    let failed: usize = r.subjects.iter().flat_map(|s| &s.tensors).filter(|t| !t.ok).count();
    let worst =
        r.subjects.iter().flat_map(|s| &s.tensors).filter(|t| t.checked > 0).map(|t| t.max_rel).fold(0.0f64, f64::max);
    println!(
        "\n{} subjects, {tensors} tensors, {failed} failed; worst max_rel {worst:.2e}: {}",
        r.subjects.len(),
        if r.ok { "PASS" } else { "FAIL" }
    );
}
