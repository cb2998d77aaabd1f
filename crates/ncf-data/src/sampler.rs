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
use std::mem::MaybeUninit;

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
    let n = positives.len() * per;
    // The rows are written straight into the buffer's spare capacity, each exactly once, and
    // the length set after: no pass that fills 12 bytes a row with defaults first (60 MB on
    // ML-1M, on one core, every epoch), and a new buffer's pages are first touched by the
    // threads that fill them.
    out.clear();
    out.reserve(n);
    let n_items = positives.n_items as u32;
    let epoch_seed = splitmix64(seed ^ splitmix64(epoch.wrapping_add(0x5eed)));
    // Split the output into per-user blocks, then fill them in parallel.
    let mut blocks: Vec<(usize, &mut [MaybeUninit<Row>])> = Vec::with_capacity(positives.n_users);
    let mut rest: &mut [MaybeUninit<Row>] = &mut out.spare_capacity_mut()[..n];
    for u in 0..positives.n_users {
        let (head, tail) = rest.split_at_mut(positives.of(u).len() * per);
        blocks.push((u, head));
        rest = tail;
    }
    debug_assert!(rest.is_empty(), "the users' blocks cover the rows");
    // The membership test reads a bitmap of the user's items (one load) instead of searching
    // the sorted list (a chain of dependent loads, ~8 for a typical user): the same answers,
    // so the same rows. Each thread keeps one bitmap, sets the user's bits, and clears them
    // after.
    let words = (n_items as usize).div_ceil(64);
    blocks.into_par_iter().for_each_init(
        || vec![0u64; words],
        |bits, (u, block)| {
            let mut rng = seeded(epoch_seed, u as u64);
            let seen = exclude.of(u);
            let can_sample = seen.len() < n_items as usize;
            let seen_in_range = || seen.iter().filter(|&&i| i < n_items);
            for &i in seen_in_range() {
                bits[i as usize / 64] |= 1 << (i % 64);
            }
            for (k, &i) in positives.of(u).iter().enumerate() {
                let rows = &mut block[k * per..(k + 1) * per];
                rows[0].write(Row { user: u as u32, item: i, label: 1.0 });
                for r in &mut rows[1..] {
                    let j = if can_sample {
                        loop {
                            let j = rng.random_range(0..n_items);
                            if bits[j as usize / 64] & (1 << (j % 64)) == 0 {
                                break j;
                            }
                        }
                    } else {
                        i
                    };
                    r.write(Row { user: u as u32, item: j, label: if can_sample { 0.0 } else { 1.0 } });
                }
            }
            for &i in seen_in_range() {
                bits[i as usize / 64] = 0;
            }
        },
    );
    // SAFETY: `out` has capacity for `n` rows (reserved above), and the loop above wrote every
    // one of the first `n`: the users' blocks partition them (`positives.len()` is the sum of
    // the users' counts), and user `u`'s block of `per` rows per positive is written whole.
    unsafe { out.set_len(n) };
    // The shuffle's scratch buffer is kept per calling thread, so later epochs reuse it.
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<Row>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut scratch = SCRATCH.with(|c| c.take());
    parallel_shuffle(out, epoch_seed, &mut scratch);
    SCRATCH.with(|c| c.set(scratch));
}

/// Elements per fixed chunk of the input in [`parallel_shuffle`] (independent of the thread
/// count, so the permutation is too).
const SHUFFLE_CHUNK: usize = 1 << 16;
/// Buckets of [`parallel_shuffle`]; each bucket (~n/256 rows) is shuffled in cache.
const SHUFFLE_BUCKETS: usize = 256;

