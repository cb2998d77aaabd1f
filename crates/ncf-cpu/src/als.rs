//! Implicit alternating least squares (iALS: Hu, Koren & Volinsky 2008) for the dot-product
//! model `s(u, i) = x_u·y_i`, with a conjugate-gradient row solver (Takács, Pilászy & Tikk 2011).
//!
//! The loss covers every (user, item) cell, observed or not:
//!
//! ```text
//!   L = Σ_{u,i} c_ui (p_ui − x_u·y_i)² + λ (Σ_u ‖x_u‖² + Σ_i ‖y_i‖²)
//!   p_ui = 1, c_ui = 1 + α   where u interacted with i ("observed"),
//!   p_ui = 0, c_ui = 1       everywhere else.
//! ```
//!
//! With the items' factors `Y (I,d)` fixed, `L` is a quadratic in each user's row alone, and its
//! minimum solves the `d × d` system
//!
//! ```text
//!   A_u x_u = b_u,   A_u = G + λI + α Σ_{i∈I(u)} y_i y_iᵀ,   G = YᵀY (shared by every user)
//!                    b_u = (1 + α) Σ_{i∈I(u)} y_i
//! ```
//!
//! A *half sweep* solves every user's row; the other half swaps the roles (items against the
//! users' new factors). Each half sweep can only lower `L` when solved exactly.
//!
//! Two row solvers, the reference and the fast one, as everywhere in this crate:
//! - [`solve_exact_naive`] forms `A_u` in f64 (`|I(u)|·d²`) and solves it by Cholesky;
//! - [`solve_cg`] never forms `A_u`: a product `A_u v = (G + λI) v + α Σ (y_i·v) y_i` costs
//!   `d² + 2·|I(u)|·d`, and a few conjugate-gradient steps from the row's previous value reach
//!   most of the way (f32, compiled per SIMD level).
//!
//! Rows are solved in parallel (rayon), each by one thread from the same inputs, so the result
//! does not depend on the thread count.

use ncf_core::{Error, Result};
use rayon::prelude::*;

/// iALS's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlsHp {
    /// Weight of an observed cell beyond an unobserved one's: `c = 1 + alpha`.
    pub alpha: f32,
    /// `λ`, the L2 penalty on every row.
    pub reg: f32,
    /// Conjugate-gradient steps per row, warm-started from its current value (`0`: solve each
    /// row exactly, by [`solve_exact_naive`]).
    pub cg_steps: usize,
}

/// Rows per parallel task: a row's result does not depend on which task or thread solves it.
const ROWS_PER_TASK: usize = 64;
/// Rows per partial sum of the Gram matrix: fixed, so the sum's order is the same on any number
/// of threads.
const GRAM_ROWS: usize = 512;

/// `G = YᵀY` (`d × d`, row-major) of the rows of `y` (width `d`), summed in f64.
pub fn gram(y: &[f32], d: usize) -> Vec<f64> {
    let part = |rows: &[f32]| {
        let mut g = vec![0f64; d * d];
        for r in rows.chunks_exact(d) {
            for (j, &rj) in r.iter().enumerate() {
                let rj = f64::from(rj);
                for (gk, &rk) in g[j * d..(j + 1) * d].iter_mut().zip(r) {
                    *gk += rj * f64::from(rk);
                }
            }
        }
        g
    };
    let parts: Vec<Vec<f64>> = y.par_chunks(GRAM_ROWS * d.max(1)).map(part).collect();
    let mut g = vec![0f64; d * d];
    for p in parts {
        g.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    g
}

/// The reference row solve: `x = A⁻¹ b` with `A = G + λI + α Σ_{i∈items} y_i y_iᵀ` and
/// `b = (1 + α) Σ y_i` formed in f64 and solved by Cholesky (`A` is symmetric positive definite
/// for `λ > 0`). `g` is `YᵀY` without `λ`. Returns `None` when `A` is not positive definite.
pub fn solve_exact_naive(g: &[f64], y: &[f32], d: usize, items: &[u32], hp: &AlsHp) -> Option<Vec<f32>> {
    let (alpha, reg) = (f64::from(hp.alpha), f64::from(hp.reg));
    let mut a = g.to_vec();
    let mut b = vec![0f64; d];
    for k in 0..d {
        a[k * d + k] += reg;
    }
    for &i in items {
        let yi = &y[i as usize * d..(i as usize + 1) * d];
        for j in 0..d {
            b[j] += (1.0 + alpha) * f64::from(yi[j]);
            for k in 0..d {
                a[j * d + k] += alpha * f64::from(yi[j]) * f64::from(yi[k]);
            }
        }
    }
    // A = L Lᵀ, L lower triangular, written over A's lower half.
    for j in 0..d {
        let mut diag = a[j * d + j];
        for k in 0..j {
            diag -= a[j * d + k] * a[j * d + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return None;
        }
        let l_jj = diag.sqrt();
        a[j * d + j] = l_jj;
        for r in j + 1..d {
            let mut s = a[r * d + j];
            for k in 0..j {
                s -= a[r * d + k] * a[j * d + k];
            }
            a[r * d + j] = s / l_jj;
        }
    }
    // L z = b, then Lᵀ x = z.
    let mut z = b;
    for j in 0..d {
        let s: f64 = (0..j).map(|k| a[j * d + k] * z[k]).sum();
        z[j] = (z[j] - s) / a[j * d + j];
    }
    for j in (0..d).rev() {
        let s: f64 = (j + 1..d).map(|k| a[k * d + j] * z[k]).sum();
        z[j] = (z[j] - s) / a[j * d + j];
    }
    Some(z.into_iter().map(|v| v as f32).collect())
}

/// `Σ a_k b_k` with eight running sums (so the compiler keeps them in one vector register); the
/// order of the additions depends on the length only, never on the SIMD level.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// `y += a·x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yk, &xk) in y.iter_mut().zip(x) {
        *yk += a * xk;
    }
}

