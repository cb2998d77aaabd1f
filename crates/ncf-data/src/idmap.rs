//! Raw ↔ dense id maps. Models index embedding rows `0..n`; datasets name users and movies by
//! arbitrary integers (MovieLens UserID / MovieID). An [`IdMap`] keeps both directions and is
//! saved next to a split (`NAME.user_ids.tsv`, `NAME.item_ids.tsv`) and inside checkpoints,
//! so a trained model can answer in the dataset's own ids.
//!
//! Dense ids are assigned in increasing raw-id order, so the same set of raw ids always gives
//! the same map, whatever the order of the input lines.

use crate::error::{DataError, Result};
use crate::parse::{for_each_line, parse_u64, show};
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    /// `raw[dense]`.
    raw: Vec<u64>,
    index: HashMap<u64, u32>,
}

impl IdMap {
    /// The map of the distinct ids in `ids`, dense ids in increasing raw order.
    pub fn from_raw(ids: impl IntoIterator<Item = u64>) -> Self {
        let mut raw: Vec<u64> = ids.into_iter().collect();
        raw.sort_unstable();
        raw.dedup();
        Self::from_dense_order(raw).expect("sorted and deduplicated")
    }

    /// The map whose dense id `k` is `raw[k]`; `None` if an id repeats or there are more ids
    /// than dense ids (`u32`) can number.
    pub fn from_dense_order(raw: Vec<u64>) -> Option<Self> {
        if u32::try_from(raw.len()).is_err() {
            return None;
        }
        let mut index = HashMap::with_capacity(raw.len());
        for (k, &r) in raw.iter().enumerate() {
            if index.insert(r, k as u32).is_some() {
                return None;
            }
        }
        Some(IdMap { raw, index })
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Dense id of a raw id.
    pub fn dense(&self, raw: u64) -> Option<u32> {
        self.index.get(&raw).copied()
    }

    /// Raw id of a dense id.
    pub fn raw(&self, dense: u32) -> Option<u64> {
        self.raw.get(dense as usize).copied()
    }

    /// Raw ids in dense order.
    pub fn raw_ids(&self) -> &[u64] {
        &self.raw
    }

    /// `dense_id\traw_id` lines under a header line.
    pub fn to_tsv(&self) -> String {
        let mut s = String::with_capacity(16 * self.raw.len() + 16);
        s.push_str("dense_id\traw_id\n");
        for (k, r) in self.raw.iter().enumerate() {
            s.push_str(&format!("{k}\t{r}\n"));
        }
        s
    }

    /// Reads a map written by [`IdMap::to_tsv`], or any TSV whose header is followed by lines
    /// `dense\traw[\t…]` with dense ids `0, 1, 2, …` in order (as in the shared
    /// `ncf-ml-1m/item_id_map.tsv`).
    pub fn read_tsv(path: &Path) -> Result<Self> {
        let mut raw = Vec::new();
        let lines = for_each_line(path, |line, text| {
            if line == 1 {
                return Ok(()); // header
            }
            let mut fields = text.split(|&b| b == b'\t');
            let (d, r) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
            let dense = parse_u64(d).ok_or_else(|| {
                DataError::parse(path, line, "dense_id", format!("`{}` is not a non-negative integer", show(d)))
            })?;
            if dense != raw.len() as u64 {
                return Err(DataError::parse(
                    path,
                    line,
                    "dense_id",
                    format!("expected {} (dense ids must be 0, 1, 2, … in order), got {dense}", raw.len()),
                ));
            }
            let r = parse_u64(r).ok_or_else(|| {
                DataError::parse(path, line, "raw_id", format!("`{}` is not a non-negative integer", show(r)))
            })?;
            raw.push(r);
            Ok(())
        })?;
        if lines == 0 {
            return Err(DataError::invalid(
                path,
                "file is empty (expected a header line, then dense_id\\traw_id lines)",
            ));
        }
        let n = raw.len();
        IdMap::from_dense_order(raw)
            .ok_or_else(|| DataError::invalid(path, format!("a raw id appears twice among the {n} lines")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_ids_follow_raw_order_and_round_trip_through_tsv() {
        let m = IdMap::from_raw([30, 10, 20, 10]);
        assert_eq!(m.len(), 3);
        assert_eq!((m.dense(10), m.dense(20), m.dense(30), m.dense(5)), (Some(0), Some(1), Some(2), None));
        assert_eq!(m.raw(2), Some(30));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ids.tsv");
        std::fs::write(&p, m.to_tsv()).unwrap();
        assert_eq!(IdMap::read_tsv(&p).unwrap(), m);
    }

    #[test]
    fn bad_map_files_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ids.tsv");
        for (body, want) in [
            ("h\n0\t7\n2\t8\n", "ids.tsv:3: field `dense_id`: expected 1"),
            ("h\n0\tx\n", "ids.tsv:2: field `raw_id`"),
            ("h\n0\t7\n1\t7\n", "raw id appears twice"),
            ("", "file is empty"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = IdMap::read_tsv(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
