//! The reference GEMM: the definition as a triple loop. Every other GEMM is tested against it.

use super::view::validate;
use super::{CpuFloat, MatMut, MatRef};
use ncf_core::Result;

/// `C ← α·A·B + β·C` by the definition: `C[i,j] = α·Σ_p A[i,p]·B[p,j] + β·C[i,j]`.
///
/// One dot product per element of C, `p` in increasing order. It reads B down a column with
/// stride `b.rs`, so it is cache-hostile and runs at a small fraction of peak; it is the reference
/// the fast kernels are tested against.
pub fn gemm_naive<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: MatMut<T>) -> Result<()> {
    validate(&a, &b, &c)?;
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut s = T::ZERO;
            for p in 0..a.cols {
                s += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
            }
            let x = &mut c.data[i * c.rs + j * c.cs];
            *x = if beta == T::ZERO { alpha * s } else { alpha * s + beta * *x };
        }
    }
    Ok(())
}
