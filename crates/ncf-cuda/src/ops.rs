//! The CUDA backend's ops without the device: each function checks its arguments with the
//! shared checks of [`ncf_core::check`] (the ones every backend calls, so the GPU gives the same
//! [`ncf_core::Error`] as the CPU for the same bad call) and returns the op's launch [`Plan`].
//! [`crate::CudaBackend`] calls them with its buffers' device addresses and lengths and runs
//! the plan; a test calls them with made-up addresses (`tests/checks.rs`), no GPU needed.
//!
//! Ops that need state of the backend take it as arguments (the loss's partial sums); those
//! whose plan depends on work the backend does after the check (the deterministic scatter-add's
//! row plan) return `None` for the backend to finish.
use crate::plan::{self, Addr, GpuGemm, Loss, Plan, Rows, SampleBufs, Seen};
use ncf_core::check::{self, Ids};
use ncf_core::{AdamHp, Result, SgdHp};

/// A float buffer: its address and length in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mem {
    pub addr: Addr,
    pub len: usize,
}

/// An id buffer: its address, capacity, the host's copy of its ids (`None` when the device
/// wrote them: in range by construction, only the length is checked), the live count as the
/// host knows it, and the device's count of a `unique_ids` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMem<'a> {
    pub addr: Addr,
    pub cap: usize,
    pub host: Option<&'a [u32]>,
    pub live: usize,
    pub count: Option<Addr>,
}

impl<'a> IdMem<'a> {
    /// Ids written from the host (all `host.len()` of them live), at `addr`.
    pub fn host(addr: Addr, host: &'a [u32]) -> Self {
        IdMem { addr, cap: host.len(), host: Some(host), live: host.len(), count: None }
    }

    /// The buffer as the shared checks see it.
    pub fn ids(&self) -> Ids<'a> {
        Ids::device(self.cap, self.host)
    }

    /// As a lazy optimizer's row list.
    fn rows(&self) -> Rows {
        Rows { list: self.addr, cap: self.cap, nrows_host: self.live, nrows_dev: self.count }
    }

    /// The live rows as the checks see them: the host's count, capped at the capacity.
    fn live_ids(&self) -> Ids<'a> {
        Ids::device(self.live.min(self.cap), self.host)
    }
}

pub fn fill(buf: Mem, n: usize, value: f32) -> Result<Plan> {
    check::fill(buf.len, n)?;
    Ok(plan::fill(buf.addr, n, value))
}

pub fn embedding_forward(table: Mem, n: usize, d: usize, ids: IdMem<'_>, b: usize, out: Mem) -> Result<Plan> {
    check::embedding_forward(table.len, n, d, ids.ids(), b, out.len)?;
    plan::embedding_forward(table.addr, ids.addr, out.addr, b, d)
}

#[allow(clippy::too_many_arguments)]
pub fn gather_add_relu(
    a: Mem,
    na: usize,
    ia: IdMem<'_>,
    c: Mem,
    nc: usize,
    ic: IdMem<'_>,
    d: usize,
    b: usize,
    out: Mem,
) -> Result<Plan> {
    check::gather_add_relu(a.len, na, ia.ids(), c.len, nc, ic.ids(), d, b, out.len)?;
    plan::gather_add_relu((a.addr, ia.addr), (c.addr, ic.addr), out.addr, b, d)
}

/// The scatter-add: the atomic plan, an empty one (`b` or `d` zero), or `None` when
/// `deterministic`: the backend builds the row plan of the ids, then
/// [`plan::embedding_backward_sorted`].
pub fn embedding_backward(
    dout: Mem,
    ids: IdMem<'_>,
    (b, d): (usize, usize),
    dtable: Mem,
    n: usize,
    deterministic: bool,
) -> Result<Option<Plan>> {
    check::embedding_backward(dout.len, ids.ids(), b, d, dtable.len, n)?;
    if b == 0 || d == 0 {
        return Ok(Some(Plan::empty()));
    }
    if deterministic {
        return Ok(None);
    }
    plan::embedding_backward_atomic(dout.addr, ids.addr, dtable.addr, b, d).map(Some)
}

