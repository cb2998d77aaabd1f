//! The fast path for "score every item for this user": [`Ranker`].
//!
//! The reference path is the model's own `score` (`Model::score` in `ncf-model`): batches of
//! `(user, item)` rows through the same layers as training. Ranking every item for a user
//! repeats work that path cannot see, so the ranker rewrites the model once, at load:
//!
//! ```text
//! logit(u, i) = c[u] + e[i] + g[u]·G[i] + wₘ·MLP(U[u] + V[i])
//!   c[u]  per-user constant: predict_bias (+ the rating model's user_bias[u]), or for MF
//!         user_bias[u] + global_bias
//!   e[i]  per-item constant: item_bias[i] (MF and the rating model; else 0)
//!   g[u]  GMF: w_gmf ⊙ P_g[u] (the head folded into the user side); MF: P[u]
//!   G[i]  GMF's Q_g[i]; MF's Q[i]
//!   U[u]  W₀[:, :d]·P_m[u] + b₀   (the first dense layer's user half, with its bias)
//!   V[i]  W₀[:, d:]·Q_m[i]        (its item half); then x₀ = relu(U[u] + V[i]) and the
//!         other layers as trained: xₗ = relu(Wₗ·xₗ₋₁ + bₗ); wₘ the head's MLP part
//! ```
//!
//! Items are stored in panels of [`LANES`] (16) items, feature-major inside a panel
//! (`panel[f][lane]`), so one user's scores for 16 items are computed side by side, every
//! multiply-add a 16-wide vector operation (one AVX-512 register, two AVX2 ones). The whole
//! tower for a panel stays in a few KiB of L1; nothing of size `items × width` is written.
//! The loops are plain Rust, compiled once per [`SimdLevel`] (with hardware FMA on AVX2 and
//! AVX-512, separate multiply and add on the portable build), so scores match the reference
//! path to float rounding, not to the bit; `tests` checks every model kind against it.

use crate::simd::SimdLevel;
use ncf_model::HostTensor;
use rayon::prelude::*;

/// Outputs `k, k+1, …` of a dense layer for one panel: `next[k+o] = relu(b + W[k+o]·cur)`,
/// one accumulator (`$z`) per output, all updated from each input row as it is loaded.
macro_rules! outputs_block {
    ($m:ty, $layer:expr, $cur:expr, $next:expr, $k:expr, $($z:ident $o:literal),+) => {{
        let i = $layer.i;
        let w = &$layer.w[$k * i..];
        $(let mut $z = [$layer.b[$k + $o]; LANES];)+
        for (j, x) in $cur[..i].iter().enumerate() {
            $(
                let wv = w[$o * i + j];
                for l in 0..LANES {
                    $z[l] = <$m>::mul_add(wv, x[l], $z[l]);
                }
            )+
        }
        $(
            for l in 0..LANES {
                $next[$k + $o][l] = $z[l].max(0.0);
            }
        )+
    }};
}

/// Binds `$a`, `$b` to the two activation buffers of `Ranker::panel`: on the stack for towers
/// up to 64 wide, else on the heap. A macro, not a function taking a closure: a closure is not
/// compiled with its caller's `#[target_feature]`s, and its `mul_add`s became library calls
/// (the AVX-512 ranker went from 219 to 8,449 µs per user when this was tried).
macro_rules! scratch {
    ($r:expr, $a:ident, $b:ident) => {
        let mut stack = ([[0f32; LANES]; 64], [[0f32; LANES]; 64]);
        let mut heap: (Vec<Lanes>, Vec<Lanes>);
        let ($a, $b): (&mut [Lanes], &mut [Lanes]) = if $r.widest <= 64 {
            (&mut stack.0, &mut stack.1)
        } else {
            heap = (vec![[0.0; LANES]; $r.widest], vec![[0.0; LANES]; $r.widest]);
            (&mut heap.0, &mut heap.1)
        };
    };
}

/// Items per panel: the vector width the kernels are written for.
pub const LANES: usize = 16;
type Lanes = [f32; LANES];

/// One dense layer after the first: `W (o,i)` row-major, `b (o)`.
#[derive(Clone, Debug)]
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    i: usize,
    o: usize,
}

