//! The one checking layer: every [`Backend`] op's argument checks, written once
//! and called by every backend before it runs a kernel, so the CPU and the GPU give the same
//! [`Error`] for the same bad call.
//!
//! ## How a check sees its arguments
//!
//! Each op has a function of the same name taking the op's arguments in the trait's order, with
//! every float buffer replaced by its length (`Backend::len`) and every id buffer by an [`Ids`]:
//! its length and, where the host has them, the ids themselves. Sizes (`n`, `b`, `d`, …) are
//! passed as they are. A check returns the first problem it finds, in a fixed order: buffer
//! lengths in argument order, then ids, then values (an empty batch, a zero Adam step).
//!
//! ## Arithmetic
//!
//! Element counts are multiplied and widths added with checked arithmetic: a product that does
//! not fit in `usize` is an [`Error::ShapeMismatch`] naming the op and the tensor, never a panic
//! or a wrapped count. Once a check has passed, every `Π dims` it checked fits in `usize`, so the
//! caller may slice with plain `*`.
//!
//! ## Ids: host and device
//!
//! An id outside its table is an [`Error::IdOutOfRange`], checked on the host through
//! [`Ids::host`]. A device backend passes its host mirror of the ids ([`Ids::device`] with
//! `Some`) when the host wrote them, and `None` when the device made them (sampled ids, a
//! `unique_ids` output), which are in range by construction; then only the length is checked.
//! What no host check can see (the sampler's epoch end, read from a counter on the device) is
//! listed at [`sample_slots`].
//!
//! ## What stays with a backend
//!
//! Only limits of one device: the GPU's 32-bit kernel sizes (`i32_of` in `ncf-cuda`) and
//! `top_k`'s shared-memory bitmap are checked there, after the shared check. A device backend
//! calls the shared function first thing in each op, with its buffers' lengths and its id
//! buffers as `Ids::device(capacity, host_mirror)`; for a lazy optimizer's row list the length
//! is the live count the host knows (`len.min(capacity)`), and a fixed-capacity output of
//! `unique_ids`/`top_k` is passed as `Some(capacity)`.
//!
//! ## Evidence
//!
//! [`bad_calls`] makes a fixed list of bad calls on any backend and pairs each backend error
//! with this module's error for the same arguments; a backend's test asserts the pairs agree.

use crate::{AdamHp, Backend, Error, Float, Result, SgdHp};

// ------------------------------------------------------------------------------------ basics

/// An id buffer as a check sees it: `len` ids, and the ids themselves when the host has them.
#[derive(Clone, Copy, Debug)]
pub struct Ids<'a> {
    /// How many ids the buffer holds (its capacity on a device).
    pub len: usize,
    /// The ids (at least `len` of them: a device's host mirror of its whole capacity), or `None`
    /// when only the device has them (device-made ids, in range by construction: their range
    /// checks are skipped).
    pub host: Option<&'a [u32]>,
}

impl<'a> Ids<'a> {
    /// Ids in host memory (the CPU): all of `ids`, range-checked.
    #[inline]
    pub fn host(ids: &'a [u32]) -> Self {
        Ids { len: ids.len(), host: Some(ids) }
    }
    /// A device buffer of `len` ids with its host mirror (`Some` when the host wrote them: they
    /// are range-checked from it) or `None` (the device wrote them: only the length is checked).
    #[inline]
    pub fn device(len: usize, mirror: Option<&'a [u32]>) -> Self {
        Ids { len, host: mirror }
    }
}

/// The element count `Π dims`, or an error naming `op` and `tensor` when it overflows `usize`
/// (`got` describes the buffer it was checked against). A zero dimension gives 0 whatever the
/// others are.
#[inline]
fn product(op: &'static str, tensor: &'static str, dims: &[usize], len: usize) -> Result<usize> {
    if dims.contains(&0) {
        return Ok(0);
    }
    match dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(n) => Ok(n),
        None => Err(overflow(op, tensor, dims, len)),
    }
}

#[cold]
fn overflow(op: &'static str, tensor: &'static str, dims: &[usize], len: usize) -> Error {
    Error::shape(
        op,
        tensor,
        format!("({}) = more than usize::MAX elements", join(dims)),
        format!("a buffer of {len} elements"),
    )
}

#[cold]
fn short(op: &'static str, tensor: &'static str, dims: &[usize], need: usize, len: usize) -> Error {
    Error::shape(op, tensor, format!("({}) = {need} elements", join(dims)), format!("a buffer of {len} elements"))
}

fn join(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

/// Checks that a buffer of `len` elements can hold a `dims` tensor (row-major, `Π dims`
/// elements) and returns `Π dims`. Buffers may be larger than the tensor (activation workspaces
/// are sized for the largest batch), never smaller. Message:
/// ``{op}: shape mismatch for `{tensor}`: expected (2, 3) = 6 elements, got a buffer of 3 elements``.
#[inline]
pub fn len(op: &'static str, tensor: &'static str, len: usize, dims: &[usize]) -> Result<usize> {
    let need = product(op, tensor, dims, len)?;
    if len < need {
        return Err(short(op, tensor, dims, need, len));
    }
    Ok(need)
}

/// A one-element buffer (a loss accumulator, a broadcast scalar, a counter).
#[inline]
pub fn scalar(op: &'static str, tensor: &'static str, n: usize) -> Result<()> {
    len(op, tensor, n, &[1]).map(|_| ())
}

/// `a + c` as a dimension of `tensor` (a concatenated width, `U + 1` offsets), or a
/// [`Error::ShapeMismatch`] when it overflows `usize`.
#[inline]
pub fn sum(op: &'static str, tensor: &'static str, a: usize, c: usize) -> Result<usize> {
    a.checked_add(c).ok_or_else(|| {
        Error::shape(op, tensor, format!("a dimension of {a} + {c}, more than usize::MAX"), "no buffer can hold it")
    })
}

/// Checks that every id in `ids` indexes a row of a table with `rows` rows. Message:
/// `{op}: id {id} at batch position {pos} is out of range for `{table}` with {rows} rows`.
#[inline]
pub fn ids(op: &'static str, table: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= rows) {
        Some(pos) => Err(Error::IdOutOfRange { op, table, id: ids[pos], pos, rows }),
        None => Ok(()),
    }
}

