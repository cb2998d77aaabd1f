//! What a training step reads and writes besides the model: the batch, `∂L/∂logits` and the
//! loss accumulator. Below the models and the optimizer; imports neither.

use ncf_core::{Backend, Float, Result};

/// A mini-batch on the device: `users, items (B)` and labels `y (B)` in {0, 1}.
/// Buffers have room for `capacity` rows; `len` rows are in use.
pub struct Batch<B: Backend> {
    pub users: B::Ids,
    pub items: B::Ids,
    pub labels: B::Buf,
    pub len: usize,
}

impl<B: Backend> Batch<B> {
    pub fn with_capacity(be: &B, capacity: usize) -> Result<Self> {
        Ok(Batch {
            users: be.zeros_ids(capacity)?,
            items: be.zeros_ids(capacity)?,
            labels: be.zeros(capacity)?,
            len: 0,
        })
    }

    /// Copies a host batch in (no allocation once the buffers exist).
    pub fn set(&mut self, be: &B, users: &[u32], items: &[u32], labels: &[B::T]) -> Result<()> {
        be.write_ids(&mut self.users, users)?;
        be.write_ids(&mut self.items, items)?;
        be.write(&mut self.labels, labels)?;
        self.len = users.len().min(items.len()).min(labels.len());
        Ok(())
    }
}

/// Buffers a step needs besides the model's own: `∂L/∂logits (B)` and a loss accumulator.
pub struct StepScratch<B: Backend> {
    pub dlogits: B::Buf,
    /// `loss[0]` accumulates each step's mean loss until the caller reads and resets it.
    pub loss: B::Buf,
}

impl<B: Backend> StepScratch<B> {
    pub fn new(be: &B, max_batch: usize) -> Result<Self> {
        Ok(StepScratch { dlogits: be.zeros(max_batch)?, loss: be.zeros(1)? })
    }

    /// Reads the accumulated loss and resets it to zero (one device→host copy).
    pub fn take_loss(&mut self, be: &B) -> Result<f64> {
        let l = be.download(&self.loss)?[0].to_f64();
        be.fill(&mut self.loss, 1, B::T::ZERO)?;
        Ok(l)
    }
}
