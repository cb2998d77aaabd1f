//! The building blocks the four models are assembled from: the GMF tower, the MLP tower and
//! the prediction head. Each keeps its forward and backward side by side; backward runs the
//! forward's steps in reverse.
//!
//! A block holds only *indices* into the model's [`ParamSet`] plus its activation buffers
//! (sized once for the largest batch, so training allocates nothing per batch).

use crate::params::{IdSource, ParamSet, SideTables};
use ncf_core::{Backend, Error, Result};

/// Rejects a batch larger than the workspaces were sized for.
pub(crate) fn check_batch(op: &'static str, b: usize, max_batch: usize) -> Result<()> {
    if b > max_batch {
        return Err(Error::invalid(
            op,
            "b",
            format!("batch of {b} rows exceeds the workspace's max_batch {max_batch}"),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------ embedding pair

/// The user and item embeddings of one tower: `pu = P[u]`, `qi = Q[i]`.
/// `P (U,D)  Q (I,D)  u, i (B)  pu, qi (B,D)`
///
/// Backward is a scatter-add of each row's gradient into its table row:
/// `dP[u[b]] += dpu[b]`, `dQ[i[b]] += dqi[b]`. The tower that owns the pair writes `dpu`, `dqi`.
pub struct EmbeddingPair<B: Backend> {
    /// Indices of `P` and `Q` in the model's [`ParamSet`].
    pub user: usize,
    pub item: usize,
    /// Rows of `P` (users `U`) and of `Q` (items `I`).
    pub users: usize,
    pub items: usize,
    /// Width `D`.
    pub d: usize,
    pub pu: B::Buf,
    pub qi: B::Buf,
    pub dpu: B::Buf,
    pub dqi: B::Buf,
}

impl<B: Backend> EmbeddingPair<B> {
    pub fn new(be: &B, user: usize, item: usize, users: usize, items: usize, d: usize, rows: usize) -> Result<Self> {
        let z = || be.zeros(rows * d);
        Ok(EmbeddingPair { user, item, users, items, d, pu: z()?, qi: z()?, dpu: z()?, dqi: z()? })
    }

    /// The same tables, with buffers for `rows` rows.
    pub fn like(&self, be: &B, rows: usize) -> Result<Self> {
        Self::new(be, self.user, self.item, self.users, self.items, self.d, rows)
    }

    /// `pu = P[users]`, `qi = Q[items]`.
    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        be.embedding_forward(p.buf(self.user), self.users, self.d, users, b, &mut self.pu)?;
        be.embedding_forward(p.buf(self.item), self.items, self.d, items, b, &mut self.qi)
    }

    /// `dP[users] += dpu`, `dQ[items] += dqi`, in row order.
    pub fn backward(&self, be: &B, g: &mut ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        let [mut tu, mut ti] = g.side_tables_mut()?;
        self.backward_side(be, IdSource::User, &mut tu, users, b)?;
        self.backward_side(be, IdSource::Item, &mut ti, items, b)
    }

    /// One side of [`EmbeddingPair::backward`] (`ids` = the batch's users or items), for a
    /// caller that holds the two sides' tables apart.
    pub fn backward_side(
        &self,
        be: &B,
        side: IdSource,
        t: &mut SideTables<'_, B>,
        ids: &B::Ids,
        b: usize,
    ) -> Result<()> {
        match side {
            IdSource::User => be.embedding_backward(&self.dpu, ids, b, self.d, t.get(self.user)?, self.users),
            IdSource::Item => be.embedding_backward(&self.dqi, ids, b, self.d, t.get(self.item)?, self.items),
        }
    }
}

// ------------------------------------------------------------------------------------ GMF tower

/// GMF: `h = P[u] ⊙ Q[i]`.   `P (U,F)  Q (I,F)  u, i (B)  h (B,F)`
///
/// Backward: `dP[u] = dh ⊙ Q[i]`,  `dQ[i] = dh ⊙ P[u]` per row, into the pair's `dpu`, `dqi`;
/// the model then scatters them into the tables ([`EmbeddingPair::backward`]).
pub struct GmfTower<B: Backend> {
    pub emb: EmbeddingPair<B>,
    /// The tower's output `h (B,F)`.
    pub h: B::Buf,
}

impl<B: Backend> GmfTower<B> {
    pub fn new(be: &B, emb: EmbeddingPair<B>, rows: usize) -> Result<Self> {
        Ok(GmfTower { h: be.zeros(rows * emb.d)?, emb })
    }

    /// The same tower with buffers for `rows` rows.
    pub fn like(&self, be: &B, rows: usize) -> Result<Self> {
        Self::new(be, self.emb.like(be, rows)?, rows)
    }

    /// Predictive factors `F`.
    pub fn f(&self) -> usize {
        self.emb.d
    }

    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.emb.forward(be, p, users, items, b)?;
        be.gmf_forward(&self.emb.pu, &self.emb.qi, &mut self.h, b * self.emb.d)
    }

    /// `dh (B,F)` is the gradient of the loss w.r.t. [`GmfTower::h`]; leaves each row's
    /// embedding gradients in the pair.
    pub fn backward(&mut self, be: &B, dh: &B::Buf, b: usize) -> Result<()> {
        let e = &mut self.emb;
        be.gmf_backward(dh, &e.pu, &e.qi, &mut e.dpu, &mut e.dqi, b * e.d)
    }
}

// ------------------------------------------------------------------------------------ MLP tower

/// One dense layer of the tower: indices of `W (O,I)` and `bias (O)`.
#[derive(Clone, Copy, Debug)]
pub struct DenseIdx {
    pub w: usize,
    pub bias: usize,
    pub i: usize,
    pub o: usize,
}

/// MLP: `x₀ = [P[u], Q[i]]`, then `zₗ = xₗ₋₁ · Wₗᵀ + bₗ`,  `xₗ = relu(zₗ)` for each layer.
///
/// `P (U,D)  Q (I,D)  x₀ (B,2D)  Wₗ (Hₗ,Hₗ₋₁)  xₗ (B,Hₗ)`; layers `[64,32,16,8]` mean
/// `2D = 64` and three dense layers 64→32→16→8.
///
/// Backward, from `dx_L`: for each layer in reverse, `dzₗ = dxₗ · 1[xₗ > 0]`, then the dense
/// backward gives `dWₗ, dbₗ` and `dxₗ₋₁`; finally `dx₀` splits into `dP[u]` and `dQ[i]`.
///
/// **Regularized** (the rating model's `--batch-norm`, `--dropout`; see [`MlpTower::regularize`]):
/// a layer is `aₗ = xₗ₋₁·Wₗᵀ + bₗ`, `zₗ = BN(aₗ)`, `xₗ = relu(zₗ)`, then `x̃ₗ = dropout(xₗ)`,
/// and the next layer reads `x̃ₗ`. Training ([`MlpTower::forward_train`]) normalizes with the
/// batch's statistics and moves the running ones; eval ([`MlpTower::forward_eval`]) uses the
/// running statistics and no dropout. Backward in reverse: `dxₗ = dropout(dx̃ₗ)` (the same
/// mask), `dzₗ = dxₗ·1[xₗ > 0]`, `daₗ = BN⁻¹(dzₗ)` (with `dγₗ, dβₗ`), the dense backward.
pub struct MlpTower<B: Backend> {
    /// `P`, `Q` with `D = layers[0] / 2`.
    pub emb: EmbeddingPair<B>,
    pub dense: Vec<DenseIdx>,
    x0: B::Buf,
    z: Vec<B::Buf>,
    /// Post-ReLU outputs `xₗ`; the last one is the tower's output.
    x: Vec<B::Buf>,
    dx: Vec<B::Buf>,
    dz: Vec<B::Buf>,
    dx0: B::Buf,
    tables: Option<FirstLayerTables<B>>,
    /// Each layer's batch norm, if any (empty: none anywhere).
    bn: Vec<Option<Norm<B>>>,
    /// The drop probability of every layer's output (0: no dropout).
    dropout: f64,
    /// The seed of this training step's masks ([`MlpTower::set_noise`]).
    noise: u64,
    /// Side features (the hybrid models), if any.
    feat: Option<Features<B>>,
    /// Dropped outputs `x̃ₗ` and their gradients (empty without dropout).
    xd: Vec<B::Buf>,
    dxd: Vec<B::Buf>,
    /// Whether the last forward applied dropout (then [`MlpTower::out`] is `x̃_L`).
    dropped: bool,
}

/// One side's feature table: its tensor index and width, if the side has features.
pub type FeatureSide = Option<(usize, usize)>;

/// Side features (the hybrid models, `--features`): constant multi-hot tables `M_u (U,Fu)` and
/// `M_i (I,Fi)` (`Role::Stat` tensors: saved with the model, never trained), one side or both.
/// The tower's input becomes `x₀ = [P[u], Q[i], M_u[u], M_i[i]]`, so layer 0's columns for a
/// feature are that feature's learned embedding (a multi-hot row times them is the sum of its
/// features' vectors). Backward: the features' part of `dx₀` is dropped (they are data).
pub struct Features<B: Backend> {
    /// `(tensor index, width)` of the users' and the items' table.
    pub user: Option<(usize, usize)>,
    pub item: Option<(usize, usize)>,
    mu: B::Buf,
    mi: B::Buf,
    /// `[P[u], Q[i]]` and `[M_u[u], M_i[i]]` before they are joined, and their gradients.
    ecat: B::Buf,
    fcat: B::Buf,
    decat: B::Buf,
    dfcat: B::Buf,
}

impl<B: Backend> Features<B> {
    pub fn new(
        be: &B,
        user: Option<(usize, usize)>,
        item: Option<(usize, usize)>,
        d: usize,
        rows: usize,
    ) -> Result<Self> {
        let (fu, fi) = (user.map_or(0, |u| u.1), item.map_or(0, |i| i.1));
        let z = |w: usize| be.zeros(rows * w);
        Ok(Features {
            user,
            item,
            mu: z(fu)?,
            mi: z(fi)?,
            ecat: z(2 * d)?,
            fcat: z(fu + fi)?,
            decat: z(2 * d)?,
            dfcat: z(fu + fi)?,
        })
    }

    /// `Fu + Fi`, the columns they add to `x₀`.
    pub fn width(&self) -> usize {
        self.user.map_or(0, |u| u.1) + self.item.map_or(0, |i| i.1)
    }

    /// `fcat = [M_u[users], M_i[items]]`.
    fn gather(&mut self, be: &B, p: &ParamSet<B>, ids: (&B::Ids, &B::Ids), n: (usize, usize), b: usize) -> Result<()> {
        match (self.user, self.item) {
            (Some((u, fu)), Some((i, fi))) => {
                be.embedding_forward(p.buf(u), n.0, fu, ids.0, b, &mut self.mu)?;
                be.embedding_forward(p.buf(i), n.1, fi, ids.1, b, &mut self.mi)?;
                be.concat_cols(&self.mu, fu, &self.mi, fi, b, &mut self.fcat)
            }
            (Some((u, fu)), None) => be.embedding_forward(p.buf(u), n.0, fu, ids.0, b, &mut self.fcat),
            (None, Some((i, fi))) => be.embedding_forward(p.buf(i), n.1, fi, ids.1, b, &mut self.fcat),
            (None, None) => Ok(()),
        }
    }
}

/// One layer's batch normalization: the indices of `γ, β` (trained) and the running mean and
/// variance (`Role::Stat`), and its buffers: the dense output `a (B,H)`, `x̂ (B,H)`,
/// `inv = 1/√(σ² + eps) (H)` and `da (B,H)`.
pub struct Norm<B: Backend> {
    pub idx: NormIdx,
    a: B::Buf,
    xhat: B::Buf,
    inv: B::Buf,
    da: B::Buf,
}

/// The parameter indices of one batch norm; `mean = gamma + 2`, `var = gamma + 3`, added in
/// that order (so the running statistics can be borrowed mutably beside `γ, β`).
#[derive(Clone, Copy, Debug)]
pub struct NormIdx {
    pub gamma: usize,
    pub beta: usize,
}

/// Batch norm's `eps` and running-statistics momentum (PyTorch's defaults).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// `γ, β` read-only and the running mean and variance writable, out of one parameter set.
fn norm_params<B: Backend>(p: &mut ParamSet<B>, n: NormIdx) -> (&B::Buf, &B::Buf, &mut B::Buf, &mut B::Buf) {
    assert_eq!(n.beta, n.gamma + 1, "batch norm tensors are added as γ, β, mean, var");
    p.touch();
    let (lo, hi) = p.tensors.split_at_mut(n.gamma + 2);
    let (mean, var) = hi.split_at_mut(1);
    (&lo[n.gamma].buf, &lo[n.beta].buf, &mut mean[0].buf, &mut var[0].buf)
}

/// Inference only: the first dense layer applied to every user and every item once. With
/// `W₀ = [W_u | W_i]` (the columns that read the user half and the item half of the concatenated
/// input), `U = E_u·W_uᵀ + b₀ (users, o)` and `V = E_i·W_iᵀ (items, o)`, and layer 0's
/// pre-activation for a pair is `U[u] + V[i]`: the same value as `W₀·[e_u; e_i] + b₀` up to
/// float rounding, for `o` additions instead of `2·d·o` multiply-adds per pair. This is the
/// bulk of the MLP's arithmetic at the paper's shapes, and evaluation scores 100 items per user.
struct FirstLayerTables<B: Backend> {
    u: B::Buf,
    v: B::Buf,
    /// The [`ParamSet::generation`] the tables were computed from.
    generation: u64,
}

impl<B: Backend> MlpTower<B> {
    pub fn new(be: &B, emb: EmbeddingPair<B>, dense: Vec<DenseIdx>, rows: usize) -> Result<Self> {
        let z = |w: usize| be.zeros(rows * w);
        let per_layer = || dense.iter().map(|l| z(l.o)).collect::<Result<Vec<_>>>();
        let d = emb.d;
        Ok(MlpTower {
            x0: z(2 * d)?,
            z: per_layer()?,
            x: per_layer()?,
            dx: per_layer()?,
            dz: per_layer()?,
            dx0: z(2 * d)?,
            emb,
            dense,
            tables: None,
            bn: Vec::new(),
            dropout: 0.0,
            noise: 0,
            feat: None,
            xd: Vec::new(),
            dxd: Vec::new(),
            dropped: false,
        })
    }

    /// Adds batch norm to the layers given an index (`norms[l]`, one per dense layer, or empty)
    /// and dropout at `dropout` (0: none), with buffers for `rows` rows.
    pub fn regularize(mut self, be: &B, norms: &[Option<NormIdx>], dropout: f64, rows: usize) -> Result<Self> {
        if !norms.is_empty() && norms.len() != self.dense.len() {
            return Err(Error::invalid(
                "mlp.regularize",
                "norms",
                format!("{} batch norms for {} dense layers", norms.len(), self.dense.len()),
            ));
        }
        let z = |w: usize| be.zeros(rows * w);
        self.bn = norms
            .iter()
            .zip(&self.dense)
            .map(|(n, l)| {
                n.map(|idx| Ok(Norm { idx, a: z(l.o)?, xhat: z(l.o)?, inv: be.zeros(l.o)?, da: z(l.o)? })).transpose()
            })
            .collect::<Result<_>>()?;
        self.dropout = dropout;
        if dropout > 0.0 {
            self.xd = self.dense.iter().map(|l| z(l.o)).collect::<Result<_>>()?;
            self.dxd = self.dense.iter().map(|l| z(l.o)).collect::<Result<_>>()?;
        }
        Ok(self)
    }

    /// Adds side features to the tower's input (layer 0 must read `2D + Fu + Fi` columns).
    pub fn with_features(
        mut self,
        be: &B,
        user: Option<(usize, usize)>,
        item: Option<(usize, usize)>,
        rows: usize,
    ) -> Result<Self> {
        let f = Features::new(be, user, item, self.emb.d, rows)?;
        let want = 2 * self.emb.d + f.width();
        if f.width() > 0 {
            if self.dense.first().is_some_and(|l| l.i != want) {
                return Err(Error::invalid(
                    "mlp.with_features",
                    "layers",
                    format!("layer 0 reads {} columns, the embeddings and features give {want}", self.dense[0].i),
                ));
            }
            self.x0 = be.zeros(rows * want)?;
            self.dx0 = be.zeros(rows * want)?;
            self.feat = Some(f);
        }
        Ok(self)
    }

    /// The side features' table indices and widths, if the tower has any.
    pub fn features(&self) -> Option<(FeatureSide, FeatureSide)> {
        self.feat.as_ref().map(|f| (f.user, f.item))
    }

    /// Whether the tower has batch norm or dropout (then it trains through
    /// [`MlpTower::forward_train`]).
    pub fn is_regularized(&self) -> bool {
        self.dropout > 0.0 || self.bn.iter().any(Option::is_some)
    }

    /// Sets the seed of the next training forward's dropout masks: a new one every step (the
    /// trainer passes the run seed and the step number).
    pub fn set_noise(&mut self, seed: u64, step: u64) {
        self.noise = ncf_core::rng::dropout_seed(seed, step, 0);
    }

    /// The same tower with buffers for `rows` rows.
    pub fn like(&self, be: &B, rows: usize) -> Result<Self> {
        let norms: Vec<Option<NormIdx>> = self.bn.iter().map(|n| n.as_ref().map(|n| n.idx)).collect();
        let (fu, fi) = self.features().unwrap_or((None, None));
        Self::new(be, self.emb.like(be, rows)?, self.dense.clone(), rows)?.with_features(be, fu, fi, rows)?.regularize(
            be,
            &norms,
            self.dropout,
            rows,
        )
    }

    /// Width of the tower's output.
    pub fn out_width(&self) -> usize {
        self.dense.last().map_or(self.in_width(), |l| l.o)
    }

    /// Width of `x₀`: `2D`, plus the side features' columns.
    pub fn in_width(&self) -> usize {
        2 * self.emb.d + self.feat.as_ref().map_or(0, Features::width)
    }

    /// The tower's output `x_L (B, H_L)` after [`MlpTower::forward`] (`x̃_L` after a training
    /// forward with dropout).
    pub fn out(&self) -> &B::Buf {
        if self.dropped {
            return self.xd.last().unwrap_or(&self.x0);
        }
        self.x.last().unwrap_or(&self.x0)
    }

    /// The plain tower's forward (NCF's MLP and NeuMF; the CPU's two lanes call it with shared
    /// weights). A regularized tower trains through [`MlpTower::forward_train`].
    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        if self.is_regularized() {
            return Err(Error::invalid(
                "mlp.forward",
                "tower",
                "a tower with batch norm or dropout runs forward_train (training) or forward_eval",
            ));
        }
        self.embed(be, p, users, items, b)?;
        self.forward_layers(be, p, b)
    }

    /// The plain tower's dense layers, from an `x₀` already in place: [`MlpTower::forward`]
    /// without the embedding, for a fast path that fills `x₀` itself ([`MlpTower::x0_mut`]).
    pub fn forward_layers(&mut self, be: &B, p: &ParamSet<B>, b: usize) -> Result<()> {
        if self.is_regularized() {
            return Err(Error::invalid(
                "mlp.forward",
                "tower",
                "a tower with batch norm or dropout runs forward_train (training) or forward_eval",
            ));
        }
        self.dropped = false;
        for (l, layer) in self.dense.iter().enumerate() {
            // zₗ = xₗ₋₁·Wₗᵀ + bₗ and xₗ = relu(zₗ), fused (one pass on the GPU).
            let (prev, cur) = self.x.split_at_mut(l);
            let inp = if l == 0 { &self.x0 } else { &prev[l - 1] };
            be.linear_relu_forward(
                inp,
                p.buf(layer.w),
                p.buf(layer.bias),
                &mut self.z[l],
                &mut cur[0],
                b,
                layer.i,
                layer.o,
            )?;
        }
        Ok(())
    }

    /// `x₀ (B, in_width)`, for a fast path that gathers the embeddings into it before
    /// [`MlpTower::forward_layers`].
    pub fn x0_mut(&mut self) -> &mut B::Buf {
        &mut self.x0
    }

    /// `∂L/∂x₀ (B, in_width)` after [`MlpTower::backward_layers`] (or a plain backward).
    pub fn dx0(&self) -> &B::Buf {
        &self.dx0
    }

    /// The training forward of any tower: batch norm with the batch's statistics (moving the
    /// running ones in `p`), dropout with the masks of [`MlpTower::set_noise`]. A plain tower
    /// computes exactly what [`MlpTower::forward`] does.
    pub fn forward_train(
        &mut self,
        be: &B,
        p: &mut ParamSet<B>,
        users: &B::Ids,
        items: &B::Ids,
        b: usize,
    ) -> Result<()> {
        self.embed(be, p, users, items, b)?;
        self.dropped = self.dropout > 0.0;
        for l in 0..self.dense.len() {
            let layer = self.dense[l];
            let (prev, cur) = self.x.split_at_mut(l);
            let inp = match l {
                0 => &self.x0,
                _ if self.dropped => &self.xd[l - 1],
                _ => &prev[l - 1],
            };
            match &mut self.bn.get_mut(l).and_then(Option::as_mut) {
                None => be.linear_relu_forward(
                    inp,
                    p.buf(layer.w),
                    p.buf(layer.bias),
                    &mut self.z[l],
                    &mut cur[0],
                    b,
                    layer.i,
                    layer.o,
                )?,
                Some(n) => {
                    be.linear_forward(inp, p.buf(layer.w), p.buf(layer.bias), &mut n.a, b, layer.i, layer.o)?; // aₗ
                    let (gamma, beta, mean, var) = norm_params(p, n.idx);
                    let (z, xhat, inv) = (&mut self.z[l], &mut n.xhat, &mut n.inv);
                    be.batchnorm_forward_train(
                        &n.a,
                        gamma,
                        beta,
                        b,
                        layer.o,
                        BN_EPS,
                        BN_MOMENTUM,
                        z,
                        xhat,
                        inv,
                        (mean, var),
                    )?; // zₗ = BN(aₗ)
                    be.relu_forward(&self.z[l], &mut cur[0], b * layer.o)?; // xₗ = relu(zₗ)
                }
            }
            if self.dropped {
                let seed = ncf_core::rng::dropout_seed(self.noise, 0, l as u64);
                be.dropout(&cur[0], &mut self.xd[l], b * layer.o, self.dropout, seed)?; // x̃ₗ
            }
        }
        Ok(())
    }

    /// The eval forward of any tower: batch norm with the running statistics, no dropout.
    pub fn forward_eval(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        self.embed(be, p, users, items, b)?;
        self.dropped = false;
        for l in 0..self.dense.len() {
            let layer = self.dense[l];
            let (prev, cur) = self.x.split_at_mut(l);
            let inp = if l == 0 { &self.x0 } else { &prev[l - 1] };
            let (w, bias) = (p.buf(layer.w), p.buf(layer.bias));
            match &mut self.bn.get_mut(l).and_then(Option::as_mut) {
                None => be.linear_relu_forward(inp, w, bias, &mut self.z[l], &mut cur[0], b, layer.i, layer.o)?,
                Some(n) => {
                    be.linear_forward(inp, w, bias, &mut n.a, b, layer.i, layer.o)?;
                    let (g, bt) = (p.buf(n.idx.gamma), p.buf(n.idx.beta));
                    let (mean, var) = (p.buf(n.idx.gamma + 2), p.buf(n.idx.gamma + 3));
                    be.batchnorm_forward_eval(&n.a, g, bt, mean, var, b, layer.o, BN_EPS, &mut self.z[l])?;
                    be.relu_forward(&self.z[l], &mut cur[0], b * layer.o)?;
                }
            }
        }
        Ok(())
    }

    /// `x₀ = [P[u], Q[i]]`, with the side features `[…, M_u[u], M_i[i]]` when the tower has them.
    fn embed(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        let e = &mut self.emb;
        e.forward(be, p, users, items, b)?;
        let Some(f) = &mut self.feat else { return be.concat_cols(&e.pu, e.d, &e.qi, e.d, b, &mut self.x0) };
        be.concat_cols(&e.pu, e.d, &e.qi, e.d, b, &mut f.ecat)?;
        f.gather(be, p, (users, items), (e.users, e.items), b)?;
        be.concat_cols(&f.ecat, 2 * e.d, &f.fcat, f.width(), b, &mut self.x0)
    }

    /// `dx₀ → dP[u], dQ[i]` (the features' columns are data: their gradient is dropped).
    fn unembed(&mut self, be: &B, b: usize) -> Result<()> {
        let (e, dx0) = (&mut self.emb, &self.dx0);
        match &mut self.feat {
            None => be.split_cols(dx0, e.d, e.d, b, &mut e.dpu, &mut e.dqi),
            Some(f) => {
                let w = f.width();
                be.split_cols(dx0, 2 * e.d, w, b, &mut f.decat, &mut f.dfcat)?;
                be.split_cols(&f.decat, e.d, e.d, b, &mut e.dpu, &mut e.dqi)
            }
        }
    }

    /// Computes the `FirstLayerTables` from the current weights (inference only), unless the
    /// tables are already current (same [`ParamSet::generation`]): a server calls it per query.
    pub fn prepare_scoring(&mut self, be: &B, p: &ParamSet<B>) -> Result<()> {
        let Some(&l0) = self.dense.first() else { return Ok(()) };
        if self.tables.as_ref().is_some_and(|t| t.generation == p.generation) {
            return Ok(()); // still current: the weights have not changed since
        }
        let (d, o) = (self.emb.d, l0.o);
        let w = be.download(p.buf(l0.w))?;
        // Columns of W₀: [W_u (D) | W_i (D) | W_fu (Fu) | W_fi (Fi)].
        let (fu, fi) = self.features().unwrap_or((None, None));
        let (nfu, nfi) = (fu.map_or(0, |f| f.1), fi.map_or(0, |f| f.1));
        let cols = |lo: usize, n: usize| -> Vec<B::T> {
            w.chunks_exact(l0.i).take(o).flat_map(|row| row[lo..lo + n].iter().copied()).collect()
        };
        let (wu, wi, zero) = (be.upload(&cols(0, d))?, be.upload(&cols(d, d))?, be.zeros(o)?);
        let e = &self.emb;
        let mut u = be.zeros(e.users * o)?;
        let mut v = be.zeros(e.items * o)?;
        be.linear_forward(p.buf(e.user), &wu, p.buf(l0.bias), &mut u, e.users, d, o)?;
        be.linear_forward(p.buf(e.item), &wi, &zero, &mut v, e.items, d, o)?;
        // A side's features are constant per id: U += M_u·W_fuᵀ, V += M_i·W_fiᵀ.
        for (side, lo, n, rows, out) in [(fu, 2 * d, nfu, e.users, &mut u), (fi, 2 * d + nfu, nfi, e.items, &mut v)] {
            if let Some((k, _)) = side {
                let (wf, mut extra) = (be.upload(&cols(lo, n))?, be.zeros(rows * o)?);
                be.linear_forward(p.buf(k), &wf, &zero, &mut extra, rows, n, o)?;
                be.add_assign(out, &extra, rows * o)?;
            }
        }
        self.tables = Some(FirstLayerTables { u, v, generation: p.generation });
        Ok(())
    }

    /// [`MlpTower::forward`] with layer 0 read from the tables of
    /// [`MlpTower::prepare_scoring`]: `x₀ = relu(U[users] + V[items])`, one fused pass. No
    /// backward may follow (the pre-activations are not kept).
    pub fn forward_scoring(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        let Some(&l0) = self.dense.first() else { return self.forward(be, p, users, items, b) };
        let t = match &self.tables {
            Some(t) if t.generation == p.generation => t,
            _ => {
                return Err(Error::invalid(
                    "mlp.forward_scoring",
                    "tables",
                    "the weights changed since prepare_scoring (or it was never called)",
                ));
            }
        };
        let e = &self.emb;
        be.gather_add_relu(&t.u, e.users, users, &t.v, e.items, items, l0.o, b, &mut self.x[0])?;
        for l in 1..self.dense.len() {
            let layer = self.dense[l];
            let (prev, cur) = self.x.split_at_mut(l);
            let z = &mut self.z[l];
            be.linear_relu_forward(
                &prev[l - 1],
                p.buf(layer.w),
                p.buf(layer.bias),
                z,
                &mut cur[0],
                b,
                layer.i,
                layer.o,
            )?;
        }
        Ok(())
    }

    /// `dout (B,H_L)` is the gradient of the loss w.r.t. [`MlpTower::out`]. The dense layers'
    /// gradients are accumulated into `g`; each row's `dP[u]`, `dQ[i]` are left in the pair.
    pub fn backward(&mut self, be: &B, p: &ParamSet<B>, g: &mut ParamSet<B>, dout: &B::Buf, b: usize) -> Result<()> {
        if self.is_regularized() {
            return self.backward_regularized(be, p, g, dout, b);
        }
        if self.dense.is_empty() {
            // Only the plain tower can be empty; x₀ is then the output.
            let e = &mut self.emb;
            return be.split_cols(dout, e.d, e.d, b, &mut e.dpu, &mut e.dqi);
        }
        self.backward_layers(be, p, g, dout, b)?;
        self.unembed(be, b)
    }

    /// The plain tower's dense layers in reverse, down to `∂L/∂x₀` ([`MlpTower::dx0`]), which
    /// it leaves unsplit: [`MlpTower::backward`] without the split into `dP[u]`, `dQ[i]`, for a
    /// fast path that scatters from `dx₀`'s columns itself.
    pub fn backward_layers(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        dout: &B::Buf,
        b: usize,
    ) -> Result<()> {
        if self.is_regularized() {
            return Err(Error::invalid(
                "mlp.backward",
                "tower",
                "a tower with batch norm or dropout has no plain backward",
            ));
        }
        for l in (0..self.dense.len()).rev() {
            let layer = self.dense[l];
            let (dx_lo, dx_hi) = self.dx.split_at_mut(l);
            let dx_l = if l + 1 == self.dense.len() { dout } else { &dx_hi[0] };
            let (inp, dinp) = if l == 0 { (&self.x0, &mut self.dx0) } else { (&self.x[l - 1], &mut dx_lo[l - 1]) };
            // Both dWₗ and dbₗ come from the same parameter set; take them one at a time.
            let (dw, dbias) = two_mut(g, layer.w, layer.bias);
            // dzₗ = dxₗ·1[xₗ > 0], then the dense backward (the mask and dbₗ in one pass on a GPU).
            be.linear_relu_backward(
                &self.x[l],
                dx_l,
                &mut self.dz[l],
                inp,
                p.buf(layer.w),
                Some(dinp),
                dw,
                dbias,
                b,
                layer.i,
                layer.o,
            )?;
        }
        Ok(())
    }

    /// [`MlpTower::backward`] after [`MlpTower::forward_train`] of a regularized tower. `dxₗ`
    /// holds the gradient w.r.t. layer `l`'s output as the next layer read it (`x̃ₗ` with dropout).
    fn backward_regularized(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        dout: &B::Buf,
        b: usize,
    ) -> Result<()> {
        if self.dropout > 0.0 && !self.dropped {
            return Err(Error::invalid(
                "mlp.backward",
                "tower",
                "backward needs a training forward (forward_train) first",
            ));
        }
        let last = self.dense.len() - 1;
        for l in (0..self.dense.len()).rev() {
            let layer = self.dense[l];
            let n_out = b * layer.o;
            let (dx_lo, dx_hi) = self.dx.split_at_mut(l);
            let mut dx_l = if l == last { dout } else { &dx_hi[0] };
            if self.dropout > 0.0 {
                let seed = ncf_core::rng::dropout_seed(self.noise, 0, l as u64);
                be.dropout(dx_l, &mut self.dxd[l], n_out, self.dropout, seed)?; // dxₗ = mask ⊙ dx̃ₗ / (1−p)
                dx_l = &self.dxd[l];
            }
            let (inp, dinp) = match l {
                0 => (&self.x0, &mut self.dx0),
                _ if self.dropout > 0.0 => (&self.xd[l - 1], &mut dx_lo[l - 1]),
                _ => (&self.x[l - 1], &mut dx_lo[l - 1]),
            };
            match self.bn.get_mut(l).and_then(Option::as_mut) {
                None => {
                    let (dw, dbias) = two_mut(g, layer.w, layer.bias);
                    let w = p.buf(layer.w);
                    be.linear_relu_backward(
                        &self.x[l],
                        dx_l,
                        &mut self.dz[l],
                        inp,
                        w,
                        Some(dinp),
                        dw,
                        dbias,
                        b,
                        layer.i,
                        layer.o,
                    )?;
                }
                Some(n) => {
                    be.relu_backward(&self.x[l], dx_l, &mut self.dz[l], n_out)?; // dzₗ = dxₗ·1[xₗ > 0]
                    let (dgamma, dbeta) = two_mut(g, n.idx.gamma, n.idx.beta);
                    let gamma = p.buf(n.idx.gamma);
                    be.batchnorm_backward(&self.dz[l], &n.xhat, gamma, &n.inv, b, layer.o, &mut n.da, dgamma, dbeta)?; // daₗ
                    let (dw, dbias) = two_mut(g, layer.w, layer.bias);
                    be.linear_backward(&n.da, inp, p.buf(layer.w), Some(dinp), dw, dbias, b, layer.i, layer.o)?;
                }
            }
        }
        self.unembed(be, b)
    }

    /// Signs of every pre-activation `zₗ > 0` for the first `b` rows (the gradient check uses them
    /// to tell when a finite-difference step crossed a ReLU kink).
    pub fn relu_pattern(&self, be: &B, b: usize) -> Result<Vec<bool>> {
        let mut out = Vec::new();
        for (z, layer) in self.z.iter().zip(&self.dense) {
            out.extend(be.download(z)?.iter().take(b * layer.o).map(|&v| v > <B::T as ncf_core::Float>::ZERO));
        }
        Ok(out)
    }
}

/// Two distinct mutable buffers out of one parameter set.
pub fn two_mut<B: Backend>(g: &mut ParamSet<B>, a: usize, b: usize) -> (&mut B::Buf, &mut B::Buf) {
    assert_ne!(a, b, "two_mut needs two different tensors");
    if a < b {
        let (lo, hi) = g.tensors.split_at_mut(b);
        (&mut lo[a].buf, &mut hi[0].buf)
    } else {
        let (lo, hi) = g.tensors.split_at_mut(a);
        (&mut hi[0].buf, &mut lo[b].buf)
    }
}

// ------------------------------------------------------------------------------------ head

/// The prediction layer: `logit = x · wᵀ + b`.   `x (B,I)  w (1,I)  b (1)  logit (B)`.
/// The sigmoid lives in the loss ([`Backend::bce_with_logits`]), or in `predict`.
pub struct Head<B: Backend> {
    pub idx: DenseIdx,
    /// The logits `(B)` after [`Head::forward`].
    pub logits: B::Buf,
    /// `∂L/∂x (B,I)` after [`Head::backward`].
    pub dinp: B::Buf,
}

impl<B: Backend> Head<B> {
    pub fn new(be: &B, w: usize, bias: usize, i: usize, max_batch: usize) -> Result<Self> {
        Ok(Head { idx: DenseIdx { w, bias, i, o: 1 }, logits: be.zeros(max_batch)?, dinp: be.zeros(max_batch * i)? })
    }

    /// The same head with buffers for `rows` rows.
    pub fn like(&self, be: &B, rows: usize) -> Result<Self> {
        Self::new(be, self.idx.w, self.idx.bias, self.idx.i, rows)
    }

    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, x: &B::Buf, b: usize) -> Result<()> {
        be.linear_forward(x, p.buf(self.idx.w), p.buf(self.idx.bias), &mut self.logits, b, self.idx.i, 1)
    }

    pub fn backward(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        x: &B::Buf,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        let (dw, dbias) = two_mut(g, self.idx.w, self.idx.bias);
        be.linear_backward(dlogits, x, p.buf(self.idx.w), Some(&mut self.dinp), dw, dbias, b, self.idx.i, 1)
    }
}
