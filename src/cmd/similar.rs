//! `ncf similar`: the items nearest one item by cosine similarity of their embeddings (exact,
//! over all items).

use super::recommend::item_line;
use anyhow::{Result, bail};
use ncf::serve::{item_json, load_meta};
use ncf::{EmbeddingChoice, Recommender};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SimilarArgs {
    /// A checkpoint written by `ncf train --save`.
    #[arg(long)]
    model: PathBuf,
    /// The item's raw id (as in the data the model was trained on).
    #[arg(long)]
    item: u64,
    /// How many neighbours (1 to 1000).
    #[arg(short, long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    k: u16,
    /// Which item embedding to compare: auto (both where the model has both, else its one),
    /// gmf (GMF's or MF's factors, where the score is nearly a dot product), mlp (the MLP
    /// tower's input embedding) or both (each normalised, concatenated). On NeuMF both give the
    /// most plausible neighbours: GMF's few factors alone let rarely rated items, whose
    /// vectors stay nearly random, crowd in.
    #[arg(long, value_enum, default_value_t = EmbeddingChoice::Auto)]
    embedding: EmbeddingChoice,
    /// Titles, years and genres from `movies.dat`, `u.item` or `movies.csv`.
    #[arg(long)]
    items_meta: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SimilarArgs) -> Result<bool> {
    let rec = Recommender::open(&a.model)?;
    let meta = load_meta(a.items_meta.as_deref())?;
    if !rec.contains_item(&a.item) {
        bail!("item {} is not in the model ({} items)", a.item, rec.items().len());
    }
    let near = rec.similar_items_in(&a.item, a.k as usize, a.embedding)?;
    if a.json {
        let items: Vec<_> = near.iter().map(|s| item_json(s, &meta)).collect();
        println!("{}", serde_json::json!({ "item": a.item, "embedding": a.embedding, "similar": items }));
        return Ok(true);
    }
    let title = meta.get(&a.item).map_or(String::new(), |m| format!(" ({})", m.title));
    println!("items nearest {}{title} by cosine similarity of the {:?} embedding:", a.item, a.embedding);
    for (r, s) in near.iter().enumerate() {
        println!("{}", item_line(r + 1, s, &meta));
    }
    Ok(true)
}
