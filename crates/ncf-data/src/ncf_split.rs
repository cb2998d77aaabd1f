//! The NCF leave-one-out split files (He et al.'s `Data/` folder):
//!
//! * `NAME.train.rating`: `user\titem\trating\ttimestamp`, one interaction per line;
//! * `NAME.test.rating`: the same format, one held-out interaction per user;
//! * `NAME.test.negative`: `(user,item)\tneg₁\t…\tneg₉₉`, line k matching line k of test.rating.
//!
//! Ids are already dense (0-based). As in the reference `Dataset.py`, a training line with
//! rating > 0 is an interaction and timestamps are ignored.
//!
//! **Duplicate pairs** in the training file are kept once (the first line wins) and counted in
//! [`NcfSplit::duplicates`]; the loader does not fail on them, since a repeated interaction
//! carries no new information for implicit feedback.
//!
//! `n_users` and `n_items` are one more than the largest id in the training and test files.
//! A negatives line naming a user or item outside that range is an error: the model would have
//! no embedding for it.

use crate::error::{DataError, Result};
use crate::idmap::IdMap;
use crate::parse::{parse_i64, parse_lines_par, parse_u64, show};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One split, loaded and validated.
#[derive(Clone, Debug)]
pub struct NcfSplit {
    pub name: String,
    pub n_users: usize,
    pub n_items: usize,
    /// Training interactions `(user, item)`, deduplicated, in file order.
    pub train: Vec<(u32, u32)>,
    /// Training lines dropped as repeats of an earlier `(user, item)`.
    pub duplicates: usize,
    /// Held-out interactions, one per line of `test.rating`.
    pub test: Vec<(u32, u32)>,
    /// The sampled negatives of each test line.
    pub negatives: Vec<Vec<u32>>,
    /// Raw ids of the dense user / item ids, when the folder has them (`NAME.user_ids.tsv`,
    /// `NAME.item_ids.tsv`, or the shared `item_id_map.tsv` of the canonical ML-1M split).
    pub user_ids: Option<IdMap>,
    pub item_ids: Option<IdMap>,
}

/// The three files of a split.
#[derive(Clone, Debug)]
pub struct SplitFiles {
    pub name: String,
    pub train: PathBuf,
    pub test: PathBuf,
    pub negative: PathBuf,
    pub user_ids: Option<PathBuf>,
    pub item_ids: Option<PathBuf>,
}

impl SplitFiles {
    /// Finds `NAME.train.rating`, `NAME.test.rating` and `NAME.test.negative` in `dir`. NAME
    /// comes from the one `NAME.train.rating`, or, when there is none, from the one NAME of the
    /// other two files; a missing file is named (`toy.test.negative is missing`).
    pub fn find(dir: &Path) -> Result<Self> {
        const SUFFIXES: [&str; 3] = ["train.rating", "test.rating", "test.negative"];
        let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
        // Names seen per suffix, in the order of SUFFIXES.
        let mut seen: [Vec<String>; 3] = Default::default();
        for e in entries {
            let e = e.map_err(|e| DataError::io(dir, e))?;
            let Some(file) = e.file_name().to_str().map(str::to_string) else { continue };
            for (k, suffix) in SUFFIXES.iter().enumerate() {
                if let Some(name) = file.strip_suffix(suffix).and_then(|f| f.strip_suffix('.')) {
                    seen[k].push(name.to_string());
                }
            }
        }
        let [mut names, mut others, negatives] = seen;
        if names.is_empty() {
            // No training file: take NAME from the test files, to say which file is missing.
            others.extend(negatives);
            names = others;
        }
        names.sort();
        names.dedup();
        let name = match names.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(DataError::invalid(
                    dir,
                    "no NAME.train.rating file here (expected the NCF split files NAME.train.rating, NAME.test.rating, NAME.test.negative)",
                ));
            }
            many => {
                return Err(DataError::invalid(
                    dir,
                    format!("several splits here ({}); point at a folder with one", many.join(", ")),
                ));
            }
        };
        let f = |suffix: &str| dir.join(format!("{name}.{suffix}"));
        let missing: Vec<String> = SUFFIXES.iter().filter(|s| !f(s).is_file()).map(|s| format!("{name}.{s}")).collect();
        if !missing.is_empty() {
            let verb = if missing.len() == 1 { "is" } else { "are" };
            return Err(DataError::invalid(
                dir,
                format!(
                    "{} {verb} missing (an NCF split needs {name}.train.rating, {name}.test.rating and {name}.test.negative)",
                    missing.join(" and ")
                ),
            ));
        }
        let opt = |p: PathBuf| Some(p).filter(|p| p.is_file());
        Ok(SplitFiles {
            train: f("train.rating"),
            test: f("test.rating"),
            negative: f("test.negative"),
            user_ids: opt(f("user_ids.tsv")),
            item_ids: opt(f("item_ids.tsv")).or_else(|| opt(dir.join("item_id_map.tsv"))),
            name,
        })
    }
}