/// `out = M v` for the `d × d` row-major `m`.
#[inline(always)]
fn matvec(m: &[f32], v: &[f32], out: &mut [f32]) {
    let d = v.len();
    for (o, row) in out.iter_mut().zip(m.chunks_exact(d)) {
        *o = dot(row, v);
    }
}

/// The fast row solve: `steps` conjugate-gradient steps on `A x = b` (as in
/// [`solve_exact_naive`]) from the row's current value `x`, never forming `A`:
/// `A v = (G + λI) v + α Σ_{i∈items} (y_i·v) y_i`. `g_reg` is `G + λI` in f32. `scratch` holds
/// `3·d` floats.
#[inline(always)]
fn solve_cg_body(
    g_reg: &[f32],
    y: &[f32],
    items: &[u32],
    alpha: f32,
    steps: usize,
    x: &mut [f32],
    scratch: &mut [f32],
) {
    let d = x.len();
    let (r, rest) = scratch.split_at_mut(d);
    let (p, ap) = rest.split_at_mut(d);
    let row = |i: u32| &y[i as usize * d..(i as usize + 1) * d];
    // r = b − A x = Σ_i ((1 + α) − α (y_i·x)) y_i − (G + λI) x
    matvec(g_reg, x, ap);
    r.iter_mut().zip(ap.iter()).for_each(|(r, a)| *r = -a);
    for &i in items {
        let yi = row(i);
        axpy(r, (1.0 + alpha) - alpha * dot(yi, x), yi);
    }
    p.copy_from_slice(r);
    let mut rs = dot(r, r);
    for _ in 0..steps {
        if rs < 1e-20 {
            break;
        }
        // ap = A p
        matvec(g_reg, p, ap);
        for &i in items {
            let yi = row(i);
            axpy(ap, alpha * dot(yi, p), yi);
        }
        let pap = dot(p, ap);
        if pap <= 0.0 || !pap.is_finite() {
            break;
        }
        let a = rs / pap;
        axpy(x, a, p);
        axpy(r, -a, ap);
        let rs_new = dot(r, r);
        let beta = rs_new / rs;
        p.iter_mut().zip(r.iter()).for_each(|(p, &r)| *p = r + beta * *p);
        rs = rs_new;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn solve_cg_avx512(g: &[f32], y: &[f32], items: &[u32], alpha: f32, steps: usize, x: &mut [f32], s: &mut [f32]) {
    solve_cg_body(g, y, items, alpha, steps, x, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn solve_cg_avx2(g: &[f32], y: &[f32], items: &[u32], alpha: f32, steps: usize, x: &mut [f32], s: &mut [f32]) {
    solve_cg_body(g, y, items, alpha, steps, x, s)
}

/// `solve_cg_body` on the SIMD level the kernels run at ([`crate::simd::SimdLevel::best`]).
/// Rust does not fuse a multiply and an add on its own, so every level gives the same bits.
pub fn solve_cg(g_reg: &[f32], y: &[f32], items: &[u32], alpha: f32, steps: usize, x: &mut [f32], scratch: &mut [f32]) {
    use crate::simd::SimdLevel;
    #[cfg(target_arch = "x86_64")]
    match SimdLevel::best() {
        // SAFETY: `best` never returns a level this CPU lacks.
        SimdLevel::Avx512 => return unsafe { solve_cg_avx512(g_reg, y, items, alpha, steps, x, scratch) },
        // SAFETY: as above.
        SimdLevel::Avx2Fma => return unsafe { solve_cg_avx2(g_reg, y, items, alpha, steps, x, scratch) },
        SimdLevel::Portable => {}
    }
    solve_cg_body(g_reg, y, items, alpha, steps, x, scratch)
}

/// One half sweep: every row `u` of `x` (width `d`) solved against `y` (width `d`), where row
/// `u`'s observed columns are `items[offsets[u]..offsets[u + 1]]`. Returns the rows whose exact
/// system was not positive definite (left unchanged; only possible with `λ = 0`).
pub fn half_sweep(x: &mut [f32], y: &[f32], d: usize, offsets: &[usize], items: &[u32], hp: &AlsHp) -> Result<usize> {
    check_shapes("als::half_sweep", x, y, d, offsets, items)?;
    let g = gram(y, d);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    if hp.cg_steps == 0 {
        x.par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(t, rows)| {
            for (k, xu) in rows.chunks_exact_mut(d).enumerate() {
                let u = t * ROWS_PER_TASK + k;
                match solve_exact_naive(&g, y, d, &items[offsets[u]..offsets[u + 1]], hp) {
                    Some(s) => xu.copy_from_slice(&s),
                    None => _ = failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                }
            }
        });
        return Ok(failed.into_inner());
    }
    let mut g_reg: Vec<f32> = g.iter().map(|&v| v as f32).collect();
    for k in 0..d {
        g_reg[k * d + k] += hp.reg;
    }
    x.par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(t, rows)| {
        let mut scratch = vec![0f32; 3 * d];
        for (k, xu) in rows.chunks_exact_mut(d).enumerate() {
            let u = t * ROWS_PER_TASK + k;
            solve_cg(&g_reg, y, &items[offsets[u]..offsets[u + 1]], hp.alpha, hp.cg_steps, xu, &mut scratch);
        }
    });
    Ok(0)
}

/// `x (n,d)`, `y (m,d)` and a row CSR over `n` rows (`offsets` rising from 0 to `items.len()`)
/// whose column ids are `< m`: checked before any row is indexed.
fn check_shapes(op: &'static str, x: &[f32], y: &[f32], d: usize, offsets: &[usize], items: &[u32]) -> Result<()> {
    if d == 0 || !x.len().is_multiple_of(d) || !y.len().is_multiple_of(d) {
        return Err(Error::shape(
            op,
            "x, y",
            format!("widths that are multiples of d = {d} > 0"),
            format!("{} and {}", x.len(), y.len()),
        ));
    }
    let (n, m) = (x.len() / d, y.len() / d);
    if offsets.len() != n + 1 || offsets.first() != Some(&0) || offsets.last() != Some(&items.len()) {
        return Err(Error::shape(
            op,
            "offsets",
            format!("{} offsets from 0 to {}", n + 1, items.len()),
            format!("{} offsets", offsets.len()),
        ));
    }
    if offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::invalid(op, "offsets", "must not decrease"));
    }
    if let Some(&bad) = items.iter().find(|&&i| i as usize >= m) {
        return Err(Error::invalid(op, "items", format!("id {bad} is past the other side's {m} rows")));
    }
    Ok(())
}

