//! A seeded MovieLens-format generator (`ncf data synth`): users with age, gender, occupation
//! and favourite genres; movies with genres, a release year and a long-tailed popularity;
//! ratings biased by genre preference and popularity. It writes `ratings.dat`, `movies.dat`
//! (Latin-1, like ML-1M's) and `users.dat`, which the MovieLens loaders read back.
//!
//! How a user's ratings are drawn: the number is at least `min_per_user` plus an exponential
//! tail whose mean makes the requested density. Each rated movie comes, with probability
//! `genre_affinity`, from one of the user's favourite genres (movies weighted by popularity
//! within the genre), otherwise from the whole catalogue by popularity (Walker alias tables,
//! O(1) per draw). The rating is 3 plus a favourite-genre bonus, a popularity bonus, a user
//! bias and noise, rounded to 1..=5. Timestamps increase through the user's history, with
//! occasional equal seconds, as in the real data.
//!
//! Every user and every movie draws from its own seeded stream, so the output is the same for
//! a seed on any number of threads.

use crate::error::{DataError, Result, write_atomic};
use crate::movielens::{AGE_BRACKETS, Movie, RawRating, User};
use ncf_core::rng::seeded;
use rand::RngExt;
use rand_distr::{Distribution, Exp, LogNormal, Normal};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// ML-1M's 18 genres, with rough shares of movies carrying each.
pub const GENRES: [(&str, f64); 18] = [
    ("Action", 0.13),
    ("Adventure", 0.07),
    ("Animation", 0.03),
    ("Children's", 0.07),
    ("Comedy", 0.30),
    ("Crime", 0.05),
    ("Documentary", 0.03),
    ("Drama", 0.40),
    ("Fantasy", 0.02),
    ("Film-Noir", 0.01),
    ("Horror", 0.09),
    ("Musical", 0.03),
    ("Mystery", 0.03),
    ("Romance", 0.12),
    ("Sci-Fi", 0.07),
    ("Thriller", 0.13),
    ("War", 0.04),
    ("Western", 0.02),
];

/// Settings of [`generate`].
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub users: usize,
    pub items: usize,
    /// Mean fraction of the catalogue a user rates (ML-1M: about 0.045).
    pub density: f64,
    /// Fewest ratings per user (ML-1M: 20), capped at half the catalogue.
    pub min_per_user: usize,
    /// Probability that a rated movie is drawn from a favourite genre.
    pub genre_affinity: f64,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { users: 6040, items: 3706, density: 0.045, min_per_user: 20, genre_affinity: 0.7, seed: 42 }
    }
}

/// A generated dataset, ids 1-based as in MovieLens.
#[derive(Clone, Debug)]
pub struct Synthetic {
    pub users: Vec<User>,
    pub movies: Vec<Movie>,
    /// By user, then time.
    pub ratings: Vec<RawRating>,
    /// Each user's favourite genres (indices into [`GENRES`]); not written to disk.
    pub favourites: Vec<Vec<usize>>,
}

/// Walker's alias table: O(1) draws from a fixed discrete distribution.
struct Alias {
    prob: Vec<f64>,
    alias: Vec<u32>,
    /// The outcome each slot stands for (lets a table cover a subset of movies).
    outcome: Vec<u32>,
}

impl Alias {
    fn new(weighted: &[(u32, f64)]) -> Option<Self> {
        let n = weighted.len();
        let total: f64 = weighted.iter().map(|w| w.1).sum();
        if n == 0 || total <= 0.0 {
            return None;
        }
        let mut prob: Vec<f64> = weighted.iter().map(|w| w.1 * n as f64 / total).collect();
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&k| prob[k] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for k in large.into_iter().chain(small) {
            prob[k] = 1.0;
        }
        Some(Alias { prob, alias, outcome: weighted.iter().map(|w| w.0).collect() })
    }

    fn draw(&self, rng: &mut impl rand::Rng) -> u32 {
        let k = rng.random_range(0..self.prob.len());
        let slot = if rng.random::<f64>() < self.prob[k] { k } else { self.alias[k] as usize };
        self.outcome[slot]
    }
}

const MOVIE_STREAM: u64 = 0x6d6f_7669;
const USER_STREAM: u64 = 0x7573_6572;