/// The largest id a split may hold: ids index embedding tables' rows, and the GPU kernels take
/// 32-bit signed row counts (a larger id would also ask for a table of that many rows).
pub const MAX_ID: u64 = i32::MAX as u64;

fn id_of(v: u64) -> Option<u32> {
    (v <= MAX_ID).then_some(v as u32)
}

/// A split's ids are row numbers of its embedding tables, so a sparse id space would allocate
/// rows that no line uses. Past this many rows, a table may hold at most twice as many rows as
/// the training and test files have lines (a dense split has at most one row per line).
pub const MAX_SPARSE_ROWS: usize = 1 << 20;

/// One line of a rating file: its ids, its line number and whether its rating is above zero.
#[derive(Clone, Copy)]
struct RatingRow {
    user: u32,
    item: u32,
    /// 1-based; a file has at most `i32::MAX` lines ([`crate::max_lines`]).
    line: u32,
    positive: bool,
}

/// A rating file's rows, and where its largest user and item ids are: `(id, line)`.
struct RatingRows {
    rows: Vec<RatingRow>,
    max_user: (u32, usize),
    max_item: (u32, usize),
}

/// Parses `user\titem\trating\ttimestamp` lines (rating and timestamp are checked, then only
/// whether the rating is above zero is kept), on rayon's threads ([`parse_lines_par`]).
fn parse_rating_file(path: &Path) -> Result<RatingRows> {
    let rows = parse_lines_par(path, |line, text| {
        if text.is_empty() {
            return Ok(None);
        }
        let mut fields = text.split(|&b| b == b'\t');
        let mut next = |name: &'static str| {
            fields.next().ok_or_else(|| {
                DataError::parse(path, line, name, "missing (expected user\\titem\\trating\\ttimestamp)")
            })
        };
        let (u, i, r, t) = (next("user")?, next("item")?, next("rating")?, next("timestamp")?);
        let id = |field: &[u8], name: &'static str| -> Result<u32> {
            parse_u64(field).and_then(id_of).ok_or_else(|| {
                DataError::parse(path, line, name, format!("`{}` is not an integer id in 0..=2147483647", show(field)))
            })
        };
        let (user, item) = (id(u, "user")?, id(i, "item")?);
        let rating = crate::parse::parse_f64(r)
            .ok_or_else(|| DataError::parse(path, line, "rating", format!("`{}` is not a number", show(r))))?;
        parse_i64(t)
            .ok_or_else(|| DataError::parse(path, line, "timestamp", format!("`{}` is not an integer", show(t))))?;
        if fields.next().is_some() {
            return Err(DataError::parse(path, line, "timestamp", "extra fields after the timestamp"));
        }
        Ok(Some(RatingRow { user, item, line: line as u32, positive: rating > 0.0 }))
    })?;
    if rows.is_empty() {
        return Err(DataError::invalid(path, "file is empty"));
    }
    // The first line holding the largest id.
    let (mut max_user, mut max_item) = ((rows[0].user, rows[0].line as usize), (rows[0].item, rows[0].line as usize));
    for r in &rows {
        if r.user > max_user.0 {
            max_user = (r.user, r.line as usize);
        }
        if r.item > max_item.0 {
            max_item = (r.item, r.line as usize);
        }
    }
    Ok(RatingRows { rows, max_user, max_item })
}

/// One parsed line of a negatives file.
struct NegativeLine {
    line: usize,
    user: u32,
    item: u32,
    negatives: Vec<u32>,
}