/// A model rewritten for ranking every item for a user (see the module docs).
#[derive(Clone, Debug)]
pub struct Ranker {
    pub n_users: usize,
    pub n_items: usize,
    panels: usize,
    /// `c[u]` and `e[i]` (padded to whole panels).
    user_const: Vec<f32>,
    item_const: Vec<Lanes>,
    /// The dot-product part: `g (U,F)` and the item panels `G (panels, F, LANES)`.
    f: usize,
    g: Vec<f32>,
    gp: Vec<Lanes>,
    /// The MLP part: `U (U,H₀)`, the item panels `V (panels, H₀, LANES)`, the other layers and
    /// the head's weights on the last layer.
    h0: usize,
    u: Vec<f32>,
    vp: Vec<Lanes>,
    dense: Vec<Dense>,
    head_mlp: Vec<f32>,
    widest: usize,
}

fn find<'a>(ts: &'a [HostTensor], name: &str) -> Option<&'a HostTensor> {
    ts.iter().find(|t| t.name == name)
}

fn f32s(t: &HostTensor) -> Vec<f32> {
    t.data.iter().map(|&x| x as f32).collect()
}

/// Panels of `rows (n, d)` row-major: `(ceil(n/LANES), d, LANES)`, zero-padded.
fn panels(rows: &[f64], n: usize, d: usize) -> Vec<Lanes> {
    let np = n.div_ceil(LANES);
    let mut out = vec![[0f32; LANES]; np * d];
    for i in 0..n {
        for f in 0..d {
            out[(i / LANES) * d + f][i % LANES] = rows[i * d + f] as f32;
        }
    }
    out
}