/// Words for titles; a few use Latin-1 letters, as ML-1M's titles do.
const FIRST: [&str; 12] =
    ["Silent", "Last", "Crimson", "Café", "Broken", "Midnight", "Lost", "Señor", "Golden", "Über", "Wild", "Noël"];
const SECOND: [&str; 12] = [
    "River", "Empire", "Garden", "Promise", "Machine", "Highway", "Summer", "Station", "Harbor", "Dream", "Game", "Sky",
];

fn check(cfg: &SynthConfig) -> Result<()> {
    let bad = |r: String| Err(DataError::invalid(Path::new("synth"), r));
    if cfg.users == 0 || cfg.items < 2 {
        return bad(format!("need at least 1 user and 2 items, got {} and {}", cfg.users, cfg.items));
    }
    if cfg.users > u32::MAX as usize || cfg.items > u32::MAX as usize {
        return bad("users and items must fit in 32 bits".into());
    }
    if !(cfg.density > 0.0 && cfg.density <= 0.5) {
        return bad(format!("density must be in (0, 0.5], got {}", cfg.density));
    }
    if !(0.0..=1.0).contains(&cfg.genre_affinity) {
        return bad(format!("genre affinity must be in [0, 1], got {}", cfg.genre_affinity));
    }
    Ok(())
}

fn genre_set(rng: &mut impl rand::Rng, genre_pick: &Alias, max: usize) -> Vec<usize> {
    let n = rng.random_range(1..=max);
    let mut g: Vec<usize> = Vec::with_capacity(n);
    for _ in 0..4 * n {
        let x = genre_pick.draw(rng) as usize;
        if !g.contains(&x) {
            g.push(x);
        }
        if g.len() == n {
            break;
        }
    }
    g.sort_unstable();
    g
}

