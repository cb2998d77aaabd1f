//! Each user's items, in compressed sparse row (CSR) form: `items[offsets[u]..offsets[u+1]]`
//! are user `u`'s items, sorted, so membership is a binary search and a user's rows are
//! contiguous (the negative sampler writes one user's block at a time).

use ncf_core::rng::seeded;
use rand::RngExt;
use rand::seq::SliceRandom;
use rayon::prelude::*;

#[derive(Clone, Debug, Default)]
pub struct UserItems {
    pub n_users: usize,
    pub n_items: usize,
    /// `n_users + 1` offsets into `items`.
    pub offsets: Vec<usize>,
    pub items: Vec<u32>,
}

impl UserItems {
    /// Builds the CSR from `(user, item)` pairs (ids must be `< n_users`, `< n_items`; repeats
    /// are kept once).
    pub fn from_pairs(n_users: usize, n_items: usize, pairs: &[(u32, u32)]) -> Self {
        let mut counts = vec![0usize; n_users + 1];
        for &(u, _) in pairs {
            counts[u as usize + 1] += 1;
        }
        for k in 1..=n_users {
            counts[k] += counts[k - 1];
        }
        let mut items = vec![0u32; pairs.len()];
        let mut fill = counts.clone();
        for &(u, i) in pairs {
            items[fill[u as usize]] = i;
            fill[u as usize] += 1;
        }
        // Sort and dedup each user's run (the users side by side on rayon's threads), then
        // close the runs up in order.
        let mut runs: Vec<&mut [u32]> = Vec::with_capacity(n_users);
        let mut rest = &mut items[..];
        for u in 0..n_users {
            let (run, tail) = rest.split_at_mut(counts[u + 1] - counts[u]);
            runs.push(run);
            rest = tail;
        }
        let kept: Vec<usize> = runs
            .into_par_iter()
            .with_min_len(64)
            .map(|run| {
                run.sort_unstable();
                let mut w = 0;
                for k in 0..run.len() {
                    if k == 0 || run[k] != run[w - 1] {
                        run[w] = run[k];
                        w += 1;
                    }
                }
                w
            })
            .collect();
        let mut offsets = vec![0usize; n_users + 1];
        let mut w = 0;
        for u in 0..n_users {
            offsets[u] = w;
            if w != counts[u] {
                items.copy_within(counts[u]..counts[u] + kept[u], w);
            }
            w += kept[u];
        }
        offsets[n_users] = w;
        items.truncate(w);
        UserItems { n_users, n_items, offsets, items }
    }

    /// User `u`'s items, sorted.
    pub fn of(&self, u: usize) -> &[u32] {
        &self.items[self.offsets[u]..self.offsets[u + 1]]
    }

    /// Whether user `u` has item `i`.
    pub fn contains(&self, u: usize, i: u32) -> bool {
        self.of(u).binary_search(&i).is_ok()
    }

    /// Total interactions.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All `(user, item)` pairs in user order.
    pub fn pairs(&self) -> Vec<(u32, u32)> {
        (0..self.n_users).flat_map(|u| self.of(u).iter().map(move |&i| (u as u32, i))).collect()
    }
}

/// Holds out one interaction per user (for users with at least two) as a validation set, the
/// paper's tuning protocol. Chosen uniformly with a seeded RNG per user. Returns the remaining
/// training pairs and, per user, the held-out item.
///
/// Each user's remaining items are `all`'s, sorted and distinct, less the one held out, so they
/// are copied as they are (what [`UserItems::from_pairs`] of the remaining pairs gives, tested).
pub fn hold_out_one_per_user(all: &UserItems, seed: u64) -> (UserItems, Vec<Option<u32>>) {
    let mut held = vec![None; all.n_users];
    let mut items = Vec::with_capacity(all.len());
    let mut offsets = Vec::with_capacity(all.n_users + 1);
    offsets.push(0);
    for (u, slot) in held.iter_mut().enumerate() {
        let mine = all.of(u);
        if mine.len() >= 2 {
            let pick = seeded(seed, u as u64).random_range(0..mine.len());
            *slot = Some(mine[pick]);
            items.extend_from_slice(&mine[..pick]);
            items.extend_from_slice(&mine[pick + 1..]);
        } else {
            items.extend_from_slice(mine);
        }
        offsets.push(items.len());
    }
    (UserItems { n_users: all.n_users, n_items: all.n_items, offsets, items }, held)
}

/// `n` distinct items drawn uniformly from those user `u` does not have in `known` and that are
/// not `also_exclude`. Fewer if the user has fewer unseen items.
pub fn sample_unseen(known: &UserItems, u: usize, also_exclude: &[u32], n: usize, seed: u64) -> Vec<u32> {
    let mut rng = seeded(seed, u as u64);
    let mut pool = unseen_pool(known, u, also_exclude);
    let n = n.min(pool.len());
    let (chosen, _) = pool.partial_shuffle(&mut rng, n);
    chosen.to_vec()
}

