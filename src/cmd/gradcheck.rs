//! `ncf gradcheck`: every backward pass against finite differences.

use super::thread_pool;
use anyhow::{Context, Result, bail};
use ncf_core::Backend;
use ncf_cpu::CpuBackend;
use ncf_model::gradcheck::{self, Options, Report};
use ncf_train::Gemm;

#[derive(clap::Args)]
pub struct GradcheckArgs {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed for the random problems and initial weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Finite-difference step h (5-point central stencil).
    #[arg(long, default_value_t = 1e-3)]
    step: f64,
    /// Maximum relative error allowed per element.
    #[arg(long, default_value_t = ncf_core::Tol::GRADCHECK_F64.rel)]
    rel_tol: f64,
    /// GEMM used by the dense layers: naive, scratch, library (matrixmultiply) or auto.
    #[arg(long, value_enum, default_value_t = Gemm::Scratch)]
    gemm: Gemm,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Testing aid: scale the analytic gradient of MODEL/TENSOR (e.g. `neumf/mlp_0_weight`) by
    /// 1.001 before comparing, to show that the check fails.
    #[arg(long, hide = true, value_name = "MODEL/TENSOR")]
    inject_fault: Option<String>,
}

pub fn run(args: GradcheckArgs) -> Result<bool> {
    if !(args.step > 0.0 && args.step.is_finite()) {
        bail!("--step must be a positive number, got {}", args.step);
    }
    let pool = thread_pool(args.threads)?;
    let opts = Options {
        h: args.step,
        tol: ncf_core::Tol { rel: args.rel_tol, ..ncf_core::Tol::GRADCHECK_F64 },
        seed: args.seed,
    };
    let be = CpuBackend::<f64>::new(args.gemm.into());
    let fault = |model: &str, tensor: &str, g: &mut [f64]| {
        if args.inject_fault.as_deref() == Some(&format!("{model}/{tensor}")) {
            g.iter_mut().for_each(|x| *x *= 1.001);
        }
    };
    let report = pool.install(|| gradcheck::run_all(&be, &opts, &fault)).context("gradient check")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &be.name());
    }
    Ok(report.ok)
}

fn print_report(r: &Report, backend: &str) {
    println!("gradient check: {backend}, dtype {}, 5-point central differences h = {:e}", r.dtype, r.h);
    println!(
        "tolerance: |analytic − numeric| ≤ {:e} or relative error ≤ {:e} (relative to max(|a|, |n|, 1e-6))\n",
        r.tol_abs, r.tol_rel
    );
    println!(
        "{:<6} {:<38} {:<22} {:>10} {:>7} {:>5} {:>10} {:>10}  status",
        "kind", "subject", "tensor", "shape", "checked", "kinks", "max_abs", "max_rel"
    );
    for s in &r.subjects {
        for t in &s.tensors {
            let shape = format!("{:?}", t.shape).replace(' ', "");
            println!(
                "{:<6} {:<38} {:<22} {:>10} {:>7} {:>5} {:>10.2e} {:>10.2e}  {}",
                s.kind,
                s.name,
                t.name,
                shape,
                t.checked,
                t.kinks,
                t.max_abs,
                t.max_rel,
                if t.ok { "ok" } else { "FAIL" }
            );
            for (i, a, n) in &t.first_bad {
                println!("         element {i}: analytic {a:.12e}  numeric {n:.12e}");
            }
        }
    }
    let tensors: usize = r.subjects.iter().map(|s| s.tensors.len()).sum();
    let failed: usize = r.subjects.iter().flat_map(|s| &s.tensors).filter(|t| !t.ok).count();
    let worst =
        r.subjects.iter().flat_map(|s| &s.tensors).filter(|t| t.checked > 0).map(|t| t.max_rel).fold(0.0f64, f64::max);
    println!(
        "\n{} subjects, {tensors} tensors, {failed} failed; worst max_rel {worst:.2e}: {}",
        r.subjects.len(),
        if r.ok { "PASS" } else { "FAIL" }
    );
}
