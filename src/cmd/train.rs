//! `ncf train`: its flags are [`ncf_train::TrainConfig`]'s, plus `--config`.

use super::{check_device, source_options, thread_pool};
use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use ncf_data::write_atomic;
use ncf_train::TrainConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(args_override_self = true)]
pub struct TrainArgs {
    /// Read settings from a TOML file whose keys are the flag names (`lr = 0.001`, `layers =
    /// [64, 32, 16, 8]`, `model = "gmf"`, `graph = false` for --no-graph, …); flags given on
    /// the command line override it.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    #[command(flatten)]
    cfg: TrainConfig,
}

/// The run's settings: the defaults, then (with `--resume`) the checkpoint's, then the
/// `--config` file's, then the flags given on the command line ([`TrainConfig::layered`]).
fn settings(a: &TrainArgs, matches: &ArgMatches) -> Result<(TrainConfig, Option<ncf_train::Checkpoint>)> {
    let explicit = TrainConfig::explicit_keys(matches);
    let file = a.config.as_ref().map(|p| TrainConfig::from_toml_file(p).map(|(c, keys)| (p, c, keys))).transpose()?;
    let file = file.as_ref().map(|(p, c, keys)| (p.as_path(), c, keys.as_slice()));
    // `--resume` may come from the file too; the checkpoint's layer goes under the file's.
    let unresumed = TrainConfig::layered(&a.cfg, &explicit, file, None)?;
    let Some(path) = unresumed.resume else {
        return Ok((unresumed, None));
    };
    let ckpt = ncf_train::Checkpoint::load(&path)?;
    let cfg = TrainConfig::layered(&a.cfg, &explicit, file, Some((&ckpt, &path)))?;
    Ok((cfg, Some(ckpt)))
}

