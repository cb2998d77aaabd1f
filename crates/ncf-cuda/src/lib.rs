//! # ncf-cuda
//!
//! The GPU side of ncf-rs. Kernels live in `kernels/*.cu`, one file per CPU ops file
//! (`embedding.cu` ↔ `ncf-cpu/src/ops/embedding.rs`, …) with the same kernel names; they are
//! embedded with `include_str!` ([`kernels`]) and compiled at run time by NVRTC ([`nvrtc`]).
//! Nothing CUDA is needed to build this crate: cudarc loads `libcuda`, `libnvrtc` and
//! `libcublas` when first used, and [`device::probe`] checks that each is present before any
//! call that would otherwise panic.
//!
//! Each op of [`CudaBackend`] is [`ops`] (the shared argument checks of `ncf_core::check`, then
//! the op's launch plan) and the plan's execution. A [`plan::Plan`] lists the op's steps as
//! data: a typed [`plan::Kernel`] with grid, block, shared memory and argument values, or a
//! cuBLAS `sgemm` call. The GPU runs it with `cuLaunchKernel` / `cublasSgemm`; the CPU emulator
//! of the tests (`emu/`, `tests/emulated.rs`) runs the same plans built on host buffers.
//!
//! Training runs the fused step ([`step`], planned by [`fused`]: three kernels per step, the
//! work following the batch) where it applies, else the reference step op by op.
//!
//! Status: kernels, run-time compilation (checked in CI on a CPU-only machine, to PTX and to
//! sm_90 CUBIN), the kernel cache ([`cache`]), the device probe behind `--device cuda`, and
//! [`CudaBackend`], which is written and compiles but has not yet run on a GPU: its parity
//! tests (`tests/parity.rs`) skip without a device.

pub mod backend;
pub mod cache;
pub mod device;
pub mod error;
pub mod fused;
pub mod kernels;
pub mod nvrtc;
pub mod ops;
pub mod plan;
pub mod step;

pub use backend::CudaBackend;
pub use error::{CudaError, Result};
pub use plan::GpuGemm;
