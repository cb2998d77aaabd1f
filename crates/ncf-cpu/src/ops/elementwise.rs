//! Small reshaping and element-wise ops: the GMF product, concat/split, row-wise dot, adds.

use super::activation::map2;
use ncf_core::Float;
use rayon::prelude::*;

/// GMF product, reference.  `u, v, out (B,F)`:  `out = u ⊙ v`.
pub fn gmf_forward_naive<T: Float>(u: &[T], v: &[T], out: &mut [T]) {
    for i in 0..out.len() {
        out[i] = u[i] * v[i];
    }
}

/// GMF product: `out = u ⊙ v` (the "generalized matrix factorization" interaction).
pub fn gmf_forward<T: Float>(u: &[T], v: &[T], out: &mut [T]) {
    map2(u, v, out, |a, b| a * b);
}

/// `∂(u⊙v)/∂u = v`, so `du = dout ⊙ v`; likewise `dv = dout ⊙ u`. Reference.
pub fn gmf_backward_naive<T: Float>(dout: &[T], u: &[T], v: &[T], du: &mut [T], dv: &mut [T]) {
    for i in 0..dout.len() {
        du[i] = dout[i] * v[i];
        dv[i] = dout[i] * u[i];
    }
}

/// `du = dout ⊙ v`,  `dv = dout ⊙ u`.
pub fn gmf_backward<T: Float>(dout: &[T], u: &[T], v: &[T], du: &mut [T], dv: &mut [T]) {
    map2(dout, v, du, |g, b| g * b);
    map2(dout, u, dv, |g, a| g * a);
}

/// `a (B,Da)  c (B,Dc)  out (B,Da+Dc)`: each output row is `[a row, c row]`. Large batches
/// (scoring's) run in blocks of rows on rayon's threads. The rows are copied in the baseline
/// build, where [`copy_row`](super::copy_row)'s fixed widths are vector moves; an AVX2 copy of
/// this loop turned them into a `memcpy` call per row and timed no faster (pipeline bench).
pub fn concat_cols<T: Float>(a: &[T], da: usize, c: &[T], dc: usize, out: &mut [T]) {
    use super::PAR_ROWS;
    let w = da + dc;
    if w == 0 {
        return;
    }
    if out.len() >= super::activation::PAR_MIN_ELEMS && crate::team::rayon_ok() {
        let blocks = out.par_chunks_mut(PAR_ROWS * w).enumerate();
        blocks.for_each(|(k, o)| {
            let r0 = k * PAR_ROWS;
            let rows = o.len() / w;
            concat_rows(&a[r0 * da..(r0 + rows) * da], da, &c[r0 * dc..(r0 + rows) * dc], dc, o);
        });
    } else {
        concat_rows(a, da, c, dc, out);
    }
}

/// [`concat_cols`]'s rows on this thread.
fn concat_rows<T: Float>(a: &[T], da: usize, c: &[T], dc: usize, out: &mut [T]) {
    for (r, row) in out.chunks_exact_mut(da + dc).enumerate() {
        let (ra, rc) = row.split_at_mut(da);
        super::copy_row(ra, &a[r * da..(r + 1) * da]);
        super::copy_row(rc, &c[r * dc..(r + 1) * dc]);
    }
}

/// Backward of concat: the gradient splits back along the same columns.
pub fn split_cols<T: Float>(dout: &[T], da: usize, dc: usize, grad_a: &mut [T], grad_c: &mut [T]) {
    let w = da + dc;
    for (r, row) in dout.chunks_exact(w).enumerate() {
        super::copy_row(&mut grad_a[r * da..(r + 1) * da], &row[..da]);
        super::copy_row(&mut grad_c[r * dc..(r + 1) * dc], &row[da..]);
    }
}

/// Concat, reference: element by element.
pub fn concat_cols_naive<T: Float>(a: &[T], da: usize, c: &[T], dc: usize, out: &mut [T]) {
    let rows = out.len() / (da + dc);
    for r in 0..rows {
        for j in 0..da {
            out[r * (da + dc) + j] = a[r * da + j];
        }
        for j in 0..dc {
            out[r * (da + dc) + da + j] = c[r * dc + j];
        }
    }
}

/// Row-wise dot, reference.  `u, v (B,D)  out (B)`:  `out[b] = Σ_d u[b,d]·v[b,d]`.
pub fn rowdot_forward_naive<T: Float>(u: &[T], v: &[T], d: usize, out: &mut [T]) {
    for b in 0..out.len() {
        let mut s = T::ZERO;
        for j in 0..d {
            s += u[b * d + j] * v[b * d + j];
        }
        out[b] = s;
    }
}

