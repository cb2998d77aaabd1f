//! One training step, end to end: forward, fused sigmoid-BCE, backward, optimizer.
//!
//! [`train_step`] is the reference: the model's plain forward and backward, op by op, on any
//! backend. A backend may offer a faster step of its own ([`FastStep`]: the CPU's two-lane
//! step in `ncf-cpu`; the GPU's fused step will live in `ncf-cuda`). The trainer asks for the
//! fastest one ([`AnyStep::new`] with [`StepKind::Fast`]); `--step reference` runs this one.
//! Each fast step is tested against this one.

use crate::batch::{Batch, StepScratch};
use crate::models::{AnyModel, Model};
use crate::optim::Optimizer;
use ncf_core::{Backend, Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// `forward → L = BCE(σ(logits), y) → backward → optimizer step` on one batch.
/// The batch's mean loss is added to `scratch.loss[0]`.
pub fn train_step<B: Backend, M: Model<B>>(
    be: &B,
    model: &mut M,
    opt: &mut Optimizer<B>,
    batch: &Batch<B>,
    scratch: &mut StepScratch<B>,
) -> Result<()> {
    let b = batch.len;
    model.forward(be, &batch.users, &batch.items, b)?;
    be.bce_with_logits(model.logits(), &batch.labels, b, &mut scratch.loss, &mut scratch.dlogits)?;
    model.backward(be, &batch.users, &batch.items, &scratch.dlogits, b)?;
    let (params, grads) = model.params_and_grads();
    opt.step(be, params, grads, &batch.users, &batch.items, b)
}

/// One phase of a step, summed over steps: its wall seconds, and the seconds each of its two
/// halves was busy (the half the calling thread runs, then the half it hands to a helper; for
/// a phase that does not split, the whole phase and 0). Where the wall time exceeds the longer
/// half, the difference is the hand-off and the wait for the slower half.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub name: String,
    pub wall_s: f64,
    pub busy_s: [f64; 2],
    /// Steps whose halves the calling thread ran both of, by choice (the CPU step's pace, when
    /// one thread ran faster than two); 0 where the step never chooses.
    #[serde(default)]
    pub solo_steps: u64,
    /// The last measured time for a cache line to go to the helper thread's core and back, in
    /// nanoseconds (the CPU step's pace); infinite (`null` in JSON) when the helper did not
    /// answer; `None` where none was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_ns: Option<f64>,
}

/// A way to run training steps.
pub trait Step<B: Backend> {
    /// A short name for reports (`reference`, `cpu-two-lane`).
    fn name(&self) -> &'static str;
    /// Runs `f`, a stretch of back-to-back steps (an epoch), with whatever this step needs
    /// around it (the CPU's two-lane step keeps a helper thread spinning). Default: just `f`.
    fn around_steps<R>(f: impl FnOnce() -> R) -> R
    where
        Self: Sized,
    {
        f()
    }
    /// One step: the same contract as [`train_step`].
    fn step(
        &mut self,
        be: &B,
        model: &mut AnyModel<B>,
        opt: &mut Optimizer<B>,
        batch: &Batch<B>,
        scratch: &mut StepScratch<B>,
    ) -> Result<()>;
    /// Reads and resets the loss summed over the steps since the last call.
    fn take_loss(&mut self, be: &B, scratch: &mut StepScratch<B>) -> Result<f64> {
        scratch.take_loss(be)
    }
    /// Reads and resets the time spent in each phase of the step since the last call, in step
    /// order, for a step that keeps it (the CPU's two-lane step with `NCF_STEP_TIMES=1`);
    /// empty otherwise.
    fn take_phase_times(&mut self) -> Vec<PhaseTime> {
        Vec::new()
    }
}

/// [`train_step`] as a [`Step`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferenceStep;

impl<B: Backend> Step<B> for ReferenceStep {
    fn name(&self) -> &'static str {
        "reference"
    }
    fn step(
        &mut self,
        be: &B,
        model: &mut AnyModel<B>,
        opt: &mut Optimizer<B>,
        batch: &Batch<B>,
        scratch: &mut StepScratch<B>,
    ) -> Result<()> {
        train_step(be, model, opt, batch, scratch)
    }
}

/// A backend's fastest training step.
pub trait FastStep: Backend + Sized {
    type Step: Step<Self>;
    /// The step, with room for batches of up to `max_batch` rows.
    fn fast_step(&self, max_batch: usize) -> Result<Self::Step>;
}

/// Which step the trainer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepKind {
    /// The backend's fastest step ([`FastStep`]).
    #[default]
    Fast,
    /// The plain op-by-op step ([`train_step`]).
    Reference,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Fast => "fast",
            StepKind::Reference => "reference",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [StepKind::Fast, StepKind::Reference]
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::invalid("StepKind::from_str", "step", format!("`{s}` is not one of fast, reference")))
    }
}

/// The step chosen at run time.
pub enum AnyStep<B: FastStep> {
    Reference(ReferenceStep),
    Fast(B::Step),
}

impl<B: FastStep> AnyStep<B> {
    pub fn new(be: &B, kind: StepKind, max_batch: usize) -> Result<Self> {
        Ok(match kind {
            StepKind::Reference => AnyStep::Reference(ReferenceStep),
            StepKind::Fast => AnyStep::Fast(be.fast_step(max_batch)?),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            AnyStep::Reference(s) => Step::<B>::name(s),
            AnyStep::Fast(s) => s.name(),
        }
    }

    /// Runs `f` (an epoch's steps) inside the chosen step's [`Step::around_steps`].
    pub fn run_steps<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        match self {
            AnyStep::Reference(_) => f(self),
            AnyStep::Fast(_) => B::Step::around_steps(|| f(self)),
        }
    }

    pub fn step(
        &mut self,
        be: &B,
        model: &mut AnyModel<B>,
        opt: &mut Optimizer<B>,
        batch: &Batch<B>,
        scratch: &mut StepScratch<B>,
    ) -> Result<()> {
        match self {
            AnyStep::Reference(s) => s.step(be, model, opt, batch, scratch),
            AnyStep::Fast(s) => s.step(be, model, opt, batch, scratch),
        }
    }

    pub fn take_loss(&mut self, be: &B, scratch: &mut StepScratch<B>) -> Result<f64> {
        match self {
            AnyStep::Reference(s) => s.take_loss(be, scratch),
            AnyStep::Fast(s) => s.take_loss(be, scratch),
        }
    }

    /// [`Step::take_phase_times`] of the chosen step.
    pub fn take_phase_times(&mut self) -> Vec<PhaseTime> {
        match self {
            AnyStep::Reference(s) => Step::<B>::take_phase_times(s),
            AnyStep::Fast(s) => s.take_phase_times(),
        }
    }
}