/// The items `0..n_items` that user `u` does not have in `known` and that are not
/// `also_exclude`, ascending: the runs between the excluded items, filled whole (the user's
/// items are sorted and distinct, so a merge finds the runs).
fn unseen_pool(known: &UserItems, u: usize, also_exclude: &[u32]) -> Vec<u32> {
    let n_items = known.n_items as u32;
    let seen = known.of(u);
    let mut excluded: Vec<u32> = seen.iter().chain(also_exclude).copied().filter(|&i| i < n_items).collect();
    if !also_exclude.is_empty() {
        excluded.sort_unstable();
        excluded.dedup();
    }
    let mut pool: Vec<u32> = Vec::with_capacity(known.n_items - excluded.len());
    let mut start = 0;
    for &e in &excluded {
        pool.extend(start..e);
        start = e + 1;
    }
    pool.extend(start..n_items);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-filled pool is the item-by-item walk's: every item in order, less the user's
    /// and the extra exclusions (repeated, out of range, or among the user's own).
    #[test]
    fn unseen_pool_matches_the_item_by_item_walk() {
        let ui = UserItems::from_pairs(4, 12, &[(0, 0), (0, 5), (0, 11), (1, 3), (1, 4), (3, 7)]);
        for u in 0..4 {
            for extra in [&[][..], &[5], &[6, 6], &[u32::MAX, 2], &[11, 0, 1]] {
                let walk: Vec<u32> = (0..12).filter(|i| !ui.contains(u, *i) && !extra.contains(i)).collect();
                assert_eq!(unseen_pool(&ui, u, extra), walk, "user {u}, also excluding {extra:?}");
            }
        }
    }

    #[test]
    fn csr_sorts_dedups_and_answers_membership() {
        let ui = UserItems::from_pairs(3, 10, &[(2, 5), (0, 3), (2, 1), (0, 3), (2, 9)]);
        assert_eq!(ui.of(0), &[3]);
        assert_eq!(ui.of(1), &[] as &[u32]);
        assert_eq!(ui.of(2), &[1, 5, 9]);
        assert!(ui.contains(2, 9) && !ui.contains(2, 2));
        assert_eq!(ui.len(), 4);
    }

    /// Random pairs with repeats (and users with none, and more users than rayon's smallest
    /// share): the CSR is each user's sorted, distinct items, as a `BTreeSet` per user gives
    /// them; the hold-out's remaining items are what `from_pairs` of the remaining pairs gives.
    #[test]
    fn csr_and_holdout_match_sets_per_user() {
        // A deterministic stream: SplitMix64 of a counter.
        let mut k = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            k = k.wrapping_add(1);
            ncf_core::rng::splitmix64(k) % n
        };
        for (users, items, len) in [(1, 1, 0), (3, 5, 40), (300, 50, 3000), (1000, 2000, 20_000)] {
            let pairs: Vec<(u32, u32)> = (0..len).map(|_| (next(users) as u32, next(items) as u32)).collect();
            let ui = UserItems::from_pairs(users as usize, items as usize, &pairs);
            let mut sets = vec![std::collections::BTreeSet::new(); users as usize];
            for &(u, i) in &pairs {
                sets[u as usize].insert(i);
            }
            for (u, set) in sets.iter().enumerate() {
                assert_eq!(ui.of(u), set.iter().copied().collect::<Vec<_>>(), "{users} users: user {u}");
            }
            assert_eq!(ui.len(), sets.iter().map(|s| s.len()).sum::<usize>());
            let (rest, held) = hold_out_one_per_user(&ui, 7);
            let mut rest_pairs = Vec::new();
            for (u, &h) in held.iter().enumerate() {
                rest_pairs.extend(ui.of(u).iter().filter(|&&i| Some(i) != h).map(|&i| (u as u32, i)));
            }
            let want = UserItems::from_pairs(users as usize, items as usize, &rest_pairs);
            assert_eq!((&rest.offsets, &rest.items), (&want.offsets, &want.items), "{users} users: the hold-out");
        }
    }

    #[test]
    fn holdout_takes_one_per_user_with_two_or_more() {
        let ui = UserItems::from_pairs(3, 10, &[(0, 1), (0, 2), (0, 3), (1, 4), (2, 5), (2, 6)]);
        let (rest, held) = hold_out_one_per_user(&ui, 9);
        assert!(held[0].is_some() && held[1].is_none() && held[2].is_some());
        assert_eq!(rest.len(), 4);
        for (u, h) in held.iter().enumerate() {
            if let Some(h) = *h {
                assert!(ui.contains(u, h) && !rest.contains(u, h));
            }
        }
        assert_eq!(hold_out_one_per_user(&ui, 9).1, held, "seeded");
    }
}
