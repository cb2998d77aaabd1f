//! General matrix multiply, `C ← α·A·B + β·C`, three ways.
//!
//! Shapes: `A (m, k)`, `B (k, n)`, `C (m, n)`. Every operand is a *strided view*: element `(r, c)`
//! lives at `data[r·rs + c·cs]`. A transpose is therefore a view with its strides swapped, never a
//! copy — the dense layer's `inp · wᵀ` reads `w` in place (see `ops/linear.rs`).
//!
//! * [`gemm_naive`]: the definition as a triple loop. Read it first; every other GEMM is tested
//!   against it.
//! * [`gemm_scratch`]: written here: a BLIS-style blocked kernel in portable Rust that the
//!   compiler vectorizes, and, on AVX-512, a direct kernel for the model's skinny products.
//! * [`gemm_library`]: `matrixmultiply::sgemm` / `dgemm`, the yardstick.
//!
//! ## Reading order
//!
//! The files under `gemm/`, one job each (the split follows the matrixmultiply crate's):
//!
//! 1. `view.rs`: [`MatRef`] and [`MatMut`], and the checks every GEMM runs before it reads
//!    anything.
//! 2. `naive.rs`: [`gemm_naive`], the reference.
//! 3. `dispatch.rs`: [`GemmImpl`] and [`gemm`] (which implementation a dense layer calls), and
//!    [`gemm_scratch`], which sends each product to the direct or the blocked kernel according
//!    to its shape and the CPU's [`SimdLevel`](crate::simd::SimdLevel) (detected in `simd.rs`).
//! 4. `blocked.rs`: the blocked kernel: packing, cache blocking, the register-tiled
//!    micro-kernel, and its copies per instruction set.
//! 5. `direct.rs`: the AVX-512 kernel for skinny products, with no packing of A.
//! 6. `library.rs`: [`gemm_library`], matrixmultiply behind the same views and checks.
//! 7. `element.rs`: [`CpuFloat`], what ties `f32` and `f64` to the kernels: their micro-tiles,
//!    cache blocking and packing buffers.
//! 8. `tests.rs`: every fast kernel against [`gemm_naive`], bit-for-bit checks between kernels
//!    and thread counts, and the error cases.
//!
//! ## Semantics shared by all three
//!
//! * `β = 0` *overwrites* C: whatever C held (NaN included) is never read.
//!   Otherwise C is scaled by β and the product is accumulated into it.
//! * Any of `m`, `n`, `k` may be 0; `k = 0` gives `C ← β·C` (zeros when `β = 0`).
//! * α multiplies the finished dot product (`α = 0` still reads A and B, so an `inf` in them
//!   gives NaN; this is not BLAS's "α = 0 means A and B are not touched").
//! * Inputs are validated before anything runs, and a bad call returns
//!   [`Error::ShapeMismatch`](ncf_core::Error::ShapeMismatch) naming `gemm` and the shapes
//!   instead of panicking: `a.cols == b.rows`, `c` is `(a.rows, b.cols)`, every view fits inside
//!   its slice, and C's view does not alias itself (see [`MatMut`] for exactly which layouts are
//!   accepted). A and B may alias anything (they are only read); `&mut` already keeps C apart
//!   from them.

mod blocked;
pub mod direct;
mod dispatch;
mod element;
mod library;
mod naive;
#[cfg(test)]
mod tests;
mod view;

pub use blocked::{Blocking, Tile};
pub use dispatch::{GemmImpl, PAR_MIN_FLOPS, gemm, gemm_scratch, gemm_scratch_with};
pub use element::CpuFloat;
pub use library::gemm_library;
pub use naive::gemm_naive;
pub use view::{MatMut, MatRef};