/// The range check of the leading `count` ids of `buf` (already length-checked) against a
/// table of `rows` rows; skipped for device-made ids.
#[inline]
fn ids_of(op: &'static str, table: &'static str, buf: Ids<'_>, count: usize, rows: usize) -> Result<()> {
    match buf.host {
        Some(h) => ids(op, table, &h[..count.min(h.len())], rows),
        None => Ok(()),
    }
}

/// Adam's step buffer `t`: one id, `t[0] ≥ 1` when the host knows it (a counter the device
/// advanced is taken as valid).
#[inline]
pub fn step(op: &'static str, t: Ids<'_>) -> Result<()> {
    scalar(op, "t", t.len)?;
    match t.host {
        Some(h) if h[0] == 0 => Err(Error::invalid(op, "t", "Adam steps count from 1")),
        _ => Ok(()),
    }
}

/// A mean loss needs at least one row.
#[inline]
fn nonempty(op: &'static str, b: usize) -> Result<()> {
    if b == 0 {
        return Err(Error::invalid(op, "b", "a loss over an empty batch is undefined"));
    }
    Ok(())
}

/// Each of `bufs` holds `dims`.
#[inline]
fn all(op: &'static str, bufs: &[(&'static str, usize)], dims: &[usize]) -> Result<()> {
    for &(tensor, l) in bufs {
        len(op, tensor, l, dims)?;
    }
    Ok(())
}

/// A seen-items CSR over `u` users: `seen_off (U+1)` written by the host and not decreasing,
/// then `seen` holding `seen_off[U]` ids `< n` (checked against `table`). Returns `seen_off[U]`.
fn seen_csr(op: &'static str, table: &'static str, n: usize, u: usize, off: Ids<'_>, seen: Ids<'_>) -> Result<usize> {
    let Some(h) = off.host else {
        return Err(Error::invalid(op, "seen_off", "offsets must be written from the host"));
    };
    let u1 = sum(op, "seen_off", u, 1)?;
    if h[..u1].windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::invalid(op, "seen_off", "offsets must not decrease"));
    }
    let total = h[u] as usize;
    len(op, "seen", seen.len, &[total])?;
    ids_of(op, table, seen, total, n)?;
    Ok(total)
}

// ------------------------------------------------------------------------------------ memory

/// [`Backend::write`]: `dst` holds `src`.
#[inline]
pub fn write(dst: usize, src: usize) -> Result<()> {
    len("write", "dst", dst, &[src]).map(|_| ())
}
/// [`Backend::fill`].
#[inline]
pub fn fill(buf: usize, n: usize) -> Result<()> {
    len("fill", "buf", buf, &[n]).map(|_| ())
}
/// [`Backend::write_ids`].
#[inline]
pub fn write_ids(dst: usize, src: usize) -> Result<()> {
    len("write_ids", "dst", dst, &[src]).map(|_| ())
}
/// [`Backend::download_ids`].
#[inline]
pub fn download_ids(ids: usize, n: usize) -> Result<()> {
    len("download_ids", "ids", ids, &[n]).map(|_| ())
}
/// [`Backend::counter_add`].
#[inline]
pub fn counter_add(c: usize) -> Result<()> {
    scalar("counter_add", "c", c)
}

// ------------------------------------------------------------------------------------ embedding

/// [`Backend::embedding_forward`]: `table (N,D)`, `ids (B)` all `< N`, `out (B,D)`.
#[inline]
pub fn embedding_forward(table: usize, n: usize, d: usize, ids: Ids<'_>, b: usize, out: usize) -> Result<()> {
    const OP: &str = "embedding_forward";
    len(OP, "table", table, &[n, d])?;
    len(OP, "ids", ids.len, &[b])?;
    len(OP, "out", out, &[b, d])?;
    ids_of(OP, "table", ids, b, n)
}

/// [`Backend::gather_add_relu`]: `a (NA,D)`, `c (NC,D)`, `ia, ic (B)` in range, `out (B,D)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gather_add_relu(
    a: usize,
    na: usize,
    ia: Ids<'_>,
    c: usize,
    nc: usize,
    ic: Ids<'_>,
    d: usize,
    b: usize,
    out: usize,
) -> Result<()> {
    const OP: &str = "gather_add_relu";
    len(OP, "a", a, &[na, d])?;
    len(OP, "c", c, &[nc, d])?;
    len(OP, "ia", ia.len, &[b])?;
    len(OP, "ic", ic.len, &[b])?;
    len(OP, "out", out, &[b, d])?;
    ids_of(OP, "a", ia, b, na)?;
    ids_of(OP, "c", ic, b, nc)
}

/// [`Backend::embedding_backward`]: `dout (B,D)`, `ids (B)` all `< N`, `dtable (N,D)`.
#[inline]
pub fn embedding_backward(dout: usize, ids: Ids<'_>, b: usize, d: usize, dtable: usize, n: usize) -> Result<()> {
    const OP: &str = "embedding_backward";
    len(OP, "dout", dout, &[b, d])?;
    len(OP, "ids", ids.len, &[b])?;
    len(OP, "dtable", dtable, &[n, d])?;
    ids_of(OP, "dtable", ids, b, n)
}

// ------------------------------------------------------------------------------------ dense layer

