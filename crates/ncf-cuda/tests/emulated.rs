//! Every kernel of `kernels/*.cu`, run on the CPU by the CUDA emulator (`crates/ncf-cuda/emu`)
//! through the **launch plans of `src/plan.rs`** (the ones `CudaBackend` executes on a GPU),
//! built here from host addresses, on random inputs of odd sizes, against `CpuBackend<f32>`
//! (or a naive loop where the CPU has no such op). Each check runs with the threads in forward,
//! reverse and shuffled order. Needs only a C++ compiler; prints `skipped: no C++ compiler
//! (g++)` without one.
//!
//! `cargo test --release -p ncf-cuda --test emulated -- --nocapture`
//!
//! No grid, argument list or GEMM mapping is written here: a check calls the op's builder in
//! `ncf_cuda::plan` with the addresses of its host buffers and runs the plan with
//! [`Ctx::run`], giving the buffers (`arg(&v)` read-only, `arg(&mut v)` written); the emulator
//! resolves each pointer argument to the buffer at that address and checks the argument list
//! against the kernel's signature, and runs a plan's cuBLAS calls with a reference `sgemm`.
//! The one deliberate change of a plan is [`strided`]: grid-stride kernels also run on a small
//! grid, so every size takes several passes of the loop.
//!
//! ```ignore
//! fn relu_forward(x: &Ctx) {
//!     let (n, inp) = (1001, rand_vec(1001, 1));
//!     let mut out = vec![f32::NAN; n];
//!     let p = plan::relu_forward(ad(&inp), ad(&out), n);
//!     x.run(&p, &[arg(&inp), arg(&mut out)]);
//!     x.check("relu_forward", "n=1001", &out, &want, EXACT);
//! }
//! // CHECKS: (&[Kernel::ReluForward], relu_forward),
//! ```
//!
//! `every_kernel_is_exercised` fails while a `Kernel` has no entry in `CHECKS`. Failures print
//! max abs / rel error and the first differing values (`ncf_core::tol`), or the emulator's
//! message (block, thread, what went wrong).

mod common;
mod emu;
use common::{f64s, rand_ids, rand_vec};

use emu::{Arg, Cfg, Emu, Order, arg};
use ncf_core::tol::{Tol, compare};
use ncf_core::{AdamHp, Backend, Decay, Result, SgdHp};
use ncf_cpu::CpuBackend;
use ncf_cuda::kernels::{SOURCES, kernel_names, unit};
use ncf_cuda::plan::{self, Epilogue, GpuGemm, Kernel, LOSS_BLOCKS, Loss, Plan, RowPlanBufs, Rows, Seen, Step};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;

/// The host address of a buffer, as a plan takes it.
fn ad<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

/// A deliberately small grid for grid-stride kernels: 192 threads, so every size below takes
/// several passes of the loop (the plans' grids only do past 16.7M elements).
const STRIDED: ((u32, u32, u32), (u32, u32, u32)) = ((3, 1, 1), (64, 1, 1));

/// `p` (one launch of a grid-stride kernel), on the [`STRIDED`] grid when `strided`.
#[track_caller]
fn strided(p: Result<Plan>, strided: bool) -> Plan {
    let p = p.unwrap_or_else(|e| panic!("plan: {e}"));
    if !strided {
        return p;
    }
    let l = p.launch().unwrap_or_else(|| panic!("not a single launch: {p:?}"));
    Plan::one(l.with_cfg(STRIDED.0, STRIDED.1))
}

/// Both grids of a grid-stride kernel: the plan's and [`STRIDED`].
const GRIDS: [bool; 2] = [false, true];

/// The launch of a one-launch plan, for messages.
fn desc(p: &Plan) -> String {
    p.launches().map(|l| l.to_string()).collect::<Vec<_>>().join(" + ")
}

/// GPU vs CPU in f32: different summation orders.
const TOL: Tol = Tol::F32_KERNEL;
/// Gathers, copies, single roundings, integer results: the same bits.
const EXACT: Tol = Tol { abs: 0.0, rel: 0.0 };

// ---- Inputs ---------------------------------------------------------------------------------

/// Scores on a coarse grid (multiples of 1/8), so ties are common.
fn tied_scores(n: usize, seed: u64) -> Vec<f32> {
    rand_vec(n, seed).iter().map(|x| (x * 4.0).round() / 8.0).collect()
}

// ---- The checking context --------------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct Worst {
    max_abs: f64,
    max_rel: f64,
    compared: usize,
    exact: bool,
}

/// What a check gets: the emulator, the CPU reference, and the per-kernel worst errors.
struct Ctx<'e> {
    emu: &'e Emu,
    cpu: CpuBackend<f32>,
    worst: RefCell<BTreeMap<String, Worst>>,
}

