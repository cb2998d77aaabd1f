//! User files (`users.dat`, ML-100K `u.user`; the first byte picks the name), then the user
//! features built from them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((name, body)) = ncf_fuzz::pick(data, &["users.dat", "u.user"]) else { return };
    let path = ncf_fuzz::put(name, body);
    if let Ok(users) = ncf_data::load_users(&path) {
        let ids = ncf_data::IdMap::from_raw(users.iter().map(|u| u.id));
        let _ = ncf_data::user_features(&users, &ids, |raw| raw);
    }
});
