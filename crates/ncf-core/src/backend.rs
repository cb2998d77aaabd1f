//! The `Backend` trait: every op the models need, written once per device.
//!
//! Model code (`ncf-model`) is generic over `B: Backend` and monomorphized, so there is no
//! dynamic dispatch on the hot path. `CpuBackend<f32>` trains, `CpuBackend<f64>` runs the
//! gradient check through the very same model code, and `CudaBackend` (a later crate) mirrors
//! the CPU op for op, kernel names included.
//!
//! ## Who writes, who accumulates
//!
//! * Gradients of **parameters** (`dtable`, `dw`, `dbias`, …) are **accumulated** (`+=`).
//!   The optimizer step zeroes every gradient it consumes; the gradient check zeroes before
//!   each backward.
//! * Gradients of **activations** (`dinp`, `du`, …) and all forward outputs are **written**
//!   (`=`), so no op needs a zeroing pass first.
//!
//! ## Sizes
//!
//! Every op takes its dimensions explicitly. A buffer may be longer than the tensor (workspaces
//! are sized for the largest batch); only the leading `Π dims` elements are touched. A buffer
//! that is too short, or an id outside its table, is an [`Error`](crate::Error), never a panic.

use crate::check::Ids;
use crate::{AdamHp, Float, Result, SgdHp};

/// One device's implementation of every op. Shapes use the glossary in the crate docs.
pub trait Backend: Sync {
    /// Element type of every float buffer (`f32` to train, `f64` for the gradient check).
    type T: Float;
    /// A float buffer on the device (`Vec<T>` on the CPU).
    type Buf: Send + Sync;
    /// A buffer of `u32` ids on the device (`Vec<u32>` on the CPU).
    type Ids: Send + Sync;

    /// A short name for reports: `"cpu"`, `"cuda"`.
    fn name(&self) -> String;

    // ---------------------------------------------------------------- memory

    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `host`.
    fn upload(&self, host: &[Self::T]) -> Result<Self::Buf>;
    /// Overwrites the leading `src.len()` elements of `dst`.
    fn write(&self, dst: &mut Self::Buf, src: &[Self::T]) -> Result<()>;
    /// A host copy of the whole buffer.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<Self::T>>;
    /// Number of elements in `buf`.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Sets the leading `n` elements to `value`.
    fn fill(&self, buf: &mut Self::Buf, n: usize, value: Self::T) -> Result<()>;
    /// A zero-filled id buffer of `len` ids.
    fn zeros_ids(&self, len: usize) -> Result<Self::Ids>;
    /// Overwrites the leading `src.len()` ids of `dst`.
    fn write_ids(&self, dst: &mut Self::Ids, src: &[u32]) -> Result<()>;
    /// A host copy of the leading `n` ids.
    fn download_ids(&self, ids: &Self::Ids, n: usize) -> Result<Vec<u32>>;
    /// Waits until every queued op has finished (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    // ---------------------------------------------------------------- embedding

