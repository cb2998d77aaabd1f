//! # ncf-core
//!
//! The shared vocabulary of ncf-rs. Read this crate first.
//!
//! ## Dimension glossary
//!
//! Every op documents its shapes with these letters (row-major, last index fastest):
//!
//! | letter | meaning |
//! |---|---|
//! | `B` | batch size (rows of a mini-batch) |
//! | `U` | number of users (rows of a user embedding table) |
//! | `I` | number of items, or a dense layer's input width (the doc says which) |
//! | `D` | embedding width |
//! | `F` | GMF predictive factors (GMF embedding width) |
//! | `H` | a hidden layer's width |
//! | `O` | a dense layer's output width |
//! | `N` | rows of a generic table, or a flat element count |
//!
//! ## Conventions
//!
//! * Dense weights are stored `(O, I)`, as in PyTorch: `out = inp · Wᵀ + bias`.
//! * Backward ops **accumulate** into gradient buffers (`+=`). Gradients are zeroed by whoever
//!   consumes them: the optimizer step zeroes every gradient it applies, and the gradient check
//!   zeroes before each backward.
//! * Buffers may be longer than the tensor an op uses (workspaces are sized for the largest
//!   batch); ops read and write only the leading `Π dims` elements and reject shorter buffers.

pub mod backend;
pub mod check;
pub mod error;
pub mod float;
pub mod optim;
pub mod rng;
pub mod sample;
pub mod tol;

pub use backend::Backend;
pub use error::{Error, Result};
pub use float::Float;
pub use optim::{AdamHp, Decay, OptimKind, SgdHp};
pub use rng::Rng;
pub use tol::{Comparison, Tol};
