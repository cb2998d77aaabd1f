//! The four models. Each is a few blocks from [`crate::layers`] wired together; `forward`
//! produces logits `(B)`, `backward` takes `∂L/∂logits (B)` and accumulates every parameter
//! gradient.
//!
//! | model | score for (u, i) | paper |
//! |---|---|---|
//! | GMF   | `wᵀ(P[u] ⊙ Q[i]) + b` | He et al. 2017, §3.2 |
//! | MLP   | `wᵀ·MLP([P[u], Q[i]]) + b` | §3.3 |
//! | NeuMF | `wᵀ[P_g[u] ⊙ Q_g[i], MLP([P_m[u], Q_m[i]])] + b` | §3.4 |
//! | MF    | `P[u]·Q[i] + b_u + b_i + g` | Rendle et al. 2020 |
//! | rating | `wᵀ·MLP([P[u], Q[i]]) + b + b_u + b_i` (a predicted star rating, trained with MSE) | the deep-CF seed |

use crate::init::{Init, InitConfig};
use crate::layers::{DenseIdx, EmbeddingPair, GmfTower, Head, MlpTower, NormIdx, check_batch};
use crate::params::{IdSource, ParamBuilder, ParamSet, Role};
use ncf_core::{Backend, Error, Float, Result, Rng};
use std::fmt;
use std::str::FromStr;

/// Which model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Gmf,
    Mlp,
    NeuMf,
    Mf,
    /// Explicit ratings: a predicted rating, not a logit (see [`Rating`]).
    Rating,
}

impl ModelKind {
    /// The four implicit-feedback models (scores are logits of "the user interacts").
    pub const ALL: [ModelKind; 4] = [ModelKind::Gmf, ModelKind::Mlp, ModelKind::NeuMf, ModelKind::Mf];
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Gmf => "gmf",
            ModelKind::Mlp => "mlp",
            ModelKind::NeuMf => "neumf",
            ModelKind::Mf => "mf",
            ModelKind::Rating => "rating",
        }
    }
    /// Whether the model predicts explicit ratings (trained with MSE) rather than logits.
    pub fn is_rating(self) -> bool {
        self == ModelKind::Rating
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ModelKind::ALL.into_iter().chain([ModelKind::Rating]).find(|k| k.as_str().eq_ignore_ascii_case(s)).ok_or_else(
            || {
                Error::invalid(
                    "ModelKind::from_str",
                    "model",
                    format!("`{s}` is not one of gmf, mlp, neumf, mf, rating"),
                )
            },
        )
    }
}

/// Everything needed to build a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub users: usize,
    pub items: usize,
    /// GMF / MF embedding width (the paper's "predictive factors").
    pub factors: usize,
    /// MLP layer widths; `layers[0]` is the concatenated embedding width (so each side is
    /// `layers[0] / 2`), the rest are the dense layers' outputs. Default `[64, 32, 16, 8]`.
    pub layers: Vec<usize>,
    pub init: InitConfig,
    /// Batch normalization after each dense layer of the tower, before its ReLU (the rating
    /// model only).
    pub batch_norm: bool,
    /// Inverted dropout on each dense layer's output at this drop probability, `0` for none
    /// (the rating model only).
    pub dropout: f64,
    /// Side features (the hybrid models): the widths of the users' and the items' multi-hot
    /// rows, concatenated to the MLP tower's input; 0 = none. Their tables are loaded after
    /// construction (`user_features`, `item_features`).
    pub user_features: usize,
    pub item_features: usize,
}

impl ModelConfig {
    pub fn new(kind: ModelKind, users: usize, items: usize) -> Self {
        ModelConfig {
            kind,
            users,
            items,
            factors: 8,
            layers: vec![64, 32, 16, 8],
            init: InitConfig::default(),
            batch_norm: false,
            dropout: 0.0,
            user_features: 0,
            item_features: 0,
        }
    }

