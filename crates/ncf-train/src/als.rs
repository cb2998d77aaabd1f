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

use crate::{
    Best, EpochReport, Outcome, Result, ResumeFrom, TrainConfig, TrainError, model_config, resume_weights, save_run,
    snapshot, summarize,
};
use ncf_cpu::CpuBackend;
use ncf_cpu::als::{AlsHp, half_sweep, loss, transpose};
use ncf_eval::{HitMetrics, RankCase, hit_ndcg, rank_of_first};
use ncf_model::{AnyModel, Model, ModelKind};
use rayon::prelude::*;
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
    crate::check_run(cfg)?;
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
        Some(r) => resume_weights(&be, &mcfg, r, &mut model)?.1,
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
        let failed_users = half_sweep(&mut x, params.buf(qi), d, &tr.offsets, &tr.items, &hp)?;
        *params.buf_mut(pu) = x;
        let mut y = std::mem::take(params.buf_mut(qi));
        let failed_items = half_sweep(&mut y, params.buf(pu), d, &item_offsets, &item_users, &hp)?;
        *params.buf_mut(qi) = y;
        if failed_users + failed_items > 0 {
            return Err(TrainError::Config(
                "als_reg",
                format!(
                    "epoch {epoch}: {failed_users} users' and {failed_items} items' systems were not positive definite \
                     (non-finite factors?)"
                ),
            ));
        }
        let training_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let l = loss(params.buf(pu), params.buf(qi), d, &tr.offsets, &tr.items, &hp)? / cells;
        let loss_s = t1.elapsed().as_secs_f64();
        let (v, t, (low, low_users), eval_s) = evaluate_mf(&model, data, cfg.k)?;
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
            step_phases: Vec::new(),
        };
        on_epoch(&report);
        let reached = cfg.stop_at_hr.is_some_and(|x| report.test_hr >= x);
        best.record(&be, report, &model)?;
        if let Some(path) = &cfg.save {
            // The factors are the whole state: no optimizer state, no steps.
            save_run(path, cfg, &mcfg, data, &best, model.params().to_host(&be)?, Vec::new(), 0)?;
        }
        if reached {
            break;
        }
    }
    let summary = summarize(cfg, &best.reports, best.valid);
    let best_ckpt = snapshot(cfg, &mcfg, data, &summary, &best.reports, best.weights, None);
    Ok(Outcome { summary, epochs: best.reports, best: best_ckpt })
}

/// [`crate::evaluate_sets`] for an MF model on the CPU, scored case by case on both cores: each
/// candidate's logit is `Mf::score`'s, bit for bit (the same `rowdot_forward`, then `+ b_u[u]`,
/// `+ b_i[i]`, `+ g` in that order), and the per-case metrics are summed in case order, so the
/// metrics equal `ncf_eval::evaluate`'s exactly (`tests/als.rs` checks). It reads each user's
/// row once per case instead of once per candidate, and gathers nothing.
pub(crate) fn evaluate_mf(
    model: &AnyModel<CpuBackend<f32>>,
    data: &crate::Prepared,
    k: usize,
) -> Result<(HitMetrics, HitMetrics, (HitMetrics, usize), f64)> {
    let t = Instant::now();
    let p = model.params();
    let tensor = |name: &str| {
        p.index(name)
            .map(|i| p.buf(i))
            .ok_or_else(|| TrainError::Config("model", format!("the MF model has no {name}")))
    };
    let (pu, qi, bu, bi, g) = (
        tensor("mf_user_embedding")?,
        tensor("mf_item_embedding")?,
        tensor("user_bias")?,
        tensor("item_bias")?,
        tensor("global_bias")?[0],
    );
    let d = pu.len() / bu.len().max(1);
    let metrics = |cases: &[RankCase]| -> HitMetrics {
        let per_case: Vec<(f64, f64)> = cases
            .par_iter()
            .map_init(Vec::new, |scores: &mut Vec<f32>, c| {
                let u = c.user as usize;
                let xu = &pu[u * d..(u + 1) * d];
                scores.clear();
                scores.extend(c.candidates.iter().map(|&i| {
                    let i = i as usize;
                    let mut s = [0f32];
                    ncf_cpu::ops::elementwise::rowdot_forward(xu, &qi[i * d..(i + 1) * d], d, &mut s);
                    ((s[0] + bu[u]) + bi[i]) + g
                }));
                hit_ndcg(rank_of_first(scores), k)
            })
            .collect();
        let (mut hr, mut ndcg) = (0.0, 0.0);
        for (h, n) in per_case {
            hr += h;
            ndcg += n;
        }
        let n = cases.len().max(1) as f64;
        HitMetrics { hr: hr / n, ndcg: ndcg / n, users: cases.len() }
    };
    let (valid, test) = (metrics(&data.valid), metrics(&data.test));
    let low = &data.low_test;
    let low_m = if low.is_empty() { HitMetrics { hr: 0.0, ndcg: 0.0, ..test } } else { metrics(low) };
    Ok((valid, test, (low_m, low.len()), t.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The case-by-case MF scorer gives `ncf_eval::evaluate`'s metrics exactly, on trained
    /// factors and on factors with non-zero biases: on the embedded sample, and on the NCF
    /// ML-1M split when `NCF_DATA` has it.
    #[test]
    fn evaluate_mf_equals_the_model_s_evaluation_bit_for_bit() {
        let loaded = crate::source::load(None, &Default::default()).unwrap();
        same_metrics(&crate::Prepared::from_split(&loaded.split, 42));
        if let Some(dir) = ncf_core::testenv::data_dir("ncf-ml-1m") {
            let split = ncf_data::NcfSplit::load(&dir).unwrap();
            same_metrics(&crate::Prepared::from_split(&split, 42));
        }
    }

    fn same_metrics(data: &crate::Prepared) {
        let cfg = TrainConfig {
            model: crate::ModelChoice::Mf,
            optimizer: crate::OptimChoice::Als,
            factors: 13,
            epochs: 2,
            ..TrainConfig::default()
        };
        let out = crate::train(&cfg, data, None, |_| {}).unwrap();
        let be = CpuBackend::<f32>::default();
        let mut model = out.best.model(&be, cfg.eval_rows, std::path::Path::new("best")).unwrap();
        for biased in [false, true] {
            if biased {
                let mut r = ncf_core::rng::seeded(5, 5);
                for name in ["user_bias", "item_bias", "global_bias"] {
                    let k = model.params().index(name).unwrap();
                    let n = model.params().buf(k).len();
                    let v: Vec<f64> = (0..n).map(|_| rand::RngExt::random_range(&mut r, -0.5..0.5)).collect();
                    model.params_and_grads().0.load(&be, name, &v).unwrap();
                }
            }
            let (v, t, (low, n), _) = evaluate_mf(&model, data, 10).unwrap();
            let (v2, t2, (low2, n2), _) = crate::evaluate_sets(&be, &mut model, data, 10).unwrap();
            for (what, a, b) in [("valid", v, v2), ("test", t, t2), ("low", low, low2)] {
                assert_eq!(
                    (a.hr.to_bits(), a.ndcg.to_bits()),
                    (b.hr.to_bits(), b.ndcg.to_bits()),
                    "{what} biased={biased}: {a:?} vs {b:?}"
                );
            }
            assert_eq!(n, n2);
        }
    }
}
