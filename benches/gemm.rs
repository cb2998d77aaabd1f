//! GEMM throughput: naive vs scratch vs library (matrixmultiply), f32.
//!
//! * `cargo bench --bench gemm` — criterion; throughput is `2·m·n·k` elements, so criterion's
//!   "elem/s" reads as FLOP/s. Groups are named `gemm/<case>/<impl>`.
//! * `GEMM_TABLE=1 cargo bench --bench gemm` — skips criterion, times every case itself (the best
//!   of 7 interleaved timings of ≥ 10 ms each, see [`gflops`]) and prints a markdown table of
//!   GFLOP/s for BENCHMARKS.md. `GEMM_TABLE=all` adds an f64 table and a table of the scratch
//!   kernel per instruction set.
//!
//! Cases: the dense layers of the NCF MLP at batch B = 256 (`GEMM_ROWS=128`: a two-lane step's
//! half of such a batch) (`out = inp·Wᵀ`, `dinp = dout·W`,
//! `dW += doutᵀ·inp`, all with the same strided views `ops/linear.rs` uses), and squares.
//! Everything runs single-threaded (inside a 1-thread rayon pool; matrixmultiply is
//! single-threaded by default), except the `scratch_2t` column for the squares.

use criterion::{Criterion, Throughput};
use ncf_cpu::ops::gemm::{CpuFloat, GemmImpl, MatMut, MatRef, gemm, gemm_scratch_with};
use ncf_cpu::simd::SimdLevel;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One GEMM call on given operands: naive, scratch, library, or scratch at a given SIMD level.
type GemmFn<'a, T> = &'a (dyn Fn(T, MatRef<T>, MatRef<T>, T, MatMut<T>) + Sync);

/// The operands of one GEMM, stored row-major; `view` describes how the GEMM reads them.
struct Case<T> {
    name: String,
    m: usize,
    k: usize,
    n: usize,
    /// Storage of A, B, C.
    a: Vec<T>,
    b: Vec<T>,
    c: Vec<T>,
    /// Strides (rs, cs) of the A and B views (C is always row-major `(m, n)`).
    a_st: (usize, usize),
    b_st: (usize, usize),
    beta: T,
    square: bool,
}

impl<T: CpuFloat> Case<T> {
    fn new(
        name: String,
        (m, k, n): (usize, usize, usize),
        a_st: (usize, usize),
        b_st: (usize, usize),
        beta: f64,
    ) -> Self {
        let fill = |len: usize, salt: usize| -> Vec<T> {
            (0..len).map(|i| T::from_f64(((i * 7919 + salt * 104729) % 1999) as f64 / 1999.0 - 0.5)).collect()
        };
        Case {
            name,
            m,
            k,
            n,
            a: fill(m * k, 1),
            b: fill(k * n, 2),
            c: fill(m * n, 3),
            a_st,
            b_st,
            beta: T::from_f64(beta),
            square: false,
        }
    }

    fn flops(&self) -> u64 {
        2 * (self.m * self.n * self.k) as u64
    }

    /// One GEMM with `f` (naive / scratch / library / a given SIMD level).
    fn run(&mut self, f: GemmFn<T>) {
        let (m, k, n) = (self.m, self.k, self.n);
        let a = MatRef::new(&self.a, m, k, self.a_st.0, self.a_st.1);
        let b = MatRef::new(&self.b, k, n, self.b_st.0, self.b_st.1);
        f(T::ONE, black_box(a), black_box(b), self.beta, MatMut::row_major(&mut self.c, m, n));
        black_box(&mut self.c);
    }
}

