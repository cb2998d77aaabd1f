//! The library API (`ncf::Recommender`) on a planted problem: 90 users in three taste groups,
//! each group watching most of its own 15 movies. A fitted model must recommend in-group movies
//! the user has not seen, find in-group neighbours for movies and users, score in-group pairs
//! above out-of-group ones, survive save and load, and refuse unknown ids.

use ncf::{RecError, Recommender};
use std::sync::{Arc, Mutex};

fn group_of_movie(m: &str) -> usize {
    m.trim_start_matches("movie").parse::<usize>().unwrap() / 15
}

fn group_of_user(u: &str) -> usize {
    u.trim_start_matches("user").parse::<usize>().unwrap() % 3
}

/// User u watches the movies of its group except two (deterministically chosen).
fn pairs() -> Vec<(String, String)> {
    let mut p = Vec::new();
    for u in 0..90 {
        let g = u % 3;
        for k in 0..15 {
            if (k + u) % 7 != 0 {
                p.push((format!("user{u}"), format!("movie{}", g * 15 + k)));
            }
        }
    }
    p
}

#[test]
fn a_fitted_recommender_finds_the_planted_groups() {
    let pairs = pairs();
    let epochs = Arc::new(Mutex::new(Vec::new()));
    let seen_epochs = epochs.clone();
    let rec = Recommender::builder()
        .model("neumf")
        .factors(8)
        .layers(&[16, 8])
        .epochs(12)
        .seed(3)
        .threads(2)
        .learning_rate(0.01)
        .batch(64)
        .on_epoch(move |r| seen_epochs.lock().unwrap().push(r.valid_hr))
        .fit(&pairs)
        .unwrap();
    let hrs = epochs.lock().unwrap().clone();
    assert_eq!(hrs.len(), 12, "one callback per epoch");
    println!("validation HR@10 per epoch: {hrs:?}");
    assert_eq!((rec.users().len(), rec.items().len()), (90, 45));

    let user = "user4".to_string(); // group 1
    let recs = rec.user_recs(&user, 3).unwrap();
    println!("user4: {recs:?}");
    assert_eq!(recs.len(), 3);
    for (m, _) in &recs {
        assert!(!pairs.contains(&(user.clone(), m.clone())), "recommended a watched movie {m}");
    }
    // Its two unwatched in-group movies come first.
    assert!(recs[..2].iter().all(|(m, _)| group_of_movie(m) == 1), "{recs:?}");

    let near = rec.similar_items(&"movie20".to_string(), 5).unwrap();
    println!("movie20: {near:?}");
    assert!(near.iter().all(|(m, _)| group_of_movie(m) == 1 && m != "movie20"), "{near:?}");
    let near_users = rec.similar_users(&user, 5).unwrap();
    assert!(near_users.iter().all(|(u, _)| group_of_user(u) == 1 && *u != user), "{near_users:?}");
    let fans = rec.item_recs(&"movie40".to_string(), 3).unwrap(); // group 2's movie
    assert!(fans.iter().all(|(u, _)| group_of_user(u) == 2), "{fans:?}");
    let (inside, outside) =
        (rec.score(&user, &"movie16".to_string()).unwrap(), rec.score(&user, &"movie31".to_string()).unwrap());
    assert!(inside > outside, "{inside} vs {outside}");
    assert_eq!(rec.popular(2).len(), 2);

    // A new user who likes three of group 0's movies gets group 0's others (folding in).
    let liked: Vec<String> = ["movie0", "movie3", "movie7"].iter().map(|s| s.to_string()).collect();
    let fresh = rec.recs_for_items(&liked, 5, 1).unwrap();
    println!("new user liking {liked:?}: {fresh:?}");
    assert!(fresh.iter().all(|(m, _)| group_of_movie(m) == 0 && !liked.contains(m)), "{fresh:?}");
    assert_eq!(rec.recs_for_items(&liked, 5, 1).unwrap(), fresh, "deterministic for a seed");
    assert!(matches!(rec.recs_for_items(&["nothing".to_string()], 5, 1), Err(RecError::Unknown(_))));

    // Unknown ids are errors, not panics.
    assert!(matches!(rec.user_recs(&"nobody".to_string(), 3), Err(RecError::Unknown(_))));
    assert!(matches!(rec.similar_items(&"nothing".to_string(), 3), Err(RecError::Unknown(_))));

    // Save, load: the same answers.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("rec.safetensors");
    rec.save(&path, false).unwrap();
    assert!(rec.save(&path, false).is_err(), "no overwrite without force");
    let back = Recommender::<String, String>::load(&path).unwrap();
    assert_eq!(back.user_recs(&user, 3).unwrap(), recs);
    assert_eq!(back.similar_items(&"movie20".to_string(), 5).unwrap(), near);
}

#[test]
fn integer_ids_and_bad_settings() {
    let pairs: Vec<(u64, u32)> =
        (0..40u64).flat_map(|u| (0..6u32).map(move |i| (u * 1000, (u as u32 % 2) * 6 + i))).collect();
    let rec = Recommender::builder().model("gmf").epochs(2).fit(&pairs).unwrap();
    assert_eq!(rec.user_recs(&3000, 4).unwrap().len(), 4);
    assert!(matches!(Recommender::builder().model("svd").fit(&pairs), Err(RecError::Invalid(_))));
    let none: Vec<(u64, u32)> = Vec::new();
    assert!(matches!(Recommender::builder().fit(&none), Err(RecError::Invalid(_))));
}
