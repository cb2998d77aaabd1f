//! Gradient check: central finite differences against the hand-written backward passes.
//!
//! For a scalar loss `L(θ)` and each parameter element `θ_k`, the numeric derivative is the
//! 5-point central difference
//!
//! `∂L/∂θ_k ≈ [−L(θ+2h) + 8L(θ+h) − 8L(θ−h) + L(θ−2h)] / 12h`,
//!
//! whose truncation error is O(h⁴), so h = 1e-3 gives ~1e-13 in f64 while keeping rounding
//! error (~ε·|L|/h) at the same level. Each analytic gradient must match within
//! [`Tol::GRADCHECK_F64`].
//!
//! The check runs the *generic* model and op code with `B::T = f64`, the same code that trains
//! in `f32`. Ops are checked through the scalar `L = Σ r ⊙ out` with a fixed random `r`, so the
//! backward is fed `dout = r`.
//!
//! **ReLU kinks.** If a perturbation flips the sign of any ReLU pre-activation, the difference
//! quotient straddles a kink and is meaningless. Such elements are detected (the sign pattern at
//! every stencil point is compared with the unperturbed one), counted as `kinks`, and left out
//! of the error maxima.

use crate::init::InitConfig;
use crate::models::{AnyModel, Model, ModelConfig, ModelKind, Rating};
use crate::params::{HostTensor, Role};
use ncf_core::tol::{Comparison, compare};
use ncf_core::{AdamHp, Backend, Decay, Float, Result, SgdHp, Tol};
use rand::RngExt;
use serde::Serialize;

/// Settings for a check.
#[derive(Clone, Debug)]
pub struct Options {
    /// Finite-difference step.
    pub h: f64,
    pub tol: Tol,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { h: 1e-3, tol: Tol::GRADCHECK_F64, seed: 42 }
    }
}

/// The result for one tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorCheck {
    pub name: String,
    pub shape: Vec<usize>,
    /// Elements compared.
    pub checked: usize,
    /// Elements skipped because a stencil point crossed a ReLU kink.
    pub kinks: usize,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Elements outside the tolerance.
    pub failed: usize,
    pub ok: bool,
    /// Up to five failing elements: (index, analytic, numeric).
    pub first_bad: Vec<(usize, f64, f64)>,
}

/// The result for one op, model or optimizer.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectCheck {
    /// `"op"`, `"model"` or `"optim"`.
    pub kind: &'static str,
    pub name: String,
    pub tensors: Vec<TensorCheck>,
    pub ok: bool,
}

/// The whole report, as printed by `ncf gradcheck` (and as JSON with `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub dtype: &'static str,
    pub h: f64,
    pub tol_abs: f64,
    pub tol_rel: f64,
    pub subjects: Vec<SubjectCheck>,
    pub ok: bool,
}

impl SubjectCheck {
    fn new(kind: &'static str, name: impl Into<String>, tensors: Vec<TensorCheck>) -> Self {
        let ok = tensors.iter().all(|t| t.ok);
        SubjectCheck { kind, name: name.into(), tensors, ok }
    }
}

fn tensor_check(name: &str, shape: &[usize], c: Comparison, kinks: usize) -> TensorCheck {
    TensorCheck {
        name: name.to_string(),
        shape: shape.to_vec(),
        checked: c.len,
        kinks,
        max_abs: c.max_abs,
        max_rel: c.max_rel,
        failed: c.n_bad,
        ok: c.ok(),
        first_bad: c.first_bad.clone(),
    }
}

