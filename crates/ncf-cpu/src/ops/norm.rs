//! Dropout and batch normalization (the rating model's regularizers), each with its naive twin.
//! The GPU twins are in `kernels/norm.cu`.

use ncf_core::Float;
use ncf_core::rng::{dropout_bits, dropout_threshold};
use rayon::prelude::*;

use super::activation::PAR_MIN_ELEMS;

// ------------------------------------------------------------------------------------ dropout

/// Inverted dropout, keyed by `seed`: `out[k] = inp[k]·keep(seed, k)/(1 − p)`. Reference.
pub fn dropout_naive<T: Float>(inp: &[T], out: &mut [T], p: f64, seed: u64) {
    let thr = dropout_threshold(p);
    let scale = T::from_f64(1.0 / (1.0 - p));
    for k in 0..out.len() {
        let keep = dropout_bits(seed, k as u64) >= thr;
        out[k] = if keep { inp[k] * scale } else { T::ZERO };
    }
}

/// Inverted dropout, in parallel for large `n`; the same mask and values as
/// [`dropout_naive`]. Its backward is the same call on the gradient (same `seed`).
pub fn dropout<T: Float>(inp: &[T], out: &mut [T], p: f64, seed: u64) {
    let thr = dropout_threshold(p);
    let scale = T::from_f64(1.0 / (1.0 - p));
    let f = |(k, (o, &x)): (usize, (&mut T, &T))| {
        *o = if dropout_bits(seed, k as u64) >= thr { x * scale } else { T::ZERO };
    };
    if out.len() >= PAR_MIN_ELEMS && crate::team::rayon_ok() {
        out.par_iter_mut().zip(inp.par_iter()).enumerate().for_each(f);
    } else {
        out.iter_mut().zip(inp).enumerate().for_each(f);
    }
}

// ------------------------------------------------------------------------------------ batch norm

/// The running statistics, moved toward the batch's: `r = (1−m)·r + m·s`.
fn ema<T: Float>(r: &mut T, m: f64, s: f64) {
    *r = T::from_f64((1.0 - m) * r.to_f64() + m * s);
}

/// Training-mode batch norm, one column at a time in f64 (the formulas as written).
/// `x, y, xhat (B,H)`, `gamma, beta, inv, rmean, rvar (H)`. Reference.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train_naive<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    (b, h): (usize, usize),
    eps: f64,
    momentum: f64,
    y: &mut [T],
    xhat: &mut [T],
    inv: &mut [T],
    (rmean, rvar): (&mut [T], &mut [T]),
) {
    for j in 0..h {
        let col = |r: usize| x[r * h + j].to_f64();
        let mean = (0..b).map(col).sum::<f64>() / b as f64;
        let var = (0..b).map(|r| (col(r) - mean).powi(2)).sum::<f64>() / b as f64;
        let iv = 1.0 / (var + eps).sqrt();
        for r in 0..b {
            let xh = (col(r) - mean) * iv;
            xhat[r * h + j] = T::from_f64(xh);
            y[r * h + j] = T::from_f64(gamma[j].to_f64() * xh + beta[j].to_f64());
        }
        inv[j] = T::from_f64(iv);
        let unbiased = if b > 1 { var * b as f64 / (b - 1) as f64 } else { var };
        ema(&mut rmean[j], momentum, mean);
        ema(&mut rvar[j], momentum, unbiased);
    }
}

/// Training-mode batch norm, row-major: each pass walks the rows in order and updates all `H`
/// columns of a row together (contiguous, vectorized), accumulating in `T`. The same column
/// sums in the same row order as the GPU's one-thread-per-column kernel.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    (b, h): (usize, usize),
    eps: f64,
    momentum: f64,
    y: &mut [T],
    xhat: &mut [T],
    inv: &mut [T],
    (rmean, rvar): (&mut [T], &mut [T]),
) {
    let (x, y, xhat) = (&x[..b * h], &mut y[..b * h], &mut xhat[..b * h]);
    let bt = T::from_usize(b);
    let mut mean = vec![T::ZERO; h];
    for row in x.chunks_exact(h) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= bt);
    let var = &mut inv[..h]; // the variance first, then 1/√(σ² + eps) in place
    var.iter_mut().for_each(|v| *v = T::ZERO);
    for row in x.chunks_exact(h) {
        for ((v, &xv), &m) in var.iter_mut().zip(row).zip(&mean) {
            let d = xv - m;
            *v += d * d;
        }
    }
    let e = T::from_f64(eps);
    for j in 0..h {
        let var_j = var[j] / bt;
        let unbiased = if b > 1 { var_j.to_f64() * b as f64 / (b - 1) as f64 } else { var_j.to_f64() };
        ema(&mut rmean[j], momentum, mean[j].to_f64());
        ema(&mut rvar[j], momentum, unbiased);
        var[j] = T::ONE / (var_j + e).sqrt();
    }
    for ((xr, yr), hr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)).zip(xhat.chunks_exact_mut(h)) {
        for j in 0..h {
            let xh = (xr[j] - mean[j]) * var[j];
            hr[j] = xh;
            yr[j] = gamma[j] * xh + beta[j];
        }
    }
}

