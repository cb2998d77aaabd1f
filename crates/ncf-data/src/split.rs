//! From raw ratings to the paper's leave-one-out split.
//!
//! 1. **Duplicates.** A `(user, movie)` pair rated more than once keeps its latest rating (the
//!    largest timestamp; on equal timestamps, the later line). The others are counted in
//!    [`Implicit::duplicates`].
//! 2. **Binarization.** Implicit feedback: every remaining rating is a positive, or, with a
//!    threshold, only ratings `>= min_rating` (the rest are counted and dropped).
//! 3. **Ids.** Users and movies that keep at least one positive get dense ids in increasing raw
//!    order ([`IdMap`]).
//! 4. **Leave-latest-out.** Each user's latest interaction is the test item; ties on the
//!    timestamp go to the larger movie id, so the split never depends on line order. Users with
//!    a single interaction keep it for training and get no test line.
//! 5. **Test negatives.** 99 (configurable) distinct items the user never interacted with,
//!    drawn uniformly from a per-user seeded stream: the same seed gives the same file on any
//!    number of threads.

use crate::error::{DataError, Result, write_atomic};
use crate::idmap::IdMap;
use crate::interactions::{UserItems, sample_unseen};
use crate::movielens::RawRating;
use crate::ncf_split::NcfSplit;
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One positive interaction, dense ids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interaction {
    pub user: u32,
    pub item: u32,
    pub rating: f32,
    pub timestamp: i64,
}

/// Deduplicated, binarized interactions with their id maps.
#[derive(Clone, Debug)]
pub struct Implicit {
    pub users: IdMap,
    pub items: IdMap,
    /// Sorted by (user, timestamp, item).
    pub rows: Vec<Interaction>,
    /// Ratings dropped because a later rating of the same pair superseded them.
    pub duplicates: usize,
    /// Ratings dropped by the threshold.
    pub below_threshold: usize,
}

impl Implicit {
    /// Applies steps 1–3 of the module doc. `min_rating = None` keeps every rating.
    pub fn from_ratings(ratings: &[RawRating], min_rating: Option<f32>) -> Self {
        let mut order: Vec<usize> = (0..ratings.len()).collect();
        order.par_sort_unstable_by_key(|&k| (ratings[k].user, ratings[k].item, ratings[k].timestamp, k));
        let mut kept: Vec<&RawRating> = Vec::with_capacity(ratings.len());
        let mut duplicates = 0;
        for (n, &k) in order.iter().enumerate() {
            let r = &ratings[k];
            let last_of_pair = order.get(n + 1).is_none_or(|&j| (ratings[j].user, ratings[j].item) != (r.user, r.item));
            if last_of_pair {
                kept.push(r);
            } else {
                duplicates += 1;
            }
        }
        let before = kept.len();
        if let Some(t) = min_rating {
            kept.retain(|r| r.rating >= t);
        }
        let below_threshold = before - kept.len();
        let users = IdMap::from_raw(kept.iter().map(|r| r.user));
        let items = IdMap::from_raw(kept.iter().map(|r| r.item));
        let mut rows: Vec<Interaction> = kept
            .iter()
            .map(|r| Interaction {
                user: users.dense(r.user).unwrap_or(u32::MAX),
                item: items.dense(r.item).unwrap_or(u32::MAX),
                rating: r.rating,
                timestamp: r.timestamp,
            })
            .collect();
        rows.par_sort_unstable_by_key(|r| (r.user, r.timestamp, r.item));
        Implicit { users, items, rows, duplicates, below_threshold }
    }
}

/// A leave-one-out split with its id maps, ready to train on or to write in the NCF format.
#[derive(Clone, Debug)]
pub struct LeaveOneOut {
    pub users: IdMap,
    pub items: IdMap,
    /// Training interactions, by user then time.
    pub train: Vec<Interaction>,
    /// One held-out interaction per user with at least two, in user order.
    pub test: Vec<Interaction>,
    /// The sampled negatives of each test line.
    pub negatives: Vec<Vec<u32>>,
}