#[allow(clippy::too_many_arguments)]
pub fn linear_forward(g: GpuGemm, inp: Mem, w: Mem, bias: Mem, out: Mem, b: usize, i: usize, o: usize) -> Result<Plan> {
    check::linear_forward(inp.len, w.len, bias.len, out.len, b, i, o)?;
    plan::linear_forward(g, inp.addr, w.addr, bias.addr, out.addr, b, i, o)
}

#[allow(clippy::too_many_arguments)]
pub fn linear_relu_forward(
    g: GpuGemm,
    inp: Mem,
    w: Mem,
    bias: Mem,
    z: Mem,
    x: Mem,
    b: usize,
    i: usize,
    o: usize,
) -> Result<Plan> {
    check::linear_relu_forward(inp.len, w.len, bias.len, z.len, x.len, b, i, o)?;
    plan::linear_relu_forward(g, inp.addr, w.addr, bias.addr, z.addr, x.addr, b, i, o)
}

#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    g: GpuGemm,
    dout: Mem,
    inp: Mem,
    w: Mem,
    dinp: Option<Mem>,
    dw: Mem,
    dbias: Mem,
    b: usize,
    i: usize,
    o: usize,
) -> Result<Plan> {
    check::linear_backward(dout.len, inp.len, w.len, dinp.map(|m| m.len), dw.len, dbias.len, b, i, o)?;
    let dinp = dinp.map(|m| m.addr);
    plan::linear_backward(g, dout.addr, inp.addr, w.addr, dinp, dw.addr, dbias.addr, b, i, o)
}

#[allow(clippy::too_many_arguments)]
pub fn linear_relu_backward(
    g: GpuGemm,
    x: Mem,
    dx: Mem,
    dz: Mem,
    inp: Mem,
    w: Mem,
    dinp: Option<Mem>,
    dw: Mem,
    dbias: Mem,
    b: usize,
    i: usize,
    o: usize,
) -> Result<Plan> {
    let dl = dinp.map(|m| m.len);
    check::linear_relu_backward(x.len, dx.len, dz.len, inp.len, w.len, dl, dw.len, dbias.len, b, i, o)?;
    let dinp = dinp.map(|m| m.addr);
    plan::linear_relu_backward(g, x.addr, dx.addr, dz.addr, inp.addr, w.addr, dinp, dw.addr, dbias.addr, b, i, o)
}

pub fn relu_forward(inp: Mem, out: Mem, n: usize) -> Result<Plan> {
    check::relu_forward(inp.len, out.len, n)?;
    Ok(plan::relu_forward(inp.addr, out.addr, n))
}

pub fn relu_backward(out: Mem, dout: Mem, dinp: Mem, n: usize) -> Result<Plan> {
    check::relu_backward(out.len, dout.len, dinp.len, n)?;
    Ok(plan::relu_backward(out.addr, dout.addr, dinp.addr, n))
}

pub fn sigmoid_forward(inp: Mem, out: Mem, n: usize) -> Result<Plan> {
    check::sigmoid_forward(inp.len, out.len, n)?;
    Ok(plan::sigmoid_forward(inp.addr, out.addr, n))
}

/// `bce_with_logits` or `mse`; `partials` and `done` are the backend's reduction buffers.
pub fn mean_loss(
    loss_fn: Loss,
    (x, y): (Mem, Mem),
    b: usize,
    (loss, dx): (Mem, Mem),
    partials: (Addr, Addr),
) -> Result<Plan> {
    match loss_fn {
        Loss::BceWithLogits => check::bce_with_logits(x.len, y.len, b, loss.len, dx.len)?,
        Loss::Mse => check::mse(x.len, y.len, b, loss.len, dx.len)?,
    }
    plan::mean_loss(loss_fn, x.addr, y.addr, dx.addr, partials, loss.addr, b)
}

pub fn gmf_forward(u: Mem, v: Mem, out: Mem, n: usize) -> Result<Plan> {
    check::gmf_forward(u.len, v.len, out.len, n)?;
    Ok(plan::gmf_forward(u.addr, v.addr, out.addr, n))
}

pub fn gmf_backward(dout: Mem, u: Mem, v: Mem, du: Mem, dv: Mem, n: usize) -> Result<Plan> {
    check::gmf_backward(dout.len, u.len, v.len, du.len, dv.len, n)?;
    Ok(plan::gmf_backward(dout.addr, u.addr, v.addr, du.addr, dv.addr, n))
}

