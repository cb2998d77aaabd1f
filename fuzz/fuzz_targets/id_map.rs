//! An id map (`NAME.item_ids.tsv`, `item_id_map.tsv`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = ncf_fuzz::put("toy.item_ids.tsv", data);
    if let Ok(m) = ncf_data::IdMap::read_tsv(&path) {
        // What is read back is what would be written.
        let again = ncf_fuzz::put("again.tsv", m.to_tsv().as_bytes());
        assert_eq!(ncf_data::IdMap::read_tsv(&again).ok().as_ref(), Some(&m));
    }
});
