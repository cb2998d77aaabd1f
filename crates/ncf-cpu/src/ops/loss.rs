//! Losses: sigmoid fused with binary cross-entropy (implicit feedback), and MSE (ratings).

use ncf_core::Float;

/// `log(1 + e^{z})` without overflow: `max(z, 0) + log1p(e^{−|z|})`.
#[inline]
pub fn softplus<T: Float>(z: T) -> T {
    z.max(T::ZERO) + (-z.abs()).exp().ln_1p()
}

/// BCE on `σ(z)`, reference: the textbook `−y·log σ(z) − (1−y)·log(1 − σ(z))`, then the
/// textbook derivative chain `∂L/∂σ · ∂σ/∂z`. Returns the mean loss; writes `dz`.
/// Loses precision (and finally overflows) for large `|z|`, which is why training uses
/// [`bce_with_logits`].
pub fn bce_with_logits_naive<T: Float>(z: &[T], y: &[T], dz: &mut [T]) -> f64 {
    let b = z.len() as f64;
    let mut loss = 0.0;
    for i in 0..z.len() {
        let (zi, yi) = (z[i].to_f64(), y[i].to_f64());
        let s = 1.0 / (1.0 + (-zi).exp());
        loss += -yi * s.ln() - (1.0 - yi) * (1.0 - s).ln();
        let dl_ds = -yi / s + (1.0 - yi) / (1.0 - s);
        let ds_dz = s * (1.0 - s);
        dz[i] = T::from_f64(dl_ds * ds_dz / b);
    }
    loss / b
}

/// Sigmoid + BCE fused, from logits.  `z, y, dz (B)`:
///
/// `L = (1/B) Σ_b [softplus(z_b) − y_b·z_b]`   (equal to BCE(σ(z), y), but stable)
/// `∂L/∂z_b = (σ(z_b) − y_b) / B`               (the σ′ and 1/σ factors cancel)
///
/// `softplus(z) = max(z, 0) + log(1 + e)` with `e = e^(−|z|)`, the same `e` the sigmoid
/// starts from. The logarithms are summed as the logarithm of a product, in f64:
/// `Σ log(1 + e_b) = log Π (1 + e_b)`, each factor in `(1, 2]`, so [`LOG_EVERY`] of them stay
/// below 2¹⁶, and one `ln` serves that many rows. A `log1p` per row was a tenth of the step's
/// time outside the products (glibc's `log1pf`, about 11 ns); the product is exact to about
/// `LOG_EVERY` f64 roundings, well inside an f32 term's rounding.
///
/// Returns the mean loss (accumulated in f64); writes `dz`, bit for bit
/// `(sigmoid(z) − y) / B` (the gradient does not depend on how the loss is summed).
pub fn bce_with_logits<T: Float>(z: &[T], y: &[T], dz: &mut [T]) -> f64 {
    let inv_b = T::ONE / T::from_usize(z.len());
    let (mut linear, mut logs) = (0.0f64, 0.0f64);
    for ((z, y), dz) in z.chunks(LOG_EVERY).zip(y.chunks(LOG_EVERY)).zip(dz.chunks_mut(LOG_EVERY)) {
        // Four products, so the multiplications do not wait on each other.
        let mut prod = [1.0f64; 4];
        for (k, ((&zi, &yi), g)) in z.iter().zip(y).zip(dz.iter_mut()).enumerate() {
            let e = (-zi.abs()).exp();
            linear += (zi.max(T::ZERO) - yi * zi).to_f64();
            prod[k % 4] *= 1.0 + e.to_f64();
            let s = if zi >= T::ZERO { T::ONE / (T::ONE + e) } else { e / (T::ONE + e) };
            *g = (s - yi) * inv_b;
        }
        logs += prod.iter().map(|p| p.ln()).sum::<f64>();
    }
    (linear + logs) / z.len() as f64
}

/// Rows per logarithm in [`bce_with_logits`]: four products of up to 16 factors in `(1, 2]`.
const LOG_EVERY: usize = 64;

/// Mean squared error, reference.  `p, t, dp (B)`:  `L = (1/B) Σ (p − t)²`,  `∂L/∂p = 2(p − t)/B`.
pub fn mse_naive<T: Float>(p: &[T], t: &[T], dp: &mut [T]) -> f64 {
    let b = p.len() as f64;
    let mut loss = 0.0;
    for i in 0..p.len() {
        let r = p[i].to_f64() - t[i].to_f64();
        loss += r * r;
        dp[i] = T::from_f64(2.0 * r / b);
    }
    loss / b
}

