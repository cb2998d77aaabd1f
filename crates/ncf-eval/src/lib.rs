//! # ncf-eval
//!
//! The paper's protocol: each user's held-out item is ranked among sampled items the user has
//! not interacted with (99 in the canonical split); HR@K says whether it made the top K, and
//! NDCG@K = 1/log₂(rank + 2) rewards a higher place (0 outside the top K).
//!
//! **Duplicates among the candidates.** The reference `evaluate.py` scores the candidates
//! through a dict keyed by item id, so an item listed twice counts once. In the canonical
//! ML-1M split 156 users have their positive among their 99 "negatives"; for them the dict
//! holds 99 distinct items (the positive once) and the positive is ranked against 98 others.
//! [`RankCase::new`] does the same, so our numbers are comparable with the paper's.
//!
//! **Ties** count against the target: its rank is the number of other candidates scoring at
//! least as high. This matches `evaluate.py`, where the target is the dict's last key and
//! `heapq.nlargest` keeps insertion order among equal scores, and it means a degenerate model
//! that gives every item the same score gets HR 0, not a perfect HR 1.

#![forbid(unsafe_code)]

use ncf_core::{Backend, Float, Result};
use ncf_model::Model;

/// One user's ranking task: `candidates` are distinct and include `target`.
#[derive(Clone, Debug, PartialEq)]
pub struct RankCase {
    pub user: u32,
    pub target: u32,
    pub candidates: Vec<u32>,
}

impl RankCase {
    /// The target followed by the distinct negatives that are not the target (evaluate.py's
    /// dict semantics).
    ///
    /// The ids kept so far are marked in a bitmap over `0..=max id` when that is small (up to
    /// 2¹⁶ ids: 8 KB, of which ML-1M's 3,706 items use 464 bytes), else looked up in the list
    /// (a scan per candidate, quadratic in their number): the same candidates either way
    /// (tested).
    pub fn new(user: u32, target: u32, negatives: &[u32]) -> Self {
        let mut candidates = Vec::with_capacity(negatives.len() + 1);
        candidates.push(target);
        let top = negatives.iter().copied().fold(target, u32::max) as usize;
        if top < Self::BITMAP_IDS {
            let mut seen = vec![0u64; top / 64 + 1];
            seen[target as usize / 64] |= 1 << (target % 64);
            for &j in negatives {
                let (w, bit) = (j as usize / 64, 1u64 << (j % 64));
                if seen[w] & bit == 0 {
                    seen[w] |= bit;
                    candidates.push(j);
                }
            }
        } else {
            for &j in negatives {
                if !candidates.contains(&j) {
                    candidates.push(j);
                }
            }
        }
        RankCase { user, target, candidates }
    }

    /// Ids below this are deduplicated through a bitmap in [`RankCase::new`].
    const BITMAP_IDS: usize = 1 << 16;
}

/// HR@K and NDCG@K averaged over users.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HitMetrics {
    pub hr: f64,
    pub ndcg: f64,
    pub users: usize,
}

/// Rank (0-based) of `scores[0]` among `scores`: how many others score at least as high.
pub fn rank_of_first<T: Float>(scores: &[T]) -> usize {
    let s0 = scores[0];
    scores[1..].iter().filter(|&&s| s >= s0).count()
}

/// `(hit, ndcg)` contribution of one user whose target has rank `rank`.
pub fn hit_ndcg(rank: usize, k: usize) -> (f64, f64) {
    if rank < k { (1.0, 1.0 / ((rank + 2) as f64).log2()) } else { (0.0, 0.0) }
}

/// Scores every case with `model` (many users per forward call, up to the model's max batch)
/// and averages HR@K and NDCG@K.
pub fn evaluate<B: Backend, M: Model<B>>(be: &B, model: &mut M, cases: &[RankCase], k: usize) -> Result<HitMetrics> {
    model.prepare_scoring(be)?;
    let cap = model.max_batch();
    let (mut users_host, mut items_host) = (Vec::with_capacity(cap), Vec::with_capacity(cap));
    let mut users = be.zeros_ids(cap)?;
    let mut items = be.zeros_ids(cap)?;
    let (mut hr, mut ndcg) = (0.0, 0.0);
    let mut start = 0;
    while start < cases.len() {
        // Pack whole cases until the batch is full.
        users_host.clear();
        items_host.clear();
        let mut end = start;
        while end < cases.len() && users_host.len() + cases[end].candidates.len() <= cap {
            let c = &cases[end];
            users_host.extend(std::iter::repeat_n(c.user, c.candidates.len()));
            items_host.extend_from_slice(&c.candidates);
            end += 1;
        }
        if end == start {
            return Err(ncf_core::Error::invalid(
                "evaluate",
                "max_batch",
                format!(
                    "one user has {} candidates but the model's workspace holds {cap} rows",
                    cases[start].candidates.len()
                ),
            ));
        }
        be.write_ids(&mut users, &users_host)?;
        be.write_ids(&mut items, &items_host)?;
        model.score(be, &users, &items, users_host.len())?;
        let logits = be.download(model.logits())?;
        let mut off = 0;
        for c in &cases[start..end] {
            let n = c.candidates.len();
            let (h, g) = hit_ndcg(rank_of_first(&logits[off..off + n]), k);
            hr += h;
            ndcg += g;
            off += n;
        }
        start = end;
    }
    let n = cases.len().max(1) as f64;
    Ok(HitMetrics { hr: hr / n, ndcg: ndcg / n, users: cases.len() })
}