/// The forward operands of a dense layer under `op`: `inp (B,I)`, `w (O,I)`, `bias (O)`.
#[inline]
fn dense_in(op: &'static str, inp: usize, w: usize, bias: usize, (b, i, o): (usize, usize, usize)) -> Result<()> {
    len(op, "inp", inp, &[b, i])?;
    len(op, "w", w, &[o, i])?;
    len(op, "bias", bias, &[o]).map(|_| ())
}

/// The backward operands of a dense layer under `op` after the output gradient: `inp (B,I)`,
/// `w (O,I)`, `dw (O,I)`, `dbias (O)`, then `dinp (B,I)` when asked.
#[inline]
fn dense_grads(
    op: &'static str,
    inp: usize,
    w: usize,
    dinp: Option<usize>,
    dw: usize,
    dbias: usize,
    (b, i, o): (usize, usize, usize),
) -> Result<()> {
    len(op, "inp", inp, &[b, i])?;
    len(op, "w", w, &[o, i])?;
    len(op, "dw", dw, &[o, i])?;
    len(op, "dbias", dbias, &[o])?;
    if let Some(x) = dinp {
        len(op, "dinp", x, &[b, i])?;
    }
    Ok(())
}

/// [`Backend::linear_forward`]: `inp (B,I)`, `w (O,I)`, `bias (O)`, `out (B,O)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn linear_forward(inp: usize, w: usize, bias: usize, out: usize, b: usize, i: usize, o: usize) -> Result<()> {
    const OP: &str = "linear_forward";
    dense_in(OP, inp, w, bias, (b, i, o))?;
    len(OP, "out", out, &[b, o]).map(|_| ())
}

/// [`Backend::linear_backward`]: `dout (B,O)`, `inp (B,I)`, `w (O,I)`, `dw (O,I)`, `dbias (O)`,
/// `dinp (B,I)` when given (`dinp` is `Some(its length)`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn linear_backward(
    dout: usize,
    inp: usize,
    w: usize,
    dinp: Option<usize>,
    dw: usize,
    dbias: usize,
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    const OP: &str = "linear_backward";
    len(OP, "dout", dout, &[b, o])?;
    dense_grads(OP, inp, w, dinp, dw, dbias, (b, i, o))
}

/// [`Backend::linear_relu_forward`]: as [`linear_forward`], with `z, x (B,O)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn linear_relu_forward(
    inp: usize,
    w: usize,
    bias: usize,
    z: usize,
    x: usize,
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    const OP: &str = "linear_relu_forward";
    dense_in(OP, inp, w, bias, (b, i, o))?;
    all(OP, &[("z", z), ("x", x)], &[b, o])
}

/// [`Backend::linear_relu_backward`]: `x, dx, dz (B,O)`, then as [`linear_backward`].
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn linear_relu_backward(
    x: usize,
    dx: usize,
    dz: usize,
    inp: usize,
    w: usize,
    dinp: Option<usize>,
    dw: usize,
    dbias: usize,
    b: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    const OP: &str = "linear_relu_backward";
    all(OP, &[("x", x), ("dx", dx), ("dz", dz)], &[b, o])?;
    dense_grads(OP, inp, w, dinp, dw, dbias, (b, i, o))
}

// ------------------------------------------------------------------------------------ activations

/// [`Backend::relu_forward`]: `inp, out (N)`.
#[inline]
pub fn relu_forward(inp: usize, out: usize, n: usize) -> Result<()> {
    all("relu_forward", &[("inp", inp), ("out", out)], &[n])
}
/// [`Backend::relu_backward`]: `out, dout, dinp (N)`.
#[inline]
pub fn relu_backward(out: usize, dout: usize, dinp: usize, n: usize) -> Result<()> {
    all("relu_backward", &[("out", out), ("dout", dout), ("dinp", dinp)], &[n])
}
/// [`Backend::sigmoid_forward`]: `inp, out (N)`.
#[inline]
pub fn sigmoid_forward(inp: usize, out: usize, n: usize) -> Result<()> {
    all("sigmoid_forward", &[("inp", inp), ("out", out)], &[n])
}

// ------------------------------------------------------------------------------------ losses

/// [`Backend::bce_with_logits`]: `logits, labels, dlogits (B)`, `loss (1)`, `B ≥ 1`.
#[inline]
pub fn bce_with_logits(logits: usize, labels: usize, b: usize, loss: usize, dlogits: usize) -> Result<()> {
    const OP: &str = "bce_with_logits";
    all(OP, &[("logits", logits), ("labels", labels), ("dlogits", dlogits)], &[b])?;
    scalar(OP, "loss", loss)?;
    nonempty(OP, b)
}
/// [`Backend::mse`]: `pred, target, dpred (B)`, `loss (1)`, `B ≥ 1`.
#[inline]
pub fn mse(pred: usize, target: usize, b: usize, loss: usize, dpred: usize) -> Result<()> {
    const OP: &str = "mse";
    all(OP, &[("pred", pred), ("target", target), ("dpred", dpred)], &[b])?;
    scalar(OP, "loss", loss)?;
    nonempty(OP, b)
}

// ------------------------------------------------------------------------------------ regularization / normalization

/// [`Backend::dropout`]: `inp, out (N)`, `p ∈ [0, 1)`.
#[inline]
pub fn dropout(inp: usize, out: usize, n: usize, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid("dropout", "p", format!("the drop probability must be in [0, 1), got {p}")));
    }
    all("dropout", &[("inp", inp), ("out", out)], &[n])
}

fn bn_common(op: &'static str, b: usize, h: usize, eps: f64) -> Result<()> {
    if b == 0 || h == 0 {
        return Err(Error::invalid(op, "b/h", format!("batch norm needs rows and columns, got b={b} h={h}")));
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::invalid(op, "eps", format!("must be a positive number, got {eps}")));
    }
    Ok(())
}

