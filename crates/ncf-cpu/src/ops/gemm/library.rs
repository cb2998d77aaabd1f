//! The yardstick: `matrixmultiply::sgemm` / `dgemm` behind the same views and checks.

use super::view::{scale_c, validate};
use super::{CpuFloat, MatMut, MatRef};
use ncf_core::Result;

/// `C ← α·A·B + β·C` with `matrixmultiply::sgemm` / `dgemm` (single-threaded; it detects
/// AVX-512 / AVX2+FMA at run time, as [`gemm_scratch`](super::gemm_scratch) does).
pub fn gemm_library<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    validate(&a, &b, &c)?;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        scale_c(beta, c);
        return Ok(());
    }
    // A stride is only ever multiplied by an index of its own dimension, so the stride of a
    // dimension of extent 1 is irrelevant; replace it by 1 so that a huge unused stride cannot
    // wrap when converted to `isize`. Every other stride is < its slice's length ≤ isize::MAX.
    let st = |extent: usize, stride: usize| if extent <= 1 { 1 } else { stride as isize };
    // SAFETY: `validate` checked that every index `r·rs + c·cs` of A, B and C (r < rows, c < cols)
    // lies inside its slice, and that C's view has a distinct slot per element; matrixmultiply
    // reads/writes exactly those elements. `m, n, k > 0`. C is a `&mut` borrow, so it overlaps
    // neither A nor B, and all three borrows outlive this call.
    unsafe {
        T::library_gemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            st(m, a.rs),
            st(k, a.cs),
            b.data.as_ptr(),
            st(k, b.rs),
            st(n, b.cs),
            beta,
            c.data.as_mut_ptr(),
            st(m, c.rs),
            st(n, c.cs),
        );
    }
    Ok(())
}
