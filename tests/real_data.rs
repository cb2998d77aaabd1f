//! Training on the real NCF MovieLens-1M split (found through `NCF_DATA`; prints `skipped:`
//! when it is unset). Two epochs of NeuMF-8 must reach a test HR@10 that a broken model cannot.

use ncf_data::NcfSplit;
use ncf_train::{Prepared, TrainConfig, train};
use std::path::PathBuf;

fn split_dir() -> Option<PathBuf> {
    match std::env::var_os("NCF_DATA") {
        Some(d) => Some(PathBuf::from(d).join("ncf-ml-1m")),
        None => {
            println!("skipped: NCF_DATA is unset");
            None
        }
    }
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
    let s = train(&cfg, &data, |r| println!("{r:?}")).unwrap().summary;
    println!("test HR@10 {:.4} NDCG@10 {:.4} after {} epochs", s.test_hr, s.test_ndcg, s.epochs_run);
    assert_eq!(s.epochs_run, 2);
    assert!(s.test_hr >= 0.60, "HR@10 {:.4} < 0.60: the model is not learning", s.test_hr);
    assert!(s.test_ndcg >= 0.33, "NDCG@10 {:.4}", s.test_ndcg);
}
