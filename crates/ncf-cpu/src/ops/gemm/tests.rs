//! Every GEMM against `gemm_naive`, on many shapes and layouts; validation; determinism.

use super::blocked::pick_tile;
use super::dispatch::scratch;
use super::view::needed_len;
use super::*;
use crate::simd::SimdLevel;
use ncf_core::{Error, Float, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

/// How an operand is laid out in its slice.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// `rs = cols, cs = 1`
    RowMajor,
    /// `rs = 1, cs = rows` (the transpose of a row-major matrix)
    ColMajor,
    /// row-major with 3 unused slots after every row
    PaddedRows,
    /// neither stride is 1: `cs = 2, rs = 2·cols + 1`
    Strided,
}
use Layout::*;
const LAYOUTS: [Layout; 4] = [RowMajor, ColMajor, PaddedRows, Strided];

/// `(rs, cs, slice length)` for a `(rows, cols)` operand with `layout`.
fn strides(rows: usize, cols: usize, layout: Layout) -> (usize, usize, usize) {
    let (rs, cs) = match layout {
        RowMajor => (cols, 1),
        ColMajor => (1, rows),
        PaddedRows => (cols + 3, 1),
        Strided => (2 * cols + 1, 2),
    };
    (rs, cs, needed_len(rows, cols, rs, cs).unwrap() + 2)
}

fn rand_vec<T: Float>(n: usize, rng: &mut StdRng) -> Vec<T> {
    (0..n).map(|_| T::from_f64(rng.random_range(-1.0..1.0))).collect()
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    la: Layout,
    lb: Layout,
    lc: Layout,
    alpha: f64,
    beta: f64,
}

/// `f` runs one GEMM; it is checked against `gemm_naive` element by element with the bound
/// `|got − want| ≤ rel·(|α|·Σ_p |a_ip||b_pj| + |β|·|c_ij|) + abs`. Slots of C outside the view
/// must be untouched. With β = 0, C starts full of NaN, which must not leak.
fn check_case<T: CpuFloat>(
    tag: &str,
    case: Case,
    seed: u64,
    rel: f64,
    abs: f64,
    f: impl Fn(T, MatRef<T>, MatRef<T>, T, MatMut<T>) -> Result<()>,
) {
    let Case { m, k, n, la, lb, lc, alpha, beta } = case;
    let mut rng = StdRng::seed_from_u64(seed);
    let (ars, acs, alen) = strides(m, k, la);
    let (brs, bcs, blen) = strides(k, n, lb);
    let (crs, ccs, clen) = strides(m, n, lc);
    let a_data: Vec<T> = rand_vec(alen, &mut rng);
    let b_data: Vec<T> = rand_vec(blen, &mut rng);
    let c0: Vec<T> = if beta == 0.0 { vec![T::from_f64(f64::NAN); clen] } else { rand_vec(clen, &mut rng) };
    let a = MatRef::new(&a_data[..], m, k, ars, acs);
    let b = MatRef::new(&b_data[..], k, n, brs, bcs);
    let (alpha_t, beta_t) = (T::from_f64(alpha), T::from_f64(beta));

    let mut want = c0.clone();
    gemm_naive(alpha_t, a, b, beta_t, MatMut::new(&mut want, m, n, crs, ccs)).unwrap();
    let mut got = c0.clone();
    f(alpha_t, a, b, beta_t, MatMut::new(&mut got, m, n, crs, ccs)).unwrap_or_else(|e| panic!("{tag} {case:?}: {e}"));

    let mut in_view = vec![false; clen];
    let (mut max_abs, mut max_rel, mut bad) = (0.0f64, 0.0f64, Vec::new());
    for i in 0..m {
        for j in 0..n {
            let idx = i * crs + j * ccs;
            in_view[idx] = true;
            let mag: f64 =
                (0..k).map(|p| (a_data[i * ars + p * acs].to_f64() * b_data[p * brs + j * bcs].to_f64()).abs()).sum();
            let c_old = if beta == 0.0 { 0.0 } else { c0[idx].to_f64().abs() };
            let bound = rel * (alpha.abs() * mag + beta.abs() * c_old) + abs;
            let (g, w) = (got[idx].to_f64(), want[idx].to_f64());
            let err = (g - w).abs();
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / w.abs().max(1e-6));
            if err.is_nan() || err > bound {
                bad.push(((i, j), g, w));
            }
        }
    }
    for (idx, (&g, &c)) in got.iter().zip(&c0).enumerate() {
        if !in_view[idx] {
            let same = g == c || (g.to_f64().is_nan() && c.to_f64().is_nan());
            assert!(same, "{tag} {case:?}: slot {idx} outside C's view was written: {g} (was {c})");
        }
    }
    assert!(
        bad.is_empty(),
        "{tag} {} {case:?}: {} of {} elements off; max abs err {max_abs:.3e}, max rel err {max_rel:.3e}; \
         first (index, got, expected): {:?}",
        T::NAME,
        bad.len(),
        m * n,
        &bad[..bad.len().min(5)]
    );
}

