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
//! **Ties** are resolved in the positive's favour: its rank is the number of candidates with a
//! strictly higher score.

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
    pub fn new(user: u32, target: u32, negatives: &[u32]) -> Self {
        let mut candidates = vec![target];
        for &j in negatives {
            if !candidates.contains(&j) {
                candidates.push(j);
            }
        }
        RankCase { user, target, candidates }
    }
}

/// HR@K and NDCG@K averaged over users.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HitMetrics {
    pub hr: f64,
    pub ndcg: f64,
    pub users: usize,
}

/// Rank (0-based) of `scores[0]` among `scores`: how many score strictly higher.
pub fn rank_of_first<T: Float>(scores: &[T]) -> usize {
    let s0 = scores[0];
    scores[1..].iter().filter(|&&s| s > s0).count()
}

/// `(hit, ndcg)` contribution of one user whose target has rank `rank`.
pub fn hit_ndcg(rank: usize, k: usize) -> (f64, f64) {
    if rank < k { (1.0, 1.0 / ((rank + 2) as f64).log2()) } else { (0.0, 0.0) }
}

/// Scores every case with `model` (many users per forward call, up to the model's max batch)
/// and averages HR@K and NDCG@K.
pub fn evaluate<B: Backend, M: Model<B>>(be: &B, model: &mut M, cases: &[RankCase], k: usize) -> Result<HitMetrics> {
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
        model.forward(be, &users, &items, users_host.len())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_candidates_count_once_like_evaluate_py() {
        let c = RankCase::new(3, 7, &[1, 7, 2, 1]);
        assert_eq!(c.candidates, vec![7, 1, 2]);
    }

    #[test]
    fn rank_and_metrics() {
        assert_eq!(rank_of_first(&[0.5f32, 0.9, 0.1, 0.5]), 1, "ties go to the target");
        assert_eq!(hit_ndcg(0, 10), (1.0, 1.0));
        assert_eq!(hit_ndcg(10, 10), (0.0, 0.0));
        assert!((hit_ndcg(2, 10).1 - 0.5).abs() < 1e-12);
    }
}
