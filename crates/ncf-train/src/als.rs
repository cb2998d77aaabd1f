//! `--optimizer als`: the MF model's factors trained by implicit alternating least squares
//! ([`ncf_cpu::als`]: Hu, Koren & Volinsky 2008, with conjugate-gradient row solves) instead of
//! gradient steps on sampled negatives.
//!
//! iALS weighs every unobserved (user, item) cell as a negative, so it samples nothing. An
//! epoch is one sweep: every user's factors solved against the items', then every item's
//! against the users' new ones. The MF model's biases stay at 0 (iALS fits the dot product
//! alone), so the checkpoint is an ordinary MF checkpoint that `ncf eval`, `recommend` and
//! `serve` read. Validation HR@K picks the epoch, as for the gradient-trained models.
//!
//! Deterministic: a row's solve reads only the other side's factors, so the run gives the same
//! bits on any number of threads, and `--resume` continues bit for bit (the factors are the
//! whole state).

use crate::ModelSpec;
use crate::checkpoint::ResumeState;
use crate::{
    Best, EpochReport, Outcome, Result, ResumeFrom, TrainConfig, TrainError, evaluate_sets, model_config, snapshot,
    summarize,
};
use ncf_cpu::CpuBackend;
use ncf_cpu::als::{AlsHp, half_sweep, loss, transpose};
use ncf_model::{AnyModel, Model, ModelKind};
use std::time::Instant;

/// The settings iALS reads, checked: MF on the CPU, `α ≥ 0`, `λ > 0`.
fn check(cfg: &TrainConfig) -> Result<AlsHp> {
    let bad = |name: &'static str, why: &str| Err(TrainError::Config(name, why.to_string()));
    if cfg.model != crate::ModelChoice::Mf {
        return bad("optimizer", "als trains the dot-product model only: add --model mf");
    }
    if cfg.device != crate::Device::Cpu {
        return bad("optimizer", "als runs on the CPU (--device cpu)");
    }
    if cfg.features {
        return bad("optimizer", "als trains the plain MF model, without --features");
    }
    if cfg.pretrained.is_some() {
        return bad("optimizer", "als trains MF from scratch; --pretrain-gmf/--pretrain-mlp are for neumf");
    }
    if cfg.lr_schedule != crate::LrSchedule::Constant {
        return bad("lr_schedule", "als has no learning rate (it solves each row exactly or by --als-cg-steps)");
    }
    if cfg.sampler == crate::SamplerChoice::Device || cfg.step == crate::Step::Reference {
        return bad(
            "optimizer",
            "als samples nothing and takes no gradient step (--sampler, --step); --als-cg-steps 0 runs the exact reference solve",
        );
    }
    if !(cfg.als_alpha >= 0.0 && cfg.als_alpha.is_finite()) {
        return bad("als_alpha", "must be a non-negative number");
    }
    if !(cfg.als_reg > 0.0 && cfg.als_reg.is_finite()) {
        return bad("als_reg", "must be a positive number (it keeps every row's system solvable)");
    }
    if cfg.als_cg_steps > 1000 {
        return bad("als_cg_steps", "at most 1000 (0 solves each row exactly)");
    }
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
    Ok(AlsHp { alpha: cfg.als_alpha as f32, reg: cfg.als_reg as f32, cg_steps: cfg.als_cg_steps })
}

/// [`crate::train`] with `--optimizer als`.
pub(crate) fn train_als(
    cfg: &TrainConfig,
    data: &crate::Prepared,
    resume: Option<ResumeFrom<'_>>,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Outcome> {
    let hp = check(cfg)?;
    let be = CpuBackend::<f32>::new(cfg.gemm.into());
    let tr = &data.train;
    let mcfg = model_config(ModelKind::Mf, cfg, data.known.n_users, data.known.n_items);
    let mut model = AnyModel::new(&be, &mcfg, cfg.eval_rows, &mut ncf_core::rng::seeded(cfg.seed, 1))?;
    let mut best = match &resume {
        None => Best { reports: Vec::new(), valid: None, weights: model.params().to_host(&be)? },
        Some(r) => {
            let st = ResumeState::read(r.checkpoint, r.path)?;
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
            for t in &st.current {
                model.params_and_grads().0.load(&be, &t.name, &t.data)?;
            }
            let weights = r.checkpoint.tensors.iter().filter(|t| !t.name.starts_with("resume/")).cloned().collect();
            Best { reports: st.epochs, valid: st.best_valid, weights }
        }
    };
    let index = |name: &str| {
        model.params().index(name).ok_or_else(|| TrainError::Config("model", format!("the MF model has no {name}")))
    };
    let (pu, qi, d) = (index("mf_user_embedding")?, index("mf_item_embedding")?, cfg.factors);
    // The items' view of the training pairs: for each item, the users who interacted with it.
    let (item_offsets, item_users) = transpose(&tr.offsets, &tr.items, tr.n_items);
    let cells = (tr.n_users as f64 * tr.n_items as f64).max(1.0);
    for epoch in best.reports.len() + 1..=cfg.epochs {
        if best.stalled(cfg.patience) {
            break;
        }
        let t0 = Instant::now();
        let params = model.params_and_grads().0;
        // Users against the items, then items against the users' new factors.
        let mut x = std::mem::take(params.buf_mut(pu));
        half_sweep(&mut x, params.buf(qi), d, &tr.offsets, &tr.items, &hp);
        *params.buf_mut(pu) = x;
        let mut y = std::mem::take(params.buf_mut(qi));
        half_sweep(&mut y, params.buf(pu), d, &item_offsets, &item_users, &hp);
        *params.buf_mut(qi) = y;
        let training_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let l = loss(params.buf(pu), params.buf(qi), d, &tr.offsets, &tr.items, &hp) / cells;
        let loss_s = t1.elapsed().as_secs_f64();
        let (v, t, (low, low_users), eval_s) = evaluate_sets(&be, &mut model, data, cfg.k)?;
        let report = EpochReport {
            epoch,
            loss: l,
            valid_hr: v.hr,
            valid_ndcg: v.ndcg,
            test_hr: t.hr,
            test_ndcg: t.ndcg,
            sampling_s: 0.0,
            training_s,
            eval_s: eval_s + loss_s,
            samples_per_second: tr.items.len() as f64 / training_s.max(1e-9),
            lr: 0.0,
            low_test_hr: low.hr,
            low_test_ndcg: low.ndcg,
            low_users,
        };
        on_epoch(&report);
        let reached = cfg.stop_at_hr.is_some_and(|x| report.test_hr >= x);
        best.record(&be, report, &model)?;
        if let Some(path) = &cfg.save {
            let resume = ResumeState {
                epochs: best.reports.clone(),
                best_valid: best.valid,
                current: model.params().to_host(&be)?,
                optim: Vec::new(),
                t: 0,
            };
            let summary = summarize(cfg, &best.reports, best.valid);
            snapshot(cfg, &mcfg, data, &summary, &best.reports, best.weights.clone(), Some(resume)).save(path, true)?;
        }
        if reached {
            break;
        }
    }
    let summary = summarize(cfg, &best.reports, best.valid);
    let best_ckpt = snapshot(cfg, &mcfg, data, &summary, &best.reports, best.weights, None);
    Ok(Outcome { summary, epochs: best.reports, best: best_ckpt })
}