/// Steps 4–5 of the module doc.
pub fn leave_latest_out(data: &Implicit, n_negatives: usize, seed: u64) -> LeaveOneOut {
    let mut train = Vec::with_capacity(data.rows.len());
    let mut test = Vec::with_capacity(data.users.len());
    for run in data.rows.chunk_by(|a, b| a.user == b.user) {
        let (last, rest) = run.split_last().expect("chunks are non-empty");
        if rest.is_empty() {
            train.push(*last);
        } else {
            train.extend_from_slice(rest);
            test.push(*last);
        }
    }
    let all = UserItems::from_pairs(
        data.users.len(),
        data.items.len(),
        &data.rows.iter().map(|r| (r.user, r.item)).collect::<Vec<_>>(),
    );
    let negatives =
        test.par_iter().map(|t| sample_unseen(&all, t.user as usize, &[], n_negatives, seed ^ 0x7e57)).collect();
    LeaveOneOut { users: data.users.clone(), items: data.items.clone(), train, test, negatives }
}

fn rating_line(out: &mut String, r: &Interaction) {
    let _ = writeln!(out, "{}\t{}\t{}\t{}", r.user, r.item, r.rating, r.timestamp);
}

impl LeaveOneOut {
    /// The split as the trainer sees it (pairs only, id maps attached).
    pub fn to_ncf_split(&self, name: &str) -> NcfSplit {
        NcfSplit {
            name: name.to_string(),
            n_users: self.users.len(),
            n_items: self.items.len(),
            train: self.train.iter().map(|r| (r.user, r.item)).collect(),
            duplicates: 0,
            test: self.test.iter().map(|r| (r.user, r.item)).collect(),
            negatives: self.negatives.clone(),
            user_ids: Some(self.users.clone()),
            item_ids: Some(self.items.clone()),
        }
    }

    /// The paths [`LeaveOneOut::write`] creates.
    pub fn paths(dir: &Path, name: &str) -> Vec<PathBuf> {
        ["train.rating", "test.rating", "test.negative", "user_ids.tsv", "item_ids.tsv"]
            .iter()
            .map(|s| dir.join(format!("{name}.{s}")))
            .collect()
    }