    /// Rejects configurations no model can be built from.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "ModelConfig";
        if self.users == 0 || self.items == 0 {
            return Err(Error::invalid(
                OP,
                "users/items",
                format!("need at least one user and one item, got {} users and {} items", self.users, self.items),
            ));
        }
        if matches!(self.kind, ModelKind::Gmf | ModelKind::NeuMf | ModelKind::Mf) && self.factors == 0 {
            return Err(Error::invalid(OP, "factors", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(OP, "dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        let hybrid = self.user_features + self.item_features > 0;
        if hybrid && !matches!(self.kind, ModelKind::Rating | ModelKind::NeuMf | ModelKind::Mlp) {
            return Err(Error::invalid(
                OP,
                "features",
                format!("side features go into the MLP tower (rating, neumf, mlp), not {}", self.kind),
            ));
        }
        if (self.batch_norm || self.dropout > 0.0) && self.kind != ModelKind::Rating {
            return Err(Error::invalid(
                OP,
                "batch_norm/dropout",
                format!("batch norm and dropout are offered for the rating model's tower, not for {}", self.kind),
            ));
        }
        if matches!(self.kind, ModelKind::Mlp | ModelKind::NeuMf | ModelKind::Rating) {
            if self.layers.len() < 2 {
                return Err(Error::invalid(
                    OP,
                    "layers",
                    format!("need the input width and at least one dense layer, got {:?}", self.layers),
                ));
            }
            if !self.layers[0].is_multiple_of(2) || self.layers.contains(&0) {
                return Err(Error::invalid(
                    OP,
                    "layers",
                    format!(
                        "layers[0] must be even (it is two embeddings side by side) and no width may be 0, got {:?}",
                        self.layers
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl ModelConfig {
    /// How many weights (every parameter's elements, batch-norm statistics and side-feature
    /// tables included) a model of this configuration holds, computed without allocating
    /// anything; `None` if the count overflows `usize`. A checkpoint loader compares it with
    /// what a file holds before building the model, so a spec declaring a huge table cannot
    /// make it allocate one. It mirrors the builders (`add_gmf`, `add_mlp`, `add_head`, `Mf::new`,
    /// `Rating::new`); a test checks it against the models they build.
    pub fn weight_count(&self) -> Option<usize> {
        let (u, i) = (self.users, self.items);
        let tables = |width: usize| u.checked_add(i)?.checked_mul(width);
        let head = |width: usize| width.checked_add(1);
        let mlp = || -> Option<(usize, usize)> {
            let mut n = tables(*self.layers.first()? / 2)?;
            for (l, win) in self.layers.windows(2).enumerate() {
                let inputs = if l == 0 { win[0] + self.user_features + self.item_features } else { win[0] };
                let o = win[1];
                n = n.checked_add(o.checked_mul(inputs)?)?.checked_add(o)?;
                if self.batch_norm {
                    n = n.checked_add(o.checked_mul(4)?)?;
                }
            }
            let features = u.checked_mul(self.user_features)?.checked_add(i.checked_mul(self.item_features)?)?;
            Some((n.checked_add(features)?, *self.layers.last()?))
        };
        match self.kind {
            ModelKind::Gmf => tables(self.factors)?.checked_add(head(self.factors)?),
            ModelKind::Mlp => {
                let (n, out) = mlp()?;
                n.checked_add(head(out)?)
            }
            ModelKind::NeuMf => {
                let (n, out) = mlp()?;
                tables(self.factors)?.checked_add(n)?.checked_add(head(self.factors.checked_add(out)?)?)
            }
            ModelKind::Mf => tables(self.factors)?.checked_add(tables(1)?)?.checked_add(1),
            ModelKind::Rating => {
                let (n, out) = mlp()?;
                n.checked_add(head(out)?)?.checked_add(tables(1)?)
            }
        }
    }
}

/// What the trainer and the gradient check need from a model.
pub trait Model<B: Backend> {
    fn kind(&self) -> ModelKind;
    fn params(&self) -> &ParamSet<B>;
    fn grads(&self) -> &ParamSet<B>;
    /// Both at once, for the optimizer.
    fn params_and_grads(&mut self) -> (&mut ParamSet<B>, &mut ParamSet<B>);
    /// The largest batch the workspaces hold.
    fn max_batch(&self) -> usize;
    /// Computes logits `(B)` for `(users[b], items[b])`, `b < B`.
    fn forward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()>;
    /// The logits of the last forward.
    fn logits(&self) -> &B::Buf;
    /// Given `∂L/∂logits (B)`, accumulates `∂L/∂θ` into the grads. Call after `forward` on the
    /// same batch.
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()>;
    /// Signs of every ReLU pre-activation of the last forward (empty for models without ReLU).
    fn relu_pattern(&self, _be: &B, _b: usize) -> Result<Vec<bool>> {
        Ok(Vec::new())
    }
    /// Gets ready for [`Model::score`]: precomputes what inference alone allows (for MLP and
    /// NeuMF, the first dense layer per user and per item). Call again after the weights change;
    /// `score` refuses stale tables.
    fn prepare_scoring(&mut self, _be: &B) -> Result<()> {
        Ok(())
    }
    /// Logits for `(users[b], items[b])` into [`Model::logits`]: the values of
    /// [`Model::forward`] up to float rounding, faster, and with no backward allowed after.
    fn score(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.forward(be, users, items, b)
    }
}

/// Adds an MLP tower's parameters and returns the tower (buffers for `rows` rows).
fn add_mlp<B: Backend>(be: &B, pb: &mut ParamBuilder<B>, cfg: &ModelConfig, rows: usize) -> Result<MlpTower<B>> {
    let d = cfg.layers[0] / 2;
    let user = pb.add("mlp_user_embedding", &[cfg.users, d], Role::Embedding(IdSource::User), cfg.init.embedding)?;
    let item = pb.add("mlp_item_embedding", &[cfg.items, d], Role::Embedding(IdSource::Item), cfg.init.embedding)?;
    let mut dense = Vec::new();
    for (l, win) in cfg.layers.windows(2).enumerate() {
        // Layer 0 also reads the side features' columns (the hybrid models).
        let i = if l == 0 { win[0] + cfg.user_features + cfg.item_features } else { win[0] };
        let o = win[1];
        let w = pb.add(format!("mlp_{l}_weight"), &[o, i], Role::Weight, cfg.init.hidden)?;
        let bias = pb.add(format!("mlp_{l}_bias"), &[o], Role::Bias, cfg.init.bias)?;
        dense.push(DenseIdx { w, bias, i, o });
    }
    let mut norms = Vec::new();
    if cfg.batch_norm {
        for (l, layer) in dense.iter().enumerate() {
            let one = Init::Const { value: 1.0 };
            let gamma = pb.add(format!("mlp_{l}_bn_gamma"), &[layer.o], Role::Bias, one)?;
            let beta = pb.add(format!("mlp_{l}_bn_beta"), &[layer.o], Role::Bias, Init::Zeros)?;
            pb.add(format!("mlp_{l}_bn_mean"), &[layer.o], Role::Stat, Init::Zeros)?;
            pb.add(format!("mlp_{l}_bn_var"), &[layer.o], Role::Stat, one)?;
            norms.push(Some(NormIdx { gamma, beta }));
        }
    }
    // Side features: constant multi-hot tables the trainer loads (`Role::Stat`: never trained).
    let side = |pb: &mut ParamBuilder<B>, name: &str, n: usize, w: usize| -> Result<Option<(usize, usize)>> {
        if w == 0 {
            return Ok(None);
        }
        Ok(Some((pb.add(name, &[n, w], Role::Stat, Init::Zeros)?, w)))
    };
    let fu = side(pb, "user_features", cfg.users, cfg.user_features)?;
    let fi = side(pb, "item_features", cfg.items, cfg.item_features)?;
    let pair = EmbeddingPair::new(be, user, item, cfg.users, cfg.items, d, rows)?;
    MlpTower::new(be, pair, dense, rows)?.with_features(be, fu, fi, rows)?.regularize(be, &norms, cfg.dropout, rows)
}

/// Adds a GMF tower's parameters and returns the tower (buffers for `rows` rows).
fn add_gmf<B: Backend>(be: &B, pb: &mut ParamBuilder<B>, cfg: &ModelConfig, rows: usize) -> Result<GmfTower<B>> {
    let f = cfg.factors;
    let user = pb.add("gmf_user_embedding", &[cfg.users, f], Role::Embedding(IdSource::User), cfg.init.embedding)?;
    let item = pb.add("gmf_item_embedding", &[cfg.items, f], Role::Embedding(IdSource::Item), cfg.init.embedding)?;
    GmfTower::new(be, EmbeddingPair::new(be, user, item, cfg.users, cfg.items, f, rows)?, rows)
}

/// Adds the prediction layer `(1, i)` and returns it (buffers for `rows` rows).
fn add_head<B: Backend>(be: &B, pb: &mut ParamBuilder<B>, cfg: &ModelConfig, i: usize, rows: usize) -> Result<Head<B>> {
    let w = pb.add("predict_weight", &[1, i], Role::Weight, cfg.init.output)?;
    let b = pb.add("predict_bias", &[1], Role::Bias, cfg.init.bias)?;
    Head::new(be, w, b, i, rows)
}

// ------------------------------------------------------------------------------------ GMF

/// Generalized Matrix Factorization: `logit = wᵀ(P[u] ⊙ Q[i]) + b`.
pub struct Gmf<B: Backend> {
    pub params: ParamSet<B>,
    pub grads: ParamSet<B>,
    pub acts: GmfActs<B>,
    max_batch: usize,
}

/// GMF's activations: the tower and the head.
pub struct GmfActs<B: Backend> {
    pub gmf: GmfTower<B>,
    pub head: Head<B>,
}

impl<B: Backend> GmfActs<B> {
    /// `h = P[u] ⊙ Q[i]`, then `logit = h·wᵀ + b`.
    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.gmf.forward(be, p, users, items, b)?;
        self.head.forward(be, p, &self.gmf.h, b)
    }

    /// The chain rule from the logits back to the tables.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        users: &B::Ids,
        items: &B::Ids,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        self.head.backward(be, p, g, &self.gmf.h, dlogits, b)?; // dw, db; dh = dlogit·w
        self.gmf.backward(be, &self.head.dinp, b)?; // each row's dP[u], dQ[i]
        self.gmf.emb.backward(be, g, users, items, b) // += into P and Q
    }
}

impl<B: Backend> Gmf<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut pb = ParamBuilder::new(be, rng);
        let gmf = add_gmf(be, &mut pb, cfg, max_batch)?;
        let head = add_head(be, &mut pb, cfg, cfg.factors, max_batch)?;
        let params = pb.finish();
        Ok(Gmf { grads: params.zeros_like(be)?, params, acts: GmfActs { gmf, head }, max_batch })
    }
}

impl<B: Backend> Model<B> for Gmf<B> {
    fn kind(&self) -> ModelKind {
        ModelKind::Gmf
    }
    fn params(&self) -> &ParamSet<B> {
        &self.params
    }
    fn grads(&self) -> &ParamSet<B> {
        &self.grads
    }
    fn params_and_grads(&mut self) -> (&mut ParamSet<B>, &mut ParamSet<B>) {
        (&mut self.params, &mut self.grads)
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn forward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("gmf.forward", b, self.max_batch)?;
        self.acts.forward(be, &self.params, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.acts.head.logits
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("gmf.backward", b, self.max_batch)?;
        self.acts.backward(be, &self.params, &mut self.grads, users, items, dlogits, b)
    }
}

// ------------------------------------------------------------------------------------ MLP

/// Multi-Layer Perceptron: `logit = wᵀ·MLP([P[u], Q[i]]) + b`.
pub struct Mlp<B: Backend> {
    pub params: ParamSet<B>,
    pub grads: ParamSet<B>,
    pub acts: MlpActs<B>,
    max_batch: usize,
}

/// The MLP's activations: the tower and the head.
pub struct MlpActs<B: Backend> {
    pub mlp: MlpTower<B>,
    pub head: Head<B>,
}

impl<B: Backend> MlpActs<B> {
    /// `x_L = MLP([P[u], Q[i]])`, then `logit = x_L·wᵀ + b`.
    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.mlp.forward(be, p, users, items, b)?;
        self.head.forward(be, p, self.mlp.out(), b)
    }

    /// The chain rule from the logits back to the tables.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        users: &B::Ids,
        items: &B::Ids,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        self.head.backward(be, p, g, self.mlp.out(), dlogits, b)?; // dw, db; dx_L = dlogit·w
        self.mlp.backward(be, p, g, &self.head.dinp, b)?; // dense layers in reverse; rows of dP[u], dQ[i]
        self.mlp.emb.backward(be, g, users, items, b) // += into P and Q
    }
}

impl<B: Backend> Mlp<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut pb = ParamBuilder::new(be, rng);
        let mlp = add_mlp(be, &mut pb, cfg, max_batch)?;
        let head = add_head(be, &mut pb, cfg, mlp.out_width(), max_batch)?;
        let params = pb.finish();
        Ok(Mlp { grads: params.zeros_like(be)?, params, acts: MlpActs { mlp, head }, max_batch })
    }
}

impl<B: Backend> Model<B> for Mlp<B> {
    fn kind(&self) -> ModelKind {
        ModelKind::Mlp
    }
    fn params(&self) -> &ParamSet<B> {
        &self.params
    }
    fn grads(&self) -> &ParamSet<B> {
        &self.grads
    }
    fn params_and_grads(&mut self) -> (&mut ParamSet<B>, &mut ParamSet<B>) {
        (&mut self.params, &mut self.grads)
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn forward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("mlp.forward", b, self.max_batch)?;
        self.acts.forward(be, &self.params, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.acts.head.logits
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("mlp.backward", b, self.max_batch)?;
        self.acts.backward(be, &self.params, &mut self.grads, users, items, dlogits, b)
    }
    fn prepare_scoring(&mut self, be: &B) -> Result<()> {
        self.acts.mlp.prepare_scoring(be, &self.params)
    }
    fn score(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("mlp.score", b, self.max_batch)?;
        let a = &mut self.acts;
        a.mlp.forward_scoring(be, &self.params, users, items, b)?;
        a.head.forward(be, &self.params, a.mlp.out(), b)
    }
    fn relu_pattern(&self, be: &B, b: usize) -> Result<Vec<bool>> {
        self.acts.mlp.relu_pattern(be, b)
    }
}

// ------------------------------------------------------------------------------------ NeuMF

/// Neural Matrix Factorization: GMF and MLP towers with separate embeddings; their outputs are
/// concatenated (GMF first) and fed to one prediction layer.
///
/// `cat = [h_gmf (B,F), x_mlp (B,H)] (B,F+H)`,  `logit = cat · wᵀ + b`.
/// Backward: the head gives `dcat`, which splits back into `dh_gmf` and `dx_mlp`.
pub struct NeuMf<B: Backend> {
    pub params: ParamSet<B>,
    pub grads: ParamSet<B>,
    pub acts: NeuMfActs<B>,
    max_batch: usize,
}

/// NeuMF's activations: both towers, the concatenation and the head.
pub struct NeuMfActs<B: Backend> {
    pub gmf: GmfTower<B>,
    pub mlp: MlpTower<B>,
    pub cat: B::Buf,
    pub dh_gmf: B::Buf,
    pub dx_mlp: B::Buf,
    pub head: Head<B>,
}

impl<B: Backend> NeuMfActs<B> {
    fn new(be: &B, gmf: GmfTower<B>, mlp: MlpTower<B>, head: Head<B>, rows: usize) -> Result<Self> {
        let (f, h) = (gmf.f(), mlp.out_width());
        Ok(NeuMfActs {
            cat: be.zeros(rows * (f + h))?,
            dh_gmf: be.zeros(rows * f)?,
            dx_mlp: be.zeros(rows * h)?,
            gmf,
            mlp,
            head,
        })
    }

    /// The same blocks with buffers for `rows` rows.
    pub fn like(&self, be: &B, rows: usize) -> Result<Self> {
        Self::new(be, self.gmf.like(be, rows)?, self.mlp.like(be, rows)?, self.head.like(be, rows)?, rows)
    }

    /// Both towers, their concatenation, the head.
    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.gmf.forward(be, p, users, items, b)?; // h = P_g[u] ⊙ Q_g[i]           (B,F)
        self.mlp.forward(be, p, users, items, b)?; // x = MLP([P_m[u], Q_m[i]])      (B,H)
        let (f, h) = (self.gmf.f(), self.mlp.out_width());
        be.concat_cols(&self.gmf.h, f, self.mlp.out(), h, b, &mut self.cat)?; // cat = [h, x]  (B,F+H)
        self.head.forward(be, p, &self.cat, b) // logit = cat·wᵀ + b                  (B)
    }

    /// The chain rule from the logits back to the tables: the head, the split of `dcat`, the
    /// MLP tower, the GMF tower, then the four tables' scatter-adds.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        users: &B::Ids,
        items: &B::Ids,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        let (f, h) = (self.gmf.f(), self.mlp.out_width());
        self.head.backward(be, p, g, &self.cat, dlogits, b)?; // dw, db; dcat = dlogit·w
        be.split_cols(&self.head.dinp, f, h, b, &mut self.dh_gmf, &mut self.dx_mlp)?; // dcat = [dh, dx]
        self.mlp.backward(be, p, g, &self.dx_mlp, b)?; // dense layers in reverse; rows of dP_m[u], dQ_m[i]
        self.gmf.backward(be, &self.dh_gmf, b)?; // rows of dP_g[u] = dh ⊙ Q_g[i], dQ_g[i] = dh ⊙ P_g[u]
        self.mlp.emb.backward(be, g, users, items, b)?; // += into P_m and Q_m
        self.gmf.emb.backward(be, g, users, items, b) // += into P_g and Q_g
    }
}

impl<B: Backend> NeuMf<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut pb = ParamBuilder::new(be, rng);
        let gmf = add_gmf(be, &mut pb, cfg, max_batch)?;
        let mlp = add_mlp(be, &mut pb, cfg, max_batch)?;
        let head = add_head(be, &mut pb, cfg, gmf.f() + mlp.out_width(), max_batch)?;
        let params = pb.finish();
        Ok(NeuMf {
            grads: params.zeros_like(be)?,
            params,
            acts: NeuMfActs::new(be, gmf, mlp, head, max_batch)?,
            max_batch,
        })
    }