/// Shapes that hit the edges: 1×1×1, empty dims, k = 0, sizes around the micro-tiles (MR ∈
/// {4, 6, 8}, NR ∈ {4, 8, 16}), k across KC = 256, m across MC, the model's layer shapes.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (0, 5, 3),
    (4, 0, 3),
    (3, 5, 0),
    (0, 0, 0),
    (2, 3, 1),
    (1, 7, 33),
    (5, 1, 7),
    (6, 9, 16),
    (7, 10, 17),
    (11, 13, 15),
    (12, 31, 32),
    (13, 17, 33),
    (25, 8, 47),
    (3, 300, 5),
    (17, 257, 19),
    (130, 20, 9),
    (100, 65, 70),
    (256, 64, 32),
    (256, 16, 8),
    (256, 16, 1),
    (16, 256, 32),
    (1, 256, 16),
];

/// Above this many multiply-adds a shape is "big": the sweep runs it with the four transpose
/// combinations only, not all sixteen layout pairs (the debug-build tests stay fast).
const BIG: usize = 100_000;

/// Runs the shapes through `f` with α ∈ {1, −1.75}, β rotating through {0, 1, 0.5}, every pair of
/// (A, B) layouts (all four transpose combinations, padded and fully strided views) and C's
/// layout rotating; then random shapes. `quick` keeps only the small shapes, six layout pairs and
/// fewer random shapes, for the tests that sweep many kernel variants.
fn sweep<T: CpuFloat>(
    tag: &str,
    rel: f64,
    abs: f64,
    quick: bool,
    f: impl Fn(T, MatRef<T>, MatRef<T>, T, MatMut<T>) -> Result<()> + Copy,
) {
    let mut seed = 0u64;
    for &(m, k, n) in SHAPES {
        let big = m * k * n > BIG;
        if quick && big {
            continue;
        }
        for &la in &LAYOUTS {
            for &lb in &LAYOUTS {
                let transposes_only = matches!(la, RowMajor | ColMajor) && matches!(lb, RowMajor | ColMajor);
                let odd_strides = matches!((la, lb), (PaddedRows, Strided) | (Strided, PaddedRows));
                if (big || quick) && !transposes_only && !(quick && odd_strides) {
                    continue;
                }
                seed += 1;
                let beta = [0.0, 1.0, 0.5][seed as usize % 3];
                let lc = LAYOUTS[(seed as usize / 3) % 4];
                let alpha = if seed.is_multiple_of(2) { 1.0 } else { -1.75 };
                check_case::<T>(tag, Case { m, k, n, la, lb, lc, alpha, beta }, seed, rel, abs, f);
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(99);
    let (count, max_dim) = if quick { (8, 40) } else { (40, 64) };
    for s in 0..count {
        let dims = (rng.random_range(1..max_dim), rng.random_range(1..max_dim), rng.random_range(1..max_dim));
        let pick = |r: &mut StdRng| LAYOUTS[r.random_range(0..4)];
        let case = Case {
            m: dims.0,
            k: dims.1,
            n: dims.2,
            la: pick(&mut rng),
            lb: pick(&mut rng),
            lc: pick(&mut rng),
            alpha: rng.random_range(-2.0..2.0),
            beta: [0.0, 1.0, 0.5][s % 3],
        };
        check_case::<T>(tag, case, 1000 + s as u64, rel, abs, f);
    }
}

const F32_REL: f64 = 1e-5;
const F32_ABS: f64 = 1e-6;
const F64_REL: f64 = 1e-12;
const F64_ABS: f64 = 1e-14;

#[test]
fn scratch_matches_naive_f32() {
    sweep::<f32>("scratch", F32_REL, F32_ABS, false, gemm_scratch);
}

#[test]
fn scratch_matches_naive_f64() {
    sweep::<f64>("scratch", F64_REL, F64_ABS, false, gemm_scratch);
}

#[test]
fn library_matches_naive_f32() {
    sweep::<f32>("library", F32_REL, F32_ABS, false, gemm_library);
}

#[test]
fn library_matches_naive_f64() {
    sweep::<f64>("library", F64_REL, F64_ABS, false, gemm_library);
}

#[test]
fn dispatch_matches_naive() {
    for imp in GemmImpl::ALL {
        sweep::<f32>(imp.name(), F32_REL, F32_ABS, true, move |al, a, b, be, c| gemm(imp, al, a, b, be, c));
    }
}

/// Every instruction-set level this CPU has (the portable one always), every micro-tile compiled
/// for it, with the default blocking and with odd tiny blocks that put block edges everywhere
/// (mc, nc not multiples of MR, NR; several k blocks).
#[test]
fn every_simd_level_tile_and_odd_blocking_matches_naive() {
    fn all<T: CpuFloat>(rel: f64, abs: f64) {
        let blockings = [T::BLOCKING, Blocking { mc: 7, kc: 5, nc: 9 }, Blocking { mc: 12, kc: 64, nc: 32 }];
        for simd in SimdLevel::ALL.into_iter().filter(|s| s.is_available()) {
            for (ti, tile) in T::tiles(simd).iter().enumerate() {
                for blk in blockings {
                    let tag = format!("{simd:?} tile {}x{} {blk:?}", tile.mr, tile.nr);
                    sweep::<T>(&tag, rel, abs, true, move |al, a, b, be, c| {
                        scratch(simd, Some(ti), blk, al, a, b, be, c)
                    });
                }
            }
        }
    }
    all::<f32>(F32_REL, F32_ABS);
    all::<f64>(F64_REL, F64_ABS);
}

/// With FMA, every tile computes each element as the same chain of fused multiply-adds, so the
/// tile choice changes no bits.
#[test]
fn tiles_agree_bit_for_bit() {
    let simd = SimdLevel::best();
    let (m, k, n) = (37, 300, 29);
    let mut rng = StdRng::seed_from_u64(3);
    let a: Vec<f32> = rand_vec(m * k, &mut rng);
    let b: Vec<f32> = rand_vec(k * n, &mut rng);
    let run = |tile| {
        let mut c = vec![0.5f32; m * n];
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        scratch(simd, Some(tile), f32::BLOCKING, 1.5, av, bv, 0.25, MatMut::row_major(&mut c, m, n)).unwrap();
        c
    };
    let first = run(0);
    for tile in 1..f32::tiles(simd).len() {
        assert!(first.iter().zip(&run(tile)).all(|(x, y)| x.to_bits() == y.to_bits()), "tile {tile}");
    }
}

#[test]
fn tile_choice_follows_the_padding() {
    let tiles =
        [Tile { mr: 6, nr: 16, speed: 1.0 }, Tile { mr: 4, nr: 16, speed: 0.93 }, Tile { mr: 8, nr: 8, speed: 0.85 }];
    assert_eq!(pick_tile(&tiles, 1000, 1000), 0, "big: the fastest");
    assert_eq!(pick_tile(&tiles, 256, 32), 0);
    assert_eq!(pick_tile(&tiles, 256, 8), 2, "n = 8: no padding with 8×8");
    assert_eq!(pick_tile(&tiles, 256, 1), 2);
    assert_eq!(pick_tile(&tiles, 8, 16), 1, "m = 8: no padding with 4×16");
}

/// Large enough to run in parallel (2·m·n·k > PAR_MIN_FLOPS), with k > KC and ragged edges.
/// Same bits on 1, 2 and 3 threads; also through column-major C (the transposed path).
#[test]
fn scratch_is_bit_identical_across_thread_counts() {
    fn run<T: CpuFloat>(threads: usize, lc: Layout, seed: u64) -> Vec<T> {
        let (m, k, n) = (150, 300, 70);
        assert!(2 * m * n * k > PAR_MIN_FLOPS);
        let mut rng = StdRng::seed_from_u64(seed);
        let a: Vec<T> = rand_vec(m * k, &mut rng);
        let b: Vec<T> = rand_vec(k * n, &mut rng);
        let (rs, cs, len) = strides(m, n, lc);
        let mut c: Vec<T> = rand_vec(len, &mut rng);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let c = MatMut::new(&mut c, m, n, rs, cs);
            gemm_scratch(
                T::from_f64(0.75),
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                T::from_f64(0.5),
                c,
            )
        })
        .unwrap();
        c
    }
    for lc in [RowMajor, ColMajor] {
        let one = run::<f32>(1, lc, 7);
        for t in [2, 3] {
            let other = run::<f32>(t, lc, 7);
            let diff = one.iter().zip(&other).position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(diff, None, "f32 {lc:?}: 1 vs {t} threads differ first at {diff:?}");
        }
        let one = run::<f64>(1, lc, 8);
        for t in [2, 3] {
            let other = run::<f64>(t, lc, 8);
            let diff = one.iter().zip(&other).position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(diff, None, "f64 {lc:?}: 1 vs {t} threads differ first at {diff:?}");
        }
    }
}

/// A GEMM call on a rayon worker that is itself inside another GEMM's parallel region must work
/// (the packing buffers are taken, not borrowed).
#[test]
fn nested_parallel_calls_work() {
    let (m, k, n) = (200, 300, 150);
    let mut rng = StdRng::seed_from_u64(5);
    let a: Vec<f32> = rand_vec(m * k, &mut rng);
    let b: Vec<f32> = rand_vec(k * n, &mut rng);
    let mut want = vec![0.0f32; m * n];
    gemm_scratch(
        1.0,
        MatRef::row_major(&a, m, k),
        MatRef::row_major(&b, k, n),
        0.0,
        MatMut::row_major(&mut want, m, n),
    )
    .unwrap();
    let outs: Vec<Vec<f32>> = (0..8)
        .into_par_iter()
        .map(|_| {
            let mut c = vec![f32::NAN; m * n];
            let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            gemm_scratch(1.0, a, b, 0.0, MatMut::row_major(&mut c, m, n)).unwrap();
            c
        })
        .collect();
    for c in outs {
        assert!(c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

/// Unusual but legal views: a broadcast A (stride 0), a single row of C with a junk row stride,
/// a single column of C with a junk column stride.
#[test]
fn degenerate_strides_are_accepted() {
    let a = [2.0f32, 3.0];
    let b = [1.0f32, 10.0, 100.0, 1000.0];
    for imp in GemmImpl::ALL {
        // A (3, 2) = every row [2, 3]; B (2, 2) row-major; C (3, 2) row-major.
        let mut c = [0.0f32; 6];
        gemm(imp, 1.0, MatRef::new(&a, 3, 2, 0, 1), MatRef::row_major(&b, 2, 2), 0.0, MatMut::row_major(&mut c, 3, 2))
            .unwrap();
        assert_eq!(c, [302.0, 3020.0, 302.0, 3020.0, 302.0, 3020.0], "{imp}");
        // C (1, 2) with rs = usize::MAX (never used).
        let mut c = [0.0f32; 2];
        gemm(
            imp,
            1.0,
            MatRef::row_major(&a, 1, 2),
            MatRef::row_major(&b, 2, 2),
            0.0,
            MatMut::new(&mut c, 1, 2, usize::MAX, 1),
        )
        .unwrap();
        assert_eq!(c, [302.0, 3020.0], "{imp}");
        // C (2, 1) with cs = 0 (never used).
        let mut c = [0.0f32; 2];
        let bt = MatRef::new(&b, 2, 1, 1, 0);
        gemm(imp, 1.0, MatRef::row_major(&b, 2, 2), bt, 0.0, MatMut::new(&mut c, 2, 1, 1, 0)).unwrap();
        assert_eq!(c, [1.0 + 100.0, 100.0 + 10_000.0], "{imp}");
    }
}

fn expect_shape_err(r: Result<()>, want_tensor: &str, want_expected: &str, want_got: &str) {
    match r {
        Err(Error::ShapeMismatch { op, tensor, expected, got }) => {
            assert_eq!(op, "gemm");
            assert_eq!(tensor, want_tensor);
            assert!(expected.contains(want_expected), "expected {expected:?} to contain {want_expected:?}");
            assert!(got.contains(want_got), "got {got:?} to contain {want_got:?}");
        }
        other => panic!("wanted a ShapeMismatch for {want_tensor}, got {other:?}"),
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let a = vec![0.0f32; 256 * 64];
    let b = vec![0.0f32; 64 * 32];
    let mut c = vec![f32::NAN; 256 * 32];
    for imp in GemmImpl::ALL {
        let (ar, br) = (MatRef::row_major(&a, 256, 64), MatRef::row_major(&b, 64, 32));
        // Inner dimensions disagree.
        let r = gemm(imp, 1.0, ar, MatRef::row_major(&b, 63, 32), 0.0, MatMut::row_major(&mut c, 256, 32));
        expect_shape_err(r, "B", "A (256, 64) · B (63, 32) needs B.rows = 64", "B (63, 32)");
        // C has the wrong shape.
        let r = gemm(imp, 1.0, ar, br, 0.0, MatMut::row_major(&mut c, 32, 256));
        expect_shape_err(r, "C", "A (256, 64) · B (64, 32) needs C (256, 32)", "C (32, 256)");
        // Slices too short for the views.
        let r = gemm(imp, 1.0, MatRef::row_major(&a[1..], 256, 64), br, 0.0, MatMut::row_major(&mut c, 256, 32));
        expect_shape_err(r, "A", "A (256, 64) with strides (64, 1) needs a slice of at least 16384", "16383");
        let r = gemm(
            imp,
            1.0,
            ar,
            MatRef::transposed_of_row_major(&b[..100], 32, 64),
            0.0,
            MatMut::row_major(&mut c, 256, 32),
        );
        expect_shape_err(r, "B", "B (64, 32) with strides (1, 64) needs a slice of at least 2048", "100");
        let r = gemm(imp, 1.0, ar, br, 1.0, MatMut::new(&mut c, 256, 32, 33, 1));
        expect_shape_err(r, "C", "needs a slice of at least 8447", "8192");
        // Strides so large the last index overflows.
        let r =
            gemm(imp, 1.0, MatRef::new(&a, 256, 64, usize::MAX / 2, 1), br, 0.0, MatMut::row_major(&mut c, 256, 32));
        expect_shape_err(r, "A", "more than usize::MAX", "16384");
        // C's view writes one slot twice.
        let r = gemm(imp, 1.0, ar, br, 0.0, MatMut::new(&mut c, 256, 32, 16, 1));
        expect_shape_err(r, "C", "non-overlapping", "strides (16, 1)");
        let r = gemm(imp, 1.0, ar, br, 0.0, MatMut::new(&mut c, 256, 32, 0, 1));
        expect_shape_err(r, "C", "non-overlapping", "strides (0, 1)");
        // Nothing was written by any failed call.
        assert!(c.iter().all(|x| x.is_nan()), "{imp}");
    }
}

#[test]
fn impl_names_round_trip() {
    for imp in GemmImpl::ALL {
        assert_eq!(imp.to_string().parse::<GemmImpl>().unwrap(), imp);
    }
    assert_eq!(" Library ".parse::<GemmImpl>().unwrap(), GemmImpl::Library);
    assert_eq!(GemmImpl::default(), GemmImpl::Scratch);
    let e = "blas".parse::<GemmImpl>().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "gemm", .. }), "{e:?}");
    assert!(e.to_string().contains("blas"));
}

/// The AVX-512 and AVX2 levels route every product that suits it to the direct kernel: the
/// full sweep, then shapes around its tiles (row tiles of 12, 8, 6, 4 and 2 rows and the 8-4-2-1
/// remainders; AVX2's short rests taken with the last 6-row tile as 4+3, 4+4 and 5+4 rows; 1 to 4 vectors per column block with masked tails; several column blocks), with
/// A and B in all four transpose combinations. Each level the CPU has is tested.
#[test]
fn direct_kernel_matches_naive() {
    if !SimdLevel::Avx2Fma.is_available() {
        eprintln!("skipped: this CPU has neither AVX2 + FMA nor AVX-512, so the direct kernel was not tested");
        return;
    }
    fn f512(al: f32, a: MatRef<f32>, b: MatRef<f32>, be: f32, c: MatMut<f32>) -> Result<()> {
        scratch(SimdLevel::Avx512, None, f32::BLOCKING, al, a, b, be, c)
    }
    fn f256(al: f32, a: MatRef<f32>, b: MatRef<f32>, be: f32, c: MatMut<f32>) -> Result<()> {
        scratch(SimdLevel::Avx2Fma, None, f32::BLOCKING, al, a, b, be, c)
    }
    let levels: Vec<(SimdLevel, Check<f32>)> = [(SimdLevel::Avx2Fma, f256 as Check<f32>), (SimdLevel::Avx512, f512)]
        .into_iter()
        .filter(|(s, _)| s.is_available())
        .collect();
    for &(level, f) in &levels {
        println!("direct kernel at {level}");
        sweep::<f32>("direct", F32_REL, F32_ABS, false, f);
        direct_shapes(f);
    }
}

type Check<T> = fn(T, MatRef<T>, MatRef<T>, T, MatMut<T>) -> Result<()>;

fn direct_shapes(f: Check<f32>) {
    let mut seed = 5000u64;
    for n in [1, 7, 8, 9, 15, 16, 17, 24, 25, 31, 32, 33, 48, 49, 63, 64, 65, 100, 128, 129, 200, 511, 512] {
        for m in [1, 2, 3, 5, 6, 7, 8, 9, 11, 12, 13, 15, 23, 25, 32, 47, 49, 97] {
            for (la, lb) in [(RowMajor, RowMajor), (ColMajor, ColMajor), (RowMajor, ColMajor), (ColMajor, RowMajor)] {
                seed += 1;
                let k = [1, 7, 64, 300][seed as usize % 4];
                assert!(direct::suits(k, n, if lb == RowMajor { 1 } else { k }, 1), "({m}, {k}, {n}) suits the kernel");
                let (alpha, beta) = ([1.0, -1.75][seed as usize % 2], [0.0, 1.0, 0.5][seed as usize % 3]);
                let case = Case { m, k, n, la, lb, lc: RowMajor, alpha, beta };
                check_case::<f32>("direct", case, seed, F32_REL, F32_ABS, f);
            }
        }
    }
}

/// For `k ≤ KC` the direct kernel computes each element as the blocked kernel does (one FMA
/// chain from zero in `p` order, then `α·acc + β·c` with two roundings), so the two agree bit for
/// bit. Also checks that NCF's layer shapes take the direct path.
/// Which products the AVX-512 level sends to the direct kernel.
#[test]
fn direct_kernel_takes_skinny_products_only() {
    // NCF's layers at lanes of 128 and 2048 rows (batch 256 and 4096): B is w, wᵀ or inp.
    for rows in [128, 2048] {
        for (i, o) in [(64, 32), (32, 16), (16, 8)] {
            assert!(direct::suits(i, o, i, 1), "forward: wᵀ ({i}, {o}) is copied");
            assert!(direct::suits(o, i, 1, 1), "dinp, lane of {rows}");
            assert!(direct::suits(rows, i, 1, 1), "dW, lane of {rows}");
        }
    }
    assert!(!direct::suits(64, 1024, 1, 1), "C wider than MAX_N");
    assert!(!direct::suits(8192, 256, 1, 1), "a B of 2M elements, re-read per row tile");
    assert!(!direct::suits(1024, 512, 2, 1), "a strided B too big to copy");
    assert!(!direct::suits(64, 32, 1, 2), "C with strided rows");
}

#[test]
fn direct_kernel_equals_the_blocked_kernel_bit_for_bit() {
    if !SimdLevel::Avx2Fma.is_available() {
        eprintln!("skipped: this CPU has no AVX2 + FMA, so the direct kernel was not tested");
        return;
    }
    let mut rng = StdRng::seed_from_u64(11);
    // (m, k, n, B transposed): the NeuMF-8 layers at a lane of 128 rows (forward reads wᵀ),
    // then odd shapes.
    let shapes = [
        (128, 64, 32, true),
        (128, 32, 64, false),
        (32, 128, 64, false),
        (128, 16, 8, true),
        (8, 128, 16, false),
        (37, 256, 29, false),
        (61, 100, 130, true),
    ];
    for (s, &(m, k, n, bt)) in shapes.iter().enumerate() {
        assert!(direct::suits(k, n, if bt { k } else { 1 }, 1));
        let a: Vec<f32> = rand_vec(m * k, &mut rng);
        let b: Vec<f32> = rand_vec(k * n, &mut rng);
        let c0: Vec<f32> = rand_vec(m * n, &mut rng);
        let bv = if bt { MatRef::transposed_of_row_major(&b, n, k) } else { MatRef::row_major(&b, k, n) };
        let (alpha, beta) = ([1.0, 0.75][s % 2], [1.0, 0.0, 0.5][s % 3]);
        // `tile: Some(_)` forces the blocked kernel; None lets the level's direct kernel take it.
        let run = |simd, tile| {
            let mut c = c0.clone();
            scratch(
                simd,
                tile,
                f32::BLOCKING,
                alpha,
                MatRef::row_major(&a, m, k),
                bv,
                beta,
                MatMut::row_major(&mut c, m, n),
            )
            .unwrap();
            c
        };
        let blocked = run(SimdLevel::Avx2Fma, Some(0));
        for level in [SimdLevel::Avx2Fma, SimdLevel::Avx512].into_iter().filter(|s| s.is_available()) {
            let direct = run(level, None);
            let diff: Vec<(usize, f32, f32)> = direct
                .iter()
                .zip(&blocked)
                .enumerate()
                .filter(|(_, (x, y))| x.to_bits() != y.to_bits())
                .map(|(i, (x, y))| (i, *x, *y))
                .collect();
            assert!(
                diff.is_empty(),
                "({m}, {k}, {n}) at {level}: {} elements differ; first (index, direct, blocked): {:?}",
                diff.len(),
                &diff[..diff.len().min(5)]
            );
        }
    }
}
