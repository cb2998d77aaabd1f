//! Side features for the hybrid models (`--features`): what MovieLens knows about items
//! (genres, release decade) and users (gender, age bracket, occupation), as multi-hot rows
//! over a fixed vocabulary, one row per dense id. The model concatenates a sample's two rows
//! to its embeddings and its first dense layer embeds them (its columns for a feature are that
//! feature's learned vector).

use crate::idmap::IdMap;
use crate::movielens::{AGE_BRACKETS, KNOWN_GENRES, Movie, User};

/// Multi-hot rows: `active[id]` lists the columns set for dense id `id`.
#[derive(Clone, Debug, PartialEq)]
pub struct SideFeatures {
    /// Column names, e.g. `genre=Comedy`, `decade=1990s`, `age=25`.
    pub names: Vec<String>,
    pub active: Vec<Vec<u32>>,
    /// Dense ids the metadata file did not list (their rows are empty).
    pub missing: usize,
}

impl SideFeatures {
    /// Columns per row.
    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// The rows as a dense row-major `(ids, width)` 0/1 matrix (what the model holds).
    pub fn dense(&self) -> Vec<f64> {
        let w = self.width();
        let mut out = vec![0.0; self.active.len() * w];
        for (r, cols) in self.active.iter().enumerate() {
            cols.iter().for_each(|&c| out[r * w + c as usize] = 1.0);
        }
        out
    }
}

/// Decades an item's year falls in; the last column is "no year in the title".
const DECADES: [(u16, &str); 9] = [
    (0, "<1940"),
    (1940, "1940s"),
    (1950, "1950s"),
    (1960, "1960s"),
    (1970, "1970s"),
    (1980, "1980s"),
    (1990, "1990s"),
    (2000, "2000s"),
    (2010, "2010+"),
];

/// Items' features: one column per genre ([`KNOWN_GENRES`]; ml-latest's `Children` shares
/// `Children's`'s column) and one per release decade (from the title's year; "unknown" when
/// it has none). `items` maps the ratings' raw item ids to dense ids; `raw_of` maps a raw item
/// id to the metadata's movie id (the identity for MovieLens folders; the NCF split's
/// `item_id_map.tsv` otherwise).
pub fn item_features(movies: &[Movie], items: &IdMap, raw_of: impl Fn(u64) -> u64) -> SideFeatures {
    let genres: Vec<&str> = KNOWN_GENRES.iter().copied().filter(|&g| g != "Children").collect();
    let mut names: Vec<String> = genres.iter().map(|g| format!("genre={g}")).collect();
    names.extend(DECADES.iter().map(|d| format!("decade={}", d.1)));
    names.push("decade=unknown".into());
    let by_id: std::collections::HashMap<u64, &Movie> = movies.iter().map(|m| (m.id, m)).collect();
    let mut missing = 0;
    let active = items
        .raw_ids()
        .iter()
        .map(|&raw| {
            let Some(m) = by_id.get(&raw_of(raw)) else {
                missing += 1;
                return Vec::new();
            };
            let mut cols: Vec<u32> = m
                .genres
                .iter()
                .filter_map(|g| {
                    let g = if g == "Children" { "Children's" } else { g.as_str() };
                    genres.iter().position(|&k| k == g).map(|c| c as u32)
                })
                .collect();
            let decade = match m.year {
                Some(y) => DECADES.iter().rposition(|d| y >= d.0).unwrap_or(0),
                None => DECADES.len(),
            };
            cols.push((genres.len() + decade) as u32);
            cols.sort_unstable();
            cols.dedup();
            cols
        })
        .collect();
    SideFeatures { names, active, missing }
}

/// Users' features: gender (2 columns), age bracket (7, ML-1M's [`AGE_BRACKETS`]) and
/// occupation code (21). `raw_of` maps a raw user id to the metadata's user id.
pub fn user_features(users: &[User], ids: &IdMap, raw_of: impl Fn(u64) -> u64) -> SideFeatures {
    let mut names = vec!["gender=M".to_string(), "gender=F".to_string()];
    names.extend(AGE_BRACKETS.iter().map(|a| format!("age={a}")));
    names.extend((0..21).map(|o| format!("occupation={o}")));
    let by_id: std::collections::HashMap<u64, &User> = users.iter().map(|u| (u.id, u)).collect();
    let mut missing = 0;
    let active = ids
        .raw_ids()
        .iter()
        .map(|&raw| {
            let Some(u) = by_id.get(&raw_of(raw)) else {
                missing += 1;
                return Vec::new();
            };
            let age = AGE_BRACKETS.iter().position(|&a| a == u.age).unwrap_or(0);
            vec![u32::from(u.gender == 'F'), (2 + age) as u32, (2 + AGE_BRACKETS.len() + u.occupation as usize) as u32]
        })
        .collect();
    SideFeatures { names, active, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_get_their_genres_and_decade_and_users_three_one_hots() {
        let movies = vec![
            Movie { id: 10, title: "A (1995)".into(), year: Some(1995), genres: vec!["Comedy".into(), "Drama".into()] },
            Movie { id: 20, title: "B".into(), year: None, genres: vec!["Children".into()] },
        ];
        let items = IdMap::from_raw([20, 10, 30]);
        let f = item_features(&movies, &items, |r| r);
        assert_eq!(f.width(), 20 + 10);
        let names = |row: &[u32]| row.iter().map(|&c| f.names[c as usize].as_str()).collect::<Vec<_>>();
        // Dense ids follow raw order: 10, 20, 30.
        assert_eq!(names(&f.active[0]), ["genre=Comedy", "genre=Drama", "decade=1990s"]);
        assert_eq!(names(&f.active[1]), ["genre=Children's", "decade=unknown"]);
        assert!(f.active[2].is_empty());
        assert_eq!(f.missing, 1);
        let dense = f.dense();
        assert_eq!(dense.len(), 3 * 30);
        assert_eq!(dense.iter().sum::<f64>(), 5.0);

        let users = vec![User { id: 7, gender: 'F', age: 25, occupation: 20, zip: "x".into() }];
        let u = user_features(&users, &IdMap::from_raw([7]), |r| r);
        assert_eq!(u.width(), 30);
        let names: Vec<&str> = u.active[0].iter().map(|&c| u.names[c as usize].as_str()).collect();
        assert_eq!(names, ["gender=F", "age=25", "occupation=20"]);
    }
}
