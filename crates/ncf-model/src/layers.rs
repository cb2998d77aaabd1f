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
        })
    }

    /// The same tower with buffers for `rows` rows.
    pub fn like(&self, be: &B, rows: usize) -> Result<Self> {
        Self::new(be, self.emb.like(be, rows)?, self.dense.clone(), rows)
    }

    /// Width of the tower's output.
    pub fn out_width(&self) -> usize {
        self.dense.last().map_or(2 * self.emb.d, |l| l.o)
    }

    /// The tower's output `x_L (B, H_L)` after [`MlpTower::forward`].
    pub fn out(&self) -> &B::Buf {
        self.x.last().unwrap_or(&self.x0)
    }

    pub fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        let e = &mut self.emb;
        e.forward(be, p, users, items, b)?;
        be.concat_cols(&e.pu, e.d, &e.qi, e.d, b, &mut self.x0)?;
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

    /// Computes the [`FirstLayerTables`] from the current weights (inference only), unless the
    /// tables are already current (same [`ParamSet::generation`]): a server calls it per query.
    pub fn prepare_scoring(&mut self, be: &B, p: &ParamSet<B>) -> Result<()> {
        let Some(&l0) = self.dense.first() else { return Ok(()) };
        if self.tables.as_ref().is_some_and(|t| t.generation == p.generation) {
            return Ok(()); // still current: the weights have not changed since
        }
        let (d, o) = (self.emb.d, l0.o);
        let w = be.download(p.buf(l0.w))?;
        let (mut wu, mut wi) = (Vec::with_capacity(o * d), Vec::with_capacity(o * d));
        for row in w.chunks_exact(2 * d).take(o) {
            wu.extend_from_slice(&row[..d]);
            wi.extend_from_slice(&row[d..]);
        }
        let (wu, wi, zero) = (be.upload(&wu)?, be.upload(&wi)?, be.zeros(o)?);
        let e = &self.emb;
        let mut u = be.zeros(e.users * o)?;
        let mut v = be.zeros(e.items * o)?;
        be.linear_forward(p.buf(e.user), &wu, p.buf(l0.bias), &mut u, e.users, d, o)?;
        be.linear_forward(p.buf(e.item), &wi, &zero, &mut v, e.items, d, o)?;
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
        let dx0 = if self.dense.is_empty() { dout } else { &self.dx0 };
        let e = &mut self.emb;
        be.split_cols(dx0, e.d, e.d, b, &mut e.dpu, &mut e.dqi)
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
pub(crate) fn two_mut<B: Backend>(g: &mut ParamSet<B>, a: usize, b: usize) -> (&mut B::Buf, &mut B::Buf) {
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
