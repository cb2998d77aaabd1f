//! Optimizer hyperparameters shared by every backend.
//!
//! The update rules themselves live in each backend (`ncf-cpu/src/ops/optim.rs`,
//! `kernels/optim.cu`); these structs only say what to do.

/// How a parameter group is regularized.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Decay {
    /// No regularization.
    #[default]
    None,
    /// L2 penalty `½·λ·‖w‖²` added to the loss, i.e. `g ← g + λ·w` before the update
    /// (what Keras' `l2(λ)` regularizer and PyTorch's `weight_decay` do for Adam/SGD).
    L2(f64),
    /// Decoupled weight decay (AdamW, Loshchilov & Hutter): `w ← w − lr·λ·w`, applied beside
    /// the gradient step rather than through it.
    Decoupled(f64),
}

impl Decay {
    /// The coefficient added to the gradient (`λ` for L2, 0 otherwise).
    pub fn l2(self) -> f64 {
        match self {
            Decay::L2(l) => l,
            _ => 0.0,
        }
    }
    /// The decoupled coefficient (`λ` for decoupled decay, 0 otherwise).
    pub fn decoupled(self) -> f64 {
        match self {
            Decay::Decoupled(l) => l,
            _ => 0.0,
        }
    }
}

/// SGD with (heavy-ball) momentum, PyTorch's formulation:
/// `g ← g + λ·w;  m ← μ·m + g;  w ← w − lr·m` (and `w ← w − lr·λ_d·w` for decoupled decay).
/// The first step uses `m = g`, which equals the formula above with `m` initialised to zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHp {
    pub lr: f64,
    pub momentum: f64,
    pub decay: Decay,
}

/// Adam with bias correction (Kingma & Ba), PyTorch's formulation:
/// `g ← g + λ·w;  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;`
/// `w ← w − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHp {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub decay: Decay,
}

impl Default for AdamHp {
    /// The original NCF code's Adam: lr 0.001, β₁ 0.9, β₂ 0.999 (ε 1e-8 as in PyTorch).
    fn default() -> Self {
        AdamHp { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, decay: Decay::None }
    }
}

impl Default for SgdHp {
    fn default() -> Self {
        SgdHp { lr: 0.1, momentum: 0.9, decay: Decay::None }
    }
}

/// Which rule updates a parameter group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimKind {
    Sgd(SgdHp),
    Adam(AdamHp),
}

impl OptimKind {
    /// The same rule with a different regularization.
    pub fn with_decay(self, decay: Decay) -> Self {
        match self {
            OptimKind::Sgd(h) => OptimKind::Sgd(SgdHp { decay, ..h }),
            OptimKind::Adam(h) => OptimKind::Adam(AdamHp { decay, ..h }),
        }
    }
    /// The learning rate.
    pub fn lr(self) -> f64 {
        match self {
            OptimKind::Sgd(h) => h.lr,
            OptimKind::Adam(h) => h.lr,
        }
    }
}
