//! Using a trained model: a checkpoint loaded for scoring on the CPU ([`Scorer`]), top-K
//! recommendations with the user's training items left out, the popularity fallback for users
//! the model has never seen, and item neighbours by cosine similarity of their embeddings.
//! `ncf recommend` and `ncf similar` are thin front ends to it.

use crate::checkpoint::Checkpoint;
use crate::{Result, TrainError};
use ncf_core::Backend;
use ncf_cpu::CpuBackend;
use ncf_cpu::rank::Ranker;
use ncf_data::{IdMap, UserItems};
use ncf_model::{AnyModel, Model};
use std::path::{Path, PathBuf};

/// Which item embedding [`Scorer::similar`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingChoice {
    /// Both where the model has both (NeuMF), else the one it has (the default). On NeuMF-8
    /// trained on ML-1M, both gave the most plausible neighbours: for Star Wars (260), Return
    /// of the Jedi, The Empire Strikes Back, Planet of the Apes, Alien, The Terminator; GMF's 8
    /// factors alone put rarely rated sci-fi (three Godzilla films) first, as an item seen a
    /// few times keeps a nearly random direction that cosine does not discount.
    #[default]
    Auto,
    /// GMF's (or MF's) item factors: the space where `score = w·(p_u ⊙ q_i)` is (almost) a dot
    /// product, so items close in it are scored alike by every user.
    Gmf,
    /// The MLP tower's item embedding (an input to nonlinear layers: closeness there is a
    /// weaker signal).
    Mlp,
    /// Both, each normalised, concatenated (NeuMF).
    Both,
}

/// One recommended or similar item: its dense id, raw id and score (a logit, or a cosine).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Scored {
    pub item: u32,
    pub raw_id: u64,
    pub score: f32,
}

/// A checkpoint ready to answer queries on the CPU.
pub struct Scorer {
    be: CpuBackend<f32>,
    model: AnyModel<CpuBackend<f32>>,
    pub path: PathBuf,
    pub n_users: usize,
    pub n_items: usize,
    pub user_ids: Option<IdMap>,
    pub item_ids: Option<IdMap>,
    /// Each user's training items (never recommended to them).
    pub seen: UserItems,
    /// Items by descending training count (ties: lower id first): the popularity fallback.
    pub popular: Vec<u32>,
    /// Each item's training count.
    item_count: Vec<u32>,
    /// The model rewritten for ranking every item for a user (the fast path of
    /// [`Scorer::scores`] and [`Scorer::recommend`]; the model's own `score` is the reference).
    ranker: Ranker,
    /// The checkpoint's weights, for [`Scorer::fold_in`]'s one-user model.
    weights: Vec<ncf_model::HostTensor>,
    spec: crate::ModelSpec,
}

/// Folding in: positives' sampled negatives, Adam steps, and Adam's rate on the user's rows.
pub const FOLD_IN_NEGATIVES: usize = 4;
pub const FOLD_IN_STEPS: usize = 60;
pub const FOLD_IN_LR: f32 = 0.05;

/// Whether a tensor belongs to the users' side (fitted when folding a user in).
fn user_side(name: &str) -> bool {
    name.ends_with("_user_embedding") || name == "user_bias"
}

fn err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.display().to_string(), reason: reason.into() }
}

/// The `k` rows of `vectors` (unit rows of width `d`) with the largest dot product with row
/// `i` (their cosine similarity), row `i` left out: an exact scan.
pub fn nearest(vectors: &(Vec<f32>, usize), i: u32, k: usize) -> Vec<(u32, f32)> {
    let (v, d) = (&vectors.0, vectors.1.max(1));
    let rows = v.len() / d;
    let q = &v[i as usize * d..(i as usize + 1) * d];
    let cand: Vec<(u32, f32)> = (0..rows)
        .filter(|&j| j != i as usize)
        .map(|j| (j as u32, v[j * d..(j + 1) * d].iter().zip(q).map(|(a, b)| a * b).sum()))
        .collect();
    top_k(cand, k)
}

