//! `ncf`: the command-line front end of ncf-rs. This file parses the command line and hands
//! it to the command's own file under `cmd/`.
//!
//! Commands: `train`, `eval`, `recommend`, `similar`, `embeddings`, `serve`, `data synth`,
//! `data split` and `gradcheck`.

#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

/// Every buffer of 1 KiB or more starts on a cache line (see `ncf_cpu::alloc`).
#[global_allocator]
static ALLOC: ncf_cpu::LineAligned = ncf_cpu::LineAligned;

#[derive(Parser)]
#[command(
    name = "ncf",
    version,
    about = "Neural Collaborative Filtering from scratch: hand-written kernels and backprop"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check every op's and every model's backward pass against finite differences (in f64),
    /// and one step of each optimizer against hand-computed values. Exits 1 on any failure.
    Gradcheck(cmd::gradcheck::GradcheckArgs),
    /// Train GMF, MLP, NeuMF or MF (default: NeuMF on the embedded sample), reporting HR@K /
    /// NDCG@K on a validation holdout and on the test set after every epoch.
    Train(Box<cmd::train::TrainArgs>),
    /// Re-evaluate a saved checkpoint on its data's test set (sampled or full ranking).
    Eval(cmd::eval::EvalArgs),
    /// Top-K items for a user (or many) of a trained model, the user's training items left
    /// out; an unknown user gets the most popular items, flagged as a fallback.
    Recommend(cmd::recommend::RecommendArgs),
    /// The items nearest an item by cosine similarity of the model's item embeddings.
    Similar(cmd::similar::SimilarArgs),
    /// Export a model's user and item embeddings with their raw ids, as CSV and .npy.
    Embeddings(cmd::embeddings::EmbeddingsArgs),
    /// Serve a model over HTTP: a JSON API (recommendations, similar items, scores) and a demo
    /// page.
    Serve(cmd::serve::ServeArgs),
    /// Make datasets: generate synthetic MovieLens data, or split ratings into the NCF format.
    #[command(subcommand)]
    Data(cmd::data::DataCmd),
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits it (see the function's docs).
    ncf_cpu::simd::flush_denormals();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.cmd {
        Cmd::Gradcheck(args) => cmd::gradcheck::run(args),
        Cmd::Train(args) => {
            let sub = matches.subcommand_matches("train").expect("the train command's matches");
            cmd::train::run(*args, sub)
        }
        Cmd::Eval(args) => cmd::eval::run(args),
        Cmd::Recommend(args) => cmd::recommend::run(args),
        Cmd::Similar(args) => cmd::similar::run(args),
        Cmd::Embeddings(args) => cmd::embeddings::run(args),
        Cmd::Serve(args) => cmd::serve::run(args),
        Cmd::Data(c) => cmd::data::run(c),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