    /// Writes `NAME.train.rating`, `NAME.test.rating`, `NAME.test.negative` (the NCF format)
    /// and the id maps `NAME.user_ids.tsv`, `NAME.item_ids.tsv` into `dir`, each atomically.
    /// Refuses, before writing anything, if any of them exists and `force` is false.
    pub fn write(&self, dir: &Path, name: &str, force: bool) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let paths = Self::paths(dir, name);
        if !force && let Some(p) = paths.iter().find(|p| p.exists()) {
            return Err(DataError::invalid(p, "exists; pass --force to overwrite it"));
        }
        let mut train = String::with_capacity(self.train.len() * 24);
        self.train.iter().for_each(|r| rating_line(&mut train, r));
        let mut test = String::with_capacity(self.test.len() * 24);
        self.test.iter().for_each(|r| rating_line(&mut test, r));
        let mut neg = String::with_capacity(self.test.len() * (self.negatives.first().map_or(0, |n| n.len()) * 5 + 16));
        for (t, negs) in self.test.iter().zip(&self.negatives) {
            let _ = write!(neg, "({},{})", t.user, t.item);
            for j in negs {
                let _ = write!(neg, "\t{j}");
            }
            neg.push('\n');
        }
        let bodies = [train, test, neg, self.users.to_tsv(), self.items.to_tsv()];
        for (p, body) in paths.iter().zip(bodies) {
            write_atomic(p, body.as_bytes(), true)?;
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(user: u64, item: u64, rating: f32, timestamp: i64) -> RawRating {
        RawRating { user, item, rating, timestamp }
    }

    #[test]
    fn duplicates_keep_the_latest_and_the_threshold_binarizes() {
        let raw = [r(7, 100, 5.0, 10), r(7, 100, 2.0, 20), r(7, 50, 4.0, 5), r(9, 50, 1.0, 1), r(9, 60, 3.0, 2)];
        let all = Implicit::from_ratings(&raw, None);
        assert_eq!(all.duplicates, 1);
        assert_eq!(all.rows.len(), 4);
        let r7: Vec<_> = all.rows.iter().filter(|x| x.user == 0).map(|x| (x.item, x.rating)).collect();
        assert_eq!(r7, vec![(0, 4.0), (2, 2.0)], "item 50 → 0, 100 → 2; the later rating (2.0) wins");
        let pos = Implicit::from_ratings(&raw, Some(3.0));
        assert_eq!(pos.below_threshold, 2);
        assert_eq!(pos.items.raw_ids(), &[50, 60], "movie 100's only rating is now below 3");
    }

    #[test]
    fn the_latest_interaction_is_held_out_with_deterministic_ties() {
        // user 1: two ratings at t=30 (movies 5 and 9) → the larger movie id, 9, is the test.
        // user 2: one rating → training only.
        let raw = [r(1, 9, 4.0, 30), r(1, 5, 4.0, 30), r(1, 3, 4.0, 10), r(2, 3, 5.0, 1), r(3, 5, 1.0, 2)];
        let data = Implicit::from_ratings(&raw, None);
        let mut shuffled = raw;
        shuffled.reverse();
        let s = leave_latest_out(&data, 99, 1);
        let s2 = leave_latest_out(&Implicit::from_ratings(&shuffled, None), 99, 1);
        assert_eq!(s.test, s2.test, "line order must not matter");
        assert_eq!(s.test.len(), 1);
        assert_eq!(s.items.raw(s.test[0].item), Some(9));
        assert_eq!(s.train.len(), 4);
        // 3 items, user 1 has them all: no negatives exist.
        assert!(s.negatives[0].is_empty());
    }

    #[test]
    fn negatives_are_unseen_distinct_and_seeded() {
        let raw: Vec<RawRating> = (0..50u64)
            .flat_map(|u| (0..(3 + u % 7)).map(move |k| r(u, (u * 13 + k * 7) % 200, 3.0, k as i64)))
            .collect();
        let data = Implicit::from_ratings(&raw, None);
        let s = leave_latest_out(&data, 99, 5);
        let seen = UserItems::from_pairs(
            data.users.len(),
            data.items.len(),
            &data.rows.iter().map(|x| (x.user, x.item)).collect::<Vec<_>>(),
        );
        for (t, negs) in s.test.iter().zip(&s.negatives) {
            assert_eq!(negs.len(), 99);
            let mut d = negs.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 99, "distinct");
            assert!(negs.iter().all(|&j| !seen.contains(t.user as usize, j)), "unseen, test item included");
        }
        assert_eq!(leave_latest_out(&data, 99, 5).negatives, s.negatives);
        assert_ne!(leave_latest_out(&data, 99, 6).negatives, s.negatives);
    }

    #[test]
    fn written_split_loads_back_with_its_id_maps_and_refuses_to_overwrite() {
        let raw: Vec<RawRating> =
            (0..20u64).flat_map(|u| (0..5u64).map(move |k| r(1000 + u, 7 * k + u % 3, 4.5, k as i64))).collect();
        let s = leave_latest_out(&Implicit::from_ratings(&raw, None), 10, 3);
        let dir = tempfile::tempdir().unwrap();
        s.write(dir.path(), "toy", false).unwrap();
        let back = NcfSplit::load(dir.path()).unwrap();
        let want = s.to_ncf_split("toy");
        assert_eq!((back.train, back.test, back.negatives), (want.train, want.test, want.negatives));
        assert_eq!(back.user_ids.as_ref().and_then(|m| m.raw(0)), Some(1000));
        assert_eq!(back.item_ids, Some(s.items.clone()));
        let e = s.write(dir.path(), "toy", false).unwrap_err().to_string();
        assert!(e.contains("toy.train.rating") && e.contains("--force"), "{e}");
        s.write(dir.path(), "toy", true).unwrap();
    }
}