pub fn concat_cols(a: Mem, da: usize, c: Mem, dc: usize, b: usize, out: Mem) -> Result<Plan> {
    check::concat_cols(a.len, da, c.len, dc, b, out.len)?;
    plan::concat_cols((a.addr, da), (c.addr, dc), b, out.addr)
}

pub fn split_cols(dout: Mem, da: usize, dc: usize, b: usize, grad_a: Mem, grad_c: Mem) -> Result<Plan> {
    check::split_cols(dout.len, da, dc, b, grad_a.len, grad_c.len)?;
    plan::split_cols(dout.addr, (da, dc), b, grad_a.addr, grad_c.addr)
}

pub fn rowdot_forward(u: Mem, v: Mem, b: usize, d: usize, out: Mem) -> Result<Plan> {
    check::rowdot_forward(u.len, v.len, b, d, out.len)?;
    plan::rowdot_forward(u.addr, v.addr, b, d, out.addr)
}

#[allow(clippy::too_many_arguments)]
pub fn rowdot_backward(dout: Mem, u: Mem, v: Mem, b: usize, d: usize, du: Mem, dv: Mem) -> Result<Plan> {
    check::rowdot_backward(dout.len, u.len, v.len, b, d, du.len, dv.len)?;
    plan::rowdot_backward(dout.addr, u.addr, v.addr, b, d, du.addr, dv.addr)
}

pub fn add_assign(out: Mem, x: Mem, n: usize) -> Result<Plan> {
    check::add_assign(out.len, x.len, n)?;
    Ok(plan::add_assign(out.addr, x.addr, n))
}

