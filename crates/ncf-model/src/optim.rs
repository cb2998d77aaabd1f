//! The optimizer: one rule per parameter group (embeddings, weights, biases), with per-group
//! regularization, and dense or row-sparse ("lazy") updates for embedding tables.
//!
//! A step walks the parameter list once. Each tensor is updated by its group's rule and its
//! gradient is zeroed, so the next backward starts clean.

use crate::params::{HostTensor, IdSource, ParamSet, Role, SideTables, Tensor};
use ncf_core::Float;
use ncf_core::{AdamHp, Backend, Decay, Error, OptimKind, Result, SgdHp};

/// The three parameter groups an optimizer configures separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Every embedding table (user and item, GMF, MLP and MF, and MF's bias vectors).
    Embedding,
    /// Dense weights.
    Weight,
    /// Dense biases and MF's global bias.
    Bias,
}

impl Group {
    /// The group a tensor of this role belongs to.
    pub fn of(role: Role) -> Group {
        match role {
            Role::Embedding(_) => Group::Embedding,
            Role::Weight => Group::Weight,
            // Never updated (see `update`); grouped with the biases for lookups only.
            Role::Bias | Role::Stat => Group::Bias,
        }
    }
}

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

    /// Sets the regularization of one group.
    pub fn with_decay(mut self, group: Group, decay: Decay) -> Self {
        let g = self.group_mut(group);
        g.rule = g.rule.with_decay(decay);
        self
    }

    /// The configuration that updates tensors of this role.
    pub fn group(&self, role: Role) -> &GroupConfig {
        match Group::of(role) {
            Group::Embedding => &self.embedding,
            Group::Weight => &self.weight,
            Group::Bias => &self.bias,
        }
    }

    fn group_mut(&mut self, group: Group) -> &mut GroupConfig {
        match group {
            Group::Embedding => &mut self.embedding,
            Group::Weight => &mut self.weight,
            Group::Bias => &mut self.bias,
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
    /// The step count on the device (`t_dev[0]`), which the Adam kernels read: advanced by the
    /// device itself, so a recorded step replays correctly. [`Optimizer::set_steps`] keeps
    /// the two in agreement.
    t_dev: B::Ids,
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
            t_dev: be.zeros_ids(1)?,
            uniq_users: be.zeros_ids(max_batch)?,
            uniq_items: be.zeros_ids(max_batch)?,
        })
    }

    /// Sets every group's learning rate to `lr` (an LR schedule's step, between epochs).
    pub fn set_lr(&mut self, lr: f64) {
        for g in [&mut self.cfg.embedding, &mut self.cfg.weight, &mut self.cfg.bias] {
            match &mut g.rule {
                OptimKind::Adam(hp) => hp.lr = lr,
                OptimKind::Sgd(hp) => hp.lr = lr,
            }
        }
    }

    /// The moment buffers of every tensor (SGD's momentum or Adam's `m`; Adam's `v`, empty for
    /// SGD groups), in the parameters' order, and the device's step count: for a backend's
    /// fused step, which runs the optimizer's rule inside its own kernels. Such a step
    /// advances the device count itself and must add 1 to [`Optimizer::t`] per step.
    pub fn state_mut(&mut self) -> (&mut [B::Buf], &mut [B::Buf], &mut B::Ids) {
        (&mut self.state1, &mut self.state2, &mut self.t_dev)
    }

    /// The optimizer's state as host tensors: `NAME.m` (Adam's first moment, or SGD's momentum)
    /// and `NAME.v` (Adam's second moment) for each parameter `NAME`. With the step count
    /// [`Optimizer::t`] this is everything a resumed run needs to continue exactly.
    pub fn state_to_host(&self, be: &B, params: &ParamSet<B>) -> Result<Vec<HostTensor>> {
        let mut out = Vec::with_capacity(2 * params.tensors.len());
        for (k, p) in params.tensors.iter().enumerate() {
            for (suffix, buf) in [("m", &self.state1[k]), ("v", &self.state2[k])] {
                if be.len(buf) == 0 {
                    continue;
                }
                let data = be.download(buf)?.iter().take(p.numel()).map(|x| x.to_f64()).collect();
                out.push(HostTensor { name: format!("{}.{suffix}", p.name), shape: p.shape.clone(), data });
            }
        }
        Ok(out)
    }

    /// Restores state saved by [`Optimizer::state_to_host`] and the step count `t`. Every
    /// state tensor this optimizer keeps must be present with the right size.
    pub fn load_state(&mut self, be: &B, params: &ParamSet<B>, state: &[HostTensor], t: u64) -> Result<()> {
        for (k, p) in params.tensors.iter().enumerate() {
            for (suffix, buf) in [("m", &mut self.state1[k]), ("v", &mut self.state2[k])] {
                if be.len(buf) == 0 {
                    continue;
                }
                let name = format!("{}.{suffix}", p.name);
                let h = state
                    .iter()
                    .find(|h| h.name == name)
                    .ok_or_else(|| Error::invalid("Optimizer::load_state", "state", format!("no tensor `{name}`")))?;
                if h.data.len() != p.numel() {
                    return Err(Error::shape(
                        "Optimizer::load_state",
                        "state",
                        format!("{} elements for `{name}`", p.numel()),
                        format!("{} elements", h.data.len()),
                    ));
                }
                let host: Vec<B::T> = h.data.iter().map(|&x| B::T::from_f64(x)).collect();
                be.write(buf, &host)?;
            }
        }
        self.set_steps(be, t)
    }

    /// Sets the step count, on the host and the device (after steps were replayed from a
    /// recording, which advanced only the device's count).
    pub fn set_steps(&mut self, be: &B, t: u64) -> Result<()> {
        let t32 = u32::try_from(t)
            .map_err(|_| Error::invalid("Optimizer::set_steps", "t", format!("{t} steps exceed the u32 counter")))?;
        be.write_ids(&mut self.t_dev, &[t32])?;
        self.t = t;
        Ok(())
    }

    /// One step on every tensor using its accumulated gradient, then zeroes the gradients.
    /// `users`/`items (B)` are the batch's ids: lazy embedding groups touch only those rows
    /// (their distinct rows are found once per id side).
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
        be.counter_add(&mut self.t_dev, 1)?;
        params.touch();
        let mut have_rows = [false, false];
        let tensors = params.tensors.iter_mut().zip(grads.tensors.iter_mut());
        for (idx, ((p, g), (s1, s2))) in tensors.zip(self.state1.iter_mut().zip(self.state2.iter_mut())).enumerate() {
            let slot = Slot { idx, done: false, group: self.cfg.group(p.role), p, g, s1, s2 };
            let (ids, uniq, have) = if matches!(slot.p.role, Role::Embedding(IdSource::User)) {
                (users, &mut self.uniq_users, &mut have_rows[0])
            } else {
                (items, &mut self.uniq_items, &mut have_rows[1])
            };
            update(be, &mut [slot], ids, uniq, have, b, &self.t_dev)?;
        }
        Ok(())
    }

    /// [`Optimizer::step`] in two independent halves, run by `fork` (side by side, on a fast
    /// step's two threads): the tables indexed by users, and the tables indexed by items; each
    /// dense tensor joins the half that has fewer dense elements so far (ties: the items'), so
    /// NeuMF-8's big first-layer weight and its other dense tensors land on different threads.
    /// Each half finds its batch's distinct rows once. Every tensor is updated exactly as by
    /// [`Optimizer::step`], so the split changes no number.
    #[allow(clippy::too_many_arguments)]
    pub fn step_halves(
        &mut self,
        be: &B,
        params: &mut ParamSet<B>,
        grads: &mut ParamSet<B>,
        users: &B::Ids,
        items: &B::Ids,
        b: usize,
        fork: &impl Fork,
    ) -> Result<()> {
        let none = |_: HalfGrads<'_, '_, B>| Ok(());
        self.step_halves_after(be, params, grads, users, items, b, fork, (none, none))
    }

    /// [`Optimizer::step_halves`], each half first running its `before` closure (users' half:
    /// `before.0`, items': `before.1`) on the gradients it is about to consume
    /// ([`HalfGrads`]), on the same thread, with no join between the two. The CPU's two-lane
    /// step scatters a side's embedding gradients there, so it needs one fork per step for
    /// scatter and update instead of two.
    #[allow(clippy::too_many_arguments)]
    pub fn step_halves_after<PU, PI>(
        &mut self,
        be: &B,
        params: &mut ParamSet<B>,
        grads: &mut ParamSet<B>,
        users: &B::Ids,
        items: &B::Ids,
        b: usize,
        fork: &impl Fork,
        before: (PU, PI),
    ) -> Result<()>
    where
        PU: FnOnce(HalfGrads<'_, '_, B>) -> Result<()> + Send,
        PI: FnOnce(HalfGrads<'_, '_, B>) -> Result<()> + Send,
    {
        self.t += 1;
        be.counter_add(&mut self.t_dev, 1)?;
        params.touch();
        let n = params.tensors.len();
        let mut halves: [Vec<Slot<'_, B>>; 2] = [Vec::with_capacity(n), Vec::with_capacity(n)];
        let jobs = params
            .tensors
            .iter_mut()
            .zip(grads.tensors.iter_mut())
            .zip(self.state1.iter_mut().zip(self.state2.iter_mut()))
            .enumerate();
        let mut dense = [0usize; 2];
        for (idx, ((p, g), (s1, s2))) in jobs {
            let side = half_of(p.role, p.numel(), &mut dense);
            halves[side].push(Slot { idx, done: false, group: self.cfg.group(p.role), p, g, s1, s2 });
        }
        let (uniq_users, uniq_items, t_dev) = (&mut self.uniq_users, &mut self.uniq_items, &self.t_dev);
        let [mut user_half, mut item_half] = halves;
        let (pu, pi) = before;
        let (ru, ri) = fork.fork(
            || {
                pu(HalfGrads { slots: &mut user_half, t_dev })?;
                update(be, &mut user_half, users, uniq_users, &mut false, b, t_dev)
            },
            || {
                pi(HalfGrads { slots: &mut item_half, t_dev })?;
                update(be, &mut item_half, items, uniq_items, &mut false, b, t_dev)
            },
        );
        ru.and(ri)
    }
}