impl Ranker {
    /// Builds the ranker from a checkpoint's tensors (any of the four models, found by their
    /// tensor names). `Err` names what is missing or mis-shaped.
    pub fn new(ts: &[HostTensor], n_users: usize, n_items: usize) -> Result<Ranker, String> {
        let get = |name: &str| find(ts, name).ok_or_else(|| format!("no tensor `{name}`"));
        let need = |t: &HostTensor, len: usize| {
            if t.data.len() == len {
                Ok(())
            } else {
                Err(format!("tensor `{}` has {} values, expected {len}", t.name, t.data.len()))
            }
        };
        let np = n_items.div_ceil(LANES);
        let mut r = Ranker {
            n_users,
            n_items,
            panels: np,
            user_const: vec![0.0; n_users],
            item_const: vec![[0.0; LANES]; np],
            f: 0,
            g: Vec::new(),
            gp: Vec::new(),
            h0: 0,
            u: Vec::new(),
            vp: Vec::new(),
            dense: Vec::new(),
            head_mlp: Vec::new(),
            widest: 0,
        };
        if let Some(p) = find(ts, "mf_user_embedding") {
            // MF: P[u]·Q[i] + b_u[u] + b_i[i] + g.
            let q = get("mf_item_embedding")?;
            let f = p.data.len() / n_users.max(1);
            need(p, n_users * f)?;
            need(q, n_items * f)?;
            let (bu, bi, g) = (get("user_bias")?, get("item_bias")?, get("global_bias")?);
            need(bu, n_users)?;
            need(bi, n_items)?;
            need(g, 1)?;
            r.f = f;
            r.g = f32s(p);
            r.gp = panels(&q.data, n_items, f);
            r.user_const = bu.data.iter().map(|&b| (b + g.data[0]) as f32).collect();
            for (i, &b) in bi.data.iter().enumerate() {
                r.item_const[i / LANES][i % LANES] = b as f32;
            }
            return Ok(r);
        }
        if find(ts, "user_features").is_some() || find(ts, "item_features").is_some() {
            return Err(
                "a model with side features (--features) is scored by the model's own path, not the fast ranker".into(),
            );
        }
        let w = get("predict_weight")?;
        let b = get("predict_bias")?;
        need(b, 1)?;
        r.user_const = vec![b.data[0] as f32; n_users];
        let mut head = &w.data[..];
        if let Some(p) = find(ts, "gmf_user_embedding") {
            let q = get("gmf_item_embedding")?;
            let f = p.data.len() / n_users.max(1);
            need(p, n_users * f)?;
            need(q, n_items * f)?;
            if head.len() < f {
                return Err(format!("tensor `predict_weight` has {} values, fewer than GMF's {f}", head.len()));
            }
            let (wg, rest) = head.split_at(f);
            head = rest;
            r.f = f;
            r.g =
                p.data.chunks_exact(f.max(1)).flat_map(|row| row.iter().zip(wg).map(|(x, w)| (x * w) as f32)).collect();
            r.gp = panels(&q.data, n_items, f);
        }
        if let Some(p) = find(ts, "mlp_user_embedding") {
            let q = get("mlp_item_embedding")?;
            let d = p.data.len() / n_users.max(1);
            need(p, n_users * d)?;
            need(q, n_items * d)?;
            let w0 = get("mlp_0_weight")?;
            let b0 = get("mlp_0_bias")?;
            let h0 = b0.data.len();
            need(w0, h0 * 2 * d)?;
            // U[u] = W₀[:, :d]·P_m[u] + b₀ and V[i] = W₀[:, d:]·Q_m[i], in f64.
            let half = |rows: &[f64], n: usize, off: usize, bias: bool| -> Vec<f64> {
                let mut out = vec![0.0; n * h0];
                for (e, o) in rows.chunks_exact(d.max(1)).zip(out.chunks_exact_mut(h0.max(1))) {
                    for (k, ok) in o.iter_mut().enumerate() {
                        let wk = &w0.data[k * 2 * d + off..k * 2 * d + off + d];
                        *ok = e.iter().zip(wk).map(|(a, b)| a * b).sum::<f64>() + if bias { b0.data[k] } else { 0.0 };
                    }
                }
                out
            };
            r.h0 = h0;
            r.u = half(&p.data, n_users, 0, true).into_iter().map(|x| x as f32).collect();
            r.vp = panels(&half(&q.data, n_items, d, false), n_items, h0);
            r.widest = h0;
            let mut width = h0;
            for l in 1.. {
                let Some(wl) = find(ts, &format!("mlp_{l}_weight")) else { break };
                let bl = get(&format!("mlp_{l}_bias"))?;
                let o = bl.data.len();
                need(wl, o * width)?;
                r.dense.push(Dense { w: f32s(wl), b: f32s(bl), i: width, o });
                r.widest = r.widest.max(o);
                width = o;
            }
            if head.len() != width {
                return Err(format!("the head has {} MLP weights, the tower ends with {width}", head.len()));
            }
            r.head_mlp = head.iter().map(|&x| x as f32).collect();
        } else if !head.is_empty() {
            return Err(format!("tensor `predict_weight` has {} values more than the model uses", head.len()));
        }
        if let (Some(bu), Some(bi)) = (find(ts, "user_bias"), find(ts, "item_bias")) {
            // The rating model: the MLP's output plus b_u[u] + b_i[i].
            need(bu, n_users)?;
            need(bi, n_items)?;
            r.user_const.iter_mut().zip(&bu.data).for_each(|(c, &b)| *c += b as f32);
            for (i, &b) in bi.data.iter().enumerate() {
                r.item_const[i / LANES][i % LANES] += b as f32;
            }
        }
        if r.f == 0 && r.h0 == 0 {
            return Err("neither GMF, MLP nor MF tensors".into());
        }
        Ok(r)
    }

    /// The logits of user `u` for every item, into `out` (`n_items` long), on the best
    /// instruction set this CPU has.
    pub fn score_user(&self, u: usize, out: &mut [f32]) {
        self.score_user_at(u, out, SimdLevel::best())
    }

