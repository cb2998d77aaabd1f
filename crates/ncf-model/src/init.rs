//! Weight initialisation, following the original NCF code (Keras 1):
//! embeddings `N(0, 0.01)`, hidden layers Glorot uniform, the output layer LeCun uniform,
//! biases zero. Every scheme is selectable, so other choices can be compared.

use ncf_core::Rng;
use rand::RngExt;
use rand_distr::{Distribution, Normal};

/// How to fill one tensor. Fan-in/fan-out come from a weight's shape `(O, I)`: fan_in = I,
/// fan_out = O.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    /// `N(0, std²)`.
    Normal {
        std: f64,
    },
    /// `U(−a, a)`, `a = √(6 / (fan_in + fan_out))` (Glorot & Bengio 2010).
    GlorotUniform,
    /// `U(−a, a)`, `a = √(3 / fan_in)` (LeCun 1998).
    LecunUniform,
    /// `U(−a, a)`.
    Uniform {
        a: f64,
    },
    /// Every element `value` (batch norm's scale and running variance start at 1).
    Const {
        value: f64,
    },
}

impl Init {
    /// Draws `Π shape` values.
    pub fn sample(self, shape: &[usize], rng: &mut Rng) -> Vec<f64> {
        let n: usize = shape.iter().product();
        let fan_in = if shape.len() >= 2 { shape[1..].iter().product::<usize>() } else { shape[0] } as f64;
        let fan_out = shape[0] as f64;
        let uniform = |a: f64, rng: &mut Rng| (0..n).map(|_| rng.random_range(-a..a)).collect();
        match self {
            Init::Zeros => vec![0.0; n],
            Init::Normal { std } => {
                let d = Normal::new(0.0, std).unwrap_or_else(|_| Normal::new(0.0, 0.0).expect("N(0,0) is valid"));
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Init::GlorotUniform => uniform((6.0 / (fan_in + fan_out)).sqrt(), rng),
            Init::LecunUniform => uniform((3.0 / fan_in).sqrt(), rng),
            Init::Uniform { a } => uniform(a, rng),
            Init::Const { value } => vec![value; n],
        }
    }
}

/// Which scheme each kind of tensor gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InitConfig {
    pub embedding: Init,
    pub hidden: Init,
    pub output: Init,
    pub bias: Init,
}

impl Default for InitConfig {
    /// The original NCF code's choices.
    fn default() -> Self {
        InitConfig {
            embedding: Init::Normal { std: 0.01 },
            hidden: Init::GlorotUniform,
            output: Init::LecunUniform,
            bias: Init::Zeros,
        }
    }
}

impl InitConfig {
    /// Larger embeddings and non-zero biases, so that a gradient check exercises every term
    /// (with `N(0, 0.01)` embeddings the GMF product is ~1e-4 and its gradients vanish).
    pub fn for_gradcheck() -> Self {
        InitConfig {
            embedding: Init::Normal { std: 0.5 },
            hidden: Init::GlorotUniform,
            output: Init::LecunUniform,
            bias: Init::Uniform { a: 0.3 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_have_the_documented_ranges() {
        let mut rng = ncf_core::rng::seeded(1, 0);
        let g = Init::GlorotUniform.sample(&[30, 50], &mut rng);
        let a = (6.0f64 / 80.0).sqrt();
        assert!(g.iter().all(|x| x.abs() <= a) && g.iter().any(|x| x.abs() > 0.9 * a));
        let l = Init::LecunUniform.sample(&[1, 12], &mut rng);
        assert!(l.iter().all(|x| x.abs() <= 0.5));
        let e = Init::Normal { std: 0.01 }.sample(&[1000, 10], &mut rng);
        let var = e.iter().map(|x| x * x).sum::<f64>() / e.len() as f64;
        assert!((var.sqrt() - 0.01).abs() < 0.0005, "std {}", var.sqrt());
        assert_eq!(Init::Zeros.sample(&[3], &mut rng), vec![0.0; 3]);
    }
}