/// Row-wise dot (MF's score): 4 independent partial sums per row so the compiler can vectorize.
pub fn rowdot_forward<T: Float>(u: &[T], v: &[T], d: usize, out: &mut [T]) {
    for (b, o) in out.iter_mut().enumerate() {
        let (ur, vr) = (&u[b * d..(b + 1) * d], &v[b * d..(b + 1) * d]);
        let mut acc = [T::ZERO; 4];
        let (uc, vc) = (ur.chunks_exact(4), vr.chunks_exact(4));
        let (ut, vt) = (uc.remainder(), vc.remainder());
        for (x, y) in uc.zip(vc) {
            for k in 0..4 {
                acc[k] += x[k] * y[k];
            }
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for (x, y) in ut.iter().zip(vt) {
            s += *x * *y;
        }
        *o = s;
    }
}

/// `∂(u·v)/∂u = v`:  `du[b,:] = dout[b]·v[b,:]`,  `dv[b,:] = dout[b]·u[b,:]`.
pub fn rowdot_backward<T: Float>(dout: &[T], u: &[T], v: &[T], d: usize, du: &mut [T], dv: &mut [T]) {
    for (b, &g) in dout.iter().enumerate() {
        let r = b * d..(b + 1) * d;
        for ((x, y), (gu, gv)) in
            u[r.clone()].iter().zip(&v[r.clone()]).zip(du[r.clone()].iter_mut().zip(dv[r].iter_mut()))
        {
            *gu = g * *y;
            *gv = g * *x;
        }
    }
}

/// `out += x`.
pub fn add_assign<T: Float>(out: &mut [T], x: &[T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += v;
    }
}

/// `x *= s`.
pub fn scale<T: Float>(x: &mut [T], s: T) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// `out += s` for a broadcast scalar `s`.
pub fn add_scalar<T: Float>(out: &mut [T], s: T) {
    for o in out.iter_mut() {
        *o += s;
    }
}

/// `Σ x`, in index order (deterministic).
pub fn sum<T: Float>(x: &[T]) -> T {
    x.iter().fold(T::ZERO, |a, &v| a + v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;
    use ncf_core::Tol;
    use ncf_core::tol::assert_close_f32;

    /// The concatenation against its naive twin for scoring-sized batches (the parallel blocks,
    /// the last one partial) and small ones, the common widths and odd ones.
    #[test]
    fn concat_matches_naive_at_every_size() {
        for &(b, da, dc) in &[(3, 8, 8), (5000, 8, 8), (4100, 16, 3), (2000, 32, 32), (70, 5, 11)] {
            let (a, c) = (rand_vec(b * da, 1), rand_vec(b * dc, 2));
            let (mut got, mut want) = (vec![f32::NAN; b * (da + dc)], vec![0.0; b * (da + dc)]);
            concat_cols(&a, da, &c, dc, &mut got);
            concat_cols_naive(&a, da, &c, dc, &mut want);
            assert_eq!(got, want, "b={b} da={da} dc={dc}");
        }
    }

    #[test]
    fn gmf_concat_rowdot_match_naive() {
        let (b, d, dc) = (37, 13, 5);
        let u = rand_vec(b * d, 1);
        let v = rand_vec(b * d, 2);
        let g = rand_vec(b * d, 3);
        let (mut x, mut y) = (vec![0.0; b * d], vec![0.0; b * d]);
        gmf_forward(&u, &v, &mut x);
        gmf_forward_naive(&u, &v, &mut y);
        assert_eq!(x, y);
        let (mut du1, mut dv1, mut du2, mut dv2) =
            (vec![0.0; b * d], vec![0.0; b * d], vec![0.0; b * d], vec![0.0; b * d]);
        gmf_backward(&g, &u, &v, &mut du1, &mut dv1);
        gmf_backward_naive(&g, &u, &v, &mut du2, &mut dv2);
        assert_eq!((du1, dv1), (du2, dv2));

        let c = rand_vec(b * dc, 4);
        let (mut o1, mut o2) = (vec![0.0; b * (d + dc)], vec![0.0; b * (d + dc)]);
        concat_cols(&u, d, &c, dc, &mut o1);
        concat_cols_naive(&u, d, &c, dc, &mut o2);
        assert_eq!(o1, o2);
        let (mut ga, mut gc) = (vec![0.0; b * d], vec![0.0; b * dc]);
        split_cols(&o1, d, dc, &mut ga, &mut gc);
        assert_eq!((ga, gc), (u.clone(), c));

        let (mut r1, mut r2) = (vec![0.0; b], vec![0.0; b]);
        rowdot_forward(&u, &v, d, &mut r1);
        rowdot_forward_naive(&u, &v, d, &mut r2);
        assert_close_f32("rowdot", &r1, &r2, Tol::F32_KERNEL);
    }

    #[test]
    fn small_helpers() {
        let mut o = vec![1.0f32, 2.0];
        add_assign(&mut o, &[0.5, 0.5]);
        add_scalar(&mut o, 1.0);
        assert_eq!(o, vec![2.5, 3.5]);
        assert_eq!(sum(&o), 6.0);
        scale(&mut o, 0.5);
        assert_eq!(o, vec![1.25, 1.75]);
    }
}
