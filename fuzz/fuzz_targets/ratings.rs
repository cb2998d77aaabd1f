//! Ratings files (`ratings.dat`, `u.data`, `ratings.csv`; the first byte picks the name), then
//! what `ncf train` does with them: implicit feedback, and the leave-latest-out split with
//! sampled negatives.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ncf_data::{Implicit, leave_latest_out, load_ratings, load_ratings_in_range};

fuzz_target!(|data: &[u8]| {
    let Some((name, body)) = ncf_fuzz::pick(data, &["ratings.dat", "u.data", "ratings.csv"]) else { return };
    let path = ncf_fuzz::put(name, body);
    let _ = load_ratings_in_range(&path, (0.5, 5.0));
    if let Ok(ratings) = load_ratings(&path) {
        let implicit = Implicit::from_ratings(&ratings, Some(4.0));
        let _ = leave_latest_out(&implicit, 3, 7);
        let implicit = Implicit::from_ratings(&ratings, None);
        let _ = leave_latest_out(&implicit, 3, 7);
    }
});