    /// Gather. `table (N,D)  ids (B)  out (B,D)`:  `out[b,:] = table[ids[b],:]`.
    fn embedding_forward(
        &self,
        table: &Self::Buf,
        n: usize,
        d: usize,
        ids: &Self::Ids,
        b: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Fused inference gather (no backward): `a (NA,D)  ia (B)  c (NC,D)  ic (B)  out (B,D)`:
    /// `out[b,:] = relu(a[ia[b],:] + c[ic[b],:])`. Scores an MLP's first layer from per-user and
    /// per-item tables in one pass instead of two gathers, an add and a ReLU.
    fn gather_add_relu(
        &self,
        a: &Self::Buf,
        na: usize,
        ia: &Self::Ids,
        c: &Self::Buf,
        nc: usize,
        ic: &Self::Ids,
        d: usize,
        b: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Scatter-add. `dout (B,D)  ids (B)  dtable (N,D)`:  `dtable[ids[b],:] += dout[b,:]`.
    /// Repeated ids accumulate: no update may be lost.
    fn embedding_backward(
        &self,
        dout: &Self::Buf,
        ids: &Self::Ids,
        b: usize,
        d: usize,
        dtable: &mut Self::Buf,
        n: usize,
    ) -> Result<()>;

    // ---------------------------------------------------------------- dense layer

    /// `inp (B,I)  w (O,I)  bias (O)  out (B,O)`:  `out = inp · wᵀ + bias`.
    fn linear_forward(
        &self,
        inp: &Self::Buf,
        w: &Self::Buf,
        bias: &Self::Buf,
        out: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()>;

    /// Backward of [`Backend::linear_forward`]:
    /// `dinp = dout · w` (written, skipped when `None`);  `dw += doutᵀ · inp`;  `dbias += Σ_b dout`.
    fn linear_backward(
        &self,
        dout: &Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        dinp: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        dbias: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()>;

    // ---------------------------------------------------------------- activations

    /// `out = max(inp, 0)` over `n` elements.
    fn relu_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()>;
    /// `dinp = dout · 1[out > 0]` (ReLU's derivative, read off the forward output).
    fn relu_backward(&self, out: &Self::Buf, dout: &Self::Buf, dinp: &mut Self::Buf, n: usize) -> Result<()>;
    /// `out = σ(inp) = 1 / (1 + e^{−inp})` over `n` elements (for predictions; training uses the
    /// fused [`Backend::bce_with_logits`]).
    fn sigmoid_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()>;

    // ---------------------------------------------------------------- losses

    /// Sigmoid fused with binary cross-entropy, from logits `z (B)` and labels `y (B)`:
    /// `loss[0] += (1/B) Σ_b [ log(1 + e^{z}) − y·z ]` (the stable form of
    /// `−y log σ(z) − (1−y) log(1−σ(z))`), and `dz = (σ(z) − y) / B` (written).
    fn bce_with_logits(
        &self,
        logits: &Self::Buf,
        labels: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()>;

    /// Mean squared error `loss[0] += (1/B) Σ_b (p − t)²`, `dp = 2 (p − t) / B` (written).
    fn mse(
        &self,
        pred: &Self::Buf,
        target: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dpred: &mut Self::Buf,
    ) -> Result<()>;

    // ---------------------------------------------------------------- regularization / normalization

    /// Inverted dropout over `n` elements, keyed by `seed`:
    /// `out[k] = inp[k] · keep(seed, k) / (1 − p)`, `keep = 1[dropout_bits(seed, k) ≥
    /// dropout_threshold(p)]` (`ncf_core::rng`). The mask is a function of `(seed, k)` alone, so
    /// the backward is the same call on the gradient: `dinp = dropout(dout)` with the same seed.
    /// `p ∈ [0, 1)`; `p = 0` copies.
    fn dropout(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize, p: f64, seed: u64) -> Result<()>;

    /// Batch normalization in training mode, per column `j` of `x (B,H)`:
    /// `μ = (1/B) Σ_b x`, `σ² = (1/B) Σ_b (x − μ)²`, `inv = 1/√(σ² + eps)`,
    /// `xhat = (x − μ)·inv`, `y = γ·xhat + β`. Writes `y, xhat (B,H)` and `inv (H)`, and moves
    /// the running statistics: `rmean = (1−m)·rmean + m·μ`, `rvar = (1−m)·rvar + m·σ²·B/(B−1)`
    /// (the unbiased variance; `σ²` when `B = 1`). `gamma, beta, inv, rmean, rvar (H)`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_train(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        b: usize,
        h: usize,
        eps: f64,
        momentum: f64,
        y: &mut Self::Buf,
        xhat: &mut Self::Buf,
        inv: &mut Self::Buf,
        running: (&mut Self::Buf, &mut Self::Buf),
    ) -> Result<()>;

    /// Batch normalization in eval mode: `y = γ·(x − rmean)/√(rvar + eps) + β` per column.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_eval(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        rmean: &Self::Buf,
        rvar: &Self::Buf,
        b: usize,
        h: usize,
        eps: f64,
        y: &mut Self::Buf,
    ) -> Result<()>;

    /// The training-mode backward, from `dy (B,H)` and the forward's `xhat`, `inv`:
    /// `dβ += Σ_b dy`, `dγ += Σ_b dy·xhat`, and (written)
    /// `dx = γ·inv/B · (B·dy − Σ_b dy − xhat·Σ_b dy·xhat)`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &self,
        dy: &Self::Buf,
        xhat: &Self::Buf,
        gamma: &Self::Buf,
        inv: &Self::Buf,
        b: usize,
        h: usize,
        dx: &mut Self::Buf,
        dgamma: &mut Self::Buf,
        dbeta: &mut Self::Buf,
    ) -> Result<()>;

    // ---------------------------------------------------------------- element-wise / reshaping

    /// GMF product. `u, v, out (B,F)`:  `out = u ⊙ v`.
    fn gmf_forward(&self, u: &Self::Buf, v: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()>;
    /// `du = dout ⊙ v`, `dv = dout ⊙ u` (written).
    fn gmf_backward(
        &self,
        dout: &Self::Buf,
        u: &Self::Buf,
        v: &Self::Buf,
        du: &mut Self::Buf,
        dv: &mut Self::Buf,
        n: usize,
    ) -> Result<()>;

    /// `a (B,Da)  c (B,Dc)  out (B,Da+Dc)`:  `out[b,:] = [a[b,:], c[b,:]]`.
    fn concat_cols(
        &self,
        a: &Self::Buf,
        da: usize,
        c: &Self::Buf,
        dc: usize,
        b: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// Backward of concat: `da_out = dout[:, ..Da]`, `dc_out = dout[:, Da..]` (written).
    fn split_cols(
        &self,
        dout: &Self::Buf,
        da: usize,
        dc: usize,
        b: usize,
        grad_a: &mut Self::Buf,
        grad_c: &mut Self::Buf,
    ) -> Result<()>;

    /// Row-wise dot product. `u, v (B,D)  out (B)`:  `out[b] = Σ_d u[b,d]·v[b,d]`.
    fn rowdot_forward(&self, u: &Self::Buf, v: &Self::Buf, b: usize, d: usize, out: &mut Self::Buf) -> Result<()>;
    /// `du[b,:] = dout[b]·v[b,:]`, `dv[b,:] = dout[b]·u[b,:]` (written).
    fn rowdot_backward(
        &self,
        dout: &Self::Buf,
        u: &Self::Buf,
        v: &Self::Buf,
        b: usize,
        d: usize,
        du: &mut Self::Buf,
        dv: &mut Self::Buf,
    ) -> Result<()>;

    /// `out[i] += x[i]` over `n` elements.
    fn add_assign(&self, out: &mut Self::Buf, x: &Self::Buf, n: usize) -> Result<()>;
    /// `buf[i] *= s` over `n` elements (the CPU's two-lane step scales its lanes' `∂L/∂logits`
    /// by `½`). This default goes through the host; the CPU and CUDA backends override it.
    fn scale(&self, buf: &mut Self::Buf, n: usize, s: Self::T) -> Result<()> {
        crate::check::scale(self.len(buf), n)?;
        let mut h = self.download(buf)?;
        h.truncate(n);
        h.iter_mut().for_each(|x| *x *= s);
        self.write(buf, &h)
    }
    /// `out[i] += s[0]` over `n` elements (a broadcast scalar parameter, e.g. MF's global bias).
    fn add_scalar(&self, out: &mut Self::Buf, s: &Self::Buf, n: usize) -> Result<()>;
    /// `acc[0] += Σ_i x[i]` over `n` elements (the gradient of a broadcast scalar).
    fn sum_into(&self, x: &Self::Buf, n: usize, acc: &mut Self::Buf) -> Result<()>;

    // ---------------------------------------------------------------- optimizers

    /// Dense SGD step over `n` elements (see [`SgdHp`]), then `g ← 0`.
    fn sgd_step(&self, p: &mut Self::Buf, g: &mut Self::Buf, mom: &mut Self::Buf, n: usize, hp: &SgdHp) -> Result<()>;

    /// Dense Adam step over `n` elements at step `t[0] ≥ 1` (see [`AdamHp`]), then `g ← 0`.
    /// The step count lives in an id buffer so that a device can advance it itself
    /// ([`Backend::counter_add`]) when a captured step is replayed.
    fn adam_step(
        &self,
        p: &mut Self::Buf,
        g: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        n: usize,
        hp: &AdamHp,
        t: &Self::Ids,
    ) -> Result<()>;

    /// Row-sparse ("lazy") SGD: the dense rule applied only to the distinct rows listed in
    /// `rows` (the output of [`Backend::unique_ids`]) of an `(N,D)` table; those gradient rows
    /// are then zeroed. Untouched rows keep their parameters *and* their momentum.
    fn sgd_step_rows(
        &self,
        p: &mut Self::Buf,
        g: &mut Self::Buf,
        mom: &mut Self::Buf,
        rows: &Self::Ids,
        d: usize,
        n: usize,
        hp: &SgdHp,
    ) -> Result<()>;

    /// Row-sparse ("lazy") Adam, as TensorFlow's `LazyAdam`: moments of untouched rows are not
    /// decayed, and bias correction uses the global step `t[0]`.
    fn adam_step_rows(
        &self,
        p: &mut Self::Buf,
        g: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        rows: &Self::Ids,
        d: usize,
        n: usize,
        hp: &AdamHp,
        t: &Self::Ids,
    ) -> Result<()>;

    /// Writes the distinct values of `ids[..b]` into `out` (the rows a lazy optimizer must
    /// touch), in an order each backend fixes (ascending on the CPU; order of first appearance
    /// in the batch on the GPU, found in time proportional to the batch): callers must not
    /// depend on it. Ids must be `< n`. How many there are stays with `out` (its length on the
    /// CPU, a count on the device), so no device ever reports it to the host.
    fn unique_ids(&self, ids: &Self::Ids, b: usize, n: usize, out: &mut Self::Ids) -> Result<()>;

    /// `c[0] += add`: advances a counter that lives on the device (Adam's step, the sampler's
    /// batch number) without a host round-trip.
    fn counter_add(&self, c: &mut Self::Ids, add: u32) -> Result<()>;

    // ---------------------------------------------------------------- sampling

    /// One mini-batch of an epoch sampled on the device ([`crate::sample`]): for `k < b`,
    /// slot `state[0]·batch + k` of the shuffled epoch gives `users[k], items[k], labels[k]`;
    /// then `state[0] += 1`. `state` is `[batch number, perm key lo, hi, draw key lo, hi]`
    /// ([`crate::sample::EpochKeys::words`]). Ids made here are in range by construction.
    #[allow(clippy::too_many_arguments)]
    fn sample_batch(
        &self,
        tables: &crate::sample::SampleTables<Self>,
        state: &mut Self::Ids,
        batch: usize,
        b: usize,
        users: &mut Self::Ids,
        items: &mut Self::Ids,
        labels: &mut Self::Buf,
    ) -> Result<()>
    where
        Self: Sized;

    // ---------------------------------------------------------------- fused ops

    /// A dense layer and its ReLU: `z = inp · wᵀ + bias`, `x = max(z, 0)` (both written; `z`
    /// is kept for the gradient check's kink detection). Backends fuse it into one pass over
    /// the output (the GPU: the GEMM's epilogue); this default runs the two ops.
    #[allow(clippy::too_many_arguments)]
    fn linear_relu_forward(
        &self,
        inp: &Self::Buf,
        w: &Self::Buf,
        bias: &Self::Buf,
        z: &mut Self::Buf,
        x: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        let len = |x: &Self::Buf| self.len(x);
        crate::check::linear_relu_forward(len(inp), len(w), len(bias), len(z), len(x), b, i, o)?;
        self.linear_forward(inp, w, bias, z, b, i, o)?;
        self.relu_forward(z, x, b * o)
    }

    /// Backward of [`Backend::linear_relu_forward`], from `dx (B,O)` and the layer's output
    /// `x (B,O)`: `dz = dx · 1[x > 0]` (written, kept in `dz`), then the dense backward:
    /// `dinp = dz · w` (written, skipped when `None`), `dw += dzᵀ · inp`, `dbias += Σ_b dz`.
    /// A GPU computes the ReLU mask and the bias gradient in one pass; this default runs the
    /// two ops.
    #[allow(clippy::too_many_arguments)]
    fn linear_relu_backward(
        &self,
        x: &Self::Buf,
        dx: &Self::Buf,
        dz: &mut Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        dinp: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        dbias: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        let len = |x: &Self::Buf| self.len(x);
        let dinp_len = dinp.as_deref().map(len);
        crate::check::linear_relu_backward(
            len(x),
            len(dx),
            len(dz),
            len(inp),
            len(w),
            dinp_len,
            len(dw),
            len(dbias),
            b,
            i,
            o,
        )?;
        self.relu_backward(x, dx, dz, b * o)?;
        self.linear_backward(dz, inp, w, dinp, dw, dbias, b, i, o)
    }

    // ---------------------------------------------------------------- evaluation

    /// Full ranking. `scores (U,N)`: row `c` scores all `N` items for user slot `c`;
    /// `seen_off (U+1)` and `seen` list each slot's training items (distinct). Writes
    /// `ranks[c]` = how many items the user has not seen, other than `targets[c]`, score at
    /// least as high as the target (ties count against it, as in the sampled protocol). Only
    /// `U` ranks come back to the host instead of `U·N` scores. This default downloads the
    /// scores and counts on the host; a GPU counts on the device.
    #[allow(clippy::too_many_arguments)]
    fn rank_unseen(
        &self,
        scores: &Self::Buf,
        u: usize,
        n: usize,
        targets: &Self::Ids,
        seen_off: &Self::Ids,
        seen: &Self::Ids,
        ranks: &mut Self::Ids,
    ) -> Result<()> {
        let (s, t, off, seen) = host_csr(self, "rank_unseen", scores, u, Some(targets), seen_off, seen)?;
        crate::check::rank_unseen(s.len(), u, n, Ids::host(&t), Ids::host(&off), Ids::host(&seen), u)?;
        let out: Vec<u32> = (0..u)
            .map(|c| {
                let seen_c = &seen[off[c] as usize..off[c + 1] as usize];
                rank_among_unseen(&s[c * n..(c + 1) * n], t[c] as usize, seen_c) as u32
            })
            .collect();
        self.write_ids(ranks, &out)
    }

    /// Top-K recommendation. `scores (U,N)` as in [`Backend::rank_unseen`]; writes
    /// `out (U,K)`: each user's `K` highest-scoring items among those not in `seen`, best
    /// first, ties to the lower item id (deterministic); slots past the user's unseen items
    /// hold `u32::MAX`. This default sorts on the host; a GPU selects on the device.
    #[allow(clippy::too_many_arguments)]
    fn top_k(
        &self,
        scores: &Self::Buf,
        u: usize,
        n: usize,
        k: usize,
        seen_off: &Self::Ids,
        seen: &Self::Ids,
        out: &mut Self::Ids,
    ) -> Result<()> {
        let (s, _, off, seen) = host_csr(self, "top_k", scores, u, None, seen_off, seen)?;
        crate::check::top_k(s.len(), u, n, k, Ids::host(&off), Ids::host(&seen), None)?;
        let res = top_k_host(&s, u, n, k, &off, &seen);
        self.write_ids(out, &res)
    }

    // ---------------------------------------------------------------- graphs

    /// A recorded sequence of ops that can be replayed without the host issuing each op again
    /// (a CUDA graph). Backends without such a thing use `()` and never return one.
    type Graph;

    /// Records the ops `f` issues, without running them, and returns the recording, or `None`
    /// when the backend cannot record (then nothing was recorded and `f` was not called, and
    /// the caller runs its ops directly). Whatever `f` reads on the host is baked in: every
    /// value that changes between replays must live on the device (counters, sampled ids).
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>>;

    /// Runs a recording once.
    fn replay(&self, graph: &Self::Graph) -> Result<()>;
}

/// The rank [`Backend::rank_unseen`] defines, for one user's scores `row (N)`: the items scoring
/// at least `row[target]`, minus the target itself, minus the seen items among them (two linear
/// passes instead of a membership test per item). `seen` must be distinct and `< N`.
pub fn rank_among_unseen<T: PartialOrd + Copy>(row: &[T], target: usize, seen: &[u32]) -> usize {
    let st = row[target];
    let above = row.iter().filter(|&&x| x >= st).count() - 1;
    above - seen.iter().filter(|&&j| j as usize != target && row[j as usize] >= st).count()
}

/// The host copies a default evaluation op works from: `scores`, the leading `U` targets (when
/// asked), `seen_off[..U+1]` and `seen[..seen_off[U]]`.
#[allow(clippy::type_complexity)]
fn host_csr<B: Backend + ?Sized>(
    be: &B,
    op: &'static str,
    scores: &B::Buf,
    u: usize,
    targets: Option<&B::Ids>,
    seen_off: &B::Ids,
    seen: &B::Ids,
) -> Result<(Vec<B::T>, Vec<u32>, Vec<u32>, Vec<u32>)> {
    let s = be.download(scores)?;
    let t = match targets {
        Some(t) => be.download_ids(t, u)?,
        None => Vec::new(),
    };
    let off = be.download_ids(seen_off, crate::check::sum(op, "seen_off", u, 1)?)?;
    let seen = be.download_ids(seen, off[u] as usize)?;
    Ok((s, t, off, seen))
}

/// The top-K lists [`Backend::top_k`] defines, on the host: for each of the `U` rows of
/// `scores (U,N)`, the `K` highest-scoring items not in that row's slice of the seen-items CSR
/// (`off (U+1)`, `seen`: distinct, `< N`, checked by [`crate::check::top_k`]), best first, ties
/// to the lower id, padded with `u32::MAX`. Returns `U·K` ids.
pub fn top_k_host<T: PartialOrd + Copy>(s: &[T], u: usize, n: usize, k: usize, off: &[u32], seen: &[u32]) -> Vec<u32> {
    let mut res = Vec::with_capacity(u * k);
    let mut mask = vec![false; n];
    let mut cand: Vec<u32> = Vec::with_capacity(n);
    for c in 0..u {
        let seen_c = &seen[off[c] as usize..off[c + 1] as usize];
        seen_c.iter().for_each(|&j| mask[j as usize] = true);
        let row = &s[c * n..(c + 1) * n];
        cand.clear();
        cand.extend((0..n as u32).filter(|&j| !mask[j as usize]));
        cand.sort_by(|&a, &b| {
            row[b as usize].partial_cmp(&row[a as usize]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
        });
        res.extend((0..k).map(|r| cand.get(r).copied().unwrap_or(u32::MAX)));
        seen_c.iter().for_each(|&j| mask[j as usize] = false);
    }
    res
}