    /// NeuMF initialised from a trained GMF and a trained MLP (the paper's pre-training, §3.4.1):
    /// embeddings and dense layers are copied; the prediction layer becomes
    /// `w = [α·w_gmf, (1−α)·w_mlp]`, `b = α·b_gmf + (1−α)·b_mlp` (the original code uses α = 0.5).
    pub fn from_pretrained(
        be: &B,
        cfg: &ModelConfig,
        gmf: &Gmf<B>,
        mlp: &Mlp<B>,
        alpha: f64,
        max_batch: usize,
    ) -> Result<Self> {
        const OP: &str = "NeuMf::from_pretrained";
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::invalid(OP, "alpha", format!("must lie in [0, 1], got {alpha}")));
        }
        // Init draws are irrelevant here: every tensor is overwritten below.
        let mut rng = ncf_core::rng::seeded(0, 0);
        let mut m = NeuMf::new(be, cfg, max_batch, &mut rng)?;
        for src in gmf.params.to_host(be)?.into_iter().chain(mlp.params.to_host(be)?) {
            if src.name.starts_with("predict_") {
                continue;
            }
            m.params.load(be, &src.name, &src.data).map_err(|e| match e {
                Error::ShapeMismatch { expected, got, .. } => Error::shape(OP, "pretrained tensor", expected, got),
                other => other,
            })?;
        }
        let get = |ps: &ParamSet<B>, name: &str| -> Result<Vec<f64>> {
            let k = ps.index(name).ok_or_else(|| Error::invalid(OP, "pretrained", format!("missing `{name}`")))?;
            Ok(ps.to_host(be)?.swap_remove(k).data)
        };
        let (wg, bg) = (get(&gmf.params, "predict_weight")?, get(&gmf.params, "predict_bias")?);
        let (wm, bm) = (get(&mlp.params, "predict_weight")?, get(&mlp.params, "predict_bias")?);
        let w: Vec<f64> = wg.iter().map(|x| alpha * x).chain(wm.iter().map(|x| (1.0 - alpha) * x)).collect();
        m.params.load(be, "predict_weight", &w)?;
        m.params.load(be, "predict_bias", &[alpha * bg[0] + (1.0 - alpha) * bm[0]])?;
        Ok(m)
    }
}

