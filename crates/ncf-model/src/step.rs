//! One training step, end to end: forward, fused sigmoid-BCE, backward, optimizer.

use crate::models::Model;
use crate::optim::Optimizer;
use ncf_core::{Backend, Float, Result};

/// A mini-batch on the device: `users, items (B)` and labels `y (B)` in {0, 1}.
/// Buffers have room for `capacity` rows; `len` rows are in use.
///
/// On a backend with two lanes ([`Backend::lanes`]), [`Batch::set`] also writes the two halves
/// of an even batch into their own buffers ([`Batch::halves`]), so that each lane of
/// [`train_step`] reads its rows from the start of a buffer.
pub struct Batch<B: Backend> {
    pub users: B::Ids,
    pub items: B::Ids,
    pub labels: B::Buf,
    pub len: usize,
    halves: Option<[Half<B>; 2]>,
    /// The `len` the halves were written for (a batch written by the device sampler has none).
    halves_of: Option<usize>,
}

/// One half of a batch (see [`Batch::halves`]).
pub struct Half<B: Backend> {
    pub users: B::Ids,
    pub items: B::Ids,
    pub labels: B::Buf,
}

/// Below this many rows a batch is not split into lanes: each half would be too small to pay
/// for the hand-off.
pub const MIN_LANE_BATCH: usize = 64;

impl<B: Backend> Batch<B> {
    pub fn with_capacity(be: &B, capacity: usize) -> Result<Self> {
        let halves = if be.lanes() >= 2 && capacity >= MIN_LANE_BATCH {
            let h = capacity / 2;
            let half = || -> Result<Half<B>> {
                Ok(Half { users: be.zeros_ids(h)?, items: be.zeros_ids(h)?, labels: be.zeros(h)? })
            };
            Some([half()?, half()?])
        } else {
            None
        };
        Ok(Batch {
            users: be.zeros_ids(capacity)?,
            items: be.zeros_ids(capacity)?,
            labels: be.zeros(capacity)?,
            len: 0,
            halves,
            halves_of: None,
        })
    }

    /// Copies a host batch in (no allocation once the buffers exist).
    pub fn set(&mut self, be: &B, users: &[u32], items: &[u32], labels: &[B::T]) -> Result<()> {
        be.write_ids(&mut self.users, users)?;
        be.write_ids(&mut self.items, items)?;
        be.write(&mut self.labels, labels)?;
        self.len = users.len().min(items.len()).min(labels.len());
        self.halves_of = None;
        let n = self.len;
        if let Some(halves) = &mut self.halves
            && n.is_multiple_of(2)
            && n >= MIN_LANE_BATCH
        {
            let h = n / 2;
            for (k, half) in halves.iter_mut().enumerate() {
                let r = k * h..(k + 1) * h;
                be.write_ids(&mut half.users, &users[r.clone()])?;
                be.write_ids(&mut half.items, &items[r.clone()])?;
                be.write(&mut half.labels, &labels[r])?;
            }
            self.halves_of = Some(n);
        }
        Ok(())
    }

    /// The batch's first and second half, when [`Batch::set`] wrote them for the current `len`
    /// (an even batch of at least [`MIN_LANE_BATCH`] rows on a two-lane backend).
    pub fn halves(&self) -> Option<&[Half<B>; 2]> {
        if self.halves_of == Some(self.len) { self.halves.as_ref() } else { None }
    }
}

/// One lane's `∂L/∂logits` and loss accumulator.
pub struct LaneScratch<B: Backend> {
    pub dlogits: B::Buf,
    pub loss: B::Buf,
}

/// Buffers a step needs besides the model's own: `∂L/∂logits (B)` and a loss accumulator, and
/// the same per lane.
pub struct StepScratch<B: Backend> {
    pub dlogits: B::Buf,
    /// `loss[0]` accumulates each step's mean loss until the caller reads and resets it.
    pub loss: B::Buf,
    /// Each lane accumulates the mean loss of its half; a step's loss is their average.
    pub lanes: [LaneScratch<B>; 2],
}

impl<B: Backend> StepScratch<B> {
    pub fn new(be: &B, max_batch: usize) -> Result<Self> {
        let h = if be.lanes() >= 2 { max_batch / 2 } else { 0 };
        let lane = || -> Result<LaneScratch<B>> { Ok(LaneScratch { dlogits: be.zeros(h)?, loss: be.zeros(1)? }) };
        Ok(StepScratch { dlogits: be.zeros(max_batch)?, loss: be.zeros(1)?, lanes: [lane()?, lane()?] })
    }

    /// Reads the accumulated loss and resets it to zero (one device→host copy, plus one per
    /// lane on a two-lane backend).
    pub fn take_loss(&mut self, be: &B) -> Result<f64> {
        let mut l = be.download(&self.loss)?[0].to_f64();
        be.fill(&mut self.loss, 1, B::T::ZERO)?;
        if be.lanes() >= 2 {
            for lane in &mut self.lanes {
                l += 0.5 * be.download(&lane.loss)?[0].to_f64();
                be.fill(&mut lane.loss, 1, B::T::ZERO)?;
            }
        }
        Ok(l)
    }
}

