//! Stateless epoch sampling: any slot of an epoch's shuffled rows, computed from the epoch's
//! keys and the slot number alone. This is how a GPU samples without sorting and without
//! storing the epoch: each thread of the `sample_batch` kernel (`kernels/sample.cu`) runs
//! [`row_at`] for one batch slot, and `CpuBackend::sample_batch` runs these very functions, so
//! the two agree bit for bit (integer arithmetic only).
//!
//! An epoch has `R = P·(1 + n_neg)` rows: each of the `P` training positives, followed by
//! `n_neg` negatives drawn for its user. Row `r` belongs to positive `p = r / (1+n_neg)`; its
//! part `j = r % (1+n_neg)` is the positive itself (`j = 0`) or a negative.
//!
//! * **Shuffle.** Slot `s` of the epoch holds row `permute(s)`, a bijection of `[0, R)`: a
//!   4-round Feistel network on the smallest even-bit domain `2^{2h} ≥ R`, with cycle-walking
//!   (apply again until the value falls below `R`; the domain is under `4R`, so under 4 tries
//!   on average). A bijection means every row appears exactly once per epoch.
//! * **Negatives**, under the same exactness rule as the host sampler (`ncf-data`): an item the
//!   user has interacted with (`known`: the training file, including any validation holdout)
//!   is never a negative. Candidates are drawn by rejection with a counter-based hash of
//!   `(key, r, attempt)` and tested by binary search in the user's sorted items. A user who has
//!   every item gets the positive again, labelled 1, as on the host.
//! * **Uniformity.** A 32-bit hash is mapped to `[0, n_items)` by multiply-shift, whose bias is
//!   below `n_items / 2³²` (under 1e-6 for ML-1M's 3,706 items).
//!
//! The host sampler (`ncf_data::sample_epoch`: per-user ChaCha streams and a bucket shuffle)
//! draws different but equally valid epochs; the CPU trainer uses it, the GPU trainer this.

use crate::rng::splitmix64;
use crate::{Backend, Error, Result};

/// Per-epoch keys: one for the shuffle, one for the negative draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochKeys {
    pub perm: u64,
    pub draw: u64,
}

impl EpochKeys {
    pub fn new(seed: u64, epoch: u64) -> Self {
        let e = splitmix64(seed ^ splitmix64(epoch ^ 0x5eed_0000_0000_0001));
        EpochKeys { perm: splitmix64(e ^ 0x7065_726d), draw: splitmix64(e ^ 0x6472_6177) }
    }

    /// The keys as four u32 words (`perm` low, high, `draw` low, high): the layout the device
    /// sampler reads them in, after the step counter.
    pub fn words(&self) -> [u32; 4] {
        [self.perm as u32, (self.perm >> 32) as u32, self.draw as u32, (self.draw >> 32) as u32]
    }
}

/// Half the bit width of the Feistel domain for `n` values: the smallest `h` with `4^h ≥ n`.
pub fn half_bits(n: u64) -> u32 {
    let bits = 64 - n.saturating_sub(1).leading_zeros(); // ⌈log₂ n⌉
    bits.div_ceil(2).max(1)
}

/// One pass of the 4-round Feistel network on `[0, 4^h)`.
fn feistel(x: u64, h: u32, key: u64) -> u64 {
    let mask = (1u64 << h) - 1;
    let (mut l, mut r) = (x >> h, x & mask);
    for round in 0..4u64 {
        let f = splitmix64(r ^ key.wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15))) & mask;
        (l, r) = (r, l ^ f);
    }
    (l << h) | r
}

/// A bijection of `[0, n)` (`s < n`), keyed by `key`.
pub fn permute(s: u64, n: u64, key: u64) -> u64 {
    let h = half_bits(n);
    let mut x = feistel(s, h, key);
    while x >= n {
        x = feistel(x, h, key);
    }
    x
}

/// Uniform-ish draw in `[0, n)` from a hash (multiply-shift on the high 32 bits).
pub fn draw_below(hash: u64, n: u32) -> u32 {
    (((hash >> 32) * n as u64) >> 32) as u32
}

/// Whether sorted `items` holds `x`.
pub fn contains_sorted(items: &[u32], x: u32) -> bool {
    let (mut lo, mut hi) = (0usize, items.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if items[mid] < x { lo = mid + 1 } else { hi = mid }
    }
    lo < items.len() && items[lo] == x
}

/// The largest `u` with `offsets[u] ≤ p` (the user owning flat position `p` of a CSR whose
/// `offsets` has `U + 1` entries); empty users are skipped.
pub fn owner(offsets: &[u32], p: u32) -> usize {
    let (mut lo, mut hi) = (0usize, offsets.len() - 1);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if offsets[mid] <= p { lo = mid } else { hi = mid }
    }
    lo
}