    /// [`Ranker::score_user`] compiled for `level` (which must be available: lower levels run
    /// on any CPU that has a higher one, for tests).
    pub fn score_user_at(&self, u: usize, out: &mut [f32], level: SimdLevel) {
        assert!(u < self.n_users && out.len() == self.n_items, "user {u} or a buffer of {} values", out.len());
        assert!(level.is_available(), "{level} is not available on this CPU");
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the assert above checked that this CPU has AVX-512F (and AVX2 + FMA).
            SimdLevel::Avx512 => unsafe { self.user_avx512(u, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the assert above checked that this CPU has AVX2 and FMA.
            SimdLevel::Avx2Fma => unsafe { self.user_avx2(u, out) },
            _ => self.user::<Plain, false>(u, out),
        }
    }

    /// The logits of `(user, item)` pairs, into `out` (as long as `pairs`): each pair's panel
    /// is scored for its user and the item's lane kept (16 items' work for one, but a pair
    /// costs about a microsecond, and it is the same tested code as ranking).
    pub fn score_pairs(&self, pairs: &[(u32, u32)], out: &mut [f32]) {
        assert_eq!(pairs.len(), out.len());
        let bad = pairs.iter().find(|&&(u, i)| u as usize >= self.n_users || i as usize >= self.n_items);
        assert!(bad.is_none(), "pair {bad:?} outside {} users × {} items", self.n_users, self.n_items);
        let level = SimdLevel::best();
        pairs.par_iter().zip(out.par_iter_mut()).with_min_len(64).for_each(|(&(u, i), o)| {
            *o = match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `best()` found AVX-512F (and AVX2 + FMA) on this CPU.
                SimdLevel::Avx512 => unsafe { self.pair_avx512(u as usize, i as usize) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `best()` found AVX2 and FMA on this CPU.
                SimdLevel::Avx2Fma => unsafe { self.pair_avx2(u as usize, i as usize) },
                _ => self.pair::<Plain, false>(u as usize, i as usize),
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn pair_avx512(&self, u: usize, i: usize) -> f32 {
        self.pair::<Fused, true>(u, i)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn pair_avx2(&self, u: usize, i: usize) -> f32 {
        self.pair::<Fused, false>(u, i)
    }

    /// One pair: its item's panel for the user, the item's lane.
    #[inline(always)]
    fn pair<M: MulAdd, const WIDE: bool>(&self, u: usize, i: usize) -> f32 {
        scratch!(self, xa, xb);
        let g = &self.g[u * self.f..(u + 1) * self.f];
        let uu = &self.u[u * self.h0..(u + 1) * self.h0];
        self.panel::<M, WIDE>(i / LANES, self.user_const[u], g, uu, xa, xb)[i % LANES]
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn user_avx512(&self, u: usize, out: &mut [f32]) {
        self.user::<Fused, true>(u, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn user_avx2(&self, u: usize, out: &mut [f32]) {
        self.user::<Fused, false>(u, out)
    }

    /// Every panel for user `u`.
    #[inline(always)]
    fn user<M: MulAdd, const WIDE: bool>(&self, u: usize, out: &mut [f32]) {
        scratch!(self, xa, xb);
        let c = self.user_const[u];
        let g = &self.g[u * self.f..(u + 1) * self.f];
        let uu = &self.u[u * self.h0..(u + 1) * self.h0];
        for p in 0..self.panels {
            let s = self.panel::<M, WIDE>(p, c, g, uu, xa, xb);
            let lo = p * LANES;
            let n = LANES.min(self.n_items - lo);
            out[lo..lo + n].copy_from_slice(&s[..n]);
        }
    }

    /// The logits of one panel of 16 items for one user (`c`, `g`, `U[u]` given).
    #[inline(always)]
    fn panel<M: MulAdd, const WIDE: bool>(
        &self,
        p: usize,
        c: f32,
        g: &[f32],
        uu: &[f32],
        xa: &mut [Lanes],
        xb: &mut [Lanes],
    ) -> Lanes {
        let mut acc = self.item_const[p];
        acc.iter_mut().for_each(|a| *a += c);
        // g[u]·G[i]
        for (gf, col) in g.iter().zip(&self.gp[p * self.f..(p + 1) * self.f]) {
            for l in 0..LANES {
                acc[l] = M::mul_add(*gf, col[l], acc[l]);
            }
        }
        if self.h0 == 0 {
            return acc;
        }
        // x₀ = relu(U[u] + V[i])
        for ((x, uk), v) in xa.iter_mut().zip(uu).zip(&self.vp[p * self.h0..(p + 1) * self.h0]) {
            for l in 0..LANES {
                x[l] = (uk + v[l]).max(0.0);
            }
        }
        // xₗ = relu(Wₗ·xₗ₋₁ + bₗ), two buffers in turn
        let (mut cur, mut next) = (xa, xb);
        for layer in &self.dense {
            let (i, o) = (layer.i, layer.o);
            // Several outputs at a time (eight with AVX-512's 32 registers, else four):
            // independent chains of multiply-adds (one chain alone waits out each FMA's
            // latency), and each input loaded feeds them all.
            let mut k = 0;
            if WIDE {
                while k + 8 <= o {
                    outputs_block!(M, layer, cur, next, k, z0 0, z1 1, z2 2, z3 3, z4 4, z5 5, z6 6, z7 7);
                    k += 8;
                }
            }
            while k + 4 <= o {
                outputs_block!(M, layer, cur, next, k, z0 0, z1 1, z2 2, z3 3);
                k += 4;
            }
            for (k, y) in next[..o].iter_mut().enumerate().skip(k) {
                let mut z = [layer.b[k]; LANES];
                for (w, x) in layer.w[k * i..(k + 1) * i].iter().zip(&cur[..i]) {
                    for l in 0..LANES {
                        z[l] = M::mul_add(*w, x[l], z[l]);
                    }
                }
                for l in 0..LANES {
                    y[l] = z[l].max(0.0);
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        // + wₘ·x_L
        for (w, x) in self.head_mlp.iter().zip(cur.iter()) {
            for l in 0..LANES {
                acc[l] = M::mul_add(*w, x[l], acc[l]);
            }
        }
        acc
    }

    /// The `k` best items for each of `users` (`(item, logit)`, best first, ties by lower
    /// item), leaving out the items `skip(u)` lists; users in parallel on rayon's pool.
    pub fn top_k<'a>(&self, users: &[u32], k: usize, skip: impl Fn(u32) -> &'a [u32] + Sync) -> Vec<Vec<(u32, f32)>> {
        let one = |scores: &mut Vec<f32>, cand: &mut Vec<(u32, f32)>, u: u32| {
            self.score_user(u as usize, scores);
            for &i in skip(u) {
                scores[i as usize] = f32::NEG_INFINITY;
            }
            best_k(scores, k, cand)
        };
        if let [u] = users {
            // One user (a server's query): on the calling thread, no hop to the pool.
            return vec![one(&mut vec![0f32; self.n_items], &mut Vec::with_capacity(self.n_items), *u)];
        }
        users
            .par_iter()
            .map_init(
                || (vec![0f32; self.n_items], Vec::with_capacity(self.n_items)),
                |(scores, cand), &u| one(scores, cand, u),
            )
            .collect()
    }
}

/// The `k` best of `scores` (left out: `-inf`; NaN never qualifies), as `(item, score)` by
/// descending score, ties by ascending item. Candidates collect in `cand`; whenever it holds
/// `2k` they are cut back to the best `k` and the bar rises to the `k`-th best score: a later
/// item must beat it (a tie loses, the earlier item being lower), so most items cost one
/// comparison.
fn best_k(scores: &[f32], k: usize, cand: &mut Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    cand.clear();
    if k == 0 {
        return Vec::new();
    }
    let mut bar = f32::NEG_INFINITY;
    for (i, &s) in scores.iter().enumerate() {
        if s > bar {
            cand.push((i as u32, s));
            if cand.len() == 2 * k {
                cand.select_nth_unstable_by(k - 1, better);
                cand.truncate(k);
                bar = cand[k - 1].1;
            }
        }
    }
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, better);
        cand.truncate(k);
    }
    cand.sort_by(better);
    cand.clone()
}

/// How a kernel multiplies and adds: fused on CPUs with FMA, separately without (where
/// `mul_add` would be a slow library call).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}
struct Fused;
struct Plain;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ncf_core::Backend;
    use ncf_model::{AnyModel, InitConfig, Model, ModelConfig, ModelKind};

    /// Each model kind (odd item counts, a tower wider than the stack buffers) against the
    /// model's own forward in f64, on every instruction set this CPU has.
    #[test]
    fn every_model_matches_the_reference_forward_on_every_level() {
        let be = CpuBackend::<f64>::default();
        let cases = [
            (ModelKind::Mf, 8, vec![]),
            (ModelKind::Gmf, 8, vec![]),
            (ModelKind::Mlp, 8, vec![64, 32, 16, 8]),
            (ModelKind::NeuMf, 8, vec![64, 32, 16, 8]),
            (ModelKind::NeuMf, 5, vec![18, 7, 3]),
            (ModelKind::Mlp, 8, vec![40, 100, 70, 1]),
            (ModelKind::Rating, 8, vec![32, 16, 8]),
        ];
        for (kind, factors, layers) in cases {
            for items in [1, 16, 37] {
                let users = 7;
                let mut cfg = ModelConfig::new(kind, users, items);
                cfg.factors = factors;
                if !layers.is_empty() {
                    cfg.layers = layers.clone();
                }
                cfg.init = InitConfig::for_gradcheck();
                let mut model =
                    AnyModel::new(&be, &cfg, users * items, &mut ncf_core::rng::seeded(3, items as u64)).unwrap();
                let us: Vec<u32> = (0..users as u32).flat_map(|u| std::iter::repeat_n(u, items)).collect();
                let is: Vec<u32> = (0..users).flat_map(|_| 0..items as u32).collect();
                let (mut ub, mut ib) = (be.zeros_ids(us.len()).unwrap(), be.zeros_ids(is.len()).unwrap());
                be.write_ids(&mut ub, &us).unwrap();
                be.write_ids(&mut ib, &is).unwrap();
                model.forward(&be, &ub, &ib, us.len()).unwrap();
                let want = be.download(model.logits()).unwrap();
                let r = Ranker::new(&model.params().to_host(&be).unwrap(), users, items).unwrap();
                // Pairs (every user with every item, in the forward's order) on the best level.
                let pairs: Vec<(u32, u32)> = us.iter().copied().zip(is.iter().copied()).collect();
                let mut got = vec![0f32; pairs.len()];
                r.score_pairs(&pairs, &mut got);
                let scale = want.iter().fold(1f64, |m, x| m.max(x.abs()));
                let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, f64::max);
                assert!(worst <= 2e-5 * scale, "{kind:?} {layers:?} items {items}: pairs max_abs {worst:.3e}");
                for level in SimdLevel::ALL.into_iter().filter(|l| l.is_available()) {
                    let mut got = vec![0f32; users * items];
                    for (u, row) in got.chunks_mut(items).enumerate() {
                        r.score_user_at(u, row, level);
                    }
                    let scale = want.iter().fold(1f64, |m, x| m.max(x.abs()));
                    let bad: Vec<(usize, f32, f64)> = got
                        .iter()
                        .zip(&want)
                        .enumerate()
                        .filter(|(_, (g, w))| (**g as f64 - **w).abs() > 2e-5 * scale)
                        .map(|(k, (g, w))| (k, *g, *w))
                        .collect();
                    let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, f64::max);
                    assert!(
                        bad.is_empty(),
                        "{kind:?} {layers:?} items {items} on {level}: {} of {} differ, max_abs {worst:.3e} (scale {scale:.3}); first (row, ranker, reference): {:?}",
                        bad.len(),
                        got.len(),
                        &bad[..bad.len().min(5)]
                    );
                }
            }
        }
    }

    /// [`best_k`] against sorting everything, with ties, left-out items and every `k`.
    #[test]
    fn best_k_is_the_head_of_the_full_sort() {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as u32
        };
        let mut cand = Vec::new();
        for n in [0usize, 1, 5, 100, 1000] {
            let scores: Vec<f32> = (0..n)
                .map(|_| match next() % 10 {
                    0 => f32::NEG_INFINITY,
                    1 => f32::NAN,
                    v => (v % 4) as f32 + (next() % 8) as f32 * 0.125,
                })
                .collect();
            let mut all: Vec<(u32, f32)> = scores
                .iter()
                .enumerate()
                .filter(|(_, s)| **s > f32::NEG_INFINITY)
                .map(|(i, &s)| (i as u32, s))
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.retain(|c| !c.1.is_nan());
            for k in [0, 1, 2, 3, 10, 999, 2000] {
                let got = best_k(&scores, k, &mut cand);
                assert_eq!(got, all[..k.min(all.len())], "n {n} k {k}");
            }
        }
    }
}