/// Mean squared error (the ratings model's loss); same math as [`mse_naive`], in `T`.
pub fn mse<T: Float>(p: &[T], t: &[T], dp: &mut [T]) -> f64 {
    let scale = T::from_f64(2.0) / T::from_usize(p.len());
    let mut loss = 0.0f64;
    for ((&pi, &ti), g) in p.iter().zip(t).zip(dp.iter_mut()) {
        let r = pi - ti;
        loss += (r * r).to_f64();
        *g = r * scale;
    }
    loss / p.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncf_core::Tol;
    use ncf_core::tol::assert_close;

    #[test]
    fn fused_bce_matches_textbook_in_f64() {
        let z: Vec<f64> = (0..41).map(|i| (i as f64 - 20.0) * 0.7).collect();
        let y: Vec<f64> = (0..41).map(|i| (i % 2) as f64).collect();
        let (mut d1, mut d2) = (vec![0.0; 41], vec![0.0; 41]);
        let l1 = bce_with_logits(&z, &y, &mut d1);
        let l2 = bce_with_logits_naive(&z, &y, &mut d2);
        assert_close("bce loss", &[l1], &[l2], Tol { abs: 1e-12, rel: 1e-10 });
        assert_close("bce dz", &d1, &d2, Tol { abs: 1e-12, rel: 1e-8 });
    }

    /// The loop shares one e^(−|z|) between the softplus and the sigmoid: the gradient has the
    /// same bits as the sigmoid called apart, on both signs, zeros and large logits; the loss
    /// (its logarithms summed as logarithms of products) is within 1e-6 of the f32 softplus
    /// terms' sum and within 1e-7 of the f64 softplus's.
    #[test]
    fn shared_exponential_keeps_softplus_and_sigmoid_bits() {
        use super::super::activation::sigmoid;
        let mut z: Vec<f32> = (0..400).map(|i| (i as f32 - 200.0) * 0.173).collect();
        z.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 200.0, -200.0]);
        let y: Vec<f32> = (0..z.len()).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let mut dz = vec![0.0f32; z.len()];
        let loss = bce_with_logits(&z, &y, &mut dz);
        let inv_b = 1.0 / z.len() as f32;
        let (mut want, mut exact) = (0.0f64, 0.0f64);
        for (k, (&zi, &yi)) in z.iter().zip(&y).enumerate() {
            want += f64::from(softplus(zi) - yi * zi);
            exact += softplus(f64::from(zi)) - f64::from(yi) * f64::from(zi);
            let g = (sigmoid(zi) - yi) * inv_b;
            assert_eq!(dz[k].to_bits(), g.to_bits(), "dz[{k}] at z = {zi}: got {}, want {g}", dz[k]);
        }
        let want = want / z.len() as f64;
        // The loss sums its logarithms as one per product (more exactly than f32 terms do).
        assert!((loss - want).abs() <= 1e-6 * want.abs(), "loss: got {loss}, want {want}");
        let exact = exact / z.len() as f64;
        assert!((loss - exact).abs() <= 1e-7 * exact.abs(), "loss: got {loss}, f64 softplus {exact}");
    }

    #[test]
    fn fused_bce_is_finite_where_textbook_is_not() {
        let z = [200.0f32, -200.0, 90.0];
        let y = [0.0f32, 1.0, 1.0];
        let mut dz = [0.0f32; 3];
        let l = bce_with_logits(&z, &y, &mut dz);
        assert!((l - 400.0 / 3.0).abs() < 1e-3, "loss {l}");
        assert!(dz.iter().all(|g| g.is_finite()), "{dz:?}");
        let mut dn = [0.0f32; 3];
        assert!(!bce_with_logits_naive(&z, &y, &mut dn).is_finite());
    }

    #[test]
    fn mse_matches_naive() {
        let p = [1.0f64, 2.5, -3.0];
        let t = [1.5f64, 2.0, 0.0];
        let (mut a, mut b) = ([0.0; 3], [0.0; 3]);
        assert_close("mse", &[mse(&p, &t, &mut a)], &[mse_naive(&p, &t, &mut b)], Tol::F64_KERNEL);
        assert_close("dmse", &a, &b, Tol::F64_KERNEL);
        assert_close("mse value", &[mse(&p, &t, &mut a)], &[(0.25 + 0.25 + 9.0) / 3.0], Tol::F64_KERNEL);
    }
}