/// The tables an epoch is sampled from, as CSRs with u32 offsets (what a device holds).
#[derive(Clone, Copy, Debug)]
pub struct Csrs<'a> {
    /// Training positives: `train_items[train_off[u]..train_off[u+1]]` are user `u`'s.
    pub train_off: &'a [u32],
    pub train_items: &'a [u32],
    /// Everything each user interacted with (sorted per user): never drawn as a negative.
    pub known_off: &'a [u32],
    pub known_items: &'a [u32],
    pub n_items: u32,
    pub n_neg: u32,
}

impl Csrs<'_> {
    /// Rows in one epoch: `P·(1 + n_neg)`.
    pub fn rows(&self) -> u64 {
        self.train_items.len() as u64 * (1 + self.n_neg as u64)
    }
}

/// Row `r` of the (unshuffled) epoch: `(user, item, label)`.
pub fn row(c: &Csrs<'_>, draw_key: u64, r: u64) -> (u32, u32, f32) {
    let per = 1 + c.n_neg as u64;
    let (p, j) = ((r / per) as u32, r % per);
    let u = owner(c.train_off, p);
    let pos = c.train_items[p as usize];
    if j == 0 {
        return (u as u32, pos, 1.0);
    }
    let seen = &c.known_items[c.known_off[u] as usize..c.known_off[u + 1] as usize];
    if seen.len() as u64 >= c.n_items as u64 {
        return (u as u32, pos, 1.0);
    }
    let base = splitmix64(draw_key ^ r);
    let mut attempt = 0u64;
    loop {
        let cand = draw_below(splitmix64(base.wrapping_add(attempt)), c.n_items);
        if !contains_sorted(seen, cand) {
            return (u as u32, cand, 0.0);
        }
        attempt += 1;
    }
}

/// Slot `s` of the shuffled epoch: [`row`] of `permute(s)`.
pub fn row_at(c: &Csrs<'_>, keys: &EpochKeys, s: u64) -> (u32, u32, f32) {
    row(c, keys.draw, permute(s, c.rows(), keys.perm))
}

/// The sampling tables on a device: uploaded once per run, read by every
/// [`Backend::sample_batch`].
pub struct SampleTables<B: Backend> {
    pub train_off: B::Ids,
    pub train_items: B::Ids,
    pub known_off: B::Ids,
    pub known_items: B::Ids,
    pub n_users: usize,
    pub n_items: usize,
    pub n_neg: usize,
    /// Training positives `P`.
    pub positives: usize,
}

impl<B: Backend> SampleTables<B> {
    /// Uploads two CSRs over the same `n_users` users (offsets have `n_users + 1` entries;
    /// each user's items sorted; `known` ⊇ `train`). Sizes must fit the u32 offsets devices use.
    pub fn upload(
        be: &B,
        train: (&[usize], &[u32]),
        known: (&[usize], &[u32]),
        n_items: usize,
        n_neg: usize,
    ) -> Result<Self> {
        const OP: &str = "SampleTables::upload";
        let (n_users, positives) = (train.0.len().saturating_sub(1), train.1.len());
        if known.0.len() != train.0.len() {
            return Err(Error::invalid(OP, "known", "the two CSRs must cover the same users"));
        }
        let rows = positives as u128 * (1 + n_neg as u128);
        if known.1.len() > u32::MAX as usize || positives > u32::MAX as usize || rows > u64::MAX as u128 >> 1 {
            return Err(Error::invalid(OP, "train", format!("{positives} positives exceed the samplers' u32 offsets")));
        }
        if n_items == 0 || n_items > u32::MAX as usize {
            return Err(Error::invalid(OP, "n_items", format!("{n_items} items")));
        }
        let ids = |v: &[u32]| -> Result<B::Ids> {
            let mut d = be.zeros_ids(v.len().max(1))?;
            be.write_ids(&mut d, v)?;
            Ok(d)
        };
        let off = |o: &[usize]| o.iter().map(|&x| x as u32).collect::<Vec<u32>>();
        Ok(SampleTables {
            train_off: ids(&off(train.0))?,
            train_items: ids(train.1)?,
            known_off: ids(&off(known.0))?,
            known_items: ids(known.1)?,
            n_users,
            n_items,
            n_neg,
            positives,
        })
    }