impl<B: Backend> Model<B> for NeuMf<B> {
    fn kind(&self) -> ModelKind {
        ModelKind::NeuMf
    }
    fn params(&self) -> &ParamSet<B> {
        &self.params
    }
    fn grads(&self) -> &ParamSet<B> {
        &self.grads
    }
    fn params_and_grads(&mut self) -> (&mut ParamSet<B>, &mut ParamSet<B>) {
        (&mut self.params, &mut self.grads)
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn forward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("neumf.forward", b, self.max_batch)?;
        self.acts.forward(be, &self.params, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.acts.head.logits
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("neumf.backward", b, self.max_batch)?;
        self.acts.backward(be, &self.params, &mut self.grads, users, items, dlogits, b)
    }
    fn prepare_scoring(&mut self, be: &B) -> Result<()> {
        self.acts.mlp.prepare_scoring(be, &self.params)
    }
    fn score(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("neumf.score", b, self.max_batch)?;
        let a = &mut self.acts;
        a.gmf.forward(be, &self.params, users, items, b)?;
        a.mlp.forward_scoring(be, &self.params, users, items, b)?;
        be.concat_cols(&a.gmf.h, a.gmf.f(), a.mlp.out(), a.mlp.out_width(), b, &mut a.cat)?;
        a.head.forward(be, &self.params, &a.cat, b)
    }
    fn relu_pattern(&self, be: &B, b: usize) -> Result<Vec<bool>> {
        self.acts.mlp.relu_pattern(be, b)
    }
}

// ------------------------------------------------------------------------------------ MF

/// Matrix factorization with biases: `logit = P[u]·Q[i] + b_u[u] + b_i[i] + g`.
///
/// `P (U,D)  Q (I,D)  b_u (U,1)  b_i (I,1)  g (1)`. The bias vectors are width-1 embedding
/// tables, so they reuse the gather/scatter kernels. Backward: `∂logit/∂b_u[u] = 1`, so
/// `db_u[u] += dlogit` (a scatter), `dg += Σ_b dlogit`, and the dot product's rule
/// `dP[u] += dlogit·Q[i]`, `dQ[i] += dlogit·P[u]`.
pub struct Mf<B: Backend> {
    pub params: ParamSet<B>,
    pub grads: ParamSet<B>,
    /// `P[u]`, `Q[i]` and their row gradients.
    emb: EmbeddingPair<B>,
    user_bias: usize,
    item_bias: usize,
    global_bias: usize,
    bias_rows: B::Buf,
    logits: B::Buf,
    max_batch: usize,
}

impl<B: Backend> Mf<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.factors;
        let mut pb = ParamBuilder::new(be, rng);
        let user = pb.add("mf_user_embedding", &[cfg.users, d], Role::Embedding(IdSource::User), cfg.init.embedding)?;
        let item = pb.add("mf_item_embedding", &[cfg.items, d], Role::Embedding(IdSource::Item), cfg.init.embedding)?;
        let user_bias = pb.add("user_bias", &[cfg.users, 1], Role::Embedding(IdSource::User), cfg.init.bias)?;
        let item_bias = pb.add("item_bias", &[cfg.items, 1], Role::Embedding(IdSource::Item), cfg.init.bias)?;
        let global_bias = pb.add("global_bias", &[1], Role::Bias, cfg.init.bias)?;
        let params = pb.finish();
        Ok(Mf {
            grads: params.zeros_like(be)?,
            params,
            emb: EmbeddingPair::new(be, user, item, cfg.users, cfg.items, d, max_batch)?,
            user_bias,
            item_bias,
            global_bias,
            bias_rows: be.zeros(max_batch)?,
            logits: be.zeros(max_batch)?,
            max_batch,
        })
    }
}

