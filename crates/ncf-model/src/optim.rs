//! The optimizer: one rule per parameter group (embeddings, weights, biases), with per-group
//! regularization, and dense or row-sparse ("lazy") updates for embedding tables.
//!
//! A step walks the parameter list once. Each tensor is updated by its group's rule and its
//! gradient is zeroed, so the next backward starts clean.

use crate::params::{IdSource, ParamSet, Role};
use ncf_core::{AdamHp, Backend, Decay, Error, OptimKind, Result, SgdHp};

/// How one group of parameters is updated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupConfig {
    pub rule: OptimKind,
    /// Embedding tables only: update just the rows the batch touched (row-sparse / lazy).
    pub lazy: bool,
}

/// Rules for the three parameter groups.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    pub embedding: GroupConfig,
    pub weight: GroupConfig,
    pub bias: GroupConfig,
}

impl OptimConfig {
    /// The same rule everywhere; embeddings lazy or dense.
    pub fn uniform(rule: OptimKind, lazy_embeddings: bool) -> Self {
        let g = GroupConfig { rule, lazy: false };
        OptimConfig { embedding: GroupConfig { rule, lazy: lazy_embeddings }, weight: g, bias: g }
    }

    /// Adam at `lr` (β₁ 0.9, β₂ 0.999, ε 1e-8) with lazy embedding rows.
    pub fn adam(lr: f64) -> Self {
        Self::uniform(OptimKind::Adam(AdamHp { lr, ..AdamHp::default() }), true)
    }

    /// SGD at `lr` with `momentum`, dense.
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Self::uniform(OptimKind::Sgd(SgdHp { lr, momentum, decay: Decay::None }), false)
    }

    /// Sets the regularization of one role's group.
    pub fn with_decay(mut self, role: Role, decay: Decay) -> Self {
        let g = self.group_mut(role);
        g.rule = g.rule.with_decay(decay);
        self
    }

    pub fn group(&self, role: Role) -> &GroupConfig {
        match role {
            Role::Embedding(_) => &self.embedding,
            Role::Weight => &self.weight,
            Role::Bias => &self.bias,
        }
    }

    fn group_mut(&mut self, role: Role) -> &mut GroupConfig {
        match role {
            Role::Embedding(_) => &mut self.embedding,
            Role::Weight => &mut self.weight,
            Role::Bias => &mut self.bias,
        }
    }
}

/// Optimizer state: one or two moment buffers per tensor, the step count, and scratch for the
/// distinct ids of a batch.
pub struct Optimizer<B: Backend> {
    pub cfg: OptimConfig,
    /// SGD momentum, or Adam's first moment `m`.
    state1: Vec<B::Buf>,
    /// Adam's second moment `v` (empty buffers for SGD groups).
    state2: Vec<B::Buf>,
    /// Steps taken so far; the next step is `t + 1`.
    pub t: u64,
    uniq_users: B::Ids,
    uniq_items: B::Ids,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(be: &B, params: &ParamSet<B>, cfg: OptimConfig, max_batch: usize) -> Result<Self> {
        for g in [cfg.embedding, cfg.weight, cfg.bias] {
            let lr = g.rule.lr();
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::invalid("Optimizer::new", "lr", format!("must be a positive number, got {lr}")));
            }
        }
        let mut state1 = Vec::new();
        let mut state2 = Vec::new();
        for t in &params.tensors {
            state1.push(be.zeros(t.numel())?);
            let adam = matches!(cfg.group(t.role).rule, OptimKind::Adam(_));
            state2.push(be.zeros(if adam { t.numel() } else { 0 })?);
        }
        Ok(Optimizer {
            cfg,
            state1,
            state2,
            t: 0,
            uniq_users: be.zeros_ids(max_batch)?,
            uniq_items: be.zeros_ids(max_batch)?,
        })
    }

    /// One step on every tensor using its accumulated gradient, then zeroes the gradients.
    /// `users`/`items (B)` are the batch's ids: lazy embedding groups touch only those rows.
    pub fn step(
        &mut self,
        be: &B,
        params: &mut ParamSet<B>,
        grads: &mut ParamSet<B>,
        users: &B::Ids,
        items: &B::Ids,
        b: usize,
    ) -> Result<()> {
        self.t += 1;
        let t = self.t;
        let mut n_users: Option<usize> = None;
        let mut n_items: Option<usize> = None;
        for (k, (p, g)) in params.tensors.iter_mut().zip(grads.tensors.iter_mut()).enumerate() {
            let group = *self.cfg.group(p.role);
            let n = p.numel();
            let (s1, s2) = (&mut self.state1[k], &mut self.state2[k]);
            match (p.role, group.lazy) {
                (Role::Embedding(src), true) => {
                    // Distinct rows touched by this batch, computed once per id stream per step.
                    let (ids, uniq, count) = match src {
                        IdSource::User => (users, &mut self.uniq_users, &mut n_users),
                        IdSource::Item => (items, &mut self.uniq_items, &mut n_items),
                    };
                    let (rows, d) = (p.rows(), p.row_width());
                    let nrows = match *count {
                        Some(c) => c,
                        None => *count.insert(be.unique_ids(ids, b, rows, uniq)?),
                    };
                    match group.rule {
                        OptimKind::Adam(hp) => {
                            be.adam_step_rows(&mut p.buf, &mut g.buf, s1, s2, uniq, nrows, d, rows, &hp, t)?
                        }
                        OptimKind::Sgd(hp) => {
                            be.sgd_step_rows(&mut p.buf, &mut g.buf, s1, uniq, nrows, d, rows, &hp)?
                        }
                    }
                }
                _ => match group.rule {
                    OptimKind::Adam(hp) => be.adam_step(&mut p.buf, &mut g.buf, s1, s2, n, &hp, t)?,
                    OptimKind::Sgd(hp) => be.sgd_step(&mut p.buf, &mut g.buf, s1, n, &hp)?,
                },
            }
        }
        Ok(())
    }
}