/// [`Backend::batchnorm_forward_train`]: `x, y, xhat (B,H)`; `gamma, beta, inv, rmean, rvar (H)`;
/// `momentum ∈ [0, 1]`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn batchnorm_forward_train(
    x: usize,
    gamma: usize,
    beta: usize,
    b: usize,
    h: usize,
    eps: f64,
    momentum: f64,
    y: usize,
    xhat: usize,
    inv: usize,
    rmean: usize,
    rvar: usize,
) -> Result<()> {
    const OP: &str = "batchnorm_forward_train";
    bn_common(OP, b, h, eps)?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::invalid(OP, "momentum", format!("must be in [0, 1], got {momentum}")));
    }
    all(OP, &[("x", x), ("y", y), ("xhat", xhat)], &[b, h])?;
    all(OP, &[("gamma", gamma), ("beta", beta), ("inv", inv), ("rmean", rmean), ("rvar", rvar)], &[h])
}

/// [`Backend::batchnorm_forward_eval`]: `x, y (B,H)`; `gamma, beta, rmean, rvar (H)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn batchnorm_forward_eval(
    x: usize,
    gamma: usize,
    beta: usize,
    rmean: usize,
    rvar: usize,
    b: usize,
    h: usize,
    eps: f64,
    y: usize,
) -> Result<()> {
    const OP: &str = "batchnorm_forward_eval";
    bn_common(OP, b, h, eps)?;
    all(OP, &[("x", x), ("y", y)], &[b, h])?;
    all(OP, &[("gamma", gamma), ("beta", beta), ("rmean", rmean), ("rvar", rvar)], &[h])
}

/// [`Backend::batchnorm_backward`]: `dy, xhat, dx (B,H)`; `gamma, inv, dgamma, dbeta (H)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn batchnorm_backward(
    dy: usize,
    xhat: usize,
    gamma: usize,
    inv: usize,
    b: usize,
    h: usize,
    dx: usize,
    dgamma: usize,
    dbeta: usize,
) -> Result<()> {
    const OP: &str = "batchnorm_backward";
    bn_common(OP, b, h, 1.0)?;
    all(OP, &[("dy", dy), ("xhat", xhat), ("dx", dx)], &[b, h])?;
    all(OP, &[("gamma", gamma), ("inv", inv), ("dgamma", dgamma), ("dbeta", dbeta)], &[h])
}

// ------------------------------------------------------------------------------------ element-wise

/// [`Backend::gmf_forward`]: `u, v, out (N)`.
#[inline]
pub fn gmf_forward(u: usize, v: usize, out: usize, n: usize) -> Result<()> {
    all("gmf_forward", &[("u", u), ("v", v), ("out", out)], &[n])
}
/// [`Backend::gmf_backward`]: `dout, u, v, du, dv (N)`.
#[inline]
pub fn gmf_backward(dout: usize, u: usize, v: usize, du: usize, dv: usize, n: usize) -> Result<()> {
    all("gmf_backward", &[("dout", dout), ("u", u), ("v", v), ("du", du), ("dv", dv)], &[n])
}
/// [`Backend::concat_cols`]: `a (B,Da)`, `c (B,Dc)`, `out (B,Da+Dc)`.
#[inline]
pub fn concat_cols(a: usize, da: usize, c: usize, dc: usize, b: usize, out: usize) -> Result<()> {
    const OP: &str = "concat_cols";
    len(OP, "a", a, &[b, da])?;
    len(OP, "c", c, &[b, dc])?;
    len(OP, "out", out, &[b, sum(OP, "out", da, dc)?]).map(|_| ())
}
/// [`Backend::split_cols`]: `dout (B,Da+Dc)`, `grad_a (B,Da)`, `grad_c (B,Dc)`.
#[inline]
pub fn split_cols(dout: usize, da: usize, dc: usize, b: usize, grad_a: usize, grad_c: usize) -> Result<()> {
    const OP: &str = "split_cols";
    len(OP, "dout", dout, &[b, sum(OP, "dout", da, dc)?])?;
    len(OP, "grad_a", grad_a, &[b, da])?;
    len(OP, "grad_c", grad_c, &[b, dc]).map(|_| ())
}
/// [`Backend::rowdot_forward`]: `u, v (B,D)`, `out (B)`.
#[inline]
pub fn rowdot_forward(u: usize, v: usize, b: usize, d: usize, out: usize) -> Result<()> {
    const OP: &str = "rowdot_forward";
    all(OP, &[("u", u), ("v", v)], &[b, d])?;
    len(OP, "out", out, &[b]).map(|_| ())
}
/// [`Backend::rowdot_backward`]: `dout (B)`, `u, v, du, dv (B,D)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn rowdot_backward(dout: usize, u: usize, v: usize, b: usize, d: usize, du: usize, dv: usize) -> Result<()> {
    const OP: &str = "rowdot_backward";
    len(OP, "dout", dout, &[b])?;
    all(OP, &[("u", u), ("v", v), ("du", du), ("dv", dv)], &[b, d])
}
/// [`Backend::add_assign`]: `out, x (N)`.
#[inline]
pub fn add_assign(out: usize, x: usize, n: usize) -> Result<()> {
    all("add_assign", &[("out", out), ("x", x)], &[n])
}
/// [`Backend::scale`]: `buf (N)`.
#[inline]
pub fn scale(buf: usize, n: usize) -> Result<()> {
    len("scale", "buf", buf, &[n]).map(|_| ())
}
/// [`Backend::add_scalar`]: `out (N)`, `s (1)`.
#[inline]
pub fn add_scalar(out: usize, s: usize, n: usize) -> Result<()> {
    len("add_scalar", "out", out, &[n])?;
    scalar("add_scalar", "s", s)
}
/// [`Backend::sum_into`]: `x (N)`, `acc (1)`.
#[inline]
pub fn sum_into(x: usize, n: usize, acc: usize) -> Result<()> {
    len("sum_into", "x", x, &[n])?;
    scalar("sum_into", "acc", acc)
}