impl<B: Backend> Model<B> for Mf<B> {
    fn kind(&self) -> ModelKind {
        ModelKind::Mf
    }
    fn params(&self) -> &ParamSet<B> {
        &self.params
    }
    fn grads(&self) -> &ParamSet<B> {
        &self.grads
    }
    fn params_and_grads(&mut self) -> (&mut ParamSet<B>, &mut ParamSet<B>) {
        (&mut self.params, &mut self.grads)
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn forward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("mf.forward", b, self.max_batch)?;
        let (p, e) = (&self.params, &mut self.emb);
        let (users_n, items_n) = (e.users, e.items);
        e.forward(be, p, users, items, b)?; // pu = P[u], qi = Q[i]
        be.rowdot_forward(&e.pu, &e.qi, b, e.d, &mut self.logits)?; // logit = pu·qi
        be.embedding_forward(p.buf(self.user_bias), users_n, 1, users, b, &mut self.bias_rows)?;
        be.add_assign(&mut self.logits, &self.bias_rows, b)?; // + b_u[u]
        be.embedding_forward(p.buf(self.item_bias), items_n, 1, items, b, &mut self.bias_rows)?;
        be.add_assign(&mut self.logits, &self.bias_rows, b)?; // + b_i[i]
        be.add_scalar(&mut self.logits, p.buf(self.global_bias), b) // + g
    }
    fn logits(&self) -> &B::Buf {
        &self.logits
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("mf.backward", b, self.max_batch)?;
        let (g, e) = (&mut self.grads, &mut self.emb);
        be.sum_into(dlogits, b, g.buf_mut(self.global_bias))?; // dg += Σ dlogit
        be.embedding_backward(dlogits, items, b, 1, g.buf_mut(self.item_bias), e.items)?; // db_i[i] += dlogit
        be.embedding_backward(dlogits, users, b, 1, g.buf_mut(self.user_bias), e.users)?; // db_u[u] += dlogit
        be.rowdot_backward(dlogits, &e.pu, &e.qi, b, e.d, &mut e.dpu, &mut e.dqi)?; // rows of dP[u], dQ[i]
        e.backward(be, g, users, items, b) // += into P and Q
    }
}