pub fn dropout(inp: Mem, out: Mem, n: usize, p: f64, seed: u64) -> Result<Plan> {
    check::dropout(inp.len, out.len, n, p)?;
    Ok(plan::dropout(inp.addr, out.addr, n, p, seed))
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train(
    (x, gamma, beta): (Mem, Mem, Mem),
    (y, xhat, inv): (Mem, Mem, Mem),
    (rmean, rvar): (Mem, Mem),
    b: usize,
    h: usize,
    eps: f64,
    momentum: f64,
) -> Result<Plan> {
    check::batchnorm_forward_train(
        x.len, gamma.len, beta.len, b, h, eps, momentum, y.len, xhat.len, inv.len, rmean.len, rvar.len,
    )?;
    plan::batchnorm_forward_train(
        (x.addr, gamma.addr, beta.addr),
        (y.addr, xhat.addr, inv.addr),
        (rmean.addr, rvar.addr),
        b,
        h,
        eps,
        momentum,
    )
}

pub fn batchnorm_forward_eval(
    (x, gamma, beta): (Mem, Mem, Mem),
    (rmean, rvar): (Mem, Mem),
    y: Mem,
    b: usize,
    h: usize,
    eps: f64,
) -> Result<Plan> {
    check::batchnorm_forward_eval(x.len, gamma.len, beta.len, rmean.len, rvar.len, b, h, eps, y.len)?;
    plan::batchnorm_forward_eval((x.addr, gamma.addr, beta.addr), (rmean.addr, rvar.addr), y.addr, b, h, eps)
}

pub fn batchnorm_backward(
    (dy, xhat, gamma, inv): (Mem, Mem, Mem, Mem),
    (dx, dgamma, dbeta): (Mem, Mem, Mem),
    b: usize,
    h: usize,
) -> Result<Plan> {
    check::batchnorm_backward(dy.len, xhat.len, gamma.len, inv.len, b, h, dx.len, dgamma.len, dbeta.len)?;
    plan::batchnorm_backward((dy.addr, xhat.addr, gamma.addr, inv.addr), (dx.addr, dgamma.addr, dbeta.addr), b, h)
}

pub fn scale(buf: Mem, n: usize, s: f32) -> Result<Plan> {
    check::scale(buf.len, n)?;
    Ok(plan::scale(buf.addr, n, s))
}

pub fn add_scalar(out: Mem, s: Mem, n: usize) -> Result<Plan> {
    check::add_scalar(out.len, s.len, n)?;
    Ok(plan::add_scalar(out.addr, s.addr, n))
}

pub fn sum_into(x: Mem, n: usize, acc: Mem) -> Result<Plan> {
    check::sum_into(x.len, n, acc.len)?;
    Ok(plan::sum_into(x.addr, n, acc.addr))
}

pub fn sgd_step(p: Mem, g: Mem, mom: Mem, n: usize, hp: &SgdHp) -> Result<Plan> {
    check::sgd_step(p.len, g.len, mom.len, n)?;
    Ok(plan::sgd_step(p.addr, g.addr, mom.addr, n, hp))
}

#[allow(clippy::too_many_arguments)]
pub fn adam_step(p: Mem, g: Mem, m: Mem, v: Mem, n: usize, hp: &AdamHp, t: IdMem<'_>) -> Result<Plan> {
    check::adam_step(p.len, g.len, m.len, v.len, n, t.ids())?;
    Ok(plan::adam_step(p.addr, g.addr, m.addr, v.addr, n, hp, t.addr))
}

#[allow(clippy::too_many_arguments)]
pub fn sgd_step_rows(p: Mem, g: Mem, mom: Mem, rows: IdMem<'_>, d: usize, n: usize, hp: &SgdHp) -> Result<Plan> {
    check::sgd_step_rows(p.len, g.len, mom.len, rows.live_ids(), d, n)?;
    plan::sgd_step_rows(p.addr, g.addr, mom.addr, &rows.rows(), d, hp)
}

#[allow(clippy::too_many_arguments)]
pub fn adam_step_rows(
    p: Mem,
    g: Mem,
    m: Mem,
    v: Mem,
    rows: IdMem<'_>,
    d: usize,
    n: usize,
    hp: &AdamHp,
    t: IdMem<'_>,
) -> Result<Plan> {
    check::adam_step_rows(p.len, g.len, m.len, v.len, rows.live_ids(), d, n, t.ids())?;
    plan::adam_step_rows(p.addr, g.addr, m.addr, v.addr, &rows.rows(), d, hp, t.addr)
}

/// The check of `unique_ids` (its work is the row plan and two device copies).
pub fn unique_ids(ids: IdMem<'_>, b: usize, n: usize, out: IdMem<'_>) -> Result<()> {
    check::unique_ids(ids.ids(), b, n, Some(out.cap))
}

pub fn counter_add(c: IdMem<'_>, add: u32) -> Result<Plan> {
    check::counter_add(c.cap)?;
    Ok(plan::counter_add(c.addr, add))
}

/// The batch and the state's advance. The epoch end is not checked here: the counter is on the
/// device (see [`check::sample_slots`]).
#[allow(clippy::too_many_arguments)]
pub fn sample_batch(
    tables: &SampleBufs,
    state: IdMem<'_>,
    batch: usize,
    b: usize,
    users: IdMem<'_>,
    items: IdMem<'_>,
    labels: Mem,
) -> Result<Plan> {
    check::sample_batch(state.cap, batch, b, users.cap, items.cap, labels.len, tables.rows)?;
    plan::sample_batch(tables, state.addr, batch, b, users.addr, items.addr, labels.addr)
}

#[allow(clippy::too_many_arguments)]
pub fn rank_unseen(
    scores: Mem,
    u: usize,
    n: usize,
    targets: IdMem<'_>,
    seen_off: IdMem<'_>,
    seen: IdMem<'_>,
    ranks: IdMem<'_>,
) -> Result<Plan> {
    check::rank_unseen(scores.len, u, n, targets.ids(), seen_off.ids(), seen.ids(), ranks.cap)?;
    let s = Seen { items: seen.addr, off: seen_off.addr };
    plan::full_rank(scores.addr, u, n, targets.addr, s, ranks.addr)
}

#[allow(clippy::too_many_arguments)]
pub fn top_k(
    scores: Mem,
    u: usize,
    n: usize,
    k: usize,
    seen_off: IdMem<'_>,
    seen: IdMem<'_>,
    out: IdMem<'_>,
) -> Result<Plan> {
    check::top_k(scores.len, u, n, k, seen_off.ids(), seen.ids(), Some(out.cap))?;
    let s = Seen { items: seen.addr, off: seen_off.addr };
    plan::top_k(scores.addr, u, n, k, s, out.addr)
}