// ------------------------------------------------------------------------------------ optimizers

/// [`Backend::sgd_step`]: `p, g, mom (N)`.
#[inline]
pub fn sgd_step(p: usize, g: usize, mom: usize, n: usize) -> Result<()> {
    all("sgd_step", &[("p", p), ("g", g), ("mom", mom)], &[n])
}
/// [`Backend::adam_step`]: `p, g, m, v (N)`, then the step `t` ([`step`]).
#[inline]
pub fn adam_step(p: usize, g: usize, m: usize, v: usize, n: usize, t: Ids<'_>) -> Result<()> {
    all("adam_step", &[("p", p), ("g", g), ("m", m), ("v", v)], &[n])?;
    step("adam_step", t)
}
/// [`Backend::sgd_step_rows`]: `p, g, mom (N,D)`, then the live rows `rows.host[..rows.len]`
/// all `< N` (checked against table `p`). A device passes `rows.len` = its live count as the
/// host knows it (capped at the capacity).
#[inline]
pub fn sgd_step_rows(p: usize, g: usize, mom: usize, rows: Ids<'_>, d: usize, n: usize) -> Result<()> {
    const OP: &str = "sgd_step_rows";
    all(OP, &[("p", p), ("g", g), ("mom", mom)], &[n, d])?;
    ids_of(OP, "p", rows, rows.len, n)
}
/// [`Backend::adam_step_rows`]: `p, g, m, v (N,D)`, the live rows as in [`sgd_step_rows`], then
/// the step `t` ([`step`]).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn adam_step_rows(
    p: usize,
    g: usize,
    m: usize,
    v: usize,
    rows: Ids<'_>,
    d: usize,
    n: usize,
    t: Ids<'_>,
) -> Result<()> {
    const OP: &str = "adam_step_rows";
    all(OP, &[("p", p), ("g", g), ("m", m), ("v", v)], &[n, d])?;
    ids_of(OP, "p", rows, rows.len, n)?;
    step(OP, t)
}
/// [`Backend::unique_ids`]: `ids (B)`, `out (B)` when it has a fixed capacity (`Some`; the CPU's
/// `Vec` grows, `None`), then `ids[..B]` all `< N` (reported against table `ids`).
#[inline]
pub fn unique_ids(ids: Ids<'_>, b: usize, n: usize, out: Option<usize>) -> Result<()> {
    const OP: &str = "unique_ids";
    len(OP, "ids", ids.len, &[b])?;
    if let Some(out) = out {
        len(OP, "out", out, &[b])?;
    }
    ids_of(OP, "ids", ids, b, n)
}

// ------------------------------------------------------------------------------------ sampling

/// [`Backend::sample_batch`], what every backend can check: `state (5)`, `users, items,
/// labels (B)`, and `B ≤ batch` over an epoch of `rows ≥ 1` rows ([`SampleTables::rows`](crate::sample::SampleTables::rows)).
#[inline]
pub fn sample_batch(
    state: usize,
    batch: usize,
    b: usize,
    users: usize,
    items: usize,
    labels: usize,
    rows: u64,
) -> Result<()> {
    const OP: &str = "sample_batch";
    len(OP, "state", state, &[5])?;
    all(OP, &[("users", users), ("items", items), ("labels", labels)], &[b])?;
    if b > batch || rows == 0 {
        return Err(Error::invalid(OP, "b", format!("{b} rows from batches of {batch} over an epoch of {rows} rows")));
    }
    Ok(())
}

/// [`Backend::sample_batch`]'s epoch end, for a backend that can read the batch counter
/// `state[0]` on the host (the CPU): slots `state[0]·batch .. +B` must lie in the epoch's `rows`.
/// A GPU keeps the counter on the device and cannot check this without a round trip; its kernel
/// keeps the ids valid for a slot past the end instead (see `kernels/sample.cu`). Returns the
/// first slot.
#[inline]
pub fn sample_slots(counter: u32, batch: usize, b: usize, rows: u64) -> Result<u64> {
    let first = (counter as u64).checked_mul(batch as u64);
    let end = first.and_then(|f| f.checked_add(b as u64));
    match (first, end) {
        (Some(first), Some(end)) if b <= batch && end <= rows => Ok(first),
        _ => Err(Error::invalid(
            "sample_batch",
            "b",
            format!(
                "slots {}..{} exceed the epoch's {rows} rows (batch {batch})",
                counter as u128 * batch as u128,
                counter as u128 * batch as u128 + b as u128
            ),
        )),
    }
}

// ------------------------------------------------------------------------------------ evaluation

/// [`Backend::rank_unseen`]: `scores (U,N)`, `targets (U)`, `seen_off (U+1)`, `ranks (U)`, the
/// targets `< N`, then the seen-items CSR (offsets written by the host and not decreasing, `seen`
/// holding `seen_off[U]` ids `< N`). Id errors name the table `scores`.
#[allow(clippy::too_many_arguments)]
pub fn rank_unseen(
    scores: usize,
    u: usize,
    n: usize,
    targets: Ids<'_>,
    seen_off: Ids<'_>,
    seen: Ids<'_>,
    ranks: usize,
) -> Result<()> {
    const OP: &str = "rank_unseen";
    len(OP, "scores", scores, &[u, n])?;
    len(OP, "targets", targets.len, &[u])?;
    len(OP, "seen_off", seen_off.len, &[sum(OP, "seen_off", u, 1)?])?;
    len(OP, "ranks", ranks, &[u])?;
    ids_of(OP, "scores", targets, u, n)?;
    seen_csr(OP, "scores", n, u, seen_off, seen).map(|_| ())
}