    /// Rows in one epoch: `P·(1 + n_neg)`.
    pub fn rows(&self) -> u64 {
        self.positives as u64 * (1 + self.n_neg as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_a_bijection_for_many_sizes_and_keys_change_it() {
        for n in [1u64, 2, 3, 5, 17, 64, 65, 1000, 4097, 30_001] {
            let mut seen = vec![false; n as usize];
            for s in 0..n {
                let x = permute(s, n, 99);
                assert!(x < n && !seen[x as usize], "n={n} s={s} x={x}");
                seen[x as usize] = true;
            }
        }
        let a: Vec<u64> = (0..1000).map(|s| permute(s, 1000, 1)).collect();
        let b: Vec<u64> = (0..1000).map(|s| permute(s, 1000, 2)).collect();
        assert_ne!(a, b);
        // Well mixed: few fixed points, and the first tenth draws from the whole range.
        let fixed = a.iter().enumerate().filter(|(s, x)| *s as u64 == **x).count();
        assert!(fixed < 10, "{fixed} fixed points");
        let n = 100_000u64;
        let head: f64 = (0..n / 10).map(|s| permute(s, n, 5) as f64).sum::<f64>() / (n / 10) as f64;
        assert!((head / n as f64 - 0.5).abs() < 0.01, "head mean {head}");
    }

    #[test]
    fn owner_finds_the_user_of_a_position_skipping_empty_users() {
        let off = [0u32, 2, 2, 5, 6];
        let owners: Vec<usize> = (0..6).map(|p| owner(&off, p)).collect();
        assert_eq!(owners, vec![0, 0, 2, 2, 2, 3]);
    }

    fn toy() -> (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>) {
        // 3 users, 6 items. Train: u0 {1,2}, u1 {} , u2 {0,3,4}. Known adds u0's holdout 5, and
        // user 2 has seen every item but one (5).
        let train_off = vec![0, 2, 2, 5];
        let train_items = vec![1, 2, 0, 3, 4];
        let known_off = vec![0, 3, 3, 8];
        let known_items = vec![1, 2, 5, 0, 1, 2, 3, 4];
        (train_off, train_items, known_off, known_items)
    }

    #[test]
    fn an_epoch_holds_every_positive_once_and_only_unseen_negatives() {
        let (to, ti, ko, ki) = toy();
        let c = Csrs { train_off: &to, train_items: &ti, known_off: &ko, known_items: &ki, n_items: 6, n_neg: 4 };
        let keys = EpochKeys::new(7, 1);
        let rows: Vec<_> = (0..c.rows()).map(|s| row_at(&c, &keys, s)).collect();
        assert_eq!(rows.len(), 25);
        let mut pos: Vec<(u32, u32)> = rows.iter().filter(|r| r.2 == 1.0).map(|r| (r.0, r.1)).collect();
        pos.sort_unstable();
        assert_eq!(pos, vec![(0, 1), (0, 2), (2, 0), (2, 3), (2, 4)]);
        for &(u, i, y) in rows.iter().filter(|r| r.2 == 0.0) {
            let seen = &ki[ko[u as usize] as usize..ko[u as usize + 1] as usize];
            assert!(!seen.contains(&i), "user {u} got seen item {i} as a negative (label {y})");
        }
        // User 2's only unseen item is 5: all 12 of its negatives are 5.
        assert_eq!(rows.iter().filter(|r| r.0 == 2 && r.2 == 0.0 && r.1 == 5).count(), 12);
        // Another epoch shuffles differently.
        let other = EpochKeys::new(7, 2);
        assert_ne!(rows, (0..c.rows()).map(|s| row_at(&c, &other, s)).collect::<Vec<_>>());
    }

    #[test]
    fn a_user_with_every_item_gets_positives_only() {
        let (to, ti) = (vec![0u32, 2], vec![0u32, 1]);
        let (ko, ki) = (vec![0u32, 2], vec![0u32, 1]);
        let c = Csrs { train_off: &to, train_items: &ti, known_off: &ko, known_items: &ki, n_items: 2, n_neg: 3 };
        let keys = EpochKeys::new(1, 1);
        assert!((0..c.rows()).all(|s| row_at(&c, &keys, s).2 == 1.0));
    }

    #[test]
    fn negatives_are_uniform_over_unseen_items() {
        // One user who has seen items 0..10 of 50: negatives spread evenly over the other 40.
        let to = vec![0u32, 1000];
        let ti: Vec<u32> = (0..1000).map(|k| k % 10).collect();
        let ko = vec![0u32, 10];
        let ki: Vec<u32> = (0..10).collect();
        let c = Csrs { train_off: &to, train_items: &ti, known_off: &ko, known_items: &ki, n_items: 50, n_neg: 40 };
        let keys = EpochKeys::new(3, 1);
        let mut counts = [0u32; 50];
        for s in 0..c.rows() {
            let (_, i, y) = row_at(&c, &keys, s);
            if y == 0.0 {
                counts[i as usize] += 1;
            }
        }
        assert!(counts[..10].iter().all(|&k| k == 0));
        // 40,000 draws over 40 items: 1000 each, σ ≈ 31; allow 5σ.
        for (i, &k) in counts.iter().enumerate().skip(10) {
            assert!((k as f64 - 1000.0).abs() < 160.0, "item {i}: {k} draws");
        }
    }
}