// ------------------------------------------------------------------------------------ rating

/// The rating model: `r̂ = wᵀ·MLP([P[u], Q[i]]) + b + b_u[u] + b_i[i]`, a predicted rating.
///
/// The MLP tower (ReLU after every dense layer) and a linear output; its bias `b` is the
/// global mean μ (the trainer starts it at the training mean), `b_u (U,1)`, `b_i (I,1)` are
/// width-1 embedding tables as in MF. Backward: the head and the tower as in [`Mlp`], and
/// `db_u[u] += dr̂`, `db_i[i] += dr̂` (scatters). Trained with MSE, not BCE.
///
/// With `batch_norm` / `dropout` in its [`ModelConfig`] the tower is regularized
/// ([`MlpTower::regularize`]): [`Model::forward`] is training mode (batch statistics, dropout
/// masks seeded by [`Rating::set_noise`]) and [`Model::score`] eval mode (running statistics, no
/// dropout); predictions go through `score`.
pub struct Rating<B: Backend> {
    pub params: ParamSet<B>,
    pub grads: ParamSet<B>,
    pub acts: MlpActs<B>,
    user_bias: usize,
    item_bias: usize,
    bias_rows: B::Buf,
    out: B::Buf,
    max_batch: usize,
}

impl<B: Backend> Rating<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut pb = ParamBuilder::new(be, rng);
        let mlp = add_mlp(be, &mut pb, cfg, max_batch)?;
        let head = add_head(be, &mut pb, cfg, mlp.out_width(), max_batch)?;
        let user_bias = pb.add("user_bias", &[cfg.users, 1], Role::Embedding(IdSource::User), cfg.init.bias)?;
        let item_bias = pb.add("item_bias", &[cfg.items, 1], Role::Embedding(IdSource::Item), cfg.init.bias)?;
        let params = pb.finish();
        Ok(Rating {
            grads: params.zeros_like(be)?,
            params,
            acts: MlpActs { mlp, head },
            user_bias,
            item_bias,
            bias_rows: be.zeros(max_batch)?,
            out: be.zeros(max_batch)?,
            max_batch,
        })
    }
}