/// [`Backend::top_k`]: `scores (U,N)`, `seen_off (U+1)`, `out (U,K)` when it has a fixed capacity
/// (`Some`; with `None` only `U·K` must fit in `usize`), then the seen-items CSR as in [`rank_unseen`].
#[allow(clippy::too_many_arguments)]
pub fn top_k(
    scores: usize,
    u: usize,
    n: usize,
    k: usize,
    seen_off: Ids<'_>,
    seen: Ids<'_>,
    out: Option<usize>,
) -> Result<()> {
    const OP: &str = "top_k";
    len(OP, "scores", scores, &[u, n])?;
    len(OP, "seen_off", seen_off.len, &[sum(OP, "seen_off", u, 1)?])?;
    match out {
        Some(out) => len(OP, "out", out, &[u, k])?,
        None => product(OP, "out", &[u, k], 0)?,
    };
    seen_csr(OP, "scores", n, u, seen_off, seen).map(|_| ())
}

// ------------------------------------------------------------------------------------ evidence

/// One bad call made on a backend, with the error this module gives for the same arguments.
#[derive(Debug)]
pub struct BadCall {
    /// What the call gets wrong.
    pub what: &'static str,
    /// The backend's answer.
    pub backend: Result<()>,
    /// This module's answer for the same arguments (always an error).
    pub shared: Result<()>,
}

