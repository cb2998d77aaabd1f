//! An NCF split folder: the input is its files joined by NUL bytes, `train.rating`,
//! `test.rating`, `test.negative`, then optionally `user_ids.tsv` and `item_ids.tsv`.
#![no_main]
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 5] =
    ["toy.train.rating", "toy.test.rating", "toy.test.negative", "toy.user_ids.tsv", "toy.item_ids.tsv"];

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.splitn(FILES.len(), |&b| b == 0).collect();
    for (k, name) in FILES.iter().enumerate() {
        match parts.get(k) {
            Some(p) => drop(ncf_fuzz::put(name, p)),
            None => ncf_fuzz::remove(name),
        }
    }
    if let Ok(split) = ncf_data::NcfSplit::load(ncf_fuzz::scratch()) {
        // The loader's promises: every id it hands on indexes the tables it sizes.
        assert!(
            split
                .train
                .iter()
                .chain(&split.test)
                .all(|&(u, i)| (u as usize) < split.n_users && (i as usize) < split.n_items)
        );
        assert!(split.negatives.iter().flatten().all(|&i| (i as usize) < split.n_items));
        assert_eq!(split.negatives.len(), split.test.len());
    }
});
