//! One lane of the CPU's two-lane step ([`crate::step`]): a model's forward, backward to its
//! rows' gradients, and the scatter of one id side, as [`LaneActs`] has them, except for the
//! MLP tower's embedding.
//!
//! The reference tower gathers `P[u]` and `Q[i]` into buffers of their own and concatenates
//! them into `x₀ = [P[u], Q[i]]`; backward, it splits `∂L/∂x₀` back into `dP[u]` and `dQ[i]`,
//! which the scatter adds into the tables. Here the rows go straight into `x₀`'s columns
//! ([`embedding_forward_cols`]) and are scattered straight from `∂L/∂x₀`'s columns
//! ([`embedding_backward_cols`]), or, where the step sums a side's rows into a compact
//! gradient, read from there ([`CpuLane::row_grads`]): two copies of `(B, 2D)` fewer per lane,
//! the same values (a copy is exact), so the step's bits do not change. Everything else is the
//! model's own code
//! ([`MlpTower::forward_layers`], [`MlpTower::backward_layers`], the GMF tower, the head).
//! A tower with side features, batch norm or dropout, or no dense layer, takes the model's own
//! path ([`LaneActs`]) whole. `step.rs`'s tests hold the lanes to the reference.

use crate::backend::CpuBackend;
use crate::ops::embedding::{embedding_backward_cols, embedding_forward_cols};
use crate::ops::gemm::{CpuFloat, GemmImpl};
use crate::ops::linear;
use ncf_core::check::{self, Ids};
use ncf_core::{Backend, Error, Result};
use ncf_model::layers::{EmbeddingPair, MlpTower, two_mut};
use ncf_model::params::SideTables;
use ncf_model::split::LaneActs;
use ncf_model::{GmfActs, IdSource, MlpActs, NeuMfActs, ParamSet};

type Cpu<T> = CpuBackend<T>;

/// A model's lane on the CPU: [`LaneActs`] with the MLP tower's embedding in `x₀`'s columns
/// (see the module docs). The defaults are the model's own.
pub(crate) trait CpuLane<T: CpuFloat>: LaneActs<Cpu<T>> {
    fn lane_forward(
        &mut self,
        be: &Cpu<T>,
        p: &ParamSet<Cpu<T>>,
        users: &Vec<u32>,
        items: &Vec<u32>,
        b: usize,
    ) -> Result<()> {
        self.forward(be, p, users, items, b)
    }
    fn lane_backward_rows(
        &mut self,
        be: &Cpu<T>,
        p: &ParamSet<Cpu<T>>,
        g: &mut ParamSet<Cpu<T>>,
        dlogits: &Vec<T>,
        b: usize,
    ) -> Result<()> {
        self.backward_rows(be, p, g, dlogits, b)
    }
    fn lane_scatter_side(
        &self,
        be: &Cpu<T>,
        side: IdSource,
        t: &mut SideTables<'_, Cpu<T>>,
        ids: &Vec<u32>,
        b: usize,
    ) -> Result<()> {
        self.scatter_side(be, side, t, ids, b)
    }
    /// Where, after [`CpuLane::lane_backward_rows`], each row's gradient for table `k` of the
    /// `side` tables lies: a buffer of rows of `cols`, the table's `D` columns from `col0`.
    /// `None` where the lane has no such buffer (then the table's gradient comes from
    /// [`CpuLane::lane_scatter_side`] only).
    fn row_grads(&self, side: IdSource, k: usize) -> Option<(&Vec<T>, usize, usize)>;
}

/// GMF has no MLP tower: its own lane.
impl<T: CpuFloat> CpuLane<T> for GmfActs<Cpu<T>> {
    fn row_grads(&self, side: IdSource, k: usize) -> Option<(&Vec<T>, usize, usize)> {
        pair_grads(&self.gmf.emb, side, k)
    }
}

/// The GMF pair's `dP[u]`, `dQ[i]` rows (contiguous, `D` wide) for table `k`.
fn pair_grads<T: CpuFloat>(e: &EmbeddingPair<Cpu<T>>, side: IdSource, k: usize) -> Option<(&Vec<T>, usize, usize)> {
    match side {
        IdSource::User if k == e.user => Some((&e.dpu, e.d, 0)),
        IdSource::Item if k == e.item => Some((&e.dqi, e.d, 0)),
        _ => None,
    }
}

