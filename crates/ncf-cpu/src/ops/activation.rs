//! Element-wise activations: ReLU and sigmoid.

use ncf_core::Float;
use rayon::prelude::*;

/// Below this many elements, element-wise ops stay on one thread.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 16;

/// Applies `f` to `out[i], a[i]` pairs, in parallel for large `n`; on one thread, through a
/// copy built for AVX2 where the CPU has it (the same operations: Rust fuses no multiply-add on
/// its own, so the same bits as the baseline build).
pub(crate) fn map1<T: Float, F: Fn(T) -> T + Sync>(a: &[T], out: &mut [T], f: F) {
    if out.len() >= PAR_MIN_ELEMS && crate::team::rayon_ok() {
        out.par_iter_mut().zip(a.par_iter()).for_each(|(o, &x)| *o = f(x));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { map1_avx2(a, out, &f) };
    }
    map1_in(a, out, &f)
}

/// [`map1`]'s serial loop built for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map1_avx2<T: Float, F: Fn(T) -> T>(a: &[T], out: &mut [T], f: &F) {
    map1_in(a, out, f)
}

#[inline(always)]
fn map1_in<T: Float, F: Fn(T) -> T>(a: &[T], out: &mut [T], f: &F) {
    out.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x));
}

/// Applies `f` to `out[i], a[i], c[i]` triples, in parallel for large `n`; on one thread as
/// [`map1`].
pub(crate) fn map2<T: Float, F: Fn(T, T) -> T + Sync>(a: &[T], c: &[T], out: &mut [T], f: F) {
    if out.len() >= PAR_MIN_ELEMS && crate::team::rayon_ok() {
        out.par_iter_mut().zip(a.par_iter().zip(c.par_iter())).for_each(|(o, (&x, &y))| *o = f(x, y));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::SimdLevel::Avx2Fma.is_available() {
        // SAFETY: the guard just checked that this CPU has AVX2 and FMA.
        return unsafe { map2_avx2(a, c, out, &f) };
    }
    map2_in(a, c, out, &f)
}

/// [`map2`]'s serial loop built for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map2_avx2<T: Float, F: Fn(T, T) -> T>(a: &[T], c: &[T], out: &mut [T], f: &F) {
    map2_in(a, c, out, f)
}

#[inline(always)]
fn map2_in<T: Float, F: Fn(T, T) -> T>(a: &[T], c: &[T], out: &mut [T], f: &F) {
    out.iter_mut().zip(a.iter().zip(c)).for_each(|(o, (&x, &y))| *o = f(x, y));
}

/// `relu(x) = max(x, 0)`. Reference.
pub fn relu_forward_naive<T: Float>(inp: &[T], out: &mut [T]) {
    for i in 0..out.len() {
        out[i] = if inp[i] > T::ZERO { inp[i] } else { T::ZERO };
    }
}

/// `relu(x) = max(x, 0)`;  `inp, out (N)`.
pub fn relu_forward<T: Float>(inp: &[T], out: &mut [T]) {
    map1(inp, out, |x| if x > T::ZERO { x } else { T::ZERO });
}

/// `∂relu/∂x = 1[x > 0]`, read off the output (`out > 0 ⇔ inp > 0`):  `dinp = dout·1[out > 0]`.
/// Reference.
pub fn relu_backward_naive<T: Float>(out: &[T], dout: &[T], dinp: &mut [T]) {
    for i in 0..dinp.len() {
        dinp[i] = if out[i] > T::ZERO { dout[i] } else { T::ZERO };
    }
}

/// `dinp = dout·1[out > 0]`;  `out, dout, dinp (N)`.
pub fn relu_backward<T: Float>(out: &[T], dout: &[T], dinp: &mut [T]) {
    map2(out, dout, dinp, |y, g| if y > T::ZERO { g } else { T::ZERO });
}

/// `σ(x) = 1/(1+e^{−x})`, evaluated without overflow for either sign of `x`:
/// for `x < 0` it uses the equal form `e^{x}/(1+e^{x})`.
#[inline]
pub fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// `out = σ(inp)`. Reference (the textbook formula, fine away from |x| ≈ 700 in f64).
pub fn sigmoid_forward_naive<T: Float>(inp: &[T], out: &mut [T]) {
    for i in 0..out.len() {
        out[i] = T::ONE / (T::ONE + (-inp[i]).exp());
    }
}

/// `out = σ(inp)`;  `inp, out (N)`.
pub fn sigmoid_forward<T: Float>(inp: &[T], out: &mut [T]) {
    map1(inp, out, sigmoid);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;
    use ncf_core::Tol;
    use ncf_core::tol::assert_close_f32;

    /// The serial loops give the same bits through the dispatched build (AVX2 where the CPU has
    /// it) and the portable one: a product, a ReLU and a sigmoid (a libm call inside).
    #[test]
    fn map_loops_give_the_same_bits_on_every_build() {
        let (a, c) = (rand_vec(1003, 1), rand_vec(1003, 2));
        let (mut got, mut want) = (vec![f32::NAN; 1003], vec![f32::NAN; 1003]);
        map2(&a, &c, &mut got, |p, q| p * q);
        map2_in(&a, &c, &mut want, &|p: f32, q: f32| p * q);
        assert_close_f32("map2 product", &got, &want, Tol { abs: 0.0, rel: 0.0 });
        map1(&a, &mut got, |p| if p > 0.0 { p } else { 0.0 });
        map1_in(&a, &mut want, &|p: f32| if p > 0.0 { p } else { 0.0 });
        assert_close_f32("map1 relu", &got, &want, Tol { abs: 0.0, rel: 0.0 });
        map1(&a, &mut got, |p| 1.0 / (1.0 + (-p).exp()));
        map1_in(&a, &mut want, &|p: f32| 1.0 / (1.0 + (-p).exp()));
        assert_close_f32("map1 sigmoid", &got, &want, Tol { abs: 0.0, rel: 0.0 });
    }

    #[test]
    fn relu_and_sigmoid_match_naive() {
        for n in [1, 33, 1 << 17] {
            let x: Vec<f32> = rand_vec(n, 7).iter().map(|v| v * 20.0).collect();
            let g = rand_vec(n, 8);
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            relu_forward(&x, &mut a);
            relu_forward_naive(&x, &mut b);
            assert_eq!(a, b);
            let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
            relu_backward(&a, &g, &mut da);
            relu_backward_naive(&b, &g, &mut db);
            assert_eq!(da, db);
            sigmoid_forward(&x, &mut a);
            sigmoid_forward_naive(&x, &mut b);
            assert_close_f32("sigmoid", &a, &b, Tol { abs: 1e-7, rel: 1e-6 });
        }
    }

    #[test]
    fn sigmoid_is_finite_at_extremes() {
        for x in [-1e4f32, -100.0, 0.0, 100.0, 1e4] {
            let s = sigmoid(x);
            assert!(s.is_finite() && (0.0..=1.0).contains(&s), "σ({x}) = {s}");
        }
        assert_eq!(sigmoid(0.0f64), 0.5);
    }
}