pub fn run(a: TrainArgs, matches: &ArgMatches) -> Result<bool> {
    let (mut cfg, resume) = settings(&a, matches)?;
    if cfg.model == ncf_train::ModelChoice::Rating && cfg.device != ncf_train::Device::Cpu {
        bail!("--model rating trains on the CPU only so far (--device cpu)");
    }
    check_device(cfg.device)?;
    let save = cfg.save.clone().or_else(|| cfg.resume.clone());
    for p in [&cfg.metrics_jsonl, &cfg.summary_json, &save, &cfg.plot].into_iter().flatten() {
        if p.exists() && !cfg.force && Some(p) != cfg.resume.as_ref() {
            bail!("{} exists; pass --force to overwrite it", p.display());
        }
    }
    let pool = thread_pool(cfg.threads)?;
    if cfg.model == ncf_train::ModelChoice::Rating {
        return pool.install(|| train_ratings(cfg, resume.is_some()));
    }
    if resume.is_none() {
        cfg.data = cfg.data.map(|d| d.canonicalize().unwrap_or(d));
        cfg.pretrained = match (&cfg.pretrain_gmf, &cfg.pretrain_mlp) {
            (Some(g), Some(m)) => Some((ncf_train::Checkpoint::load(g)?, ncf_train::Checkpoint::load(m)?)),
            (None, None) => None,
            _ => bail!("--pretrain-gmf and --pretrain-mlp go together"),
        };
    }
    cfg.progress = true;
    cfg.save = save.clone();
    let t = std::time::Instant::now();
    let opts = source_options(cfg.min_rating, cfg.split_seed, cfg.test_negatives);
    let loaded = pool.install(|| ncf_train::source::load(cfg.data.as_deref(), &opts))?;
    let split = &loaded.split;
    let mut data = pool.install(|| ncf_train::Prepared::from_split(split, cfg.seed));
    eprintln!("{}", loaded.description);
    if cfg.features {
        // The metadata folder: --features-from, else the --data folder (or a ratings file's).
        let dir = match (&cfg.features_from, &cfg.data) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) if d.is_dir() => d.clone(),
            (None, Some(f)) => f.parent().map(PathBuf::from).unwrap_or_default(),
            (None, None) => bail!("--features needs --data (or --features-from): the embedded sample has no metadata"),
        };
        for line in data.with_features(&dir)? {
            eprintln!("{line}");
        }
    }
    if cfg.lr_scaling != ncf_train::LrScaling::None {
        eprintln!(
            "learning rate {:.6} (--lr {} at batch {}, {:?} scaling to batch {})",
            cfg.effective_lr(),
            cfg.lr,
            cfg.lr_base_batch,
            cfg.lr_scaling,
            cfg.batch
        );
    }
    if cfg.device == ncf_train::Device::Cpu {
        let (simd, detected) = (ncf_cpu::simd::SimdLevel::best(), ncf_cpu::simd::SimdLevel::detected());
        let forced =
            if simd == detected { String::new() } else { format!(", forced by NCF_SIMD; the CPU has {detected}") };
        eprintln!("cpu: {} threads, SIMD {simd}{forced}", rayon::current_num_threads().min(pool.current_num_threads()));
    }
    eprintln!(
        "{} users, {} items, {} training interactions; {} validation and {} test users; loaded in {:.2} s",
        split.n_users,
        split.n_items,
        split.train.len(),
        data.valid.len(),
        data.test.len(),
        t.elapsed().as_secs_f64()
    );
    let resume = resume.as_ref().zip(cfg.resume.as_ref());
    if let Some((ckpt, path)) = resume {
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
    let k = cfg.k;
    let mut reached: Option<(usize, f64, f64)> = None;
    // ALS samples nothing: its rate is training interactions per second of the sweep, and its
    // loss is the iALS objective per (user, item) cell.
    let rate = if cfg.optimizer == ncf_train::OptimChoice::Als { "interactions/s" } else { "samples/s" };
    let outcome = pool.install(|| {
        let from = resume.map(|(c, p)| ncf_train::ResumeFrom { checkpoint: c, path: p });
        ncf_train::train(&cfg, &data, from, |r| {
            println!(
                "epoch {:>3}  loss {:.4}  valid HR@{k} {:.4} NDCG@{k} {:.4}  test HR@{k} {:.4} NDCG@{k} {:.4}  [{:.2}s sample, {:.2}s train, {:.2}s eval; {:.0} {rate}]",
                r.epoch, r.loss, r.valid_hr, r.valid_ndcg, r.test_hr, r.test_ndcg, r.sampling_s, r.training_s, r.eval_s, r.samples_per_second
            );
            if !r.step_phases.is_empty() {
                // Wall seconds, then each half's busy seconds where the phase splits.
                let phases: Vec<String> = r
                    .step_phases
                    .iter()
                    .map(|p| match p.busy_s {
                        [a, b] if b > 0.0 => format!("{} {:.3} s (halves busy {a:.3} + {b:.3} s)", p.name, p.wall_s),
                        _ => format!("{} {:.3} s", p.name, p.wall_s),
                    })
                    .collect();
                // The CPU step's pace: steps it ran on one thread, and the cores' round trip.
                let pace = match r.step_phases.first() {
                    Some(p) if p.solo_steps > 0 || p.round_trip_ns.is_some() => format!(
                        "; {} steps on one thread, core round trip {}",
                        p.solo_steps,
                        p.round_trip_ns.filter(|ns| ns.is_finite()).map_or("not answered".into(), |ns| format!("{ns:.0} ns"))
                    ),
                    _ => String::new(),
                };
                println!("           step phases ({}=1): {}{pace}", ncf_cpu::step::STEP_TIMES_ENV, phases.join(", "));
            }
            jsonl.push_str(&serde_json::to_string(r).unwrap_or_default());
            jsonl.push('\n');
            if reached.is_none() && cfg.stop_at_hr.is_some_and(|x| r.test_hr >= x) {
                reached = Some((r.epoch, r.test_hr, t.elapsed().as_secs_f64()));
            }
        })
    })?;
    if let Some(x) = cfg.stop_at_hr {
        match reached {
            Some((epoch, hr, s)) => println!(
                "time to test HR@{k} >= {x}: {s:.2} s (wall, data loading included), reached at epoch {epoch} with {hr:.4}"
            ),
            None => {
                let n = outcome.epochs.len();
                println!("test HR@{k} did not reach {x} in {n} epoch{}", if n == 1 { "" } else { "s" })
            }
        }
    }
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
    println!(
        "  test users with fewer than {} training interactions: {} users, HR@{k} {:.4} NDCG@{k} {:.4}",
        ncf_train::LOW_ACTIVITY,
        summary.low_users,
        summary.low_test_hr,
        summary.low_test_ndcg
    );
    if let Some(p) = &cfg.metrics_jsonl {
        write_atomic(p, jsonl.as_bytes(), cfg.force)?;
    }
    if let Some(p) = &cfg.summary_json {
        write_atomic(p, serde_json::to_string_pretty(summary)?.as_bytes(), cfg.force)?;
    }
    if let Some(p) = &cfg.plot {
        write_atomic(p, ncf_train::plot::training_curves_svg(&outcome.epochs, k).as_bytes(), cfg.force)?;
    }
    if let Some(p) = &save {
        eprintln!("{} holds epoch {} (selected) and the state to resume from", p.display(), summary.selected_epoch);
    }
    Ok(true)
}

