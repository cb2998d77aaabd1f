//! GPU benches (`cargo bench --bench gpu`): per-kernel time with CUDA events (GFLOP/s for the
//! GEMMs, GB/s for the memory-bound ops), the hand-written tiled GEMM against cuBLAS at
//! NeuMF's shapes, and NeuMF-8 training throughput at batch 256, 2048 and 65536 (one epoch on
//! `$NCF_DATA/ncf-ml-1m`, or on synthetic ML-1M-sized data). Prints `skipped: …` and exits 0
//! on a machine without a GPU (panics instead under `NCF_REQUIRE_GPU=1`).

use ncf_core::Backend;
use ncf_cuda::{CudaBackend, GpuGemm};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let g = match CudaBackend::new(0, GpuGemm::Tiled) {
        Ok(g) => g,
        Err(e) => {
            ncf_core::testenv::skip("NCF_REQUIRE_GPU", &format!("no CUDA device ({e})"));
            return;
        }
    };
    println!("device: {}", g.name());
    gemm_table();
    memory_ops(&g);
    training();
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Forward GEMM of each NeuMF-8 layer at three batch sizes, tiled vs cuBLAS.
fn gemm_table() {
    println!("\n| shape (B×I→O) | tiled GFLOP/s | cuBLAS GFLOP/s | tiled/cuBLAS |");
    println!("|---|---:|---:|---:|");
    for &b in &[256usize, 2048, 65536] {
        for &(i, o) in &[(64usize, 32usize), (32, 16), (16, 8)] {
            let mut rate = [0.0f64; 2];
            for (k, gemm) in [GpuGemm::Tiled, GpuGemm::Cublas].into_iter().enumerate() {
                let g = CudaBackend::new(0, gemm).expect("device");
                let inp = g.upload(&vec![0.5f32; b * i]).unwrap();
                let w = g.upload(&vec![0.25f32; o * i]).unwrap();
                let bias = g.zeros(o).unwrap();
                let mut out = g.zeros(b * o).unwrap();
                let times: Vec<f32> = (0..20)
                    .map(|_| g.time_ms(|| g.linear_forward(&inp, &w, &bias, &mut out, b, i, o)).unwrap())
                    .collect();
                rate[k] = 2.0 * (b * i * o) as f64 / (median(times) as f64 * 1e-3) / 1e9;
            }
            println!("| {b}×{i}→{o} | {:.1} | {:.1} | {:.0}% |", rate[0], rate[1], 100.0 * rate[0] / rate[1]);
        }
    }
}

/// Bandwidth of the gather and the Adam step at ML-1M's table sizes.
fn memory_ops(g: &CudaBackend) {
    let (n, d, b) = (6040usize, 32usize, 65536usize);
    let table = g.upload(&vec![0.1f32; n * d]).unwrap();
    let mut ids = g.zeros_ids(b).unwrap();
    g.write_ids(&mut ids, &(0..b as u32).map(|k| (k * 7919) % n as u32).collect::<Vec<_>>()).unwrap();
    let mut out = g.zeros(b * d).unwrap();
    let t =
        median((0..20).map(|_| g.time_ms(|| g.embedding_forward(&table, n, d, &ids, b, &mut out)).unwrap()).collect());
    println!("\nembedding_forward {b}×{d}: {:.3} ms, {:.0} GB/s", t, (2 * b * d * 4) as f64 / (t as f64 * 1e-3) / 1e9);
    let m = n * d;
    let (mut p, mut gr, mut m1, mut v1) =
        (g.zeros(m).unwrap(), g.zeros(m).unwrap(), g.zeros(m).unwrap(), g.zeros(m).unwrap());
    let hp = ncf_core::AdamHp::default();
    let mut step = g.zeros_ids(1).unwrap();
    g.write_ids(&mut step, &[1]).unwrap();
    let t = median(
        (0..20).map(|_| g.time_ms(|| g.adam_step(&mut p, &mut gr, &mut m1, &mut v1, m, &hp, &step)).unwrap()).collect(),
    );
    println!("adam_step {m} elements: {:.3} ms, {:.0} GB/s", t, (7 * m * 4) as f64 / (t as f64 * 1e-3) / 1e9);
}

/// One epoch of NeuMF-8 at three batch sizes through the trainer: the fused step (the
/// default) with and without graph replay, and the reference step for comparison.
fn training() {
    let split = match std::env::var_os("NCF_DATA") {
        Some(d) => ncf_data::NcfSplit::load(&std::path::PathBuf::from(d).join("ncf-ml-1m")).expect("split"),
        None => {
            let syn = ncf_data::synth::generate(&Default::default()).expect("synth");
            let data = ncf_data::Implicit::from_ratings(&syn.ratings, None);
            ncf_data::leave_latest_out(&data, 99, 42).to_ncf_split("synth")
        }
    };
    let data = ncf_train::Prepared::from_split(&split, 42);
    println!("\n| batch | step | issued as | samples/s | epoch s (sampling + training + eval) | test HR@10 |");
    println!("|---:|---|---|---:|---:|---:|");
    use ncf_train::Step::{Fast, Reference};
    let runs = [(256usize, Fast, true), (256, Fast, false), (256, Reference, true), (2048, Fast, true)];
    for &(batch, step, graph) in runs.iter().chain(&[(65536, Fast, true), (65536, Reference, true)]) {
        let cfg = ncf_train::TrainConfig {
            epochs: 1,
            batch,
            graph,
            step,
            device: ncf_train::Device::Cuda,
            ..Default::default()
        };
        let out = ncf_train::train(&cfg, &data, None, |_| {}).expect("train");
        let r = &out.epochs[0];
        println!(
            "| {batch} | {} | {} | {:.0} | {:.3} ({:.3} + {:.3} + {:.3}) | {:.4} |",
            if step == Fast { "fused" } else { "reference" },
            if graph { "CUDA graph replay (16 steps per graph)" } else { "from the host" },
            r.samples_per_second,
            r.sampling_s + r.training_s + r.eval_s,
            r.sampling_s,
            r.training_s,
            r.eval_s,
            r.test_hr
        );
    }
}