/// The MLP tower's rows for table `k`: `∂L/∂x₀`'s first `D` columns for the users' table, the
/// next `D` for the items', where the tower runs the column path.
fn tower_grads<T: CpuFloat>(m: &MlpTower<Cpu<T>>, side: IdSource, k: usize) -> Option<(&Vec<T>, usize, usize)> {
    let e = &m.emb;
    match side {
        _ if !direct(m) => None,
        IdSource::User if k == e.user => Some((m.dx0(), 2 * e.d, 0)),
        IdSource::Item if k == e.item => Some((m.dx0(), 2 * e.d, e.d)),
        _ => None,
    }
}

impl<T: CpuFloat> CpuLane<T> for MlpActs<Cpu<T>> {
    fn lane_forward(
        &mut self,
        be: &Cpu<T>,
        p: &ParamSet<Cpu<T>>,
        users: &Vec<u32>,
        items: &Vec<u32>,
        b: usize,
    ) -> Result<()> {
        tower_forward(be, p, &mut self.mlp, users, items, b)?; // x_L = MLP([P[u], Q[i]])
        self.head.forward(be, p, self.mlp.out(), b) // logit = x_L·wᵀ + b
    }
    fn lane_backward_rows(
        &mut self,
        be: &Cpu<T>,
        p: &ParamSet<Cpu<T>>,
        g: &mut ParamSet<Cpu<T>>,
        dlogits: &Vec<T>,
        b: usize,
    ) -> Result<()> {
        self.head.backward(be, p, g, self.mlp.out(), dlogits, b)?; // dw, db; dx_L = dlogit·w
        tower_backward(be, p, g, &mut self.mlp, &self.head.dinp, b) // down to dx₀
    }
    fn lane_scatter_side(
        &self,
        be: &Cpu<T>,
        side: IdSource,
        t: &mut SideTables<'_, Cpu<T>>,
        ids: &Vec<u32>,
        b: usize,
    ) -> Result<()> {
        tower_scatter(be, &self.mlp, side, t, ids, b)
    }
    fn row_grads(&self, side: IdSource, k: usize) -> Option<(&Vec<T>, usize, usize)> {
        tower_grads(&self.mlp, side, k)
    }
}