/// `ncf train --model rating`: the rating model on a MovieLens ratings file (`--data` a folder
/// with `u.data`, `ratings.dat` or `ratings.csv`), a seeded 80/10/10 random split
/// (`--split-seed`), RMSE/MAE per epoch; `--summary-json` gets `test_rmse` and `test_mae` of
/// the validation-selected epoch.
fn train_ratings(mut cfg: TrainConfig, resume: bool) -> Result<bool> {
    if resume || cfg.save.is_some() {
        bail!("--model rating does not yet support --resume or --save");
    }
    let Some(dir) = cfg.data.clone() else {
        bail!("--model rating needs --data: a folder with u.data, ratings.dat or ratings.csv");
    };
    if cfg.layers == TrainConfig::default().layers {
        cfg.layers = ncf_train::ratings::DEFAULT_RATING_LAYERS.to_vec();
    }
    let t = std::time::Instant::now();
    let files = ncf_data::MovieLensFiles::find(&dir)?;
    // ml-latest's half stars go down to 0.5; the older sets rate 1 to 5.
    let csv = files.ratings.extension().is_some_and(|e| e == "csv");
    let range = if csv { (0.5, 5.0) } else { (1.0, 5.0) };
    let raw = ncf_data::load_ratings_in_range(&files.ratings, range)?;
    let data = ncf_data::Explicit::from_raw(&raw, range, &files.ratings)?;
    let split = ncf_data::split_ratings(&data.ratings, 0.1, 0.1, cfg.rating_split.into(), cfg.split_seed);
    eprintln!(
        "{}: {} users, {} items, {} ratings in {}..={}; {:?} split 80/10/10 (seed {}): {} train, {} validation, {} test; loaded in {:.2} s",
        files.ratings.display(),
        data.n_users(),
        data.n_items(),
        data.ratings.len(),
        range.0,
        range.1,
        cfg.rating_split,
        cfg.split_seed,
        split.train.len(),
        split.valid.len(),
        split.test.len(),
        t.elapsed().as_secs_f64()
    );
    if let Some(dir) = &cfg.write_split {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, rows) in [("train.tsv", &split.train), ("valid.tsv", &split.valid), ("test.tsv", &split.test)] {
            let mut tsv = String::with_capacity(rows.len() * 16);
            for r in rows.iter() {
                let (u, i) = (data.users.raw(r.user), data.items.raw(r.item));
                let (Some(u), Some(i)) = (u, i) else { bail!("a dense id without a raw id (a bug)") };
                tsv.push_str(&format!("{u}\t{i}\t{}\n", r.rating));
            }
            write_atomic(&dir.join(name), tsv.as_bytes(), cfg.force)?;
        }
        eprintln!("wrote the split to {}/{{train,valid,test}}.tsv", dir.display());
    }
    eprintln!(
        "rating model, layers {:?}{}{}, batch {}, lr {} ({:?} schedule), l2 {}, weight decay {}",
        cfg.layers,
        if cfg.batch_norm { ", batch norm" } else { "" },
        if cfg.dropout > 0.0 { format!(", dropout {}", cfg.dropout) } else { String::new() },
        cfg.batch,
        cfg.lr,
        cfg.lr_schedule,
        cfg.l2,
        cfg.weight_decay
    );
    let mut jsonl = String::new();
    let (users, items) = if cfg.features {
        let meta_dir = cfg.features_from.as_deref().unwrap_or(&dir);
        let (users, items, lines) = ncf_train::load_side_features(meta_dir, &data.users, Some(&data.items))?;
        lines.iter().for_each(|l| eprintln!("{l}"));
        (users, items)
    } else {
        (None, None)
    };
    let side = ncf_train::ratings::Side { users: users.as_ref(), items: items.as_ref() };
    let dims = (data.n_users(), data.n_items());
    let out = ncf_train::ratings::train_ratings(&cfg, &split, dims, side, range, |r| {
        println!(
            "epoch {:>3}  lr {:.2e}  train MSE {:.4}  valid RMSE {:.4} MAE {:.4}  test RMSE {:.4} MAE {:.4}  [{:.2}s]",
            r.epoch, r.lr, r.loss, r.valid_rmse, r.valid_mae, r.test_rmse, r.test_mae, r.seconds
        );
        jsonl.push_str(&serde_json::to_string(r).unwrap_or_default());
        jsonl.push('\n');
    })?;
    let s = &out.summary;
    println!(
        "selected epoch {} (best validation RMSE {:.4}): test RMSE {:.4} MAE {:.4}; {} epochs in {:.2} s",
        s.selected_epoch, s.valid_rmse, s.test_rmse, s.test_mae, s.epochs_run, s.seconds
    );
    if let Some(p) = &cfg.metrics_jsonl {
        write_atomic(p, jsonl.as_bytes(), cfg.force)?;
    }
    let res = &out.residuals;
    for (what, buckets) in [("true rating", &res.by_rating), ("user's training ratings", &res.by_activity)] {
        println!("test errors by {what}:");
        for b in buckets.iter() {
            println!(
                "  {:>8}  {:>6} ratings  mean error {:+.4}  RMSE {:.4}  MAE {:.4}",
                b.label, b.count, b.mean_error, b.rmse, b.mae
            );
        }
    }
    if let Some(p) = &cfg.summary_json {
        let mut v = serde_json::to_value(s)?;
        v["residuals"] = serde_json::to_value(res)?;
        write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes(), cfg.force)?;
    }
    if let Some(p) = &cfg.plot {
        write_atomic(p, ncf_train::plot::rating_curves_svg(&out.epochs, res).as_bytes(), cfg.force)?;
    }
    Ok(true)
}