/// The popularity baseline under the same protocol: every candidate scores its number of
/// training interactions (`item_counts[item]`). A model that does not beat this has learned
/// nothing personal.
pub fn evaluate_popularity(item_counts: &[u32], cases: &[RankCase], k: usize) -> HitMetrics {
    let (mut hr, mut ndcg) = (0.0, 0.0);
    let mut scores: Vec<f64> = Vec::new();
    for c in cases {
        scores.clear();
        scores.extend(c.candidates.iter().map(|&j| item_counts.get(j as usize).copied().unwrap_or(0) as f64));
        let (h, g) = hit_ndcg(rank_of_first(&scores), k);
        hr += h;
        ndcg += g;
    }
    let n = cases.len().max(1) as f64;
    HitMetrics { hr: hr / n, ndcg: ndcg / n, users: cases.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popularity_baseline_ranks_by_training_counts() {
        let counts = [5, 1, 9, 3];
        // Target 0 (count 5) among 1, 2, 3: only item 2 is above → rank 1.
        let cases = [RankCase::new(0, 0, &[1, 2, 3]), RankCase::new(1, 1, &[0, 2, 3])];
        let m = evaluate_popularity(&counts, &cases, 1);
        assert_eq!((m.hr, m.users), (0.0, 2));
        let m = evaluate_popularity(&counts, &cases, 2);
        assert_eq!(m.hr, 0.5, "user 0 hits at rank 1, user 1 (count 1, lowest) misses");
    }

    #[test]
    fn duplicate_candidates_count_once_like_evaluate_py() {
        let c = RankCase::new(3, 7, &[1, 7, 2, 1]);
        assert_eq!(c.candidates, vec![7, 1, 2]);
        // Ids past the bitmap's reach take the list: the same rule.
        let big = RankCase::BITMAP_IDS as u32;
        let c = RankCase::new(3, 7, &[big + 1, 7, 2, big + 1, 2, 0]);
        assert_eq!(c.candidates, vec![7, big + 1, 2, 0]);
    }

    /// The bitmap's candidates are the list's (first occurrences in order, the target first and
    /// once), for random lists with repeats and the target among them, ids at the bitmap's edges.
    #[test]
    fn bitmap_dedup_matches_the_list() {
        let list = |target: u32, negs: &[u32]| {
            let mut c = vec![target];
            for &j in negs {
                if !c.contains(&j) {
                    c.push(j);
                }
            }
            c
        };
        // A deterministic stream: SplitMix64 of a counter.
        let mut k = 0x1234_5678_9abc_def1u64;
        let mut next = move |n: u64| {
            k = k.wrapping_add(1);
            ncf_core::rng::splitmix64(k) % n
        };
        let top = RankCase::BITMAP_IDS as u64;
        for case in 0..2000 {
            let range = [5, 64, 65, 3706, top - 1, top + 5][case % 6];
            let negs: Vec<u32> = (0..next(120)).map(|_| next(range) as u32).collect();
            let target = next(range) as u32;
            assert_eq!(RankCase::new(1, target, &negs).candidates, list(target, &negs), "case {case}");
        }
    }

    #[test]
    fn rank_and_metrics() {
        assert_eq!(rank_of_first(&[0.5f32, 0.9, 0.1, 0.5]), 2, "ties count against the target");
        assert_eq!(rank_of_first(&[0.5f32; 100]), 99, "a constant model ranks the target last");
        assert_eq!(hit_ndcg(0, 10), (1.0, 1.0));
        assert_eq!(hit_ndcg(10, 10), (0.0, 0.0));
        assert!((hit_ndcg(2, 10).1 - 0.5).abs() < 1e-12);
    }
}

/// Full-ranking metrics: the held-out item ranked among **every** item the user has not
/// interacted with in training. With one relevant item per user, Precision@K = HR@K / K and
/// Recall@K = HR@K; MRR is `1/(rank+1)` without a cut-off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FullMetrics {
    pub hr: f64,
    pub ndcg: f64,
    pub precision: f64,
    pub recall: f64,
    pub mrr: f64,
    pub users: usize,
}