/// The cases, in table order.
fn cases<T: CpuFloat>() -> Vec<Case<T>> {
    // `GEMM_ROWS=128`: the layers at a two-lane step's half of a 256-row batch.
    let b: usize = std::env::var("GEMM_ROWS").ok().and_then(|v| v.parse().ok()).filter(|&b| b > 0).unwrap_or(256);
    let mut v = Vec::new();
    for (i, o) in [(64, 32), (32, 16), (16, 8), (16, 1)] {
        // out (B,O) = inp (B,I) · Wᵀ, W stored (O,I): the B operand has strides (1, I). β = 1: the
        // bias was broadcast into `out` first.
        v.push(Case::new(format!("fwd_{i}x{o}_b{b}"), (b, i, o), (i, 1), (1, i), 1.0));
        // dinp (B,I) = dout (B,O) · W (O,I), overwritten: β = 0.
        v.push(Case::new(format!("bwd_data_{i}x{o}_b{b}"), (b, o, i), (o, 1), (i, 1), 0.0));
        // dW (O,I) += doutᵀ (O,B) · inp (B,I): A is dout read transposed, strides (1, O). β = 1.
        v.push(Case::new(format!("bwd_w_{i}x{o}_b{b}"), (o, b, i), (1, o), (i, 1), 1.0));
    }
    for s in [256, 512, 1024] {
        let mut c = Case::new(format!("square_{s}"), (s, s, s), (s, 1), (s, 1), 0.0);
        c.square = true;
        v.push(c);
    }
    v
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool")
}

fn imp_fn<T: CpuFloat>(imp: GemmImpl) -> impl Fn(T, MatRef<T>, MatRef<T>, T, MatMut<T>) + Sync {
    move |al, a, b, be, c| gemm(imp, al, a, b, be, c).expect("valid gemm")
}

fn simd_fn<T: CpuFloat>(simd: SimdLevel) -> impl Fn(T, MatRef<T>, MatRef<T>, T, MatMut<T>) + Sync {
    move |al, a, b, be, c| gemm_scratch_with(simd, al, a, b, be, c).expect("valid gemm")
}

/// Naive is slow (≈1 GFLOP/s): skip it where one call would take seconds.
fn naive_ok<T>(c: &Case<T>) -> bool {
    c.m * c.n * c.k <= 512 * 512 * 512
}

// ---------------------------------------------------------------------------------------------
// criterion
// ---------------------------------------------------------------------------------------------

/// Time `iters` calls inside `pool` (entering the pool once, not per call).
fn timed<T: CpuFloat>(pool: &rayon::ThreadPool, case: &mut Case<T>, f: GemmFn<T>, iters: u64) -> Duration {
    pool.install(|| {
        let t = Instant::now();
        for _ in 0..iters {
            case.run(f);
        }
        t.elapsed()
    })
}