/// A uniformly random permutation of `rows`, computed in parallel and deterministic for a seed:
///
/// 1. every element draws a bucket uniformly (fixed input chunks, each with its own RNG stream);
/// 2. a counting pass and prefix sums give each (chunk, bucket) pair its output range, and the
///    elements are scattered there, keeping their order;
/// 3. each bucket is Fisher–Yates shuffled with its own stream.
///
/// Uniform: after step 1 every assignment of elements to buckets is as likely as under a
/// uniform permutation cut into buckets of the same sizes, and step 3 makes the order inside
/// each bucket uniform.
pub fn parallel_shuffle(rows: &mut Vec<Row>, seed: u64, scratch: &mut Vec<Row>) {
    let n = rows.len();
    if n < 2 {
        return;
    }
    let chunks = n.div_ceil(SHUFFLE_CHUNK);
    // Step 1: bucket ids, per fixed chunk (the buffer kept per calling thread across epochs).
    thread_local! {
        static BUCKETS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut bucket = BUCKETS.with(|c| c.take());
    bucket.resize(n, 0);
    bucket.par_chunks_mut(SHUFFLE_CHUNK).enumerate().for_each(|(c, b)| {
        let mut rng = seeded(seed, c as u64);
        for x in b {
            *x = rng.random::<u8>();
        }
    });
    // Step 2: counts per (chunk, bucket), then output offsets (bucket-major, chunk-minor).
    let counts: Vec<[usize; SHUFFLE_BUCKETS]> = bucket
        .par_chunks(SHUFFLE_CHUNK)
        .map(|b| {
            let mut c = [0usize; SHUFFLE_BUCKETS];
            for &x in b {
                c[x as usize] += 1;
            }
            c
        })
        .collect();
    let mut offsets = vec![[0usize; SHUFFLE_BUCKETS]; chunks];
    let mut bucket_start = [0usize; SHUFFLE_BUCKETS + 1];
    let mut acc = 0;
    for k in 0..SHUFFLE_BUCKETS {
        bucket_start[k] = acc;
        for c in 0..chunks {
            offsets[c][k] = acc;
            acc += counts[c][k];
        }
    }
    bucket_start[SHUFFLE_BUCKETS] = acc;
    debug_assert_eq!(acc, n, "the counts cover the rows");
    // Written through its spare capacity, every slot once (as in `sample_epoch`).
    scratch.clear();
    scratch.reserve(n);
    {
        // Each chunk writes only its own (chunk, bucket) ranges, which are disjoint.
        let out = SharedRows(scratch.as_mut_ptr());
        rows.par_chunks(SHUFFLE_CHUNK).zip(bucket.par_chunks(SHUFFLE_CHUNK)).zip(offsets.par_iter_mut()).for_each(
            |((r, b), off)| {
                let out = &out;
                for (row, &k) in r.iter().zip(b) {
                    // SAFETY: `off[k]` walks this chunk's private range of bucket k, which
                    // the prefix sums above made disjoint from every other chunk's ranges and
                    // which lies inside `scratch`'s capacity (n, reserved above); each slot is
                    // written exactly once.
                    unsafe { out.0.add(off[k as usize]).write(*row) };
                    off[k as usize] += 1;
                }
            },
        );
    }
    BUCKETS.with(|c| c.set(bucket));
    // SAFETY: the capacity is at least `n` (reserved above), and the scatter wrote each of the
    // first `n` slots exactly once: the (chunk, bucket) ranges partition `[0, n)` (the counts
    // sum to `n`) and each chunk filled its ranges with exactly as many rows as it counted.
    unsafe { scratch.set_len(n) };
    // Step 3: shuffle each bucket in place.
    let mut parts: Vec<(usize, &mut [Row])> = Vec::with_capacity(SHUFFLE_BUCKETS);
    let mut rest: &mut [Row] = scratch;
    for k in 0..SHUFFLE_BUCKETS {
        let (head, tail) = rest.split_at_mut(bucket_start[k + 1] - bucket_start[k]);
        parts.push((k, head));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(k, p)| p.shuffle(&mut seeded(seed ^ 0xb0c4e7, k as u64)));
    std::mem::swap(rows, scratch);
}

/// A raw pointer the scatter step shares across threads (see the SAFETY note there).
struct SharedRows(*mut Row);
// SAFETY: threads write disjoint, in-bounds slots through it and never read.
unsafe impl Sync for SharedRows {}

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

    /// The sampler's reference: user by user on one thread, each draw tested by a binary search
    /// of the user's sorted items (what the bitmap replaced), then the same shuffle.
    fn sample_epoch_naive(positives: &UserItems, exclude: &UserItems, n_neg: usize, seed: u64, epoch: u64) -> Vec<Row> {
        let n_items = positives.n_items as u32;
        let epoch_seed = splitmix64(seed ^ splitmix64(epoch.wrapping_add(0x5eed)));
        let mut out = Vec::new();
        for u in 0..positives.n_users {
            let mut rng = seeded(epoch_seed, u as u64);
            let seen = exclude.of(u);
            let can_sample = seen.len() < n_items as usize;
            for &i in positives.of(u) {
                out.push(Row { user: u as u32, item: i, label: 1.0 });
                for _ in 0..n_neg {
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
                    out.push(Row { user: u as u32, item: j, label: if can_sample { 0.0 } else { 1.0 } });
                }
            }
        }
        parallel_shuffle(&mut out, epoch_seed, &mut Vec::new());
        out
    }

    /// The bitmap's rows are the binary search's, row for row, on one thread (every user after
    /// the first finds the bitmap its predecessor cleared) and on two: users with few and with
    /// many items, one who has every item (no negatives), items 0 and n−1 (a bitmap's edges),
    /// and an exclusion set larger than the positives (a held-out item each).
    #[test]
    fn rows_match_the_binary_search_reference() {
        let (n_users, n_items) = (300u32, 130u32); // three bitmap words, the last one partial
        let mut pairs: Vec<(u32, u32)> = (0..n_items).map(|i| (0, i)).collect(); // user 0 has all
        pairs.extend((0..9000u32).map(|k| (1 + k % (n_users - 2), (k * 37 + k / 9) % n_items)));
        pairs.extend([(n_users - 1, 0), (n_users - 1, n_items - 1)]);
        let positives = UserItems::from_pairs(n_users as usize, n_items as usize, &pairs);
        let mut all = pairs.clone();
        all.extend((1..n_users).map(|u| (u, (u * 11) % n_items)));
        let exclude = UserItems::from_pairs(n_users as usize, n_items as usize, &all);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (epoch, n_neg) in [(0u64, 4usize), (1, 1), (7, 9)] {
                let mut got = Vec::new();
                pool.install(|| sample_epoch(&positives, &exclude, n_neg, 5, epoch, &mut got));
                let want = sample_epoch_naive(&positives, &exclude, n_neg, 5, epoch);
                assert_eq!(got.len(), want.len());
                if let Some(k) = (0..got.len()).find(|&k| got[k] != want[k]) {
                    panic!(
                        "{threads} threads, epoch {epoch}, {n_neg} negatives: row {k} is {:?}, the reference's {:?}",
                        got[k], want[k]
                    );
                }
            }
        }
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

#[cfg(test)]
mod shuffle_tests {
    use super::*;

    fn rows(n: usize) -> Vec<Row> {
        (0..n as u32).map(|k| Row { user: k, item: 0, label: 0.0 }).collect()
    }

    #[test]
    fn shuffle_is_a_permutation_deterministic_across_threads_and_well_mixed() {
        let n = 300_000;
        let run = |t: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            let mut r = rows(n);
            let mut scratch = Vec::new();
            pool.install(|| parallel_shuffle(&mut r, 9, &mut scratch));
            r
        };
        let a = run(1);
        assert_eq!(a, run(2));
        assert_eq!(a, run(3));
        let mut ids: Vec<u32> = a.iter().map(|r| r.user).collect();
        // Mixed: few elements stay in place, and the first tenth of the output draws from the
        // whole input (its mean is near n/2).
        let fixed = ids.iter().enumerate().filter(|(k, v)| *k as u32 == **v).count();
        assert!(fixed < 10, "{fixed} fixed points");
        let head_mean = ids[..n / 10].iter().map(|&v| v as f64).sum::<f64>() / (n / 10) as f64;
        assert!((head_mean / n as f64 - 0.5).abs() < 0.01, "head mean {head_mean}");
        ids.sort_unstable();
        assert!(ids.iter().enumerate().all(|(k, &v)| k as u32 == v), "a permutation");
    }
}