impl Ctx<'_> {
    /// Runs a plan on the emulator over `bufs`; panics with the emulator's message on failure.
    #[track_caller]
    fn run(&self, p: &Plan, bufs: &[Arg<'_>]) {
        if let Err(e) = self.emu.run_plan(p, bufs) {
            panic!("emulated plan failed: {e}");
        }
    }

    /// Builds and runs a plan (a builder's `Result`).
    #[track_caller]
    fn run_r(&self, p: Result<Plan>, bufs: &[Arg<'_>]) -> Plan {
        let p = p.unwrap_or_else(|e| panic!("plan: {e}"));
        self.run(&p, bufs);
        p
    }

    /// Compares `got` with `want` and records the error under `kernel`; panics with the
    /// evidence (max abs / rel error, first differing values) when outside `tol`.
    #[track_caller]
    fn check(&self, kernel: &str, what: &str, got: &[f32], want: &[f32], tol: Tol) {
        self.check64(kernel, what, &f64s(got), &f64s(want), tol);
    }

    #[track_caller]
    fn check_u32(&self, kernel: &str, what: &str, got: &[u32], want: &[u32]) {
        let (g, w): (Vec<f64>, Vec<f64>) =
            (got.iter().map(|&v| v as f64).collect(), want.iter().map(|&v| v as f64).collect());
        self.check64(kernel, what, &g, &w, EXACT);
    }

    #[track_caller]
    fn check64(&self, kernel: &str, what: &str, got: &[f64], want: &[f64], tol: Tol) {
        let c = compare(&format!("{kernel} [{what}]"), got, want, tol);
        let mut worst = self.worst.borrow_mut();
        let w = worst.entry(kernel.to_string()).or_insert(Worst { exact: true, ..Worst::default() });
        // NaN (a comparison that met a NaN) sticks.
        w.max_abs = if c.max_abs.is_nan() || w.max_abs.is_nan() { f64::NAN } else { w.max_abs.max(c.max_abs) };
        w.max_rel = if c.max_rel.is_nan() || w.max_rel.is_nan() { f64::NAN } else { w.max_rel.max(c.max_rel) };
        w.compared += c.len;
        w.exact &= tol == EXACT;
        drop(worst);
        assert!(c.ok(), "{c}");
    }
}

type Check = fn(&Ctx);

/// Each check with the kernels it launches (it must launch all of them). Together they cover
/// every [`Kernel`] (`every_kernel_is_exercised`).
const CHECKS: &[(&[Kernel], Check)] = &[
    (&[Kernel::EmbeddingForward], embedding_forward),
    (&[Kernel::EmbeddingBackwardAtomic], embedding_backward_atomic),
    (&[Kernel::RowsCount, Kernel::RowsScan, Kernel::RowsPlace, Kernel::RowsSort], row_plan_check),
    (&[Kernel::EmbeddingBackwardSorted], embedding_backward_sorted),
    (&[Kernel::GatherAddRelu], gather_add_relu),
    (&[Kernel::GemmNaive, Kernel::BiasGrad], gemm_naive),
    (&[Kernel::GemmTiled, Kernel::BiasGrad, Kernel::MatvecBias], gemm_tiled),
    (&[Kernel::BiasBroadcast, Kernel::BiasReluForward, Kernel::BiasGrad, Kernel::MatvecBias], gemm_cublas),
    (&[Kernel::BiasGrad], bias_grad),
    (&[Kernel::MatvecBias], matvec_bias),
    (&[Kernel::ReluForward], relu_forward),
    (&[Kernel::ReluBackward], relu_backward),
    (&[Kernel::ReluBiasBackward], relu_bias_backward),
    (&[Kernel::BiasReluForward], bias_relu_forward),
    (&[Kernel::SigmoidForward], sigmoid_forward),
    (&[Kernel::BceWithLogits], bce_with_logits),
    (&[Kernel::Mse], mse),
    (&[Kernel::Dropout], dropout),
    (&[Kernel::BatchnormForwardTrain], batchnorm_forward_train),
    (&[Kernel::BatchnormForwardEval], batchnorm_forward_eval),
    (&[Kernel::BatchnormBackward], batchnorm_backward),
    (&[Kernel::GmfForward], gmf_forward),
    (&[Kernel::GmfBackward], gmf_backward),
    (&[Kernel::ConcatCols], concat_cols),
    (&[Kernel::SplitCols], split_cols),
    (&[Kernel::RowdotForward], rowdot_forward),
    (&[Kernel::RowdotBackward], rowdot_backward),
    (&[Kernel::AddAssign], add_assign),
    (&[Kernel::Scale], scale),
    (&[Kernel::AddScalar], add_scalar),
    (&[Kernel::SumInto], sum_into),
    (&[Kernel::Fill], fill),
    (&[Kernel::SgdStep], sgd_step),
    (&[Kernel::SgdStepRows], sgd_step_rows),
    (&[Kernel::AdamStep], adam_step),
    (&[Kernel::AdamStepRows], adam_step_rows),
    (&[Kernel::CounterAdd], counter_add),
    (&[Kernel::SampleBatch, Kernel::CounterAdd], sample_batch),
    (&[Kernel::RankOfFirst], rank_of_first),
    (&[Kernel::FullRank], full_rank),
    (&[Kernel::TopK], top_k),
];

// ---- embedding.cu ------------------------------------------------------------------------------

fn embedding_forward(x: &Ctx) {
    for &(n, d, b) in &[(97, 24, 300), (31, 13, 1001), (5, 1, 7)] {
        let (table, ids) = (rand_vec(n * d, 1), rand_ids(b, n, 2));
        let mut want = vec![0.0; b * d];
        x.cpu.embedding_forward(&table, n, d, &ids, b, &mut want).unwrap();
        for s in GRIDS {
            let mut out = vec![f32::NAN; b * d];
            let p = strided(plan::embedding_forward(ad(&table), ad(&ids), ad(&out), b, d), s);
            x.run(&p, &[arg(&table), arg(&ids), arg(&mut out)]);
            x.check("embedding_forward", &format!("n={n} d={d} b={b} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

/// backend.rs `embedding_backward` with `deterministic = false`.
fn embedding_backward_atomic(x: &Ctx) {
    for &(n, d, b) in &[(97, 24, 300), (13, 33, 1001), (3, 5, 64)] {
        let (dout, ids, init) = (rand_vec(b * d, 3), rand_ids(b, n, 4), rand_vec(n * d, 5));
        let mut want = init.clone();
        x.cpu.embedding_backward(&dout, &ids, b, d, &mut want, n).unwrap();
        for s in GRIDS {
            let mut got = init.clone();
            let p = strided(plan::embedding_backward_atomic(ad(&dout), ad(&ids), ad(&got), b, d), s);
            x.run(&p, &[arg(&dout), arg(&ids), arg(&mut got)]);
            x.check("embedding_backward_atomic", &format!("n={n} d={d} b={b} {}", desc(&p)), &got, &want, TOL);
        }
    }
}

/// The row plan buffers of backend.rs `RowPlan`, for ids of capacity `cap` over `n` rows.
struct RowBufs {
    count: Vec<u32>,
    first: Vec<u32>,
    fill: Vec<u32>,
    order: Vec<u32>,
    seg: Vec<u32>,
    uniq: Vec<u32>,
    nuniq: Vec<u32>,
}

impl RowBufs {
    fn addrs(&self) -> RowPlanBufs {
        RowPlanBufs {
            count: ad(&self.count),
            first: ad(&self.first),
            fill: ad(&self.fill),
            order: ad(&self.order),
            seg: ad(&self.seg),
            uniq: ad(&self.uniq),
            nuniq: ad(&self.nuniq),
        }
    }
}

/// `plan::row_plan` of `ids[..b]` (the four launches backend.rs's `row_plan` runs), step by
/// step, checking what each leaves behind when `verify` is set.
fn row_plan(x: &Ctx, ids: &[u32], n: usize, cap: usize, verify: bool) -> RowBufs {
    let b = ids.len();
    let z = |len: usize| vec![0u32; len.max(1)];
    let empty = vec![u32::MAX; n.max(1)];
    let mut p = RowBufs {
        count: z(n),
        first: empty.clone(),
        fill: z(n),
        order: z(cap),
        seg: z(cap + 1),
        uniq: z(cap),
        nuniq: z(1),
    };
    let tag = format!("n={n} b={b} cap={cap}");
    let (mut counts, mut first) = (vec![0u32; n.max(1)], empty.clone());
    for (k, &i) in ids.iter().enumerate() {
        counts[i as usize] += 1;
        first[i as usize] = first[i as usize].min(k as u32);
    }
    let (order, starts) = ncf_cuda::backend::sorted_runs(ids);
    // The distinct rows in order of first appearance.
    let uniq: Vec<u32> = starts[..starts.len() - 1].iter().map(|&s| ids[order[s as usize] as usize]).collect();
    let s = uniq.len();

    let full = plan::row_plan(ad(ids), &p.addrs(), b, n, cap).unwrap();
    let kernels: Vec<Kernel> = full.launches().map(|l| l.kernel).collect();
    assert_eq!(kernels, [Kernel::RowsCount, Kernel::RowsScan, Kernel::RowsPlace, Kernel::RowsSort]);
    for step in full.steps() {
        let Step::Kernel(l) = step else { panic!("the row plan has no GEMM") };
        let bufs = [
            arg(ids),
            arg(&mut p.count),
            arg(&mut p.first),
            arg(&mut p.fill),
            arg(&mut p.order),
            arg(&mut p.seg),
            arg(&mut p.uniq),
            arg(&mut p.nuniq),
        ];
        x.run(&Plan::one(*l), &bufs);
        if !verify {
            continue;
        }
        match l.kernel {
            Kernel::RowsCount => {
                x.check_u32("rows_count", &format!("count {tag}"), &p.count, &counts);
                x.check_u32("rows_count", &format!("first {tag}"), &p.first, &first);
            }
            Kernel::RowsScan => {
                x.check_u32("rows_scan", &format!("nuniq {tag}"), &p.nuniq, &[s as u32]);
                x.check_u32("rows_scan", &format!("uniq {tag}"), &p.uniq[..s], &uniq);
                x.check_u32("rows_scan", &format!("seg {tag}"), &p.seg[..=s], &starts);
                let fill: Vec<u32> = uniq.iter().map(|&r| p.fill[r as usize]).collect();
                x.check_u32("rows_scan", &format!("fill {tag}"), &fill, &starts[..s]);
            }
            Kernel::RowsPlace => {
                let fill: Vec<u32> = uniq.iter().map(|&r| p.fill[r as usize]).collect();
                x.check_u32("rows_place", &format!("fill = run ends {tag}"), &fill, &starts[1..]);
                // Each run holds its row's positions, in any order.
                let mut placed = p.order[..b].to_vec();
                for w in starts.windows(2) {
                    placed[w[0] as usize..w[1] as usize].sort_unstable();
                }
                x.check_u32("rows_place", &format!("order as sets {tag}"), &placed, &order);
            }
            _ => {
                x.check_u32("rows_sort", &format!("order {tag}"), &p.order[..b], &order);
                x.check_u32("rows_sort", &format!("count reset {tag}"), &p.count, &z(n));
                x.check_u32("rows_sort", &format!("first reset {tag}"), &p.first, &empty);
            }
        }
    }
    p
}

fn row_plan_check(x: &Ctx) {
    for &(n, b, cap) in &[(97, 300, 300), (5000, 1001, 1024), (3, 64, 100), (1, 1, 1), (100_000, 257, 300)] {
        let ids = rand_ids(b, n, 6);
        row_plan(x, &ids, n, cap, true);
    }
    // Every id the same: one run of b positions.
    row_plan(x, &[7u32; 555], 10, 600, true);
}

/// backend.rs `embedding_backward` (deterministic): the row plan, then one thread per (row,
/// column) summing in batch order, the CPU's order: the same bits.
fn embedding_backward_sorted(x: &Ctx) {
    for &(n, d, b, cap) in &[(97, 24, 300, 300), (13, 33, 1001, 1024), (3, 5, 64, 64), (1000, 7, 5, 40)] {
        let (dout, ids, init) = (rand_vec(b * d, 6), rand_ids(b, n, 7), rand_vec(n * d, 8));
        let mut want = init.clone();
        x.cpu.embedding_backward(&dout, &ids, b, d, &mut want, n).unwrap();
        let p = row_plan(x, &ids, n, cap, false);
        for s in GRIDS {
            let mut got = init.clone();
            let pl = strided(plan::embedding_backward_sorted(ad(&dout), &p.addrs(), ad(&got), b, d), s);
            let bufs = [arg(&dout), arg(&p.order), arg(&p.seg), arg(&p.uniq), arg(&p.nuniq), arg(&mut got)];
            x.run(&pl, &bufs);
            x.check("embedding_backward_sorted", &format!("n={n} d={d} b={b} {}", desc(&pl)), &got, &want, EXACT);
        }
    }
}

fn gather_add_relu(x: &Ctx) {
    for &(na, nc, d, b) in &[(97, 50, 24, 300), (7, 300, 13, 1001), (1, 1, 1, 3)] {
        let (a, c) = (rand_vec(na * d, 9), rand_vec(nc * d, 10));
        let (ia, ic) = (rand_ids(b, na, 11), rand_ids(b, nc, 12));
        let mut want = vec![0.0; b * d];
        x.cpu.gather_add_relu(&a, na, &ia, &c, nc, &ic, d, b, &mut want).unwrap();
        for s in GRIDS {
            let mut out = vec![f32::NAN; b * d];
            let p = strided(plan::gather_add_relu((ad(&a), ad(&ia)), (ad(&c), ad(&ic)), ad(&out), b, d), s);
            x.run(&p, &[arg(&a), arg(&ia), arg(&c), arg(&ic), arg(&mut out)]);
            x.check("gather_add_relu", &format!("d={d} b={b} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

// ---- linear.cu -----------------------------------------------------------------------------------

/// The naive f64 reference of `C = alpha·op(A)·op(B) + beta·C (+ bias)`.
#[allow(clippy::too_many_arguments)]
fn gemm_ref(
    a: &[f32],
    bm: &[f32],
    c0: &[f32],
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
    (alpha, beta): (f32, f32),
    bias: Option<&[f32]>,
) -> Vec<f64> {
    (0..m * n)
        .map(|e| {
            let (r, cc) = (e / n, e % n);
            let dot: f64 = (0..k)
                .map(|p| {
                    let av = if ta { a[p * m + r] } else { a[r * k + p] };
                    let bv = if tb { bm[cc * k + p] } else { bm[p * n + cc] };
                    av as f64 * bv as f64
                })
                .sum();
            let c = alpha as f64 * dot + if beta == 0.0 { 0.0 } else { beta as f64 * c0[e] as f64 };
            c + bias.map_or(0.0, |bs| bs[cc] as f64)
        })
        .collect()
}

/// The dense layer forward (with and without the fused ReLU) and backward through `gemm`'s
/// plans, against the CPU's; then the GEMM alone with every transpose combination, alpha /
/// beta and epilogue against a naive f64 product. With cuBLAS, the plans' `sgemm` calls run on
/// the emulator's reference `sgemm` (so the row-major → column-major mapping is checked) and
/// their extra kernels (`bias_broadcast`, `bias_relu_forward`) on the emulator.
fn check_gemm(x: &Ctx, g: GpuGemm, kernel: &str) {
    let shapes =
        [(256, 64, 32), (300, 32, 16), (257, 16, 8), (7, 5, 3), (70, 33, 65), (129, 100, 17), (1, 1, 2), (33, 7, 1)];
    for &(b, i, o) in &shapes {
        let (inp, w, bias, dout) = (rand_vec(b * i, 5), rand_vec(o * i, 6), rand_vec(o, 7), rand_vec(b * o, 8));
        let tag = format!("{g:?} b={b} i={i} o={o}");
        let mut want = vec![0.0; b * o];
        x.cpu.linear_forward(&inp, &w, &bias, &mut want, b, i, o).unwrap();
        let mut got = vec![f32::NAN; b * o];
        let p = plan::linear_forward(g, ad(&inp), ad(&w), ad(&bias), ad(&got), b, i, o);
        x.run_r(p, &[arg(&inp), arg(&w), arg(&bias), arg(&mut got)]);
        let fwd = if o == 1 && g != GpuGemm::Naive { "matvec_bias" } else { kernel };
        x.check(fwd, &format!("linear_forward {tag}"), &got, &want, TOL);

        // backend.rs `linear_relu_forward`: z and relu(z) from the GEMM's epilogue.
        let (mut wz, mut wx) = (vec![0.0; b * o], vec![0.0; b * o]);
        x.cpu.linear_relu_forward(&inp, &w, &bias, &mut wz, &mut wx, b, i, o).unwrap();
        let (mut gz, mut gx) = (vec![f32::NAN; b * o], vec![f32::NAN; b * o]);
        let p = plan::linear_relu_forward(g, ad(&inp), ad(&w), ad(&bias), ad(&gz), ad(&gx), b, i, o);
        x.run_r(p, &[arg(&inp), arg(&w), arg(&bias), arg(&mut gz), arg(&mut gx)]);
        x.check(kernel, &format!("linear_relu_forward z {tag}"), &gz, &wz, TOL);
        x.check(kernel, &format!("linear_relu_forward x {tag}"), &gx, &wx, TOL);

        let (mut dinp, mut dw, mut db) = (vec![0.0; b * i], rand_vec(o * i, 9), rand_vec(o, 10));
        let (mut gdinp, mut gdw, mut gdb) = (vec![f32::NAN; b * i], dw.clone(), db.clone());
        x.cpu.linear_backward(&dout, &inp, &w, Some(&mut dinp), &mut dw, &mut db, b, i, o).unwrap();
        let p = plan::linear_backward(g, ad(&dout), ad(&inp), ad(&w), Some(ad(&gdinp)), ad(&gdw), ad(&gdb), b, i, o);
        x.run_r(p, &[arg(&dout), arg(&inp), arg(&w), arg(&mut gdinp), arg(&mut gdw), arg(&mut gdb)]);
        x.check(kernel, &format!("dinp {tag}"), &gdinp, &dinp, TOL);
        x.check(kernel, &format!("dw {tag}"), &gdw, &dw, TOL);
        x.check("bias_grad", &format!("dbias {tag}"), &gdb, &db, TOL);
    }
    for &(m, n, k) in &[(67, 19, 35), (5, 3, 1), (130, 40, 16), (64, 16, 16)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (a, bm, bias) = (rand_vec(m * k, 11), rand_vec(k * n, 12), rand_vec(n, 13));
            // (alpha, beta, bias, relu)
            for (alpha, beta, with_bias, with_relu) in [
                (0.5f32, 0.0f32, false, false),
                (-1.25, 1.5, false, false),
                (1.0, 0.0, true, true),
                (0.75, -0.5, true, false),
            ] {
                // beta = 0 must ignore C, even NaN.
                let c0 = if beta == 0.0 { vec![f32::NAN; m * n] } else { rand_vec(m * n, 14) };
                let want = gemm_ref(&a, &bm, &c0, (m, n, k), (ta, tb), (alpha, beta), with_bias.then_some(&bias[..]));
                let mut c = c0.clone();
                let mut relu = vec![f32::NAN; m * n];
                let epi = match (with_bias, with_relu) {
                    (false, _) => Epilogue::None,
                    (true, false) => Epilogue::Bias(ad(&bias)),
                    (true, true) => Epilogue::BiasRelu(ad(&bias), ad(&relu)),
                };
                let p = plan::gemm("gemm", g, (ad(&a), ad(&bm), ad(&c)), (m, n, k), (ta, tb), (alpha, beta), epi);
                x.run_r(p, &[arg(&a), arg(&bm), arg(&mut c), arg(&bias), arg(&mut relu)]);
                let what = format!("m={m} n={n} k={k} ta={ta} tb={tb} α={alpha} β={beta} {epi:?}");
                x.check64(kernel, &format!("C {what}"), &f64s(&c), &want, TOL);
                if with_relu {
                    let want_relu: Vec<f64> = want.iter().map(|v| v.max(0.0)).collect();
                    x.check64(kernel, &format!("relu_out {what}"), &f64s(&relu), &want_relu, TOL);
                } else {
                    assert!(relu.iter().all(|v| v.is_nan()), "no relu output asked, none written ({what})");
                }
            }
        }
    }
}

fn gemm_naive(x: &Ctx) {
    check_gemm(x, GpuGemm::Naive, "gemm_naive");
}

fn gemm_tiled(x: &Ctx) {
    check_gemm(x, GpuGemm::Tiled, "gemm_tiled");
}

/// The cuBLAS plans: `sgemm` (the emulator's reference) with `bias_broadcast` /
/// `bias_relu_forward` around it.
fn gemm_cublas(x: &Ctx) {
    check_gemm(x, GpuGemm::Cublas, "cublas plan");
}

fn bias_grad(x: &Ctx) {
    for &(b, o) in &[(300, 17), (1000, 3), (1, 5), (257, 1)] {
        let (dout, init) = (rand_vec(b * o, 15), rand_vec(o, 16));
        let want: Vec<f64> =
            (0..o).map(|c| init[c] as f64 + (0..b).map(|r| dout[r * o + c] as f64).sum::<f64>()).collect();
        // linear_backward without dinp and with i = 0: the dw GEMM is empty (m·n = 0), so the
        // plan is the bias gradient alone.
        let mut got = init.clone();
        let p = plan::linear_backward(GpuGemm::Tiled, ad(&dout), 1, 1, None, 1, ad(&got), b, 0, o).unwrap();
        assert_eq!(p.steps().len(), 1, "{p:?}");
        x.run(&p, &[arg(&dout), arg(&mut got)]);
        x.check64("bias_grad", &format!("b={b} o={o}"), &f64s(&got), &want, TOL);
    }
}

fn matvec_bias(x: &Ctx) {
    for &(b, i) in &[(300, 70), (257, 16), (5, 1), (33, 32)] {
        let (inp, w, bias) = (rand_vec(b * i, 17), rand_vec(i, 18), rand_vec(1, 19));
        let mut want = vec![0.0; b];
        x.cpu.linear_forward(&inp, &w, &bias, &mut want, b, i, 1).unwrap();
        let mut got = vec![f32::NAN; b];
        let p = x.run_r(
            plan::linear_forward(GpuGemm::Tiled, ad(&inp), ad(&w), ad(&bias), ad(&got), b, i, 1),
            &[arg(&inp), arg(&w), arg(&bias), arg(&mut got)],
        );
        assert_eq!(p.launch().map(|l| l.kernel), Some(Kernel::MatvecBias));
        x.check("matvec_bias", &format!("b={b} i={i}"), &got, &want, TOL);
    }
}

// ---- activation.cu ---------------------------------------------------------------------------

const SIZES: [usize; 3] = [5000, 1001, 1];

fn relu_forward(x: &Ctx) {
    for n in SIZES {
        let inp = rand_vec(n, 20);
        let mut want = vec![0.0; n];
        x.cpu.relu_forward(&inp, &mut want, n).unwrap();
        for s in GRIDS {
            let mut out = vec![f32::NAN; n];
            let p = strided(Ok(plan::relu_forward(ad(&inp), ad(&out), n)), s);
            x.run(&p, &[arg(&inp), arg(&mut out)]);
            x.check("relu_forward", &format!("n={n} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

fn relu_backward(x: &Ctx) {
    for n in SIZES {
        let out: Vec<f32> = rand_vec(n, 21).iter().map(|v| v.max(0.0)).collect();
        let dout = rand_vec(n, 22);
        let mut want = vec![0.0; n];
        x.cpu.relu_backward(&out, &dout, &mut want, n).unwrap();
        for s in GRIDS {
            let mut dinp = vec![f32::NAN; n];
            let p = strided(Ok(plan::relu_backward(ad(&out), ad(&dout), ad(&dinp), n)), s);
            x.run(&p, &[arg(&out), arg(&dout), arg(&mut dinp)]);
            x.check("relu_backward", &format!("n={n} {}", desc(&p)), &dinp, &want, EXACT);
        }
    }
}

/// The fused ReLU mask and bias gradient of `linear_relu_backward` (its plan's first launch):
/// `dz` exactly the CPU's `relu_backward`, `dbias += Σ_b dz` within the reduction tolerance.
fn relu_bias_backward(x: &Ctx) {
    for &(b, o) in &[(300, 17), (1000, 3), (1, 5), (257, 1)] {
        let xo: Vec<f32> = rand_vec(b * o, 41).iter().map(|v| v.max(0.0)).collect();
        let (dx, init) = (rand_vec(b * o, 42), rand_vec(o, 43));
        let mut want_dz = vec![0.0; b * o];
        x.cpu.relu_backward(&xo, &dx, &mut want_dz, b * o).unwrap();
        let want_db: Vec<f64> =
            (0..o).map(|c| init[c] as f64 + (0..b).map(|r| want_dz[r * o + c] as f64).sum::<f64>()).collect();
        let (mut dz, mut db) = (vec![f32::NAN; b * o], init.clone());
        // i = 0 and no dinp: the GEMMs are empty, the plan is the fused pass alone.
        let p = plan::linear_relu_backward(GpuGemm::Tiled, ad(&xo), ad(&dx), ad(&dz), 1, 1, None, 1, ad(&db), b, 0, o)
            .unwrap();
        assert_eq!(p.launch().map(|l| l.kernel), Some(Kernel::ReluBiasBackward));
        x.run(&p, &[arg(&xo), arg(&dx), arg(&mut dz), arg(&mut db)]);
        x.check("relu_bias_backward", &format!("dz b={b} o={o}"), &dz, &want_dz, EXACT);
        x.check64("relu_bias_backward", &format!("dbias b={b} o={o}"), &f64s(&db), &want_db, TOL);
    }
}

/// `z += bias` per column and `x = relu(z)` when `x` is given (null: z only), the cuBLAS
/// plans' epilogue.
fn bias_relu_forward(x: &Ctx) {
    for &(b, o) in &[(300, 17), (7, 64), (1, 1)] {
        let (z0, bias) = (rand_vec(b * o, 23), rand_vec(o, 24));
        let want_z: Vec<f32> = (0..b * o).map(|k| z0[k] + bias[k % o]).collect();
        let mut want_x = vec![0.0; b * o];
        x.cpu.relu_forward(&want_z, &mut want_x, b * o).unwrap();
        for s in GRIDS {
            let (mut z, mut out) = (z0.clone(), vec![f32::NAN; b * o]);
            let p = strided(plan::bias_relu_forward(ad(&z), ad(&bias), ad(&out), b, o), s);
            x.run(&p, &[arg(&mut z), arg(&bias), arg(&mut out)]);
            x.check("bias_relu_forward", &format!("z b={b} o={o} {}", desc(&p)), &z, &want_z, EXACT);
            x.check("bias_relu_forward", &format!("x b={b} o={o} {}", desc(&p)), &out, &want_x, EXACT);
            let mut z = z0.clone();
            let p = strided(plan::bias_relu_forward(ad(&z), ad(&bias), 0, b, o), s);
            x.run(&p, &[arg(&mut z), arg(&bias)]);
            x.check("bias_relu_forward", &format!("z (x null) b={b} o={o} {}", desc(&p)), &z, &want_z, EXACT);
        }
    }
}

fn sigmoid_forward(x: &Ctx) {
    for n in SIZES {
        let inp: Vec<f32> = rand_vec(n, 25).iter().map(|v| v * 30.0).collect();
        let mut want = vec![0.0; n];
        x.cpu.sigmoid_forward(&inp, &mut want, n).unwrap();
        for s in GRIDS {
            let mut out = vec![f32::NAN; n];
            let p = strided(Ok(plan::sigmoid_forward(ad(&inp), ad(&out), n)), s);
            x.run(&p, &[arg(&inp), arg(&mut out)]);
            x.check("sigmoid_forward", &format!("n={n} {}", desc(&p)), &out, &want, TOL);
        }
    }
}

// ---- loss.cu --------------------------------------------------------------------------------------

/// Batches below, at and above one pass of 64 blocks × 256 threads (16384): one block, some,
/// all 64, and a grid-stride loop.
const LOSS_SIZES: [usize; 6] = [5000, 20001, 16384, 255, 257, 1];

/// Two calls in a row (the counter must re-arm), against the CPU's two calls.
fn check_loss(x: &Ctx, op: &str, xs: &[f32], ys: &[f32], b: usize) {
    let loss_fn = if op == "mse" { Loss::Mse } else { Loss::BceWithLogits };
    let (mut partials, mut done) = (vec![f32::NAN; LOSS_BLOCKS as usize], vec![0u32]);
    let (mut loss, mut gloss) = (vec![0.25f32], vec![0.25f32]);
    for call in 0..2 {
        let mut dx = vec![0.0; b];
        match loss_fn {
            Loss::Mse => x.cpu.mse(&xs.to_vec(), &ys.to_vec(), b, &mut loss, &mut dx).unwrap(),
            Loss::BceWithLogits => x.cpu.bce_with_logits(&xs.to_vec(), &ys.to_vec(), b, &mut loss, &mut dx).unwrap(),
        }
        let mut gdx = vec![f32::NAN; b];
        let p = plan::mean_loss(loss_fn, ad(xs), ad(ys), ad(&gdx), (ad(&partials), ad(&done)), ad(&gloss), b);
        x.run_r(p, &[arg(xs), arg(ys), arg(&mut gdx), arg(&mut partials), arg(&mut done), arg(&mut gloss)]);
        x.check(op, &format!("gradient b={b} call {call}"), &gdx, &dx, TOL);
        x.check(op, &format!("loss b={b} call {call}"), &gloss, &loss, TOL);
        x.check_u32(op, &format!("done re-armed b={b}"), &done, &[0]);
    }
}

fn bce_with_logits(x: &Ctx) {
    for b in LOSS_SIZES {
        let z: Vec<f32> = rand_vec(b, 26).iter().map(|v| v * 8.0).collect();
        let y: Vec<f32> = rand_vec(b, 27).iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
        check_loss(x, "bce_with_logits", &z, &y, b);
    }
}

fn mse(x: &Ctx) {
    for b in LOSS_SIZES {
        check_loss(x, "mse", &rand_vec(b, 28), &rand_vec(b, 29), b);
    }
}

// ---- elementwise.cu ------------------------------------------------------------------------------

fn gmf_forward(x: &Ctx) {
    for n in SIZES {
        let (p, q) = (rand_vec(n, 31), rand_vec(n, 32));
        let mut want = vec![0.0; n];
        x.cpu.gmf_forward(&p, &q, &mut want, n).unwrap();
        for s in GRIDS {
            let mut h = vec![f32::NAN; n];
            let pl = strided(Ok(plan::gmf_forward(ad(&p), ad(&q), ad(&h), n)), s);
            x.run(&pl, &[arg(&p), arg(&q), arg(&mut h)]);
            x.check("gmf_forward", &format!("n={n} {}", desc(&pl)), &h, &want, EXACT);
        }
    }
}

fn gmf_backward(x: &Ctx) {
    for n in SIZES {
        let (dh, p, q) = (rand_vec(n, 33), rand_vec(n, 34), rand_vec(n, 35));
        let (mut dp, mut dq) = (vec![0.0; n], vec![0.0; n]);
        x.cpu.gmf_backward(&dh, &p, &q, &mut dp, &mut dq, n).unwrap();
        for s in GRIDS {
            let (mut gp, mut gq) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            let pl = strided(Ok(plan::gmf_backward(ad(&dh), ad(&p), ad(&q), ad(&gp), ad(&gq), n)), s);
            x.run(&pl, &[arg(&dh), arg(&p), arg(&q), arg(&mut gp), arg(&mut gq)]);
            x.check("gmf_backward", &format!("dp n={n} {}", desc(&pl)), &gp, &dp, EXACT);
            x.check("gmf_backward", &format!("dq n={n} {}", desc(&pl)), &gq, &dq, EXACT);
        }
    }
}

const COLS: [(usize, usize, usize); 3] = [(300, 24, 13), (7, 1, 64), (1001, 3, 5)];

fn concat_cols(x: &Ctx) {
    for (b, da, dc) in COLS {
        let (a, c) = (rand_vec(b * da, 36), rand_vec(b * dc, 37));
        let mut want = vec![0.0; b * (da + dc)];
        x.cpu.concat_cols(&a, da, &c, dc, b, &mut want).unwrap();
        for s in GRIDS {
            let mut out = vec![f32::NAN; b * (da + dc)];
            let p = strided(plan::concat_cols((ad(&a), da), (ad(&c), dc), b, ad(&out)), s);
            x.run(&p, &[arg(&a), arg(&c), arg(&mut out)]);
            x.check("concat_cols", &format!("b={b} da={da} dc={dc} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

fn split_cols(x: &Ctx) {
    for (b, da, dc) in COLS {
        let inp = rand_vec(b * (da + dc), 38);
        let (mut wa, mut wc) = (vec![0.0; b * da], vec![0.0; b * dc]);
        x.cpu.split_cols(&inp, da, dc, b, &mut wa, &mut wc).unwrap();
        for s in GRIDS {
            let (mut ga, mut gc) = (vec![f32::NAN; b * da], vec![f32::NAN; b * dc]);
            let p = strided(plan::split_cols(ad(&inp), (da, dc), b, ad(&ga), ad(&gc)), s);
            x.run(&p, &[arg(&inp), arg(&mut ga), arg(&mut gc)]);
            x.check("split_cols", &format!("a b={b} da={da} dc={dc} {}", desc(&p)), &ga, &wa, EXACT);
            x.check("split_cols", &format!("c b={b} da={da} dc={dc} {}", desc(&p)), &gc, &wc, EXACT);
        }
    }
}

const ROWS: [(usize, usize); 4] = [(300, 24), (257, 70), (5, 1), (9, 32)];

// ---- norm.cu -----------------------------------------------------------------------------------

/// The same mask and values as the CPU (the same hash), bit for bit.
fn dropout(x: &Ctx) {
    for (n, p, seed) in [(5000, 0.5, 1u64), (1001, 0.1, 2), (1, 0.3, 3), (777, 0.0, 4)] {
        let inp = rand_vec(n, 60);
        let mut want = vec![0.0; n];
        x.cpu.dropout(&inp, &mut want, n, p, seed).unwrap();
        for s in GRIDS {
            let mut out = vec![f32::NAN; n];
            let pl = strided(Ok(plan::dropout(ad(&inp), ad(&out), n, p, seed)), s);
            x.run(&pl, &[arg(&inp), arg(&mut out)]);
            x.check("dropout", &format!("n={n} p={p} {}", desc(&pl)), &out, &want, EXACT);
        }
    }
}

/// Batch norm shapes: one row, odd widths, more columns than a strided grid's threads.
const BN: [(usize, usize); 4] = [(300, 24), (1, 5), (257, 70), (33, 200)];

fn batchnorm_forward_train(x: &Ctx) {
    for (b, h) in BN {
        let (inp, gamma, beta) = (rand_vec(b * h, 61), rand_vec(h, 62), rand_vec(h, 63));
        let (rm0, rv0): (Vec<f32>, Vec<f32>) =
            (rand_vec(h, 64), rand_vec(h, 65).iter().map(|v| v.abs() + 0.5).collect());
        let (mut y, mut xh, mut inv) = (vec![0.0; b * h], vec![0.0; b * h], vec![0.0; h]);
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        x.cpu
            .batchnorm_forward_train(
                &inp,
                &gamma,
                &beta,
                b,
                h,
                1e-5,
                0.1,
                &mut y,
                &mut xh,
                &mut inv,
                (&mut rm, &mut rv),
            )
            .unwrap();
        for s in GRIDS {
            let (mut gy, mut gxh, mut ginv) = (vec![f32::NAN; b * h], vec![f32::NAN; b * h], vec![f32::NAN; h]);
            let (mut grm, mut grv) = (rm0.clone(), rv0.clone());
            let pl = strided(
                plan::batchnorm_forward_train(
                    (ad(&inp), ad(&gamma), ad(&beta)),
                    (ad(&gy), ad(&gxh), ad(&ginv)),
                    (ad(&grm), ad(&grv)),
                    b,
                    h,
                    1e-5,
                    0.1,
                ),
                s,
            );
            x.run(
                &pl,
                &[
                    arg(&inp),
                    arg(&gamma),
                    arg(&beta),
                    arg(&mut gy),
                    arg(&mut gxh),
                    arg(&mut ginv),
                    arg(&mut grm),
                    arg(&mut grv),
                ],
            );
            let what = |t: &str| format!("{t} b={b} h={h} {}", desc(&pl));
            x.check("batchnorm_forward_train", &what("y"), &gy, &y, TOL);
            x.check("batchnorm_forward_train", &what("xhat"), &gxh, &xh, TOL);
            x.check("batchnorm_forward_train", &what("inv"), &ginv, &inv, TOL);
            x.check("batchnorm_forward_train", &what("rmean"), &grm, &rm, TOL);
            x.check("batchnorm_forward_train", &what("rvar"), &grv, &rv, TOL);
        }
    }
}

fn batchnorm_forward_eval(x: &Ctx) {
    for (b, h) in BN {
        let (inp, gamma, beta, rm) = (rand_vec(b * h, 66), rand_vec(h, 67), rand_vec(h, 68), rand_vec(h, 69));
        let rv: Vec<f32> = rand_vec(h, 70).iter().map(|v| v.abs() + 0.5).collect();
        let mut want = vec![0.0; b * h];
        x.cpu.batchnorm_forward_eval(&inp, &gamma, &beta, &rm, &rv, b, h, 1e-5, &mut want).unwrap();
        for s in GRIDS {
            let mut y = vec![f32::NAN; b * h];
            let pl = strided(
                plan::batchnorm_forward_eval((ad(&inp), ad(&gamma), ad(&beta)), (ad(&rm), ad(&rv)), ad(&y), b, h, 1e-5),
                s,
            );
            x.run(&pl, &[arg(&inp), arg(&gamma), arg(&beta), arg(&rm), arg(&rv), arg(&mut y)]);
            x.check("batchnorm_forward_eval", &format!("b={b} h={h} {}", desc(&pl)), &y, &want, TOL);
        }
    }
}

fn batchnorm_backward(x: &Ctx) {
    for (b, h) in BN {
        let (dy, xh, gamma) = (rand_vec(b * h, 71), rand_vec(b * h, 72), rand_vec(h, 73));
        let inv: Vec<f32> = rand_vec(h, 74).iter().map(|v| v.abs() + 0.5).collect();
        let (dg0, db0) = (rand_vec(h, 75), rand_vec(h, 76));
        let (mut dx, mut dg, mut db) = (vec![0.0; b * h], dg0.clone(), db0.clone());
        x.cpu.batchnorm_backward(&dy, &xh, &gamma, &inv, b, h, &mut dx, &mut dg, &mut db).unwrap();
        for s in GRIDS {
            let (mut gdx, mut gdg, mut gdb) = (vec![f32::NAN; b * h], dg0.clone(), db0.clone());
            let pl = strided(
                plan::batchnorm_backward(
                    (ad(&dy), ad(&xh), ad(&gamma), ad(&inv)),
                    (ad(&gdx), ad(&gdg), ad(&gdb)),
                    b,
                    h,
                ),
                s,
            );
            x.run(&pl, &[arg(&dy), arg(&xh), arg(&gamma), arg(&inv), arg(&mut gdx), arg(&mut gdg), arg(&mut gdb)]);
            let what = |t: &str| format!("{t} b={b} h={h} {}", desc(&pl));
            x.check("batchnorm_backward", &what("dx"), &gdx, &dx, TOL);
            x.check("batchnorm_backward", &what("dgamma"), &gdg, &dg, TOL);
            x.check("batchnorm_backward", &what("dbeta"), &gdb, &db, TOL);
        }
    }
}

fn rowdot_forward(x: &Ctx) {
    for (b, d) in ROWS {
        let (u, v) = (rand_vec(b * d, 39), rand_vec(b * d, 40));
        let mut want = vec![0.0; b];
        x.cpu.rowdot_forward(&u, &v, b, d, &mut want).unwrap();
        let mut out = vec![f32::NAN; b];
        x.run_r(plan::rowdot_forward(ad(&u), ad(&v), b, d, ad(&out)), &[arg(&u), arg(&v), arg(&mut out)]);
        x.check("rowdot_forward", &format!("b={b} d={d}"), &out, &want, TOL);
    }
}

fn rowdot_backward(x: &Ctx) {
    for (b, d) in ROWS {
        let (dout, u, v) = (rand_vec(b, 41), rand_vec(b * d, 42), rand_vec(b * d, 43));
        let (mut du, mut dv) = (vec![0.0; b * d], vec![0.0; b * d]);
        x.cpu.rowdot_backward(&dout, &u, &v, b, d, &mut du, &mut dv).unwrap();
        for s in GRIDS {
            let (mut gu, mut gv) = (vec![f32::NAN; b * d], vec![f32::NAN; b * d]);
            let p = strided(plan::rowdot_backward(ad(&dout), ad(&u), ad(&v), b, d, ad(&gu), ad(&gv)), s);
            x.run(&p, &[arg(&dout), arg(&u), arg(&v), arg(&mut gu), arg(&mut gv)]);
            x.check("rowdot_backward", &format!("du b={b} d={d} {}", desc(&p)), &gu, &du, EXACT);
            x.check("rowdot_backward", &format!("dv b={b} d={d} {}", desc(&p)), &gv, &dv, EXACT);
        }
    }
}

fn add_assign(x: &Ctx) {
    for n in SIZES {
        let (init, v) = (rand_vec(n, 44), rand_vec(n, 45));
        let mut want = init.clone();
        x.cpu.add_assign(&mut want, &v, n).unwrap();
        for s in GRIDS {
            let mut out = init.clone();
            let p = strided(Ok(plan::add_assign(ad(&out), ad(&v), n)), s);
            x.run(&p, &[arg(&mut out), arg(&v)]);
            x.check("add_assign", &format!("n={n} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

fn add_scalar(x: &Ctx) {
    for n in SIZES {
        let (init, sc) = (rand_vec(n, 46), rand_vec(1, 47));
        let mut want = init.clone();
        x.cpu.add_scalar(&mut want, &sc, n).unwrap();
        for s in GRIDS {
            let mut out = init.clone();
            let p = strided(Ok(plan::add_scalar(ad(&out), ad(&sc), n)), s);
            x.run(&p, &[arg(&mut out), arg(&sc)]);
            x.check("add_scalar", &format!("n={n} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

fn sum_into(x: &Ctx) {
    for n in [5000usize, 1023, 1024, 3001, 1] {
        let v = rand_vec(n, 48);
        let mut want = vec![0.5f32];
        x.cpu.sum_into(&v, n, &mut want).unwrap();
        let mut acc = vec![0.5f32];
        x.run(&plan::sum_into(ad(&v), n, ad(&acc)), &[arg(&v), arg(&mut acc)]);
        x.check("sum_into", &format!("n={n}"), &acc, &want, TOL);
    }
}

fn scale(x: &Ctx) {
    for n in SIZES {
        let mut want = rand_vec(n, 53);
        x.cpu.scale(&mut want, n, 0.5).unwrap();
        for s in GRIDS {
            let mut out = rand_vec(n, 53);
            let p = strided(Ok(plan::scale(ad(&out), n, 0.5)), s);
            x.run(&p, &[arg(&mut out)]);
            x.check("scale", &format!("n={n} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

fn fill(x: &Ctx) {
    for n in SIZES {
        let mut want = rand_vec(n, 49);
        x.cpu.fill(&mut want, n, 0.75).unwrap();
        for s in GRIDS {
            let mut out = rand_vec(n, 49);
            let p = strided(Ok(plan::fill(ad(&out), n, 0.75)), s);
            x.run(&p, &[arg(&mut out)]);
            x.check("fill", &format!("n={n} {}", desc(&p)), &out, &want, EXACT);
        }
    }
}

// ---- optim.cu ---------------------------------------------------------------------------------------

const SGD: [SgdHp; 3] = [
    SgdHp { lr: 0.1, momentum: 0.9, decay: Decay::None },
    SgdHp { lr: 0.05, momentum: 0.0, decay: Decay::L2(1e-2) },
    SgdHp { lr: 0.01, momentum: 0.5, decay: Decay::Decoupled(0.1) },
];

fn adam_hps() -> [AdamHp; 3] {
    [
        AdamHp::default(),
        AdamHp { lr: 0.01, decay: Decay::L2(1e-2), ..AdamHp::default() },
        AdamHp { lr: 0.003, beta1: 0.8, decay: Decay::Decoupled(0.05), ..AdamHp::default() },
    ]
}

fn sgd_step(x: &Ctx) {
    for (h, hp) in SGD.iter().enumerate() {
        for (n, s) in [(5000, false), (1001, true), (1, false)] {
            let grad = rand_vec(n, 50);
            let (mut p, mut g, mut mom) = (rand_vec(n, 51), grad.clone(), vec![0.0; n]);
            let (mut gp, mut gg, mut gm) = (p.clone(), g.clone(), mom.clone());
            let pl = strided(Ok(plan::sgd_step(ad(&gp), ad(&gg), ad(&gm), n, hp)), s);
            for step in 0..3 {
                x.cpu.sgd_step(&mut p, &mut g, &mut mom, n, hp).unwrap();
                x.run(&pl, &[arg(&mut gp), arg(&mut gg), arg(&mut gm)]);
                x.check("sgd_step", &format!("g zeroed hp#{h} n={n} step {step}"), &gg, &g, EXACT);
                g.copy_from_slice(&grad);
                gg.copy_from_slice(&grad);
            }
            x.check("sgd_step", &format!("p hp#{h} n={n} {}", desc(&pl)), &gp, &p, TOL);
            x.check("sgd_step", &format!("mom hp#{h} n={n} {}", desc(&pl)), &gm, &mom, TOL);
        }
    }
}

/// `(rows, nrows_host, device count, description)`: see [`row_lists`].
type RowList = (Vec<u32>, usize, Option<Vec<u32>>, &'static str);

/// The distinct rows of a batch, as the lazy optimizers get them: `(rows, cap, count)` with
/// `rows` padded to the id buffer's capacity (the padding must not be read) and, when the row
/// list was made on the device, the device count (backend.rs `rows`).
fn row_lists(x: &Ctx, n: usize, b: usize, seed: u64) -> Vec<RowList> {
    let ids = rand_ids(b, n, seed);
    let mut uniq = ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    // Host-written: write_ids(rows) into a buffer of capacity b; nrows = rows.len().
    let mut host = uniq.clone();
    host.resize(b, u32::MAX);
    // Device-made (unique_ids): the plan's uniq (capacity b), nrows_host = b, the count on the device.
    let p = row_plan(x, &ids, n, b, false);
    vec![(host, uniq.len(), None, "host rows"), (p.uniq[..b].to_vec(), b, Some(p.nuniq.clone()), "device rows")]
}

/// The [`Rows`] of a [`RowList`].
fn rows_of(rows: &[u32], nrows_host: usize, count: &Option<Vec<u32>>) -> Rows {
    Rows { list: ad(rows), cap: rows.len(), nrows_host, nrows_dev: count.as_ref().map(|c| ad(c)) }
}

/// `rows` and its device count (if any) as plan buffers.
fn row_args<'a>(rows: &'a [u32], count: &'a Option<Vec<u32>>) -> Vec<Arg<'a>> {
    let mut v = vec![arg(rows)];
    if let Some(c) = count {
        v.push(arg(c));
    }
    v
}

fn sgd_step_rows(x: &Ctx) {
    for (h, hp) in SGD.iter().enumerate() {
        for &(n, d, b) in &[(97, 24, 60), (1000, 7, 300)] {
            for (rows, nrows_host, count, how) in row_lists(x, n, b, 54) {
                let live: Vec<u32> = rows[..count.as_ref().map_or(nrows_host, |c| c[0] as usize)].to_vec();
                let grad = rand_vec(n * d, 55);
                let (mut p, mut g, mut mom) = (rand_vec(n * d, 56), grad.clone(), rand_vec(n * d, 57));
                let (mut gp, mut gg, mut gm) = (p.clone(), g.clone(), mom.clone());
                let r = rows_of(&rows, nrows_host, &count);
                let pl = plan::sgd_step_rows(ad(&gp), ad(&gg), ad(&gm), &r, d, hp).unwrap();
                for _ in 0..2 {
                    x.cpu.sgd_step_rows(&mut p, &mut g, &mut mom, &live, d, n, hp).unwrap();
                    let mut bufs = vec![arg(&mut gp), arg(&mut gg), arg(&mut gm)];
                    bufs.extend(row_args(&rows, &count));
                    x.run(&pl, &bufs);
                }
                let tag = format!("{how} hp#{h} n={n} d={d} b={b}");
                x.check("sgd_step_rows", &format!("p {tag}"), &gp, &p, TOL);
                x.check("sgd_step_rows", &format!("mom {tag}"), &gm, &mom, TOL);
                x.check("sgd_step_rows", &format!("g {tag}"), &gg, &g, EXACT);
            }
        }
    }
}

fn adam_step(x: &Ctx) {
    for (h, hp) in adam_hps().iter().enumerate() {
        for (n, s) in [(5000, false), (1001, true)] {
            let grad = rand_vec(n, 58);
            let (mut p, mut g, mut m, mut v) = (rand_vec(n, 59), grad.clone(), vec![0.0; n], vec![0.0; n]);
            let (mut gp, mut gg, mut gm, mut gv) = (p.clone(), g.clone(), m.clone(), v.clone());
            let mut tt = vec![0u32];
            let pl = strided(Ok(plan::adam_step(ad(&gp), ad(&gg), ad(&gm), ad(&gv), n, hp, ad(&tt))), s);
            for t in 1..=3u32 {
                x.cpu.adam_step(&mut p, &mut g, &mut m, &mut v, n, hp, &vec![t]).unwrap();
                tt[0] = t;
                x.run(&pl, &[arg(&mut gp), arg(&mut gg), arg(&mut gm), arg(&mut gv), arg(&tt)]);
                x.check("adam_step", &format!("g zeroed t={t}"), &gg, &g, EXACT);
                g.copy_from_slice(&grad);
                gg.copy_from_slice(&grad);
            }
            x.check("adam_step", &format!("p hp#{h} n={n} {}", desc(&pl)), &gp, &p, TOL);
            x.check("adam_step", &format!("m hp#{h} n={n} {}", desc(&pl)), &gm, &m, TOL);
            x.check("adam_step", &format!("v hp#{h} n={n} {}", desc(&pl)), &gv, &v, TOL);
        }
    }
}

fn adam_step_rows(x: &Ctx) {
    for (h, hp) in adam_hps().iter().enumerate() {
        for &(n, d, b) in &[(97, 24, 60), (1000, 7, 300)] {
            for (rows, nrows_host, count, how) in row_lists(x, n, b, 60) {
                let live: Vec<u32> = rows[..count.as_ref().map_or(nrows_host, |c| c[0] as usize)].to_vec();
                let grad = rand_vec(n * d, 61);
                let (mut p, mut g) = (rand_vec(n * d, 62), grad.clone());
                let (mut m, mut v) =
                    (rand_vec(n * d, 63), rand_vec(n * d, 64).iter().map(|x| x.abs()).collect::<Vec<_>>());
                let (mut gp, mut gg, mut gm, mut gv) = (p.clone(), g.clone(), m.clone(), v.clone());
                let mut tt = vec![0u32];
                let r = rows_of(&rows, nrows_host, &count);
                let pl = plan::adam_step_rows(ad(&gp), ad(&gg), ad(&gm), ad(&gv), &r, d, hp, ad(&tt)).unwrap();
                for t in 4..=5u32 {
                    x.cpu.adam_step_rows(&mut p, &mut g, &mut m, &mut v, &live, d, n, hp, &vec![t]).unwrap();
                    tt[0] = t;
                    let mut bufs = vec![arg(&mut gp), arg(&mut gg), arg(&mut gm), arg(&mut gv), arg(&tt)];
                    bufs.extend(row_args(&rows, &count));
                    x.run(&pl, &bufs);
                }
                let tag = format!("{how} hp#{h} n={n} d={d} b={b}");
                x.check("adam_step_rows", &format!("p {tag}"), &gp, &p, TOL);
                x.check("adam_step_rows", &format!("m {tag}"), &gm, &m, TOL);
                x.check("adam_step_rows", &format!("v {tag}"), &gv, &v, TOL);
                x.check("adam_step_rows", &format!("g {tag}"), &gg, &g, EXACT);
            }
        }
    }
}

// ---- sample.cu ---------------------------------------------------------------------------------------

/// backend.rs `counter_add`: c[0] += add (wrapping).
fn counter_add(x: &Ctx) {
    for (c0, add) in [(7u32, 5u32), (u32::MAX, 2), (0, 0)] {
        let mut want = vec![c0, 99];
        x.cpu.counter_add(&mut want, add).unwrap();
        let mut c = vec![c0, 99];
        x.run(&plan::counter_add(ad(&c), add), &[arg(&mut c)]);
        x.check_u32("counter_add", &format!("{c0} + {add}"), &c, &want);
    }
}

/// backend.rs `sample_batch` (its plan: the batch, then `counter_add` on the state) against
/// `CpuBackend::sample_batch`, which runs the same integer arithmetic: the same batches, bit
/// for bit.
fn sample_batch(x: &Ctx) {
    use ncf_core::sample::{EpochKeys, SampleTables};
    let (n_users, n_items) = (37usize, 50usize);
    let (mut train_off, mut train_items, mut known_off, mut known_items) = (vec![0usize], vec![], vec![0usize], vec![]);
    for u in 0..n_users {
        let mut t = if u % 9 == 4 { vec![] } else { rand_ids(1 + u % 11, n_items, 80 + u as u64) };
        t.sort_unstable();
        t.dedup();
        let mut k = if u == 5 { (0..n_items as u32).collect() } else { t.clone() }; // user 5 knows every item
        k.extend(rand_ids(u % 4, n_items, 120 + u as u64));
        k.sort_unstable();
        k.dedup();
        train_items.extend(&t);
        known_items.extend(&k);
        train_off.push(train_items.len());
        known_off.push(known_items.len());
    }
    for n_neg in [4usize, 0] {
        let tables =
            SampleTables::upload(&x.cpu, (&train_off, &train_items), (&known_off, &known_items), n_items, n_neg)
                .unwrap();
        let rows = tables.rows();
        let keys = EpochKeys::new(3, 1 + n_neg as u64).words();
        let (mut state, mut gstate) =
            (vec![0, keys[0], keys[1], keys[2], keys[3]], vec![0, keys[0], keys[1], keys[2], keys[3]]);
        let t = plan::SampleBufs {
            train_off: ad(&tables.train_off),
            train_items: ad(&tables.train_items),
            known_off: ad(&tables.known_off),
            known_items: ad(&tables.known_items),
            n_users,
            n_items,
            n_neg,
            rows,
        };
        let batch = 256usize;
        let mut first = 0u64;
        while first < rows {
            let b = (rows - first).min(batch as u64) as usize;
            let (mut u, mut i, mut y) = (vec![0u32; b], vec![0u32; b], vec![0f32; b]);
            x.cpu.sample_batch(&tables, &mut state, batch, b, &mut u, &mut i, &mut y).unwrap();
            let (mut gu, mut gi, mut gy) = (vec![u32::MAX; b], vec![u32::MAX; b], vec![f32::NAN; b]);
            let p = plan::sample_batch(&t, ad(&gstate), batch, b, ad(&gu), ad(&gi), ad(&gy)).unwrap();
            let tbl = [&tables.train_off, &tables.train_items, &tables.known_off, &tables.known_items];
            x.run(
                &p,
                &[
                    arg(tbl[0]),
                    arg(tbl[1]),
                    arg(tbl[2]),
                    arg(tbl[3]),
                    arg(&mut gstate),
                    arg(&mut gu),
                    arg(&mut gi),
                    arg(&mut gy),
                ],
            );
            let tag = format!("n_neg={n_neg} slots {first}..{}", first + b as u64);
            x.check_u32("sample_batch", &format!("users {tag}"), &gu, &u);
            x.check_u32("sample_batch", &format!("items {tag}"), &gi, &i);
            x.check("sample_batch", &format!("labels {tag}"), &gy, &y, EXACT);
            x.check_u32("sample_batch", &format!("state {tag}"), &gstate, &state);
            first += b as u64;
        }
    }
}

// ---- eval.cu --------------------------------------------------------------------------------------

/// Not launched by the crate yet: one warp per case, as the kernel says.
fn rank_of_first(x: &Ctx) {
    for &(cases, max_len) in &[(37usize, 150usize), (300, 101), (1, 1)] {
        let lens: Vec<usize> = rand_ids(cases, max_len, 66).iter().map(|&l| l as usize + 1).collect();
        let mut off = vec![0u32];
        for l in &lens {
            off.push(off.last().unwrap() + *l as u32);
        }
        let scores = tied_scores(*off.last().unwrap() as usize, 67);
        let want: Vec<u32> = (0..cases)
            .map(|c| {
                let s = &scores[off[c] as usize..off[c + 1] as usize];
                s[1..].iter().filter(|&&v| v >= s[0]).count() as u32
            })
            .collect();
        let mut rank = vec![u32::MAX; cases];
        let p = plan::rank_of_first(ad(&scores), ad(&off), cases, ad(&rank));
        x.run_r(p, &[arg(&scores), arg(&off), arg(&mut rank)]);
        x.check_u32("rank_of_first", &format!("cases={cases} up to {max_len} candidates"), &rank, &want);
    }
}

/// Seen-items CSRs for `users` users over `n_items`: `(seen, seen_off)`, distinct items per
/// user, every third user's list holding its target, user 1 (if any) having seen everything.
fn seen_csr(users: usize, n_items: usize, targets: &[u32], seed: u64) -> (Vec<u32>, Vec<u32>) {
    let (mut seen, mut seen_off) = (Vec::new(), vec![0u32]);
    for (u, &target) in targets.iter().enumerate().take(users) {
        let mut s =
            if u == 1 { (0..n_items as u32).collect() } else { rand_ids((u * 7) % 50, n_items, seed + u as u64) };
        if u % 3 == 0 {
            s.push(target); // the target among the seen items is still ranked
        }
        s.sort_unstable();
        s.dedup();
        seen.extend(&s);
        seen_off.push(seen.len() as u32);
    }
    if seen.is_empty() {
        seen.push(0); // a device buffer is never empty (zeros_ids(len.max(1)))
    }
    (seen, seen_off)
}

/// backend.rs `rank_unseen`: one block of 256 threads per user, against the CPU's.
fn full_rank(x: &Ctx) {
    for &(users, n_items) in &[(13usize, 1000usize), (5, 37), (2, 1), (3, 5000)] {
        let scores = tied_scores(users * n_items, 68);
        let targets = rand_ids(users, n_items, 69);
        let (seen, seen_off) = seen_csr(users, n_items, &targets, 70);
        let mut want = vec![0u32; users];
        x.cpu.rank_unseen(&scores, users, n_items, &targets, &seen_off, &seen, &mut want).unwrap();
        let mut rank = vec![u32::MAX; users];
        let s = Seen { items: ad(&seen), off: ad(&seen_off) };
        let p = plan::full_rank(ad(&scores), users, n_items, ad(&targets), s, ad(&rank));
        x.run_r(p, &[arg(&scores), arg(&targets), arg(&seen), arg(&seen_off), arg(&mut rank)]);
        x.check_u32("full_rank", &format!("users={users} n_items={n_items}"), &rank, &want);
    }
}

/// backend.rs `top_k`: one block of 256 threads per user, a bitmap of the items in dynamic
/// shared memory, against the CPU's (ties to the lower id, u32::MAX past the unseen items).
fn top_k(x: &Ctx) {
    for &(users, n, k) in &[(13usize, 1000usize, 10usize), (5, 37, 40), (3, 1, 1), (2, 5000, 3), (4, 300, 257)] {
        let scores = tied_scores(users * n, 90);
        let targets = rand_ids(users, n, 91);
        let (seen, seen_off) = seen_csr(users, n, &targets, 92);
        let mut want = vec![0u32; users * k];
        x.cpu.top_k(&scores, users, n, k, &seen_off, &seen, &mut want).unwrap();
        let mut out = vec![0u32; users * k];
        let s = Seen { items: ad(&seen), off: ad(&seen_off) };
        let p = plan::top_k(ad(&scores), users, n, k, s, ad(&out));
        x.run_r(p, &[arg(&scores), arg(&seen), arg(&seen_off), arg(&mut out)]);
        x.check_u32("top_k", &format!("users={users} n={n} k={k}"), &out, &want);
    }
}

// ---- The tests ----------------------------------------------------------------------------------

fn compiler_or_skip() -> Option<String> {
    let c = emu::compiler();
    if c.is_none() {
        println!("skipped: no C++ compiler (g++)");
    }
    c
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Kernels checked on the emulator by another test binary, which says where.
const ELSEWHERE: &[(Kernel, &str)] = &[
    (Kernel::FusedTile, "tests/fused_step.rs (the whole fused step against the reference step)"),
    (Kernel::FusedDenseAdam, "tests/fused_step.rs"),
    (Kernel::FusedRowsAdam, "tests/fused_step.rs"),
];

/// Every [`Kernel`] has an entry in `CHECKS` (or in `ELSEWHERE`), and the kernels the emulator compiled from
/// `SOURCES` are exactly the `Kernel`s.
#[test]
fn every_kernel_is_exercised() {
    let mut tested: BTreeSet<Kernel> = CHECKS.iter().flat_map(|c| c.0.iter().copied()).collect();
    tested.extend(ELSEWHERE.iter().map(|e| e.0));
    let missing: Vec<&Kernel> = Kernel::ALL.iter().filter(|k| !tested.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "kernels without an emulated test (add a check to CHECKS in tests/emulated.rs): {missing:?}"
    );
    let all: BTreeSet<&str> = SOURCES.iter().flat_map(|(_, s)| kernel_names(s)).collect();
    let named: BTreeSet<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(all, named, "kernels/*.cu and plan::Kernel disagree");
}

/// Runs every check in each thread order; each must pass and launch the kernel it is listed
/// under. Prints the worst error per kernel.
#[test]
fn every_kernel_matches_its_cpu_reference() {
    let Some(cxx) = compiler_or_skip() else { return };
    let t0 = std::time::Instant::now();
    let emu = Emu::build_sources(&cxx).unwrap_or_else(|e| panic!("{e}"));
    println!("compiled {} kernels of {} files in {:.1?}", emu.kernels().len(), SOURCES.len(), t0.elapsed());
    let x = Ctx { emu: &emu, cpu: CpuBackend::<f32>::default(), worst: RefCell::new(BTreeMap::new()) };
    let mut failures = Vec::new();
    for order in [Order::Forward, Order::Reverse, Order::Shuffled] {
        let t = std::time::Instant::now();
        emu.set_order(order);
        for &(kernels, check) in CHECKS {
            emu.take_launched();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&x)));
            let launched = emu.take_launched();
            let name = kernels.iter().map(|k| k.name()).collect::<Vec<_>>().join("+");
            match r {
                Err(e) => failures.push(format!("{name} ({order:?} order): {}", panic_message(&*e))),
                Ok(()) => {
                    let missed: Vec<&Kernel> = kernels.iter().filter(|k| !launched.contains(k.name())).collect();
                    if !missed.is_empty() {
                        failures.push(format!("{name}: the check did not launch {missed:?} (launched {launched:?})"));
                    }
                }
            }
        }
        println!("{order:?} order: {} checks in {:.1?}", CHECKS.len(), t.elapsed());
    }
    println!("{:<28} {:>9} {:>10} {:>10}  tolerance", "kernel", "values", "max_abs", "max_rel");
    for (k, w) in x.worst.borrow().iter() {
        let tol = if w.exact { "exact" } else { "abs 1e-5 / rel 1e-4" };
        println!("{k:<28} {:>9} {:>10.2e} {:>10.2e}  {tol}", w.compared, w.max_abs, w.max_rel);
    }
    println!("total {:.1?}", t0.elapsed());
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// The emulator catches what a GPU would get wrong: a missing `__syncthreads()`, a shuffle
/// reading a lane that returned, a deadlock, an out-of-bounds read, wrong argument types, and a
/// kernel that never ends. Kernels in `tests/fixtures/emu_bugs.cu`.
#[test]
fn the_emulator_catches_kernel_bugs() {
    let Some(cxx) = compiler_or_skip() else { return };
    let src = include_str!("fixtures/emu_bugs.cu");
    let emu = Emu::build(&cxx, &[("emu_bugs.cu", unit(src), kernel_names(src))]).unwrap_or_else(|e| panic!("{e}"));
    let n = 1000usize;
    let xs = rand_vec(n, 71);
    let want = xs.iter().map(|&v| v as f64).sum::<f64>();
    let one_block = Cfg::new((1, 1, 1), (256, 1, 1), 0);
    let sum = |name: &str, shmem: u32| -> f32 {
        let mut out = vec![f32::NAN];
        let cfg = Cfg { shmem, ..one_block };
        emu.run(name, cfg, &[arg(&xs), arg(n as i32), arg(&mut out)]);
        out[0]
    };
    let orders = [Order::Forward, Order::Reverse, Order::Shuffled];
    let close = |v: f32| compare("sum", &[v as f64], &[want], TOL).ok();

    // The correct reductions (static and dynamic shared memory) agree in every order.
    for order in orders {
        emu.set_order(order);
        for (k, shmem) in [("block_sum_ok", 0), ("block_sum_dyn", 32 * 4)] {
            let got = sum(k, shmem);
            assert!(close(got), "{k} ({order:?}): got {got}, want {want}");
        }
    }

    // (1) No __syncthreads() between writing the per-warp partial sums and reading them: warp
    // 0 reads slots the other warps have not written yet (poisoned with NaN before the block).
    let got: Vec<(Order, f32)> = orders
        .iter()
        .map(|&o| {
            emu.set_order(o);
            (o, sum("block_sum_missing_sync", 0))
        })
        .collect();
    println!("block_sum_missing_sync: {got:?} (want {want})");
    assert!(got.iter().any(|&(_, v)| !close(v)), "the missing __syncthreads went unnoticed: {got:?}");

    // (2) Lanes past n return, then the warp shuffles: lane 4 reads lane 20, which exited.
    for order in orders {
        emu.set_order(order);
        let mut out = vec![0.0f32];
        let e = emu
            .launch("shfl_after_early_return", (1, 1, 1), (32, 1, 1), 0, &[arg(&xs), arg(20i32), arg(&mut out)])
            .expect_err("a shuffle reading an exited lane must fail");
        assert!(e.contains("reads lane") && e.contains("which has exited"), "{e}");
        if order == Order::Forward {
            println!("shfl_after_early_return: {e}");
        }
    }

    // (3) Lane 0 waits at __syncthreads, its warp-mates wait for it at a shuffle.
    emu.set_order(Order::Forward);
    let mut out = vec![0.0f32; 64];
    let e = emu.launch("deadlock", (1, 1, 1), (64, 1, 1), 0, &[arg(&mut out)]).expect_err("must deadlock");
    assert!(e.contains("deadlock") && e.contains("thread 0 waiting at __syncthreads()"), "{e}");
    println!("deadlock: {e}");

    // (4) `<=` in a grid-stride loop reads one element past the end.
    let mut ys = vec![0.0f32; n];
    let e = emu
        .launch("copy_off_by_one", (4, 1, 1), (256, 1, 1), 0, &[arg(&xs), arg(&mut ys), arg(n as i64)])
        .expect_err("an out-of-bounds read must fail");
    assert!(e.contains("past the end") && e.contains("argument 0") && e.contains("byte offset 4000"), "{e}");
    println!("copy_off_by_one: {e}");

    // (5) Argument types are checked against the signature: `long long n` given an i32, and a
    // written buffer passed as a shared borrow.
    let e = emu
        .launch("copy_off_by_one", (4, 1, 1), (256, 1, 1), 0, &[arg(&xs), arg(&mut ys), arg(n as i32)])
        .expect_err("wrong scalar type");
    assert!(e.contains("argument 2 is `i64`, the launch passes `i32`"), "{e}");
    let e = emu
        .launch("copy_off_by_one", (4, 1, 1), (256, 1, 1), 0, &[arg(&xs), arg(&ys), arg(n as i64)])
        .expect_err("read-only buffer for a written parameter");
    assert!(e.contains("argument 1 is `*f32`") && e.contains("shared borrow"), "{e}");

    // (6) A kernel that never ends times out instead of hanging the test.
    emu.set_timeout_ms(300);
    let flag = vec![0.0f32];
    let e = emu.launch("spin", (1, 1, 1), (32, 1, 1), 0, &[arg(&flag)]).expect_err("must time out");
    assert!(e.contains("timed out"), "{e}");
    emu.set_timeout_ms(60_000);

    // The unchecked cuLaunchKernel-style entry point runs the same kernels.
    let mut out = [f32::NAN];
    let (mut px, mut nn, mut po) = (xs.as_ptr() as *mut c_void, n as i32, out.as_mut_ptr() as *mut c_void);
    let mut args =
        [&mut px as *mut _ as *mut c_void, &mut nn as *mut i32 as *mut c_void, &mut po as *mut _ as *mut c_void];
    // SAFETY: `block_sum_ok(const float*, int, float*)`: args point at a pointer to n floats, an
    // int and a pointer to one float, all alive for the call.
    unsafe { emu.launch_raw("block_sum_ok", one_block, &mut args) }.unwrap();
    assert!(close(out[0]), "raw launch: got {}, want {want}", out[0]);
    assert_eq!(emu.signature("block_sum_ok"), Some("block_sum_ok(*const f32, i32, *f32)"));
}