impl<B: Backend> Model<B> for Rating<B> {
    fn kind(&self) -> ModelKind {
        ModelKind::Rating
    }
    fn params(&self) -> &ParamSet<B> {
        &self.params
    }
    fn grads(&self) -> &ParamSet<B> {
        &self.grads
    }
    fn params_and_grads(&mut self) -> (&mut ParamSet<B>, &mut ParamSet<B>) {
        (&mut self.params, &mut self.grads)
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// Training mode: batch norm with the batch's statistics, dropout on (see [`Rating`]).
    fn forward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("rating.forward", b, self.max_batch)?;
        self.acts.mlp.forward_train(be, &mut self.params, users, items, b)?; // MLP([P[u], Q[i]])
        self.acts.head.forward(be, &self.params, self.acts.mlp.out(), b)?; // wᵀ·that + b
        self.add_biases(be, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.out
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dout: &B::Buf, b: usize) -> Result<()> {
        check_batch("rating.backward", b, self.max_batch)?;
        let (n_users, n_items) = (self.acts.mlp.emb.users, self.acts.mlp.emb.items);
        let g = &mut self.grads;
        be.embedding_backward(dout, items, b, 1, g.buf_mut(self.item_bias), n_items)?; // db_i[i] += dr̂
        be.embedding_backward(dout, users, b, 1, g.buf_mut(self.user_bias), n_users)?; // db_u[u] += dr̂
        self.acts.backward(be, &self.params, &mut self.grads, users, items, dout, b) // head, tower, tables
    }
    /// Eval mode: batch norm with the running statistics, no dropout.
    fn score(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("rating.score", b, self.max_batch)?;
        self.acts.mlp.forward_eval(be, &self.params, users, items, b)?;
        self.acts.head.forward(be, &self.params, self.acts.mlp.out(), b)?;
        self.add_biases(be, users, items, b)
    }
    fn relu_pattern(&self, be: &B, b: usize) -> Result<Vec<bool>> {
        self.acts.mlp.relu_pattern(be, b)
    }
}

impl<B: Backend> Rating<B> {
    /// Sets the seed of the next training step's dropout masks (the run seed and the step).
    pub fn set_noise(&mut self, seed: u64, step: u64) {
        self.acts.mlp.set_noise(seed, step);
    }

