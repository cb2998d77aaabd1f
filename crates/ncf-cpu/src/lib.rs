//! # ncf-cpu
//!
//! The CPU backend. Each file in `ops/` holds one family of kernels; every fast kernel has a
//! `*_naive` reference next to it, and the tests at the bottom of the file compare the two.
//! [`CpuBackend`] wires the kernels into the [`ncf_core::Backend`] trait and validates inputs.
//!
//! Reading order: `ops/embedding.rs`, `ops/linear.rs` (then `ops/gemm.rs`, the one kernel that
//! is hard to make fast; its docs say in which order to read the files of `ops/gemm/`),
//! `ops/activation.rs`, `ops/loss.rs`, `ops/elementwise.rs`, `ops/optim.rs`, and finally
//! `backend.rs`. `simd.rs` detects the CPU's vector instruction set once, for the GEMM and the
//! optimizer. Then the CPU's fast path beside the reference training step: `step.rs` (the
//! two-lane step) and `team.rs`, how a training epoch uses two cores at microsecond granularity
//! (a helper thread that spins, instead of rayon's sleeping worker).
//!
//! ## Determinism
//!
//! No kernel splits a reduction across threads in a way that depends on the thread count, so a
//! given input produces bit-identical output on 1, 2 or 64 threads. The two-lane training step
//! ([`step`]) splits a batch by its size alone, never by the thread count, so a training run
//! gives the same numbers on any number of threads too.

pub mod alloc;
pub mod als;
pub mod backend;
mod lane;
pub mod ops;
pub mod rank;
pub mod simd;
pub mod step;
pub mod team;
#[cfg(test)]
pub(crate) mod testutil;

pub use alloc::LineAligned;
pub use backend::CpuBackend;
pub use ops::gemm::{CpuFloat, GemmImpl};
pub use step::{MIN_LANE_BATCH, TwoLaneStep};