fn bench_criterion(crit: &mut Criterion) {
    let one = pool(1);
    let two = pool(2);
    for mut case in cases::<f32>() {
        let mut g = crit.benchmark_group(format!("gemm/{}", case.name));
        g.throughput(Throughput::Elements(case.flops()));
        if case.square {
            g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        } else {
            g.sample_size(30).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        }
        for imp in GemmImpl::ALL {
            if imp == GemmImpl::Naive && !naive_ok(&case) {
                continue;
            }
            let f = imp_fn::<f32>(imp);
            g.bench_function(imp.name(), |bch| bch.iter_custom(|iters| timed(&one, &mut case, &f, iters)));
        }
        if case.square {
            let f = imp_fn::<f32>(GemmImpl::Scratch);
            g.bench_function("scratch_2t", |bch| bch.iter_custom(|iters| timed(&two, &mut case, &f, iters)));
        }
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM_TABLE mode
// ---------------------------------------------------------------------------------------------

/// Rounds of timing in table mode; each round times every implementation once, in turn.
const ROUNDS: usize = 7;

/// GFLOP/s of each `(pool, f)` on `case`. Each timing runs enough calls to last ≥ 10 ms; the
/// implementations take turns, `ROUNDS` times, and each reports its fastest timing. (This VM's
/// speed drifts by up to 2× for seconds at a time; interleaving exposes every implementation to
/// the same drift, and the fastest timing is the one least disturbed by it. Medians moved by
/// ±20% from run to run, best-of by a few percent.)
fn gflops<T: CpuFloat>(case: &mut Case<T>, runs: &[(&rayon::ThreadPool, GemmFn<T>)]) -> Vec<f64> {
    let reps: Vec<usize> = runs
        .iter()
        .map(|(pool, f)| {
            pool.install(|| {
                case.run(*f); // warm caches and packing buffers
                let t = Instant::now();
                case.run(*f);
                ((0.01 / t.elapsed().as_secs_f64().max(1e-9)).ceil() as usize).max(1)
            })
        })
        .collect();
    let mut best = vec![f64::INFINITY; runs.len()];
    for _ in 0..ROUNDS {
        for (i, (pool, f)) in runs.iter().enumerate() {
            let secs = pool.install(|| {
                let t = Instant::now();
                for _ in 0..reps[i] {
                    case.run(*f);
                }
                t.elapsed().as_secs_f64() / reps[i] as f64
            });
            best[i] = best[i].min(secs);
        }
    }
    best.iter().map(|s| case.flops() as f64 / s / 1e9).collect()
}

fn table<T: CpuFloat>() {
    let one = pool(1);
    let two = pool(2);
    let (naive, scratch, library) =
        (imp_fn::<T>(GemmImpl::Naive), imp_fn::<T>(GemmImpl::Scratch), imp_fn::<T>(GemmImpl::Library));
    println!(
        "\n### GEMM {} GFLOP/s (1 thread unless noted; best of {ROUNDS} interleaved timings; SIMD level {})\n",
        T::NAME,
        SimdLevel::best().name()
    );
    println!("| shape | m×k×n | naive | scratch | library | scratch/library | scratch, 2 threads |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for mut case in cases::<T>() {
        let mut runs: Vec<(&rayon::ThreadPool, GemmFn<T>)> = vec![(&one, &scratch), (&one, &library)];
        if naive_ok(&case) {
            runs.push((&one, &naive));
        }
        let g = gflops(&mut case, &runs);
        let (s, l) = (g[0], g[1]);
        let nv = if naive_ok(&case) { format!("{:.2}", g[2]) } else { "—".into() };
        // Timed on its own, not interleaved: alternating between the pools puts three rayon
        // workers on two cores, and the idle pool's spinning worker slows the busy one.
        let s2 = if case.square { format!("{:.1}", gflops(&mut case, &[(&two, &scratch)])[0]) } else { "—".into() };
        println!(
            "| {} | {}×{}×{} | {nv} | {s:.1} | {l:.1} | {:.0}% | {s2} |",
            case.name,
            case.m,
            case.k,
            case.n,
            100.0 * s / l
        );
    }
}

/// The scratch kernel compiled for each instruction set this CPU has, against the library.
fn simd_table<T: CpuFloat>() {
    let one = pool(1);
    let levels: Vec<SimdLevel> = SimdLevel::ALL.into_iter().filter(|s| s.is_available()).collect();
    let fns: Vec<_> = levels.iter().map(|&s| simd_fn::<T>(s)).collect();
    let library = imp_fn::<T>(GemmImpl::Library);
    println!("\n### Scratch GEMM {} GFLOP/s per instruction set (1 thread)\n", T::NAME);
    let names: Vec<&str> = levels.iter().map(|s| s.name()).collect();
    println!("| shape | {} | library |", names.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(levels.len()));
    for mut case in cases::<T>() {
        let mut runs: Vec<(&rayon::ThreadPool, GemmFn<T>)> = fns.iter().map(|f| (&one, f as GemmFn<T>)).collect();
        runs.push((&one, &library));
        let g: Vec<String> = gflops(&mut case, &runs).iter().map(|x| format!("{x:.1}")).collect();
        println!("| {} | {} |", case.name, g.join(" | "));
    }
}

fn main() {
    match std::env::var("GEMM_TABLE").as_deref() {
        Ok("all") => {
            table::<f32>();
            table::<f64>();
            simd_table::<f32>();
            simd_table::<f64>();
        }
        Ok(_) => table::<f32>(),
        Err(_) => {
            let mut crit = Criterion::default().configure_from_args();
            bench_criterion(&mut crit);
            crit.final_summary();
        }
    }
}