impl<T: CpuFloat> CpuLane<T> for NeuMfActs<Cpu<T>> {
    fn lane_forward(
        &mut self,
        be: &Cpu<T>,
        p: &ParamSet<Cpu<T>>,
        users: &Vec<u32>,
        items: &Vec<u32>,
        b: usize,
    ) -> Result<()> {
        self.gmf.forward(be, p, users, items, b)?; // h = P_g[u] ⊙ Q_g[i]            (B,F)
        tower_forward(be, p, &mut self.mlp, users, items, b)?; // x = MLP([P_m[u], Q_m[i]])   (B,H)
        let (f, h) = (self.gmf.f(), self.mlp.out_width());
        if two_input_head(be, f, h) {
            // logit = [h, x]·wᵀ + b, reading h and x where they lie            (B)
            let (w, bias) = (p.buf(self.head.idx.w), p.buf(self.head.idx.bias));
            check_two_input_head(&self.gmf.h, f, self.mlp.out(), h, w, &self.head.logits, b)?;
            check_rows("matvec_bias_two", "bias", bias.len(), 1, 1)?;
            let (hx, x) = (&self.gmf.h[..b * f], &self.mlp.out()[..b * h]);
            linear::matvec_bias_two(hx, f, x, h, w, bias[0], &mut self.head.logits[..b]);
            return Ok(());
        }
        be.concat_cols(&self.gmf.h, f, self.mlp.out(), h, b, &mut self.cat)?; // cat = [h, x]   (B,F+H)
        self.head.forward(be, p, &self.cat, b) // logit = cat·wᵀ + b                   (B)
    }
    fn lane_backward_rows(
        &mut self,
        be: &Cpu<T>,
        p: &ParamSet<Cpu<T>>,
        g: &mut ParamSet<Cpu<T>>,
        dlogits: &Vec<T>,
        b: usize,
    ) -> Result<()> {
        let (f, h) = (self.gmf.f(), self.mlp.out_width());
        if two_input_head(be, f, h) {
            // dw, db; dh = dlogit·w[..F], dx = dlogit·w[F..], no dcat to split
            let (wk, bk) = (self.head.idx.w, self.head.idx.bias);
            let w = p.buf(wk);
            check_two_input_head(&self.gmf.h, f, self.mlp.out(), h, w, dlogits, b)?;
            check_rows("matvec_backward_two", "dh", self.dh_gmf.len(), b, f)?;
            check_rows("matvec_backward_two", "dx", self.dx_mlp.len(), b, h)?;
            let (dw, dbias) = two_mut(g, wk, bk);
            check_rows("two_input_head", "dw", dw.len(), 1, f + h)?;
            check_rows("two_input_head", "dbias", dbias.len(), 1, 1)?;
            linear::matvec_backward_two(
                &dlogits[..b],
                (&self.gmf.h[..b * f], f),
                (&self.mlp.out()[..b * h], h),
                w,
                &mut self.dh_gmf[..b * f],
                &mut self.dx_mlp[..b * h],
                &mut dw[..f + h],
                &mut dbias[0],
            );
        } else {
            self.head.backward(be, p, g, &self.cat, dlogits, b)?; // dw, db; dcat = dlogit·w
            be.split_cols(&self.head.dinp, f, h, b, &mut self.dh_gmf, &mut self.dx_mlp)?; // dcat = [dh, dx]
        }
        tower_backward(be, p, g, &mut self.mlp, &self.dx_mlp, b)?; // dense layers in reverse, down to dx₀
        self.gmf.backward(be, &self.dh_gmf, b) // rows of dP_g[u] = dh ⊙ Q_g[i], dQ_g[i] = dh ⊙ P_g[u]
    }
    fn lane_scatter_side(
        &self,
        be: &Cpu<T>,
        side: IdSource,
        t: &mut SideTables<'_, Cpu<T>>,
        ids: &Vec<u32>,
        b: usize,
    ) -> Result<()> {
        self.gmf.emb.backward_side(be, side, t, ids, b)?;
        tower_scatter(be, &self.mlp, side, t, ids, b)
    }
    fn row_grads(&self, side: IdSource, k: usize) -> Option<(&Vec<T>, usize, usize)> {
        pair_grads(&self.gmf.emb, side, k).or_else(|| tower_grads(&self.mlp, side, k))
    }
}

/// Whether NeuMF's head reads `h` and `x` apart ([`linear::matvec_bias_two`]): where the
/// reference head would take [`linear::linear_forward`]'s matrix-vector path (the scratch GEMM
/// both ways), whose bits it keeps, and both widths are whole chunks of 8.
fn two_input_head<T: CpuFloat>(be: &Cpu<T>, f: usize, h: usize) -> bool {
    be.gemm.forward() == GemmImpl::Scratch && be.gemm.backward() == GemmImpl::Scratch && linear::two_inputs_fit(f, h)
}

/// The sizes [`linear::matvec_bias_two`] and [`linear::matvec_backward_two`] read: `hx (B,F)`,
/// `x (B,H)`, `w (F+H)` and a vector of `B` (the logits or their gradients).
fn check_two_input_head<T>(hx: &[T], f: usize, x: &[T], h: usize, w: &[T], v: &[T], b: usize) -> Result<()> {
    check_rows("two_input_head", "h", hx.len(), b, f)?;
    check_rows("two_input_head", "x", x.len(), b, h)?;
    check_rows("two_input_head", "w", w.len(), 1, f + h)?;
    check_rows("two_input_head", "logits", v.len(), b, 1)
}

/// Whether the tower's embedding goes through `x₀`'s columns here: a plain tower (no side
/// features, batch norm or dropout) with at least one dense layer.
fn direct<T: CpuFloat>(m: &MlpTower<Cpu<T>>) -> bool {
    m.features().is_none() && !m.is_regularized() && !m.dense.is_empty()
}