/// The column view of a row CSR: for each of `n_cols` columns, the rows that list it (in row
/// order). `(offsets, rows)`.
pub fn transpose(offsets: &[usize], cols: &[u32], n_cols: usize) -> (Vec<usize>, Vec<u32>) {
    let mut t_off = vec![0usize; n_cols + 1];
    for &c in cols {
        t_off[c as usize + 1] += 1;
    }
    for c in 0..n_cols {
        t_off[c + 1] += t_off[c];
    }
    let mut next = t_off.clone();
    let mut t_rows = vec![0u32; cols.len()];
    for r in 0..offsets.len() - 1 {
        for &c in &cols[offsets[r]..offsets[r + 1]] {
            t_rows[next[c as usize]] = r as u32;
            next[c as usize] += 1;
        }
    }
    (t_off, t_rows)
}

/// `L` (the module's loss) without visiting the unobserved cells:
/// `Σ_u x_uᵀ G x_u + Σ_observed [(1 + α)(1 − s)² − s²] + λ (‖X‖² + ‖Y‖²)`, with `s = x_u·y_i`
/// and `G = YᵀY` (the first term is every cell's `s²` at weight 1; the second swaps an observed
/// cell's weight-1 `s²` for its real term). Products in f32 (the SIMD dot), sums in f64.
pub fn loss(x: &[f32], y: &[f32], d: usize, offsets: &[usize], items: &[u32], hp: &AlsHp) -> Result<f64> {
    check_shapes("als::loss", x, y, d, offsets, items)?;
    let g: Vec<f32> = gram(y, d).into_iter().map(|v| v as f32).collect();
    let rows: f64 = x
        .par_chunks(ROWS_PER_TASK * d)
        .enumerate()
        .map(|(t, rows)| loss_rows(&g, rows, t * ROWS_PER_TASK, y, offsets, items, hp.alpha))
        .collect::<Vec<f64>>()
        .into_iter()
        .sum();
    let sq = |t: &[f32]| t.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    Ok(rows + f64::from(hp.reg) * (sq(x) + sq(y)))
}

