//! One file per command; each `run` returns `Ok(false)` when it ran and found a failure.
//! What several commands share is here.

use anyhow::{Context, Result};
use ncf_train::Device;

pub mod data;
pub mod embeddings;
pub mod eval;
pub mod gradcheck;
pub mod recommend;
pub mod serve;
pub mod similar;
pub mod train;

/// A rayon pool of `threads` workers (default: all cores).
fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        builder = builder.num_threads(t);
    }
    builder.build().context("building the thread pool")
}

/// `--device`: `cpu`, or `cuda` after probing the driver, NVRTC, cuBLAS and a device (a clean
/// error naming what is missing, never a panic).
fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda => {
            let gpu = ncf_cuda::device::probe(0).context("--device cuda")?;
            eprintln!(
                "device: {} (compute capability {}.{})",
                gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
            );
            Ok(())
        }
    }
}

fn source_options(min_rating: Option<f32>, split_seed: u64, negatives: usize) -> ncf_train::source::SourceOptions {
    ncf_train::source::SourceOptions { min_rating, split_seed, negatives }
}