/// Users scored per forward call: about 25,600 rows (the trainer's evaluation default), fewer
/// for a model whose towers are so wide that those rows would hold more than 2²⁴ activation
/// floats ([`ncf_model::ModelConfig::floats_per_row`]).
fn users_per_call(n_items: usize, floats_per_row: usize) -> usize {
    let n = n_items.max(1);
    (25_600 / n).min((1 << 24) / n.saturating_mul(floats_per_row.max(1))).max(1)
}

/// The `k` best of `(item, score)` by descending score, ties by ascending item.
pub fn top_k(mut scored: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > k && k > 0 {
        scored.select_nth_unstable_by(k - 1, better);
        scored.truncate(k);
    }
    scored.sort_by(better);
    scored.truncate(k);
    scored
}

impl Scorer {
    /// Loads `path` (a checkpoint of `ncf train --save`). Its users' training items come from
    /// the checkpoint, or from `seen` for checkpoints written before they were stored.
    pub fn load(path: &Path, seen: Option<UserItems>) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::load(path)?, path, seen)
    }

    /// [`Scorer::load`] of a checkpoint in memory (`path` names it in errors).
    pub fn from_checkpoint(ckpt: &Checkpoint, path: &Path, seen: Option<UserItems>) -> Result<Self> {
        let (n_users, n_items) = (ckpt.spec.users, ckpt.spec.items);
        let seen = match (ckpt.seen(path)?, seen) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                return Err(err(path, "holds no training items (written before ncf-rs stored them): train it again"));
            }
        };
        if (seen.n_users, seen.n_items) != (n_users, n_items) {
            return Err(err(
                path,
                format!(
                    "the data has {} users and {} items, the model {n_users} and {n_items}",
                    seen.n_users, seen.n_items
                ),
            ));
        }
        let be = CpuBackend::<f32>::default();
        let per_row = ckpt.spec.config()?.floats_per_row().unwrap_or(usize::MAX);
        let model = ckpt.model(&be, n_items.max(1) * users_per_call(n_items, per_row), path)?;
        let (user_ids, item_ids) = ckpt.id_maps(path)?;
        let mut count = vec![0u32; n_items];
        for &i in &seen.items {
            count[i as usize] += 1;
        }
        let mut popular: Vec<u32> = (0..n_items as u32).collect();
        popular.sort_by(|&a, &b| count[b as usize].cmp(&count[a as usize]).then(a.cmp(&b)));
        let weights: Vec<ncf_model::HostTensor> =
            ckpt.tensors.iter().filter(|t| !t.name.contains('/')).cloned().collect();
        let ranker = Ranker::new(&weights, n_users, n_items).map_err(|e| err(path, e))?;
        let spec = ckpt.spec.clone();
        Ok(Scorer {
            be,
            model,
            path: path.to_path_buf(),
            n_users,
            n_items,
            user_ids,
            item_ids,
            seen,
            popular,
            item_count: count,
            ranker,
            weights,
            spec,
        })
    }

    /// The dense id of raw user id `raw` (the raw id is the dense id without an id map).
    pub fn user(&self, raw: u64) -> Option<u32> {
        match &self.user_ids {
            Some(m) => m.dense(raw),
            None => (raw < self.n_users as u64).then_some(raw as u32),
        }
    }

    /// The dense id of raw item id `raw`.
    pub fn item(&self, raw: u64) -> Option<u32> {
        match &self.item_ids {
            Some(m) => m.dense(raw),
            None => (raw < self.n_items as u64).then_some(raw as u32),
        }
    }

    /// The raw id of dense user `u`.
    pub fn raw_user(&self, u: u32) -> u64 {
        self.user_ids.as_ref().and_then(|m| m.raw(u)).unwrap_or(u as u64)
    }

    /// The raw id of dense item `i`.
    pub fn raw_item(&self, i: u32) -> u64 {
        self.item_ids.as_ref().and_then(|m| m.raw(i)).unwrap_or(i as u64)
    }

    fn check_users(&self, users: &[u32]) -> Result<()> {
        match users.iter().find(|&&u| u as usize >= self.n_users) {
            Some(&u) => Err(err(&self.path, format!("user {u} of a model with {} users", self.n_users))),
            None => Ok(()),
        }
    }

    /// The model's logit for every item, for each of the dense `users`: `users.len() × n_items`,
    /// user by user, users in parallel (the fast path, [`Ranker`]).
    pub fn scores(&self, users: &[u32]) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        self.check_users(users)?;
        let n = self.n_items;
        let mut out = vec![0f32; users.len() * n];
        if n > 0 {
            out.par_chunks_mut(n).zip(users).for_each(|(row, &u)| self.ranker.score_user(u as usize, row));
        }
        Ok(out)
    }

    /// [`Scorer::scores`] by the reference path: the model's own `score`, a few users per
    /// forward call (the CPU backend spreads each over its threads). Equal to the fast path
    /// up to float rounding (`ncf_cpu::rank`'s tests check the kernel, `tests/cli_use.rs`
    /// this pair on a trained checkpoint).
    pub fn scores_reference(&mut self, users: &[u32]) -> Result<Vec<f32>> {
        self.check_users(users)?;
        let n = self.n_items;
        let (be, model) = (&self.be, &mut self.model);
        model.prepare_scoring(be)?;
        let per_call = (model.max_batch() / n.max(1)).max(1).min(users.len().max(1)); // as built
        let items: Vec<u32> = (0..per_call).flat_map(|_| 0..n as u32).collect();
        let mut us = Vec::with_capacity(per_call * n);
        let mut out = Vec::with_capacity(users.len() * n);
        for chunk in users.chunks(per_call) {
            us.clear();
            us.extend(chunk.iter().flat_map(|&u| std::iter::repeat_n(u, n)));
            model.score(be, &us, &items, us.len())?; // the first us.len() of the item block
            out.extend_from_slice(&model.logits()[..us.len()]);
        }
        Ok(out)
    }

    fn check_pairs(&self, pairs: &[(u32, u32)]) -> Result<()> {
        match pairs.iter().find(|&&(u, i)| u as usize >= self.n_users || i as usize >= self.n_items) {
            Some(&(u, i)) => {
                Err(err(&self.path, format!("pair ({u}, {i}) outside {} users × {} items", self.n_users, self.n_items)))
            }
            None => Ok(()),
        }
    }

    /// The model's logit for each dense `(user, item)` pair (the fast path, [`Ranker`]; pairs
    /// in parallel).
    pub fn score_pairs(&self, pairs: &[(u32, u32)]) -> Result<Vec<f32>> {
        self.check_pairs(pairs)?;
        let mut out = vec![0f32; pairs.len()];
        self.ranker.score_pairs(pairs, &mut out);
        Ok(out)
    }

    /// [`Scorer::score_pairs`] by the reference path, the model's own `score`.
    pub fn score_pairs_reference(&mut self, pairs: &[(u32, u32)]) -> Result<Vec<f32>> {
        self.check_pairs(pairs)?;
        let (be, model) = (&self.be, &mut self.model);
        model.prepare_scoring(be)?;
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(model.max_batch()) {
            let (us, is): (Vec<u32>, Vec<u32>) = chunk.iter().copied().unzip();
            model.score(be, &us, &is, chunk.len())?;
            out.extend_from_slice(&model.logits()[..chunk.len()]);
        }
        Ok(out)
    }

    /// The `k` best-scored items for each of the dense `users`, leaving out each user's
    /// training items; users in parallel on rayon's pool.
    pub fn recommend(&self, users: &[u32], k: usize) -> Result<Vec<Vec<Scored>>> {
        self.check_users(users)?;
        let best = self.ranker.top_k(users, k, |u| self.seen.of(u as usize));
        Ok(best
            .into_iter()
            .map(|b| b.into_iter().map(|(item, score)| Scored { item, raw_id: self.raw_item(item), score }).collect())
            .collect())
    }

    /// Recommendations for a user the model has never seen, from items the user likes
    /// (`liked`, dense ids): a one-user copy of the model whose user rows start from the
    /// model's initialisation and are fitted to the liked items against sampled others
    /// ([`FOLD_IN_NEGATIVES`] per liked item, drawn anew each step), with every item
    /// embedding and dense layer frozen ([`FOLD_IN_STEPS`] full-batch Adam steps at
    /// [`FOLD_IN_LR`]); then the `k` best items, the liked ones left out. Deterministic for a
    /// `seed`.
    pub fn fold_in(&self, liked: &[u32], k: usize, seed: u64) -> Result<Vec<Scored>> {
        let n = self.n_items;
        if let Some(&i) = liked.iter().find(|&&i| i as usize >= n) {
            return Err(err(&self.path, format!("item {i} of a model with {n} items")));
        }
        if liked.is_empty() {
            return Err(err(&self.path, "folding in needs at least one liked item"));
        }
        let mut cfg = self.spec.config()?;
        cfg.users = 1;
        let b = liked.len() * (1 + FOLD_IN_NEGATIVES);
        let be = &self.be;
        let mut model = AnyModel::new(be, &cfg, b.max(n), &mut ncf_core::rng::seeded(seed, 1))?;
        {
            let (params, _) = model.params_and_grads();
            for t in self.weights.iter().filter(|t| !user_side(&t.name)) {
                params.load(be, &t.name, &t.data)?;
            }
        }
        let mut is_liked = vec![false; n];
        liked.iter().for_each(|&i| is_liked[i as usize] = true);
        if liked.len() == n {
            return Ok(Vec::new());
        }
        let users = vec![0u32; b];
        let (mut items, mut labels) = (Vec::with_capacity(b), Vec::with_capacity(b));
        let (mut loss, mut dlogits) = (vec![0f32; 1], vec![0f32; b]);
        let mut state = ncf_core::rng::splitmix64(seed ^ 0xf01d);
        let mut moments: Vec<(usize, Vec<f32>, Vec<f32>)> = Vec::new();
        for t in 1..=FOLD_IN_STEPS {
            items.clear();
            labels.clear();
            for &i in liked {
                items.push(i);
                labels.push(1.0);
                for _ in 0..FOLD_IN_NEGATIVES {
                    let j = loop {
                        state = ncf_core::rng::splitmix64(state);
                        let j = (state % n as u64) as u32;
                        if !is_liked[j as usize] {
                            break j;
                        }
                    };
                    items.push(j);
                    labels.push(0.0);
                }
            }
            model.forward(be, &users, &items, b)?;
            be.bce_with_logits(model.logits(), &labels, b, &mut loss, &mut dlogits)?;
            model.backward(be, &users, &items, &dlogits, b)?;
            let (params, grads) = model.params_and_grads();
            // Adam on the user's rows only (bias-corrected, β 0.9 / 0.999); every gradient is
            // then cleared.
            let (c1, c2) = (1.0 - 0.9f32.powi(t as i32), 1.0 - 0.999f32.powi(t as i32));
            for (k, (p, g)) in params.tensors.iter_mut().zip(&grads.tensors).enumerate() {
                if !user_side(&p.name) {
                    continue;
                }
                if !moments.iter().any(|m| m.0 == k) {
                    moments.push((k, vec![0.0; p.buf.len()], vec![0.0; p.buf.len()]));
                }
                let Some((_, m, v)) = moments.iter_mut().find(|m| m.0 == k) else { continue };
                for (((w, &gr), m), v) in p.buf.iter_mut().zip(&g.buf).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = 0.9 * *m + 0.1 * gr;
                    *v = 0.999 * *v + 0.001 * gr * gr;
                    *w -= FOLD_IN_LR * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
                }
            }
            params.touch();
            grads.zero(be)?;
        }
        model.prepare_scoring(be)?;
        let all: Vec<u32> = (0..n as u32).collect();
        model.score(be, &vec![0u32; n], &all, n)?;
        let cand: Vec<(u32, f32)> = model.logits()[..n]
            .iter()
            .enumerate()
            .filter(|(i, _)| !is_liked[*i])
            .map(|(i, &s)| (i as u32, s))
            .collect();
        Ok(top_k(cand, k)
            .into_iter()
            .map(|(item, score)| Scored { item, raw_id: self.raw_item(item), score })
            .collect())
    }

    /// The `k` most trained-on items (for a user the model does not know); the score is the
    /// item's share of the training interactions.
    pub fn popular(&self, k: usize) -> Vec<Scored> {
        let total = self.seen.items.len().max(1) as f32;
        let share = |item: u32| self.item_count[item as usize] as f32 / total;
        self.popular
            .iter()
            .take(k)
            .map(|&item| Scored { item, raw_id: self.raw_item(item), score: share(item) })
            .collect()
    }

    /// The item embeddings `which` selects, each row normalised to unit length: `(n_items, d)`.
    pub fn item_vectors(&self, which: EmbeddingChoice) -> Result<(Vec<f32>, usize)> {
        self.vectors(which, "item", self.n_items)
    }

    /// The user embeddings `which` selects, normalised as [`Scorer::item_vectors`]'s.
    pub fn user_vectors(&self, which: EmbeddingChoice) -> Result<(Vec<f32>, usize)> {
        self.vectors(which, "user", self.n_users)
    }

    fn vectors(&self, which: EmbeddingChoice, side: &str, rows: usize) -> Result<(Vec<f32>, usize)> {
        let params = self.model.params();
        let table = |name: &str| -> Option<(Vec<f32>, usize)> {
            let k = params.index(name)?;
            let t = &params.tensors[k];
            Some((self.be.download(&t.buf).ok()?, t.row_width()))
        };
        let gmf = table(&format!("gmf_{side}_embedding")).or_else(|| table(&format!("mf_{side}_embedding")));
        let mlp = table(&format!("mlp_{side}_embedding"));
        let parts: Vec<(Vec<f32>, usize)> = match (which, gmf, mlp) {
            (EmbeddingChoice::Auto, Some(g), Some(m)) => vec![g, m],
            (EmbeddingChoice::Auto, Some(v), None) | (EmbeddingChoice::Auto, None, Some(v)) => vec![v],
            (EmbeddingChoice::Gmf, Some(g), _) => vec![g],
            (EmbeddingChoice::Mlp, _, Some(m)) => vec![m],
            (EmbeddingChoice::Both, Some(g), Some(m)) => vec![g, m],
            (w, _, _) => {
                return Err(err(&self.path, format!("a {} model has no {w:?} {side} embedding", self.model.kind())));
            }
        };
        let d: usize = parts.iter().map(|p| p.1).sum();
        let mut out = Vec::with_capacity(rows * d);
        for i in 0..rows {
            for (v, w) in &parts {
                let row = &v[i * w..(i + 1) * w];
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                out.extend(row.iter().map(|x| x / norm));
            }
        }
        if parts.len() > 1 {
            let s = (parts.len() as f32).sqrt();
            out.iter_mut().for_each(|x| *x /= s);
        }
        Ok((out, d))
    }

    /// The `k` items nearest dense item `i` by cosine similarity of `vectors` (from
    /// [`Scorer::item_vectors`]), the item itself left out. An exact scan: 3,706 items × 8
    /// floats is a few microseconds.
    pub fn similar(&self, vectors: &(Vec<f32>, usize), i: u32, k: usize) -> Result<Vec<Scored>> {
        let (v, d) = (&vectors.0, vectors.1);
        if i as usize >= self.n_items {
            return Err(err(&self.path, format!("item {i} of a model with {} items", self.n_items)));
        }
        let q = &v[i as usize * d..(i as usize + 1) * d];
        let cand: Vec<(u32, f32)> = (0..self.n_items)
            .filter(|&j| j != i as usize)
            .map(|j| (j as u32, v[j * d..(j + 1) * d].iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        Ok(top_k(cand, k)
            .into_iter()
            .map(|(item, score)| Scored { item, raw_id: self.raw_item(item), score })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_then_item() {
        let got = top_k(vec![(3, 0.5), (1, 0.9), (2, 0.5), (0, 0.1)], 3);
        assert_eq!(got, vec![(1, 0.9), (2, 0.5), (3, 0.5)]);
        assert_eq!(top_k(vec![(1, 1.0)], 5), vec![(1, 1.0)]);
        assert!(top_k(vec![(1, 1.0)], 0).is_empty());
    }
}