/// Generates a dataset (see the module doc).
pub fn generate(cfg: &SynthConfig) -> Result<Synthetic> {
    check(cfg)?;
    let genre_pick = Alias::new(&GENRES.iter().enumerate().map(|(k, g)| (k as u32, g.1)).collect::<Vec<_>>())
        .expect("positive weights");
    let pop = LogNormal::new(0.0, 1.3).expect("valid");
    let age_gap = Exp::<f64>::new(1.0 / 12.0).expect("valid");

    // Movies: genres, year, popularity.
    let movie_rows: Vec<(Movie, Vec<usize>, f64)> = (0..cfg.items)
        .into_par_iter()
        .map(|k| {
            let mut rng = seeded(cfg.seed ^ MOVIE_STREAM, k as u64);
            let genres = genre_set(&mut rng, &genre_pick, 3);
            let year = (2000.0 - age_gap.sample(&mut rng)).max(1919.0) as u16;
            let popularity = pop.sample(&mut rng);
            let title = format!(
                "{} {} {} ({year})",
                FIRST[rng.random_range(0..FIRST.len())],
                SECOND[rng.random_range(0..SECOND.len())],
                k + 1
            );
            let movie = Movie {
                id: k as u64 + 1,
                title,
                year: Some(year),
                genres: genres.iter().map(|&g| GENRES[g].0.to_string()).collect(),
            };
            (movie, genres, popularity)
        })
        .collect();
    let all = Alias::new(&movie_rows.iter().enumerate().map(|(k, m)| (k as u32, m.2)).collect::<Vec<_>>())
        .expect("positive popularity");
    let by_genre: Vec<Option<Alias>> = (0..GENRES.len())
        .map(|g| {
            let w: Vec<(u32, f64)> =
                movie_rows.iter().enumerate().filter(|m| m.1.1.contains(&g)).map(|(k, m)| (k as u32, m.2)).collect();
            Alias::new(&w)
        })
        .collect();
    let log_pop: Vec<f64> = movie_rows.iter().map(|m| m.2.ln()).collect();

    let cap = (cfg.items / 2).max(1);
    let min = cfg.min_per_user.min(cap);
    let extra_mean = (cfg.density * cfg.items as f64 - min as f64).max(1.0);
    let extra = Exp::new(1.0 / extra_mean).expect("positive mean");
    let noise = Normal::new(0.0, 0.8).expect("valid");
    let user_bias = Normal::new(0.0, 0.4).expect("valid");
    const AGE_SHARE: [f64; 7] = [0.04, 0.18, 0.35, 0.20, 0.09, 0.08, 0.06];
    let age_pick = Alias::new(&AGE_SHARE.iter().enumerate().map(|(k, &w)| (k as u32, w)).collect::<Vec<_>>())
        .expect("positive weights");

    let per_user: Vec<(User, Vec<usize>, Vec<RawRating>)> = (0..cfg.users)
        .into_par_iter()
        .map(|u| {
            let mut rng = seeded(cfg.seed ^ USER_STREAM, u as u64);
            let id = u as u64 + 1;
            let user = User {
                id,
                gender: if rng.random::<f64>() < 0.72 { 'M' } else { 'F' },
                age: AGE_BRACKETS[age_pick.draw(&mut rng) as usize],
                occupation: rng.random_range(0..=20),
                zip: format!("{:05}", rng.random_range(0..100_000)),
            };
            let fav = genre_set(&mut rng, &genre_pick, 3);
            let n = (min + extra.sample(&mut rng).round() as usize).min(cap);
            let bias = user_bias.sample(&mut rng);
            let mut taken = std::collections::HashSet::with_capacity(2 * n);
            let mut chosen = Vec::with_capacity(n);
            let mut tries = 0;
            while chosen.len() < n {
                tries += 1;
                let m = if tries > 50 * n {
                    rng.random_range(0..cfg.items as u32) // popularity exhausted: fill uniformly
                } else if rng.random::<f64>() < cfg.genre_affinity {
                    match &by_genre[fav[rng.random_range(0..fav.len())]] {
                        Some(t) => t.draw(&mut rng),
                        None => all.draw(&mut rng),
                    }
                } else {
                    all.draw(&mut rng)
                };
                if taken.insert(m) {
                    chosen.push(m);
                }
            }
            let mut t = 956_703_932 + rng.random_range(0..63_072_000i64); // ML-1M's first day + up to 2 years
            let ratings = chosen
                .into_iter()
                .map(|m| {
                    let liked = movie_rows[m as usize].1.iter().any(|g| fav.contains(g));
                    let score = 3.0
                        + if liked { 0.8 } else { -0.3 }
                        + 0.25 * log_pop[m as usize]
                        + bias
                        + noise.sample(&mut rng);
                    t += (rng.random::<f64>() * rng.random::<f64>() * 7200.0) as i64; // often 0: equal seconds
                    RawRating {
                        user: id,
                        item: m as u64 + 1,
                        rating: score.round().clamp(1.0, 5.0) as f32,
                        timestamp: t,
                    }
                })
                .collect();
            (user, fav, ratings)
        })
        .collect();

    let mut users = Vec::with_capacity(cfg.users);
    let mut favourites = Vec::with_capacity(cfg.users);
    let mut ratings = Vec::with_capacity(per_user.iter().map(|p| p.2.len()).sum());
    for (u, f, r) in per_user {
        users.push(u);
        favourites.push(f);
        ratings.extend(r);
    }
    Ok(Synthetic { users, movies: movie_rows.into_iter().map(|m| m.0).collect(), ratings, favourites })
}