/// [`loss`]'s row terms for `rows` (rows `first..`), on the SIMD level the kernels run at.
fn loss_rows(g: &[f32], rows: &[f32], first: usize, y: &[f32], off: &[usize], items: &[u32], a: f32) -> f64 {
    use crate::simd::SimdLevel;
    #[cfg(target_arch = "x86_64")]
    match SimdLevel::best() {
        // SAFETY: `best` never returns a level this CPU lacks.
        SimdLevel::Avx512 => return unsafe { loss_rows_avx512(g, rows, first, y, off, items, a) },
        // SAFETY: as above.
        SimdLevel::Avx2Fma => return unsafe { loss_rows_avx2(g, rows, first, y, off, items, a) },
        SimdLevel::Portable => {}
    }
    loss_rows_body(g, rows, first, y, off, items, a)
}

#[inline(always)]
fn loss_rows_body(g: &[f32], rows: &[f32], first: usize, y: &[f32], off: &[usize], items: &[u32], alpha: f32) -> f64 {
    let d = g.len().isqrt();
    let alpha = f64::from(alpha);
    let mut gx = vec![0f32; d];
    let mut sum = 0f64;
    for (k, xu) in rows.chunks_exact(d).enumerate() {
        let u = first + k;
        matvec(g, xu, &mut gx);
        sum += f64::from(dot(xu, &gx));
        for &i in &items[off[u]..off[u + 1]] {
            let s = f64::from(dot(xu, &y[i as usize * d..(i as usize + 1) * d]));
            sum += (1.0 + alpha) * (1.0 - s) * (1.0 - s) - s * s;
        }
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn loss_rows_avx512(g: &[f32], rows: &[f32], first: usize, y: &[f32], off: &[usize], items: &[u32], a: f32) -> f64 {
    loss_rows_body(g, rows, first, y, off, items, a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn loss_rows_avx2(g: &[f32], rows: &[f32], first: usize, y: &[f32], off: &[usize], items: &[u32], a: f32) -> f64 {
    loss_rows_body(g, rows, first, y, off, items, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// A random problem: `n` rows and `m` columns of width `d`, each row observing a few columns.
    fn problem(n: usize, m: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<usize>, Vec<u32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-0.1..0.1)).collect();
        let y: Vec<f32> = (0..m * d).map(|_| rng.random_range(-0.1..0.1)).collect();
        let mut offsets = vec![0];
        let mut items = Vec::new();
        for u in 0..n {
            let mut cols: Vec<u32> = (0..m as u32).filter(|_| rng.random_bool(0.3)).collect();
            if u % 5 == 4 {
                cols.clear(); // some rows observe nothing
            }
            items.append(&mut cols);
            offsets.push(items.len());
        }
        (x, y, offsets, items)
    }

    /// `L` by brute force over every cell.
    fn loss_brute(x: &[f32], y: &[f32], d: usize, offsets: &[usize], items: &[u32], hp: &AlsHp) -> f64 {
        let (n, m) = (x.len() / d, y.len() / d);
        let mut sum = 0f64;
        for u in 0..n {
            for i in 0..m {
                let obs = items[offsets[u]..offsets[u + 1]].contains(&(i as u32));
                let (p, c) = if obs { (1.0, 1.0 + f64::from(hp.alpha)) } else { (0.0, 1.0) };
                let s: f64 = (0..d).map(|k| f64::from(x[u * d + k]) * f64::from(y[i * d + k])).sum();
                sum += c * (p - s) * (p - s);
            }
        }
        let sq = |t: &[f32]| t.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        sum + f64::from(hp.reg) * (sq(x) + sq(y))
    }

    const HP: AlsHp = AlsHp { alpha: 10.0, reg: 0.05, cg_steps: 0 };

    #[test]
    fn loss_matches_the_sum_over_every_cell() {
        let d = 5;
        let (x, y, off, items) = problem(9, 13, d, 1);
        let (fast, brute) = (loss(&x, &y, d, &off, &items, &HP).unwrap(), loss_brute(&x, &y, d, &off, &items, &HP));
        assert!((fast - brute).abs() <= 1e-6 * brute.abs(), "loss {fast} against brute force {brute}");
    }

    /// The exact solve zeroes the loss's gradient in the row: each coordinate's central
    /// difference of the brute-force loss is ~0 there, while it is not at the start.
    #[test]
    fn the_exact_solve_is_where_the_finite_difference_gradient_vanishes() {
        let d = 6;
        let (mut x, y, off, items) = problem(7, 11, d, 2);
        let u = 1;
        let fd = |x: &[f32], k: usize| {
            let h = 1e-3f32;
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[u * d + k] += h;
            b[u * d + k] -= h;
            (loss_brute(&a, &y, d, &off, &items, &HP) - loss_brute(&b, &y, d, &off, &items, &HP)) / (2.0 * f64::from(h))
        };
        let before: f64 = (0..d).map(|k| fd(&x, k).abs()).fold(0.0, f64::max);
        let g = gram(&y, d);
        let s = solve_exact_naive(&g, &y, d, &items[off[u]..off[u + 1]], &HP).unwrap();
        x[u * d..(u + 1) * d].copy_from_slice(&s);
        let after: Vec<f64> = (0..d).map(|k| fd(&x, k)).collect();
        let worst = after.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(before > 0.1, "the start should not be a minimum: max |dL/dx| {before}");
        assert!(worst < 1e-3 * before, "max |dL/dx_k| after the solve {worst} (before {before}); all: {after:?}");
    }

    /// Conjugate gradients reach the exact solution in `d` steps (up to rounding), from any start.
    #[test]
    fn cg_with_d_steps_matches_the_exact_solve() {
        for d in [3, 8, 13, 24] {
            let (x, y, off, items) = problem(6, 40, d, d as u64);
            let g = gram(&y, d);
            let mut g_reg: Vec<f32> = g.iter().map(|&v| v as f32).collect();
            (0..d).for_each(|k| g_reg[k * d + k] += HP.reg);
            for u in 0..6 {
                let cols = &items[off[u]..off[u + 1]];
                let exact = solve_exact_naive(&g, &y, d, cols, &HP).unwrap();
                let mut xu = x[u * d..(u + 1) * d].to_vec();
                solve_cg(&g_reg, &y, cols, HP.alpha, 2 * d, &mut xu, &mut vec![0.0; 3 * d]);
                // Within 1e-3 of the row's largest value, absolutely (rel 0 adds nothing).
                let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
                let tol = ncf_core::tol::Tol { abs: 1e-3 * f64::from(scale), rel: 0.0 };
                ncf_core::tol::assert_close_f32(&format!("d={d} row {u}: cg against exact"), &xu, &exact, tol);
            }
        }
    }

    /// Every exact half sweep lowers the loss (it minimizes over one block); three CG steps a
    /// row lower it too, and a sweep gives the same bits on one thread and on four.
    #[test]
    fn sweeps_lower_the_loss_and_do_not_depend_on_the_thread_count() {
        let d = 8;
        let (x0, y0, off, items) = problem(150, 90, d, 3);
        let (t_off, t_rows) = transpose(&off, &items, 90);
        for steps in [0, 3] {
            let hp = AlsHp { cg_steps: steps, ..HP };
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let (mut x, mut y) = (x0.clone(), y0.clone());
                    let mut losses = vec![loss(&x, &y, d, &off, &items, &hp).unwrap()];
                    for _ in 0..4 {
                        assert_eq!(half_sweep(&mut x, &y, d, &off, &items, &hp).unwrap(), 0);
                        losses.push(loss(&x, &y, d, &off, &items, &hp).unwrap());
                        assert_eq!(half_sweep(&mut y, &x, d, &t_off, &t_rows, &hp).unwrap(), 0);
                        losses.push(loss(&x, &y, d, &off, &items, &hp).unwrap());
                    }
                    (x, y, losses)
                })
            };
            let (x1, y1, l1) = run(1);
            let (x4, y4, _) = run(4);
            assert!(x1 == x4 && y1 == y4, "cg_steps {steps}: 1 and 4 threads differ");
            for w in l1.windows(2) {
                assert!(w[1] <= w[0] * (1.0 + 1e-6), "cg_steps {steps}: the loss rose: {l1:?}");
            }
            assert!(l1[l1.len() - 1] < 0.8 * l1[0], "cg_steps {steps}: the loss barely moved: {l1:?}");
        }
    }

    /// The copies compiled per SIMD level (each available here) give the portable copy's bits:
    /// the solver's running sums are in a fixed order, and Rust fuses no multiply-add.
    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let d = 24;
        let (x, y, off, items) = problem(12, 60, d, 9);
        let mut g: Vec<f32> = gram(&y, d).iter().map(|&v| v as f32).collect();
        (0..d).for_each(|k| g[k * d + k] += HP.reg);
        type Solve = fn(&[f32], &[f32], &[u32], f32, usize, &mut [f32], &mut [f32]);
        let portable: Solve = |g, y, it, a, st, x, s| solve_cg_body(g, y, it, a, st, x, s);
        #[allow(unused_mut)]
        let mut levels: Vec<(&str, Solve)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::SimdLevel;
            if SimdLevel::Avx2Fma.is_available() {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                levels.push(("avx2", |g, y, it, a, st, x, s| unsafe { solve_cg_avx2(g, y, it, a, st, x, s) }));
            }
            if SimdLevel::Avx512.is_available() {
                // SAFETY: the CPU has AVX-512F (checked just above).
                levels.push(("avx512", |g, y, it, a, st, x, s| unsafe { solve_cg_avx512(g, y, it, a, st, x, s) }));
            }
        }
        println!("levels checked against portable: {:?}", levels.iter().map(|l| l.0).collect::<Vec<_>>());
        for u in 0..12 {
            let cols = &items[off[u]..off[u + 1]];
            let mut want = x[u * d..(u + 1) * d].to_vec();
            portable(&g, &y, cols, HP.alpha, 3, &mut want, &mut vec![0.0; 3 * d]);
            for (name, f) in &levels {
                let mut got = x[u * d..(u + 1) * d].to_vec();
                f(&g, &y, cols, HP.alpha, 3, &mut got, &mut vec![0.0; 3 * d]);
                let bad: Vec<(usize, f32, f32)> = (0..d)
                    .filter(|&k| got[k].to_bits() != want[k].to_bits())
                    .map(|k| (k, got[k], want[k]))
                    .take(4)
                    .collect();
                assert!(bad.is_empty(), "{name} row {u}: (k, {name}, portable) {bad:?}");
            }
        }
    }

    /// Shapes that do not fit are errors naming the op, not panics.
    #[test]
    fn bad_shapes_are_errors() {
        let hp = AlsHp { cg_steps: 3, ..HP };
        let (mut x, y) = (vec![0f32; 4], vec![0f32; 6]);
        let e = |r: Result<usize>| r.unwrap_err().to_string();
        assert!(
            e(half_sweep(&mut x, &y, 2, &[0, 1, 2], &[0, 3], &hp)).contains("id 3 is past the other side's 3 rows")
        );
        assert!(e(half_sweep(&mut x, &y, 2, &[0, 2], &[0, 1], &hp)).contains("offsets"));
        assert!(e(half_sweep(&mut x, &y, 2, &[0, 2, 1], &[0], &hp)).contains("offsets"));
        assert!(e(half_sweep(&mut x, &y, 0, &[0], &[], &hp)).contains("d = 0"));
        assert!(loss(&x, &y, 3, &[0, 0], &[], &hp).unwrap_err().to_string().contains("als::loss"));
    }

    #[test]
    fn transpose_lists_each_column_s_rows_in_order() {
        let (off, items) = (vec![0, 2, 2, 5], vec![1u32, 3, 0, 1, 3]);
        let (t_off, t_rows) = transpose(&off, &items, 4);
        assert_eq!(t_off, vec![0, 1, 3, 3, 5]);
        assert_eq!(t_rows, vec![2, 0, 2, 0, 2]);
    }
}
