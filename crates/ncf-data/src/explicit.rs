//! Explicit ratings (stars, not clicks): dense ids, the rating range, and the seeded random
//! train/validation/test split the rating model is trained and judged on.

use crate::error::{DataError, Result};
use crate::idmap::IdMap;
use crate::movielens::RawRating;
use rand::seq::SliceRandom;
use std::path::Path;

/// One rating with dense ids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rated {
    pub user: u32,
    pub item: u32,
    pub rating: f32,
}

/// A ratings file's contents with dense ids (raw ids in increasing order).
#[derive(Clone, Debug)]
pub struct Explicit {
    pub users: IdMap,
    pub items: IdMap,
    pub ratings: Vec<Rated>,
}

impl Explicit {
    /// Dense ids for `raw`; every rating must lie in `range` (inclusive), else the error names
    /// the file (`path`), the 1-based rating number and the value.
    pub fn from_raw(raw: &[RawRating], range: (f32, f32), path: &Path) -> Result<Self> {
        if let Some((k, r)) = raw.iter().enumerate().find(|(_, r)| !(range.0..=range.1).contains(&r.rating)) {
            return Err(DataError::invalid(
                path,
                format!(
                    "rating {} (user {}, item {}): field `rating`: {} is outside the declared range {}..={}",
                    k + 1,
                    r.user,
                    r.item,
                    r.rating,
                    range.0,
                    range.1
                ),
            ));
        }
        let users = IdMap::from_raw(raw.iter().map(|r| r.user));
        let items = IdMap::from_raw(raw.iter().map(|r| r.item));
        let ratings = raw
            .iter()
            .map(|r| Rated {
                user: users.dense(r.user).expect("mapped above"),
                item: items.dense(r.item).expect("mapped above"),
                rating: r.rating,
            })
            .collect();
        Ok(Explicit { users, items, ratings })
    }

    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    pub fn n_items(&self) -> usize {
        self.items.len()
    }
}

/// How ratings are divided between train, validation and test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SplitKind {
    /// One shuffle of all ratings, cut at the fractions.
    #[default]
    Random,
    /// Each user's ratings shuffled and cut at the fractions (every user with enough ratings
    /// appears in all three parts).
    PerUser,
}

/// Train, validation and test ratings.
#[derive(Clone, Debug)]
pub struct RatingSplit {
    pub train: Vec<Rated>,
    pub valid: Vec<Rated>,
    pub test: Vec<Rated>,
}

/// Splits `ratings` into train/validation/test with fractions `valid` and `test` (the rest
/// trains), shuffled by `seed`. The same seed gives the same split.
pub fn split_ratings(ratings: &[Rated], valid: f64, test: f64, kind: SplitKind, seed: u64) -> RatingSplit {
    let mut rng = ncf_core::rng::seeded(seed, 0x5711);
    let cut = |group: &mut Vec<Rated>, out: &mut RatingSplit, rng: &mut ncf_core::Rng| {
        group.shuffle(rng);
        let n = group.len();
        let n_test = (n as f64 * test).round() as usize;
        let n_valid = ((n as f64 * valid).round() as usize).min(n - n_test);
        out.test.extend_from_slice(&group[..n_test]);
        out.valid.extend_from_slice(&group[n_test..n_test + n_valid]);
        out.train.extend_from_slice(&group[n_test + n_valid..]);
    };
    let mut out = RatingSplit { train: Vec::new(), valid: Vec::new(), test: Vec::new() };
    match kind {
        SplitKind::Random => cut(&mut ratings.to_vec(), &mut out, &mut rng),
        SplitKind::PerUser => {
            let n_users = ratings.iter().map(|r| r.user as usize + 1).max().unwrap_or(0);
            let mut by_user: Vec<Vec<Rated>> = vec![Vec::new(); n_users];
            for r in ratings {
                by_user[r.user as usize].push(*r);
            }
            for g in &mut by_user {
                cut(g, &mut out, &mut rng);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<Rated> {
        (0..1000u32).map(|k| Rated { user: k % 37, item: k % 101, rating: (k % 5 + 1) as f32 }).collect()
    }

    #[test]
    fn the_split_is_a_seeded_partition_at_the_fractions() {
        for kind in [SplitKind::Random, SplitKind::PerUser] {
            let all = data();
            let s = split_ratings(&all, 0.1, 0.1, kind, 7);
            assert_eq!(s.train.len() + s.valid.len() + s.test.len(), all.len(), "{kind:?}");
            assert!((s.test.len() as i64 - 100).abs() <= 20 && (s.valid.len() as i64 - 100).abs() <= 20, "{kind:?}");
            let key = |r: &Rated| (r.user, r.item, r.rating.to_bits());
            let mut got: Vec<_> = s.train.iter().chain(&s.valid).chain(&s.test).map(key).collect();
            let mut want: Vec<_> = all.iter().map(key).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{kind:?}: not a partition");
            let again = split_ratings(&all, 0.1, 0.1, kind, 7);
            assert_eq!(again.test, s.test, "{kind:?}: same seed, another split");
            assert_ne!(split_ratings(&all, 0.1, 0.1, kind, 8).test, s.test, "{kind:?}: the seed is ignored");
        }
        // Per user: every user's ratings are cut, so each user with 20+ ratings is in the test part.
        let s = split_ratings(&data(), 0.1, 0.1, SplitKind::PerUser, 7);
        for u in 0..37 {
            assert!(s.test.iter().any(|r| r.user == u), "user {u} has no test rating");
        }
    }

    #[test]
    fn a_rating_outside_the_range_names_the_file_and_the_rating() {
        let raw = vec![
            RawRating { user: 1, item: 2, rating: 4.0, timestamp: 0 },
            RawRating { user: 3, item: 2, rating: 6.0, timestamp: 0 },
        ];
        let e = Explicit::from_raw(&raw, (1.0, 5.0), Path::new("u.data")).unwrap_err().to_string();
        assert!(e.contains("u.data") && e.contains("rating 2") && e.contains("6 is outside"), "{e}");
        let ok = Explicit::from_raw(&raw[..1], (1.0, 5.0), Path::new("u.data")).unwrap();
        assert_eq!((ok.n_users(), ok.n_items(), ok.ratings[0].rating), (1, 1, 4.0));
    }
}