fn latin1_bytes(s: &str, out: &mut Vec<u8>) {
    out.extend(s.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')));
}

impl Synthetic {
    /// The files [`Synthetic::write`] creates.
    pub fn paths(dir: &Path) -> [PathBuf; 3] {
        ["ratings.dat", "movies.dat", "users.dat"].map(|n| dir.join(n))
    }

    /// Writes `ratings.dat`, `movies.dat` (Latin-1) and `users.dat` into `dir`, each atomically.
    /// Refuses, before writing anything, if one exists and `force` is false.
    pub fn write(&self, dir: &Path, force: bool) -> Result<[PathBuf; 3]> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let paths = Self::paths(dir);
        if !force && let Some(p) = paths.iter().find(|p| p.exists()) {
            return Err(DataError::invalid(p, "exists; pass --force to overwrite it"));
        }
        let mut ratings = String::with_capacity(self.ratings.len() * 26);
        for r in &self.ratings {
            let _ = writeln!(ratings, "{}::{}::{}::{}", r.user, r.item, r.rating, r.timestamp);
        }
        let mut movies = Vec::with_capacity(self.movies.len() * 48);
        for m in &self.movies {
            movies.extend(format!("{}::", m.id).bytes());
            latin1_bytes(&m.title, &mut movies);
            movies.extend(b"::");
            latin1_bytes(&m.genres.join("|"), &mut movies);
            movies.push(b'\n');
        }
        let mut users = String::with_capacity(self.users.len() * 24);
        for u in &self.users {
            let _ = writeln!(users, "{}::{}::{}::{}::{}", u.id, u.gender, u.age, u.occupation, u.zip);
        }
        write_atomic(&paths[0], ratings.as_bytes(), true)?;
        write_atomic(&paths[1], &movies, true)?;
        write_atomic(&paths[2], users.as_bytes(), true)?;
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::movielens::{load_movies, load_ratings, load_users};

    fn small() -> SynthConfig {
        SynthConfig { users: 300, items: 400, density: 0.05, ..Default::default() }
    }

    #[test]
    fn seeded_and_round_trips_through_the_movielens_loaders() {
        let a = generate(&small()).unwrap();
        let b = generate(&small()).unwrap();
        assert_eq!(a.ratings, b.ratings);
        assert_ne!(a.ratings, generate(&SynthConfig { seed: 7, ..small() }).unwrap().ratings);
        let dir = tempfile::tempdir().unwrap();
        a.write(dir.path(), false).unwrap();
        assert_eq!(load_ratings(&dir.path().join("ratings.dat")).unwrap(), a.ratings);
        assert_eq!(load_movies(&dir.path().join("movies.dat")).unwrap(), a.movies);
        assert_eq!(load_users(&dir.path().join("users.dat")).unwrap(), a.users);
        let e = a.write(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("ratings.dat") && e.contains("--force"), "{e}");
    }

    #[test]
    fn shape_follows_the_settings() {
        let cfg = small();
        let s = generate(&cfg).unwrap();
        let mut per_user = vec![0usize; cfg.users + 1];
        let mut pairs = std::collections::HashSet::new();
        for r in &s.ratings {
            per_user[r.user as usize] += 1;
            assert!((1..=cfg.items as u64).contains(&r.item) && (1.0..=5.0).contains(&r.rating));
            assert!(pairs.insert((r.user, r.item)), "no repeated pair");
        }
        assert!(per_user[1..].iter().all(|&n| n >= cfg.min_per_user), "at least min_per_user each");
        let density = s.ratings.len() as f64 / (cfg.users * cfg.items) as f64;
        assert!((density - cfg.density).abs() < 0.01, "density {density}");
        for w in s.ratings.windows(2) {
            assert!(w[0].user != w[1].user || w[0].timestamp <= w[1].timestamp, "time order within a user");
        }
    }

    /// Ratings lean towards favourite genres and popular movies, so there is something to learn.
    #[test]
    fn genre_preference_and_popularity_bias_the_ratings() {
        let s = generate(&small()).unwrap();
        let genre_of = |name: &str| GENRES.iter().position(|g| g.0 == name).unwrap();
        let (mut fav_n, mut fav_sum, mut other_n, mut other_sum) = (0, 0.0, 0, 0.0);
        let mut count = vec![0usize; s.movies.len()];
        for r in &s.ratings {
            let m = &s.movies[r.item as usize - 1];
            count[r.item as usize - 1] += 1;
            let liked = m.genres.iter().any(|g| s.favourites[r.user as usize - 1].contains(&genre_of(g)));
            if liked {
                fav_n += 1;
                fav_sum += r.rating as f64;
            } else {
                other_n += 1;
                other_sum += r.rating as f64;
            }
        }
        assert!(fav_n > other_n, "most ratings hit a favourite genre: {fav_n} vs {other_n}");
        assert!(fav_sum / fav_n as f64 > other_sum / other_n as f64 + 0.5, "and rate higher");
        count.sort_unstable();
        let top_decile: usize = count[count.len() * 9 / 10..].iter().sum();
        assert!(top_decile * 4 > s.ratings.len(), "top 10% of movies take > 25% of ratings: {top_decile}");
    }

    #[test]
    fn bad_settings_are_errors() {
        for cfg in [
            SynthConfig { users: 0, ..small() },
            SynthConfig { items: 1, ..small() },
            SynthConfig { density: 0.0, ..small() },
            SynthConfig { genre_affinity: 2.0, ..small() },
        ] {
            assert!(generate(&cfg).is_err());
        }
    }
}