/// Ranks each `(user, target)` among all items the user has not interacted with in training
/// (`seen(user)` lists those, distinct; the target itself is always a candidate; ties count
/// against it, as in [`rank_of_first`]).
///
/// The rank is counted in two linear passes instead of a membership test per item: the items
/// scoring at least the target's score, minus the seen ones among them. Scores as many users per forward call as the model's batch holds.
pub fn evaluate_full<'s, B: Backend, M: Model<B>>(
    be: &B,
    model: &mut M,
    targets: &[(u32, u32)],
    n_items: usize,
    seen: impl Fn(usize) -> &'s [u32] + Sync,
    k: usize,
) -> Result<FullMetrics> {
    let cap = model.max_batch();
    if cap < n_items {
        return Err(ncf_core::Error::invalid(
            "evaluate_full",
            "max_batch",
            format!("scoring all {n_items} items of a user needs a workspace of at least {n_items} rows, got {cap}"),
        ));
    }
    model.prepare_scoring(be)?;
    let per_call = cap / n_items;
    let all_items: Vec<u32> = (0..n_items as u32).collect();
    let mut users = be.zeros_ids(per_call * n_items)?;
    let mut items = be.zeros_ids(per_call * n_items)?;
    let item_block: Vec<u32> = (0..per_call).flat_map(|_| all_items.iter().copied()).collect();
    be.write_ids(&mut items, &item_block)?;
    let mut user_block = Vec::with_capacity(per_call * n_items);
    // Each chunk's targets and seen items go to the backend, which counts the ranks where the
    // scores are (on a GPU only the ranks come back, not per_call × n_items scores).
    let max_seen =
        targets.chunks(per_call).map(|c| c.iter().map(|&(u, _)| seen(u as usize).len()).sum::<usize>()).max();
    let mut t_dev = be.zeros_ids(per_call)?;
    let mut off_dev = be.zeros_ids(per_call + 1)?;
    let mut seen_dev = be.zeros_ids(max_seen.unwrap_or(0).max(1))?;
    let mut ranks_dev = be.zeros_ids(per_call)?;
    let (mut t_host, mut off_host, mut seen_host) = (Vec::new(), Vec::new(), Vec::new());
    let mut m = FullMetrics::default();
    for chunk in targets.chunks(per_call) {
        user_block.clear();
        t_host.clear();
        off_host.clear();
        seen_host.clear();
        off_host.push(0u32);
        for &(u, target) in chunk {
            user_block.extend(std::iter::repeat_n(u, n_items));
            t_host.push(target);
            seen_host.extend_from_slice(seen(u as usize));
            off_host.push(seen_host.len() as u32);
        }
        be.write_ids(&mut users, &user_block)?;
        model.score(be, &users, &items, user_block.len())?;
        be.write_ids(&mut t_dev, &t_host)?;
        be.write_ids(&mut off_dev, &off_host)?;
        be.write_ids(&mut seen_dev, &seen_host)?;
        be.rank_unseen(model.logits(), chunk.len(), n_items, &t_dev, &off_dev, &seen_dev, &mut ranks_dev)?;
        // Summed in user order, so the result is deterministic.
        for rank in be.download_ids(&ranks_dev, chunk.len())? {
            let (h, g) = hit_ndcg(rank as usize, k);
            m.hr += h;
            m.ndcg += g;
            m.mrr += 1.0 / (rank as usize + 1) as f64;
        }
    }
    let n = targets.len().max(1) as f64;
    m.hr /= n;
    m.ndcg /= n;
    m.mrr /= n;
    m.precision = m.hr / k as f64;
    m.recall = m.hr;
    m.users = targets.len();
    Ok(m)
}

#[cfg(test)]
mod full_tests {
    use super::*;
    use ncf_cpu::CpuBackend;
    use ncf_model::{Mf, ModelConfig, ModelKind};

    /// An MF model whose score is the item id (item_bias[j] = j, everything else 0): the rank of
    /// target t is the number of unseen items above t, which the test counts by hand.
    #[test]
    fn full_ranking_counts_only_unseen_items_above_the_target() {
        let be = CpuBackend::<f32>::default();
        let n_items = 10;
        let cfg = ModelConfig::new(ModelKind::Mf, 2, n_items);
        let mut m = Mf::new(&be, &cfg, 25, &mut ncf_core::rng::seeded(1, 0)).unwrap();
        for name in ["mf_user_embedding", "mf_item_embedding", "user_bias", "global_bias"] {
            let n = m.params.tensors[m.params.index(name).unwrap()].numel();
            m.params.load(&be, name, &vec![0.0; n]).unwrap();
        }
        m.params.load(&be, "item_bias", &(0..n_items).map(|j| j as f64).collect::<Vec<_>>()).unwrap();
        // user 0 has seen items 8 and 9; user 1 has seen nothing.
        let seen = |u: usize| -> &[u32] { if u == 0 { &[8, 9] } else { &[] } };
        // user 0, target 5: unseen above 5 are 6, 7 → rank 2 (hit at K=3, NDCG 1/log2(4) = 0.5).
        // user 1, target 5: 6, 7, 8, 9 above → rank 4 (miss at K=3).
        let r = evaluate_full(&be, &mut m, &[(0, 5), (1, 5)], n_items, seen, 3).unwrap();
        assert_eq!(r.users, 2);
        assert!((r.hr - 0.5).abs() < 1e-12 && (r.ndcg - 0.25).abs() < 1e-12, "{r:?}");
        assert!((r.mrr - (1.0 / 3.0 + 1.0 / 5.0) / 2.0).abs() < 1e-12, "{r:?}");
        assert!((r.precision - 0.5 / 3.0).abs() < 1e-12 && r.recall == r.hr);
    }
}