/// `forward → L = BCE(σ(logits), y) → backward → optimizer step` on one batch.
/// The batch's mean loss is added to `scratch.loss[0]` (or, split into lanes, to the lanes'
/// accumulators; [`StepScratch::take_loss`] sums them).
///
/// On a two-lane backend an even batch of at least [`MIN_LANE_BATCH`] rows goes through
/// [`Model::forward_backward_lanes`] instead: its halves run forward and backward side by side.
pub fn train_step<B: Backend, M: Model<B>>(
    be: &B,
    model: &mut M,
    opt: &mut Optimizer<B>,
    batch: &Batch<B>,
    scratch: &mut StepScratch<B>,
) -> Result<()> {
    let b = batch.len;
    if !model.forward_backward_lanes(be, batch, scratch)? {
        model.forward(be, &batch.users, &batch.items, b)?;
        be.bce_with_logits(model.logits(), &batch.labels, b, &mut scratch.loss, &mut scratch.dlogits)?;
        model.backward(be, &batch.users, &batch.items, &scratch.dlogits, b)?;
    }
    let (params, grads) = model.params_and_grads();
    opt.step(be, params, grads, &batch.users, &batch.items, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AnyModel, ModelConfig, ModelKind};
    use ncf_cpu::CpuBackend;

    /// A batch of `b` rows over `users × items`, a fifth of them positive.
    fn rows(b: usize, users: u32, items: u32) -> (Vec<u32>, Vec<u32>, Vec<f64>) {
        let u = (0..b as u32).map(|k| (k * 7 + 3) % users).collect();
        let i = (0..b as u32).map(|k| (k * 13 + 5) % items).collect();
        let y = (0..b).map(|k| if k % 5 == 0 { 1.0 } else { 0.0 }).collect();
        (u, i, y)
    }

    fn grads_of(m: &AnyModel<CpuBackend<f64>>) -> Vec<(String, bool, Vec<f64>)> {
        m.grads()
            .tensors
            .iter()
            .map(|t| (t.name.clone(), matches!(t.role, crate::Role::Embedding(_)), t.buf.clone()))
            .collect()
    }

    /// The two-lane step gives the one-lane step's gradients: the embedding tables' bit for bit
    /// (same per-row values, scattered in the same row order), the dense ones up to the
    /// rounding of summing two halves; the loss too. And it does not depend on whether the
    /// second lane runs on a helper thread.
    #[test]
    fn two_lanes_match_one_lane_and_any_thread_count() {
        let be = CpuBackend::<f64>::default();
        for kind in [ModelKind::NeuMf, ModelKind::Mlp] {
            let mut cfg = ModelConfig::new(kind, 40, 30);
            cfg.init = crate::InitConfig::for_gradcheck();
            let b = 128;
            let (u, i, y) = rows(b, 40, 30);
            let fresh = || AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(9, 1)).unwrap();

            // One lane, by hand.
            let mut one = fresh();
            let mut scratch = StepScratch::new(&be, b).unwrap();
            let mut batch = Batch::with_capacity(&be, b).unwrap();
            batch.set(&be, &u, &i, &y).unwrap();
            one.forward(&be, &batch.users, &batch.items, b).unwrap();
            be.bce_with_logits(one.logits(), &batch.labels, b, &mut scratch.loss, &mut scratch.dlogits).unwrap();
            one.backward(&be, &batch.users, &batch.items, &scratch.dlogits, b).unwrap();
            let loss_one = scratch.take_loss(&be).unwrap();

            // Two lanes, on this thread, then with a helper thread in a 2-thread pool.
            let mut runs = Vec::new();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut two = fresh();
                let (ok, loss) = pool.install(|| {
                    be.run_steps(|| {
                        assert_eq!(ncf_cpu::team::helper_active(), threads == 2);
                        let ok = two.forward_backward_lanes(&be, &batch, &mut scratch).unwrap();
                        (ok, scratch.take_loss(&be).unwrap())
                    })
                });
                assert!(ok, "{kind}: an even batch of {b} rows splits into lanes");
                runs.push((grads_of(&two), loss));
            }
            assert_eq!(runs[0], runs[1], "{kind}: one thread and two threads give identical results");
            let (two, loss_two) = &runs[0];
            assert!((loss_one - loss_two).abs() <= 1e-12 * loss_one.abs(), "{kind}: loss {loss_one} vs {loss_two}");
            for ((name, emb, g1), (_, _, g2)) in grads_of(&one).iter().zip(two) {
                if *emb {
                    assert_eq!(g1, g2, "{kind}: {name} must match bit for bit");
                } else {
                    let worst = g1.iter().zip(g2).map(|(a, b)| (a - b).abs() / a.abs().max(1e-300)).fold(0.0, f64::max);
                    let max = g1.iter().map(|a| a.abs()).fold(0.0, f64::max);
                    assert!(max > 0.0 && worst < 1e-9, "{kind}: {name} differs by rel {worst:e}");
                }
            }
        }
    }

    /// Odd batches, small batches and GMF/MF take the one-lane path.
    #[test]
    fn lanes_only_for_even_batches_of_dense_models() {
        let be = CpuBackend::<f64>::default();
        let b = 130;
        let mut batch = Batch::with_capacity(&be, b).unwrap();
        let mut scratch = StepScratch::new(&be, b).unwrap();
        for (kind, len, want) in [
            (ModelKind::NeuMf, 129, false),
            (ModelKind::NeuMf, 62, false),
            (ModelKind::NeuMf, 64, true),
            (ModelKind::Gmf, 128, false),
            (ModelKind::Mf, 128, false),
        ] {
            let cfg = ModelConfig::new(kind, 40, 30);
            let mut m = AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(9, 1)).unwrap();
            let (u, i, y) = rows(len, 40, 30);
            batch.set(&be, &u, &i, &y).unwrap();
            assert_eq!(batch.halves().is_some(), len % 2 == 0 && len >= MIN_LANE_BATCH);
            assert_eq!(m.forward_backward_lanes(&be, &batch, &mut scratch).unwrap(), want, "{kind} b={len}");
        }
    }
}
