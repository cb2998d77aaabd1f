//! Movie files (`movies.dat`, ML-100K `u.item`, ml-latest `movies.csv`; the first byte picks
//! the name), then the genre features built from them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((name, body)) = ncf_fuzz::pick(data, &["movies.dat", "u.item", "movies.csv"]) else { return };
    let path = ncf_fuzz::put(name, body);
    if let Ok(movies) = ncf_data::load_item_meta(&path) {
        let ids = ncf_data::IdMap::from_raw(movies.iter().map(|m| m.id));
        let _ = ncf_data::item_features(&movies, &ids, |raw| raw);
    }
});
