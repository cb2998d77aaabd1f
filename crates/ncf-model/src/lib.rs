//! # ncf-model
//!
//! The four NCF models with hand-written forward and backward passes, generic over any
//! [`ncf_core::Backend`], plus the optimizer, a training step and the gradient check.
//!
//! Reading order: [`params`] (flat named tensors), [`init`], [`layers`] (embedding pair, GMF
//! tower, MLP tower, prediction head: forward and backward side by side), [`models`] (each
//! model's forward and backward, straight-line), [`batch`], [`optim`], [`step`] (the reference
//! training step, and the [`FastStep`] a backend may offer beside it), [`gradcheck`].
//! [`split`] is what a fast step needs from a model; the reference path never uses it.
//!
//! No import circles: `init`; `params` (init); `layers` (params); `models` (layers, params,
//! init); `batch` (nothing); `optim` (params); `step` (models, batch, optim); `split` (models,
//! layers, params); `gradcheck` (models, params, init).

#![forbid(unsafe_code)]

pub mod batch;
pub mod gradcheck;
pub mod init;
pub mod layers;
pub mod models;
pub mod optim;
pub mod params;
pub mod split;
pub mod step;

pub use batch::{Batch, StepScratch};
pub use init::{Init, InitConfig};
pub use models::{AnyModel, Gmf, GmfActs, Mf, Mlp, MlpActs, Model, ModelConfig, ModelKind, NeuMf, NeuMfActs, Rating};
pub use optim::{Fork, Group, GroupConfig, HalfGrads, InTurn, OptimConfig, Optimizer, TableStep};
pub use params::{HostTensor, IdSource, ParamSet, Role};
pub use step::{AnyStep, FastStep, PhaseTime, ReferenceStep, Step, StepKind, train_step};