/// Eval-mode batch norm: `y = γ·(x − rmean)/√(rvar + eps) + β`. Reference.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval_naive<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    rmean: &[T],
    rvar: &[T],
    (b, h): (usize, usize),
    eps: f64,
    y: &mut [T],
) {
    for r in 0..b {
        for j in 0..h {
            let xh = (x[r * h + j].to_f64() - rmean[j].to_f64()) / (rvar[j].to_f64() + eps).sqrt();
            y[r * h + j] = T::from_f64(gamma[j].to_f64() * xh + beta[j].to_f64());
        }
    }
}

/// Eval-mode batch norm folded to one multiply-add per element: `y = x·s + t` with
/// `s = γ/√(rvar + eps)`, `t = β − rmean·s`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    rmean: &[T],
    rvar: &[T],
    (b, h): (usize, usize),
    eps: f64,
    y: &mut [T],
) {
    let e = T::from_f64(eps);
    let s: Vec<T> = (0..h).map(|j| gamma[j] / (rvar[j] + e).sqrt()).collect();
    let t: Vec<T> = (0..h).map(|j| beta[j] - rmean[j] * s[j]).collect();
    for (xr, yr) in x[..b * h].chunks_exact(h).zip(y[..b * h].chunks_exact_mut(h)) {
        for j in 0..h {
            yr[j] = xr[j] * s[j] + t[j];
        }
    }
}

/// Training-mode backward, one column at a time in f64:
/// `dβ += Σ dy`, `dγ += Σ dy·xhat`, `dx = γ·inv/B·(B·dy − Σ dy − xhat·Σ dy·xhat)`. Reference.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_naive<T: Float>(
    dy: &[T],
    xhat: &[T],
    gamma: &[T],
    inv: &[T],
    (b, h): (usize, usize),
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    for j in 0..h {
        let g = |r: usize| dy[r * h + j].to_f64();
        let xh = |r: usize| xhat[r * h + j].to_f64();
        let sdy = (0..b).map(g).sum::<f64>();
        let sdyx = (0..b).map(|r| g(r) * xh(r)).sum::<f64>();
        dbeta[j] = T::from_f64(dbeta[j].to_f64() + sdy);
        dgamma[j] = T::from_f64(dgamma[j].to_f64() + sdyx);
        let k = gamma[j].to_f64() * inv[j].to_f64() / b as f64;
        for r in 0..b {
            dx[r * h + j] = T::from_f64(k * (b as f64 * g(r) - sdy - xh(r) * sdyx));
        }
    }
}