/// The gradients one half of [`Optimizer::step_halves_after`] will consume, lent to its
/// `before` closure: the half's embedding tables and its other tensors, in set order. The
/// closure may also update a table itself ([`HalfGrads::tables`], [`TableStep::done`]), which
/// the half then leaves alone.
pub struct HalfGrads<'s, 'a, B: Backend> {
    slots: &'s mut [Slot<'a, B>],
    t_dev: &'s B::Ids,
}

impl<B: Backend> HalfGrads<'_, '_, B> {
    /// This half's embedding tables' gradients (by their index in the set, as the model's
    /// blocks name them), and its other gradients in set order.
    pub fn tables_and_rest(&mut self) -> Result<(SideTables<'_, B>, Vec<&mut Tensor<B>>)> {
        let mut tables = SideTables::default();
        let mut rest = Vec::with_capacity(self.slots.len());
        for s in self.slots.iter_mut() {
            if matches!(s.g.role, Role::Embedding(_)) {
                tables.insert(s.idx, &mut s.g.buf)?;
            } else {
                rest.push(&mut *s.g);
            }
        }
        Ok((tables, rest))
    }

    /// This half's embedding tables not yet updated, each with what its update needs: the
    /// table, its gradient, its optimizer state and rule, and the step count (as the backend
    /// holds it: `t` after this step's increment). A closure that updates a table itself, by
    /// the same rule, marks it [`TableStep::done`].
    pub fn tables(&mut self) -> (Vec<TableStep<'_, B>>, &B::Ids) {
        let steps = self
            .slots
            .iter_mut()
            .filter(|s| matches!(s.p.role, Role::Embedding(_)) && !s.done)
            .map(|s| TableStep {
                idx: s.idx,
                group: *s.group,
                p: &mut *s.p,
                g: &mut *s.g,
                s1: &mut *s.s1,
                s2: &mut *s.s2,
                done: &mut s.done,
            })
            .collect();
        (steps, self.t_dev)
    }
}

