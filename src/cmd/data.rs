//! `ncf data synth` and `ncf data split`.

use anyhow::{Context, Result, bail};
use ncf_data::synth::{SynthConfig, generate};
use ncf_data::{Implicit, MovieLensFiles, leave_latest_out, load_ratings};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum DataCmd {
    /// Generate a MovieLens-format dataset (ratings.dat, movies.dat, users.dat) from a seed:
    /// users with age, gender, occupation and favourite genres, movies with genres, year and
    /// popularity, ratings biased by both.
    Synth(SynthArgs),
    /// Split ratings into the NCF leave-one-out format: each user's latest interaction is the
    /// test item (ties: the larger movie id), with sampled negatives it never interacted with.
    Split(SplitArgs),
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Folder to write ratings.dat, movies.dat and users.dat into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 6040)]
    users: usize,
    #[arg(long, default_value_t = 3706)]
    items: usize,
    /// Mean fraction of the movies each user rates.
    #[arg(long, default_value_t = 0.045)]
    density: f64,
    /// Fewest ratings per user.
    #[arg(long, default_value_t = 20)]
    min_per_user: usize,
    /// Probability that a rated movie comes from one of the user's favourite genres.
    #[arg(long, default_value_t = 0.7)]
    genre_affinity: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct SplitArgs {
    /// A MovieLens folder (ratings.dat, u.data or ratings.csv) or one ratings file.
    #[arg(long)]
    input: PathBuf,
    /// Folder to write NAME.train.rating, NAME.test.rating, NAME.test.negative and the id maps.
    #[arg(long)]
    out: PathBuf,
    /// File name prefix (default: the input folder's name).
    #[arg(long)]
    name: Option<String>,
    /// Sampled test negatives per user.
    #[arg(long, default_value_t = 99)]
    negatives: usize,
    /// Keep only ratings >= this as positives (default: every rating is a positive).
    #[arg(long)]
    min_rating: Option<f32>,
    /// Seed of the test negatives.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: DataCmd) -> Result<bool> {
    match cmd {
        DataCmd::Synth(a) => synth(a),
        DataCmd::Split(a) => split(a),
    }
}

fn synth(a: SynthArgs) -> Result<bool> {
    let cfg = SynthConfig {
        users: a.users,
        items: a.items,
        density: a.density,
        min_per_user: a.min_per_user,
        genre_affinity: a.genre_affinity,
        seed: a.seed,
    };
    let t = Instant::now();
    let data = generate(&cfg)?;
    let gen_s = t.elapsed().as_secs_f64();
    let paths = data.write(&a.out, a.force)?;
    println!(
        "wrote {} users, {} movies, {} ratings (density {:.4}) to {} in {:.2} s ({gen_s:.2} s generating)",
        data.users.len(),
        data.movies.len(),
        data.ratings.len(),
        data.ratings.len() as f64 / (a.users * a.items) as f64,
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        t.elapsed().as_secs_f64()
    );
    Ok(true)
}

fn split(a: SplitArgs) -> Result<bool> {
    let input = if a.input.is_dir() { MovieLensFiles::find(&a.input)?.ratings } else { a.input.clone() };
    let name = match &a.name {
        Some(n) => n.clone(),
        None => {
            let dir = if a.input.is_dir() {
                a.input.clone()
            } else {
                a.input.parent().map(PathBuf::from).unwrap_or_default()
            };
            let dir = dir.canonicalize().unwrap_or(dir);
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("ratings").to_string()
        }
    };
    if name.is_empty() || name.contains(['/', '\\']) {
        bail!("--name {name:?}: must be a plain file name prefix");
    }
    let t = Instant::now();
    let ratings = load_ratings(&input)?;
    let load_s = t.elapsed().as_secs_f64();
    let data = Implicit::from_ratings(&ratings, a.min_rating);
    let split = leave_latest_out(&data, a.negatives, a.seed);
    let paths =
        split.write(&a.out, &name, a.force).with_context(|| format!("writing the split to {}", a.out.display()))?;
    println!(
        "{}: {} ratings read in {load_s:.3} s; {} repeated pairs dropped (latest kept){}",
        input.display(),
        ratings.len(),
        data.duplicates,
        a.min_rating.map_or(String::new(), |m| format!(", {} below --min-rating {m} dropped", data.below_threshold)),
    );
    println!(
        "{} users, {} items: {} training interactions, {} test users ({} users with a single interaction kept for training only), {} negatives each",
        data.users.len(),
        data.items.len(),
        split.train.len(),
        split.test.len(),
        data.users.len() - split.test.len(),
        a.negatives
    );
    println!(
        "wrote {} in {:.2} s",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        t.elapsed().as_secs_f64()
    );
    Ok(true)
}
