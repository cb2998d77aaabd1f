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

use crate::init::InitConfig;
use crate::layers::{DenseIdx, GmfTower, Head, MlpTower, check_batch};
use crate::params::{IdSource, ParamBuilder, ParamSet, Role, SideTables};
use crate::step::{Batch, StepScratch};
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
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [ModelKind::Gmf, ModelKind::Mlp, ModelKind::NeuMf, ModelKind::Mf];
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Gmf => "gmf",
            ModelKind::Mlp => "mlp",
            ModelKind::NeuMf => "neumf",
            ModelKind::Mf => "mf",
        }
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
        ModelKind::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            Error::invalid("ModelKind::from_str", "model", format!("`{s}` is not one of gmf, mlp, neumf, mf"))
        })
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
}

impl ModelConfig {
    pub fn new(kind: ModelKind, users: usize, items: usize) -> Self {
        ModelConfig { kind, users, items, factors: 8, layers: vec![64, 32, 16, 8], init: InitConfig::default() }
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
        if matches!(self.kind, ModelKind::Mlp | ModelKind::NeuMf) {
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
    /// Forward, loss and backward of a batch split into two lanes run side by side
    /// ([`Backend::lanes`], [`Batch::halves`]), leaving the summed gradients in the grads.
    /// Returns `false`, having done nothing, for models that do not split (GMF and MF: no dense
    /// layers, so too little work per row to share).
    fn forward_backward_lanes(&mut self, _be: &B, _batch: &Batch<B>, _scratch: &mut StepScratch<B>) -> Result<bool> {
        Ok(false)
    }
}

// ------------------------------------------------------------------------------------ lanes

/// A model's activation buffers, with its forward and backward written against explicit
/// parameters and gradients, so that two of them (two lanes) can run on the two halves of a
/// batch at the same time, sharing the parameters.
trait Work<B: Backend>: Send + Sync + Sized {
    /// The same blocks and parameter indices, with buffers for `rows` rows.
    fn fresh(&self, be: &B, rows: usize) -> Result<Self>;
    fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()>;
    fn logits(&self) -> &B::Buf;
    /// Backward up to the embedding tables: dense gradients into `g`, each row's embedding
    /// gradients kept for [`Work::scatter`].
    fn backward_rows(&mut self, be: &B, p: &ParamSet<B>, g: &mut ParamSet<B>, dlogits: &B::Buf, b: usize)
    -> Result<()>;
    /// Adds the rows' embedding gradients of one id side into that side's tables, in row order
    /// (`ids` = the batch's users or items).
    fn scatter(&self, be: &B, side: IdSource, t: &mut SideTables<'_, B>, ids: &B::Ids, b: usize) -> Result<()>;

    /// Both sides of [`Work::scatter`], one after the other.
    fn scatter_all(&self, be: &B, g: &mut ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        let [mut tu, mut ti] = g.side_tables_mut()?;
        self.scatter(be, IdSource::User, &mut tu, users, b)?;
        self.scatter(be, IdSource::Item, &mut ti, items, b)
    }
}

/// The second lane: its buffers and its own dense gradients (summed into the model's after
/// each step, then zeroed).
struct SecondLane<B: Backend, W> {
    work: W,
    grads: ParamSet<B>,
    rows: usize,
}

/// The two-lane forward/loss/backward (see [`Model::forward_backward_lanes`]).
///
/// Lane 0 takes rows `[0, h)` into the model's own buffers and gradients, lane 1 rows `[h, 2h)`
/// into the second lane's. Each lane's loss is the mean over its `h` rows, so the batch's mean
/// is their average and `∂L/∂z = (σ(z) − y)/h · ½`: scaling by ½ is exact, so the logits'
/// gradients are bit for bit those of the one-lane step. So are the per-row gradients and the
/// embedding gradients (lane 0's rows are scattered first, then lane 1's: the batch's row
/// order). Only the dense weights' and biases' gradients differ in rounding: they are summed
/// per half, then added. The split depends on the batch alone, never on the thread count.
fn forward_backward_lanes<B: Backend, W: Work<B>>(
    be: &B,
    params: &ParamSet<B>,
    grads: &mut ParamSet<B>,
    first: &mut W,
    second: &mut Option<SecondLane<B, W>>,
    batch: &Batch<B>,
    scratch: &mut StepScratch<B>,
) -> Result<bool> {
    let Some([h0, h1]) = batch.halves() else { return Ok(false) };
    let h = batch.len / 2;
    if second.as_ref().is_none_or(|s| s.rows < h) {
        *second = Some(SecondLane { work: first.fresh(be, h)?, grads: params.zeros_like(be)?, rows: h });
    }
    let Some(s) = second.as_mut() else { return Ok(false) };
    let [l0, l1] = &mut scratch.lanes;
    let half = B::T::from_f64(0.5);
    let run =
        |work: &mut W, g: &mut ParamSet<B>, ids: &crate::step::Half<B>, lane: &mut crate::step::LaneScratch<B>| {
            work.forward(be, params, &ids.users, &ids.items, h)?;
            be.bce_with_logits(work.logits(), &ids.labels, h, &mut lane.loss, &mut lane.dlogits)?;
            be.scale(&mut lane.dlogits, h, half)?;
            work.backward_rows(be, params, g, &lane.dlogits, h)
        };
    let (r0, r1) = be.join(|| run(first, grads, h0, l0), || run(&mut s.work, &mut s.grads, h1, l1));
    r0?;
    r1?;
    // The users' tables on one thread, the items' on the other; each table still receives
    // lane 0's rows, then lane 1's.
    let [mut tu, mut ti] = grads.side_tables_mut()?;
    let (w0, w1) = (&*first, &s.work);
    let (ru, ri) = be.join(
        || {
            w0.scatter(be, IdSource::User, &mut tu, &h0.users, h)?;
            w1.scatter(be, IdSource::User, &mut tu, &h1.users, h)
        },
        || {
            w0.scatter(be, IdSource::Item, &mut ti, &h0.items, h)?;
            w1.scatter(be, IdSource::Item, &mut ti, &h1.items, h)
        },
    );
    ru.and(ri)?;
    for (t, t1) in grads.tensors.iter_mut().zip(s.grads.tensors.iter_mut()) {
        if !matches!(t.role, Role::Embedding(_)) {
            let n = t.numel();
            be.add_assign(&mut t.buf, &t1.buf, n)?;
            be.fill(&mut t1.buf, n, B::T::ZERO)?;
        }
    }
    Ok(true)
}

/// Adds an MLP tower's parameters and returns its dense-layer indices.
fn add_mlp_params<B: Backend>(pb: &mut ParamBuilder<B>, cfg: &ModelConfig) -> Result<(usize, usize, Vec<DenseIdx>)> {
    let d = cfg.layers[0] / 2;
    let user = pb.add("mlp_user_embedding", &[cfg.users, d], Role::Embedding(IdSource::User), cfg.init.embedding)?;
    let item = pb.add("mlp_item_embedding", &[cfg.items, d], Role::Embedding(IdSource::Item), cfg.init.embedding)?;
    let mut dense = Vec::new();
    for (l, win) in cfg.layers.windows(2).enumerate() {
        let (i, o) = (win[0], win[1]);
        let w = pb.add(format!("mlp_{l}_weight"), &[o, i], Role::Weight, cfg.init.hidden)?;
        let bias = pb.add(format!("mlp_{l}_bias"), &[o], Role::Bias, cfg.init.bias)?;
        dense.push(DenseIdx { w, bias, i, o });
    }
    Ok((user, item, dense))
}

fn add_gmf_params<B: Backend>(pb: &mut ParamBuilder<B>, cfg: &ModelConfig) -> Result<(usize, usize)> {
    let user =
        pb.add("gmf_user_embedding", &[cfg.users, cfg.factors], Role::Embedding(IdSource::User), cfg.init.embedding)?;
    let item =
        pb.add("gmf_item_embedding", &[cfg.items, cfg.factors], Role::Embedding(IdSource::Item), cfg.init.embedding)?;
    Ok((user, item))
}

fn add_head<B: Backend>(pb: &mut ParamBuilder<B>, cfg: &ModelConfig, i: usize) -> Result<(usize, usize)> {
    let w = pb.add("predict_weight", &[1, i], Role::Weight, cfg.init.output)?;
    let b = pb.add("predict_bias", &[1], Role::Bias, cfg.init.bias)?;
    Ok((w, b))
}

// ------------------------------------------------------------------------------------ GMF

/// Generalized Matrix Factorization: `logit = wᵀ(P[u] ⊙ Q[i]) + b`.
pub struct Gmf<B: Backend> {
    pub params: ParamSet<B>,
    pub grads: ParamSet<B>,
    tower: GmfTower<B>,
    head: Head<B>,
    max_batch: usize,
}

impl<B: Backend> Gmf<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut pb = ParamBuilder::new(be, rng);
        let (user, item) = add_gmf_params(&mut pb, cfg)?;
        let (w, bias) = add_head(&mut pb, cfg, cfg.factors)?;
        let params = pb.finish();
        Ok(Gmf {
            grads: params.zeros_like(be)?,
            params,
            tower: GmfTower::new(be, user, item, cfg.users, cfg.items, cfg.factors, max_batch)?,
            head: Head::new(be, w, bias, cfg.factors, max_batch)?,
            max_batch,
        })
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
        self.tower.forward(be, &self.params, users, items, b)?;
        self.head.forward(be, &self.params, &self.tower.h, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.head.logits
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("gmf.backward", b, self.max_batch)?;
        self.head.backward(be, &self.params, &mut self.grads, &self.tower.h, dlogits, b)?;
        self.tower.backward(be, &mut self.grads, users, items, &self.head.dinp, b)
    }
}

// ------------------------------------------------------------------------------------ MLP

/// Multi-Layer Perceptron: `logit = wᵀ·MLP([P[u], Q[i]]) + b`.
pub struct Mlp<B: Backend> {
    pub params: ParamSet<B>,
    pub grads: ParamSet<B>,
    work: MlpWork<B>,
    second: Option<SecondLane<B, MlpWork<B>>>,
    max_batch: usize,
}

/// The MLP's buffers: its tower and head.
struct MlpWork<B: Backend> {
    tower: MlpTower<B>,
    head: Head<B>,
}

impl<B: Backend> Work<B> for MlpWork<B> {
    fn fresh(&self, be: &B, rows: usize) -> Result<Self> {
        let (t, h) = (&self.tower, &self.head.idx);
        Ok(MlpWork {
            tower: MlpTower::new(be, t.user, t.item, t.users, t.items, t.d, t.dense.clone(), rows)?,
            head: Head::new(be, h.w, h.bias, h.i, rows)?,
        })
    }
    fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.tower.forward(be, p, users, items, b)?;
        self.head.forward(be, p, self.tower.out(), b)
    }
    fn logits(&self) -> &B::Buf {
        &self.head.logits
    }
    fn backward_rows(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        self.head.backward(be, p, g, self.tower.out(), dlogits, b)?;
        self.tower.backward_dense(be, p, g, &self.head.dinp, b)
    }
    fn scatter(&self, be: &B, side: IdSource, t: &mut SideTables<'_, B>, ids: &B::Ids, b: usize) -> Result<()> {
        self.tower.scatter_side(be, side, t, ids, b)
    }
}

impl<B: Backend> Mlp<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut pb = ParamBuilder::new(be, rng);
        let (user, item, dense) = add_mlp_params(&mut pb, cfg)?;
        let last = *cfg.layers.last().unwrap_or(&0);
        let (w, bias) = add_head(&mut pb, cfg, last)?;
        let params = pb.finish();
        Ok(Mlp {
            grads: params.zeros_like(be)?,
            params,
            work: MlpWork {
                tower: MlpTower::new(be, user, item, cfg.users, cfg.items, cfg.layers[0] / 2, dense, max_batch)?,
                head: Head::new(be, w, bias, last, max_batch)?,
            },
            second: None,
            max_batch,
        })
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
        self.work.forward(be, &self.params, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        self.work.logits()
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("mlp.backward", b, self.max_batch)?;
        self.work.backward_rows(be, &self.params, &mut self.grads, dlogits, b)?;
        self.work.scatter_all(be, &mut self.grads, users, items, b)
    }
    fn prepare_scoring(&mut self, be: &B) -> Result<()> {
        self.work.tower.prepare_scoring(be, &self.params)
    }
    fn score(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("mlp.score", b, self.max_batch)?;
        let w = &mut self.work;
        w.tower.forward_scoring(be, &self.params, users, items, b)?;
        w.head.forward(be, &self.params, w.tower.out(), b)
    }
    fn relu_pattern(&self, be: &B, b: usize) -> Result<Vec<bool>> {
        self.work.tower.relu_pattern(be, b)
    }
    fn forward_backward_lanes(&mut self, be: &B, batch: &Batch<B>, scratch: &mut StepScratch<B>) -> Result<bool> {
        check_batch("mlp.forward_backward_lanes", batch.len, self.max_batch)?;
        forward_backward_lanes(be, &self.params, &mut self.grads, &mut self.work, &mut self.second, batch, scratch)
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
    work: NeuMfWork<B>,
    second: Option<SecondLane<B, NeuMfWork<B>>>,
    max_batch: usize,
}

/// NeuMF's buffers: both towers, the concatenation and the head.
struct NeuMfWork<B: Backend> {
    gmf: GmfTower<B>,
    mlp: MlpTower<B>,
    cat: B::Buf,
    dh_gmf: B::Buf,
    dx_mlp: B::Buf,
    head: Head<B>,
}

impl<B: Backend> NeuMfWork<B> {
    fn new(be: &B, gmf: GmfTower<B>, mlp: MlpTower<B>, w: usize, bias: usize, rows: usize) -> Result<Self> {
        let (f, h) = (gmf.f, mlp.out_width());
        Ok(NeuMfWork {
            cat: be.zeros(rows * (f + h))?,
            dh_gmf: be.zeros(rows * f)?,
            dx_mlp: be.zeros(rows * h)?,
            head: Head::new(be, w, bias, f + h, rows)?,
            gmf,
            mlp,
        })
    }
}

impl<B: Backend> Work<B> for NeuMfWork<B> {
    fn fresh(&self, be: &B, rows: usize) -> Result<Self> {
        let (g, m) = (&self.gmf, &self.mlp);
        NeuMfWork::new(
            be,
            GmfTower::new(be, g.user, g.item, g.users, g.items, g.f, rows)?,
            MlpTower::new(be, m.user, m.item, m.users, m.items, m.d, m.dense.clone(), rows)?,
            self.head.idx.w,
            self.head.idx.bias,
            rows,
        )
    }
    fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.gmf.forward(be, p, users, items, b)?;
        self.mlp.forward(be, p, users, items, b)?;
        be.concat_cols(&self.gmf.h, self.gmf.f, self.mlp.out(), self.mlp.out_width(), b, &mut self.cat)?;
        self.head.forward(be, p, &self.cat, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.head.logits
    }
    fn backward_rows(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        self.head.backward(be, p, g, &self.cat, dlogits, b)?;
        be.split_cols(&self.head.dinp, self.gmf.f, self.mlp.out_width(), b, &mut self.dh_gmf, &mut self.dx_mlp)?;
        self.gmf.backward_rows(be, &self.dh_gmf, b)?;
        self.mlp.backward_dense(be, p, g, &self.dx_mlp, b)
    }
    fn scatter(&self, be: &B, side: IdSource, t: &mut SideTables<'_, B>, ids: &B::Ids, b: usize) -> Result<()> {
        self.gmf.scatter_side(be, side, t, ids, b)?;
        self.mlp.scatter_side(be, side, t, ids, b)
    }
}

impl<B: Backend> NeuMf<B> {
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut pb = ParamBuilder::new(be, rng);
        let (gu, gi) = add_gmf_params(&mut pb, cfg)?;
        let (mu, mi, dense) = add_mlp_params(&mut pb, cfg)?;
        let h = *cfg.layers.last().unwrap_or(&0);
        let f = cfg.factors;
        let (w, bias) = add_head(&mut pb, cfg, f + h)?;
        let params = pb.finish();
        Ok(NeuMf {
            grads: params.zeros_like(be)?,
            work: NeuMfWork::new(
                be,
                GmfTower::new(be, gu, gi, cfg.users, cfg.items, f, max_batch)?,
                MlpTower::new(be, mu, mi, cfg.users, cfg.items, cfg.layers[0] / 2, dense, max_batch)?,
                w,
                bias,
                max_batch,
            )?,
            params,
            second: None,
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
        self.work.forward(be, &self.params, users, items, b)
    }
    fn prepare_scoring(&mut self, be: &B) -> Result<()> {
        self.work.mlp.prepare_scoring(be, &self.params)
    }
    fn score(&mut self, be: &B, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        check_batch("neumf.score", b, self.max_batch)?;
        let w = &mut self.work;
        w.gmf.forward(be, &self.params, users, items, b)?;
        w.mlp.forward_scoring(be, &self.params, users, items, b)?;
        be.concat_cols(&w.gmf.h, w.gmf.f, w.mlp.out(), w.mlp.out_width(), b, &mut w.cat)?;
        w.head.forward(be, &self.params, &w.cat, b)
    }
    fn logits(&self) -> &B::Buf {
        self.work.logits()
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("neumf.backward", b, self.max_batch)?;
        self.work.backward_rows(be, &self.params, &mut self.grads, dlogits, b)?;
        self.work.scatter_all(be, &mut self.grads, users, items, b)
    }
    fn relu_pattern(&self, be: &B, b: usize) -> Result<Vec<bool>> {
        self.work.mlp.relu_pattern(be, b)
    }
    fn forward_backward_lanes(&mut self, be: &B, batch: &Batch<B>, scratch: &mut StepScratch<B>) -> Result<bool> {
        check_batch("neumf.forward_backward_lanes", batch.len, self.max_batch)?;
        forward_backward_lanes(be, &self.params, &mut self.grads, &mut self.work, &mut self.second, batch, scratch)
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
    user: usize,
    item: usize,
    user_bias: usize,
    item_bias: usize,
    global_bias: usize,
    users: usize,
    items: usize,
    d: usize,
    pu: B::Buf,
    qi: B::Buf,
    bias_rows: B::Buf,
    logits: B::Buf,
    dpu: B::Buf,
    dqi: B::Buf,
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
        let z = |w: usize| be.zeros(max_batch * w);
        Ok(Mf {
            grads: params.zeros_like(be)?,
            params,
            user,
            item,
            user_bias,
            item_bias,
            global_bias,
            users: cfg.users,
            items: cfg.items,
            d,
            pu: z(d)?,
            qi: z(d)?,
            bias_rows: z(1)?,
            logits: z(1)?,
            dpu: z(d)?,
            dqi: z(d)?,
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
        let p = &self.params;
        be.embedding_forward(p.buf(self.user), self.users, self.d, users, b, &mut self.pu)?;
        be.embedding_forward(p.buf(self.item), self.items, self.d, items, b, &mut self.qi)?;
        be.rowdot_forward(&self.pu, &self.qi, b, self.d, &mut self.logits)?;
        be.embedding_forward(p.buf(self.user_bias), self.users, 1, users, b, &mut self.bias_rows)?;
        be.add_assign(&mut self.logits, &self.bias_rows, b)?;
        be.embedding_forward(p.buf(self.item_bias), self.items, 1, items, b, &mut self.bias_rows)?;
        be.add_assign(&mut self.logits, &self.bias_rows, b)?;
        be.add_scalar(&mut self.logits, p.buf(self.global_bias), b)
    }
    fn logits(&self) -> &B::Buf {
        &self.logits
    }
    fn backward(&mut self, be: &B, users: &B::Ids, items: &B::Ids, dlogits: &B::Buf, b: usize) -> Result<()> {
        check_batch("mf.backward", b, self.max_batch)?;
        let g = &mut self.grads;
        be.sum_into(dlogits, b, g.buf_mut(self.global_bias))?;
        be.embedding_backward(dlogits, items, b, 1, g.buf_mut(self.item_bias), self.items)?;
        be.embedding_backward(dlogits, users, b, 1, g.buf_mut(self.user_bias), self.users)?;
        be.rowdot_backward(dlogits, &self.pu, &self.qi, b, self.d, &mut self.dpu, &mut self.dqi)?;
        be.embedding_backward(&self.dqi, items, b, self.d, g.buf_mut(self.item), self.items)?;
        be.embedding_backward(&self.dpu, users, b, self.d, g.buf_mut(self.user), self.users)
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
}

impl<B: Backend> AnyModel<B> {
    /// Builds `cfg.kind` with workspaces for `max_batch` rows, initialised from `rng`.
    pub fn new(be: &B, cfg: &ModelConfig, max_batch: usize, rng: &mut Rng) -> Result<Self> {
        Ok(match cfg.kind {
            ModelKind::Gmf => AnyModel::Gmf(Gmf::new(be, cfg, max_batch, rng)?),
            ModelKind::Mlp => AnyModel::Mlp(Mlp::new(be, cfg, max_batch, rng)?),
            ModelKind::NeuMf => AnyModel::NeuMf(NeuMf::new(be, cfg, max_batch, rng)?),
            ModelKind::Mf => AnyModel::Mf(Mf::new(be, cfg, max_batch, rng)?),
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
    fn forward_backward_lanes(&mut self, be: &B, batch: &Batch<B>, scratch: &mut StepScratch<B>) -> Result<bool> {
        each!(self, m => m.forward_backward_lanes(be, batch, scratch))
    }
}
