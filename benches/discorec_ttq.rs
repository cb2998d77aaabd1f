//! The implicit-ALS peer of `benches/time_to_quality.sh`: discorec (a Rust crate, "Disco
//! Rust": conjugate-gradient implicit ALS) fitted on an NCF split's training pairs and scored
//! under the paper's protocol (each test user's item against its 99 negatives, HR@10 and
//! NDCG@10, ties counted against the target as `ncf_eval` does). Prints one JSON line.
//!
//! ```sh
//! cargo bench --bench discorec_ttq -- --data ../shared/data/ncf-ml-1m [--factors 32] [--iterations 20] [--alpha 40] [--regularization 0.01]
//! ```
//!
//! The wall time counts loading the split, the fit and the evaluation, as `ncf train
//! --stop-at-hr` counts its own. discorec runs on one thread (it has no threads).

use std::path::PathBuf;
use std::time::Instant;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(k) => {
            let v = args.get(k + 1).ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?;
            v.parse().map_err(|_| anyhow::anyhow!("{name}: cannot parse `{v}`"))
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--data") {
        // `cargo bench` without arguments (e.g. a whole-suite run): nothing to measure.
        eprintln!("discorec_ttq: pass --data DIR (an NCF split folder); skipped");
        return Ok(());
    }
    let data: PathBuf = arg(&args, "--data", PathBuf::new())?;
    let factors: u32 = arg(&args, "--factors", 32)?;
    let iterations: u32 = arg(&args, "--iterations", 20)?;
    // discorec's own defaults: alpha 40, regularization 0.01.
    let alpha: f32 = arg(&args, "--alpha", 40.0)?;
    let regularization: f32 = arg(&args, "--regularization", 0.01)?;
    let k: usize = arg(&args, "--k", 10)?;
    let t = Instant::now();
    let split = ncf_data::NcfSplit::load(&data)?;
    let train: Vec<(u32, u32, f32)> = split.train.iter().map(|&(u, i)| (u, i, 1.0)).collect();
    let loaded = t.elapsed().as_secs_f64();
    let fit_t = Instant::now();
    let rec = discorec::RecommenderBuilder::new()
        .factors(factors)
        .iterations(iterations)
        .alpha(alpha)
        .regularization(regularization)
        .seed(42)
        .fit_implicit(&train);
    let fit_s = fit_t.elapsed().as_secs_f64();
    let (mut hr, mut ndcg) = (0.0, 0.0);
    for (&(u, target), negs) in split.test.iter().zip(&split.negatives) {
        let scores: Vec<f32> =
            std::iter::once(target).chain(negs.iter().copied()).map(|i| rec.predict(&u, &i)).collect();
        let (h, n) = ncf_eval::hit_ndcg(ncf_eval::rank_of_first(&scores), k);
        hr += h;
        ndcg += n;
    }
    let n = split.test.len().max(1) as f64;
    println!(
        "{{\"tool\":\"discorec\",\"version\":\"0.3\",\"factors\":{factors},\"iterations\":{iterations},\"alpha\":{alpha},\"regularization\":{regularization},\"k\":{k},\"test_hr\":{:.4},\"test_ndcg\":{:.4},\"load_s\":{loaded:.3},\"fit_s\":{fit_s:.3},\"wall_s\":{:.3}}}",
        hr / n,
        ndcg / n,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