/// Parses `(user,item)\tneg…` lines, on rayon's threads ([`parse_lines_par`]).
fn parse_negative_file(path: &Path) -> Result<Vec<NegativeLine>> {
    let out = parse_lines_par(path, |line, text| {
        if text.is_empty() {
            return Ok(None);
        }
        let mut fields = text.split(|&b| b == b'\t');
        let head = fields.next().unwrap_or_default();
        let pair = head.strip_prefix(b"(").and_then(|h| h.strip_suffix(b")")).ok_or_else(|| {
            DataError::parse(path, line, "(user,item)", format!("`{}` is not of the form (user,item)", show(head)))
        })?;
        let mut parts = pair.split(|&b| b == b',');
        let mut id = |name: &'static str| -> Result<u32> {
            let f = parts.next().unwrap_or_default();
            parse_u64(f).and_then(id_of).ok_or_else(|| {
                DataError::parse(path, line, name, format!("`{}` is not an integer id in 0..=2147483647", show(f)))
            })
        };
        let (u, i) = (id("user")?, id("item")?);
        let negs = fields
            .enumerate()
            .map(|(k, f)| {
                parse_u64(f).and_then(id_of).ok_or_else(|| {
                    DataError::parse(
                        path,
                        line,
                        "negative",
                        format!("negative #{} `{}` is not an item id", k + 1, show(f)),
                    )
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Some(NegativeLine { line, user: u, item: i, negatives: negs }))
    })?;
    if out.is_empty() {
        return Err(DataError::invalid(path, "file is empty"));
    }
    Ok(out)
}

/// The (user, item) pairs seen so far, to drop repeated training pairs. A bitmap of the
/// `users × items` grid when it is small (ML-1M's is 2.8 MB; with it, loading the ML-1M split
/// went from 0.24–0.30 s to 0.14–0.15 s against a `HashSet`, BENCHMARKS.md), a `HashSet` when
/// the grid is too large for a bitmap to pay.
enum PairSet {
    Bits { items: usize, words: Vec<u64> },
    Hash(HashSet<(u32, u32)>),
}

impl PairSet {
    /// A grid of at most this many cells gets a bitmap (32 MB).
    const MAX_BITS: usize = 1 << 28;

    fn new(users: usize, items: usize, expected: usize) -> Self {
        match users.checked_mul(items) {
            Some(cells) if cells <= Self::MAX_BITS => PairSet::Bits { items, words: vec![0; cells.div_ceil(64)] },
            _ => PairSet::Hash(HashSet::with_capacity(expected)),
        }
    }

    /// Adds the pair; `true` if it was not there yet (as `HashSet::insert`).
    fn insert(&mut self, u: u32, i: u32) -> bool {
        match self {
            PairSet::Bits { items, words } => {
                let cell = u as usize * *items + i as usize;
                let (w, bit) = (cell / 64, 1u64 << (cell % 64));
                let new = words[w] & bit == 0;
                words[w] |= bit;
                new
            }
            PairSet::Hash(set) => set.insert((u, i)),
        }
    }
}

impl NcfSplit {
    /// Loads the split in `dir` (see [`SplitFiles::find`]).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_files(&SplitFiles::find(dir)?)
    }

    pub fn load_files(files: &SplitFiles) -> Result<Self> {
        let train_file = parse_rating_file(&files.train)?;
        let test_file = parse_rating_file(&files.test)?;
        // The tables' sizes, checked before anything of that size is allocated.
        let lines = train_file.rows.len() + test_file.rows.len();
        let mut rows = [0usize; 2];
        for (k, what) in ["user", "item"].into_iter().enumerate() {
            let max_of = |f: &RatingRows| if k == 0 { f.max_user } else { f.max_item };
            let (path, (id, line)) = if max_of(&train_file).0 >= max_of(&test_file).0 {
                (&files.train, max_of(&train_file))
            } else {
                (&files.test, max_of(&test_file))
            };
            rows[k] = id as usize + 1;
            if rows[k] > MAX_SPARSE_ROWS && rows[k] > 2 * lines {
                return Err(DataError::limit(
                    path,
                    line,
                    format!("{what} id {id}, a table of {} rows for {lines} training and test lines,", rows[k]),
                    format!(
                        "{MAX_SPARSE_ROWS} rows or 2 per line (MAX_SPARSE_ROWS): a split's ids are row numbers, \
                         so renumber them densely, or give the raw ratings and let ncf-rs map the ids"
                    ),
                ));
            }
        }
        let [n_users, n_items] = rows;
        let (train_rows, test_rows) = (train_file.rows, test_file.rows);
        let neg_rows = parse_negative_file(&files.negative)?;

        let mut seen = PairSet::new(n_users, n_items, train_rows.len());
        let mut train = Vec::with_capacity(train_rows.len());
        let mut duplicates = 0;
        for &RatingRow { user: u, item: i, positive, .. } in &train_rows {
            if !positive {
                continue;
            }
            if seen.insert(u, i) {
                train.push((u, i));
            } else {
                duplicates += 1;
            }
        }
        let test: Vec<(u32, u32)> = test_rows.iter().map(|r| (r.user, r.item)).collect();

        if neg_rows.len() != test.len() {
            return Err(DataError::invalid(
                &files.negative,
                format!(
                    "{} lines, but {} has {} lines (they must match line for line)",
                    neg_rows.len(),
                    files.test.display(),
                    test.len()
                ),
            ));
        }
        let mut negatives = Vec::with_capacity(neg_rows.len());
        for (NegativeLine { line, user: u, item: i, negatives: negs }, &(tu, ti)) in neg_rows.into_iter().zip(&test) {
            if (u, i) != (tu, ti) {
                return Err(DataError::parse(
                    &files.negative,
                    line,
                    "(user,item)",
                    format!("({u},{i}) does not match line {line} of the test file, ({tu},{ti})"),
                ));
            }
            if u as usize >= n_users {
                return Err(DataError::parse(
                    &files.negative,
                    line,
                    "user",
                    format!("unknown user {u} (the training and test files know users 0..{})", n_users - 1),
                ));
            }
            if let Some(&bad) = negs.iter().find(|&&j| j as usize >= n_items) {
                return Err(DataError::parse(
                    &files.negative,
                    line,
                    "negative",
                    format!("unknown item {bad} (the training and test files know items 0..{})", n_items - 1),
                ));
            }
            negatives.push(negs);
        }
        let read_map = |p: &Option<PathBuf>, n: usize, what: &str| -> Result<Option<IdMap>> {
            let Some(p) = p else { return Ok(None) };
            let m = IdMap::read_tsv(p)?;
            if m.len() < n {
                return Err(DataError::invalid(
                    p,
                    format!("maps {} {what} ids, but the split uses {what}s 0..{}", m.len(), n - 1),
                ));
            }
            Ok(Some(m))
        };
        let user_ids = read_map(&files.user_ids, n_users, "user")?;
        let item_ids = read_map(&files.item_ids, n_items, "item")?;
        Ok(NcfSplit {
            name: files.name.clone(),
            n_users,
            n_items,
            train,
            duplicates,
            test,
            negatives,
            user_ids,
            item_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bitmap and the hash set agree on which pairs are new, for repeats, the grid's
    /// corners and a grid whose size is not a multiple of 64; a grid too large for a bitmap
    /// takes the hash set.
    #[test]
    fn pair_set_bitmap_matches_hash_set() {
        let (users, items) = (37usize, 29usize);
        let mut bits = PairSet::new(users, items, 0);
        let mut hash = PairSet::Hash(HashSet::new());
        assert!(matches!(bits, PairSet::Bits { .. }));
        let mut x = 12345u64;
        let mut pairs = vec![(0, 0), (36, 28), (0, 28), (36, 0), (0, 0), (36, 28)];
        for _ in 0..3000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            pairs.push(((x >> 33) as u32 % users as u32, (x >> 13) as u32 % items as u32));
        }
        let (mut new_bits, mut new_hash) = (0, 0);
        for &(u, i) in &pairs {
            let (a, b) = (bits.insert(u, i), hash.insert(u, i));
            assert_eq!(a, b, "pair ({u},{i})");
            new_bits += usize::from(a);
            new_hash += usize::from(b);
        }
        assert_eq!(new_bits, new_hash);
        assert!(new_bits < pairs.len(), "the pairs repeat");
        assert!(matches!(PairSet::new(1 << 20, 1 << 20, 8), PairSet::Hash(_)));
        assert!(matches!(PairSet::new(usize::MAX, 2, 8), PairSet::Hash(_)));
    }
}