/// One embedding table's update, lent by [`HalfGrads::tables`]: Adam's `s1, s2` are its first
/// and second moments, SGD's `s1` its momentum.
pub struct TableStep<'s, B: Backend> {
    /// The table's index in its set.
    pub idx: usize,
    pub group: GroupConfig,
    pub p: &'s mut Tensor<B>,
    pub g: &'s mut Tensor<B>,
    pub s1: &'s mut B::Buf,
    pub s2: &'s mut B::Buf,
    done: &'s mut bool,
}

impl<B: Backend> TableStep<'_, B> {
    /// Records that the caller updated the table (and consumed its gradient) this step.
    pub fn done(&mut self) {
        *self.done = true;
    }
}

/// Which half of [`Optimizer::step_halves`] updates a tensor of this `role` and `numel`
/// elements, called on the tensors in order with `dense` starting at `[0, 0]`: 0 for the
/// users' tables, 1 for the items' tables and the running statistics, and for a dense tensor
/// the half with fewer dense elements so far (ties: the items'), which it then joins.
pub fn half_of(role: Role, numel: usize, dense: &mut [usize; 2]) -> usize {
    match role {
        Role::Embedding(IdSource::User) => 0,
        Role::Embedding(IdSource::Item) | Role::Stat => 1,
        _ => {
            let side = usize::from(dense[1] <= dense[0]);
            dense[side] += numel;
            side
        }
    }
}