/// Makes a fixed list of bad calls on `be` (a short weight, an id outside its table, a short
/// optimizer state, an overflowing size, …) and returns each backend answer beside the shared
/// check's. A backend agrees with the shared layer when `backend == shared` for every entry and
/// every `shared` is an error: `ncf-cpu`'s test asserts exactly that, and a device backend's
/// test can call this unchanged. Buffers are at least one element long (a device may round an
/// empty allocation up to one element), and every id buffer is written from the host.
pub fn bad_calls<B: Backend>(be: &B) -> Result<Vec<BadCall>> {
    let z = |n: usize| be.zeros(n);
    let idb = |v: &[u32]| -> Result<B::Ids> {
        let mut d = be.zeros_ids(v.len())?;
        be.write_ids(&mut d, v)?;
        Ok(d)
    };
    let big = usize::MAX / 2 + 1;
    let mut out = Vec::new();
    let mut push = |what, backend, shared| out.push(BadCall { what, backend, shared });

    // linear_forward with a short weight: (2, 3) wants 6, has 5.
    let (inp, w, bias, mut o) = (z(12)?, z(5)?, z(2)?, z(8)?);
    push(
        "linear_forward: short w",
        be.linear_forward(&inp, &w, &bias, &mut o, 4, 3, 2),
        linear_forward(12, 5, 2, 8, 4, 3, 2),
    );
    // linear_forward whose b·i overflows usize.
    push(
        "linear_forward: b*i overflows",
        be.linear_forward(&inp, &w, &bias, &mut o, big, 4, 2),
        linear_forward(12, 5, 2, 8, big, 4, 2),
    );
    // linear_backward with a short dw and a short dinp (dw is reported first).
    let (dout, mut dw, mut db, mut dinp) = (z(8)?, z(3)?, z(2)?, z(1)?);
    let w6 = z(6)?;
    push(
        "linear_backward: short dw",
        be.linear_backward(&dout, &inp, &w6, Some(&mut dinp), &mut dw, &mut db, 4, 3, 2),
        linear_backward(8, 12, 6, Some(1), 3, 2, 4, 3, 2),
    );
    // linear_relu_forward with a short z.
    let (mut zz, mut xx) = (z(7)?, z(8)?);
    push(
        "linear_relu_forward: short z",
        be.linear_relu_forward(&inp, &w6, &bias, &mut zz, &mut xx, 4, 3, 2),
        linear_relu_forward(12, 6, 2, 7, 8, 4, 3, 2),
    );
    // embedding_forward with an id outside its table.
    let table = z(40)?;
    let bad = [1u32, 10, 2];
    let ids3 = idb(&bad)?;
    let mut eo = z(12)?;
    push(
        "embedding_forward: id 10 of 10 rows",
        be.embedding_forward(&table, 10, 4, &ids3, 3, &mut eo),
        embedding_forward(40, 10, 4, Ids::host(&bad), 3, 12),
    );
    // embedding_forward with fewer ids than the batch.
    push(
        "embedding_forward: 3 ids for b = 4",
        be.embedding_forward(&table, 10, 4, &ids3, 4, &mut eo),
        embedding_forward(40, 10, 4, Ids::host(&bad), 4, 12),
    );
    // embedding_backward with n·d overflowing.
    let mut dt = z(40)?;
    push(
        "embedding_backward: n*d overflows",
        be.embedding_backward(&eo, &ids3, 3, 4, &mut dt, big),
        embedding_backward(12, Ids::host(&bad), 3, 4, 40, big),
    );
    // gather_add_relu with an id outside the second table.
    let good = [0u32, 1, 2];
    let ids_ok = idb(&good)?;
    push(
        "gather_add_relu: ic outside c",
        be.gather_add_relu(&table, 10, &ids_ok, &table, 2, &ids_ok, 4, 3, &mut eo),
        gather_add_relu(40, 10, Ids::host(&good), 40, 2, Ids::host(&good), 4, 3, 12),
    );
    // concat_cols whose da + dc overflows (over an empty batch, so a and c fit).
    let mut co = z(8)?;
    push(
        "concat_cols: da + dc overflows",
        be.concat_cols(&inp, big, &inp, big, 0, &mut co),
        concat_cols(12, big, 12, big, 0, 8),
    );
    // bce_with_logits over an empty batch.
    let (mut loss, mut dl) = (z(1)?, z(4)?);
    let l4 = z(4)?;
    push("bce_with_logits: b = 0", be.bce_with_logits(&l4, &l4, 0, &mut loss, &mut dl), bce_with_logits(4, 4, 0, 1, 4));
    // mse with a short target.
    let t2 = z(2)?;
    push("mse: short target", be.mse(&l4, &t2, 4, &mut loss, &mut dl), mse(4, 2, 4, 1, 4));
    // gmf_backward with a short dv.
    let (mut du, mut dv) = (z(4)?, z(3)?);
    push("gmf_backward: short dv", be.gmf_backward(&l4, &l4, &l4, &mut du, &mut dv, 4), gmf_backward(4, 4, 4, 4, 3, 4));
    // adam_step_rows with a short second moment.
    let (mut p, mut g, mut m, mut v) = (z(8)?, z(8)?, z(8)?, z(6)?);
    let rows = [0u32, 1];
    let (rows_b, t1) = (idb(&rows)?, idb(&[1])?);
    let hp = AdamHp::default();
    push(
        "adam_step_rows: short v",
        be.adam_step_rows(&mut p, &mut g, &mut m, &mut v, &rows_b, 4, 2, &hp, &t1),
        adam_step_rows(8, 8, 8, 6, Ids::host(&rows), 4, 2, Ids::host(&[1])),
    );
    // adam_step_rows with a row outside the table.
    let mut v8 = z(8)?;
    let far = [0u32, 5];
    let far_b = idb(&far)?;
    push(
        "adam_step_rows: row 5 of 2",
        be.adam_step_rows(&mut p, &mut g, &mut m, &mut v8, &far_b, 4, 2, &hp, &t1),
        adam_step_rows(8, 8, 8, 8, Ids::host(&far), 4, 2, Ids::host(&[1])),
    );
    // adam_step at step 0.
    let t0 = idb(&[0])?;
    push(
        "adam_step: t = 0",
        be.adam_step(&mut p, &mut g, &mut m, &mut v8, 8, &hp, &t0),
        adam_step(8, 8, 8, 8, 8, Ids::host(&[0])),
    );
    // sgd_step_rows with a short momentum.
    let mut mom = z(7)?;
    push(
        "sgd_step_rows: short mom",
        be.sgd_step_rows(&mut p, &mut g, &mut mom, &rows_b, 4, 2, &SgdHp::default()),
        sgd_step_rows(8, 8, 7, Ids::host(&rows), 4, 2),
    );
    // unique_ids with an id outside the table.
    let mut uo = be.zeros_ids(3)?;
    push("unique_ids: id 10 of 10", be.unique_ids(&ids3, 3, 10, &mut uo), unique_ids(Ids::host(&bad), 3, 10, None));
    // rank_unseen with decreasing offsets.
    let scores = z(2 * 5)?;
    let (tg, off, seen) = ([0u32, 1], [0u32, 2, 1], [3u32, 4]);
    let (tg_b, off_b, seen_b) = (idb(&tg)?, idb(&off)?, idb(&seen)?);
    let mut rk = be.zeros_ids(2)?;
    push(
        "rank_unseen: decreasing seen_off",
        be.rank_unseen(&scores, 2, 5, &tg_b, &off_b, &seen_b, &mut rk),
        rank_unseen(10, 2, 5, Ids::host(&tg), Ids::host(&off), Ids::host(&seen), 2),
    );
    // rank_unseen with a target outside the items.
    let (tg9, off_ok) = ([0u32, 9], [0u32, 1, 2]);
    let (tg9_b, off_ok_b) = (idb(&tg9)?, idb(&off_ok)?);
    push(
        "rank_unseen: target 9 of 5",
        be.rank_unseen(&scores, 2, 5, &tg9_b, &off_ok_b, &seen_b, &mut rk),
        rank_unseen(10, 2, 5, Ids::host(&tg9), Ids::host(&off_ok), Ids::host(&seen), 2),
    );
    let mut x4 = z(4)?;
    let s2 = z(2)?;
    push("add_assign: short x", be.add_assign(&mut x4, &s2, 4), add_assign(4, 2, 4));
    push("relu_backward: n past every buffer", be.relu_backward(&l4, &l4, &mut du, 5), relu_backward(4, 4, 4, 5));
    push("scale: n past buf", be.scale(&mut x4, 5, B::T::from_f64(0.5)), scale(4, 5));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_of(r: Result<()>) -> (&'static str, &'static str, String) {
        match r {
            Err(Error::ShapeMismatch { op, tensor, expected, got }) => (op, tensor, format!("{expected} / {got}")),
            other => panic!("wanted a ShapeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn overflowing_sizes_are_errors_naming_op_and_tensor() {
        let big = usize::MAX / 2 + 1;
        let (op, t, m) = shape_of(linear_forward(8, 8, 8, 8, big, 2, 1));
        assert_eq!((op, t), ("linear_forward", "inp"));
        assert!(m.contains("more than usize::MAX"), "{m}");
        let (op, t, _) = shape_of(embedding_backward(8, Ids::host(&[0]), 1, 2, 8, big));
        assert_eq!((op, t), ("embedding_backward", "dtable"));
        let (op, t, m) = shape_of(concat_cols(0, big, 0, big, 0, 0));
        assert_eq!((op, t), ("concat_cols", "out"));
        assert!(m.contains("9223372036854775808 + 9223372036854775808, more than usize::MAX"), "{m}");
        let (op, t, _) = shape_of(rank_unseen(4, usize::MAX, 0, Ids::host(&[]), Ids::host(&[]), Ids::host(&[]), 4));
        assert_eq!((op, t), ("rank_unseen", "targets"));
        let (op, t, _) = shape_of(top_k(0, usize::MAX, 0, 1, Ids::host(&[]), Ids::host(&[]), None));
        assert_eq!((op, t), ("top_k", "seen_off"));
        assert!(sample_slots(u32::MAX, usize::MAX, usize::MAX, u64::MAX).is_err());
        // A zero dimension needs no elements, whatever the other is.
        assert_eq!(len("x", "t", 0, &[0, usize::MAX]), Ok(0));
    }

    #[test]
    fn short_buffers_name_op_tensor_and_shapes() {
        let cases: Vec<(Result<()>, &str, &str, &str)> = vec![
            (
                linear_forward(12, 5, 2, 8, 4, 3, 2),
                "linear_forward",
                "w",
                "(2, 3) = 6 elements / a buffer of 5 elements",
            ),
            (linear_backward(8, 12, 6, Some(11), 6, 2, 4, 3, 2), "linear_backward", "dinp", "(4, 3) = 12"),
            (linear_relu_backward(8, 8, 8, 12, 6, None, 6, 1, 4, 3, 2), "linear_relu_backward", "dbias", "(2) = 2"),
            (embedding_forward(40, 10, 4, Ids::host(&[0, 1]), 3, 12), "embedding_forward", "ids", "(3) = 3"),
            (
                gather_add_relu(40, 10, Ids::host(&[0]), 40, 10, Ids::host(&[0]), 4, 1, 3),
                "gather_add_relu",
                "out",
                "(1, 4)",
            ),
            (bce_with_logits(4, 4, 4, 0, 4), "bce_with_logits", "loss", "(1) = 1"),
            (split_cols(5, 2, 1, 2, 4, 2), "split_cols", "dout", "(2, 3) = 6"),
            (rowdot_backward(2, 6, 6, 2, 3, 6, 5), "rowdot_backward", "dv", "(2, 3) = 6"),
            (sgd_step(3, 3, 2, 3), "sgd_step", "mom", "(3) = 3"),
            (adam_step_rows(8, 8, 8, 6, Ids::host(&[0]), 4, 2, Ids::host(&[1])), "adam_step_rows", "v", "(2, 4) = 8"),
            (adam_step(4, 4, 4, 4, 4, Ids::device(0, None)), "adam_step", "t", "(1) = 1"),
            (sample_batch(5, 4, 4, 4, 3, 4, 10), "sample_batch", "items", "(4) = 4"),
            (unique_ids(Ids::host(&[0, 1]), 2, 4, Some(1)), "unique_ids", "out", "(2) = 2"),
        ];
        for (r, op, tensor, part) in cases {
            let (o, t, m) = shape_of(r);
            assert_eq!((o, t), (op, tensor), "{m}");
            assert!(m.contains(part), "{op}/{tensor}: {m}");
        }
        let e = linear_forward(12, 5, 2, 8, 4, 3, 2).unwrap_err().to_string();
        assert_eq!(
            e,
            "linear_forward: shape mismatch for `w`: expected (2, 3) = 6 elements, got a buffer of 5 elements"
        );
    }

    #[test]
    fn ids_and_values() {
        let e = embedding_forward(40, 10, 4, Ids::host(&[1, 10, 2]), 3, 12).unwrap_err();
        assert_eq!(e, Error::IdOutOfRange { op: "embedding_forward", table: "table", id: 10, pos: 1, rows: 10 });
        assert_eq!(
            e.to_string(),
            "embedding_forward: id 10 at batch position 1 is out of range for `table` with 10 rows"
        );
        // Device-made ids are not range-checked, only their length.
        assert!(embedding_forward(40, 10, 4, Ids::device(3, None), 3, 12).is_ok());
        assert!(embedding_forward(40, 10, 4, Ids::device(2, None), 3, 12).is_err());
        // Only the leading b ids count.
        assert!(embedding_forward(40, 10, 4, Ids::host(&[1, 2, 99]), 2, 12).is_ok());
        assert!(matches!(
            adam_step_rows(8, 8, 8, 8, Ids::host(&[0, 5]), 4, 2, Ids::host(&[1])),
            Err(Error::IdOutOfRange { op: "adam_step_rows", table: "p", id: 5, pos: 1, rows: 2 })
        ));
        assert!(matches!(adam_step(1, 1, 1, 1, 1, Ids::host(&[0])), Err(Error::InvalidArgument { arg: "t", .. })));
        assert!(adam_step(1, 1, 1, 1, 1, Ids::device(1, None)).is_ok());
        assert!(matches!(mse(0, 0, 0, 1, 0), Err(Error::InvalidArgument { op: "mse", arg: "b", .. })));
        let (off, seen) = ([0u32, 2, 1], [0u32, 1]);
        let e = rank_unseen(10, 2, 5, Ids::host(&[0, 1]), Ids::host(&off), Ids::host(&seen), 2).unwrap_err();
        assert!(e.to_string().contains("offsets must not decrease"), "{e}");
        let e = top_k(10, 2, 5, 1, Ids::device(3, None), Ids::host(&seen), None).unwrap_err();
        assert!(e.to_string().contains("offsets must be written from the host"), "{e}");
        let e = top_k(10, 2, 5, 1, Ids::host(&[0, 1, 2]), Ids::host(&[0, 7]), None).unwrap_err();
        assert_eq!(e, Error::IdOutOfRange { op: "top_k", table: "scores", id: 7, pos: 1, rows: 5 });
        assert_eq!(sample_slots(2, 8, 5, 21), Ok(16));
        let e = sample_slots(3, 8, 1, 21).unwrap_err();
        assert!(e.to_string().contains("slots 24..25 exceed the epoch's 21 rows (batch 8)"), "{e}");
        assert!(sample_batch(5, 4, 5, 5, 5, 5, 10).is_err());
        assert!(sample_batch(5, 4, 0, 0, 0, 0, 0).is_err());
    }
}
