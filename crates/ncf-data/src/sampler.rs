//! Negative sampling: each epoch pairs every training positive with `n_neg` items the user has
//! not interacted with, drawn uniformly (rejection sampling with an exact membership test).
//!
//! Deterministic whatever the thread count: user `u`'s draws come from its own RNG stream
//! `(seed, epoch, u)`, and its rows land in a fixed block of the output; the final shuffle is
//! one seeded sequential pass.

use crate::interactions::UserItems;
use ncf_core::rng::{seeded, splitmix64};
use rand::RngExt;
use rand::seq::SliceRandom;
use rayon::prelude::*;

/// One training row: user, item, label (1 = positive, 0 = sampled negative).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Row {
    pub user: u32,
    pub item: u32,
    pub label: f32,
}

/// Fills `out` with one epoch of rows, shuffled. `out` is reused across epochs (no allocation
/// after the first).
///
/// `positives` are the rows to train on; `exclude` is what counts as "interacted with" (the
/// full training set, including any held-out validation item). A user who has every item is
/// given no negatives.
pub fn sample_epoch(
    positives: &UserItems,
    exclude: &UserItems,
    n_neg: usize,
    seed: u64,
    epoch: u64,
    out: &mut Vec<Row>,
) {
    let per = 1 + n_neg;
    out.clear();
    out.resize(positives.len() * per, Row::default());
    let n_items = positives.n_items as u32;
    let epoch_seed = splitmix64(seed ^ splitmix64(epoch.wrapping_add(0x5eed)));
    // Split the output into per-user blocks, then fill them in parallel.
    let mut blocks: Vec<(usize, &mut [Row])> = Vec::with_capacity(positives.n_users);
    let mut rest: &mut [Row] = out;
    for u in 0..positives.n_users {
        let (head, tail) = rest.split_at_mut(positives.of(u).len() * per);
        blocks.push((u, head));
        rest = tail;
    }
    blocks.into_par_iter().for_each(|(u, block)| {
        let mut rng = seeded(epoch_seed, u as u64);
        let seen = exclude.of(u);
        let can_sample = seen.len() < n_items as usize;
        for (k, &i) in positives.of(u).iter().enumerate() {
            let rows = &mut block[k * per..(k + 1) * per];
            rows[0] = Row { user: u as u32, item: i, label: 1.0 };
            for r in &mut rows[1..] {
                let j = if can_sample {
                    loop {
                        let j = rng.random_range(0..n_items);
                        if seen.binary_search(&j).is_err() {
                            break j;
                        }
                    }
                } else {
                    i
                };
                *r = Row { user: u as u32, item: j, label: if can_sample { 0.0 } else { 1.0 } };
            }
        }
    });
    out.shuffle(&mut seeded(epoch_seed, u64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> UserItems {
        UserItems::from_pairs(4, 50, &[(0, 1), (0, 2), (1, 7), (2, 3), (2, 4), (2, 5), (3, 49)])
    }

    #[test]
    fn negatives_are_unseen_counts_are_exact_and_epochs_differ() {
        let ui = toy();
        let mut rows = Vec::new();
        sample_epoch(&ui, &ui, 4, 1, 0, &mut rows);
        assert_eq!(rows.len(), ui.len() * 5);
        assert_eq!(rows.iter().filter(|r| r.label == 1.0).count(), ui.len());
        for r in &rows {
            assert_eq!(ui.contains(r.user as usize, r.item), r.label == 1.0, "{r:?}");
        }
        let mut again = Vec::new();
        sample_epoch(&ui, &ui, 4, 1, 1, &mut again);
        assert_ne!(rows, again);
    }

    #[test]
    fn same_seed_same_rows_on_any_thread_count() {
        let pairs: Vec<(u32, u32)> = (0..2000u32).map(|k| (k % 97, (k * 31) % 500)).collect();
        let ui = UserItems::from_pairs(97, 500, &pairs);
        let run = |t: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            let mut rows = Vec::new();
            pool.install(|| sample_epoch(&ui, &ui, 4, 3, 2, &mut rows));
            rows
        };
        let a = run(1);
        assert_eq!(a, run(2));
        assert_eq!(a, run(3));
    }
}