/// `x₀ = [P[u], Q[i]]` gathered in place, then the dense layers.
fn tower_forward<T: CpuFloat>(
    be: &Cpu<T>,
    p: &ParamSet<Cpu<T>>,
    m: &mut MlpTower<Cpu<T>>,
    users: &Vec<u32>,
    items: &Vec<u32>,
    b: usize,
) -> Result<()> {
    if !direct(m) {
        return m.forward(be, p, users, items, b);
    }
    let e = &m.emb;
    let (d, sides) = (e.d, [(e.user, e.users, users, 0), (e.item, e.items, items, e.d)]);
    let x0 = m.x0_mut();
    for (k, n, ids, col0) in sides {
        let table = p.buf(k);
        check::embedding_forward(table.len(), n, d, Ids::host(ids), b, b * d)?;
        check_rows("embedding_forward_cols", "x0", x0.len(), b, 2 * d)?;
        embedding_forward_cols(&table[..n * d], d, &ids[..b], &mut x0[..b * 2 * d], 2 * d, col0);
    }
    m.forward_layers(be, p, b)
}

/// The dense layers in reverse, down to `∂L/∂x₀`, left unsplit for [`tower_scatter`].
fn tower_backward<T: CpuFloat>(
    be: &Cpu<T>,
    p: &ParamSet<Cpu<T>>,
    g: &mut ParamSet<Cpu<T>>,
    m: &mut MlpTower<Cpu<T>>,
    dout: &Vec<T>,
    b: usize,
) -> Result<()> {
    if direct(m) { m.backward_layers(be, p, g, dout, b) } else { m.backward(be, p, g, dout, b) }
}

/// One side's rows of `∂L/∂x₀` (users: its first `D` columns, items: the next `D`) added into
/// that side's table gradient, in row order.
fn tower_scatter<T: CpuFloat>(
    be: &Cpu<T>,
    m: &MlpTower<Cpu<T>>,
    side: IdSource,
    t: &mut SideTables<'_, Cpu<T>>,
    ids: &Vec<u32>,
    b: usize,
) -> Result<()> {
    if !direct(m) {
        return m.emb.backward_side(be, side, t, ids, b);
    }
    let e = &m.emb;
    let (k, n, col0) = match side {
        IdSource::User => (e.user, e.users, 0),
        IdSource::Item => (e.item, e.items, e.d),
    };
    let (d, dx0) = (e.d, m.dx0());
    let dtable = t.get(k)?;
    check::embedding_backward(b * d, Ids::host(ids), b, d, dtable.len(), n)?;
    check_rows("embedding_backward_cols", "dx0", dx0.len(), b, 2 * d)?;
    embedding_backward_cols(&dx0[..b * 2 * d], 2 * d, col0, d, &ids[..b], &mut dtable[..n * d]);
    Ok(())
}

/// `field`, a buffer of `len` elements, holds `rows` rows of `cols`.
pub(crate) fn check_rows(op: &'static str, field: &'static str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols).is_some_and(|need| len >= need) {
        return Ok(());
    }
    Err(Error::invalid(op, field, format!("{len} elements, fewer than {rows} rows of {cols}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncf_model::{AnyModel, ModelConfig, ModelKind};

    /// The plain towers of MLP and NeuMF take the column path; towers with side features take
    /// the model's own (`step.rs`'s tests hold both to the reference).
    #[test]
    fn plain_towers_use_x0_columns_and_hybrids_do_not() {
        let be = Cpu::<f32>::default();
        for (kind, feats, want) in [
            (ModelKind::NeuMf, 0, true),
            (ModelKind::Mlp, 0, true),
            (ModelKind::NeuMf, 2, false),
            (ModelKind::Mlp, 2, false),
        ] {
            let mut cfg = ModelConfig::new(kind, 10, 8);
            (cfg.user_features, cfg.item_features) = (feats, feats);
            let model = AnyModel::new(&be, &cfg, 4, &mut ncf_core::rng::seeded(1, 1)).unwrap();
            let got = match &model {
                AnyModel::NeuMf(m) => direct(&m.acts.mlp),
                AnyModel::Mlp(m) => direct(&m.acts.mlp),
                _ => unreachable!("NeuMF and MLP only"),
            };
            assert_eq!(got, want, "{kind} with {feats} features per side");
        }
    }
}
