//! # ncf-model
//!
//! The four NCF models with hand-written forward and backward passes, generic over any
//! [`ncf_core::Backend`], plus the optimizer, a training step and the gradient check.
//!
//! Reading order: [`params`] (flat named tensors), [`init`], [`layers`] (GMF tower, MLP tower,
//! prediction head: forward and backward side by side), [`models`], [`optim`], [`step`],
//! [`gradcheck`].

#![forbid(unsafe_code)]

pub mod gradcheck;
pub mod init;
pub mod layers;
pub mod models;
pub mod optim;
pub mod params;
pub mod step;

pub use init::{Init, InitConfig};
pub use models::{AnyModel, Gmf, Mf, Mlp, Model, ModelConfig, ModelKind, NeuMf};
pub use optim::{Group, GroupConfig, OptimConfig, Optimizer};
pub use params::{HostTensor, IdSource, ParamSet, Role};
pub use step::{Batch, Half, LaneScratch, MIN_LANE_BATCH, StepScratch, train_step};
