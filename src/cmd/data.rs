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
    /// Sizes like a MovieLens release: ml-1m (6,040 users, 3,706 movies, about 1 M ratings),
    /// ml-20m (138,493 users, 26,744 movies, about 20 M ratings) or ml-20m-x4 (4× the users and
    /// movies of ml-20m, the same ratings per user: about 80 M). --users, --items and --density
    /// override it.
    #[arg(long, value_enum, default_value_t = Preset::Ml1m)]
    preset: Preset,
    /// Users (default: the preset's).
    #[arg(long)]
    users: Option<usize>,
    /// Movies (default: the preset's).
    #[arg(long)]
    items: Option<usize>,
    /// Mean fraction of the movies each user rates (default: the preset's).
    #[arg(long)]
    density: Option<f64>,
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

/// Dataset sizes for `ncf data synth --preset`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Preset {
    #[value(name = "ml-1m")]
    Ml1m,
    #[value(name = "ml-20m")]
    Ml20m,
    #[value(name = "ml-20m-x4")]
    Ml20mX4,
}

impl Preset {
    /// `(users, items, density)`: density = ratings / (users · items) of the release
    /// (ML-1M: 1,000,209 ratings; ML-20M: 20,000,263).
    fn sizes(self) -> (usize, usize, f64) {
        let ml20m = 20_000_263.0 / (138_493.0 * 26_744.0);
        match self {
            Preset::Ml1m => (6040, 3706, 0.045),
            Preset::Ml20m => (138_493, 26_744, ml20m),
            Preset::Ml20mX4 => (4 * 138_493, 4 * 26_744, ml20m / 4.0),
        }
    }
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
    /// Sampled test negatives per user: 99 (the paper's protocol) or 999 (MLPerf's).
    #[arg(long, visible_alias = "test-negatives", default_value_t = 99)]
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
    let (users, items, density) = a.preset.sizes();
    let cfg = SynthConfig {
        users: a.users.unwrap_or(users),
        items: a.items.unwrap_or(items),
        density: a.density.unwrap_or(density),
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
        data.ratings.len() as f64 / (cfg.users * cfg.items) as f64,
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