/// Numeric gradient of `loss_at` w.r.t. every element of `values[k]`, compared with `analytic[k]`.
///
/// `loss_at(values, k)` evaluates the loss after `values[k]` changed and returns it with the
/// ReLU sign pattern. `values` is restored before returning.
fn numeric_vs_analytic(
    tensors: &[(String, Vec<usize>)],
    values: &mut [Vec<f64>],
    analytic: &[Vec<f64>],
    opts: &Options,
    mut loss_at: impl FnMut(&[Vec<f64>], usize) -> Result<(f64, Vec<bool>)>,
) -> Result<Vec<TensorCheck>> {
    let (_, base_pattern) = loss_at(values, 0)?;
    let mut out = Vec::new();
    for (k, (name, shape)) in tensors.iter().enumerate() {
        let mut got = Vec::new();
        let mut want = Vec::new();
        let mut kinks = 0;
        for e in 0..values[k].len() {
            let x0 = values[k][e];
            let mut f = [0.0; 4];
            let mut crossed = false;
            for (slot, step) in [2.0, 1.0, -1.0, -2.0].into_iter().enumerate() {
                values[k][e] = x0 + step * opts.h;
                let (l, pattern) = loss_at(values, k)?;
                f[slot] = l;
                crossed |= pattern != base_pattern;
            }
            values[k][e] = x0;
            if crossed {
                kinks += 1;
                continue;
            }
            let numeric = (-f[0] + 8.0 * f[1] - 8.0 * f[2] + f[3]) / (12.0 * opts.h);
            got.push(analytic[k][e]);
            want.push(numeric);
        }
        loss_at(values, k)?; // leave the subject exactly as it was
        out.push(tensor_check(name, shape, compare(name, &got, &want, opts.tol), kinks));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------ models

/// A hook that may alter the analytic gradients before comparison, called as
/// `fault(model, tensor, grad)`. Production passes [`no_fault`]; tests pass one that corrupts a
/// tensor to prove the check catches it.
pub type Fault<'a> = &'a dyn Fn(&str, &str, &mut [f64]);

/// The hook that changes nothing.
pub fn no_fault(_: &str, _: &str, _: &mut [f64]) {}

/// A small random problem for the model checks: 5 users, 7 items, a batch of 8 rows with
/// repeated users and items and mixed labels.
pub struct Problem {
    pub users: Vec<u32>,
    pub items: Vec<u32>,
    pub labels: Vec<f64>,
}

impl Problem {
    pub fn tiny(seed: u64) -> Self {
        let mut rng = ncf_core::rng::seeded(seed, 0x9c);
        let b = 8;
        Problem {
            users: (0..b).map(|k| if k < 3 { 1 } else { rng.random_range(0..5) }).collect(),
            items: (0..b).map(|k| if k % 3 == 0 { 2 } else { rng.random_range(0..7) }).collect(),
            labels: (0..b).map(|k| (k % 2) as f64).collect(),
        }
    }
}

/// The configuration each model is checked at: GMF factors 4, MLP `[16, 8, 4]`.
pub fn tiny_config(kind: ModelKind) -> ModelConfig {
    ModelConfig {
        factors: 4,
        layers: vec![16, 8, 4],
        init: InitConfig::for_gradcheck(),
        ..ModelConfig::new(kind, 5, 7)
    }
}

/// The model's loss on `prob` (mean BCE on logits; mean squared error for the rating model,
/// whose outputs are ratings), and the ReLU pattern.
fn model_loss<B: Backend, M: Model<B>>(
    be: &B,
    model: &mut M,
    users: &B::Ids,
    items: &B::Ids,
    labels: &B::Buf,
    b: usize,
    loss: &mut B::Buf,
    dl: &mut B::Buf,
) -> Result<(f64, Vec<bool>)> {
    model.forward(be, users, items, b)?;
    be.fill(loss, 1, B::T::ZERO)?;
    if model.kind().is_rating() {
        be.mse(model.logits(), labels, b, loss, dl)?;
    } else {
        be.bce_with_logits(model.logits(), labels, b, loss, dl)?;
    }
    Ok((be.download(loss)?[0].to_f64(), model.relu_pattern(be, b)?))
}

/// Checks every parameter tensor of `model` on `prob`.
pub fn check_model<B: Backend, M: Model<B>>(
    be: &B,
    name: &str,
    model: &mut M,
    prob: &Problem,
    opts: &Options,
    fault: Fault,
) -> Result<SubjectCheck> {
    let b = prob.users.len();
    let users = {
        let mut x = be.zeros_ids(b)?;
        be.write_ids(&mut x, &prob.users)?;
        x
    };
    let items = {
        let mut x = be.zeros_ids(b)?;
        be.write_ids(&mut x, &prob.items)?;
        x
    };
    let labels = be.upload(&prob.labels.iter().map(|&y| B::T::from_f64(y)).collect::<Vec<_>>())?;
    let mut loss = be.zeros(1)?;
    let mut dl = be.zeros(b)?;

    // Analytic: zero the grads, forward, loss, backward.
    {
        let (_, grads) = model.params_and_grads();
        grads.zero(be)?;
    }
    model_loss(be, model, &users, &items, &labels, b, &mut loss, &mut dl)?;
    model.backward(be, &users, &items, &dl, b)?;
    // Role::Stat tensors (batch norm's running statistics, side-feature tables) are state and
    // data, not trained: they have no gradient and are left out.
    let trained: Vec<bool> = model.params().tensors.iter().map(|t| t.role != Role::Stat).collect();
    let keep =
        |v: Vec<HostTensor>| -> Vec<HostTensor> { v.into_iter().zip(&trained).filter(|p| *p.1).map(|p| p.0).collect() };
    let mut analytic: Vec<Vec<f64>> = keep(model.grads().to_host(be)?).into_iter().map(|t| t.data).collect();
    let host: Vec<HostTensor> = keep(model.params().to_host(be)?);
    for (t, g) in host.iter().zip(analytic.iter_mut()) {
        fault(name, &t.name, g);
    }
    let tensors: Vec<(String, Vec<usize>)> = host.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    let mut values: Vec<Vec<f64>> = host.into_iter().map(|t| t.data).collect();

    let checks = numeric_vs_analytic(&tensors, &mut values, &analytic, opts, |vals, k| {
        let (params, _) = model.params_and_grads();
        params.load(be, &tensors[k].0, &vals[k])?;
        model_loss(be, model, &users, &items, &labels, b, &mut loss, &mut dl)
    })?;
    Ok(SubjectCheck::new("model", name, checks))
}

/// Builds each of the four models and the rating model at [`tiny_config`] and checks it.
pub fn check_models<B: Backend>(be: &B, opts: &Options, fault: Fault) -> Result<Vec<SubjectCheck>> {
    let prob = Problem::tiny(opts.seed);
    let mut out = Vec::new();
    for kind in ModelKind::ALL.into_iter().chain([ModelKind::Rating]) {
        let cfg = tiny_config(kind);
        let mut rng = ncf_core::rng::seeded(opts.seed, kind as u64);
        let mut model = AnyModel::new(be, &cfg, prob.users.len(), &mut rng)?;
        out.push(check_model(be, kind.as_str(), &mut model, &prob, opts, fault)?);
    }
    // The rating model's regularized tower: batch norm in training mode (batch statistics) and
    // dropout with a fixed mask (one step's seed for every forward of the check).
    let cfg = ModelConfig { batch_norm: true, dropout: 0.3, ..tiny_config(ModelKind::Rating) };
    let mut model = Rating::new(be, &cfg, prob.users.len(), &mut ncf_core::rng::seeded(opts.seed, 99))?;
    model.set_noise(opts.seed, 1);
    out.push(check_model(be, "rating+bn+dropout", &mut model, &prob, opts, fault)?);
    // The hybrid models: multi-hot side features (3 user columns, 4 item columns) beside the
    // embeddings at the tower's input.
    for kind in [ModelKind::Rating, ModelKind::NeuMf] {
        let cfg = ModelConfig { user_features: 3, item_features: 4, ..tiny_config(kind) };
        let mut model = AnyModel::new(be, &cfg, prob.users.len(), &mut ncf_core::rng::seeded(opts.seed, 98))?;
        let hot = |n: usize, w: usize| -> Vec<f64> {
            (0..n * w).map(|k| (k * 7 + k / w).is_multiple_of(3) as u8 as f64).collect()
        };
        let (p, _) = model.params_and_grads();
        p.load(be, "user_features", &hot(cfg.users, 3))?;
        p.load(be, "item_features", &hot(cfg.items, 4))?;
        out.push(check_model(be, &format!("{kind}+features"), &mut model, &prob, opts, fault)?);
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------ ops

/// An op under test: named inputs, `forward(inputs) → L`, `backward(inputs) → ∂L/∂inputs`.
pub struct OpCase<'a> {
    pub name: &'static str,
    pub inputs: Vec<(String, Vec<usize>, Vec<f64>)>,
    #[allow(clippy::type_complexity)]
    pub loss: Box<dyn Fn(&[Vec<f64>]) -> Result<f64> + 'a>,
    #[allow(clippy::type_complexity)]
    pub grad: Box<dyn Fn(&[Vec<f64>]) -> Result<Vec<Vec<f64>>> + 'a>,
}

/// Checks one op case.
pub fn check_op(case: &OpCase, opts: &Options) -> Result<SubjectCheck> {
    let tensors: Vec<(String, Vec<usize>)> = case.inputs.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let mut values: Vec<Vec<f64>> = case.inputs.iter().map(|(_, _, v)| v.clone()).collect();
    let analytic = (case.grad)(&values)?;
    let checks =
        numeric_vs_analytic(&tensors, &mut values, &analytic, opts, |vals, _| Ok(((case.loss)(vals)?, Vec::new())))?;
    Ok(SubjectCheck::new("op", case.name, checks))
}

fn up<B: Backend>(be: &B, x: &[f64]) -> Result<B::Buf> {
    be.upload(&x.iter().map(|&v| B::T::from_f64(v)).collect::<Vec<_>>())
}

fn down<B: Backend>(be: &B, x: &B::Buf, n: usize) -> Result<Vec<f64>> {
    Ok(be.download(x)?.iter().take(n).map(|v| v.to_f64()).collect())
}

fn ids<B: Backend>(be: &B, x: &[u32]) -> Result<B::Ids> {
    let mut out = be.zeros_ids(x.len())?;
    be.write_ids(&mut out, x)?;
    Ok(out)
}

/// `Σ r ⊙ x` in f64.
fn project(r: &[f64], x: &[f64]) -> f64 {
    r.iter().zip(x).map(|(a, b)| a * b).sum()
}

/// Every op of the backend, each as an [`OpCase`] on a small random problem.
pub fn op_cases<'a, B: Backend>(be: &'a B, seed: u64) -> Vec<OpCase<'a>> {
    let mut rng = ncf_core::rng::seeded(seed, 0x0b5);
    let mut rand = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (b, n, d, i, o) = (6usize, 5usize, 3usize, 4usize, 3usize);
    let id_list: Vec<u32> = vec![0, 3, 3, 1, 4, 3]; // repeats exercise the scatter-add
    let r_bd = rand(b * d);
    let r_bo = rand(b * o);
    let r_b = rand(b);
    let r_cat = rand(b * (d + i));
    let labels: Vec<f64> = (0..b).map(|k| (k % 2) as f64).collect();
    // ReLU inputs kept at |x| ≥ 0.2, far from the kink relative to h = 1e-3.
    let relu_in: Vec<f64> = rand(b * d).into_iter().map(|x| if x >= 0.0 { x + 0.2 } else { x - 0.2 }).collect();
    let mut cases = Vec::new();

    {
        let (ids_host, r) = (id_list.clone(), r_bd.clone());
        let (ids_host2, r2) = (id_list.clone(), r_bd.clone());
        cases.push(OpCase {
            name: "embedding",
            inputs: vec![("table".into(), vec![n, d], rand(n * d))],
            loss: Box::new(move |v| {
                let mut out = be.zeros(b * d)?;
                be.embedding_forward(&up(be, &v[0])?, n, d, &ids(be, &ids_host)?, b, &mut out)?;
                Ok(project(&r, &down(be, &out, b * d)?))
            }),
            grad: Box::new(move |_| {
                let mut dt = be.zeros(n * d)?;
                be.embedding_backward(&up(be, &r2)?, &ids(be, &ids_host2)?, b, d, &mut dt, n)?;
                Ok(vec![down(be, &dt, n * d)?])
            }),
        });
    }
    {
        let (r, r2) = (r_bo.clone(), r_bo.clone());
        cases.push(OpCase {
            name: "linear",
            inputs: vec![
                ("inp".into(), vec![b, i], rand(b * i)),
                ("w".into(), vec![o, i], rand(o * i)),
                ("bias".into(), vec![o], rand(o)),
            ],
            loss: Box::new(move |v| {
                let mut out = be.zeros(b * o)?;
                be.linear_forward(&up(be, &v[0])?, &up(be, &v[1])?, &up(be, &v[2])?, &mut out, b, i, o)?;
                Ok(project(&r, &down(be, &out, b * o)?))
            }),
            grad: Box::new(move |v| {
                let (mut dinp, mut dw, mut db) = (be.zeros(b * i)?, be.zeros(o * i)?, be.zeros(o)?);
                be.linear_backward(
                    &up(be, &r2)?,
                    &up(be, &v[0])?,
                    &up(be, &v[1])?,
                    Some(&mut dinp),
                    &mut dw,
                    &mut db,
                    b,
                    i,
                    o,
                )?;
                Ok(vec![down(be, &dinp, b * i)?, down(be, &dw, o * i)?, down(be, &db, o)?])
            }),
        });
    }
    {
        let (r, r2) = (r_bd.clone(), r_bd.clone());
        cases.push(OpCase {
            name: "relu",
            inputs: vec![("inp".into(), vec![b, d], relu_in)],
            loss: Box::new(move |v| {
                let mut out = be.zeros(b * d)?;
                be.relu_forward(&up(be, &v[0])?, &mut out, b * d)?;
                Ok(project(&r, &down(be, &out, b * d)?))
            }),
            grad: Box::new(move |v| {
                let (mut out, mut dinp) = (be.zeros(b * d)?, be.zeros(b * d)?);
                be.relu_forward(&up(be, &v[0])?, &mut out, b * d)?;
                be.relu_backward(&out, &up(be, &r2)?, &mut dinp, b * d)?;
                Ok(vec![down(be, &dinp, b * d)?])
            }),
        });
    }
    {
        let (y, y2) = (labels.clone(), labels.clone());
        cases.push(OpCase {
            name: "bce_with_logits",
            inputs: vec![("logits".into(), vec![b], rand(b).into_iter().map(|x| 3.0 * x).collect())],
            loss: Box::new(move |v| {
                let (mut loss, mut dz) = (be.zeros(1)?, be.zeros(b)?);
                be.bce_with_logits(&up(be, &v[0])?, &up(be, &y)?, b, &mut loss, &mut dz)?;
                Ok(down(be, &loss, 1)?[0])
            }),
            grad: Box::new(move |v| {
                let (mut loss, mut dz) = (be.zeros(1)?, be.zeros(b)?);
                be.bce_with_logits(&up(be, &v[0])?, &up(be, &y2)?, b, &mut loss, &mut dz)?;
                Ok(vec![down(be, &dz, b)?])
            }),
        });
    }
    {
        let t = rand(b);
        let t2 = t.clone();
        cases.push(OpCase {
            name: "mse",
            inputs: vec![("pred".into(), vec![b], rand(b))],
            loss: Box::new(move |v| {
                let (mut loss, mut dp) = (be.zeros(1)?, be.zeros(b)?);
                be.mse(&up(be, &v[0])?, &up(be, &t)?, b, &mut loss, &mut dp)?;
                Ok(down(be, &loss, 1)?[0])
            }),
            grad: Box::new(move |v| {
                let (mut loss, mut dp) = (be.zeros(1)?, be.zeros(b)?);
                be.mse(&up(be, &v[0])?, &up(be, &t2)?, b, &mut loss, &mut dp)?;
                Ok(vec![down(be, &dp, b)?])
            }),
        });
    }
    {
        let (r, r2) = (r_bd.clone(), r_bd.clone());
        cases.push(OpCase {
            name: "gmf_product",
            inputs: vec![("u".into(), vec![b, d], rand(b * d)), ("v".into(), vec![b, d], rand(b * d))],
            loss: Box::new(move |v| {
                let mut out = be.zeros(b * d)?;
                be.gmf_forward(&up(be, &v[0])?, &up(be, &v[1])?, &mut out, b * d)?;
                Ok(project(&r, &down(be, &out, b * d)?))
            }),
            grad: Box::new(move |v| {
                let (mut du, mut dv) = (be.zeros(b * d)?, be.zeros(b * d)?);
                be.gmf_backward(&up(be, &r2)?, &up(be, &v[0])?, &up(be, &v[1])?, &mut du, &mut dv, b * d)?;
                Ok(vec![down(be, &du, b * d)?, down(be, &dv, b * d)?])
            }),
        });
    }
    {
        let (r, r2) = (r_cat.clone(), r_cat.clone());
        cases.push(OpCase {
            name: "concat",
            inputs: vec![("a".into(), vec![b, d], rand(b * d)), ("c".into(), vec![b, i], rand(b * i))],
            loss: Box::new(move |v| {
                let mut out = be.zeros(b * (d + i))?;
                be.concat_cols(&up(be, &v[0])?, d, &up(be, &v[1])?, i, b, &mut out)?;
                Ok(project(&r, &down(be, &out, b * (d + i))?))
            }),
            grad: Box::new(move |_| {
                let (mut ga, mut gc) = (be.zeros(b * d)?, be.zeros(b * i)?);
                be.split_cols(&up(be, &r2)?, d, i, b, &mut ga, &mut gc)?;
                Ok(vec![down(be, &ga, b * d)?, down(be, &gc, b * i)?])
            }),
        });
    }
    {
        // Dropout with a fixed mask (the same seed in every call): out = x·keep/(1−p); its
        // backward is the same op on r.
        let (r, r2) = (r_bd.clone(), r_bd.clone());
        let (p, seed) = (0.4, 11u64);
        cases.push(OpCase {
            name: "dropout (fixed mask)",
            inputs: vec![("x".into(), vec![b, d], rand(b * d))],
            loss: Box::new(move |v| {
                let mut out = be.zeros(b * d)?;
                be.dropout(&up(be, &v[0])?, &mut out, b * d, p, seed)?;
                Ok(project(&r, &down(be, &out, b * d)?))
            }),
            grad: Box::new(move |_| {
                let mut dx = be.zeros(b * d)?;
                be.dropout(&up(be, &r2)?, &mut dx, b * d, p, seed)?;
                Ok(vec![down(be, &dx, b * d)?])
            }),
        });
    }
    {
        // Batch norm in training mode (batch statistics): every output depends on every row of
        // its column through μ and σ².
        let (r, r2) = (r_bd.clone(), r_bd.clone());
        let eps = 1e-5;
        // (y, xhat, inv, gamma) of the forward at `v`.
        #[allow(clippy::type_complexity)]
        let fwd = move |v: &[Vec<f64>]| -> Result<(B::Buf, B::Buf, B::Buf, B::Buf)> {
            let (mut y, mut xh, mut inv) = (be.zeros(b * d)?, be.zeros(b * d)?, be.zeros(d)?);
            let (mut rm, mut rv) = (be.zeros(d)?, be.zeros(d)?);
            let (x, g, bt) = (up(be, &v[0])?, up(be, &v[1])?, up(be, &v[2])?);
            be.batchnorm_forward_train(&x, &g, &bt, b, d, eps, 0.1, &mut y, &mut xh, &mut inv, (&mut rm, &mut rv))?;
            Ok((y, xh, inv, g))
        };
        cases.push(OpCase {
            name: "batchnorm (train)",
            inputs: vec![
                ("x".into(), vec![b, d], rand(b * d)),
                ("gamma".into(), vec![d], rand(d)),
                ("beta".into(), vec![d], rand(d)),
            ],
            loss: Box::new(move |v| Ok(project(&r, &down(be, &fwd(v)?.0, b * d)?))),
            grad: Box::new(move |v| {
                let (_, xh, inv, g) = fwd(v)?;
                let (mut dx, mut dg, mut dbt) = (be.zeros(b * d)?, be.zeros(d)?, be.zeros(d)?);
                be.batchnorm_backward(&up(be, &r2)?, &xh, &g, &inv, b, d, &mut dx, &mut dg, &mut dbt)?;
                Ok(vec![down(be, &dx, b * d)?, down(be, &dg, d)?, down(be, &dbt, d)?])
            }),
        });
    }
    {
        let (r, r2) = (r_b.clone(), r_b.clone());
        cases.push(OpCase {
            name: "rowdot",
            inputs: vec![("u".into(), vec![b, d], rand(b * d)), ("v".into(), vec![b, d], rand(b * d))],
            loss: Box::new(move |v| {
                let mut out = be.zeros(b)?;
                be.rowdot_forward(&up(be, &v[0])?, &up(be, &v[1])?, b, d, &mut out)?;
                Ok(project(&r, &down(be, &out, b)?))
            }),
            grad: Box::new(move |v| {
                let (mut du, mut dv) = (be.zeros(b * d)?, be.zeros(b * d)?);
                be.rowdot_backward(&up(be, &r2)?, &up(be, &v[0])?, &up(be, &v[1])?, b, d, &mut du, &mut dv)?;
                Ok(vec![down(be, &du, b * d)?, down(be, &dv, b * d)?])
            }),
        });
    }
    {
        // out = x + y + s (add_assign, add_scalar); backward: dx = dy = r, ds = Σ r (sum_into).
        let (r, r2) = (r_b.clone(), r_b.clone());
        cases.push(OpCase {
            name: "bias_add",
            inputs: vec![
                ("x".into(), vec![b], rand(b)),
                ("y".into(), vec![b], rand(b)),
                ("s".into(), vec![1], rand(1)),
            ],
            loss: Box::new(move |v| {
                let mut out = up(be, &v[0])?;
                be.add_assign(&mut out, &up(be, &v[1])?, b)?;
                be.add_scalar(&mut out, &up(be, &v[2])?, b)?;
                Ok(project(&r, &down(be, &out, b)?))
            }),
            grad: Box::new(move |_| {
                let mut ds = be.zeros(1)?;
                be.sum_into(&up(be, &r2)?, b, &mut ds)?;
                Ok(vec![r2.clone(), r2.clone(), down(be, &ds, 1)?])
            }),
        });
    }
    cases
}

/// Checks every op in [`op_cases`].
pub fn check_ops<B: Backend>(be: &B, opts: &Options) -> Result<Vec<SubjectCheck>> {
    op_cases(be, opts.seed).iter().map(|c| check_op(c, opts)).collect()
}

// ------------------------------------------------------------------------------------ optimizers

/// One optimizer step of each kind against values computed by hand (closed forms written out
/// in the comments), through the backend's own kernels.
pub fn check_optimizers<B: Backend>(be: &B) -> Result<Vec<SubjectCheck>> {
    let tol = Tol::F64_KERNEL;
    let mut out = Vec::new();
    let cmp = |name: &str, got: Vec<f64>, want: &[f64]| {
        let c = compare(name, &got, want, tol);
        tensor_check(name, &[want.len()], c, 0)
    };

    // Adam, first step from zero moments: m̂ = g and v̂ = g², so w ← w − lr·g/(|g| + ε).
    // lr = 0.1, w = [1, −2, 0.5], g = [0.5, −4, 0].
    let hp = AdamHp { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, decay: Decay::None };
    let (mut p, mut g) = (up(be, &[1.0, -2.0, 0.5])?, up(be, &[0.5, -4.0, 0.0])?);
    let (mut m, mut v) = (be.zeros(3)?, be.zeros(3)?);
    let t1 = ids(be, &[1])?;
    be.adam_step(&mut p, &mut g, &mut m, &mut v, 3, &hp, &t1)?;
    let want_p = [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 4.0 / (4.0 + 1e-8), 0.5];
    out.push(SubjectCheck::new(
        "optim",
        "adam (dense, t=1)",
        vec![
            cmp("w", down(be, &p, 3)?, &want_p),
            cmp("m = (1−β₁)g", down(be, &m, 3)?, &[0.05, -0.4, 0.0]),
            cmp("v = (1−β₂)g²", down(be, &v, 3)?, &[0.00025, 0.016, 0.0]),
            cmp("g zeroed", down(be, &g, 3)?, &[0.0; 3]),
        ],
    ));

    // Lazy Adam on a (3,1) table touching rows {0, 2}: row 1 must not move even with a gradient.
    let (mut p, mut g) = (up(be, &[1.0, -2.0, 0.5])?, up(be, &[0.5, 9.0, -0.25])?);
    let (mut m, mut v) = (be.zeros(3)?, be.zeros(3)?);
    be.adam_step_rows(&mut p, &mut g, &mut m, &mut v, &ids(be, &[0, 2])?, 1, 3, &hp, &t1)?;
    let want_lazy = [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0, 0.5 + 0.1 * 0.25 / (0.25 + 1e-8)];
    out.push(SubjectCheck::new("optim", "adam (lazy rows {0,2}, t=1)", vec![cmp("w", down(be, &p, 3)?, &want_lazy)]));

    // SGD, momentum 0.9, L2 0.01, lr 0.1, w = 2, g = 1 at both steps:
    // step 1: g' = 1 + 0.01·2 = 1.02;        mom = 1.02;                 w = 2 − 0.102 = 1.898
    // step 2: g' = 1 + 0.01·1.898 = 1.01898; mom = 0.9·1.02 + 1.01898 = 1.93698; w = 1.898 − 0.193698 = 1.704302
    let hp = SgdHp { lr: 0.1, momentum: 0.9, decay: Decay::L2(0.01) };
    let (mut p, mut mom) = (up(be, &[2.0])?, be.zeros(1)?);
    for _ in 0..2 {
        let mut g = up(be, &[1.0])?;
        be.sgd_step(&mut p, &mut g, &mut mom, 1, &hp)?;
    }
    out.push(SubjectCheck::new(
        "optim",
        "sgd (momentum 0.9, L2 0.01, 2 steps)",
        vec![cmp("w", down(be, &p, 1)?, &[1.704302]), cmp("momentum", down(be, &mom, 1)?, &[1.93698])],
    ));

    // AdamW-style decoupled decay, first step: w ← (1 − lr·λ)·w − lr·g/(|g| + ε),
    // lr 0.1, λ 0.5, w = 2, g = −1 → 0.95·2 + 0.1/(1 + 1e-8).
    let hp = AdamHp { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, decay: Decay::Decoupled(0.5) };
    let (mut p, mut g) = (up(be, &[2.0])?, up(be, &[-1.0])?);
    let (mut m, mut v) = (be.zeros(1)?, be.zeros(1)?);
    be.adam_step(&mut p, &mut g, &mut m, &mut v, 1, &hp, &t1)?;
    out.push(SubjectCheck::new(
        "optim",
        "adamw (decoupled 0.5, t=1)",
        vec![cmp("w", down(be, &p, 1)?, &[0.95 * 2.0 + 0.1 / (1.0 + 1e-8)])],
    ));
    Ok(out)
}

/// Ops, models and optimizers: the full report `ncf gradcheck` prints.
pub fn run_all<B: Backend>(be: &B, opts: &Options, fault: Fault) -> Result<Report> {
    let mut subjects = check_ops(be, opts)?;
    subjects.extend(check_models(be, opts, fault)?);
    subjects.extend(check_optimizers(be)?);
    let ok = subjects.iter().all(|s| s.ok);
    Ok(Report { dtype: B::T::NAME, h: opts.h, tol_abs: opts.tol.abs, tol_rel: opts.tol.rel, subjects, ok })
}

/// Roles are printed next to tensor names in reports.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Embedding(_) => "embedding",
        Role::Weight => "weight",
        Role::Bias => "bias",
        Role::Stat => "stat",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `L(x) = Σ relu(x)`: an element 1e-4 from the kink is crossed by the ±h stencil and must be
    /// reported as a kink, not compared; elements far from it are compared normally.
    #[test]
    fn stencils_that_cross_a_relu_kink_are_counted_not_compared() {
        let tensors = vec![("x".to_string(), vec![3])];
        let mut values = vec![vec![1e-4, 0.7, -0.4]];
        let analytic = vec![vec![1.0, 1.0, 0.0]];
        let loss = |v: &[Vec<f64>], _k: usize| -> Result<(f64, Vec<bool>)> {
            Ok((v[0].iter().map(|x| x.max(0.0)).sum(), v[0].iter().map(|&x| x > 0.0).collect()))
        };
        let checks = numeric_vs_analytic(&tensors, &mut values, &analytic, &Options::default(), loss).unwrap();
        assert_eq!((checks[0].kinks, checks[0].checked), (1, 2));
        assert!(checks[0].ok, "{:?}", checks[0]);
        assert_eq!(values[0], vec![1e-4, 0.7, -0.4], "values are restored");

        // Without the pattern the kink element is compared, and the difference quotient is wrong.
        let blind = |v: &[Vec<f64>], _k: usize| -> Result<(f64, Vec<bool>)> {
            Ok((v[0].iter().map(|x| x.max(0.0)).sum(), vec![]))
        };
        let checks = numeric_vs_analytic(&tensors, &mut values, &analytic, &Options::default(), blind).unwrap();
        assert!(!checks[0].ok && checks[0].failed == 1);
    }
}