/// Runs two independent closures and returns both results: in turn ([`InTurn`]), or side by
/// side on two threads (the CPU's two-lane step implements it with its helper thread).
pub trait Fork {
    fn fork<RA: Send, RB: Send>(&self, a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB);
}

/// A [`Fork`] that runs `a`, then `b`, on the calling thread.
pub struct InTurn;

impl Fork for InTurn {
    fn fork<RA: Send, RB: Send>(&self, a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
        (a(), b())
    }
}

/// One tensor's share of an optimizer step.
struct Slot<'a, B: Backend> {
    /// The tensor's index in its set.
    idx: usize,
    /// Updated already, by a fast step's own code ([`TableStep::done`]).
    done: bool,
    /// By reference: a slot is built for every tensor at every step, and a copy of the rule
    /// made each half's list of slots too long for the allocator's per-thread cache.
    group: &'a GroupConfig,
    p: &'a mut crate::params::Tensor<B>,
    g: &'a mut crate::params::Tensor<B>,
    s1: &'a mut B::Buf,
    s2: &'a mut B::Buf,
}

/// Updates `slots`: lazy embedding groups only on the distinct rows of `ids` (computed into
/// `uniq` the first time one needs them this step, which `have_rows` records), every other
/// tensor whole.
fn update<B: Backend>(
    be: &B,
    slots: &mut [Slot<'_, B>],
    ids: &B::Ids,
    uniq: &mut B::Ids,
    have_rows: &mut bool,
    b: usize,
    t_dev: &B::Ids,
) -> Result<()> {
    for Slot { group, p, g, s1, s2, .. } in slots.iter_mut().filter(|s| !s.done) {
        let n = p.numel();
        match (p.role, group.lazy) {
            (Role::Stat, _) => continue, // running statistics: the forward pass moves them
            (Role::Embedding(_), true) => {
                let (rows, d) = (p.rows(), p.row_width());
                if !*have_rows {
                    be.unique_ids(ids, b, rows, uniq)?;
                    *have_rows = true;
                }
                match group.rule {
                    OptimKind::Adam(hp) => {
                        be.adam_step_rows(&mut p.buf, &mut g.buf, s1, s2, uniq, d, rows, &hp, t_dev)?
                    }
                    OptimKind::Sgd(hp) => be.sgd_step_rows(&mut p.buf, &mut g.buf, s1, uniq, d, rows, &hp)?,
                }
            }
            _ => match group.rule {
                OptimKind::Adam(hp) => be.adam_step(&mut p.buf, &mut g.buf, s1, s2, n, &hp, t_dev)?,
                OptimKind::Sgd(hp) => be.sgd_step(&mut p.buf, &mut g.buf, s1, n, &hp)?,
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AnyModel, Model, ModelConfig, ModelKind};
    use ncf_core::Float;
    use ncf_cpu::CpuBackend;

    /// A model with many tensors (an MLP of 19 dense layers: 40 dense tensors, about 20 per
    /// side) updates every tensor and zeroes every gradient, exactly as one tensor at a time
    /// would; and the two-half step gives the plain step's weights bit for bit.
    #[test]
    fn a_deep_mlp_updates_every_tensor() {
        let be = CpuBackend::<f64>::default();
        let mut cfg = ModelConfig::new(ModelKind::Mlp, 6, 5);
        cfg.layers = vec![8; 20];
        let (users, items) = (vec![0u32, 1, 2, 5], vec![4u32, 3, 0, 1]);
        let mut results = Vec::new();
        for halves in [false, true] {
            let mut m = AnyModel::new(&be, &cfg, 4, &mut ncf_core::rng::seeded(3, 1)).unwrap();
            let before = m.params().to_host(&be).unwrap();
            let mut opt = Optimizer::new(&be, m.params(), OptimConfig::adam(0.01), 4).unwrap();
            for _ in 0..2 {
                let (p, g) = m.params_and_grads();
                for t in &mut g.tensors {
                    let ids: Option<&[u32]> = match t.role {
                        Role::Embedding(IdSource::User) => Some(&users),
                        Role::Embedding(IdSource::Item) => Some(&items),
                        _ => None,
                    };
                    let d = t.row_width();
                    match ids {
                        // Lazy rows: a gradient only where the batch has one.
                        Some(ids) => ids.iter().for_each(|&r| t.buf[r as usize * d..][..d].fill(0.5)),
                        None => t.buf.fill(0.5),
                    }
                }
                if halves {
                    opt.step_halves(&be, p, g, &users, &items, 4, &InTurn).unwrap();
                } else {
                    opt.step(&be, p, g, &users, &items, 4).unwrap();
                }
                assert!(
                    m.grads().tensors.iter().all(|t| t.buf.iter().all(|&x| x == 0.0)),
                    "every gradient is consumed"
                );
            }
            let after = m.params().to_host(&be).unwrap();
            assert!(after.len() > 40);
            for (a, b) in before.iter().zip(&after) {
                // Adam's steps move every updated element by about lr each.
                let moved = a.data.iter().zip(&b.data).filter(|(x, y)| (*x - *y).abs() > 0.009).count();
                let want = if a.name.contains("embedding") { 4 * a.shape[1] } else { a.data.len() };
                assert_eq!(moved, want, "{}", a.name);
            }
            results.push(after);
        }
        assert_eq!(results[0], results[1], "step and step_halves give the same weights");
    }

    /// With all gradients zero, only regularization moves weights: L2 on the embedding group
    /// (lazy: only the batch's rows) and decoupled decay on the weight group, nothing on biases.
    #[test]
    fn decay_is_per_group_and_lazy_rows_stay_lazy() {
        let be = CpuBackend::<f64>::default();
        let mut cfg = ModelConfig::new(ModelKind::NeuMf, 4, 5);
        cfg.init.bias = crate::Init::Uniform { a: 0.5 };
        let mut model = AnyModel::new(&be, &cfg, 2, &mut ncf_core::rng::seeded(3, 0)).unwrap();
        let before = model.params().to_host(&be).unwrap();
        let sgd = OptimKind::Sgd(SgdHp { lr: 0.1, momentum: 0.0, decay: Decay::None });
        let ocfg = OptimConfig::uniform(sgd, true)
            .with_decay(Group::Embedding, Decay::L2(0.5))
            .with_decay(Group::Weight, Decay::Decoupled(0.2));
        let mut opt = Optimizer::new(&be, model.params(), ocfg, 2).unwrap();
        let (users, items) = (vec![1u32, 1], vec![0u32, 3]);
        let (params, grads) = model.params_and_grads();
        opt.step(&be, params, grads, &users, &items, 2).unwrap();
        let after = model.params().to_host(&be).unwrap();
        for (b, a) in before.iter().zip(&after) {
            let role = model.params().tensors[model.params().index(&b.name).unwrap()].role;
            for (k, (x, y)) in b.data.iter().zip(&a.data).enumerate() {
                let want = match role {
                    // L2: g = 0.5·w, w ← w − 0.1·0.5·w = 0.95·w, on touched rows only.
                    Role::Embedding(IdSource::User) if k / (b.data.len() / 4) == 1 => 0.95 * x,
                    Role::Embedding(IdSource::Item) if [0, 3].contains(&(k / (b.data.len() / 5))) => 0.95 * x,
                    Role::Embedding(_) => *x,
                    // Decoupled: w ← (1 − 0.1·0.2)·w.
                    Role::Weight => 0.98 * x,
                    Role::Bias | Role::Stat => *x,
                };
                assert!((y - want).abs() <= 1e-15 * want.abs().max(1.0), "{}[{k}]: {y} vs {want}", b.name);
            }
        }
        assert!(model.grads().to_host(&be).unwrap().iter().all(|t| t.data.iter().all(|g| *g == f64::ZERO)));
    }
}