/// The training-mode backward, row-major like [`batchnorm_forward_train`].
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Float>(
    dy: &[T],
    xhat: &[T],
    gamma: &[T],
    inv: &[T],
    (b, h): (usize, usize),
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let (dy, xhat, dx) = (&dy[..b * h], &xhat[..b * h], &mut dx[..b * h]);
    let (mut sdy, mut sdyx) = (vec![T::ZERO; h], vec![T::ZERO; h]);
    for (gr, xr) in dy.chunks_exact(h).zip(xhat.chunks_exact(h)) {
        for j in 0..h {
            sdy[j] += gr[j];
            sdyx[j] += gr[j] * xr[j];
        }
    }
    let bt = T::from_usize(b);
    let k: Vec<T> = (0..h).map(|j| gamma[j] * inv[j] / bt).collect();
    for j in 0..h {
        dbeta[j] += sdy[j];
        dgamma[j] += sdyx[j];
    }
    for ((gr, xr), dr) in dy.chunks_exact(h).zip(xhat.chunks_exact(h)).zip(dx.chunks_exact_mut(h)) {
        for j in 0..h {
            dr[j] = k[j] * (bt * gr[j] - sdy[j] - xr[j] * sdyx[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncf_core::tol::{Tol, assert_close, assert_same};

    fn rand(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|k| {
                (ncf_core::rng::splitmix64(seed * 1_000_003 + k as u64) >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn dropout_matches_its_naive_twin_and_keeps_about_one_minus_p() {
        for (n, p) in [(1usize, 0.5), (1001, 0.2), (70_001, 0.5), (5000, 0.0)] {
            let x: Vec<f32> = rand(n, 1).iter().map(|&v| v as f32).collect();
            let (mut a, mut b) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            dropout_naive(&x, &mut a, p, 9);
            dropout(&x, &mut b, p, 9);
            assert_same(&format!("dropout n={n} p={p}"), &a, &b);
            let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            if n > 1000 {
                assert!((kept - (1.0 - p)).abs() < 0.03, "n={n} p={p}: kept {kept}");
            }
            for (o, i) in a.iter().zip(&x) {
                assert!(*o == 0.0 || (*o - *i / (1.0 - p as f32)).abs() <= 1e-6 * i.abs().max(1.0));
            }
        }
        // Applying it to the gradient with the same seed masks the same elements.
        let x = vec![1.0f64; 300];
        let (mut fwd, mut bwd) = (vec![0.0; 300], vec![0.0; 300]);
        dropout(&x, &mut fwd, 0.3, 5);
        dropout(&x, &mut bwd, 0.3, 5);
        assert_eq!(fwd, bwd);
    }

    #[test]
    fn batchnorm_matches_its_naive_twin() {
        for (b, h) in [(1usize, 3usize), (7, 5), (256, 33), (1000, 64)] {
            let x = rand(b * h, 2);
            let gamma = rand(h, 3);
            let beta = rand(h, 4);
            let dy = rand(b * h, 5);
            let run = |fast: bool| {
                let (mut y, mut xh, mut inv) = (vec![0.0; b * h], vec![0.0; b * h], vec![0.0; h]);
                let (mut rm, mut rv) = (rand(h, 6), vec![1.0; h]);
                let (mut dx, mut dg, mut db) = (vec![0.0; b * h], vec![0.5; h], vec![0.25; h]);
                let mut ye = vec![0.0; b * h];
                if fast {
                    batchnorm_forward_train(
                        &x,
                        &gamma,
                        &beta,
                        (b, h),
                        1e-5,
                        0.1,
                        &mut y,
                        &mut xh,
                        &mut inv,
                        (&mut rm, &mut rv),
                    );
                    batchnorm_backward(&dy, &xh, &gamma, &inv, (b, h), &mut dx, &mut dg, &mut db);
                    batchnorm_forward_eval(&x, &gamma, &beta, &rm, &rv, (b, h), 1e-5, &mut ye);
                } else {
                    batchnorm_forward_train_naive(
                        &x,
                        &gamma,
                        &beta,
                        (b, h),
                        1e-5,
                        0.1,
                        &mut y,
                        &mut xh,
                        &mut inv,
                        (&mut rm, &mut rv),
                    );
                    batchnorm_backward_naive(&dy, &xh, &gamma, &inv, (b, h), &mut dx, &mut dg, &mut db);
                    batchnorm_forward_eval_naive(&x, &gamma, &beta, &rm, &rv, (b, h), 1e-5, &mut ye);
                }
                [y, xh, inv, rm, rv, dx, dg, db, ye]
            };
            let (fast, naive) = (run(true), run(false));
            let names = ["y", "xhat", "inv", "rmean", "rvar", "dx", "dgamma", "dbeta", "y_eval"];
            for ((name, f), n) in names.iter().zip(&fast).zip(&naive) {
                assert_close(&format!("b={b} h={h} {name} (fast vs naive)"), f, n, Tol::F64_KERNEL);
            }
            // Training-mode outputs are normalized: each column of xhat has mean 0 and, for
            // b > 1, variance ≈ 1.
            if b > 1 {
                let xh = &fast[1];
                for j in 0..h {
                    let m = (0..b).map(|r| xh[r * h + j]).sum::<f64>() / b as f64;
                    let v = (0..b).map(|r| (xh[r * h + j] - m).powi(2)).sum::<f64>() / b as f64;
                    assert!(m.abs() < 1e-9 && (v - 1.0).abs() < 1e-3, "b={b} h={h} col {j}: mean {m}, var {v}");
                }
            }
        }
    }
}
