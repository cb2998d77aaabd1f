//! Named tolerances and tensor comparison that prints evidence on failure.

use std::fmt;

/// An element passes when `|got − want| ≤ abs` **or** `rel_err ≤ rel`, where
/// `rel_err = |got − want| / max(|got|, |want|, REL_FLOOR)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub abs: f64,
    pub rel: f64,
}

/// Denominator floor for relative errors: values smaller than this are compared on an absolute
/// scale of `REL_FLOOR`, so that a gradient of 1e-14 against 0 does not read as "100% wrong".
pub const REL_FLOOR: f64 = 1e-6;

impl Tol {
    /// Gradient check in f64 (5-point central differences, h = 1e-3, see `ncf-model::gradcheck`):
    /// truncation error ~h⁴·f⁽⁵⁾/30 ≈ 1e-13 and rounding ~ε·|L|/h ≈ 1e-13, so 1e-6 relative
    /// leaves six orders of margin while still catching a 0.1% wrong gradient.
    pub const GRADCHECK_F64: Tol = Tol { abs: 1e-10, rel: 1e-6 };
    /// f64 kernels against their naive twins or the PyTorch oracle: a few ulps of summation order.
    pub const F64_KERNEL: Tol = Tol { abs: 1e-12, rel: 1e-10 };
    /// f32 kernels against their naive twins: reassociated sums of up to ~1e3 terms.
    pub const F32_KERNEL: Tol = Tol { abs: 1e-5, rel: 1e-4 };
}

/// Relative error with the [`REL_FLOOR`] denominator.
pub fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / got.abs().max(want.abs()).max(REL_FLOOR)
}

/// The outcome of comparing two tensors element by element.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub name: String,
    pub len: usize,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Number of elements outside the tolerance.
    pub n_bad: usize,
    /// Up to five failing elements: (index, got, want).
    pub first_bad: Vec<(usize, f64, f64)>,
    pub tol: Tol,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.n_bad == 0
    }
}

/// Compares `got` with `want` (NaN anywhere counts as a failure; lengths must match).
pub fn compare(name: &str, got: &[f64], want: &[f64], tol: Tol) -> Comparison {
    let mut c = Comparison {
        name: name.to_string(),
        len: got.len(),
        max_abs: 0.0,
        max_rel: 0.0,
        n_bad: 0,
        first_bad: Vec::new(),
        tol,
    };
    if got.len() != want.len() {
        c.n_bad = got.len().max(want.len());
        c.max_abs = f64::INFINITY;
        c.max_rel = f64::INFINITY;
        return c;
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let abs = (g - w).abs();
        let rel = rel_err(g, w);
        let bad = !(abs <= tol.abs || rel <= tol.rel); // NaN compares false → bad
        if abs.is_nan() {
            c.max_abs = f64::NAN;
            c.max_rel = f64::NAN;
        } else if !c.max_abs.is_nan() {
            c.max_abs = c.max_abs.max(abs);
            c.max_rel = c.max_rel.max(rel);
        }
        if bad {
            c.n_bad += 1;
            if c.first_bad.len() < 5 {
                c.first_bad.push((i, g, w));
            }
        }
    }
    c
}

/// Convenience for f32 data.
pub fn compare_f32(name: &str, got: &[f32], want: &[f32], tol: Tol) -> Comparison {
    let g: Vec<f64> = got.iter().map(|&x| x as f64).collect();
    let w: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    compare(name, &g, &w, tol)
}

impl fmt::Display for Comparison {
    /// `dW1: max_abs=3.1e-6 max_rel=2.4e-4 bad=3/512 first=[(7, got, want), …]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: max_abs={:.3e} max_rel={:.3e} bad={}/{} (tol abs {:.0e}, rel {:.0e})",
            self.name, self.max_abs, self.max_rel, self.n_bad, self.len, self.tol.abs, self.tol.rel
        )?;
        if !self.first_bad.is_empty() {
            write!(f, " first=[")?;
            for (k, (i, g, w)) in self.first_bad.iter().enumerate() {
                if k > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "#{i}: got {g:.9e} want {w:.9e}")?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

/// Panics with the comparison's evidence unless every element is within tolerance. For tests.
#[track_caller]
pub fn assert_close(name: &str, got: &[f64], want: &[f64], tol: Tol) {
    let c = compare(name, got, want, tol);
    assert!(c.ok(), "{c}");
}

/// [`assert_close`] for f32 data.
#[track_caller]
pub fn assert_close_f32(name: &str, got: &[f32], want: &[f32], tol: Tol) {
    let c = compare_f32(name, got, want, tol);
    assert!(c.ok(), "{c}");
}

/// Panics unless `got` and `want` are equal element for element (bit for bit for floats that
/// compare equal), naming `what`, the lengths, how many elements differ and the first five
/// `(index, got, want)`, instead of printing both whole vectors. For tests.
#[track_caller]
pub fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) {
    let differ: Vec<usize> = got.iter().zip(want).enumerate().filter(|(_, (g, w))| g != w).map(|(i, _)| i).collect();
    if got.len() != want.len() || !differ.is_empty() {
        let first: Vec<String> =
            differ.iter().take(5).map(|&i| format!("#{i}: got {:?} want {:?}", got[i], want[i])).collect();
        panic!(
            "{what}: {} of {} elements differ (lengths {} and {}); first=[{}]",
            differ.len(),
            got.len().min(want.len()),
            got.len(),
            want.len(),
            first.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_reports_evidence_and_catches_nan() {
        let c = compare("x", &[1.0, 2.0, f64::NAN], &[1.0, 2.1, 3.0], Tol { abs: 1e-9, rel: 1e-9 });
        assert_eq!(c.n_bad, 2);
        assert_eq!(c.first_bad[0].0, 1);
        let s = c.to_string();
        assert!(s.contains("x: max_abs=NaN") && s.contains("#1: got"), "{s}");
        let ok = compare("y", &[1.0, 1e-20], &[1.0 + 1e-12, 0.0], Tol::F64_KERNEL);
        assert!(ok.ok(), "{ok}");
    }

    #[test]
    fn length_mismatch_fails() {
        assert!(!compare("z", &[1.0], &[1.0, 2.0], Tol::F64_KERNEL).ok());
    }

    #[test]
    fn assert_same_names_the_first_differences() {
        assert_same("equal", &[1u32, 2, 3], &[1, 2, 3]);
        let e = std::panic::catch_unwind(|| assert_same("ids", &[1u32, 9, 3, 8], &[1, 2, 3, 4])).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert_eq!(msg, "ids: 2 of 4 elements differ (lengths 4 and 4); first=[#1: got 9 want 2, #3: got 8 want 4]");
        assert!(std::panic::catch_unwind(|| assert_same("short", &[1u32], &[1, 2])).is_err());
    }
}
