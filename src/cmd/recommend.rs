//! `ncf recommend`: top-K items for users of a trained model, their training items left out;
//! users the model does not know get the most popular items, flagged as such.

use super::thread_pool;
use anyhow::{Result, bail};
use ncf::Recommender;
use ncf::serve::{item_json, load_meta};
use ncf_data::movielens::Movie;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct RecommendArgs {
    /// A checkpoint written by `ncf train --save`.
    #[arg(long)]
    model: PathBuf,
    /// The user's raw id (as in the data the model was trained on).
    #[arg(long, required_unless_present_any = ["users_file", "items"], conflicts_with_all = ["users_file", "items"])]
    user: Option<u64>,
    /// A new user, given by items they like (raw ids, comma-separated): the model fits that
    /// user's embedding to them, everything else frozen ("folding in"), and recommends.
    #[arg(long, value_delimiter = ',', conflicts_with = "users_file")]
    items: Vec<u64>,
    /// Many users: a file with one raw user id per line; all are scored together.
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// How many items per user (1 to 1000).
    #[arg(short, long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    k: u16,
    /// Titles, years and genres from `movies.dat` (ML-1M), `u.item` (ML-100K) or `movies.csv`
    /// (ml-latest).
    #[arg(long)]
    items_meta: Option<PathBuf>,
    /// One JSON object per user instead of text.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// One item as a text line: rank, raw id, score, title, genres.
pub fn item_line(rank: usize, &(raw, score): &(u64, f32), meta: &HashMap<u64, Movie>) -> String {
    let what = meta.get(&raw).map_or(String::new(), |m| format!("  {}  {}", m.title, m.genres.join("|")));
    format!("{rank:>4}. {raw:>8}  {score:>8.4}{what}")
}

pub fn run(a: RecommendArgs) -> Result<bool> {
    let pool = thread_pool(a.threads)?;
    let rec = Recommender::open(&a.model)?;
    let meta = load_meta(a.items_meta.as_deref())?;
    if !a.items.is_empty() {
        if let Some(raw) = a.items.iter().find(|i| !rec.contains_item(i)) {
            bail!("item {raw} is not in the model ({} items)", rec.items().len());
        }
        let recs = pool.install(|| rec.recs_for_items(&a.items, a.k as usize, 42))?;
        if a.json {
            let items: Vec<_> = recs.iter().map(|s| item_json(s, &meta)).collect();
            println!("{}", serde_json::json!({ "liked": a.items, "folded_in": true, "items": items }));
        } else {
            println!("a new user liking {} items: top {} by folding in", a.items.len(), a.k);
            for (r, s) in recs.iter().enumerate() {
                println!("{}", item_line(r + 1, s, &meta));
            }
        }
        return Ok(true);
    }
    let raw_users: Vec<u64> = match (&a.users_file, a.user) {
        (Some(f), _) => {
            // Streamed with the loaders' line limits, so a huge file is refused, not buffered.
            let mut ids = Vec::new();
            ncf_data::for_each_line(f, |n, line| {
                let t = String::from_utf8_lossy(line);
                let t = t.trim();
                if !t.is_empty() {
                    let id = t.parse::<u64>().map_err(|_| {
                        ncf_data::DataError::parse(f, n, "user", format!("`{t}` is not a non-negative integer id"))
                    })?;
                    ids.push(id);
                }
                Ok(())
            })?;
            ids
        }
        (None, Some(u)) => vec![u],
        (None, None) => bail!("give --user or --users-file"),
    };
    let k = a.k as usize;
    let recs = pool.install(|| rec.user_recs_many(&raw_users, k))?;
    let popular = rec.popular(k);
    for (&raw, recs) in raw_users.iter().zip(recs) {
        let (items, fallback, seen) = match recs {
            Some(items) => (items, None, rec.history(&raw).map_or(0, |h| h.len())),
            None => (popular.clone(), Some("popularity"), 0),
        };
        if a.json {
            let mut v = serde_json::json!({
                "user": raw,
                "items": items.iter().map(|s| item_json(s, &meta)).collect::<Vec<_>>(),
            });
            if let Some(f) = fallback {
                v["fallback"] = f.into();
            }
            println!("{v}");
            continue;
        }
        match fallback {
            Some(_) => println!("user {raw}: not in the model; the {k} most popular items (fallback: popularity)"),
            None => println!("user {raw}: top {k} of the items not among its {seen} training items"),
        }
        for (r, s) in items.iter().enumerate() {
            println!("{}", item_line(r + 1, s, &meta));
        }
    }
    Ok(true)
}
