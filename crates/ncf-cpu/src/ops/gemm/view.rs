//! Strided matrix views, and the checks every GEMM runs on them before it reads anything.
//!
//! Element `(r, c)` of a view lives at `data[r·rs + c·cs]`, so a transpose is a view with its
//! strides swapped ([`MatRef::t`]), never a copy. [`validate`] is the one place that decides
//! which calls are legal; a bad one is an [`Error::ShapeMismatch`], never a panic.

use ncf_core::{Error, Float, Result};

/// A strided read-only matrix view: element `(r, c)` is `data[r*rs + c*cs]`.
///
/// Row-major `(rows, cols)` storage is `rs = cols, cs = 1`; its transpose is `rs = 1, cs = cols`
/// with rows and cols swapped. Strides of 0 (broadcasts) or views that revisit an element are
/// fine for the read-only operands.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A view with explicit strides.
    pub fn new(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        MatRef { data, rows, cols, rs, cs }
    }
    /// `(rows, cols)` stored row-major (the last index is contiguous).
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }
    /// `(rows, cols)` stored column-major (the first index is contiguous).
    pub fn col_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: 1, cs: rows }
    }
    /// `Xᵀ`, a `(cols_of_stored, rows_of_stored)` view, where `X (rows_of_stored, cols_of_stored)`
    /// is stored row-major in `data`. Nothing is copied.
    pub fn transposed_of_row_major(data: &'a [T], rows_of_stored: usize, cols_of_stored: usize) -> Self {
        MatRef::row_major(data, rows_of_stored, cols_of_stored).t()
    }
    /// The transpose: rows and cols swap, and so do their strides.
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// A strided mutable matrix view, same convention as [`MatRef`].
///
/// Because every element is written, a C view must not alias itself. Accepted: every layout in
/// which one dimension's stride steps over the whole extent of the other, i.e. (possibly padded)
/// row-major `cs ≥ 1, rs ≥ (cols−1)·cs + 1`, or (possibly padded) column-major
/// `rs ≥ 1, cs ≥ (rows−1)·rs + 1`. The stride of a dimension of extent 1 is never used and may be
/// anything. (Some exotic interleavings that happen not to alias are rejected too.)
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// A view with explicit strides.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        MatMut { data, rows, cols, rs, cs }
    }
    /// `(rows, cols)` stored row-major.
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols, rs: cols, cs: 1 }
    }
    /// `(rows, cols)` stored column-major.
    pub fn col_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols, rs: 1, cs: rows }
    }
    /// The transpose: rows and cols swap, and so do their strides.
    pub fn t(self) -> Self {
        MatMut { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    /// A shorter-lived mutable view of the same elements (so `self` can be used again later).
    pub fn rb_mut(&mut self) -> MatMut<'_, T> {
        MatMut { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }
    /// A read-only view of the same elements.
    pub fn rb(&self) -> MatRef<'_, T> {
        MatRef { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }
}

/// How many elements a `(rows, cols)` view with strides `(rs, cs)` needs: its largest index + 1,
/// or `None` if that does not fit in a `usize`.
#[inline]
pub(super) fn needed_len(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(rs)?.checked_add((cols - 1).checked_mul(cs)?)?.checked_add(1)
}

#[inline]
fn check_fits(tensor: &'static str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Result<()> {
    let need = needed_len(rows, cols, rs, cs);
    if need.is_some_and(|need| need <= len) {
        return Ok(());
    }
    let need = need.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string());
    Err(Error::shape(
        "gemm",
        tensor,
        format!("{tensor} ({rows}, {cols}) with strides ({rs}, {cs}) needs a slice of at least {need} elements"),
        format!("a slice of {len} elements"),
    ))
}

/// True when the `(rows, cols)` layout is row-major-like: every row is a run of indices that
/// ends before the next row starts (`rs ≥ (cols−1)·cs + 1`, `cs ≥ 1`). An empty view, or a single
/// row, qualifies whatever its strides. Call only on views that fit their slice (so the product
/// cannot overflow).
#[inline]
pub(super) fn rows_are_disjoint_runs(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    match cols {
        _ if rows <= 1 => true,
        0 => true,
        1 => rs >= 1,
        _ => cs >= 1 && rs > (cols - 1) * cs,
    }
}

/// Checks the shapes and bounds of a GEMM call (the rules are listed in `gemm.rs`'s docs).
pub(super) fn validate<T>(a: &MatRef<T>, b: &MatRef<T>, c: &MatMut<T>) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        return Err(Error::shape(
            "gemm",
            "B",
            format!("A ({m}, {k}) · B ({}, {n}) needs B.rows = {k}", b.rows),
            format!("B ({}, {n})", b.rows),
        ));
    }
    if (c.rows, c.cols) != (m, n) {
        return Err(Error::shape(
            "gemm",
            "C",
            format!("A ({m}, {k}) · B ({k}, {n}) needs C ({m}, {n})"),
            format!("C ({}, {})", c.rows, c.cols),
        ));
    }
    check_fits("A", a.data.len(), a.rows, a.cols, a.rs, a.cs)?;
    check_fits("B", b.data.len(), b.rows, b.cols, b.rs, b.cs)?;
    check_fits("C", c.data.len(), c.rows, c.cols, c.rs, c.cs)?;
    if !rows_are_disjoint_runs(c.rows, c.cols, c.rs, c.cs) && !rows_are_disjoint_runs(c.cols, c.rows, c.cs, c.rs) {
        return Err(Error::shape(
            "gemm",
            "C",
            format!(
                "C ({m}, {n}) with non-overlapping strides: rs ≥ (cols−1)·cs + 1 or cs ≥ (rows−1)·rs + 1, \
                 so that every element has its own slot"
            ),
            format!("strides ({}, {})", c.rs, c.cs),
        ));
    }
    Ok(())
}

/// `C ← β·C`, the whole GEMM when `k = 0`. `β = 0` writes zeros without reading C.
pub(super) fn scale_c<T: Float>(beta: T, c: MatMut<T>) {
    for i in 0..c.rows {
        for j in 0..c.cols {
            let x = &mut c.data[i * c.rs + j * c.cs];
            *x = if beta == T::ZERO { T::ZERO } else { beta * *x };
        }
    }
}
