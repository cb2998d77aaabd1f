//! Training on the real NCF MovieLens-1M split (found through `NCF_DATA`; prints `skipped:`
//! when it is unset, fails when it is unset under `NCF_REQUIRE_DATA=1` or names a folder without
//! the files: `ncf_core::testenv::data_dir`). Two epochs of NeuMF-8 must reach a test HR@10 that
//! a broken model cannot.

use ncf_core::testenv::data_dir;
use ncf_data::NcfSplit;
use ncf_train::{Prepared, TrainConfig, train};
use std::path::PathBuf;

#[track_caller]
fn split_dir() -> Option<PathBuf> {
    data_dir("ncf-ml-1m")
}

#[test]
fn canonical_split_loads_with_the_documented_counts() {
    let Some(dir) = split_dir() else { return };
    let s = NcfSplit::load(&dir).unwrap();
    assert_eq!((s.n_users, s.n_items), (6040, 3706));
    assert_eq!(s.train.len(), 994_169);
    assert_eq!(s.duplicates, 0);
    assert_eq!(s.test.len(), 6040);
    assert!(s.negatives.iter().all(|n| n.len() == 99));
    // The documented quirk: 156 users have their test item among their "negatives".
    let overlap = s.test.iter().zip(&s.negatives).filter(|((_, i), n)| n.contains(i)).count();
    assert_eq!(overlap, 156);
}

#[test]
fn neumf8_two_epochs_reaches_hr_0_60() {
    let Some(dir) = split_dir() else { return };
    let split = NcfSplit::load(&dir).unwrap();
    let data = Prepared::from_split(&split, 42);
    let cfg = TrainConfig { epochs: 2, ..TrainConfig::default() };
    let s = train(&cfg, &data, None, |r| println!("{r:?}")).unwrap().summary;
    println!("test HR@10 {:.4} NDCG@10 {:.4} after {} epochs", s.test_hr, s.test_ndcg, s.epochs_run);
    assert_eq!(s.epochs_run, 2);
    assert!(s.test_hr >= 0.60, "HR@10 {:.4} < 0.60: the model is not learning", s.test_hr);
    assert!(s.test_ndcg >= 0.33, "NDCG@10 {:.4}", s.test_ndcg);
}

/// The canonical split's derived `item_id_map.tsv` is picked up as the item id map.
#[test]
fn canonical_split_maps_items_to_movielens_ids() {
    let Some(dir) = split_dir() else { return };
    let s = NcfSplit::load(&dir).unwrap();
    let items = s.item_ids.expect("item_id_map.tsv");
    assert_eq!(items.len(), 3706);
    assert_eq!(items.raw(0), Some(1193), "NCF item 0 is One Flew Over the Cuckoo's Nest");
    assert!(s.user_ids.is_none());
}

/// The raw MovieLens files: ML-1M movies (Latin-1) and users, ML-100K `u.data`, ml-latest-small
/// `ratings.csv`, each with its documented counts, and their leave-latest-out splits.
#[test]
fn movielens_files_load_with_their_documented_counts() {
    let Some(root) = data_dir("") else { return };
    let movies = ncf_data::load_movies(&root.join("ml-1m/movies.dat")).unwrap();
    assert_eq!(movies.len(), 3883);
    let m73 = movies.iter().find(|m| m.id == 73).unwrap();
    assert_eq!(m73.title, "Mis\u{e9}rables, Les (1995)", "Latin-1 é");
    assert_eq!(m73.year, Some(1995));
    assert_eq!(m73.genres, vec!["Drama", "Musical"]);
    let users = ncf_data::load_users(&root.join("ml-1m/users.dat")).unwrap();
    assert_eq!(users.len(), 6040);
    assert_eq!((users[0].gender, users[0].age, users[0].occupation), ('F', 1, 10));

    for (file, ratings, n_users, n_items) in
        [("ml-100k/u.data", 100_000, 943, 1682), ("ml-latest-small/ratings.csv", 100_836, 610, 9724)]
    {
        let r = ncf_data::load_ratings(&root.join(file)).unwrap();
        assert_eq!(r.len(), ratings, "{file}");
        let data = ncf_data::Implicit::from_ratings(&r, None);
        assert_eq!((data.users.len(), data.items.len(), data.duplicates), (n_users, n_items, 0), "{file}");
        let s = ncf_data::leave_latest_out(&data, 99, 42);
        assert_eq!(s.test.len(), n_users, "{file}: every user has ≥ 2 ratings");
        assert_eq!(s.train.len() + s.test.len(), ratings);
        // The test item is each user's latest.
        for t in &s.test {
            let latest = data.rows.iter().filter(|x| x.user == t.user).map(|x| x.timestamp).max().unwrap();
            assert_eq!(t.timestamp, latest, "{file}");
        }
    }
    // Binarization at 4 stars keeps 48,580 of ml-latest-small's ratings.
    let r = ncf_data::load_ratings(&root.join("ml-latest-small/ratings.csv")).unwrap();
    let pos = ncf_data::Implicit::from_ratings(&r, Some(4.0));
    assert_eq!((pos.rows.len(), pos.below_threshold), (48_580, 52_256));
}