    /// `r̂ = head + b_u[u] + b_i[i]` into [`Model::logits`].
    fn add_biases(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        let p = &self.params;
        let (n_users, n_items) = (self.acts.mlp.emb.users, self.acts.mlp.emb.items);
        be.fill(&mut self.out, b, B::T::ZERO)?;
        be.add_assign(&mut self.out, &self.acts.head.logits, b)?; // r̂ = that
        be.embedding_forward(p.buf(self.user_bias), n_users, 1, users, b, &mut self.bias_rows)?;
        be.add_assign(&mut self.out, &self.bias_rows, b)?; // + b_u[u]
        be.embedding_forward(p.buf(self.item_bias), n_items, 1, items, b, &mut self.bias_rows)?;
        be.add_assign(&mut self.out, &self.bias_rows, b) // + b_i[i]
    }
}

// ------------------------------------------------------------------------------------ any model

/// One of the four models, chosen at run time. Dispatch is one `match` per call (per batch),
/// never per sample.
pub enum AnyModel<B: Backend> {
    Gmf(Gmf<B>),
    Mlp(Mlp<B>),
    NeuMf(NeuMf<B>),
    Mf(Mf<B>),
    Rating(Rating<B>),
}

impl<B: Backend> AnyModel<B> {
    /// Builds `cfg.kind` with workspaces for `max_batch` rows, initialised from `rng`.
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        Ok(match cfg.kind {
            ModelKind::Gmf => AnyModel::Gmf(Gmf::new(be, cfg, max_batch, rng)?),
            ModelKind::Mlp => AnyModel::Mlp(Mlp::new(be, cfg, max_batch, rng)?),
            ModelKind::NeuMf => AnyModel::NeuMf(NeuMf::new(be, cfg, max_batch, rng)?),
            ModelKind::Mf => AnyModel::Mf(Mf::new(be, cfg, max_batch, rng)?),
            ModelKind::Rating => AnyModel::Rating(Rating::new(be, cfg, max_batch, rng)?),
        })
    }
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            AnyModel::Gmf($m) => $e,
            AnyModel::Mlp($m) => $e,
            AnyModel::NeuMf($m) => $e,
            AnyModel::Mf($m) => $e,
            AnyModel::Rating($m) => $e,
        }
    };
}

impl<B: Backend> Model<B> for AnyModel<B> {
    fn kind(&self) -> ModelKind {
        each!(self, m => m.kind())
    }
    fn params(&self) -> &ParamSet<B> {
        each!(self, m => m.params())
    }
    fn grads(&self) -> &ParamSet<B> {
        each!(self, m => m.grads())
    }
    fn params_and_grads(&mut self) -> (&mut ParamSet<B>, &mut ParamSet<B>) {
        each!(self, m => m.params_and_grads())
    }
    fn max_batch(&self) -> usize {
        each!(self, m => m.max_batch())
    }
    fn forward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        each!(self, m => m.forward(be, users, items, b))
    }
    fn logits(&self) -> &B::Buf {
        each!(self, m => m.logits())
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        each!(self, m => m.backward(be, users, items, dlogits, b))
    }
    fn relu_pattern(&self, be: &B, b: usize) -> Result<Vec<bool>> {
        each!(self, m => m.relu_pattern(be, b))
    }
    fn prepare_scoring(&mut self, be: &B) -> Result<()> {
        each!(self, m => m.prepare_scoring(be))
    }
    fn score(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        each!(self, m => m.score(be, users, items, b))
    }
}

impl ModelConfig {
    /// A budget estimate of the activation and gradient floats a model of this configuration
    /// keeps per batch row: four buffers as wide as every embedding, feature column and layer
    /// of its towers, plus the head's. `None` on overflow. Loaders of untrusted checkpoints
    /// multiply it by the rows they ask for, to refuse a spec whose towers are wide enough to
    /// exhaust memory before they allocate anything.
    pub fn floats_per_row(&self) -> Option<usize> {
        let mut w = self.factors.checked_add(self.user_features)?.checked_add(self.item_features)?.checked_add(2)?;
        for &l in &self.layers {
            w = w.checked_add(l)?;
        }
        w.checked_mul(4)
    }
}

#[cfg(test)]
mod weight_count_tests {
    use super::*;
    use ncf_cpu::CpuBackend;

    /// `weight_count` equals the elements of the parameters each model really builds, for
    /// every kind, with batch norm and side features where the kind takes them; a count that
    /// overflows is `None`.
    #[test]
    fn weight_count_matches_the_built_models() {
        let be = CpuBackend::<f32>::default();
        let mut cases = Vec::new();
        for kind in [ModelKind::Gmf, ModelKind::Mlp, ModelKind::NeuMf, ModelKind::Mf, ModelKind::Rating] {
            cases.push(ModelConfig { factors: 5, layers: vec![12, 7, 3], ..ModelConfig::new(kind, 11, 13) });
        }
        for kind in [ModelKind::Mlp, ModelKind::NeuMf, ModelKind::Rating] {
            cases.push(ModelConfig {
                user_features: 4,
                item_features: 9,
                layers: vec![6, 5],
                ..ModelConfig::new(kind, 3, 17)
            });
        }
        cases.push(ModelConfig { batch_norm: true, dropout: 0.1, ..ModelConfig::new(ModelKind::Rating, 9, 4) });
        for cfg in &cases {
            let m = AnyModel::new(&be, cfg, 4, &mut ncf_core::rng::seeded(0, 0)).unwrap();
            let built: usize = m.params().tensors.iter().map(|t| t.numel()).sum();
            assert_eq!(cfg.weight_count(), Some(built), "{cfg:?}");
        }
        let huge = ModelConfig { factors: usize::MAX / 2, ..ModelConfig::new(ModelKind::Gmf, 3, 3) };
        assert_eq!(huge.weight_count(), None);
    }
}
